//! How the master patient index compares two values of one field: graded levels, from
//! agreement to disagreement, that a Fellegi-Sunter score weighs (each level has its own
//! m and u probabilities, learned from the data).
//!
//! - Names are normalised first (lowercase, accents folded, only letters kept), then compared:
//!   exact; a known nickname or formal name of the other (`profiles/nicknames.csv`); close by
//!   Jaro-Winkler (two bands); the same Double Metaphone code; one given as the other's initial.
//! - Dates: exact; day and month swapped; one digit wrong or two adjacent digits swapped; the
//!   same year; else different.
//! - Everything else (postcode, phone, email, identifiers) is compared after its own
//!   normalisation, exactly.
//!
//! A missing value on either side is its own level, which the score weighs as neutral.

use std::collections::HashMap;
use std::sync::LazyLock;

use rphonetic::DoubleMetaphone;
use unicode_normalization::UnicodeNormalization;

/// The levels of a name comparison, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NameLevel {
    Exact,
    /// One is a nickname (or the formal name) of the other: `bob` and `robert`.
    Nickname,
    /// Jaro-Winkler similarity at least [`Bands::name_close`]: one typo in a longer name.
    Close,
    /// The same Double Metaphone code (primary or alternate): `smyth` and `smith`.
    Phonetic,
    /// Jaro-Winkler similarity at least [`Bands::name_similar`].
    Similar,
    /// One is a single letter, the other's initial.
    Initial,
    Different,
    /// Either side has no value.
    Missing,
}

/// The levels of a date comparison, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DateLevel {
    Exact,
    /// Day and month swapped (`1984-03-07` and `1984-07-03`): a frequent entry error.
    DayMonthSwapped,
    /// One digit wrong, or two adjacent digits swapped (`1984` and `1948`).
    OneTypo,
    SameYear,
    Different,
    Missing,
}

/// The Jaro-Winkler similarities that make the graded levels, from the profile
/// (`profiles/mpi.rules.json`, `levels`).
#[derive(Debug, Clone, Copy, PartialEq, serde::Deserialize)]
pub struct Bands {
    /// At least this: [`NameLevel::Close`] (one typo in a longer name).
    pub name_close: f64,
    /// At least this: [`NameLevel::Similar`].
    pub name_similar: f64,
    /// At least this: address lines (or cities) that are close.
    pub address_close: f64,
}

/// The shipped bands.
pub fn bands() -> &'static Bands {
    static BANDS: LazyLock<Bands> = LazyLock::new(|| super::blocking::Rules::shipped().levels);
    &BANDS
}

/// Longest name compared, in characters: longer input is cut (names are short; the bound keeps
/// the quadratic string measures cheap whatever a record holds).
pub const MAX_NAME_CHARS: usize = 64;

/// Given names that name the same person, from `profiles/nicknames.csv`: each name maps to the
/// groups it belongs to.
pub struct Nicknames {
    groups: HashMap<String, Vec<usize>>,
}

static NICKNAMES: LazyLock<Nicknames> =
    LazyLock::new(|| Nicknames::parse(include_str!("../../profiles/nicknames.csv")));

/// The nickname table shipped in `profiles/`.
pub fn nicknames() -> &'static Nicknames {
    &NICKNAMES
}

impl Nicknames {
    /// Reads groups of names, one group per line (comma-separated; `#` starts a comment).
    pub fn parse(text: &str) -> Nicknames {
        let mut groups: HashMap<String, Vec<usize>> = HashMap::new();
        let lines = text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#'));
        for (group, line) in lines.enumerate() {
            for name in line.split(',').map(normalize_name).filter(|name| !name.is_empty()) {
                let entry = groups.entry(name).or_default();
                if !entry.contains(&group) {
                    entry.push(group);
                }
            }
        }
        Nicknames { groups }
    }

    /// Whether `a` and `b` (normalised) are names of one group.
    pub fn related(&self, a: &str, b: &str) -> bool {
        match (self.groups.get(a), self.groups.get(b)) {
            (Some(left), Some(right)) => left.iter().any(|group| right.contains(group)),
            _ => false,
        }
    }
}

