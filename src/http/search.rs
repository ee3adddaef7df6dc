//! `GET /fhir/{type}?...` and `POST /fhir/{type}/_search` (form-encoded parameters).
//!
//! Unknown parameters are ignored by default and reported (the `self` link lists only the
//! parameters that were applied, and an OperationOutcome entry names the others); with
//! `Prefer: handling=strict` they are a 400. The first page fixes the logical time `t` of its
//! snapshot; `next` links carry it in a signed cursor, so every page shows the matches as of
//! that moment.

use actix_web::HttpResponse;
use actix_web::web;
use serde_json::Value;

use super::response::{BundleOut, EntryOut, Link, SearchMode, StoredJson};
use super::{Ctx, cursor, paging, request};
use crate::auth::Access;
use crate::auth::restrict::Restriction;
use crate::auth::scope::Interaction as Permission;
use crate::fhir::error::operation_outcome;
use crate::fhir::summary::Summary;
use crate::fhir::{FhirError, Issue, IssueCode, ResourceType};
use crate::mpi::unified::Unifier;
use crate::search::budget::{Budget, Budgeted};
use crate::search::chain::Deferred;
use crate::search::compartment::patient_compartment;
use crate::search::engine::{self, Position, SortKey};
use crate::search::query::compartment_clause;
use crate::search::query::{Clause, Pred, parse_clause};
use crate::search::registry::{ParamKind, registry};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Total {
    None,
    Estimate,
    Accurate,
}

struct SearchRequest {
    resource_type: ResourceType,
    clauses: Vec<Clause>,
    count: usize,
    total: Total,
    summary_count: bool,
    elements: Option<Vec<String>>,
    summary: Option<Summary>,
    sort: Vec<SortKey>,
    includes: Vec<Include>,
    /// Chained and reverse-chained parameters, resolved on the search's snapshot.
    deferred: Vec<Deferred>,
    cursor: Option<String>,
    explain: bool,
    /// Parameters that were applied, as written, for the `self` link.
    applied: Vec<(String, String)>,
    /// Parameters ignored in lenient mode, with the reason.
    ignored: Vec<(String, String)>,
    /// The path below the base that links repeat (`Observation`, `Patient/p1/Observation`).
    path: String,
    /// Sorts whose driver has fewer index entries than this are done in memory.
    sort_in_memory_below: usize,
    /// Who searches: what they may see limits the included resources too.
    access: Access,
    /// Set for a restricted token: what it may see, written into the paging cursors' scope, so
    /// that a page link replayed with another token's restriction is refused. A unified view
    /// adds its persons' Patients.
    restriction_scope: String,
    /// A unified view of a person's records: the same fact from two sources is shown once, and
    /// overlapping appointments are flagged ([`crate::mpi::unified`]).
    unified: bool,
}

pub async fn type_level(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let resource_type = request::resource_type(&ctx.params[0])?;
    search(ctx, resource_type, None).await
}

/// `GET /fhir/Patient/{id}/{type}?...`: a search within one patient's compartment.
pub async fn compartment(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let compartment_type = request::resource_type(&ctx.params[0])?;
    let patient_id = request::id(&ctx.params[1])?;
    let resource_type = request::resource_type(&ctx.params[2])?;
    if compartment_type.as_str() != "Patient" {
        return Err(FhirError::not_found(format!(
            "compartment search is offered for the Patient compartment, not {compartment_type}"
        )));
    }
    if resource_type.as_str() != "Patient" && patient_compartment().params(resource_type).is_empty() {
        return Err(FhirError::not_found(format!("{resource_type} is not part of the Patient compartment")));
    }
    // Another patient's compartment is, to a patient's token, a patient that does not exist.
    if ctx.access.is_other_patient(patient_id.as_str()) {
        return Err(FhirError::not_found(format!("Patient/{patient_id} does not exist")));
    }
    search(ctx, resource_type, Some(patient_id.as_str().to_owned())).await
}

