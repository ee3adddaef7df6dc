//! The single writer.
//!
//! redb allows one write transaction at a time, and every durable commit costs an fsync. One
//! thread therefore owns all writing: it takes every request waiting in its queue (up to
//! `max_group`), executes them one after another inside one transaction, commits once, and only
//! then answers each request. Concurrent requests share the fsync; each still sees the effects
//! of the requests before it, so conditional operations are serialised and atomic.
//!
//! Invariant: a request that fails (a precondition, a conditional match, a bad reference) has
//! written nothing, because every check of a request runs before its first write. Only a
//! storage error or a panic can stop a request midway, and that aborts the whole group's
//! transaction. After a panic the group's requests are retried one by one, so that only the
//! request that panics fails (500) and the writer goes on serving.
//!
//! A commit is acknowledged only once readers can see it (read-your-writes). If the new state
//! cannot be published to readers, the process stops rather than acknowledge writes that reads
//! would not show; the commit itself is durable, and a restart publishes it.

use std::any::Any;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, Table, WriteTransaction};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use super::auth::{AuthTxn, AuthWork, KvTable};
use super::codec::{Codecs, ContentHash, StoredBody, content_hash};
use super::keys::search_param_value::Lifetime;
use super::keys::{
    prefix_end, resource_search_param_value as rspv, resource_version, search_param_value as spv, superseded,
    system_history, type_history,
};
use super::ops::{
    Action, Change, ChangeKind, Changed, Criteria, IndexEntry, Indexer, OpOutcome, OutcomeKind, Precondition,
    RecordChanges, Target, WriteGuard, WriteRequest,
};
use super::snapshot::Snapshot;
use super::view::IndexTables;
use super::{
    Header, Op, RESOURCE_SEARCH_PARAM_VALUE, RESOURCE_VERSION, SEARCH_PARAM_VALUE, SUPERSEDED, SYSTEM_HISTORY,
    StoreError, StoreOptions, TYPE_HISTORY,
};
use crate::fhir::json::{format_instant, same_content, stamp};
use crate::fhir::reference::{self, rewrite_resource_references};
use crate::fhir::{Category, FhirError, Id, IssueCode, Resource, ResourceType};

type Reply = Result<Vec<OpOutcome>, FhirError>;
type AuthReply = Result<Box<dyn Any + Send>, FhirError>;

struct Job {
    work: Work,
    span: tracing::Span,
}

/// What a job asks of the writer, and where its answer goes.
enum Work {
    /// The request goes back with its reply: it holds every resource's JSON, and freeing that
    /// is the requester's work, not the writer's (about a twentieth of the writer's time).
    Resources { request: WriteRequest, reply: oneshot::Sender<(Reply, WriteRequest)> },
    /// A key-value table: authorization records or the MPI's state (see [`super::auth`]).
    Auth { table: KvTable, work: AuthWork, reply: oneshot::Sender<AuthReply> },
}

/// A job's outcome, before it is sent.
enum Answer {
    Resources(Reply),
    Auth(AuthReply),
}

impl Job {
    fn send(self, answer: Answer) {
        // The requester may have gone away (client disconnected); what was committed stands.
        match (self.work, answer) {
            (Work::Resources { reply, request }, Answer::Resources(answer)) => {
                let _ = reply.send((answer, request));
            }
            (Work::Auth { reply, .. }, Answer::Auth(answer)) => {
                let _ = reply.send(answer);
            }
            // Cannot happen (each answer is computed from its own job), but a mismatch must not
            // leave the requester waiting.
            (Work::Resources { reply, request }, Answer::Auth(_)) => {
                let _ = reply.send((Err(FhirError::fault("writer")), request));
            }
            (Work::Auth { reply, .. }, Answer::Resources(_)) => {
                let _ = reply.send(Err(FhirError::fault("writer")));
            }
        }
    }

