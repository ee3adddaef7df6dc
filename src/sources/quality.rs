//! A source's data-quality policy.
//!
//! Validation tells two kinds of failure apart. Structural errors (an unknown element, a
//! missing required one, a value of the wrong JSON type) mean Braid cannot tell what the
//! resource says: they are always refused. Value errors (a code or URI with a space, a date
//! that does not exist, a code outside its required list, a number out of range, a profile's
//! value rule) leave the resource readable but wrong in a detail. A strict source (the default)
//! has those refused too; a lenient one has the resource stored as sent, with the issues kept
//! inside it, where every reader sees them:
//!
//! - a contained OperationOutcome (id [`CONTAINED_ID`]) lists the issues, as warnings;
//! - an extension ([`ISSUES_EXTENSION`]) on the resource points at it (so that it is a
//!   referenced contained resource, as FHIR requires);
//! - a tag ([`QUALITY_TAG_SYSTEM`]`|`[`QUALITY_TAG_CODE`]) in `meta.tag` lets a search find every
//!   resource stored with issues (`_tag=urn:braid:quality|issues`).
//!
//! The three are a function of the resource as sent, so an identical re-push is still
//! identical, and a corrected push (without them) replaces them.

use serde_json::{Map, Value, json};

use crate::fhir::error::Severity;
use crate::fhir::{FhirError, Issue, IssueCode};

/// The system of the tag on resources stored with data-quality issues.
pub const QUALITY_TAG_SYSTEM: &str = "urn:braid:quality";

/// The tag's code.
pub const QUALITY_TAG_CODE: &str = "issues";

/// The extension that points at the contained OperationOutcome.
pub const ISSUES_EXTENSION: &str = "urn:braid:quality-issues";

/// The id of the contained OperationOutcome.
pub const CONTAINED_ID: &str = "braid-quality-issues";

/// Whether a validation failure breaks only value rules (see the module's description).
pub fn only_value_issues(error: &FhirError) -> bool {
    !error.issues.is_empty() && error.issues.iter().all(|issue| issue.code == IssueCode::Value)
}

/// Whether `body`, a stored version's JSON (as the writer serialises it, without spaces),
/// holds the issues [`record_issues`] keeps: its contained OperationOutcome.
pub fn holds_issues(body: &[u8]) -> bool {
    static MARK: std::sync::LazyLock<Vec<u8>> =
        std::sync::LazyLock::new(|| format!("\"id\":\"{CONTAINED_ID}\"").into_bytes());
    body.windows(MARK.len()).any(|window| window == MARK.as_slice())
}

