//! Every error leaves Braid as an OperationOutcome with the status of its category.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use super::response::FHIR_JSON;
use crate::fhir::FhirError;

impl ResponseError for FhirError {
    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn error_response(&self) -> HttpResponse {
        error_response(self)
    }
}

pub fn error_response(error: &FhirError) -> HttpResponse {
    let status = StatusCode::from_u16(error.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status)
        .content_type(FHIR_JSON)
        .body(serde_json::to_vec(&error.to_operation_outcome()).unwrap_or_default())
}