    fn send_error(self, error: FhirError) {
        match self.work {
            Work::Resources { reply, request } => {
                let _ = reply.send((Err(error), request));
            }
            Work::Auth { reply, .. } => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

#[derive(Clone)]
pub(super) struct WriterHandle {
    queue: mpsc::Sender<Job>,
    /// Set by the writer thread when it has exited and released the database.
    pub(super) stopped: Arc<AtomicBool>,
}

impl WriterHandle {
    pub(super) async fn submit(&self, request: WriteRequest) -> Reply {
        let (reply, answer) = oneshot::channel();
        let job = Job { work: Work::Resources { request, reply }, span: tracing::Span::current() };
        self.queue.send(job).await.map_err(|_| FhirError::from(StoreError::WriterGone))?;
        let (reply, request) = answer.await.map_err(|_| FhirError::from(StoreError::WriterGone))?;
        drop(request);
        reply
    }

    pub(super) async fn submit_auth(&self, table: KvTable, work: AuthWork) -> AuthReply {
        let (reply, answer) = oneshot::channel();
        let job = Job { work: Work::Auth { table, work, reply }, span: tracing::Span::current() };
        self.queue.send(job).await.map_err(|_| FhirError::from(StoreError::WriterGone))?;
        answer.await.map_err(|_| FhirError::from(StoreError::WriterGone))?
    }
}

/// How the writer executes and commits, from [`StoreOptions`].
#[derive(Clone, Copy)]
struct Policy {
    /// The most resources one conditional delete may delete.
    conditional_delete_max: usize,
    /// See [`StoreOptions::quick_repair`].
    quick_repair: bool,
    /// Commit in two phases whatever `quick_repair` says (an encrypted database: see
    /// [`super::begin_write`]).
    two_phase: bool,
}

/// The writer's logical clock: `t` counts versions; `last_micros` is the newest lastUpdated.
#[derive(Clone, Copy)]
struct Clock {
    next_t: u64,
    last_micros: i64,
}

/// `path` is the database's file (`None`: another storage, which is never compacted at stop).
pub(super) fn start(
    db: Arc<Database>,
    path: Option<PathBuf>,
    indexer: Arc<dyn Indexer>,
    latest: Arc<RwLock<Arc<Snapshot>>>,
    codecs: Arc<Codecs>,
    options: &StoreOptions,
) -> Result<WriterHandle, StoreError> {
    let clock = load_clock(&db)?;
    let (queue, receiver) = mpsc::channel(options.queue_capacity.max(1));
    let max_group = options.max_group.max(1);
    let policy = Policy {
        conditional_delete_max: options.conditional_delete_max.clamp(1, super::MAX_CONDITIONAL_DELETE),
        quick_repair: options.quick_repair,
        two_phase: options.encryption_key.is_some(),
    };
    let stopped = Arc::new(AtomicBool::new(false));
    let stopped_flag = stopped.clone();
    std::thread::Builder::new()
        .name("braid-writer".into())
        .spawn(move || {
            run(&db, receiver, indexer.as_ref(), &codecs, &latest, clock, max_group, policy);
            // The published snapshot holds a read transaction: release it before the database.
            drop(latest);
            compact_small_at_stop(db, path.as_deref());
            stopped_flag.store(true, Ordering::Release);
        })
        .map_err(|e| StoreError::Storage(redb::StorageError::Io(e)))?;
    Ok(WriterHandle { queue, stopped })
}

/// A database file at most this long gives back its slack at a clean stop (see
/// [`compact_small_at_stop`]). redb compacted a 2 GiB file in about 25 s on a 2-core machine;
/// at that rate a file of this size takes under a second (an estimate, not measured).
const COMPACT_AT_STOP_MAX_BYTES: u64 = 64 << 20;

/// Compaction passes at most at a stop.
const COMPACT_AT_STOP_MAX_PASSES: usize = 8;

/// Closes the database; first, if its file is small and a quarter or more of it (and at least
/// 1 MiB) is space no page uses, compacts it. Why: redb grows a file by doubling it and places
/// new pages anywhere in the grown part, and its own shrink at close only trims free pages at
/// the very end, so a small database's file often stays about twice what its pages need. A
/// large file is left to `braid compact` (offline), since compacting it would hold up the stop.
/// Skipped too when anything else still holds the database or a read transaction on it (a late
/// reader): it then closes as it is. A failed compaction is logged and changes nothing (each
/// pass is a transaction).
fn compact_small_at_stop(db: Arc<Database>, path: Option<&Path>) {
    let Some(length) = path.and_then(|path| super::file_size(path).ok()) else { return };
    if length > COMPACT_AT_STOP_MAX_BYTES {
        return;
    }
    let Ok(mut db) = Arc::try_unwrap(db) else { return };
    let used = match allocated_bytes(&db) {
        Ok(used) => used,
        Err(error) => {
            tracing::warn!(%error, "could not measure the database's pages at stop; not compacting");
            return;
        }
    };
    if !worth_compacting_at_stop(length, used) {
        return;
    }
    let started = std::time::Instant::now();
    // redb needs two or three passes (each moves pages down, then the file is cut); a bound
    // all the same, since each pass is a whole rewrite.
    for _ in 0..COMPACT_AT_STOP_MAX_PASSES {
        match db.compact() {
            Ok(true) => continue,
            Ok(false) => break,
            Err(redb::CompactionError::TransactionInProgress) => {
                tracing::debug!("a reader still has the database open at stop; not compacting");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "could not compact the database at stop; it is closed as it is");
                return;
            }
        }
    }
    drop(db);
    let after = path.and_then(|path| super::file_size(path).ok()).unwrap_or(0);
    tracing::info!(
        bytes_before = length,
        bytes_after = after,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "compacted the database file at stop"
    );
}

/// Whether a file of `length` bytes whose pages use `used` bytes is compacted at stop: it is at
/// most [`COMPACT_AT_STOP_MAX_BYTES`] long, and a quarter of it, and at least 1 MiB, is slack.
fn worth_compacting_at_stop(length: u64, used: u64) -> bool {
    length <= COMPACT_AT_STOP_MAX_BYTES && length.saturating_sub(used) >= (length / 4).max(1 << 20)
}

/// The bytes of the pages the database uses (from a write transaction's statistics; it is
/// aborted, so how it would commit does not matter).
pub(super) fn allocated_bytes(db: &Database) -> Result<u64, StoreError> {
    let txn = db.begin_write()?;
    let stats = txn.stats()?;
    txn.abort()?;
    Ok(stats.allocated_pages() * stats.page_size() as u64)
}

/// Reads where the clock stands from the newest history entry.
fn load_clock(db: &Database) -> Result<Clock, StoreError> {
    let txn = db.begin_read()?;
    let history = txn.open_table(SYSTEM_HISTORY)?;
    let Some((key, _)) = history.last()? else {
        return Ok(Clock { next_t: 1, last_micros: 0 });
    };
    let (t, ty, id, version) =
        system_history::decode(key.value()).ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
    let versions = txn.open_table(RESOURCE_VERSION)?;
    let record_key = resource_version::encode(&ty, &id, version);
    let record = versions.get(record_key.as_slice())?.ok_or_else(|| StoreError::Corrupt(record_key.clone()))?;
    let (header, _) = resource_version::decode_value(record.value()).ok_or(StoreError::Corrupt(record_key))?;
    Ok(Clock { next_t: t + 1, last_micros: header.last_updated_micros })
}

#[allow(clippy::too_many_arguments)]
fn run(
    db: &Database,
    mut receiver: mpsc::Receiver<Job>,
    indexer: &dyn Indexer,
    codecs: &Arc<Codecs>,
    latest: &RwLock<Arc<Snapshot>>,
    mut clock: Clock,
    max_group: usize,
    policy: Policy,
) {
    while let Some(first) = receiver.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < max_group {
            match receiver.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let mut commit = |jobs: &[Job]| commit_guarded(db, indexer, codecs, &mut clock, policy, jobs);
        match commit(&jobs) {
            Ok(replies) => answer(db, codecs, latest, jobs, replies),
            Err(GroupFailure::Panic(message)) if jobs.len() > 1 => {
                tracing::error!(panic = %message, requests = jobs.len(),
                    "a write group panicked; nothing was committed; retrying its requests one by one");
                for job in jobs {
                    match commit(std::slice::from_ref(&job)) {
                        Ok(replies) => answer(db, codecs, latest, vec![job], replies),
                        Err(failure) => fail(job, &failure),
                    }
                }
            }
            Err(failure) => {
                for job in jobs {
                    fail(job, &failure);
                }
            }
        }
    }
    tracing::debug!("writer stopped: no more senders");
}

/// Why a group committed nothing.
enum GroupFailure {
    /// A storage error, already logged.
    Storage,
    /// A panic while executing the group; its transaction was dropped, so aborted.
    Panic(String),
}

/// Runs [`commit_group`], containing panics: on any failure nothing is committed and the clock
/// is restored to where it stood, as if the group had never run.
fn commit_guarded(
    db: &Database,
    indexer: &dyn Indexer,
    codecs: &Codecs,
    clock: &mut Clock,
    policy: Policy,
    jobs: &[Job],
) -> Result<Vec<Answer>, GroupFailure> {
    let before = *clock;
    let result = catch_unwind(AssertUnwindSafe(|| commit_group(db, indexer, codecs, clock, policy, jobs)));
    match result {
        Ok(Ok(replies)) => Ok(replies),
        Ok(Err(error)) => {
            *clock = before;
            tracing::error!(error = %error, requests = jobs.len(), "write group failed; nothing was committed");
            Err(GroupFailure::Storage)
        }
        Err(payload) => {
            *clock = before;
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned());
            Err(GroupFailure::Panic(message))
        }
    }
}

fn fail(job: Job, failure: &GroupFailure) {
    let error = match failure {
        GroupFailure::Storage => FhirError::fault("storage"),
        GroupFailure::Panic(message) => {
            let _entered = job.span.enter();
            tracing::error!(panic = %message, "a write request panicked; nothing of it was committed");
            FhirError::fault("writer")
        }
    };
    job.send_error(error);
}

/// Publishes the committed state to readers, then answers the committed requests.
fn answer(db: &Database, codecs: &Arc<Codecs>, latest: &RwLock<Arc<Snapshot>>, jobs: Vec<Job>, answers: Vec<Answer>) {
    publish(db, codecs, latest);
    for (job, answer) in jobs.into_iter().zip(answers) {
        job.send(answer);
    }
}

/// How often opening a snapshot after a commit is tried before giving up.
const PUBLISH_ATTEMPTS: u32 = 3;

/// Makes the newest commit what readers see. A commit that readers cannot see must not be
/// acknowledged (a client would not read its own write), so if every attempt fails the process
/// exits, unacknowledged, for its supervisor to restart it; the commit is durable and the next
/// start serves it.
fn publish(db: &Database, codecs: &Arc<Codecs>, latest: &RwLock<Arc<Snapshot>>) {
    if !publish_with(|| Snapshot::open(db, codecs), latest, PUBLISH_ATTEMPTS) {
        tracing::error!("committed writes cannot be made visible to readers; exiting so that the server is restarted");
        std::process::exit(70);
    }
}

/// Replaces the published snapshot with one from `open`, trying up to `attempts` times with a
/// short pause between tries; false if every try failed (the old snapshot stays published).
fn publish_with(
    open: impl Fn() -> Result<Snapshot, StoreError>,
    latest: &RwLock<Arc<Snapshot>>,
    attempts: u32,
) -> bool {
    for attempt in 1..=attempts {
        match open() {
            Ok(snapshot) => {
                *latest.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(snapshot);
                return true;
            }
            Err(error) => {
                tracing::error!(error = %error, attempt, "cannot open a snapshot after a commit");
                if attempt < attempts {
                    std::thread::sleep(std::time::Duration::from_millis(50 * u64::from(attempt)));
                }
            }
        }
    }
    false
}

fn commit_group(
    db: &Database,
    indexer: &dyn Indexer,
    codecs: &Codecs,
    clock: &mut Clock,
    policy: Policy,
    jobs: &[Job],
) -> Result<Vec<Answer>, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_quick_repair(policy.quick_repair);
    if policy.two_phase {
        txn.set_two_phase_commit(true);
    }
    let now = crate::fhir::json::now_micros();
    // lastUpdated never goes backwards, even if the system clock does: history relies on it.
    clock.last_micros = now.max(clock.last_micros);
    let replies = {
        let mut tables = Tables::open(&txn)?;
        let mut kv_tables = KvTables { auth: None, mpi: None };
        let mut group_index = Vec::new();
        let mut replies = Vec::with_capacity(jobs.len());
        for job in jobs {
            let _entered = job.span.enter();
            match &job.work {
                Work::Resources { request, .. } => {
                    let mut execution = Execution {
                        tables: &mut tables,
                        indexer,
                        codecs,
                        clock,
                        conditional_delete_max: policy.conditional_delete_max,
                        pending_index: Vec::new(),
                        group_index: &mut group_index,
                        local_base: None,
                    };
                    let reply = execution.execute(request)?;
                    replies.push(Answer::Resources(reply));
                }
                Work::Auth { table: which, work, .. } => {
                    let table = kv_tables.open(&txn, *which)?;
                    let mut auth = AuthTxn::new(table);
                    let result = work(&mut auth);
                    let changes = auth.into_changes();
                    if result.is_ok() {
                        changes.apply(table)?;
                    }
                    replies.push(Answer::Auth(result));
                }
            }
        }
        insert_sorted(&mut tables.spv, group_index)?;
        replies
    };
    txn.commit()?;
    Ok(replies)
}

