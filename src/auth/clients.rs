//! The client applications the operator registered (`braid client add`): who they are, how they
//! prove it at the token endpoint, and the most they may ever be granted.
//!
//! Stored as JSON under `client/<client_id>` in the `auth` table. A client secret is kept only
//! as an Argon2id hash (it is shown once, when the client is created).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use serde::{Deserialize, Serialize};

use super::records::Records;
use super::scope::{Scope, parse_scopes};
use crate::fhir::{Category, FhirError, IssueCode};
use crate::store::auth::AuthRead;
use crate::store::{Store, StoreError};

/// Clients, by id.
const CLIENTS: Records = Records::new(b"client/");

/// Largest client JWKS accepted, in bytes of JSON.
pub const MAX_JWKS_BYTES: usize = 64 * 1024;

/// Most keys in a client's JWKS.
pub const MAX_JWKS_KEYS: usize = 20;

/// Most redirect URIs of one client.
pub const MAX_REDIRECT_URIS: usize = 20;

/// The OAuth grant types Braid issues tokens for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    /// SMART Backend Services.
    ClientCredentials,
    /// SMART App Launch (with `refresh_token`).
    AuthorizationCode,
}

impl GrantType {
    pub fn parse(text: &str) -> Option<GrantType> {
        match text {
            "client_credentials" => Some(GrantType::ClientCredentials),
            "authorization_code" => Some(GrantType::AuthorizationCode),
            _ => None,
        }
    }
}

