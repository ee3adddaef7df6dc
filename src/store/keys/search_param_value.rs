//! `search_param_value`: which resource versions have a given value for a search parameter.
//!
//! Key: `param-hash(4 bytes) value 0x00 id version`, where the hash is FNV-1a (32 bit) of
//! `type 0x00 param` (see [`param_hash`]), the id is in the order-preserving code of
//! [`super::id_code`] (format 7) and the version is written short (see
//! [`super::put_version`]: 2 bytes below version 256). Value: `(created_t, superseded_t)`,
//! written short by [`Lifetime`].
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

use super::{Reader, id_code, put_str, put_version, read_varint};

/// The redb value type of `search_param_value`: an entry's `(created_t, superseded_t)`, with
/// `superseded_t = u64::MAX` while the entry's version is current.
///
/// Written as LEB128 varints: `created_t`, then, once superseded, `superseded_t - created_t`
/// (nothing while current). A current entry takes 3 or 4 bytes instead of 16 for two `u64`s;
/// with more than ten entries per version this is about a tenth of the table. Part of the file
/// format (format 6).
#[derive(Debug)]
pub struct Lifetime;

/// The bytes of one [`Lifetime`] value: at most two varints of 10 bytes.
pub struct LifetimeBytes {
    bytes: [u8; 20],
    len: u8,
}

impl LifetimeBytes {
    /// Appends `value` as an unsigned LEB128 varint (as [`super::put_varint`] writes it).
    fn push_varint(&mut self, mut value: u64) {
        loop {
            let low = (value & 0x7F) as u8;
            value >>= 7;
            self.bytes[usize::from(self.len)] = if value == 0 { low } else { low | 0x80 };
            self.len += 1;
            if value == 0 {
                return;
            }
        }
    }
}

impl AsRef<[u8]> for LifetimeBytes {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl Lifetime {
    /// Written for every index entry inserted or closed, so into a fixed buffer, not the heap.
    pub fn encode((created, superseded): (u64, u64)) -> LifetimeBytes {
        let mut written = LifetimeBytes { bytes: [0; 20], len: 0 };
        written.push_varint(created);
        if superseded != u64::MAX {
            written.push_varint(superseded.wrapping_sub(created));
        }
        written
    }

    /// `None` if `bytes` is not a lifetime [`Lifetime::encode`] wrote.
    pub fn decode(mut bytes: &[u8]) -> Option<(u64, u64)> {
        let created = read_varint(&mut bytes)?;
        if bytes.is_empty() {
            return Some((created, u64::MAX));
        }
        let superseded = created.wrapping_add(read_varint(&mut bytes)?);
        bytes.is_empty().then_some((created, superseded))
    }
}

impl redb::Value for Lifetime {
    type SelfType<'a> = (u64, u64);
    type AsBytes<'a> = LifetimeBytes;

    fn fixed_width() -> Option<usize> {
        None
    }

    /// A damaged value reads as a lifetime that no reader's time falls in (`created_t` after
    /// every time), so the entry is skipped rather than the process stopped; `braid check`
    /// reports the entry as marked wrongly.
    fn from_bytes<'a>(data: &'a [u8]) -> (u64, u64)
    where
        Self: 'a,
    {
        Lifetime::decode(data).unwrap_or((u64::MAX, u64::MAX))
    }

    fn as_bytes<'a, 'b: 'a>(value: &'a (u64, u64)) -> LifetimeBytes
    where
        Self: 'b,
    {
        Lifetime::encode(*value)
    }

    fn type_name() -> redb::TypeName {
        redb::TypeName::new("braid::Lifetime")
    }
}

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
    id_code::put_id(&mut key, id);
    put_version(&mut key, version);
    key
}

/// `(param hash, value, id, version)`
pub fn decode(key: &[u8]) -> Option<(u32, Vec<u8>, String, u64)> {
    let (hash, rest) = key.split_first_chunk::<4>()?;
    let mut reader = Reader::new(rest);
    let decoded = (u32::from_be_bytes(*hash), reader.str()?, reader.id()?, reader.version()?);
    reader.is_empty().then_some(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lifetimes_are_the_varints_put_varint_writes() {
        for lifetime in [(0, u64::MAX), (300, 70_000), (u64::MAX - 1, u64::MAX - 1), (5, 1)] {
            let mut expected = Vec::new();
            super::super::put_varint(&mut expected, lifetime.0);
            if lifetime.1 != u64::MAX {
                super::super::put_varint(&mut expected, lifetime.1.wrapping_sub(lifetime.0));
            }
            assert_eq!(Lifetime::encode(lifetime).as_ref(), expected.as_slice(), "{lifetime:?}");
        }
    }

    #[test]
    fn a_current_entry_takes_a_few_bytes_and_damaged_values_read_as_never_live() {
        assert_eq!(Lifetime::encode((1_000_000, u64::MAX)).as_ref().len(), 3);
        assert_eq!(Lifetime::encode((1_000_000, 1_000_200)).as_ref().len(), 5);
        for damaged in [&b""[..], &[0x80], &[1, 0x80], &[1, 2, 3]] {
            assert_eq!(Lifetime::decode(damaged), None, "{damaged:?}");
            assert_eq!(<Lifetime as redb::Value>::from_bytes(damaged), (u64::MAX, u64::MAX));
        }
    }

    proptest! {
        #[test]
        fn lifetimes_round_trip(created in any::<u64>(), superseded in any::<u64>()) {
            for lifetime in [(created, superseded), (created, u64::MAX)] {
                prop_assert_eq!(Lifetime::decode(Lifetime::encode(lifetime).as_ref()), Some(lifetime));
            }
        }

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
