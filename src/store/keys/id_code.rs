//! Resource ids in index keys, in fewer bytes and in the same order.
//!
//! The index tables repeat a resource's id in every entry (about sixteen per resource), so the
//! id's length is a large part of their size. An id is written here as a prefix code over its
//! characters, chosen so that the code's byte order is the ids' byte order: every scan, sort
//! tie and paging cursor that relies on index order reads exactly what it read with the ids
//! written out.
//!
//! The code is alphabetic: codewords are assigned in character order (`-` < `.` < digits <
//! upper case < lower case), each one at the next free position of its length, and the end of
//! the id is a codeword below all others. Two codes then compare as their ids do, and the
//! comparison is decided inside the first codewords that differ, before any padding or
//! whatever follows the id in the key. Lengths: the end mark and digits 5 bits, lower case,
//! `-` and `.` 6, upper case 7, so a 17-character generated id takes 13 bytes instead of 18,
//! a UUID 26 instead of 37. The code ends on a byte boundary (zero bits up to it).
//!
//! FHIR ids hold only those 64 characters. Any other byte (never written by Braid, but a key
//! must be able to carry whatever it is given) is an escape codeword and the byte's 8 bits:
//! such ids round-trip, though they do not sort among the others by their bytes.
//!
//! Part of the file format (format 7): never change the table.

/// Symbols in code order: the end mark, then the id characters in byte order, then the escape.
const END: u8 = 0;
const ESCAPE: u8 = 0xFF;

/// The longest codeword, in bits; every 7-bit pattern starts exactly one codeword (the code is
/// complete: its Kraft sum is 1).
const MAX_BITS: u32 = 7;

/// A codeword: its bits (right-aligned) and their count.
#[derive(Clone, Copy)]
struct Codeword {
    bits: u8,
    len: u8,
}

/// The codeword lengths of the symbols, in code order.
fn symbols() -> impl Iterator<Item = (u8, u8)> {
    let end = std::iter::once((END, 5));
    let punctuation = [(b'-', 6), (b'.', 6)].into_iter();
    let digits = (b'0'..=b'9').map(|c| (c, 5));
    let upper = (b'A'..=b'Z').map(|c| (c, 7));
    let lower = (b'a'..=b'z').map(|c| (c, 6));
    let escape = std::iter::once((ESCAPE, 6));
    end.chain(punctuation).chain(digits).chain(upper).chain(lower).chain(escape)
}

/// The code: by byte (the end mark at 0, the escape at 0xFF), and by 7-bit prefix the symbol
/// and length that starts with it.
struct Table {
    by_byte: [Option<Codeword>; 256],
    by_prefix: [(u8, u8); 128],
}

fn table() -> &'static Table {
    static TABLE: std::sync::OnceLock<Table> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut by_byte = [None; 256];
        let mut by_prefix = [(0, 0); 128];
        // Positions in units of 2^-7: a codeword of `len` bits takes 2^(7 - len) of them and
        // starts at a multiple of that.
        let mut position: u32 = 0;
        for (symbol, len) in symbols() {
            let unit = 1u32 << (MAX_BITS - u32::from(len));
            position = position.next_multiple_of(unit);
            let bits = (position / unit) as u8;
            by_byte[usize::from(symbol)] = Some(Codeword { bits, len });
            for prefix in position..position + unit {
                by_prefix[prefix as usize] = (symbol, len);
            }
            position += unit;
        }
        assert_eq!(position, 1 << MAX_BITS, "the code fills every 7-bit pattern");
        Table { by_byte, by_prefix }
    })
}

/// Collects bits, most significant first, into bytes.
struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    pending: u32,
    count: u32,
}

impl BitWriter<'_> {
    fn put(&mut self, bits: u32, len: u32) {
        self.pending = (self.pending << len) | bits;
        self.count += len;
        while self.count >= 8 {
            self.count -= 8;
            self.out.push((self.pending >> self.count) as u8);
        }
        self.pending &= (1 << self.count) - 1;
    }

    /// Pads with zero bits to the next byte boundary.
    fn finish(self) {
        if self.count > 0 {
            self.out.push((self.pending << (8 - self.count)) as u8);
        }
    }
}

/// Appends `id`'s code to `key`.
pub fn put_id(key: &mut Vec<u8>, id: &str) {
    let table = table();
    let mut writer = BitWriter { out: key, pending: 0, count: 0 };
    for &byte in id.as_bytes() {
        match table.by_byte[usize::from(byte)] {
            Some(code) if byte != END && byte != ESCAPE => writer.put(code.bits.into(), code.len.into()),
            _ => {
                let escape = table.by_byte[usize::from(ESCAPE)].expect("the escape has a codeword");
                writer.put(escape.bits.into(), escape.len.into());
                writer.put(byte.into(), 8);
            }
        }
    }
    let end = table.by_byte[usize::from(END)].expect("the end mark has a codeword");
    writer.put(end.bits.into(), end.len.into());
    writer.finish();
}

