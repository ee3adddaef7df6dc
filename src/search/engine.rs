//! Running a search on a snapshot: plan, then scan and probe.
//!
//! The planner estimates each scannable clause by counting its live index entries (up to
//! [`ESTIMATE_CAP`], in rounds, see [`plan`]) and picks the smallest as the *driver*; a lone
//! scannable clause drives without being counted. Execution scans the driver's ranges
//! in key order; every candidate `(id, version)` is checked against the other clauses by
//! probing `resource_search_param_value`, never by loading resources. When no clause can be
//! scanned (only `:not` or `:missing=true`), the driver is the list of the type's resources.
//!
//! Everything is evaluated as of a logical time `t` (the first page's snapshot), so later
//! pages of the same search see exactly the same matches, whatever was written in between.

use std::ops::ControlFlow;

use super::query::{Clause, Pred, ScanRange};
use crate::fhir::{FhirError, ResourceType};
use crate::store::IndexView;

/// Counting stops here when estimating a clause's selectivity.
pub const ESTIMATE_CAP: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    /// Scan the ranges of this clause.
    Clause(usize),
    /// Scan all resources of the type.
    TypeScan,
}

/// Where a page ended: the next page resumes right after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    Index { alternative: usize, key: Vec<u8> },
    Type { id: String },
}

#[derive(Debug)]
pub struct Page {
    /// `(id, version)` of each match, in driver order.
    pub matches: Vec<(String, u64)>,
    /// Set when more matches follow in the direction of travel: resume from here.
    pub next: Option<Position>,
    /// The position of each match, parallel to `matches` (so in forward order): what the
    /// cursors of `previous` and `next` links point at.
    pub positions: Vec<Position>,
}

/// How many live index entries the planner counted for one scannable clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Estimate {
    /// The clause's position in the query.
    pub clause: usize,
    pub count: usize,
    /// Counting stopped at `count`: the clause has at least that many entries.
    pub at_least: bool,
}

/// A planned search over one type as of logical time `t`: the view it reads (a snapshot, or
/// one within a work budget), the clauses every match satisfies, and the driver its walk scans.
#[derive(Clone, Copy)]
pub struct Query<'a> {
    pub view: &'a dyn IndexView,
    pub resource_type: ResourceType,
    pub clauses: &'a [Clause],
    pub driver: Driver,
    pub t: u64,
}

impl<'a> Query<'a> {
    /// Plans the search (see [`plan`]); also returns the estimates the plan was based on.
    pub fn plan(
        view: &'a dyn IndexView,
        resource_type: ResourceType,
        clauses: &'a [Clause],
        t: u64,
    ) -> Result<(Query<'a>, Vec<Estimate>), FhirError> {
        let (driver, estimates) = plan(view, resource_type, clauses, t)?;
        Ok((Query { view, resource_type, clauses, driver, t }, estimates))
    }
}

