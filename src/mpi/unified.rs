//! The unified record: one person's records from every source, as the API shows them.
//!
//! A golden Patient's id works wherever a patient id works: a search value naming it
//! (`Observation?patient=golden-…`, `Patient/golden-…/Observation`, `$everything`, a patient
//! token bound to it) reaches the compartments of every source Patient linked to it
//! ([`expand`]). In such a unified view ([`Unifier`]):
//! - the same clinical fact reported by two sources is shown once: an Observation with the
//!   same code, time and value, an Appointment with the same start, end and participants, of
//!   the same person. The one with the smallest id stands for the others (when it is among the
//!   search's matches) and names every report of the fact, each with its source, in
//!   [`REPORTED_BY`] extensions;
//! - an Appointment that overlaps in time an active Appointment of the same person from
//!   another source is flagged as a conflict: a [`CONFLICTS_WITH`] extension per overlapping
//!   one and the tag [`UNIFIED_TAG_SYSTEM`]`|conflict`.
//!
//! Both are decided per resource, from the snapshot the page is read at and the person as the
//! index holds them, so every page of a search decides the same way. The person's Patients are
//! part of the paging cursor's scope: a page link made before a merge or an unmerge is refused
//! after it instead of mixing the two.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Value, json};

use super::golden;
use super::state::Overlay;
use crate::fhir::json::parse_instant;
use crate::fhir::{FhirError, ResourceType};
use crate::search::engine;
use crate::search::query::{Clause, Pred, exact, parse_clause};
use crate::sources::namespace::source_of;
use crate::store::{IndexView, Snapshot, Store, StoreError};

/// The extension naming each report of a fact shown once (a Reference, its display the source).
pub const REPORTED_BY: &str = "urn:braid:reported-by";

/// The extension naming an overlapping Appointment from another source.
pub const CONFLICTS_WITH: &str = "urn:braid:conflicts-with";

/// The tag system of what a unified view marks (`conflict`).
pub const UNIFIED_TAG_SYSTEM: &str = "urn:braid:unified";

/// Most reports of one fact, and most overlapping Appointments, looked at for one resource.
pub const MAX_RELATED: usize = 50;

/// How far before an Appointment's start an overlapping one may begin (longer ones are not
/// found): the bound of the search for conflicts.
pub const MAX_APPOINTMENT_MICROS: i64 = 7 * 24 * 3600 * 1_000_000;

/// Most redirects followed from a merged golden Patient.
const MAX_REDIRECTS: usize = 16;

/// The golden Patient `golden_id` stands for now (itself, or the one it was merged into), and
/// the source Patients with a MATCH to it: `[golden, sources…]`. Empty when the index has no
/// such golden Patient.
pub fn person_of(overlay: &Overlay<'_>, golden_id: &str) -> Result<Vec<String>, StoreError> {
    let mut current = golden_id.to_owned();
    for _ in 0..MAX_REDIRECTS {
        match overlay.redirect(&current)? {
            Some(to) => current = to,
            None => break,
        }
    }
    if overlay.golden(&current)?.is_none_or(|stored| stored.body.is_none()) {
        return Ok(Vec::new());
    }
    let mut person = vec![current.clone()];
    person.extend(overlay.matched_members(&current, super::matcher::MAX_MEMBERS)?);
    Ok(person)
}

/// Replaces every reference value in `clauses` that names a golden Patient
/// (`Patient/golden-…`) with the Patients of its person, so that the clause matches what any
/// of them is referenced by. Returns the persons expanded, as text for the paging cursor's
/// scope (empty when none was).
pub fn expand(store: &Store, clauses: &mut [Clause]) -> Result<String, FhirError> {
    let mut fingerprint = String::new();
    for clause in clauses.iter_mut() {
        if clause.def.kind != crate::search::registry::ParamKind::Reference {
            continue;
        }
        let mut alternatives = Vec::with_capacity(clause.alternatives.len());
        for alternative in std::mem::take(&mut clause.alternatives) {
            let golden_id = match &alternative.pred {
                Pred::Equals(value) => std::str::from_utf8(value)
                    .ok()
                    .and_then(|value| value.strip_prefix("Patient/"))
                    .filter(|id| golden::is_golden(id))
                    .map(str::to_owned),
                _ => None,
            };
            let Some(golden_id) = golden_id else {
                alternatives.push(alternative);
                continue;
            };
            let person = store.mpi_read(|read| person_of(&Overlay::new(read), &golden_id))?;
            if person.is_empty() {
                alternatives.push(alternative);
                continue;
            }
            fingerprint.push_str(&format!("|person:{}", person.join(",")));
            for patient in person {
                let mut expanded = exact(format!("Patient/{patient}").into_bytes());
                expanded.key = alternative.key.clone();
                alternatives.push(expanded);
            }
        }
        clause.alternatives = alternatives;
    }
    Ok(fingerprint)
}

