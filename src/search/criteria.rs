//! Query strings of conditional interactions (`If-None-Exist`, `PUT Patient?...`,
//! conditional references) turned into criteria the store evaluates.

use percent_encoding::percent_decode_str;

use crate::fhir::{FhirError, Id, IssueCode, ResourceType};
use crate::store::{Clause, Criteria};

/// Parses `query` (`identifier=http://x|1&_id=a`) into criteria for `resource_type`.
///
/// Every parameter must be understood: an unknown parameter or modifier is an error rather than
/// ignored, because ignoring it would make a conditional write match more than the client meant.
pub fn parse_criteria(resource_type: ResourceType, query: &str) -> Result<Criteria, FhirError> {
    let mut clauses = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let name = decode(raw_name)?;
        let value = decode(raw_value)?;
        if value.is_empty() {
            return Err(incorrect(format!("the search parameter '{name}' has no value")));
        }
        let alternatives = split_unescaped(&value, ',');
        match name.as_str() {
            "_id" => {
                let ids = alternatives.iter().map(|id| Id::parse(id)).collect::<Result<Vec<_>, _>>()?;
                clauses.push(Clause::Ids(ids));
            }
            "identifier" => {
                let values = alternatives.iter().map(|token| unescape(token).into_bytes()).collect::<Vec<_>>();
                clauses.push(Clause::Index { param: "identifier".to_owned(), values });
            }
            _ => {
                return Err(incorrect(format!(
                    "the search parameter '{name}' is not supported in conditional criteria for {resource_type} \
                     (supported: _id, identifier)"
                )));
            }
        }
    }
    if clauses.is_empty() {
        return Err(incorrect("conditional criteria must not be empty".to_owned()));
    }
    Ok(Criteria { clauses, text: query.to_owned() })
}

fn incorrect(message: String) -> FhirError {
    FhirError::incorrect(IssueCode::Invalid, message)
}

fn decode(text: &str) -> Result<String, FhirError> {
    let spaced = text.replace('+', " ");
    percent_decode_str(&spaced)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|_| incorrect(format!("'{text}' is not valid percent-encoded UTF-8")))
}

/// Splits on `separator` except where it is escaped with a backslash (FHIR search escaping).
fn split_unescaped(text: &str, separator: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let part = parts.last_mut().expect("parts is never empty");
                part.push('\\');
                if let Some(next) = chars.next() {
                    part.push(next);
                }
            }
            c if c == separator => parts.push(String::new()),
            c => parts.last_mut().expect("parts is never empty").push(c),
        }
    }
    parts
}

/// Removes search escaping (`\,` `\|` `\$` `\\`) from a token. The `|` that separates system
/// from code is not escaped and stays; an escaped `|` inside a code is not distinguishable in
/// the index encoding and is kept as a plain `|`.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn patient() -> ResourceType {
        ResourceType::parse("Patient").unwrap()
    }

    #[test]
    fn identifier_and_id_criteria_parse() {
        let criteria = parse_criteria(patient(), "identifier=http%3A%2F%2Fh%7C1,2&_id=a").unwrap();
        assert_eq!(
            criteria.clauses,
            vec![
                Clause::Index { param: "identifier".into(), values: vec![b"http://h|1".to_vec(), b"2".to_vec()] },
                Clause::Ids(vec![Id::parse("a").unwrap()]),
            ]
        );
    }

    #[test]
    fn unknown_parameters_and_empty_criteria_are_errors() {
        for query in ["name=smith", "identifier:of-type=x", "", "identifier=", "_id=bad id"] {
            let error = parse_criteria(patient(), query).unwrap_err();
            assert_eq!(error.status(), 400, "{query}");
        }
    }

    #[test]
    fn escaped_commas_do_not_split() {
        let criteria = parse_criteria(patient(), r"identifier=a\,b").unwrap();
        assert_eq!(criteria.clauses, vec![Clause::Index { param: "identifier".into(), values: vec![b"a,b".to_vec()] }]);
    }
}
