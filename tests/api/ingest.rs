//! Ingest: index entries prepared before the writer must equal what the writer alone would
//! index, and recovery after a crash must not need a full repair of the database file.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use braid::fhir::json::stamp;
use braid::fhir::reference::rewrite_resource_references;
use braid::fhir::{Id, ResourceType};
use braid::http::{Limits, Return, process_bundle};
use braid::search::SearchIndexer;
use braid::store::{Action, IndexEntry, Indexer, Precondition, Store, StoreOptions, Target, WriteRequest};
use serde_json::{Value, json};

const BASE: &str = "http://127.0.0.1:8080/fhir";

fn synthea_bundles() -> Vec<(PathBuf, Value)> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir("tests/data/synthea").unwrap().map(|entry| entry.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 12, "the Synthea sample bundles");
    files
        .into_iter()
        .map(|path| {
            let mut bundle: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
            bundle["type"] = json!("transaction");
            (path, bundle)
        })
        .collect()
}

fn as_set(entries: Vec<IndexEntry>) -> BTreeSet<(String, Vec<u8>)> {
    entries.into_iter().map(|entry| (entry.param, entry.value)).collect()
}

/// Every resource of every Synthea bundle, treated as the writer treats it (server ids,
/// `urn:uuid:` references rewritten, id and meta stamped): the entries prepared from the
/// resource as sent, completed in the writer, equal the entries of the stored version indexed
/// whole. And the prepared part is most of the work, or preparing would not pay.
#[test]
fn prepared_and_writer_indexing_agree_on_every_synthea_resource() {
    let (mut resources, mut prepared_total, mut all_total) = (0, 0, 0);
    for (path, bundle) in synthea_bundles() {
        let entries = bundle["entry"].as_array().unwrap();
        let assigned: HashMap<String, String> = entries
            .iter()
            .map(|entry| {
                let type_name = entry["resource"]["resourceType"].as_str().unwrap();
                (entry["fullUrl"].as_str().unwrap().to_owned(), format!("{type_name}/{}", Id::generate()))
            })
            .collect();
        for entry in entries {
            let sent = entry["resource"].clone();
            let resource_type = ResourceType::parse(sent["resourceType"].as_str().unwrap()).unwrap();
            let prepared = SearchIndexer.prepare(resource_type, &sent).expect("a resource of its stated type");

            let mut stored = sent.clone();
            rewrite_resource_references(&mut stored, &mut |text: &str| Ok::<_, ()>(assigned.get(text).cloned()))
                .unwrap();
            let id = assigned[entry["fullUrl"].as_str().unwrap()].split_once('/').unwrap().1.to_owned();
            let Value::Object(map) = stored else { unreachable!() };
            let stored =
                Value::Object(stamp(map, resource_type, &Id::parse(&id).unwrap(), 1, "2024-05-01T10:00:00.123456Z"));

            let whole = as_set(SearchIndexer.entries_on_base(resource_type, &stored, BASE));
            let completed = as_set(SearchIndexer.complete(resource_type, &stored, Some(BASE), &prepared));
            assert_eq!(completed, whole, "{}: {resource_type}/{id}", path.display());
            let without_base = as_set(SearchIndexer.complete(resource_type, &stored, None, &prepared));
            assert_eq!(without_base, as_set(SearchIndexer.entries(resource_type, &stored)));

            // The writer's part holds what only it knows: the id, lastUpdated, references.
            let writer_part: BTreeSet<_> = whole.difference(&as_set(prepared.clone())).cloned().collect();
            assert!(
                writer_part.contains(&("_id".to_owned(), braid::search::values::token_value(&id, ""))),
                "{writer_part:?}"
            );
            assert!(writer_part.iter().any(|(param, _)| param == "_lastUpdated"));
            assert!(prepared.iter().all(|entry| !matches!(entry.param.as_str(), "_id" | "_lastUpdated" | "subject")));
            resources += 1;
            prepared_total += prepared.len();
            all_total += whole.len();
        }
    }
    assert!(resources >= 1000, "{resources} resources compared");
    eprintln!("{resources} resources: {prepared_total} of {all_total} entries prepared");
    assert!(
        prepared_total * 2 > all_total,
        "only {prepared_total} of {all_total} entries are prepared off the writer thread"
    );
}

/// The Synthea bundles go through the transaction path (entries prepared, then completed in
/// the writer); the store's consistency check then recomputes every current version's entries
/// from its stored body with the whole indexer and finds every record and entry as expected.
#[actix_web::test]
async fn synthea_transactions_leave_indexes_equal_to_whole_indexing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir);
    let limits = Limits::from_settings(&braid::config::Settings::default());
    let mut written = 0;
    for (path, bundle) in synthea_bundles() {
        let body = serde_json::to_vec(&bundle).unwrap();
        let answer = process_bundle(
            &store,
            &limits,
            body.into(),
            BASE,
            Return::Minimal,
            &braid::auth::Access::Unrestricted,
            None,
        )
        .await;
        assert!(answer.is_ok(), "{}", path.display());
        written += bundle["entry"].as_array().unwrap().len() as u64;
    }
    let report = store.verify(&SearchIndexer).unwrap();
    assert!(report.is_consistent(), "{:?}", report.problems);
    assert_eq!(report.resources, written);
    assert!(report.live_entries > 10 * written, "{} live entries", report.live_entries);
}

