//! Every official R4 example (tests/data/examples) round-trips: stored under its own id (PUT)
//! and under a new one (POST), and read back equal apart from `meta` (and the new id).

use serde_json::Value;

use crate::helpers::{spawn_app, without_meta};

#[actix_web::test]
async fn every_official_example_round_trips() {
    let app = spawn_app().await;
    let mut files: Vec<_> = std::fs::read_dir("tests/data/examples").unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 160);
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        let sent: Value = serde_json::from_str(&text).unwrap();
        let resource_type = sent["resourceType"].as_str().unwrap();
        let id = sent["id"].as_str().unwrap();
        let url = format!("/{resource_type}/{id}");
        // Sent as the original bytes, so that numbers keep their exact text.
        let reply = app
            .send(app.client.put(app.url(&url)).header("content-type", "application/fhir+json").body(text.clone()))
            .await;
        assert_eq!(reply.status, 201, "{}: {}", path.display(), reply.text);
        let read = app.get(&url).await;
        assert_eq!(read.status, 200, "{}", path.display());
        assert_eq!(without_meta(&read.body), without_meta(&sent), "{} changed on the way through", path.display());
        let mut sent_meta = sent.get("meta").cloned().unwrap_or(Value::Object(Default::default()));
        let mut read_meta = read.body["meta"].clone();
        for meta in [&mut sent_meta, &mut read_meta] {
            let map = meta.as_object_mut().unwrap();
            map.remove("versionId");
            map.remove("lastUpdated");
        }
        assert_eq!(read_meta, sent_meta, "{}: the client's meta elements are kept", path.display());

        // A plain create gives the example a new id and otherwise keeps it as sent.
        let created = app.send(app.client.post(app.url(&format!("/{resource_type}"))).body(text.clone())).await;
        assert_eq!(created.status, 201, "{}: {}", path.display(), created.text);
        let new_id = created.body["id"].as_str().unwrap();
        assert_ne!(new_id, id);
        let mut read = app.get(&format!("/{resource_type}/{new_id}")).await.body;
        read["id"] = sent["id"].clone();
        assert_eq!(without_meta(&read), without_meta(&sent), "{} changed when created by POST", path.display());
    }
}
