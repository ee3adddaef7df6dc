//! Bad input that the JSON schema alone lets through: impossible dates, out-of-range numbers,
//! control characters, duplicate keys, unusable ids, ambiguous bundles, wrong media types,
//! forged forwarding headers and conditional updates that would overwrite the wrong resource.
//! Every rejection is a 4xx OperationOutcome naming the element, and writes nothing.

use serde_json::{Value, json};

use crate::helpers::{Reply, TestApp, patient, spawn_app, spawn_app_with};

/// Asserts that `reply` is an OperationOutcome with `status` whose first issue names
/// `expression` and whose diagnostics contain `diagnostics`.
fn assert_rejected(reply: &Reply, status: u16, expression: &str, diagnostics: &str, name: &str) {
    assert_eq!(reply.status, status, "{name}: {}", reply.text);
    assert_eq!(reply.body["resourceType"], "OperationOutcome", "{name}: {}", reply.text);
    assert!(reply.expressions().iter().any(|e| e == expression), "{name}: expected {expression} in {}", reply.text);
    let all_diagnostics: Vec<&str> =
        reply.body["issue"].as_array().unwrap().iter().filter_map(|i| i["diagnostics"].as_str()).collect();
    assert!(
        all_diagnostics.iter().any(|d| d.contains(diagnostics)),
        "{name}: expected '{diagnostics}' in {}",
        reply.text
    );
}

async fn post_text(app: &TestApp, path: &str, body: String) -> Reply {
    app.send(app.client.post(app.url(path)).header("content-type", "application/fhir+json").body(body)).await
}

async fn put_text(app: &TestApp, path: &str, body: String) -> Reply {
    app.send(app.client.put(app.url(path)).header("content-type", "application/fhir+json").body(body)).await
}

#[actix_web::test]
async fn impossible_primitive_values_are_rejected_by_create_update_and_transaction() {
    let app = spawn_app().await;
    let long_decimal = format!("1.{}", "0".repeat(100_000));
    // (name, body of a create, expression, part of the diagnostics)
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "February 30th",
            r#"{"resourceType":"Patient","birthDate":"2021-02-30"}"#.into(),
            "Patient.birthDate",
            "'2021-02-30' is not a valid date: 2021-02 has 28 days",
        ),
        (
            "April 31st in a dateTime",
            r#"{"resourceType":"Patient","deceasedDateTime":"2020-04-31T10:00:00Z"}"#.into(),
            "Patient.deceasedDateTime",
            "2020-04 has 30 days",
        ),
        (
            "an instant on a non-leap February 29th",
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"issued":"2023-02-29T00:00:00Z"}"#
                .into(),
            "Observation.issued",
            "is not a valid instant",
        ),
        (
            "an integer beyond 32 bits",
            r#"{"resourceType":"Patient","multipleBirthInteger":4294967296}"#.into(),
            "Patient.multipleBirthInteger",
            "4294967296 is outside the range of integer",
        ),
        (
            "a negative unsignedInt",
            r#"{"resourceType":"Patient","photo":[{"size":-5}]}"#.into(),
            "Patient.photo[0].size",
            "outside the range of unsignedInt",
        ),
        (
            "a zero positiveInt",
            r#"{"resourceType":"Patient","extension":[{"url":"http://x","valuePositiveInt":0}]}"#.into(),
            "Patient.extension[0].valuePositiveInt",
            "outside the range of positiveInt",
        ),
        (
            "a decimal overflowing a double",
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"component":[{"code":{"text":"a"},"valueQuantity":{"value":1}},{"code":{"text":"b"},"valueQuantity":{"value":1e400}}]}"#.into(),
            "Observation.component[1].valueQuantity.value",
            "outside the range of a 64-bit floating-point number",
        ),
        (
            "a decimal with 100,000 digits",
            format!(
                r#"{{"resourceType":"Observation","status":"final","code":{{"text":"x"}},"valueQuantity":{{"value":{long_decimal}}}}}"#
            ),
            "Observation.valueQuantity.value",
            "significant digits; at most 32",
        ),
        (
            "a NUL character in a string",
            r#"{"resourceType":"Patient","name":[{"family":"Doe\u0000"}]}"#.into(),
            "Patient.name[0].family",
            "control characters such as U+0000",
        ),
    ];
    for (name, body, expression, diagnostics) in &cases {
        let resource_type = if body.contains("\"Observation\"") { "Observation" } else { "Patient" };
        let reply = post_text(&app, &format!("/{resource_type}"), body.clone()).await;
        assert_rejected(&reply, 400, expression, diagnostics, name);

        // The same resource by update, with an id, and inside a transaction.
        let with_id = body.replacen(&format!("\"{resource_type}\""), &format!("\"{resource_type}\",\"id\":\"bad\""), 1);
        let reply = put_text(&app, &format!("/{resource_type}/bad"), with_id.clone()).await;
        assert_rejected(&reply, 400, expression, diagnostics, name);

        let transaction = format!(
            r#"{{"resourceType":"Bundle","type":"transaction","entry":[{{"resource":{with_id},"request":{{"method":"PUT","url":"{resource_type}/bad"}}}}]}}"#
        );
        let reply = post_text(&app, "", transaction).await;
        let in_entry = expression.replacen(resource_type, "Bundle.entry[0].resource", 1);
        assert_rejected(&reply, 400, &in_entry, diagnostics, name);
    }
    assert_eq!(app.history_len().await, 0, "nothing was written");
    assert_eq!(app.get("/Patient/bad").await.status, 404);

    // The valid neighbours of those values are accepted and stored as sent.
    let reply = post_text(
        &app,
        "/Patient",
        r#"{"resourceType":"Patient","birthDate":"2000-02-29","multipleBirthInteger":2147483647,"name":[{"family":"Tab\tand\r\nnewline"}]}"#.into(),
    )
    .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.body["birthDate"], "2000-02-29");
    assert_eq!(reply.body["multipleBirthInteger"], json!(2147483647));
    assert_eq!(reply.body["name"][0]["family"], "Tab\tand\r\nnewline");
    // A leap-day birth date is found by date search.
    let found = app.get("/Patient?birthdate=2000-02-29").await;
    assert_eq!(entry_ids(&found.body), vec![reply.body["id"].as_str().unwrap().to_owned()], "{}", found.text);
}

