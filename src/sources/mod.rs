//! Sources: the upstream systems (EHRs) whose records Braid holds.
//!
//! A push source is an upstream that sends its records to Braid as a SMART backend client:
//! `braid source add NAME --jwks FILE` registers the source and a client that writes as it.
//! Everything that client writes lands in the source's [`namespace`] (ids, references, the
//! original id kept as an identifier, `meta.source`), its writes reach only the source's own
//! records, and each push that changes something leaves one Provenance. The source's data
//! quality policy ([`quality`]) decides what happens to resources that break only value rules.
//!
//! A pull source is an upstream Braid reads ([`pull`]); Braid's own Bulk Data `$export`, which
//! other systems pull from it, is [`export`].
//!
//! Source records live in the `auth` table under `source/NAME`, next to the client each push
//! source owns, so that adding or removing a source and its client is one commit. The
//! [`Registry`] holds the sources of a running server with their live counters, which reach
//! the database every few seconds ([`Registry::flush`]) and at shutdown.

pub mod export;
pub mod namespace;
pub mod provenance;
pub mod pull;
pub mod quality;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

pub use namespace::{Namespace, SourceName};

use crate::auth::clients::{self, GrantType, NewClient, NewCredential};
use crate::auth::records::Records;
use crate::fhir::validation::validator;
use crate::fhir::{Category, FhirError, Id, IssueCode, ResourceType};
use crate::search::query::{Clause, parse_clause};
use crate::store::{OpOutcome, OutcomeKind, Store, StoreError, WriteRequest};

/// Sources, by name.
const SOURCES: Records = Records::new(b"source/");

/// How many recent rejections a source keeps, newest last.
pub const MAX_RECENT_REJECTIONS: usize = 20;

/// Longest rejection reason kept, in bytes.
const MAX_REASON_BYTES: usize = 500;

/// One source, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceRecord {
    pub name: String,
    pub kind: SourceKind,
    /// The resource types the source may write (empty: every type).
    pub types: Vec<String>,
    /// Lenient: resources that break only value rules are stored with their issues recorded;
    /// strict (the default): they are refused.
    pub lenient: bool,
    /// Seconds since the epoch.
    pub created: u64,
    #[serde(default)]
    pub counts: Counts,
    #[serde(default)]
    pub recent_rejections: VecDeque<Rejection>,
    /// A pull source's progress: the next `_since`, the run in progress, the last runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull: Option<pull::PullState>,
}

impl SourceRecord {
    /// A source just added: nothing counted yet; a pull source has an empty progress record.
    fn new(name: &SourceName, kind: SourceKind, types: &[ResourceType], lenient: bool, now: u64) -> SourceRecord {
        let pull = matches!(kind, SourceKind::Pull { .. }).then(pull::PullState::default);
        SourceRecord {
            name: name.as_str().to_owned(),
            kind,
            types: types.iter().map(|t| t.as_str().to_owned()).collect(),
            lenient,
            created: now,
            counts: Counts::default(),
            recent_rejections: VecDeque::new(),
            pull,
        }
    }
}

/// How a source's records reach Braid.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceKind {
    /// The source pushes as the backend client `client_id`.
    Push { client_id: String },
    /// Braid pulls from the source's FHIR server.
    Pull { pull: pull::PullConfig },
}

/// What a source has done since it was added.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Write requests (a transaction or batch counts once).
    pub pushes: u64,
    pub created: u64,
    pub updated: u64,
    pub deleted: u64,
    /// Resources pushed again with the content they already had: nothing was written.
    pub unchanged: u64,
    /// Requests and batch entries refused.
    pub rejected: u64,
    /// Resources admitted with data-quality issues (lenient sources; identical re-pushes
    /// included).
    pub stored_with_issues: u64,
    /// When the last push arrived, in seconds since the epoch (0: never).
    pub last_push: u64,
}

/// One refused write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// Seconds since the epoch.
    pub at: u64,
    pub status: u16,
    /// What was refused, when known (`Patient/42`, `Bundle.entry[3]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub what: Option<String>,
    pub reason: String,
}

/// What the operator asks for when adding a push source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewSource {
    pub name: String,
    /// A push source's public keys: a JWKS document's text, or the URL it is served at
    /// (`NewCredential::None` for a pull source).
    pub credential: NewCredential,
    /// How Braid pulls from a pull source.
    #[serde(default)]
    pub pull: Option<NewPull>,
    /// Resource type names; empty for every type.
    #[serde(default)]
    pub types: Vec<String>,
    #[serde(default)]
    pub lenient: bool,
    /// Scopes granted beyond writing its own records (e.g. reading every Patient).
    #[serde(default)]
    pub extra_scope: Option<String>,
}