/// A name as compared: lowercase, accents folded (`é` is `e`), only ASCII letters kept (`o'neil`
/// is `oneil`, `anne-marie` is `annemarie`), at most [`MAX_NAME_CHARS`].
pub fn normalize_name(text: &str) -> String {
    text.nfd().filter(char::is_ascii_alphabetic).map(|c| c.to_ascii_lowercase()).take(MAX_NAME_CHARS).collect()
}

/// Compares two names (normalising them).
pub fn compare_names(a: &str, b: &str, nicknames: &Nicknames) -> NameLevel {
    compare_normalized_names(&normalize_name(a), &normalize_name(b), nicknames)
}

/// Compares two names already normalised ([`normalize_name`]), as a [`PersonRecord`] holds
/// them.
///
/// [`PersonRecord`]: super::record::PersonRecord
pub fn compare_normalized_names(a: &str, b: &str, nicknames: &Nicknames) -> NameLevel {
    compare_coded_names(a, &phonetic_codes(a), b, &phonetic_codes(b), nicknames)
}

/// Compares two normalised names with their Double Metaphone codes computed beforehand (a
/// [`PersonRecord`] keeps them: encoding is the costly part of a comparison).
///
/// [`PersonRecord`]: super::record::PersonRecord
pub fn compare_coded_names(
    a: &str,
    a_codes: &(String, String),
    b: &str,
    b_codes: &(String, String),
    nicknames: &Nicknames,
) -> NameLevel {
    if a.is_empty() || b.is_empty() {
        return NameLevel::Missing;
    }
    if a == b {
        return NameLevel::Exact;
    }
    if nicknames.related(a, b) {
        return NameLevel::Nickname;
    }
    if a.len() == 1 || b.len() == 1 {
        return if a.as_bytes()[0] == b.as_bytes()[0] { NameLevel::Initial } else { NameLevel::Different };
    }
    let similarity = jaro_winkler(a, b);
    if similarity >= bands().name_close {
        return NameLevel::Close;
    }
    if same_sound(a_codes, b_codes) {
        return NameLevel::Phonetic;
    }
    if similarity >= bands().name_similar { NameLevel::Similar } else { NameLevel::Different }
}

/// The Double Metaphone codes (primary, alternate) of a normalised name.
pub fn phonetic_codes(name: &str) -> (String, String) {
    static ENCODER: LazyLock<DoubleMetaphone> = LazyLock::new(DoubleMetaphone::default);
    let result = ENCODER.double_metaphone(name);
    (result.primary(), result.alternate())
}

/// Whether two names' Double Metaphone codes (primary, alternate) share a code.
fn same_sound((a_primary, a_alternate): &(String, String), (b_primary, b_alternate): &(String, String)) -> bool {
    if a_primary.is_empty() || b_primary.is_empty() {
        return false;
    }
    a_primary == b_primary || a_primary == b_alternate || a_alternate == b_primary
}

/// A date as eight digits `YYYYMMDD`, from `YYYY-MM-DD`, `YYYYMMDD` or a longer dateTime; `None`
/// for anything else (a partial date names no day to compare).
pub fn date_digits(text: &str) -> Option<[u8; 8]> {
    let digits: Vec<u8> = text.bytes().take(10).filter(u8::is_ascii_digit).collect();
    let well_formed = match text.len() {
        8 => text.bytes().all(|b| b.is_ascii_digit()),
        10.. => text.as_bytes()[4] == b'-' && text.as_bytes()[7] == b'-',
        _ => false,
    };
    (well_formed && digits.len() == 8).then(|| {
        let mut out = [0u8; 8];
        out.copy_from_slice(&digits);
        out
    })
}

/// Compares two dates (see [`date_digits`] for the forms read).
pub fn compare_dates(a: &str, b: &str) -> DateLevel {
    compare_date_digits(date_digits(a), date_digits(b))
}