/// A human-readable account of the plan, for `_explain` and the debug log.
pub fn describe(clauses: &[Clause], driver: Driver, estimates: &[Estimate]) -> String {
    let driver_text = match driver {
        Driver::Clause(i) => format!("scan {} ({} ranges)", clauses[i].written, clauses[i].ranges().len()),
        Driver::TypeScan => "scan all resources of the type".to_owned(),
    };
    let probes: Vec<&str> = clauses
        .iter()
        .enumerate()
        .filter(|(i, _)| Driver::Clause(*i) != driver)
        .map(|(_, c)| c.written.as_str())
        .collect();
    let estimates = if estimates.is_empty() && matches!(driver, Driver::Clause(_)) {
        "not counted, one parameter can drive".to_owned()
    } else {
        estimates
            .iter()
            .map(|e| format!("{}≈{}{}", clauses[e.clause].written, e.count, if e.at_least { "+" } else { "" }))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("{driver_text}; probe [{}]; estimates [{estimates}]", probes.join(", "))
}

/// The planner counts every candidate clause up to each of these in turn, stopping at the
/// first round in which one clause ends below the round's limit: that clause is the most
/// selective. A query whose smallest clause has `n` entries costs about `clauses × n` to plan
/// (at least one round), not `ESTIMATE_CAP` for each clause counted before it.
const ESTIMATE_ROUNDS: [usize; 2] = [100, ESTIMATE_CAP];

/// Chooses the driver: the scannable clause with the fewest live index entries, or a scan of
/// the type when none is scannable. A single scannable clause is the driver without being
/// counted, so a first page costs the same however many resources match (the work is that of
/// the page). Returns the driver with the estimates it was based on.
fn plan(
    snapshot: &dyn IndexView,
    resource_type: ResourceType,
    clauses: &[Clause],
    t: u64,
) -> Result<(Driver, Vec<Estimate>), FhirError> {
    let candidates: Vec<usize> =
        clauses.iter().enumerate().filter(|(_, c)| c.scannable()).map(|(index, _)| index).collect();
    match candidates.as_slice() {
        [] => return Ok((Driver::TypeScan, Vec::new())),
        [only] => return Ok((Driver::Clause(*only), Vec::new())),
        _ => {}
    }
    let mut estimates = Vec::new();
    for round_limit in ESTIMATE_ROUNDS {
        estimates.clear();
        // Within a round, counting stops as soon as a clause cannot beat the most selective
        // one found so far.
        let mut cap = round_limit;
        for &index in &candidates {
            let mut count = 0usize;
            for range in clauses[index].ranges() {
                snapshot.scan_index(resource_type, &range.key, &range.lo, range.hi.as_deref(), None, t, &mut |_| {
                    count += 1;
                    if count >= cap { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
                })?;
                if count >= cap {
                    break;
                }
            }
            estimates.push(Estimate { clause: index, count, at_least: count >= cap });
            cap = cap.min(count.max(1));
        }
        if estimates.iter().any(|e| !e.at_least) {
            break;
        }
    }
    let driver =
        estimates.iter().min_by_key(|e| (e.count, e.at_least)).map_or(Driver::TypeScan, |e| Driver::Clause(e.clause));
    Ok((driver, estimates))
}

/// Whether the driver has at least `wanted` live index entries (a type scan counts as
/// [`ESTIMATE_CAP`]), counting no further than that.
pub fn driver_has_at_least(query: &Query<'_>, wanted: usize) -> Result<bool, FhirError> {
    let Query { view: snapshot, resource_type, clauses, driver, t } = *query;
    let Driver::Clause(index) = driver else { return Ok(wanted <= ESTIMATE_CAP) };
    let mut count = 0usize;
    for range in clauses[index].ranges() {
        if count >= wanted {
            break;
        }
        snapshot.scan_index(resource_type, &range.key, &range.lo, range.hi.as_deref(), None, t, &mut |_| {
            count += 1;
            if count >= wanted { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        })?;
    }
    Ok(count >= wanted)
}

/// Runs the search from `start` until `limit` matches are found (`None`: all of them).
pub fn run(query: &Query<'_>, start: Option<&Position>, limit: Option<usize>) -> Result<Page, FhirError> {
    run_directed(query, start, limit, false)
}

/// Like [`run`]; with `backward`, the page ends right before `start` (the matches preceding
/// it, returned in forward order) and `next` is where still earlier matches end.
pub fn run_directed(
    query: &Query<'_>,
    start: Option<&Position>,
    limit: Option<usize>,
    backward: bool,
) -> Result<Page, FhirError> {
    let options = Walk { start, limit, backward, candidate_limit: None, count_only: false };
    Ok(walk(query, &options)?.page)
}

/// How far and how [`walk`] goes.
struct Walk<'a> {
    start: Option<&'a Position>,
    /// Stop once this many matches are found (the next one becomes `Page::next`).
    limit: Option<usize>,
    backward: bool,
    /// Stop after examining this many driver candidates (for sampling).
    candidate_limit: Option<usize>,
    /// Count matches without keeping them (memory stays constant).
    count_only: bool,
}

/// What [`walk`] found.
struct Walked {
    page: Page,
    /// Matches found (equal to `page.matches.len()` unless counting only).
    matched: usize,
    /// Distinct driver candidates examined.
    candidates: usize,
    /// Whether the walk stopped at `candidate_limit` before the driver was exhausted.
    sampled: bool,
}

/// The one loop behind paging, counting and sampling: scans the driver, checks each candidate
/// against the other clauses, and reports matches in driver order.
fn walk(query: &Query<'_>, options: &Walk<'_>) -> Result<Walked, FhirError> {
    let Query { view: snapshot, resource_type, clauses, driver, t } = *query;
    let Walk { start, limit, backward, candidate_limit, count_only } = *options;
    if matches_nothing(clauses) {
        let page = Page { matches: Vec::new(), next: None, positions: Vec::new() };
        return Ok(Walked { page, matched: 0, candidates: 0, sampled: false });
    }
    let mut matches: Vec<(String, u64)> = Vec::new();
    let mut matched = 0usize;
    let mut candidates = 0usize;
    let mut sampled = false;
    let mut last_position: Option<Position> = None;
    let mut positions: Vec<Position> = Vec::new();
    let mut next = None;
    let mut failure: Option<FhirError> = None;
    // Checks every clause except the driver against the candidate's indexed values.
    let others_match = |id: &str, version: u64, skip: Option<usize>| -> Result<bool, FhirError> {
        clauses_match(query, id, version, skip)
    };

    match driver {
        Driver::TypeScan => {
            let after = match start {
                Some(Position::Type { id }) => Some(id.as_str()),
                _ => None,
            };
            let mut visit = |id: &str, version: u64| {
                if candidate_limit.is_some_and(|cap| candidates == cap) {
                    sampled = true;
                    return ControlFlow::Break(());
                }
                candidates += 1;
                match others_match(id, version, None) {
                    Err(error) => {
                        failure = Some(error);
                        return ControlFlow::Break(());
                    }
                    Ok(false) => return ControlFlow::Continue(()),
                    Ok(true) => {}
                }
                if limit.is_some_and(|limit| matched == limit) {
                    next = last_position.take();
                    return ControlFlow::Break(());
                }
                matched += 1;
                if !count_only {
                    matches.push((id.to_owned(), version));
                    last_position = Some(Position::Type { id: id.to_owned() });
                    positions.extend(last_position.clone());
                }
                ControlFlow::Continue(())
            };
            if backward {
                snapshot.scan_type_rev(resource_type, after, t, &mut visit)?;
            } else {
                snapshot.scan_type(resource_type, after, t, &mut visit)?;
            }
        }
        Driver::Clause(driver_index) => {
            let clause = &clauses[driver_index];
            let ranges = clause.ranges();
            let needs_dedup = ranges.len() > 1
                || clause.missing.is_some()
                || !clause.alternatives.iter().all(|a| matches!(a.pred, Pred::Equals(_)));
            let (first_alternative, resume_key) = match start {
                Some(Position::Index { alternative, key }) => (*alternative, Some(key.as_slice())),
                _ if backward => (ranges.len().saturating_sub(1), None),
                _ => (0, None),
            };
            let order: Vec<usize> = if backward {
                (0..=first_alternative).rev().collect()
            } else {
                (first_alternative..ranges.len()).collect()
            };
            'ranges: for alternative in order {
                let range = &ranges[alternative];
                let (key, lo, hi) = (&range.key, &range.lo, &range.hi);
                let bound = if alternative == first_alternative { resume_key } else { None };
                let mut stop = false;
                let mut visit = |hit: crate::store::IndexHit<'_>| {
                    if !range.accepts(clause, &hit.value) {
                        return ControlFlow::Continue(());
                    }
                    let outcome = (|| -> Result<Option<bool>, FhirError> {
                        if needs_dedup {
                            // The values of every key an earlier range (or this one) reads.
                            let mut values_by_key: Vec<(&str, Vec<Vec<u8>>)> = Vec::new();
                            for earlier in &ranges[..=alternative] {
                                let key = earlier.key.as_str();
                                if !values_by_key.iter().any(|(k, _)| *k == key) {
                                    values_by_key
                                        .push((key, snapshot.probe(resource_type, &hit.id, hit.version, key)?));
                                }
                            }
                            if earlier_hit_exists(clause, &ranges, &values_by_key, alternative, &hit.value) {
                                // Seen before: not a new candidate.
                                return Ok(None);
                            }
                        }
                        Ok(Some(others_match(&hit.id, hit.version, Some(driver_index))?))
                    })();
                    let outcome = match outcome {
                        Ok(None) => return ControlFlow::Continue(()),
                        Ok(Some(_)) if candidate_limit.is_some_and(|cap| candidates == cap) => {
                            sampled = true;
                            stop = true;
                            return ControlFlow::Break(());
                        }
                        Ok(Some(hit)) => {
                            candidates += 1;
                            Ok(hit)
                        }
                        Err(error) => Err(error),
                    };
                    match outcome {
                        Err(error) => {
                            failure = Some(error);
                            stop = true;
                            return ControlFlow::Break(());
                        }
                        Ok(false) => return ControlFlow::Continue(()),
                        Ok(true) => {}
                    }
                    if limit.is_some_and(|limit| matched == limit) {
                        next = last_position.take();
                        stop = true;
                        return ControlFlow::Break(());
                    }
                    matched += 1;
                    if !count_only {
                        matches.push((hit.id, hit.version));
                        last_position = Some(Position::Index { alternative, key: hit.key.to_vec() });
                        positions.extend(last_position.clone());
                    }
                    ControlFlow::Continue(())
                };
                if backward {
                    snapshot.scan_index_rev(resource_type, key, lo, hi.as_deref(), bound, t, &mut visit)?;
                } else {
                    snapshot.scan_index(resource_type, key, lo, hi.as_deref(), bound, t, &mut visit)?;
                }
                if stop {
                    break 'ranges;
                }
            }
        }
    }
    if let Some(error) = failure {
        return Err(error);
    }
    if backward {
        matches.reverse();
        positions.reverse();
    }
    Ok(Walked { page: Page { matches, next, positions }, matched, candidates, sampled })
}

