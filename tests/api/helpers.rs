//! `spawn_app`: a Braid server on a free port with its own temporary database, plus small
//! request helpers that return status, headers and parsed JSON.

use braid::config::Settings;
use braid::startup::Application;
use reqwest::header::HeaderMap;
use serde_json::Value;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    _dir: tempfile::TempDir,
}

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The expressions of all issues of an OperationOutcome body.
    pub fn expressions(&self) -> Vec<String> {
        self.body["issue"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|issue| issue["expression"].as_array().into_iter().flatten())
            .filter_map(|e| e.as_str().map(str::to_owned))
            .collect()
    }

    pub fn assert_outcome(&self, status: u16) {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text);
        assert_eq!(self.body["resourceType"], "OperationOutcome", "expected an OperationOutcome: {}", self.text);
        assert!(self.body["issue"][0]["diagnostics"].as_str().is_some_and(|d| !d.is_empty()));
    }
}

/// A client builder for tests. The TLS test makes reqwest use rustls, which needs the process'
/// cryptography provider installed before any client is built (plain HTTP clients too).
pub fn client_builder() -> reqwest::ClientBuilder {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        // Another test may have installed it first; either way one is installed.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
    reqwest::Client::builder()
}

/// A plain client (see [`client_builder`]).
pub fn client() -> reqwest::Client {
    client_builder().build().expect("a client")
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("temporary directory");
    // The FHIR tests run without tokens (on loopback, as `--auth off` requires); the SMART
    // tests turn authorization on.
    let mut settings = Settings {
        listen: "127.0.0.1:0".into(),
        data: dir.path().join("braid.redb"),
        workers: 2,
        auth: braid::config::AuthMode::Off,
        ..Settings::default()
    };
    configure(&mut settings);
    let application = Application::build(&settings).await.expect("the server starts");
    let base = format!("http://127.0.0.1:{}/fhir", application.port());
    tokio::spawn(application.run_until_stopped());
    TestApp { base, client: client(), _dir: dir }
}

