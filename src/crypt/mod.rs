//! Encryption at rest: the key file an operator keeps, the data key it unwraps, and sealed files
//! (Bulk Data exports, spooled uploads). The database's pages are encrypted by
//! `store::encrypted`, with the same data key.
//!
//! Data is sealed with AES-256-GCM (aws-lc, with the processor's AES instructions) under keys
//! derived from the data key, with a 192-bit nonce stored beside each sealed unit: a random
//! 128-bit prefix drawn each time the data key is loaded, then a 64-bit counter. The prefix selects
//! the GCM key (HKDF-SHA256 of the data key with the prefix), the counter is the GCM nonce. So
//! a (key, nonce) pair is never used twice: within a process by counting, across processes
//! unless two random prefixes collide (about 2^-64 after 2^32 starts), with no state on disk.
//! (A database rewrites its pages billions of times over its life: random 96-bit GCM nonces
//! under one key would not stay safe that long.) Sealing pages with XChaCha20-Poly1305 cost a
//! sixth of the ingest rate; AES-GCM costs a fraction of that.
//!
//! The key file's key wraps the data key with XChaCha20-Poly1305 and a random nonce (a few
//! wraps in a database's life). Every sealed unit has associated data naming what it is and
//! where it belongs, so that a unit moved to another place (another page, another file,
//! another position in a file) fails authentication.

pub mod sealed;

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::hkdf;

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use zeroize::Zeroizing;

/// Bytes of a nonce.
pub const NONCE_BYTES: usize = 24;
/// Bytes of an authentication tag.
pub const TAG_BYTES: usize = 16;
/// Bytes of a key (both the key file's and the data key).
pub const KEY_BYTES: usize = 32;

/// The first word of a key file, so that a file of another kind is not taken for a key.
const KEY_FILE_PREFIX: &str = "braid-encryption-key-v1";

/// Why a key or a sealed unit could not be used. Never holds key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    #[error("{path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// A key-encryption key, read from a key file. It never encrypts data itself: it unwraps the
/// data key kept in the database, so that changing it (`braid rekey`) rewrites one small block.
pub struct KeyFile {
    key: Zeroizing<[u8; KEY_BYTES]>,
}

impl std::fmt::Debug for KeyFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyFile(..)")
    }
}

impl KeyFile {
    /// Writes a new random key to `path`, readable by its owner only. An existing file is never
    /// overwritten: losing a key loses every database it opens.
    pub fn generate(path: &Path) -> Result<(), CryptError> {
        let fail = |reason: String| CryptError::KeyFile { path: path.display().to_string(), reason };
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        fill_random(&mut key[..]);
        let hex = Zeroizing::new(crate::fhir::hex(&key[..]));
        let text = Zeroizing::new(format!("{KEY_FILE_PREFIX} {}\n", hex.as_str()));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).map_err(|error| match error.kind() {
            std::io::ErrorKind::AlreadyExists => fail("exists already; a key file is never overwritten".into()),
            _ => fail(format!("cannot be created: {error}")),
        })?;
        use std::io::Write;
        file.write_all(text.as_bytes()).and_then(|()| file.sync_all()).map_err(|error| fail(error.to_string()))
    }

    /// Reads the key in `path` (as written by [`KeyFile::generate`]). A file that others may
    /// read is used, with a warning in the log.
    pub fn load(path: &Path) -> Result<KeyFile, CryptError> {
        let fail = |reason: &str| CryptError::KeyFile { path: path.display().to_string(), reason: reason.into() };
        let metadata = std::fs::metadata(path).map_err(|error| match error.kind() {
            std::io::ErrorKind::NotFound => fail("there is no such key file"),
            _ => fail("cannot be read"),
        })?;
        if metadata.len() > 4096 {
            return Err(fail("is not a Braid key file (too long)"));
        }
        #[cfg(unix)]
        if std::os::unix::fs::PermissionsExt::mode(&metadata.permissions()) & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the encryption key file may be read by other users; chmod 600 it");
        }
        let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|_| fail("cannot be read as text"))?);
        let hex = text
            .trim()
            .strip_prefix(KEY_FILE_PREFIX)
            .map(str::trim)
            .ok_or_else(|| fail("is not a Braid key file (make one with `braid keygen`)"))?;
        let mut key = Zeroizing::new([0u8; KEY_BYTES]);
        if hex.len() != 2 * KEY_BYTES || !decode_hex(hex, &mut key[..]) {
            return Err(fail("is damaged: the key is not 64 hexadecimal digits"));
        }
        Ok(KeyFile { key })
    }

    /// The key in the file the settings name (`encryption_key_file`), if they name one.
    pub fn load_setting(path: Option<&Path>) -> Result<Option<Arc<KeyFile>>, CryptError> {
        path.map(|path| KeyFile::load(path).map(Arc::new)).transpose()
    }

    /// A key from bytes, for tests.
    pub fn from_bytes(bytes: [u8; KEY_BYTES]) -> KeyFile {
        KeyFile { key: Zeroizing::new(bytes) }
    }

    fn cipher(&self) -> XChaCha20Poly1305 {
        XChaCha20Poly1305::new((&*self.key).into())
    }

    /// Seals the data key under this key: `out` receives nonce, sealed key and tag
    /// ([`WRAPPED_BYTES`]).
    pub fn wrap(&self, data_key: &DataKey, associated: &[u8]) -> [u8; WRAPPED_BYTES] {
        let mut out = [0u8; WRAPPED_BYTES];
        let (nonce, rest) = out.split_at_mut(NONCE_BYTES);
        let (sealed, tag) = rest.split_at_mut(KEY_BYTES);
        sealed.copy_from_slice(&data_key.bytes[..]);
        let mut nonce_bytes = [0u8; NONCE_BYTES];
        fill_random(&mut nonce_bytes);
        let made = seal(&self.cipher(), nonce_bytes, associated, sealed);
        nonce.copy_from_slice(&made.0);
        tag.copy_from_slice(&made.1);
        out
    }

    /// The data key sealed by [`KeyFile::wrap`] with this key, or `None` when this is not the
    /// key it was sealed with (or the bytes were altered).
    pub fn unwrap(&self, wrapped: &[u8; WRAPPED_BYTES], associated: &[u8]) -> Option<DataKey> {
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        bytes.copy_from_slice(&wrapped[NONCE_BYTES..NONCE_BYTES + KEY_BYTES]);
        let nonce: [u8; NONCE_BYTES] = wrapped[..NONCE_BYTES].try_into().expect("sized");
        let tag: [u8; TAG_BYTES] = wrapped[NONCE_BYTES + KEY_BYTES..].try_into().expect("sized");
        open(&self.cipher(), associated, &nonce, &tag, &mut bytes[..]).then(|| DataKey::from(bytes))
    }
}

