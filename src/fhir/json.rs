//! Reading resource JSON from the wire and writing it back.
//!
//! Parsing keeps object keys in the order the client sent them and numbers exactly as written
//! (`serde_json`'s `preserve_order` and `arbitrary_precision`), so a stored resource serialises
//! back to the same content, apart from the `id` and `meta` fields the server maintains.

use serde_json::{Map, Value};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{FhirError, Id, IssueCode, Resource, ResourceType};

/// Calls `visit` with every byte of `bytes` that lies outside JSON strings (the structure:
/// brackets, separators, literals), in order, until it returns an error. One pass, no
/// allocation: the pre-parse checks below are built on it.
fn for_each_structural_byte<E>(bytes: &[u8], mut visit: impl FnMut(u8) -> Result<(), E>) -> Result<(), E> {
    let mut in_string = false;
    let mut escaped = false;
    for &byte in bytes {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
        } else if byte == b'"' {
            in_string = true;
        } else {
            visit(byte)?;
        }
    }
    Ok(())
}

/// Returns an error if `bytes` nests arrays and objects deeper than `max_depth`.
///
/// This runs before the parser so that a hostile body cannot make it recurse deeply; it scans
/// the bytes once, ignoring brackets inside strings.
pub fn check_depth(bytes: &[u8], max_depth: usize) -> Result<(), FhirError> {
    let mut depth = 0usize;
    for_each_structural_byte(bytes, |byte| {
        match byte {
            b'{' | b'[' => {
                depth += 1;
                if depth > max_depth {
                    return Err(FhirError::incorrect(
                        IssueCode::TooLong,
                        format!("JSON nests deeper than the limit of {max_depth} levels"),
                    ));
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        Ok(())
    })
}

/// Returns an error if `bytes` holds more than `max_values` JSON values, counted as the
/// objects and arrays opened plus the `,` and `:` that separate their items and members
/// (outside strings): `[1,2,3]` counts 3, `{"a":1,"b":2}` counts 4.
///
/// Parsed, every value costs tens of bytes however short its text (`1,` becomes a heap-allocated
/// number), so this runs before the parser: the size of the parsed tree is bounded by the count,
/// not only by the body's length.
pub fn check_value_count(bytes: &[u8], max_values: usize) -> Result<(), FhirError> {
    let mut count = 0usize;
    for_each_structural_byte(bytes, |byte| {
        if matches!(byte, b'{' | b'[' | b',' | b':') {
            count += 1;
            if count > max_values {
                return Err(FhirError::new(
                    super::Category::TooLarge,
                    IssueCode::TooCostly,
                    format!("the body holds more than the limit of {max_values} JSON values"),
                ));
            }
        }
        Ok(())
    })
}

/// JSON keys whose strings may exceed `max_string_bytes`: the base64Binary elements
/// (`Attachment.data`, `Binary.data`, `Signature.data`, `AuditEvent.entity.query`,
/// `Device.udiCarrier.carrierAIDC`) and `SampledData.data`, which carry documents, images and
/// sample series. They are bounded by the body limit only, and no search parameter indexes them.
pub const LARGE_STRING_KEYS: &[&str] = &["data", "query", "carrierAIDC"];

/// Returns an error naming the first string element longer than `max_bytes`, other than those
/// under [`LARGE_STRING_KEYS`]. Object keys count as strings too.
pub fn check_string_lengths(value: &Value, max_bytes: usize) -> Result<(), FhirError> {
    fn walk(path: &mut String, key: &str, value: &Value, max_bytes: usize) -> Result<(), String> {
        match value {
            Value::String(text) if text.len() > max_bytes && !LARGE_STRING_KEYS.contains(&key) => Err(path.clone()),
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{index}]"));
                    walk(path, key, item, max_bytes)?;
                    path.truncate(len);
                }
                Ok(())
            }
            Value::Object(map) => {
                for (child_key, child) in map {
                    let len = path.len();
                    if child_key.len() > max_bytes {
                        return Err(path.clone());
                    }
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(child_key);
                    walk(path, child_key, child, max_bytes)?;
                    path.truncate(len);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
    let mut path = value.get("resourceType").and_then(Value::as_str).map(|t| truncate(t, 64)).unwrap_or_default();
    walk(&mut path, "", value, max_bytes).map_err(|at| {
        FhirError::incorrect(
            IssueCode::TooLong,
            format!("the element {at} is longer than the limit of {max_bytes} bytes for a single string"),
        )
        .at(at)
    })
}

/// Parses a request body into a JSON value, with the depth limit applied first. Objects with a
/// repeated key are refused: the parser would silently keep the last value.
pub fn parse_json(bytes: &[u8], max_depth: usize) -> Result<Value, FhirError> {
    check_depth(bytes, max_depth)?;
    let value: Value = serde_json::from_slice(bytes).map_err(|error| {
        FhirError::incorrect(
            IssueCode::Structure,
            format!(
                "the body is not valid JSON: {} (line {}, column {})",
                strip_position(&error.to_string()),
                error.line(),
                error.column()
            ),
        )
    })?;
    if let Some(duplicate) = find_duplicate_key(bytes) {
        let root = value.get("resourceType").and_then(Value::as_str).filter(|name| ResourceType::parse(name).is_some());
        // Without a known resource type the expression is the path from the body's root.
        let object = pointer_to_expression(root.unwrap_or(""), &duplicate.object_pointer);
        // Keys come from the client: keep what is echoed back short.
        let expression = truncate(&format!("{object}.{}", duplicate.key), 256);
        return Err(FhirError::incorrect(
            IssueCode::Structure,
            format!("the key '{}' appears more than once in the same JSON object", truncate(&duplicate.key, 64)),
        )
        .at(expression.strip_prefix('.').unwrap_or(&expression)));
    }
    Ok(value)
}

/// A key that occurs twice in one object, and where that object is (a JSON pointer).
#[derive(Debug, PartialEq, Eq)]
pub struct DuplicateKey {
    pub object_pointer: String,
    pub key: String,
}

/// Finds the first object in `bytes` (well-formed JSON, already parsed) that holds a key twice.
///
/// One scan over the bytes, tracking the open objects and arrays; keys are compared after
/// unescaping, so `"a"` and `"\u0061"` collide. Memory is bounded by the body: each open object
/// keeps the set of its keys (as slices of `bytes` unless they contain escapes).
pub fn find_duplicate_key(bytes: &[u8]) -> Option<DuplicateKey> {
    use std::borrow::Cow;
    use std::collections::HashSet;

    enum Frame<'a> {
        Object { keys: HashSet<Cow<'a, str>>, current: Cow<'a, str>, expect_key: bool },
        Array { index: usize },
    }
    let pointer_of = |stack: &[Frame]| -> String {
        let mut pointer = String::new();
        // The innermost frame is the object holding the duplicate; the path leads to it.
        for frame in &stack[..stack.len() - 1] {
            pointer.push('/');
            match frame {
                Frame::Object { current, .. } => pointer.push_str(&current.replace('~', "~0").replace('/', "~1")),
                Frame::Array { index } => pointer.push_str(&index.to_string()),
            }
        }
        pointer
    };
    let mut stack: Vec<Frame> = Vec::new();
    let mut position = 0;
    while position < bytes.len() {
        match bytes[position] {
            b'"' => {
                let start = position + 1;
                let mut end = start;
                let mut has_escape = false;
                while end < bytes.len() && bytes[end] != b'"' {
                    if bytes[end] == b'\\' {
                        has_escape = true;
                        end += 1;
                    }
                    end += 1;
                }
                position = end;
                if let Some(Frame::Object { keys, current, expect_key }) = stack.last_mut() {
                    if *expect_key {
                        *expect_key = false;
                        let key: Cow<str> = if has_escape {
                            Cow::Owned(serde_json::from_slice(&bytes[start - 1..=end.min(bytes.len() - 1)]).ok()?)
                        } else {
                            Cow::Borrowed(std::str::from_utf8(&bytes[start..end]).ok()?)
                        };
                        if !keys.insert(key.clone()) {
                            return Some(DuplicateKey { object_pointer: pointer_of(&stack), key: key.into_owned() });
                        }
                        *current = key;
                    }
                }
            }
            b'{' => stack.push(Frame::Object { keys: HashSet::new(), current: Cow::Borrowed(""), expect_key: true }),
            b'[' => stack.push(Frame::Array { index: 0 }),
            b'}' | b']' => {
                stack.pop();
            }
            b',' => match stack.last_mut() {
                Some(Frame::Object { expect_key, .. }) => *expect_key = true,
                Some(Frame::Array { index }) => *index += 1,
                None => {}
            },
            _ => {}
        }
        position += 1;
    }
    None
}

fn strip_position(message: &str) -> &str {
    message.split(" at line ").next().unwrap_or(message)
}

/// Checks that `value` is a resource object with a known `resourceType` and returns its type.
pub fn resource_type_of(value: &Value) -> Result<ResourceType, FhirError> {
    let object = value
        .as_object()
        .ok_or_else(|| FhirError::incorrect(IssueCode::Structure, "a resource must be a JSON object"))?;
    match object.get("resourceType") {
        Some(Value::String(name)) => ResourceType::parse(name).ok_or_else(|| {
            FhirError::incorrect(
                IssueCode::NotSupported,
                format!("'{}' is not an R4 resource type", truncate(name, 64)),
            )
            .at("resourceType")
        }),
        Some(_) => Err(FhirError::incorrect(IssueCode::Structure, "resourceType must be a string").at("resourceType")),
        None => Err(FhirError::incorrect(IssueCode::Required, "the resource has no resourceType").at("resourceType")),
    }
}

/// Parses a body that must hold one resource, returning its type and content.
pub fn parse_resource(bytes: &[u8], max_depth: usize) -> Result<(ResourceType, Resource), FhirError> {
    let value = parse_json(bytes, max_depth)?;
    let resource_type = resource_type_of(&value)?;
    match value {
        Value::Object(map) => Ok((resource_type, map)),
        _ => unreachable!("resource_type_of accepted a non-object"),
    }
}

/// The `id` element of a resource, if present and a string.
pub fn id_of(resource: &Resource) -> Option<&str> {
    resource.get("id").and_then(Value::as_str)
}

/// The system clock in microseconds since the Unix epoch (0 if the clock is before it).
pub fn now_micros() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_micros() as i64)
}

/// Formats a timestamp in microseconds since the Unix epoch as a FHIR `instant`.
pub fn format_instant(micros: i64) -> String {
    let time =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    // Millisecond precision in UTC, e.g. 2026-11-21T10:15:30.123Z.
    let (year, month, day) = (time.year(), time.month() as u8, time.day());
    let (hour, minute, second, milli) = (time.hour(), time.minute(), time.second(), time.millisecond());
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{milli:03}Z")
}

/// Formats a timestamp as an HTTP date (RFC 7231), for `Last-Modified`.
pub fn format_http_date(micros: i64) -> String {
    let time =
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[time.weekday().number_days_from_monday() as usize],
        time.day(),
        MONTHS[time.month() as usize - 1],
        time.year(),
        time.hour(),
        time.minute(),
        time.second()
    )
}

