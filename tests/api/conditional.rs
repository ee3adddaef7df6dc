//! Conditional create, update and delete, including their atomicity under concurrency.

use serde_json::json;

use crate::helpers::{patient, spawn_app, spawn_app_with};

const MRN: &str = "http://hospital.example/mrn";

#[actix_web::test]
async fn conditional_create_creates_once_and_then_returns_the_match() {
    let app = spawn_app().await;
    let criteria = format!("identifier={MRN}|12345");
    let mut body = patient("12345");
    let first = app.create_if_none_exist("/Patient", criteria.as_str(), &body).await;
    assert_eq!(first.status, 201, "{}", first.text);
    body["gender"] = json!("female");
    let second = app.create_if_none_exist("/Patient", criteria.as_str(), &body).await;
    assert_eq!(second.status, 200, "{}", second.text);
    assert_eq!(second.body["id"], first.body["id"]);
    assert!(second.body.get("gender").is_none(), "the existing resource is returned unchanged");
    assert_eq!(app.history_len().await, 1);

    // Forms of the token that must also match: value only, and Type? prefix in the header.
    let by_value = app.create_if_none_exist("/Patient", "identifier=12345", &body).await;
    assert_eq!(by_value.status, 200);
    let prefixed = app.create_if_none_exist("/Patient", &format!("Patient?identifier={MRN}|12345"), &body).await;
    assert_eq!(prefixed.status, 200);
    let other_system = app.create_if_none_exist("/Patient", "identifier=http://other|12345", &body).await;
    assert_eq!(other_system.status, 201, "a different system is a different identifier");
}

#[actix_web::test]
async fn conditional_create_with_several_matches_fails_with_412() {
    let app = spawn_app().await;
    app.post("/Patient", &patient("Twin")).await;
    app.post("/Patient", &patient("Twin")).await;
    let reply = app.create_if_none_exist("/Patient", "identifier=Twin", &patient("Twin")).await;
    reply.assert_outcome(412);
    assert_eq!(reply.body["issue"][0]["code"], "multiple-matches");
    assert_eq!(app.history_len().await, 2);
}

#[actix_web::test]
async fn conditional_create_with_an_unknown_parameter_is_rejected() {
    let app = spawn_app().await;
    for criteria in ["colour=red", "family=Smith&colour=red", "_count=1", "birthdate=someday", "family:below=Sm"] {
        let reply = app.create_if_none_exist("/Patient", criteria, &patient("Smith")).await;
        reply.assert_outcome(400);
    }
    let reply = app.create_if_none_exist("/Patient", "colour=red", &patient("Smith")).await;
    assert!(reply.body["issue"][0]["diagnostics"].as_str().unwrap().contains("colour"));
    assert_eq!(app.history_len().await, 0);
}

#[actix_web::test]
async fn conditional_operations_accept_any_search_parameter() {
    let app = spawn_app_with(|settings| settings.conditional_delete_max = 10).await;
    let first = app.create_if_none_exist("/Patient", "family=Smith&birthdate=1980", &patient("Smith")).await;
    assert_eq!(first.status, 201);
    let again = app.create_if_none_exist("/Patient", "family=smi&birthdate=1980-02", &patient("Smith")).await;
    assert_eq!(again.status, 200, "string prefix and date precision match the stored patient");
    assert_eq!(again.body["id"], first.body["id"]);
    let other_year = app.create_if_none_exist("/Patient", "family=Smith&birthdate=1981", &patient("Smith")).await;
    assert_eq!(other_year.status, 201);
    assert_eq!(app.delete("/Patient?birthdate=1981").await.status, 204);
    assert_eq!(
        app.get(&format!("/Patient/{}", other_year.body["id"].as_str().unwrap())).await.status,
        200,
        "1981 matched nobody"
    );
    assert_eq!(app.delete("/Patient?family=smith").await.status, 204);
    assert_eq!(app.history_len().await, 4);
}

