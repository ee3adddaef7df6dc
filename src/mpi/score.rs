//! The Fellegi-Sunter score of a pair of records.
//!
//! Each compared field of a pair falls into one level ([`compare_pair`]). For each field and
//! level, `m` is the probability of that level among pairs that are the same person, `u` among
//! pairs that are not; the pair's match weight is `log2(λ / (1 - λ))` (the prior odds, `λ` the
//! share of matches among candidate pairs) plus, for every field, `log2(m / u)` of its level. A
//! missing value weighs nothing. The match probability is `2^w / (1 + 2^w)`.
//!
//! The parameters are learned from the data (not built yet: `u` from random pairs, `m` by
//! expectation-maximisation per blocking rule, as Splink does); [`Parameters::neutral`] is the
//! starting point, which weighs every level at 1.

use serde::{Deserialize, Serialize};

use super::compare::{DateLevel, NameLevel, Nicknames, compare_date_digits, compare_normalized_names};
use super::record::PersonRecord;

/// The fields a pair is compared on, in the order of [`Comparison::levels`].
pub const FIELDS: [&str; 9] =
    ["given", "family", "birth_date", "sex", "address", "postcode", "phone", "email", "identifier"];

/// Levels per field (the largest of any field: names have 7 besides missing).
pub const MAX_LEVELS: usize = 7;

/// The level of each field, as an index (0 agrees most), or `None` when a value is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Comparison {
    pub levels: [Option<u8>; FIELDS.len()],
}

/// How many levels each field has (besides missing).
pub const LEVEL_COUNTS: [usize; FIELDS.len()] = [7, 7, 5, 2, 3, 2, 2, 2, 2];

fn name_index(level: NameLevel) -> Option<u8> {
    match level {
        NameLevel::Exact => Some(0),
        NameLevel::Nickname => Some(1),
        NameLevel::Close => Some(2),
        NameLevel::Phonetic => Some(3),
        NameLevel::Similar => Some(4),
        NameLevel::Initial => Some(5),
        NameLevel::Different => Some(6),
        NameLevel::Missing => None,
    }
}

fn date_index(level: DateLevel) -> Option<u8> {
    match level {
        DateLevel::Exact => Some(0),
        DateLevel::DayMonthSwapped => Some(1),
        DateLevel::OneTypo => Some(2),
        DateLevel::SameYear => Some(3),
        DateLevel::Different => Some(4),
        DateLevel::Missing => None,
    }
}

/// Exact (0) or different (1); missing when either is empty.
fn exact_index(a: &str, b: &str) -> Option<u8> {
    if a.is_empty() || b.is_empty() { None } else { Some(u8::from(a != b)) }
}

/// Any shared value (0) or none (1); missing when either list is empty.
fn shared_index<T: PartialEq>(a: &[T], b: &[T]) -> Option<u8> {
    if a.is_empty() || b.is_empty() { None } else { Some(u8::from(!a.iter().any(|value| b.contains(value)))) }
}

/// Compares two records field by field.
pub fn compare_pair(a: &PersonRecord, b: &PersonRecord, nicknames: &Nicknames) -> Comparison {
    let address = if a.address.is_empty() || b.address.is_empty() {
        None
    } else if a.address == b.address {
        Some(0)
    } else if strsim::jaro_winkler(&a.address, &b.address) >= 0.9 {
        Some(1)
    } else {
        Some(2)
    };
    Comparison {
        levels: [
            name_index(compare_normalized_names(&a.given, &b.given, nicknames)),
            name_index(compare_normalized_names(&a.family, &b.family, nicknames)),
            date_index(compare_date_digits(a.birth_date, b.birth_date)),
            match (&a.sex, &b.sex) {
                (Some(x), Some(y)) => Some(u8::from(x != y)),
                _ => None,
            },
            address,
            exact_index(&a.postcode, &b.postcode),
            shared_index(&a.phones, &b.phones),
            shared_index(&a.emails, &b.emails),
            shared_index(&a.identifiers, &b.identifiers),
        ],
    }
}

