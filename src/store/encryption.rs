//! Opening a database file, plain or encrypted (see `encrypted`), and the operator's commands
//! that change how it is encrypted: `braid encrypt` and `braid decrypt` (resumable, with
//! progress) and `braid rekey`.

use std::io;
use std::path::Path;

use redb::backends::FileBackend;
use redb::{Database, StorageBackend};

use super::StoreError;
use super::encrypted::{self, BLOCK, EncryptedBackend, OpenError};
use crate::crypt::{DataKey, KeyFile};

fn io_error(error: io::Error) -> StoreError {
    StoreError::Storage(redb::StorageError::Io(error))
}

/// Opens the database at `path` (creating it if `create`), encrypted with the data key `key`
/// unwraps, or plain without a key; returns the data key of an encrypted one. A key for a plain
/// file, or no key for an encrypted one, is a clear error before redb reads anything.
pub(crate) fn open_file(
    path: &Path,
    key: Option<&KeyFile>,
    builder: &redb::Builder,
    create: bool,
) -> Result<(Database, Option<DataKey>), StoreError> {
    match key {
        None => {
            if encrypted::is_encrypted(path).map_err(io_error)? {
                return Err(StoreError::KeyRequired);
            }
            Ok((if create { builder.create(path)? } else { builder.open(path)? }, None))
        }
        Some(key) => {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(create)
                .truncate(false)
                .open(path)
                .map_err(io_error)?;
            let backend = EncryptedBackend::open(FileBackend::new(file)?, key)?;
            let data_key = backend.data_key();
            Ok((builder.create_with_backend(backend)?, Some(data_key)))
        }
    }
}

fn in_use(error: StoreError) -> StoreError {
    match error {
        StoreError::Database(redb::DatabaseError::DatabaseAlreadyOpen) => StoreError::InUse,
        other => other,
    }
}

/// Changes the key file that opens the encrypted database at `path` from `old` to `new`,
/// without rewriting the data: afterwards `old` no longer opens it. Refused while the
/// database is open elsewhere.
pub fn rekey(path: &Path, old: &KeyFile, new: &KeyFile) -> Result<(), StoreError> {
    if !encrypted::is_encrypted(path).map_err(io_error)? {
        return Err(OpenError::NotEncrypted.into());
    }
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(io_error)?;
    let backend = EncryptedBackend::open(FileBackend::new(file)?, old)?;
    // Holding the database open keeps every other process off it while the key block changes.
    let db = Database::builder().create_with_backend(backend.clone()).map_err(|e| in_use(e.into()))?;
    backend.rekey(old, new)?;
    drop(db);
    Ok(())
}

/// Which way [`convert`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Encrypt,
    Decrypt,
}

/// How far a conversion is, for progress reports.
#[derive(Debug, Clone, Copy)]
pub struct ConversionProgress {
    pub done: u64,
    pub total: u64,
}

/// What a conversion did, printed as JSON by `braid encrypt` and `braid decrypt`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ConversionReport {
    pub data: String,
    pub encrypted: bool,
    /// The database's bytes (redb's view: the same before and after).
    pub bytes: u64,
    /// Where this run started: 0, or the bytes an interrupted run had already converted.
    pub resumed_at: u64,
    pub file_bytes_before: u64,
    pub file_bytes_after: u64,
}

/// What an interrupted conversion had done, kept beside its destination file. It resumes only
/// for the same source: same length and same header (redb rewrites its header at every
/// commit, so a source written since does not match and the conversion starts again).
#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
struct Checkpoint {
    direction: String,
    source_bytes: u64,
    source_fingerprint: String,
    done: u64,
}

/// Bytes converted between two reports of progress.
const STEP: u64 = 4 << 20;
/// Bytes converted between two checkpoints (each one syncs the destination).
const CHECKPOINT_EVERY: u64 = 256 << 20;

