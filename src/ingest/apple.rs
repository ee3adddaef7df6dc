//! Apple Health exports: `export.xml`, alone or inside the `export.zip` the Health app makes.
//!
//! The XML is read as a stream of elements (real exports are gigabytes): each `Record` of a
//! vital sign becomes a reading; blood pressure comes as a `Correlation` holding a systolic and
//! a diastolic `Record`, and often also as the two records on their own, which are paired by
//! time and source (the pair then makes the same Observation as the correlation, written once).
//! Other records (steps, energy, workouts…) are skipped and counted.
//!
//! What the export does that a reader must undo:
//! - dates are local with an offset: `2024-01-01 08:01:00 +0100`;
//! - oxygen saturation is a fraction (`0.97`) although its unit says `%`;
//! - units follow the phone's locale (`lb`, `degF`, `ft`…);
//! - the measuring device is a description string: `<<HKDevice: 0x…>, name:Apple Watch,
//!   manufacturer:Apple Inc., model:Watch, hardware:Watch6,2, software:10.1>`.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Seek};

use quick_xml::XmlVersion;
use quick_xml::events::{BytesStart, Event};
use time::OffsetDateTime;
use time::format_description::BorrowedFormatItem;
use time::macros::format_description;

use super::observation::{Device, Measured, Reading, When};
use super::vitals::{Kind, Problem, check_pressure};
use super::{FormatError, Record};

/// The longest element (its start tag with its attributes) accepted, bytes: a record is a few
/// hundred bytes; a longer one means the file is not an export.
const MAX_TAG: usize = 64 * 1024;
/// Blood-pressure halves waiting for their other half at most (beyond it the oldest is
/// reported unpaired).
const MAX_UNPAIRED: usize = 10_000;

