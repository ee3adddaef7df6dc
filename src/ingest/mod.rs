//! Vitals ingest: measurements that patients take themselves (wearable exports, camera scans)
//! become vital-signs Observations in their record.
//!
//! Each format's reader ([`mhealth`], …) turns its input into [`Record`]s: a [`Reading`] in
//! canonical units, or the reason that record was refused. A [`Converter`] then aggregates
//! high-frequency heart-rate samples per minute, makes the Observations and Device resources
//! (ids derived from content, see [`observation`]), checks each against Braid's profile
//! validation, and hands them out in batches that [`write`] commits as idempotent updates: the
//! same import twice changes nothing. Bad records are counted and reported with their reason;
//! they never stop the rest.

pub mod apple;
pub mod archive;
pub mod fitbit;
pub mod items;
pub mod mhealth;
pub mod observation;
pub mod remote;
pub mod rppg;
pub mod run;
pub mod vitals;

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use serde::Serialize;
use serde_json::Value;
use time::{Duration, OffsetDateTime};

use crate::fhir::validation::validator;
use crate::fhir::{FhirError, Id, ResourceType};
use crate::store::{Action, OutcomeKind, Precondition, Store, Target, WriteOp, WriteRequest};
pub use observation::{Device, Format, Measured, Reading, When};
pub use vitals::{Kind, Problem};

/// One record of an input: what it became, and where it was (for the report).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Where the record is in the input, as a person would look for it ("line 12", "data
    /// point 3").
    pub at: String,
    pub outcome: Result<Reading, Problem>,
}

impl Record {
    pub fn new(at: impl Into<String>, outcome: Result<Reading, Problem>) -> Record {
        Record { at: at.into(), outcome }
    }
}

/// An input that cannot be read as the format at all (as opposed to a bad record in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError {
    pub message: String,
    /// The server's fault, not the input's: the input could not be opened at all, or the
    /// server's own sealed spool of it fails authentication (an upload's spool file that cannot
    /// be opened or read back is not the client's to fix).
    pub unopened: bool,
}

impl FormatError {
    pub fn new(message: impl Into<String>) -> FormatError {
        FormatError { message: message.into(), unopened: false }
    }

    /// `path` could not be opened (or its metadata read).
    pub fn unopened(path: &std::path::Path, error: std::io::Error) -> FormatError {
        FormatError { message: format!("{}: {error}", path.display()), unopened: true }
    }

