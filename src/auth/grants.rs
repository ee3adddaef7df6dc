//! What a user's consent leaves behind: grants with their refresh tokens, the token responses
//! of the authorization code and refresh grants, revocation and introspection.
//!
//! Every consent a user gives an app is a grant, stored as `grant/<id>` and listed under the
//! user as `user-grant/<username>/<id>` (so that they can see and revoke the apps they
//! authorised). With `offline_access` or `online_access` it lasts and has a refresh token
//! `<id>.<generation>.<secret>`, of which only the SHA-256 of the secret is kept; without, it
//! lasts as long as its access token. Each refresh rotates the token (the generation
//! grows, the secret changes). Presenting an older token means that someone holds a copy: the
//! whole grant is revoked, and with it every access token issued under it (RFC 9700 §4.14).

use std::collections::HashSet;
use std::sync::Mutex;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::clients::GrantType;
use super::scope::{Scope, parse_scope, parse_scopes};
use super::token::{self, AccessClaims, Grant};
use super::users::Role;
use super::{AuthState, Endpoints, TokenError, TokenForm, TokenResponse, new_jti, now_secs, random_bytes};
use crate::fhir::FhirError;
use crate::store::StoreError;
use crate::store::auth::AuthRead;

/// How long an `offline_access` grant (its refresh token) lasts without being used.
pub const OFFLINE_GRANT_SECS: u64 = 90 * 24 * 3600;

/// How long an `online_access` grant lasts.
pub const ONLINE_GRANT_SECS: u64 = 12 * 3600;

const GRANT_PREFIX: &[u8] = b"grant/";
const USER_GRANT_PREFIX: &[u8] = b"user-grant/";

/// Most grants of one user listed.
pub const MAX_LISTED_GRANTS: usize = 200;
const REVOKED_PREFIX: &[u8] = b"revoked/";

#[derive(Debug, Clone, Serialize, Deserialize)]
struct GrantRecord {
    client_id: String,
    username: String,
    #[serde(default = "Role::least_privileged")]
    role: Role,
    scope: String,
    patient: Option<String>,
    fhir_user: Option<String>,
    generation: u32,
    /// SHA-256 of the current refresh token's secret, hex.
    secret_hash: String,
    expires: u64,
    revoked: bool,
    /// When the user consented (seconds since the epoch; 0 for grants older than the field).
    #[serde(default)]
    created: u64,
}

/// A grant as its user sees it: which app, what it may do, since and until when.
#[derive(Debug, Clone, Serialize)]
pub struct GrantSummary {
    pub id: String,
    pub client_id: String,
    pub scope: String,
    pub created: u64,
    pub expires: u64,
    /// Whether the app can go on without the user (it holds a refresh token).
    pub lasting: bool,
}

/// Marks a database whose grants are all listed under their users (grants made before the list
/// existed are added to it once, at the first start that knows it).
const USER_GRANTS_INDEXED: &[u8] = b"meta/user-grants-indexed";

/// Lists every grant in force under its user, once per database (see [`USER_GRANTS_INDEXED`]).
pub(super) async fn index_user_grants(store: &crate::store::Store) -> Result<(), FhirError> {
    if store.auth_read(|read| read.get(USER_GRANTS_INDEXED))?.is_some() {
        return Ok(());
    }
    let now = now_secs();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.auth_read(|read| read.scan_after(GRANT_PREFIX, after.as_deref(), 10_000))?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        let listed: Vec<(Vec<u8>, u64)> = page
            .iter()
            .filter_map(|(key, value)| {
                let grant: GrantRecord = serde_json::from_slice(value).ok()?;
                let gid = String::from_utf8_lossy(&key[GRANT_PREFIX.len()..]).into_owned();
                (!grant.revoked && grant.expires > now).then(|| (user_grant_key(&grant.username, &gid), grant.expires))
            })
            .collect();
        store
            .auth_write(move |txn| {
                for (key, expires) in &listed {
                    txn.insert_expiring(key, &[], *expires);
                }
                Ok(())
            })
            .await?;
    }
    store
        .auth_write(|txn| {
            txn.insert(USER_GRANTS_INDEXED, &[]);
            Ok(())
        })
        .await?;
    Ok(())
}

