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

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::compare::{DateLevel, NameLevel, Nicknames, compare_coded_names, compare_date_digits};
use super::record::PersonRecord;

/// The fields a pair is compared on, in the order of [`Comparison::levels`].
pub const FIELDS: [&str; 10] =
    ["given", "family", "birth_date", "sex", "address", "city", "postcode", "phone", "email", "identifier"];

/// The index of a field in [`FIELDS`].
pub fn field_index(name: &str) -> usize {
    FIELDS.iter().position(|field| *field == name).expect("a compared field")
}

/// The names of each field's levels, best first (a missing value has no level).
pub const LEVEL_NAMES: [&[&str]; FIELDS.len()] = [
    &NAME_LEVELS,
    &NAME_LEVELS,
    &["exact", "day_month_swapped", "one_typo", "same_year", "different"],
    &["same", "different"],
    &["exact", "close", "different"],
    &["exact", "close", "different"],
    &["exact", "different"],
    &["shared", "different"],
    &["shared", "different"],
    &["shared", "one_typo", "different"],
];

const NAME_LEVELS: [&str; 7] = ["exact", "nickname", "close", "phonetic", "similar", "initial", "different"];

/// Levels per field (the largest of any field: names have 7 besides missing).
pub const MAX_LEVELS: usize = 7;

/// How many levels each field has (besides missing).
pub const LEVEL_COUNTS: [usize; FIELDS.len()] = {
    let mut counts = [0; FIELDS.len()];
    let mut field = 0;
    while field < FIELDS.len() {
        counts[field] = LEVEL_NAMES[field].len();
        field += 1;
    }
    counts
};

/// The level of each field, as an index (0 agrees most), or `None` when a value is missing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Comparison {
    pub levels: [Option<u8>; FIELDS.len()],
}

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

/// Exact (0), close by Jaro-Winkler (1) or different (2); missing when either is empty.
fn text_index(a: &str, b: &str) -> Option<u8> {
    if a.is_empty() || b.is_empty() {
        None
    } else if a == b {
        Some(0)
    } else if super::compare::jaro_winkler(a, b) >= super::compare::bands().address_close {
        Some(1)
    } else {
        Some(2)
    }
}

/// Any shared value (0) or none (1); missing when either list is empty.
fn shared_index<T: PartialEq>(a: &[T], b: &[T]) -> Option<u8> {
    if a.is_empty() || b.is_empty() { None } else { Some(u8::from(!a.iter().any(|value| b.contains(value)))) }
}

/// Identifiers are compared system by system: a shared value (0); values of a shared system
/// one edit apart (1, a typo); values of a shared system that differ (2). Records with no
/// system in common say nothing (each provider numbers its own patients).
fn identifier_index(a: &[(String, String)], b: &[(String, String)]) -> Option<u8> {
    let mut best: Option<u8> = None;
    for (system, value) in a {
        for (other_system, other_value) in b {
            if system != other_system {
                continue;
            }
            let level = if value == other_value {
                0
            } else if value.len() >= 4 && super::compare::one_edit_apart(value.as_bytes(), other_value.as_bytes()) {
                1
            } else {
                2
            };
            best = Some(best.map_or(level, |best: u8| best.min(level)));
        }
    }
    best
}

/// Compares two records field by field. The city and postcode are part of the address: when
/// the address lines agree (exactly or closely) they are not compared on their own, as their
/// agreement would count the same evidence two more times. When the lines differ they are, and
/// training estimates their levels among such pairs only: after a typo in the street they
/// mostly agree, after a move mostly not, and the data says which is more common.
pub fn compare_pair(a: &PersonRecord, b: &PersonRecord, nicknames: &Nicknames) -> Comparison {
    let mut comparison = Comparison {
        levels: [
            name_index(compare_coded_names(&a.given, &a.given_sound, &b.given, &b.given_sound, nicknames)),
            name_index(compare_coded_names(&a.family, &a.family_sound, &b.family, &b.family_sound, nicknames)),
            date_index(compare_date_digits(a.birth_date, b.birth_date)),
            match (&a.sex, &b.sex) {
                (Some(x), Some(y)) => Some(u8::from(x != y)),
                _ => None,
            },
            text_index(&a.address, &b.address),
            text_index(&a.city, &b.city),
            exact_index(&a.postcode, &b.postcode),
            shared_index(&a.phones, &b.phones),
            shared_index(&a.emails, &b.emails),
            identifier_index(&a.identifiers, &b.identifiers),
        ],
    };
    if matches!(comparison.levels[ADDRESS], Some(0 | 1)) {
        comparison.levels[CITY] = None;
        comparison.levels[POSTCODE] = None;
    }
    comparison
}

