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
use crate::auth::Access;
use crate::auth::scope::Interaction as Permission;
use crate::fhir::json::{parse_json, resource_type_of};
use crate::fhir::validation::validator;
use crate::fhir::{Category, FhirError, Id, IssueCode, ResourceType};
use crate::store::{
    Action, Criteria, IndexView, OpOutcome, Precondition, Snapshot, Store, Target, WriteOp, WriteRequest,
};

/// Conditional references found in a patched resource, for the writer to resolve.
pub(super) type ConditionalReferences = std::collections::HashMap<String, (ResourceType, Criteria)>;

/// How often a patch is re-applied when concurrent writes keep replacing the version it was
/// applied to. Each attempt is one read, one patch and one write.
const MAX_ATTEMPTS: usize = 10;

/// The two patch formats.
pub(super) enum Patch {
    Json(Value),
    FhirPath(Value),
}

pub async fn by_id(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, params, payload, access, source, .. } = ctx;
    super::source::refuse_patch(source.as_deref())?;
    let resource_type = request::resource_type(&params[0])?;
    let id = request::id(&params[1])?;
    let body = request::read_body(&http, payload, &state.limits).await?;
    let patch = parse_patch(&http, &body, &state)?;
    execute(&http, &state, resource_type, &id, &patch, &access).await
}

/// `PATCH /fhir/{type}?criteria`: patches the one resource the criteria match (404 when none
/// does, 412 when several do).
pub async fn conditional(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, params, payload, access, source, .. } = ctx;
    super::source::refuse_patch(source.as_deref())?;
    let resource_type = request::resource_type(&params[0])?;
    let base = request::base_url(&http, &state);
    let criteria = super::access::criteria(&access, resource_type, &request::criteria_query(&http), &base)?;
    let body = request::read_body(&http, payload, &state.limits).await?;
    let patch = parse_patch(&http, &body, &state)?;
    let mut matches = {
        let snapshot = state.store.snapshot()?;
        let index = snapshot.index();
        let view: &dyn IndexView = &index;
        (criteria.find)(view, resource_type, 2)?
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
    execute(&http, &state, resource_type, &id, &patch, &access).await
}

fn parse_patch(http: &actix_web::HttpRequest, body: &[u8], state: &AppState) -> Result<Patch, FhirError> {
    let media = http
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    let value = request::json_body(body, &state.limits)?;
    match (media.as_deref(), &value) {
        (Some("application/json-patch+json"), _) | (_, Value::Array(_)) => Ok(Patch::Json(value)),
        (_, Value::Object(_)) if resource_type_of(&value)?.as_str() == "Parameters" => Ok(Patch::FhirPath(value)),
        _ => Err(FhirError::incorrect(
            IssueCode::Invalid,
            "a PATCH body is a JSON Patch (application/json-patch+json) or a FHIRPath Patch Parameters resource",
        )),
    }
}

/// The patch carried by a bundle entry's `resource`: a Parameters resource (FHIRPath Patch) or
/// a Binary whose `contentType` is `application/json-patch+json` and whose `data` holds the
/// JSON Patch document, base64-encoded.
pub(super) fn from_entry_resource(resource: Value, max_json_depth: usize) -> Result<Patch, FhirError> {
    let not_a_patch = || {
        FhirError::incorrect(
            IssueCode::Invalid,
            "a PATCH entry's resource is a Parameters resource (FHIRPath Patch) or a Binary with \
             contentType application/json-patch+json",
        )
        .at("resource")
    };
    match resource.get("resourceType").and_then(Value::as_str) {
        Some("Parameters") => Ok(Patch::FhirPath(resource)),
        Some("Binary") => {
            let content_type = resource.get("contentType").and_then(Value::as_str).unwrap_or("");
            if content_type.split(';').next().map(str::trim) != Some("application/json-patch+json") {
                return Err(not_a_patch());
            }
            let data = resource.get("data").and_then(Value::as_str).unwrap_or("");
            let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, data).map_err(|_| {
                FhirError::incorrect(IssueCode::Invalid, "the Binary's data is not base64").at("resource.data")
            })?;
            Ok(Patch::Json(parse_json(&bytes, max_json_depth).map_err(|e| e.at("resource.data"))?))
        }
        _ => Err(not_a_patch()),
    }
}

