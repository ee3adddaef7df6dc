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

/// The code: the codeword of each id character (`None`: the byte is escaped), of the end mark
/// and of the escape, and by 12-bit prefix the one or two symbols it starts with (see [`Pair`]).
struct Table {
    by_byte: [Option<Codeword>; 256],
    end: Codeword,
    escape: Codeword,
    pairs: Vec<Pair>,
}

/// What the 12 bits at the front of a code start with: the first symbol, and the second when
/// its codeword also fits in the 12 bits (`second_len` 0 when it does not, or when the first
/// is the end mark or the escape, after which the bits mean something else). Decoding two
/// symbols per lookup halves the chain of dependent lookups a scan pays per id.
#[derive(Clone, Copy, Default)]
struct Pair {
    first: u8,
    first_len: u8,
    second: u8,
    second_len: u8,
}

/// Bits looked up at once by [`Table::pairs`].
const PAIR_BITS: u32 = 12;

fn table() -> &'static Table {
    static TABLE: std::sync::OnceLock<Table> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut by_byte = [None; 256];
        let (mut end, mut escape) = (None, None);
        // By 7-bit prefix: the symbol and length of the codeword it starts with.
        let mut by_prefix = [(0u8, 0u8); 128];
        // Positions in units of 2^-7: a codeword of `len` bits takes 2^(7 - len) of them and
        // starts at a multiple of that.
        let mut position: u32 = 0;
        for (symbol, len) in symbols() {
            let unit = 1u32 << (MAX_BITS - u32::from(len));
            position = position.next_multiple_of(unit);
            let bits = (position / unit) as u8;
            let code = Some(Codeword { bits, len });
            match symbol {
                END => end = code,
                ESCAPE => escape = code,
                character => by_byte[usize::from(character)] = code,
            }
            for prefix in position..position + unit {
                by_prefix[prefix as usize] = (symbol, len);
            }
            position += unit;
        }
        assert_eq!(position, 1 << MAX_BITS, "the code fills every 7-bit pattern");
        let pairs = (0..1u32 << PAIR_BITS)
            .map(|bits| {
                let (first, first_len) = by_prefix[(bits >> (PAIR_BITS - MAX_BITS)) as usize];
                let mut pair = Pair { first, first_len, ..Pair::default() };
                if first != END && first != ESCAPE {
                    let rest = (bits << first_len) & ((1 << PAIR_BITS) - 1);
                    let (second, second_len) = by_prefix[(rest >> (PAIR_BITS - MAX_BITS)) as usize];
                    if second != ESCAPE && u32::from(first_len + second_len) <= PAIR_BITS {
                        (pair.second, pair.second_len) = (second, second_len);
                    }
                }
                pair
            })
            .collect();
        let end = end.expect("the end mark is a symbol");
        let escape = escape.expect("the escape is a symbol");
        Table { by_byte, end, escape, pairs }
    })
}

/// Appends `id`'s code to `key`.
pub fn put_id(key: &mut Vec<u8>, id: &str) {
    let table = table();
    // Bits not yet written, right-aligned in `pending` (`count` of them, fewer than 32 between
    // calls, so that a codeword and an escaped byte always fit).
    let (mut pending, mut count) = (0u64, 0u32);
    let mut put = |bits: u64, len: u32, key: &mut Vec<u8>| {
        pending = (pending << len) | bits;
        count += len;
        if count >= 32 {
            count -= 32;
            key.extend_from_slice(&((pending >> count) as u32).to_be_bytes());
            pending &= (1 << count) - 1;
        }
    };
    for &byte in id.as_bytes() {
        match table.by_byte[usize::from(byte)] {
            Some(code) => put(code.bits.into(), code.len.into(), key),
            None => {
                put(table.escape.bits.into(), table.escape.len.into(), key);
                put(byte.into(), 8, key);
            }
        }
    }
    put(table.end.bits.into(), table.end.len.into(), key);
    // What is left, padded with zero bits to the next byte boundary.
    let bytes = count.div_ceil(8);
    let padded = pending << (bytes * 8 - count);
    key.extend_from_slice(&padded.to_be_bytes()[8 - bytes as usize..]);
}

/// Reads an id written by [`put_id`] from the front of `bytes` and moves past it. `None` if the
/// bytes are not such a code (no end mark, bits set in the padding, or not UTF-8).
pub fn read_id(bytes: &mut &[u8]) -> Option<String> {
    let table = table();
    // Unread bits, left-aligned in `window` (zeros below the `held` valid ones); `next` is the
    // first byte not yet loaded. Scans decode this for every index entry they visit.
    let (mut window, mut held, mut next) = (0u64, 0u32, 0usize);
    // `bytes` runs on past the id (the rest of the key); FHIR ids are at most 64 characters.
    let mut out = Vec::with_capacity((bytes.len() * 8 / 5).min(64));
    loop {
        if held <= 32
            && let Some(chunk) = bytes.get(next..next + 4)
        {
            let chunk = u32::from_be_bytes(chunk.try_into().expect("four bytes"));
            window |= u64::from(chunk) << (32 - held);
            held += 32;
            next += 4;
        }
        while held <= 56 && next < bytes.len() {
            window |= u64::from(bytes[next]) << (56 - held);
            held += 8;
            next += 1;
        }
        let pair = table.pairs[(window >> (64 - PAIR_BITS)) as usize];
        let both = u32::from(pair.first_len + pair.second_len);
        if pair.second_len > 0 && both <= held {
            window <<= both;
            held -= both;
            out.push(pair.first);
            if pair.second == END {
                break;
            }
            out.push(pair.second);
            continue;
        }
        let (symbol, len) = (pair.first, u32::from(pair.first_len));
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
        let code_of = |symbol: u8| match symbol {
            END => table.end,
            ESCAPE => table.escape,
            character => table.by_byte[usize::from(character)].unwrap(),
        };
        let ordered: Vec<u32> = symbols().map(|(s, _)| aligned(code_of(s))).collect();
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
