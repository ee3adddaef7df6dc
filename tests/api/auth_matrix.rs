//! The authorization matrix: tokens of each shape (patient, user and system context; v1, v2
//! and granular scopes) reach exactly what their grant allows, by every route. Patient B's
//! resources carry the marker `LEAK-B`; no response to a token of patient A may contain it.
//!
//! Tokens are signed with the server's own key ring through the library, as the authorization
//! endpoints do when they issue them.

use serde_json::{Value, json};

use crate::helpers::{AuthApp, Reply, TestApp};

const VITAL: &str = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs";

struct Server {
    app: TestApp,
    auth: AuthApp,
}

impl Server {
    fn token(&self, scope: &str, patient: Option<&str>) -> String {
        self.auth.token("matrix", scope, patient)
    }

    async fn get(&self, path: &str, token: &str) -> Reply {
        self.app.send(self.app.client.get(self.app.url(path)).bearer_auth(token)).await
    }
}

async fn spawn() -> Server {
    let auth = crate::helpers::spawn_auth_app().await;
    let app = TestApp::at(auth.app.base.clone(), tempfile::tempdir().unwrap());
    let server = Server { app, auth };
    seed(&server).await;
    server
}

fn observation(id: &str, patient: &str, category: &str, marker: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "identifier": [{"system": "urn:test", "value": marker}],
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "performer": [{"reference": "Practitioner/doc"}],
        "effectiveDateTime": "2024-01-01T10:00:00Z",
        "valueQuantity": {"value": 70, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}})
}