/// Whether version `version` of resource `id` satisfies every clause of `query` except `skip`,
/// by its indexed values as of the query's time.
fn clauses_match(query: &Query<'_>, id: &str, version: u64, skip: Option<usize>) -> Result<bool, FhirError> {
    let Query { view: snapshot, resource_type, clauses, t, .. } = *query;
    for (index, clause) in clauses.iter().enumerate() {
        if Some(index) == skip {
            continue;
        }
        if !clause.any_of.is_empty() {
            let mut hit = false;
            for conjunction in &clause.any_of {
                if clauses_match(&Query { clauses: conjunction, ..*query }, id, version, None)? {
                    hit = true;
                    break;
                }
            }
            if !hit {
                return Ok(false);
            }
            continue;
        }
        // Exact values are checked by point lookups in the scanned index, whose pages for a
        // popular value stay cached; other predicates read the resource's index record.
        let all_exact =
            clause.missing.is_none() && clause.alternatives.iter().all(|a| matches!(a.pred, Pred::Equals(_)));
        if all_exact && !clause.alternatives.is_empty() {
            let mut hit = false;
            for (position, alternative) in clause.alternatives.iter().enumerate() {
                let Pred::Equals(value) = &alternative.pred else { unreachable!("checked above") };
                if snapshot.has_value(resource_type, clause.key_of(position), value, id, version, t)? {
                    hit = true;
                    break;
                }
            }
            if hit == clause.negated {
                return Ok(false);
            }
            continue;
        }
        let keys = clause.keys();
        let mut probed = Vec::with_capacity(keys.len());
        for key in &keys {
            probed.push(snapshot.probe(resource_type, id, version, key)?);
        }
        let values = |key: &str| keys.iter().position(|k| *k == key).map_or(&[][..], |i| probed[i].as_slice());
        if !clause.matches_keys(&values) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether a positive clause without alternatives (a chain whose inner search found nothing)
/// makes the whole query match nothing.
fn matches_nothing(clauses: &[Clause]) -> bool {
    clauses.iter().any(|c| c.any_of.is_empty() && c.missing.is_none() && !c.negated && c.alternatives.is_empty())
}

/// Whether version `version` of resource `id` (of `resource_type`) satisfies every clause, by
/// its index entries as of `t`.
pub fn matches_clauses(
    view: &dyn IndexView,
    resource_type: ResourceType,
    clauses: &[Clause],
    id: &str,
    version: u64,
    t: u64,
) -> Result<bool, FhirError> {
    clauses_match(&Query { view, resource_type, clauses, driver: Driver::TypeScan, t }, id, version, None)
}

/// A resource whose values for the driver's key fall into several scanned ranges (or several
/// times into one) is reported at its first position only: the one with the lowest
/// alternative, then the lowest value.
fn earlier_hit_exists(
    clause: &Clause,
    ranges: &[ScanRange],
    values_by_key: &[(&str, Vec<Vec<u8>>)],
    alternative: usize,
    current: &[u8],
) -> bool {
    ranges.iter().enumerate().take(alternative + 1).any(|(index, range)| {
        let values =
            values_by_key.iter().find(|(k, _)| *k == range.key.as_str()).map_or(&[][..], |(_, v)| v.as_slice());
        values.iter().any(|value| {
            range.contains(value) && range.accepts(clause, value) && (index < alternative || value.as_slice() < current)
        })
    })
}

/// The number of matches.
pub fn count(query: &Query<'_>) -> Result<usize, FhirError> {
    let Query { view: snapshot, resource_type, clauses, driver, t } = *query;
    // One clause of one exact value: each live entry is one match, no resource can be counted
    // twice, and nothing needs decoding.
    if let ([clause], Driver::Clause(0)) = (clauses, driver) {
        let single_exact = clause.missing.is_none()
            && clause.alternatives.len() == 1
            && matches!(clause.alternatives[0].pred, Pred::Equals(_));
        if single_exact && !clause.negated {
            let range = &clause.ranges()[0];
            return snapshot.count_index(resource_type, &range.key, &range.lo, range.hi.as_deref(), t);
        }
    }
    let options = Walk { start: None, limit: None, backward: false, candidate_limit: None, count_only: true };
    Ok(walk(query, &options)?.matched)
}

/// Driver candidates examined to estimate a query's total.
pub const ESTIMATE_SAMPLE: usize = 1000;

/// An estimate of the number of matches of the whole query (`_total=estimate`): exact when the
/// driver has at most [`ESTIMATE_SAMPLE`] candidates; otherwise the share of matches among the
/// first candidates, times the driver's size (its index entries, counted without decoding).
pub fn estimate(query: &Query<'_>) -> Result<usize, FhirError> {
    estimate_sampled(query, ESTIMATE_SAMPLE)
}

/// Of the first `sample` candidates of the driver, how many match the whole query, and how
/// many were examined: the share of the driver's entries that are matches.
pub fn sample_share(query: &Query<'_>, sample: usize) -> Result<(usize, usize), FhirError> {
    let options = Walk { start: None, limit: None, backward: false, candidate_limit: Some(sample), count_only: true };
    let walked = walk(query, &options)?;
    Ok((walked.matched, walked.candidates))
}

/// [`estimate`] with a chosen sample size.
pub fn estimate_sampled(query: &Query<'_>, sample: usize) -> Result<usize, FhirError> {
    let Query { view: snapshot, resource_type, clauses, driver, t } = *query;
    let options = Walk { start: None, limit: None, backward: false, candidate_limit: Some(sample), count_only: true };
    let sample = walk(query, &options)?;
    if !sample.sampled || sample.candidates == 0 {
        return Ok(sample.matched);
    }
    let driver_size = match driver {
        Driver::Clause(index) => {
            let mut size = 0;
            for range in clauses[index].ranges() {
                size += snapshot.count_index(resource_type, &range.key, &range.lo, range.hi.as_deref(), t)?;
            }
            size
        }
        // Every live resource has exactly one `_id` entry.
        Driver::TypeScan => snapshot.count_index(resource_type, "_id", &[], None, t)?,
    };
    let share = sample.matched as f64 / sample.candidates as f64;
    Ok((driver_size.max(sample.candidates) as f64 * share).round() as usize)
}

/// One `_sort` key: the index key to read, how to interpret its values, and the direction.
#[derive(Debug, Clone)]
pub struct SortKey {
    pub key: String,
    pub kind: crate::search::registry::ParamKind,
    pub descending: bool,
}

#[derive(Debug, Clone, PartialEq, PartialOrd)]
enum SortValue {
    Number(f64),
    Bytes(Vec<u8>),
}

/// The value a resource sorts by: its smallest value ascending, its largest descending
/// (FHIR's rule for repeating elements); `None` when it has none (sorted last).
///
/// A date is a range, and ranges are ordered by their start, then by their end (a period
/// sorts where it begins, as HAPI sorts dates by their low bound): so the largest of a
/// resource's dates is the one that begins last. That is exactly the order of the index
/// values (`start·end`, order-preserving), which lets [`sorted_page`] read it from the index.
fn sort_value(values: &[Vec<u8>], key: &SortKey) -> Option<SortValue> {
    use crate::search::registry::ParamKind;
    use crate::search::values::{decode_f64, decode_quantity, decode_range};
    let candidates: Vec<SortValue> = values
        .iter()
        .filter_map(|v| match key.kind {
            ParamKind::Date => decode_range(v).map(|_| SortValue::Bytes(v.clone())),
            ParamKind::Number => decode_f64(v).map(SortValue::Number),
            ParamKind::Quantity => decode_quantity(v).and_then(|(number, _)| decode_f64(number)).map(SortValue::Number),
            // Tokens (`code 0x00 system`) sort by their code.
            ParamKind::Token => Some(SortValue::Bytes(v.split(|byte| *byte == 0).next().unwrap_or(v).to_vec())),
            _ => Some(SortValue::Bytes(v.clone())),
        })
        .collect();
    let pick = |a: &SortValue, b: &SortValue| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal);
    if key.descending { candidates.into_iter().max_by(pick) } else { candidates.into_iter().min_by(pick) }
}

/// All matches ordered by `keys`, then by id (ascending, or descending when the last key
/// is), so the order is total, pages are stable, and a single key orders ties exactly as its
/// index read in that direction does.
pub fn sorted(query: &Query<'_>, keys: &[SortKey]) -> Result<Vec<(String, u64)>, FhirError> {
    let Query { view, resource_type, .. } = *query;
    let matches = run(query, None, None)?.matches;
    let mut rows = Vec::with_capacity(matches.len());
    for (id, version) in matches {
        let mut values = Vec::with_capacity(keys.len());
        for key in keys {
            values.push(sort_value(&view.probe(resource_type, &id, version, &key.key)?, key));
        }
        rows.push((values, id, version));
    }
    rows.sort_by(|a, b| {
        for (index, key) in keys.iter().enumerate() {
            let ordering = match (&a.0[index], &b.0[index]) {
                (None, None) => std::cmp::Ordering::Equal,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some(_), None) => std::cmp::Ordering::Less,
                (Some(x), Some(y)) => {
                    let natural = x.partial_cmp(y).unwrap_or(std::cmp::Ordering::Equal);
                    if key.descending { natural.reverse() } else { natural }
                }
            };
            if ordering != std::cmp::Ordering::Equal {
                return ordering;
            }
        }
        let by_id = a.1.cmp(&b.1);
        if keys.last().is_some_and(|key| key.descending) { by_id.reverse() } else { by_id }
    });
    Ok(rows.into_iter().map(|(_, id, version)| (id, version)).collect())
}

