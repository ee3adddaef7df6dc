//! `POST /fhir` with a `transaction` or `batch` Bundle.
//!
//! A transaction is all-or-nothing: its writes go to the writer as one request and commit in
//! one redb transaction; `urn:uuid:` references between entries and conditional references are
//! resolved there. A batch runs each entry on its own; one failing entry does not stop the
//! others. In both, read entries (GET) are answered after the writes have committed. A GET
//! entry is a read, a vread, or a search (`Observation?code=x`, `Patient/p1/Observation?...`),
//! answered with a searchset Bundle in `entry.resource`, paged as the search interaction pages;
//! its parameters are checked before any write, so a bad search fails a transaction whole.

use std::collections::HashMap;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use serde_json::Value;

use super::access;
use super::request::Return;
use super::response::{BundleOut, EntryOut, EntryResponse, StoredJson, describe, etag, status_line, status_of};
use super::{Ctx, Limits, request};
use crate::auth::Access;
use crate::auth::scope::Interaction as Permission;
use crate::fhir::error::operation_outcome;
use crate::fhir::json::{format_instant, resource_type_of};
use crate::fhir::{Category, FhirError, Id, Issue, IssueCode, ResourceType};
use crate::search::compartment::patient_compartment;
use crate::sources::ActiveSource;
use crate::store::{Action, Criteria, OpOutcome, OutcomeKind, Precondition, Store, Target, WriteOp, WriteRequest};
use std::sync::Arc;

pub async fn handle(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, payload, access, source, .. } = ctx;
    let body = request::read_body(&http, payload, &state.limits).await?;
    let base = request::base_url(&http, &state);
    let prefer = request::return_preference(&http);
    let bundle = process_bundle(&state.store, &state.limits, body, &base, prefer, &access, source.as_ref()).await?;
    Ok(bundle.into_response())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Transaction,
    Batch,
}

/// One entry, parsed and validated.
struct Entry {
    full_url: Option<String>,
    work: Work,
}

enum Work {
    Write {
        action: Action,
        conditional_references: HashMap<String, (ResourceType, Criteria)>,
    },
    Read {
        resource_type: ResourceType,
        id: Id,
        version: Option<u64>,
    },
    Search(super::search::Prepared),
    /// A patch of one resource, applied to its version current when the entry runs.
    Patch {
        resource_type: ResourceType,
        id: Id,
        patch: super::patch::Patch,
        if_match: Option<u64>,
    },
}

/// Processes a transaction or batch Bundle and returns the response Bundle. Used by the HTTP
/// handler and by the demo loader. Each entry is checked against `access` as its own request
/// would be: a transaction fails whole on the first entry refused, a batch answers that entry
/// alone. A `source`'s bundle is written in its namespace (see [`super::source`]).
pub async fn process_bundle(
    store: &Store,
    limits: &Limits,
    body: Bytes,
    base: &str,
    prefer: Return,
    access: &Access,
    source: Option<&Arc<ActiveSource>>,
) -> Result<BundleOut, FhirError> {
    let (parse_limits, parse_base, parse_access) = (limits.clone(), base.to_owned(), access.clone());
    let (parse_source, parse_store) = (source.cloned(), store.clone());
    // Parsing and validating a large bundle takes milliseconds of CPU: keep it off the I/O threads.
    let (kind, entries) = tokio::task::spawn_blocking(move || {
        parse_bundle(&body, &parse_store, &parse_limits, &parse_base, &parse_access, parse_source.as_deref())
    })
    .await
    .map_err(|_| FhirError::fault("bundle"))??;
    let source = source.map(Arc::as_ref);
    match kind {
        Kind::Transaction => {
            let entries = entries.into_iter().collect::<Result<Vec<_>, _>>()?;
            transaction(store, entries, base, prefer, access, source).await
        }
        Kind::Batch => Ok(batch(store, entries, base, prefer, access, source).await),
    }
}

