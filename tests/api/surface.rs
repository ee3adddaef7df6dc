//! The wider REST surface: PATCH, instance `$validate` with mode and profile, `_summary` and
//! `_elements` on reads, history `_at`, searches inside bundles, and `$everything`'s referenced
//! resources.

use serde_json::{Value, json};

use crate::helpers::{
    TestApp, bundle_entry, heart_rate, next_link, patient, spawn_app, spawn_app_with, without_golden_link,
};

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

async fn json_patch(app: &TestApp, path: &str, patch: &Value, headers: &[(&str, &str)]) -> crate::helpers::Reply {
    let mut request =
        app.client.patch(app.url(path)).header("content-type", "application/json-patch+json").body(patch.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    app.send(request).await
}

async fn fhirpath_patch(app: &TestApp, path: &str, operations: Vec<Value>) -> crate::helpers::Reply {
    let body = json!({"resourceType": "Parameters", "parameter": operations});
    app.send(app.client.patch(app.url(path)).header("content-type", "application/fhir+json").body(body.to_string()))
        .await
}

fn operation(kind: &str, path: &str, more: Value) -> Value {
    let mut parts = vec![json!({"name": "type", "valueCode": kind}), json!({"name": "path", "valueString": path})];
    parts.extend(more.as_array().cloned().unwrap_or_default());
    json!({"name": "operation", "part": parts})
}

#[actix_web::test]
async fn json_patch_applies_every_operation_and_answers_like_an_update() {
    let app = spawn_app().await;
    let mut sent = patient("Jones");
    sent["name"][0]["given"] = json!(["Ann", "Beth"]);
    let id = create(&app, &sent).await;
    let patch = json!([
        {"op": "test", "path": "/name/0/family", "value": "Jones"},
        {"op": "replace", "path": "/name/0/family", "value": "Smith"},
        {"op": "add", "path": "/name/0/given/-", "value": "Cleo"},
        {"op": "remove", "path": "/name/0/given/0"},
        {"op": "move", "from": "/name/0/given/1", "path": "/name/0/given/0"},
        {"op": "copy", "from": "/identifier/0", "path": "/identifier/1"},
        {"op": "replace", "path": "/identifier/1/value", "value": "copy"},
        {"op": "add", "path": "/gender", "value": "female"}
    ]);
    let reply = json_patch(&app, &format!("/Patient/{id}"), &patch, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["name"][0]["family"], "Smith");
    assert_eq!(reply.body["name"][0]["given"], json!(["Cleo", "Beth"]));
    assert_eq!(reply.body["identifier"][1]["value"], "copy");
    assert_eq!(reply.body["gender"], "female");
    assert_eq!(reply.body["meta"]["versionId"], "2");
    assert_eq!(reply.header("etag"), Some("W/\"2\""));
    assert_eq!(reply.header("location"), Some(app.url(&format!("/Patient/{id}/_history/2")).as_str()));
    let read = app.get(&format!("/Patient/{id}")).await;
    assert_eq!(without_golden_link(&read.body), reply.body);

    // Pointer escapes: ~1 is '/', ~0 is '~' (an extension URL as a key is the realistic case).
    let escaped = json!([{"op": "add", "path": "/name/0/given/0", "value": "x/y~z"},
        {"op": "test", "path": "/name/0/given/0", "value": "x/y~z"}]);
    assert_eq!(json_patch(&app, &format!("/Patient/{id}"), &escaped, &[]).await.status, 200);
    let bad_escape = json!([{"op": "remove", "path": "/name/0/gi~1ven"}]);
    let reply = json_patch(&app, &format!("/Patient/{id}"), &bad_escape, &[]).await;
    reply.assert_outcome(400);
    assert_eq!(reply.expressions(), vec!["Patient.name[0].gi/ven"]);

    let minimal = json!([{"op": "replace", "path": "/gender", "value": "other"}]);
    let reply = json_patch(&app, &format!("/Patient/{id}"), &minimal, &[("prefer", "return=minimal")]).await;
    assert_eq!((reply.status, reply.text.as_str()), (200, ""));
    assert_eq!(reply.header("etag"), Some("W/\"4\""));
}

#[actix_web::test]
async fn fhirpath_patch_applies_every_operation_type() {
    let app = spawn_app().await;
    let mut sent = patient("Path");
    sent["identifier"] = json!([{"system": "http://a", "value": "1"}, {"system": "http://b", "value": "2"}]);
    sent["gender"] = json!("male");
    let id = create(&app, &sent).await;
    let reply = fhirpath_patch(
        &app,
        &format!("/Patient/{id}"),
        vec![
            operation("add", "Patient", json!([{"name": "name", "valueString": "telecom"},
                {"name": "value", "part": [{"name": "system", "valueCode": "phone"}, {"name": "value", "valueString": "555"}]}])),
            operation("insert", "Patient.identifier", json!([{"name": "index", "valueInteger": 0},
                {"name": "value", "valueIdentifier": {"system": "http://z", "value": "0"}}])),
            operation("replace", "Patient.identifier.where(system = 'http://b').value", json!([{"name": "value", "valueString": "two"}])),
            operation("move", "Patient.identifier", json!([{"name": "source", "valueInteger": 2}, {"name": "destination", "valueInteger": 0}])),
            operation("delete", "Patient.gender", json!([])),
            operation("replace", "Patient.name.first().family", json!([{"name": "value", "valueString": "Renamed"}])),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["telecom"], json!([{"system": "phone", "value": "555"}]));
    let identifiers: Vec<&str> =
        reply.body["identifier"].as_array().unwrap().iter().map(|i| i["value"].as_str().unwrap()).collect();
    assert_eq!(identifiers, vec!["two", "0", "1"]);
    assert!(reply.body.get("gender").is_none());
    assert_eq!(reply.body["name"][0]["family"], "Renamed");
    assert_eq!(reply.header("etag"), Some("W/\"2\""));
    assert_eq!(without_golden_link(&app.get(&format!("/Patient/{id}")).await.body), reply.body);
}

#[actix_web::test]
async fn failing_patches_write_nothing_and_say_why() {
    let app = spawn_app().await;
    let id = create(&app, &patient("Stable")).await;
    let path = format!("/Patient/{id}");
    let before = app.history_len().await;

    let failed_test =
        json_patch(&app, &path, &json!([{"op": "test", "path": "/name/0/family", "value": "Other"}]), &[]).await;
    failed_test.assert_outcome(422);
    assert_eq!(failed_test.expressions(), vec!["Patient.name[0].family"]);
    assert!(failed_test.body["issue"][0]["diagnostics"].as_str().unwrap().contains("test failed"));

    let bad_pointer = json_patch(&app, &path, &json!([{"op": "remove", "path": "/name/7"}]), &[]).await;
    bad_pointer.assert_outcome(400);
    assert_eq!(bad_pointer.expressions(), vec!["Patient.name[7]"]);

    let bad_path = fhirpath_patch(
        &app,
        &path,
        vec![operation("replace", "Patient.contact.name", json!([{"name": "value", "valueString": "x"}]))],
    )
    .await;
    bad_path.assert_outcome(400);
    assert_eq!(bad_path.expressions(), vec!["Parameters.parameter[0]", "Patient.contact.name"]);
    assert!(bad_path.body["issue"][0]["diagnostics"].as_str().unwrap().contains("selects no element"));

    let unparsable = fhirpath_patch(&app, &path, vec![operation("delete", "Patient.name.last()", json!([]))]).await;
    unparsable.assert_outcome(400);
    assert_eq!(unparsable.expressions(), vec!["Parameters.parameter[0]"]);

    let invalid =
        json_patch(&app, &path, &json!([{"op": "replace", "path": "/birthDate", "value": "yesterday"}]), &[]).await;
    invalid.assert_outcome(400);
    assert_eq!(invalid.expressions(), vec!["Patient.birthDate"]);

    let new_id = json_patch(&app, &path, &json!([{"op": "replace", "path": "/id", "value": "other"}]), &[]).await;
    new_id.assert_outcome(400);
    assert_eq!(new_id.expressions(), vec!["Patient.id"]);
    let new_type =
        json_patch(&app, &path, &json!([{"op": "replace", "path": "/resourceType", "value": "Group"}]), &[]).await;
    new_type.assert_outcome(400);
    assert_eq!(new_type.expressions(), vec!["Patient.resourceType"]);

    assert_eq!(app.history_len().await, before, "no rejected patch wrote a version");
    let read = app.get(&path).await;
    assert_eq!(
        (read.body["meta"]["versionId"].as_str(), read.body["name"][0]["family"].as_str()),
        (Some("1"), Some("Stable"))
    );
    assert_eq!(app.get("/Patient/other").await.status, 404);

    assert_eq!(json_patch(&app, "/Patient/missing", &json!([]), &[]).await.status, 404);
}

#[actix_web::test]
async fn a_patch_that_breaks_a_profile_is_422_and_writes_nothing() {
    let app = spawn_app().await;
    let id = create(&app, &heart_rate()).await;
    let before = app.history_len().await;
    let reply = fhirpath_patch(
        &app,
        &format!("/Observation/{id}"),
        vec![operation("replace", "Observation.value.code", json!([{"name": "value", "valueCode": "/s"}]))],
    )
    .await;
    reply.assert_outcome(422);
    assert_eq!(reply.expressions(), vec!["Observation.valueQuantity.code"]);
    assert_eq!(app.history_len().await, before);
    assert_eq!(app.get(&format!("/Observation/{id}")).await.body["valueQuantity"]["code"], "/min");
}

#[actix_web::test]
async fn patch_honours_if_match_and_conditional_patch_finds_its_target() {
    let app = spawn_app().await;
    let id = create(&app, &patient("Matched")).await;
    let path = format!("/Patient/{id}");
    let patch = json!([{"op": "replace", "path": "/gender", "value": "female"}, {"op": "add", "path": "/active", "value": true}]);
    let stale = json_patch(
        &app,
        &path,
        &json!([{"op": "add", "path": "/gender", "value": "male"}]),
        &[("if-match", "W/\"0\"")],
    )
    .await;
    stale.assert_outcome(412);
    let current = json_patch(
        &app,
        &path,
        &json!([{"op": "add", "path": "/gender", "value": "male"}]),
        &[("if-match", "W/\"1\"")],
    )
    .await;
    assert_eq!((current.status, current.body["gender"].as_str()), (200, Some("male")), "{}", current.text);
    let stale_again = json_patch(&app, &path, &patch, &[("if-match", "W/\"1\"")]).await;
    stale_again.assert_outcome(412);
    assert_eq!(app.get(&path).await.body["gender"], "male");

    let conditional = json_patch(&app, "/Patient?identifier=http://hospital.example/mrn|Matched", &patch, &[]).await;
    assert_eq!(conditional.status, 200, "{}", conditional.text);
    assert_eq!(
        (conditional.body["id"].as_str(), conditional.body["active"].as_bool()),
        (Some(id.as_str()), Some(true))
    );
    let none = json_patch(&app, "/Patient?identifier=http://hospital.example/mrn|Nobody", &patch, &[]).await;
    none.assert_outcome(404);
    create(&app, &patient("Matched")).await;
    let several = json_patch(&app, "/Patient?identifier=http://hospital.example/mrn|Matched", &patch, &[]).await;
    several.assert_outcome(412);
    assert_eq!(several.body["issue"][0]["code"], "multiple-matches");

    let metadata = app.get("/metadata").await;
    let codes: Vec<&str> = metadata.body["rest"][0]["resource"][0]["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["code"].as_str())
        .collect();
    assert!(codes.contains(&"patch"), "{codes:?}");
}

#[actix_web::test]
async fn concurrent_patches_are_all_kept() {
    let app = spawn_app().await;
    let id = create(&app, &patient("Busy")).await;
    let path = format!("/Patient/{id}");
    let patches = (0..6).map(|n| {
        let patch = json!([{"op": "add", "path": "/name/0/given/-", "value": format!("g{n}")}]);
        let app = &app;
        let path = path.clone();
        async move { json_patch(app, &path, &patch, &[]).await.status }
    });
    let statuses = futures_util::future::join_all(patches).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let read = app.get(&path).await;
    let given = read.body["name"][0]["given"].as_array().unwrap();
    assert_eq!(given.len(), 7, "every concurrent patch is kept: {given:?}");
    assert_eq!(read.body["meta"]["versionId"], "7");
}

fn severities(reply: &crate::helpers::Reply) -> Vec<&str> {
    reply.body["issue"].as_array().unwrap().iter().map(|i| i["severity"].as_str().unwrap()).collect()
}

#[actix_web::test]
async fn instance_validate_checks_update_and_delete_modes() {
    let app = spawn_app().await;
    let id = create(&app, &patient("Valid")).await;
    let mut body = app.get(&format!("/Patient/{id}")).await.body;

    let matching = app.post(&format!("/Patient/{id}/$validate?mode=update"), &body).await;
    assert_eq!((matching.status, severities(&matching)), (200, vec!["information"]), "{}", matching.text);

    body["id"] = json!("someone-else");
    let mismatch = app.post(&format!("/Patient/{id}/$validate?mode=update"), &body).await;
    assert_eq!(mismatch.status, 200, "{}", mismatch.text);
    assert_eq!(severities(&mismatch), vec!["error"]);
    assert_eq!(mismatch.expressions(), vec!["Patient.id"]);
    assert!(mismatch.body["issue"][0]["diagnostics"].as_str().unwrap().contains("differs"));
    // Without a mode, an instance-level $validate checks the content only.
    assert_eq!(severities(&app.post(&format!("/Patient/{id}/$validate"), &body).await), vec!["information"]);

    let as_parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "mode", "valueCode": "update"}, {"name": "resource", "resource": body}]});
    let reply = app.post(&format!("/Patient/{id}/$validate"), &as_parameters).await;
    assert_eq!(reply.expressions(), vec!["Patient.id"]);

    let delete = app.send(app.client.post(app.url(&format!("/Patient/{id}/$validate?mode=delete")))).await;
    assert_eq!((delete.status, severities(&delete)), (200, vec!["information"]), "{}", delete.text);
    assert!(delete.body["issue"][0]["diagnostics"].as_str().unwrap().contains(&format!("Patient/{id} exists")));
    let delete_parameters =
        json!({"resourceType": "Parameters", "parameter": [{"name": "mode", "valueCode": "delete"}]});
    assert_eq!(app.post(&format!("/Patient/{id}/$validate"), &delete_parameters).await.status, 200);
    let missing = app.send(app.client.post(app.url("/Patient/nobody/$validate?mode=delete"))).await;
    missing.assert_outcome(404);
    assert_eq!(app.delete(&format!("/Patient/{id}")).await.status, 204);
    let gone = app.send(app.client.post(app.url(&format!("/Patient/{id}/$validate?mode=delete")))).await;
    gone.assert_outcome(410);

    let bad_mode = app.post(&format!("/Patient/{id}/$validate?mode=destroy"), &body).await;
    bad_mode.assert_outcome(400);
    assert_eq!(bad_mode.expressions(), vec!["mode"]);
    assert_eq!(app.history_len().await, 2, "validation wrote nothing");
}

