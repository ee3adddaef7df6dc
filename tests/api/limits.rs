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
