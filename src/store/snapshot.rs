//! Consistent reads of committed state.

use redb::{Database, ReadOnlyTable, ReadableDatabase, ReadableTable};

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
    spv: ReadOnlyTable<&'static [u8], (u64, u64)>,
    rspv: ReadOnlyTable<&'static [u8], &'static [u8]>,
    /// The logical time of the newest version this snapshot contains.
    t: u64,
}

impl Snapshot {
    pub(super) fn open(db: &Database) -> Result<Self, StoreError> {
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
        let table = &self.versions;
        let prefix = resource_version::prefix(resource_type.as_str(), id);
        let end = prefix_end(&prefix);
        let newest = table.range(prefix.as_slice()..end.as_slice()).map_err(StoreError::from)?.next_back();
        match newest {
            None => Ok(None),
            Some(entry) => {
                let (key, value) = entry.map_err(StoreError::from)?;
                Ok(Some(decode_version(key.value(), value.value())?))
            }
        }
    }

    /// The version of a resource that was current at logical time `t`, unless it was deleted
    /// then (or did not exist yet).
    pub fn version_at(&self, resource_type: ResourceType, id: &str, t: u64) -> Result<Option<Version>, FhirError> {
        let prefix = resource_version::prefix(resource_type.as_str(), id);
        let end = prefix_end(&prefix);
        for entry in self.versions.range(prefix.as_slice()..end.as_slice()).map_err(StoreError::from)?.rev() {
            let (key, value) = entry.map_err(StoreError::from)?;
            let version = decode_version(key.value(), value.value())?;
            if version.header.t <= t {
                return Ok((!version.is_deleted()).then_some(version));
            }
        }
        Ok(None)
    }

    /// One specific version.
    pub fn version(&self, resource_type: ResourceType, id: &str, version: u64) -> Result<Option<Version>, FhirError> {
        let table = &self.versions;
        let key = resource_version::encode(resource_type.as_str(), id, version);
        match table.get(key.as_slice()).map_err(StoreError::from)? {
            None => Ok(None),
            Some(value) => Ok(Some(decode_version(&key, value.value())?)),
        }
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
        for entry in range.rev() {
            let (key, value) = entry.map_err(StoreError::from)?;
            let version = decode_version(key.value(), value.value())?;
            if query.since_micros.is_some_and(|since| version.header.last_updated_micros < since) {
                return Ok(HistoryPage { entries, next_below: None });
            }
            if entries.len() == query.count {
                let next = entries.last().map(|v: &Version| v.version);
                return Ok(HistoryPage { entries, next_below: next });
            }
            entries.push(version);
        }
        Ok(HistoryPage { entries, next_below: None })
    }

    pub fn type_history(&self, resource_type: ResourceType, query: HistoryQuery) -> Result<HistoryPage, FhirError> {
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

    pub fn system_history(&self, query: HistoryQuery) -> Result<HistoryPage, FhirError> {
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

    /// Collects one page from history keys `(t, type, id, version)` given newest first.
    fn history_page(
        &self,
        keys: impl Iterator<Item = Result<(u64, String, String, u64), StoreError>>,
        query: HistoryQuery,
    ) -> Result<HistoryPage, FhirError> {
        let versions = &self.versions;
        let mut entries = Vec::new();
        let mut last_t = None;
        for key in keys {
            let (t, resource_type, id, version) = key?;
            if entries.len() == query.count {
                return Ok(HistoryPage { entries, next_below: last_t });
            }
            let record_key = resource_version::encode(&resource_type, &id, version);
            let value = versions
                .get(record_key.as_slice())
                .map_err(StoreError::from)?
                .ok_or_else(|| StoreError::Corrupt(record_key.clone()))?;
            let entry = decode_version(&record_key, value.value())?;
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

fn decode_version(key: &[u8], value: &[u8]) -> Result<Version, StoreError> {
    let (resource_type, id, version) =
        resource_version::decode(key).ok_or_else(|| StoreError::Corrupt(key.to_vec()))?;
    let (header, body) = resource_version::decode_value(value).ok_or_else(|| StoreError::Corrupt(key.to_vec()))?;
    Ok(Version { resource_type, id, version, header, body: body.to_vec() })
}
