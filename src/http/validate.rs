//! `$validate` at type level (`POST /fhir/{type}/$validate`) and instance level
//! (`POST /fhir/{type}/{id}/$validate`): checks a resource exactly as a write would, without
//! writing.
//!
//! The body is the resource itself or a Parameters resource with `resource`, `mode` and
//! `profile` parameters; `mode` and `profile` may also be URL parameters. Modes:
//! - none or `create`: the resource as a create would check it;
//! - `update`: also the body's id must be the URL's id (or, at type level, be present);
//! - `delete`: no resource; the addressed resource must exist (404/410 otherwise);
//! - `profile`: the resource against `profile`, which is then required.
//!
//! `profile` names a profile Braid knows (in `profiles/`); the resource is then checked against
//! it as if it claimed it in `meta.profile`. An unknown profile is a 400. The answer is 200
//! with an OperationOutcome: the issues found, or one informational issue when there are none.
//! Only a request that cannot be understood gets an error status.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde_json::{Value, json};

use super::{Ctx, request, response};
use crate::fhir::error::operation_outcome;
use crate::fhir::json::resource_type_of;
use crate::fhir::validation::validator;
use crate::fhir::{Category, FhirError, Id, Issue, IssueCode, ResourceType};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Create,
    Update,
    Delete,
    Profile,
}

impl Mode {
    fn parse(text: &str) -> Result<Mode, FhirError> {
        match text {
            "create" => Ok(Mode::Create),
            "update" => Ok(Mode::Update),
            "delete" => Ok(Mode::Delete),
            "profile" => Ok(Mode::Profile),
            other => Err(FhirError::incorrect(
                IssueCode::Invalid,
                format!("$validate mode must be create, update, delete or profile, not '{other}'"),
            )
            .at("mode")),
        }
    }
}

/// `POST /fhir/{type}/$validate`
pub async fn handle(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    validate(ctx, None).await
}

/// `POST /fhir/{type}/{id}/$validate`
pub async fn instance(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let id = request::id(ctx.param(1))?;
    validate(ctx, Some(id)).await
}

