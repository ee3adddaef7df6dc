//! Bulk Data `$export` (see [`crate::sources::export`]): the kick-off at the system (`/fhir/$export`),
//! Patient (`/fhir/Patient/$export`) and Group (`/fhir/Group/{id}/$export`) levels, by GET
//! with query parameters or by POST with a Parameters resource,
//! polling (`GET /fhir/$export-status/{job}`), cancelling (`DELETE` of the same URL) and the
//! files (`GET /fhir/$export-file/{job}/{file}`), each only for the client that kicked it off.

use std::collections::HashSet;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use actix_web::http::header::{CONTENT_LOCATION, CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};

use super::{Ctx, request};
use crate::auth::Access;
use crate::auth::restrict::{Restriction, SHARED_TYPES};
use crate::auth::scope::Interaction as Permission;
use crate::fhir::reference::{self, Target};
use crate::fhir::{Category, FhirError, IssueCode, ResourceType};
use crate::search::compartment::patient_compartment;
use crate::search::query::Clause;
use crate::sources::export::{Kickoff, Level, Poll};

/// The NDJSON media type of the files.
pub const NDJSON: &str = "application/fhir+ndjson";

/// Whether `media` names NDJSON, as Bulk Data clients write it (`_outputFormat`, `Accept`).
pub fn is_ndjson(media: &str) -> bool {
    matches!(media, NDJSON | "application/ndjson" | "ndjson")
}

/// Most members a Group export follows.
pub const MAX_GROUP_MEMBERS: usize = 100_000;

/// How long a client should wait between polls, in seconds.
const RETRY_AFTER_SECS: &str = "2";

/// When a kick-off refused because too many exports are in progress may try again (seconds).
const BUSY_RETRY_AFTER_SECS: &str = "30";

fn incorrect(message: impl Into<String>) -> FhirError {
    FhirError::incorrect(IssueCode::Invalid, message)
}

/// `GET /fhir/$export`.
pub async fn system(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    kickoff(ctx, Level::System).await
}

/// `GET /fhir/{type}/$export`: Patient only.
pub async fn patient(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    if ctx.param(0) != "Patient" {
        return Err(FhirError::not_found(format!("$export is defined on Patient and Group, not {}", ctx.param(0))));
    }
    kickoff(ctx, Level::Patient).await
}

/// `GET /fhir/{type}/{id}/$export`: Group only.
pub async fn group(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    if ctx.param(0) != "Group" {
        return Err(FhirError::not_found(format!("instance $export is defined on Group, not {}", ctx.param(0))));
    }
    let id = request::id(ctx.param(1))?;
    let base = request::base_url(&ctx.http, &ctx.state);
    let members = group_members(&ctx, id.as_str(), &base)?;
    kickoff(ctx, Level::Group { members }).await
}

/// The `Patient/<id>` members of the Group `id`, which the caller must be able to read.
fn group_members(ctx: &Ctx, id: &str, base: &str) -> Result<HashSet<String>, FhirError> {
    let group_type = ResourceType::parse("Group").expect("an R4 type");
    let snapshot = ctx.state.store.snapshot()?;
    let stored = readable_current(&snapshot, &ctx.access, group_type, id, base)?
        .ok_or_else(|| FhirError::not_found(format!("Group/{id} does not exist")))?;
    let group: Value = serde_json::from_slice(&stored.body).map_err(|_| FhirError::fault("group"))?;
    let mut members = HashSet::new();
    for member in group["member"].as_array().into_iter().flatten() {
        let Some(text) = member["entity"]["reference"].as_str() else { continue };
        if let Target::Local { resource_type, id, .. } = reference::parse(reference::relative_to(text, base)) {
            if resource_type == ResourceType::PATIENT {
                members.insert(format!("Patient/{id}"));
            }
        }
        if members.len() > MAX_GROUP_MEMBERS {
            return Err(FhirError::new(
                Category::Incorrect,
                IssueCode::TooCostly,
                format!("Group/{id} has more than {MAX_GROUP_MEMBERS} member patients"),
            ));
        }
    }
    Ok(members)
}

