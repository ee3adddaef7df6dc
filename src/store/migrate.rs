//! Migrations of older database files to the current format, run when a file is opened and
//! before anything reads it. Small steps run inside the transaction that opens the file (so
//! they are all-or-nothing, and an interrupted one reruns at the next open); steps that rewrite
//! a whole table work in batches, each its own transaction, and resume where they stopped.
//!
//! The index tables' names carry the format that last changed their encoding
//! (`search_param_value.5`): a step that re-encodes a table reads the old one while it writes
//! the new one, and drops the old one when it is done.

use std::ops::Bound;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use std::collections::HashMap;

use super::keys::{
    Reader, put_str, put_u64, resource_search_param_value, resource_version, search_param_value, superseded,
};
use super::{Op, RESOURCE_SEARCH_PARAM_VALUE, RESOURCE_VERSION, SEARCH_PARAM_VALUE, SUPERSEDED, StoreError};
use crate::fhir::ResourceType;
use crate::store::Indexer;

/// The index tables as formats 1 to 4 wrote them (see [`v4`] for their encodings).
pub(super) const V4_SEARCH_PARAM_VALUE: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("search_param_value");
pub(super) const V4_RESOURCE_SEARCH_PARAM_VALUE: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("resource_search_param_value");

/// The key and record encodings of the index tables up to format 4: versions as 8 bytes, and
/// parameters spelled out in the records. Only the migrations read them.
pub(super) mod v4 {
    use super::{Reader, put_str, put_u64};

    /// `(param hash, value, id, version)`
    pub fn decode_entry_key(key: &[u8]) -> Option<(u32, Vec<u8>, String, u64)> {
        let (hash, rest) = key.split_first_chunk::<4>()?;
        let mut reader = Reader::new(rest);
        let decoded = (u32::from_be_bytes(*hash), reader.str()?, reader.string()?, reader.u64()?);
        reader.is_empty().then_some(decoded)
    }

    pub fn encode_entry_key(hash: u32, value: &[u8], id: &str, version: u64) -> Vec<u8> {
        let mut key = hash.to_be_bytes().to_vec();
        put_str(&mut key, value);
        put_str(&mut key, id.as_bytes());
        put_u64(&mut key, version);
        key
    }

    pub fn record_key(resource_type: &str, id: &str, version: u64) -> Vec<u8> {
        let mut key = Vec::new();
        put_str(&mut key, resource_type.as_bytes());
        put_str(&mut key, id.as_bytes());
        put_u64(&mut key, version);
        key
    }

    /// `(type, id, version)`
    pub fn decode_record_key(key: &[u8]) -> Option<(String, String, u64)> {
        let mut reader = Reader::new(key);
        let decoded = (reader.string()?, reader.string()?, reader.u64()?);
        reader.is_empty().then_some(decoded)
    }

    /// Record values: `param length (u16 BE) · param · value length (u32 BE) · value` per pair.
    #[cfg(test)]
    pub fn encode_record<'a>(entries: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
        let mut out = Vec::new();
        for (param, value) in entries {
            out.extend_from_slice(&(param.len() as u16).to_be_bytes());
            out.extend_from_slice(param.as_bytes());
            out.extend_from_slice(&(value.len() as u32).to_be_bytes());
            out.extend_from_slice(value);
        }
        out
    }

    pub fn decode_record(mut bytes: &[u8]) -> Option<Vec<(&str, &[u8])>> {
        let mut entries = Vec::new();
        while !bytes.is_empty() {
            let (param_len, rest) = bytes.split_first_chunk::<2>()?;
            let param_len = u16::from_be_bytes(*param_len) as usize;
            let param = std::str::from_utf8(rest.get(..param_len)?).ok()?;
            let rest = &rest[param_len..];
            let (value_len, rest) = rest.split_first_chunk::<4>()?;
            let value_len = u32::from_be_bytes(*value_len) as usize;
            let value = rest.get(..value_len)?;
            entries.push((param, value));
            bytes = &rest[value_len..];
        }
        Some(entries)
    }
}

