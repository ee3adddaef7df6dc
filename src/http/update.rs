//! `PUT /fhir/{type}/{id}` (update, or create with the client's id) and `PUT /fhir/{type}?...`
//! (conditional update).

use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::Value;

use super::{AppState, Ctx, request, response};
use crate::auth::Access;
use crate::auth::scope::Interaction as Permission;
use crate::fhir::{FhirError, IssueCode};
use crate::store::{Action, Target, WriteOp, WriteRequest};

pub async fn by_id(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, params, payload, access, source, .. } = ctx;
    let (type_name, id) = (params[0].clone(), params[1].clone());
    let resource_type = request::resource_type(&type_name)?;
    let id = request::id(&id)?;
    let body = request::read_body(&http, payload, &state.limits).await?;
    let value = request::resource_body(&body, resource_type, &state.limits)?;
    match value.get("id") {
        Some(Value::String(body_id)) if body_id == id.as_str() => {}
        Some(Value::String(body_id)) => {
            return Err(FhirError::incorrect(
                IssueCode::Invalid,
                format!("the body's id '{body_id}' differs from the id '{id}' in the URL"),
            )
            .at(format!("{resource_type}.id")));
        }
        _ => {
            return Err(FhirError::incorrect(
                IssueCode::Required,
                "an update must carry the resource's id in the body",
            )
            .at(format!("{resource_type}.id")));
        }
    }
    let target = Target::Id(super::source::stored_id(source.as_deref(), id));
    execute(&http, &state, &access, source.as_deref(), resource_type, target, value).await
}

pub async fn conditional(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, params, payload, access, source, .. } = ctx;
    let resource_type = request::resource_type(&params[0])?;
    let base = request::base_url(&http, &state);
    let criteria = super::access::criteria(&access, resource_type, &request::criteria_query(&http), &base)?;
    let body = request::read_body(&http, payload, &state.limits).await?;
    let value = request::resource_body(&body, resource_type, &state.limits)?;
    execute(&http, &state, &access, source.as_deref(), resource_type, Target::Criteria(criteria), value).await
}

async fn execute(
    http: &HttpRequest,
    state: &web::Data<AppState>,
    access: &Access,
    source: Option<&crate::sources::ActiveSource>,
    resource_type: crate::fhir::ResourceType,
    target: Target,
    mut value: Value,
) -> Result<HttpResponse, FhirError> {
    let base = request::base_url(http, state);
    super::source::admit(source, resource_type, &mut value, Some(&base))?;
    super::access::check_body(access, resource_type, &value, Permission::Update, &base)?;
    super::access::check_claim(access, &value, || match &target {
        Target::Id(id) => super::access::claim_at(&state.store, resource_type, id),
        Target::Criteria(_) => Ok(Vec::new()),
    })?;
    let precondition = request::precondition(http)?;
    let conditional_references = request::conditional_references(&mut value, access, &base)?;
    let Value::Object(resource) = value else { unreachable!("resource_body returns objects") };
    let write = WriteRequest {
        ops: vec![WriteOp { full_url: None, action: Action::Update { resource_type, target, resource, precondition } }],
        conditional_references,
        local_base: Some(base.clone()),
        guard: super::access::guard(access, &base),
        ..Default::default()
    };
    let outcomes = state.store.write(super::source::namespaced(source, write)).await?;
    super::source::count(source, &outcomes);
    Ok(response::write(&outcomes[0], request::return_preference(http), &base))
}
