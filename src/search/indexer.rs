//! Index values extracted from resources on write, driven by the search parameter registry.

use serde_json::Value;

use super::compartment::{COMPARTMENT_KEY, patient_compartment};
use super::fhirpath::Expr;
use super::registry::{ParamDef, ParamKind, registry};
use super::values;
use crate::fhir::ResourceType;
use crate::store::{IndexEntry, Indexer};

/// Indexes every supported search parameter of the resource's type (see [`values`] for the
/// encodings).
pub struct SearchIndexer;

impl Indexer for SearchIndexer {
    fn entries(&self, resource_type: ResourceType, resource: &Value) -> Vec<IndexEntry> {
        index_entries(resource_type, resource, None)
    }

    fn entries_on_base(&self, resource_type: ResourceType, resource: &Value, local_base: &str) -> Vec<IndexEntry> {
        index_entries(resource_type, resource, Some(local_base))
    }

    /// Only the parameters whose code starts one of `keys` (derived keys start with their
    /// parameter's code); compartment membership needs every link, so it indexes all.
    fn entries_for_keys(
        &self,
        resource_type: ResourceType,
        resource: &Value,
        local_base: &str,
        keys: &[&str],
    ) -> Vec<IndexEntry> {
        if keys.contains(&COMPARTMENT_KEY) {
            return index_entries(resource_type, resource, Some(local_base));
        }
        // A source's token checks every body it writes against `_source`: read `meta.source`
        // directly instead of going through the registry and the expression evaluator (a
        // `_source` clause reads the key `_source` whatever its modifier).
        let mut entries = if keys.iter().any(|key| *key != SOURCE_KEY) {
            param_entries(resource_type, resource, Some(local_base), &|def| {
                def.code != SOURCE_KEY && keys.iter().any(|key| key.starts_with(def.code.as_str()))
            })
        } else {
            Vec::new()
        };
        if keys.contains(&SOURCE_KEY) {
            entries.extend(source_entry(resource));
        }
        entries
    }

    fn derived_entry(&self, resource_type: ResourceType, param: &str, value: &[u8]) -> Option<IndexEntry> {
        values::derived_entry(resource_type, param, value)
    }

    fn index_keys(&self, resource_type: ResourceType) -> Vec<String> {
        registry().index_keys(resource_type)
    }

    /// Everything afresh from the body, except the values of reference parameters and
    /// compartment membership: a reference on the server's own base was indexed as the relative
    /// `Type/id` it stands for, and the base is not stored, so those come from `legacy` (their
    /// encoding has not changed).
    fn reindex_legacy(
        &self,
        resource_type: ResourceType,
        resource: &Value,
        legacy: &[(String, Vec<u8>)],
    ) -> Vec<IndexEntry> {
        let keeps_legacy = |param: &str| {
            param == COMPARTMENT_KEY
                || registry().get(resource_type, param).is_some_and(|def| def.kind == ParamKind::Reference)
        };
        let mut entries: Vec<IndexEntry> = index_entries(resource_type, resource, None)
            .into_iter()
            .filter(|entry| !keeps_legacy(&entry.param))
            .collect();
        entries.extend(
            legacy
                .iter()
                .filter(|(param, _)| keeps_legacy(param))
                .map(|(param, value)| IndexEntry { param: param.clone(), value: value.clone() }),
        );
        entries
    }

    /// The entries of the parameters that read nothing the writer changes (see
    /// [`depends_on_stored_form`]).
    fn prepare(&self, resource_type: ResourceType, resource: &Value) -> Option<Vec<IndexEntry>> {
        // FHIRPath evaluation takes the root's type from `resourceType`, which the writer stamps.
        if resource.get("resourceType").and_then(Value::as_str) != Some(resource_type.as_str()) {
            return None;
        }
        Some(param_entries(resource_type, resource, None, &|def| !depends_on_stored_form(def)))
    }

