//! Sealed files: a file Braid writes besides its database (a Bulk Data export, a spooled upload)
//! encrypted with the database's data key, in chunks that can be read in any order.
//!
//! Layout: a 32-byte head (the magic, then a random file id), then chunks of [`CHUNK`] plain
//! bytes, each stored as nonce, tag and ciphertext. The last chunk is shorter (possibly empty)
//! and marked last in its associated data, so that a file cut at a chunk boundary, chunks
//! reordered or copied from another file, or one flipped bit, all fail to read. The associated
//! data also holds the file's context, named by its writer and its reader (an export's job and
//! file name): a whole file put in another's place fails too.

use std::io::{self, Read, Seek, SeekFrom, Write};

use super::{DataKey, NONCE_BYTES, TAG_BYTES};

const MAGIC: &[u8; 16] = b"braid-sealed-v1\n";
const HEAD_BYTES: u64 = 32;
/// Plain bytes per chunk.
pub const CHUNK: usize = 64 * 1024;
const CHUNK_OVERHEAD: usize = NONCE_BYTES + TAG_BYTES;
const STORED_CHUNK: u64 = (CHUNK + CHUNK_OVERHEAD) as u64;

/// A chunk's associated data: its index, whether it is the last, and the file's binding (its
/// random id, then its context).
fn associated(binding: &[u8], index: u64, last: bool) -> Vec<u8> {
    let mut data = Vec::with_capacity(20 + binding.len());
    data.extend_from_slice(b"braid file\0");
    data.extend_from_slice(&index.to_le_bytes());
    data.push(last as u8);
    data.extend_from_slice(binding);
    data
}

fn binding(file_id: &[u8], context: &str) -> Vec<u8> {
    [file_id, context.as_bytes()].concat()
}

/// The context of the sealed file at `path`: its directory's name and its own (an export's job
/// and file name; the spool directory and an upload's name), which its writer and reader both
/// name.
pub fn context_of(path: &std::path::Path) -> String {
    let name = |part: Option<&std::ffi::OsStr>| part.map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{}/{}", name(path.parent().and_then(std::path::Path::file_name)), name(path.file_name()))
}

/// Whether the file at `path` is a sealed file (by its first bytes).
pub fn is_sealed(path: &std::path::Path) -> io::Result<bool> {
    super::file_starts_with(path, MAGIC)
}

/// The plain length of a sealed file of `stored` bytes, or `None` if no sealed file has that
/// length (it was cut short).
pub fn plain_len(stored: u64) -> Option<u64> {
    let body = stored.checked_sub(HEAD_BYTES)?;
    // Every chunk but the last is whole; the last has at least its nonce and tag.
    let last = body % STORED_CHUNK;
    if body < CHUNK_OVERHEAD as u64 || (last != 0 && last < CHUNK_OVERHEAD as u64) {
        return None;
    }
    let chunks = body.div_ceil(STORED_CHUNK);
    Some(body - chunks * CHUNK_OVERHEAD as u64)
}

/// Writes a sealed file; [`SealedWriter::finish`] writes the last chunk. A writer dropped
/// without it leaves a file that does not read (its last chunk is missing).
pub struct SealedWriter<W: Write> {
    inner: W,
    key: DataKey,
    binding: Vec<u8>,
    index: u64,
    buffer: Vec<u8>,
}

impl<W: Write> SealedWriter<W> {
    /// A writer of a file whose reader will name the same `context`.
    pub fn new(mut inner: W, key: &DataKey, context: &str) -> io::Result<SealedWriter<W>> {
        let mut file_id = [0u8; 16];
        super::fill_random(&mut file_id);
        inner.write_all(MAGIC)?;
        inner.write_all(&file_id)?;
        let binding = binding(&file_id, context);
        Ok(SealedWriter { inner, key: key.clone(), binding, index: 0, buffer: Vec::with_capacity(CHUNK) })
    }

    fn seal_buffer(&mut self, last: bool) -> io::Result<()> {
        let (nonce, tag) = self.key.seal(&associated(&self.binding, self.index, last), &mut self.buffer);
        self.inner.write_all(&nonce)?;
        self.inner.write_all(&tag)?;
        self.inner.write_all(&self.buffer)?;
        self.buffer.clear();
        self.index += 1;
        Ok(())
    }

