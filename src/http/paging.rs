//! Search results that span several resource types (`$everything`, system search): the types
//! are visited in order; within a type the engine pages as usual. A position is the type's
//! index, the engine's position within it, and the logical time of the first page.

use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use super::cursor;
use super::response::{BundleOut, EntryOut, Link, SearchMode, StoredJson};
use crate::fhir::{FhirError, IssueCode, ResourceType};
use crate::search::budget::{Budget, Budgeted};
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

/// A cross-type search as its handler prepared it: the clauses per type, the page size and
/// cursor, and what the page's links are built from.
pub struct CrossTypeRequest {
    pub plans: Vec<(ResourceType, Vec<Clause>)>,
    pub count: usize,
    pub token: Option<String>,
    /// Names the search in its cursors' scope (`system`, `everything`): a cursor of one search
    /// is refused by another.
    pub kind: &'static str,
    /// The page's path below the base (`Patient/p1/$everything`; empty for the base itself).
    pub path: String,
    /// The query parameters that shaped the page, repeated by its links.
    pub applied: Vec<(String, String)>,
    pub base: String,
    /// What limits the searcher ([`crate::auth::Access::fingerprint`]), and the persons of a
    /// unified view: part of the cursors' scope, so that a page link made under other limits
    /// (or before a merge) is refused.
    pub restriction: String,
    /// A unified view of a person's records ([`crate::mpi::unified`]).
    pub unified: bool,
}

/// Makes the plans a unified view where they name a golden Patient (see
/// [`crate::mpi::unified::expand`]); the persons join `restriction`. Returns whether any did.
pub fn unify(
    store: &Store,
    plans: &mut [(ResourceType, Vec<Clause>)],
    restriction: &mut String,
) -> Result<bool, FhirError> {
    let mut unified = false;
    for (_, clauses) in plans.iter_mut() {
        let persons = crate::mpi::unified::expand(store, clauses)?;
        // Every type names the same persons: the scope needs them once.
        if !persons.is_empty() && !unified {
            restriction.push_str(&persons);
        }
        unified |= !persons.is_empty();
    }
    Ok(unified)
}

impl CrossTypeRequest {
    /// The cursor scope and the page's own link (`next` and `previous` repeat it with a cursor).
    fn scope_and_self_url(&self) -> (String, String) {
        let CrossTypeRequest { kind, path, base, restriction, .. } = self;
        let query = query_string(&self.applied);
        let (scope, page_url) = if path.is_empty() {
            (format!("{kind}|{query}{restriction}"), base.clone())
        } else {
            (format!("{kind}|{path}|{query}{restriction}"), format!("{base}/{path}"))
        };
        let self_url = if query.is_empty() { page_url } else { format!("{page_url}?{query}") };
        (scope, self_url)
    }
}

/// Runs `request`'s page on the blocking pool within `budget`; `extend` then adds to the page
/// what belongs to it as of the logical time the page shows (`$everything`'s referenced
/// resources).
pub async fn run_across_types(
    store: Store,
    budget: Budget,
    request: CrossTypeRequest,
    extend: impl FnOnce(&Store, &mut BundleOut, u64) -> Result<(), FhirError> + Send + 'static,
) -> Result<BundleOut, FhirError> {
    let kind = request.kind;
    actix_web::web::block(move || {
        let (mut bundle, t) = page_across_types(&store, &request, budget)?;
        extend(&store, &mut bundle, t)?;
        Ok(bundle)
    })
    .await
    .map_err(|_| FhirError::fault(kind))?
}

