//! Which resources of a type a token reaches: the search clauses every resource it touches must
//! satisfy, from its patient (a patient-context token reaches that patient's compartment) and
//! its granular scopes (`patient/Observation.rs?category=...|vital-signs`).
//!
//! Interactions apply the clauses in one of three ways: searches add them to their own clauses,
//! so the engine never returns anything else; reads of current versions probe them in the index
//! ([`Access::admits_indexed`]); old versions and bodies about to be written are indexed on the
//! fly and checked the same way ([`Access::admits_body`]).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::Access;
use super::rules::Decision;
use super::scope::{Context, Interaction};
use crate::fhir::{FhirError, ResourceType};
use crate::search::compartment::patient_compartment;
use crate::search::engine;
use crate::search::query::{Clause, clauses_match_values, compartment_clause_of, parse_clause};
use crate::store::{IndexView, Indexer};

/// Types that patient-context tokens read whole: shared reference data (who treated the
/// patient, where, with what) and conformance resources, which belong to no patient.
/// (SMART's and the (g)(10) tests' patient scopes name several of them.) Also the types a
/// Patient or Group export follows references into (`sources::export::Kickoff::referenced`).
pub const SHARED_TYPES: &[&str] = &[
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "Medication",
    "Substance",
    "HealthcareService",
    "Endpoint",
    "ValueSet",
    "CodeSystem",
    "ConceptMap",
    "StructureDefinition",
    "SearchParameter",
    "OperationDefinition",
    "Questionnaire",
];

/// The restrictions a grant has been asked for: a bundle asks the same question for each of its
/// entries, and a granular scope's filter would be parsed again every time. Never signed into
/// the token; a copy of a grant starts empty (its patients may differ). Bounded, since `base`
/// comes from the request.
#[derive(Default)]
pub struct RestrictionMemo(Mutex<VecDeque<(RestrictionKey, Arc<Restriction>)>>);

/// A restriction's question: which type, which interaction, through which FHIR base.
type RestrictionKey = (ResourceType, Interaction, String);

/// How many restrictions a grant keeps (types × interactions a request mix touches).
const MEMO_ENTRIES: usize = 32;

impl Clone for RestrictionMemo {
    fn clone(&self) -> RestrictionMemo {
        RestrictionMemo::default()
    }
}

impl std::fmt::Debug for RestrictionMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RestrictionMemo")
    }
}

impl RestrictionMemo {
    fn get(&self, resource_type: ResourceType, interaction: Interaction, base: &str) -> Option<Arc<Restriction>> {
        let memo = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        memo.iter()
            .find(|((known_type, known_interaction, known_base), _)| {
                (*known_type, *known_interaction, known_base.as_str()) == (resource_type, interaction, base)
            })
            .map(|(_, restriction)| restriction.clone())
    }

    fn keep(&self, key: RestrictionKey, restriction: Arc<Restriction>) {
        let mut memo = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if memo.len() >= MEMO_ENTRIES {
            memo.pop_front();
        }
        memo.push_back((key, restriction));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
}

/// What a token allows on one type for one interaction.
#[derive(Debug, Clone)]
pub enum Restriction {
    /// Nothing of the type.
    Deny,
    /// The resources matching every clause (no clause: all of them).
    Allow(Vec<Clause>),
}

/// Whether `limit` (a membership clause of a restriction: "in Patient/p's compartment") is
/// already implied by one of `clauses`: one that selects only resources whose compartment
/// parameter (or the `patient` parameter, which narrows `subject` where that is the
/// compartment's link) points at exactly that patient. Such a limit adds nothing but work, and
/// searches whose only clause selects one patient's resources stay as cheap as without a token.
pub fn implied(resource_type: ResourceType, limit: &Clause, clauses: &[Clause]) -> bool {
    use crate::search::compartment::COMPARTMENT_KEY;
    use crate::search::query::Pred;
    let [only] = limit.alternatives.as_slice() else { return false };
    let Pred::Equals(member) = &only.pred else { return false };
    if limit.key != COMPARTMENT_KEY || limit.negated || limit.missing.is_some() || !limit.any_of.is_empty() {
        return false;
    }
    let links = patient_compartment().params(resource_type);
    let narrows_a_link = |key: &str| {
        key == COMPARTMENT_KEY
            || links.iter().any(|link| link == key)
            || (key == "patient" && links.iter().any(|link| link == "subject" || link == "patient"))
    };
    clauses.iter().any(|clause| {
        !clause.negated
            && clause.missing.is_none()
            && clause.any_of.is_empty()
            && !clause.alternatives.is_empty()
            && clause.alternatives.iter().enumerate().all(|(index, alternative)| {
                narrows_a_link(clause.key_of(index))
                    && matches!(&alternative.pred, Pred::Equals(value) if value == member)
            })
    })
}

/// The index keys `clauses` read (each clause's own, alternatives' included, and those of the
/// conjunctions it unites).
fn clause_keys<'a>(clauses: &'a [Clause], keys: &mut Vec<&'a str>) {
    for clause in clauses {
        keys.extend(clause.keys());
        for conjunction in &clause.any_of {
            clause_keys(conjunction, keys);
        }
    }
}

