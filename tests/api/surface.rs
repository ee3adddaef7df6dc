//! The wider REST surface: PATCH, instance `$validate` with mode and profile, `_summary` and
//! `_elements` on reads, history `_at`, searches inside bundles, and `$everything`'s referenced
//! resources.

use serde_json::{Value, json};

use crate::helpers::{TestApp, patient, spawn_app};

async fn create(app: &TestApp, resource: &Value) -> String {
    let created = app.post(&format!("/{}", resource["resourceType"].as_str().unwrap()), resource).await;
    assert_eq!(created.status, 201, "{}", created.text);
    created.body["id"].as_str().unwrap().to_owned()
}

fn keys(value: &Value) -> Vec<&str> {
    value.as_object().map(|m| m.keys().map(String::as_str).collect()).unwrap_or_default()
}

fn subsetted(value: &Value) -> bool {
    value["meta"]["tag"].as_array().into_iter().flatten().any(|tag| tag["code"] == "SUBSETTED")
}

#[actix_web::test]
async fn read_and_vread_honour_summary_and_elements() {
    let app = spawn_app().await;
    let mut sent = patient("Summary");
    sent["text"] = json!({"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">S</div>"});
    sent["photo"] = json!([{"title": "portrait"}]);
    let id = create(&app, &sent).await;

    let summary = app.get(&format!("/Patient/{id}?_summary=true")).await;
    assert_eq!(summary.status, 200, "{}", summary.text);
    assert_eq!(summary.body["name"][0]["family"], "Summary");
    assert!(summary.body.get("photo").is_none() && summary.body.get("text").is_none(), "{}", summary.text);
    assert!(subsetted(&summary.body));
    assert_eq!(summary.header("etag"), Some("W/\"1\""));

    let elements = app.get(&format!("/Patient/{id}/_history/1?_elements=birthDate")).await;
    assert_eq!(elements.status, 200, "{}", elements.text);
    assert_eq!(keys(&elements.body), vec!["resourceType", "id", "meta", "birthDate"]);
    assert!(subsetted(&elements.body));

    let data = app.get(&format!("/Patient/{id}?_summary=data")).await;
    assert!(data.body.get("text").is_none() && data.body["photo"][0]["title"] == "portrait");

    let whole = app.get(&format!("/Patient/{id}")).await;
    assert!(!subsetted(&whole.body) && whole.body["photo"][0]["title"] == "portrait");

    let bad = app.get(&format!("/Patient/{id}?_summary=count")).await;
    bad.assert_outcome(400);
    assert_eq!(bad.expressions(), vec!["_summary"]);
}
