//! What the write interactions do for a request made by a source's token (see
//! [`crate::sources`]): validate under the source's quality policy, move the resource and the
//! ids the URL names into the source's namespace, have the writer assign namespaced ids and
//! record the push's Provenance, and count what happened. Without a source, each step is what
//! the interactions did before sources existed.

use std::sync::Arc;

use serde_json::Value;

use super::AppState;
use crate::auth::Access;
use crate::fhir::validation::validator;
use crate::fhir::{Category, FhirError, Id, IssueCode, ResourceType};
use crate::sources::{ActiveSource, provenance, quality};
use crate::store::{OpOutcome, WriteRequest};

/// The source the request's token writes as; `None` for every other caller. A token of a
/// source that has been removed is refused.
pub fn of(access: &Access, state: &AppState) -> Result<Option<Arc<ActiveSource>>, FhirError> {
    let Access::Token(grant) = access else { return Ok(None) };
    let Some(name) = &grant.source else { return Ok(None) };
    match state.sources.get(name) {
        Some(source) => Ok(Some(source)),
        None => Err(FhirError::new(
            Category::Forbidden,
            IssueCode::Forbidden,
            format!("the source {name} this token was issued for has been removed"),
        )),
    }
}

/// Validates `value`, a resource of `resource_type` about to be written, and for a source
/// moves it into the source's namespace. A lenient source's resource that breaks only value
/// rules is admitted with its issues kept inside it ([`quality`]); anything else invalid is
/// refused as before.
pub fn admit(source: Option<&ActiveSource>, resource_type: ResourceType, value: &mut Value) -> Result<(), FhirError> {
    if let Err(error) = validator().validate_value(resource_type, value) {
        match source {
            Some(source) if source.lenient && quality::only_value_issues(&error) => {
                let Value::Object(resource) = value else { return Err(error) };
                quality::record_issues(resource, &error.issues).map_err(|_| error)?;
                source.stored_with_issues();
            }
            _ => return Err(error),
        }
    }
    if let Some(source) = source {
        let Value::Object(resource) = value else {
            return Err(FhirError::incorrect(IssueCode::Structure, "a resource must be a JSON object"));
        };
        source.namespace.apply(resource)?;
    }
    Ok(())
}

/// The stored id of the resource a request's URL names: in the source's namespace for a
/// source, as written otherwise.
pub fn stored_id(source: Option<&ActiveSource>, id: Id) -> Id {
    match source {
        Some(source) => source.namespace.id(&id),
        None => id,
    }
}

/// `request` as a source's write: ids the writer assigns are namespaced, creates keep their
/// (namespaced) ids, and a request that changes something leaves a Provenance.
pub fn namespaced(source: Option<&ActiveSource>, mut request: WriteRequest) -> WriteRequest {
    if let Some(source) = source {
        request.id_prefix = Some(source.namespace.generated_prefix());
        request.record_changes = Some(provenance::recorder(source.name(), source.client_id.as_deref()));
    }
    request
}

/// Refuses what a source may not do: a patch addresses a stored resource by Braid's id and
/// changes it in place, where the namespace cannot be applied to what it adds.
pub fn refuse_patch(source: Option<&ActiveSource>) -> Result<(), FhirError> {
    match source {
        Some(source) => Err(FhirError::new(
            Category::MethodNotAllowed,
            IssueCode::NotSupported,
            format!(
                "the source {} writes whole resources (create, update, delete, transaction, batch); send the \
                 changed resource with PUT instead of a PATCH",
                source.name().as_str()
            ),
        )),
        None => Ok(()),
    }
}

/// Counts what a write did, for the source's figures.
pub fn count(source: Option<&ActiveSource>, outcomes: &[OpOutcome]) {
    if let Some(source) = source {
        for outcome in outcomes {
            source.wrote(outcome.kind);
        }
    }
}
