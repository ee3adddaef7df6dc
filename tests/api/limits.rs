//! Limits that keep one request from taking the server down: chain depth, body reading,
//! connections, value sizes, conditional matches and writer failures.

use serde_json::{Value, json};

use crate::helpers::{patient, spawn_app, spawn_app_with};

fn deep_chain(levels: usize) -> String {
    format!("subject:Patient{}.gender", ".link:Patient".repeat(levels))
}

fn deep_has(levels: usize) -> String {
    format!("{}gender", "_has:Patient:link:".repeat(levels))
}

#[tokio::test]
async fn a_chain_five_thousand_levels_deep_is_refused_and_the_server_keeps_serving() {
    // URLs up to the HTTP parser's own limit, so that the chain itself is what is refused.
    let app = spawn_app_with(|s| s.max_url_bytes = 65_536).await;
    let chain = deep_chain(5000);
    let reply = app.get(&format!("/Observation?{chain}=male")).await;
    reply.assert_outcome(400);
    let diagnostics = reply.body["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(diagnostics.contains("5001 levels deep; at most 4"), "{diagnostics}");
    assert!(reply.expressions()[0].starts_with("subject:Patient.link:Patient.link"), "{:?}", reply.expressions());

    // The same through a POST _search form, and a reverse chain nested as deep.
    let form = format!("{chain}=male");
    let posted = app
        .send(
            app.client
                .post(app.url("/Observation/_search"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form),
        )
        .await;
    posted.assert_outcome(400);
    assert!(posted.text.contains("at most 4"), "{}", posted.text);
    // 5,000 nested `_has` do not fit in a URI (at most 64 KiB), but do in a form.
    let has = app
        .send(
            app.client
                .post(app.url("/Patient/_search"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("{}=male", deep_has(5000))),
        )
        .await;
    has.assert_outcome(400);
    assert!(has.expressions()[0].starts_with("_has:Patient:link:_has:"), "{:?}", has.expressions());
    let has = app.get(&format!("/Patient?{}=male", deep_has(3000))).await;
    has.assert_outcome(400);

    // Still serving, and chains within the limit work.
    let linked_to = app.post("/Patient", &json!({"resourceType": "Patient", "gender": "male"})).await;
    let target = linked_to.body["id"].as_str().unwrap().to_owned();
    let linking = app
        .post(
            "/Patient",
            &json!({"resourceType": "Patient", "gender": "female",
                "link": [{"other": {"reference": format!("Patient/{target}")}, "type": "seealso"}]}),
        )
        .await;
    let linking_id = linking.body["id"].as_str().unwrap().to_owned();
    let observation = app
        .post(
            "/Observation",
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "subject": {"reference": format!("Patient/{linking_id}")}}),
        )
        .await;
    assert_eq!(observation.status, 201, "{}", observation.text);
    let found = app.get("/Observation?subject:Patient.link:Patient.gender=male").await;
    assert_eq!(found.status, 200, "{}", found.text);
    assert_eq!(found.body["entry"][0]["resource"]["id"], observation.body["id"]);
    let four = app.get(&format!("/Observation?{}=male", deep_chain(3))).await;
    assert_eq!(four.status, 200, "four levels are allowed: {}", four.text);
    let five = app.get(&format!("/Observation?{}=male", deep_chain(4))).await;
    five.assert_outcome(400);
    let has_within_limit = app.get("/Patient?_has:Patient:link:gender=female").await;
    assert_eq!(has_within_limit.body["entry"][0]["resource"]["id"].as_str(), Some(target.as_str()));
}

fn gendered_patient(family: &str, gender: &str) -> Value {
    let mut body = patient(family);
    body["gender"] = json!(gender);
    body
}

#[tokio::test]
async fn a_conditional_delete_matching_more_than_one_resource_deletes_nothing_by_default() {
    let app = spawn_app().await;
    let first = app.post("/Patient", &gendered_patient("one", "male")).await;
    let second = app.post("/Patient", &gendered_patient("two", "male")).await;
    let before = app.history_len().await;
    let refused = app.delete("/Patient?gender=male").await;
    refused.assert_outcome(412);
    assert_eq!(refused.body["issue"][0]["code"], "multiple-matches");
    let diagnostics = refused.body["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(diagnostics.contains("match more than 1 Patient resource; a conditional delete may delete at most 1"));
    assert_eq!(app.history_len().await, before, "nothing was deleted");
    for created in [&first, &second] {
        assert_eq!(app.get(&format!("/Patient/{}", created.body["id"].as_str().unwrap())).await.status, 200);
    }
    // A single match is deleted.
    let single = app.delete("/Patient?family=one").await;
    assert_eq!(single.status, 204, "{}", single.text);
    assert_eq!(app.get(&format!("/Patient/{}", first.body["id"].as_str().unwrap())).await.status, 410);
}

#[tokio::test]
async fn a_raised_conditional_delete_limit_deletes_up_to_that_many_and_no_more() {
    let app = spawn_app_with(|settings| settings.conditional_delete_max = 2).await;
    let metadata = app.get("/metadata").await;
    let patient_capabilities = metadata.body["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "Patient")
        .unwrap()
        .clone();
    assert_eq!(patient_capabilities["conditionalDelete"], "multiple");
    let mut ids = Vec::new();
    for family in ["a", "b", "c"] {
        ids.push(app.post("/Patient", &gendered_patient(family, "male")).await.body["id"].as_str().unwrap().to_owned());
    }
    let before = app.history_len().await;
    let refused = app.delete("/Patient?gender=male").await;
    refused.assert_outcome(412);
    assert!(refused.text.contains("more than 2 Patient resources"), "{}", refused.text);
    assert_eq!(app.history_len().await, before);
    app.delete(&format!("/Patient/{}", ids[2])).await;
    let deleted = app.delete("/Patient?gender=male").await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    for id in &ids[..2] {
        assert_eq!(app.get(&format!("/Patient/{id}")).await.status, 410);
    }
}

#[tokio::test]
async fn conditional_create_and_update_with_many_matches_fail_without_writing() {
    let app = spawn_app().await;
    for family in ["a", "b", "c", "d"] {
        app.post("/Patient", &gendered_patient(family, "male")).await;
    }
    let before = app.history_len().await;
    let create = app.create_if_none_exist("/Patient", "gender=male", &gendered_patient("e", "male")).await;
    create.assert_outcome(412);
    assert!(create.text.contains("'gender=male' match more than one resource"), "{}", create.text);
    let update = app.put("/Patient?gender=male", &gendered_patient("e", "male")).await;
    update.assert_outcome(412);
    assert_eq!(update.body["issue"][0]["code"], "multiple-matches");
    assert_eq!(app.history_len().await, before);
}

/// A store on a temporary database with the real indexer, for tests below the HTTP layer.
fn open_store(indexer: std::sync::Arc<dyn braid::store::Indexer>) -> (tempfile::TempDir, braid::store::Store) {
    let dir = tempfile::tempdir().unwrap();
    let store =
        braid::store::Store::open(&dir.path().join("braid.redb"), braid::store::StoreOptions::default(), indexer)
            .unwrap();
    (dir, store)
}

fn create_action(resource: Value) -> braid::store::WriteRequest {
    let resource_type = braid::fhir::ResourceType::parse(resource["resourceType"].as_str().unwrap()).unwrap();
    let Value::Object(resource) = resource else { unreachable!() };
    braid::store::WriteRequest::single(braid::store::Action::Create { resource_type, resource, if_none_exist: None })
}

#[tokio::test]
async fn conditional_criteria_collect_no_more_matches_than_asked_for() {
    let (_dir, store) = open_store(std::sync::Arc::new(braid::search::SearchIndexer));
    for family in ["a", "b", "c", "d", "e"] {
        store.write(create_action(gendered_patient(family, "male"))).await.unwrap();
    }
    let patient_type = braid::fhir::ResourceType::parse("Patient").unwrap();
    let criteria = braid::search::parse_criteria(patient_type, "gender=male").unwrap();
    let snapshot = store.snapshot().unwrap();
    assert_eq!((criteria.find)(&snapshot.index(), patient_type, 2).unwrap().len(), 2);
    assert_eq!((criteria.find)(&snapshot.index(), patient_type, 100).unwrap().len(), 5);
}

/// The real indexer, except that it panics on a Patient whose family name is `PANIC`: a
/// stand-in for any bug the writer might hit while executing a request.
struct PanickingIndexer;

impl braid::store::Indexer for PanickingIndexer {
    fn entries(&self, resource_type: braid::fhir::ResourceType, resource: &Value) -> Vec<braid::store::IndexEntry> {
        if resource["name"][0]["family"] == "PANIC" {
            panic!("indexer test hook");
        }
        braid::store::Indexer::entries(&braid::search::SearchIndexer, resource_type, resource)
    }
}

#[tokio::test]
async fn a_panicking_write_fails_alone_commits_nothing_and_the_writer_keeps_serving() {
    let (_dir, store) = open_store(std::sync::Arc::new(PanickingIndexer));
    let patient_type = braid::fhir::ResourceType::parse("Patient").unwrap();
    let all = || braid::store::HistoryQuery { since_micros: None, count: 100, below: None, at: None, max_scan: 10_000 };

    // A transaction whose second operation panics after the first has been written.
    let mut transaction = create_action(patient("Fine"));
    transaction.ops.extend(create_action(patient("PANIC")).ops);
    let error = store.write(transaction).await.unwrap_err();
    assert_eq!(error.status(), 500);
    assert_eq!(error.to_operation_outcome()["issue"][0]["code"], "exception");
    assert!(store.snapshot().unwrap().system_history(all()).unwrap().entries.is_empty(), "nothing was committed");

    // Requests submitted together may share the panicking request's group; only it fails.
    let (first, panicking, second) = tokio::join!(
        store.write(create_action(patient("First"))),
        store.write(create_action(patient("PANIC"))),
        store.write(create_action(patient("Second"))),
    );
    assert_eq!(panicking.unwrap_err().status(), 500);
    let mut ids = Vec::new();
    for outcome in [first, second] {
        ids.push(outcome.expect("an innocent request of the group succeeds")[0].id.clone().unwrap());
    }

    // Later writes succeed and are readable, with versions and history continuing normally.
    let later = store.write(create_action(patient("Later"))).await.unwrap();
    ids.push(later[0].id.clone().unwrap());
    let snapshot = store.snapshot().unwrap();
    for id in &ids {
        let stored = snapshot.current(patient_type, id.as_str()).unwrap().expect("the write is readable");
        let body: Value = serde_json::from_slice(&stored.body).unwrap();
        assert_ne!(body["name"][0]["family"], "PANIC");
    }
    let history = snapshot.system_history(all()).unwrap().entries;
    assert_eq!(history.len(), 3, "only the three successful creates were committed");
    let mut times: Vec<u64> = history.iter().map(|v| v.header.t).collect();
    times.sort();
    assert_eq!(times, vec![1, 2, 3], "the logical clock was restored after each aborted group");
}

fn form_search(app: &crate::helpers::TestApp, path: &str, form: String) -> reqwest::RequestBuilder {
    app.client.post(app.url(path)).header("content-type", "application/x-www-form-urlencoded").body(form)
}

#[tokio::test]
async fn long_indexed_strings_are_indexed_on_a_bounded_prefix_and_stay_searchable() {
    let app = spawn_app().await;
    let family = format!("Smith{}", "x".repeat(600_000));
    let mut body = patient("unused");
    body["name"][0]["family"] = json!(family);
    let started = std::time::Instant::now();
    let created = app.post("/Patient", &body).await;
    assert_eq!(created.status, 201, "{}", &created.text[..created.text.len().min(500)]);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let id = created.body["id"].as_str().unwrap().to_owned();
    let read = app.get(&format!("/Patient/{id}")).await;
    assert_eq!(read.body["name"][0]["family"].as_str().map(str::len), Some(family.len()), "stored whole");

    let found = app.get("/Patient?family=smithxxx").await;
    assert_eq!(found.body["entry"][0]["resource"]["id"].as_str(), Some(id.as_str()), "prefix search");
    let exact = app.send(form_search(&app, "/Patient/_search", format!("family:exact={family}"))).await;
    assert_eq!(exact.body["entry"].as_array().map(Vec::len), Some(1), "{}", &exact.text[..300]);
    assert_eq!(exact.body["entry"][0]["resource"]["id"].as_str(), Some(id.as_str()), "exact on the whole value");
    let short = app.get("/Patient?family:exact=Smith").await;
    assert!(short.body["entry"].as_array().is_none_or(Vec::is_empty), "a shorter exact value does not match");
    // Documented: beyond the indexed prefix, values are not told apart.
    let same_prefix = format!("Smith{}y", "x".repeat(599_999));
    let beyond = app.send(form_search(&app, "/Patient/_search", format!("family:exact={same_prefix}"))).await;
    assert_eq!(beyond.body["entry"][0]["resource"]["id"].as_str(), Some(id.as_str()));
}

#[test]
fn index_values_are_bounded_whatever_the_element_length() {
    use braid::store::Indexer;
    let resource = json!({"resourceType": "Patient", "id": "p1",
        "name": [{"family": "Müller".repeat(100_000), "given": ["g".repeat(300_000)]}],
        "identifier": [{"system": "http://x", "value": "9".repeat(200_000)}],
        "telecom": [{"system": "email", "value": "a".repeat(100_000)}]});
    let patient_type = braid::fhir::ResourceType::parse("Patient").unwrap();
    let entries = braid::search::SearchIndexer.entries(patient_type, &resource);
    assert!(entries.iter().any(|e| e.param == "family" && e.value.starts_with(b"mullermuller")));
    assert!(entries.iter().any(|e| e.param == "identifier" && e.value.starts_with(b"999")));
    let longest = entries.iter().map(|e| e.value.len()).max().unwrap();
    assert!(longest <= braid::search::values::MAX_INDEXED_BYTES, "longest index value: {longest} bytes");
}

#[tokio::test]
async fn an_absurdly_long_string_is_refused_naming_the_element_but_base64_data_may_be_large() {
    let app = spawn_app().await;
    let mut body = patient("Long");
    body["name"][0]["given"] = json!(["ok", "y".repeat((1 << 20) + 1)]);
    let refused = app.post("/Patient", &body).await;
    refused.assert_outcome(400);
    assert_eq!(refused.expressions(), vec!["Patient.name[0].given[1]"]);
    assert!(refused.text.contains("longer than the limit of 1048576 bytes"), "{}", refused.text);
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": body, "request": {"method": "POST", "url": "Patient"}}]});
    let in_bundle = app.post("", &bundle).await;
    in_bundle.assert_outcome(400);
    assert_eq!(in_bundle.expressions(), vec!["Bundle.entry[0].resource.name[0].given[1]"]);
    assert_eq!(app.history_len().await, 0, "nothing was written");

    let data = "QUJD".repeat(1 << 19); // 2 MiB of base64
    let binary =
        app.post("/Binary", &json!({"resourceType": "Binary", "contentType": "text/plain", "data": data})).await;
    assert_eq!(binary.status, 201, "{}", &binary.text[..binary.text.len().min(500)]);
    let read = app.get(&format!("/Binary/{}", binary.body["id"].as_str().unwrap())).await;
    assert_eq!(read.body["data"].as_str().map(str::len), Some(data.len()));
}

#[tokio::test]
async fn a_body_of_millions_of_small_values_is_refused_before_parsing() {
    let app = spawn_app().await;
    // 15 MiB of `0,`: under the body limit, but 7.8 million values.
    let numbers = "0,".repeat(15 << 19);
    let body = format!(r#"{{"resourceType":"Patient","extension":[{numbers}0]}}"#);
    let reply =
        app.send(app.client.post(app.url("/Patient")).header("content-type", "application/fhir+json").body(body)).await;
    reply.assert_outcome(413);
    assert!(reply.text.contains("more than the limit of 2000000 JSON values"), "{}", reply.text);

    let small = spawn_app_with(|settings| settings.max_json_values = 50).await;
    let mut body = patient("Values");
    body["extension"] = json!((0..40).map(|i| json!({"url": "http://x", "valueInteger": i})).collect::<Vec<_>>());
    let refused = small.post("/Patient", &body).await;
    refused.assert_outcome(413);
    assert_eq!(small.history_len().await, 0);
    let accepted = small.post("/Patient", &patient("Values")).await;
    assert_eq!(accepted.status, 201, "{}", accepted.text);

    let too_long = app
        .send(app.client.post(app.url("/Patient")).header("content-type", "application/fhir+json").body(vec![
            b' ';
            (16 << 20)
                + 1
        ]))
        .await;
    too_long.assert_outcome(413);
    assert!(too_long.text.contains("exceeds the limit of 16777216 bytes"), "{}", too_long.text);
}

/// Opens a connection and sends a POST's headers and half of its announced body, then nothing.
async fn stalled_post(port: u16) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = "POST /fhir/Patient HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/fhir+json\r\nContent-Length: 60\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(br#"{"resourceType":"Patient","#).await.unwrap();
    stream
}

/// Everything the server sends on `stream` until it closes the connection, or `None` if it
/// does not close it within `limit`.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, limit: std::time::Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut received = Vec::new();
    let closed = tokio::time::timeout(limit, async {
        let mut buffer = [0u8; 4096];
        loop {
            match stream.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    closed.ok().map(|_| String::from_utf8_lossy(&received).into_owned())
}

fn port_of(app: &crate::helpers::TestApp) -> u16 {
    app.base.trim_end_matches("/fhir").rsplit(':').next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_stalled_body_gets_408_and_its_connection_closed_while_others_are_served() {
    let app = spawn_app_with(|settings| settings.body_read_timeout_secs = 2).await;
    let started = std::time::Instant::now();
    let mut stalled = stalled_post(port_of(&app)).await;
    // Served meanwhile, long before the stalled request times out.
    let created = app.post("/Patient", &patient("Meanwhile")).await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert!(started.elapsed() < std::time::Duration::from_millis(1500), "not held up by the stalled request");

    let answer = read_until_closed(&mut stalled, std::time::Duration::from_secs(10))
        .await
        .expect("the server closes the stalled connection");
    let elapsed = started.elapsed();
    assert!(elapsed >= std::time::Duration::from_millis(1900) && elapsed < std::time::Duration::from_secs(6));
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""resourceType":"OperationOutcome""#), "{answer}");
    assert!(answer.contains("did not arrive within 2 seconds (26 bytes received)"), "{answer}");
    assert_eq!(app.history_len().await, 1, "the stalled create wrote nothing");
}

#[tokio::test]
async fn a_silent_connection_is_closed_after_the_head_timeout() {
    let app = spawn_app_with(|settings| settings.request_head_timeout_secs = 1).await;
    let mut silent = tokio::net::TcpStream::connect(("127.0.0.1", port_of(&app))).await.unwrap();
    let started = std::time::Instant::now();
    let answer = read_until_closed(&mut silent, std::time::Duration::from_secs(10)).await;
    assert!(answer.is_some(), "the silent connection is closed");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn connections_beyond_the_cap_wait_until_stalled_ones_time_out() {
    let app = spawn_app_with(|settings| {
        settings.workers = 1;
        settings.max_connections = 2;
        settings.body_read_timeout_secs = 1;
    })
    .await;
    let port = port_of(&app);
    let started = std::time::Instant::now();
    let mut stalled = Vec::new();
    for _ in 0..4 {
        stalled.push(stalled_post(port).await);
    }
    // Two connections are served; the other two and this request wait in the listen queue
    // until the first two time out, then the next two.
    let client = crate::helpers::client_builder().pool_max_idle_per_host(0).build().unwrap();
    let reply = tokio::time::timeout(std::time::Duration::from_secs(20), client.get(app.url("/metadata")).send())
        .await
        .expect("the request is served once stalled connections time out")
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(reply.status(), 200);
    assert!(waited >= std::time::Duration::from_millis(1800), "the cap held the request back only {waited:?}");
    for mut connection in stalled {
        let answer = read_until_closed(&mut connection, std::time::Duration::from_secs(10)).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
}

#[tokio::test]
async fn a_search_form_with_a_million_parameters_or_values_is_refused() {
    let app = spawn_app().await;
    app.post("/Patient", &gendered_patient("Form", "male")).await;
    let many_parameters = vec!["gender=male"; 1_000_000].join("&");
    let refused = app.send(form_search(&app, "/Patient/_search", many_parameters)).await;
    refused.assert_outcome(400);
    assert_eq!(refused.body["issue"][0]["code"], "too-costly");
    assert!(refused.text.contains("1000000 parameters; at most 100"), "{}", refused.text);

    let many_values = format!("_id={}", vec!["x"; 1_000_000].join(","));
    let refused = app.send(form_search(&app, "/Patient/_search", many_values)).await;
    refused.assert_outcome(400);
    assert_eq!(refused.expressions(), vec!["_id"]);

    // Within the bounds, the same kinds of search work.
    let hundred = vec!["gender=male"; 100].join("&");
    let found = app.send(form_search(&app, "/Patient/_search", hundred)).await;
    assert_eq!(found.body["entry"].as_array().map(Vec::len), Some(1), "{}", found.text);
    let ids = format!("family={}", vec!["form"; 1000].join(","));
    let found = app.send(form_search(&app, "/Patient/_search", ids)).await;
    assert_eq!(found.body["entry"].as_array().map(Vec::len), Some(1), "{}", found.text);
}