/// What the operator gives for a pull source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewPull {
    /// The upstream's FHIR base.
    pub base: String,
    /// Braid's client id at the upstream.
    pub client_id: String,
    /// The private key (PEM) Braid signs its client assertions with.
    pub key_pem: String,
    /// The key's id at the upstream (default: its RFC 7638 thumbprint).
    #[serde(default)]
    pub kid: Option<String>,
    /// `--every`: `15m`, `1h`, ...
    #[serde(default)]
    pub every: Option<String>,
}

fn bad(message: impl Into<String>) -> FhirError {
    FhirError::incorrect(IssueCode::Value, message)
}

/// The scope a push source's client is registered with: every interaction on its types (all
/// of them by default), over the records it wrote, and what the operator grants beyond that.
pub fn source_scope(name: &SourceName, types: &[ResourceType], extra: Option<&str>) -> String {
    let filter = format!("?_source={}", name.uri());
    let mut scopes: Vec<String> = if types.is_empty() {
        vec![format!("system/*.cruds{filter}")]
    } else {
        types.iter().map(|resource_type| format!("system/{resource_type}.cruds{filter}")).collect()
    };
    scopes.extend(extra.unwrap_or("").split_whitespace().map(str::to_owned));
    scopes.join(" ")
}

/// Validates `value`, a resource of `resource_type` about to be written, and for a source
/// moves it into the source's namespace. A lenient source's resource that breaks only value
/// rules is admitted with its issues kept inside it ([`quality`]); anything else invalid is
/// refused as before. `local_base` is Braid's FHIR base as the request addressed it (see
/// [`Namespace::apply`]).
pub fn admit(
    source: Option<&ActiveSource>,
    resource_type: ResourceType,
    value: &mut Value,
    local_base: Option<&str>,
) -> Result<(), FhirError> {
    if let Err(error) = validator().validate_value(resource_type, value) {
        match source {
            Some(source) if source.lenient && quality::only_value_issues(&error) => {
                // Counted by [`count`] once a version is written: a re-push that changes
                // nothing, or a transaction that fails, stores nothing with issues.
                let Value::Object(resource) = value else { return Err(error) };
                quality::record_issues(resource, &error.issues).map_err(|_| error)?;
            }
            _ => return Err(error),
        }
    }
    if let Some(source) = source {
        let Value::Object(resource) = value else {
            return Err(FhirError::incorrect(IssueCode::Structure, "a resource must be a JSON object"));
        };
        source.namespace.apply(resource, local_base)?;
    }
    Ok(())
}

/// The stored id of the resource a request's URL names: in the source's namespace for a
/// source, as written otherwise.
pub fn stored_id(source: Option<&ActiveSource>, id: Id) -> Id {
    match source {
        Some(source) => source.namespace.id(&id),
        None => id,
    }
}

/// `request` as a source's write: creates keep their (namespaced) ids, and a request that
/// changes something leaves a Provenance.
pub fn namespaced(source: Option<&ActiveSource>, mut request: WriteRequest) -> WriteRequest {
    if let Some(source) = source {
        request.keeps_create_ids = true;
        request.record_changes = Some(provenance::recorder(source.name(), source.client_id.as_deref()));
    }
    request
}

/// Counts what a write did, for the source's figures: among them the versions a lenient
/// source stored with data-quality issues, told by the issues [`admit`] put inside them.
pub fn count(source: Option<&ActiveSource>, outcomes: &[OpOutcome]) {
    if let Some(source) = source {
        for outcome in outcomes {
            source.wrote(outcome.kind);
            let written = matches!(outcome.kind, OutcomeKind::Created | OutcomeKind::Updated);
            if written && source.lenient && outcome.body.as_deref().is_some_and(|body| quality::holds_issues(body)) {
                source.stored_with_issues();
            }
        }
    }
}

/// The clause that limits a source's writes to its own records: their `meta.source` names it.
pub fn ownership_clause(name: &str, resource_type: ResourceType) -> Result<Clause, FhirError> {
    match parse_clause(resource_type, "_source", &namespace::source_uri(name), "")? {
        Some(clause) => Ok(clause),
        None => Err(FhirError::fault("_source is not searchable")),
    }
}