/// Whether `keys` can be read in order from an index: a single key of a date parameter that
/// has entries of its own (not an alias of others). Its index values order exactly as
/// [`sort_value`] orders dates.
pub fn index_sortable(resource_type: ResourceType, keys: &[SortKey]) -> bool {
    use crate::search::registry::{ParamKind, registry};
    match keys {
        [key] => {
            key.kind == ParamKind::Date
                && registry().get(resource_type, &key.key).is_some_and(|def| def.alias_of.is_empty())
        }
        _ => false,
    }
}

/// Matches found while travelling one way, in travel order.
#[derive(Default)]
struct Travelled {
    matches: Vec<(String, u64)>,
    positions: Vec<Position>,
    /// Another match follows in the direction of travel.
    more: bool,
}

/// One page of a search sorted by `key` (see [`index_sortable`]), read from the key's index in
/// order instead of sorting every match: the same order as [`sorted`].
///
/// The sorted sequence is the resources with a value, in index order (reversed when
/// descending), each at its sort value (its smallest value ascending, its largest descending,
/// so it is reported once), then those without a value, by id (descending when the key is).
/// Positions are index keys in the first part and ids in the second (`Position::Type`).
/// `start`, `limit` and `backward` work as in [`run_directed`]; the page's matches are in
/// sorted order.
pub fn sorted_page(
    query: &Query<'_>,
    key: &SortKey,
    start: Option<&Position>,
    limit: usize,
    backward: bool,
) -> Result<Page, FhirError> {
    let Query { resource_type, clauses, .. } = *query;
    let nothing = Page { matches: Vec::new(), next: None, positions: Vec::new() };
    if matches_nothing(clauses) {
        return Ok(nothing);
    }
    // Resources without a value: the query plus `key:missing=true`, visited by id.
    let mut without_value = clauses.to_vec();
    let missing = super::query::parse_clause(resource_type, &format!("{}:missing", key.key), "true", "")?
        .ok_or_else(|| FhirError::fault("sort: the sort parameter is unknown"))?;
    without_value.push(missing);
    // Travelling forward the valued part comes first; backward, the part without values.
    let starts_valued = match start {
        Some(Position::Index { .. }) => true,
        Some(Position::Type { .. }) => false,
        None => !backward,
    };
    let mut travelled = Travelled::default();
    let phases: [bool; 2] = if starts_valued { [true, false] } else { [false, true] };
    for (step, valued) in phases.into_iter().enumerate() {
        // The second part is entered only in the direction that leads to it.
        if step == 1 && valued != backward {
            break;
        }
        let resume = if step == 0 { start } else { None };
        let remaining = limit - travelled.matches.len();
        let part = if valued {
            valued_part(query, key, resume, remaining, backward)?
        } else {
            let without_value = Query { clauses: &without_value, ..*query };
            without_value_part(&without_value, key, resume, remaining, backward)?
        };
        travelled.matches.extend(part.matches);
        travelled.positions.extend(part.positions);
        travelled.more = part.more;
        if part.more {
            break;
        }
    }
    let next = if travelled.more { travelled.positions.last().cloned() } else { None };
    let Travelled { mut matches, mut positions, .. } = travelled;
    if backward {
        matches.reverse();
        positions.reverse();
    }
    Ok(Page { matches, next, positions })
}