fn parse_bundle(
    bytes: &[u8],
    store: &Store,
    limits: &Limits,
    base: &str,
    access: &Access,
    source: Option<&ActiveSource>,
) -> Result<(Kind, Vec<Result<Entry, FhirError>>), FhirError> {
    let mut value = request::json_body(bytes, limits)?;
    if resource_type_of(&value)?.as_str() != "Bundle" {
        return Err(FhirError::incorrect(
            IssueCode::Invalid,
            "POST to the base URL needs a Bundle of type transaction or batch",
        ));
    }
    let kind = match value.get("type").and_then(Value::as_str) {
        Some("transaction") => Kind::Transaction,
        Some("batch") => Kind::Batch,
        other => {
            return Err(FhirError::incorrect(
                IssueCode::Invalid,
                format!(
                    "POST to the base URL processes transaction and batch Bundles, not '{}'",
                    other.unwrap_or("(no type)")
                ),
            )
            .at("Bundle.type"));
        }
    };
    let entries = match value.get_mut("entry").map(Value::take) {
        None => Vec::new(),
        Some(Value::Array(entries)) => entries,
        Some(_) => {
            return Err(FhirError::incorrect(IssueCode::Structure, "Bundle.entry must be an array").at("Bundle.entry"));
        }
    };
    check_unique_entries(kind, &entries)?;
    let mut parsed = Vec::with_capacity(entries.len());
    for (index, entry) in entries.into_iter().enumerate() {
        let result = parse_entry(entry, store, base, limits, access, source).map_err(|error| locate(error, index));
        if kind == Kind::Transaction && result.is_err() {
            return Ok((kind, vec![result]));
        }
        parsed.push(result);
    }
    Ok((kind, parsed))
}

/// Refuses bundles whose entries cannot be told apart:
///
/// - two entries with the same `fullUrl` (in a batch: and the same `meta.versionId`, rule bdl-7;
///   in a transaction any repeat, because references to a `fullUrl` must resolve to one entry);
/// - in a transaction, two conditional creates of one type with the same `ifNoneExist` (the
///   same query, compared as decoded, sorted parameters): both would create, or both would
///   match, the same resource.
///
/// One pass over the entries; the maps hold at most one key per entry.
fn check_unique_entries(kind: Kind, entries: &[Value]) -> Result<(), FhirError> {
    let mut full_urls: HashMap<(&str, Option<&str>), usize> = HashMap::new();
    // (resource type, decoded and sorted criteria) -> the first entry with them.
    type CriteriaKey<'a> = (&'a str, Vec<(String, String)>);
    let mut if_none_exist: HashMap<CriteriaKey, usize> = HashMap::new();
    let duplicate = |what: &str, first: usize, second: usize, element: &str| {
        FhirError::incorrect(IssueCode::Duplicate, format!("entries {first} and {second} have the same {what}"))
            .at(format!("Bundle.entry[{first}].{element}"))
            .at(format!("Bundle.entry[{second}].{element}"))
    };
    for (index, entry) in entries.iter().enumerate() {
        if let Some(full_url) = entry.get("fullUrl").and_then(Value::as_str) {
            let version = match kind {
                Kind::Transaction => None,
                Kind::Batch => entry.pointer("/resource/meta/versionId").and_then(Value::as_str),
            };
            if let Some(&first) = full_urls.get(&(full_url, version)) {
                return Err(duplicate(&format!("fullUrl '{full_url}'"), first, index, "fullUrl"));
            }
            full_urls.insert((full_url, version), index);
        }
        let request = entry.get("request");
        let criteria = request.and_then(|r| r.get("ifNoneExist")).and_then(Value::as_str);
        // A create's url is its type, possibly after the base URL: the last path segment.
        let type_name = request
            .and_then(|r| r.get("url"))
            .and_then(Value::as_str)
            .and_then(|url| url.split('?').next().unwrap_or_default().rsplit('/').next());
        if let (Kind::Transaction, Some(criteria), Some(type_name)) = (kind, criteria, type_name) {
            let mut pairs = request::decode_pairs(super::create::strip_query_prefix(criteria, type_name));
            pairs.sort();
            let key = (type_name, pairs);
            if let Some(&first) = if_none_exist.get(&key) {
                return Err(duplicate(&format!("ifNoneExist '{criteria}'"), first, index, "request.ifNoneExist"));
            }
            if_none_exist.insert(key, index);
        }
    }
    Ok(())
}

