//! What callers ask the writer to do, and what it answers.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::view::IndexView;

use crate::fhir::{FhirError, Id, Resource, ResourceType};

/// Produces the search index entries of a resource version that is about to become current.
/// The store calls it inside the write transaction, so the indexes always match the data.
pub trait Indexer: Send + Sync + 'static {
    /// `resource` is the JSON object of the version as stored.
    fn entries(&self, resource_type: ResourceType, resource: &serde_json::Value) -> Vec<IndexEntry>;

    /// Like [`Indexer::entries`], for a version written through `local_base` (this server's
    /// base URL as the write addressed it): absolute references on that base are references
    /// to this server's resources.
    fn entries_on_base(
        &self,
        resource_type: ResourceType,
        resource: &serde_json::Value,
        local_base: &str,
    ) -> Vec<IndexEntry> {
        let _ = local_base;
        self.entries(resource_type, resource)
    }

    /// The entries of `resource` (as [`Indexer::entries_on_base`] gives them) under the index
    /// keys `keys`, and perhaps others: what a check of a few search parameters against a
    /// resource needs, without indexing it whole.
    fn entries_for_keys(
        &self,
        resource_type: ResourceType,
        resource: &serde_json::Value,
        local_base: &str,
        keys: &[&str],
    ) -> Vec<IndexEntry> {
        let mut entries = self.entries_on_base(resource_type, resource, local_base);
        entries.retain(|entry| keys.contains(&entry.param.as_str()));
        entries
    }

    /// An entry this indexer writes alongside a stored `(param, value)` pair, derived from
    /// that pair alone (a wide date's end-ordered entry); used to bring files written by
    /// earlier versions up to date.
    fn derived_entry(&self, resource_type: ResourceType, param: &str, value: &[u8]) -> Option<IndexEntry> {
        let _ = (resource_type, param, value);
        None
    }

    /// The entries of a version indexed by an earlier format, indexed again from its stored
    /// body; `legacy` holds the `(param, value)` pairs the earlier format recorded. The default
    /// indexes the body afresh; an indexer whose entries can depend on what the body alone does
    /// not tell (references indexed relative to the server's base) takes those from `legacy`.
    fn reindex_legacy(
        &self,
        resource_type: ResourceType,
        resource: &serde_json::Value,
        legacy: &[(String, Vec<u8>)],
    ) -> Vec<IndexEntry> {
        let _ = legacy;
        self.entries(resource_type, resource)
    }

    /// Every index key (`IndexEntry::param`) this indexer can produce for `resource_type`: index
    /// records store keys as hashes, and migrations that need the names find them here.
    fn index_keys(&self, resource_type: ResourceType) -> Vec<String> {
        let _ = resource_type;
        Vec::new()
    }

    /// The part of a resource's entries that cannot change between the resource as a request
    /// sent it and the version the writer stores (which gets its id, `meta.versionId`,
    /// `meta.lastUpdated` and rewritten references there). [`Store::write`](super::Store::write)
    /// computes it before the request reaches the writer, on another thread, so that the single
    /// writer does only the rest (see [`Indexer::complete`]). `None`: the writer computes all.
    fn prepare(&self, resource_type: ResourceType, resource: &serde_json::Value) -> Option<Vec<IndexEntry>> {
        let _ = (resource_type, resource);
        None
    }

    /// The entries of the version as stored, given `prepared`, what [`Indexer::prepare`]
    /// returned for the resource as sent. Invariant: the result equals what
    /// [`Indexer::entries_on_base`] (or [`Indexer::entries`] without a base) gives for `resource`,
    /// as a set; `store::check::verify` and the ingest tests hold implementations to it.
    fn complete(
        &self,
        resource_type: ResourceType,
        resource: &serde_json::Value,
        local_base: Option<&str>,
        prepared: &[IndexEntry],
    ) -> Vec<IndexEntry> {
        let _ = prepared;
        match local_base {
            Some(base) => self.entries_on_base(resource_type, resource, base),
            None => self.entries(resource_type, resource),
        }
    }
}

/// One `(parameter, value)` pair of a resource, e.g. `("identifier", b"http://x|123")`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IndexEntry {
    pub param: String,
    pub value: Vec<u8>,
}

