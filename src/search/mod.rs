//! Search: what gets indexed when a resource is written, and how query strings become criteria.
//!
//! This first version indexes the `identifier` token of every resource type and understands the
//! two parameters that conditional interactions rely on, `_id` and `identifier`. Anything else in
//! conditional criteria is rejected, because silently ignoring a criterion would widen the
//! match of a conditional update or delete.

mod criteria;
mod indexer;

pub use criteria::parse_criteria;
pub use indexer::IdentifierIndexer;
