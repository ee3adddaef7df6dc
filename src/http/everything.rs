//! `GET /fhir/Patient/{id}/$everything`: the patient and every resource in their compartment,
//! paged without a cap.
//!
//! The compartment's types are visited in name order; within a type, the `$compartment` index
//! is scanned in key order. A page's cursor holds the type's position in that order, the index
//! position and the snapshot's logical time, so pages never repeat or skip a resource, however
//! many writes happen between them. Parameters: `_count`, `_since` (lastUpdated), `_type`
//! (restricts the types), `start`/`end` (on each type's `date` parameter, where it has one).

use actix_web::HttpResponse;
use actix_web::web;
use serde_json::json;

use super::response::{BundleOut, EntryOut, Link, raw};
use super::{Ctx, cursor, request};
use crate::fhir::{FhirError, IssueCode, ResourceType};
use crate::search::compartment::patient_compartment;
use crate::search::engine::{self, Position};
use crate::search::query::{Clause, compartment_clause, parse_clause};
use crate::store::IndexView;

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
            "_count" => {
                count = value
                    .parse::<usize>()
                    .map_err(|_| {
                        FhirError::incorrect(IssueCode::Invalid, format!("_count must be a number, not '{value}'"))
                    })?
                    .min(state.limits.max_page_size)
            }
            "_since" => since = Some(value.clone()),
            "start" => start = Some(value.clone()),
            "end" => end = Some(value.clone()),
            "_type" => {
                types =
                    Some(value.split(',').map(|t| request::resource_type(t.trim())).collect::<Result<Vec<_>, _>>()?);
            }
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
    let self_query = applied.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("&");
    let path = format!("Patient/{patient_id}/$everything");
    let scope = format!("everything|{path}|{self_query}");
    let store = state.store.clone();
    let secret = *store.cursor_secret();
    let bundle = web::block(move || -> Result<BundleOut, FhirError> {
        let snapshot = store.snapshot()?;
        let (t, mut type_index, mut position) = match &token {
            Some(token) => {
                let payload = cursor::decode_bytes(&secret, &scope, token)?;
                decode(&payload)
                    .ok_or_else(|| FhirError::incorrect(IssueCode::Invalid, "the paging cursor is invalid"))?
            }
            None => (snapshot.t(), 0, None),
        };
        let view: &dyn IndexView = &*snapshot;
        let mut bundle = BundleOut::new("searchset");
        let self_url =
            if self_query.is_empty() { format!("{base}/{path}") } else { format!("{base}/{path}?{self_query}") };
        bundle.link.push(Link { relation: "self", url: self_url.clone() });
        let mut next = None;
        while type_index < plans.len() && bundle.entry.len() < count {
            let (resource_type, clauses) = &plans[type_index];
            let (driver, _) = engine::plan(view, *resource_type, clauses, t)?;
            let page = engine::run(
                view,
                *resource_type,
                clauses,
                driver,
                t,
                position.as_ref(),
                Some(count - bundle.entry.len()),
            )?;
            for (id, version) in &page.matches {
                let stored = snapshot
                    .version(*resource_type, id, *version)?
                    .ok_or_else(|| FhirError::fault("$everything: an indexed version is missing"))?;
                bundle.entry.push(EntryOut {
                    full_url: Some(format!("{base}/{resource_type}/{id}")),
                    resource: raw(&stored.body),
                    search: Some(json!({"mode": "match"})),
                    ..Default::default()
                });
            }
            match page.next {
                Some(resume) => {
                    next = Some((type_index, resume));
                    break;
                }
                None => {
                    type_index += 1;
                    position = None;
                    if bundle.entry.len() == count && type_index < plans.len() {
                        next = Some((type_index, Position::Type { id: String::new() }));
                    }
                }
            }
        }
        if let Some((index, resume)) = next {
            let token = cursor::encode_bytes(&secret, &scope, &encode(t, index, &resume));
            let separator = if self_query.is_empty() { "?" } else { "&" };
            bundle.link.push(Link { relation: "next", url: format!("{self_url}{separator}_cursor={token}") });
        }
        Ok(bundle)
    })
    .await
    .map_err(|_| FhirError::fault("$everything"))??;
    Ok(bundle.into_response())
}

/// `t · type index · position`; an empty type-scan position means "the start of that type".
pub(super) fn encode(t: u64, type_index: usize, position: &Position) -> Vec<u8> {
    let mut out = t.to_be_bytes().to_vec();
    out.extend_from_slice(&(type_index as u32).to_be_bytes());
    match position {
        Position::Index { alternative, key } => {
            out.push(1);
            out.extend_from_slice(&(*alternative as u32).to_be_bytes());
            out.extend_from_slice(key);
        }
        Position::Type { id } => {
            out.push(2);
            out.extend_from_slice(id.as_bytes());
        }
    }
    out
}

pub(super) fn decode(bytes: &[u8]) -> Option<(u64, usize, Option<Position>)> {
    let (t, rest) = bytes.split_first_chunk::<8>()?;
    let (type_index, rest) = rest.split_first_chunk::<4>()?;
    let (&kind, rest) = rest.split_first()?;
    let position = match kind {
        1 => {
            let (alternative, key) = rest.split_first_chunk::<4>()?;
            Some(Position::Index { alternative: u32::from_be_bytes(*alternative) as usize, key: key.to_vec() })
        }
        2 if rest.is_empty() => None,
        2 => Some(Position::Type { id: String::from_utf8(rest.to_vec()).ok()? }),
        _ => return None,
    };
    Some((u64::from_be_bytes(*t), u32::from_be_bytes(*type_index) as usize, position))
}
