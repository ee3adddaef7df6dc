//! Bulk Data export (FHIR Bulk Data Access 2.0): `$export` at the system, Patient and Group
//! levels, run asynchronously.
//!
//! A kick-off becomes a job: it takes the store's current snapshot and, on a blocking thread,
//! streams every matching resource of each type into NDJSON files in a directory next to the
//! database (`<data>.exports/<job>/<Type>-<n>.ndjson`, at most [`MAX_FILE_RESOURCES`] per
//! file). One resource is in memory at a time, whatever the size of the export. Each resource
//! is checked against what the requester may read (a patient's token reaches its compartment,
//! a granular scope its filter), and, for the Patient and Group levels, against the patients
//! concerned; nothing else is written to the files.
//!
//! Job records live in the store's `auth` table under `export/<id>` (written at kick-off and
//! when the job ends), so a finished export outlives a restart until it expires; a job a
//! restart interrupted is reported failed (kick off again). Files and records are deleted
//! after the retention time ([`Exports::sweep`]), or when the client cancels.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::auth::Access;
use crate::auth::records::Records;
use crate::crypt::DataKey;
use crate::crypt::sealed::SealedWriter;
use crate::fhir::{Category, FhirError, IssueCode, ResourceType};
use crate::search::compartment::COMPARTMENT_KEY;
use crate::search::engine;
use crate::search::query::Clause;
use crate::store::{IndexView, LATEST, Snapshot, Store};

/// Export jobs, by id.
const JOBS: Records = Records::new(b"export/");

/// Most resources in one NDJSON file.
pub const MAX_FILE_RESOURCES: u64 = 100_000;

/// Most distinct resources outside the Patient compartment that one Patient or Group export
/// follows references to (see [`Kickoff::referenced`]): the set is held in memory while the
/// export runs, so an export that references more fails and says so.
pub const MAX_REFERENCED_RESOURCES: usize = 100_000;

/// Most jobs running at once; more wait for a turn.
pub const MAX_RUNNING: usize = 2;

/// Most jobs kept (running, waiting or finished and not yet expired). A kick-off beyond makes
/// room by deleting the requester's own oldest finished job (its files and record, as a cancel
/// would); without one it is refused (429). Another requester's jobs are never deleted to make
/// room: its files stay until it fetched them, cancelled, or they expired.
pub const MAX_JOBS: usize = 50;

/// Most jobs kept for one requester (client, user and patient), so that one cannot take every
/// place: beyond, its own oldest finished job is deleted to make room, and a kick-off is
/// refused (429) only while this many of its jobs are in progress. Clients seldom cancel a
/// finished export (the Bulk Data client libraries download and leave), so a bound on finished
/// jobs alone would refuse them after a few runs, for as long as the retention time.
pub const MAX_JOBS_PER_REQUESTER: usize = 10;

/// Whether a new job can be kept, and what must go first.
#[derive(Debug, PartialEq, Eq)]
enum Room {
    Free,
    /// Delete this finished job (the requester's oldest), then look again.
    Evict(String),
    /// No finished job of the requester's can make room.
    Full,
}

/// A kept job, as [`room`] weighs it.
struct Kept<'a> {
    id: &'a str,
    /// Started by the requester asking for room.
    own: bool,
    running: bool,
    /// [`Job::order`]: lower is older.
    order: u64,
}

/// Where a requester's new job finds room among `kept` (see [`MAX_JOBS`] and
/// [`MAX_JOBS_PER_REQUESTER`]).
fn room<'a>(kept: impl Iterator<Item = Kept<'a>> + Clone) -> Room {
    let own = kept.clone().filter(|job| job.own).count();
    if own < MAX_JOBS_PER_REQUESTER && kept.clone().count() < MAX_JOBS {
        return Room::Free;
    }
    kept.filter(|job| job.own && !job.running)
        .min_by_key(|job| job.order)
        .map_or(Room::Full, |oldest| Room::Evict(oldest.id.to_owned()))
}

/// Which resources an export reaches.
#[derive(Debug, Clone)]
pub enum Level {
    /// `GET /$export`: every resource.
    System,
    /// `GET /Patient/$export`: the resources of every patient's compartment.
    Patient,
    /// `GET /Group/{id}/$export`: the compartments of the group's member patients (their
    /// `Patient/<id>` references).
    Group { members: HashSet<String> },
}

