//! Encryption at rest, as an operator meets it: `braid keygen`, `braid serve
//! --encryption-key-file`, the database file and the Bulk Data export files searched byte by byte
//! for what was stored, restarts with the right, a wrong and no key, damaged files, and the
//! `rekey`, `decrypt` and `encrypt` commands.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use braid::crypt::KeyFile;
use braid::search::SearchIndexer;
use braid::store::encrypted::EncryptedBackend;
use braid::store::{Store, StoreOptions};
use serde_json::{Value, json};

use crate::helpers::{BraidProcess, TestApp, braid_cli, seed, start_braid_process_with};

/// What the test stores, each of which must not appear in an encrypted file: names, an
/// identifier, a code's text, a value, an address (as stored, and as the index normalizes it).
const NEEDLES: [&str; 8] = [
    "Wolfeschlegel",
    "wolfeschlegel",
    "MRN-7741-SECRET",
    "mrn-7741-secret",
    "Quintessa",
    "quintessa",
    "Hyperglycaemia watch",
    "Vandersloot Lane",
];

fn patient(n: usize) -> Value {
    json!({"resourceType": "Patient", "id": format!("p{n}"),
        "identifier": [{"system": "urn:oid:1.2.3.4", "value": format!("MRN-7741-SECRET-{n}")}],
        "name": [{"family": format!("Wolfeschlegel{n}"), "given": ["Quintessa"]}],
        "birthDate": format!("19{:02}-04-12", 40 + n),
        "address": [{"line": [format!("{n} Vandersloot Lane")], "city": "Springfield"}]})
}

fn observation(n: usize) -> Value {
    json!({"resourceType": "Observation", "id": format!("o{n}"), "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2339-0"}], "text": "Hyperglycaemia watch"},
        "subject": {"reference": format!("Patient/p{n}")},
        "effectiveDateTime": "2026-03-01T08:00:00Z",
        "valueQuantity": {"value": 187.25 + n as f64, "unit": "mg/dL"}})
}

/// Which of [`NEEDLES`] the bytes of `path` contain.
fn found_in(path: &Path) -> Vec<&'static str> {
    let bytes = std::fs::read(path).unwrap();
    NEEDLES.iter().copied().filter(|needle| bytes.windows(needle.len()).any(|w| w == needle.as_bytes())).collect()
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn start(data: &Path, key: Option<&Path>) -> (BraidProcess, TestApp) {
    let key_args: Vec<&str> = match key {
        Some(key) => vec!["--encryption-key-file", key.to_str().unwrap()],
        None => Vec::new(),
    };
    let braid = start_braid_process_with(data, "warn,braid=info", &key_args);
    let base = format!("http://127.0.0.1:{}/fhir", braid.port);
    let app = TestApp::at(base, tempfile::tempdir().unwrap());
    (braid, app)
}

fn stop(mut braid: BraidProcess) {
    braid.child.kill().unwrap();
    braid.child.wait().unwrap();
}

/// Loads 20 Patients with an Observation each, by transaction.
async fn load(app: &TestApp) {
    seed(app, (0..20).flat_map(|n| [patient(n), observation(n)]).collect()).await;
}

/// The answers the test compares across restarts: searches by name, identifier, value, and
/// reads, each without the Bundle's own id and time.
async fn answers(app: &TestApp) -> Vec<Value> {
    let mut answers = Vec::new();
    for path in [
        "/Patient?family=wolfeschlegel1&_sort=_id",
        "/Patient?identifier=urn:oid:1.2.3.4|MRN-7741-SECRET-7",
        "/Observation?value-quantity=gt190&_sort=_id&_count=50",
        "/Observation?code=http://loinc.org|2339-0&_summary=count",
        "/Patient/p3",
        "/Observation/o19",
    ] {
        let reply = app.get(path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text);
        let mut body = reply.body;
        if body["resourceType"] == "Bundle" {
            let object = body.as_object_mut().unwrap();
            object.remove("id");
            object.remove("meta");
            object.remove("link");
            for entry in object.get_mut("entry").and_then(Value::as_array_mut).into_iter().flatten() {
                // The port is another at each start.
                entry.as_object_mut().unwrap().remove("fullUrl");
                entry["resource"].as_object_mut().unwrap().remove("link");
            }
        } else {
            // A Patient's link to its golden record is the master patient index's, added in
            // the background after the write.
            body.as_object_mut().unwrap().remove("link");
        }
        answers.push(body);
    }
    answers
}

