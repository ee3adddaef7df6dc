//! Dynamic client registration (RFC 7591) at `POST /auth/register`.
//!
//! Open to anyone for patient-facing apps only: authorization-code clients whose scopes are
//! `patient/`, `launch`, `openid`, `fhirUser` and the like. Such a client gets data only through
//! a patient's own login and consent, so registering one reveals nothing. Anything more (a
//! backend service, `user/` or `system/` scopes, keys fetched from a URL) needs an initial access
//! token the operator issues (`braid client registration-token`), each good for a number of
//! registrations until it expires.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::clients::{self, GrantType, NewClient, NewCredential};
use super::scope::{Context, Scope, parse_scope};
use super::{TokenError, now_secs, random_bytes};
use crate::fhir::FhirError;
use crate::store::Store;

/// Registrations one address may make without a token, per [`super::flow::FAILURE_WINDOW_SECS`].
pub const MAX_ANONYMOUS_PER_ADDRESS: u32 = 10;

/// Longest registration request read, in bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The metadata of a registration request (RFC 7591 §2), as far as Braid uses it.
#[derive(Debug, Default, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub redirect_uris: Vec<String>,
    pub client_name: Option<String>,
    #[serde(default)]
    pub grant_types: Vec<String>,
    pub token_endpoint_auth_method: Option<String>,
    pub jwks: Option<Value>,
    pub jwks_uri: Option<String>,
    pub scope: Option<String>,
}

/// An initial access token as stored (`regtoken/<sha256>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct InitialToken {
    uses_left: u32,
    expires: u64,
}

fn token_key(token: &str) -> Vec<u8> {
    [b"regtoken/".as_slice(), &Sha256::digest(token.as_bytes())].concat()
}

/// Issues an initial access token good for `uses` registrations within `hours`.
pub async fn issue_initial_token(store: &Store, uses: u32, hours: u64) -> Result<String, FhirError> {
    let token = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, random_bytes::<32>());
    let expires = now_secs() + hours.max(1) * 3600;
    let record =
        serde_json::to_vec(&InitialToken { uses_left: uses.max(1), expires }).map_err(|_| FhirError::fault("auth"))?;
    let key = token_key(&token);
    store
        .auth_write(move |txn| {
            txn.insert_expiring(&key, &record, expires);
            Ok(())
        })
        .await?;
    Ok(token)
}

fn metadata_error(description: impl Into<String>) -> TokenError {
    TokenError {
        status: 400,
        error: "invalid_client_metadata",
        description: description.into(),
        basic_challenge: false,
    }
}

/// Registers the client `metadata` describes. `initial_token` is the bearer token of the
/// request, if any; `anonymous_allowed` whether this address may still register without one.
pub async fn register(
    store: &Store,
    metadata: Metadata,
    initial_token: Option<&str>,
    anonymous_allowed: bool,
) -> Result<Value, TokenError> {
    for uri in &metadata.redirect_uris {
        clients::check_redirect_uri(uri).map_err(|error| TokenError {
            error: "invalid_redirect_uri",
            ..metadata_error(error.issues.first().map_or_else(String::new, |issue| issue.diagnostics.clone()))
        })?;
    }
    let mut grant_types: Vec<GrantType> = Vec::new();
    let asked_grants = if metadata.grant_types.is_empty() {
        vec!["authorization_code".to_owned()]
    } else {
        metadata.grant_types.clone()
    };
    for grant in &asked_grants {
        match grant.as_str() {
            "refresh_token" => {}
            other => match GrantType::parse(other) {
                Some(grant) if !grant_types.contains(&grant) => grant_types.push(grant),
                Some(_) => {}
                None => return Err(metadata_error(format!("the grant type {other} is not supported"))),
            },
        }
    }
    let method = metadata.token_endpoint_auth_method.as_deref().unwrap_or("client_secret_basic");
    let credential = match method {
        "none" => NewCredential::None,
        "client_secret_basic" => NewCredential::Secret,
        "private_key_jwt" => match (&metadata.jwks, &metadata.jwks_uri) {
            (Some(jwks), None) => NewCredential::Jwks(jwks.to_string()),
            (None, Some(uri)) => NewCredential::JwksUrl(uri.clone()),
            _ => return Err(metadata_error("private_key_jwt needs jwks or jwks_uri (one of them)")),
        },
        other => return Err(metadata_error(format!("the token_endpoint_auth_method {other} is not supported"))),
    };
    let scope = metadata.scope.clone().unwrap_or_else(|| "launch/patient openid fhirUser patient/*.rs".to_owned());
    let patient_facing = grant_types.iter().all(|grant| *grant == GrantType::AuthorizationCode)
        && !matches!(credential, NewCredential::JwksUrl(_))
        && scope.split(' ').filter(|w| !w.is_empty()).all(|written| match parse_scope(written) {
            Some(Scope::Resource(resource)) => resource.context == Context::Patient,
            Some(_) => true,
            None => false,
        });
    match initial_token {
        Some(token) => consume_initial_token(store, token).await?,
        None if !patient_facing => {
            return Err(TokenError {
                status: 401,
                error: "invalid_token",
                description: "registering a client with more than patient-facing access needs an initial access token \
                              from the operator (braid client registration-token)"
                    .into(),
                basic_challenge: false,
            });
        }
        None if !anonymous_allowed => {
            return Err(TokenError {
                status: 429,
                ..metadata_error("too many registrations from this address; try later")
            });
        }
        None => {}
    }
    let new = NewClient {
        name: metadata.client_name.clone().unwrap_or_else(|| "registered app".to_owned()),
        scope: scope.clone(),
        grant_types,
        redirect_uris: metadata.redirect_uris.clone(),
        credential,
        source: None,
    };
    let created = clients::add(store, new, now_secs()).await.map_err(|error| {
        if error.status() < 500 {
            metadata_error(error.issues.first().map_or_else(String::new, |issue| issue.diagnostics.clone()))
        } else {
            TokenError::from(error)
        }
    })?;
    let mut answer = json!({
        "client_id": created.client.client_id,
        "client_id_issued_at": created.client.created,
        "client_name": created.client.name,
        "redirect_uris": created.client.redirect_uris,
        "grant_types": asked_grants,
        "token_endpoint_auth_method": method,
        "scope": created.client.scope,
    });
    if let Some(secret) = created.secret {
        answer["client_secret"] = secret.into();
        answer["client_secret_expires_at"] = 0.into();
    }
    Ok(answer)
}

/// Uses up one registration of an initial access token; refuses an unknown or spent one.
async fn consume_initial_token(store: &Store, token: &str) -> Result<(), TokenError> {
    let key = token_key(token);
    let now = now_secs();
    let accepted = store
        .auth_write(move |txn| {
            let Some(bytes) = txn.get(&key)? else { return Ok(false) };
            let Ok(mut record) = serde_json::from_slice::<InitialToken>(&bytes) else { return Ok(false) };
            if record.expires <= now || record.uses_left == 0 {
                return Ok(false);
            }
            record.uses_left -= 1;
            if record.uses_left == 0 {
                txn.remove(&key);
            } else {
                let value = serde_json::to_vec(&record).map_err(|_| FhirError::fault("auth"))?;
                txn.insert(&key, &value);
            }
            Ok(true)
        })
        .await?;
    if accepted {
        Ok(())
    } else {
        Err(TokenError {
            status: 401,
            error: "invalid_token",
            description: "the initial access token is unknown, expired or used up".into(),
            basic_challenge: false,
        })
    }
}
