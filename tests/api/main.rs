//! Black-box tests of the FHIR API: every test starts its own server on a free port with its
//! own temporary database and talks HTTP to it.

mod bundles;
mod conditional;
mod conformance;
mod crash;
mod crud;
mod differential;
mod errors;
mod examples;
mod helpers;
mod history;
mod metadata;
mod process;
mod search;
mod surface;
mod synthea;
mod validation;
