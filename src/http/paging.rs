//! Search results that span several resource types (`$everything`, system search): the types
//! are visited in order; within a type the engine pages as usual. A position is the type's
//! index, the engine's position within it, and the logical time of the first page.

use serde_json::json;

use super::cursor;
use super::response::{BundleOut, EntryOut, Link, raw};
use crate::fhir::{FhirError, IssueCode, ResourceType};
use crate::search::engine::{self, Position};
use crate::search::query::Clause;
use crate::store::{IndexView, Store};

/// `t · type index · position`; an empty type-scan position means "the start of that type".
pub fn encode(t: u64, type_index: usize, position: &Position) -> Vec<u8> {
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

pub fn decode(bytes: &[u8]) -> Option<(u64, usize, Option<Position>)> {
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

/// One searchset page over `plans` (a type and its clauses each), continuing from `token`.
/// `self_url` is the page's own link; `next` repeats it with a cursor.
pub fn page_across_types(
    store: &Store,
    plans: &[(ResourceType, Vec<Clause>)],
    count: usize,
    token: Option<&str>,
    scope: &str,
    base: &str,
    self_url: &str,
) -> Result<BundleOut, FhirError> {
    let secret = *store.cursor_secret();
    let snapshot = store.snapshot()?;
    let (t, mut type_index, mut position) = match token {
        Some(token) => {
            let payload = cursor::decode_bytes(&secret, scope, token)?;
            decode(&payload).ok_or_else(|| FhirError::incorrect(IssueCode::Invalid, "the paging cursor is invalid"))?
        }
        None => (snapshot.t(), 0, None),
    };
    let view: &dyn IndexView = &*snapshot;
    let mut bundle = BundleOut::new("searchset");
    bundle.link.push(Link { relation: "self", url: self_url.to_owned() });
    let mut next = None;
    while type_index < plans.len() && bundle.entry.len() < count {
        let (resource_type, clauses) = &plans[type_index];
        let (driver, _) = engine::plan(view, *resource_type, clauses, t)?;
        let page =
            engine::run(view, *resource_type, clauses, driver, t, position.as_ref(), Some(count - bundle.entry.len()))?;
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
        let token = cursor::encode_bytes(&secret, scope, &encode(t, index, &resume));
        let separator = if self_url.contains('?') { "&" } else { "?" };
        bundle.link.push(Link { relation: "next", url: format!("{self_url}{separator}_cursor={token}") });
    }
    Ok(bundle)
}
