//! `GET /fhir?_type=Patient,Observation&...`: one search over several resource types (all
//! types without `_type`). Every search parameter must apply to every type searched; results
//! come type by type, and the cursor holds the type, the position within it and the logical
//! time of the first page, like `$everything`.

use super::{Ctx, paging, request};
use crate::auth::restrict::Restriction;
use crate::auth::scope::Interaction as Permission;
use crate::fhir::{Category, FhirError, IssueCode, ResourceType};
use crate::search::query::{Clause, parse_clause};
use actix_web::HttpResponse;

pub async fn handle(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, access, .. } = ctx;
    let base = request::base_url(&http, &state);
    let mut count = state.limits.page_size;
    let mut types: Option<Vec<ResourceType>> = None;
    let mut token = None;
    let mut criteria: Vec<(String, String)> = Vec::new();
    let mut applied: Vec<(String, String)> = Vec::new();
    for (name, value) in request::query_pairs(&http) {
        match name.as_str() {
            "_count" => count = request::page_count(&value, &state.limits)?,
            "_type" => types = Some(request::resource_types(&value)?),
            "_cursor" => {
                token = Some(value);
                continue;
            }
            "_format" | "_pretty" => continue,
            _ => criteria.push((name.clone(), value.clone())),
        }
        applied.push((name, value));
    }
    let named = types.is_some();
    let types: Vec<ResourceType> = types.unwrap_or_else(|| ResourceType::all().collect());
    let mut plans: Vec<(ResourceType, Vec<Clause>)> = Vec::new();
    for resource_type in types {
        // Types the token may not search: refused when named, left out otherwise.
        let mut clauses = match access.restriction(resource_type, Permission::Search, &base)? {
            Restriction::Allow(clauses) => clauses,
            Restriction::Deny if named => {
                return Err(FhirError::new(
                    Category::Forbidden,
                    IssueCode::Forbidden,
                    format!("the access token does not allow searching {resource_type}"),
                ));
            }
            Restriction::Deny => continue,
        };
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
    let mut restriction = access.fingerprint();
    let unified = paging::unify(&state.store, &mut plans, &mut restriction)?;
    let request = paging::CrossTypeRequest {
        plans,
        count,
        token,
        kind: "system",
        path: String::new(),
        applied,
        base,
        restriction,
        unified,
    };
    let bundle =
        paging::run_across_types(state.store.clone(), state.limits.search_budget, request, |_, _, _| Ok(())).await?;
    Ok(bundle.into_response())
}