fn user_grant_key(username: &str, gid: &str) -> Vec<u8> {
    [USER_GRANT_PREFIX, username.as_bytes(), b"/", gid.as_bytes()].concat()
}

/// Who an access token for a user is issued to, and what it grants.
#[derive(Clone, Copy)]
struct UserGrant<'a> {
    client_id: &'a str,
    username: &'a str,
    role: Role,
    scope: &'a str,
    patient: Option<&'a str>,
    fhir_user: Option<&'a str>,
}

fn grant_key(gid: &str) -> Vec<u8> {
    [GRANT_PREFIX, gid.as_bytes()].concat()
}

fn hash_hex(secret: &str) -> String {
    crate::fhir::hex(&Sha256::digest(secret.as_bytes()))
}

/// The revoked access tokens and grants, in memory (loaded at start, updated after each
/// revocation is committed).
pub struct Revoked {
    jtis: Mutex<HashSet<String>>,
    grants: Mutex<HashSet<String>>,
    /// Clients removed while tokens issued to them may still be alive.
    clients: Mutex<HashSet<String>>,
    /// Whether either set holds anything: most servers have revoked nothing, and every request
    /// then skips both locks.
    any: std::sync::atomic::AtomicBool,
}

impl Revoked {
    pub fn load(read: &AuthRead) -> Result<Revoked, StoreError> {
        let jtis: HashSet<String> = read
            .scan(REVOKED_PREFIX)?
            .into_iter()
            .map(|(key, _)| String::from_utf8_lossy(&key[REVOKED_PREFIX.len()..]).into_owned())
            .collect();
        let mut grants = HashSet::new();
        for (key, value) in read.scan(GRANT_PREFIX)? {
            let record: GrantRecord = serde_json::from_slice(&value).map_err(|_| StoreError::Corrupt(key.clone()))?;
            if record.revoked {
                grants.insert(String::from_utf8_lossy(&key[GRANT_PREFIX.len()..]).into_owned());
            }
        }
        let prefix = super::clients::REMOVED_PREFIX;
        let clients: HashSet<String> = read
            .scan(prefix)?
            .into_iter()
            .map(|(key, _)| String::from_utf8_lossy(&key[prefix.len()..]).into_owned())
            .collect();
        let any = std::sync::atomic::AtomicBool::new(!jtis.is_empty() || !grants.is_empty() || !clients.is_empty());
        Ok(Revoked { jtis: Mutex::new(jtis), grants: Mutex::new(grants), clients: Mutex::new(clients), any })
    }

    /// Whether the token behind `grant` was revoked, or the grant it was issued under.
    pub fn contains(&self, grant: &Grant) -> bool {
        if !self.any.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let has = |set: &Mutex<HashSet<String>>, item: &str| {
            set.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(item)
        };
        has(&self.jtis, &grant.jti)
            || grant.gid.as_ref().is_some_and(|gid| has(&self.grants, gid))
            || has(&self.clients, &grant.client_id)
    }

    /// Whether `client_id` is listed as removed.
    pub fn client_removed(&self, client_id: &str) -> bool {
        self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).contains(client_id)
    }

    /// Lists a removed client (its removal is committed): its tokens stop working at once.
    pub fn add_client(&self, client_id: &str) {
        self.clients.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(client_id.to_owned());
        self.any.store(true, std::sync::atomic::Ordering::Release);
    }

    fn add_jti(&self, jti: &str) {
        self.jtis.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(jti.to_owned());
        self.any.store(true, std::sync::atomic::Ordering::Release);
    }

    fn add_grant(&self, gid: &str) {
        self.grants.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(gid.to_owned());
        self.any.store(true, std::sync::atomic::Ordering::Release);
    }
}

