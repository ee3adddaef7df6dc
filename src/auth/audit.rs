//! The audit trail: every interaction a token makes with patient data becomes part of an
//! AuditEvent in the database, readable by operators (`AuditEvent?patient=...`) and, through
//! the Patient compartment, by the patient it concerns.
//!
//! Off the request's path: the request only pushes a small record into a bounded buffer (and
//! waits for room when it is full, rather than losing records). A background task
//! groups the records of one client, user, interaction, type and outcome that arrive within
//! [`WINDOW`] into one AuditEvent listing the distinct resources they touched (up to
//! [`MAX_ENTITIES`] per event), finds the patients whose compartments the resources belong to,
//! and writes the events in one request. A reader that reads the same records over and over
//! thus adds a few events per second, not one per read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::fhir::ResourceType;
use crate::search::compartment::COMPARTMENT_KEY;
use crate::store::{Action, Store, WriteOp, WriteRequest};

/// Records waiting to be gathered, at most (a record is a few hundred bytes).
pub const BUFFER_CAPACITY: usize = 65_536;

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
    shared: Arc<Shared>,
}

/// The records handed over since the last gathering.
struct Shared {
    buffer: Mutex<Vec<AuditRecord>>,
    /// Signalled by a request that found the buffer full.
    full: Notify,
    /// Signalled when the buffer was emptied.
    drained: Notify,
}

impl AuditSink {
    /// Starts the task that writes the events to `store`; it ends, after writing what it holds,
    /// once the last sink is dropped.
    pub fn start(store: Store) -> AuditSink {
        let shared = Arc::new(Shared { buffer: Mutex::new(Vec::new()), full: Notify::new(), drained: Notify::new() });
        tokio::spawn(run(store, shared.clone()));
        AuditSink { shared }
    }

    /// Hands over a record: a push under a lock, no task woken. Waits only when the buffer is
    /// full ([`BUFFER_CAPACITY`] records since the last gathering).
    pub async fn record(&self, record: AuditRecord) {
        let mut record = Some(record);
        {
            // The usual case, with nothing to wait for.
            let mut buffer = self.shared.buffer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if buffer.len() < BUFFER_CAPACITY {
                buffer.extend(record.take());
                return;
            }
        }
        loop {
            let drained = self.shared.drained.notified();
            tokio::pin!(drained);
            // Registered before the check, so that a drain in between is not missed.
            drained.as_mut().enable();
            {
                let mut buffer = self.shared.buffer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if buffer.len() < BUFFER_CAPACITY {
                    buffer.extend(record.take());
                    return;
                }
            }
            tracing::warn!("the audit trail is behind; requests wait for it");
            self.shared.full.notify_one();
            drained.await;
        }
    }
}

/// What groups records into one event: client, subject, interaction, type and outcome.
type GroupKey<'a> = (&'a str, &'a str, &'static str, Option<ResourceType>, u16);

/// Takes the records handed over every [`WINDOW`] (or at once when the buffer fills) and hands
/// them to a second task that writes them: gathering goes on while a batch is being written.
async fn run(store: Store, shared: Arc<Shared>) {
    let (batches, mut to_write) = tokio::sync::mpsc::channel::<Vec<AuditRecord>>(1);
    let writer = tokio::spawn(async move {
        while let Some(batch) = to_write.recv().await {
            write(&store, batch).await;
        }
    });
    let mut ticks = tokio::time::interval(WINDOW);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shared.full.notified() => {}
        }
        // Only this task holds the buffer once every sink is gone: the server has stopped.
        let last = Arc::strong_count(&shared) == 1;
        let batch = std::mem::take(&mut *shared.buffer.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        shared.drained.notify_waiters();
        if !batch.is_empty() && batches.send(batch).await.is_err() {
            break;
        }
        if last {
            break;
        }
    }
    drop(batches);
    let _ = writer.await;
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
    let mut groups: HashMap<GroupKey<'_>, Vec<&AuditRecord>> = HashMap::new();
    for record in &records {
        let key = (
            record.client_id.as_str(),
            record.subject.as_str(),
            record.interaction,
            record.resource_type,
            record.status,
        );
        groups.entry(key).or_default().push(record);
    }
    let resource_type = ResourceType::parse("AuditEvent").expect("a known type");
    let mut ops = Vec::new();
    for records in groups.values() {
        let mut resources = Vec::new();
        let mut queries = Vec::new();
        let mut token_patients = Vec::new();
        let mut seen: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut seen_queries: std::collections::HashSet<&str> = std::collections::HashSet::new();
        for record in records {
            resources.extend(record.resources.iter().filter(|r| seen.insert(r.as_str())).cloned());
            if let Some(query) = &record.query {
                if seen_queries.insert(query.as_str()) {
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
                first: records[0],
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