/// One searchset page of `request`, continuing forward or, for a `previous` link, backward;
/// `budget` bounds its index work. A cursor is a direction byte (0 forward: after the position;
/// 1 backward: before it) and [`encode`]'s bytes. Also returns the logical time the page shows,
/// for callers that add more resources to it as of that same time.
fn page_across_types(store: &Store, request: &CrossTypeRequest, budget: Budget) -> Result<(BundleOut, u64), FhirError> {
    let CrossTypeRequest { plans, count, token, base, .. } = request;
    let (count, token) = (*count, token.as_deref());
    let (scope, self_url) = request.scope_and_self_url();
    let (scope, self_url) = (scope.as_str(), self_url.as_str());
    let secret = store.cursor_key().clone();
    let snapshot = store.snapshot()?;
    let invalid = || FhirError::incorrect(IssueCode::Invalid, "the paging cursor is invalid");
    let (t, backward, start_type, start) = match token {
        Some(token) => {
            let payload = cursor::decode_bytes(&secret, scope, token)?;
            let (&direction, rest) = payload.split_first().ok_or_else(invalid)?;
            let (t, type_index, position) = decode(rest).ok_or_else(invalid)?;
            cursor::check_readable(&secret, t)?;
            (t, direction == 1, type_index, position)
        }
        None => (snapshot.t(), false, 0, None),
    };
    if start_type > plans.len() {
        return Err(invalid());
    }
    let index = snapshot.index();
    let budgeted = Budgeted::new(&index, budget);
    let view: &dyn IndexView = &budgeted;
    // Collect `count + 1` matches in the direction of travel: the extra one only tells whether
    // more follow. Each match is `(type index, position, id, version)`.
    let mut found: Vec<(usize, Position, String, u64)> = Vec::new();
    let mut type_index = start_type;
    let mut position = start;
    loop {
        if type_index >= plans.len() || found.len() > count {
            break;
        }
        let (resource_type, clauses) = &plans[type_index];
        let (query, _) = engine::Query::plan(view, *resource_type, clauses, t)?;
        let wanted = count + 1 - found.len();
        let page = engine::run_directed(&query, position.as_ref(), Some(wanted), backward)?;
        // In the order of travel.
        let mut matches: Vec<((String, u64), Position)> =
            page.matches.iter().cloned().zip(page.positions.iter().cloned()).collect();
        if backward {
            matches.reverse();
        }
        for ((id, version), resume) in matches {
            found.push((type_index, resume, id, version));
        }
        if page.next.is_some() {
            break;
        }
        position = None;
        if backward {
            if type_index == 0 {
                break;
            }
            type_index -= 1;
        } else {
            type_index += 1;
        }
    }
    let more = found.len() > count;
    found.truncate(count);
    if backward {
        found.reverse();
    }
    let mut bundle = BundleOut::new("searchset");
    bundle.link.push(Link { relation: "self", url: self_url.to_owned() });
    let mut unifier = request.unified.then(|| crate::mpi::unified::Unifier::new(store, &snapshot, view, t, base));
    for (index, _, id, version) in &found {
        let (resource_type, clauses) = &plans[*index];
        let resource_type = *resource_type;
        let stored = snapshot
            .version(resource_type, id, *version)?
            .ok_or_else(|| FhirError::fault("search: an indexed version is missing"))?;
        let body = match &mut unifier {
            Some(unifier) => {
                let in_view =
                    |id: &str, version: u64| engine::matches_clauses(view, resource_type, clauses, id, version, t);
                match unifier.present(resource_type, id, stored.body, &in_view)? {
                    Some(body) => body,
                    // Another report of the same fact stands for it.
                    None => continue,
                }
            }
            None => stored.body,
        };
        bundle.entry.push(EntryOut {
            full_url: Some(format!("{base}/{resource_type}/{id}")),
            resource: Some(StoredJson::new(crate::mpi::golden::presented(store, resource_type, id, body))),
            search: Some(SearchMode::Match),
            ..Default::default()
        });
    }
    let link = |relation: &'static str, direction: u8, (index, position): (&usize, &Position)| {
        let mut payload = vec![direction];
        payload.extend(encode(t, *index, position));
        let separator = if self_url.contains('?') { "&" } else { "?" };
        Link {
            relation,
            url: format!("{self_url}{separator}_cursor={}", cursor::encode_bytes(&secret, scope, &payload)),
        }
    };
    let earlier = if backward { more } else { token.is_some() };
    let later = if backward { token.is_some() } else { more };
    if let (true, Some((index, position, _, _))) = (earlier, found.first()) {
        bundle.link.push(link("previous", 1, (index, position)));
    }
    if let (true, Some((index, position, _, _))) = (later, found.last()) {
        bundle.link.push(link("next", 0, (index, position)));
    }
    Ok((bundle, t))
}

/// What must be escaped in a query component; `:`, `/`, `,` and `$` stay readable.
const QUERY_COMPONENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b'<')
    .add(b'=')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b'\\')
    .add(b']')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

/// `name=value&...` with names and values percent-encoded again, so that links built from
/// decoded parameters (values holding `+ & # %` or spaces) repeat the same query.
pub fn query_string(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| {
            format!("{}={}", utf8_percent_encode(name, QUERY_COMPONENT), utf8_percent_encode(value, QUERY_COMPONENT))
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_round_trip_through_decoding() {
        let pairs: Vec<(String, String)> = [
            ("code:text", "Blood+pressure & #1 %ile"),
            ("_since", "2024-01-01T00:00:00+02:00"),
            ("identifier", r"http://s|a\|b\,c"),
            ("name", "Nguyễn = ?"),
            ("_type", "Observation,Patient"),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v.to_owned()))
        .collect();
        let query = query_string(&pairs);
        assert!(!query.contains(' ') && !query.contains('+') && !query.contains('#'), "{query}");
        assert_eq!(super::super::request::decode_pairs(&query), pairs);
    }
}
