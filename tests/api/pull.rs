//! Pull sources against two kinds of upstream started by the tests on loopback: another Braid
//! (SMART Backend Services and its own `$export`), and a minimal search-only FHIR server
//! written here (paging, `_lastUpdated`, and injected 429s, 503s and dropped connections).
//! A puller killed mid-run resumes, and the run ends with exactly the upstream's content.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use braid::auth::admin::AdminRequest;
use braid::auth::clients::{NewClient, NewCredential};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{TestApp, braid_cli, operator, spawn_auth_app, start_braid_process, without_golden_link};

/// A fresh P-384 private key, in the PEM form an operator gives `--key`.
fn private_key_pem() -> String {
    let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .unwrap();
    braid::sources::pull::pkcs8_pem(pkcs8.as_ref())
}

/// Registers Braid's public key at an upstream Braid as a backend client with `scope`; returns
/// the client id the pull source is given.
async fn register_at(upstream: &crate::helpers::AuthApp, public: &Value, scope: &str) -> String {
    let new = NewClient {
        name: "downstream braid".into(),
        scope: scope.into(),
        grant_types: Vec::new(),
        redirect_uris: Vec::new(),
        credential: NewCredential::Jwks(json!({"keys": [public]}).to_string()),
        source: None,
    };
    braid::auth::clients::add(&upstream.store, new, braid::auth::now_secs()).await.unwrap().client.client_id
}

fn pull_source(name: &str, base: &str, client_id: &str, key_pem: &str, types: &[&str]) -> AdminRequest {
    AdminRequest::AddSource {
        source: braid::sources::NewSource {
            name: name.into(),
            credential: NewCredential::None,
            pull: Some(braid::sources::NewPull {
                base: base.into(),
                client_id: client_id.into(),
                key_pem: key_pem.into(),
                kid: None,
                every: None,
            }),
            types: types.iter().map(|t| t.to_string()).collect(),
            lenient: false,
            extra_scope: None,
        },
    }
}

/// Every resource of `type_name` at `app` (with `token`), by id.
async fn all_of(app: &TestApp, type_name: &str, query: &str, token: Option<&str>) -> BTreeMap<String, Value> {
    let mut found = BTreeMap::new();
    let mut url = app.url(&format!("/{type_name}?_count=1000&{query}"));
    loop {
        let mut request = app.client.get(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let reply = app.send(request).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        for entry in reply.body["entry"].as_array().into_iter().flatten() {
            found.insert(entry["resource"]["id"].as_str().unwrap().to_owned(), entry["resource"].clone());
        }
        match crate::helpers::next_link(&reply.body) {
            Some(next) => url = next,
            None => return found,
        }
    }
}

/// `resource` without what Braid sets or adds when it stores a pulled resource: to compare
/// with the upstream's.
fn as_sent(resource: &Value) -> Value {
    // Each Braid shows its own golden Patient's link on a Patient; neither is sent.
    let mut resource = without_golden_link(resource);
    let map = resource.as_object_mut().unwrap();
    map.remove("meta");
    map.remove("id");
    if let Some(identifiers) = map.get_mut("identifier").and_then(Value::as_array_mut) {
        identifiers.retain(|identifier| !identifier["system"].as_str().unwrap_or("").starts_with("urn:braid:source:"));
        if identifiers.is_empty() {
            map.remove("identifier");
        }
    }
    resource
}

#[tokio::test]
async fn a_pull_from_an_upstream_braid_uses_its_export_then_takes_only_what_changed() {
    let upstream = spawn_auth_app().await;
    let downstream = spawn_auth_app().await;
    let writer = upstream.token("seed", "system/*.cruds", None);
    let up = &upstream.app;
    let mut seeded = Vec::new();
    for n in 0..40 {
        seeded.push(json!({"resourceType": "Patient", "id": format!("p{n}"), "name": [{"family": format!("F{n}")}],
            "identifier": [{"system": "http://clinic.example/mrn", "value": format!("{n}")}]}));
    }
    for n in 0..120 {
        // Some references are absolute URLs on the upstream's own base.
        let subject =
            if n % 2 == 0 { format!("Patient/p{}", n % 40) } else { format!("{}/Patient/p{}", up.base, n % 40) };
        seeded.push(json!({"resourceType": "Observation", "id": format!("o{n}"), "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}, "subject": {"reference": subject},
            "performer": [{"reference": "Practitioner/dr"}]}));
    }
    seeded.push(json!({"resourceType": "Practitioner", "id": "dr", "name": [{"family": "Who"}]}));
    // A reference to what the upstream does not have.
    seeded.push(json!({"resourceType": "Observation", "id": "o-dangling", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "Patient/p0"}, "performer": [{"reference": "Organization/nowhere"}]}));
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": seeded.iter().map(|resource| json!({
        "resource": resource,
        "request": {"method": "PUT", "url": format!("{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap())}
    })).collect::<Vec<_>>()});
    assert_eq!(up.post_with_token("", &writer, &bundle).await.status, 200);
    // A later write of a type not pulled: the export's transaction time, its newest instant, is
    // then after the whole seeding batch.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let later = json!({"resourceType": "Organization", "id": "later", "name": "Later"});
    assert_eq!(up.put_with_token("/Organization/later", &writer, &later).await.status, 201);

    // Braid's key, registered at the upstream as a backend client; the source pulls with it.
    let key = private_key_pem();
    let (_, _, public) = braid::sources::pull::read_key(&key, None).unwrap();
    let client_id = register_at(&upstream, &public, "system/*.rs").await;
    // Practitioners are not pulled, but the Observations reference one: it is fetched too.
    let added =
        operator(&downstream.data, pull_source("clinic", &up.base, &client_id, &key, &["Patient", "Observation"]))
            .await
            .unwrap();
    assert_eq!((added["source"].clone(), added["kind"].clone()), (json!("clinic"), json!("pull")));
    assert_eq!(added["jwks"]["keys"][0], public, "the public key to register upstream");

    let synced = sync(&downstream, "clinic").await;
    let run = &synced["run"];
    assert_eq!((run["outcome"].clone(), run["mode"].clone()), (json!("complete"), json!("bulk")), "{synced}");
    assert_eq!(run["counts"]["received"], 163, "{synced}");
    assert_eq!(run["counts"]["created"], 162, "{synced}");
    assert_eq!(run["counts"]["rejected"], 1, "{synced}");
    assert!(run["rejections"][0].as_str().unwrap().contains("Organization/nowhere"), "{synced}");

    // Exactly the upstream's content, in the namespace.
    let reader = downstream.token("reader", "system/*.rs", None);
    let down = &downstream.app;
    for type_name in ["Patient", "Observation", "Practitioner"] {
        let theirs = all_of(up, type_name, "", Some(&writer)).await;
        let ours = all_of(down, type_name, "_source=urn:braid:source:clinic", Some(&reader)).await;
        assert_eq!(ours.len(), theirs.len(), "{type_name}");
        for (id, resource) in &theirs {
            let stored = &ours[&format!("clinic-{id}")];
            assert_eq!(stored["meta"]["versionId"], "1");
            let mut expected = as_sent(resource);
            if let Some(subject) = expected.get_mut("subject") {
                let patient = subject["reference"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
                subject["reference"] = json!(format!("Patient/clinic-{patient}"));
            }
            if let Some(performer) = expected.get_mut("performer") {
                let target = performer[0]["reference"].as_str().unwrap().replace('/', "/clinic-");
                performer[0]["reference"] = json!(target);
            }
            assert_eq!(as_sent(stored), expected, "{type_name}/{id}");
        }
    }
    let original = &all_of(down, "Patient", "_id=clinic-p7", Some(&reader)).await["clinic-p7"];
    assert!(
        original["identifier"]
            .as_array()
            .unwrap()
            .contains(&json!({"system": "urn:braid:source:clinic", "value": "p7"}))
    );

    // What changed since: one update and one create, and nothing else read.
    let mut changed = seeded[7].clone();
    changed["name"] = json!([{"family": "Changed"}]);
    assert_eq!(up.put_with_token("/Patient/p7", &writer, &changed).await.status, 200);
    let added = json!({"resourceType": "Patient", "id": "p40", "name": [{"family": "New"}]});
    assert_eq!(up.put_with_token("/Patient/p40", &writer, &added).await.status, 201);
    let synced = sync(&downstream, "clinic").await;
    let counts = &synced["run"]["counts"];
    assert_eq!((counts["updated"].clone(), counts["created"].clone()), (json!(1), json!(1)), "{synced}");
    // Only what changed since the first export (and so nothing that references the dangling
    // reference again).
    let number = |key: &str| counts[key].as_u64().unwrap();
    assert_eq!((number("received"), number("unchanged"), number("rejected")), (2, 0, 0), "{synced}");
    let ours = all_of(down, "Patient", "_id=clinic-p7,clinic-p40", Some(&reader)).await;
    assert_eq!(ours["clinic-p7"]["name"][0]["family"], "Changed");
    assert_eq!(ours["clinic-p7"]["meta"]["versionId"], "2");
    assert_eq!(ours["clinic-p40"]["name"][0]["family"], "New");
    let synced = sync(&downstream, "clinic").await;
    let counts = &synced["run"]["counts"];
    assert_eq!((counts["created"].clone(), counts["updated"].clone()), (json!(0), json!(0)), "nothing new: {synced}");
    assert!(counts["received"].as_u64().unwrap() <= 3, "{synced}");

    let shown = operator(&downstream.data, AdminRequest::ShowSource { name: "clinic".into() }).await.unwrap();
    assert_eq!(shown["runs"].as_array().unwrap().len(), 3);
    // The next `_since` is the last export's transaction time: the instant of the upstream's
    // newest version, so no earlier than the last change the runs read.
    let changed_at = all_of(up, "Patient", "_id=p40", Some(&writer)).await["p40"]["meta"]["lastUpdated"].clone();
    let since = shown["since"].as_str().expect("a next _since");
    assert_eq!(since.len(), changed_at.as_str().unwrap().len(), "the same instant format: {since}");
    assert!(since >= changed_at.as_str().unwrap(), "{since} is not before {changed_at}");
    // ...and taken at the upstream, before the last run began (not Braid's clock at its end).
    let last_started = shown["runs"][2]["started"].as_i64().unwrap();
    let started_by = braid::fhir::json::format_instant(last_started * 1_000_000 + 999_999);
    assert!(since <= started_by.as_str(), "{since} is after the last run began ({started_by})");
    assert!(shown.get("key_pem").is_none() && !shown.to_string().contains("-----BEGIN"), "the key is never shown");
    // A push source cannot be synced, an unknown one neither.
    let refused = operator(&downstream.data, AdminRequest::SyncSource { name: "nobody".into() }).await.unwrap_err();
    assert!(refused.contains("no source nobody"), "{refused}");
    let pushing = AdminRequest::AddSource {
        source: braid::sources::NewSource {
            name: "pusher".into(),
            credential: NewCredential::Jwks(json!({"keys": [public]}).to_string()),
            pull: None,
            types: Vec::new(),
            lenient: false,
            extra_scope: None,
        },
    };
    operator(&downstream.data, pushing).await.unwrap();
    let refused = operator(&downstream.data, AdminRequest::SyncSource { name: "pusher".into() }).await.unwrap_err();
    assert!(refused.contains("is a push source"), "{refused}");
}