/// The kick-off's parameters: the query's, and for a POST those of its Parameters body too (a
/// POST without a body has only the query's, as FHIR operations may be invoked either way).
async fn kickoff_parameters(
    http: &actix_web::HttpRequest,
    payload: actix_web::web::Payload,
    limits: &super::Limits,
) -> Result<Vec<(String, String)>, FhirError> {
    let mut pairs = request::query_pairs(http);
    if http.method() != actix_web::http::Method::POST {
        return Ok(pairs);
    }
    let headers = http.headers();
    let declared_length = headers.get(actix_web::http::header::CONTENT_LENGTH).and_then(|value| value.to_str().ok());
    let chunked = headers.contains_key(actix_web::http::header::TRANSFER_ENCODING);
    if declared_length.map_or(!chunked, |length| length.trim() == "0") {
        return Ok(pairs);
    }
    let body = request::read_body(http, payload, limits).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(pairs);
    }
    let value = request::json_body(&body, limits)?;
    if value.get("resourceType").and_then(Value::as_str) != Some("Parameters") {
        return Err(incorrect("a POST kick-off carries a Parameters resource"));
    }
    for parameter in value["parameter"].as_array().into_iter().flatten() {
        let name = parameter["name"].as_str().ok_or_else(|| incorrect("a parameter without a name"))?;
        let value = ["valueString", "valueInstant", "valueDateTime", "valueCode", "valueUri", "valueCanonical"]
            .iter()
            .find_map(|key| parameter[*key].as_str())
            .or_else(|| parameter["valueReference"]["reference"].as_str())
            .ok_or_else(|| incorrect(format!("the parameter '{name}' has no value Braid reads")))?;
        pairs.push((name.to_owned(), value.to_owned()));
    }
    Ok(pairs)
}

async fn kickoff(ctx: Ctx, level: Level) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, access, payload, .. } = ctx;
    let parameters = kickoff_parameters(&http, payload, &state.limits).await?;
    if !request::prefers(&http, "respond-async") {
        return Err(incorrect("a Bulk Data export runs asynchronously: send the header Prefer: respond-async"));
    }
    let lenient = request::prefers(&http, "handling=lenient");
    let base = request::base_url(&http, &state);
    let mut since_micros = None;
    let mut asked_types: Option<Vec<ResourceType>> = None;
    let mut patients: Option<HashSet<String>> = None;
    let mut type_filters = TypeFilters::default();
    for (name, value) in parameters {
        match name.as_str() {
            // Patients to limit a Patient or Group export to (references, comma-separated in
            // a query, one per parameter in a Parameters body).
            "patient" => {
                let listed = patients.get_or_insert_with(HashSet::new);
                for text in value.split(',').map(str::trim).filter(|text| !text.is_empty()) {
                    match reference::parse(reference::relative_to(text, &base)) {
                        Target::Local { resource_type, id, .. } if resource_type == ResourceType::PATIENT => {
                            listed.insert(format!("Patient/{id}"));
                        }
                        _ => return Err(incorrect(format!("patient takes references to Patients, not '{text}'"))),
                    }
                    if listed.len() > MAX_GROUP_MEMBERS {
                        return Err(incorrect(format!("patient names more than {MAX_GROUP_MEMBERS} patients")));
                    }
                }
            }
            "_outputFormat" => {
                // An unescaped `+` arrives as a space.
                if !is_ndjson(&value.replace(' ', "+")) {
                    return Err(incorrect(format!(
                        "_outputFormat '{value}' is not offered; Braid writes {NDJSON} (also ndjson, application/ndjson)"
                    )));
                }
            }
            "_since" => {
                since_micros = Some(request::since_param(&value)?);
            }
            "_type" => {
                let names: Vec<&str> = value.split(',').map(str::trim).filter(|name| !name.is_empty()).collect();
                if names.is_empty() {
                    return Err(incorrect("_type names no resource type: give one or more, comma-separated"));
                }
                let list = asked_types.get_or_insert_with(Vec::new);
                for name in names {
                    let resource_type = ResourceType::parse(name)
                        .ok_or_else(|| incorrect(format!("_type names '{name}', which is not an R4 resource type")))?;
                    if !list.contains(&resource_type) {
                        list.push(resource_type);
                    }
                }
            }
            "_typeFilter" => type_filters.add(&value, &base)?,
            "_format" | "_pretty" => {}
            other if lenient => tracing::debug!(parameter = other, "an export parameter ignored (handling=lenient)"),
            other => {
                return Err(FhirError::new(
                    Category::Incorrect,
                    IssueCode::NotSupported,
                    format!(
                        "the export parameter '{other}' is not supported (supported: _outputFormat, _since, _type, \
                         _typeFilter); \
                         send Prefer: handling=lenient to have unsupported parameters ignored"
                    ),
                ));
            }
        }
    }
    let level = match (level, patients) {
        (level, None) => level,
        (Level::System, Some(_)) => {
            return Err(incorrect("patient limits Patient and Group exports; a system export takes no patient"));
        }
        (Level::Patient, Some(patients)) => {
            refuse_unknown_patients(&state, &access, &base, &patients)?;
            Level::Group { members: patients }
        }
        (Level::Group { members }, Some(patients)) => {
            // The Bulk Data IG asks for an error naming the patients that are not members.
            let mut outside: Vec<&String> = patients.difference(&members).collect();
            if !outside.is_empty() {
                outside.sort();
                return Err(incorrect(format!(
                    "patient names {} that the Group does not have as members",
                    first_ten(outside.iter().map(|patient| patient.as_str()))
                )));
            }
            Level::Group { members: patients }
        }
    };
    let (mut types, mut referenced) = export_types(&level, asked_types, &access, &base)?;
    for (resource_type, clauses) in types.iter_mut().chain(referenced.iter_mut()) {
        type_filters.apply(*resource_type, clauses);
    }
    // The kick-off as the client addressed it: the FHIR base (which a configured base_url may
    // put under another path than Braid's own `/fhir`) and what followed it.
    let after_base = http.uri().path_and_query().map_or("", |path| path.as_str());
    let request_url = format!("{base}{}", after_base.strip_prefix("/fhir").unwrap_or(after_base));
    let kickoff = Kickoff { level, types, referenced, since_micros, request: request_url, base: base.clone(), access };
    let id = match state.exports.start(kickoff).await {
        Ok(id) => id,
        // Too many exports in progress: when to try again, as the Bulk Data IG asks.
        Err(error) if error.status() == 429 => {
            let mut response = super::error::error_response(&error);
            response
                .headers_mut()
                .insert(actix_web::http::header::RETRY_AFTER, HeaderValue::from_static(BUSY_RETRY_AFTER_SECS));
            return Ok(response);
        }
        Err(error) => return Err(error),
    };
    let mut response = HttpResponse::build(StatusCode::ACCEPTED).finish();
    if let Ok(location) = HeaderValue::from_str(&format!("{base}/$export-status/{id}")) {
        response.headers_mut().insert(CONTENT_LOCATION, location);
    }
    Ok(response)
}

