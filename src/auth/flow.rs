//! The authorization code flow (SMART App Launch): the checks of an `authorize` request, the
//! login with its second factor, the consent, and the single-use code the app exchanges at the
//! token endpoint (with PKCE). The pages themselves are `http/authorize.rs`.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::clients::{Client, GrantType};
use super::scope::{Context, Scope, parse_scope, parse_scopes};
use super::session::{FLOW_LIFETIME_SECS, Flow};
use super::users::{Role, User};
use super::{AuthState, Endpoints, TokenError, now_secs, random_bytes, totp, users};
use crate::config::TotpPolicy;
use crate::fhir::FhirError;

/// How long a code may wait for its exchange.
pub const CODE_LIFETIME_SECS: u64 = 60;

/// Longest `scope` of an authorization request: the flow cookie carries it.
pub const MAX_AUTHORIZE_SCOPE_BYTES: usize = 2000;

/// Longest `state` and `nonce` carried through a flow.
pub const MAX_STATE_BYTES: usize = 512;

/// Failed logins (or second-factor codes) allowed per account, then per address, within
/// [`FAILURE_WINDOW_SECS`].
pub const MAX_FAILURES_PER_ACCOUNT: u32 = 5;
pub const MAX_FAILURES_PER_ADDRESS: u32 = 20;
pub const FAILURE_WINDOW_SECS: u64 = 900;

/// Accounts and addresses whose failures are remembered at once.
const MAX_TRACKED: usize = 100_000;

/// The parameters of an `authorize` request.
#[derive(Debug, Default, Deserialize)]
pub struct AuthorizeParams {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub aud: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub nonce: Option<String>,
    pub launch: Option<String>,
}

/// Why an `authorize` request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeError {
    /// Shown to the user, never sent to the redirect URI (which may not be the client's, or
    /// not be trusted): an unknown client, a redirect URI it did not register, another `aud`.
    Page(String),
    /// Sent back to the client at its redirect URI, with `state` (RFC 6749 §4.1.2.1).
    Redirect { redirect_uri: String, error: &'static str, description: String, state: Option<String> },
}

impl AuthorizeError {
    fn redirect(
        params: &AuthorizeParams,
        redirect_uri: &str,
        error: &'static str,
        description: impl Into<String>,
    ) -> Self {
        AuthorizeError::Redirect {
            redirect_uri: redirect_uri.to_owned(),
            error,
            description: description.into(),
            state: params.state.clone(),
        }
    }
}

/// Why a login step failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// Wrong username or password, or code: the same message whichever it was.
    Wrong,
    /// Too many failures lately, for this account or from this address.
    TooMany,
    Fault,
}

impl From<FhirError> for LoginError {
    fn from(_: FhirError) -> Self {
        LoginError::Fault
    }
}

impl From<crate::store::StoreError> for LoginError {
    fn from(_: crate::store::StoreError) -> Self {
        LoginError::Fault
    }
}

/// Counts recent failures per key (an account, an address) in fixed windows. In memory: a
/// restart forgets them, which costs an attacker one window, and failures never turn into
/// database writes.
pub struct FailureCounter {
    counts: Mutex<HashMap<String, (u32, u64)>>,
}

impl FailureCounter {
    pub fn new() -> FailureCounter {
        FailureCounter { counts: Mutex::new(HashMap::new()) }
    }

