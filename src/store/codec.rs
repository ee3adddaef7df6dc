//! How resource bodies are stored: compressed with zstd and a dictionary kept in the database,
//! each with a content hash that detects no-op updates without parsing the stored version.
//!
//! A `resource_version` value is the 17-byte header (`keys::resource_version`) followed by the
//! stored body, which says how it is encoded by its first byte:
//!
//! | first byte | layout | written by |
//! |---|---|---|
//! | (none) | empty: a deletion | every format |
//! | `{` (0x7B) | the resource JSON itself, no content hash | format 3 (migrated to 4 on open) |
//! | 0x01 | `hash(16)` then the JSON | format 4, when compression does not make it smaller |
//! | 0x02 | `hash(16) dictionary_id(u32 BE)` then one zstd frame | format 4 |
//!
//! The codec bytes are part of the file format and never reused. Because a format 3 body
//! always starts with `{` and no format 4 codec byte does, every value says which format wrote
//! it: a half-migrated file reads correctly (see `migrate::compress_bodies`).
//!
//! Dictionaries live in the `dictionary` table by id and are never deleted or changed, so a
//! body stays readable whatever dictionary is current: retraining (`braid dictionary train`)
//! adds one and makes it current for new writes. Every dictionary is prepared once when the
//! database opens ([`Codecs`]); reads reuse one decompression context per thread.

use std::cell::RefCell;
use std::collections::BTreeMap;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use zstd::zstd_safe::{self, CCtx, CDict, CParameter, DCtx, DDict};

use super::body_cache::BodyCache;

/// The built-in dictionary a new database starts with (id 1), trained on the official R4
/// examples and the Synthea bundles in `tests/data`; regenerate it with
/// `braid dictionary build --out profiles/body-dictionary.zdict tests/data/examples tests/data/synthea`.
pub const BUILT_IN_DICTIONARY: &[u8] = include_bytes!("../../profiles/body-dictionary.zdict");

/// The id of [`BUILT_IN_DICTIONARY`] in every database.
pub const BUILT_IN_DICTIONARY_ID: u32 = 1;

/// The zstd level new bodies are compressed with. Measured on the R4 examples and Synthea
/// resources with a 32 KiB dictionary: level 3 stores 11.5% of the JSON at 5 µs per body;
/// level 6 gains 6% more for four times the time, level 1 loses 5% for no speed.
pub const COMPRESSION_LEVEL: i32 = 3;

/// Dictionary size for training: on FHIR resources 32 KiB compressed better than 16, 64 and
/// 112 KiB (larger dictionaries learn rarer strings at the expense of common ones).
pub const DEFAULT_DICTIONARY_BYTES: usize = 32 << 10;

/// The largest body a stored frame may declare. Bodies are bounded by `max_body_bytes` when
/// written (at most a few MiB more once stamped); a larger declared size is corruption, and
/// refusing it keeps a damaged header from allocating unbounded memory.
pub const MAX_BODY_BYTES: u64 = 256 << 20;

pub const CONTENT_HASH_LEN: usize = 16;

/// The first 16 bytes of the SHA-256 of a resource's canonical content (see [`content_hash`]).
pub type ContentHash = [u8; CONTENT_HASH_LEN];

const CODEC_PLAIN: u8 = 0x01;
const CODEC_ZSTD: u8 = 0x02;
/// The first byte of every format 3 body: `{`.
const LEGACY_JSON: u8 = b'{';

/// A stored body, not yet decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredBody<'a> {
    /// A deletion.
    Empty,
    /// A format 3 body: plain JSON without a content hash.
    Legacy(&'a [u8]),
    Plain {
        hash: ContentHash,
        json: &'a [u8],
    },
    Zstd {
        hash: ContentHash,
        dictionary: u32,
        frame: &'a [u8],
    },
}