/// The current version of `resource_type/id` if it is live and the caller may read it; `None`
/// otherwise (the same answer for both, so that it tells nothing of records out of reach).
/// The index entries of the current version decide, without parsing it.
fn readable_current(
    snapshot: &crate::store::Snapshot,
    access: &Access,
    resource_type: ResourceType,
    id: &str,
    base: &str,
) -> Result<Option<crate::store::Version>, FhirError> {
    let Some(stored) = snapshot.current(resource_type, id)?.filter(|stored| !stored.is_deleted()) else {
        return Ok(None);
    };
    let readable = !access.is_restricted()
        || super::read::admits_current(snapshot, access, resource_type, id, stored.version, Permission::Read, base)?;
    Ok(readable.then_some(stored))
}

/// Refuses a Patient export's `patient` list if it names a Patient that does not exist, or that
/// the caller may not read (the same answer, so that it tells nothing of others' records), as
/// the Bulk Data IG asks (an error naming them, rather than an export silently without them).
fn refuse_unknown_patients(
    state: &super::AppState,
    access: &Access,
    base: &str,
    patients: &HashSet<String>,
) -> Result<(), FhirError> {
    let snapshot = state.store.snapshot()?;
    let mut unknown = Vec::new();
    for reference in patients {
        let id = reference.strip_prefix("Patient/").unwrap_or(reference);
        if readable_current(&snapshot, access, ResourceType::PATIENT, id, base)?.is_none() {
            unknown.push(reference.as_str());
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    unknown.sort_unstable();
    Err(FhirError::new(
        Category::Incorrect,
        IssueCode::NotFound,
        format!(
            "patient names {} that {} not exist",
            first_ten(unknown.iter().copied()),
            if unknown.len() == 1 { "does" } else { "do" }
        ),
    ))
}

/// The first ten of `names`, joined by commas: what an error lists of the patients it names.
fn first_ten<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.take(10).collect::<Vec<_>>().join(", ")
}

/// Most `_typeFilter` queries one kick-off may carry.
const MAX_TYPE_FILTERS: usize = 100;

/// The kick-off's `_typeFilter` queries, by type: each a conjunction of clauses; a type's
/// queries are alternatives (a resource is exported if it matches any), as Bulk Data 2.0 says.
#[derive(Default)]
struct TypeFilters {
    by_type: Vec<(ResourceType, Vec<Vec<Clause>>)>,
}

impl TypeFilters {
    /// Adds one `_typeFilter` value: a search query such as `Observation?category=laboratory`,
    /// or several joined by commas (as Bulk Data 1.0 wrote them), each starting with its type.
    fn add(&mut self, value: &str, base: &str) -> Result<(), FhirError> {
        for query in split_type_filters(value) {
            if self.by_type.iter().map(|(_, queries)| queries.len()).sum::<usize>() >= MAX_TYPE_FILTERS {
                return Err(incorrect(format!("more than {MAX_TYPE_FILTERS} _typeFilter queries")));
            }
            let (type_name, search) = query.split_once('?').ok_or_else(|| {
                incorrect(format!("_typeFilter '{query}' is not a search such as Observation?category=laboratory"))
            })?;
            let resource_type = ResourceType::parse(type_name).ok_or_else(|| {
                incorrect(format!("_typeFilter names '{type_name}', which is not an R4 resource type"))
            })?;
            let mut conjunction = Vec::new();
            for (name, value) in request::decode_pairs(search) {
                let clause = crate::search::query::parse_clause(resource_type, &name, &value, base)?.ok_or_else(|| {
                    incorrect(format!(
                        "_typeFilter: '{name}' is not a search parameter of {resource_type} that an export can filter by"
                    ))
                })?;
                conjunction.push(clause);
            }
            if conjunction.is_empty() {
                return Err(incorrect(format!("_typeFilter '{query}' has no search parameter")));
            }
            match self.by_type.iter_mut().find(|(filtered, _)| *filtered == resource_type) {
                Some((_, queries)) => queries.push(conjunction),
                None => self.by_type.push((resource_type, vec![conjunction])),
            }
        }
        Ok(())
    }

    /// Limits `clauses` (what is exported of `resource_type`) to the type's filters, if any.
    fn apply(&self, resource_type: ResourceType, clauses: &mut Vec<Clause>) {
        let Some((_, queries)) = self.by_type.iter().find(|(filtered, _)| *filtered == resource_type) else {
            return;
        };
        match queries.as_slice() {
            [one] => clauses.extend(one.iter().cloned()),
            _ => clauses.push(Clause::any_of("_typeFilter".into(), queries.clone())),
        }
    }
}

/// The queries of a `_typeFilter` value: split at each comma that starts another query (one
/// followed by a resource type and `?`), so that commas inside a query (`code=a,b`) stay.
fn split_type_filters(value: &str) -> Vec<&str> {
    let mut queries = Vec::new();
    let mut start = 0;
    for (at, _) in value.match_indices(',') {
        let rest = &value[at + 1..];
        let starts_query = rest.split_once('?').is_some_and(|(name, _)| ResourceType::parse(name.trim()).is_some());
        if starts_query {
            queries.push(value[start..at].trim());
            start = at + 1;
        }
    }
    queries.push(value[start..].trim());
    queries.into_iter().filter(|query| !query.is_empty()).collect()
}

/// Types to export, each with the clauses that limit what the caller reads of it.
type ExportTypes = Vec<(ResourceType, Vec<Clause>)>;

/// The types an export writes, each one the caller may read: those asked for (every type by
/// default). For the Patient and Group levels, the types of the Patient compartment (all of
/// them by default); shared reference data (`SHARED_TYPES`: Practitioners, Organizations,
/// Locations, Medications, ...) named in `_type` is exported only where those reference it
/// (the second list; see `Kickoff::referenced`); other types are a system export's. A type
/// asked for by name that the caller may not read is refused; unasked ones are left out.
fn export_types(
    level: &Level,
    asked: Option<Vec<ResourceType>>,
    access: &Access,
    base: &str,
) -> Result<(ExportTypes, ExportTypes), FhirError> {
    let patients_only = !matches!(level, Level::System);
    let named = asked.is_some();
    // By default a Patient or Group export is the compartment alone (what a compartment search
    // returns); reference data comes when the client names its types.
    let candidates: Vec<ResourceType> = match asked {
        Some(types) => types,
        None if patients_only => patient_compartment().types(),
        None => ResourceType::all().collect(),
    };
    let (mut types, mut referenced) = (Vec::new(), Vec::new());
    for resource_type in candidates {
        let outside = patients_only && !patient_compartment().contains(resource_type);
        if outside && !SHARED_TYPES.contains(&resource_type.as_str()) {
            // Outside the compartment, and not reference data: other patients' records may be
            // of this type (a Device, a Task, a Bundle), so only a system export writes it.
            return Err(incorrect(format!(
                "{resource_type} is not in the Patient compartment, nor reference data a patient's record points at: \
                 export it at the system level"
            )));
        }
        match access.restriction(resource_type, Permission::Read, base)? {
            Restriction::Allow(clauses) if outside => referenced.push((resource_type, clauses)),
            Restriction::Allow(clauses) => types.push((resource_type, clauses)),
            Restriction::Deny if named => {
                return Err(FhirError::new(
                    Category::Forbidden,
                    IssueCode::Forbidden,
                    format!("the access token's scopes do not allow reading {resource_type}"),
                ));
            }
            Restriction::Deny => {}
        }
    }
    if types.is_empty() && referenced.is_empty() {
        return Err(FhirError::new(
            Category::Forbidden,
            IssueCode::Forbidden,
            "the access token's scopes allow reading none of the types to export",
        ));
    }
    if types.is_empty() {
        // Only types outside the compartment: nothing would reference them.
        return Err(incorrect(format!(
            "{} not in the Patient compartment: a Patient or Group export writes them only where the patients' \
             resources reference them, so name a type of the compartment too, or export them at the system level",
            referenced.iter().map(|(resource_type, _)| resource_type.as_str()).collect::<Vec<_>>().join(", ")
                + if referenced.len() == 1 { " is" } else { " are" }
        )));
    }
    Ok((types, referenced))
}

fn unknown_job(id: &str) -> FhirError {
    FhirError::not_found(format!("there is no export {id} of this client (it may have expired or been cancelled)"))
}

/// `GET /fhir/$export-status/{job}`: 202 with `X-Progress` and `Retry-After` while it runs,
/// the manifest once complete, a 500 OperationOutcome if it failed.
pub async fn status(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let id = ctx.param(0).to_owned();
    let base = request::base_url(&ctx.http, &ctx.state);
    let requires_token = ctx.state.auth.is_some();
    match ctx.state.exports.poll(&id, &ctx.access)?.ok_or_else(|| unknown_job(&id))? {
        Poll::Running(progress) => {
            let mut response = HttpResponse::build(StatusCode::ACCEPTED).finish();
            let headers = response.headers_mut();
            headers.insert(actix_web::http::header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECS));
            if let Ok(progress) = HeaderValue::from_str(&progress) {
                headers.insert(actix_web::http::header::HeaderName::from_static("x-progress"), progress);
            }
            Ok(response)
        }
        Poll::Complete(record) => {
            let output: Vec<Value> = record
                .output
                .iter()
                .map(|output| {
                    json!({
                        "type": output.resource_type,
                        "url": format!("{base}/$export-file/{}/{}", record.id, output.file),
                        "count": output.count,
                    })
                })
                .collect();
            let manifest = json!({
                "transactionTime": record.transaction_time,
                "request": record.request,
                "requiresAccessToken": requires_token,
                "output": output,
                "error": [],
            });
            let mut response = HttpResponse::Ok().json(manifest);
            if let Some(expires) = record.expires {
                let text = crate::fhir::json::format_http_date(expires as i64 * 1_000_000);
                if let Ok(value) = HeaderValue::from_str(&text) {
                    response.headers_mut().insert(actix_web::http::header::EXPIRES, value);
                }
            }
            Ok(response)
        }
        Poll::Failed(reason) => {
            Err(FhirError::new(Category::Fault, IssueCode::Exception, format!("the export failed: {reason}")))
        }
    }
}