/// Prefixes every expression of `error` with the entry it concerns.
fn locate(mut error: FhirError, index: usize) -> FhirError {
    let entry = format!("Bundle.entry[{index}]");
    for issue in &mut error.issues {
        if issue.expression.is_empty() {
            issue.expression.push(entry.clone());
        } else {
            for expression in &mut issue.expression {
                *expression = match expression.split_once('.') {
                    // Expressions from validation start with the resource type.
                    Some((head, rest)) if ResourceType::parse(head).is_some() => format!("{entry}.resource.{rest}"),
                    None if ResourceType::parse(expression).is_some() => format!("{entry}.resource"),
                    _ if expression.starts_with("request") => format!("{entry}.{expression}"),
                    _ => format!("{entry}: {expression}"),
                };
            }
        }
    }
    error
}

fn parse_entry(
    mut entry: Value,
    store: &Store,
    base: &str,
    limits: &Limits,
    access: &Access,
    source: Option<&ActiveSource>,
) -> Result<Entry, FhirError> {
    let full_url = entry.get("fullUrl").and_then(Value::as_str).map(str::to_owned);
    let request = entry
        .get("request")
        .ok_or_else(|| FhirError::incorrect(IssueCode::Required, "the entry has no request").at("request"))?;
    let method = request
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            FhirError::incorrect(IssueCode::Required, "the entry's request has no method").at("request.method")
        })?
        .to_owned();
    let url = request
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| FhirError::incorrect(IssueCode::Required, "the entry's request has no url").at("request.url"))?;
    let url = crate::fhir::reference::relative_to(url, base).trim_start_matches('/').to_owned();
    let (path, query) = match url.split_once('?') {
        Some((path, query)) => (path.to_owned(), Some(query.to_owned())),
        None => (url.clone(), None),
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let precondition = Precondition {
        if_match: match request.get("ifMatch").and_then(Value::as_str) {
            Some(text) => Some(request::parse_etag(text).ok_or_else(|| {
                FhirError::incorrect(
                    IssueCode::Invalid,
                    format!("ifMatch must be an ETag such as W/\"3\", not '{text}'"),
                )
                .at("request.ifMatch")
            })?),
            None => None,
        },
        if_none_match_any: request.get("ifNoneMatch").and_then(Value::as_str).map(str::trim) == Some("*"),
    };
    let if_none_exist = request.get("ifNoneExist").and_then(Value::as_str).map(str::to_owned);
    let type_at = |index: usize| -> Result<ResourceType, FhirError> {
        let name = segments.get(index).copied().unwrap_or("");
        request::resource_type(name)
            .map_err(|e| FhirError::with_issues(Category::Incorrect, e.issues).at("request.url"))
    };
    let bad_url = || {
        FhirError::incorrect(IssueCode::Invalid, format!("'{url}' is not a valid URL for {method}")).at("request.url")
    };

    let work = match method.as_str() {
        "POST" | "PUT" => {
            let resource_type = type_at(0)?;
            let mut resource = entry.get_mut("resource").map(Value::take).ok_or_else(|| {
                FhirError::incorrect(IssueCode::Required, format!("a {method} entry needs a resource")).at("resource")
            })?;
            let actual = resource_type_of(&resource)?;
            if actual != resource_type {
                return Err(FhirError::incorrect(
                    IssueCode::Invalid,
                    format!("the entry's resource is a {actual}, but its url addresses {resource_type}"),
                )
                .at("request.url"));
            }
            let target = match (method.as_str(), segments.len(), &query) {
                ("POST", 1, None) => None,
                ("PUT", 2, None) => {
                    let id = request::id(segments[1])?;
                    match resource.get("id").and_then(Value::as_str) {
                        None => {
                            resource["id"] = Value::String(id.as_str().to_owned());
                        }
                        Some(body_id) if body_id != id.as_str() => {
                            return Err(FhirError::incorrect(
                                IssueCode::Invalid,
                                format!("the resource's id '{body_id}' differs from the id in its url"),
                            )
                            .at("resource.id"));
                        }
                        Some(_) => {}
                    }
                    Some(Target::Id(super::source::stored_id(source, id)))
                }
                ("PUT", 1, Some(query)) => {
                    Some(Target::Criteria(access::criteria(access, resource_type, query, base)?))
                }
                _ => return Err(bad_url()),
            };
            let interaction = if target.is_none() { Permission::Create } else { Permission::Update };
            access::permitted(access, resource_type, interaction, base)?;
            super::source::admit(source, resource_type, &mut resource, Some(base))?;
            access::check_body(access, resource_type, &resource, interaction, base)?;
            access::check_claim(access, &resource, || match &target {
                Some(Target::Id(id)) => access::claim_at(store, resource_type, id),
                _ => Ok(Vec::new()),
            })?;
            let conditional_references = request::conditional_references(&mut resource, access, base)?;
            let Value::Object(resource) = resource else { unreachable!("checked by resource_type_of") };
            let action = match target {
                None => Action::Create {
                    resource_type,
                    resource,
                    if_none_exist: match if_none_exist {
                        Some(text) => Some(access::criteria(
                            access,
                            resource_type,
                            super::create::strip_query_prefix(&text, resource_type.as_str()),
                            base,
                        )?),
                        None => None,
                    },
                },
                Some(target) => Action::Update { resource_type, target, resource, precondition },
            };
            Work::Write { action, conditional_references }
        }
        "DELETE" => {
            let resource_type = type_at(0)?;
            access::permitted(access, resource_type, Permission::Delete, base)?;
            let target = match (segments.len(), &query) {
                (2, None) => Target::Id(super::source::stored_id(source, request::id(segments[1])?)),
                (1, Some(query)) => Target::Criteria(access::criteria(access, resource_type, query, base)?),
                _ => return Err(bad_url()),
            };
            Work::Write {
                action: Action::Delete { resource_type, target, precondition },
                conditional_references: HashMap::new(),
            }
        }
        "GET" | "HEAD" => {
            let resource_type = type_at(0)?;
            match (segments.as_slice(), &query) {
                ([_], query) => {
                    let pairs = request::decode_pairs(query.as_deref().unwrap_or(""));
                    let mut search = super::search::prepare(resource_type, None, &pairs, false, base, limits)?;
                    super::search::restrict(&mut search, access, base)?;
                    Work::Search(search)
                }
                (["Patient", patient, _], query) => {
                    let patient = request::id(patient)?;
                    let compartment_type = type_at(2)?;
                    if compartment_type.as_str() != "Patient"
                        && patient_compartment().params(compartment_type).is_empty()
                    {
                        return Err(FhirError::incorrect(
                            IssueCode::NotFound,
                            format!("{compartment_type} is not part of the Patient compartment"),
                        )
                        .at("request.url"));
                    }
                    if access.is_other_patient(patient.as_str()) {
                        return Err(FhirError::not_found(format!("Patient/{patient} does not exist")).at("request.url"));
                    }
                    let pairs = request::decode_pairs(query.as_deref().unwrap_or(""));
                    let mut search =
                        super::search::prepare(compartment_type, Some(patient.as_str()), &pairs, false, base, limits)?;
                    super::search::restrict(&mut search, access, base)?;
                    Work::Search(search)
                }
                ([_, id], None) => {
                    access::permitted(access, resource_type, Permission::Read, base)?;
                    Work::Read { resource_type, id: request::id(id)?, version: None }
                }
                ([_, id, "_history", version], None) => {
                    access::permitted(access, resource_type, Permission::Read, base)?;
                    Work::Read { resource_type, id: request::id(id)?, version: Some(request::version_id(version)?) }
                }
                _ => {
                    return Err(FhirError::new(
                        Category::Unsupported,
                        IssueCode::NotSupported,
                        format!("GET entries support read, vread and search; '{url}' is none of them"),
                    )
                    .at("request.url"));
                }
            }
        }
        "PATCH" => {
            super::source::refuse_patch(source)?;
            let resource_type = type_at(0)?;
            access::permitted(access, resource_type, Permission::Update, base)?;
            let id = match (segments.as_slice(), &query) {
                ([_, id], None) => request::id(id)?,
                _ => return Err(bad_url()),
            };
            let resource = entry.get_mut("resource").map(Value::take).ok_or_else(|| {
                FhirError::incorrect(IssueCode::Required, "a PATCH entry needs the patch as its resource")
                    .at("resource")
            })?;
            let patch = super::patch::from_entry_resource(resource, limits.max_json_depth)?;
            Work::Patch { resource_type, id, patch, if_match: precondition.if_match }
        }
        other => {
            return Err(FhirError::incorrect(
                IssueCode::Invalid,
                format!("'{other}' is not an HTTP method a bundle entry can use"),
            )
            .at("request.method"));
        }
    };
    Ok(Entry { full_url, work })
}

