//! Training compression dictionaries: from a stopped database's own bodies (`braid dictionary
//! train`), or from FHIR JSON files for the built-in dictionary (`braid dictionary build`).
//!
//! A trained dictionary is added to the `dictionary` table under the next id and becomes the
//! one new bodies are compressed with, but only if it compresses a held-out sample of the
//! database's bodies better than the current one. Existing bodies keep the dictionary they
//! were written with until `braid dictionary recompress` rewrites them; none is ever deleted.

use std::path::{Path, PathBuf};

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata};

use super::codec::{self, Codecs, StoredBody, content_hash};
use super::keys::resource_version;
use super::migrate::{self, MigrationProgress, MigrationReport, Rewrite};
use crate::crypt::KeyFile;

use super::{CURRENT_DICTIONARY_KEY, DICTIONARY, Indexer, META, Opened, RESOURCE_VERSION, StoreError, open_stopped};

/// The most bodies sampled for training (and as many again held out to judge the result): zstd
/// learns little beyond a few thousand, and the sample is held in memory.
pub const MAX_SAMPLES: usize = 20_000;

/// The most bytes of bodies sampled in all; bodies beyond it are skipped.
const MAX_SAMPLE_BYTES: usize = 128 << 20;

/// Training needs some variety: fewer bodies than this are refused.
const MIN_SAMPLES: usize = 20;

/// What training did, printed as JSON by `braid dictionary train`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrainReport {
    /// The id of the new dictionary (when adopted) or the id it would have had.
    pub dictionary_id: u32,
    /// Whether it was stored and made current: only when it compresses the held-out sample
    /// better than the current one.
    pub adopted: bool,
    pub previous_dictionary_id: u32,
    pub dictionary_bytes: usize,
    pub training_bodies: usize,
    /// Bodies not used for training, on which both dictionaries were measured.
    pub held_out_bodies: usize,
    /// The held-out bodies' JSON size, and their size stored with the previous and the new
    /// dictionary.
    pub plain_bytes: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Trains a dictionary of about `size` bytes on up to `samples` bodies spread evenly over a
/// stopped database, and adopts it if it does better than the current one.
pub fn train(
    path: &Path,
    key: Option<&KeyFile>,
    indexer: &dyn Indexer,
    size: usize,
    samples: usize,
) -> Result<TrainReport, StoreError> {
    let samples = samples.clamp(MIN_SAMPLES, MAX_SAMPLES);
    let (db, Opened { codecs, .. }) = open_stopped(path, key, indexer, &mut |_| {})?;
    let (training, held_out) = {
        let txn = db.begin_read()?;
        let versions = txn.open_table(RESOURCE_VERSION)?;
        // Every `step`-th version, alternately for training and for judging.
        let step = (versions.len()? as usize / (2 * samples)).max(1);
        let (mut training, mut held_out, mut bytes) = (Vec::new(), Vec::new(), 0usize);
        for (index, entry) in versions.iter()?.enumerate() {
            if index % step != 0 {
                continue;
            }
            if held_out.len() >= samples || bytes >= MAX_SAMPLE_BYTES {
                break;
            }
            let (key, value) = entry?;
            let (_, stored) = resource_version::decode_value(value.value())
                .ok_or_else(|| StoreError::Corrupt(key.value().to_vec()))?;
            let body = StoredBody::parse(stored)
                .and_then(|stored| codecs.decode(stored))
                .map_err(|reason| super::migrate::corrupt_body(key.value(), &reason))?;
            if body.is_empty() {
                continue;
            }
            bytes += body.len();
            if training.len() <= held_out.len() { training.push(body) } else { held_out.push(body) }
        }
        (training, held_out)
    };
    if held_out.len() < MIN_SAMPLES / 2 {
        return Err(StoreError::Dictionary(format!(
            "the database holds {} resource bodies; at least {MIN_SAMPLES} are needed to train a dictionary",
            training.len() + held_out.len()
        )));
    }
    let dictionary = codec::train(&training, size).map_err(StoreError::Dictionary)?;
    let previous = codecs.current_dictionary();
    let next_id = {
        let txn = db.begin_read()?;
        let table = txn.open_table(DICTIONARY)?;
        table.last()?.map_or(codec::BUILT_IN_DICTIONARY_ID, |(id, _)| id.value()) + 1
    };
    let candidate = Codecs::new(&[(next_id, dictionary.clone())], next_id).map_err(StoreError::Dictionary)?;
    let (mut plain_bytes, mut bytes_before, mut bytes_after) = (0u64, 0u64, 0u64);
    for body in &held_out {
        // The hash does not affect the size; compute it as the writer would all the same.
        let hash = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(body)
            .map(|resource| content_hash(&resource))
            .unwrap_or_default();
        plain_bytes += body.len() as u64;
        bytes_before += codecs.encode(body, hash).len() as u64;
        bytes_after += candidate.encode(body, hash).len() as u64;
    }
    let adopted = bytes_after < bytes_before;
    if adopted {
        let txn = super::begin_write(&db)?;
        txn.open_table(DICTIONARY)?.insert(next_id, dictionary.as_slice())?;
        txn.open_table(META)?.insert(CURRENT_DICTIONARY_KEY, next_id.to_be_bytes().as_slice())?;
        txn.commit()?;
    }
    Ok(TrainReport {
        dictionary_id: next_id,
        adopted,
        previous_dictionary_id: previous,
        dictionary_bytes: dictionary.len(),
        training_bodies: training.len(),
        held_out_bodies: held_out.len(),
        plain_bytes,
        bytes_before,
        bytes_after,
    })
}

