//! Profile rules on writes, and `$validate`.

use serde_json::{Value, json};

use crate::helpers::{heart_rate, spawn_app};

#[actix_web::test]
async fn a_conformant_vital_sign_is_stored() {
    let app = spawn_app().await;
    let reply = app.post("/Observation", &heart_rate()).await;
    assert_eq!(reply.status, 201, "{}", reply.text);
}

#[actix_web::test]
async fn vital_signs_that_break_the_profile_are_rejected_with_422_naming_the_element() {
    let app = spawn_app().await;
    type Breakage = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Breakage, &str)> = vec![
        (
            "no category",
            Box::new(|o| {
                o.as_object_mut().unwrap().remove("category");
            }),
            "Observation.category",
        ),
        (
            "no LOINC code",
            Box::new(|o| o["code"] = json!({"coding": [{"system": "http://acme", "code": "hr"}]})),
            "Observation.code",
        ),
        (
            "no subject",
            Box::new(|o| {
                o.as_object_mut().unwrap().remove("subject");
            }),
            "Observation.subject",
        ),
        (
            "no effective time",
            Box::new(|o| {
                o.as_object_mut().unwrap().remove("effectiveDateTime");
            }),
            "Observation.effectiveDateTime",
        ),
        (
            "no value and no reason",
            Box::new(|o| {
                o.as_object_mut().unwrap().remove("valueQuantity");
            }),
            "Observation.valueQuantity",
        ),
        (
            "a non-UCUM unit",
            Box::new(|o| o["valueQuantity"]["system"] = json!("http://acme/units")),
            "Observation.valueQuantity.system",
        ),
        (
            "the wrong UCUM unit",
            Box::new(|o| o["valueQuantity"]["code"] = json!("/s")),
            "Observation.valueQuantity.code",
        ),
    ];
    for (name, break_it, expression) in cases {
        let mut observation = heart_rate();
        break_it(&mut observation);
        let reply = app.post("/Observation", &observation).await;
        reply.assert_outcome(422);
        assert!(
            reply.expressions().contains(&expression.to_owned()),
            "{name}: expected {expression} in {}",
            reply.text
        );
    }
    let mut absent = heart_rate();
    absent.as_object_mut().unwrap().remove("valueQuantity");
    absent["dataAbsentReason"] = json!({"text": "sensor off"});
    assert_eq!(app.post("/Observation", &absent).await.status, 201, "a dataAbsentReason replaces the value");
    assert_eq!(app.history_len().await, 1);
}

#[actix_web::test]
async fn blood_pressure_components_are_checked_too() {
    let app = spawn_app().await;
    let mut bp = heart_rate();
    bp["meta"]["profile"] = json!(["http://hl7.org/fhir/StructureDefinition/bp"]);
    bp["code"] = json!({"coding": [{"system": "http://loinc.org", "code": "85354-9"}]});
    bp.as_object_mut().unwrap().remove("valueQuantity");
    bp["component"] = json!([
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}},
        {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": 80, "system": "http://unitsofmeasure.org", "code": "kPa"}}
    ]);
    let reply = app.post("/Observation", &bp).await;
    reply.assert_outcome(422);
    assert_eq!(reply.expressions(), vec!["Observation.component[1].valueQuantity.code"]);
}

#[actix_web::test]
async fn validate_reports_without_writing() {
    let app = spawn_app().await;
    let ok = app.post("/Observation/$validate", &heart_rate()).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body["issue"][0]["severity"], "information");

    let mut broken = heart_rate();
    broken["status"] = json!(42);
    let reply = app.post("/Observation/$validate", &broken).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body["issue"][0]["severity"], "error");
    assert_eq!(reply.expressions(), vec!["Observation.status"]);

    let wrapped = json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": broken}]});
    let reply = app.post("/Observation/$validate", &wrapped).await;
    assert_eq!(reply.expressions(), vec!["Observation.status"]);

    let unprofiled = json!({"resourceType": "Observation", "status": "final", "code": {"text": "t"},
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}]});
    let reply = app.post("/Observation/$validate", &unprofiled).await;
    assert!(reply.body["issue"].as_array().unwrap().iter().all(|i| i["severity"] == "warning"), "{}", reply.text);

    app.post("/Observation/$validate", &json!({"resourceType": "Patient"})).await.assert_outcome(400);
    assert_eq!(app.history_len().await, 0);
}
