//! Paging cursors: opaque, tamper-evident tokens.
//!
//! A cursor is `position (8 bytes) · MAC (16 bytes)`, base64url-encoded, where the MAC is
//! HMAC-SHA256 over the position and the scope it belongs to (the path and the parameters that
//! define the result set), keyed with the database's cursor secret. A client can neither forge
//! a position nor reuse a cursor with other parameters.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::fhir::{FhirError, IssueCode};

const MAC_LEN: usize = 16;

pub fn encode(secret: &[u8; 32], scope: &str, position: u64) -> String {
    encode_bytes(secret, scope, &position.to_be_bytes())
}

pub fn decode(secret: &[u8; 32], scope: &str, token: &str) -> Result<u64, FhirError> {
    let payload = decode_bytes(secret, scope, token)?;
    let bytes: [u8; 8] = payload.try_into().map_err(|_| {
        FhirError::incorrect(IssueCode::Invalid, "the paging cursor is invalid or belongs to another query")
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// Like [`encode`], for an arbitrary payload (a search position).
pub fn encode_bytes(secret: &[u8; 32], scope: &str, payload: &[u8]) -> String {
    let mut token = payload.to_vec();
    token.extend_from_slice(&mac_bytes(secret, scope, payload)[..MAC_LEN]);
    URL_SAFE_NO_PAD.encode(token)
}

pub fn decode_bytes(secret: &[u8; 32], scope: &str, token: &str) -> Result<Vec<u8>, FhirError> {
    let invalid =
        || FhirError::incorrect(IssueCode::Invalid, "the paging cursor is invalid or belongs to another query");
    let bytes = URL_SAFE_NO_PAD.decode(token.as_bytes()).map_err(|_| invalid())?;
    if bytes.len() < MAC_LEN {
        return Err(invalid());
    }
    let (payload, tag) = bytes.split_at(bytes.len() - MAC_LEN);
    let expected = mac_bytes(secret, scope, payload);
    let difference = expected[..MAC_LEN].iter().zip(tag).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if difference != 0 {
        return Err(invalid());
    }
    Ok(payload.to_vec())
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

    #[test]
    fn cursors_round_trip_and_resist_tampering() {
        let secret = [7u8; 32];
        let token = encode(&secret, "/Patient/_history", 42);
        assert_eq!(decode(&secret, "/Patient/_history", &token).unwrap(), 42);
        assert!(decode(&secret, "/Observation/_history", &token).is_err());
        assert!(decode(&[8u8; 32], "/Patient/_history", &token).is_err());
        let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
        bytes[7] ^= 1;
        assert!(decode(&secret, "/Patient/_history", &URL_SAFE_NO_PAD.encode(bytes)).is_err());
        assert!(decode(&secret, "/Patient/_history", "not-a-cursor").is_err());
    }
}