/// Finds the ids of the current resources of a type that match some criteria, stopping at
/// `limit` of them: the writer asks only for as many as its decision needs (two tell "more
/// than one"), so criteria matching millions cost no more than criteria matching a few.
pub type FindMatches = dyn Fn(&dyn IndexView, ResourceType, usize) -> Result<Vec<Id>, FhirError> + Send + Sync;

/// Search criteria evaluated inside the write transaction, so that conditional operations see
/// the effects of every request committed before them and none after. Built by the search
/// module from a query string; the store only calls it.
#[derive(Clone)]
pub struct Criteria {
    /// The query as the client wrote it, for error messages.
    pub text: String,
    /// The ids of the current resources of a type that match, at most the given number.
    pub find: Arc<FindMatches>,
}

impl std::fmt::Debug for Criteria {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Criteria({})", self.text)
    }
}

impl PartialEq for Criteria {
    /// Criteria compare by their text: the same query means the same criteria.
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

/// Which resource an update or delete addresses.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Id(Id),
    /// Conditional update/delete: the resource(s) matching these criteria.
    Criteria(Criteria),
}

/// `If-Match` and `If-None-Match` as sent by the client.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Precondition {
    /// The version the client last saw; the write fails with 412 unless it is current.
    pub if_match: Option<u64>,
    /// `If-None-Match: *`: only create, never overwrite.
    pub if_none_match_any: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Create with a server-assigned id. With `if_none_exist`, nothing is created when exactly
    /// one resource matches (its id is returned instead).
    Create {
        resource_type: ResourceType,
        resource: Resource,
        if_none_exist: Option<Criteria>,
    },
    Update {
        resource_type: ResourceType,
        target: Target,
        resource: Resource,
        precondition: Precondition,
    },
    Delete {
        resource_type: ResourceType,
        target: Target,
        precondition: Precondition,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct WriteOp {
    /// The bundle entry's `fullUrl`; references to it in other entries are rewritten to the
    /// resource's final `Type/id`.
    pub full_url: Option<String>,
    pub action: Action,
}

/// A unit of work for the writer: all of its operations commit together or not at all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WriteRequest {
    pub ops: Vec<WriteOp>,
    /// Conditional references (`Patient?identifier=x|1`) found in the resources, each parsed by
    /// the search module; the writer resolves them to `Type/id` inside the transaction.
    pub conditional_references: HashMap<String, (ResourceType, Criteria)>,
    /// This server's base URL as the request addressed it (the configured `base_url`, else
    /// the one the request arrived at). References starting with it are indexed as `Type/id`.
    pub local_base: Option<String>,
    /// By operation index: the entries [`Indexer::prepare`] computed for that operation's
    /// resource. Empty until [`Store::write`](super::Store::write) fills it; a `None` (or a
    /// missing element) makes the writer index that resource whole.
    pub prepared_index: Vec<Option<Arc<[IndexEntry]>>>,
    /// By operation index: the content hash (`codec::content_hash`) of that operation's
    /// resource as received, computed with `prepared_index`, off the writer thread. The writer
    /// uses it unless it rewrites a reference in the resource (then it hashes the result).
    pub prepared_hashes: Vec<Option<super::codec::ContentHash>>,
    /// Set for a writer whose access is limited (a patient's token): every existing resource
    /// the request updates or deletes must pass it, as it stands inside the transaction.
    pub guard: Option<WriteGuard>,
    /// Set for a request written in a namespace (a source's, see `crate::sources`): a create
    /// whose resource has an id (already the namespace's) creates or updates that id, so that a
    /// re-push addresses the same resource. A create without an id gets a generated id, as
    /// for any writer: generated ids hold neither of a namespace's separators, so they never
    /// equal a namespaced id.
    pub keeps_create_ids: bool,
    /// Set when a request that changes something must leave a record of it (a source's
    /// Provenance): the writer adds the resource it makes, in the same commit.
    pub record_changes: Option<RecordChanges>,
}