const ADDRESS: usize = 4;
const CITY: usize = 5;
const POSTCODE: usize = 6;

/// Whether `field` is compared only when another disagrees (the city and postcode, when the
/// address lines do): its disagreement may then be the usual thing among matches (after a
/// move), which says nothing against the estimate.
pub fn is_conditional(field: usize) -> bool {
    field == CITY || field == POSTCODE
}

/// How often each given and family name occurs among the records trained on, so that sharing
/// a rare name weighs more than sharing a common one (term-frequency adjustment).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TermFrequencies {
    /// Records counted.
    pub records: u64,
    /// Name → records with it, for names on at least two records (at most [`MAX_TERMS`] per
    /// field, the most frequent). A name not listed counts as one record.
    pub given: HashMap<String, u32>,
    pub family: HashMap<String, u32>,
}

/// Most names kept per field in [`TermFrequencies`].
pub const MAX_TERMS: usize = 20_000;

/// The smallest `u` a term-frequency adjustment uses: it bounds the evidence of sharing a
/// name seen once.
pub const TF_MIN_U: f64 = 1e-4;

impl TermFrequencies {
    /// Counts the names of `records`.
    pub fn count<'a>(records: impl IntoIterator<Item = &'a PersonRecord>) -> TermFrequencies {
        let (mut given, mut family) = (HashMap::<String, u32>::new(), HashMap::<String, u32>::new());
        let mut total = 0u64;
        for record in records {
            total += 1;
            for (counts, name) in [(&mut given, &record.given), (&mut family, &record.family)] {
                if !name.is_empty() {
                    *counts.entry(name.clone()).or_default() += 1;
                }
            }
        }
        TermFrequencies { records: total, given: most_frequent(given), family: most_frequent(family) }
    }

    /// The share of records that have `name` in the field (`given` or else `family`).
    fn frequency(&self, given: bool, name: &str) -> f64 {
        let table = if given { &self.given } else { &self.family };
        let count = table.get(name).copied().unwrap_or(1);
        f64::from(count) / self.records.max(1) as f64
    }
}

fn most_frequent(counts: HashMap<String, u32>) -> HashMap<String, u32> {
    let mut listed: Vec<(String, u32)> = counts.into_iter().filter(|(_, count)| *count >= 2).collect();
    listed.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    listed.truncate(MAX_TERMS);
    listed.into_iter().collect()
}

/// The learned probabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parameters {
    /// The probability that two records drawn at random are the same person.
    pub prior: f64,
    /// By field, then level: `(m, u)`.
    pub levels: Vec<Vec<(f64, f64)>>,
    #[serde(default)]
    pub term_frequencies: TermFrequencies,
}

/// Probabilities are kept away from 0 and 1 so that no level weighs infinitely.
const FLOOR: f64 = 1e-6;

/// Weights are bounded so that a probability is always a number.
const MAX_WEIGHT: f64 = 1000.0;

impl Parameters {
    /// Every level weighs nothing (m = u), with `prior`.
    pub fn neutral(prior: f64) -> Parameters {
        Parameters {
            prior,
            levels: LEVEL_COUNTS.iter().map(|&count| vec![(1.0 / count as f64, 1.0 / count as f64); count]).collect(),
            term_frequencies: TermFrequencies::default(),
        }
    }