/// An error's issues as one line for a rejection: each `expression: diagnostics`, joined by `; `.
pub fn issues_text(error: &FhirError) -> String {
    let issues: Vec<String> = error
        .issues
        .iter()
        .map(|issue| match issue.expression.first() {
            Some(at) => format!("{at}: {}", issue.diagnostics),
            None => issue.diagnostics.clone(),
        })
        .collect();
    issues.join("; ")
}

/// Whether the current version `version` of `id` is the source `name`'s own (its `meta.source`
/// names the source), by its index entries: what a source's writes are guarded by.
pub fn owns_version(
    view: &dyn crate::store::IndexView,
    name: &str,
    resource_type: ResourceType,
    id: &str,
    version: u64,
) -> Result<bool, FhirError> {
    let clause = ownership_clause(name, resource_type)?;
    crate::search::engine::matches_clauses(view, resource_type, &[clause], id, version, crate::store::LATEST)
}

/// A running server's sources, with their live counters.
pub struct Registry {
    store: Store,
    active: RwLock<HashMap<String, Arc<ActiveSource>>>,
    /// Set when the server stops: running pulls stop before their next request or wait, keeping
    /// their checkpoint.
    pub(crate) stopping: Arc<std::sync::atomic::AtomicBool>,
}

/// A source as requests see it.
pub struct ActiveSource {
    pub namespace: Namespace,
    pub lenient: bool,
    pub client_id: Option<String>,
    /// Counts since the last flush, added to the stored ones then.
    pending: Mutex<Pending>,
    /// A request in flight changes counters without the lock; `pushes` is the busiest.
    pushes: AtomicU64,
    /// Held by a pull while it runs: one run per source at a time.
    pub(crate) run_lock: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct Pending {
    counts: Counts,
    rejections: VecDeque<Rejection>,
}

impl ActiveSource {
    fn new(record: &SourceRecord) -> Result<ActiveSource, StoreError> {
        let name = SourceName::parse(&record.name).map_err(|_| StoreError::Corrupt(record.name.as_bytes().to_vec()))?;
        // A pulled source's absolute references to its own server are its own resources.
        let (client_id, own_base) = match &record.kind {
            SourceKind::Push { client_id } => (Some(client_id.clone()), None),
            SourceKind::Pull { pull } => (None, Some(pull.base.as_str())),
        };
        Ok(ActiveSource {
            namespace: Namespace::new(name, own_base),
            lenient: record.lenient,
            client_id,
            pending: Mutex::new(Pending::default()),
            pushes: AtomicU64::new(0),
            run_lock: tokio::sync::Mutex::new(()),
        })
    }

