//! The storage format: a database written by the previous format (3) opens, is migrated and
//! answers as before; `braid migrate` reports what it did; damaged compressed bodies are errors
//! naming the version; no-op updates are detected by content hash.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use braid::search::SearchIndexer;
use braid::store::{Store, StoreOptions};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app, spawn_app_with, without_golden_link};

const VERSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("resource_version");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// A copy of the format 3 fixture database in `dir` (see tests/data/format3/README.md).
fn format_3_database(dir: &Path) -> PathBuf {
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/format3/braid.redb.zst");
    let bytes = zstd::decode_all(std::fs::read(fixture).unwrap().as_slice()).unwrap();
    let path = dir.join("format3.redb");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// What the format 3 release answered: `{"patient": id, "queries": {path: answer}}`.
fn recorded_answers() -> Value {
    let recorded = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/format3/answers.json.zst");
    serde_json::from_slice(&zstd::decode_all(std::fs::read(recorded).unwrap().as_slice()).unwrap()).unwrap()
}

fn format_version(path: &Path) -> u32 {
    let db = Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let meta = txn.open_table(META).unwrap();
    u32::from_be_bytes(meta.get("format_version").unwrap().unwrap().value().try_into().unwrap())
}

/// What an answer says, whatever server address and moment it was given at: a resource's exact
/// JSON text; a Bundle's type, total and, per entry, the `Type/id` of its fullUrl, its search
/// mode and its resource's exact JSON text. The refer link to a golden Patient is left out: the
/// master patient index adds it to a current Patient once it has matched it, which it does for
/// the migrated Patients while these queries run.
fn essence(answer: &Value) -> Value {
    if answer["resourceType"] != "Bundle" {
        return json!(without_golden_link(answer).to_string());
    }
    let entries: Vec<Value> = answer["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| {
            let full_url = entry["fullUrl"].as_str().unwrap_or_default();
            let relative = full_url.split_once("/fhir/").map_or(full_url, |(_, relative)| relative);
            json!([relative, entry["search"]["mode"], without_golden_link(&entry["resource"]).to_string()])
        })
        .collect();
    json!({"type": answer["type"], "total": answer["total"], "entries": entries})
}

#[actix_web::test]
async fn a_format_3_database_is_migrated_when_opened_and_answers_as_before() {
    let dir = tempfile::tempdir().unwrap();
    let path = format_3_database(dir.path());
    assert_eq!(format_version(&path), 3);
    let app = spawn_app_with(|s| s.data = path.clone()).await;

    let recorded = recorded_answers();
    let queries = recorded["queries"].as_object().unwrap();
    assert!(queries.len() >= 14);
    for (query, before) in queries {
        let now = app.get(query).await;
        assert_eq!(now.status, 200, "{query}: {}", now.text);
        assert_eq!(essence(&now.body), essence(before), "{query} answers differently after the migration");
    }
    // Non-trivial answers were compared: a 94-resource $everything, a deleted version's history.
    let patient = recorded["patient"].as_str().unwrap();
    let everything = &queries[&format!("/Patient/{patient}/$everything?_count=500")];
    assert_eq!(everything["entry"].as_array().unwrap().len(), 94);
    assert_eq!(queries["/Observation/example/_history"]["entry"].as_array().unwrap().len(), 2);

    // The migrated bodies carry content hashes: sending the current content again is a no-op,
    // a change is a new version.
    let current = app.get("/Patient/example").await.body;
    assert_eq!(current["meta"]["versionId"], "3");
    let same = app.put("/Patient/example", &current).await;
    assert_eq!(same.body["meta"]["versionId"], "3", "{}", same.text);
    let mut changed = current.clone();
    changed["birthDate"] = json!("1974-12-26");
    let updated = app.put("/Patient/example", &changed).await;
    assert_eq!(updated.body["meta"]["versionId"], "4", "{}", updated.text);
    assert_eq!(app.get("/Patient/example/_history").await.body["entry"].as_array().unwrap().len(), 4);
}

