//! Rewrites tables in key order so that their B-tree leaves are full (`braid compact`).
//!
//! Why: redb splits a full leaf in two halves when a key lands inside it. The index tables grow
//! in the middle (each value's list of resources grows at its own end, between other values),
//! so their leaves settle at about half full, and the file is twice what its rows need.
//! Inserting every key of a table in ascending order instead fills each leaf before the next
//! is started (redb keeps the rightmost leaf packed on append).
//!
//! A table `T` is copied to `T.repack` in batches, each its own transaction; then one
//! transaction deletes `T` and records `repack_table = T` in `meta`; then `T.repack` is copied
//! back to `T` in batches, and a last transaction deletes `T.repack` and the record.
//! Invariant: while `repack_table` names `T`, `T.repack` is complete and `T` holds a prefix of
//! it, so [`resume`] (run at every open, before anything reads) finishes the copy after `T`'s
//! last key. Without the record, a `T.repack` is a copy that was never finished and is dropped.

use std::ops::Bound;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, TableHandle};

use super::{
    META, RESOURCE_SEARCH_PARAM_VALUE, RESOURCE_VERSION, SEARCH_PARAM_VALUE, SUPERSEDED, SYSTEM_HISTORY, StoreError,
    TYPE_HISTORY,
};

/// Rows copied per transaction: large enough that commits are a small share of the work,
/// small enough that one transaction's new pages stay a few tens of MiB.
const BATCH_ROWS: usize = 200_000;

/// The `meta` key naming the table whose copy-back is under way.
const REPACK_KEY: &str = "repack_table";

/// Rows rewritten, over all tables.
pub(super) fn repack_all(db: &Database) -> Result<u64, StoreError> {
    let mut rows = 0;
    rows += repack(db, RESOURCE_VERSION)?;
    rows += repack(db, TYPE_HISTORY)?;
    rows += repack(db, SYSTEM_HISTORY)?;
    rows += repack(db, SEARCH_PARAM_VALUE)?;
    rows += repack(db, RESOURCE_SEARCH_PARAM_VALUE)?;
    rows += repack(db, SUPERSEDED)?;
    Ok(rows)
}

/// Finishes an interrupted repack and drops unfinished copies; a no-op on a file that has none.
pub(super) fn resume(db: &Database) -> Result<(), StoreError> {
    let pending = {
        let txn = db.begin_read()?;
        match txn.open_table(META) {
            Ok(meta) => meta.get(REPACK_KEY)?.map(|v| String::from_utf8_lossy(v.value()).into_owned()),
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(error) => return Err(error.into()),
        }
    };
    if let Some(name) = pending {
        tracing::info!(table = %name, "finishing an interrupted repack");
        match name.as_str() {
            n if n == RESOURCE_VERSION.name() => copy_back(db, RESOURCE_VERSION)?,
            n if n == TYPE_HISTORY.name() => copy_back(db, TYPE_HISTORY)?,
            n if n == SYSTEM_HISTORY.name() => copy_back(db, SYSTEM_HISTORY)?,
            n if n == SEARCH_PARAM_VALUE.name() => copy_back(db, SEARCH_PARAM_VALUE)?,
            n if n == RESOURCE_SEARCH_PARAM_VALUE.name() => copy_back(db, RESOURCE_SEARCH_PARAM_VALUE)?,
            n if n == SUPERSEDED.name() => copy_back(db, SUPERSEDED)?,
            _ => return Err(StoreError::Corrupt(name.into_bytes())),
        }
    }
    drop_unfinished_copies(db)
}

fn drop_unfinished_copies(db: &Database) -> Result<(), StoreError> {
    let txn = super::begin_write(db)?;
    let names: Vec<String> =
        txn.list_tables()?.map(|handle| handle.name().to_owned()).filter(|name| name.ends_with(".repack")).collect();
    for name in &names {
        txn.delete_table(TableDefinition::<&[u8], &[u8]>::new(name))?;
    }
    txn.commit()?;
    Ok(())
}

fn copy_name(table: &str) -> String {
    format!("{table}.repack")
}

/// Rewrites one table in key order; returns its rows.
fn repack<V: redb::Value + 'static>(db: &Database, table: TableDefinition<&[u8], V>) -> Result<u64, StoreError> {
    let name = copy_name(table.name());
    let copy = TableDefinition::<&[u8], V>::new(&name);
    {
        let txn = super::begin_write(db)?;
        txn.delete_table(copy)?;
        txn.commit()?;
    }
    let rows = copy_rows(db, table, copy, None)?;
    let txn = super::begin_write(db)?;
    txn.delete_table(table)?;
    txn.open_table(META)?.insert(REPACK_KEY, table.name().as_bytes())?;
    txn.commit()?;
    copy_back(db, table)?;
    Ok(rows)
}

/// Copies `T.repack` to `T` from after `T`'s last key, then drops the copy and the record.
fn copy_back<V: redb::Value + 'static>(db: &Database, table: TableDefinition<&[u8], V>) -> Result<(), StoreError> {
    let name = copy_name(table.name());
    let copy = TableDefinition::<&[u8], V>::new(&name);
    let after = {
        let txn = super::begin_write(db)?;
        let last = txn.open_table(table)?.last()?.map(|(key, _)| key.value().to_vec());
        txn.commit()?;
        last
    };
    copy_rows(db, copy, table, after)?;
    let txn = super::begin_write(db)?;
    txn.delete_table(copy)?;
    txn.open_table(META)?.remove(REPACK_KEY)?;
    txn.commit()?;
    Ok(())
}

