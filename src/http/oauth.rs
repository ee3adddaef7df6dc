//! The authorization server's HTTP endpoints: the SMART and OpenID discovery documents, the
//! JWKS of Braid's signing keys, and the token endpoint. The logic is in [`crate::auth`]; this
//! file reads requests and writes OAuth-shaped responses (JSON errors as RFC 6749 §5.2 has them,
//! not OperationOutcomes).
//!
//! Every response here may be read by browser apps on other origins (`Access-Control-Allow-
//! Origin: *`): none depends on cookies, and the token endpoint authenticates clients by what
//! they send.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use serde_json::json;

use super::{AppState, request};
use crate::auth::{Endpoints, TokenError, TokenForm};

/// Largest token request body read, in bytes.
const MAX_TOKEN_FORM_BYTES: usize = 64 * 1024;

/// Registers the discovery documents (ahead of the `/fhir` scope, which would otherwise take
/// them) and the `/auth` endpoints. Without an authorization server (`--auth off`) they answer
/// 404, as a server without SMART would.
pub fn configure(config: &mut web::ServiceConfig) {
    config
        .route("/fhir/.well-known/smart-configuration", web::get().to(smart_configuration))
        .route("/fhir/.well-known/openid-configuration", web::get().to(openid_configuration))
        .route("/auth/jwks", web::get().to(jwks))
        .route("/auth/token", web::post().to(token))
        .route("/auth/token", web::method(actix_web::http::Method::OPTIONS).to(preflight))
        .route("/auth/revoke", web::post().to(revoke))
        .route("/auth/revoke", web::method(actix_web::http::Method::OPTIONS).to(preflight))
        .route("/auth/register", web::post().to(register))
        .route("/auth/register", web::method(actix_web::http::Method::OPTIONS).to(preflight))
        .route("/auth/introspect", web::post().to(introspect))
        .route("/auth/introspect", web::method(actix_web::http::Method::OPTIONS).to(preflight))
        .route("/auth/grants", web::get().to(own_grants))
        .route("/auth/grants/{id}", web::delete().to(revoke_own_grant));
    super::authorize::configure(config);
}

/// The 404 a server without an authorization server gives.
fn auth_off() -> HttpResponse {
    cors(
        HttpResponse::NotFound()
            .json(json!({"error": "not_found", "error_description": "authorization is off on this server"})),
    )
}

fn endpoints(http: &HttpRequest, state: &web::Data<AppState>) -> Endpoints {
    Endpoints::for_base(&request::base_url(http, state))
}

fn cors(mut response: HttpResponse) -> HttpResponse {
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

async fn preflight() -> HttpResponse {
    let mut response = cors(HttpResponse::NoContent().finish());
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, OPTIONS"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("authorization, content-type"));
    headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    response
}

/// The scopes advertised in the discovery document (a client may ask for any other scope the
/// grammar allows).
const SCOPES_SUPPORTED: &[&str] = &[
    "openid",
    "fhirUser",
    "launch",
    "launch/patient",
    "offline_access",
    "online_access",
    "patient/*.cruds",
    "patient/*.rs",
    "patient/*.read",
    "user/*.cruds",
    "user/*.rs",
    "user/*.read",
    "system/*.cruds",
    "system/*.rs",
    "system/*.read",
];

/// `GET /fhir/.well-known/smart-configuration` (SMART App Launch 2.2 §"Conformance").
async fn smart_configuration(http: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    discovery(&http, &state, |document| {
        document["code_challenge_methods_supported"] = json!(["S256"]);
        document["capabilities"] = json!([
            "launch-ehr",
            "launch-standalone",
            "authorize-post",
            "client-public",
            "client-confidential-symmetric",
            "client-confidential-asymmetric",
            "context-passthrough-banner",
            "context-ehr-patient",
            "context-standalone-patient",
            "permission-offline",
            "permission-online",
            "permission-patient",
            "permission-user",
            "permission-v1",
            "permission-v2",
            "sso-openid-connect"
        ]);
    })
}

/// `GET /fhir/.well-known/openid-configuration`: what OpenID Connect clients discover from.
async fn openid_configuration(http: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    discovery(&http, &state, |document| {
        document["subject_types_supported"] = json!(["public"]);
        document["id_token_signing_alg_values_supported"] = json!(["RS256"]);
    })
}

/// A discovery document: the fields the SMART and OpenID documents share, then `add`'s own.
fn discovery(
    http: &HttpRequest,
    state: &web::Data<AppState>,
    add: impl FnOnce(&mut serde_json::Value),
) -> HttpResponse {
    if state.auth.is_none() {
        return auth_off();
    }
    let endpoints = endpoints(http, state);
    let origin = endpoints.origin();
    let mut document = json!({
        "issuer": endpoints.fhir_base,
        "jwks_uri": format!("{origin}/auth/jwks"),
        "token_endpoint": endpoints.token,
        "authorization_endpoint": format!("{origin}/auth/authorize"),
        "revocation_endpoint": format!("{origin}/auth/revoke"),
        "registration_endpoint": format!("{origin}/auth/register"),
        "introspection_endpoint": format!("{origin}/auth/introspect"),
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "none"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": SCOPES_SUPPORTED,
        "response_types_supported": ["code"],
    });
    add(&mut document);
    cors(HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "max-age=3600")).json(document))
}