    pub fn io(error: std::io::Error) -> FormatError {
        FormatError {
            message: format!("cannot read the input: {error}"),
            unopened: crate::crypt::sealed::is_damaged(&error),
        }
    }
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for FormatError {}

/// What the start of an input looks like: the format and how people call it, when it is
/// recognisable. Used to tell someone who picked the wrong format which one to pick.
pub fn sniff(head: &[u8]) -> Option<(Format, &'static str)> {
    let text = String::from_utf8_lossy(&head[..head.len().min(4096)]);
    let start = text.trim_start_matches('\u{feff}').trim_start();
    if head.starts_with(b"PK\x03\x04") {
        // The first member's name (a local file header: its length at byte 26, the name at 30)
        // tells an Apple Health export from a Fitbit one; either reader checks the rest.
        let length = head.get(26..28).map_or(0, |bytes| u16::from_le_bytes([bytes[0], bytes[1]]) as usize);
        let name = String::from_utf8_lossy(head.get(30..30 + length).unwrap_or_default()).to_ascii_lowercase();
        if name.contains("apple_health_export") || apple::is_export_xml(&name) {
            return Some((Format::Apple, "an Apple Health export.zip"));
        }
        if name.contains("fitbit") || name.contains("takeout") {
            return Some((Format::Fitbit, "a Fitbit or Google Takeout export archive"));
        }
        return None;
    }
    if start.starts_with("YUV4MPEG2 ") {
        return Some((Format::Rppg, "a Y4M video"));
    }
    if start.starts_with('<') && (text.contains("<HealthData") || text.contains("HealthKit")) {
        return Some((Format::Apple, "an Apple Health export (export.xml)"));
    }
    if start.starts_with('{') || start.starts_with('[') {
        if text.contains("\"schema_id\"") || text.contains("\"effective_time_frame\"") {
            return Some((Format::Mhealth, "Open mHealth JSON"));
        }
        if text.contains("\"dateTime\"") || text.contains("\"logId\"") {
            return Some((Format::Fitbit, "a Fitbit export file"));
        }
        if text.contains("\"frames\"") {
            return Some((Format::Rppg, "an rPPG trace"));
        }
    }
    let first_line = start.lines().next().unwrap_or_default().to_ascii_lowercase();
    if first_line.starts_with("timestamp,") {
        return Some((Format::Fitbit, "a Fitbit CSV export file"));
    }
    None
}

/// Most refused records listed one by one in a summary (all are counted).
pub const MAX_LISTED_PROBLEMS: usize = 100;

/// What an import did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Records read from the input (readings and refused ones).
    pub records: usize,
    /// Samples merged into per-minute aggregates.
    pub aggregated_samples: usize,
    /// Observations made (after aggregation), and of those written: new, changed, already
    /// there as they are.
    pub observations: usize,
    pub created: usize,
    pub updated: usize,
    pub unchanged: usize,
    /// Observations that were made twice in one import (e.g. a blood pressure exported both
    /// as a pair and as two records) and written once.
    pub duplicates: usize,
    pub devices: usize,
    /// Records of kinds that are not vital signs (steps, workouts…), left out, and how many of
    /// each kind (the first [`MAX_LISTED_PROBLEMS`] kinds).
    pub skipped: usize,
    pub skipped_kinds: std::collections::BTreeMap<String, usize>,
    /// Records refused, in all; the first [`MAX_LISTED_PROBLEMS`] with their reason.
    pub rejected: usize,
    pub problems: Vec<Refused>,
    /// Where times without an offset were placed (Fitbit's local times), and why there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

/// A refused record and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Refused {
    pub at: String,
    pub reason: String,
}

impl Summary {
    /// Takes the counts of what was written (kept apart while reading runs on another thread),
    /// and what the writing refused.
    pub fn add_writes(&mut self, written: &Summary) {
        self.created += written.created;
        self.updated += written.updated;
        self.unchanged += written.unchanged;
        self.duplicates += written.duplicates;
        self.rejected += written.rejected;
        let room = MAX_LISTED_PROBLEMS.saturating_sub(self.problems.len());
        self.problems.extend(written.problems.iter().take(room).cloned());
    }

    fn skip(&mut self, what: String) {
        self.skipped += 1;
        let kinds = self.skipped_kinds.len();
        match self.skipped_kinds.get_mut(&what) {
            Some(count) => *count += 1,
            None if kinds < MAX_LISTED_PROBLEMS => drop(self.skipped_kinds.insert(what, 1)),
            None => {}
        }
    }

    pub(crate) fn refuse(&mut self, at: String, reason: String) {
        self.rejected += 1;
        if self.problems.len() < MAX_LISTED_PROBLEMS {
            self.problems.push(Refused { at, reason });
        }
    }
}

/// How far apart (in minutes) heart-rate samples of one device may arrive out of order and
/// still join the same minute's aggregate; older minutes are closed.
const REORDER_MINUTES: i64 = 10;
/// Most open per-minute aggregates at once; beyond it all are closed (bounds memory on
/// inputs that interleave many devices).
const MAX_OPEN_MINUTES: usize = 10_000;

/// Heart-rate samples taken at instants, merged per device and minute. A minute with one
/// sample keeps it as it was; one with several becomes a [`Measured::Summary`] over the minute.
#[derive(Default)]
struct Aggregator {
    /// By device, then by the minute's start (Unix seconds): the samples so far.
    streams: BTreeMap<Option<Device>, Stream>,
    open: usize,
}

#[derive(Default)]
struct Stream {
    newest_minute: i64,
    minutes: BTreeMap<i64, Vec<Reading>>,
}

