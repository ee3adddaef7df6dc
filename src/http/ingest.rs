//! `POST /fhir/Patient/{id}/$ingest-vitals`: an app sends a wearable export or a camera trace
//! and the patient's record gains the vital-signs Observations it holds (see
//! [`crate::ingest`]).
//!
//! Two forms of body:
//! - a `Parameters` resource: `format` (valueCode `apple`, `fitbit`, `mhealth` or `rppg`),
//!   `file` (valueAttachment with base64 `data`, or valueString for a text format) and
//!   optionally `timezone` (valueString, an IANA name, for times without an offset);
//! - the raw file, of any media type, with `?format=` (and optionally `&timezone=`) in the URL.
//!   Raw files may be up to `max_ingest_bytes`, and arrive at no less than `max_body_bytes` per
//!   `body_read_timeout_secs`. They are spooled to a temporary file, so that an archive is read
//!   from disk as the command line reads it.
//!
//! The token must allow creating the patient's Observations (`patient/Observation.c` for that
//! patient, `user/` or `system/Observation.c`); with granular scopes, each Observation they do
//! not allow is refused like a bad record. The Device resources the Observations name are
//! written when the token may create Devices too; otherwise the Observations name their device
//! by display only. Nothing is overwritten: readings already in the record (their ids come from
//! their content) are counted as unchanged. A source's token is refused: a source pushes its
//! own records. At most [`MAX_RUNNING`] imports run at once. The answer is a `Parameters`
//! resource with the import's counts, each refused record with its reason (the first 100) and
//! the first 100 Observations of the file that the token may create (new, or already there).

use std::path::PathBuf;

use actix_web::HttpResponse;
use actix_web::http::StatusCode;
use base64::Engine;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::{Ctx, access, request, response};
use crate::auth::scope::Interaction as Permission;
use crate::fhir::{Category, FhirError, Issue, IssueCode, ResourceType};
use crate::ingest::vitals::{Kind, LOINC};
use crate::ingest::{self, Format, Summary};

/// Most Observations returned whole in the answer.
pub const MAX_RETURNED: usize = 100;

/// Imports running at once; more wait for none and get 503 (each holds a blocking thread and
/// a spooled upload).
const MAX_RUNNING: usize = 2;

/// The imports of one server: at most [`MAX_RUNNING`] run at once, each spooling its upload in
/// the server's own spool directory.
pub struct Imports {
    places: std::sync::Arc<tokio::sync::Semaphore>,
    spool_dir: PathBuf,
    /// The database's data key when it is encrypted: uploads are then spooled sealed.
    seal: Option<crate::crypt::DataKey>,
}

impl Imports {
    /// The imports of the server whose database file is `data`: uploads are spooled in
    /// `<data>.ingest` (next to the database, on its disk: not in a memory-backed temporary
    /// directory), which is emptied here since no import outlives its server.
    pub fn open(data: &std::path::Path, seal: Option<crate::crypt::DataKey>) -> std::io::Result<Imports> {
        let spool_dir = crate::store::beside(data, "ingest");
        if spool_dir.exists() {
            std::fs::remove_dir_all(&spool_dir)?;
        }
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
        builder.create(&spool_dir)?;
        Ok(Imports { places: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_RUNNING)), spool_dir, seal })
    }

    /// A place among the imports running, or 503 when all [`MAX_RUNNING`] are taken.
    fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, FhirError> {
        self.places
            .clone()
            .try_acquire_owned()
            .map_err(|_| FhirError::busy(format!("{MAX_RUNNING} imports are running; send this one again in a minute")))
    }
}

