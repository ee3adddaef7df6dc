//! An encrypting redb storage backend: every 4 KiB block of the database is stored sealed with
//! the data key, so that nothing above this file knows the database is encrypted.
//!
//! Physical layout of an encrypted file:
//! - bytes 0..4096, the key block: a magic, then two slots each holding the data key wrapped by
//!   a key file's key with a generation number (`braid rekey` writes the other slot, then wipes
//!   the old one, so that a crash in between leaves one that opens).
//! - then records of [`RECORD`] bytes: nonce, generation, tag, and one sealed 4 KiB block. The
//!   associated data of a block is its number (and generation), so a block moved elsewhere in
//!   the file fails authentication, as does any changed byte.
//! - logical block 0 (redb's header, which redb rewrites in place at every commit) has two
//!   records and is written to the older one, with a higher generation: a write torn by a power
//!   cut leaves the previous header, as if the write had not happened. Every other block is
//!   only rewritten when redb no longer refers to it (copy on write), so a torn write there is
//!   never read back.
//!
//! A record never written (all zeros) is refused when read: redb reads only what it wrote.
//!
//! Limits: a block can be rolled back to an older record of itself (or the whole file to an
//! older copy) without detection; block 0's two copies assume one header write between syncs,
//! which holds in redb's default single-writer mode, the only one Braid uses.

use std::io;
use std::ops::Bound;
use std::sync::{Arc, Mutex};

use redb::{BackendError, StorageBackend};

use crate::crypt::{DataKey, KeyFile, NONCE_BYTES, TAG_BYTES, WRAPPED_BYTES};

/// The first bytes of an encrypted database.
pub const MAGIC: &[u8; 16] = b"braid-encrypted\n";
const LAYOUT_VERSION: u32 = 1;
/// Plain bytes per block (redb's page size).
pub const BLOCK: usize = 4096;
const KEY_BLOCK: u64 = 4096;
const GENERATION_BYTES: usize = 8;
/// Stored bytes per block.
pub const RECORD: usize = NONCE_BYTES + GENERATION_BYTES + TAG_BYTES + BLOCK;
/// Where the key slots are in the key block, and their size.
const SLOTS: [usize; 2] = [512, 1024];
const SLOT_BYTES: usize = 8 + WRAPPED_BYTES;

/// Why an encrypted database cannot be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the encryption key does not open this database (a wrong key file, or a damaged key block)")]
    WrongKey,
    #[error("the database is not encrypted; convert it with `braid encrypt`, or start without an encryption key")]
    NotEncrypted,
    #[error("the encrypted database is damaged: {0}")]
    Damaged(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// Whether the file at `path` is an encrypted Braid database (false for a missing or empty
/// file).
pub fn is_encrypted(path: &std::path::Path) -> io::Result<bool> {
    match crate::crypt::file_starts_with(path, MAGIC) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
        found => found,
    }
}

fn slot_associated(slot: usize, generation: u64) -> [u8; 33] {
    let mut data = [0u8; 33];
    data[..16].copy_from_slice(MAGIC);
    data[16..20].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
    data[20..24].copy_from_slice(&(BLOCK as u32).to_le_bytes());
    data[24..32].copy_from_slice(&generation.to_le_bytes());
    data[32] = slot as u8;
    data
}

fn block_associated(block: u64, generation: u64) -> [u8; 26] {
    let mut data = [0u8; 26];
    data[..10].copy_from_slice(b"braid page");
    data[10..18].copy_from_slice(&block.to_le_bytes());
    data[18..].copy_from_slice(&generation.to_le_bytes());
    data
}

/// Where block `block`'s record is (for block 0, its second copy; the first is at
/// `KEY_BLOCK`).
fn record_offset(block: u64) -> u64 {
    KEY_BLOCK + (block + 1) * RECORD as u64
}

fn stored_len(logical: u64) -> u64 {
    if logical == 0 { KEY_BLOCK } else { record_offset(logical.div_ceil(BLOCK as u64)) }
}

/// redb's header block, kept in memory: it is read at every transaction.
struct HeaderBlock {
    plain: Box<[u8; BLOCK]>,
    generation: u64,
    /// Which of the two records holds `generation`.
    copy: u64,
}