/// The Patient a reference names, if it is a local `Patient/{id}` (or this server's absolute
/// form of it).
fn patient_id(reference: &str, base: &str) -> Option<String> {
    let local = reference.strip_prefix(base).map(|rest| rest.trim_start_matches('/')).unwrap_or(reference);
    local.strip_prefix("Patient/").filter(|id| !id.contains('/')).map(str::to_owned)
}

/// The codings of a CodeableConcept, as `system|code`.
fn codings(concept: &Value) -> BTreeSet<String> {
    concept["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|coding| {
            let code = coding["code"].as_str()?;
            Some(format!("{}|{code}", coding["system"].as_str().unwrap_or("")))
        })
        .collect()
}

/// A value[x] in a form where equal values compare equal: quantities by number and unit,
/// concepts by their codings, anything else as it is.
fn value_key(resource: &Value) -> Value {
    let Some(object) = resource.as_object() else { return Value::Null };
    for (name, value) in object {
        let Some(kind) = name.strip_prefix("value") else { continue };
        return match kind {
            "Quantity" => json!({"q": value["value"].as_f64(),
                "unit": value["code"].as_str().or(value["unit"].as_str())}),
            "CodeableConcept" => json!({"c": codings(value)}),
            _ => json!({kind: value}),
        };
    }
    Value::Null
}

/// What makes two Observations the same fact: a shared code, the same time, the same value
/// (components included).
#[derive(Debug, Clone, PartialEq)]
struct ObservationFact {
    codes: BTreeSet<String>,
    time: i64,
    value: Value,
    components: Vec<(BTreeSet<String>, Value)>,
}

impl ObservationFact {
    /// `None` for an Observation without a code or a time: it is never taken for another.
    fn of(observation: &Value) -> Option<(ObservationFact, String)> {
        let codes = codings(&observation["code"]);
        let time_text = observation["effectiveDateTime"]
            .as_str()
            .or(observation["effectiveInstant"].as_str())
            .or(observation["effectivePeriod"]["start"].as_str())?;
        let time = parse_instant(time_text)?;
        if codes.is_empty() {
            return None;
        }
        let mut components: Vec<(BTreeSet<String>, Value)> = observation["component"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|component| (codings(&component["code"]), value_key(component)))
            .collect();
        components.sort_by_key(|(codes, value)| format!("{codes:?}{value}"));
        let fact = ObservationFact { codes, time, value: value_key(observation), components };
        Some((fact, time_text.to_owned()))
    }

    fn same(&self, other: &ObservationFact) -> bool {
        self.time == other.time
            && !self.codes.is_disjoint(&other.codes)
            && self.value == other.value
            && self.components == other.components
    }
}

/// An Appointment's time and who takes part.
#[derive(Debug, Clone, PartialEq)]
struct AppointmentFact {
    start: i64,
    end: i64,
    /// The participants other than the person: by display, else by reference without the
    /// source's namespace.
    others: BTreeSet<String>,
    active: bool,
}

