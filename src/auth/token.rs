//! Access tokens: JWTs Braid signs with its active key (ES256, `typ: at+jwt` as RFC 9068 names
//! them) and verifies with any key of its ring, and the [`Grant`] a verified token carries.

use jsonwebtoken::{Algorithm, Header, Validation};
use serde::{Deserialize, Serialize};

use super::keys::KeyRing;
use super::restrict::RestrictionMemo;
use super::rules::{AccessRules, TRAIL_TYPES};
use super::scope::{Context, Scope, parse_scopes};
use super::users::Role;
use crate::fhir::FhirError;

/// Longest bearer token read, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// What an access token says.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    /// The FHIR base of the server that issued it.
    pub iss: String,
    /// The FHIR base it may be used at.
    pub aud: String,
    /// The client (Backend Services) or the user it was issued for.
    pub sub: String,
    pub client_id: String,
    pub scope: String,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<String>,
    #[serde(default, rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
    /// The grant (the refresh token's) this token was issued under: revoking it revokes the
    /// token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<String>,
    /// The role of the user a user's or patient's token was issued to (absent for Backend
    /// Services): it limits what the scopes allow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The source a push source's token writes as (see [`crate::sources`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// What a verified token allows its bearer.
#[derive(Debug, Clone)]
pub struct Grant {
    pub client_id: String,
    pub subject: String,
    /// The FHIR base the token is for.
    pub audience: String,
    /// Whose data the token's resource scopes reach.
    pub context: Context,
    pub rules: AccessRules,
    /// The patient in context (patient-context tokens).
    pub patient: Option<String>,
    pub scope: String,
    pub expires: u64,
    pub jti: String,
    pub gid: Option<String>,
    pub fhir_user: Option<String>,
    pub iat: u64,
    /// The source whose namespace the token writes in, for a push source's client.
    pub source: Option<String>,
    /// The role of the user it was issued to (`None` for a backend service).
    pub role: Option<Role>,
    /// When the patient in context is a golden Patient (a person the master patient index
    /// braided from several sources): it and the source Patients linked to it, as the index
    /// holds them when the request arrives (filled in per request, never signed into the
    /// token). Empty otherwise.
    pub person: Vec<String>,
    /// What it allows, as computed for the requests it has served (see [`RestrictionMemo`]).
    pub restrictions: RestrictionMemo,
}

impl Grant {
    /// Whether the token is an operator's: an administrator's `user/` token, or a backend
    /// service's `system/` token that is not a source's, either way able to change every
    /// Patient. Operators manage what the server derives, such as the master patient index's
    /// links.
    /// The Patients whose compartments a patient-context token reaches: its patient, or the
    /// whole [`Grant::person`] when that is a golden Patient.
    pub fn compartment_patients(&self) -> Vec<String> {
        match &self.patient {
            Some(_) if !self.person.is_empty() => self.person.clone(),
            Some(patient) => vec![patient.clone()],
            None => Vec::new(),
        }
    }

    pub fn is_operator(&self) -> bool {
        use super::rules::Decision;
        use super::scope::Interaction;
        let operator = match self.context {
            Context::User => self.role == Some(Role::Admin),
            Context::System => self.source.is_none(),
            Context::Patient => false,
        };
        operator
            && self.patient.is_none()
            && self.rules.decide(crate::fhir::ResourceType::PATIENT, Interaction::Update) == Decision::All
    }

    fn from_claims(claims: AccessClaims) -> Grant {
        let scopes = parse_scopes(&claims.scope).map(|scopes| scopes.granted).unwrap_or_default();
        // A token carries the scopes of one context: a patient's when it names a patient, a
        // user's when it holds user/ scopes, a backend service's otherwise.
        let has = |context| scopes.iter().any(|s| matches!(s, Scope::Resource(r) if r.context == context));
        let context = if claims.patient.is_some() {
            Context::Patient
        } else if has(Context::User) {
            Context::User
        } else {
            Context::System
        };
        let mut rules = AccessRules::from_scopes(&scopes, context);
        // Only an administrator's token changes the trail; a token for a user whose role it
        // does not name counts as no administrator's.
        // A source's token never changes the trail either: the Provenance of its pushes is
        // about it.
        if (context != Context::System && claims.role != Some(Role::Admin)) || claims.source.is_some() {
            rules = rules.with_read_only(&TRAIL_TYPES);
        }
        Grant {
            rules,
            context,
            client_id: claims.client_id,
            subject: claims.sub,
            audience: claims.aud,
            patient: claims.patient,
            scope: claims.scope,
            expires: claims.exp,
            jti: claims.jti,
            gid: claims.gid,
            fhir_user: claims.fhir_user,
            iat: claims.iat,
            source: claims.source,
            role: claims.role,
            person: Vec::new(),
            restrictions: Default::default(),
        }
    }
}

/// Signs `claims` with the ring's active key.
pub fn issue(ring: &KeyRing, claims: &AccessClaims) -> Result<String, FhirError> {
    let key = ring.active(Algorithm::ES256).ok_or_else(|| FhirError::fault("no signing key"))?;
    let mut header = Header::new(key.algorithm);
    header.kid = Some(key.kid.clone());
    header.typ = Some("at+jwt".into());
    jsonwebtoken::encode(&header, claims, key.encoding()).map_err(|error| {
        tracing::error!(%error, "cannot sign an access token");
        FhirError::fault("token signing")
    })
}