    /// `prepared`, plus the parameters that depend on the stored form, plus compartment
    /// membership (derived from all of them).
    fn complete(
        &self,
        resource_type: ResourceType,
        resource: &Value,
        local_base: Option<&str>,
        prepared: &[IndexEntry],
    ) -> Vec<IndexEntry> {
        let mut entries = prepared.to_vec();
        entries.extend(param_entries(resource_type, resource, local_base, &depends_on_stored_form));
        add_compartment_membership(resource_type, resource, &mut entries);
        entries
    }
}

/// Whether a parameter's entries can differ between the resource as sent and the version the
/// writer stores. The writer sets the root `id` and `meta.versionId` and `meta.lastUpdated`
/// (the rest of `meta`, such as `source`, `profile` and `tag`, is kept as sent) and rewrites
/// `reference` strings (`urn:uuid:`, conditional references), and indexes references on the
/// local base as relative: so every reference parameter (and composite with a reference
/// component) depends on it, as does every expression that steps into an element named `id`,
/// `reference`, `meta` itself or `meta.versionId`/`meta.lastUpdated`, or resolves a reference.
/// Everything else reads only what the client sent, unchanged. Erring towards `true` costs only
/// writer time, never correctness.
fn depends_on_stored_form(def: &ParamDef) -> bool {
    *def.stored_form.get_or_init(|| {
        def.kind == ParamKind::Reference
            || reads_stored_form(&def.expression)
            || def.components.iter().any(|c| c.kind == ParamKind::Reference || reads_stored_form(&c.expression))
    })
}

fn reads_stored_form(expression: &Expr) -> bool {
    match expression {
        Expr::This | Expr::Str(_) | Expr::Bool(_) => false,
        Expr::Resolve(_) => true,
        Expr::Child(inner, name) => match &**inner {
            // `X.meta.source` and the like: only the two stamped fields of `meta` change.
            Expr::Child(owner, parent) if parent == "meta" => {
                matches!(name.as_str(), "versionId" | "lastUpdated") || reads_stored_form(owner)
            }
            _ => matches!(name.as_str(), "id" | "meta" | "reference") || reads_stored_form(inner),
        },
        Expr::Index(inner, _)
        | Expr::OfType(inner, _)
        | Expr::Is(inner, _)
        | Expr::Exists(inner)
        | Expr::Extension(inner, _) => reads_stored_form(inner),
        Expr::Union(a, b) | Expr::And(a, b) | Expr::Equals(a, b, _) | Expr::Where(a, b) => {
            reads_stored_form(a) || reads_stored_form(b)
        }
    }
}

/// The parameter every type has on `meta.source` (`Resource.meta.source`, a uri).
const SOURCE_KEY: &str = "_source";

/// The `_source` entry of `resource`, as indexing `Resource.meta.source` makes it for a valid
/// resource (a uri is indexed as its text, cut like every textual value). The evaluator would
/// also read shapes validation refuses (a list where one value belongs); every body checked
/// this way has been validated.
fn source_entry(resource: &Value) -> Option<IndexEntry> {
    let source = resource.get("meta")?.get("source")?.as_str()?;
    Some(IndexEntry { param: SOURCE_KEY.to_owned(), value: values::bounded(source.as_bytes().to_vec()) })
}

/// The entries of every parameter, then compartment membership. References on `local_base`
/// are indexed as the relative `Type/id` they stand for, before membership is derived from
/// them, so that reference search, chains, `_has`, includes, compartments and `$everything`
/// find them. The stored resource keeps the reference as the client wrote it.
fn index_entries(resource_type: ResourceType, resource: &Value, local_base: Option<&str>) -> Vec<IndexEntry> {
    let mut entries = param_entries(resource_type, resource, local_base, &|_| true);
    add_compartment_membership(resource_type, resource, &mut entries);
    entries
}

