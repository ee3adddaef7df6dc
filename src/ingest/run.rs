//! One import, from a file to its destination: the reader and the [`Converter`] run on a
//! blocking thread and hand batches of resources over a bounded channel (so a large file is
//! never held whole, and reading waits when writing falls behind); the destination takes
//! them one batch at a time.

use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde_json::Value;
use tokio::sync::mpsc;

use time::OffsetDateTime;

use super::rppg::{self, Method};
use super::{BATCH, Converter, Format, FormatError, Record, Summary, apple, fitbit, mhealth};

/// Batches waiting between the reader and the destination at most.
const QUEUED_BATCHES: usize = 4;

/// What a reader may need besides the input.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    /// When an input that does not say when it was recorded (a Y4M video) was made: the file's
    /// modification time, or now.
    pub recorded: OffsetDateTime,
    /// How rPPG extracts the pulse.
    pub method: Method,
    /// The time zone (IANA name) of inputs whose times have no offset (Fitbit's), when the
    /// input does not name it.
    pub zone: Option<String>,
}

/// What a reader says of the input as a whole besides its records.
#[derive(Debug, Default)]
pub struct Notes {
    /// Where local times without an offset were placed, and why there.
    pub time_zone: Option<String>,
}

/// Reads `input` as `format`, giving each record to `emit`.
pub fn read(
    format: Format,
    mut input: impl BufRead + Seek,
    options: &ReadOptions,
    emit: &mut dyn FnMut(Record),
) -> Result<Notes, FormatError> {
    match format {
        Format::Mhealth => mhealth::read(input, emit).map(|()| Notes::default()),
        Format::Rppg => {
            let head = input.fill_buf().map_err(FormatError::io)?;
            let trace =
                if head.starts_with(b"YUV4MPEG2") { rppg::read_video(input)? } else { rppg::read_trace(input)? };
            for record in rppg::records(&trace, options.recorded, options.method) {
                emit(record);
            }
            Ok(Notes::default())
        }
        Format::Apple => {
            if input.fill_buf().map_err(FormatError::io)?.starts_with(b"PK\x03\x04") {
                apple::read_zip(input, emit)?;
            } else {
                apple::read(input, emit)?;
            }
            Ok(Notes::default())
        }
        Format::Fitbit => {
            let mut settings = fitbit::Settings::new(options.zone.as_deref())?;
            if input.fill_buf().map_err(FormatError::io)?.starts_with(b"PK\x03\x04") {
                fitbit::read_zip(input, &mut settings, emit)?;
            } else {
                fitbit::read(input, None, &settings, emit)?;
            }
            Ok(Notes { time_zone: Some(settings.zone_note) })
        }
    }
}

/// How far an import has read its input, and whether it should stop (its destination is
/// gone: an HTTP client that went away, a failed write).
#[derive(Debug, Default)]
pub struct Meter {
    pub read: AtomicU64,
    pub stopped: AtomicBool,
}

/// Counts the bytes read through it (for progress), and fails every read once the import is
/// stopped, so that a reader ends at its next read instead of going through the whole input.
pub struct Counting<R> {
    inner: R,
    meter: Arc<Meter>,
}

impl<R> Counting<R> {
    pub fn new(inner: R, meter: Arc<Meter>) -> Counting<R> {
        Counting { inner, meter }
    }
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if self.meter.stopped.load(Ordering::Relaxed) {
            // Not `Interrupted`, which readers retry.
            return Err(std::io::Error::other("the import was stopped"));
        }
        let count = self.inner.read(buffer)?;
        self.meter.read.fetch_add(count as u64, Ordering::Relaxed);
        Ok(count)
    }
}

/// A zip archive is read by seeking to its directory first: progress counts what is read, not
/// where.
impl<R: Seek> Seek for Counting<R> {
    fn seek(&mut self, position: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(position)
    }
}

/// Progress of an import: bytes of the input read so far (`meter.read`), out of its size.
#[derive(Clone)]
pub struct Progress {
    pub meter: Arc<Meter>,
    pub total: u64,
}

/// An import under way: the batches of resources as they are made, how far the input is
/// read, and the reading's end (the summary of what was made and refused, or why the file
/// could not be read).
pub struct Import {
    pub batches: mpsc::Receiver<Vec<Value>>,
    pub progress: Progress,
    pub reading: tokio::task::JoinHandle<Result<Summary, FormatError>>,
}

