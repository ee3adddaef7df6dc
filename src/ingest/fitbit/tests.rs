use std::io::Write;

use serde_json::json;
use time::macros::datetime;

use super::*;
use crate::fhir::ResourceType;
use crate::fhir::validation::validator;
use crate::ingest::{Converter, Format};

fn settings(zone: Option<&str>) -> Settings {
    Settings::new(zone).unwrap()
}

fn records(text: &str, name: Option<&str>, settings: &Settings) -> Result<Vec<Record>, FormatError> {
    let mut records = Vec::new();
    read(text.as_bytes(), name, settings, &mut |record| records.push(record))?;
    Ok(records)
}

fn reason(record: &Record) -> String {
    match &record.outcome {
        Ok(reading) => format!("ok {:?}", reading.kind),
        Err(problem) => problem.reason.clone(),
    }
}

/// The Observations a converter makes of `records`, each checked by Braid's validator.
fn observations(records: Vec<Record>) -> (Vec<Value>, crate::ingest::Summary) {
    let mut converter = Converter::new("p1", Format::Fitbit);
    for record in records {
        converter.add(record);
    }
    converter.finish();
    let made: Vec<Value> =
        converter.take_ready().into_iter().filter(|resource| resource["resourceType"] == "Observation").collect();
    for observation in &made {
        validator().validate_value(ResourceType::OBSERVATION, observation).unwrap();
    }
    (made, converter.summary)
}

const PROFILE: &str = "id,full_name,about_me,timezone,weight_unit,height,height_unit\n\
    ABC123,Ada Okafor,\"Runner, \"\"early\"\" riser\nand cyclist\",Europe/Berlin,METRIC,172.0,METRIC\n";

/// Heart-rate samples carry local times: in Berlin, +01:00 in winter and +02:00 in summer.
/// Samples of one minute become one Observation with min, max and count; a sample of
/// confidence 0 is refused with its reason.
#[test]
fn heart_rate_samples_are_placed_in_the_profiles_zone_and_merged_per_minute() {
    let mut settings = settings(None);
    settings.read_profile(PROFILE.as_bytes()).unwrap();
    assert_eq!(settings.zone_note, "Europe/Berlin, from Profile.csv");
    let samples = json!([
        {"dateTime": "01/15/24 08:00:05", "value": {"bpm": 70, "confidence": 2}},
        {"dateTime": "01/15/24 08:00:15", "value": {"bpm": 74, "confidence": 3}},
        {"dateTime": "01/15/24 08:00:25", "value": {"bpm": 72, "confidence": 1}},
        {"dateTime": "01/15/24 08:00:35", "value": {"bpm": 140, "confidence": 0}},
        {"dateTime": "07/15/24 21:10:00", "value": {"bpm": 58, "confidence": 3}},
        {"dateTime": "07/15/24 21:11", "value": {"bpm": 900, "confidence": 3}},
        {"dateTime": "2024-07-15 21:12:00", "value": {"bpm": 60, "confidence": 3}},
    ]);
    let read = records(&samples.to_string(), Some("heart_rate-2024-01-15.json"), &settings).unwrap();
    let reasons: Vec<String> = read.iter().map(reason).collect();
    assert!(reasons[3].contains("confidence 0"), "{reasons:?}");
    assert!(reasons[5].contains("900 beats/minute is impossible"), "{reasons:?}");
    assert!(reasons[6].contains("not a date MM/DD/YY"), "{reasons:?}");
    assert_eq!(read[3].at, "heart_rate-2024-01-15.json, record 4");
    assert_eq!(read[4].outcome.as_ref().unwrap().when, When::At(datetime!(2024-07-15 21:10:00 +02:00)));
    let (made, summary) = observations(read);
    assert_eq!((summary.rejected, summary.aggregated_samples, made.len()), (3, 3, 2));
    let minute = &made[0];
    crate::ingest::tests::assert_minute(
        minute,
        ("2024-01-15T08:00:00+01:00", "2024-01-15T08:01:00+01:00"),
        72,
        (70, 74),
        3,
    );
    assert_eq!(minute["meta"]["source"], "urn:braid:ingest:fitbit");
    assert_eq!(made[1]["effectiveDateTime"], "2024-07-15T21:10:00+02:00");
    assert_eq!(made[1]["device"]["display"], "Fitbit tracker");
}

