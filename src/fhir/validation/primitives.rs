//! Checks of primitive values that the R4 JSON schema cannot express: calendar dates that do not
//! exist (`2021-02-30`), integers outside their 32-bit ranges, decimals with absurd precision or
//! an exponent no 64-bit float can hold, and control characters in strings.
//!
//! Which element holds which primitive type comes from the schema itself: every property of a
//! definition either `$ref`s a primitive definition (`#/definitions/date`), repeats a primitive's
//! pattern inline, or `$ref`s a complex type (`HumanName`, `Patient_Contact`) or `ResourceList`
//! (a nested resource). [`PrimitiveTypes::check`] walks a resource once along those definitions,
//! so its cost is linear in the size of the resource; its recursion follows the JSON nesting,
//! which the parser's depth limit bounds.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::fhir::{Issue, IssueCode};

/// Most significant digits (counting every digit of the mantissa after leading zeros) a decimal
/// may have. R4 leaves decimal precision to implementations; 32 digits is well beyond any
/// measured value (IEEE 754 doubles carry 17) and keeps `1.000…` with 100,000 digits out.
pub const MAX_DECIMAL_DIGITS: usize = 32;

/// The primitive types whose values need more than the schema's pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Primitive {
    Date,
    DateTime,
    Instant,
    Integer,
    PositiveInt,
    UnsignedInt,
    Decimal,
}

impl Primitive {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "date" => Primitive::Date,
            "dateTime" => Primitive::DateTime,
            "instant" => Primitive::Instant,
            "integer" => Primitive::Integer,
            "positiveInt" => Primitive::PositiveInt,
            "unsignedInt" => Primitive::UnsignedInt,
            "decimal" => Primitive::Decimal,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Primitive::Date => "date",
            Primitive::DateTime => "dateTime",
            Primitive::Instant => "instant",
            Primitive::Integer => "integer",
            Primitive::PositiveInt => "positiveInt",
            Primitive::UnsignedInt => "unsignedInt",
            Primitive::Decimal => "decimal",
        }
    }
}

/// What a property of a definition holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Element {
    Primitive(Primitive),
    /// A complex type or backbone element, by its definition name.
    Complex(String),
    /// A nested resource, checked against the definition its `resourceType` names.
    Resource,
    /// Anything else: other primitives, enums, `resourceType`.
    Other,
}

/// Per definition name, what each of its properties holds.
pub struct PrimitiveTypes {
    definitions: HashMap<String, HashMap<String, Element>>,
}

impl PrimitiveTypes {
    /// Reads the `definitions` of the R4 JSON schema.
    pub fn load(definitions: &Value) -> Self {
        let empty = Map::new();
        let definitions = definitions.as_object().unwrap_or(&empty);
        // Some properties repeat a primitive's pattern instead of `$ref`ing it.
        let by_pattern: HashMap<&str, Primitive> = definitions
            .iter()
            .filter_map(|(name, definition)| Some((definition.get("pattern")?.as_str()?, Primitive::from_name(name)?)))
            .collect();
        let classify = |property: &Value| -> Element {
            let property = property.get("items").unwrap_or(property);
            if let Some(reference) = property.get("$ref").and_then(Value::as_str) {
                let name = reference.trim_start_matches("#/definitions/");
                return match Primitive::from_name(name) {
                    Some(primitive) => Element::Primitive(primitive),
                    None if name == "ResourceList" => Element::Resource,
                    None if definitions.get(name).is_some_and(|d| d.get("properties").is_some()) => {
                        Element::Complex(name.to_owned())
                    }
                    None => Element::Other,
                };
            }
            match property.get("pattern").and_then(Value::as_str).and_then(|p| by_pattern.get(p)) {
                Some(primitive) => Element::Primitive(*primitive),
                None => Element::Other,
            }
        };
        let definitions = definitions
            .iter()
            .filter_map(|(name, definition)| {
                let properties = definition.get("properties")?.as_object()?;
                let elements = properties
                    .iter()
                    .map(|(property, schema)| (property.clone(), classify(schema)))
                    .filter(|(_, element)| *element != Element::Other)
                    .collect();
                Some((name.clone(), elements))
            })
            .collect();
        PrimitiveTypes { definitions }
    }