/// Refuses a time zone given with a format whose times carry their offset, or that is not a
/// time zone: both can be told before any input is read.
pub fn check_zone(format: Format, zone: Option<&str>) -> Result<(), FormatError> {
    match zone {
        Some(_) if format != Format::Fitbit => Err(FormatError::new(format!(
            "a time zone applies to Fitbit exports only: the times of {} carry their offset",
            format.title()
        ))),
        Some(name) => fitbit::time_zone(name).map(|_| ()),
        None => Ok(()),
    }
}

/// Starts reading `path` (a file, or for Fitbit an unpacked export's folder) as `format` for
/// `patient` on a blocking thread; `zone` is the time zone of local times (see
/// [`ReadOptions::zone`]).
pub fn start(path: &Path, format: Format, patient: &str, zone: Option<String>) -> Result<Import, FormatError> {
    let cannot_open = |error: std::io::Error| FormatError::unopened(path, error);
    let metadata = std::fs::metadata(path).map_err(cannot_open)?;
    let recorded = metadata.modified().map_or_else(|_| OffsetDateTime::now_utc(), OffsetDateTime::from);
    check_zone(format, zone.as_deref())?;
    let options = ReadOptions { recorded, method: Method::Pos, zone };
    if !metadata.is_dir() {
        let file = std::fs::File::open(path).map_err(cannot_open)?;
        return start_reading(file, metadata.len(), format, patient, options);
    }
    if format != Format::Fitbit {
        return Err(FormatError::new(format!(
            "{} is a folder: give the file of {} (only a Fitbit export is read as a folder)",
            path.display(),
            format.title()
        )));
    }
    let folder = fitbit::Folder::open(path)?;
    let total = folder.data_bytes;
    let meter = Arc::new(Meter::default());
    let (sender, receiver) = mpsc::channel(QUEUED_BATCHES);
    let patient = patient.to_owned();
    let counter = meter.clone();
    let reading = tokio::task::spawn_blocking(move || {
        convert(format, &patient, &sender, &counter.clone(), |emit| {
            let mut settings = fitbit::Settings::new(options.zone.as_deref())?;
            folder.read(&mut settings, &counter, emit)?;
            Ok(Notes { time_zone: Some(settings.zone_note) })
        })
    });
    Ok(Import { batches: receiver, progress: Progress { meter, total }, reading })
}

/// Starts reading an upload the server spooled sealed with its data key (see
/// [`crate::crypt::sealed`]), as `format` for `patient`.
pub fn start_sealed(
    path: &Path,
    key: &crate::crypt::DataKey,
    format: Format,
    patient: &str,
    zone: Option<String>,
) -> Result<Import, FormatError> {
    let cannot_open = |error: std::io::Error| FormatError::unopened(path, error);
    check_zone(format, zone.as_deref())?;
    let file = std::fs::File::open(path).map_err(cannot_open)?;
    let context = crate::crypt::sealed::context_of(path);
    let reader = crate::crypt::sealed::SealedReader::new(file, key, &context).map_err(cannot_open)?;
    let total = reader.plain_len();
    let options = ReadOptions { recorded: OffsetDateTime::now_utc(), method: Method::Pos, zone };
    start_reading(reader, total, format, patient, options)
}

/// Starts reading `input` (of `total` bytes) on a blocking thread.
fn start_reading<R: Read + Seek + Send + 'static>(
    mut input: R,
    total: u64,
    format: Format,
    patient: &str,
    options: ReadOptions,
) -> Result<Import, FormatError> {
    refuse_other_format(&mut input, format)?;
    let meter = Arc::new(Meter::default());
    let (sender, receiver) = mpsc::channel(QUEUED_BATCHES);
    let patient = patient.to_owned();
    let input = BufReader::with_capacity(1 << 16, Counting::new(input, meter.clone()));
    let counter = meter.clone();
    let reading = tokio::task::spawn_blocking(move || {
        convert(format, &patient, &sender, &counter, |emit| self::read(format, input, &options, emit))
    });
    Ok(Import { batches: receiver, progress: Progress { meter, total }, reading })
}

/// Fails with the name of the format the file looks like when that is not `format`; leaves the
/// file at its start.
fn refuse_other_format(file: &mut (impl Read + Seek), format: Format) -> Result<(), FormatError> {
    let mut head = Vec::with_capacity(4096);
    file.by_ref().take(4096).read_to_end(&mut head).map_err(FormatError::io)?;
    file.seek(SeekFrom::Start(0)).map_err(FormatError::io)?;
    match super::sniff(&head) {
        Some((looks_like, description)) if looks_like != format => Err(FormatError::new(format!(
            "this is not {}: it looks like {description} (format '{}')",
            format.title(),
            looks_like.name()
        ))),
        _ => Ok(()),
    }
}

