//! SMART on FHIR authorisation: what a client asked for and what a grant allows.
//!
//! Built up in steps: [`scope`] parses and compares SMART scopes (v1 and v2, granular
//! filters). The authorization server (keys, clients, tokens, login) and the enforcement in
//! every interaction build on it.

pub mod scope;
