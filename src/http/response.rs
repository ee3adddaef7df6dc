//! Building FHIR responses: resource bodies with their ETag and Last-Modified, write outcomes
//! shaped by `Prefer`, and Bundles.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{ETAG, LAST_MODIFIED, LOCATION};
use serde_json::Value;

use super::request::Return;
use crate::fhir::error::operation_outcome;
use crate::fhir::json::format_http_date;
use crate::fhir::{Issue, ResourceType};
use crate::store::{OpOutcome, OutcomeKind, Version};

pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

pub fn etag(version: u64) -> String {
    format!("W/\"{version}\"")
}

/// 200 with a stored version's bytes, exactly as stored.
pub fn resource(version: Version) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(FHIR_JSON)
        .insert_header((ETAG, etag(version.version)))
        .insert_header((LAST_MODIFIED, format_http_date(version.header.last_updated_micros)))
        .body(version.body)
}

pub fn json(status: StatusCode, value: &Value) -> HttpResponse {
    HttpResponse::build(status).content_type(FHIR_JSON).body(serde_json::to_vec(value).unwrap_or_default())
}

/// The HTTP status of a write outcome.
pub fn status_of(outcome: &OpOutcome) -> StatusCode {
    match outcome.kind {
        OutcomeKind::Created => StatusCode::CREATED,
        OutcomeKind::Updated | OutcomeKind::Unchanged => StatusCode::OK,
        OutcomeKind::Deleted { .. } | OutcomeKind::NothingToDelete => StatusCode::NO_CONTENT,
    }
}

/// `Patient/123/_history/2` below `base`.
pub fn location(base: &str, resource_type: ResourceType, id: &str, version: u64) -> String {
    format!("{base}/{resource_type}/{id}/_history/{version}")
}

/// A human-readable sentence describing a write outcome.
pub fn describe(outcome: &OpOutcome) -> String {
    let target = match &outcome.id {
        Some(id) => format!("{}/{id}", outcome.resource_type),
        None => outcome.resource_type.to_string(),
    };
    let version = outcome.version.map(|v| format!(" (version {v})")).unwrap_or_default();
    match outcome.kind {
        OutcomeKind::Created => format!("created {target}{version}"),
        OutcomeKind::Updated => format!("updated {target}{version}"),
        OutcomeKind::Unchanged => format!("{target}{version} already has this content; nothing was changed"),
        OutcomeKind::Deleted { count: 1 } => format!("deleted {target}{version}"),
        OutcomeKind::Deleted { count } => format!("deleted {count} resources of type {}", outcome.resource_type),
        OutcomeKind::NothingToDelete => format!("nothing to delete at {target}"),
    }
}

/// The response to a create, update or delete.
pub fn write(outcome: &OpOutcome, prefer: Return, base: &str) -> HttpResponse {
    let mut status = status_of(outcome);
    if prefer == Return::OperationOutcome && status == StatusCode::NO_CONTENT {
        status = StatusCode::OK;
    }
    let mut response = HttpResponse::build(status);
    if let Some(version) = outcome.version {
        response.insert_header((ETAG, etag(version)));
    }
    if let Some(micros) = outcome.last_updated_micros {
        response.insert_header((LAST_MODIFIED, format_http_date(micros)));
    }
    if let (Some(id), Some(version)) = (&outcome.id, outcome.version) {
        if outcome.kind == OutcomeKind::Created {
            response.insert_header((LOCATION, location(base, outcome.resource_type, id.as_str(), version)));
        }
    }
    match (prefer, &outcome.body) {
        (Return::Representation, Some(body)) => response.content_type(FHIR_JSON).body(body.as_ref().clone()),
        (Return::OperationOutcome, _) => {
            let outcome = operation_outcome(&[Issue::information(describe(outcome))]);
            response.content_type(FHIR_JSON).body(serde_json::to_vec(&outcome).unwrap_or_default())
        }
        _ => response.finish(),
    }
}