/// The key-value tables (see [`super::auth`]) a group writes, each opened by the first job that
/// needs it: most groups need neither.
struct KvTables<'txn> {
    auth: Option<Table<'txn, &'static [u8], &'static [u8]>>,
    mpi: Option<Table<'txn, &'static [u8], &'static [u8]>>,
}

impl<'txn> KvTables<'txn> {
    fn open(
        &mut self,
        txn: &'txn WriteTransaction,
        which: KvTable,
    ) -> Result<&mut Table<'txn, &'static [u8], &'static [u8]>, StoreError> {
        let slot = match which {
            KvTable::Auth => &mut self.auth,
            KvTable::Mpi => &mut self.mpi,
        };
        if slot.is_none() {
            *slot = Some(txn.open_table(which.definition())?);
        }
        Ok(slot.as_mut().expect("opened above"))
    }
}

struct Tables<'txn> {
    versions: Table<'txn, &'static [u8], &'static [u8]>,
    type_history: Table<'txn, &'static [u8], ()>,
    system_history: Table<'txn, &'static [u8], ()>,
    spv: Table<'txn, &'static [u8], Lifetime>,
    rspv: Table<'txn, &'static [u8], &'static [u8]>,
    superseded: Table<'txn, &'static [u8], ()>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(Tables {
            versions: txn.open_table(RESOURCE_VERSION)?,
            type_history: txn.open_table(TYPE_HISTORY)?,
            system_history: txn.open_table(SYSTEM_HISTORY)?,
            spv: txn.open_table(SEARCH_PARAM_VALUE)?,
            rspv: txn.open_table(RESOURCE_SEARCH_PARAM_VALUE)?,
            superseded: txn.open_table(SUPERSEDED)?,
        })
    }
}

/// The current state of one resource as the writer sees it.
struct Current {
    version: u64,
    deleted: bool,
    last_updated_micros: i64,
    /// Its `resource_version` key, to name it in errors.
    key: Vec<u8>,
    /// The body as stored (compressed): decoded only when the version is returned unchanged or
    /// a format 3 body lacks a content hash.
    stored: Vec<u8>,
}

impl Current {
    fn body(&self, codecs: &Codecs) -> Result<Vec<u8>, StoreError> {
        StoredBody::parse(&self.stored)
            .and_then(|stored| codecs.decode(stored))
            .map_err(|reason| super::migrate::corrupt_body(&self.key, &reason))
    }

    /// Whether `incoming` (whose content hash is `incoming_hash`) has the content of this
    /// version (see `fhir::json::same_content`): compares content hashes, without parsing the
    /// stored body. Only a format 3 body, which has no hash, is decoded and parsed.
    fn has_content_of(
        &self,
        incoming_hash: ContentHash,
        incoming: &Resource,
        codecs: &Codecs,
    ) -> Result<bool, StoreError> {
        let stored =
            StoredBody::parse(&self.stored).map_err(|reason| super::migrate::corrupt_body(&self.key, &reason))?;
        match stored.hash() {
            Some(hash) => Ok(hash == incoming_hash),
            None => Ok(is_same_content(&self.body(codecs)?, incoming)),
        }
    }
}

