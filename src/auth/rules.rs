//! What a set of granted scopes allows, type by type and interaction by interaction: the first
//! check of every request, before any data is read. Which resources of an allowed type a
//! patient-restricted or filtered grant may see is decided by the search restrictions built from
//! [`Decision::Filtered`] and the patient in context.

use std::collections::HashMap;

use super::scope::{Context, Interaction, Permissions, Scope};
use crate::fhir::ResourceType;

/// The search parameters a granular scope requires, all of them (`name`, `value`).
pub type Filter = Vec<(String, String)>;

/// One scope's share of the rules: what it permits, and on which resources.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    permissions: Permissions,
    /// Empty: every resource of the type.
    filter: Filter,
}

/// The resource scopes of one context (a token carries scopes of one context: a patient app's
/// `patient/` scopes, a practitioner's `user/` scopes, a backend service's `system/` scopes),
/// grouped by type.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AccessRules {
    by_type: HashMap<ResourceType, Vec<Rule>>,
    /// From `Context/*` scopes: they apply to every type.
    every_type: Vec<Rule>,
    /// Types this grant may not create, update or delete whatever its scopes say (its user's
    /// role does not allow it).
    read_only: Vec<ResourceType>,
}

/// The record of who did what, which only an administrator's token may change: patients' and
/// practitioners' tokens read them as their scopes allow, never write them.
pub const TRAIL_TYPES: [&str; 2] = ["AuditEvent", "Provenance"];

/// What the rules decide for one type and interaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<'a> {
    /// No scope allows it.
    Deny,
    /// Allowed on every resource of the type (within the patient's, for a patient context).
    All,
    /// Allowed only on resources matching at least one of these filters (each a conjunction of
    /// search parameters): every granting scope is granular.
    Filtered(Vec<&'a Filter>),
}

impl AccessRules {
    /// The rules of the resource scopes of `context` among `scopes`; scopes of other contexts
    /// and the non-resource scopes (`openid`, `launch`, ...) grant no data access here.
    pub fn from_scopes(scopes: &[Scope], context: Context) -> AccessRules {
        let mut rules = AccessRules::default();
        for scope in scopes {
            let Scope::Resource(scope) = scope else { continue };
            if scope.context != context {
                continue;
            }
            let rule = Rule { permissions: scope.permissions, filter: scope.filter.clone() };
            match scope.resource_type {
                Some(resource_type) => rules.by_type.entry(resource_type).or_default().push(rule),
                None => rules.every_type.push(rule),
            }
        }
        rules
    }

    /// Whether `interaction` on `resource_type` is allowed, and on which of its resources. A
    /// scope without a filter allows every resource, whatever filtered scopes also grant.
    pub fn decide(&self, resource_type: ResourceType, interaction: Interaction) -> Decision<'_> {
        let writes = matches!(interaction, Interaction::Create | Interaction::Update | Interaction::Delete);
        if writes && self.read_only.contains(&resource_type) {
            return Decision::Deny;
        }
        let specific = self.by_type.get(&resource_type).map_or(&[][..], Vec::as_slice);
        let granting = specific.iter().chain(&self.every_type).filter(|rule| rule.permissions.allows(interaction));
        let mut filters = Vec::new();
        for rule in granting {
            if rule.filter.is_empty() {
                return Decision::All;
            }
            if !filters.contains(&&rule.filter) {
                filters.push(&rule.filter);
            }
        }
        if filters.is_empty() { Decision::Deny } else { Decision::Filtered(filters) }
    }

    /// These rules, with `types` read-only.
    pub fn with_read_only(mut self, types: &[&str]) -> AccessRules {
        self.read_only.extend(types.iter().filter_map(|name| ResourceType::parse(name)));
        self
    }

    /// Whether some scope is granular (allows only resources matching its filter).
    pub fn has_filters(&self) -> bool {
        self.by_type.values().flatten().chain(&self.every_type).any(|rule| !rule.filter.is_empty())
    }

    /// Whether the rules allow nothing at all (a token without resource scopes of its context
    /// reads no data, and its request can be refused early).
    pub fn is_empty(&self) -> bool {
        self.every_type.is_empty() && self.by_type.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scope::parse_scopes;

    fn rules_for(text: &str, context: Context) -> AccessRules {
        AccessRules::from_scopes(&parse_scopes(text).unwrap().granted, context)
    }

    fn ty(name: &str) -> ResourceType {
        ResourceType::parse(name).unwrap()
    }

    #[test]
    fn a_type_scope_and_a_wildcard_decide_per_interaction() {
        let rules = rules_for("patient/Observation.rs patient/*.r patient/Condition.cud", Context::Patient);
        assert_eq!(rules.decide(ty("Observation"), Interaction::Search), Decision::All);
        assert_eq!(rules.decide(ty("Observation"), Interaction::Read), Decision::All);
        assert_eq!(rules.decide(ty("Observation"), Interaction::Create), Decision::Deny);
        // `*.r` reads every type, but searches none.
        assert_eq!(rules.decide(ty("Encounter"), Interaction::Read), Decision::All);
        assert_eq!(rules.decide(ty("Encounter"), Interaction::Search), Decision::Deny);
        assert_eq!(rules.decide(ty("Condition"), Interaction::Delete), Decision::All);
        assert_eq!(rules.decide(ty("Condition"), Interaction::Search), Decision::Deny);
    }

    #[test]
    fn only_the_tokens_context_counts_and_v1_scopes_mean_their_letters() {
        let rules = rules_for("user/*.read system/Patient.cruds patient/Observation.write openid", Context::User);
        assert_eq!(rules.decide(ty("Patient"), Interaction::Search), Decision::All);
        assert_eq!(rules.decide(ty("Patient"), Interaction::Update), Decision::Deny, "system/ is another context");
        assert_eq!(rules.decide(ty("Observation"), Interaction::Create), Decision::Deny);
        let none = rules_for("openid fhirUser launch/patient", Context::Patient);
        assert!(none.is_empty());
        assert_eq!(none.decide(ty("Patient"), Interaction::Read), Decision::Deny);
    }

    #[test]
    fn granular_scopes_allow_only_what_their_filters_select_unless_a_plain_scope_allows_all() {
        let category = "category=http://terminology.hl7.org/CodeSystem/observation-category";
        let vital = format!("patient/Observation.rs?{category}|vital-signs");
        let lab = format!("patient/Observation.rs?{category}|laboratory");
        let both = rules_for(&format!("{vital} {lab} {vital}"), Context::Patient);
        let Decision::Filtered(filters) = both.decide(ty("Observation"), Interaction::Search) else {
            panic!("filtered")
        };
        assert_eq!(filters.len(), 2, "each filter once");
        assert_eq!(filters[0][0].1, "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs");
        assert_eq!(both.decide(ty("Observation"), Interaction::Update), Decision::Deny);
        assert_eq!(both.decide(ty("Condition"), Interaction::Read), Decision::Deny);
        // A plain scope for the type, or for every type, makes the filters moot...
        let plain = rules_for(&format!("{vital} patient/Observation.r"), Context::Patient);
        assert_eq!(plain.decide(ty("Observation"), Interaction::Read), Decision::All);
        let wildcard = rules_for(&format!("{vital} patient/*.s"), Context::Patient);
        assert_eq!(wildcard.decide(ty("Observation"), Interaction::Search), Decision::All);
        // ... but not a plain scope for another interaction.
        assert!(matches!(plain.decide(ty("Observation"), Interaction::Search), Decision::Filtered(f) if f.len() == 1));
    }
}