impl<'a> StoredBody<'a> {
    /// Splits a stored body by its codec byte; an error says what is wrong.
    pub fn parse(bytes: &'a [u8]) -> Result<StoredBody<'a>, String> {
        let Some((&codec, rest)) = bytes.split_first() else { return Ok(StoredBody::Empty) };
        let hashed = |rest: &'a [u8]| -> Result<(ContentHash, &'a [u8]), String> {
            let (hash, rest) =
                rest.split_first_chunk::<CONTENT_HASH_LEN>().ok_or("truncated before its content hash")?;
            Ok((*hash, rest))
        };
        match codec {
            LEGACY_JSON => Ok(StoredBody::Legacy(bytes)),
            CODEC_PLAIN => {
                let (hash, json) = hashed(rest)?;
                Ok(StoredBody::Plain { hash, json })
            }
            CODEC_ZSTD => {
                let (hash, rest) = hashed(rest)?;
                let (dictionary, frame) = rest.split_first_chunk::<4>().ok_or("truncated before its dictionary id")?;
                Ok(StoredBody::Zstd { hash, dictionary: u32::from_be_bytes(*dictionary), frame })
            }
            other => Err(format!("unknown body codec {other:#04x}")),
        }
    }

    /// The content hash kept with the body (`None` for deletions and format 3 bodies).
    pub fn hash(&self) -> Option<ContentHash> {
        match self {
            StoredBody::Plain { hash, .. } | StoredBody::Zstd { hash, .. } => Some(*hash),
            StoredBody::Empty | StoredBody::Legacy(_) => None,
        }
    }
}

/// The database's dictionaries, prepared for compression and decompression. Built once when the
/// database opens; the set cannot change while it is open (training runs on a stopped database).
pub struct Codecs {
    decoders: BTreeMap<u32, DDict<'static>>,
    /// The dictionary new bodies are compressed with.
    encoder: (u32, CDict<'static>),
    /// Bodies decompressed recently, by `resource_version` key (off until the store sets its
    /// capacity).
    pub body_cache: BodyCache,
}

thread_local! {
    /// One decompression context per thread: creating one costs more than decoding a body.
    static DECOMPRESSOR: RefCell<DCtx<'static>> = RefCell::new(DCtx::create());
    static COMPRESSOR: RefCell<CCtx<'static>> = RefCell::new(compressor());
}

/// Frames carry their content size (so decoding allocates once) and a checksum (4 bytes: a
/// damaged body is an error, never other data), but not the dictionary id, which the value
/// header already holds.
fn compressor() -> CCtx<'static> {
    let mut context = CCtx::create();
    for parameter in [
        CParameter::CompressionLevel(COMPRESSION_LEVEL),
        CParameter::ContentSizeFlag(true),
        CParameter::ChecksumFlag(true),
        CParameter::DictIdFlag(false),
    ] {
        // These parameters exist in every zstd release this crate links.
        let _ = context.set_parameter(parameter);
    }
    context
}

impl Codecs {
    /// Prepares `dictionaries` (id, bytes); `current` is the one new writes use and must be
    /// among them.
    pub fn new(dictionaries: &[(u32, Vec<u8>)], current: u32) -> Result<Codecs, String> {
        let decoders = dictionaries.iter().map(|(id, bytes)| (*id, DDict::create(bytes))).collect();
        let bytes = &dictionaries
            .iter()
            .find(|(id, _)| *id == current)
            .ok_or_else(|| format!("the current dictionary {current} is not in the dictionary table"))?
            .1;
        let encoder = CDict::try_create(bytes, COMPRESSION_LEVEL).ok_or("zstd cannot load the dictionary")?;
        Ok(Codecs { decoders, encoder: (current, encoder), body_cache: BodyCache::default() })
    }

    /// Only the built-in dictionary (tests and tools).
    pub fn built_in() -> Codecs {
        Codecs::new(&[(BUILT_IN_DICTIONARY_ID, BUILT_IN_DICTIONARY.to_vec())], BUILT_IN_DICTIONARY_ID)
            .expect("the built-in dictionary loads")
    }

    pub fn current_dictionary(&self) -> u32 {
        self.encoder.0
    }

