//! The audit trail: every interaction a token makes with patient data becomes part of an
//! AuditEvent in the database, readable by operators (`AuditEvent?patient=...`) and, through
//! the Patient compartment, by the patient it concerns.
//!
//! Records of one client, user, interaction, type and outcome made within one window (the
//! `audit_window_secs` setting) become one AuditEvent listing the distinct resources they
//! touched (up to [`MAX_ENTITIES`] per event) and the period they were touched in, with the
//! patients whose compartments the resources belong to. A reader that reads the same records
//! over and over thus adds one event per window, not one per read.
//!
//! Off the request's path, in two stages. A request gathers its record into its thread's shard
//! (a lock no other request thread takes; it waits only when the background task has fallen
//! behind, rather than losing records). Four times a second a background task takes what the
//! shards gathered, merges it (a resource read on two threads is listed once), and at the end
//! of each window writes the window's events in one request.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::Notify;

use crate::auth::Grant;
use crate::fhir::ResourceType;
use crate::search::compartment::COMPARTMENT_KEY;
use crate::store::{Action, Store, WriteOp, WriteRequest};

/// Most resources one AuditEvent lists.
pub const MAX_ENTITIES: usize = 500;

/// Most patients of one event's resources looked up.
const MAX_PATIENT_LOOKUPS: usize = 1000;

/// One interaction, as the request saw it.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    /// Who: the token's client, its user (`sub`; the client itself for a backend service),
    /// the user's FHIR resource and the patient in context.
    pub grant: Arc<Grant>,
    /// The FHIR restful-interaction code (`read`, `search-type`, ...).
    pub interaction: &'static str,
    pub resource_type: Option<ResourceType>,
    /// The resource addressed (`Type/id`), where the request names one.
    pub resource: Option<String>,
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

/// Shards of the gathering, so that request threads do not contend: a thread always uses the
/// same shard (threads beyond this number share them).
const SHARDS: usize = 16;

/// Most finished events a shard holds for the background task before requests wait for it.
const MAX_PENDING_SHARES: usize = 64;

/// Most records a shard gathers between two visits of the background task before requests wait
/// for it (its groups hold at most one listing per distinct resource, but a stalled task must
/// not let them grow for ever).
const MAX_PENDING_RECORDS: usize = 65_536;

/// What the requests have gathered since the background task last took it.
struct Shared {
    shards: Box<[Mutex<Gathering>]>,
    /// Signalled by a request that found its shard full.
    full: Notify,
    /// Signalled when the shards were emptied.
    drained: Notify,
}

/// The shard of the calling thread.
fn shard_index() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    thread_local! {
        static INDEX: usize = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % SHARDS;
    }
    INDEX.with(|index| *index)
}

impl AuditSink {
    /// Starts the task that writes the events to `store`; it ends, after writing what it holds,
    /// once the last sink is dropped. `window` is how long a group's records are gathered into
    /// one event.
    pub fn start(store: Store, window: Duration) -> AuditSink {
        let shared = Arc::new(Shared {
            shards: (0..SHARDS).map(|_| Mutex::new(Gathering::default())).collect(),
            full: Notify::new(),
            drained: Notify::new(),
        });
        tokio::spawn(run(store, shared.clone(), window));
        AuditSink { shared }
    }

    /// Hands over a record: gathered into the calling thread's shard under its lock (which only
    /// the background task also takes, four times a second), no task woken. Waits only when
    /// the shard holds [`MAX_PENDING_SHARES`] events the background task has not taken yet.
    pub async fn record(&self, record: AuditRecord) {
        let shard = &self.shared.shards[shard_index()];
        let mut record = Some(record);
        let try_add = |record: &mut Option<AuditRecord>| {
            let mut gathering = shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if gathering.finished.len() < MAX_PENDING_SHARES && gathering.records < MAX_PENDING_RECORDS {
                gathering.add(record.take().expect("added once"));
                true
            } else {
                false
            }
        };
        // The usual case, with nothing to wait for.
        if try_add(&mut record) {
            return;
        }
        loop {
            let drained = self.shared.drained.notified();
            tokio::pin!(drained);
            // Registered before the check, so that a drain in between is not missed.
            drained.as_mut().enable();
            if try_add(&mut record) {
                return;
            }
            tracing::warn!("the audit trail is behind; requests wait for it");
            self.shared.full.notify_one();
            drained.await;
        }
    }
}

