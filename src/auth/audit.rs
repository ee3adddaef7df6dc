//! The audit trail: every interaction a token makes with patient data becomes part of an
//! AuditEvent in the database, readable by operators (`AuditEvent?patient=...`) and, through
//! the Patient compartment, by the patient it concerns.
//!
//! Off the request's path: the request only hands a small record to a bounded channel (and
//! waits for room when the channel is full, rather than losing records). A background task
//! groups the records of one client, user, interaction, type and outcome that arrive within
//! [`WINDOW`] into one AuditEvent listing the distinct resources they touched (up to
//! [`MAX_ENTITIES`] per event), finds the patients whose compartments the resources belong to,
//! and writes the events in one request. A reader that reads the same records over and over
//! thus adds a few events per second, not one per read.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::fhir::ResourceType;
use crate::search::compartment::COMPARTMENT_KEY;
use crate::store::{Action, Store, WriteOp, WriteRequest};

/// Records waiting to be written, at most.
pub const CHANNEL_CAPACITY: usize = 8192;

/// How long records are gathered before their events are written.
pub const WINDOW: Duration = Duration::from_secs(1);

/// Most resources one AuditEvent lists.
pub const MAX_ENTITIES: usize = 500;

/// Most patients of one event's resources looked up.
const MAX_PATIENT_LOOKUPS: usize = 1000;

/// One interaction, as the request saw it.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub client_id: String,
    /// The user (`sub`) of a user's token; the client for a backend service.
    pub subject: String,
    pub fhir_user: Option<String>,
    /// The patient of a patient-context token.
    pub patient: Option<String>,
    /// The FHIR restful-interaction code (`read`, `search-type`, ...).
    pub interaction: &'static str,
    pub resource_type: Option<ResourceType>,
    /// The resources addressed (`Type/id`), where the request names them.
    pub resources: Vec<String>,
    /// The query of a search, as sent.
    pub query: Option<String>,
    pub status: u16,
    /// Microseconds since the epoch.
    pub recorded_micros: i64,
}

/// Where requests hand their records.
#[derive(Clone)]
pub struct AuditSink {
    sender: mpsc::Sender<AuditRecord>,
}

impl AuditSink {
    /// Starts the task that writes the events to `store`; it ends, after writing what it holds,
    /// when the last sink is dropped.
    pub fn start(store: Store) -> AuditSink {
        let (sender, receiver) = mpsc::channel(CHANNEL_CAPACITY);
        tokio::spawn(run(store, receiver));
        AuditSink { sender }
    }

    /// Hands over a record; waits only when the writer is far behind.
    pub async fn record(&self, record: AuditRecord) {
        if let Err(mpsc::error::TrySendError::Full(record)) = self.sender.try_send(record) {
            tracing::warn!("the audit trail is behind; requests wait for it");
            let _ = self.sender.send(record).await;
        }
    }
}

/// What groups records into one event.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    client_id: String,
    subject: String,
    interaction: &'static str,
    resource_type: Option<ResourceType>,
    status: u16,
}

/// Records written in one request, at most.
const MAX_BATCH: usize = 4096;