/// The shared state of an encrypting backend (see the module's documentation).
pub struct Pages<B: StorageBackend> {
    inner: B,
    key: DataKey,
    header: Mutex<HeaderBlock>,
    /// Held while a partial block is read, changed and written back.
    partial: Mutex<()>,
}

/// A redb storage backend that encrypts `B`'s contents; cheap to clone (the clone is the same
/// backend, for the commands that change the key block while redb holds the file).
pub struct EncryptedBackend<B: StorageBackend>(Arc<Pages<B>>);

impl<B: StorageBackend> Clone for EncryptedBackend<B> {
    fn clone(&self) -> Self {
        EncryptedBackend(self.0.clone())
    }
}

impl<B: StorageBackend> std::fmt::Debug for EncryptedBackend<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedBackend").field("inner", &self.0.inner).finish_non_exhaustive()
    }
}

fn damaged(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason)
}

impl<B: StorageBackend> EncryptedBackend<B> {
    /// Opens the encrypted storage in `inner` with `key`; an empty `inner` becomes a new
    /// encrypted database with a new random data key.
    pub fn open(inner: B, key: &KeyFile) -> Result<EncryptedBackend<B>, OpenError> {
        let stored = inner.len()?;
        let data_key = if stored == 0 {
            let data_key = DataKey::random();
            let mut block = vec![0u8; KEY_BLOCK as usize];
            block[..16].copy_from_slice(MAGIC);
            block[16..20].copy_from_slice(&LAYOUT_VERSION.to_le_bytes());
            block[20..24].copy_from_slice(&(BLOCK as u32).to_le_bytes());
            write_slot(&mut block, 0, 1, key, &data_key);
            inner.write(0, &block)?;
            inner.sync_data()?;
            data_key
        } else {
            let block = read_key_block(&inner)?;
            let (_, _, data_key) = open_slots(&block, key)?.ok_or(OpenError::WrongKey)?;
            if stored > KEY_BLOCK && (stored - KEY_BLOCK) % RECORD as u64 != 0 {
                return Err(OpenError::Damaged(format!(
                    "its length ({stored} bytes) is not a whole number of blocks: the file was cut short"
                )));
            }
            data_key
        };
        let pages = Pages {
            inner,
            key: data_key,
            header: Mutex::new(HeaderBlock { plain: Box::new([0; BLOCK]), generation: 0, copy: 1 }),
            partial: Mutex::new(()),
        };
        pages.load_header()?;
        Ok(EncryptedBackend(Arc::new(pages)))
    }

    /// Wraps the data key with `new` too, in the other slot, then wipes the slot `old` opens:
    /// afterwards only `new` opens the database. The data is not rewritten.
    pub fn rekey(&self, old: &KeyFile, new: &KeyFile) -> Result<(), OpenError> {
        let inner = &self.0.inner;
        let mut block = read_key_block(inner)?;
        let (slot, generation, data_key) = open_slots(&block, old)?.ok_or(OpenError::WrongKey)?;
        let other = 1 - slot;
        write_slot(&mut block, other, generation + 1, new, &data_key);
        inner.write(SLOTS[other] as u64, &block[SLOTS[other]..SLOTS[other] + SLOT_BYTES])?;
        inner.sync_data()?;
        inner.write(SLOTS[slot] as u64, &[0u8; SLOT_BYTES])?;
        inner.sync_data()?;
        Ok(())
    }

    /// Like redb's `read`, but a block never written reads as zeros, as the file's unused space
    /// does to redb: for copying the whole file (`braid decrypt`), unused space included.
    pub fn read_including_unwritten(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.read(offset, out, true)
    }

    /// The data key, for the files the server seals besides the database.
    pub fn data_key(&self) -> DataKey {
        self.0.key.clone()
    }
}

