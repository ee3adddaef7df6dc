//! Golden Patients: one per person, made by Braid from the source Patients linked to it.
//!
//! Survivorship: each demographic element of the golden Patient is taken whole from one
//! member, the first in the profile's order (`profiles/mpi.rules.json`, `survivorship`):
//! members from a trusted source first (in the listed order), then the more complete record
//! (more of the elements filled in), then the more recently updated. Identifiers are the union
//! of the members' (without Braid's own `urn:braid:` ones). The golden Patient links to every
//! member with `link.type = seealso`, and carries the tag that marks it as Braid's.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::sources::namespace::source_of;

/// The id prefix of golden Patients: ids with it are Braid's, never a client's (the store
/// refuses other writers).
pub const GOLDEN_PREFIX: &str = crate::store::MANAGED_PATIENT_PREFIX;

/// The tag every golden Patient carries.
pub const GOLDEN_TAG_SYSTEM: &str = "urn:braid:mpi";
pub const GOLDEN_TAG_CODE: &str = "golden";

/// The elements survivorship chooses, each whole from one member, by the names it can have
/// (a choice element such as `deceased[x]` has one per type: the member that has any of them
/// gives the element).
pub const ELEMENTS: [&[&str]; 8] = [
    &["name"],
    &["gender"],
    &["birthDate"],
    &["address"],
    &["telecom"],
    &["maritalStatus"],
    &["communication"],
    &["deceasedBoolean", "deceasedDateTime"],
];

/// The forms of `element` that `patient` has, with their values.
fn present<'a>(patient: &'a Value, element: &[&'static str]) -> Vec<(&'static str, &'a Value)> {
    element
        .iter()
        .filter_map(|name| patient.get(*name).filter(|value| !value.is_null()).map(|value| (*name, value)))
        .collect()
}

/// Most identifiers a golden Patient lists.
pub const MAX_IDENTIFIERS: usize = 50;

/// Whether `id` names a golden Patient.
pub fn is_golden(id: &str) -> bool {
    id.starts_with(GOLDEN_PREFIX)
}

/// A new golden Patient id.
pub fn new_id() -> String {
    format!("{GOLDEN_PREFIX}{}", uuid::Uuid::new_v4().simple())
}

/// How members are ranked for survivorship.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct Survivorship {
    /// Source names, most trusted first; members from other sources (or none) come after.
    #[serde(default)]
    pub trusted_sources: Vec<String>,
}

/// How many of the survivorship elements a record fills in.
fn completeness(patient: &Value) -> usize {
    ELEMENTS.iter().filter(|element| !present(patient, element).is_empty()).count()
}

/// The golden Patient `id` made from `members` (`(id, body)` of each source Patient with a
/// MATCH link to it).
pub fn golden_patient(id: &str, members: &[(String, Value)], survivorship: &Survivorship) -> Value {
    let mut ranked: Vec<&(String, Value)> = members.iter().collect();
    let trust = |patient: &Value| {
        source_of(patient)
            .and_then(|source| survivorship.trusted_sources.iter().position(|trusted| trusted == source))
            .unwrap_or(usize::MAX)
    };
    ranked.sort_by(|(a_id, a), (b_id, b)| {
        trust(a)
            .cmp(&trust(b))
            .then_with(|| completeness(b).cmp(&completeness(a)))
            .then_with(|| b["meta"]["lastUpdated"].as_str().cmp(&a["meta"]["lastUpdated"].as_str()))
            .then_with(|| a_id.cmp(b_id))
    });
    let mut golden = Map::new();
    golden.insert("resourceType".into(), json!("Patient"));
    golden.insert("id".into(), json!(id));
    golden.insert(
        "meta".into(),
        json!({"tag": [{"system": GOLDEN_TAG_SYSTEM, "code": GOLDEN_TAG_CODE,
        "display": "Golden record made by Braid's master patient index"}]}),
    );
    let mut identifiers: Vec<Value> = Vec::new();
    for (_, member) in &ranked {
        for identifier in member["identifier"].as_array().into_iter().flatten() {
            let braid_own = identifier["system"].as_str().is_some_and(|system| system.starts_with("urn:braid:"));
            if !braid_own && !identifiers.contains(identifier) && identifiers.len() < MAX_IDENTIFIERS {
                identifiers.push(identifier.clone());
            }
        }
    }
    if !identifiers.is_empty() {
        golden.insert("identifier".into(), Value::Array(identifiers));
    }
    golden.insert("active".into(), json!(true));
    for element in ELEMENTS {
        let chosen = ranked.iter().map(|(_, member)| present(member, element)).find(|forms| !forms.is_empty());
        for (name, value) in chosen.unwrap_or_default() {
            golden.insert(name.into(), value.clone());
        }
    }
    let mut sorted: Vec<&String> = members.iter().map(|(id, _)| id).collect();
    sorted.sort();
    let links: Vec<Value> = sorted
        .into_iter()
        .map(|member| json!({"other": {"reference": format!("Patient/{member}")}, "type": "seealso"}))
        .collect();
    if !links.is_empty() {
        golden.insert("link".into(), Value::Array(links));
    }
    Value::Object(golden)
}