#[actix_web::test]
async fn validate_checks_against_a_named_profile() {
    let app = spawn_app().await;
    let heartrate = "http://hl7.org/fhir/StructureDefinition/heartrate";
    // A plain Observation does not claim the vital signs profile, so nothing applies to it...
    let mut plain = heart_rate();
    plain.as_object_mut().unwrap().remove("meta");
    plain.as_object_mut().unwrap().remove("category");
    plain["valueQuantity"]["code"] = json!("/s");
    let unnamed = app.post("/Observation/$validate", &plain).await;
    assert_eq!(severities(&unnamed), vec!["information"], "{}", unnamed.text);
    // ...until the client asks for that profile, as a URL parameter or in Parameters.
    let named = app.post(&format!("/Observation/$validate?profile={heartrate}"), &plain).await;
    assert_eq!(named.status, 200, "{}", named.text);
    assert!(severities(&named).iter().all(|s| *s == "error"), "{}", named.text);
    assert!(named.expressions().contains(&"Observation.valueQuantity.code".to_owned()), "{}", named.text);
    let parameters = json!({"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": plain}, {"name": "mode", "valueCode": "profile"},
        {"name": "profile", "valueCanonical": heartrate}]});
    let reply = app.post("/Observation/$validate", &parameters).await;
    assert_eq!(reply.expressions(), named.expressions());
    let ok = app.post(&format!("/Observation/$validate?profile={heartrate}"), &heart_rate()).await;
    assert_eq!(severities(&ok), vec!["information"], "{}", ok.text);
    assert!(ok.body["issue"][0]["diagnostics"].as_str().unwrap().contains(heartrate));

    let unknown = app.post("/Observation/$validate?profile=http://example.org/StructureDefinition/mine", &plain).await;
    unknown.assert_outcome(400);
    assert_eq!(unknown.expressions(), vec!["profile"]);
    assert!(unknown.body["issue"][0]["diagnostics"].as_str().unwrap().contains("unknown"));
    let wrong_type = app.post(&format!("/Patient/$validate?profile={heartrate}"), &patient("P")).await;
    wrong_type.assert_outcome(400);
    assert!(wrong_type.body["issue"][0]["diagnostics"].as_str().unwrap().contains("does not constrain Patient"));
    let no_profile = app.post("/Observation/$validate?mode=profile", &plain).await;
    no_profile.assert_outcome(400);
    assert_eq!(no_profile.expressions(), vec!["profile"]);
    assert_eq!(app.history_len().await, 0);
}

