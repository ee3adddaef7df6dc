//! Bad input: every case gets a clear OperationOutcome with the right status, and nothing is
//! written.

use serde_json::json;

use crate::helpers::{patient, spawn_app, spawn_app_with};

struct Case {
    name: &'static str,
    method: reqwest::Method,
    path: &'static str,
    content_type: Option<&'static str>,
    accept: Option<&'static str>,
    body: String,
    status: u16,
    /// An expression the OperationOutcome must name, if any.
    expression: Option<&'static str>,
}

fn case(name: &'static str, method: reqwest::Method, path: &'static str, body: impl Into<String>, status: u16) -> Case {
    Case {
        name,
        method,
        path,
        content_type: Some("application/fhir+json"),
        accept: None,
        body: body.into(),
        status,
        expression: None,
    }
}

#[actix_web::test]
async fn bad_requests_get_operation_outcomes_and_change_nothing() {
    use reqwest::Method;
    let app = spawn_app_with(|settings| {
        settings.max_body_bytes = 4096;
        settings.max_json_depth = 20;
    })
    .await;
    let mut existing = patient("Existing");
    existing["id"] = json!("existing");
    assert_eq!(app.put("/Patient/existing", &existing).await.status, 201);
    let before = app.history_len().await;

    let deep = format!("{{\"resourceType\":\"Patient\",\"extension\":{}1{}}}", "[".repeat(30), "]".repeat(30));
    let cases = vec![
        case("malformed JSON", Method::POST, "/Patient", "{\"resourceType\": \"Patient\",", 400),
        case("a JSON array instead of a resource", Method::POST, "/Patient", "[1,2]", 400),
        case("no resourceType", Method::POST, "/Patient", "{\"name\": []}", 400),
        case("an unknown resourceType", Method::POST, "/Patient", "{\"resourceType\": \"Spaceship\"}", 400),
        Case {
            expression: Some("Patient.birthDate"),
            ..case(
                "a number where a date belongs",
                Method::POST,
                "/Patient",
                r#"{"resourceType":"Patient","birthDate":19800229}"#,
                400,
            )
        },
        Case {
            expression: Some("Patient.birthDate"),
            ..case(
                "an impossible date format",
                Method::POST,
                "/Patient",
                r#"{"resourceType":"Patient","birthDate":"29/02/1980"}"#,
                400,
            )
        },
        Case {
            expression: Some("Patient.active"),
            ..case(
                "a string where a boolean belongs",
                Method::POST,
                "/Patient",
                r#"{"resourceType":"Patient","active":"yes"}"#,
                400,
            )
        },
        Case {
            expression: Some("Patient.favouriteColour"),
            ..case(
                "an unknown element",
                Method::POST,
                "/Patient",
                r#"{"resourceType":"Patient","favouriteColour":"blue"}"#,
                400,
            )
        },
        Case {
            expression: Some("Patient.name"),
            ..case("an empty array", Method::POST, "/Patient", r#"{"resourceType":"Patient","name":[]}"#, 400)
        },
        Case {
            expression: Some("Patient.gender"),
            ..case("a null value", Method::POST, "/Patient", r#"{"resourceType":"Patient","gender":null}"#, 400)
        },
        Case {
            expression: Some("resourceType"),
            ..case(
                "a body of another type than the URL",
                Method::POST,
                "/Patient",
                r#"{"resourceType":"Observation","status":"final","code":{"text":"x"}}"#,
                400,
            )
        },
        case("an unknown type in the URL", Method::POST, "/Spaceship", r#"{"resourceType":"Patient"}"#, 404),
        case("an unknown type in a read", Method::GET, "/Spaceship/1", "", 404),
        case("an invalid id in the URL", Method::GET, "/Patient/bad_id!", "", 400),
        Case {
            expression: Some("Patient.id"),
            ..case(
                "an id that differs from the URL",
                Method::PUT,
                "/Patient/existing",
                r#"{"resourceType":"Patient","id":"other","active":false}"#,
                400,
            )
        },
        Case {
            expression: Some("Patient.id"),
            ..case(
                "an update without an id",
                Method::PUT,
                "/Patient/existing",
                r#"{"resourceType":"Patient","active":false}"#,
                400,
            )
        },
        case(
            "a body over the size limit",
            Method::POST,
            "/Patient",
            format!("{{\"resourceType\":\"Patient\",\"id\":\"{}\"}}", "x".repeat(5000)),
            413,
        ),
        case("JSON nested beyond the depth limit", Method::POST, "/Patient", deep, 400),
        case("an empty body", Method::POST, "/Patient", "", 400),
        Case {
            content_type: Some("application/fhir+xml"),
            ..case("an XML body", Method::POST, "/Patient", "<Patient xmlns=\"http://hl7.org/fhir\"/>", 415)
        },
        Case {
            content_type: Some("text/plain"),
            ..case("a text body", Method::POST, "/Patient", r#"{"resourceType":"Patient"}"#, 415)
        },
        Case {
            accept: Some("application/fhir+xml"),
            ..case("a client that accepts only XML", Method::GET, "/Patient/existing", "", 406)
        },
        case("_format=xml", Method::GET, "/Patient/existing?_format=xml", "", 406),
        case("a PATCH body that is no patch", Method::PATCH, "/Patient/existing", r#"{"resourceType":"Patient"}"#, 400),
        case("a path that is no interaction", Method::GET, "/Patient/existing/extra/segments/here", "", 404),
        case("an unknown history parameter", Method::GET, "/Patient/_history?_list=2020", "", 400),
        case("a bad _count", Method::GET, "/_history?_count=many", "", 400),
        case("a bad _since", Method::GET, "/_history?_since=yesterday", "", 400),
        case("a forged history cursor", Method::GET, "/_history?_cursor=AAAAAAAAAAEAAAAAAAAAAAAAAAAAAAAA", "", 400),
        case(
            "a bundle that is neither transaction nor batch",
            Method::POST,
            "",
            r#"{"resourceType":"Bundle","type":"collection"}"#,
            400,
        ),
        case("a resource posted to the base", Method::POST, "", r#"{"resourceType":"Patient"}"#, 400),
        case("conditional update without criteria", Method::PUT, "/Patient", r#"{"resourceType":"Patient"}"#, 400),
        case("conditional delete with an unknown parameter", Method::DELETE, "/Patient?colour=red", "", 400),
        case(
            "$validate on an unknown type",
            Method::POST,
            "/Spaceship/$validate",
            r#"{"resourceType":"Patient"}"#,
            404,
        ),
    ];
    for case in cases {
        let mut request = app.client.request(case.method.clone(), app.url(case.path)).body(case.body.clone());
        if let Some(content_type) = case.content_type {
            request = request.header("content-type", content_type);
        }
        if let Some(accept) = case.accept {
            request = request.header("accept", accept);
        }
        let reply = app.send(request).await;
        assert_eq!(reply.status, case.status, "{}: {}", case.name, reply.text);
        assert_eq!(reply.body["resourceType"], "OperationOutcome", "{}: {}", case.name, reply.text);
        assert_eq!(reply.body["issue"][0]["severity"], "error", "{}", case.name);
        if let Some(expression) = case.expression {
            assert!(
                reply.expressions().iter().any(|e| e == expression),
                "{}: expected {expression} in {}",
                case.name,
                reply.text
            );
        }
    }
    assert_eq!(app.history_len().await, before, "a rejected request wrote something");
    assert_eq!(app.get("/Patient/existing").await.body["meta"]["versionId"], "1");
}

#[actix_web::test]
async fn method_not_allowed_lists_the_allowed_methods() {
    let app = spawn_app().await;
    let reply = app.send(app.client.post(app.url("/Patient/x"))).await;
    reply.assert_outcome(405);
    assert_eq!(reply.header("allow"), Some("GET, PUT, DELETE, PATCH"));
}

#[actix_web::test]
async fn plain_json_is_accepted_and_produced_on_request() {
    let app = spawn_app().await;
    let reply = app
        .send(
            app.client
                .post(app.url("/Patient"))
                .header("content-type", "application/json")
                .header("accept", "application/json")
                .body(patient("Json").to_string()),
        )
        .await;
    assert_eq!(reply.status, 201, "{}", reply.text);
    assert_eq!(reply.header("content-type"), Some("application/json; charset=utf-8"));
    let fhir = app.get("/metadata?_format=json").await;
    assert_eq!(fhir.status, 200);
    assert_eq!(fhir.header("content-type"), Some("application/fhir+json; charset=utf-8"));
}

#[actix_web::test]
async fn errors_outside_known_types_are_operation_outcomes_too() {
    let app = spawn_app().await;
    let reply = app.get("/Spaceship").await;
    reply.assert_outcome(404);
    assert!(reply.body["issue"][0]["diagnostics"].as_str().unwrap().contains("Spaceship"));
}
