//! Consistent reads of committed state.

use std::sync::Arc;

use redb::{Database, ReadOnlyTable, ReadableDatabase, ReadableTable};

use super::codec::{Codecs, StoredBody};
use super::keys::search_param_value::Lifetime;
use super::keys::{prefix_end, resource_version, system_history, type_history};
use super::view::{IndexTables, SnapshotIndex};
use super::{
    Header, Op, RESOURCE_SEARCH_PARAM_VALUE, RESOURCE_VERSION, SEARCH_PARAM_VALUE, SYSTEM_HISTORY, StoreError,
    TYPE_HISTORY,
};
use crate::fhir::{FhirError, ResourceType};

/// One stored version of a resource.
#[derive(Debug, Clone)]
pub struct Version {
    pub resource_type: String,
    pub id: String,
    pub version: u64,
    pub header: Header,
    /// The stored JSON; empty for a deletion.
    pub body: Vec<u8>,
}

impl Version {
    pub fn is_deleted(&self) -> bool {
        self.header.op == Op::Delete
    }
}

/// What [`Snapshot::export_type`] calls with each resource: its id, version, and a function
/// that decodes its body (called only for the resources the visitor keeps: decoding is the
/// costly part, and a filtered export keeps few).
pub type ExportVisit<'a> = dyn FnMut(&str, u64, &mut dyn FnMut() -> Result<Vec<u8>, FhirError>) -> Result<std::ops::ControlFlow<()>, FhirError>
    + 'a;

/// Which page of a history to read.
#[derive(Debug, Clone, Copy)]
pub struct HistoryQuery {
    /// Only versions written at or after this time (microseconds since the epoch).
    pub since_micros: Option<i64>,
    /// Page size.
    pub count: usize,
    /// Exclusive upper bound of the page: a logical time `t` for type and system history, a
    /// version number for instance history. `None` starts at the newest entry.
    pub below: Option<u64>,
    /// `_at`: only versions that were current at some moment of `[from, to)` (microseconds):
    /// written before `to`, and not yet replaced by a newer version at `from`.
    pub at: Option<(i64, i64)>,
    /// With `at`, the most entries one page examines: versions replaced before `from` can be
    /// arbitrarily many, so a page that reaches this ends early with a `next_below`.
    pub max_scan: usize,
}

/// Newest first.
#[derive(Debug)]
pub struct HistoryPage {
    pub entries: Vec<Version>,
    /// The `below` value that continues with the next (older) page, if there is one.
    pub next_below: Option<u64>,
}

/// A committed state of the database: every method sees the same state.
///
/// The writer opens one after each commit, with its tables already open, and publishes it; a
/// request takes the latest one (an `Arc` clone) instead of opening a read transaction of its
/// own. Holding a snapshot pins the pages it sees, so requests drop theirs when they finish.
pub struct Snapshot {
    versions: ReadOnlyTable<&'static [u8], &'static [u8]>,
    type_history: ReadOnlyTable<&'static [u8], ()>,
    system_history: ReadOnlyTable<&'static [u8], ()>,
    spv: ReadOnlyTable<&'static [u8], Lifetime>,
    rspv: ReadOnlyTable<&'static [u8], &'static [u8]>,
    /// The logical time of the newest version this snapshot contains.
    t: u64,
    /// Decodes stored bodies (the database's dictionaries, prepared once).
    codecs: Arc<Codecs>,
}

impl Snapshot {
    pub(super) fn open(db: &Database, codecs: &Arc<Codecs>) -> Result<Self, StoreError> {
        let txn = db.begin_read()?;
        let system_history = txn.open_table(SYSTEM_HISTORY)?;
        let t = match system_history.last()? {
            None => 0,
            Some((key, _)) => system_history::decode(key.value()).map_or(0, |k| k.0),
        };
        Ok(Snapshot {
            versions: txn.open_table(RESOURCE_VERSION)?,
            type_history: txn.open_table(TYPE_HISTORY)?,
            system_history,
            spv: txn.open_table(SEARCH_PARAM_VALUE)?,
            rspv: txn.open_table(RESOURCE_SEARCH_PARAM_VALUE)?,
            t,
            codecs: codecs.clone(),
        })
    }

