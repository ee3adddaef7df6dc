//! Search correctness: paging links that stay in their URL and re-encode their values,
//! references to this server's own base, exact decimal ranges, token escaping, Unicode string
//! matching and `$everything` on missing patients. Every check compares the exact ids found.

use serde_json::{Value, json};

use crate::helpers::{Reply, TestApp, link, spawn_app};

async fn put(app: &TestApp, resource: Value) {
    let path = format!("/{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
    let reply = app.put(&path, &resource).await;
    assert!(reply.status == 201 || reply.status == 200, "{path}: {}", reply.text);
}

/// `Type/id` of the page's match entries, in order.
fn page_ids(body: &Value) -> Vec<String> {
    body["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| {
            format!("{}/{}", e["resource"]["resourceType"].as_str().unwrap(), e["resource"]["id"].as_str().unwrap())
        })
        .collect()
}

/// Follows `next` links from `path` to the last page; returns every page's `Type/id`s and
/// the first page's reply. Fails on a non-200 page or a repeated id.
async fn all_pages(app: &TestApp, path: &str) -> (Vec<Vec<String>>, Reply) {
    let first = app.get(path).await;
    assert_eq!(first.status, 200, "{path}: {}", first.text);
    let mut pages = vec![page_ids(&first.body)];
    let mut next = link(&first.body, "next");
    while let Some(url) = next {
        assert!(pages.len() < 100, "{path}: paging does not end");
        let reply = app.send(app.client.get(&url)).await;
        assert_eq!(reply.status, 200, "{url}: {}", reply.text);
        pages.push(page_ids(&reply.body));
        next = link(&reply.body, "next");
    }
    let mut all = pages.concat();
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), total, "{path}: a resource appeared on two pages: {pages:?}");
    (pages, first)
}

/// The union of all pages, sorted.
async fn union(app: &TestApp, path: &str) -> Vec<String> {
    let mut all = all_pages(app, path).await.0.concat();
    all.sort();
    all
}

fn sorted(ids: &[&str]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
    ids.sort();
    ids
}

/// A code text holding every character that breaks a query string when not re-encoded.
const AWKWARD_TEXT: &str = "Blood+pressure & #1 %ile";
const AWKWARD_QUERY: &str = "Blood%2Bpressure%20%26%20%231%20%25ile";

async fn seed_awkward_observations(app: &TestApp) {
    for patient in ["p1", "p2"] {
        put(app, json!({"resourceType": "Patient", "id": patient})).await;
    }
    for n in 0..5 {
        put(
            app,
            json!({"resourceType": "Observation", "id": format!("a{n}"), "status": "final",
            "code": {"text": AWKWARD_TEXT}, "subject": {"reference": "Patient/p1"},
            "effectiveDateTime": "2024-05-01T10:00:00+02:00"}),
        )
        .await;
    }
    // Same text, another patient; and the patient's own observation with other text.
    put(
        app,
        json!({"resourceType": "Observation", "id": "b0", "status": "final", "code": {"text": AWKWARD_TEXT},
        "subject": {"reference": "Patient/p2"}}),
    )
    .await;
    put(
        app,
        json!({"resourceType": "Observation", "id": "c0", "status": "final", "code": {"text": "Blood sugar"},
        "subject": {"reference": "Patient/p1"}}),
    )
    .await;
}

#[actix_web::test]
async fn compartment_search_pages_stay_in_the_compartment() {
    let app = spawn_app().await;
    seed_awkward_observations(&app).await;
    let path = format!("/Patient/p1/Observation?code:text={AWKWARD_QUERY}&_count=2");
    let (pages, first) = all_pages(&app, &path).await;
    assert_eq!(pages.len(), 3, "{pages:?}");
    let mut all = pages.concat();
    all.sort();
    assert_eq!(
        all,
        sorted(&["Observation/a0", "Observation/a1", "Observation/a2", "Observation/a3", "Observation/a4"])
    );

    // The self link is the compartment URL with the same (re-encoded) query: fetching it again
    // gives the same first page, not every patient's observations.
    let self_url = link(&first.body, "self").unwrap();
    assert!(self_url.starts_with(&format!("{}/Patient/p1/Observation?", app.base)), "{self_url}");
    let again = app.send(app.client.get(&self_url)).await;
    assert_eq!(page_ids(&again.body), pages[0]);
    // Previous links also stay in the compartment.
    let second = app.send(app.client.get(link(&first.body, "next").unwrap())).await;
    let previous = link(&second.body, "previous").unwrap();
    assert!(previous.starts_with(&format!("{}/Patient/p1/Observation?", app.base)), "{previous}");
    assert_eq!(page_ids(&app.send(app.client.get(&previous)).await.body), pages[0]);

    // Without criteria the compartment holds all of p1's observations.
    assert_eq!(
        union(&app, "/Patient/p1/Observation?_count=2").await,
        sorted(&[
            "Observation/a0",
            "Observation/a1",
            "Observation/a2",
            "Observation/a3",
            "Observation/a4",
            "Observation/c0"
        ])
    );
}

