//! Power loss: the store runs on a simulated disk that keeps only what was synced. At a random
//! write the power is cut; every write since the last `sync_data` is then kept, dropped or torn
//! at a random byte, as a disk cache losing power would. The database reopened from that image
//! must hold every acknowledged write, and its search indexes must agree with its versions.
//!
//! Unlike the SIGKILL test (`crash.rs`), which leaves the operating system's page cache intact,
//! this catches a missing or misordered fsync.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use braid::crypt::KeyFile;
use braid::fhir::{Id, ResourceType};
use braid::search::SearchIndexer;
use braid::store::encrypted::EncryptedBackend;
use braid::store::{Action, Precondition, Store, StoreOptions, Target, WriteRequest};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

#[derive(Debug)]
enum Pending {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Debug, Default)]
struct DiskState {
    /// What survives a power cut for sure: the contents at the last `sync_data`.
    durable: Vec<u8>,
    /// What reads see: `durable` plus the pending operations.
    volatile: Vec<u8>,
    pending: Vec<Pending>,
    /// Backend writes left before the power is cut; `None`: never.
    writes_left: Option<usize>,
    cut: bool,
}

/// A redb storage backend in memory that simulates a disk with a volatile write cache.
#[derive(Debug, Clone)]
struct Disk(Arc<Mutex<DiskState>>);

impl Disk {
    fn new(image: Vec<u8>, writes_left: Option<usize>) -> Disk {
        Disk(Arc::new(Mutex::new(DiskState {
            durable: image.clone(),
            volatile: image,
            writes_left,
            ..DiskState::default()
        })))
    }

    /// The image a power cut leaves: the synced contents, then each pending operation in order,
    /// each write kept, dropped or torn.
    fn image_after_power_loss(&self, rng: &mut StdRng) -> Vec<u8> {
        let state = self.0.lock().unwrap();
        let mut image = state.durable.clone();
        for pending in &state.pending {
            match pending {
                Pending::SetLen(len) => image.resize(*len as usize, 0),
                Pending::Write(offset, data) => {
                    let kept = match rng.random_range(0..10) {
                        0..4 => data.len(),
                        4..8 => 0,
                        _ => rng.random_range(0..data.len().max(1)),
                    };
                    let end = *offset as usize + kept;
                    if image.len() < end {
                        image.resize(end, 0);
                    }
                    image[*offset as usize..end].copy_from_slice(&data[..kept]);
                }
            }
        }
        image
    }
}

fn power_cut() -> io::Error {
    io::Error::other("the power is cut")
}

