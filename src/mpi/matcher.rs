//! The matcher: reads committed Patient versions from the change feed (type history after the
//! index's cursor) and keeps the links and golden Patients in step with them.
//!
//! One batch ([`run_batch`]) reads up to [`BATCH`] changes after the cursor, decides every
//! link, rebuilds the golden Patients it touched, and commits the golden Patients, the links
//! and the new cursor in one write: a crash before that commit leaves the cursor where it was
//! and the batch is done again; after it, nothing is lost. Matching never runs inside a
//! client's write request. A batch can be planned ([`plan`]) over the one before while that
//! one's commit is under way; it is committed only after it.
//!
//! For one source Patient: its record and blocking keys are filed; the Patients sharing a key
//! are ranked and the likeliest [`MAX_CANDIDATES`] scored (see [`candidates`]); the best golden
//! Patient at or above the match threshold gets an AUTO MATCH link (the one it already has
//! wins a tie), others above it are marked POSSIBLE_DUPLICATE of it, and those between the
//! thresholds get POSSIBLE_MATCH links for review. No match: a new golden Patient. A MANUAL
//! MATCH is kept as it is, and golden Patients the Patient has a NO_MATCH or a MANUAL link to
//! are never proposed. An identifier of an enterprise system (the profile's
//! `enterprise_identifier_systems`) decides on its own when both records have one: the same
//! value is a match, different values are not.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde_json::Value;

use super::blocking::{MAX_KEYS, Rules, keys};
use super::compare::{Nicknames, nicknames};
use super::golden::{self, Survivorship};
use super::record::PersonRecord;
use super::score::{Parameters, compare_pair, probability_of};
use super::state::{self, Entry, Link, LinkSource, MatchResult, Overlay};
use crate::fhir::json::{format_instant, now_micros};
use crate::fhir::{FhirError, ResourceType};
use crate::store::{Snapshot, Store, StoreError};

/// Most changes one batch processes.
pub const BATCH: usize = 500;

/// Most Patients read from one blocking key: a key that more share (a common name born in a
/// common year) says little about any one of them.
pub const MAX_PER_KEY: usize = 300;

/// Most candidates one Patient is scored against.
pub const MAX_CANDIDATES: usize = 200;

/// Most members of one golden Patient read to build it.
pub const MAX_MEMBERS: usize = 100;

/// What the matcher works with: the rules, the trained parameters, how golden Patients are
/// built.
pub struct Matcher {
    pub rules: Rules,
    pub parameters: Parameters,
    pub survivorship: Survivorship,
    pub nicknames: &'static Nicknames,
}

impl Matcher {
    pub fn new(rules: Rules, parameters: Parameters) -> Matcher {
        let survivorship = rules.survivorship.clone();
        Matcher { rules, parameters, survivorship, nicknames: nicknames() }
    }

    /// The match probability of two records, with the enterprise identifier rule applied.
    pub fn probability(&self, a: &PersonRecord, b: &PersonRecord) -> f64 {
        if let Some(decided) = self.enterprise_decision(a, b) {
            return if decided { 1.0 } else { 0.0 };
        }
        let comparison = compare_pair(a, b, self.nicknames);
        let probability = probability_of(self.parameters.pair_weight(a, &comparison));
        let thresholds = self.rules.thresholds;
        if probability >= thresholds.matched && self.rules.review_only.iter().any(|rule| rule.holds(&comparison)) {
            // For review: between the thresholds.
            return (thresholds.possible + thresholds.matched) / 2.0;
        }
        probability
    }

    /// The best match probability of `record` per golden Patient among `candidates`, for the
    /// golden Patients scoring at least `floor` and not in `excluded`. A candidate's golden
    /// Patient is looked up only when it scores at least `floor`: most score far below.
    pub fn best_per_golden(
        &self,
        overlay: &Overlay<'_>,
        record: &PersonRecord,
        candidates: &[Candidate],
        excluded: &BTreeSet<&str>,
        floor: f64,
    ) -> Result<HashMap<String, f64>, StoreError> {
        let mut best: HashMap<String, f64> = HashMap::new();
        for candidate in candidates {
            let probability = self.probability(record, &candidate.record);
            if probability < floor {
                continue;
            }
            let Some(golden_id) = overlay.golden_id_of(&candidate.id)? else { continue };
            if excluded.contains(golden_id.as_str()) {
                continue;
            }
            let slot = best.entry(golden_id).or_insert(0.0);
            *slot = slot.max(probability);
        }
        Ok(best)
    }

    /// `Some(true)` when both records have an identifier of an enterprise system and one value
    /// is shared, `Some(false)` when they have one of the same system but no value in common.
    fn enterprise_decision<'a>(&self, a: &'a PersonRecord, b: &'a PersonRecord) -> Option<bool> {
        let mut conflict = false;
        for system in &self.rules.enterprise_identifier_systems {
            let values = |record: &'a PersonRecord| {
                record.identifiers.iter().filter(move |(s, _)| s == system).map(|(_, value)| value)
            };
            if values(a).next().is_none() || values(b).next().is_none() {
                continue;
            }
            if values(a).any(|value| values(b).any(|other| other == value)) {
                return Some(true);
            }
            conflict = true;
        }
        conflict.then_some(false)
    }
}