/// The start of the ids of the Patients Braid's master patient index maintains (golden
/// Patients, `crate::mpi::golden`, kept in the index's own state and shown under these ids):
/// no resource is written with such an id, and no source's namespace starts with it.
pub const MANAGED_PATIENT_PREFIX: &str = "golden-";

/// Removes from a Patient about to be written the `refer` links to golden Patients: the API
/// shows one on a source Patient it reads (see `crate::mpi::golden::presented`), and a client
/// that writes back what it read sends it along. It is the index's to show, not the source's
/// record: kept, it would make a new version of an unchanged record, and go stale.
pub fn strip_managed_links(patient: &mut serde_json::Map<String, Value>) {
    let Some(Value::Array(links)) = patient.get_mut("link") else { return };
    links.retain(|link| {
        let to_golden = link["other"]["reference"]
            .as_str()
            .and_then(|reference| reference.strip_prefix("Patient/"))
            .is_some_and(|id| id.starts_with(MANAGED_PATIENT_PREFIX));
        !(link["type"] == "refer" && to_golden)
    });
    if links.is_empty() {
        patient.remove("link");
    }
}

/// Whether `resource_type/id` is one only the master patient index writes.
pub fn is_managed(resource_type: ResourceType, id: &str) -> bool {
    resource_type == ResourceType::PATIENT && id.starts_with(MANAGED_PATIENT_PREFIX)
}

/// One resource version a request wrote, for its [`RecordChanges`].
#[derive(Debug, Clone, PartialEq)]
pub struct Changed {
    pub resource_type: ResourceType,
    pub id: Id,
    /// The version written (the tombstone's, for a deletion).
    pub version: u64,
    pub kind: ChangeKind,
}

/// What a request did to one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Created,
    Updated,
    Deleted,
}

/// Makes the record of a request's changes: given what changed and the commit's instant
/// (`meta.lastUpdated` of the versions), the resource to store (its type is in the result's
/// `resourceType`; it gets a fresh id).
pub type Recorder = dyn Fn(&[Changed], &str) -> Resource + Send + Sync;

/// A [`Recorder`] carried by a request.
#[derive(Clone)]
pub struct RecordChanges(pub Arc<Recorder>);

impl std::fmt::Debug for RecordChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordChanges")
    }
}

impl PartialEq for RecordChanges {
    /// Recorders are closures: two requests compare equal on this field when both have one.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// Whether the current version `version` of a resource may be changed by a request, judged
/// by its index entries as the writer sees them (so a resource changed by another request just
/// before cannot slip past the check).
pub type GuardCheck = dyn Fn(&dyn IndexView, ResourceType, &Id, u64, Change) -> Result<bool, FhirError> + Send + Sync;

/// What a request does to an existing resource its guard is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Update,
    Delete,
}

/// A [`GuardCheck`] carried by a request.
#[derive(Clone)]
pub struct WriteGuard(pub Arc<GuardCheck>);

impl std::fmt::Debug for WriteGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WriteGuard")
    }
}

impl PartialEq for WriteGuard {
    /// Guards are closures: two requests compare equal on this field when both have one.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl WriteRequest {
    pub fn single(action: Action) -> Self {
        WriteRequest { ops: vec![WriteOp { full_url: None, action }], ..Default::default() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    Created,
    Updated,
    /// An update whose content equals the current version, or a conditional create that found
    /// its match: nothing was written.
    Unchanged,
    /// `count` resources were deleted (more than one only for a conditional delete).
    Deleted {
        count: usize,
    },
    /// A delete that found nothing to delete (already deleted, never existed, or no match).
    NothingToDelete,
}

/// The result of one operation, in the order of the request's operations.
#[derive(Debug, Clone, PartialEq)]
pub struct OpOutcome {
    pub resource_type: ResourceType,
    /// The resource concerned; `None` only for a delete that matched nothing.
    pub id: Option<Id>,
    pub kind: OutcomeKind,
    /// The resource's current version after the operation (the tombstone's, for a delete).
    pub version: Option<u64>,
    pub last_updated_micros: Option<i64>,
    /// The stored JSON of the current version (none for deletes).
    pub body: Option<std::sync::Arc<Vec<u8>>>,
}