impl AppointmentFact {
    fn of(appointment: &Value, base: &str) -> Option<(AppointmentFact, String)> {
        let start_text = appointment["start"].as_str()?;
        let start = parse_instant(start_text)?;
        let end = appointment["end"].as_str().and_then(parse_instant).unwrap_or(start);
        let source = source_of(appointment);
        let others = appointment["participant"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|participant| {
                let actor = &participant["actor"];
                let reference = actor["reference"].as_str().unwrap_or("");
                if patient_id(reference, base).is_some() {
                    return None;
                }
                if let Some(display) = actor["display"].as_str() {
                    return Some(display.trim().to_lowercase());
                }
                let (kind, id) = reference.split_once('/')?;
                let original = source.and_then(|source| id.strip_prefix(&format!("{source}-"))).unwrap_or(id);
                Some(format!("{kind}/{original}"))
            })
            .collect();
        let status = appointment["status"].as_str().unwrap_or("");
        let active = !matches!(status, "cancelled" | "noshow" | "entered-in-error");
        Some((AppointmentFact { start, end, others, active }, start_text.to_owned()))
    }

    fn same(&self, other: &AppointmentFact) -> bool {
        self.start == other.start && self.end == other.end && self.others == other.others
    }

    fn overlaps(&self, other: &AppointmentFact) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// Decides how each resource of a unified view is shown (see the module's description).
pub struct Unifier<'a> {
    store: &'a Store,
    snapshot: &'a Snapshot,
    view: &'a dyn IndexView,
    t: u64,
    base: &'a str,
    /// By source Patient id: its person's Patients (empty: not linked).
    persons: HashMap<String, Vec<String>>,
}

/// A resource found while looking for related ones: its id, version and body.
type Found = (String, u64, Value);

impl<'a> Unifier<'a> {
    pub fn new(store: &'a Store, snapshot: &'a Snapshot, view: &'a dyn IndexView, t: u64, base: &'a str) -> Self {
        Unifier { store, snapshot, view, t, base, persons: HashMap::new() }
    }

    /// The person of the Patient `patient`: its golden Patient and the Patients linked to it.
    fn person(&mut self, patient: &str) -> Result<Vec<String>, FhirError> {
        if let Some(person) = self.persons.get(patient) {
            return Ok(person.clone());
        }
        let person = self.store.mpi_read(|read| {
            let overlay = Overlay::new(read);
            match overlay.golden_id_of(patient)? {
                Some(golden_id) => person_of(&overlay, &golden_id),
                None if golden::is_golden(patient) => person_of(&overlay, patient),
                None => Ok(Vec::new()),
            }
        })?;
        self.persons.insert(patient.to_owned(), person.clone());
        Ok(person)
    }

    /// The resources of `resource_type` matching `criteria` (name, value pairs) as of the
    /// page's time, at most [`MAX_RELATED`], with their bodies.
    fn related(&self, resource_type: ResourceType, criteria: &[(&str, String)]) -> Result<Vec<Found>, FhirError> {
        let mut clauses = Vec::with_capacity(criteria.len());
        for (name, value) in criteria {
            match parse_clause(resource_type, name, value, self.base)? {
                Some(clause) => clauses.push(clause),
                None => return Ok(Vec::new()),
            }
        }
        let (query, _) = engine::Query::plan(self.view, resource_type, &clauses, self.t)?;
        let page = engine::run_directed(&query, None, Some(MAX_RELATED), false)?;
        let mut found = Vec::with_capacity(page.matches.len());
        for (id, version) in page.matches {
            let Some(stored) = self.snapshot.version(resource_type, &id, version)? else { continue };
            if let Ok(body) = serde_json::from_slice::<Value>(&stored.body) {
                found.push((id, version, body));
            }
        }
        Ok(found)
    }

