//! Consistency check of the search indexes against the stored versions: what a crash or power
//! loss test asserts after recovery, and what an operator can run on a suspect file.
//!
//! The invariants (see docs/storage.md):
//! - the current version of every live resource has a `resource_search_param_value` record
//!   holding exactly the entries the indexer derives from its stored body, and each of those
//!   entries is in `search_param_value`, live (`superseded_t == u64::MAX`) and created at the
//!   version's `t`;
//! - every other entry in `search_param_value` is superseded (no stray live entries), and every
//!   superseded version whose entries are still present is in the `superseded` log.
//!
//! Limitation: a reference written as an absolute URL on the base the write arrived at is
//! indexed as the relative `Type/id` it stands for, and that base is not stored with the
//! version; the check derives entries from the body alone, so such a version is reported as
//! differing from its index record.

use std::collections::BTreeSet;

use redb::{Database, ReadableDatabase, ReadableTable};

use super::codec::{Codecs, StoredBody, content_hash};
use super::keys::{resource_search_param_value as rspv, resource_version, search_param_value as spv, superseded};
use super::{Indexer, Op, RESOURCE_SEARCH_PARAM_VALUE, RESOURCE_VERSION, SEARCH_PARAM_VALUE, SUPERSEDED, StoreError};
use crate::fhir::ResourceType;

/// What the check found: problems, at most [`MAX_PROBLEMS`] of them described.
#[derive(Debug, Default)]
pub struct Report {
    pub resources: u64,
    pub live_entries: u64,
    pub problems: Vec<String>,
}

impl Report {
    pub fn is_consistent(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, text: String) {
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(text);
        }
    }
}

struct StoredVersion {
    ty: String,
    id: String,
    version: u64,
    op: Op,
    t: u64,
    /// The decoded body of the newest version (empty for older ones and for a body that cannot
    /// be decoded, which is reported).
    body: Vec<u8>,
    /// The content hash kept with the body, if any.
    hash: Option<super::codec::ContentHash>,
}

/// The name of the parameter whose hash an index record holds (records keep only the hash),
/// looked up among `known` parameters of type `ty`; the hash itself if none matches.
fn param_named(known: &BTreeSet<String>, ty: &str, hash: u32) -> String {
    known
        .iter()
        .find(|param| spv::param_hash(ty, param) == hash)
        .cloned()
        .unwrap_or_else(|| format!("parameter-hash {hash:08x}"))
}

/// Problem descriptions kept; further ones are dropped (the check still reads everything).
pub const MAX_PROBLEMS: usize = 100;

