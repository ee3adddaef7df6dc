//! Open mHealth data points (JSON): heart-rate, blood-pressure, body-temperature,
//! oxygen-saturation, respiratory-rate, body-weight, body-height and body-mass-index.
//!
//! A file holds one data point, a JSON array of them, or one per line (NDJSON); each is a
//! `{header, body}` data point or a bare body. The schema comes from the header's
//! `schema_id.name`, else from the measure the body holds. Arrays are read element by element,
//! so a long file is never held whole.

use std::io::BufRead;

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::items;
use super::observation::{Device, Measured, Reading, When};
use super::vitals::{Kind, Problem, check_pressure};
use super::{FormatError, Record};

/// The measures this reader knows: schema name, the body's member holding the value, the kind.
const SCHEMAS: [(&str, &str, Kind); 7] = [
    ("heart-rate", "heart_rate", Kind::HeartRate),
    ("body-temperature", "body_temperature", Kind::BodyTemperature),
    ("oxygen-saturation", "oxygen_saturation", Kind::OxygenSaturation),
    ("respiratory-rate", "respiratory_rate", Kind::RespiratoryRate),
    ("body-weight", "body_weight", Kind::BodyWeight),
    ("body-height", "body_height", Kind::BodyHeight),
    ("body-mass-index", "body_mass_index", Kind::BodyMassIndex),
];

/// Reads every data point of `input`, giving each to `emit` as a reading or as the reason it
/// was refused. Fails only when the input is not Open mHealth JSON at all.
pub fn read(input: impl BufRead, emit: &mut dyn FnMut(Record)) -> Result<(), FormatError> {
    let end = items::read(input, &mut |index, point| {
        emit(Record::new(format!("data point {index}"), data_point(&point)));
    })
    .map_err(|error| FormatError::new(format!("not Open mHealth JSON: {error}")))?;
    // What came before a break is kept; the rest cannot be split into data points.
    if let Some(record) = end.broken_record(|index| format!("data point {index}")) {
        emit(record);
    }
    Ok(())
}

/// One data point as a reading.
pub fn data_point(point: &Value) -> Result<Reading, Problem> {
    let Some(object) = point.as_object() else { return Err(Problem::new("a data point must be a JSON object")) };
    let header = object.get("header");
    let body = object.get("body").unwrap_or(point);
    let schema = header.and_then(|header| header["schema_id"]["name"].as_str());
    let device = header.and_then(device_of);
    let when = time_frame(body)?;
    if body.get("systolic_blood_pressure").is_some() || schema == Some("blood-pressure") {
        let systolic = quantity(body, "systolic_blood_pressure", Kind::BloodPressure)?;
        let diastolic = quantity(body, "diastolic_blood_pressure", Kind::BloodPressure)?;
        check_pressure(systolic, diastolic)?;
        let measured = Measured::Pressure { systolic, diastolic };
        return Ok(Reading { kind: Kind::BloodPressure, measured, when, device, quality: None });
    }
    let found = match schema {
        Some(name) => SCHEMAS.iter().find(|(schema, _, _)| *schema == name).ok_or_else(|| {
            Problem::new(format!(
                "schema '{name}' is not a vital sign Braid ingests (expected one of: blood-pressure, {})",
                SCHEMAS.iter().map(|(schema, _, _)| *schema).collect::<Vec<_>>().join(", ")
            ))
        })?,
        None => SCHEMAS.iter().find(|(_, member, _)| body.get(*member).is_some()).ok_or_else(|| {
            Problem::new("no measure Braid ingests in the data point (and no header naming its schema)")
        })?,
    };
    let (_, member, kind) = *found;
    if let Some(statistic) = body["descriptive_statistic"].as_str()
        && !matches!(statistic, "average" | "mean" | "median")
    {
        return Err(Problem::new(format!("a {statistic} over a period is not a {} reading", kind.name())));
    }
    let value = quantity(body, member, kind)?;
    Ok(Reading { kind, measured: Measured::Value(value), when, device, quality: None })
}

/// The value of `body[member]` (`{value, unit}`) in the kind's canonical unit.
fn quantity(body: &Value, member: &str, kind: Kind) -> Result<f64, Problem> {
    let measure = body.get(member).ok_or_else(|| Problem::new(format!("'{member}' is missing")))?;
    let value = measure["value"]
        .as_f64()
        .ok_or_else(|| Problem::new(format!("'{member}.value' must be a number, not {}", measure["value"])))?;
    let unit = measure["unit"].as_str().ok_or_else(|| Problem::new(format!("'{member}.unit' is missing")))?;
    kind.canonical(value, unit)
}

