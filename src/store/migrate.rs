//! Migrations of older database files to the current format.
//!
//! Formats 1 → 2 → 3 run inside the transaction that opens the file (all-or-nothing; an
//! interrupted one reruns at the next open). Format 3 → 4 rewrites every stored body, which on a
//! large file is too much for one transaction: it works in batches, each its own transaction,
//! and records how far it got in `meta`, so an interrupted migration resumes where it stopped.
//! Every value says how its body is encoded (see `codec`), so a half-migrated file reads
//! correctly; the server still finishes the migration before it serves (`Store::open`).
//!
//! Formats 4 → 5 and 5 → 6 rebuild the index tables, also in batches. The index tables' names
//! carry the format that last changed their encoding (`search_param_value.7`): the step reads
//! the old tables while it writes the new ones, and drops the old ones when it is done. Formats
//! 1 to 5 share the index encodings but for values, so that step runs first for all of them
//! (straight to the current encoding), and the format 2 → 3 step (which adds index entries)
//! works on the new tables. Format 6 → 7 changes only how ids are written in the index keys
//! (see `keys::id_code`): it converts each key as it is ([`rekey_index_tables`]), in batches,
//! without reading the bodies.
//!
//! A later format adds its own step after these, keyed by the version it starts from.

use std::ops::Bound;

use std::collections::HashMap;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};
use serde_json::Value;

use super::codec::{Codecs, StoredBody, content_hash};
use super::keys::search_param_value::Lifetime;
use super::keys::{
    Reader, put_str, put_u64, put_version, resource_search_param_value, resource_version, search_param_value,
    superseded,
};
use super::{
    IndexEntry, Indexer, META, Op, RESOURCE_SEARCH_PARAM_VALUE, RESOURCE_VERSION, SEARCH_PARAM_VALUE, SUPERSEDED,
    StoreError,
};
use crate::fhir::ResourceType;

/// The index tables as formats 1 to 4 wrote them (see [`v4`] for their encodings).
pub(super) const V4_SEARCH_PARAM_VALUE: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("search_param_value");
pub(super) const V4_RESOURCE_SEARCH_PARAM_VALUE: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("resource_search_param_value");

/// The key and record encodings of the index tables up to format 4: versions as 8 bytes, and
/// parameters spelled out in the records. Only the migrations read them.
pub(super) mod v4 {
    use super::put_u64;
    use super::spelled_ids;

    pub fn encode_entry_key(hash: u32, value: &[u8], id: &str, version: u64) -> Vec<u8> {
        spelled_ids::entry_key(hash, value, id, version, put_u64)
    }

    pub fn record_key(resource_type: &str, id: &str, version: u64) -> Vec<u8> {
        spelled_ids::record_key(resource_type, id, version, put_u64)
    }