/// A fresh RSA private key (for RS384), in the PEM form `--key` reads.
fn rsa_private_key_pem() -> String {
    use aws_lc_rs::encoding::AsDer;
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    braid::sources::pull::pkcs8_pem(pair.as_der().unwrap().as_ref())
}

#[tokio::test]
async fn a_pull_authenticates_with_rs384_too_and_a_key_the_upstream_does_not_know_fails_the_run_with_the_reason() {
    let upstream = spawn_auth_app().await;
    let downstream = spawn_auth_app().await;
    let writer = upstream.token("seed", "system/*.cruds", None);
    for n in 0..3 {
        let patient = json!({"resourceType": "Patient", "id": format!("r{n}")});
        let reply = upstream.app.put_with_token(&format!("/Patient/r{n}"), &writer, &patient).await;
        assert_eq!(reply.status, 201);
    }
    let key = rsa_private_key_pem();
    let (_, kid, public) = braid::sources::pull::read_key(&key, None).unwrap();
    assert_eq!(public["kty"], "RSA");
    let client_id = register_at(&upstream, &public, "system/Patient.rs").await;
    let added = operator(&downstream.data, pull_source("rsa", &upstream.app.base, &client_id, &key, &["Patient"]))
        .await
        .unwrap();
    assert_eq!(added["kid"], kid.as_str());
    let synced = sync(&downstream, "rsa").await;
    assert_eq!(
        (synced["run"]["outcome"].clone(), synced["run"]["counts"]["created"].clone()),
        (json!("complete"), json!(3)),
        "{synced}"
    );

    // Another key under the same client id: the upstream refuses it, and the run says why.
    operator(
        &downstream.data,
        pull_source("stranger", &upstream.app.base, &client_id, &private_key_pem(), &["Patient"]),
    )
    .await
    .unwrap();
    let synced = sync(&downstream, "stranger").await;
    assert_eq!(synced["run"]["outcome"], "failed", "{synced}");
    assert!(synced["run"]["error"].as_str().unwrap().contains("invalid_client"), "{synced}");
    let shown = operator(&downstream.data, AdminRequest::ShowSource { name: "stranger".into() }).await.unwrap();
    assert_eq!(shown["runs"][0]["outcome"], "failed");
    assert!(shown["since"].is_null(), "a failed run moves no _since");
}

/// One request a test upstream received.
struct Incoming {
    method: String,
    /// The path, without the query.
    path: String,
    query: String,
    head: String,
    body: Vec<u8>,
}

impl Incoming {
    /// The request target as sent: the path and the query.
    fn target(&self) -> String {
        if self.query.is_empty() { self.path.clone() } else { format!("{}?{}", self.path, self.query) }
    }
}

