//! Logical resource ids.

use std::fmt;

use super::{FhirError, IssueCode};

/// A FHIR logical id: 1 to 64 characters from `[A-Za-z0-9-.]`, but not `.` or `..`.
///
/// R4's regex allows `.` and `..`, but as a URL path segment they mean "this" and "parent"
/// directory (RFC 3986 removes them), so `Patient/..` could never be read back.
///
/// Only [`Id::parse`] and [`Id::generate`] create one, so an `Id` never contains a byte that
/// would need escaping in a storage key or a URL.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(String);

impl Id {
    pub const MAX_LEN: usize = 64;

    pub fn parse(text: &str) -> Result<Self, FhirError> {
        let valid_char = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
        if matches!(text, "." | "..") {
            return Err(FhirError::incorrect(
                IssueCode::Value,
                format!("'{text}' is not a usable resource id: it is a relative path segment in URLs"),
            ));
        }
        if text.is_empty() || text.len() > Self::MAX_LEN || !text.chars().all(valid_char) {
            return Err(FhirError::incorrect(
                IssueCode::Value,
                format!(
                    "'{}' is not a valid resource id (1-64 characters of A-Z, a-z, 0-9, '-' and '.')",
                    text.chars().take(80).collect::<String>()
                ),
            ));
        }
        Ok(Id(text.to_owned()))
    }

    /// A new server-assigned id: 17 characters of base32 (`0-9a-v`) holding a millisecond
    /// timestamp (43 bits, good until the year 2248) and a 42-bit counter, the two fields of a
    /// version 7 UUID that make it unique. The counter is seeded randomly each millisecond and
    /// incremented within it, so the ids one process makes are unique and increasing (ids
    /// created close together sit close together in the storage B-trees); across processes two
    /// ids collide only if they fall in the same millisecond and the same counter value.
    /// Shorter than the 36 characters of a UUID because every index entry repeats the id.
    pub fn generate() -> Self {
        let bits = uuid::Uuid::now_v7().as_u128();
        let millis = (bits >> 80) & ((1 << 43) - 1);
        let counter_high = (bits >> 64) & 0xFFF; // rand_a: the counter's top 12 bits
        let counter_low = (bits >> 32) & 0x3FFF_FFFF; // rand_b's top 30 bits: the rest
        let packed = (millis << 42) | (counter_high << 30) | counter_low;
        const ALPHABET: &[u8; 32] = b"0123456789abcdefghijklmnopqrstuv";
        let text = (0..17).rev().map(|digit| ALPHABET[((packed >> (5 * digit)) & 31) as usize] as char).collect();
        Id(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Id({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_r4_rule() {
        assert!(Id::parse("example").is_ok());
        assert!(Id::parse("a.b-C9").is_ok());
        assert!(Id::parse(&"x".repeat(64)).is_ok());
        assert!(Id::parse("...").is_ok());
        for bad in ["", ".", "..", "has space", "slash/", "under_score", &"x".repeat(65), "ümlaut"] {
            assert!(Id::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(Id::parse(Id::generate().as_str()).is_ok());
        let ids: Vec<Id> = (0..10_000).map(|_| Id::generate()).collect();
        assert!(ids.iter().all(|id| id.as_str().len() == 17));
        assert!(ids.windows(2).all(|pair| pair[0].as_str() < pair[1].as_str()), "unique and increasing");
    }
}