/// A source Patient a record is scored against.
pub struct Candidate {
    pub id: String,
    pub record: PersonRecord,
}

/// The source Patients filed under any of `keys` (a record's blocking keys), except `own`, the
/// likeliest matches first, at most [`MAX_CANDIDATES`].
///
/// Each key is read up to [`MAX_PER_KEY`] Patients, with the records filed with them (one
/// range of the blocking index per key, no lookup per candidate). Those sharing the most keys
/// with the record come first, and among them those whose keys are the rarest (the smallest
/// blocks: sharing a birth date says more than sharing a birth year and a common surname), so
/// that a record with a common name is scored against its likeliest matches, not against
/// whichever Patients its largest block happens to list first. Ties go by id, so the choice is
/// deterministic.
pub fn candidates(overlay: &Overlay<'_>, keys: &[String], own: Option<&str>) -> Result<Vec<Candidate>, StoreError> {
    /// A Patient found under one or more of the keys.
    struct Found {
        /// The keys it shares with the record: bit `i` for `keys[i]`.
        shared: u32,
        /// Its block value (see `state::decode_block_value`).
        value: Vec<u8>,
    }
    let keys = &keys[..keys.len().min(MAX_KEYS)];
    let mut found: HashMap<String, Found> = HashMap::new();
    let mut log_block_sizes = Vec::with_capacity(keys.len());
    for (index, key) in keys.iter().enumerate() {
        let bit = 1u32 << index;
        let size = overlay.visit_block(key, MAX_PER_KEY, |candidate, value| {
            if Some(candidate) == own {
                return;
            }
            match found.get_mut(candidate) {
                Some(slot) => slot.shared |= bit,
                None => {
                    found.insert(candidate.to_owned(), Found { shared: bit, value: value.to_vec() });
                }
            }
        })?;
        log_block_sizes.push((size.max(1) as f64).ln());
    }
    /// A candidate with what ranks it: the keys it shares, and the sum of the logarithms of
    /// their block sizes (smaller: rarer keys).
    struct Ranked {
        shared_keys: u32,
        rarity: f64,
        id: String,
        value: Vec<u8>,
    }
    let mut ranked: Vec<Ranked> = found
        .into_iter()
        .map(|(id, Found { shared, value })| {
            let rarity = (0..keys.len()).filter(|index| shared & (1 << index) != 0).map(|i| log_block_sizes[i]).sum();
            Ranked { shared_keys: shared.count_ones(), rarity, id, value }
        })
        .collect();
    let order = |a: &Ranked, b: &Ranked| {
        b.shared_keys.cmp(&a.shared_keys).then_with(|| a.rarity.total_cmp(&b.rarity)).then_with(|| a.id.cmp(&b.id))
    };
    if ranked.len() > MAX_CANDIDATES {
        ranked.select_nth_unstable_by(MAX_CANDIDATES - 1, order);
        ranked.truncate(MAX_CANDIDATES);
    }
    ranked.sort_unstable_by(order);
    let mut candidates = Vec::with_capacity(ranked.len());
    for Ranked { id, value, .. } in ranked {
        let record = match state::decode_block_value(&value)? {
            Some(record) => record,
            // Filed before blocks held records: read it from its entry.
            None => match overlay.entry(&id)? {
                Some(entry) => entry.record,
                None => continue,
            },
        };
        candidates.push(Candidate { id, record });
    }
    Ok(candidates)
}

/// What one batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Changes read from the feed.
    pub changes: usize,
    /// Source Patients (re)matched.
    pub matched: usize,
    /// The cursor after the batch.
    pub cursor: u64,
    pub goldens_written: usize,
    pub goldens_deleted: usize,
    /// Source Patients the index holds now and did not before, and those it let go.
    pub filed: usize,
    pub forgotten: usize,
    /// For each Patient (re)matched, the candidates it was scored against.
    pub scored: Vec<usize>,
}

/// Processes the next batch of the change feed, committing its outcome. Returns what it did
/// (`changes == 0`: the index is up to date). The caller makes sure no other change to the
/// index's state runs meanwhile (see [`super::service::Mpi`]).
pub async fn run_batch(store: &Store, matcher: &Arc<Matcher>) -> Result<BatchReport, FhirError> {
    let (report, pending) = plan(store, matcher, None).await?;
    if report.changes > 0 {
        commit(store, Arc::new(pending)).await?;
    }
    Ok(report)
}

/// Decides the next batch of the change feed without committing it: what it did and the state
/// changes to commit. `committing`: the changes of the batch before, when its commit is still
/// under way (this batch is planned as if it were done, and must be committed after it).
pub async fn plan(
    store: &Store,
    matcher: &Arc<Matcher>,
    committing: Option<Arc<state::Pending>>,
) -> Result<(BatchReport, state::Pending), FhirError> {
    let snapshot = store.snapshot()?;
    let matcher = matcher.clone();
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        store.mpi_read(|committed| {
            let mut overlay = match committing {
                Some(committing) => Overlay::over(committed, committing),
                None => Overlay::new(committed),
            };
            Ok(plan_batch(&mut overlay, &snapshot, &matcher).map(|report| (report, overlay.into_pending())))
        })
    })
    .await
    .map_err(|_| FhirError::fault("mpi"))??
}