async fn transaction(
    store: &Store,
    entries: Vec<Entry>,
    base: &str,
    prefer: Return,
    access: &Access,
    source: Option<&ActiveSource>,
) -> Result<BundleOut, FhirError> {
    let mut write = super::source::namespaced(
        source,
        WriteRequest { local_base: Some(base.to_owned()), guard: access::guard(access, base), ..Default::default() },
    );
    let mut slots = Vec::with_capacity(entries.len());
    let mut reads = Vec::new();
    // Patches apply to the state before the transaction (a transaction touches each resource
    // once), and their writes require that state to be still current at commit.
    let before = store.snapshot()?;
    let mut patched: Vec<(ResourceType, Id, Option<u64>)> = Vec::new();
    for (index, entry) in entries.into_iter().enumerate() {
        match entry.work {
            Work::Patch { resource_type, id, patch, if_match } => {
                let (action, conditional_references) =
                    super::patch::patched_update(&before, resource_type, &id, &patch, if_match, access, base)
                        .map_err(|error| locate(error, index))?;
                let Action::Update { precondition, .. } = &action else { unreachable!("a patch is an update") };
                patched.push((resource_type, id, precondition.if_match));
                write.conditional_references.extend(conditional_references);
                write.ops.push(WriteOp { full_url: entry.full_url, action });
                slots.push(Slot::Write(write.ops.len() - 1));
            }
            Work::Write { action, conditional_references } => {
                write.conditional_references.extend(conditional_references);
                write.ops.push(WriteOp { full_url: entry.full_url, action });
                slots.push(Slot::Write(write.ops.len() - 1));
            }
            Work::Read { resource_type, id, version } => {
                reads.push(index);
                slots.push(Slot::Read(resource_type, id, version));
            }
            Work::Search(search) => slots.push(Slot::Search(search)),
        }
    }
    drop(before);
    let outcomes = if write.ops.is_empty() {
        Vec::new()
    } else {
        match store.write(write).await {
            Ok(outcomes) => {
                super::source::count(source, &outcomes);
                outcomes
            }
            Err(error) if error.category == Category::PreconditionFailed => {
                return Err(patched_concurrently(store, &patched)?.unwrap_or(error));
            }
            Err(error) => return Err(error),
        }
    };
    let snapshot = if reads.is_empty() { None } else { Some(store.snapshot()?) };
    let mut bundle = BundleOut::new("transaction-response");
    for slot in slots {
        bundle.entry.push(match slot {
            Slot::Write(op) => write_entry(&outcomes[op], prefer, base),
            Slot::Read(resource_type, id, version) => read_entry(
                snapshot.as_ref().expect("a snapshot exists when there are reads"),
                resource_type,
                &id,
                version,
                base,
                access,
            ),
            Slot::Search(search) => search_entry(store, base, search).await,
        });
    }
    Ok(bundle)
}