#[actix_web::test]
async fn type_and_system_search_links_reencode_their_values() {
    let app = spawn_app().await;
    seed_awkward_observations(&app).await;
    let expected = sorted(&[
        "Observation/a0",
        "Observation/a1",
        "Observation/a2",
        "Observation/a3",
        "Observation/a4",
        "Observation/b0",
    ]);
    assert_eq!(union(&app, &format!("/Observation?code:text={AWKWARD_QUERY}&_count=2")).await, expected);
    let system = format!("?_type=Observation&code:text={AWKWARD_QUERY}&_count=2");
    assert_eq!(union(&app, &system).await, expected);
    let (_, first) = all_pages(&app, &system).await;
    let self_url = link(&first.body, "self").unwrap();
    assert!(self_url.contains(AWKWARD_QUERY), "{self_url}");
}

#[actix_web::test]
async fn everything_links_reencode_their_values() {
    let app = spawn_app().await;
    seed_awkward_observations(&app).await;
    // A zone offset's '+' must survive into the next link, or it decodes as a space.
    let path = "/Patient/p1/$everything?_since=2000-01-01T00:00:00%2B02:00&start=2024-05-01T00:00:00%2B02:00&_count=2";
    let expected = sorted(&[
        "Patient/p1",
        "Observation/a0",
        "Observation/a1",
        "Observation/a2",
        "Observation/a3",
        "Observation/a4",
    ]);
    assert_eq!(union(&app, path).await, expected);
    let (_, first) = all_pages(&app, path).await;
    assert!(link(&first.body, "self").unwrap().contains("_since=2000-01-01T00:00:00%2B02:00"));
}

