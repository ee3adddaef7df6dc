//! `POST /fhir/{type}/$validate`: checks a resource exactly as a write would, without writing.
//!
//! The body is the resource itself or a Parameters resource with a `resource` parameter. The
//! answer is 200 with an OperationOutcome: the issues found, or one informational issue when
//! there are none. Only a body that cannot be read at all gets an error status.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde_json::Value;

use super::{Ctx, request, response};
use crate::fhir::error::operation_outcome;
use crate::fhir::json::resource_type_of;
use crate::fhir::validation::validator;
use crate::fhir::{FhirError, Issue, IssueCode};

pub async fn handle(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, params, payload } = ctx;
    let resource_type = request::resource_type(&params[0])?;
    let body = request::read_body(&http, payload, &state.limits).await?;
    let mut value = request::json_body(&body, &state.limits)?;
    if resource_type_of(&value)?.as_str() == "Parameters" && resource_type.as_str() != "Parameters" {
        value = value
            .get("parameter")
            .and_then(Value::as_array)
            .and_then(|parameters| {
                parameters
                    .iter()
                    .find(|p| p.get("name").and_then(Value::as_str) == Some("resource"))
                    .and_then(|p| p.get("resource").cloned())
            })
            .ok_or_else(|| {
                FhirError::incorrect(IssueCode::Required, "the Parameters resource has no 'resource' parameter")
                    .at("Parameters.parameter")
            })?;
    }
    let actual = resource_type_of(&value)?;
    if actual != resource_type {
        return Err(FhirError::incorrect(
            IssueCode::Invalid,
            format!("the body is a {actual} but the URL addresses {resource_type}"),
        ));
    }
    let outcome = match validator().validate_value(resource_type, &value) {
        Ok(warnings) if warnings.is_empty() => {
            operation_outcome(&[Issue::information(format!("the {resource_type} is valid"))])
        }
        Ok(warnings) => operation_outcome(&warnings),
        Err(error) => error.to_operation_outcome(),
    };
    Ok(response::json(StatusCode::OK, &outcome))
}
