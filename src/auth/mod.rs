//! SMART on FHIR authorisation: Braid's own authorization server, and what a token allows.
//!
//! - [`scope`] parses and compares SMART scopes (v1 and v2, granular filters).
//! - [`rules`] turns the scopes of a token's context into a decision per type and interaction.
//! - [`keys`] holds Braid's signing keys (stored in the database, rotatable); [`token`] issues
//!   and verifies access tokens; [`assertion`] verifies the signed JWTs backend services
//!   authenticate with; [`clients`] is the operator's register of client applications.
//! - [`AuthState`] is what the HTTP layer holds: it answers token requests and turns a bearer
//!   token into an [`Access`].

pub mod admin;
pub mod assertion;
pub mod audit;
pub mod clients;
pub mod flow;
mod grants;
mod jwks_url;
pub mod keys;
pub mod password;
pub(crate) mod records;
pub mod registration;
pub mod restrict;
pub mod rules;
pub mod scope;
pub mod session;
pub mod token;
pub mod totp;
pub mod users;

use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use crate::fhir::FhirError;
use crate::store::Store;
use clients::{Client, Credential, GrantType};
use keys::KeyRing;
use scope::{Context, Scope};
pub use token::Grant;

/// Longest access-token lifetime, in seconds (SMART recommends an hour at most).
pub const MAX_ACCESS_TOKEN_SECS: u64 = 3600;

/// Longest lifetime of a Backend Services token (SMART: five minutes at most is recommended).
pub const MAX_BACKEND_TOKEN_SECS: u64 = 300;

/// Most verified tokens each thread remembers, so that a token is verified once per thread
/// rather than per request.
const TOKEN_CACHE_ENTRIES: usize = 10_000;

/// Tells authorization states apart in the per-thread token caches (a process may run several
/// servers, each with its own keys).
static NEXT_STATE_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One authorization state's verified access tokens, by their text.
type VerifiedTokens = hashbrown::HashMap<Box<str>, Arc<Grant>>;

thread_local! {
    /// Verified access tokens by state and by their text: a token is found again only by the
    /// same text. One cache per thread, because a shared one costs more than it saves: every
    /// lookup would move the lock's and the grant's reference counts between the cores.
    /// Revocation and expiry are checked at every use, so a cached grant needs no invalidation.
    static VERIFIED: std::cell::RefCell<hashbrown::HashMap<u64, VerifiedTokens>> =
        std::cell::RefCell::new(hashbrown::HashMap::new());
}

/// A fresh token id (128 random bits).
pub fn new_jti() -> String {
    base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, random_bytes::<16>())
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub use crate::crypt::random_bytes;

/// What the caller of one request may do.
#[derive(Debug, Clone)]
pub enum Access {
    /// Authorization is off (`--auth off`), or an internal caller (the demo loader).
    Unrestricted,
    /// What a verified access token grants.
    Token(Arc<Grant>),
}

/// An OAuth error at the token endpoint (RFC 6749 §5.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenError {
    pub status: u16,
    /// The `error` code.
    pub error: &'static str,
    pub description: String,
    /// The client tried HTTP Basic: a 401 carries a `WWW-Authenticate: Basic` challenge.
    pub basic_challenge: bool,
}

impl TokenError {
    pub fn new(status: u16, error: &'static str, description: impl Into<String>) -> TokenError {
        TokenError { status, error, description: description.into(), basic_challenge: false }
    }

    pub fn invalid_request(description: impl Into<String>) -> TokenError {
        Self::new(400, "invalid_request", description)
    }

    pub fn invalid_client(description: impl Into<String>) -> TokenError {
        Self::new(400, "invalid_client", description)
    }

    pub fn invalid_scope(description: impl Into<String>) -> TokenError {
        Self::new(400, "invalid_scope", description)
    }

    pub fn unauthorized_client(description: impl Into<String>) -> TokenError {
        Self::new(400, "unauthorized_client", description)
    }

    pub fn unsupported_grant_type(description: impl Into<String>) -> TokenError {
        Self::new(400, "unsupported_grant_type", description)
    }

    pub fn invalid_grant(description: impl Into<String>) -> TokenError {
        Self::new(400, "invalid_grant", description)
    }

    fn server_error() -> TokenError {
        Self::new(500, "server_error", "the token could not be issued; see the server log")
    }
}

