//! Braid's own signing keys: generated on first start, stored in the database (`key/<kid>`),
//! published at the JWKS endpoint, rotatable.
//!
//! Access tokens are signed with ES256 (P-256: fast to sign and verify, short signatures). A
//! rotation makes a new key the active one and retires the old: a retired key still verifies
//! and is still published until every token it signed has expired ([`RETIRED_KEY_GRACE_SECS`]),
//! then the sweeper deletes it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
use serde::{Deserialize, Serialize};

use crate::fhir::FhirError;
use crate::store::StoreError;
use crate::store::auth::{AuthRead, AuthTxn};

/// Key prefix of the signing keys in the `auth` table.
const KEY_PREFIX: &[u8] = b"key/";

/// How long a retired key keeps verifying: the longest lifetime of a token it may have signed.
pub const RETIRED_KEY_GRACE_SECS: u64 = super::MAX_ACCESS_TOKEN_SECS;

/// A signing key as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    /// Always `ES256` today; named so that other algorithms can be added.
    alg: String,
    /// PKCS#8 DER, base64url.
    pkcs8: String,
    created: u64,
    retired: Option<u64>,
}

/// One usable key.
pub struct SigningKey {
    pub kid: String,
    pub algorithm: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    public: Jwk,
    created: u64,
    retired: Option<u64>,
}

impl SigningKey {
    fn from_stored(stored: &StoredKey) -> Result<SigningKey, String> {
        if stored.alg != "ES256" {
            return Err(format!("signing key {} has an unknown algorithm {}", stored.kid, stored.alg));
        }
        let pkcs8 =
            URL_SAFE_NO_PAD.decode(&stored.pkcs8).map_err(|_| format!("signing key {} is damaged", stored.kid))?;
        let encoding = EncodingKey::from_ec_der(&pkcs8);
        let mut public = Jwk::from_encoding_key(&encoding, Algorithm::ES256)
            .map_err(|error| format!("signing key {} is damaged: {error}", stored.kid))?;
        public.common.key_id = Some(stored.kid.clone());
        public.common.public_key_use = Some(PublicKeyUse::Signature);
        public.common.key_algorithm = Some(KeyAlgorithm::ES256);
        let decoding = DecodingKey::from_jwk(&public)
            .map_err(|error| format!("signing key {} is damaged: {error}", stored.kid))?;
        Ok(SigningKey {
            kid: stored.kid.clone(),
            algorithm: Algorithm::ES256,
            encoding,
            decoding,
            public,
            created: stored.created,
            retired: stored.retired,
        })
    }

    pub fn encoding(&self) -> &EncodingKey {
        &self.encoding
    }

    pub fn decoding(&self) -> &DecodingKey {
        &self.decoding
    }

    /// Whether tokens signed with this key may still be accepted at `now`.
    fn verifies_at(&self, now: u64) -> bool {
        self.retired.is_none_or(|retired| now < retired.saturating_add(RETIRED_KEY_GRACE_SECS))
    }
}

/// The keys tokens are signed and verified with: the active one first.
pub struct KeyRing {
    keys: Vec<SigningKey>,
}

impl KeyRing {
    /// The keys stored in the database.
    pub fn load(read: &AuthRead) -> Result<KeyRing, StoreError> {
        let mut keys = Vec::new();
        for (key, value) in read.scan(KEY_PREFIX)? {
            let stored: StoredKey = serde_json::from_slice(&value).map_err(|_| StoreError::Corrupt(key.clone()))?;
            match SigningKey::from_stored(&stored) {
                Ok(key) => keys.push(key),
                Err(reason) => {
                    tracing::error!(%reason, "a stored signing key cannot be used");
                    return Err(StoreError::Corrupt(key));
                }
            }
        }
        // The active key first, then the most recently retired.
        keys.sort_by_key(|key| (key.retired.is_some(), std::cmp::Reverse(key.retired), std::cmp::Reverse(key.created)));
        Ok(KeyRing { keys })
    }

    /// The key new tokens are signed with.
    pub fn active(&self) -> Option<&SigningKey> {
        self.keys.iter().find(|key| key.retired.is_none())
    }

    /// The key named `kid`, if tokens signed with it are still accepted at `now`.
    pub fn verifying(&self, kid: &str, now: u64) -> Option<&SigningKey> {
        self.keys.iter().find(|key| key.kid == kid && key.verifies_at(now))
    }

    /// The public keys that verify at `now`, as a JWKS document.
    pub fn jwks(&self, now: u64) -> JwkSet {
        JwkSet { keys: self.keys.iter().filter(|key| key.verifies_at(now)).map(|key| key.public.clone()).collect() }
    }
}