#[actix_web::test]
async fn duplicate_json_keys_are_rejected_naming_the_key() {
    let app = spawn_app().await;
    let cases = [
        (
            "/Patient",
            r#"{"resourceType":"Patient","resourceType":"Patient","active":true}"#,
            "Patient.resourceType",
            "the key 'resourceType' appears more than once",
        ),
        (
            "/Patient",
            r#"{"resourceType":"Patient","name":[{"family":"A"},{"family":"B","given":["x"],"family":"C"}]}"#,
            "Patient.name[1].family",
            "the key 'family' appears more than once",
        ),
        (
            "/Patient",
            r#"{"resourceType":"Patient","birthDate":"2000-01-01","birth\u0044ate":"1999-01-01"}"#,
            "Patient.birthDate",
            "the key 'birthDate' appears more than once",
        ),
        (
            "",
            r#"{"resourceType":"Bundle","type":"transaction","entry":[{"resource":{"resourceType":"Patient","active":true,"active":false},"request":{"method":"POST","url":"Patient"}}]}"#,
            "Bundle.entry[0].resource.active",
            "the key 'active' appears more than once",
        ),
    ];
    for (path, body, expression, diagnostics) in cases {
        let reply = post_text(&app, path, body.into()).await;
        assert_rejected(&reply, 400, expression, diagnostics, body);
    }
    assert_eq!(app.history_len().await, 0, "nothing was written");
}

#[actix_web::test]
async fn dot_ids_are_rejected() {
    let app = spawn_app().await;
    for id in [".", ".."] {
        let mut body = patient("Dot");
        body["id"] = json!(id);
        // In a transaction, where the URL is not normalised by the client.
        let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": body, "request": {"method": "PUT", "url": format!("Patient/{id}")}}]});
        let reply = app.post("", &transaction).await;
        assert_rejected(&reply, 400, "Bundle.entry[0]", &format!("'{id}' is not a usable resource id"), id);
        // As the body id of a conditional update that matches nothing.
        let reply = app.put("/Patient?identifier=http://hospital.example/mrn|Dot", &body).await;
        assert_rejected(&reply, 400, "Patient.id", &format!("'{id}' is not a usable resource id"), id);
    }
    assert_eq!(app.history_len().await, 0, "nothing was written");
}

