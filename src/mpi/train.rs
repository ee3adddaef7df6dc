//! Learning the Fellegi-Sunter parameters from the data, as Splink does.
//!
//! - `u`, a level's probability among pairs that are not the same person, comes from random
//!   pairs, which are almost all non-matches ([`estimate_u`]).
//! - `m`, a level's probability among matches, comes from expectation-maximisation over the
//!   candidate pairs of one blocking rule at a time, with `u` fixed and the rule's fields left
//!   out ([`estimate_m`]). Blocking on a field makes it agree in every pair, matches or not, so
//!   the rule's pairs say nothing about it; fields that go with a blocked one are left out too
//!   (a postcode names the city; a given name mostly names the sex; a household shares a family
//!   name and an address), or the non-matches of the block would agree on them far more often
//!   than `u` says and pass for matches. The rules trained on are the profile's `training`
//!   rules, chosen so that their pairs are mostly matches or clearly not. A field's
//!   `m` is the mean over the rules that estimated it and whose estimate makes sense (see
//!   [`RuleEstimate::rejected`]): a rule whose pairs hold no matches can converge on a cluster of
//!   look-alike non-matches, which is why one EM over all blocked pairs, every parameter free,
//!   drifts to the wrong answer on realistic data.
//! - The prior, the probability that two records drawn at random match, is the expected match
//!   count over the number of possible pairs. The count is the sum of the candidate pairs'
//!   match probabilities, which themselves depend on the prior: the two are iterated to their
//!   fixed point ([`estimate_prior`]), on the assumption that the blocking rules together find
//!   (nearly) every match, so that a pair no rule proposes is a non-match.
//!
//! Every loop is bounded: the records trained on ([`MAX_RECORDS`]), the random pairs, the
//! pairs a rule yields (blocks larger than [`MAX_BLOCK`] records are skipped, keys too common to
//! say anything; at most [`MAX_RULE_PAIRS`] per rule) and the EM iterations.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::blocking::{BlockField, BlockingRule, keys};
use super::compare::Nicknames;
use super::record::PersonRecord;
use super::score::{Comparison, FIELDS, LEVEL_COUNTS, Parameters, TermFrequencies, compare_pair, field_index};
use crate::random::Random;

/// Most records trained on: a larger population is sampled (sampling keeps the share of
/// matching pairs, so the prior holds for the whole).
pub const MAX_RECORDS: usize = 500_000;

/// Largest block whose pairs are used for training.
pub const MAX_BLOCK: usize = 100;

/// Most candidate pairs one rule contributes to training.
pub const MAX_RULE_PAIRS: usize = 5_000_000;

/// Most EM iterations per rule, and fixed-point iterations of the prior.
pub const MAX_ITERATIONS: usize = 100;

/// Fewest expected matches among a rule's pairs for its estimate of `m` to count.
pub const MIN_RULE_MATCHES: f64 = 10.0;

/// Most random pairs a training run draws to estimate `u`.
pub const MAX_U_PAIRS: usize = 10_000_000;

/// Options of a training run.
#[derive(Debug, Clone, Copy)]
pub struct TrainingOptions {
    /// Random pairs that estimate `u`.
    pub u_pairs: usize,
    /// Seed of the random pairs (training is reproducible).
    pub seed: u64,
}

impl Default for TrainingOptions {
    fn default() -> TrainingOptions {
        TrainingOptions { u_pairs: 1_000_000, seed: 0x5EED }
    }
}

/// What the EM of one blocking rule found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleEstimate {
    pub rule: String,
    /// Candidate pairs the rule proposed (from blocks within the bound).
    pub pairs: usize,
    /// The share of matches among them, as the EM estimated it.
    pub match_share: f64,
    pub iterations: usize,
    /// The fields the rule left out.
    pub left_out: Vec<String>,
    /// Why the estimate was not used, if it was not: too few matches to learn from, or a field
    /// whose disagreement came out likelier among matches than among non-matches (the EM found
    /// a cluster of look-alike non-matches, not the matches).
    pub rejected: Option<String>,
}

/// What a training run did, stored and shown with the parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingReport {
    pub records: usize,
    pub u_pairs: usize,
    pub rules: Vec<RuleEstimate>,
    /// Distinct candidate pairs of all rules, over which the prior was estimated.
    pub candidate_pairs: usize,
    /// The expected number of matching pairs among the records.
    pub expected_matches: f64,
    /// Fields no accepted rule estimated: their `m` is the starting guess.
    pub unestimated: Vec<String>,
}