/// Reads an id written by [`put_id`] from the front of `bytes` and moves past it. `None` if the
/// bytes are not such a code (no end mark, bits set in the padding, or not UTF-8).
pub fn read_id(bytes: &mut &[u8]) -> Option<String> {
    let table = table();
    // Unread bits, left-aligned in `window` (zeros below the `held` valid ones); `next` is the
    // first byte not yet loaded. Scans decode this for every index entry they visit.
    let (mut window, mut held, mut next) = (0u64, 0u32, 0usize);
    let mut out = Vec::with_capacity(bytes.len() * 8 / 5);
    loop {
        while held <= 56 && next < bytes.len() {
            window |= u64::from(bytes[next]) << (56 - held);
            held += 8;
            next += 1;
        }
        let (symbol, len) = table.by_prefix[(window >> (64 - MAX_BITS)) as usize];
        let len = u32::from(len);
        if len > held {
            return None;
        }
        window <<= len;
        held -= len;
        match symbol {
            END => break,
            ESCAPE => {
                if held < 8 {
                    return None;
                }
                out.push((window >> 56) as u8);
                window <<= 8;
                held -= 8;
            }
            character => out.push(character),
        }
    }
    // The padding: the bits left in the last byte read from, all zero.
    let padding = held % 8;
    if padding > 0 && window >> (64 - padding) != 0 {
        return None;
    }
    let end = next - (held / 8) as usize;
    *bytes = &bytes[end..];
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn code(id: &str) -> Vec<u8> {
        let mut key = Vec::new();
        put_id(&mut key, id);
        key
    }

    #[test]
    fn the_table_is_alphabetic_and_ids_shrink() {
        // Codewords increase with their characters (read as bit strings left-aligned to 7).
        let table = table();
        let aligned = |c: Codeword| u32::from(c.bits) << (MAX_BITS - u32::from(c.len));
        let ordered: Vec<u32> = symbols().map(|(s, _)| aligned(table.by_byte[usize::from(s)].unwrap())).collect();
        assert!(ordered.windows(2).all(|pair| pair[0] < pair[1]));
        assert_eq!(code("0123456789abcdefg").len(), 13);
        assert_eq!(code("7b0bd2b9-8f4a-4a8c-9c2b-1f1e3f0e6c55").len(), 26);
        assert_eq!(code("p123-4").len(), 5);
        assert_eq!(code("").len(), 1);
    }

    #[test]
    fn damaged_codes_read_as_none_and_never_panic() {
        assert_eq!(read_id(&mut &[][..]), None);
        // An end mark followed by set padding bits.
        assert_eq!(read_id(&mut &[0b0000_0001][..]), None);
        // A codeword cut off by the end of the bytes.
        assert_eq!(read_id(&mut &[0xFF][..]), None);
        let mut whole = code("abc");
        whole.pop();
        assert_eq!(read_id(&mut whole.as_slice()), None);
    }

    #[test]
    fn what_follows_the_code_is_left() {
        let mut key = code("Patient-1");
        key.extend_from_slice(&[7, 8]);
        let mut rest = key.as_slice();
        assert_eq!(read_id(&mut rest).as_deref(), Some("Patient-1"));
        assert_eq!(rest, &[7, 8]);
    }

    const ID: &str = "[A-Za-z0-9.-]{0,64}";

    proptest! {
        #[test]
        fn ids_round_trip(id in ID) {
            prop_assert_eq!(read_id(&mut code(&id).as_slice()), Some(id));
        }

        #[test]
        fn any_string_round_trips(text in any::<String>()) {
            prop_assert_eq!(read_id(&mut code(&text).as_slice()), Some(text));
        }

        #[test]
        fn byte_order_is_id_order_whatever_follows(a in ID, b in ID, tail_a in any::<[u8; 3]>(), tail_b in any::<[u8; 3]>()) {
            let (mut key_a, mut key_b) = (code(&a), code(&b));
            key_a.extend_from_slice(&tail_a);
            key_b.extend_from_slice(&tail_b);
            if a != b {
                prop_assert_eq!(key_a.cmp(&key_b), a.cmp(&b));
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let mut rest = bytes.as_slice();
            let _ = read_id(&mut rest);
        }
    }
}
