//! The only code that touches redb: the tables, their key codecs (`keys/`, one file per table),
//! the single writer, and read snapshots.
//!
//! Contract: every write goes through [`Store::write`], which hands the operations to one writer
//! thread; the writer groups concurrent requests into one redb transaction and answers each
//! request only after that transaction is durably committed. Readers use [`Store::snapshot`],
//! a consistent view that never sees a half-applied write.
//!
//! The layout is explained with a worked example in `docs/storage.md`.

pub mod auth;
mod body_cache;
pub mod check;
pub mod codec;
pub mod dictionary;
pub mod encrypted;
pub mod encryption;
mod gc;
pub mod keys;
mod migrate;
mod ops;
mod repack;
mod snapshot;
#[cfg(test)]
pub(crate) mod testing;
mod view;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

pub use codec::Codecs;
pub use gc::Collected;
pub use keys::resource_version::{Header, Op};
pub use migrate::{MigrationProgress, MigrationReport};
pub use ops::{
    Action, Change, ChangeKind, Changed, Criteria, GuardCheck, IndexEntry, Indexer, MANAGED_PATIENT_PREFIX, OpOutcome,
    OutcomeKind, Precondition, RecordChanges, Recorder, Target, WriteGuard, WriteOp, WriteRequest, is_managed,
    strip_managed_links,
};
pub use snapshot::{HistoryPage, HistoryQuery, Snapshot, Version};
pub use view::{IndexHit, IndexTables, IndexView, LATEST, SnapshotIndex};

use crate::crypt::{DataKey, KeyFile};
use crate::fhir::FhirError;

pub(crate) const RESOURCE_VERSION: TableDefinition<&[u8], &[u8]> = TableDefinition::new("resource_version");
pub(crate) const TYPE_HISTORY: TableDefinition<&[u8], ()> = TableDefinition::new("type_history");
pub(crate) const SYSTEM_HISTORY: TableDefinition<&[u8], ()> = TableDefinition::new("system_history");
/// Value: `(created_t, superseded_t)`: the entry is live for readers at logical time `t` when
/// `created_t <= t < superseded_t`; `superseded_t` is `u64::MAX` while the version is current.
/// (The index tables' names carry the format version that last changed their encoding; see
/// `migrate`.)
pub(crate) const SEARCH_PARAM_VALUE: TableDefinition<&[u8], keys::search_param_value::Lifetime> =
    TableDefinition::new("search_param_value.7");
