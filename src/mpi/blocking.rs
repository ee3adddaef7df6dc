//! Blocking: the keys under which a Patient is filed, so that it is scored only against the
//! Patients that share at least one key with it, never against all of them.
//!
//! A rule names fields (`profiles/mpi.rules.json`, `blocking`); a record's key for the rule is
//! the rule's name and the fields' values, and a record missing any of the fields has no key
//! for it. The identifier rule files a record under each of its identifiers.

use serde::Deserialize;

use super::record::PersonRecord;

/// A field a blocking rule reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockField {
    BirthDate,
    BirthYear,
    Given,
    GivenInitial,
    /// The Double Metaphone primary code of the given name.
    GivenSound,
    Family,
    FamilySound,
    Postcode,
    /// Each identifier (`system|value`): a record gets one key per identifier.
    Identifier,
}

/// One blocking rule.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BlockingRule {
    pub name: String,
    pub fields: Vec<BlockField>,
}

/// The MPI's rules as shipped in `profiles/mpi.rules.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Rules {
    pub blocking: Vec<BlockingRule>,
    /// The rules whose pairs train `m` (see `train`).
    pub training: Vec<BlockingRule>,
    pub comparisons: Vec<String>,
    pub thresholds: Thresholds,
    #[serde(default)]
    pub enterprise_identifier_systems: Vec<String>,
    #[serde(default)]
    pub survivorship: super::golden::Survivorship,
    /// The Jaro-Winkler bands of the graded levels.
    pub levels: super::compare::Bands,
    /// Patterns of comparison levels that never make an automatic MATCH, whatever their score:
    /// such pairs are at most a POSSIBLE_MATCH, for review.
    #[serde(default)]
    pub review_only: Vec<ReviewRule>,
}

/// A pattern of comparison levels (see [`Rules::review_only`]): it holds for a pair when each
/// field in `levels` compares at one of the levels listed for it, and no field in `unless` does
/// (level names as in `score::LEVEL_NAMES`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ReviewRule {
    pub name: String,
    pub levels: LevelSets,
    /// Evidence that overrides the pattern (a shared identifier, phone or email).
    #[serde(default)]
    pub unless: LevelSets,
}

/// Field name → level names.
pub type LevelSets = std::collections::BTreeMap<String, Vec<String>>;

/// Whether `comparison` has `field` at one of `levels`.
fn at_level(comparison: &super::score::Comparison, field: &str, levels: &[String]) -> bool {
    use super::score::{FIELDS, LEVEL_NAMES};
    let Some(index) = FIELDS.iter().position(|name| *name == field) else { return false };
    comparison.levels[index].is_some_and(|level| levels.iter().any(|name| LEVEL_NAMES[index][level as usize] == name))
}

impl ReviewRule {
    /// Whether `comparison` fits the pattern.
    pub fn holds(&self, comparison: &super::score::Comparison) -> bool {
        self.levels.iter().all(|(field, levels)| at_level(comparison, field, levels))
            && !self.unless.iter().any(|(field, levels)| at_level(comparison, field, levels))
    }
}

/// Match probabilities that make links: at least `match` an automatic MATCH, at least
/// `possible` a POSSIBLE_MATCH for review.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Thresholds {
    #[serde(rename = "match")]
    pub matched: f64,
    pub possible: f64,
}

impl Rules {
    /// The rules in `profiles/`, checked: every rule names at least one field, and the
    /// thresholds are probabilities with `possible` below `match`.
    pub fn shipped() -> Rules {
        let rules: Rules = serde_json::from_str(include_str!("../../profiles/mpi.rules.json"))
            .expect("profiles/mpi.rules.json is valid");
        assert!(
            rules.blocking.iter().chain(&rules.training).all(|rule| !rule.fields.is_empty()),
            "a blocking rule without fields"
        );
        for rule in &rules.review_only {
            for (field, levels) in rule.levels.iter().chain(&rule.unless) {
                let index = super::score::FIELDS.iter().position(|name| name == field);
                let index = index.unwrap_or_else(|| panic!("review rule {}: no field {field}", rule.name));
                for level in levels {
                    assert!(
                        super::score::LEVEL_NAMES[index].contains(&level.as_str()),
                        "review rule {}: {field} has no level {level}",
                        rule.name
                    );
                }
            }
        }
        let levels = rules.levels;
        assert!(
            [levels.name_close, levels.name_similar, levels.address_close]
                .iter()
                .all(|band| (0.0..=1.0).contains(band))
                && levels.name_similar <= levels.name_close,
            "levels: Jaro-Winkler bands are in [0, 1], name_similar at most name_close"
        );
        let thresholds = rules.thresholds;
        assert!(
            0.0 < thresholds.possible && thresholds.possible < thresholds.matched && thresholds.matched < 1.0,
            "thresholds must satisfy 0 < possible < match < 1"
        );
        rules
    }
}