pub async fn handle(ctx: Ctx) -> Result<HttpResponse, FhirError> {
    if ctx.param(0) != "Patient" {
        return Err(FhirError::not_found(format!("$ingest-vitals is an operation on Patient, not {}", ctx.param(0))));
    }
    let patient = request::id(ctx.param(1))?;
    if ctx.source.is_some() {
        return Err(FhirError::new(
            Category::Forbidden,
            IssueCode::Forbidden,
            "a source's token pushes the source's own records; $ingest-vitals is for a patient's own measurements",
        ));
    }
    let base = request::base_url(&ctx.http, &ctx.state);
    // The token must be able to create some vital sign of this patient (granular scopes may
    // allow some codes only: each Observation is checked again as it is made). Checked before
    // the Patient is looked up, so that a token learns nothing of other patients' records.
    let allowed_somewhere = Kind::ALL.iter().any(|kind| {
        access::check_body(
            &ctx.access,
            ResourceType::OBSERVATION,
            &exemplar(&patient, *kind),
            Permission::Create,
            &base,
        )
        .is_ok()
    });
    if !allowed_somewhere {
        return Err(FhirError::new(
            Category::Forbidden,
            IssueCode::Forbidden,
            format!("the access token may not create vital-sign Observations of Patient/{patient}"),
        ));
    }
    // The Devices the Observations name are written when the token may create them; otherwise
    // an Observation names its device by display only.
    let device = json!({"resourceType": "Device", "patient": {"reference": format!("Patient/{patient}")}});
    let devices_allowed = ctx
        .access
        .admits_body(&crate::search::SearchIndexer, ResourceType::DEVICE, &device, Permission::Create, &base)
        .unwrap_or(false);
    let store = ctx.state.store.clone();
    if !store.snapshot()?.is_live(ResourceType::PATIENT, patient.as_str())? {
        let golden = crate::mpi::golden::is_golden(patient.as_str());
        return Err(FhirError::not_found(if golden {
            format!("Patient/{patient} is a golden record: send the measurements to one of the person's own Patients")
        } else {
            format!("Patient/{patient} does not exist")
        }));
    }
    let options = options(&request::query_pairs(&ctx.http))?;
    if let Some((format, zone)) = &options {
        // Before the upload is received: a bad time zone need not wait for a gigabyte.
        ingest::run::check_zone(*format, zone.as_deref())
            .map_err(|error| FhirError::incorrect(IssueCode::Invalid, error.message))?;
    }
    let _running = ctx.state.imports.admit()?;
    let mut spool = Spool::new(&ctx.state.imports.spool_dir, ctx.state.imports.seal.as_ref()).await?;
    let Ctx { http, payload, state, access, .. } = ctx;
    let (format, zone) = match options {
        Some((format, zone)) => {
            spool.receive(&state.limits, &http, payload).await?;
            (format, zone)
        }
        None => {
            // The body and its parsed form are dropped once the file is decoded from them.
            let (format, zone, file) = {
                let body = request::read_body(&http, payload, &state.limits).await?;
                from_parameters(&request::json_body(&body, &state.limits)?)?
            };
            spool.write_all(&file).await?;
            (format, zone)
        }
    };
    let started = match spool.finish().await? {
        Some(key) => ingest::run::start_sealed(&spool.path, &key, format, patient.as_str(), zone),
        None => ingest::run::start(&spool.path, format, patient.as_str(), zone),
    };
    let import = started.map_err(|error| {
        if error.unopened {
            // The spool was just written: its path is the server's business, not the client's.
            tracing::error!(error = %error.message, "cannot open the ingest spool file");
            FhirError::fault("ingest-spool")
        } else {
            FhirError::incorrect(IssueCode::Invalid, error.message)
        }
    })?;
    let ingest::run::Import { mut batches, reading, .. } = import;
    let mut written = Summary::default();
    let mut returned = Vec::new();
    while let Some(batch) = batches.recv().await {
        let mut kept = Vec::with_capacity(batch.len());
        for mut resource in batch {
            if resource["resourceType"] == "Device" {
                if devices_allowed {
                    kept.push(resource);
                }
                continue;
            }
            if access::check_body(&access, ResourceType::OBSERVATION, &resource, Permission::Create, &base).is_err() {
                let what = resource["code"]["text"].as_str().unwrap_or("Observation").to_owned();
                let at =
                    resource["effectiveDateTime"].as_str().or_else(|| resource["effectivePeriod"]["start"].as_str());
                written.refuse(
                    format!("{what} at {}", at.unwrap_or("?")),
                    "the access token's scopes do not allow creating this Observation".into(),
                );
                continue;
            }
            if !devices_allowed && let Some(reference) = resource.get_mut("device").and_then(Value::as_object_mut) {
                reference.remove("reference");
            }
            if returned.len() < MAX_RETURNED {
                returned.push(resource.clone());
            }
            kept.push(resource);
        }
        if let Err(mut error) = ingest::create_new(&store, kept, &mut written).await {
            stored_before(&mut error, written.created);
            return Err(error);
        }
    }
    let read = reading.await.map_err(|_| FhirError::fault("ingest"))?;
    let mut summary = match read {
        Ok(summary) => summary,
        Err(failure) if failure.unopened => {
            tracing::error!(error = %failure.message, "the ingest spool cannot be read back");
            return Err(FhirError::fault("ingest-spool"));
        }
        Err(failure) => {
            let mut error = FhirError::incorrect(IssueCode::Invalid, failure.message);
            stored_before(&mut error, written.created);
            return Err(error);
        }
    };
    summary.add_writes(&written);
    Ok(response::json(StatusCode::OK, &answer(&summary, returned)))
}

