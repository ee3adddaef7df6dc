//! Migrations of older database files to the current format.
//!
//! Formats 1 → 2 → 3 run inside the transaction that opens the file (all-or-nothing; an
//! interrupted one reruns at the next open). Format 3 → 4 rewrites every stored body, which on a
//! large file is too much for one transaction: it works in batches, each its own transaction,
//! and records how far it got in `meta`, so an interrupted migration resumes where it stopped.
//! Every value says how its body is encoded (see `codec`), so a half-migrated file reads
//! correctly; the server still finishes the migration before it serves (`Store::open`).
//!
//! A later format adds its own step after these, keyed by the version it starts from.

use std::ops::Bound;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};
use serde_json::Value;

use super::codec::{Codecs, StoredBody, content_hash};
use super::keys::{resource_search_param_value, resource_version, search_param_value, superseded};
use super::{
    Indexer, META, Op, RESOURCE_SEARCH_PARAM_VALUE, RESOURCE_VERSION, SEARCH_PARAM_VALUE, SUPERSEDED, StoreError,
};
use crate::fhir::ResourceType;

/// Versions rewritten per transaction by [`compress_bodies`]: large enough that commits do not
/// dominate, small enough that an interruption loses little work and memory stays bounded
/// (one batch of bodies, a few MiB).
pub(super) const BATCH_VERSIONS: usize = 2_000;

/// `meta` key: the last `resource_version` key [`compress_bodies`] has migrated.
const CURSOR_KEY: &str = "migration_cursor";

/// How far a batched migration is, reported after every batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationProgress {
    /// Versions examined so far, including those of earlier, interrupted runs.
    pub migrated: u64,
    /// Versions in the file.
    pub total: u64,
}

/// What a migration did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct MigrationReport {
    pub from_version: u32,
    pub to_version: u32,
    /// Versions examined by this run.
    pub versions: u64,
    /// Bodies rewritten in the new encoding by this run (deletions have none).
    pub bodies_rewritten: u64,
    /// Stored sizes of the rewritten bodies before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Transactions committed by this run.
    pub batches: u64,
    /// Whether this run continued an interrupted one.
    pub resumed: bool,
    /// Versions whose body cannot be read (`type/id/_history/version`, at most 100): left as
    /// they are, and an error at read.
    pub damaged: Vec<String>,
}

/// Which bodies a batched pass over `resource_version` rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rewrite {
    /// Format 3 → 4: every format 3 body, compressed with the current dictionary and given its
    /// content hash; the pass ends by setting the format version to 4.
    ToFormat4,
    /// After retraining: every body not compressed with the current dictionary (older
    /// dictionaries, plain bodies) is compressed again with it; content hashes are kept.
    Recompress,
}

impl Rewrite {
    /// The `meta` key recording the last `resource_version` key this pass has done.
    fn cursor_key(self) -> &'static str {
        match self {
            Rewrite::ToFormat4 => CURSOR_KEY,
            Rewrite::Recompress => "recompress_cursor",
        }
    }
}

/// Format 3 → 4 (see [`rewrite_bodies`]).
pub(super) fn compress_bodies(
    db: &Database,
    codecs: &Codecs,
    batch: usize,
    max_batches: Option<u64>,
    progress: &mut dyn FnMut(&MigrationProgress),
) -> Result<MigrationReport, StoreError> {
    rewrite_bodies(db, codecs, Rewrite::ToFormat4, batch, max_batches, progress)
}