/// Bytes of a wrapped data key: nonce, key, tag.
pub const WRAPPED_BYTES: usize = NONCE_BYTES + KEY_BYTES + TAG_BYTES;

/// The key that encrypts a database's pages and the files of its server. Random, made once per
/// database; kept in the database wrapped by the key file's key.
#[derive(Clone)]
pub struct DataKey {
    /// Behind an `Arc`: moving a `DataKey` leaves no copy of the key behind.
    bytes: Arc<Zeroizing<[u8; KEY_BYTES]>>,
    /// This process's nonce prefix, its GCM key and counter (shared by the key's clones).
    own: Arc<Session>,
    /// GCM keys of other prefixes met when opening (units sealed by earlier processes).
    others: Arc<RwLock<Vec<PrefixKey>>>,
}

/// A nonce prefix and the GCM key it selects.
type PrefixKey = ([u8; PREFIX_BYTES], Arc<LessSafeKey>);

/// Bytes of a nonce's random prefix; the rest is the counter.
const PREFIX_BYTES: usize = NONCE_BYTES - 8;
/// GCM keys of other prefixes kept at most (each process that wrote adds one; beyond this they
/// are derived again when needed, about a microsecond).
const MAX_OTHER_KEYS: usize = 64;

/// A prefix, the GCM key it selects, and the counter of the nonces sealed with it. Each load of
/// a data key (each `DataKey::from`) draws its own prefix; clones share it. The counter cannot
/// wrap: 2^64 seals would take centuries at any disk's speed.
struct Session {
    prefix: [u8; PREFIX_BYTES],
    key: Arc<LessSafeKey>,
    counter: AtomicU64,
}

/// The GCM key a nonce prefix selects: HKDF-SHA256 of the data key, with the prefix as info.
fn gcm_key(data_key: &[u8; KEY_BYTES], prefix: &[u8; PREFIX_BYTES]) -> LessSafeKey {
    struct Len;
    impl hkdf::KeyType for Len {
        fn len(&self) -> usize {
            KEY_BYTES
        }
    }
    let mut derived = Zeroizing::new([0u8; KEY_BYTES]);
    hkdf::Salt::new(hkdf::HKDF_SHA256, b"braid data key v1")
        .extract(data_key)
        .expand(&[prefix], Len)
        .and_then(|okm| okm.fill(&mut derived[..]))
        .expect("HKDF-SHA256 gives 32 bytes");
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &derived[..]).expect("a 32-byte AES-256 key"))
}