/// The entries of the indexed parameters that `keep` selects: those that read nothing the
/// writer changes are computed before the request reaches it ([`Indexer::prepare`]), the
/// others in the writer ([`Indexer::complete`]); a body check computes only the parameters it
/// reads.
fn param_entries(
    resource_type: ResourceType,
    resource: &Value,
    local_base: Option<&str>,
    keep: &dyn Fn(&ParamDef) -> bool,
) -> Vec<IndexEntry> {
    registry()
        .params(resource_type)
        .filter(|def| def.alias_of.is_empty() && keep(def))
        .flat_map(|def| {
            let mut entries = values::entries(def, resource);
            if let (ParamKind::Reference, Some(base)) = (def.kind, local_base) {
                for entry in entries.iter_mut().filter(|entry| entry.param == def.code) {
                    if let Some(relative) = local_reference(&entry.value, base) {
                        entry.value = relative;
                    }
                }
            }
            entries
        })
        .collect()
}

/// Adds the Patient compartment membership derived from `entries`.
fn add_compartment_membership(resource_type: ResourceType, resource: &Value, entries: &mut Vec<IndexEntry>) {
    // Compartment membership: the patients the compartment parameters point at, and a
    // Patient is in its own compartment.
    let links = patient_compartment().params(resource_type);
    let mut members: Vec<Vec<u8>> = entries
        .iter()
        .filter(|entry| links.contains(&entry.param) && entry.value.starts_with(b"Patient/"))
        .map(|entry| entry.value.clone())
        .collect();
    if resource_type.as_str() == "Patient" {
        if let Some(id) = resource.get("id").and_then(Value::as_str) {
            members.push(format!("Patient/{id}").into_bytes());
        }
    }
    members.sort();
    members.dedup();
    entries.extend(members.into_iter().map(|value| IndexEntry { param: COMPARTMENT_KEY.to_owned(), value }));
}

