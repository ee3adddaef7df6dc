//! The master patient index's operations, named as HAPI FHIR's MDM module names them so that
//! its users can migrate (see [`crate::mpi`]):
//! - `POST /Patient/$match` (FHIR's operation): the golden Patients a Patient resource would
//!   match, scored and graded;
//! - `GET|POST /$mdm-query-links`: the links, filtered and paged;
//! - `POST /$mdm-update-link`, `/$mdm-create-link`: an operator's MANUAL link;
//! - `POST /$mdm-merge-golden-resources`, `/$mdm-not-duplicate`, `/$mdm-unmerge`: merging two
//!   golden Patients, ruling out a possible duplicate, and splitting a person back apart.
//!
//! Parameters come in a FHIR Parameters body or, where the operation only reads, the URL.
//! Reading links needs a token that reads every Patient; changing them, an operator's token
//! ([`crate::auth::Grant::is_operator`]).

use std::collections::{BTreeMap, BTreeSet};

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde_json::{Value, json};

use actix_web::{HttpRequest, web};

use super::{AppState, Ctx, request, response};
use crate::auth::Access;
use crate::fhir::{Category, FhirError, IssueCode};
use crate::mpi::blocking::keys;
use crate::mpi::links::{self, Unmerged};
use crate::mpi::matcher::candidates;
use crate::mpi::record::PersonRecord;
use crate::mpi::service::result_name;
use crate::mpi::state::{self, Link, LinkSource, MatchResult};

/// The extension that grades a `$match` result (FHIR's match-grade).
pub const MATCH_GRADE: &str = "http://hl7.org/fhir/StructureDefinition/match-grade";

/// Most results `$match` returns, and its default.
pub const MAX_MATCH_COUNT: usize = 100;
const DEFAULT_MATCH_COUNT: usize = 10;

/// A `$match` result below this probability is not listed.
pub const MIN_LISTED_PROBABILITY: f64 = 0.5;

/// Links `$mdm-query-links` returns per page by default, at most, and the largest `_offset`.
const DEFAULT_LINK_COUNT: usize = 20;
const MAX_LINK_COUNT: usize = 100;
const MAX_OFFSET: usize = 10_000;

/// Most links one `$mdm-query-links` request reads to fill a page (filters may skip many).
pub const MAX_LINKS_SCANNED: usize = 200_000;

fn invalid(message: impl Into<String>) -> FhirError {
    FhirError::incorrect(IssueCode::Invalid, message)
}

fn forbidden(message: &str) -> FhirError {
    FhirError::new(Category::Forbidden, IssueCode::Forbidden, message)
}

/// Refuses a token that may not read the whole index (links tell who is the same person).
fn require_reader(access: &Access) -> Result<(), FhirError> {
    match access {
        Access::Unrestricted => Ok(()),
        Access::Token(_) if access.is_restricted() => {
            Err(forbidden("the master patient index is read with a token that reads every Patient"))
        }
        Access::Token(_) => Ok(()),
    }
}

/// Refuses a token that is not an operator's.
fn require_operator(access: &Access) -> Result<(), FhirError> {
    match access {
        Access::Unrestricted => Ok(()),
        Access::Token(grant) if grant.is_operator() => Ok(()),
        Access::Token(_) => Err(forbidden(
            "only an operator changes links: an administrator's user/ token or a backend service's system/ token \
             that may update every Patient",
        )),
    }
}

/// An operation's named parameters, from a Parameters body and the URL.
#[derive(Default)]
struct Arguments {
    values: BTreeMap<String, Vec<Value>>,
}

impl Arguments {
    /// Reads the body (a Parameters resource; none for a GET) and the URL's parameters; any
    /// name outside `known` is refused.
    async fn read(
        http: &HttpRequest,
        payload: web::Payload,
        state: &AppState,
        known: &[&str],
    ) -> Result<Arguments, FhirError> {
        let mut arguments = Arguments::default();
        for (name, value) in request::query_pairs(http) {
            arguments.values.entry(name).or_default().push(Value::String(value));
        }
        if http.method() == actix_web::http::Method::POST {
            let body = request::read_body(http, payload, &state.limits).await?;
            let value = request::json_body(&body, &state.limits)?;
            if crate::fhir::json::resource_type_of(&value)?.as_str() != "Parameters" {
                return Err(invalid("the body of an operation is a Parameters resource").at("resourceType"));
            }
            for parameter in value.get("parameter").and_then(Value::as_array).into_iter().flatten() {
                let Some(name) = parameter.get("name").and_then(Value::as_str) else {
                    return Err(invalid("a parameter has no name").at("Parameters.parameter.name"));
                };
                let value = parameter
                    .as_object()
                    .and_then(|object| {
                        object.iter().find(|(key, _)| key.starts_with("value") || key.as_str() == "resource")
                    })
                    .map(|(_, value)| value.clone())
                    .ok_or_else(|| invalid(format!("the parameter '{name}' has no value")).at(name))?;
                arguments.values.entry(name.to_owned()).or_default().push(value);
            }
        }
        arguments.check(known)?;
        Ok(arguments)
    }