/// Format 1 → 2: fills the `superseded` log from the version history. Every live version that
/// has a successor was superseded at its successor's logical time. Returns the versions logged.
pub(super) fn fill_superseded_log(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let versions = txn.open_table(RESOURCE_VERSION)?;
    let mut log = txn.open_table(SUPERSEDED)?;
    let mut logged = 0;
    // Keys are ordered by type, id, version: each resource's versions are adjacent.
    let mut previous: Option<(String, String, u64, Op)> = None;
    for entry in versions.iter()? {
        let (key, value) = entry?;
        let (ty, id, version) =
            resource_version::decode(key.value()).ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
        let (header, _) =
            resource_version::decode_value(value.value()).ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
        if let Some((p_ty, p_id, p_version, p_op)) = &previous {
            if *p_ty == ty && *p_id == id && p_op != &Op::Delete {
                log.insert(superseded::encode(header.t, p_ty, p_id, *p_version).as_slice(), ())?;
                logged += 1;
            }
        }
        previous = Some((ty, id, version, header.op));
    }
    Ok(logged)
}

/// The `(param hash, value)` pairs of one version's index record.
type HashedPairs = Vec<(u32, Vec<u8>)>;

/// Format 2 → 3: adds the entries the indexer derives from stored pairs (the end-ordered entry
/// of a date wider than a day) to every indexed version that lacks them, with the lifetime
/// `(created_t, superseded_t)` of the entry each derives from. Runs on the current index
/// tables (after [`reencode_index_tables`]), and adds nothing that is already there, so a
/// rerun after an interruption is harmless. Returns the entries added.
pub(super) fn add_derived_entries(txn: &WriteTransaction, indexer: &dyn Indexer) -> Result<u64, StoreError> {
    let mut records = txn.open_table(RESOURCE_SEARCH_PARAM_VALUE)?;
    let mut entries = txn.open_table(SEARCH_PARAM_VALUE)?;
    // Records keep parameter hashes; derivation is by name.
    let mut names: HashMap<ResourceType, HashMap<u32, String>> = HashMap::new();
    // Records to rewrite with their new pairs; only versions with wide dates have any.
    let mut rewrites: Vec<(Vec<u8>, HashedPairs)> = Vec::new();
    let mut added = 0;
    for record in records.iter()? {
        let (key, value) = record?;
        let corrupt = || StoreError::Corrupt(key.value().to_vec());
        let (type_name, id, version) = resource_search_param_value::decode(key.value()).ok_or_else(corrupt)?;
        let Some(resource_type) = ResourceType::parse(&type_name) else { continue };
        let names = names.entry(resource_type).or_insert_with(|| {
            let keys = indexer.index_keys(resource_type);
            keys.into_iter().map(|key| (search_param_value::param_hash(&type_name, &key), key)).collect()
        });
        let pairs = resource_search_param_value::decode_value(value.value()).ok_or_else(corrupt)?;
        let mut merged: Vec<(u32, Vec<u8>)> = pairs.iter().map(|(p, v)| (*p, v.to_vec())).collect();
        for (hash, stored) in &pairs {
            let Some(param) = names.get(hash) else { continue };
            let Some(derived) = indexer.derived_entry(resource_type, param, stored) else { continue };
            let derived_hash = search_param_value::param_hash(&type_name, &derived.param);
            if pairs.iter().any(|(p, v)| *p == derived_hash && *v == derived.value.as_slice()) {
                continue;
            }
            let source = search_param_value::encode_hashed(*hash, stored, &id, version);
            let Some(lifetime) = entries.get(source.as_slice())?.map(|v| v.value()) else { continue };
            let target = search_param_value::encode_hashed(derived_hash, &derived.value, &id, version);
            entries.insert(target.as_slice(), lifetime)?;
            merged.push((derived_hash, derived.value));
            added += 1;
        }
        if merged.len() > pairs.len() {
            merged.sort();
            merged.dedup();
            rewrites.push((key.value().to_vec(), merged));
        }
    }
    for (key, pairs) in rewrites {
        let value = resource_search_param_value::encode_hashed_value(pairs.iter().map(|(p, v)| (*p, v.as_slice())));
        records.insert(key.as_slice(), value.as_slice())?;
    }
    Ok(added)
}

/// Rows converted per transaction by the batched steps.
pub(super) const BATCH_ROWS: usize = 100_000;

/// How far a batched step has got, for progress reports.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub table: &'static str,
    pub rows_done: u64,
    pub rows_total: u64,
}

