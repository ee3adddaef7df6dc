//! History at instance (`/{type}/{id}/_history`), type (`/{type}/_history`) and system
//! (`/_history`) level, newest first, paged with cursors.
//!
//! `_since` keeps the versions written at or after an instant; `_at` keeps the versions that
//! were current at some moment of the period a date denotes (written before its end and not
//! replaced before its start). Versions replaced long ago are skipped one by one, so an `_at`
//! page examines at most `max_history_scan` entries and may end early with a `next` link.
//!
//! Pages are stable: the first page fixes the newest logical time it shows, and later pages
//! continue strictly below the cursor's position, so writes made while a client pages through
//! never shift, duplicate or drop entries.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};

use super::response::{BundleOut, EntryOut, EntryRequest, EntryResponse, Link, StoredJson, etag, status_line};
use super::{AppState, Ctx, cursor, request};
use crate::auth::Access;
use crate::fhir::json::format_instant;
use crate::fhir::{FhirError, IssueCode, ResourceType};
use crate::store::{HistoryPage, HistoryQuery, Op, Snapshot};

pub async fn instance(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, params, access, .. } = ctx;
    let (type_name, id) = (params[0].clone(), params[1].clone());
    let resource_type = request::resource_type(&type_name)?;
    let id = request::id(&id)?;
    let base = request::base_url(&http, &state);
    respond(&http, &state, &access, |snapshot, query| {
        let missing = || FhirError::not_found(format!("{resource_type}/{id} does not exist"));
        // A resource the token may not read now has no history for it either.
        if access.is_restricted() {
            let current = snapshot.current(resource_type, id.as_str())?.ok_or_else(missing)?;
            if !super::read::admits_stored(snapshot, &access, resource_type, id.as_str(), &current, &base)? {
                return Err(missing());
            }
        }
        let page = snapshot.instance_history(resource_type, id.as_str(), query)?;
        if page.entries.is_empty() && query.below.is_none() && snapshot.current(resource_type, id.as_str())?.is_none() {
            return Err(missing());
        }
        Ok(page)
    })
}

pub async fn type_level(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, params, access, .. } = ctx;
    let resource_type = request::resource_type(&params[0])?;
    respond(&http, &state, &access, |snapshot, query| snapshot.type_history(resource_type, query))
}

pub async fn system(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, access, .. } = ctx;
    respond(&http, &state, &access, |snapshot, query| snapshot.system_history(query))
}

struct Params {
    count: usize,
    since: Option<(String, i64)>,
    /// `_at` as written, and the period it denotes (`[from, to)`, microseconds).
    at: Option<(String, (i64, i64))>,
    cursor: Option<String>,
}

fn params(http: &HttpRequest, state: &AppState) -> Result<Params, FhirError> {
    let mut params = Params { count: state.limits.page_size, since: None, at: None, cursor: None };
    for (name, value) in request::query_pairs(http) {
        match name.as_str() {
            "_count" => params.count = request::page_count(&value, &state.limits)?,
            "_since" => {
                let micros = request::since_param(&value)?;
                params.since = Some((value, micros));
            }
            "_at" => {
                // A date of any precision is the whole period it denotes (`2024-03` is March).
                let (from, last) = crate::search::values::parse_date_range(&value).ok_or_else(|| {
                    FhirError::incorrect(
                        IssueCode::Invalid,
                        format!(
                            "_at must be a date or dateTime such as 2024-01-31 or 2024-01-31T12:00:00Z, not '{value}'"
                        ),
                    )
                    .at("_at")
                })?;
                params.at = Some((value, (from, last.saturating_add(1))));
            }
            "_cursor" => params.cursor = Some(value),
            "_format" | "_pretty" => {}
            other => {
                return Err(FhirError::incorrect(
                    IssueCode::NotSupported,
                    format!("the history parameter '{other}' is not supported (supported: _count, _since, _at)"),
                ));
            }
        }
    }
    Ok(params)
}

/// Runs `read` for a page and answers it as a history Bundle. For a restricted token, the page
/// keeps only the versions it may read (a deletion: if it could read what was deleted), so a
/// page may hold fewer than `_count` entries; its `next` link still follows.
fn respond(
    http: &HttpRequest,
    state: &web::Data<AppState>,
    access: &Access,
    read: impl FnOnce(&Snapshot, HistoryQuery) -> Result<HistoryPage, FhirError>,
) -> Result<HttpResponse, FhirError> {
    let params = params(http, state)?;
    let relative_path = http.path().strip_prefix("/fhir").unwrap_or(http.path()).to_owned();
    let scope = format!(
        "history|{relative_path}|{}|{}",
        params.since.as_ref().map_or("", |(text, _)| text.as_str()),
        params.at.as_ref().map_or("", |(text, _)| text.as_str())
    );
    let secret = state.store.cursor_key();
    let below = params.cursor.as_deref().map(|token| cursor::decode(secret, &scope, token)).transpose()?;
    let snapshot = state.store.snapshot()?;
    let query = HistoryQuery {
        since_micros: params.since.as_ref().map(|(_, micros)| *micros),
        count: params.count,
        below,
        at: params.at.as_ref().map(|(_, period)| *period),
        // At least one entry per page, so that paging always advances.
        max_scan: state.limits.max_history_scan.max(1),
    };
    let mut page =
        if params.count == 0 { HistoryPage { entries: Vec::new(), next_below: None } } else { read(&snapshot, query)? };

    let base = request::base_url(http, state);
    if access.is_restricted() {
        let mut kept = Vec::with_capacity(page.entries.len());
        for version in page.entries {
            let Some(resource_type) = ResourceType::parse(&version.resource_type) else { continue };
            let admitted = super::read::admits_stored(&snapshot, access, resource_type, &version.id, &version, &base)?;
            if admitted {
                kept.push(version);
            }
        }
        page.entries = kept;
    }
    let mut bundle = BundleOut::new("history");
    let self_query = http.query_string();
    bundle.link.push(Link {
        relation: "self",
        url: if self_query.is_empty() {
            format!("{base}{relative_path}")
        } else {
            format!("{base}{relative_path}?{self_query}")
        },
    });
    if let Some(next_below) = page.next_below {
        let mut next_query: Vec<String> =
            self_query.split('&').filter(|p| !p.is_empty() && !p.starts_with("_cursor=")).map(str::to_owned).collect();
        next_query.push(format!("_cursor={}", cursor::encode(secret, &scope, next_below)));
        bundle.link.push(Link { relation: "next", url: format!("{base}{relative_path}?{}", next_query.join("&")) });
    }
    for version in page.entries {
        let resource_type = ResourceType::parse(&version.resource_type).map(|t| t.as_str()).unwrap_or("Resource");
        let (method, url, status) = match version.header.op {
            Op::Create => ("POST", resource_type.to_owned(), StatusCode::CREATED),
            Op::Update => ("PUT", format!("{resource_type}/{}", version.id), StatusCode::OK),
            Op::Delete => ("DELETE", format!("{resource_type}/{}", version.id), StatusCode::NO_CONTENT),
        };
        bundle.entry.push(EntryOut {
            full_url: Some(format!("{base}/{resource_type}/{}", version.id)),
            resource: if version.is_deleted() { None } else { Some(StoredJson::new(version.body)) },
            request: Some(EntryRequest { method, url }),
            response: Some(EntryResponse {
                status: status_line(status),
                etag: Some(etag(version.version)),
                last_modified: Some(format_instant(version.header.last_updated_micros)),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    Ok(bundle.into_response())
}
