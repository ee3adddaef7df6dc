//! Vitals ingest from the command line: `braid ingest FORMAT FILE --patient ID` writes
//! vital-signs Observations into a stopped database (or prints them with `--dry-run`), and
//! importing the same file again changes nothing.

use std::path::Path;
use std::sync::Arc;

use braid::fhir::validation::validator;
use braid::fhir::{Id, ResourceType};
use braid::search::SearchIndexer;
use braid::store::{Action, Precondition, Store, StoreOptions, Target, WriteOp, WriteRequest};
use serde_json::{Value, json};

use crate::helpers::braid_cli;

/// Open mHealth data points: a heart rate, a blood pressure, a weight in pounds, an
/// impossible heart rate and a step count (not a vital sign).
fn mhealth_points() -> String {
    let header = |name: &str| {
        json!({"id": name, "creation_date_time": "2024-03-01T08:00:00Z",
            "schema_id": {"namespace": "omh", "name": name, "version": "1.0"},
            "acquisition_provenance": {"source_name": "Omron Evolv", "modality": "sensed"}})
    };
    let at = json!({"date_time": "2024-03-01T07:55:00-08:00"});
    [
        json!({"header": header("heart-rate"), "body": {"heart_rate": {"value": 64, "unit": "beats/min"}, "effective_time_frame": at}}),
        json!({"header": header("blood-pressure"), "body": {"systolic_blood_pressure": {"value": 128, "unit": "mmHg"},
            "diastolic_blood_pressure": {"value": 82, "unit": "mmHg"}, "effective_time_frame": at}}),
        json!({"header": header("body-weight"), "body": {"body_weight": {"value": 165.5, "unit": "lb"}, "effective_time_frame": at}}),
        json!({"header": header("heart-rate"), "body": {"heart_rate": {"value": 900, "unit": "beats/min"}, "effective_time_frame": at}}),
        json!({"header": header("step-count"), "body": {"step_count": {"value": 5000}, "effective_time_frame": at}}),
    ]
    .iter()
    .map(Value::to_string)
    .collect::<Vec<_>>()
    .join("\n")
}