#[actix_web::test]
async fn everything_on_a_missing_or_deleted_patient_is_like_a_read() {
    let app = spawn_app().await;
    let missing = app.get("/Patient/nosuch/$everything").await;
    missing.assert_outcome(404);
    assert!(missing.body["issue"][0]["diagnostics"].as_str().unwrap().contains("Patient/nosuch"), "{}", missing.text);

    put(&app, json!({"resourceType": "Patient", "id": "gone"})).await;
    put(
        &app,
        json!({"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "Patient/gone"}}),
    )
    .await;
    assert_eq!(union(&app, "/Patient/gone/$everything").await, sorted(&["Observation/o", "Patient/gone"]));
    assert!(app.delete("/Patient/gone").await.status < 300);
    let deleted = app.get("/Patient/gone/$everything").await;
    deleted.assert_outcome(410);
    assert_eq!(deleted.body["issue"][0]["code"], "deleted");

    // Compartment search is a search: a missing or deleted owner gives the resources that
    // still reference it (here the observation), like HAPI, rather than an error.
    assert_eq!(union(&app, "/Patient/gone/Observation").await, sorted(&["Observation/o"]));
    assert_eq!(union(&app, "/Patient/nosuch/Observation").await, Vec::<String>::new());
}

/// The ids of every page of a search, without the `Type/` prefix, sorted.
async fn ids(app: &TestApp, path: &str) -> Vec<String> {
    union(app, path).await.into_iter().map(|id| id.split_once('/').unwrap().1.to_owned()).collect()
}

#[actix_web::test]
async fn string_search_folds_accents_of_any_letter_and_composition() {
    let app = spawn_app().await;
    for (id, family, given) in [
        ("garcia", "García", "José"),
        ("nguyen", "Nguyễn", "Văn"),
        ("otani", "Ōtani", "Shōhei"),
        ("orsted", "Ørsted", "Łucja"),
        ("decomposed", "Garci\u{301}a", "Zoe\u{308}"),
        ("plain", "Garcia", "Jose"),
    ] {
        put(&app, json!({"resourceType": "Patient", "id": id, "name": [{"family": family, "given": [given]}]})).await;
    }
    let all_garcias = sorted(&["decomposed", "garcia", "plain"]);
    // A decomposed query (e + U+0301) finds precomposed, decomposed and plain values.
    assert_eq!(ids(&app, "/Patient?family=Garci%CC%81a").await, all_garcias);
    assert_eq!(ids(&app, "/Patient?family=GARC%C3%8DA").await, all_garcias);
    assert_eq!(ids(&app, "/Patient?family=garcia").await, all_garcias);
    assert_eq!(ids(&app, "/Patient?family=nguyen").await, sorted(&["nguyen"]));
    assert_eq!(ids(&app, "/Patient?name=otani").await, sorted(&["otani"]));
    assert_eq!(ids(&app, "/Patient?given=shohei").await, sorted(&["otani"]));
    assert_eq!(ids(&app, "/Patient?family=orsted&given=lucja").await, sorted(&["orsted"]));
    assert_eq!(ids(&app, "/Patient?given:contains=oe").await, sorted(&["decomposed"]));
    // :exact still compares the text as written.
    assert_eq!(ids(&app, "/Patient?family:exact=Garc%C3%ADa").await, sorted(&["garcia"]));
}

#[actix_web::test]
async fn quantity_units_match_the_code_or_the_human_readable_unit() {
    let app = spawn_app().await;
    put(
        &app,
        json!({"resourceType": "Observation", "id": "weight", "status": "final", "code": {"text": "weight"},
        "valueQuantity": {"value": 100.5, "unit": "lb", "system": "http://unitsofmeasure.org", "code": "[lb_av]"}}),
    )
    .await;
    put(
        &app,
        json!({"resourceType": "Observation", "id": "uncoded", "status": "final", "code": {"text": "weight"},
        "valueQuantity": {"value": 100.5, "unit": "lb"}}),
    )
    .await;
    put(
        &app,
        json!({"resourceType": "Observation", "id": "kilos", "status": "final", "code": {"text": "weight"},
        "valueQuantity": {"value": 100.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}}),
    )
    .await;
    assert_eq!(ids(&app, "/Observation?value-quantity=100.5||lb").await, sorted(&["uncoded", "weight"]));
    assert_eq!(ids(&app, "/Observation?value-quantity=100.5||%5Blb_av%5D").await, sorted(&["weight"]));
    assert_eq!(
        ids(&app, "/Observation?value-quantity=100.5|http://unitsofmeasure.org|%5Blb_av%5D").await,
        sorted(&["weight"])
    );
    // The system names a coded unit: the human-readable `lb` is not a UCUM code.
    assert_eq!(ids(&app, "/Observation?value-quantity=100.5|http://unitsofmeasure.org|lb").await, sorted(&[]));
    assert_eq!(ids(&app, "/Observation?value-quantity=100.5||kg").await, sorted(&["kilos"]));
    assert_eq!(ids(&app, "/Observation?value-quantity=100.5").await, sorted(&["kilos", "uncoded", "weight"]));
}

#[actix_web::test]
async fn escaped_separators_are_literal_characters() {
    let app = spawn_app().await;
    let patient = |id: &str, identifier: Value, family: &str| json!({"resourceType": "Patient", "id": id, "identifier": [identifier], "name": [{"family": family}]});
    put(&app, patient("bar", json!({"value": "a|b"}), "Smith,Jr")).await;
    put(&app, patient("comma", json!({"system": "http://s", "value": "x,y"}), "Smith")).await;
    put(&app, patient("dollar", json!({"value": "p$q"}), "Jr")).await;
    put(&app, patient("slash", json!({"value": "c\\d"}), "Back\\slash")).await;
    put(&app, patient("plain", json!({"value": "a"}), "b")).await;

    // `\|` in a value without a system is a literal bar, not the system separator.
    assert_eq!(ids(&app, "/Patient?identifier=a%5C%7Cb").await, sorted(&["bar"]));
    assert_eq!(ids(&app, "/Patient?identifier=%7Ca%5C%7Cb").await, sorted(&["bar"]));
    // `\,` is a comma inside one value; an unescaped comma still separates alternatives.
    assert_eq!(ids(&app, "/Patient?identifier=http://s%7Cx%5C,y").await, sorted(&["comma"]));
    assert_eq!(ids(&app, "/Patient?identifier=http://s%7Cx%5C,y,a").await, sorted(&["comma", "plain"]));
    assert_eq!(ids(&app, "/Patient?identifier=p%5C$q").await, sorted(&["dollar"]));
    assert_eq!(ids(&app, "/Patient?identifier=c%5C%5Cd").await, sorted(&["slash"]));
    assert_eq!(ids(&app, "/Patient?family=smith%5C,jr").await, sorted(&["bar"]));
    assert_eq!(ids(&app, "/Patient?family:exact=Back%5C%5Cslash").await, sorted(&["slash"]));

    // In a composite, `\$` is a literal dollar within a component.
    put(
        &app,
        json!({"resourceType": "Observation", "id": "dollar-code", "status": "final",
        "code": {"coding": [{"system": "http://c", "code": "x$y"}]}, "valueQuantity": {"value": 5}}),
    )
    .await;
    assert_eq!(ids(&app, "/Observation?code-value-quantity=http://c%7Cx%5C$y$5").await, sorted(&["dollar-code"]));
    assert_eq!(ids(&app, "/Observation?code-value-quantity=x%5C$y$5").await, sorted(&["dollar-code"]));
}

#[actix_web::test]
async fn code_text_finds_concepts_that_have_only_text() {
    let app = spawn_app().await;
    put(
        &app,
        json!({"resourceType": "Observation", "id": "text-only", "status": "final",
        "code": {"text": "Walking distance"}}),
    )
    .await;
    put(
        &app,
        json!({"resourceType": "Observation", "id": "coded", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "41950-7", "display": "Walking steps"}]}}),
    )
    .await;
    assert_eq!(ids(&app, "/Observation?code:text=walking").await, sorted(&["coded", "text-only"]));
    assert_eq!(ids(&app, "/Observation?code:text=walking%20dist").await, sorted(&["text-only"]));
}

