//! Bounded work per search: the work budget, `_total=estimate` for the whole query, and
//! includes that say when they were cut.

use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_app_with};

/// `count` patients in one transaction; every third female, every fifth born in 1990.
async fn seed_patients(app: &TestApp, count: usize) {
    let entries: Vec<Value> = (0..count)
        .map(|n| {
            json!({"resource": {"resourceType": "Patient", "id": format!("b{n}"),
                "gender": if n % 3 == 0 { "female" } else { "male" },
                "birthDate": if n % 5 == 0 { "1990-01-01" } else { "1980-01-01" }},
                "request": {"method": "PUT", "url": format!("Patient/b{n}")}})
        })
        .collect();
    let reply = app.post("", &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

#[actix_web::test]
async fn a_search_over_its_work_budget_is_refused_as_too_costly() {
    let app = spawn_app_with(|s| s.search_work_budget = 300).await;
    seed_patients(&app, 600).await;
    // Within the budget: a selective search.
    let small = app.get("/Patient?_id=b3,b6&gender=female").await;
    assert_eq!(small.status, 200, "{}", small.text);
    assert_eq!(small.body["entry"].as_array().unwrap().len(), 2);
    // Counting 400 males with a second clause needs more than 300 units.
    let costly = app.get("/Patient?gender=male&birthdate=1980&_total=accurate").await;
    costly.assert_outcome(400);
    assert_eq!(costly.body["issue"][0]["code"], "too-costly");
    assert!(costly.body["issue"][0]["diagnostics"].as_str().unwrap().contains("more than 300 index entries"));
    // The server goes on serving.
    assert_eq!(app.get("/Patient/b1").await.status, 200);
}

#[actix_web::test]
async fn the_total_estimate_is_of_the_whole_query() {
    let app = spawn_app().await;
    seed_patients(&app, 600).await;
    let reply = app.get("/Patient?gender=female&birthdate=1990&_total=estimate&_count=1").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    // 40 match; the driver alone (200 females, or 120 born in 1990) would be the old answer.
    assert_eq!(reply.body["total"], 40);
    let explained = app.get("/Patient?gender=female&_explain=true&_count=1").await;
    let outcome =
        explained.body["entry"].as_array().unwrap().iter().find(|e| e["search"]["mode"] == "outcome").unwrap();
    assert!(outcome["resource"]["issue"][0]["diagnostics"].as_str().unwrap().contains("units of the work budget used"));
}

#[actix_web::test]
async fn revincludes_beyond_the_limit_are_cut_with_a_warning() {
    let app = spawn_app().await;
    put_patient_with_observations(&app, "popular", "ob", 1005).await;

    let page = app.get("/Patient?_id=popular&_revinclude=Observation:subject").await;
    let entries = page.body["entry"].as_array().unwrap();
    let included = entries.iter().filter(|e| e["search"]["mode"] == "include").count();
    assert_eq!(included, 1000);
    let outcome = entries.iter().find(|e| e["search"]["mode"] == "outcome").expect("a warning");
    assert_eq!(outcome["resource"]["issue"][0]["severity"], "warning");
    assert!(outcome["resource"]["issue"][0]["diagnostics"].as_str().unwrap().contains("more than 1000"));

    // Under the limit there is no warning.
    let page = app.get("/Observation?_id=ob1,ob2&_include=Observation:subject").await;
    let entries = page.body["entry"].as_array().unwrap();
    assert_eq!(entries.iter().filter(|e| e["search"]["mode"] == "include").count(), 1);
    assert!(entries.iter().all(|e| e["search"]["mode"] != "outcome"));
}

#[actix_web::test]
async fn everything_and_system_search_run_on_the_same_budget() {
    // Less than the 600 index entries a page of everything reads.
    let app = spawn_app_with(|s| s.search_work_budget = 400).await;
    put_patient_with_observations(&app, "busy", "e", 600).await;
    // A small page is within the budget...
    let page = app.get("/Patient/busy/$everything?_count=10").await;
    assert_eq!(page.status, 200, "{}", page.text);
    // ...a page of everything is not.
    let all = app.get("/Patient/busy/$everything?_count=1000").await;
    all.assert_outcome(400);
    assert_eq!(all.body["issue"][0]["code"], "too-costly");
    let system = app.get("/?_type=Observation&status=final&_count=1000").await;
    system.assert_outcome(400);
    assert_eq!(system.body["issue"][0]["code"], "too-costly");
}

/// Puts Patient `patient` and `count` Observations about it (ids `prefix0`, `prefix1`, ...) in
/// one transaction.
async fn put_patient_with_observations(app: &TestApp, patient: &str, prefix: &str, count: usize) {
    let mut entries = vec![json!({"resource": {"resourceType": "Patient", "id": patient},
        "request": {"method": "PUT", "url": format!("Patient/{patient}")}})];
    for n in 0..count {
        entries.push(
            json!({"resource": {"resourceType": "Observation", "id": format!("{prefix}{n}"), "status": "final",
            "code": {"text": "x"}, "subject": {"reference": format!("Patient/{patient}")}},
            "request": {"method": "PUT", "url": format!("Observation/{prefix}{n}")}}),
        );
    }
    let reply = app.post("", &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}
