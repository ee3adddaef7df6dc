//! Pages (searchsets, history, `$everything`, transaction and batch responses) carry stored
//! resources exactly as stored, and a first page costs the same however many resources match.

use serde_json::{Value, json};

use crate::helpers::{TestApp, bundle_entry, match_ids, spawn_app};

/// The code every resource of [`seed_odd_observation`] is searched by.
const CODE: &str = "http://loinc.org|2951-2";

/// Writes Patient/p1 and an Observation of it whose JSON has an unusual key order, a decimal
/// with a trailing zero and a non-ASCII string; returns the Observation's stored bytes (the
/// text a read answers with).
async fn seed_odd_observation(app: &TestApp) -> String {
    let patient =
        app.put("/Patient/p1", &json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Ng"}]})).await;
    assert_eq!(patient.status, 201, "{}", patient.text);
    let text = r#"{"valueQuantity":{"unit":"mmol/L","value":1.50,"system":"http://unitsofmeasure.org","code":"mmol/L"},
        "status":"final","id":"odd","code":{"coding":[{"system":"http://loinc.org","code":"2951-2"}],"text":"Sodium – Serum"},
        "resourceType":"Observation","subject":{"reference":"Patient/p1"}}"#;
    let request = app.client.put(app.url("/Observation/odd")).header("content-type", "application/fhir+json");
    let created = app.send(request.body(text)).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let read = app.get("/Observation/odd").await;
    assert_eq!(read.status, 200, "{}", read.text);
    // The stored version keeps what the client wrote: its order and its number as written.
    assert!(read.text.contains(r#""value":1.50"#), "{}", read.text);
    assert!(read.text.find("valueQuantity") < read.text.find(r#""status""#), "{}", read.text);
    assert!(read.text.contains("Sodium – Serum"), "{}", read.text);
    read.text
}

/// The entry of `bundle` whose resource has this id.
fn entry_with_id<'a>(bundle: &'a Value, id: &str) -> &'a Value {
    bundle["entry"].as_array().unwrap().iter().find(|e| e["resource"]["id"] == id).expect("an entry with that id")
}

#[actix_web::test]
async fn search_history_and_everything_pages_carry_the_stored_bytes_verbatim() {
    let app = spawn_app().await;
    let stored = seed_odd_observation(&app).await;
    let stored_value: Value = serde_json::from_str(&stored).unwrap();

    for path in [
        format!("/Observation?code={CODE}"),
        format!("/Patient/p1/Observation?code={CODE}"),
        "/Observation/odd/_history".to_owned(),
        "/Observation/_history".to_owned(),
        "/_history".to_owned(),
        "/Patient/p1/$everything".to_owned(),
    ] {
        let page = app.get(&path).await;
        assert_eq!(page.status, 200, "{path}: {}", page.text);
        // The bytes of the stored version appear in the page unchanged...
        assert!(page.text.contains(&stored), "{path}: the stored body is not in the page: {}", page.text);
        // ...and the page is one valid JSON Bundle holding it as an entry's resource.
        assert_eq!(page.body["resourceType"], "Bundle", "{path}: {}", page.text);
        let entry = entry_with_id(&page.body, "odd");
        assert_eq!(entry["resource"], stored_value, "{path}");
        assert!(entry["fullUrl"].as_str().unwrap().ends_with("/Observation/odd"), "{path}");
    }
    let search = app.get(&format!("/Observation?code={CODE}")).await;
    assert_eq!(match_ids(&search.body), ["odd"]);
    assert_eq!(search.body["type"], "searchset");
    assert_eq!(entry_with_id(&search.body, "odd")["search"], json!({"mode": "match"}));
    let everything = app.get("/Patient/p1/$everything").await;
    let mut ids = match_ids(&everything.body);
    ids.sort();
    assert_eq!(ids, ["odd", "p1"]);
    let history = app.get("/Observation/odd/_history").await;
    assert_eq!(history.body["type"], "history");
    let entry = entry_with_id(&history.body, "odd");
    // A first version is recorded as a create, whichever method made it.
    assert_eq!(entry["request"], json!({"method": "POST", "url": "Observation"}));
    assert_eq!(entry["response"]["status"], "201 Created");
    assert_eq!(entry["response"]["etag"], "W/\"1\"");
}

#[actix_web::test]
async fn transaction_and_batch_responses_carry_the_stored_bytes_verbatim() {
    let app = spawn_app().await;
    let stored = seed_odd_observation(&app).await;
    let stored_value: Value = serde_json::from_str(&stored).unwrap();
    for kind in ["transaction", "batch"] {
        let bundle = json!({"resourceType": "Bundle", "type": kind, "entry": [
            bundle_entry("GET", "Observation/odd", None, None),
            bundle_entry("GET", &format!("Observation?code={CODE}"), None, None),
            bundle_entry("POST", "Patient", Some(json!({"resourceType": "Patient", "active": true})), None),
        ]});
        let reply = app.post("", &bundle).await;
        assert_eq!(reply.status, 200, "{kind}: {}", reply.text);
        assert_eq!(reply.body["type"], format!("{kind}-response"));
        // Once read by id, once inside the nested searchset.
        assert_eq!(reply.text.matches(stored.as_str()).count(), 2, "{kind}: {}", reply.text);
        let entries = reply.body["entry"].as_array().unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0]["resource"], stored_value);
        assert_eq!(entries[0]["response"]["status"], "200 OK");
        assert_eq!(entries[0]["response"]["etag"], "W/\"1\"");
        let searchset = &entries[1]["resource"];
        assert_eq!(searchset["type"], "searchset");
        assert_eq!(match_ids(searchset), ["odd"]);
        assert_eq!(searchset["entry"][0]["resource"], stored_value);
        assert_eq!(entries[2]["response"]["status"], "201 Created");
        let created = entries[2]["resource"]["id"].as_str().expect("the created Patient is returned").to_owned();
        assert_eq!(entries[2]["resource"]["active"], true);
        // The created resource in the response is the stored one, byte for byte (read as a
        // version: a current read may show the master patient index's refer link by now).
        let read = app.get(&format!("/Patient/{created}/_history/1")).await;
        assert!(reply.text.contains(&read.text), "{kind}: {}", reply.text);
    }
}

