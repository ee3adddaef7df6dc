//! Garbage collection of superseded search index entries.
//!
//! When a version is superseded (updated or deleted), its entries in `search_param_value` and
//! its record in `resource_search_param_value` stay, marked with the logical time `t` at which
//! they stopped being current: a search continuing from an older page reads the index as of its
//! first page's `t` and still needs them. Nothing else does: a running request reads its own
//! redb snapshot, which later deletions do not change. So an entry superseded at `s` can go once
//! no valid paging cursor has a `t < s`.
//!
//! Cursors are valid for `cursor_ttl` after they were issued (see `http::cursor`). The *horizon*
//! is the newest `t` committed more than `cursor_ttl` (plus a margin) ago: every valid cursor
//! was issued after that commit, so its `t` is at least the horizon. lastUpdated never
//! decreases with `t`, so the horizon is found by a binary search over the stored versions, and
//! this works the same after a restart or on a stopped database (`braid compact`).
//!
//! The collector works through the `superseded` log up to the horizon in bounded batches, each
//! one write transaction (so the writer waits for at most one batch). Before deleting it raises
//! the persisted `gc_horizon`, and cursors with a `t` below it are refused as expired: a cursor
//! can never read an index from which entries it needs were removed, even if a commit took
//! longer than the margin.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable};

use super::StoreError;
use super::keys::{resource_search_param_value as rspv, resource_version, search_param_value as spv, superseded};
use super::{META, RESOURCE_SEARCH_PARAM_VALUE, RESOURCE_VERSION, SEARCH_PARAM_VALUE, SUPERSEDED, SYSTEM_HISTORY};

/// Versions whose index entries one transaction removes at most.
pub const BATCH: usize = 2_000;

/// Added to the cursor lifetime: a commit's lastUpdated is taken when it starts, and a cursor
/// issued right after a slow commit must still find its entries.
const MARGIN: Duration = Duration::from_secs(2);

/// The META key of the persisted horizon (u64 BE).
pub(super) const HORIZON_KEY: &str = "gc_horizon";

/// What one collection did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Collected {
    /// Superseded versions whose index entries were removed.
    pub versions: usize,
    /// `search_param_value` entries removed.
    pub entries: usize,
    /// The horizon collected up to.
    pub horizon: u64,
}

/// The newest logical time committed at or before `cutoff_micros`, if any.
pub(super) fn horizon_at(db: &Database, cutoff_micros: i64) -> Result<Option<u64>, StoreError> {
    let txn = db.begin_read()?;
    let history = txn.open_table(SYSTEM_HISTORY)?;
    let versions = txn.open_table(RESOURCE_VERSION)?;
    // lastUpdated of the first version at or after logical time `t`, with that version's `t`.
    let first_from = |t: u64| -> Result<Option<(u64, i64)>, StoreError> {
        let Some(entry) = history.range(superseded::at(t).as_slice()..)?.next() else { return Ok(None) };
        let (key, _) = entry?;
        let (t, ty, id, version) =
            superseded::decode(key.value()).ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
        let record_key = resource_version::encode(&ty, &id, version);
        let record = versions.get(record_key.as_slice())?.ok_or_else(|| StoreError::Corrupt(record_key.clone()))?;
        let (header, _) = resource_version::decode_value(record.value()).ok_or(StoreError::Corrupt(record_key))?;
        Ok(Some((t, header.last_updated_micros)))
    };
    let Some((first, first_micros)) = first_from(0)? else { return Ok(None) };
    if first_micros > cutoff_micros {
        return Ok(None);
    }
    let Some((key, _)) = history.last()? else { return Ok(None) };
    let last = superseded::decode(key.value()).ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?.0;
    // Invariant: `low` is a committed t with lastUpdated <= cutoff; every committed t above
    // `high` has lastUpdated > cutoff.
    let (mut low, mut high) = (first, last);
    while low < high {
        let middle = low + (high - low).div_ceil(2);
        match first_from(middle)? {
            Some((t, micros)) if micros <= cutoff_micros => low = t,
            _ => high = middle - 1,
        }
    }
    Ok(Some(low))
}