/// Compares two dates given as their digits ([`date_digits`]), as a `PersonRecord` holds them.
pub fn compare_date_digits(a: Option<[u8; 8]>, b: Option<[u8; 8]>) -> DateLevel {
    let (Some(a), Some(b)) = (a, b) else { return DateLevel::Missing };
    if a == b {
        return DateLevel::Exact;
    }
    let (year_a, month_a, day_a) = (&a[..4], &a[4..6], &a[6..]);
    let (year_b, month_b, day_b) = (&b[..4], &b[4..6], &b[6..]);
    if year_a == year_b && month_a == day_b && day_a == month_b {
        return DateLevel::DayMonthSwapped;
    }
    if one_edit_apart(&a, &b) {
        return DateLevel::OneTypo;
    }
    if year_a == year_b { DateLevel::SameYear } else { DateLevel::Different }
}

/// The Jaro-Winkler similarity of two texts, as `strsim::jaro_winkler` computes it (a prefix
/// of up to four characters raises a similarity above 0.7). Scoring compares names and
/// addresses for every candidate pair, so ASCII text up to [`MAX_FAST_CHARS`] long (every
/// normalised name) is compared as bytes without allocating; other text goes to strsim.
pub fn jaro_winkler(a: &str, b: &str) -> f64 {
    if !a.is_ascii() || !b.is_ascii() || a.len() > MAX_FAST_CHARS || b.len() > MAX_FAST_CHARS {
        return strsim::jaro_winkler(a, b);
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let jaro = jaro_bytes(a, b);
    if jaro <= 0.7 {
        return jaro;
    }
    let prefix = a.iter().zip(b).take(4).take_while(|(x, y)| x == y).count();
    jaro + 0.1 * prefix as f64 * (1.0 - jaro)
}

/// Longest text [`jaro_winkler`] compares as bytes (its match flags are on the stack).
pub const MAX_FAST_CHARS: usize = 64;

/// The Jaro similarity of two byte strings of at most [`MAX_FAST_CHARS`] bytes.
fn jaro_bytes(a: &[u8], b: &[u8]) -> f64 {
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    if a.is_empty() || b.is_empty() {
        return 0.0;
    }
    // Characters match when equal and no further apart than half the longer length, less one.
    let window = (a.len().max(b.len()) / 2).saturating_sub(1);
    let (mut a_matched, mut b_matched) = ([false; MAX_FAST_CHARS], [false; MAX_FAST_CHARS]);
    let mut matches = 0usize;
    for (i, x) in a.iter().enumerate() {
        let (low, high) = (i.saturating_sub(window), (i + window + 1).min(b.len()));
        for j in low..high {
            if !b_matched[j] && b[j] == *x {
                a_matched[i] = true;
                b_matched[j] = true;
                matches += 1;
                break;
            }
        }
    }
    if matches == 0 {
        return 0.0;
    }
    // Half the matched characters that are out of order.
    let b_in_order = b.iter().zip(&b_matched[..b.len()]).filter(|(_, matched)| **matched).map(|(y, _)| y);
    let a_in_order = a.iter().zip(&a_matched[..a.len()]).filter(|(_, matched)| **matched).map(|(x, _)| x);
    let transpositions = a_in_order.zip(b_in_order).filter(|(x, y)| x != y).count() / 2;
    let matches = matches as f64;
    (matches / a.len() as f64 + matches / b.len() as f64 + (matches - transpositions as f64) / matches) / 3.0
}

/// Whether two texts are exactly one edit apart (a Damerau-Levenshtein distance of 1): one
/// character replaced, inserted or deleted, or two adjacent characters swapped. Linear in the
/// length; non-ASCII text is compared by characters through strsim.
pub fn one_edit_apart(a: &[u8], b: &[u8]) -> bool {
    if !a.is_ascii() || !b.is_ascii() {
        let (Ok(a), Ok(b)) = (std::str::from_utf8(a), std::str::from_utf8(b)) else { return false };
        return strsim::damerau_levenshtein(a, b) == 1;
    }
    let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
    let first = short.iter().zip(long).take_while(|(x, y)| x == y).count();
    match long.len() - short.len() {
        0 => {
            if first == short.len() {
                return false;
            }
            let last = short.len() - 1 - short.iter().rev().zip(long.iter().rev()).take_while(|(x, y)| x == y).count();
            // One replaced character, or two adjacent ones swapped.
            last == first || (last == first + 1 && short[first] == long[last] && short[last] == long[first])
        }
        // One character inserted in the longer.
        1 => short[first..] == long[first + 1..],
        _ => false,
    }
}

/// A postcode as compared: letters and digits only, uppercase (`sw1a 1aa` is `SW1A1AA`).
pub fn normalize_postcode(text: &str) -> String {
    text.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_uppercase()).take(16).collect()
}

