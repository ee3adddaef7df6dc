//! The master patient index through the API: matching after writes, golden Patients and the
//! `refer` link, `Patient/$match`, the `$mdm-*` link operations and who may use them, and
//! `braid mpi train|show`.

use std::time::{Duration, Instant};

use braid::auth::users::Role;
use serde_json::{Value, json};

use crate::helpers::{AuthApp, TestApp, braid_cli, spawn_app, spawn_auth_app};

fn person(id: &str, given: &str, family: &str, birth: &str, extra: Value) -> Value {
    let mut patient = json!({"resourceType": "Patient", "id": id, "name": [{"given": [given], "family": family}],
        "birthDate": birth, "gender": "female",
        "address": [{"line": ["12 Harbour St"], "city": "Sydney", "postalCode": "2000"}]});
    for (key, value) in extra.as_object().unwrap() {
        patient[key] = value.clone();
    }
    patient
}

/// The server's origin (the FHIR base without `/fhir`).
fn origin(app: &TestApp) -> String {
    app.base.trim_end_matches("/fhir").to_owned()
}

/// Waits until the index has matched every committed Patient (GET /mpi), with `token` if
/// authorization is on.
pub(crate) async fn settled(app: &TestApp, token: Option<&str>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut request = app.client.get(format!("{}/mpi", origin(app)));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let status = app.send(request).await;
        assert_eq!(status.status, 200, "{}", status.text);
        // Caught up, and (the counters are kept just after each commit) counted: a test's
        // database is new, so a cursor past 0 means a batch of this server's.
        let cursor = status.body["feed"]["cursor"].as_u64().unwrap_or(0);
        let counted = cursor == 0 || status.body["worker"]["batches"].as_u64().unwrap_or(0) > 0;
        if status.body["feed"]["pending"] == 0 && counted {
            return status.body;
        }
        assert!(Instant::now() < deadline, "matching did not catch up: {}", status.text);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The golden Patient a source Patient is shown with (its `refer` link).
async fn golden_of(app: &TestApp, patient: &str) -> String {
    let read = app.get(&format!("/Patient/{patient}")).await;
    assert_eq!(read.status, 200, "{}", read.text);
    let refers: Vec<&str> = read.body["link"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|link| link["type"] == "refer")
        .filter_map(|link| link["other"]["reference"].as_str())
        .collect();
    assert_eq!(refers.len(), 1, "one refer link: {}", read.text);
    refers[0].strip_prefix("Patient/").unwrap().to_owned()
}

fn parameters(pairs: &[(&str, Value)]) -> Value {
    let parameter: Vec<Value> = pairs
        .iter()
        .map(|(name, value)| {
            if value.is_object() {
                json!({"name": name, "resource": value})
            } else {
                json!({"name": name, "valueString": value})
            }
        })
        .collect();
    json!({"resourceType": "Parameters", "parameter": parameter})
}

/// The links `$mdm-query-links` lists for `query`, as (golden, source, result, link source).
async fn links(app: &TestApp, query: &str) -> Vec<(String, String, String, String)> {
    let reply = app.get(&format!("/$mdm-query-links?{query}")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    described_links(&reply.body)
}

fn described_links(parameters: &Value) -> Vec<(String, String, String, String)> {
    let part = |link: &Value, name: &str| {
        link["part"]
            .as_array()
            .unwrap()
            .iter()
            .find(|part| part["name"] == name)
            .and_then(|part| part["valueString"].as_str())
            .map(|value| value.trim_start_matches("Patient/").to_owned())
            .unwrap_or_default()
    };
    parameters["parameter"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|parameter| parameter["name"] == "link")
        .map(|link| {
            (
                part(link, "goldenResourceId"),
                part(link, "sourceResourceId"),
                part(link, "matchResult"),
                part(link, "linkSource"),
            )
        })
        .collect()
}

fn history_of(parameters: &Value) -> Vec<Value> {
    parameters["parameter"][0]["part"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|part| part["name"] == "history")
        .cloned()
        .collect()
}

fn issue_text(reply: &crate::helpers::Reply) -> String {
    assert_eq!(reply.body["resourceType"], "OperationOutcome", "{}", reply.text);
    reply.body["issue"][0]["diagnostics"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn source_patients_are_matched_after_their_write_and_show_their_golden_patient() {
    let app = spawn_app().await;
    for patient in [
        person("a-1", "Catherine", "Smith", "1984-03-07", json!({})),
        person(
            "b-7",
            "Kathryn",
            "Smith",
            "1984-07-03",
            json!({"telecom": [{"system": "phone", "value": "0298765432"}]}),
        ),
        person("c-3", "Robert", "Jones", "1950-11-30", json!({"gender": "male"})),
    ] {
        let id = patient["id"].as_str().unwrap().to_owned();
        let reply = app.put(&format!("/Patient/{id}"), &patient).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        // The write's answer is the source's record as written: matching runs after it.
        assert!(reply.body.get("link").is_none(), "{}", reply.text);
    }
    let status = settled(&app, None).await;
    assert!(status["feed"]["cursor"].as_u64().unwrap() >= 3, "{status}");
    assert!(status["worker"]["matched"].as_u64().unwrap() >= 3, "{status}");
    // How many candidates each was scored against: the first none, the last two at most.
    let scored = &status["worker"]["candidates_scored"];
    assert!(scored["records"].as_u64().unwrap() >= 3, "{status}");
    assert!(scored["max"].as_u64().unwrap() <= 2 && scored["bound"] == 200, "{status}");

    let golden = golden_of(&app, "a-1").await;
    assert!(golden.starts_with("golden-"), "{golden}");
    assert_eq!(golden_of(&app, "b-7").await, golden, "phonetic given name, day and month swapped");
    // The refer link is shown, not stored: a client writing back what it read makes no new
    // version, and an old version reads as it was written.
    let read = app.get("/Patient/a-1").await;
    let written_back = app.put("/Patient/a-1", &read.body).await;
    assert_eq!(written_back.status, 200, "{}", written_back.text);
    assert_eq!(written_back.body["meta"]["versionId"], "1", "{}", written_back.text);
    assert!(app.get("/Patient/a-1/_history/1").await.body.get("link").is_none());
    let other = golden_of(&app, "c-3").await;
    assert_ne!(other, golden);

    let read = app.get(&format!("/Patient/{golden}")).await;
    assert_eq!(read.status, 200, "{}", read.text);
    assert_eq!(read.body["meta"]["tag"][0]["system"], "urn:braid:mpi");
    // Version 1 when the worker matched both members in one batch, 2 when it saw b-7 after a-1
    // had its golden Patient (the writes are separate requests, so that is up to timing): one
    // version per batch that changed it, never more.
    let version = read.body["meta"]["versionId"].as_str().unwrap().to_owned();
    assert!(version == "1" || version == "2", "{}", read.text);
    assert_eq!(read.header("etag"), Some(format!("W/\"{version}\"").as_str()));
    let members: Vec<&str> =
        read.body["link"].as_array().unwrap().iter().map(|l| l["other"]["reference"].as_str().unwrap()).collect();
    assert_eq!(members, ["Patient/a-1", "Patient/b-7"]);
    assert!(read.body["link"].as_array().unwrap().iter().all(|l| l["type"] == "seealso"));
    assert_eq!(read.body["telecom"][0]["value"], "0298765432", "the more complete member's telecom");
    let next = version.parse::<u64>().unwrap() + 1;
    assert_eq!(app.get(&format!("/Patient/{golden}/_history/{version}")).await.status, 200);
    assert_eq!(app.get(&format!("/Patient/{golden}/_history/{next}")).await.status, 404);

    // Golden Patients are not among the resources written: searches find the sources only,
    // each with its refer link.
    let search = app.get("/Patient?family=Smith").await;
    assert_eq!(crate::helpers::match_ids(&search.body), ["a-1", "b-7"]);
    for entry in search.body["entry"].as_array().unwrap() {
        assert_eq!(entry["resource"]["link"][0]["other"]["reference"], format!("Patient/{golden}"));
    }
    // And they are read-only: no write reaches them, and nothing changes.
    let history = app.history_len().await;
    let put = app.put(&format!("/Patient/{golden}"), &person(&golden, "X", "Y", "2000-01-01", json!({}))).await;
    assert_eq!(put.status, 403, "{}", put.text);
    assert!(issue_text(&put).contains("golden Patient"), "{}", put.text);
    assert_eq!(app.delete(&format!("/Patient/{golden}")).await.status, 403);
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        crate::helpers::bundle_entry("PUT", "Patient/golden-forged", Some(person("golden-forged", "A", "B", "2001-01-01", json!({}))), None)]});
    assert_eq!(app.post("", &transaction).await.status, 403);
    assert_eq!(app.history_len().await, history);
    assert_eq!(app.get(&format!("/Patient/{golden}")).await.body["meta"]["versionId"], version.as_str());

    // A member that no longer exists leaves its golden Patient; the last one takes it along.
    assert_eq!(app.delete("/Patient/c-3").await.status, 204);
    settled(&app, None).await;
    let gone = app.get(&format!("/Patient/{other}")).await;
    assert_eq!(gone.status, 410, "{}", gone.text);
    assert_eq!(app.get("/Patient/golden-0000").await.status, 404);
}

#[tokio::test]
async fn match_scores_and_grades_the_golden_patients_a_resource_would_join() {
    let app = spawn_app().await;
    for patient in [
        person("a-1", "Catherine", "Smith", "1984-03-07", json!({})),
        person("c-3", "Robert", "Jones", "1950-11-30", json!({"gender": "male"})),
    ] {
        app.put(&format!("/Patient/{}", patient["id"].as_str().unwrap()), &patient).await;
    }
    settled(&app, None).await;
    let golden = golden_of(&app, "a-1").await;

    let candidate = json!({"resourceType": "Patient", "name": [{"given": ["Cathy"], "family": "Smith"}],
        "birthDate": "1984-03-07", "address": [{"postalCode": "2000"}]});
    let reply = app.post("/Patient/$match", &parameters(&[("resource", candidate.clone())])).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["type"], "searchset");
    let entries = reply.body["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{}", reply.text);
    assert_eq!(entries[0]["resource"]["id"], golden.as_str());
    assert_eq!(entries[0]["search"]["mode"], "match");
    let score = entries[0]["search"]["score"].as_f64().unwrap();
    assert!(score >= 0.99, "{score}");
    assert_eq!(entries[0]["search"]["extension"][0]["url"], "http://hl7.org/fhir/StructureDefinition/match-grade");
    assert_eq!(entries[0]["search"]["extension"][0]["valueCode"], "certain");
    assert!(entries[0]["fullUrl"].as_str().unwrap().ends_with(&format!("/Patient/{golden}")));

    // Less evidence: a probable or possible match, which onlyCertainMatches leaves out.
    let weaker = json!({"resourceType": "Patient", "name": [{"given": ["Catherine"], "family": "Smith"}]});
    let reply = app.post("/Patient/$match", &parameters(&[("resource", weaker.clone())])).await;
    let grades: Vec<&str> = reply.body["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| e["search"]["extension"][0]["valueCode"].as_str().unwrap())
        .collect();
    assert!(grades.iter().all(|grade| *grade != "certain"), "{}", reply.text);
    let certain_only =
        parameters(&[("resource", weaker), ("onlyCertainMatches", json!("true")), ("count", json!("5"))]);
    let reply = app.post("/Patient/$match", &certain_only).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert!(reply.body.get("entry").is_none_or(|e| e.as_array().unwrap().is_empty()), "{}", reply.text);
    // A stranger matches nobody.
    let stranger = json!({"resourceType": "Patient", "name": [{"given": ["Zoe"], "family": "Quist"}],
        "birthDate": "2011-11-11"});
    let reply = app.post("/Patient/$match", &parameters(&[("resource", stranger)])).await;
    assert_eq!(reply.body["total"], 0, "{}", reply.text);

    // Bad requests: each a clear 400 (or 404), and nothing is matched.
    let cases: Vec<(Value, &str)> = vec![
        (json!({"resourceType": "Parameters"}), "'resource'"),
        (parameters(&[("resource", json!({"resourceType": "Observation", "status": "final"}))]), "Patient"),
        (parameters(&[("resource", candidate.clone()), ("threshold", json!("0.3"))]), "unknown parameter 'threshold'"),
        (parameters(&[("resource", candidate.clone()), ("count", json!("many"))]), "'count'"),
        (parameters(&[("resource", candidate.clone()), ("count", json!("1000"))]), "'count'"),
        (parameters(&[("resource", candidate.clone()), ("onlyCertainMatches", json!("maybe"))]), "true or false"),
        (candidate.clone(), "Parameters"),
    ];
    for (body, expected) in cases {
        let reply = app.post("/Patient/$match", &body).await;
        assert_eq!(reply.status, 400, "{body}: {}", reply.text);
        assert!(issue_text(&reply).contains(expected), "{expected}: {}", reply.text);
    }
    let malformed = app
        .send(
            app.client
                .post(app.url("/Patient/$match"))
                .header("content-type", "application/fhir+json")
                .body("{\"resourceType\":"),
        )
        .await;
    assert_eq!(malformed.status, 400, "{}", malformed.text);
    let wrong_type = app.post("/Observation/$match", &parameters(&[("resource", candidate)])).await;
    assert_eq!(wrong_type.status, 404, "{}", wrong_type.text);
}

#[tokio::test]
async fn operators_change_links_and_the_matcher_never_undoes_a_manual_decision() {
    let app = spawn_app().await;
    for patient in [
        person("a-1", "Ann", "Lee", "1990-01-02", json!({})),
        person("b-1", "Ann", "Lee", "1990-01-02", json!({"telecom": [{"system": "phone", "value": "0411111111"}]})),
        person("c-1", "Omar", "Haddad", "1961-06-30", json!({"gender": "male"})),
    ] {
        app.put(&format!("/Patient/{}", patient["id"].as_str().unwrap()), &patient).await;
    }
    settled(&app, None).await;
    let ann = golden_of(&app, "a-1").await;
    assert_eq!(golden_of(&app, "b-1").await, ann);
    let omar = golden_of(&app, "c-1").await;
    assert_eq!(links(&app, "resourceId=b-1").await, [(ann.clone(), "b-1".into(), "MATCH".into(), "AUTO".into())]);
    assert_eq!(links(&app, &format!("goldenResourceId=Patient/{ann}")).await.len(), 2);
    assert_eq!(links(&app, "matchResult=MATCH&_count=2").await.len(), 2);
    let page = app.get("/$mdm-query-links?matchResult=MATCH&_count=2").await;
    assert_eq!(page.body["parameter"][0]["name"], "next", "{}", page.text);
    assert_eq!(links(&app, "matchResult=MATCH&_count=2&_offset=2").await.len(), 1);

    // b-1 is not Ann Lee of a-1: it leaves for a golden Patient of its own, and a new version
    // of b-1 does not take it back.
    let reply = app
        .post(
            "/$mdm-update-link",
            &parameters(&[
                ("goldenResourceId", json!(format!("Patient/{ann}"))),
                ("resourceId", json!("Patient/b-1")),
                ("matchResult", json!("NO_MATCH")),
            ]),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["id"], ann.as_str(), "the golden Patient is returned");
    assert_eq!(reply.body["link"].as_array().unwrap().len(), 1, "a-1 only: {}", reply.text);
    let own = golden_of(&app, "b-1").await;
    assert_ne!(own, ann);
    let b_links = links(&app, "resourceId=b-1").await;
    assert!(b_links.contains(&(ann.clone(), "b-1".into(), "NO_MATCH".into(), "MANUAL".into())), "{b_links:?}");
    assert!(b_links.contains(&(own.clone(), "b-1".into(), "MATCH".into(), "AUTO".into())), "{b_links:?}");
    let described = app.get(&format!("/$mdm-query-links?resourceId=b-1&goldenResourceId={ann}")).await;
    let history = history_of(&described.body);
    assert_eq!(history.len(), 1, "{}", described.text);
    assert_eq!(history[0]["part"][0]["valueString"], "MATCH", "the state it left: {}", described.text);
    let mut changed = person("b-1", "Ann", "Lee", "1990-01-02", json!({"active": true}));
    changed["telecom"] = json!([{"system": "phone", "value": "0411111111"}]);
    app.put("/Patient/b-1", &changed).await;
    settled(&app, None).await;
    assert_eq!(golden_of(&app, "b-1").await, own, "the manual NO_MATCH holds");

    // A link that exists is not created again; an operator's MATCH moves b-1 back, and the
    // golden Patient it leaves, now empty, is deleted.
    let create = parameters(&[
        ("goldenResourceId", json!(ann.clone())),
        ("resourceId", json!("b-1")),
        ("matchResult", json!("MATCH")),
    ]);
    let reply = app.post("/$mdm-create-link", &create).await;
    assert_eq!(reply.status, 409, "{}", reply.text);
    let reply = app.post("/$mdm-update-link", &create).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(golden_of(&app, "b-1").await, ann);
    assert_eq!(app.get(&format!("/Patient/{own}")).await.status, 410);
    assert_eq!(links(&app, "resourceId=b-1").await, [(ann.clone(), "b-1".into(), "MATCH".into(), "MANUAL".into())]);

    // Merge Omar into Ann's golden Patient (wrongly), then unmerge: Omar's stands again.
    let merge =
        parameters(&[("fromGoldenResourceId", json!(omar.clone())), ("toGoldenResourceId", json!(ann.clone()))]);
    let reply = app.post("/$mdm-merge-golden-resources", &merge).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["link"].as_array().unwrap().len(), 3, "{}", reply.text);
    assert_eq!(golden_of(&app, "c-1").await, ann);
    let replaced = app.get(&format!("/Patient/{omar}")).await;
    assert_eq!(replaced.body["active"], false, "{}", replaced.text);
    assert_eq!(replaced.body["link"][0]["type"], "replaced-by");
    assert_eq!(replaced.body["link"][0]["other"]["reference"], format!("Patient/{ann}"));
    let reply = app.post("/$mdm-merge-golden-resources", &merge).await;
    assert_eq!(reply.status, 400, "a merged golden Patient is not merged again: {}", reply.text);

    let reply = app.post("/$mdm-unmerge", &parameters(&[("goldenResourceId", json!(ann.clone()))])).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["parameter"][0]["valueString"], format!("Patient/{omar}"));
    assert_eq!(golden_of(&app, "c-1").await, omar);
    let restored = app.get(&format!("/Patient/{omar}")).await;
    assert_eq!(restored.body["active"], true, "{}", restored.text);
    let c_link = app.get("/$mdm-query-links?resourceId=c-1").await;
    assert_eq!(described_links(&c_link.body), [(omar.clone(), "c-1".into(), "MATCH".into(), "AUTO".into())]);
    let history = history_of(&c_link.body);
    assert_eq!(history.len(), 2, "merged, then back: {}", c_link.text);
    assert!(history.iter().any(|event| event.to_string().contains(&ann)), "{}", c_link.text);

    // Split b-1 off Ann's golden Patient: a new one; a-1 and b-1 are kept apart from now on.
    let reply = app
        .post("/$mdm-unmerge", &parameters(&[("goldenResourceId", json!(ann.clone())), ("resourceId", json!("b-1"))]))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let split = golden_of(&app, "b-1").await;
    assert_ne!(split, ann);
    assert_eq!(golden_of(&app, "a-1").await, ann);
    let a_links = links(&app, "resourceId=a-1").await;
    assert!(a_links.contains(&(split.clone(), "a-1".into(), "NO_MATCH".into(), "MANUAL".into())), "{a_links:?}");
    let reply = app
        .post("/$mdm-unmerge", &parameters(&[("goldenResourceId", json!(ann.clone())), ("resourceId", json!("a-1"))]))
        .await;
    assert_eq!(reply.status, 400, "the last member cannot be split off: {}", reply.text);

    // A third record of Ann Lee matches both golden Patients: they are flagged as possible
    // duplicates, until an operator says they are not.
    app.put("/Patient/d-1", &person("d-1", "Ann", "Lee", "1990-01-02", json!({}))).await;
    settled(&app, None).await;
    // a-1 and b-1 were ruled apart: their golden Patients are not flagged again.
    assert!(links(&app, "matchResult=POSSIBLE_DUPLICATE").await.is_empty());
    let reply = app
        .post(
            "/$mdm-not-duplicate",
            &parameters(&[("goldenResourceId", json!(ann.clone())), ("targetGoldenResourceId", json!(omar.clone()))]),
        )
        .await;
    assert_eq!(reply.status, 404, "Ann and Omar were never flagged: {}", reply.text);

    // Bad requests change nothing.
    let before = app.get("/$mdm-query-links?_count=100").await.body;
    for (operation, body, status) in [
        (
            "/$mdm-update-link",
            parameters(&[("goldenResourceId", json!(ann.clone())), ("resourceId", json!("a-1"))]),
            400,
        ),
        (
            "/$mdm-update-link",
            parameters(&[
                ("goldenResourceId", json!(ann.clone())),
                ("resourceId", json!("a-1")),
                ("matchResult", json!("MAYBE")),
            ]),
            400,
        ),
        (
            "/$mdm-update-link",
            parameters(&[
                ("goldenResourceId", json!("golden-nobody")),
                ("resourceId", json!("a-1")),
                ("matchResult", json!("MATCH")),
            ]),
            404,
        ),
        (
            "/$mdm-create-link",
            parameters(&[
                ("goldenResourceId", json!(ann.clone())),
                ("resourceId", json!("nobody")),
                ("matchResult", json!("MATCH")),
            ]),
            404,
        ),
        (
            "/$mdm-update-link",
            parameters(&[
                ("goldenResourceId", json!(ann.clone())),
                ("resourceId", json!("a-1")),
                ("matchResult", json!("MATCH")),
                ("extra", json!("1")),
            ]),
            400,
        ),
        (
            "/$mdm-merge-golden-resources",
            parameters(&[("fromGoldenResourceId", json!(ann.clone())), ("toGoldenResourceId", json!(ann.clone()))]),
            400,
        ),
        ("/$mdm-update-link", json!({"resourceType": "Patient"}), 400),
    ] {
        let reply = app.post(operation, &body).await;
        assert_eq!(reply.status, status, "{operation} {body}: {}", reply.text);
        assert_eq!(reply.body["resourceType"], "OperationOutcome");
    }
    assert_eq!(app.get("/$mdm-query-links?_count=100").await.body["parameter"], before["parameter"]);
    let reply = app.get("/$mdm-query-links?matchResult=SOMETIMES").await;
    assert_eq!(reply.status, 400, "{}", reply.text);
    let reply = app.get("/$mdm-query-links?_offset=99999999").await;
    assert_eq!(reply.status, 400, "{}", reply.text);
}