/// `base/Type/id` as `Type/id`, when `reference` is on `base` and names a resource type and
/// an id; anything else (another server, a bare `base/metadata`) is left alone.
fn local_reference(reference: &[u8], base: &str) -> Option<Vec<u8>> {
    let base = base.trim_end_matches('/');
    let rest = reference.strip_prefix(base.as_bytes())?.strip_prefix(b"/")?;
    let rest = std::str::from_utf8(rest).ok()?;
    let (type_name, id) = rest.split_once('/')?;
    ResourceType::parse(type_name)?;
    crate::fhir::Id::parse(id).ok()?;
    Some(rest.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entries_of(resource: Value) -> Vec<(String, Vec<u8>)> {
        let resource_type = ResourceType::parse(resource["resourceType"].as_str().unwrap()).unwrap();
        SearchIndexer.entries(resource_type, &resource).into_iter().map(|e| (e.param, e.value)).collect()
    }

    fn has(entries: &[(String, Vec<u8>)], param: &str, value: &[u8]) -> bool {
        entries.iter().any(|(p, v)| p == param && v == value)
    }

    #[test]
    fn a_patient_is_indexed_for_its_parameters() {
        let entries = entries_of(json!({"resourceType": "Patient", "id": "p1",
            "identifier": [{"system": "http://h", "value": "1"}, {"value": "2"}],
            "name": [{"family": "Müller", "given": ["Anna"]}], "gender": "female", "birthDate": "1980-02",
            "meta": {"lastUpdated": "2024-01-01T00:00:00Z", "tag": [{"system": "http://t", "code": "x"}]}}));
        // Tokens: one entry each, `code 0x00 system` (the system empty when there is none; here
        // 0x15 stands for `http://`, see `values::push_system`).
        for (param, value) in [
            ("identifier", &b"1\0\x15h"[..]),
            ("identifier", b"2\0"),
            ("family", b"muller"),
            ("family:exact", "Müller".as_bytes()),
            ("name", b"anna"),
            ("gender", b"female\0"),
            ("_id", b"p1\0"),
            ("_tag", b"x\0\x15t"),
        ] {
            assert!(has(&entries, param, value), "{param}={}", String::from_utf8_lossy(value));
        }
        assert_eq!(entries.iter().filter(|(p, _)| p == "identifier").count(), 2, "one entry per identifier");
        let birthdate = entries.iter().find(|(p, _)| p == "birthdate").unwrap();
        assert_eq!(values::decode_range(&birthdate.1), values::parse_date_range("1980-02"));
    }

    /// The body checks' shortcut for `_source` gives what indexing `Resource.meta.source`
    /// gives, on every type.
    #[test]
    fn the_source_entry_read_directly_is_the_indexed_one() {
        let long = format!("urn:braid:source:{}", "é".repeat(values::MAX_INDEXED_BYTES));
        let metas = [
            json!({"source": "urn:braid:source:clinic"}),
            json!({"source": long}),
            json!({"source": 42}),
            json!({"profile": ["http://x"]}),
            json!("not an object"),
        ];
        for resource_type in ["Patient", "Observation", "Provenance", "Bundle", "Binary", "Appointment"] {
            let parsed = ResourceType::parse(resource_type).unwrap();
            assert!(registry().get(parsed, SOURCE_KEY).is_some(), "{resource_type} has _source");
            for meta in &metas {
                let resource = json!({"resourceType": resource_type, "id": "x1", "meta": meta});
                let indexed: Vec<IndexEntry> =
                    SearchIndexer.entries(parsed, &resource).into_iter().filter(|e| e.param == SOURCE_KEY).collect();
                let direct = SearchIndexer.entries_for_keys(parsed, &resource, "http://b/fhir", &[SOURCE_KEY]);
                assert_eq!(direct, indexed, "{resource_type} with meta {meta}");
                // Asked together with another key, both are there, `_source` once.
                let both = SearchIndexer.entries_for_keys(parsed, &resource, "http://b/fhir", &[SOURCE_KEY, "_id"]);
                assert_eq!(both.iter().filter(|e| e.param == SOURCE_KEY).count(), indexed.len());
                assert!(both.iter().any(|e| e.param == "_id"), "{both:?}");
            }
        }
    }

    /// The split the writer relies on: what `prepare` computes from the resource as sent, plus
    /// what `complete` adds on the stored form, is exactly the stored form's full indexing.
    #[test]
    fn prepared_and_completed_entries_are_the_stored_forms_entries() {
        use std::collections::BTreeSet;
        let sent = json!({"resourceType": "Observation", "id": "clinic-o1", "status": "final",
            "meta": {"source": "urn:braid:source:clinic", "profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"],
                     "tag": [{"system": "http://t", "code": "x"}], "security": [{"code": "N"}]},
            "identifier": [{"system": "urn:braid:source:clinic", "value": "o1"}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "urn:uuid:0b1f"}, "valueQuantity": {"value": 72, "unit": "/min"}});
        let observation = ResourceType::parse("Observation").unwrap();
        let prepared = SearchIndexer.prepare(observation, &sent).unwrap();
        let params = |entries: &[IndexEntry]| entries.iter().map(|e| e.param.clone()).collect::<BTreeSet<_>>();
        // `meta.source`, `profile`, `tag` and `security` are the client's: read before queueing.
        for param in ["_source", "_profile", "_tag", "_security", "identifier", "code"] {
            assert!(params(&prepared).contains(param), "{param} is prepared");
        }
        // The stamped fields, and references the writer may rewrite, wait for the stored form.
        for param in ["_lastUpdated", "_id", "subject", "patient"] {
            assert!(!params(&prepared).contains(param), "{param} is not prepared");
        }
        let mut stored = sent.clone();
        stored["subject"]["reference"] = json!("Patient/clinic-p1");
        stored["meta"]["versionId"] = json!("1");
        stored["meta"]["lastUpdated"] = json!("2026-11-27T10:00:00.000Z");
        let sorted = |entries: Vec<IndexEntry>| {
            let mut pairs: Vec<(String, Vec<u8>)> = entries.into_iter().map(|e| (e.param, e.value)).collect();
            pairs.sort();
            pairs
        };
        let completed = sorted(SearchIndexer.complete(observation, &stored, None, &prepared));
        assert_eq!(completed, sorted(SearchIndexer.entries(observation, &stored)));
        assert!(completed.iter().any(|(param, value)| param == "_source" && value == b"urn:braid:source:clinic"));
    }

    #[test]
    fn references_on_the_local_base_are_indexed_as_relative() {
        let observation = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "http://host/fhir/Patient/r1"},
            "performer": [{"reference": "http://host/fhir/Practitioner/d1/_history/3"},
                {"reference": "http://elsewhere/fhir/Practitioner/d2"}, {"reference": "http://host/fhir/metadata"}]});
        let observation_type = ResourceType::parse("Observation").unwrap();
        let entries: Vec<(String, Vec<u8>)> = SearchIndexer
            .entries_on_base(observation_type, &observation, "http://host/fhir")
            .into_iter()
            .map(|e| (e.param, e.value))
            .collect();
        assert!(has(&entries, "subject", b"Patient/r1"));
        assert!(has(&entries, "patient", b"Patient/r1"));
        assert!(has(&entries, COMPARTMENT_KEY, b"Patient/r1"));
        assert!(has(&entries, "performer", b"Practitioner/d1"));
        assert!(has(&entries, "performer", b"http://elsewhere/fhir/Practitioner/d2"));
        assert!(has(&entries, "performer", b"http://host/fhir/metadata"));
        // Without a base, or on another one, the URL is indexed as written.
        let plain = entries_of(observation.clone());
        assert!(has(&plain, "subject", b"http://host/fhir/Patient/r1") && !has(&plain, COMPARTMENT_KEY, b"Patient/r1"));
        assert_eq!(local_reference(b"http://host/fhirx/Patient/r1", "http://host/fhir"), None);
        assert_eq!(local_reference(b"http://host/fhir/Patient/r1", "http://host/fhir/"), Some(b"Patient/r1".to_vec()));
    }

    #[test]
    fn an_observation_is_indexed_for_references_quantities_and_composites() {
        let entries = entries_of(json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
            "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-05-01T10:00:00Z",
            "valueQuantity": {"value": 72, "unit": "beats/min", "system": "http://unitsofmeasure.org", "code": "/min"}}));
        assert!(has(&entries, "subject", b"Patient/p1"));
        assert!(has(&entries, "patient", b"Patient/p1"));
        assert!(has(&entries, "code", b"8867-4\0\x01"));
        assert_eq!(entries.iter().filter(|(p, _)| p == "code").count(), 1);
        assert!(has(&entries, "code:text", b"heart rate"));
        let quantity = values::quantity_key(
            72.0,
            &values::QuantityUnits { system: "http://unitsofmeasure.org", code: "/min", unit: "beats/min" },
        );
        assert!(has(&entries, "value-quantity", &quantity));
        assert_eq!(entries.iter().filter(|(p, _)| p == "value-quantity").count(), 1, "one entry per quantity");
        let mut combo = b"8867-4\0\x01".to_vec();
        combo.extend_from_slice(&[0, 0]);
        combo.extend_from_slice(&quantity);
        assert!(has(&entries, "code-value-quantity", &combo));
        assert_eq!(entries.iter().filter(|(p, _)| p == "code-value-quantity").count(), 1);
        assert!(entries.iter().any(|(p, _)| p == "date"));
        assert!(has(&entries, COMPARTMENT_KEY, b"Patient/p1"));
    }
}

#[cfg(test)]
mod entry_count {
    use super::*;
    use serde_json::json;

    #[test]
    #[ignore = "prints the index entries of a typical vital sign; run by hand"]
    fn print_entries_of_a_vital_sign() {
        let observation = json!({"resourceType": "Observation", "id": "o", "meta": {"lastUpdated": "2024-01-01T00:00:00Z", "profile": ["http://hl7.org/fhir/StructureDefinition/heartrate"]}, "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}, "subject": {"reference": "Patient/p"},
            "effectiveDateTime": "2024-01-01T00:00:00Z", "valueQuantity": {"value": 60, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}});
        let entries = SearchIndexer.entries(ResourceType::parse("Observation").unwrap(), &observation);
        for entry in &entries {
            println!("{:30} {:?}", entry.param, String::from_utf8_lossy(&entry.value));
        }
        println!("{} entries", entries.len());
    }
}