    fn check(&self, known: &[&str]) -> Result<(), FhirError> {
        for (name, values) in &self.values {
            if !known.contains(&name.as_str()) {
                return Err(invalid(format!("unknown parameter '{name}'; this operation takes {}", known.join(", ")))
                    .at(name.as_str()));
            }
            if values.len() > 1 && name != "resourceId" {
                return Err(invalid(format!("the parameter '{name}' is given more than once")).at(name.as_str()));
            }
        }
        Ok(())
    }

    fn text(&self, name: &str) -> Result<Option<String>, FhirError> {
        match self.values.get(name).and_then(|values| values.first()) {
            None => Ok(None),
            Some(Value::String(text)) => Ok(Some(text.clone())),
            Some(Value::Number(number)) => Ok(Some(number.to_string())),
            Some(Value::Bool(flag)) => Ok(Some(flag.to_string())),
            Some(_) => Err(invalid(format!("the parameter '{name}' is not a simple value")).at(name)),
        }
    }

    fn required(&self, name: &str) -> Result<String, FhirError> {
        self.text(name)?.ok_or_else(|| {
            FhirError::incorrect(IssueCode::Required, format!("the parameter '{name}' is required")).at(name)
        })
    }

    /// A Patient id, given as `Patient/{id}` or `{id}`.
    fn patient(&self, name: &str) -> Result<Option<String>, FhirError> {
        self.text(name)?.map(|text| patient_id(&text, name)).transpose()
    }

    fn required_patient(&self, name: &str) -> Result<String, FhirError> {
        patient_id(&self.required(name)?, name)
    }

    fn patients(&self, name: &str) -> Result<Vec<String>, FhirError> {
        let mut ids = Vec::new();
        for value in self.values.get(name).into_iter().flatten() {
            let Some(text) = value.as_str() else { return Err(invalid(format!("'{name}' is not an id")).at(name)) };
            for part in text.split(',').filter(|part| !part.is_empty()) {
                ids.push(patient_id(part, name)?);
            }
        }
        if ids.len() > links::MAX_MOVED {
            return Err(invalid(format!("at most {} '{name}' values", links::MAX_MOVED)).at(name));
        }
        Ok(ids)
    }

    fn number(&self, name: &str, default: usize, max: usize) -> Result<usize, FhirError> {
        match self.text(name)? {
            None => Ok(default),
            Some(text) => text
                .parse::<usize>()
                .ok()
                .filter(|value| *value <= max)
                .ok_or_else(|| invalid(format!("'{name}' must be a whole number from 0 to {max}")).at(name)),
        }
    }

    fn flag(&self, name: &str) -> Result<bool, FhirError> {
        match self.text(name)?.as_deref() {
            None | Some("false") => Ok(false),
            Some("true") => Ok(true),
            Some(_) => Err(invalid(format!("'{name}' must be true or false")).at(name)),
        }
    }
}

fn patient_id(text: &str, name: &str) -> Result<String, FhirError> {
    let id = text.strip_prefix("Patient/").unwrap_or(text);
    crate::fhir::Id::parse(id)
        .map(|id| id.as_str().to_owned())
        .map_err(|_| invalid(format!("'{name}' must name a Patient (Patient/{{id}} or {{id}}), not '{text}'")).at(name))
}

fn match_result(text: &str, name: &str) -> Result<MatchResult, FhirError> {
    match text {
        "MATCH" => Ok(MatchResult::Match),
        "POSSIBLE_MATCH" => Ok(MatchResult::PossibleMatch),
        "NO_MATCH" => Ok(MatchResult::NoMatch),
        "POSSIBLE_DUPLICATE" => Ok(MatchResult::PossibleDuplicate),
        other => {
            Err(invalid(format!("'{name}' is MATCH, POSSIBLE_MATCH, NO_MATCH or POSSIBLE_DUPLICATE, not '{other}'"))
                .at(name))
        }
    }
}