/// Compresses every body of a stopped database that does not use the current dictionary
/// (after retraining) with it, in batches like a migration (resumable, `progress` after each).
/// The old dictionaries stay in the file.
pub fn recompress(
    path: &Path,
    key: Option<&KeyFile>,
    indexer: &dyn Indexer,
    progress: &mut dyn FnMut(&MigrationProgress),
) -> Result<MigrationReport, StoreError> {
    let (db, Opened { codecs, .. }) = open_stopped(path, key, indexer, &mut |_| {})?;
    migrate::rewrite_bodies(&db, &codecs, Rewrite::Recompress, migrate::BATCH_VERSIONS, None, progress)
}

/// Trains the built-in dictionary from FHIR JSON files (every `*.json` in `directories`; a
/// transaction or batch Bundle stands for its entries' resources), each sample serialised as
/// Braid stores it (compact, in the client's element order). Returns the dictionary and the
/// number of samples.
pub fn build(directories: &[PathBuf], size: usize) -> Result<(Vec<u8>, usize), String> {
    let mut samples = Vec::new();
    for directory in directories {
        let mut paths: Vec<PathBuf> = std::fs::read_dir(directory)
            .map_err(|error| format!("{}: {error}", directory.display()))?
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.extension().is_some_and(|extension| extension == "json"))
            .collect();
        // Training is deterministic for a given sample order.
        paths.sort();
        for path in paths {
            let text = std::fs::read(&path).map_err(|error| format!("{}: {error}", path.display()))?;
            let resource: serde_json::Value =
                serde_json::from_slice(&text).map_err(|error| format!("{}: {error}", path.display()))?;
            let is_batch = resource["resourceType"] == "Bundle"
                && (resource["type"] == "transaction" || resource["type"] == "batch");
            if is_batch {
                for entry in resource["entry"].as_array().into_iter().flatten() {
                    if entry["resource"].is_object() {
                        samples.push(serde_json::to_vec(&entry["resource"]).unwrap_or_default());
                    }
                }
            } else {
                samples.push(serde_json::to_vec(&resource).unwrap_or_default());
            }
        }
    }
    if samples.len() < MIN_SAMPLES {
        return Err(format!("{} resources found; at least {MIN_SAMPLES} are needed", samples.len()));
    }
    Ok((codec::train(&samples, size)?, samples.len()))
}
