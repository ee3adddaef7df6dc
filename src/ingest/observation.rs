//! Readings become FHIR resources: one vital-signs Observation per reading (R4 vital-signs
//! profile and the kind's own), and one Device per measuring device.
//!
//! Ids are derived from what the resource says, so that importing the same data twice
//! addresses the same resources with the same content and changes nothing: an Observation's
//! from (patient, source format, device, kind, time, value), a Device's from (patient, its
//! name, maker, model and version).

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::vitals::{DIASTOLIC, Kind, LOINC, SYSTOLIC, UCUM, trim_number};

/// The input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Apple,
    Fitbit,
    Mhealth,
    Rppg,
}

impl Format {
    /// The name on the command line and in `$ingest-vitals`.
    pub fn name(self) -> &'static str {
        match self {
            Format::Apple => "apple",
            Format::Fitbit => "fitbit",
            Format::Mhealth => "mhealth",
            Format::Rppg => "rppg",
        }
    }

    pub fn parse(name: &str) -> Option<Format> {
        [Format::Apple, Format::Fitbit, Format::Mhealth, Format::Rppg].into_iter().find(|format| format.name() == name)
    }

    /// What the Observations' `meta.source` says they came from.
    pub fn source_uri(self) -> &'static str {
        match self {
            Format::Apple => "urn:braid:ingest:apple-health",
            Format::Fitbit => "urn:braid:ingest:fitbit",
            Format::Mhealth => "urn:braid:ingest:open-mhealth",
            Format::Rppg => "urn:braid:ingest:rppg",
        }
    }

    /// The format as people know it, for messages.
    pub fn title(self) -> &'static str {
        match self {
            Format::Apple => "an Apple Health export",
            Format::Fitbit => "a Fitbit / Google Takeout export",
            Format::Mhealth => "Open mHealth JSON",
            Format::Rppg => "an rPPG video or trace",
        }
    }
}

/// When a reading was taken: an instant, or a period (an aggregate, or a measurement that
/// lasted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    At(OffsetDateTime),
    Between(OffsetDateTime, OffsetDateTime),
}

impl When {
    pub fn start(self) -> OffsetDateTime {
        match self {
            When::At(at) | When::Between(at, _) => at,
        }
    }

    pub fn end(self) -> OffsetDateTime {
        match self {
            When::At(at) | When::Between(_, at) => at,
        }
    }
}

/// What was measured, in the kind's canonical unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Measured {
    Value(f64),
    Pressure {
        systolic: f64,
        diastolic: f64,
    },
    /// Samples of a high-frequency stream over a period: their mean, lowest and highest.
    Summary {
        mean: f64,
        min: f64,
        max: f64,
        samples: usize,
    },
}

/// The device that measured, as the export names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Device {
    pub name: String,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub version: Option<String>,
}

/// How a camera reading was made, and how clean its signal was.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SignalQuality {
    /// The pulse's spectral signal-to-noise ratio, in dB.
    pub snr_db: f64,
    /// The method that extracted the pulse (e.g. "POS").
    pub method: &'static str,
}

/// One measurement, ready to become an Observation.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub kind: Kind,
    pub measured: Measured,
    pub when: When,
    pub device: Option<Device>,
    pub quality: Option<SignalQuality>,
}

/// The extension carrying an rPPG reading's signal quality.
pub const SIGNAL_QUALITY_EXTENSION: &str = "urn:braid:signal-quality";
/// The code system of an aggregate's components (lowest, highest, number of samples).
pub const STATISTIC_SYSTEM: &str = "urn:braid:vitals-statistic";

/// Formats a time as a FHIR `dateTime`, keeping the offset it was taken at.
pub fn format_time(time: OffsetDateTime) -> String {
    let time = time.replace_nanosecond(time.nanosecond() / 1_000_000 * 1_000_000).unwrap_or(time);
    time.format(&Rfc3339).unwrap_or_default()
}

/// The first `chars` hex digits of the SHA-256 of `parts` (each followed by a NUL, so that
/// ("ab", "c") and ("a", "bc") differ).
fn hex_digest(parts: &[&str], chars: usize) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let hex = crate::fhir::hex(&hasher.finalize());
    hex[..chars.min(hex.len())].to_owned()
}

/// The id of a patient's Device resource.
pub fn device_id(patient: &str, device: &Device) -> String {
    let optional = |part: &Option<String>| part.clone().unwrap_or_default();
    let parts =
        [patient, &device.name, &optional(&device.manufacturer), &optional(&device.model), &optional(&device.version)];
    format!("device-{}", hex_digest(&parts, 32))
}

