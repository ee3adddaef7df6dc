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
    let app = spawn_app().await;
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
    let has_within_limit = app.get(&format!("/Patient?_has:Patient:link:gender=female")).await;
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
    fn entries(
        &self,
        resource_type: braid::fhir::ResourceType,
        resource: &Value,
    ) -> Vec<braid::store::IndexEntry> {
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
    let all = || braid::store::HistoryQuery { since_micros: None, count: 100, below: None };

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
