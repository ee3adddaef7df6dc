//! Criteria of conditional interactions (`If-None-Exist`, `PUT Patient?...`, `DELETE
//! Patient?...`, conditional references), run by the search engine inside the writer's
//! transaction.
//!
//! Every parameter must be understood: an unknown parameter, a result parameter such as
//! `_count`, or a malformed value is an error rather than ignored, because ignoring it would
//! make a conditional write match more than the client meant.

use std::sync::Arc;

use super::engine;
use super::query::{Clause, parse_clause};
use crate::fhir::{FhirError, Id, IssueCode, ResourceType};
use crate::store::{Criteria, IndexView, LATEST};

/// Parses `query` (`identifier=http://x|1&birthdate=1970`) into criteria for `resource_type`.
pub fn parse_criteria(resource_type: ResourceType, query: &str) -> Result<Criteria, FhirError> {
    parse_criteria_within(resource_type, query, Vec::new())
}

/// Like [`parse_criteria`], matching only resources that also satisfy `limits` (what the
/// writer's token may see: a conditional write never matches, so never reveals, anything else).
pub fn parse_criteria_within(
    resource_type: ResourceType,
    query: &str,
    limits: Vec<Clause>,
) -> Result<Criteria, FhirError> {
    let incorrect = |message: String| FhirError::incorrect(IssueCode::Invalid, message);
    let mut clauses = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(raw_name)?;
        let value = decode(raw_value)?;
        if name == "_format" || name == "_pretty" {
            continue;
        }
        if value.is_empty() {
            return Err(incorrect(format!("the search parameter '{name}' has no value")));
        }
        match parse_clause(resource_type, &name, &value, "")? {
            Some(clause) => clauses.push(clause),
            None => {
                return Err(incorrect(format!(
                    "the search parameter '{name}' is not supported in conditional criteria for {resource_type}"
                )));
            }
        }
    }
    if clauses.is_empty() {
        return Err(incorrect("conditional criteria must not be empty".to_owned()));
    }
    clauses.extend(limits);
    let clauses = Arc::new(clauses);
    Ok(Criteria {
        text: query.to_owned(),
        find: Arc::new(move |view: &dyn IndexView, resource_type: ResourceType, limit: usize| {
            let (query, _) = engine::Query::plan(view, resource_type, &clauses, LATEST)?;
            let page = engine::run(&query, None, Some(limit))?;
            page.matches
                .into_iter()
                .map(|(id, _)| Id::parse(&id).map_err(|_| FhirError::fault("criteria: a stored id is invalid")))
                .collect()
        }),
    })
}

fn decode(text: &str) -> Result<String, FhirError> {
    let spaced = text.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| FhirError::incorrect(IssueCode::Invalid, format!("'{text}' is not valid percent-encoded UTF-8")))
}

/// The conditional references (`Patient?identifier=x|1`) in `resource`, each with its criteria
/// as `criteria_of` parses them (within the caller's limits), for the writer to resolve inside
/// the transaction. Each distinct reference is parsed once.
pub fn conditional_references(
    resource: &mut serde_json::Value,
    criteria_of: &mut dyn FnMut(ResourceType, &str) -> Result<Criteria, FhirError>,
) -> Result<std::collections::HashMap<String, (ResourceType, Criteria)>, FhirError> {
    use crate::fhir::reference::{self, Target};
    let mut found = std::collections::HashMap::new();
    reference::rewrite_resource_references(resource, &mut |text: &str| {
        if let Target::Conditional { resource_type, query } = reference::parse(text) {
            if !found.contains_key(text) {
                let criteria = criteria_of(resource_type, query).map_err(|e| e.at(format!("reference '{text}'")))?;
                found.insert(text.to_owned(), (resource_type, criteria));
            }
        }
        Ok::<_, FhirError>(None)
    })?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patient() -> ResourceType {
        ResourceType::PATIENT
    }

    #[test]
    fn any_search_parameter_can_be_a_criterion() {
        let criteria =
            parse_criteria(patient(), "identifier=http%3A%2F%2Fh%7C1,2&birthdate=ge1970&family=smith").unwrap();
        assert_eq!(criteria.text, "identifier=http%3A%2F%2Fh%7C1,2&birthdate=ge1970&family=smith");
    }

    #[test]
    fn unknown_parameters_result_parameters_and_empty_criteria_are_errors() {
        for query in ["colour=red", "_count=5", "identifier:of-type=x", "", "identifier=", "birthdate=yesterday"] {
            let error = parse_criteria(patient(), query).unwrap_err();
            assert_eq!(error.status(), 400, "{query}");
        }
    }
}