/// `DELETE /fhir/$export-status/{job}`: cancels the export and deletes its files (202).
pub async fn cancel(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let id = ctx.param(0).to_owned();
    if ctx.state.exports.cancel(&id, &ctx.access).await? {
        Ok(HttpResponse::build(StatusCode::ACCEPTED).finish())
    } else {
        Err(unknown_job(&id))
    }
}

/// `GET /fhir/$export-file/{job}/{file}`: a file of a complete export, streamed from disk.
pub async fn file(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let (id, name) = (ctx.param(0).to_owned(), ctx.param(1).to_owned());
    let path = ctx.state.exports.file(&id, &ctx.access, &name)?.ok_or_else(|| unknown_job(&id))?;
    // By the file itself, not the database's current state: exports outlive a restart, and
    // the database may have been encrypted or decrypted since the file was written.
    let sealed = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || crate::crypt::sealed::is_sealed(&path)).await
    };
    match (sealed, ctx.state.store.data_key()) {
        (Ok(Ok(true)), Some(key)) => return sealed_file(&path, key.clone()).await,
        (Ok(Ok(true)), None) => {
            tracing::error!("an export file was sealed by an encrypted database that has since been decrypted");
            return Err(FhirError::fault("export file"));
        }
        (Ok(Ok(false)), _) => {}
        // Deleted since it was looked up (cancelled, expired, or making room for a newer
        // export of the same requester): gone, as the job is.
        (Ok(Err(error)), _) if error.kind() == std::io::ErrorKind::NotFound => return Err(unknown_job(&id)),
        _ => {
            tracing::error!("an export file is missing");
            return Err(FhirError::fault("export file"));
        }
    }
    let file = tokio::fs::File::open(&path).await.map_err(|error| {
        if error.kind() == std::io::ErrorKind::NotFound {
            return unknown_job(&id);
        }
        tracing::error!(%error, "an export file cannot be read");
        FhirError::fault("export file")
    })?;
    let length = file.metadata().await.map(|metadata| metadata.len()).map_err(|_| FhirError::fault("export file"))?;
    let chunks = futures_util::stream::unfold(file, |mut file| async move {
        use tokio::io::AsyncReadExt;
        let mut buffer = vec![0u8; 64 * 1024];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(read) => {
                buffer.truncate(read);
                Some((Ok::<_, std::io::Error>(actix_web::web::Bytes::from(buffer)), file))
            }
            Err(error) => Some((Err(error), file)),
        }
    });
    let mut response = HttpResponse::Ok().body(actix_web::body::SizedStream::new(length, Box::pin(chunks)));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    Ok(response)
}

