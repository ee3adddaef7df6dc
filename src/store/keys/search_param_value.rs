//! `search_param_value`: which current resources have a given value for a search parameter.
//!
//! Key: `type 0x00 param 0x00 value 0x00 id 0x00`; no value. This is the table a query
//! *scans*: all resources of a type whose `identifier` is `http://x|123` are the keys with
//! prefix `Patient·identifier·http://x|123·`. Only current (non-deleted) versions are indexed;
//! the writer removes a resource's entries when it is updated or deleted.
//!
//! Values are the normalised index values produced by the indexer (for tokens: `code`,
//! `system|code`, `system|` and, without a system, `|code`).

use super::{Reader, put_str};

pub fn prefix(resource_type: &str, param: &str, value: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(resource_type.len() + param.len() + value.len() + 3);
    put_str(&mut key, resource_type.as_bytes());
    put_str(&mut key, param.as_bytes());
    put_str(&mut key, value);
    key
}

pub fn encode(resource_type: &str, param: &str, value: &[u8], id: &str) -> Vec<u8> {
    let mut key = prefix(resource_type, param, value);
    put_str(&mut key, id.as_bytes());
    key
}

/// `(type, param, value, id)`
pub fn decode(key: &[u8]) -> Option<(String, String, Vec<u8>, String)> {
    let mut reader = Reader::new(key);
    let decoded = (reader.string()?, reader.string()?, reader.str()?, reader.string()?);
    reader.is_empty().then_some(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keys_round_trip(ty in "[A-Z][a-z]{1,10}", p in "[a-z-]{1,10}", v in proptest::collection::vec(any::<u8>(), 0..20), id in "[A-Za-z0-9.-]{1,64}") {
            let decoded = decode(&encode(&ty, &p, &v, &id));
            prop_assert_eq!(decoded, Some((ty, p, v, id)));
        }

        #[test]
        fn byte_order_is_type_param_value_id(
            a in ("[A-Z][a-z]{0,2}", "[a-z]{1,3}", proptest::collection::vec(any::<u8>(), 0..6), "[a-z0-9]{1,4}"),
            b in ("[A-Z][a-z]{0,2}", "[a-z]{1,3}", proptest::collection::vec(any::<u8>(), 0..6), "[a-z0-9]{1,4}"),
        ) {
            let (ka, kb) = (encode(&a.0, &a.1, &a.2, &a.3), encode(&b.0, &b.1, &b.2, &b.3));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }
    }
}