    /// How the stored resource `id` (its `body`) is shown in a unified view: `None` when
    /// another report of the same fact stands for it (`in_view` tells whether a resource is
    /// among the view's matches), else the body, annotated when it names other reports or
    /// conflicts. Other types, and resources of no linked person, are shown as they are.
    pub fn present(
        &mut self,
        resource_type: ResourceType,
        id: &str,
        body: Vec<u8>,
        in_view: &dyn Fn(&str, u64) -> Result<bool, FhirError>,
    ) -> Result<Option<Vec<u8>>, FhirError> {
        let kind = resource_type.as_str();
        if kind != "Observation" && kind != "Appointment" {
            return Ok(Some(body));
        }
        let Ok(mut resource) = serde_json::from_slice::<Value>(&body) else { return Ok(Some(body)) };
        let patient = match kind {
            "Observation" => resource["subject"]["reference"].as_str().and_then(|r| patient_id(r, self.base)),
            _ => resource["participant"]
                .as_array()
                .into_iter()
                .flatten()
                .find_map(|p| p["actor"]["reference"].as_str().and_then(|r| patient_id(r, self.base))),
        };
        let Some(patient) = patient else { return Ok(Some(body)) };
        let own_source = source_of(&resource).map(str::to_owned);
        let person = self.person(&patient)?;
        if person.is_empty() {
            return Ok(Some(body));
        }
        let patients: String = person.iter().map(|p| format!("Patient/{p}")).collect::<Vec<_>>().join(",");
        let mut reports: BTreeMap<String, Option<String>> = BTreeMap::new();
        let mut conflicts: Vec<(String, Option<String>)> = Vec::new();
        if kind == "Observation" {
            let Some((fact, time)) = ObservationFact::of(&resource) else { return Ok(Some(body)) };
            let code = fact.codes.iter().next().cloned().unwrap_or_default();
            let criteria = [("code", code), ("date", format!("eq{time}")), ("subject", patients)];
            for (other, version, other_body) in self.related(resource_type, &criteria)? {
                if other == id || ObservationFact::of(&other_body).is_none_or(|(f, _)| !fact.same(&f)) {
                    continue;
                }
                if other.as_str() < id && in_view(&other, version)? {
                    return Ok(None);
                }
                reports.insert(other, source_of(&other_body).map(str::to_owned));
            }
        } else {
            let Some((fact, start)) = AppointmentFact::of(&resource, self.base) else { return Ok(Some(body)) };
            let criteria = [("date", format!("eq{start}")), ("patient", patients.clone())];
            for (other, version, other_body) in self.related(resource_type, &criteria)? {
                if other == id || AppointmentFact::of(&other_body, self.base).is_none_or(|(f, _)| !fact.same(&f)) {
                    continue;
                }
                if other.as_str() < id && in_view(&other, version)? {
                    return Ok(None);
                }
                reports.insert(other, source_of(&other_body).map(str::to_owned));
            }
            if fact.active {
                let earliest = crate::fhir::json::format_instant(fact.start - MAX_APPOINTMENT_MICROS);
                let latest = crate::fhir::json::format_instant(fact.end.max(fact.start + 1));
                let criteria =
                    [("date", format!("ge{earliest}")), ("date", format!("lt{latest}")), ("patient", patients)];
                for (other, _, other_body) in self.related(resource_type, &criteria)? {
                    if other == id || reports.contains_key(&other) {
                        continue;
                    }
                    let Some((other_fact, _)) = AppointmentFact::of(&other_body, self.base) else { continue };
                    let other_source = source_of(&other_body).map(str::to_owned);
                    if other_fact.active && other_source != own_source && fact.overlaps(&other_fact) {
                        conflicts.push((other, other_source));
                    }
                }
            }
        }
        if reports.is_empty() && conflicts.is_empty() {
            return Ok(Some(body));
        }
        let Some(object) = resource.as_object_mut() else { return Ok(Some(body)) };
        let extensions = object.entry("extension").or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(extensions) = extensions {
            if !reports.is_empty() {
                reports.insert(id.to_owned(), own_source.clone());
                for (report, source) in &reports {
                    extensions.push(json!({"url": REPORTED_BY, "valueReference": {
                        "reference": format!("{kind}/{report}"), "display": source.as_deref().unwrap_or("Braid")}}));
                }
            }
            for (other, source) in &conflicts {
                extensions.push(json!({"url": CONFLICTS_WITH, "valueReference": {
                    "reference": format!("{kind}/{other}"), "display": source.as_deref().unwrap_or("Braid")}}));
            }
        }
        if !conflicts.is_empty() {
            let meta = object.entry("meta").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                let tags = meta.entry("tag").or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(tags) = tags {
                    tags.push(json!({"system": UNIFIED_TAG_SYSTEM, "code": "conflict",
                        "display": "Overlaps an appointment from another provider"}));
                }
            }
        }
        Ok(Some(serde_json::to_vec(&resource).unwrap_or(body)))
    }
}