/// `GET /auth/jwks`: the public keys Braid's tokens verify with (retired keys included until
/// the tokens they signed have expired).
async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    let Some(auth) = state.auth.as_deref() else { return auth_off() };
    let set = auth.keys().jwks(crate::auth::now_secs());
    cors(HttpResponse::Ok().insert_header((header::CACHE_CONTROL, "max-age=300")).json(set))
}

/// `POST /auth/token` (RFC 6749 §3.2).
async fn token(http: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    let Some(auth) = state.auth.as_deref() else { return auth_off() };
    let result = async {
        let form = read_form(&http, &body)?;
        let basic = basic_credentials(&http)?;
        auth.token(&form, basic, &endpoints(&http, &state)).await
    }
    .await;
    let response = match result {
        Ok(token) => HttpResponse::Ok().json(token),
        Err(error) => token_error(&error),
    };
    no_store(cors(response))
}

/// `POST /auth/register` (RFC 7591): 201 with the client's information.
async fn register(http: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    let Some(auth) = state.auth.as_deref() else { return auth_off() };
    let result = async {
        if body.len() > crate::auth::registration::MAX_REQUEST_BYTES {
            return Err(TokenError {
                error: "invalid_client_metadata",
                ..TokenError::invalid_request("the request is too large")
            });
        }
        let metadata: crate::auth::registration::Metadata =
            serde_json::from_slice(&body).map_err(|error| TokenError {
                error: "invalid_client_metadata",
                ..TokenError::invalid_request(format!("the client metadata is not valid JSON: {error}"))
            })?;
        let authorization = http.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
        let bearer = authorization
            .split_once(' ')
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let address = if state.trust_forwarded_headers {
            http.connection_info().realip_remote_addr().unwrap_or("unknown").to_owned()
        } else {
            http.peer_addr().map_or_else(|| "unknown".to_owned(), |address| address.ip().to_string())
        };
        auth.register(metadata, bearer, &address).await
    }
    .await;
    let response = match result {
        Ok(answer) => HttpResponse::Created().json(answer),
        Err(error) => token_error(&error),
    };
    no_store(cors(response))
}

/// `POST /auth/revoke` (RFC 7009): 200 with an empty body, whether or not the token was known.
async fn revoke(http: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    let Some(auth) = state.auth.as_deref() else { return auth_off() };
    let result = async {
        let (form, token) = read_form_with_token(&http, &body)?;
        let basic = basic_credentials(&http)?;
        auth.revoke(&token, &form, basic, &endpoints(&http, &state)).await
    }
    .await;
    let response = match result {
        Ok(()) => HttpResponse::Ok().finish(),
        Err(error) => token_error(&error),
    };
    no_store(cors(response))
}