async fn search(ctx: Ctx, resource_type: ResourceType, patient: Option<String>) -> Result<HttpResponse, FhirError> {
    let Ctx { http, payload, state, access, .. } = ctx;
    let mut pairs = request::query_pairs(&http);
    if http.method() == actix_web::http::Method::POST {
        // Only a form is a search body: a JSON resource (or anything else) posted to `_search`
        // is a client mistake, not an empty search that matches everything.
        let form_media = "application/x-www-form-urlencoded";
        let not_a_form = |media: &str| {
            FhirError::new(
                crate::fhir::Category::UnsupportedMediaType,
                IssueCode::NotSupported,
                format!("a search body must be a form ({form_media}), not '{media}'"),
            )
        };
        let content_type = http.headers().get(actix_web::http::header::CONTENT_TYPE);
        if let Some(content_type) = content_type {
            let media = content_type.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
            if media != form_media {
                return Err(not_a_form(&media));
            }
        }
        let body = request::read_limited(&http, payload, &state.limits).await?;
        if content_type.is_none() && !body.is_empty() {
            return Err(not_a_form("(no Content-Type)"));
        }
        pairs.extend(request::decode_pairs(&String::from_utf8_lossy(&body)));
    }
    let strict = request::prefers(&http, "handling=strict");
    let base = request::base_url(&http, &state);
    let mut search = prepare(resource_type, patient.as_deref(), &pairs, strict, &base, &state.limits)?;
    restrict(&mut search, &access, &base)?;
    unify(&mut search, &state.store)?;
    let store = state.store.clone();
    let bundle = if search.0.bounded_by_its_page() {
        // As cheap as a few reads, which run on the worker too: handing it to the blocking pool
        // would cost more than the search.
        run(&store, &base, search)?
    } else {
        web::block(move || run(&store, &base, search)).await.map_err(|_| FhirError::fault("search"))??
    };
    Ok(bundle.into_response())
}

/// A search checked and parsed from its parameters, with the work it may do, ready to run on a
/// later snapshot (a transaction parses its search entries before its writes and runs them
/// after).
pub(super) struct Prepared(Box<SearchRequest>, Budget);

/// Parses a type search, or with `patient` a search in that patient's compartment.
pub(super) fn prepare(
    resource_type: ResourceType,
    patient: Option<&str>,
    pairs: &[(String, String)],
    strict: bool,
    base: &str,
    limits: &super::Limits,
) -> Result<Prepared, FhirError> {
    let mut search = parse(resource_type, pairs, strict, base, limits)?;
    if let Some(patient) = patient {
        search.clauses.push(compartment_clause(patient));
        search.path = format!("Patient/{patient}/{resource_type}");
    }
    Ok(Prepared(Box::new(search), limits.search_budget))
}

/// Makes a search that names a golden Patient (in its values, its compartment or its token's
/// restriction) a unified view of that person's records (see [`crate::mpi::unified`]).
pub(super) fn unify(search: &mut Prepared, store: &crate::store::Store) -> Result<(), FhirError> {
    let request = &mut search.0;
    let persons = crate::mpi::unified::expand(store, &mut request.clauses)?;
    if !persons.is_empty() {
        request.unified = true;
        request.restriction_scope.push_str(&persons);
    }
    Ok(())
}

/// Limits a prepared search to what `access` may see: its restriction's clauses join the
/// search's own, and includes are filtered the same way when the search runs.
pub(super) fn restrict(search: &mut Prepared, access: &Access, base: &str) -> Result<(), FhirError> {
    let request = &mut search.0;
    // Includes, chains and `_has` reach other types: each is checked against the token.
    request.access = access.clone();
    if !access.is_restricted() {
        return Ok(());
    }
    match access.restriction(request.resource_type, Permission::Search, base)? {
        Restriction::Deny => {
            return Err(FhirError::new(
                crate::fhir::Category::Forbidden,
                IssueCode::Forbidden,
                format!("the access token does not allow searching {}", request.resource_type),
            ));
        }
        Restriction::Allow(clauses) => {
            request.restriction_scope = access.fingerprint();
            for clause in clauses {
                // A limit the search's own clauses already imply only adds work.
                if !crate::auth::restrict::implied(request.resource_type, &clause, &request.clauses) {
                    request.clauses.push(clause);
                }
            }
        }
    }
    Ok(())
}

