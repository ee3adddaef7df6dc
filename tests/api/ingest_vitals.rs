//! `POST /fhir/Patient/{id}/$ingest-vitals`: an app sends a wearable export or a camera trace
//! with the patient's token and the record gains the Observations it holds, once, within what
//! the token may write.

use braid::fhir::ResourceType;
use braid::fhir::validation::validator;
use braid::ingest::rppg::synth::{Clip, ClipOptions};
use serde_json::{Value, json};

use crate::helpers::{AuthApp, Reply, spawn_auth_app_with};

/// Three Open mHealth readings, an impossible heart rate and a step count.
fn mhealth_points() -> String {
    let at = json!({"date_time": "2024-03-01T07:55:00-08:00"});
    [
        json!({"heart_rate": {"value": 64, "unit": "beats/min"}, "effective_time_frame": at}),
        json!({"systolic_blood_pressure": {"value": 128, "unit": "mmHg"},
            "diastolic_blood_pressure": {"value": 82, "unit": "mmHg"}, "effective_time_frame": at}),
        json!({"body_weight": {"value": 165.5, "unit": "lb"}, "effective_time_frame": at}),
        json!({"heart_rate": {"value": 900, "unit": "beats/min"}, "effective_time_frame": at}),
        json!({"header": {"schema_id": {"name": "step-count"}}, "body": {"step_count": {"value": 5000}, "effective_time_frame": at}}),
    ]
    .iter()
    .map(Value::to_string)
    .collect::<Vec<_>>()
    .join("\n")
}

fn parameters(format: &str, file: &str) -> Value {
    json!({"resourceType": "Parameters", "parameter": [
        {"name": "format", "valueCode": format}, {"name": "file", "valueString": file}]})
}

/// A parameter of an answer by name (the first).
fn value(answer: &Value, name: &str) -> Value {
    answer["parameter"]
        .as_array()
        .and_then(|parameters| parameters.iter().find(|parameter| parameter["name"] == name))
        .map_or(Value::Null, |parameter| parameter["valueInteger"].clone())
}