#[tokio::test]
async fn possible_duplicates_are_flagged_and_an_operator_rules_them_out() {
    let app = spawn_app().await;
    app.put("/Patient/p-1", &person("p-1", "Mia", "Novak", "1977-04-04", json!({}))).await;
    app.put("/Patient/p-2", &person("p-2", "Mia", "Novak", "1977-04-04", json!({}))).await;
    settled(&app, None).await;
    let first = golden_of(&app, "p-1").await;
    // An operator splits p-2 off by NO_MATCH alone (no ruling between the golden Patients).
    let reply = app
        .post(
            "/$mdm-update-link",
            &parameters(&[
                ("goldenResourceId", json!(first.clone())),
                ("resourceId", json!("p-2")),
                ("matchResult", json!("NO_MATCH")),
            ]),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let second = golden_of(&app, "p-2").await;
    app.put("/Patient/p-3", &person("p-3", "Mia", "Novak", "1977-04-04", json!({}))).await;
    settled(&app, None).await;
    let flagged = links(&app, "matchResult=POSSIBLE_DUPLICATE").await;
    assert_eq!(flagged.len(), 1, "{flagged:?}");
    let pair = [flagged[0].0.clone(), flagged[0].1.clone()];
    assert!(pair.contains(&first) && pair.contains(&second), "{pair:?}");
    let reply = app
        .post(
            "/$mdm-not-duplicate",
            &parameters(&[
                ("goldenResourceId", json!(first.clone())),
                ("targetGoldenResourceId", json!(second.clone())),
            ]),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.body["parameter"][0]["valueBoolean"], true);
    assert!(links(&app, "matchResult=POSSIBLE_DUPLICATE").await.is_empty());
    // A fourth record does not flag them again.
    app.put("/Patient/p-4", &person("p-4", "Mia", "Novak", "1977-04-04", json!({}))).await;
    settled(&app, None).await;
    assert!(links(&app, "matchResult=POSSIBLE_DUPLICATE").await.is_empty());
}

#[tokio::test]
async fn only_operators_change_links_and_a_patient_sees_only_their_own_golden_patient() {
    let AuthApp { app, store, data } = spawn_auth_app().await;
    let server = AuthApp { app, store, data };
    let system = server.token("ops", "system/*.cruds", None);
    for patient in [
        person("a-1", "Ann", "Lee", "1990-01-02", json!({})),
        person("b-1", "Ann", "Lee", "1990-01-02", json!({})),
        person("c-1", "Omar", "Haddad", "1961-06-30", json!({"gender": "male"})),
    ] {
        let id = patient["id"].as_str().unwrap().to_owned();
        let reply = server.app.put_with_token(&format!("/Patient/{id}"), &system, &patient).await;
        assert_eq!(reply.status, 201, "{}", reply.text);
    }
    settled(&server.app, Some(&system)).await;
    let read = |token: String, path: String| {
        let app = &server.app;
        async move { app.send(app.client.get(app.url(&path)).bearer_auth(token)).await }
    };
    let ann = read(system.clone(), "/Patient/a-1".into()).await.body["link"][0]["other"]["reference"]
        .as_str()
        .unwrap()
        .trim_start_matches("Patient/")
        .to_owned();
    let omar = read(system.clone(), "/Patient/c-1".into()).await.body["link"][0]["other"]["reference"]
        .as_str()
        .unwrap()
        .trim_start_matches("Patient/")
        .to_owned();

    // A patient reads their own golden Patient and no other; reading the index is not theirs.
    let patient = server.token("app", "patient/*.rs", Some("a-1"));
    assert_eq!(read(patient.clone(), format!("/Patient/{ann}")).await.status, 200);
    assert_eq!(read(patient.clone(), format!("/Patient/{omar}")).await.status, 404);
    assert_eq!(read(patient.clone(), "/$mdm-query-links".into()).await.status, 403);
    let matched = server
        .app
        .post_with_token(
            "/Patient/$match",
            &patient,
            &parameters(&[("resource", person("x", "Ann", "Lee", "1990-01-02", json!({})))]),
        )
        .await;
    assert_eq!(matched.status, 403, "{}", matched.text);
    let status =
        server.app.send(server.app.client.get(format!("{}/mpi", origin(&server.app))).bearer_auth(&patient)).await;
    assert_eq!(status.status, 403, "{}", status.text);

    let change = parameters(&[
        ("goldenResourceId", json!(ann.clone())),
        ("resourceId", json!("b-1")),
        ("matchResult", json!("NO_MATCH")),
    ]);
    // Reading every Patient is not enough to change links; nor is a practitioner's role.
    let practitioner = server.user_token("ehr", "user/*.cruds", Role::Practitioner);
    let reader = server.token("reader", "system/Patient.rs", None);
    for token in [&practitioner, &reader, &patient] {
        let reply = server.app.post_with_token("/$mdm-update-link", token, &change).await;
        assert_eq!(reply.status, 403, "{}", reply.text);
    }
    let listed = server
        .app
        .send(server.app.client.get(server.app.url("/$mdm-query-links?resourceId=b-1")).bearer_auth(&practitioner))
        .await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert_eq!(described_links(&listed.body)[0].2, "MATCH", "nothing changed");
    // An administrator may; so may a backend service with system scopes.
    let admin = server.user_token("console", "user/*.cruds", Role::Admin);
    let reply = server.app.post_with_token("/$mdm-update-link", &admin, &change).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let back = parameters(&[
        ("goldenResourceId", json!(ann.clone())),
        ("resourceId", json!("b-1")),
        ("matchResult", json!("MATCH")),
    ]);
    let reply = server.app.post_with_token("/$mdm-update-link", &system, &back).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    // No token at all: 401.
    let reply = server.app.post("/$mdm-update-link", &back).await;
    assert_eq!(reply.status, 401, "{}", reply.text);
}

/// PUT entries for the FEBRL 4a and 4b records of the people numbered below `people` (every
/// 4b record is a corrupted copy of one in 4a).
fn febrl_entries(people: u32) -> Vec<Value> {
    let mut entries = Vec::new();
    for file in ["dataset4a.csv", "dataset4b.csv"] {
        let text = std::fs::read_to_string(format!("{}/tests/data/febrl/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        for (patient, person) in braid::mpi::febrl::patients(&text) {
            if person.is_some_and(|person| person < people) {
                let id = patient["id"].as_str().unwrap().to_owned();
                entries.push(crate::helpers::bundle_entry("PUT", &format!("Patient/{id}"), Some(patient), None));
            }
        }
    }
    entries
}

async fn push_batches(app: &TestApp, token: &str, entries: &[Value]) {
    for chunk in entries.chunks(200) {
        let bundle = json!({"resourceType": "Bundle", "type": "batch", "entry": chunk});
        let reply = app.post_with_token("", token, &bundle).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
    }
}

#[tokio::test]
async fn braid_mpi_train_learns_from_the_database_and_keeps_manual_links() {
    let AuthApp { app, store, data } =
        crate::helpers::spawn_auth_app_with(|settings| settings.mpi_auto_train = false).await;
    let server = AuthApp { app, store, data };
    let system = server.token("ops", "system/*.cruds", None);
    // Two FEBRL files of 1,000 people each, the second a corrupted copy of the first.
    let entries = febrl_entries(1_000);
    assert!(entries.len() > 1_500, "{}", entries.len());
    push_batches(&server.app, &system, &entries).await;
    settled(&server.app, Some(&system)).await;
    let before = braid_cli(&server.data, &["mpi", "show"]).await;
    assert!(before.status.success(), "{}", String::from_utf8_lossy(&before.stderr));
    let shown: Value = serde_json::from_slice(&before.stdout).unwrap();
    assert_eq!(shown["trained"], false, "the shipped parameters until trained");
    assert_eq!(shown["counts"]["source_patients"].as_u64().unwrap() as usize, entries.len());
    assert!(shown["parameters"]["fields"]["given"]["exact"]["m"].as_f64().is_some());

    // An operator's decision before training.
    let links = server
        .app
        .send(server.app.client.get(server.app.url("/$mdm-query-links?resourceId=rec-1-org")).bearer_auth(&system))
        .await;
    let golden = described_links(&links.body)[0].0.clone();
    let manual = parameters(&[
        ("goldenResourceId", json!(golden.clone())),
        ("resourceId", json!("rec-1-org")),
        ("matchResult", json!("NO_MATCH")),
    ]);
    assert_eq!(server.app.post_with_token("/$mdm-update-link", &system, &manual).await.status, 200);

    let trained = braid_cli(&server.data, &["mpi", "train", "--u-pairs", "100000"]).await;
    assert!(trained.status.success(), "{}", String::from_utf8_lossy(&trained.stderr));
    let report: Value = serde_json::from_slice(&trained.stdout).unwrap();
    assert_eq!(report["training"]["records"].as_u64().unwrap() as usize, entries.len());
    assert_eq!(report["rescored"].as_u64().unwrap() as usize, entries.len());
    assert!(report["training"]["expected_matches"].as_f64().unwrap() > 500.0, "{report}");

    let after: Value = serde_json::from_slice(&braid_cli(&server.data, &["mpi", "show"]).await.stdout).unwrap();
    assert_eq!(after["trained"], true);
    assert_eq!(after["trained_at"], report["trained_at"]);
    assert_ne!(after["parameters"], shown["parameters"]);
    // The manual NO_MATCH survived re-scoring.
    let links = server
        .app
        .send(
            server
                .app
                .client
                .get(server.app.url(&format!("/$mdm-query-links?resourceId=rec-1-org&goldenResourceId={golden}")))
                .bearer_auth(&system),
        )
        .await;
    assert_eq!(described_links(&links.body), [(golden, "rec-1-org".into(), "NO_MATCH".into(), "MANUAL".into())]);
    // Most people's two records share a golden Patient.
    let matched = after["counts"]["links"]["MATCH"].as_u64().unwrap();
    let goldens = after["counts"]["golden_patients"].as_u64().unwrap();
    assert_eq!(matched as usize, entries.len(), "{after}");
    assert!(goldens < 1_100, "{after}");
}

fn observation(id: &str, patient: &str, code: &str, time: &str, value: f64) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")}, "effectiveDateTime": time,
        "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"}})
}