impl TestApp {
    /// A client for a server the test started itself at `base`; `dir` lives as long as it.
    pub fn at(base: String, dir: tempfile::TempDir) -> TestApp {
        TestApp { base, client: client(), _dir: dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("the request reaches the server");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("a body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, headers, body, text }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(self.client.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Reply {
        self.send(
            self.client.post(self.url(path)).header("content-type", "application/fhir+json").body(body.to_string()),
        )
        .await
    }

    /// `POST` of a FHIR JSON body with an access token (`path` empty: a transaction or batch).
    pub async fn post_with_token(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.send(
            self.client
                .post(self.url(path))
                .bearer_auth(token)
                .header("content-type", "application/fhir+json")
                .body(body.to_string()),
        )
        .await
    }

    /// `PUT` of a FHIR JSON body with an access token.
    pub async fn put_with_token(&self, path: &str, token: &str, body: &Value) -> Reply {
        self.send(
            self.client
                .put(self.url(path))
                .bearer_auth(token)
                .header("content-type", "application/fhir+json")
                .body(body.to_string()),
        )
        .await
    }

    pub async fn put(&self, path: &str, body: &Value) -> Reply {
        self.send(
            self.client.put(self.url(path)).header("content-type", "application/fhir+json").body(body.to_string()),
        )
        .await
    }

    /// `POST /{type}` with `If-None-Exist: criteria`.
    pub async fn create_if_none_exist(&self, path: &str, criteria: &str, body: &Value) -> Reply {
        let request = self.client.post(self.url(path)).header("content-type", "application/fhir+json");
        self.send(request.header("if-none-exist", criteria).body(body.to_string())).await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(self.client.delete(self.url(path))).await
    }

    /// Every entry of the system history: a way to check that a rejected request wrote nothing.
    pub async fn history_len(&self) -> usize {
        let reply = self.get("/_history?_count=1000").await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.body["entry"].as_array().map_or(0, Vec::len)
    }
}

pub fn patient(family: &str) -> Value {
    serde_json::json!({
        "resourceType": "Patient",
        "identifier": [{"system": "http://hospital.example/mrn", "value": family}],
        "name": [{"family": family, "given": ["Test"]}],
        "birthDate": "1980-02-29"
    })
}

/// The resource without `meta` (and without the `refer` link the master patient index shows on
/// a source Patient once matched), for comparing content.
pub fn without_meta(value: &Value) -> Value {
    let mut copy = without_golden_link(value);
    if let Some(map) = copy.as_object_mut() {
        map.remove("meta");
    }
    copy
}

/// Every `reference` string in `value`, in document order.
pub fn references(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                match (key.as_str(), child) {
                    ("reference", Value::String(reference)) => found.push(reference.clone()),
                    _ => references(child, found),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| references(item, found)),
        _ => {}
    }
}

/// The resource without the `refer` link to its golden Patient that the master patient index
/// shows on a source Patient (once it has matched it, moments after the write): for comparing
/// what was written with what is read.
pub fn without_golden_link(value: &Value) -> Value {
    let mut copy = value.clone();
    if let Some(map) = copy.as_object_mut()
        && let Some(links) = map.get_mut("link").and_then(Value::as_array_mut)
    {
        links.retain(|link| {
            !(link["type"] == "refer"
                && link["other"]["reference"].as_str().is_some_and(|r| r.starts_with("Patient/golden-")))
        });
        if links.is_empty() {
            map.remove("link");
        }
    }
    copy
}

/// A `braid serve` child process on a free port, with its JSON log lines.
pub struct BraidProcess {
    pub child: std::process::Child,
    pub port: u16,
    /// Every log line the process writes, parsed; a thread keeps draining its stdout.
    pub logs: std::sync::mpsc::Receiver<Value>,
}

/// Runs the `braid` command with `args` and `--data data` (off the async runtime's threads) and
/// returns what it printed.
/// The arguments are copied before it returns: the future borrows nothing.
pub fn braid_cli(data: &std::path::Path, args: &[&str]) -> impl Future<Output = std::process::Output> + use<> {
    let (args, data): (Vec<String>, _) = (args.iter().map(|arg| arg.to_string()).collect(), data.to_owned());
    async move {
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_braid"))
                .args(&args)
                .arg("--data")
                .arg(&data)
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    }
}

/// Starts the `braid` binary on `data` and waits until it logs the port it listens on.
pub fn start_braid_process(data: &std::path::Path, log_level: &str) -> BraidProcess {
    start_braid_process_with(data, log_level, &[])
}

/// Like [`start_braid_process`], with more arguments to `braid serve`.
pub fn start_braid_process_with(data: &std::path::Path, log_level: &str, extra: &[&str]) -> BraidProcess {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(extra)
        .env("BRAID_LOG_FORMAT", "json")
        .env("BRAID_LOG_LEVEL", log_level)
        .env("BRAID_AUTH", "off")
        // A test process killed midway (a timeout) leaves no server behind.
        .env("BRAID_PARENT_PID", std::process::id().to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("the braid binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let (sender, logs) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let log: Value =
                serde_json::from_str(&line).unwrap_or_else(|_| panic!("a log line that is not JSON: {line}"));
            let _ = sender.send(log);
        }
    });
    let port = loop {
        let Ok(log) = logs.recv_timeout(std::time::Duration::from_secs(60)) else {
            // Not left running when the test fails here.
            let _ = child.kill();
            let _ = child.wait();
            panic!("braid did not log its port within 60 s");
        };
        if let Some(port) = log["fields"]["port"].as_u64() {
            break port as u16;
        }
    };
    BraidProcess { child, port, logs }
}

/// A heart-rate Observation conforming to the R4 vital-signs profile.
pub fn heart_rate() -> Value {
    serde_json::json!({
        "resourceType": "Observation",
        "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/heartrate"]},
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": "Patient/example"},
        "effectiveDateTime": "2026-11-20T08:30:00Z",
        "valueQuantity": {"value": 64, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}
    })
}

/// A transaction or batch entry.
pub fn bundle_entry(method: &str, url: &str, resource: Option<Value>, full_url: Option<&str>) -> Value {
    let mut entry = serde_json::json!({"request": {"method": method, "url": url}});
    if let Some(resource) = resource {
        entry["resource"] = resource;
    }
    if let Some(full_url) = full_url {
        entry["fullUrl"] = serde_json::json!(full_url);
    }
    entry
}

/// The link of a searchset or history Bundle with `relation` (`self`, `next`, `previous`).
pub fn link(bundle: &Value, relation: &str) -> Option<String> {
    bundle["link"].as_array()?.iter().find(|l| l["relation"] == relation)?["url"].as_str().map(str::to_owned)
}

