//! `resource_search_param_value`: all index values of one resource version, in one record.
//!
//! Key: `type 0x00 id version` (the id in the code of [`super::id_code`], format 7; the
//! version short, see [`super::put_version`]). Value:
//! the version's `(param, value)` pairs, sorted, each as `param hash (4 bytes BE, see
//! [`param_hash`]) · value length (LEB128 varint) · value`: the hash rather than the
//! parameter's name, since the record is only ever asked for one parameter's values (compare
//! hashes) and to rebuild `search_param_value` keys (which start with the hash).
//!
//! This is the table a query *probes* ("which values does version v of resource X have for
//! parameter P?") with one point read, and the writer reads it to close a superseded version's
//! `search_param_value` entries. One record per version keeps writes cheap: a resource with
//! forty index values costs one insert here, not forty.

use super::search_param_value::param_hash;
use super::{Reader, id_code, put_str, put_varint, put_version, read_varint};

pub fn encode(resource_type: &str, id: &str, version: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(resource_type.len() + id.len() + 4);
    put_str(&mut key, resource_type.as_bytes());
    id_code::put_id(&mut key, id);
    put_version(&mut key, version);
    key
}

/// `(type, id, version)`
pub fn decode(key: &[u8]) -> Option<(String, String, u64)> {
    let mut reader = Reader::new(key);
    let decoded = (reader.string()?, reader.id()?, reader.version()?);
    reader.is_empty().then_some(decoded)
}

/// Encodes the `(param, value)` entries of a version of a `resource_type`, which the caller
/// has sorted and de-duplicated.
pub fn encode_value<'a>(resource_type: &str, entries: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    encode_hashed_value(entries.into_iter().map(|(param, value)| (param_hash(resource_type, param), value)))
}

/// [`encode_value`] for entries whose parameters are given by their hashes.
pub fn encode_hashed_value<'a>(entries: impl IntoIterator<Item = (u32, &'a [u8])>) -> Vec<u8> {
    let mut out = Vec::new();
    for (hash, value) in entries {
        out.extend_from_slice(&hash.to_be_bytes());
        put_varint(&mut out, value.len() as u64);
        out.extend_from_slice(value);
    }
    out
}

/// The `(param hash, value)` pairs of a record; `None` if it is malformed.
pub fn decode_value(mut bytes: &[u8]) -> Option<Vec<(u32, &[u8])>> {
    let mut entries = Vec::new();
    while !bytes.is_empty() {
        let (hash, rest) = bytes.split_first_chunk::<4>()?;
        bytes = rest;
        let len = usize::try_from(read_varint(&mut bytes)?).ok()?;
        let value = bytes.get(..len)?;
        entries.push((u32::from_be_bytes(*hash), value));
        bytes = &bytes[len..];
    }
    Some(entries)
}

/// The values `param` has in a decoded record.
pub fn values_of<'a>(entries: &[(u32, &'a [u8])], resource_type: &str, param: &str) -> Vec<&'a [u8]> {
    let hash = param_hash(resource_type, param);
    entries.iter().filter(|(h, _)| *h == hash).map(|(_, value)| *value).collect()
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
        fn values_round_trip(entries in proptest::collection::vec(("[a-z:-]{1,12}", proptest::collection::vec(any::<u8>(), 0..300)), 0..20)) {
            let encoded = encode_value("Observation", entries.iter().map(|(p, v)| (p.as_str(), v.as_slice())));
            let decoded = decode_value(&encoded).unwrap();
            let expected: Vec<(u32, &[u8])> =
                entries.iter().map(|(p, v)| (param_hash("Observation", p), v.as_slice())).collect();
            prop_assert_eq!(&decoded, &expected);
            for (param, value) in &entries {
                prop_assert!(values_of(&decoded, "Observation", param).contains(&value.as_slice()));
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_value(&bytes);
        }
    }
}