pub(crate) const RESOURCE_SEARCH_PARAM_VALUE: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("resource_search_param_value.7");
/// Versions whose index entries are superseded, by the logical time they were superseded at:
/// the garbage collector's work list (see `gc`).
pub(crate) const SUPERSEDED: TableDefinition<&[u8], ()> = TableDefinition::new("superseded");
/// The zstd dictionaries resource bodies are compressed with, by id (see `codec`). Never deleted:
/// a body names the dictionary it needs.
pub(crate) const DICTIONARY: TableDefinition<u32, &[u8]> = TableDefinition::new("dictionary");
/// Small named values: `format_version` (u32 BE), `cursor_secret` (32 random bytes),
/// `gc_horizon` (u64 BE, see `gc`), `current_dictionary` (u32 BE: the dictionary new bodies are
/// compressed with) and, while a migration to format 4 runs, `migration_cursor` (the last
/// `resource_version` key migrated).
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The on-disk layout version. Bump it (and write a migration) whenever a key or value encoding
/// changes; a database with an older version is migrated at open, a newer one is refused.
///
/// 2: the `superseded` log (version 1 files get it filled from their version history).
/// 3: end-ordered entries of wide dates (`<param>:end`, `migrate::add_derived_entries`).
/// 4: compressed bodies with a content hash, and the `dictionary` table (`migrate::compress_bodies`).
/// 5: index keys with short versions, index records with parameter hashes
///    (`migrate::reencode_index_tables`).
/// 6: one index value per quantity, short code systems, varint index lifetimes (the index
///    rebuilt by the same step).
/// 7: ids in the index keys in an order-preserving code (`keys::id_code`;
///    `migrate::rekey_index_tables`).
pub const FORMAT_VERSION: u32 = 7;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] redb::DatabaseError),
    #[error("transaction: {0}")]
    Transaction(#[from] redb::TransactionError),
    #[error("table: {0}")]
    Table(#[from] redb::TableError),
    #[error("storage: {0}")]
    Storage(#[from] redb::StorageError),
    #[error("commit: {0}")]
    Commit(#[from] redb::CommitError),
    #[error("corrupt record under key {0:?}")]
    Corrupt(Vec<u8>),
    /// A stored body that cannot be decoded; `resource` is `type/id/_history/version`.
    #[error("the stored body of {resource} cannot be read: {reason}")]
    CorruptBody { resource: String, reason: String },
    /// A read of one resource's versions failed in storage (an encrypted page that fails
    /// authentication, an I/O error); `resource` is `type/id`.
    #[error("{resource} cannot be read: {source}")]
    Unreadable { resource: String, source: redb::StorageError },
    #[error("the dictionaries cannot be loaded: {0}")]
    Dictionary(String),
    #[error(
        "the database has format version {found}, newer than this build reads ({FORMAT_VERSION}); use a newer Braid"
    )]
    FormatVersion { found: u32 },
    #[error("the writer has stopped")]
    WriterGone,
    #[error("compaction: {0}")]
    Compaction(#[from] redb::CompactionError),
    #[error("the database is open in another process (a running Braid?); stop it first")]
    InUse,
    #[error("the database is encrypted; give its key file (--encryption-key-file or BRAID_ENCRYPTION_KEY_FILE)")]
    KeyRequired,
    #[error("{0}")]
    Encryption(#[from] encrypted::OpenError),
}

impl From<StoreError> for FhirError {
    /// Storage failures are logged in full where they happen; the client gets a generic fault.
    fn from(error: StoreError) -> Self {
        tracing::error!(error = %error, "storage failure");
        match error {
            StoreError::WriterGone => FhirError::busy("the server is shutting down"),
            // Names the damaged version (never its content), so an operator can restore it.
            StoreError::CorruptBody { resource, .. } => FhirError::new(
                crate::fhir::Category::Fault,
                crate::fhir::IssueCode::Exception,
                format!("the stored body of {resource} is damaged and cannot be read; see the server log"),
            ),
            StoreError::Unreadable { resource, .. } => FhirError::new(
                crate::fhir::Category::Fault,
                crate::fhir::IssueCode::Exception,
                format!("the stored data of {resource} cannot be read (the database is damaged); see the server log"),
            ),
            _ => FhirError::fault("storage"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// redb page cache size in bytes.
    pub cache_bytes: usize,
    /// At most this many requests are grouped into one commit.
    pub max_group: usize,
    /// Requests waiting for the writer beyond this number wait for a free slot.
    pub queue_capacity: usize,
    /// A conditional delete matching more resources than this deletes nothing and fails with
    /// 412 (1: only a single match may be deleted).
    pub conditional_delete_max: usize,
    /// How long a paging cursor stays valid; superseded index entries are kept this long.
    pub cursor_ttl: Duration,
    /// How often superseded index entries are looked for and removed; zero turns the background
    /// collection off ([`Store::collect_garbage`] still works).
    pub gc_interval: Duration,
    /// Commit with redb's quick repair: every commit also records the page allocator's state
    /// (a two-phase commit: one more sync), so that opening the file after a crash only loads
    /// it instead of walking every table to rebuild it. Applies to every write transaction:
    /// recovery is quick only if the last commit before the crash recorded the state.
    pub quick_repair: bool,
    /// Memory for decompressed bodies of recently read versions (see `body_cache`); 0: none.
    pub body_cache_bytes: usize,
    /// Encrypt the database (and the files the server writes besides it) with the data key this
    /// key file unwraps; `None`: a plain database. See `encrypted`.
    pub encryption_key: Option<Arc<KeyFile>>,
}

/// The highest `conditional_delete_max` honoured: one conditional delete is one transaction in
/// the single writer, and it must not hold every other write up for long.
pub const MAX_CONDITIONAL_DELETE: usize = 10_000;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            cache_bytes: 64 << 20,
            max_group: 256,
            queue_capacity: 4096,
            cursor_ttl: Duration::from_secs(3600),
            gc_interval: Duration::from_secs(60),
            conditional_delete_max: 1,
            quick_repair: true,
            body_cache_bytes: 32 << 20,
            encryption_key: None,
        }
    }
}

/// What paging cursors are signed and checked with: the database's secret, how long a cursor
/// stays valid, and the oldest logical time whose superseded index entries are all still kept.
#[derive(Clone)]
pub struct CursorKey {
    secret: [u8; 32],
    ttl: Duration,
    horizon: Arc<AtomicU64>,
}

impl CursorKey {
    /// A key for tests and tools: no garbage collected yet.
    pub fn new(secret: [u8; 32], ttl: Duration) -> CursorKey {
        CursorKey { secret, ttl, horizon: Arc::new(AtomicU64::new(0)) }
    }

    pub fn secret(&self) -> &[u8; 32] {
        &self.secret
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether a search as of logical time `t` still finds every index entry it needs: false
    /// once the garbage collector removed entries superseded after `t`.
    pub fn can_read_at(&self, t: u64) -> bool {
        t >= self.horizon.load(Ordering::Acquire)
    }
}

/// A handle to the database. Cheap to clone; the writer stops when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    /// The newest committed state; replaced by the writer after every commit, before it answers
    /// the committed requests (so a client always reads its own acknowledged writes). Declared
    /// before `writer` so that it is dropped first: its read transaction has ended when the
    /// last store's queue closes and the writer compacts a small file (see `writer`).
    latest: Arc<RwLock<Arc<Snapshot>>>,
    writer: writer::WriterHandle,
    cursor_key: CursorKey,
    /// The writer's indexer, also used to prepare index entries before a request is queued.
    indexer: Arc<dyn Indexer>,
    /// The database's compression dictionaries, prepared once.
    codecs: Arc<Codecs>,
    /// The key of an encrypted database, for the files sealed besides it (`None`: plain).
    data_key: Option<DataKey>,
}

impl Store {
    /// Opens (or creates) the database at `path` and starts the writer thread.
    pub fn open(path: &Path, options: StoreOptions, indexer: Arc<dyn Indexer>) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Storage(redb::StorageError::Io(e)))?;
        }
        let mut builder = Database::builder();
        builder.set_cache_size(options.cache_bytes);
        let (db, data_key) = encryption::open_file(path, options.encryption_key.as_deref(), &builder, true)?;
        Self::start(db, Some(path.to_path_buf()), data_key, options, indexer)
    }

    /// Like [`Store::open`], on any storage redb can use (tests use one that simulates power
    /// loss). `backend` is used as given; `options.encryption_key` only tells the writer that
    /// it encrypts (see [`begin_write`]).
    pub fn open_with_backend(
        backend: impl redb::StorageBackend,
        options: StoreOptions,
        indexer: Arc<dyn Indexer>,
    ) -> Result<Store, StoreError> {
        let db = Database::builder().set_cache_size(options.cache_bytes).create_with_backend(backend)?;
        Self::start(db, None, None, options, indexer)
    }

    fn start(
        db: Database,
        path: Option<PathBuf>,
        data_key: Option<DataKey>,
        options: StoreOptions,
        indexer: Arc<dyn Indexer>,
    ) -> Result<Store, StoreError> {
        let Opened { secret, horizon, codecs, .. } = Self::initialise_with(&db, indexer.as_ref(), &mut |progress| {
            tracing::info!(
                step = progress.unit,
                migrated = progress.migrated,
                total = progress.total,
                "migrating the database to format version {FORMAT_VERSION}"
            );
        })?;
        codecs.body_cache.set_capacity(options.body_cache_bytes);
        let latest = Arc::new(RwLock::new(Arc::new(Snapshot::open(&db, &codecs)?)));
        let db = Arc::new(db);
        let writer = writer::start(db.clone(), path, indexer.clone(), latest.clone(), codecs.clone(), &options)?;
        let cursor_key = CursorKey { secret, ttl: options.cursor_ttl, horizon: Arc::new(AtomicU64::new(horizon)) };
        if !options.gc_interval.is_zero() {
            gc::start(Arc::downgrade(&db), options.cursor_ttl, options.gc_interval, cursor_key.horizon.clone());
        }
        Ok(Store { db, writer, latest, cursor_key, indexer, codecs, data_key })
    }

    /// The data key of an encrypted database (`None`: a plain one): what the server seals the
    /// files it writes besides the database with (exports, spooled uploads).
    pub fn data_key(&self) -> Option<&DataKey> {
        self.data_key.as_ref()
    }

    /// Removes the index entries that no valid paging cursor can need any more, now (the
    /// background collector does the same every `gc_interval`).
    pub fn collect_garbage(&self) -> Result<Collected, StoreError> {
        gc::collect(&self.db, self.cursor_key.ttl, std::time::SystemTime::now(), &self.cursor_key.horizon)
    }

    /// Checks that the search indexes agree with the stored versions (see [`check::verify`]).
    pub fn verify(&self, indexer: &dyn Indexer) -> Result<check::Report, StoreError> {
        check::verify(&self.db, indexer, &self.codecs)
    }

    /// Counts of the rows of the search index tables, for operators and tests.
    pub fn index_stats(&self) -> Result<IndexStats, StoreError> {
        let txn = self.db.begin_read()?;
        Ok(IndexStats {
            entries: txn.open_table(SEARCH_PARAM_VALUE)?.len()?,
            records: txn.open_table(RESOURCE_SEARCH_PARAM_VALUE)?.len()?,
            superseded_versions: txn.open_table(SUPERSEDED)?.len()?,
        })
    }

    /// What each table holds and occupies, for the benchmark harness and operators.
    pub fn table_usage(&self) -> Result<Vec<TableUsage>, StoreError> {
        let txn = self.db.begin_read()?;
        let mut usage = Vec::new();
        for handle in TABLES {
            let name = handle.name();
            let table = txn.open_untyped_table(redb::TableDefinition::<&[u8], &[u8]>::new(name))?;
            let stats = table.stats()?;
            usage.push(TableUsage {
                name,
                rows: table.len()?,
                stored_bytes: stats.stored_bytes(),
                metadata_bytes: stats.metadata_bytes(),
                fragmented_bytes: stats.fragmented_bytes(),
                pages: stats.leaf_pages() + stats.branch_pages(),
            });
        }
        Ok(usage)
    }

    /// Bytes of the pages in use: the file's size minus its free pages (which later writes
    /// reuse, and `braid compact` gives back). Briefly takes the write lock.
    pub fn allocated_bytes(&self) -> Result<u64, StoreError> {
        writer::allocated_bytes(&self.db)
    }

    /// Finishes an interrupted `braid compact` (see `repack`), creates every table and the meta
    /// entries on first open, checks the format version and migrates an older file, step by
    /// step (see `migrate` and the format table in docs/storage.md). The steps that rewrite a
    /// whole table run in batches, each its own transaction, report each batch to `progress`,
    /// and continue where they stopped at the next open after an interruption. Every way of
    /// opening a file goes through here before anything reads it.
    fn initialise_with(
        db: &Database,
        indexer: &dyn Indexer,
        progress: &mut dyn FnMut(&MigrationProgress),
    ) -> Result<Opened, StoreError> {
        repack::resume(db)?;
        let (secret, horizon, found_version) = Self::prepare_file(db)?;
        let codecs = Arc::new(load_codecs(db)?);
        let mut migrated: Option<MigrationReport> = None;
        // Each step below starts from the version the one before it reached.
        let mut version = format_version(db)?;
        if version <= 5 {
            // Formats 1 to 4 share the index encodings, rebuilt straight into the current one;
            // first, so that the format 2 step below works on the current tables.
            let old = if version <= 4 { &migrate::V4_INDEX } else { &migrate::V5_INDEX };
            let rows = migrate::reencode_index_tables(db, &codecs, indexer, old, migrate::BATCH_ROWS, progress)?;
            migrated.get_or_insert_with(MigrationReport::default).versions_reindexed = rows;
        }
        if version == 2 {
            let txn = begin_write(db)?;
            let added = migrate::add_derived_entries(&txn, indexer)?;
            txn.open_table(META)?.insert("format_version", 3u32.to_be_bytes().as_slice())?;
            txn.commit()?;
            tracing::info!(entries = added, "migrated the database to format version 3");
            version = 3;
        }
        if version == 3 {
            // Ends by recording format 4.
            let bodies = migrate::compress_bodies(db, &codecs, migrate::BATCH_VERSIONS, None, progress)?;
            let versions_reindexed = migrated.map_or(0, |report| report.versions_reindexed);
            migrated = Some(MigrationReport { versions_reindexed, ..bodies });
            version = 4;
        }
        if version == 6 {
            let rows = migrate::rekey_index_tables(db, migrate::BATCH_ROWS, progress)?;
            migrated.get_or_insert_with(MigrationReport::default).index_rows_rekeyed = rows;
        }
        if (4..FORMAT_VERSION).contains(&version) {
            let txn = begin_write(db)?;
            txn.open_table(META)?.insert("format_version", FORMAT_VERSION.to_be_bytes().as_slice())?;
            txn.commit()?;
            tracing::info!(version = FORMAT_VERSION, "migrated the database");
            version = FORMAT_VERSION;
        }
        if let Some(report) = &mut migrated {
            report.from_version = found_version.unwrap_or(FORMAT_VERSION);
            report.to_version = version;
        }
        Ok(Opened { secret, horizon, codecs, found_version, migrated })
    }

    /// The part of opening done in one transaction: tables, meta entries, the built-in
    /// dictionary, the format check and the 1 → 2 step. Returns the cursor secret, the
    /// collector's horizon and the format the file had (`None`: new).
    fn prepare_file(db: &Database) -> Result<([u8; 32], u64, Option<u32>), StoreError> {
        let mut txn = begin_write(db)?;
        // Once per start; the commit also records the allocator state after a full repair.
        txn.set_quick_repair(true);
        let (secret, horizon, found_version) = {
            txn.open_table(RESOURCE_VERSION)?;
            txn.open_table(TYPE_HISTORY)?;
            txn.open_table(SYSTEM_HISTORY)?;
            txn.open_table(SEARCH_PARAM_VALUE)?;
            txn.open_table(RESOURCE_SEARCH_PARAM_VALUE)?;
            txn.open_table(SUPERSEDED)?;
            txn.open_table(auth::AUTH)?;
            txn.open_table(auth::MPI)?;
            let mut dictionaries = txn.open_table(DICTIONARY)?;
            let mut meta = txn.open_table(META)?;
            let version = meta.get("format_version")?.map(|v| {
                let bytes: [u8; 4] = v.value().try_into().unwrap_or([0; 4]);
                u32::from_be_bytes(bytes)
            });
            let found_version = version;
            let mut version = match version {
                Some(found) if found > FORMAT_VERSION => return Err(StoreError::FormatVersion { found }),
                Some(found) => found,
                None => {
                    meta.insert("format_version", FORMAT_VERSION.to_be_bytes().as_slice())?;
                    FORMAT_VERSION
                }
            };
            // Every file from format 3 on has the built-in dictionary, so a migration to 4 can
            // compress with it.
            if dictionaries.is_empty()? {
                dictionaries.insert(codec::BUILT_IN_DICTIONARY_ID, codec::BUILT_IN_DICTIONARY)?;
                meta.insert(CURRENT_DICTIONARY_KEY, codec::BUILT_IN_DICTIONARY_ID.to_be_bytes().as_slice())?;
            }
            if version == 1 {
                let logged = migrate::fill_superseded_log(&txn)?;
                tracing::info!(versions = logged, "migrated the database to format version 2");
                version = 2;
                meta.insert("format_version", version.to_be_bytes().as_slice())?;
            }
            let horizon =
                meta.get(gc::HORIZON_KEY)?.and_then(|v| v.value().try_into().ok()).map_or(0, u64::from_be_bytes);
            let existing: Option<[u8; 32]> = meta.get("cursor_secret")?.and_then(|v| v.value().try_into().ok());
            let secret = match existing {
                Some(secret) => secret,
                None => {
                    let secret: [u8; 32] = crate::crypt::random_bytes();
                    meta.insert("cursor_secret", secret.as_slice())?;
                    secret
                }
            };
            (secret, horizon, found_version)
        };
        txn.commit()?;
        Ok((secret, horizon, found_version))
    }

    /// The newest committed state, as a consistent read view.
    pub fn snapshot(&self) -> Result<Arc<Snapshot>, FhirError> {
        Ok(self.latest.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone())
    }

    /// Executes `request` atomically: either every operation takes effect or none does. Returns
    /// once the outcome is durable on disk.
    ///
    /// The index entries that do not depend on what the writer assigns (ids, versions,
    /// timestamps, rewritten references) are computed first, on a blocking-pool thread: the
    /// single writer is what limits write throughput, and this work runs in parallel there.
    pub async fn write(&self, mut request: WriteRequest) -> Result<Vec<OpOutcome>, FhirError> {
        for op in &mut request.ops {
            if let Action::Create { resource_type, resource, .. } | Action::Update { resource_type, resource, .. } =
                &mut op.action
                && *resource_type == crate::fhir::ResourceType::PATIENT
            {
                strip_managed_links(resource);
            }
        }
        let writes_a_resource =
            request.ops.iter().any(|op| matches!(op.action, Action::Create { .. } | Action::Update { .. }));
        let request = if request.prepared_index.is_empty() && writes_a_resource {
            let indexer = self.indexer.clone();
            tokio::task::spawn_blocking(move || prepare_index(indexer.as_ref(), request))
                .await
                .map_err(|_| FhirError::fault("indexer"))?
        } else {
            request
        };
        self.writer.submit(request).await
    }

    /// Runs `work` on the authorization records inside the writer's next transaction (see
    /// [`auth`]) and returns its result once committed. A `work` that fails has written nothing.
    pub async fn auth_write<T: Send + 'static>(
        &self,
        work: impl Fn(&mut auth::AuthTxn<'_>) -> Result<T, FhirError> + Send + Sync + 'static,
    ) -> Result<T, FhirError> {
        self.kv_write(auth::KvTable::Auth, work).await
    }

    /// Runs `work` on the master patient index's state (the `mpi` table, see [`auth::MPI`])
    /// inside the writer's next transaction, as [`Store::auth_write`] does on `auth`.
    pub async fn mpi_write<T: Send + 'static>(
        &self,
        work: impl Fn(&mut auth::AuthTxn<'_>) -> Result<T, FhirError> + Send + Sync + 'static,
    ) -> Result<T, FhirError> {
        self.kv_write(auth::KvTable::Mpi, work).await
    }

    /// Runs `work` on a key-value table inside the writer's next transaction.
    async fn kv_write<T: Send + 'static>(
        &self,
        table: auth::KvTable,
        work: impl Fn(&mut auth::AuthTxn<'_>) -> Result<T, FhirError> + Send + Sync + 'static,
    ) -> Result<T, FhirError> {
        let work: auth::AuthWork =
            Arc::new(move |txn| work(txn).map(|value| Box::new(value) as Box<dyn std::any::Any + Send>));
        let answer = self.writer.submit_auth(table, work).await?;
        answer.downcast::<T>().map(|value| *value).map_err(|_| FhirError::fault("key-value write"))
    }

    /// Reads the master patient index's state as last committed.
    pub fn mpi_read<T>(&self, read: impl FnOnce(&auth::AuthRead) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.kv_read(auth::KvTable::Mpi, read)
    }

    /// Reads the authorization records as last committed.
    pub fn auth_read<T>(&self, read: impl FnOnce(&auth::AuthRead) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.kv_read(auth::KvTable::Auth, read)
    }

    fn kv_read<T>(
        &self,
        table: auth::KvTable,
        read: impl FnOnce(&auth::AuthRead) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let txn = self.db.begin_read()?;
        read(&auth::AuthRead::new(txn.open_table(table.definition())?))
    }

    /// A function telling whether the writer thread has exited, which happens once every
    /// clone of this store is dropped; the database file is then closed cleanly.
    pub fn writer_finished(&self) -> impl Fn() -> bool + use<> {
        let db = Arc::downgrade(&self.db);
        let writer = self.writer.stopped.clone();
        move || writer.load(std::sync::atomic::Ordering::Acquire) && db.strong_count() == 0
    }

    /// What paging cursors are signed and checked with: a per-database secret (so a cursor
    /// cannot be forged and stays valid across restarts), their lifetime, and the horizon below
    /// which the garbage collector may have removed index entries.
    pub fn cursor_key(&self) -> &CursorKey {
        &self.cursor_key
    }
}

