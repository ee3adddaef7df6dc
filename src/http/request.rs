//! Reading what the client sent: bodies (with size, depth and media-type limits), path
//! segments, conditional headers, `Prefer`, query parameters and the base URL.

use std::collections::HashMap;

use actix_web::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use actix_web::web::{Bytes, BytesMut, Payload};
use actix_web::{HttpRequest, web};
use futures_util::StreamExt;
use serde_json::Value;

use super::{AppState, Limits};
use crate::auth::Access;
use crate::fhir::json::parse_instant;
use crate::fhir::{Category, FhirError, Id, IssueCode, ResourceType};
use crate::store::{Criteria, Precondition};

/// Reads the whole request body, refusing more than `limits.max_body_bytes` (413), more JSON
/// values than `limits.max_json_values` (413), a body that does not arrive within
/// `limits.body_read_timeout` (408) and media types other than JSON (415; PATCH also takes
/// `application/json-patch+json`). A missing
/// `Content-Type` is taken to be FHIR JSON.
pub async fn read_body(request: &HttpRequest, payload: Payload, limits: &Limits) -> Result<Bytes, FhirError> {
    if let Some(content_type) = request.headers().get(CONTENT_TYPE) {
        let media = content_type.to_str().unwrap_or("").split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        let json_patch = media == "application/json-patch+json" && request.method() == actix_web::http::Method::PATCH;
        if !json_patch
            && !matches!(media.as_str(), "application/fhir+json" | "application/json" | "application/json+fhir")
        {
            return Err(FhirError::new(
                Category::UnsupportedMediaType,
                IssueCode::NotSupported,
                format!("request bodies must be FHIR JSON (application/fhir+json), not '{media}'"),
            ));
        }
    }
    let body = read_limited(request, payload, limits).await?;
    if body.is_empty() {
        return Err(FhirError::incorrect(IssueCode::Required, "the request has no body"));
    }
    crate::fhir::json::check_value_count(&body, limits.max_json_values)?;
    Ok(body)
}

/// The buffer reserved up front for a body; beyond it the buffer grows with what actually
/// arrives, so a client announcing a large `Content-Length` and sending little costs little.
const INITIAL_BODY_CAPACITY: usize = 64 << 10;

/// The buffer to reserve for a body whose `Content-Length` is `declared`: the client's word
/// is trusted only up to [`INITIAL_BODY_CAPACITY`].
fn initial_capacity(declared: Option<usize>) -> usize {
    declared.unwrap_or(0).min(INITIAL_BODY_CAPACITY)
}

/// Reads the raw body, in whatever format: at most `limits.max_body_bytes` (413), all of it
/// within `limits.body_read_timeout` from the first read (408, and the connection is closed,
/// since the rest of the body is never read).
pub async fn read_limited(request: &HttpRequest, payload: Payload, limits: &Limits) -> Result<Bytes, FhirError> {
    let deadline = tokio::time::Instant::now() + limits.body_read_timeout;
    let seconds = limits.body_read_timeout.as_secs_f64();
    let bounds = BodyBounds {
        max_bytes: limits.max_body_bytes as u64,
        too_large: format!("the request body exceeds the limit of {} bytes", limits.max_body_bytes),
        deadline: &|_| deadline,
        too_slow: &|received| {
            format!("the request body did not arrive within {seconds} seconds ({received} bytes received)")
        },
    };
    let declared =
        request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    let mut body = BytesMut::with_capacity(initial_capacity(declared));
    stream_body(request, payload, &bounds, async |chunk: Bytes| {
        body.extend_from_slice(&chunk);
        Ok(())
    })
    .await?;
    Ok(body.freeze())
}

/// What a streamed body must keep to: its size and when it must have arrived.
pub struct BodyBounds<'a> {
    /// Most bytes; a larger body (by its `Content-Length`, or as it arrives) is a 413 saying
    /// `too_large`.
    pub max_bytes: u64,
    pub too_large: String,
    /// When the rest of the body must have arrived, given the bytes received so far.
    pub deadline: &'a dyn Fn(u64) -> tokio::time::Instant,
    /// The 408's message, given the bytes received so far.
    pub too_slow: &'a dyn Fn(u64) -> String,
}

