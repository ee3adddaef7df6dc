//! `DELETE /fhir/{type}/{id}` and `DELETE /fhir/{type}?...` (conditional delete; every match is
//! deleted, up to the store's `conditional_delete_max`, beyond which nothing is and the answer is
//! 412). A deletion writes a tombstone version; deleting what is already gone is a no-op.

use actix_web::{HttpRequest, HttpResponse, web};

use super::{AppState, Ctx, request, response};
use crate::auth::Access;
use crate::fhir::FhirError;
use crate::store::{Action, Target, WriteRequest};

pub async fn by_id(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, params, access, source, .. } = ctx;
    let (type_name, id) = (params[0].clone(), params[1].clone());
    let resource_type = request::resource_type(&type_name)?;
    let id = super::source::stored_id(source.as_deref(), request::id(&id)?);
    execute(
        &http,
        &state,
        &access,
        source.as_deref(),
        Action::Delete { resource_type, target: Target::Id(id), precondition: request::precondition(&http)? },
    )
    .await
}

pub async fn conditional(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, params, access, source, .. } = ctx;
    let resource_type = request::resource_type(&params[0])?;
    let base = request::base_url(&http, &state);
    let criteria = super::access::criteria(&access, resource_type, &request::criteria_query(&http), &base)?;
    let action = Action::Delete {
        resource_type,
        target: Target::Criteria(criteria),
        precondition: request::precondition(&http)?,
    };
    execute(&http, &state, &access, source.as_deref(), action).await
}

async fn execute(
    http: &HttpRequest,
    state: &web::Data<AppState>,
    access: &Access,
    source: Option<&crate::sources::ActiveSource>,
    action: Action,
) -> Result<HttpResponse, FhirError> {
    let base = request::base_url(http, state);
    let write = WriteRequest { guard: super::access::guard(access, &base), ..WriteRequest::single(action) };
    let outcomes = state.store.write(super::source::namespaced(source, write)).await?;
    super::source::count(source, &outcomes);
    Ok(response::write(&outcomes[0], request::return_preference(http), &base))
}
