//! Errors as values: a small set of categories, each mapped once to an HTTP status, and the
//! OperationOutcome issues that tell the client what to fix.

use serde_json::{Value, json};

/// What kind of failure this is. Each category has exactly one HTTP status (see
/// [`Category::status`]); handlers never pick status codes themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Category {
    /// The request is malformed: bad JSON, schema violations, bad parameters (400).
    Incorrect,
    /// The resource is well-formed but breaks a profile rule (422).
    Unprocessable,
    /// Unknown resource type, id or version (404).
    NotFound,
    /// The resource existed and was deleted (410).
    Gone,
    /// The request conflicts with the current state (409).
    Conflict,
    /// `If-Match`, `If-None-Match` or conditional criteria did not hold (412).
    PreconditionFailed,
    /// The body is larger than the configured limit (413).
    TooLarge,
    /// The client did not send its body in time (408).
    Timeout,
    /// The request URL is longer than the configured limit (414).
    UriTooLong,
    /// The client only accepts formats Braid does not produce (406).
    NotAcceptable,
    /// The body is in a format Braid does not read (415).
    UnsupportedMediaType,
    /// The HTTP method is not allowed on this path (405).
    MethodNotAllowed,
    /// The interaction exists in FHIR but Braid does not offer it (501).
    Unsupported,
    /// The server is overloaded or shutting down; retry later (503).
    Busy,
    /// The client has too much work queued (exports); retry later (429).
    TooManyRequests,
    /// Something failed inside Braid; the cause is in the log, not in the response (500).
    Fault,
    /// No valid access token (401).
    Unauthorized,
    /// The access token does not allow this (403).
    Forbidden,
}

impl Category {
    pub fn status(self) -> u16 {
        match self {
            Category::Incorrect => 400,
            Category::Unprocessable => 422,
            Category::NotFound => 404,
            Category::Gone => 410,
            Category::Conflict => 409,
            Category::PreconditionFailed => 412,
            Category::TooLarge => 413,
            Category::Timeout => 408,
            Category::UriTooLong => 414,
            Category::NotAcceptable => 406,
            Category::UnsupportedMediaType => 415,
            Category::MethodNotAllowed => 405,
            Category::Unsupported => 501,
            Category::Busy => 503,
            Category::TooManyRequests => 429,
            Category::Fault => 500,
            Category::Unauthorized => 401,
            Category::Forbidden => 403,
        }
    }
}

/// The subset of the FHIR `issue-type` value set that Braid reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueCode {
    Invalid,
    Structure,
    Required,
    Value,
    Invariant,
    Processing,
    NotFound,
    Deleted,
    Conflict,
    Duplicate,
    MultipleMatches,
    NotSupported,
    TooLong,
    TooCostly,
    Transient,
    Exception,
    Informational,
    Login,
    Forbidden,
    Throttled,
}

impl IssueCode {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueCode::Invalid => "invalid",
            IssueCode::Structure => "structure",
            IssueCode::Required => "required",
            IssueCode::Value => "value",
            IssueCode::Invariant => "invariant",
            IssueCode::Processing => "processing",
            IssueCode::NotFound => "not-found",
            IssueCode::Deleted => "deleted",
            IssueCode::Conflict => "conflict",
            IssueCode::Duplicate => "duplicate",
            IssueCode::MultipleMatches => "multiple-matches",
            IssueCode::NotSupported => "not-supported",
            IssueCode::TooLong => "too-long",
            IssueCode::TooCostly => "too-costly",
            IssueCode::Transient => "transient",
            IssueCode::Exception => "exception",
            IssueCode::Informational => "informational",
            IssueCode::Login => "login",
            IssueCode::Forbidden => "forbidden",
            IssueCode::Throttled => "throttled",
        }
    }
}

/// One OperationOutcome issue. `expression` holds FHIRPath expressions naming the elements
/// concerned (e.g. `Patient.name[0].given`).
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub severity: Severity,
    pub code: IssueCode,
    pub diagnostics: String,
    pub expression: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Fatal,
    Error,
    Warning,
    Information,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "fatal",
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Information => "information",
        }
    }
}

impl Issue {
    pub fn error(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Issue { severity: Severity::Error, code, diagnostics: diagnostics.into(), expression: Vec::new() }
    }

    pub fn information(diagnostics: impl Into<String>) -> Self {
        Issue {
            severity: Severity::Information,
            code: IssueCode::Informational,
            diagnostics: diagnostics.into(),
            expression: Vec::new(),
        }
    }

    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression.push(expression.into());
        self
    }

    pub fn to_json(&self) -> Value {
        let mut issue = json!({
            "severity": self.severity.as_str(),
            "code": self.code.as_str(),
            "diagnostics": self.diagnostics,
        });
        if !self.expression.is_empty() {
            issue["expression"] = json!(self.expression);
        }
        issue
    }
}

/// A failed interaction: its category decides the status, its issues become the body.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{category:?}: {}", .issues.first().map(|i| i.diagnostics.as_str()).unwrap_or(""))]
pub struct FhirError {
    pub category: Category,
    pub issues: Vec<Issue>,
}

impl FhirError {
    pub fn new(category: Category, code: IssueCode, diagnostics: impl Into<String>) -> Self {
        FhirError { category, issues: vec![Issue::error(code, diagnostics)] }
    }

    pub fn with_issues(category: Category, issues: Vec<Issue>) -> Self {
        debug_assert!(!issues.is_empty(), "an error needs at least one issue");
        FhirError { category, issues }
    }

    /// Adds an expression to the first issue.
    pub fn at(mut self, expression: impl Into<String>) -> Self {
        if let Some(first) = self.issues.first_mut() {
            first.expression.push(expression.into());
        }
        self
    }

    pub fn incorrect(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Self::new(Category::Incorrect, code, diagnostics)
    }

    pub fn not_found(diagnostics: impl Into<String>) -> Self {
        Self::new(Category::NotFound, IssueCode::NotFound, diagnostics)
    }

    pub fn precondition_failed(code: IssueCode, diagnostics: impl Into<String>) -> Self {
        Self::new(Category::PreconditionFailed, code, diagnostics)
    }

    pub fn conflict(diagnostics: impl Into<String>) -> Self {
        Self::new(Category::Conflict, IssueCode::Conflict, diagnostics)
    }

    /// An internal failure. The client sees only a generic message; `log_id` lets an operator
    /// find the full cause in the log.
    pub fn fault(log_id: &str) -> Self {
        Self::new(
            Category::Fault,
            IssueCode::Exception,
            format!("internal error; see the server log for request {log_id}"),
        )
    }

    pub fn busy(diagnostics: impl Into<String>) -> Self {
        Self::new(Category::Busy, IssueCode::Transient, diagnostics)
    }

    pub fn status(&self) -> u16 {
        self.category.status()
    }

    pub fn to_operation_outcome(&self) -> Value {
        operation_outcome(&self.issues)
    }
}

/// An OperationOutcome resource holding `issues`.
pub fn operation_outcome(issues: &[Issue]) -> Value {
    json!({
        "resourceType": "OperationOutcome",
        "issue": issues.iter().map(Issue::to_json).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_becomes_an_operation_outcome_naming_the_element() {
        let error = FhirError::incorrect(IssueCode::Value, "bad date").at("Patient.birthDate");
        assert_eq!(error.status(), 400);
        assert_eq!(
            error.to_operation_outcome(),
            json!({"resourceType": "OperationOutcome", "issue": [{
                "severity": "error", "code": "value", "diagnostics": "bad date",
                "expression": ["Patient.birthDate"]}]})
        );
    }
}