/// A Bundle as Braid sends it. Stored resources are spliced into the bundle's bytes verbatim
/// (see [`BundleOut::to_bytes`]): a page costs the copying of its bodies, not their parsing.
pub struct BundleOut {
    pub id: String,
    pub meta: BundleMeta,
    pub kind: &'static str,
    pub total: Option<u64>,
    pub link: Vec<Link>,
    pub entry: Vec<EntryOut>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleMeta {
    pub last_updated: String,
}

#[derive(serde::Serialize)]
pub struct Link {
    pub relation: &'static str,
    pub url: String,
}

/// One entry; its fields are written in this order, absent ones omitted.
#[derive(Default)]
pub struct EntryOut {
    pub full_url: Option<String>,
    pub resource: Option<StoredJson>,
    pub search: Option<SearchMode>,
    pub request: Option<EntryRequest>,
    pub response: Option<EntryResponse>,
}

/// A complete JSON document embedded in a Bundle as it is: a stored resource, as Braid wrote
/// it (so valid JSON by construction), or a resource Braid has just serialised itself.
///
/// Invariant: the bytes are one JSON value. They are never parsed again on the way out.
pub struct StoredJson(Vec<u8>);

impl StoredJson {
    /// Bytes that are one JSON value: stored bodies, or the output of `serde_json`.
    pub fn new(bytes: Vec<u8>) -> Self {
        StoredJson(bytes)
    }

    /// A value serialised now (an OperationOutcome, a nested Bundle).
    pub fn of(value: &Value) -> Self {
        StoredJson(serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// `Bundle.entry.search.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchMode {
    Match,
    Include,
    Outcome,
}

impl SearchMode {
    fn as_str(self) -> &'static str {
        match self {
            SearchMode::Match => "match",
            SearchMode::Include => "include",
            SearchMode::Outcome => "outcome",
        }
    }
}

#[derive(serde::Serialize)]
pub struct EntryRequest {
    pub method: &'static str,
    pub url: String,
}

#[derive(serde::Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct EntryResponse {
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_modified: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Value>,
}

impl BundleOut {
    pub fn new(kind: &'static str) -> Self {
        let now = crate::fhir::json::now_micros();
        BundleOut {
            id: uuid::Uuid::new_v4().to_string(),
            meta: BundleMeta { last_updated: crate::fhir::json::format_instant(now) },
            kind,
            total: None,
            link: Vec::new(),
            entry: Vec::new(),
        }
    }

    /// The Bundle's JSON: the envelope and each entry's small fields serialised by serde, each
    /// entry's resource copied in as it is. Members appear in the order `resourceType`, `id`,
    /// `meta`, `type`, `total`, `link`, `entry`; within an entry `fullUrl`, `resource`,
    /// `search`, `request`, `response`.
    pub fn to_bytes(&self) -> Vec<u8> {
        // The bodies dominate the size; the rest is a few hundred bytes per entry.
        let bodies: usize = self.entry.iter().filter_map(|e| e.resource.as_ref()).map(|r| r.0.len()).sum();
        let mut out = Vec::with_capacity(bodies + 256 * (self.entry.len() + 1));
        out.extend_from_slice(b"{\"resourceType\":\"Bundle\",\"id\":");
        write_json(&mut out, &self.id);
        out.extend_from_slice(b",\"meta\":");
        write_json(&mut out, &self.meta);
        out.extend_from_slice(b",\"type\":");
        write_json(&mut out, self.kind);
        if let Some(total) = self.total {
            out.extend_from_slice(b",\"total\":");
            write_json(&mut out, &total);
        }
        if !self.link.is_empty() {
            out.extend_from_slice(b",\"link\":");
            write_json(&mut out, &self.link);
        }
        if !self.entry.is_empty() {
            out.extend_from_slice(b",\"entry\":[");
            for (index, entry) in self.entry.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                entry.write(&mut out);
            }
            out.push(b']');
        }
        out.push(b'}');
        out
    }

    pub fn into_response(self) -> HttpResponse {
        HttpResponse::Ok().content_type(FHIR_JSON).body(self.to_bytes())
    }
}

