//! `search_param_value`: which resource versions have a given value for a search parameter.
//!
//! Key: `param-hash(4 bytes) value 0x00 id 0x00 version`, where the hash is FNV-1a (32 bit)
//! of `type 0x00 param` (see [`param_hash`]) and the version is written short (see
//! [`super::put_version`]: 2 bytes below version 256). Value: `(created_t, superseded_t)`.
//! This is the table a query *scans*: the Patients whose `identifier` is `http://x|123` are
//! found under the prefix `hash(Patient·identifier)·http://x|123·`. Keys of one type and
//! parameter are contiguous and ordered by value, then id, then version; the 4-byte hash
//! instead of the spelled-out type and parameter keeps every key about 20 bytes shorter. The
//! registry checks at start that no two keys it can produce share a hash.
//!
//! Entries are written for every version and never removed, so the table answers "which
//! resources matched as of logical time t" for any t a reader holds (stable paging). The value
//! says when the entry's version became current and when a newer version or a deletion
//! replaced it (`u64::MAX` while current): a reader at time `t` keeps the entries with
//! `created_t <= t < superseded_t`, without looking anything else up.

use super::{Reader, put_str, put_version};

/// FNV-1a (32 bit) of `resource_type 0x00 param`. Part of the file format: never change it.
pub fn param_hash(resource_type: &str, param: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in resource_type.bytes().chain(std::iter::once(0)).chain(param.bytes()) {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash
}

/// The prefix of every entry of one parameter of one type.
pub fn param_prefix(resource_type: &str, param: &str) -> Vec<u8> {
    param_hash(resource_type, param).to_be_bytes().to_vec()
}

/// The first key whose value is `>= value` (byte order of the raw values is preserved).
pub fn value_bound(resource_type: &str, param: &str, value: &[u8]) -> Vec<u8> {
    let mut key = param_prefix(resource_type, param);
    super::put_str_open(&mut key, value);
    key
}

pub fn prefix(resource_type: &str, param: &str, value: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(value.len() + 60);
    key.extend_from_slice(&param_hash(resource_type, param).to_be_bytes());
    put_str(&mut key, value);
    key
}

pub fn encode(resource_type: &str, param: &str, value: &[u8], id: &str, version: u64) -> Vec<u8> {
    encode_hashed(param_hash(resource_type, param), value, id, version)
}

/// [`encode`] for a parameter known by its hash (as the index records store it).
pub fn encode_hashed(param_hash: u32, value: &[u8], id: &str, version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(value.len() + id.len() + 16);
    key.extend_from_slice(&param_hash.to_be_bytes());
    put_str(&mut key, value);
    put_str(&mut key, id.as_bytes());
    put_version(&mut key, version);
    key
}

/// `(param hash, value, id, version)`
pub fn decode(key: &[u8]) -> Option<(u32, Vec<u8>, String, u64)> {
    let (hash, rest) = key.split_first_chunk::<4>()?;
    let mut reader = Reader::new(rest);
    let decoded = (u32::from_be_bytes(*hash), reader.str()?, reader.string()?, reader.version()?);
    reader.is_empty().then_some(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keys_round_trip(
            ty in "[A-Z][a-z]{1,10}",
            p in "[a-z-]{1,10}",
            v in proptest::collection::vec(any::<u8>(), 0..20),
            id in "[A-Za-z0-9.-]{1,64}",
            version in any::<u64>(),
        ) {
            let decoded = decode(&encode(&ty, &p, &v, &id, version));
            prop_assert_eq!(decoded, Some((param_hash(&ty, &p), v, id, version)));
        }

        #[test]
        fn within_a_parameter_byte_order_is_value_id_version(
            a in (proptest::collection::vec(any::<u8>(), 0..6), "[a-z0-9]{1,4}", any::<u64>()),
            b in (proptest::collection::vec(any::<u8>(), 0..6), "[a-z0-9]{1,4}", any::<u64>()),
        ) {
            let (ka, kb) = (encode("Patient", "name", &a.0, &a.1, a.2), encode("Patient", "name", &b.0, &b.1, b.2));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }

        #[test]
        fn value_bounds_order_like_values(
            a in proptest::collection::vec(any::<u8>(), 0..8),
            b in proptest::collection::vec(any::<u8>(), 0..8),
            id in "[a-z0-9]{1,4}",
        ) {
            // A key for value `a` is at or after the bound for `b` exactly when a >= b.
            let key = encode("Observation", "code", &a, &id, 1);
            let bound = value_bound("Observation", "code", &b);
            prop_assert_eq!(key >= bound, a >= b);
        }
    }

    #[test]
    fn a_value_is_not_a_prefix_match_for_a_longer_value() {
        let key = encode("Patient", "identifier", b"12", "p", 1);
        assert!(key.starts_with(&prefix("Patient", "identifier", b"12")));
        assert!(!key.starts_with(&prefix("Patient", "identifier", b"1")));
        assert_ne!(param_hash("Patient", "name"), param_hash("Patient", "given"));
        // FNV-1a of "Patient\0identifier": the hash is part of the file format.
        assert_eq!(param_hash("Patient", "identifier"), 0x6305f739);
    }
}
