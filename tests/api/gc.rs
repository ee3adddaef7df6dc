//! Paging cursors expire, and the search index entries of superseded versions are removed once
//! no valid cursor can need them (`gc_interval_secs`, `cursor_ttl_secs`, `braid compact`).

use std::process::Command;
use std::time::Duration;

use braid::config::Settings;
use braid::startup::Application;
use serde_json::{Value, json};

use crate::helpers::{TestApp, match_ids, next_link, spawn_app_with, start_braid_process};

/// The matches' ids, sorted.
fn ids(body: &Value) -> Vec<String> {
    let mut ids = match_ids(body);
    ids.sort();
    ids
}

async fn put_patient(app: &TestApp, id: &str, family: &str) {
    let reply = app
        .put(&format!("/Patient/{id}"), &json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]}))
        .await;
    assert!(reply.status == 200 || reply.status == 201, "{}", reply.text);
}

#[actix_web::test]
async fn paging_links_expire_after_the_configured_lifetime() {
    let app = spawn_app_with(|s| s.cursor_ttl_secs = 1).await;
    for n in 0..5 {
        put_patient(&app, &format!("e{n}"), "Expiring").await;
    }
    let first = app.get("/Patient?family=Expiring&_count=2").await;
    let next = next_link(&first.body).expect("a next link");
    let fresh = app.send(app.client.get(&next)).await;
    assert_eq!(fresh.status, 200, "{}", fresh.text);
    assert_eq!(ids(&fresh.body).len(), 2);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale = app.send(app.client.get(&next)).await;
    stale.assert_outcome(410);
    assert!(stale.body["issue"][0]["diagnostics"].as_str().unwrap().contains("expired"), "{}", stale.text);
    // History links expire the same way.
    let history = app.get("/Patient/_history?_count=1").await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let stale_history = app.send(app.client.get(next_link(&history.body).expect("a history next link"))).await;
    stale_history.assert_outcome(410);
}

#[actix_web::test]
async fn superseded_index_entries_go_and_searches_and_history_stay_right() {
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        listen: "127.0.0.1:0".into(),
        data: dir.path().join("gc.redb"),
        workers: 2,
        cursor_ttl_secs: 0,
        gc_interval_secs: 0,
        auth: braid::config::AuthMode::Off,
        ..Settings::default()
    };
    let application = Application::build(&settings).await.unwrap();
    let store = application.store().clone();
    let app = TestApp::at(format!("http://127.0.0.1:{}/fhir", application.port()), dir);
    tokio::spawn(application.run_until_stopped());

    put_patient(&app, "kept", "Steady").await;
    let single_version = store.index_stats().unwrap();
    for round in 0..10 {
        put_patient(&app, "moving", &format!("Name{round}")).await;
    }
    put_patient(&app, "gone", "Deleted").await;
    assert_eq!(app.delete("/Patient/gone").await.status, 204);
    let before = store.index_stats().unwrap();
    assert_eq!(before.superseded_versions, 9 + 1, "nine updates and one deletion superseded a version");

    // Entries stay while a cursor could still need them (cursor_ttl 0 + a 2 s margin)...
    assert_eq!(store.collect_garbage().unwrap().versions, 0);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // ...and go after.
    let collected = store.collect_garbage().unwrap();
    assert_eq!(collected.versions, 10);
    let after = store.index_stats().unwrap();
    assert_eq!(after.superseded_versions, 0);
    assert_eq!(after.records, 2, "one index record per live resource: kept and moving");
    assert_eq!(after.entries, 2 * single_version.entries, "kept and moving have entries of the same shape");
    assert_eq!(before.entries - after.entries, collected.entries as u64);

    // Searches see only current values; history and vread keep every version.
    assert_eq!(ids(&app.get("/Patient?family=Name3").await.body), Vec::<String>::new());
    assert_eq!(ids(&app.get("/Patient?family=Name9").await.body), vec!["moving"]);
    assert_eq!(ids(&app.get("/Patient?family=Deleted").await.body), Vec::<String>::new());
    assert_eq!(ids(&app.get("/Patient").await.body), vec!["kept", "moving"]);
    let history = app.get("/Patient/moving/_history").await;
    assert_eq!(history.body["entry"].as_array().unwrap().len(), 10);
    let first = app.get("/Patient/moving/_history/1").await;
    assert_eq!(first.body["name"][0]["family"], "Name0");
}

#[actix_web::test]
async fn compact_reclaims_space_of_a_stopped_database_and_refuses_a_running_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("compact.redb");
    let braid = start_braid_process(&data, "info");
    let app = TestApp::at(format!("http://127.0.0.1:{}/fhir", braid.port), tempfile::tempdir().unwrap());
    for round in 0..200 {
        put_patient(&app, "busy", &format!("Family{round}-{}", "x".repeat(200))).await;
    }
    let refused = Command::new(env!("CARGO_BIN_EXE_braid")).args(["compact", "--data"]).arg(&data).output().unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("open in another process"), "{refused:?}");
    let mut child = braid.child;
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    child.wait().unwrap();

    tokio::time::sleep(Duration::from_millis(2100)).await;
    let before = std::fs::metadata(&data).unwrap().len();
    let output = Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["compact", "--data"])
        .arg(&data)
        .env("BRAID_CURSOR_TTL_SECS", "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("removed the index entries of 199 superseded versions"), "{stdout}");
    let after = std::fs::metadata(&data).unwrap().len();
    assert!(after < before, "the file shrinks: {before} -> {after} bytes");

    // The compacted database serves the current version and the whole history.
    let app = spawn_app_with(|s| s.data = data.clone()).await;
    let current = app.get("/Patient/busy").await;
    assert!(current.body["name"][0]["family"].as_str().unwrap().starts_with("Family199-"));
    assert_eq!(ids(&app.get("/Patient?family=Family199").await.body), vec!["busy"]);
    assert_eq!(ids(&app.get("/Patient?family=Family5-").await.body), Vec::<String>::new());
    let history = app.get("/Patient/busy/_history?_count=1000").await;
    assert_eq!(history.body["entry"].as_array().unwrap().len(), 200);
}
