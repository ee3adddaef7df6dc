//! The only code that touches redb: the tables, their key codecs (`keys/`, one file per table),
//! the single writer, and read snapshots.
//!
//! Contract: every write goes through [`Store::write`], which hands the operations to one writer
//! thread; the writer groups concurrent requests into one redb transaction and answers each
//! request only after that transaction is durably committed. Readers use [`Store::snapshot`],
//! a consistent view that never sees a half-applied write.
//!
//! The layout is explained with a worked example in `docs/storage.md`.

pub mod keys;
mod ops;
mod snapshot;
mod view;
mod writer;

use std::path::Path;
use std::sync::{Arc, RwLock};

use redb::{Database, ReadableTable, TableDefinition};

pub use keys::resource_version::{Header, Op};
pub use ops::{
    Action, Criteria, IndexEntry, Indexer, OpOutcome, OutcomeKind, Precondition, Target, WriteOp, WriteRequest,
};
pub use snapshot::{HistoryPage, HistoryQuery, Snapshot, Version};
pub use view::{IndexHit, IndexTables, IndexView, LATEST, SnapshotIndex};

use crate::fhir::FhirError;

pub(crate) const RESOURCE_VERSION: TableDefinition<&[u8], &[u8]> = TableDefinition::new("resource_version");
pub(crate) const TYPE_HISTORY: TableDefinition<&[u8], ()> = TableDefinition::new("type_history");
pub(crate) const SYSTEM_HISTORY: TableDefinition<&[u8], ()> = TableDefinition::new("system_history");
/// Value: `(created_t, superseded_t)`: the entry is live for readers at logical time `t` when
/// `created_t <= t < superseded_t`; `superseded_t` is `u64::MAX` while the version is current.
pub(crate) const SEARCH_PARAM_VALUE: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("search_param_value");
pub(crate) const RESOURCE_SEARCH_PARAM_VALUE: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("resource_search_param_value");
/// Small named values: `format_version` (u32 BE) and `cursor_secret` (32 random bytes).
pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// The on-disk layout version. Bump it (and write a migration) whenever a key or value encoding
/// changes; a database with another version is refused at open.
const FORMAT_VERSION: u32 = 1;

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
    #[error("the database has format version {found}, this build reads version {FORMAT_VERSION}")]
    FormatVersion { found: u32 },
    #[error("the writer has stopped")]
    WriterGone,
}

impl From<StoreError> for FhirError {
    /// Storage failures are logged in full where they happen; the client gets a generic fault.
    fn from(error: StoreError) -> Self {
        tracing::error!(error = %error, "storage failure");
        match error {
            StoreError::WriterGone => FhirError::busy("the server is shutting down"),
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
}

/// The highest `conditional_delete_max` honoured: one conditional delete is one transaction in
/// the single writer, and it must not hold every other write up for long.
pub const MAX_CONDITIONAL_DELETE: usize = 10_000;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { cache_bytes: 128 << 20, max_group: 256, queue_capacity: 4096, conditional_delete_max: 1 }
    }
}

/// A handle to the database. Cheap to clone; the writer stops when the last clone is dropped.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    writer: writer::WriterHandle,
    /// The newest committed state; replaced by the writer after every commit, before it answers
    /// the committed requests (so a client always reads its own acknowledged writes).
    latest: Arc<RwLock<Arc<Snapshot>>>,
    cursor_secret: Arc<[u8; 32]>,
}

impl Store {
    /// Opens (or creates) the database at `path` and starts the writer thread.
    pub fn open(path: &Path, options: StoreOptions, indexer: Arc<dyn Indexer>) -> Result<Store, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StoreError::Storage(redb::StorageError::Io(e)))?;
        }
        let db = Database::builder().set_cache_size(options.cache_bytes).create(path)?;
        let cursor_secret = Self::initialise(&db)?;
        let latest = Arc::new(RwLock::new(Arc::new(Snapshot::open(&db)?)));
        let db = Arc::new(db);
        let writer = writer::start(db.clone(), indexer, latest.clone(), &options)?;
        Ok(Store { db, writer, latest, cursor_secret: Arc::new(cursor_secret) })
    }

    /// Creates every table and the meta entries on first open; checks the format version after.
    fn initialise(db: &Database) -> Result<[u8; 32], StoreError> {
        let txn = db.begin_write()?;
        let secret = {
            txn.open_table(RESOURCE_VERSION)?;
            txn.open_table(TYPE_HISTORY)?;
            txn.open_table(SYSTEM_HISTORY)?;
            txn.open_table(SEARCH_PARAM_VALUE)?;
            txn.open_table(RESOURCE_SEARCH_PARAM_VALUE)?;
            let mut meta = txn.open_table(META)?;
            let version = meta.get("format_version")?.map(|v| {
                let bytes: [u8; 4] = v.value().try_into().unwrap_or([0; 4]);
                u32::from_be_bytes(bytes)
            });
            match version {
                Some(FORMAT_VERSION) => {}
                Some(found) => return Err(StoreError::FormatVersion { found }),
                None => {
                    meta.insert("format_version", FORMAT_VERSION.to_be_bytes().as_slice())?;
                }
            }
            let existing: Option<[u8; 32]> = meta.get("cursor_secret")?.and_then(|v| v.value().try_into().ok());
            match existing {
                Some(secret) => secret,
                None => {
                    let secret: [u8; 32] = rand_bytes();
                    meta.insert("cursor_secret", secret.as_slice())?;
                    secret
                }
            }
        };
        txn.commit()?;
        Ok(secret)
    }

    /// The newest committed state, as a consistent read view.
    pub fn snapshot(&self) -> Result<Arc<Snapshot>, FhirError> {
        Ok(self.latest.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone())
    }

    /// Executes `request` atomically: either every operation takes effect or none does. Returns
    /// once the outcome is durable on disk.
    pub async fn write(&self, request: WriteRequest) -> Result<Vec<OpOutcome>, FhirError> {
        self.writer.submit(request).await
    }

    /// A function telling whether the writer thread has exited, which happens once every
    /// clone of this store is dropped; the database file is then closed cleanly.
    pub fn writer_finished(&self) -> impl Fn() -> bool + use<> {
        let db = Arc::downgrade(&self.db);
        let writer = self.writer.stopped.clone();
        move || writer.load(std::sync::atomic::Ordering::Acquire) && db.strong_count() == 0
    }

    /// A per-database secret for signing paging cursors, so that a cursor cannot be forged and
    /// remains valid across restarts.
    pub fn cursor_secret(&self) -> &[u8; 32] {
        &self.cursor_secret
    }
}

fn rand_bytes() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes
}