/// A test upstream's answer: `status`, more header lines (each ending in CRLF) and `body`, as
/// FHIR JSON.
fn answer(status: u16, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} X\r\n{extra}Content-Type: application/fhir+json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// What every test upstream answers to SMART discovery and to a token request with a client
/// assertion (the token is `token-1`); `None` for any other request.
fn smart_answer(request: &Incoming, origin: &str) -> Option<Vec<u8>> {
    match request.path.as_str() {
        "/fhir/.well-known/smart-configuration" => {
            Some(answer(200, "", &json!({"token_endpoint": format!("{origin}/token")}).to_string()))
        }
        "/token" if String::from_utf8_lossy(&request.body).contains("client_assertion=") => Some(answer(
            200,
            "",
            &json!({"access_token": "token-1", "token_type": "Bearer", "expires_in": 300}).to_string(),
        )),
        _ => None,
    }
}

/// Runs the pull source `name` of `downstream` once, as `braid source sync` does; its answer.
async fn sync(downstream: &crate::helpers::AuthApp, name: &str) -> Value {
    operator(&downstream.data, AdminRequest::SyncSource { name: name.into() }).await.unwrap()
}

/// Adds the pull source `name` reading `types` from `base` as the client `braid`, with a fresh
/// key (the tests' upstreams accept any assertion).
async fn add_pull(downstream: &crate::helpers::AuthApp, name: &str, base: &str, types: &[&str]) {
    operator(&downstream.data, pull_source(name, base, "braid", &private_key_pem(), types)).await.unwrap();
}

/// A test upstream answering SMART discovery and tokens ([`smart_answer`]), and every other
/// request with what `route` returns for it (given the origin). Returns its FHIR base,
/// `{origin}/fhir`.
async fn smart_upstream<F>(route: F) -> String
where
    F: Fn(&Incoming, &str) -> Vec<u8> + Send + Sync + 'static,
{
    let route = Arc::new(route);
    let origin = fake_upstream(move |request, origin| {
        let route = route.clone();
        async move { smart_answer(&request, &origin).unwrap_or_else(|| route(&request, &origin)) }
    })
    .await;
    format!("{origin}/fhir")
}

/// Starts a minimal HTTP/1.1 server on a free loopback port, for the tests' upstreams: each
/// connection carries one request, answered with the bytes `handle` returns for it (given the
/// server's origin), then closed; no bytes drop the connection without an answer. Returns the
/// origin, `http://127.0.0.1:<port>`.
async fn fake_upstream<F, Fut>(handle: F) -> String
where
    F: Fn(Incoming, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Vec<u8>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let (handle, served) = (Arc::new(handle), origin.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (handle, origin) = (handle.clone(), served.clone());
            tokio::spawn(async move {
                let Some(request) = read_request(&mut stream).await else { return };
                let reply = handle(request, origin).await;
                let _ = stream.write_all(&reply).await;
            });
        }
    });
    origin
}

/// Reads one request: its head (at most 64 KiB) and the body its Content-Length announces.
async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Incoming> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 || head.len() > 64 * 1024 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let length: usize = head
        .lines()
        .find_map(|line| {
            line.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.ok()?;
    let mut words = head.split(' ');
    let method = words.next().unwrap_or("").to_owned();
    let target = words.next().unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (path, query) = (path.to_owned(), query.to_owned());
    Some(Incoming { method, path, query, head, body })
}

/// How the search-only server writes its next links.
#[derive(Clone, Copy, PartialEq)]
enum Links {
    /// Absolute, on the address the client used.
    Absolute,
    /// Relative to the server's root (`/fhir/Observation?...`), as some servers write them.
    Relative,
    /// Absolute, but naming the server `localhost` where the client used `127.0.0.1`, as a
    /// server behind a proxy or with a configured address may.
    OtherHost,
    /// Every next link points at the first page again: a paging loop.
    Circular,
}

/// The minimal search-only FHIR server: Patients and Observations with fixed `lastUpdated`
/// values, `_count` and `_offset` paging, `_lastUpdated=gt`, a token endpoint that hands out
/// one token, no `$export`; every few requests fail on purpose.
struct SearchOnly {
    base: String,
    /// Requests answered with a fault (429, 503 or a dropped connection).
    faults: Arc<AtomicUsize>,
    resources: Arc<std::sync::Mutex<Vec<Value>>>,
    /// The request target of every page served.
    served: Arc<std::sync::Mutex<Vec<String>>>,
}

impl SearchOnly {
    async fn start(patients: usize, observations: usize, page_delay: Duration) -> SearchOnly {
        SearchOnly::with_links(patients, observations, page_delay, Links::Absolute).await
    }

    async fn with_links(patients: usize, observations: usize, page_delay: Duration, links: Links) -> SearchOnly {
        let mut resources = Vec::new();
        for n in 0..patients {
            resources
                .push(json!({"resourceType": "Patient", "id": format!("p{n}"), "name": [{"family": format!("F{n}")}],
                "meta": {"lastUpdated": format!("2024-01-01T00:00:{:02}.{:03}Z", n / 1000 % 60, n % 1000)}}));
        }
        for n in 0..observations {
            resources.push(json!({"resourceType": "Observation", "id": format!("o{n}"), "status": "final",
                "code": {"text": "pulse"}, "subject": {"reference": format!("Patient/p{}", n % patients.max(1))},
                "meta": {"lastUpdated": format!("2024-01-02T00:00:{:02}.{:03}Z", n / 1000 % 60, n % 1000)}}));
        }
        let state = Arc::new(SearchState {
            resources: Arc::new(std::sync::Mutex::new(resources)),
            requests: AtomicUsize::new(0),
            faults: Arc::new(AtomicUsize::new(0)),
            served: Arc::new(std::sync::Mutex::new(Vec::new())),
            page_delay,
            links,
        });
        let (resources, faults, served) = (state.resources.clone(), state.faults.clone(), state.served.clone());
        let origin = fake_upstream(move |request, origin| {
            let state = state.clone();
            async move { state.answer(request, &origin).await }
        })
        .await;
        SearchOnly { base: format!("{origin}/fhir"), faults, resources, served }
    }
}

/// What the search-only server holds and counts.
struct SearchState {
    resources: Arc<std::sync::Mutex<Vec<Value>>>,
    /// Search requests so far, which decide the faults.
    requests: AtomicUsize,
    faults: Arc<AtomicUsize>,
    served: Arc<std::sync::Mutex<Vec<String>>>,
    page_delay: Duration,
    links: Links,
}

impl SearchState {
    async fn answer(&self, request: Incoming, origin: &str) -> Vec<u8> {
        if let Some(answer) = smart_answer(&request, origin) {
            return answer;
        }
        let authorized = request.head.lines().any(|line| line.eq_ignore_ascii_case("authorization: bearer token-1"));
        let (path, query) = (request.path.as_str(), request.query.as_str());
        let (status, reply): (u16, Value) = match path {
            _ if !authorized => {
                (401, json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "login"}]}))
            }
            "/fhir/$export" => (
                404,
                json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-supported"}]}),
            ),
            type_path if type_path.starts_with("/fhir/") => {
                // Faults, on searches only: one request in five is a 429, then a 503, then a drop.
                let n = self.requests.fetch_add(1, Ordering::Relaxed);
                match n % 5 {
                    1 => {
                        self.faults.fetch_add(1, Ordering::Relaxed);
                        return answer(429, "Retry-After: 0\r\n", "");
                    }
                    2 if n % 10 == 2 => {
                        self.faults.fetch_add(1, Ordering::Relaxed);
                        return answer(503, "", "");
                    }
                    3 if n % 15 == 3 => {
                        self.faults.fetch_add(1, Ordering::Relaxed);
                        return Vec::new(); // the connection drops without an answer
                    }
                    _ => {}
                }
                tokio::time::sleep(self.page_delay).await;
                self.served.lock().unwrap().push(request.target());
                let type_name = type_path.trim_start_matches("/fhir/");
                let params: Vec<(String, String)> = query
                    .split('&')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| {
                        (k.to_owned(), percent_encoding::percent_decode_str(v).decode_utf8_lossy().into_owned())
                    })
                    .collect();
                let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
                let count: usize = param("_count").and_then(|v| v.parse().ok()).unwrap_or(50);
                let offset: usize = param("_offset").and_then(|v| v.parse().ok()).unwrap_or(0);
                let since = param("_lastUpdated").and_then(|v| v.strip_prefix("gt").map(str::to_owned));
                let matching: Vec<Value> = self
                    .resources
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|r| r["resourceType"] == type_name)
                    .filter(|r| since.as_deref().is_none_or(|since| r["meta"]["lastUpdated"].as_str().unwrap() > since))
                    .cloned()
                    .collect();
                let page: Vec<Value> = matching
                    .iter()
                    .skip(offset)
                    .take(count)
                    .map(|r| json!({"resource": r, "search": {"mode": "match"}}))
                    .collect();
                let mut links = Vec::new();
                if offset + count < matching.len() {
                    let mut next = format!("/fhir/{type_name}?_count={count}&_offset={}", offset + count);
                    if let Some(since) = &since {
                        next.push_str(&format!("&_lastUpdated=gt{since}"));
                    }
                    let next = match self.links {
                        Links::Absolute => format!("{origin}{next}"),
                        Links::Relative => next,
                        Links::OtherHost => format!("{}{next}", origin.replace("127.0.0.1", "localhost")),
                        Links::Circular => format!("{origin}/fhir/{type_name}?_count={count}"),
                    };
                    links.push(json!({"relation": "next", "url": next}));
                }
                (
                    200,
                    json!({"resourceType": "Bundle", "type": "searchset", "total": matching.len(), "link": links, "entry": page}),
                )
            }
            _ => (
                404,
                json!({"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]}),
            ),
        };
        answer(status, "", &reply.to_string())
    }
}