/// Commits the index's pending state changes (links, golden Patients, the cursor) in one
/// write.
pub async fn commit(store: &Store, pending: Arc<state::Pending>) -> Result<(), FhirError> {
    store
        .mpi_write(move |txn| {
            state::apply(&pending, txn);
            Ok(())
        })
        .await
}

fn now() -> String {
    format_instant(now_micros())
}

fn plan_batch(overlay: &mut Overlay<'_>, snapshot: &Snapshot, matcher: &Matcher) -> Result<BatchReport, FhirError> {
    let cursor = overlay.cursor()?;
    let changes = snapshot.changes_after(ResourceType::PATIENT, cursor, BATCH)?;
    let mut report = BatchReport { changes: changes.len(), cursor, ..BatchReport::default() };
    let Some(&(last, _, _)) = changes.last() else { return Ok(report) };
    let now = now();
    let mut touched: BTreeSet<String> = BTreeSet::new();
    // A Patient changed several times in the batch is processed once, at its current version.
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    // The bodies read in the batch, by id: the golden Patients are built from them again.
    let mut bodies: HashMap<String, Value> = HashMap::new();
    for (_, id, _) in &changes {
        if golden::is_golden(id) || !seen.insert(id.as_str()) {
            continue;
        }
        let known = overlay.entry(id)?.is_some();
        match current_body(snapshot, id)? {
            None => {
                forget(overlay, id, &mut touched)?;
                report.forgotten += usize::from(known);
            }
            Some((version, body)) => {
                report.filed += usize::from(!known);
                if let Some(scored) = match_patient(overlay, matcher, id, version, &body, &now, &mut touched)? {
                    report.matched += 1;
                    report.scored.push(scored);
                }
                bodies.insert(id.clone(), body);
            }
        }
    }
    let (written, deleted) = golden_writes(overlay, snapshot, &matcher.survivorship, &touched, &bodies)?;
    report.goldens_written = written;
    report.goldens_deleted = deleted;
    overlay.set_cursor(last);
    report.cursor = last;
    Ok(report)
}

/// Brings the golden Patients in `touched` in line with their MATCH links: each is made again
/// from its members (bodies from `bodies` when read already, else from the snapshot), and gets
/// a new version when its content changed; one with no member left is deleted; one merged into
/// another redirects to it. Returns how many were written and deleted.
pub fn golden_writes(
    overlay: &mut Overlay<'_>,
    snapshot: &Snapshot,
    survivorship: &Survivorship,
    touched: &BTreeSet<String>,
    bodies: &HashMap<String, Value>,
) -> Result<(usize, usize), FhirError> {
    let (mut written, mut deleted) = (0, 0);
    let now = now_micros();
    for golden_id in touched {
        let previous = overlay.golden(golden_id)?;
        let body = match overlay.redirect(golden_id)? {
            Some(to) => Some(golden::replaced_patient(golden_id, &to)),
            None => {
                let members = overlay.matched_members(golden_id, MAX_MEMBERS)?;
                let mut member_bodies = Vec::with_capacity(members.len());
                for member in members {
                    let body = match bodies.get(&member) {
                        Some(body) => Some(body.clone()),
                        None => current_body(snapshot, &member)?.map(|(_, body)| body),
                    };
                    if let Some(body) = body {
                        member_bodies.push((member, body));
                    }
                }
                (!member_bodies.is_empty()).then(|| golden::golden_patient(golden_id, &member_bodies, survivorship))
            }
        };
        let unchanged = match (&previous, &body) {
            (Some(previous), Some(body)) => previous.body.as_ref().is_some_and(|old| golden::same_content(old, body)),
            (Some(previous), None) => previous.body.is_none(),
            (None, body) => body.is_none(),
        };
        if unchanged {
            continue;
        }
        let version = previous.map_or(1, |previous| previous.version + 1);
        let body = body.map(|mut body| {
            body["meta"]["versionId"] = Value::String(version.to_string());
            body["meta"]["lastUpdated"] = Value::String(format_instant(now));
            body
        });
        if body.is_some() {
            written += 1;
        } else {
            deleted += 1;
        }
        overlay.put_golden(golden_id, &state::StoredGolden { version, last_updated_micros: now, body });
    }
    Ok((written, deleted))
}

/// A Patient's current version and body; `None` when it is deleted, absent or unreadable.
fn current_body(snapshot: &Snapshot, id: &str) -> Result<Option<(u64, Value)>, FhirError> {
    let current = snapshot.current(ResourceType::PATIENT, id)?.filter(|version| !version.is_deleted());
    Ok(current.and_then(|version| Some((version.version, serde_json::from_slice(&version.body).ok()?))))
}

/// A deleted source Patient leaves the index with its links.
fn forget(overlay: &mut Overlay<'_>, id: &str, touched: &mut BTreeSet<String>) -> Result<(), FhirError> {
    if let Some(entry) = overlay.entry(id)? {
        for key in &entry.keys {
            overlay.remove(state::block_key(key, id));
        }
        overlay.remove(state::record_key(id));
    }
    for (golden_id, _) in overlay.links(id, state::MAX_LINKS)? {
        overlay.remove_link(id, &golden_id);
        touched.insert(golden_id);
    }
    Ok(())
}