impl EntryOut {
    fn write(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        let mut first = true;
        let mut member = |out: &mut Vec<u8>, name: &[u8]| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(name);
            out.extend_from_slice(b"\":");
        };
        if let Some(full_url) = &self.full_url {
            member(out, b"fullUrl");
            write_json(out, full_url);
        }
        // Empty bytes are no JSON value (a deletion's body): the entry then has no resource,
        // rather than the Bundle being invalid.
        if let Some(resource) = self.resource.as_ref().filter(|resource| !resource.0.is_empty()) {
            member(out, b"resource");
            out.extend_from_slice(&resource.0);
        }
        if let Some(mode) = self.search {
            member(out, b"search");
            out.extend_from_slice(b"{\"mode\":\"");
            out.extend_from_slice(mode.as_str().as_bytes());
            out.extend_from_slice(b"\"}");
        }
        if let Some(request) = &self.request {
            member(out, b"request");
            write_json(out, request);
        }
        if let Some(response) = &self.response {
            member(out, b"response");
            write_json(out, response);
        }
        out.push(b'}');
    }
}

/// Appends `value` as JSON. The values written here (strings, numbers, plain structs, `Value`
/// trees) cannot fail to serialise.
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// `"201 Created"`, as Bundle.entry.response.status wants it.
pub fn status_line(status: StatusCode) -> String {
    format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_bundle_splices_stored_bodies_verbatim_into_valid_json() {
        // Unusual key order, a decimal with a trailing zero, an escaped character and spacing:
        // kept byte for byte, because the body is copied, not re-serialised.
        let stored = br#"{"valueQuantity": {"value": 1.50, "unit": "mg"}, "resourceType":"Observation","id":"o\"1"}"#;
        let mut bundle = BundleOut::new("searchset");
        bundle.total = Some(2);
        bundle.link.push(Link { relation: "self", url: "http://h/fhir/Observation?code=a%7Cb".into() });
        bundle.entry.push(EntryOut {
            full_url: Some("http://h/fhir/Observation/o\"1".into()),
            resource: Some(StoredJson::new(stored.to_vec())),
            search: Some(SearchMode::Match),
            ..Default::default()
        });
        bundle.entry.push(EntryOut {
            request: Some(EntryRequest { method: "DELETE", url: "Observation/gone".into() }),
            response: Some(EntryResponse { status: "204 No Content".into(), ..Default::default() }),
            ..Default::default()
        });
        let bytes = bundle.to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(std::str::from_utf8(stored).unwrap()), "{text}");

        let parsed: Value = serde_json::from_slice(&bytes).unwrap();
        let keys: Vec<&str> = parsed.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["resourceType", "id", "meta", "type", "total", "link", "entry"]);
        assert_eq!(parsed["resourceType"], "Bundle");
        assert_eq!(parsed["id"], bundle.id.as_str());
        assert_eq!(parsed["meta"]["lastUpdated"], bundle.meta.last_updated.as_str());
        assert_eq!(parsed["type"], "searchset");
        assert_eq!(parsed["total"], 2);
        assert_eq!(parsed["link"], json!([{"relation": "self", "url": "http://h/fhir/Observation?code=a%7Cb"}]));
        let first = &parsed["entry"][0];
        let keys: Vec<&str> = first.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["fullUrl", "resource", "search"]);
        assert_eq!(first["fullUrl"], "http://h/fhir/Observation/o\"1");
        assert_eq!(first["resource"]["id"], "o\"1");
        assert_eq!(first["search"], json!({"mode": "match"}));
        assert_eq!(
            parsed["entry"][1],
            json!({"request": {"method": "DELETE", "url": "Observation/gone"}, "response": {"status": "204 No Content"}})
        );
    }

    #[test]
    fn an_empty_body_leaves_the_entry_without_a_resource() {
        let mut bundle = BundleOut::new("history");
        bundle.entry.push(EntryOut {
            full_url: Some("http://h/fhir/Patient/gone".into()),
            resource: Some(StoredJson::new(Vec::new())),
            request: Some(EntryRequest { method: "DELETE", url: "Patient/gone".into() }),
            ..Default::default()
        });
        let parsed: Value = serde_json::from_slice(&bundle.to_bytes()).expect("valid JSON");
        assert_eq!(
            parsed["entry"],
            json!([{"fullUrl": "http://h/fhir/Patient/gone", "request": {"method": "DELETE", "url": "Patient/gone"}}])
        );
    }

    #[test]
    fn an_empty_bundle_has_no_total_links_or_entries() {
        let bundle = BundleOut::new("history");
        let parsed: Value = serde_json::from_slice(&bundle.to_bytes()).unwrap();
        let keys: Vec<&str> = parsed.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["resourceType", "id", "meta", "type"]);
        assert_eq!(parsed["type"], "history");
    }
}