impl Access {
    /// Whether anything this access does can be limited to some resources of a type (a patient
    /// in context, or granular scopes): interactions that cannot apply such limits refuse it.
    pub fn is_restricted(&self) -> bool {
        match self {
            Access::Unrestricted => false,
            Access::Token(grant) => grant.context == Context::Patient || grant.rules.has_filters(),
        }
    }

    /// What limits this access, as text for the scope of paging cursors: a page link made
    /// under one token's limits is refused under another's. Empty when nothing limits it.
    pub fn fingerprint(&self) -> String {
        match self {
            // A person's linked Patients are part of it: a page made before a merge or an
            // unmerge is refused after it, rather than mixing the two.
            Access::Token(grant) if self.is_restricted() => format!(
                "|restricted:{}|{}|{}",
                grant.patient.as_deref().unwrap_or(""),
                grant.person.join(","),
                grant.scope
            ),
            _ => String::new(),
        }
    }

    /// The patient a patient-context token is bound to.
    pub fn patient(&self) -> Option<&str> {
        match self {
            Access::Token(grant) if grant.context == Context::Patient => grant.patient.as_deref(),
            _ => None,
        }
    }

    /// Whether `patient` lies outside what a patient-context token is bound to (its patient,
    /// or the Patients of its person): always false for other access.
    pub fn is_other_patient(&self, patient: &str) -> bool {
        match self {
            Access::Token(grant) if grant.context == Context::Patient => {
                grant.patient.as_deref() != Some(patient) && !grant.person.iter().any(|own| own == patient)
            }
            _ => false,
        }
    }

    /// What `interaction` on `resource_type` may reach; `base` is the server's FHIR base (for
    /// references in granular filters).
    pub fn restriction(
        &self,
        resource_type: ResourceType,
        interaction: Interaction,
        base: &str,
    ) -> Result<Restriction, FhirError> {
        Ok(Arc::unwrap_or_clone(self.shared_restriction(resource_type, interaction, base)?))
    }

    /// Whether `interaction` on `resource_type` is allowed at all (on some of its resources),
    /// without copying the restriction's clauses: what a route checks for every write.
    pub fn permits(
        &self,
        resource_type: ResourceType,
        interaction: Interaction,
        base: &str,
    ) -> Result<bool, FhirError> {
        Ok(!matches!(*self.shared_restriction(resource_type, interaction, base)?, Restriction::Deny))
    }

    /// [`Self::restriction`] without a copy of its clauses: a restricted grant's kept one is
    /// shared, so the checks run for every entry of a bundle clone nothing.
    fn shared_restriction(
        &self,
        resource_type: ResourceType,
        interaction: Interaction,
        base: &str,
    ) -> Result<Arc<Restriction>, FhirError> {
        let Access::Token(grant) = self else { return Ok(Arc::new(Restriction::Allow(Vec::new()))) };
        if !self.is_restricted() {
            return self.compute_restriction(resource_type, interaction, base).map(Arc::new);
        }
        if let Some(known) = grant.restrictions.get(resource_type, interaction, base) {
            return Ok(known);
        }
        let restriction = Arc::new(self.compute_restriction(resource_type, interaction, base)?);
        grant.restrictions.keep((resource_type, interaction, base.to_owned()), restriction.clone());
        Ok(restriction)
    }

