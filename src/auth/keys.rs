//! Braid's own signing keys: generated on first start, stored in the database (`key/<kid>`),
//! published at the JWKS endpoint, rotatable.
//!
//! Access tokens are signed with ES256 (P-256: fast to sign and verify, short signatures);
//! OpenID Connect id_tokens with RS256, which OpenID requires every relying party to accept. A
//! rotation makes new keys the active ones and retires the old: a retired key still verifies
//! and is still published until every token it signed has expired ([`RETIRED_KEY_GRACE_SECS`]),
//! then the sweeper deletes it.
//!
//! Keys are generated outside the writer's transaction (an RSA key takes a while) and inserted
//! by [`insert_missing`] or [`rotate`].

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
    /// `ES256` or `RS256`.
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
        let damaged = |why: String| format!("signing key {} is damaged: {why}", stored.kid);
        let pkcs8 = URL_SAFE_NO_PAD.decode(&stored.pkcs8).map_err(|_| damaged("not base64url".into()))?;
        let (algorithm, key_algorithm, encoding) = match stored.alg.as_str() {
            "ES256" => (Algorithm::ES256, KeyAlgorithm::ES256, EncodingKey::from_ec_der(&pkcs8)),
            "RS256" => {
                let pkcs1 = pkcs1_of_pkcs8(&pkcs8).ok_or_else(|| damaged("not an RSA PKCS#8 key".into()))?;
                (Algorithm::RS256, KeyAlgorithm::RS256, EncodingKey::from_rsa_der(pkcs1))
            }
            other => return Err(format!("signing key {} has an unknown algorithm {other}", stored.kid)),
        };
        let mut public = Jwk::from_encoding_key(&encoding, algorithm).map_err(|error| damaged(error.to_string()))?;
        public.common.key_id = Some(stored.kid.clone());
        public.common.public_key_use = Some(PublicKeyUse::Signature);
        public.common.key_algorithm = Some(key_algorithm);
        let decoding = DecodingKey::from_jwk(&public).map_err(|error| damaged(error.to_string()))?;
        Ok(SigningKey {
            kid: stored.kid.clone(),
            algorithm,
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

    /// The key new tokens of `algorithm` are signed with.
    pub fn active(&self, algorithm: Algorithm) -> Option<&SigningKey> {
        self.keys.iter().find(|key| key.retired.is_none() && key.algorithm == algorithm)
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

/// The algorithms Braid signs with: access tokens, then id_tokens.
pub const ALGORITHMS: [&str; 2] = ["ES256", "RS256"];

/// A key generated for [`insert_missing`] or [`rotate`].
pub struct NewKey {
    alg: &'static str,
    pkcs8: Vec<u8>,
}

/// Generates a key for `alg` (one of [`ALGORITHMS`]).
pub fn generate(alg: &'static str) -> Result<NewKey, FhirError> {
    let failed = |_| FhirError::fault("key generation");
    let pkcs8 = match alg {
        "ES256" => {
            let rng = aws_lc_rs::rand::SystemRandom::new();
            aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
                &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                &rng,
            )
            .map_err(failed)?
            .as_ref()
            .to_vec()
        }
        "RS256" => {
            use aws_lc_rs::encoding::AsDer;
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(failed)?;
            pair.as_der().map_err(failed)?.as_ref().to_vec()
        }
        _ => return Err(FhirError::fault("unknown key algorithm")),
    };
    Ok(NewKey { alg, pkcs8 })
}

/// The algorithms that have no active key.
pub fn missing(read: &AuthRead) -> Result<Vec<&'static str>, StoreError> {
    let mut active = Vec::new();
    for (key, value) in read.scan(KEY_PREFIX)? {
        let stored: StoredKey = serde_json::from_slice(&value).map_err(|_| StoreError::Corrupt(key))?;
        if stored.retired.is_none() {
            active.push(stored.alg);
        }
    }
    Ok(ALGORITHMS.into_iter().filter(|alg| !active.iter().any(|a| a == alg)).collect())
}

/// Inserts each of `fresh` whose algorithm has no active key (another start may have added one
/// meanwhile).
pub fn insert_missing(txn: &mut AuthTxn<'_>, fresh: &[NewKey], now: u64) -> Result<(), FhirError> {
    let mut active = Vec::new();
    for (key, value) in txn.scan(KEY_PREFIX)? {
        let stored: StoredKey = serde_json::from_slice(&value).map_err(|_| StoreError::Corrupt(key))?;
        if stored.retired.is_none() {
            active.push(stored.alg);
        }
    }
    for new in fresh {
        if !active.iter().any(|alg| alg == new.alg) {
            insert(txn, new, now)?;
        }
    }
    Ok(())
}

/// Retires every active key and makes `fresh` the active ones; returns the new keys' ids.
/// Tokens signed with the retired keys keep verifying until they expire.
pub fn rotate(txn: &mut AuthTxn<'_>, fresh: &[NewKey], now: u64) -> Result<Vec<String>, FhirError> {
    for (key, value) in txn.scan(KEY_PREFIX)? {
        let mut stored: StoredKey = serde_json::from_slice(&value).map_err(|_| StoreError::Corrupt(key.clone()))?;
        if stored.retired.is_none() {
            stored.retired = Some(now);
            let value = serde_json::to_vec(&stored).map_err(|_| FhirError::fault("auth"))?;
            txn.insert_expiring(&key, &value, now.saturating_add(RETIRED_KEY_GRACE_SECS));
        }
    }
    fresh.iter().map(|new| insert(txn, new, now)).collect()
}

/// Generates, off the async workers, a key for each of `algorithms`.
async fn generate_off_thread(algorithms: Vec<&'static str>) -> Result<std::sync::Arc<Vec<NewKey>>, FhirError> {
    let fresh =
        tokio::task::spawn_blocking(move || algorithms.into_iter().map(generate).collect::<Result<Vec<_>, _>>())
            .await
            .map_err(|_| FhirError::fault("key generation"))??;
    Ok(std::sync::Arc::new(fresh))
}

/// Makes sure the store has an active key for every algorithm (at first start, or after an
/// upgrade that added one).
pub async fn ensure(store: &crate::store::Store) -> Result<(), FhirError> {
    let missing = store.auth_read(missing)?;
    if missing.is_empty() {
        return Ok(());
    }
    let fresh = generate_off_thread(missing).await?;
    store.auth_write(move |txn| insert_missing(txn, &fresh, super::now_secs())).await
}

/// Rotates every key of the store (see [`rotate`]); returns the new ids, in [`ALGORITHMS`] order.
pub async fn rotate_all(store: &crate::store::Store) -> Result<Vec<String>, FhirError> {
    let fresh = generate_off_thread(ALGORITHMS.to_vec()).await?;
    store.auth_write(move |txn| rotate(txn, &fresh, super::now_secs())).await
}

fn insert(txn: &mut AuthTxn<'_>, new: &NewKey, now: u64) -> Result<String, FhirError> {
    let kid = format!("{}-{}", new.alg.to_ascii_lowercase(), URL_SAFE_NO_PAD.encode(super::random_bytes::<9>()));
    let stored = StoredKey {
        kid: kid.clone(),
        alg: new.alg.into(),
        pkcs8: URL_SAFE_NO_PAD.encode(&new.pkcs8),
        created: now,
        retired: None,
    };
    let mut key = KEY_PREFIX.to_vec();
    key.extend_from_slice(kid.as_bytes());
    txn.insert(&key, &serde_json::to_vec(&stored).map_err(|_| FhirError::fault("auth"))?);
    Ok(kid)
}

/// The RSAPrivateKey (PKCS#1) inside an RSA PKCS#8 PrivateKeyInfo: the content of the OCTET
/// STRING that is the third element of the outer SEQUENCE. `None` for anything else.
fn pkcs1_of_pkcs8(der: &[u8]) -> Option<&[u8]> {
    /// One DER element: its tag, its content, and what follows it.
    fn element(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = der.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (length, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let bytes = usize::from(first & 0x7f);
            if bytes == 0 || bytes > 4 || rest.len() < bytes {
                return None;
            }
            let length = rest[..bytes].iter().fold(0usize, |n, &b| (n << 8) | usize::from(b));
            (length, &rest[bytes..])
        };
        (rest.len() >= length).then(|| (tag, &rest[..length], &rest[length..]))
    }
    let (tag, info, _) = element(der)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, rest) = element(info)?; // version
    let (_, _, rest) = element(rest)?; // algorithm
    let (tag, key, _) = element(rest)?;
    (tag == 0x04).then_some(key)
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
            role: None,
            source: None,
        }
    }

    #[tokio::test]
    async fn a_rotated_key_keeps_verifying_its_tokens_until_they_expire_and_is_then_swept() {
        let dir = tempfile::tempdir().unwrap();
        let store = testing::open(&dir.path().join("keys.redb"));
        let now = crate::auth::now_secs();
        ensure(&store).await.unwrap();
        let ring = store.auth_read(KeyRing::load).unwrap();
        let first = ring.active(Algorithm::ES256).unwrap().kid.clone();
        assert!(ring.active(Algorithm::RS256).is_some(), "an id_token key too");
        // A second start finds the keys instead of making others.
        ensure(&store).await.unwrap();
        assert_eq!(store.auth_read(KeyRing::load).unwrap().jwks(now).keys.len(), 2);
        let old_token = token::issue(&ring, &claims(now)).unwrap();

        let second = rotate_all(&store).await.unwrap().remove(0);
        assert_ne!(first, second);
        let ring = store.auth_read(KeyRing::load).unwrap();
        assert_eq!(ring.active(Algorithm::ES256).unwrap().kid, second);
        let published: Vec<_> = ring.jwks(now).keys.iter().filter_map(|k| k.common.key_id.clone()).collect();
        assert_eq!(published.len(), 4, "two active, two retired");
        assert_eq!(published[0], second);
        assert!(published.contains(&first));
        let grant = token::verify(&ring, &old_token, "http://braid.test/fhir", now).unwrap();
        assert_eq!(grant.client_id, "client");
        let new_token = token::issue(&ring, &claims(now)).unwrap();
        assert_eq!(jsonwebtoken::decode_header(&new_token).unwrap().kid.as_deref(), Some(second.as_str()));

        // Past the grace period the old key neither verifies nor is published, and the sweeper
        // deletes it.
        // (A margin: the rotation read the clock a moment after `now`.)
        let later = now + RETIRED_KEY_GRACE_SECS + 60;
        assert!(ring.verifying(&first, later).is_none());
        assert_eq!(ring.jwks(later).keys.len(), 2);
        store.auth_write(move |txn| Ok(txn.sweep(later, 100)?)).await.unwrap();
        let ring = store.auth_read(KeyRing::load).unwrap();
        assert!(ring.verifying(&first, now).is_none(), "deleted");
        assert!(ring.verifying(&second, later).is_some());
    }
}