impl From<FhirError> for TokenError {
    fn from(_: FhirError) -> Self {
        TokenError::server_error()
    }
}

impl From<crate::store::StoreError> for TokenError {
    fn from(error: crate::store::StoreError) -> Self {
        tracing::error!(%error, "storage failure at the token endpoint");
        TokenError::server_error()
    }
}

/// A token request's form fields (RFC 6749 §4.1.3, §4.4, §6; RFC 7523 §2.2; RFC 7636 §4.5).
#[derive(Debug, Default, serde::Deserialize)]
pub struct TokenForm {
    pub grant_type: Option<String>,
    pub scope: Option<String>,
    pub client_id: Option<String>,
    pub client_assertion_type: Option<String>,
    pub client_assertion: Option<String>,
    pub code: Option<String>,
    pub redirect_uri: Option<String>,
    pub code_verifier: Option<String>,
    pub refresh_token: Option<String>,
}

/// A successful token response, with the launch context SMART adds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    pub scope: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub need_patient_banner: Option<bool>,
    #[serde(rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub smart_style_url: Option<String>,
}

impl TokenResponse {
    fn bearer(access_token: String, expires_in: u64, scope: String) -> TokenResponse {
        TokenResponse {
            access_token,
            token_type: "Bearer",
            expires_in,
            scope,
            refresh_token: None,
            patient: None,
            need_patient_banner: None,
            fhir_user: None,
            id_token: None,
            smart_style_url: None,
        }
    }
}

/// How the authorization server is set up (from the settings).
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub backend_token_secs: u64,
    pub access_token_secs: u64,
    pub totp: crate::config::TotpPolicy,
    /// Given to apps with a user's token (`smart_style_url`).
    pub smart_style_url: Option<String>,
    /// The configured public FHIR base (`base_url`), if any: the patient portal's redirect URI
    /// is trusted there whatever its scheme.
    pub base_url: Option<String>,
}

/// Where the authorization server is reached, for one request: the FHIR base (the tokens'
/// audience and issuer) and the token endpoint (the client assertions' audience).
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub fhir_base: String,
    pub token: String,
}

impl Endpoints {
    /// The endpoints of a server whose FHIR base is `fhir_base` (ending in `/fhir`): the
    /// authorization server's routes are at the same origin, under `/auth`.
    pub fn for_base(fhir_base: &str) -> Endpoints {
        let origin = fhir_base.strip_suffix("/fhir").unwrap_or(fhir_base);
        Endpoints { fhir_base: fhir_base.to_owned(), token: format!("{origin}/auth/token") }
    }

    pub fn origin(&self) -> &str {
        self.fhir_base.strip_suffix("/fhir").unwrap_or(&self.fhir_base)
    }
}

/// Why a bearer token was not accepted (401), or a request not allowed (403).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BearerError {
    /// No `Authorization: Bearer` header.
    Missing,
    /// Malformed, forged, expired or for another server.
    Invalid(String),
}

/// The authorization server's state: the key ring, the keys fetched from clients' JWKS URLs,
/// revocations and login limits (verified tokens are cached per thread, in `VERIFIED`).
pub struct AuthState {
    store: Store,
    keys: RwLock<Arc<KeyRing>>,
    /// This state's key in the per-thread caches of verified tokens.
    id: u64,
    client_keys: jwks_url::ClientKeys,
    backend_token_secs: u64,
    access_token_secs: u64,
    totp_policy: crate::config::TotpPolicy,
    smart_style_url: Option<String>,
    /// The configured base URL's origin (see [`AuthConfig::base_url`]).
    configured_origin: Option<String>,
    failures: flow::FailureCounter,
    /// Anonymous registrations per address.
    registrations: flow::FailureCounter,
    flow_key: session::FlowKey,
    /// Revoked access tokens (by `jti`) and grants (by id), until they would have expired
    /// anyway: checked on every use of a token, cached or not.
    revoked: grants::Revoked,
}

impl AuthState {
    /// Stops the tokens of a client whose removal is committed (`clients::remove`, or a push
    /// source's removal): they are refused from now on, not only once they expire.
    pub fn client_removed(&self, client_id: &str) {
        self.revoked.add_client(client_id);
    }

