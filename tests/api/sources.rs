//! Sources: push sources write in their own namespaces (ids, references, the original id kept,
//! `meta.source`), touch only their own records, leave one Provenance per push that changed
//! something, and follow their data-quality policy. Sources are added through the operator's
//! socket, and their tokens are got at the token endpoint with a signed assertion, as an
//! integration engine would.

use braid::auth::admin::AdminRequest;
use braid::auth::clients::NewCredential;
use jsonwebtoken::jwk::JwkSet;
use serde_json::{Value, json};

use crate::helpers::{AuthApp, Reply, braid_cli, references, spawn_auth_app, without_golden_link};
use crate::smart::{ClientKey, assertion_token, claims, token_url};

/// A push source as the tests use it: its client and a token it got for `system/*.cruds`.
pub(crate) struct Source {
    pub(crate) client_id: String,
    pub(crate) token: String,
}

async fn operator(server: &AuthApp, request: AdminRequest) -> Result<Value, String> {
    crate::helpers::operator(&server.data, request).await
}

pub(crate) async fn add_source(server: &AuthApp, name: &str, lenient: bool) -> Source {
    let key = ClientKey::es384(&format!("{name}-key"));
    let jwks = serde_json::to_string(&JwkSet { keys: vec![key.public.clone()] }).unwrap();
    let new = braid::sources::NewSource {
        name: name.into(),
        credential: NewCredential::Jwks(jwks),
        pull: None,
        types: Vec::new(),
        lenient,
        extra_scope: None,
    };
    let added = operator(server, AdminRequest::AddSource { source: new }).await.expect("the source is added");
    assert_eq!(added["source"], name);
    let client_id = added["client_id"].as_str().unwrap().to_owned();
    let app = &server.app;
    let reply = assertion_token(app, &key.sign(&claims(&client_id, &token_url(app))), "system/*.cruds").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(
        reply.body["scope"],
        format!("system/*.cruds?_source=urn:braid:source:{name}"),
        "asked for everything, granted over its own records"
    );
    Source { client_id, token: reply.body["access_token"].as_str().unwrap().to_owned() }
}

async fn send(server: &AuthApp, method: &str, path: &str, token: &str, body: Option<&Value>) -> Reply {
    let app = &server.app;
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = app.client.request(method, app.url(path)).bearer_auth(token);
    if let Some(body) = body {
        request = request.header("content-type", "application/fhir+json").body(body.to_string());
    }
    app.send(request).await
}

/// The number of Provenance resources (read with an operator's token).
async fn provenance_count(server: &AuthApp, operator_token: &str) -> usize {
    let reply = send(server, "GET", "/Provenance?_summary=count", operator_token, None).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    reply.body["total"].as_u64().unwrap() as usize
}

fn patient(mrn: &str, family: &str) -> Value {
    json!({"resourceType": "Patient", "identifier": [{"system": "http://hospital.example/mrn", "value": mrn}],
           "name": [{"family": family}], "managingOrganization": {"reference": "Organization/org1"}})
}

/// `resource` with `id` as its id: what the sender calls it.
fn identified(mut resource: Value, id: &str) -> Value {
    resource["id"] = json!(id);
    resource
}