    /// Checks every primitive value in `resource` (an object of type `definition`, e.g.
    /// `Patient`), appending an issue per bad value until `issues` holds `max_issues`. `path` is
    /// the FHIRPath of `resource`.
    pub fn check(&self, definition: &str, resource: &Value, path: &str, issues: &mut Vec<Issue>, max_issues: usize) {
        let mut walk = Walk { types: self, issues, max_issues, path: path.to_owned() };
        walk.value(resource, Some(definition), None);
    }
}

struct Walk<'a> {
    types: &'a PrimitiveTypes,
    issues: &'a mut Vec<Issue>,
    max_issues: usize,
    /// The FHIRPath of the value being visited; each step appends and then truncates.
    path: String,
}

impl Walk<'_> {
    /// Visits `value`. `definition` names its complex type (None for primitives and unknown
    /// elements, whose strings are still checked); `primitive` its primitive type, if checked.
    fn value(&mut self, value: &Value, definition: Option<&str>, primitive: Option<Primitive>) {
        if self.issues.len() >= self.max_issues {
            return;
        }
        match value {
            Value::Object(map) => {
                let elements = definition.and_then(|name| self.types.definitions.get(name));
                for (key, child) in map {
                    let (child_definition, child_primitive) = match elements.and_then(|e| e.get(key)) {
                        Some(Element::Primitive(primitive)) => (None, Some(*primitive)),
                        Some(Element::Complex(name)) => (Some(name.as_str()), None),
                        Some(Element::Resource) => (child_resource_type(child), None),
                        Some(Element::Other) | None => (None, None),
                    };
                    let len = self.path.len();
                    self.path.push('.');
                    self.path.push_str(key);
                    self.value(child, child_definition, child_primitive);
                    self.path.truncate(len);
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    // A nested resource in an array (`contained`) names its own type.
                    let item_definition = match definition {
                        Some(RESOURCE_LIST) => child_resource_type(item),
                        other => other,
                    };
                    let len = self.path.len();
                    self.path.push_str(&format!("[{index}]"));
                    self.value(item, item_definition, primitive);
                    self.path.truncate(len);
                }
            }
            Value::String(text) => {
                if let Some(problem) = control_character(text) {
                    self.report(problem);
                } else if let Some(problem) = primitive.and_then(|p| check_temporal(p, text)) {
                    self.report(problem);
                }
            }
            Value::Number(number) => {
                if let Some(problem) = primitive.and_then(|p| check_number(p, &number.to_string())) {
                    self.report(problem);
                }
            }
            Value::Bool(_) | Value::Null => {}
        }
    }

    fn report(&mut self, diagnostics: String) {
        self.issues.push(Issue::error(IssueCode::Value, diagnostics).at(self.path.clone()));
    }
}

/// Marks an array of nested resources while walking: the items pick their own definitions.
const RESOURCE_LIST: &str = "ResourceList";

/// The definition for a nested resource: its `resourceType` if that is an object holding one.
/// Arrays of resources get [`RESOURCE_LIST`] so that each item is resolved on its own.
fn child_resource_type(value: &Value) -> Option<&str> {
    match value {
        Value::Object(map) => map.get("resourceType").and_then(Value::as_str),
        Value::Array(_) => Some(RESOURCE_LIST),
        _ => None,
    }
}

/// "Strings SHALL NOT contain Unicode character points below 32, except for u0009 (horizontal
/// tab), u0010 (carriage return) and u0013 (line feed)" (R4 datatypes). Every string-based
/// primitive inherits the rule, and XHTML forbids them too. DEL and the C1 controls are allowed.
fn control_character(text: &str) -> Option<String> {
    let bad = text.chars().find(|&c| c < ' ' && !matches!(c, '\t' | '\r' | '\n'))?;
    Some(format!("strings must not contain control characters such as U+{:04X}", bad as u32))
}

