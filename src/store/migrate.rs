//! Migrations of older database files to the current format, run inside the transaction that
//! opens the file (so a migration is all-or-nothing, and an interrupted one reruns at the next
//! open).

use redb::{ReadableTable, WriteTransaction};

use super::keys::{resource_version, superseded};
use super::{Op, RESOURCE_VERSION, SUPERSEDED, StoreError};

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
