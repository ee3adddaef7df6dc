//! Content negotiation: Braid reads and writes FHIR JSON only.
//!
//! A request that accepts only other formats (`Accept: application/fhir+xml`, `_format=xml`)
//! gets 406 before any handler runs. A client that asks for `application/json` gets that media
//! type on the response; everyone else gets `application/fhir+json`.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use actix_web::middleware::Next;

use super::error::error_response;
use crate::fhir::{Category, FhirError, IssueCode};

#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    FhirJson,
    PlainJson,
    Unsupported(String),
}

pub async fn content_negotiation(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let format_param = request
        .query_string()
        .split('&')
        .find_map(|pair| pair.strip_prefix("_format="))
        .map(|v| percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned());
    let accept = request.headers().get(ACCEPT).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let wanted = match &format_param {
        Some(format) => from_format_param(format),
        // Bulk Data export files are NDJSON, and clients may ask for just that.
        None if request.path().contains("/$export-file/") && accepts_ndjson(accept.as_deref().unwrap_or("")) => {
            Wanted::FhirJson
        }
        None => from_accept(accept.as_deref().unwrap_or("")),
    };
    match wanted {
        Wanted::Unsupported(what) => {
            let error = FhirError::new(
                Category::NotAcceptable,
                IssueCode::NotSupported,
                format!("this server produces FHIR JSON only (application/fhir+json or application/json), not {what}"),
            );
            Ok(request.into_response(error_response(&error)))
        }
        Wanted::PlainJson => {
            let mut response = next.call(request).await?.map_into_boxed_body();
            let is_fhir_json = response
                .headers()
                .get(CONTENT_TYPE)
                .is_some_and(|v| v.as_bytes().starts_with(b"application/fhir+json"));
            if is_fhir_json {
                response
                    .headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
            }
            Ok(response)
        }
        Wanted::FhirJson => Ok(next.call(request).await?.map_into_boxed_body()),
    }
}

fn from_format_param(format: &str) -> Wanted {
    let media = format.split(';').next().unwrap_or("").trim();
    match media {
        "json" | "application/fhir+json" | "application/json+fhir" => Wanted::FhirJson,
        "application/json" => Wanted::PlainJson,
        other => Wanted::Unsupported(format!("_format={other}")),
    }
}

/// Whether `accept` names an NDJSON media type.
fn accepts_ndjson(accept: &str) -> bool {
    accept.split(',').map(|range| range.split(';').next().unwrap_or("").trim()).any(super::export::is_ndjson)
}

fn from_accept(accept: &str) -> Wanted {
    let ranges: Vec<&str> = accept
        .split(',')
        .map(|range| range.split(';').next().unwrap_or("").trim())
        .filter(|range| !range.is_empty())
        .collect();
    if ranges.is_empty() {
        return Wanted::FhirJson;
    }
    let fhir = ranges
        .iter()
        .any(|r| matches!(*r, "application/fhir+json" | "application/json+fhir" | "*/*" | "application/*"));
    if fhir {
        return Wanted::FhirJson;
    }
    if ranges.contains(&"application/json") {
        return Wanted::PlainJson;
    }
    Wanted::Unsupported(format!("Accept: {}", ranges.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_headers_choose_the_response_type() {
        assert_eq!(from_accept(""), Wanted::FhirJson);
        assert_eq!(from_accept("application/fhir+json"), Wanted::FhirJson);
        assert_eq!(from_accept("application/json"), Wanted::PlainJson);
        assert_eq!(from_accept("text/html,application/xml;q=0.9,*/*;q=0.8"), Wanted::FhirJson);
        assert!(matches!(from_accept("application/fhir+xml"), Wanted::Unsupported(_)));
        assert_eq!(from_format_param("json"), Wanted::FhirJson);
        assert!(matches!(from_format_param("xml"), Wanted::Unsupported(_)));
    }
}
