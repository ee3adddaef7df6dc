//! `resource_search_param_value`: the index values of one resource version.
//!
//! Key: `type 0x00 id 0x00 version(u64 BE) param 0x00 value 0x00`; no value. This is the table
//! a query *probes* ("does version v of resource X have value V for parameter P?") and reads
//! for sorting ("which values does it have for P?").

use super::{Reader, put_str, put_u64};

pub fn version_prefix(resource_type: &str, id: &str, version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(resource_type.len() + id.len() + 10);
    put_str(&mut key, resource_type.as_bytes());
    put_str(&mut key, id.as_bytes());
    put_u64(&mut key, version);
    key
}

pub fn param_prefix(resource_type: &str, id: &str, version: u64, param: &str) -> Vec<u8> {
    let mut key = version_prefix(resource_type, id, version);
    put_str(&mut key, param.as_bytes());
    key
}

pub fn encode(resource_type: &str, id: &str, version: u64, param: &str, value: &[u8]) -> Vec<u8> {
    let mut key = param_prefix(resource_type, id, version, param);
    put_str(&mut key, value);
    key
}

/// `(type, id, version, param, value)`
pub fn decode(key: &[u8]) -> Option<(String, String, u64, String, Vec<u8>)> {
    let mut reader = Reader::new(key);
    let decoded = (reader.string()?, reader.string()?, reader.u64()?, reader.string()?, reader.str()?);
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
            id in "[A-Za-z0-9.-]{1,64}",
            version in any::<u64>(),
            p in "[a-z-]{1,10}",
            v in proptest::collection::vec(any::<u8>(), 0..20),
        ) {
            prop_assert_eq!(decode(&encode(&ty, &id, version, &p, &v)), Some((ty, id, version, p, v)));
        }

        #[test]
        fn byte_order_is_type_id_version_param_value(
            a in ("[A-Z][a-z]{0,2}", "[a-z0-9]{1,4}", any::<u64>(), "[a-z]{1,3}", proptest::collection::vec(any::<u8>(), 0..6)),
            b in ("[A-Z][a-z]{0,2}", "[a-z0-9]{1,4}", any::<u64>(), "[a-z]{1,3}", proptest::collection::vec(any::<u8>(), 0..6)),
        ) {
            let (ka, kb) = (encode(&a.0, &a.1, a.2, &a.3, &a.4), encode(&b.0, &b.1, b.2, &b.3, &b.4));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }
    }
}