fn link_source(text: &str) -> Result<LinkSource, FhirError> {
    match text {
        "AUTO" => Ok(LinkSource::Auto),
        "MANUAL" => Ok(LinkSource::Manual),
        other => Err(invalid(format!("'linkSource' is AUTO or MANUAL, not '{other}'")).at("linkSource")),
    }
}

fn source_name(source: LinkSource) -> &'static str {
    match source {
        LinkSource::Auto => "AUTO",
        LinkSource::Manual => "MANUAL",
    }
}

/// A link as `$mdm-query-links` lists it (HAPI's parts, and the link's history).
fn describe_link(golden_id: &str, patient: &str, link: &Link) -> Value {
    let mut parts = vec![
        json!({"name": "goldenResourceId", "valueString": format!("Patient/{golden_id}")}),
        json!({"name": "sourceResourceId", "valueString": format!("Patient/{patient}")}),
        json!({"name": "matchResult", "valueString": result_name(link.result)}),
        json!({"name": "linkSource", "valueString": source_name(link.source)}),
    ];
    if let Some(score) = link.score {
        parts.push(json!({"name": "score", "valueDecimal": score}));
    }
    parts.push(json!({"name": "linkCreated", "valueDateTime": link.created}));
    parts.push(json!({"name": "linkUpdated", "valueDateTime": link.updated}));
    for event in &link.history {
        let mut history = vec![
            json!({"name": "matchResult", "valueString": result_name(event.result)}),
            json!({"name": "linkSource", "valueString": source_name(event.source)}),
            json!({"name": "until", "valueDateTime": event.at}),
        ];
        if let Some(score) = event.score {
            history.push(json!({"name": "score", "valueDecimal": score}));
        }
        if let Some(golden) = &event.golden {
            history.push(json!({"name": "goldenResourceId", "valueString": format!("Patient/{golden}")}));
        }
        parts.push(json!({"name": "history", "part": history}));
    }
    json!({"name": "link", "part": parts})
}

fn parameters(parameter: Vec<Value>) -> Value {
    json!({"resourceType": "Parameters", "parameter": parameter})
}

/// `POST /Patient/$match`
pub async fn match_patient(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    if ctx.params[0] != "Patient" {
        return Err(FhirError::new(
            Category::NotFound,
            IssueCode::NotSupported,
            format!("$match is an operation on Patient, not {}", ctx.params[0]),
        ));
    }
    let Ctx { http, payload, state, access, .. } = ctx;
    let arguments = Arguments::read(&http, payload, &state, &["resource", "onlyCertainMatches", "count"]).await?;
    require_reader(&access)?;
    let resource = arguments
        .values
        .get("resource")
        .and_then(|values| values.first())
        .filter(|value| value.is_object())
        .cloned()
        .ok_or_else(|| {
            FhirError::incorrect(IssueCode::Required, "$match needs a Patient resource (the 'resource' parameter)")
                .at("resource")
        })?;
    if resource.get("resourceType").and_then(Value::as_str) != Some("Patient") {
        return Err(invalid("the 'resource' of $match is a Patient").at("resource"));
    }
    let only_certain = arguments.flag("onlyCertainMatches")?;
    let count = arguments.number("count", DEFAULT_MATCH_COUNT, MAX_MATCH_COUNT)?;
    let base = request::base_url(&http, &state);
    let mpi = state.mpi.clone();
    let bundle = tokio::task::spawn_blocking(move || -> Result<Value, FhirError> {
        let matcher = mpi.matcher();
        let record = PersonRecord::from_patient(&resource);
        let thresholds = matcher.rules.thresholds;
        let floor = if only_certain { thresholds.matched } else { MIN_LISTED_PROBABILITY };
        let scored = mpi.read(|overlay| {
            let candidates = candidates(overlay, &keys(&matcher.rules.blocking, &record), None)?;
            Ok(matcher.best_per_golden(overlay, &record, &candidates, &BTreeSet::new(), floor)?)
        })?;
        let mut ranked: Vec<(String, f64)> = scored.into_iter().collect();
        ranked.sort_by(|(a, pa), (b, pb)| pb.total_cmp(pa).then_with(|| a.cmp(b)));
        ranked.truncate(count);
        let mut entries = Vec::with_capacity(ranked.len());
        for (golden_id, probability) in ranked {
            let Some(resource) = mpi.read(|overlay| Ok(overlay.golden(&golden_id)?))?.and_then(|stored| stored.body)
            else {
                continue;
            };
            let grade = if probability >= thresholds.matched {
                "certain"
            } else if probability >= thresholds.possible {
                "probable"
            } else {
                "possible"
            };
            entries.push(json!({
                "fullUrl": format!("{base}/Patient/{golden_id}"),
                "resource": resource,
                "search": {"mode": "match", "score": probability,
                    "extension": [{"url": MATCH_GRADE, "valueCode": grade}]},
            }));
        }
        Ok(json!({"resourceType": "Bundle", "id": uuid::Uuid::new_v4().to_string(),
            "meta": {"lastUpdated": crate::fhir::json::format_instant(crate::fhir::json::now_micros())},
            "type": "searchset", "total": entries.len(), "entry": entries}))
    })
    .await
    .map_err(|_| FhirError::fault("$match"))??;
    Ok(response::json(StatusCode::OK, &bundle))
}