impl redb::StorageBackend for Disk {
    fn len(&self) -> Result<u64, io::Error> {
        let state = self.0.lock().unwrap();
        if state.cut {
            return Err(power_cut());
        }
        Ok(state.volatile.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let state = self.0.lock().unwrap();
        if state.cut {
            return Err(power_cut());
        }
        let end = offset as usize + out.len();
        if end > state.volatile.len() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end"));
        }
        out.copy_from_slice(&state.volatile[offset as usize..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut state = self.0.lock().unwrap();
        if state.cut {
            return Err(power_cut());
        }
        state.volatile.resize(len as usize, 0);
        state.pending.push(Pending::SetLen(len));
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut state = self.0.lock().unwrap();
        if state.cut {
            return Err(power_cut());
        }
        state.durable = state.volatile.clone();
        state.pending.clear();
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut state = self.0.lock().unwrap();
        if state.cut {
            return Err(power_cut());
        }
        if let Some(left) = state.writes_left.as_mut() {
            if *left == 0 {
                state.cut = true;
                return Err(power_cut());
            }
            *left -= 1;
        }
        let end = offset as usize + data.len();
        if state.volatile.len() < end {
            state.volatile.resize(end, 0);
        }
        state.volatile[offset as usize..end].copy_from_slice(data);
        state.pending.push(Pending::Write(offset, data.to_vec()));
        Ok(())
    }
}

fn options() -> StoreOptions {
    StoreOptions { cache_bytes: 4 << 20, gc_interval: std::time::Duration::ZERO, ..StoreOptions::default() }
}

fn put(resource_type: &str, id: &str, body: Value) -> WriteRequest {
    let Value::Object(resource) = body else { unreachable!("bodies are objects") };
    WriteRequest::single(Action::Update {
        resource_type: ResourceType::parse(resource_type).unwrap(),
        target: Target::Id(Id::parse(id).unwrap()),
        resource,
        precondition: Precondition::default(),
    })
}

/// The last acknowledged state of one resource, and whether a later write was in flight when
/// the power went (its outcome is unknown: it may or may not have been committed).
#[derive(Debug, Clone)]
struct Acknowledged {
    version: u64,
    body: Option<Value>,
    in_flight: bool,
}

/// One writer: updates (and now and then deletes) its own resources until a write fails.
async fn write_until_power_cut(store: Store, writer: usize, seed: u64) -> HashMap<(String, String), Acknowledged> {
    let mut rng = StdRng::seed_from_u64(seed ^ writer as u64);
    let mut acknowledged: HashMap<(String, String), Acknowledged> = HashMap::new();
    for n in 0.. {
        let slot = rng.random_range(0..4);
        let (resource_type, id) =
            if slot < 3 { ("Patient", format!("w{writer}p{slot}")) } else { ("Observation", format!("w{writer}o")) };
        let key = (resource_type.to_owned(), id.clone());
        let (request, body) = if rng.random_range(0..10) == 0 {
            let request = WriteRequest::single(Action::Delete {
                resource_type: ResourceType::parse(resource_type).unwrap(),
                target: Target::Id(Id::parse(&id).unwrap()),
                precondition: Precondition::default(),
            });
            (request, None)
        } else if resource_type == "Patient" {
            let body = json!({"resourceType": "Patient", "id": id, "name": [{"family": format!("Fam{writer}x{n}"), "given": ["Power"]}],
                "identifier": [{"system": "urn:power", "value": format!("{writer}-{n}")}], "birthDate": "1970-01-01"});
            (put(resource_type, &id, body.clone()), Some(body))
        } else {
            let body = json!({"resourceType": "Observation", "id": id, "status": "final", "code": {"text": format!("n{n}")},
                "subject": {"reference": format!("Patient/w{writer}p0")}, "valueQuantity": {"value": n, "unit": "1"}});
            (put(resource_type, &id, body.clone()), Some(body))
        };
        match store.write(request).await {
            Ok(outcomes) => {
                let outcome = &outcomes[0];
                if let Some(version) = outcome.version {
                    acknowledged.insert(key, Acknowledged { version, body, in_flight: false });
                }
            }
            Err(_) => {
                acknowledged.entry(key).or_insert(Acknowledged { version: 0, body: None, in_flight: true }).in_flight =
                    true;
                return acknowledged;
            }
        }
    }
    unreachable!("the loop ends at the power cut")
}

fn without_meta(value: &Value) -> Value {
    let mut copy = value.clone();
    copy.as_object_mut().unwrap().remove("meta");
    copy
}

#[actix_web::test]
async fn every_acknowledged_write_survives_a_power_cut_and_the_indexes_agree() {
    survive_power_cuts(None).await;
}

/// The same with the database encrypted: a torn write of an encrypted block must not lose
/// what redb's own recovery would keep (see `store::encrypted` on the header block).
#[actix_web::test]
async fn every_acknowledged_write_survives_a_power_cut_with_encryption_on() {
    survive_power_cuts(Some(KeyFile::from_bytes(*KEY_BYTES))).await;
}

const KEY_BYTES: &[u8; 32] = &[0x5a; 32];

/// Opens the store on `disk`, through the encrypting backend when there is a key.
fn open(disk: Disk, key: Option<&KeyFile>) -> Result<Store, String> {
    match key {
        None => Store::open_with_backend(disk, options(), Arc::new(SearchIndexer)).map_err(|e| e.to_string()),
        Some(key) => {
            let backend = EncryptedBackend::open(disk, key).map_err(|e| e.to_string())?;
            // Without quick repair: an encrypted database's writer commits in two phases all the
            // same (a torn encrypted page cannot be recovered from by one-phase checksums), which
            // the key in the options tells it.
            let options = StoreOptions {
                quick_repair: false,
                encryption_key: Some(Arc::new(KeyFile::from_bytes(*KEY_BYTES))),
                ..options()
            };
            Store::open_with_backend(backend, options, Arc::new(SearchIndexer)).map_err(|e| e.to_string())
        }
    }
}

async fn survive_power_cuts(key: Option<KeyFile>) {
    let key = key.as_ref();
    for seed in 0..8u64 {
        let mut rng = StdRng::seed_from_u64(seed);
        // Some history first, synced; then the cut comes after a random number of writes.
        let disk = Disk::new(Vec::new(), Some(rng.random_range(200..4000)));
        let store = open(disk.clone(), key).unwrap();
        let writers: Vec<_> = (0..4).map(|w| write_until_power_cut(store.clone(), w, seed)).collect();
        let results = futures_util::future::join_all(writers).await;
        drop(store);
        let acknowledged: HashMap<_, _> = results.into_iter().flatten().collect();
        let written: usize = acknowledged.values().filter(|a| a.version > 0).count();
        assert!(written > 0, "seed {seed}: nothing was acknowledged before the cut");

        let image = disk.image_after_power_loss(&mut rng);
        if key.is_some() {
            let plain_text: [&[u8]; 3] = [b"urn:power", b"Power", b"power"];
            for text in plain_text {
                assert!(!image.windows(text.len()).any(|w| w == text), "seed {seed}: {text:?} in the encrypted image");
            }
        }
        let store = open(Disk::new(image, None), key)
            .unwrap_or_else(|e| panic!("seed {seed}: the database does not open after the power cut: {e}"));
        let snapshot = store.snapshot().unwrap();
        for ((resource_type, id), expected) in &acknowledged {
            let current = snapshot.current(ResourceType::parse(resource_type).unwrap(), id).unwrap();
            let found = current.as_ref().map_or(0, |c| c.version);
            let allowed = if expected.in_flight {
                expected.version..=expected.version + 1
            } else {
                expected.version..=expected.version
            };
            assert!(
                allowed.contains(&found),
                "seed {seed}: {resource_type}/{id} is at version {found}, acknowledged {expected:?}"
            );
            if expected.version == 0 {
                continue;
            }
            let acknowledged_version =
                snapshot.version(ResourceType::parse(resource_type).unwrap(), id, expected.version).unwrap().unwrap();
            match &expected.body {
                None => {
                    assert!(acknowledged_version.is_deleted(), "seed {seed}: {resource_type}/{id} should be deleted")
                }
                Some(body) => {
                    let stored: Value = serde_json::from_slice(&acknowledged_version.body).unwrap();
                    assert_eq!(without_meta(&stored), *body, "seed {seed}: {resource_type}/{id} v{}", expected.version);
                }
            }
        }
        let report = store.verify(&SearchIndexer).unwrap();
        assert!(report.is_consistent(), "seed {seed}: the indexes disagree with the versions: {:?}", report.problems);
        drop(snapshot);

        // The recovered database takes writes again.
        let outcome =
            store.write(put("Patient", "after", json!({"resourceType": "Patient", "id": "after"}))).await.unwrap();
        assert_eq!(outcome[0].version, Some(1));
    }
}