/// Converts the stopped database at `path` to encrypted (with the data key of a new key block
/// under `key`) or to plain, block by block through a new file beside it that then replaces it.
/// An interrupted run resumes from its last checkpoint; a file in use is refused.
///
/// The old file's blocks are released to the file system, not overwritten: after `encrypt`, a
/// plain copy may remain readable on the disk until the space is reused.
pub fn convert(
    path: &Path,
    key: &KeyFile,
    direction: Direction,
    progress: &mut dyn FnMut(ConversionProgress),
) -> Result<ConversionReport, StoreError> {
    convert_with(path, key, direction, CHECKPOINT_EVERY, &mut |done| {
        progress(done);
        true
    })
}

/// [`convert`], checkpointing every `checkpoint_every` bytes; stops (as a crash would, after
/// its last checkpoint) when `progress` returns false.
fn convert_with(
    path: &Path,
    key: &KeyFile,
    direction: Direction,
    checkpoint_every: u64,
    progress: &mut dyn FnMut(ConversionProgress) -> bool,
) -> Result<ConversionReport, StoreError> {
    let encrypted_now = encrypted::is_encrypted(path).map_err(io_error)?;
    if !path.exists() {
        return Err(io_error(io::Error::new(io::ErrorKind::NotFound, format!("no database at {}", path.display()))));
    }
    let source_key = match (direction, encrypted_now) {
        (Direction::Encrypt, true) => {
            return Err(io_error(io::Error::other("the database is encrypted already (rekey changes its key)")));
        }
        (Direction::Decrypt, false) => return Err(OpenError::NotEncrypted.into()),
        (Direction::Encrypt, false) => None,
        (Direction::Decrypt, true) => Some(key),
    };
    // A read-only handle keeps any writer off the file while its blocks are copied, and writes
    // nothing (so that an interrupted run finds the source as it left it). A database left by
    // a crash does not open read-only: opening it for writing repairs it first.
    let _guard = match open_read_only(path, source_key) {
        Ok(guard) => guard,
        Err(StoreError::InUse) => return Err(StoreError::InUse),
        Err(_) => {
            drop(open_file(path, source_key, &Database::builder(), false).map_err(in_use)?.0);
            open_read_only(path, source_key)?
        }
    };
    let source_file = std::fs::File::open(path).map_err(io_error)?;
    let source = match source_key {
        None => Source::Plain(FileBackend::new(source_file)?),
        Some(key) => Source::Encrypted(EncryptedBackend::open(FileBackend::new(source_file)?, key)?),
    };
    let total = source.len().map_err(io_error)?;
    if total % BLOCK as u64 != 0 {
        return Err(io_error(io::Error::other(format!("the database's length ({total}) is not whole pages"))));
    }
    let mut first_block = vec![0u8; BLOCK.min(total as usize)];
    source.read(0, &mut first_block).map_err(io_error)?;
    let fingerprint = crate::fhir::hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &first_block).as_ref());

    let name = if direction == Direction::Encrypt { "encrypting" } else { "decrypting" };
    let destination_path = super::beside(path, name);
    let checkpoint_path = super::beside(path, &format!("{name}.progress"));
    let mut checkpoint =
        Checkpoint { direction: name.into(), source_bytes: total, source_fingerprint: fingerprint, done: 0 };
    let resumable = std::fs::read(&checkpoint_path)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Checkpoint>(&bytes).ok())
        .filter(|found| {
            found.direction == checkpoint.direction
                && found.source_bytes == checkpoint.source_bytes
                && found.source_fingerprint == checkpoint.source_fingerprint
                && found.done <= total
                && destination_path.exists()
        });
    if let Some(found) = &resumable {
        checkpoint.done = found.done;
    } else {
        let _ = std::fs::remove_file(&checkpoint_path);
        let _ = std::fs::remove_file(&destination_path);
    }
    let destination = match open_destination(&destination_path, direction, key) {
        // Begun with another key file: begun again with this one.
        Err(StoreError::Encryption(OpenError::WrongKey)) if checkpoint.done > 0 => {
            let _ = std::fs::remove_file(&checkpoint_path);
            std::fs::remove_file(&destination_path).map_err(io_error)?;
            checkpoint.done = 0;
            open_destination(&destination_path, direction, key)?
        }
        opened => opened?,
    };
    let resumed_at = checkpoint.done;
    destination.set_len(total).map_err(io_error)?;

    let step = STEP.min(checkpoint_every);
    let mut buffer = vec![0u8; step as usize];
    let mut since_checkpoint = 0;
    let interrupted = || io_error(io::Error::new(io::ErrorKind::Interrupted, "the conversion was interrupted"));
    if !progress(ConversionProgress { done: checkpoint.done, total }) {
        return Err(interrupted());
    }
    while checkpoint.done < total {
        let len = step.min(total - checkpoint.done) as usize;
        source.read(checkpoint.done, &mut buffer[..len]).map_err(io_error)?;
        let data = &buffer[..len];
        match direction {
            // Every block sealed, zeros too: redb may read a page it wrote as zeros.
            Direction::Encrypt => destination.write(checkpoint.done, data),
            Direction::Decrypt => write_nonzero_blocks(destination.as_ref(), checkpoint.done, data),
        }
        .map_err(io_error)?;
        checkpoint.done += len as u64;
        since_checkpoint += len as u64;
        if since_checkpoint >= checkpoint_every && checkpoint.done < total {
            destination.sync_data().map_err(io_error)?;
            write_checkpoint(&checkpoint_path, &checkpoint)?;
            since_checkpoint = 0;
        }
        if !progress(ConversionProgress { done: checkpoint.done, total }) {
            return Err(interrupted());
        }
    }
    destination.sync_data().map_err(io_error)?;
    drop(destination);
    drop(source);
    let file_bytes_before = std::fs::metadata(path).map_err(io_error)?.len();
    std::fs::rename(&destination_path, path).map_err(io_error)?;
    sync_directory(path)?;
    let _ = std::fs::remove_file(&checkpoint_path);
    let file_bytes_after = std::fs::metadata(path).map_err(io_error)?.len();
    Ok(ConversionReport {
        data: path.display().to_string(),
        encrypted: direction == Direction::Encrypt,
        bytes: total,
        resumed_at,
        file_bytes_before,
        file_bytes_after,
    })
}

