//! FHIRPath Patch (R4 "FHIRPath Patch"): a Parameters resource whose `operation` parameters
//! each have a `type` (add, insert, delete, replace, move), a `path` and, depending on the
//! type, `name`, `value[x]` (or `value` with parts for a complex value), `index`, `source` and
//! `destination`.
//!
//! Paths use Braid's FHIRPath subset ([`super::fhirpath`]): navigation, indexers `[n]`,
//! `first()`, `where(...)` with equality, `as`/`ofType`. A path is evaluated on the resource;
//! each selected element is located in the JSON tree by identity, and the change is made
//! there. Whether a new element is a list, and the JSON name of a choice element
//! (`value` + `Quantity`), comes from the R4 JSON schema's definitions.
//!
//! Operations apply in order to a working copy; any error leaves the resource unchanged. Every
//! error is 400 and names the operation (`Parameters.parameter[i]`) and its path.

use serde_json::{Map, Value};

use super::fhirpath::{Expr, Item};
use crate::fhir::json_patch::MAX_PATCH_OPERATIONS;
use crate::fhir::validation::validator;
use crate::fhir::{FhirError, IssueCode};

/// Longest path accepted. The parser recurses on parentheses, so this also bounds its depth.
pub const MAX_PATH_CHARS: usize = 512;

/// One step from a JSON value to a child.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

#[derive(Debug)]
enum Operation {
    Add { path: Expr, name: String, value: PatchValue },
    Insert { path: Expr, index: usize, value: PatchValue },
    Delete { path: Expr },
    Replace { path: Expr, value: PatchValue },
    Move { path: Expr, source: usize, destination: usize },
}

/// A `value[x]` (with its type suffix, e.g. `Quantity`), or a complex value given as parts.
#[derive(Debug, Clone)]
enum PatchValue {
    Typed { suffix: String, value: Value },
    Parts(Vec<(String, PatchValue)>),
}

/// Applies the FHIRPath Patch `parameters` to `resource`.
pub fn apply(resource: &mut Value, parameters: &Value) -> Result<(), FhirError> {
    let operations = parse(parameters)?;
    let mut working = resource.clone();
    for (index, (text, operation)) in operations.iter().enumerate() {
        apply_one(&mut working, operation).map_err(|reason| {
            FhirError::incorrect(
                IssueCode::Processing,
                format!("FHIRPath Patch operation {index} at '{text}': {reason}"),
            )
            .at(format!("Parameters.parameter[{index}]"))
            .at(text.clone())
        })?;
    }
    *resource = working;
    Ok(())
}

fn parse(parameters: &Value) -> Result<Vec<(String, Operation)>, FhirError> {
    let list = match parameters.get("parameter") {
        Some(Value::Array(list)) => list.as_slice(),
        None => &[],
        Some(_) => {
            return Err(FhirError::incorrect(IssueCode::Structure, "Parameters.parameter must be a list")
                .at("Parameters.parameter"));
        }
    };
    if list.len() > MAX_PATCH_OPERATIONS {
        return Err(FhirError::incorrect(
            IssueCode::TooCostly,
            format!("the patch has {} operations; at most {MAX_PATCH_OPERATIONS} are accepted", list.len()),
        )
        .at("Parameters.parameter"));
    }
    list.iter()
        .enumerate()
        .map(|(index, parameter)| {
            parse_operation(parameter).map_err(|reason| {
                FhirError::incorrect(IssueCode::Invalid, format!("FHIRPath Patch operation {index}: {reason}"))
                    .at(format!("Parameters.parameter[{index}]"))
            })
        })
        .collect()
}