/// After a transaction failed a precondition: a 409 if a resource it patched was changed by
/// another write meanwhile (the client may simply retry), `None` if the failure was another.
fn patched_concurrently(
    store: &Store,
    patched: &[(ResourceType, Id, Option<u64>)],
) -> Result<Option<FhirError>, FhirError> {
    let snapshot = store.snapshot()?;
    for (resource_type, id, version) in patched {
        let now = snapshot.current(*resource_type, id.as_str())?.map(|v| v.version);
        if now != *version {
            return Ok(Some(FhirError::conflict(format!(
                "{resource_type}/{id} changed while the transaction patched it; retry the transaction"
            ))));
        }
    }
    Ok(None)
}

enum Slot {
    Write(usize),
    Search(super::search::Prepared),
    Read(ResourceType, Id, Option<u64>),
}

async fn batch(
    store: &Store,
    entries: Vec<Result<Entry, FhirError>>,
    base: &str,
    prefer: Return,
    access: &Access,
    source: Option<&ActiveSource>,
) -> BundleOut {
    // Every write is its own request; submitted together, the writer still groups them into few commits.
    let writes = entries.iter().enumerate().filter_map(|(index, entry)| match entry {
        // A source's entries each leave their own Provenance: each commits on its own.
        Ok(Entry { full_url, work: Work::Write { action, conditional_references } }) => Some((
            index,
            super::source::namespaced(
                source,
                WriteRequest {
                    ops: vec![WriteOp { full_url: full_url.clone(), action: action.clone() }],
                    conditional_references: conditional_references.clone(),
                    local_base: Some(base.to_owned()),
                    guard: access::guard(access, base),
                    ..Default::default()
                },
            ),
        )),
        _ => None,
    });
    let futures = writes.map(|(index, request)| async move { (index, store.write(request).await) });
    let results: HashMap<usize, Result<Vec<OpOutcome>, FhirError>> =
        futures_util::future::join_all(futures).await.into_iter().collect();
    let snapshot = store.snapshot();
    let mut bundle = BundleOut::new("batch-response");
    let rejected = |index: usize, error: &FhirError| {
        if let Some(source) = source {
            source.rejected(Some(format!("Bundle.entry[{index}]")), error);
        }
    };
    for (index, entry) in entries.into_iter().enumerate() {
        bundle.entry.push(match entry {
            Err(error) => {
                rejected(index, &error);
                error_entry(&error)
            }
            Ok(Entry { work: Work::Write { .. }, .. }) => match &results[&index] {
                Ok(outcomes) => {
                    super::source::count(source, outcomes);
                    write_entry(&outcomes[0], prefer, base)
                }
                Err(error) => {
                    rejected(index, error);
                    error_entry(error)
                }
            },
            Ok(Entry { work: Work::Search(search), .. }) => search_entry(store, base, search).await,
            Ok(Entry { work: Work::Patch { resource_type, id, patch, if_match }, .. }) => {
                match super::patch::apply(store, resource_type, &id, &patch, if_match, base, access).await {
                    Ok(outcome) => write_entry(&outcome, prefer, base),
                    Err(error) => error_entry(&error),
                }
            }
            Ok(Entry { work: Work::Read { resource_type, id, version }, .. }) => match &snapshot {
                Ok(snapshot) => read_entry(snapshot, resource_type, &id, version, base, access),
                Err(error) => error_entry(error),
            },
        });
    }
    bundle
}