/// Rewrites the bodies `job` selects, `batch` versions per write transaction, recording the
/// last key done in `meta` after each, so that an interrupted pass resumes after it. Stops early
/// (progress recorded) after `max_batches` batches, which is how tests interrupt it. A body that
/// cannot be decoded is left as it is and named in the report.
pub(super) fn rewrite_bodies(
    db: &Database,
    codecs: &Codecs,
    job: Rewrite,
    batch: usize,
    max_batches: Option<u64>,
    progress: &mut dyn FnMut(&MigrationProgress),
) -> Result<MigrationReport, StoreError> {
    let version = super::format_version(db)?;
    let mut report = MigrationReport { from_version: version, to_version: version, ..MigrationReport::default() };
    let total = db.begin_read()?.open_table(RESOURCE_VERSION)?.len()?;
    let mut done = 0u64;
    loop {
        if max_batches.is_some_and(|max| report.batches >= max) {
            return Ok(report);
        }
        let mut txn = db.begin_write()?;
        txn.set_quick_repair(true);
        let finished = {
            let mut meta = txn.open_table(META)?;
            let mut versions = txn.open_table(RESOURCE_VERSION)?;
            let cursor = meta.get(job.cursor_key())?.map(|v| v.value().to_vec());
            if report.batches == 0 && cursor.is_some() {
                report.resumed = true;
            }
            let start = match &cursor {
                Some(key) => {
                    // Count what earlier runs did, for the progress figure.
                    if report.batches == 0 {
                        done = versions.range::<&[u8]>(..=key.as_slice())?.count() as u64;
                    }
                    Bound::Excluded(key.as_slice())
                }
                None => Bound::Unbounded,
            };
            let mut rewrites: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            let mut last_key = None;
            for entry in versions.range::<&[u8]>((start, Bound::Unbounded))?.take(batch) {
                let (key, value) = entry?;
                let key = key.value().to_vec();
                let (header, body) =
                    resource_version::decode_value(value.value()).ok_or_else(|| StoreError::Corrupt(key.clone()))?;
                last_key = Some(key.clone());
                report.versions += 1;
                done += 1;
                match rewritten(job, codecs, body) {
                    Ok(None) => {}
                    Ok(Some(stored)) => {
                        report.bytes_before += body.len() as u64;
                        report.bytes_after += stored.len() as u64;
                        rewrites.push((key, resource_version::encode_value(header, &stored)));
                    }
                    Err(reason) => {
                        let StoreError::CorruptBody { resource, reason } = corrupt_body(&key, &reason) else {
                            unreachable!("corrupt_body makes a CorruptBody")
                        };
                        tracing::error!(%resource, %reason, "a stored body cannot be read; left as it is");
                        if report.damaged.len() < MAX_DAMAGED_NAMED {
                            report.damaged.push(resource);
                        }
                    }
                }
            }
            report.bodies_rewritten += rewrites.len() as u64;
            for (key, value) in rewrites {
                versions.insert(key.as_slice(), value.as_slice())?;
            }
            match last_key {
                Some(key) => {
                    meta.insert(job.cursor_key(), key.as_slice())?;
                    false
                }
                None => {
                    meta.remove(job.cursor_key())?;
                    if job == Rewrite::ToFormat4 {
                        meta.insert("format_version", 4u32.to_be_bytes().as_slice())?;
                    }
                    true
                }
            }
        };
        txn.commit()?;
        report.batches += 1;
        if finished {
            report.to_version = super::format_version(db)?;
            tracing::info!(
                versions = report.versions,
                bodies = report.bodies_rewritten,
                to_version = report.to_version,
                "rewrote the stored bodies"
            );
            return Ok(report);
        }
        progress(&MigrationProgress { migrated: done, total });
    }
}

/// Damaged bodies named in a report; more are only counted in the log.
const MAX_DAMAGED_NAMED: usize = 100;

/// The new stored form of `body` if `job` rewrites it.
fn rewritten(job: Rewrite, codecs: &Codecs, body: &[u8]) -> Result<Option<Vec<u8>>, String> {
    let stored = StoredBody::parse(body)?;
    let hash = match (job, stored) {
        (_, StoredBody::Empty) => return Ok(None),
        (_, StoredBody::Legacy(json)) => match serde_json::from_slice::<Value>(json) {
            Ok(Value::Object(resource)) => content_hash(&resource),
            _ => return Err("it is not a JSON object".into()),
        },
        (Rewrite::ToFormat4, _) => return Ok(None),
        (Rewrite::Recompress, StoredBody::Zstd { dictionary, .. }) if dictionary == codecs.current_dictionary() => {
            return Ok(None);
        }
        (Rewrite::Recompress, stored) => stored.hash().unwrap_or_default(),
    };
    let json = codecs.decode(stored)?;
    let encoded = codecs.encode(&json, hash);
    // A plain body that still does not compress stays as it is.
    Ok((encoded.as_slice() != body).then_some(encoded))
}