/// At most [`MAX_RECORDS`] of `records`, drawn at random (all of them when there are fewer).
pub fn sample(records: Vec<PersonRecord>, seed: u64) -> Vec<PersonRecord> {
    if records.len() <= MAX_RECORDS {
        return records;
    }
    let mut random = Random::new(seed);
    let mut records = records;
    // A partial Fisher-Yates shuffle: the first MAX_RECORDS are a uniform sample.
    for index in 0..MAX_RECORDS {
        let other = index + random.below(records.len() - index);
        records.swap(index, other);
    }
    records.truncate(MAX_RECORDS);
    records
}

/// Counts per field and level, add-`smoothing` so that no level has a probability of 0.
type Counts = Vec<Vec<f64>>;

fn counts(smoothing: f64) -> Counts {
    LEVEL_COUNTS.iter().map(|&count| vec![smoothing; count]).collect()
}

fn add(counts: &mut Counts, comparison: &Comparison, weight: f64) {
    for (field, level) in comparison.levels.iter().enumerate() {
        if let Some(level) = level {
            counts[field][*level as usize] += weight;
        }
    }
}

fn normalise(counts: Counts) -> Vec<Vec<f64>> {
    counts
        .into_iter()
        .map(|levels| {
            let total: f64 = levels.iter().sum();
            levels.into_iter().map(|count| count / total).collect()
        })
        .collect()
}

/// The level frequencies of `pairs` random pairs, per field (add-one smoothed).
pub fn estimate_u(records: &[PersonRecord], pairs: usize, seed: u64, nicknames: &Nicknames) -> Vec<Vec<f64>> {
    let mut tally = counts(1.0);
    if records.len() >= 2 {
        let mut random = Random::new(seed);
        for _ in 0..pairs {
            let a = random.below(records.len());
            let mut b = random.below(records.len() - 1);
            if b >= a {
                b += 1;
            }
            add(&mut tally, &compare_pair(&records[a], &records[b], nicknames), 1.0);
        }
    }
    normalise(tally)
}

/// The fields of [`FIELDS`] a blocking field fixes, or makes agree far more often than among
/// random pairs.
fn left_out_by(field: BlockField) -> &'static [&'static str] {
    match field {
        BlockField::BirthDate | BlockField::BirthYear => &["birth_date"],
        BlockField::Given | BlockField::GivenInitial | BlockField::GivenSound => &["given", "sex"],
        // Households share a family name and an address.
        BlockField::Family | BlockField::FamilySound => &["family", "address", "city", "postcode"],
        BlockField::Postcode => &["postcode", "city", "address"],
        BlockField::Identifier => &["identifier"],
    }
}

/// The fields a rule leaves out of its EM, as indexes of [`FIELDS`].
fn left_out_of(rule: &BlockingRule) -> Vec<usize> {
    let mut fields: Vec<usize> =
        rule.fields.iter().flat_map(|field| left_out_by(*field)).map(|name| field_index(name)).collect();
    fields.sort_unstable();
    fields.dedup();
    fields
}

/// The candidate pairs of one rule: the pairs of records sharing one of its keys, from blocks
/// of at most [`MAX_BLOCK`] records, at most [`MAX_RULE_PAIRS`], each `(lower, higher)` once.
pub fn rule_pairs(rule: &BlockingRule, records: &[PersonRecord]) -> Vec<(u32, u32)> {
    let mut blocks: HashMap<String, Vec<u32>> = HashMap::new();
    let rules = std::slice::from_ref(rule);
    for (index, record) in records.iter().enumerate() {
        for key in keys(rules, record) {
            blocks.entry(key).or_default().push(index as u32);
        }
    }
    let mut pairs = Vec::new();
    'blocks: for members in blocks.values().filter(|members| members.len() <= MAX_BLOCK) {
        for (position, &a) in members.iter().enumerate() {
            for &b in &members[position + 1..] {
                if pairs.len() == MAX_RULE_PAIRS {
                    break 'blocks;
                }
                pairs.push((a.min(b), a.max(b)));
            }
        }
    }
    pairs.sort_unstable();
    pairs.dedup();
    pairs
}

/// Comparisons with how many pairs had each: EM works on the distinct patterns.
fn patterns(pairs: &[(u32, u32)], records: &[PersonRecord], nicknames: &Nicknames) -> Vec<(Comparison, f64)> {
    let mut tally: HashMap<Comparison, f64> = HashMap::new();
    for &(a, b) in pairs {
        *tally.entry(compare_pair(&records[a as usize], &records[b as usize], nicknames)).or_default() += 1.0;
    }
    tally.into_iter().collect()
}

