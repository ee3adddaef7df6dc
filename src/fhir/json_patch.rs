//! JSON Patch (RFC 6902) on a resource: `add`, `remove`, `replace`, `move`, `copy` and `test`,
//! with JSON Pointers (RFC 6901, `~0` for `~` and `~1` for `/`).
//!
//! Operations apply in order to a working copy; the first failure stops the patch, so the
//! caller either gets the fully patched resource or an error and nothing changes. A failing
//! `test` is 422 (the patch is well-formed but does not apply to this version, as RFC 5789
//! describes for unprocessable patches); every other problem is 400 and names the operation
//! and the resource element its pointer addresses.

use serde_json::Value;

use super::json::pointer_to_expression;
use super::{Category, FhirError, IssueCode};

/// Most operations one patch document (JSON Patch or FHIRPath Patch) may hold. A patch is
/// applied to a copy of the resource and each operation may walk the whole resource, so the
/// work is bounded by this times the resource size.
pub const MAX_PATCH_OPERATIONS: usize = 1000;

/// Applies the JSON Patch document `patch` to `resource`, a resource of type `root` (the type
/// name starts the expressions of errors).
pub fn apply(resource: &mut Value, patch: &Value, root: &str) -> Result<(), FhirError> {
    let Value::Array(operations) = patch else {
        return Err(FhirError::incorrect(IssueCode::Structure, "a JSON Patch document must be an array of operations"));
    };
    if operations.len() > MAX_PATCH_OPERATIONS {
        return Err(FhirError::incorrect(
            IssueCode::TooCostly,
            format!("the patch has {} operations; at most {MAX_PATCH_OPERATIONS} are accepted", operations.len()),
        ));
    }
    let mut working = resource.clone();
    for (index, operation) in operations.iter().enumerate() {
        apply_one(&mut working, operation, index, root)?;
    }
    *resource = working;
    Ok(())
}

fn apply_one(doc: &mut Value, operation: &Value, index: usize, root: &str) -> Result<(), FhirError> {
    let bad =
        |message: String| FhirError::incorrect(IssueCode::Invalid, format!("JSON Patch operation {index}: {message}"));
    let member = |name: &str| -> Result<&str, FhirError> {
        operation.get(name).and_then(Value::as_str).ok_or_else(|| bad(format!("'{name}' is missing or not a string")))
    };
    let op = member("op")?;
    let path_text = member("path")?;
    let path = parse_pointer(path_text).map_err(|reason| bad(reason).at(pointer_to_expression(root, path_text)))?;
    let at = |pointer: &str| pointer_to_expression(root, pointer);
    let value = || operation.get("value").cloned().ok_or_else(|| bad(format!("'{op}' needs a 'value'")));
    match op {
        "add" => {
            add(doc, &path, value()?).map_err(|reason| bad(format!("add at '{path_text}': {reason}")).at(at(path_text)))
        }
        "remove" => remove(doc, &path)
            .map(drop)
            .map_err(|reason| bad(format!("remove at '{path_text}': {reason}")).at(at(path_text))),
        "replace" => {
            let value = value()?;
            let target = get_mut(doc, &path)
                .ok_or_else(|| bad(format!("replace at '{path_text}': no such element")).at(at(path_text)))?;
            *target = value;
            Ok(())
        }
        "move" | "copy" => {
            let from_text = member("from")?;
            let from = parse_pointer(from_text).map_err(|reason| bad(reason).at(at(from_text)))?;
            let moved = if op == "move" {
                if path.len() > from.len() && path[..from.len()] == from[..] {
                    return Err(
                        bad(format!("cannot move '{from_text}' into its own child '{path_text}'")).at(at(path_text))
                    );
                }
                remove(doc, &from)
                    .map_err(|reason| bad(format!("move from '{from_text}': {reason}")).at(at(from_text)))?
            } else {
                get(doc, &from)
                    .cloned()
                    .ok_or_else(|| bad(format!("copy from '{from_text}': no such element")).at(at(from_text)))?
            };
            add(doc, &path, moved).map_err(|reason| bad(format!("{op} to '{path_text}': {reason}")).at(at(path_text)))
        }
        "test" => {
            let expected = value()?;
            match get(doc, &path) {
                Some(actual) if same(actual, &expected) => Ok(()),
                found => Err(FhirError::new(
                    Category::Unprocessable,
                    IssueCode::Processing,
                    format!(
                        "JSON Patch operation {index}: test failed: '{path_text}' is {}, not {expected}",
                        found.map_or_else(|| "absent".to_owned(), Value::to_string)
                    ),
                )
                .at(at(path_text))),
            }
        }
        other => Err(bad(format!("'{other}' is not a JSON Patch operation (add, remove, replace, move, copy, test)"))),
    }
}

/// The reference tokens of a JSON Pointer, unescaped.
fn parse_pointer(text: &str) -> Result<Vec<String>, String> {
    if text.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = text.strip_prefix('/') else {
        return Err(format!("'{text}' is not a JSON Pointer (it must start with '/')"));
    };
    rest.split('/')
        .map(|token| {
            let mut out = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                match (c, c == '~') {
                    (_, false) => out.push(c),
                    (_, true) => match chars.next() {
                        Some('0') => out.push('~'),
                        Some('1') => out.push('/'),
                        _ => return Err(format!("'{text}' has an invalid escape ('~' must be followed by 0 or 1)")),
                    },
                }
            }
            Ok(out)
        })
        .collect()
}