#[test]
fn braid_migrate_prints_progress_and_a_summary_and_refuses_a_newer_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = format_3_database(dir.path());
    let migrate = || Command::new(env!("CARGO_BIN_EXE_braid")).args(["migrate", "--data"]).arg(&path).output().unwrap();

    let first = migrate();
    assert!(first.status.success(), "{first:?}");
    let summary: Value = serde_json::from_slice(&first.stdout).unwrap();
    assert_eq!(summary["from_version"], 3);
    assert_eq!(summary["to_version"], braid::store::FORMAT_VERSION);
    assert_eq!(summary["versions_reindexed"], 224, "every indexed version was indexed again: {summary}");
    // 128 examples, 94 Synthea resources, two updates and a deletion (which has no body).
    assert_eq!(summary["versions"], 225);
    assert_eq!(summary["bodies_rewritten"], 224);
    let (before, after) = (summary["bytes_before"].as_u64().unwrap(), summary["bytes_after"].as_u64().unwrap());
    assert!(after * 3 < before, "bodies shrink to less than a third: {before} -> {after}");
    assert!(String::from_utf8_lossy(&first.stderr).contains("migrated 225 of 225 versions"), "{first:?}");
    assert_eq!(format_version(&path), braid::store::FORMAT_VERSION);

    let again = migrate();
    let summary: Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(
        (summary["from_version"].as_u64(), summary["versions"].as_u64()),
        (Some(u64::from(braid::store::FORMAT_VERSION)), Some(0))
    );

    // A file from a newer release is refused, by `migrate` as by `serve`, and left alone.
    {
        let db = Database::open(&path).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META).unwrap().insert("format_version", 99u32.to_be_bytes().as_slice()).unwrap();
        txn.commit().unwrap();
    }
    let refused = migrate();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    let expected = format!("format version 99, newer than this build reads ({})", braid::store::FORMAT_VERSION);
    assert!(message.contains(&expected), "{message}");
    assert_eq!(format_version(&path), 99);
}

/// Replaces the stored value of one version, on a database no server has open.
fn damage(path: &Path, key: &[u8], change: impl FnOnce(&mut Vec<u8>)) {
    let db = Database::open(path).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(VERSIONS).unwrap();
        let mut value = table.get(key).unwrap().expect("the version exists").value().to_vec();
        change(&mut value);
        table.insert(key, value.as_slice()).unwrap();
    }
    txn.commit().unwrap();
}

/// `resource_version` key of `type/id/_history/version`.
fn version_key(resource_type: &str, id: &str, version: u64) -> Vec<u8> {
    let mut key = Vec::new();
    for part in [resource_type, id] {
        key.extend_from_slice(part.as_bytes());
        key.push(0);
    }
    key.extend_from_slice(&version.to_be_bytes());
    key
}

#[actix_web::test]
async fn a_damaged_compressed_body_is_an_error_naming_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = format_3_database(dir.path());
    braid::store::migrate(&path, None, &SearchIndexer, &mut |_| {}).unwrap();
    // Truncate the current Patient/example; flip bytes inside the frame of Observation/body-height.
    damage(&path, &version_key("Patient", "example", 3), |value| value.truncate(value.len() - 40));
    damage(&path, &version_key("Observation", "body-height", 1), |value| {
        let middle = value.len() / 2;
        for byte in &mut value[middle..middle + 16] {
            *byte ^= 0xA5;
        }
    });

    // The consistency check names both, and goes on checking the rest.
    {
        let options = StoreOptions { gc_interval: Duration::ZERO, ..StoreOptions::default() };
        let store = Store::open(&path, options, Arc::new(SearchIndexer)).unwrap();
        let report = store.verify(&SearchIndexer).unwrap();
        let problems = report.problems.join("\n");
        assert!(problems.contains("Patient/example/_history/3: its stored body cannot be read"), "{problems}");
        assert!(problems.contains("Observation/body-height/_history/1: its stored body"), "{problems}");
        assert!(report.resources > 200);
        let finished = store.writer_finished();
        drop(store);
        while !finished() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    let app = spawn_app_with(|s| s.data = path.clone()).await;
    let read = app.get("/Patient/example").await;
    read.assert_outcome(500);
    let diagnostics = read.body["issue"][0]["diagnostics"].as_str().unwrap();
    assert!(diagnostics.contains("Patient/example/_history/3"), "{diagnostics}");
    assert!(!read.text.contains("Chalmers"), "no part of the body is returned: {}", read.text);
    // The older versions are intact.
    let older = app.get("/Patient/example/_history/2").await;
    assert_eq!((older.status, older.body["name"][0]["family"].as_str()), (200, Some("Chalmers")));

    let page = app.get("/Observation?code=http://loinc.org|8302-2").await;
    page.assert_outcome(500);
    assert!(page.text.contains("Observation/body-height/_history/1"), "{}", page.text);
    let history = app.get("/Observation/body-height/_history").await;
    history.assert_outcome(500);
    // A write over the damaged version still works (its hash is read, not its body).
    let replaced =
        app.put("/Patient/example", &json!({"resourceType": "Patient", "id": "example", "active": true})).await;
    assert_eq!(replaced.status, 200, "{}", replaced.text);
    assert_eq!(replaced.body["meta"]["versionId"], "4");
}