#[actix_web::test]
async fn a_conditional_update_matching_nothing_does_not_overwrite_the_body_id() {
    let app = spawn_app().await;
    let mut bystander = patient("Bystander");
    bystander["id"] = json!("p1");
    assert_eq!(app.put("/Patient/p1", &bystander).await.status, 201);
    let before = app.history_len().await;

    // The criteria match nothing, and the body's id belongs to another patient: 409.
    let mut intruder = patient("Intruder");
    intruder["id"] = json!("p1");
    let reply = app.put("/Patient?identifier=http://hospital.example/mrn|Intruder", &intruder).await;
    assert_rejected(&reply, 409, "Patient.id", "belongs to an existing Patient that does not match the criteria", "");
    assert_eq!(app.get("/Patient/p1").await.body["name"][0]["family"], "Bystander");
    assert_eq!(app.history_len().await, before, "nothing was written");

    // The same in a transaction.
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": intruder,
        "request": {"method": "PUT", "url": "Patient?identifier=http://hospital.example/mrn|Intruder"}}]});
    let reply = app.post("", &transaction).await;
    assert_eq!(reply.status, 409, "{}", reply.text);
    assert_eq!(app.get("/Patient/p1").await.body["name"][0]["family"], "Bystander");

    // Criteria matching nothing and an unused id: created with that id.
    intruder["id"] = json!("p2");
    let reply = app.put("/Patient?identifier=http://hospital.example/mrn|Intruder", &intruder).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.body["id"], "p2");
    // Criteria matching the body's own resource: updated.
    intruder["active"] = json!(true);
    let reply = app.put("/Patient?identifier=http://hospital.example/mrn|Intruder", &intruder).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["meta"]["versionId"], "2");
}

#[actix_web::test]
async fn if_match_never_matches_a_deleted_resource() {
    let app = spawn_app().await;
    let mut body = patient("Gone");
    body["id"] = json!("gone");
    assert_eq!(app.put("/Patient/gone", &body).await.status, 201);
    assert_eq!(app.delete("/Patient/gone").await.status, 204);
    let before = app.history_len().await;

    // Version 2 is the deletion: naming it in If-Match must not resurrect the patient.
    let reply = app
        .send(
            app.client
                .put(app.url("/Patient/gone"))
                .header("content-type", "application/fhir+json")
                .header("if-match", "W/\"2\"")
                .body(body.to_string()),
        )
        .await;
    assert_eq!(reply.status, 412, "{}", reply.text);
    assert_eq!(reply.body["issue"][0]["code"], "deleted");
    assert!(
        reply.body["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .contains("Patient/gone, but it was deleted (version 2)")
    );
    assert_eq!(app.get("/Patient/gone").await.status, 410);
    assert_eq!(app.history_len().await, before, "nothing was written");

    // The same for a conditional delete with If-Match, and in a transaction.
    let reply = app.send(app.client.delete(app.url("/Patient/gone")).header("if-match", "W/\"2\"")).await;
    assert_eq!(reply.status, 412, "{}", reply.text);
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{"resource": body,
        "request": {"method": "PUT", "url": "Patient/gone", "ifMatch": "W/\"2\""}}]});
    assert_eq!(app.post("", &transaction).await.status, 412);
    assert_eq!(app.history_len().await, before, "nothing was written");

    // Without If-Match, an update recreates the patient as version 3.
    let reply = app.put("/Patient/gone", &body).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.body["meta"]["versionId"], "3");
}