impl Aggregator {
    fn aggregates(reading: &Reading) -> bool {
        reading.kind == Kind::HeartRate
            && matches!(reading.measured, Measured::Value(_))
            && matches!(reading.when, When::At(_))
            && reading.quality.is_none()
    }

    /// Takes a reading; returns those whose minute is closed (or the reading itself when it
    /// is not a sample to aggregate).
    fn add(&mut self, reading: Reading, out: &mut Vec<Reading>, merged: &mut usize) {
        if !Self::aggregates(&reading) {
            out.push(reading);
            return;
        }
        let minute = reading.when.start().unix_timestamp().div_euclid(60) * 60;
        let stream = self.streams.entry(reading.device.clone()).or_default();
        stream.newest_minute = stream.newest_minute.max(minute);
        stream.minutes.entry(minute).or_default().push(reading);
        self.open += 1;
        let horizon = stream.newest_minute - REORDER_MINUTES * 60;
        while let Some(entry) = stream.minutes.first_entry() {
            if *entry.key() >= horizon {
                break;
            }
            let samples = entry.remove();
            self.open -= samples.len();
            close_minute(samples, out, merged);
        }
        if self.open > MAX_OPEN_MINUTES {
            self.finish(out, merged);
        }
    }

    /// Closes every minute.
    fn finish(&mut self, out: &mut Vec<Reading>, merged: &mut usize) {
        for (_, stream) in std::mem::take(&mut self.streams) {
            for (_, samples) in stream.minutes {
                close_minute(samples, out, merged);
            }
        }
        self.open = 0;
    }
}

/// One minute's samples as one reading.
fn close_minute(mut samples: Vec<Reading>, out: &mut Vec<Reading>, merged: &mut usize) {
    if samples.len() == 1 {
        out.extend(samples.pop());
        return;
    }
    // The same sample exported twice counts once.
    samples.sort_by(|a, b| a.when.start().cmp(&b.when.start()).then(value_of(a).total_cmp(&value_of(b))));
    samples.dedup_by(|a, b| a.when == b.when && value_of(a) == value_of(b));
    if samples.len() == 1 {
        out.extend(samples.pop());
        return;
    }
    *merged += samples.len();
    let values: Vec<f64> = samples.iter().map(value_of).collect();
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let first = &samples[0];
    let offset = first.when.start().offset();
    let minute = first.when.start().unix_timestamp().div_euclid(60) * 60;
    let start = OffsetDateTime::from_unix_timestamp(minute).unwrap_or(OffsetDateTime::UNIX_EPOCH).to_offset(offset);
    out.push(Reading {
        kind: first.kind,
        measured: Measured::Summary {
            mean: (mean * 10.0).round() / 10.0,
            min: values.iter().copied().fold(f64::INFINITY, f64::min),
            max: values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            samples: values.len(),
        },
        when: When::Between(start, start + Duration::minutes(1)),
        device: first.device.clone(),
        quality: None,
    });
}

fn value_of(reading: &Reading) -> f64 {
    match reading.measured {
        Measured::Value(value) => value,
        _ => f64::NAN,
    }
}

/// Turns one import's records into resources to write, counting what it does.
pub struct Converter {
    patient: String,
    format: Format,
    aggregator: Aggregator,
    /// Devices already handed out in this import.
    devices: HashSet<String>,
    ready: Vec<Value>,
    pub summary: Summary,
}

impl Converter {
    pub fn new(patient: &str, format: Format) -> Converter {
        Converter {
            patient: patient.to_owned(),
            format,
            aggregator: Aggregator::default(),
            devices: HashSet::new(),
            ready: Vec::new(),
            summary: Summary::default(),
        }
    }

    pub fn add(&mut self, record: Record) {
        self.summary.records += 1;
        match record.outcome {
            Err(problem) if problem.skipped => self.summary.skip(problem.reason),
            Err(problem) => self.summary.refuse(record.at, problem.reason),
            Ok(reading) => {
                let mut closed = Vec::new();
                self.aggregator.add(reading, &mut closed, &mut self.summary.aggregated_samples);
                for reading in closed {
                    self.emit(&record.at, &reading);
                }
            }
        }
    }