#[actix_web::test]
async fn an_update_with_the_same_content_creates_no_version_and_a_changed_one_does() {
    let app: TestApp = spawn_app().await;
    let original = json!({"resourceType": "Patient", "id": "p1", "active": true,
        "name": [{"family": "Nguyễn", "given": ["An"]}], "multipleBirthInteger": 2,
        "meta": {"profile": ["http://example.org/p"]}});
    assert_eq!(app.put("/Patient/p1", &original).await.status, 201);
    // The same content: keys in another order, server fields different, in `meta` and `id`.
    let reordered = json!({"name": [{"given": ["An"], "family": "Nguyễn"}], "multipleBirthInteger": 2,
        "meta": {"versionId": "7", "lastUpdated": "2020-01-01T00:00:00Z", "profile": ["http://example.org/p"]},
        "id": "p1", "active": true, "resourceType": "Patient"});
    let same = app.put("/Patient/p1", &reordered).await;
    assert_eq!(same.status, 200, "{}", same.text);
    assert_eq!(same.body["meta"]["versionId"], "1");
    // The answer is the stored version, with the client's original key order.
    assert_eq!(same.body["name"], json!([{"family": "Nguyễn", "given": ["An"]}]));

    // Each of these differs, and makes a new version.
    let changes = [
        json!({"resourceType": "Patient", "id": "p1", "active": true, "multipleBirthInteger": 2,
            "name": [{"family": "Nguyen", "given": ["An"]}], "meta": {"profile": ["http://example.org/p"]}}),
        json!({"resourceType": "Patient", "id": "p1", "active": true, "multipleBirthInteger": 2,
            "name": [{"family": "Nguyen", "given": ["An"]}]}),
        json!({"resourceType": "Patient", "id": "p1", "active": true, "multipleBirthInteger": 3,
            "name": [{"family": "Nguyen", "given": ["An"]}]}),
        json!({"resourceType": "Patient", "id": "p1", "active": true, "multipleBirthInteger": 3,
            "name": [{"given": ["An"], "family": "Nguyen"}, {"family": "X"}]}),
    ];
    for (index, change) in changes.iter().enumerate() {
        let reply = app.put("/Patient/p1", change).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(reply.body["meta"]["versionId"], (index + 2).to_string(), "change {index}: {}", reply.text);
        // Sending it again is a no-op.
        let again = app.put("/Patient/p1", change).await;
        assert_eq!(again.body["meta"]["versionId"], (index + 2).to_string());
    }
    let history = app.get("/Patient/p1/_history").await;
    assert_eq!(history.body["entry"].as_array().unwrap().len(), 5);

    // A version whose references the server rewrote (`urn:uuid:` in a transaction) is stored
    // with the hash of what it stores: sending the stored resource back is a no-op.
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0",
         "resource": {"resourceType": "Patient", "active": true}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "weight"},
            "subject": {"reference": "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0"}},
         "request": {"method": "PUT", "url": "Observation/o1"}}]});
    assert_eq!(app.post("", &transaction).await.status, 200);
    let stored = app.get("/Observation/o1").await.body;
    assert!(stored["subject"]["reference"].as_str().unwrap().starts_with("Patient/"), "{stored}");
    let again = app.put("/Observation/o1", &stored).await;
    assert_eq!((again.status, again.body["meta"]["versionId"].as_str()), (200, Some("1")), "{}", again.text);
}

/// `(type/id/version, body)` of every version in a database no server has open, newest first.
async fn every_version(path: &Path) -> Vec<(String, Vec<u8>)> {
    let options = StoreOptions { gc_interval: Duration::ZERO, ..StoreOptions::default() };
    let store = Store::open(path, options, Arc::new(SearchIndexer)).unwrap();
    let query =
        braid::store::HistoryQuery { since_micros: None, count: 10_000, below: None, at: None, max_scan: 10_000 };
    let page = store.snapshot().unwrap().system_history(query).unwrap();
    let versions =
        page.entries.into_iter().map(|v| (format!("{}/{}/{}", v.resource_type, v.id, v.version), v.body)).collect();
    let finished = store.writer_finished();
    drop(store);
    while !finished() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    versions
}

/// The dictionary id of a stored version's body (`None` unless it is compressed).
fn dictionary_of(path: &Path, key: &[u8]) -> Option<u32> {
    let db = Database::open(path).unwrap();
    let txn = db.begin_read().unwrap();
    let table = txn.open_table(VERSIONS).unwrap();
    let value = table.get(key).unwrap().unwrap().value().to_vec();
    // Header (17 bytes), codec 0x02, hash (16 bytes), dictionary id.
    (value.get(17) == Some(&0x02)).then(|| u32::from_be_bytes(value[34..38].try_into().unwrap()))
}