/// What one operation of a request resolved to, before anything is written.
enum Resolved {
    Write {
        resource_type: ResourceType,
        id: Id,
        resource: Resource,
        precondition: Precondition,
        /// The entries computed before the request was queued ([`Indexer::prepare`]).
        prepared: Option<Arc<[IndexEntry]>>,
        /// The resource's content hash, if computed before the request was queued and still
        /// valid (no reference rewritten since).
        hash: Option<ContentHash>,
        /// The resource's current version, read once when the operation is resolved (`None`
        /// for a server-assigned id, and for an id nothing was ever written under). The guard
        /// and the plan both use it: nothing is written between resolving and planning, and a
        /// transaction touches each resource once, so it is still current.
        current: Option<Current>,
    },
    Existing {
        resource_type: ResourceType,
        id: Id,
    },
    Delete {
        resource_type: ResourceType,
        /// Each resource deleted, with its current version read once when resolved (for the
        /// guard and the plan, as a write's `current`).
        targets: Vec<(Id, Option<Current>)>,
        precondition: Precondition,
    },
}

/// What a resolved operation will write, decided after every check has passed.
enum Planned {
    /// `previous`: the version this one supersedes, if it was live (not a deletion).
    Put {
        resource_type: ResourceType,
        id: Id,
        version: u64,
        resource: Resource,
        /// The content hash of `resource` (and of the stamped version).
        hash: ContentHash,
        created: bool,
        previous: Option<u64>,
        prepared: Option<Arc<[IndexEntry]>>,
    },
    /// `body`: the current version's JSON, returned as the outcome.
    Unchanged {
        resource_type: ResourceType,
        id: Id,
        current: Current,
        body: Vec<u8>,
    },
    Delete {
        resource_type: ResourceType,
        tombstones: Vec<(Id, u64)>,
    },
}

struct Execution<'a, 'txn> {
    tables: &'a mut Tables<'txn>,
    indexer: &'a dyn Indexer,
    codecs: &'a Codecs,
    clock: &'a mut Clock,
    /// The most resources one conditional delete may delete.
    conditional_delete_max: usize,
    /// `search_param_value` writes of the current request. When the request has been applied
    /// they join `group_index`.
    pending_index: Vec<(Vec<u8>, (u64, u64))>,
    /// `search_param_value` writes of the group's requests before this one, inserted in key
    /// order once something reads that table (criteria, superseding a version), else when the
    /// group is complete: sorted inserts touch each B-tree page once per run of neighbouring
    /// keys instead of once per key, and a group of creates makes one long sorted run.
    /// Invariant: every read of `search_param_value` first calls [`Execution::flush_index`], so
    /// it sees every earlier request of the group; no read needs the current request's own
    /// writes (a transaction touches each resource once, and resolves criteria before writing).
    group_index: &'a mut Vec<(Vec<u8>, (u64, u64))>,
    /// The base URL of the request being executed (see [`WriteRequest::local_base`]).
    local_base: Option<String>,
}

impl Execution<'_, '_> {
    /// Runs one request. The outer error is a storage failure (aborts the group); the inner one
    /// is this request's own failure, with nothing written.
    fn execute(&mut self, request: &WriteRequest) -> Result<Reply, StoreError> {
        self.local_base.clone_from(&request.local_base);
        let order = processing_order(request);
        let resolved = match self.resolve(request, &order) {
            Ok(resolved) => resolved,
            Err(Failure::Request(error)) => return Ok(Err(error)),
            Err(Failure::Storage(error)) => return Err(error),
        };
        let planned = match self.plan(resolved) {
            Ok(planned) => planned,
            Err(Failure::Request(error)) => return Ok(Err(error)),
            Err(Failure::Storage(error)) => return Err(error),
        };
        let changes = match &request.record_changes {
            Some(_) => changed(&planned),
            None => Vec::new(),
        };
        // From here on nothing can fail except storage. Writes happen in processing order;
        // outcomes are reported in request order.
        let mut planned: Vec<Option<Planned>> = planned.into_iter().map(Some).collect();
        let mut outcomes: Vec<Option<OpOutcome>> = planned.iter().map(|_| None).collect();
        for &index in &order {
            let plan = planned[index].take().expect("each operation is applied once");
            outcomes[index] = Some(self.apply(plan)?);
        }
        if let (Some(record), false) = (&request.record_changes, changes.is_empty()) {
            self.record(record, &changes)?;
        }
        self.group_index.append(&mut self.pending_index);
        Ok(Ok(outcomes.into_iter().map(|o| o.expect("every operation has an outcome")).collect()))
    }