    /// The match weight of a comparison (log2 odds), without term frequencies.
    pub fn weight(&self, comparison: &Comparison) -> f64 {
        let prior = self.prior.clamp(FLOOR, 1.0 - FLOOR);
        let mut weight = (prior / (1.0 - prior)).log2();
        for (field, level) in comparison.levels.iter().enumerate() {
            let Some(level) = level else { continue };
            if let Some(&(m, u)) = self.levels.get(field).and_then(|levels| levels.get(*level as usize)) {
                weight += (m.max(FLOOR) / u.max(FLOOR)).log2();
            }
        }
        weight.clamp(-MAX_WEIGHT, MAX_WEIGHT)
    }

    /// The match weight of the pair `a`, `b` compared as `comparison`: [`Parameters::weight`],
    /// with an exact given or family name weighed by how rare that name is (its `u` is the
    /// name's frequency instead of the average over all names).
    pub fn pair_weight(&self, a: &PersonRecord, comparison: &Comparison) -> f64 {
        let mut weight = self.weight(comparison);
        if self.term_frequencies.records > 0 {
            for (field, name, given) in [(0, &a.given, true), (1, &a.family, false)] {
                if comparison.levels[field] == Some(0) {
                    let average_u = self.levels[field][0].1.max(FLOOR);
                    let name_u = self.term_frequencies.frequency(given, name).max(TF_MIN_U);
                    weight += (average_u / name_u).log2();
                }
            }
        }
        weight.clamp(-MAX_WEIGHT, MAX_WEIGHT)
    }

    /// The match probability of a comparison (without term frequencies).
    pub fn probability(&self, comparison: &Comparison) -> f64 {
        probability_of(self.weight(comparison))
    }
}

impl Parameters {
    /// The parameters as people read them, and as `profiles/mpi.parameters.json` holds the
    /// defaults: the prior, then `m`, `u` and the weight `log2(m/u)` of each field's levels by
    /// name, and how many names the term frequencies list.
    pub fn describe(&self) -> Value {
        let mut fields = Map::new();
        for (field, levels) in self.levels.iter().enumerate() {
            let mut described = Map::new();
            for (level, &(m, u)) in levels.iter().enumerate() {
                let weight = (m.max(FLOOR) / u.max(FLOOR)).log2();
                described.insert(LEVEL_NAMES[field][level].to_owned(), json!({"m": m, "u": u, "weight": weight}));
            }
            fields.insert(FIELDS[field].to_owned(), Value::Object(described));
        }
        json!({
            "prior": self.prior,
            "fields": fields,
            "term_frequencies": {"records": self.term_frequencies.records,
                "given_names": self.term_frequencies.given.len(), "family_names": self.term_frequencies.family.len()},
        })
    }

    /// Reads parameters in the form [`Parameters::describe`] writes (term frequencies are not
    /// read: they are the trained population's). Every field and level must be there, with
    /// `m` and `u` probabilities.
    pub fn from_description(description: &Value) -> Result<Parameters, String> {
        let prior = description["prior"].as_f64().filter(|p| *p > 0.0 && *p < 1.0).ok_or("prior: not in (0, 1)")?;
        let mut levels = Vec::with_capacity(FIELDS.len());
        for (field, name) in FIELDS.iter().enumerate() {
            let mut field_levels = Vec::with_capacity(LEVEL_COUNTS[field]);
            for level in LEVEL_NAMES[field] {
                let described = &description["fields"][name][level];
                let probability = |which: &str| {
                    described[which]
                        .as_f64()
                        .filter(|p| (0.0..=1.0).contains(p))
                        .ok_or_else(|| format!("{name}.{level}.{which}: not a probability"))
                };
                field_levels.push((probability("m")?, probability("u")?));
            }
            levels.push(field_levels);
        }
        Ok(Parameters { prior, levels, term_frequencies: TermFrequencies::default() })
    }

    /// The parameters the index starts with before it is trained (`profiles/mpi.parameters.json`).
    pub fn shipped() -> Parameters {
        static SHIPPED: std::sync::LazyLock<Parameters> = std::sync::LazyLock::new(|| {
            let text = include_str!("../../profiles/mpi.parameters.json");
            let value: Value = serde_json::from_str(text).expect("profiles/mpi.parameters.json is JSON");
            Parameters::from_description(&value).expect("profiles/mpi.parameters.json holds every level")
        });
        SHIPPED.clone()
    }
}

