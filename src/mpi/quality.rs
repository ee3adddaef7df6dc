//! Measuring the matcher against a known truth: which candidate pairs the blocking rules
//! propose, which of them score as matches, and how that compares with the pairs that are the
//! same person (precision, recall, F1, and the blocking rules' own recall).

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::matcher::Matcher;
use super::record::PersonRecord;
use super::train::rule_pairs;

/// Percentiles of a distribution of counts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Distribution {
    pub p50: usize,
    pub p90: usize,
    pub p99: usize,
    pub max: usize,
}

impl Distribution {
    pub fn of(mut values: Vec<usize>) -> Distribution {
        values.sort_unstable();
        let at = |share: f64| {
            if values.is_empty() { 0 } else { values[((values.len() - 1) as f64 * share).round() as usize] }
        };
        Distribution { p50: at(0.5), p90: at(0.9), p99: at(0.99), max: values.last().copied().unwrap_or(0) }
    }
}

/// What [`evaluate`] measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Evaluation {
    pub records: usize,
    /// Pairs of records of one person.
    pub true_pairs: usize,
    pub candidate_pairs: usize,
    /// The share of true pairs the blocking rules propose.
    pub blocking_recall: f64,
    /// The same, rule by rule.
    pub rule_recall: Vec<(String, f64)>,
    pub candidates_per_record: Distribution,
    /// Pairs at or above the match threshold, and how many of them are true.
    pub matched: usize,
    pub correct: usize,
    /// Pairs between the thresholds (for review).
    pub possible: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

/// Scores every candidate pair of `records` as `matcher` does (its blocking rules, parameters,
/// review rules and enterprise identifiers) and compares the pairs at or above the match
/// threshold with the truth: `people[i]` is the person of `records[i]` (`None`: unknown, in no
/// true pair).
pub fn evaluate(records: &[PersonRecord], people: &[Option<u32>], matcher: &Matcher) -> Evaluation {
    let rules = &matcher.rules.blocking;
    let thresholds = matcher.rules.thresholds;
    let mut by_person: HashMap<u32, Vec<u32>> = HashMap::new();
    for (index, person) in people.iter().enumerate() {
        if let Some(person) = person {
            by_person.entry(*person).or_default().push(index as u32);
        }
    }
    let truth: HashSet<(u32, u32)> = by_person
        .values()
        .flat_map(|members| {
            members
                .iter()
                .enumerate()
                .flat_map(move |(position, &a)| members[position + 1..].iter().map(move |&b| (a, b)))
        })
        .collect();
    let recall_of = |pairs: &[(u32, u32)]| {
        let found = pairs.iter().filter(|pair| truth.contains(pair)).count();
        found as f64 / truth.len().max(1) as f64
    };
    let mut candidates = Vec::new();
    let mut rule_recall = Vec::new();
    for rule in rules {
        let pairs = rule_pairs(rule, records);
        rule_recall.push((rule.name.clone(), recall_of(&pairs)));
        candidates.extend(pairs);
    }
    candidates.sort_unstable();
    candidates.dedup();
    let mut per_record = vec![0usize; records.len()];
    let (mut matched, mut correct, mut possible) = (0, 0, 0);
    for &(a, b) in &candidates {
        per_record[a as usize] += 1;
        per_record[b as usize] += 1;
        let probability = matcher.probability(&records[a as usize], &records[b as usize]);
        if probability >= thresholds.matched {
            matched += 1;
            correct += usize::from(truth.contains(&(a, b)));
        } else if probability >= thresholds.possible {
            possible += 1;
        }
    }
    let precision = if matched == 0 { 1.0 } else { correct as f64 / matched as f64 };
    let recall = correct as f64 / truth.len().max(1) as f64;
    let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
    Evaluation {
        records: records.len(),
        true_pairs: truth.len(),
        candidate_pairs: candidates.len(),
        blocking_recall: recall_of(&candidates),
        rule_recall,
        candidates_per_record: Distribution::of(per_record),
        matched,
        correct,
        possible,
        precision,
        recall,
        f1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mpi::blocking::Rules;
    use crate::mpi::compare::nicknames;
    use crate::mpi::train::{TrainingOptions, train};

    /// FEBRL 4 trained on and matched without its truth, then measured against it.
    #[test]
    fn febrl_4_is_matched_with_high_precision_and_recall() {
        let (records, people) = crate::mpi::febrl::dataset_4();
        assert_eq!(records.len(), 10_000);
        let rules = Rules::shipped();
        let options = TrainingOptions { u_pairs: 200_000, ..TrainingOptions::default() };
        let (parameters, report) = train(&records, &rules.training, options, nicknames());
        let matcher = Matcher::new(rules.clone(), parameters);
        let evaluation = evaluate(&records, &people, &matcher);
        eprintln!("expected matches {:.0}", report.expected_matches);
        eprintln!("{}", serde_json::to_string_pretty(&evaluation).unwrap());
        assert_eq!(evaluation.true_pairs, 5_000);
        assert!(report.rules.iter().all(|rule| rule.rejected.is_none()), "{:?}", report.rules);
        assert!(
            (4_500.0..5_500.0).contains(&report.expected_matches),
            "the expected match count is near the truth: {}",
            report.expected_matches
        );
        assert!(evaluation.blocking_recall >= 0.99, "blocking recall {}", evaluation.blocking_recall);
        assert!(evaluation.precision >= 0.999, "precision {}", evaluation.precision);
        assert!(evaluation.f1 >= 0.99, "F1 {}", evaluation.f1);
    }

    /// `braid synth` people (twins, households, moves, changed surnames, nicknames) at four
    /// sources, trained on and matched without their truth.
    #[test]
    fn synthetic_people_with_their_hazards_are_matched_with_high_precision() {
        let options = crate::mpi::synth::SynthOptions { people: 3_000, sources: 4, seed: 5, clinical: false };
        let synthetic = crate::mpi::synth::generate(options);
        let (records, people) = synthetic.records();
        let rules = Rules::shipped();
        let training = TrainingOptions { u_pairs: 200_000, ..TrainingOptions::default() };
        let (parameters, _) = train(&records, &rules.training, training, nicknames());
        let evaluation = evaluate(&records, &people, &Matcher::new(rules.clone(), parameters));
        eprintln!("{}", serde_json::to_string_pretty(&evaluation).unwrap());
        assert!(evaluation.blocking_recall >= 0.97, "blocking recall {}", evaluation.blocking_recall);
        assert!(evaluation.precision >= 0.997, "precision {}", evaluation.precision);
        assert!(evaluation.recall >= 0.93, "recall {}", evaluation.recall);
        // Before training, the shipped parameters already keep twins and households apart.
        let shipped = evaluate(&records, &people, &Matcher::new(rules, crate::mpi::score::Parameters::shipped()));
        assert!(shipped.precision >= 0.99, "precision {}", shipped.precision);
    }
}