/// Inserts the rows of `from` after key `after` into `to`, in ascending order, in batches.
fn copy_rows<V: redb::Value + 'static>(
    db: &Database,
    from: TableDefinition<&[u8], V>,
    to: TableDefinition<&[u8], V>,
    mut after: Option<Vec<u8>>,
) -> Result<u64, StoreError> {
    let mut rows = 0;
    loop {
        let txn = super::begin_write(db)?;
        let copied = {
            let source = txn.open_table(from)?;
            let mut target = txn.open_table(to)?;
            let resume_after = after.take();
            let start = match &resume_after {
                Some(key) => Bound::Excluded(key.as_slice()),
                None => Bound::Unbounded,
            };
            let mut copied = 0;
            for row in source.range::<&[u8]>((start, Bound::Unbounded))?.take(BATCH_ROWS) {
                let (key, value) = row?;
                target.insert(key.value(), value.value())?;
                after = Some(key.value().to_vec());
                copied += 1;
            }
            if after.is_none() {
                after = resume_after;
            }
            copied
        };
        txn.commit()?;
        rows += copied as u64;
        if copied < BATCH_ROWS {
            return Ok(rows);
        }
    }
}

#[cfg(test)]
mod tests {
    use redb::ReadableTableMetadata;
    use redb::backends::InMemoryBackend;

    use super::*;

    fn database() -> Database {
        Database::builder().create_with_backend(InMemoryBackend::new()).unwrap()
    }

    /// Keys inserted the way the index grows: many values, each value's list appended to in
    /// turn, so inserts land inside leaves rather than at the end of the table.
    fn fill_like_an_index(db: &Database) -> Vec<(Vec<u8>, (u64, u64))> {
        let mut rows = Vec::new();
        for n in 0..20_000u64 {
            let key = format!("value{:03}\0id{n:08}", n % 300).into_bytes();
            rows.push((key, (n, u64::MAX)));
        }
        for chunk in rows.chunks(1000) {
            let txn = db.begin_write().unwrap();
            {
                let mut table = txn.open_table(SEARCH_PARAM_VALUE).unwrap();
                for (key, value) in chunk {
                    table.insert(key.as_slice(), *value).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        rows.sort();
        rows
    }

    fn contents(db: &Database) -> Vec<(Vec<u8>, (u64, u64))> {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(SEARCH_PARAM_VALUE).unwrap();
        table.iter().unwrap().map(|row| row.unwrap()).map(|(k, v)| (k.value().to_vec(), v.value())).collect()
    }

    fn unused_bytes(db: &Database) -> u64 {
        let txn = db.begin_read().unwrap();
        txn.open_table(SEARCH_PARAM_VALUE).unwrap().stats().unwrap().fragmented_bytes()
    }

    fn table_names(db: &Database) -> Vec<String> {
        let txn = db.begin_read().unwrap();
        txn.list_tables().unwrap().map(|handle| handle.name().to_owned()).collect()
    }

    #[test]
    fn repacking_keeps_every_row_and_fills_the_pages() {
        let db = database();
        let rows = fill_like_an_index(&db);
        let unused_before = unused_bytes(&db);
        assert_eq!(repack(&db, SEARCH_PARAM_VALUE).unwrap(), rows.len() as u64);
        assert_eq!(contents(&db), rows);
        let unused_after = unused_bytes(&db);
        assert!(
            unused_after * 4 < unused_before,
            "unused bytes in the table's pages: {unused_before} before, {unused_after} after"
        );
        assert!(!table_names(&db).iter().any(|name| name.ends_with(".repack")));
    }

    #[test]
    fn an_interrupted_copy_back_is_finished_at_the_next_open() {
        let db = database();
        let rows = fill_like_an_index(&db);
        // The state after the copy, the deletion of the original and a first batch copied back.
        let name = copy_name(SEARCH_PARAM_VALUE.name());
        let copy = TableDefinition::<&[u8], crate::store::keys::search_param_value::Lifetime>::new(&name);
        copy_rows(&db, SEARCH_PARAM_VALUE, copy, None).unwrap();
        let txn = db.begin_write().unwrap();
        txn.delete_table(SEARCH_PARAM_VALUE).unwrap();
        txn.open_table(META).unwrap().insert(REPACK_KEY, SEARCH_PARAM_VALUE.name().as_bytes()).unwrap();
        {
            let mut table = txn.open_table(SEARCH_PARAM_VALUE).unwrap();
            for (key, value) in &rows[..5000] {
                table.insert(key.as_slice(), *value).unwrap();
            }
        }
        txn.commit().unwrap();

        resume(&db).unwrap();
        assert_eq!(contents(&db), rows);
        assert!(!table_names(&db).contains(&name));
        let txn = db.begin_read().unwrap();
        assert!(txn.open_table(META).unwrap().get(REPACK_KEY).unwrap().is_none());
    }

    #[test]
    fn a_copy_that_never_finished_is_dropped_and_the_original_kept() {
        let db = database();
        let rows = fill_like_an_index(&db);
        let name = copy_name(SEARCH_PARAM_VALUE.name());
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<&[u8], crate::store::keys::search_param_value::Lifetime>::new(&name))
            .unwrap()
            .insert(b"partial".as_slice(), (1, 2))
            .unwrap();
        txn.open_table(META).unwrap();
        txn.commit().unwrap();

        resume(&db).unwrap();
        assert_eq!(contents(&db), rows);
        assert!(!table_names(&db).contains(&name));
    }
}