/// Whether two versions of a golden Patient say the same (their version and time aside).
pub fn same_content(a: &Value, b: &Value) -> bool {
    let without_version = |value: &Value| {
        let mut value = value.clone();
        if let Some(meta) = value.get_mut("meta").and_then(Value::as_object_mut) {
            meta.remove("versionId");
            meta.remove("lastUpdated");
        }
        value
    };
    without_version(a) == without_version(b)
}

/// A golden Patient merged into `to`: kept (patients and apps may hold its id), inactive,
/// with a `replaced-by` link to the one that now stands for the person.
pub fn replaced_patient(id: &str, to: &str) -> Value {
    json!({"resourceType": "Patient", "id": id,
        "meta": {"tag": [{"system": GOLDEN_TAG_SYSTEM, "code": GOLDEN_TAG_CODE,
            "display": "Golden record made by Braid's master patient index"}]},
        "active": false,
        "link": [{"other": {"reference": format!("Patient/{to}")}, "type": "replaced-by"}]})
}

/// A stored resource as the API shows it: a source Patient with a MATCH gets a `refer` link
/// to its golden Patient (shown, not stored: the link follows the index, and the source's
/// record keeps its versions). Every other resource, and a Patient without a golden Patient,
/// is returned as it is. `id` is the resource's id; `body` its stored JSON.
pub fn presented(
    store: &crate::store::Store,
    resource_type: crate::fhir::ResourceType,
    id: &str,
    body: Vec<u8>,
) -> Vec<u8> {
    if resource_type != crate::fhir::ResourceType::PATIENT || is_golden(id) || body.is_empty() {
        return body;
    }
    let golden = store.mpi_read(|read| super::state::Overlay::new(read).golden_id_of(id));
    let golden_id = match golden {
        Ok(Some(golden_id)) => golden_id,
        Ok(None) => return body,
        Err(error) => {
            tracing::warn!(%error, "cannot read a Patient's golden Patient; shown without its refer link");
            return body;
        }
    };
    with_refer_link(body, &golden_id)
}

