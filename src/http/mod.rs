//! The FHIR REST API: one file per interaction, and the route table that both registers the
//! routes and generates the CapabilityStatement, so the two cannot disagree.

mod access;
pub mod admin;
mod authorize;
mod bundle;
mod cors;
mod create;
mod cursor;
mod delete;
mod error;
mod everything;
mod export;
mod history;
pub mod ingest;
pub mod mdm;
mod metadata;
mod negotiate;
mod oauth;
mod paging;
mod patch;
mod read;
mod request;
mod response;
mod search;
mod source;
mod system_search;
mod update;
mod validate;
mod vread;

use actix_web::http::Method;
use std::borrow::Cow;
use std::sync::LazyLock;

use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::future::LocalBoxFuture;
use std::sync::Arc;

pub use bundle::process_bundle;
pub use everything::MAX_REFERENCED as EVERYTHING_MAX_REFERENCED;
pub use request::Return;

use crate::auth::rules::Decision;
use crate::auth::scope::Interaction as Permission;
use crate::auth::{Access, AuthState, BearerError};
use crate::fhir::{Category, FhirError, IssueCode, ResourceType};
use crate::store::Store;

/// Limits and defaults the handlers apply, taken from the settings.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub page_size: usize,
    pub max_page_size: usize,
    /// Most JSON values in a body (see [`crate::fhir::json::check_value_count`]).
    pub max_json_values: usize,
    /// Longest single JSON string, apart from base64 data.
    pub max_string_bytes: usize,
    /// How long the whole body of a request may take to arrive.
    pub body_read_timeout: std::time::Duration,
    /// Most resources one conditional delete may delete (the store enforces it; the
    /// CapabilityStatement reports it).
    pub conditional_delete_max: usize,
    /// Longest request target (path and query) accepted, in bytes.
    pub max_url_bytes: usize,
    /// The work one search may do before it is refused as too costly.
    pub search_budget: crate::search::budget::Budget,
    /// Most entries one page of an `_at` history examines.
    pub max_history_scan: usize,
    /// Sorted searches whose driver has fewer index entries than this are sorted in memory.
    pub sort_in_memory_below: usize,
    /// Largest file uploaded raw to `$ingest-vitals`.
    pub max_ingest_bytes: u64,
}

impl Limits {
    pub fn from_settings(settings: &crate::config::Settings) -> Limits {
        Limits {
            max_body_bytes: settings.max_body_bytes,
            max_json_depth: settings.max_json_depth,
            page_size: settings.page_size,
            max_page_size: settings.max_page_size,
            max_json_values: settings.max_json_values,
            max_string_bytes: settings.max_string_bytes,
            body_read_timeout: std::time::Duration::from_secs(settings.body_read_timeout_secs),
            conditional_delete_max: settings.conditional_delete_max.clamp(1, crate::store::MAX_CONDITIONAL_DELETE),
            max_url_bytes: settings.max_url_bytes,
            search_budget: crate::search::budget::Budget {
                work: settings.search_work_budget,
                time: std::time::Duration::from_millis(settings.search_timeout_ms),
            },
            max_history_scan: settings.max_history_scan,
            sort_in_memory_below: settings.sort_in_memory_below,
            max_ingest_bytes: settings.max_ingest_bytes,
        }
    }
}

/// What every handler can reach.
pub struct AppState {
    pub store: Store,
    pub limits: Limits,
    /// The public base URL of the FHIR API (ending in `/fhir`), if configured; otherwise each
    /// request's own scheme and host are used.
    pub base_url: Option<String>,
    /// Without `base_url`: whether `Forwarded` / `X-Forwarded-*` headers name the public host
    /// and scheme (only true when the operator says a proxy sets them).
    pub trust_forwarded_headers: bool,
    /// The authorization server; `None` when authorization is off (every request is
    /// [`Access::Unrestricted`]).
    pub auth: Option<Arc<AuthState>>,
    /// Where requests made with a token leave their audit records; `None` when the audit trail
    /// is off (or authorization is).
    pub audit: Option<crate::auth::audit::AuditSink>,
    /// The upstream systems whose tokens write in their own namespaces.
    pub sources: Arc<crate::sources::Registry>,
    /// Bulk Data export jobs.
    pub exports: Arc<crate::sources::export::Exports>,
    /// The master patient index.
    pub mpi: Arc<crate::mpi::service::Mpi>,
    /// The vitals imports (`$ingest-vitals`) running.
    pub imports: ingest::Imports,
}