#[actix_web::test]
async fn number_ranges_are_exact_decimals_at_their_bounds() {
    let app = spawn_app().await;
    for (id, value) in [("v535", "5.35"), ("v545", "5.45"), ("v540", "5.4"), ("v015", "0.15"), ("v005", "0.05")] {
        let body = format!(
            r#"{{"resourceType": "Observation", "id": "{id}", "status": "final", "code": {{"text": "x"}}, "valueQuantity": {{"value": {value}, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}}}}"#
        );
        let reply = app
            .send(
                app.client
                    .put(app.url(&format!("/Observation/{id}")))
                    .header("content-type", "application/fhir+json")
                    .body(body),
            )
            .await;
        assert_eq!(reply.status, 201, "{}", reply.text);
        let probability: Value = serde_json::from_str(value).unwrap();
        put(
            &app,
            json!({"resourceType": "RiskAssessment", "id": id, "status": "final",
            "subject": {"reference": "Patient/p"}, "prediction": [{"probabilityDecimal": probability}]}),
        )
        .await;
    }
    // 5.4 covers [5.35, 5.45); 0.1 covers [0.05, 0.15).
    assert_eq!(ids(&app, "/Observation?value-quantity=5.4").await, sorted(&["v535", "v540"]));
    assert_eq!(
        ids(&app, "/Observation?value-quantity=5.4|http://unitsofmeasure.org|mg").await,
        sorted(&["v535", "v540"])
    );
    assert_eq!(ids(&app, "/Observation?value-quantity=0.1").await, sorted(&["v005"]));
    assert_eq!(ids(&app, "/Observation?value-quantity=5.40").await, sorted(&["v540"]));
    assert_eq!(ids(&app, "/Observation?value-quantity=ne5.4").await, sorted(&["v005", "v015", "v545"]));
    assert_eq!(ids(&app, "/RiskAssessment?probability=5.4").await, sorted(&["v535", "v540"]));
    assert_eq!(ids(&app, "/RiskAssessment?probability=0.1").await, sorted(&["v005"]));
    assert_eq!(ids(&app, "/RiskAssessment?probability=0.15").await, sorted(&["v015"]));

    for bad in ["NaN", "inf", "-infinity", "1e400", "gtNaN", "1e-400", "5.4e"] {
        for (path, param) in [("/Observation", "value-quantity"), ("/RiskAssessment", "probability")] {
            let reply = app.get(&format!("{path}?{param}={bad}")).await;
            reply.assert_outcome(400);
            let diagnostics = reply.body["issue"][0]["diagnostics"].as_str().unwrap();
            assert!(diagnostics.contains(bad), "{param}={bad}: {diagnostics}");
            assert_eq!(reply.expressions(), [param], "{param}={bad}");
        }
    }
}