/// The data point's `effective_time_frame`: a `date_time`, or a `time_interval` given by its
/// start and end, or by either with a duration.
fn time_frame(body: &Value) -> Result<When, Problem> {
    let frame = body.get("effective_time_frame").ok_or_else(|| Problem::new("'effective_time_frame' is missing"))?;
    if let Some(at) = frame.get("date_time") {
        return Ok(When::At(instant(at, "effective_time_frame.date_time")?));
    }
    let interval = frame
        .get("time_interval")
        .ok_or_else(|| Problem::new("'effective_time_frame' must have a 'date_time' or a 'time_interval'"))?;
    let start = interval.get("start_date_time").map(|at| instant(at, "time_interval.start_date_time")).transpose()?;
    let end = interval.get("end_date_time").map(|at| instant(at, "time_interval.end_date_time")).transpose()?;
    let duration = interval.get("duration").map(duration).transpose()?;
    let (start, end) = match (start, end, duration) {
        (Some(start), Some(end), _) => (start, end),
        (Some(start), None, Some(duration)) => (start, start + duration),
        (None, Some(end), Some(duration)) => (end - duration, end),
        _ => return Err(Problem::new("a 'time_interval' needs two of start_date_time, end_date_time and duration")),
    };
    if end < start {
        return Err(Problem::new("the time interval ends before it starts"));
    }
    Ok(When::Between(start, end))
}

fn instant(value: &Value, name: &str) -> Result<OffsetDateTime, Problem> {
    let text = value.as_str().ok_or_else(|| Problem::new(format!("'{name}' must be a string")))?;
    OffsetDateTime::parse(text, &Rfc3339)
        .map_err(|_| Problem::new(format!("'{name}' is not a date-time with an offset (RFC 3339): '{text}'")))
}

fn duration(value: &Value) -> Result<time::Duration, Problem> {
    let amount = value["value"].as_f64().filter(|amount| amount.is_finite() && *amount >= 0.0);
    let amount = amount.ok_or_else(|| Problem::new("'duration.value' must be a non-negative number"))?;
    let seconds = match value["unit"].as_str() {
        Some("ps") => 1e-12,
        Some("ns") => 1e-9,
        Some("us") => 1e-6,
        Some("ms") => 1e-3,
        Some("sec") | Some("s") => 1.0,
        Some("min") => 60.0,
        Some("h") => 3600.0,
        Some("d") => 86_400.0,
        Some("wk") => 604_800.0,
        other => return Err(Problem::new(format!("'duration.unit' {other:?} is not a time unit"))),
    };
    let total = amount * seconds;
    if total > 366.0 * 86_400.0 {
        return Err(Problem::new("a duration longer than a year is not a vital-sign measurement"));
    }
    Ok(time::Duration::seconds_f64(total))
}