/// What groups records into one event: client, subject, the token's patient, interaction, type
/// and outcome. The patient is part of the key so that an event names only the patient of the
/// tokens it gathers (a practitioner's tokens for two patients make two events).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct GroupKey {
    client_id: String,
    subject: String,
    patient: Option<String>,
    interaction: &'static str,
    resource_type: Option<ResourceType>,
    status: u16,
}

/// A [`GroupKey`] borrowed from a record, to find its group without allocating. Its fields
/// hash as the key's do (a `String` hashes as its `str`).
#[derive(Hash)]
struct GroupRef<'a> {
    client_id: &'a str,
    subject: &'a str,
    patient: Option<&'a str>,
    interaction: &'static str,
    resource_type: Option<ResourceType>,
    status: u16,
}

impl hashbrown::Equivalent<GroupKey> for GroupRef<'_> {
    fn equivalent(&self, key: &GroupKey) -> bool {
        self.client_id == key.client_id
            && self.subject == key.subject
            && self.patient == key.patient.as_deref()
            && self.interaction == key.interaction
            && self.resource_type == key.resource_type
            && self.status == key.status
    }
}

impl GroupRef<'_> {
    fn to_key(&self) -> GroupKey {
        GroupKey {
            client_id: self.client_id.to_owned(),
            subject: self.subject.to_owned(),
            patient: self.patient.map(str::to_owned),
            interaction: self.interaction,
            resource_type: self.resource_type,
            status: self.status,
        }
    }
}

/// Most groups one gathering holds; more (many clients or users within one window) end the
/// window early.
const MAX_GROUPS: usize = 1_000;

/// Every [`DRAIN_EVERY`] (or at once when a shard fills), takes what the shards gathered and
/// merges it into one gathering, which lists each resource once per group and window; every
/// `window` the gathered groups go to a second task that writes their events, so gathering
/// goes on while a batch is being written. A group that has listed [`MAX_ENTITIES`] resources
/// is sent on at once, so what is gathered stays bounded.
async fn run(store: Store, shared: Arc<Shared>, window: Duration) {
    let (batches, mut to_write) = tokio::sync::mpsc::channel::<Vec<Gathered>>(1);
    let writer = tokio::spawn(async move {
        while let Some(batch) = to_write.recv().await {
            write(&store, batch).await;
        }
    });
    let mut gathering = Gathering::default();
    let mut ticks = tokio::time::interval(DRAIN_EVERY.min(window));
    let mut window_started = tokio::time::Instant::now();
    let mut shares = Vec::new();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shared.full.notified() => {}
        }
        // Only this task holds the shards once every sink is gone: the server has stopped.
        let last = Arc::strong_count(&shared) == 1;
        let window_over = last || window_started.elapsed() >= window || gathering.groups.len() >= MAX_GROUPS;
        for shard in shared.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            shares.append(&mut shard.finished);
            shard.take_pending(&mut shares);
            if window_over {
                shard.end_window();
            }
        }
        shared.drained.notify_waiters();
        for share in shares.drain(..) {
            gathering.merge(share);
        }
        if window_over {
            window_started = tokio::time::Instant::now();
            gathering.finish_all();
        }
        // Full shares wait for the window's end (or for enough of them), so that the events of
        // a window are written in one commit: each commit costs the readers their cached pages.
        let write_now = window_over || gathering.finished.len() >= WRITE_BATCH;
        if write_now
            && !gathering.finished.is_empty()
            && batches.send(std::mem::take(&mut gathering.finished)).await.is_err()
        {
            tracing::error!("the audit trail's writer stopped; no more events are written");
            break;
        }
        if last {
            break;
        }
    }
    drop(batches);
    let _ = writer.await;
}

/// Most events that wait for their window's end before they are written.
const WRITE_BATCH: usize = 64;

/// How often the shards are emptied into the gathering (also whenever one fills).
const DRAIN_EVERY: Duration = Duration::from_millis(250);

/// Groups of records, and the events ready to be written.
#[derive(Default)]
struct Gathering {
    groups: hashbrown::HashMap<GroupKey, Gathered>,
    finished: Vec<Gathered>,
    /// The resources the groups remember having listed, all groups together.
    seen_entries: usize,
    /// The records gathered since the background task last took them (a shard's).
    records: usize,
}