/// A checked kick-off request.
pub struct Kickoff {
    pub level: Level,
    /// The types to export, each readable by the requester, with the clauses that limit what
    /// the requester reads of it (none: all of it).
    pub types: Vec<(ResourceType, Vec<Clause>)>,
    /// For a Patient or Group export whose `_type` names shared reference data outside the
    /// Patient compartment (`auth::restrict::SHARED_TYPES`), those types (as `types`): their
    /// resources that the exported ones reference are exported too, after them. The Bulk Data
    /// IG allows such resources, "helpful in interpreting the patient data" (the
    /// Practitioners, Organizations, Locations and Medications a record points at). Types that
    /// may hold other patients' records (a Device, a Task, a Bundle) are never followed. Empty
    /// for a system export, and when `_type` names none.
    pub referenced: Vec<(ResourceType, Vec<Clause>)>,
    /// `_since`, in microseconds since the epoch.
    pub since_micros: Option<i64>,
    /// The kick-off URL, for the manifest.
    pub request: String,
    /// The server's FHIR base, for the files' URLs and the requester's limits.
    pub base: String,
    pub access: Access,
}

/// An export job as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobRecord {
    pub id: String,
    /// The client that asked (`None` with authorization off): only it may poll, download or
    /// cancel.
    pub client_id: Option<String>,
    /// The user (or, for a backend service, the client) and the patient of the token that asked:
    /// another user's or patient's token of the same client may not see the job either.
    #[serde(default)]
    pub subject: Option<String>,
    #[serde(default)]
    pub patient: Option<String>,
    pub request: String,
    /// When the snapshot exported was taken (FHIR instant).
    pub transaction_time: String,
    pub status: JobStatus,
    /// Seconds since the epoch.
    pub created: u64,
    /// When the files are deleted (seconds since the epoch), once the job has ended.
    pub expires: Option<u64>,
    pub output: Vec<Output>,
    /// The resource scopes of the token that kicked it off (`None` with authorization off, and
    /// for jobs recorded before they were kept): the status, the files and a cancel need a
    /// token holding every one of them, as the Bulk Data IG asks (the files hold what those
    /// scopes reach, so a narrower token of the same client may not fetch them).
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum JobStatus {
    Running,
    Complete,
    Failed { reason: String },
}

/// One NDJSON file of a finished export.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Output {
    #[serde(rename = "type")]
    pub resource_type: String,
    /// The file's name in the job's directory.
    pub file: String,
    pub count: u64,
}

/// A job in this process.
struct Job {
    record: Mutex<JobRecord>,
    /// Resources written so far.
    exported: AtomicU64,
    /// The type being exported, as an index into the job's types, and their number.
    type_index: AtomicU64,
    types: u64,
    cancelled: AtomicBool,
    /// Kick-off order among this process's jobs (those loaded at start first, by creation):
    /// which finished job is the oldest, when one must make room. `created` has whole seconds
    /// only, too coarse for a client kicking off several exports a second.
    order: u64,
}

impl Job {
    /// A job of `types` types for `record`, nothing exported yet.
    fn new(record: JobRecord, types: usize, order: u64) -> Job {
        Job {
            record: Mutex::new(record),
            exported: AtomicU64::new(0),
            type_index: AtomicU64::new(0),
            types: types as u64,
            cancelled: AtomicBool::new(false),
            order,
        }
    }