/// Runs a prepared search on the newest snapshot (or, for a later page, on its cursor's) and
/// returns the searchset Bundle. Blocking: call it off the I/O threads.
pub(super) fn run(store: &crate::store::Store, base: &str, mut search: Prepared) -> Result<BundleOut, FhirError> {
    // A transaction's search entries are unified when they run, after the bundle's writes.
    if !search.0.unified {
        unify(&mut search, store)?;
    }
    let secret = store.cursor_key().clone();
    execute(store, &secret, base, *search.0, search.1)
}

/// The largest `_count` of a search that [`SearchRequest::bounded_by_its_page`] may run on the
/// request's worker thread.
const INLINE_PAGE_MAX: usize = 100;

impl SearchRequest {
    /// Whether the search's work is that of its page alone: one exact value of one parameter
    /// (every index entry of its range is a match), nothing counted, sorted, included, chained
    /// or reshaped, and at most [`INLINE_PAGE_MAX`] entries. Its page reads `_count + 1` index
    /// entries and `_count` resources, wherever it starts.
    fn bounded_by_its_page(&self) -> bool {
        let [clause] = self.clauses.as_slice() else { return false };
        let one_exact_value = !clause.negated
            && clause.missing.is_none()
            && matches!(clause.alternatives.as_slice(), [alternative] if matches!(alternative.pred, Pred::Equals(_)))
            && clause.ranges().len() == 1;
        one_exact_value
            && self.count <= INLINE_PAGE_MAX
            && self.total == Total::None
            && !self.summary_count
            && self.summary.is_none()
            && self.elements.is_none()
            && self.sort.is_empty()
            && self.includes.is_empty()
            && self.deferred.is_empty()
            && !self.unified
    }
}

fn parse(
    resource_type: ResourceType,
    pairs: &[(String, String)],
    strict: bool,
    base: &str,
    limits: &super::Limits,
) -> Result<SearchRequest, FhirError> {
    let mut search = SearchRequest {
        resource_type,
        clauses: Vec::new(),
        count: limits.page_size,
        total: Total::None,
        summary_count: false,
        elements: None,
        summary: None,
        sort: Vec::new(),
        includes: Vec::new(),
        deferred: Vec::new(),
        cursor: None,
        explain: false,
        access: Access::Unrestricted,
        restriction_scope: String::new(),
        unified: false,
        applied: Vec::new(),
        ignored: Vec::new(),
        path: resource_type.as_str().to_owned(),
        sort_in_memory_below: limits.sort_in_memory_below,
    };
    check_size(pairs)?;
    let invalid = |message: String| FhirError::incorrect(IssueCode::Invalid, message);
    for (name, value) in pairs {
        let mut applied = true;
        match name.as_str() {
            "_format" | "_pretty" => applied = false,
            "_cursor" => {
                search.cursor = Some(value.clone());
                applied = false;
            }
            "_count" => {
                search.count = request::page_count(value, limits)?;
                // A client asking for no entries wants the count (fhirpy's count() does this).
                if search.count == 0 {
                    search.summary_count = true;
                }
            }
            "_total" => {
                search.total = match value.as_str() {
                    "none" => Total::None,
                    "estimate" => Total::Estimate,
                    "accurate" => Total::Accurate,
                    other => return Err(invalid(format!("_total must be none, estimate or accurate, not '{other}'"))),
                }
            }
            "_summary" => match value.as_str() {
                "count" => search.summary_count = true,
                "true" => search.summary = Some(Summary::True),
                "text" => search.summary = Some(Summary::Text),
                "data" => search.summary = Some(Summary::Data),
                "false" => {}
                other => {
                    return Err(invalid(format!("_summary must be true, text, data, count or false, not '{other}'")));
                }
            },
            "_elements" => {
                search.elements =
                    Some(value.split(',').map(|e| e.trim().to_owned()).filter(|e| !e.is_empty()).collect());
            }
            "_explain" => search.explain = value == "true",
            "_include" | "_revinclude" | "_include:iterate" | "_revinclude:iterate" => {
                search.includes.push(parse_include(name, value)?);
            }
            "_sort" => {
                for field in value.split(',').map(str::trim).filter(|f| !f.is_empty()) {
                    let (descending, code) = match field.strip_prefix('-') {
                        Some(code) => (true, code),
                        None => (false, field),
                    };
                    let def = registry()
                        .get(resource_type, code)
                        .filter(|def| def.kind != ParamKind::Composite)
                        .ok_or_else(|| {
                            invalid(format!("_sort: '{code}' is not a sortable search parameter of {resource_type}"))
                        })?;
                    search.sort.push(SortKey { key: def.code.clone(), kind: def.kind, descending });
                }
            }
            _ if Deferred::parse(resource_type, name, value)?.is_some() => {
                search.deferred.extend(Deferred::parse(resource_type, name, value)?);
            }
            _ => match parse_clause(resource_type, name, value, base)? {
                Some(clause) => search.clauses.push(clause),
                None => {
                    let reason = if name.starts_with('_') || name.contains('.') || name.contains(':') {
                        format!("the parameter '{name}' is not supported")
                    } else {
                        format!("'{name}' is not a search parameter of {resource_type}")
                    };
                    if strict {
                        return Err(FhirError::incorrect(IssueCode::NotSupported, reason));
                    }
                    search.ignored.push((name.clone(), reason));
                    applied = false;
                }
            },
        }
        if applied {
            search.applied.push((name.clone(), value.clone()));
        }
    }
    Ok(search)
}