/// Most resources one gathering remembers having listed; beyond, it forgets them all (some
/// may then be listed twice in a window, none is left out).
const MAX_SEEN_ENTRIES: usize = 200_000;

impl Gathering {
    /// The group of `key`, made on first use.
    fn group(&mut self, key: &GroupRef<'_>, fhir_user: Option<&String>, micros: i64) -> &mut Gathered {
        if !self.groups.contains_key(key) {
            if self.groups.len() >= MAX_GROUPS {
                // Bounds a shard's groups; each group's share is written as it is.
                self.finish_all();
            }
            self.groups.insert(key.to_key(), Gathered::new(key.to_key(), fhir_user.cloned(), micros));
        }
        self.groups.get_mut(key).expect("inserted above")
    }

    /// Gathers one request's record.
    fn add(&mut self, record: AuditRecord) {
        let AuditRecord { grant, interaction, resource_type, resource, query, status, recorded_micros } = record;
        let key = GroupRef {
            client_id: &grant.client_id,
            subject: &grant.subject,
            patient: grant.patient.as_deref(),
            interaction,
            resource_type,
            status,
        };
        let gathered = self.group(&key, grant.fhir_user.as_ref(), recorded_micros);
        gathered.note(1, (recorded_micros, recorded_micros));
        let remembered = gathered.list(resource);
        gathered.list_query(query);
        self.seen_entries += usize::from(remembered);
        self.finish_if_full(&key);
        self.records += 1;
        self.forget_if_too_many();
    }

    /// Bounds what the groups remember (see [`MAX_SEEN_ENTRIES`]).
    fn forget_if_too_many(&mut self) {
        if self.seen_entries > MAX_SEEN_ENTRIES {
            for gathered in self.groups.values_mut() {
                gathered.seen.clear();
            }
            self.seen_entries = 0;
        }
    }

    /// Gathers a share another gathering took.
    fn merge(&mut self, share: Gathered) {
        let Gathered { key, fhir_user, resources, queries, period_micros, requests, .. } = share;
        let key = GroupRef {
            client_id: &key.client_id,
            subject: &key.subject,
            patient: key.patient.as_deref(),
            interaction: key.interaction,
            resource_type: key.resource_type,
            status: key.status,
        };
        self.group(&key, fhir_user.as_ref(), period_micros.0).note(requests, period_micros);
        let listed = resources.into_iter().map(|r| (Some(r), None)).chain(queries.into_iter().map(|q| (None, Some(q))));
        for (resource, query) in listed {
            let gathered = self.group(&key, fhir_user.as_ref(), period_micros.0);
            if !gathered.has_pending() {
                // The group's last share was just taken: what follows belongs to the same period.
                gathered.note(0, period_micros);
            }
            let remembered = gathered.list(resource);
            gathered.list_query(query);
            self.seen_entries += usize::from(remembered);
            self.finish_if_full(&key);
        }
        self.forget_if_too_many();
    }

    /// A group that lists as many resources (or queries) as an event holds: its share is ready
    /// to be written now, and the group goes on gathering, still knowing what it listed.
    fn finish_if_full(&mut self, key: &GroupRef<'_>) {
        if let Some(gathered) = self.groups.get_mut(key) {
            if gathered.is_full() {
                let share = gathered.take_share();
                self.finished.push(share);
            }
        }
    }

    /// Takes what every group gathered since its last share (its requests, and the resources
    /// and queries it listed first); the groups remember what they listed.
    fn take_pending(&mut self, into: &mut Vec<Gathered>) {
        into.extend(self.groups.values_mut().filter(|g| g.has_pending()).map(Gathered::take_share));
        self.records = 0;
    }

    /// Ends a shard's window, once its pending shares are taken: what its groups listed is
    /// forgotten (the next window lists it again); groups that listed nothing are dropped, the
    /// others keep their memory for the next window.
    fn end_window(&mut self) {
        self.groups.retain(|_, gathered| {
            let active = !gathered.seen.is_empty();
            gathered.seen.clear();
            active
        });
        self.seen_entries = 0;
    }