/// `(type/id, versionId)` of each entry of a history Bundle.
fn history_versions(reply: &crate::helpers::Reply) -> Vec<String> {
    reply.body["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| {
            let url = entry["fullUrl"].as_str().unwrap();
            let path: Vec<&str> = url.rsplitn(3, '/').collect();
            let etag = entry["response"]["etag"].as_str().unwrap().trim_start_matches("W/").trim_matches('"');
            format!("{}/{}@{etag}", path[1], path[0])
        })
        .collect()
}

/// A moment `offset_ms` after a version's `meta.lastUpdated`, as an instant.
fn after(resource: &Value, offset_ms: i64) -> String {
    let written = braid::fhir::json::parse_instant(resource["meta"]["lastUpdated"].as_str().unwrap()).unwrap();
    braid::fhir::json::format_instant(written + offset_ms * 1000)
}

async fn pause() {
    tokio::time::sleep(std::time::Duration::from_millis(6)).await;
}

#[actix_web::test]
async fn history_at_keeps_the_versions_current_during_the_period() {
    let app = spawn_app().await;
    let c = create(&app, &patient("Constant")).await;
    let d = create(&app, &patient("Deleted")).await;
    assert_eq!(app.delete(&format!("/Patient/{d}")).await.status, 204);
    let a = create(&app, &patient("Changing")).await;
    pause().await;
    let mut body = app.get(&format!("/Patient/{a}")).await.body;
    body["gender"] = json!("female");
    let a2 = app.put(&format!("/Patient/{a}"), &body).await;
    assert_eq!(a2.status, 200);
    pause().await;
    body["gender"] = json!("male");
    assert_eq!(app.put(&format!("/Patient/{a}"), &body).await.status, 200);
    create(&app, &patient("Later")).await;
    let at = after(&a2.body, 2);

    let expected = vec![format!("Patient/{a}@2"), format!("Patient/{d}@2"), format!("Patient/{c}@1")];
    let system = app.get(&format!("/_history?_at={at}")).await;
    assert_eq!(system.status, 200, "{}", system.text);
    assert_eq!(history_versions(&system), expected);
    assert_eq!(history_versions(&app.get(&format!("/Patient/_history?_at={at}")).await), expected);
    assert_eq!(
        history_versions(&app.get(&format!("/Patient/{a}/_history?_at={at}")).await),
        vec![format!("Patient/{a}@2")]
    );
    // A period before anything was written holds nothing; `_at` of a year is the whole year.
    assert_eq!(history_versions(&app.get("/_history?_at=1999").await), Vec::<String>::new());
    let year = &at[..4];
    assert_eq!(app.get(&format!("/_history?_at={year}")).await.body["entry"].as_array().unwrap().len(), 7);

    let bad = app.get("/_history?_at=yesterday").await;
    bad.assert_outcome(400);
    assert_eq!(bad.expressions(), vec!["_at"]);
}