/// `GET|POST /$mdm-query-links`
pub async fn query_links(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let known = ["goldenResourceId", "resourceId", "matchResult", "linkSource", "_offset", "_count"];
    let Ctx { http, payload, state, access, .. } = ctx;
    let arguments = Arguments::read(&http, payload, &state, &known).await?;
    require_reader(&access)?;
    let golden_id = arguments.patient("goldenResourceId")?;
    let patient = arguments.patient("resourceId")?;
    let result = arguments.text("matchResult")?.map(|text| match_result(&text, "matchResult")).transpose()?;
    let source = arguments.text("linkSource")?.map(|text| link_source(&text)).transpose()?;
    let offset = arguments.number("_offset", 0, MAX_OFFSET)?;
    let count = arguments.number("_count", DEFAULT_LINK_COUNT, MAX_LINK_COUNT)?;
    let mpi = state.mpi.clone();
    let (found, more) = tokio::task::spawn_blocking(move || {
        mpi.read(|overlay| {
            let wanted = |link: &Link| {
                result.is_none_or(|result| link.result == result) && source.is_none_or(|source| link.source == source)
            };
            let mut found: Vec<Value> = Vec::new();
            let mut skipped = 0;
            let mut more = false;
            let mut take = |golden_id: &str, patient: &str, link: &Link| {
                if !wanted(link) {
                    return true;
                }
                if skipped < offset {
                    skipped += 1;
                    return true;
                }
                if found.len() == count {
                    more = true;
                    return false;
                }
                found.push(describe_link(golden_id, patient, link));
                true
            };
            match (&patient, &golden_id) {
                (Some(patient), _) => {
                    for (golden, link) in overlay.links(patient, state::MAX_LINKS)? {
                        if golden_id.as_ref().is_none_or(|wanted| *wanted == golden) && !take(&golden, patient, &link) {
                            break;
                        }
                    }
                }
                (None, Some(golden_id)) => {
                    for member in overlay.members(golden_id, MAX_LINKS_SCANNED)? {
                        if let Some(link) = overlay.link(&member, golden_id)?
                            && !take(golden_id, &member, &link)
                        {
                            break;
                        }
                    }
                }
                (None, None) => {
                    let prefix: &[u8] = if result == Some(MatchResult::PossibleDuplicate) {
                        state::DUPLICATE_PREFIX
                    } else {
                        state::LINK_PREFIX
                    };
                    let mut after: Option<Vec<u8>> = None;
                    let mut scanned = 0;
                    'scan: while scanned < MAX_LINKS_SCANNED {
                        let page = mpi.store().mpi_read(|read| read.scan_after(prefix, after.as_deref(), 1_000))?;
                        let Some((last, _)) = page.last() else { break };
                        after = Some(last.clone());
                        for (key, value) in page {
                            scanned += 1;
                            let (Some((first, second)), Some(link)) =
                                (state::pair_of(&key, prefix), state::decode::<Link>(Some(value))?)
                            else {
                                continue;
                            };
                            // A link is keyed patient first; a possible duplicate, by two goldens.
                            let (golden, other) =
                                if prefix == state::LINK_PREFIX { (second, first) } else { (first, second) };
                            if !take(&golden, &other, &link) {
                                break 'scan;
                            }
                        }
                    }
                }
            }
            Ok((found, more))
        })
    })
    .await
    .map_err(|_| FhirError::fault("$mdm-query-links"))??;
    let mut parameter = Vec::new();
    if more {
        parameter.push(json!({"name": "next", "valueInteger": offset + count}));
    }
    parameter.extend(found);
    Ok(response::json(StatusCode::OK, &parameters(parameter)))
}

