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

/// A Bundle as Braid sends it. Resources are embedded as raw JSON, exactly as stored, without
/// being parsed into a tree again.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BundleOut {
    pub resource_type: &'static str,
    pub id: String,
    pub meta: BundleMeta,
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub link: Vec<Link>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
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

#[derive(serde::Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct EntryOut {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub full_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource: Option<Box<serde_json::value::RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request: Option<EntryRequest>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<EntryResponse>,
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
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        BundleOut {
            resource_type: "Bundle",
            id: uuid::Uuid::new_v4().to_string(),
            meta: BundleMeta { last_updated: crate::fhir::json::format_instant(now) },
            kind,
            total: None,
            link: Vec::new(),
            entry: Vec::new(),
        }
    }

    pub fn into_response(self) -> HttpResponse {
        HttpResponse::Ok().content_type(FHIR_JSON).body(serde_json::to_vec(&self).unwrap_or_default())
    }
}

/// Embeds stored resource bytes in a response without building a JSON tree.
pub fn raw(body: &[u8]) -> Option<Box<serde_json::value::RawValue>> {
    let text = String::from_utf8(body.to_vec()).ok()?;
    serde_json::value::RawValue::from_string(text).ok()
}

/// `"201 Created"`, as Bundle.entry.response.status wants it.
pub fn status_line(status: StatusCode) -> String {
    format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or(""))
}