    /// `(type, id, version)`
    pub fn decode_record_key(key: &[u8]) -> Option<(String, String, u64)> {
        spelled_ids::decode_record_key(key, |reader| reader.u64())
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

/// The index tables as format 5 wrote them: the current key and record encodings, but each
/// quantity indexed as four values (one per unit form, the unit first) where format 6 has one.
pub(super) const V5_SEARCH_PARAM_VALUE: TableDefinition<&[u8], (u64, u64)> =
    TableDefinition::new("search_param_value.5");
pub(super) const V5_RESOURCE_SEARCH_PARAM_VALUE: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("resource_search_param_value.5");

/// `(type, id, version)` of an index record.
type RecordKey = (String, String, u64);

/// `(parameter hash, value)` pairs of an index record.
type RecordPairs = Vec<(u32, Vec<u8>)>;

/// An earlier encoding of the index tables, which [`reencode_index_tables`] rebuilds from the
/// stored bodies.
pub(super) struct OldIndex {
    pub entries: TableDefinition<'static, &'static [u8], (u64, u64)>,
    pub records: TableDefinition<'static, &'static [u8], &'static [u8]>,
    /// The record key of `(type, id, version)`, and back.
    pub record_key: fn(&str, &str, u64) -> Vec<u8>,
    pub decode_record_key: fn(&[u8]) -> Option<RecordKey>,
    /// A record's `(parameter hash, value)` pairs; the type is the record's.
    pub decode_record: fn(&str, &[u8]) -> Option<RecordPairs>,
    /// The entry key of `(parameter hash, value, id, version)`.
    pub entry_key: fn(u32, &[u8], &str, u64) -> Vec<u8>,
}

/// Formats 1 to 4 (they share the index encodings).
pub(super) const V4_INDEX: OldIndex = OldIndex {
    entries: V4_SEARCH_PARAM_VALUE,
    records: V4_RESOURCE_SEARCH_PARAM_VALUE,
    record_key: v4::record_key,
    decode_record_key: v4::decode_record_key,
    decode_record: |resource_type, bytes| {
        let pairs = v4::decode_record(bytes)?;
        let hashed =
            pairs.into_iter().map(|(param, value)| (search_param_value::param_hash(resource_type, param), value));
        Some(hashed.map(|(hash, value)| (hash, value.to_vec())).collect())
    },
    entry_key: v4::encode_entry_key,
};

/// Format 5 (its keys are format 6's, see [`v6`]).
pub(super) const V5_INDEX: OldIndex = OldIndex {
    entries: V5_SEARCH_PARAM_VALUE,
    records: V5_RESOURCE_SEARCH_PARAM_VALUE,
    record_key: v6::record_key,
    decode_record_key: v6::decode_record_key,
    decode_record: |_, bytes| {
        let pairs = resource_search_param_value::decode_value(bytes)?;
        Some(pairs.into_iter().map(|(hash, value)| (hash, value.to_vec())).collect())
    },
    entry_key: v6::entry_key,
};

/// The index tables as format 6 wrote them: the current values and records, ids spelled out
/// in the keys.
pub(super) const V6_SEARCH_PARAM_VALUE: TableDefinition<&[u8], Lifetime> = TableDefinition::new("search_param_value.6");
pub(super) const V6_RESOURCE_SEARCH_PARAM_VALUE: TableDefinition<&[u8], &[u8]> =
    TableDefinition::new("resource_search_param_value.6");

/// The index keys of formats 5 and 6: ids spelled out, versions short. Only the migrations
/// read them.
pub(super) mod v6 {
    use super::spelled_ids;
    use super::{Reader, put_version};

    pub fn entry_key(hash: u32, value: &[u8], id: &str, version: u64) -> Vec<u8> {
        spelled_ids::entry_key(hash, value, id, version, put_version)
    }

    /// `(parameter hash, value, id, version)`
    pub fn decode_entry_key(key: &[u8]) -> Option<(u32, Vec<u8>, String, u64)> {
        let (hash, rest) = key.split_first_chunk::<4>()?;
        let mut reader = Reader::new(rest);
        let decoded = (u32::from_be_bytes(*hash), reader.str()?, reader.string()?, reader.version()?);
        reader.is_empty().then_some(decoded)
    }

    pub fn record_key(resource_type: &str, id: &str, version: u64) -> Vec<u8> {
        spelled_ids::record_key(resource_type, id, version, put_version)
    }

    /// `(type, id, version)`
    pub fn decode_record_key(key: &[u8]) -> Option<(String, String, u64)> {
        spelled_ids::decode_record_key(key, |reader| reader.version())
    }
}

/// The index keys of formats up to 6, which spell the id out as a string: formats up to 4 and
/// formats 5 and 6 differ only in how they write the version (8 bytes, or short). Frozen: the
/// current key codecs (`keys::*`) may change, these may not.
mod spelled_ids {
    use super::{Reader, put_str};

    pub fn entry_key(hash: u32, value: &[u8], id: &str, version: u64, put_version: fn(&mut Vec<u8>, u64)) -> Vec<u8> {
        let mut key = hash.to_be_bytes().to_vec();
        put_str(&mut key, value);
        put_str(&mut key, id.as_bytes());
        put_version(&mut key, version);
        key
    }

    pub fn record_key(resource_type: &str, id: &str, version: u64, put_version: fn(&mut Vec<u8>, u64)) -> Vec<u8> {
        let mut key = Vec::new();
        put_str(&mut key, resource_type.as_bytes());
        put_str(&mut key, id.as_bytes());
        put_version(&mut key, version);
        key
    }

    /// `(type, id, version)`
    pub fn decode_record_key(
        key: &[u8],
        read_version: fn(&mut Reader<'_>) -> Option<u64>,
    ) -> Option<(String, String, u64)> {
        let mut reader = Reader::new(key);
        let decoded = (reader.string()?, reader.string()?, read_version(&mut reader)?);
        reader.is_empty().then_some(decoded)
    }
}

/// Versions rewritten per transaction by [`compress_bodies`]: large enough that commits do not
/// dominate, small enough that an interruption loses little work and memory stays bounded
/// (one batch of bodies, a few MiB).
pub(super) const BATCH_VERSIONS: usize = 2_000;

/// `meta` key: the last `resource_version` key [`compress_bodies`] has migrated.
const CURSOR_KEY: &str = "migration_cursor";

/// How far a batched migration is, reported after every batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MigrationProgress {
    /// What is counted: `versions` (bodies), or the name of the index table being re-encoded
    /// (its rows).
    pub unit: &'static str,
    /// Done so far, including the work of earlier, interrupted runs.
    pub migrated: u64,
    /// How many there are in the file.
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
    /// Indexed versions whose index this run rebuilt in the current encoding (formats up to 5).
    pub versions_reindexed: u64,
    /// Index rows this run wrote under their format 7 keys (6 → 7).
    pub index_rows_rekeyed: u64,
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
        let mut txn = super::begin_write(db)?;
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
        progress(&MigrationProgress { unit: "versions", migrated: done, total });
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

/// Rebuilds the index tables of an earlier format (`old`) in the current encoding and drops
/// the old ones; a no-op once the old ones are gone. Returns the index records written. The
/// caller records the new format version. Format 4 → 5 changed the keys (short versions),
/// records (parameter hashes) and tokens (one `code 0x00 system` value instead of `code` and
/// `system|code`); 5 → 6 the quantities (one value, the number first, instead of four).
///
/// The old records say which versions are indexed (those whose entries the collector has not
/// removed); each such version is indexed again from its stored body
/// ([`Indexer::reindex_legacy`], which keeps the old reference values: they may have been
/// indexed relative to the server's base, which the body alone does not tell), with the
/// lifetime its old entries had. Records are converted in key order, in batches, each its own
/// transaction; the last key of the new record table says where an interrupted run resumes.
pub(super) fn reencode_index_tables(
    db: &Database,
    codecs: &Codecs,
    indexer: &dyn Indexer,
    old: &OldIndex,
    batch_rows: usize,
    progress: &mut dyn FnMut(&MigrationProgress),
) -> Result<u64, StoreError> {
    let resume = resume_point(db, old.records, RESOURCE_SEARCH_PARAM_VALUE, |key| {
        let (ty, id, version) = resource_search_param_value::decode(key)?;
        Some((old.record_key)(&ty, &id, version))
    })?;
    let mut rows = 0;
    // Parameter names by hash, per type (records store hashes; reindexing needs names).
    let mut names: HashMap<String, HashMap<u32, String>> = HashMap::new();
    if let Some(resume) = resume {
        rows += in_batches(db, "indexed versions", batch_rows, resume, progress, |txn, start| {
            let source = txn.open_table(old.records)?;
            let old_entries = txn.open_table(old.entries)?;
            let versions = txn.open_table(RESOURCE_VERSION)?;
            let mut records = txn.open_table(RESOURCE_SEARCH_PARAM_VALUE)?;
            let mut entries = txn.open_table(SEARCH_PARAM_VALUE)?;
            let (mut count, mut last) = (0, None);
            for row in source.range::<&[u8]>((start, Bound::Unbounded))?.take(batch_rows) {
                let (key, record) = row?;
                let corrupt = || StoreError::Corrupt(key.value().to_vec());
                let (ty, id, version) = (old.decode_record_key)(key.value()).ok_or_else(corrupt)?;
                let old_pairs = (old.decode_record)(&ty, record.value()).ok_or_else(corrupt)?;
                last = Some(key.value().to_vec());
                count += 1;
                // Every entry of a version has the lifetime of the version.
                let mut lifetime = None;
                for (hash, value) in &old_pairs {
                    if let Some(found) = old_entries.get((old.entry_key)(*hash, value, &id, version).as_slice())? {
                        lifetime = Some(found.value());
                        break;
                    }
                }
                let (Some(lifetime), Some(resource_type)) = (lifetime, ResourceType::parse(&ty)) else { continue };
                let names = names.entry(ty.clone()).or_insert_with(|| {
                    let keys = indexer.index_keys(resource_type);
                    keys.into_iter().map(|name| (search_param_value::param_hash(&ty, &name), name)).collect()
                });
                // A parameter this build no longer knows has no name, and no entry any more.
                let named: Vec<(String, Vec<u8>)> = old_pairs
                    .iter()
                    .filter_map(|(hash, value)| Some((names.get(hash)?.clone(), value.clone())))
                    .collect();
                let body = versions.get(resource_version::encode(&ty, &id, version).as_slice())?.and_then(|value| {
                    let (_, stored) = resource_version::decode_value(value.value())?;
                    let json = codecs.decode(StoredBody::parse(stored).ok()?).ok()?;
                    serde_json::from_slice::<Value>(&json).ok()
                });
                let new_entries: std::collections::BTreeSet<IndexEntry> = match body {
                    Some(body) => indexer.reindex_legacy(resource_type, &body, &named).into_iter().collect(),
                    None => {
                        tracing::warn!(resource = %format!("{ty}/{id}/_history/{version}"),
                            "the stored body cannot be read; its index values are kept as they were");
                        named.into_iter().map(|(param, value)| IndexEntry { param, value }).collect()
                    }
                };
                for entry in &new_entries {
                    let entry_key = search_param_value::encode(&ty, &entry.param, &entry.value, &id, version);
                    entries.insert(entry_key.as_slice(), lifetime)?;
                }
                let converted = resource_search_param_value::encode_value(
                    &ty,
                    new_entries.iter().map(|e| (e.param.as_str(), e.value.as_slice())),
                );
                records
                    .insert(resource_search_param_value::encode(&ty, &id, version).as_slice(), converted.as_slice())?;
            }
            Ok((count, last))
        })?;
    }
    let txn = super::begin_write(db)?;
    // Every earlier form goes: a file left half-way through an earlier migration (format 4 with
    // a partial `.5` table) holds both.
    for table in [V4_SEARCH_PARAM_VALUE, V5_SEARCH_PARAM_VALUE] {
        txn.delete_table(table)?;
    }
    txn.delete_table(V6_SEARCH_PARAM_VALUE)?;
    for table in [V4_RESOURCE_SEARCH_PARAM_VALUE, V5_RESOURCE_SEARCH_PARAM_VALUE, V6_RESOURCE_SEARCH_PARAM_VALUE] {
        txn.delete_table(table)?;
    }
    txn.commit()?;
    Ok(rows)
}

/// Format 6 → 7: writes every row of the format 6 index tables under its format 7 key (the id
/// in `keys::id_code`), values unchanged, and drops the old tables; a no-op once they are gone.
/// Returns the rows converted. The code keeps the ids' order, so the new tables fill in the
/// old ones' order, and the last key of a new table (read back to the old key) is where an
/// interrupted run resumes. The caller records the new format version.
pub(super) fn rekey_index_tables(
    db: &Database,
    batch_rows: usize,
    progress: &mut dyn FnMut(&MigrationProgress),
) -> Result<u64, StoreError> {
    let entries = rekey_table(
        db,
        (V6_SEARCH_PARAM_VALUE, SEARCH_PARAM_VALUE),
        "search_param_value",
        batch_rows,
        progress,
        |old| {
            let (hash, value, id, version) = v6::decode_entry_key(old)?;
            Some(search_param_value::encode_hashed(hash, &value, &id, version))
        },
        |new| {
            let (hash, value, id, version) = search_param_value::decode(new)?;
            Some(v6::entry_key(hash, &value, &id, version))
        },
    )?;
    let records = rekey_table(
        db,
        (V6_RESOURCE_SEARCH_PARAM_VALUE, RESOURCE_SEARCH_PARAM_VALUE),
        "resource_search_param_value",
        batch_rows,
        progress,
        |old| {
            let (ty, id, version) = v6::decode_record_key(old)?;
            Some(resource_search_param_value::encode(&ty, &id, version))
        },
        |new| {
            let (ty, id, version) = resource_search_param_value::decode(new)?;
            Some(v6::record_key(&ty, &id, version))
        },
    )?;
    let txn = super::begin_write(db)?;
    txn.delete_table(V6_SEARCH_PARAM_VALUE)?;
    txn.delete_table(V6_RESOURCE_SEARCH_PARAM_VALUE)?;
    txn.commit()?;
    Ok(entries + records)
}

/// A table keyed by bytes, with values of type `V`.
type ByteKeyed<V> = TableDefinition<'static, &'static [u8], V>;

/// Copies every row of `tables.0` into `tables.1` under the key `new_key` gives its old key, the
/// value as it is, in batches from where an earlier run stopped (`old_key` reads a new key back;
/// both keep the order). Returns the rows this run copied.
fn rekey_table<V: redb::Value + 'static>(
    db: &Database,
    tables: (ByteKeyed<V>, ByteKeyed<V>),
    unit: &'static str,
    batch_rows: usize,
    progress: &mut dyn FnMut(&MigrationProgress),
    new_key: impl Fn(&[u8]) -> Option<Vec<u8>>,
    old_key: impl Fn(&[u8]) -> Option<Vec<u8>>,
) -> Result<u64, StoreError> {
    let (from, to) = tables;
    let Some(resume) = resume_point(db, from, to, old_key)? else { return Ok(0) };
    in_batches(db, unit, batch_rows, resume, progress, |txn, start| {
        let old = txn.open_table(from)?;
        let mut new = txn.open_table(to)?;
        let (mut count, mut last) = (0, None);
        for row in old.range::<&[u8]>((start, Bound::Unbounded))?.take(batch_rows) {
            let (key, value) = row?;
            let rekeyed = new_key(key.value()).ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
            new.insert(rekeyed.as_slice(), value.value())?;
            last = Some(key.value().to_vec());
            count += 1;
        }
        Ok((count, last))
    })
}

/// Where a table's conversion stands: the table's row count, the key after which the
/// conversion resumes, and how many rows come up to that key (converted by earlier runs).
struct ResumePoint {
    total: u64,
    after: Option<Vec<u8>>,
    done: u64,
}

/// Where converting `from` into `to` starts: `None` if `from` does not exist (nothing to do),
/// otherwise `from`'s row count, the old key of `to`'s last row (`old_key` maps a new key back),
/// after which the conversion resumes, and the rows of `from` up to that key.
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
    // Counting reads keys only; it is a small part of converting them.
    let done = match &after {
        Some(key) => txn.open_table(from)?.range::<&[u8]>(..=key.as_slice())?.count() as u64,
        None => 0,
    };
    Ok(Some(ResumePoint { total, after, done }))
}

/// Runs `batch` (which converts up to `batch_rows` rows from the start bound it is given and
/// returns how many it converted and the last key it read) in one transaction after another
/// until a batch falls short, from `resume`. Progress counts the rows of earlier runs too; the
/// result is the rows this run converted.
fn in_batches(
    db: &Database,
    unit: &'static str,
    batch_rows: usize,
    resume: ResumePoint,
    progress: &mut dyn FnMut(&MigrationProgress),
    mut batch: impl FnMut(&WriteTransaction, Bound<&[u8]>) -> Result<(usize, Option<Vec<u8>>), StoreError>,
) -> Result<u64, StoreError> {
    let ResumePoint { total, mut after, done } = resume;
    let mut migrated = 0;
    loop {
        let txn = super::begin_write(db)?;
        let start = match &after {
            Some(key) => Bound::Excluded(key.as_slice()),
            None => Bound::Unbounded,
        };
        let (count, last) = batch(&txn, start)?;
        txn.commit()?;
        migrated += count as u64;
        progress(&MigrationProgress { unit, migrated: done + migrated, total });
        match last {
            Some(last) if count == batch_rows => after = Some(last),
            _ => return Ok(migrated),
        }
    }
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
        let opened = Store::initialise_with(&db, &SearchIndexer, &mut |_| {}).unwrap();
        let report = opened.migrated.unwrap();
        assert_eq!(report.damaged, vec!["Patient/example/_history/1".to_owned()]);
        assert_eq!((report.bodies_rewritten, report.to_version), (223, super::super::FORMAT_VERSION));
        assert_eq!(format_version(&db).unwrap(), super::super::FORMAT_VERSION);
    }

