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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