/// A sort is read from its index only if at least one in this many of the driver's sampled
/// candidates matches the query: the walk then passes over a bounded number of entries per
/// match (per page: about `_count` times this, times the sort index's entries per driver entry).
const MIN_SORT_MATCH_SHARE: usize = 100;

/// The most parameters one search may have. Every clause is planned (an index count each) and
/// checked against every candidate, so their number multiplies the work of a search; a POST
/// form could otherwise carry millions within the body limit.
pub const MAX_SEARCH_PARAMETERS: usize = 100;

/// The most comma-separated values all parameters of one search may have together (each value
/// of a parameter is an index lookup or scan of its own).
pub const MAX_SEARCH_VALUES: usize = 1000;

fn check_size(pairs: &[(String, String)]) -> Result<(), FhirError> {
    let too_costly = |message: String| FhirError::incorrect(IssueCode::TooCostly, message);
    if pairs.len() > MAX_SEARCH_PARAMETERS {
        return Err(too_costly(format!(
            "the search has {} parameters; at most {MAX_SEARCH_PARAMETERS} are supported",
            pairs.len()
        )));
    }
    let mut values = 0;
    for (name, value) in pairs {
        values += value.split(',').count();
        if values > MAX_SEARCH_VALUES {
            let shown: String = name.chars().take(80).collect();
            return Err(too_costly(format!(
                "the search has more than {MAX_SEARCH_VALUES} values (counting each comma-separated value)"
            ))
            .at(shown));
        }
    }
    Ok(())
}