    #[test]
    fn an_interrupted_migration_reads_correctly_and_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let db = format_3_database(dir.path());
        Store::prepare_file(&db).unwrap();
        let codecs = Arc::new(load_codecs(&db).unwrap());
        let (original, legacy) = bodies(&db, &codecs);
        assert_eq!((original.len(), legacy), (225, 224), "every body but the deletion's is format 3");

        // Two batches of 50, then the process "stops".
        let mut reported = Vec::new();
        let first = compress_bodies(&db, &codecs, 50, Some(2), &mut |p| reported.push(*p)).unwrap();
        assert_eq!((first.versions, first.batches, first.to_version, first.resumed), (100, 2, 3, false));
        assert_eq!(reported.last(), Some(&MigrationProgress { unit: "versions", migrated: 100, total: 225 }));
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
        assert_eq!(reported.first(), Some(&MigrationProgress { unit: "versions", migrated: 150, total: 225 }));
        assert_eq!(format_version(&db).unwrap(), 4);
        let (migrated, legacy) = bodies(&db, &codecs);
        assert_eq!(legacy, 0);
        assert_eq!(migrated, original, "every body is byte for byte what format 3 stored");
        // Migrated bodies carry the hash of their content (the index tables are brought to the
        // current format first, as opening the file does).
        reencode_index_tables(&db, &codecs, &SearchIndexer, &V4_INDEX, BATCH_ROWS, &mut |_| {}).unwrap();
        let report = super::super::check::verify(&db, &SearchIndexer, &codecs).unwrap();
        assert!(!report.problems.iter().any(|p| p.contains("hash") || p.contains("body")), "{:?}", report.problems);
    }
}

