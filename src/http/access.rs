//! What the write interactions need from the caller's access: conditional criteria that match
//! only what the token may see, a check of the body about to be written, and the guard the
//! writer applies to the existing resources a request changes (see [`crate::auth::restrict`]).

use serde_json::Value;

use crate::auth::Access;
use crate::auth::restrict::Restriction;
use crate::auth::scope::Interaction as Permission;
use crate::fhir::{Category, FhirError, IssueCode, ResourceType};
use crate::search::query::Clause;
use crate::search::{SearchIndexer, parse_criteria_within};
use crate::store::{Change, Criteria, LATEST, WriteGuard};

fn forbidden(message: String) -> FhirError {
    FhirError::new(Category::Forbidden, IssueCode::Forbidden, message)
}

/// Refuses an interaction on a type the token has no scope for (what a request's route checks
/// before it runs; bundle entries check it entry by entry).
pub fn permitted(
    access: &Access,
    resource_type: ResourceType,
    interaction: Permission,
    base: &str,
) -> Result<(), FhirError> {
    if access.permits(resource_type, interaction, base)? {
        Ok(())
    } else {
        Err(forbidden(format!("the access token's scopes do not allow {interaction:?} on {resource_type}")))
    }
}

/// The criteria of a conditional interaction on `resource_type`, matching only resources the
/// token may search, and for a source's token only the source's own records (whatever else
/// its scopes let it read): conditional matching decides what a write changes.
pub fn criteria(access: &Access, resource_type: ResourceType, query: &str, base: &str) -> Result<Criteria, FhirError> {
    match access.restriction(resource_type, Permission::Search, base)? {
        Restriction::Allow(mut limits) => {
            limits.extend(source_clause(access, resource_type)?);
            parse_criteria_within(resource_type, query, limits)
        }
        Restriction::Deny => Err(forbidden(format!(
            "conditional matching searches {resource_type}, which the access token does not allow"
        ))),
    }
}

/// Refuses a body the token may not write as `interaction` (a patient's token writing into
/// another patient's record, or outside its granular scopes).
pub fn check_body(
    access: &Access,
    resource_type: ResourceType,
    body: &Value,
    interaction: Permission,
    base: &str,
) -> Result<(), FhirError> {
    if !access.is_restricted() {
        return Ok(());
    }
    refuse_claimed_source(access, body)?;
    if access.admits_body(&SearchIndexer, resource_type, body, interaction, base)? {
        Ok(())
    } else {
        Err(forbidden(format!("this {resource_type} lies outside what the access token may write")))
    }
}

/// Refuses a body whose `meta.source` names a source other than the one the token writes as:
/// a source's records are told apart by it (its writes' guard, the unified record, reminders),
/// so a restricted token (a patient's app, granular scopes) must not pass its writes off as a
/// source's. A source's own writes carry its name (`admit` sets it); unrestricted writers keep
/// the `meta.source` they send, as before sources existed (an operator restoring an export).
fn refuse_claimed_source(access: &Access, body: &Value) -> Result<(), FhirError> {
    match crate::sources::namespace::source_of(body) {
        Some(claimed) if source_name(access) != Some(claimed) => Err(forbidden(format!(
            "meta.source names the source '{claimed}': only that source's own client writes its records"
        ))),
        _ => Ok(()),
    }
}

/// The clause a source's token's conditional writes are limited by: the resource's
/// `meta.source` names the source. `None` for every other caller.
fn source_clause(access: &Access, resource_type: ResourceType) -> Result<Option<Clause>, FhirError> {
    match source_name(access) {
        Some(name) => crate::sources::ownership_clause(name, resource_type).map(Some),
        None => Ok(None),
    }
}

/// The source a token writes as.
fn source_name(access: &Access) -> Option<&str> {
    match access {
        Access::Token(grant) => grant.source.as_deref(),
        Access::Unrestricted => None,
    }
}

/// The guard on the existing resources a request updates or deletes: a restricted token's
/// limits, and a source's own records only.
pub fn guard(access: &Access, base: &str) -> Option<WriteGuard> {
    if !access.is_restricted() && source_name(access).is_none() {
        return None;
    }
    let (access, base) = (access.clone(), base.to_owned());
    Some(WriteGuard(std::sync::Arc::new(move |view, resource_type, id, version, change| {
        if let Some(name) = source_name(&access) {
            if !crate::sources::owns_version(view, name, resource_type, id.as_str(), version)? {
                return Ok(false);
            }
        }
        let interaction = match change {
            Change::Update => Permission::Update,
            Change::Delete => Permission::Delete,
        };
        access.admits_indexed(view, resource_type, id.as_str(), version, LATEST, interaction, &base)
    })))
}
