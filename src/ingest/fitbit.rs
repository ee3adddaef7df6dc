//! Fitbit exports: the account archive and Google Takeout's `Fitbit` folder, as a zip, as the
//! unpacked folder, or one file of it.
//!
//! What Braid reads, by content (file names only sort the files of an archive or folder):
//! - heart rate, `heart_rate-*.json`: `{"dateTime": "01/15/24 08:00:05", "value": {"bpm": 72,
//!   "confidence": 2}}`, a sample every few seconds (merged per minute by the converter);
//!   samples of confidence 0 or less (the sensor could not tell) are refused;
//! - resting heart rate, `resting_heart_rate-*.json`: `{"dateTime": …, "value": {"date":
//!   "01/15/24", "value": 61.2, "error": 6.8}}`, one per day (a day without one has 0);
//! - weight, `weight-*.json`: `{"logId": …, "weight": 165.3, "bmi": 24.1, "date": "01/15/24",
//!   "time": "07:12:30", "source": "Aria"}`, and its BMI;
//! - SpO2: `Minute SpO2 - *.csv` (`timestamp,value`) and `Daily SpO2 - *.csv`
//!   (`timestamp,average_value,lower_bound,upper_bound`);
//! - respiratory rate: `Daily Respiratory Rate Summary - *.csv` (`timestamp,
//!   daily_respiratory_rate`) and `Respiratory Rate Summary - *.csv` (`timestamp,
//!   full_sleep_breathing_rate,…`).
//!
//! Times are the wearer's local times without an offset. They are placed in the time zone of
//! the export's `Profile.csv` (`timezone`), or the one given to the import, else UTC; the
//! summary says which. A weight is written in the account's unit, which the file does not
//! name: the unit is the one that makes the recorded BMI agree with a human height (the
//! profile's height when it has one), else the profile's `weight_unit`; a weight whose unit
//! cannot be told is refused rather than guessed.