/// The GCM nonce of a stored nonce: four zero bytes, then its counter.
fn gcm_nonce(nonce: &[u8; NONCE_BYTES]) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&nonce[PREFIX_BYTES..]);
    Nonce::assume_unique_for_key(bytes)
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

impl DataKey {
    pub fn random() -> DataKey {
        let mut bytes = Zeroizing::new([0u8; KEY_BYTES]);
        fill_random(&mut bytes[..]);
        DataKey::from(bytes)
    }

    fn from(bytes: Zeroizing<[u8; KEY_BYTES]>) -> DataKey {
        let mut prefix = [0u8; PREFIX_BYTES];
        fill_random(&mut prefix);
        let key = Arc::new(gcm_key(&bytes, &prefix));
        let own = Arc::new(Session { prefix, key, counter: AtomicU64::new(0) });
        DataKey { bytes: Arc::new(bytes), own, others: Arc::default() }
    }

    /// Encrypts `buffer` in place; returns the nonce and tag to keep beside it.
    pub fn seal(&self, associated: &[u8], buffer: &mut [u8]) -> ([u8; NONCE_BYTES], [u8; TAG_BYTES]) {
        let mut nonce = [0u8; NONCE_BYTES];
        nonce[..PREFIX_BYTES].copy_from_slice(&self.own.prefix);
        let count = self.own.counter.fetch_add(1, Ordering::Relaxed);
        nonce[PREFIX_BYTES..].copy_from_slice(&count.to_le_bytes());
        let tag = self
            .own
            .key
            .seal_in_place_separate_tag(gcm_nonce(&nonce), Aad::from(associated), buffer)
            .expect("AES-256-GCM seals any buffer shorter than 64 GiB");
        (nonce, tag.as_ref().try_into().expect("a 16-byte tag"))
    }

    /// Decrypts `buffer` in place; false (and `buffer` unspecified) when it, the nonce, the tag
    /// or the associated data is not what was sealed.
    #[must_use]
    pub fn open(&self, associated: &[u8], nonce: &[u8; NONCE_BYTES], tag: &[u8; TAG_BYTES], buffer: &mut [u8]) -> bool {
        let prefix: &[u8; PREFIX_BYTES] = nonce[..PREFIX_BYTES].try_into().expect("sized");
        let (key, known) = self.key_of(prefix);
        let opened = key.open_in_place_separate_tag(gcm_nonce(nonce), Aad::from(associated), tag, buffer).is_ok();
        if opened && !known {
            self.remember(prefix, key);
        }
        opened
    }

    /// The GCM key of a nonce prefix, and whether it was known (this process's or one met
    /// before) rather than derived now.
    fn key_of(&self, prefix: &[u8; PREFIX_BYTES]) -> (Arc<LessSafeKey>, bool) {
        if *prefix == self.own.prefix {
            return (self.own.key.clone(), true);
        }
        let others = self.others.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some((_, key)) = others.iter().find(|(known, _)| known == prefix) {
            return (key.clone(), true);
        }
        drop(others);
        (Arc::new(gcm_key(&self.bytes, prefix)), false)
    }

    /// Keeps the key of a prefix that opened a unit (a forged prefix never gets in), in place
    /// of the oldest when [`MAX_OTHER_KEYS`] are kept.
    fn remember(&self, prefix: &[u8; PREFIX_BYTES], key: Arc<LessSafeKey>) {
        let mut others = self.others.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if others.iter().any(|(known, _)| known == prefix) {
            return;
        }
        if others.len() >= MAX_OTHER_KEYS {
            others.remove(0);
        }
        others.push((*prefix, key));
    }
}

/// Seals with XChaCha20-Poly1305 (the key file's wrapping of the data key).
fn seal(
    cipher: &XChaCha20Poly1305,
    nonce: [u8; NONCE_BYTES],
    associated: &[u8],
    buffer: &mut [u8],
) -> ([u8; NONCE_BYTES], [u8; TAG_BYTES]) {
    let tag = cipher
        .encrypt_in_place_detached(XNonce::from_slice(&nonce), associated, buffer)
        .expect("XChaCha20-Poly1305 seals any buffer shorter than 256 GiB");
    (nonce, tag.into())
}

fn open(
    cipher: &XChaCha20Poly1305,
    associated: &[u8],
    nonce: &[u8; NONCE_BYTES],
    tag: &[u8; TAG_BYTES],
    buffer: &mut [u8],
) -> bool {
    cipher.decrypt_in_place_detached(XNonce::from_slice(nonce), associated, buffer, Tag::from_slice(tag)).is_ok()
}

/// Fills `out` from the operating system's random source (through aws-lc's generator): the
/// one source of every key, secret, token and nonce prefix Braid makes.
pub fn fill_random(out: &mut [u8]) {
    aws_lc_rs::rand::fill(out).expect("the system random source failed");
}

