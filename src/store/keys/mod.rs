//! Byte encodings of the storage keys, one file per table.
//!
//! Every key is a concatenation of components whose byte order equals their logical order, so
//! that each lookup Braid needs is a point get or a range scan:
//! - strings are written with `0x00`/`0x01` escaped and end in a `0x00` terminator, so a
//!   string sorts before every longer string it is a prefix of;
//! - unsigned integers are 8 bytes big-endian.
//!
//! Resource types and ids never contain the escaped bytes (see `ResourceType` and `Id`), so for
//! them the encoding is the plain bytes plus the terminator. The two index tables write ids
//! shorter, in an order-preserving code ([`id_code`]).

pub mod id_code;
pub mod resource_search_param_value;
pub mod resource_version;
pub mod search_param_value;
pub mod superseded;
pub mod system_history;
pub mod type_history;

/// Appends `text` to `key`, escaped and terminated.
pub fn put_str(key: &mut Vec<u8>, text: &[u8]) {
    for &byte in text {
        match byte {
            0x00 => key.extend_from_slice(&[0x01, 0x01]),
            0x01 => key.extend_from_slice(&[0x01, 0x02]),
            other => key.push(other),
        }
    }
    key.push(0x00);
}

/// Appends `text` escaped but without the terminator: the start of every key whose string
/// component begins with `text` (or equals a value greater than or equal to it).
pub fn put_str_open(key: &mut Vec<u8>, text: &[u8]) {
    put_str(key, text);
    key.pop();
}

/// Appends `value` as 8 big-endian bytes.
pub fn put_u64(key: &mut Vec<u8>, value: u64) {
    key.extend_from_slice(&value.to_be_bytes());
}

/// Appends a version number as one length byte (the count of significant bytes, 0 to 8)
/// followed by those bytes big-endian: 2 bytes for versions below 256 instead of 8, and byte
/// order still equals numeric order (a shorter length is a smaller number).
pub fn put_version(key: &mut Vec<u8>, version: u64) {
    let significant = 8 - (version.leading_zeros() / 8) as usize;
    key.push(significant as u8);
    key.extend_from_slice(&version.to_be_bytes()[8 - significant..]);
}

/// Appends `value` as an unsigned LEB128 varint (7 bits per byte, low groups first): lengths
/// inside record values, where order does not matter and most lengths fit one byte.
pub fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7F) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads an unsigned LEB128 varint from the front of `bytes`; `None` if it is cut short or
/// longer than 64 bits.
pub fn read_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        let group = u64::from(byte & 0x7F);
        if shift == 63 && group > 1 {
            return None;
        }
        value |= group << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Reads keys component by component. Every method returns `None` on malformed input instead
/// of panicking, so decoding never trusts the bytes it is given.
pub struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { rest: bytes }
    }

    pub fn str(&mut self) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let mut bytes = self.rest.iter().enumerate();
        while let Some((index, &byte)) = bytes.next() {
            match byte {
                0x00 => {
                    self.rest = &self.rest[index + 1..];
                    return Some(out);
                }
                0x01 => match bytes.next() {
                    Some((_, 0x01)) => out.push(0x00),
                    Some((_, 0x02)) => out.push(0x01),
                    _ => return None,
                },
                other => out.push(other),
            }
        }
        None
    }

    pub fn string(&mut self) -> Option<String> {
        String::from_utf8(self.str()?).ok()
    }

    /// An id written by [`id_code::put_id`].
    pub fn id(&mut self) -> Option<String> {
        id_code::read_id(&mut self.rest)
    }

    pub fn u64(&mut self) -> Option<u64> {
        let (head, tail) = self.rest.split_first_chunk::<8>()?;
        self.rest = tail;
        Some(u64::from_be_bytes(*head))
    }

    /// A version number written by [`put_version`]; `None` unless it is in its shortest form.
    pub fn version(&mut self) -> Option<u64> {
        let (&significant, rest) = self.rest.split_first()?;
        let significant = significant as usize;
        if significant > 8 || rest.len() < significant {
            return None;
        }
        let (digits, tail) = rest.split_at(significant);
        if digits.first() == Some(&0) {
            return None;
        }
        let mut bytes = [0u8; 8];
        bytes[8 - significant..].copy_from_slice(digits);
        self.rest = tail;
        Some(u64::from_be_bytes(bytes))
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }
}

/// The smallest key greater than every key starting with `prefix`: the exclusive end of a
/// prefix scan. Prefixes in this crate always end in a terminator or an integer, so incrementing
/// the last byte that is not 0xFF is correct.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    // Only reached for an all-0xFF prefix, which no key codec produces.
    vec![0xFF; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn strings_round_trip(text in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut key = Vec::new();
            put_str(&mut key, &text);
            let mut reader = Reader::new(&key);
            prop_assert_eq!(reader.str(), Some(text));
            prop_assert!(reader.is_empty());
        }

        #[test]
        fn string_byte_order_equals_logical_order(
            a in proptest::collection::vec(any::<u8>(), 0..12),
            b in proptest::collection::vec(any::<u8>(), 0..12),
            n in any::<u64>(), m in any::<u64>(),
        ) {
            let (mut ka, mut kb) = (Vec::new(), Vec::new());
            put_str(&mut ka, &a);
            put_u64(&mut ka, n);
            put_str(&mut kb, &b);
            put_u64(&mut kb, m);
            prop_assert_eq!(ka.cmp(&kb), (a, n).cmp(&(b, m)));
        }

        #[test]
        fn versions_round_trip_and_order_like_numbers(a in any::<u64>(), b in any::<u64>()) {
            let (mut ka, mut kb) = (Vec::new(), Vec::new());
            put_version(&mut ka, a);
            put_version(&mut kb, b);
            prop_assert_eq!(Reader::new(&ka).version(), Some(a));
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }

        #[test]
        fn varints_round_trip(value in any::<u64>()) {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut bytes = out.as_slice();
            prop_assert_eq!(read_varint(&mut bytes), Some(value));
            prop_assert!(bytes.is_empty());
        }

        #[test]
        fn reading_arbitrary_bytes_as_numbers_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..12)) {
            let _ = Reader::new(&bytes).version();
            let _ = read_varint(&mut bytes.as_slice());
        }

        #[test]
        fn prefix_end_bounds_exactly_the_prefixed_keys(
            prefix in proptest::collection::vec(any::<u8>(), 1..8),
            other in proptest::collection::vec(any::<u8>(), 0..10),
        ) {
            prop_assume!(!prefix.iter().all(|&byte| byte == 0xFF));
            let end = prefix_end(&prefix);
            let inside = other.starts_with(&prefix);
            let in_range = other.as_slice() >= prefix.as_slice() && other.as_slice() < end.as_slice();
            prop_assert_eq!(inside, in_range);
        }
    }

    #[test]
    fn malformed_keys_decode_to_none() {
        assert_eq!(Reader::new(b"abc").str(), None);
        assert_eq!(Reader::new(&[0x01, 0x07, 0x00]).str(), None);
        assert_eq!(Reader::new(&[1, 2, 3]).u64(), None);
    }
}