    fn record(&self) -> JobRecord {
        self.record.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

/// What a poll finds.
pub enum Poll {
    /// Still running: a progress note.
    Running(String),
    Complete(Box<JobRecord>),
    /// Why it failed.
    Failed(String),
}

/// The server's export jobs.
pub struct Exports {
    store: Store,
    /// `<data>.exports`: one directory per job.
    dir: PathBuf,
    retention_secs: u64,
    jobs: Mutex<HashMap<String, Arc<Job>>>,
    turns: Arc<tokio::sync::Semaphore>,
    /// The next job's [`Job::order`].
    next_order: AtomicU64,
    /// Held while a job's end is recorded, and while a job is forgotten.
    ending: tokio::sync::Mutex<()>,
    /// Set when the server stops: running jobs end without a record (the next start reports
    /// them failed).
    stopping: Arc<AtomicBool>,
}

/// Where the exports of the database `data` are written.
pub fn directory(data: &Path) -> PathBuf {
    crate::store::beside(data, "exports")
}

fn fault(error: impl std::fmt::Display) -> FhirError {
    tracing::error!(%error, "export storage failure");
    FhirError::fault("export")
}

impl Exports {
    /// Loads the jobs stored with `store` (whose file is `data`): finished ones stay until they
    /// expire; ones a stop interrupted are failed and their partial files removed.
    pub async fn open(store: &Store, data: &Path, retention_secs: u64) -> Result<Exports, FhirError> {
        let dir = directory(data);
        let mut records: Vec<JobRecord> = JOBS.all(store).map_err(fault)?;
        records.sort_by(|a, b| (a.created, &a.id).cmp(&(b.created, &b.id)));
        let now = crate::auth::now_secs();
        let mut jobs = HashMap::new();
        let loaded = records.len() as u64;
        for (order, mut record) in (0..).zip(records) {
            if record.status == JobStatus::Running {
                record.status = JobStatus::Failed {
                    reason: "the server stopped while this export ran; kick off a new export".into(),
                };
                record.expires = Some(now + retention_secs);
                record.output.clear();
                let _ = tokio::fs::remove_dir_all(dir.join(&record.id)).await;
                save(store, &record).await?;
            }
            // Loaded jobs are finished: their progress figures are never shown.
            jobs.insert(record.id.clone(), Arc::new(Job::new(record, 0, order)));
        }
        let exports = Exports {
            store: store.clone(),
            dir,
            retention_secs,
            jobs: Mutex::new(jobs),
            turns: Arc::new(tokio::sync::Semaphore::new(MAX_RUNNING)),
            next_order: AtomicU64::new(loaded),
            ending: tokio::sync::Mutex::new(()),
            stopping: Arc::new(AtomicBool::new(false)),
        };
        exports.sweep().await?;
        Ok(exports)
    }

    /// Stops the running jobs soon (at their next resource), for a shutdown.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Job>>> {
        self.jobs.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts an export; returns the job's id.
    pub async fn start(self: &Arc<Self>, kickoff: Kickoff) -> Result<String, FhirError> {
        let snapshot = self.store.snapshot()?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        // What the export holds is what was committed up to its snapshot, and every later write
        // is stamped later than the snapshot's newest version (the writer's clock only moves
        // forward, and a commit takes far more than a microsecond). The transaction time is that
        // newest version's instant, cut to the millisecond the manifest shows: a `_since` of it
        // misses nothing later, and at worst repeats the versions of that last millisecond.
        let newest = snapshot.newest_last_updated()?.unwrap_or(0);
        let transaction_time = crate::fhir::json::format_instant(newest);
        let (client_id, subject, patient) = requester(&kickoff.access);
        let record = JobRecord {
            id: id.clone(),
            client_id: client_id.map(str::to_owned),
            subject: subject.map(str::to_owned),
            patient: patient.map(str::to_owned),
            request: kickoff.request.clone(),
            transaction_time,
            status: JobStatus::Running,
            created: crate::auth::now_secs(),
            expires: None,
            output: Vec::new(),
            scopes: resource_scopes(&kickoff.access),
        };
        let order = self.next_order.fetch_add(1, Ordering::Relaxed);
        let job = Arc::new(Job::new(record.clone(), kickoff.types.len() + kickoff.referenced.len(), order));
        // Each turn either keeps the job or deletes one finished job: at most MAX_JOBS turns
        // can delete (another kick-off may take the room made meanwhile, hence a loop).
        for _ in 0..=MAX_JOBS {
            let evict = {
                let mut jobs = self.jobs();
                let records: Vec<(JobRecord, u64)> = jobs.values().map(|job| (job.record(), job.order)).collect();
                let kept = records.iter().map(|(kept, order)| Kept {
                    id: &kept.id,
                    own: kept.owner() == record.owner(),
                    running: kept.status == JobStatus::Running,
                    order: *order,
                });
                match room(kept) {
                    Room::Free => {
                        jobs.insert(id.clone(), job.clone());
                        None
                    }
                    Room::Evict(oldest) => Some(oldest),
                    Room::Full => return Err(too_many_in_progress()),
                }
            };
            match evict {
                None => break,
                Some(oldest) => {
                    tracing::info!(job = %oldest, "a finished export was deleted to make room for a new one");
                    self.forget(&oldest).await?;
                }
            }
        }
        if !self.jobs().contains_key(&id) {
            return Err(too_many_in_progress());
        }
        if let Err(error) = save(&self.store, &record).await {
            self.jobs().remove(&id);
            return Err(error);
        }
        let exports = self.clone();
        tokio::spawn(async move {
            let Ok(_turn) = exports.turns.clone().acquire_owned().await else { return };
            let (job_dir, running, stopping) =
                (exports.dir.join(&job.record().id), job.clone(), exports.stopping.clone());
            let seal = exports.store.data_key().cloned();
            let result = tokio::task::spawn_blocking(move || {
                run(&running, &stopping, &snapshot, &kickoff, &job_dir, seal.as_ref())
            })
            .await
            .unwrap_or_else(|_| Err("the export stopped unexpectedly".into()));
            exports.finish(&job, result).await;
        });
        Ok(id)
    }

    async fn finish(&self, job: &Job, result: Result<Vec<Output>, String>) {
        let id = job.record().id;
        // A cancel (which forgets the job) and the end of the job take turns: a cancelled job's
        // record is never written back.
        let _ending = self.ending.lock().await;
        if self.stopping.load(Ordering::Relaxed) {
            // Stopped by a shutdown: the next start reports it failed and removes its files.
            return;
        }
        if job.cancelled.load(Ordering::Relaxed) || !self.jobs().contains_key(&id) {
            let _ = tokio::fs::remove_dir_all(self.dir.join(&id)).await;
            return;
        }
        let mut record = job.record();
        match result {
            Ok(output) => {
                record.status = JobStatus::Complete;
                record.output = output;
            }
            Err(reason) => {
                tracing::warn!(job = %id, %reason, "an export failed");
                record.status = JobStatus::Failed { reason };
            }
        }
        record.expires = Some(crate::auth::now_secs() + self.retention_secs);
        if matches!(record.status, JobStatus::Failed { .. }) {
            let _ = tokio::fs::remove_dir_all(self.dir.join(&id)).await;
        }
        if let Err(error) = save(&self.store, &record).await {
            tracing::error!(%error, job = %id, "cannot record the end of an export");
        }
        // Polls see the end only now that it is recorded: a manifest a client got is still
        // there after a restart (until it expires), never turned into "the server stopped".
        *job.record.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = record;
    }

    /// The job `id` as the caller sees it: `None` if there is none, or it was started by another
    /// client, or by another user or patient of the same client; refused (403) when the
    /// caller's token lacks a resource scope of the token that kicked it off.
    fn find(&self, id: &str, access: &Access) -> Result<Option<Arc<Job>>, FhirError> {
        let Some(job) = self.jobs().get(id).cloned().filter(|job| job.owned_by(requester(access))) else {
            return Ok(None);
        };
        let needed = job.record.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).scopes.clone();
        match (needed, resource_scopes(access)) {
            (Some(needed), Some(held)) if !needed.iter().all(|scope| held.contains(scope)) => Err(FhirError::new(
                Category::Forbidden,
                IssueCode::Forbidden,
                format!(
                    "this export was kicked off with the scopes {}; the access token lacks some of them",
                    needed.join(" ")
                ),
            )),
            _ => Ok(Some(job)),
        }
    }

    /// Where the job `id` stands, for its requester.
    pub fn poll(&self, id: &str, access: &Access) -> Result<Option<Poll>, FhirError> {
        let Some(job) = self.find(id, access)? else { return Ok(None) };
        let record = job.record();
        Ok(Some(match record.status {
            JobStatus::Running => Poll::Running(format!(
                "{} resources exported; type {} of {}",
                job.exported.load(Ordering::Relaxed),
                (job.type_index.load(Ordering::Relaxed) + 1).min(job.types.max(1)),
                job.types.max(1)
            )),
            JobStatus::Complete => Poll::Complete(Box::new(record)),
            JobStatus::Failed { reason } => Poll::Failed(reason),
        }))
    }

    /// Cancels the job `id` (running or finished) for its client and deletes its files and
    /// record; false if the client has no such job.
    pub async fn cancel(&self, id: &str, access: &Access) -> Result<bool, FhirError> {
        let Some(job) = self.find(id, access)? else { return Ok(false) };
        job.cancelled.store(true, Ordering::Relaxed);
        self.forget(id).await?;
        Ok(true)
    }

    async fn forget(&self, id: &str) -> Result<(), FhirError> {
        let _ending = self.ending.lock().await;
        self.jobs().remove(id);
        let _ = tokio::fs::remove_dir_all(self.dir.join(id)).await;
        JOBS.remove(&self.store, id).await.map(drop)
    }

    /// The path of a finished job's file, for its client: `None` when the client has no such
    /// job; a 404 that says so when the job has not finished or has no file of that name.
    pub fn file(&self, id: &str, access: &Access, name: &str) -> Result<Option<PathBuf>, FhirError> {
        let Some(job) = self.find(id, access)? else { return Ok(None) };
        let record = job.record();
        if record.status != JobStatus::Complete {
            return Err(FhirError::not_found(format!(
                "the export {id} has not finished: its manifest lists its files once it has"
            )));
        }
        // Only a name the manifest lists: never a path a client made up.
        if !record.output.iter().any(|output| output.file == name) {
            return Err(FhirError::not_found(format!(
                "the export {id} has no file '{}': its manifest lists those it has",
                name.chars().take(100).collect::<String>()
            )));
        }
        Ok(Some(self.dir.join(&record.id).join(name)))
    }

    /// Deletes the jobs whose retention has passed, with their files.
    pub async fn sweep(&self) -> Result<usize, FhirError> {
        let now = crate::auth::now_secs();
        let expired: Vec<String> = self
            .jobs()
            .values()
            .map(|job| job.record())
            .filter(|record| record.expires.is_some_and(|expires| expires <= now))
            .map(|record| record.id)
            .collect();
        for id in &expired {
            self.forget(id).await?;
        }
        Ok(expired.len())
    }
}

/// The refusal of a kick-off while the requester's (or everyone's) exports kept are all in
/// progress (429; the kick-off handler adds a `Retry-After`).
fn too_many_in_progress() -> FhirError {
    FhirError::new(
        Category::TooManyRequests,
        IssueCode::Throttled,
        format!(
            "too many exports are in progress ({MAX_JOBS_PER_REQUESTER} per requester, {MAX_JOBS} in all); wait for \
             one to finish or cancel one, then kick off again"
        ),
    )
}

/// The resource scopes (`patient/`, `user/` and `system/` ones) of the caller's token, sorted;
/// `None` with authorization off.
fn resource_scopes(access: &Access) -> Option<Vec<String>> {
    let Access::Token(grant) = access else { return None };
    let mut scopes: Vec<String> = grant
        .scope
        .split_ascii_whitespace()
        .filter(|scope| ["patient/", "user/", "system/"].iter().any(|prefix| scope.starts_with(prefix)))
        .map(str::to_owned)
        .collect();
    scopes.sort();
    scopes.dedup();
    Some(scopes)
}

/// Who asks, as a job records its owner: `(client, subject, patient)`, all `None` with
/// authorization off.
fn requester(access: &Access) -> (Option<&str>, Option<&str>, Option<&str>) {
    match access {
        Access::Token(grant) => {
            (Some(grant.client_id.as_str()), Some(grant.subject.as_str()), grant.patient.as_deref())
        }
        Access::Unrestricted => (None, None, None),
    }
}

impl JobRecord {
    /// Who started the job, as [`requester`] says it.
    fn owner(&self) -> (Option<&str>, Option<&str>, Option<&str>) {
        (self.client_id.as_deref(), self.subject.as_deref(), self.patient.as_deref())
    }
}

impl Job {
    fn owned_by(&self, who: (Option<&str>, Option<&str>, Option<&str>)) -> bool {
        self.record.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).owner() == who
    }
}