    pub fn name(&self) -> &SourceName {
        self.namespace.name()
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts one write request.
    pub fn pushed(&self) {
        self.pushes.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts what one write did.
    pub fn wrote(&self, kind: OutcomeKind) {
        let mut pending = self.pending();
        let counts = &mut pending.counts;
        match kind {
            OutcomeKind::Created => counts.created += 1,
            OutcomeKind::Updated => counts.updated += 1,
            OutcomeKind::Deleted { count } => counts.deleted += count as u64,
            OutcomeKind::Unchanged => counts.unchanged += 1,
            OutcomeKind::NothingToDelete => {}
        }
    }

    /// Counts a resource stored with data-quality issues.
    pub fn stored_with_issues(&self) {
        self.pending().counts.stored_with_issues += 1;
    }

    /// Counts a refused request or batch entry, and keeps why.
    pub fn rejected(&self, what: Option<String>, error: &FhirError) {
        let mut reason = issues_text(error);
        if reason.len() > MAX_REASON_BYTES {
            let mut cut = MAX_REASON_BYTES;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
            reason.push('…');
        }
        let rejection = Rejection { at: crate::auth::now_secs(), status: error.status(), what, reason };
        let mut pending = self.pending();
        pending.counts.rejected += 1;
        if pending.rejections.len() == MAX_RECENT_REJECTIONS {
            pending.rejections.pop_front();
        }
        pending.rejections.push_back(rejection);
    }

    /// Takes the counts since the last flush.
    fn take(&self) -> Pending {
        let mut taken = std::mem::take(&mut *self.pending());
        taken.counts.pushes = self.pushes.swap(0, Ordering::Relaxed);
        if taken.counts.pushes > 0 {
            taken.counts.last_push = crate::auth::now_secs();
        }
        taken
    }

    /// Puts counts back that could not be stored.
    fn restore(&self, taken: Pending) {
        self.pushes.fetch_add(taken.counts.pushes, Ordering::Relaxed);
        let mut pending = self.pending();
        let rejections = std::mem::take(&mut pending.rejections);
        let current = pending.counts;
        pending.counts = add(taken.counts, current);
        pending.rejections = taken.rejections;
        for rejection in rejections {
            push_rejection(&mut pending.rejections, rejection);
        }
    }

    /// The counts since the last flush, without taking them (to show a live record).
    fn peek(&self) -> Pending {
        let pending = self.pending();
        let mut counts = pending.counts;
        counts.pushes = self.pushes.load(Ordering::Relaxed);
        Pending { counts, rejections: pending.rejections.clone() }
    }
}

fn push_rejection(list: &mut VecDeque<Rejection>, rejection: Rejection) {
    if list.len() == MAX_RECENT_REJECTIONS {
        list.pop_front();
    }
    list.push_back(rejection);
}

fn add(stored: Counts, delta: Counts) -> Counts {
    Counts {
        pushes: stored.pushes + delta.pushes,
        created: stored.created + delta.created,
        updated: stored.updated + delta.updated,
        deleted: stored.deleted + delta.deleted,
        unchanged: stored.unchanged + delta.unchanged,
        rejected: stored.rejected + delta.rejected,
        stored_with_issues: stored.stored_with_issues + delta.stored_with_issues,
        last_push: stored.last_push.max(delta.last_push),
    }
}

/// `record` with `pending` added.
fn merged(mut record: SourceRecord, pending: Pending) -> SourceRecord {
    record.counts = add(record.counts, pending.counts);
    for rejection in pending.rejections {
        push_rejection(&mut record.recent_rejections, rejection);
    }
    record
}

impl Registry {
    /// The sources stored in `store`.
    pub fn load(store: &Store) -> Result<Registry, StoreError> {
        let mut active = HashMap::new();
        for record in SOURCES.all::<SourceRecord>(store)? {
            active.insert(record.name.clone(), Arc::new(ActiveSource::new(&record)?));
        }
        Ok(Registry { store: store.clone(), active: RwLock::new(active), stopping: Default::default() })
    }

    /// Stops running pulls before their next request or wait (they resume at the next start).
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The source `name` as stored.
    pub(crate) fn record(&self, name: &str) -> Result<Option<SourceRecord>, StoreError> {
        self.store.auth_read(|read| SOURCES.get::<SourceRecord>(read, name))
    }

    /// The source `name`, if it is registered.
    pub fn get(&self, name: &str) -> Option<Arc<ActiveSource>> {
        self.active.read().unwrap_or_else(|poisoned| poisoned.into_inner()).get(name).cloned()
    }

    /// Registers a push source and its backend client in one commit; prints the source's name
    /// and client id.
    pub async fn add(&self, new: NewSource) -> Result<Value, FhirError> {
        let name = SourceName::parse(&new.name).map_err(bad)?;
        let mut types = Vec::new();
        for type_name in &new.types {
            if type_name.is_empty() {
                return Err(bad("the list of types has an empty item: name each type (or give none for the default)"));
            }
            let resource_type = ResourceType::parse(type_name)
                .ok_or_else(|| bad(format!("'{type_name}' is not an R4 resource type")))?;
            if !types.contains(&resource_type) {
                types.push(resource_type);
            }
        }
        let now = crate::auth::now_secs();
        if let Some(pull) = new.pull {
            return self.add_pull(name, types, new.lenient, pull, now).await;
        }
        if matches!(new.credential, NewCredential::None | NewCredential::Secret) {
            return Err(bad("a push source authenticates with private_key_jwt: give --jwks or --jwks-url"));
        }
        let scope = source_scope(&name, &types, new.extra_scope.as_deref());
        let created = clients::build(
            NewClient {
                name: format!("source {}", name.as_str()),
                scope,
                grant_types: vec![GrantType::ClientCredentials],
                redirect_uris: Vec::new(),
                credential: new.credential,
                source: Some(name.as_str().to_owned()),
            },
            now,
        )?;
        let client = created.client;
        let kind = SourceKind::Push { client_id: client.client_id.clone() };
        let record = SourceRecord::new(&name, kind, &types, new.lenient, now);
        self.register(&name, &record, Some(client.clone())).await?;
        Ok(json!({
            "source": record.name,
            "kind": "push",
            "client_id": client.client_id,
            "scope": client.scope,
            "types": record.types,
            "lenient": record.lenient,
        }))
    }

    /// Stores a new source (with its client, for a push source) in one commit unless the name
    /// is taken, then activates it.
    async fn register(
        &self,
        name: &SourceName,
        record: &SourceRecord,
        client: Option<clients::Client>,
    ) -> Result<(), FhirError> {
        let stored = record.clone();
        let added = self
            .store
            .auth_write(move |txn| {
                if SOURCES.get_in::<SourceRecord>(txn, &stored.name)?.is_some() {
                    return Ok(false);
                }
                SOURCES.put_in(txn, &stored.name, &stored)?;
                if let Some(client) = &client {
                    clients::insert_in(txn, client)?;
                }
                Ok(true)
            })
            .await?;
        if !added {
            return Err(already(name));
        }
        self.activate(record)?;
        Ok(())
    }

    fn activate(&self, record: &SourceRecord) -> Result<(), StoreError> {
        self.active
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(record.name.clone(), Arc::new(ActiveSource::new(record)?));
        Ok(())
    }

    /// Registers a pull source: its upstream, and the key Braid signs its assertions with
    /// (printed back as the public JWK the upstream must register, with its `kid`).
    async fn add_pull(
        &self,
        name: SourceName,
        types: Vec<ResourceType>,
        lenient: bool,
        new: NewPull,
        now: u64,
    ) -> Result<Value, FhirError> {
        let base = new.base.trim_end_matches('/').to_owned();
        clients::check_https_or_loopback(&base)?;
        if new.client_id.trim().is_empty() {
            return Err(bad("--client-id is Braid's client id at the upstream; it cannot be empty"));
        }
        let (algorithm, kid, public) = pull::read_key(&new.key_pem, new.kid.as_deref())?;
        let every_secs = new.every.as_deref().map(pull::parse_every).transpose()?;
        let config = pull::PullConfig {
            base: base.clone(),
            client_id: new.client_id.trim().to_owned(),
            key_pem: new.key_pem,
            algorithm: if algorithm == jsonwebtoken::Algorithm::ES384 { "ES384" } else { "RS384" }.to_owned(),
            kid: kid.clone(),
            every_secs,
        };
        let record = SourceRecord::new(&name, SourceKind::Pull { pull: config }, &types, lenient, now);
        self.register(&name, &record, None).await?;
        Ok(json!({
            "source": record.name,
            "kind": "pull",
            "base": base,
            "client_id": new.client_id.trim(),
            "kid": kid,
            "jwks": {"keys": [public]},
            "types": record.types,
            "every_secs": every_secs,
            "lenient": lenient,
        }))
    }

    /// Removes a source and its client (the records it wrote stay); false if there was none.
    pub async fn remove(&self, name: &str) -> Result<bool, FhirError> {
        // Counts not yet flushed go with it.
        let owned = name.to_owned();
        let removed = self
            .store
            .auth_write(move |txn| {
                let Some(record) = SOURCES.get_in::<SourceRecord>(txn, &owned)? else { return Ok(false) };
                match &record.kind {
                    SourceKind::Push { client_id } => clients::remove_in(txn, client_id),
                    SourceKind::Pull { .. } => {}
                }
                SOURCES.remove_in(txn, &owned);
                Ok(true)
            })
            .await?;
        self.active.write().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(name);
        Ok(removed)
    }

    /// The source `name` as stored, with the counts not yet flushed added.
    pub fn show(&self, name: &str) -> Result<Option<SourceRecord>, StoreError> {
        Ok(self.record(name)?.map(|record| self.live(record)))
    }

    /// Every source, as [`Registry::show`] gives them, in name order.
    pub fn list(&self) -> Result<Vec<SourceRecord>, StoreError> {
        Ok(SOURCES.all::<SourceRecord>(&self.store)?.into_iter().map(|record| self.live(record)).collect())
    }

    /// A stored record with the counts not yet flushed added.
    fn live(&self, record: SourceRecord) -> SourceRecord {
        match self.get(&record.name) {
            Some(active) => merged(record, active.peek()),
            None => record,
        }
    }

    /// Adds the counts gathered since the last flush to the stored records, in one commit.
    pub async fn flush(&self) -> Result<(), FhirError> {
        let sources: Vec<(String, Arc<ActiveSource>)> = self
            .active
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .map(|(name, active)| (name.clone(), active.clone()))
            .collect();
        let mut taken: Vec<(String, Arc<ActiveSource>, Pending)> = Vec::new();
        for (name, active) in sources {
            let pending = active.take();
            if pending.counts != Counts::default() || !pending.rejections.is_empty() {
                taken.push((name, active, pending));
            }
        }
        if taken.is_empty() {
            return Ok(());
        }
        let deltas: Vec<(String, Counts, VecDeque<Rejection>)> =
            taken.iter().map(|(name, _, pending)| (name.clone(), pending.counts, pending.rejections.clone())).collect();
        let result = self
            .store
            .auth_write(move |txn| {
                for (name, counts, rejections) in &deltas {
                    // A source removed meanwhile takes its counts with it.
                    let Some(record) = SOURCES.get_in::<SourceRecord>(txn, name)? else { continue };
                    let record = merged(record, Pending { counts: *counts, rejections: rejections.clone() });
                    SOURCES.put_in(txn, name, &record)?;
                }
                Ok(())
            })
            .await;
        if result.is_err() {
            for (_, active, pending) in taken {
                active.restore(pending);
            }
        }
        result
    }
}

/// A source record as `braid source show --json` prints it.
pub fn describe(record: &SourceRecord) -> Value {
    let mut described = json!({
        "source": record.name,
        "types": record.types,
        "policy": if record.lenient { "lenient" } else { "strict" },
        "created": record.created,
        "counts": record.counts,
        "recent_rejections": record.recent_rejections,
    });
    match &record.kind {
        SourceKind::Push { client_id } => {
            described["kind"] = "push".into();
            described["client_id"] = client_id.clone().into();
        }
        SourceKind::Pull { pull } => {
            // Everything but the private key.
            described["kind"] = "pull".into();
            described["base"] = pull.base.clone().into();
            described["client_id"] = pull.client_id.clone().into();
            described["kid"] = pull.kid.clone().into();
            described["algorithm"] = pull.algorithm.clone().into();
            described["every_secs"] = pull.every_secs.into();
            let state = record.pull.clone().unwrap_or_default();
            described["since"] = state.since.into();
            described["running"] = state.checkpoint.is_some().into();
            if let Some(checkpoint) = state.checkpoint {
                described["current_run"] = json!({"started": checkpoint.started, "counts": checkpoint.counts,
                    "stage": checkpoint.stage, "resumed": checkpoint.resumed});
                // The export's status URL is the upstream's; the manifest's file list is long.
                if let Some(stage) = described["current_run"]["stage"].as_object_mut() {
                    stage.remove("manifest");
                }
            }
            described["runs"] = json!(state.runs);
        }
    }
    described
}

fn already(name: &SourceName) -> FhirError {
    FhirError::new(
        Category::Conflict,
        IssueCode::Duplicate,
        format!("there is already a source named {}", name.as_str()),
    )
}

/// A described source ([`describe`]) as a few lines for people.
pub fn summary(described: &Value) -> String {
    let text = |key: &str| described[key].as_str().unwrap_or("").to_owned();
    let count = |key: &str| described["counts"][key].as_u64().unwrap_or(0);
    let types = match described["types"].as_array() {
        Some(types) if !types.is_empty() => types.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(", "),
        // A pull source named none: it pulls the default types (and what they reference).
        _ if described["kind"] == "pull" => format!("{} (the default)", pull::DEFAULT_TYPES.join(", ")),
        _ => "every type".to_owned(),
    };
    let mut lines = vec![
        format!("source {} ({}, {} policy)", text("source"), text("kind"), text("policy")),
        format!("  client_id: {}", text("client_id")),
        format!("  types: {types}"),
        format!(
            "  pushes: {}; created {}, updated {}, deleted {}, unchanged {}; rejected {}; stored with issues {}",
            count("pushes"),
            count("created"),
            count("updated"),
            count("deleted"),
            count("unchanged"),
            count("rejected"),
            count("stored_with_issues"),
        ),
    ];
    if described["kind"] == "pull" {
        lines.insert(
            1,
            format!(
                "  pulls from: {} (every {})",
                text("base"),
                match described["every_secs"].as_u64() {
                    Some(seconds) => format!("{seconds} s"),
                    None => "run by braid source sync".to_owned(),
                }
            ),
        );
        if let Some(run) = described["runs"].as_array().and_then(|runs| runs.last()) {
            lines.push(format!(
                "  last run: {} ({}), {} ms: received {}, created {}, updated {}, unchanged {}, rejected {}{}",
                run["outcome"].as_str().unwrap_or(""),
                run["mode"].as_str().unwrap_or(""),
                run["duration_ms"],
                run["counts"]["received"],
                run["counts"]["created"],
                run["counts"]["updated"],
                run["counts"]["unchanged"],
                run["counts"]["rejected"],
                run["error"].as_str().map(|error| format!("; {error}")).unwrap_or_default(),
            ));
        }
    }
    if let Some(rejections) = described["recent_rejections"].as_array().filter(|list| !list.is_empty()) {
        lines.push("  recent rejections (newest last):".to_owned());
        for rejection in rejections {
            lines.push(format!(
                "    {} {} {}: {}",
                rejection["at"],
                rejection["status"],
                rejection["what"].as_str().unwrap_or("-"),
                rejection["reason"].as_str().unwrap_or("")
            ));
        }
    }
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(name: &str) -> SourceRecord {
        SourceRecord {
            name: name.into(),
            kind: SourceKind::Push { client_id: "c".into() },
            types: Vec::new(),
            lenient: false,
            created: 0,
            counts: Counts::default(),
            recent_rejections: VecDeque::new(),
            pull: None,
        }
    }

    #[test]
    fn a_source_keeps_its_last_rejections_only_with_bounded_reasons() {
        let active = ActiveSource::new(&record("clinic")).unwrap();
        for n in 0..25 {
            let error = FhirError::incorrect(IssueCode::Value, "é".repeat(400)).at(format!("Patient.name[{n}]"));
            active.rejected(Some(format!("Patient/{n}")), &error);
        }
        let pending = active.peek();
        assert_eq!(pending.counts.rejected, 25);
        assert_eq!(pending.rejections.len(), MAX_RECENT_REJECTIONS);
        assert_eq!(pending.rejections[0].what.as_deref(), Some("Patient/5"), "the oldest went first");
        assert_eq!(pending.rejections[19].what.as_deref(), Some("Patient/24"));
        let reason = &pending.rejections[0].reason;
        assert!(reason.len() <= MAX_REASON_BYTES + '…'.len_utf8(), "{}", reason.len());
        assert!(reason.starts_with("Patient.name[5]: "), "{reason}");
        // Stored records keep the bound when counts are added to them.
        let mut stored = record("clinic");
        stored.counts.rejected = 100;
        stored.recent_rejections = (0..MAX_RECENT_REJECTIONS)
            .map(|n| Rejection { at: 0, status: 400, what: Some(format!("old/{n}")), reason: "old".into() })
            .collect();
        let merged = merged(stored, active.take());
        assert_eq!(merged.counts.rejected, 125);
        assert_eq!(merged.recent_rejections.len(), MAX_RECENT_REJECTIONS);
        let kept: Vec<&str> = merged.recent_rejections.iter().filter_map(|r| r.what.as_deref()).collect();
        assert_eq!(kept.first(), Some(&"Patient/5"), "the new ones, oldest first: {kept:?}");
        assert_eq!(kept.last(), Some(&"Patient/24"));
        assert!(!kept.iter().any(|what| what.starts_with("old/")), "the stored ones were older: {kept:?}");
        assert!(active.peek().rejections.is_empty(), "taken counts are gone from memory");
    }

    #[test]
    fn counts_that_could_not_be_stored_are_put_back() {
        let active = ActiveSource::new(&record("clinic")).unwrap();
        active.pushed();
        active.wrote(OutcomeKind::Created);
        let taken = active.take();
        active.pushed();
        active.restore(taken);
        let pending = active.peek();
        assert_eq!((pending.counts.pushes, pending.counts.created), (2, 1));
    }

    #[test]
    fn a_source_scope_covers_its_types_over_its_own_records_and_what_is_granted_beyond() {
        let name = SourceName::parse("clinic").unwrap();
        assert_eq!(source_scope(&name, &[], None), "system/*.cruds?_source=urn:braid:source:clinic");
        let types = [ResourceType::PATIENT, ResourceType::parse("Observation").unwrap()];
        assert_eq!(
            source_scope(&name, &types, Some("system/Practitioner.rs")),
            "system/Patient.cruds?_source=urn:braid:source:clinic system/Observation.cruds?_source=urn:braid:source:clinic system/Practitioner.rs"
        );
    }
}
