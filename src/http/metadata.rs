//! `GET /fhir/metadata`: the CapabilityStatement, generated from the route table so that it
//! lists exactly the interactions the routes serve.

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use serde_json::{Value, json};

use super::{Ctx, Interaction, request, response, routes};
use crate::auth::Endpoints;
use crate::fhir::validation::validator;
use crate::fhir::{FhirError, ResourceType};
use crate::search::registry::registry;

/// Lists, in the CapabilityStatement, each official search parameter Braid cannot evaluate.
pub const UNSUPPORTED_SEARCH_PARAMETER: &str =
    "https://braid.dev/fhir/StructureDefinition/unsupported-search-parameter";

/// The date of this release of the CapabilityStatement (required by FHIR).
const RELEASE_DATE: &str = "2026-11-21";

/// The canonical base of the FHIR Bulk Data Access IG's definitions.
const BULK_DATA: &str = "http://hl7.org/fhir/uv/bulkdata";

pub async fn capability_statement(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    let Ctx { http, state, .. } = ctx;
    let multiple_delete = state.limits.conditional_delete_max > 1;
    let base = request::base_url(&http, &state);
    let mut statement = build(&base, multiple_delete);
    if state.auth.is_some() {
        statement["rest"][0]["security"] = security(&Endpoints::for_base(&base));
    }
    Ok(response::json(StatusCode::OK, &statement))
}

/// `rest.security` of a server that is its own SMART authorization server: the service code,
/// and the `oauth-uris` extension (the endpoints; some clients read them only from here).
fn security(endpoints: &Endpoints) -> Value {
    json!({
        "cors": true,
        "service": [{
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/restful-security-service", "code": "SMART-on-FHIR"}],
            "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
        }],
        "extension": [{
            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
            "extension": [
                {"url": "token", "valueUri": endpoints.token},
                {"url": "authorize", "valueUri": format!("{}/auth/authorize", endpoints.origin())},
                {"url": "revoke", "valueUri": format!("{}/auth/revoke", endpoints.origin())},
                {"url": "register", "valueUri": format!("{}/auth/register", endpoints.origin())},
                {"url": "introspect", "valueUri": format!("{}/auth/introspect", endpoints.origin())},
            ],
        }],
    })
}