    /// Ends the window: every group's last share is ready to be written.
    fn finish_all(&mut self) {
        for (_, mut gathered) in self.groups.drain() {
            if gathered.has_pending() {
                self.finished.push(gathered.take_share());
            }
        }
        self.seen_entries = 0;
    }
}

/// Most distinct resources a group remembers having listed within one window.
const MAX_SEEN: usize = 100_000;

/// What a group remembers of a resource it listed: 128 bits from two hashers seeded at random
/// for this process. Remembering the text instead costs a string comparison in memory far
/// from the cache on every request; two texts with the same fingerprint (one chance in 2^128
/// by accident, and not to be found without the seeds) would list only the first.
fn fingerprint(text: &str) -> u128 {
    use std::hash::BuildHasher;
    static SEEDS: std::sync::LazyLock<(hashbrown::DefaultHashBuilder, hashbrown::DefaultHashBuilder)> =
        std::sync::LazyLock::new(Default::default);
    ((SEEDS.0.hash_one(text) as u128) << 64) | SEEDS.1.hash_one(text) as u128
}

/// What one event records: a group's distinct resources (a share of them when there are more
/// than [`MAX_ENTITIES`]), its distinct queries, and the patients its tokens named.
struct Gathered {
    key: GroupKey,
    fhir_user: Option<String>,
    resources: Vec<String>,
    /// The resources listed in this window (by [`fingerprint`]), to list each once.
    seen: hashbrown::HashSet<u128>,
    queries: Vec<String>,
    /// When the group's first and last requests (since its last share) were made.
    period_micros: (i64, i64),
    /// The requests since the last share.
    requests: usize,
}

impl Gathered {
    fn new(key: GroupKey, fhir_user: Option<String>, recorded_micros: i64) -> Gathered {
        Gathered {
            key,
            fhir_user,
            resources: Vec::new(),
            seen: hashbrown::HashSet::new(),
            queries: Vec::new(),
            period_micros: (recorded_micros, recorded_micros),
            requests: 0,
        }
    }

    /// Counts `requests` made within `period`.
    fn note(&mut self, requests: usize, period: (i64, i64)) {
        self.requests += requests;
        self.period_micros.0 = self.period_micros.0.min(period.0);
        self.period_micros.1 = self.period_micros.1.max(period.1);
    }

    /// Lists `resource` unless this window listed it already; whether it remembered one more.
    fn list(&mut self, resource: Option<String>) -> bool {
        let Some(resource) = resource else { return false };
        let print = fingerprint(&resource);
        if self.seen.contains(&print) {
            return false;
        }
        if self.seen.len() >= MAX_SEEN {
            // Bounds the memory of a window that touches a great many resources; some may
            // then be listed twice in the window, none is left out.
            self.seen.clear();
        }
        self.seen.insert(print);
        self.resources.push(resource);
        true
    }

    fn list_query(&mut self, query: Option<String>) {
        if let Some(query) = query {
            if !self.queries.contains(&query) {
                self.queries.push(query);
            }
        }
    }

    /// Whether anything was gathered since the last share.
    fn has_pending(&self) -> bool {
        self.requests > 0 || !self.resources.is_empty() || !self.queries.is_empty()
    }

    fn is_full(&self) -> bool {
        self.resources.len() >= MAX_ENTITIES || self.queries.len() >= MAX_ENTITIES
    }

    /// What has been gathered since the last share, as an event to write; the group keeps its
    /// key and what it has listed.
    fn take_share(&mut self) -> Gathered {
        let share = Gathered {
            key: self.key.clone(),
            fhir_user: self.fhir_user.clone(),
            resources: std::mem::take(&mut self.resources),
            seen: hashbrown::HashSet::new(),
            queries: std::mem::take(&mut self.queries),
            period_micros: self.period_micros,
            requests: self.requests,
        };
        self.period_micros = (i64::MAX, i64::MIN);
        self.requests = 0;
        share
    }
}

/// Why a sign-in failed, for the trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginFailure {
    Password,
    SecondFactor,
}

/// Longest user name a failed login's event records (it is whatever was typed).
const MAX_RECORDED_USERNAME: usize = 64;