#[actix_web::test]
async fn summary_elements_and_outcome_entries_still_shape_pages() {
    let app = spawn_app().await;
    seed_odd_observation(&app).await;
    let elements = app.get(&format!("/Observation?code={CODE}&_elements=status")).await;
    assert_eq!(elements.status, 200, "{}", elements.text);
    let resource = &entry_with_id(&elements.body, "odd")["resource"];
    assert_eq!(resource["status"], "final");
    assert!(resource.get("valueQuantity").is_none() && resource.get("code").is_none(), "{resource}");
    assert_eq!(resource["meta"]["tag"][0]["code"], "SUBSETTED");

    let contact = json!({"resourceType": "Patient", "id": "p2", "name": [{"family": "Okafor"}],
        "contact": [{"name": {"family": "Okafor"}}]});
    assert_eq!(app.put("/Patient/p2", &contact).await.status, 201);
    let summary = app.get("/Patient?family=Okafor&_summary=true").await;
    assert_eq!(summary.status, 200, "{}", summary.text);
    let resource = &entry_with_id(&summary.body, "p2")["resource"];
    assert_eq!(resource["name"][0]["family"], "Okafor");
    assert!(resource.get("contact").is_none(), "contact is not a summary element: {resource}");
    assert_eq!(resource["meta"]["tag"][0]["code"], "SUBSETTED");
    let full = app.get("/Patient?family=Okafor").await;
    assert_eq!(entry_with_id(&full.body, "p2")["resource"]["contact"][0]["name"]["family"], "Okafor");

    // An ignored parameter is reported in an outcome entry after the matches.
    let lenient = app.get(&format!("/Observation?code={CODE}&colour=blue")).await;
    assert_eq!(lenient.status, 200, "{}", lenient.text);
    let entries = lenient.body["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["resource"]["id"], "odd");
    assert_eq!(entries[1]["search"], json!({"mode": "outcome"}));
    let issue = &entries[1]["resource"]["issue"][0];
    assert_eq!(issue["severity"], "warning");
    assert_eq!(issue["expression"], json!(["colour"]));
    assert!(issue["diagnostics"].as_str().unwrap().contains("'colour' is not a search parameter"), "{issue}");
}

/// Writes `count` Observations with `code` (of `Patient/{patient}` when given) in one
/// transaction; ids are `{prefix}{n}`.
async fn seed_observations(app: &TestApp, prefix: &str, code: &str, count: usize, patient: Option<&str>) {
    let entries: Vec<Value> = (0..count)
        .map(|n| {
            let id = format!("{prefix}{n}");
            let mut observation = json!({"resourceType": "Observation", "id": id, "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "valueQuantity": {"value": n, "unit": "mmol/L"}});
            if let Some(patient) = patient {
                observation["subject"] = json!({"reference": format!("Patient/{patient}")});
            }
            bundle_entry("PUT", &format!("Observation/{id}"), Some(observation), None)
        })
        .collect();
    let reply = app.post("", &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
}

/// The units of the work budget a search used, and its plan, as `_explain=true` reports them.
async fn explained(app: &TestApp, query: &str) -> (u64, String, Value) {
    let reply = app.get(&format!("{query}&_explain=true")).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let outcome = reply.body["entry"].as_array().unwrap().iter().find(|e| e["search"]["mode"] == "outcome").unwrap();
    let diagnostics = outcome["resource"]["issue"][0]["diagnostics"].as_str().unwrap().to_owned();
    let used = diagnostics.rsplit("; ").next().unwrap().split(' ').next().unwrap().parse().unwrap();
    (used, diagnostics, reply.body)
}

#[actix_web::test]
async fn a_first_page_costs_the_same_however_many_resources_match() {
    let app = spawn_app().await;
    seed_observations(&app, "few", "few-code", 60, None).await;
    seed_observations(&app, "many", "many-code", 1500, None).await;

    let (few, few_plan, few_page) = explained(&app, "/Observation?code=http://loinc.org|few-code&_count=20").await;
    let (many, many_plan, many_page) = explained(&app, "/Observation?code=http://loinc.org|many-code&_count=20").await;
    assert_eq!(match_ids(&few_page).len(), 20);
    assert_eq!(match_ids(&many_page).len(), 20);
    assert!(match_ids(&many_page).iter().all(|id| id.starts_with("many")));
    assert!(crate::helpers::next_link(&few_page).is_some() && crate::helpers::next_link(&many_page).is_some());
    // The work is that of the page: its 20 entries and the one that tells a next page exists.
    // Counting the matches (60 or 1000+ entries) to plan a one-parameter search is not needed.
    assert_eq!(few, many, "{few_plan} / {many_plan}");
    assert!(many <= 21, "{many_plan}");
    assert!(many_plan.contains("not counted"), "{many_plan}");

    // With two parameters the planner counts, but only as far as the smaller one needs.
    let patient = json!({"resourceType": "Patient", "id": "pp"});
    assert_eq!(app.put("/Patient/pp", &patient).await.status, 201);
    seed_observations(&app, "mine", "many-code", 10, Some("pp")).await;
    seed_observations(&app, "mine-few", "few-code", 10, Some("pp")).await;
    let (few, few_plan, few_page) =
        explained(&app, "/Observation?code=http://loinc.org|few-code&subject=Patient/pp&_count=20").await;
    let (many, many_plan, many_page) =
        explained(&app, "/Observation?code=http://loinc.org|many-code&subject=Patient/pp&_count=20").await;
    assert_eq!(match_ids(&few_page).len(), 10);
    assert_eq!(match_ids(&many_page).len(), 10);
    assert!(match_ids(&many_page).iter().all(|id| id.starts_with("mine") && !id.starts_with("mine-few")));
    assert!(many_plan.starts_with("plan: scan subject"), "{many_plan}");
    assert!(few_plan.starts_with("plan: scan subject"), "{few_plan}");
    // 1,510 resources have many-code: counting stops at the first round's 100.
    assert!(many_plan.contains("code≈100+"), "{many_plan}");
    assert!(many < 200 && few < 200, "{few_plan} / {many_plan}");
}