fn same_answers(found: &[Value], expected: &[Value]) {
    assert_eq!(found.len(), expected.len());
    for (found, expected) in found.iter().zip(expected) {
        assert!(found == expected, "found\n{found}\nexpected\n{expected}");
    }
}

/// Kicks off a system export and downloads every file; returns how many resources came back.
async fn export_everything(app: &TestApp) -> usize {
    let (exported, _) = crate::export::export_with_manifest(app, "/$export", None).await;
    exported.len()
}

#[actix_web::test]
async fn an_encrypted_database_and_its_exports_reveal_nothing_and_reopen_only_with_their_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("braid.key");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_braid")).arg("keygen").arg(&key).output().unwrap();
    assert!(output.status.success(), "{output:?}");
    let again = std::process::Command::new(env!("CARGO_BIN_EXE_braid")).arg("keygen").arg(&key).output().unwrap();
    assert!(String::from_utf8_lossy(&again.stderr).contains("never overwritten"), "{again:?}");
    let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["key_file"], key.to_str().unwrap());
    let key_text = std::fs::read_to_string(&key).unwrap();
    let key_hex = key_text.split_whitespace().last().unwrap().to_owned();
    assert_eq!(key_hex.len(), 64);

    // The control: a plain database holds the needles, so the search below can find them.
    let plain_data = dir.path().join("plain.redb");
    let (braid, app) = start(&plain_data, None);
    load(&app).await;
    assert_eq!(export_everything(&app).await, 40);
    stop(braid);
    assert!(found_in(&plain_data).len() >= 3, "the plain file holds the names: {:?}", found_in(&plain_data));
    let plain_exports = files_under(&braid::sources::export::directory(&plain_data));
    let in_exports: std::collections::BTreeSet<&str> = plain_exports.iter().flat_map(|file| found_in(file)).collect();
    assert_eq!(in_exports.len(), 5, "the plain exports hold every needle as stored: {in_exports:?}");

    // Encrypted: the same load, the same answers, and not one needle in any file.
    let data = dir.path().join("braid.redb");
    let (braid, app) = start(&data, Some(&key));
    load(&app).await;
    let before = answers(&app).await;
    assert_eq!(export_everything(&app).await, 40, "the export files read back whole through the server");
    let metadata = app.get("/metadata").await;
    assert!(!metadata.text.contains(&key_hex) && !metadata.text.contains(key.to_str().unwrap()));
    let logs: Vec<String> = braid.logs.try_iter().map(|log| log.to_string()).collect();
    assert!(!logs.is_empty() && logs.iter().all(|line| !line.contains(&key_hex)), "the key is never logged");
    stop(braid);
    let mut written = vec![data.clone()];
    written.extend(files_under(&braid::sources::export::directory(&data)));
    assert!(written.len() >= 3, "the database and the export files: {written:?}");
    for file in &written {
        assert_eq!(found_in(file), Vec::<&str>::new(), "{} holds plain text", file.display());
        let bytes = std::fs::read(file).unwrap();
        assert!(!bytes.windows(key_hex.len()).any(|w| w == key_hex.as_bytes()), "{} holds the key", file.display());
    }

    // The right key serves the same answers after a restart.
    let (braid, app) = start(&data, Some(&key));
    same_answers(&answers(&app).await, &before);
    stop(braid);

    // A wrong key, no key, a key for a plain database: each a clear error, nothing served.
    let other = dir.path().join("other.key");
    KeyFile::generate(&other).unwrap();
    let refusals = [
        (data.clone(), vec!["--encryption-key-file", other.to_str().unwrap()], "does not open this database"),
        (data.clone(), vec![], "the database is encrypted; give its key file"),
        (plain_data.clone(), vec!["--encryption-key-file", key.to_str().unwrap()], "not encrypted"),
        (data.clone(), vec!["--encryption-key-file", "/nonexistent/braid.key"], "no such key file"),
    ];
    for (database, args, message) in refusals {
        let mut all = vec!["serve", "--listen", "127.0.0.1:0", "--auth", "off"];
        all.extend(args.iter().copied());
        let output = braid_cli(&database, &all).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success() && stderr.contains(message), "{args:?}: {stderr}");
        assert!(!String::from_utf8_lossy(&output.stdout).contains("listening"), "nothing was served");
        assert!(!stderr.contains(&key_hex));
    }
    // The same key file through the environment, as the Dockerfile gives it.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_braid"))
        .args(["compact", "--data"])
        .arg(&data)
        .env("BRAID_ENCRYPTION_KEY_FILE", &key)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    assert_eq!(found_in(&data), Vec::<&str>::new(), "compacted, still encrypted");
    let (braid, app) = start(&data, Some(&key));
    same_answers(&answers(&app).await, &before);
    stop(braid);
}