/// Fills `request.prepared_index` with [`Indexer::prepare`] and `request.prepared_hashes` with
/// the content hash of each created or updated resource.
fn prepare_index(indexer: &dyn Indexer, mut request: WriteRequest) -> WriteRequest {
    request.prepared_hashes = request
        .ops
        .iter()
        .map(|op| match &op.action {
            Action::Create { resource, .. } | Action::Update { resource, .. } => Some(codec::content_hash(resource)),
            Action::Delete { .. } => None,
        })
        .collect();
    let prepared = request
        .ops
        .iter_mut()
        .map(|op| match &mut op.action {
            Action::Create { resource_type, resource, .. } | Action::Update { resource_type, resource, .. } => {
                // The indexer reads a JSON value; lend it the map and take it back.
                let value = serde_json::Value::Object(std::mem::take(resource));
                let entries = indexer.prepare(*resource_type, &value);
                let serde_json::Value::Object(map) = value else { unreachable!("still the object lent") };
                *resource = map;
                entries.map(Arc::from)
            }
            Action::Delete { .. } => None,
        })
        .collect();
    request.prepared_index = prepared;
    request
}

/// A write transaction of maintenance work (migrations, compaction, dictionaries, start-up
/// bookkeeping), committed in two phases: the data is synced before the header that points at
/// it. redb's one-phase commit instead writes both and, after a power cut, finds a torn page by
/// its checksum and falls back to the previous commit; an encrypted page that is torn fails
/// authentication when read, which redb does not fall back from. Two phases cost one more sync
/// per commit, which these few large commits do not notice. (The writer commits in two phases
/// with `quick_repair`, the default, and always on an encrypted database.)
pub(crate) fn begin_write(db: &Database) -> Result<redb::WriteTransaction, StoreError> {
    let mut txn = db.begin_write()?;
    txn.set_two_phase_commit(true);
    Ok(txn)
}