impl AuthState {
    /// `grant_type=authorization_code`: a code from the consent, its PKCE verifier, and the
    /// client (a public one by its id; a confidential one authenticated).
    pub(super) async fn authorization_code(
        &self,
        form: &TokenForm,
        basic: Option<(String, String)>,
        endpoints: &Endpoints,
    ) -> Result<TokenResponse, TokenError> {
        let now = now_secs();
        let code = form.code.as_deref().ok_or_else(|| TokenError::invalid_request("code is required"))?;
        let client = self.authenticate_client(form, basic, endpoints, now, true).await?;
        if !client.grant_types.contains(&GrantType::AuthorizationCode) {
            return Err(TokenError::unauthorized_client("this client may not use the authorization_code grant"));
        }
        let record = self
            .redeem_code(code, &client.client_id, form.redirect_uri.as_deref(), form.code_verifier.as_deref())
            .await?;
        let lasting = grant_lifetime(&record.scope);
        // A grant without a refresh token (generation 0, no secret) ends with its access token:
        // no refresh token can match it.
        let gid = URL_SAFE_NO_PAD.encode(random_bytes::<16>());
        let secret = lasting.map(|_| URL_SAFE_NO_PAD.encode(random_bytes::<32>()));
        let grant = GrantRecord {
            client_id: client.client_id.clone(),
            username: record.username.clone(),
            role: record.role,
            scope: record.scope.clone(),
            patient: record.patient.clone(),
            fhir_user: record.fhir_user.clone(),
            generation: u32::from(secret.is_some()),
            secret_hash: secret.as_deref().map(hash_hex).unwrap_or_default(),
            expires: now + lasting.unwrap_or(self.access_token_secs),
            revoked: false,
            created: now,
        };
        let value = serde_json::to_vec(&grant).map_err(|_| TokenError::server_error())?;
        let (key, listed) = (grant_key(&gid), user_grant_key(&record.username, &gid));
        let expires = grant.expires;
        self.store
            .auth_write(move |txn| {
                txn.insert_expiring(&key, &value, expires);
                txn.insert_expiring(&listed, &[], expires);
                Ok(())
            })
            .await?;
        let refresh_token = secret.map(|secret| format!("{gid}.1.{secret}"));
        let gid = Some(gid);
        let user = UserGrant {
            client_id: &client.client_id,
            username: &record.username,
            role: record.role,
            scope: &record.scope,
            patient: record.patient.as_deref(),
            fhir_user: record.fhir_user.as_deref(),
        };
        let mut response = self.user_token(endpoints, &user, gid, record.nonce.as_deref())?;
        response.refresh_token = refresh_token;
        response.need_patient_banner = record.patient.as_ref().map(|_| record.need_patient_banner);
        Ok(response)
    }