/// What an Observation of `kind` for `patient` is like, as far as a token's limits can tell.
fn exemplar(patient: &crate::fhir::Id, kind: Kind) -> Value {
    json!({
        "resourceType": "Observation", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": kind.definition().codes.iter().map(|code| json!({"system": LOINC, "code": code.code})).collect::<Vec<_>>()},
        "subject": {"reference": format!("Patient/{patient}")},
    })
}

/// Says, on an error that ends an import part way, what was stored before it: sending the
/// same file again stores the rest, since nothing is stored twice.
fn stored_before(error: &mut FhirError, created: usize) {
    if created > 0 {
        error.issues.push(Issue::information(format!(
            "{created} Observations were stored before this; sending the same file again stores the rest (nothing is stored twice)"
        )));
    }
}

/// `format` and `timezone` from the URL: `Some` for a raw upload, `None` for a Parameters body.
fn options(query: &[(String, String)]) -> Result<Option<(Format, Option<String>)>, FhirError> {
    let mut format = None;
    let mut zone = None;
    for (name, value) in query {
        match name.as_str() {
            "format" => format = Some(parse_format(value)?),
            "timezone" => zone = Some(value.clone()),
            "_format" => {}
            other => {
                return Err(FhirError::incorrect(
                    IssueCode::NotSupported,
                    format!("unknown parameter '{other}' (this operation takes format and timezone)"),
                ));
            }
        }
    }
    match (format, zone) {
        (Some(format), zone) => Ok(Some((format, zone))),
        (None, Some(_)) => Err(FhirError::incorrect(
            IssueCode::Required,
            "timezone in the URL goes with a raw file and its format (?format=...)",
        )),
        (None, None) => Ok(None),
    }
}

fn parse_format(name: &str) -> Result<Format, FhirError> {
    Format::parse(name).ok_or_else(|| {
        FhirError::incorrect(
            IssueCode::Value,
            format!("'{name}' is not a format Braid ingests (apple, fitbit, mhealth or rppg)"),
        )
    })
}

