//! `type_history`: every version of every resource of one type, in commit order.
//!
//! Key: `type 0x00 t(u64 BE) id 0x00 version(u64 BE)`; no value. Type-level history is the
//! prefix scan `type·` read backwards from the newest `t`.

use super::{Reader, put_str, put_u64};

pub fn prefix(resource_type: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(resource_type.len() + 1);
    put_str(&mut key, resource_type.as_bytes());
    key
}

/// The first key of `resource_type` at or after logical time `t`.
pub fn at(resource_type: &str, t: u64) -> Vec<u8> {
    let mut key = prefix(resource_type);
    put_u64(&mut key, t);
    key
}

pub fn encode(resource_type: &str, t: u64, id: &str, version: u64) -> Vec<u8> {
    let mut key = at(resource_type, t);
    put_str(&mut key, id.as_bytes());
    put_u64(&mut key, version);
    key
}

/// `(type, t, id, version)`
pub fn decode(key: &[u8]) -> Option<(String, u64, String, u64)> {
    let mut reader = Reader::new(key);
    let decoded = (reader.string()?, reader.u64()?, reader.string()?, reader.u64()?);
    reader.is_empty().then_some(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keys_round_trip(ty in "[A-Z][a-z]{1,20}", t in any::<u64>(), id in "[A-Za-z0-9.-]{1,64}", v in any::<u64>()) {
            prop_assert_eq!(decode(&encode(&ty, t, &id, v)), Some((ty, t, id, v)));
        }

        #[test]
        fn byte_order_is_type_then_time(
            a in ("[A-Z][a-z]{0,3}", any::<u64>(), "[a-z0-9]{1,5}", any::<u64>()),
            b in ("[A-Z][a-z]{0,3}", any::<u64>(), "[a-z0-9]{1,5}", any::<u64>()),
        ) {
            let (ka, kb) = (encode(&a.0, a.1, &a.2, a.3), encode(&b.0, b.1, &b.2, b.3));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }
    }
}