fn write_entry(outcome: &OpOutcome, prefer: Return, base: &str) -> EntryOut {
    let relative = outcome.id.as_ref().map(|id| format!("{}/{id}", outcome.resource_type));
    let location = match (outcome.kind, &relative, outcome.version) {
        (OutcomeKind::Created | OutcomeKind::Updated | OutcomeKind::Unchanged, Some(relative), Some(version)) => {
            Some(format!("{relative}/_history/{version}"))
        }
        _ => None,
    };
    let mut entry = EntryOut {
        full_url: relative.as_ref().filter(|_| outcome.body.is_some()).map(|relative| format!("{base}/{relative}")),
        response: Some(EntryResponse {
            status: status_line(status_of(outcome)),
            location,
            etag: outcome.version.map(etag),
            last_modified: outcome.last_updated_micros.map(format_instant),
            outcome: None,
        }),
        ..Default::default()
    };
    match prefer {
        Return::Representation => {
            entry.resource = outcome.body.as_ref().map(|body| StoredJson::new(body.as_ref().clone()))
        }
        Return::OperationOutcome => {
            if let Some(response) = entry.response.as_mut() {
                response.outcome = Some(operation_outcome(&[Issue::information(describe(outcome))]));
            }
        }
        Return::Minimal => {}
    }
    entry
}