/// Parses a FHIR `instant` or `dateTime` with at least day precision into microseconds since
/// the epoch. A date without a time means its first moment in UTC.
pub fn parse_instant(text: &str) -> Option<i64> {
    let parsed = if text.len() == 10 {
        OffsetDateTime::parse(&format!("{text}T00:00:00Z"), &Rfc3339).ok()
    } else {
        OffsetDateTime::parse(text, &Rfc3339).ok()
    }?;
    i64::try_from(parsed.unix_timestamp_nanos() / 1000).ok()
}

/// Sets the server-maintained fields of a resource version: `id`, `meta.versionId` and
/// `meta.lastUpdated`. Other `meta` elements the client sent (profile, tag, security, source)
/// are kept. The result starts with `resourceType`, `id`, `meta`, then the client's elements in
/// their original order.
pub fn stamp(
    mut resource: Resource,
    resource_type: ResourceType,
    id: &Id,
    version: u64,
    last_updated: &str,
) -> Resource {
    // Taken, not cloned: the `meta` key left behind (now null) is skipped below.
    let mut meta = match resource.get_mut("meta").map(Value::take) {
        Some(Value::Object(meta)) => meta,
        _ => Map::new(),
    };
    let mut stamped_meta = Map::new();
    stamped_meta.insert("versionId".into(), Value::String(version.to_string()));
    stamped_meta.insert("lastUpdated".into(), Value::String(last_updated.to_owned()));
    meta.remove("versionId");
    meta.remove("lastUpdated");
    stamped_meta.extend(meta);

    let mut out = Map::with_capacity(resource.len() + 3);
    out.insert("resourceType".into(), Value::String(resource_type.as_str().to_owned()));
    out.insert("id".into(), Value::String(id.as_str().to_owned()));
    out.insert("meta".into(), Value::Object(stamped_meta));
    for (key, value) in resource {
        if !matches!(key.as_str(), "resourceType" | "id" | "meta") {
            out.insert(key, value);
        }
    }
    out
}