/// The error for a body that cannot be decoded, naming its version.
pub(super) fn corrupt_body(key: &[u8], reason: &str) -> StoreError {
    let resource = match resource_version::decode(key) {
        Some((ty, id, version)) => format!("{ty}/{id}/_history/{version}"),
        None => format!("{key:?}"),
    };
    StoreError::CorruptBody { resource, reason: reason.to_owned() }
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

/// The `(param, value)` pairs of one version's record.
type Pairs = Vec<(String, Vec<u8>)>;

/// Format 2 → 3: adds the entries the indexer derives from stored pairs (the end-ordered entry
/// of a date wider than a day) to every indexed version that lacks them, with the lifetime
/// `(created_t, superseded_t)` of the entry each derives from. Returns the entries added.
pub(super) fn add_derived_entries(txn: &WriteTransaction, indexer: &dyn Indexer) -> Result<u64, StoreError> {
    let mut records = txn.open_table(RESOURCE_SEARCH_PARAM_VALUE)?;
    let mut entries = txn.open_table(SEARCH_PARAM_VALUE)?;
    // Records to rewrite with their new pairs; only versions with wide dates have any.
    let mut rewrites: Vec<(Vec<u8>, Pairs)> = Vec::new();
    let mut added = 0;
    for record in records.iter()? {
        let (key, value) = record?;
        let corrupt = || StoreError::Corrupt(key.value().to_vec());
        let (type_name, id, version) = resource_search_param_value::decode(key.value()).ok_or_else(corrupt)?;
        let Some(resource_type) = ResourceType::parse(&type_name) else { continue };
        let pairs = resource_search_param_value::decode_value(value.value()).ok_or_else(corrupt)?;
        let mut merged: Vec<(String, Vec<u8>)> = pairs.iter().map(|(p, v)| ((*p).to_owned(), v.to_vec())).collect();
        for (param, stored) in &pairs {
            let Some(derived) = indexer.derived_entry(resource_type, param, stored) else { continue };
            if pairs.iter().any(|(p, v)| *p == derived.param && *v == derived.value.as_slice()) {
                continue;
            }
            let source = search_param_value::encode(&type_name, param, stored, &id, version);
            let Some(lifetime) = entries.get(source.as_slice())?.map(|v| v.value()) else { continue };
            let target = search_param_value::encode(&type_name, &derived.param, &derived.value, &id, version);
            entries.insert(target.as_slice(), lifetime)?;
            merged.push((derived.param, derived.value));
            added += 1;
        }
        if merged.len() > pairs.len() {
            merged.sort();
            merged.dedup();
            rewrites.push((key.value().to_vec(), merged));
        }
    }
    for (key, pairs) in rewrites {
        let value = resource_search_param_value::encode_value(pairs.iter().map(|(p, v)| (p.as_str(), v.as_slice())));
        records.insert(key.as_slice(), value.as_slice())?;
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::codec::StoredBody;
    use super::super::{Snapshot, Store, format_version, load_codecs};
    use super::*;
    use crate::fhir::ResourceType;
    use crate::search::SearchIndexer;

    /// `(key, decoded body)` of every stored version.
    type Bodies = Vec<(Vec<u8>, Vec<u8>)>;

    /// Every stored body of the file, decoded, with its key; and how many are still format 3.
    fn bodies(db: &Database, codecs: &Codecs) -> (Bodies, usize) {
        let txn = db.begin_read().unwrap();
        let table = txn.open_table(RESOURCE_VERSION).unwrap();
        let (mut bodies, mut legacy) = (Vec::new(), 0);
        for entry in table.iter().unwrap() {
            let (key, value) = entry.unwrap();
            let (_, stored) = resource_version::decode_value(value.value()).unwrap();
            let stored = StoredBody::parse(stored).unwrap();
            legacy += usize::from(matches!(stored, StoredBody::Legacy(_)));
            bodies.push((key.value().to_vec(), codecs.decode(stored).unwrap()));
        }
        (bodies, legacy)
    }

    /// A copy of the format 3 fixture (tests/data/format3) in `dir`, opened.
    fn format_3_database(dir: &std::path::Path) -> Database {
        let path = dir.join("format3.redb");
        let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/format3/braid.redb.zst");
        std::fs::write(&path, zstd::decode_all(std::fs::read(fixture).unwrap().as_slice()).unwrap()).unwrap();
        Database::create(&path).unwrap()
    }

    #[test]
    fn a_damaged_format_3_body_is_named_and_left_and_the_migration_completes() {
        let dir = tempfile::tempdir().unwrap();
        let db = format_3_database(dir.path());
        let key = resource_version::encode("Patient", "example", 1);
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(RESOURCE_VERSION).unwrap();
            let value = table.get(key.as_slice()).unwrap().unwrap().value().to_vec();
            let mut damaged = value[..resource_version::HEADER_LEN].to_vec();
            damaged.extend_from_slice(b"{\"resourceType\":\"Pat");
            table.insert(key.as_slice(), damaged.as_slice()).unwrap();
        }
        txn.commit().unwrap();
        let opened = Store::initialise_with(&db, Some(&SearchIndexer), &mut |_| {}).unwrap();
        let report = opened.migrated.unwrap();
        assert_eq!(report.damaged, vec!["Patient/example/_history/1".to_owned()]);
        assert_eq!((report.bodies_rewritten, report.to_version), (223, 4));
        assert_eq!(format_version(&db).unwrap(), 4);
    }

    #[test]
    fn an_interrupted_migration_reads_correctly_and_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let db = format_3_database(dir.path());
        Store::prepare_file(&db, Some(&SearchIndexer)).unwrap();
        let codecs = Arc::new(load_codecs(&db).unwrap());
        let (original, legacy) = bodies(&db, &codecs);
        assert_eq!((original.len(), legacy), (225, 224), "every body but the deletion's is format 3");

        // Two batches of 50, then the process "stops".
        let mut reported = Vec::new();
        let first = compress_bodies(&db, &codecs, 50, Some(2), &mut |p| reported.push(*p)).unwrap();
        assert_eq!((first.versions, first.batches, first.to_version, first.resumed), (100, 2, 3, false));
        assert_eq!(reported.last(), Some(&MigrationProgress { migrated: 100, total: 225 }));
        assert_eq!(format_version(&db).unwrap(), 3);
        let (halfway, legacy) = bodies(&db, &codecs);
        assert!(legacy > 100 && legacy < 224, "{legacy} bodies left in format 3");
        assert_eq!(halfway, original, "a half-migrated file reads the same bodies");
        // Reads see both encodings: the first resources (migrated) and the last ones (not yet).
        let snapshot = Snapshot::open(&db, &codecs).unwrap();
        for (key, body) in [&original[0], &original[original.len() - 1]] {
            let (ty, id, _) = resource_version::decode(key).unwrap();
            let current = snapshot.current(ResourceType::parse(&ty).unwrap(), &id).unwrap().unwrap();
            assert_eq!(&current.body, body);
        }
        drop(snapshot);

        // The next run continues after the last migrated key, and finishes.
        let mut reported = Vec::new();
        let second = compress_bodies(&db, &codecs, 50, None, &mut |p| reported.push(*p)).unwrap();
        assert!(second.resumed);
        assert_eq!((second.versions, second.to_version), (125, 4));
        assert_eq!(first.bodies_rewritten + second.bodies_rewritten, 224);
        assert_eq!(reported.first(), Some(&MigrationProgress { migrated: 150, total: 225 }));
        assert_eq!(format_version(&db).unwrap(), 4);
        let (migrated, legacy) = bodies(&db, &codecs);
        assert_eq!(legacy, 0);
        assert_eq!(migrated, original, "every body is byte for byte what format 3 stored");
        // Migrated bodies carry the hash of their content.
        let report = super::super::check::verify(&db, &SearchIndexer, &codecs).unwrap();
        assert!(!report.problems.iter().any(|p| p.contains("hash") || p.contains("body")), "{:?}", report.problems);
    }
}