    /// Decides which resource each operation addresses, in the order FHIR prescribes for
    /// transactions (deletes, then creates, then updates), and rewrites references between
    /// the request's resources. Results are in the request's order.
    fn resolve(&mut self, request: &WriteRequest, order: &[usize]) -> Result<Vec<Resolved>, Failure> {
        let mut resolved: Vec<Option<Resolved>> = request.ops.iter().map(|_| None).collect();
        let mut local_urls: HashMap<&str, String> = HashMap::new();
        let mut touched: HashSet<(ResourceType, Id)> = HashSet::new();
        let mut touch = |resource_type: ResourceType, id: &Id| -> Result<(), Failure> {
            if touched.insert((resource_type, id.clone())) {
                Ok(())
            } else {
                Err(Failure::Request(FhirError::incorrect(
                    IssueCode::Duplicate,
                    format!("{resource_type}/{id} is the target of more than one entry of the transaction"),
                )))
            }
        };

        for &index in order {
            let op = &request.ops[index];
            let outcome = match &op.action {
                Action::Create { resource_type, resource, if_none_exist } => {
                    let existing = match if_none_exist {
                        Some(criteria) => single_match(self.find(*resource_type, criteria, 2)?, criteria)?,
                        None => None,
                    };
                    // In a namespace, the resource's own id (already the namespace's) is kept.
                    let kept_id = match (request.keeps_create_ids, resource.get("id")) {
                        (true, Some(Value::String(id))) => {
                            Some(Id::parse(id).map_err(|e| Failure::Request(e.at(format!("{resource_type}.id"))))?)
                        }
                        _ => None,
                    };
                    // The version the kept id names, read once: for the check below, the guard
                    // and the plan. A generated id names nothing that exists.
                    let current = match (&existing, &kept_id) {
                        (None, Some(id)) => self.current(*resource_type, id)?,
                        _ => None,
                    };
                    // A conditional create that matched nothing must not overwrite the live
                    // resource its id names (which the criteria did not select): 409, as for a
                    // conditional update.
                    if let (Some(_), None, Some(id)) = (if_none_exist, &existing, &kept_id) {
                        if current.as_ref().is_some_and(|current| !current.deleted) {
                            return Err(Failure::Request(
                                FhirError::conflict(format!(
                                    "the conditional create matched no resource, but {resource_type}/{id} exists and \
                                     does not match the criteria"
                                ))
                                .at(format!("{resource_type}.id")),
                            ));
                        }
                    }
                    match existing {
                        Some(id) => Resolved::Existing { resource_type: *resource_type, id },
                        None => Resolved::Write {
                            resource_type: *resource_type,
                            id: kept_id.unwrap_or_else(Id::generate),
                            resource: resource.clone(),
                            precondition: Precondition::default(),
                            prepared: prepared_of(request, index),
                            hash: request.prepared_hashes.get(index).copied().flatten(),
                            current,
                        },
                    }
                }
                Action::Update { resource_type, target, resource, precondition } => {
                    // The id written to, and the version it names (read once, for the guard and
                    // the plan too; an id Braid generates names nothing).
                    let (id, current) = match target {
                        Target::Id(id) => (id.clone(), self.current(*resource_type, id)?),
                        Target::Criteria(criteria) => {
                            let body_id = resource.get("id").and_then(Value::as_str);
                            match single_match(self.find(*resource_type, criteria, 2)?, criteria)? {
                                Some(found) => {
                                    if body_id.is_some_and(|body_id| body_id != found.as_str()) {
                                        return Err(Failure::Request(FhirError::incorrect(
                                            IssueCode::Invalid,
                                            format!(
                                                "the conditional update matched {resource_type}/{found}, but the body has id '{}'",
                                                body_id.unwrap_or_default()
                                            ),
                                        )));
                                    }
                                    let current = self.current(*resource_type, &found)?;
                                    (found, current)
                                }
                                // No match: create, with the body's id if it has one. That id must
                                // not belong to a live resource the criteria did not select:
                                // overwriting it would update the wrong resource (409, as R5 states).
                                None => match body_id {
                                    Some(body_id) => {
                                        let id = Id::parse(body_id)
                                            .map_err(|e| Failure::Request(e.at(format!("{resource_type}.id"))))?;
                                        let current = self.current(*resource_type, &id)?;
                                        if current.as_ref().is_some_and(|c| !c.deleted) {
                                            return Err(Failure::Request(
                                                FhirError::conflict(format!(
                                                    "the conditional update matched no resource, but the body's id \
                                                     '{id}' belongs to an existing {resource_type} that does not \
                                                     match the criteria"
                                                ))
                                                .at(format!("{resource_type}.id")),
                                            ));
                                        }
                                        (id, current)
                                    }
                                    None => (Id::generate(), None),
                                },
                            }
                        }
                    };
                    Resolved::Write {
                        resource_type: *resource_type,
                        id,
                        resource: resource.clone(),
                        precondition: *precondition,
                        prepared: prepared_of(request, index),
                        hash: request.prepared_hashes.get(index).copied().flatten(),
                        current,
                    }
                }
                Action::Delete { resource_type, target, precondition } => {
                    let ids = match target {
                        Target::Id(id) => vec![id.clone()],
                        Target::Criteria(criteria) => {
                            let max = self.conditional_delete_max;
                            let ids = self.find(*resource_type, criteria, max + 1)?;
                            if ids.len() > max {
                                return Err(Failure::Request(FhirError::precondition_failed(
                                    IssueCode::MultipleMatches,
                                    format!(
                                        "the criteria '{}' match more than {max} {resource_type} resource{}; a conditional delete may delete at most {max}",
                                        criteria.text,
                                        if max == 1 { "" } else { "s" }
                                    ),
                                )));
                            }
                            ids
                        }
                    };
                    let mut targets = Vec::with_capacity(ids.len());
                    for id in ids {
                        let current = self.current(*resource_type, &id)?;
                        targets.push((id, current));
                    }
                    Resolved::Delete { resource_type: *resource_type, targets, precondition: *precondition }
                }
            };
            refuse_managed(&outcome)?;
            if let Some(guard) = &request.guard {
                match &outcome {
                    Resolved::Write { resource_type, id, current, .. } => {
                        self.check_guard(guard, *resource_type, id, current.as_ref(), Change::Update)?;
                    }
                    Resolved::Delete { resource_type, targets, .. } => {
                        for (id, current) in targets {
                            self.check_guard(guard, *resource_type, id, current.as_ref(), Change::Delete)?;
                        }
                    }
                    Resolved::Existing { .. } => {}
                }
            }
            match &outcome {
                Resolved::Write { resource_type, id, .. } | Resolved::Existing { resource_type, id } => {
                    touch(*resource_type, id)?;
                    if let Some(full_url) = &op.full_url {
                        local_urls.insert(full_url.as_str(), format!("{resource_type}/{id}"));
                    }
                }
                Resolved::Delete { resource_type, targets, .. } => {
                    for (id, _) in targets {
                        touch(*resource_type, id)?;
                    }
                }
            }
            resolved[index] = Some(outcome);
        }

        let mut resolved: Vec<Resolved> =
            resolved.into_iter().map(|r| r.expect("every operation was resolved")).collect();
        let mut conditional_cache: HashMap<String, String> = HashMap::new();
        for item in &mut resolved {
            if let Resolved::Write { resource, hash, .. } = item {
                let mut value = Value::Object(std::mem::take(resource));
                let mut rewritten = false;
                let result = rewrite_resource_references(&mut value, &mut |text: &str| {
                    let rewrite = self.rewrite_reference(text, &local_urls, request, &mut conditional_cache);
                    rewritten |= matches!(rewrite, Ok(Some(_)));
                    rewrite
                });
                let Value::Object(map) = value else { unreachable!("a resource stays an object") };
                *resource = map;
                result?;
                // The hash computed before queueing is of the resource as received.
                if rewritten {
                    *hash = None;
                }
            }
        }
        Ok(resolved)
    }

    fn rewrite_reference(
        &mut self,
        text: &str,
        local_urls: &HashMap<&str, String>,
        request: &WriteRequest,
        cache: &mut HashMap<String, String>,
    ) -> Result<Option<String>, Failure> {
        if let Some(local) = local_urls.get(text) {
            return Ok(Some(local.clone()));
        }
        match reference::parse(text) {
            reference::Target::Urn(urn) => Err(Failure::Request(FhirError::incorrect(
                IssueCode::NotFound,
                format!("the reference '{urn}' does not match the fullUrl of any entry"),
            ))),
            reference::Target::Conditional { .. } => {
                if let Some(resolved) = cache.get(text) {
                    return Ok(Some(resolved.clone()));
                }
                let Some((resource_type, criteria)) = request.conditional_references.get(text) else {
                    return Err(Failure::Request(FhirError::incorrect(
                        IssueCode::Invalid,
                        format!("the conditional reference '{text}' could not be parsed"),
                    )));
                };
                let matches = self.find(*resource_type, criteria, 2)?;
                match matches.as_slice() {
                    [id] => {
                        let local = format!("{resource_type}/{id}");
                        cache.insert(text.to_owned(), local.clone());
                        Ok(Some(local))
                    }
                    [] => Err(Failure::Request(FhirError::precondition_failed(
                        IssueCode::NotFound,
                        format!("the conditional reference '{text}' matches no resource"),
                    ))),
                    _ => Err(Failure::Request(FhirError::precondition_failed(
                        IssueCode::MultipleMatches,
                        format!("the conditional reference '{text}' matches more than one resource"),
                    ))),
                }
            }
            _ => Ok(None),
        }
    }

