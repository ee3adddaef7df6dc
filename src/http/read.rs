//! `GET /fhir/{type}/{id}`: the current version.
//!
//! Point reads run on the request's worker thread instead of a blocking pool: they are one
//! B-tree lookup, mostly served from the page cache, and handing them to another thread would
//! cost more than the read itself.
//!
//! `_summary` (`true`, `text`, `data`, `false`) and `_elements` shape the returned resource as
//! they do search results (the subset is tagged SUBSETTED); without them the stored bytes are
//! returned untouched.

use actix_web::{HttpRequest, HttpResponse};

use super::{Ctx, request, response};
use crate::auth::Access;
use crate::auth::scope::Interaction as Permission;
use crate::fhir::summary::Summary;
use crate::fhir::{Category, FhirError, IssueCode, ResourceType};
use crate::search::SearchIndexer;
use crate::store::Version;

pub async fn handle(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let resource_type = request::resource_type(ctx.param(0))?;
    let id = request::id(ctx.param(1))?;
    let shaping = Shaping::from_request(&ctx.http)?;
    let snapshot = ctx.state.store.snapshot()?;
    // A resource the token may not see is answered exactly as one that does not exist.
    let missing = || FhirError::not_found(format!("{resource_type}/{id} does not exist"));
    let restricted = ctx.access.is_restricted();
    let base = || request::base_url(&ctx.http, &ctx.state);
    match snapshot.current(resource_type, id.as_str())? {
        None => Err(missing()),
        Some(version) if version.is_deleted() => {
            if restricted {
                // A deletion shows only to those who could read what was deleted.
                let before = match version.version.checked_sub(1) {
                    Some(previous) => snapshot.version(resource_type, id.as_str(), previous)?,
                    None => None,
                };
                if !before.is_some_and(|before| admits_version(&ctx.access, resource_type, &before, &base())) {
                    return Err(missing());
                }
            }
            Err(FhirError::new(
                Category::Gone,
                IssueCode::Deleted,
                format!("{resource_type}/{id} was deleted (version {})", version.version),
            ))
        }
        Some(version) => {
            if restricted
                && !ctx.access.admits_indexed(
                    &snapshot.index(),
                    resource_type,
                    id.as_str(),
                    version.version,
                    snapshot.t(),
                    Permission::Read,
                    &base(),
                )?
            {
                return Err(missing());
            }
            Ok(response::resource(shaping.apply(resource_type, version)))
        }
    }
}

/// Whether the token may read this stored version, judged by its body (old versions are no
/// longer in the index). A body that cannot be parsed is not shown.
pub(super) fn admits_version(access: &Access, resource_type: ResourceType, version: &Version, base: &str) -> bool {
    let Ok(body) = serde_json::from_slice::<serde_json::Value>(&version.body) else { return false };
    access.admits_body(&SearchIndexer, resource_type, &body, Permission::Read, base).unwrap_or(false)
}

/// What part of a resource a read asks for: `_summary` and `_elements`.
#[derive(Debug, Default)]
pub struct Shaping {
    summary: Option<Summary>,
    elements: Option<Vec<String>>,
}

impl Shaping {
    /// Reads `_summary` and `_elements` from the query; other parameters do not shape a read.
    pub fn from_request(http: &HttpRequest) -> Result<Self, FhirError> {
        let mut shaping = Shaping::default();
        for (name, value) in request::query_pairs(http) {
            match name.as_str() {
                "_summary" => {
                    shaping.summary = match value.as_str() {
                        "true" => Some(Summary::True),
                        "text" => Some(Summary::Text),
                        "data" => Some(Summary::Data),
                        "false" => None,
                        other => {
                            return Err(FhirError::incorrect(
                                IssueCode::Invalid,
                                format!("on a read, _summary must be true, text, data or false, not '{other}'"),
                            )
                            .at("_summary"));
                        }
                    }
                }
                "_elements" => {
                    shaping.elements =
                        Some(value.split(',').map(|e| e.trim().to_owned()).filter(|e| !e.is_empty()).collect());
                }
                _ => {}
            }
        }
        Ok(shaping)
    }

    /// The version with its body reduced as asked (`_elements` wins over `_summary`).
    pub fn apply(&self, resource_type: ResourceType, mut version: Version) -> Version {
        if self.summary.is_some() || self.elements.is_some() {
            version.body = super::search::shape(
                resource_type,
                std::mem::take(&mut version.body),
                self.elements.as_deref(),
                self.summary,
            );
        }
        version
    }
}