    fn compute_restriction(
        &self,
        resource_type: ResourceType,
        interaction: Interaction,
        base: &str,
    ) -> Result<Restriction, FhirError> {
        let Access::Token(grant) = self else { return Ok(Restriction::Allow(Vec::new())) };
        let mut clauses = Vec::new();
        if grant.context == Context::Patient {
            let patients = grant.compartment_patients();
            if patients.is_empty() {
                return Ok(Restriction::Deny);
            }
            if patient_compartment().contains(resource_type) {
                clauses.push(compartment_clause_of(&patients));
            } else if resource_type.as_str() == "Device" {
                // Outside R4's Patient compartment, but a patient's own devices name it.
                let references: Vec<String> = patients.iter().map(|patient| format!("Patient/{patient}")).collect();
                match parse_clause(resource_type, "patient", &references.join(","), base)? {
                    Some(clause) => clauses.push(clause),
                    None => return Ok(Restriction::Deny),
                }
            } else if !SHARED_TYPES.contains(&resource_type.as_str()) {
                return Ok(Restriction::Deny);
            }
        }
        match grant.rules.decide(resource_type, interaction) {
            Decision::Deny => Ok(Restriction::Deny),
            Decision::All => Ok(Restriction::Allow(clauses)),
            Decision::Filtered(filters) => {
                // Each filter is a conjunction of search parameters; a filter Braid cannot
                // evaluate (an unknown parameter) grants nothing.
                let mut conjunctions: Vec<Vec<Clause>> = Vec::new();
                'filters: for filter in filters {
                    let mut conjunction = Vec::new();
                    for (name, value) in filter {
                        match parse_clause(resource_type, name, value, base) {
                            Ok(Some(clause)) => conjunction.push(clause),
                            _ => continue 'filters,
                        }
                    }
                    conjunctions.push(conjunction);
                }
                match conjunctions.len() {
                    0 => return Ok(Restriction::Deny),
                    1 => clauses.extend(conjunctions.pop().unwrap_or_default()),
                    _ => clauses.push(Clause::any_of("(granular scopes)".into(), conjunctions)),
                }
                Ok(Restriction::Allow(clauses))
            }
        }
    }

    /// Whether the current version `version` of `id` is within what `interaction` may reach,
    /// by its index entries as of `t`.
    #[allow(clippy::too_many_arguments)]
    pub fn admits_indexed(
        &self,
        view: &dyn IndexView,
        resource_type: ResourceType,
        id: &str,
        version: u64,
        t: u64,
        interaction: Interaction,
        base: &str,
    ) -> Result<bool, FhirError> {
        match &*self.shared_restriction(resource_type, interaction, base)? {
            Restriction::Deny => Ok(false),
            Restriction::Allow(clauses) if clauses.is_empty() => Ok(true),
            Restriction::Allow(clauses) => engine::matches_clauses(view, resource_type, clauses, id, version, t),
        }
    }

    /// Whether the resource `body` is within what `interaction` may reach: the body is indexed
    /// as the writer would index it (for versions whose index entries are gone, and for bodies
    /// about to be written).
    pub fn admits_body(
        &self,
        indexer: &dyn Indexer,
        resource_type: ResourceType,
        body: &Value,
        interaction: Interaction,
        base: &str,
    ) -> Result<bool, FhirError> {
        match &*self.shared_restriction(resource_type, interaction, base)? {
            Restriction::Deny => Ok(false),
            Restriction::Allow(clauses) if clauses.is_empty() => Ok(true),
            Restriction::Allow(clauses) => {
                let mut keys = Vec::new();
                clause_keys(clauses, &mut keys);
                let mut values: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
                for entry in indexer.entries_for_keys(resource_type, body, base, &keys) {
                    values.entry(entry.param).or_default().push(entry.value);
                }
                Ok(clauses_match_values(clauses, &values))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::search::query::compartment_clause;

    fn clause(name: &str, value: &str) -> Clause {
        parse_clause(ResourceType::parse("Observation").unwrap(), name, value, "http://b/fhir").unwrap().unwrap()
    }

    #[test]
    fn a_grant_computes_a_restriction_once_and_keeps_a_bounded_number() {
        let access = Access::Token(Arc::new(crate::auth::Grant::for_test(
            "system/*.cruds?_source=urn:braid:source:clinic",
            None,
            None,
        )));
        let Access::Token(grant) = &access else { unreachable!("built as a token") };
        let observation = ResourceType::parse("Observation").unwrap();
        let written = |restriction: Restriction| match restriction {
            Restriction::Allow(clauses) => clauses.iter().map(|clause| clause.written.clone()).collect::<Vec<_>>(),
            Restriction::Deny => panic!("the scope allows Observations"),
        };
        let first = written(access.restriction(observation, Interaction::Create, "http://b/fhir").unwrap());
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!(grant.restrictions.len(), 1);
        let again = written(access.restriction(observation, Interaction::Create, "http://b/fhir").unwrap());
        assert_eq!(again, first);
        assert_eq!(grant.restrictions.len(), 1, "asked again, computed once");
        // The body checks share the kept restriction rather than copying its clauses, and
        // decide by it.
        let shared = access.shared_restriction(observation, Interaction::Create, "http://b/fhir").unwrap();
        let kept = grant.restrictions.get(observation, Interaction::Create, "http://b/fhir").unwrap();
        assert!(Arc::ptr_eq(&shared, &kept));
        let body = |source: &str| serde_json::json!({"resourceType": "Observation", "meta": {"source": source}});
        let admits = |source: &str| {
            access.admits_body(
                &crate::search::SearchIndexer,
                observation,
                &body(source),
                Interaction::Create,
                "http://b/fhir",
            )
        };
        assert!(admits("urn:braid:source:clinic").unwrap());
        assert!(!admits("urn:braid:source:other").unwrap());
        assert_eq!(grant.restrictions.len(), 1);
        // The base comes from the request: however many a client sends, the memo stays bounded.
        for n in 0..100 {
            access.restriction(observation, Interaction::Create, &format!("http://b{n}/fhir")).unwrap();
        }
        assert_eq!(grant.restrictions.len(), MEMO_ENTRIES);
        // A copy (a person's grant, with other patients) computes its own.
        assert_eq!((**grant).clone().restrictions.len(), 0);
        // A grant without limits keeps nothing.
        let plain = Access::Token(Arc::new(crate::auth::Grant::for_test("system/*.cruds", None, None)));
        assert!(
            matches!(plain.restriction(observation, Interaction::Create, "http://b/fhir").unwrap(), Restriction::Allow(c) if c.is_empty())
        );
        let Access::Token(plain_grant) = &plain else { unreachable!("built as a token") };
        assert_eq!(plain_grant.restrictions.len(), 0);
    }

    #[test]
    fn a_membership_limit_is_implied_only_by_clauses_selecting_that_patient_alone() {
        let observation = ResourceType::parse("Observation").unwrap();
        let limit = compartment_clause("p3");
        for (name, value, expected) in [
            ("patient", "Patient/p3", true),
            ("subject", "Patient/p3", true),
            ("performer", "Patient/p3", true),
            ("patient", "Patient/p4", false),
            ("patient", "Patient/p3,Patient/p4", false),
            ("code", "http://loinc.org|1-8", false),
            ("subject:missing", "false", false),
        ] {
            assert_eq!(implied(observation, &limit, &[clause(name, value)]), expected, "{name}={value}");
        }
        assert!(implied(observation, &limit, &[compartment_clause("p3")]));
        let mut negated = clause("patient", "Patient/p3");
        negated.negated = true;
        assert!(!implied(observation, &limit, &[negated]));
        assert!(!implied(observation, &limit, &[]));
        // `encounter` points at an Encounter, not a patient.
        assert!(!implied(observation, &limit, &[clause("encounter", "Encounter/p3")]));
    }
}