/// Records a failed sign-in as an AuditEvent (DICOM User Authentication / Login, outcome 4):
/// the name typed, the address it came from, and why. Written at once rather than gathered:
/// each must be kept, and they are few: every one cost a password or code check, and the login
/// limits stop an account's or an address's attempts after a few.
pub async fn record_failed_login(store: &Store, username: &str, address: &str, failure: LoginFailure) {
    let description = match failure {
        LoginFailure::Password => "wrong user name or password",
        LoginFailure::SecondFactor => "wrong or replayed second-factor code",
    };
    let username: String = username.chars().take(MAX_RECORDED_USERNAME).collect();
    let recorded = crate::fhir::json::now_micros();
    let event = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110114", "display": "User Authentication"},
        "subtype": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110122", "display": "Login"}],
        "action": "E",
        "recorded": crate::fhir::json::format_instant(recorded),
        "outcome": "4",
        "outcomeDesc": description,
        "agent": [{
            "who": {"identifier": {"system": "urn:braid:user", "value": username}},
            "requestor": true,
            "network": {"address": address, "type": "2"}
        }],
        "source": {"observer": {"display": "Braid"}},
    });
    let Value::Object(resource) = event else { unreachable!("an object literal") };
    let resource_type = ResourceType::parse("AuditEvent").expect("a known type");
    let op = WriteOp { full_url: None, action: Action::Create { resource_type, resource, if_none_exist: None } };
    if let Err(error) = store.write(WriteRequest { ops: vec![op], ..Default::default() }).await {
        tracing::error!(%error, "a failed login could not be recorded");
    }
}

/// Writes one event per gathered group, in one request.
async fn write(store: &Store, batch: Vec<Gathered>) {
    if batch.is_empty() {
        return;
    }
    let resource_type = ResourceType::parse("AuditEvent").expect("a known type");
    let ops: Vec<WriteOp> = batch
        .iter()
        .filter_map(|gathered| match event(store, gathered) {
            Value::Object(resource) => Some(WriteOp {
                full_url: None,
                action: Action::Create { resource_type, resource, if_none_exist: None },
            }),
            _ => None,
        })
        .collect();
    let count = ops.len();
    if let Err(error) = store.write(WriteRequest { ops, ..Default::default() }).await {
        tracing::error!(%error, events = count, "audit events could not be written");
    }
}