#[tokio::test]
async fn a_sources_writes_land_in_its_namespace_with_the_original_id_and_source_kept() {
    let server = spawn_auth_app().await;
    let clinic = add_source(&server, "clinic", false).await;
    let everything = server.token("operator", "system/*.cruds", None);

    // Update-as-create with the source's own id.
    let sent = identified(patient("123", "Chalmers"), "42");
    let reply = send(&server, "PUT", "/Patient/42", &clinic.token, Some(&sent)).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.body["id"], "clinic-42");
    assert!(reply.header("location").unwrap().contains("/Patient/clinic-42/_history/1"));
    let stored = send(&server, "GET", "/Patient/clinic-42", &everything, None).await.body;
    assert_eq!(stored["meta"]["source"], "urn:braid:source:clinic");
    assert_eq!(stored["managingOrganization"]["reference"], "Organization/clinic-org1");
    assert_eq!(
        stored["identifier"],
        json!([{"system": "http://hospital.example/mrn", "value": "123"},
               {"system": "urn:braid:source:clinic", "value": "42"}])
    );
    assert_eq!(send(&server, "GET", "/Patient/42", &everything, None).await.status, 404);

    // A create: references, contained resources' references too; a server-assigned id is
    // Braid's own (no namespace's), the record the source's by its meta.source; a create
    // carrying the source's id creates that id (so a re-push finds it).
    let observation = json!({"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
        "subject": {"reference": "Patient/42"}, "performer": [{"reference": "#p1"}],
        "contained": [{"resourceType": "Practitioner", "id": "p1",
            "extension": [{"url": "http://example.org/employer", "valueReference": {"reference": "Organization/org1"}}]}]});
    let created = send(&server, "POST", "/Observation", &clinic.token, Some(&observation)).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.body["id"].as_str().unwrap();
    assert!(id.len() == 17 && !id.contains(['-', '.']), "a generated id, in no namespace: {id}");
    assert_eq!(created.body["meta"]["source"], "urn:braid:source:clinic");
    assert_eq!(created.body["subject"]["reference"], "Patient/clinic-42");
    assert_eq!(created.body["performer"][0]["reference"], "#p1");
    assert_eq!(created.body["contained"][0]["extension"][0]["valueReference"]["reference"], "Organization/clinic-org1");
    let mut with_id = observation.clone();
    with_id["id"] = json!("obs-7");
    let created = send(&server, "POST", "/Observation", &clinic.token, Some(&with_id)).await;
    assert_eq!((created.status, created.body["id"].clone()), (201, json!("clinic-obs-7")), "{}", created.text);
    let again = send(&server, "POST", "/Observation", &clinic.token, Some(&with_id)).await;
    assert_eq!((again.status, again.body["meta"]["versionId"].clone()), (200, json!("1")), "{}", again.text);

    // An absolute reference to Braid itself is read in the source's terms too: it cannot point
    // into another source's namespace.
    let mut pointed = observation.clone();
    pointed["id"] = json!("obs-8");
    pointed["subject"] = json!({"reference": format!("{}/Patient/hospital-7", server.app.base)});
    let created = send(&server, "PUT", "/Observation/obs-8", &clinic.token, Some(&pointed)).await;
    assert_eq!(created.body["subject"]["reference"], "Patient/clinic-hospital-7", "{}", created.text);
    // A conditional create that matches nothing may not overwrite the id it carries.
    let app = &server.app;
    let mut again = with_id.clone();
    again["status"] = json!("amended");
    let conflict = app
        .send(
            app.client
                .post(app.url("/Observation"))
                .bearer_auth(&clinic.token)
                .header("content-type", "application/fhir+json")
                .header("if-none-exist", "status=cancelled")
                .body(again.to_string()),
        )
        .await;
    conflict.assert_outcome(409);
    let kept = send(&server, "GET", "/Observation/clinic-obs-7", &everything, None).await.body;
    assert_eq!((kept["meta"]["versionId"].clone(), kept["status"].clone()), (json!("1"), json!("final")), "{kept}");

    // The source reads and deletes by its own ids' stored form, or by the id it knows.
    let read = send(&server, "GET", "/Patient/clinic-42", &clinic.token, None).await;
    assert_eq!(read.status, 200, "{}", read.text);
    let deleted = send(&server, "DELETE", "/Observation/obs-7", &clinic.token, None).await;
    assert_eq!(deleted.status, 204, "{}", deleted.text);
    assert_eq!(send(&server, "GET", "/Observation/clinic-obs-7", &everything, None).await.status, 410);

    // Writes without a source keep their ids.
    let plain = identified(patient("9", "Plain"), "42");
    let reply = send(&server, "PUT", "/Patient/42", &everything, Some(&plain)).await;
    assert_eq!((reply.status, reply.body["id"].clone()), (201, json!("42")), "{}", reply.text);
    assert!(reply.body["meta"].get("source").is_none());
    assert_eq!(reply.body["managingOrganization"]["reference"], "Organization/org1");
    // A source may not patch: it writes whole resources.
    let patch = json!([{"op": "replace", "path": "/active", "value": true}]);
    let app = &server.app;
    let patched = server
        .app
        .send(
            app.client
                .patch(app.url("/Patient/42"))
                .bearer_auth(&clinic.token)
                .header("content-type", "application/json-patch+json")
                .body(patch.to_string()),
        )
        .await;
    patched.assert_outcome(405);
    let _ = clinic.client_id;
}

