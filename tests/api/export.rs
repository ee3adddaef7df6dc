//! Bulk Data `$export`: the asynchronous kick-off, polling, the manifest and its NDJSON files,
//! `_since` and `_type`, the Patient and Group levels, what a limited token may export, files
//! that only the requesting client reads, and cancelling.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{Reply, TestApp, spawn_app, spawn_auth_app};

/// A GET with `Prefer: respond-async` (and a token, if given).
async fn kick_off(app: &TestApp, path: &str, token: Option<&str>) -> Reply {
    let mut request = app.client.get(app.url(path)).header("prefer", "respond-async");
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    app.send(request).await
}

async fn get(app: &TestApp, url: &str, token: Option<&str>) -> Reply {
    let mut request = app.client.get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    app.send(request).await
}

/// Polls the status URL until the export completes; returns the manifest.
async fn manifest(app: &TestApp, status_url: &str, token: Option<&str>) -> Value {
    for _ in 0..200 {
        let reply = get(app, status_url, token).await;
        match reply.status {
            202 => {
                assert_eq!(reply.header("retry-after"), Some("2"));
                assert!(reply.header("x-progress").is_some_and(|p| p.contains("resources exported")));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            200 => return reply.body,
            other => panic!("status {other}: {}", reply.text),
        }
    }
    panic!("the export did not complete in time");
}

/// Kicks off `path`, waits for it and returns `(type, id) -> resource` for every line of every
/// file, asserting that no resource appears twice.
async fn export(app: &TestApp, path: &str, token: Option<&str>) -> BTreeMap<(String, String), Value> {
    export_with_manifest(app, path, token).await.0
}

/// [`export`], and the manifest. Every resource exported was last updated at or before the
/// manifest's `transactionTime`.
pub async fn export_with_manifest(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
) -> (BTreeMap<(String, String), Value>, Value) {
    let reply = kick_off(app, path, token).await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let status_url = reply.header("content-location").expect("a status URL").to_owned();
    let manifest = manifest(app, &status_url, token).await;
    assert_eq!(manifest["requiresAccessToken"], token.is_some());
    assert!(manifest["request"].as_str().unwrap().ends_with(path), "{manifest}");
    assert!(manifest["transactionTime"].as_str().is_some());
    let mut exported = BTreeMap::new();
    for output in manifest["output"].as_array().unwrap() {
        let mut request = app.client.get(output["url"].as_str().unwrap()).header("accept", "application/fhir+ndjson");
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let file = app.send(request).await;
        assert_eq!(file.status, 200);
        assert_eq!(file.header("content-type"), Some("application/fhir+ndjson"));
        let lines: Vec<&str> = file.text.lines().collect();
        assert_eq!(lines.len() as u64, output["count"].as_u64().unwrap());
        for line in lines {
            let resource: Value = serde_json::from_str(line).unwrap();
            assert_eq!(resource["resourceType"], output["type"]);
            let key =
                (resource["resourceType"].as_str().unwrap().to_owned(), resource["id"].as_str().unwrap().to_owned());
            let updated = resource["meta"]["lastUpdated"].as_str().unwrap();
            assert!(updated <= manifest["transactionTime"].as_str().unwrap(), "{key:?} after the transaction time");
            assert!(exported.insert(key.clone(), resource).is_none(), "{key:?} exported twice");
        }
    }
    (exported, manifest)
}

/// Every live `(type, id)` of `types`, by search.
async fn searched(app: &TestApp, types: &[&str], token: Option<&str>) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for type_name in types {
        let reply = get(app, &app.url(&format!("/{type_name}?_count=1000&_elements=id")), token).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        for entry in reply.body["entry"].as_array().into_iter().flatten() {
            found.insert((type_name.to_string(), entry["resource"]["id"].as_str().unwrap().to_owned()));
        }
    }
    found
}

fn observation(id: &str, patient: &str, code: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
           "subject": {"reference": format!("Patient/{patient}")}})
}

