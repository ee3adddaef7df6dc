//! Client assertions (`private_key_jwt`, RFC 7523, as SMART Backend Services profiles them): a
//! client proves who it is with a short-lived JWT signed by a key it registered.
//!
//! Checks, in order, each before anything that depends on it: the size; the header's algorithm
//! (only RS384 and ES384: `none`, and HS256 "signed" with a public key, never reach a key); the
//! client named by `iss` and `sub` (equal); its key chosen by `kid`, whose type must fit the
//! algorithm; the signature; `aud` (the token URL, or the issuer, which some clients send); `exp`
//! (not past, and at most five minutes ahead); the presence of `jti`. Replay of a `jti` is
//! checked by the caller, atomically, in the database.

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::TokenError;

/// The `client_assertion_type` of a JWT client assertion.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Longest assertion accepted, in bytes.
pub const MAX_ASSERTION_BYTES: usize = 16 * 1024;

/// How far ahead an assertion's `exp` may be (SMART: "no more than five minutes in the future").
pub const MAX_ASSERTION_LIFETIME_SECS: u64 = 300;

/// Clock difference tolerated between a client and Braid.
pub const LEEWAY_SECS: u64 = 30;

/// What a verified assertion tells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    pub client_id: String,
    pub jti: String,
    pub expires: u64,
}

#[derive(Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    exp: u64,
    jti: Option<String>,
}

/// Who an assertion claims to come from, read before its signature is checked (to find the
/// client's keys). Nothing else of an unverified assertion is used.
pub fn claimed_client(assertion: &str) -> Result<String, TokenError> {
    if assertion.len() > MAX_ASSERTION_BYTES {
        return Err(TokenError::invalid_client("the client assertion is too long"));
    }
    #[derive(Deserialize)]
    struct Issuer {
        iss: Option<String>,
        sub: Option<String>,
    }
    let issuer: Issuer = jsonwebtoken::dangerous::insecure_decode_claims(assertion)
        .map_err(|_| TokenError::invalid_client("the client assertion is not a JWT"))?;
    match (issuer.iss, issuer.sub) {
        (Some(iss), Some(sub)) if iss == sub && !iss.is_empty() => Ok(iss),
        _ => Err(TokenError::invalid_client("the client assertion's iss and sub must both be the client_id")),
    }
}

/// Verifies `assertion` for `client_id` against the client's registered keys. `audiences` are
/// the values accepted in `aud`; `now` is in seconds since the epoch.
pub fn verify(
    assertion: &str,
    client_id: &str,
    keys: &JwkSet,
    audiences: &[&str],
    now: u64,
) -> Result<Verified, TokenError> {
    if assertion.len() > MAX_ASSERTION_BYTES {
        return Err(TokenError::invalid_client("the client assertion is too long"));
    }
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|_| TokenError::invalid_client("the client assertion's header cannot be read"))?;
    if !matches!(header.alg, Algorithm::RS384 | Algorithm::ES384) {
        return Err(TokenError::invalid_client(format!(
            "the client assertion is signed with {:?}; Braid accepts RS384 and ES384",
            header.alg
        )));
    }
    let jwk = choose_key(keys, header.kid.as_deref(), header.alg)?;
    let key = DecodingKey::from_jwk(jwk).map_err(|_| TokenError::invalid_client("the client's key cannot be used"))?;
    let mut validation = Validation::new(header.alg);
    validation.set_audience(audiences);
    validation.set_issuer(&[client_id]);
    validation.sub = Some(client_id.to_owned());
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.leeway = LEEWAY_SECS;
    validation.validate_nbf = true;
    let claims = jsonwebtoken::decode::<Claims>(assertion, &key, &validation).map_err(|error| {
        use jsonwebtoken::errors::ErrorKind;
        TokenError::invalid_client(match error.kind() {
            ErrorKind::ExpiredSignature => "the client assertion has expired".to_owned(),
            ErrorKind::InvalidAudience => {
                format!("the client assertion's aud must be the token endpoint, {}", audiences[0])
            }
            ErrorKind::InvalidIssuer | ErrorKind::InvalidSubject => {
                "the client assertion's iss and sub must both be the client_id".to_owned()
            }
            ErrorKind::InvalidSignature => "the client assertion's signature does not verify".to_owned(),
            ErrorKind::MissingRequiredClaim(claim) => format!("the client assertion has no {claim}"),
            ErrorKind::ImmatureSignature => "the client assertion is not valid yet (nbf)".to_owned(),
            _ => "the client assertion is not valid".to_owned(),
        })
    })?;
    let claims = claims.claims;
    if claims.exp > now + MAX_ASSERTION_LIFETIME_SECS + LEEWAY_SECS {
        return Err(TokenError::invalid_client("the client assertion's exp is more than five minutes ahead"));
    }
    let jti = claims
        .jti
        .filter(|jti| !jti.is_empty() && jti.len() <= 256)
        .ok_or_else(|| TokenError::invalid_client("the client assertion needs a jti of 1 to 256 characters"))?;
    debug_assert_eq!(claims.iss, claims.sub);
    Ok(Verified { client_id: client_id.to_owned(), jti, expires: claims.exp })
}

/// The key the assertion names by `kid` (without a `kid`: the only key that fits `alg`), which
/// must be of the type `alg` needs.
fn choose_key<'a>(keys: &'a JwkSet, kid: Option<&str>, alg: Algorithm) -> Result<&'a Jwk, TokenError> {
    let fits = |jwk: &Jwk| {
        let kind_fits = match (&jwk.algorithm, alg) {
            (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => ec.curve == EllipticCurve::P384,
            (AlgorithmParameters::RSA(_), Algorithm::RS384) => true,
            _ => false,
        };
        let alg_fits = match jwk.common.key_algorithm {
            None => true,
            Some(KeyAlgorithm::ES384) => alg == Algorithm::ES384,
            Some(KeyAlgorithm::RS384) => alg == Algorithm::RS384,
            Some(_) => false,
        };
        kind_fits && alg_fits
    };
    match kid {
        Some(kid) => {
            let jwk = keys
                .find(kid)
                .ok_or_else(|| TokenError::invalid_client(format!("the client has no key with kid {kid}")))?;
            if fits(jwk) {
                Ok(jwk)
            } else {
                Err(TokenError::invalid_client(format!("the client's key {kid} cannot verify {alg:?}")))
            }
        }
        None => {
            let mut fitting = keys.keys.iter().filter(|jwk| fits(jwk));
            match (fitting.next(), fitting.next()) {
                (Some(jwk), None) => Ok(jwk),
                (None, _) => Err(TokenError::invalid_client(format!("the client has no key for {alg:?}"))),
                (Some(_), Some(_)) => Err(TokenError::invalid_client(
                    "the client assertion must name its key (kid): the client has several",
                )),
            }
        }
    }
}
