//! `POST /fhir/{type}`: create with a server-assigned id; with `If-None-Exist`, a conditional
//! create that returns the existing resource when exactly one matches.

use actix_web::HttpResponse;
use serde_json::Value;

use super::{Ctx, request, response};
use crate::auth::scope::Interaction as Permission;
use crate::fhir::{FhirError, IssueCode};
use crate::store::{Action, WriteOp, WriteRequest};

pub async fn handle(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, params, payload, access, source, .. } = ctx;
    let resource_type = request::resource_type(&params[0])?;
    let base = request::base_url(&http, &state);
    let if_none_exist = match http.headers().get("if-none-exist") {
        None => None,
        Some(header) => {
            let text = header
                .to_str()
                .map_err(|_| FhirError::incorrect(IssueCode::Invalid, "If-None-Exist is not valid text"))?;
            let query = strip_query_prefix(text, resource_type.as_str());
            Some(super::access::criteria(&access, resource_type, query, &base)?)
        }
    };
    let body = request::read_body(&http, payload, &state.limits).await?;
    let mut value = request::resource_body(&body, resource_type, &state.limits)?;
    super::source::admit(source.as_deref(), resource_type, &mut value, Some(&base))?;
    super::access::check_body(&access, resource_type, &value, Permission::Create, &base)?;
    super::access::check_claim(&access, &value, || Ok(Vec::new()))?;
    let conditional_references = request::conditional_references(&mut value, &access, &base)?;
    let Value::Object(resource) = value else { unreachable!("resource_body returns objects") };
    let write = WriteRequest {
        ops: vec![WriteOp { full_url: None, action: Action::Create { resource_type, resource, if_none_exist } }],
        conditional_references,
        local_base: Some(base.clone()),
        guard: super::access::guard(&access, &base),
        ..Default::default()
    };
    let outcomes = state.store.write(super::source::namespaced(source.as_deref(), write)).await?;
    super::source::count(source.as_deref(), &outcomes);
    Ok(response::write(&outcomes[0], request::return_preference(&http), &base))
}

/// `If-None-Exist` holds a query, sometimes written with a leading `?` or `Type?`.
pub fn strip_query_prefix<'a>(text: &'a str, type_name: &str) -> &'a str {
    let text = text.trim();
    let text = text.strip_prefix(type_name).and_then(|rest| rest.strip_prefix('?')).unwrap_or(text);
    text.strip_prefix('?').unwrap_or(text)
}