use std::io::{BufRead, BufReader, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;
use time::{OffsetDateTime, UtcOffset};

use super::archive;
use super::items;
use super::observation::{Device, Measured, Reading, When};
use super::run::{Counting, Meter};
use super::vitals::{Kind, Problem};
use super::{FormatError, Record};

/// Most files of a folder looked at (its whole tree, this deep at most).
const MAX_FILES: usize = 200_000;
const MAX_DEPTH: usize = 8;
/// Longest CSV line.
const MAX_LINE: usize = 64 * 1024;

/// Where local times are placed, and what the account's profile says of units.
#[derive(Debug, Clone)]
pub struct Settings {
    zone: jiff::tz::TimeZone,
    /// How the zone was chosen, for the summary ("Europe/Berlin, from Profile.csv").
    pub zone_note: String,
    /// Set by the import: a `Profile.csv` does not replace it.
    zone_given: bool,
    /// The profile's weight unit ("kg" or "lb").
    weight_unit: Option<&'static str>,
    /// The profile's height, in metres.
    height: Option<f64>,
    /// The instant of the last local time read (Unix seconds): a time that clocks show twice
    /// when they go back is read in the later pass once the earlier pass is over.
    last_instant: std::cell::Cell<Option<i64>>,
}

impl Settings {
    /// Settings with `zone` (an IANA name such as `Europe/Berlin`), or UTC until a profile
    /// names one.
    pub fn new(zone: Option<&str>) -> Result<Settings, FormatError> {
        let (tz, note, given) = match zone {
            Some(name) => (time_zone(name)?, format!("{name}, as given"), true),
            None => (
                jiff::tz::TimeZone::UTC,
                "UTC: no time zone was given and the input has no Profile.csv naming one".to_owned(),
                false,
            ),
        };
        Ok(Settings {
            zone: tz,
            zone_note: note,
            zone_given: given,
            weight_unit: None,
            height: None,
            last_instant: std::cell::Cell::new(None),
        })
    }

    /// Takes what a `Profile.csv` says: its time zone (unless one was given), weight unit and
    /// height.
    pub fn read_profile(&mut self, mut input: impl BufRead) -> Result<(), FormatError> {
        items::skip_byte_order_mark(&mut input).map_err(FormatError::io)?;
        let mut lines = CsvLines::new(input);
        let header = lines.next_record()?.ok_or_else(|| FormatError::new("Profile.csv is empty"))?;
        let row = lines.next_record()?.ok_or_else(|| FormatError::new("Profile.csv has no row"))?;
        let field = |name: &str| {
            header
                .iter()
                .position(|column| column.trim().eq_ignore_ascii_case(name))
                .and_then(|index| row.get(index))
                .map(|value| value.trim())
                .filter(|value| !value.is_empty() && *value != "null")
        };
        if !self.zone_given
            && let Some(name) = field("timezone")
        {
            self.zone = time_zone(name).map_err(|error| FormatError::new(format!("Profile.csv: {error}")))?;
            self.zone_note = format!("{name}, from Profile.csv");
        }
        self.weight_unit = field("weight_unit").and_then(|unit| match unit.to_ascii_uppercase().as_str() {
            "METRIC" | "KG" | "KILOGRAM" => Some("kg"),
            "POUND" | "US" | "EN_US" | "LB" => Some("lb"),
            _ => None,
        });
        let height_unit = match field("height_unit").map(str::to_ascii_uppercase).as_deref() {
            Some("METRIC") | Some("CM") | None => Some("cm"),
            Some("US") | Some("INCH") | Some("IN") => Some("in"),
            _ => None,
        };
        // In the units vitals knows (centimetres), within a person's heights.
        self.height = field("height")
            .and_then(|height| height.parse::<f64>().ok())
            .zip(height_unit)
            .and_then(|(height, unit)| Kind::BodyHeight.canonical(height, unit).ok())
            .map(|centimetres| centimetres / 100.0)
            .filter(|metres| (0.5..2.6).contains(metres));
        Ok(())
    }

    /// A local time as an instant, with the offset it had there. A time that a clock change
    /// skips is taken as clocks read it before the change (jiff's "compatible"). A time that
    /// clocks show twice (when they go back) is read in the first pass, unless the last time
    /// read was already past it by half the change or more: exports run in time order, so the
    /// second pass over that hour comes after the first.
    fn local(&self, time: jiff::civil::DateTime) -> Result<OffsetDateTime, Problem> {
        let out_of_range = |error: jiff::Error| Problem::new(format!("{time}: {error}"));
        let ambiguous = self.zone.to_ambiguous_zoned(time);
        let zoned = match (ambiguous.is_ambiguous(), self.last_instant.get()) {
            (true, Some(last)) => {
                let earlier = ambiguous.clone().earlier().map_err(out_of_range)?;
                let later = ambiguous.later().map_err(out_of_range)?;
                let (first, second) = (earlier.timestamp().as_second(), later.timestamp().as_second());
                if last - first >= (second - first) / 2 { later } else { earlier }
            }
            _ => ambiguous.compatible().map_err(out_of_range)?,
        };
        self.last_instant.set(Some(zoned.timestamp().as_second()));
        let offset = UtcOffset::from_whole_seconds(zoned.offset().seconds())
            .map_err(|_| Problem::new(format!("{time}: offset out of range")))?;
        let timestamp = zoned.timestamp();
        OffsetDateTime::from_unix_timestamp(timestamp.as_second())
            .map(|at| at.to_offset(offset))
            .map_err(|_| Problem::new(format!("{time} is out of range")))
    }

    /// The local calendar day of `date`, as a period.
    fn day(&self, date: jiff::civil::Date) -> Result<When, Problem> {
        let start = self.local(date.to_datetime(jiff::civil::Time::midnight()))?;
        let next = date.tomorrow().map_err(|_| Problem::new(format!("{date} is out of range")))?;
        let end = self.local(next.to_datetime(jiff::civil::Time::midnight()))?;
        Ok(When::Between(start, end))
    }

    /// The unit of the weight `value`: the one that agrees with the recorded `bmi` (and the
    /// profile's height), else the profile's unit.
    fn weight_unit(&self, value: f64, bmi: Option<f64>) -> Result<&'static str, Problem> {
        let units = ["kg", "lb"];
        if let Some(bmi) = bmi.filter(|bmi| *bmi > 5.0 && *bmi < 200.0) {
            // The height each unit implies: kg / bmi = m² (the conversion is vitals' own).
            let kilograms = |unit: &str| Kind::BodyWeight.canonical(value, unit).unwrap_or(f64::NAN);
            let heights = units.map(|unit| (kilograms(unit) / bmi).sqrt());
            let chosen = match self.height {
                Some(height) => {
                    let off = heights.map(|implied| (implied - height).abs() / height);
                    let best = if off[0] <= off[1] { 0 } else { 1 };
                    (off[best] < 0.1).then_some(best)
                }
                None => {
                    let human = heights.map(|implied| (1.2..=2.3).contains(&implied));
                    match human {
                        [true, false] => Some(0),
                        [false, true] => Some(1),
                        [true, true] => {
                            self.weight_unit.and_then(|profile| units.iter().position(|unit| *unit == profile))
                        }
                        [false, false] => None,
                    }
                }
            };
            if let Some(index) = chosen {
                return Ok(units[index]);
            }
        }
        match self.weight_unit {
            Some(unit) => Ok(unit),
            None => Err(Problem::new(
                "the weight's unit cannot be told: Fitbit writes it in the account's unit, which this record's \
                 BMI does not settle; import the whole export (with Profile.csv) or give the record's bmi",
            )),
        }
    }
}