/// Bodies written besides [`load`]'s in the damaged-file test.
const BULK: usize = 300;

/// Each resource's stored body as read, or the error reading it.
type Reads = Vec<Result<Option<Vec<u8>>, String>>;

/// A damaged encrypted file: cut short, or any one stored block with one bit flipped. Opening
/// fails with a clear error, or every read gives either the stored resource unchanged or an
/// error: never other content.
#[actix_web::test]
async fn a_damaged_encrypted_file_is_refused_and_never_read_as_other_data() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("braid.key");
    KeyFile::generate(&key_path).unwrap();
    let key = Arc::new(KeyFile::load(&key_path).unwrap());
    let data = dir.path().join("braid.redb");
    let (braid, app) = start(&data, Some(&key_path));
    load(&app).await;
    // Enough bodies that they fill pages a start does not read.
    let entries: Vec<Value> = (0..BULK)
        .map(|n| {
            let note = format!("Note {n}: {}", "lorem ipsum dolor sit amet ".repeat(60 + n % 7));
            let resource = json!({"resourceType": "Basic", "id": format!("b{n}"), "code": {"text": note}});
            json!({"resource": resource, "request": {"method": "PUT", "url": format!("Basic/b{n}")}})
        })
        .collect();
    let reply = app.post("", &json!({"resourceType": "Bundle", "type": "batch", "entry": entries})).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    stop(braid);
    let options = || StoreOptions {
        encryption_key: Some(key.clone()),
        gc_interval: std::time::Duration::ZERO,
        cache_bytes: 1 << 20,
        ..StoreOptions::default()
    };
    let read_all = |path: &Path| -> Result<Reads, String> {
        let store = Store::open(path, options(), Arc::new(SearchIndexer)).map_err(|e| e.to_string())?;
        let snapshot = store.snapshot().map_err(|e| e.to_string())?;
        let reads = (0..20)
            .flat_map(|n| [("Patient", format!("p{n}")), ("Observation", format!("o{n}"))])
            .chain((0..BULK).map(|n| ("Basic", format!("b{n}"))))
            .map(|(type_name, id)| {
                let resource_type = braid::fhir::ResourceType::parse(type_name).unwrap();
                snapshot.current(resource_type, &id).map(|v| v.map(|v| v.body.to_vec())).map_err(|e| e.to_string())
            })
            .collect();
        drop(snapshot);
        let finished = store.writer_finished();
        drop(store);
        while !finished() {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(reads)
    };
    let original = read_all(&data).unwrap();
    assert!(original.iter().all(|read| matches!(read, Ok(Some(_)))));
    // Closed by redb itself here, so that the copies below are of a cleanly closed file (one
    // that needs recovery is walked page by page when it opens).
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&data).unwrap();
    let backend = EncryptedBackend::open(redb::backends::FileBackend::new(file).unwrap(), &key).unwrap();
    drop(redb::Database::builder().create_with_backend(backend).unwrap());
    let stored = std::fs::read(&data).unwrap();

    // Cut inside a block: refused at open.
    let damaged = dir.path().join("damaged.redb");
    std::fs::write(&damaged, &stored[..stored.len() - 100]).unwrap();
    let error = read_all(&damaged).expect_err("a file cut inside a block is refused");
    assert!(error.contains("cut short"), "{error}");

    // Every read of a damaged file either fails or gives the stored resource unchanged.
    let (mut refused_at_open, mut refused_reads) = (0, 0);
    let mut check = |altered: &[u8], what: &str| {
        std::fs::write(&damaged, altered).unwrap();
        match read_all(&damaged) {
            Err(error) => {
                assert!(
                    ["authentication", "damaged", "never written", "truncated"].iter().any(|m| error.contains(m)),
                    "{what}: {error}"
                );
                refused_at_open += 1;
            }
            Ok(reads) => {
                for (read, expected) in reads.iter().zip(&original) {
                    match read {
                        Ok(found) => assert_eq!(found, expected.as_ref().unwrap(), "{what}: other content"),
                        Err(error) => {
                            // The client is told which resource cannot be read, the log why.
                            assert!(error.contains("cannot be read") && error.contains('/'), "{what}: {error}");
                            refused_reads += 1;
                        }
                    }
                }
            }
        }
    };
    // The last block cut off whole (its length is then that of a valid file).
    check(&stored[..stored.len() - braid::store::encrypted::RECORD], "the last block cut off");
    // One flipped bit in each written data block in turn (blocks never written are never read;
    // the two copies of block 0, redb's header, come after).
    let record = braid::store::encrypted::RECORD;
    let first = 4096;
    for (index, block) in stored[first..].chunks(record).enumerate().skip(2) {
        if block.iter().all(|b| *b == 0) {
            continue;
        }
        let mut altered = stored.clone();
        altered[first + index * record + 40 + (index * 97) % (record - 40)] ^= 0x08;
        check(&altered, &format!("block {index}"));
    }
    // A debug build of redb walks every page when it opens a file (to check its allocator), so
    // here most refusals come at open; in a release build they come when the page is read.
    assert!(refused_at_open + refused_reads > 100, "at open: {refused_at_open}, reads: {refused_reads}");

    // The server reports a damaged header clearly and serves nothing.
    let mut altered = stored.clone();
    for copy in 0..2 {
        altered[first + copy * record + 100] ^= 1;
    }
    std::fs::write(&damaged, &altered).unwrap();
    let output = braid_cli(
        &damaged,
        &["serve", "--listen", "127.0.0.1:0", "--auth", "off", "--encryption-key-file", key_path.to_str().unwrap()],
    )
    .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("block 0 (the database header)"), "{stderr}");
}

