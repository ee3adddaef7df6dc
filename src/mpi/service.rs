//! The master patient index as the server runs it: the matcher's parameters (trained or the
//! shipped defaults), the worker that follows the change feed, training with the re-scoring
//! that follows it, the index's figures, and the lock every change to the index's state is
//! made under.
//!
//! Matching never runs inside a client's write: the worker notices new commits (it looks at
//! the store's newest logical time every [`POLL`]) and runs batches until the feed is drained.
//! Its progress is the cursor committed with each batch, so a crash loses nothing: the next
//! start resumes after the last committed batch. How far it is behind is [`Mpi::lag`].

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::blocking::Rules;
use super::matcher::{self, BATCH, BatchReport, Matcher};
use super::score::Parameters;
use super::state::{self, Entry, Link, MatchResult, Overlay};
use super::train::{self, TrainingOptions, TrainingReport};
use crate::fhir::json::{format_instant, now_micros};
use crate::fhir::{FhirError, ResourceType};
use crate::store::{Snapshot, Store, StoreError};

/// How often the worker looks for new commits.
pub const POLL: Duration = Duration::from_millis(50);

/// Most batches the worker runs under one hold of the state's lock (see
/// [`Mpi::catch_up_at_most`]).
const PIPELINED: usize = 8;

/// A batch whose commit is under way.
struct InFlight {
    report: BatchReport,
    pending: Arc<state::Pending>,
    commit: tokio::task::JoinHandle<Result<(), FhirError>>,
}

/// How long the worker waits after a failed batch before trying again.
const RETRY: Duration = Duration::from_secs(5);

/// Most pending changes counted for the lag (more are reported as this many).
pub const MAX_LAG_COUNT: usize = 1_000_000;

/// Fewest Patients training learns from: on fewer, the few pairs that agree would make the
/// parameters say more than the data does.
pub const MIN_TRAINING_RECORDS: usize = 500;

/// Most keys counted for each of the index's figures.
const MAX_COUNT: usize = 100_000_000;

/// The trained parameters as stored (`meta/parameters`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Trained {
    parameters: Parameters,
    report: TrainingReport,
    trained_at: String,
    /// How many source Patients the index held (training samples at most
    /// [`train::MAX_RECORDS`] of them).
    #[serde(default)]
    index_records: usize,
}

/// The index size at which the worker trains first, on its own (`mpi_auto_train`); then each
/// time the size doubles.
pub const FIRST_AUTO_TRAINING: usize = 1_000;

/// What the worker has done since the server started.
#[derive(Debug, Clone, Default, Serialize)]
struct Progress {
    batches: u64,
    changes: u64,
    matched: u64,
    /// How many candidates each Patient matched was scored against.
    candidates_scored: CandidateCounts,
    last_batch_at: Option<String>,
    last_error: Option<String>,
}

/// A histogram of candidates scored per record (0 to [`matcher::MAX_CANDIDATES`]), shown as
/// percentiles.
#[derive(Debug, Clone, Default)]
struct CandidateCounts {
    /// `counts[n]`: records scored against `n` candidates.
    counts: Vec<u64>,
}

impl CandidateCounts {
    fn add(&mut self, scored: &[usize]) {
        if self.counts.is_empty() {
            self.counts = vec![0; matcher::MAX_CANDIDATES + 1];
        }
        for &count in scored {
            self.counts[count.min(matcher::MAX_CANDIDATES)] += 1;
        }
    }

    /// The smallest count at or above `share` of the records.
    fn percentile(&self, share: f64) -> usize {
        let total: u64 = self.counts.iter().sum();
        let wanted = ((total as f64) * share).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (count, records) in self.counts.iter().enumerate() {
            seen += records;
            if seen >= wanted {
                return count;
            }
        }
        0
    }
}

impl Serialize for CandidateCounts {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let max = self.counts.iter().rposition(|records| *records > 0).unwrap_or(0);
        json!({"records": self.counts.iter().sum::<u64>(), "p50": self.percentile(0.5), "p90": self.percentile(0.9),
            "p99": self.percentile(0.99), "max": max, "bound": matcher::MAX_CANDIDATES})
        .serialize(serializer)
    }
}