    /// The stored form of a resource's JSON: compressed with the current dictionary, or plain
    /// when that is not smaller.
    pub fn encode(&self, json: &[u8], hash: ContentHash) -> Vec<u8> {
        let (dictionary, cdict) = &self.encoder;
        let frame = COMPRESSOR.with(|context| {
            let mut context = context.borrow_mut();
            context.ref_cdict(cdict).ok()?;
            let mut frame = Vec::with_capacity(zstd_safe::compress_bound(json.len()));
            let result = context.compress2(&mut frame, json);
            // The context outlives this database's dictionaries: never leave one referenced.
            let _ = context.disable_dictionary();
            result.ok().map(|_| frame)
        });
        match frame {
            Some(frame) if frame.len() + 4 < json.len() => {
                let mut stored = Vec::with_capacity(1 + CONTENT_HASH_LEN + 4 + frame.len());
                stored.push(CODEC_ZSTD);
                stored.extend_from_slice(&hash);
                stored.extend_from_slice(&dictionary.to_be_bytes());
                stored.extend_from_slice(&frame);
                stored
            }
            _ => plain(json, hash),
        }
    }

    /// The JSON of a stored body (empty for a deletion). The error says what is wrong, for the
    /// caller to name the resource.
    pub fn decode(&self, body: StoredBody<'_>) -> Result<Vec<u8>, String> {
        match body {
            StoredBody::Empty => Ok(Vec::new()),
            StoredBody::Legacy(json) | StoredBody::Plain { json, .. } => Ok(json.to_vec()),
            StoredBody::Zstd { dictionary, frame, .. } => {
                let ddict =
                    self.decoders.get(&dictionary).ok_or_else(|| format!("dictionary {dictionary} is missing"))?;
                let size = match zstd_safe::get_frame_content_size(frame) {
                    Ok(Some(size)) if size <= MAX_BODY_BYTES => size as usize,
                    Ok(Some(size)) => return Err(format!("the frame declares {size} bytes, more than any body")),
                    Ok(None) => return Err("the frame does not declare its size".into()),
                    Err(_) => return Err("the compressed frame is damaged or truncated".into()),
                };
                let mut json = Vec::with_capacity(size);
                let written = DECOMPRESSOR.with(|context| {
                    context.borrow_mut().decompress_using_ddict(&mut json, frame, ddict).map_err(|code| {
                        format!("the compressed frame cannot be decoded ({})", zstd_safe::get_error_name(code))
                    })
                })?;
                if written != size {
                    return Err(format!("the frame decodes to {written} bytes, not the {size} it declares"));
                }
                Ok(json)
            }
        }
    }
}

/// The plain (uncompressed) stored form.
pub fn plain(json: &[u8], hash: ContentHash) -> Vec<u8> {
    let mut stored = Vec::with_capacity(1 + CONTENT_HASH_LEN + json.len());
    stored.push(CODEC_PLAIN);
    stored.extend_from_slice(&hash);
    stored.extend_from_slice(json);
    stored
}

/// A hash of what makes two versions "the same content" for a no-op update: the resource without
/// `id`, `meta.versionId` and `meta.lastUpdated` (and without `meta` if nothing else is in it),
/// with object keys in sorted order (key order is irrelevant), numbers as written. Two resources
/// have equal hashes exactly when `fhir::json::same_content` holds for them (up to a collision of
/// 128-bit SHA-256 prefixes, which is not a practical concern).
pub fn content_hash(resource: &Map<String, Value>) -> ContentHash {
    let mut canonical = Vec::with_capacity(1024);
    canonical.push(b'{');
    let mut keys: Vec<&String> = resource.keys().filter(|key| key.as_str() != "id").collect();
    keys.sort();
    let mut first = true;
    for key in keys {
        let value = &resource[key.as_str()];
        // `meta` without the server's fields, and left out if nothing else is in it.
        let meta_rest = match (key.as_str(), value) {
            ("meta", Value::Object(meta)) => {
                let mut rest: Vec<(&String, &Value)> =
                    meta.iter().filter(|(name, _)| !matches!(name.as_str(), "versionId" | "lastUpdated")).collect();
                if rest.is_empty() {
                    continue;
                }
                rest.sort_by(|a, b| a.0.cmp(b.0));
                Some(rest)
            }
            _ => None,
        };
        if !std::mem::take(&mut first) {
            canonical.push(b',');
        }
        write_string(&mut canonical, key);
        canonical.push(b':');
        match meta_rest {
            Some(rest) => write_object(&mut canonical, rest),
            None => write_canonical(&mut canonical, value),
        }
    }
    canonical.push(b'}');
    let digest = Sha256::digest(&canonical);
    let mut hash = [0u8; CONTENT_HASH_LEN];
    hash.copy_from_slice(&digest[..CONTENT_HASH_LEN]);
    hash
}