    /// Seals what is left as the last chunk and returns the inner writer, flushed.
    pub fn finish(mut self) -> io::Result<W> {
        self.seal_buffer(true)?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for SealedWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        // A full chunk is sealed only when more data comes: until then it may be the last.
        if self.buffer.len() == CHUNK && !data.is_empty() {
            self.seal_buffer(false)?;
        }
        let taken = data.len().min(CHUNK - self.buffer.len());
        self.buffer.extend_from_slice(&data[..taken]);
        Ok(taken)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Reads a sealed file, with seeking; every chunk is authenticated before any of its bytes is
/// returned, and a failure names the chunk.
pub struct SealedReader<R: Read + Seek> {
    inner: R,
    key: DataKey,
    binding: Vec<u8>,
    plain_len: u64,
    chunks: u64,
    position: u64,
    /// The chunk in `plain`, if any.
    current: Option<u64>,
    plain: Vec<u8>,
}

impl<R: Read + Seek> SealedReader<R> {
    /// A reader of a file written with the same `context`.
    pub fn new(mut inner: R, key: &DataKey, context: &str) -> io::Result<SealedReader<R>> {
        let stored = inner.seek(SeekFrom::End(0))?;
        let plain_len = plain_len(stored).ok_or_else(|| damaged("it is cut short".into()))?;
        inner.seek(SeekFrom::Start(0))?;
        let mut head = [0u8; HEAD_BYTES as usize];
        inner.read_exact(&mut head)?;
        if &head[..16] != MAGIC {
            return Err(damaged("it is not a sealed file".into()));
        }
        let chunks = (stored - HEAD_BYTES).div_ceil(STORED_CHUNK);
        let mut reader = SealedReader {
            inner,
            key: key.clone(),
            binding: binding(&head[16..], context),
            plain_len,
            chunks,
            position: 0,
            current: None,
            plain: Vec::with_capacity(CHUNK),
        };
        // The last chunk says the file is whole: checked before anything is read, so that a
        // file cut short never reads as a shorter one.
        reader.load(chunks - 1)?;
        Ok(reader)
    }

    /// The length of the plain content.
    pub fn plain_len(&self) -> u64 {
        self.plain_len
    }

    fn load(&mut self, index: u64) -> io::Result<()> {
        if self.current == Some(index) {
            return Ok(());
        }
        self.current = None;
        let last = index + 1 == self.chunks;
        let len = if last { self.plain_len - index * CHUNK as u64 } else { CHUNK as u64 } as usize;
        self.inner.seek(SeekFrom::Start(HEAD_BYTES + index * STORED_CHUNK))?;
        let mut nonce = [0u8; NONCE_BYTES];
        let mut tag = [0u8; TAG_BYTES];
        self.inner.read_exact(&mut nonce)?;
        self.inner.read_exact(&mut tag)?;
        self.plain.resize(len, 0);
        self.inner.read_exact(&mut self.plain)?;
        if !self.key.open(&associated(&self.binding, index, last), &nonce, &tag, &mut self.plain) {
            return Err(damaged(format!("chunk {index} fails authentication (altered, or sealed with another key)")));
        }
        self.current = Some(index);
        Ok(())
    }
}

/// Why a sealed file cannot be read, inside the `io::Error` its reader returns: a readers'
/// caller can tell a damaged file of the server's own from bad content (see
/// [`is_damaged`]).
#[derive(Debug)]
pub struct Damaged(String);

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the sealed file cannot be read: {}", self.0)
    }
}

impl std::error::Error for Damaged {}

/// Whether `error` is a sealed file's failure to authenticate (or its being cut short).
pub fn is_damaged(error: &io::Error) -> bool {
    error.get_ref().is_some_and(|inner| inner.is::<Damaged>())
}

fn damaged(reason: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, Damaged(reason))
}

impl<R: Read + Seek> Read for SealedReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.position >= self.plain_len || out.is_empty() {
            return Ok(0);
        }
        let index = self.position / CHUNK as u64;
        self.load(index)?;
        let start = (self.position - index * CHUNK as u64) as usize;
        let taken = out.len().min(self.plain.len() - start);
        out[..taken].copy_from_slice(&self.plain[start..start + taken]);
        self.position += taken as u64;
        Ok(taken)
    }
}