fn parse_operation(parameter: &Value) -> Result<(String, Operation), String> {
    if parameter.get("name").and_then(Value::as_str) != Some("operation") {
        return Err("every parameter of a FHIRPath Patch must be named 'operation'".to_owned());
    }
    let parts = parameter.get("part").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    let part = |name: &str| parts.iter().find(|p| p.get("name").and_then(Value::as_str) == Some(name));
    let text = |name: &str, key: &str| -> Result<String, String> {
        part(name)
            .and_then(|p| p.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| format!("the part '{name}' ({key}) is missing"))
    };
    let integer = |name: &str| -> Result<usize, String> {
        part(name)
            .and_then(|p| p.get("valueInteger"))
            .and_then(Value::as_u64)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("the part '{name}' (valueInteger, not negative) is missing"))
    };
    let value = || -> Result<PatchValue, String> {
        part("value").map(patch_value).transpose()?.ok_or_else(|| "the part 'value' is missing".to_owned())
    };
    let kind = text("type", "valueCode")?;
    let path_text = text("path", "valueString")?;
    if path_text.chars().count() > MAX_PATH_CHARS {
        return Err(format!("the path is longer than {MAX_PATH_CHARS} characters"));
    }
    let path = Expr::parse(&path_text).map_err(|e| format!("the path '{path_text}' is not supported FHIRPath: {e}"))?;
    if contains_resolve(&path) {
        return Err(format!("the path '{path_text}' uses resolve(); a patch may change only its own resource"));
    }
    let operation = match kind.as_str() {
        "add" => Operation::Add { path, name: text("name", "valueString")?, value: value()? },
        "insert" => Operation::Insert { path, index: integer("index")?, value: value()? },
        "delete" => Operation::Delete { path },
        "replace" => Operation::Replace { path, value: value()? },
        "move" => Operation::Move { path, source: integer("source")?, destination: integer("destination")? },
        other => return Err(format!("'{other}' is not a FHIRPath Patch type (add, insert, delete, replace, move)")),
    };
    Ok((path_text, operation))
}

fn contains_resolve(expr: &Expr) -> bool {
    match expr {
        Expr::Resolve(_) => true,
        Expr::Child(inner, _)
        | Expr::Index(inner, _)
        | Expr::OfType(inner, _)
        | Expr::Is(inner, _)
        | Expr::Exists(inner)
        | Expr::Extension(inner, _) => contains_resolve(inner),
        Expr::Union(a, b) | Expr::And(a, b) | Expr::Equals(a, b, _) | Expr::Where(a, b) => {
            contains_resolve(a) || contains_resolve(b)
        }
        Expr::This | Expr::Str(_) | Expr::Bool(_) => false,
    }
}

/// The `value` part: `value[x]`, or nested parts naming the children of a complex value.
fn patch_value(part: &Value) -> Result<PatchValue, String> {
    if let Value::Object(map) = part {
        for (key, value) in map {
            if let Some(suffix) = key.strip_prefix("value") {
                if suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
                    return Ok(PatchValue::Typed { suffix: suffix.to_owned(), value: value.clone() });
                }
            }
        }
    }
    let Some(Value::Array(parts)) = part.get("part") else {
        return Err("a 'value' needs a value[x] or parts".to_owned());
    };
    parts
        .iter()
        .map(|child| {
            let name = child.get("name").and_then(Value::as_str).ok_or("a value part has no name")?;
            Ok((name.to_owned(), patch_value(child)?))
        })
        .collect::<Result<_, String>>()
        .map(PatchValue::Parts)
}

/// The schema definition name of a property of type `type_name`, and whether it repeats.
fn property(type_name: &str, name: &str) -> Option<(Option<String>, bool)> {
    let definition = validator().schema_definitions().get(type_name)?.get("properties")?.get(name)?;
    let repeats = definition.get("type").and_then(Value::as_str) == Some("array");
    let reference = if repeats { definition.get("items")?.get("$ref") } else { definition.get("$ref") };
    let type_of = reference.and_then(Value::as_str).and_then(|r| r.strip_prefix("#/definitions/")).map(str::to_owned);
    Some((type_of, repeats))
}

/// The type of the element reached by `steps` from the resource (None where unknown).
fn type_at(resource: &Value, steps: &[Step]) -> Option<String> {
    let mut type_name = resource.get("resourceType").and_then(Value::as_str)?.to_owned();
    for step in steps {
        if let Step::Key(key) = step {
            type_name = property(&type_name, key)?.0?;
        }
    }
    Some(type_name)
}

/// The JSON form of a patch value placed as an element of type `type_name` (if known).
fn to_json(value: &PatchValue, type_name: Option<&str>) -> Value {
    match value {
        PatchValue::Typed { value, .. } => value.clone(),
        PatchValue::Parts(parts) => {
            let mut map = Map::new();
            for (name, child) in parts {
                let known = type_name.and_then(|t| property(t, name));
                let child_json = to_json(child, known.as_ref().and_then(|(t, _)| t.as_deref()));
                match map.get_mut(name) {
                    Some(Value::Array(items)) => items.push(child_json),
                    Some(existing) => *existing = Value::Array(vec![existing.take(), child_json]),
                    None if known.is_some_and(|(_, repeats)| repeats) => {
                        map.insert(name.clone(), Value::Array(vec![child_json]));
                    }
                    None => {
                        map.insert(name.clone(), child_json);
                    }
                }
            }
            Value::Object(map)
        }
    }
}

