//! Time-based one-time passwords (RFC 6238 over RFC 4226): the second factor of a login.
//! SHA-1, six digits, 30-second steps, one step of clock difference tolerated either way: what
//! every authenticator app implements.
//!
//! A code is accepted once: the step it belongs to must be later than the last step accepted
//! for the account, which the caller records (atomically, in the database).

use aws_lc_rs::hmac;

/// Seconds per step.
pub const STEP_SECS: u64 = 30;

/// Digits per code.
pub const DIGITS: u32 = 6;

/// Bytes of a secret (160 bits, as RFC 4226 recommends).
pub const SECRET_BYTES: usize = 20;

/// A new random secret.
pub fn new_secret() -> [u8; SECRET_BYTES] {
    super::random_bytes()
}

/// The code for `step`.
pub fn code_at(secret: &[u8], step: u64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &step.to_be_bytes());
    let digest = tag.as_ref();
    // Dynamic truncation (RFC 4226 §5.3).
    let offset = usize::from(digest[digest.len() - 1] & 0x0f);
    let binary =
        u32::from_be_bytes([digest[offset] & 0x7f, digest[offset + 1], digest[offset + 2], digest[offset + 3]]);
    format!("{:0width$}", binary % 10u32.pow(DIGITS), width = DIGITS as usize)
}

/// The step `code` belongs to if it is valid at `now` (seconds) and later than `after` (the last
/// step accepted); `None` otherwise. Compared in constant time.
pub fn verify(secret: &[u8], code: &str, now: u64, after: Option<u64>) -> Option<u64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let current = now / STEP_SECS;
    let mut found = None;
    for step in [current.saturating_sub(1), current, current + 1] {
        let expected = code_at(secret, step);
        let equal = expected.bytes().zip(code.bytes()).fold(0u8, |diff, (a, b)| diff | (a ^ b)) == 0;
        if equal && after.is_none_or(|after| step > after) && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// RFC 4648 base32 without padding: how authenticator apps take a secret.
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(ALPHABET[((buffer >> bits) & 31) as usize] as char);
        }
    }
    if bits > 0 {
        out.push(ALPHABET[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

/// The `otpauth://` URI an authenticator app reads from the enrolment QR code.
pub fn provisioning_uri(secret: &[u8], issuer: &str, account: &str) -> String {
    let encode =
        |text: &str| percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string();
    format!(
        "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        encode(issuer),
        encode(account),
        base32(secret),
        encode(issuer)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_match_the_rfc_6238_test_vectors() {
        // RFC 6238 appendix B, SHA-1 secret "12345678901234567890", last six digits.
        let secret = b"12345678901234567890";
        for (time, code) in [(59u64, "287082"), (1111111109, "081804"), (1234567890, "005924"), (2000000000, "279037")]
        {
            assert_eq!(code_at(secret, time / STEP_SECS), code, "at {time}");
        }
    }

    #[test]
    fn a_code_is_accepted_within_one_step_and_only_after_the_last_accepted_one() {
        let secret = new_secret();
        let now = 1_800_000_000;
        let step = now / STEP_SECS;
        let code = code_at(&secret, step);
        assert_eq!(verify(&secret, &code, now, None), Some(step));
        assert_eq!(verify(&secret, &code, now + STEP_SECS, None), Some(step), "one step late");
        assert_eq!(verify(&secret, &code, now + 2 * STEP_SECS, None), None, "two steps late");
        assert_eq!(verify(&secret, &code, now, Some(step)), None, "replayed");
        assert_eq!(verify(&secret, "12345", now, None), None);
        assert_eq!(verify(&secret, "abcdef", now, None), None);
    }

    #[test]
    fn secrets_are_written_in_base32_for_authenticator_apps() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32(b""), "");
        let uri = provisioning_uri(b"12345678901234567890", "Braid", "ann@example.org");
        assert!(uri.starts_with("otpauth://totp/Braid:ann%40example%2Eorg?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&"));
    }
}
