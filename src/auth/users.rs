//! The people who log in at the authorization endpoint: patients (each bound to the Patient
//! record that is theirs), practitioners and administrators. Managed by the operator (`braid
//! user ...`); stored as JSON under `user/<username>` in the `auth` table, with the password
//! only as an Argon2id hash.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use unicode_normalization::UnicodeNormalization;

use super::records::Records;
use crate::fhir::{FhirError, Id, IssueCode};
use crate::store::auth::{AuthRead, AuthTxn};
use crate::store::{Store, StoreError};

/// Users, by normalised username.
const USERS: Records = Records::new(b"user/");

/// Shortest password accepted (NIST SP 800-63B's minimum).
pub const MIN_PASSWORD_CHARS: usize = 8;

/// Longest password accepted, in bytes (hashing cost grows with it).
pub const MAX_PASSWORD_BYTES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads and writes their own record only (patient-context tokens).
    Patient,
    /// Reads what the app's `user/` scopes allow.
    Practitioner,
    Admin,
}

impl Role {
    /// The role assumed for a record made before roles were recorded.
    pub fn least_privileged() -> Role {
        Role::Practitioner
    }

    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "patient" => Some(Role::Patient),
            "practitioner" => Some(Role::Practitioner),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// A user's second factor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TotpState {
    /// base64url.
    pub secret: String,
    /// Set once the user has entered a code from their app: until then enrolment shows the
    /// secret again.
    pub confirmed: bool,
    /// The last time step whose code was accepted (a code is accepted once).
    pub last_step: Option<u64>,
}

impl TotpState {
    pub fn secret_bytes(&self) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(&self.secret).unwrap_or_default()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct User {
    pub username: String,
    pub password_hash: String,
    pub role: Role,
    /// The Patient a patient user's tokens are bound to.
    pub patient: Option<String>,
    /// The FHIR resource that represents the user (`Practitioner/123`); a patient's is their
    /// Patient.
    pub fhir_user: Option<String>,
    pub totp: Option<TotpState>,
    pub created: u64,
}

impl User {
    /// The `fhirUser` of the user's tokens, relative (`Patient/p1`).
    pub fn fhir_user(&self) -> Option<String> {
        self.fhir_user.clone().or_else(|| self.patient.as_ref().map(|patient| format!("Patient/{patient}")))
    }
}

/// What the operator asks for when adding a user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    pub role: Role,
    pub patient: Option<String>,
    pub fhir_user: Option<String>,
}

fn bad(message: impl Into<String>) -> FhirError {
    FhirError::incorrect(IssueCode::Value, message)
}

/// A username as stored and compared: NFKC-normalised, lower case, trimmed; 1 to 64 of letters,
/// digits and `. _ - @ +`.
pub fn normalize_username(text: &str) -> Result<String, FhirError> {
    let name: String = text.trim().nfkc().collect::<String>().to_lowercase();
    let valid = !name.is_empty()
        && name.chars().count() <= 64
        && name.chars().all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '@' | '+'));
    if valid { Ok(name) } else { Err(bad("a username is 1 to 64 letters, digits and . _ - @ +")) }
}

/// Checks `new` and stores it as a new user.
pub async fn add(store: &Store, new: NewUser, now: u64) -> Result<User, FhirError> {
    let username = normalize_username(&new.username)?;
    let chars = new.password.chars().count();
    if chars < MIN_PASSWORD_CHARS || new.password.len() > MAX_PASSWORD_BYTES {
        return Err(bad(format!(
            "a password is at least {MIN_PASSWORD_CHARS} characters and at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    let patient = match (&new.role, &new.patient) {
        (Role::Patient, None) => return Err(bad("a patient user needs --patient: the id of their Patient record")),
        (_, Some(patient)) => {
            Some(Id::parse(patient).map_err(|_| bad(format!("'{patient}' is not a FHIR id")))?.as_str().to_owned())
        }
        (_, None) => None,
    };
    if let Some(reference) = &new.fhir_user {
        let valid = reference
            .split_once('/')
            .is_some_and(|(ty, id)| crate::fhir::ResourceType::parse(ty).is_some() && Id::parse(id).is_ok());
        if !valid {
            return Err(bad(format!(
                "--fhir-user must be a relative reference such as Practitioner/123, not '{reference}'"
            )));
        }
    }
    let password = new.password.clone();
    let password_hash = tokio::task::spawn_blocking(move || super::password::hash(&password))
        .await
        .map_err(|_| FhirError::fault("auth"))??;
    let user =
        User { username, password_hash, role: new.role, patient, fhir_user: new.fhir_user, totp: None, created: now };
    if !USERS.insert_new(store, &user.username, &user).await? {
        return Err(FhirError::conflict(format!("there is already a user {}", user.username)));
    }
    Ok(user)
}

/// A user as the operator sees it: no password hash, no TOTP secret.
pub fn describe(user: &User) -> serde_json::Value {
    serde_json::json!({
        "username": user.username,
        "role": user.role,
        "patient": user.patient,
        "fhir_user": user.fhir_user(),
        "totp": user.totp.as_ref().is_some_and(|totp| totp.confirmed),
        "created": user.created,
    })
}

pub fn list(store: &Store) -> Result<Vec<User>, StoreError> {
    USERS.all(store)
}

/// Removes a user; false if there was none.
pub async fn remove(store: &Store, username: &str) -> Result<bool, FhirError> {
    USERS.remove(store, &normalize_username(username)?).await
}

/// Forgets a user's second factor: they enrol again at their next login. False if there is no
/// such user.
pub async fn reset_totp(store: &Store, username: &str) -> Result<bool, FhirError> {
    let username = normalize_username(username)?;
    store
        .auth_write(move |txn| {
            let Some(mut user) = find_in(txn, &username)? else { return Ok(false) };
            user.totp = None;
            save_in(txn, &user)?;
            Ok(true)
        })
        .await
}

/// The user `username` (normalised), as last committed.
pub fn find(read: &AuthRead, username: &str) -> Result<Option<User>, StoreError> {
    USERS.get(read, username)
}

/// The user `username` inside a piece of auth work.
pub fn find_in(txn: &AuthTxn<'_>, username: &str) -> Result<Option<User>, StoreError> {
    USERS.get_in(txn, username)
}

/// Writes `user` inside a piece of auth work.
pub fn save_in(txn: &mut AuthTxn<'_>, user: &User) -> Result<(), FhirError> {
    USERS.put_in(txn, &user.username, user)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_are_normalised_and_limited() {
        assert_eq!(normalize_username("  Ann.Lee@Example.org ").unwrap(), "ann.lee@example.org");
        assert_eq!(normalize_username("ＡＮＮ").unwrap(), "ann", "full-width letters fold (NFKC)");
        assert!(normalize_username("").is_err());
        assert!(normalize_username("ann lee").is_err());
        assert!(normalize_username("ann/lee").is_err());
        assert!(normalize_username(&"a".repeat(65)).is_err());
    }
}