    /// Why a token whose signature and claims check out is refused all the same: its client
    /// was removed, or it (or the grant it was issued under) was revoked.
    fn refusal(&self, grant: &Grant) -> Option<&'static str> {
        if !self.revoked.contains(grant) {
            None
        } else if self.revoked.client_removed(&grant.client_id) {
            Some("the client this access token was issued to has been removed")
        } else {
            Some("the access token was revoked")
        }
    }

    /// Makes sure a signing key exists, then loads the keys.
    pub async fn start(store: Store, config: AuthConfig) -> Result<AuthState, FhirError> {
        keys::ensure(&store).await?;
        let fresh: [u8; 32] = random_bytes();
        let session_secret = store
            .auth_write(move |txn| match txn.get(b"secret/session")? {
                Some(secret) => Ok(secret),
                None => {
                    txn.insert(b"secret/session", &fresh);
                    Ok(fresh.to_vec())
                }
            })
            .await?;
        grants::index_user_grants(&store).await?;
        let ring = store.auth_read(KeyRing::load)?;
        let revoked = store.auth_read(grants::Revoked::load)?;
        Ok(AuthState {
            store,
            keys: RwLock::new(Arc::new(ring)),
            id: NEXT_STATE_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            client_keys: jwks_url::ClientKeys::new()?,
            backend_token_secs: config.backend_token_secs.clamp(1, MAX_BACKEND_TOKEN_SECS),
            access_token_secs: config.access_token_secs.clamp(1, MAX_ACCESS_TOKEN_SECS),
            totp_policy: config.totp,
            smart_style_url: config.smart_style_url,
            configured_origin: config.base_url.as_deref().map(|base| Endpoints::for_base(base).origin().to_owned()),
            failures: flow::FailureCounter::new(),
            registrations: flow::FailureCounter::new(),
            flow_key: session::FlowKey::new(&session_secret),
            revoked,
        })
    }

    /// RFC 7591 registration (see [`registration`]); `address` is the requester's, for the limit
    /// on anonymous registrations.
    pub async fn register(
        &self,
        metadata: registration::Metadata,
        initial_token: Option<&str>,
        address: &str,
    ) -> Result<serde_json::Value, TokenError> {
        let now = now_secs();
        let key = format!("register:{address}");
        let allowed = self.registrations.count(&key, now) < registration::MAX_ANONYMOUS_PER_ADDRESS;
        let answer = registration::register(&self.store, metadata, initial_token, allowed).await?;
        if initial_token.is_none() {
            self.registrations.fail(&key, now);
        }
        Ok(answer)
    }

    /// Signs and opens the cookies of logins in progress.
    pub fn flow_key(&self) -> &session::FlowKey {
        &self.flow_key
    }

    pub fn keys(&self) -> Arc<KeyRing> {
        self.keys.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Retires the active signing keys for new ones; tokens they signed keep verifying until
    /// they expire. Returns the new keys' ids (access tokens', then id_tokens').
    pub async fn rotate_keys(&self) -> Result<Vec<String>, FhirError> {
        let kids = keys::rotate_all(&self.store).await?;
        self.reload_keys()?;
        Ok(kids)
    }

    fn reload_keys(&self) -> Result<(), FhirError> {
        let ring = self.store.auth_read(KeyRing::load)?;
        *self.keys.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(ring);
        Ok(())
    }

    /// Answers a token request. `basic` is the client id and secret of an `Authorization:
    /// Basic` header.
    pub async fn token(
        &self,
        form: &TokenForm,
        basic: Option<(String, String)>,
        endpoints: &Endpoints,
    ) -> Result<TokenResponse, TokenError> {
        match form.grant_type.as_deref() {
            Some("client_credentials") => self.client_credentials(form, basic, endpoints).await,
            Some("authorization_code") => self.authorization_code(form, basic, endpoints).await,
            Some("refresh_token") => self.refresh(form, basic, endpoints).await,
            Some(other) => Err(TokenError::unsupported_grant_type(format!("unknown grant_type {other}"))),
            None => Err(TokenError::invalid_request("grant_type is required")),
        }
    }

    /// SMART Backend Services: a confidential client authenticates, and gets a short-lived
    /// token for `system/` scopes within those it was registered with.
    async fn client_credentials(
        &self,
        form: &TokenForm,
        basic: Option<(String, String)>,
        endpoints: &Endpoints,
    ) -> Result<TokenResponse, TokenError> {
        let now = now_secs();
        let client = self.authenticate_client(form, basic, endpoints, now, false).await?;
        if !client.grant_types.contains(&GrantType::ClientCredentials) {
            return Err(TokenError::unauthorized_client("this client may not use the client_credentials grant"));
        }
        let scope = granted_system_scopes(form.scope.as_deref(), &client.scope)?;
        let expires_in = self.backend_token_secs;
        let claims = token::AccessClaims {
            iss: endpoints.fhir_base.clone(),
            aud: endpoints.fhir_base.clone(),
            sub: client.client_id.clone(),
            client_id: client.client_id.clone(),
            scope: scope.clone(),
            iat: now,
            exp: now + expires_in,
            jti: new_jti(),
            patient: None,
            fhir_user: None,
            gid: None,
            role: None,
            source: client.source.clone(),
        };
        let access_token = token::issue(&self.keys(), &claims)?;
        Ok(TokenResponse::bearer(access_token, expires_in, scope))
    }

    /// Authenticates the client of a token request: by a JWT assertion (whose `jti` is
    /// recorded so that it is accepted once) or by HTTP Basic with its secret; with
    /// `allow_public`, a public client by its `client_id` alone (its codes are bound by PKCE).
    async fn authenticate_client(
        &self,
        form: &TokenForm,
        basic: Option<(String, String)>,
        endpoints: &Endpoints,
        now: u64,
        allow_public: bool,
    ) -> Result<Client, TokenError> {
        if let Some(kind) = &form.client_assertion_type {
            if kind != assertion::JWT_BEARER {
                return Err(TokenError::invalid_request(format!(
                    "client_assertion_type must be {}",
                    assertion::JWT_BEARER
                )));
            }
            let jwt = form
                .client_assertion
                .as_deref()
                .ok_or_else(|| TokenError::invalid_request("client_assertion is required"))?;
            let client_id = assertion::claimed_client(jwt)?;
            if form.client_id.as_deref().is_some_and(|id| id != client_id) {
                return Err(TokenError::invalid_client("client_id differs from the assertion's iss"));
            }
            let client = self.find_client(&client_id, endpoints)?;
            let fetched;
            let jwks = match &client.credential {
                Credential::Jwks { jwks } => jwks,
                Credential::JwksUrl { url } => {
                    let kid = jsonwebtoken::decode_header(jwt).ok().and_then(|header| header.kid);
                    fetched = self.client_keys.get(url, kid.as_deref()).await?;
                    fetched.as_ref()
                }
                Credential::None | Credential::Secret { .. } => {
                    return Err(TokenError::invalid_client(
                        "this client does not authenticate with a signed assertion",
                    ));
                }
            };
            let audiences = [endpoints.token.as_str(), endpoints.fhir_base.as_str()];
            let verified = assertion::verify(jwt, &client_id, jwks, &audiences, now)?;
            self.record_jti(&verified).await?;
            return Ok(client);
        }
        if form.client_assertion.is_some() {
            return Err(TokenError::invalid_request("client_assertion_type is required with client_assertion"));
        }
        let Some((client_id, secret)) = basic else {
            if allow_public && let Some(client_id) = &form.client_id {
                let client = self.find_client(client_id, endpoints)?;
                return match client.credential {
                    Credential::None => Ok(client),
                    _ => Err(TokenError::invalid_client("this is a confidential client: it must authenticate")),
                };
            }
            return Err(TokenError::invalid_client(
                "the client must authenticate: a client_assertion (private_key_jwt) or HTTP Basic",
            ));
        };
        let challenge = |description: &str| TokenError {
            status: 401,
            basic_challenge: true,
            ..TokenError::invalid_client(description)
        };
        let client =
            self.find_client(&client_id, endpoints).map_err(|_| challenge("unknown client or wrong secret"))?;
        let Credential::Secret { hash } = &client.credential else {
            return Err(challenge("this client does not authenticate with a secret"));
        };
        let hash = hash.clone();
        // Argon2 takes tens of milliseconds on purpose: off the async workers.
        let matches = tokio::task::spawn_blocking(move || password::matches(&hash, &secret))
            .await
            .map_err(|_| TokenError::server_error())?;
        if matches { Ok(client) } else { Err(challenge("unknown client or wrong secret")) }
    }

    /// The origin the patient portal may send codes back to, for a request that reached
    /// `endpoints`: the configured base URL's, or the request's own when it is HTTPS (the
    /// certificate names the server) or a loopback address. Not a plain-HTTP name taken from a
    /// Host header: one naming another machine could receive the codes.
    pub fn portal_origin<'a>(&self, endpoints: &'a Endpoints) -> Option<&'a str> {
        let origin = endpoints.origin();
        let configured = self.configured_origin.as_deref() == Some(origin);
        (configured || clients::check_https_or_loopback(origin).is_ok()).then_some(origin)
    }

    fn find_client(&self, client_id: &str, endpoints: &Endpoints) -> Result<Client, TokenError> {
        self.store
            .auth_read(|read| clients::find(read, client_id, self.portal_origin(endpoints)))?
            .ok_or_else(|| TokenError::invalid_client(format!("there is no client {client_id}")))
    }

    /// Records an assertion's `jti` until the assertion expires; a `jti` seen before is a
    /// replay. Atomic: of two requests with one `jti`, exactly one succeeds.
    async fn record_jti(&self, verified: &assertion::Verified) -> Result<(), TokenError> {
        let mut hasher = Sha256::new();
        hasher.update(verified.client_id.as_bytes());
        hasher.update([0]);
        hasher.update(verified.jti.as_bytes());
        let mut key = b"jti/".to_vec();
        key.extend_from_slice(&hasher.finalize());
        let expires = verified.expires.saturating_add(assertion::LEEWAY_SECS);
        let fresh = self
            .store
            .auth_write(move |txn| {
                if txn.get(&key)?.is_some() {
                    return Ok(false);
                }
                txn.insert_expiring(&key, &[], expires);
                Ok(true)
            })
            .await?;
        if fresh { Ok(()) } else { Err(TokenError::invalid_client("this client assertion (its jti) was already used")) }
    }

    /// The grant of the bearer token in an `Authorization` header value, for a server whose
    /// FHIR base is `fhir_base`.
    pub fn bearer(&self, authorization: Option<&str>, fhir_base: &str) -> Result<Arc<Grant>, BearerError> {
        let now = now_secs();
        let token = authorization
            .and_then(|value| {
                let (scheme, token) = value.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
            })
            .filter(|token| !token.is_empty())
            .ok_or(BearerError::Missing)?;
        let cached = VERIFIED.with(|cache| cache.borrow().get(&self.id).and_then(|tokens| tokens.get(token)).cloned());
        if let Some(grant) = cached {
            if grant.expires <= now {
                return Err(BearerError::Invalid("the access token has expired".into()));
            }
            if grant.audience != fhir_base {
                return Err(BearerError::Invalid("the access token is for another server".into()));
            }
            if let Some(reason) = self.refusal(&grant) {
                return Err(BearerError::Invalid(reason.into()));
            }
            return Ok(grant);
        }
        let grant = Arc::new(token::verify(&self.keys(), token, fhir_base, now).map_err(BearerError::Invalid)?);
        if let Some(reason) = self.refusal(&grant) {
            return Err(BearerError::Invalid(reason.into()));
        }
        VERIFIED.with(|cache| {
            let mut cache = cache.borrow_mut();
            let verified = cache.entry(self.id).or_default();
            if verified.len() >= TOKEN_CACHE_ENTRIES {
                verified.retain(|_, grant| grant.expires > now);
                if verified.len() >= TOKEN_CACHE_ENTRIES {
                    verified.clear();
                }
            }
            verified.insert(token.into(), grant.clone());
        });
        Ok(grant)
    }

    /// Deletes expired single-use records and retired keys past their grace period.
    pub async fn sweep(&self) -> Result<usize, FhirError> {
        let swept = self.store.auth_write(|txn| Ok(txn.sweep(now_secs(), 10_000)?)).await?;
        if swept > 0 {
            self.reload_keys()?;
        }
        Ok(swept)
    }
}

