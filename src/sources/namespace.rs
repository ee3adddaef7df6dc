//! A source's namespace: where the resources an upstream system writes are stored, so that two
//! sources' records never collide and a re-push addresses the same resource.
//!
//! A source named `clinic` that writes `Patient/42` has it stored as `Patient/clinic-42`. An
//! original id too long for that (the stored id must stay within FHIR's 64 characters) is
//! stored as `clinic.` and the hex SHA-256 of the original id, cut to fit. Source names use only
//! lowercase letters and digits, so the character after the name tells the two forms apart and
//! the stored id is a function of (source, original id) that no other pair shares (up to
//! SHA-256 collisions among long ids, at least 188 bits).
//!
//! A resource the source creates without an id has no id of the source's: it gets an id Braid
//! generates, as for any writer. Generated ids are 17 letters and digits, without `-` or `.`,
//! so they never equal a namespaced id; the source owns the resource by its `meta.source`, as
//! it owns the others, and changes it later by criteria (a conditional update on one of its
//! identifiers), since it has no id of its own for it. Not prefixing generated ids keeps them
//! 17 bytes instead of 18 to 34 in the version, the history and every index entry that repeats
//! them: about a tenth of what a source's creates store, and of the time they take.
//!
//! Every reference inside the resource, contained resources included, is rewritten the same
//! way, and so are absolute URLs on the source's own FHIR base; `urn:` placeholders, contained
//! (`#id`) and conditional references are left to the transaction that resolves them. The
//! original id stays with the resource as an identifier whose system names the source, and
//! `meta.source` names the source (an upstream's own `meta.source` is kept in an extension).

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::fhir::reference::{self, Target};
use crate::fhir::{FhirError, Id, IssueCode};

/// Longest source name, so that a namespaced id keeps at least 47 characters of its own.
pub const MAX_SOURCE_NAME: usize = 16;

/// Longest FHIR id.
const MAX_ID: usize = 64;

/// The extension that keeps an upstream's own `meta.source` when Braid sets its own.
pub const ORIGINAL_META_SOURCE: &str = "urn:braid:original-meta-source";

/// The `meta.extension` that keeps a source's own id where the resource has no identifier to
/// keep it in (see [`Namespace::apply`]).
pub const ORIGINAL_ID: &str = "urn:braid:original-id";

/// What every source's URI starts with (see [`SourceName::uri`]).
pub const SOURCE_URI_PREFIX: &str = "urn:braid:source:";

/// The URI naming the source `name` (see [`SourceName::uri`]).
pub fn source_uri(name: &str) -> String {
    format!("{SOURCE_URI_PREFIX}{name}")
}

/// The name of the source a resource came from, by its `meta.source`: `None` for a resource
/// that no source wrote.
pub fn source_of(resource: &Value) -> Option<&str> {
    resource.get("meta")?.get("source")?.as_str()?.strip_prefix(SOURCE_URI_PREFIX)
}

/// The sources `resource` speaks for: the one its `meta.source` names, and those whose URI is
/// the system of one of its identifiers (the identifier that keeps a source's own id). Each
/// name once, in that order.
pub fn claimed_sources(resource: &Value) -> Vec<&str> {
    let mut names: Vec<&str> = source_of(resource).into_iter().collect();
    let identifiers = match resource.get("identifier") {
        Some(Value::Array(list)) => list.iter().collect(),
        Some(single @ Value::Object(_)) => vec![single],
        _ => Vec::new(),
    };
    for identifier in identifiers {
        let name = identifier.get("system").and_then(Value::as_str).and_then(|s| s.strip_prefix(SOURCE_URI_PREFIX));
        if let Some(name) = name.filter(|name| !names.contains(name)) {
            names.push(name);
        }
    }
    names
}

/// A source's name, as the operator gave it: 1 to [`MAX_SOURCE_NAME`] lowercase ASCII letters
/// and digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SourceName(String);