/// An export file of an encrypted database, decrypted as it is sent. Every chunk is
/// authenticated before it is sent; a damaged one ends the response early (the client sees a
/// short body against the Content-Length) and is logged.
async fn sealed_file(path: &std::path::Path, key: crate::crypt::DataKey) -> Result<HttpResponse, FhirError> {
    use crate::crypt::sealed::{CHUNK, SealedReader};
    let context = crate::crypt::sealed::context_of(path);
    let path = path.to_owned();
    let reader = tokio::task::spawn_blocking(move || {
        std::fs::File::open(&path).and_then(|f| SealedReader::new(f, &key, &context))
    })
    .await
    .map_err(|_| FhirError::fault("export file"))?
    .map_err(|error| {
        tracing::error!(%error, "an export file cannot be opened");
        FhirError::fault("export file")
    })?;
    let length = reader.plain_len();
    let chunks = futures_util::stream::unfold(Some(reader), |reader| async move {
        let mut reader = reader?;
        let (reader, read) = tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut buffer = vec![0u8; CHUNK];
            let read = reader.read(&mut buffer).map(|n| {
                buffer.truncate(n);
                buffer
            });
            (reader, read)
        })
        .await
        .ok()?;
        match read {
            Ok(buffer) if buffer.is_empty() => None,
            Ok(buffer) => Some((Ok::<_, std::io::Error>(actix_web::web::Bytes::from(buffer)), Some(reader))),
            Err(error) => {
                tracing::error!(%error, "an export file is damaged");
                Some((Err(error), None))
            }
        }
    });
    let mut response = HttpResponse::Ok().body(actix_web::body::SizedStream::new(length, Box::pin(chunks)));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    Ok(response)
}