    /// The search indexes as of this snapshot (pass a logical time to read an older state).
    pub fn index(&self) -> SnapshotIndex<'_> {
        IndexTables { versions: &self.versions, spv: &self.spv, rspv: &self.rspv }
    }

    /// The logical time of the newest version in this snapshot. A search that continues on a
    /// later snapshot passes the first page's `t` to see exactly what that page saw.
    pub fn t(&self) -> u64 {
        self.t
    }

    /// The newest version of a resource (possibly a deletion), if it ever existed.
    pub fn current(&self, resource_type: ResourceType, id: &str) -> Result<Option<Version>, FhirError> {
        match self.versions_of(resource_type, id)?.next_back() {
            None => Ok(None),
            Some(entry) => {
                let (key, value) = entry.map_err(unreadable(resource_type, id))?;
                Ok(Some(self.decode_version(key.value(), value.value())?))
            }
        }
    }

    /// Every stored version of one resource, oldest first (the newest is `next_back`).
    fn versions_of(
        &self,
        resource_type: ResourceType,
        id: &str,
    ) -> Result<redb::Range<'_, &'static [u8], &'static [u8]>, FhirError> {
        let prefix = resource_version::prefix(resource_type.as_str(), id);
        let end = prefix_end(&prefix);
        Ok(self.versions.range(prefix.as_slice()..end.as_slice()).map_err(unreadable(resource_type, id))?)
    }

    /// Whether a resource exists now (its newest version is not a deletion), read from the
    /// version's header alone: its body is neither decompressed nor cached.
    pub fn is_live(&self, resource_type: ResourceType, id: &str) -> Result<bool, FhirError> {
        let Some(entry) = self.versions_of(resource_type, id)?.next_back() else { return Ok(false) };
        let (key, value) = entry.map_err(StoreError::from)?;
        let (header, _) =
            resource_version::decode_value(value.value()).ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
        Ok(header.op != Op::Delete)
    }

    /// The version of a resource that was current at logical time `t`, unless it was deleted
    /// then (or did not exist yet).
    pub fn version_at(&self, resource_type: ResourceType, id: &str, t: u64) -> Result<Option<Version>, FhirError> {
        for entry in self.versions_of(resource_type, id)?.rev() {
            let (key, value) = entry.map_err(unreadable(resource_type, id))?;
            // Only the chosen version's body is decoded.
            let (header, _) = resource_version::decode_value(value.value())
                .ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
            if header.t <= t {
                if header.op == Op::Delete {
                    return Ok(None);
                }
                return Ok(Some(self.decode_version(key.value(), value.value())?));
            }
        }
        Ok(None)
    }

    /// One specific version.
    pub fn version(&self, resource_type: ResourceType, id: &str, version: u64) -> Result<Option<Version>, FhirError> {
        let table = &self.versions;
        let key = resource_version::encode(resource_type.as_str(), id, version);
        match table.get(key.as_slice()).map_err(unreadable(resource_type, id))? {
            None => Ok(None),
            Some(value) => Ok(Some(self.decode_version(&key, value.value())?)),
        }
    }

    /// The `meta.lastUpdated` (microseconds) of the newest version in this snapshot, if any.
    /// Every version committed after the snapshot has one at least as late (the writer's clock
    /// never goes backwards).
    pub fn newest_last_updated(&self) -> Result<Option<i64>, FhirError> {
        let last = self.system_history.last().map_err(StoreError::from)?;
        let Some((key, _)) = last else { return Ok(None) };
        let corrupt = || StoreError::Corrupt(key.value().to_vec());
        let (_, resource_type, id, version) = system_history::decode(key.value()).ok_or_else(corrupt)?;
        // Every entry of the system history names a stored version.
        Ok(Some(self.written(&resource_type, &id, version)?.ok_or_else(corrupt)?))
    }

    /// The logical time of the newest committed version (0 for an empty database).
    pub fn newest_t(&self) -> Result<u64, FhirError> {
        let table = &self.system_history;
        let last = table.last().map_err(StoreError::from)?;
        Ok(match last {
            None => 0,
            Some((key, _)) => system_history::decode(key.value()).map(|k| k.0).unwrap_or(0),
        })
    }

    pub fn instance_history(
        &self,
        resource_type: ResourceType,
        id: &str,
        query: HistoryQuery,
    ) -> Result<HistoryPage, FhirError> {
        let table = &self.versions;
        let prefix = resource_version::prefix(resource_type.as_str(), id);
        let end = match query.below {
            Some(below) => resource_version::encode(resource_type.as_str(), id, below),
            None => prefix_end(&prefix),
        };
        let range = table.range(prefix.as_slice()..end.as_slice()).map_err(StoreError::from)?;
        let mut entries = Vec::new();
        let mut examined = 0;
        // The version examined before this one is this one's successor (newest first).
        let mut successor_written: Option<i64> = None;
        for entry in range.rev() {
            let (key, value) = entry.map_err(StoreError::from)?;
            let version = self.decode_version(key.value(), value.value())?;
            if query.since_micros.is_some_and(|since| version.header.last_updated_micros < since) {
                return Ok(HistoryPage { entries, next_below: None });
            }
            if entries.len() == query.count {
                let next = entries.last().map(|v: &Version| v.version);
                return Ok(HistoryPage { entries, next_below: next });
            }
            if let Some((from, to)) = query.at {
                if examined == query.max_scan {
                    return Ok(HistoryPage { entries, next_below: Some(version.version + 1) });
                }
                examined += 1;
                let successor = match (successor_written, query.below) {
                    (Some(written), _) => Some(written),
                    // The first version of a later page: its successor is on an earlier page.
                    (None, Some(_)) => self.written(&version.resource_type, &version.id, version.version + 1)?,
                    (None, None) => None,
                };
                successor_written = Some(version.header.last_updated_micros);
                if !current_during(version.header.last_updated_micros, successor, from, to) {
                    // Older versions were replaced even earlier: none can qualify.
                    if successor.is_some_and(|written| written <= from) {
                        return Ok(HistoryPage { entries, next_below: None });
                    }
                    continue;
                }
            }
            entries.push(version);
        }
        Ok(HistoryPage { entries, next_below: None })
    }

    /// When `version` of a resource was written, if it exists.
    fn written(&self, resource_type: &str, id: &str, version: u64) -> Result<Option<i64>, StoreError> {
        let key = resource_version::encode(resource_type, id, version);
        match self.versions.get(key.as_slice())? {
            None => Ok(None),
            Some(value) => {
                let (header, _) =
                    resource_version::decode_value(value.value()).ok_or_else(|| StoreError::Corrupt(key.clone()))?;
                Ok(Some(header.last_updated_micros))
            }
        }
    }

    /// The smallest logical time whose version was written at or after `micros`, if any: the
    /// exclusive upper bound of a history that must end before `micros`. A binary search over
    /// `t` (lastUpdated never decreases with `t`), at most 64 probes.
    fn first_t_written_from(&self, micros: i64) -> Result<Option<u64>, FhirError> {
        // The first history entry at or after logical time `t`, with when it was written.
        let probe = |t: u64| -> Result<Option<(u64, i64)>, FhirError> {
            let start = system_history::at(t);
            let Some(entry) = self.system_history.range(start.as_slice()..).map_err(StoreError::from)?.next() else {
                return Ok(None);
            };
            let (key, _) = entry.map_err(StoreError::from)?;
            let (t, resource_type, id, version) =
                system_history::decode(key.value()).ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
            let written =
                self.written(&resource_type, &id, version)?.ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
            Ok(Some((t, written)))
        };
        let (mut lo, mut hi) = (0u64, self.t);
        match probe(hi)? {
            Some((_, written)) if written >= micros => {}
            _ => return Ok(None),
        }
        // Invariant: the entry found by probe(hi) was written at or after `micros`, and every
        // entry before logical time `lo` was written before it.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match probe(mid)? {
                Some((_, written)) if written >= micros => hi = mid,
                Some((t, _)) => lo = t + 1,
                None => break,
            }
        }
        Ok(probe(hi)?.map(|(t, _)| t))
    }

    /// The versions of `resource_type` committed after logical time `after`, oldest first, at
    /// most `max`: `(t, id, version)`. Read as a change feed (a consumer keeps the last `t` it
    /// processed), type history is durable and ordered by commit, and never rewritten.
    pub fn changes_after(
        &self,
        resource_type: ResourceType,
        after: u64,
        max: usize,
    ) -> Result<Vec<(u64, String, u64)>, FhirError> {
        let Some(start_t) = after.checked_add(1) else { return Ok(Vec::new()) };
        let start = type_history::at(resource_type.as_str(), start_t);
        let end = prefix_end(&type_history::prefix(resource_type.as_str()));
        let range = self.type_history.range(start.as_slice()..end.as_slice()).map_err(StoreError::from)?;
        let mut changes = Vec::new();
        for entry in range.take(max) {
            let (key, _) = entry.map_err(StoreError::from)?;
            let (_, t, id, version) =
                type_history::decode(key.value()).ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
            changes.push((t, id, version));
        }
        Ok(changes)
    }

    pub fn type_history(&self, resource_type: ResourceType, mut query: HistoryQuery) -> Result<HistoryPage, FhirError> {
        self.bound_by_at(&mut query)?;
        let table = &self.type_history;
        let start = type_history::prefix(resource_type.as_str());
        let end = match query.below {
            Some(below) => type_history::at(resource_type.as_str(), below),
            None => prefix_end(&start),
        };
        let range = table.range(start.as_slice()..end.as_slice()).map_err(StoreError::from)?;
        let keys = range.rev().map(|entry| {
            let (key, _) = entry.map_err(StoreError::from)?;
            let (ty, t, id, version) =
                type_history::decode(key.value()).ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
            Ok((t, ty, id, version))
        });
        self.history_page(keys, query)
    }

    pub fn system_history(&self, mut query: HistoryQuery) -> Result<HistoryPage, FhirError> {
        self.bound_by_at(&mut query)?;
        let table = &self.system_history;
        let end = system_history::at(query.below.unwrap_or(u64::MAX));
        let range = table.range(..end.as_slice()).map_err(StoreError::from)?;
        let keys = range.rev().map(|entry| {
            let (key, _) = entry.map_err(StoreError::from)?;
            let (t, ty, id, version) =
                system_history::decode(key.value()).ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
            Ok((t, ty, id, version))
        });
        self.history_page(keys, query)
    }

    /// On the first page of an `_at` history, skips (by binary search, not by scanning) every
    /// entry written at or after the period's end.
    fn bound_by_at(&self, query: &mut HistoryQuery) -> Result<(), FhirError> {
        if let (Some((_, to)), None) = (query.at, query.below) {
            query.below = self.first_t_written_from(to)?;
        }
        Ok(())
    }

    /// Collects one page from history keys `(t, type, id, version)` given newest first.
    fn history_page(
        &self,
        keys: impl Iterator<Item = Result<(u64, String, String, u64), StoreError>>,
        query: HistoryQuery,
    ) -> Result<HistoryPage, FhirError> {
        let versions = &self.versions;
        let mut entries = Vec::new();
        let mut last_t = None;
        let mut examined = 0;
        for key in keys {
            let (t, resource_type, id, version) = key?;
            if entries.len() == query.count {
                return Ok(HistoryPage { entries, next_below: last_t });
            }
            if let Some((from, to)) = query.at {
                if examined == query.max_scan {
                    return Ok(HistoryPage { entries, next_below: Some(t + 1) });
                }
                examined += 1;
                let written = self
                    .written(&resource_type, &id, version)?
                    .ok_or_else(|| StoreError::Corrupt(id.clone().into_bytes()))?;
                if query.since_micros.is_some_and(|since| written < since) {
                    return Ok(HistoryPage { entries, next_below: None });
                }
                let successor = self.written(&resource_type, &id, version + 1)?;
                if !current_during(written, successor, from, to) {
                    continue;
                }
            }
            let record_key = resource_version::encode(&resource_type, &id, version);
            let value = versions
                .get(record_key.as_slice())
                .map_err(StoreError::from)?
                .ok_or_else(|| StoreError::Corrupt(record_key.clone()))?;
            let entry = self.decode_version(&record_key, value.value())?;
            // lastUpdated never decreases with t (the writer keeps its clock monotonic), so the
            // first entry older than `_since` ends the history.
            if query.since_micros.is_some_and(|since| entry.header.last_updated_micros < since) {
                return Ok(HistoryPage { entries, next_below: None });
            }
            entries.push(entry);
            last_t = Some(t);
        }
        Ok(HistoryPage { entries, next_below: None })
    }
}