/// The FHIR interactions Braid offers, named as in the CapabilityStatement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interaction {
    Capabilities,
    Read,
    Vread,
    Create,
    Update,
    ConditionalUpdate,
    Delete,
    ConditionalDelete,
    Patch,
    ConditionalPatch,
    HistoryInstance,
    HistoryType,
    HistorySystem,
    /// `POST /fhir` with a transaction or batch Bundle.
    TransactionOrBatch,
    Validate,
    SearchType,
    /// `GET /Patient/{id}/{type}`
    SearchCompartment,
    /// `GET /fhir?_type=...`
    SearchSystem,
    /// `GET /Patient/{id}/$everything`
    Everything,
    /// Bulk Data `$export` kick-off (system, Patient, Group).
    Export,
    /// Polling (GET) or cancelling (DELETE) an export.
    ExportStatus,
    /// Downloading an export's file.
    ExportFile,
    /// `Patient/$match`
    Match,
    /// `$mdm-query-links`
    QueryLinks,
    /// The `$mdm-*` operations that change links.
    ChangeLinks,
    /// `Patient/{id}/$ingest-vitals`
    IngestVitals,
}

impl Interaction {
    /// Whether the interaction writes (what a source's figures count as a push).
    pub fn writes(self) -> bool {
        matches!(
            self,
            Interaction::Create
                | Interaction::Update
                | Interaction::ConditionalUpdate
                | Interaction::Delete
                | Interaction::ConditionalDelete
                | Interaction::Patch
                | Interaction::ConditionalPatch
                | Interaction::TransactionOrBatch
        )
    }

    /// The interaction's code in FHIR's restful-interaction code system (the CapabilityStatement
    /// and the audit trail name interactions by it). A transaction or batch is `transaction`;
    /// `$validate` and `$everything` are `operation`.
    pub fn restful_code(self) -> &'static str {
        match self {
            Interaction::Capabilities => "capabilities",
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Create => "create",
            Interaction::Update | Interaction::ConditionalUpdate => "update",
            Interaction::Patch | Interaction::ConditionalPatch => "patch",
            Interaction::Delete | Interaction::ConditionalDelete => "delete",
            Interaction::HistoryInstance => "history-instance",
            Interaction::HistoryType => "history-type",
            Interaction::HistorySystem => "history-system",
            Interaction::TransactionOrBatch => "transaction",
            Interaction::Validate
            | Interaction::Everything
            | Interaction::Export
            | Interaction::ExportStatus
            | Interaction::ExportFile
            | Interaction::Match
            | Interaction::QueryLinks
            | Interaction::ChangeLinks
            | Interaction::IngestVitals => "operation",
            Interaction::SearchType | Interaction::SearchCompartment => "search-type",
            Interaction::SearchSystem => "search-system",
        }
    }
}

/// What a handler gets: the request, its body stream, the app state and the values of the
/// route's placeholders in order (e.g. `[type, id]` for `/{type}/{id}`).
pub struct Ctx {
    pub http: HttpRequest,
    pub payload: web::Payload,
    pub state: web::Data<AppState>,
    pub params: Vec<String>,
    /// What the caller may do, from its access token.
    pub access: Access,
    /// The source the caller writes as (a push source's token).
    pub source: Option<Arc<crate::sources::ActiveSource>>,
}

impl Ctx {
    /// The `index`-th placeholder value of the matched route.
    pub fn param(&self, index: usize) -> &str {
        self.params.get(index).map_or("", String::as_str)
    }
}

type Handler = fn(Ctx) -> LocalBoxFuture<'static, Result<HttpResponse, FhirError>>;

/// One row of the route table.
pub struct RouteSpec {
    pub interaction: Interaction,
    pub method: Method,
    /// Path below `/fhir`; `{type}` is a resource type, `{id}` an id, `{vid}` a version.
    pub path: &'static str,
    segments: Vec<Segment>,
    handler: Handler,
}