    pub(super) fn count(&self, key: &str, now: u64) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        counts.get(key).filter(|(_, start)| now < start + FAILURE_WINDOW_SECS).map_or(0, |(count, _)| *count)
    }

    pub(super) fn fail(&self, key: &str, now: u64) {
        let mut counts = self.counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if counts.len() >= MAX_TRACKED && !counts.contains_key(key) {
            counts.retain(|_, (_, start)| now < *start + FAILURE_WINDOW_SECS);
            if counts.len() >= MAX_TRACKED {
                counts.clear();
            }
        }
        let entry = counts.entry(key.to_owned()).or_insert((0, now));
        if now >= entry.1 + FAILURE_WINDOW_SECS {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

impl Default for FailureCounter {
    fn default() -> Self {
        Self::new()
    }
}

/// A code as stored (`code/<sha256(code)>`), until exchanged or expired.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CodeRecord {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub scope: String,
    pub username: String,
    /// The user's role when they consented.
    #[serde(default = "Role::least_privileged")]
    pub role: Role,
    pub patient: Option<String>,
    pub fhir_user: Option<String>,
    pub nonce: Option<String>,
    pub need_patient_banner: bool,
}

pub(super) fn code_key(code: &str) -> Vec<u8> {
    let mut key = b"code/".to_vec();
    key.extend_from_slice(&Sha256::digest(code.as_bytes()));
    key
}

/// `BASE64URL(SHA256(verifier))` (RFC 7636 §4.2, S256).
pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl AuthState {
    /// Checks an `authorize` request and starts its flow.
    pub fn begin(&self, params: &AuthorizeParams, endpoints: &Endpoints) -> Result<Flow, AuthorizeError> {
        let page = |message: String| AuthorizeError::Page(message);
        let client_id =
            params.client_id.as_deref().ok_or_else(|| page("the request names no client (client_id)".into()))?;
        let client = self
            .store
            .auth_read(|read| super::clients::find(read, client_id, self.portal_origin(endpoints)))
            .map_err(|_| page("the authorization server cannot read its clients; try again later".into()))?
            .ok_or_else(|| {
                if client_id == super::clients::PORTAL_CLIENT_ID {
                    page(format!(
                        "the patient portal signs in only at this server's configured base URL (base_url), over HTTPS, \
                         or on a loopback address; not at {}",
                        endpoints.origin()
                    ))
                } else {
                    page(format!("there is no client '{client_id}'"))
                }
            })?;
        let redirect_uri = match params.redirect_uri.as_deref() {
            Some(uri) if client.redirect_uris.iter().any(|registered| registered == uri) => uri.to_owned(),
            Some(uri) => return Err(page(format!("{uri} is not a redirect URI registered for this client"))),
            None => return Err(page("the request has no redirect_uri".into())),
        };
        let aud = params.aud.as_deref().map(|aud| aud.trim_end_matches('/'));
        if aud != Some(endpoints.fhir_base.trim_end_matches('/')) {
            return Err(page(format!(
                "the request's aud must be this server's FHIR base, {}; no code was issued",
                endpoints.fhir_base
            )));
        }
        let redirect = |error, description: &str| AuthorizeError::redirect(params, &redirect_uri, error, description);
        if params.response_type.as_deref() != Some("code") {
            return Err(redirect("unsupported_response_type", "response_type must be code"));
        }
        if !client.grant_types.contains(&GrantType::AuthorizationCode) {
            return Err(redirect("unauthorized_client", "this client may not use the authorization code flow"));
        }
        if params.state.as_ref().is_some_and(|state| state.len() > MAX_STATE_BYTES)
            || params.nonce.as_ref().is_some_and(|nonce| nonce.len() > MAX_STATE_BYTES)
        {
            return Err(redirect("invalid_request", "state and nonce are at most 512 bytes"));
        }
        let challenge = params.code_challenge.as_deref().filter(|c| !c.is_empty());
        let Some(challenge) = challenge else {
            return Err(redirect(
                "invalid_request",
                "PKCE is required: send code_challenge with code_challenge_method=S256",
            ));
        };
        if params.code_challenge_method.as_deref() != Some("S256") {
            return Err(redirect("invalid_request", "code_challenge_method must be S256"));
        }
        if challenge.len() != 43 || URL_SAFE_NO_PAD.decode(challenge).is_err() {
            return Err(redirect("invalid_request", "code_challenge must be a base64url SHA-256 digest"));
        }
        let asked = params.scope.as_deref().unwrap_or("");
        if asked.len() > MAX_AUTHORIZE_SCOPE_BYTES {
            return Err(redirect("invalid_scope", "the scope parameter is too long"));
        }
        let scope = grantable(asked, &client);
        if scope.is_empty() {
            return Err(redirect("invalid_scope", "none of the scopes asked for may be granted to this client"));
        }
        let launch_patient = match params.launch.as_deref() {
            Some(launch) => Some(
                self.redeem_launch(launch, &client).map_err(|description| redirect("invalid_request", &description))?,
            ),
            None => None,
        };
        Ok(Flow {
            client_id: client.client_id,
            redirect_uri,
            scope,
            state: params.state.clone(),
            code_challenge: challenge.to_owned(),
            nonce: params.nonce.clone(),
            launch_patient,
            user: None,
            second_factor_done: false,
            csrf: URL_SAFE_NO_PAD.encode(random_bytes::<18>()),
            expires: now_secs() + FLOW_LIFETIME_SECS,
        })
    }

    /// The patient of an EHR launch this server issued to `client` (see [`create_launch`]).
    fn redeem_launch(&self, launch: &str, client: &Client) -> Result<String, String> {
        let record = self
            .store
            .auth_read(|read| read.get(&launch_key(launch)))
            .map_err(|_| "the launch cannot be read".to_owned())?
            .ok_or("the launch is unknown or has expired")?;
        let record: LaunchRecord = serde_json::from_slice(&record).map_err(|_| "the launch is damaged".to_owned())?;
        if record.client_id != client.client_id {
            return Err("the launch was issued to another client".into());
        }
        if record.expires <= now_secs() {
            return Err("the launch has expired".into());
        }
        Ok(record.patient)
    }

    /// Checks a username and password for `flow`, counting failures per account and per
    /// address (`address`). The answer takes as long whether or not the account exists.
    pub async fn login(&self, flow: &Flow, username: &str, password: &str, address: &str) -> Result<Flow, LoginError> {
        let now = now_secs();
        let username = users::normalize_username(username).unwrap_or_default();
        let account_key = format!("account:{username}");
        let address_key = format!("address:{address}");
        if self.failures.count(&account_key, now) >= MAX_FAILURES_PER_ACCOUNT
            || self.failures.count(&address_key, now) >= MAX_FAILURES_PER_ADDRESS
        {
            return Err(LoginError::TooMany);
        }
        let user = self.store.auth_read(|read| users::find(read, &username))?;
        let hash = user.as_ref().map_or_else(|| super::password::dummy_hash().to_owned(), |u| u.password_hash.clone());
        let password = password.to_owned();
        let right = tokio::task::spawn_blocking(move || super::password::matches(&hash, &password))
            .await
            .map_err(|_| LoginError::Fault)?;
        match user {
            Some(user) if right => {
                let mut flow = flow.clone();
                flow.second_factor_done = self.totp_policy == TotpPolicy::Off
                    || (self.totp_policy == TotpPolicy::Optional && !user.totp.as_ref().is_some_and(|t| t.confirmed));
                flow.user = Some(user.username);
                Ok(flow)
            }
            _ => {
                self.failures.fail(&account_key, now);
                self.failures.fail(&address_key, now);
                tracing::warn!(address, "a failed login");
                Err(LoginError::Wrong)
            }
        }
    }

    /// The secret a user must enrol in their authenticator app, or `None` once they have: a
    /// secret is shown only until the first code from it is accepted.
    pub async fn enrolment_secret(&self, username: &str) -> Result<Option<Vec<u8>>, FhirError> {
        let username = username.to_owned();
        let fresh = URL_SAFE_NO_PAD.encode(totp::new_secret());
        self.store
            .auth_write(move |txn| {
                let Some(mut user) = users::find_in(txn, &username)? else {
                    return Err(FhirError::not_found("the account no longer exists"));
                };
                match &user.totp {
                    Some(state) if state.confirmed => Ok(None),
                    Some(state) => Ok(Some(state.secret_bytes())),
                    None => {
                        let state = users::TotpState { secret: fresh.clone(), confirmed: false, last_step: None };
                        let secret = state.secret_bytes();
                        user.totp = Some(state);
                        users::save_in(txn, &user)?;
                        Ok(Some(secret))
                    }
                }
            })
            .await
    }

    /// Checks a second-factor code for `flow`'s user: right, and from a time step later than
    /// the last one accepted (so a code works once). Confirms an enrolment.
    pub async fn second_factor(&self, flow: &Flow, code: &str, address: &str) -> Result<Flow, LoginError> {
        let now = now_secs();
        let username = flow.user.clone().ok_or(LoginError::Wrong)?;
        let account_key = format!("account:{username}");
        let address_key = format!("address:{address}");
        if self.failures.count(&account_key, now) >= MAX_FAILURES_PER_ACCOUNT
            || self.failures.count(&address_key, now) >= MAX_FAILURES_PER_ADDRESS
        {
            return Err(LoginError::TooMany);
        }
        let code = code.to_owned();
        let user = username.clone();
        let accepted = self
            .store
            .auth_write(move |txn| {
                let Some(mut user) = users::find_in(txn, &user)? else { return Ok(false) };
                let Some(state) = &mut user.totp else { return Ok(false) };
                let Some(step) = totp::verify(&state.secret_bytes(), &code, now, state.last_step) else {
                    return Ok(false);
                };
                state.last_step = Some(step);
                state.confirmed = true;
                users::save_in(txn, &user)?;
                Ok(true)
            })
            .await?;
        if accepted {
            let mut flow = flow.clone();
            flow.second_factor_done = true;
            Ok(flow)
        } else {
            self.failures.fail(&account_key, now);
            self.failures.fail(&address_key, now);
            tracing::warn!(address, "a wrong or replayed second-factor code");
            Err(LoginError::Wrong)
        }
    }

    /// The user of a flow that has passed both factors.
    pub fn flow_user(&self, flow: &Flow) -> Result<User, FhirError> {
        let username = flow
            .user
            .as_deref()
            .filter(|_| flow.second_factor_done)
            .ok_or_else(|| FhirError::incorrect(crate::fhir::IssueCode::Login, "the login is not complete"))?;
        self.store
            .auth_read(|read| users::find(read, username))?
            .ok_or_else(|| FhirError::not_found("the account no longer exists"))
    }

    /// The user consented to `chosen` (a subset of what the flow asked): issues the code, and
    /// returns the redirect URI with it.
    /// `picked` is the patient a practitioner chose for a standalone launch (see
    /// [`needs_patient_choice`]); it must be a Patient of this server.
    pub async fn consent(&self, flow: &Flow, chosen: &[String], picked: Option<&str>) -> Result<String, FhirError> {
        let user = self.flow_user(flow)?;
        let offered: Vec<&str> = flow.scope.split(' ').collect();
        let chosen: Vec<&str> = chosen.iter().map(String::as_str).filter(|s| offered.contains(s)).collect();
        let picked = match picked.map(str::trim).filter(|id| !id.is_empty()) {
            Some(id) if needs_patient_choice(flow, &user) => {
                let patient_type = crate::fhir::ResourceType::PATIENT;
                let exists = crate::fhir::Id::parse(id).is_ok() && self.store.snapshot()?.is_live(patient_type, id)?;
                if !exists {
                    return Err(FhirError::not_found(format!("There is no Patient '{id}' on this server")));
                }
                Some(id.to_owned())
            }
            _ => None,
        };
        let launch_patient = flow.launch_patient.as_deref().or(picked.as_deref());
        let (scope, patient) = for_user(&chosen, &user, launch_patient);
        let code = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
        let record = CodeRecord {
            client_id: flow.client_id.clone(),
            redirect_uri: flow.redirect_uri.clone(),
            code_challenge: flow.code_challenge.clone(),
            scope,
            username: user.username.clone(),
            role: user.role,
            fhir_user: user.fhir_user(),
            patient,
            nonce: flow.nonce.clone(),
            need_patient_banner: flow.launch_patient.is_none(),
        };
        let value = serde_json::to_vec(&record).map_err(|_| FhirError::fault("auth"))?;
        let key = code_key(&code);
        let expires = now_secs() + CODE_LIFETIME_SECS;
        self.store
            .auth_write(move |txn| {
                txn.insert_expiring(&key, &value, expires);
                Ok(())
            })
            .await?;
        let mut query = vec![("code", code.as_str())];
        if let Some(state) = &flow.state {
            query.push(("state", state));
        }
        Ok(with_query(&flow.redirect_uri, &query))
    }

    /// Exchanges a code (single use: a second exchange fails, and so does one after a failed
    /// check) for the grant it stands for.
    pub async fn redeem_code(
        &self,
        code: &str,
        client_id: &str,
        redirect_uri: Option<&str>,
        verifier: Option<&str>,
    ) -> Result<CodeRecord, TokenError> {
        let key = code_key(code);
        let record = self
            .store
            .auth_write(move |txn| {
                let found = txn.get(&key)?;
                txn.remove(&key);
                Ok(found)
            })
            .await?;
        let invalid = |description: &str| TokenError::new(400, "invalid_grant", description);
        let record: CodeRecord = record
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .ok_or_else(|| invalid("the code is unknown, expired or already used"))?;
        if record.client_id != client_id {
            return Err(invalid("the code was issued to another client"));
        }
        if redirect_uri != Some(record.redirect_uri.as_str()) {
            return Err(invalid("redirect_uri differs from the one of the authorization request"));
        }
        match verifier.map(str::trim).filter(|v| !v.is_empty()) {
            Some(verifier) if s256(verifier) == record.code_challenge => Ok(record),
            Some(_) => Err(invalid("the code_verifier does not match the code_challenge")),
            None => Err(invalid("code_verifier is required (PKCE)")),
        }
    }
}

/// How long a launch waits for its app.
pub const LAUNCH_LIFETIME_SECS: u64 = 3600;

/// Issues a launch (an EHR launch of `client_id` with `patient` in context), valid for an hour.
/// The client must exist and use the authorization code flow.
pub async fn create_launch(store: &crate::store::Store, client_id: &str, patient: &str) -> Result<String, FhirError> {
    let patient = crate::fhir::Id::parse(patient)
        .map_err(|_| FhirError::incorrect(crate::fhir::IssueCode::Value, format!("'{patient}' is not a FHIR id")))?;
    // A launch names its client; the redirect URI is checked when the app comes to authorize.
    let client = store.auth_read(|read| super::clients::find(read, client_id, None))?.ok_or_else(|| {
        FhirError::incorrect(crate::fhir::IssueCode::Value, format!("there is no client {client_id}"))
    })?;
    if !client.grant_types.contains(&GrantType::AuthorizationCode) {
        return Err(FhirError::incorrect(
            crate::fhir::IssueCode::Value,
            format!("client {client_id} does not use the authorization code flow, so it cannot be launched"),
        ));
    }
    let launch = URL_SAFE_NO_PAD.encode(random_bytes::<24>());
    let expires = now_secs() + LAUNCH_LIFETIME_SECS;
    let record = LaunchRecord { client_id: client_id.to_owned(), patient: patient.as_str().to_owned(), expires };
    let record = serde_json::to_vec(&record).map_err(|_| FhirError::fault("auth"))?;
    let key = launch_key(&launch);
    store
        .auth_write(move |txn| {
            txn.insert_expiring(&key, &record, expires);
            Ok(())
        })
        .await?;
    Ok(launch)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct LaunchRecord {
    client_id: String,
    patient: String,
    expires: u64,
}

fn launch_key(launch: &str) -> Vec<u8> {
    let mut key = b"launch/".to_vec();
    key.extend_from_slice(&Sha256::digest(launch.as_bytes()));
    key
}

/// The scopes asked for that the client may have, as written, space-separated; unknown ones and
/// `system/` ones (never granted through a login) are left out.
fn grantable(asked: &str, client: &Client) -> String {
    let registered = parse_scopes(&client.scope).map(|s| s.granted).unwrap_or_default();
    let mut granted: Vec<&str> = Vec::new();
    for written in asked.split(' ').filter(|w| !w.is_empty()) {
        let Some(scope) = parse_scope(written) else { continue };
        let system = matches!(&scope, Scope::Resource(r) if r.context == Context::System);
        if !system && scope.within(&registered) && !granted.contains(&written) {
            granted.push(written);
        }
    }
    granted.join(" ")
}

/// Whether the user must choose whose record the app opens: a practitioner or administrator
/// in a standalone launch (no EHR launch gave a patient) of an app that asked for
/// `launch/patient`. A patient's context is always their own record.
pub fn needs_patient_choice(flow: &Flow, user: &User) -> bool {
    user.role != Role::Patient && flow.launch_patient.is_none() && flow.scope.split(' ').any(|s| s == "launch/patient")
}

/// What a user may actually be granted of `chosen`, and the patient in context: a patient's
/// tokens carry `patient/` scopes for their own record only; practitioners and administrators
/// get `user/` scopes, and `patient/` scopes only with a patient from an EHR launch.
fn for_user(chosen: &[&str], user: &User, launch_patient: Option<&str>) -> (String, Option<String>) {
    let patient = match user.role {
        Role::Patient => user.patient.clone(),
        Role::Practitioner | Role::Admin => launch_patient.map(str::to_owned),
    };
    let kept: Vec<&str> = chosen
        .iter()
        .copied()
        .filter(|written| match parse_scope(written) {
            Some(Scope::Resource(scope)) => match scope.context {
                Context::Patient => patient.is_some(),
                Context::User => user.role != Role::Patient,
                Context::System => false,
            },
            Some(_) => true,
            None => false,
        })
        .collect();
    (kept.join(" "), patient)
}

/// `uri` with `pairs` added to its query.
pub fn with_query(uri: &str, pairs: &[(&str, &str)]) -> String {
    let encode = |text: &str| percent_encoding::utf8_percent_encode(text, QUERY_ENCODE).to_string();
    let query: Vec<String> = pairs.iter().map(|(name, value)| format!("{}={}", encode(name), encode(value))).collect();
    let separator = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{separator}{}", query.join("&"))
}

/// What a query value escapes.
const QUERY_ENCODE: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_is_the_rfc_7636_example() {
        assert_eq!(s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"), "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }

    #[test]
    fn a_failure_counter_counts_within_its_window() {
        let counter = FailureCounter::new();
        for _ in 0..3 {
            counter.fail("account:ann", 1_000);
        }
        assert_eq!(counter.count("account:ann", 1_000 + FAILURE_WINDOW_SECS - 1), 3);
        assert_eq!(counter.count("account:ann", 1_000 + FAILURE_WINDOW_SECS), 0);
        assert_eq!(counter.count("account:bob", 1_000), 0);
    }

    #[test]
    fn users_get_the_scopes_of_their_role() {
        let patient = User {
            username: "ann".into(),
            password_hash: String::new(),
            role: Role::Patient,
            patient: Some("p1".into()),
            fhir_user: None,
            totp: None,
            created: 0,
        };
        let chosen = ["patient/*.rs", "user/*.rs", "openid", "fhirUser", "launch/patient"];
        assert_eq!(
            for_user(&chosen, &patient, None),
            ("patient/*.rs openid fhirUser launch/patient".into(), Some("p1".into()))
        );
        let doctor = User { role: Role::Practitioner, patient: None, ..patient };
        assert_eq!(for_user(&chosen, &doctor, None), ("user/*.rs openid fhirUser launch/patient".into(), None));
        assert_eq!(for_user(&chosen, &doctor, Some("p2")).1, Some("p2".into()));
        assert!(for_user(&chosen, &doctor, Some("p2")).0.contains("patient/*.rs"));
    }

    #[test]
    fn redirects_carry_their_parameters_encoded() {
        assert_eq!(
            with_query("https://app/cb", &[("code", "a+b"), ("state", "x y")]),
            "https://app/cb?code=a%2Bb&state=x%20y"
        );
        assert_eq!(
            with_query("https://app/cb?k=1", &[("error", "access_denied")]),
            "https://app/cb?k=1&error=access_denied"
        );
    }
}
