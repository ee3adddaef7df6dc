//! `system_history`: every version of every resource, in commit order.
//!
//! Key: `t(u64 BE) type 0x00 id 0x00 version(u64 BE)`; no value. System-level history is the
//! whole table read backwards. The newest key also tells the writer where the clock stands.

use super::{Reader, put_str, put_u64};

pub fn at(t: u64) -> Vec<u8> {
    t.to_be_bytes().to_vec()
}

pub fn encode(t: u64, resource_type: &str, id: &str, version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(8 + resource_type.len() + id.len() + 10);
    put_u64(&mut key, t);
    put_str(&mut key, resource_type.as_bytes());
    put_str(&mut key, id.as_bytes());
    put_u64(&mut key, version);
    key
}

/// `(t, type, id, version)`
pub fn decode(key: &[u8]) -> Option<(u64, String, String, u64)> {
    let mut reader = Reader::new(key);
    let decoded = (reader.u64()?, reader.string()?, reader.string()?, reader.u64()?);
    reader.is_empty().then_some(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keys_round_trip(t in any::<u64>(), ty in "[A-Z][a-z]{1,20}", id in "[A-Za-z0-9.-]{1,64}", v in any::<u64>()) {
            prop_assert_eq!(decode(&encode(t, &ty, &id, v)), Some((t, ty, id, v)));
        }

        #[test]
        fn byte_order_is_time_first(
            a in (any::<u64>(), "[A-Z][a-z]{0,3}", "[a-z0-9]{1,5}", any::<u64>()),
            b in (any::<u64>(), "[A-Z][a-z]{0,3}", "[a-z0-9]{1,5}", any::<u64>()),
        ) {
            let (ka, kb) = (encode(a.0, &a.1, &a.2, a.3), encode(b.0, &b.1, &b.2, b.3));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }
    }
}