/// The format, time zone and file of a Parameters body.
fn from_parameters(parameters: &Value) -> Result<(Format, Option<String>, Vec<u8>), FhirError> {
    let invalid = |message: String| FhirError::incorrect(IssueCode::Invalid, message);
    if parameters["resourceType"] != "Parameters" {
        return Err(invalid(
            "the body must be a Parameters resource (format, file), or the raw file with ?format= in the URL".into(),
        ));
    }
    let mut format = None;
    let mut zone = None;
    let mut file = None;
    for parameter in parameters["parameter"].as_array().map(Vec::as_slice).unwrap_or_default() {
        let name = parameter["name"].as_str().unwrap_or_default();
        match name {
            "format" => {
                let code = parameter["valueCode"].as_str().or_else(|| parameter["valueString"].as_str());
                let code = code.ok_or_else(|| invalid("'format' must be a valueCode".into()))?;
                format = Some(parse_format(code)?);
            }
            "timezone" => {
                let text = parameter["valueString"].as_str().or_else(|| parameter["valueCode"].as_str());
                zone = Some(text.ok_or_else(|| invalid("'timezone' must be a valueString".into()))?.to_owned());
            }
            "file" => {
                let bytes = if let Some(text) = parameter["valueString"].as_str() {
                    text.as_bytes().to_vec()
                } else if let Some(data) = parameter["valueAttachment"]["data"].as_str() {
                    base64::engine::general_purpose::STANDARD
                        .decode(data.trim())
                        .map_err(|error| invalid(format!("'file.valueAttachment.data' is not base64: {error}")))?
                } else {
                    return Err(invalid("'file' must be a valueAttachment with data, or a valueString".into()));
                };
                file = Some(bytes);
            }
            other => return Err(invalid(format!("unknown parameter '{other}' (expected format, file, timezone)"))),
        }
    }
    let format =
        format.ok_or_else(|| FhirError::incorrect(IssueCode::Required, "the 'format' parameter is missing"))?;
    let file = file.ok_or_else(|| FhirError::incorrect(IssueCode::Required, "the 'file' parameter is missing"))?;
    Ok((format, zone, file))
}

/// The answer: counts, refusals and the first Observations made.
fn answer(summary: &Summary, observations: Vec<Value>) -> Value {
    let count = |name: &str, value: usize| json!({"name": name, "valueInteger": value});
    let mut parameter = vec![
        count("records", summary.records),
        count("observations", summary.observations),
        count("aggregatedSamples", summary.aggregated_samples),
        count("created", summary.created),
        count("unchanged", summary.unchanged + summary.duplicates),
        count("devices", summary.devices),
        count("skipped", summary.skipped),
        count("rejected", summary.rejected),
    ];
    if let Some(zone) = &summary.time_zone {
        parameter.push(json!({"name": "timeZone", "valueString": zone}));
    }
    for (kind, number) in &summary.skipped_kinds {
        parameter.push(json!({"name": "skippedKind", "part": [
            {"name": "kind", "valueString": kind}, {"name": "count", "valueInteger": number}]}));
    }
    for problem in &summary.problems {
        parameter.push(json!({"name": "problem", "part": [
            {"name": "at", "valueString": problem.at}, {"name": "reason", "valueString": problem.reason}]}));
    }
    for observation in observations {
        parameter.push(json!({"name": "observation", "resource": observation}));
    }
    json!({"resourceType": "Parameters", "parameter": parameter})
}

/// The upload, on disk while it is read; removed when dropped.
struct Spool {
    path: PathBuf,
    file: SpoolFile,
}

enum SpoolFile {
    Plain(tokio::fs::File),
    /// Sealed with the database's data key (an encrypted database's uploads are not left in
    /// plain text on its disk). Written synchronously: a request body arrives in pieces of tens
    /// of kilobytes, and sealing and writing one into the page cache takes microseconds.
    Sealed(crate::crypt::sealed::SealedWriter<std::io::BufWriter<std::fs::File>>, crate::crypt::DataKey),
    /// Sealed and finished.
    Finished,
}

impl Spool {
    async fn new(dir: &std::path::Path, seal: Option<&crate::crypt::DataKey>) -> Result<Spool, FhirError> {
        let path = dir.join(format!("upload-{}", uuid::Uuid::new_v4()));
        let mut options = tokio::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        options.mode(0o600);
        let file = options.open(&path).await.map_err(|error| {
            tracing::error!(%error, "cannot create the ingest spool file");
            FhirError::fault("ingest-spool")
        })?;
        let file = match seal {
            None => SpoolFile::Plain(file),
            Some(key) => {
                let writer = std::io::BufWriter::with_capacity(1 << 16, file.into_std().await);
                SpoolFile::Sealed(
                    crate::crypt::sealed::SealedWriter::new(writer, key, &crate::crypt::sealed::context_of(&path))
                        .map_err(spool_error)?,
                    key.clone(),
                )
            }
        };
        Ok(Spool { path, file })
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), FhirError> {
        match &mut self.file {
            SpoolFile::Plain(file) => file.write_all(bytes).await.map_err(spool_error),
            SpoolFile::Sealed(writer, _) => std::io::Write::write_all(writer, bytes).map_err(spool_error),
            SpoolFile::Finished => Err(FhirError::fault("ingest-spool")),
        }
    }

