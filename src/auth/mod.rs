//! SMART on FHIR authorisation: what a client asked for and what a grant allows.
//!
//! Built up in steps: [`scope`] parses and compares SMART scopes (v1 and v2, granular
//! filters); [`rules`] turns the scopes of a token's context into a decision per type and
//! interaction. The authorization server (keys, clients, tokens, login) and the enforcement in
//! every interaction build on them.

pub mod rules;
pub mod scope;