fn read_key_block<B: StorageBackend>(inner: &B) -> Result<Vec<u8>, OpenError> {
    let stored = inner.len()?;
    let mut block = vec![0u8; KEY_BLOCK.min(stored) as usize];
    inner.read(0, &mut block)?;
    if !block.starts_with(MAGIC) {
        return Err(OpenError::NotEncrypted);
    }
    if stored < KEY_BLOCK {
        return Err(OpenError::Damaged("the file is cut short inside its key block".into()));
    }
    let version = u32::from_le_bytes(block[16..20].try_into().expect("sized"));
    let block_size = u32::from_le_bytes(block[20..24].try_into().expect("sized"));
    if version != LAYOUT_VERSION || block_size != BLOCK as u32 {
        return Err(OpenError::Damaged(format!(
            "its encryption layout is version {version} with {block_size}-byte blocks; this build reads version \
             {LAYOUT_VERSION} with {BLOCK}-byte blocks"
        )));
    }
    Ok(block)
}

fn write_slot(block: &mut [u8], slot: usize, generation: u64, key: &KeyFile, data_key: &DataKey) {
    let at = SLOTS[slot];
    block[at..at + 8].copy_from_slice(&generation.to_le_bytes());
    block[at + 8..at + SLOT_BYTES].copy_from_slice(&key.wrap(data_key, &slot_associated(slot, generation)));
}

/// The slot `key` opens with the highest generation: its index, generation and the data key.
fn open_slots(block: &[u8], key: &KeyFile) -> Result<Option<(usize, u64, DataKey)>, OpenError> {
    let mut best: Option<(usize, u64, DataKey)> = None;
    for (slot, at) in SLOTS.iter().enumerate() {
        let generation = u64::from_le_bytes(block[*at..at + 8].try_into().expect("sized"));
        if generation == 0 {
            continue;
        }
        let wrapped: &[u8; WRAPPED_BYTES] = block[at + 8..at + SLOT_BYTES].try_into().expect("sized");
        if let Some(data_key) = key.unwrap(wrapped, &slot_associated(slot, generation))
            && best.as_ref().is_none_or(|(_, g, _)| generation > *g)
        {
            best = Some((slot, generation, data_key));
        }
    }
    Ok(best)
}

impl<B: StorageBackend> Pages<B> {
    fn logical_len(&self) -> io::Result<u64> {
        let stored = self.inner.len()?;
        Ok(if stored <= record_offset(0) { 0 } else { (stored - record_offset(0)) / RECORD as u64 * BLOCK as u64 })
    }

    /// Reads both records of block 0 and keeps the newer one that authenticates.
    fn load_header(&self) -> Result<(), OpenError> {
        let mut header = self.header.lock().expect("header lock");
        *header = HeaderBlock { plain: Box::new([0; BLOCK]), generation: 0, copy: 1 };
        if self.inner.len()? < record_offset(1) {
            return Ok(());
        }
        let mut records = vec![0u8; 2 * RECORD];
        self.inner.read(KEY_BLOCK, &mut records)?;
        let mut found = false;
        let mut blank = true;
        let mut failed = 0;
        for (copy, record) in records.chunks(RECORD).enumerate() {
            if record.iter().all(|b| *b == 0) {
                continue;
            }
            blank = false;
            let mut plain = Box::new([0u8; BLOCK]);
            match self.open_record(0, record, &mut plain[..]) {
                Some(generation) if !found || generation > header.generation => {
                    *header = HeaderBlock { plain, generation, copy: copy as u64 };
                    found = true;
                }
                Some(_) => {}
                None => failed += 1,
            }
        }
        if !found && !blank {
            return Err(OpenError::Damaged(
                "block 0 (the database header) fails authentication in both copies: the file was altered".into(),
            ));
        }
        if found && failed > 0 && header.generation > 0 {
            // What a power cut during a header write leaves; redb then recovers from the
            // previous commit, as it does when its own header slot is torn.
            tracing::warn!(
                "one copy of the database header fails authentication (a write cut short by a crash, or the file \
                 was altered); using the other"
            );
        }
        Ok(())
    }

    /// Decrypts `record` of block `block` into `out`; its generation, or `None` if it fails
    /// authentication.
    fn open_record(&self, block: u64, record: &[u8], out: &mut [u8]) -> Option<u64> {
        let nonce: &[u8; NONCE_BYTES] = record[..NONCE_BYTES].try_into().expect("sized");
        let generation = u64::from_le_bytes(record[NONCE_BYTES..NONCE_BYTES + 8].try_into().expect("sized"));
        let tag: &[u8; TAG_BYTES] = record[NONCE_BYTES + 8..NONCE_BYTES + 8 + TAG_BYTES].try_into().expect("sized");
        out.copy_from_slice(&record[RECORD - BLOCK..]);
        self.key.open(&block_associated(block, generation), nonce, tag, out).then_some(generation)
    }

