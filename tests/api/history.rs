//! History at instance, type and system level, with paging.

use serde_json::{Value, json};

use crate::helpers::{TestApp, next_link, patient, spawn_app};

fn entries(body: &Value) -> Vec<Value> {
    body["entry"].as_array().cloned().unwrap_or_default()
}

/// Follows `next` links to the end and returns every entry.
async fn all_pages(app: &TestApp, first: &str) -> (Vec<Value>, usize) {
    let mut reply = app.get(first).await;
    let mut all = Vec::new();
    let mut pages = 0;
    loop {
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.body["type"], "history");
        pages += 1;
        all.extend(entries(&reply.body));
        match next_link(&reply.body) {
            Some(url) => {
                assert!(url.starts_with(&app.base), "links are absolute: {url}");
                reply = app.send(app.client.get(url)).await;
            }
            None => return (all, pages),
        }
    }
}

#[actix_web::test]
async fn instance_history_lists_every_version_newest_first_with_request_and_response() {
    let app = spawn_app().await;
    let mut body = patient("Hist");
    body["id"] = json!("h");
    app.put("/Patient/h", &body).await;
    body["gender"] = json!("female");
    app.put("/Patient/h", &body).await;
    app.delete("/Patient/h").await;

    let reply = app.get("/Patient/h/_history").await;
    assert_eq!(reply.status, 200);
    let entries = entries(&reply.body);
    let methods: Vec<&str> = entries.iter().map(|e| e["request"]["method"].as_str().unwrap()).collect();
    assert_eq!(methods, vec!["DELETE", "PUT", "POST"]);
    let etags: Vec<&str> = entries.iter().map(|e| e["response"]["etag"].as_str().unwrap()).collect();
    assert_eq!(etags, vec!["W/\"3\"", "W/\"2\"", "W/\"1\""]);
    assert!(entries[0].get("resource").is_none(), "a deletion has no resource");
    assert_eq!(entries[1]["resource"]["gender"], "female");
    assert_eq!(entries[2]["response"]["status"], "201 Created");
    assert_eq!(entries[1]["fullUrl"], app.url("/Patient/h"));
    assert_eq!(app.get("/Patient/unknown/_history").await.status, 404);
}

#[actix_web::test]
async fn type_and_system_history_page_through_everything_exactly_once() {
    let app = spawn_app().await;
    for n in 0..23 {
        app.post("/Patient", &patient(&format!("P{n}"))).await;
        if n % 3 == 0 {
            app.post("/Basic", &json!({"resourceType": "Basic", "code": {"text": format!("b{n}")}})).await;
        }
    }
    let (patients, pages) = all_pages(&app, "/Patient/_history?_count=5").await;
    assert_eq!(pages, 5);
    let families: Vec<&str> = patients.iter().map(|e| e["resource"]["name"][0]["family"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..23).rev().map(|n| format!("P{n}")).collect();
    assert_eq!(families, expected);

    let (everything, _) = all_pages(&app, "/_history?_count=7").await;
    assert_eq!(everything.len(), 23 + 8);
    let basics = everything.iter().filter(|e| e["resource"]["resourceType"] == "Basic").count();
    assert_eq!(basics, 8);
}

#[actix_web::test]
async fn writes_between_pages_neither_duplicate_nor_drop_entries() {
    let app = spawn_app().await;
    for n in 0..10 {
        app.post("/Patient", &patient(&format!("Before{n}"))).await;
    }
    let first = app.get("/Patient/_history?_count=4").await;
    let mut seen: Vec<String> =
        entries(&first.body).iter().map(|e| e["resource"]["name"][0]["family"].as_str().unwrap().to_owned()).collect();
    for n in 0..5 {
        app.post("/Patient", &patient(&format!("During{n}"))).await;
    }
    let mut next = next_link(&first.body);
    while let Some(url) = next {
        let page = app.send(app.client.get(url)).await;
        seen.extend(
            entries(&page.body).iter().map(|e| e["resource"]["name"][0]["family"].as_str().unwrap().to_owned()),
        );
        next = next_link(&page.body);
    }
    let expected: Vec<String> = (0..10).rev().map(|n| format!("Before{n}")).collect();
    assert_eq!(seen, expected);
}

#[actix_web::test]
async fn since_limits_history_to_recent_versions() {
    let app = spawn_app().await;
    app.post("/Patient", &patient("Old")).await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let cutoff = app.post("/Patient", &patient("New")).await.body["meta"]["lastUpdated"].as_str().unwrap().to_owned();
    let reply = app.get(&format!("/Patient/_history?_since={cutoff}")).await;
    let listed = entries(&reply.body);
    let families: Vec<&str> = listed.iter().map(|e| e["resource"]["name"][0]["family"].as_str().unwrap()).collect();
    assert_eq!(families, vec!["New"]);
    let self_link = reply.body["link"][0]["url"].as_str().unwrap();
    assert!(self_link.contains("_since="), "the self link keeps the parameters: {self_link}");
    // The same instant with a time zone whose `+` the client did not escape.
    let offset = cutoff.replace('Z', "+00:00");
    let unescaped = app.get(&format!("/Patient/_history?_since={offset}")).await;
    assert_eq!(unescaped.status, 200, "{}", unescaped.text);
    assert_eq!(entries(&unescaped.body).len(), 1);
}

#[actix_web::test]
async fn a_cursor_from_one_history_is_refused_by_another() {
    let app = spawn_app().await;
    for n in 0..3 {
        app.post("/Patient", &patient(&format!("C{n}"))).await;
    }
    let first = app.get("/Patient/_history?_count=1").await;
    let next = next_link(&first.body).unwrap();
    let cursor = next.split("_cursor=").nth(1).unwrap();
    app.get(&format!("/Observation/_history?_count=1&_cursor={cursor}")).await.assert_outcome(400);
    assert_eq!(app.send(app.client.get(next)).await.status, 200);
}