/// Streams the request body into `sink`, chunk by chunk, within `bounds`; returns the number
/// of bytes read. Nothing past a bound is read (the connection is then closed).
pub async fn stream_body(
    request: &HttpRequest,
    mut payload: Payload,
    bounds: &BodyBounds<'_>,
    mut sink: impl AsyncFnMut(Bytes) -> Result<(), FhirError>,
) -> Result<u64, FhirError> {
    let too_large = || FhirError::new(Category::TooLarge, IssueCode::TooLong, bounds.too_large.clone());
    let declared =
        request.headers().get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > bounds.max_bytes) {
        return Err(too_large());
    }
    let mut received: u64 = 0;
    loop {
        let next = tokio::time::timeout_at((bounds.deadline)(received), payload.next())
            .await
            .map_err(|_| FhirError::new(Category::Timeout, IssueCode::Transient, (bounds.too_slow)(received)))?;
        let Some(chunk) = next else { break };
        let chunk =
            chunk.map_err(|e| FhirError::incorrect(IssueCode::Structure, format!("reading the body failed: {e}")))?;
        received += chunk.len() as u64;
        if received > bounds.max_bytes {
            return Err(too_large());
        }
        sink(chunk).await?;
    }
    Ok(received)
}

/// Parses a JSON body within the depth limit and checks the length of its strings.
pub fn json_body(bytes: &[u8], limits: &Limits) -> Result<Value, FhirError> {
    let value = crate::fhir::json::parse_json(bytes, limits.max_json_depth)?;
    crate::fhir::json::check_string_lengths(&value, limits.max_string_bytes)?;
    Ok(value)
}

/// Parses a body that must hold a resource of type `expected` (the type in the URL).
pub fn resource_body(bytes: &[u8], expected: ResourceType, limits: &Limits) -> Result<Value, FhirError> {
    let value = json_body(bytes, limits)?;
    let actual = crate::fhir::json::resource_type_of(&value)?;
    if actual != expected {
        return Err(FhirError::incorrect(
            IssueCode::Invalid,
            format!("the body is a {actual} but the URL addresses {expected}"),
        )
        .at("resourceType"));
    }
    Ok(value)
}

/// The resource type in a URL; unknown types are 404.
pub fn resource_type(name: &str) -> Result<ResourceType, FhirError> {
    ResourceType::parse(name)
        .ok_or_else(|| FhirError::not_found(format!("'{name}' is not a resource type this server knows")))
}

pub fn id(text: &str) -> Result<Id, FhirError> {
    Id::parse(text)
}

pub fn version_id(text: &str) -> Result<u64, FhirError> {
    text.parse::<u64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| FhirError::not_found(format!("'{text}' is not a version of this resource")))
}

/// `If-Match` and `If-None-Match` as a store precondition. Braid's ETags are `W/"<version>"`.
pub fn precondition(request: &HttpRequest) -> Result<Precondition, FhirError> {
    let if_match = match request.headers().get("if-match") {
        None => None,
        Some(value) => {
            let text = value.to_str().unwrap_or("");
            Some(parse_etag(text).ok_or_else(|| {
                FhirError::incorrect(
                    IssueCode::Invalid,
                    format!("If-Match must be an ETag such as W/\"3\", not '{text}'"),
                )
            })?)
        }
    };
    let if_none_match_any = match request.headers().get("if-none-match") {
        None => false,
        Some(value) if value.to_str().map(str::trim).ok() == Some("*") => true,
        Some(_) => {
            return Err(FhirError::incorrect(
                IssueCode::NotSupported,
                "on writes, If-None-Match supports only '*' (create only if absent)",
            ));
        }
    };
    Ok(Precondition { if_match, if_none_match_any })
}

pub fn parse_etag(text: &str) -> Option<u64> {
    let text = text.trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    text.trim_matches('"').parse().ok()
}

/// The `return` preference of the `Prefer` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Return {
    Minimal,
    Representation,
    OperationOutcome,
}

pub fn return_preference(request: &HttpRequest) -> Return {
    for part in preferences(request) {
        match part.as_str() {
            "return=minimal" => return Return::Minimal,
            "return=OperationOutcome" => return Return::OperationOutcome,
            "return=representation" => return Return::Representation,
            _ => {}
        }
    }
    Return::Representation
}

/// The parts of the request's `Prefer` headers, in order (`respond-async`, `return=minimal`,
/// `handling=strict`: split at commas and at the semicolons of preference parameters, trimmed).
pub fn preferences(request: &HttpRequest) -> Vec<String> {
    request
        .headers()
        .get_all("prefer")
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split([',', ';']).map(|part| part.trim().to_owned()))
        .collect()
}

/// Whether the request's `Prefer` headers ask for `preference` (compared without regard to
/// case).
pub fn prefers(request: &HttpRequest, preference: &str) -> bool {
    preferences(request).iter().any(|part| part.eq_ignore_ascii_case(preference))
}

