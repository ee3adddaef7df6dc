//! Argon2id hashes of secrets people and clients present: user passwords and client secrets.
//! OWASP's minimum parameters (19 MiB, 2 passes, 1 lane): a guess costs an attacker holding the
//! database tens of milliseconds, and so does every check here, which therefore runs off the
//! async workers.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use crate::fhir::FhirError;

/// The PHC string (`$argon2id$...`) of `secret` with a fresh random salt.
pub fn hash(secret: &str) -> Result<String, FhirError> {
    let salt = SaltString::encode_b64(&super::random_bytes::<16>()).map_err(|_| FhirError::fault("auth"))?;
    argon2::Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|_| FhirError::fault("auth"))
}

/// Whether `secret` is the one whose hash is `hash` (constant time in the secret).
pub fn matches(hash: &str, secret: &str) -> bool {
    PasswordHash::new(hash)
        .is_ok_and(|parsed| argon2::Argon2::default().verify_password(secret.as_bytes(), &parsed).is_ok())
}

/// A hash of no real secret, checked when an account does not exist, so that the answer takes
/// as long as for one that does (the time would tell which usernames exist).
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| hash("no account has this password").unwrap_or_default());
    &DUMMY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_verifies_only_itself() {
        let hash = hash("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(matches(&hash, "correct horse"));
        assert!(!matches(&hash, "correct horsf"));
        assert!(!matches("not a hash", "correct horse"));
        assert!(!matches(dummy_hash(), "correct horse"));
    }
}