impl Snapshot {
    /// Visits, in id order, the current version of every live resource of `resource_type` in
    /// this snapshot last updated after `since_micros` (all of them without it): its id,
    /// version and body, decoded when asked for. One pass over the type's versions; bodies are
    /// decoded one at a time and bypass the body cache (an export would only evict what readers use), so memory
    /// stays flat whatever the number of resources. `visit` stops the scan with `Break`.
    pub fn export_type(
        &self,
        resource_type: ResourceType,
        since_micros: Option<i64>,
        visit: &mut ExportVisit<'_>,
    ) -> Result<(), FhirError> {
        let mut type_prefix = Vec::new();
        super::keys::put_str(&mut type_prefix, resource_type.as_str().as_bytes());
        let end = prefix_end(&type_prefix);
        // The newest version seen of the id being read, as its stored key and value.
        type Guard<'a> = redb::AccessGuard<'a, &'static [u8]>;
        let mut pending: Option<(Guard<'_>, Guard<'_>)> = None;
        let mut emit = |key: &[u8], value: &[u8]| -> Result<std::ops::ControlFlow<()>, FhirError> {
            let (header, stored) =
                resource_version::decode_value(value).ok_or_else(|| StoreError::Corrupt(key.to_vec()))?;
            if header.op == Op::Delete || since_micros.is_some_and(|since| header.last_updated_micros <= since) {
                return Ok(std::ops::ControlFlow::Continue(()));
            }
            let (_, id, version) = resource_version::decode(key).ok_or_else(|| StoreError::Corrupt(key.to_vec()))?;
            let mut body = || -> Result<Vec<u8>, FhirError> {
                let stored = StoredBody::parse(stored).map_err(|reason| super::migrate::corrupt_body(key, &reason))?;
                Ok(self.codecs.decode(stored).map_err(|reason| super::migrate::corrupt_body(key, &reason))?)
            };
            visit(&id, version, &mut body)
        };
        for entry in self.versions.range(type_prefix.as_slice()..end.as_slice()).map_err(StoreError::from)? {
            let (key, value) = entry.map_err(StoreError::from)?;
            // Keys are `type·id·version`: the id part is what precedes the last 8 bytes.
            let same_id = pending.as_ref().is_some_and(|(previous, _)| {
                let (a, b) = (previous.value(), key.value());
                a.len() == b.len() && a[..a.len() - 8] == b[..b.len() - 8]
            });
            if !same_id {
                if let Some((previous_key, previous_value)) = pending.take() {
                    if emit(previous_key.value(), previous_value.value())?.is_break() {
                        return Ok(());
                    }
                }
            }
            pending = Some((key, value));
        }
        if let Some((key, value)) = pending {
            let _ = emit(key.value(), value.value())?;
        }
        Ok(())
    }

