//! `GET /fhir?_type=Patient,Observation&...`: one search over several resource types (all
//! types without `_type`). Every search parameter must apply to every type searched; results
//! come type by type, and the cursor holds the type, the position within it and the logical
//! time of the first page, like `$everything`.

use actix_web::HttpResponse;
use actix_web::web;
use serde_json::json;

use super::response::{BundleOut, EntryOut, Link, raw};
use super::{Ctx, cursor, request};
use crate::fhir::{FhirError, IssueCode, ResourceType};
use crate::search::engine::{self, Position};
use crate::search::query::{Clause, parse_clause};
use crate::store::IndexView;

pub async fn handle(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, .. } = ctx;
    let base = request::base_url(&http, &state);
    let mut count = state.limits.page_size;
    let mut types: Option<Vec<ResourceType>> = None;
    let mut token = None;
    let mut criteria: Vec<(String, String)> = Vec::new();
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
            "_type" => {
                types =
                    Some(value.split(',').map(|t| request::resource_type(t.trim())).collect::<Result<Vec<_>, _>>()?);
            }
            "_cursor" => {
                token = Some(value);
                continue;
            }
            "_format" | "_pretty" => continue,
            _ => criteria.push((name.clone(), value.clone())),
        }
        applied.push((name, value));
    }
    let types: Vec<ResourceType> = types.unwrap_or_else(|| ResourceType::all().collect());
    let mut plans: Vec<(ResourceType, Vec<Clause>)> = Vec::new();
    for resource_type in types {
        let mut clauses = Vec::new();
        for (name, value) in &criteria {
            let clause = parse_clause(resource_type, name, value, &base)?.ok_or_else(|| {
                FhirError::incorrect(
                    IssueCode::NotSupported,
                    format!("'{name}' is not a search parameter of {resource_type}; a system search needs parameters every searched type has"),
                )
            })?;
            clauses.push(clause);
        }
        plans.push((resource_type, clauses));
    }
    let self_query = applied.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("&");
    let scope = format!("system|{self_query}");
    let store = state.store.clone();
    let secret = *store.cursor_secret();
    let bundle = web::block(move || -> Result<BundleOut, FhirError> {
        let snapshot = store.snapshot()?;
        let (t, mut type_index, mut position) = match &token {
            Some(token) => {
                let payload = cursor::decode_bytes(&secret, &scope, token)?;
                super::everything::decode(&payload)
                    .ok_or_else(|| FhirError::incorrect(IssueCode::Invalid, "the paging cursor is invalid"))?
            }
            None => (snapshot.t(), 0, None),
        };
        let view: &dyn IndexView = &*snapshot;
        let mut bundle = BundleOut::new("searchset");
        let self_url = if self_query.is_empty() { base.clone() } else { format!("{base}?{self_query}") };
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
                    .ok_or_else(|| FhirError::fault("search: an indexed version is missing"))?;
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
            let token = cursor::encode_bytes(&secret, &scope, &super::everything::encode(t, index, &resume));
            let separator = if self_query.is_empty() { "?" } else { "&" };
            bundle.link.push(Link { relation: "next", url: format!("{self_url}{separator}_cursor={token}") });
        }
        Ok(bundle)
    })
    .await
    .map_err(|_| FhirError::fault("search"))??;
    Ok(bundle.into_response())
}
