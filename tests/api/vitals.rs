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

/// An Apple Health `export.zip`: heart-rate samples (three in one minute), a blood pressure as
/// a correlation and again as two records, a fractional SpO2, a weight in pounds and steps.
fn apple_export_zip() -> Vec<u8> {
    use std::io::Write;
    let watch = "&lt;&lt;HKDevice: 0x283f5a3a0&gt;, name:Apple Watch, manufacturer:Apple Inc., model:Watch, hardware:Watch6,2, software:10.1&gt;";
    let record = |kind: &str, unit: &str, value: &str, at: &str| {
        format!(
            " <Record type=\"{kind}\" sourceName=\"Apple Watch\" device=\"{watch}\" unit=\"{unit}\" creationDate=\"{at}\" startDate=\"{at}\" endDate=\"{at}\" value=\"{value}\"/>\n"
        )
    };
    let mut xml = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE HealthData [\n<!ELEMENT HealthData ANY>\n]>\n<HealthData locale=\"en_US\">\n",
    );
    for (second, value) in [(5, "70"), (25, "76"), (45, "73")] {
        xml += &record(
            "HKQuantityTypeIdentifierHeartRate",
            "count/min",
            value,
            &format!("2024-01-01 08:01:{second:02} +0100"),
        );
    }
    let bp_at = "2024-01-01 07:30:00 +0100";
    xml += &format!(
        " <Correlation type=\"HKCorrelationTypeIdentifierBloodPressure\" sourceName=\"Apple Watch\" creationDate=\"{bp_at}\" startDate=\"{bp_at}\" endDate=\"{bp_at}\">\n"
    );
    xml += &record("HKQuantityTypeIdentifierBloodPressureSystolic", "mmHg", "118", bp_at);
    xml += &record("HKQuantityTypeIdentifierBloodPressureDiastolic", "mmHg", "76", bp_at);
    xml += " </Correlation>\n";
    xml += &record("HKQuantityTypeIdentifierBloodPressureSystolic", "mmHg", "118", bp_at);
    xml += &record("HKQuantityTypeIdentifierBloodPressureDiastolic", "mmHg", "76", bp_at);
    xml += &record("HKQuantityTypeIdentifierOxygenSaturation", "%", "0.96", "2024-01-01 09:00:00 +0100");
    xml += &record("HKQuantityTypeIdentifierBodyMass", "lb", "150", "2024-01-01 07:00:00 +0100");
    xml += &record("HKQuantityTypeIdentifierStepCount", "count", "512", "2024-01-01 09:00:00 +0100");
    xml += "</HealthData>\n";
    let mut archive = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    archive.start_file("apple_health_export/export.xml", options).unwrap();
    archive.write_all(xml.as_bytes()).unwrap();
    archive.finish().unwrap().into_inner()
}

#[tokio::test]
async fn an_apple_health_export_zip_imports_once_with_its_aggregates_and_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("braid.redb");
    database_with_patient(&data).await;
    let file = dir.path().join("export.zip");
    std::fs::write(&file, apple_export_zip()).unwrap();
    let file = file.to_str().unwrap();
    let output = braid_cli(&data, &["ingest", "apple", file, "--patient", "p1", "--dry-run"]).await;
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let observations: Vec<Value> = stdout.lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    let by_code = |code: &str| -> Vec<&Value> {
        observations.iter().filter(|o| o["code"]["coding"][0]["code"] == code).collect()
    };
    let heart = by_code("8867-4");
    assert_eq!(heart.len(), 1, "three samples in one minute: one Observation");
    assert_eq!(heart[0]["effectivePeriod"]["start"], "2024-01-01T08:01:00+01:00");
    assert_eq!(heart[0]["valueQuantity"]["value"], 73);
    assert_eq!(heart[0]["component"][1]["valueQuantity"]["value"], 76);
    assert_eq!(by_code("85354-9").len(), 2, "the pair made twice, with one id");
    assert_eq!(by_code("85354-9")[0]["id"], by_code("85354-9")[1]["id"]);
    assert_eq!(by_code("2708-6")[0]["valueQuantity"]["value"], 96);
    assert_eq!(by_code("29463-7")[0]["valueQuantity"]["value"], 68.04);
    for observation in &observations {
        validator().validate_value(ResourceType::OBSERVATION, observation).unwrap();
    }

    let mut summaries = Vec::new();
    for _ in 0..2 {
        let output = braid_cli(&data, &["ingest", "apple", file, "--patient", "p1"]).await;
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        summaries.push(serde_json::from_slice::<Value>(&output.stdout).unwrap());
    }
    assert_eq!(summaries[0]["created"], 4, "{}", summaries[0]);
    assert_eq!(summaries[0]["duplicates"], 1);
    assert_eq!(summaries[0]["skipped"], 1);
    assert_eq!(summaries[0]["skipped_kinds"]["HKQuantityTypeIdentifierStepCount"], 1);
    assert_eq!(summaries[0]["aggregated_samples"], 3);
    assert_eq!((summaries[1]["created"].as_u64(), summaries[1]["updated"].as_u64()), (Some(0), Some(0)));
    assert_eq!(summaries[1]["unchanged"], 4);
}

