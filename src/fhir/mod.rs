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

/// Bytes as lower-case hex: digests in ids, keys and ETags.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}
pub use resource_type::ResourceType;

/// A parsed resource: a JSON object whose `resourceType` names a known R4 type.
pub type Resource = serde_json::Map<String, serde_json::Value>;
