//! Importing into a running FHIR server (`braid ingest … --server URL --token T`): each batch
//! is one transaction Bundle of updates by id, sent with the caller's bearer token; the
//! response's entries say what each did.

use serde_json::{Value, json};

use super::Summary;
use crate::outbound::{ReadError, read_capped};

/// The largest response accepted, bytes (a transaction response of a batch with outcomes).
const MAX_RESPONSE: usize = 16 << 20;

/// A FHIR server to write to.
pub struct Remote {
    client: reqwest::Client,
    /// The FHIR base URL, without a trailing slash.
    base: String,
    token: Option<String>,
}

impl Remote {
    pub fn new(base: &str, token: Option<String>) -> Result<Remote, String> {
        let base = base.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(format!("--server must be an http(s) URL, not '{base}'"));
        }
        let client = crate::outbound::client(reqwest::Client::builder().timeout(std::time::Duration::from_secs(120)))
            .map_err(|error| format!("cannot make an HTTP client: {error}"))?;
        Ok(Remote { client, base, token })
    }

    fn request(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let builder = builder.header("accept", "application/fhir+json");
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    /// Fails unless the server has Patient `patient` (and the token may read it).
    pub async fn check_patient(&self, patient: &str) -> Result<(), String> {
        let url = format!("{}/Patient/{patient}", self.base);
        let mut response = self
            .request(self.client.get(&url))
            .send()
            .await
            .map_err(|error| format!("{} does not answer: {}", self.base, error.without_url()))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let body = read_capped(&mut response, MAX_RESPONSE).await.unwrap_or_default();
        Err(format!("Patient/{patient} at {}: {status} {}", self.base, diagnostics(&body)))
    }

    /// Sends `resources` as one transaction (each once, see [`super::distinct`]) and counts in
    /// `summary` what it did to the Observations.
    pub async fn write(&self, resources: Vec<Value>, summary: &mut Summary) -> Result<(), String> {
        let mut kinds = Vec::with_capacity(resources.len());
        let mut entries = Vec::with_capacity(resources.len());
        for (resource_type, id, resource) in super::distinct(resources, summary) {
            let url = format!("{resource_type}/{id}");
            entries.push(json!({"resource": resource, "request": {"method": "PUT", "url": url}}));
            kinds.push(resource_type);
        }
        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
        let mut response = self
            .request(self.client.post(&self.base))
            .header("content-type", "application/fhir+json")
            .header("prefer", "return=OperationOutcome")
            .body(bundle.to_string())
            .send()
            .await
            .map_err(|error| format!("{} does not answer: {}", self.base, error.without_url()))?;
        let status = response.status();
        let body = match read_capped(&mut response, MAX_RESPONSE).await {
            Ok(body) => body,
            Err(ReadError::TooLarge) => return Err(format!("the server's answer is larger than {MAX_RESPONSE} bytes")),
            Err(ReadError::Failed(message)) => return Err(message),
        };
        if !status.is_success() {
            return Err(format!("the server refused the batch: {status} {}", diagnostics(&body)));
        }
        let answer: Value = serde_json::from_slice(&body).map_err(|_| "the server's answer is not JSON".to_owned())?;
        let answers = answer["entry"].as_array().cloned().unwrap_or_default();
        if answers.len() != kinds.len() {
            return Err(format!("the server answered {} entries for {} sent", answers.len(), kinds.len()));
        }
        for (kind, entry) in kinds.iter().zip(&answers) {
            if *kind != crate::fhir::ResourceType::OBSERVATION {
                continue;
            }
            let status = entry["response"]["status"].as_str().unwrap_or_default();
            if status.starts_with("201") {
                summary.created += 1;
            } else if unchanged(&entry["response"]["outcome"]) {
                summary.unchanged += 1;
            } else {
                summary.updated += 1;
            }
        }
        Ok(())
    }
}

/// Whether an entry's outcome says nothing was written (Braid's wording for an update whose
/// content is already there; another server's answer counts as an update).
fn unchanged(outcome: &Value) -> bool {
    outcome["issue"].as_array().is_some_and(|issues| {
        issues
            .iter()
            .any(|issue| issue["diagnostics"].as_str().is_some_and(|text| text.contains("nothing was changed")))
    })
}

/// What an error body says: its OperationOutcome's diagnostics, else its start.
fn diagnostics(body: &[u8]) -> String {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let issues = parsed
        .as_ref()
        .and_then(|outcome| outcome["issue"].as_array())
        .map(|issues| issues.iter().filter_map(|issue| issue["diagnostics"].as_str()).collect::<Vec<_>>().join("; "));
    match issues {
        Some(text) if !text.is_empty() => text,
        _ => String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned(),
    }
}
