//! `braid demo`: loads the official R4 examples and the Synthea patients shipped with Braid
//! into an empty database, through the same bundle processing that `POST /fhir` uses; then
//! simulated EHRs push `braid synth` people as sources, for the master patient index to braid
//! ([`load_braid`]).

use serde_json::{Value, json};

use crate::http::{Limits, process_bundle};
use crate::store::Store;

mod data {
    include!(concat!(env!("OUT_DIR"), "/demo_data.rs"));
}

/// A bundle entry that writes `resource` under its own id (a PUT to `{type}/{id}`).
pub fn put_entry(resource: &Value) -> Value {
    let url = format!("{}/{}", resource["resourceType"].as_str().unwrap_or(""), resource["id"].as_str().unwrap_or(""));
    json!({"resource": resource, "request": {"method": "PUT", "url": url}})
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
        .map(|resource| put_entry(&resource))
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

/// Creates the demo's accounts unless they exist: a patient login bound to `patient` (a golden
/// Patient of the braided EHRs: the login sees the person's records from every one of them), a
/// public app, and a backend service that may read everything. `None` when they were created by
/// an earlier start.
pub async fn create_accounts(
    store: &Store,
    app_redirect_uri: &str,
    patient: &str,
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
        patient: Some(patient.to_owned()),
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
        patient: patient.to_owned(),
        app_client_id: app.client.client_id,
        app_redirect_uri: app_redirect_uri.to_owned(),
        backend_client_id: backend.client.client_id,
        backend_secret: backend.secret.unwrap_or_default(),
    }))
}

/// What [`load_braid`] did.
#[derive(Debug, Clone)]
pub struct Braided {
    /// The simulated EHRs (sources), and the resources each pushed.
    pub sources: Vec<(String, usize)>,
    /// Source Patients pushed, and golden Patients they make.
    pub patients: usize,
    pub golden_patients: usize,
    /// A person registered at the most EHRs: their golden Patient and source Patients.
    pub golden: String,
    pub members: Vec<String>,
    /// Where each EHR's private key was written (to push more as that EHR).
    pub keys: std::path::PathBuf,
}

/// People the demo's simulated EHRs register.
pub const DEMO_PEOPLE: usize = 300;

/// Simulated EHRs push `braid synth` data (people at several of them, with typos, nicknames,
/// moves, twins and households, their vital signs and appointments, some reported twice, some
/// overlapping) as push sources, each in its own namespace; then the master patient index
/// links them. Each EHR's key is written to `keys` (readable by its owner only), so that more
/// can be pushed as it.
pub async fn load_braid(
    store: &Store,
    sources: &crate::sources::Registry,
    mpi: &crate::mpi::service::Mpi,
    limits: &Limits,
    base: &str,
    keys: &std::path::Path,
) -> Result<Braided, crate::fhir::FhirError> {
    use std::os::unix::fs::PermissionsExt;
    let fault = |what: &str| crate::fhir::FhirError::fault(what);
    let options = crate::mpi::synth::SynthOptions { people: DEMO_PEOPLE, sources: 4, seed: 7, clinical: true };
    let synthetic = crate::mpi::synth::generate(options);
    std::fs::create_dir_all(keys).map_err(|_| fault("demo keys"))?;
    let mut pushed = Vec::new();
    for data in &synthetic.sources {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &rng,
        )
        .map_err(|_| fault("demo key"))?;
        let pem = crate::sources::pull::pkcs8_pem(pkcs8.as_ref());
        let path = keys.join(format!("{}.pem", data.name));
        std::fs::write(&path, &pem).map_err(|_| fault("demo key file"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(|_| fault("demo key file"))?;
        let (_, _, public) = crate::sources::pull::read_key(&pem, None)?;
        let jwks = json!({"keys": [public]}).to_string();
        let new = crate::sources::NewSource {
            name: data.name.to_owned(),
            credential: crate::auth::clients::NewCredential::Jwks(jwks),
            pull: None,
            types: Vec::new(),
            lenient: false,
            extra_scope: None,
        };
        sources.add(new).await?;
        let source = sources.get(data.name).ok_or_else(|| fault("demo source"))?;
        for chunk in data.resources.chunks(200) {
            let entries: Vec<Value> = chunk.iter().map(put_entry).collect();
            let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
            process_bundle(
                store,
                limits,
                serde_json::to_vec(&bundle).unwrap_or_default().into(),
                base,
                crate::http::Return::Minimal,
                &crate::auth::Access::Unrestricted,
                Some(&source),
            )
            .await?;
        }
        pushed.push((data.name.to_owned(), data.resources.len()));
    }
    mpi.catch_up().await?;
    // The person registered at the most EHRs.
    let mut registrations: std::collections::BTreeMap<u32, Vec<String>> = std::collections::BTreeMap::new();
    for registration in &synthetic.truth {
        let source = sources.get(registration.source).ok_or_else(|| fault("demo source"))?;
        let original = crate::fhir::Id::parse(&registration.patient).map_err(|_| fault("demo id"))?;
        registrations.entry(registration.person).or_default().push(source.namespace.id(&original).as_str().to_owned());
    }
    let (_, members) = registrations
        .into_iter()
        .max_by_key(|(person, members)| (members.len(), std::cmp::Reverse(*person)))
        .unwrap_or_default();
    let golden =
        mpi.read(|overlay| Ok(overlay.golden_id_of(members.first().map_or("", String::as_str))?))?.unwrap_or_default();
    let status = mpi.describe()?;
    Ok(Braided {
        sources: pushed,
        patients: synthetic.truth.len(),
        golden_patients: status["counts"]["golden_patients"].as_u64().unwrap_or(0) as usize,
        golden,
        members,
        keys: keys.to_owned(),
    })
}
