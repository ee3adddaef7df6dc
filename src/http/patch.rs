//! `PATCH /fhir/{type}/{id}` and conditional `PATCH /fhir/{type}?criteria`.
//!
//! The body is a JSON Patch (`application/json-patch+json`, RFC 6902) or a FHIRPath Patch (a
//! Parameters resource in `application/fhir+json`). The patch is applied to the current
//! version, the result is validated like any update (schema and profiles) and must keep its
//! `resourceType` and `id`. It is written with the patched version as the write's `If-Match`,
//! so a write that lands in between is never overwritten: the patch is then re-applied to the
//! newer version (a few times at most) unless the client itself sent `If-Match`, which gets 412.
//! The answer is that of an update: 200 with the resource (as `Prefer` asks), ETag and Location.

use actix_web::http::header::{CONTENT_TYPE, LOCATION};
use actix_web::{HttpResponse, web};
use serde_json::Value;

use super::{AppState, Ctx, request, response};
use crate::fhir::json::{parse_json, resource_type_of};
use crate::fhir::validation::validator;
use crate::fhir::{Category, FhirError, Id, IssueCode, ResourceType};
use crate::search::parse_criteria;
use crate::store::{Action, IndexView, Precondition, Target, WriteOp, WriteRequest};

/// How often a patch is re-applied when concurrent writes keep replacing the version it was
/// applied to. Each attempt is one read, one patch and one write.
const MAX_ATTEMPTS: usize = 10;

/// The two patch formats.
enum Patch {
    Json(Value),
    FhirPath(Value),
}

pub async fn by_id(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, params, payload } = ctx;
    let resource_type = request::resource_type(&params[0])?;
    let id = request::id(&params[1])?;
    let body = request::read_body(&http, payload, &state.limits).await?;
    let patch = parse_patch(&http, &body, &state)?;
    execute(&http, &state, resource_type, &id, &patch).await
}

/// `PATCH /fhir/{type}?criteria`: patches the one resource the criteria match (404 when none
/// does, 412 when several do).
pub async fn conditional(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, params, payload } = ctx;
    let resource_type = request::resource_type(&params[0])?;
    let criteria = parse_criteria(resource_type, &request::criteria_query(&http))?;
    let body = request::read_body(&http, payload, &state.limits).await?;
    let patch = parse_patch(&http, &body, &state)?;
    let mut matches = {
        let snapshot = state.store.snapshot()?;
        let index = snapshot.index();
        let view: &dyn IndexView = &index;
        (criteria.find)(view, resource_type)?
    };
    let id = match matches.len() {
        0 => return Err(FhirError::not_found(format!("no {resource_type} matches '{}'", criteria.text))),
        1 => matches.remove(0),
        n => {
            return Err(FhirError::precondition_failed(
                IssueCode::MultipleMatches,
                format!(
                    "{n} resources of type {resource_type} match '{}'; a conditional patch needs exactly one",
                    criteria.text
                ),
            ));
        }
    };
    execute(&http, &state, resource_type, &id, &patch).await
}

fn parse_patch(http: &actix_web::HttpRequest, body: &[u8], state: &AppState) -> Result<Patch, FhirError> {
    let media = http
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    let value = parse_json(body, state.limits.max_json_depth)?;
    match (media.as_deref(), &value) {
        (Some("application/json-patch+json"), _) | (_, Value::Array(_)) => Ok(Patch::Json(value)),
        (_, Value::Object(_)) if resource_type_of(&value)?.as_str() == "Parameters" => Ok(Patch::FhirPath(value)),
        _ => Err(FhirError::incorrect(
            IssueCode::Invalid,
            "a PATCH body is a JSON Patch (application/json-patch+json) or a FHIRPath Patch Parameters resource",
        )),
    }
}

async fn execute(
    http: &actix_web::HttpRequest,
    state: &web::Data<AppState>,
    resource_type: ResourceType,
    id: &Id,
    patch: &Patch,
) -> Result<HttpResponse, FhirError> {
    let client = request::precondition(http)?;
    if client.if_none_match_any {
        return Err(FhirError::incorrect(IssueCode::NotSupported, "If-None-Match: * does not apply to a patch"));
    }
    for _ in 0..MAX_ATTEMPTS {
        let snapshot = state.store.snapshot()?;
        let current = match snapshot.current(resource_type, id.as_str())? {
            None => return Err(FhirError::not_found(format!("{resource_type}/{id} does not exist"))),
            Some(version) if version.is_deleted() => {
                return Err(FhirError::new(
                    Category::Gone,
                    IssueCode::Deleted,
                    format!("{resource_type}/{id} was deleted (version {})", version.version),
                ));
            }
            Some(version) => version,
        };
        drop(snapshot);
        if let Some(expected) = client.if_match {
            if expected != current.version {
                return Err(FhirError::precondition_failed(
                    IssueCode::Conflict,
                    format!("{resource_type}/{id} is at version {}, not {expected} (If-Match)", current.version),
                ));
            }
        }
        let mut value: Value = serde_json::from_slice(&current.body)
            .map_err(|_| FhirError::fault("patch: a stored resource is not JSON"))?;
        match patch {
            Patch::Json(document) => crate::fhir::json_patch::apply(&mut value, document, resource_type.as_str())?,
            Patch::FhirPath(parameters) => crate::search::fhirpath_patch::apply(&mut value, parameters)?,
        }
        keeps_identity(&value, resource_type, id)?;
        validator().validate_value(resource_type, &value)?;
        let conditional_references = request::conditional_references(&mut value)?;
        let Value::Object(resource) = value else { unreachable!("keeps_identity checked for an object") };
        let precondition = Precondition { if_match: Some(current.version), if_none_match_any: false };
        let write = WriteRequest {
            ops: vec![WriteOp {
                full_url: None,
                action: Action::Update { resource_type, target: Target::Id(id.clone()), resource, precondition },
            }],
            conditional_references,
        };
        match state.store.write(write).await {
            Ok(outcomes) => {
                let outcome = &outcomes[0];
                let base = request::base_url(http, state);
                let mut response = response::write(outcome, request::return_preference(http), &base);
                if let Some(version) = outcome.version {
                    let location = response::location(&base, resource_type, id.as_str(), version);
                    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&location) {
                        response.headers_mut().insert(LOCATION, value);
                    }
                }
                return Ok(response);
            }
            // Someone wrote in between: apply the patch again to their version, unless the
            // client pinned the version it patched.
            Err(error) if error.category == Category::PreconditionFailed && client.if_match.is_none() => continue,
            Err(error) => return Err(error),
        }
    }
    Err(FhirError::conflict(format!(
        "{resource_type}/{id} changed {MAX_ATTEMPTS} times while the patch was being applied; retry later"
    )))
}

/// A patch may not change what the resource is: its `resourceType` and `id` stay.
fn keeps_identity(value: &Value, resource_type: ResourceType, id: &Id) -> Result<(), FhirError> {
    if value.get("resourceType").and_then(Value::as_str) != Some(resource_type.as_str()) {
        return Err(FhirError::incorrect(IssueCode::Invalid, "a patch cannot change or remove the resourceType")
            .at(format!("{resource_type}.resourceType")));
    }
    if value.get("id").and_then(Value::as_str) != Some(id.as_str()) {
        return Err(FhirError::incorrect(
            IssueCode::Invalid,
            format!("a patch cannot change or remove the id of {resource_type}/{id}"),
        )
        .at(format!("{resource_type}.id")));
    }
    Ok(())
}