/// `rekey`, `decrypt` and `encrypt` round-trip through the command line, each answering the
/// same searches afterwards.
#[actix_web::test]
async fn rekey_decrypt_and_encrypt_round_trip_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (dir.path().join("old.key"), dir.path().join("new.key"));
    KeyFile::generate(&old).unwrap();
    KeyFile::generate(&new).unwrap();
    let (old_arg, new_arg) = (old.to_str().unwrap(), new.to_str().unwrap());
    let data = dir.path().join("braid.redb");
    let (braid, app) = start(&data, Some(&old));
    load(&app).await;
    let before = answers(&app).await;
    // Refused while the server holds the file.
    let refused = braid_cli(&data, &["rekey", "--encryption-key-file", old_arg, "--new-key-file", new_arg]).await;
    assert!(String::from_utf8_lossy(&refused.stderr).contains("open in another process"), "{refused:?}");
    stop(braid);

    let output = braid_cli(&data, &["rekey", "--encryption-key-file", old_arg, "--new-key-file", new_arg]).await;
    assert!(output.status.success(), "{output:?}");
    assert_eq!(serde_json::from_slice::<Value>(&output.stdout).unwrap()["rekeyed"], true);
    let with_old = braid_cli(&data, &["migrate", "--encryption-key-file", old_arg]).await;
    assert!(String::from_utf8_lossy(&with_old.stderr).contains("does not open this database"), "{with_old:?}");
    let (braid, app) = start(&data, Some(&new));
    same_answers(&answers(&app).await, &before);
    stop(braid);

    let output = braid_cli(&data, &["decrypt", "--encryption-key-file", new_arg]).await;
    assert!(output.status.success(), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["encrypted"], false);
    assert_eq!(report["resumed_at"], 0);
    assert!(!found_in(&data).is_empty(), "decrypted: the names are in the file again");
    let (braid, app) = start(&data, None);
    same_answers(&answers(&app).await, &before);
    stop(braid);

    let output = braid_cli(&data, &["encrypt", "--encryption-key-file", old_arg]).await;
    assert!(output.status.success(), "{output:?}");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["encrypted"], true);
    assert!(report["file_bytes_after"].as_u64().unwrap() > report["file_bytes_before"].as_u64().unwrap());
    assert_eq!(found_in(&data), Vec::<&str>::new());
    let (braid, app) = start(&data, Some(&old));
    same_answers(&answers(&app).await, &before);
    stop(braid);

    // Without a key the conversions say what they need.
    let output = braid_cli(&data, &["decrypt"]).await;
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs the key file"), "{output:?}");
}