#[actix_web::test]
async fn history_at_pages_examine_a_bounded_number_of_entries() {
    let app = spawn_app_with(|settings| settings.max_history_scan = 2).await;
    let id = create(&app, &patient("Often")).await;
    let mut body = app.get(&format!("/Patient/{id}")).await.body;
    let first_version_at = after(&body, 2);
    pause().await;
    for n in 0..5 {
        body["name"][0]["given"] = json!([format!("v{n}")]);
        assert_eq!(app.put(&format!("/Patient/{id}"), &body).await.status, 200);
    }
    let other = create(&app, &patient("Other")).await;
    let newest = app.get(&format!("/Patient/{other}")).await.body;
    let at = after(&newest, 5);

    // Type level: every version of `id` but the newest was replaced before `at`. Instance level:
    // every version but the first was written after `first_version_at`. Either way most of the
    // entries are examined and skipped.
    for path in [format!("/Patient/_history?_at={at}"), format!("/Patient/{id}/_history?_at={first_version_at}")] {
        let mut found = Vec::new();
        let mut pages = 0;
        let mut next = Some(app.url(&path));
        while let Some(url) = next {
            let page = app.send(app.client.get(&url)).await;
            assert_eq!(page.status, 200, "{}", page.text);
            pages += 1;
            assert!(pages < 10, "paging ends");
            found.extend(history_versions(&page));
            next = next_link(&page.body);
        }
        let expected: Vec<String> = if path.contains(&id) {
            vec![format!("Patient/{id}@1")]
        } else {
            vec![format!("Patient/{other}@1"), format!("Patient/{id}@6")]
        };
        assert_eq!(found, expected, "{path}");
        // Seven (or six) entries, at most two examined per page.
        assert!(pages >= 3, "{path}: {pages} pages");
    }
}