const APPLE_DATE: &[BorrowedFormatItem<'static>] =
    format_description!("[year]-[month]-[day] [hour]:[minute]:[second] [offset_hour sign:mandatory][offset_minute]");

/// Whether an archive member is an Apple Health `export.xml` (in whatever folder).
pub fn is_export_xml(name: &str) -> bool {
    name == "export.xml" || name.ends_with("/export.xml")
}

/// Reads an `export.zip`: its `export.xml` (whatever folder it is in), streamed out of the
/// archive.
pub fn read_zip(input: impl Read + Seek, emit: &mut dyn FnMut(Record)) -> Result<(), FormatError> {
    let mut archive = zip::ZipArchive::new(input)
        .map_err(|error| FormatError::new(format!("not a readable zip archive: {error}")))?;
    let index = (0..archive.len())
        .find(|&index| archive.name_for_index(index).is_some_and(is_export_xml))
        .ok_or_else(|| FormatError::new("the zip archive has no export.xml: is it an Apple Health export?"))?;
    let entry = super::archive::member(&mut archive, index)
        .map_err(|error| FormatError::new(format!("export.xml in the archive {error}")))?;
    read(std::io::BufReader::with_capacity(1 << 16, entry), emit)
}

/// Reads an `export.xml`, giving each vital-sign record (and each skipped or refused one) to
/// `emit`.
pub fn read(input: impl BufRead, emit: &mut dyn FnMut(Record)) -> Result<(), FormatError> {
    let mut reader = quick_xml::Reader::from_reader(TagBound { inner: input, since_close: 0, exceeded: false });
    let mut buffer = Vec::new();
    let mut seen_root = false;
    let mut line = 0usize;
    // Inside a blood-pressure correlation: its halves so far.
    let mut correlation: Option<Halves> = None;
    let mut unpaired = Unpaired::default();
    loop {
        buffer.clear();
        let event = match reader.read_event_into(&mut buffer) {
            Ok(event) => event,
            Err(error) if reader.get_ref().exceeded => {
                return Err(FormatError::new(format!("an element is longer than {MAX_TAG} bytes: {error}")));
            }
            Err(error) if !seen_root => return Err(FormatError::new(format!("not an Apple Health export: {error}"))),
            Err(error) => {
                // The rest cannot be read once the XML is broken (a truncated file ends so).
                emit(Record::new(
                    format!("record {}", line + 1),
                    Err(Problem::new(format!("malformed XML ({error}); the rest of the file is not read"))),
                ));
                break;
            }
        };
        match event {
            Event::Start(element) | Event::Empty(element) if element.name().as_ref() == b"HealthData" => {
                seen_root = true;
            }
            Event::Start(element) if element.name().as_ref() == b"Correlation" => {
                check_root(seen_root)?;
                line += 1;
                let attributes = attributes(&element);
                correlation = (attributes.get("type").map(String::as_str)
                    == Some("HKCorrelationTypeIdentifierBloodPressure"))
                .then(|| Halves::new(attributes, line));
                if correlation.is_none() {
                    emit(Record::new(format!("record {line}"), Err(Problem::skip(type_name(&element)))));
                }
            }
            Event::End(element) if element.name().as_ref() == b"Correlation" => {
                if let Some(halves) = correlation.take() {
                    emit(halves.pair());
                }
            }
            Event::Start(element) | Event::Empty(element) if element.name().as_ref() == b"Record" => {
                check_root(seen_root)?;
                line += 1;
                let attributes = attributes(&element);
                let at = format!("record {line}");
                let record_type = attributes.get("type").cloned();
                match (record_type.as_deref(), correlation.as_mut()) {
                    (Some(kind @ (SYSTOLIC | DIASTOLIC)), Some(halves)) => halves.take(kind, attributes),
                    (Some(kind @ (SYSTOLIC | DIASTOLIC)), None) => {
                        for record in unpaired.take(kind, attributes, line) {
                            emit(record);
                        }
                    }
                    _ => emit(Record::new(at, record(&attributes))),
                }
            }
            Event::Start(element) | Event::Empty(element) => {
                if !seen_root {
                    return Err(FormatError::new(format!(
                        "not an Apple Health export (it starts with <{}>, not <HealthData>)",
                        String::from_utf8_lossy(element.name().as_ref())
                    )));
                }
                if matches!(element.name().as_ref(), b"Workout" | b"ActivitySummary" | b"ClinicalRecord" | b"Audiogram")
                {
                    line += 1;
                    emit(Record::new(
                        format!("record {line}"),
                        Err(Problem::skip(String::from_utf8_lossy(element.name().as_ref()))),
                    ));
                }
            }
            Event::Eof => break,
            _ => {}
        }
    }
    if !seen_root {
        return Err(FormatError::new("not an Apple Health export (no <HealthData> element)"));
    }
    for record in unpaired.finish() {
        emit(record);
    }
    Ok(())
}

fn check_root(seen_root: bool) -> Result<(), FormatError> {
    if seen_root { Ok(()) } else { Err(FormatError::new("not an Apple Health export (no <HealthData> element)")) }
}

const SYSTOLIC: &str = "HKQuantityTypeIdentifierBloodPressureSystolic";
const DIASTOLIC: &str = "HKQuantityTypeIdentifierBloodPressureDiastolic";

/// An element's attributes, unescaped (unreadable ones left out).
fn attributes(element: &BytesStart<'_>) -> BTreeMap<String, String> {
    element
        .attributes()
        .flatten()
        .filter_map(|attribute| {
            let key = String::from_utf8_lossy(attribute.key.as_ref()).into_owned();
            let value = attribute.normalized_value(XmlVersion::Implicit1_0).ok()?.into_owned();
            Some((key, value))
        })
        .collect()
}

fn type_name(element: &BytesStart<'_>) -> String {
    attributes(element).remove("type").unwrap_or_else(|| String::from_utf8_lossy(element.name().as_ref()).into_owned())
}

/// The vital sign a record type is, if it is one.
fn kind_of(record_type: &str) -> Option<Kind> {
    Some(match record_type {
        "HKQuantityTypeIdentifierHeartRate" => Kind::HeartRate,
        "HKQuantityTypeIdentifierRestingHeartRate" => Kind::RestingHeartRate,
        "HKQuantityTypeIdentifierRespiratoryRate" => Kind::RespiratoryRate,
        "HKQuantityTypeIdentifierOxygenSaturation" => Kind::OxygenSaturation,
        "HKQuantityTypeIdentifierBodyTemperature" => Kind::BodyTemperature,
        "HKQuantityTypeIdentifierBodyMass" => Kind::BodyWeight,
        "HKQuantityTypeIdentifierHeight" => Kind::BodyHeight,
        "HKQuantityTypeIdentifierBodyMassIndex" => Kind::BodyMassIndex,
        _ => return None,
    })
}

/// One quantity record as a reading.
fn record(attributes: &BTreeMap<String, String>) -> Result<Reading, Problem> {
    let record_type = attributes.get("type").map(String::as_str).unwrap_or_default();
    let Some(kind) = kind_of(record_type) else { return Err(Problem::skip(record_type)) };
    let value = number(attributes)?;
    let unit = attributes.get("unit").map(String::as_str).unwrap_or_default();
    // Oxygen saturation is stored as a fraction of one, whatever the unit says.
    let value = if kind == Kind::OxygenSaturation && unit == "%" && value <= 1.0 {
        kind.canonical(value, "1")?
    } else {
        kind.canonical(value, unit)?
    };
    Ok(Reading {
        kind,
        measured: Measured::Value(value),
        when: when(attributes)?,
        device: device(attributes),
        quality: None,
    })
}

/// The record's `value`: a decimal number (a decimal comma is accepted).
fn number(attributes: &BTreeMap<String, String>) -> Result<f64, Problem> {
    let text = attributes.get("value").ok_or_else(|| Problem::new("the record has no value"))?;
    let parsed = text.trim().parse::<f64>().ok().or_else(|| text.trim().replacen(',', ".", 1).parse::<f64>().ok());
    parsed.filter(|value| value.is_finite()).ok_or_else(|| Problem::new(format!("value '{text}' is not a number")))
}

fn date(attributes: &BTreeMap<String, String>, name: &str) -> Result<OffsetDateTime, Problem> {
    let text = attributes.get(name).ok_or_else(|| Problem::new(format!("the record has no {name}")))?;
    OffsetDateTime::parse(text.trim(), APPLE_DATE)
        .map_err(|_| Problem::new(format!("{name} '{text}' is not a date like 2024-01-01 08:01:00 +0100")))
}

fn when(attributes: &BTreeMap<String, String>) -> Result<When, Problem> {
    let start = date(attributes, "startDate")?;
    let end = match attributes.get("endDate") {
        Some(_) => date(attributes, "endDate")?,
        None => start,
    };
    match end.cmp(&start) {
        std::cmp::Ordering::Equal => Ok(When::At(start)),
        std::cmp::Ordering::Greater => Ok(When::Between(start, end)),
        std::cmp::Ordering::Less => Err(Problem::new("the record ends before it starts")),
    }
}

/// The measuring device: from the `device` description when there is one, else the source app
/// or device the record names.
fn device(attributes: &BTreeMap<String, String>) -> Option<Device> {
    if let Some(description) = attributes.get("device") {
        let mut device = Device::default();
        let inner = description.trim().trim_start_matches('<').trim_end_matches('>');
        for part in inner.split(", ") {
            let Some((key, value)) = part.split_once(':') else { continue };
            let value = value.trim().trim_end_matches('>').to_owned();
            match key.trim() {
                "name" => device.name = value,
                "manufacturer" => device.manufacturer = Some(value),
                "model" => device.model = Some(value),
                "software" => device.version = Some(value),
                _ => {}
            }
        }
        if !device.name.is_empty() {
            return Some(device);
        }
    }
    let name = attributes.get("sourceName")?.trim();
    (!name.is_empty()).then(|| Device {
        name: name.to_owned(),
        version: attributes.get("sourceVersion").cloned(),
        ..Device::default()
    })
}

/// A blood pressure's two records, as they arrive.
struct Halves {
    line: usize,
    correlation: BTreeMap<String, String>,
    systolic: Option<BTreeMap<String, String>>,
    diastolic: Option<BTreeMap<String, String>>,
}

impl Halves {
    fn new(correlation: BTreeMap<String, String>, line: usize) -> Halves {
        Halves { line, correlation, systolic: None, diastolic: None }
    }

    fn take(&mut self, kind: &str, attributes: BTreeMap<String, String>) {
        if kind == SYSTOLIC {
            self.systolic = Some(attributes);
        } else {
            self.diastolic = Some(attributes);
        }
    }

    /// The blood-pressure reading of the pair: time and device from its systolic record (as for
    /// a pair found on its own, so that both make the same Observation), the device from the
    /// correlation when the record names none.
    fn pair(self) -> Record {
        let at = format!("record {}", self.line);
        let (Some(systolic), Some(diastolic)) = (&self.systolic, &self.diastolic) else {
            return Record::new(
                at,
                Err(Problem::new("a blood pressure without both its systolic and diastolic values")),
            );
        };
        let reading = (|| {
            let pressure = |attributes: &BTreeMap<String, String>| {
                let unit = attributes.get("unit").map(String::as_str).unwrap_or("mmHg");
                Kind::BloodPressure.canonical(number(attributes)?, unit)
            };
            let (systolic_value, diastolic_value) = (pressure(systolic)?, pressure(diastolic)?);
            check_pressure(systolic_value, diastolic_value)?;
            Ok(Reading {
                kind: Kind::BloodPressure,
                measured: Measured::Pressure { systolic: systolic_value, diastolic: diastolic_value },
                when: when(systolic)?,
                device: device(systolic).or_else(|| device(&self.correlation)),
                quality: None,
            })
        })();
        Record::new(at, reading)
    }
}

/// Systolic and diastolic records found outside a correlation, waiting for their other half:
/// by (start date, source).
#[derive(Default)]
struct Unpaired {
    waiting: BTreeMap<(String, String), Halves>,
    /// The order they arrived in, to report the oldest when too many wait.
    order: std::collections::VecDeque<(String, String)>,
}

impl Unpaired {
    fn take(&mut self, kind: &str, attributes: BTreeMap<String, String>, line: usize) -> Vec<Record> {
        let key = (
            attributes.get("startDate").cloned().unwrap_or_default(),
            attributes.get("sourceName").cloned().unwrap_or_default(),
        );
        let mut out = Vec::new();
        let halves = self.waiting.entry(key.clone()).or_insert_with(|| {
            self.order.push_back(key.clone());
            Halves::new(BTreeMap::new(), line)
        });
        halves.take(kind, attributes);
        if halves.systolic.is_some() && halves.diastolic.is_some() {
            if let Some(halves) = self.waiting.remove(&key) {
                out.push(halves.pair());
            }
        } else if self.waiting.len() > MAX_UNPAIRED {
            while let Some(oldest) = self.order.pop_front() {
                if let Some(halves) = self.waiting.remove(&oldest) {
                    out.push(halves.pair());
                    break;
                }
            }
        }
        out
    }

    fn finish(self) -> Vec<Record> {
        self.waiting.into_values().map(Halves::pair).collect()
    }
}

/// Fails the reading when more than [`MAX_TAG`] bytes pass without a `>`: bounds what the XML
/// reader buffers for one element.
struct TagBound<R> {
    inner: R,
    since_close: usize,
    exceeded: bool,
}

impl<R: BufRead> Read for TagBound<R> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        let available = self.fill_buf()?;
        let count = available.len().min(out.len());
        out[..count].copy_from_slice(&available[..count]);
        self.consume(count);
        Ok(count)
    }
}