/// Creates a signing key if there is no active one; returns the active key's id.
pub fn ensure_active(txn: &mut AuthTxn<'_>, now: u64) -> Result<String, FhirError> {
    for (_, value) in txn.scan(KEY_PREFIX)? {
        if let Ok(stored) = serde_json::from_slice::<StoredKey>(&value)
            && stored.retired.is_none()
        {
            return Ok(stored.kid);
        }
    }
    create(txn, now)
}

/// Retires every active key and creates a new one; returns the new key's id. Tokens signed with
/// the retired keys keep verifying until they expire.
pub fn rotate(txn: &mut AuthTxn<'_>, now: u64) -> Result<String, FhirError> {
    for (key, value) in txn.scan(KEY_PREFIX)? {
        let mut stored: StoredKey = serde_json::from_slice(&value).map_err(|_| StoreError::Corrupt(key.clone()))?;
        if stored.retired.is_none() {
            stored.retired = Some(now);
            let value = serde_json::to_vec(&stored).map_err(|_| FhirError::fault("auth"))?;
            txn.insert_expiring(&key, &value, now.saturating_add(RETIRED_KEY_GRACE_SECS));
        }
    }
    create(txn, now)
}

fn create(txn: &mut AuthTxn<'_>, now: u64) -> Result<String, FhirError> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .map_err(|_| FhirError::fault("key generation"))?;
    let kid = format!("es256-{}", URL_SAFE_NO_PAD.encode(super::random_bytes::<9>()));
    let stored = StoredKey {
        kid: kid.clone(),
        alg: "ES256".into(),
        pkcs8: URL_SAFE_NO_PAD.encode(pkcs8.as_ref()),
        created: now,
        retired: None,
    };
    let mut key = KEY_PREFIX.to_vec();
    key.extend_from_slice(kid.as_bytes());
    txn.insert(&key, &serde_json::to_vec(&stored).map_err(|_| FhirError::fault("auth"))?);
    Ok(kid)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token::{self, AccessClaims};
    use crate::store::testing;

    fn claims(now: u64) -> AccessClaims {
        AccessClaims {
            iss: "http://braid.test/fhir".into(),
            aud: "http://braid.test/fhir".into(),
            sub: "client".into(),
            client_id: "client".into(),
            scope: "system/Patient.rs".into(),
            iat: now,
            exp: now + 300,
            jti: "j".into(),
            patient: None,
            fhir_user: None,
            gid: None,
        }
    }

    #[tokio::test]
    async fn a_rotated_key_keeps_verifying_its_tokens_until_they_expire_and_is_then_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = testing::open(&dir.path().join("keys.redb"));
        let now = crate::auth::now_secs();
        let first = store.auth_write(move |txn| ensure_active(txn, now)).await.unwrap();
        // A second start finds the key instead of making another.
        assert_eq!(store.auth_write(move |txn| ensure_active(txn, now)).await.unwrap(), first);
        let ring = store.auth_read(KeyRing::load).unwrap();
        let old_token = token::issue(&ring, &claims(now)).unwrap();

        let second = store.auth_write(move |txn| rotate(txn, now)).await.unwrap();
        assert_ne!(first, second);
        let ring = store.auth_read(KeyRing::load).unwrap();
        assert_eq!(ring.active().unwrap().kid, second);
        let published: Vec<_> = ring.jwks(now).keys.iter().filter_map(|k| k.common.key_id.clone()).collect();
        assert_eq!(published, vec![second.clone(), first.clone()]);
        let grant = token::verify(&ring, &old_token, "http://braid.test/fhir", now).unwrap();
        assert_eq!(grant.client_id, "client");
        let new_token = token::issue(&ring, &claims(now)).unwrap();
        assert_eq!(jsonwebtoken::decode_header(&new_token).unwrap().kid.as_deref(), Some(second.as_str()));

        // Past the grace period the old key neither verifies nor is published, and the sweeper
        // deletes it.
        let later = now + RETIRED_KEY_GRACE_SECS + 1;
        assert!(ring.verifying(&first, later).is_none());
        assert_eq!(ring.jwks(later).keys.len(), 1);
        store.auth_write(move |txn| Ok(txn.sweep(later, 100)?)).await.unwrap();
        let ring = store.auth_read(KeyRing::load).unwrap();
        assert!(ring.verifying(&first, now).is_none(), "deleted");
        assert!(ring.verifying(&second, later).is_some());
    }
}
