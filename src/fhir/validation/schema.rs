//! Validation against the official R4 JSON schema.

use std::sync::OnceLock;

use jsonschema::error::ValidationErrorKind;
use serde_json::{Value, json};

use crate::fhir::json::pointer_to_expression;
use crate::fhir::resource_type::R4_RESOURCE_TYPES;
use crate::fhir::{Issue, IssueCode, ResourceType};

/// One compiled validator per resource type, built on first use.
///
/// Each validator checks against the type's own definition (`#/definitions/Patient`), not the
/// schema root: the root is a `oneOf` over all types, whose only error is "not valid under any
/// of the schemas". Nested resources (contained, bundle entries) are checked the same way, one
/// by one, so a large bundle costs the sum of its entries rather than a `oneOf` per entry.
pub struct SchemaSet {
    definitions: Value,
    compiled: Vec<OnceLock<jsonschema::Validator>>,
}

impl SchemaSet {
    pub fn load(schema_text: &str) -> Self {
        let mut schema: Value = serde_json::from_str(schema_text).expect("profiles/fhir.schema.json is valid JSON");
        let mut definitions = schema["definitions"].take();
        // A nested resource only has to be an object here; `check` validates it against its own
        // type afterwards, which yields errors that name the element.
        definitions["ResourceList"] = json!({"type": "object"});
        // The schema's complex types list their properties but not that they are objects, so
        // a number or a string where a Quantity belongs would pass: say it.
        if let Some(definitions) = definitions.as_object_mut() {
            for definition in definitions.values_mut() {
                if definition.get("properties").is_some() && definition.get("type").is_none() {
                    definition["type"] = json!("object");
                }
            }
        }
        SchemaSet { definitions, compiled: R4_RESOURCE_TYPES.iter().map(|_| OnceLock::new()).collect() }
    }

    /// The schema's `definitions`: each FHIR type's properties, with their cardinality
    /// (`"type": "array"`) and type (`$ref`).
    pub fn definitions(&self) -> &Value {
        &self.definitions
    }

    fn validator(&self, resource_type: ResourceType) -> &jsonschema::Validator {
        let index = R4_RESOURCE_TYPES.binary_search(&resource_type.as_str()).expect("a ResourceType is in the list");
        self.compiled[index].get_or_init(|| {
            let schema = json!({
                "$schema": "http://json-schema.org/draft-06/schema#",
                "definitions": self.definitions.clone(),
                "allOf": [{"$ref": format!("#/definitions/{resource_type}")}],
            });
            jsonschema::options().build(&schema).expect("the R4 schema compiles")
        })
    }

    /// Checks `value` and every resource nested in it, appending issues. `path` is the FHIRPath
    /// of `value` itself (its type name at the top level).
    pub fn check(&self, resource_type: ResourceType, value: &Value, path: &str, issues: &mut Vec<Issue>) {
        let validator = self.validator(resource_type);
        if !validator.is_valid(value) {
            for error in validator.iter_errors(value) {
                let at = pointer_to_expression(path, error.instance_path().as_str());
                match error.kind() {
                    ValidationErrorKind::AdditionalProperties { unexpected } => {
                        for name in unexpected {
                            issues.push(
                                Issue::error(IssueCode::Structure, format!("unknown element '{name}'"))
                                    .at(format!("{at}.{name}")),
                            );
                        }
                    }
                    ValidationErrorKind::Required { property } => {
                        let name = property.as_str().unwrap_or_default();
                        issues.push(
                            Issue::error(IssueCode::Required, format!("missing required element '{name}'"))
                                .at(format!("{at}.{name}")),
                        );
                    }
                    // A value of the right JSON type whose text or number breaks the element's
                    // rule (a pattern, a code list, a range) is a value issue; anything else
                    // (a wrong JSON type, a choice that fits no alternative) is structural.
                    ValidationErrorKind::Pattern { .. }
                    | ValidationErrorKind::Enum { .. }
                    | ValidationErrorKind::Format { .. }
                    | ValidationErrorKind::MinLength { .. }
                    | ValidationErrorKind::MaxLength { .. }
                    | ValidationErrorKind::Minimum { .. }
                    | ValidationErrorKind::Maximum { .. }
                    | ValidationErrorKind::ExclusiveMinimum { .. }
                    | ValidationErrorKind::ExclusiveMaximum { .. }
                    | ValidationErrorKind::MultipleOf { .. } => {
                        issues.push(Issue::error(IssueCode::Value, error.to_string()).at(at))
                    }
                    _ => issues.push(Issue::error(IssueCode::Structure, error.to_string()).at(at)),
                }
            }
        }
        self.check_nested(value, &mut path.to_owned(), true, issues);
    }

    fn check_nested(&self, value: &Value, path: &mut String, is_root: bool, issues: &mut Vec<Issue>) {
        match value {
            Value::Object(map) => {
                if !is_root {
                    if let Some(type_name) = map.get("resourceType").and_then(Value::as_str) {
                        match ResourceType::parse(type_name) {
                            Some(nested_type) => self.check(nested_type, value, path, issues),
                            None => issues.push(
                                Issue::error(
                                    IssueCode::NotSupported,
                                    format!("'{type_name}' is not an R4 resource type"),
                                )
                                .at(format!("{path}.resourceType")),
                            ),
                        }
                        return;
                    }
                }
                for (key, child) in map {
                    let len = path.len();
                    path.push('.');
                    path.push_str(key);
                    self.check_nested(child, path, false, issues);
                    path.truncate(len);
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{index}]"));
                    self.check_nested(item, path, false, issues);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
}