/// The file or directory `<data>.<suffix>` beside the database `data`, where its server keeps
/// what is not in the database (`admin.sock`, `exports`, `ingest`, `demo-keys`, a conversion's
/// copy).
pub fn beside(data: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = data.as_os_str().to_owned();
    name.push(".");
    name.push(suffix);
    std::path::PathBuf::from(name)
}

/// What [`compact`] did.
#[derive(Debug, Clone, Copy)]
pub struct CompactReport {
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub collected: Collected,
    /// Rows rewritten in key order so that every table's pages are full.
    pub rows_repacked: u64,
}

/// Reclaims space in a database that no server has open: removes the index entries no valid
/// paging cursor can need (as the running server would), rewrites every table in key order so
/// that its pages are full (see `repack`), then lets redb move pages to the front of the file
/// and truncate it. A file held by a running Braid is refused.
pub fn compact(
    path: &Path,
    key: Option<&KeyFile>,
    cursor_ttl: Duration,
    indexer: &dyn Indexer,
) -> Result<CompactReport, StoreError> {
    let bytes_before = file_size(path)?;
    let (mut db, Opened { horizon, .. }) = open_stopped(path, key, indexer, &mut |_| {})?;
    let collected = gc::collect(&db, cursor_ttl, std::time::SystemTime::now(), &AtomicU64::new(horizon))?;
    let rows_repacked = repack::repack_all(&db)?;
    while db.compact()? {}
    drop(db);
    Ok(CompactReport { bytes_before, bytes_after: file_size(path)?, collected, rows_repacked })
}

