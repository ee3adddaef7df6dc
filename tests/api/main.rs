//! Black-box tests of the FHIR API: every test starts its own server on a free port with its
//! own temporary database and talks HTTP to it.

mod auth_matrix;
mod bad_input;
mod budget;
mod bundles;
mod conditional;
mod conformance;
mod correctness;
mod crash;
mod crud;
mod differential;
mod errors;
mod examples;
mod export;
mod gc;
mod helpers;
mod history;
mod ingest;
mod limits;
mod metadata;
mod mpi;
mod pages;
mod power_loss;
mod process;
mod pull;
mod search;
mod smart;
mod smart_launch;
mod sorting;
mod sources;
mod storage_format;
mod surface;
mod synthea;
mod tls;
mod validation;
mod vitals;
