//! Reference strings (`Reference.reference`): what they point at, and rewriting them.

use serde_json::Value;

use super::{Id, ResourceType};

/// What a `Reference.reference` string points at.
#[derive(Debug, Clone, PartialEq)]
pub enum Target<'a> {
    /// `Patient/123` or `Patient/123/_history/2`.
    Local { resource_type: ResourceType, id: Id, version: Option<u64> },
    /// `Patient?identifier=http://x|123`: resolved by search when a bundle is processed.
    Conditional { resource_type: ResourceType, query: &'a str },
    /// `urn:uuid:...` or `urn:oid:...`: a bundle-local placeholder.
    Urn(&'a str),
    /// `#id`: a contained resource.
    Contained(&'a str),
    /// Anything else: an absolute URL or a string Braid does not interpret.
    Other(&'a str),
}

/// The part of `reference` after `base` when it is an absolute URL on that base
/// (`{base}/Patient/1` gives `Patient/1`); `None` otherwise, or when `base` is empty. The base
/// must end where a path segment does: `{base}x/Patient/1` is not on it.
pub fn on_base<'a>(reference: &'a str, base: &str) -> Option<&'a str> {
    let base = base.trim_end_matches('/');
    if base.is_empty() {
        return None;
    }
    let rest = reference.strip_prefix(base)?;
    rest.starts_with('/').then(|| rest.trim_start_matches('/'))
}

/// `reference` relative to `base` when it is on it (see [`on_base`]), else as it is.
pub fn relative_to<'a>(reference: &'a str, base: &str) -> &'a str {
    on_base(reference, base).unwrap_or(reference)
}

/// `reference` up to its first `/_history/` (`Patient/1/_history/2` gives `Patient/1`), as
/// `reference.split("/_history/").next()` gives it, without building a substring searcher:
/// this runs for every reference of every resource indexed.
pub fn without_version(reference: &str) -> &str {
    let bytes = reference.as_bytes();
    let mut from = 0;
    while let Some(offset) = bytes[from..].iter().position(|&byte| byte == b'/') {
        let at = from + offset;
        if bytes[at..].starts_with(b"/_history/") {
            return &reference[..at];
        }
        from = at + 1;
    }
    reference
}

/// Classifies a reference string. Never fails: what it does not understand is `Other`.
pub fn parse(reference: &str) -> Target<'_> {
    if reference.starts_with("urn:uuid:") || reference.starts_with("urn:oid:") {
        return Target::Urn(reference);
    }
    if let Some(contained) = reference.strip_prefix('#') {
        return Target::Contained(contained);
    }
    if let Some((type_name, query)) = reference.split_once('?') {
        if let Some(resource_type) = ResourceType::parse(type_name) {
            return Target::Conditional { resource_type, query };
        }
        return Target::Other(reference);
    }
    let parts: Vec<&str> = reference.split('/').collect();
    let local = match parts.as_slice() {
        [type_name, id] => Some((type_name, id, None)),
        [type_name, id, "_history", version] => version.parse::<u64>().ok().map(|v| (type_name, id, Some(v))),
        _ => None,
    };
    if let Some((type_name, id, version)) = local {
        if let (Some(resource_type), Ok(id)) = (ResourceType::parse(type_name), Id::parse(id)) {
            return Target::Local { resource_type, id, version };
        }
    }
    Target::Other(reference)
}

/// Calls `rewrite` on every `Reference.reference` string in `value` (including those inside
/// contained resources) and replaces it with the returned string, if any.
///
/// A `reference` key holding a string is, in FHIR JSON, always `Reference.reference`: no other
/// R4 element has that name.
pub fn rewrite_references<E>(
    value: &mut Value,
    rewrite: &mut impl FnMut(&str) -> Result<Option<String>, E>,
) -> Result<(), E> {
    match value {
        Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                if key == "reference" {
                    if let Value::String(reference) = child {
                        if let Some(replacement) = rewrite(reference)? {
                            *reference = replacement;
                        }
                        continue;
                    }
                }
                rewrite_references(child, rewrite)?;
            }
        }
        Value::Array(items) => {
            for item in items {
                rewrite_references(item, rewrite)?;
            }
        }
        _ => {}
    }
    Ok(())
}