fn execute(
    store: &crate::store::Store,
    secret: &crate::store::CursorKey,
    base: &str,
    search: SearchRequest,
    budget: Budget,
) -> Result<BundleOut, FhirError> {
    let snapshot = store.snapshot()?;
    let index = snapshot.index();
    // Every index read of this search (planning, chains, matching, counting, sorting,
    // includes) is charged to one budget.
    let view = Budgeted::new(&index, budget);
    let resource_type = search.resource_type;
    let self_query = paging::query_string(&search.applied);
    let scope = format!("search|{}|{self_query}{}", search.path, search.restriction_scope);
    // A cursor is a direction (0 forward: after the position; 1 backward: before it) and a
    // position with the first page's logical time.
    let (t, backward, start) = match &search.cursor {
        Some(token) => {
            let payload = cursor::decode_bytes(secret, &scope, token)?;
            let invalid = || FhirError::incorrect(IssueCode::Invalid, "the paging cursor is invalid");
            let (&direction, rest) = payload.split_first().ok_or_else(invalid)?;
            let (t, _, position) = paging::decode(rest).ok_or_else(invalid)?;
            cursor::check_readable(secret, t)?;
            (t, direction == 1, position)
        }
        None => (snapshot.t(), false, None),
    };
    let mut clauses = search.clauses.clone();
    // Chains and `_has` find only what the searcher may see of their inner types.
    let inner_limit = |inner: ResourceType| match search.access.restriction(inner, Permission::Search, base)? {
        Restriction::Allow(clauses) => Ok(clauses),
        Restriction::Deny => Err(FhirError::new(
            crate::fhir::Category::Forbidden,
            IssueCode::Forbidden,
            format!("the access token does not allow searching {inner}, which this chain or _has reads"),
        )),
    };
    for deferred in &search.deferred {
        clauses.push(deferred.resolve(&view, t, base, &inner_limit)?);
    }
    let (query, estimates) = engine::Query::plan(&view, resource_type, &clauses, t)?;
    let driver = query.driver;
    // A sort is read from its index unless the query's most selective parameter finds so few
    // candidates that sorting them in memory is cheaper than walking the index past the
    // non-matching entries. The choice depends only on `t`, so every page makes the same one.
    // Counting stops at the threshold; a threshold above ESTIMATE_CAP always sorts in memory,
    // and a scan of the whole type counts as ESTIMATE_CAP entries.
    let threshold = search.sort_in_memory_below;
    let mut sort_from_index = engine::index_sortable(resource_type, &search.sort)
        && threshold <= engine::ESTIMATE_CAP
        && engine::driver_has_at_least(&query, threshold)?;
    if sort_from_index && clauses.len() > 1 {
        // Several broad clauses may still rarely hold together, and the index walk would pass
        // over many entries per match: it needs a fair share of the driver's candidates to match.
        let (matched, examined) = engine::sample_share(&query, engine::ESTIMATE_SAMPLE)?;
        sort_from_index = matched * MIN_SORT_MATCH_SHARE >= examined;
    }
    // The plan's text is written only when someone reads it.
    let plan = (search.explain || tracing::enabled!(tracing::Level::DEBUG)).then(|| {
        let plan = engine::describe(&clauses, driver, &estimates);
        if sort_from_index {
            format!("read {} in sort order from its index, checking every clause; {plan}", search.sort[0].key)
        } else if !search.sort.is_empty() {
            format!("{plan}; sort the matches in memory")
        } else {
            plan
        }
    });
    if let Some(plan) = &plan {
        tracing::debug!(resource_type = %resource_type, plan = %plan, "search plan");
    }

    let mut bundle = BundleOut::new("searchset");
    let mut warnings: Vec<Issue> = Vec::new();
    // Links repeat the search's own path: a compartment search pages within the compartment.
    let self_url = if self_query.is_empty() {
        format!("{base}/{}", search.path)
    } else {
        format!("{base}/{}?{self_query}", search.path)
    };
    bundle.link.push(Link { relation: "self", url: self_url.clone() });

    let wants_total = search.summary_count || search.total == Total::Accurate;
    if wants_total {
        bundle.total = Some(engine::count(&query)? as u64);
    } else if search.total == Total::Estimate {
        bundle.total = Some(engine::estimate(&query)? as u64);
    }
    if !search.summary_count && search.count > 0 {
        let token = |backward: bool, position: &Position| {
            let mut payload = vec![u8::from(backward)];
            payload.extend(paging::encode(t, 0, position));
            cursor::encode_bytes(secret, &scope, &payload)
        };
        let separator = if self_query.is_empty() { "?" } else { "&" };
        let mut previous_link = None;
        let page = if search.sort.is_empty() || sort_from_index {
            let page = if search.sort.is_empty() {
                engine::run_directed(&query, start.as_ref(), Some(search.count), backward)?
            } else {
                // Read in order from the sort key's index: cursors hold index positions, like
                // unsorted searches.
                engine::sorted_page(&query, &search.sort[0], start.as_ref(), search.count, backward)?
            };
            // Going forward, an earlier page exists once this is not the first; going back, while
            // the engine found more before this page.
            let earlier = if backward { page.next.is_some() } else { start.is_some() };
            if earlier {
                previous_link = page.positions.first().map(|first| token(true, first));
            }
            let next = if backward { page.positions.last().cloned() } else { page.next.clone() };
            engine::Page { next, ..page }
        } else {
            // Sorted results are ordered in memory; cursors hold the offset of their page.
            let offset = match &start {
                Some(Position::Type { id }) => id.parse::<usize>().unwrap_or(0),
                _ => 0,
            };
            let all = engine::sorted(&query, &search.sort)?;
            let end = (offset + search.count).min(all.len());
            if offset > 0 {
                previous_link =
                    Some(token(false, &Position::Type { id: offset.saturating_sub(search.count).to_string() }));
            }
            let next = (end < all.len()).then(|| Position::Type { id: end.to_string() });
            engine::Page { matches: all[offset.min(end)..end].to_vec(), next, positions: Vec::new() }
        };
        if let Some(previous) = previous_link {
            bundle.link.push(Link { relation: "previous", url: format!("{self_url}{separator}_cursor={previous}") });
        }
        let mut unifier = search.unified.then(|| Unifier::new(store, &snapshot, &view, t, base));
        let in_view = |id: &str, version: u64| engine::matches_clauses(&view, resource_type, &clauses, id, version, t);
        for (id, version) in &page.matches {
            let stored = snapshot
                .version(resource_type, id, *version)?
                .ok_or_else(|| FhirError::fault("search: an indexed version is missing"))?;
            let body = match &mut unifier {
                Some(unifier) => match unifier.present(resource_type, id, stored.body, &in_view)? {
                    Some(body) => body,
                    // Another report of the same fact stands for it.
                    None => continue,
                },
                None => stored.body,
            };
            let body = crate::mpi::golden::presented(store, resource_type, id, body);
            let resource = shape(resource_type, body, search.elements.as_deref(), search.summary);
            bundle.entry.push(EntryOut {
                full_url: Some(format!("{base}/{resource_type}/{id}")),
                resource: Some(StoredJson::new(resource)),
                search: Some(SearchMode::Match),
                ..Default::default()
            });
        }
        if !search.includes.is_empty() {
            let mut seen: std::collections::HashSet<(ResourceType, String)> =
                page.matches.iter().map(|(id, _)| (resource_type, id.clone())).collect();
            let matched: Vec<(ResourceType, String, u64)> =
                page.matches.iter().map(|(id, version)| (resource_type, id.clone(), *version)).collect();
            let keep = |resource_type: ResourceType, id: &str, version: u64| {
                search
                    .access
                    .admits_indexed(&view, resource_type, id, version, t, Permission::Read, base)
                    .unwrap_or(false)
            };
            let included = resolve_includes(&snapshot, &view, &search.includes, &matched, t, &mut seen, &keep)?;
            if included.truncated {
                warnings.push(Issue {
                    severity: crate::fhir::error::Severity::Warning,
                    ..Issue::error(
                        IssueCode::TooCostly,
                        format!(
                            "_include/_revinclude found more than {MAX_INCLUDES} resources for this page; only the \
                             first {MAX_INCLUDES} are included (ask for a smaller _count)"
                        ),
                    )
                })
            }
            for (included_type, id, version) in included.resources {
                let stored = snapshot
                    .version(included_type, &id, version)?
                    .ok_or_else(|| FhirError::fault("search: an included version is missing"))?;
                bundle.entry.push(EntryOut {
                    full_url: Some(format!("{base}/{included_type}/{id}")),
                    resource: Some(StoredJson::new(shape(
                        included_type,
                        crate::mpi::golden::presented(store, included_type, &id, stored.body),
                        search.elements.as_deref(),
                        search.summary,
                    ))),
                    search: Some(SearchMode::Include),
                    ..Default::default()
                });
            }
        }
        if let Some(next) = page.next {
            bundle
                .link
                .push(Link { relation: "next", url: format!("{self_url}{separator}_cursor={}", token(false, &next)) });
        }
    }
    let mut issues: Vec<Issue> = search
        .ignored
        .iter()
        .map(|(name, reason)| Issue {
            severity: crate::fhir::error::Severity::Warning,
            ..Issue::error(IssueCode::NotSupported, format!("{reason}; it was ignored")).at(name.clone())
        })
        .collect();
    issues.extend(warnings);
    if let (true, Some(plan)) = (search.explain, &plan) {
        issues.push(Issue::information(format!("plan: {plan}; {} units of the work budget used", view.used())));
    }
    if !issues.is_empty() {
        bundle.entry.push(EntryOut {
            resource: Some(StoredJson::of(&operation_outcome(&issues))),
            search: Some(SearchMode::Outcome),
            ..Default::default()
        });
    }
    Ok(bundle)
}

