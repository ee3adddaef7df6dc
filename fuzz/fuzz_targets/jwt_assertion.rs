//! Feeds arbitrary bytes to the client-assertion checks of the token endpoint, as the
//! `client_assertion` form field: reading the claimed client before any signature is checked,
//! and the full verification against a registered key. Neither may panic, and nothing but a
//! JWT signed by the registered key may verify.

#![no_main]

use std::sync::LazyLock;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use libfuzzer_sys::fuzz_target;

use braid::auth::assertion;

/// A client's registered public key, generated once per run (no key is kept in the repository).
static KEYS: LazyLock<JwkSet> = LazyLock::new(|| {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 =
        aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(&aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
            .unwrap();
    let private = jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref());
    let mut public = Jwk::from_encoding_key(&private, jsonwebtoken::Algorithm::ES384).unwrap();
    public.common.key_id = Some("fuzz".into());
    JwkSet { keys: vec![public] }
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let _ = assertion::claimed_client(text);
    let verified = assertion::verify(text, "client", &KEYS, &["https://braid.test/auth/token"], 1_900_000_000);
    assert!(verified.is_err(), "an input the fuzzer made verified against a key it does not hold");
});