/// A zone given to the import wins over the profile's; without either, times are UTC and the
/// summary says so.
#[test]
fn the_zone_given_wins_and_without_one_times_are_utc_and_said_to_be() {
    let mut given = settings(Some("America/New_York"));
    given.read_profile(PROFILE.as_bytes()).unwrap();
    assert_eq!(given.zone_note, "America/New_York, as given");
    let sample = r#"[{"dateTime": "03/10/24 02:30:00", "value": {"bpm": 61, "confidence": 2}}]"#;
    // 02:30 does not exist in New York that night (clocks jump from 02:00 to 03:00): read as
    // the clock read before the change, 02:30 EST, which is 03:30 EDT.
    let read = records(sample, None, &given).unwrap();
    assert_eq!(read[0].outcome.as_ref().unwrap().when, When::At(datetime!(2024-03-10 03:30:00 -04:00)));
    let utc = settings(None);
    assert!(utc.zone_note.starts_with("UTC: no time zone was given"), "{}", utc.zone_note);
    let read = records(sample, None, &utc).unwrap();
    assert_eq!(read[0].outcome.as_ref().unwrap().when, When::At(datetime!(2024-03-10 02:30:00 UTC)));
    let unknown = Settings::new(Some("Mars/Olympus")).unwrap_err();
    assert!(unknown.message.contains("'Mars/Olympus' is not a time zone"), "{unknown}");
    let mut bad_profile = settings(None);
    let error = bad_profile.read_profile("timezone\nNowhere/Land\n".as_bytes()).unwrap_err();
    assert!(error.message.contains("Profile.csv: 'Nowhere/Land'"), "{error}");
}

/// When clocks go back, an hour is shown twice: the samples of its second pass (after the
/// first pass ended) are read with the later offset, and samples a few seconds out of order in
/// the first pass stay in it.
#[test]
fn the_hour_shown_twice_when_clocks_go_back_is_read_in_order() {
    let settings = settings(Some("America/New_York"));
    let samples = json!([
        {"dateTime": "11/03/24 00:59:50", "value": {"bpm": 60, "confidence": 3}},
        {"dateTime": "11/03/24 01:30:20", "value": {"bpm": 61, "confidence": 3}},
        {"dateTime": "11/03/24 01:30:10", "value": {"bpm": 62, "confidence": 3}},
        {"dateTime": "11/03/24 01:59:50", "value": {"bpm": 63, "confidence": 3}},
        {"dateTime": "11/03/24 01:00:10", "value": {"bpm": 64, "confidence": 3}},
        {"dateTime": "11/03/24 01:30:00", "value": {"bpm": 65, "confidence": 3}},
        {"dateTime": "11/03/24 02:10:00", "value": {"bpm": 66, "confidence": 3}},
    ]);
    let read = records(&samples.to_string(), None, &settings).unwrap();
    let when: Vec<When> = read.iter().map(|record| record.outcome.as_ref().unwrap().when).collect();
    assert_eq!(
        when,
        [
            When::At(datetime!(2024-11-03 00:59:50 -04:00)),
            When::At(datetime!(2024-11-03 01:30:20 -04:00)),
            When::At(datetime!(2024-11-03 01:30:10 -04:00)),
            When::At(datetime!(2024-11-03 01:59:50 -04:00)),
            When::At(datetime!(2024-11-03 01:00:10 -05:00)),
            When::At(datetime!(2024-11-03 01:30:00 -05:00)),
            When::At(datetime!(2024-11-03 02:10:00 -05:00)),
        ]
    );
}