/// One `_include` or `_revinclude`: resources of `source` whose reference parameter `param`
/// points at (include) or from (revinclude) the matches, optionally only to `target`.
#[derive(Debug, Clone)]
struct Include {
    reverse: bool,
    iterate: bool,
    source: ResourceType,
    /// The reference parameters followed (several for `Type:*`).
    params: Vec<String>,
    target: Option<ResourceType>,
}

/// Includes stop growing a page beyond this many resources.
const MAX_INCLUDES: usize = 1000;

fn parse_include(name: &str, value: &str) -> Result<Include, FhirError> {
    let invalid = || {
        FhirError::incorrect(IssueCode::Invalid, format!("{name}: '{value}' is not SourceType:parameter[:TargetType]"))
    };
    let parts: Vec<&str> = value.split(':').collect();
    let (source, param, target) = match parts.as_slice() {
        [source, param] => (*source, *param, None),
        [source, param, target] => (*source, *param, Some(*target)),
        _ => return Err(invalid()),
    };
    let source = ResourceType::parse(source).ok_or_else(invalid)?;
    let target = target.map(|t| ResourceType::parse(t).ok_or_else(invalid)).transpose()?;
    let params: Vec<String> = if param == "*" {
        registry().params(source).filter(|d| d.kind == ParamKind::Reference).map(|d| d.code.clone()).collect()
    } else {
        match registry().get(source, param) {
            Some(def) if def.kind == ParamKind::Reference => vec![def.code.clone()],
            _ => {
                return Err(FhirError::incorrect(
                    IssueCode::Invalid,
                    format!("{name}: '{param}' is not a reference parameter of {source}"),
                ));
            }
        }
    };
    Ok(Include {
        reverse: name.starts_with("_revinclude"),
        iterate: name.ends_with(":iterate"),
        source,
        params,
        target,
    })
}