async fn run(store: Store, mut receiver: mpsc::Receiver<AuditRecord>) {
    while let Some(first) = receiver.recv().await {
        let mut pending = vec![first];
        let deadline = tokio::time::Instant::now() + WINDOW;
        let mut closed = false;
        while pending.len() < MAX_BATCH {
            match tokio::time::timeout_at(deadline, receiver.recv()).await {
                Ok(Some(record)) => pending.push(record),
                Ok(None) => {
                    closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        write(&store, pending).await;
        if closed {
            break;
        }
    }
}

/// What one event records: a group's distinct resources (or a share of them), its queries,
/// and the patients its tokens named.
struct Gathered<'a> {
    first: &'a AuditRecord,
    resources: Vec<String>,
    queries: Vec<String>,
    token_patients: Vec<String>,
    recorded_micros: i64,
}

/// Writes the events of `records`: one per group, each listing the group's distinct resources
/// ([`MAX_ENTITIES`] at most: a group that touched more is split).
async fn write(store: &Store, records: Vec<AuditRecord>) {
    if records.is_empty() {
        return;
    }
    let mut groups: HashMap<GroupKey, Vec<AuditRecord>> = HashMap::new();
    for record in records {
        let key = GroupKey {
            client_id: record.client_id.clone(),
            subject: record.subject.clone(),
            interaction: record.interaction,
            resource_type: record.resource_type,
            status: record.status,
        };
        groups.entry(key).or_default().push(record);
    }
    let resource_type = ResourceType::parse("AuditEvent").expect("a known type");
    let mut ops = Vec::new();
    for records in groups.values() {
        let mut resources = Vec::new();
        let mut queries = Vec::new();
        let mut token_patients = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for record in records {
            resources.extend(record.resources.iter().filter(|r| seen.insert((*r).clone())).cloned());
            if let Some(query) = &record.query {
                if seen.insert(format!("?{query}")) {
                    queries.push(query.clone());
                }
            }
            if let Some(patient) = &record.patient {
                if !token_patients.contains(patient) {
                    token_patients.push(patient.clone());
                }
            }
        }
        let recorded_micros = records.iter().map(|r| r.recorded_micros).max().unwrap_or(0);
        let shares = resources.len().div_ceil(MAX_ENTITIES).max(queries.len().div_ceil(MAX_ENTITIES)).max(1);
        for share in 0..shares {
            let take = |list: &[String]| list.iter().skip(share * MAX_ENTITIES).take(MAX_ENTITIES).cloned().collect();
            let gathered = Gathered {
                first: &records[0],
                resources: take(&resources),
                queries: take(&queries),
                token_patients: token_patients.clone(),
                recorded_micros,
            };
            if let Value::Object(resource) = event(store, &gathered) {
                ops.push(WriteOp {
                    full_url: None,
                    action: Action::Create { resource_type, resource, if_none_exist: None },
                });
            }
        }
    }
    let count = ops.len();
    if let Err(error) = store.write(WriteRequest { ops, ..Default::default() }).await {
        tracing::error!(%error, events = count, "audit events could not be written");
    }
}

/// The AuditEvent of one share of a group.
fn event(store: &Store, gathered: &Gathered<'_>) -> Value {
    let first = gathered.first;
    let action = match first.interaction {
        "create" => "C",
        "update" | "patch" => "U",
        "delete" => "D",
        "operation" | "transaction" | "batch" => "E",
        _ => "R",
    };
    let outcome = match first.status {
        200..=399 => "0",
        400..=499 => "4",
        _ => "8",
    };
    let mut entities: Vec<Value> = gathered.resources.iter().map(|r| json!({"what": {"reference": r}})).collect();
    for query in &gathered.queries {
        use base64::Engine;
        entities.push(json!({"query": base64::engine::general_purpose::STANDARD.encode(query)}));
    }
    let mut patients = gathered.token_patients.clone();
    // The patients whose records were touched: named by the token, or found in the
    // compartments of the resources listed. Not for refused requests: the patients of resources
    // the requester could not reach must not show in the requester's own trail.
    let succeeded = first.status < 400;
    if let Some(snapshot) = store.snapshot().ok().filter(|_| succeeded) {
        let index = snapshot.index();
        for resource in gathered.resources.iter().take(MAX_PATIENT_LOOKUPS) {
            let Some((type_name, id)) = resource.split_once('/') else { continue };
            let Some(resource_type) = ResourceType::parse(type_name) else { continue };
            if type_name == "Patient" {
                if !patients.iter().any(|p| p == id) {
                    patients.push(id.to_owned());
                }
                continue;
            }
            let Ok(Some(version)) = snapshot.current(resource_type, id) else { continue };
            let Ok(members) =
                crate::store::IndexView::probe(&index, resource_type, id, version.version, COMPARTMENT_KEY)
            else {
                continue;
            };
            for member in members {
                if let Some(patient) = String::from_utf8_lossy(&member).strip_prefix("Patient/") {
                    if !patients.iter().any(|p| p == patient) {
                        patients.push(patient.to_owned());
                    }
                }
            }
        }
    }
    for patient in &patients {
        let reference = format!("Patient/{patient}");
        let role =
            json!({"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"});
        match entities.iter_mut().find(|e| e["what"]["reference"] == reference.as_str()) {
            Some(entity) => entity["role"] = role,
            None => entities.push(json!({"what": {"reference": reference}, "role": role})),
        }
    }
    let mut agents = vec![json!({
        "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150", "display": "Application"}]},
        "who": {"identifier": {"system": "urn:braid:client", "value": first.client_id}},
        "requestor": first.subject == first.client_id
    })];
    if first.subject != first.client_id {
        let who = match &first.fhir_user {
            Some(reference) => {
                json!({"reference": relative(reference), "identifier": {"system": "urn:braid:user", "value": first.subject}})
            }
            None => json!({"identifier": {"system": "urn:braid:user", "value": first.subject}}),
        };
        agents.push(json!({"who": who, "requestor": true}));
    }
    let mut event = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110", "display": "Patient Record"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": first.interaction}],
        "action": action,
        "recorded": crate::fhir::json::format_instant(gathered.recorded_micros),
        "outcome": outcome,
        "agent": agents,
        "source": {"observer": {"display": "Braid"}},
    });
    if !entities.is_empty() {
        event["entity"] = Value::Array(entities);
    }
    event
}

/// `https://host/fhir/Patient/1` as `Patient/1` (the audit trail names resources of this
/// server relative to it).
fn relative(reference: &str) -> String {
    let parts: Vec<&str> = reference.rsplitn(3, '/').collect();
    match parts.as_slice() {
        [id, resource_type, _] if ResourceType::parse(resource_type).is_some() => format!("{resource_type}/{id}"),
        _ => reference.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_named_by_their_resource_relative_to_the_server() {
        assert_eq!(relative("https://h/fhir/Practitioner/7"), "Practitioner/7");
        assert_eq!(relative("Patient/1"), "Patient/1");
        assert_eq!(relative("odd"), "odd");
    }
}