/// Removes the index entries of versions superseded at or before `horizon`, at most
/// [`BATCH`] versions; raises the persisted horizon first (see the module comment).
pub(super) fn collect_batch(db: &Database, horizon: u64, published: &AtomicU64) -> Result<Collected, StoreError> {
    let mut txn = super::begin_write(db)?;
    // Collection commits are rare: they always keep recovery quick, whatever the writer does.
    txn.set_quick_repair(true);
    let mut collected = Collected { horizon, ..Collected::default() };
    {
        let mut log = txn.open_table(SUPERSEDED)?;
        let mut spv_table = txn.open_table(SEARCH_PARAM_VALUE)?;
        let mut rspv_table = txn.open_table(RESOURCE_SEARCH_PARAM_VALUE)?;
        let mut meta = txn.open_table(META)?;
        let end = superseded::at(horizon.saturating_add(1));
        let mut due = Vec::new();
        for entry in log.range(..end.as_slice())?.take(BATCH) {
            let (key, _) = entry?;
            due.push(key.value().to_vec());
        }
        if due.is_empty() {
            return Ok(collected);
        }
        let stored = meta.get(HORIZON_KEY)?.and_then(|v| v.value().try_into().ok()).map_or(0, u64::from_be_bytes);
        if horizon > stored {
            meta.insert(HORIZON_KEY, horizon.to_be_bytes().as_slice())?;
        }
        // Readers check cursors against this before they read: raise it before the deletions
        // can become visible.
        published.fetch_max(horizon, Ordering::AcqRel);
        for key in due {
            let (_, ty, id, version) = superseded::decode(&key).ok_or_else(|| StoreError::Corrupt(key.clone()))?;
            let record_key = rspv::encode(&ty, &id, version);
            let record = rspv_table.remove(record_key.as_slice())?.map(|value| value.value().to_vec());
            if let Some(record) = record {
                let entries = rspv::decode_value(&record).ok_or_else(|| StoreError::Corrupt(record_key.clone()))?;
                for (param, value) in entries {
                    if spv_table.remove(spv::encode_hashed(param, value, &id, version).as_slice())?.is_some() {
                        collected.entries += 1;
                    }
                }
            }
            log.remove(key.as_slice())?;
            collected.versions += 1;
        }
    }
    txn.commit()?;
    Ok(collected)
}

/// Collects everything due at `now`: batches until the log is worked through to the horizon.
pub(super) fn collect(
    db: &Database,
    cursor_ttl: Duration,
    now: SystemTime,
    published: &AtomicU64,
) -> Result<Collected, StoreError> {
    let cutoff = now.checked_sub(cursor_ttl + MARGIN).unwrap_or(UNIX_EPOCH);
    let cutoff_micros = cutoff.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as i64);
    let Some(horizon) = horizon_at(db, cutoff_micros)? else { return Ok(Collected::default()) };
    let mut total = Collected { horizon, ..Collected::default() };
    loop {
        let batch = collect_batch(db, horizon, published)?;
        total.versions += batch.versions;
        total.entries += batch.entries;
        if batch.versions < BATCH {
            return Ok(total);
        }
    }
}