    /// A stored version with its body decoded; a body that cannot be decoded is an error naming
    /// the version, never returned as data.
    fn decode_version(&self, key: &[u8], value: &[u8]) -> Result<Version, StoreError> {
        let (resource_type, id, version) =
            resource_version::decode(key).ok_or_else(|| StoreError::Corrupt(key.to_vec()))?;
        let (header, stored) =
            resource_version::decode_value(value).ok_or_else(|| StoreError::Corrupt(key.to_vec()))?;
        let body = match self.codecs.body_cache.get(key) {
            Some(body) => body,
            None => {
                let stored = StoredBody::parse(stored).map_err(|reason| super::migrate::corrupt_body(key, &reason))?;
                let compressed = matches!(stored, StoredBody::Zstd { .. });
                let body = self.codecs.decode(stored).map_err(|reason| super::migrate::corrupt_body(key, &reason))?;
                if compressed {
                    self.codecs.body_cache.insert(key, &body);
                }
                body
            }
        };
        Ok(Version { resource_type, id, version, header, body })
    }
}

/// Whether a version written at `written`, and replaced at `successor` (`None`: still current),
/// was current at some moment of `[from, to)`.
fn current_during(written: i64, successor: Option<i64>, from: i64, to: i64) -> bool {
    written < to && successor.is_none_or(|replaced| replaced > from)
}