    /// Ends the writing, so that the file can be read: a sealed spool gets its last chunk and
    /// gives the key to read it with.
    async fn finish(&mut self) -> Result<Option<crate::crypt::DataKey>, FhirError> {
        match std::mem::replace(&mut self.file, SpoolFile::Finished) {
            SpoolFile::Sealed(writer, key) => {
                writer.finish().map_err(spool_error)?;
                Ok(Some(key))
            }
            SpoolFile::Plain(mut file) => {
                file.flush().await.map_err(spool_error)?;
                Ok(None)
            }
            SpoolFile::Finished => Ok(None),
        }
    }

    /// Streams a raw body into the spool: at most `max_ingest_bytes` (413), and at least
    /// `max_body_bytes` per `body_read_timeout` (408).
    async fn receive(
        &mut self,
        limits: &super::Limits,
        http: &actix_web::HttpRequest,
        payload: actix_web::web::Payload,
    ) -> Result<(), FhirError> {
        let started = tokio::time::Instant::now();
        let bounds = request::BodyBounds {
            max_bytes: limits.max_ingest_bytes,
            too_large: format!(
                "the uploaded file exceeds the limit of {} bytes (max_ingest_bytes)",
                limits.max_ingest_bytes
            ),
            // The deadline moves with what has arrived: one timeout per max_body_bytes.
            deadline: &|received| {
                let allowance = 1 + received / limits.max_body_bytes.max(1) as u64;
                started + limits.body_read_timeout * allowance.min(u32::MAX as u64) as u32
            },
            too_slow: &|received| {
                format!("the upload is too slow ({received} bytes in {:.0} s)", started.elapsed().as_secs_f64())
            },
        };
        let received = request::stream_body(http, payload, &bounds, async |chunk| self.write_all(&chunk).await).await?;
        if received == 0 {
            return Err(FhirError::incorrect(IssueCode::Required, "the request has no body"));
        }
        Ok(())
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn spool_error(error: std::io::Error) -> FhirError {
    tracing::error!(%error, "cannot write the ingest spool file");
    FhirError::fault("ingest-spool")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_name_the_format_file_and_zone_and_anything_else_is_refused() {
        let file = base64::engine::general_purpose::STANDARD.encode(b"timestamp,value\n");
        let good = json!({"resourceType": "Parameters", "parameter": [
            {"name": "format", "valueCode": "fitbit"},
            {"name": "file", "valueAttachment": {"contentType": "text/csv", "data": file}},
            {"name": "timezone", "valueString": "Europe/Berlin"}]});
        let (format, zone, bytes) = from_parameters(&good).unwrap();
        assert_eq!(
            (format, zone.as_deref(), bytes.as_slice()),
            (Format::Fitbit, Some("Europe/Berlin"), &b"timestamp,value\n"[..])
        );
        let cases = [
            (json!({"resourceType": "Patient"}), "must be a Parameters resource"),
            (
                json!({"resourceType": "Parameters", "parameter": [{"name": "format", "valueCode": "garmin"}]}),
                "'garmin' is not a format",
            ),
            (
                json!({"resourceType": "Parameters", "parameter": [{"name": "file", "valueString": "x"}]}),
                "'format' parameter is missing",
            ),
            (
                json!({"resourceType": "Parameters", "parameter": [{"name": "format", "valueCode": "rppg"}]}),
                "'file' parameter is missing",
            ),
            (
                json!({"resourceType": "Parameters", "parameter": [{"name": "format", "valueCode": "rppg"},
                {"name": "file", "valueAttachment": {"data": "***"}}]}),
                "not base64",
            ),
            (
                json!({"resourceType": "Parameters", "parameter": [{"name": "patient", "valueString": "p2"}]}),
                "unknown parameter 'patient'",
            ),
            (
                json!({"resourceType": "Parameters", "parameter": [{"name": "format", "valueInteger": 3}]}),
                "must be a valueCode",
            ),
        ];
        for (body, expected) in cases {
            let error = from_parameters(&body).unwrap_err();
            assert!(error.issues[0].diagnostics.contains(expected), "{body}: {:?}", error.issues[0].diagnostics);
        }
    }

    /// An encrypted database's upload is on disk only sealed, bound to its spool file, and
    /// reads back whole with the data key; a plain database's is the bytes as sent. Either is
    /// removed when the request ends.
    #[tokio::test]
    async fn an_upload_is_spooled_sealed_when_the_database_is_encrypted() {
        let dir = tempfile::tempdir().unwrap();
        // More than one sealed chunk (64 KiB), with a marker the sealed file must not show.
        let upload: Vec<u8> = (0..100_000u32).flat_map(|n| format!("reading-{n},").into_bytes()).collect();
        let contains = |haystack: &[u8], needle: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);

        let key = crate::crypt::DataKey::random();
        let mut spool = Spool::new(dir.path(), Some(&key)).await.unwrap();
        spool.write_all(&upload[..70_000]).await.unwrap();
        spool.write_all(&upload[70_000..]).await.unwrap();
        let reading_key = spool.finish().await.unwrap().expect("a sealed spool gives its key");
        let stored = std::fs::read(&spool.path).unwrap();
        assert!(crate::crypt::sealed::is_sealed(&spool.path).unwrap());
        assert!(!contains(&stored, b"reading-12345,"), "no plain text on disk");
        let context = crate::crypt::sealed::context_of(&spool.path);
        let mut reader =
            crate::crypt::sealed::SealedReader::new(std::fs::File::open(&spool.path).unwrap(), &reading_key, &context)
                .unwrap();
        let mut read = Vec::new();
        std::io::Read::read_to_end(&mut reader, &mut read).unwrap();
        assert_eq!(read, upload);
        let path = spool.path.clone();
        drop(spool);
        assert!(!path.exists(), "the spool is removed with the request");

        let mut plain = Spool::new(dir.path(), None).await.unwrap();
        plain.write_all(&upload).await.unwrap();
        assert!(plain.finish().await.unwrap().is_none());
        assert_eq!(std::fs::read(&plain.path).unwrap(), upload);
        assert!(!crate::crypt::sealed::is_sealed(&plain.path).unwrap());
    }

    /// The bound on imports at once: a third waits for nothing and is refused until one ends;
    /// the spool directory starts empty.
    #[test]
    fn at_most_two_imports_run_at_once() {
        let dir = tempfile::tempdir().unwrap();
        // An upload left by a server that stopped mid-import is removed when the next one opens.
        std::fs::create_dir(dir.path().join("db.ingest")).unwrap();
        std::fs::write(dir.path().join("db.ingest/upload-left"), "half an export").unwrap();
        let imports = Imports::open(&dir.path().join("db"), None).unwrap();
        assert_eq!(std::fs::read_dir(dir.path().join("db.ingest")).unwrap().count(), 0);
        let first = imports.admit().unwrap();
        let _second = imports.admit().unwrap();
        let refused = imports.admit().unwrap_err();
        assert_eq!(refused.category, Category::Busy);
        assert!(refused.issues[0].diagnostics.contains("2 imports are running"));
        drop(first);
        assert!(imports.admit().is_ok());
    }

    #[test]
    fn the_url_takes_format_and_timezone_only() {
        let pairs =
            |list: &[(&str, &str)]| list.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        assert_eq!(options(&pairs(&[])).unwrap(), None);
        assert_eq!(options(&pairs(&[("format", "apple")])).unwrap(), Some((Format::Apple, None)));
        let error = options(&pairs(&[("format", "apple"), ("patient", "p2")])).unwrap_err();
        assert!(error.issues[0].diagnostics.contains("unknown parameter 'patient'"));
        assert!(options(&pairs(&[("timezone", "UTC")])).is_err());
        assert!(options(&pairs(&[("format", "csv")])).is_err());
    }
}