/// Format 4 → 5 (and every older format: formats 1 to 4 share the index encodings): re-encodes
/// the index tables (versions short in keys, parameter hashes instead of names in records; see
/// `keys::search_param_value` and `keys::resource_search_param_value`) into their new tables
/// and drops the old ones; a no-op once the old ones are gone. Returns the rows converted. The
/// caller records the new format version.
///
/// Each old table is read in key order and each converted key sorts exactly where its old key
/// did, so the new table is written by appending (its pages come out full) and its last key
/// says where an interrupted conversion resumes.
pub(super) fn reencode_index_tables(
    db: &Database,
    batch_rows: usize,
    progress: &mut dyn FnMut(Progress),
) -> Result<u64, StoreError> {
    let resume = resume_point(db, V4_SEARCH_PARAM_VALUE, SEARCH_PARAM_VALUE, |key| {
        let (hash, value, id, version) = search_param_value::decode(key)?;
        Some(v4::encode_entry_key(hash, &value, &id, version))
    })?;
    let mut rows = 0;
    if let Some((total, after)) = resume {
        rows += in_batches(db, "search_param_value", batch_rows, total, after, progress, |txn, start| {
            let source = txn.open_table(V4_SEARCH_PARAM_VALUE)?;
            let mut target = txn.open_table(SEARCH_PARAM_VALUE)?;
            let (mut count, mut last) = (0, None);
            for row in source.range::<&[u8]>((start, Bound::Unbounded))?.take(batch_rows) {
                let (key, lifetime) = row?;
                let (hash, value, id, version) =
                    v4::decode_entry_key(key.value()).ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
                target.insert(
                    search_param_value::encode_hashed(hash, &value, &id, version).as_slice(),
                    lifetime.value(),
                )?;
                last = Some(key.value().to_vec());
                count += 1;
            }
            Ok((count, last))
        })?;
    }
    let resume = resume_point(db, V4_RESOURCE_SEARCH_PARAM_VALUE, RESOURCE_SEARCH_PARAM_VALUE, |key| {
        let (ty, id, version) = resource_search_param_value::decode(key)?;
        Some(v4::record_key(&ty, &id, version))
    })?;
    if let Some((total, after)) = resume {
        rows += in_batches(db, "resource_search_param_value", batch_rows, total, after, progress, |txn, start| {
            let source = txn.open_table(V4_RESOURCE_SEARCH_PARAM_VALUE)?;
            let mut target = txn.open_table(RESOURCE_SEARCH_PARAM_VALUE)?;
            let (mut count, mut last) = (0, None);
            for row in source.range::<&[u8]>((start, Bound::Unbounded))?.take(batch_rows) {
                let (key, record) = row?;
                let corrupt = || StoreError::Corrupt(key.value().to_vec());
                let (ty, id, version) = v4::decode_record_key(key.value()).ok_or_else(corrupt)?;
                let pairs = v4::decode_record(record.value()).ok_or_else(corrupt)?;
                let converted = resource_search_param_value::encode_value(&ty, pairs);
                target
                    .insert(resource_search_param_value::encode(&ty, &id, version).as_slice(), converted.as_slice())?;
                last = Some(key.value().to_vec());
                count += 1;
            }
            Ok((count, last))
        })?;
    }
    let txn = db.begin_write()?;
    txn.delete_table(V4_SEARCH_PARAM_VALUE)?;
    txn.delete_table(V4_RESOURCE_SEARCH_PARAM_VALUE)?;
    txn.commit()?;
    Ok(rows)
}

/// A table's row count, and the key after which its conversion resumes.
type ResumePoint = (u64, Option<Vec<u8>>);