/// Converts what `read` gives (see [`read`]), sending full batches to `sender`. If the
/// receiver is gone, stops the reading through `meter` (its reads fail from then on).
pub fn convert(
    format: Format,
    patient: &str,
    sender: &mpsc::Sender<Vec<Value>>,
    meter: &Meter,
    read: impl FnOnce(&mut dyn FnMut(Record)) -> Result<Notes, FormatError>,
) -> Result<Summary, FormatError> {
    let mut converter = Converter::new(patient, format);
    let mut open = true;
    let notes = read(&mut |record| {
        converter.add(record);
        if open && converter.ready_len() >= BATCH {
            open = sender.blocking_send(converter.take_ready()).is_ok();
            if !open {
                meter.stopped.store(true, Ordering::Relaxed);
            }
        }
    });
    converter.finish();
    let rest = converter.take_ready();
    if open && !rest.is_empty() {
        let _ = sender.blocking_send(rest);
    }
    let notes = notes?;
    converter.summary.time_zone = notes.time_zone;
    Ok(converter.summary)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing;

    fn points(count: usize) -> String {
        (0..count)
            .map(|index| {
                format!(
                    r#"{{"body_weight": {{"value": {}, "unit": "kg"}}, "effective_time_frame": {{"date_time": "2024-01-{:02}T08:00:00Z"}}}}"#,
                    60 + index % 20,
                    index % 28 + 1
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The bound on work for nobody: once the destination is gone (the receiver dropped), the
    /// reading stops at its next read instead of going through the whole file.
    #[test]
    fn an_import_whose_destination_is_gone_stops_reading() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weights.ndjson");
        std::fs::write(&file, points(50_000)).unwrap();
        testing::runtime().block_on(async {
            let Import { mut batches, progress, reading } = start(&file, Format::Mhealth, "p1", None).unwrap();
            assert!(batches.recv().await.is_some());
            drop(batches);
            let summary = reading.await.unwrap().unwrap();
            assert!(progress.meter.stopped.load(Ordering::Relaxed));
            assert!(summary.records < 10_000, "{} of 50,000 records read", summary.records);
            assert!(progress.meter.read.load(Ordering::Relaxed) < progress.total / 2);
        });
    }

    #[test]
    fn a_time_zone_is_refused_for_formats_whose_times_have_their_offset() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weights.ndjson");
        std::fs::write(&file, points(1)).unwrap();
        let error = start(&file, Format::Mhealth, "p1", Some("UTC".into())).err().expect("refused");
        assert!(error.message.contains("applies to Fitbit exports only"), "{error}");
    }

    /// An import writes each Observation once; importing it again changes nothing.
    #[test]
    fn importing_the_same_file_twice_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = testing::open(&dir.path().join("db"));
        let file = dir.path().join("weights.ndjson");
        // 1,200 points cycling through 28 days and 20 values: lcm(28, 20) = 140 distinct readings.
        std::fs::write(&file, points(1_200)).unwrap();
        testing::runtime().block_on(async {
            let mut summaries = Vec::new();
            for _ in 0..2 {
                let Import { mut batches, progress, reading } = start(&file, Format::Mhealth, "p1", None).unwrap();
                let mut written = Summary::default();
                while let Some(batch) = batches.recv().await {
                    super::super::write(&store, batch, &mut written).await.unwrap();
                }
                let mut summary = reading.await.unwrap().unwrap();
                assert_eq!(progress.meter.read.load(Ordering::Relaxed), progress.total);
                summary.add_writes(&written);
                summaries.push(summary);
            }
            assert_eq!(summaries[0].records, 1_200);
            assert_eq!(summaries[0].observations, 1_200);
            assert_eq!(summaries[0].created, 140);
            assert_eq!(summaries[0].created + summaries[0].unchanged + summaries[0].duplicates, 1_200);
            assert_eq!(
                (summaries[1].created, summaries[1].updated, summaries[1].unchanged + summaries[1].duplicates),
                (0, 0, 1_200)
            );
            // The first point, as stored: version 1 after both imports.
            let first: Value = serde_json::from_str(points(1).as_str()).unwrap();
            let reading = mhealth::data_point(&first).unwrap();
            let id = super::super::observation::observation_id("p1", Format::Mhealth, &reading);
            let snapshot = store.snapshot().unwrap();
            let stored = snapshot.current(crate::fhir::ResourceType::OBSERVATION, &id).unwrap().unwrap();
            assert_eq!(stored.version, 1, "a second import made no new version");
            let body: Value = serde_json::from_slice(&stored.body).unwrap();
            assert_eq!(body["valueQuantity"]["value"], 60);
            assert_eq!(body["subject"]["reference"], "Patient/p1");
        });
    }
}