fn searchset_ids(searchset: &Value) -> Vec<String> {
    let mut ids: Vec<String> = searchset["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[actix_web::test]
async fn transaction_searches_run_after_the_writes_and_page_like_a_search() {
    let app = spawn_app().await;
    let before = create(&app, &patient("Searchable")).await;
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        bundle_entry("GET", "Patient?family=Searchable&_count=1", None, None),
        bundle_entry("POST", "Patient", Some(patient("Searchable")), Some("urn:uuid:7b1d5a52-1f3b-4f0e-9d7e-000000000001")),
        bundle_entry("POST", "Observation", Some(json!({"resourceType": "Observation", "status": "final", "code": {"text": "n"},
            "subject": {"reference": "urn:uuid:7b1d5a52-1f3b-4f0e-9d7e-000000000001"}})), None),
        bundle_entry("GET", "Patient?family=Nobody", None, None),
    ]});
    let reply = app.post("", &bundle).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let first = &reply.body["entry"][0];
    assert_eq!(first["response"]["status"], "200 OK");
    let searchset = &first["resource"];
    assert_eq!((searchset["resourceType"].as_str(), searchset["type"].as_str()), (Some("Bundle"), Some("searchset")));
    // The search sees the patient the transaction created (GETs run last), one per page.
    let created =
        reply.body["entry"][1]["response"]["location"].as_str().unwrap().split('/').nth(1).unwrap().to_owned();
    let next = searchset["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").expect("a next link");
    let second_page = app.send(app.client.get(next["url"].as_str().unwrap())).await;
    assert_eq!(second_page.status, 200, "{}", second_page.text);
    let mut found = searchset_ids(searchset);
    found.extend(searchset_ids(&second_page.body));
    found.sort();
    let mut expected = vec![before, created.clone()];
    expected.sort();
    assert_eq!(found, expected);
    assert_eq!(searchset_ids(&reply.body["entry"][3]["resource"]), Vec::<String>::new());

    // A compartment search as an entry.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        bundle_entry("GET", &format!("Patient/{created}/Observation"), None, None),
        bundle_entry("GET", "Observation?subject:missing=true", None, None),
    ]});
    let reply = app.post("", &batch).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let compartment = &reply.body["entry"][0]["resource"];
    assert_eq!(compartment["entry"].as_array().unwrap().len(), 1, "{}", reply.text);
    assert_eq!(compartment["entry"][0]["resource"]["subject"]["reference"], format!("Patient/{created}"));
    assert_eq!(searchset_ids(&reply.body["entry"][1]["resource"]), Vec::<String>::new());
}