    fn seal_record(&self, block: u64, generation: u64, plain: &[u8], record: &mut [u8]) {
        let sealed = &mut record[RECORD - BLOCK..];
        sealed.copy_from_slice(plain);
        let (nonce, tag) = self.key.seal(&block_associated(block, generation), sealed);
        record[..NONCE_BYTES].copy_from_slice(&nonce);
        record[NONCE_BYTES..NONCE_BYTES + 8].copy_from_slice(&generation.to_le_bytes());
        record[NONCE_BYTES + 8..NONCE_BYTES + 8 + TAG_BYTES].copy_from_slice(&tag);
    }

    /// Decrypts blocks `first..first + out.len() / BLOCK` (none of them block 0) into `out`; a
    /// block never written is an error unless `unwritten_as_zeros`.
    fn read_blocks(&self, first: u64, out: &mut [u8], unwritten_as_zeros: bool) -> io::Result<()> {
        let count = out.len() / BLOCK;
        let mut records = vec![0u8; count * RECORD];
        self.inner.read(record_offset(first), &mut records)?;
        self.open_records(first, &records, out, unwritten_as_zeros)
    }

    /// Decrypts `records` (of blocks from `first` on) into `out`, as [`Pages::read_blocks`].
    fn open_records(&self, first: u64, records: &[u8], out: &mut [u8], unwritten_as_zeros: bool) -> io::Result<()> {
        for (i, (record, plain)) in records.chunks(RECORD).zip(out.chunks_mut(BLOCK)).enumerate() {
            let block = first + i as u64;
            if unwritten_as_zeros && record.iter().all(|b| *b == 0) {
                plain.fill(0);
                continue;
            }
            if self.open_record(block, record, plain).is_none() {
                let at = record_offset(block);
                let why = if record.iter().all(|b| *b == 0) { "was never written" } else { "fails authentication" };
                return Err(damaged(format!(
                    "encrypted database block {block} (file bytes {at}..{}) {why}: the file was altered or damaged",
                    at + RECORD as u64
                )));
            }
        }
        Ok(())
    }

    /// Block `block` as it is now (zeros if it was never written), for a partial write.
    fn current_block(&self, block: u64, plain: &mut [u8; BLOCK]) -> io::Result<()> {
        let mut record = vec![0u8; RECORD];
        if record_offset(block) + RECORD as u64 <= self.inner.len()? {
            self.inner.read(record_offset(block), &mut record)?;
        }
        self.open_records(block, &record, &mut plain[..], true)
    }

    fn read(&self, offset: u64, out: &mut [u8], unwritten_as_zeros: bool) -> io::Result<()> {
        let beyond = || io::Error::new(io::ErrorKind::UnexpectedEof, "read beyond the end of the database");
        let end = offset.checked_add(out.len() as u64).ok_or_else(beyond)?;
        // Blocks past the end fail in the inner read; block 0 is read from memory, so its
        // presence is checked here.
        if offset < BLOCK as u64 && self.inner.len()? < record_offset(1) {
            return Err(beyond());
        }
        let mut at = offset;
        while at < end {
            let block = at / BLOCK as u64;
            let within = (at % BLOCK as u64) as usize;
            let out_at = (at - offset) as usize;
            if block == 0 {
                let header = self.header.lock().expect("header lock");
                let taken = (BLOCK - within).min((end - at) as usize);
                out[out_at..out_at + taken].copy_from_slice(&header.plain[within..within + taken]);
                at += taken as u64;
            } else if within == 0 && end - at >= BLOCK as u64 {
                // Whole blocks: decrypted straight into `out`, with one read of their records.
                let whole = ((end - at) / BLOCK as u64) as usize * BLOCK;
                self.read_blocks(block, &mut out[out_at..out_at + whole], unwritten_as_zeros)?;
                at += whole as u64;
            } else {
                let mut plain = [0u8; BLOCK];
                self.read_blocks(block, &mut plain, unwritten_as_zeros)?;
                let taken = (BLOCK - within).min((end - at) as usize);
                out[out_at..out_at + taken].copy_from_slice(&plain[within..within + taken]);
                at += taken as u64;
            }
        }
        Ok(())
    }
}