/// True if two resources have the same content apart from `meta.versionId` and
/// `meta.lastUpdated` (and `id`, which the caller has already matched). An update whose content
/// equals the current version's is a no-op: it creates no new version.
pub fn same_content(a: &Resource, b: &Resource) -> bool {
    fn without_server_fields(resource: &Resource) -> Resource {
        let mut copy = resource.clone();
        copy.remove("id");
        if let Some(Value::Object(meta)) = copy.get_mut("meta") {
            meta.remove("versionId");
            meta.remove("lastUpdated");
            if meta.is_empty() {
                copy.remove("meta");
            }
        }
        copy
    }
    // Key order is irrelevant to equality; compare as unordered maps.
    canonical(&Value::Object(without_server_fields(a))) == canonical(&Value::Object(without_server_fields(b)))
}

/// A copy of `value` whose objects have sorted keys, for order-insensitive comparison.
pub fn canonical(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), canonical(v))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
        other => other.clone(),
    }
}

/// Turns a JSON pointer into a FHIRPath-style expression: `/name/0/given` in a Patient becomes
/// `Patient.name[0].given`.
pub fn pointer_to_expression(root: &str, pointer: &str) -> String {
    let mut expression = root.to_owned();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.chars().all(|c| c.is_ascii_digit()) && !segment.is_empty() {
            expression.push('[');
            expression.push_str(&segment);
            expression.push(']');
        } else {
            expression.push('.');
            expression.push_str(&segment);
        }
    }
    expression
}