impl<R: Read + Seek> Seek for SealedReader<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(at) => Some(at),
            SeekFrom::End(delta) => self.plain_len.checked_add_signed(delta),
            SeekFrom::Current(delta) => self.position.checked_add_signed(delta),
        };
        self.position =
            target.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of the file"))?;
        Ok(self.position)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn sealed(key: &DataKey, content: &[u8], write_size: usize) -> Vec<u8> {
        let mut writer = SealedWriter::new(Vec::new(), key, "job/Patient-1.ndjson").unwrap();
        for piece in content.chunks(write_size.max(1)) {
            writer.write_all(piece).unwrap();
        }
        writer.finish().unwrap()
    }

    #[test]
    fn content_of_every_length_round_trips_with_reads_and_seeks() {
        let key = DataKey::random();
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17] {
            let content: Vec<u8> = (0..len).map(|i| (i * 31 % 251) as u8).collect();
            let stored = sealed(&key, &content, 1000);
            assert_eq!(plain_len(stored.len() as u64), Some(len as u64), "length {len}");
            let mut reader = SealedReader::new(Cursor::new(&stored), &key, "job/Patient-1.ndjson").unwrap();
            let mut back = Vec::new();
            reader.read_to_end(&mut back).unwrap();
            assert_eq!(back, content, "length {len}");
            if len > 10 {
                reader.seek(SeekFrom::Start(len as u64 - 10)).unwrap();
                let mut tail = Vec::new();
                reader.read_to_end(&mut tail).unwrap();
                assert_eq!(tail, content[len - 10..]);
            }
        }
    }

    #[test]
    fn the_stored_bytes_do_not_contain_the_content() {
        let key = DataKey::random();
        let content = b"{\"name\":[{\"family\":\"Chalmers\"}]}\n".repeat(5000);
        let stored = sealed(&key, &content, 4096);
        assert!(!stored.windows(8).any(|w| w == b"Chalmers"));
    }

    #[test]
    fn cut_flipped_reordered_or_foreign_files_fail_naming_why() {
        let key = DataKey::random();
        let content: Vec<u8> = (0..3 * CHUNK + 5).map(|i| i as u8).collect();
        let stored = sealed(&key, &content, 70_000);
        let read_all = |bytes: &[u8], key: &DataKey| -> io::Result<Vec<u8>> {
            let mut out = Vec::new();
            SealedReader::new(Cursor::new(bytes), key, "job/Patient-1.ndjson")?.read_to_end(&mut out)?;
            Ok(out)
        };
        // Cut at a chunk boundary: the new last chunk was not sealed as the last.
        let cut = &stored[..(HEAD_BYTES + 2 * STORED_CHUNK) as usize];
        assert!(read_all(cut, &key).unwrap_err().to_string().contains("chunk 1"));
        // Cut in the middle of the head.
        assert!(read_all(&stored[..20], &key).unwrap_err().to_string().contains("cut short"));
        let mut flipped = stored.clone();
        flipped[HEAD_BYTES as usize + STORED_CHUNK as usize + 100] ^= 0x40;
        assert!(read_all(&flipped, &key).unwrap_err().to_string().contains("chunk 1 fails authentication"));
        let mut swapped = stored.clone();
        let (first, second) = (HEAD_BYTES as usize, (HEAD_BYTES + STORED_CHUNK) as usize);
        let chunk0 = stored[first..second].to_vec();
        swapped.copy_within(second..second + STORED_CHUNK as usize, first);
        swapped[second..second + STORED_CHUNK as usize].copy_from_slice(&chunk0);
        assert!(read_all(&swapped, &key).is_err());
        assert!(read_all(&stored, &DataKey::random()).unwrap_err().to_string().contains("fails authentication"));
        // Cut inside the last chunk's nonce and tag: no sealed file has that length.
        for cut in 1..40 {
            // The last chunk is 40 + 5 bytes: cut it to 40 - cut.
            let short = &stored[..stored.len() - 5 - cut];
            assert!(is_damaged(&read_all(short, &key).unwrap_err()), "cut {cut}");
        }
        // An empty file's one chunk is authenticated too.
        let empty = sealed(&key, b"", 1);
        let mut forged = empty.clone();
        forged[40] ^= 1;
        assert!(read_all(&forged, &key).unwrap_err().to_string().contains("chunk 0"));
        // A chunk of another file with the same key is refused (the file id differs).
        let other = sealed(&key, &content, 70_000);
        let mut mixed = stored.clone();
        mixed[first..second].copy_from_slice(&other[first..second]);
        assert!(read_all(&mixed, &key).unwrap_err().to_string().contains("chunk 0"));
        assert_eq!(read_all(&stored, &key).unwrap(), content);
        // The whole file read in another file's place (another job's, another name) fails.
        let elsewhere = SealedReader::new(Cursor::new(&stored), &key, "other-job/Patient-1.ndjson");
        assert!(elsewhere.err().unwrap().to_string().contains("fails authentication"));
    }
}