/// An array index token: digits without leading zeros.
fn array_index(token: &str) -> Option<usize> {
    if token.is_empty() || (token.len() > 1 && token.starts_with('0')) || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    token.parse().ok()
}

fn get<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |value, token| match value {
        Value::Object(map) => map.get(token),
        Value::Array(items) => array_index(token).and_then(|i| items.get(i)),
        _ => None,
    })
}

fn get_mut<'a>(doc: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(doc, |value, token| match value {
        Value::Object(map) => map.get_mut(token),
        Value::Array(items) => array_index(token).and_then(|i| items.get_mut(i)),
        _ => None,
    })
}

fn add(doc: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let Some((last, parent_path)) = path.split_last() else {
        *doc = value;
        return Ok(());
    };
    match get_mut(doc, parent_path) {
        Some(Value::Object(map)) => {
            map.insert(last.clone(), value);
            Ok(())
        }
        Some(Value::Array(items)) if last == "-" => {
            items.push(value);
            Ok(())
        }
        Some(Value::Array(items)) => match array_index(last) {
            Some(index) if index <= items.len() => {
                items.insert(index, value);
                Ok(())
            }
            _ => Err(format!("'{last}' is not an index within the list of {} elements", items.len())),
        },
        Some(_) => Err("the parent is neither an object nor a list".to_owned()),
        None => Err("the parent element does not exist".to_owned()),
    }
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, String> {
    let Some((last, parent_path)) = path.split_last() else {
        return Err("the whole resource cannot be removed".to_owned());
    };
    match get_mut(doc, parent_path) {
        Some(Value::Object(map)) => map.shift_remove(last).ok_or_else(|| "no such element".to_owned()),
        Some(Value::Array(items)) => match array_index(last) {
            Some(index) if index < items.len() => Ok(items.remove(index)),
            _ => Err(format!("'{last}' is not an index within the list of {} elements", items.len())),
        },
        _ => Err("no such element".to_owned()),
    }
}

/// JSON equality as RFC 6902 `test` defines it: numbers compare by value, objects ignore order.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            x == y || x.to_string().parse::<f64>().ok() == y.to_string().parse::<f64>().ok()
        }
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same(a, b)),
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(key, value)| y.get(key).is_some_and(|other| same(value, other)))
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn patched(patch: Value) -> Result<Value, FhirError> {
        let mut doc = json!({"resourceType": "Patient", "id": "p", "name": [{"family": "A", "given": ["X"]}],
            "a/b": 1, "m~n": 2});
        apply(&mut doc, &patch, "Patient").map(|()| doc)
    }

    #[test]
    fn every_operation_applies_in_order() {
        let doc = patched(json!([
            {"op": "add", "path": "/name/0/given/-", "value": "Y"},
            {"op": "add", "path": "/name/0/given/0", "value": "W"},
            {"op": "replace", "path": "/name/0/family", "value": "B"},
            {"op": "copy", "from": "/name/0", "path": "/name/1"},
            {"op": "move", "from": "/a~1b", "path": "/moved"},
            {"op": "remove", "path": "/m~0n"},
            {"op": "test", "path": "/name/1/given", "value": ["W", "X", "Y"]},
            {"op": "test", "path": "/moved", "value": 1.0}
        ]))
        .unwrap();
        assert_eq!(doc["name"][0]["given"], json!(["W", "X", "Y"]));
        assert_eq!(doc["name"][1]["family"], "B");
        assert_eq!(doc["moved"], 1);
        assert!(doc.get("a/b").is_none() && doc.get("m~n").is_none());
    }

    #[test]
    fn failures_name_the_element_and_leave_the_resource_alone() {
        let error = patched(json!([{"op": "remove", "path": "/name/5"}])).unwrap_err();
        assert_eq!(error.status(), 400);
        assert_eq!(error.issues[0].expression, vec!["Patient.name[5]"]);
        let error = patched(json!([{"op": "test", "path": "/name/0/family", "value": "Z"}])).unwrap_err();
        assert_eq!(error.status(), 422);
        let error = patched(json!([{"op": "add", "path": "name", "value": 1}])).unwrap_err();
        assert!(error.issues[0].diagnostics.contains("must start with '/'"), "{error:?}");
        let error = patched(json!([{"op": "remove", "path": "/name/~2"}])).unwrap_err();
        assert!(error.issues[0].diagnostics.contains("invalid escape"), "{error:?}");
        let error = patched(json!([{"op": "move", "from": "/name", "path": "/name/0/x"}])).unwrap_err();
        assert!(error.issues[0].diagnostics.contains("own child"), "{error:?}");
        let mut doc = json!({"a": 1});
        let before = doc.clone();
        assert!(
            apply(&mut doc, &json!([{"op": "remove", "path": "/a"}, {"op": "remove", "path": "/b"}]), "X").is_err()
        );
        assert_eq!(doc, before, "a failed patch changes nothing");
    }

    #[test]
    fn the_number_of_operations_is_bounded() {
        let operations: Vec<Value> =
            (0..=MAX_PATCH_OPERATIONS).map(|_| json!({"op": "test", "path": "/id", "value": "p"})).collect();
        let error = patched(Value::Array(operations)).unwrap_err();
        assert_eq!(error.issues[0].code, IssueCode::TooCostly);
        let operations: Vec<Value> =
            (0..MAX_PATCH_OPERATIONS).map(|_| json!({"op": "test", "path": "/id", "value": "p"})).collect();
        assert!(patched(Value::Array(operations)).is_ok());
    }
}