    /// Stores the record `record` makes of a request's `changes`, as a new resource.
    fn record(&mut self, record: &RecordChanges, changes: &[Changed]) -> Result<(), StoreError> {
        let resource = (record.0)(changes, &format_instant(self.clock.last_micros));
        let Some(resource_type) = resource.get("resourceType").and_then(Value::as_str).and_then(ResourceType::parse)
        else {
            tracing::error!("a change record without a known resourceType was not stored");
            return Ok(());
        };
        let hash = content_hash(&resource);
        // An id of Braid's own, outside the request's namespace: the record is not the writer's.
        let plan = Planned::Put {
            resource_type,
            id: Id::generate(),
            version: 1,
            resource,
            hash,
            created: true,
            previous: None,
            prepared: None,
        };
        self.apply(plan).map(|_| ())
    }

    /// Checks preconditions and decides versions, still without writing.
    fn plan(&mut self, resolved: Vec<Resolved>) -> Result<Vec<Planned>, Failure> {
        let mut planned = Vec::with_capacity(resolved.len());
        for item in resolved {
            planned.push(match item {
                Resolved::Existing { resource_type, id } => {
                    let current = self.current(resource_type, &id)?.ok_or_else(|| {
                        Failure::Storage(StoreError::Corrupt(resource_version::prefix(
                            resource_type.as_str(),
                            id.as_str(),
                        )))
                    })?;
                    let body = current.body(self.codecs).map_err(request_failure)?;
                    Planned::Unchanged { resource_type, id, current, body }
                }
                Resolved::Write { resource_type, id, resource, precondition, prepared, hash, current, .. } => {
                    check_precondition(resource_type, &id, precondition, current.as_ref())?;
                    let hash = hash.unwrap_or_else(|| content_hash(&resource));
                    let unchanged = match &current {
                        Some(current) if !current.deleted => {
                            current.has_content_of(hash, &resource, self.codecs).map_err(request_failure)?
                        }
                        _ => false,
                    };
                    match current {
                        Some(current) if unchanged => {
                            let body = current.body(self.codecs).map_err(request_failure)?;
                            Planned::Unchanged { resource_type, id, current, body }
                        }
                        current => {
                            let created = current.as_ref().is_none_or(|c| c.deleted);
                            let previous = current.as_ref().filter(|c| !c.deleted).map(|c| c.version);
                            let version = current.map_or(1, |c| c.version + 1);
                            Planned::Put { resource_type, id, version, resource, hash, created, previous, prepared }
                        }
                    }
                }
                Resolved::Delete { resource_type, targets, precondition } => {
                    let mut tombstones = Vec::new();
                    for (id, current) in targets {
                        if precondition.if_match.is_some() {
                            check_precondition(resource_type, &id, precondition, current.as_ref())?;
                        }
                        if let Some(current) = current.filter(|c| !c.deleted) {
                            tombstones.push((id, current.version + 1));
                        }
                    }
                    Planned::Delete { resource_type, tombstones }
                }
            });
        }
        Ok(planned)
    }

    fn apply(&mut self, plan: Planned) -> Result<OpOutcome, StoreError> {
        let last_updated = self.clock.last_micros;
        match plan {
            Planned::Unchanged { resource_type, id, current, body } => Ok(OpOutcome {
                resource_type,
                id: Some(id),
                kind: OutcomeKind::Unchanged,
                version: Some(current.version),
                last_updated_micros: Some(current.last_updated_micros),
                body: Some(Arc::new(body)),
            }),
            Planned::Put { resource_type, id, version, resource, hash, created, previous, prepared } => {
                // Stamping changes only what the hash leaves out (`id`, `meta.versionId`,
                // `meta.lastUpdated`), so `hash` is the stamped version's too.
                let stamped =
                    Value::Object(stamp(resource, resource_type, &id, version, &format_instant(last_updated)));
                let body = serde_json::to_vec(&stamped).expect("a JSON map serialises");
                let op = if created { Op::Create } else { Op::Update };
                let t = self.put_version(resource_type, &id, version, op, &self.codecs.encode(&body, hash))?;
                if let Some(previous) = previous {
                    self.supersede(resource_type, &id, previous, t)?;
                }
                self.index(resource_type, &id, version, t, &stamped, prepared.as_deref())?;
                Ok(OpOutcome {
                    resource_type,
                    id: Some(id),
                    kind: if created { OutcomeKind::Created } else { OutcomeKind::Updated },
                    version: Some(version),
                    last_updated_micros: Some(last_updated),
                    body: Some(Arc::new(body)),
                })
            }
            Planned::Delete { resource_type, tombstones } => {
                let count = tombstones.len();
                let first = tombstones.first().cloned();
                for (id, version) in tombstones {
                    let t = self.put_version(resource_type, &id, version, Op::Delete, &[])?;
                    // A tombstone follows a live version (deleting a deletion writes nothing).
                    self.supersede(resource_type, &id, version - 1, t)?;
                }
                Ok(OpOutcome {
                    resource_type,
                    version: first.as_ref().map(|(_, v)| *v),
                    id: first.map(|(id, _)| id),
                    kind: if count == 0 { OutcomeKind::NothingToDelete } else { OutcomeKind::Deleted { count } },
                    last_updated_micros: (count > 0).then_some(last_updated),
                    body: None,
                })
            }
        }
    }

    /// Writes one version (`stored`: its body as `codec` encodes it, empty for a deletion) and
    /// returns its logical time `t`.
    fn put_version(
        &mut self,
        resource_type: ResourceType,
        id: &Id,
        version: u64,
        op: Op,
        stored: &[u8],
    ) -> Result<u64, StoreError> {
        let t = self.clock.next_t;
        self.clock.next_t += 1;
        let header = Header { op, t, last_updated_micros: self.clock.last_micros };
        let (ty, id) = (resource_type.as_str(), id.as_str());
        let key = resource_version::encode(ty, id, version);
        self.tables.versions.insert(key.as_slice(), resource_version::encode_value(header, stored).as_slice())?;
        self.tables.type_history.insert(type_history::encode(ty, t, id, version).as_slice(), ())?;
        self.tables.system_history.insert(system_history::encode(t, ty, id, version).as_slice(), ())?;
        Ok(t)
    }

    /// Writes the index entries of a new resource version, live from logical time `t`.
    fn index(
        &mut self,
        resource_type: ResourceType,
        id: &Id,
        version: u64,
        t: u64,
        resource: &Value,
        prepared: Option<&[IndexEntry]>,
    ) -> Result<(), StoreError> {
        let (ty, id) = (resource_type.as_str(), id.as_str());
        let entries = match (prepared, &self.local_base) {
            (Some(prepared), base) => self.indexer.complete(resource_type, resource, base.as_deref(), prepared),
            (None, Some(base)) => self.indexer.entries_on_base(resource_type, resource, base),
            (None, None) => self.indexer.entries(resource_type, resource),
        };
        let entries: BTreeSet<_> = entries.into_iter().collect();
        for entry in &entries {
            self.pending_index.push((spv::encode(ty, &entry.param, &entry.value, id, version), (t, u64::MAX)));
        }
        let record = rspv::encode_value(ty, entries.iter().map(|e| (e.param.as_str(), e.value.as_slice())));
        self.tables.rspv.insert(rspv::encode(ty, id, version).as_slice(), record.as_slice())?;
        Ok(())
    }