#[actix_web::test]
async fn bundles_with_indistinguishable_entries_are_rejected() {
    let app = spawn_app().await;
    let create = |full_url: &str, family: &str, if_none_exist: Option<&str>| {
        let mut entry = json!({"fullUrl": full_url, "resource": patient(family),
            "request": {"method": "POST", "url": "Patient"}});
        if let Some(criteria) = if_none_exist {
            entry["request"]["ifNoneExist"] = json!(criteria);
        }
        entry
    };
    let bundle = |kind: &str, entries: Vec<Value>| json!({"resourceType": "Bundle", "type": kind, "entry": entries});
    let a = "urn:uuid:00000000-0000-0000-0000-00000000000a";
    let b = "urn:uuid:00000000-0000-0000-0000-00000000000b";
    let c = "urn:uuid:00000000-0000-0000-0000-00000000000c";

    let cases = [
        (
            "transaction, same fullUrl",
            bundle("transaction", vec![create(a, "A", None), create(b, "B", None), create(a, "C", None)]),
            ["Bundle.entry[0].fullUrl", "Bundle.entry[2].fullUrl"],
            format!("entries 0 and 2 have the same fullUrl '{a}'"),
        ),
        (
            "batch, same fullUrl",
            bundle("batch", vec![create(a, "A", None), create(a, "B", None)]),
            ["Bundle.entry[0].fullUrl", "Bundle.entry[1].fullUrl"],
            format!("entries 0 and 1 have the same fullUrl '{a}'"),
        ),
        (
            "transaction, same ifNoneExist written differently",
            bundle(
                "transaction",
                vec![
                    create(a, "A", Some("identifier=http://x|1&active=true")),
                    create(b, "B", None),
                    create(c, "C", Some("Patient?active=true&identifier=http://x%7C1")),
                ],
            ),
            ["Bundle.entry[0].request.ifNoneExist", "Bundle.entry[2].request.ifNoneExist"],
            "entries 0 and 2 have the same ifNoneExist".to_owned(),
        ),
    ];
    for (name, body, expressions, diagnostics) in cases {
        let reply = app.post("", &body).await;
        assert_eq!(reply.status, 400, "{name}: {}", reply.text);
        assert_eq!(reply.expressions(), expressions, "{name}");
        assert!(
            reply.body["issue"][0]["diagnostics"].as_str().unwrap().starts_with(&diagnostics),
            "{name}: {}",
            reply.text
        );
    }
    assert_eq!(app.history_len().await, 0, "nothing was written");

    // A batch may repeat a fullUrl for different versions of a resource (bdl-7); different
    // criteria in a transaction are fine.
    let mut first = create(a, "A", None);
    first["resource"]["meta"] = json!({"versionId": "1"});
    let mut second = create(a, "B", None);
    second["resource"]["meta"] = json!({"versionId": "2"});
    let reply = app.post("", &bundle("batch", vec![first, second])).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let reply = app
        .post(
            "",
            &bundle(
                "transaction",
                vec![create(a, "A", Some("identifier=http://x|1")), create(b, "B", Some("identifier=http://x|2"))],
            ),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(app.history_len().await, 4);
}

#[actix_web::test]
async fn a_search_body_must_be_a_form() {
    let app = spawn_app().await;
    let created = app.post("/Patient", &patient("Formal")).await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let search = |content_type: Option<&'static str>, body: &'static str| {
        let mut request = app.client.post(app.url("/Patient/_search")).body(body);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        app.send(request)
    };
    let json_body = r#"{"resourceType":"Parameters","parameter":[{"name":"family","valueString":"Nobody"}]}"#;
    let reply = search(Some("application/fhir+json"), json_body).await;
    reply.assert_outcome(415);
    assert!(
        reply
            .text
            .contains("a search body must be a form (application/x-www-form-urlencoded), not 'application/fhir+json'"),
        "{}",
        reply.text
    );
    let reply = search(Some("application/json"), json_body).await;
    reply.assert_outcome(415);
    let reply = search(None, "family=Nobody").await;
    reply.assert_outcome(415);
    assert!(reply.text.contains("(no Content-Type)"), "{}", reply.text);

    // A form searches; so does an empty body without a Content-Type.
    let reply = search(Some("application/x-www-form-urlencoded; charset=utf-8"), "family=Formal").await;
    assert_eq!(entry_ids(&reply.body), vec![id.clone()], "{}", reply.text);
    let reply = search(Some("application/x-www-form-urlencoded"), "family=Nobody").await;
    assert_eq!(entry_ids(&reply.body), Vec::<String>::new(), "{}", reply.text);
    let reply = search(None, "").await;
    assert_eq!(entry_ids(&reply.body), vec![id], "{}", reply.text);
}

/// Creates a patient with forged forwarding headers and returns the `Location` and the search
/// bundle's `self` link.
async fn links_with_forged_headers(app: &TestApp) -> (String, String) {
    let forged = |request: reqwest::RequestBuilder| {
        request
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-proto", "https")
            .header("forwarded", "host=evil.example;proto=https")
    };
    let created = app
        .send(
            forged(app.client.post(app.url("/Patient")))
                .header("content-type", "application/fhir+json")
                .body(patient("Link").to_string()),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let searched = app.send(forged(app.client.get(app.url("/Patient?family=Link")))).await;
    assert_eq!(searched.status, 200, "{}", searched.text);
    (created.header("location").unwrap().to_owned(), searched.body["link"][0]["url"].as_str().unwrap().to_owned())
}

#[actix_web::test]
async fn forwarded_headers_are_ignored_unless_trusted() {
    let app = spawn_app().await;
    let (location, self_link) = links_with_forged_headers(&app).await;
    assert!(location.starts_with(&format!("{}/Patient/", app.base)), "{location}");
    assert_eq!(self_link, format!("{}/Patient?family=Link", app.base));

    // A Host that is not a plain host[:port] is replaced by the listen address.
    let port = app.base.trim_start_matches("http://127.0.0.1:").trim_end_matches("/fhir").to_owned();
    let reply = app.send(app.client.get(app.url("/Patient?family=Link")).header("host", "evil.example/x?")).await;
    assert_eq!(
        reply.body["link"][0]["url"],
        format!("http://127.0.0.1:{port}/fhir/Patient?family=Link"),
        "{}",
        reply.text
    );
    // A well-formed Host is what the client asked for, and is used.
    let reply = app.send(app.client.get(app.url("/Patient?family=Link")).header("host", "fhir.example:8443")).await;
    assert_eq!(reply.body["link"][0]["url"], "http://fhir.example:8443/fhir/Patient?family=Link", "{}", reply.text);

    // No Host at all (HTTP/1.0): the listen address.
    let port_number: u16 = port.parse().unwrap();
    let (status, body) = tokio::task::spawn_blocking(move || {
        raw_exchange(port_number, b"GET /fhir/Patient?family=Link HTTP/1.0\r\nX-Forwarded-Host: evil.example\r\n\r\n")
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let bundle: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(bundle["link"][0]["url"], format!("http://127.0.0.1:{port}/fhir/Patient?family=Link"));

    let trusting = spawn_app_with(|settings| settings.trust_forwarded_headers = true).await;
    let (location, self_link) = links_with_forged_headers(&trusting).await;
    assert!(location.starts_with("https://evil.example/fhir/Patient/"), "{location}");
    assert_eq!(self_link, "https://evil.example/fhir/Patient?family=Link");
}

fn entry_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect()
}

/// Sends `request` on a fresh connection and returns the status code and the body.
fn raw_exchange(port: u16, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    // The server may answer and close before it has read everything.
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned()).unwrap_or_default();
    (status, body)
}

#[test]
fn requests_the_http_parser_rejects_are_not_logged_as_errors() {
    let dir = tempfile::tempdir().unwrap();
    let mut braid = crate::helpers::start_braid_process(&dir.path().join("parser.redb"), "info");
    let get = |target: String| format!("GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").into_bytes();
    // (name, request, status, OperationOutcome diagnostics if Braid itself answers)
    let cases: Vec<(&str, Vec<u8>, u16, Option<&str>)> = vec![
        ("a 20 KB URL", get(format!("/fhir/Patient?name={}", "a".repeat(20_000))), 414, Some("the URL is longer than the limit of 16384 bytes")),
        ("a 100 KB URL", get(format!("/fhir/Patient?name={}", "a".repeat(100_000))), 400, None),
        ("a 200 KB URL", get(format!("/fhir/Patient?name={}", "a".repeat(200_000))), 431, None),
        (
            "a bad Content-Length",
            b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\nConnection: close\r\n\r\n{}".to_vec(),
            400,
            None,
        ),
        (
            "two Content-Lengths",
            b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}".to_vec(),
            400,
            None,
        ),
        ("a bad header", b"GET /fhir/Patient HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n".to_vec(), 400, None),
        (
            "a broken chunked body",
            b"POST /fhir/Patient HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/fhir+json\r\nConnection: close\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".to_vec(),
            400,
            Some("reading the body failed"),
        ),
    ];
    for (name, request, status, diagnostics) in &cases {
        let (actual, body) = raw_exchange(braid.port, request);
        assert_eq!(actual, *status, "{name}: {body}");
        if let Some(diagnostics) = diagnostics {
            let outcome: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("{name}: {body}"));
            assert_eq!(outcome["resourceType"], "OperationOutcome", "{name}");
            assert!(outcome["issue"][0]["diagnostics"].as_str().unwrap().contains(diagnostics), "{name}: {body}");
        }
    }
    // A normal request afterwards: its completion line marks the end of the logs to inspect.
    let (status, _) = raw_exchange(braid.port, &get("/fhir/metadata".into()));
    assert_eq!(status, 200);
    let mut lines = Vec::new();
    while let Ok(line) = braid.logs.recv_timeout(std::time::Duration::from_secs(10)) {
        let done = line["fields"]["status"] == 200;
        lines.push(line);
        if done {
            break;
        }
    }
    let _ = braid.child.kill();
    let _ = braid.child.wait();
    let errors: Vec<&Value> = lines.iter().filter(|line| line["level"] == "ERROR").collect();
    assert!(errors.is_empty(), "client errors logged at ERROR: {errors:?}");
    let demoted = lines
        .iter()
        .filter(|line| line["fields"]["message"] == "HTTP connection closed: malformed request or network error")
        .count();
    assert!(demoted >= 5, "each request the parser refused is logged at INFO: {lines:?}");
    assert!(lines.iter().all(|line| !line.to_string().contains("aaaaaaaaaa")), "a URL reached the log");
}
