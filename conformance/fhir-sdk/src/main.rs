//! Braid driven by fhir-sdk, the Rust ecosystem's FHIR client (its R4B models, the closest it
//! has to R4): read, update, search with paging, a transaction with `urn:uuid` references,
//! delete; then what its R4B models make of R4 content Braid stores.
//!
//!     braid-fhir-sdk-conformance BASE_URL [TOKEN]
//!
//! Prints `ok` or `FAIL` per check and a summary line; exits non-zero at the first failure.
//! Expects the R4 resources `MedicinalProduct/r4-only`, `Evidence/r4-evidence` (with `name`)
//! and `DeviceDefinition/r4-device` (with `classification`) to exist (the test that runs this
//! seeds them).

use std::fmt::Debug;

use fhir_sdk::client::{Client, RequestSettings, ResourceWrite, SearchParameters};
use fhir_sdk::r4b::codes::ObservationStatus;
use fhir_sdk::r4b::resources::{DeviceDefinition, Evidence, Observation, Patient, Resource};
use fhir_sdk::r4b::types::{CodeableConcept, HumanName, Identifier, Reference};
use fhir_sdk::version::FhirR4B;
use fhir_sdk::{TryStreamExt, header};

struct Checks {
    passed: usize,
}

impl Checks {
    fn check<T: PartialEq + Debug>(&mut self, name: &str, actual: T, expected: T) {
        if actual != expected {
            println!("FAIL {name}: expected {expected:?}, got {actual:?}");
            std::process::exit(1);
        }
        self.passed += 1;
        println!("ok   {name}");
    }
}