/// Like [`rewrite_references`], for a whole resource about to be stored. The entries of a
/// stored Bundle (a document, message or collection) are left alone: their references point
/// at other entries of that same Bundle and must keep doing so.
pub fn rewrite_resource_references<E>(
    resource: &mut Value,
    rewrite: &mut impl FnMut(&str) -> Result<Option<String>, E>,
) -> Result<(), E> {
    let is_bundle = resource.get("resourceType").and_then(Value::as_str) == Some("Bundle");
    match resource {
        Value::Object(map) if is_bundle => {
            for (key, child) in map.iter_mut() {
                if key != "entry" {
                    rewrite_references(child, rewrite)?;
                }
            }
            Ok(())
        }
        other => rewrite_references(other, rewrite),
    }
}

/// What [`scan_references`] reads from a resource's JSON.
#[derive(Debug, Default, PartialEq)]
pub struct ReferenceScan {
    pub resource_type: Option<String>,
    pub id: Option<String>,
    /// Every `reference` string, in document order (as [`rewrite_resource_references`] would
    /// visit them: a stored Bundle's entries are left out).
    pub references: Vec<String>,
}

/// The `resourceType`, `id` and `reference` strings of a resource, read in one streaming pass
/// without building the document: for callers that only follow references (a `$everything`
/// page reads a thousand stored resources this way). Nesting is bounded by the depth limit the
/// resource passed when it was written, and by serde_json's own recursion limit.
pub fn scan_references(json: &str) -> Result<ReferenceScan, serde_json::Error> {
    use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

    /// Where a value sits: at the root object, inside the root's `entry`, or elsewhere.
    #[derive(Clone, Copy, PartialEq)]
    enum Place {
        Root,
        RootEntry,
        Inner,
    }

    struct Walk<'a> {
        scan: &'a mut ReferenceScan,
        /// References found inside the root's `entry` (dropped if the resource is a Bundle).
        in_entry: &'a mut Vec<String>,
        place: Place,
        /// The value is that of a `reference` key.
        is_reference: bool,
        /// The value is the root's `resourceType` or `id`.
        root_field: Option<&'static str>,
    }

    impl<'de> DeserializeSeed<'de> for Walk<'_> {
        type Value = ();
        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Walk<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_str<E>(self, text: &str) -> Result<(), E> {
            match (self.root_field, self.is_reference) {
                (Some("resourceType"), _) => self.scan.resource_type = Some(text.to_owned()),
                (Some(_), _) => self.scan.id = Some(text.to_owned()),
                (None, true) if self.place == Place::RootEntry => self.in_entry.push(text.to_owned()),
                (None, true) => self.scan.references.push(text.to_owned()),
                (None, false) => {}
            }
            Ok(())
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            let place = if self.place == Place::Root { Place::Inner } else { self.place };
            while seq
                .next_element_seed(Walk {
                    scan: &mut *self.scan,
                    in_entry: &mut *self.in_entry,
                    place,
                    is_reference: false,
                    root_field: None,
                })?
                .is_some()
            {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<String>()? {
                let root = self.place == Place::Root;
                let place = match self.place {
                    Place::Root if key == "entry" => Place::RootEntry,
                    Place::Root => Place::Inner,
                    other => other,
                };
                let root_field = match key.as_str() {
                    "resourceType" if root => Some("resourceType"),
                    "id" if root => Some("id"),
                    _ => None,
                };
                map.next_value_seed(Walk {
                    scan: &mut *self.scan,
                    in_entry: &mut *self.in_entry,
                    place,
                    is_reference: key == "reference",
                    root_field,
                })?;
            }
            Ok(())
        }
    }

    let mut scan = ReferenceScan::default();
    let mut in_entry = Vec::new();
    let mut deserializer = serde_json::Deserializer::from_str(json);
    Walk { scan: &mut scan, in_entry: &mut in_entry, place: Place::Root, is_reference: false, root_field: None }
        .deserialize(&mut deserializer)?;
    deserializer.end()?;
    if scan.resource_type.as_deref() != Some("Bundle") {
        // Not a Bundle after all: a root `entry` element is an ordinary element.
        scan.references.extend(in_entry);
    }
    Ok(scan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_version_is_cut_at_the_first_history_segment() {
        for reference in [
            "Patient/1",
            "Patient/1/_history/2",
            "http://x/fhir/Patient/1/_history/2",
            "a/_history/b/_history/c",
            "/_history/",
            "Patient/1/_historyx/2",
            "",
            "no-slash",
            "ends/",
        ] {
            assert_eq!(without_version(reference), reference.split("/_history/").next().unwrap(), "{reference}");
        }
    }

    #[test]
    fn a_reference_on_a_base_is_read_relative_to_it() {
        let base = "https://braid.example/fhir";
        assert_eq!(on_base("https://braid.example/fhir/Patient/1", base), Some("Patient/1"));
        assert_eq!(on_base("https://braid.example/fhir/Patient/1", "https://braid.example/fhir/"), Some("Patient/1"));
        assert_eq!(on_base("https://braid.example/fhirx/Patient/1", base), None, "not at a segment's end");
        assert_eq!(on_base("Patient/1", base), None);
        assert_eq!(on_base("Patient/1", ""), None, "an empty base holds nothing");
        assert_eq!(relative_to("https://other.example/fhir/Patient/1", base), "https://other.example/fhir/Patient/1");
        assert_eq!(relative_to("https://braid.example/fhir/Patient/1", base), "Patient/1");
    }

    #[test]
    fn scanning_finds_what_rewriting_visits() {
        let resources = [
            json!({"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p1"},
                "performer": [{"reference": "Practitioner/d1"}, {"display": "x"}], "valueQuantity": {"value": 1.50},
                "contained": [{"resourceType": "Device", "id": "c", "owner": {"reference": "Organization/o"}}],
                "note": [{"text": "{\"reference\": \"Patient/fake\"}"}]}),
            json!({"resourceType": "Bundle", "id": "b", "entry": [{"resource": {"resourceType": "Patient", "id": "x",
                "managingOrganization": {"reference": "Organization/in-entry"}}}], "signature": {"who": {"reference": "Practitioner/s"}}}),
            json!({"entry": [{"reference": "Patient/e"}], "resourceType": "Basic", "id": "not-a-bundle"}),
        ];
        for resource in resources {
            let mut visited = Vec::new();
            let mut copy = resource.clone();
            let _ = rewrite_resource_references(&mut copy, &mut |text: &str| {
                visited.push(text.to_owned());
                Ok::<_, std::convert::Infallible>(None)
            });
            let scan = scan_references(&resource.to_string()).unwrap();
            assert_eq!(scan.references, visited, "{resource}");
            assert_eq!(scan.resource_type.as_deref(), resource["resourceType"].as_str());
            assert_eq!(scan.id.as_deref(), resource["id"].as_str());
        }
        assert!(scan_references("{\"a\": [1, 2").is_err());
    }

    #[test]
    fn reference_strings_are_classified() {
        assert!(matches!(parse("Patient/1"), Target::Local { version: None, .. }));
        assert!(matches!(parse("Patient/1/_history/3"), Target::Local { version: Some(3), .. }));
        assert!(matches!(parse("urn:uuid:abc"), Target::Urn("urn:uuid:abc")));
        assert!(matches!(parse("#c1"), Target::Contained("c1")));
        assert!(matches!(parse("Patient?identifier=a|b"), Target::Conditional { query: "identifier=a|b", .. }));
        assert!(matches!(parse("http://other/fhir/Patient/1"), Target::Other(_)));
        assert!(matches!(parse("Nonsense/1"), Target::Other(_)));
    }

    #[test]
    fn every_reference_is_rewritten_and_nothing_else() {
        let mut value = json!({
            "subject": {"reference": "urn:uuid:1"},
            "identifier": [{"value": "urn:uuid:1"}],
            "contained": [{"resourceType": "Provenance", "target": [{"reference": "urn:uuid:1"}]}]
        });
        rewrite_references::<()>(&mut value, &mut |r| Ok((r == "urn:uuid:1").then(|| "Patient/p".to_owned()))).unwrap();
        assert_eq!(value["subject"]["reference"], "Patient/p");
        assert_eq!(value["contained"][0]["target"][0]["reference"], "Patient/p");
        assert_eq!(value["identifier"][0]["value"], "urn:uuid:1");
    }

    #[test]
    fn references_between_entries_of_a_stored_bundle_are_kept() {
        let mut bundle = json!({"resourceType": "Bundle", "type": "document",
            "entry": [{"resource": {"resourceType": "Composition", "subject": {"reference": "urn:uuid:1"}}}]});
        rewrite_resource_references::<()>(&mut bundle, &mut |_| Ok(Some("Patient/p".to_owned()))).unwrap();
        assert_eq!(bundle["entry"][0]["resource"]["subject"]["reference"], "urn:uuid:1");
    }
}