    /// Closes the open aggregates: call once the input is read.
    pub fn finish(&mut self) {
        let mut closed = Vec::new();
        self.aggregator.finish(&mut closed, &mut self.summary.aggregated_samples);
        for reading in closed {
            self.emit("an aggregate", &reading);
        }
    }

    /// The resources made so far and not yet taken: each Device before the first Observation
    /// that names it.
    pub fn take_ready(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.ready)
    }

    /// How many resources wait to be taken.
    pub fn ready_len(&self) -> usize {
        self.ready.len()
    }

    fn emit(&mut self, at: &str, reading: &Reading) {
        let observation = observation::observation(&self.patient, self.format, reading);
        // Built by this module, so a failure is a defect here; it is reported, not written.
        if let Err(error) = validator().validate_value(ResourceType::OBSERVATION, &observation) {
            self.summary.refuse(at.to_owned(), format!("the Observation made from it is not valid: {error}"));
            return;
        }
        if let Some(device) = &reading.device
            && self.devices.len() < MAX_DEVICES
            && self.devices.insert(observation::device_id(&self.patient, device))
        {
            self.summary.devices += 1;
            self.ready.push(observation::device_resource(&self.patient, device));
        }
        self.summary.observations += 1;
        self.ready.push(observation);
    }
}

/// Most distinct devices one import writes (each once); past it, a device's resource is
/// written with each batch that needs it again (a PUT of the same content changes nothing).
const MAX_DEVICES: usize = 10_000;

/// Resources per write: one transaction each.
pub const BATCH: usize = 500;

/// The resources of a batch, each (type and id) once: the same reading made twice (a blood
/// pressure exported both as a pair and as two records) is counted in `summary.duplicates`
/// and written once. Ids come from content, so two resources with one id are the same.
pub fn distinct(resources: Vec<Value>, summary: &mut Summary) -> Vec<(ResourceType, String, Value)> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(resources.len());
    for resource in resources {
        let id = resource["id"].as_str().unwrap_or_default().to_owned();
        let resource_type = match resource["resourceType"].as_str() {
            Some("Device") => ResourceType::DEVICE,
            _ => ResourceType::OBSERVATION,
        };
        if seen.insert((resource_type, id.clone())) {
            out.push((resource_type, id, resource));
        } else if resource_type == ResourceType::OBSERVATION {
            summary.duplicates += 1;
        }
    }
    out
}

/// Writes `resources` (Devices and Observations made by a [`Converter`]) to the store in one
/// transaction of updates by id, counting in `summary` what was created, changed or already
/// there.
pub async fn write(store: &Store, resources: Vec<Value>, summary: &mut Summary) -> Result<(), FhirError> {
    let mut ops = Vec::with_capacity(resources.len());
    for (resource_type, id, resource) in distinct(resources, summary) {
        ops.push(put(resource_type, &id, resource, Precondition::default())?);
    }
    let outcomes = store.write(WriteRequest { ops, ..WriteRequest::default() }).await?;
    for outcome in outcomes {
        if outcome.resource_type != ResourceType::OBSERVATION {
            continue;
        }
        match outcome.kind {
            OutcomeKind::Created => summary.created += 1,
            OutcomeKind::Updated => summary.updated += 1,
            _ => summary.unchanged += 1,
        }
    }
    Ok(())
}

/// The write of a resource made here by its id. This module makes only JSON objects with ids
/// of its own: anything else is a bug, reported as a fault.
fn put(
    resource_type: ResourceType,
    id: &str,
    resource: Value,
    precondition: Precondition,
) -> Result<WriteOp, FhirError> {
    let Value::Object(body) = resource else { return Err(FhirError::fault("vitals resource")) };
    let id = Id::parse(id).map_err(|_| FhirError::fault("vitals id"))?;
    Ok(WriteOp {
        full_url: None,
        action: Action::Update { resource_type, target: Target::Id(id), resource: body, precondition },
    })
}