/// Writes one resource with `quick_repair` as given, copies the database file while the store
/// still has it open (what a SIGKILL leaves: every commit synced, no clean close), and opens the
/// copy: true if redb had to run its full repair, which walks every table of the file.
async fn needs_full_repair_after_crash(dir: &Path, quick_repair: bool) -> bool {
    let path = dir.join(format!("braid-{quick_repair}.redb"));
    let options = StoreOptions { quick_repair, gc_interval: std::time::Duration::ZERO, ..StoreOptions::default() };
    let store = Store::open(&path, options, Arc::new(SearchIndexer)).unwrap();
    let Value::Object(resource) = json!({"resourceType": "Patient", "name": [{"family": "Crash"}]}) else {
        unreachable!()
    };
    store
        .write(WriteRequest::single(Action::Update {
            resource_type: ResourceType::parse("Patient").unwrap(),
            target: Target::Id(Id::parse("survivor").unwrap()),
            resource,
            precondition: Precondition::default(),
        }))
        .await
        .unwrap();
    let crashed = dir.join(format!("crashed-{quick_repair}.redb"));
    std::fs::copy(&path, &crashed).unwrap();
    drop(store);

    let repaired = Arc::new(AtomicBool::new(false));
    let flag = repaired.clone();
    let db = redb::Database::builder()
        .set_repair_callback(move |_| flag.store(true, Ordering::SeqCst))
        .open(&crashed)
        .expect("the crashed file opens");
    drop(db);
    // The acknowledged write survived either way.
    let store = Store::open(&crashed, StoreOptions::default(), Arc::new(SearchIndexer)).unwrap();
    let current = store.snapshot().unwrap().current(ResourceType::parse("Patient").unwrap(), "survivor").unwrap();
    assert_eq!(current.expect("the acknowledged write").version, 1);
    repaired.load(Ordering::SeqCst)
}

#[actix_web::test]
async fn with_quick_repair_a_crash_needs_no_full_repair() {
    let dir = tempfile::tempdir().unwrap();
    assert!(StoreOptions::default().quick_repair, "quick repair is the default");
    assert!(!needs_full_repair_after_crash(dir.path(), true).await, "the allocator state was recorded");
    assert!(needs_full_repair_after_crash(dir.path(), false).await, "without it redb walks the file");
}

fn patient_type() -> ResourceType {
    ResourceType::parse("Patient").unwrap()
}

fn object(value: Value) -> braid::fhir::Resource {
    let Value::Object(map) = value else { unreachable!("an object") };
    map
}

/// Requests submitted together are committed in one group, their index writes inserted once,
/// in key order, at the end. A conditional create later in the group must still see the
/// resource an earlier request of the group created: exactly one is created, every other
/// request finds it.
#[actix_web::test]
async fn conditional_creates_in_one_group_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir);
    let writes = (0..20).map(|n| {
        let store = store.clone();
        async move {
            let criteria = braid::search::parse_criteria(patient_type(), "identifier=urn:mrn|42").unwrap();
            let resource =
                object(json!({"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "42"}],
                "name": [{"family": format!("Writer{n}")}]}));
            let action = Action::Create { resource_type: patient_type(), resource, if_none_exist: Some(criteria) };
            store.write(WriteRequest::single(action)).await.unwrap().remove(0)
        }
    });
    let outcomes = futures_util::future::join_all(writes).await;
    let created: Vec<_> = outcomes.iter().filter(|o| o.kind == braid::store::OutcomeKind::Created).collect();
    let kinds: Vec<_> = outcomes.iter().map(|o| o.kind).collect();
    assert_eq!(created.len(), 1, "{kinds:?}");
    let id = created[0].id.clone().unwrap();
    assert!(outcomes.iter().all(|o| o.id.as_ref() == Some(&id)), "every request names the one created");
    let report = store.verify(&SearchIndexer).unwrap();
    assert!(report.is_consistent(), "{:?}", report.problems);
    assert_eq!(report.resources, 1);
}

/// Updates of one resource submitted together: each supersedes the version an earlier request
/// of the same group wrote, whose index entries are still waiting to be inserted.
#[actix_web::test]
async fn updates_in_one_group_supersede_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(&dir);
    let writes = (0..20).map(|n| {
        let store = store.clone();
        async move {
            let resource = object(json!({"resourceType": "Patient", "name": [{"family": format!("Version{n}")}]}));
            let action = Action::Update {
                resource_type: patient_type(),
                target: Target::Id(Id::parse("same").unwrap()),
                resource,
                precondition: Precondition::default(),
            };
            store.write(WriteRequest::single(action)).await.unwrap().remove(0)
        }
    });
    let mut versions: Vec<u64> =
        futures_util::future::join_all(writes).await.iter().map(|o| o.version.unwrap()).collect();
    versions.sort();
    assert_eq!(versions, (1..=20).collect::<Vec<u64>>());
    let report = store.verify(&SearchIndexer).unwrap();
    assert!(report.is_consistent(), "{:?}", report.problems);
    let current = store.snapshot().unwrap().current(patient_type(), "same").unwrap().unwrap();
    let body: Value = serde_json::from_slice(&current.body).unwrap();
    assert!(body["name"][0]["family"].as_str().unwrap().starts_with("Version"));
    assert_eq!(current.version, 20);
}

fn open_store(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("braid.redb"), StoreOptions::default(), Arc::new(SearchIndexer)).unwrap()
}