/// JSON with sorted object keys. Depth is bounded by the input limits every stored resource
/// passed (`max_json_depth`).
fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            write_object(out, entries);
        }
        Value::Array(items) => {
            out.push(b'[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(b',');
                }
                write_canonical(out, item);
            }
            out.push(b']');
        }
        // Writing JSON into a Vec cannot fail.
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

/// An object whose entries are already sorted by key.
fn write_object(out: &mut Vec<u8>, entries: Vec<(&String, &Value)>) {
    out.push(b'{');
    for (index, (key, value)) in entries.into_iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        write_string(out, key);
        out.push(b':');
        write_canonical(out, value);
    }
    out.push(b'}');
}

fn write_string(out: &mut Vec<u8>, text: &str) {
    let _ = serde_json::to_writer(&mut *out, text);
}

/// Trains a dictionary of about `size` bytes on sample bodies (JSON as stored).
pub fn train(samples: &[Vec<u8>], size: usize) -> Result<Vec<u8>, String> {
    zstd::dict::from_samples(samples, size).map_err(|error| format!("zstd could not train a dictionary: {error}"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fhir::json::same_content;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }

    #[test]
    fn bodies_round_trip_and_shrink() {
        let codecs = Codecs::built_in();
        let json = serde_json::to_vec(&json!({"resourceType": "Observation", "id": "o1",
            "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "2951-2"}]},
            "subject": {"reference": "Patient/p1"}, "valueQuantity": {"value": 140, "unit": "mmol/L"}}))
        .unwrap();
        let stored = codecs.encode(&json, [7; 16]);
        assert!(stored.len() < json.len(), "{} >= {}", stored.len(), json.len());
        let parsed = StoredBody::parse(&stored).unwrap();
        assert!(matches!(parsed, StoredBody::Zstd { dictionary: BUILT_IN_DICTIONARY_ID, .. }));
        assert_eq!(parsed.hash(), Some([7; 16]));
        assert_eq!(codecs.decode(parsed).unwrap(), json);
        // Incompressible input is stored plain.
        let tiny = b"{}";
        let stored = codecs.encode(tiny, [1; 16]);
        assert_eq!(StoredBody::parse(&stored).unwrap(), StoredBody::Plain { hash: [1; 16], json: tiny });
        // Format 3 bodies and deletions still read.
        assert_eq!(StoredBody::parse(b"{\"a\":1}").unwrap(), StoredBody::Legacy(b"{\"a\":1}"));
        assert_eq!(StoredBody::parse(b"").unwrap(), StoredBody::Empty);
    }

    #[test]
    fn damaged_bodies_are_errors_not_panics() {
        let codecs = Codecs::built_in();
        let json = serde_json::to_vec(&json!({"resourceType": "Patient", "id": "p1",
            "name": [{"family": "Chalmers", "given": ["Peter", "James"]}], "gender": "male"}))
        .unwrap();
        let stored = codecs.encode(&json, [0; 16]);
        for cut in 0..stored.len() {
            let Ok(body) = StoredBody::parse(&stored[..cut]) else { continue };
            if let StoredBody::Zstd { .. } = body {
                assert!(codecs.decode(body).is_err(), "a body cut at {cut} decoded");
            }
        }
        // Any damaged byte of the frame is noticed (the frame's checksum covers the content).
        for position in 1 + CONTENT_HASH_LEN + 4..stored.len() {
            let mut damaged = stored.clone();
            damaged[position] ^= 0x5A;
            let decoded = codecs.decode(StoredBody::parse(&damaged).unwrap());
            assert!(decoded.is_err(), "damage at byte {position} went unnoticed");
        }
        assert!(StoredBody::parse(&[0x09, 1, 2]).unwrap_err().contains("unknown body codec"));
        // A frame header declaring more than any body could be is refused before allocating.
        let mut huge = vec![0x28, 0xB5, 0x2F, 0xFD, 0xE0];
        huge.extend_from_slice(&(MAX_BODY_BYTES + 1).to_le_bytes());
        huge.extend_from_slice(&[0; 8]);
        let error = codecs.decode(StoredBody::Zstd { hash: [0; 16], dictionary: 1, frame: &huge }).unwrap_err();
        assert_eq!(error, format!("the frame declares {} bytes, more than any body", MAX_BODY_BYTES + 1));
        let mut unknown_dictionary = stored.clone();
        unknown_dictionary[1 + CONTENT_HASH_LEN..1 + CONTENT_HASH_LEN + 4].copy_from_slice(&99u32.to_be_bytes());
        let error = codecs.decode(StoredBody::parse(&unknown_dictionary).unwrap()).unwrap_err();
        assert_eq!(error, "dictionary 99 is missing");
    }

    #[test]
    fn every_official_example_round_trips_byte_for_byte() {
        let codecs = Codecs::built_in();
        let directory = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/examples");
        let mut examples = 0;
        let (mut plain_bytes, mut stored_bytes) = (0, 0);
        for entry in std::fs::read_dir(directory).unwrap() {
            let file = std::fs::read(entry.unwrap().path()).unwrap();
            let resource: Map<String, Value> = serde_json::from_slice(&file).unwrap();
            // As received (pretty-printed) and as Braid stores it (compact).
            for json in [file.clone(), serde_json::to_vec(&resource).unwrap()] {
                let stored = codecs.encode(&json, content_hash(&resource));
                assert_eq!(codecs.decode(StoredBody::parse(&stored).unwrap()).unwrap(), json);
                plain_bytes += json.len();
                stored_bytes += stored.len();
            }
            // The writer hashes a resource as received and stores that hash with the stamped
            // version: stamping must not change it.
            let id = crate::fhir::Id::parse("stamped").unwrap();
            let resource_type = crate::fhir::ResourceType::parse(resource["resourceType"].as_str().unwrap()).unwrap();
            let stamped = crate::fhir::json::stamp(resource.clone(), resource_type, &id, 7, "2026-01-01T00:00:00.000Z");
            assert_eq!(content_hash(&stamped), content_hash(&resource));
            examples += 1;
        }
        assert!(examples >= 150, "{examples} examples");
        assert!(stored_bytes * 4 < plain_bytes, "{plain_bytes} bytes stored in {stored_bytes}");
    }

    #[test]
    fn content_hashes_agree_with_same_content() {
        let a = object(json!({"resourceType": "Patient", "id": "p1", "meta": {"versionId": "1",
            "lastUpdated": "2024-01-01T00:00:00Z"}, "active": true, "name": [{"given": ["A"], "family": "B"}]}));
        let reordered = object(json!({"name": [{"family": "B", "given": ["A"]}], "active": true,
            "resourceType": "Patient", "id": "other", "meta": {}}));
        let changed =
            object(json!({"resourceType": "Patient", "active": true, "name": [{"given": ["A"], "family": "C"}]}));
        let with_profile = object(json!({"resourceType": "Patient", "active": true,
            "meta": {"profile": ["http://x"]}, "name": [{"given": ["A"], "family": "B"}]}));
        let number = object(json!({"resourceType": "Observation", "valueQuantity": {"value": 1.0}}));
        let other_number: Map<String, Value> =
            serde_json::from_str(r#"{"resourceType": "Observation", "valueQuantity": {"value": 1.00}}"#).unwrap();
        for (x, y) in [(&a, &reordered), (&a, &changed), (&a, &with_profile), (&number, &other_number)] {
            assert_eq!(content_hash(x) == content_hash(y), same_content(x, y), "{x:?} vs {y:?}");
        }
        assert_eq!(content_hash(&a), content_hash(&reordered));
        assert_ne!(content_hash(&a), content_hash(&changed));
    }
}