/// A time zone by its IANA name, from the tz database built into Braid.
pub(super) fn time_zone(name: &str) -> Result<jiff::tz::TimeZone, FormatError> {
    jiff::tz::TimeZone::get(name).map_err(|_| {
        FormatError::new(format!("'{name}' is not a time zone Braid knows (an IANA name such as Europe/Berlin)"))
    })
}

/// Reads one file of an export (`name` sorts it when known; its content decides).
pub fn read(
    mut input: impl BufRead,
    name: Option<&str>,
    settings: &Settings,
    emit: &mut dyn FnMut(Record),
) -> Result<(), FormatError> {
    // Each file is in time order of its own; files are read in name order, which is not time
    // order (a month of weights sorts before a day of heart rate): the pass over an hour that
    // clocks show twice is judged from this file's earlier times only.
    settings.last_instant.set(None);
    items::skip_byte_order_mark(&mut input).map_err(FormatError::io)?;
    let head = input.fill_buf().map_err(FormatError::io)?;
    let first = head.iter().find(|byte| !byte.is_ascii_whitespace()).copied();
    let label = name.unwrap_or("the file");
    match first {
        None => Err(FormatError::new(format!("{label} is empty"))),
        Some(b'[') | Some(b'{') => read_json(input, label, settings, emit),
        Some(_) => read_csv(input, name, label, settings, emit),
    }
}

/// What a file of an archive or folder is, by its name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    Profile,
    Data,
    /// An export file of a kind that is not a vital sign (steps, sleep, calories…).
    Other(String),
    /// Not an export data file (a README, a picture): not counted.
    Ignored,
}

fn role(path: &str) -> Role {
    let base = path.rsplit(['/', '\\']).next().unwrap_or(path);
    let lower = base.to_ascii_lowercase();
    if lower == "profile.csv" {
        return Role::Profile;
    }
    let json = lower.ends_with(".json");
    let csv = lower.ends_with(".csv");
    if !json && !csv {
        return Role::Ignored;
    }
    let vital = (json
        && (lower.starts_with("heart_rate-")
            || lower.starts_with("resting_heart_rate-")
            || lower.starts_with("weight-")))
        || (csv && (lower.contains("spo2") || lower.contains("respiratory rate")));
    if vital {
        return Role::Data;
    }
    // The family: the name before its date ("steps-2024-01-01.json", "Sleep Score - …").
    let family =
        base.split(|c: char| c.is_ascii_digit()).next().unwrap_or(base).trim_end_matches([' ', '-', '_']).trim();
    Role::Other(format!("{} ({})", if family.is_empty() { base } else { family }, if json { "JSON" } else { "CSV" }))
}

