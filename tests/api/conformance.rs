//! Client compatibility: the real FHIR client libraries (`fhirclient` and `fhirpy` from PyPI,
//! `fhir-kit-client` from npm) drive a Braid server through `conformance/clients.py` and
//! `conformance/clients.mjs`, which check every result against the ids seeded here.
//!
//! `conformance/fhir-sdk` is a Rust program using fhir-sdk (crates.io) against Braid; what it found
//! about fhir-sdk's R4B models and Braid's R4 is in its checks and in the test below.
//!
//! The libraries are installed by `conformance/setup.sh` (which `.ci/run` calls, and which the
//! tests call themselves when the libraries are missing). A run without them fails, unless it
//! opts out explicitly with `BRAID_SKIP_CONFORMANCE=1`.

use std::path::Path;
use std::process::Command;

use serde_json::json;

use crate::helpers::{TestApp, spawn_app};

async fn seed(app: &TestApp) {
    let mut entries = Vec::new();
    for n in 0..12 {
        let id = format!("c{n:02}");
        entries.push(json!({"resource": {"resourceType": "Patient", "id": id, "name": [{"family": "Conformance", "given": [format!("N{n}")]}]},
            "request": {"method": "PUT", "url": format!("Patient/{id}")}}));
    }
    for n in 0..3 {
        let id = format!("obs-c01-{n}");
        entries.push(json!({"resource": {"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "note"},
            "subject": {"reference": "Patient/c01"}}, "request": {"method": "PUT", "url": format!("Observation/{id}")}}));
    }
    let reply = app.post("", &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

async fn run(program: &str, script: &str, base: &str) {
    let (program, owned_script, base) = (program.to_owned(), script.to_owned(), base.to_owned());
    let output = tokio::task::spawn_blocking(move || Command::new(&program).arg(&owned_script).arg(&base).output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{script} failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(" passed, 0 failed"), "{script} printed no summary:\n{stdout}");
    eprintln!("{stdout}");
}

/// Whether the client libraries are ready. Missing ones are installed by
/// `conformance/setup.sh`; if that fails the test fails, unless the run opts out explicitly with
/// `BRAID_SKIP_CONFORMANCE=1` (then it says so and returns `false`).
fn installed() -> bool {
    if std::env::var("BRAID_SKIP_CONFORMANCE").is_ok_and(|v| v == "1") {
        eprintln!("BRAID_SKIP_CONFORMANCE=1: the client-library conformance tests are skipped");
        return false;
    }
    let ready = || {
        Path::new("conformance/.venv/bin/python").exists()
            && Command::new("conformance/.venv/bin/python")
                .args(["-c", "import jwt, cryptography"])
                .output()
                .is_ok_and(|o| o.status.success())
            && Path::new("conformance/node_modules/fhir-kit-client").exists()
            && Path::new("conformance/node_modules/openid-client").exists()
            && Path::new("conformance/node_modules/fhirclient").exists()
            && Path::new(FHIR_SDK_PROGRAM).exists()
    };
    if !ready() {
        let status = Command::new("bash").arg("conformance/setup.sh").status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()) && ready(),
            "the client libraries are missing and conformance/setup.sh could not install them ({status:?}); \
             install them (it needs python3 with venv, node and npm, and access to PyPI and npm) or opt out with \
             BRAID_SKIP_CONFORMANCE=1"
        );
    }
    true
}

#[actix_web::test]
async fn the_python_clients_fhirclient_and_fhirpy_work_unchanged() {
    if !installed() {
        return;
    }
    let app = spawn_app().await;
    seed(&app).await;
    run("conformance/.venv/bin/python", "conformance/clients.py", &app.base).await;
}

#[actix_web::test]
async fn the_npm_client_fhir_kit_client_works_unchanged() {
    if !installed() {
        return;
    }
    let app = spawn_app().await;
    seed(&app).await;
    run("node", "conformance/clients.mjs", &app.base).await;
}