/// The database being converted, read block by block, its unused space included.
enum Source {
    Plain(FileBackend),
    Encrypted(EncryptedBackend<FileBackend>),
}

impl Source {
    fn len(&self) -> io::Result<u64> {
        match self {
            Source::Plain(backend) => backend.len(),
            Source::Encrypted(backend) => backend.len(),
        }
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        match self {
            Source::Plain(backend) => backend.read(offset, out),
            Source::Encrypted(backend) => backend.read_including_unwritten(offset, out),
        }
    }
}

fn open_destination(path: &Path, direction: Direction, key: &KeyFile) -> Result<Box<dyn StorageBackend>, StoreError> {
    let file =
        std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io_error)?;
    Ok(match direction {
        Direction::Encrypt => Box::new(EncryptedBackend::open(FileBackend::new(file)?, key)?),
        Direction::Decrypt => Box::new(FileBackend::new(file)?),
    })
}

/// Writes the blocks of `data` (at `offset`, whole blocks) that are not all zeros into a plain
/// file, whose unwritten space reads as zeros: the encrypted file's unused space stays a hole.
fn write_nonzero_blocks(destination: &dyn StorageBackend, offset: u64, data: &[u8]) -> io::Result<()> {
    let mut run_start: Option<usize> = None;
    for (index, block) in data.chunks(BLOCK).enumerate() {
        let blank = block.iter().all(|b| *b == 0);
        match (blank, run_start) {
            (false, None) => run_start = Some(index),
            (true, Some(start)) => {
                destination.write(offset + (start * BLOCK) as u64, &data[start * BLOCK..index * BLOCK])?;
                run_start = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run_start {
        destination.write(offset + (start * BLOCK) as u64, &data[start * BLOCK..])?;
    }
    Ok(())
}

fn open_read_only(path: &Path, key: Option<&KeyFile>) -> Result<redb::ReadOnlyDatabase, StoreError> {
    let opened = match key {
        None => Database::builder().open_read_only(path),
        Some(key) => {
            let file = std::fs::File::open(path).map_err(io_error)?;
            Database::builder().open_read_only_with_backend(EncryptedBackend::open(FileBackend::new(file)?, key)?)
        }
    };
    opened.map_err(|error| in_use(error.into()))
}

fn write_checkpoint(path: &Path, checkpoint: &Checkpoint) -> Result<(), StoreError> {
    let temporary = super::beside(path, "new");
    let bytes = serde_json::to_vec(checkpoint).expect("a checkpoint serializes");
    let written = std::fs::File::create(&temporary).and_then(|mut file| {
        std::io::Write::write_all(&mut file, &bytes)?;
        file.sync_all()
    });
    written.map_err(io_error)?;
    std::fs::rename(&temporary, path).map_err(io_error)?;
    sync_directory(path)
}

/// Makes a rename in `path`'s directory durable.
fn sync_directory(path: &Path) -> Result<(), StoreError> {
    let directory = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::File::open(directory).and_then(|dir| dir.sync_all()).map_err(io_error)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::search::SearchIndexer;
    use crate::store::testing::{close, put, runtime};
    use crate::store::{Store, StoreOptions};

    fn options(key: Option<&Arc<KeyFile>>) -> StoreOptions {
        StoreOptions { encryption_key: key.cloned(), gc_interval: std::time::Duration::ZERO, ..Default::default() }
    }

    /// Every current resource's body, by `type/id`.
    fn contents(path: &Path, key: Option<&Arc<KeyFile>>) -> Vec<(String, Vec<u8>)> {
        let store = Store::open(path, options(key), Arc::new(SearchIndexer)).unwrap();
        let snapshot = store.snapshot().unwrap();
        let mut found = Vec::new();
        for n in 0..300 {
            let id = format!("p{n}");
            let current = snapshot.current(crate::fhir::ResourceType::PATIENT, &id).unwrap().expect("stored");
            found.push((id, current.body.to_vec()));
        }
        drop(snapshot);
        close(store);
        found
    }

    fn load(path: &Path, key: Option<&Arc<KeyFile>>) {
        let store = Store::open(path, options(key), Arc::new(SearchIndexer)).unwrap();
        runtime().block_on(async {
            for n in 0..300 {
                let family = format!("Conversionfamily{n}");
                let body = serde_json::json!({"resourceType": "Patient", "id": format!("p{n}"),
                    "name": [{"family": family, "given": ["A".repeat(2000)]}]});
                store.write(put(crate::fhir::ResourceType::PATIENT, &format!("p{n}"), body)).await.unwrap();
            }
        });
        close(store);
    }

    fn holds(path: &Path, text: &[u8]) -> bool {
        std::fs::read(path).unwrap().windows(text.len()).any(|w| w == text)
    }

    #[test]
    fn an_interrupted_encryption_resumes_and_decryption_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("braid.redb");
        load(&path, None);
        let before = contents(&path, None);
        assert!(holds(&path, b"conversionfamily7"), "the plain file holds the index's normalized names");
        let key = Arc::new(KeyFile::from_bytes([3; 32]));

        // Interrupted after a few steps, past two checkpoints.
        let mut steps = 0;
        let error = convert_with(&path, &key, Direction::Encrypt, 64 << 10, &mut |_| {
            steps += 1;
            steps < 40
        })
        .unwrap_err();
        assert!(error.to_string().contains("interrupted"), "{error}");
        assert!(!encrypted::is_encrypted(&path).unwrap(), "the source is untouched until the end");
        let report = convert_with(&path, &key, Direction::Encrypt, 64 << 10, &mut |_| true).unwrap();
        assert!(report.resumed_at > 0 && report.resumed_at < report.bytes, "{report:?}");
        assert!(encrypted::is_encrypted(&path).unwrap());
        assert!(!holds(&path, b"conversionfamily7") && !holds(&path, b"Conversionfamily"));
        assert!(
            !crate::store::beside(&path, "encrypting").exists()
                && !crate::store::beside(&path, "encrypting.progress").exists()
        );
        assert_eq!(contents(&path, Some(&key)), before);

        // A checkpoint of another source is not resumed: the conversion starts again.
        let mut steps = 0;
        let _ = convert_with(&path, &key, Direction::Decrypt, 64 << 10, &mut |_| {
            steps += 1;
            steps < 40
        });
        load(&path, Some(&key));
        let report = convert(&path, &key, Direction::Decrypt, &mut |_| {}).unwrap();
        assert_eq!(report.resumed_at, 0, "{report:?}");
        assert!(!encrypted::is_encrypted(&path).unwrap());
        assert_eq!(contents(&path, None), before);
        assert!(holds(&path, b"conversionfamily7"));

        // Refusals: encrypting twice, decrypting a plain file, a wrong key.
        let error = convert(&path, &key, Direction::Decrypt, &mut |_| {}).unwrap_err().to_string();
        assert!(error.contains("not encrypted"), "{error}");
        convert(&path, &key, Direction::Encrypt, &mut |_| {}).unwrap();
        let error = convert(&path, &key, Direction::Encrypt, &mut |_| {}).unwrap_err().to_string();
        assert!(error.contains("encrypted already"), "{error}");
        let wrong = KeyFile::from_bytes([4; 32]);
        let error = convert(&path, &wrong, Direction::Decrypt, &mut |_| {}).unwrap_err().to_string();
        assert!(error.contains("does not open"), "{error}");
    }

    #[test]
    fn rekey_moves_the_database_to_the_new_key_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("braid.redb");
        let old = Arc::new(KeyFile::from_bytes([5; 32]));
        let new = Arc::new(KeyFile::from_bytes([6; 32]));
        load(&path, Some(&old));
        let before = contents(&path, Some(&old));
        let length = std::fs::metadata(&path).unwrap().len();
        rekey(&path, &old, &new).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), length, "the data is not rewritten");
        assert_eq!(contents(&path, Some(&new)), before);
        let refused = Store::open(&path, options(Some(&old)), Arc::new(SearchIndexer)).err().unwrap().to_string();
        assert!(refused.contains("does not open"), "{refused}");
        let refused = Store::open(&path, options(None), Arc::new(SearchIndexer)).err().unwrap().to_string();
        assert!(refused.contains("encrypted; give its key file"), "{refused}");
        // The old key cannot rekey again; a plain database cannot be rekeyed.
        assert!(rekey(&path, &old, &new).unwrap_err().to_string().contains("does not open"));
        // A database held open elsewhere is refused.
        let store = Store::open(&path, options(Some(&new)), Arc::new(SearchIndexer)).unwrap();
        let error = rekey(&path, &new, &old).unwrap_err();
        assert!(matches!(error, StoreError::InUse), "{error}");
        close(store);
        // The server made this file: redb grew it past what it wrote, and the blocks it never
        // wrote decrypt as the zeros they stand for.
        convert(&path, &new, Direction::Decrypt, &mut |_| {}).unwrap();
        assert_eq!(contents(&path, None), before);
    }

    #[test]
    fn an_encryption_begun_with_another_key_begins_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("braid.redb");
        load(&path, None);
        let before = contents(&path, None);
        let (first, second) = (Arc::new(KeyFile::from_bytes([7; 32])), Arc::new(KeyFile::from_bytes([8; 32])));
        let mut steps = 0;
        let _ = convert_with(&path, &first, Direction::Encrypt, 64 << 10, &mut |_| {
            steps += 1;
            steps < 20
        });
        let report = convert_with(&path, &second, Direction::Encrypt, 64 << 10, &mut |_| true).unwrap();
        assert_eq!(report.resumed_at, 0, "{report:?}");
        assert_eq!(contents(&path, Some(&second)), before);
        let refused = Store::open(&path, options(Some(&first)), Arc::new(SearchIndexer)).err().unwrap().to_string();
        assert!(refused.contains("does not open"), "{refused}");
    }
}