/// The scopes a Backend Services token gets: those asked for (all of the client's if none
/// were) that lie within what the client was registered with, as written; a scope the
/// registration allows only on some resources (a granular filter) is granted narrowed to them.
/// Only `system/` scopes may be asked for.
fn granted_system_scopes(asked: Option<&str>, registered: &str) -> Result<String, TokenError> {
    let registered = scope::parse_scopes(registered).map_err(|_| TokenError::server_error())?;
    let asked = asked.map(str::trim).filter(|text| !text.is_empty());
    let asked_text = asked.unwrap_or("");
    scope::parse_scopes(asked_text).map_err(|error| TokenError::invalid_scope(error.to_string()))?;
    let mut granted = Vec::new();
    // A scope asked for twice, or reached two ways, is granted once.
    let grant = |granted: &mut Vec<String>, text: String| {
        if !granted.contains(&text) {
            granted.push(text);
        }
    };
    if asked.is_none() {
        for scope in &registered.granted {
            if matches!(scope, Scope::Resource(resource) if resource.context == Context::System) {
                granted.push(scope.to_string());
            }
        }
    }
    for written in asked_text.split(' ').filter(|word| !word.is_empty()) {
        match scope::parse_scope(written) {
            Some(Scope::Resource(resource)) if resource.context != Context::System => {
                return Err(TokenError::invalid_scope(format!(
                    "{written}: a backend service may ask only for system/ scopes"
                )));
            }
            Some(scope @ Scope::Resource(_)) if scope.within(&registered.granted) => {
                grant(&mut granted, written.to_owned())
            }
            Some(Scope::Resource(asked)) => {
                for narrowed in registered.granted.iter().filter_map(|scope| match scope {
                    Scope::Resource(registered) => asked.narrowed_to(registered),
                    _ => None,
                }) {
                    grant(&mut granted, narrowed.to_string());
                }
            }
            // Not granted: outside the registration, or not a data scope. A server may grant
            // fewer scopes than asked for.
            _ => {}
        }
    }
    if granted.is_empty() {
        return Err(TokenError::invalid_scope("none of the scopes asked for is granted to this client"));
    }
    Ok(granted.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_scopes_are_those_asked_within_the_registration() {
        let registered = "system/Patient.rs system/Observation.read";
        assert_eq!(granted_system_scopes(None, registered).unwrap(), "system/Patient.rs system/Observation.rs");
        assert_eq!(granted_system_scopes(Some("system/Patient.r"), registered).unwrap(), "system/Patient.r");
        assert_eq!(
            granted_system_scopes(Some("system/Patient.rs system/Condition.rs system/Observation.read"), registered)
                .unwrap(),
            "system/Patient.rs system/Observation.read"
        );
        let refused = granted_system_scopes(Some("system/Patient.cruds"), registered).unwrap_err();
        assert_eq!(refused.error, "invalid_scope");
        let patient = granted_system_scopes(Some("patient/Patient.rs"), registered).unwrap_err();
        assert!(patient.description.contains("system/"));
    }

    #[test]
    fn a_backend_scope_registered_with_a_filter_is_granted_narrowed_to_it() {
        let registered = "system/*.cruds?_source=urn:braid:source:clinic";
        let own = "system/*.cruds?_source=urn:braid:source:clinic";
        assert_eq!(granted_system_scopes(Some("system/*.cruds"), registered).unwrap(), own);
        assert_eq!(
            granted_system_scopes(Some("system/Patient.cu"), registered).unwrap(),
            "system/Patient.cu?_source=urn:braid:source:clinic"
        );
        // Asked with the filter: within the registration as written.
        assert_eq!(granted_system_scopes(Some(registered), registered).unwrap(), registered);
        // Another filter is kept and the registration's added.
        assert_eq!(
            granted_system_scopes(Some("system/Observation.rs?status=final"), registered).unwrap(),
            "system/Observation.rs?status=final&_source=urn:braid:source:clinic"
        );
        // A wildcard asked of a registration by type is granted by type.
        assert_eq!(
            granted_system_scopes(Some("system/*.rs"), "system/Patient.cruds?_source=x system/Condition.r").unwrap(),
            "system/Patient.rs?_source=x"
        );
        // Interactions beyond the registration's are still refused.
        let narrow = "system/Patient.rs?_source=urn:braid:source:clinic";
        assert_eq!(granted_system_scopes(Some("system/Patient.cruds"), narrow).unwrap_err().error, "invalid_scope");
    }
}