impl SourceName {
    pub fn parse(text: &str) -> Result<SourceName, String> {
        let valid = !text.is_empty()
            && text.len() <= MAX_SOURCE_NAME
            && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        // Its records' ids start with `{name}-`: that of golden Patients is Braid's own.
        if crate::store::MANAGED_PATIENT_PREFIX.strip_suffix('-') == Some(text) {
            return Err(format!("'{text}' is reserved: golden Patients' ids start with it"));
        }
        if valid {
            Ok(SourceName(text.to_owned()))
        } else {
            Err(format!(
                "a source name is 1 to {MAX_SOURCE_NAME} lowercase letters and digits (got '{}')",
                text.chars().take(MAX_ID).collect::<String>()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URI naming this source: the system of the identifier that keeps a resource's
    /// original id, and the `meta.source` of what it writes.
    pub fn uri(&self) -> String {
        source_uri(&self.0)
    }
}

/// One source's namespace.
#[derive(Debug, Clone)]
pub struct Namespace {
    name: SourceName,
    /// `name.uri()`, made once: every resource the source writes carries it twice.
    uri: String,
    /// The source's own FHIR base (for a pulled source), without a trailing slash: absolute
    /// references to it are the source's own resources.
    own_base: Option<String>,
}

impl Namespace {
    pub fn new(name: SourceName, own_base: Option<&str>) -> Namespace {
        let uri = name.uri();
        Namespace { name, uri, own_base: own_base.map(|base| base.trim_end_matches('/').to_owned()) }
    }

    pub fn name(&self) -> &SourceName {
        &self.name
    }

    /// The source's own FHIR base (a pulled source's), without a trailing slash.
    pub fn own_base(&self) -> Option<&str> {
        self.own_base.as_deref()
    }

    /// The id under which the resource the source calls `original` is stored.
    pub fn id(&self, original: &Id) -> Id {
        let name = self.name.as_str();
        let original = original.as_str();
        let text = if name.len() + 1 + original.len() <= MAX_ID {
            format!("{name}-{original}")
        } else {
            let digest = crate::fhir::hex(&Sha256::digest(original.as_bytes()));
            format!("{name}.{}", &digest[..MAX_ID - name.len() - 1])
        };
        Id::parse(&text).expect("a source name, a separator and id characters or hex digits make an id")
    }

    /// The reference `reference` becomes in this namespace, or `None` when it stays as it is.
    /// A version (`/_history/n`) is kept: it names the upstream's version. Absolute references
    /// on the source's own base, and on `local_base` (Braid's own FHIR base, as the request
    /// addressed it), are read as the source's own: a source names resources in its own terms,
    /// so it cannot point into another source's namespace, nor at a record outside every
    /// namespace, by writing Braid's URL.
    pub fn rewrite_reference(&self, reference: &str, local_base: Option<&str>) -> Option<String> {
        let (resource_type, id, version) = self.local_target(reference, local_base)?;
        Some(match version {
            Some(version) => format!("{resource_type}/{id}/_history/{version}"),
            None => format!("{resource_type}/{id}"),
        })
    }

    /// The resource `reference` names in this namespace, read as [`Namespace::rewrite_reference`]
    /// reads it: its type, its namespaced id and the version it names, if any. `None` for a
    /// reference that names no resource of the source's (another server's, a `urn:`, a
    /// conditional or contained one).
    pub fn local_target(
        &self,
        reference: &str,
        local_base: Option<&str>,
    ) -> Option<(crate::fhir::ResourceType, Id, Option<u64>)> {
        let on = |base: &str| reference::on_base(reference, base);
        let relative = self.own_base.as_deref().and_then(on).or_else(|| local_base.and_then(on)).unwrap_or(reference);
        match reference::parse(relative) {
            Target::Local { resource_type, id, version } => Some((resource_type, self.id(&id), version)),
            _ => None,
        }
    }

    /// Moves `resource` into the namespace: its id (when it has one), every reference in it
    /// (see [`Namespace::rewrite_reference`] for `local_base`), an identifier keeping its
    /// original id, and `meta.source`.
    pub fn apply(&self, resource: &mut Map<String, Value>, local_base: Option<&str>) -> Result<(), FhirError> {
        let original = match resource.get("id") {
            None => None,
            Some(Value::String(text)) => Some(Id::parse(text).map_err(|error| error.at("id"))?),
            Some(_) => return Err(FhirError::incorrect(IssueCode::Invalid, "id must be a string").at("id")),
        };
        // References first: the rewrite must not see the identifier and meta added below.
        let mut object = Value::Object(std::mem::take(resource));
        reference::rewrite_resource_references(&mut object, &mut |text: &str| {
            Ok::<_, FhirError>(self.rewrite_reference(text, local_base))
        })?;
        let Value::Object(map) = object else { unreachable!("still the object lent") };
        *resource = map;
        if let Some(original) = &original {
            resource.insert("id".into(), Value::String(self.id(original).as_str().to_owned()));
            self.keep_original_id(resource, original)?;
        }
        self.set_meta_source(resource)
    }

    /// Keeps the source's own id: as an identifier with the source's system where the type has
    /// room for one (a list of identifiers, or a single one not yet given), else in a
    /// `meta.extension` ([`ORIGINAL_ID`]): a Binary has no identifier, and a Bundle's single
    /// one may already be the sender's. Never lost, even when the stored id is a digest.
    fn keep_original_id(&self, resource: &mut Map<String, Value>, original: &Id) -> Result<(), FhirError> {
        let system = self.uri.as_str();
        let kept = || json!({"system": system, "value": original.as_str()});
        let resource_type = resource.get("resourceType").and_then(Value::as_str).unwrap_or("");
        match (identifier_shape(resource_type), resource.get_mut("identifier")) {
            (Some(IdentifierShape::List), None) => {
                resource.insert("identifier".into(), Value::Array(vec![kept()]));
            }
            (Some(IdentifierShape::List), Some(Value::Array(list))) => {
                if !list.iter().any(|identifier| identifier["system"] == system) {
                    list.push(kept());
                }
            }
            (Some(IdentifierShape::Single), None) => {
                resource.insert("identifier".into(), kept());
            }
            (Some(IdentifierShape::Single), Some(Value::Object(identifier)))
                if identifier.get("system").and_then(Value::as_str) == Some(system) => {}
            (Some(IdentifierShape::Single), Some(Value::Object(_))) | (None, _) => {
                set_extension(meta_extensions(resource)?, json!({"url": ORIGINAL_ID, "valueId": original.as_str()}));
            }
            (Some(_), Some(_)) => {
                return Err(FhirError::incorrect(IssueCode::Invalid, "identifier has the wrong type").at("identifier"));
            }
        }
        Ok(())
    }

    fn set_meta_source(&self, resource: &mut Map<String, Value>) -> Result<(), FhirError> {
        let uri = &self.uri;
        let meta = meta_of(resource)?;
        match meta.insert("source".into(), Value::String(uri.clone())) {
            Some(Value::String(previous)) if previous != *uri => {
                set_extension(meta_extensions(resource)?, json!({"url": ORIGINAL_META_SOURCE, "valueUri": previous}));
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// How a resource type holds identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdentifierShape {
    /// `identifier` is a list (most types).
    List,
    /// `identifier` is a single value (e.g. Bundle, QuestionnaireResponse).
    Single,
}

/// The shape of `resource_type`'s `identifier` (`None`: it has none, e.g. Binary), read from
/// the schema once.
fn identifier_shape(resource_type: &str) -> Option<IdentifierShape> {
    static SHAPES: std::sync::LazyLock<std::collections::HashMap<&'static str, IdentifierShape>> =
        std::sync::LazyLock::new(|| {
            let definitions = crate::fhir::validation::validator().schema_definitions();
            crate::fhir::ResourceType::all()
                .map(crate::fhir::ResourceType::as_str)
                .filter_map(|name| {
                    let identifier = definitions[name]["properties"].get("identifier")?;
                    let shape =
                        if identifier["type"] == "array" { IdentifierShape::List } else { IdentifierShape::Single };
                    Some((name, shape))
                })
                .collect()
        });
    SHAPES.get(resource_type).copied()
}

/// The resource's `meta`, made when it has none.
fn meta_of(resource: &mut Map<String, Value>) -> Result<&mut Map<String, Value>, FhirError> {
    match resource.entry("meta").or_insert_with(|| Value::Object(Map::new())) {
        Value::Object(meta) => Ok(meta),
        _ => Err(FhirError::incorrect(IssueCode::Invalid, "meta must be an object").at("meta")),
    }
}

/// Puts `extension` in `extensions`: in place of the first with its URL (any others with it
/// are dropped), else at the end.
fn set_extension(extensions: &mut Vec<Value>, extension: Value) {
    let url = extension["url"].clone();
    let mut unplaced = Some(extension);
    extensions.retain_mut(|existing| {
        if existing["url"] != url {
            return true;
        }
        match unplaced.take() {
            Some(extension) => {
                *existing = extension;
                true
            }
            None => false,
        }
    });
    extensions.extend(unplaced);
}

/// The resource's `meta.extension` list, made when it has none.
fn meta_extensions(resource: &mut Map<String, Value>) -> Result<&mut Vec<Value>, FhirError> {
    match meta_of(resource)?.entry("extension").or_insert_with(|| Value::Array(Vec::new())) {
        Value::Array(extensions) => Ok(extensions),
        _ => Err(FhirError::incorrect(IssueCode::Invalid, "meta.extension must be a list").at("meta")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clinic() -> Namespace {
        Namespace::new(SourceName::parse("clinic").unwrap(), Some("https://ehr.example/fhir/"))
    }

    fn id(text: &str) -> Id {
        Id::parse(text).unwrap()
    }

    #[test]
    fn names_are_short_lowercase_letters_and_digits() {
        for good in ["a", "clinic2", "abcdefghijklmnop"] {
            assert!(SourceName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "Clinic", "st-mary", "st.mary", "abcdefghijklmnopq", "é"] {
            assert!(SourceName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ids_are_deterministic_distinct_per_source_and_within_64_characters() {
        let clinic = clinic();
        let hospital = Namespace::new(SourceName::parse("hospital").unwrap(), None);
        assert_eq!(clinic.id(&id("42")).as_str(), "clinic-42");
        assert_eq!(clinic.id(&id("42")), clinic.id(&id("42")));
        assert_ne!(clinic.id(&id("42")), hospital.id(&id("42")));
        // Names that are prefixes of each other, and ids that start like a name, stay apart.
        let cl = Namespace::new(SourceName::parse("cl").unwrap(), None);
        assert_ne!(cl.id(&id("inic-42")), clinic.id(&id("42")));
        let long = "x".repeat(64);
        let stored = clinic.id(&id(&long));
        assert_eq!(stored.as_str().len(), 64);
        assert!(stored.as_str().starts_with("clinic."), "{stored}");
        assert_ne!(stored, clinic.id(&id(&"x".repeat(63))));
        // The longest direct form and the shortest hashed one.
        let fits = "y".repeat(64 - "clinic-".len());
        assert_eq!(clinic.id(&id(&fits)).as_str(), format!("clinic-{fits}"));
        assert!(clinic.id(&id(&format!("{fits}y"))).as_str().starts_with("clinic."));
        let longest_name = Namespace::new(SourceName::parse("abcdefghijklmnop").unwrap(), None);
        assert_eq!(longest_name.id(&id(&long)).as_str().len(), 64);
    }

    #[test]
    fn generated_ids_never_equal_a_namespaced_id() {
        let clinic = clinic();
        for _ in 0..1000 {
            let generated = Id::generate();
            assert!(!generated.as_str().contains(['-', '.']), "{generated}");
            // Every namespaced id has a separator after the source's name; a generated one none.
            assert!(clinic.id(&generated).as_str().contains(['-', '.']));
        }
    }

    #[test]
    fn references_are_rewritten_the_same_way_and_others_are_left_alone() {
        let clinic = clinic();
        let cases = [
            ("Patient/42", Some("Patient/clinic-42")),
            ("Patient/42/_history/3", Some("Patient/clinic-42/_history/3")),
            ("https://ehr.example/fhir/Patient/42", Some("Patient/clinic-42")),
            ("https://other.example/fhir/Patient/42", None),
            ("https://ehr.example/fhir", None),
            ("#med1", None),
            ("urn:uuid:0d5bcbe7-6a9e-4bd4-b3c8-6b2d4bd25b2a", None),
            ("Patient?identifier=http://x|1", None),
            ("NotAType/42", None),
        ];
        for (reference, expected) in cases {
            assert_eq!(clinic.rewrite_reference(reference, None).as_deref(), expected, "{reference}");
        }
    }

    #[test]
    fn absolute_references_on_braids_own_base_are_read_in_the_sources_terms() {
        let clinic = Namespace::new(SourceName::parse("clinic").unwrap(), None);
        let braid = Some("https://braid.example/fhir");
        for (reference, expected) in [
            ("https://braid.example/fhir/Patient/hospital-7", Some("Patient/clinic-hospital-7")),
            ("https://braid.example/fhir/Patient/42/_history/2", Some("Patient/clinic-42/_history/2")),
            ("https://braid.example/fhirx/Patient/42", None),
            ("https://elsewhere.example/fhir/Patient/42", None),
        ] {
            assert_eq!(clinic.rewrite_reference(reference, braid).as_deref(), expected, "{reference}");
        }
        assert_eq!(clinic.rewrite_reference("https://braid.example/fhir/Patient/hospital-7", None), None);
    }

    #[test]
    fn a_resource_moves_into_the_namespace_with_its_original_id_and_source_kept() {
        let clinic = clinic();
        let Value::Object(mut resource) = json!({
            "resourceType": "Observation", "id": "obs-1",
            "meta": {"source": "https://ehr.example/feed#3"},
            "identifier": [{"system": "http://lab", "value": "L1"}],
            "subject": {"reference": "Patient/42"},
            "performer": [{"reference": "https://ehr.example/fhir/Practitioner/7"}, {"reference": "#p"}],
            "contained": [{"resourceType": "Practitioner", "id": "p",
                "extension": [{"url": "http://x", "valueReference": {"reference": "Organization/9"}}]}],
            "status": "final", "code": {"text": "x"}
        }) else {
            unreachable!()
        };
        clinic.apply(&mut resource, None).unwrap();
        let resource = Value::Object(resource);
        assert_eq!(resource["id"], "clinic-obs-1");
        assert_eq!(resource["subject"]["reference"], "Patient/clinic-42");
        assert_eq!(resource["performer"][0]["reference"], "Practitioner/clinic-7");
        assert_eq!(resource["performer"][1]["reference"], "#p");
        assert_eq!(resource["contained"][0]["id"], "p", "contained ids are local to the resource");
        assert_eq!(resource["contained"][0]["extension"][0]["valueReference"]["reference"], "Organization/clinic-9");
        assert_eq!(
            resource["identifier"],
            json!([{"system": "http://lab", "value": "L1"}, {"system": "urn:braid:source:clinic", "value": "obs-1"}])
        );
        assert_eq!(resource["meta"]["source"], "urn:braid:source:clinic");
        assert_eq!(
            resource["meta"]["extension"],
            json!([{"url": ORIGINAL_META_SOURCE, "valueUri": "https://ehr.example/feed#3"}])
        );
    }

    #[test]
    fn applying_twice_changes_nothing_more_than_once() {
        let clinic = clinic();
        let Value::Object(mut resource) =
            json!({"resourceType": "Patient", "id": "42", "managingOrganization": {"reference": "Organization/1"}})
        else {
            unreachable!()
        };
        clinic.apply(&mut resource, None).unwrap();
        let once = resource.clone();
        // A re-push of the same upstream content gives the same stored content.
        let Value::Object(mut again) =
            json!({"resourceType": "Patient", "id": "42", "managingOrganization": {"reference": "Organization/1"}})
        else {
            unreachable!()
        };
        clinic.apply(&mut again, None).unwrap();
        assert_eq!(again, once);
        // Applied again to what it made: the original id is not listed twice, and meta.source
        // (already the source's) is not recorded as replaced.
        let mut twice = once.clone();
        clinic.apply(&mut twice, None).unwrap();
        let (once, twice) = (Value::Object(once), Value::Object(twice));
        assert_eq!(once["identifier"], json!([{"system": "urn:braid:source:clinic", "value": "42"}]));
        assert_eq!(once["managingOrganization"]["reference"], "Organization/clinic-1");
        assert_eq!(twice["identifier"].as_array().unwrap().len(), 1, "{twice}");
        assert!(twice["meta"].get("extension").is_none(), "{twice}");
    }

    #[test]
    fn a_resource_without_an_id_or_an_identifier_element_is_still_namespaced() {
        let clinic = clinic();
        let Value::Object(mut created) = json!({"resourceType": "Basic", "code": {"text": "x"},
            "subject": {"reference": "Patient/42"}})
        else {
            unreachable!()
        };
        clinic.apply(&mut created, None).unwrap();
        let created = Value::Object(created);
        assert!(created.get("id").is_none(), "a create without an id gets the server's id");
        assert_eq!(created["subject"]["reference"], "Patient/clinic-42");
        let Value::Object(mut binary) = json!({"resourceType": "Binary", "id": "b1", "contentType": "text/plain"})
        else {
            unreachable!()
        };
        clinic.apply(&mut binary, None).unwrap();
        let binary = Value::Object(binary);
        assert_eq!(binary["id"], "clinic-b1");
        assert!(binary.get("identifier").is_none(), "Binary has no identifier element");
        assert_eq!(binary["meta"]["extension"], json!([{"url": ORIGINAL_ID, "valueId": "b1"}]), "{binary}");
    }

    #[test]
    fn the_original_id_is_kept_whatever_room_the_type_has_for_identifiers() {
        let clinic = clinic();
        let long = "q".repeat(62);
        let apply = |resource: Value| {
            let Value::Object(mut resource) = resource else { unreachable!() };
            clinic.apply(&mut resource, None).unwrap();
            Value::Object(resource)
        };
        // A single identifier not given: the kept one fills it, even for a digest id.
        let answers = apply(json!({"resourceType": "QuestionnaireResponse", "id": long, "status": "completed"}));
        assert!(answers["id"].as_str().unwrap().starts_with("clinic."), "{answers}");
        assert_eq!(answers["identifier"], json!({"system": "urn:braid:source:clinic", "value": long}));
        assert!(answers["meta"].get("extension").is_none(), "{answers}");
        // A single identifier of the sender's own: kept as it is, the id goes to meta.
        let bundle = apply(json!({"resourceType": "Bundle", "id": "b7", "type": "collection",
            "identifier": {"system": "http://ehr.example/bundles", "value": "7"}}));
        assert_eq!(bundle["identifier"], json!({"system": "http://ehr.example/bundles", "value": "7"}));
        assert_eq!(bundle["meta"]["extension"], json!([{"url": ORIGINAL_ID, "valueId": "b7"}]));
        // Both kept extensions live side by side; one the sender already had (it pushes what it
        // pulled from another Braid) is replaced in its place, not repeated.
        let moved = apply(json!({"resourceType": "Binary", "id": "b8", "contentType": "text/plain",
            "meta": {"source": "https://ehr.example/feed", "extension": [
                {"url": ORIGINAL_ID, "valueId": "upstream-b8"}, {"url": "http://x", "valueString": "y"}]}}));
        assert_eq!(
            moved["meta"]["extension"],
            json!([{"url": ORIGINAL_ID, "valueId": "b8"}, {"url": "http://x", "valueString": "y"},
                   {"url": ORIGINAL_META_SOURCE, "valueUri": "https://ehr.example/feed"}])
        );
        for resource in [&answers, &bundle, &moved] {
            let resource_type = crate::fhir::ResourceType::parse(resource["resourceType"].as_str().unwrap()).unwrap();
            crate::fhir::validation::validator().validate_value(resource_type, resource).unwrap();
        }
    }

    #[test]
    fn a_resource_speaks_for_the_sources_its_meta_source_and_identifiers_name() {
        let resource = json!({"resourceType": "Patient", "meta": {"source": "urn:braid:source:clinic"},
            "identifier": [{"system": "http://mrn", "value": "1"}, {"system": "urn:braid:source:lab", "value": "2"},
                           {"system": "urn:braid:source:clinic", "value": "3"}, {"value": "4"}]});
        assert_eq!(claimed_sources(&resource), ["clinic", "lab"]);
        let single = json!({"resourceType": "Bundle", "identifier": {"system": "urn:braid:source:lab", "value": "b"}});
        assert_eq!(claimed_sources(&single), ["lab"]);
        let none = json!({"resourceType": "Patient", "meta": {"source": "https://ehr.example"}, "identifier": "x"});
        assert!(claimed_sources(&none).is_empty());
    }

    #[test]
    fn malformed_ids_and_meta_are_refused() {
        let clinic = clinic();
        for bad in [
            json!({"resourceType": "Patient", "id": 42}),
            json!({"resourceType": "Patient", "id": "has space"}),
            json!({"resourceType": "Patient", "id": "1", "meta": "x"}),
            json!({"resourceType": "Patient", "id": "1", "identifier": "x"}),
        ] {
            let Value::Object(mut resource) = bad.clone() else { unreachable!() };
            assert!(clinic.apply(&mut resource, None).is_err(), "{bad}");
        }
    }
}