/// Patients A and B with observations (vital signs and laboratory), a condition, a device, and
/// a practitioner both share. Written with a system token that may do anything.
async fn seed(server: &Server) {
    let mut resources = vec![
        json!({"resourceType": "Practitioner", "id": "doc", "name": [{"family": "Shared"}]}),
        json!({"resourceType": "Patient", "id": "A", "name": [{"family": "Alpha"}], "identifier": [{"system": "urn:test", "value": "mine-A"}]}),
        json!({"resourceType": "Patient", "id": "B", "name": [{"family": "Beta"}], "identifier": [{"system": "urn:test", "value": "LEAK-B"}]}),
    ];
    for (patient, marker) in [("A", "mine-A"), ("B", "LEAK-B")] {
        resources.push(observation(&format!("{patient}-vital"), patient, "vital-signs", marker));
        resources.push(observation(&format!("{patient}-lab"), patient, "laboratory", marker));
        resources.push(json!({"resourceType": "Condition", "id": format!("{patient}-cond"),
            "identifier": [{"system": "urn:test", "value": marker}],
            "subject": {"reference": format!("Patient/{patient}")}}));
        resources.push(json!({"resourceType": "Device", "id": format!("{patient}-dev"),
            "identifier": [{"system": "urn:test", "value": marker}],
            "patient": {"reference": format!("Patient/{patient}")}}));
    }
    let entries: Vec<Value> = resources
        .into_iter()
        .map(|resource| {
            let url = format!("{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
            json!({"resource": resource, "request": {"method": "PUT", "url": url}})
        })
        .collect();
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
    let admin = server.token("system/*.cruds", None);
    let reply = server.app.post_with_token("", &admin, &bundle).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    // B's observation is updated once, so that it has a history.
    let mut changed = observation("B-vital", "B", "vital-signs", "LEAK-B");
    changed["valueQuantity"]["value"] = json!(72);
    let reply = server
        .app
        .send(
            server
                .app
                .client
                .put(server.app.url("/Observation/B-vital"))
                .bearer_auth(&admin)
                .header("content-type", "application/fhir+json")
                .body(changed.to_string()),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

fn ids(reply: &Reply) -> Vec<String> {
    let mut ids: Vec<String> = reply.body["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let resource = &entry["resource"];
            Some(format!("{}/{}", resource["resourceType"].as_str()?, resource["id"].as_str()?))
        })
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_patient_token_reaches_its_own_compartment_and_shared_resources_and_nothing_of_another_patient() {
    let server = spawn().await;
    for scope in [
        "patient/*.rs",
        "patient/*.read",
        "launch/patient patient/Observation.rs patient/Patient.rs patient/Condition.rs patient/Device.rs patient/Practitioner.rs",
    ] {
        let token = server.token(scope, Some("A"));
        // Everything but the links, which echo the request's own query.
        let leak_free = |reply: &Reply, route: &str| {
            let mut shown = reply.body.clone();
            if let Some(object) = shown.as_object_mut() {
                object.remove("link");
            }
            let shown = if shown.is_null() { reply.text.clone() } else { shown.to_string() };
            assert!(!shown.contains("LEAK-B"), "{scope}: {route} shows patient B: {}", reply.text);
        };
        // Reads: own resources and shared ones; B's are answered as missing.
        for (path, status) in [
            ("/Patient/A", 200),
            ("/Observation/A-vital", 200),
            ("/Observation/A-lab/_history/1", 200),
            ("/Practitioner/doc", 200),
            ("/Patient/B", 404),
            ("/Observation/B-vital", 404),
            ("/Observation/B-vital/_history/1", 404),
            ("/Observation/B-vital/_history", 404),
            ("/Condition/B-cond", 404),
            ("/Patient/B/Observation", 404),
        ] {
            let reply = server.get(path, &token).await;
            assert_eq!(reply.status, status, "{scope}: {path}: {}", reply.text);
            leak_free(&reply, path);
        }
        if scope.contains("Device") || scope.contains("*") {
            let reply = server.get("/Device/B-dev", &token).await;
            assert_eq!(reply.status, 404, "{scope}");
            let devices = server.get("/Device", &token).await;
            assert_eq!(ids(&devices), vec!["Device/A-dev"], "{scope}");
        }

        // Searches, by any parameter, see only A's compartment.
        for (path, expected) in [
            ("/Observation", vec!["Observation/A-lab", "Observation/A-vital"]),
            ("/Observation?patient=B", vec![]),
            ("/Observation?subject=Patient/B", vec![]),
            ("/Observation?identifier=urn:test|LEAK-B", vec![]),
            ("/Patient", vec!["Patient/A"]),
            ("/Patient?family=Beta", vec![]),
            ("/Patient/A/Observation", vec!["Observation/A-lab", "Observation/A-vital"]),
            (
                "/Observation?_include=Observation:subject",
                vec!["Observation/A-lab", "Observation/A-vital", "Patient/A"],
            ),
            (
                "/Observation?_include=Observation:performer&code=8867-4",
                vec!["Observation/A-lab", "Observation/A-vital", "Practitioner/doc"],
            ),
            (
                "/Practitioner?_revinclude=Observation:performer",
                vec!["Observation/A-lab", "Observation/A-vital", "Practitioner/doc"],
            ),
            ("/Patient?_revinclude=Condition:subject", vec!["Condition/A-cond", "Patient/A"]),
            // Chains and _has search their inner types within the token's reach too.
            ("/Observation?subject:Patient.family=Beta", vec![]),
            ("/Observation?subject:Patient.family=Alpha", vec!["Observation/A-lab", "Observation/A-vital"]),
            ("/Patient?_has:Observation:subject:identifier=urn:test|LEAK-B", vec![]),
            ("/Patient?_has:Observation:subject:category=laboratory", vec!["Patient/A"]),
        ] {
            let reply = server.get(path, &token).await;
            assert_eq!(reply.status, 200, "{scope}: {path}: {}", reply.text);
            let expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
            assert_eq!(ids(&reply), expected, "{scope}: {path}");
            leak_free(&reply, path);
        }

        // History at every level keeps A's versions only.
        for path in ["/Observation/_history", "/_history", "/Patient/_history"] {
            let reply = server.get(path, &token).await;
            assert_eq!(reply.status, 200, "{scope}: {path}: {}", reply.text);
            assert!(!ids(&reply).is_empty(), "{scope}: {path}");
            leak_free(&reply, path);
        }

        // $everything of A: A's compartment and what it references that the token may read;
        // of B: missing. A system search sees only A's compartment.
        let everything = server.get("/Patient/A/$everything", &token).await;
        assert_eq!(everything.status, 200, "{scope}: {}", everything.text);
        assert!(ids(&everything).contains(&"Observation/A-vital".to_owned()), "{scope}: {:?}", ids(&everything));
        leak_free(&everything, "$everything");
        let other = server.get("/Patient/B/$everything", &token).await;
        assert_eq!(other.status, 404, "{scope}");
        leak_free(&other, "$everything of B");
        for path in [
            "/?_type=Observation,Condition",
            "/?_type=Observation,Patient&identifier=urn:test|LEAK-B",
            "/?_type=Patient&_count=1",
        ] {
            let reply = server.get(path, &token).await;
            assert_eq!(reply.status, 200, "{scope}: {path}: {}", reply.text);
            leak_free(&reply, path);
        }
        let system = server.get("/?_type=Observation,Condition", &token).await;
        assert_eq!(ids(&system), vec!["Condition/A-cond", "Observation/A-lab", "Observation/A-vital"], "{scope}");
        let transaction = json!({"resourceType": "Bundle", "type": "batch",
            "entry": [{"request": {"method": "GET", "url": "Observation/B-vital"}}]});
        let reply = server.app.post_with_token("", &token, &transaction).await;
        assert_eq!(reply.status, 200, "{scope}: batch");
        assert!(reply.body["entry"][0]["response"]["status"].as_str().unwrap().starts_with("404"), "{scope}");
        leak_free(&reply, "batch");
    }
}

#[tokio::test]
async fn a_granular_scope_shows_only_the_resources_its_filter_selects_includes_too() {
    let server = spawn().await;
    let token = server.token(&format!("patient/Observation.rs?category={VITAL} patient/Patient.rs"), Some("A"));
    let reply = server.get("/Observation", &token).await;
    assert_eq!(ids(&reply), vec!["Observation/A-vital"]);
    let reply = server.get("/Observation?category=laboratory", &token).await;
    assert_eq!(ids(&reply), Vec::<String>::new());
    assert_eq!(server.get("/Observation/A-lab", &token).await.status, 404);
    assert_eq!(server.get("/Observation/A-vital", &token).await.status, 200);
    let reply = server.get("/Patient?_revinclude=Observation:subject", &token).await;
    assert_eq!(ids(&reply), vec!["Observation/A-vital", "Patient/A"]);
    assert_eq!(server.get("/Condition", &token).await.status, 403);
    let history = server.get("/Observation/_history", &token).await;
    assert_eq!(ids(&history), vec!["Observation/A-vital"]);

    // Two granular scopes on different parameters: either filter admits.
    let either =
        server.token(&format!("patient/Observation.rs?category={VITAL} patient/Observation.rs?_id=A-lab"), Some("A"));
    let reply = server.get("/Observation", &either).await;
    assert_eq!(ids(&reply), vec!["Observation/A-lab", "Observation/A-vital"]);

    // A system token with a granular scope sees every patient's vital signs and nothing else.
    let system = server.token(&format!("system/Observation.rs?category={VITAL}"), None);
    let reply = server.get("/Observation", &system).await;
    assert_eq!(ids(&reply), vec!["Observation/A-vital", "Observation/B-vital"]);
    assert_eq!(server.get("/Observation/B-lab", &system).await.status, 404);

    // The granular filter holds inside _has: A's lab results cannot be probed through Patient.
    let reply = server.get("/Patient?_has:Observation:subject:category=laboratory", &token).await;
    assert_eq!(ids(&reply), Vec::<String>::new());
    let reply = server.get("/Patient?_has:Observation:subject:category=vital-signs", &token).await;
    assert_eq!(ids(&reply), vec!["Patient/A"]);
}

#[tokio::test]
async fn a_page_link_replayed_with_another_patients_token_is_refused() {
    let server = spawn().await;
    let system = server.token("system/*.rs", None);
    let first = server.get("/Observation?_count=1", &system).await;
    let next = first.body["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|link| link["relation"] == "next")
        .and_then(|link| link["url"].as_str())
        .expect("a next link")
        .to_owned();
    let path = next.strip_prefix(&server.app.base).unwrap();
    let patient = server.token("patient/*.rs", Some("A"));
    let replayed = server.get(path, &patient).await;
    assert_eq!(replayed.status, 400, "{}", replayed.text);
    assert!(!replayed.text.contains("LEAK-B"));
    // The system token itself pages on.
    assert_eq!(server.get(path, &system).await.status, 200);
}

#[tokio::test]
async fn user_and_system_tokens_see_every_patient_within_their_scopes() {
    let server = spawn().await;
    for scope in ["user/*.rs", "system/Observation.rs", "user/Observation.read"] {
        let token = server.token(scope, None);
        let reply = server.get("/Observation", &token).await;
        assert_eq!(reply.status, 200, "{scope}: {}", reply.text);
        assert_eq!(ids(&reply).len(), 4, "{scope}");
        assert!(reply.text.contains("LEAK-B"));
        assert_eq!(server.get("/Observation/B-lab", &token).await.status, 200);
    }
    let observations_only = server.token("user/Observation.rs", None);
    assert_eq!(server.get("/Patient/B", &observations_only).await.status, 403);
    // Includes and chains reach other types only as far as the scopes do.
    let reply = server.get("/Observation?_include=Observation:subject", &observations_only).await;
    assert_eq!(reply.status, 200);
    assert!(ids(&reply).iter().all(|id| id.starts_with("Observation/")), "{:?}", ids(&reply));
    let chained = server.get("/Observation?subject:Patient.family=Beta", &observations_only).await;
    chained.assert_outcome(403);
}

impl Server {
    async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: &Value,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = self
            .app
            .client
            .request(method, format!("{}{path}", self.app.base))
            .bearer_auth(token)
            .header("content-type", "application/fhir+json")
            .body(body.to_string());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.app.send(request).await
    }

    /// Patient B's resources with their versions, as a system token sees them.
    async fn b_state(&self) -> Vec<(String, String)> {
        let admin = self.token("system/*.rs", None);
        let mut state = Vec::new();
        for path in ["/Patient/B", "/Observation/B-vital", "/Observation/B-lab", "/Condition/B-cond", "/Device/B-dev"] {
            let reply = self.get(path, &admin).await;
            state.push((path.to_owned(), reply.header("etag").unwrap_or("gone").to_owned()));
        }
        state
    }
}

#[tokio::test]
async fn a_patient_token_writes_only_within_its_compartment_and_conditional_writes_never_match_another_patient() {
    let server = spawn().await;
    let before = server.b_state().await;
    let token = server.token("patient/*.cruds", Some("A"));
    use reqwest::Method;

    // Creates: into A's record, yes; into B's, no.
    let created = server
        .send_json(Method::POST, "/Observation", &token, &observation("x", "A", "vital-signs", "new-A"), &[])
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    let refused =
        server.send_json(Method::POST, "/Observation", &token, &observation("x", "B", "vital-signs", "new"), &[]).await;
    refused.assert_outcome(403);

    // A conditional create whose criteria only B's record matches creates (it cannot see B's).
    let conditional = server
        .send_json(
            Method::POST,
            "/Observation",
            &token,
            &observation("x", "A", "vital-signs", "c"),
            &[("if-none-exist", "identifier=urn:test|LEAK-B")],
        )
        .await;
    assert_eq!(conditional.status, 201, "{}", conditional.text);
    assert_ne!(conditional.body["id"], "B-vital");
    assert!(!conditional.text.contains("LEAK-B"));

    // Updates, patches and deletes of B's resources: missing, and B is unchanged.
    let mut update = observation("B-vital", "A", "vital-signs", "hijack");
    update["id"] = json!("B-vital");
    server.send_json(Method::PUT, "/Observation/B-vital", &token, &update, &[]).await.assert_outcome(404);
    let patch = json!([{"op": "replace", "path": "/status", "value": "amended"}]);
    let patched = server
        .app
        .send(
            server
                .app
                .client
                .patch(server.app.url("/Observation/B-lab"))
                .bearer_auth(&token)
                .header("content-type", "application/json-patch+json")
                .body(patch.to_string()),
        )
        .await;
    patched.assert_outcome(404);
    let deleted =
        server.app.send(server.app.client.delete(server.app.url("/Condition/B-cond")).bearer_auth(&token)).await;
    deleted.assert_outcome(404);
    let conditional_delete = server
        .app
        .send(server.app.client.delete(server.app.url("/Observation?identifier=urn:test|LEAK-B")).bearer_auth(&token))
        .await;
    assert!(conditional_delete.status < 300, "{}", conditional_delete.text);
    let conditional_update = server
        .send_json(
            Method::PUT,
            "/Observation?identifier=urn:test|LEAK-B",
            &token,
            &observation("y", "A", "vital-signs", "cu"),
            &[],
        )
        .await;
    assert_eq!(conditional_update.status, 201, "creates rather than updating B's: {}", conditional_update.text);
    // A reference by criteria cannot resolve to B.
    let mut by_criteria = observation("z", "A", "vital-signs", "ref");
    by_criteria["subject"]["reference"] = json!("Patient?identifier=urn:test|LEAK-B");
    let reply = server.send_json(Method::POST, "/Observation", &token, &by_criteria, &[]).await;
    assert!(reply.status >= 400, "{}", reply.text);
    assert!(!reply.text.contains("\"Patient/B\""));
    // Moving A's own observation into B's record is refused.
    let mut moved = observation("A-vital", "B", "vital-signs", "moved");
    moved["id"] = json!("A-vital");
    server.send_json(Method::PUT, "/Observation/A-vital", &token, &moved, &[]).await.assert_outcome(403);

    // Bundles: entry by entry, as their own requests would be.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": "Observation/B-vital"}},
        {"request": {"method": "GET", "url": "Observation?patient=B"}},
        {"request": {"method": "GET", "url": "Patient/B/Condition"}},
        {"request": {"method": "DELETE", "url": "Device/B-dev"}},
        {"request": {"method": "GET", "url": "Observation/A-vital"}},
    ]});
    let reply = server.send_json(Method::POST, "", &token, &batch, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(!reply.text.contains("LEAK-B"), "{}", reply.text);
    let statuses: Vec<&str> =
        reply.body["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert!(statuses[0].starts_with("404"), "{statuses:?}");
    assert!(statuses[1].starts_with("200"), "{statuses:?}");
    assert_eq!(reply.body["entry"][1]["resource"]["entry"], Value::Null, "no match: {}", reply.body["entry"][1]);
    assert!(statuses[2].starts_with("404"), "{statuses:?}");
    assert!(statuses[3].starts_with("404"), "{statuses:?}");
    assert!(statuses[4].starts_with("200"), "{statuses:?}");
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation("t1", "A", "vital-signs", "t"), "request": {"method": "POST", "url": "Observation"}},
        {"resource": update, "request": {"method": "PUT", "url": "Observation/B-vital"}},
    ]});
    let reply = server.send_json(Method::POST, "", &token, &transaction, &[]).await;
    reply.assert_outcome(404);
    let validate = server
        .send_json(
            Method::POST,
            "/Observation/B-vital/$validate",
            &token,
            &observation("B-vital", "B", "vital-signs", "v"),
            &[],
        )
        .await;
    validate.assert_outcome(404);

    assert_eq!(server.b_state().await, before, "patient B's resources are untouched");
    let own = server.token("system/*.rs", None);
    let transaction_wrote = server.get("/Observation?identifier=urn:test|t", &own).await;
    assert_eq!(ids(&transaction_wrote), Vec::<String>::new(), "the refused transaction wrote nothing");
}