#[actix_web::test]
async fn a_bad_search_entry_fails_a_transaction_whole_and_only_itself_in_a_batch() {
    let app = spawn_app().await;
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        bundle_entry("POST", "Patient", Some(patient("Never")), None),
        bundle_entry("GET", "Patient?birthdate=notadate", None, None),
    ]});
    let reply = app.post("", &transaction).await;
    reply.assert_outcome(400);
    assert!(reply.expressions().iter().any(|e| e.starts_with("Bundle.entry[1]")), "{}", reply.text);
    assert_eq!(app.history_len().await, 0);

    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        bundle_entry("POST", "Patient", Some(patient("Kept")), None),
        bundle_entry("GET", "Patient?birthdate=notadate", None, None),
        bundle_entry("GET", "Patient?family=Kept", None, None),
    ]});
    let reply = app.post("", &batch).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["entry"][1]["response"]["status"], "400 Bad Request");
    let kept = &reply.body["entry"][2]["resource"];
    assert_eq!(kept["entry"][0]["resource"]["name"][0]["family"], "Kept");
}

/// `Type/id` of the entries of a searchset with the given search mode, sorted.
fn entries_with_mode(bundle: &Value, mode: &str) -> Vec<String> {
    let mut found: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == mode)
        .map(|e| {
            format!("{}/{}", e["resource"]["resourceType"].as_str().unwrap(), e["resource"]["id"].as_str().unwrap())
        })
        .collect();
    found.sort();
    found
}

fn sorted(mut items: Vec<String>) -> Vec<String> {
    items.sort();
    items
}