/// Where converting `from` into `to` starts: `None` if `from` does not exist (nothing to do),
/// otherwise `from`'s row count and the old key of `to`'s last row (`old_key` maps a new key
/// back), after which the conversion resumes.
fn resume_point<V: redb::Value + 'static, W: redb::Value + 'static>(
    db: &Database,
    from: TableDefinition<&[u8], V>,
    to: TableDefinition<&[u8], W>,
    old_key: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> Result<Option<ResumePoint>, StoreError> {
    let txn = db.begin_read()?;
    let total = match txn.open_table(from) {
        Ok(table) => redb::ReadableTableMetadata::len(&table)?,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(error) => return Err(error.into()),
    };
    let last = match txn.open_table(to) {
        Ok(table) => table.last()?.map(|(key, _)| key.value().to_vec()),
        Err(redb::TableError::TableDoesNotExist(_)) => None,
        Err(error) => return Err(error.into()),
    };
    let after = match last {
        Some(key) => Some(old_key(&key).ok_or(StoreError::Corrupt(key))?),
        None => None,
    };
    Ok(Some((total, after)))
}

/// Runs `batch` (which converts up to `batch_rows` rows from the start bound it is given and
/// returns how many it converted and the last key it read) in one transaction after another
/// until a batch falls short.
fn in_batches(
    db: &Database,
    table: &'static str,
    batch_rows: usize,
    rows_total: u64,
    mut after: Option<Vec<u8>>,
    progress: &mut dyn FnMut(Progress),
    mut batch: impl FnMut(&WriteTransaction, Bound<&[u8]>) -> Result<(usize, Option<Vec<u8>>), StoreError>,
) -> Result<u64, StoreError> {
    let mut rows_done = 0;
    loop {
        let txn = db.begin_write()?;
        let start = match &after {
            Some(key) => Bound::Excluded(key.as_slice()),
            None => Bound::Unbounded,
        };
        let (count, last) = batch(&txn, start)?;
        txn.commit()?;
        rows_done += count as u64;
        progress(Progress { table, rows_done, rows_total });
        match last {
            Some(last) if count == batch_rows => after = Some(last),
            _ => return Ok(rows_done),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::fhir::Id;
    use crate::search::SearchIndexer;
    use crate::store::{Action, META, Precondition, Store, StoreOptions, Target, WriteRequest};

    type Rows = Vec<(Vec<u8>, Vec<u8>)>;

    fn open(path: &std::path::Path) -> Store {
        let options = StoreOptions { gc_interval: Duration::ZERO, ..StoreOptions::default() };
        Store::open(path, options, Arc::new(SearchIndexer)).unwrap()
    }

    fn close(store: Store) {
        let finished = store.writer_finished();
        drop(store);
        while !finished() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A database with patients, observations pointing at them, updates (superseded entries)
    /// and a deletion.
    fn populated(path: &std::path::Path) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let store = open(path);
        let put = |resource: serde_json::Value| {
            let serde_json::Value::Object(resource) = resource else { unreachable!() };
            let resource_type = ResourceType::parse(resource["resourceType"].as_str().unwrap()).unwrap();
            let id = Id::parse(resource["id"].as_str().unwrap()).unwrap();
            let action = Action::Update {
                resource_type,
                target: Target::Id(id),
                resource,
                precondition: Precondition::default(),
            };
            runtime.block_on(store.write(WriteRequest::single(action))).unwrap();
        };
        for n in 0..40 {
            put(json!({"resourceType": "Patient", "id": format!("p{n}"), "name": [{"family": format!("Family{n}")}],
                "birthDate": format!("19{:02}", 40 + n), "identifier": [{"system": "http://mrn", "value": format!("{n}")}]}));
            put(json!({"resourceType": "Observation", "id": format!("o{n}"), "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                "subject": {"reference": format!("Patient/p{n}")},
                "effectivePeriod": {"start": "2020-01-01", "end": "2021-06-01"},
                "valueQuantity": {"value": n, "system": "http://unitsofmeasure.org", "code": "/min"}}));
        }
        for n in 0..10 {
            put(json!({"resourceType": "Patient", "id": format!("p{n}"), "name": [{"family": format!("Renamed{n}")}]}));
        }
        runtime
            .block_on(store.write(WriteRequest::single(Action::Delete {
                resource_type: ResourceType::parse("Observation").unwrap(),
                target: Target::Id(Id::parse("o1").unwrap()),
                precondition: Precondition::default(),
            })))
            .unwrap();
        close(store);
    }

    fn rows<V: redb::Value + 'static>(db: &Database, table: TableDefinition<&[u8], V>) -> Rows
    where
        for<'a> V::SelfType<'a>: std::fmt::Debug,
    {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(table).unwrap();
        table
            .iter()
            .unwrap()
            .map(|row| row.unwrap())
            .map(|(k, v)| (k.value().to_vec(), format!("{:?}", v.value()).into_bytes()))
            .collect()
    }

    /// Rewrites the current index tables the way formats 1 to 4 stored them, and marks the file
    /// with `version`, as a file written by an earlier release would be.
    fn downgrade(path: &std::path::Path, version: u32) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let entries = txn.open_table(SEARCH_PARAM_VALUE).unwrap();
            let mut old_entries = txn.open_table(V4_SEARCH_PARAM_VALUE).unwrap();
            for row in entries.iter().unwrap() {
                let (key, lifetime) = row.unwrap();
                let (hash, value, id, version) = search_param_value::decode(key.value()).unwrap();
                old_entries
                    .insert(v4::encode_entry_key(hash, &value, &id, version).as_slice(), lifetime.value())
                    .unwrap();
            }
            let records = txn.open_table(RESOURCE_SEARCH_PARAM_VALUE).unwrap();
            let mut old_records = txn.open_table(V4_RESOURCE_SEARCH_PARAM_VALUE).unwrap();
            for row in records.iter().unwrap() {
                let (key, record) = row.unwrap();
                let (ty, id, version) = resource_search_param_value::decode(key.value()).unwrap();
                let keys = SearchIndexer.index_keys(ResourceType::parse(&ty).unwrap());
                let named: Vec<(&str, &[u8])> = resource_search_param_value::decode_value(record.value())
                    .unwrap()
                    .into_iter()
                    .map(|(hash, value)| {
                        let name = keys.iter().find(|k| search_param_value::param_hash(&ty, k) == hash).unwrap();
                        (name.as_str(), value)
                    })
                    .collect();
                old_records
                    .insert(v4::record_key(&ty, &id, version).as_slice(), v4::encode_record(named).as_slice())
                    .unwrap();
            }
        }
        txn.delete_table(SEARCH_PARAM_VALUE).unwrap();
        txn.delete_table(RESOURCE_SEARCH_PARAM_VALUE).unwrap();
        txn.open_table(META).unwrap().insert("format_version", version.to_be_bytes().as_slice()).unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn a_format_4_file_gets_exactly_the_index_the_current_format_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        populated(&path);
        let (entries, records) = {
            let db = Database::create(&path).unwrap();
            (rows(&db, SEARCH_PARAM_VALUE), rows(&db, RESOURCE_SEARCH_PARAM_VALUE))
        };
        assert!(entries.len() > 1000 && records.len() == 90, "{} entries, {} records", entries.len(), records.len());
        downgrade(&path, 4);

        let store = open(&path);
        let report = store.verify(&SearchIndexer).unwrap();
        assert!(report.is_consistent(), "{:?}", report.problems);
        close(store);
        let db = Database::create(&path).unwrap();
        assert_eq!(rows(&db, SEARCH_PARAM_VALUE), entries);
        assert_eq!(rows(&db, RESOURCE_SEARCH_PARAM_VALUE), records);
        let txn = db.begin_read().unwrap();
        let names: Vec<String> = txn.list_tables().unwrap().map(|t| redb::TableHandle::name(&t).to_owned()).collect();
        assert!(!names.contains(&"search_param_value".to_owned()), "the old tables are gone: {names:?}");
        assert!(!names.contains(&"resource_search_param_value".to_owned()), "{names:?}");
        let meta = txn.open_table(META).unwrap();
        assert_eq!(meta.get("format_version").unwrap().unwrap().value(), super::super::FORMAT_VERSION.to_be_bytes());
    }

    #[test]
    fn an_interrupted_reencoding_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        populated(&path);
        let (entries, records) = {
            let db = Database::create(&path).unwrap();
            (rows(&db, SEARCH_PARAM_VALUE), rows(&db, RESOURCE_SEARCH_PARAM_VALUE))
        };
        downgrade(&path, 3);
        let db = Database::create(&path).unwrap();
        // Stop after the third batch of each attempt, as a crash between transactions would.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut batches = 0;
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                reencode_index_tables(&db, 97, &mut |_| {
                    batches += 1;
                    assert!(batches < 3, "interrupted");
                })
            }));
            if run.is_ok() {
                break;
            }
            assert!(attempts < 1000, "the conversion makes progress");
        }
        assert!(attempts > 5, "it was interrupted and resumed {attempts} times");
        assert_eq!(rows(&db, SEARCH_PARAM_VALUE), entries);
        assert_eq!(rows(&db, RESOURCE_SEARCH_PARAM_VALUE), records);
    }
}