#[actix_web::test]
async fn a_dictionary_trained_on_the_database_compresses_new_writes_and_old_bodies_still_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = format_3_database(dir.path());
    let train = || {
        Command::new(env!("CARGO_BIN_EXE_braid")).args(["dictionary", "train", "--data"]).arg(&path).output().unwrap()
    };
    let output = train();
    assert!(output.status.success(), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["previous_dictionary_id"], 1);
    assert_eq!(report["dictionary_id"], 2);
    assert_eq!(report["adopted"], true, "{report}");
    let (plain, before, after) = (
        report["plain_bytes"].as_u64().unwrap(),
        report["bytes_before"].as_u64().unwrap(),
        report["bytes_after"].as_u64().unwrap(),
    );
    assert!(after < before && before < plain, "{report}");
    assert!(report["training_bodies"].as_u64().unwrap() >= 100, "{report}");
    // Training migrated the file first: its bodies use the built-in dictionary.
    assert_eq!(format_version(&path), braid::store::FORMAT_VERSION);
    assert_eq!(dictionary_of(&path, &version_key("Patient", "example", 3)), Some(1));

    // A write compresses with the new dictionary.
    {
        let options = StoreOptions { gc_interval: Duration::ZERO, ..StoreOptions::default() };
        let store = Store::open(&path, options, Arc::new(SearchIndexer)).unwrap();
        let patient = braid::fhir::ResourceType::parse("Patient").unwrap();
        let current = store.snapshot().unwrap().current(patient, "example").unwrap().unwrap();
        let Value::Object(mut resource) = serde_json::from_slice(&current.body).unwrap() else { unreachable!() };
        resource.insert("gender".into(), json!("female"));
        let action = braid::store::Action::Update {
            resource_type: patient,
            target: braid::store::Target::Id(braid::fhir::Id::parse("example").unwrap()),
            resource,
            precondition: braid::store::Precondition::default(),
        };
        let outcome = store.write(braid::store::WriteRequest::single(action)).await.unwrap();
        assert_eq!(outcome[0].version, Some(4));
        let finished = store.writer_finished();
        drop(store);
        while !finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(dictionary_of(&path, &version_key("Patient", "example", 4)), Some(2));
    assert_eq!(dictionary_of(&path, &version_key("Patient", "example", 3)), Some(1));
    let before_recompression = every_version(&path).await;

    // Recompressing moves the older bodies to the new dictionary, once.
    let recompress = || {
        let output = Command::new(env!("CARGO_BIN_EXE_braid"))
            .args(["dictionary", "recompress", "--data"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice::<Value>(&output.stdout).unwrap()
    };
    let summary = recompress();
    // Every version but the deletion and the one already written with dictionary 2.
    assert_eq!(
        (summary["versions"].as_u64(), summary["bodies_rewritten"].as_u64()),
        (Some(226), Some(224)),
        "{summary}"
    );
    assert!(summary["bytes_after"].as_u64() < summary["bytes_before"].as_u64(), "{summary}");
    assert_eq!(summary["damaged"], json!([]));
    assert_eq!(dictionary_of(&path, &version_key("Patient", "example", 3)), Some(2));
    assert_eq!(recompress()["bodies_rewritten"], 0);
    assert_eq!(every_version(&path).await, before_recompression, "every version reads byte for byte as before");

    // Every version reads, as before.
    let app = spawn_app_with(|s| s.data = path.clone()).await;
    let old = app.get("/Patient/example/_history/3").await;
    assert_eq!((old.status, old.body["name"][0]["family"].as_str()), (200, Some("Chalmers")));
    assert_eq!(old.body.get("gender"), Some(&json!("other")));
    let new = app.get("/Patient/example").await;
    assert_eq!((new.body["meta"]["versionId"].as_str(), new.body["gender"].as_str()), (Some("4"), Some("female")));
    let page = app.get("/Patient?gender=female&_id=example").await;
    assert_eq!(without_golden_link(&page.body["entry"][0]["resource"]), without_golden_link(&new.body));

    // A database with too few bodies to learn from is refused with a reason, and keeps its
    // dictionary.
    let empty = dir.path().join("empty.redb");
    drop(Database::create(&empty).unwrap());
    let refused =
        Command::new(env!("CARGO_BIN_EXE_braid")).args(["dictionary", "train", "--data"]).arg(&empty).output().unwrap();
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("holds 0 resource bodies; at least 20 are needed"), "{message}");
}
