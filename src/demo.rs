//! `braid demo`: loads the official R4 examples and the Synthea patients shipped with Braid
//! into an empty database, through the same bundle processing that `POST /fhir` uses.

use serde_json::{Value, json};

use crate::http::{Limits, process_bundle};
use crate::store::Store;

mod data {
    include!(concat!(env!("OUT_DIR"), "/demo_data.rs"));
}

/// What the loader did.
#[derive(Debug, Default)]
pub struct Loaded {
    pub examples: usize,
    pub examples_rejected: Vec<String>,
    pub synthea_bundles: usize,
    pub synthea_resources: usize,
}

/// Loads the demo data unless the database already holds resources.
pub async fn load_if_empty(
    store: &Store,
    limits: &Limits,
    base: &str,
) -> Result<Option<Loaded>, crate::fhir::FhirError> {
    if store.snapshot()?.newest_t()? > 0 {
        return Ok(None);
    }
    let mut loaded = Loaded::default();
    let return_minimal = crate::http::Return::Minimal;

    // The examples go in one batch of PUTs, so they keep their ids and one bad example cannot
    // keep out the others.
    let entries: Vec<Value> = data::EXAMPLES
        .iter()
        .filter_map(|(_, text)| serde_json::from_str::<Value>(text).ok())
        .map(|resource| {
            let url = format!(
                "{}/{}",
                resource["resourceType"].as_str().unwrap_or(""),
                resource["id"].as_str().unwrap_or("")
            );
            json!({"resource": resource, "request": {"method": "PUT", "url": url}})
        })
        .collect();
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": entries});
    let response = process_bundle(
        store,
        limits,
        serde_json::to_vec(&batch).unwrap_or_default().into(),
        base,
        return_minimal,
        &crate::auth::Access::Unrestricted,
        None,
    )
    .await?;
    for (entry, (name, _)) in response.entry.iter().zip(data::EXAMPLES) {
        match entry.response.as_ref().map(|r| r.status.as_str()) {
            Some(status) if status.starts_with('2') => loaded.examples += 1,
            _ => loaded.examples_rejected.push((*name).to_owned()),
        }
    }

    // Synthea writes its patients as batch bundles with urn:uuid references between entries;
    // each is loaded as a transaction so that those references resolve.
    for (_, text) in data::SYNTHEA {
        let Ok(mut bundle) = serde_json::from_str::<Value>(text) else { continue };
        bundle["type"] = json!("transaction");
        let count = bundle["entry"].as_array().map_or(0, Vec::len);
        process_bundle(
            store,
            limits,
            serde_json::to_vec(&bundle).unwrap_or_default().into(),
            base,
            return_minimal,
            &crate::auth::Access::Unrestricted,
            None,
        )
        .await?;
        loaded.synthea_bundles += 1;
        loaded.synthea_resources += count;
    }
    Ok(Some(loaded))
}

/// The demo's accounts, with their secrets: shown once, when they are created.
#[derive(Debug, Clone)]
pub struct DemoAccounts {
    pub username: String,
    pub password: String,
    /// The Patient the demo login is bound to.
    pub patient: String,
    /// A public app that may launch with the patient's login.
    pub app_client_id: String,
    pub app_redirect_uri: String,
    /// A backend service with a client secret.
    pub backend_client_id: String,
    pub backend_secret: String,
}

/// The user name of the demo's patient login.
pub const DEMO_USER: &str = "demo-patient";

/// Creates the demo's accounts unless they exist: a patient login bound to the official example
/// patient (`Patient/example`), a public app, and a backend service that may read everything.
/// `None` when they were created by an earlier start.
pub async fn create_accounts(
    store: &Store,
    app_redirect_uri: &str,
) -> Result<Option<DemoAccounts>, crate::fhir::FhirError> {
    use crate::auth::clients::{self, GrantType, NewClient, NewCredential};
    use crate::auth::users::{self, NewUser, Role};
    if store.auth_read(|read| users::find(read, DEMO_USER))?.is_some() {
        return Ok(None);
    }
    let password = {
        use base64::Engine;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(crate::auth::random_bytes::<12>())
    };
    let now = crate::auth::now_secs();
    let user = NewUser {
        username: DEMO_USER.into(),
        password: password.clone(),
        role: Role::Patient,
        patient: Some("example".into()),
        fhir_user: None,
    };
    users::add(store, user, now).await?;
    let app = clients::add(
        store,
        NewClient {
            name: "demo app".into(),
            scope: "launch/patient openid fhirUser offline_access patient/*.rs".into(),
            grant_types: vec![GrantType::AuthorizationCode],
            redirect_uris: vec![app_redirect_uri.to_owned()],
            credential: NewCredential::None,
            source: None,
        },
        now,
    )
    .await?;
    let backend = clients::add(
        store,
        NewClient {
            name: "demo backend".into(),
            scope: "system/*.rs".into(),
            grant_types: vec![GrantType::ClientCredentials],
            redirect_uris: Vec::new(),
            credential: NewCredential::Secret,
            source: None,
        },
        now,
    )
    .await?;
    Ok(Some(DemoAccounts {
        username: DEMO_USER.into(),
        password,
        patient: "example".into(),
        app_client_id: app.client.client_id,
        app_redirect_uri: app_redirect_uri.to_owned(),
        backend_client_id: backend.client.client_id,
        backend_secret: backend.secret.unwrap_or_default(),
    }))
}