fn returned_observations(answer: &Value) -> Vec<Value> {
    answer["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|parameter| parameter["name"] == "observation")
        .map(|parameter| parameter["resource"].clone())
        .collect()
}

async fn post_raw(server: &AuthApp, path: &str, token: &str, content_type: &str, body: Vec<u8>) -> Reply {
    let app = &server.app;
    let request = app.client.post(app.url(path)).bearer_auth(token).header("content-type", content_type).body(body);
    app.send(request).await
}

/// How many Observations a Patient has (read with an operator's token).
async fn observation_count(server: &AuthApp, operator: &str, patient: &str) -> u64 {
    let app = &server.app;
    let request = app
        .client
        .get(app.url(&format!("/Observation?subject=Patient/{patient}&_summary=count")))
        .bearer_auth(operator);
    let reply = app.send(request).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body["total"].as_u64().unwrap()
}

async fn server_with_patients(configure: impl FnOnce(&mut braid::config::Settings)) -> (AuthApp, String) {
    let server = spawn_auth_app_with(configure).await;
    let operator = server.token("operator", "system/*.cruds", None);
    for id in ["p1", "p2"] {
        let reply = server
            .app
            .put_with_token(&format!("/Patient/{id}"), &operator, &json!({"resourceType": "Patient", "id": id}))
            .await;
        assert!(reply.status == 201, "{}", reply.text);
    }
    (server, operator)
}

#[tokio::test]
async fn a_patients_token_ingests_their_readings_once_and_never_into_another_record() {
    let (server, operator) = server_with_patients(|_| {}).await;
    let token = server.token("portal", "patient/Observation.c", Some("p1"));
    let reply = server
        .app
        .post_with_token("/Patient/p1/$ingest-vitals", &token, &parameters("mhealth", &mhealth_points()))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let answer = &reply.body;
    assert_eq!(answer["resourceType"], "Parameters");
    assert_eq!((value(answer, "records"), value(answer, "created")), (json!(5), json!(3)));
    // The impossible heart rate and the step count (not a vital sign) are refused, each with why.
    assert_eq!((value(answer, "rejected"), value(answer, "unchanged")), (json!(2), json!(0)));
    let problem = answer["parameter"].as_array().unwrap().iter().find(|p| p["name"] == "problem").unwrap();
    assert_eq!(problem["part"][0]["valueString"], "data point 4");
    assert!(problem["part"][1]["valueString"].as_str().unwrap().contains("900 beats/minute is impossible"));
    let made = returned_observations(answer);
    assert_eq!(made.len(), 3);
    for observation in &made {
        assert_eq!(observation["subject"]["reference"], "Patient/p1");
        validator().validate_value(ResourceType::OBSERVATION, observation).unwrap();
    }
    assert_eq!(observation_count(&server, &operator, "p1").await, 3);
    // The stored Observation is the one returned.
    let stored = server
        .app
        .send(
            server
                .app
                .client
                .get(server.app.url(&format!("/Observation/{}", made[0]["id"].as_str().unwrap())))
                .bearer_auth(&operator),
        )
        .await;
    assert_eq!(stored.body["valueQuantity"], made[0]["valueQuantity"]);
    assert_eq!(stored.body["meta"]["versionId"], "1");

    // A clinician annotates one of them; the same upload again: nothing new, nothing
    // overwritten (the token may only create).
    let path = format!("/Observation/{}", made[0]["id"].as_str().unwrap());
    let mut annotated = stored.body.clone();
    annotated["note"] = json!([{"text": "taken after a run"}]);
    let reply = server.app.put_with_token(&path, &operator, &annotated).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let again = server
        .app
        .post_with_token("/Patient/p1/$ingest-vitals", &token, &parameters("mhealth", &mhealth_points()))
        .await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!((value(&again.body, "created"), value(&again.body, "unchanged")), (json!(0), json!(3)));
    assert_eq!(observation_count(&server, &operator, "p1").await, 3);
    let kept = server.app.send(server.app.client.get(server.app.url(&path)).bearer_auth(&operator)).await;
    let kept = (kept.body["meta"]["versionId"].as_str(), kept.body["note"][0]["text"].as_str());
    assert_eq!(kept, (Some("2"), Some("taken after a run")));

    // Another patient's record: refused before anything is read, nothing written.
    let other = server
        .app
        .post_with_token("/Patient/p2/$ingest-vitals", &token, &parameters("mhealth", &mhealth_points()))
        .await;
    other.assert_outcome(403);
    assert_eq!(observation_count(&server, &operator, "p2").await, 0);
    // A token that may read Observations but not create them.
    let reader = server.token("portal", "patient/Observation.rs", Some("p1"));
    server
        .app
        .post_with_token("/Patient/p1/$ingest-vitals", &reader, &parameters("mhealth", &mhealth_points()))
        .await
        .assert_outcome(403);
    // Granular scopes: laboratory Observations only, so vital signs are refused.
    let labs = server.token("portal", "patient/Observation.c?category=laboratory", Some("p1"));
    server
        .app
        .post_with_token("/Patient/p1/$ingest-vitals", &labs, &parameters("mhealth", &mhealth_points()))
        .await
        .assert_outcome(403);
    // Weights only: the other readings are refused one by one as the scopes do not allow them.
    let weights = server.token("scale", "patient/Observation.c?code=http://loinc.org|29463-7", Some("p2"));
    let points = mhealth_points().replace("2024-03-01T07:55", "2024-03-02T07:55");
    let reply =
        server.app.post_with_token("/Patient/p2/$ingest-vitals", &weights, &parameters("mhealth", &points)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!((value(&reply.body, "created"), value(&reply.body, "rejected")), (json!(1), json!(4)));
    assert!(reply.text.contains("the access token's scopes do not allow creating this Observation"), "{}", reply.text);
    let made = returned_observations(&reply.body);
    assert_eq!(made.len(), 1);
    assert_eq!(made[0]["code"]["coding"][0]["code"], "29463-7");
    assert_eq!(observation_count(&server, &operator, "p2").await, 1);
    // No token.
    let anonymous = server
        .app
        .send(
            server
                .app
                .client
                .post(server.app.url("/Patient/p1/$ingest-vitals"))
                .header("content-type", "application/fhir+json")
                .body(parameters("mhealth", "{}").to_string()),
        )
        .await;
    anonymous.assert_outcome(401);
    assert_eq!(observation_count(&server, &operator, "p1").await, 3);
}

/// A raw file with its format in the URL: a Fitbit SpO2 CSV in the wearer's time zone, a file
/// in another format named, bad requests each with their reason, and an upload over the limit.
#[tokio::test]
async fn raw_files_are_read_with_the_format_in_the_url_and_bad_requests_change_nothing() {
    let (server, operator) = server_with_patients(|settings| settings.max_ingest_bytes = 4096).await;
    let token = server.token("app", "system/Observation.c", None);
    let csv = b"timestamp,value\n2024-01-15T02:03:00,95.3\n2024-01-15T02:04:00,96\n".to_vec();
    let reply =
        post_raw(&server, "/Patient/p2/$ingest-vitals?format=fitbit&timezone=Europe/Berlin", &token, "text/csv", csv)
            .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(value(&reply.body, "created"), json!(2));
    let made = returned_observations(&reply.body);
    assert_eq!(made[0]["effectiveDateTime"], "2024-01-15T02:03:00+01:00");
    let zone = reply.body["parameter"].as_array().unwrap().iter().find(|p| p["name"] == "timeZone").unwrap();
    assert_eq!(zone["valueString"], "Europe/Berlin, as given");
    assert_eq!(observation_count(&server, &operator, "p2").await, 2);
    // The token may not create Devices: the tracker is named by display only, and not written.
    assert_eq!(made[0]["device"], json!({"display": "Fitbit tracker"}));
    assert_eq!(value(&reply.body, "devices"), json!(1), "made, though not written");
    let devices =
        server.app.send(server.app.client.get(server.app.url("/Device?_summary=count")).bearer_auth(&operator)).await;
    assert_eq!(devices.body["total"], 0, "{}", devices.text);
    // With Device.c too, the Device is written and referenced.
    let both = server.token("app", "system/Observation.c system/Device.c", None);
    let csv = b"timestamp,value\n2024-01-16T02:03:00,95.3\n".to_vec();
    let reply = post_raw(&server, "/Patient/p2/$ingest-vitals?format=fitbit", &both, "text/csv", csv).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let made = returned_observations(&reply.body);
    let reference = made[0]["device"]["reference"].as_str().expect("a Device reference").to_owned();
    let device =
        server.app.send(server.app.client.get(server.app.url(&format!("/{reference}"))).bearer_auth(&operator)).await;
    assert_eq!(device.status, 200, "{}", device.text);
    assert_eq!(device.body["patient"]["reference"], "Patient/p2");
    assert_eq!(observation_count(&server, &operator, "p2").await, 3);

    let cases: Vec<(String, &str, Vec<u8>, u16, &str)> = vec![
        (
            "?format=apple".into(),
            "application/json",
            mhealth_points().into_bytes(),
            400,
            "it looks like Open mHealth JSON (format 'mhealth')",
        ),
        ("?format=garmin".into(), "application/json", b"{}".to_vec(), 400, "'garmin' is not a format"),
        ("?format=mhealth&patient=p1".into(), "application/json", b"{}".to_vec(), 400, "unknown parameter 'patient'"),
        (
            "?format=fitbit&timezone=Mars/Olympus".into(),
            "text/csv",
            b"timestamp,value\n".to_vec(),
            400,
            "'Mars/Olympus' is not a time zone",
        ),
        (
            "?format=mhealth&timezone=UTC".into(),
            "application/json",
            b"[]".to_vec(),
            400,
            "applies to Fitbit exports only",
        ),
        ("?format=mhealth".into(), "application/json", vec![b' '; 5000], 413, "exceeds the limit of 4096 bytes"),
        ("?format=mhealth".into(), "application/json", Vec::new(), 400, "no body"),
        (String::new(), "application/fhir+json", b"{\"resourceType\": \"Parameters\", ".to_vec(), 400, ""),
        (
            String::new(),
            "application/fhir+json",
            b"{\"resourceType\": \"Patient\"}".to_vec(),
            400,
            "must be a Parameters resource",
        ),
    ];
    for (query, content_type, body, status, expected) in cases {
        let reply = post_raw(&server, &format!("/Patient/p2/$ingest-vitals{query}"), &token, content_type, body).await;
        reply.assert_outcome(status);
        assert!(reply.text.contains(expected), "{query}: {}", reply.text);
    }
    server
        .app
        .post_with_token("/Patient/nobody/$ingest-vitals", &token, &parameters("mhealth", &mhealth_points()))
        .await
        .assert_outcome(404);
    server
        .app
        .post_with_token("/Observation/o1/$ingest-vitals", &token, &parameters("mhealth", &mhealth_points()))
        .await
        .assert_outcome(404);
    assert_eq!(observation_count(&server, &operator, "p2").await, 3, "no refused request wrote anything");
}

/// The camera scan as a browser sends it: the per-frame mean skin colour, never the video. A
/// trace with a pulse gives a heart rate with its signal quality; one without gives none.
#[tokio::test]
async fn a_camera_trace_gives_a_heart_rate_with_its_signal_quality_or_no_reading() {
    let (server, operator) = server_with_patients(|_| {}).await;
    let token = server.token("portal", "patient/Observation.c", Some("p1"));
    let trace = |pulse: bool| {
        let mut options = ClipOptions::clean(11, 32, 24);
        options.pulse = pulse;
        let mut clip = Clip::new(options);
        let truth = clip.truth();
        let frames: Vec<Value> =
            clip.trace().into_iter().map(|(t, [r, g, b])| json!({"t": t, "r": r, "g": g, "b": b})).collect();
        let body = json!({"start": "2024-05-01T09:00:00+02:00", "device": "Pixel 8 front camera", "frames": frames});
        (truth, body.to_string())
    };
    let (truth, with_pulse) = trace(true);
    let reply =
        server.app.post_with_token("/Patient/p1/$ingest-vitals", &token, &parameters("rppg", &with_pulse)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let made = returned_observations(&reply.body);
    let heart = made.iter().find(|o| o["code"]["coding"][0]["code"] == "8867-4").expect("a heart rate");
    let rate = heart["valueQuantity"]["value"].as_f64().unwrap();
    assert!((rate - truth.heart_rate).abs() < 3.0, "{rate} against {}", truth.heart_rate);
    assert_eq!(heart["extension"][0]["url"], "urn:braid:signal-quality");
    // The trace's start, and its first frame (the browser's timestamps jitter by milliseconds).
    assert!(heart["effectivePeriod"]["start"].as_str().unwrap().starts_with("2024-05-01T09:00:00"), "{heart}");
    assert_eq!(heart["device"]["display"], "Pixel 8 front camera");
    let (_, without) = trace(false);
    let reply = server.app.post_with_token("/Patient/p1/$ingest-vitals", &token, &parameters("rppg", &without)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(value(&reply.body, "observations"), json!(0));
    assert!(reply.text.contains("no reliable reading"), "{}", reply.text);
    assert_eq!(observation_count(&server, &operator, "p1").await, made.len() as u64);
}

/// A source pushes its own records: its token may not use the operation.
#[tokio::test]
async fn a_sources_token_is_refused() {
    let (server, operator) = server_with_patients(|_| {}).await;
    let source = crate::sources::add_source(&server, "clinic", false).await;
    let reply = server
        .app
        .post_with_token("/Patient/p1/$ingest-vitals", &source.token, &parameters("mhealth", &mhealth_points()))
        .await;
    reply.assert_outcome(403);
    assert!(reply.text.contains("a source's token"), "{}", reply.text);
    assert_eq!(observation_count(&server, &operator, "p1").await, 0);
}

/// Sends `head` (a request line and headers, without the blank line) and `body` on a new
/// connection, then reads until the server closes it (or 10 s pass): the raw answer.
async fn raw_exchange(server: &AuthApp, head: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let port: u16 = server.app.base.trim_end_matches("/fhir").rsplit(':').next().unwrap().parse().unwrap();
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    // The server may answer and close before all of the body is sent.
    let _ = stream.write_all(format!("{head}\r\n\r\n").as_bytes()).await;
    let _ = stream.write_all(body).await;
    let mut received = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buffer = [0u8; 4096];
        while let Ok(read @ 1..) = stream.read(&mut buffer).await {
            received.extend_from_slice(&buffer[..read]);
        }
    })
    .await;
    String::from_utf8_lossy(&received).into_owned()
}

/// The bounds of a streamed upload hold without a `Content-Length` to check up front: a
/// chunked body past `max_ingest_bytes` is a 413 once that much has arrived, and an upload
/// that stops arriving is a 408; a bad time zone is a 400 without waiting for the upload; none
/// stores anything.
#[tokio::test]
async fn a_streamed_upload_past_its_limit_or_too_slow_is_refused_and_stores_nothing() {
    let (server, operator) = server_with_patients(|settings| {
        settings.max_ingest_bytes = 4096;
        settings.body_read_timeout_secs = 2;
    })
    .await;
    let token = server.token("app", "system/Observation.c", None);
    // The token is for this server: the Host names it.
    let host = server.app.base.trim_start_matches("http://").trim_end_matches("/fhir").to_owned();
    let head_for = |query: &str, framing: &str| {
        format!(
            "POST /fhir/Patient/p2/$ingest-vitals{query} HTTP/1.1\r\nHost: {host}\r\n\
             Authorization: Bearer {token}\r\nContent-Type: application/json\r\n{framing}"
        )
    };
    let head = |framing: &str| head_for("?format=mhealth", framing);
    let chunk = format!("3e8\r\n{}\r\n", " ".repeat(1000));
    let chunked = format!("{}0\r\n\r\n", chunk.repeat(5));
    let answer = raw_exchange(&server, &head("Transfer-Encoding: chunked"), chunked.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("the uploaded file exceeds the limit of 4096 bytes (max_ingest_bytes)"), "{answer}");

    let started = std::time::Instant::now();
    let answer = raw_exchange(&server, &head("Content-Length: 1000"), &[b' '; 100]).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("the upload is too slow (100 bytes in 2 s)"), "{answer}");
    assert!(started.elapsed() >= std::time::Duration::from_millis(1900), "the upload had its time");

    // A time zone that is not one is refused before the upload is waited for.
    let started = std::time::Instant::now();
    let answer =
        raw_exchange(&server, &head_for("?format=fitbit&timezone=Mars/Olympus", "Content-Length: 1000"), &[b' '; 100])
            .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("'Mars/Olympus' is not a time zone"), "{answer}");
    assert!(started.elapsed() < std::time::Duration::from_millis(1500), "answered before the body's deadline");
    assert_eq!(observation_count(&server, &operator, "p2").await, 0);
}