/// Resolves includes for the page's matches (and, for `:iterate`, for what they include),
/// as of the page's logical time. Returns `(type, id, version)` not already in `seen`.
fn resolve_includes(
    snapshot: &crate::store::Snapshot,
    view: &dyn crate::store::IndexView,
    includes: &[Include],
    matches: &[(ResourceType, String, u64)],
    t: u64,
    seen: &mut std::collections::HashSet<(ResourceType, String)>,
    keep: &dyn Fn(ResourceType, &str, u64) -> bool,
) -> Result<Included, FhirError> {
    let mut found = Vec::new();
    // Collection stops as soon as one more than the limit is known: that one only tells that
    // the includes were cut.
    let full = |found: &Vec<(ResourceType, String, u64)>, added: &Vec<(ResourceType, String, u64)>| {
        found.len() + added.len() > MAX_INCLUDES
    };
    let mut frontier: Vec<(ResourceType, String, u64)> = matches.to_vec();
    let mut first_round = true;
    while !frontier.is_empty() && found.len() <= MAX_INCLUDES {
        let mut added = Vec::new();
        'includes: for include in includes.iter().filter(|i| first_round || i.iterate) {
            for (resource_type, id, version) in &frontier {
                if full(&found, &added) {
                    break 'includes;
                }
                let mut candidates: Vec<(ResourceType, String, u64)> = Vec::new();
                if !include.reverse && *resource_type == include.source {
                    for param in &include.params {
                        for value in view.probe(*resource_type, id, *version, param)? {
                            let Ok(reference) = String::from_utf8(value) else { continue };
                            let Some((type_name, target_id)) = reference.split_once('/') else { continue };
                            let Some(target_type) = ResourceType::parse(type_name) else { continue };
                            if include.target.is_some_and(|t| t != target_type) || target_id.contains('/') {
                                continue;
                            }
                            if let Some(target) = snapshot.version_at(target_type, target_id, t)? {
                                candidates.push((target_type, target_id.to_owned(), target.version));
                            }
                        }
                    }
                }
                if include.reverse && include.target.is_none_or(|t| t == *resource_type) {
                    let reference = format!("{resource_type}/{id}").into_bytes();
                    let mut hi = reference.clone();
                    hi.push(0);
                    // Bounded: a resource referenced by millions stops the scan at what the page
                    // can still take.
                    let room = (MAX_INCLUDES + 1).saturating_sub(found.len() + added.len());
                    let mut new = 0;
                    for param in &include.params {
                        view.scan_index(include.source, param, &reference, Some(&hi), None, t, &mut |hit| {
                            if !seen.contains(&(include.source, hit.id.clone())) {
                                new += 1;
                            }
                            candidates.push((include.source, hit.id, hit.version));
                            if new > room {
                                std::ops::ControlFlow::Break(())
                            } else {
                                std::ops::ControlFlow::Continue(())
                            }
                        })?;
                    }
                }
                for (candidate_type, candidate_id, candidate_version) in candidates {
                    // What the searcher may not see is neither shown nor walked through
                    // (`:iterate`).
                    if !keep(candidate_type, &candidate_id, candidate_version) {
                        continue;
                    }
                    if seen.insert((candidate_type, candidate_id.clone())) {
                        added.push((candidate_type, candidate_id, candidate_version));
                    }
                }
            }
        }
        first_round = false;
        found.extend(added.iter().cloned());
        frontier = added;
    }
    let truncated = found.len() > MAX_INCLUDES;
    found.truncate(MAX_INCLUDES);
    Ok(Included { resources: found, truncated })
}