/// The running master patient index.
pub struct Mpi {
    store: Store,
    matcher: RwLock<Arc<Matcher>>,
    /// When the parameters in use were trained (`None`: the shipped defaults).
    trained_at: RwLock<Option<String>>,
    /// Held by every change to the index's state (a batch, a re-scoring page, an operator's
    /// link change), from reading the state to committing: the [`Overlay`] a change is planned
    /// on must still be the committed state when it commits.
    changing: tokio::sync::Mutex<()>,
    progress: Mutex<Progress>,
    stopping: AtomicBool,
    /// Whether the worker trains on its own as the index grows.
    auto_train: bool,
    /// Source Patients in the index (counted at open, then kept by the batches).
    records: AtomicUsize,
    /// The index size the parameters in use were trained at (0: the shipped ones).
    trained_records: AtomicUsize,
    /// Held while training runs: one training at a time.
    training: tokio::sync::Mutex<()>,
}

/// How far the index is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Lag {
    /// The feed's last processed logical time.
    pub cursor: u64,
    /// The store's newest logical time.
    pub newest: u64,
    /// Patient changes not matched yet (counted up to [`MAX_LAG_COUNT`]).
    pub pending: usize,
    /// How long ago the oldest of them was committed; 0 when none is pending.
    pub seconds: f64,
}

impl Mpi {
    /// The index of `store`, with its trained parameters if it has them, else the shipped
    /// defaults, and the shipped rules.
    /// `auto_train`: whether the worker trains on its own as the index grows.
    pub fn open(store: &Store, auto_train: bool) -> Result<Arc<Mpi>, StoreError> {
        let trained: Option<Trained> = store.mpi_read(|read| state::decode(read.get(state::PARAMETERS_KEY)?))?;
        let (parameters, trained_at, trained_records) = match trained {
            Some(trained) => (trained.parameters, Some(trained.trained_at), trained.index_records.max(1)),
            None => (Parameters::shipped(), None, 0),
        };
        let records = store.mpi_read(|read| read.count(state::RECORD_PREFIX, MAX_COUNT))?;
        Ok(Arc::new(Mpi {
            store: store.clone(),
            matcher: RwLock::new(Arc::new(Matcher::new(Rules::shipped(), parameters))),
            trained_at: RwLock::new(trained_at),
            changing: tokio::sync::Mutex::new(()),
            progress: Mutex::new(Progress::default()),
            stopping: AtomicBool::new(false),
            auto_train,
            records: AtomicUsize::new(records),
            trained_records: AtomicUsize::new(trained_records),
            training: tokio::sync::Mutex::new(()),
        }))
    }

    /// The index size at which the worker trains next on its own; `None` when it does not.
    pub fn next_auto_training(&self) -> Option<usize> {
        let trained = self.trained_records.load(Ordering::Acquire);
        self.auto_train.then(|| (2 * trained).max(FIRST_AUTO_TRAINING))
    }

