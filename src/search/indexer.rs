//! Index values extracted from resources on write.

use serde_json::Value;

use crate::fhir::{Resource, ResourceType};
use crate::store::{IndexEntry, Indexer};

/// Indexes `identifier` (Identifier or list of Identifiers) as a token parameter.
///
/// For an identifier with system `S` and value `V` the entries are `V` (matches `identifier=V`),
/// `S|V` (matches `identifier=S|V`) and `S|` (matches `identifier=S|`); without a system they
/// are `V` and `|V` (matches `identifier=|V`).
pub struct IdentifierIndexer;

pub const IDENTIFIER: &str = "identifier";

impl Indexer for IdentifierIndexer {
    fn entries(&self, _resource_type: ResourceType, resource: &Resource) -> Vec<IndexEntry> {
        let identifiers: Vec<&Value> = match resource.get(IDENTIFIER) {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(single @ Value::Object(_)) => vec![single],
            _ => Vec::new(),
        };
        let mut entries = Vec::new();
        for identifier in identifiers {
            let system = identifier.get("system").and_then(Value::as_str);
            let Some(value) = identifier.get("value").and_then(Value::as_str) else {
                if let Some(system) = system {
                    entries.push(token(format!("{system}|")));
                }
                continue;
            };
            entries.push(token(value.to_owned()));
            match system {
                Some(system) => {
                    entries.push(token(format!("{system}|{value}")));
                    entries.push(token(format!("{system}|")));
                }
                None => entries.push(token(format!("|{value}"))),
            }
        }
        entries
    }
}

fn token(value: String) -> IndexEntry {
    IndexEntry { param: IDENTIFIER.to_owned(), value: value.into_bytes() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn identifiers_yield_every_searchable_form() {
        let Value::Object(resource) = json!({"resourceType": "Patient", "identifier": [
            {"system": "http://h", "value": "1"}, {"value": "2"}]})
        else {
            unreachable!()
        };
        let values: Vec<String> = IdentifierIndexer
            .entries(ResourceType::parse("Patient").unwrap(), &resource)
            .into_iter()
            .map(|e| String::from_utf8(e.value).unwrap())
            .collect();
        assert_eq!(values, vec!["1", "http://h|1", "http://h|", "2", "|2"]);
    }
}