#[tokio::test]
async fn a_pull_pages_through_a_search_only_server_through_injected_faults() {
    let upstream = SearchOnly::start(30, 450, Duration::ZERO).await;
    // One resource breaks a value rule: the strict source refuses it and the run goes on.
    upstream
        .resources
        .lock()
        .unwrap()
        .push(json!({"resourceType": "Patient", "id": "p-bad", "birthDate": "2021-02-30",
        "meta": {"lastUpdated": "2024-01-01T00:00:59.000Z"}}));
    let downstream = spawn_auth_app().await;
    let key = private_key_pem();
    operator(&downstream.data, pull_source("lab", &upstream.base, "braid", &key, &["Patient", "Observation"]))
        .await
        .unwrap();
    let synced = sync(&downstream, "lab").await;
    let run = &synced["run"];
    assert_eq!((run["outcome"].clone(), run["mode"].clone()), (json!("complete"), json!("search")), "{synced}");
    assert_eq!(run["counts"]["created"], 480, "{synced}");
    assert_eq!(
        (run["counts"]["received"].clone(), run["counts"]["rejected"].clone()),
        (json!(481), json!(1)),
        "{synced}"
    );
    let reason = run["rejections"][0].as_str().unwrap();
    assert!(reason.contains("Patient/p-bad") && reason.contains("Patient.birthDate"), "{reason}");
    let shown = operator(&downstream.data, AdminRequest::ShowSource { name: "lab".into() }).await.unwrap();
    assert_eq!(shown["counts"]["rejected"], 1, "the source's figures count it too: {shown}");
    let kept = &shown["recent_rejections"][0];
    assert_eq!((kept["what"].clone(), kept["status"].clone()), (json!("Patient/p-bad"), json!(400)), "{shown}");
    assert!(kept["reason"].as_str().unwrap().starts_with("Patient.birthDate"), "the error as it is: {shown}");
    assert!(upstream.faults.load(Ordering::Relaxed) >= 3, "faults were injected and retried");
    let reader = downstream.token("reader", "system/*.rs", None);
    let ours = all_of(&downstream.app, "Observation", "_source=urn:braid:source:lab", Some(&reader)).await;
    assert_eq!(ours.len(), 450);
    assert_eq!(ours["lab-o31"]["subject"]["reference"], "Patient/lab-p1");

    // The next run asks only for what changed since the first began.
    let synced = sync(&downstream, "lab").await;
    assert_eq!(synced["run"]["counts"]["received"], 0, "{synced}");
    upstream
        .resources
        .lock()
        .unwrap()
        .push(json!({"resourceType": "Patient", "id": "late", "name": [{"family": "Late"}],
        "meta": {"lastUpdated": "2099-01-01T00:00:00.000Z"}}));
    let synced = sync(&downstream, "lab").await;
    assert_eq!(synced["run"]["counts"]["created"], 1, "{synced}");
}

#[tokio::test]
async fn a_pull_follows_relative_next_links_and_ones_naming_the_upstream_by_another_host() {
    let downstream = spawn_auth_app().await;
    let key = private_key_pem();
    for (name, links) in [("rel", Links::Relative), ("alias", Links::OtherHost)] {
        let upstream = SearchOnly::with_links(3, 450, Duration::ZERO, links).await;
        operator(&downstream.data, pull_source(name, &upstream.base, "braid", &key, &["Patient", "Observation"]))
            .await
            .unwrap();
        let synced = sync(&downstream, name).await;
        let run = &synced["run"];
        assert_eq!(
            (run["outcome"].clone(), run["counts"]["created"].clone()),
            (json!("complete"), json!(453)),
            "{synced}"
        );
        let pages = upstream.served.lock().unwrap().clone();
        assert!(pages.iter().any(|page| page.contains("_offset=400")), "the third page was read: {pages:?}");
        let reader = downstream.token("reader", "system/*.rs", None);
        let ours =
            all_of(&downstream.app, "Observation", &format!("_source=urn:braid:source:{name}"), Some(&reader)).await;
        assert_eq!(ours.len(), 450, "{name}");
    }
}