/// Whether the day of a date, dateTime or instant exists. The schema's patterns already fix the
/// shape and ranges (month 01-12, day 01-31); this adds month lengths and leap years.
fn check_temporal(primitive: Primitive, text: &str) -> Option<String> {
    if !matches!(primitive, Primitive::Date | Primitive::DateTime | Primitive::Instant) {
        return None;
    }
    let bytes = text.as_bytes();
    // Only values with a day part whose shape the schema accepts; others get the schema's error.
    if bytes.len() < 10 || bytes[4] != b'-' || bytes[7] != b'-' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| text.get(range)?.parse::<u32>().ok();
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    (day > days_in_month).then(|| {
        format!("'{}' is not a valid {}: {year:04}-{month:02} has {days_in_month} days", &text[..10], primitive.name())
    })
}

/// Range and precision of integer, positiveInt, unsignedInt and decimal values. `text` is the
/// number exactly as the client wrote it (serde_json's `arbitrary_precision`).
fn check_number(primitive: Primitive, text: &str) -> Option<String> {
    let name = primitive.name();
    let (min, max): (i64, i64) = match primitive {
        Primitive::Integer => (i32::MIN.into(), i32::MAX.into()),
        Primitive::PositiveInt => (1, i32::MAX.into()),
        Primitive::UnsignedInt => (0, i32::MAX.into()),
        Primitive::Decimal => return check_decimal(text),
        _ => return None,
    };
    let digits = text.strip_prefix('-').unwrap_or(text);
    let whole =
        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && (digits == "0" || !digits.starts_with('0'));
    if !whole {
        return Some(format!(
            "{name} values must be whole numbers without fraction or exponent, not {}",
            excerpt(text)
        ));
    }
    // More than 19 digits overflow i64 and are out of range anyway.
    match text.parse::<i64>() {
        Ok(value) if (min..=max).contains(&value) => None,
        _ => Some(format!("{} is outside the range of {name} ({min} to {max})", excerpt(text))),
    }
}

fn check_decimal(text: &str) -> Option<String> {
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let significant = mantissa.bytes().filter(u8::is_ascii_digit).skip_while(|&b| b == b'0').count();
    if significant > MAX_DECIMAL_DIGITS {
        return Some(format!(
            "decimal {} has {significant} significant digits; at most {MAX_DECIMAL_DIGITS} are accepted",
            excerpt(text)
        ));
    }
    let value: f64 = text.parse().ok()?;
    let nonzero = mantissa.bytes().any(|b| (b'1'..=b'9').contains(&b));
    if value.is_infinite() || (nonzero && value == 0.0) {
        return Some(format!("decimal {} is outside the range of a 64-bit floating-point number", excerpt(text)));
    }
    None
}