async fn validate(ctx: Ctx, id: Option<Id>) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, params, payload, access, .. } = ctx;
    let resource_type = request::resource_type(&params[0])?;
    // An instance the token may not read is, to it, missing.
    if let Some(id) = &id
        && access.is_restricted()
    {
        let snapshot = state.store.snapshot()?;
        if let Some(version) = snapshot.current(resource_type, id.as_str())?
            && !version.is_deleted()
            && !super::read::admits_current(
                &snapshot,
                &access,
                resource_type,
                id.as_str(),
                version.version,
                crate::auth::scope::Interaction::Read,
                &request::base_url(&http, &state),
            )?
        {
            return Err(FhirError::not_found(format!("{resource_type}/{id} does not exist")));
        }
    }
    let mut mode = None;
    let mut profile = None;
    for (name, value) in request::query_pairs(&http) {
        match name.as_str() {
            "mode" => mode = Some(Mode::parse(&value)?),
            "profile" => profile = Some(value),
            _ => {}
        }
    }
    // A delete needs no body; every other mode does (read_body's only `required` error is an
    // empty body).
    let body = match request::read_body(&http, payload, &state.limits).await {
        Ok(body) => Some(body),
        Err(error) if error.issues[0].code == IssueCode::Required && mode == Some(Mode::Delete) => None,
        Err(error) => return Err(error),
    };
    let mut resource = None;
    if let Some(body) = body {
        let value = request::json_body(&body, &state.limits)?;
        if resource_type_of(&value)?.as_str() == "Parameters" && resource_type.as_str() != "Parameters" {
            for parameter in value.get("parameter").and_then(Value::as_array).into_iter().flatten() {
                match parameter.get("name").and_then(Value::as_str) {
                    Some("resource") => resource = parameter.get("resource").cloned(),
                    Some("mode") => {
                        let code = parameter.get("valueCode").and_then(Value::as_str).unwrap_or("");
                        mode = Some(Mode::parse(code)?);
                    }
                    Some("profile") => {
                        profile = ["valueUri", "valueCanonical", "valueString"]
                            .iter()
                            .find_map(|key| parameter.get(*key).and_then(Value::as_str))
                            .map(str::to_owned);
                    }
                    _ => {}
                }
            }
        } else {
            resource = Some(value);
        }
    }

    if mode == Some(Mode::Delete) {
        let Some(id) = id else {
            return Err(FhirError::incorrect(
                IssueCode::Invalid,
                "mode=delete validates deleting one resource: POST to /{type}/{id}/$validate",
            )
            .at("mode"));
        };
        let snapshot = state.store.snapshot()?;
        return match snapshot.current(resource_type, id.as_str())? {
            None => Err(FhirError::not_found(format!("{resource_type}/{id} does not exist"))),
            Some(version) if version.is_deleted() => Err(FhirError::new(
                Category::Gone,
                IssueCode::Deleted,
                format!("{resource_type}/{id} is already deleted"),
            )),
            Some(_) => Ok(response::json(
                StatusCode::OK,
                &operation_outcome(&[Issue::information(format!("{resource_type}/{id} exists and can be deleted"))]),
            )),
        };
    }

    let mut value = resource.ok_or_else(|| {
        FhirError::incorrect(IssueCode::Required, "the Parameters resource has no 'resource' parameter")
            .at("Parameters.parameter")
    })?;
    let actual = resource_type_of(&value)?;
    if actual != resource_type {
        return Err(FhirError::incorrect(
            IssueCode::Invalid,
            format!("the body is a {actual} but the URL addresses {resource_type}"),
        ));
    }
    if mode == Some(Mode::Profile) && profile.is_none() {
        return Err(FhirError::incorrect(IssueCode::Required, "mode=profile needs a profile parameter").at("profile"));
    }
    if let Some(url) = &profile {
        claim_profile(&mut value, resource_type, url)?;
    }

    let mut issues = Vec::new();
    if mode == Some(Mode::Update) {
        let body_id = value.get("id").and_then(Value::as_str);
        match (body_id, &id) {
            (None, _) => issues.push(
                Issue::error(IssueCode::Required, "an update must carry the resource's id in the body")
                    .at(format!("{resource_type}.id")),
            ),
            (Some(body_id), Some(id)) if body_id != id.as_str() => issues.push(
                Issue::error(
                    IssueCode::Invalid,
                    format!("the body's id '{body_id}' differs from the id '{id}' in the URL"),
                )
                .at(format!("{resource_type}.id")),
            ),
            _ => {}
        }
    }
    match validator().validate_value(resource_type, &value) {
        Ok(warnings) => issues.extend(warnings),
        Err(error) => issues.extend(error.issues),
    }
    if issues.is_empty() {
        let against = profile.map(|url| format!(" against {url}")).unwrap_or_default();
        issues.push(Issue::information(format!("the {resource_type} is valid{against}")));
    }
    Ok(response::json(StatusCode::OK, &operation_outcome(&issues)))
}

/// Makes the resource claim the profile at `url`, so that the validator applies its rules as
/// errors. The profile must be one Braid knows and must constrain this resource type.
fn claim_profile(value: &mut Value, resource_type: ResourceType, url: &str) -> Result<(), FhirError> {
    let known = validator().profiles().find(url).ok_or_else(|| {
        let urls: Vec<&str> = validator().profiles().iter().map(|p| p.url.as_str()).collect();
        FhirError::incorrect(
            IssueCode::NotSupported,
            format!("the profile '{url}' is unknown to this server (it knows: {})", urls.join(", ")),
        )
        .at("profile")
    })?;
    if !known.applies_to_type(resource_type) {
        return Err(FhirError::incorrect(
            IssueCode::Invalid,
            format!("the profile '{url}' ({}) does not constrain {resource_type}", known.title),
        )
        .at("profile"));
    }
    let Some(resource) = value.as_object_mut() else { return Ok(()) };
    let meta = resource.entry("meta").or_insert_with(|| json!({}));
    if let Some(meta) = meta.as_object_mut() {
        let claims = meta.entry("profile").or_insert_with(|| json!([]));
        if let Some(claims) = claims.as_array_mut() {
            claims.push(Value::String(url.to_owned()));
        }
    }
    Ok(())
}