    /// Marks the index entries of `version` as superseded from logical time `t`. They stay in the
    /// table, so that readers holding an older snapshot still find them.
    fn supersede(&mut self, resource_type: ResourceType, id: &Id, version: u64, t: u64) -> Result<(), StoreError> {
        self.flush_index()?;
        let (ty, id) = (resource_type.as_str(), id.as_str());
        // The garbage collector removes these entries once no paging cursor can need them.
        self.tables.superseded.insert(superseded::encode(t, ty, id, version).as_slice(), ())?;
        let record_key = rspv::encode(ty, id, version);
        let mut keys = Vec::new();
        if let Some(record) = self.tables.rspv.get(record_key.as_slice())? {
            let entries = rspv::decode_value(record.value()).ok_or_else(|| StoreError::Corrupt(record_key.clone()))?;
            keys.extend(entries.into_iter().map(|(param, value)| spv::encode_hashed(param, value, id, version)));
        }
        for key in keys {
            let created = self
                .tables
                .spv
                .get(key.as_slice())?
                .map(|v| v.value().0)
                .ok_or_else(|| StoreError::Corrupt(key.clone()))?;
            self.pending_index.push((key, (created, t)));
        }
        Ok(())
    }

    /// Inserts the index writes of the group's earlier requests (see `group_index`).
    fn flush_index(&mut self) -> Result<(), StoreError> {
        insert_sorted(&mut self.tables.spv, std::mem::take(self.group_index))
    }

    fn current(&self, resource_type: ResourceType, id: &Id) -> Result<Option<Current>, StoreError> {
        let prefix = resource_version::prefix(resource_type.as_str(), id.as_str());
        let end = prefix_end(&prefix);
        let Some(entry) = self.tables.versions.range(prefix.as_slice()..end.as_slice())?.next_back() else {
            return Ok(None);
        };
        let (key, value) = entry?;
        let (_, _, version) =
            resource_version::decode(key.value()).ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
        let (header, stored) =
            resource_version::decode_value(value.value()).ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
        Ok(Some(Current {
            version,
            deleted: header.op == Op::Delete,
            last_updated_micros: header.last_updated_micros,
            key: key.value().to_vec(),
            stored: stored.to_vec(),
        }))
    }

    /// Refuses, as if it did not exist, an existing live resource (`current` is its current
    /// version) the request's guard does not admit.
    fn check_guard(
        &mut self,
        guard: &WriteGuard,
        resource_type: ResourceType,
        id: &Id,
        current: Option<&Current>,
        change: Change,
    ) -> Result<(), Failure> {
        let Some(current) = current.filter(|current| !current.deleted) else { return Ok(()) };
        self.flush_index()?;
        let view = IndexTables { versions: &self.tables.versions, spv: &self.tables.spv, rspv: &self.tables.rspv };
        if (guard.0)(&view, resource_type, id, current.version, change).map_err(Failure::Request)? {
            Ok(())
        } else {
            Err(Failure::Request(FhirError::not_found(format!("{resource_type}/{id} does not exist"))))
        }
    }

    /// The ids of the current resources of `resource_type` that match `criteria`, as of this
    /// transaction (including the requests before this one in the same commit); at most `limit`.
    fn find(&mut self, resource_type: ResourceType, criteria: &Criteria, limit: usize) -> Result<Vec<Id>, Failure> {
        self.flush_index()?;
        let view = IndexTables { versions: &self.tables.versions, spv: &self.tables.spv, rspv: &self.tables.rspv };
        (criteria.find)(&view, resource_type, limit).map_err(Failure::Request)
    }
}

/// Refuses an operation on a resource only the master patient index writes (a golden Patient):
/// its content is derived from its source Patients and their links, which are what a client
/// changes instead.
fn refuse_managed(outcome: &Resolved) -> Result<(), Failure> {
    let is_managed = |resource_type: ResourceType, id: &Id| super::ops::is_managed(resource_type, id.as_str());
    let managed = match outcome {
        Resolved::Write { resource_type, id, .. } => is_managed(*resource_type, id).then_some((*resource_type, id)),
        Resolved::Delete { resource_type, targets, .. } => {
            targets.iter().map(|(id, _)| id).find(|id| is_managed(*resource_type, id)).map(|id| (*resource_type, id))
        }
        Resolved::Existing { .. } => None,
    };
    match managed {
        Some((resource_type, id)) => Err(Failure::Request(FhirError::new(
            Category::Forbidden,
            IssueCode::Forbidden,
            format!(
                "{resource_type}/{id} is a golden Patient, maintained by Braid's master patient index: change its \
                 source Patients, or their links with the $mdm operations"
            ),
        ))),
        None => Ok(()),
    }
}

/// The resource versions `planned` writes, in request order.
fn changed(planned: &[Planned]) -> Vec<Changed> {
    let mut changes = Vec::new();
    for plan in planned {
        match plan {
            Planned::Put { resource_type, id, version, created, .. } => changes.push(Changed {
                resource_type: *resource_type,
                id: id.clone(),
                version: *version,
                kind: if *created { ChangeKind::Created } else { ChangeKind::Updated },
            }),
            Planned::Delete { resource_type, tombstones } => changes.extend(tombstones.iter().map(|(id, version)| {
                Changed { resource_type: *resource_type, id: id.clone(), version: *version, kind: ChangeKind::Deleted }
            })),
            Planned::Unchanged { .. } => {}
        }
    }
    changes
}

/// The order in which FHIR processes a transaction's writes: deletes, then creates, then
/// updates; within each kind, the order of the request.
fn processing_order(request: &WriteRequest) -> Vec<usize> {
    let rank = |action: &Action| match action {
        Action::Delete { .. } => 0,
        Action::Create { .. } => 1,
        Action::Update { .. } => 2,
    };
    let mut order: Vec<usize> = (0..request.ops.len()).collect();
    order.sort_by_key(|&index| rank(&request.ops[index].action));
    order
}

/// Inserts `entries` into `search_param_value` in key order.
fn insert_sorted(
    spv_table: &mut Table<'_, &'static [u8], Lifetime>,
    mut entries: Vec<(Vec<u8>, (u64, u64))>,
) -> Result<(), StoreError> {
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (key, live) in entries {
        spv_table.insert(key.as_slice(), live)?;
    }
    Ok(())
}

/// The entries prepared for operation `index` of `request`, if any.
fn prepared_of(request: &WriteRequest, index: usize) -> Option<Arc<[IndexEntry]>> {
    request.prepared_index.get(index).cloned().flatten()
}

/// A request's own failure, or a storage failure that aborts the whole group.
enum Failure {
    Request(FhirError),
    Storage(StoreError),
}

/// A damaged stored body fails the request that reads it (500, naming the version), not the
/// whole group: the other requests of the commit do not depend on it.
fn request_failure(error: StoreError) -> Failure {
    match error {
        StoreError::CorruptBody { .. } => Failure::Request(FhirError::from(error)),
        other => Failure::Storage(other),
    }
}

