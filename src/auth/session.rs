//! The state of one authorization in progress (from `authorize` to the code), kept in the
//! browser as a signed cookie rather than in the database: an anonymous visitor can start as
//! many authorizations as they like without making Braid write anything.
//!
//! The cookie is `base64url(JSON) "." base64url(HMAC-SHA256(key, JSON))`, under a key kept in
//! the database (so that a restart keeps flows in progress). It expires after
//! [`FLOW_LIFETIME_SECS`]. Each form carries the flow's `csrf` value, which a page of another
//! site cannot read.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

/// How long a login may take, from `authorize` to the consent.
pub const FLOW_LIFETIME_SECS: u64 = 600;

/// The cookie's name.
pub const COOKIE: &str = "braid_flow";

/// Largest cookie value accepted (browsers keep about 4 KiB per cookie).
pub const MAX_COOKIE_BYTES: usize = 4000;

/// One authorization in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flow {
    pub client_id: String,
    pub redirect_uri: String,
    /// The scopes the user is asked to grant: those requested that the client may have.
    pub scope: String,
    pub state: Option<String>,
    pub code_challenge: String,
    pub nonce: Option<String>,
    /// The patient of an EHR launch.
    pub launch_patient: Option<String>,
    /// Set once the password was right.
    pub user: Option<String>,
    /// Set once the second factor was right (or is not asked for).
    pub second_factor_done: bool,
    /// Echoed by every form of the flow.
    pub csrf: String,
    /// Seconds since the epoch.
    pub expires: u64,
}

/// Signs and checks flow cookies.
pub struct FlowKey(hmac::Key);

impl FlowKey {
    pub fn new(secret: &[u8]) -> FlowKey {
        FlowKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    pub fn seal(&self, flow: &Flow) -> String {
        let json = serde_json::to_vec(flow).unwrap_or_default();
        let tag = hmac::sign(&self.0, &json);
        format!("{}.{}", URL_SAFE_NO_PAD.encode(&json), URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    /// The flow in `cookie`, if it is intact and not expired at `now`.
    pub fn open(&self, cookie: &str, now: u64) -> Option<Flow> {
        if cookie.len() > MAX_COOKIE_BYTES {
            return None;
        }
        let (payload, tag) = cookie.split_once('.')?;
        let json = URL_SAFE_NO_PAD.decode(payload).ok()?;
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        hmac::verify(&self.0, &json, &tag).ok()?;
        let flow: Flow = serde_json::from_slice(&json).ok()?;
        (flow.expires > now).then_some(flow)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow() -> Flow {
        Flow {
            client_id: "c".into(),
            redirect_uri: "https://app/cb".into(),
            scope: "patient/*.rs".into(),
            state: Some("s".into()),
            code_challenge: "x".into(),
            nonce: None,
            launch_patient: None,
            user: Some("ann".into()),
            second_factor_done: false,
            csrf: "t".into(),
            expires: 2_000,
        }
    }

    #[test]
    fn a_sealed_flow_opens_only_intact_unexpired_and_under_its_key() {
        let key = FlowKey::new(&[7; 32]);
        let sealed = key.seal(&flow());
        assert_eq!(key.open(&sealed, 1_000), Some(flow()));
        assert_eq!(key.open(&sealed, 2_000), None, "expired");
        assert_eq!(FlowKey::new(&[8; 32]).open(&sealed, 1_000), None, "another key");
        // A changed payload (the second factor marked done) fails the signature.
        let mut forged = flow();
        forged.second_factor_done = true;
        let json = serde_json::to_vec(&forged).unwrap();
        let tag = sealed.split_once('.').unwrap().1;
        assert_eq!(key.open(&format!("{}.{tag}", URL_SAFE_NO_PAD.encode(json)), 1_000), None);
        assert_eq!(key.open("garbage", 1_000), None);
        assert_eq!(key.open(&"a".repeat(MAX_COOKIE_BYTES + 1), 1_000), None);
    }
}
