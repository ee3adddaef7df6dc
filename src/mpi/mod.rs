//! The master patient index: which source Patients are the same person.
//!
//! Built so far, as pure functions that nothing calls yet:
//! - [`record`]: what is read of a Patient (its demographics, normalised);
//! - [`compare`]: how two values of one field compare, in the graded levels a Fellegi-Sunter
//!   score weighs;
//! - [`blocking`]: the keys a record is filed under, from the rules in
//!   `profiles/mpi.rules.json`, so that it is scored only against records sharing a key;
//! - [`score`]: the Fellegi-Sunter weight and match probability of a pair, given m and u per
//!   field and level.
//!
//! Training (u from random pairs, m by EM per blocking rule), links, golden records and the
//! change feed that drives them are not built yet.

pub mod blocking;
pub mod compare;
pub mod record;
pub mod score;