async fn put(app: &TestApp, resource: &Value, token: Option<&str>) {
    let path = format!("/{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
    let mut request =
        app.client.put(app.url(&path)).header("content-type", "application/fhir+json").body(resource.to_string());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let reply = app.send(request).await;
    assert!(reply.status == 200 || reply.status == 201, "{}", reply.text);
}

/// An export's resources as `Type/id`, in order.
fn type_ids(exported: &BTreeMap<(String, String), Value>) -> Vec<String> {
    exported.keys().map(|(resource_type, id)| format!("{resource_type}/{id}")).collect()
}

#[tokio::test]
async fn an_export_writes_every_current_resource_once_with_since_type_and_cancel() {
    let app = spawn_app().await;
    for n in 0..30 {
        put(
            &app,
            &json!({"resourceType": "Patient", "id": format!("p{n}"), "name": [{"family": format!("F{n}")}]}),
            None,
        )
        .await;
        put(&app, &observation(&format!("o{n}"), &format!("p{n}"), "8867-4"), None).await;
    }
    put(&app, &json!({"resourceType": "Organization", "id": "org", "name": "Org"}), None).await;
    // A deleted resource is not exported; an updated one is, as its current version.
    assert_eq!(app.delete("/Observation/o3").await.status, 204);
    put(&app, &json!({"resourceType": "Patient", "id": "p4", "name": [{"family": "Renamed"}]}), None).await;

    let (exported, summary) = export_with_manifest(&app, "/$export", None).await;
    // The transaction time is the instant of the newest version the export holds.
    let newest = exported.values().filter_map(|resource| resource["meta"]["lastUpdated"].as_str()).max().unwrap();
    assert_eq!(summary["transactionTime"], newest);
    let ids: BTreeSet<(String, String)> = exported.keys().cloned().collect();
    assert_eq!(ids, searched(&app, &["Patient", "Observation", "Organization"], None).await);
    assert_eq!(ids.len(), 30 + 29 + 1);
    assert_eq!(exported[&("Patient".into(), "p4".into())]["name"][0]["family"], "Renamed");
    assert_eq!(exported[&("Patient".into(), "p4".into())]["meta"]["versionId"], "2");

    // _type, and _since: only what changed after the instant.
    let only = export(&app, "/$export?_type=Organization,Patient", None).await;
    assert_eq!(only.keys().filter(|(t, _)| t == "Patient").count(), 30);
    assert!(only.keys().all(|(t, _)| t == "Patient" || t == "Organization"));
    assert_eq!(only.len(), 31);
    assert!(only.contains_key(&("Organization".to_owned(), "org".to_owned())));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64;
    let since = braid::fhir::json::format_instant(now);
    tokio::time::sleep(Duration::from_millis(20)).await;
    put(&app, &json!({"resourceType": "Patient", "id": "p5", "name": [{"family": "Later"}]}), None).await;
    let later = export(&app, &format!("/$export?_since={}", since.replace('+', "%2B")), None).await;
    assert_eq!(later.keys().cloned().collect::<Vec<_>>(), [("Patient".to_owned(), "p5".to_owned())]);
    // As clients write them, unescaped: a `+` in a time zone or the media type arrives as a space.
    let offset = since.replace('Z', "+00:00");
    let unescaped =
        export(&app, &format!("/$export?_outputFormat=application/fhir+ndjson&_since={offset}"), None).await;
    assert_eq!(unescaped.keys().cloned().collect::<Vec<_>>(), [("Patient".to_owned(), "p5".to_owned())]);
    let patient_level = export(&app, "/Patient/$export", None).await;
    assert!(patient_level.keys().all(|(t, _)| t != "Organization"), "the Patient level leaves shared data out");
    assert_eq!(patient_level.len(), 30 + 29);

    // A POST kick-off with a Parameters resource, and `patient` to limit a Patient export.
    let post = |path: &str, parameters: Value| {
        app.send(
            app.client
                .post(app.url(path))
                .header("prefer", "respond-async")
                .header("content-type", "application/fhir+json")
                .body(json!({"resourceType": "Parameters", "parameter": parameters}).to_string()),
        )
    };
    let reply = post(
        "/Patient/$export",
        json!([{"name": "_outputFormat", "valueString": "application/fhir+ndjson"},
               {"name": "_type", "valueString": "Patient,Observation"},
               {"name": "patient", "valueReference": {"reference": "Patient/p1"}},
               {"name": "patient", "valueReference": {"reference": "Patient/p2"}}]),
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.text);
    let done = manifest(&app, reply.header("content-location").unwrap(), None).await;
    let mut ids = Vec::new();
    for output in done["output"].as_array().unwrap() {
        let file = get(&app, output["url"].as_str().unwrap(), None).await;
        ids.extend(
            file.text
                .lines()
                .map(|line| serde_json::from_str::<Value>(line).unwrap()["id"].as_str().unwrap().to_owned()),
        );
    }
    ids.sort();
    assert_eq!(ids, ["o1", "o2", "p1", "p2"]);
    post("/$export", json!([{"name": "patient", "valueReference": {"reference": "Patient/p1"}}]))
        .await
        .assert_outcome(400);
    post("/$export", json!([{"name": "_type", "valueInteger": 3}])).await.assert_outcome(400);
    let not_parameters = app
        .send(
            app.client
                .post(app.url("/$export"))
                .header("prefer", "respond-async")
                .header("content-type", "application/fhir+json")
                .body(json!({"resourceType": "Patient"}).to_string()),
        )
        .await;
    not_parameters.assert_outcome(400);
    // A POST without a body takes the query's parameters.
    let bodiless = app.send(app.client.post(app.url("/$export?_type=Patient")).header("prefer", "respond-async")).await;
    assert_eq!(bodiless.status, 202, "{}", bodiless.text);
    let done = manifest(&app, bodiless.header("content-location").unwrap(), None).await;
    let types: Vec<&str> = done["output"].as_array().unwrap().iter().map(|o| o["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["Patient"], "{done}");

    // Refusals, each with its reason and nothing started.
    let reply = app.send(app.client.get(app.url("/$export"))).await;
    reply.assert_outcome(400);
    assert!(reply.text.contains("respond-async"), "{}", reply.text);
    for (path, status, words) in [
        ("/$export?_outputFormat=text/csv", 400, "_outputFormat"),
        ("/$export?_since=yesterday", 400, "_since"),
        ("/$export?_type=Nope", 400, "Nope"),
        ("/$export?_type=", 400, "_type names no resource type"),
        ("/$export?_type=,", 400, "_type names no resource type"),
        ("/$export?_since=2026-11-28T01:00:00", 400, "needs its zone"),
        ("/$export?_elements=id", 400, "_elements"),
        ("/Patient/$export?_type=Organization", 400, "Patient compartment"),
        ("/Observation/$export", 404, "Patient and Group"),
        ("/Group/none/$export", 404, "Group/none"),
    ] {
        let reply = kick_off(&app, path, None).await;
        reply.assert_outcome(status);
        assert!(reply.text.contains(words), "{path}: {}", reply.text);
    }
    let lenient = app
        .send(app.client.get(app.url("/$export?_elements=id")).header("prefer", "respond-async, handling=lenient"))
        .await;
    assert_eq!(lenient.status, 202, "{}", lenient.text);

    // Cancel: the job and its files are gone.
    let status_url = lenient.header("content-location").unwrap().to_owned();
    let done = manifest(&app, &status_url, None).await;
    let file_url = done["output"][0]["url"].as_str().unwrap().to_owned();
    // A name the manifest does not list is refused as such, not as a missing export.
    let (folder, _) = file_url.rsplit_once('/').unwrap();
    let unlisted = get(&app, &format!("{folder}/Patient-99.ndjson"), None).await;
    unlisted.assert_outcome(404);
    assert!(unlisted.text.contains("has no file 'Patient-99.ndjson'"), "{}", unlisted.text);
    let cancelled = app.send(app.client.delete(&status_url)).await;
    assert_eq!(cancelled.status, 202);
    get(&app, &status_url, None).await.assert_outcome(404);
    get(&app, &file_url, None).await.assert_outcome(404);
    app.send(app.client.delete(&status_url)).await.assert_outcome(404);
    // The jobs kept are bounded, but finished ones make room: a client that downloads and never
    // cancels can go on exporting, and its oldest finished exports are deleted.
    let per_requester = braid::sources::export::MAX_JOBS_PER_REQUESTER;
    let mut status_urls = Vec::new();
    for _ in 0..per_requester + 2 {
        let reply = kick_off(&app, "/$export?_type=Organization", None).await;
        assert_eq!(reply.status, 202, "{}", reply.text);
        let status_url = reply.header("content-location").unwrap().to_owned();
        manifest(&app, &status_url, None).await;
        status_urls.push(status_url);
    }
    for gone in &status_urls[..2] {
        get(&app, gone, None).await.assert_outcome(404);
    }
    for kept in &status_urls[2..] {
        assert_eq!(get(&app, kept, None).await.status, 200, "{kept}");
    }
    let metadata = app.get("/metadata").await.body;
    let names: Vec<&str> =
        metadata["rest"][0]["operation"].as_array().unwrap().iter().filter_map(|op| op["name"].as_str()).collect();
    assert_eq!(names[..3], ["export", "patient-export", "group-export"], "{names:?}");
    assert_eq!(metadata["instantiates"][0], "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data");
}

#[tokio::test]
async fn a_limited_token_exports_only_what_it_may_read_and_the_files_are_its_clients_only() {
    let server = spawn_auth_app().await;
    let app = &server.app;
    let everything = server.token("operator", "system/*.cruds", None);
    for patient in ["p1", "p2"] {
        put(app, &json!({"resourceType": "Patient", "id": patient}), Some(&everything)).await;
        for n in 0..3 {
            let code = if n == 0 { "8867-4" } else { "2708-6" };
            put(app, &observation(&format!("{patient}-o{n}"), patient, code), Some(&everything)).await;
        }
    }
    put(
        app,
        &json!({"resourceType": "Group", "id": "g", "type": "person", "actual": true,
        "member": [{"entity": {"reference": "Patient/p2"}}]}),
        Some(&everything),
    )
    .await;

    // A patient's token: its own compartment, nothing of the other patient.
    let p1 = server.token("app", "patient/*.rs", Some("p1"));
    let mine = export(app, "/Patient/$export", Some(&p1)).await;
    let keys: Vec<(String, String)> = mine.keys().cloned().collect();
    assert_eq!(
        keys,
        [("Observation", "p1-o0"), ("Observation", "p1-o1"), ("Observation", "p1-o2"), ("Patient", "p1")]
            .map(|(t, id)| (t.to_owned(), id.to_owned()))
    );
    let system_level = export(app, "/$export", Some(&p1)).await;
    assert!(system_level.keys().all(|(_, id)| id.starts_with("p1")), "{:?}", system_level.keys());
    assert!(keys.iter().all(|key| system_level.contains_key(key)), "all of p1's record: {:?}", system_level.keys());

    // A granular scope: only what its filter selects.
    let heart_rates = server.token("lab", "system/Observation.rs?code=http://loinc.org|8867-4", None);
    let filtered = export(app, "/$export?_type=Observation", Some(&heart_rates)).await;
    assert_eq!(filtered.keys().map(|(_, id)| id.as_str()).collect::<Vec<_>>(), ["p1-o0", "p2-o0"]);
    kick_off(app, "/$export?_type=Patient", Some(&heart_rates)).await.assert_outcome(403);

    // A Group: its members' compartments.
    let group = export(app, "/Group/g/$export", Some(&everything)).await;
    // The Group itself is in its member's compartment (Group.member).
    assert_eq!(group.len(), 5, "{:?}", group.keys());
    assert!(group.keys().all(|(_, id)| id.starts_with("p2") || id == "g"), "{:?}", group.keys());
    kick_off(app, "/Group/g/$export", Some(&p1)).await.assert_outcome(404);

    // The status and the files are the requesting client's only.
    let reply = kick_off(app, "/$export", Some(&everything)).await;
    let status_url = reply.header("content-location").unwrap().to_owned();
    let done = manifest(app, &status_url, Some(&everything)).await;
    let file_url = done["output"][0]["url"].as_str().unwrap().to_owned();
    // A token of the same client whose scopes cover the export's: another token (a renewal).
    let renewed = server.token("operator", "system/*.cruds", None);
    assert_eq!(get(app, &file_url, Some(&renewed)).await.status, 200);
    // Holding more scopes than the kick-off's is holding every one of them.
    let wider = server.token("operator", "system/*.cruds system/Patient.rs", None);
    assert_eq!(get(app, &file_url, Some(&wider)).await.status, 200);
    // One with narrower scopes may not fetch the files, the status, or cancel: they hold
    // what the kick-off's scopes reach.
    let narrower = server.token("operator", "system/Patient.rs", None);
    let refused = get(app, &file_url, Some(&narrower)).await;
    refused.assert_outcome(403);
    assert!(refused.text.contains("system/*.cruds"), "{}", refused.text);
    get(app, &status_url, Some(&narrower)).await.assert_outcome(403);
    app.send(app.client.delete(&status_url).bearer_auth(&narrower)).await.assert_outcome(403);
    assert_eq!(get(app, &status_url, Some(&everything)).await.status, 200, "a refused cancel changes nothing");
    // Another patient's token of the same app does not see a patient's export.
    let mine = kick_off(app, "/Patient/$export", Some(&p1)).await;
    let mine_url = mine.header("content-location").unwrap().to_owned();
    let mine_manifest = manifest(app, &mine_url, Some(&p1)).await;
    let p2 = server.token("app", "patient/*.rs", Some("p2"));
    get(app, &mine_url, Some(&p2)).await.assert_outcome(404);
    let mine_files: Vec<&str> =
        mine_manifest["output"].as_array().unwrap().iter().map(|output| output["url"].as_str().unwrap()).collect();
    assert!(!mine_files.is_empty());
    for file in mine_files {
        assert_eq!(get(app, file, Some(&p1)).await.status, 200);
        get(app, file, Some(&p2)).await.assert_outcome(404);
    }
    let another = server.token("someone-else", "system/*.rs", None);
    get(app, &file_url, Some(&another)).await.assert_outcome(404);
    get(app, &status_url, Some(&another)).await.assert_outcome(404);
    app.send(app.client.delete(&status_url).bearer_auth(&another)).await.assert_outcome(404);
    get(app, &file_url, None).await.assert_outcome(401);
    kick_off(app, "/$export", None).await.assert_outcome(401);
}

#[tokio::test]
async fn a_finished_export_outlives_a_restart_until_it_expires() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("braid.redb");
    let mut first = crate::helpers::start_braid_process(&data, "info");
    let app = TestApp::at(format!("http://127.0.0.1:{}/fhir", first.port), tempfile::tempdir().unwrap());
    put(&app, &json!({"resourceType": "Patient", "id": "kept"}), None).await;
    let reply = kick_off(&app, "/$export", None).await;
    let status_path = reply.header("content-location").unwrap().split("/fhir").nth(1).unwrap().to_owned();
    let done = manifest(&app, &app.url(&status_path), None).await;
    let file_path = done["output"][0]["url"].as_str().unwrap().split("/fhir").nth(1).unwrap().to_owned();
    first.child.kill().unwrap();
    first.child.wait().unwrap();

    let mut second = crate::helpers::start_braid_process(&data, "info");
    let app = TestApp::at(format!("http://127.0.0.1:{}/fhir", second.port), tempfile::tempdir().unwrap());
    let again = app.get(&status_path).await;
    assert_eq!(again.status, 200, "{}", again.text);
    assert_eq!(again.body["transactionTime"], done["transactionTime"]);
    let file = app.get(&file_path).await;
    assert!(file.text.contains("\"id\":\"kept\""), "{}", file.text);
    second.child.kill().unwrap();
    second.child.wait().unwrap();
}

#[tokio::test]
async fn a_patient_or_group_export_brings_the_resources_outside_the_compartment_that_its_resources_reference() {
    let server = spawn_auth_app().await;
    let app = &server.app;
    let everything = server.token("operator", "system/*.cruds", None);
    for resource in [
        json!({"resourceType": "Organization", "id": "clinic", "name": "Clinic"}),
        json!({"resourceType": "Organization", "id": "elsewhere", "name": "Not referenced"}),
        json!({"resourceType": "Practitioner", "id": "dr-a", "name": [{"family": "A"}]}),
        json!({"resourceType": "Practitioner", "id": "dr-b", "name": [{"family": "B"}]}),
        json!({"resourceType": "Practitioner", "id": "dr-unused", "name": [{"family": "Unused"}]}),
        // A Device outside the compartment may hold anyone's data: never followed.
        json!({"resourceType": "Device", "id": "dev1", "status": "active"}),
        json!({"resourceType": "Patient", "id": "p1", "managingOrganization": {"reference": "Organization/clinic"}}),
        json!({"resourceType": "Patient", "id": "p2", "generalPractitioner": [{"reference": "Practitioner/dr-b"}]}),
        json!({"resourceType": "Group", "id": "g", "type": "person", "actual": true,
               "member": [{"entity": {"reference": "Patient/p1"}}]}),
    ] {
        put(app, &resource, Some(&everything)).await;
    }
    let mut seen_by_p1 = observation("p1-o1", "p1", "8867-4");
    // An absolute reference on Braid's own base counts as well.
    seen_by_p1["performer"] = json!([{"reference": app.url("/Practitioner/dr-a")}]);
    seen_by_p1["device"] = json!({"reference": "Device/dev1"});
    put(app, &seen_by_p1, Some(&everything)).await;
    put(app, &observation("p2-o1", "p2", "8867-4"), Some(&everything)).await;

    // By default, the compartment alone: what a compartment search returns.
    let group = export(app, "/Group/g/$export", Some(&everything)).await;
    assert_eq!(type_ids(&group), ["Group/g", "Observation/p1-o1", "Patient/p1"]);
    // Reference data named in _type: the Organization and Practitioner the member's record points
    // at; neither what only the other patient references nor what nothing references.
    let with_references = "/Group/g/$export?_type=Group,Observation,Patient,Organization,Practitioner,Location";
    let group = export(app, with_references, Some(&everything)).await;
    assert_eq!(
        type_ids(&group),
        ["Group/g", "Observation/p1-o1", "Organization/clinic", "Patient/p1", "Practitioner/dr-a"]
    );
    // Patient level: every patient's references.
    let patients = export(app, "/Patient/$export?_type=Patient,Practitioner", Some(&everything)).await;
    assert_eq!(type_ids(&patients), ["Patient/p1", "Patient/p2", "Practitioner/dr-b"], "only the types named");
    // A patient's token: its own record and what that references, within its scopes.
    let p1 = server.token("app", "patient/*.rs", Some("p1"));
    let mine =
        export(app, "/Patient/$export?_type=Group,Observation,Patient,Organization,Practitioner", Some(&p1)).await;
    assert_eq!(
        type_ids(&mine),
        ["Group/g", "Observation/p1-o1", "Organization/clinic", "Patient/p1", "Practitioner/dr-a"],
        "the Group is in its member's compartment"
    );
    // Patients named that are not the Group's, do not exist, or are not the caller's: an error
    // naming them, not an export without them.
    for (path, token, words) in [
        ("/Group/g/$export?patient=Patient/p1,Patient/p2", &everything, "Patient/p2 that the Group does not have"),
        ("/Patient/$export?patient=Patient/p1,Patient/nobody", &everything, "Patient/nobody that does not exist"),
        ("/Patient/$export?patient=Patient/p2", &p1, "Patient/p2 that does not exist"),
    ] {
        let reply = kick_off(app, path, Some(token)).await;
        reply.assert_outcome(400);
        assert!(reply.text.contains(words), "{path}: {}", reply.text);
    }
    let limited = export(app, "/Group/g/$export?patient=Patient/p1&_type=Patient", Some(&everything)).await;
    assert_eq!(type_ids(&limited), ["Patient/p1"]);
    let device = kick_off(app, "/Patient/$export?_type=Observation,Device", Some(&everything)).await;
    device.assert_outcome(400);
    assert!(device.text.contains("Device is not in the Patient compartment, nor reference data"), "{}", device.text);
    // A type outside the compartment alone has nothing to be referenced by.
    let refused = kick_off(app, "/Patient/$export?_type=Organization,Practitioner", Some(&everything)).await;
    refused.assert_outcome(400);
    assert!(refused.text.contains("Organization, Practitioner are not in the Patient compartment"), "{}", refused.text);
}

#[tokio::test]
async fn a_type_filter_exports_only_what_its_searches_select() {
    let app = spawn_app().await;
    for patient in ["p1", "p2"] {
        put(&app, &json!({"resourceType": "Patient", "id": patient, "gender": "female"}), None).await;
        for (n, code) in ["8867-4", "2708-6", "8310-5"].iter().enumerate() {
            put(&app, &observation(&format!("{patient}-o{n}"), patient, code), None).await;
        }
    }
    put(&app, &json!({"resourceType": "Patient", "id": "p3", "gender": "male"}), None).await;
    let encode =
        |text: &str| percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string();

    // One filter: only the heart rates, and every Patient (no filter on that type).
    let heart_rates = encode("Observation?code=http://loinc.org|8867-4");
    let exported = export(&app, &format!("/$export?_type=Observation,Patient&_typeFilter={heart_rates}"), None).await;
    assert_eq!(
        type_ids(&exported),
        ["Observation/p1-o0", "Observation/p2-o0", "Patient/p1", "Patient/p2", "Patient/p3"]
    );
    // Two filters on one type select either; filters on two types apply each to its own; a
    // comma inside a query is a value list, one between queries separates them (Bulk Data 1.0).
    let either = format!(
        "_typeFilter={}&_typeFilter={}",
        encode("Observation?code=8867-4"),
        encode("Observation?code=8310-5,Patient?gender=male")
    );
    let exported = export(&app, &format!("/$export?_type=Observation,Patient&{either}"), None).await;
    assert_eq!(
        type_ids(&exported),
        ["Observation/p1-o0", "Observation/p1-o2", "Observation/p2-o0", "Observation/p2-o2", "Patient/p3"]
    );
    let list = encode("Observation?code=2708-6,8310-5");
    let exported = export(&app, &format!("/Patient/$export?_type=Observation&_typeFilter={list}"), None).await;
    assert_eq!(type_ids(&exported).len(), 4, "{:?}", exported.keys());
    // Refused, with the reason: not a search, an unknown type, an unknown parameter.
    for (filter, words) in [
        ("Observation", "not a search"),
        ("Nope?x=1", "Nope"),
        ("Observation?_sort=date", "_sort"),
        ("Observation?frobnicate=1", "frobnicate"),
    ] {
        let reply = kick_off(&app, &format!("/$export?_typeFilter={}", encode(filter)), None).await;
        reply.assert_outcome(400);
        assert!(reply.text.contains(words), "{filter}: {}", reply.text);
    }
}
