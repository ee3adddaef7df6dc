//! `GET /fhir/Patient/{id}/$everything`: the patient and every resource in their compartment,
//! paged without a cap.
//!
//! The compartment's types are visited in name order; within a type, the `$compartment` index
//! is scanned in key order. A page's cursor holds the type's position in that order, the index
//! position and the snapshot's logical time, so pages never repeat or skip a resource, however
//! many writes happen between them. Parameters: `_count`, `_since` (lastUpdated), `_type`
//! (restricts the types), `start`/`end` (on each type's `date` parameter, where it has one).
//! A patient that does not exist is a 404, a deleted one a 410, as for a read.
//!
//! Each page also carries (as `include` entries) the resources its matches reference that are
//! not listed as matches themselves: practitioners, organizations, medications, locations and
//! the like, as the specification's "any resource referenced from there" asks. They are read
//! as of the page's logical time and de-duplicated within the page; a page includes only what
//! its own entries reference (and at most [`MAX_REFERENCED`] of them), so the work per page
//! stays proportional to the page.

use std::collections::HashSet;

use super::response::{BundleOut, EntryOut, SearchMode, StoredJson};
use super::{Ctx, paging, request};
use crate::auth::Access;
use crate::auth::restrict::Restriction;
use crate::auth::scope::Interaction as Permission;
use crate::fhir::reference::{self, Target};
use crate::fhir::{Category, FhirError, Id, IssueCode, ResourceType};
use crate::search::compartment::COMPARTMENT_KEY;
use crate::search::compartment::patient_compartment;
use crate::search::query::{Clause, compartment_clause, parse_clause};
use crate::store::{IndexView, Store};
use actix_web::HttpResponse;

pub async fn handle(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, params, access, .. } = ctx;
    let resource_type = request::resource_type(&params[0])?;
    if resource_type.as_str() != "Patient" {
        return Err(FhirError::not_found(format!("$everything is offered on Patient, not {resource_type}")));
    }
    let patient_id = request::id(&params[1])?;
    let base = request::base_url(&http, &state);
    // The patient must be one the token may read; another is answered as missing.
    if access.is_restricted() {
        let snapshot = state.store.snapshot()?;
        let admitted = match snapshot.current(resource_type, patient_id.as_str())? {
            Some(version) if !version.is_deleted() => super::read::admits_current(
                &snapshot,
                &access,
                resource_type,
                patient_id.as_str(),
                version.version,
                Permission::Read,
                &base,
            )?,
            _ => !access.is_other_patient(patient_id.as_str()),
        };
        if !admitted {
            return Err(FhirError::not_found(format!("Patient/{patient_id} does not exist")));
        }
    }
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
    let golden = crate::mpi::golden::is_golden(patient_id.as_str());
    if token.is_none() && !golden {
        require_live_patient(&state.store, resource_type, &patient_id)?;
    }
    // A golden Patient is the index's: it must be there (and, merged, stands for another).
    let golden_patient = match golden {
        true => match state.mpi.golden(patient_id.as_str())? {
            Some(version) if !version.is_deleted() => Some(version),
            Some(_) => {
                return Err(FhirError::new(
                    Category::Gone,
                    IssueCode::Deleted,
                    format!("Patient/{patient_id} was deleted: no source Patient is linked to it any more"),
                ));
            }
            None => return Err(FhirError::not_found(format!("Patient/{patient_id} does not exist"))),
        },
        false => None,
    };
    let compartment = patient_compartment();
    let requested = types.clone();
    let types: Vec<ResourceType> = match types {
        Some(requested) => compartment.types().into_iter().filter(|t| requested.contains(t)).collect(),
        None => compartment.types(),
    };
    // The clauses per type, checked before anything runs so that bad values fail fast.
    let mut plans: Vec<(ResourceType, Vec<Clause>)> = Vec::new();
    for resource_type in types {
        // Each type as far as the token may search it; the others are left out.
        let Restriction::Allow(limits) = access.restriction(resource_type, Permission::Search, &base)? else {
            continue;
        };
        let mut clauses = vec![compartment_clause(patient_id.as_str())];
        clauses.extend(limits);
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
    let request_base = base.clone();
    let path = format!("Patient/{patient_id}/$everything");
    let mut restriction = access.fingerprint();
    // A golden Patient's: every linked source Patient's compartment, shown as one record.
    let unified = paging::unify(&state.store, &mut plans, &mut restriction)?;
    let first_page = token.is_none();
    let request = paging::CrossTypeRequest {
        plans,
        count,
        token,
        kind: "everything",
        path,
        applied,
        base: base.clone(),
        restriction,
        unified,
    };
    let planned = request.plans.iter().map(|(t, _)| *t).collect();
    let wants_patients = requested.as_ref().is_none_or(|types| types.contains(&ResourceType::PATIENT));
    let mut bundle =
        paging::run_across_types(state.store.clone(), state.limits.search_budget, request, move |store, bundle, t| {
            let members = Members { patient_id: patient_id.as_str(), planned, access: &access };
            add_referenced(store, bundle, t, &members, requested.as_deref(), &base)
        })
        .await?;
    // The golden Patient itself heads the first page (its source Patients are in their
    // compartments).
    if let Some(golden) = golden_patient.filter(|_| first_page && wants_patients) {
        let full_url = format!("{}/Patient/{}", request_base, golden.id);
        bundle.entry.insert(
            0,
            super::response::EntryOut {
                full_url: Some(full_url),
                resource: Some(StoredJson::new(golden.body)),
                search: Some(SearchMode::Match),
                ..Default::default()
            },
        );
    }
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

/// Most referenced resources one page includes.
pub const MAX_REFERENCED: usize = 1000;

/// What a page lists as matches anyway: resources of the planned types in the patient's
/// compartment.
struct Members<'a> {
    patient_id: &'a str,
    planned: Vec<ResourceType>,
    /// Referenced resources the searcher may not read are left out.
    access: &'a Access,
}