/// Finds the steps from `root` to the value at address `target`.
fn locate(root: &Value, target: *const Value, steps: &mut Vec<Step>) -> bool {
    if std::ptr::eq(root, target) {
        return true;
    }
    match root {
        Value::Object(map) => {
            for (key, child) in map {
                steps.push(Step::Key(key.clone()));
                if locate(child, target, steps) {
                    return true;
                }
                steps.pop();
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                steps.push(Step::Index(index));
                if locate(child, target, steps) {
                    return true;
                }
                steps.pop();
            }
        }
        _ => {}
    }
    false
}

/// The locations of the elements `path` selects.
fn select(resource: &Value, path: &Expr) -> Result<Vec<Vec<Step>>, String> {
    path.evaluate(resource)
        .into_iter()
        .map(|item| match item {
            Item::Json(value, _) => {
                let mut steps = Vec::new();
                if locate(resource, value, &mut steps) {
                    Ok(steps)
                } else {
                    Err("the path selects a computed value".to_owned())
                }
            }
            _ => Err("the path selects a computed value, not an element".to_owned()),
        })
        .collect()
}

/// The one element `path` selects.
fn select_one(resource: &Value, path: &Expr) -> Result<Vec<Step>, String> {
    let mut found = select(resource, path)?;
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err("the path selects no element".to_owned()),
        n => Err(format!("the path selects {n} elements; it must select exactly one")),
    }
}

fn at_mut<'a>(value: &'a mut Value, steps: &[Step]) -> Option<&'a mut Value> {
    steps.iter().try_fold(value, |value, step| match (value, step) {
        (Value::Object(map), Step::Key(key)) => map.get_mut(key),
        (Value::Array(items), Step::Index(index)) => items.get_mut(*index),
        _ => None,
    })
}

/// For `insert` and `move`: the object holding the list the path names (the path minus its
/// last name), and that name.
fn list_owner<'p>(resource: &Value, path: &'p Expr) -> Result<(Vec<Step>, &'p str), String> {
    let Expr::Child(owner, name) = path else {
        return Err("the path must end in the name of a list, e.g. Patient.identifier".to_owned());
    };
    Ok((select_one(resource, owner)?, name.as_str()))
}