/// Stores a job's record.
async fn save(store: &Store, record: &JobRecord) -> Result<(), FhirError> {
    let record = record.clone();
    store.auth_write(move |txn| JOBS.put_in(txn, &record.id, &record)).await
}

/// Writes a job's files; returns them, or why the export failed.
fn run(
    job: &Job,
    stopping: &AtomicBool,
    snapshot: &Snapshot,
    kickoff: &Kickoff,
    dir: &Path,
    seal: Option<&DataKey>,
) -> Result<Vec<Output>, String> {
    std::fs::create_dir_all(dir).map_err(|error| format!("cannot create the export directory: {error}"))?;
    let view = snapshot.index();
    let mut outputs = Vec::new();
    let ended = || job.cancelled.load(Ordering::Relaxed) || stopping.load(Ordering::Relaxed);
    // The ids of the resources of each `kickoff.referenced` type that exported ones reference.
    let mut wanted: Vec<BTreeSet<String>> = vec![BTreeSet::new(); kickoff.referenced.len()];
    let mut wanted_count = 0;
    for (index, (resource_type, clauses)) in kickoff.types.iter().enumerate() {
        let resource_type = *resource_type;
        job.type_index.store(index as u64, Ordering::Relaxed);
        let mut files = TypeFiles { resource_type, dir, seal, file: None };
        let mut failure: Option<String> = None;
        let scanned = snapshot.export_type(resource_type, kickoff.since_micros, &mut |id, version, body| {
            if ended() {
                return Ok(ControlFlow::Break(()));
            }
            if !within_level(&kickoff.level, &view, resource_type, id, version)?
                || !within_limits(&view, resource_type, clauses, id, version)?
            {
                return Ok(ControlFlow::Continue(()));
            }
            let body = body()?;
            let written = files.write(&body, &mut outputs).and_then(|()| {
                follow_references(&body, kickoff, &mut wanted, &mut wanted_count, MAX_REFERENCED_RESOURCES)
            });
            if let Err(error) = written {
                failure = Some(error);
                return Ok(ControlFlow::Break(()));
            }
            job.exported.fetch_add(1, Ordering::Relaxed);
            Ok(ControlFlow::Continue(()))
        });
        files.finish(&mut outputs)?;
        scanned.map_err(|error| format!("{resource_type}: {error}"))?;
        if let Some(failure) = failure {
            return Err(failure);
        }
        if ended() {
            return Err("cancelled or stopped".into());
        }
    }
    for (index, ((resource_type, clauses), ids)) in kickoff.referenced.iter().zip(&wanted).enumerate() {
        let resource_type = *resource_type;
        job.type_index.store((kickoff.types.len() + index) as u64, Ordering::Relaxed);
        let mut files = TypeFiles { resource_type, dir, seal, file: None };
        for id in ids {
            if ended() {
                return Err("cancelled or stopped".into());
            }
            let found = snapshot.current(resource_type, id).map_err(|error| format!("{resource_type}: {error}"))?;
            let Some(version) = found.filter(|version| !version.is_deleted()) else { continue };
            // As `export_type` selects: changed after `_since`, and within the requester's limits.
            if kickoff.since_micros.is_some_and(|since| version.header.last_updated_micros <= since) {
                continue;
            }
            let admitted = within_limits(&view, resource_type, clauses, id, version.version)
                .map_err(|error| format!("{resource_type}: {error}"))?;
            if admitted {
                files.write(&version.body, &mut outputs)?;
                job.exported.fetch_add(1, Ordering::Relaxed);
            }
        }
        files.finish(&mut outputs)?;
    }
    Ok(outputs)
}