/// Adds to `bundle` the resources its matches reference, as of logical time `t`, except those
/// already on the page, those listed as matches on some page, deleted ones and, when the
/// client restricted `_type`, those of other types.
fn add_referenced(
    store: &Store,
    bundle: &mut BundleOut,
    t: u64,
    members: &Members<'_>,
    requested: Option<&[ResourceType]>,
    base: &str,
) -> Result<(), FhirError> {
    let snapshot = store.snapshot()?;
    let index = snapshot.index();
    let view: &dyn IndexView = &index;
    let absolute_prefix = format!("{base}/");
    let mut seen: HashSet<(ResourceType, String)> = HashSet::new();
    let mut references: Vec<(ResourceType, String)> = Vec::new();
    for entry in &bundle.entry {
        let Some(resource) = &entry.resource else { continue };
        // A streaming scan: building each entry's document would cost more than the page.
        let Ok(text) = std::str::from_utf8(resource.as_bytes()) else { continue };
        let Ok(scan) = reference::scan_references(text) else { continue };
        if let (Some(own_type), Some(id)) = (scan.resource_type.as_deref().and_then(ResourceType::parse), scan.id) {
            seen.insert((own_type, id));
        }
        for text in &scan.references {
            let local = text.strip_prefix(absolute_prefix.as_str()).unwrap_or(text);
            if let Target::Local { resource_type, id, .. } = reference::parse(local) {
                references.push((resource_type, id.as_str().to_owned()));
            }
        }
    }
    let member_value = format!("Patient/{}", members.patient_id).into_bytes();
    let mut included = Vec::new();
    for (resource_type, id) in references {
        if included.len() == MAX_REFERENCED {
            break;
        }
        if requested.is_some_and(|types| !types.contains(&resource_type)) || !seen.insert((resource_type, id.clone())) {
            continue;
        }
        let Some(version) = snapshot.version_at(resource_type, &id, t)? else { continue };
        if !members.access.admits_indexed(view, resource_type, &id, version.version, t, Permission::Read, base)? {
            continue;
        }
        if members.planned.contains(&resource_type)
            && view.probe(resource_type, &id, version.version, COMPARTMENT_KEY)?.contains(&member_value)
        {
            continue;
        }
        included.push(EntryOut {
            full_url: Some(format!("{base}/{resource_type}/{id}")),
            resource: Some(StoredJson::new(crate::mpi::golden::presented(store, resource_type, &id, version.body))),
            search: Some(SearchMode::Include),
            ..Default::default()
        });
    }
    bundle.entry.extend(included);
    Ok(())
}
