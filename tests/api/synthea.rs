//! Every Synthea bundle (tests/data/synthea) loads as a transaction, with every urn:uuid
//! reference rewritten to the id the server created.

use std::collections::HashMap;

use serde_json::{Value, json};

use crate::helpers::{references, spawn_app, without_golden_link};

#[actix_web::test]
async fn every_synthea_bundle_loads_as_a_transaction_with_references_rewritten() {
    let app = spawn_app().await;
    let mut files: Vec<_> = std::fs::read_dir("tests/data/synthea").unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 12);
    let mut total = 0;
    for path in files {
        let mut bundle: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        bundle["type"] = json!("transaction");
        let reply = app.post("", &bundle).await;
        assert_eq!(reply.status, 200, "{}: {}", path.display(), reply.text);
        let sent = bundle["entry"].as_array().unwrap();
        let answered = reply.body["entry"].as_array().unwrap();
        assert_eq!(answered.len(), sent.len());

        // Which created resource each fullUrl became.
        let mut created: HashMap<&str, String> = HashMap::new();
        for (request, response) in sent.iter().zip(answered) {
            assert_eq!(response["response"]["status"], "201 Created", "{}", path.display());
            let resource = &response["resource"];
            created.insert(
                request["fullUrl"].as_str().unwrap(),
                format!("{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap()),
            );
        }
        for (request, response) in sent.iter().zip(answered) {
            let location = response["resource"]["resourceType"].as_str().unwrap().to_owned()
                + "/"
                + response["resource"]["id"].as_str().unwrap();
            let stored = app.get(&format!("/{location}")).await;
            assert_eq!(stored.status, 200);
            let (mut before, mut after) = (Vec::new(), Vec::new());
            references(&request["resource"], &mut before);
            // A Patient the master patient index has matched shows a refer link to its golden
            // record: the index's, not the sender's, and added moments after the write.
            references(&without_golden_link(&stored.body), &mut after);
            assert_eq!(before.len(), after.len());
            for (original, rewritten) in before.iter().zip(&after) {
                if original.starts_with("urn:uuid:") {
                    assert_eq!(Some(rewritten), created.get(original.as_str()), "{original} in {location}");
                    assert_eq!(app.get(&format!("/{rewritten}")).await.status, 200, "{rewritten} exists");
                } else {
                    assert_eq!(original, rewritten, "non-bundle references are untouched");
                }
            }
            total += 1;
        }
    }
    assert_eq!(total, 1000);
}