/// The files of an export, however it is stored (a zip archive, a folder).
trait Export {
    /// Each file's name (its path inside the export) and what it is, in reading order.
    fn files(&self) -> Vec<(String, Role)>;
    /// File `index` of [`Export::files`], to read.
    fn open(&mut self, index: usize) -> Result<Box<dyn BufRead + '_>, FormatError>;
}

/// Reads an export: its profile first (wherever it is), then each vital-sign file (one that
/// cannot be opened is one refused record), each other export file counted as skipped.
fn read_export(
    export: &mut dyn Export,
    settings: &mut Settings,
    emit: &mut dyn FnMut(Record),
) -> Result<(), FormatError> {
    let files = export.files();
    if let Some(index) = files.iter().position(|(_, role)| *role == Role::Profile) {
        let profile = export.open(index).map_err(|error| FormatError::new(format!("{} {error}", files[index].0)))?;
        settings.read_profile(profile)?;
    }
    for (index, (name, role)) in files.iter().enumerate() {
        match role {
            Role::Data => match export.open(index) {
                Ok(input) => read_member(input, name, settings, emit),
                Err(error) => emit(Record::new(name.clone(), Err(Problem::new(error.message)))),
            },
            Role::Other(family) => emit(Record::new(name.clone(), Err(Problem::skip(family.clone())))),
            Role::Profile | Role::Ignored => {}
        }
    }
    Ok(())
}

/// Whether files hold something Braid reads.
fn holds_vital_signs(roles: impl IntoIterator<Item = impl std::borrow::Borrow<Role>>) -> bool {
    roles.into_iter().any(|role| matches!(role.borrow(), Role::Data | Role::Profile))
}

/// A zip archive's members as an export.
struct Zip<R> {
    archive: zip::ZipArchive<R>,
    files: Vec<(String, Role)>,
}

impl<R: Read + Seek> Export for Zip<R> {
    fn files(&self) -> Vec<(String, Role)> {
        self.files.clone()
    }

    fn open(&mut self, index: usize) -> Result<Box<dyn BufRead + '_>, FormatError> {
        let member = archive::member(&mut self.archive, index)?;
        Ok(Box::new(BufReader::with_capacity(1 << 16, member)))
    }
}

/// Reads a zip archive of an export (the account archive, or Takeout's).
pub fn read_zip(
    input: impl Read + Seek,
    settings: &mut Settings,
    emit: &mut dyn FnMut(Record),
) -> Result<(), FormatError> {
    let archive = zip::ZipArchive::new(input)
        .map_err(|error| FormatError::new(format!("not a readable zip archive: {error}")))?;
    let names: Vec<String> = archive.file_names().map(str::to_owned).collect();
    if names.iter().any(|name| super::apple::is_export_xml(name)) {
        return Err(FormatError::new(
            "this zip archive holds an Apple Health export.xml, not a Fitbit export (format 'apple')",
        ));
    }
    // Indices into the archive are the members' own: `file_names` lists them in that order.
    let files: Vec<(String, Role)> = names.into_iter().map(|name| (name.clone(), role(&name))).collect();
    if !holds_vital_signs(files.iter().map(|(_, role)| role)) {
        return Err(FormatError::new(
            "the zip archive holds no Fitbit heart-rate, weight, SpO2 or respiratory-rate files: is it a Fitbit export?",
        ));
    }
    read_export(&mut Zip { archive, files }, settings, emit)
}

/// An unpacked export: the files under a folder (at most [`MAX_FILES`], [`MAX_DEPTH`] deep)
/// and what each is.
pub struct Folder {
    root: PathBuf,
    files: Vec<(PathBuf, Role)>,
    /// The size of the files read (for progress).
    pub data_bytes: u64,
}