/// Notes the resources of the `kickoff.referenced` types that the exported resource `body`
/// references (relative references, and absolute ones on the server's base), in `wanted`;
/// fails beyond `limit` ([`MAX_REFERENCED_RESOURCES`]) in all.
fn follow_references(
    body: &[u8],
    kickoff: &Kickoff,
    wanted: &mut [BTreeSet<String>],
    count: &mut usize,
    limit: usize,
) -> Result<(), String> {
    if kickoff.referenced.is_empty() {
        return Ok(());
    }
    let text = std::str::from_utf8(body).map_err(|_| "a stored resource is not UTF-8".to_owned())?;
    let scan = crate::fhir::reference::scan_references(text)
        .map_err(|error| format!("a stored resource cannot be read: {error}"))?;
    for reference in &scan.references {
        let relative = crate::fhir::reference::relative_to(reference, &kickoff.base);
        let crate::fhir::reference::Target::Local { resource_type, id, .. } = crate::fhir::reference::parse(relative)
        else {
            continue;
        };
        let Some(index) = kickoff.referenced.iter().position(|(referenced, _)| *referenced == resource_type) else {
            continue;
        };
        if wanted[index].insert(id.as_str().to_owned()) {
            *count += 1;
            if *count > limit {
                return Err(format!(
                    "the exported resources reference more than {limit} resources outside the Patient compartment; \
                     name fewer types in _type, or export them at the system level"
                ));
            }
        }
    }
    Ok(())
}