/// What opening a database found and did.
struct Opened {
    secret: [u8; 32],
    horizon: u64,
    codecs: Arc<Codecs>,
    /// The format the file had (`None`: a new database).
    found_version: Option<u32>,
    /// The batched migration run by this open, if any.
    migrated: Option<MigrationReport>,
}

/// `meta` key of the dictionary new bodies are compressed with (u32 BE).
const CURRENT_DICTIONARY_KEY: &str = "current_dictionary";

fn format_version(db: &Database) -> Result<u32, StoreError> {
    let txn = db.begin_read()?;
    let meta = txn.open_table(META)?;
    let version = meta.get("format_version")?.and_then(|v| v.value().try_into().ok()).map(u32::from_be_bytes);
    Ok(version.unwrap_or(FORMAT_VERSION))
}

/// Prepares every dictionary of the database (a handful at most: one per training run).
fn load_codecs(db: &Database) -> Result<Codecs, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(DICTIONARY)?;
    let mut dictionaries = Vec::new();
    for entry in table.iter()? {
        let (id, bytes) = entry?;
        dictionaries.push((id.value(), bytes.value().to_vec()));
    }
    let meta = txn.open_table(META)?;
    let current = meta
        .get(CURRENT_DICTIONARY_KEY)?
        .and_then(|v| v.value().try_into().ok())
        .map_or(codec::BUILT_IN_DICTIONARY_ID, u32::from_be_bytes);
    Codecs::new(&dictionaries, current).map_err(StoreError::Dictionary)
}