/// The starting `m`: agreement likely among matches (most of the mass on the best level, the
/// rest falling off level by level).
pub fn starting_m() -> Vec<Vec<f64>> {
    let levels = LEVEL_COUNTS.iter().map(|&count| {
        let raw: Vec<f64> = (0..count).map(|level| 0.25f64.powi(level as i32)).collect();
        let total: f64 = raw.iter().sum();
        raw.into_iter().map(|value| value / total).collect()
    });
    levels.collect()
}

/// Expectation-maximisation of `m` and the share of matches over `patterns`, with `u` fixed
/// and the fields in `left_out` neither weighed nor estimated (they keep `m_start`). Returns
/// `m`, the share of matches and the iterations run.
pub fn estimate_m(
    patterns: &[(Comparison, f64)],
    u: &[Vec<f64>],
    left_out: &[usize],
    m_start: &[Vec<f64>],
    share_start: f64,
) -> (Vec<Vec<f64>>, f64, usize) {
    let total: f64 = patterns.iter().map(|(_, count)| count).sum();
    let mut m = m_start.to_vec();
    let mut share = share_start;
    let mut iterations = 0;
    while iterations < MAX_ITERATIONS {
        iterations += 1;
        let parameters = Parameters {
            prior: share,
            levels: m
                .iter()
                .zip(u)
                .enumerate()
                .map(|(field, (m, u))| {
                    // A left-out field weighs nothing: m = u.
                    let m = if left_out.contains(&field) { u } else { m };
                    m.iter().zip(u).map(|(&m, &u)| (m, u)).collect()
                })
                .collect(),
            term_frequencies: TermFrequencies::default(),
        };
        let mut tally = counts(1e-3);
        let mut matches = 0.0;
        for (comparison, count) in patterns {
            let probability = parameters.probability(comparison) * count;
            add(&mut tally, comparison, probability);
            matches += probability;
        }
        let next_share = (matches / total.max(1.0)).clamp(1e-9, 1.0 - 1e-9);
        let next_m = normalise(tally);
        let mut change = (next_share - share).abs();
        for (field, levels) in next_m.into_iter().enumerate() {
            if !left_out.contains(&field) {
                change += levels.iter().zip(&m[field]).map(|(a, b)| (a - b).abs()).sum::<f64>();
                m[field] = levels;
            }
        }
        share = next_share;
        if change < 1e-7 {
            break;
        }
    }
    (m, share, iterations)
}

/// Whether a rule's estimate makes sense: enough expected matches, and on every estimated
/// field with data, disagreement (the last level) no likelier among matches than among
/// non-matches (fields compared only when another disagrees excepted, see
/// [`super::score::is_conditional`]).
fn rejection(
    m: &[Vec<f64>],
    u: &[Vec<f64>],
    left_out: &[usize],
    observed: &[f64],
    expected_matches: f64,
) -> Option<String> {
    if expected_matches < MIN_RULE_MATCHES {
        return Some(format!("{expected_matches:.1} expected matches, fewer than {MIN_RULE_MATCHES}"));
    }
    for field in (0..FIELDS.len()).filter(|field| !left_out.contains(field)) {
        // A field hardly ever present in the rule's pairs was not really estimated.
        if observed[field] < MIN_RULE_MATCHES || super::score::is_conditional(field) {
            continue;
        }
        let last = LEVEL_COUNTS[field] - 1;
        if m[field][last] > u[field][last] {
            return Some(format!(
                "{}: disagreement came out likelier among matches than among non-matches (m {:.4} > u {:.4})",
                FIELDS[field], m[field][last], u[field][last]
            ));
        }
    }
    None
}

/// The prior (probability that two random records match) at which the candidate pairs'
/// match probabilities add up to `prior × possible_pairs`: the fixed point of the expected
/// match count. Returns the prior and the expected matches.
pub fn estimate_prior(weights_without_prior: &[f64], possible_pairs: f64) -> (f64, f64) {
    let possible_pairs = possible_pairs.max(1.0);
    let mut prior = (weights_without_prior.len() as f64 / possible_pairs / 2.0).clamp(1e-12, 0.5);
    let mut expected = 0.0;
    for _ in 0..MAX_ITERATIONS {
        let prior_weight = (prior / (1.0 - prior)).log2();
        expected = weights_without_prior.iter().map(|weight| super::score::probability_of(weight + prior_weight)).sum();
        let next = (expected / possible_pairs).clamp(1e-12, 0.5);
        let converged = (next / prior - 1.0).abs() < 1e-6;
        prior = next;
        if converged {
            break;
        }
    }
    (prior, expected)
}