async fn execute(
    http: &actix_web::HttpRequest,
    state: &web::Data<AppState>,
    resource_type: ResourceType,
    id: &Id,
    patch: &Patch,
    access: &Access,
) -> Result<HttpResponse, FhirError> {
    let client = request::precondition(http)?;
    if client.if_none_match_any {
        return Err(FhirError::incorrect(IssueCode::NotSupported, "If-None-Match: * does not apply to a patch"));
    }
    let base = request::base_url(http, state);
    let outcome = apply(&state.store, resource_type, id, patch, client.if_match, &base, access).await?;
    let mut response = response::write(&outcome, request::return_preference(http), &base);
    if let Some(version) = outcome.version {
        let location = response::location(&base, resource_type, id.as_str(), version);
        if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&location) {
            response.headers_mut().insert(LOCATION, value);
        }
    }
    Ok(response)
}

/// Patches `resource_type/id` and writes the result; `if_match` is the version the client
/// requires (its `If-Match`), `local_base` the base the request arrived at (references on it
/// are local). Used by the PATCH interaction and by batch entries.
pub(super) async fn apply(
    store: &Store,
    resource_type: ResourceType,
    id: &Id,
    patch: &Patch,
    if_match: Option<u64>,
    local_base: &str,
    access: &Access,
) -> Result<OpOutcome, FhirError> {
    for _ in 0..MAX_ATTEMPTS {
        let write = {
            let snapshot = store.snapshot()?;
            let (action, conditional_references) =
                patched_update(&snapshot, resource_type, id, patch, if_match, access, local_base)?;
            WriteRequest {
                ops: vec![WriteOp { full_url: None, action }],
                conditional_references,
                local_base: Some(local_base.to_owned()),
                guard: super::access::guard(access, local_base),
                ..Default::default()
            }
        };
        match store.write(write).await {
            Ok(mut outcomes) => return Ok(outcomes.remove(0)),
            // Someone wrote in between: apply the patch again to their version, unless the
            // client pinned the version it patched.
            Err(error) if error.category == Category::PreconditionFailed && if_match.is_none() => continue,
            Err(error) => return Err(error),
        }
    }
    Err(FhirError::conflict(format!(
        "{resource_type}/{id} changed {MAX_ATTEMPTS} times while the patch was being applied; retry later"
    )))
}

/// The update that writes `patch` applied to the version of `resource_type/id` current in
/// `snapshot`: validated like any update, and conditional on that version still being current
/// (so a concurrent write is never overwritten). `if_match`, if given, must be that version.
/// A resource `access` may not update is answered as missing; the patched body must lie within
/// what it may write (`base`: the server's).
pub(super) fn patched_update(
    snapshot: &Snapshot,
    resource_type: ResourceType,
    id: &Id,
    patch: &Patch,
    if_match: Option<u64>,
    access: &Access,
    base: &str,
) -> Result<(Action, ConditionalReferences), FhirError> {
    let missing = || FhirError::not_found(format!("{resource_type}/{id} does not exist"));
    let current = match snapshot.current(resource_type, id.as_str())? {
        None => return Err(missing()),
        Some(version)
            if access.is_restricted()
                && !version.is_deleted()
                && !super::read::admits_current(
                    snapshot,
                    access,
                    resource_type,
                    id.as_str(),
                    version.version,
                    Permission::Update,
                    base,
                )? =>
        {
            return Err(missing());
        }
        Some(version) if version.is_deleted() => {
            return Err(FhirError::new(
                Category::Gone,
                IssueCode::Deleted,
                format!("{resource_type}/{id} was deleted (version {})", version.version),
            ));
        }
        Some(version) => version,
    };
    if let Some(expected) = if_match {
        if expected != current.version {
            return Err(FhirError::precondition_failed(
                IssueCode::Conflict,
                format!("{resource_type}/{id} is at version {}, not {expected} (If-Match)", current.version),
            ));
        }
    }
    let mut value: Value =
        serde_json::from_slice(&current.body).map_err(|_| FhirError::fault("patch: a stored resource is not JSON"))?;
    let claimed_before: Vec<String> =
        crate::sources::namespace::claimed_sources(&value).into_iter().map(str::to_owned).collect();
    match patch {
        Patch::Json(document) => crate::fhir::json_patch::apply(&mut value, document, resource_type.as_str())?,
        Patch::FhirPath(parameters) => crate::search::fhirpath_patch::apply(&mut value, parameters)?,
    }
    keeps_identity(&value, resource_type, id)?;
    validator().validate_value(resource_type, &value)?;
    super::access::check_body(access, resource_type, &value, Permission::Update, base)?;
    super::access::check_claim(access, &value, || Ok(claimed_before))?;
    let conditional_references = request::conditional_references(&mut value, access, base)?;
    let Value::Object(resource) = value else { unreachable!("keeps_identity checked for an object") };
    let precondition = Precondition { if_match: Some(current.version), if_none_match_any: false };
    Ok((
        Action::Update { resource_type, target: Target::Id(id.clone()), resource, precondition },
        conditional_references,
    ))
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