#[actix_web::test]
async fn everything_includes_what_the_patients_records_reference() {
    let app = spawn_app().await;
    let org = create(&app, &json!({"resourceType": "Organization", "name": "Clinic"})).await;
    let gp = create(&app, &json!({"resourceType": "Practitioner", "name": [{"family": "Gp"}]})).await;
    let nurse = create(&app, &json!({"resourceType": "Practitioner", "name": [{"family": "Nurse"}]})).await;
    let stranger = create(&app, &json!({"resourceType": "Practitioner", "name": [{"family": "Stranger"}]})).await;
    let med = create(&app, &json!({"resourceType": "Medication", "code": {"text": "aspirin"}})).await;
    let ward = create(&app, &json!({"resourceType": "Location", "name": "Ward"})).await;
    let device = create(&app, &json!({"resourceType": "Device", "status": "active"})).await;
    let mut body = patient("Everything");
    body["generalPractitioner"] = json!([{"reference": format!("Practitioner/{gp}")}]);
    body["managingOrganization"] = json!({"reference": format!("{}/Organization/{org}", app.base)});
    let p = create(&app, &body).await;
    let encounter = create(
        &app,
        &json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/{p}")},
        "location": [{"location": {"reference": format!("Location/{ward}")}}],
        "serviceProvider": {"reference": format!("Organization/{org}")}}),
    )
    .await;
    let order = create(
        &app,
        &json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
        "medicationReference": {"reference": format!("Medication/{med}")},
        "subject": {"reference": format!("Patient/{p}")}, "requester": {"reference": format!("Practitioner/{gp}")}}),
    )
    .await;
    let observation = create(
        &app,
        &json!({"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
        "subject": {"reference": format!("Patient/{p}")}, "performer": [{"reference": format!("Practitioner/{nurse}")}],
        "device": {"reference": format!("Device/{device}")}}),
    )
    .await;
    assert_eq!(app.delete(&format!("/Device/{device}")).await.status, 204);
    let q = create(&app, &patient("Other")).await;
    create(&app, &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"reference": format!("Patient/{q}")}, "performer": [{"reference": format!("Practitioner/{stranger}")}]})).await;

    let everything = app.get(&format!("/Patient/{p}/$everything")).await;
    assert_eq!(everything.status, 200, "{}", everything.text);
    assert_eq!(
        entries_with_mode(&everything.body, "match"),
        sorted(vec![
            format!("Encounter/{encounter}"),
            format!("MedicationRequest/{order}"),
            format!("Observation/{observation}"),
            format!("Patient/{p}")
        ])
    );
    // Each referenced resource once; not the deleted device, not the other patient's records.
    assert_eq!(
        entries_with_mode(&everything.body, "include"),
        sorted(vec![
            format!("Location/{ward}"),
            format!("Medication/{med}"),
            format!("Organization/{org}"),
            format!("Practitioner/{gp}"),
            format!("Practitioner/{nurse}")
        ])
    );

    let only = app.get(&format!("/Patient/{p}/$everything?_type=Observation,Practitioner")).await;
    assert_eq!(entries_with_mode(&only.body, "match"), vec![format!("Observation/{observation}")]);
    assert_eq!(entries_with_mode(&only.body, "include"), vec![format!("Practitioner/{nurse}")]);
}