/// The learned probabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parameters {
    /// The share of matches among candidate pairs.
    pub prior: f64,
    /// By field, then level: `(m, u)`.
    pub levels: Vec<Vec<(f64, f64)>>,
}

/// Probabilities are kept away from 0 and 1 so that no level weighs infinitely.
const FLOOR: f64 = 1e-6;

impl Parameters {
    /// Every level weighs nothing (m = u), with `prior`.
    pub fn neutral(prior: f64) -> Parameters {
        Parameters {
            prior,
            levels: LEVEL_COUNTS.iter().map(|&count| vec![(1.0 / count as f64, 1.0 / count as f64); count]).collect(),
        }
    }

    /// The match weight of a comparison (log2 odds).
    pub fn weight(&self, comparison: &Comparison) -> f64 {
        let prior = self.prior.clamp(FLOOR, 1.0 - FLOOR);
        let mut weight = (prior / (1.0 - prior)).log2();
        for (field, level) in comparison.levels.iter().enumerate() {
            let Some(level) = level else { continue };
            if let Some(&(m, u)) = self.levels.get(field).and_then(|levels| levels.get(*level as usize)) {
                weight += (m.max(FLOOR) / u.max(FLOOR)).log2();
            }
        }
        weight
    }

    /// The match probability of a comparison.
    pub fn probability(&self, comparison: &Comparison) -> f64 {
        let odds = self.weight(comparison).clamp(-1000.0, 1000.0).exp2();
        odds / (1.0 + odds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mpi::compare::nicknames;
    use serde_json::json;

    fn record(value: serde_json::Value) -> PersonRecord {
        PersonRecord::from_patient(&value)
    }

    #[test]
    fn a_pair_is_compared_field_by_field_and_missing_values_are_none() {
        let a = record(json!({"name": [{"family": "Smith", "given": ["Robert"]}], "birthDate": "1984-03-07",
            "gender": "male", "address": [{"line": ["12 Main St"], "postalCode": "2000"}],
            "identifier": [{"system": "http://ssn", "value": "1"}]}));
        let b = record(json!({"name": [{"family": "Smyth", "given": ["Bob"]}], "birthDate": "1984-07-03",
            "gender": "male", "address": [{"line": ["12 Main Street"], "postalCode": "2000"}]}));
        let comparison = compare_pair(&a, &b, nicknames());
        assert_eq!(
            comparison.levels,
            [Some(1), Some(3), Some(1), Some(0), Some(1), Some(0), None, None, None],
            "nickname, phonetic, swapped day and month, same sex, close address, same postcode; the rest missing"
        );
        for (field, level) in comparison.levels.iter().enumerate() {
            assert!(level.is_none_or(|level| (level as usize) < LEVEL_COUNTS[field]), "{field}");
        }
        assert!(LEVEL_COUNTS.iter().all(|&count| count <= MAX_LEVELS));
    }

    #[test]
    fn weights_add_up_the_evidence_of_each_field() {
        let mut parameters = Parameters::neutral(0.01);
        let nothing = Comparison { levels: [None; FIELDS.len()] };
        assert!((parameters.weight(&nothing) - (0.01f64 / 0.99).log2()).abs() < 1e-9, "only the prior");
        // Agreeing on birth date is 100 times likelier among matches.
        parameters.levels[2][0] = (0.9, 0.009);
        let mut agrees = nothing;
        agrees.levels[2] = Some(0);
        let gained = parameters.weight(&agrees) - parameters.weight(&nothing);
        assert!((gained - 100f64.log2()).abs() < 1e-9, "{gained}");
        assert!(parameters.probability(&agrees) > parameters.probability(&nothing));
        // Probabilities of 0 and 1 do not make infinite weights.
        parameters.levels[8][0] = (1.0, 0.0);
        let mut identified = nothing;
        identified.levels[8] = Some(0);
        assert!(parameters.weight(&identified).is_finite());
        assert!(parameters.probability(&identified) <= 1.0);
    }
}