#[tokio::test]
async fn a_pull_whose_next_links_go_round_in_a_circle_fails_instead_of_paging_forever() {
    let upstream = SearchOnly::with_links(1, 450, Duration::ZERO, Links::Circular).await;
    let downstream = spawn_auth_app().await;
    operator(&downstream.data, pull_source("loop", &upstream.base, "braid", &private_key_pem(), &["Observation"]))
        .await
        .unwrap();
    let synced = sync(&downstream, "loop").await;
    let run = &synced["run"];
    assert_eq!(run["outcome"], "failed", "{synced}");
    assert!(run["error"].as_str().unwrap().contains("lead back to a page already read"), "{synced}");
    let pages = upstream.served.lock().unwrap().len();
    assert!(pages <= 3, "the loop is caught at the first repeated page: {pages} pages served");
    let shown = operator(&downstream.data, AdminRequest::ShowSource { name: "loop".into() }).await.unwrap();
    assert!(shown["since"].is_null(), "a failed run moves no _since: {shown}");
}

#[tokio::test]
async fn a_puller_killed_mid_run_resumes_and_ends_with_exactly_the_upstreams_content() {
    let upstream = SearchOnly::start(1200, 1200, Duration::from_millis(60)).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("braid.redb");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&key_file, private_key_pem()).unwrap();
    let first = Killed(start_braid_process(&data, "info"));
    let key = key_file.to_str().unwrap();
    let output = braid_cli(
        &data,
        &[
            "source",
            "add",
            "lab",
            "--pull",
            &upstream.base,
            "--client-id",
            "braid",
            "--key",
            key,
            "--types",
            "Patient,Observation",
        ],
    )
    .await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // `braid source sync` while the server runs: it asks the server, which pulls.
    let mut sync = std::process::Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["source", "sync", "lab", "--data"])
        .arg(&data)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let app = TestApp::at(format!("http://127.0.0.1:{}/fhir", first.0.port), tempfile::tempdir().unwrap());
    // Kill the server once part of the data is in.
    let mut written = 0;
    for _ in 0..600 {
        written = app.get("/Patient?_summary=count").await.body["total"].as_u64().unwrap_or(0);
        if written >= 400 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!((400..1200).contains(&written), "killed mid-run, with {written} patients written");
    drop(first); // SIGKILL
    let _ = sync.kill();
    let _ = sync.wait();

    // The restarted server resumes the run from its checkpoint.
    let second = Killed(start_braid_process(&data, "info"));
    let app = TestApp::at(format!("http://127.0.0.1:{}/fhir", second.0.port), tempfile::tempdir().unwrap());
    let mut runs = Value::Null;
    for _ in 0..1500 {
        let status = app.send(app.client.get(app.base.replace("/fhir", "/sources/lab"))).await;
        if status.body["runs"].as_array().is_some_and(|runs| !runs.is_empty()) {
            runs = status.body["runs"].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let run = &runs[0];
    assert_eq!(run["outcome"], "complete", "{runs}");
    assert!(run["resumed"].as_u64().unwrap() >= 1, "{runs}");
    // Resumed from its checkpoint, not started again: the Patients' first page was served once.
    let first_pages = upstream
        .served
        .lock()
        .unwrap()
        .iter()
        .filter(|target| target.starts_with("/fhir/Patient?") && !target.contains("_offset"))
        .count();
    assert_eq!(first_pages, 1, "the resumed run went on from its next page");
    for (type_name, prefix) in [("Patient", "p"), ("Observation", "o")] {
        let ours = all_of(&app, type_name, "_source=urn:braid:source:lab", None).await;
        assert_eq!(ours.len(), 1200, "{type_name}");
        for n in 0..1200 {
            let stored = &ours[&format!("lab-{prefix}{n}")];
            assert_eq!(stored["meta"]["versionId"], "1", "{type_name} {n} was written once");
        }
    }
    drop(second);
}

/// A server process that is killed (SIGKILL) when dropped, so that a failing test leaves none
/// behind.
struct Killed(crate::helpers::BraidProcess);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.child.kill();
        let _ = self.0.child.wait();
    }
}