impl Folder {
    /// Lists the export under `root`; fails when it holds nothing Braid reads.
    pub fn open(root: &Path) -> Result<Folder, FormatError> {
        let mut files = Vec::new();
        let mut folders = vec![(root.to_path_buf(), 0)];
        while let Some((folder, depth)) = folders.pop() {
            let entries = std::fs::read_dir(&folder)
                .map_err(|error| FormatError::new(format!("{}: {error}", folder.display())))?;
            for entry in entries {
                let entry = entry.map_err(FormatError::io)?;
                let kind = entry.file_type().map_err(FormatError::io)?;
                if kind.is_dir() && depth < MAX_DEPTH {
                    folders.push((entry.path(), depth + 1));
                } else if kind.is_file() {
                    if files.len() == MAX_FILES {
                        return Err(FormatError::new(format!(
                            "{} holds more than {MAX_FILES} files: point at the export's Fitbit folder",
                            root.display()
                        )));
                    }
                    let path = entry.path();
                    let role = role(&path.strip_prefix(root).unwrap_or(&path).display().to_string());
                    files.push((path, role));
                }
            }
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        if !holds_vital_signs(files.iter().map(|(_, role)| role)) {
            return Err(FormatError::new(format!(
                "{} holds no Fitbit heart-rate, weight, SpO2 or respiratory-rate files",
                root.display()
            )));
        }
        let data_bytes = files
            .iter()
            .filter(|(_, role)| *role == Role::Data)
            .filter_map(|(path, _)| std::fs::metadata(path).ok())
            .map(|metadata| metadata.len())
            .sum();
        Ok(Folder { root: root.to_path_buf(), files, data_bytes })
    }

    /// Reads the export, the profile first; `meter` counts the bytes read.
    pub fn read(
        &self,
        settings: &mut Settings,
        meter: &Arc<Meter>,
        emit: &mut dyn FnMut(Record),
    ) -> Result<(), FormatError> {
        read_export(&mut Files { folder: self, meter }, settings, emit)
    }
}

/// A folder's files as an export, read through the import's meter.
struct Files<'f> {
    folder: &'f Folder,
    meter: &'f Arc<Meter>,
}

impl Export for Files<'_> {
    fn files(&self) -> Vec<(String, Role)> {
        let root = &self.folder.root;
        let relative = |path: &Path| path.strip_prefix(root).unwrap_or(path).display().to_string();
        self.folder.files.iter().map(|(path, role)| (relative(path), role.clone())).collect()
    }

    fn open(&mut self, index: usize) -> Result<Box<dyn BufRead + '_>, FormatError> {
        let (path, role) = &self.folder.files[index];
        let file = std::fs::File::open(path).map_err(|error| FormatError::new(format!("cannot be read: {error}")))?;
        // Progress counts the vital-sign files ([`Folder::data_bytes`]), not the profile.
        Ok(match role {
            Role::Data => Box::new(BufReader::with_capacity(1 << 16, Counting::new(file, self.meter.clone()))),
            _ => Box::new(BufReader::new(file)),
        })
    }
}

/// One file of an archive or folder: a file that cannot be read at all is one refused record,
/// and the others are still read.
fn read_member(input: impl BufRead, name: &str, settings: &Settings, emit: &mut dyn FnMut(Record)) {
    if let Err(error) = read(input, Some(name), settings, emit) {
        emit(Record::new(name.to_owned(), Err(Problem::new(error.message))));
    }
}

fn read_json(
    input: impl BufRead,
    label: &str,
    settings: &Settings,
    emit: &mut dyn FnMut(Record),
) -> Result<(), FormatError> {
    let end = items::read(input, &mut |index, item| {
        let at = format!("{label}, record {index}");
        for outcome in json_record(&item, settings) {
            emit(Record::new(at.clone(), outcome));
        }
    })
    .map_err(|error| FormatError::new(format!("{label} is not Fitbit JSON: {error}")))?;
    if let Some(record) = end.broken_record(|index| format!("{label}, record {index}")) {
        emit(record);
    }
    Ok(())
}

/// The readings of one JSON record (a weight brings its BMI), or why there are none.
fn json_record(item: &Value, settings: &Settings) -> Vec<Result<Reading, Problem>> {
    let one = |outcome| vec![outcome];
    let Some(record) = item.as_object() else { return one(Err(Problem::new("a record must be a JSON object"))) };
    let value = record.get("value");
    if let Some(sample) = value.filter(|value| value.get("bpm").is_some()) {
        return one(heart_rate(record.get("dateTime"), sample, settings));
    }
    if let Some(day) = value.filter(|value| value.get("value").is_some() || value.get("error").is_some()) {
        return one(resting_heart_rate(record.get("dateTime"), day, settings));
    }
    if record.contains_key("weight") {
        return weight(record, settings);
    }
    if record.contains_key("dateTime") && value.is_some_and(|value| !value.is_object()) {
        return one(Err(Problem::skip("Fitbit time series that is not a vital sign")));
    }
    one(Err(Problem::new("not a Fitbit heart-rate, resting heart-rate or weight record")))
}