    /// `grant_type=refresh_token`: rotates the refresh token; a narrower `scope` gives a
    /// narrower access token (the grant keeps its own).
    pub(super) async fn refresh(
        &self,
        form: &TokenForm,
        basic: Option<(String, String)>,
        endpoints: &Endpoints,
    ) -> Result<TokenResponse, TokenError> {
        let now = now_secs();
        let presented =
            form.refresh_token.as_deref().ok_or_else(|| TokenError::invalid_request("refresh_token is required"))?;
        let client = self.authenticate_client(form, basic, endpoints, now, true).await?;
        let invalid = || TokenError::invalid_grant("the refresh token is unknown, expired, revoked or already used");
        let mut parts = presented.splitn(3, '.');
        let (Some(gid), Some(generation), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid());
        };
        let generation: u32 = generation.parse().map_err(|_| invalid())?;
        let (gid, secret, client_id) = (gid.to_owned(), secret.to_owned(), client.client_id.clone());
        let fresh = URL_SAFE_NO_PAD.encode(random_bytes::<32>());
        let key = grant_key(&gid);
        let fresh_hash = hash_hex(&fresh);
        // Checked and rotated in one piece of work: of two uses of one token, one wins.
        let outcome = self
            .store
            .auth_write(move |txn| {
                let Some(bytes) = txn.get(&key)? else { return Ok(Refreshed::Invalid) };
                let mut grant: GrantRecord =
                    serde_json::from_slice(&bytes).map_err(|_| FhirError::fault("a stored grant is damaged"))?;
                if grant.revoked || grant.expires <= now || grant.client_id != client_id {
                    return Ok(Refreshed::Invalid);
                }
                if generation != grant.generation || hash_hex(&secret) != grant.secret_hash {
                    if generation < grant.generation {
                        // An older token of this grant: a copy is in someone else's hands.
                        grant.revoked = true;
                        let value = serde_json::to_vec(&grant).map_err(|_| FhirError::fault("auth"))?;
                        txn.insert(&key, &value);
                        return Ok(Refreshed::Reused);
                    }
                    return Ok(Refreshed::Invalid);
                }
                grant.generation += 1;
                grant.secret_hash = fresh_hash.clone();
                let value = serde_json::to_vec(&grant).map_err(|_| FhirError::fault("auth"))?;
                txn.insert(&key, &value);
                Ok(Refreshed::Rotated(Box::new(grant)))
            })
            .await?;
        let grant = match outcome {
            Refreshed::Rotated(grant) => grant,
            Refreshed::Reused => {
                self.revoked.add_grant(&gid);
                tracing::warn!(client = %client.client_id, "a refresh token was used twice; its grant is revoked");
                return Err(invalid());
            }
            Refreshed::Invalid => return Err(invalid()),
        };
        let scope = match form.scope.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            None => grant.scope.clone(),
            Some(asked) => {
                let held = parse_scopes(&grant.scope).map(|s| s.granted).unwrap_or_default();
                let asked_scopes = parse_scopes(asked).map_err(|error| TokenError::invalid_scope(error.to_string()))?;
                if !asked_scopes.unknown.is_empty() || !asked_scopes.within(&held) {
                    return Err(TokenError::invalid_scope("a refresh may narrow the grant's scopes, never widen them"));
                }
                asked.split(' ').filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ")
            }
        };
        let user = UserGrant {
            client_id: &grant.client_id,
            username: &grant.username,
            role: grant.role,
            scope: &scope,
            patient: grant.patient.as_deref(),
            fhir_user: grant.fhir_user.as_deref(),
        };
        let mut response = self.user_token(endpoints, &user, Some(gid.clone()), None)?;
        response.refresh_token = Some(format!("{gid}.{}.{fresh}", grant.generation));
        Ok(response)
    }

    /// The access token (and the launch context of its response, and an id_token with
    /// `openid`) for a user's grant.
    fn user_token(
        &self,
        endpoints: &Endpoints,
        user: &UserGrant<'_>,
        gid: Option<String>,
        nonce: Option<&str>,
    ) -> Result<TokenResponse, TokenError> {
        let UserGrant { client_id, username, role, scope, patient, fhir_user } = *user;
        let now = now_secs();
        let has = |wanted: Scope| scope.split(' ').any(|w| parse_scope(w) == Some(wanted.clone()));
        let fhir_user =
            fhir_user.filter(|_| has(Scope::FhirUser)).map(|relative| format!("{}/{relative}", endpoints.fhir_base));
        let claims = AccessClaims {
            iss: endpoints.fhir_base.clone(),
            aud: endpoints.fhir_base.clone(),
            sub: username.to_owned(),
            client_id: client_id.to_owned(),
            scope: scope.to_owned(),
            iat: now,
            exp: now + self.access_token_secs,
            jti: new_jti(),
            patient: patient.map(str::to_owned),
            fhir_user: fhir_user.clone(),
            gid,
            role: Some(role),
            source: None,
        };
        let ring = self.keys();
        let access_token = token::issue(&ring, &claims)?;
        let mut response = TokenResponse::bearer(access_token, self.access_token_secs, scope.to_owned());
        response.smart_style_url = self.smart_style_url.clone();
        if has(Scope::OpenId) {
            let id_claims = token::IdClaims {
                iss: endpoints.fhir_base.clone(),
                sub: username.to_owned(),
                aud: client_id.to_owned(),
                exp: now + self.access_token_secs,
                iat: now,
                nonce: nonce.map(str::to_owned),
                fhir_user: fhir_user.clone(),
            };
            response.id_token = Some(token::issue_id_token(&ring, &id_claims)?);
        }
        response.patient = patient.map(str::to_owned);
        response.fhir_user = fhir_user;
        Ok(response)
    }

    /// RFC 7009: revokes an access token (and the grant it was issued under) or a refresh
    /// token's grant. Unknown tokens are not an error (§2.2). A public client names itself by
    /// `client_id`; a token of another client is left alone.
    pub async fn revoke(
        &self,
        token_text: &str,
        form: &TokenForm,
        basic: Option<(String, String)>,
        endpoints: &Endpoints,
    ) -> Result<(), TokenError> {
        let client = self.authenticate_client(form, basic, endpoints, now_secs(), true).await?;
        if let Some(grant) = self.inspect_access_token(token_text, endpoints, true) {
            if grant.client_id != client.client_id {
                return Ok(());
            }
            let jti = grant.jti.clone();
            let key = [REVOKED_PREFIX, jti.as_bytes()].concat();
            let expires = grant.expires;
            self.store
                .auth_write(move |txn| {
                    txn.insert_expiring(&key, &[], expires);
                    Ok(())
                })
                .await?;
            self.revoked.add_jti(&jti);
            if let Some(gid) = &grant.gid {
                self.revoke_grant(gid, &client.client_id).await?;
            }
            return Ok(());
        }
        if let Some(gid) = token_text.split('.').next().filter(|_| token_text.matches('.').count() == 2) {
            self.revoke_grant(gid, &client.client_id).await?;
        }
        Ok(())
    }

    async fn revoke_grant(&self, gid: &str, client_id: &str) -> Result<(), TokenError> {
        let client_id = client_id.to_owned();
        self.revoke_grant_if(gid, move |grant| grant.client_id == client_id).await?;
        Ok(())
    }

    /// Revokes the grant `gid` (and every access token issued under it) if `may` allows it as
    /// stored, in one piece of work. Whether it was revoked.
    async fn revoke_grant_if(
        &self,
        gid: &str,
        may: impl Fn(&GrantRecord) -> bool + Send + Sync + 'static,
    ) -> Result<bool, FhirError> {
        let key = grant_key(gid);
        let revoked = self
            .store
            .auth_write(move |txn| {
                let Some(bytes) = txn.get(&key)? else { return Ok(false) };
                let Ok(mut grant) = serde_json::from_slice::<GrantRecord>(&bytes) else { return Ok(false) };
                if !may(&grant) {
                    return Ok(false);
                }
                grant.revoked = true;
                let value = serde_json::to_vec(&grant).map_err(|_| FhirError::fault("auth"))?;
                txn.insert(&key, &value);
                Ok(true)
            })
            .await?;
        if revoked {
            self.revoked.add_grant(gid);
        }
        Ok(revoked)
    }

    /// The grants `username` has given that are in force, newest first (at most
    /// [`MAX_LISTED_GRANTS`]).
    pub fn user_grants(&self, username: &str) -> Result<Vec<GrantSummary>, FhirError> {
        let now = now_secs();
        let prefix = [USER_GRANT_PREFIX, username.as_bytes(), b"/"].concat();
        let mut grants = self.store.auth_read(|read| {
            let mut grants = Vec::new();
            for (key, _) in read.scan_at_most(&prefix, MAX_LISTED_GRANTS * 4)? {
                let gid = String::from_utf8_lossy(&key[prefix.len()..]).into_owned();
                let Some(bytes) = read.get(&grant_key(&gid))? else { continue };
                let Ok(grant) = serde_json::from_slice::<GrantRecord>(&bytes) else { continue };
                if grant.revoked || grant.expires <= now || grant.username != username {
                    continue;
                }
                grants.push(GrantSummary {
                    id: gid,
                    client_id: grant.client_id,
                    scope: grant.scope,
                    created: grant.created,
                    expires: grant.expires,
                    lasting: grant.generation > 0,
                });
            }
            Ok::<_, StoreError>(grants)
        })?;
        grants.sort_by_key(|grant| std::cmp::Reverse(grant.created));
        grants.truncate(MAX_LISTED_GRANTS);
        Ok(grants)
    }

    /// Revokes the grant `gid` of `username` (and every access token issued under it). `false`
    /// when the user has no such grant.
    pub async fn revoke_user_grant(&self, username: &str, gid: &str) -> Result<bool, FhirError> {
        let owner = username.to_owned();
        self.revoke_grant_if(gid, move |grant| grant.username == owner && !grant.revoked).await
    }

    /// An access token's grant if Braid issued it for this server (`ignore_expiry`: also once
    /// expired, as revocation wants).
    fn inspect_access_token(&self, text: &str, endpoints: &Endpoints, ignore_expiry: bool) -> Option<Grant> {
        let now = if ignore_expiry { 0 } else { now_secs() };
        let ring = self.keys();
        if ignore_expiry {
            // Verified as of its own issue time: the signature and audience still count.
            let claims: AccessClaims = jsonwebtoken::dangerous::insecure_decode_claims(text).ok()?;
            return token::verify(&ring, text, &endpoints.fhir_base, claims.iat).ok();
        }
        token::verify(&ring, text, &endpoints.fhir_base, now).ok()
    }

    /// RFC 7662 with SMART's fields. The caller is a confidential client, or presents an active
    /// access token of the same client as the one introspected (`caller_token`).
    pub async fn introspect(
        &self,
        token_text: &str,
        form: &TokenForm,
        basic: Option<(String, String)>,
        caller_token: Option<&str>,
        endpoints: &Endpoints,
    ) -> Result<Value, TokenError> {
        let caller = match caller_token {
            Some(bearer) => self
                .inspect_access_token(bearer, endpoints, false)
                .filter(|grant| !self.revoked.contains(grant))
                .map(|grant| grant.client_id)
                .ok_or_else(|| TokenError {
                    status: 401,
                    ..TokenError::invalid_client("the bearer token is not active")
                })?,
            None => {
                let client = self.authenticate_client(form, basic, endpoints, now_secs(), false).await?;
                client.client_id
            }
        };
        let inactive = json!({"active": false});
        let Some(grant) = self.inspect_access_token(token_text, endpoints, false) else { return Ok(inactive) };
        if self.revoked.contains(&grant) || (caller_token.is_some() && grant.client_id != caller) {
            return Ok(inactive);
        }
        let mut answer = json!({
            "active": true,
            "scope": grant.scope,
            "client_id": grant.client_id,
            "sub": grant.subject,
            "exp": grant.expires,
            "iat": grant.iat,
            "iss": endpoints.fhir_base,
            "aud": grant.audience,
            "token_type": "Bearer",
            "jti": grant.jti,
        });
        if let Some(patient) = &grant.patient {
            answer["patient"] = patient.clone().into();
        }
        if let Some(fhir_user) = &grant.fhir_user {
            answer["fhirUser"] = fhir_user.clone().into();
        }
        Ok(answer)
    }
}

