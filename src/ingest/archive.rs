//! Members of the zip archives that exports come in, read with a bound on how much they may
//! grow: a crafted deflate stream expands about a thousandfold (a "zip bomb"), while real
//! exports (XML, JSON, CSV) expand 10 to 30 times. A member that grows past the bound fails its
//! next read with a message naming the bound, which the readers report like a damaged file.

use std::io::{Read, Seek};

use super::FormatError;

/// Most bytes a member may decompress to per compressed byte.
pub const MAX_RATIO: u64 = 200;
/// Allowed on top of the ratio, so that small members are never refused for it.
const SLACK: u64 = 1 << 20;

/// Member `index` of `archive`, bounded to [`MAX_RATIO`] times its compressed size.
pub fn member<R: Read + Seek>(
    archive: &mut zip::ZipArchive<R>,
    index: usize,
) -> Result<Bounded<zip::read::ZipFile<'_, R>>, FormatError> {
    let entry = archive.by_index(index).map_err(|error| FormatError::new(format!("cannot be read: {error}")))?;
    let left = entry.compressed_size().saturating_mul(MAX_RATIO).saturating_add(SLACK);
    Ok(Bounded { inner: entry, left })
}

/// A member's reader that fails once more than its bound has been read.
pub struct Bounded<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buffer: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 && !buffer.is_empty() {
            // More than the bound would follow only if the member goes on: check one byte.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the member decompresses to more than {MAX_RATIO} times its compressed size (refused as a zip bomb)"
                ),
            ));
        }
        let wanted = buffer.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let count = self.inner.read(&mut buffer[..wanted])?;
        self.left -= count as u64;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn archive(content: &[u8]) -> zip::ZipArchive<std::io::Cursor<Vec<u8>>> {
        let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        writer.start_file("data.json", options).unwrap();
        writer.write_all(content).unwrap();
        zip::ZipArchive::new(std::io::Cursor::new(writer.finish().unwrap().into_inner())).unwrap()
    }

    /// The bound: 8 MB of one repeated byte deflates about a thousandfold, past the ratio; it is
    /// refused after the bound, while a member within it reads whole.
    #[test]
    fn a_member_that_grows_past_the_ratio_is_refused_after_the_bound() {
        let mut bomb = archive(&vec![b'x'; 8 << 20]);
        let mut text = Vec::new();
        let error = member(&mut bomb, 0).unwrap().read_to_end(&mut text).unwrap_err();
        assert!(error.to_string().contains("refused as a zip bomb"), "{error}");
        let compressed = bomb.by_index(0).unwrap().compressed_size();
        assert_eq!(text.len() as u64, compressed * MAX_RATIO + SLACK);
        let content: Vec<u8> = (0..200_000u32).flat_map(|n| format!("{{\"n\": {n}}}\n").into_bytes()).collect();
        let mut fine = archive(&content);
        let mut text = Vec::new();
        member(&mut fine, 0).unwrap().read_to_end(&mut text).unwrap();
        assert_eq!(text, content);
    }
}
