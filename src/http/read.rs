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
use crate::store::{Snapshot, Version};

pub async fn handle(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let resource_type = request::resource_type(ctx.param(0))?;
    let id = request::id(ctx.param(1))?;
    let shaping = Shaping::from_request(&ctx.http)?;
    let snapshot = ctx.state.store.snapshot()?;
    // A resource the token may not see is answered exactly as one that does not exist.
    let missing = || FhirError::not_found(format!("{resource_type}/{id} does not exist"));
    let restricted = ctx.access.is_restricted();
    let base = || request::base_url(&ctx.http, &ctx.state);
    if let Some(golden) = golden_version(&ctx.state, &ctx.access, resource_type, id.as_str())? {
        return match golden {
            None => Err(missing()),
            Some(version) if version.is_deleted() => Err(FhirError::new(
                Category::Gone,
                IssueCode::Deleted,
                format!("{resource_type}/{id} was deleted: no source Patient is linked to it any more"),
            )),
            Some(version) => Ok(response::resource(shaping.apply(resource_type, version))),
        };
    }
    match snapshot.current(resource_type, id.as_str())? {
        None => Err(missing()),
        Some(version) if version.is_deleted() => {
            if restricted && !admits_stored(&snapshot, &ctx.access, resource_type, id.as_str(), &version, &base())? {
                return Err(missing());
            }
            Err(FhirError::new(
                Category::Gone,
                IssueCode::Deleted,
                format!("{resource_type}/{id} was deleted (version {})", version.version),
            ))
        }
        Some(version) => {
            if restricted
                && !admits_current(
                    &snapshot,
                    &ctx.access,
                    resource_type,
                    id.as_str(),
                    version.version,
                    Permission::Read,
                    &base(),
                )?
            {
                return Err(missing());
            }
            let mut version = version;
            version.body = crate::mpi::golden::presented(&ctx.state.store, resource_type, id.as_str(), version.body);
            Ok(response::resource(shaping.apply(resource_type, version)))
        }
    }
}

/// For a golden Patient's id (`Patient/golden-…`, kept by the master patient index, not the
/// store): `Some` with its current version, `None` inside when it does not exist or the token
/// may not see it (a restricted token sees the golden Patient of its own patient only). `None`
/// for every other resource.
pub(super) fn golden_version(
    state: &super::AppState,
    access: &Access,
    resource_type: ResourceType,
    id: &str,
) -> Result<Option<Option<Version>>, FhirError> {
    if resource_type != ResourceType::PATIENT || !crate::mpi::golden::is_golden(id) {
        return Ok(None);
    }
    let visible = match access {
        Access::Token(grant) if access.is_restricted() => match &grant.patient {
            // Bound to this golden Patient, or to one of its source Patients.
            Some(patient) => !access.is_other_patient(id) || state.mpi.is_person(id, patient)?,
            None => false,
        },
        _ => true,
    };
    Ok(Some(if visible { state.mpi.golden(id)? } else { None }))
}

/// Whether the token may read this stored version of `resource_type/id`, judged by its body
/// (old versions are no longer in the index); a deletion by the version it deleted, so that a
/// 410 shows only to those who could read what was deleted. A body that cannot be parsed is
/// not shown.
pub(super) fn admits_stored(
    snapshot: &Snapshot,
    access: &Access,
    resource_type: ResourceType,
    id: &str,
    version: &Version,
    base: &str,
) -> Result<bool, FhirError> {
    let admits = |version: &Version| {
        let Ok(body) = serde_json::from_slice::<serde_json::Value>(&version.body) else { return false };
        access.admits_body(&SearchIndexer, resource_type, &body, Permission::Read, base).unwrap_or(false)
    };
    if !version.is_deleted() {
        return Ok(admits(version));
    }
    let Some(previous) = version.version.checked_sub(1) else { return Ok(false) };
    Ok(snapshot.version(resource_type, id, previous)?.is_some_and(|before| admits(&before)))
}

/// Whether the token may do `interaction` on the current version `version` of
/// `resource_type/id` in `snapshot`, judged by its index entries.
pub(super) fn admits_current(
    snapshot: &Snapshot,
    access: &Access,
    resource_type: ResourceType,
    id: &str,
    version: u64,
    interaction: Permission,
    base: &str,
) -> Result<bool, FhirError> {
    access.admits_indexed(&snapshot.index(), resource_type, id, version, snapshot.t(), interaction, base)
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