#[tokio::test]
async fn scheduled_pulls_fall_due_after_their_interval() {
    let dir = tempfile::tempdir().unwrap();
    let store = braid::store::Store::open(
        &dir.path().join("braid.redb"),
        braid::store::StoreOptions::default(),
        Arc::new(braid::search::SearchIndexer),
    )
    .unwrap();
    let sources = braid::sources::Registry::load(&store).unwrap();
    // Nothing listens here: each run fails at once, and is recorded.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/fhir", closed.local_addr().unwrap());
    drop(closed);
    let new = |name: &str, every: Option<&str>| braid::sources::NewSource {
        name: name.into(),
        credential: NewCredential::None,
        pull: Some(braid::sources::NewPull {
            base: base.clone(),
            client_id: "braid".into(),
            key_pem: private_key_pem(),
            kid: None,
            every: every.map(str::to_owned),
        }),
        types: Vec::new(),
        lenient: false,
        extra_scope: None,
    };
    let added = sources.add(new("hourly", Some("1h"))).await.unwrap();
    assert_eq!(added["every_secs"], 3600);
    sources.add(new("manual", None)).await.unwrap();
    for bad in ["30s", "soon"] {
        let refused = sources.add(new("bad", Some(bad))).await.unwrap_err();
        assert!(refused.to_string().contains("--every"), "{refused}");
    }
    let now = braid::auth::now_secs();
    assert_eq!(sources.due_pulls(now), ["hourly"], "never ran: due at once; unscheduled: never");
    let run = sources.sync_with("hourly", Duration::from_millis(1)).await.unwrap();
    assert_eq!(run.outcome, "failed");
    assert!(run.error.as_deref().unwrap().contains("could not be reached"), "{run:?}");
    assert!(sources.due_pulls(now).is_empty(), "it ran just now");
    assert!(sources.due_pulls(run.started + 3599).is_empty(), "not before its hour");
    assert_eq!(sources.due_pulls(run.started + 3600), ["hourly"]);
    drop(sources);
    let finished = store.writer_finished();
    drop(store);
    while !finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn the_command_line_adds_syncs_and_shows_a_pull_source_with_braid_stopped() {
    let upstream = SearchOnly::start(5, 12, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("braid.redb");
    let key_file = dir.path().join("key.pem");
    std::fs::write(&key_file, private_key_pem()).unwrap();
    let run = |args: &[&str]| braid_cli(&data, args);
    let key = key_file.to_str().unwrap().to_owned();
    let output = run(&[
        "source",
        "add",
        "lab",
        "--pull",
        &upstream.base,
        "--client-id",
        "braid",
        "--key",
        &key,
        "--types",
        "Patient,Observation",
        "--every",
        "1h",
    ])
    .await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let added: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (added["source"].clone(), added["kind"].clone(), added["every_secs"].clone()),
        (json!("lab"), json!("pull"), json!(3600))
    );
    assert!(!String::from_utf8_lossy(&output.stdout).contains("PRIVATE"), "only the public key is printed");

    let output = run(&["source", "sync", "lab"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let synced: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(synced["run"]["outcome"], "complete", "{synced}");
    assert_eq!(synced["run"]["counts"]["created"], 17, "{synced}");

    let output = run(&["source", "show", "lab", "--json"]).await;
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(shown["runs"][0]["counts"]["created"], 17, "{shown}");
    assert_eq!(shown["base"], upstream.base.as_str());
    let output = run(&["source", "sync", "nobody"]).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no source nobody"));
    // A run that fails fails the command, so that a script sees it; the run is still printed.
    let elsewhere = format!("{}/elsewhere", upstream.base);
    let output = run(&["source", "add", "gone", "--pull", &elsewhere, "--client-id", "braid", "--key", &key]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let output = run(&["source", "sync", "gone"]).await;
    assert_eq!(output.status.code(), Some(1));
    let failed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(failed["run"]["outcome"], "failed", "{failed}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("the pull failed") && stderr.contains("401"), "{stderr}");
    let output = run(&["source", "add", "push", "--pull", &upstream.base, "--key", &key]).await;
    assert!(!output.status.success(), "--pull needs --client-id");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--client-id"), "the refusal names what is missing: {stderr}");
}

/// A Bulk Data upstream whose every export lists two Patient files and one error file. Logs
/// the query of every `$export` kick-off. Its status URL and second file are given relative to
/// its root, and that file is served gzip-encoded (`Content-Encoding: gzip`), as storage
/// services serve them.
/// `error_severity`: the severity of the one issue its error file reports (`None`: the error
/// file is not there, 404). `synchronous`: the kick-off answers 200 with the manifest itself.
/// Deleting the export (`DELETE` on its status URL) frees its files until the next kick-off,
/// as the Bulk Data IG allows: a client reads every file, errors included, before it deletes.
async fn bulk_upstream_with_errors(
    error_severity: Option<&'static str>,
    synchronous: bool,
) -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
    let kickoffs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = kickoffs.clone();
    let deleted = std::sync::atomic::AtomicBool::new(false);
    let base = smart_upstream(move |request, origin| {
        if request.path.starts_with("/file/") && deleted.load(Ordering::SeqCst) {
            return answer(404, "", "");
        }
        let manifest = json!({"transactionTime": "2024-05-05T00:00:00Z",
            "request": format!("{origin}/fhir/$export"), "requiresAccessToken": true,
            "output": [{"type": "Patient", "url": format!("{origin}/file/patients")},
                       {"type": "Patient", "url": "/file/patients-gz"}],
            "error": [{"type": "OperationOutcome", "url": format!("{origin}/file/errors")}]})
        .to_string();
        match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/fhir/$export") => {
                log.lock().unwrap().push(request.query.clone());
                deleted.store(false, Ordering::SeqCst);
                if synchronous { answer(200, "", &manifest) } else { answer(202, "Content-Location: /status/1\r\n", "") }
            }
            ("GET", "/status/1") => answer(200, "", &manifest),
            ("GET", "/file/patients") => answer(
                200,
                "",
                &json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "One"}]}).to_string(),
            ),
            ("GET", "/file/patients-gz") => {
                let lines = [
                    json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "Two"}]}).to_string(),
                    json!({"resourceType": "Patient", "id": "p3", "name": [{"family": "Three"}]}).to_string(),
                ];
                let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                std::io::Write::write_all(&mut gzip, lines.join("\n").as_bytes()).unwrap();
                let body = gzip.finish().unwrap();
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/fhir+ndjson\r\nContent-Encoding: gzip\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                [head.as_bytes(), &body].concat()
            }
            ("DELETE", "/status/1") => {
                deleted.store(true, Ordering::SeqCst);
                answer(202, "", "")
            }
            ("GET", "/file/errors") if error_severity.is_some() => answer(
                200,
                "",
                &json!({"resourceType": "OperationOutcome", "issue": [{"severity": error_severity,
                    "code": "processing", "diagnostics": "Patient p9 could not be exported"}]})
                .to_string(),
            ),
            _ => answer(404, "", ""),
        }
    })
    .await;
    (base, kickoffs)
}

#[tokio::test]
async fn an_export_with_relative_urls_and_a_gzip_encoded_file_is_read_and_its_errors_keep_the_next_since() {
    let (base, kickoffs) = bulk_upstream_with_errors(Some("error"), false).await;
    let downstream = spawn_auth_app().await;
    add_pull(&downstream, "lab", &base, &["Patient"]).await;
    for _ in 0..2 {
        let synced = sync(&downstream, "lab").await;
        let run = &synced["run"];
        assert_eq!((run["outcome"].clone(), run["mode"].clone()), (json!("complete"), json!("bulk")), "{synced}");
        let reasons = run["rejections"].to_string();
        assert!(reasons.contains("reported an error: Patient p9 could not be exported"), "{synced}");
    }
    let shown = operator(&downstream.data, AdminRequest::ShowSource { name: "lab".into() }).await.unwrap();
    assert!(shown["since"].is_null(), "what failed is asked for again: {shown}");
    let kickoffs = kickoffs.lock().unwrap().clone();
    assert_eq!(kickoffs.len(), 2);
    assert!(kickoffs.iter().all(|query| !query.contains("_since")), "{kickoffs:?}");
    let reader = downstream.token("reader", "system/*.rs", None);
    let ours = all_of(&downstream.app, "Patient", "_source=urn:braid:source:lab", Some(&reader)).await;
    assert_eq!(ours["lab-p1"]["name"][0]["family"], "One");
    // The gzip-encoded file, found by its relative URL, decoded line by line.
    assert_eq!(ours["lab-p2"]["name"][0]["family"], "Two");
    assert_eq!(ours["lab-p3"]["name"][0]["family"], "Three");
    assert_eq!(ours.len(), 3, "{ours:?}");
}

