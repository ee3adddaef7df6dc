//! Search: what gets indexed when a resource is written, and how query strings become criteria.
//!
//! - [`registry`]: the official R4 SearchParameter definitions, parsed once; unsupported ones
//!   are listed, never silently dropped.
//! - [`fhirpath`]: the FHIRPath subset those definitions use.
//! - [`fhirpath_patch`]: FHIRPath Patch, on the same FHIRPath subset.
//! - [`values`]: how each parameter type encodes index values.
//! - [`indexer`]: the store's [`crate::store::Indexer`], driven by the registry.
//! - [`criteria`]: conditional-interaction criteria (`_id`, `identifier`).
//! - [`engine`]: planning and running a query on a snapshot; [`budget`] bounds the work one
//!   search may do.

pub mod budget;
pub mod chain;
pub mod compartment;
mod criteria;
pub mod engine;
pub mod fhirpath;
pub mod fhirpath_patch;
mod indexer;
pub mod query;
pub mod registry;
pub mod values;

pub use criteria::{conditional_references, parse_criteria, parse_criteria_within};
pub use indexer::SearchIndexer;