/// The NDJSON files of one type being written: a new one every [`MAX_FILE_RESOURCES`]
/// resources, each listed in the outputs once closed.
struct TypeFiles<'a> {
    resource_type: ResourceType,
    dir: &'a Path,
    seal: Option<&'a DataKey>,
    file: Option<(ExportFile, Output)>,
}

impl TypeFiles<'_> {
    /// Writes one resource's JSON as a line, opening the type's next file when needed.
    fn write(&mut self, body: &[u8], outputs: &mut Vec<Output>) -> Result<(), String> {
        if self.file.as_ref().is_some_and(|(_, output)| output.count >= MAX_FILE_RESOURCES) {
            let (writer, output) = self.file.take().expect("checked");
            close(writer)?;
            outputs.push(output);
        }
        if self.file.is_none() {
            let resource_type = self.resource_type.as_str();
            let number = outputs.iter().filter(|output| output.resource_type == resource_type).count() + 1;
            let name = format!("{resource_type}-{number}.ndjson");
            let created = ExportFile::create(&self.dir.join(&name), self.seal)
                .map_err(|error| format!("cannot create an export file: {error}"))?;
            self.file = Some((created, Output { resource_type: resource_type.to_owned(), file: name, count: 0 }));
        }
        let (writer, output) = self.file.as_mut().expect("opened above");
        writer
            .write_all(body)
            .and_then(|()| writer.write_all(b"\n"))
            .map_err(|error| format!("cannot write an export file: {error}"))?;
        output.count += 1;
        Ok(())
    }

    /// Closes the last file, if any was opened.
    fn finish(self, outputs: &mut Vec<Output>) -> Result<(), String> {
        if let Some((writer, output)) = self.file {
            close(writer)?;
            outputs.push(output);
        }
        Ok(())
    }
}