/// The AuditEvent of one share of a group.
fn event(store: &Store, gathered: &Gathered) -> Value {
    let GroupKey { client_id, subject, interaction, status, .. } = &gathered.key;
    let action = match *interaction {
        "create" => "C",
        "update" | "patch" => "U",
        "delete" => "D",
        "operation" | "transaction" | "batch" => "E",
        _ => "R",
    };
    let outcome = match status {
        200..=399 => "0",
        400..=499 => "4",
        _ => "8",
    };
    let mut entities: Vec<Value> = gathered.resources.iter().map(|r| json!({"what": {"reference": r}})).collect();
    // Where each listed resource's entity is, to mark a patient's own entry (an event lists up
    // to MAX_ENTITIES resources: a scan per patient would be quadratic).
    let listed: HashMap<&str, usize> =
        gathered.resources.iter().enumerate().map(|(position, r)| (r.as_str(), position)).collect();
    for query in &gathered.queries {
        use base64::Engine;
        entities.push(json!({"query": base64::engine::general_purpose::STANDARD.encode(query)}));
    }
    let mut patients: Vec<String> = gathered.key.patient.iter().cloned().collect();
    let mut known: HashSet<String> = patients.iter().cloned().collect();
    // The patients whose records were touched: named by the token, or found in the
    // compartments of the resources listed. Not for refused requests: the patients of resources
    // the requester could not reach must not show in the requester's own trail.
    let succeeded = *status < 400;
    if let Some(snapshot) = store.snapshot().ok().filter(|_| succeeded) {
        let index = snapshot.index();
        for resource in gathered.resources.iter().take(MAX_PATIENT_LOOKUPS) {
            let Some((type_name, id)) = resource.split_once('/') else { continue };
            let Some(resource_type) = ResourceType::parse(type_name) else { continue };
            if type_name == "Patient" {
                if known.insert(id.to_owned()) {
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
                    if known.insert(patient.to_owned()) {
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
        match listed.get(reference.as_str()) {
            Some(&position) => entities[position]["role"] = role,
            None => entities.push(json!({"what": {"reference": reference}, "role": role})),
        }
    }
    // The client's name as registered, so that a person reading their trail sees which app or
    // provider it was (a source's client is named after its source).
    let client_name = store.auth_read(|read| super::clients::name_of(read, client_id)).ok().flatten();
    let mut application = json!({"identifier": {"system": "urn:braid:client", "value": client_id}});
    if let Some(name) = client_name {
        application["display"] = json!(name);
    }
    let mut agents = vec![json!({
        "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150", "display": "Application"}]},
        "who": application,
        "requestor": subject == client_id
    })];
    if subject != client_id {
        let who = match &gathered.fhir_user {
            Some(reference) => {
                json!({"reference": relative(reference), "identifier": {"system": "urn:braid:user", "value": subject}})
            }
            None => json!({"identifier": {"system": "urn:braid:user", "value": subject}}),
        };
        agents.push(json!({"who": who, "requestor": true}));
    }
    let mut event = json!({
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110", "display": "Patient Record"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": interaction}],
        "action": action,
        "period": {
            "start": crate::fhir::json::format_instant(gathered.period_micros.0),
            "end": crate::fhir::json::format_instant(gathered.period_micros.1)
        },
        "recorded": crate::fhir::json::format_instant(gathered.period_micros.1),
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

    fn record(client: &str, resource: &str, micros: i64) -> AuditRecord {
        let mut grant = Grant::for_test("system/*.rs", None, None);
        grant.client_id = client.into();
        grant.subject = client.into();
        AuditRecord {
            grant: Arc::new(grant),
            interaction: "read",
            resource_type: Some(ResourceType::PATIENT),
            resource: Some(resource.into()),
            query: None,
            status: 200,
            recorded_micros: micros,
        }
    }

    #[test]
    fn a_window_lists_each_resource_once_per_group_with_the_period_of_its_requests() {
        let mut gathering = Gathering::default();
        for (n, resource) in ["Patient/1", "Patient/2", "Patient/1", "Patient/1"].iter().enumerate() {
            gathering.add(record("app", resource, 100 + n as i64));
        }
        gathering.add(record("other", "Patient/1", 50));
        gathering.add(AuditRecord { status: 404, ..record("app", "Patient/9", 70) });
        assert!(gathering.finished.is_empty(), "nothing is written before the window ends");
        gathering.finish_all();
        type Event = (String, u16, Vec<String>, (i64, i64));
        let mut events: Vec<Event> = gathering
            .finished
            .iter()
            .map(|g| (g.key.client_id.clone(), g.key.status, g.resources.clone(), g.period_micros))
            .collect();
        events.sort();
        assert_eq!(
            events,
            vec![
                ("app".into(), 200, vec!["Patient/1".into(), "Patient/2".into()], (100, 103)),
                ("app".into(), 404, vec!["Patient/9".into()], (70, 70)),
                ("other".into(), 200, vec!["Patient/1".into()], (50, 50)),
            ]
        );
    }

    #[test]
    fn the_tokens_of_two_patients_never_share_an_event_even_across_windows() {
        let with_patient = |patient: &str, resource: &str, micros: i64| {
            let mut record = record("app", resource, micros);
            let mut grant = (*record.grant).clone();
            grant.patient = Some(patient.into());
            grant.subject = "dr-lee".into();
            record.grant = Arc::new(grant);
            record
        };
        let mut shard = Gathering::default();
        let mut merged = Gathering::default();
        for window in 0..2 {
            shard.add(with_patient("A", "Observation/a1", window));
            shard.add(with_patient("B", "Observation/b1", window));
            let mut shares = std::mem::take(&mut shard.finished);
            shard.take_pending(&mut shares);
            shard.end_window();
            for share in shares {
                merged.merge(share);
            }
            merged.finish_all();
        }
        assert_eq!(merged.finished.len(), 4, "one event per patient and window");
        for event in &merged.finished {
            let patient = event.key.patient.as_deref().unwrap();
            let own = format!("Observation/{}1", patient.to_lowercase());
            assert_eq!(event.resources, vec![own], "an event of {patient}'s token lists only what it read");
        }
    }

    #[test]
    fn what_a_gathering_remembers_is_bounded() {
        let mut gathering = Gathering::default();
        for n in 0..MAX_SEEN_ENTRIES + 10 {
            gathering.add(record("app", &format!("Patient/{n}"), n as i64));
        }
        assert!(gathering.seen_entries <= MAX_SEEN_ENTRIES);
        assert!(gathering.groups.values().map(|g| g.seen.len()).sum::<usize>() <= MAX_SEEN_ENTRIES);
        let listed: usize = gathering.finished.iter().map(|g| g.resources.len()).sum::<usize>()
            + gathering.groups.values().map(|g| g.resources.len()).sum::<usize>();
        assert_eq!(listed, MAX_SEEN_ENTRIES + 10, "forgetting lists again, never leaves out");
    }

    #[test]
    fn a_fingerprint_is_two_independent_hashes() {
        for text in ["Patient/1", "Observation/abc", ""] {
            let print = fingerprint(text);
            assert_ne!(print >> 64, print & u64::MAX as u128, "two differently seeded hashers");
            assert_eq!(print, fingerprint(text));
        }
        assert_ne!(fingerprint("Patient/1"), fingerprint("Patient/2"));
    }

    #[test]
    fn what_two_shards_gathered_is_merged_listing_each_resource_once() {
        let (mut first, mut second) = (Gathering::default(), Gathering::default());
        for n in 0..600 {
            first.add(record("app", &format!("Patient/{n}"), n));
        }
        for n in 300..900 {
            second.add(record("app", &format!("Patient/{n}"), n));
        }
        let mut shares = Vec::new();
        for shard in [&mut first, &mut second] {
            shares.append(&mut shard.finished);
            shard.take_pending(&mut shares);
        }
        assert_eq!(shares.len(), 4, "each shard wrote one full share and has one pending");
        let mut merged = Gathering::default();
        for share in shares {
            merged.merge(share);
        }
        merged.finish_all();
        assert!(merged.finished.iter().all(|g| g.resources.len() <= MAX_ENTITIES));
        let listed: Vec<&String> = merged.finished.iter().flat_map(|g| &g.resources).collect();
        let distinct: HashSet<&String> = listed.iter().copied().collect();
        assert_eq!((listed.len(), distinct.len()), (900, 900), "every resource once");
        let start = merged.finished.iter().map(|g| g.period_micros.0).min();
        let end = merged.finished.iter().map(|g| g.period_micros.1).max();
        assert_eq!((start, end), (Some(0), Some(899)));
        assert!(merged.finished.iter().all(|g| g.period_micros.0 <= g.period_micros.1));
    }

    #[test]
    fn a_group_that_lists_the_most_resources_an_event_holds_is_written_at_once() {
        let mut gathering = Gathering::default();
        for n in 0..MAX_ENTITIES * 2 + 3 {
            gathering.add(record("app", &format!("Patient/{n}"), n as i64));
        }
        // Two full events are ready before the window ends; what is left waits for it.
        assert_eq!(gathering.finished.len(), 2);
        assert!(gathering.finished.iter().all(|g| g.resources.len() == MAX_ENTITIES));
        assert_eq!(gathering.groups.values().map(|g| g.resources.len()).sum::<usize>(), 3);
        // Resources read again later in the window are not listed again.
        for n in 0..MAX_ENTITIES * 2 + 3 {
            gathering.add(record("app", &format!("Patient/{n}"), 5_000 + n as i64));
        }
        assert_eq!(gathering.finished.len(), 2);
        gathering.finish_all();
        assert_eq!(gathering.finished.len(), 3);
        assert_eq!(gathering.finished[2].resources.len(), 3);
        assert_eq!(gathering.finished[2].period_micros, (MAX_ENTITIES as i64 * 2, 5_000 + MAX_ENTITIES as i64 * 2 + 2));
        let listed: HashSet<&String> = gathering.finished.iter().flat_map(|g| &g.resources).collect();
        assert_eq!(listed.len(), MAX_ENTITIES * 2 + 3, "no resource is listed twice");
    }

    #[test]
    fn users_are_named_by_their_resource_relative_to_the_server() {
        assert_eq!(relative("https://h/fhir/Practitioner/7"), "Practitioner/7");
        assert_eq!(relative("Patient/1"), "Patient/1");
        assert_eq!(relative("odd"), "odd");
    }
}