/// A phone number as compared: its last nine digits (country and trunk prefixes differ between
/// systems for one number); `None` with fewer than six digits.
pub fn normalize_phone(text: &str) -> Option<String> {
    let digits: Vec<char> = text.chars().filter(char::is_ascii_digit).take(32).collect();
    (digits.len() >= 6).then(|| digits[digits.len().saturating_sub(9)..].iter().collect())
}

/// An email address as compared: trimmed and lowercase; `None` unless it has an `@`.
pub fn normalize_email(text: &str) -> Option<String> {
    let email = text.trim().to_lowercase();
    (email.contains('@') && email.len() <= 320).then_some(email)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_normalised_before_they_are_compared() {
        assert_eq!(normalize_name(" José-María O'Neil "), "josemariaoneil");
        assert_eq!(normalize_name("ÅSA"), "asa");
        assert_eq!(normalize_name(&"a".repeat(1000)).len(), MAX_NAME_CHARS, "bounded");
        assert_eq!(compare_names("Müller", "muller", nicknames()), NameLevel::Exact);
    }

    #[test]
    fn names_fall_into_graded_levels() {
        let n = nicknames();
        let cases = [
            ("robert", "robert", NameLevel::Exact),
            ("Bob", "Robert", NameLevel::Nickname),
            ("liz", "elizabeth", NameLevel::Nickname),
            ("katherine", "katharine", NameLevel::Close),
            ("jonathon", "jonathan", NameLevel::Close),
            ("smyth", "smith", NameLevel::Phonetic),
            ("catherine", "kathryn", NameLevel::Phonetic),
            ("stephens", "stevens", NameLevel::Phonetic),
            ("j", "james", NameLevel::Initial),
            ("k", "james", NameLevel::Different),
            ("maria", "marta", NameLevel::Similar),
            ("robert", "william", NameLevel::Different),
            ("", "william", NameLevel::Missing),
            ("-", "william", NameLevel::Missing),
        ];
        for (a, b, expected) in cases {
            assert_eq!(compare_names(a, b, n), expected, "{a} / {b}");
            assert_eq!(compare_names(b, a, n), expected, "symmetric: {b} / {a}");
        }
    }

    #[test]
    fn nickname_groups_are_read_from_the_shipped_table() {
        let table = Nicknames::parse("# comment\nwilliam,bill,will\n\nrobert, bob ,Rob\n");
        assert!(table.related("bill", "will"));
        assert!(table.related("rob", "robert"));
        assert!(!table.related("bill", "bob"));
        assert!(!table.related("bill", "unknown"));
        assert!(nicknames().related("peggy", "margaret"));
    }

    #[test]
    fn dates_fall_into_graded_levels() {
        let cases = [
            ("1984-03-07", "1984-03-07", DateLevel::Exact),
            ("19840307", "1984-03-07", DateLevel::Exact),
            ("1984-03-07", "1984-07-03", DateLevel::DayMonthSwapped),
            ("1984-03-07", "1984-03-08", DateLevel::OneTypo),
            ("1984-03-07", "1948-03-07", DateLevel::OneTypo),
            ("1984-03-07", "1984-11-21", DateLevel::SameYear),
            ("1984-03-07", "1990-01-01", DateLevel::Different),
            ("1984-03", "1984-03-07", DateLevel::Missing),
            ("", "1984-03-07", DateLevel::Missing),
            ("1984-03-07T10:00:00Z", "1984-03-07", DateLevel::Exact),
        ];
        for (a, b, expected) in cases {
            assert_eq!(compare_dates(a, b), expected, "{a} / {b}");
            assert_eq!(compare_dates(b, a), expected, "symmetric: {b} / {a}");
        }
    }

    #[test]
    fn contact_details_are_normalised_to_compare_exactly() {
        assert_eq!(normalize_postcode("sw1a 1aa"), "SW1A1AA");
        assert_eq!(normalize_phone("+61 (0)2 9876 5432").as_deref(), Some("298765432"));
        assert_eq!(normalize_phone("02 9876 5432"), normalize_phone("+61 2 9876 5432"));
        assert_eq!(normalize_phone("12345"), None);
        assert_eq!(normalize_email("  Jane.Doe@Example.ORG ").as_deref(), Some("jane.doe@example.org"));
        assert_eq!(normalize_email("not an address"), None);
    }

    /// Pairs of short strings over a small alphabet (so that they share characters, in and
    /// out of order), and their one-edit variants.
    fn pairs() -> Vec<(String, String)> {
        let mut random = crate::random::Random::new(7);
        let word = |random: &mut crate::random::Random| -> String {
            let length = random.below(12);
            (0..length).map(|_| (b'a' + random.below(5) as u8) as char).collect()
        };
        let mut pairs = Vec::new();
        for _ in 0..20_000 {
            let a = word(&mut random);
            let b = word(&mut random);
            let mut edited = a.clone().into_bytes();
            match random.below(3) {
                0 if !edited.is_empty() => {
                    let at = random.below(edited.len());
                    edited[at] = b'a' + random.below(5) as u8;
                }
                1 if edited.len() >= 2 => {
                    let at = random.below(edited.len() - 1);
                    edited.swap(at, at + 1);
                }
                _ => edited.insert(random.below(edited.len() + 1), b'c'),
            }
            pairs.push((a.clone(), b));
            pairs.push((a, String::from_utf8(edited).unwrap()));
        }
        for (a, b) in [("martha", "marhta"), ("dwayne", "duane"), ("dixon", "dicksonx"), ("jonathan", "jonathon")] {
            pairs.push((a.into(), b.into()));
        }
        pairs
    }

    #[test]
    fn jaro_winkler_on_bytes_is_strsims() {
        for (a, b) in pairs() {
            let (fast, reference) = (jaro_winkler(&a, &b), strsim::jaro_winkler(&a, &b));
            assert!((fast - reference).abs() < 1e-12, "{a:?} {b:?}: {fast} != {reference}");
        }
        assert!((jaro_winkler("martha", "marhta") - 0.9611).abs() < 1e-4);
        // Non-ASCII and long text take strsim's way.
        assert_eq!(jaro_winkler("zoë", "zoe"), strsim::jaro_winkler("zoë", "zoe"));
        let long = "a".repeat(MAX_FAST_CHARS + 1);
        assert_eq!(jaro_winkler(&long, "a"), strsim::jaro_winkler(&long, "a"));
    }

    #[test]
    fn one_edit_apart_is_a_damerau_distance_of_one() {
        for (a, b) in pairs() {
            let expected = strsim::damerau_levenshtein(&a, &b) == 1;
            assert_eq!(one_edit_apart(a.as_bytes(), b.as_bytes()), expected, "{a:?} {b:?}");
        }
        assert!(one_edit_apart("zoë".as_bytes(), "zoe".as_bytes()), "characters, not bytes");
        assert!(!one_edit_apart(b"19840307", b"19840307"));
        assert!(one_edit_apart(b"19840307", b"19480307"));
        assert!(!one_edit_apart(b"19840307", b"19480370"));
    }
}
