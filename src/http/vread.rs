//! `GET /fhir/{type}/{id}/_history/{vid}`: one version.

use actix_web::HttpResponse;

use super::{Ctx, request, response};
use crate::fhir::{Category, FhirError, IssueCode};

pub async fn handle(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, params, access, .. } = ctx;
    let shaping = super::read::Shaping::from_request(&http)?;
    let (type_name, id, version) = (params[0].clone(), params[1].clone(), params[2].clone());
    let resource_type = request::resource_type(&type_name)?;
    let id = request::id(&id)?;
    let version = request::version_id(&version)?;
    let snapshot = state.store.snapshot()?;
    let missing = || FhirError::not_found(format!("{resource_type}/{id} has no version {version}"));
    // A golden Patient keeps its current version only.
    if let Some(golden) = super::read::golden_version(&state, &access, resource_type, id.as_str())? {
        return match golden {
            Some(current) if current.version == version && !current.is_deleted() => {
                Ok(response::resource(shaping.apply(resource_type, current)))
            }
            _ => Err(missing()),
        };
    }
    let stored = snapshot.version(resource_type, id.as_str(), version)?;
    if let Some(stored) = &stored
        && access.is_restricted()
    {
        let base = request::base_url(&http, &state);
        if !super::read::admits_stored(&snapshot, &access, resource_type, id.as_str(), stored, &base)? {
            return Err(missing());
        }
    }
    match stored {
        None => Err(missing()),
        Some(stored) if stored.is_deleted() => Err(FhirError::new(
            Category::Gone,
            IssueCode::Deleted,
            format!("version {version} of {resource_type}/{id} is its deletion"),
        )),
        // A version is shown as it was written (a source Patient's `refer` link to its golden
        // Patient is shown on its current version only: links change, versions do not).
        Some(stored) => Ok(response::resource(shaping.apply(resource_type, stored))),
    }
}