/// The device named in the header's provenance (`acquisition_provenance.source_name`).
fn device_of(header: &Value) -> Option<Device> {
    let provenance = header.get("acquisition_provenance")?;
    let name = provenance["source_name"].as_str()?.trim();
    (!name.is_empty()).then(|| Device { name: name.to_owned(), ..Device::default() })
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use time::macros::datetime;

    use super::*;

    fn all(text: &str) -> Result<Vec<Record>, FormatError> {
        let mut records = Vec::new();
        read(text.as_bytes(), &mut |record| records.push(record))?;
        Ok(records)
    }

    #[test]
    fn each_schema_becomes_a_reading_in_its_canonical_unit() {
        let header = |name: &str| {
            json!({"id": "x", "creation_date_time": "2024-01-01T08:00:00Z",
                "schema_id": {"namespace": "omh", "name": name, "version": "1.0"},
                "acquisition_provenance": {"source_name": "Withings BPM Connect", "modality": "sensed"}})
        };
        let at = json!({"date_time": "2024-01-01T08:01:00+01:00"});
        let points = json!([
            {"header": header("heart-rate"), "body": {"heart_rate": {"value": 61, "unit": "beats/min"}, "effective_time_frame": at}},
            {"header": header("blood-pressure"), "body": {"systolic_blood_pressure": {"value": 121, "unit": "mmHg"},
                "diastolic_blood_pressure": {"value": 79, "unit": "mmHg"}, "effective_time_frame": at}},
            {"body": {"body_temperature": {"value": 98.6, "unit": "F"}, "effective_time_frame": at}},
            {"body_weight": {"value": 154, "unit": "lb"}, "effective_time_frame": at},
            {"oxygen_saturation": {"value": 97.5, "unit": "%"}, "effective_time_frame":
                {"time_interval": {"start_date_time": "2024-01-01T08:00:00Z", "duration": {"value": 5, "unit": "min"}}}},
            {"respiratory_rate": {"value": 14, "unit": "breaths/min"}, "effective_time_frame": at},
        ]);
        let records = all(&points.to_string()).unwrap();
        let readings: Vec<Reading> = records.into_iter().map(|record| record.outcome.unwrap()).collect();
        assert_eq!(readings[0].kind, Kind::HeartRate);
        assert_eq!(readings[0].measured, Measured::Value(61.0));
        assert_eq!(readings[0].when, When::At(datetime!(2024-01-01 08:01:00 +01:00)));
        assert_eq!(readings[0].device.as_ref().unwrap().name, "Withings BPM Connect");
        assert_eq!(readings[1].measured, Measured::Pressure { systolic: 121.0, diastolic: 79.0 });
        assert_eq!(readings[2].measured, Measured::Value(37.0));
        assert_eq!(readings[3].measured, Measured::Value(69.85));
        assert_eq!(
            readings[4].when,
            When::Between(datetime!(2024-01-01 08:00:00 UTC), datetime!(2024-01-01 08:05:00 UTC))
        );
        assert_eq!(readings[5].kind, Kind::RespiratoryRate);
    }

    #[test]
    fn one_data_point_and_ndjson_are_read_as_well_as_arrays() {
        let point = r#"{"heart_rate": {"value": 61, "unit": "beats/min"}, "effective_time_frame": {"date_time": "2024-01-01T08:01:00Z"}}"#;
        assert_eq!(all(point).unwrap().len(), 1);
        let lines = format!("{point}\n{point}\n\n{point}\n");
        let records = all(&lines).unwrap();
        assert_eq!(
            records.iter().map(|record| record.at.as_str()).collect::<Vec<_>>(),
            ["data point 1", "data point 2", "data point 3"]
        );
    }

    #[test]
    fn bad_points_are_refused_one_by_one_with_their_reason_and_the_rest_is_read() {
        let at = r#""effective_time_frame": {"date_time": "2024-01-01T08:01:00Z"}"#;
        let text = format!(
            r#"[{{"heart_rate": {{"value": 900, "unit": "beats/min"}}, {at}}},
               {{"heart_rate": {{"value": "fast", "unit": "beats/min"}}, {at}}},
               {{"body_weight": {{"value": 70, "unit": "mmHg"}}, {at}}},
               {{"heart_rate": {{"value": 61, "unit": "beats/min"}}, "effective_time_frame": {{"date_time": "2024-01-01 08:01"}}}},
               {{"header": {{"schema_id": {{"name": "step-count"}}}}, "body": {{"step_count": 10, {at}}}}},
               {{"systolic_blood_pressure": {{"value": 70, "unit": "mmHg"}}, "diastolic_blood_pressure": {{"value": 90, "unit": "mmHg"}}, {at}}},
               {{"heart_rate": {{"value": 61, "unit": "beats/min"}}, {at}}}]"#
        );
        let records = all(&text).unwrap();
        let reasons: Vec<String> = records
            .iter()
            .map(|record| match &record.outcome {
                Ok(_) => "ok".to_owned(),
                Err(problem) => problem.reason.clone(),
            })
            .collect();
        assert!(reasons[0].contains("900 beats/minute is impossible"), "{reasons:?}");
        assert!(reasons[1].contains("must be a number"), "{reasons:?}");
        assert!(reasons[2].contains("'mmHg' is not a unit of body-weight"), "{reasons:?}");
        assert!(reasons[3].contains("not a date-time with an offset"), "{reasons:?}");
        assert!(reasons[4].contains("'step-count' is not a vital sign"), "{reasons:?}");
        assert!(reasons[5].contains("must be below systolic"), "{reasons:?}");
        assert_eq!(reasons[6], "ok");
    }

    #[test]
    fn input_that_is_not_open_mhealth_fails_as_a_whole() {
        assert!(all("").unwrap_err().to_string().contains("empty"));
        assert!(all("<?xml version=\"1.0\"?><HealthData/>").unwrap_err().to_string().contains("not Open mHealth"));
        assert!(all("[").is_err(), "nothing but a bracket");
        let records = all("[1, 2").unwrap();
        assert_eq!(records.len(), 3, "a truncated array keeps what came before the break");
        assert!(records[0].outcome.as_ref().unwrap_err().reason.contains("must be a JSON object"));
        assert!(records[2].outcome.as_ref().unwrap_err().reason.contains("malformed JSON"));
        // A truncated NDJSON file keeps what came before the break.
        let point = r#"{"heart_rate": {"value": 61, "unit": "beats/min"}, "effective_time_frame": {"date_time": "2024-01-01T08:01:00Z"}}"#;
        let records = all(&format!("{point}\n{{\"heart_rate\": {{\"val")).unwrap();
        assert_eq!(records.len(), 2);
        assert!(records[0].outcome.is_ok());
        assert!(records[1].outcome.as_ref().unwrap_err().reason.contains("malformed JSON"));
    }
}