/// Opens a database that no server has open, for a command-line tool, and brings it to the
/// current format (see [`Store::initialise_with`]). A file held by a running Braid is refused.
fn open_stopped(
    path: &Path,
    key: Option<&KeyFile>,
    indexer: &dyn Indexer,
    progress: &mut dyn FnMut(&MigrationProgress),
) -> Result<(Database, Opened), StoreError> {
    if !path.exists() {
        return Err(StoreError::Storage(redb::StorageError::Io(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no database at {}", path.display()),
        ))));
    }
    let (db, _) = encryption::open_file(path, key, &Database::builder(), false).map_err(|error| match error {
        StoreError::Database(redb::DatabaseError::DatabaseAlreadyOpen) => StoreError::InUse,
        other => other,
    })?;
    let opened = Store::initialise_with(&db, indexer, progress)?;
    Ok((db, opened))
}

/// Brings a stopped database to the current format (what opening it in the server does), with
/// `progress` called after each batch. Running it again on a migrated file does nothing.
pub fn migrate(
    path: &Path,
    key: Option<&KeyFile>,
    indexer: &dyn Indexer,
    progress: &mut dyn FnMut(&MigrationProgress),
) -> Result<MigrationReport, StoreError> {
    let (_, opened) = open_stopped(path, key, indexer, progress)?;
    // A migration reports its versions; a file already current reports its own.
    let current = opened.found_version.unwrap_or(FORMAT_VERSION);
    Ok(opened.migrated.unwrap_or(MigrationReport { from_version: current, to_version: current, ..Default::default() }))
}