/// With the database encrypted, an upload is spooled sealed with its data key and read back
/// through it: raw and in Parameters, the readings are the same as on a plain server.
#[tokio::test]
async fn an_encrypted_servers_uploads_are_spooled_sealed_and_read_whole() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("braid.key");
    braid::crypt::KeyFile::generate(&key).unwrap();
    let (server, operator) = server_with_patients(|settings| settings.encryption_key_file = Some(key.clone())).await;
    let token = server.token("app", "system/Observation.c", None);
    let reply = server
        .app
        .post_with_token("/Patient/p1/$ingest-vitals", &token, &parameters("mhealth", &mhealth_points()))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(value(&reply.body, "created"), json!(3));
    // A raw file larger than one sealed chunk (64 KiB), in the format given in the URL.
    let mut csv = String::from("timestamp,value\n");
    for minute in 0..3000 {
        csv.push_str(&format!("2024-01-15T{:02}:{:02}:00,{}\n", minute / 60 % 24, minute % 60, 90 + minute % 9));
    }
    assert!(csv.len() > 64 * 1024);
    let reply = post_raw(
        &server,
        "/Patient/p2/$ingest-vitals?format=fitbit&timezone=UTC",
        &token,
        "text/csv",
        csv.into_bytes(),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(value(&reply.body, "created"), json!(1440), "a day of minutes, the rest the same minutes again");
    assert_eq!(observation_count(&server, &operator, "p2").await, 1440);
}