fn apply_one(resource: &mut Value, operation: &Operation) -> Result<(), String> {
    match operation {
        Operation::Add { path, name, value } => {
            let steps = select_one(resource, path)?;
            let owner_type = type_at(resource, &steps);
            // A choice element takes its type into its name: `value` + `Quantity`.
            let key = match (value, &owner_type) {
                (PatchValue::Typed { suffix, .. }, Some(owner))
                    if property(owner, name).is_none() && property(owner, &format!("{name}{suffix}")).is_some() =>
                {
                    format!("{name}{suffix}")
                }
                _ => name.clone(),
            };
            let known = owner_type.as_deref().and_then(|owner| property(owner, &key));
            let json = to_json(value, known.as_ref().and_then(|(t, _)| t.as_deref()));
            let Some(Value::Object(owner)) = at_mut(resource, &steps) else {
                return Err("the path must select an element with children".to_owned());
            };
            match owner.get_mut(&key) {
                Some(Value::Array(items)) => items.push(json),
                Some(_) => return Err(format!("'{key}' already exists and does not repeat; use replace")),
                None if known.is_some_and(|(_, repeats)| repeats) => {
                    owner.insert(key, Value::Array(vec![json]));
                }
                None => {
                    owner.insert(key, json);
                }
            }
            Ok(())
        }
        Operation::Insert { path, index, value } => {
            let (owner_steps, name) = list_owner(resource, path)?;
            let item_type = type_at(resource, &owner_steps).and_then(|t| property(&t, name)).and_then(|(t, _)| t);
            let json = to_json(value, item_type.as_deref());
            let Some(Value::Object(owner)) = at_mut(resource, &owner_steps) else {
                return Err("the path's parent is not an element with children".to_owned());
            };
            let list = owner.entry(name.to_owned()).or_insert_with(|| Value::Array(Vec::new()));
            let Value::Array(items) = list else { return Err(format!("'{name}' is not a list")) };
            if *index > items.len() {
                return Err(format!("index {index} is beyond the end of the list ({} elements)", items.len()));
            }
            items.insert(*index, json);
            Ok(())
        }
        Operation::Delete { path } => {
            let mut found = select(resource, path)?;
            match found.len() {
                0 => Ok(()), // "Path of the element to delete (if found)"
                1 => delete(resource, found.remove(0)),
                n => Err(format!("the path selects {n} elements; only a single element can be deleted")),
            }
        }
        Operation::Replace { path, value } => {
            let mut steps = select_one(resource, path)?;
            if steps.is_empty() {
                return Err("the whole resource cannot be replaced".to_owned());
            }
            // A choice element replaced by a value of another type changes its name:
            // `Observation.value` selects `valueQuantity`; a valueString makes it `valueString`.
            if let (Expr::Child(_, name), PatchValue::Typed { suffix, .. }, Some(Step::Key(key))) =
                (path, value, steps.last().cloned())
            {
                let renamed = format!("{name}{suffix}");
                let owner_type = type_at(resource, &steps[..steps.len() - 1]);
                let is_choice = key != *name && key.starts_with(name.as_str());
                if is_choice && renamed != key && owner_type.is_some_and(|t| property(&t, &renamed).is_some()) {
                    let owner_steps = &steps[..steps.len() - 1];
                    if let Some(Value::Object(owner)) = at_mut(resource, owner_steps) {
                        owner.shift_remove(&key);
                        owner.shift_remove(&format!("_{key}"));
                        owner.insert(renamed.clone(), Value::Null);
                    }
                    if let Some(last) = steps.last_mut() {
                        *last = Step::Key(renamed);
                    }
                }
            }
            let element_type = type_at(resource, &steps);
            let json = to_json(value, element_type.as_deref());
            *at_mut(resource, &steps).ok_or("the element vanished")? = json;
            Ok(())
        }
        Operation::Move { path, source, destination } => {
            let (owner_steps, name) = list_owner(resource, path)?;
            let list = at_mut(resource, &owner_steps).and_then(|owner| owner.get_mut(name));
            let Some(Value::Array(items)) = list else { return Err(format!("'{name}' is not a list")) };
            if *source >= items.len() || *destination >= items.len() {
                return Err(format!(
                    "source {source} and destination {destination} must be within the list ({} elements)",
                    items.len()
                ));
            }
            let moved = items.remove(*source);
            items.insert(*destination, moved);
            Ok(())
        }
    }
}

