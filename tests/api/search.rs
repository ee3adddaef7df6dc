//! Search: each parameter type and modifier, checked on the exact set of ids returned; paging;
//! strict and lenient handling.

use serde_json::{Value, json};

use crate::helpers::{TestApp, link, match_ids, next_link, spawn_app};

/// The ids a search returns (all pages), sorted.
async fn ids(app: &TestApp, query: &str) -> Vec<String> {
    let mut found = ordered(app, query).await;
    let count = found.len();
    found.sort();
    found.dedup();
    assert_eq!(found.len(), count, "{query}: a resource appeared twice");
    found
}

fn list(ids: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    v.sort();
    v
}

async fn put(app: &TestApp, resource: Value) {
    let path = format!("/{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
    let reply = app.put(&path, &resource).await;
    assert!(reply.status == 201 || reply.status == 200, "{path}: {}", reply.text);
}

async fn seed(app: &TestApp) {
    let patients = [
        ("p1", "Müller", "Anna", "female", "1980-02-29", "http://h1|111", Some(true)),
        ("p2", "Muller", "Bob", "male", "1980-07-15", "http://h1|222", None),
        ("p3", "Smith", "Carla", "female", "1975-12-31", "http://h2|111", Some(false)),
        ("p4", "Smithson", "Dan", "other", "1981", "http://h2|444", None),
    ];
    for (id, family, given, gender, birth, identifier, active) in patients {
        let (system, value) = identifier.split_once('|').unwrap();
        let mut patient = json!({"resourceType": "Patient", "id": id, "name": [{"family": family, "given": [given]}],
            "gender": gender, "birthDate": birth, "identifier": [{"system": system, "value": value}]});
        if let Some(active) = active {
            patient["active"] = json!(active);
        }
        put(app, patient).await;
    }
    let observations = [
        ("o1", "p1", "8867-4", "Heart rate", 72.0, "/min", "2024-05-01T10:00:00Z"),
        ("o2", "p1", "8867-4", "Heart rate", 55.0, "/min", "2024-05-02T23:30:00-03:00"),
        ("o3", "p2", "8867-4", "Heart rate", 61.0, "/min", "2023-01-01"),
        ("o4", "p2", "29463-7", "Body weight", 80.5, "kg", "2024-05-01"),
        ("o5", "p3", "29463-7", "Body weight", 61.0, "kg", "2022"),
    ];
    for (id, patient, code, display, value, unit, effective) in observations {
        put(app, json!({"resourceType": "Observation", "id": id, "status": "final",
            "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns"], "tag": [{"system": "http://tags", "code": if id == "o1" { "flagged" } else { "normal" }}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
            "subject": {"reference": format!("Patient/{patient}")}, "effectiveDateTime": effective,
            "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}})).await;
    }
}

#[actix_web::test]
async fn token_parameters_match_codes_systems_and_modifiers() {
    let app = spawn_app().await;
    seed(&app).await;
    assert_eq!(ids(&app, "Patient?gender=female").await, list(&["p1", "p3"]));
    assert_eq!(ids(&app, "Patient?gender=female,other").await, list(&["p1", "p3", "p4"]));
    assert_eq!(ids(&app, "Patient?gender:not=female").await, list(&["p2", "p4"]));
    assert_eq!(ids(&app, "Patient?identifier=111").await, list(&["p1", "p3"]));
    assert_eq!(ids(&app, "Patient?identifier=http://h1|111").await, list(&["p1"]));
    assert_eq!(ids(&app, "Patient?identifier=http://h2|").await, list(&["p3", "p4"]));
    assert_eq!(ids(&app, "Patient?identifier=|111").await, list(&[]));
    assert_eq!(ids(&app, "Patient?active=true").await, list(&["p1"]));
    assert_eq!(ids(&app, "Patient?active:missing=true").await, list(&["p2", "p4"]));
    assert_eq!(ids(&app, "Patient?active:missing=false").await, list(&["p1", "p3"]));
    assert_eq!(ids(&app, "Observation?code=http://loinc.org|8867-4").await, list(&["o1", "o2", "o3"]));
    assert_eq!(ids(&app, "Observation?code:text=body").await, list(&["o4", "o5"]));
    assert_eq!(ids(&app, "Observation?_tag=http://tags|flagged").await, list(&["o1"]));
    assert_eq!(ids(&app, "Patient?_id=p2,p4").await, list(&["p2", "p4"]));
}

#[actix_web::test]
async fn string_parameters_ignore_case_and_accents_unless_exact() {
    let app = spawn_app().await;
    seed(&app).await;
    assert_eq!(ids(&app, "Patient?family=muller").await, list(&["p1", "p2"]));
    assert_eq!(ids(&app, "Patient?family=MÜL").await, list(&["p1", "p2"]));
    assert_eq!(ids(&app, "Patient?family=smith").await, list(&["p3", "p4"]));
    assert_eq!(ids(&app, "Patient?family:exact=Smith").await, list(&["p3"]));
    assert_eq!(ids(&app, "Patient?family:exact=smith").await, list(&[]));
    assert_eq!(ids(&app, "Patient?family:contains=son").await, list(&["p4"]));
    assert_eq!(ids(&app, "Patient?name=carla").await, list(&["p3"]));
    assert_eq!(ids(&app, "Patient?family=smith&gender=other").await, list(&["p4"]));
}

#[actix_web::test]
async fn date_parameters_respect_precision_prefixes_and_time_zones() {
    let app = spawn_app().await;
    seed(&app).await;
    assert_eq!(ids(&app, "Patient?birthdate=1980").await, list(&["p1", "p2"]));
    assert_eq!(ids(&app, "Patient?birthdate=1980-02-29").await, list(&["p1"]));
    assert_eq!(ids(&app, "Patient?birthdate=ge1980-03").await, list(&["p2", "p4"]));
    assert_eq!(ids(&app, "Patient?birthdate=lt1980").await, list(&["p3"]));
    assert_eq!(ids(&app, "Patient?birthdate=le1980").await, list(&["p1", "p2", "p3"]));
    assert_eq!(ids(&app, "Patient?birthdate=gt1980").await, list(&["p4"]));
    assert_eq!(ids(&app, "Patient?birthdate=sa1980-12-31").await, list(&["p4"]));
    assert_eq!(ids(&app, "Patient?birthdate=eb1976").await, list(&["p3"]));
    assert_eq!(ids(&app, "Patient?birthdate=ne1980").await, list(&["p3", "p4"]));
    // "1981" covers the whole year: it is not contained in 1981-06, but overlaps both sides.
    assert_eq!(ids(&app, "Patient?birthdate=1981-06").await, list(&[]));
    assert_eq!(ids(&app, "Patient?birthdate=ge1981-06").await, list(&["p4"]));
    // 2024-05-02T23:30-03:00 is 2024-05-03T02:30Z.
    assert_eq!(ids(&app, "Observation?date=2024-05-03").await, list(&["o2"]));
    assert_eq!(ids(&app, "Observation?date=2024-05-02").await, list(&[]));
    assert_eq!(ids(&app, "Observation?date=2024-05-02T23:30:00-03:00").await, list(&["o2"]));
    assert_eq!(ids(&app, "Observation?date=ge2024-01-01&code=http://loinc.org|8867-4").await, list(&["o1", "o2"]));
    assert_eq!(ids(&app, "Observation?date=2024-05").await, list(&["o1", "o2", "o4"]));
}

#[actix_web::test]
async fn quantity_reference_uri_and_composite_parameters() {
    let app = spawn_app().await;
    seed(&app).await;
    assert_eq!(ids(&app, "Observation?value-quantity=gt60|http://unitsofmeasure.org|/min").await, list(&["o1", "o3"]));
    assert_eq!(ids(&app, "Observation?value-quantity=61").await, list(&["o3", "o5"]));
    assert_eq!(ids(&app, "Observation?value-quantity=61||kg").await, list(&["o5"]));
    assert_eq!(ids(&app, "Observation?value-quantity=le61.0|http://unitsofmeasure.org|kg").await, list(&["o5"]));
    assert_eq!(ids(&app, "Observation?value-quantity=ap80|http://unitsofmeasure.org|kg").await, list(&["o4"]));
    assert_eq!(ids(&app, "Observation?subject=Patient/p1").await, list(&["o1", "o2"]));
    assert_eq!(ids(&app, "Observation?subject=p2").await, list(&["o3", "o4"]));
    assert_eq!(ids(&app, "Observation?patient=p3").await, list(&["o5"]));
    assert_eq!(ids(&app, "Observation?subject:Patient=p1").await, list(&["o1", "o2"]));
    assert_eq!(ids(&app, "Observation?subject:Group=p1").await, list(&[]));
    let absolute = format!("Observation?subject={}/Patient/p1", app.base);
    assert_eq!(ids(&app, &absolute).await, list(&["o1", "o2"]));
    assert_eq!(ids(&app, "Observation?_profile=http://hl7.org/fhir/StructureDefinition/vitalsigns").await.len(), 5);
    assert_eq!(ids(&app, "Observation?code-value-quantity=http://loinc.org|8867-4$gt60").await, list(&["o1", "o3"]));
    assert_eq!(ids(&app, "Observation?code-value-quantity=http://loinc.org|29463-7$lt70").await, list(&["o5"]));
}

#[actix_web::test]
async fn paging_follows_next_links_and_is_stable_under_writes() {
    let app = spawn_app().await;
    for n in 0..12 {
        put(&app, json!({"resourceType": "Patient", "id": format!("pg{n:02}"), "gender": "unknown"})).await;
    }
    let first = app.get("/Patient?gender=unknown&_count=5").await;
    assert_eq!(first.body["entry"].as_array().unwrap().len(), 5);
    let mut seen: Vec<String> = first.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect();
    // Writes between pages: a new match, a match that stops matching, a deleted match.
    put(&app, json!({"resourceType": "Patient", "id": "pg99", "gender": "unknown"})).await;
    put(&app, json!({"resourceType": "Patient", "id": "pg10", "gender": "male"})).await;
    app.delete("/Patient/pg11").await;
    let mut next = next_link(&first.body);
    while let Some(url) = next {
        assert!(url.starts_with(&app.base) && url.contains("gender=unknown") && url.contains("_count=5"), "{url}");
        let page = app.send(app.client.get(&url)).await;
        assert_eq!(page.status, 200, "{}", page.text);
        seen.extend(
            page.body["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap().to_owned()),
        );
        next = next_link(&page.body);
    }
    seen.sort();
    let expected: Vec<String> = (0..12).map(|n| format!("pg{n:02}")).collect();
    assert_eq!(seen, expected, "pages show the matches as of the first page");
    // A new search sees the writes.
    let now = ids(&app, "Patient?gender=unknown").await;
    assert!(now.contains(&"pg99".to_owned()) && !now.contains(&"pg10".to_owned()) && !now.contains(&"pg11".to_owned()));

    let tampered = app.get("/Patient?gender=unknown&_count=5&_cursor=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").await;
    tampered.assert_outcome(400);
    let first_next = first.body["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let other_query = first_next.replace("gender=unknown", "gender=male");
    app.send(app.client.get(other_query)).await.assert_outcome(400);
}

#[actix_web::test]
async fn totals_counts_and_elements() {
    let app = spawn_app().await;
    seed(&app).await;
    let count = app.get("/Observation?code=http://loinc.org|8867-4&_summary=count").await;
    assert_eq!(count.body["total"], 3);
    assert!(count.body.get("entry").is_none());
    let accurate = app.get("/Patient?family=smith&_total=accurate&_count=1").await;
    assert_eq!(accurate.body["total"], 2);
    assert_eq!(accurate.body["entry"].as_array().unwrap().len(), 1);
    assert!(app.get("/Patient?family=smith").await.body.get("total").is_none(), "no total unless asked");
    let zero = app.get("/Patient?family=smith&_count=0").await;
    assert_eq!(zero.body["total"], 2, "_count=0 asks for the count");
    assert!(zero.body.get("entry").is_none());
    let elements = app.get("/Patient?_id=p1&_elements=gender").await;
    let resource = &elements.body["entry"][0]["resource"];
    assert_eq!(resource["gender"], "female");
    assert!(resource.get("name").is_none() && resource.get("birthDate").is_none());
    assert_eq!(resource["meta"]["tag"][0]["code"], "SUBSETTED");
    let everything = app.get("/Patient").await;
    assert_eq!(everything.body["entry"].as_array().unwrap().len(), 4);
}

#[actix_web::test]
async fn unknown_parameters_are_reported_or_refused() {
    let app = spawn_app().await;
    seed(&app).await;
    let lenient = app.get("/Patient?gender=male&colour=blue").await;
    assert_eq!(lenient.status, 200);
    let matches: Vec<&Value> =
        lenient.body["entry"].as_array().unwrap().iter().filter(|e| e["search"]["mode"] == "match").collect();
    assert_eq!(matches.len(), 1);
    let outcome = lenient.body["entry"].as_array().unwrap().iter().find(|e| e["search"]["mode"] == "outcome").unwrap();
    assert_eq!(outcome["resource"]["issue"][0]["expression"][0], "colour");
    let self_link = lenient.body["link"][0]["url"].as_str().unwrap();
    assert!(self_link.contains("gender=male") && !self_link.contains("colour"), "{self_link}");

    let strict =
        app.send(app.client.get(app.url("/Patient?gender=male&colour=blue")).header("prefer", "handling=strict")).await;
    strict.assert_outcome(400);
    assert!(strict.body["issue"][0]["diagnostics"].as_str().unwrap().contains("colour"));
    app.get("/Patient?birthdate=yesterday").await.assert_outcome(400);
    app.get("/Patient?family:below=x").await.assert_outcome(400);
    app.get("/Patient?_count=lots").await.assert_outcome(400);
}

#[actix_web::test]
async fn post_search_takes_form_parameters_and_explain_shows_the_plan() {
    let app = spawn_app().await;
    seed(&app).await;
    let reply = app
        .send(
            app.client
                .post(app.url("/Observation/_search"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body("subject=Patient%2Fp1&_explain=true"),
        )
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let entries = reply.body["entry"].as_array().unwrap();
    let matched: Vec<&str> = entries
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(matched.len(), 2);
    let plan =
        entries.iter().find(|e| e["search"]["mode"] == "outcome").unwrap()["resource"]["issue"][0]["diagnostics"]
            .as_str()
            .unwrap()
            .to_owned();
    assert!(plan.starts_with("plan: scan subject"), "{plan}");
    let two_clauses = app.get("/Observation?code=http://loinc.org|8867-4&subject=Patient/p2&_explain=true").await;
    let plan = two_clauses.body["entry"].as_array().unwrap().iter().find(|e| e["search"]["mode"] == "outcome").unwrap()
        ["resource"]["issue"][0]["diagnostics"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        plan.starts_with("plan: scan subject") && plan.contains("probe [code]"),
        "the more selective clause drives: {plan}"
    );
}

/// The ids of a search's matches in the order returned, following `next` to the last page.
async fn ordered(app: &TestApp, query: &str) -> Vec<String> {
    let mut reply = app.get(&format!("/{query}")).await;
    let mut found = Vec::new();
    loop {
        assert_eq!(reply.status, 200, "{query}: {}", reply.text);
        assert_eq!(reply.body["type"], "searchset");
        for entry in reply.body["entry"].as_array().into_iter().flatten().filter(|e| e["search"]["mode"] == "match") {
            found.push(entry["resource"]["id"].as_str().unwrap().to_owned());
        }
        match reply.body["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") {
            Some(link) => reply = app.send(app.client.get(link["url"].as_str().unwrap())).await,
            None => return found,
        }
    }
}

#[actix_web::test]
async fn sort_orders_by_dates_strings_tokens_and_numbers_in_both_directions() {
    let app = spawn_app().await;
    seed(&app).await;
    assert_eq!(ordered(&app, "Patient?_sort=birthdate").await, ["p3", "p1", "p2", "p4"]);
    assert_eq!(ordered(&app, "Patient?_sort=-birthdate&_count=3").await, ["p4", "p2", "p1", "p3"]);
    assert_eq!(ordered(&app, "Patient?_sort=family,given").await, ["p1", "p2", "p3", "p4"]);
    assert_eq!(ordered(&app, "Patient?_sort=gender,-birthdate&_count=1").await, ["p1", "p3", "p2", "p4"]);
    // o3 and o5 tie (61): ties follow the id in the key's direction, as a descending index read does.
    assert_eq!(ordered(&app, "Observation?_sort=-value-quantity").await, ["o4", "o1", "o5", "o3", "o2"]);
    assert_eq!(ordered(&app, "Observation?code=http://loinc.org|8867-4&_sort=date").await, ["o3", "o1", "o2"]);
    // Resources without a value sort last.
    assert_eq!(ordered(&app, "Patient?_sort=active").await, ["p3", "p1", "p2", "p4"]);
    app.get("/Patient?_sort=colour").await.assert_outcome(400);
}

/// Tokens sort by their code, whatever characters it holds and whatever its system.
#[actix_web::test]
async fn tokens_sort_by_their_code() {
    let app = spawn_app().await;
    for (id, system, code) in [("t1", "http://z.org", "m|1"), ("t2", "http://a.org", "z"), ("t3", "", "a")] {
        let mut coding = json!({"code": code});
        if !system.is_empty() {
            coding["system"] = json!(system);
        }
        put(&app, json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"coding": [coding]}}))
            .await;
    }
    assert_eq!(ordered(&app, "Observation?_sort=code").await, ["t3", "t1", "t2"]);
    assert_eq!(ordered(&app, "Observation?_sort=-code").await, ["t2", "t1", "t3"]);
}

#[actix_web::test]
async fn compartment_search_is_confined_to_the_patient() {
    let app = spawn_app().await;
    seed(&app).await;
    assert_eq!(ids(&app, "Patient/p1/Observation").await, list(&["o1", "o2"]));
    assert_eq!(ids(&app, "Patient/p2/Observation?code=http://loinc.org|29463-7").await, list(&["o4"]));
    assert_eq!(ids(&app, "Patient/p4/Observation").await, list(&[]));
    assert_eq!(ids(&app, "Patient/p1/Patient").await, list(&["p1"]));
    app.get("/Patient/p1/ValueSet").await.assert_outcome(404);
    app.get("/Observation/o1/Patient").await.assert_outcome(404);
}

#[actix_web::test]
async fn everything_pages_through_the_whole_record_once_even_while_it_changes() {
    let app = spawn_app().await;
    put(&app, json!({"resourceType": "Patient", "id": "ev", "gender": "female"})).await;
    put(&app, json!({"resourceType": "Patient", "id": "other", "gender": "male"})).await;
    let mut expected = vec!["Patient/ev".to_owned()];
    for n in 0..25 {
        let id = format!("ev-obs-{n:02}");
        put(&app, json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/ev"}})).await;
        expected.push(format!("Observation/{id}"));
    }
    for n in 0..4 {
        let id = format!("ev-enc-{n}");
        put(&app, json!({"resourceType": "Encounter", "id": id, "status": "finished", "class": {"code": "AMB"}, "subject": {"reference": "Patient/ev"}})).await;
        expected.push(format!("Encounter/{id}"));
    }
    put(&app, json!({"resourceType": "Observation", "id": "not-ev", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/other"}})).await;

    let mut seen = Vec::new();
    let mut reply = app.get("/Patient/ev/$everything?_count=7").await;
    let mut pages = 0;
    loop {
        assert_eq!(reply.status, 200, "{}", reply.text);
        pages += 1;
        for entry in reply.body["entry"].as_array().into_iter().flatten() {
            seen.push(format!(
                "{}/{}",
                entry["resource"]["resourceType"].as_str().unwrap(),
                entry["resource"]["id"].as_str().unwrap()
            ));
        }
        if pages == 1 {
            // Changes after the first page do not show in later pages.
            put(&app, json!({"resourceType": "Observation", "id": "ev-late", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/ev"}})).await;
            app.delete("/Observation/ev-obs-24").await;
        }
        match reply.body["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") {
            Some(link) => reply = app.send(app.client.get(link["url"].as_str().unwrap())).await,
            None => break,
        }
    }
    let total = seen.len();
    seen.sort();
    seen.dedup();
    assert_eq!(seen.len(), total, "nothing is duplicated");
    expected.sort();
    assert_eq!(seen, expected, "nothing is lost, nothing foreign");
    assert!(pages >= 5);

    let only = app.get("/Patient/ev/$everything?_type=Encounter&_count=100").await;
    assert_eq!(only.body["entry"].as_array().unwrap().len(), 4);
    app.get("/Patient/ev/$everything?colour=red").await.assert_outcome(400);
}

/// `(mode, Type/id)` of every entry, sorted.
async fn modes(app: &TestApp, query: &str) -> Vec<(String, String)> {
    let reply = app.get(&format!("/{query}")).await;
    assert_eq!(reply.status, 200, "{query}: {}", reply.text);
    let mut out: Vec<(String, String)> = reply.body["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] != "outcome")
        .map(|e| {
            let resource = &e["resource"];
            (
                e["search"]["mode"].as_str().unwrap().to_owned(),
                format!("{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap()),
            )
        })
        .collect();
    out.sort();
    out
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = items.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    v.sort();
    v
}

#[actix_web::test]
async fn include_and_revinclude_add_the_referenced_and_referring_resources() {
    let app = spawn_app().await;
    seed(&app).await;
    put(&app, json!({"resourceType": "Organization", "id": "org1", "name": "Clinic"})).await;
    put(
        &app,
        json!({"resourceType": "Patient", "id": "p5", "managingOrganization": {"reference": "Organization/org1"}}),
    )
    .await;
    put(&app, json!({"resourceType": "Observation", "id": "o6", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p5"}})).await;

    assert_eq!(
        modes(&app, "Observation?code=http://loinc.org|8867-4&_include=Observation:subject").await,
        pairs(&[
            ("match", "Observation/o1"),
            ("match", "Observation/o2"),
            ("match", "Observation/o3"),
            ("include", "Patient/p1"),
            ("include", "Patient/p2")
        ])
    );
    assert_eq!(
        modes(&app, "Patient?_id=p1&_revinclude=Observation:subject").await,
        pairs(&[("match", "Patient/p1"), ("include", "Observation/o1"), ("include", "Observation/o2")])
    );
    assert_eq!(
        modes(&app, "Observation?_id=o6&_include=Observation:subject&_include:iterate=Patient:organization").await,
        pairs(&[("match", "Observation/o6"), ("include", "Patient/p5"), ("include", "Organization/org1")])
    );
    assert_eq!(
        modes(&app, "Observation?_id=o6&_include=Observation:subject&_include=Patient:organization").await,
        pairs(&[("match", "Observation/o6"), ("include", "Patient/p5")]),
        "without :iterate, an include only applies to the matches"
    );
    assert_eq!(
        modes(&app, "Observation?_id=o6&_include=Observation:subject:Group").await,
        pairs(&[("match", "Observation/o6")])
    );
    assert_eq!(
        modes(&app, "Observation?_id=o1&_include=Observation:*").await,
        pairs(&[("match", "Observation/o1"), ("include", "Patient/p1")])
    );
    app.get("/Observation?_include=Observation:code").await.assert_outcome(400);
    app.get("/Observation?_include=nonsense").await.assert_outcome(400);
}

#[actix_web::test]
async fn chains_and_reverse_chains_filter_by_related_resources() {
    let app = spawn_app().await;
    seed(&app).await;
    put(&app, json!({"resourceType": "Organization", "id": "org1", "name": "Riverside Clinic"})).await;
    put(&app, json!({"resourceType": "Patient", "id": "p5", "name": [{"family": "Lane"}], "managingOrganization": {"reference": "Organization/org1"}})).await;
    put(&app, json!({"resourceType": "Observation", "id": "o6", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/p5"}})).await;

    assert_eq!(ids(&app, "Observation?subject:Patient.family=muller").await, list(&["o1", "o2", "o3", "o4"]));
    assert_eq!(ids(&app, "Observation?subject.gender=female&code=http://loinc.org|29463-7").await, list(&["o5"]));
    assert_eq!(ids(&app, "Observation?subject:Patient.organization.name=riverside").await, list(&["o6"]));
    assert_eq!(ids(&app, "Observation?subject:Patient.family=nobody").await, list(&[]));
    assert_eq!(ids(&app, "Patient?_has:Observation:subject:code=http://loinc.org|29463-7").await, list(&["p2", "p3"]));
    assert_eq!(ids(&app, "Patient?_has:Observation:patient:value-quantity=gt70&gender=male").await, list(&["p2"]));
    assert_eq!(
        ids(&app, "Organization?_has:Patient:organization:_has:Observation:subject:_id=o6").await,
        list(&["org1"])
    );
    app.get("/Observation?code.name=x").await.assert_outcome(400);
    app.get("/Patient?_has:Observation:code:code=x").await.assert_outcome(400);
}

#[actix_web::test]
async fn combo_parameters_cover_the_observation_and_its_components() {
    let app = spawn_app().await;
    seed(&app).await;
    put(&app, json!({"resourceType": "Observation", "id": "bp", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]}, "subject": {"reference": "Patient/p1"},
        "component": [
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 142, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
            {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": 88, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}
        ]})).await;
    assert_eq!(ids(&app, "Observation?code=http://loinc.org|8480-6").await, list(&[]));
    assert_eq!(ids(&app, "Observation?component-code=http://loinc.org|8480-6").await, list(&["bp"]));
    assert_eq!(
        ids(&app, "Observation?combo-code=http://loinc.org|8480-6,http://loinc.org|8867-4").await,
        list(&["bp", "o1", "o2", "o3"])
    );
    assert_eq!(
        ids(&app, "Observation?component-code-value-quantity=http://loinc.org|8480-6$gt140").await,
        list(&["bp"])
    );
    assert_eq!(
        ids(&app, "Observation?component-code-value-quantity=http://loinc.org|8462-4$gt140").await,
        list(&[]),
        "values are paired with their own component"
    );
    assert_eq!(ids(&app, "Observation?combo-code-value-quantity=http://loinc.org|8480-6$gt140").await, list(&["bp"]));
    assert_eq!(ids(&app, "Observation?combo-value-quantity=gt100").await, list(&["bp"]));
}

#[actix_web::test]
async fn system_search_spans_types_and_pages_across_them() {
    let app = spawn_app().await;
    seed(&app).await;
    let found = modes(&app, "?_type=Patient,Observation&_id=p1,o1,o5").await;
    assert_eq!(found, pairs(&[("match", "Patient/p1"), ("match", "Observation/o1"), ("match", "Observation/o5")]));
    // Paging across the type boundary keeps every match exactly once.
    let mut reply = app.get("?_type=Observation,Patient&_count=2").await;
    let mut seen = Vec::new();
    loop {
        assert_eq!(reply.status, 200, "{}", reply.text);
        seen.extend(
            reply.body["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["resource"]["id"].as_str().unwrap().to_owned()),
        );
        match reply.body["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next") {
            Some(link) => reply = app.send(app.client.get(link["url"].as_str().unwrap())).await,
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, list(&["o1", "o2", "o3", "o4", "o5", "p1", "p2", "p3", "p4"]));
    app.get("?_type=Patient,Observation&family=smith").await.assert_outcome(400);
}

#[actix_web::test]
async fn previous_links_walk_back_through_the_same_pages() {
    let app = spawn_app().await;
    for n in 0..11 {
        put(&app, json!({"resourceType": "Patient", "id": format!("pv{n:02}"), "gender": if n % 2 == 0 { "female" } else { "male" }})).await;
    }
    for query in ["/Patient?gender=female,male&_count=3", "/Patient?_sort=-_id&_count=3"] {
        // Forward to the last page, remembering every page.
        let mut pages = Vec::new();
        let mut reply = app.get(query).await;
        assert!(link(&reply.body, "previous").is_none(), "{query}: the first page has no previous");
        loop {
            pages.push(match_ids(&reply.body));
            match link(&reply.body, "next") {
                Some(url) => reply = app.send(app.client.get(url)).await,
                None => break,
            }
        }
        assert_eq!(pages.concat().len(), 11, "{query}: {pages:?}");
        // Writes now do not change what the cursors show.
        put(&app, json!({"resourceType": "Patient", "id": "pv-late", "gender": "male"})).await;
        // Backward from the last page, each previous page equals the one seen going forward.
        for expected in pages.iter().rev().skip(1) {
            let url = link(&reply.body, "previous").unwrap_or_else(|| panic!("{query}: a previous link is missing"));
            reply = app.send(app.client.get(url)).await;
            assert_eq!(reply.status, 200, "{}", reply.text);
            assert_eq!(&match_ids(&reply.body), expected, "{query}");
        }
        assert!(link(&reply.body, "previous").is_none(), "{query}: back at the first page");
        // And forward again from there.
        let next = app.send(app.client.get(link(&reply.body, "next").unwrap())).await;
        assert_eq!(match_ids(&next.body), pages[1], "{query}");
        app.delete("/Patient/pv-late").await;
    }
}

#[actix_web::test]
async fn summary_modes_subset_the_resources() {
    let app = spawn_app().await;
    put(&app, json!({"resourceType": "Patient", "id": "sm", "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">Sam</div>"},
        "name": [{"family": "Summary"}], "gender": "male", "photo": [{"title": "portrait"}],
        "contact": [{"name": {"family": "Kin"}}]})).await;
    let resource = |body: &Value| body["entry"][0]["resource"].clone();

    let summary = resource(&app.get("/Patient?_id=sm&_summary=true").await.body);
    assert_eq!(summary["name"][0]["family"], "Summary");
    assert_eq!(summary["gender"], "male");
    assert!(summary.get("photo").is_none() && summary.get("contact").is_none() && summary.get("text").is_none());
    assert_eq!(summary["meta"]["tag"][0]["code"], "SUBSETTED");

    let text = resource(&app.get("/Patient?_id=sm&_summary=text").await.body);
    assert!(text.get("text").is_some() && text.get("name").is_none());

    let data = resource(&app.get("/Patient?_id=sm&_summary=data").await.body);
    assert!(data.get("text").is_none() && data.get("photo").is_some() && data.get("contact").is_some());

    let full = resource(&app.get("/Patient?_id=sm&_summary=false").await.body);
    assert!(full.get("text").is_some() && full["meta"].get("tag").is_none());
    app.get("/Patient?_summary=maybe").await.assert_outcome(400);
}

/// Walks forward to the last page and back to the first, checking that each previous page is
/// the page seen going forward, and that the first has no previous link.
async fn walk_both_ways(app: &TestApp, query: &str, total: usize) {
    let mut pages = Vec::new();
    let mut reply = app.get(query).await;
    assert_eq!(reply.status, 200, "{query}: {}", reply.text);
    assert!(link(&reply.body, "previous").is_none(), "{query}: the first page has no previous");
    loop {
        pages.push(match_ids(&reply.body));
        match link(&reply.body, "next") {
            Some(url) => reply = app.send(app.client.get(url)).await,
            None => break,
        }
    }
    assert_eq!(pages.concat().len(), total, "{query}: {pages:?}");
    for expected in pages.iter().rev().skip(1) {
        let url = link(&reply.body, "previous").unwrap_or_else(|| panic!("{query}: a previous link is missing"));
        reply = app.send(app.client.get(url)).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        assert_eq!(&match_ids(&reply.body), expected, "{query}");
    }
    assert!(link(&reply.body, "previous").is_none(), "{query}: back at the first page");
}

#[actix_web::test]
async fn previous_links_work_across_types_and_for_type_scans() {
    let app = spawn_app().await;
    for n in 0..7 {
        put(
            &app,
            json!({"resourceType": "Patient", "id": format!("w{n}"), "gender": if n < 5 { "male" } else { "female" }}),
        )
        .await;
    }
    for n in 0..5 {
        put(&app, json!({"resourceType": "Observation", "id": format!("wo{n}"), "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/w0"}})).await;
        put(&app, json!({"resourceType": "Encounter", "id": format!("we{n}"), "status": "finished", "class": {"code": "AMB"}, "subject": {"reference": "Patient/w0"}})).await;
    }
    walk_both_ways(&app, "/Patient/w0/$everything?_count=3", 11).await;
    walk_both_ways(&app, "?_type=Observation,Patient,Encounter&_count=4", 17).await;
    walk_both_ways(&app, "/Patient?birthdate:missing=true&_count=2", 7).await;
}

#[actix_web::test]
async fn missing_on_an_alias_parameter_considers_every_united_parameter() {
    let app = spawn_app().await;
    put(&app, json!({"resourceType": "Observation", "id": "top", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}})).await;
    put(
        &app,
        json!({"resourceType": "Observation", "id": "comp", "status": "final", "code": {"text": "panel"},
        "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}}]}),
    )
    .await;
    put(&app, json!({"resourceType": "Observation", "id": "none", "status": "final", "code": {"text": "free text"}}))
        .await;
    assert_eq!(ids(&app, "Observation?combo-code:missing=false").await, list(&["comp", "top"]));
    assert_eq!(ids(&app, "Observation?combo-code:missing=true").await, list(&["none"]));
}

#[actix_web::test]
async fn the_remaining_parameters_and_modifiers_select_exactly() {
    let app = spawn_app().await;
    seed(&app).await;
    put(
        &app,
        json!({"resourceType": "Observation", "id": "by-identifier", "status": "final", "code": {"text": "x"},
        "subject": {"identifier": {"system": "http://mrn", "value": "42"}},
        "meta": {"security": [{"system": "http://sec", "code": "R"}], "source": "http://ehr.example/feed"}}),
    )
    .await;
    assert_eq!(ids(&app, "Observation?subject:identifier=http://mrn|42").await, list(&["by-identifier"]));
    assert_eq!(ids(&app, "Observation?subject:identifier=42").await, list(&["by-identifier"]));
    assert_eq!(ids(&app, "Observation?_security=http://sec|R").await, list(&["by-identifier"]));
    assert_eq!(ids(&app, "Observation?_source=http://ehr.example/feed").await, list(&["by-identifier"]));

    // _lastUpdated: everything was written just now; nothing before 2000 or after 3000.
    assert_eq!(ids(&app, "Patient?_lastUpdated=gt2000-01-01").await.len(), 4);
    assert_eq!(ids(&app, "Patient?_lastUpdated=lt2000-01-01").await, list(&[]));
    assert_eq!(ids(&app, "Patient?_lastUpdated=ge3000").await, list(&[]));

    // A number parameter, with implicit precision.
    for (id, probability) in [("r1", "0.25"), ("r2", "0.5"), ("r3", "0.75")] {
        put(&app, json!({"resourceType": "RiskAssessment", "id": id, "status": "final", "subject": {"reference": "Patient/p1"},
            "prediction": [{"probabilityDecimal": serde_json::from_str::<Value>(probability).unwrap()}]})).await;
    }
    assert_eq!(ids(&app, "RiskAssessment?probability=0.5").await, list(&["r2"]));
    assert_eq!(ids(&app, "RiskAssessment?probability=gt0.3").await, list(&["r2", "r3"]));
    assert_eq!(ids(&app, "RiskAssessment?probability=le0.5").await, list(&["r1", "r2"]));
    assert_eq!(ids(&app, "RiskAssessment?probability=0.4").await, list(&[]));
    assert_eq!(ids(&app, "RiskAssessment?probability=0.3").await, list(&["r1"]), "0.3 means [0.25, 0.35)");

    // _total=estimate gives a number without counting every match.
    let estimate = app.get("/Observation?code=http://loinc.org|8867-4&_total=estimate").await;
    assert_eq!(estimate.body["total"], 3);

    // $everything start/end restrict the types that have a clinical date.
    let window = app.get("/Patient/p1/$everything?start=2024-05-02&end=2024-05-31&_type=Observation&_count=100").await;
    let found: Vec<&str> =
        window.body["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    assert_eq!(found, vec!["o2"], "o1 (May 1) is before the window");
}
