//! Reading the search indexes, the same way from a published snapshot and from inside the
//! writer's transaction (where conditional operations are evaluated atomically).

use std::ops::{Bound, ControlFlow};

use redb::ReadableTable;

use super::keys::search_param_value::Lifetime;
use super::keys::{
    prefix_end, put_str, resource_search_param_value as rspv, resource_version, search_param_value as spv,
};
use super::{Op, StoreError};
use crate::fhir::{FhirError, ResourceType};

/// The logical time meaning "the newest state": every entry not yet superseded is live.
pub const LATEST: u64 = u64::MAX - 1;

/// One live entry found by [`IndexView::scan_index`].
pub struct IndexHit<'a> {
    /// The whole storage key: a cursor can resume right after it.
    pub key: &'a [u8],
    pub value: Vec<u8>,
    pub id: String,
    pub version: u64,
}

/// The index reads the search engine needs.
pub trait IndexView {
    /// Visits, in key order, the entries of `param` for `resource_type` whose raw value `v`
    /// satisfies `lo <= v < hi` (`hi` `None`: no upper bound) and whose version was current at
    /// logical time `t`, starting after the storage key `after` if given. `visit` may stop the
    /// scan by returning `Break`.
    #[allow(clippy::too_many_arguments)]
    fn scan_index(
        &self,
        resource_type: ResourceType,
        param: &str,
        lo: &[u8],
        hi: Option<&[u8]>,
        after: Option<&[u8]>,
        t: u64,
        visit: &mut dyn FnMut(IndexHit<'_>) -> ControlFlow<()>,
    ) -> Result<(), FhirError>;

    /// The index values of `param` that version `version` of a resource has.
    fn probe(
        &self,
        resource_type: ResourceType,
        id: &str,
        version: u64,
        param: &str,
    ) -> Result<Vec<Vec<u8>>, FhirError>;

    /// Like [`IndexView::scan_type`], in descending id order, starting before id `before`.
    fn scan_type_rev(
        &self,
        resource_type: ResourceType,
        before: Option<&str>,
        t: u64,
        visit: &mut dyn FnMut(&str, u64) -> ControlFlow<()>,
    ) -> Result<(), FhirError>;

    /// Like [`IndexView::scan_index`], in descending key order, starting before the storage
    /// key `before` if given (for `previous` pages).
    #[allow(clippy::too_many_arguments)]
    fn scan_index_rev(
        &self,
        resource_type: ResourceType,
        param: &str,
        lo: &[u8],
        hi: Option<&[u8]>,
        before: Option<&[u8]>,
        t: u64,
        visit: &mut dyn FnMut(IndexHit<'_>) -> ControlFlow<()>,
    ) -> Result<(), FhirError>;

    /// The number of live entries (at `t`) of `param` with raw value in `[lo, hi)`, counted
    /// without decoding keys.
    fn count_index(
        &self,
        resource_type: ResourceType,
        param: &str,
        lo: &[u8],
        hi: Option<&[u8]>,
        t: u64,
    ) -> Result<usize, FhirError>;

    /// Whether version `version` of a resource has exactly `value` for `param`, live at `t`:
    /// one point lookup, which for a popular value touches pages every such query shares.
    #[allow(clippy::too_many_arguments)]
    fn has_value(
        &self,
        resource_type: ResourceType,
        param: &str,
        value: &[u8],
        id: &str,
        version: u64,
        t: u64,
    ) -> Result<bool, FhirError>;

    /// Visits, in id order, every resource of `resource_type` that existed (not deleted) at
    /// logical time `t`, with the version current then, starting after id `after`.
    fn scan_type(
        &self,
        resource_type: ResourceType,
        after: Option<&str>,
        t: u64,
        visit: &mut dyn FnMut(&str, u64) -> ControlFlow<()>,
    ) -> Result<(), FhirError>;
}

/// The storage keys `[start, end)` holding the entries of `param` with raw values in
/// `[lo, hi)`.
fn index_bounds(resource_type: ResourceType, param: &str, lo: &[u8], hi: Option<&[u8]>) -> (Vec<u8>, Vec<u8>) {
    let ty = resource_type.as_str();
    let start = spv::value_bound(ty, param, lo);
    let end = match hi {
        Some(hi) => spv::value_bound(ty, param, hi),
        None => prefix_end(&spv::param_prefix(ty, param)),
    };
    (start, end)
}

/// Passes the entries live at `t` to `visit`, decoded, until it breaks.
fn visit_live<'a>(
    entries: impl Iterator<
        Item = Result<(redb::AccessGuard<'a, &'static [u8]>, redb::AccessGuard<'a, Lifetime>), redb::StorageError>,
    >,
    t: u64,
    visit: &mut dyn FnMut(IndexHit<'_>) -> ControlFlow<()>,
) -> Result<(), FhirError> {
    for entry in entries {
        let (key, live) = entry.map_err(StoreError::from)?;
        let (created, superseded) = live.value();
        if created > t || superseded <= t {
            continue;
        }
        let key = key.value();
        let (_, value, id, version) = spv::decode(key).ok_or_else(|| StoreError::Corrupt(key.to_vec()))?;
        if visit(IndexHit { key, value, id, version }).is_break() {
            break;
        }
    }
    Ok(())
}

/// The tables an [`IndexView`] reads, whether read-only (a snapshot's) or inside a write
/// transaction (the writer's).
pub struct IndexTables<'a, V, S, R>
where
    V: ReadableTable<&'static [u8], &'static [u8]>,
    S: ReadableTable<&'static [u8], Lifetime>,
    R: ReadableTable<&'static [u8], &'static [u8]>,
{
    pub(super) versions: &'a V,
    pub(super) spv: &'a S,
    pub(super) rspv: &'a R,
}

/// The index view of a published [`super::Snapshot`].
pub type SnapshotIndex<'a> = IndexTables<
    'a,
    redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
    redb::ReadOnlyTable<&'static [u8], Lifetime>,
    redb::ReadOnlyTable<&'static [u8], &'static [u8]>,
>;

impl<V, S, R> IndexView for IndexTables<'_, V, S, R>
where
    V: ReadableTable<&'static [u8], &'static [u8]>,
    S: ReadableTable<&'static [u8], Lifetime>,
    R: ReadableTable<&'static [u8], &'static [u8]>,
{
    fn scan_index(
        &self,
        resource_type: ResourceType,
        param: &str,
        lo: &[u8],
        hi: Option<&[u8]>,
        after: Option<&[u8]>,
        t: u64,
        visit: &mut dyn FnMut(IndexHit<'_>) -> ControlFlow<()>,
    ) -> Result<(), FhirError> {
        let (start, end) = index_bounds(resource_type, param, lo, hi);
        if start >= end {
            return Ok(());
        }
        let lower = match after {
            Some(after) if after >= start.as_slice() => Bound::Excluded(after),
            _ => Bound::Included(start.as_slice()),
        };
        let range = self.spv.range::<&[u8]>((lower, Bound::Excluded(end.as_slice()))).map_err(StoreError::from)?;
        visit_live(range, t, visit)
    }

    fn scan_type_rev(
        &self,
        resource_type: ResourceType,
        before: Option<&str>,
        t: u64,
        visit: &mut dyn FnMut(&str, u64) -> ControlFlow<()>,
    ) -> Result<(), FhirError> {
        let ty = resource_type.as_str();
        let mut type_prefix = Vec::new();
        put_str(&mut type_prefix, ty.as_bytes());
        let end = match before {
            Some(id) => resource_version::prefix(ty, id),
            None => prefix_end(&type_prefix),
        };
        // Versions arrive newest first per id: the first one at or before `t` decides.
        let mut decided_id: Option<String> = None;
        for entry in self.versions.range(type_prefix.as_slice()..end.as_slice()).map_err(StoreError::from)?.rev() {
            let (key, value) = entry.map_err(StoreError::from)?;
            let (_, id, version) =
                resource_version::decode(key.value()).ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
            if decided_id.as_deref() == Some(id.as_str()) {
                continue;
            }
            let (header, _) = resource_version::decode_value(value.value())
                .ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
            if header.t > t {
                continue;
            }
            decided_id = Some(id.clone());
            if header.op != Op::Delete && visit(&id, version).is_break() {
                return Ok(());
            }
        }
        Ok(())
    }

    fn scan_index_rev(
        &self,
        resource_type: ResourceType,
        param: &str,
        lo: &[u8],
        hi: Option<&[u8]>,
        before: Option<&[u8]>,
        t: u64,
        visit: &mut dyn FnMut(IndexHit<'_>) -> ControlFlow<()>,
    ) -> Result<(), FhirError> {
        let (start, end) = index_bounds(resource_type, param, lo, hi);
        if start >= end {
            return Ok(());
        }
        let upper = match before {
            Some(before) if before < end.as_slice() => Bound::Excluded(before),
            _ => Bound::Excluded(end.as_slice()),
        };
        let range = self.spv.range::<&[u8]>((Bound::Included(start.as_slice()), upper)).map_err(StoreError::from)?;
        visit_live(range.rev(), t, visit)
    }

    fn count_index(
        &self,
        resource_type: ResourceType,
        param: &str,
        lo: &[u8],
        hi: Option<&[u8]>,
        t: u64,
    ) -> Result<usize, FhirError> {
        let (start, end) = index_bounds(resource_type, param, lo, hi);
        if start >= end {
            return Ok(0);
        }
        let mut count = 0;
        for entry in self.spv.range(start.as_slice()..end.as_slice()).map_err(StoreError::from)? {
            let (_, live) = entry.map_err(StoreError::from)?;
            let (created, superseded) = live.value();
            if created <= t && t < superseded {
                count += 1;
            }
        }
        Ok(count)
    }

    fn has_value(
        &self,
        resource_type: ResourceType,
        param: &str,
        value: &[u8],
        id: &str,
        version: u64,
        t: u64,
    ) -> Result<bool, FhirError> {
        let key = spv::encode(resource_type.as_str(), param, value, id, version);
        Ok(self.spv.get(key.as_slice()).map_err(StoreError::from)?.is_some_and(|live| {
            let (created, superseded) = live.value();
            created <= t && t < superseded
        }))
    }

    fn probe(
        &self,
        resource_type: ResourceType,
        id: &str,
        version: u64,
        param: &str,
    ) -> Result<Vec<Vec<u8>>, FhirError> {
        let key = rspv::encode(resource_type.as_str(), id, version);
        let Some(record) = self.rspv.get(key.as_slice()).map_err(StoreError::from)? else { return Ok(Vec::new()) };
        let entries = rspv::decode_value(record.value()).ok_or_else(|| StoreError::Corrupt(key.clone()))?;
        Ok(rspv::values_of(&entries, resource_type.as_str(), param).into_iter().map(<[u8]>::to_vec).collect())
    }

    fn scan_type(
        &self,
        resource_type: ResourceType,
        after: Option<&str>,
        t: u64,
        visit: &mut dyn FnMut(&str, u64) -> ControlFlow<()>,
    ) -> Result<(), FhirError> {
        let ty = resource_type.as_str();
        let mut type_prefix = Vec::new();
        put_str(&mut type_prefix, ty.as_bytes());
        let start = match after {
            Some(id) => prefix_end(&resource_version::prefix(ty, id)),
            None => type_prefix.clone(),
        };
        let end = prefix_end(&type_prefix);
        // The newest version at or before `t` of the id being read: (id, version, deleted).
        let mut pending: Option<(String, u64, bool)> = None;
        let mut current_id = String::new();
        for entry in self.versions.range(start.as_slice()..end.as_slice()).map_err(StoreError::from)? {
            let (key, value) = entry.map_err(StoreError::from)?;
            let (_, id, version) =
                resource_version::decode(key.value()).ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
            let (header, _) = resource_version::decode_value(value.value())
                .ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
            if id != current_id {
                if let Some((done_id, done_version, deleted)) = pending.take() {
                    if !deleted && visit(&done_id, done_version).is_break() {
                        return Ok(());
                    }
                }
                current_id = id.clone();
            }
            if header.t <= t {
                pending = Some((id, version, header.op == Op::Delete));
            }
        }
        if let Some((id, version, deleted)) = pending {
            if !deleted {
                let _ = visit(&id, version);
            }
        }
        Ok(())
    }
}
