//! `GET /fhir/{type}/{id}`: the current version.
//!
//! Point reads run on the request's worker thread instead of a blocking pool: they are one
//! B-tree lookup, mostly served from the page cache, and handing them to another thread would
//! cost more than the read itself.

use actix_web::HttpResponse;

use super::{Ctx, request, response};
use crate::fhir::{Category, FhirError, IssueCode};

pub async fn handle(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let resource_type = request::resource_type(ctx.param(0))?;
    let id = request::id(ctx.param(1))?;
    let snapshot = ctx.state.store.snapshot()?;
    match snapshot.current(resource_type, id.as_str())? {
        None => Err(FhirError::not_found(format!("{resource_type}/{id} does not exist"))),
        Some(version) if version.is_deleted() => Err(FhirError::new(
            Category::Gone,
            IssueCode::Deleted,
            format!("{resource_type}/{id} was deleted (version {})", version.version),
        )),
        Some(version) => Ok(response::resource(version)),
    }
}