#[tokio::test]
async fn a_stop_ends_a_pull_that_waits_on_a_busy_upstream_at_once() {
    // Every request is told to come back in 30 s.
    let origin = fake_upstream(|_, _| async { answer(503, "Retry-After: 30\r\n", "") }).await;
    let base = format!("{origin}/fhir");
    let dir = tempfile::tempdir().unwrap();
    let store = braid::store::Store::open(
        &dir.path().join("braid.redb"),
        braid::store::StoreOptions::default(),
        Arc::new(braid::search::SearchIndexer),
    )
    .unwrap();
    let sources = Arc::new(braid::sources::Registry::load(&store).unwrap());
    let AdminRequest::AddSource { source } = pull_source("busy", &base, "braid", &private_key_pem(), &["Patient"])
    else {
        unreachable!()
    };
    sources.add(source).await.unwrap();
    let running = {
        let sources = sources.clone();
        tokio::spawn(async move { sources.sync("busy").await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped_at = std::time::Instant::now();
    sources.stop();
    let outcome = tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the pull ends within seconds of the stop, not after the upstream's 30 s")
        .unwrap();
    assert!(stopped_at.elapsed() < Duration::from_secs(2), "{:?}", stopped_at.elapsed());
    let error = outcome.unwrap_err();
    assert!(error.to_string().contains("stopping"), "{error}");
    let shown = sources.show("busy").unwrap().unwrap();
    let state = shown.pull.expect("a pull source's state");
    assert!(state.runs.is_empty(), "a stopped run is not recorded as finished");
    assert!(state.checkpoint.is_some(), "its checkpoint stays, for the next start");
    drop(sources);
    let finished = store.writer_finished();
    drop(store);
    while !finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn an_upstream_that_keeps_losing_its_export_fails_the_run_after_a_bounded_number_of_kick_offs() {
    // Every kick-off is accepted; its status URL is always gone (404).
    let kickoffs = Arc::new(AtomicUsize::new(0));
    let counted = kickoffs.clone();
    let base = smart_upstream(move |request, origin| {
        if request.path == "/fhir/$export" {
            counted.fetch_add(1, Ordering::Relaxed);
            return answer(202, &format!("Content-Location: {origin}/status/gone\r\n"), "");
        }
        answer(404, "", "")
    })
    .await;
    let downstream = spawn_auth_app().await;
    add_pull(&downstream, "lost", &base, &["Patient"]).await;
    let synced = sync(&downstream, "lost").await;
    let run = &synced["run"];
    assert_eq!(run["outcome"], "failed", "{synced}");
    assert!(run["error"].as_str().unwrap().contains("lost its export"), "{synced}");
    assert_eq!(
        kickoffs.load(Ordering::Relaxed),
        1 + braid::sources::pull::MAX_EXPORT_RESTARTS as usize,
        "the first kick-off and the bounded restarts"
    );
}

#[tokio::test]
async fn an_export_file_whose_download_breaks_off_is_read_on_from_the_last_line_written() {
    // An export of one file of 1,200 Patients; its first download stops after 700 lines.
    let downloads = Arc::new(AtomicUsize::new(0));
    let kickoffs = Arc::new(AtomicUsize::new(0));
    let (counted, kicked) = (downloads.clone(), kickoffs.clone());
    let lines: Vec<String> = (0..1200)
        .map(|n| {
            json!({"resourceType": "Patient", "id": format!("p{n}"), "name": [{"family": format!("F{n}")}]}).to_string()
        })
        .collect();
    let file = Arc::new(lines.join("\n"));
    let cut = lines[..700].iter().map(|line| line.len() + 1).sum::<usize>();
    let base = smart_upstream(move |request, origin| {
        match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/fhir/$export") => {
                kicked.fetch_add(1, Ordering::Relaxed);
                answer(202, &format!("Content-Location: {origin}/status\r\n"), "")
            }
            ("GET", "/status") => answer(
                200,
                "",
                &json!({"transactionTime": "2024-05-05T00:00:00Z", "requiresAccessToken": true,
                    "output": [{"type": "Patient", "url": format!("{origin}/file")}], "error": []})
                .to_string(),
            ),
            ("GET", "/file") => {
                let mut whole = answer(200, "", &file);
                if counted.fetch_add(1, Ordering::Relaxed) == 0 {
                    // The promised length, but the connection closes after 700 lines.
                    whole.truncate(whole.len() - file.len() + cut);
                }
                whole
            }
            ("DELETE", "/status") => answer(202, "", ""),
            _ => answer(404, "", ""),
        }
    })
    .await;
    let downstream = spawn_auth_app().await;
    add_pull(&downstream, "flaky", &base, &["Patient"]).await;
    let synced = sync(&downstream, "flaky").await;
    let run = &synced["run"];
    assert_eq!((run["outcome"].clone(), run["mode"].clone()), (json!("complete"), json!("bulk")), "{synced}");
    assert_eq!(run["counts"]["created"], 1200, "{synced}");
    // Read on from the last line written (500, the first chunk): nothing written twice.
    assert_eq!(
        (run["counts"]["received"].clone(), run["counts"]["unchanged"].clone()),
        (json!(1200), json!(0)),
        "{synced}"
    );
    assert_eq!(downloads.load(Ordering::Relaxed), 2, "the file was read again once");
    assert_eq!(kickoffs.load(Ordering::Relaxed), 1, "not the whole export again");
    let reader = downstream.token("reader", "system/*.rs", None);
    let ours = all_of(&downstream.app, "Patient", "_source=urn:braid:source:flaky", Some(&reader)).await;
    assert_eq!(ours.len(), 1200);
    assert!(ours.values().all(|patient| patient["meta"]["versionId"] == "1"), "each written once, as one version");
}

#[tokio::test]
async fn an_export_error_file_with_only_information_moves_the_next_since_and_an_unreadable_one_does_not() {
    let downstream = spawn_auth_app().await;
    for (name, severity, moves) in [("noted", Some("information"), true), ("missing", None, false)] {
        let (base, _) = bulk_upstream_with_errors(severity, false).await;
        operator(&downstream.data, pull_source(name, &base, "braid", &private_key_pem(), &["Patient"])).await.unwrap();
        let synced = sync(&downstream, name).await;
        assert_eq!(synced["run"]["outcome"], "complete", "{synced}");
        let shown = operator(&downstream.data, AdminRequest::ShowSource { name: name.into() }).await.unwrap();
        if moves {
            assert_eq!(shown["since"], "2024-05-05T00:00:00Z", "{shown}");
            assert_eq!(synced["run"]["counts"]["rejected"], 0, "{synced}");
        } else {
            assert!(shown["since"].is_null(), "{shown}");
            assert!(synced["run"]["rejections"].to_string().contains("could not be read"), "{synced}");
        }
    }
}

#[tokio::test]
async fn an_export_answered_at_once_with_its_manifest_is_read_without_polling() {
    let (base, kickoffs) = bulk_upstream_with_errors(Some("information"), true).await;
    let downstream = spawn_auth_app().await;
    add_pull(&downstream, "quick", &base, &["Patient"]).await;
    let synced = sync(&downstream, "quick").await;
    let run = &synced["run"];
    assert_eq!((run["outcome"].clone(), run["mode"].clone()), (json!("complete"), json!("bulk")), "{synced}");
    assert_eq!(run["counts"]["created"], 3, "{synced}");
    assert_eq!(kickoffs.lock().unwrap().len(), 1);
    let shown = operator(&downstream.data, AdminRequest::ShowSource { name: "quick".into() }).await.unwrap();
    assert_eq!(shown["since"], "2024-05-05T00:00:00Z", "{shown}");
}

#[tokio::test]
async fn deletions_an_export_lists_delete_the_sources_records_with_a_provenance() {
    // Every export holds Patients p1..p3; once `deleting` is set, its manifest also lists a
    // file of deletions (Bulk Data 2.0's `deleted`).
    let deleting = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = deleting.clone();
    let base = smart_upstream(move |request, origin| match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/fhir/$export") => answer(202, "Content-Location: /status\r\n", ""),
        ("GET", "/status") => {
            let mut manifest = json!({"transactionTime": "2024-05-05T00:00:00Z", "requiresAccessToken": true,
                    "output": [{"type": "Patient", "url": "/patients"}], "error": []});
            if flag.load(Ordering::Relaxed) {
                manifest["deleted"] = json!([{"type": "Bundle", "url": "/deleted"}]);
            }
            answer(200, "", &manifest.to_string())
        }
        ("GET", "/patients") => {
            let lines: Vec<String> =
                (1..=3).map(|n| json!({"resourceType": "Patient", "id": format!("p{n}")}).to_string()).collect();
            answer(200, "", &lines.join("\n"))
        }
        ("GET", "/deleted") => {
            let delete = |url: String| json!({"request": {"method": "DELETE", "url": url}});
            let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                delete("Patient/p1".into()),
                delete(format!("{origin}/fhir/Patient/p2")),
                delete("Patient/never-pulled".into()),
                delete("not a reference".into()),
            ]});
            answer(200, "", &bundle.to_string())
        }
        ("DELETE", "/status") => answer(202, "", ""),
        _ => answer(404, "", ""),
    })
    .await;
    let downstream = spawn_auth_app().await;
    add_pull(&downstream, "ehr", &base, &["Patient"]).await;
    let first = sync(&downstream, "ehr").await;
    assert_eq!(first["run"]["counts"]["created"], 3, "{first}");
    let reader = downstream.token("reader", "system/*.rs", None);
    let ours = all_of(&downstream.app, "Patient", "_source=urn:braid:source:ehr", Some(&reader)).await;
    assert_eq!(ours.keys().cloned().collect::<Vec<_>>(), ["ehr-p1", "ehr-p2", "ehr-p3"]);

    deleting.store(true, Ordering::Relaxed);
    let second = sync(&downstream, "ehr").await;
    let run = &second["run"];
    assert_eq!(run["outcome"], "complete", "{second}");
    assert_eq!(run["counts"]["deleted"], 2, "{second}");
    assert!(run["rejections"].to_string().contains("does not name a resource"), "{second}");
    let ours = all_of(&downstream.app, "Patient", "_source=urn:braid:source:ehr", Some(&reader)).await;
    assert_eq!(
        ours.keys().cloned().collect::<Vec<_>>(),
        ["ehr-p3"],
        "p1 and p2 deleted; p3, written again unchanged, stays"
    );
    let gone = downstream
        .app
        .send(downstream.app.client.get(downstream.app.url("/Patient/ehr-p1")).bearer_auth(&reader))
        .await;
    assert_eq!(gone.status, 410, "{}", gone.text);
    // The deletion is recorded as the source's, like its writes.
    let provenances = all_of(&downstream.app, "Provenance", "", Some(&reader)).await;
    let deleted_by_source = provenances.values().any(|provenance| {
        provenance["activity"]["coding"][0]["code"] == "DELETE"
            && provenance["target"]
                .as_array()
                .unwrap()
                .iter()
                .any(|t| t["reference"].as_str().unwrap().starts_with("Patient/ehr-p1/"))
    });
    assert!(deleted_by_source, "{provenances:?}");
}