/// The claims of an OpenID Connect id_token (Core §2), with SMART's `fhirUser`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct IdClaims {
    pub iss: String,
    pub sub: String,
    /// The client.
    pub aud: String,
    pub exp: u64,
    pub iat: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    #[serde(default, rename = "fhirUser", skip_serializing_if = "Option::is_none")]
    pub fhir_user: Option<String>,
}

/// Signs an id_token with the ring's active RS256 key.
pub fn issue_id_token(ring: &KeyRing, claims: &IdClaims) -> Result<String, FhirError> {
    let key = ring.active(Algorithm::RS256).ok_or_else(|| FhirError::fault("no id_token signing key"))?;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, key.encoding()).map_err(|error| {
        tracing::error!(%error, "cannot sign an id_token");
        FhirError::fault("id_token signing")
    })
}

/// Verifies a bearer token for the server whose FHIR base is `fhir_base`; the error says why it
/// is refused (for the `WWW-Authenticate` challenge: nothing secret).
pub fn verify(ring: &KeyRing, token: &str, fhir_base: &str, now: u64) -> Result<Grant, String> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err("the access token is too long".into());
    }
    let header = jsonwebtoken::decode_header(token).map_err(|_| "the access token is not a JWT".to_owned())?;
    if header.alg != Algorithm::ES256 {
        return Err("the access token was not issued by this server".into());
    }
    let kid = header.kid.ok_or("the access token was not issued by this server")?;
    let key =
        ring.verifying(&kid, now).ok_or("the access token was not issued by this server, or its key was retired")?;
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_audience(&[fhir_base]);
    validation.set_issuer(&[fhir_base]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<AccessClaims>(token, key.decoding(), &validation).map_err(|error| {
        use jsonwebtoken::errors::ErrorKind;
        match error.kind() {
            ErrorKind::ExpiredSignature => "the access token has expired".to_owned(),
            ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => {
                "the access token is for another server".to_owned()
            }
            _ => "the access token is not valid".to_owned(),
        }
    })?;
    Ok(Grant::from_claims(claims.claims))
}

/// The grant a verified token with these claims gives: tests build their grants here, through
/// the same path as a real token.
#[cfg(test)]
impl Grant {
    pub(crate) fn for_test(scope: &str, patient: Option<&str>, role: Option<Role>) -> Grant {
        Grant::from_claims(AccessClaims {
            iss: "https://braid.test/fhir".into(),
            aud: "https://braid.test/fhir".into(),
            sub: "someone".into(),
            client_id: "app".into(),
            scope: scope.into(),
            iat: 0,
            exp: 1,
            jti: "j".into(),
            patient: patient.map(str::to_owned),
            fhir_user: None,
            gid: None,
            role,
            source: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::rules::Decision;
    use crate::auth::scope::Interaction;
    use crate::fhir::ResourceType;

    #[test]
    fn only_an_administrators_token_changes_the_trail_whatever_its_scopes() {
        let audit = ResourceType::parse("AuditEvent").unwrap();
        let provenance = ResourceType::parse("Provenance").unwrap();
        let observation = ResourceType::parse("Observation").unwrap();
        for (scope, patient, role) in [
            ("user/*.cruds", None, Some(Role::Practitioner)),
            ("user/*.cruds", None, None),
            ("patient/*.cruds", Some("1"), Some(Role::Patient)),
            ("user/AuditEvent.cud user/AuditEvent.rs", None, Some(Role::Practitioner)),
        ] {
            let rules = Grant::for_test(scope, patient, role).rules;
            for write in [Interaction::Create, Interaction::Update, Interaction::Delete] {
                assert_eq!(rules.decide(audit, write), Decision::Deny, "{scope} {role:?} {write:?}");
                assert_eq!(rules.decide(provenance, write), Decision::Deny, "{scope} {role:?} {write:?}");
            }
            assert_eq!(rules.decide(audit, Interaction::Read), Decision::All, "{scope}: reads as the scopes allow");
            if scope.contains('*') {
                assert_eq!(rules.decide(observation, Interaction::Delete), Decision::All, "{scope}");
            }
        }
        let admin = Grant::for_test("user/*.cruds", None, Some(Role::Admin)).rules;
        assert_eq!(admin.decide(audit, Interaction::Delete), Decision::All);
        let backend = Grant::for_test("system/*.cruds", None, None).rules;
        assert_eq!(backend.decide(provenance, Interaction::Create), Decision::All, "the operator's scopes alone");
    }

    #[test]
    fn the_role_travels_in_the_token_and_old_tokens_without_it_are_read() {
        let mut claims = AccessClaims {
            iss: "i".into(),
            aud: "a".into(),
            sub: "s".into(),
            client_id: "c".into(),
            scope: "user/*.rs".into(),
            iat: 0,
            exp: 1,
            jti: "j".into(),
            patient: None,
            fhir_user: None,
            gid: None,
            role: Some(Role::Admin),
            source: None,
        };
        let text = serde_json::to_string(&claims).unwrap();
        assert!(text.contains(r#""role":"admin""#), "{text}");
        claims.role = None;
        let without: AccessClaims = serde_json::from_str(&serde_json::to_string(&claims).unwrap()).unwrap();
        assert_eq!(without.role, None);
    }
}
