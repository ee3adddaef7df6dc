//! Migrations of older database files to the current format, run inside the transaction that
//! opens the file (so a migration is all-or-nothing, and an interrupted one reruns at the next
//! open).

use redb::{ReadableTable, WriteTransaction};

use super::keys::{resource_search_param_value, resource_version, search_param_value, superseded};
use super::{Indexer, Op, RESOURCE_SEARCH_PARAM_VALUE, RESOURCE_VERSION, SEARCH_PARAM_VALUE, SUPERSEDED, StoreError};
use crate::fhir::ResourceType;

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