#[cfg(test)]
mod index_tests {
    use serde_json::json;

    use super::super::testing::{close, open, runtime};
    use super::*;
    use crate::fhir::Id;
    use crate::search::SearchIndexer;
    use crate::store::{Action, META, Precondition, Target, WriteRequest};

    type Rows = Vec<(Vec<u8>, Vec<u8>)>;

    /// A database with patients, observations pointing at them, updates (superseded entries)
    /// and a deletion; with `reference_on_base`, the first observation names its patient by an
    /// absolute URL on the server's base (indexed as the relative reference it stands for).
    /// Returns the rows of its two index tables.
    fn populated(path: &std::path::Path, reference_on_base: bool) -> (Rows, Rows) {
        let runtime = runtime();
        let store = open(path);
        let put_on = |resource: serde_json::Value, local_base: Option<&str>| {
            let serde_json::Value::Object(resource) = resource else { unreachable!() };
            let resource_type = ResourceType::parse(resource["resourceType"].as_str().unwrap()).unwrap();
            let id = Id::parse(resource["id"].as_str().unwrap()).unwrap();
            let action = Action::Update {
                resource_type,
                target: Target::Id(id),
                resource,
                precondition: Precondition::default(),
            };
            let request = WriteRequest { local_base: local_base.map(str::to_owned), ..WriteRequest::single(action) };
            runtime.block_on(store.write(request)).unwrap();
        };
        let put = |resource: serde_json::Value| put_on(resource, None);
        for n in 0..40 {
            put(json!({"resourceType": "Patient", "id": format!("p{n}"), "name": [{"family": format!("Family{n}")}],
                "birthDate": format!("19{:02}", 40 + n), "identifier": [{"system": "http://mrn", "value": format!("{n}")}]}));
            let (subject, local_base) = match n {
                0 if reference_on_base => ("http://host/fhir/Patient/p0".to_owned(), Some("http://host/fhir")),
                _ => (format!("Patient/p{n}"), None),
            };
            put_on(
                json!({"resourceType": "Observation", "id": format!("o{n}"), "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": {"reference": subject},
                    "effectivePeriod": {"start": "2020-01-01", "end": "2021-06-01"},
                    "valueQuantity": {"value": n, "system": "http://unitsofmeasure.org", "code": "/min"}}),
                local_base,
            );
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
        let db = Database::create(path).unwrap();
        (rows(&db, SEARCH_PARAM_VALUE), rows(&db, RESOURCE_SEARCH_PARAM_VALUE))
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
        drop_current_index_and_mark(txn, version);
    }

    /// Drops the current index tables (their rows were copied to an older form) and marks the
    /// file with format `version`.
    fn drop_current_index_and_mark(txn: redb::WriteTransaction, version: u32) {
        txn.delete_table(SEARCH_PARAM_VALUE).unwrap();
        txn.delete_table(RESOURCE_SEARCH_PARAM_VALUE).unwrap();
        txn.open_table(META).unwrap().insert("format_version", version.to_be_bytes().as_slice()).unwrap();
        txn.commit().unwrap();
    }

    #[test]
    fn a_format_4_file_gets_exactly_the_index_the_current_format_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        let (entries, records) = populated(&path, false);
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

    /// The body alone does not say that `http://host/fhir/Patient/p0` was indexed as
    /// `Patient/p0` (the base is not stored): the rebuilt index keeps the old reference values.
    #[test]
    fn references_indexed_relative_to_the_servers_base_survive_the_rebuild() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        let (entries, records) = populated(&path, true);
        let relative = search_param_value::encode("Observation", "subject", b"Patient/p0", "o0", 1);
        assert!(entries.iter().any(|(key, _)| *key == relative), "the reference was indexed relative");
        downgrade(&path, 4);

        close(open(&path));
        let db = Database::create(&path).unwrap();
        assert_eq!(rows(&db, SEARCH_PARAM_VALUE), entries);
        assert_eq!(rows(&db, RESOURCE_SEARCH_PARAM_VALUE), records);
    }