#[actix_web::test]
async fn sixty_four_parallel_conditional_creates_make_exactly_one_resource() {
    let app = spawn_app().await;
    let criteria = format!("identifier={MRN}|race");
    let requests = (0..64).map(|_| {
        let request = app
            .client
            .post(app.url("/Patient"))
            .header("content-type", "application/fhir+json")
            .header("if-none-exist", criteria.as_str())
            .body(patient("race").to_string());
        app.send(request)
    });
    let replies = futures_util::future::join_all(requests).await;
    let created: Vec<_> = replies.iter().filter(|r| r.status == 201).collect();
    assert_eq!(created.len(), 1, "exactly one create: {:?}", replies.iter().map(|r| r.status).collect::<Vec<_>>());
    let id = created[0].body["id"].as_str().unwrap();
    let existing: Vec<_> = replies.iter().filter(|r| r.status == 200).collect();
    assert_eq!(existing.len(), 63);
    assert!(existing.iter().all(|r| r.body["id"] == id), "all 63 others point at the one resource");
    assert_eq!(app.history_len().await, 1);
}

#[actix_web::test]
async fn conditional_update_creates_updates_or_refuses() {
    let app = spawn_app().await;
    let path = format!("/Patient?identifier={MRN}|cu");
    let created = app.put(&path, &patient("cu")).await;
    assert_eq!(created.status, 201, "no match: create: {}", created.text);
    let id = created.body["id"].as_str().unwrap().to_owned();

    let mut changed = patient("cu");
    changed["gender"] = json!("male");
    let updated = app.put(&path, &changed).await;
    assert_eq!(updated.status, 200);
    assert_eq!(updated.body["id"], id.as_str());
    assert_eq!(updated.body["meta"]["versionId"], "2");

    changed["id"] = json!("someone-else");
    app.put(&path, &changed).await.assert_outcome(400);

    // With no match and an id in the body, the client's id is used.
    let mut with_id = patient("fresh");
    with_id["id"] = json!("chosen");
    let chosen = app.put(&format!("/Patient?identifier={MRN}|fresh"), &with_id).await;
    assert_eq!(chosen.status, 201);
    assert_eq!(chosen.body["id"], "chosen");

    app.post("/Patient", &patient("cu")).await;
    app.put(&path, &patient("cu")).await.assert_outcome(412);
}

#[actix_web::test]
async fn conditional_delete_removes_every_match() {
    let app = spawn_app_with(|settings| settings.conditional_delete_max = 10).await;
    app.post("/Patient", &patient("dup")).await;
    app.post("/Patient", &patient("dup")).await;
    let keep = app.post("/Patient", &patient("keep")).await;
    let deleted = app.delete("/Patient?identifier=dup").await;
    assert_eq!(deleted.status, 204);
    let none_left = app.create_if_none_exist("/Patient", "identifier=dup", &patient("dup")).await;
    assert_eq!(none_left.status, 201, "the deleted resources no longer match");
    assert_eq!(app.get(&format!("/Patient/{}", keep.body["id"].as_str().unwrap())).await.status, 200);
    assert_eq!(app.delete("/Patient?identifier=nobody").await.status, 204);
}

#[actix_web::test]
async fn criteria_by_id_work_and_combine_with_identifier() {
    let app = spawn_app().await;
    let mut body = patient("byid");
    body["id"] = json!("byid");
    app.put("/Patient/byid", &body).await;
    let found = app.create_if_none_exist("/Patient", "_id=byid", &body).await;
    assert_eq!(found.status, 200);
    let both = app.create_if_none_exist("/Patient", "_id=byid&identifier=wrong", &body).await;
    assert_eq!(both.status, 201, "criteria are combined with AND");
}

#[actix_web::test]
async fn an_identifier_that_was_changed_away_no_longer_matches() {
    let app = spawn_app().await;
    let mut body = patient("before");
    body["id"] = json!("moving");
    app.put("/Patient/moving", &body).await;
    body["identifier"] = json!([{"system": MRN, "value": "after"}]);
    app.put("/Patient/moving", &body).await;

    let old = app.create_if_none_exist("/Patient", &format!("identifier={MRN}|before"), &patient("before")).await;
    assert_eq!(old.status, 201, "version 1's identifier must not match once version 2 is current");
    let new = app.create_if_none_exist("/Patient", &format!("identifier={MRN}|after"), &patient("after")).await;
    assert_eq!(new.status, 200);
    assert_eq!(new.body["id"], "moving");
}