/// What [`resolve_includes`] found: at most [`MAX_INCLUDES`] resources, and whether there were
/// more.
struct Included {
    resources: Vec<(ResourceType, String, u64)>,
    truncated: bool,
}

/// The resource as the client asked for it: `_elements` wins over `_summary`; neither returns
/// the stored bytes untouched, unparsed. Only a `_summary` or `_elements` parses the body.
pub(super) fn shape(
    resource_type: ResourceType,
    body: Vec<u8>,
    elements: Option<&[String]>,
    summary: Option<Summary>,
) -> Vec<u8> {
    if elements.is_none() && summary.is_none() {
        return body;
    }
    let Ok(Value::Object(resource)) = serde_json::from_slice::<Value>(&body) else { return body };
    let shaped = match (elements, summary) {
        (Some(elements), _) => crate::fhir::summary::select(resource, elements),
        (None, Some(mode)) => crate::fhir::summary::summarize(resource_type, resource, mode),
        (None, None) => resource,
    };
    serde_json::to_vec(&Value::Object(shaped)).unwrap_or(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(query: &str) -> SearchRequest {
        let settings = crate::config::Settings::default();
        let limits = super::super::Limits::from_settings(&settings);
        let pairs = super::super::request::decode_pairs(query);
        let observation = ResourceType::parse("Observation").unwrap();
        parse(observation, &pairs, false, "http://h/fhir", &limits).unwrap()
    }

    #[test]
    fn only_searches_whose_work_is_their_page_run_on_the_worker() {
        for bounded in
            ["code=http://loinc.org|2951-2&_count=20", "identifier=urn:mrn|42", "subject=Patient/p1&_count=100"]
        {
            assert!(request(bounded).bounded_by_its_page(), "{bounded}");
        }
        for unbounded in [
            "code=http://loinc.org|2951-2&_count=101",
            "code=a,b",
            "code=a&subject=Patient/p1",
            "code:not=a",
            "code:missing=true",
            "date=ge2020",
            "code=a&_total=accurate",
            "code=a&_total=estimate",
            "code=a&_summary=count",
            "code=a&_summary=true",
            "code=a&_elements=status",
            "code=a&_sort=date",
            "code=a&_include=Observation:subject",
            "subject:Patient.name=x",
            "",
        ] {
            assert!(!request(unbounded).bounded_by_its_page(), "{unbounded}");
        }
    }
}