    #[test]
    fn an_interrupted_reencoding_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        let (entries, records) = populated(&path, false);
        downgrade(&path, 3);
        let db = Database::create(&path).unwrap();
        // Stop after the third batch of each attempt, as a crash between transactions would.
        let mut attempts = 0;
        let mut reported: Vec<u64> = Vec::new();
        loop {
            attempts += 1;
            let mut batches = 0;
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                reencode_index_tables(&db, &Codecs::built_in(), &SearchIndexer, &V4_INDEX, 7, &mut |progress| {
                    reported.push(progress.migrated);
                    assert_eq!(progress.total, 90);
                    batches += 1;
                    assert!(batches < 3, "interrupted");
                })
            }));
            if run.is_ok() {
                break;
            }
            assert!(attempts < 1000, "the conversion makes progress");
        }
        assert!(attempts > 3, "it was interrupted and resumed {attempts} times");
        // Progress counts what earlier runs converted: it only grows (a resumed run may redo
        // the last rows of the batch it stopped in), and ends at every record.
        assert!(reported.windows(2).all(|pair| pair[1] + 7 > pair[0]), "{reported:?}");
        assert_eq!(reported.last(), Some(&90));
        assert_eq!(rows(&db, SEARCH_PARAM_VALUE), entries);
        assert_eq!(rows(&db, RESOURCE_SEARCH_PARAM_VALUE), records);
    }

    /// Rewrites the current index tables as format 5 stored them (each quantity as four values,
    /// one per unit form: `unit key 0x00 number`), and marks the file as format 5.
    fn downgrade_to_5(path: &std::path::Path) {
        // The format 5 values of a format 6 quantity value (`number system 0x00 code 0x00 unit`).
        fn format_5_quantities(value: &[u8]) -> Vec<Vec<u8>> {
            let (number, [system, code, unit]) = crate::search::values::decode_quantity(value).unwrap();
            let system = crate::search::values::decode_system(system).unwrap();
            let system = system.as_bytes();
            let mut unit_keys = vec![Vec::new(), [b"||", code].concat(), [system, b"|", code].concat()];
            if !unit.is_empty() {
                unit_keys.push([b"||", unit].concat());
            }
            unit_keys.into_iter().map(|key| [key.as_slice(), &[0], number].concat()).collect()
        }
        let old_values = |param: &str, value: &[u8]| -> Vec<Vec<u8>> {
            match param {
                "value-quantity" => format_5_quantities(value),
                "code-value-quantity" => {
                    let split = value.windows(2).position(|w| w == [0, 0]).unwrap() + 2;
                    let (head, tail) = value.split_at(split);
                    format_5_quantities(tail).into_iter().map(|tail| [head, &tail].concat()).collect()
                }
                _ => vec![value.to_vec()],
            }
        };
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let entries = txn.open_table(SEARCH_PARAM_VALUE).unwrap();
            let mut old_entries = txn.open_table(V5_SEARCH_PARAM_VALUE).unwrap();
            let records = txn.open_table(RESOURCE_SEARCH_PARAM_VALUE).unwrap();
            let mut old_records = txn.open_table(V5_RESOURCE_SEARCH_PARAM_VALUE).unwrap();
            for row in records.iter().unwrap() {
                let (key, record) = row.unwrap();
                let (ty, id, version) = resource_search_param_value::decode(key.value()).unwrap();
                let keys = SearchIndexer.index_keys(ResourceType::parse(&ty).unwrap());
                let mut pairs: Vec<(String, Vec<u8>)> = Vec::new();
                for (hash, value) in resource_search_param_value::decode_value(record.value()).unwrap() {
                    let name = keys.iter().find(|k| search_param_value::param_hash(&ty, k) == hash).unwrap();
                    let lifetime = entries
                        .get(search_param_value::encode_hashed(hash, value, &id, version).as_slice())
                        .unwrap()
                        .map(|found| found.value());
                    for old in old_values(name, value) {
                        if let Some(lifetime) = lifetime {
                            old_entries.insert(v6::entry_key(hash, &old, &id, version).as_slice(), lifetime).unwrap();
                        }
                        pairs.push((name.clone(), old));
                    }
                }
                let record = resource_search_param_value::encode_value(
                    &ty,
                    pairs.iter().map(|(param, value)| (param.as_str(), value.as_slice())),
                );
                old_records.insert(v6::record_key(&ty, &id, version).as_slice(), record.as_slice()).unwrap();
            }
        }
        drop_current_index_and_mark(txn, 5);
    }

    #[test]
    fn a_format_5_file_gets_one_entry_per_quantity() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        let (entries, records) = populated(&path, true);
        downgrade_to_5(&path);
        {
            let db = Database::create(&path).unwrap();
            let old = rows(&db, V5_SEARCH_PARAM_VALUE);
            // 39 live observations and one deleted, each with a quantity and its composite.
            assert_eq!(old.len(), entries.len() + 40 * 2 * 2, "format 5 had three more values per quantity");
        }

        // Exactly the index format 6 wrote, including the reference indexed relative to the
        // server's base, which the body alone does not tell.
        close(open(&path));
        let db = Database::create(&path).unwrap();
        assert_eq!(rows(&db, SEARCH_PARAM_VALUE), entries);
        assert_eq!(rows(&db, RESOURCE_SEARCH_PARAM_VALUE), records);
        let txn = db.begin_read().unwrap();
        let names: Vec<String> = txn.list_tables().unwrap().map(|t| redb::TableHandle::name(&t).to_owned()).collect();
        assert!(!names.iter().any(|name| name.ends_with(".5")), "the format 5 tables are gone: {names:?}");
        let meta = txn.open_table(META).unwrap();
        assert_eq!(meta.get("format_version").unwrap().unwrap().value(), super::super::FORMAT_VERSION.to_be_bytes());
    }

    /// Rewrites the current index tables with format 6's keys (ids spelled out), values as they
    /// are, and marks the file as format 6.
    fn downgrade_to_6(path: &std::path::Path) {
        let db = Database::create(path).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let entries = txn.open_table(SEARCH_PARAM_VALUE).unwrap();
            let mut old_entries = txn.open_table(V6_SEARCH_PARAM_VALUE).unwrap();
            for row in entries.iter().unwrap() {
                let (key, lifetime) = row.unwrap();
                let (hash, value, id, version) = search_param_value::decode(key.value()).unwrap();
                old_entries.insert(v6::entry_key(hash, &value, &id, version).as_slice(), lifetime.value()).unwrap();
            }
            let records = txn.open_table(RESOURCE_SEARCH_PARAM_VALUE).unwrap();
            let mut old_records = txn.open_table(V6_RESOURCE_SEARCH_PARAM_VALUE).unwrap();
            for row in records.iter().unwrap() {
                let (key, record) = row.unwrap();
                let (ty, id, version) = resource_search_param_value::decode(key.value()).unwrap();
                old_records.insert(v6::record_key(&ty, &id, version).as_slice(), record.value()).unwrap();
            }
        }
        drop_current_index_and_mark(txn, 6);
    }

    #[test]
    fn a_format_6_file_gets_its_index_keys_rewritten_in_the_same_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        let (entries, records) = populated(&path, false);
        downgrade_to_6(&path);
        let (old_entries, old_records) = {
            let db = Database::create(&path).unwrap();
            (rows(&db, V6_SEARCH_PARAM_VALUE), rows(&db, V6_RESOURCE_SEARCH_PARAM_VALUE))
        };
        // The new keys are shorter, and in the old keys' order (rows are listed in key order).
        let old_bytes: usize = old_entries.iter().map(|(key, _)| key.len()).sum();
        let new_bytes: usize = entries.iter().map(|(key, _)| key.len()).sum();
        assert!(new_bytes < old_bytes, "{new_bytes} bytes of keys, {old_bytes} before");
        let decoded_old: Vec<_> = old_entries.iter().map(|(key, _)| v6::decode_entry_key(key).unwrap()).collect();
        let decoded_new: Vec<_> = entries.iter().map(|(key, _)| search_param_value::decode(key).unwrap()).collect();
        assert_eq!(decoded_old, decoded_new);
        assert_eq!(old_records.len(), records.len());

        let store = open(&path);
        let report = store.verify(&SearchIndexer).unwrap();
        assert!(report.is_consistent(), "{:?}", report.problems);
        close(store);
        let db = Database::create(&path).unwrap();
        assert_eq!(rows(&db, SEARCH_PARAM_VALUE), entries);
        assert_eq!(rows(&db, RESOURCE_SEARCH_PARAM_VALUE), records);
        let txn = db.begin_read().unwrap();
        let names: Vec<String> = txn.list_tables().unwrap().map(|t| redb::TableHandle::name(&t).to_owned()).collect();
        assert!(!names.iter().any(|name| name.ends_with(".6")), "the format 6 tables are gone: {names:?}");
        let meta = txn.open_table(META).unwrap();
        assert_eq!(meta.get("format_version").unwrap().unwrap().value(), 7u32.to_be_bytes());
    }

    #[test]
    fn an_interrupted_rekeying_resumes_where_it_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.redb");
        let (entries, records) = populated(&path, false);
        downgrade_to_6(&path);
        let db = Database::create(&path).unwrap();
        let total_rows = (entries.len() + records.len()) as u64;
        let mut attempts = 0;
        let mut converted = 0;
        loop {
            attempts += 1;
            let mut batches = 0;
            let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                rekey_index_tables(&db, 50, &mut |_| {
                    batches += 1;
                    assert!(batches < 3, "interrupted");
                })
            }));
            if let Ok(rows) = run {
                converted += rows.unwrap();
                break;
            }
            assert!(attempts < 1000, "the conversion makes progress");
        }
        assert!(attempts > 3, "it was interrupted and resumed {attempts} times");
        assert!(converted < total_rows, "the last run converted only what was left: {converted} of {total_rows}");
        assert_eq!(rows(&db, SEARCH_PARAM_VALUE), entries);
        assert_eq!(rows(&db, RESOURCE_SEARCH_PARAM_VALUE), records);
    }
}
