//! `GET /fhir/Patient/{id}/$everything`: the patient and every resource in their compartment,
//! paged without a cap.
//!
//! The compartment's types are visited in name order; within a type, the `$compartment` index
//! is scanned in key order. A page's cursor holds the type's position in that order, the index
//! position and the snapshot's logical time, so pages never repeat or skip a resource, however
//! many writes happen between them. Parameters: `_count`, `_since` (lastUpdated), `_type`
//! (restricts the types), `start`/`end` (on each type's `date` parameter, where it has one).
//! A patient that does not exist is a 404, a deleted one a 410, as for a read.

use super::{Ctx, paging, request};
use crate::fhir::{Category, FhirError, Id, IssueCode, ResourceType};
use crate::search::compartment::patient_compartment;
use crate::search::query::{Clause, compartment_clause, parse_clause};
use actix_web::HttpResponse;
use actix_web::web;

pub async fn handle(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, params, .. } = ctx;
    let resource_type = request::resource_type(&params[0])?;
    if resource_type.as_str() != "Patient" {
        return Err(FhirError::not_found(format!("$everything is offered on Patient, not {resource_type}")));
    }
    let patient_id = request::id(&params[1])?;
    let base = request::base_url(&http, &state);
    let mut count = state.limits.page_size;
    let mut since = None;
    let mut start = None;
    let mut end = None;
    let mut types: Option<Vec<ResourceType>> = None;
    let mut token = None;
    let mut applied: Vec<(String, String)> = Vec::new();
    for (name, value) in request::query_pairs(&http) {
        match name.as_str() {
            "_count" => count = request::page_count(&value, &state.limits)?,
            "_since" => since = Some(value.clone()),
            "start" => start = Some(value.clone()),
            "end" => end = Some(value.clone()),
            "_type" => types = Some(request::resource_types(&value)?),
            "_cursor" => {
                token = Some(value);
                continue;
            }
            "_format" | "_pretty" => continue,
            other => {
                return Err(FhirError::incorrect(
                    IssueCode::NotSupported,
                    format!(
                        "$everything does not take the parameter '{other}' (it takes _count, _since, _type, start, end)"
                    ),
                ));
            }
        }
        applied.push((name, value));
    }
    if token.is_none() {
        require_live_patient(&state.store, resource_type, &patient_id)?;
    }
    let compartment = patient_compartment();
    let types: Vec<ResourceType> = match types {
        Some(requested) => compartment.types().into_iter().filter(|t| requested.contains(t)).collect(),
        None => compartment.types(),
    };
    // The clauses per type, checked before anything runs so that bad values fail fast.
    let mut plans: Vec<(ResourceType, Vec<Clause>)> = Vec::new();
    for resource_type in types {
        let mut clauses = vec![compartment_clause(patient_id.as_str())];
        if let Some(since) = &since {
            clauses.extend(parse_clause(resource_type, "_lastUpdated", &format!("ge{since}"), &base)?);
        }
        for (bound, prefix) in [(&start, "ge"), (&end, "le")] {
            if let Some(bound) = bound {
                if crate::search::registry::registry().get(resource_type, "date").is_some() {
                    clauses.extend(parse_clause(resource_type, "date", &format!("{prefix}{bound}"), &base)?);
                }
            }
        }
        plans.push((resource_type, clauses));
    }
    let self_query = paging::query_string(&applied);
    let path = format!("Patient/{patient_id}/$everything");
    let scope = format!("everything|{path}|{self_query}");
    let self_url = if self_query.is_empty() { format!("{base}/{path}") } else { format!("{base}/{path}?{self_query}") };
    let store = state.store.clone();
    let bundle = web::block(move || {
        paging::page_across_types(&store, &plans, count, token.as_deref(), &scope, &base, &self_url)
    })
    .await
    .map_err(|_| FhirError::fault("$everything"))??;
    Ok(bundle.into_response())
}

/// `$everything` needs its patient, like a read: 404 when it never existed, 410 when deleted.
/// Checked on the first page only; later pages show the first page's snapshot, in which the
/// patient was live.
fn require_live_patient(store: &crate::store::Store, patient: ResourceType, patient_id: &Id) -> Result<(), FhirError> {
    match store.snapshot()?.current(patient, patient_id.as_str())? {
        None => Err(FhirError::not_found(format!("Patient/{patient_id} does not exist"))),
        Some(version) if version.is_deleted() => Err(FhirError::new(
            Category::Gone,
            IssueCode::Deleted,
            format!("Patient/{patient_id} was deleted (version {})", version.version),
        )),
        Some(_) => Ok(()),
    }
}
