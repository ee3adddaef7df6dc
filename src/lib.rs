//! Braid: a FHIR R4 interoperability gateway.
//!
//! Module map (dependencies point downwards only):
//! - [`http`]: actix handlers, one file per interaction; the route table that also generates the
//!   CapabilityStatement.
//! - [`sources`]: upstream systems' namespaces, data-quality policy and Provenance, the puller,
//!   and Bulk Data export jobs.
//! - [`auth`]: SMART on FHIR scopes and the access decisions they grant (the authorization
//!   server and enforcement build on them).
//! - [`search`]: index extraction on write and query parsing.
//! - [`store`]: the only code that touches redb: tables, key codecs, the single writer, snapshots,
//!   and the encrypting storage backend.
//! - [`crypt`]: encryption at rest: key files, the data key, sealed files (exports, uploads).
//! - [`fhir`]: the pure model: types, ids, JSON, references, validation, OperationOutcome.
//!
//! [`startup`] wires them together; [`config`], [`telemetry`] and [`tls`] are the operator's
//! side.

pub mod auth;
pub mod config;
pub mod crypt;
pub mod demo;
pub mod fhir;
pub mod http;
pub mod ingest;
pub mod mpi;
pub mod outbound;
pub mod portal;
pub mod random;
pub mod reminders;
pub mod search;
pub mod sources;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;