/// The resources that match `without_value` (the query and `key:missing=true`), by id
/// (descending when the key is), from the id after (or, `backward`, before) `start`; at most
/// `limit` of them (`more` when another follows; `limit` 0 only looks for one).
///
/// With a scannable driver, its matches are collected and ordered by id (work in proportion
/// to the driver, not to every resource of the type); otherwise the type is walked by id.
fn without_value_part(
    without_value: &Query<'_>,
    key: &SortKey,
    start: Option<&Position>,
    limit: usize,
    backward: bool,
) -> Result<Travelled, FhirError> {
    // Ids ascend in the sequence unless the key descends.
    let reverse = key.descending != backward;
    let after = match start {
        Some(Position::Type { id }) => Some(id.as_str()),
        _ => None,
    };
    let (matches, more) = match without_value.driver {
        Driver::Clause(_) => {
            let mut all = run(without_value, None, None)?.matches;
            all.sort();
            if reverse {
                all.reverse();
            }
            let beyond = |id: &str| after.is_none_or(|after| if reverse { id < after } else { id > after });
            let mut following = all.into_iter().filter(|(id, _)| beyond(id));
            let matches: Vec<(String, u64)> = following.by_ref().take(limit).collect();
            (matches, following.next().is_some())
        }
        Driver::TypeScan => {
            let options =
                Walk { start, limit: Some(limit.max(1)), backward: reverse, candidate_limit: None, count_only: false };
            let walked = walk(without_value, &options)?.page;
            let mut matches = walked.matches;
            if reverse {
                matches.reverse();
            }
            if limit == 0 { (Vec::new(), !matches.is_empty()) } else { (matches, walked.next.is_some()) }
        }
    };
    let positions = matches.iter().map(|(id, _)| Position::Type { id: id.clone() }).collect();
    Ok(Travelled { matches, positions, more })
}

