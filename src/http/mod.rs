//! The FHIR REST API: one file per interaction, and the route table that both registers the
//! routes and generates the CapabilityStatement, so the two cannot disagree.

mod bundle;
mod create;
mod cursor;
mod delete;
mod error;
mod history;
mod metadata;
mod negotiate;
mod read;
mod request;
mod response;
mod update;
mod validate;
mod vread;

use actix_web::http::Method;
use actix_web::{HttpRequest, HttpResponse, web};

pub use bundle::process_bundle;
pub use request::Return;

use crate::fhir::{Category, FhirError, IssueCode, ResourceType};
use crate::store::Store;

/// Limits and defaults the handlers apply, taken from the settings.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub page_size: usize,
    pub max_page_size: usize,
}

/// What every handler can reach.
pub struct AppState {
    pub store: Store,
    pub limits: Limits,
    /// The public base URL of the FHIR API (ending in `/fhir`), if configured; otherwise each
    /// request's own scheme and host are used.
    pub base_url: Option<String>,
}

/// The FHIR interactions Braid offers, named as in the CapabilityStatement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Capabilities,
    Read,
    Vread,
    Create,
    Update,
    ConditionalUpdate,
    Delete,
    ConditionalDelete,
    HistoryInstance,
    HistoryType,
    HistorySystem,
    /// `POST /fhir` with a transaction or batch Bundle.
    TransactionOrBatch,
    Validate,
}

/// One row of the route table.
pub struct RouteSpec {
    pub interaction: Interaction,
    pub method: Method,
    /// Path below `/fhir`; `{type}` is a resource type, `{id}` an id, `{vid}` a version.
    pub path: &'static str,
    handler: fn() -> actix_web::Route,
}

/// Every route of the FHIR API. Order matters where paths overlap: literal segments
/// (`_history`, `$validate`) come before the placeholders they would also match.
pub fn routes() -> Vec<RouteSpec> {
    use Interaction::*;
    let row = |interaction, method, path, handler| RouteSpec { interaction, method, path, handler };
    vec![
        row(Capabilities, Method::GET, "/metadata", || web::get().to(metadata::capability_statement)),
        row(TransactionOrBatch, Method::POST, "", || web::post().to(bundle::handle)),
        row(TransactionOrBatch, Method::POST, "/", || web::post().to(bundle::handle)),
        row(HistorySystem, Method::GET, "/_history", || web::get().to(history::system)),
        row(HistoryType, Method::GET, "/{type}/_history", || web::get().to(history::type_level)),
        row(Validate, Method::POST, "/{type}/$validate", || web::post().to(validate::handle)),
        row(Create, Method::POST, "/{type}", || web::post().to(create::handle)),
        row(ConditionalUpdate, Method::PUT, "/{type}", || web::put().to(update::conditional)),
        row(ConditionalDelete, Method::DELETE, "/{type}", || web::delete().to(delete::conditional)),
        row(Vread, Method::GET, "/{type}/{id}/_history/{vid}", || web::get().to(vread::handle)),
        row(HistoryInstance, Method::GET, "/{type}/{id}/_history", || web::get().to(history::instance)),
        row(Read, Method::GET, "/{type}/{id}", || web::get().to(read::handle)),
        row(Update, Method::PUT, "/{type}/{id}", || web::put().to(update::by_id)),
        row(Delete, Method::DELETE, "/{type}/{id}", || web::delete().to(delete::by_id)),
    ]
}

/// Registers the `/fhir` scope on an actix app.
pub fn configure(config: &mut web::ServiceConfig) {
    let mut scope = web::scope("/fhir")
        .wrap(actix_web::middleware::from_fn(negotiate::content_negotiation))
        .default_service(web::to(unmatched));
    for route in routes() {
        scope = scope.route(route.path, (route.handler)());
    }
    config.service(scope);
}

/// Answers requests no route matched: 405 (with `Allow`) if the path exists for other methods,
/// 404 otherwise, always with an OperationOutcome.
async fn unmatched(request: HttpRequest) -> HttpResponse {
    let path = request.path().strip_prefix("/fhir").unwrap_or(request.path());
    let allowed: Vec<Method> =
        routes().into_iter().filter(|route| path_matches(route.path, path)).map(|route| route.method).collect();
    let first_segment = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let looks_like_type = first_segment.chars().next().is_some_and(|c| c.is_ascii_uppercase());
    let error = if looks_like_type && ResourceType::parse(first_segment).is_none() {
        FhirError::not_found(format!("'{first_segment}' is not a resource type this server knows"))
    } else if !allowed.is_empty() {
        let mut names: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        names.dedup();
        let error = FhirError::new(
            Category::MethodNotAllowed,
            IssueCode::NotSupported,
            format!("{} is not supported on this path; allowed: {}", request.method(), names.join(", ")),
        );
        let mut response = error::error_response(&error);
        if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&names.join(", ")) {
            response.headers_mut().insert(actix_web::http::header::ALLOW, value);
        }
        return response;
    } else {
        FhirError::not_found(format!("there is no FHIR interaction at {} {}", request.method(), request.path()))
    };
    error::error_response(&error)
}

/// Does a route pattern such as `/{type}/{id}` match a concrete path?
fn path_matches(pattern: &str, path: &str) -> bool {
    let pattern_segments: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    let path_segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    pattern_segments.len() == path_segments.len()
        && pattern_segments.iter().zip(&path_segments).all(|(p, s)| (p.starts_with('{') && !s.is_empty()) || p == s)
}
