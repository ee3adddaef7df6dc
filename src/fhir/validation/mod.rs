//! Checks every resource Braid stores: structure against the official R4 JSON schema, then the
//! rules of the profiles in `profiles/`.
//!
//! Structural problems are `Incorrect` (400); profile violations are `Unprocessable` (422).
//! Either way every issue names the offending element in `expression`.

mod primitives;
mod profile;
mod schema;

use std::sync::LazyLock;

use primitives::PrimitiveTypes;
pub use profile::{Profile, ProfileSet};
pub use schema::SchemaSet;

use super::json::find_empty_elements;
use super::{Category, FhirError, Issue, IssueCode, ResourceType};

/// At most this many issues are reported for one resource; the first ones are the useful ones.
const MAX_ISSUES: usize = 50;

/// The schema and profiles shipped in `profiles/`, compiled into the binary so that Braid never
/// depends on files next to it at run time. Schemas compile per resource type on first use.
static VALIDATOR: LazyLock<Validator> = LazyLock::new(|| {
    let schemas = SchemaSet::load(include_str!("../../../profiles/fhir.schema.json"));
    Validator {
        primitives: PrimitiveTypes::load(schemas.definitions()),
        schemas,
        profiles: ProfileSet::load(&[include_str!("../../../profiles/vitalsigns.rules.json")]),
    }
});

pub struct Validator {
    schemas: SchemaSet,
    primitives: PrimitiveTypes,
    profiles: ProfileSet,
}

/// The process-wide validator.
pub fn validator() -> &'static Validator {
    &VALIDATOR
}

impl Validator {
    /// Validates a resource (whose `resourceType` is `resource_type`), including every resource
    /// nested in it (contained resources, bundle entries, parameters). On success, returns the
    /// warnings: rules of profiles the resource resembles but does not claim.
    pub fn validate_value(
        &self,
        resource_type: ResourceType,
        value: &serde_json::Value,
    ) -> Result<Vec<Issue>, FhirError> {
        let mut issues = Vec::new();
        for expression in find_empty_elements(resource_type.as_str(), value) {
            issues.push(
                Issue::error(IssueCode::Invalid, "elements must not be null, empty objects or empty arrays (ele-1)")
                    .at(expression),
            );
        }
        self.schemas.check(resource_type, value, resource_type.as_str(), &mut issues);
        // Values the schema's patterns let through: impossible dates, out-of-range numbers,
        // control characters.
        self.primitives.check(resource_type.as_str(), value, resource_type.as_str(), &mut issues, MAX_ISSUES);
        issues.truncate(MAX_ISSUES);
        if !issues.is_empty() {
            return Err(FhirError::with_issues(Category::Incorrect, issues));
        }
        let mut warnings = Vec::new();
        self.profiles.check(resource_type, value, &mut issues, &mut warnings);
        issues.truncate(MAX_ISSUES);
        if !issues.is_empty() {
            return Err(FhirError::with_issues(Category::Unprocessable, issues));
        }
        warnings.truncate(MAX_ISSUES);
        Ok(warnings)
    }

    /// The R4 JSON schema's type definitions (element cardinality and types).
    pub fn schema_definitions(&self) -> &serde_json::Value {
        self.schemas.definitions()
    }

    pub fn profiles(&self) -> &ProfileSet {
        &self.profiles
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(value: serde_json::Value) -> Result<Vec<Issue>, FhirError> {
        let resource_type = crate::fhir::json::resource_type_of(&value).unwrap();
        validator().validate_value(resource_type, &value)
    }

    #[test]
    fn a_valid_patient_passes() {
        check(json!({"resourceType": "Patient", "name": [{"family": "Chalmers", "given": ["Peter"]}],
            "birthDate": "1974-12-25"}))
        .unwrap();
    }

    #[test]
    fn schema_errors_name_the_element() {
        let error = check(json!({"resourceType": "Patient", "birthDate": "25/12/1974", "colour": "blue"})).unwrap_err();
        assert_eq!(error.status(), 400);
        let expressions: Vec<&str> =
            error.issues.iter().flat_map(|i| i.expression.iter().map(String::as_str)).collect();
        assert!(expressions.contains(&"Patient.birthDate"), "{expressions:?}");
        assert!(expressions.contains(&"Patient.colour"), "{expressions:?}");
    }

    #[test]
    fn a_value_of_the_wrong_json_type_where_a_complex_type_belongs_is_a_structural_error() {
        for (value, at) in [
            (
                json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": 5}),
                "Observation.valueQuantity",
            ),
            (json!({"resourceType": "Patient", "maritalStatus": "married"}), "Patient.maritalStatus"),
            (json!({"resourceType": "Patient", "name": [["Peter"]]}), "Patient.name[0]"),
        ] {
            let error = check(value.clone()).expect_err(&value.to_string());
            assert_eq!(error.issues[0].code, IssueCode::Structure, "{value}");
            assert_eq!(error.issues[0].expression, [at], "{value}");
        }
    }

    #[test]
    fn nested_resources_are_validated_with_their_own_type() {
        let error = check(json!({"resourceType": "Patient", "contained": [
            {"resourceType": "Organization", "id": "o", "active": "yes"}]}))
        .unwrap_err();
        assert_eq!(error.issues[0].expression, vec!["Patient.contained[0].active"]);
    }

    #[test]
    fn a_vital_sign_without_category_fails_the_profile() {
        let error = check(json!({"resourceType": "Observation", "status": "final",
            "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/heartrate"]},
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/p"}, "effectiveDateTime": "2024-01-01",
            "valueQuantity": {"value": 60, "system": "http://unitsofmeasure.org", "code": "/s"}}))
        .unwrap_err();
        assert_eq!(error.status(), 422);
        let expressions: Vec<&str> =
            error.issues.iter().flat_map(|i| i.expression.iter().map(String::as_str)).collect();
        assert_eq!(expressions, vec!["Observation.category", "Observation.valueQuantity.code"]);
    }

    #[test]
    fn a_vital_sign_that_does_not_claim_the_profile_only_gets_warnings() {
        let warnings = check(json!({"resourceType": "Observation", "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
            "subject": {"reference": "Patient/p"}, "valueQuantity": {"value": 60, "system": "http://unitsofmeasure.org", "code": "/min"}}))
        .unwrap();
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].severity, crate::fhir::error::Severity::Warning);
        assert_eq!(warnings[0].expression, vec!["Observation.effectiveDateTime"]);
    }

    #[test]
    fn the_schema_knows_exactly_the_r4_resource_types() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../../../profiles/fhir.schema.json")).unwrap();
        let mut from_schema: Vec<&str> =
            schema["discriminator"]["mapping"].as_object().unwrap().keys().map(String::as_str).collect();
        from_schema.sort();
        assert_eq!(from_schema, crate::fhir::resource_type::R4_RESOURCE_TYPES.to_vec());
    }
}