#[actix_web::test]
async fn everything_pages_include_only_their_own_references_as_of_the_first_page() {
    let app = spawn_app().await;
    let gp = create(&app, &json!({"resourceType": "Practitioner", "name": [{"family": "Before"}]})).await;
    let org = create(&app, &json!({"resourceType": "Organization", "name": "Clinic"})).await;
    let p = create(&app, &patient("Paged")).await;
    let encounter = create(&app, &json!({"resourceType": "Encounter", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": format!("Patient/{p}")}, "serviceProvider": {"reference": format!("Organization/{org}")}})).await;
    let observation = create(
        &app,
        &json!({"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
        "subject": {"reference": format!("Patient/{p}")}, "performer": [{"reference": format!("Practitioner/{gp}")}]}),
    )
    .await;

    // Types come in name order: Encounter, Observation, Patient; one match per page.
    let first = app.get(&format!("/Patient/{p}/$everything?_count=1")).await;
    assert_eq!(entries_with_mode(&first.body, "match"), vec![format!("Encounter/{encounter}")]);
    assert_eq!(entries_with_mode(&first.body, "include"), vec![format!("Organization/{org}")]);

    let mut renamed = app.get(&format!("/Practitioner/{gp}")).await.body;
    renamed["name"][0]["family"] = json!("After");
    assert_eq!(app.put(&format!("/Practitioner/{gp}"), &renamed).await.status, 200);

    let next = |page: &crate::helpers::Reply| next_link(&page.body);
    let second = app.send(app.client.get(next(&first).expect("a second page"))).await;
    assert_eq!(entries_with_mode(&second.body, "match"), vec![format!("Observation/{observation}")]);
    let included: Vec<&Value> =
        second.body["entry"].as_array().unwrap().iter().filter(|e| e["search"]["mode"] == "include").collect();
    assert_eq!(included.len(), 1, "{}", second.text);
    assert_eq!(included[0]["resource"]["name"][0]["family"], "Before", "as of the first page's snapshot");
    let third = app.send(app.client.get(next(&second).expect("a third page"))).await;
    assert_eq!(entries_with_mode(&third.body, "match"), vec![format!("Patient/{p}")]);
    assert_eq!(entries_with_mode(&third.body, "include"), Vec::<String>::new());
}

fn json_patch_binary(patch: &Value) -> Value {
    use base64::Engine;
    json!({"resourceType": "Binary", "contentType": "application/json-patch+json",
        "data": base64::engine::general_purpose::STANDARD.encode(patch.to_string())})
}

#[actix_web::test]
async fn transactions_and_batches_carry_patches_in_both_formats() {
    let app = spawn_app().await;
    let a = create(&app, &patient("Alpha")).await;
    let b = create(&app, &patient("Beta")).await;
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        bundle_entry("PATCH", &format!("Patient/{a}"),
            Some(json_patch_binary(&json!([{"op": "replace", "path": "/name/0/family", "value": "Alpha2"}]))), None),
        bundle_entry("PATCH", &format!("Patient/{b}"), Some(json!({"resourceType": "Parameters", "parameter": [
            operation("add", "Patient", json!([{"name": "name", "valueString": "gender"}, {"name": "value", "valueCode": "other"}]))]})), None),
        bundle_entry("GET", &format!("Patient/{b}"), None, None),
    ]});
    let reply = app.post("", &transaction).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(reply.body["entry"][0]["response"]["etag"], "W/\"2\"");
    assert_eq!(reply.body["entry"][0]["resource"]["name"][0]["family"], "Alpha2");
    assert_eq!(reply.body["entry"][2]["resource"]["gender"], "other");
    assert_eq!(app.get(&format!("/Patient/{a}")).await.body["name"][0]["family"], "Alpha2");

    // One failing patch fails the whole transaction, naming its entry.
    let before = app.history_len().await;
    let failing = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        bundle_entry("POST", "Patient", Some(patient("Gamma")), None),
        bundle_entry("PATCH", &format!("Patient/{a}"),
            Some(json_patch_binary(&json!([{"op": "test", "path": "/name/0/family", "value": "Alpha"}]))), None),
    ]});
    let reply = app.post("", &failing).await;
    reply.assert_outcome(422);
    assert!(reply.expressions().iter().any(|e| e.starts_with("Bundle.entry[1]")), "{}", reply.text);
    assert_eq!(app.history_len().await, before);

    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        bundle_entry("PATCH", &format!("Patient/{a}"),
            Some(json_patch_binary(&json!([{"op": "add", "path": "/active", "value": true}]))), None),
        bundle_entry("PATCH", "Patient/missing",
            Some(json_patch_binary(&json!([{"op": "add", "path": "/active", "value": true}]))), None),
        bundle_entry("PATCH", &format!("Patient/{b}"), Some(json!({"resourceType": "Binary", "contentType": "text/plain", "data": "eA=="})), None),
    ]});
    let reply = app.post("", &batch).await;
    let statuses: Vec<&str> =
        reply.body["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["200 OK", "404 Not Found", "400 Bad Request"], "{}", reply.text);
    assert_eq!(app.get(&format!("/Patient/{a}")).await.body["active"], true);
}

#[actix_web::test]
async fn everything_includes_at_most_the_cap_of_referenced_resources_per_page() {
    let app = spawn_app().await;
    let p = create(&app, &patient("Crowded")).await;
    let cap = braid::http::EVERYTHING_MAX_REFERENCED;
    let practitioners: Vec<String> = (0..=cap).map(|n| format!("urn:uuid:00000000-0000-4000-8000-{n:012}")).collect();
    let mut entries: Vec<Value> = practitioners
        .iter()
        .map(|url| {
            bundle_entry(
                "POST",
                "Practitioner",
                Some(json!({"resourceType": "Practitioner", "active": true})),
                Some(url),
            )
        })
        .collect();
    let performers: Vec<Value> = practitioners.iter().map(|url| json!({"reference": url})).collect();
    entries.push(bundle_entry(
        "POST",
        "Observation",
        Some(json!({"resourceType": "Observation", "status": "final", "code": {"text": "crowd"},
            "subject": {"reference": format!("Patient/{p}")}, "performer": performers})),
        None,
    ));
    let reply = app.post("", &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await;
    assert_eq!(reply.status, 200, "{}", &reply.text[..reply.text.len().min(500)]);

    let everything = app.get(&format!("/Patient/{p}/$everything?_type=Observation,Practitioner")).await;
    assert_eq!(everything.status, 200);
    assert_eq!(entries_with_mode(&everything.body, "match").len(), 1);
    assert_eq!(entries_with_mode(&everything.body, "include").len(), cap, "{} references, {cap} included", cap + 1);
}