/// Removes the element at `steps`, its `_name` sibling for a primitive, and any object or list
/// left empty by the removal (FHIR forbids empty elements).
fn delete(resource: &mut Value, mut steps: Vec<Step>) -> Result<(), String> {
    let Some(last) = steps.pop() else { return Err("the whole resource cannot be deleted".to_owned()) };
    let parent = at_mut(resource, &steps).ok_or("the element vanished")?;
    match (parent, last) {
        (Value::Object(map), Step::Key(key)) => {
            map.shift_remove(&key);
            map.shift_remove(&format!("_{key}"));
        }
        (Value::Array(items), Step::Index(index)) => {
            items.remove(index);
        }
        _ => return Err("the element vanished".to_owned()),
    }
    // Walk up while the container is empty, but never remove the resource itself.
    while let Some(last) = steps.last().cloned() {
        let empty = match at_mut(resource, &steps) {
            Some(Value::Object(map)) => map.is_empty(),
            Some(Value::Array(items)) => items.is_empty(),
            _ => false,
        };
        if !empty {
            break;
        }
        steps.pop();
        match (at_mut(resource, &steps), last) {
            (Some(Value::Object(map)), Step::Key(key)) => {
                map.shift_remove(&key);
            }
            (Some(Value::Array(items)), Step::Index(index)) => {
                items.remove(index);
            }
            _ => break,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn operation(parts: Value) -> Value {
        json!({"name": "operation", "part": parts})
    }

    fn patched(operations: Vec<Value>) -> Result<Value, FhirError> {
        let mut patient = json!({"resourceType": "Patient", "id": "p",
            "identifier": [{"system": "s", "value": "1"}, {"system": "t", "value": "2"}],
            "name": [{"family": "A", "given": ["X"]}], "birthDate": "1980-01-01", "_birthDate": {"id": "b"}});
        apply(&mut patient, &json!({"resourceType": "Parameters", "parameter": operations})).map(|()| patient)
    }

    #[test]
    fn add_uses_the_schema_for_lists_and_choice_names() {
        let patient = patched(vec![
            operation(json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
                {"name": "name", "valueString": "telecom"},
                {"name": "value", "part": [{"name": "system", "valueCode": "phone"}, {"name": "value", "valueString": "555"}]}])),
            operation(json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient"},
                {"name": "name", "valueString": "deceased"}, {"name": "value", "valueBoolean": false}])),
            operation(json!([{"name": "type", "valueCode": "add"}, {"name": "path", "valueString": "Patient.name.first()"},
                {"name": "name", "valueString": "given"}, {"name": "value", "valueString": "Y"}])),
        ])
        .unwrap();
        assert_eq!(patient["telecom"], json!([{"system": "phone", "value": "555"}]));
        assert_eq!(patient["deceasedBoolean"], false);
        assert_eq!(patient["name"][0]["given"], json!(["X", "Y"]));
    }

    #[test]
    fn replacing_a_choice_element_with_another_type_renames_it() {
        let mut observation = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "valueQuantity": {"value": 1}, "note": [{"text": "n"}]});
        let patch = json!({"resourceType": "Parameters", "parameter": [operation(json!([
            {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Observation.value"},
            {"name": "value", "valueString": "negative"}]))]});
        apply(&mut observation, &patch).unwrap();
        assert!(observation.get("valueQuantity").is_none());
        assert_eq!(observation["valueString"], "negative");
        let same_type = json!({"resourceType": "Parameters", "parameter": [operation(json!([
            {"name": "type", "valueCode": "replace"}, {"name": "path", "valueString": "Observation.value"},
            {"name": "value", "valueString": "positive"}]))]});
        apply(&mut observation, &same_type).unwrap();
        assert_eq!(observation["valueString"], "positive");
    }

    #[test]
    fn delete_removes_primitive_extensions_and_empty_containers() {
        let patient = patched(vec![
            operation(json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.birthDate"}])),
            operation(json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.name[0].given[0]"}])),
            operation(json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.name[0].family"}])),
            operation(json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.gender"}])),
        ])
        .unwrap();
        assert_eq!(
            patient,
            json!({"resourceType": "Patient", "id": "p",
            "identifier": [{"system": "s", "value": "1"}, {"system": "t", "value": "2"}]})
        );
    }

    #[test]
    fn errors_name_the_operation_and_path() {
        let error = patched(vec![operation(json!([{"name": "type", "valueCode": "replace"},
            {"name": "path", "valueString": "Patient.identifier"}, {"name": "value", "valueString": "x"}]))])
        .unwrap_err();
        assert_eq!(error.issues[0].expression, vec!["Parameters.parameter[0]", "Patient.identifier"]);
        assert!(error.issues[0].diagnostics.contains("selects 2 elements"), "{error:?}");
        let error = patched(vec![operation(json!([{"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": "Patient.managingOrganization.resolve().name"}]))])
        .unwrap_err();
        assert!(error.issues[0].diagnostics.contains("resolve()"), "{error:?}");
        // The deepest nesting the length limit allows parses without exhausting the stack.
        let nested = format!("{}Patient.gender{}", "(".repeat(245), ")".repeat(245));
        assert!(nested.len() <= MAX_PATH_CHARS);
        let patient = patched(vec![operation(json!([{"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": nested}]))])
        .unwrap();
        assert!(patient.get("gender").is_none());
        let long = format!("Patient{}", ".name".repeat(MAX_PATH_CHARS));
        let error = patched(vec![operation(json!([{"name": "type", "valueCode": "delete"},
            {"name": "path", "valueString": long}]))])
        .unwrap_err();
        assert!(error.issues[0].diagnostics.contains("longer than"), "{error:?}");
        let too_many = (0..=MAX_PATCH_OPERATIONS)
            .map(|_| {
                operation(
                    json!([{"name": "type", "valueCode": "delete"}, {"name": "path", "valueString": "Patient.gender"}]),
                )
            })
            .collect();
        assert_eq!(patched(too_many).unwrap_err().issues[0].code, IssueCode::TooCostly);
    }
}