fn tracker() -> Option<Device> {
    Some(Device { name: "Fitbit tracker".into(), manufacturer: Some("Fitbit".into()), ..Device::default() })
}

fn heart_rate(at: Option<&Value>, sample: &Value, settings: &Settings) -> Result<Reading, Problem> {
    let when = settings.local(us_date_time(at, "dateTime")?)?;
    let bpm = number(&sample["bpm"], "value.bpm")?;
    if let Some(confidence) =
        sample.get("confidence").and_then(|value| value.as_f64().or_else(|| value.as_str()?.trim().parse().ok()))
        && confidence <= 0.0
    {
        return Err(Problem::new(format!(
            "heart-rate sample of confidence {confidence}: the sensor could not tell (Fitbit rates 1 to 3)"
        )));
    }
    let value = Kind::HeartRate.canonical(bpm, "/min")?;
    Ok(Reading {
        kind: Kind::HeartRate,
        measured: Measured::Value(value),
        when: When::At(when),
        device: tracker(),
        quality: None,
    })
}

fn resting_heart_rate(at: Option<&Value>, day: &Value, settings: &Settings) -> Result<Reading, Problem> {
    let date = match day.get("date").and_then(Value::as_str) {
        Some(text) => us_date(text)?,
        None => us_date_time(at, "dateTime")?.date(),
    };
    let rate = day.get("value").and_then(Value::as_f64).unwrap_or(0.0);
    if rate == 0.0 {
        // Fitbit writes a day it could not measure as 0 (or null).
        return Err(Problem::skip("day without a resting heart rate"));
    }
    let value = Kind::RestingHeartRate.canonical(rate, "/min")?;
    Ok(Reading {
        kind: Kind::RestingHeartRate,
        measured: Measured::Value(value),
        when: settings.day(date)?,
        device: tracker(),
        quality: None,
    })
}

fn weight(record: &serde_json::Map<String, Value>, settings: &Settings) -> Vec<Result<Reading, Problem>> {
    let when = (|| {
        let date = record.get("date").and_then(Value::as_str).ok_or_else(|| Problem::new("'date' is missing"))?;
        let time = record.get("time").and_then(Value::as_str).unwrap_or("00:00:00");
        settings.local(us_date(date)?.to_datetime(clock(time)?))
    })();
    let when = match when {
        Ok(when) => When::At(when),
        Err(problem) => return vec![Err(problem)],
    };
    let device = match record.get("source").and_then(Value::as_str) {
        // Entered by hand or by another app: no device measured it.
        None | Some("Web") | Some("API") | Some("Manual") | Some("") => None,
        Some(scale) => {
            Some(Device { name: scale.to_owned(), manufacturer: Some("Fitbit".into()), ..Device::default() })
        }
    };
    let bmi = record.get("bmi").and_then(Value::as_f64).filter(|bmi| *bmi > 0.0);
    let reading =
        |kind, value| Reading { kind, measured: Measured::Value(value), when, device: device.clone(), quality: None };
    let mut readings = vec![
        number(&record["weight"], "weight")
            .and_then(|value| Kind::BodyWeight.canonical(value, settings.weight_unit(value, bmi)?))
            .map(|kg| reading(Kind::BodyWeight, kg)),
    ];
    if let Some(bmi) = bmi {
        readings.push(Kind::BodyMassIndex.canonical(bmi, "kg/m2").map(|bmi| reading(Kind::BodyMassIndex, bmi)));
    }
    readings
}

