//! The Provenance each push leaves: who (the source, and the client that pushed), when (the
//! commit's instant, which is every written version's `meta.lastUpdated`) and what (every
//! version the push wrote, as versioned references, and the operation when all were one).
//!
//! The writer calls [`recorder`]'s closure inside the push's own commit (see
//! `store::RecordChanges`), so a push and its Provenance commit together, and a push that
//! changed nothing (an identical re-push) leaves none.

use std::fmt::Write;
use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::SourceName;
use crate::store::{ChangeKind, Changed, RecordChanges};

/// The code system of `Provenance.activity`.
const DATA_OPERATION: &str = "http://terminology.hl7.org/CodeSystem/v3-DataOperation";

/// The code system of `Provenance.agent.type`.
const PARTICIPANT_TYPE: &str = "http://terminology.hl7.org/CodeSystem/provenance-participant-type";

/// The identifier system naming Braid's clients.
pub const CLIENT_SYSTEM: &str = "urn:braid:client";

/// What makes the Provenance of a push by `source` through `client_id`.
pub fn recorder(source: &SourceName, client_id: Option<&str>) -> RecordChanges {
    let (source, client_id) = (source.clone(), client_id.map(str::to_owned));
    RecordChanges(Arc::new(move |changes: &[Changed], recorded: &str| {
        provenance(&source, client_id.as_deref(), changes, recorded)
    }))
}

/// The Provenance of the push that made `changes`, committed at `recorded`.
pub fn provenance(
    source: &SourceName,
    client_id: Option<&str>,
    changes: &[Changed],
    recorded: &str,
) -> Map<String, Value> {
    // Built as values directly: a push of many resources makes as many targets, and `json!`
    // would copy a prebuilt list element by element.
    let targets: Vec<Value> = changes.iter().map(target).collect();
    let mut agents = vec![json!({
        "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author", "display": "Author"}]},
        "who": {"identifier": {"system": "urn:braid:source", "value": source.as_str()},
                "display": format!("source {}", source.as_str())},
    })];
    if let Some(client_id) = client_id {
        agents.push(json!({
            "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "performer", "display": "Performer"}]},
            "who": {"identifier": {"system": CLIENT_SYSTEM, "value": client_id}},
            "onBehalfOf": {"identifier": {"system": "urn:braid:source", "value": source.as_str()}},
        }));
    }
    let mut resource = Map::new();
    resource.insert("resourceType".to_owned(), "Provenance".into());
    resource.insert("meta".to_owned(), json!({"source": source.uri()}));
    resource.insert("target".to_owned(), Value::Array(targets));
    resource.insert("recorded".to_owned(), recorded.into());
    resource.insert("agent".to_owned(), Value::Array(agents));
    let first = changes.first().map(|changed| changed.kind);
    if let Some(kind) = first.filter(|kind| changes.iter().all(|changed| changed.kind == *kind)) {
        let (code, display) = match kind {
            ChangeKind::Created => ("CREATE", "create"),
            ChangeKind::Updated => ("UPDATE", "revise"),
            ChangeKind::Deleted => ("DELETE", "delete"),
        };
        resource.insert(
            "activity".to_owned(),
            json!({"coding": [{"system": DATA_OPERATION, "code": code, "display": display}]}),
        );
    }
    resource
}

/// `{"reference": "Type/id/_history/version"}` for one changed version.
fn target(changed: &Changed) -> Value {
    let (resource_type, id) = (changed.resource_type.as_str(), changed.id.as_str());
    let mut reference = String::with_capacity(resource_type.len() + id.len() + 32);
    // Writing to a String cannot fail.
    let _ = write!(reference, "{resource_type}/{id}/_history/{}", changed.version);
    let mut target = Map::with_capacity(1);
    target.insert("reference".to_owned(), Value::String(reference));
    Value::Object(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::validation::validator;
    use crate::fhir::{Id, ResourceType};

    fn changed(type_name: &str, id: &str, version: u64, kind: ChangeKind) -> Changed {
        Changed { resource_type: ResourceType::parse(type_name).unwrap(), id: Id::parse(id).unwrap(), version, kind }
    }

    #[test]
    fn a_push_is_recorded_as_a_valid_provenance_naming_every_version() {
        let source = SourceName::parse("clinic").unwrap();
        let changes = [
            changed("Patient", "clinic-1", 1, ChangeKind::Created),
            changed("Observation", "clinic-2", 3, ChangeKind::Updated),
        ];
        let resource = Value::Object(provenance(&source, Some("c-1"), &changes, "2026-11-26T10:00:00.000Z"));
        validator().validate_value(ResourceType::parse("Provenance").unwrap(), &resource).unwrap();
        assert_eq!(resource["target"][0]["reference"], "Patient/clinic-1/_history/1");
        assert_eq!(resource["target"][1]["reference"], "Observation/clinic-2/_history/3");
        assert_eq!(resource["recorded"], "2026-11-26T10:00:00.000Z");
        assert_eq!(resource["agent"][0]["who"]["identifier"]["value"], "clinic");
        assert_eq!(resource["agent"][1]["who"]["identifier"]["value"], "c-1");
        assert!(resource.get("activity").is_none(), "a mixed push names no single operation");
        let deletes = [changed("Patient", "clinic-1", 2, ChangeKind::Deleted)];
        let resource = Value::Object(provenance(&source, None, &deletes, "2026-11-26T10:00:00.000Z"));
        assert_eq!(resource["activity"]["coding"][0]["code"], "DELETE");
        assert_eq!(resource["agent"].as_array().unwrap().len(), 1);
    }
}