/// The golden Patient `id` as it now stands, or an informational outcome when it is gone.
fn golden_answer(state: &AppState, id: &str) -> Result<HttpResponse, FhirError> {
    match state.mpi.golden(id)?.filter(|version| !version.is_deleted()) {
        Some(version) => Ok(response::resource(version)),
        None => Ok(response::json(
            StatusCode::OK,
            &json!({"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational",
                "diagnostics": format!("Patient/{id} has no MATCH member left and was deleted")}]}),
        )),
    }
}

fn now() -> String {
    crate::fhir::json::format_instant(crate::fhir::json::now_micros())
}

/// `POST /$mdm-update-link` and `POST /$mdm-create-link`
async fn set_link(ctx: Ctx, create: bool) -> Result<HttpResponse, FhirError> {
    let Ctx { http, payload, state, access, .. } = ctx;
    let arguments = Arguments::read(&http, payload, &state, &["goldenResourceId", "resourceId", "matchResult"]).await?;
    require_operator(&access)?;
    let golden_id = arguments.required_patient("goldenResourceId")?;
    let patient = arguments.required_patient("resourceId")?;
    let result = match_result(&arguments.required("matchResult")?, "matchResult")?;
    let answer_id = golden_id.clone();
    state
        .mpi
        .change(move |overlay, _, matcher, touched| {
            let now = now();
            if create {
                links::create_link(overlay, matcher, &golden_id, &patient, result, &now, touched)
            } else {
                links::update_link(overlay, matcher, &golden_id, &patient, result, &now, touched)
            }
        })
        .await?;
    golden_answer(&state, &answer_id)
}

pub async fn update_link(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    set_link(ctx, false).await
}

pub async fn create_link(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    set_link(ctx, true).await
}

/// `POST /$mdm-merge-golden-resources`
pub async fn merge(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, payload, state, access, .. } = ctx;
    let arguments = Arguments::read(&http, payload, &state, &["fromGoldenResourceId", "toGoldenResourceId"]).await?;
    require_operator(&access)?;
    let from = arguments.required_patient("fromGoldenResourceId")?;
    let to = arguments.required_patient("toGoldenResourceId")?;
    let answer_id = to.clone();
    state.mpi.change(move |overlay, _, _, touched| links::merge(overlay, &from, &to, &now(), touched)).await?;
    golden_answer(&state, &answer_id)
}

/// `POST /$mdm-not-duplicate`
pub async fn not_duplicate(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, payload, state, access, .. } = ctx;
    let arguments = Arguments::read(&http, payload, &state, &["goldenResourceId", "targetGoldenResourceId"]).await?;
    require_operator(&access)?;
    let a = arguments.required_patient("goldenResourceId")?;
    let b = arguments.required_patient("targetGoldenResourceId")?;
    state.mpi.change(move |overlay, _, _, _| links::not_duplicate(overlay, &a, &b, &now())).await?;
    Ok(response::json(StatusCode::OK, &parameters(vec![json!({"name": "success", "valueBoolean": true})])))
}

/// `POST /$mdm-unmerge`
pub async fn unmerge(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, payload, state, access, .. } = ctx;
    let arguments = Arguments::read(&http, payload, &state, &["goldenResourceId", "resourceId"]).await?;
    require_operator(&access)?;
    let golden_id = arguments.required_patient("goldenResourceId")?;
    let patients = arguments.patients("resourceId")?;
    let Unmerged { goldens, moved } = state
        .mpi
        .change(move |overlay, _, _, touched| links::unmerge(overlay, &golden_id, &patients, &now(), touched))
        .await?;
    let mut parameter: Vec<Value> =
        goldens.iter().map(|id| json!({"name": "goldenResourceId", "valueString": format!("Patient/{id}")})).collect();
    parameter.extend(moved.iter().map(|id| json!({"name": "resourceId", "valueString": format!("Patient/{id}")})));
    Ok(response::json(StatusCode::OK, &parameters(parameter)))
}

/// `GET /mpi`: how far matching is behind the store, and what the worker has done, for the
/// operator (a token that reads every resource; anyone when authorization is off).
pub async fn status(http: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    match super::source::viewer(&http, &state) {
        Ok(super::source::Viewer::Operator) => match state.mpi.status() {
            Ok(status) => HttpResponse::Ok().json(status),
            Err(error) => super::error::error_response(&error),
        },
        Ok(super::source::Viewer::Source(_)) => {
            super::error::error_response(&forbidden("the index's status is shown to a token that reads every resource"))
        }
        Err(refusal) => *refusal,
    }
}