/// The base URL of the FHIR API as clients should see it, e.g. `http://127.0.0.1:8080/fhir`.
///
/// The configured `base_url` wins. Otherwise the request's `Host` (the URI's authority in
/// HTTP/2) and the connection's own scheme are used; `Forwarded` and `X-Forwarded-*` headers
/// only when the operator trusts them, since any client can send them. A host that is not a
/// plain `host[:port]` is replaced by the address Braid listens on, so a forged header can
/// never put a path, query or markup into links.
pub fn base_url(request: &HttpRequest, state: &web::Data<AppState>) -> String {
    if let Some(base) = &state.base_url {
        return base.clone();
    }
    let listen_address = || request.app_config().local_addr().to_string();
    let (scheme, host) = if state.trust_forwarded_headers {
        let info = request.connection_info();
        (info.scheme().to_owned(), info.host().to_owned())
    } else {
        let scheme = if request.app_config().secure() { "https" } else { "http" };
        let host = request
            .headers()
            .get(actix_web::http::header::HOST)
            .and_then(|host| host.to_str().ok())
            .or_else(|| request.uri().authority().map(|authority| authority.as_str()))
            .map(str::to_owned)
            .unwrap_or_else(listen_address);
        (scheme.to_owned(), host)
    };
    let scheme = if matches!(scheme.as_str(), "http" | "https") { scheme } else { "http".to_owned() };
    let host = if is_authority(&host) { host } else { listen_address() };
    format!("{scheme}://{host}/fhir")
}

/// Whether `text` is a bare `host[:port]`: a DNS name, IPv4 or bracketed IPv6 address and an
/// optional port, nothing else.
fn is_authority(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 255
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// `_count`: a page size, reduced to the configured maximum.
pub fn page_count(value: &str, limits: &Limits) -> Result<usize, FhirError> {
    let count: usize = value.parse().map_err(|_| {
        FhirError::incorrect(IssueCode::Invalid, format!("_count must be a non-negative integer, not '{value}'"))
    })?;
    Ok(count.min(limits.max_page_size))
}

/// `_type`: a comma-separated list of resource types.
pub fn resource_types(value: &str) -> Result<Vec<ResourceType>, FhirError> {
    value.split(',').map(|t| resource_type(t.trim())).collect()
}

/// The query parameters, percent-decoded, in order.
pub fn query_pairs(request: &HttpRequest) -> Vec<(String, String)> {
    decode_pairs(request.query_string())
}

/// `a=1&b=x%20y` (a query string or a form body) as decoded pairs, in order.
pub fn decode_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let decode =
                |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
            (decode(name), decode(value))
        })
        .collect()
}

/// `_since` (history, `$export`), in microseconds since the epoch: an instant, or a date for
/// its first moment in UTC. A `+` of a time zone that the client did not escape arrives as a
/// space (form decoding); a space has no place in an instant, so it is read as the `+` it was.
pub fn since_param(value: &str) -> Result<i64, FhirError> {
    parse_instant(&value.replace(' ', "+")).ok_or_else(|| {
        FhirError::incorrect(
            IssueCode::Invalid,
            format!(
                "_since must be an instant such as 2024-01-31T12:00:00Z (a time needs its zone), or a date such \
                 as 2024-01-31 for its first moment in UTC; not '{value}'"
            ),
        )
    })
}

/// The query string minus the parameters that steer the response rather than select
/// resources (`_format`, `_pretty`), for conditional interactions.
pub fn criteria_query(request: &HttpRequest) -> String {
    request
        .query_string()
        .split('&')
        .filter(|pair| !pair.is_empty() && !pair.starts_with("_format=") && !pair.starts_with("_pretty="))
        .collect::<Vec<_>>()
        .join("&")
}

/// Finds every conditional reference (`Patient?identifier=x|1`) in `value` and parses its
/// criteria, so the writer can resolve it inside the transaction. The criteria match only what
/// `access` may search (`base` is the server's, for the token's limits).
pub fn conditional_references(
    value: &mut Value,
    access: &Access,
    base: &str,
) -> Result<HashMap<String, (ResourceType, Criteria)>, FhirError> {
    crate::search::conditional_references(value, &mut |resource_type, query| {
        super::access::criteria(access, resource_type, query, base)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_announced_length_reserves_at_most_a_small_buffer() {
        assert_eq!(initial_capacity(None), 0);
        assert_eq!(initial_capacity(Some(1000)), 1000);
        assert_eq!(initial_capacity(Some(16 << 20)), INITIAL_BODY_CAPACITY);
    }

    #[test]
    fn only_bare_authorities_are_hosts() {
        assert!(is_authority("fhir.example.org"));
        assert!(is_authority("127.0.0.1:8080"));
        assert!(is_authority("[::1]:8080"));
        for bad in ["", "evil.example/x", "a b", "host?q=1", "user@host", "<script>", "h#f"] {
            assert!(!is_authority(bad), "{bad:?}");
        }
    }

    #[test]
    fn etags_parse_weak_and_strong() {
        assert_eq!(parse_etag("W/\"3\""), Some(3));
        assert_eq!(parse_etag("\"12\""), Some(12));
        assert_eq!(parse_etag("W/\"x\""), None);
    }
}