/// Files are read in name order, not time order: a file read before, whose last time is weeks
/// later, does not put the first pass of the repeated hour into the second.
#[test]
fn the_repeated_hour_is_judged_within_each_file() {
    let settings = settings(Some("America/New_York"));
    let later = json!([{"dateTime": "11/30/24 08:00:00", "value": {"bpm": 60, "confidence": 3}}]);
    records(&later.to_string(), Some("heart_rate-2024-11-30.json"), &settings).unwrap();
    let samples = json!([
        {"dateTime": "11/03/24 01:50:00", "value": {"bpm": 61, "confidence": 3}},
        {"dateTime": "11/03/24 01:10:00", "value": {"bpm": 62, "confidence": 3}},
    ]);
    let read = records(&samples.to_string(), Some("heart_rate-2024-11-03.json"), &settings).unwrap();
    let when: Vec<When> = read.iter().map(|record| record.outcome.as_ref().unwrap().when).collect();
    assert_eq!(
        when,
        [When::At(datetime!(2024-11-03 01:50:00 -04:00)), When::At(datetime!(2024-11-03 01:10:00 -05:00))]
    );
}

/// A byte-order mark before a file's JSON or CSV changes nothing; a confidence written as a
/// decimal or a string is still read.
#[test]
fn a_byte_order_mark_and_a_confidence_in_another_type_are_read() {
    let settings = settings(Some("UTC"));
    let text = "\u{feff}[{\"dateTime\": \"01/15/24 08:00:05\", \"value\": {\"bpm\": 70, \"confidence\": 0.0}},
        {\"dateTime\": \"01/15/24 08:00:15\", \"value\": {\"bpm\": 70, \"confidence\": \"0\"}},
        {\"dateTime\": \"01/15/24 08:00:25\", \"value\": {\"bpm\": 70, \"confidence\": \"2\"}}]";
    let read = records(text, Some("heart_rate-2024-01-15.json"), &settings).unwrap();
    let reasons: Vec<String> = read.iter().map(reason).collect();
    assert!(reasons[0].contains("confidence 0"), "{reasons:?}");
    assert!(reasons[1].contains("confidence 0"), "{reasons:?}");
    assert_eq!(reasons[2], "ok HeartRate");
    let csv = "\u{feff}timestamp,value\r\n2024-01-15T02:03:00,95.3\r\n";
    let read = records(csv, Some("Minute SpO2 - 2024-01-15.csv"), &settings).unwrap();
    assert_eq!(read[0].outcome.as_ref().unwrap().measured, Measured::Value(95.3));
}

#[test]
fn resting_heart_rate_is_one_reading_per_local_day_and_days_without_one_are_skipped() {
    let settings = settings(Some("Europe/Berlin"));
    let days = json!([
        {"dateTime": "01/15/24 00:00:00", "value": {"date": "01/15/24", "value": 61.37, "error": 6.8}},
        {"dateTime": "01/16/24 00:00:00", "value": {"date": "01/16/24", "value": 0.0, "error": 0.0}},
        {"dateTime": "01/17/24 00:00:00", "value": {"date": "01/17/24", "value": null, "error": null}},
    ]);
    let read = records(&days.to_string(), None, &settings).unwrap();
    let reading = read[0].outcome.as_ref().unwrap();
    assert_eq!(reading.kind, Kind::RestingHeartRate);
    assert_eq!(reading.when, When::Between(datetime!(2024-01-15 00:00 +01:00), datetime!(2024-01-16 00:00 +01:00)));
    assert!(read[1].outcome.as_ref().unwrap_err().skipped);
    assert!(read[2].outcome.as_ref().unwrap_err().skipped);
    let (made, summary) = observations(read);
    assert_eq!((made.len(), summary.skipped), (1, 2));
    assert_eq!(summary.skipped_kinds["day without a resting heart rate"], 2);
    let codes: Vec<&str> =
        made[0]["code"]["coding"].as_array().unwrap().iter().map(|c| c["code"].as_str().unwrap()).collect();
    assert_eq!(codes, ["8867-4", "40443-4"]);
    assert_eq!(made[0]["valueQuantity"]["value"], 61.4);
}

/// A weight's unit is not in the file: the recorded BMI tells pounds from kilograms (the
/// height it implies must be a person's, or the profile's own); without a BMI the profile's
/// unit decides, and without either the weight is refused, not guessed.
#[test]
fn a_weights_unit_comes_from_its_bmi_or_the_profile_and_is_never_guessed() {
    let weights = json!([
        {"logId": 1, "weight": 165.3, "bmi": 24.41, "date": "01/15/24", "time": "07:12:30", "source": "Aria"},
        {"logId": 2, "weight": 75.0, "bmi": 25.35, "date": "01/16/24", "time": "07:10:00", "source": "Web"},
        {"logId": 3, "weight": 75.0, "date": "01/17/24", "time": "07:10:00", "source": "API"},
        {"logId": 4, "weight": "heavy", "date": "01/18/24", "time": "07:10:00"},
    ]);
    let plain = settings(Some("UTC"));
    let read = records(&weights.to_string(), None, &plain).unwrap();
    let values: Vec<Result<(Kind, f64), String>> = read
        .iter()
        .map(|record| match &record.outcome {
            Ok(Reading { kind, measured: Measured::Value(value), .. }) => Ok((*kind, *value)),
            other => Err(format!("{other:?}")),
        })
        .collect();
    // 165.3 lb is 74.98 kg: with BMI 24.41 a height of 1.75 m (as kilograms, 2.60 m).
    assert_eq!(values[0], Ok((Kind::BodyWeight, 74.98)));
    assert_eq!(values[1], Ok((Kind::BodyMassIndex, 24.4)));
    // 75 as kilograms with BMI 25.35 is 1.72 m (as pounds, 1.16 m).
    assert_eq!(values[2], Ok((Kind::BodyWeight, 75.0)));
    assert!(values[4].as_ref().unwrap_err().contains("weight's unit cannot be told"), "{values:?}");
    assert!(values[5].as_ref().unwrap_err().contains("'weight' must be a number"), "{values:?}");
    assert_eq!(read[0].outcome.as_ref().unwrap().device.as_ref().unwrap().name, "Aria");
    assert_eq!(read[2].outcome.as_ref().unwrap().device, None, "entered on the web: no device");
    // With the profile (kilograms, 1.72 m), the weight without a BMI is read in kilograms.
    let mut profiled = settings(Some("UTC"));
    profiled.read_profile(PROFILE.as_bytes()).unwrap();
    let read = records(&weights.to_string(), None, &profiled).unwrap();
    // The profile says kilograms, but its height (1.72 m) is the one pounds imply for 165.3
    // with BMI 24.41: the height decides, so the weight is still 74.98 kg.
    assert_eq!(read[0].outcome.as_ref().unwrap().measured, Measured::Value(74.98));
    assert_eq!(read[4].outcome.as_ref().unwrap().measured, Measured::Value(75.0));
    let (made, summary) = observations(read);
    assert_eq!((made.len(), summary.rejected), (5, 1));
    assert_eq!(made[0]["valueQuantity"]["code"], "kg");
    assert_eq!(made[0]["effectiveDateTime"], "2024-01-15T07:12:30Z");
}

#[test]
fn spo2_and_respiratory_rate_csvs_become_readings_and_bad_rows_are_refused_one_by_one() {
    let settings = settings(Some("Europe/Berlin"));
    let minute = "timestamp,value\n2024-01-15T02:03:00,95.3\n2024-01-15T02:04:00,abc\n\n2024-01-15T02:05:00Z,40\n";
    let read = records(minute, Some("Minute SpO2 - 2024-01-15.csv"), &settings).unwrap();
    assert_eq!(read.len(), 3, "the blank line is no record");
    let first = read[0].outcome.as_ref().unwrap();
    assert_eq!((first.kind, first.measured), (Kind::OxygenSaturation, Measured::Value(95.3)));
    assert_eq!(first.when, When::At(datetime!(2024-01-15 02:03 +01:00)));
    assert!(reason(&read[1]).contains("'abc' is not a number"));
    assert_eq!(read[1].at, "Minute SpO2 - 2024-01-15.csv, line 3");
    assert!(reason(&read[2]).contains("impossible"), "{}", reason(&read[2]));
    let daily = "timestamp,average_value,lower_bound,upper_bound\n2024-01-15T00:00:00,96.1,93.0,98.9\n";
    let read = records(daily, Some("Daily SpO2 - 2024-01-01-2024-01-31.csv"), &settings).unwrap();
    assert_eq!(
        read[0].outcome.as_ref().unwrap().when,
        When::Between(datetime!(2024-01-15 00:00 +01:00), datetime!(2024-01-16 00:00 +01:00))
    );
    let breathing = "timestamp,daily_respiratory_rate\n2024-01-15,14.8\n";
    let read = records(breathing, Some("Daily Respiratory Rate Summary - 2024-01-15.csv"), &settings).unwrap();
    assert_eq!(read[0].outcome.as_ref().unwrap().kind, Kind::RespiratoryRate);
    let sleep = "timestamp,full_sleep_breathing_rate,full_sleep_standard_deviation\n2024-01-15 07:00:00,15.2,1.1\n";
    let read = records(sleep, Some("Respiratory Rate Summary - 2024-01-15.csv"), &settings).unwrap();
    assert_eq!(read[0].outcome.as_ref().unwrap().measured, Measured::Value(15.2));
    let (made, _) = observations(records(minute, None, &settings).unwrap());
    assert_eq!(made[0]["code"]["coding"][1]["code"], "59408-5");
    // A CSV of another kind: refused as a whole when it is the file given, skipped inside an
    // export.
    let other = "recorded_time,temperature,sensor_type\n2024-01-15T02:00,33.1,x\n";
    let error = records(other, None, &settings).unwrap_err();
    assert!(error.message.contains("not a Fitbit SpO2 or respiratory-rate CSV"), "{error}");
    let read = records(other, Some("Device Temperature - 2024-01-15.csv"), &settings).unwrap();
    assert!(read[0].outcome.as_ref().unwrap_err().skipped);
}

#[test]
fn other_fitbit_series_are_skipped_and_what_is_not_fitbit_is_refused() {
    let settings = settings(None);
    let steps = r#"[{"dateTime": "01/15/24 08:00:00", "value": "12"}, {"foo": 1}, 7]"#;
    let read = records(steps, None, &settings).unwrap();
    assert!(read[0].outcome.as_ref().unwrap_err().skipped);
    assert!(reason(&read[1]).contains("not a Fitbit heart-rate"));
    assert!(reason(&read[2]).contains("must be a JSON object"));
    assert!(records("", None, &settings).unwrap_err().message.contains("empty"));
    // A truncated file keeps what came before the break.
    let truncated = r#"[{"dateTime": "01/15/24 08:00:05", "value": {"bpm": 70, "confidence": 2}}, {"dateTi"#;
    let read = records(truncated, None, &settings).unwrap();
    assert!(read[0].outcome.is_ok());
    assert!(reason(&read[1]).contains("malformed JSON"), "{}", reason(&read[1]));
}

#[test]
fn profile_csv_fields_may_be_quoted_across_lines_and_lines_are_bounded() {
    let mut lines = CsvLines::new(PROFILE.as_bytes());
    assert_eq!(lines.next_record().unwrap().unwrap().len(), 7);
    let row = lines.next_record().unwrap().unwrap();
    assert_eq!(row[2], "Runner, \"early\" riser\nand cyclist");
    assert_eq!(row[3], "Europe/Berlin");
    assert_eq!(lines.next_record().unwrap(), None);
    let long = format!("timestamp,value\n{}\n", "9".repeat(MAX_LINE + 1));
    let mut lines = CsvLines::new(long.as_bytes());
    lines.next_record().unwrap();
    let error = lines.next_record().unwrap_err();
    assert!(error.message.contains("longer than"), "{error}");
    // An unclosed quote cannot make a record longer than the bound either.
    let unclosed = format!("\"{}", "a,\n".repeat(MAX_LINE));
    assert!(CsvLines::new(unclosed.as_bytes()).next_record().is_err());
}

/// A Google Takeout zip: the profile is read first wherever it is, vital-sign files are read,
/// other export files are skipped by kind, and an Apple Health zip is refused naming its format.
#[test]
fn a_takeout_zip_is_read_with_its_profile_and_other_files_are_skipped() {
    let zip = takeout_zip(&[
        ("Takeout/Fitbit/Global Export Data/heart_rate-2024-01-15.json", HEART.as_bytes()),
        ("Takeout/Fitbit/Global Export Data/steps-2024-01-15.json", b"[]"),
        ("Takeout/Fitbit/Global Export Data/weight-2024-01-15.json", WEIGHT.as_bytes()),
        (
            "Takeout/Fitbit/Oxygen Saturation (SpO2)/Minute SpO2 - 2024-01-15.csv",
            b"timestamp,value\n2024-01-15T02:03:00,95.3\n",
        ),
        ("Takeout/Fitbit/Your Profile/Profile.csv", PROFILE.as_bytes()),
        ("Takeout/archive_browser.html", b"<html></html>"),
    ]);
    assert_eq!(crate::ingest::sniff(&zip).map(|(format, _)| format), Some(Format::Fitbit));
    let mut settings = settings(None);
    let mut read = Vec::new();
    read_zip(std::io::Cursor::new(zip), &mut settings, &mut |record| read.push(record)).unwrap();
    assert_eq!(settings.zone_note, "Europe/Berlin, from Profile.csv");
    let (made, summary) = observations(read);
    assert_eq!(summary.skipped_kinds.get("steps (JSON)"), Some(&1), "{summary:?}");
    // One heart-rate sample, a weight and its BMI, one SpO2.
    assert_eq!(made.len(), 4, "{made:#?}");
    let heart = made.iter().find(|o| o["code"]["coding"][0]["code"] == "8867-4").unwrap();
    assert_eq!(heart["effectiveDateTime"], "2024-01-15T08:00:05+01:00");
    let spo2 = made.iter().find(|o| o["code"]["coding"][0]["code"] == "2708-6").unwrap();
    assert_eq!(spo2["effectiveDateTime"], "2024-01-15T02:03:00+01:00");
    let apple = takeout_zip(&[("apple_health_export/export.xml", b"<HealthData/>")]);
    let error = read_zip(std::io::Cursor::new(apple), &mut self::settings(None), &mut |_| {}).unwrap_err();
    assert!(error.message.contains("Apple Health export.xml, not a Fitbit export (format 'apple')"), "{error}");
    // A member that cannot be opened (here bzip2, which this build does not read) is one refused
    // record, and the other members are read.
    let mut damaged = takeout_zip(&[
        ("Takeout/Fitbit/Global Export Data/heart_rate-2024-01-15.json", HEART.as_bytes()),
        ("Takeout/Fitbit/Global Export Data/weight-2024-01-15.json", WEIGHT.as_bytes()),
    ]);
    set_compression_method(&mut damaged, 0, 12);
    let mut read = Vec::new();
    read_zip(std::io::Cursor::new(damaged), &mut self::settings(Some("UTC")), &mut |record| read.push(record)).unwrap();
    assert_eq!(read[0].at, "Takeout/Fitbit/Global Export Data/heart_rate-2024-01-15.json");
    assert!(reason(&read[0]).contains("cannot be read"), "{}", reason(&read[0]));
    assert_eq!(read.len(), 3, "the weight and its BMI are still read");
    assert!(read[1].outcome.is_ok() && read[2].outcome.is_ok());
    let empty = takeout_zip(&[("notes.txt", b"hello")]);
    let error = read_zip(std::io::Cursor::new(empty), &mut self::settings(None), &mut |_| {}).unwrap_err();
    assert!(error.message.contains("is it a Fitbit export?"), "{error}");
}

/// The same export unpacked: read as a folder, with progress counted over its data files.
#[test]
fn an_unpacked_export_folder_reads_like_its_zip() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("Fitbit/Global Export Data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::create_dir_all(dir.path().join("Fitbit/Your Profile")).unwrap();
    std::fs::write(data.join("heart_rate-2024-01-15.json"), HEART).unwrap();
    std::fs::write(data.join("weight-2024-01-15.json"), WEIGHT).unwrap();
    std::fs::write(data.join("sleep-2024-01-15.json"), "[]").unwrap();
    std::fs::write(dir.path().join("Fitbit/Your Profile/Profile.csv"), PROFILE).unwrap();
    let folder = Folder::open(dir.path()).unwrap();
    assert_eq!(folder.data_bytes, (HEART.len() + WEIGHT.len()) as u64);
    let counter = Arc::new(Meter::default());
    let mut settings = settings(None);
    let mut read = Vec::new();
    folder.read(&mut settings, &counter, &mut |record| read.push(record)).unwrap();
    assert_eq!(counter.read.load(std::sync::atomic::Ordering::Relaxed), folder.data_bytes);
    let (made, summary) = observations(read);
    assert_eq!((made.len(), summary.skipped), (3, 1));
    let heart = made.iter().find(|o| o["code"]["coding"][0]["code"] == "8867-4").unwrap();
    assert_eq!(heart["effectiveDateTime"], "2024-01-15T08:00:05+01:00");
    // The same files zipped give the same Observations.
    let zip = takeout_zip(&[
        ("Fitbit/Global Export Data/heart_rate-2024-01-15.json", HEART.as_bytes()),
        ("Fitbit/Global Export Data/weight-2024-01-15.json", WEIGHT.as_bytes()),
        ("Fitbit/Global Export Data/sleep-2024-01-15.json", b"[]"),
        ("Fitbit/Your Profile/Profile.csv", PROFILE.as_bytes()),
    ]);
    let (mut zipped, mut settings) = (Vec::new(), self::settings(None));
    read_zip(std::io::Cursor::new(zip), &mut settings, &mut |record| zipped.push(record)).unwrap();
    assert_eq!(observations(zipped).0, made);
    let empty = tempfile::tempdir().unwrap();
    let error = Folder::open(empty.path()).err().expect("an empty folder is refused");
    assert!(error.message.contains("holds no Fitbit"), "{error}");
}

const HEART: &str = r#"[{"dateTime": "01/15/24 08:00:05", "value": {"bpm": 70, "confidence": 2}}]"#;
const WEIGHT: &str =
    r#"[{"logId": 1, "weight": 165.3, "bmi": 24.41, "date": "01/15/24", "time": "07:12:30", "source": "Aria"}]"#;

/// Sets the compression method of the `member`-th member (in its local header and its
/// central directory entry) of a zip written by [`takeout_zip`].
fn set_compression_method(zip: &mut [u8], member: usize, method: u16) {
    for (signature, offset) in [(b"PK\x03\x04", 8), (b"PK\x01\x02", 10)] {
        let at = zip.windows(4).enumerate().filter(|(_, window)| window == signature).nth(member).unwrap().0;
        zip[at + offset..at + offset + 2].copy_from_slice(&method.to_le_bytes());
    }
}

fn takeout_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, content) in files {
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        writer.start_file(*name, options).unwrap();
        writer.write_all(content).unwrap();
    }
    writer.finish().unwrap().into_inner()
}