fn appointment(id: &str, patient: &str, start: &str, end: &str) -> Value {
    json!({"resourceType": "Appointment", "id": id, "status": "booked", "start": start, "end": end,
        "participant": [{"actor": {"reference": format!("Patient/{patient}")}, "status": "accepted"},
            {"actor": {"display": "Dr Mary Who"}, "status": "accepted"}]})
}

fn entry_ids(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|entry| entry["search"]["mode"] == "match")
        .map(|entry| {
            format!(
                "{}/{}",
                entry["resource"]["resourceType"].as_str().unwrap(),
                entry["resource"]["id"].as_str().unwrap()
            )
        })
        .collect()
}

fn extension_references(resource: &Value, url: &str) -> Vec<(String, String)> {
    resource["extension"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|extension| extension["url"] == url)
        .map(|extension| {
            (
                extension["valueReference"]["reference"].as_str().unwrap().to_owned(),
                extension["valueReference"]["display"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn resource_in<'a>(bundle: &'a Value, reference: &str) -> &'a Value {
    let (kind, id) = reference.split_once('/').unwrap();
    bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| &entry["resource"])
        .find(|resource| resource["resourceType"] == kind && resource["id"] == id)
        .unwrap_or_else(|| panic!("{reference} in {bundle}"))
}

#[tokio::test]
async fn a_golden_patient_is_one_record_across_sources_with_each_fact_once_and_conflicts_flagged() {
    let server = spawn_auth_app().await;
    let clinic = crate::sources::add_source(&server, "clinic", false).await;
    let hosp = crate::sources::add_source(&server, "hosp", false).await;
    let operator = server.token("ops", "system/*.cruds", None);
    let push = |token: String, resource: Value| {
        let app = &server.app;
        async move {
            let path = format!("/{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
            let reply = app.put_with_token(&path, &token, &resource).await;
            assert!(reply.status == 201 || reply.status == 200, "{path}: {}", reply.text);
        }
    };
    let heart_rate = "8867-4";
    for resource in [
        person("p1", "Catherine", "Smith", "1984-03-07", json!({})),
        person("p2", "Robert", "Jones", "1950-11-30", json!({"gender": "male"})),
        observation("o1", "p1", heart_rate, "2026-05-01T09:00:00Z", 72.0),
        observation("o2", "p1", "29463-7", "2026-05-02T09:00:00Z", 80.0),
        observation("o3", "p2", heart_rate, "2026-05-01T09:00:00Z", 72.0),
        appointment("ap1", "p1", "2026-06-01T10:00:00Z", "2026-06-01T10:30:00Z"),
    ] {
        push(clinic.token.clone(), resource).await;
    }
    for resource in [
        person(
            "x9",
            "Kathryn",
            "Smith",
            "1984-07-03",
            json!({"telecom": [{"system": "phone", "value": "0298765432"}]}),
        ),
        // The same heart rate at the same time, written with another offset.
        observation("h1", "x9", heart_rate, "2026-05-01T11:00:00+02:00", 72.0),
        observation("h2", "x9", heart_rate, "2026-05-03T09:00:00Z", 90.0),
        appointment("ha", "x9", "2026-06-01T10:00:00Z", "2026-06-01T10:30:00Z"),
        appointment("hb", "x9", "2026-06-01T10:15:00Z", "2026-06-01T11:00:00Z"),
    ] {
        push(hosp.token.clone(), resource).await;
    }
    settled(&server.app, Some(&operator)).await;
    let get = |token: &str, path: &str| {
        let app = &server.app;
        let request = app.client.get(app.url(path)).bearer_auth(token);
        let path = path.to_owned();
        async move {
            let reply = app.send(request).await;
            assert_eq!(reply.status, 200, "{path}: {}", reply.text);
            reply.body
        }
    };
    let read = get(&operator, "/Patient/clinic-p1").await;
    let golden = read["link"][0]["other"]["reference"].as_str().unwrap().trim_start_matches("Patient/").to_owned();
    assert!(golden.starts_with("golden-"), "{read}");
    let hosp_patient = get(&operator, "/Patient/hosp-x9").await;
    assert_eq!(hosp_patient["link"][0]["other"]["reference"], format!("Patient/{golden}"));

    // The person's Observations, from both sources, the shared heart rate once, naming both.
    let expected = ["Observation/clinic-o1", "Observation/clinic-o2", "Observation/hosp-h2"];
    for path in [
        format!("/Observation?patient={golden}"),
        format!("/Observation?subject=Patient/{golden}"),
        format!("/Patient/{golden}/Observation"),
    ] {
        let bundle = get(&operator, &path).await;
        let mut ids = entry_ids(&bundle);
        ids.sort();
        assert_eq!(ids, expected, "{path}");
        let reported = extension_references(resource_in(&bundle, "Observation/clinic-o1"), "urn:braid:reported-by");
        assert_eq!(
            reported,
            [
                ("Observation/clinic-o1".to_owned(), "clinic".to_owned()),
                ("Observation/hosp-h1".to_owned(), "hosp".to_owned())
            ],
            "{path}"
        );
        assert!(extension_references(resource_in(&bundle, "Observation/hosp-h2"), "urn:braid:reported-by").is_empty());
    }
    // Narrowed by code; and a duplicate whose stand-in is filtered out is shown itself.
    let bundle = get(&operator, &format!("/Observation?patient={golden}&code=http://loinc.org|{heart_rate}")).await;
    assert_eq!(entry_ids(&bundle).len(), 2, "{bundle}");
    let bundle = get(&operator, &format!("/Observation?patient={golden}&_id=hosp-h1")).await;
    assert_eq!(entry_ids(&bundle), ["Observation/hosp-h1"]);
    // Another person's identical reading is theirs alone; a source Patient's own search is as
    // its source wrote it.
    let bundle = get(&operator, "/Observation?patient=clinic-p1").await;
    assert_eq!(entry_ids(&bundle), ["Observation/clinic-o1", "Observation/clinic-o2"]);
    // _include follows to the source Patients.
    let bundle = get(&operator, &format!("/Observation?patient={golden}&_include=Observation:subject")).await;
    let included: Vec<&str> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert!(included.contains(&"clinic-p1") && included.contains(&"hosp-x9"), "{included:?}");

    // Appointments: the same visit once; another provider's overlapping one flagged.
    let bundle = get(&operator, &format!("/Appointment?patient={golden}")).await;
    let mut ids = entry_ids(&bundle);
    ids.sort();
    assert_eq!(ids, ["Appointment/clinic-ap1", "Appointment/hosp-hb"]);
    let visit = resource_in(&bundle, "Appointment/clinic-ap1");
    assert_eq!(extension_references(visit, "urn:braid:reported-by").len(), 2, "{visit}");
    assert_eq!(
        extension_references(visit, "urn:braid:conflicts-with"),
        [("Appointment/hosp-hb".to_owned(), "hosp".to_owned())]
    );
    let overlapping = resource_in(&bundle, "Appointment/hosp-hb");
    assert_eq!(
        extension_references(overlapping, "urn:braid:conflicts-with"),
        [("Appointment/clinic-ap1".to_owned(), "clinic".to_owned())],
        "the same source's own copy of the visit is no conflict"
    );
    assert!(overlapping["meta"]["tag"].as_array().unwrap().iter().any(|t| t["code"] == "conflict"));

    // $everything: the golden Patient first, then both sources' records as one.
    let everything = get(&operator, &format!("/Patient/{golden}/$everything?_count=50")).await;
    assert_eq!(everything["entry"][0]["resource"]["id"], golden.as_str());
    let ids = entry_ids(&everything);
    for id in
        ["Patient/clinic-p1", "Patient/hosp-x9", "Observation/clinic-o1", "Observation/hosp-h2", "Appointment/hosp-hb"]
    {
        assert!(ids.contains(&id.to_owned()), "{id} in {ids:?}");
    }
    for id in ["Observation/hosp-h1", "Appointment/hosp-ha", "Observation/clinic-o3", "Patient/clinic-p2"] {
        assert!(!ids.contains(&id.to_owned()), "{id} not in {ids:?}");
    }

    // The patient, signed in as the golden Patient, sees the whole person and nothing else.
    let patient = server.token("portal", "patient/*.rs", Some(&golden));
    let bundle = get(&patient, "/Observation").await;
    let mut ids = entry_ids(&bundle);
    ids.sort();
    assert_eq!(ids, expected);
    assert_eq!(get(&patient, &format!("/Patient/{golden}")).await["id"], golden.as_str());
    assert_eq!(get(&patient, "/Patient/hosp-x9").await["id"], "hosp-x9");
    let app = &server.app;
    let other = app.send(app.client.get(app.url("/Patient/clinic-p2")).bearer_auth(&patient)).await;
    assert_eq!(other.status, 404, "{}", other.text);
    let other = app.send(app.client.get(app.url("/Observation/clinic-o3")).bearer_auth(&patient)).await;
    assert_eq!(other.status, 404, "{}", other.text);
    assert!(entry_ids(&get(&patient, "/Observation?patient=clinic-p2").await).is_empty());

    // A page link made before an unmerge is refused after it: no page mixes two states.
    let first = get(&operator, &format!("/Observation?patient={golden}&_count=1")).await;
    let next = crate::helpers::next_link(&first).expect("a next page");
    let unmerge = parameters(&[("goldenResourceId", json!(golden.clone())), ("resourceId", json!("hosp-x9"))]);
    let reply = server.app.post_with_token("/$mdm-unmerge", &operator, &unmerge).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let stale = app.send(app.client.get(&next).bearer_auth(&operator)).await;
    assert_eq!(stale.status, 400, "{}", stale.text);
    // And the views change at once: the hospital's records are another person's now.
    let bundle = get(&operator, &format!("/Observation?patient={golden}")).await;
    assert_eq!(entry_ids(&bundle), ["Observation/clinic-o1", "Observation/clinic-o2"]);
    assert!(extension_references(resource_in(&bundle, "Observation/clinic-o1"), "urn:braid:reported-by").is_empty());
    let bundle = get(&patient, "/Observation").await;
    assert_eq!(entry_ids(&bundle).len(), 2, "the patient's token follows the unmerge: {bundle}");
}

#[tokio::test]
async fn the_index_trains_on_its_own_once_it_holds_enough_patients() {
    let server = spawn_auth_app().await;
    let system = server.token("ops", "system/*.cruds", None);
    let entries = febrl_entries(520);
    assert!(entries.len() >= 1_000, "{}", entries.len());
    push_batches(&server.app, &system, &entries).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        let status = settled(&server.app, Some(&system)).await;
        if !status["trained_at"].is_null() && status["training"] == false {
            break status;
        }
        assert!(Instant::now() < deadline, "no training: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status["source_patients"].as_u64().unwrap() as usize, entries.len());
    let shown: Value = serde_json::from_slice(&braid_cli(&server.data, &["mpi", "show"]).await.stdout).unwrap();
    assert_eq!(shown["trained"], true);
    // Training starts as soon as the index holds 1,000 source Patients: the batches pushed
    // after that moment are matched afterwards, so it learned from 1,000 to all of them, and
    // the next training waits for twice what it learned from.
    let trained_on = shown["training"]["records"].as_u64().unwrap() as usize;
    assert!((1_000..=entries.len()).contains(&trained_on), "{shown}");
    assert_eq!(status["next_training_at"].as_u64().unwrap() as usize, 2 * trained_on, "{status}");
    // The links were re-scored with what was learned: most people are one golden Patient.
    assert!(shown["counts"]["golden_patients"].as_u64().unwrap() < 600, "{shown}");
}

#[tokio::test]
async fn the_demo_braids_simulated_ehrs_into_golden_patients() {
    let dir = tempfile::tempdir().unwrap();
    let settings = braid::config::Settings {
        listen: "127.0.0.1:0".into(),
        data: dir.path().join("braid.redb"),
        workers: 2,
        auth: braid::config::AuthMode::Off,
        ..braid::config::Settings::default()
    };
    let application = braid::startup::Application::build(&settings).await.unwrap();
    let base = format!("http://127.0.0.1:{}/fhir", application.port());
    let keys = dir.path().join("keys");
    let braided = braid::demo::load_braid(
        application.store(),
        application.sources(),
        application.mpi(),
        &braid::http::Limits::from_settings(&settings),
        &base,
        &keys,
    )
    .await
    .unwrap();
    tokio::spawn(application.run_until_stopped());
    let app = TestApp::at(base, tempfile::tempdir().unwrap());
    assert_eq!(braided.sources.len(), 4);
    assert!(braided.golden_patients < braided.patients, "{braided:?}");
    assert!(braided.golden_patients >= braid::demo::DEMO_PEOPLE * 9 / 10, "{braided:?}");
    assert!(braided.members.len() >= 3, "{braided:?}");
    for member in &braided.members {
        assert_eq!(golden_of(&app, member).await, braided.golden, "{member}");
    }
    let everything = app.get(&format!("/Patient/{}/$everything?_count=200", braided.golden)).await;
    assert_eq!(everything.status, 200, "{}", everything.text);
    let ids = entry_ids(&everything.body);
    for member in &braided.members {
        assert!(ids.contains(&format!("Patient/{member}")), "{member} in {ids:?}");
    }
    assert!(ids.iter().any(|id| id.starts_with("Observation/")), "{ids:?}");
    // Each EHR's key, for pushing more as it, readable by its owner only.
    for (name, _) in &braided.sources {
        let metadata = std::fs::metadata(keys.join(format!("{name}.pem"))).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(metadata.permissions().mode() & 0o777, 0o600);
    }
}