/// A server with auth on, one Patient (`c01`) written with a token of its own key, and an
/// initial access token with which a client script registers itself.
async fn backend_services_server() -> (crate::helpers::AuthApp, String) {
    let server = crate::helpers::spawn_auth_app().await;
    let initial = braid::auth::registration::issue_initial_token(&server.store, 1, 1).await.unwrap();
    let admin = server.token("seed", "system/*.cruds", None);
    let app = &server.app;
    let reply = app
        .send(
            app.client
                .put(app.url("/Patient/c01"))
                .bearer_auth(admin)
                .header("content-type", "application/fhir+json")
                .body(json!({"resourceType": "Patient", "id": "c01"}).to_string()),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    (server, initial)
}

#[actix_web::test]
async fn the_python_client_fhirclient_does_backend_services_with_an_es384_assertion() {
    if !installed() {
        return;
    }
    let (server, initial) = backend_services_server().await;
    run_with(&["conformance/.venv/bin/python", "conformance/backend.py", &server.app.base, &initial]).await;
}

#[actix_web::test]
async fn the_npm_oauth_client_openid_client_does_backend_services_with_es384() {
    if !installed() {
        return;
    }
    let (server, initial) = backend_services_server().await;
    run_with(&["node", "conformance/backend_openid.mjs", &server.app.base, &initial]).await;
}

#[actix_web::test]
async fn the_npm_client_fhirclient_completes_a_standalone_patient_launch_and_reads_the_patients_observations() {
    if !installed() {
        return;
    }
    let server = crate::helpers::spawn_auth_app().await;
    let user = braid::auth::users::NewUser {
        username: "casey".into(),
        password: "launch pass phrase".into(),
        role: braid::auth::users::Role::Patient,
        patient: Some("c01".into()),
        fhir_user: None,
    };
    braid::auth::users::add(&server.store, user, braid::auth::now_secs()).await.unwrap();
    let admin = server.token("seed", "system/*.cruds", None);
    let mut entries = Vec::new();
    for patient in ["c01", "c02"] {
        entries.push(json!({"resource": {"resourceType": "Patient", "id": patient, "name": [{"family": "Launch"}]},
            "request": {"method": "PUT", "url": format!("Patient/{patient}")}}));
        for n in 0..3 {
            let id = format!("obs-{patient}-{n}");
            entries.push(json!({"resource": {"resourceType": "Observation", "id": id, "status": "final",
                "code": {"text": "note"}, "subject": {"reference": format!("Patient/{patient}")}},
                "request": {"method": "PUT", "url": format!("Observation/{id}")}}));
        }
    }
    let app = &server.app;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let reply = app.post_with_token("", &admin, &bundle).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    run_with(&[
        "node",
        "conformance/launch_fhirclient.mjs",
        &app.base,
        "casey",
        "launch pass phrase",
        "c01",
        "c02",
        "3",
    ])
    .await;
}

/// Runs `command` (a program and its arguments) and checks that it passed every check; returns
/// what it printed.
async fn run_with(command: &[&str]) -> String {
    let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    let shown = command.join(" ");
    let output = tokio::task::spawn_blocking(move || Command::new(&command[0]).args(&command[1..]).output())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("cannot run {shown}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{shown} failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(" passed, 0 failed"), "{shown} printed no summary:\n{stdout}");
    eprintln!("{stdout}");
    stdout.into_owned()
}

/// The fhir-sdk program `conformance/setup.sh` builds.
const FHIR_SDK_PROGRAM: &str = "conformance/fhir-sdk/target/debug/braid-fhir-sdk-conformance";

/// fhir-sdk 0.16 with its `r4b` models: create, read, update, vread, a transaction of 26
/// entries with `urn:uuid` references, search with paging (3 pages), delete. What was found
/// about R4 (Braid) and R4B (fhir-sdk's models), which the program checks:
///
/// - fhir-sdk sends `application/fhir+json; fhirVersion=4.3` and accepts any answer of major
///   version 4, so it talks to Braid unchanged; the JSON of the clinical resources Braid is for
///   is the same in both (every R4 element of Patient, Observation, Encounter, Condition and the
///   others has its R4B field).
/// - 18 R4 resource types have no R4B model (MedicinalProduct and its 9 companions,
///   EffectEvidenceSynthesis, RiskEvidenceSynthesis, 6 Substance* types): fhir-sdk cannot read
///   them.
/// - A type R4B redesigned (Evidence, EvidenceVariable) does not deserialize either (R4B's
///   Evidence requires `variableDefinition`).
/// - The models ignore what they do not define (no `deny_unknown_fields`): an R4 element R4B
///   lacks (DeviceDefinition.classification) is silently dropped by a read-modify-write through
///   them. So Braid itself never passes data through fhir-sdk's models: its puller and stores
///   keep the JSON as received.
#[actix_web::test]
async fn the_rust_client_fhir_sdk_reads_searches_creates_and_runs_a_transaction() {
    if !installed() {
        return;
    }
    let server = crate::helpers::spawn_auth_app().await;
    let token = server.token("sdk", "system/*.cruds", None);
    let seed = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Evidence", "id": "r4-evidence", "name": "R4Evidence", "status": "active",
                      "exposureBackground": {"reference": "EvidenceVariable/background"}},
         "request": {"method": "PUT", "url": "Evidence/r4-evidence"}},
        {"resource": {"resourceType": "MedicinalProduct", "id": "r4-only", "name": [{"productName": "Only in R4"}]},
         "request": {"method": "PUT", "url": "MedicinalProduct/r4-only"}},
        {"resource": {"resourceType": "DeviceDefinition", "id": "r4-device", "classification": [{"type": {"text": "monitor"}}]},
         "request": {"method": "PUT", "url": "DeviceDefinition/r4-device"}}
    ]});
    let reply = server.app.post_with_token("", &token, &seed).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let printed = run_with(&[FHIR_SDK_PROGRAM, &server.app.base, &token]).await;
    assert!(printed.contains("\n15 passed, 0 failed"), "every check of the program ran:\n{printed}");
    // Nothing the client did changed the R4 content.
    let app = &server.app;
    let evidence = app.send(app.client.get(app.url("/Evidence/r4-evidence")).bearer_auth(&token)).await;
    assert_eq!(
        (evidence.body["name"].clone(), evidence.body["meta"]["versionId"].clone()),
        (json!("R4Evidence"), json!("1"))
    );
}
