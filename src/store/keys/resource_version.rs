//! `resource_version`: every version of every resource.
//!
//! Key: `type 0x00 id 0x00 version(u64 BE)`. Value: `op(u8) t(u64 BE) last_updated(i64 BE,
//! microseconds since the epoch) body`. The body is the resource JSON as stored (empty for a
//! deletion).
//!
//! Read is the last key with prefix `type·id`; vread is a point get; instance history is the
//! prefix scan read backwards.

use super::{Reader, put_str, put_u64};

/// What a version records. Stored as one byte: the discriminants are part of the file format
/// and must never be reordered or reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    Create = 1,
    Update = 2,
    Delete = 3,
}

impl Op {
    fn from_byte(byte: u8) -> Option<Op> {
        match byte {
            1 => Some(Op::Create),
            2 => Some(Op::Update),
            3 => Some(Op::Delete),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub op: Op,
    /// The logical time of this version: a counter over all versions ever written.
    pub t: u64,
    pub last_updated_micros: i64,
}

pub const HEADER_LEN: usize = 17;

pub fn prefix(resource_type: &str, id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(resource_type.len() + id.len() + 10);
    put_str(&mut key, resource_type.as_bytes());
    put_str(&mut key, id.as_bytes());
    key
}

pub fn encode(resource_type: &str, id: &str, version: u64) -> Vec<u8> {
    let mut key = prefix(resource_type, id);
    put_u64(&mut key, version);
    key
}

/// `(type, id, version)`
pub fn decode(key: &[u8]) -> Option<(String, String, u64)> {
    let mut reader = Reader::new(key);
    let decoded = (reader.string()?, reader.string()?, reader.u64()?);
    reader.is_empty().then_some(decoded)
}

pub fn encode_value(header: Header, body: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(HEADER_LEN + body.len());
    value.push(header.op as u8);
    value.extend_from_slice(&header.t.to_be_bytes());
    value.extend_from_slice(&header.last_updated_micros.to_be_bytes());
    value.extend_from_slice(body);
    value
}

pub fn decode_value(value: &[u8]) -> Option<(Header, &[u8])> {
    let (&op, rest) = value.split_first()?;
    let (t, rest) = rest.split_first_chunk::<8>()?;
    let (last_updated, body) = rest.split_first_chunk::<8>()?;
    let header = Header {
        op: Op::from_byte(op)?,
        t: u64::from_be_bytes(*t),
        last_updated_micros: i64::from_be_bytes(*last_updated),
    };
    Some((header, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ID: &str = "[A-Za-z0-9.-]{1,64}";

    proptest! {
        #[test]
        fn keys_round_trip(ty in "[A-Z][a-z]{1,20}", id in ID, version in any::<u64>()) {
            prop_assert_eq!(decode(&encode(&ty, &id, version)), Some((ty, id, version)));
        }

        #[test]
        fn byte_order_is_type_then_id_then_version(
            a in ("[A-Z][a-z]{0,3}", ID, any::<u64>()),
            b in ("[A-Z][a-z]{0,3}", ID, any::<u64>()),
        ) {
            let (ka, kb) = (encode(&a.0, &a.1, a.2), encode(&b.0, &b.1, b.2));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }

        #[test]
        fn values_round_trip(op in 1u8..=3, t in any::<u64>(), lu in any::<i64>(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let header = Header { op: Op::from_byte(op).unwrap(), t, last_updated_micros: lu };
            let encoded = encode_value(header, &body);
            prop_assert_eq!(decode_value(&encoded), Some((header, body.as_slice())));
        }
    }

    #[test]
    fn a_version_key_has_its_resource_prefix() {
        assert!(encode("Patient", "p1", 7).starts_with(&prefix("Patient", "p1")));
        assert!(!encode("Patient", "p10", 7).starts_with(&prefix("Patient", "p1")));
        assert_eq!(decode_value(&[9; 17]), None);
    }
}
