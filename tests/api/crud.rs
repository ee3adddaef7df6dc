//! read, vread, create, update, delete.

use serde_json::json;

use crate::helpers::{patient, spawn_app, without_golden_link, without_meta};

#[actix_web::test]
async fn create_assigns_an_id_and_answers_with_location_etag_and_the_stored_resource() {
    let app = spawn_app().await;
    let sent = patient("Chalmers");
    let created = app.post("/Patient", &sent).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().expect("an id").to_owned();
    assert_eq!(created.body["meta"]["versionId"], "1");
    assert!(created.body["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));
    assert_eq!(created.header("etag"), Some("W/\"1\""));
    assert_eq!(created.header("location"), Some(app.url(&format!("/Patient/{id}/_history/1")).as_str()));
    assert!(created.header("last-modified").is_some());
    assert_eq!(created.header("content-type"), Some("application/fhir+json; charset=utf-8"));

    let mut expected = sent.clone();
    expected["id"] = json!(id);
    assert_eq!(without_meta(&created.body), expected);
    let read = app.get(&format!("/Patient/{id}")).await;
    assert_eq!(read.status, 200);
    assert_eq!(without_golden_link(&read.body), created.body);
    assert_eq!(read.header("etag"), Some("W/\"1\""));
}

#[actix_web::test]
async fn create_ignores_a_client_supplied_id() {
    let app = spawn_app().await;
    let mut sent = patient("Ignored");
    sent["id"] = json!("chosen-by-client");
    let created = app.post("/Patient", &sent).await;
    assert_eq!(created.status, 201);
    assert_ne!(created.body["id"], "chosen-by-client");
    assert_eq!(app.get("/Patient/chosen-by-client").await.status, 404);
}

#[actix_web::test]
async fn update_creates_a_new_version_and_vread_returns_each_version() {
    let app = spawn_app().await;
    let mut first = patient("Versioned");
    first["id"] = json!("p1");
    let created = app.put("/Patient/p1", &first).await;
    assert_eq!(created.status, 201, "update-as-create answers 201: {}", created.text);
    assert_eq!(created.header("location"), Some(app.url("/Patient/p1/_history/1").as_str()));

    let mut second = first.clone();
    second["gender"] = json!("female");
    let updated = app.put("/Patient/p1", &second).await;
    assert_eq!(updated.status, 200);
    assert_eq!(updated.body["meta"]["versionId"], "2");
    assert_eq!(updated.header("etag"), Some("W/\"2\""));

    let v1 = app.get("/Patient/p1/_history/1").await;
    assert_eq!(v1.status, 200);
    assert_eq!(without_meta(&v1.body), first);
    let v2 = app.get("/Patient/p1/_history/2").await;
    assert_eq!(without_meta(&v2.body), second);
    assert_eq!(without_golden_link(&app.get("/Patient/p1").await.body), v2.body);
    assert_eq!(app.get("/Patient/p1/_history/3").await.status, 404);
    assert_eq!(app.get("/Patient/p1/_history/zero").await.status, 404);
}

#[actix_web::test]
async fn an_update_with_unchanged_content_creates_no_version() {
    let app = spawn_app().await;
    let mut body = patient("Same");
    body["id"] = json!("same");
    app.put("/Patient/same", &body).await;
    let again = app.put("/Patient/same", &body).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.body["meta"]["versionId"], "1");
    assert_eq!(app.get("/Patient/same/_history").await.body["entry"].as_array().unwrap().len(), 1);
}

#[actix_web::test]
async fn meta_elements_from_the_client_are_kept_but_version_and_time_are_the_servers() {
    let app = spawn_app().await;
    let mut body = patient("Meta");
    body["meta"] =
        json!({"versionId": "99", "lastUpdated": "2001-01-01T00:00:00Z", "tag": [{"system": "http://t", "code": "x"}]});
    let created = app.post("/Patient", &body).await;
    assert_eq!(created.body["meta"]["versionId"], "1");
    assert_ne!(created.body["meta"]["lastUpdated"], "2001-01-01T00:00:00Z");
    assert_eq!(created.body["meta"]["tag"], json!([{"system": "http://t", "code": "x"}]));
}

#[actix_web::test]
async fn delete_leaves_a_tombstone_read_answers_410_and_old_versions_stay_readable() {
    let app = spawn_app().await;
    let mut body = patient("Deleted");
    body["id"] = json!("gone");
    app.put("/Patient/gone", &body).await;
    let deleted = app.delete("/Patient/gone").await;
    assert_eq!(deleted.status, 204);
    assert_eq!(deleted.header("etag"), Some("W/\"2\""));

    let read = app.get("/Patient/gone").await;
    read.assert_outcome(410);
    assert_eq!(read.body["issue"][0]["code"], "deleted");
    assert_eq!(app.get("/Patient/gone/_history/1").await.status, 200);
    app.get("/Patient/gone/_history/2").await.assert_outcome(410);

    // Deleting again, or deleting what never existed, changes nothing.
    assert_eq!(app.delete("/Patient/gone").await.status, 204);
    assert_eq!(app.delete("/Patient/never").await.status, 204);
    assert_eq!(app.get("/Patient/gone/_history").await.body["entry"].as_array().unwrap().len(), 2);

    // An update brings it back as a new version.
    let revived = app.put("/Patient/gone", &body).await;
    assert_eq!(revived.status, 201);
    assert_eq!(revived.body["meta"]["versionId"], "3");
}

#[actix_web::test]
async fn if_match_guards_updates_and_deletes() {
    let app = spawn_app().await;
    let mut body = patient("Guarded");
    body["id"] = json!("g");
    app.put("/Patient/g", &body).await;
    body["gender"] = json!("male");

    let stale =
        app.send(app.client.put(app.url("/Patient/g")).header("if-match", "W/\"7\"").body(body.to_string())).await;
    stale.assert_outcome(412);
    assert_eq!(app.get("/Patient/g").await.body["meta"]["versionId"], "1");

    let fresh =
        app.send(app.client.put(app.url("/Patient/g")).header("if-match", "W/\"1\"").body(body.to_string())).await;
    assert_eq!(fresh.status, 200, "{}", fresh.text);
    assert_eq!(fresh.body["gender"], "male");

    let bad =
        app.send(app.client.put(app.url("/Patient/g")).header("if-match", "version one").body(body.to_string())).await;
    bad.assert_outcome(400);

    app.send(app.client.delete(app.url("/Patient/g")).header("if-match", "W/\"1\"")).await.assert_outcome(412);
    assert_eq!(app.get("/Patient/g").await.status, 200);
    assert_eq!(app.send(app.client.delete(app.url("/Patient/g")).header("if-match", "W/\"2\"")).await.status, 204);
}

#[actix_web::test]
async fn if_none_match_star_only_creates() {
    let app = spawn_app().await;
    let mut body = patient("Once");
    body["id"] = json!("once");
    let first =
        app.send(app.client.put(app.url("/Patient/once")).header("if-none-match", "*").body(body.to_string())).await;
    assert_eq!(first.status, 201);
    body["gender"] = json!("other");
    let second =
        app.send(app.client.put(app.url("/Patient/once")).header("if-none-match", "*").body(body.to_string())).await;
    second.assert_outcome(412);
    assert!(app.get("/Patient/once").await.body.get("gender").is_none());
}

#[actix_web::test]
async fn prefer_chooses_what_a_write_returns() {
    let app = spawn_app().await;
    let minimal = app
        .send(app.client.post(app.url("/Patient")).header("prefer", "return=minimal").body(patient("Min").to_string()))
        .await;
    assert_eq!(minimal.status, 201);
    assert!(minimal.text.is_empty());
    assert!(minimal.header("location").is_some());

    let outcome = app
        .send(
            app.client
                .post(app.url("/Patient"))
                .header("prefer", "return=OperationOutcome")
                .body(patient("Oo").to_string()),
        )
        .await;
    assert_eq!(outcome.status, 201);
    assert_eq!(outcome.body["resourceType"], "OperationOutcome");
    assert_eq!(outcome.body["issue"][0]["severity"], "information");
    assert!(outcome.body["issue"][0]["diagnostics"].as_str().unwrap().starts_with("created Patient/"));

    let representation = app
        .send(
            app.client
                .post(app.url("/Patient"))
                .header("prefer", "return=representation")
                .body(patient("Rep").to_string()),
        )
        .await;
    assert_eq!(representation.body["name"][0]["family"], "Rep");

    let deleted =
        app.send(app.client.delete(app.url("/Patient/whatever")).header("prefer", "return=OperationOutcome")).await;
    assert_eq!(deleted.status, 200);
    assert_eq!(deleted.body["resourceType"], "OperationOutcome");
}

#[actix_web::test]
async fn reads_of_missing_resources_are_404_operation_outcomes() {
    let app = spawn_app().await;
    let missing = app.get("/Patient/nobody").await;
    missing.assert_outcome(404);
    assert_eq!(missing.body["issue"][0]["code"], "not-found");
}

#[actix_web::test]
async fn any_r4_resource_type_can_be_stored() {
    let app = spawn_app().await;
    let created = app.post("/Basic", &json!({"resourceType": "Basic", "code": {"text": "anything"}})).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().unwrap();
    assert_eq!(app.get(&format!("/Basic/{id}")).await.body["code"]["text"], "anything");
}

#[actix_web::test]
async fn json_numbers_and_key_order_are_stored_as_sent() {
    let app = spawn_app().await;
    let text = r#"{"resourceType":"Observation","id":"n","status":"final","code":{"text":"x"},"valueQuantity":{"value":5.10,"unit":"mg"}}"#;
    let reply = app.send(app.client.put(app.url("/Observation/n")).body(text)).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    let read = app.get("/Observation/n").await;
    assert!(read.text.contains(r#""valueQuantity":{"value":5.10,"unit":"mg"}"#), "{}", read.text);
    assert!(
        read.text.starts_with(r#"{"resourceType":"Observation","id":"n","meta":{"versionId":"1""#),
        "{}",
        read.text
    );
}

#[actix_web::test]
async fn every_response_carries_a_request_id() {
    let app = spawn_app().await;
    let reply = app.send(app.client.get(app.url("/metadata")).header("x-request-id", "trace-123")).await;
    assert_eq!(reply.header("x-request-id"), Some("trace-123"));
    let generated = app.get("/Patient/none").await;
    let first = generated.header("x-request-id").unwrap().to_owned();
    let second = app.get("/Patient/none").await.header("x-request-id").unwrap().to_owned();
    assert!(first.len() >= 18 && first != second, "ids are generated and distinct: {first} {second}");
}