/// The resources with a value for `key`, from the entry after (or, `backward`, before) `start`,
/// at most `limit` of them (`more` when another follows; `limit` 0 only looks for one).
fn valued_part(
    query: &Query<'_>,
    key: &SortKey,
    start: Option<&Position>,
    limit: usize,
    backward: bool,
) -> Result<Travelled, FhirError> {
    let Query { view: snapshot, resource_type, t, .. } = *query;
    let resume = match start {
        Some(Position::Index { key, .. }) => Some(key.as_slice()),
        _ => None,
    };
    let mut travelled = Travelled::default();
    let mut failure = None;
    let mut visit = |hit: crate::store::IndexHit<'_>| {
        let outcome = (|| -> Result<bool, FhirError> {
            // The clauses first: most entries fail them, usually by a point lookup, and only
            // matches need their record read.
            if !clauses_match(query, &hit.id, hit.version, None)? {
                return Ok(false);
            }
            // A resource is reported at its sort value only: the largest of its values when
            // descending, the smallest ascending. Values of one version are distinct.
            let values = snapshot.probe(resource_type, &hit.id, hit.version, &key.key)?;
            Ok(if key.descending {
                values.iter().all(|v| v.as_slice() <= hit.value.as_slice())
            } else {
                values.iter().all(|v| v.as_slice() >= hit.value.as_slice())
            })
        })();
        match outcome {
            Err(error) => {
                failure = Some(error);
                ControlFlow::Break(())
            }
            Ok(false) => ControlFlow::Continue(()),
            Ok(true) if travelled.matches.len() == limit => {
                travelled.more = true;
                ControlFlow::Break(())
            }
            Ok(true) => {
                travelled.matches.push((hit.id, hit.version));
                travelled.positions.push(Position::Index { alternative: 0, key: hit.key.to_vec() });
                ControlFlow::Continue(())
            }
        }
    };
    if key.descending != backward {
        snapshot.scan_index_rev(resource_type, &key.key, &[], None, resume, t, &mut visit)?;
    } else {
        snapshot.scan_index(resource_type, &key.key, &[], None, resume, t, &mut visit)?;
    }
    match failure {
        Some(error) => Err(error),
        None => Ok(travelled),
    }
}