#[tokio::test]
async fn a_transaction_resolves_uuids_and_conditional_references_in_the_namespace_and_leaves_one_provenance() {
    let server = spawn_auth_app().await;
    let clinic = add_source(&server, "clinic", false).await;
    let hospital = add_source(&server, "hospital", false).await;
    let everything = server.token("operator", "system/*.cruds", None);

    // The hospital's patient has the same MRN: the clinic's conditional reference must not find it.
    let theirs = identified(patient("123", "Other"), "p");
    assert_eq!(send(&server, "PUT", "/Patient/p", &hospital.token, Some(&theirs)).await.status, 201);
    let ours = identified(patient("123", "Chalmers"), "42");
    assert_eq!(send(&server, "PUT", "/Patient/42", &clinic.token, Some(&ours)).await.status, 201);
    let before = provenance_count(&server, &everything).await;
    assert_eq!(before, 2, "one Provenance per push");

    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0d5bcbe7-6a9e-4bd4-b3c8-6b2d4bd25b2a",
         "resource": {"resourceType": "Encounter", "status": "finished",
                      "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                      "subject": {"reference": "Patient?identifier=http://hospital.example/mrn|123"}},
         "request": {"method": "POST", "url": "Encounter"}},
        {"fullUrl": "urn:uuid:5f2e7c1a-2b4d-4e8f-9a6b-1c3d5e7f9a0b",
         "resource": {"resourceType": "Observation", "id": "obs-1", "status": "final", "code": {"text": "pulse"},
                      "subject": {"reference": "Patient?identifier=http://hospital.example/mrn|123"},
                      "encounter": {"reference": "urn:uuid:0d5bcbe7-6a9e-4bd4-b3c8-6b2d4bd25b2a"}},
         "request": {"method": "PUT", "url": "Observation/obs-1"}},
        {"resource": {"resourceType": "Organization", "id": "org1", "name": "Clinic"},
         "request": {"method": "POST", "url": "Organization", "ifNoneExist": "name=Clinic"}}
    ]});
    let reply = send(&server, "POST", "", &clinic.token, Some(&bundle)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let locations: Vec<&str> =
        reply.body["entry"].as_array().unwrap().iter().map(|e| e["response"]["location"].as_str().unwrap()).collect();
    assert!(locations[0].starts_with("Encounter/") && locations[0].ends_with("/_history/1"), "{locations:?}");
    assert_eq!(locations[1], "Observation/clinic-obs-1/_history/1");
    assert_eq!(locations[2], "Organization/clinic-org1/_history/1");
    let encounter_id = locations[0].split('/').nth(1).unwrap();
    let observation = send(&server, "GET", "/Observation/clinic-obs-1", &everything, None).await.body;
    assert_eq!(
        observation["subject"]["reference"], "Patient/clinic-42",
        "the clinic's own patient, not the hospital's"
    );
    assert_eq!(observation["encounter"]["reference"], format!("Encounter/{encounter_id}"));
    let encounter = send(&server, "GET", &format!("/Encounter/{encounter_id}"), &everything, None).await.body;
    assert_eq!(encounter["subject"]["reference"], "Patient/clinic-42");

    // One Provenance for the transaction, naming each version it wrote.
    assert_eq!(provenance_count(&server, &everything).await, before + 1);
    let provenances = send(&server, "GET", "/Provenance?_sort=-_lastUpdated&_count=1", &everything, None).await.body;
    let provenance = &provenances["entry"][0]["resource"];
    let mut targets: Vec<&str> =
        provenance["target"].as_array().unwrap().iter().map(|t| t["reference"].as_str().unwrap()).collect();
    targets.sort();
    let mut expected = vec![
        format!("Encounter/{encounter_id}/_history/1"),
        "Observation/clinic-obs-1/_history/1".to_owned(),
        "Organization/clinic-org1/_history/1".to_owned(),
    ];
    expected.sort();
    assert_eq!(targets, expected);
    assert_eq!(provenance["agent"][0]["who"]["identifier"]["value"], "clinic");
    assert_eq!(provenance["agent"][1]["who"]["identifier"]["value"], clinic.client_id.as_str());
    assert_eq!(provenance["activity"]["coding"][0]["code"], "CREATE");
    assert_eq!(provenance["recorded"], observation["meta"]["lastUpdated"]);
    // The trail is about the source, not the source's to change.
    let provenance_id = provenance["id"].as_str().unwrap();
    assert!(!provenance_id.starts_with("clinic"), "{provenance_id}");
    let refused = send(&server, "DELETE", &format!("/Provenance/{provenance_id}"), &clinic.token, None).await;
    refused.assert_outcome(403);

    // The same transaction again: the conditional create finds its match, the update is
    // identical; only the POST without an id would create a new Encounter (as any create
    // would), so it is left out, and the Observation finds the Encounter by criteria: the
    // source has no id of its own for it.
    let mut same = bundle.clone();
    same["entry"].as_array_mut().unwrap().remove(0);
    same["entry"][0]["resource"]["encounter"] = json!({"reference": "Encounter?status=finished"});
    let count = provenance_count(&server, &everything).await;
    let first = send(&server, "POST", "", &clinic.token, Some(&same)).await;
    assert_eq!(first.status, 200, "{}", first.text);
    let again = send(&server, "POST", "", &clinic.token, Some(&same)).await;
    assert_eq!(again.status, 200, "{}", again.text);
    for reply in [&first, &again] {
        for entry in reply.body["entry"].as_array().unwrap() {
            assert_eq!(entry["response"]["status"], "200 OK", "{entry}");
            assert_eq!(entry["response"]["etag"], "W/\"1\"", "an identical re-push writes no version: {entry}");
        }
    }
    assert_eq!(provenance_count(&server, &everything).await, count, "nor a Provenance");
}

#[tokio::test]
async fn a_sources_conditional_create_that_matches_nothing_does_not_overwrite_its_live_record_of_that_id() {
    let server = spawn_auth_app().await;
    let clinic = add_source(&server, "clinic", false).await;
    let everything = server.token("operator", "system/*.cruds", None);
    let create = |name: &str, criteria: &str| {
        json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Organization", "id": "org1", "name": name},
             "request": {"method": "POST", "url": "Organization", "ifNoneExist": criteria}}]})
    };
    let first = send(&server, "POST", "", &clinic.token, Some(&create("Clinic", "name=Clinic"))).await;
    assert_eq!(first.status, 200, "{}", first.text);
    assert_eq!(first.body["entry"][0]["response"]["location"], "Organization/clinic-org1/_history/1");
    // Matches nothing, but names the same record of the source's: refused, nothing written.
    let again = send(&server, "POST", "", &clinic.token, Some(&create("Renamed", "name=Renamed"))).await;
    again.assert_outcome(409);
    assert!(again.text.contains("the conditional create matched no resource"), "{}", again.text);
    let stored = send(&server, "GET", "/Organization/clinic-org1", &everything, None).await;
    assert_eq!((stored.body["name"].as_str(), stored.body["meta"]["versionId"].as_str()), (Some("Clinic"), Some("1")));
}

