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
//! - [`synth`]: `braid synth`, realistic multi-source people with their ground truth;
//! - [`state`]: the index's state in the store's `mpi` table (records, blocking index, links,
//!   golden Patients, the change feed's cursor);
//! - [`golden`]: golden Patients and their survivorship rules;
//! - [`matcher`]: the batch that reads committed Patient versions from the change feed and
//!   commits links and golden Patients with the advanced cursor;
//! - [`links`]: the operators' link changes (`$mdm-update-link`, merges, unmerges);
//! - [`service`]: the index running in the server: its worker, training, status;
//! - [`unified`]: one person's records from every source, as the unified views show them.
//!
//! The HTTP operations (`$match`, `$mdm-*`, `GET /mpi`) are in `crate::http::mdm`.

pub mod blocking;
pub mod compare;
pub mod febrl;
pub mod golden;
pub mod links;
pub mod matcher;
pub mod quality;
pub mod record;
pub mod score;
pub mod service;
pub mod state;
pub mod synth;
pub mod train;
pub mod unified;