impl<B: StorageBackend> StorageBackend for EncryptedBackend<B> {
    fn len(&self) -> io::Result<u64> {
        self.0.logical_len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
        self.0.read(offset, out, false)
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        if len % BLOCK as u64 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("an encrypted database grows in whole {BLOCK}-byte blocks, not to {len} bytes"),
            ));
        }
        if len == 0 {
            let mut header = self.0.header.lock().expect("header lock");
            *header = HeaderBlock { plain: Box::new([0; BLOCK]), generation: 0, copy: 1 };
        }
        self.0.inner.set_len(stored_len(len))
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.inner.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let pages = &self.0;
        let end = offset + data.len() as u64;
        let mut at = offset;
        while at < end {
            let block = at / BLOCK as u64;
            let within = (at % BLOCK as u64) as usize;
            let data_at = (at - offset) as usize;
            let taken = (BLOCK - within).min((end - at) as usize);
            if block == 0 {
                let mut header = pages.header.lock().expect("header lock");
                let mut plain = header.plain.clone();
                plain[within..within + taken].copy_from_slice(&data[data_at..data_at + taken]);
                let (generation, copy) = (header.generation + 1, 1 - header.copy);
                let mut record = vec![0u8; RECORD];
                pages.seal_record(0, generation, &plain[..], &mut record);
                pages.inner.write(KEY_BLOCK + copy * RECORD as u64, &record)?;
                *header = HeaderBlock { plain, generation, copy };
                at += taken as u64;
            } else if within == 0 && taken == BLOCK {
                // A run of whole blocks: sealed into one buffer, written at once.
                let whole = ((end - at) / BLOCK as u64) as usize;
                let mut records = vec![0u8; whole * RECORD];
                for (i, (plain, record)) in
                    data[data_at..data_at + whole * BLOCK].chunks(BLOCK).zip(records.chunks_mut(RECORD)).enumerate()
                {
                    pages.seal_record(block + i as u64, 0, plain, record);
                }
                pages.inner.write(record_offset(block), &records)?;
                at += (whole * BLOCK) as u64;
            } else {
                let _held = pages.partial.lock().expect("partial-write lock");
                let mut plain = [0u8; BLOCK];
                pages.current_block(block, &mut plain)?;
                plain[within..within + taken].copy_from_slice(&data[data_at..data_at + taken]);
                let mut record = vec![0u8; RECORD];
                pages.seal_record(block, 0, &plain, &mut record);
                pages.inner.write(record_offset(block), &record)?;
                at += taken as u64;
            }
        }
        Ok(())
    }

    fn close(&self) -> io::Result<()> {
        self.0.inner.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.inner.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.inner.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.inner.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.inner.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.0.inner.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.0.inner.query_lock_range(start, end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// Bytes in memory, shared between clones (a "file" reopened by another backend).
    #[derive(Debug, Clone, Default)]
    struct Memory(Arc<Mutex<Vec<u8>>>);

    impl StorageBackend for Memory {
        fn len(&self) -> io::Result<u64> {
            Ok(self.0.lock().unwrap().len() as u64)
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> io::Result<()> {
            let bytes = self.0.lock().unwrap();
            let end = offset as usize + out.len();
            if end > bytes.len() {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "past the end"));
            }
            out.copy_from_slice(&bytes[offset as usize..end]);
            Ok(())
        }
        fn set_len(&self, len: u64) -> io::Result<()> {
            self.0.lock().unwrap().resize(len as usize, 0);
            Ok(())
        }
        fn sync_data(&self) -> io::Result<()> {
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> io::Result<()> {
            let mut bytes = self.0.lock().unwrap();
            let end = offset as usize + data.len();
            if bytes.len() < end {
                bytes.resize(end, 0);
            }
            bytes[offset as usize..end].copy_from_slice(data);
            Ok(())
        }
    }

    fn key() -> KeyFile {
        KeyFile::from_bytes([9; 32])
    }

    #[test]
    fn random_reads_and_writes_match_a_plain_file_across_reopening() {
        let mut rng = StdRng::seed_from_u64(7);
        let memory = Memory::default();
        let mut backend = EncryptedBackend::open(memory.clone(), &key()).unwrap();
        let mut plain: Vec<u8> = Vec::new();
        for step in 0..400 {
            match rng.random_range(0..10) {
                0 => {
                    let len = BLOCK as u64 * rng.random_range(1..40);
                    backend.set_len(len).unwrap();
                    plain.resize(len as usize, 0);
                }
                1..=5 if !plain.is_empty() => {
                    // redb's writes: whole pages, or the header's first bytes.
                    let (offset, len) = if rng.random_bool(0.3) {
                        (0, rng.random_range(1..BLOCK))
                    } else {
                        let first = rng.random_range(0..plain.len() / BLOCK);
                        let count = rng.random_range(1..=(plain.len() / BLOCK - first).min(5));
                        (first * BLOCK, count * BLOCK)
                    };
                    let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                    backend.write(offset as u64, &data).unwrap();
                    plain[offset..offset + len].copy_from_slice(&data);
                }
                6 => {
                    backend = EncryptedBackend::open(memory.clone(), &key()).unwrap();
                }
                _ if !plain.is_empty() => {
                    let offset = rng.random_range(0..plain.len());
                    let len = rng.random_range(1..=(plain.len() - offset).min(3 * BLOCK));
                    let mut out = vec![0u8; len];
                    match backend.read(offset as u64, &mut out) {
                        Ok(()) => assert_eq!(out, plain[offset..offset + len], "step {step}"),
                        // Blocks never written are refused, never read as zeros.
                        Err(error) => assert!(error.to_string().contains("never written"), "step {step}: {error}"),
                    }
                }
                _ => {}
            }
            assert_eq!(backend.len().unwrap(), plain.len() as u64);
        }
        assert!(backend.read(plain.len() as u64, &mut [0u8; 1]).is_err(), "a read past the end fails");
    }

    /// A database of three written blocks, and its stored bytes.
    fn written() -> (Memory, Vec<u8>) {
        let memory = Memory::default();
        let backend = EncryptedBackend::open(memory.clone(), &key()).unwrap();
        backend.set_len(3 * BLOCK as u64).unwrap();
        let data: Vec<u8> = (0..3 * BLOCK).map(|i| (i % 253) as u8).collect();
        backend.write(0, &data).unwrap();
        (memory, data)
    }

    #[test]
    fn any_changed_byte_of_a_block_is_refused_naming_the_block() {
        let (memory, data) = written();
        let stored = memory.0.lock().unwrap().clone();
        // Every part of block 2's record: nonce, generation, tag, ciphertext.
        let record = record_offset(2) as usize;
        for at in [0, NONCE_BYTES, NONCE_BYTES + 8, NONCE_BYTES + 8 + TAG_BYTES, RECORD - 1] {
            let mut altered = stored.clone();
            altered[record + at] ^= 0x01;
            let backend = EncryptedBackend::open(Memory(Arc::new(Mutex::new(altered))), &key()).unwrap();
            let mut out = vec![0u8; BLOCK];
            let error = backend.read(2 * BLOCK as u64, &mut out).unwrap_err().to_string();
            assert!(error.contains("block 2") && error.contains("fails authentication"), "byte {at}: {error}");
            // The other blocks still read.
            backend.read(BLOCK as u64, &mut out).unwrap();
            assert_eq!(out, data[BLOCK..2 * BLOCK]);
        }
        // Blocks 1 and 2 swapped: each fails where it now lies.
        let mut swapped = stored.clone();
        let (one, two) = (record_offset(1) as usize, record_offset(2) as usize);
        let first = stored[one..one + RECORD].to_vec();
        swapped.copy_within(two..two + RECORD, one);
        swapped[two..two + RECORD].copy_from_slice(&first);
        let backend = EncryptedBackend::open(Memory(Arc::new(Mutex::new(swapped))), &key()).unwrap();
        assert!(backend.read(BLOCK as u64, &mut [0u8; 10]).is_err());
    }

    #[test]
    fn a_torn_header_write_leaves_the_previous_header_and_two_damaged_copies_are_refused() {
        let (memory, data) = written();
        let backend = EncryptedBackend::open(memory.clone(), &key()).unwrap();
        backend.write(0, &[0xEE; 100]).unwrap();
        let newer = backend.0.header.lock().unwrap().copy;
        // The power goes while the newer copy is written: half of it is garbage.
        let at = (KEY_BLOCK + newer * RECORD as u64) as usize;
        memory.0.lock().unwrap()[at + RECORD / 2..at + RECORD].fill(0x55);
        let reopened = EncryptedBackend::open(memory.clone(), &key()).unwrap();
        let mut header = vec![0u8; 100];
        reopened.read(0, &mut header).unwrap();
        assert_eq!(header, data[..100], "the header before the torn write");
        let older = (KEY_BLOCK + (1 - newer) * RECORD as u64) as usize;
        memory.0.lock().unwrap()[older + 30] ^= 1;
        let error = EncryptedBackend::open(memory, &key()).err().unwrap().to_string();
        assert!(error.contains("block 0") && error.contains("both copies"), "{error}");
    }

    #[test]
    fn a_wrong_key_a_plain_file_and_a_cut_file_are_refused_at_open() {
        let (memory, _) = written();
        let error = EncryptedBackend::open(memory.clone(), &KeyFile::from_bytes([1; 32])).err().unwrap();
        assert!(matches!(error, OpenError::WrongKey), "{error}");
        let plain = Memory(Arc::new(Mutex::new(b"redb\x1a\x0a\xa9\x0d\x0a".repeat(1000))));
        assert!(matches!(EncryptedBackend::open(plain, &key()).err().unwrap(), OpenError::NotEncrypted));
        let mut cut = memory.0.lock().unwrap().clone();
        cut.truncate(cut.len() - 100);
        let error = EncryptedBackend::open(Memory(Arc::new(Mutex::new(cut))), &key()).err().unwrap().to_string();
        assert!(error.contains("cut short"), "{error}");
        let head = memory.0.lock().unwrap()[..2000].to_vec();
        let error = EncryptedBackend::open(Memory(Arc::new(Mutex::new(head))), &key()).err().unwrap().to_string();
        assert!(error.contains("cut short inside its key block"), "{error}");
    }

    #[test]
    fn the_stored_bytes_hold_no_plain_block_and_a_rekey_crash_leaves_a_key_that_opens() {
        let memory = Memory::default();
        let backend = EncryptedBackend::open(memory.clone(), &key()).unwrap();
        backend.set_len(2 * BLOCK as u64).unwrap();
        let text = b"Margaret Hamilton, MRN 0042, glucose 5.4 mmol/L ".repeat(200);
        backend.write(0, &text[..2 * BLOCK]).unwrap();
        let stored = memory.0.lock().unwrap().clone();
        assert!(!stored.windows(9).any(|w| w == b"Margaret "));
        // Rekey: the new key opens, the old does not; the blocks are unchanged.
        let new = KeyFile::from_bytes([2; 32]);
        backend.rekey(&key(), &new).unwrap();
        assert_eq!(memory.0.lock().unwrap()[KEY_BLOCK as usize..], stored[KEY_BLOCK as usize..]);
        assert!(matches!(EncryptedBackend::open(memory.clone(), &key()).err().unwrap(), OpenError::WrongKey));
        let reopened = EncryptedBackend::open(memory.clone(), &new).unwrap();
        let mut out = vec![0u8; 2 * BLOCK];
        reopened.read(0, &mut out).unwrap();
        assert_eq!(out, text[..2 * BLOCK]);
        // A crash after the new slot was written but before the old was wiped: both open.
        let before_wipe = {
            let mut block = stored[..KEY_BLOCK as usize].to_vec();
            let (slot, generation, data_key) = open_slots(&block, &key()).unwrap().unwrap();
            write_slot(&mut block, 1 - slot, generation + 1, &new, &data_key);
            block
        };
        memory.0.lock().unwrap()[..KEY_BLOCK as usize].copy_from_slice(&before_wipe);
        assert!(EncryptedBackend::open(memory.clone(), &key()).is_ok());
        assert!(EncryptedBackend::open(memory, &new).is_ok());
    }
}