/// Files and matches one source Patient. Returns the candidates it was scored against when it
/// was (re)matched; `None` when not: a version whose demographics did not change keeps its
/// links.
fn match_patient(
    overlay: &mut Overlay<'_>,
    matcher: &Matcher,
    id: &str,
    version: u64,
    body: &Value,
    now: &str,
    touched: &mut BTreeSet<String>,
) -> Result<Option<usize>, FhirError> {
    let record = PersonRecord::from_patient(body);
    if let Some(previous) = overlay.entry(id)?
        && previous.record == record
        && let Some(golden_id) = overlay.golden_id_of(id)?
    {
        // Same demographics: the links stand; the golden Patient may show other elements.
        overlay.put_entry(id, &Entry { version, ..previous });
        touched.insert(golden_id);
        return Ok(None);
    }
    let matched = file_and_link(overlay, matcher, id, version, record, now, touched)?;
    // Its body changed: its golden Patient is made again, whether or not it moved.
    if let Some(golden_id) = overlay.golden_id_of(id)? {
        touched.insert(golden_id);
    }
    Ok(matched)
}

/// Matches a filed source Patient again, as it stands in the index (after retraining, or after
/// an operator changed one of its links). Returns whether it was (re)matched: one with a
/// MANUAL MATCH is not. A Patient the index does not hold is left alone.
pub fn rematch(
    overlay: &mut Overlay<'_>,
    matcher: &Matcher,
    id: &str,
    now: &str,
    touched: &mut BTreeSet<String>,
) -> Result<bool, FhirError> {
    match overlay.entry(id)? {
        Some(entry) => Ok(file_and_link(overlay, matcher, id, entry.version, entry.record, now, touched)?.is_some()),
        None => Ok(false),
    }
}

/// Files `record` as source Patient `id` (its blocking keys) and decides its links. Only what
/// changes is written, and only the golden Patients whose members changed are added to
/// `touched` (a re-scoring that confirms every link writes nothing). Returns the candidates it
/// was scored against, `None` when it has a MANUAL MATCH (which stands as it is).
fn file_and_link(
    overlay: &mut Overlay<'_>,
    matcher: &Matcher,
    id: &str,
    version: u64,
    record: PersonRecord,
    now: &str,
    touched: &mut BTreeSet<String>,
) -> Result<Option<usize>, FhirError> {
    let previous = overlay.entry(id)?;
    let links = overlay.links(id, state::MAX_LINKS)?;
    let current_match = links.iter().find(|(_, link)| link.result == MatchResult::Match).cloned();
    let new_keys = keys(&matcher.rules.blocking, &record);
    file(overlay, id, Entry { record: record.clone(), keys: new_keys.clone(), version }, previous.as_ref());

    if let Some((_, link)) = &current_match
        && link.source == LinkSource::Manual
    {
        return Ok(None);
    }
    // Golden Patients an operator ruled on (or that the matcher was told are not this person)
    // are not proposed again.
    let excluded: BTreeSet<&str> = links
        .iter()
        .filter(|(_, link)| link.source == LinkSource::Manual || link.result == MatchResult::NoMatch)
        .map(|(golden_id, _)| golden_id.as_str())
        .collect();

    let candidates = candidates(overlay, &new_keys, Some(id))?;
    let thresholds = matcher.rules.thresholds;
    // Below `possible` a score makes no link.
    let best = matcher.best_per_golden(overlay, &record, &candidates, &excluded, thresholds.possible)?;
    let mut ranked: Vec<(String, f64)> = best.into_iter().collect();
    let current_golden = current_match.as_ref().map(|(golden_id, _)| golden_id.clone());
    // Highest score first; the golden Patient it already belongs to wins a tie.
    ranked.sort_by(|(a, pa), (b, pb)| {
        pb.total_cmp(pa)
            .then_with(|| (Some(b) == current_golden.as_ref()).cmp(&(Some(a) == current_golden.as_ref())))
            .then_with(|| a.cmp(b))
    });
    let matches: Vec<&(String, f64)> = ranked.iter().filter(|(_, p)| *p >= thresholds.matched).collect();
    let target: (String, Option<f64>) = match (matches.first(), &current_golden) {
        (Some((golden_id, p)), _) => (golden_id.clone(), Some(*p)),
        // No match elsewhere: a Patient alone in its golden Patient stays there.
        (None, Some(golden_id)) if alone_in(overlay, golden_id, id)? => (golden_id.clone(), None),
        (None, _) => (golden::new_id(), None),
    };
    let (target_id, score) = target;

    // The MATCH link.
    if let Some(golden_id) = &current_golden
        && *golden_id != target_id
    {
        overlay.remove_link(id, golden_id);
        touched.insert(golden_id.clone());
    }
    let matched = automatic(&links, &target_id, MatchResult::Match, score, now);
    let before = links.iter().find(|(golden_id, _)| *golden_id == target_id).map(|(_, link)| link);
    if before != Some(&matched) {
        overlay.put_link(id, &target_id, &matched);
    }
    if current_golden.as_ref() != Some(&target_id) {
        touched.insert(target_id.clone());
    }

    // Other golden Patients it matches are possibly the same person as its own.
    for (golden_id, p) in matches.iter().skip(1) {
        let key = state::duplicate_key(&target_id, golden_id);
        if overlay.get(&key)?.is_none() {
            overlay
                .put(key, state::encode(&Link::new(MatchResult::PossibleDuplicate, LinkSource::Auto, Some(*p), now)));
        }
    }
    // POSSIBLE_MATCH links for review, replacing the automatic ones that no longer hold.
    let possible: BTreeMap<&str, f64> = ranked
        .iter()
        .filter(|(_, p)| *p >= thresholds.possible && *p < thresholds.matched)
        .map(|(golden_id, p)| (golden_id.as_str(), *p))
        .collect();
    for (golden_id, link) in &links {
        // The target's link was a POSSIBLE_MATCH until just now: it is the MATCH written above.
        if link.source == LinkSource::Auto
            && link.result == MatchResult::PossibleMatch
            && *golden_id != target_id
            && !possible.contains_key(golden_id.as_str())
        {
            overlay.remove_link(id, golden_id);
        }
    }
    for (golden_id, p) in possible {
        if golden_id != target_id {
            let link = automatic(&links, golden_id, MatchResult::PossibleMatch, Some(p), now);
            if links.iter().find(|(existing, _)| existing == golden_id).map(|(_, link)| link) != Some(&link) {
                overlay.put_link(id, golden_id, &link);
            }
        }
    }
    Ok(Some(candidates.len()))
}