/// Reads the whole database once (one read transaction); memory stays bounded by one
/// resource's versions at a time. Every stored body must decode (a damaged one is reported by
/// version), and the newest version's content hash must match its body.
pub fn verify(db: &Database, indexer: &dyn Indexer, codecs: &Codecs) -> Result<Report, StoreError> {
    let txn = db.begin_read()?;
    let versions = txn.open_table(RESOURCE_VERSION)?;
    let spv_table = txn.open_table(SEARCH_PARAM_VALUE)?;
    let rspv_table = txn.open_table(RESOURCE_SEARCH_PARAM_VALUE)?;
    let log = txn.open_table(SUPERSEDED)?;
    let mut report = Report::default();
    let mut expected_live = 0u64;

    // Versions are ordered by type, id, version: `group` holds one resource's versions.
    let mut group: Vec<StoredVersion> = Vec::new();
    let mut check_group = |group: &mut Vec<StoredVersion>, report: &mut Report| -> Result<(), StoreError> {
        let Some(StoredVersion { ty, id, version, op, t, body, hash }) = group.pop() else { return Ok(()) };
        report.resources += 1;
        // Names for the parameter hashes of older versions' records, in problem descriptions.
        let mut known_params = BTreeSet::new();
        if op != Op::Delete && !body.is_empty() {
            let resource_type = ResourceType::parse(&ty).ok_or_else(|| StoreError::Corrupt(ty.as_bytes().to_vec()))?;
            let value: serde_json::Value = match serde_json::from_slice(&body) {
                Ok(value @ serde_json::Value::Object(_)) => value,
                _ => {
                    report.problem(format!("{ty}/{id}/_history/{version}: its stored body is not a JSON object"));
                    group.clear();
                    return Ok(());
                }
            };
            if let (Some(hash), serde_json::Value::Object(resource)) = (hash, &value) {
                if content_hash(resource) != hash {
                    report.problem(format!("{ty}/{id}/_history/{version}: its content hash does not match its body"));
                }
            }
            let expected: BTreeSet<(String, Vec<u8>)> =
                indexer.entries(resource_type, &value).into_iter().map(|e| (e.param, e.value)).collect();
            expected_live += expected.len() as u64;
            known_params.extend(expected.iter().map(|(param, _)| param.clone()));
            let expected_record: BTreeSet<(u32, Vec<u8>)> =
                expected.iter().map(|(p, v)| (spv::param_hash(&ty, p), v.clone())).collect();
            let record = rspv_table.get(rspv::encode(&ty, &id, version).as_slice())?;
            let recorded: Option<BTreeSet<(u32, Vec<u8>)>> = record.as_ref().and_then(|r| {
                rspv::decode_value(r.value()).map(|e| e.into_iter().map(|(p, v)| (p, v.to_vec())).collect())
            });
            if recorded.as_ref() != Some(&expected_record) {
                report.problem(format!("{ty}/{id}/_history/{version}: its index record differs from its body"));
            }
            for (param, value) in &expected {
                match spv_table.get(spv::encode(&ty, param, value, &id, version).as_slice())? {
                    Some(live) if live.value() == (t, u64::MAX) => {}
                    Some(live) => report.problem(format!(
                        "{ty}/{id}/_history/{version}: the {param} entry is marked {:?}, expected live from t={t}",
                        live.value()
                    )),
                    None => report.problem(format!("{ty}/{id}/_history/{version}: the {param} entry is missing")),
                }
            }
        }
        // Earlier versions: entries still present must be superseded and logged for collection.
        for StoredVersion { ty, id, version, .. } in group.iter().filter(|v| v.op != Op::Delete) {
            let Some(record) = rspv_table.get(rspv::encode(ty, id, *version).as_slice())? else { continue };
            let entries = rspv::decode_value(record.value()).unwrap_or_default();
            for (hash, value) in entries {
                if let Some(live) = spv_table.get(spv::encode_hashed(hash, value, id, *version).as_slice())? {
                    if live.value().1 == u64::MAX {
                        let param = param_named(&known_params, ty, hash);
                        report
                            .problem(format!("{ty}/{id}/_history/{version}: superseded but its {param} entry is live"));
                    } else {
                        let logged =
                            log.get(superseded::encode(live.value().1, ty, id, *version).as_slice())?.is_some();
                        if !logged {
                            report.problem(format!(
                                "{ty}/{id}/_history/{version}: superseded entries not in the collection log"
                            ));
                        }
                    }
                }
            }
        }
        group.clear();
        Ok(())
    };
    for entry in versions.iter()? {
        let (key, value) = entry?;
        let (ty, id, version) =
            resource_version::decode(key.value()).ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
        let (header, stored) =
            resource_version::decode_value(value.value()).ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
        match group.last_mut() {
            Some(last) if last.ty != ty || last.id != id => check_group(&mut group, &mut report)?,
            // Only the newest version's body is kept (every body is decoded once, below).
            Some(last) => last.body = Vec::new(),
            None => {}
        }
        let parsed = StoredBody::parse(stored);
        let hash = parsed.as_ref().ok().and_then(StoredBody::hash);
        let body = match parsed.and_then(|stored| codecs.decode(stored)) {
            Ok(body) => body,
            Err(reason) => {
                report.problem(format!("{ty}/{id}/_history/{version}: its stored body cannot be read: {reason}"));
                Vec::new()
            }
        };
        group.push(StoredVersion { ty, id, version, op: header.op, t: header.t, body, hash });
    }
    check_group(&mut group, &mut report)?;

    for entry in spv_table.iter()? {
        let (_, live) = entry?;
        if live.value().1 == u64::MAX {
            report.live_entries += 1;
        }
    }
    if report.live_entries != expected_live {
        report.problem(format!(
            "{} live index entries, but the current versions account for {expected_live}",
            report.live_entries
        ));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use serde_json::json;

    use super::*;
    use crate::fhir::Id;
    use crate::search::SearchIndexer;
    use crate::store::{Action, Precondition, Store, StoreOptions, Target, WriteRequest};

    #[test]
    fn a_missing_or_stray_index_entry_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions { gc_interval: Duration::ZERO, ..StoreOptions::default() };
        let store = Store::open(&dir.path().join("check.redb"), options, Arc::new(SearchIndexer)).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        for family in ["One", "Two"] {
            let serde_json::Value::Object(resource) =
                json!({"resourceType": "Patient", "id": "p1", "name": [{"family": family}]})
            else {
                unreachable!()
            };
            let action = Action::Update {
                resource_type: ResourceType::PATIENT,
                target: Target::Id(Id::parse("p1").unwrap()),
                resource,
                precondition: Precondition::default(),
            };
            runtime.block_on(store.write(WriteRequest::single(action))).unwrap();
        }
        let clean = store.verify(&SearchIndexer).unwrap();
        assert!(clean.is_consistent(), "{:?}", clean.problems);
        assert!(clean.live_entries > 0);

        // Remove one live entry of the current version, and revive one of the superseded one.
        let txn = store.db.begin_write().unwrap();
        {
            let mut table = txn.open_table(SEARCH_PARAM_VALUE).unwrap();
            let family = |v: &str| spv::encode("Patient", "family", v.as_bytes(), "p1", if v == "one" { 1 } else { 2 });
            table.remove(family("two").as_slice()).unwrap();
            table.insert(family("one").as_slice(), (1, u64::MAX)).unwrap();
        }
        txn.commit().unwrap();
        let report = store.verify(&SearchIndexer).unwrap();
        let text = report.problems.join("\n");
        assert!(text.contains("Patient/p1/_history/2: the family entry is missing"), "{text}");
        assert!(text.contains("Patient/p1/_history/1: superseded but its family entry is live"), "{text}");
    }
}