#[tokio::test]
async fn an_import_into_a_running_server_goes_through_its_api_and_a_second_one_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let braid = crate::helpers::start_braid_process(&dir.path().join("served.redb"), "info");
    let base = format!("http://127.0.0.1:{}/fhir", braid.port);
    let _server = Running(braid.child);
    let client = braid::outbound::client(reqwest::Client::builder()).unwrap();
    let patient = json!({"resourceType": "Patient", "id": "p1", "name": [{"family": "Okafor"}]});
    let reply = client
        .put(format!("{base}/Patient/p1"))
        .header("content-type", "application/fhir+json")
        .body(patient.to_string())
        .send()
        .await
        .unwrap();
    assert!(reply.status().is_success());
    let file = dir.path().join("points.json");
    std::fs::write(&file, mhealth_points()).unwrap();
    let file = file.to_str().unwrap();
    // `--data` (added by the helper) is not used when a server is named.
    let unused = dir.path().join("unused.redb");
    let mut summaries = Vec::new();
    for _ in 0..2 {
        let output = braid_cli(&unused, &["ingest", "mhealth", file, "--patient", "p1", "--server", &base]).await;
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        summaries.push(serde_json::from_slice::<Value>(&output.stdout).unwrap());
    }
    assert!(!unused.exists());
    assert_eq!((summaries[0]["created"].as_u64(), summaries[0]["rejected"].as_u64()), (Some(3), Some(2)));
    assert_eq!((summaries[1]["created"].as_u64(), summaries[1]["unchanged"].as_u64()), (Some(0), Some(3)));
    let found: Value = client
        .get(format!("{base}/Observation?subject=Patient/p1&category=vital-signs"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["entry"].as_array().map(Vec::len), Some(3), "{found}");

    let output = braid_cli(&unused, &["ingest", "mhealth", file, "--patient", "nobody", "--server", &base]).await;
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("Patient/nobody at"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // The database file itself is the server's while it runs: the command says how to import.
    let output = braid_cli(&dir.path().join("served.redb"), &["ingest", "mhealth", file, "--patient", "p1"]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is open in a running Braid: import through its API with --server"), "{stderr}");
}

/// A server process stopped when the test ends, whether it passes or fails.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An unpacked Fitbit export: heart-rate samples (three in one minute), a resting heart rate,
/// a weight in pounds with its BMI, a minute of SpO2, steps, and the profile naming the
/// wearer's time zone.
fn fitbit_export(root: &Path) {
    let data = root.join("Fitbit/Global Export Data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(root.join("Fitbit/Your Profile")).unwrap();
    std::fs::create_dir_all(root.join("Fitbit/Oxygen Saturation (SpO2)")).unwrap();
    let samples = json!([
        {"dateTime": "01/15/24 08:00:05", "value": {"bpm": 70, "confidence": 2}},
        {"dateTime": "01/15/24 08:00:15", "value": {"bpm": 76, "confidence": 3}},
        {"dateTime": "01/15/24 08:00:25", "value": {"bpm": 73, "confidence": 3}},
        {"dateTime": "01/15/24 09:30:00", "value": {"bpm": 64, "confidence": 3}},
    ]);
    std::fs::write(data.join("heart_rate-2024-01-15.json"), samples.to_string()).unwrap();
    let resting =
        json!([{"dateTime": "01/15/24 00:00:00", "value": {"date": "01/15/24", "value": 58.9, "error": 5.1}}]);
    std::fs::write(data.join("resting_heart_rate-2024-01-15.json"), resting.to_string()).unwrap();
    let weight =
        json!([{"logId": 7, "weight": 165.3, "bmi": 24.41, "date": "01/15/24", "time": "07:12:30", "source": "Aria"}]);
    std::fs::write(data.join("weight-2024-01-15.json"), weight.to_string()).unwrap();
    std::fs::write(data.join("steps-2024-01-15.json"), r#"[{"dateTime": "01/15/24 08:00:00", "value": "12"}]"#)
        .unwrap();
    std::fs::write(
        root.join("Fitbit/Oxygen Saturation (SpO2)/Minute SpO2 - 2024-01-15.csv"),
        "timestamp,value\n2024-01-15T02:03:00,95.3\n",
    )
    .unwrap();
    std::fs::write(
        root.join("Fitbit/Your Profile/Profile.csv"),
        "id,full_name,timezone,weight_unit,height,height_unit\nX1,Ada Okafor,Europe/Berlin,POUND,172,METRIC\n",
    )
    .unwrap();
}

#[tokio::test]
async fn a_fitbit_export_folder_is_read_in_the_wearers_time_zone_and_imported_once() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("takeout");
    fitbit_export(&export);
    let export = export.to_str().unwrap();
    let data = dir.path().join("braid.redb");
    let output = braid_cli(&data, &["ingest", "fitbit", export, "--patient", "p1", "--dry-run"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("local times in Europe/Berlin, from Profile.csv"), "{stderr}");
    let observations: Vec<Value> =
        String::from_utf8(output.stdout).unwrap().lines().map(|line| serde_json::from_str(line).unwrap()).collect();
    // A minute of three samples, a lone sample, the resting rate, the weight, its BMI, SpO2.
    assert_eq!(observations.len(), 6, "{observations:#?}");
    for observation in &observations {
        validator().validate_value(ResourceType::OBSERVATION, observation).unwrap();
        assert_eq!(observation["meta"]["source"], "urn:braid:ingest:fitbit");
    }
    let by_code = |code: &str| {
        observations.iter().filter(|o| o["code"]["coding"][0]["code"] == code).cloned().collect::<Vec<Value>>()
    };
    let minute = by_code("8867-4").into_iter().find(|o| o.get("effectivePeriod").is_some()).unwrap();
    assert_eq!(minute["effectivePeriod"]["start"], "2024-01-15T08:00:00+01:00");
    assert_eq!(minute["valueQuantity"]["value"], 73);
    let weight = &by_code("29463-7")[0];
    assert_eq!(
        (weight["valueQuantity"]["value"].as_f64(), weight["valueQuantity"]["code"].as_str()),
        (Some(74.98), Some("kg"))
    );
    assert_eq!(weight["effectiveDateTime"], "2024-01-15T07:12:30+01:00");

    // Into a database, with the zone given on the command line: twice, the second changing nothing.
    database_with_patient(&data).await;
    let mut summaries = Vec::new();
    for _ in 0..2 {
        let args = ["ingest", "fitbit", export, "--patient", "p1", "--timezone", "America/New_York"];
        let output = braid_cli(&data, &args).await;
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        summaries.push(serde_json::from_slice::<Value>(&output.stdout).unwrap());
    }
    assert_eq!(summaries[0]["time_zone"], "America/New_York, as given");
    assert_eq!((summaries[0]["created"].as_u64(), summaries[0]["skipped"].as_u64()), (Some(6), Some(1)));
    assert_eq!(summaries[0]["skipped_kinds"]["steps (JSON)"], 1);
    assert_eq!((summaries[1]["created"].as_u64(), summaries[1]["unchanged"].as_u64()), (Some(0), Some(6)));
    // The same export as a Takeout zip, given as an Apple export: refused, naming Fitbit.
    let zip = dir.path().join("takeout.zip");
    {
        use std::io::Write;
        let mut archive = zip::ZipWriter::new(std::fs::File::create(&zip).unwrap());
        let options = zip::write::SimpleFileOptions::default();
        archive.start_file("Takeout/Fitbit/Global Export Data/heart_rate-2024-01-15.json", options).unwrap();
        archive.write_all(b"[]").unwrap();
        archive.finish().unwrap();
    }
    let output = braid_cli(&data, &["ingest", "apple", zip.to_str().unwrap(), "--patient", "p1"]).await;
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("it looks like a Fitbit or Google Takeout export archive (format 'fitbit')"), "{stderr}");

    let store = Store::open(&data, StoreOptions::default(), Arc::new(SearchIndexer)).unwrap();
    let snapshot = store.snapshot().unwrap();
    let stored = snapshot.changes_after(ResourceType::OBSERVATION, 0, 100).unwrap();
    assert_eq!(stored.len(), 6);
    let bodies: Vec<Value> = stored
        .iter()
        .map(|(_, id, _)| {
            serde_json::from_slice(&snapshot.current(ResourceType::OBSERVATION, id).unwrap().unwrap().body).unwrap()
        })
        .collect();
    assert!(bodies.iter().any(|o| o["effectiveDateTime"] == "2024-01-15T09:30:00-05:00"), "{bodies:#?}");
}