/// Files `entry` as source Patient `id`'s: its record under each of its blocking keys (the
/// blocking index holds the record) and the entry itself, replacing `previous` (what the index
/// held for it). Only what changed is written.
fn file(overlay: &mut Overlay<'_>, id: &str, entry: Entry, previous: Option<&Entry>) {
    if let Some(previous) = previous {
        for key in previous.keys.iter().filter(|key| !entry.keys.contains(key)) {
            overlay.remove(state::block_key(key, id));
        }
    }
    // Each block holds the record: all of them are written again when it changed.
    let same_record = previous.is_some_and(|previous| previous.record == entry.record);
    for key in &entry.keys {
        if !same_record || !previous.is_some_and(|previous| previous.keys.contains(key)) {
            overlay.put(state::block_key(key, id), state::encode_block_value(&entry.record));
        }
    }
    if previous != Some(&entry) {
        overlay.put_entry(id, &entry);
    }
}

/// The matcher's link to `golden_id` with `result` and `score`: the existing link (among
/// `links`) changed, its earlier state kept in its history, or a new one. An existing link that
/// already says this is returned as it is.
fn automatic(links: &[(String, Link)], golden_id: &str, result: MatchResult, score: Option<f64>, now: &str) -> Link {
    match links.iter().find(|(existing, _)| existing == golden_id) {
        Some((_, existing)) => {
            let mut link = existing.clone();
            if (link.result, link.source, link.score) != (result, LinkSource::Auto, score) {
                link.change(result, LinkSource::Auto, score, now);
            }
            link
        }
        None => Link::new(result, LinkSource::Auto, score, now),
    }
}