fn file_size(path: &Path) -> Result<u64, StoreError> {
    std::fs::metadata(path).map(|m| m.len()).map_err(|e| StoreError::Storage(redb::StorageError::Io(e)))
}

/// Every table, for [`Store::table_usage`].
const TABLES: [&dyn redb::TableHandle; 10] = [
    &RESOURCE_VERSION,
    &TYPE_HISTORY,
    &SYSTEM_HISTORY,
    &SEARCH_PARAM_VALUE,
    &RESOURCE_SEARCH_PARAM_VALUE,
    &SUPERSEDED,
    &META,
    &DICTIONARY,
    &auth::AUTH,
    &auth::MPI,
];

/// One table's size: its rows, the bytes of its keys and values, the B-tree's own bytes
/// (branch pages) and the unused bytes in its pages.
#[derive(Debug, Clone)]
pub struct TableUsage {
    pub name: &'static str,
    pub rows: u64,
    pub stored_bytes: u64,
    pub metadata_bytes: u64,
    pub fragmented_bytes: u64,
    pub pages: u64,
}

/// Row counts of the search index tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexStats {
    /// `search_param_value` entries, current and superseded.
    pub entries: u64,
    /// `resource_search_param_value` records (one per indexed version still kept).
    pub records: u64,
    /// Superseded versions whose entries the garbage collector has not removed yet.
    pub superseded_versions: u64,
}