/// An export file being written: plain NDJSON, or sealed with the data key of an encrypted
/// database (served decrypted to the client that asked; see `http::export::file`).
enum ExportFile {
    Plain(std::io::BufWriter<std::fs::File>),
    Sealed(SealedWriter<std::io::BufWriter<std::fs::File>>),
}

impl ExportFile {
    fn create(path: &Path, seal: Option<&DataKey>) -> std::io::Result<ExportFile> {
        let buffered = std::io::BufWriter::with_capacity(256 * 1024, std::fs::File::create(path)?);
        Ok(match seal {
            None => ExportFile::Plain(buffered),
            Some(key) => ExportFile::Sealed(SealedWriter::new(buffered, key, &crate::crypt::sealed::context_of(path))?),
        })
    }
}

impl Write for ExportFile {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        match self {
            ExportFile::Plain(writer) => writer.write(data),
            ExportFile::Sealed(writer) => writer.write(data),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            ExportFile::Plain(writer) => writer.flush(),
            ExportFile::Sealed(writer) => writer.flush(),
        }
    }
}

fn close(writer: ExportFile) -> Result<(), String> {
    let failed = |error: std::io::Error| format!("cannot write an export file: {error}");
    let buffered = match writer {
        ExportFile::Plain(buffered) => buffered,
        ExportFile::Sealed(sealed) => sealed.finish().map_err(failed)?,
    };
    let file = buffered.into_inner().map_err(|error| failed(error.into_error()))?;
    file.sync_all().map_err(failed)
}

/// Whether version `version` of `id` lies within the requester's limits on its type (`clauses`,
/// from its scopes and `_typeFilter`; none: every resource).
fn within_limits(
    view: &dyn IndexView,
    resource_type: ResourceType,
    clauses: &[Clause],
    id: &str,
    version: u64,
) -> Result<bool, FhirError> {
    Ok(clauses.is_empty() || engine::matches_clauses(view, resource_type, clauses, id, version, LATEST)?)
}