/// The probability of a match weight (log2 odds).
pub fn probability_of(weight: f64) -> f64 {
    let odds = weight.exp2();
    odds / (1.0 + odds)
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
            "gender": "male", "address": [{"line": ["12 Main Street"], "postalCode": "2000"}],
            "identifier": [{"system": "http://mrn", "value": "7"}]}));
        let comparison = compare_pair(&a, &b, nicknames());
        assert_eq!(
            comparison.levels,
            [Some(1), Some(3), Some(1), Some(0), Some(1), None, None, None, None, None],
            "nickname, phonetic, swapped day and month, same sex, close address (which stands for the \
             postcode); the rest missing (identifiers of different systems say nothing)"
        );
        // Address lines that differ leave the city and postcode to be compared.
        let moved = record(json!({"address": [{"line": ["7 Other Rd"], "city": "Perth", "postalCode": "2000"}]}));
        let levels = compare_pair(&a, &moved, nicknames()).levels;
        assert_eq!((levels[4], levels[5], levels[6]), (Some(2), None, Some(0)));
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
        parameters.levels[field_index("birth_date")][0] = (0.9, 0.009);
        let mut agrees = nothing;
        agrees.levels[field_index("birth_date")] = Some(0);
        let gained = parameters.weight(&agrees) - parameters.weight(&nothing);
        assert!((gained - 100f64.log2()).abs() < 1e-9, "{gained}");
        assert!(parameters.probability(&agrees) > parameters.probability(&nothing));
        // Probabilities of 0 and 1 do not make infinite weights.
        parameters.levels[field_index("identifier")][0] = (1.0, 0.0);
        let mut identified = nothing;
        identified.levels[field_index("identifier")] = Some(0);
        assert!(parameters.weight(&identified).is_finite());
        assert!(parameters.probability(&identified) <= 1.0);
    }

    #[test]
    fn identifiers_compare_system_by_system() {
        let of = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs.iter().map(|(system, value)| (system.to_string(), value.to_string())).collect()
        };
        let ssn = of(&[("http://ssn", "123456"), ("http://mrn-a", "1")]);
        assert_eq!(identifier_index(&ssn, &of(&[("http://ssn", "123456")])), Some(0));
        assert_eq!(identifier_index(&ssn, &of(&[("http://ssn", "123465")])), Some(1), "a transposition");
        assert_eq!(identifier_index(&ssn, &of(&[("http://ssn", "999999")])), Some(2));
        assert_eq!(identifier_index(&ssn, &of(&[("http://mrn-b", "1")])), None, "no system in common");
        assert_eq!(identifier_index(&ssn, &[]), None);
    }

    #[test]
    fn sharing_a_rare_name_weighs_more_than_sharing_a_common_one() {
        let smith =
            |given: &str| record(json!({"name": [{"family": "Smith", "given": [given]}], "birthDate": "1984-03-07"}));
        let mut people: Vec<PersonRecord> = (0..100).map(|_| smith("John")).collect();
        people.push(smith("Zebedee"));
        let mut parameters = Parameters::neutral(0.001);
        parameters.levels[0][0] = (0.9, 0.02);
        parameters.term_frequencies = TermFrequencies::count(&people);
        assert_eq!(parameters.term_frequencies.given.get("john"), Some(&100));
        assert_eq!(parameters.term_frequencies.given.get("zebedee"), None, "seen once: not listed");
        let comparison = compare_pair(&people[0], &people[1], nicknames());
        let common = parameters.pair_weight(&people[0], &comparison);
        let rare = parameters.pair_weight(&people[100], &compare_pair(&people[100], &people[100], nicknames()));
        assert!(rare > common + 5.0, "rare {rare} common {common}");
        assert!(common < parameters.weight(&comparison), "a name on every record is weak evidence");
    }
}
