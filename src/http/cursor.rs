//! Paging cursors: opaque, tamper-evident tokens that expire.
//!
//! A cursor is `issued (8 bytes, seconds since the epoch) · payload · MAC (16 bytes)`,
//! base64url-encoded, where the MAC is HMAC-SHA256 over the issue time, the payload (a
//! position) and the scope it belongs to (the path and the parameters that define the result
//! set), keyed with the database's cursor secret. A client can neither forge a position nor
//! reuse a cursor with other parameters, and a cursor older than the configured lifetime is
//! refused with 410 Gone: index entries that only old cursors need are garbage-collected.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::fhir::{Category, FhirError, IssueCode};
use crate::store::CursorKey;

const MAC_LEN: usize = 16;
const ISSUED_LEN: usize = 8;

pub fn encode(key: &CursorKey, scope: &str, position: u64) -> String {
    encode_bytes(key, scope, &position.to_be_bytes())
}

pub fn decode(key: &CursorKey, scope: &str, token: &str) -> Result<u64, FhirError> {
    let payload = decode_bytes(key, scope, token)?;
    let bytes: [u8; 8] = payload.try_into().map_err(|_| {
        FhirError::incorrect(IssueCode::Invalid, "the paging cursor is invalid or belongs to another query")
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Like [`encode`], for an arbitrary payload (a search position).
pub fn encode_bytes(key: &CursorKey, scope: &str, payload: &[u8]) -> String {
    encode_issued(key, scope, payload, now_secs())
}

fn encode_issued(key: &CursorKey, scope: &str, payload: &[u8], issued: u64) -> String {
    let mut token = issued.to_be_bytes().to_vec();
    token.extend_from_slice(payload);
    let mac = mac_bytes(key.secret(), scope, &token);
    token.extend_from_slice(&mac[..MAC_LEN]);
    URL_SAFE_NO_PAD.encode(token)
}

/// The payload of a cursor made by [`encode_bytes`] for `scope`: 400 if it was not made by
/// this database for this scope, 410 if it has expired.
pub fn decode_bytes(key: &CursorKey, scope: &str, token: &str) -> Result<Vec<u8>, FhirError> {
    let invalid =
        || FhirError::incorrect(IssueCode::Invalid, "the paging cursor is invalid or belongs to another query");
    let bytes = URL_SAFE_NO_PAD.decode(token.as_bytes()).map_err(|_| invalid())?;
    if bytes.len() < ISSUED_LEN + MAC_LEN {
        return Err(invalid());
    }
    let (signed, tag) = bytes.split_at(bytes.len() - MAC_LEN);
    let expected = mac_bytes(key.secret(), scope, signed);
    let difference = expected[..MAC_LEN].iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if difference != 0 {
        return Err(invalid());
    }
    let (issued, payload) = signed.split_at(ISSUED_LEN);
    let issued = u64::from_be_bytes(issued.try_into().map_err(|_| invalid())?);
    if now_secs().saturating_sub(issued) > key.ttl().as_secs() {
        return Err(expired(key));
    }
    Ok(payload.to_vec())
}

/// Refuses a cursor whose search runs as of logical time `t` if the index entries it needs may
/// have been garbage-collected (possible only for a cursor about to expire anyway).
pub fn check_readable(key: &CursorKey, t: u64) -> Result<(), FhirError> {
    if key.can_read_at(t) { Ok(()) } else { Err(expired(key)) }
}

fn expired(key: &CursorKey) -> FhirError {
    FhirError::new(
        Category::Gone,
        IssueCode::Processing,
        format!(
            "the paging cursor has expired (cursors are valid for {} s); run the search again",
            key.ttl().as_secs()
        ),
    )
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// HMAC-SHA256 (RFC 2104) of `scope · 0x00 · payload`.
fn mac_bytes(secret: &[u8; 32], scope: &str, payload: &[u8]) -> [u8; 32] {
    let mut inner_key = [0x36u8; 64];
    let mut outer_key = [0x5cu8; 64];
    for (index, byte) in secret.iter().enumerate() {
        inner_key[index] ^= byte;
        outer_key[index] ^= byte;
    }
    let inner = Sha256::new()
        .chain_update(inner_key)
        .chain_update(scope.as_bytes())
        .chain_update([0])
        .chain_update(payload)
        .finalize();
    Sha256::new().chain_update(outer_key).chain_update(inner).finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    #[test]
    fn cursors_round_trip_and_resist_tampering() {
        let key = CursorKey::new([7u8; 32], Duration::from_secs(60));
        let token = encode(&key, "/Patient/_history", 42);
        assert_eq!(decode(&key, "/Patient/_history", &token).unwrap(), 42);
        assert!(decode(&key, "/Observation/_history", &token).is_err());
        assert!(decode(&CursorKey::new([8u8; 32], Duration::from_secs(60)), "/Patient/_history", &token).is_err());
        for byte in [0, 7, 15] {
            // The issue time, the position and the MAC are all covered.
            let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
            bytes[byte] ^= 1;
            let error = decode(&key, "/Patient/_history", &URL_SAFE_NO_PAD.encode(bytes)).unwrap_err();
            assert_eq!(error.status(), 400);
        }
        assert!(decode(&key, "/Patient/_history", "not-a-cursor").is_err());
    }

    #[test]
    fn cursors_expire_after_their_lifetime() {
        let key = CursorKey::new([7u8; 32], Duration::from_secs(60));
        let fresh = encode_issued(&key, "s", &[1, 2], now_secs() - 59);
        assert_eq!(decode_bytes(&key, "s", &fresh).unwrap(), vec![1, 2]);
        let stale = encode_issued(&key, "s", &[1, 2], now_secs() - 61);
        let error = decode_bytes(&key, "s", &stale).unwrap_err();
        assert_eq!(error.status(), 410);
        assert!(error.to_operation_outcome()["issue"][0]["diagnostics"].as_str().unwrap().contains("expired"));
    }
}