/// `POST /auth/introspect` (RFC 7662), for confidential clients, or with a bearer token of the
/// same client as the token asked about.
async fn introspect(http: HttpRequest, body: web::Bytes, state: web::Data<AppState>) -> HttpResponse {
    let Some(auth) = state.auth.as_deref() else { return auth_off() };
    let result = async {
        let (form, token) = read_form_with_token(&http, &body)?;
        let authorization = http.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("");
        let bearer = authorization.split_once(' ').filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"));
        let basic = if bearer.is_some() { None } else { basic_credentials(&http)? };
        auth.introspect(&token, &form, basic, bearer.map(|(_, token)| token.trim()), &endpoints(&http, &state)).await
    }
    .await;
    let response = match result {
        Ok(answer) => HttpResponse::Ok().json(answer),
        Err(error) => token_error(&error),
    };
    no_store(cors(response))
}

fn no_store(mut response: HttpResponse) -> HttpResponse {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// The form of a revocation or introspection request and its `token`.
fn read_form_with_token(http: &HttpRequest, body: &[u8]) -> Result<(TokenForm, String), TokenError> {
    let form = read_form(http, body)?;
    let token = form_urlencoded_pairs(body)?
        .into_iter()
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value)
        .ok_or_else(|| TokenError::invalid_request("token is required"))?;
    Ok((form, token))
}

/// The form of a token request: `application/x-www-form-urlencoded`, each field at most once.
fn read_form(http: &HttpRequest, body: &[u8]) -> Result<TokenForm, TokenError> {
    let content_type = http.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(TokenError::invalid_request("the token request must be an application/x-www-form-urlencoded form"));
    }
    if body.len() > MAX_TOKEN_FORM_BYTES {
        return Err(TokenError::invalid_request(format!(
            "the token request is larger than {MAX_TOKEN_FORM_BYTES} bytes"
        )));
    }
    let mut form = TokenForm::default();
    for (name, value) in form_urlencoded_pairs(body)? {
        let slot = match name.as_str() {
            "grant_type" => &mut form.grant_type,
            "scope" => &mut form.scope,
            "client_id" => &mut form.client_id,
            "client_assertion_type" => &mut form.client_assertion_type,
            "client_assertion" => &mut form.client_assertion,
            "code" => &mut form.code,
            "redirect_uri" => &mut form.redirect_uri,
            "code_verifier" => &mut form.code_verifier,
            "refresh_token" => &mut form.refresh_token,
            // Other parameters belong to grants or extensions Braid does not use: ignored, as
            // RFC 6749 §3.2 asks.
            _ => continue,
        };
        if slot.is_some() {
            return Err(TokenError::invalid_request(format!("{name} is given more than once")));
        }
        *slot = Some(value);
    }
    Ok(form)
}

/// Decodes `a=b&c=d` (`+` as space, percent escapes), refusing invalid UTF-8.
pub(super) fn form_urlencoded_pairs(body: &[u8]) -> Result<Vec<(String, String)>, TokenError> {
    let text = std::str::from_utf8(body).map_err(|_| TokenError::invalid_request("the form is not UTF-8"))?;
    let decode = |part: &str| {
        percent_encoding::percent_decode_str(&part.replace('+', " "))
            .decode_utf8()
            .map(|decoded| decoded.into_owned())
            .map_err(|_| TokenError::invalid_request("the form is not UTF-8"))
    };
    text.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

/// The client id and secret of an `Authorization: Basic` header (RFC 6749 §2.3.1: each
/// form-urlencoded before base64).
fn basic_credentials(http: &HttpRequest) -> Result<Option<(String, String)>, TokenError> {
    let Some(value) = http.headers().get(header::AUTHORIZATION) else { return Ok(None) };
    let invalid = || TokenError {
        status: 401,
        basic_challenge: true,
        ..TokenError::invalid_client("malformed Basic credentials")
    };
    let value = value.to_str().map_err(|_| invalid())?;
    let Some((scheme, encoded)) = value.split_once(' ') else { return Err(invalid()) };
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(invalid());
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).map_err(|_| invalid())?;
    let decoded = String::from_utf8(decoded).map_err(|_| invalid())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(invalid)?;
    let unescape = |text: &str| {
        percent_encoding::percent_decode_str(&text.replace('+', " ")).decode_utf8().map(|t| t.into_owned())
    };
    Ok(Some((unescape(id).map_err(|_| invalid())?, unescape(secret).map_err(|_| invalid())?)))
}