enum Segment {
    Literal(&'static str),
    Placeholder,
}

/// Every route of the FHIR API, in matching order: where paths overlap, literal segments
/// (`_history`, `$validate`) come before the placeholders they would also match.
pub fn routes() -> &'static [RouteSpec] {
    static ROUTES: LazyLock<Vec<RouteSpec>> = LazyLock::new(|| {
        use Interaction::*;
        let row = |interaction, method, path: &'static str, handler: Handler| RouteSpec {
            interaction,
            method,
            path,
            segments: path
                .split('/')
                .filter(|s| !s.is_empty())
                .map(|s| if s.starts_with('{') { Segment::Placeholder } else { Segment::Literal(s) })
                .collect(),
            handler,
        };
        vec![
            row(Capabilities, Method::GET, "/metadata", |ctx| Box::pin(metadata::capability_statement(ctx))),
            row(Export, Method::GET, "/$export", |ctx| Box::pin(export::system(ctx))),
            row(Export, Method::POST, "/$export", |ctx| Box::pin(export::system(ctx))),
            row(ExportStatus, Method::GET, "/$export-status/{job}", |ctx| Box::pin(export::status(ctx))),
            row(ExportStatus, Method::DELETE, "/$export-status/{job}", |ctx| Box::pin(export::cancel(ctx))),
            row(ExportFile, Method::GET, "/$export-file/{job}/{file}", |ctx| Box::pin(export::file(ctx))),
            row(Export, Method::GET, "/{type}/$export", |ctx| Box::pin(export::patient(ctx))),
            row(Export, Method::POST, "/{type}/$export", |ctx| Box::pin(export::patient(ctx))),
            row(Export, Method::GET, "/{type}/{id}/$export", |ctx| Box::pin(export::group(ctx))),
            row(Export, Method::POST, "/{type}/{id}/$export", |ctx| Box::pin(export::group(ctx))),
            row(QueryLinks, Method::GET, "/$mdm-query-links", |ctx| Box::pin(mdm::query_links(ctx))),
            row(QueryLinks, Method::POST, "/$mdm-query-links", |ctx| Box::pin(mdm::query_links(ctx))),
            row(ChangeLinks, Method::POST, "/$mdm-update-link", |ctx| Box::pin(mdm::update_link(ctx))),
            row(ChangeLinks, Method::POST, "/$mdm-create-link", |ctx| Box::pin(mdm::create_link(ctx))),
            row(ChangeLinks, Method::POST, "/$mdm-merge-golden-resources", |ctx| Box::pin(mdm::merge(ctx))),
            row(ChangeLinks, Method::POST, "/$mdm-not-duplicate", |ctx| Box::pin(mdm::not_duplicate(ctx))),
            row(ChangeLinks, Method::POST, "/$mdm-unmerge", |ctx| Box::pin(mdm::unmerge(ctx))),
            row(TransactionOrBatch, Method::POST, "/", |ctx| Box::pin(bundle::handle(ctx))),
            row(SearchSystem, Method::GET, "/", |ctx| Box::pin(system_search::handle(ctx))),
            row(HistorySystem, Method::GET, "/_history", |ctx| Box::pin(history::system(ctx))),
            row(HistoryType, Method::GET, "/{type}/_history", |ctx| Box::pin(history::type_level(ctx))),
            row(Validate, Method::POST, "/{type}/$validate", |ctx| Box::pin(validate::handle(ctx))),
            row(Match, Method::POST, "/{type}/$match", |ctx| Box::pin(mdm::match_patient(ctx))),
            row(SearchType, Method::POST, "/{type}/_search", |ctx| Box::pin(search::type_level(ctx))),
            row(SearchType, Method::GET, "/{type}", |ctx| Box::pin(search::type_level(ctx))),
            row(Create, Method::POST, "/{type}", |ctx| Box::pin(create::handle(ctx))),
            row(ConditionalUpdate, Method::PUT, "/{type}", |ctx| Box::pin(update::conditional(ctx))),
            row(ConditionalDelete, Method::DELETE, "/{type}", |ctx| Box::pin(delete::conditional(ctx))),
            row(ConditionalPatch, Method::PATCH, "/{type}", |ctx| Box::pin(patch::conditional(ctx))),
            row(Vread, Method::GET, "/{type}/{id}/_history/{vid}", |ctx| Box::pin(vread::handle(ctx))),
            row(HistoryInstance, Method::GET, "/{type}/{id}/_history", |ctx| Box::pin(history::instance(ctx))),
            row(Everything, Method::GET, "/{type}/{id}/$everything", |ctx| Box::pin(everything::handle(ctx))),
            row(Validate, Method::POST, "/{type}/{id}/$validate", |ctx| Box::pin(validate::instance(ctx))),
            row(IngestVitals, Method::POST, "/{type}/{id}/$ingest-vitals", |ctx| Box::pin(ingest::handle(ctx))),
            row(SearchCompartment, Method::GET, "/{type}/{id}/{compartment_type}", |ctx| {
                Box::pin(search::compartment(ctx))
            }),
            row(Read, Method::GET, "/{type}/{id}", |ctx| Box::pin(read::handle(ctx))),
            row(Update, Method::PUT, "/{type}/{id}", |ctx| Box::pin(update::by_id(ctx))),
            row(Delete, Method::DELETE, "/{type}/{id}", |ctx| Box::pin(delete::by_id(ctx))),
            row(Patch, Method::PATCH, "/{type}/{id}", |ctx| Box::pin(patch::by_id(ctx))),
        ]
    });
    &ROUTES
}