/// `body` (a stored Patient) with a `refer` link to `golden_id` as its last link. Stored bodies
/// are Braid's own compact JSON (`{...}`, no whitespace around it, keys never escaped). When one
/// has no `link` key anywhere (the common case: the store drops refer links to golden Patients
/// on write) the link is spliced in before the closing brace without parsing the body: the
/// bytes are the ones parsing and serializing again would give (elements keep their order, and
/// `link` goes last). Otherwise the body is parsed and its links edited.
fn with_refer_link(body: Vec<u8>, golden_id: &str) -> Vec<u8> {
    let mentions_link = body.windows(6).any(|window| window == b"\"link\"");
    // A stored Patient always has `resourceType`, so its object is never empty.
    if !mentions_link && body.len() > 2 && body.last() == Some(&b'}') {
        let reference = Value::String(format!("Patient/{golden_id}")).to_string();
        let mut spliced = Vec::with_capacity(body.len() + reference.len() + 48);
        spliced.extend_from_slice(&body[..body.len() - 1]);
        spliced.extend_from_slice(b",\"link\":[{\"other\":{\"reference\":");
        spliced.extend_from_slice(reference.as_bytes());
        spliced.extend_from_slice(b"},\"type\":\"refer\"}]}");
        return spliced;
    }
    let Ok(Value::Object(mut patient)) = serde_json::from_slice::<Value>(&body) else { return body };
    // A refer link to a golden Patient in the stored body (one a client wrote back before the
    // store dropped such links on write) is replaced, so that only the current one shows.
    crate::store::strip_managed_links(&mut patient);
    let refer = json!({"other": {"reference": format!("Patient/{golden_id}")}, "type": "refer"});
    match patient.entry("link").or_insert_with(|| Value::Array(Vec::new())) {
        Value::Array(links) => links.push(refer),
        _ => return body,
    }
    serde_json::to_vec(&patient).unwrap_or(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The refer link as parsing the body and adding it gives it.
    fn parsed_with_link(body: &[u8], golden_id: &str) -> Value {
        let mut patient: Map<String, Value> = serde_json::from_slice(body).unwrap();
        crate::store::strip_managed_links(&mut patient);
        let refer = json!({"other": {"reference": format!("Patient/{golden_id}")}, "type": "refer"});
        patient.entry("link").or_insert_with(|| json!([])).as_array_mut().unwrap().push(refer);
        Value::Object(patient)
    }

    #[test]
    fn a_refer_link_is_spliced_into_a_body_without_links_byte_for_byte() {
        for body in [
            r#"{"resourceType":"Patient","id":"p1","name":[{"family":"Chalmers"}],"birthDate":"1974-12-25"}"#,
            r#"{"resourceType":"Patient","id":"p2","extension":[{"url":"http://x","valueDecimal":1.50}]}"#,
            r#"{"resourceType":"Patient","id":"p3"}"#,
        ] {
            let expected = serde_json::to_vec(&parsed_with_link(body.as_bytes(), "golden-a1")).unwrap();
            assert_eq!(
                String::from_utf8(with_refer_link(body.as_bytes().to_vec(), "golden-a1")).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }

    #[test]
    fn existing_links_are_kept_and_a_stale_refer_link_replaced() {
        let body = json!({"resourceType": "Patient", "id": "p1", "link": [
            {"other": {"reference": "Patient/golden-old"}, "type": "refer"},
            {"other": {"reference": "Patient/p9"}, "type": "seealso"}]});
        let shown: Value =
            serde_json::from_slice(&with_refer_link(body.to_string().into_bytes(), "golden-new")).unwrap();
        assert_eq!(
            shown["link"],
            json!([{"other": {"reference": "Patient/p9"}, "type": "seealso"},
                {"other": {"reference": "Patient/golden-new"}, "type": "refer"}])
        );
        // A body with "link" elsewhere (here a string value) takes the parsing path and still
        // gets one link.
        let body = json!({"resourceType": "Patient", "id": "p1", "name": [{"text": "link"}]});
        let shown: Value =
            serde_json::from_slice(&with_refer_link(body.to_string().into_bytes(), "golden-new")).unwrap();
        assert_eq!(shown, parsed_with_link(body.to_string().as_bytes(), "golden-new"));
    }

    fn member(source: &str, updated: &str, extra: Value) -> Value {
        let mut patient = json!({"resourceType": "Patient", "meta": {"source": format!("urn:braid:source:{source}"),
            "lastUpdated": updated}, "identifier": [{"system": format!("urn:braid:source:{source}"), "value": "1"},
            {"system": format!("http://{source}/mrn"), "value": "1"}]});
        for (key, value) in extra.as_object().unwrap() {
            patient[key] = value.clone();
        }
        patient
    }

    #[test]
    fn survivorship_prefers_trusted_then_complete_then_recent() {
        let clinic = member(
            "clinic",
            "2024-05-01T00:00:00Z",
            json!({"name": [{"family": "Smyth"}], "gender": "male",
            "birthDate": "1980-01-01", "telecom": [{"system": "phone", "value": "1"}]}),
        );
        let hospital = member("hospital", "2023-01-01T00:00:00Z", json!({"name": [{"family": "Smith"}]}));
        // The newest record, listed first, but less complete than the clinic's.
        let lab = member(
            "lab",
            "2025-01-01T00:00:00Z",
            json!({"name": [{"family": "Smithe"}], "gender": "female", "birthDate": "1999-09-09"}),
        );
        let members =
            vec![("lab-1".to_owned(), lab), ("clinic-1".to_owned(), clinic), ("hospital-1".to_owned(), hospital)];
        let trusted = Survivorship { trusted_sources: vec!["hospital".into()] };
        let golden = golden_patient("golden-x", &members, &trusted);
        assert_eq!(golden["name"][0]["family"], "Smith", "the trusted source's name");
        assert_eq!(golden["birthDate"], "1980-01-01", "what the trusted source lacks comes from the next");
        assert_eq!(golden["gender"], "male", "the next is the more complete, not the newer or the first listed");
        assert_eq!(golden["telecom"][0]["value"], "1");
        let untrusted = golden_patient("golden-x", &members, &Survivorship::default());
        assert_eq!(untrusted["name"][0]["family"], "Smyth", "the most complete record first");
        assert_eq!(untrusted["meta"]["tag"][0]["code"], GOLDEN_TAG_CODE);
        let links: Vec<&str> =
            untrusted["link"].as_array().unwrap().iter().map(|l| l["other"]["reference"].as_str().unwrap()).collect();
        assert_eq!(links, ["Patient/clinic-1", "Patient/hospital-1", "Patient/lab-1"]);
        assert!(untrusted["link"].as_array().unwrap().iter().all(|link| link["type"] == "seealso"));
        let systems: Vec<&str> =
            untrusted["identifier"].as_array().unwrap().iter().map(|i| i["system"].as_str().unwrap()).collect();
        assert_eq!(systems.len(), 3, "each member's own identifier, not Braid's: {systems:?}");
        assert!(systems.iter().all(|system| !system.starts_with("urn:braid:")));
    }

    #[test]
    fn a_choice_element_comes_whole_from_one_member() {
        let first = member("a", "2024-01-01T00:00:00Z", json!({"gender": "male", "deceasedDateTime": "2024-02-01"}));
        let second = member("b", "2020-01-01T00:00:00Z", json!({"deceasedBoolean": false}));
        let golden =
            golden_patient("golden-z", &[("a-1".into(), first), ("b-1".into(), second)], &Survivorship::default());
        assert_eq!(golden["deceasedDateTime"], "2024-02-01");
        assert!(golden.get("deceasedBoolean").is_none(), "one form of deceased[x]: {golden}");
    }

    #[test]
    fn equally_complete_members_yield_to_the_most_recent() {
        let older = member("a", "2020-01-01T00:00:00Z", json!({"gender": "female"}));
        let newer = member("b", "2024-01-01T00:00:00Z", json!({"gender": "male"}));
        let golden =
            golden_patient("golden-y", &[("a-1".into(), older), ("b-1".into(), newer)], &Survivorship::default());
        assert_eq!(golden["gender"], "male");
    }
}