/// `multiple_delete`: whether a conditional delete may delete more than one match.
pub fn build(base: &str, multiple_delete: bool) -> Value {
    let offered: Vec<Interaction> = routes().iter().map(|route| route.interaction).collect();
    let has = |interaction| offered.contains(&interaction);
    let type_codes: Vec<&str> = [
        Interaction::Read,
        Interaction::Vread,
        Interaction::Update,
        Interaction::Patch,
        Interaction::Delete,
        Interaction::HistoryInstance,
        Interaction::HistoryType,
        Interaction::Create,
        Interaction::SearchType,
    ]
    .into_iter()
    .filter(|interaction| has(*interaction))
    .map(Interaction::restful_code)
    .collect();
    let system_codes: Vec<&str> = [
        (Interaction::TransactionOrBatch, "transaction"),
        (Interaction::TransactionOrBatch, "batch"),
        (Interaction::HistorySystem, "history-system"),
        (Interaction::SearchSystem, "search-system"),
    ]
    .into_iter()
    .filter(|(interaction, _)| has(*interaction))
    .map(|(_, code)| code)
    .collect();

    let resources: Vec<Value> = ResourceType::all()
        .map(|resource_type| {
            let mut resource = json!({
                "type": resource_type.as_str(),
                "interaction": type_codes.iter().map(|code| json!({"code": code})).collect::<Vec<_>>(),
                "versioning": "versioned-update",
                "readHistory": has(Interaction::Vread),
                "updateCreate": has(Interaction::Update),
                "conditionalCreate": has(Interaction::Create),
                "conditionalUpdate": has(Interaction::ConditionalUpdate),
                "conditionalDelete": match (has(Interaction::ConditionalDelete), multiple_delete) {
                    (false, _) => "not-supported",
                    (true, false) => "single",
                    (true, true) => "multiple",
                },
                "conditionalRead": "not-supported",
            });
            let profiles: Vec<&str> = validator()
                .profiles()
                .iter()
                .filter(|profile| profile.applies_to_type(resource_type))
                .map(|profile| profile.url.as_str())
                .collect();
            if !profiles.is_empty() {
                resource["supportedProfile"] = json!(profiles);
            }
            if has(Interaction::SearchType) {
                resource["searchParam"] = registry()
                    .params(resource_type)
                    .map(|def| json!({"name": def.code, "definition": def.url, "type": def.kind.as_str()}))
                    .collect::<Vec<_>>()
                    .into();
            }
            let mut operations = Vec::new();
            if has(Interaction::Validate) {
                operations.push(json!({"name": "validate", "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate"}));
            }
            if has(Interaction::Everything) && resource_type.as_str() == "Patient" {
                operations.push(json!({"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}));
            }
            if has(Interaction::Export) && resource_type.as_str() == "Patient" {
                operations.push(json!({"name": "export", "definition": format!("{BULK_DATA}/OperationDefinition/patient-export")}));
            }
            if has(Interaction::IngestVitals) && resource_type.as_str() == "Patient" {
                operations.push(json!({"name": "ingest-vitals", "definition": "urn:braid:operation:ingest-vitals"}));
            }
            if has(Interaction::Match) && resource_type.as_str() == "Patient" {
                operations.push(json!({"name": "match", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-match"}));
            }
            if has(Interaction::Export) && resource_type.as_str() == "Group" {
                operations.push(json!({"name": "export", "definition": format!("{BULK_DATA}/OperationDefinition/group-export")}));
            }
            if !operations.is_empty() {
                resource["operation"] = json!(operations);
            }
            resource
        })
        .collect();

    let mut statement = json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": RELEASE_DATE,
        "publisher": "Braid",
        "kind": "instance",
        "software": {"name": "Braid", "version": env!("CARGO_PKG_VERSION")},
        "implementation": {"description": "Braid FHIR R4 gateway", "url": base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [{
            "mode": "server",
            "extension": registry().unsupported().iter().map(|u| json!({
                "url": UNSUPPORTED_SEARCH_PARAMETER,
                "valueString": format!("{} ({}): {}", u.code, u.base, u.reason),
            })).collect::<Vec<_>>(),
            "resource": resources,
            "interaction": system_codes.iter().map(|code| json!({"code": code})).collect::<Vec<_>>(),
            "operation": system_operations(&has),
        }],
    });
    if has(Interaction::Export) {
        // Declares conformance to the Bulk Data IG, as it asks servers to.
        statement["instantiates"] = json!([format!("{BULK_DATA}/CapabilityStatement/bulk-data")]);
    }
    statement
}

/// The system-level operations: Bulk Data `$export`, and the master patient index's link
/// operations (named as HAPI FHIR's MDM module names them; Braid defines them, no published
/// OperationDefinition does).
fn system_operations(has: &dyn Fn(Interaction) -> bool) -> Value {
    let mut operations = Vec::new();
    if has(Interaction::Export) {
        // The Patient and Group exports are listed here too (as well as on their types): Bulk
        // Data clients and test kits look for them at this level.
        for name in ["export", "patient-export", "group-export"] {
            operations.push(json!({"name": name, "definition": format!("{BULK_DATA}/OperationDefinition/{name}")}));
        }
    }
    if has(Interaction::QueryLinks) {
        operations.push(json!({"name": "mdm-query-links", "definition": "urn:braid:operation:mdm-query-links"}));
    }
    if has(Interaction::ChangeLinks) {
        for name in
            ["mdm-update-link", "mdm-create-link", "mdm-merge-golden-resources", "mdm-not-duplicate", "mdm-unmerge"]
        {
            operations.push(json!({"name": name, "definition": format!("urn:braid:operation:{name}")}));
        }
    }
    Value::Array(operations)
}