/// Most keys one record is filed under (each identifier makes one; the bound holds whatever a
/// record lists).
pub const MAX_KEYS: usize = 32;

/// The keys of `record` under `rules`, each `rule name` + `\u{1f}` + the values joined by
/// `\u{1f}` (a separator no normalised value contains).
pub fn keys(rules: &[BlockingRule], record: &PersonRecord) -> Vec<String> {
    let mut keys = Vec::new();
    for rule in rules {
        let mut values: Vec<Vec<String>> = Vec::with_capacity(rule.fields.len());
        for field in &rule.fields {
            let found = field_values(*field, record);
            if found.is_empty() {
                values.clear();
                break;
            }
            values.push(found);
        }
        if values.is_empty() {
            continue;
        }
        // Every combination of the fields' values (one field, the identifier, can have several).
        let mut combinations = vec![rule.name.clone()];
        for options in values {
            combinations = combinations
                .iter()
                .flat_map(|prefix| options.iter().map(move |value| format!("{prefix}\u{1f}{value}")))
                .take(MAX_KEYS)
                .collect();
        }
        for key in combinations {
            if keys.len() == MAX_KEYS {
                return keys;
            }
            if !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

fn field_values(field: BlockField, record: &PersonRecord) -> Vec<String> {
    let nonempty = |text: &str| if text.is_empty() { Vec::new() } else { vec![text.to_owned()] };
    let date = record.birth_date.map(|digits| String::from_utf8_lossy(&digits).into_owned());
    match field {
        BlockField::BirthDate => date.into_iter().collect(),
        BlockField::BirthYear => date.map(|date| date[..4].to_owned()).into_iter().collect(),
        BlockField::Given => nonempty(&record.given),
        BlockField::GivenInitial => nonempty(&record.given[..record.given.len().min(1)]),
        BlockField::GivenSound => {
            nonempty(&record.given_sound.0).into_iter().filter(|_| !record.given.is_empty()).collect()
        }
        BlockField::Family => nonempty(&record.family),
        BlockField::FamilySound => {
            nonempty(&record.family_sound.0).into_iter().filter(|_| !record.family.is_empty()).collect()
        }
        BlockField::Postcode => nonempty(&record.postcode),
        BlockField::Identifier => {
            record.identifiers.iter().map(|(system, value)| format!("{system}|{value}")).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(value: serde_json::Value) -> PersonRecord {
        PersonRecord::from_patient(&value)
    }

    #[test]
    fn the_shipped_rules_load() {
        let rules = Rules::shipped();
        assert_eq!(rules.blocking.len(), 5);
        assert!(rules.thresholds.possible < rules.thresholds.matched);
    }

    #[test]
    fn records_that_differ_by_a_typo_share_a_key_and_strangers_do_not() {
        let rules = Rules::shipped().blocking;
        let jon = record(json!({"name": [{"family": "Smith", "given": ["Jonathan"]}], "birthDate": "1984-03-07",
            "address": [{"postalCode": "2000"}]}));
        let typo = record(json!({"name": [{"family": "Smyth", "given": ["Jonathon"]}], "birthDate": "1984-03-07"}));
        let stranger = record(json!({"name": [{"family": "Brown", "given": ["Alice"]}], "birthDate": "1990-01-01"}));
        let (a, b, c) = (keys(&rules, &jon), keys(&rules, &typo), keys(&rules, &stranger));
        assert!(a.iter().any(|key| b.contains(key)), "{a:?} {b:?}");
        assert!(!a.iter().any(|key| c.contains(key)), "{a:?} {c:?}");
        assert!(a.iter().any(|key| key.starts_with("postcode_given\u{1f}2000\u{1f}jonathan")), "{a:?}");
        assert!(!b.iter().any(|key| key.starts_with("postcode_given")), "no postcode, no key for that rule");
    }

    #[test]
    fn each_identifier_is_a_key_and_keys_are_bounded() {
        let rules = Rules::shipped().blocking;
        let listed = record(
            json!({"identifier": [{"system": "http://ssn", "value": "1"}, {"system": "http://mrn", "value": "2"}]}),
        );
        let found = keys(&rules, &listed);
        assert_eq!(found, ["identifier\u{1f}http://ssn|1", "identifier\u{1f}http://mrn|2"]);
        let wide =
            vec![BlockingRule { name: "all".into(), fields: vec![BlockField::Identifier, BlockField::Identifier] }];
        let many = record(
            json!({"identifier": (0..10).map(|n| json!({"system": "http://x", "value": n.to_string()})).collect::<Vec<_>>()}),
        );
        assert_eq!(keys(&wide, &many).len(), MAX_KEYS, "combinations are bounded");
    }
}
