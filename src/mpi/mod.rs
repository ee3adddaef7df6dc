//! The master patient index: which source Patients are the same person.
//!
//! Built so far: how two values of one field are compared ([`compare`]), the graded levels a
//! Fellegi-Sunter score will weigh. Blocking, scoring, training, links and golden records are
//! not built yet, and nothing calls this module.

pub mod compare;
