//! The authorization server's records: signing keys, clients, and the single-use caches
//! (assertion `jti`s). One table, `auth`, keyed by `kind/name`, whose values are whatever the
//! `auth` module stores (JSON records, mostly); this module knows only keys and bytes.
//!
//! Writes go through the writer thread like resource writes (see [`AuthWork`]), so they share
//! its group commits and are serialised with every other write: a check followed by a write in
//! one piece of work (a `jti` seen once, a key rotated once) is atomic.
//!
//! Expiring records are also listed under `exp/<seconds BE>/<key>`, so that [`AuthTxn::sweep`]
//! finds the expired ones without reading the others.

use std::any::Any;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use redb::{ReadableTable, Table, TableDefinition};

use super::StoreError;
use crate::fhir::FhirError;

pub(crate) const AUTH: TableDefinition<&[u8], &[u8]> = TableDefinition::new("auth");

/// The master patient index's state (`crate::mpi`): records, blocking keys, links, its cursor
/// in the change feed. The same key-value shape as `auth`, written the same way.
pub(crate) const MPI: TableDefinition<&[u8], &[u8]> = TableDefinition::new("mpi");

/// Which key-value table a piece of work runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvTable {
    Auth,
    Mpi,
}

impl KvTable {
    pub(super) fn definition(self) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
        match self {
            KvTable::Auth => AUTH,
            KvTable::Mpi => MPI,
        }
    }
}

/// A key and its value.
pub type Row = (Vec<u8>, Vec<u8>);

/// Prefix of the expiry index.
const EXPIRY_PREFIX: &[u8] = b"exp/";

/// Most rows one [`AuthTxn::scan`] or [`AuthRead::scan`] returns: the auth records an operator
/// manages (clients, keys) are a few hundred at most.
pub const MAX_SCAN: usize = 100_000;

/// A piece of authorization work run by the writer inside a write transaction. It may run more
/// than once (the writer retries a group's requests one by one after a panic), each time on a
/// fresh transaction, so it must not have effects outside the [`AuthTxn`].
pub(super) type AuthWork = Arc<dyn Fn(&mut AuthTxn<'_>) -> Result<Box<dyn Any + Send>, FhirError> + Send + Sync>;

/// The `auth` table inside the writer's transaction, as one piece of [`AuthWork`] sees it.
///
/// Invariant: writes are buffered and reach the table only if the work succeeds, so a piece of
/// work that returns an error has written nothing, wherever it failed.
pub struct AuthTxn<'a> {
    table: &'a Table<'a, &'static [u8], &'static [u8]>,
    /// `None`: removed.
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

impl<'a> AuthTxn<'a> {
    pub(super) fn new(table: &'a Table<'a, &'static [u8], &'static [u8]>) -> AuthTxn<'a> {
        AuthTxn { table, pending: BTreeMap::new() }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(pending) = self.pending.get(key) {
            return Ok(pending.clone());
        }
        Ok(self.table.get(key)?.map(|value| value.value().to_vec()))
    }

    pub fn insert(&mut self, key: &[u8], value: &[u8]) {
        self.pending.insert(key.to_vec(), Some(value.to_vec()));
    }

    pub fn remove(&mut self, key: &[u8]) {
        self.pending.insert(key.to_vec(), None);
    }

    /// Inserts `key` and lists it as expiring at `expires` (seconds since the epoch).
    pub fn insert_expiring(&mut self, key: &[u8], value: &[u8], expires: u64) {
        self.insert(key, value);
        self.insert(&expiry_key(expires, key), &[]);
    }

    /// The rows whose key starts with `prefix`, in key order, at most [`MAX_SCAN`].
    pub fn scan(&self, prefix: &[u8]) -> Result<Vec<Row>, StoreError> {
        let mut rows: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
        for entry in self.table.range::<&[u8]>((Bound::Included(prefix), Bound::Unbounded))?.take(MAX_SCAN) {
            let (key, value) = entry?;
            if !key.value().starts_with(prefix) {
                break;
            }
            rows.insert(key.value().to_vec(), value.value().to_vec());
        }
        for (key, value) in self.pending.range(prefix.to_vec()..).take_while(|(key, _)| key.starts_with(prefix)) {
            match value {
                Some(value) => rows.insert(key.clone(), value.clone()),
                None => rows.remove(key),
            };
        }
        Ok(rows.into_iter().take(MAX_SCAN).collect())
    }

    /// Removes up to `max` records that expired before `now` (seconds), with their expiry
    /// entries; returns how many.
    pub fn sweep(&mut self, now: u64, max: usize) -> Result<usize, StoreError> {
        let end = expiry_key(now, b"");
        let mut expired = Vec::new();
        for entry in self.table.range::<&[u8]>(EXPIRY_PREFIX..end.as_slice())?.take(max) {
            expired.push(entry?.0.value().to_vec());
        }
        for key in &expired {
            self.remove(key);
            self.remove(&key[EXPIRY_PREFIX.len() + 8..]);
        }
        Ok(expired.len())
    }

    /// The buffered changes, to be written once the work has succeeded.
    pub(super) fn into_changes(self) -> Changes {
        Changes(self.pending)
    }
}

/// What a piece of work wrote (`None`: removed).
pub(super) struct Changes(BTreeMap<Vec<u8>, Option<Vec<u8>>>);