/// The start of a possibly huge number, for messages.
fn excerpt(text: &str) -> String {
    if text.len() <= 40 { text.to_owned() } else { format!("{}...", &text[..40]) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issues(value: Value) -> Vec<(String, String)> {
        static SCHEMA: std::sync::LazyLock<PrimitiveTypes> = std::sync::LazyLock::new(|| {
            let schema: Value = serde_json::from_str(include_str!("../../../profiles/fhir.schema.json")).unwrap();
            PrimitiveTypes::load(&schema["definitions"])
        });
        let resource_type = value["resourceType"].as_str().unwrap().to_owned();
        let mut found = Vec::new();
        SCHEMA.check(&resource_type, &value, &resource_type, &mut found, 50);
        found.into_iter().map(|i| (i.expression[0].clone(), i.diagnostics)).collect()
    }

    fn parse(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn impossible_days_are_found_in_dates_datetimes_and_instants() {
        let found = issues(json!({"resourceType": "Observation", "effectiveDateTime": "2021-02-29T10:00:00Z",
            "issued": "2021-04-31T00:00:00Z", "valuePeriod": {"start": "2020-02-29"},
            "subject": {"reference": "Patient/p"}}));
        assert_eq!(
            found,
            vec![
                (
                    "Observation.effectiveDateTime".into(),
                    "'2021-02-29' is not a valid dateTime: 2021-02 has 28 days".into()
                ),
                ("Observation.issued".into(), "'2021-04-31' is not a valid instant: 2021-04 has 30 days".into()),
            ]
        );
        assert_eq!(
            issues(json!({"resourceType": "Patient", "birthDate": "1900-02-29"})),
            vec![("Patient.birthDate".into(), "'1900-02-29' is not a valid date: 1900-02 has 28 days".into())]
        );
        assert!(issues(json!({"resourceType": "Patient", "birthDate": "2000-02-29"})).is_empty());
        assert!(issues(json!({"resourceType": "Patient", "birthDate": "2021-02"})).is_empty());
    }

    #[test]
    fn integers_keep_to_their_ranges() {
        let found = issues(parse(
            r#"{"resourceType": "Patient", "multipleBirthInteger": 2147483648,
                "contained": [{"resourceType": "Observation", "valueInteger": -2147483648},
                              {"resourceType": "Observation", "valueInteger": -2147483649}],
                "photo": [{"size": 0}, {"size": -1}, {"size": 1.5}]}"#,
        ));
        let paths: Vec<&str> = found.iter().map(|(path, _)| path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "Patient.multipleBirthInteger",
                "Patient.contained[1].valueInteger",
                "Patient.photo[1].size",
                "Patient.photo[2].size"
            ]
        );
        assert_eq!(found[0].1, "2147483648 is outside the range of integer (-2147483648 to 2147483647)");
        assert_eq!(found[2].1, "-1 is outside the range of unsignedInt (0 to 2147483647)");
        assert_eq!(found[3].1, "unsignedInt values must be whole numbers without fraction or exponent, not 1.5");
        let positive = issues(parse(
            r#"{"resourceType": "Patient", "contact": [{"period": {"start": "2020-01-01"}}],
            "extension": [{"url": "x", "valuePositiveInt": 0}]}"#,
        ));
        assert_eq!(positive[0].0, "Patient.extension[0].valuePositiveInt");
    }

    #[test]
    fn decimals_are_bounded_in_digits_and_range() {
        let long = format!("1.{}", "0".repeat(100_000));
        let text = format!(
            r#"{{"resourceType": "Observation", "valueQuantity": {{"value": 1e400}},
                "component": [{{"valueQuantity": {{"value": 5.5}}}}, {{"valueQuantity": {{"value": {long}}}}}],
                "referenceRange": [{{"low": {{"value": 1e-400}}, "high": {{"value": -1.000000000000000000E+245}}}}]}}"#
        );
        let found = issues(parse(&text));
        let paths: Vec<&str> = found.iter().map(|(path, _)| path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "Observation.valueQuantity.value",
                "Observation.component[1].valueQuantity.value",
                "Observation.referenceRange[0].low.value"
            ]
        );
        assert_eq!(found[0].1, "decimal 1e+400 is outside the range of a 64-bit floating-point number");
        assert!(found[1].1.contains("100001 significant digits; at most 32"), "{}", found[1].1);
        assert!(issues(parse(r#"{"resourceType": "Observation", "valueQuantity": {"value": 0.00000000000000000000000000000000000001}}"#)).is_empty());
    }

    #[test]
    fn control_characters_are_found_in_any_string() {
        let found = issues(
            json!({"resourceType": "Patient", "name": [{"family": "Nul\u{0}l", "given": ["ok\tfine\r\n\u{7f}\u{85}", "b\u{7}"]}],
            "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">\u{1b}</div>"}}),
        );
        assert_eq!(
            found,
            vec![
                ("Patient.name[0].family".into(), "strings must not contain control characters such as U+0000".into()),
                (
                    "Patient.name[0].given[1]".into(),
                    "strings must not contain control characters such as U+0007".into()
                ),
                ("Patient.text.div".into(), "strings must not contain control characters such as U+001B".into()),
            ]
        );
    }

    #[test]
    fn nested_resources_in_bundles_are_walked_with_their_own_definitions() {
        let found = issues(json!({"resourceType": "Bundle", "type": "collection", "entry": [
            {"resource": {"resourceType": "Patient", "birthDate": "2021-02-30"}}]}));
        assert_eq!(found[0].0, "Bundle.entry[0].resource.birthDate");
    }

    #[test]
    fn the_number_of_issues_is_bounded() {
        let given: Vec<String> = (0..200).map(|_| "\u{0}".to_owned()).collect();
        let found = issues(json!({"resourceType": "Patient", "name": [{"given": given}]}));
        assert_eq!(found.len(), 50);
    }
}