/// Keeps `issues` inside `resource` (see the module's description). Fails when the resource
/// cannot hold them: a type without `contained` and `extension` (Bundle, Binary, Parameters),
/// or one that already has a contained resource with [`CONTAINED_ID`].
pub fn record_issues(resource: &mut Map<String, Value>, issues: &[Issue]) -> Result<(), FhirError> {
    let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or("").to_owned();
    let definitions = crate::fhir::validation::validator().schema_definitions();
    let properties = &definitions[resource_type.as_str()]["properties"];
    if properties.get("contained").is_none() || properties.get("extension").is_none() {
        return Err(FhirError::incorrect(
            IssueCode::Value,
            format!("a {resource_type} cannot hold data-quality issues, so it is stored only without any"),
        ));
    }
    let outcome = json!({
        "resourceType": "OperationOutcome",
        "id": CONTAINED_ID,
        "issue": issues
            .iter()
            .map(|issue| Issue { severity: Severity::Warning, ..issue.clone() }.to_json())
            .collect::<Vec<_>>(),
    });
    let contained = resource.entry("contained").or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(contained) = contained else {
        return Err(FhirError::incorrect(IssueCode::Structure, "contained must be a list").at("contained"));
    };
    if contained.iter().any(|item| item["id"] == CONTAINED_ID) {
        return Err(FhirError::incorrect(
            IssueCode::Value,
            format!("a contained resource already has the id {CONTAINED_ID}, which Braid uses for data-quality issues"),
        ));
    }
    contained.push(outcome);
    let extensions = resource.entry("extension").or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(extensions) = extensions else {
        return Err(FhirError::incorrect(IssueCode::Structure, "extension must be a list").at("extension"));
    };
    extensions.push(json!({"url": ISSUES_EXTENSION, "valueReference": {"reference": format!("#{CONTAINED_ID}")}}));
    let meta = resource.entry("meta").or_insert_with(|| Value::Object(Map::new()));
    let Value::Object(meta) = meta else {
        return Err(FhirError::incorrect(IssueCode::Structure, "meta must be an object").at("meta"));
    };
    let tags = meta.entry("tag").or_insert_with(|| Value::Array(Vec::new()));
    let Value::Array(tags) = tags else {
        return Err(FhirError::incorrect(IssueCode::Structure, "meta.tag must be a list").at("meta.tag"));
    };
    tags.push(json!({
        "system": QUALITY_TAG_SYSTEM,
        "code": QUALITY_TAG_CODE,
        "display": "stored with data-quality issues (see the contained OperationOutcome)",
    }));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::ResourceType;
    use crate::fhir::validation::validator;

    fn validate(value: &Value) -> Result<Vec<Issue>, FhirError> {
        let resource_type = ResourceType::parse(value["resourceType"].as_str().unwrap()).unwrap();
        validator().validate_value(resource_type, value)
    }

    #[test]
    fn value_rules_and_structure_are_told_apart() {
        let value_only = [
            json!({"resourceType": "Patient", "identifier": [{"system": "http://bad system", "value": "1"}]}),
            json!({"resourceType": "Patient", "birthDate": "2021-02-30"}),
            json!({"resourceType": "Patient", "gender": "mail"}),
            json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4 "}]}}),
        ];
        for resource in value_only {
            let error = validate(&resource).unwrap_err();
            assert!(only_value_issues(&error), "{resource}: {:?}", error.issues);
        }
        let structural = [
            json!({"resourceType": "Patient", "colour": "blue"}),
            json!({"resourceType": "Patient", "birthDate": 1974}),
            json!({"resourceType": "Patient", "name": "Peter"}),
            json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": 5}),
            json!({"resourceType": "Patient", "gender": "mail", "active": "yes"}),
        ];
        for resource in structural {
            let error = validate(&resource).unwrap_err();
            assert!(!only_value_issues(&error), "{resource}: {:?}", error.issues);
        }
    }

    #[test]
    fn issues_are_kept_inside_the_resource_where_readers_see_them() {
        let Value::Object(mut resource) = json!({"resourceType": "Patient", "birthDate": "2021-02-30",
            "meta": {"tag": [{"system": "http://x", "code": "y"}]}})
        else {
            unreachable!()
        };
        let error = validate(&Value::Object(resource.clone())).unwrap_err();
        record_issues(&mut resource, &error.issues).unwrap();
        let resource = Value::Object(resource);
        assert_eq!(resource["contained"][0]["resourceType"], "OperationOutcome");
        assert_eq!(resource["contained"][0]["issue"][0]["severity"], "warning");
        assert_eq!(resource["contained"][0]["issue"][0]["expression"][0], "Patient.birthDate");
        assert_eq!(resource["extension"][0]["valueReference"]["reference"], "#braid-quality-issues");
        assert_eq!(resource["meta"]["tag"][1]["system"], QUALITY_TAG_SYSTEM);
        assert_eq!(resource["birthDate"], "2021-02-30", "the value is kept as sent");
        // What Braid adds is itself valid, apart from the issue it records.
        let again = validate(&resource).unwrap_err();
        assert_eq!(again.issues.len(), 1, "{:?}", again.issues);
        // The stored version says it holds issues; one without them does not.
        assert!(holds_issues(&serde_json::to_vec(&resource).unwrap()));
        let clean = json!({"resourceType": "Patient", "birthDate": "2021-02-28", "id": "braid-quality"});
        assert!(!holds_issues(&serde_json::to_vec(&clean).unwrap()));
        let Value::Object(mut binary) = json!({"resourceType": "Binary", "contentType": "text/plain"}) else {
            unreachable!()
        };
        assert!(record_issues(&mut binary, &error.issues).is_err());
    }
}
