//! `resource_search_param_value`: all index values of one resource version, in one record.
//!
//! Key: `type 0x00 id 0x00 version(u64 BE)`. Value: the version's `(param, value)` pairs,
//! sorted, each as `param length (u16 BE) · param · value length (u32 BE) · value`.
//!
//! This is the table a query *probes* ("which values does version v of resource X have for
//! parameter P?") with one point read, and the writer reads it to close a superseded version's
//! `search_param_value` entries. One record per version keeps writes cheap: a resource with
//! forty index values costs one insert here, not forty.

use super::{Reader, put_str, put_u64};

pub fn encode(resource_type: &str, id: &str, version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(resource_type.len() + id.len() + 10);
    put_str(&mut key, resource_type.as_bytes());
    put_str(&mut key, id.as_bytes());
    put_u64(&mut key, version);
    key
}

/// `(type, id, version)`
pub fn decode(key: &[u8]) -> Option<(String, String, u64)> {
    let mut reader = Reader::new(key);
    let decoded = (reader.string()?, reader.string()?, reader.u64()?);
    reader.is_empty().then_some(decoded)
}

/// Encodes `entries`, which the caller has sorted and de-duplicated.
pub fn encode_value<'a>(entries: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (param, value) in entries {
        out.extend_from_slice(&(param.len() as u16).to_be_bytes());
        out.extend_from_slice(param.as_bytes());
        out.extend_from_slice(&(value.len() as u32).to_be_bytes());
        out.extend_from_slice(value);
    }
    out
}

/// The `(param, value)` pairs of a record; `None` if it is malformed.
pub fn decode_value(mut bytes: &[u8]) -> Option<Vec<(&str, &[u8])>> {
    let mut entries = Vec::new();
    while !bytes.is_empty() {
        let (param_len, rest) = bytes.split_first_chunk::<2>()?;
        let param_len = u16::from_be_bytes(*param_len) as usize;
        let param = std::str::from_utf8(rest.get(..param_len)?).ok()?;
        let rest = &rest[param_len..];
        let (value_len, rest) = rest.split_first_chunk::<4>()?;
        let value_len = u32::from_be_bytes(*value_len) as usize;
        let value = rest.get(..value_len)?;
        entries.push((param, value));
        bytes = &rest[value_len..];
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn keys_round_trip(ty in "[A-Z][a-z]{1,10}", id in "[A-Za-z0-9.-]{1,64}", version in any::<u64>()) {
            prop_assert_eq!(decode(&encode(&ty, &id, version)), Some((ty, id, version)));
        }

        #[test]
        fn byte_order_is_type_id_version(
            a in ("[A-Z][a-z]{0,2}", "[a-z0-9]{1,4}", any::<u64>()),
            b in ("[A-Z][a-z]{0,2}", "[a-z0-9]{1,4}", any::<u64>()),
        ) {
            prop_assert_eq!(encode(&a.0, &a.1, a.2).cmp(&encode(&b.0, &b.1, b.2)), a.cmp(&b));
        }

        #[test]
        fn values_round_trip(entries in proptest::collection::vec(("[a-z:-]{1,12}", proptest::collection::vec(any::<u8>(), 0..30)), 0..20)) {
            let encoded = encode_value(entries.iter().map(|(p, v)| (p.as_str(), v.as_slice())));
            let decoded = decode_value(&encoded).unwrap();
            let expected: Vec<(&str, &[u8])> = entries.iter().map(|(p, v)| (p.as_str(), v.as_slice())).collect();
            prop_assert_eq!(decoded, expected);
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_value(&bytes);
        }
    }
}
