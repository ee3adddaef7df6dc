//! Transaction and batch bundles.

use serde_json::{Value, json};

use crate::helpers::{bundle_entry, patient, spawn_app};

fn observation_of(subject: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final", "code": {"text": "note"}, "subject": {"reference": subject}})
}

#[actix_web::test]
async fn a_transaction_resolves_urn_uuid_references_to_the_created_ids() {
    let app = spawn_app().await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        bundle_entry("POST", "Observation", Some(observation_of("urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a")), None),
        bundle_entry("POST", "Patient", Some(patient("Txn")), Some("urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a")),
    ]});
    for path in ["", "/"] {
        let reply = app.post(path, &bundle).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.body["type"], "transaction-response");
        let entries = reply.body["entry"].as_array().unwrap();
        assert_eq!(entries[0]["response"]["status"], "201 Created");
        let patient_id = entries[1]["resource"]["id"].as_str().unwrap();
        assert_eq!(entries[1]["response"]["location"], format!("Patient/{patient_id}/_history/1"));
        let observation_location = entries[0]["response"]["location"].as_str().unwrap();
        let stored = app.get(&format!("/{}", observation_location.split("/_history").next().unwrap())).await;
        assert_eq!(stored.body["subject"]["reference"], format!("Patient/{patient_id}"));
    }
}

#[actix_web::test]
async fn a_transaction_with_one_bad_entry_writes_nothing() {
    let app = spawn_app().await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        bundle_entry("POST", "Patient", Some(patient("Good")), None),
        bundle_entry("POST", "Patient", Some(json!({"resourceType": "Patient", "birthDate": "never"})), None),
    ]});
    let reply = app.post("", &bundle).await;
    reply.assert_outcome(400);
    assert!(reply.expressions().contains(&"Bundle.entry[1].resource.birthDate".to_owned()), "{}", reply.text);
    assert_eq!(app.history_len().await, 0);

    // A precondition failing inside the writer also rolls back the earlier entries.
    let mut existing = patient("Existing");
    existing["id"] = json!("e");
    app.put("/Patient/e", &existing).await;
    let conflicting = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        bundle_entry("POST", "Patient", Some(patient("Lost")), None),
        {"request": {"method": "PUT", "url": "Patient/e", "ifMatch": "W/\"9\""}, "resource": existing},
    ]});
    app.post("", &conflicting).await.assert_outcome(412);
    assert_eq!(app.history_len().await, 1);
}

#[actix_web::test]
async fn transaction_entries_can_use_conditional_references_and_if_none_exist() {
    let app = spawn_app().await;
    let mut known = patient("Known");
    known["identifier"] = json!([{"system": "http://mrn", "value": "77"}]);
    let created = app.post("/Patient", &known).await;
    let known_id = created.body["id"].as_str().unwrap();

    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=http://mrn|77"}, "resource": known},
        bundle_entry("POST", "Observation", Some(observation_of("Patient?identifier=http://mrn|77")), None),
    ]});
    let reply = app.post("", &bundle).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(reply.body["entry"][0]["resource"]["id"], known_id);
    assert_eq!(reply.body["entry"][1]["resource"]["subject"]["reference"], format!("Patient/{known_id}"));

    let unresolvable = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        bundle_entry("POST", "Observation", Some(observation_of("Patient?identifier=http://mrn|none")), None),
    ]});
    app.post("", &unresolvable).await.assert_outcome(412);
    let dangling = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        bundle_entry("POST", "Observation", Some(observation_of("urn:uuid:00000000-0000-0000-0000-000000000000")), None),
    ]});
    app.post("", &dangling).await.assert_outcome(400);
}

#[actix_web::test]
async fn transaction_processing_order_is_delete_post_put_get() {
    let app = spawn_app().await;
    let mut old = patient("Old");
    old["id"] = json!("old");
    app.put("/Patient/old", &old).await;
    let mut updated = patient("Updated");
    updated["id"] = json!("upd");
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        bundle_entry("GET", "Patient/upd", None, None),
        bundle_entry("PUT", "Patient/upd", Some(updated), None),
        bundle_entry("POST", "Patient", Some(patient("Posted")), None),
        bundle_entry("DELETE", "Patient/old", None, None),
    ]});
    let reply = app.post("", &bundle).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let entries = reply.body["entry"].as_array().unwrap();
    assert_eq!(entries[0]["response"]["status"], "200 OK", "the GET sees the PUT of the same transaction");
    assert_eq!(entries[0]["resource"]["name"][0]["family"], "Updated");
    assert_eq!(entries[1]["response"]["status"], "201 Created");
    assert_eq!(entries[3]["response"]["status"], "204 No Content");
    let history = app.get("/_history").await;
    let methods: Vec<&str> =
        history.body["entry"].as_array().unwrap().iter().map(|e| e["request"]["method"].as_str().unwrap()).collect();
    // Newest first: the PUT (as create) after the POST after the DELETE, then the initial PUT.
    assert_eq!(methods, vec!["POST", "POST", "DELETE", "POST"]);
    assert_eq!(history.body["entry"][0]["resource"]["id"], "upd");
}

#[actix_web::test]
async fn a_transaction_may_not_touch_one_resource_twice() {
    let app = spawn_app().await;
    let mut body = patient("Twice");
    body["id"] = json!("twice");
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        bundle_entry("PUT", "Patient/twice", Some(body.clone()), None),
        bundle_entry("DELETE", "Patient/twice", None, None),
    ]});
    let reply = app.post("", &bundle).await;
    reply.assert_outcome(400);
    assert_eq!(reply.body["issue"][0]["code"], "duplicate");
    assert_eq!(app.history_len().await, 0);
}

#[actix_web::test]
async fn a_batch_runs_entries_independently() {
    let app = spawn_app().await;
    let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        bundle_entry("POST", "Patient", Some(patient("One")), None),
        bundle_entry("POST", "Patient", Some(json!({"resourceType": "Patient", "gender": 3})), None),
        bundle_entry("GET", "Patient/missing", None, None),
        bundle_entry("PATCH", "Patient/x", None, None),
        bundle_entry("POST", "Patient", Some(patient("Two")), None),
    ]});
    let reply = app.post("", &bundle).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["type"], "batch-response");
    let statuses: Vec<&str> =
        reply.body["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["201 Created", "400 Bad Request", "404 Not Found", "400 Bad Request", "201 Created"]);
    let outcome = &reply.body["entry"][1]["response"]["outcome"];
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(outcome["issue"][0]["expression"][0], "Bundle.entry[1].resource.gender");
    assert_eq!(app.history_len().await, 2);
}

#[actix_web::test]
async fn a_stored_document_bundle_keeps_its_internal_references() {
    let app = spawn_app().await;
    let document = json!({"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "urn:uuid:a1b2c3d4-0000-0000-0000-000000000001", "resource": patient("Inside")},
        {"resource": observation_of("urn:uuid:a1b2c3d4-0000-0000-0000-000000000001")},
    ]});
    let created = app.post("/Bundle", &document).await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(
        created.body["entry"][1]["resource"]["subject"]["reference"],
        "urn:uuid:a1b2c3d4-0000-0000-0000-000000000001"
    );
}