fn fail(what: &str, error: impl Debug) -> ! {
    println!("FAIL {what}: {error:?}");
    std::process::exit(1)
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let base = args.next().expect("the FHIR base URL");
    let token = args.next();
    let mut settings = RequestSettings::default();
    if let Some(token) = &token {
        settings = settings.header(header::AUTHORIZATION, format!("Bearer {token}").parse().expect("a header value"));
    }
    // fhir-sdk joins paths onto the base: it must end with a slash.
    let base_url = format!("{}/", base.trim_end_matches('/')).parse().expect("a URL");
    let client: Client<FhirR4B> =
        Client::builder().base_url(base_url).request_settings(settings).build().unwrap_or_else(|e| fail("client", e));
    let mut checks = Checks { passed: 0 };

    // Create, read, update, read a version.
    let mut patient = Patient::builder()
        .active(false)
        .name(vec![Some(HumanName::builder().family("Sdk".to_owned()).build().expect("a name"))])
        .identifier(vec![Some(
            Identifier::builder()
                .system("http://sdk.example/mrn".to_owned())
                .value("42".to_owned())
                .build()
                .expect("an identifier"),
        )])
        .build()
        .expect("a patient");
    let id = patient.create(&client).await.unwrap_or_else(|e| fail("create", e));
    let read: Patient =
        client.read(&id).await.unwrap_or_else(|e| fail("read", e)).unwrap_or_else(|| fail("read", "missing"));
    checks.check(
        "read returns what was created",
        read.name[0].as_ref().and_then(|n| n.family.clone()),
        Some("Sdk".to_owned()),
    );
    patient.active = Some(true);
    patient.update(false, &client).await.unwrap_or_else(|e| fail("update", e));
    let version = patient.meta.as_ref().and_then(|meta| meta.version_id.clone());
    checks.check("an update makes version 2", version.as_deref(), Some("2"));
    let first: Patient = client
        .read_version(&id, "1")
        .await
        .unwrap_or_else(|e| fail("vread", e))
        .unwrap_or_else(|| fail("vread", "missing"));
    checks.check("vread of version 1", first.active, Some(false));

    // A transaction: a new Patient and 25 Observations referring to it by urn:uuid.
    let mut transaction = client.transaction();
    let subject = transaction.create(
        Patient::builder()
            .name(vec![Some(HumanName::builder().family("Transaction".to_owned()).build().expect("a name"))])
            .build()
            .expect("a patient"),
    );
    for n in 0..25 {
        transaction.create(
            Observation::builder()
                .status(ObservationStatus::Final)
                .code(CodeableConcept::builder().text(format!("reading {n}")).build().expect("a code"))
                .subject(Reference::builder().reference(subject.clone()).build().expect("a reference"))
                .build()
                .expect("an observation"),
        );
    }
    let response = transaction.send().await.unwrap_or_else(|e| fail("transaction", e));
    let statuses: Vec<String> = response
        .0
        .entry
        .iter()
        .flatten()
        .filter_map(|entry| entry.response.as_ref().map(|response| response.status.clone()))
        .collect();
    checks.check("the transaction answers every entry", statuses.len(), 26);
    checks.check("every entry was created", statuses.iter().all(|status| status.starts_with("201")), true);
    let patient_location = response.0.entry[0]
        .as_ref()
        .and_then(|entry| entry.response.as_ref())
        .and_then(|response| response.location.clone())
        .unwrap_or_else(|| fail("transaction", "no Location for the Patient"));
    let patient_id = patient_location.split('/').nth(1).unwrap_or_else(|| fail("transaction", "a Location")).to_owned();

    // Search with paging: 25 matches in pages of 10.
    let search = SearchParameters::empty().and_raw("subject", format!("Patient/{patient_id}")).and_raw("_count", "10");
    let mut page = client.search::<Observation>(search.clone()).await.unwrap_or_else(|e| fail("search", e));
    let mut pages = 1;
    let mut seen = page.matches().count();
    while let Some(next) = page.next_page().await {
        page = next.unwrap_or_else(|e| fail("next page", e));
        pages += 1;
        seen += page.matches().count();
    }
    checks.check("search pages through every match", (pages, seen), (3, 25));
    let all: Vec<Observation> = client
        .search::<Observation>(search)
        .await
        .unwrap_or_else(|e| fail("search", e))
        .all_matches()
        .try_collect()
        .await
        .unwrap_or_else(|e| fail("all matches", e));
    let subjects_resolved = all.iter().all(|observation| {
        observation.subject.as_ref().and_then(|s| s.reference.clone()) == Some(format!("Patient/{patient_id}"))
    });
    checks.check("all_matches follows the next links", all.len(), 25);
    checks.check("urn:uuid references were resolved", subjects_resolved, true);

    // Delete: a read then finds nothing.
    patient.delete(&client).await.unwrap_or_else(|e| fail("delete", e));
    let gone: Option<Patient> = client.read(&id).await.unwrap_or_else(|e| fail("read after delete", e));
    checks.check("a deleted resource reads as none", gone.is_none(), true);

    // R4 vs R4B. Braid stores R4; fhir-sdk's models are R4B. Where R4B dropped a resource type
    // (MedicinalProduct and 17 others), or redesigned one (Evidence), the client cannot read it;
    // where R4B dropped an element (DeviceDefinition.classification), the model reads what it
    // knows and silently drops the rest, so writing the model back would lose R4 data.
    let r4_only = client
        .read_referenced(
            &Reference::builder().reference("MedicinalProduct/r4-only".to_owned()).build().expect("a reference"),
        )
        .await;
    println!("note an R4-only type (MedicinalProduct) through the R4B models: {:?}", r4_only.as_ref().map(|_| "read"));
    // Unreadable because its type is unknown, not for any other reason (the resource is there).
    let unknown_type =
        r4_only.as_ref().err().is_some_and(|error| format!("{error:?}").contains("unknown variant `MedicinalProduct`"));
    checks.check("an R4-only resource type is unreadable with the R4B models", unknown_type, true);
    let raw_read = |path: &'static str| {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        async move {
            let raw = client
                .send_custom_request(|http| {
                    let mut request = http.get(format!("{}/{path}", base.trim_end_matches('/')));
                    if let Some(token) = &token {
                        request = request.bearer_auth(token);
                    }
                    request
                })
                .await
                .unwrap_or_else(|e| fail("raw read", e));
            raw.json::<serde_json::Value>().await.unwrap_or_else(|e| fail("raw read", e))
        }
    };
    let evidence = raw_read("Evidence/r4-evidence").await;
    checks.check("Braid keeps the R4 Evidence.name", evidence["name"].as_str(), Some("R4Evidence"));
    let redesigned = serde_json::from_value::<Evidence>(evidence);
    println!("note an R4 Evidence through the R4B model: {:?}", redesigned.as_ref().map(|_| "read"));
    checks.check("an R4 Evidence (redesigned in R4B) is unreadable with the R4B model", redesigned.is_err(), true);
    let device = raw_read("DeviceDefinition/r4-device").await;
    checks.check(
        "Braid keeps the R4 DeviceDefinition.classification",
        device["classification"][0]["type"]["text"].as_str(),
        Some("monitor"),
    );
    let model: DeviceDefinition = serde_json::from_value(device).unwrap_or_else(|e| fail("DeviceDefinition", e));
    let back = serde_json::to_value(&model).unwrap_or_else(|e| fail("serialize", e));
    println!("note an R4 DeviceDefinition read and written back through the R4B model: {back}");
    checks.check(
        "the R4B model silently drops the R4 element DeviceDefinition.classification",
        back.get("classification"),
        None,
    );
    let generic = client
        .read_referenced(
            &Reference::builder()
                .reference(format!("Observation/{}", all[0].id.clone().unwrap_or_default()))
                .build()
                .expect("a reference"),
        )
        .await;
    checks.check(
        "a generic read resolves the type",
        generic.map(|r| matches!(r, Resource::Observation(_))).ok(),
        Some(true),
    );
    println!("{} passed, 0 failed", checks.passed);
}
