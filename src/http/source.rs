//! What the write interactions do for a request made by a source's token (see
//! [`crate::sources`]): find the source, then validate under its quality policy, move the
//! resource and the ids the URL names into its namespace, have the writer assign namespaced ids
//! and record the push's Provenance, and count what happened ([`admit`], [`stored_id`],
//! [`namespaced`], [`count`], shared with the puller). Without a source, each step is what the
//! interactions did before sources existed. Also the sources' figures over HTTP.

use std::sync::Arc;

use actix_web::{HttpRequest, HttpResponse, web};

use super::AppState;
use crate::auth::Access;
use crate::auth::scope::Interaction as Permission;
use crate::fhir::{Category, FhirError, IssueCode};
use crate::sources::ActiveSource;
pub use crate::sources::{admit, count, namespaced, stored_id};

/// The source the request's token writes as; `None` for every other caller. A removed
/// source's tokens are refused when they authenticate (its client is listed as removed); one
/// removed while its request was under way is refused here.
pub fn of(access: &Access, state: &AppState) -> Result<Option<Arc<ActiveSource>>, FhirError> {
    let Access::Token(grant) = access else { return Ok(None) };
    let Some(name) = &grant.source else { return Ok(None) };
    match of_grant(grant, state) {
        Some(source) => Ok(Some(source)),
        None => Err(FhirError::new(
            Category::Forbidden,
            IssueCode::Forbidden,
            format!("the source {name} this token was issued for has been removed"),
        )),
    }
}

/// The source `grant` writes as, if it is still registered with the grant's client (a source
/// removed and added again under the same name has a new client: the old one's tokens write
/// for nobody).
pub fn of_grant(grant: &crate::auth::Grant, state: &AppState) -> Option<Arc<ActiveSource>> {
    let name = grant.source.as_deref()?;
    state.sources.get(name).filter(|source| source.client_id.as_deref() == Some(grant.client_id.as_str()))
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

/// Who asks for sources' figures.
pub(super) enum Viewer {
    /// Authorization is off (Braid then listens on loopback only), or a token that reads every
    /// resource of every type: every source.
    Operator,
    /// A source's own token: that source.
    Source(String),
}

/// `GET /sources`: every source's state and figures, as `braid source list` prints them.
pub async fn list_status(http: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    match viewer(&http, &state) {
        Ok(Viewer::Operator) => match state.sources.list() {
            Ok(records) => HttpResponse::Ok().json(records.iter().map(crate::sources::describe).collect::<Vec<_>>()),
            Err(error) => {
                tracing::error!(%error, "cannot read the sources");
                super::error::error_response(&FhirError::fault("sources"))
            }
        },
        Ok(Viewer::Source(_)) => super::error::error_response(&FhirError::new(
            Category::Forbidden,
            IssueCode::Forbidden,
            "a source's token shows its own source only: GET /sources/{name}",
        )),
        Err(refusal) => *refusal,
    }
}

/// `GET /sources/{name}`: one source's state and figures, as `braid source show --json` prints
/// them: to the operator, and to the source itself.
pub async fn status(http: HttpRequest, state: web::Data<AppState>, name: web::Path<String>) -> HttpResponse {
    let name = name.into_inner();
    let allowed = match viewer(&http, &state) {
        Ok(Viewer::Operator) => true,
        Ok(Viewer::Source(own)) => own == name,
        Err(refusal) => return *refusal,
    };
    // Another source's figures are not the caller's to know, not even that it exists.
    let missing = || super::error::error_response(&FhirError::not_found(format!("there is no source {name}")));
    if !allowed {
        return missing();
    }
    match state.sources.show(&name) {
        Ok(Some(record)) => HttpResponse::Ok().json(crate::sources::describe(&record)),
        Ok(None) => missing(),
        Err(error) => {
            tracing::error!(%error, "cannot read a source");
            super::error::error_response(&FhirError::fault("sources"))
        }
    }
}

pub(super) fn viewer(http: &HttpRequest, state: &web::Data<AppState>) -> Result<Viewer, Box<HttpResponse>> {
    let Some(grant) = super::bearer_grant(http, state)? else { return Ok(Viewer::Operator) };
    // A removed source's token (its name perhaps given to a new source) views nothing.
    if let Some(source) = of_grant(&grant, state) {
        return Ok(Viewer::Source(source.name().as_str().to_owned()));
    }
    if grant.source.is_none() && grant.patient.is_none() && super::on_every_type(&grant, Permission::Read) {
        Ok(Viewer::Operator)
    } else {
        Err(Box::new(super::error::error_response(&FhirError::new(
            Category::Forbidden,
            IssueCode::Forbidden,
            "sources' figures are shown to a token that reads every resource, and to each source's own token",
        ))))
    }
}