impl RouteSpec {
    /// The placeholder values if `segments` (the request path below `/fhir`) fits this route.
    fn capture(&self, segments: &[Cow<'_, str>]) -> Option<Vec<String>> {
        if segments.len() != self.segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (pattern, segment) in self.segments.iter().zip(segments) {
            match pattern {
                Segment::Literal(literal) if *literal == segment.as_ref() => {}
                Segment::Literal(_) => return None,
                Segment::Placeholder => params.push(segment.clone().into_owned()),
            }
        }
        Some(params)
    }
}

/// Registers the `/fhir` scope on an actix app. Every request below `/fhir` goes to
/// [`dispatch`], which matches it against [`routes`]: the table is the router.
pub fn configure(config: &mut web::ServiceConfig) {
    oauth::configure(config);
    config
        .route("/sources", web::get().to(source::list_status))
        .route("/sources/{name}", web::get().to(source::status))
        .route("/mpi", web::get().to(mdm::status));
    config.service(
        web::scope("/fhir")
            .wrap(actix_web::middleware::from_fn(negotiate::content_negotiation))
            .wrap(actix_web::middleware::from_fn(cors::cors))
            .default_service(web::to(dispatch)),
    );
}

/// Finds the route for a request and runs its handler. Unmatched requests get 405 (with
/// `Allow`) if the path exists for other methods, 404 otherwise, always as an OperationOutcome.
async fn dispatch(http: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> HttpResponse {
    // Bounds everything below that is driven by the URL: routing, query parsing, search plans.
    let url_bytes = http.path().len() + http.query_string().len();
    if url_bytes > state.limits.max_url_bytes {
        return error::error_response(&FhirError::new(
            Category::UriTooLong,
            IssueCode::TooLong,
            format!(
                "the URL is longer than the limit of {} bytes; send long searches as POST _search forms",
                state.limits.max_url_bytes
            ),
        ));
    }
    let path = http.path().strip_prefix("/fhir").unwrap_or(http.path());
    let segments: Vec<Cow<'_, str>> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy())
        .collect();
    let mut allowed: Vec<&str> = Vec::new();
    for route in routes() {
        if let Some(params) = route.capture(&segments) {
            if route.method == http.method() {
                let access = match authorize(&http, &state, route.interaction, &params) {
                    Ok(access) => access,
                    Err(refusal) => return *refusal,
                };
                let source = match source::of(&access, &state) {
                    Ok(source) => source,
                    Err(error) => return error::error_response(&error),
                };
                // The audit record, handed over once the outcome is known.
                let audited = match (&access, &state.audit) {
                    (Access::Token(grant), Some(sink)) if route.interaction != Interaction::Capabilities => {
                        let mut record = audit_record(grant, route.interaction, &params, &http);
                        // A source writes by its own ids: the trail names what was written.
                        if let (Some(source), Some(resource)) = (&source, &record.resource) {
                            if route.interaction.writes() {
                                record.resource = namespaced(source, resource);
                            }
                        }
                        Some((record, sink.clone()))
                    }
                    _ => None,
                };
                // A source's figures count its writes, and keep why one was refused.
                let counted = source.clone().filter(|_| route.interaction.writes());
                if let Some(source) = &counted {
                    source.pushed();
                }
                let what = counted.as_ref().and_then(|_| addressed(&params));
                let ctx = Ctx { http: http.clone(), payload, state, params, access, source };
                let response = match (route.handler)(ctx).await {
                    Ok(response) => response,
                    Err(error) => {
                        if let Some(source) = &counted {
                            source.rejected(what, &error);
                        }
                        error::error_response(&error)
                    }
                };
                if let Some((record, sink)) = audited {
                    sink.record(finish_audit_record(record, &response)).await;
                }
                return response;
            }
            if !allowed.contains(&route.method.as_str()) {
                allowed.push(route.method.as_str());
            }
        }
    }
    let first_segment = segments.first().map_or("", |s| s.as_ref());
    let looks_like_type = first_segment.chars().next().is_some_and(|c| c.is_ascii_uppercase());
    if looks_like_type && ResourceType::parse(first_segment).is_none() {
        return error::error_response(&FhirError::not_found(format!(
            "'{first_segment}' is not a resource type this server knows"
        )));
    }
    if allowed.is_empty() {
        return error::error_response(&FhirError::not_found(format!(
            "there is no FHIR interaction at {} {}",
            http.method(),
            http.path()
        )));
    }
    let error = FhirError::new(
        Category::MethodNotAllowed,
        IssueCode::NotSupported,
        format!("{} is not supported on this path; allowed: {}", http.method(), allowed.join(", ")),
    );
    let mut response = error::error_response(&error);
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&allowed.join(", ")) {
        response.headers_mut().insert(actix_web::http::header::ALLOW, value);
    }
    response
}

/// The access token's check before any data is read: a token is required (except for the
/// CapabilityStatement), and its scopes must allow the interaction on its type. Which resources
/// of an allowed type the token reaches is the interactions' own check.
fn authorize(
    http: &HttpRequest,
    state: &web::Data<AppState>,
    interaction: Interaction,
    params: &[String],
) -> Result<Access, Box<HttpResponse>> {
    if state.auth.is_none() || interaction == Interaction::Capabilities {
        return Ok(Access::Unrestricted);
    }
    let Some(grant) = bearer_grant(http, state)? else { return Ok(Access::Unrestricted) };
    let type_of = |index: usize| params.get(index).and_then(|name| ResourceType::parse(name));
    // The permissions the interaction needs: on its type, or (`None`) on every type.
    let needed: Vec<(Option<ResourceType>, Permission)> = match interaction {
        Interaction::Capabilities => Vec::new(),
        Interaction::Read | Interaction::Vread | Interaction::HistoryInstance => vec![(type_of(0), Permission::Read)],
        Interaction::HistoryType => vec![(type_of(0), Permission::Read), (type_of(0), Permission::Search)],
        Interaction::SearchType => vec![(type_of(0), Permission::Search)],
        Interaction::SearchCompartment => vec![(type_of(2), Permission::Search)],
        Interaction::Create => vec![(type_of(0), Permission::Create)],
        Interaction::Update | Interaction::Patch => vec![(type_of(0), Permission::Update)],
        Interaction::Delete => vec![(type_of(0), Permission::Delete)],
        Interaction::ConditionalUpdate | Interaction::ConditionalPatch => {
            vec![(type_of(0), Permission::Update), (type_of(0), Permission::Search)]
        }
        Interaction::ConditionalDelete => vec![(type_of(0), Permission::Delete), (type_of(0), Permission::Search)],
        Interaction::Validate => vec![(type_of(0), Permission::Read)],
        // Each type is searched as far as the token allows (the handler checks type by type).
        Interaction::Everything => vec![(type_of(0), Permission::Read)],
        Interaction::SearchSystem => Vec::new(),
        Interaction::HistorySystem => vec![(None, Permission::Read)],
        // Every entry is checked as its own request would be.
        Interaction::TransactionOrBatch => Vec::new(),
        // An export checks each type it writes, and each resource; its status and files are
        // its own client's only.
        Interaction::Export | Interaction::ExportStatus | Interaction::ExportFile => Vec::new(),
        Interaction::Match => vec![(type_of(0), Permission::Search)],
        Interaction::QueryLinks => vec![(Some(ResourceType::PATIENT), Permission::Search)],
        // An operator's token, which the operations check.
        Interaction::ChangeLinks => vec![(Some(ResourceType::PATIENT), Permission::Update)],
        // The Observations it makes (and the Devices they name), for the patient in the path.
        Interaction::IngestVitals => vec![(Some(ResourceType::OBSERVATION), Permission::Create)],
    };
    let access = Access::Token(grant);
    // Every interaction limits what it touches to what a restricted token (one patient, or
    // granular scopes) may see.
    let restricted = access.is_restricted();
    let Access::Token(grant) = &access else { unreachable!("built above") };
    for (resource_type, permission) in needed {
        let allowed = match resource_type {
            // A restricted token's filters are applied by the interaction itself.
            Some(resource_type) => match grant.rules.decide(resource_type, permission) {
                Decision::All => true,
                Decision::Filtered(_) => restricted,
                Decision::Deny => false,
            },
            // An unknown type in the path: the handler answers 404 whatever the token.
            None if interaction_has_type(interaction) => true,
            // The system history of a restricted token keeps, entry by entry, what it may read.
            None if restricted => true,
            // Other interactions that reach several types need the permission on every type.
            None => on_every_type(grant, permission),
        };
        if !allowed {
            let what = resource_type.map_or("every resource type", ResourceType::as_str);
            let message = format!("the access token's scopes do not allow {permission:?} on {what}");
            // A source's write refused here is one of its rejections too.
            let source = source::of_grant(grant, state);
            if let Some(source) = source.filter(|_| interaction.writes()) {
                source.pushed();
                source
                    .rejected(addressed(params), &FhirError::new(Category::Forbidden, IssueCode::Forbidden, &message));
            }
            return Err(Box::new(refusal(
                Category::Forbidden,
                IssueCode::Forbidden,
                message,
                "Bearer realm=\"braid\", error=\"insufficient_scope\"".to_owned(),
            )));
        }
    }
    Ok(access)
}

/// What a request's path addresses (`Patient/42`, `Patient`), to name it in a source's
/// rejections.
fn addressed(params: &[String]) -> Option<String> {
    params.first().map(|type_name| match params.get(1) {
        Some(id) => format!("{type_name}/{id}"),
        None => type_name.clone(),
    })
}

/// What the audit trail keeps of one request, as far as it is known before the request is
/// handled (see [`crate::auth::audit`]); [`finish_audit_record`] adds the outcome.
/// `Type/id` as a source's write addresses it: the id in the source's namespace.
fn namespaced(source: &crate::sources::ActiveSource, resource: &str) -> Option<String> {
    let (resource_type, id) = resource.split_once('/')?;
    let id = crate::fhir::Id::parse(id).ok()?;
    Some(format!("{resource_type}/{}", source.namespace.id(&id).as_str()))
}

fn audit_record(
    grant: &Arc<crate::auth::Grant>,
    interaction: Interaction,
    params: &[String],
    http: &HttpRequest,
) -> crate::auth::audit::AuditRecord {
    let code = interaction.restful_code();
    let resource_type = params.first().and_then(|name| ResourceType::parse(name));
    // Instance interactions, compartment searches and $everything name their resource.
    let resource = match (resource_type, params.get(1)) {
        (Some(resource_type), Some(id)) => Some(format!("{resource_type}/{id}")),
        _ => None,
    };
    let query = matches!(
        interaction,
        Interaction::SearchType
            | Interaction::SearchCompartment
            | Interaction::SearchSystem
            | Interaction::ConditionalUpdate
            | Interaction::ConditionalDelete
            | Interaction::ConditionalPatch
            | Interaction::Everything
    )
    .then(|| http.query_string().to_owned())
    .filter(|query| !query.is_empty());
    let recorded_micros = crate::fhir::json::now_micros();
    crate::auth::audit::AuditRecord {
        grant: grant.clone(),
        interaction: code,
        resource_type: if interaction == Interaction::SearchCompartment {
            params.get(2).and_then(|name| ResourceType::parse(name))
        } else {
            resource_type
        },
        resource,
        query,
        status: 0,
        recorded_micros,
    }
}

/// Completes an audit record with the request's outcome, and for a create the resource it
/// created (from `Location: base/Type/id/_history/n`).
fn finish_audit_record(
    mut record: crate::auth::audit::AuditRecord,
    response: &HttpResponse,
) -> crate::auth::audit::AuditRecord {
    record.status = response.status().as_u16();
    if record.interaction == "create" && response.status().is_success() {
        if let Some(location) = response.headers().get(actix_web::http::header::LOCATION).and_then(|v| v.to_str().ok())
        {
            let parts: Vec<&str> = location.rsplitn(4, '/').collect();
            if let [_, "_history", id, type_name] = parts.as_slice() {
                record.resource = Some(format!("{}/{id}", type_name.rsplit('/').next().unwrap_or(type_name)));
            }
        }
    }
    record
}

/// Whether the interaction's path names the type it needs permissions on.
fn interaction_has_type(interaction: Interaction) -> bool {
    !matches!(
        interaction,
        Interaction::SearchSystem
            | Interaction::HistorySystem
            | Interaction::TransactionOrBatch
            | Interaction::Everything
    )
}

/// A 401 or 403 with its `WWW-Authenticate` challenge (RFC 6750 §3) and an OperationOutcome.
/// The grant of the request's bearer token; `None` with authorization off. A missing or invalid
/// token is refused with a 401 and its challenge.
pub(crate) fn bearer_grant(
    http: &HttpRequest,
    state: &web::Data<AppState>,
) -> Result<Option<Arc<crate::auth::Grant>>, Box<HttpResponse>> {
    let Some(auth) = &state.auth else { return Ok(None) };
    // `from_utf8` rather than `HeaderValue::to_str`, which checks a token of several hundred
    // bytes one byte at a time; the token's own checks refuse anything but a JWT's characters.
    let header = http
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|value| std::str::from_utf8(value.as_bytes()).ok());
    let grant = auth.bearer(header, &request::base_url(http, state)).map_err(|error| {
        let (challenge, message) = match error {
            BearerError::Missing => (
                "Bearer realm=\"braid\"".to_owned(),
                "this server requires an access token (Authorization: Bearer)".to_owned(),
            ),
            BearerError::Invalid(reason) => {
                (format!("Bearer realm=\"braid\", error=\"invalid_token\", error_description=\"{reason}\""), reason)
            }
        };
        Box::new(refusal(Category::Unauthorized, IssueCode::Login, message, challenge))
    })?;
    // A patient bound to a golden Patient reaches the records of every Patient linked to it
    // now: the index is asked on every request, so a merge or an unmerge applies at once.
    if let Some(patient) = grant.patient.as_deref()
        && crate::mpi::golden::is_golden(patient)
    {
        let person = state.mpi.person(patient).map_err(|error| Box::new(error::error_response(&error)))?;
        let mut bound = (*grant).clone();
        bound.person = person;
        return Ok(Some(Arc::new(bound)));
    }
    Ok(Some(grant))
}

/// Whether `grant` has `permission` on every resource of every type.
pub(crate) fn on_every_type(grant: &crate::auth::Grant, permission: Permission) -> bool {
    ResourceType::all().all(|resource_type| grant.rules.decide(resource_type, permission) == Decision::All)
}

fn refusal(category: Category, code: IssueCode, message: String, challenge: String) -> HttpResponse {
    let mut response = error::error_response(&FhirError::new(category, code, message));
    if let Ok(value) = actix_web::http::header::HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(actix_web::http::header::WWW_AUTHENTICATE, value);
    }
    response
}