fn read_entry(
    snapshot: &crate::store::Snapshot,
    resource_type: ResourceType,
    id: &Id,
    version: Option<u64>,
    base: &str,
    access: &Access,
) -> EntryOut {
    let found = match version {
        None => snapshot.current(resource_type, id.as_str()),
        Some(version) => snapshot.version(resource_type, id.as_str(), version),
    };
    // What the token may not read is answered as missing (judged as a read or vread would).
    let found = found.and_then(|found| match found {
        Some(stored) if access.is_restricted() => {
            Ok(super::read::admits_stored(snapshot, access, resource_type, id.as_str(), &stored, base)?
                .then_some(stored))
        }
        other => Ok(other),
    });
    match found {
        Ok(Some(stored)) if !stored.is_deleted() => EntryOut {
            full_url: Some(format!("{base}/{resource_type}/{id}")),
            resource: Some(StoredJson::new(stored.body)),
            response: Some(EntryResponse {
                status: status_line(StatusCode::OK),
                etag: Some(etag(stored.version)),
                last_modified: Some(format_instant(stored.header.last_updated_micros)),
                ..Default::default()
            }),
            ..Default::default()
        },
        Ok(Some(_)) => error_entry(&FhirError::new(
            Category::Gone,
            IssueCode::Deleted,
            format!("{resource_type}/{id} was deleted"),
        )),
        Ok(None) => error_entry(&FhirError::not_found(format!("{resource_type}/{id} does not exist"))),
        Err(error) => error_entry(&error),
    }
}

/// Runs a search entry (after the bundle's writes) and embeds its searchset Bundle.
async fn search_entry(store: &Store, base: &str, search: super::search::Prepared) -> EntryOut {
    let (store, base) = (store.clone(), base.to_owned());
    match tokio::task::spawn_blocking(move || super::search::run(&store, &base, search)).await {
        Ok(Ok(searchset)) => EntryOut {
            resource: Some(StoredJson::new(searchset.to_bytes())),
            response: Some(EntryResponse { status: status_line(StatusCode::OK), ..Default::default() }),
            ..Default::default()
        },
        Ok(Err(error)) => error_entry(&error),
        Err(_) => error_entry(&FhirError::fault("bundle search")),
    }
}

fn error_entry(error: &FhirError) -> EntryOut {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    EntryOut {
        response: Some(EntryResponse {
            status: status_line(status),
            outcome: Some(error.to_operation_outcome()),
            ..Default::default()
        }),
        ..Default::default()
    }
}