/// Learns the parameters from `records` with `rules` (see the module's description).
pub fn train(
    records: &[PersonRecord],
    rules: &[BlockingRule],
    options: TrainingOptions,
    nicknames: &Nicknames,
) -> (Parameters, TrainingReport) {
    let u = estimate_u(records, options.u_pairs, options.seed, nicknames);
    let start = starting_m();
    let mut sums = counts(0.0);
    let mut estimates = vec![0usize; FIELDS.len()];
    let mut all_pairs: Vec<(u32, u32)> = Vec::new();
    let mut reports = Vec::new();
    for rule in rules {
        let pairs = rule_pairs(rule, records);
        let left_out = left_out_of(rule);
        let rule_patterns = patterns(&pairs, records, nicknames);
        let (m, share, iterations) = estimate_m(&rule_patterns, &u, &left_out, &start, 0.5);
        let mut observed = vec![0.0; FIELDS.len()];
        for (comparison, count) in &rule_patterns {
            for (field, level) in comparison.levels.iter().enumerate() {
                if level.is_some() {
                    observed[field] += count * share;
                }
            }
        }
        let rejected = rejection(&m, &u, &left_out, &observed, share * pairs.len() as f64);
        if rejected.is_none() {
            for field in (0..FIELDS.len()).filter(|field| !left_out.contains(field) && observed[*field] > 0.0) {
                for (sum, value) in sums[field].iter_mut().zip(&m[field]) {
                    *sum += value;
                }
                estimates[field] += 1;
            }
        }
        reports.push(RuleEstimate {
            rule: rule.name.clone(),
            pairs: pairs.len(),
            match_share: share,
            iterations,
            left_out: left_out.iter().map(|&field| FIELDS[field].to_owned()).collect(),
            rejected,
        });
        all_pairs.extend(pairs);
    }
    let mut unestimated = Vec::new();
    let m: Vec<Vec<f64>> = sums
        .into_iter()
        .enumerate()
        .map(|(field, sum)| {
            if estimates[field] == 0 {
                unestimated.push(FIELDS[field].to_owned());
                start[field].clone()
            } else {
                sum.into_iter().map(|value| value / estimates[field] as f64).collect()
            }
        })
        .collect();
    // A prior of 0.5 has log odds 0: the pair weights below are the evidence alone, and the
    // prior's own log odds are added in its fixed point.
    let mut parameters = Parameters {
        prior: 0.5,
        levels: m.iter().zip(&u).map(|(m, u)| m.iter().zip(u).map(|(&m, &u)| (m, u)).collect()).collect(),
        term_frequencies: TermFrequencies::count(records),
    };
    all_pairs.sort_unstable();
    all_pairs.dedup();
    let weights: Vec<f64> = all_pairs
        .iter()
        .map(|&(a, b)| {
            let (a, b) = (&records[a as usize], &records[b as usize]);
            parameters.pair_weight(a, &compare_pair(a, b, nicknames))
        })
        .collect();
    let count = records.len() as f64;
    let (prior, expected_matches) = estimate_prior(&weights, count * (count - 1.0) / 2.0);
    parameters.prior = prior;
    let report = TrainingReport {
        records: records.len(),
        u_pairs: options.u_pairs,
        rules: reports,
        candidate_pairs: all_pairs.len(),
        expected_matches,
        unestimated,
    };
    (parameters, report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mpi::blocking::Rules;
    use crate::mpi::compare::nicknames;

    fn dated(given: &str, family: &str, date: &str, postcode: &str) -> PersonRecord {
        let patient = serde_json::json!({"name": [{"given": [given], "family": family}], "birthDate": date,
            "gender": if given.ends_with('a') { "female" } else { "male" },
            "address": [{"postalCode": postcode}]});
        PersonRecord::from_patient(&patient)
    }

    /// 400 people with distinct dates; every other one registered twice, the second time with
    /// a typo in the family name and no postcode. Namesakes: every full name is shared by five
    /// people, who also share a postcode, so the full-name rule finds only non-matches, and
    /// non-matches that agree on the postcode.
    fn population() -> (Vec<PersonRecord>, Vec<Option<u32>>) {
        let given = ["james", "maria", "robert", "patricia", "john", "linda", "michael", "anna"];
        let family =
            ["smith", "jones", "taylor", "brown", "williams", "wilson", "johnson", "davies", "wright", "evans"];
        let (mut records, mut people) = (Vec::new(), Vec::new());
        for n in 0..400u32 {
            let date = format!("19{:02}-{:02}-{:02}", 30 + n % 60, 1 + n % 12, 1 + (n / 12) % 28);
            let person =
                dated(given[(n / 50) as usize % 8], family[n as usize % 10], &date, &format!("{}", 2000 + n / 50));
            if n % 2 == 0 {
                let mut copy = person.clone();
                copy.family.push('e');
                copy.family_sound = crate::mpi::compare::phonetic_codes(&copy.family);
                copy.postcode.clear();
                records.push(copy);
                people.push(Some(n));
            }
            records.push(person);
            people.push(Some(n));
        }
        (records, people)
    }

    #[test]
    fn random_pairs_give_u_with_every_level_possible() {
        let (records, _) = population();
        let u = estimate_u(&records, 5_000, 7, nicknames());
        for (field, levels) in u.iter().enumerate() {
            assert_eq!(levels.len(), LEVEL_COUNTS[field]);
            assert!((levels.iter().sum::<f64>() - 1.0).abs() < 1e-9);
            assert!(levels.iter().all(|&p| p > 0.0), "smoothed: {field}");
        }
        assert!(u[field_index("birth_date")][0] < 0.05, "random pairs rarely share a birth date");
    }

    #[test]
    fn training_learns_what_matches_look_like_and_rejects_a_rule_without_matches() {
        let (records, people) = population();
        let rules = Rules::shipped();
        let (parameters, report) = train(&records, &rules.training, TrainingOptions::default(), nicknames());
        let namesakes = report.rules.iter().find(|rule| rule.rule == "given_family").unwrap();
        assert!(namesakes.pairs > 0);
        assert!(namesakes.rejected.is_some(), "its pairs are all non-matches: {namesakes:?}");
        // Only the full-name rule could estimate the birth date, and it was rejected: the
        // starting guess stands, and says so (as for the fields no true pair has on both sides).
        assert_eq!(report.unestimated, ["birth_date", "address", "city", "postcode", "phone", "email", "identifier"]);
        let birth = &parameters.levels[field_index("birth_date")];
        assert_eq!(birth.iter().map(|(m, _)| *m).collect::<Vec<_>>(), starting_m()[field_index("birth_date")]);
        assert!(birth[0].1 < 0.05, "random pairs rarely share a birth date: {birth:?}");
        // The birth-date rule's pairs are the true pairs: matches disagree on the family name
        // by a letter, never agree on it exactly, and never have a postcode on both sides.
        let family = &parameters.levels[field_index("family")];
        assert!(family[2].0 > 0.9 && family[0].0 < 0.01, "{family:?}");
        assert!(
            (150.0..250.0).contains(&report.expected_matches),
            "200 people registered twice: {}",
            report.expected_matches
        );
        let matcher = crate::mpi::matcher::Matcher::new(rules.clone(), parameters);
        let evaluation = crate::mpi::quality::evaluate(&records, &people, &matcher);
        assert_eq!(evaluation.true_pairs, 200);
        assert_eq!(evaluation.correct, evaluation.matched, "precision: {evaluation:?}");
        assert!(evaluation.recall >= 0.95, "{evaluation:?}");
    }

    #[test]
    fn blocks_and_pairs_are_bounded() {
        let same = dated("x", "y", "2000-01-01", "1");
        let records = vec![same; MAX_BLOCK + 1];
        let rule =
            BlockingRule { name: "postcode_given".into(), fields: vec![BlockField::Postcode, BlockField::Given] };
        assert!(rule_pairs(&rule, &records).is_empty(), "a block larger than the bound teaches nothing");
        let fewer = &records[..MAX_BLOCK];
        assert_eq!(rule_pairs(&rule, fewer).len(), MAX_BLOCK * (MAX_BLOCK - 1) / 2);
    }

    #[test]
    fn a_large_population_is_sampled() {
        let mut many = vec![PersonRecord::default(); MAX_RECORDS + 10];
        for record in &mut many[MAX_RECORDS..] {
            record.given = "tail".into();
        }
        let sampled = sample(many, 1);
        assert_eq!(sampled.len(), MAX_RECORDS);
        assert!(sampled.iter().any(|record| record.given == "tail"), "drawn at random, not the first ones");
        assert_eq!(sample(vec![PersonRecord::default(); 3], 1).len(), 3);
    }

    #[test]
    fn the_prior_is_the_expected_match_count_over_the_possible_pairs() {
        // 100 pairs with overwhelming evidence among 10,000 possible pairs, 100 with none.
        let mut weights = vec![60.0; 100];
        weights.extend(vec![-60.0; 100]);
        let (prior, expected) = estimate_prior(&weights, 10_000.0);
        assert!((expected - 100.0).abs() < 0.5, "{expected}");
        assert!((prior - 0.01).abs() < 1e-4, "{prior}");
    }
}