/// Starts the background collector: every `interval`, collects what is due. It holds the
/// database only while it works and stops once the database is gone.
pub(super) fn start(db: Weak<Database>, cursor_ttl: Duration, interval: Duration, published: Arc<AtomicU64>) {
    let spawned = std::thread::Builder::new().name("braid-gc".into()).spawn(move || {
        loop {
            std::thread::sleep(interval);
            let Some(db) = db.upgrade() else { return };
            match collect(&db, cursor_ttl, SystemTime::now(), &published) {
                Ok(done) if done.versions > 0 => tracing::info!(
                    versions = done.versions,
                    entries = done.entries,
                    horizon = done.horizon,
                    "removed superseded search index entries"
                ),
                Ok(_) => {}
                Err(error) => tracing::error!(error = %error, "garbage collection of the search index failed"),
            }
        }
    });
    if let Err(error) = spawned {
        tracing::error!(error = %error, "cannot start the search index garbage collector");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::testing::{close, open, runtime};
    use super::*;
    use crate::fhir::{Id, ResourceType};
    use crate::store::{Action, Precondition, Store, Target, WriteRequest};

    fn put(runtime: &tokio::runtime::Runtime, store: &Store, id: &str, family: &str) {
        let serde_json::Value::Object(resource) =
            json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]})
        else {
            unreachable!()
        };
        let action = Action::Update {
            resource_type: ResourceType::PATIENT,
            target: Target::Id(Id::parse(id).unwrap()),
            resource,
            precondition: Precondition::default(),
        };
        runtime.block_on(store.write(WriteRequest::single(action))).unwrap();
    }

    /// `(t, lastUpdated)` of the current version of Patient `id`.
    fn stamp(store: &Store, id: &str) -> (u64, i64) {
        let current = store.snapshot().unwrap().current(ResourceType::PATIENT, id).unwrap().unwrap();
        (current.header.t, current.header.last_updated_micros)
    }

    #[test]
    fn the_horizon_is_the_newest_commit_before_the_cutoff_and_only_entries_superseded_by_then_go() {
        let dir = tempfile::tempdir().unwrap();
        let (runtime, store) = (runtime(), open(&dir.path().join("gc.redb")));
        put(&runtime, &store, "p1", "Early");
        let (t1, micros1) = stamp(&store, "p1");
        std::thread::sleep(Duration::from_millis(5));
        put(&runtime, &store, "p1", "Late");
        let (t2, micros2) = stamp(&store, "p1");
        assert!(micros2 > micros1 && t2 > t1);

        assert_eq!(horizon_at(&store.db, micros1 - 1).unwrap(), None);
        assert_eq!(horizon_at(&store.db, micros1).unwrap(), Some(t1));
        assert_eq!(horizon_at(&store.db, micros2 - 1).unwrap(), Some(t1));
        assert_eq!(horizon_at(&store.db, micros2).unwrap(), Some(t2));

        let horizon = &store.cursor_key().horizon;
        let before = store.index_stats().unwrap();
        assert_eq!(before.superseded_versions, 1);
        // Version 1 was superseded at t2: a reader at t1 still needs its entries.
        assert_eq!(collect_batch(&store.db, t1, horizon).unwrap().versions, 0);
        assert!(store.cursor_key().can_read_at(t1));

        let collected = collect_batch(&store.db, t2, horizon).unwrap();
        assert_eq!(collected.versions, 1);
        let after = store.index_stats().unwrap();
        assert_eq!(after.superseded_versions, 0);
        assert_eq!(after.records, 1, "only the current version's index record is left");
        assert_eq!(before.entries - after.entries, collected.entries as u64);
        assert!(collected.entries > 0);
        // A cursor as of t1 could now miss entries, so it is refused; t2 and later are fine.
        assert!(!store.cursor_key().can_read_at(t1) && store.cursor_key().can_read_at(t2));

        // The horizon is persisted with the deletion.
        close(store);
        let reopened = open(&dir.path().join("gc.redb"));
        assert!(!reopened.cursor_key().can_read_at(t1) && reopened.cursor_key().can_read_at(t2));
    }

    #[test]
    fn a_version_one_file_gets_its_superseded_log_filled_when_opened() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        let runtime = runtime();
        {
            let store = open(&path);
            for family in ["A", "B", "C"] {
                put(&runtime, &store, "p1", family);
            }
            put(&runtime, &store, "p2", "Only");
            close(store);
        }
        {
            // Make it a format 1 file: no superseded log.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            txn.delete_table(SUPERSEDED).unwrap();
            txn.open_table(META).unwrap().insert("format_version", 1u32.to_be_bytes().as_slice()).unwrap();
            txn.commit().unwrap();
        }
        let store = open(&path);
        assert_eq!(store.index_stats().unwrap().superseded_versions, 2, "versions 1 and 2 of p1");
        let txn = store.db.begin_read().unwrap();
        let meta = txn.open_table(META).unwrap();
        assert_eq!(
            meta.get("format_version").unwrap().unwrap().value(),
            super::super::FORMAT_VERSION.to_be_bytes().as_slice()
        );
    }
}