impl<R: BufRead> BufRead for TagBound<R> {
    fn fill_buf(&mut self) -> std::io::Result<&[u8]> {
        if self.exceeded {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "element too long"));
        }
        self.inner.fill_buf()
    }

    fn consume(&mut self, amount: usize) {
        if let Ok(buffer) = self.inner.fill_buf() {
            let consumed = &buffer[..amount.min(buffer.len())];
            match consumed.iter().rposition(|&byte| byte == b'>') {
                Some(at) => self.since_close = consumed.len() - at - 1,
                None => self.since_close += consumed.len(),
            }
            if self.since_close > MAX_TAG {
                self.exceeded = true;
            }
        }
        self.inner.consume(amount);
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    const HEADER: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE HealthData [\n<!ELEMENT HealthData (ExportDate,Me,(Record|Correlation|Workout)*)>\n<!ATTLIST HealthData locale CDATA #REQUIRED>\n]>\n<HealthData locale=\"en_US\">\n <ExportDate value=\"2024-01-05 10:00:00 +0100\"/>\n <Me HKCharacteristicTypeIdentifierBiologicalSex=\"HKBiologicalSexFemale\"/>\n";
    const WATCH: &str = "&lt;&lt;HKDevice: 0x283f5a3a0&gt;, name:Apple Watch, manufacturer:Apple Inc., model:Watch, hardware:Watch6,2, software:10.1&gt;";

    fn record(kind: &str, unit: &str, value: &str, start: &str, end: &str) -> String {
        format!(
            " <Record type=\"{kind}\" sourceName=\"Jane’s Apple Watch\" sourceVersion=\"10.1\" device=\"{WATCH}\" unit=\"{unit}\" creationDate=\"{end}\" startDate=\"{start}\" endDate=\"{end}\" value=\"{value}\">\n  <MetadataEntry key=\"HKMetadataKeyHeartRateMotionContext\" value=\"0\"/>\n </Record>\n"
        )
    }

    fn all(text: &str) -> Result<Vec<Record>, FormatError> {
        let mut records = Vec::new();
        read(text.as_bytes(), &mut |record| records.push(record))?;
        Ok(records)
    }

    fn readings(records: &[Record]) -> Vec<&Reading> {
        records.iter().filter_map(|record| record.outcome.as_ref().ok()).collect()
    }

    #[test]
    fn vital_sign_records_become_readings_in_canonical_units_with_their_device() {
        let at = "2024-01-01 08:01:00 +0100";
        let text = format!(
            "{HEADER}{}{}{}{}{}{}{}</HealthData>\n",
            record("HKQuantityTypeIdentifierHeartRate", "count/min", "72", at, at),
            record("HKQuantityTypeIdentifierOxygenSaturation", "%", "0.97", at, at),
            record("HKQuantityTypeIdentifierBodyMass", "lb", "154", at, at),
            record("HKQuantityTypeIdentifierBodyTemperature", "degF", "98.6", at, at),
            record("HKQuantityTypeIdentifierHeight", "ft", "5.75", at, at),
            record(
                "HKQuantityTypeIdentifierRestingHeartRate",
                "count/min",
                "58",
                "2024-01-01 00:00:00 +0100",
                "2024-01-01 23:59:59 +0100"
            ),
            record("HKQuantityTypeIdentifierStepCount", "count", "1200", at, at),
        );
        let records = all(&text).unwrap();
        let readings = readings(&records);
        assert_eq!(readings.len(), 6);
        assert_eq!(readings[0].measured, Measured::Value(72.0));
        assert_eq!(readings[0].when, When::At(datetime!(2024-01-01 08:01:00 +01:00)));
        let device = readings[0].device.as_ref().unwrap();
        assert_eq!(
            (device.name.as_str(), device.manufacturer.as_deref(), device.model.as_deref(), device.version.as_deref()),
            ("Apple Watch", Some("Apple Inc."), Some("Watch"), Some("10.1"))
        );
        assert_eq!(readings[1].measured, Measured::Value(97.0), "SpO2 from a fraction");
        assert_eq!(readings[2].measured, Measured::Value(69.85));
        assert_eq!(readings[3].measured, Measured::Value(37.0));
        assert_eq!(readings[4].measured, Measured::Value(175.3));
        assert_eq!(readings[5].kind, Kind::RestingHeartRate);
        assert!(matches!(readings[5].when, When::Between(_, _)));
        let skipped = records[6].outcome.as_ref().unwrap_err();
        assert!(skipped.skipped && skipped.reason == "HKQuantityTypeIdentifierStepCount");
    }

    #[test]
    fn blood_pressure_comes_as_a_correlation_and_again_as_two_records_and_makes_one_reading() {
        let at = "2024-02-03 07:30:00 -0500";
        let text = format!(
            "{HEADER} <Correlation type=\"HKCorrelationTypeIdentifierBloodPressure\" sourceName=\"Withings\" creationDate=\"{at}\" startDate=\"{at}\" endDate=\"{at}\">\n  <MetadataEntry key=\"x\" value=\"y\"/>\n{}{} </Correlation>\n{}{}{}</HealthData>",
            record(SYSTOLIC, "mmHg", "121", at, at),
            record(DIASTOLIC, "mmHg", "79", at, at),
            record(SYSTOLIC, "mmHg", "121", at, at),
            record(DIASTOLIC, "mmHg", "79", at, at),
            record(SYSTOLIC, "mmHg", "135", "2024-02-04 07:30:00 -0500", "2024-02-04 07:30:00 -0500"),
        );
        let records = all(&text).unwrap();
        let readings = readings(&records);
        assert_eq!(readings.len(), 2, "{records:?}");
        assert_eq!(readings[0].measured, Measured::Pressure { systolic: 121.0, diastolic: 79.0 });
        assert_eq!(readings[0].measured, readings[1].measured);
        assert_eq!(readings[0].when, readings[1].when);
        assert_eq!(readings[0].when, When::At(datetime!(2024-02-03 07:30:00 -05:00)));
        // The same reading twice: the same Observation id, so it is written once.
        let id =
            |reading: &Reading| super::super::observation::observation_id("p", super::super::Format::Apple, reading);
        assert_eq!(id(readings[0]), id(readings[1]));
        let unpaired = records.iter().find_map(|record| record.outcome.as_ref().err()).unwrap();
        assert!(unpaired.reason.contains("without both"), "{unpaired:?}");
    }

    #[test]
    fn bad_records_are_refused_one_by_one_and_the_rest_is_read() {
        let at = "2024-01-01 08:01:00 +0100";
        let text = format!(
            "{HEADER}{}{}{}{}{}</HealthData>",
            record("HKQuantityTypeIdentifierHeartRate", "count/min", "900", at, at),
            record("HKQuantityTypeIdentifierHeartRate", "count/min", "fast", at, at),
            record("HKQuantityTypeIdentifierHeartRate", "count/min", "70", "2024-01-01T08:01:00Z", at),
            record("HKQuantityTypeIdentifierBodyMass", "mmHg", "70", at, at),
            record("HKQuantityTypeIdentifierHeartRate", "count/min", "71,5", at, at),
        );
        let records = all(&text).unwrap();
        let reasons: Vec<String> = records
            .iter()
            .map(|record| record.outcome.as_ref().map_or_else(|problem| problem.reason.clone(), |_| "ok".into()))
            .collect();
        assert!(reasons[0].contains("900 beats/minute is impossible"), "{reasons:?}");
        assert!(reasons[1].contains("'fast' is not a number"), "{reasons:?}");
        assert!(reasons[2].contains("is not a date like"), "{reasons:?}");
        assert!(reasons[3].contains("not a unit of body-weight"), "{reasons:?}");
        assert_eq!(reasons[4], "ok", "a decimal comma");
    }

    #[test]
    fn a_truncated_export_keeps_what_came_before_and_other_files_are_named() {
        let at = "2024-01-01 08:01:00 +0100";
        let whole = format!("{HEADER}{}", record("HKQuantityTypeIdentifierHeartRate", "count/min", "72", at, at));
        let cut = format!("{whole} <Record type=\"HKQuantityTypeIdentifierHeartRate\" value=\"7");
        let records = all(&cut).unwrap();
        assert!(records[0].outcome.is_ok());
        assert!(records.last().unwrap().outcome.as_ref().unwrap_err().reason.contains("malformed XML"), "{records:?}");
        assert!(all("{\"body\": 1}").is_err());
        assert!(
            all("<?xml version=\"1.0\"?><ClinicalDocument/>")
                .unwrap_err()
                .message
                .contains("not an Apple Health export")
        );
        // Read in chunks, as from a file: an element longer than the bound fails the read.
        let long = format!("{HEADER} <Record type=\"{}\"/></HealthData>", "x".repeat(2 * MAX_TAG));
        let error = read(std::io::BufReader::with_capacity(4096, long.as_bytes()), &mut |_| {}).unwrap_err();
        assert!(error.message.contains("longer than"), "the element is bounded: {}", &error.message[..80]);
    }

    #[test]
    fn an_export_zip_is_read_from_its_export_xml() {
        use std::io::Write;
        let at = "2024-01-01 08:01:00 +0100";
        let xml = format!(
            "{HEADER}{}</HealthData>",
            record("HKQuantityTypeIdentifierRespiratoryRate", "count/min", "15", at, at)
        );
        let mut archive = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        archive.start_file("apple_health_export/export_cda.xml", options).unwrap();
        archive.write_all(b"<ClinicalDocument/>").unwrap();
        archive.start_file("apple_health_export/export.xml", options).unwrap();
        archive.write_all(xml.as_bytes()).unwrap();
        let bytes = archive.finish().unwrap().into_inner();
        let mut records = Vec::new();
        read_zip(std::io::Cursor::new(bytes), &mut |record| records.push(record)).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].outcome.as_ref().unwrap().kind, Kind::RespiratoryRate);
        let mut empty = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        empty.start_file("notes.txt", options).unwrap();
        let bytes = empty.finish().unwrap().into_inner();
        let error = read_zip(std::io::Cursor::new(bytes), &mut |_| {}).unwrap_err();
        assert!(error.message.contains("no export.xml"));
    }
}