/// Whether `patient` is the only source Patient with a MATCH link to `golden_id`.
fn alone_in(overlay: &Overlay<'_>, golden_id: &str, patient: &str) -> Result<bool, FhirError> {
    Ok(overlay.matched_members(golden_id, MAX_MEMBERS)?.iter().all(|member| member == patient))
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use serde_json::json;

    use super::*;
    use crate::fhir::Id;
    use crate::mpi::train::{TrainingOptions, train};
    use crate::store::{Action, Precondition, Target, WriteOp, WriteRequest, testing};

    /// Parameters trained on FEBRL 4 (as `braid mpi train` would on a real population).
    fn parameters() -> Parameters {
        static TRAINED: OnceLock<Parameters> = OnceLock::new();
        TRAINED
            .get_or_init(|| {
                let (records, _) = crate::mpi::febrl::dataset_4();
                let options = TrainingOptions { u_pairs: 100_000, ..TrainingOptions::default() };
                train(&records, &Rules::shipped().training, options, nicknames()).0
            })
            .clone()
    }

    fn matcher(enterprise: &[&str]) -> Arc<Matcher> {
        let mut rules = Rules::shipped();
        rules.enterprise_identifier_systems = enterprise.iter().map(|s| s.to_string()).collect();
        Arc::new(Matcher::new(rules, parameters()))
    }

    fn patient(id: &str, given: &str, family: &str, birth: &str, extra: Value) -> WriteOp {
        let mut resource = json!({"resourceType": "Patient", "id": id, "name": [{"given": [given], "family": family}],
            "birthDate": birth, "gender": "female",
            "address": [{"line": ["12 Harbour St"], "city": "Sydney", "postalCode": "2000"}]});
        for (key, value) in extra.as_object().unwrap() {
            resource[key] = value.clone();
        }
        let Value::Object(resource) = resource else { unreachable!() };
        WriteOp {
            full_url: None,
            action: Action::Update {
                resource_type: ResourceType::PATIENT,
                target: Target::Id(Id::parse(id).unwrap()),
                resource,
                precondition: Precondition::default(),
            },
        }
    }

    async fn write(store: &Store, ops: Vec<WriteOp>) {
        store.write(WriteRequest { ops, ..WriteRequest::default() }).await.unwrap();
    }

    /// Runs batches until the feed is drained.
    async fn settle(store: &Store, matcher: &Arc<Matcher>) -> Vec<BatchReport> {
        let mut reports = Vec::new();
        for _ in 0..10 {
            let report = run_batch(store, matcher).await.unwrap();
            if report.changes == 0 {
                return reports;
            }
            reports.push(report);
        }
        panic!("the feed did not drain: {reports:?}");
    }

    /// Changes the index's state as `edit` does to an overlay of it, in one commit.
    async fn edit_state(store: &Store, edit: impl FnOnce(&mut Overlay<'_>)) {
        let pending = store
            .mpi_read(|read| {
                let mut overlay = Overlay::new(read);
                edit(&mut overlay);
                Ok(overlay.into_pending())
            })
            .unwrap();
        store
            .mpi_write(move |txn| {
                state::apply(&pending, txn);
                Ok(())
            })
            .await
            .unwrap();
    }

    fn golden_of(store: &Store, patient: &str) -> Option<(String, Link)> {
        store.mpi_read(|read| Overlay::new(read).golden_of(patient)).unwrap()
    }

    /// Files `records` (id, record) in the index as the matcher does, without matching them.
    async fn file_all(store: &Store, records: Vec<(String, PersonRecord)>) {
        let rules = Rules::shipped();
        edit_state(store, |overlay| {
            for (id, record) in records {
                let keys = keys(&rules.blocking, &record);
                file(overlay, &id, Entry { record, keys, version: 1 }, None);
            }
        })
        .await;
    }

    fn person(given: &str, family: &str, birth: &str, postcode: &str) -> PersonRecord {
        PersonRecord::from_patient(&json!({"name": [{"given": [given], "family": family}], "birthDate": birth,
            "address": [{"postalCode": postcode}]}))
    }

    #[test]
    fn candidates_sharing_more_and_rarer_keys_come_first_and_their_number_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let store = testing::open(&dir.path().join("db"));
        let rules = Rules::shipped();
        testing::runtime().block_on(async {
            // 150 namesakes born the same year (sharing the birth-year and name-sound keys),
            // 150 others of the surname born that year (the birth-year key alone: its block
            // overflows MAX_PER_KEY), one sharing only the rare birth date and initial, under
            // another surname, and a stranger.
            let born = |n: usize| format!("1980-01-{:02}", n % 28 + 1);
            let mut records: Vec<(String, PersonRecord)> =
                (0..150).map(|n| (format!("a-john-{n:03}"), person("John", "Smith", &born(n), ""))).collect();
            records.extend((0..150).map(|n| (format!("b-jim-{n:03}"), person("Jim", "Smith", &born(n), ""))));
            records.push(("married".into(), person("Joan", "Baker", "1980-03-07", "")));
            records.push(("stranger".into(), person("Alice", "Brown", "1950-05-05", "")));
            records.push(("twin-date".into(), person("John", "Smith", "1980-03-07", "")));
            file_all(&store, records).await;
            let record = person("John", "Smith", "1980-03-07", "");
            let keys = keys(&rules.blocking, &record);
            let found = store.mpi_read(|read| candidates(&Overlay::new(read), &keys, Some("twin-date"))).unwrap();
            assert_eq!(found.len(), MAX_CANDIDATES, "bounded, whatever the blocks hold");
            let ids: Vec<&str> = found.iter().map(|candidate| candidate.id.as_str()).collect();
            assert!(!ids.contains(&"twin-date"), "the record itself is no candidate");
            assert!(!ids.contains(&"stranger"));
            // Two shared keys first; then one rare key before one common key.
            assert!(ids[..150].iter().all(|id| id.starts_with("a-john-")), "{ids:?}");
            assert_eq!(ids[150], "married");
            assert!(ids[151..].iter().all(|id| id.starts_with("b-jim-")), "{ids:?}");
            assert_eq!(found[150].record, person("Joan", "Baker", "1980-03-07", ""), "records come from the blocks");
            // The same call makes the same choice.
            let again = store.mpi_read(|read| candidates(&Overlay::new(read), &keys, Some("twin-date"))).unwrap();
            assert_eq!(again.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), ids);

            // Sharing the same number of keys, the rarer ones win: the twin shares the name
            // sounds and the birth date, the namesakes the name sounds and the (larger) year.
            let all = store.mpi_read(|read| candidates(&Overlay::new(read), &keys, None)).unwrap();
            assert_eq!(all[0].id, "twin-date");
        });
    }

    #[test]
    fn a_block_filed_before_records_were_kept_in_it_reads_the_record_from_its_entry() {
        let dir = tempfile::tempdir().unwrap();
        let store = testing::open(&dir.path().join("db"));
        let rules = Rules::shipped();
        testing::runtime().block_on(async {
            let old = person("Mary", "Jones", "1970-02-02", "2000");
            let keys = keys(&rules.blocking, &old);
            edit_state(&store, |overlay| {
                for key in &keys {
                    overlay.put(state::block_key(key, "old-1"), Vec::new());
                }
                overlay.put_entry("old-1", &Entry { record: old.clone(), keys: keys.clone(), version: 1 });
            })
            .await;
            let found = store.mpi_read(|read| candidates(&Overlay::new(read), &keys, None)).unwrap();
            assert_eq!(found.len(), 1);
            assert_eq!((found[0].id.as_str(), &found[0].record), ("old-1", &old));
        });
    }

    #[test]
    fn records_of_one_person_share_a_golden_patient_and_strangers_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = testing::open(&dir.path().join("db"));
        testing::runtime().block_on(async {
            write(
                &store,
                vec![
                    patient("a-1", "Catherine", "Smith", "1984-03-07", json!({})),
                    patient(
                        "b-7",
                        "Kathryn",
                        "Smith",
                        "1984-07-03",
                        json!({"telecom": [{"system": "phone", "value": "0298765432"}]}),
                    ),
                    patient("c-3", "Robert", "Jones", "1950-11-30", json!({})),
                ],
            )
            .await;
            let matcher = matcher(&[]);
            let reports = settle(&store, &matcher).await;
            assert_eq!(reports[0].matched, 3);
            assert_eq!(reports[0].goldens_written, 2);
            let (golden_a, link) = golden_of(&store, "a-1").expect("a MATCH link");
            assert_eq!((link.result, link.source), (MatchResult::Match, LinkSource::Auto));
            let (golden_b, link_b) = golden_of(&store, "b-7").unwrap();
            assert_eq!(golden_a, golden_b, "a phonetic spelling of the given name, day and month swapped");
            assert!(link_b.score.is_some_and(|score| score >= 0.99), "{link_b:?}");
            let (golden_c, _) = golden_of(&store, "c-3").unwrap();
            assert_ne!(golden_c, golden_a);

            let stored = store.mpi_read(|read| Overlay::new(read).golden(&golden_a)).unwrap().unwrap();
            assert_eq!(stored.version, 1);
            let golden = stored.body.unwrap();
            let links: Vec<&str> =
                golden["link"].as_array().unwrap().iter().map(|l| l["other"]["reference"].as_str().unwrap()).collect();
            assert_eq!(links, ["Patient/a-1", "Patient/b-7"]);
            assert_eq!(golden["telecom"][0]["value"], "0298765432", "the more complete record's telecom");
            assert_eq!(golden["name"][0]["given"][0], "Kathryn", "and its name and birth date, not the other's");
            assert_eq!(golden["birthDate"], "1984-07-03");
            assert_eq!(golden["meta"]["tag"][0]["code"], "golden");
            assert_eq!(golden["meta"]["versionId"], "1");
            // Golden Patients are the index's, not resources in the store.
            assert!(store.snapshot().unwrap().current(ResourceType::PATIENT, &golden_a).unwrap().is_none());

            assert!(run_batch(&store, &matcher).await.unwrap().changes == 0);
            let cursor = store.mpi_read(|read| Overlay::new(read).cursor()).unwrap();
            assert_eq!(cursor, store.snapshot().unwrap().newest_t().unwrap());

            // A new version of a member with the same content leaves the golden Patient's version.
            write(&store, vec![patient("a-1", "Catherine", "Smith", "1984-03-07", json!({"active": true}))]).await;
            settle(&store, &matcher).await;
            let stored = store.mpi_read(|read| Overlay::new(read).golden(&golden_a)).unwrap().unwrap();
            assert_eq!(stored.version, 1, "its elements come from b-7, which did not change");
        });
    }

    #[test]
    fn a_deleted_patient_leaves_its_golden_patient_and_an_empty_golden_is_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = testing::open(&dir.path().join("db"));
        testing::runtime().block_on(async {
            write(&store, vec![patient("a-1", "Ann", "Lee", "1990-01-02", json!({}))]).await;
            let matcher = matcher(&[]);
            settle(&store, &matcher).await;
            let (golden, _) = golden_of(&store, "a-1").unwrap();
            let delete = WriteOp {
                full_url: None,
                action: Action::Delete {
                    resource_type: ResourceType::PATIENT,
                    target: Target::Id(Id::parse("a-1").unwrap()),
                    precondition: Precondition::default(),
                },
            };
            write(&store, vec![delete]).await;
            let reports = settle(&store, &matcher).await;
            assert_eq!(reports[0].goldens_deleted, 1);
            assert!(golden_of(&store, "a-1").is_none());
            let stored = store.mpi_read(|read| Overlay::new(read).golden(&golden)).unwrap().unwrap();
            assert_eq!((stored.version, stored.body), (2, None), "deleted");
            let members = store.mpi_read(|read| Overlay::new(read).members(&golden, 10)).unwrap();
            assert!(members.is_empty());
        });
    }

    #[test]
    fn an_enterprise_identifier_decides_on_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let store = testing::open(&dir.path().join("db"));
        let national = "http://ns.example/national-id";
        let id = |value: &str| json!({"identifier": [{"system": national, "value": value}]});
        testing::runtime().block_on(async {
            write(
                &store,
                vec![
                    // Twins: the same demographics, different national ids.
                    patient("a-1", "Jane", "Doe", "2001-05-05", id("111")),
                    patient("b-1", "Jane", "Doe", "2001-05-05", id("222")),
                    // The same national id on records that share nothing else: on their own
                    // demographics they would not match.
                    patient("c-1", "Mary", "Major", "1970-02-02", id("333")),
                    patient(
                        "d-1",
                        "Louise",
                        "Okafor",
                        "1982-09-14",
                        json!({"identifier": [{"system": national, "value": "333"}],
                    "address": [{"line": ["1 Other Rd"], "postalCode": "3000"}]}),
                    ),
                ],
            )
            .await;
            let matcher = matcher(&[national]);
            settle(&store, &matcher).await;
            let golden = |patient: &str| golden_of(&store, patient).unwrap().0;
            assert_ne!(golden("a-1"), golden("b-1"), "conflicting national ids block a match");
            assert_eq!(golden("c-1"), golden("d-1"), "a shared national id is a match");
            // Only one side has a national id: the demographics decide, as without the rule.
            let with_id = PersonRecord::from_patient(&json!({"name": [{"given": ["Jane"], "family": "Doe"}],
                "birthDate": "2001-05-05", "identifier": [{"system": national, "value": "111"}]}));
            let without = PersonRecord::from_patient(&json!({"name": [{"given": ["Jane"], "family": "Doe"}],
                "birthDate": "2001-05-05"}));
            assert!(matcher.probability(&with_id, &without) >= matcher.rules.thresholds.matched);
            assert_eq!(
                matcher.probability(
                    &PersonRecord::from_patient(&json!({"identifier": [{"system": national, "value": "9"}]})),
                    &PersonRecord::from_patient(&json!({"identifier": [{"system": national, "value": "9"}]}))
                ),
                1.0
            );
        });
    }

    #[test]
    fn pending_changes_survive_a_restart_and_are_matched_then() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = testing::open(&path);
        testing::runtime().block_on(write(&store, vec![patient("a-1", "Ann", "Lee", "1990-01-02", json!({}))]));
        // Stopped before the matcher ran (a crash after the client's commit).
        testing::close(store);
        let store = testing::open(&path);
        testing::runtime().block_on(async {
            let matcher = matcher(&[]);
            let reports = settle(&store, &matcher).await;
            assert_eq!(reports[0].matched, 1);
            assert!(golden_of(&store, "a-1").is_some());
        });
    }

    #[test]
    fn a_possible_match_that_becomes_a_match_keeps_one_link_with_its_history() {
        let dir = tempfile::tempdir().unwrap();
        let store = testing::open(&dir.path().join("db"));
        testing::runtime().block_on(async {
            write(&store, vec![patient("b-1", "Ann", "Lee", "1990-01-02", json!({}))]).await;
            let matcher = matcher(&[]);
            settle(&store, &matcher).await;
            let (golden, _) = golden_of(&store, "b-1").unwrap();
            // An earlier, weaker version of a-1 was a POSSIBLE_MATCH of b-1's golden Patient.
            edit_state(&store, |overlay| {
                let link = Link::new(MatchResult::PossibleMatch, LinkSource::Auto, Some(0.9), &now());
                overlay.put_link("a-1", &golden, &link);
            })
            .await;
            write(&store, vec![patient("a-1", "Ann", "Lee", "1990-01-02", json!({}))]).await;
            settle(&store, &matcher).await;
            let (matched, link) = golden_of(&store, "a-1").expect("a MATCH link");
            assert_eq!(matched, golden);
            assert_eq!(link.history.len(), 1, "{link:?}");
            assert_eq!(link.history[0].result, MatchResult::PossibleMatch);
            let members = store.mpi_read(|read| Overlay::new(read).matched_members(&golden, 10)).unwrap();
            assert_eq!(members, ["a-1", "b-1"]);
        });
    }

    #[test]
    fn a_manual_match_is_never_changed_by_the_matcher() {
        let dir = tempfile::tempdir().unwrap();
        let store = testing::open(&dir.path().join("db"));
        testing::runtime().block_on(async {
            write(
                &store,
                vec![
                    patient("a-1", "Ann", "Lee", "1990-01-02", json!({})),
                    patient("z-9", "Zed", "Zulu", "1930-12-12", json!({})),
                ],
            )
            .await;
            let matcher = matcher(&[]);
            settle(&store, &matcher).await;
            let (zed_golden, _) = golden_of(&store, "z-9").unwrap();
            let (ann_golden, _) = golden_of(&store, "a-1").unwrap();
            // An operator says Ann belongs with Zed's golden Patient.
            edit_state(&store, |overlay| {
                overlay.remove_link("a-1", &ann_golden);
                overlay.put_link("a-1", &zed_golden, &Link::new(MatchResult::Match, LinkSource::Manual, None, &now()));
            })
            .await;
            // Ann's record changes: the matcher would put her elsewhere, but the link is manual.
            write(&store, vec![patient("a-1", "Anne", "Lee", "1990-01-02", json!({}))]).await;
            settle(&store, &matcher).await;
            let (golden, link) = golden_of(&store, "a-1").unwrap();
            assert_eq!((golden.as_str(), link.source), (zed_golden.as_str(), LinkSource::Manual));
        });
    }
}
