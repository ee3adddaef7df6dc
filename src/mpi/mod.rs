//! The master patient index: which source Patients are the same person.
//!
//! Built so far:
//! - [`record`]: what is read of a Patient (its demographics, normalised);
//! - [`compare`]: how two values of one field compare, in the graded levels a Fellegi-Sunter
//!   score weighs;
//! - [`blocking`]: the keys a record is filed under, from the rules in
//!   `profiles/mpi.rules.json`, so that it is scored only against records sharing a key;
//! - [`score`]: the Fellegi-Sunter weight and match probability of a pair, given m and u per
//!   field and level, and term frequencies for names;
//! - [`train`]: learning m, u and the prior from the records, as Splink does;
//! - [`quality`]: precision, recall and blocking recall against a known truth;
//! - [`febrl`]: the FEBRL record-linkage datasets read as Patients, to measure with;
//! - [`state`]: the index's state in the store's `mpi` table (records, blocking index, links,
//!   the change feed's cursor);
//! - [`golden`]: golden Patients and their survivorship rules;
//! - [`matcher`]: the batch that reads committed Patient versions from the change feed and
//!   commits links and golden Patients with the advanced cursor.
//!
//! Not built yet: the background task that runs the matcher in the server, `braid mpi
//! train|show`, the link operations (`$match`, `$mdm-*`), the `refer` link on source Patients,
//! the unified record and `braid synth`.

pub mod blocking;
pub mod compare;
pub mod febrl;
pub mod golden;
pub mod matcher;
pub mod quality;
pub mod record;
pub mod score;
pub mod state;
pub mod train;

#[cfg(test)]
mod febrl_quality {
    use super::blocking::Rules;
    use super::compare::nicknames;
    use super::record::PersonRecord;
    use super::train::{TrainingOptions, train};

    /// FEBRL 4a and 4b (5,000 records each, every 4b record a corrupted copy of one in 4a),
    /// trained on and matched without their truth, then measured against it.
    #[test]
    fn febrl_4_is_matched_with_high_precision_and_recall() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/febrl/");
        let mut records = Vec::new();
        let mut people = Vec::new();
        for file in ["dataset4a.csv", "dataset4b.csv"] {
            let text = std::fs::read_to_string(format!("{dir}{file}")).expect("FEBRL data in tests/data/febrl");
            for (patient, person) in super::febrl::patients(&text) {
                records.push(PersonRecord::from_patient(&patient));
                people.push(person);
            }
        }
        assert_eq!(records.len(), 10_000);
        let rules = Rules::shipped();
        let options = TrainingOptions { u_pairs: 200_000, ..TrainingOptions::default() };
        let (parameters, report) = train(&records, &rules.training, options, nicknames());
        let evaluation =
            super::quality::evaluate(&records, &people, &rules.blocking, &parameters, rules.thresholds, nicknames());
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
}