/// The columns of a Fitbit CSV of vital signs and what they hold: `timestamp,value` is SpO2 per
/// minute; `timestamp,average_value,…` the SpO2 of a night, and `timestamp,daily_respiratory_rate`
/// or `timestamp,full_sleep_breathing_rate,…` the breathing of a night, both on the day it ends.
#[derive(Debug, Clone, Copy)]
struct Columns {
    kind: Kind,
    time: usize,
    value: usize,
    /// A value for the whole local day its timestamp names, not for an instant.
    daily: bool,
}

impl Columns {
    fn of(header: &[String], name: Option<&str>) -> Option<Columns> {
        let find = |column: &str| header.iter().position(|name| name.trim().eq_ignore_ascii_case(column));
        let time = find("timestamp")?;
        if let Some(value) = find("average_value") {
            return Some(Columns { kind: Kind::OxygenSaturation, time, value, daily: true });
        }
        if let Some(value) = find("daily_respiratory_rate").or_else(|| find("full_sleep_breathing_rate")) {
            return Some(Columns { kind: Kind::RespiratoryRate, time, value, daily: true });
        }
        // `timestamp,value` is Fitbit's minute SpO2; inside an export, only under that name.
        let named_spo2 = name.is_none_or(|name| name.to_ascii_lowercase().contains("spo2"));
        match find("value") {
            Some(value) if header.len() == 2 && named_spo2 => {
                Some(Columns { kind: Kind::OxygenSaturation, time, value, daily: false })
            }
            _ => None,
        }
    }
}

fn read_csv(
    input: impl BufRead,
    name: Option<&str>,
    label: &str,
    settings: &Settings,
    emit: &mut dyn FnMut(Record),
) -> Result<(), FormatError> {
    let mut lines = CsvLines::new(input);
    let header = lines.next_record()?.ok_or_else(|| FormatError::new(format!("{label} is empty")))?;
    let Some(columns) = Columns::of(&header, name) else {
        let shown = header.iter().take(6).cloned().collect::<Vec<_>>().join(",");
        if name.is_some() {
            emit(Record::new(label.to_owned(), Err(Problem::skip(format!("Fitbit CSV with columns {shown}")))));
            return Ok(());
        }
        return Err(FormatError::new(format!(
            "{label} is not a Fitbit SpO2 or respiratory-rate CSV (its columns: {shown})"
        )));
    };
    loop {
        let line = lines.line + 1;
        let row = match lines.next_record() {
            Ok(Some(row)) => row,
            Ok(None) => return Ok(()),
            Err(error) => {
                emit(Record::new(
                    format!("{label}, line {line}"),
                    Err(Problem::new(format!("{error}; the rest of the file is not read"))),
                ));
                return Ok(());
            }
        };
        if row.iter().all(|cell| cell.trim().is_empty()) {
            continue;
        }
        emit(Record::new(format!("{label}, line {line}"), csv_row(&row, columns, settings)));
    }
}

fn csv_row(row: &[String], columns: Columns, settings: &Settings) -> Result<Reading, Problem> {
    let cell = |index: usize| row.get(index).map(|cell| cell.trim()).unwrap_or_default();
    let at = cell(columns.time);
    let when = if columns.daily { day_of(at, settings)? } else { When::At(instant(at, settings)?) };
    let text = cell(columns.value);
    let value = text.parse::<f64>().map_err(|_| Problem::new(format!("'{text}' is not a number")))?;
    // Fitbit writes each in the measure's own unit (% and /min).
    let kind = columns.kind;
    let value = kind.canonical(value, kind.definition().unit.ucum)?;
    Ok(Reading { kind, measured: Measured::Value(value), when, device: tracker(), quality: None })
}

/// A CSV timestamp: with an offset (or `Z`) as it says, else local.
fn instant(text: &str, settings: &Settings) -> Result<OffsetDateTime, Problem> {
    if let Ok(at) = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339) {
        return Ok(at);
    }
    let civil: jiff::civil::DateTime =
        text.replace(' ', "T").parse().map_err(|_| Problem::new(format!("'{text}' is not a date and time")))?;
    settings.local(civil)
}

/// The local day a daily value is for (its timestamp's date).
fn day_of(text: &str, settings: &Settings) -> Result<When, Problem> {
    let date = text.get(..10).unwrap_or(text);
    let date: jiff::civil::Date = date.parse().map_err(|_| Problem::new(format!("'{text}' is not a date")))?;
    settings.day(date)
}