/// A storage failure while reading `resource_type/id`, naming it (the operator restores that
/// resource; the client is told which one failed, never anything of its content).
fn unreadable(resource_type: ResourceType, id: &str) -> impl Fn(redb::StorageError) -> StoreError + '_ {
    move |source| StoreError::Unreadable { resource: format!("{}/{id}", resource_type.as_str()), source }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::{Action, Precondition, Target, WriteOp, WriteRequest, testing};
    use crate::fhir::{Id, ResourceType};

    fn op(action: Action) -> WriteRequest {
        WriteRequest { ops: vec![WriteOp { full_url: None, action }], ..WriteRequest::default() }
    }

    /// Liveness from the header alone agrees with the full version: absent, written, deleted.
    #[test]
    fn is_live_tells_a_current_resource_from_an_absent_or_deleted_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = testing::open(&dir.path().join("db"));
        let id = Id::parse("p1").unwrap();
        let live =
            |store: &super::super::Store| store.snapshot().unwrap().is_live(ResourceType::PATIENT, "p1").unwrap();
        assert!(!live(&store));
        let Value::Object(patient) = json!({"resourceType": "Patient", "id": "p1"}) else { unreachable!() };
        testing::runtime().block_on(async {
            let update = Action::Update {
                resource_type: ResourceType::PATIENT,
                target: Target::Id(id.clone()),
                resource: patient,
                precondition: Precondition::default(),
            };
            store.write(op(update)).await.unwrap();
            assert!(live(&store));
            let delete = Action::Delete {
                resource_type: ResourceType::PATIENT,
                target: Target::Id(id),
                precondition: Precondition::default(),
            };
            store.write(op(delete)).await.unwrap();
        });
        assert!(!live(&store));
        assert!(store.snapshot().unwrap().current(ResourceType::PATIENT, "p1").unwrap().unwrap().is_deleted());
    }
}