/// The `next` link of a searchset or history Bundle.
pub fn next_link(bundle: &Value) -> Option<String> {
    link(bundle, "next")
}

/// The ids of a searchset's `match` entries, in page order.
pub fn match_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect()
}

/// A server with authorization on (and its other settings as `configure` leaves them).
pub struct AuthApp {
    pub app: TestApp,
    /// The server's store: clients and users are registered through it, as the operator's
    /// socket would.
    pub store: braid::store::Store,
    /// The database file (its operator socket is next to it).
    pub data: std::path::PathBuf,
}

pub async fn spawn_auth_app_with(configure: impl FnOnce(&mut Settings)) -> AuthApp {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut settings = Settings {
        listen: "127.0.0.1:0".into(),
        data: dir.path().join("braid.redb"),
        workers: 2,
        auth: braid::config::AuthMode::On,
        // The audit tests wait for the trail: a short window keeps them quick.
        audit_window_secs: 1,
        ..Settings::default()
    };
    configure(&mut settings);
    let application = Application::build(&settings).await.expect("the server starts");
    let store = application.store().clone();
    let base = format!("http://127.0.0.1:{}/fhir", application.port());
    tokio::spawn(application.run_until_stopped());
    AuthApp { app: TestApp::at(base, dir), store, data: settings.data }
}

pub async fn spawn_auth_app() -> AuthApp {
    spawn_auth_app_with(|_| {}).await
}

impl AuthApp {
    /// An access token for `scope` (with `patient` in context), signed with the server's own
    /// key as its token endpoint would: for tests about what tokens reach, not how they are got.
    pub fn token(&self, client_id: &str, scope: &str, patient: Option<&str>) -> String {
        sign_token(&self.store, &self.app.base, client_id, scope, patient)
    }

    /// A `user/` token for a user with `role` (no patient in context), signed as [`token`]
    /// does.
    ///
    /// [`token`]: AuthApp::token
    pub fn user_token(&self, client_id: &str, scope: &str, role: braid::auth::users::Role) -> String {
        sign_claims(&self.store, &self.app.base, client_id, scope, None, Some(role))
    }
}

/// An access token for `scope` (with `patient` in context) at the server whose FHIR base is
/// `base`, signed with its key (read from `store`) as its token endpoint would.
pub fn sign_token(
    store: &braid::store::Store,
    base: &str,
    client_id: &str,
    scope: &str,
    patient: Option<&str>,
) -> String {
    sign_claims(store, base, client_id, scope, patient, patient.map(|_| braid::auth::users::Role::Patient))
}

fn sign_claims(
    store: &braid::store::Store,
    base: &str,
    client_id: &str,
    scope: &str,
    patient: Option<&str>,
    role: Option<braid::auth::users::Role>,
) -> String {
    let ring = store.auth_read(braid::auth::keys::KeyRing::load).expect("the key ring");
    let now = braid::auth::now_secs();
    let claims = braid::auth::token::AccessClaims {
        iss: base.to_owned(),
        aud: base.to_owned(),
        sub: patient.map_or_else(|| client_id.to_owned(), |p| format!("user-{p}")),
        client_id: client_id.into(),
        scope: scope.into(),
        iat: now,
        exp: now + 600,
        jti: uuid::Uuid::new_v4().to_string(),
        patient: patient.map(str::to_owned),
        fhir_user: None,
        gid: None,
        role,
        source: None,
    };
    braid::auth::token::issue(&ring, &claims).expect("a token")
}

/// Sends an operator command to the server running on the database `data`, through its
/// operator socket, as `braid` does while a server runs.
pub async fn operator(data: &std::path::Path, request: braid::auth::admin::AdminRequest) -> Result<Value, String> {
    use braid::auth::admin::{self, Sent};
    let socket = admin::socket_path(data);
    match tokio::task::spawn_blocking(move || admin::send(&socket, &request)).await.unwrap().unwrap() {
        Sent::Answered(answer) => answer.map_err(|error| error.message),
        Sent::NoServer => panic!("the server listens on its operator socket"),
    }
}

/// Writes the resources in one transaction (each must have an `id`).
pub async fn seed(app: &TestApp, resources: Vec<Value>) {
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|resource| {
            let url = format!("{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
            serde_json::json!({"resource": resource, "request": {"method": "PUT", "url": url}})
        })
        .collect();
    let reply =
        app.post("", &serde_json::json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}