fn token_error(error: &TokenError) -> HttpResponse {
    let status = StatusCode::from_u16(error.status).unwrap_or(StatusCode::BAD_REQUEST);
    let mut response = HttpResponse::build(status);
    if error.basic_challenge && status == StatusCode::UNAUTHORIZED {
        response.insert_header((header::WWW_AUTHENTICATE, "Basic realm=\"braid\""));
    }
    response.json(json!({"error": error.error, "error_description": error.description}))
}

/// The user behind a request to the account endpoints: a valid token of the patient portal
/// issued to a user. Other apps, even with the user's token, may not list or revoke the user's
/// other authorisations.
fn portal_user(
    http: &HttpRequest,
    state: &web::Data<AppState>,
) -> Result<std::sync::Arc<crate::auth::Grant>, Box<HttpResponse>> {
    // A missing, forged or expired token gets the FHIR API's 401 with its challenge.
    let Some(grant) = super::bearer_grant(http, state)? else { return Err(Box::new(auth_off())) };
    let refuse = |status: StatusCode, error: &str, description: &str| {
        Box::new(no_store(HttpResponse::build(status).json(json!({"error": error, "error_description": description}))))
    };
    if grant.role.is_none() || grant.client_id != crate::auth::clients::PORTAL_CLIENT_ID {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "insufficient_scope",
            "a user's authorisations are listed and revoked through the patient portal only",
        ));
    }
    Ok(grant)
}

/// `GET /auth/grants`: the apps the user authorised that may still act, with their scopes.
async fn own_grants(http: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let grant = match portal_user(&http, &state) {
        Ok(grant) => grant,
        Err(refusal) => return *refusal,
    };
    let Some(auth) = state.auth.as_deref() else { return auth_off() };
    let listed = auth.user_grants(&grant.subject).and_then(|grants| {
        let names = state.store.auth_read(|read| {
            grants
                .iter()
                .map(|listed| {
                    Ok(crate::auth::clients::name_of(read, &listed.client_id)?
                        .unwrap_or_else(|| listed.client_id.clone()))
                })
                .collect::<Result<Vec<String>, crate::store::StoreError>>()
        })?;
        Ok(grants
            .into_iter()
            .zip(names)
            .map(|(listed, name)| {
                let current = grant.gid.as_deref() == Some(listed.id.as_str());
                json!({"id": listed.id, "client_id": listed.client_id, "client_name": name, "scope": listed.scope,
                       "created": listed.created, "expires": listed.expires, "lasting": listed.lasting, "current": current})
            })
            .collect::<Vec<_>>())
    });
    match listed {
        Ok(grants) => no_store(HttpResponse::Ok().json(json!({"grants": grants}))),
        Err(error) => {
            tracing::warn!(%error, "a user's grants could not be read");
            no_store(token_error(&TokenError::new(
                500,
                "server_error",
                "your authorisations could not be read; see the server log",
            )))
        }
    }
}

/// `DELETE /auth/grants/{id}`: revokes one of the user's grants, and every token issued under it.
async fn revoke_own_grant(http: HttpRequest, id: web::Path<String>, state: web::Data<AppState>) -> HttpResponse {
    let grant = match portal_user(&http, &state) {
        Ok(grant) => grant,
        Err(refusal) => return *refusal,
    };
    let Some(auth) = state.auth.as_deref() else { return auth_off() };
    match auth.revoke_user_grant(&grant.subject, &id).await {
        Ok(true) => no_store(HttpResponse::NoContent().finish()),
        Ok(false) => no_store(
            HttpResponse::NotFound()
                .json(json!({"error": "not_found", "error_description": "you have no such authorisation in force"})),
        ),
        Err(error) => {
            tracing::warn!(%error, "a user's grant could not be revoked");
            no_store(token_error(&TokenError::new(
                500,
                "server_error",
                "the authorisation could not be revoked; see the server log",
            )))
        }
    }
}