/// The id of a reading's Observation: the same reading of the same patient from the same
/// source always has the same id. It starts with the reading's time (Unix seconds, hex, fixed
/// width) so that an export, which runs in time order, is written in id order: its index
/// entries then land next to each other instead of all over the database.
pub fn observation_id(patient: &str, format: Format, reading: &Reading) -> String {
    let micros = |time: OffsetDateTime| (time.unix_timestamp_nanos() / 1000).to_string();
    let value = match reading.measured {
        Measured::Value(value) => trim_number(value),
        Measured::Pressure { systolic, diastolic } => format!("{}/{}", trim_number(systolic), trim_number(diastolic)),
        Measured::Summary { mean, min, max, samples } => {
            format!("{}|{}|{}|{samples}", trim_number(mean), trim_number(min), trim_number(max))
        }
    };
    let device = reading.device.as_ref().map(|device| device_id(patient, device)).unwrap_or_default();
    let parts = [
        patient,
        format.name(),
        &device,
        reading.kind.name(),
        &micros(reading.when.start()),
        &micros(reading.when.end()),
        &value,
    ];
    let seconds = reading.when.start().unix_timestamp().clamp(0, 0xf_ffff_ffff);
    format!("vitals-{seconds:09x}-{}", hex_digest(&parts, 32))
}

fn quantity(value: f64, kind: Kind) -> Value {
    let unit = kind.definition().unit;
    json!({"value": number(value), "unit": unit.human, "system": UCUM, "code": unit.ucum})
}

/// A JSON number without a needless fraction (72, not 72.0).
fn number(value: f64) -> Value {
    if value.fract() == 0.0 && value.abs() < 1e15 { json!(value as i64) } else { json!(value) }
}

fn statistic(code: &str, display: &str) -> Value {
    json!({"coding": [{"system": STATISTIC_SYSTEM, "code": code, "display": display}], "text": display})
}

/// The Device resource for a patient's device.
pub fn device_resource(patient: &str, device: &Device) -> Value {
    let mut resource = json!({
        "resourceType": "Device",
        "id": device_id(patient, device),
        "deviceName": [{"name": device.name, "type": "user-friendly-name"}],
        "patient": {"reference": format!("Patient/{patient}")},
    });
    if let Some(manufacturer) = &device.manufacturer {
        resource["manufacturer"] = json!(manufacturer);
    }
    if let Some(model) = &device.model {
        resource["modelNumber"] = json!(model);
    }
    if let Some(version) = &device.version {
        resource["version"] = json!([{"value": version}]);
    }
    resource
}

