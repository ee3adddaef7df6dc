//! The CapabilityStatement.

use crate::helpers::spawn_app;

#[actix_web::test]
async fn the_capability_statement_describes_what_the_routes_serve() {
    let app = spawn_app().await;
    let reply = app.get("/metadata").await;
    assert_eq!(reply.status, 200);
    let statement = &reply.body;
    assert_eq!(statement["resourceType"], "CapabilityStatement");
    assert_eq!(statement["fhirVersion"], "4.0.1");
    assert_eq!(statement["kind"], "instance");
    let rest = &statement["rest"][0];
    let system: Vec<&str> =
        rest["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
    assert_eq!(system, vec!["transaction", "batch", "history-system", "search-system"]);
    let resources = rest["resource"].as_array().unwrap();
    assert_eq!(resources.len(), 146);
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    let codes: Vec<&str> =
        patient["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
    assert_eq!(
        codes,
        vec!["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"]
    );
    let params: Vec<&str> =
        patient["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for expected in
        ["_id", "_lastUpdated", "name", "family", "birthdate", "identifier", "gender", "general-practitioner"]
    {
        assert!(params.contains(&expected), "Patient searchParam {expected}");
    }
    let unsupported: Vec<&str> =
        rest["extension"].as_array().unwrap().iter().map(|e| e["valueString"].as_str().unwrap()).collect();
    assert!(unsupported.iter().any(|u| u.starts_with("_text")), "{unsupported:?}");
    assert_eq!(patient["conditionalCreate"], true);
    assert_eq!(patient["conditionalUpdate"], true);
    assert_eq!(patient["conditionalDelete"], "single", "conditional_delete_max is 1 by default");
    assert_eq!(patient["operation"][0]["name"], "validate");
    let observation = resources.iter().find(|r| r["type"] == "Observation").unwrap();
    assert_eq!(observation["supportedProfile"][0], "http://hl7.org/fhir/StructureDefinition/vitalsigns");

    // Every advertised type-level interaction is actually served.
    assert_eq!(app.get("/Patient/_history").await.status, 200);
    assert_eq!(app.get("/Patient/nobody").await.status, 404);
}