/// Finds JSON that FHIR forbids although the JSON schema allows it: `null` values, empty
/// objects and empty arrays (rule ele-1: every element has a value or children). Returns the
/// FHIRPath expression of each offending element.
pub fn find_empty_elements(root: &str, value: &Value) -> Vec<String> {
    fn walk(path: &mut String, value: &Value, found: &mut Vec<String>) {
        match value {
            Value::Null => found.push(path.clone()),
            Value::Object(map) if map.is_empty() => found.push(path.clone()),
            Value::Array(items) if items.is_empty() => found.push(path.clone()),
            Value::Object(map) => {
                for (key, child) in map {
                    let len = path.len();
                    path.push('.');
                    path.push_str(key);
                    // Arrays of primitive extensions (`_given`) may hold nulls as placeholders.
                    if key.starts_with('_') {
                        if let Value::Array(items) = child {
                            for (index, item) in items.iter().enumerate() {
                                if !item.is_null() {
                                    let inner = path.len();
                                    path.push_str(&format!("[{index}]"));
                                    walk(path, item, found);
                                    path.truncate(inner);
                                }
                            }
                            path.truncate(len);
                            continue;
                        }
                    }
                    walk(path, child, found);
                    path.truncate(len);
                }
            }
            Value::Array(items) => {
                for (index, item) in items.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("[{index}]"));
                    walk(path, item, found);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    let mut path = root.to_owned();
    walk(&mut path, value, &mut found);
    found
}

fn truncate(text: &str, max_chars: usize) -> String {
    text.chars().take(max_chars).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn depth_limit_counts_brackets_outside_strings_only() {
        assert!(check_depth(br#"{"a":[{"b":1}]}"#, 3).is_ok());
        assert!(check_depth(br#"{"a":[{"b":[1]}]}"#, 3).is_err());
        assert!(check_depth(br#"{"a":"[[[[[[\"[[["}"#, 1).is_ok());
    }

    #[test]
    fn duplicate_keys_are_found_with_their_object() {
        let found = |text: &str| find_duplicate_key(text.as_bytes());
        assert_eq!(found(r#"{"a":1,"b":{"a":2},"c":[{"a":1,"b":"a"}]}"#), None);
        assert_eq!(
            found(r#"{"resourceType":"Patient","resourceType":"Patient"}"#),
            Some(DuplicateKey { object_pointer: String::new(), key: "resourceType".into() })
        );
        assert_eq!(
            found(r#"{"name":[{"given":["a"]},{"family":"x","fam\u0069ly":"y"}]}"#),
            Some(DuplicateKey { object_pointer: "/name/1".into(), key: "family".into() })
        );
        assert_eq!(
            found(r#"{"a\"b":{"x,":"{\"y\":1}","x,":2}}"#),
            Some(DuplicateKey { object_pointer: "/a\"b".into(), key: "x,".into() })
        );
        let error = parse_json(br#"{"resourceType":"Patient","name":[{"family":"a","family":"b"}]}"#, 10).unwrap_err();
        assert_eq!(error.issues[0].expression, vec!["Patient.name[0].family"]);
        assert_eq!(error.issues[0].diagnostics, "the key 'family' appears more than once in the same JSON object");
        let error = parse_json(br#"{"a":{"b":1,"b":2}}"#, 10).unwrap_err();
        assert_eq!(error.issues[0].expression, vec!["a.b"]);
    }

    #[test]
    fn numbers_and_key_order_survive_a_round_trip() {
        let text = r#"{"resourceType":"Observation","valueQuantity":{"value":5.10,"unit":"x"},"a":-0.000}"#;
        let value = parse_json(text.as_bytes(), 10).unwrap();
        assert_eq!(serde_json::to_string(&value).unwrap(), text);
    }

    #[test]
    fn stamp_puts_server_fields_first_and_keeps_client_meta() {
        let resource = json!({"resourceType": "Patient", "active": true,
            "meta": {"versionId": "9", "profile": ["http://x"]}, "id": "old"});
        let Value::Object(map) = resource else { unreachable!() };
        let patient = ResourceType::PATIENT;
        let stamped = stamp(map, patient, &Id::parse("p1").unwrap(), 2, "2026-01-01T00:00:00.000Z");
        assert_eq!(
            serde_json::to_string(&stamped).unwrap(),
            r#"{"resourceType":"Patient","id":"p1","meta":{"versionId":"2","lastUpdated":"2026-01-01T00:00:00.000Z","profile":["http://x"]},"active":true}"#
        );
    }

    #[test]
    fn instants_format_and_parse_back() {
        let micros = 1_700_000_000_123_000;
        let text = format_instant(micros);
        assert_eq!(text, "2023-11-14T22:13:20.123Z");
        assert_eq!(parse_instant(&text), Some(micros));
        assert_eq!(parse_instant("2023-11-14"), Some(1_699_920_000_000_000));
        assert_eq!(format_http_date(micros), "Tue, 14 Nov 2023 22:13:20 GMT");
    }

    #[test]
    fn pointers_become_fhirpath_expressions() {
        assert_eq!(pointer_to_expression("Patient", "/name/0/given"), "Patient.name[0].given");
        assert_eq!(pointer_to_expression("Patient", ""), "Patient");
    }

    #[test]
    fn empty_elements_are_found() {
        let value = json!({"name": [], "x": {"y": null}, "_given": [null, {"id": "a"}], "ok": 1});
        assert_eq!(find_empty_elements("Patient", &value), vec!["Patient.name", "Patient.x.y"]);
    }
}