#[tokio::test]
async fn a_search_mode_run_is_marked_by_the_upstreams_clock() {
    // An upstream without $export and without resources, whose clock is an hour behind Braid's.
    let behind = std::time::SystemTime::now() - Duration::from_secs(3600);
    let date = httpdate::fmt_http_date(behind);
    let dated = format!("Date: {date}\r\n");
    let base = smart_upstream(move |request, _| {
        if request.path == "/fhir/$export" {
            return answer(404, &dated, "");
        }
        answer(200, &dated, &json!({"resourceType": "Bundle", "type": "searchset", "entry": []}).to_string())
    })
    .await;
    let downstream = spawn_auth_app().await;
    add_pull(&downstream, "late", &base, &["Patient"]).await;
    let synced = sync(&downstream, "late").await;
    assert_eq!((synced["run"]["outcome"].clone(), synced["run"]["mode"].clone()), (json!("complete"), json!("search")));
    let shown = operator(&downstream.data, AdminRequest::ShowSource { name: "late".into() }).await.unwrap();
    let since: jiff::Timestamp = shown["since"].as_str().unwrap().parse().unwrap();
    let expected = jiff::Timestamp::try_from(behind).unwrap() - jiff::SignedDuration::from_secs(300);
    let off = since.duration_since(expected).as_secs().abs();
    assert!(off <= 2, "the next run starts 5 minutes before the upstream's clock said: {since} vs {expected}");
}

/// A busy upstream: its kick-off is answered 429 with `Retry-After: 1`, then 503 without one,
/// before it accepts; its status is answered 503 and 429 by turns, more times than one request
/// is retried, before the manifest: the run waits as told and polls again. It ends with the
/// export read once.
#[tokio::test]
async fn a_kick_off_and_status_polls_answered_busy_are_retried_after_the_wait_they_ask_for() {
    let counters = [(); 3].map(|_| Arc::new(AtomicUsize::new(0)));
    let [kickoffs, polls, downloads] = counters.clone();
    let busy_polls = braid::sources::pull::MAX_ATTEMPTS as usize;
    let base = smart_upstream(move |request, origin| {
        let [kicked, polled, fetched] = &counters;
        match request.path.as_str() {
            "/fhir/$export" => match kicked.fetch_add(1, Ordering::SeqCst) {
                0 => answer(429, "Retry-After: 1\r\n", ""),
                1 => answer(503, "", ""),
                _ => answer(202, "Content-Location: /status/1\r\n", ""),
            },
            // After the files, the export is deleted at the upstream.
            "/status/1" if request.method == "DELETE" => answer(202, "", ""),
            "/status/1" => match polled.fetch_add(1, Ordering::SeqCst) {
                n if n < busy_polls && n % 2 == 0 => answer(503, "Retry-After: 0\r\n", ""),
                n if n < busy_polls => answer(429, "Retry-After: 0\r\n", ""),
                _ => answer(
                    200,
                    "",
                    &json!({"transactionTime": "2024-05-05T00:00:00Z", "request": format!("{origin}/fhir/$export"),
                            "requiresAccessToken": true,
                            "output": [{"type": "Patient", "url": format!("{origin}/file/patients")}], "error": []})
                    .to_string(),
                ),
            },
            "/file/patients" => {
                fetched.fetch_add(1, Ordering::SeqCst);
                let lines =
                    [json!({"resourceType": "Patient", "id": "p1"}), json!({"resourceType": "Patient", "id": "p2"})];
                answer(200, "", &lines.map(|line| line.to_string()).join("\n"))
            }
            _ => answer(404, "", ""),
        }
    })
    .await;
    let downstream = spawn_auth_app().await;
    add_pull(&downstream, "busy", &base, &["Patient"]).await;
    let started = std::time::Instant::now();
    let synced = sync(&downstream, "busy").await;
    let run = &synced["run"];
    assert_eq!((run["outcome"].clone(), run["mode"].clone()), (json!("complete"), json!("bulk")), "{synced}");
    assert_eq!(run["counts"]["created"], 2, "{synced}");
    assert_eq!(kickoffs.load(Ordering::SeqCst), 3, "two busy answers, then the export");
    assert_eq!(polls.load(Ordering::SeqCst), busy_polls + 1, "the busy answers, then the manifest");
    assert_eq!(downloads.load(Ordering::SeqCst), 1, "the file is read once");
    assert!(started.elapsed() >= Duration::from_secs(1), "the kick-off's Retry-After was waited out");
}