/// The vital-signs Observation of a reading.
pub fn observation(patient: &str, format: Format, reading: &Reading) -> Value {
    let kind = reading.kind;
    let definition = kind.definition();
    let codings: Vec<Value> = definition
        .codes
        .iter()
        .map(|code| json!({"system": LOINC, "code": code.code, "display": code.display}))
        .collect();
    let mut resource = Map::new();
    resource.insert("resourceType".into(), json!("Observation"));
    resource.insert("id".into(), json!(observation_id(patient, format, reading)));
    resource.insert(
        "meta".into(),
        json!({
            "profile": ["http://hl7.org/fhir/StructureDefinition/vitalsigns", definition.profile],
            "source": format.source_uri(),
        }),
    );
    if let Some(quality) = reading.quality {
        resource.insert(
            "extension".into(),
            json!([{"url": SIGNAL_QUALITY_EXTENSION,
                "valueQuantity": {"value": (quality.snr_db * 100.0).round() / 100.0, "unit": "dB", "system": UCUM, "code": "dB"}}]),
        );
    }
    resource.insert("status".into(), json!("final"));
    resource.insert(
        "category".into(),
        json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs", "display": "Vital Signs"}], "text": "Vital Signs"}]),
    );
    resource.insert("code".into(), json!({"coding": codings, "text": definition.codes[0].display}));
    resource.insert("subject".into(), json!({"reference": format!("Patient/{patient}")}));
    match reading.when {
        When::At(at) => resource.insert("effectiveDateTime".into(), json!(format_time(at))),
        When::Between(start, end) => {
            resource.insert("effectivePeriod".into(), json!({"start": format_time(start), "end": format_time(end)}))
        }
    };
    let mut components = Vec::new();
    match reading.measured {
        Measured::Value(value) => {
            resource.insert("valueQuantity".into(), quantity(value, kind));
        }
        Measured::Pressure { systolic, diastolic } => {
            for (code, value) in [(SYSTOLIC, systolic), (DIASTOLIC, diastolic)] {
                components.push(json!({
                    "code": {"coding": [{"system": LOINC, "code": code.code, "display": code.display}], "text": code.display},
                    "valueQuantity": quantity(value, kind),
                }));
            }
        }
        Measured::Summary { mean, min, max, samples } => {
            resource.insert("valueQuantity".into(), quantity(mean, kind));
            components.push(json!({"code": statistic("minimum", "Lowest value in the period"), "valueQuantity": quantity(min, kind)}));
            components.push(json!({"code": statistic("maximum", "Highest value in the period"), "valueQuantity": quantity(max, kind)}));
            components
                .push(json!({"code": statistic("count", "Number of samples in the period"), "valueInteger": samples}));
        }
    }
    if let Some(quality) = reading.quality {
        resource.insert(
            "method".into(),
            json!({"text": format!("Remote photoplethysmography from facial video ({})", quality.method)}),
        );
    }
    if let Some(device) = &reading.device {
        resource.insert(
            "device".into(),
            json!({"reference": format!("Device/{}", device_id(patient, device)), "display": device.name}),
        );
    }
    if !components.is_empty() {
        resource.insert("component".into(), Value::Array(components));
    }
    Value::Object(resource)
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::fhir::ResourceType;
    use crate::fhir::validation::validator;

    fn watch() -> Device {
        Device {
            name: "Apple Watch".into(),
            manufacturer: Some("Apple Inc.".into()),
            model: Some("Watch".into()),
            version: Some("10.1".into()),
        }
    }

    #[test]
    fn every_kind_makes_an_observation_the_vital_signs_profile_accepts() {
        let at = When::At(datetime!(2024-01-01 08:01:00 +01:00));
        for kind in Kind::ALL {
            let measured = match kind {
                Kind::BloodPressure => Measured::Pressure { systolic: 121.0, diastolic: 79.0 },
                Kind::HeartRate => Measured::Summary { mean: 71.5, min: 64.0, max: 80.0, samples: 12 },
                _ => Measured::Value(kind.definition().range.0 + 1.0),
            };
            let reading = Reading { kind, measured, when: at, device: Some(watch()), quality: None };
            let resource = observation("p1", Format::Apple, &reading);
            let warnings = validator().validate_value(ResourceType::OBSERVATION, &resource);
            assert_eq!(warnings.map_err(|error| error.to_string()), Ok(Vec::new()), "{kind}: {resource:#}");
            assert_eq!(resource["effectiveDateTime"], "2024-01-01T08:01:00+01:00");
            assert_eq!(resource["code"]["coding"][0]["code"], kind.definition().codes[0].code);
            assert_eq!(resource["meta"]["source"], "urn:braid:ingest:apple-health");
        }
        let device = device_resource("p1", &watch());
        assert_eq!(
            validator().validate_value(ResourceType::DEVICE, &device).map_err(|e| e.to_string()),
            Ok(Vec::new())
        );
    }

    #[test]
    fn ids_depend_on_the_reading_not_on_how_its_time_was_written() {
        let reading = |when, value| Reading {
            kind: Kind::HeartRate,
            measured: Measured::Value(value),
            when,
            device: Some(watch()),
            quality: None,
        };
        let local = When::At(datetime!(2024-01-01 08:01:00 +01:00));
        let utc = When::At(datetime!(2024-01-01 07:01:00 UTC));
        let id = observation_id("p1", Format::Apple, &reading(local, 72.0));
        assert_eq!(id, observation_id("p1", Format::Apple, &reading(utc, 72.0)));
        assert!(id.len() <= 64 && id.starts_with("vitals-"));
        // Ids run in time order, so that an export is written in id order.
        let later =
            observation_id("p1", Format::Apple, &reading(When::At(datetime!(2024-01-01 08:02:00 +01:00)), 60.0));
        assert!(id < later, "{id} {later}");
        for other in [
            observation_id("p2", Format::Apple, &reading(local, 72.0)),
            observation_id("p1", Format::Fitbit, &reading(local, 72.0)),
            observation_id("p1", Format::Apple, &reading(local, 73.0)),
            observation_id("p1", Format::Apple, &reading(When::At(datetime!(2024-01-01 08:02:00 +01:00)), 72.0)),
        ] {
            assert_ne!(id, other);
        }
        let quality = Reading {
            quality: Some(SignalQuality { snr_db: 7.345, method: "POS" }),
            ..reading(When::Between(datetime!(2024-01-01 08:00:00 UTC), datetime!(2024-01-01 08:00:30 UTC)), 72.0)
        };
        let resource = observation("p1", Format::Rppg, &quality);
        assert_eq!(resource["extension"][0]["valueQuantity"]["value"], 7.35);
        assert_eq!(resource["effectivePeriod"]["end"], "2024-01-01T08:00:30Z");
        assert!(resource["method"]["text"].as_str().unwrap().contains("POS"));
        assert_eq!(
            validator().validate_value(ResourceType::OBSERVATION, &resource).map_err(|e| e.to_string()),
            Ok(vec![])
        );
    }
}