/// `N` bytes from [`fill_random`].
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    fill_random(&mut bytes);
    bytes
}

/// Whether the file at `path` begins with `magic` (a shorter file does not).
pub fn file_starts_with(path: &Path, magic: &[u8]) -> std::io::Result<bool> {
    use std::io::Read;
    let mut head = Vec::with_capacity(magic.len());
    std::fs::File::open(path)?.take(magic.len() as u64).read_to_end(&mut head)?;
    Ok(head == magic)
}

fn decode_hex(hex: &str, out: &mut [u8]) -> bool {
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    hex.as_bytes().chunks(2).zip(out.iter_mut()).all(|(pair, byte)| match (digit(pair[0]), digit(pair[1])) {
        (Some(high), Some(low)) => {
            *byte = high << 4 | low;
            true
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_file_loads_and_is_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("braid.key");
        KeyFile::generate(&path).unwrap();
        #[cfg(unix)]
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path).unwrap().permissions()) & 0o777,
            0o600
        );
        let key = KeyFile::load(&path).unwrap();
        let before = std::fs::read(&path).unwrap();
        let error = KeyFile::generate(&path).unwrap_err().to_string();
        assert!(error.contains("never overwritten"), "{error}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
        // The key round-trips a data key; another key does not open it.
        let data_key = DataKey::random();
        let wrapped = key.wrap(&data_key, b"context");
        assert!(key.unwrap(&wrapped, b"context").is_some());
        assert!(key.unwrap(&wrapped, b"other context").is_none());
        KeyFile::generate(&dir.path().join("other.key")).unwrap();
        let other = KeyFile::load(&dir.path().join("other.key")).unwrap();
        assert!(other.unwrap(&wrapped, b"context").is_none());
        assert_eq!(format!("{key:?} {data_key:?}"), "KeyFile(..) DataKey(..)");
    }

    #[test]
    fn a_file_that_is_not_a_key_is_refused_without_showing_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let cases: [(&str, &[u8]); 4] = [
            ("secret-looking text", b"hunter2 hunter2\n"),
            ("short", b"braid-encryption-key-v1 abcd\n"),
            ("not hex", b"braid-encryption-key-v1 zz00000000000000000000000000000000000000000000000000000000000000\n"),
            ("long", &[b'a'; 5000]),
        ];
        for (name, content) in cases {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            let error = KeyFile::load(&path).unwrap_err().to_string();
            assert!(!error.contains("hunter2") && !error.contains("zz00"), "{error}");
            assert!(error.contains(name), "names the file: {error}");
        }
        let missing = KeyFile::load(&dir.path().join("missing")).unwrap_err().to_string();
        assert!(missing.contains("no such key file"), "{missing}");
    }

    #[test]
    fn sealed_bytes_open_only_with_their_associated_data_and_unaltered() {
        let key = DataKey::random();
        let mut buffer = *b"Jane Doe, 1970-01-01";
        let (nonce, tag) = key.seal(b"page 7", &mut buffer);
        assert_ne!(&buffer, b"Jane Doe, 1970-01-01");
        let sealed = buffer;
        assert!(key.open(b"page 7", &nonce, &tag, &mut buffer));
        assert_eq!(&buffer, b"Jane Doe, 1970-01-01");
        let mut moved = sealed;
        assert!(!key.open(b"page 8", &nonce, &tag, &mut moved));
        let mut flipped = sealed;
        flipped[3] ^= 1;
        assert!(!key.open(b"page 7", &nonce, &tag, &mut flipped));
        // Another load of the same data key (another process: another nonce prefix) opens it,
        // and its own nonces do not repeat this one's.
        let again = DataKey::from((*key.bytes).clone());
        let mut copy = sealed;
        assert!(again.open(b"page 7", &nonce, &tag, &mut copy));
        assert_eq!(&copy, b"Jane Doe, 1970-01-01");
        let (other_nonce, _) = again.seal(b"page 7", &mut [0u8; 4]);
        assert_ne!(other_nonce[..16], nonce[..16]);
        let (next, _) = key.seal(b"page 7", &mut [0u8; 4]);
        assert_eq!(next[..16], nonce[..16]);
        assert_ne!(next[16..], nonce[16..], "the counter moves on");
        // A forged prefix opens nothing and is not kept; a real one is kept once.
        let mut forged = nonce;
        forged[0] ^= 1;
        assert!(!again.open(b"page 7", &forged, &tag, &mut sealed.clone()));
        assert_eq!(again.others.read().unwrap().len(), 1, "only the prefix that opened a unit");
    }
}