/// How a client authenticates at the token endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Credential {
    /// A public client (an app in a browser or on a phone): nothing to prove, PKCE protects
    /// its codes.
    None,
    /// `client_secret_basic`: the Argon2id hash of the secret, in PHC form.
    Secret { hash: String },
    /// `private_key_jwt` with keys registered inline.
    Jwks { jwks: JwkSet },
    /// `private_key_jwt` with keys fetched from the client's own URL.
    JwksUrl { url: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Client {
    pub client_id: String,
    pub name: String,
    pub credential: Credential,
    pub grant_types: Vec<GrantType>,
    pub redirect_uris: Vec<String>,
    /// The most this client may be granted (space-separated scopes).
    pub scope: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// The source (upstream system) a push source's client writes as (see [`crate::sources`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// What the operator asks for when adding a client.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewClient {
    pub name: String,
    pub scope: String,
    /// Empty: `client_credentials` if every resource scope is a `system/` one, otherwise
    /// `authorization_code`.
    pub grant_types: Vec<GrantType>,
    pub redirect_uris: Vec<String>,
    pub credential: NewCredential,
    /// The source this client writes as (set by `braid source add`, never by `client add`).
    #[serde(default)]
    pub source: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum NewCredential {
    None,
    /// Generate a secret (printed once).
    Secret,
    /// A JWKS document's text.
    Jwks(String),
    JwksUrl(String),
}

/// A client as `braid client add` reports it: its record, and its secret if one was generated
/// (the only time the secret is shown).
#[derive(Debug, Clone)]
pub struct Created {
    pub client: Client,
    pub secret: Option<String>,
}

fn bad(message: impl Into<String>) -> FhirError {
    FhirError::incorrect(IssueCode::Value, message)
}

/// Checks `new` and stores it as a new client.
pub async fn add(store: &Store, new: NewClient, now: u64) -> Result<Created, FhirError> {
    let created = build(new, now)?;
    // A fresh random id: never taken.
    CLIENTS.insert_new(store, &created.client.client_id, &created.client).await?;
    Ok(created)
}

/// Stores a client [`build`] made, inside a piece of auth work (with the record that owns it).
pub fn insert_in(txn: &mut crate::store::auth::AuthTxn<'_>, client: &Client) -> Result<(), FhirError> {
    CLIENTS.put_in(txn, &client.client_id, client)
}

/// Where a removed client's id is kept until every token issued to it has expired (see
/// [`remove_in`] and `grants::Revoked`).
pub const REMOVED_PREFIX: &[u8] = b"removed-client/";

/// The longest an access token Braid issues lives (`access_token_secs` is at most this, and
/// `backend_token_secs` less): how long a removed client's id is kept.
pub const MAX_TOKEN_SECS: u64 = 3600;

/// Removes a client inside a piece of auth work, and lists its id as removed until its tokens
/// would have expired: a token outlives its client otherwise, being checked by signature only.
pub fn remove_in(txn: &mut crate::store::auth::AuthTxn<'_>, client_id: &str) {
    CLIENTS.remove_in(txn, client_id);
    let key = [REMOVED_PREFIX, client_id.as_bytes()].concat();
    txn.insert_expiring(&key, &[], super::now_secs() + MAX_TOKEN_SECS);
}

/// Checks `new` and makes the client record (with a fresh id, and a secret if one is asked
/// for), without storing it.
pub fn build(new: NewClient, now: u64) -> Result<Created, FhirError> {
    let scopes = parse_scopes(&new.scope).map_err(|error| bad(error.to_string()))?;
    if let Some(unknown) = scopes.unknown.first() {
        return Err(bad(format!("'{unknown}' is not a SMART scope Braid knows")));
    }
    if scopes.granted.is_empty() {
        return Err(bad("a client needs at least one scope"));
    }
    let mut grant_types = new.grant_types.clone();
    grant_types.dedup();
    if grant_types.is_empty() {
        let only_system = scopes.granted.iter().all(|scope| match scope {
            Scope::Resource(resource) => resource.context == super::scope::Context::System,
            _ => false,
        });
        grant_types.push(if only_system { GrantType::ClientCredentials } else { GrantType::AuthorizationCode });
    }
    if new.redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(bad(format!("a client has at most {MAX_REDIRECT_URIS} redirect URIs")));
    }
    for uri in &new.redirect_uris {
        check_redirect_uri(uri)?;
    }
    if grant_types.contains(&GrantType::AuthorizationCode) && new.redirect_uris.is_empty() {
        return Err(bad("an authorization_code client needs at least one --redirect-uri"));
    }
    let (credential, secret) = match &new.credential {
        NewCredential::None => (Credential::None, None),
        NewCredential::Secret => {
            let secret = URL_SAFE_NO_PAD.encode(super::random_bytes::<32>());
            (Credential::Secret { hash: super::password::hash(&secret)? }, Some(secret))
        }
        NewCredential::Jwks(text) => (Credential::Jwks { jwks: parse_client_jwks(text)? }, None),
        NewCredential::JwksUrl(url) => {
            check_https_or_loopback(url)?;
            (Credential::JwksUrl { url: url.clone() }, None)
        }
    };
    if grant_types.contains(&GrantType::ClientCredentials) && matches!(credential, Credential::None) {
        return Err(bad("a client_credentials client must authenticate: give --jwks, --jwks-url or --secret"));
    }
    let client = Client {
        client_id: uuid::Uuid::new_v4().to_string(),
        name: new.name.clone(),
        credential,
        grant_types,
        redirect_uris: new.redirect_uris.clone(),
        scope: new.scope.split_whitespace().collect::<Vec<_>>().join(" "),
        created: now,
        source: new.source.clone(),
    };
    Ok(Created { client, secret })
}

/// A client as the operator sees it: everything but its secret's hash or its keys.
pub fn describe(client: &Client) -> serde_json::Value {
    let method = match &client.credential {
        Credential::None => "none",
        Credential::Secret { .. } => "client_secret_basic",
        Credential::Jwks { .. } | Credential::JwksUrl { .. } => "private_key_jwt",
    };
    let mut described = serde_json::json!({
        "client_id": client.client_id,
        "name": client.name,
        "scope": client.scope,
        "grant_types": client.grant_types,
        "redirect_uris": client.redirect_uris,
        "token_endpoint_auth_method": method,
        "created": client.created,
    });
    if let Credential::JwksUrl { url } = &client.credential {
        described["jwks_uri"] = url.clone().into();
    }
    if let Some(source) = &client.source {
        described["source"] = source.clone().into();
    }
    described
}

/// Every client, by id.
pub fn list(store: &Store) -> Result<Vec<Client>, StoreError> {
    CLIENTS.all(store)
}

/// Removes a client; false if there was none with that id. It gets no more tokens, and those
/// already issued to it are refused once the server hears of the removal (at once through the
/// operator's socket, else at its next start; see [`remove_in`]).
pub async fn remove(store: &Store, client_id: &str) -> Result<bool, FhirError> {
    let client_id = client_id.to_owned();
    store
        .auth_write(move |txn| {
            let existed = CLIENTS.get_in::<Client>(txn, &client_id)?.is_some();
            if existed {
                remove_in(txn, &client_id);
            }
            Ok(existed)
        })
        .await
}

/// The client `client_id`, as last committed, or the built-in patient portal (see [`portal`])
/// when the request reached a `portal_origin` it may be sent back to
/// (`AuthState::portal_origin`).
pub fn find(read: &AuthRead, client_id: &str, portal_origin: Option<&str>) -> Result<Option<Client>, StoreError> {
    if client_id == PORTAL_CLIENT_ID {
        return Ok(portal_origin.map(portal));
    }
    CLIENTS.get(read, client_id)
}

/// The name client `client_id` was registered with (the built-in portal's included), for
/// people reading which app did what.
pub fn name_of(read: &AuthRead, client_id: &str) -> Result<Option<String>, StoreError> {
    if client_id == PORTAL_CLIENT_ID {
        return Ok(Some(PORTAL_NAME.to_owned()));
    }
    Ok(CLIENTS.get(read, client_id)?.map(|client: Client| client.name))
}

/// The patient portal's name, as apps are listed and audited.
const PORTAL_NAME: &str = "Braid patient portal";

/// The id of the patient portal Braid serves itself.
pub const PORTAL_CLIENT_ID: &str = "braid-portal";

/// Where the portal is served, below the server's origin; also its one redirect URI.
pub const PORTAL_PATH: &str = "/portal/";

/// The most the portal may be granted: the patient's whole record to read, and what the portal
/// writes for them (a questionnaire's answers, measurements from home and their devices).
pub const PORTAL_SCOPE: &str = "launch/patient openid fhirUser patient/*.rs patient/QuestionnaireResponse.c \
                                patient/Observation.cu patient/Device.cu";

/// The patient portal (`/portal/`): a public client (PKCE, no secret) that every server has
/// without registration. Its redirect URI is the portal on the origin the request came to, so
/// the portal works under whatever name the server is reached by, and nowhere else.
pub fn portal(origin: &str) -> Client {
    Client {
        client_id: PORTAL_CLIENT_ID.into(),
        name: PORTAL_NAME.into(),
        credential: Credential::None,
        grant_types: vec![GrantType::AuthorizationCode],
        redirect_uris: vec![format!("{}{PORTAL_PATH}", origin.trim_end_matches('/'))],
        scope: PORTAL_SCOPE.split_whitespace().collect::<Vec<_>>().join(" "),
        created: 0,
        source: None,
    }
}

/// A client's JWKS: at most [`MAX_JWKS_KEYS`] public keys usable for RS384 or ES384, each with a
/// `kid`. Private key material is refused, so that a mistaken upload is not kept.
pub fn parse_client_jwks(text: &str) -> Result<JwkSet, FhirError> {
    if text.len() > MAX_JWKS_BYTES {
        return Err(bad(format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes")));
    }
    let raw: serde_json::Value =
        serde_json::from_str(text).map_err(|error| bad(format!("the JWKS is not JSON: {error}")))?;
    let keys = raw.get("keys").and_then(|keys| keys.as_array()).ok_or_else(|| bad("the JWKS has no \"keys\" array"))?;
    if keys.is_empty() || keys.len() > MAX_JWKS_KEYS {
        return Err(bad(format!("the JWKS must hold between 1 and {MAX_JWKS_KEYS} keys")));
    }
    for key in keys {
        if key.get("d").is_some() || key.get("p").is_some() {
            return Err(bad("the JWKS holds a private key; register only the public keys"));
        }
    }
    let jwks: JwkSet = serde_json::from_value(raw).map_err(|error| bad(format!("the JWKS is not valid: {error}")))?;
    for key in &jwks.keys {
        let usable = match &key.algorithm {
            AlgorithmParameters::EllipticCurve(ec) => ec.curve == EllipticCurve::P384,
            AlgorithmParameters::RSA(_) => true,
            _ => false,
        };
        if !usable {
            return Err(bad("every key must be an RSA key (for RS384) or a P-384 EC key (for ES384)"));
        }
        if key.common.key_id.as_deref().is_none_or(str::is_empty) {
            return Err(bad("every key needs a \"kid\""));
        }
    }
    Ok(jwks)
}

/// A redirect URI: absolute `https`, or `http` on a loopback host (native apps, RFC 8252), with
/// no fragment.
pub fn check_redirect_uri(uri: &str) -> Result<(), FhirError> {
    if uri.contains('#') {
        return Err(bad(format!("the redirect URI {uri} has a fragment")));
    }
    check_https_or_loopback(uri)
}

pub fn check_https_or_loopback(uri: &str) -> Result<(), FhirError> {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return Err(bad(format!("{uri} is not an absolute URL")));
    };
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, host)| host);
    let hostname = if host.starts_with('[') {
        host.split(']').next().map(|h| h.trim_start_matches('[')).unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    let loopback = hostname == "localhost" || hostname.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    match scheme {
        "https" if !hostname.is_empty() => Ok(()),
        "http" if loopback => Ok(()),
        _ => Err(FhirError::new(
            Category::Incorrect,
            IssueCode::Value,
            format!("{uri} must be an https URL (http only on a loopback address)"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_are_https_or_loopback_http_without_fragment() {
        assert!(check_redirect_uri("https://app.example.org/cb").is_ok());
        assert!(check_redirect_uri("http://127.0.0.1:8000/cb").is_ok());
        assert!(check_redirect_uri("http://localhost/cb").is_ok());
        assert!(check_redirect_uri("http://[::1]:9/cb").is_ok());
        assert!(check_redirect_uri("http://app.example.org/cb").is_err());
        assert!(check_redirect_uri("http://127.0.0.1.evil.org/cb").is_err());
        assert!(check_redirect_uri("http://localhost@evil.org/cb").is_err());
        assert!(check_redirect_uri("https://app.example.org/cb#x").is_err());
        assert!(check_redirect_uri("/cb").is_err());
        assert!(check_redirect_uri("javascript://alert").is_err());
    }

    #[test]
    fn client_jwks_must_hold_public_signing_keys_with_ids() {
        let ec = r#"{"keys":[{"kty":"EC","crv":"P-384","kid":"k1","x":"AAAA","y":"AAAA"}]}"#;
        assert_eq!(parse_client_jwks(ec).unwrap().keys.len(), 1);
        let private = r#"{"keys":[{"kty":"EC","crv":"P-384","kid":"k1","x":"AAAA","y":"AAAA","d":"AAAA"}]}"#;
        assert!(parse_client_jwks(private).unwrap_err().to_string().contains("private"));
        let p256 = r#"{"keys":[{"kty":"EC","crv":"P-256","kid":"k1","x":"AAAA","y":"AAAA"}]}"#;
        assert!(parse_client_jwks(p256).is_err());
        let no_kid = r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#;
        assert!(parse_client_jwks(no_kid).unwrap_err().to_string().contains("kid"));
        let hmac = r#"{"keys":[{"kty":"oct","kid":"k","k":"c2VjcmV0"}]}"#;
        assert!(parse_client_jwks(hmac).is_err());
        assert!(parse_client_jwks("{}").is_err());
        assert!(parse_client_jwks(&" ".repeat(MAX_JWKS_BYTES + 1)).is_err());
    }
}