/// A database holding Patient `p1`, closed again.
async fn database_with_patient(path: &Path) {
    let store = Store::open(path, StoreOptions::default(), Arc::new(SearchIndexer)).unwrap();
    let Value::Object(patient) = json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Okafor"}]}) else {
        unreachable!()
    };
    let op = WriteOp {
        full_url: None,
        action: Action::Update {
            resource_type: ResourceType::PATIENT,
            target: Target::Id(Id::parse("p1").unwrap()),
            resource: patient,
            precondition: Precondition::default(),
        },
    };
    store.write(WriteRequest { ops: vec![op], ..WriteRequest::default() }).await.unwrap();
    let finished = store.writer_finished();
    drop(store);
    while !finished() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn a_dry_run_prints_valid_vital_sign_observations_as_ndjson_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("points.json");
    std::fs::write(&file, mhealth_points()).unwrap();
    let file = file.to_str().unwrap();
    // No database is needed (nor made) for a dry run.
    let data = dir.path().join("absent.redb");
    let output = braid_cli(&data, &["ingest", "mhealth", file, "--patient", "p1", "--dry-run"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(!data.exists());
    let stdout = String::from_utf8(output.stdout).unwrap();
    let observations: Vec<Value> = stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    assert_eq!(observations.len(), 3);
    for observation in &observations {
        assert_eq!(observation["resourceType"], "Observation");
        assert_eq!(observation["subject"]["reference"], "Patient/p1");
        assert_eq!(observation["effectiveDateTime"], "2024-03-01T07:55:00-08:00");
        validator().validate_value(ResourceType::OBSERVATION, observation).unwrap();
    }
    // Heart-rate samples wait for their minute to close, so they may come later than others.
    let by_code = |code: &str| {
        observations
            .iter()
            .find(|o| o["code"]["coding"][0]["code"] == code)
            .unwrap_or_else(|| panic!("{code}: {stdout}"))
    };
    assert_eq!(by_code("8867-4")["valueQuantity"]["value"], 64);
    assert_eq!(by_code("85354-9")["component"][0]["valueQuantity"]["value"], 128);
    assert_eq!(by_code("85354-9")["component"][1]["valueQuantity"]["value"], 82);
    assert_eq!(
        by_code("29463-7")["valueQuantity"],
        json!({"value": 75.07, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"})
    );
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.contains("2 refused"), "{stderr}");
    assert!(stderr.contains("refused data point 4: heart-rate of 900 beats/minute is impossible"), "{stderr}");
    assert!(stderr.contains("refused data point 5: schema 'step-count' is not a vital sign"), "{stderr}");
}

#[tokio::test]
async fn an_import_writes_observations_and_devices_once_and_a_second_import_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("braid.redb");
    database_with_patient(&data).await;
    let file = dir.path().join("points.json");
    std::fs::write(&file, mhealth_points()).unwrap();
    let file = file.to_str().unwrap();
    let mut summaries = Vec::new();
    for _ in 0..2 {
        let output = braid_cli(&data, &["ingest", "mhealth", file, "--patient", "p1"]).await;
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        summaries.push(serde_json::from_slice::<Value>(&output.stdout).unwrap());
    }
    assert_eq!((summaries[0]["created"].as_u64(), summaries[0]["unchanged"].as_u64()), (Some(3), Some(0)));
    assert_eq!((summaries[1]["created"].as_u64(), summaries[1]["unchanged"].as_u64()), (Some(0), Some(3)));
    assert_eq!(summaries[0]["rejected"], 2);
    assert_eq!(summaries[0]["devices"], 1);
    assert_eq!(summaries[0]["problems"][0]["at"], "data point 4");

    let store = Store::open(&data, StoreOptions::default(), Arc::new(SearchIndexer)).unwrap();
    let snapshot = store.snapshot().unwrap();
    let history = snapshot.changes_after(ResourceType::OBSERVATION, 0, 100).unwrap();
    assert_eq!(history.len(), 3, "three Observations, one version each");
    let (_, id, _) = &history[0];
    let stored = snapshot.current(ResourceType::OBSERVATION, id).unwrap().unwrap();
    let observation: Value = serde_json::from_slice(&stored.body).unwrap();
    let device = observation["device"]["reference"].as_str().unwrap().strip_prefix("Device/").unwrap();
    let device = snapshot.current(ResourceType::DEVICE, device).unwrap().unwrap();
    let device: Value = serde_json::from_slice(&device.body).unwrap();
    assert_eq!(device["deviceName"][0]["name"], "Omron Evolv");
    assert_eq!(device["patient"]["reference"], "Patient/p1");
}

#[tokio::test]
async fn an_unknown_patient_or_a_file_in_another_format_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("braid.redb");
    database_with_patient(&data).await;
    let points = dir.path().join("points.json");
    std::fs::write(&points, mhealth_points()).unwrap();
    let output = braid_cli(&data, &["ingest", "mhealth", points.to_str().unwrap(), "--patient", "nobody"]).await;
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("Patient/nobody does not exist"));

    let xml = dir.path().join("export.xml");
    std::fs::write(&xml, "<?xml version=\"1.0\"?>\n<HealthData locale=\"en_US\"></HealthData>\n").unwrap();
    let output = braid_cli(&data, &["ingest", "mhealth", xml.to_str().unwrap(), "--patient", "p1"]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "this is not Open mHealth JSON: it looks like an Apple Health export (export.xml) (format 'apple')"
        ),
        "{stderr}"
    );

    let store = Store::open(&data, StoreOptions::default(), Arc::new(SearchIndexer)).unwrap();
    let snapshot = store.snapshot().unwrap();
    assert!(snapshot.changes_after(ResourceType::OBSERVATION, 0, 10).unwrap().is_empty());
    assert!(snapshot.changes_after(ResourceType::DEVICE, 0, 10).unwrap().is_empty());
}