#[tokio::test]
async fn a_source_cannot_touch_another_sources_records_nor_read_them_by_default() {
    let server = spawn_auth_app().await;
    let clinic = add_source(&server, "clinic", false).await;
    let hospital = add_source(&server, "hospital", false).await;
    let everything = server.token("operator", "system/*.cruds", None);
    let ours = identified(patient("123", "Chalmers"), "42");
    assert_eq!(send(&server, "PUT", "/Patient/42", &clinic.token, Some(&ours)).await.status, 201);

    // By id: the hospital's ids are its own, so it addresses hospital-... and never clinic-42.
    let mut changed = ours.clone();
    changed["id"] = json!("clinic-42");
    changed["name"] = json!([{"family": "Hijacked"}]);
    let put = send(&server, "PUT", "/Patient/clinic-42", &hospital.token, Some(&changed)).await;
    assert_eq!((put.status, put.body["id"].clone()), (201, json!("hospital-clinic-42")), "{}", put.text);
    assert_eq!(send(&server, "DELETE", "/Patient/clinic-42", &hospital.token, None).await.status, 204);
    // By criteria: conditional writes match only the hospital's own records.
    let conditional = send(
        &server,
        "PUT",
        "/Patient?identifier=http://hospital.example/mrn|123",
        &hospital.token,
        Some(&patient("123", "Hijacked")),
    )
    .await;
    assert_eq!(conditional.status, 201, "no match among its own: a create; {}", conditional.text);
    assert_eq!(conditional.body["meta"]["source"], "urn:braid:source:hospital", "{}", conditional.text);
    let deleted = send(&server, "DELETE", "/Patient?family=Chalmers", &hospital.token, None).await;
    assert_eq!(deleted.status, 204);
    let stored = send(&server, "GET", "/Patient/clinic-42", &everything, None).await;
    assert_eq!((stored.status, stored.body["name"][0]["family"].clone()), (200, json!("Chalmers")));
    assert_eq!(stored.body["meta"]["versionId"], "1", "the clinic's record was never touched");

    // Reads: the default scope reaches the source's own records only.
    assert_eq!(send(&server, "GET", "/Patient/clinic-42", &hospital.token, None).await.status, 404);
    let search =
        send(&server, "GET", "/Patient?identifier=http://hospital.example/mrn|123", &hospital.token, None).await;
    let found: Vec<(&str, &str)> = search.body["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| (entry["resource"]["id"].as_str().unwrap(), entry["resource"]["meta"]["source"].as_str().unwrap()))
        .collect();
    assert!(!found.is_empty() && found.iter().all(|(_, source)| *source == "urn:braid:source:hospital"), "{found:?}");

    // A record in the namespace that the source did not write (an operator's) is not its own.
    let operators = identified(patient("7", "Operator"), "clinic-7");
    assert_eq!(send(&server, "PUT", "/Patient/clinic-7", &everything, Some(&operators)).await.status, 201);
    let pushed = identified(patient("7", "Pushed"), "7");
    let refused = send(&server, "PUT", "/Patient/7", &clinic.token, Some(&pushed)).await;
    refused.assert_outcome(404);
    assert_eq!(
        send(&server, "GET", "/Patient/clinic-7", &everything, None).await.body["name"][0]["family"],
        "Operator"
    );
}

/// A patient's app (a restricted token) cannot pass its writes off as a source's: the source
/// would own them (its guard lets it change them) and the unified record would show them as the
/// source's. A claim the replaced version did not carry is refused on create, update, patch and
/// in bundles; editing a record that already is the source's keeps its claim and is allowed;
/// another `meta.source` is the app's to set; an unrestricted writer keeps what it sends.
#[tokio::test]
async fn a_token_that_is_not_the_source_cannot_write_records_that_claim_to_be_the_sources() {
    let server = spawn_auth_app().await;
    let clinic = add_source(&server, "clinic", false).await;
    let everything = server.token("operator", "system/*.cruds", None);
    let ours = identified(patient("123", "Chalmers"), "42");
    assert_eq!(send(&server, "PUT", "/Patient/42", &clinic.token, Some(&ours)).await.status, 201);
    let pulse = json!({"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "pulse"},
                       "subject": {"reference": "Patient/42"}});
    assert_eq!(send(&server, "PUT", "/Observation/o1", &clinic.token, Some(&pulse)).await.status, 201);
    let app = server.token("app", "patient/Observation.cruds", Some("clinic-42"));
    let observation = |source: &str| {
        json!({"resourceType": "Observation", "status": "final", "code": {"text": "steps"},
               "subject": {"reference": "Patient/clinic-42"}, "meta": {"source": source}})
    };
    let forged = observation("urn:braid:source:clinic");

    // New claims: a create, a PUT that creates, a transaction, a batch entry.
    let created = send(&server, "POST", "/Observation", &app, Some(&forged)).await;
    created.assert_outcome(403);
    assert!(created.text.contains("'clinic'"), "{}", created.text);
    let mut with_id = forged.clone();
    with_id["id"] = json!("o2");
    send(&server, "PUT", "/Observation/o2", &app, Some(&with_id)).await.assert_outcome(403);
    let transaction = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": observation("https://app.example"), "request": {"method": "POST", "url": "Observation"}},
        {"resource": with_id, "request": {"method": "PUT", "url": "Observation/o2"}}
    ]});
    send(&server, "POST", "", &app, Some(&transaction)).await.assert_outcome(403);
    let mut batch = transaction.clone();
    batch["type"] = json!("batch");
    let reply = send(&server, "POST", "", &app, Some(&batch)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let statuses: Vec<&str> =
        reply.body["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["201 Created", "403 Forbidden"]);

    // The app's own record: its `meta.source` is kept, and it may not be turned into the
    // clinic's, by PUT or by PATCH; the clinic's conditional delete does not reach it.
    let own = send(&server, "POST", "/Observation", &app, Some(&observation("https://app.example"))).await;
    assert_eq!((own.status, own.body["meta"]["source"].clone()), (201, json!("https://app.example")), "{}", own.text);
    let id = own.body["id"].as_str().unwrap().to_owned();
    let mut claimed = own.body.clone();
    claimed["meta"] = json!({"source": "urn:braid:source:clinic"});
    send(&server, "PUT", &format!("/Observation/{id}"), &app, Some(&claimed)).await.assert_outcome(403);
    let patch = |path: &str, operations: Value| {
        let request = server
            .app
            .client
            .patch(server.app.url(path))
            .bearer_auth(&app)
            .header("content-type", "application/json-patch+json")
            .body(operations.to_string());
        server.app.send(request)
    };
    let claim = json!([{"op": "replace", "path": "/meta/source", "value": "urn:braid:source:clinic"}]);
    patch(&format!("/Observation/{id}"), claim).await.assert_outcome(403);
    let unmatched = send(&server, "DELETE", &format!("/Observation?_id={id}"), &clinic.token, None).await;
    assert_eq!(unmatched.status, 204, "{}", unmatched.text);
    let kept = send(&server, "GET", &format!("/Observation/{id}"), &everything, None).await;
    assert_eq!((kept.status, kept.body["meta"]["source"].clone()), (200, json!("https://app.example")));
    let claiming = send(&server, "GET", "/Observation?_source=urn:braid:source:clinic", &everything, None).await;
    let ids: Vec<&str> =
        claiming.body["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["clinic-o1"], "only the clinic's own record claims it");

    // The clinic's record, edited by the app: the claim was there already, so a PUT of what it
    // read and a patch are updates like any other.
    let mut read = send(&server, "GET", "/Observation/clinic-o1", &app, None).await.body;
    read["status"] = json!("amended");
    let updated = send(&server, "PUT", "/Observation/clinic-o1", &app, Some(&read)).await;
    assert_eq!((updated.status, updated.body["status"].clone()), (200, json!("amended")), "{}", updated.text);
    let status = json!([{"op": "replace", "path": "/status", "value": "corrected"}]);
    let patched = patch("/Observation/clinic-o1", status).await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(patched.body["meta"]["source"], "urn:braid:source:clinic");

    // Nor may the app, or another source, plant the identifier that keeps the clinic's own ids:
    // a search for the clinic's `o1` finds only the clinic's record.
    let mut planted = observation("https://app.example");
    planted["identifier"] = json!([{"system": "urn:braid:source:clinic", "value": "o1"}]);
    let refused = send(&server, "POST", "/Observation", &app, Some(&planted)).await;
    refused.assert_outcome(403);
    assert!(refused.text.contains("urn:braid:source:clinic"), "{}", refused.text);
    let lab = add_source(&server, "lab", false).await;
    let mut labs = planted.clone();
    labs.as_object_mut().unwrap().remove("meta");
    labs["id"] = json!("x");
    send(&server, "PUT", "/Observation/x", &lab.token, Some(&labs)).await.assert_outcome(403);
    labs["identifier"][0]["system"] = json!("urn:braid:source:lab");
    labs["identifier"][0]["value"] = json!("x");
    assert_eq!(send(&server, "PUT", "/Observation/x", &lab.token, Some(&labs)).await.status, 201, "its own");
    let found = send(&server, "GET", "/Observation?identifier=urn:braid:source:clinic|o1", &everything, None).await;
    let ids: Vec<&str> =
        found.body["entry"].as_array().unwrap().iter().map(|e| e["resource"]["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["clinic-o1"]);

    // An unrestricted writer (restoring an export, say) keeps what it sends.
    let restored =
        send(&server, "POST", "/Observation", &everything, Some(&observation("urn:braid:source:clinic"))).await;
    assert_eq!(restored.status, 201, "{}", restored.text);
}

/// Synthea's patient bundles as an EHR's integration engine would push them: transactions of
/// POSTs whose resources carry the sender's ids, cross-referenced by `urn:uuid` and with
/// contained resources. Pushed again unchanged, they change nothing.
#[tokio::test]
async fn synthea_bundles_pushed_by_a_source_land_in_its_namespace_and_pushed_again_change_nothing() {
    let server = spawn_auth_app().await;
    let ehr = add_source(&server, "ehr", false).await;
    let everything = server.token("operator", "system/*.cruds", None);
    let mut files: Vec<_> = std::fs::read_dir("tests/data/synthea").unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let bundles: Vec<Value> = files
        .iter()
        .take(4)
        .map(|path| {
            let mut bundle: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
            bundle["type"] = json!("transaction");
            bundle
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    for bundle in &bundles {
        let reply = send(&server, "POST", "", &ehr.token, Some(bundle)).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let sent = bundle["entry"].as_array().unwrap();
        assert_eq!(reply.body["entry"].as_array().unwrap().len(), sent.len(), "an answer for each entry");
        // Each fullUrl names the resource of the sender's id, now in the namespace.
        let stored_as = |full_url: &str| {
            let entry = sent.iter().find(|entry| entry["fullUrl"] == full_url).expect("a reference inside the bundle");
            let resource = &entry["resource"];
            format!("{}/ehr-{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap())
        };
        for (entry, answer) in sent.iter().zip(reply.body["entry"].as_array().unwrap()) {
            let resource = &entry["resource"];
            let original_id = resource["id"].as_str().unwrap();
            let location = stored_as(entry["fullUrl"].as_str().unwrap());
            // Patients share their providers: a later push sends the same Organization again.
            let status = if seen.insert(location.clone()) { "201 Created" } else { "200 OK" };
            assert_eq!(answer["response"]["status"], status, "{location}: {answer}");
            assert_eq!(answer["response"]["location"], format!("{location}/_history/1"));
            let stored =
                without_golden_link(&send(&server, "GET", &format!("/{location}"), &everything, None).await.body);
            assert_eq!(stored["meta"]["source"], "urn:braid:source:ehr", "{location}");
            let kept = json!({"system": "urn:braid:source:ehr", "value": original_id});
            assert!(stored["identifier"].as_array().unwrap().contains(&kept), "{location}: {}", stored["identifier"]);
            let (mut before, mut after) = (Vec::new(), Vec::new());
            references(resource, &mut before);
            references(&stored, &mut after);
            assert_eq!(before.len(), after.len(), "{location}");
            for (original, rewritten) in before.iter().zip(&after) {
                if original.starts_with("urn:uuid:") {
                    assert_eq!(rewritten, &stored_as(original), "{original} in {location}");
                } else {
                    assert!(original.starts_with('#'), "Synthea's other references are to contained resources");
                    assert_eq!(original, rewritten, "a contained reference stays as it is");
                }
            }
        }
    }
    assert!(seen.len() > 300, "{}", seen.len());
    assert_eq!(provenance_count(&server, &everything).await, bundles.len(), "one Provenance per push");

    for bundle in &bundles {
        let reply = send(&server, "POST", "", &ehr.token, Some(bundle)).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        let answers = reply.body["entry"].as_array().unwrap();
        assert_eq!(answers.len(), bundle["entry"].as_array().unwrap().len(), "an answer for each entry");
        for answer in answers {
            assert_eq!(answer["response"]["status"], "200 OK", "{answer}");
            assert_eq!(answer["response"]["etag"], "W/\"1\"", "pushed again unchanged: {answer}");
        }
    }
    assert_eq!(provenance_count(&server, &everything).await, bundles.len(), "a push that changed nothing");
}

#[tokio::test]
async fn strict_sources_refuse_value_errors_lenient_ones_store_them_with_their_issues_and_both_count() {
    let server = spawn_auth_app().await;
    let strict = add_source(&server, "strict", false).await;
    let lenient = add_source(&server, "lenient", true).await;
    let everything = server.token("operator", "system/*.cruds", None);
    let flawed = json!({"resourceType": "Patient", "id": "1", "birthDate": "2021-02-30",
        "identifier": [{"system": "http://bad system/mrn", "value": "1"}]});
    let broken = json!({"resourceType": "Patient", "id": "2", "birthDate": 1974});

    let refused = send(&server, "PUT", "/Patient/1", &strict.token, Some(&flawed)).await;
    refused.assert_outcome(400);
    assert!(refused.expressions().contains(&"Patient.birthDate".to_owned()), "{}", refused.text);
    assert_eq!(send(&server, "GET", "/Patient/strict-1", &everything, None).await.status, 404);

    let stored = send(&server, "PUT", "/Patient/1", &lenient.token, Some(&flawed)).await;
    assert_eq!(stored.status, 201, "{}", stored.text);
    let body = send(&server, "GET", "/Patient/lenient-1", &everything, None).await.body;
    assert_eq!(body["birthDate"], "2021-02-30", "kept as sent");
    assert_eq!(body["identifier"][0]["system"], "http://bad system/mrn");
    assert_eq!(body["contained"][0]["resourceType"], "OperationOutcome");
    let issues = body["contained"][0]["issue"].as_array().unwrap();
    assert!(issues.iter().all(|issue| issue["severity"] == "warning"), "{issues:?}");
    let expressions: Vec<&str> = issues.iter().filter_map(|issue| issue["expression"][0].as_str()).collect();
    assert!(expressions.contains(&"Patient.birthDate"), "{expressions:?}");
    assert!(expressions.iter().any(|e| e.starts_with("Patient.identifier[0].system")), "{expressions:?}");
    assert_eq!(body["extension"][0]["valueReference"]["reference"], "#braid-quality-issues");
    let tagged = send(&server, "GET", "/Patient?_tag=urn:braid:quality|issues", &everything, None).await.body;
    assert_eq!(tagged["entry"].as_array().unwrap().len(), 1);
    assert_eq!(tagged["entry"][0]["resource"]["id"], "lenient-1");
    // An identical re-push stays one version.
    let again = send(&server, "PUT", "/Patient/1", &lenient.token, Some(&flawed)).await;
    assert_eq!((again.status, again.body["meta"]["versionId"].clone()), (200, json!("1")));

    // Structural errors are refused whatever the policy.
    for source in [&strict, &lenient] {
        let reply = send(&server, "PUT", "/Patient/2", &source.token, Some(&broken)).await;
        reply.assert_outcome(400);
    }
    for stored in ["/Patient/strict-2", "/Patient/lenient-2"] {
        assert_eq!(send(&server, "GET", stored, &everything, None).await.status, 404, "nothing stored: {stored}");
    }

    // A batch: each entry on its own.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "id": "3", "name": [{"family": "Fine"}]},
         "request": {"method": "PUT", "url": "Patient/3"}},
        {"resource": flawed, "request": {"method": "PUT", "url": "Patient/1"}},
        {"resource": broken, "request": {"method": "PUT", "url": "Patient/2"}}
    ]});
    let reply = send(&server, "POST", "", &strict.token, Some(&batch)).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let statuses: Vec<&str> =
        reply.body["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["201 Created", "400 Bad Request", "400 Bad Request"]);
    assert_eq!(reply.body["entry"][1]["response"]["outcome"]["resourceType"], "OperationOutcome");
    let reply = send(&server, "POST", "", &lenient.token, Some(&batch)).await;
    let statuses: Vec<&str> =
        reply.body["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["201 Created", "200 OK", "400 Bad Request"]);

    // The figures, live through the operator's socket.
    let shown = operator(&server, AdminRequest::ShowSource { name: "strict".into() }).await.unwrap();
    assert_eq!(shown["policy"], "strict");
    assert_eq!(shown["counts"]["pushes"], 3, "{shown}");
    assert_eq!(shown["counts"]["created"], 1, "{shown}");
    assert_eq!(shown["counts"]["rejected"], 4, "{shown}");
    let rejections = shown["recent_rejections"].as_array().unwrap();
    assert_eq!(rejections.len(), 4);
    assert_eq!(rejections[0]["what"], "Patient/1");
    assert!(rejections[0]["reason"].as_str().unwrap().contains("Patient.birthDate"), "{shown}");
    assert_eq!(rejections[2]["what"], "Bundle.entry[1]");
    let shown = operator(&server, AdminRequest::ShowSource { name: "lenient".into() }).await.unwrap();
    // Stored once with its issues: the identical re-pushes (alone and in the batch) stored nothing.
    assert_eq!(shown["counts"]["stored_with_issues"], 1, "{shown}");
    assert_eq!(shown["counts"]["unchanged"], 2, "{shown}");
    assert_eq!(shown["counts"]["rejected"], 2, "{shown}");

    // The same figures over HTTP: a source sees its own, an operator's token every source's.
    let app = &server.app;
    let status = |path: &str, token: Option<&str>| {
        let mut request = app.client.get(app.base.replace("/fhir", path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        app.send(request)
    };
    let own = status("/sources/strict", Some(&strict.token)).await;
    assert_eq!(own.status, 200, "{}", own.text);
    assert_eq!(own.body["counts"]["rejected"], 4);
    status("/sources/strict", Some(&lenient.token)).await.assert_outcome(404);
    status("/sources/nobody", Some(&everything)).await.assert_outcome(404);
    status("/sources", Some(&strict.token)).await.assert_outcome(403);
    status("/sources", None).await.assert_outcome(401);
    let patients_only = server.token("viewer", "system/Patient.rs", None);
    status("/sources/strict", Some(&patients_only)).await.assert_outcome(403);
    let all = status("/sources", Some(&everything)).await;
    let names: Vec<&str> = all.body.as_array().unwrap().iter().map(|s| s["source"].as_str().unwrap()).collect();
    assert_eq!(names, ["lenient", "strict"]);

    // A removed source's token views nothing, not even a new source added under its name.
    operator(&server, AdminRequest::RemoveSource { name: "strict".into() }).await.unwrap();
    add_source(&server, "strict", false).await;
    status("/sources/strict", Some(&strict.token)).await.assert_outcome(401);
}

#[tokio::test]
async fn operators_add_show_list_and_remove_sources_from_the_command_line_while_braid_runs() {
    let server = spawn_auth_app().await;
    let data = server.data.clone();
    let dir = tempfile::tempdir().unwrap();
    let key = ClientKey::es384("cli-1");
    let jwks_file = dir.path().join("jwks.json");
    std::fs::write(&jwks_file, serde_json::to_string(&JwkSet { keys: vec![key.public.clone()] }).unwrap()).unwrap();
    let braid = |args: &[&str]| braid_cli(&data, args);
    let output =
        braid(&["source", "add", "lab", "--jwks", jwks_file.to_str().unwrap(), "--types", "Patient,Observation"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let added: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(added["source"], "lab");
    let client_id = added["client_id"].as_str().unwrap().to_owned();

    let app = &server.app;
    let reply = assertion_token(app, &key.sign(&claims(&client_id, &token_url(app))), "system/*.cruds").await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let scope = reply.body["scope"].as_str().unwrap();
    assert_eq!(
        scope,
        "system/Patient.cruds?_source=urn:braid:source:lab system/Observation.cruds?_source=urn:braid:source:lab"
    );
    let token = reply.body["access_token"].as_str().unwrap().to_owned();
    let sent = identified(patient("1", "Lab"), "1");
    assert_eq!(send(&server, "PUT", "/Patient/1", &token, Some(&sent)).await.status, 201);
    let condition = json!({"resourceType": "Condition", "subject": {"reference": "Patient/1"}});
    send(&server, "POST", "/Condition", &token, Some(&condition)).await.assert_outcome(403);

    let output = braid(&["source", "show", "lab", "--json"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let shown: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((shown["source"].clone(), shown["kind"].clone()), (json!("lab"), json!("push")));
    assert_eq!(shown["client_id"], client_id.as_str());
    assert_eq!(shown["types"], json!(["Patient", "Observation"]));
    assert_eq!((shown["counts"]["pushes"].clone(), shown["counts"]["created"].clone()), (json!(2), json!(1)));
    let output = braid(&["source", "show", "lab"]).await;
    let text = String::from_utf8(output.stdout).unwrap();
    assert!(text.starts_with("source lab (push, strict policy)"), "{text}");
    let output = braid(&["source", "list"]).await;
    let listed: Vec<Value> =
        String::from_utf8(output.stdout).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(listed.len(), 1);

    for (args, message) in [
        (vec!["source", "add", "Bad-Name", "--jwks", jwks_file.to_str().unwrap()], "lowercase letters and digits"),
        (vec!["source", "add", "lab", "--jwks", jwks_file.to_str().unwrap()], "already a source named lab"),
        (vec!["source", "add", "x", "--jwks", jwks_file.to_str().unwrap(), "--types", "Nope"], "'Nope'"),
        // An empty item would otherwise leave a list that grants every type.
        (vec!["source", "add", "x", "--jwks", jwks_file.to_str().unwrap(), "--types", ""], "empty item"),
        (
            vec!["source", "add", "x", "--jwks", jwks_file.to_str().unwrap(), "--types", "Patient,,Observation"],
            "empty item",
        ),
        // A pull source's credentials on a push source are a mistake, not something to ignore.
        (vec!["source", "add", "x", "--jwks", jwks_file.to_str().unwrap(), "--client-id", "a"], "--pull"),
        (vec!["source", "add", "x", "--jwks", jwks_file.to_str().unwrap(), "--key", "k.pem"], "--pull"),
        (vec!["source", "show", "nobody"], "there is no source nobody"),
    ] {
        let output = braid(&args).await;
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }

    let output = braid(&["source", "remove", "lab"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    // Its token is dead at once (for reads too), its client gets no more tokens, and what it
    // wrote stays.
    let dead = send(&server, "PUT", "/Patient/1", &token, Some(&sent)).await;
    dead.assert_outcome(401);
    let challenge = dead.header("www-authenticate").unwrap_or_default().to_owned();
    assert!(challenge.contains("invalid_token") && challenge.contains("removed"), "{challenge}");
    send(&server, "GET", "/Patient/lab-1", &token, None).await.assert_outcome(401);
    let refused = assertion_token(app, &key.sign(&claims(&client_id, &token_url(app))), "system/*.cruds").await;
    assert_eq!(refused.body["error"], "invalid_client");
    let everything = server.token("operator", "system/*.rs", None);
    assert_eq!(send(&server, "GET", "/Patient/lab-1", &everything, None).await.status, 200);
    // The name added again is a new source with a new client: the old client's tokens stay dead.
    let other_key = ClientKey::es384("cli-2");
    let other_jwks = dir.path().join("other.json");
    std::fs::write(&other_jwks, serde_json::to_string(&JwkSet { keys: vec![other_key.public.clone()] }).unwrap())
        .unwrap();
    let output = braid(&["source", "add", "lab", "--jwks", other_jwks.to_str().unwrap()]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    send(&server, "PUT", "/Patient/1", &token, Some(&sent)).await.assert_outcome(401);
}