#[tokio::test]
async fn a_granular_write_scope_creates_only_what_its_filter_selects() {
    let server = spawn().await;
    let token = server.token(&format!("patient/Observation.crus?category={VITAL}"), Some("A"));
    use reqwest::Method;
    let vital =
        server.send_json(Method::POST, "/Observation", &token, &observation("x", "A", "vital-signs", "g"), &[]).await;
    assert_eq!(vital.status, 201, "{}", vital.text);
    let lab =
        server.send_json(Method::POST, "/Observation", &token, &observation("x", "A", "laboratory", "g"), &[]).await;
    lab.assert_outcome(403);
    // A's lab result exists, but this token can neither see nor change it, even into a vital sign.
    let mut update = observation("A-lab", "A", "vital-signs", "g");
    update["id"] = json!("A-lab");
    server.send_json(Method::PUT, "/Observation/A-lab", &token, &update, &[]).await.assert_outcome(404);
    let mut lab_body = observation("A-lab", "A", "laboratory", "g");
    lab_body["id"] = json!("A-lab");
    server.send_json(Method::PUT, "/Observation/A-lab", &token, &lab_body, &[]).await.assert_outcome(403);
}

#[tokio::test]
async fn every_access_with_a_token_is_audited_and_the_patient_reads_the_trail_of_their_own_record() {
    let server = spawn().await;
    let patient_a = server.token("patient/*.rs", Some("A"));
    assert_eq!(server.get("/Observation/A-vital", &patient_a).await.status, 200);
    assert_eq!(server.get("/Observation/B-vital", &patient_a).await.status, 404);
    let system = server.token("system/*.rs", None);
    assert_eq!(server.get("/Observation/B-lab", &system).await.status, 200);

    // The trail is written in the background: wait for it.
    let mut events = Vec::new();
    for _ in 0..100 {
        let reply = server.get("/AuditEvent?patient=A&_count=100", &system).await;
        events = reply.body["entry"].as_array().cloned().unwrap_or_default();
        let read_of_a = events.iter().any(|e| {
            e["resource"]["subtype"][0]["code"] == "read"
                && e["resource"]["entity"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x["what"]["reference"] == "Observation/A-vital")
        });
        if read_of_a {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let event = events
        .iter()
        .map(|e| &e["resource"])
        .find(|e| e["subtype"][0]["code"] == "read" && e["outcome"] == "0")
        .unwrap_or_else(|| panic!("an audit event of A's read: {events:?}"));
    assert_eq!(event["action"], "R");
    let period = &event["period"];
    assert!(period["start"].as_str().unwrap() <= period["end"].as_str().unwrap(), "{period}");
    assert_eq!(period["end"], event["recorded"]);
    assert_eq!(event["agent"][0]["who"]["identifier"]["value"], "matrix");
    assert_eq!(event["agent"][1]["who"]["identifier"]["value"], "user-A");
    assert!(event["entity"].as_array().unwrap().iter().any(|x| x["what"]["reference"] == "Patient/A"));

    // The refused read is recorded too, with its outcome.
    let mut b_reads = Vec::new();
    for _ in 0..100 {
        let reply = server.get("/AuditEvent?patient=B&_count=100", &system).await;
        b_reads = reply.body["entry"].as_array().cloned().unwrap_or_default();
        if !b_reads.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        b_reads.iter().any(|e| e["resource"]["agent"][0]["who"]["identifier"]["value"] == "matrix"
            && e["resource"]["entity"]
                .as_array()
                .unwrap()
                .iter()
                .any(|x| x["what"]["reference"] == "Observation/B-lab")),
        "the system token's read of B's observation: {b_reads:?}"
    );

    // A's token reads the trail of A's record, not B's.
    let own = server.get("/AuditEvent?_count=100", &patient_a).await;
    assert_eq!(own.status, 200, "{}", own.text);
    let listed = own.body["entry"].as_array().cloned().unwrap_or_default();
    assert!(!listed.is_empty());
    assert!(!own.text.contains("B-lab"), "B's trail stays hidden: {}", own.text);
    assert!(!own.text.contains("Patient/B"), "whose B-vital is stays hidden: {}", own.text);
}

#[tokio::test]
async fn the_trail_is_read_only_to_patients_and_practitioners_whatever_their_scopes() {
    use reqwest::Method;
    let server = spawn().await;
    let system = server.token("system/*.cruds", None);
    let event = json!({"resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "recorded": "2026-01-01T00:00:00Z", "agent": [{"requestor": true}], "source": {"observer": {"display": "x"}},
        "entity": [{"what": {"reference": "Patient/A"}}]});
    let created = server.send_json(Method::POST, "/AuditEvent", &system, &event, &[]).await;
    assert_eq!(created.status, 201, "a backend service writes as its scopes allow: {}", created.text);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let path = format!("/AuditEvent/{id}");
    let before = server.get(&path, &system).await.text;

    let patient = server.token("patient/*.cruds", Some("A"));
    let practitioner = server.token("user/*.cruds", None);
    for (who, token) in [("patient", &patient), ("practitioner", &practitioner)] {
        let read = server.get(&path, token).await;
        assert_eq!(read.status, 200, "{who} reads the trail of A's record: {}", read.text);
        server.send_json(Method::POST, "/AuditEvent", token, &event, &[]).await.assert_outcome(403);
        let mut changed = event.clone();
        changed["id"] = json!(id);
        changed["outcome"] = json!("8");
        server.send_json(Method::PUT, &path, token, &changed, &[]).await.assert_outcome(403);
        let deleted = server.send_json(Method::DELETE, &path, token, &json!({}), &[]).await;
        deleted.assert_outcome(403);
        let bundle = json!({"resourceType": "Bundle", "type": "transaction",
            "entry": [{"request": {"method": "DELETE", "url": format!("AuditEvent/{id}")}}]});
        let transaction = server.send_json(Method::POST, "", token, &bundle, &[]).await;
        assert_ne!(transaction.status, 200, "{who}: a transaction cannot delete it either: {}", transaction.text);
    }
    assert_eq!(server.get(&path, &system).await.text, before, "the event is unchanged");
}