fn number(value: &Value, name: &str) -> Result<f64, Problem> {
    value.as_f64().ok_or_else(|| Problem::new(format!("'{name}' must be a number, not {value}")))
}

/// Fitbit's `MM/DD/YY HH:MM:SS`.
fn us_date_time(value: Option<&Value>, name: &str) -> Result<jiff::civil::DateTime, Problem> {
    let text = value.and_then(Value::as_str).ok_or_else(|| Problem::new(format!("'{name}' is missing")))?;
    let (date, time) =
        text.split_once(' ').ok_or_else(|| Problem::new(format!("'{name}' is not MM/DD/YY HH:MM:SS: '{text}'")))?;
    Ok(us_date(date)?.to_datetime(clock(time)?))
}

/// Fitbit's `MM/DD/YY` (years 2000 to 2099), or `MM/DD/YYYY`.
fn us_date(text: &str) -> Result<jiff::civil::Date, Problem> {
    let bad = || Problem::new(format!("'{text}' is not a date MM/DD/YY"));
    let mut parts = text.trim().split('/');
    let (Some(month), Some(day), Some(year), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let (month, day): (i8, i8) = (month.parse().map_err(|_| bad())?, day.parse().map_err(|_| bad())?);
    let year: i16 = match year.len() {
        2 => 2000 + year.parse::<i16>().map_err(|_| bad())?,
        4 => year.parse().map_err(|_| bad())?,
        _ => return Err(bad()),
    };
    jiff::civil::Date::new(year, month, day).map_err(|_| bad())
}

/// `HH:MM:SS` (or `HH:MM`).
fn clock(text: &str) -> Result<jiff::civil::Time, Problem> {
    let bad = || Problem::new(format!("'{text}' is not a time HH:MM:SS"));
    let mut parts = text.trim().split(':').map(|part| part.parse::<i8>().map_err(|_| bad()));
    let hour = parts.next().ok_or_else(bad)??;
    let minute = parts.next().ok_or_else(bad)??;
    let second = parts.next().transpose()?.unwrap_or(0);
    if parts.next().is_some() {
        return Err(bad());
    }
    jiff::civil::Time::new(hour, minute, second, 0).map_err(|_| bad())
}

/// CSV records (RFC 4180: quoted fields may hold commas, quotes and line breaks), each at most
/// [`MAX_LINE`] bytes.
struct CsvLines<R> {
    input: R,
    /// Lines read so far (a quoted line break counts).
    line: usize,
    buffer: Vec<u8>,
}

impl<R: BufRead> CsvLines<R> {
    fn new(input: R) -> CsvLines<R> {
        CsvLines { input, line: 0, buffer: Vec::new() }
    }

    fn next_record(&mut self) -> Result<Option<Vec<String>>, FormatError> {
        self.buffer.clear();
        // Whether the record so far has an odd number of quotes (a line break is inside one):
        // counted over each line once as it is read.
        let mut open_quote = false;
        loop {
            let start = self.buffer.len();
            let limit = (MAX_LINE + 1 - start) as u64;
            let read = (&mut self.input).take(limit).read_until(b'\n', &mut self.buffer).map_err(FormatError::io)?;
            if read == 0 {
                break;
            }
            self.line += 1;
            if self.buffer.len() > MAX_LINE {
                return Err(FormatError::new(format!("line {} is longer than {MAX_LINE} bytes", self.line)));
            }
            open_quote ^= self.buffer[start..].iter().filter(|byte| **byte == b'"').count() % 2 == 1;
            if !open_quote {
                break;
            }
        }
        if self.buffer.is_empty() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&self.buffer);
        let text = text.trim_end_matches(['\r', '\n']);
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    field.push('"');
                    chars.next();
                }
                ('"', _) => quoted = !quoted,
                (',', false) => fields.push(std::mem::take(&mut field)),
                (c, _) => field.push(c),
            }
        }
        fields.push(field);
        Ok(Some(fields))
    }
}

#[cfg(test)]
mod tests;
