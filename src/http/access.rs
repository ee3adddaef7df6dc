//! What the write interactions need from the caller's access: conditional criteria that match
//! only what the token may see, a check of the body about to be written, and the guard the
//! writer applies to the existing resources a request changes (see [`crate::auth::restrict`]).

use serde_json::Value;

use crate::auth::Access;
use crate::auth::restrict::Restriction;
use crate::auth::scope::Interaction as Permission;
use crate::fhir::{Category, FhirError, Id, IssueCode, ResourceType};
use crate::search::query::Clause;
use crate::search::{SearchIndexer, parse_criteria_within};
use crate::store::{Change, Criteria, LATEST, Store, WriteGuard};

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
    if !access.is_restricted() || access.admits_body(&SearchIndexer, resource_type, body, interaction, base)? {
        Ok(())
    } else {
        Err(forbidden(format!("this {resource_type} lies outside what the access token may write")))
    }
}

/// Refuses a body that speaks for a source (`urn:braid:source:NAME` as its `meta.source`, or
/// as the system of an identifier, the one that keeps a source's own id) that the version it
/// replaces did not speak for, written with a restricted token (a patient's app, granular
/// scopes, another source) that is not that source's. A source's records are told apart by
/// `meta.source` (its writes' guard, the unified record, reminders) and found by their kept ids,
/// so such a token must not pass what it writes off as a source's; editing a record that
/// already is a source's keeps what it says and is allowed. `replaced` gives the sources the
/// replaced version speaks for: asked only when the body speaks for another source than the
/// token's own (a create replaces nothing; criteria are matched only in the writer, so a
/// conditional write counts as replacing nothing). Unrestricted writers keep what they send, as
/// before sources existed (an operator restoring an export); so do pulls, which copy what the
/// upstream has (another Braid's records keep its sources' names).
pub fn check_claim(
    access: &Access,
    body: &Value,
    replaced: impl FnOnce() -> Result<Vec<String>, FhirError>,
) -> Result<(), FhirError> {
    if !access.is_restricted() {
        return Ok(());
    }
    let own = source_name(access);
    let mut claimed = crate::sources::namespace::claimed_sources(body).into_iter().filter(|name| Some(*name) != own);
    let Some(first) = claimed.next() else { return Ok(()) };
    let replaced = replaced()?;
    match std::iter::once(first).chain(claimed).find(|name| !replaced.iter().any(|kept| kept == name)) {
        None => Ok(()),
        Some(name) => Err(forbidden(format!(
            "this token may not write records that speak for the source '{name}' (its meta.source, or an \
             identifier of its system {})",
            crate::sources::namespace::source_uri(name)
        ))),
    }
}

/// The sources the live version of `resource_type/id` speaks for (see [`check_claim`]): none
/// when there is no such version.
pub fn claim_at(store: &Store, resource_type: ResourceType, id: &Id) -> Result<Vec<String>, FhirError> {
    match store.snapshot()?.current(resource_type, id.as_str())? {
        Some(version) if !version.is_deleted() => Ok(claims_of_stored(&version.body)),
        _ => Ok(Vec::new()),
    }
}

/// The sources a stored body speaks for.
fn claims_of_stored(body: &[u8]) -> Vec<String> {
    let Ok(value) = serde_json::from_slice::<Value>(body) else { return Vec::new() };
    crate::sources::namespace::claimed_sources(&value).into_iter().map(str::to_owned).collect()
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