impl From<StoreError> for Failure {
    fn from(error: StoreError) -> Self {
        Failure::Storage(error)
    }
}

impl From<FhirError> for Failure {
    fn from(error: FhirError) -> Self {
        Failure::Request(error)
    }
}

/// Conditional create and update need at most one match; `matches` holds at most two (enough
/// to tell "more than one").
fn single_match(matches: Vec<Id>, criteria: &Criteria) -> Result<Option<Id>, Failure> {
    match matches.len() {
        0 => Ok(None),
        1 => Ok(matches.into_iter().next()),
        _ => Err(Failure::Request(FhirError::precondition_failed(
            IssueCode::MultipleMatches,
            format!("the criteria '{}' match more than one resource; they must match at most one", criteria.text),
        ))),
    }
}

fn check_precondition(
    resource_type: ResourceType,
    id: &Id,
    precondition: Precondition,
    current: Option<&Current>,
) -> Result<(), Failure> {
    let live = current.filter(|c| !c.deleted);
    if let Some(expected) = precondition.if_match {
        // A deleted resource has no current representation, so no ETag matches it (RFC 9110
        // §13.1.1), not even the version number of its deletion.
        if let Some(deleted) = current.filter(|c| c.deleted) {
            return Err(Failure::Request(FhirError::new(
                Category::PreconditionFailed,
                IssueCode::Deleted,
                format!(
                    "If-Match expected version {expected} of {resource_type}/{id}, but it was deleted (version {})",
                    deleted.version
                ),
            )));
        }
        let actual = current.map(|c| c.version);
        if actual != Some(expected) {
            let actual = actual.map_or("none".to_owned(), |v| v.to_string());
            return Err(Failure::Request(FhirError::new(
                Category::PreconditionFailed,
                IssueCode::Conflict,
                format!(
                    "If-Match expected version {expected} of {resource_type}/{id}, but the current version is {actual}"
                ),
            )));
        }
    }
    if precondition.if_none_match_any && live.is_some() {
        return Err(Failure::Request(FhirError::new(
            Category::PreconditionFailed,
            IssueCode::Duplicate,
            format!("If-None-Match: * but {resource_type}/{id} already exists"),
        )));
    }
    Ok(())
}

fn is_same_content(stored: &[u8], incoming: &Resource) -> bool {
    match serde_json::from_slice::<Value>(stored) {
        Ok(Value::Object(current)) => same_content(&current, incoming),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use serde_json::json;

    use super::super::{WriteOp, testing};
    use super::*;

    /// A Patient of about 1.2 KB that compression cannot shrink much (pseudo-random text).
    fn bulky_patient(n: u64) -> Value {
        let mut state = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let noise: String = (0..150)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                format!("{:x}", state & 0xFF_FFFF)
            })
            .collect::<Vec<_>>()
            .join(" ");
        json!({"resourceType": "Patient", "id": format!("p{n}"), "name": [{"family": noise}]})
    }

    fn file_length(path: &Path) -> u64 {
        std::fs::metadata(path).unwrap().len()
    }

    #[test]
    fn a_small_database_gives_back_its_slack_at_a_clean_stop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("braid.redb");
        let store = testing::open(&path);
        let runtime = testing::runtime();
        // Write until redb has grown the file (it doubles it) well past what its pages use.
        let mut written = 0u64;
        let (length, used) = loop {
            let ops = (written..written + 50)
                .map(|n| {
                    let request = testing::put(ResourceType::PATIENT, &format!("p{n}"), bulky_patient(n));
                    request.ops.into_iter().next().unwrap()
                })
                .collect::<Vec<WriteOp>>();
            runtime.block_on(store.write(WriteRequest { ops, ..WriteRequest::default() })).unwrap();
            written += 50;
            let (length, used) = (file_length(&path), store.allocated_bytes().unwrap());
            if length.saturating_sub(used) >= (length / 4).max(1 << 20) {
                break (length, used);
            }
            assert!(written < 20_000, "the file never had a quarter of slack: {length} bytes, {used} used");
        };
        testing::close(store);

        let after = file_length(&path);
        assert!(after < length, "the file was compacted: {after} bytes, {length} before");
        assert!(after <= used + used / 4, "what is left is about what the pages use: {after} bytes for {used}");

        // Everything reads back the same.
        let store = testing::open(&path);
        let snapshot = store.snapshot().unwrap();
        for n in 0..written {
            let version = snapshot.current(ResourceType::PATIENT, &format!("p{n}")).unwrap().unwrap();
            let body: Value = serde_json::from_slice(&version.body).unwrap();
            assert_eq!(body["name"], bulky_patient(n)["name"], "p{n}");
        }
        drop(snapshot);
        testing::close(store);
    }

    #[test]
    fn only_a_small_file_with_a_quarter_of_slack_is_compacted_at_stop() {
        const MIB: u64 = 1 << 20;
        assert!(worth_compacting_at_stop(8 * MIB, 4 * MIB));
        assert!(worth_compacting_at_stop(8 * MIB, 6 * MIB), "exactly a quarter");
        assert!(!worth_compacting_at_stop(8 * MIB, 6 * MIB + 1), "less than a quarter");
        assert!(!worth_compacting_at_stop(2 * MIB, MIB + 1), "less than 1 MiB");
        assert!(worth_compacting_at_stop(64 * MIB, 32 * MIB), "the largest file compacted");
        assert!(!worth_compacting_at_stop(64 * MIB + 4096, 32 * MIB), "a larger one is left to braid compact");
        assert!(!worth_compacting_at_stop(8 * MIB, 9 * MIB), "pages beyond the length are no slack");
    }

    #[test]
    fn publishing_retries_and_reports_when_every_attempt_fails() {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("braid.redb")).unwrap();
        super::super::Store::initialise_with(&db, &crate::search::SearchIndexer, &mut |_| {}).unwrap();
        let codecs = Arc::new(Codecs::built_in());
        let latest = RwLock::new(Arc::new(Snapshot::open(&db, &codecs).unwrap()));

        let calls = Cell::new(0);
        let flaky = || {
            calls.set(calls.get() + 1);
            if calls.get() < 3 { Err(StoreError::WriterGone) } else { Snapshot::open(&db, &codecs) }
        };
        let before = latest.read().unwrap().clone();
        assert!(publish_with(flaky, &latest, 3), "the third attempt succeeds");
        assert_eq!(calls.get(), 3);
        assert!(!Arc::ptr_eq(&before, &latest.read().unwrap()), "a new snapshot was published");

        let published = latest.read().unwrap().clone();
        calls.set(0);
        let broken = || {
            calls.set(calls.get() + 1);
            Err(StoreError::WriterGone)
        };
        assert!(!publish_with(broken, &latest, 3), "the caller is told, and stops the process");
        assert_eq!(calls.get(), 3);
        assert!(Arc::ptr_eq(&published, &latest.read().unwrap()));
    }
}