/// Observations of patient `r1` referencing it in every way an EHR feed might.
async fn seed_absolute_references(app: &TestApp, base: &str) {
    put(app, json!({"resourceType": "Patient", "id": "r1", "name": [{"family": "Rossi"}]})).await;
    put(app, json!({"resourceType": "Patient", "id": "r2", "name": [{"family": "Other"}]})).await;
    put(
        app,
        json!({"resourceType": "Observation", "id": "absolute", "status": "final", "code": {"text": "hr"},
        "subject": {"reference": format!("{base}/Patient/r1")}}),
    )
    .await;
    put(
        app,
        json!({"resourceType": "Observation", "id": "versioned", "status": "final", "code": {"text": "hr"},
        "subject": {"reference": format!("{base}/Patient/r1/_history/1")}}),
    )
    .await;
    put(
        app,
        json!({"resourceType": "Observation", "id": "relative", "status": "final", "code": {"text": "hr"},
        "subject": {"reference": "Patient/r1"}}),
    )
    .await;
    // The same path on another server is not this server's patient.
    put(
        app,
        json!({"resourceType": "Observation", "id": "foreign", "status": "final", "code": {"text": "hr"},
        "subject": {"reference": "http://elsewhere.example/fhir/Patient/r1"}}),
    )
    .await;
}

/// Every search path that follows references finds the absolute ones on this server's base.
async fn assert_absolute_references_found(app: &TestApp, base: &str) {
    let of_r1 = sorted(&["absolute", "relative", "versioned"]);
    assert_eq!(ids(app, "/Observation?subject=Patient/r1").await, of_r1);
    assert_eq!(ids(app, "/Observation?patient=r1").await, of_r1);
    assert_eq!(ids(app, "/Observation?subject:Patient=r1").await, of_r1);
    assert_eq!(ids(app, &format!("/Observation?subject={base}/Patient/r1")).await, of_r1);
    assert_eq!(ids(app, "/Observation?subject.name=rossi").await, of_r1);
    assert_eq!(ids(app, "/Observation?subject:Patient.family=rossi").await, of_r1);
    assert_eq!(ids(app, "/Observation?subject=http://elsewhere.example/fhir/Patient/r1").await, sorted(&["foreign"]));
    assert_eq!(ids(app, "/Patient?_has:Observation:subject:code:text=hr").await, sorted(&["r1"]));
    assert_eq!(ids(app, "/Patient/r1/Observation").await, of_r1);
    let everything = union(app, "/Patient/r1/$everything").await;
    assert_eq!(
        everything,
        sorted(&["Observation/absolute", "Observation/relative", "Observation/versioned", "Patient/r1"])
    );
    let revinclude = app.get("/Patient?_id=r1&_revinclude=Observation:subject").await;
    let mut included: Vec<String> = revinclude.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["search"]["mode"] == "include")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect();
    included.sort();
    assert_eq!(included, of_r1);
    let include = app.get("/Observation?_id=absolute&_include=Observation:subject").await;
    let included: Vec<&Value> =
        include.body["entry"].as_array().unwrap().iter().filter(|e| e["search"]["mode"] == "include").collect();
    assert_eq!(included.len(), 1, "{}", include.text);
    assert_eq!(included[0]["resource"]["id"], "r1");
    // The stored resource keeps the reference as the client sent it.
    let stored = app.get("/Observation/absolute").await;
    assert_eq!(stored.body["subject"]["reference"], format!("{base}/Patient/r1"));
}

#[actix_web::test]
async fn absolute_references_to_the_request_base_are_local() {
    let app = spawn_app().await;
    seed_absolute_references(&app, &app.base).await;
    assert_absolute_references_found(&app, &app.base).await;
}

#[actix_web::test]
async fn absolute_references_to_the_configured_base_are_local_also_in_transactions() {
    let public = "https://fhir.example.org/fhir";
    let app = crate::helpers::spawn_app_with(|settings| settings.base_url = Some(public.to_owned())).await;
    seed_absolute_references(&app, public).await;
    // Written through a transaction too.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {"resourceType": "Observation", "id": "in-bundle", "status": "final", "code": {"text": "hr"},
            "subject": {"reference": format!("{public}/Patient/r1")}},
        "request": {"method": "PUT", "url": "Observation/in-bundle"}}]});
    let reply = app.post("", &bundle).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(ids(&app, "/Observation?patient=r1").await, sorted(&["absolute", "in-bundle", "relative", "versioned"]));
    app.delete("/Observation/in-bundle").await;
    assert_absolute_references_found(&app, public).await;
    // The address the requests actually arrive at is not the configured base.
    put(
        &app,
        json!({"resourceType": "Observation", "id": "via-host", "status": "final", "code": {"text": "hr"},
        "subject": {"reference": format!("{}/Patient/r1", app.base)}}),
    )
    .await;
    assert_eq!(ids(&app, "/Observation?patient=r1").await, sorted(&["absolute", "relative", "versioned"]));
}