    /// Whether a training (with its re-scoring) is running.
    pub fn is_training(&self) -> bool {
        self.training.try_lock().is_err()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The matcher in use (its parameters change when the index is trained).
    pub fn matcher(&self) -> Arc<Matcher> {
        self.matcher.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Stops the worker and any re-scoring at their next batch.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    fn stopped(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Runs batches until the feed is drained (or the index is stopped). Returns the changes
    /// read.
    pub async fn catch_up(&self) -> Result<usize, FhirError> {
        self.catch_up_at_most(usize::MAX).await
    }

    /// Like [`Mpi::catch_up`], stopping after the batch that brings it to `most` changes.
    ///
    /// Batches are pipelined: each is planned while the writer commits the one before (planning
    /// reads and scores, committing writes, and on 2 cores the two overlap), and is committed
    /// only once that commit succeeded. At most [`PIPELINED`] batches run under one hold of the
    /// state's lock, so that an operator's change waits for a few batches, not for a backlog.
    pub async fn catch_up_at_most(&self, most: usize) -> Result<usize, FhirError> {
        let mut total = 0;
        while !self.stopped() && total < most {
            let run = {
                let _changing = self.changing.lock().await;
                self.pipeline(most - total).await
            };
            let (committed, drained) = match run {
                Ok(run) => run,
                Err(error) => {
                    self.progress().last_error = Some(error.to_string());
                    return Err(error);
                }
            };
            total += committed;
            if drained {
                break;
            }
        }
        Ok(total)
    }

    /// Runs up to [`PIPELINED`] batches (fewer once `most` changes are read), each planned while
    /// the one before commits. Returns the changes committed and whether the feed was found
    /// drained, or the first failure: a batch planned over one whose commit failed is dropped.
    /// The caller holds the state's lock.
    async fn pipeline(&self, most: usize) -> Result<(usize, bool), FhirError> {
        let matcher = self.matcher();
        let mut committed = 0;
        let mut in_flight: Option<InFlight> = None;
        for _ in 0..PIPELINED {
            let read = committed + in_flight.as_ref().map_or(0, |flight| flight.report.changes);
            if self.stopped() || read >= most {
                break;
            }
            let committing = in_flight.as_ref().map(|flight| flight.pending.clone());
            let planned = matcher::plan(&self.store, &matcher, committing).await;
            if let Some(flight) = in_flight.take() {
                committed += self.finish(flight).await?;
            }
            let (report, pending) = planned?;
            if report.changes == 0 {
                return Ok((committed, true));
            }
            let pending = Arc::new(pending);
            let commit = {
                let (store, pending) = (self.store.clone(), pending.clone());
                tokio::spawn(async move { matcher::commit(&store, pending).await })
            };
            in_flight = Some(InFlight { report, pending, commit });
        }
        if let Some(flight) = in_flight.take() {
            committed += self.finish(flight).await?;
        }
        Ok((committed, false))
    }

    /// Waits for a batch's commit and counts what it did. Returns its changes.
    async fn finish(&self, flight: InFlight) -> Result<usize, FhirError> {
        flight.commit.await.map_err(|_| FhirError::fault("mpi commit"))??;
        let report = flight.report;
        self.records.fetch_add(report.filed, Ordering::AcqRel);
        self.records.fetch_sub(report.forgotten.min(self.records.load(Ordering::Acquire)), Ordering::AcqRel);
        let mut progress = self.progress();
        progress.batches += 1;
        progress.changes += report.changes as u64;
        progress.matched += report.matched as u64;
        progress.candidates_scored.add(&report.scored);
        progress.last_batch_at = Some(format_instant(now_micros()));
        progress.last_error = None;
        Ok(report.changes)
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// How far the index is behind the store's Patient changes.
    pub fn lag(&self) -> Result<Lag, FhirError> {
        let snapshot = self.store.snapshot()?;
        let cursor = self.store.mpi_read(|read| Overlay::new(read).cursor())?;
        let newest = snapshot.newest_t()?;
        let pending = snapshot.changes_after(ResourceType::PATIENT, cursor, MAX_LAG_COUNT)?;
        let seconds = match pending.first() {
            Some((_, id, version)) => match snapshot.version(ResourceType::PATIENT, id, *version)? {
                Some(version) => ((now_micros() - version.header.last_updated_micros).max(0) as f64) / 1e6,
                None => 0.0,
            },
            None => 0.0,
        };
        Ok(Lag { cursor, newest, pending: pending.len(), seconds })
    }

    /// Learns the parameters from the Patients the index holds (see [`train::train`]), stores
    /// them, uses them from now on, and re-scores every automatic link with them. Returns the
    /// training report and how many Patients were re-matched.
    pub async fn train(&self, options: TrainingOptions) -> Result<Value, FhirError> {
        let _training = self.training.lock().await;
        // Every committed Patient is in the index first (when the server is stopped, nothing
        // else has filed them).
        self.catch_up().await?;
        let index_records = self.store.mpi_read(|read| read.count(state::RECORD_PREFIX, MAX_COUNT))?;
        let store = self.store.clone();
        let (parameters, report) = tokio::task::spawn_blocking(move || -> Result<_, FhirError> {
            let mut records = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = store.mpi_read(|read| read.scan_after(state::RECORD_PREFIX, after.as_deref(), 10_000))?;
                let Some((last, _)) = page.last() else { break };
                after = Some(last.clone());
                for (_, value) in page {
                    records.push(Entry::decode(&value)?.record);
                }
            }
            let records = train::sample(records, options.seed);
            let rules = Rules::shipped();
            Ok(train::train(&records, &rules.training, options, super::compare::nicknames()))
        })
        .await
        .map_err(|_| FhirError::fault("training"))??;
        if report.records < MIN_TRAINING_RECORDS {
            return Err(FhirError::incorrect(
                crate::fhir::IssueCode::Processing,
                format!(
                    "training needs at least {MIN_TRAINING_RECORDS} Patients in the index (it has {}): until then \
                     the shipped parameters are used",
                    report.records
                ),
            ));
        }
        let trained =
            Trained { parameters: parameters.clone(), report: report.clone(), trained_at: now(), index_records };
        let stored = state::encode(&trained);
        self.store
            .mpi_write(move |txn| {
                txn.insert(state::PARAMETERS_KEY, &stored);
                Ok(())
            })
            .await?;
        *self.matcher.write().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Arc::new(Matcher::new(Rules::shipped(), parameters));
        *self.trained_at.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(trained.trained_at.clone());
        self.trained_records.store(index_records.max(1), Ordering::Release);
        let rescored = self.rescore().await?;
        Ok(json!({"trained_at": trained.trained_at, "training": report, "rescored": rescored}))
    }

    /// Matches every source Patient of the index again with the current parameters, a page at
    /// a time (each page one commit); MANUAL links stay as they are. Returns the Patients
    /// re-matched.
    pub async fn rescore(&self) -> Result<usize, FhirError> {
        let mut after: Option<Vec<u8>> = None;
        let mut rescored = 0;
        while !self.stopped() {
            let _changing = self.changing.lock().await;
            let snapshot = self.store.snapshot()?;
            let matcher = self.matcher();
            let store = self.store.clone();
            let start = after.clone();
            let page = tokio::task::spawn_blocking(move || {
                store.mpi_read(|read| {
                    let ids: Vec<String> = read
                        .scan_after(state::RECORD_PREFIX, start.as_deref(), BATCH)?
                        .into_iter()
                        .map(|(key, _)| String::from_utf8_lossy(&key[state::RECORD_PREFIX.len()..]).into_owned())
                        .collect();
                    let mut overlay = Overlay::new(read);
                    Ok(rescore_page(&mut overlay, &snapshot, &matcher, &ids)
                        .map(|count| (ids.last().map(|id| state::record_key(id)), count, overlay.into_pending())))
                })
            })
            .await
            .map_err(|_| FhirError::fault("mpi"))??;
            let (last, count, pending) = page?;
            let Some(last) = last else { break };
            after = Some(last);
            rescored += count;
            if !pending.is_empty() {
                matcher::commit(&self.store, Arc::new(pending)).await?;
            }
        }
        Ok(rescored)
    }

    /// Makes an operator's change to the index's state: `edit` changes an overlay of it and
    /// names the golden Patients whose members changed; they are rebuilt, and everything is
    /// committed in one write. Nothing else changes the state meanwhile.
    pub async fn change<T: Send + 'static>(
        &self,
        edit: impl FnOnce(&mut Overlay<'_>, &Snapshot, &Matcher, &mut BTreeSet<String>) -> Result<T, FhirError>
        + Send
        + 'static,
    ) -> Result<T, FhirError> {
        let _changing = self.changing.lock().await;
        let snapshot = self.store.snapshot()?;
        let matcher = self.matcher();
        let store = self.store.clone();
        let planned = tokio::task::spawn_blocking(move || {
            store.mpi_read(|read| {
                let mut overlay = Overlay::new(read);
                let mut touched = BTreeSet::new();
                let planned = edit(&mut overlay, &snapshot, &matcher, &mut touched).and_then(|value| {
                    matcher::golden_writes(&mut overlay, &snapshot, &matcher.survivorship, &touched, &HashMap::new())?;
                    Ok(value)
                });
                Ok(planned.map(|value| (value, overlay.into_pending())))
            })
        })
        .await
        .map_err(|_| FhirError::fault("mpi"))??;
        let (value, pending) = planned?;
        if !pending.is_empty() {
            matcher::commit(&self.store, Arc::new(pending)).await?;
        }
        Ok(value)
    }

    /// A golden Patient as a stored version (what reads serve): `None` when there never was
    /// one; a deleted one has an empty body. `t` is 0: golden Patients are not in the store's
    /// logical time.
    pub fn golden(&self, id: &str) -> Result<Option<crate::store::Version>, FhirError> {
        let Some(stored) = self.read(|overlay| Ok(overlay.golden(id)?))? else { return Ok(None) };
        let op = if stored.body.is_some() { crate::store::Op::Update } else { crate::store::Op::Delete };
        Ok(Some(crate::store::Version {
            resource_type: "Patient".to_owned(),
            id: id.to_owned(),
            version: stored.version,
            header: crate::store::Header { op, t: 0, last_updated_micros: stored.last_updated_micros },
            body: stored.body.map(|body| serde_json::to_vec(&body).unwrap_or_default()).unwrap_or_default(),
        }))
    }

    /// The golden Patient `golden_id` (or the one it was merged into) and its source Patients
    /// with a MATCH, as the index holds them now (at most [`MAX_MEMBERS`]). Just the id when it is
    /// not a golden Patient the index has.
    pub fn person(&self, golden_id: &str) -> Result<Vec<String>, FhirError> {
        let person = self.read(|overlay| Ok(super::unified::person_of(overlay, golden_id)?))?;
        Ok(if person.is_empty() { vec![golden_id.to_owned()] } else { person })
    }

    /// Whether `patient` is the golden Patient `golden_id` or a source Patient with a MATCH to
    /// it.
    pub fn is_person(&self, golden_id: &str, patient: &str) -> Result<bool, FhirError> {
        if patient == golden_id {
            return Ok(true);
        }
        self.read(|overlay| Ok(overlay.golden_id_of(patient)?.is_some_and(|golden| golden == golden_id)))
    }

    /// Reads the committed state.
    pub fn read<T>(&self, read: impl FnOnce(&Overlay<'_>) -> Result<T, FhirError>) -> Result<T, FhirError> {
        self.store.mpi_read(|committed| Ok(read(&Overlay::new(committed))))?
    }

    /// How far matching is behind and what the worker has done: cheap enough to poll (`GET
    /// /mpi`).
    pub fn status(&self) -> Result<Value, FhirError> {
        let trained_at = self.trained_at.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        Ok(json!({"trained_at": trained_at, "feed": self.lag()?, "worker": self.progress().clone(),
            "source_patients": self.records.load(Ordering::Acquire), "training": self.is_training(),
            "next_training_at": self.next_auto_training()}))
    }

    /// The index's parameters, training report, feed position and figures, as `braid mpi
    /// show` prints them.
    pub fn describe(&self) -> Result<Value, FhirError> {
        let trained: Option<Trained> = self.store.mpi_read(|read| state::decode(read.get(state::PARAMETERS_KEY)?))?;
        let matcher = self.matcher();
        let lag = self.lag()?;
        let progress = self.progress().clone();
        let (records, links, golden_patients, duplicates) = self.store.mpi_read(|read| {
            let records = read.count(state::RECORD_PREFIX, MAX_COUNT)?;
            let mut links: HashMap<&'static str, usize> = HashMap::new();
            let mut goldens = BTreeSet::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = read.scan_after(state::LINK_PREFIX, after.as_deref(), 10_000)?;
                let Some((last, _)) = page.last() else { break };
                after = Some(last.clone());
                for (key, value) in page {
                    let Some(link) = state::decode::<Link>(Some(value))? else { continue };
                    *links.entry(result_name(link.result)).or_default() += 1;
                    if link.result == MatchResult::Match
                        && let Some((_, golden)) = state::pair_of(&key, state::LINK_PREFIX)
                    {
                        goldens.insert(golden);
                    }
                }
            }
            let duplicates = read.count(state::DUPLICATE_PREFIX, MAX_COUNT)?;
            Ok((records, links, goldens.len(), duplicates))
        })?;
        let rules = &matcher.rules;
        Ok(json!({
            "trained": trained.is_some(),
            "trained_at": trained.as_ref().map(|t| t.trained_at.clone()),
            "parameters": matcher.parameters.describe(),
            "training": trained.map(|t| t.report),
            "thresholds": {"match": rules.thresholds.matched, "possible": rules.thresholds.possible},
            "enterprise_identifier_systems": rules.enterprise_identifier_systems,
            "feed": lag,
            "worker": progress,
            "training_now": self.is_training(),
            "next_training_at": self.next_auto_training(),
            "counts": {"source_patients": records, "golden_patients": golden_patients, "links": links,
                "possible_duplicates": duplicates},
        }))
    }
}

impl Mpi {
    /// Starts a training on its own task when the index has grown to the next size at which
    /// it trains (see [`Mpi::next_auto_training`]) and none is running.
    fn start_auto_training(self: &Arc<Mpi>) {
        let Some(next) = self.next_auto_training() else { return };
        if self.records.load(Ordering::Acquire) < next || self.is_training() {
            return;
        }
        let mpi = self.clone();
        tokio::spawn(async move {
            tracing::info!(patients = mpi.records.load(Ordering::Acquire), "training the master patient index");
            match mpi.train(TrainingOptions::default()).await {
                Ok(report) => tracing::info!(
                    rescored = report["rescored"].as_u64().unwrap_or(0),
                    "trained the master patient index and re-scored its links"
                ),
                Err(error) => tracing::warn!(%error, "training the master patient index failed"),
            }
        });
    }
}

/// A link result as FHIR and HAPI name it.
pub fn result_name(result: MatchResult) -> &'static str {
    match result {
        MatchResult::Match => "MATCH",
        MatchResult::PossibleMatch => "POSSIBLE_MATCH",
        MatchResult::NoMatch => "NO_MATCH",
        MatchResult::PossibleDuplicate => "POSSIBLE_DUPLICATE",
    }
}

fn now() -> String {
    format_instant(now_micros())
}

/// Re-matches the source Patients `ids` and rebuilds the golden Patients that changed;
/// returns how many were re-matched.
fn rescore_page(
    overlay: &mut Overlay<'_>,
    snapshot: &Snapshot,
    matcher: &Matcher,
    ids: &[String],
) -> Result<usize, FhirError> {
    let now = now();
    let mut touched = BTreeSet::new();
    let mut count = 0;
    for id in ids {
        if matcher::rematch(overlay, matcher, id, &now, &mut touched)? {
            count += 1;
        }
    }
    matcher::golden_writes(overlay, snapshot, &matcher.survivorship, &touched, &HashMap::new())?;
    Ok(count)
}

/// Runs the index's worker until `mpi` is dropped or stopped: whenever the store has committed
/// since the last look, the feed is drained.
pub fn start_worker(mpi: Weak<Mpi>) {
    tokio::spawn(async move {
        let mut seen = None;
        loop {
            tokio::time::sleep(POLL).await;
            let Some(mpi) = mpi.upgrade() else { break };
            if mpi.stopped() {
                break;
            }
            let Ok(newest) = mpi.store.snapshot().and_then(|snapshot| snapshot.newest_t()) else { continue };
            if seen == Some(newest) {
                continue;
            }
            match mpi.catch_up().await {
                Ok(_) => {
                    seen = Some(newest);
                    mpi.start_auto_training();
                }
                Err(error) => {
                    tracing::warn!(%error, "the master patient index could not match the latest Patients; retrying");
                    drop(mpi);
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::mpi::synth::{SynthOptions, generate};
    use crate::store::testing;
    use crate::store::{Action, Precondition, Target, WriteOp, WriteRequest};

    /// The people the index made: the source Patients of each golden Patient, and the Patients
    /// with a POSSIBLE_MATCH.
    fn people_of(mpi: &Mpi) -> (BTreeSet<BTreeSet<String>>, BTreeSet<String>) {
        mpi.read(|overlay| {
            let mut by_golden: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            let mut possible = BTreeSet::new();
            for (key, value) in overlay.scan(state::LINK_PREFIX, usize::MAX)? {
                let (patient, golden) = state::pair_of(&key, state::LINK_PREFIX).unwrap();
                let link: Link = serde_json::from_slice(&value).unwrap();
                match link.result {
                    MatchResult::Match => drop(by_golden.entry(golden).or_default().insert(patient)),
                    MatchResult::PossibleMatch => drop(possible.insert(patient)),
                    _ => {}
                }
            }
            Ok((by_golden.into_values().collect(), possible))
        })
        .unwrap()
    }

    /// The worker plans each batch while the one before commits; what it decides is what
    /// matching one batch after another decides.
    #[test]
    fn pipelined_batches_link_as_batches_run_one_after_another() {
        let synthetic = generate(SynthOptions { people: 700, sources: 3, seed: 5, clinical: false });
        let patients: Vec<Value> = synthetic
            .sources
            .iter()
            .flat_map(|source| {
                source.resources.iter().map(move |resource| {
                    let mut resource = resource.clone();
                    resource["id"] = json!(format!("{}-{}", source.name, resource["id"].as_str().unwrap()));
                    resource
                })
            })
            .collect();
        assert!(patients.len() > 3 * BATCH, "several batches: {}", patients.len());
        let dir = tempfile::tempdir().unwrap();
        testing::runtime().block_on(async {
            let mut outcomes = Vec::new();
            for pipelined in [true, false] {
                let store = testing::open(&dir.path().join(format!("{pipelined}.redb")));
                for chunk in patients.chunks(100) {
                    let ops = chunk
                        .iter()
                        .map(|patient| {
                            let Value::Object(resource) = patient.clone() else { unreachable!() };
                            WriteOp {
                                full_url: None,
                                action: Action::Update {
                                    resource_type: ResourceType::PATIENT,
                                    target: Target::Id(
                                        crate::fhir::Id::parse(patient["id"].as_str().unwrap()).unwrap(),
                                    ),
                                    resource,
                                    precondition: Precondition::default(),
                                },
                            }
                        })
                        .collect();
                    store.write(WriteRequest { ops, ..WriteRequest::default() }).await.unwrap();
                }
                let mpi = Mpi::open(&store, false).unwrap();
                if pipelined {
                    assert_eq!(mpi.catch_up().await.unwrap(), patients.len());
                    assert!(mpi.progress().batches >= 4, "{} batches", mpi.progress().batches);
                } else {
                    loop {
                        let report = matcher::run_batch(&store, &mpi.matcher()).await.unwrap();
                        if report.changes == 0 {
                            break;
                        }
                    }
                }
                assert_eq!(mpi.lag().unwrap().pending, 0);
                outcomes.push(people_of(&mpi));
            }
            let (people, possible) = &outcomes[0];
            assert!(people.iter().any(|members| members.len() > 1), "some people are braided");
            assert!(people.len() < patients.len());
            assert_eq!(outcomes[0], outcomes[1], "{} and {} possible", possible.len(), outcomes[1].1.len());
        });
    }

    #[test]
    fn candidates_scored_are_shown_as_percentiles_of_a_bounded_histogram() {
        let mut counts = CandidateCounts::default();
        assert_eq!(serde_json::to_value(&counts).unwrap()["records"], 0);
        counts.add(&(1..=100).collect::<Vec<_>>());
        counts.add(&[matcher::MAX_CANDIDATES + 50]);
        let shown = serde_json::to_value(&counts).unwrap();
        assert_eq!(shown["records"], 101);
        assert_eq!(shown["p50"], 51);
        assert_eq!(shown["p90"], 91);
        assert_eq!(shown["max"], matcher::MAX_CANDIDATES, "counted at the bound");
        assert_eq!(counts.counts.len(), matcher::MAX_CANDIDATES + 1, "the histogram's size is fixed");
    }
}