impl Changes {
    pub(super) fn apply(self, table: &mut Table<'_, &'static [u8], &'static [u8]>) -> Result<(), StoreError> {
        for (key, value) in self.0 {
            match value {
                Some(value) => {
                    table.insert(key.as_slice(), value.as_slice())?;
                }
                None => {
                    table.remove(key.as_slice())?;
                }
            }
        }
        Ok(())
    }
}

fn expiry_key(expires: u64, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(EXPIRY_PREFIX.len() + 8 + key.len());
    out.extend_from_slice(EXPIRY_PREFIX);
    out.extend_from_slice(&expires.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// The `auth` table in a read transaction.
pub struct AuthRead {
    table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
}

impl AuthRead {
    pub(super) fn new(table: redb::ReadOnlyTable<&'static [u8], &'static [u8]>) -> AuthRead {
        AuthRead { table }
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.table.get(key)?.map(|value| value.value().to_vec()))
    }

    /// The rows whose key starts with `prefix`, in key order, at most [`MAX_SCAN`].
    pub fn scan(&self, prefix: &[u8]) -> Result<Vec<Row>, StoreError> {
        self.scan_at_most(prefix, MAX_SCAN)
    }

    /// The rows whose key starts with `prefix`, in key order, at most `max`.
    pub fn scan_at_most(&self, prefix: &[u8], max: usize) -> Result<Vec<Row>, StoreError> {
        self.scan_after(prefix, None, max)
    }

    /// The rows whose key starts with `prefix` and comes after `after` (from the first when
    /// `None`), in key order, at most `max`: one page of a scan resumed where the last ended.
    pub fn scan_after(&self, prefix: &[u8], after: Option<&[u8]>, max: usize) -> Result<Vec<Row>, StoreError> {
        let start = match after {
            Some(after) => Bound::Excluded(after),
            None => Bound::Included(prefix),
        };
        let mut rows = Vec::new();
        for entry in self.table.range::<&[u8]>((start, Bound::Unbounded))?.take(max) {
            let (key, value) = entry?;
            if !key.value().starts_with(prefix) {
                break;
            }
            rows.push((key.value().to_vec(), value.value().to_vec()));
        }
        Ok(rows)
    }

    /// Calls `visit` with each row whose key starts with `prefix`, in key order, at most `max`
    /// rows: a scan that copies nothing the caller does not keep.
    pub fn visit(
        &self,
        prefix: &[u8],
        max: usize,
        mut visit: impl FnMut(&[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        for entry in self.table.range::<&[u8]>((Bound::Included(prefix), Bound::Unbounded))?.take(max) {
            let (key, value) = entry?;
            if !key.value().starts_with(prefix) {
                break;
            }
            visit(key.value(), value.value())?;
        }
        Ok(())
    }

    /// How many keys start with `prefix`, counting at most `max`.
    pub fn count(&self, prefix: &[u8], max: usize) -> Result<usize, StoreError> {
        let mut count = 0;
        for entry in self.table.range::<&[u8]>((Bound::Included(prefix), Bound::Unbounded))?.take(max) {
            if !entry?.0.value().starts_with(prefix) {
                break;
            }
            count += 1;
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fhir::IssueCode;
    use crate::store::testing;

    #[tokio::test]
    async fn failed_work_writes_nothing_and_successful_work_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = testing::open(&dir.path().join("auth.redb"));
        let error = store
            .auth_write(|txn| -> Result<(), FhirError> {
                txn.insert(b"client/a", b"1");
                Err(FhirError::incorrect(IssueCode::Value, "refused after writing"))
            })
            .await
            .unwrap_err();
        assert!(error.to_string().contains("refused after writing"));
        assert_eq!(store.auth_read(|read| read.get(b"client/a")).unwrap(), None);

        let seen = store
            .auth_write(|txn| {
                txn.insert(b"client/a", b"1");
                txn.insert(b"client/b", b"2");
                txn.remove(b"client/b");
                // The work sees its own writes.
                Ok(txn.get(b"client/a")?.zip(Some(txn.scan(b"client/")?.len())))
            })
            .await
            .unwrap();
        assert_eq!(seen, Some((b"1".to_vec(), 1)));
        let rows = store.auth_read(|read| read.scan(b"client/")).unwrap();
        assert_eq!(rows, vec![(b"client/a".to_vec(), b"1".to_vec())]);
    }

    #[tokio::test]
    async fn sweeping_removes_expired_records_and_their_expiry_entries_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = testing::open(&dir.path().join("auth.redb"));
        store
            .auth_write(|txn| {
                txn.insert_expiring(b"jti/old", b"", 100);
                txn.insert_expiring(b"jti/new", b"", 300);
                Ok(())
            })
            .await
            .unwrap();
        let swept = store.auth_write(|txn| Ok(txn.sweep(200, 10)?)).await.unwrap();
        assert_eq!(swept, 1);
        assert_eq!(store.auth_read(|read| read.get(b"jti/old")).unwrap(), None);
        assert!(store.auth_read(|read| read.get(b"jti/new")).unwrap().is_some());
        assert_eq!(store.auth_read(|read| read.scan(b"exp/")).unwrap().len(), 1);
    }
}
