//! `search_param_value`: which resource versions have a given value for a search parameter.
//!
//! Key: `type 0x00 param 0x00 value 0x00 id 0x00 version(u64 BE)`; no value. This is the table
//! a query *scans*: the Patients whose `identifier` is `http://x|123` are found under the prefix
//! `Patient·identifier·http://x|123·`.
//!
//! Entries are written for every version and never removed, so the table answers "which
//! resources matched as of logical time t" for any t a reader holds (stable paging). The value,
//! `(created_t, superseded_t)`, says when the entry's version became current and when a newer
//! version or a deletion replaced it (`u64::MAX` while current): a reader at time `t` keeps the
//! entries with `created_t <= t < superseded_t`, without looking anything else up.
//!
//! Values are the normalised index values produced by the indexer (for tokens: `code`,
//! `system|code`, `system|` and, without a system, `|code`).

use super::{Reader, put_str, put_u64};

/// The prefix of every entry of one parameter of one type.
pub fn param_prefix(resource_type: &str, param: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(resource_type.len() + param.len() + 2);
    put_str(&mut key, resource_type.as_bytes());
    put_str(&mut key, param.as_bytes());
    key
}

/// The first key whose value is `>= value` (byte order of the raw values is preserved).
pub fn value_bound(resource_type: &str, param: &str, value: &[u8]) -> Vec<u8> {
    let mut key = param_prefix(resource_type, param);
    super::put_str_open(&mut key, value);
    key
}

pub fn prefix(resource_type: &str, param: &str, value: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(resource_type.len() + param.len() + value.len() + 3);
    put_str(&mut key, resource_type.as_bytes());
    put_str(&mut key, param.as_bytes());
    put_str(&mut key, value);
    key
}

pub fn encode(resource_type: &str, param: &str, value: &[u8], id: &str, version: u64) -> Vec<u8> {
    let mut key = prefix(resource_type, param, value);
    put_str(&mut key, id.as_bytes());
    put_u64(&mut key, version);
    key
}

/// `(type, param, value, id, version)`
pub fn decode(key: &[u8]) -> Option<(String, String, Vec<u8>, String, u64)> {
    let mut reader = Reader::new(key);
    let decoded = (reader.string()?, reader.string()?, reader.str()?, reader.string()?, reader.u64()?);
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
            prop_assert_eq!(decoded, Some((ty, p, v, id, version)));
        }

        #[test]
        fn byte_order_is_type_param_value_id_version(
            a in ("[A-Z][a-z]{0,2}", "[a-z]{1,3}", proptest::collection::vec(any::<u8>(), 0..6), "[a-z0-9]{1,4}", any::<u64>()),
            b in ("[A-Z][a-z]{0,2}", "[a-z]{1,3}", proptest::collection::vec(any::<u8>(), 0..6), "[a-z0-9]{1,4}", any::<u64>()),
        ) {
            let (ka, kb) = (encode(&a.0, &a.1, &a.2, &a.3, a.4), encode(&b.0, &b.1, &b.2, &b.3, b.4));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }
    }

    #[test]
    fn a_value_is_not_a_prefix_match_for_a_longer_value() {
        let key = encode("Patient", "identifier", b"12", "p", 1);
        assert!(key.starts_with(&prefix("Patient", "identifier", b"12")));
        assert!(!key.starts_with(&prefix("Patient", "identifier", b"1")));
    }
}