/// Writes the `resources` of a batch that do not exist yet, each as a create (`If-None-Match:
/// *`), and counts the others as unchanged: ids come from content, so a live resource with the
/// same id is the same reading. Nothing existing is overwritten, which is what a token that may
/// only create (`Observation.c`) allows. A create raced by another import of the same reading
/// (412) makes the batch be sorted again once.
pub async fn create_new(store: &Store, resources: Vec<Value>, summary: &mut Summary) -> Result<(), FhirError> {
    let resources = distinct(resources, summary);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let snapshot = store.snapshot()?;
        let mut ops = Vec::new();
        let mut existing = 0;
        for (resource_type, id, resource) in &resources {
            if snapshot.is_live(*resource_type, id)? {
                existing += usize::from(*resource_type == ResourceType::OBSERVATION);
                continue;
            }
            let create_only = Precondition { if_match: None, if_none_match_any: true };
            ops.push(put(*resource_type, id, resource.clone(), create_only)?);
        }
        if ops.is_empty() {
            summary.unchanged += existing;
            return Ok(());
        }
        match store.write(WriteRequest { ops, ..WriteRequest::default() }).await {
            Ok(outcomes) => {
                summary.unchanged += existing;
                let observations = outcomes.iter().filter(|outcome| outcome.resource_type == ResourceType::OBSERVATION);
                summary.created += observations.count();
                return Ok(());
            }
            Err(error) if error.category == crate::fhir::Category::PreconditionFailed && attempts < 3 => continue,
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    /// Asserts what a heart rate minute made of several samples says: its period, its mean,
    /// the lowest and highest sample (components 0 and 1) and how many samples it stands for.
    pub(super) fn assert_minute<Mean, Low, High>(
        minute: &Value,
        (start, end): (&str, &str),
        mean: Mean,
        (low, high): (Low, High),
        samples: i32,
    ) where
        Value: PartialEq<Mean> + PartialEq<Low> + PartialEq<High>,
        Mean: std::fmt::Debug,
        Low: std::fmt::Debug,
        High: std::fmt::Debug,
    {
        assert_eq!(minute["effectivePeriod"]["start"], start);
        assert_eq!(minute["effectivePeriod"]["end"], end);
        assert_eq!(minute["valueQuantity"]["value"], mean);
        assert_eq!(minute["component"][0]["valueQuantity"]["value"], low);
        assert_eq!(minute["component"][1]["valueQuantity"]["value"], high);
        assert_eq!(minute["component"][2]["valueInteger"], samples);
    }

    fn sample(at: OffsetDateTime, value: f64) -> Record {
        let device = Some(Device { name: "Band".into(), ..Device::default() });
        let reading = Reading {
            kind: Kind::HeartRate,
            measured: Measured::Value(value),
            when: When::At(at),
            device,
            quality: None,
        };
        Record::new("sample", Ok(reading))
    }

    #[test]
    fn heart_rate_samples_become_one_observation_per_minute_with_its_range() {
        let mut converter = Converter::new("p1", Format::Fitbit);
        let start = datetime!(2024-01-01 08:00:00 -05:00);
        for (second, value) in [(5, 70.0), (20, 74.0), (35, 66.0), (50, 72.0), (65, 80.0)] {
            converter.add(sample(start + Duration::seconds(second), value));
        }
        // One sample repeated (exported twice) is counted once.
        converter.add(sample(start + Duration::seconds(5), 70.0));
        converter.finish();
        let resources = converter.take_ready();
        assert_eq!(resources[0]["resourceType"], "Device");
        let observations: Vec<&Value> = resources.iter().filter(|r| r["resourceType"] == "Observation").collect();
        assert_eq!(observations.len(), 2);
        assert_minute(observations[0], ("2024-01-01T08:00:00-05:00", "2024-01-01T08:01:00-05:00"), 70.5, (66, 74), 4);
        // A minute with one sample keeps its instant.
        assert_eq!(observations[1]["effectiveDateTime"], "2024-01-01T08:01:05-05:00");
        assert_eq!(converter.summary.aggregated_samples, 4);
        assert_eq!(converter.summary.observations, 2);
    }

    #[test]
    fn open_minutes_are_bounded_by_how_far_samples_may_come_out_of_order() {
        let mut aggregator = Aggregator::default();
        let (mut out, mut merged) = (Vec::new(), 0);
        let start = datetime!(2024-01-01 00:00:00 UTC);
        for minute in 0..1_000 {
            for second in [0, 30] {
                let Ok(reading) = sample(start + Duration::seconds(minute * 60 + second), 60.0).outcome else {
                    panic!()
                };
                aggregator.add(reading, &mut out, &mut merged);
            }
            assert!(aggregator.open <= 2 * (REORDER_MINUTES as usize + 2), "{}", aggregator.open);
        }
        aggregator.finish(&mut out, &mut merged);
        assert_eq!(out.len(), 1_000);
        assert_eq!(merged, 2_000);
    }

    #[test]
    fn the_start_of_a_file_tells_which_format_it_is() {
        // A zip's local file header, naming its first member.
        let zip = |name: &str| {
            let mut head = b"PK\x03\x04".to_vec();
            head.resize(26, 0);
            head.extend_from_slice(&(name.len() as u16).to_le_bytes());
            head.extend_from_slice(&[0, 0]);
            head.extend_from_slice(name.as_bytes());
            head
        };
        for (name, expected) in [
            ("apple_health_export/export.xml", Some(Format::Apple)),
            ("Takeout/Fitbit/Global Export Data/heart_rate-2024-01-01.json", Some(Format::Fitbit)),
            ("photos/cat.jpg", None),
        ] {
            assert_eq!(sniff(&zip(name)).map(|(format, _)| format), expected, "{name}");
        }
        assert_eq!(sniff(b"PK\x03\x04\x14\x00"), None, "a zip cut before its first name");
        let cases: [(&[u8], Option<Format>); 7] = [
            (
                b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE HealthData [\n<HealthData locale=\"en_GB\">",
                Some(Format::Apple),
            ),
            (b"YUV4MPEG2 W640 H480 F30:1 Ip A1:1 C420jpeg\n", Some(Format::Rppg)),
            (b"[{\"header\": {\"schema_id\": {\"name\": \"heart-rate\"}}}]", Some(Format::Mhealth)),
            (
                b"[{\"dateTime\" : \"01/01/24 08:00:05\", \"value\" : {\"bpm\" : 72, \"confidence\" : 2}}]",
                Some(Format::Fitbit),
            ),
            (b"timestamp,value\n2024-01-01T00:00:00,96.2\n", Some(Format::Fitbit)),
            (b"{\"fps\": 30, \"frames\": [{\"t\": 0, \"r\": 150, \"g\": 110, \"b\": 90}]}", Some(Format::Rppg)),
            (b"hello", None),
        ];
        for (head, expected) in cases {
            assert_eq!(sniff(head).map(|(format, _)| format), expected, "{}", String::from_utf8_lossy(head));
        }
    }

    #[test]
    fn refused_records_are_counted_and_the_first_are_listed_with_their_reason() {
        let mut converter = Converter::new("p1", Format::Mhealth);
        for index in 0..(MAX_LISTED_PROBLEMS + 5) {
            converter.add(Record::new(format!("line {index}"), Err(Problem::new("heart-rate of 900 is impossible"))));
        }
        assert_eq!(converter.summary.rejected, MAX_LISTED_PROBLEMS + 5);
        assert_eq!(converter.summary.problems.len(), MAX_LISTED_PROBLEMS);
        assert_eq!(
            converter.summary.problems[3],
            Refused { at: "line 3".into(), reason: "heart-rate of 900 is impossible".into() }
        );
        assert_eq!(converter.ready_len(), 0);
    }
}