/// Whether version `version` of `id` belongs to the export's level: every resource for a
/// system export; for a Patient export the Patients and what is in a patient's compartment;
/// for a Group export the members and what is in their compartments.
fn within_level(
    level: &Level,
    view: &dyn IndexView,
    resource_type: ResourceType,
    id: &str,
    version: u64,
) -> Result<bool, FhirError> {
    let is_patient = resource_type == ResourceType::PATIENT;
    match level {
        Level::System => Ok(true),
        Level::Patient if is_patient => Ok(true),
        Level::Patient => Ok(!view.probe(resource_type, id, version, COMPARTMENT_KEY)?.is_empty()),
        Level::Group { members } if is_patient => Ok(members.contains(&format!("Patient/{id}"))),
        Level::Group { members } => Ok(view
            .probe(resource_type, id, version, COMPARTMENT_KEY)?
            .iter()
            .any(|patient| std::str::from_utf8(patient).is_ok_and(|patient| members.contains(patient)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `count` jobs, numbered from `first`, created in that order.
    fn jobs(first: usize, count: usize, own: bool, running: bool) -> Vec<(String, bool, bool, u64)> {
        (first..first + count).map(|n| (format!("job{n:03}"), own, running, n as u64)).collect()
    }

    fn room_among(jobs: &[(String, bool, bool, u64)]) -> Room {
        room(jobs.iter().map(|(id, own, running, order)| Kept { id, own: *own, running: *running, order: *order }))
    }

    #[test]
    fn references_out_of_the_compartment_are_collected_once_each_up_to_a_bound() {
        let practitioner = ResourceType::parse("Practitioner").unwrap();
        let kickoff = Kickoff {
            level: Level::Patient,
            types: Vec::new(),
            referenced: vec![(practitioner, Vec::new())],
            since_micros: None,
            request: String::new(),
            base: "http://b/fhir".into(),
            access: Access::Unrestricted,
        };
        let mut wanted = vec![BTreeSet::new()];
        let mut count = 0;
        let body = serde_json::json!({"resourceType": "Observation", "subject": {"reference": "Patient/p1"},
            "performer": [{"reference": "Practitioner/a"}, {"reference": "http://b/fhir/Practitioner/b"},
                          {"reference": "Practitioner/a"}, {"reference": "http://elsewhere/fhir/Practitioner/c"}]});
        let body = serde_json::to_vec(&body).unwrap();
        follow_references(&body, &kickoff, &mut wanted, &mut count, 2).unwrap();
        assert_eq!(wanted[0].iter().map(String::as_str).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(count, 2, "a repeated reference counts once; Patient and another server's are not followed");
        let third = serde_json::to_vec(&serde_json::json!({"resourceType": "Observation",
            "performer": [{"reference": "Practitioner/d"}]}))
        .unwrap();
        let refused = follow_references(&third, &kickoff, &mut wanted, &mut count, 2).unwrap_err();
        assert!(refused.contains("more than 2 resources"), "{refused}");
    }

    #[test]
    fn a_new_export_takes_the_place_of_the_oldest_finished_one_and_is_refused_only_while_all_are_in_progress() {
        assert_eq!(room_among(&[]), Room::Free);
        // A requester at its bound: its own oldest finished job goes, not another's older one.
        let mut kept = jobs(0, 3, false, false);
        kept.extend(jobs(3, MAX_JOBS_PER_REQUESTER - 1, true, false));
        kept.extend(jobs(100, 1, true, true));
        assert_eq!(room_among(&kept), Room::Evict("job003".into()));
        // All of its jobs in progress: refused, whatever others hold.
        let kept = jobs(0, MAX_JOBS_PER_REQUESTER, true, true);
        assert_eq!(room_among(&kept), Room::Full);
        // Below its own bound, but every place taken: its own oldest finished job goes...
        let mut kept = jobs(0, MAX_JOBS - 3, false, false);
        kept.extend(jobs(200, 1, true, true));
        kept.extend(jobs(300, 2, true, false));
        assert_eq!(room_among(&kept), Room::Evict("job300".into()));
        // ...never another requester's, even finished: refused.
        assert_eq!(room_among(&jobs(0, MAX_JOBS, false, false)), Room::Full);
        assert_eq!(room_among(&jobs(0, MAX_JOBS, false, true)), Room::Full);
        // Room left: nothing goes.
        assert_eq!(room_among(&jobs(0, MAX_JOBS_PER_REQUESTER - 1, true, false)), Room::Free);
    }
}