enum Refreshed {
    Rotated(Box<GrantRecord>),
    Reused,
    Invalid,
}

/// How long a grant with these scopes lasts, if it has a refresh token at all.
fn grant_lifetime(scope: &str) -> Option<u64> {
    let scopes: Vec<Scope> = scope.split(' ').filter_map(parse_scope).collect();
    if scopes.contains(&Scope::OfflineAccess) {
        Some(OFFLINE_GRANT_SECS)
    } else if scopes.contains(&Scope::OnlineAccess) {
        Some(ONLINE_GRANT_SECS)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

    #[test]
    fn a_removed_client_is_still_refused_after_a_restart_until_its_tokens_expire() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = testing::runtime();
        runtime.block_on(async {
            let store = testing::open(&dir.path().join("c.redb"));
            let new = |name: &str| crate::auth::clients::NewClient {
                name: name.into(),
                scope: "system/Patient.rs".into(),
                grant_types: Vec::new(),
                redirect_uris: Vec::new(),
                credential: crate::auth::clients::NewCredential::Secret,
                source: None,
            };
            let gone = crate::auth::clients::add(&store, new("gone"), now_secs()).await.unwrap().client.client_id;
            let kept = crate::auth::clients::add(&store, new("kept"), now_secs()).await.unwrap().client.client_id;
            assert!(crate::auth::clients::remove(&store, &gone).await.unwrap());
            assert!(
                !crate::auth::clients::remove(&store, "nobody").await.unwrap(),
                "nothing to remove, nothing listed"
            );
            // What a start loads: the removal outlives the process that made it.
            let revoked = store.auth_read(Revoked::load).unwrap();
            assert!(revoked.client_removed(&gone));
            assert!(!revoked.client_removed(&kept) && !revoked.client_removed("nobody"));
            assert!(revoked.any.load(std::sync::atomic::Ordering::Acquire));
            // Listed until the longest token would have expired, then swept with the rest.
            let expiry = store.auth_read(|read| read.scan(b"exp/")).unwrap();
            let listed = [crate::auth::clients::REMOVED_PREFIX, gone.as_bytes()].concat();
            assert!(expiry.iter().any(|(key, _)| key.ends_with(&listed)), "{expiry:?}");
            testing::close(store);
        });
    }

    #[test]
    fn grants_made_before_the_users_list_existed_are_listed_once() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = testing::runtime();
        runtime.block_on(async {
            let store = testing::open(&dir.path().join("g.redb"));
            let now = now_secs();
            let grant = |username: &str, revoked: bool, expires: u64| GrantRecord {
                client_id: "app".into(),
                username: username.into(),
                role: Role::Patient,
                scope: "patient/*.rs offline_access".into(),
                patient: Some("p1".into()),
                fhir_user: None,
                generation: 1,
                secret_hash: String::new(),
                expires,
                revoked,
                created: 0,
            };
            let old = [
                ("g1", grant("ann", false, now + 3600)),
                ("g2", grant("ann", true, now + 3600)),
                ("g3", grant("bob", false, now + 60)),
            ];
            // A grant record written as before user lists existed: without its listing.
            let write_unlisted = |gid: &str, record: &GrantRecord| {
                let (key, value) = (grant_key(gid), serde_json::to_vec(record).unwrap());
                store.auth_write(move |txn| {
                    txn.insert(&key, &value);
                    Ok(())
                })
            };
            for (gid, record) in &old {
                write_unlisted(gid, record).await.unwrap();
            }
            index_user_grants(&store).await.unwrap();
            let listed = |user: &'static str| {
                let prefix = [USER_GRANT_PREFIX, user.as_bytes(), b"/"].concat();
                store.auth_read(|read| read.scan(&prefix)).unwrap().len()
            };
            assert_eq!((listed("ann"), listed("bob")), (1, 1), "grants in force, not revoked ones");
            // Once: a grant written without its listing later is not picked up by another start.
            write_unlisted("g4", &grant("ann", false, now + 3600)).await.unwrap();
            index_user_grants(&store).await.unwrap();
            assert_eq!(listed("ann"), 1);
            testing::close(store);
        });
    }
}
