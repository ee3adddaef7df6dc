//! The pure FHIR model: resource types, ids, JSON handling, references, validation and
//! OperationOutcome. Nothing in here performs I/O.

pub mod error;
pub mod id;
pub mod json;
pub mod json_patch;
pub mod reference;
pub mod resource_type;
pub mod summary;
pub mod validation;

pub use error::{Category, FhirError, Issue, IssueCode};
pub use id::Id;
pub use resource_type::ResourceType;

/// A parsed resource: a JSON object whose `resourceType` names a known R4 type.
pub type Resource = serde_json::Map<String, serde_json::Value>;
