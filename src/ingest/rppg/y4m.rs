//! YUV4MPEG2 (Y4M) video: a text header, then frames of raw planes (`ffmpeg -i in.mp4
//! -pix_fmt yuv420p out.y4m` makes one from any video). Read frame by frame, never whole;
//! written by the synthetic clip generator.
//!
//! Header parameters: `W` width, `H` height, `F` frame rate `num:den`, `C` colour space
//! (`420jpeg`, `420paldv`, `420mpeg2`, `420`, `422`, `444`, `mono`, and their `p10`/`p12`/`p16`
//! forms with two bytes per sample), `I` interlacing and `A` aspect (ignored), `X` comments
//! (`XCOLORRANGE=FULL` marks full-range samples; limited range is the default, as ffmpeg writes).

use std::io::{BufRead, Read, Write};

use crate::ingest::FormatError;

/// Largest frame side accepted.
pub const MAX_SIDE: usize = 4096;
/// Longest header or frame line accepted, bytes.
const MAX_LINE: usize = 4096;

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Header {
    pub width: usize,
    pub height: usize,
    /// Frames per second.
    pub rate: f64,
    /// Chroma subsampling: the chroma planes are `width >> x_shift` by `height >> y_shift`
    /// (rounded up); `None` for a grey (mono) video.
    pub chroma: Option<(u32, u32)>,
    /// 1 or 2 (little-endian) bytes per sample.
    pub bytes_per_sample: usize,
    /// The largest sample value (255 for 8 bits).
    pub max_value: u32,
    pub full_range: bool,
}

impl Header {
    pub fn chroma_size(&self) -> (usize, usize) {
        match self.chroma {
            Some((x, y)) => (self.width.div_ceil(1 << x), self.height.div_ceil(1 << y)),
            None => (0, 0),
        }
    }

    /// Bytes of one frame's planes.
    pub fn frame_bytes(&self) -> usize {
        let (cw, ch) = self.chroma_size();
        (self.width * self.height + 2 * cw * ch) * self.bytes_per_sample
    }
}

/// Reads one line (up to `\n`, not included), refusing one longer than [`MAX_LINE`]. `None` at
/// the end of the input.
fn read_line(input: &mut impl BufRead, what: &str) -> Result<Option<Vec<u8>>, FormatError> {
    let mut line = Vec::new();
    let read = input.by_ref().take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line).map_err(FormatError::io)?;
    if read == 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(FormatError::new(if line.len() > MAX_LINE {
            format!("the Y4M {what} line is longer than {MAX_LINE} bytes")
        } else {
            format!("the Y4M {what} line is cut off")
        }));
    }
    line.pop();
    Ok(Some(line))
}

/// Parses the stream header.
pub fn read_header(input: &mut impl BufRead) -> Result<Header, FormatError> {
    let head = input.fill_buf().map_err(FormatError::io)?;
    if head.is_empty() {
        return Err(FormatError::new("the file is empty"));
    }
    if !head.starts_with(&b"YUV4MPEG2"[..head.len().min(9)]) {
        return Err(FormatError::new("not a Y4M video (it does not start with YUV4MPEG2)"));
    }
    let line = read_line(input, "header")?.ok_or_else(|| FormatError::new("the file is empty"))?;
    let line = String::from_utf8(line).map_err(|_| FormatError::new("not a Y4M video (its header is not text)"))?;
    let mut parts = line.split(' ');
    if parts.next() != Some("YUV4MPEG2") {
        return Err(FormatError::new("not a Y4M video (it does not start with YUV4MPEG2)"));
    }
    let (mut width, mut height, mut rate) = (None, None, None);
    let mut colour = "420jpeg".to_owned();
    let mut full_range = false;
    for part in parts.filter(|part| !part.is_empty()) {
        let (tag, value) = part.split_at(1);
        match tag {
            "W" => width = value.parse::<usize>().ok(),
            "H" => height = value.parse::<usize>().ok(),
            "F" => {
                let (numerator, denominator) = value.split_once(':').unwrap_or((value, "1"));
                let (numerator, denominator) = (numerator.parse::<f64>().ok(), denominator.parse::<f64>().ok());
                rate = numerator.zip(denominator).filter(|(_, d)| *d > 0.0).map(|(n, d)| n / d);
            }
            "C" => colour = value.to_owned(),
            "X" if value.eq_ignore_ascii_case("COLORRANGE=FULL") => full_range = true,
            _ => {}
        }
    }
    let width = width.filter(|w| (1..=MAX_SIDE).contains(w));
    let height = height.filter(|h| (1..=MAX_SIDE).contains(h));
    let (Some(width), Some(height)) = (width, height) else {
        return Err(FormatError::new(format!("the Y4M header needs a width and height from 1 to {MAX_SIDE}")));
    };
    let rate = rate.filter(|rate| (1.0..=240.0).contains(rate));
    let rate = rate.ok_or_else(|| FormatError::new("the Y4M header needs a frame rate (F) from 1 to 240"))?;
    let (layout, depth) = match colour.split_once('p') {
        Some((layout, depth)) if !layout.is_empty() && depth.chars().all(|c| c.is_ascii_digit()) => {
            (layout, depth.parse::<u32>().unwrap_or(0))
        }
        _ => (colour.as_str(), 8),
    };
    let chroma = match layout {
        "420jpeg" | "420paldv" | "420mpeg2" | "420" => Some((1, 1)),
        "422" => Some((1, 0)),
        "444" => Some((0, 0)),
        "mono" => None,
        _ => return Err(FormatError::new(format!("Y4M colour space C{colour} is not supported"))),
    };
    if !matches!(depth, 8 | 9 | 10 | 12 | 14 | 16) {
        return Err(FormatError::new(format!("Y4M colour space C{colour} has an unsupported bit depth")));
    }
    Ok(Header {
        width,
        height,
        rate,
        chroma,
        bytes_per_sample: if depth > 8 { 2 } else { 1 },
        max_value: (1u32 << depth) - 1,
        full_range,
    })
}

/// Reads the next frame's planes into `frame` (resized to the frame's size). Returns false at
/// the end of the video; a frame cut short is an error.
pub fn read_frame(input: &mut impl BufRead, header: &Header, frame: &mut Vec<u8>) -> Result<bool, FormatError> {
    let Some(line) = read_line(input, "FRAME")? else { return Ok(false) };
    if !line.starts_with(b"FRAME") {
        return Err(FormatError::new("a Y4M frame does not start with FRAME"));
    }
    frame.resize(header.frame_bytes(), 0);
    input.read_exact(frame).map_err(|error| match error.kind() {
        std::io::ErrorKind::UnexpectedEof => FormatError::new("the video's last frame is cut off"),
        _ => FormatError::io(error),
    })?;
    Ok(true)
}

/// Writes an 8-bit 4:2:0 header (`C420jpeg`, full range).
pub fn write_header(out: &mut impl Write, width: usize, height: usize, rate: u32) -> std::io::Result<()> {
    writeln!(out, "YUV4MPEG2 W{width} H{height} F{rate}:1 Ip A1:1 C420jpeg XCOLORRANGE=FULL")
}

/// Converts an RGB frame (8-bit, row by row) to full-range BT.601 4:2:0 and writes it.
pub fn write_frame(out: &mut impl Write, width: usize, height: usize, rgb: &[[u8; 3]]) -> std::io::Result<()> {
    let (cw, ch) = (width.div_ceil(2), height.div_ceil(2));
    let mut planes = vec![0u8; width * height + 2 * cw * ch];
    let (luma, chroma) = planes.split_at_mut(width * height);
    let (cb_plane, cr_plane) = chroma.split_at_mut(cw * ch);
    for (index, &[r, g, b]) in rgb.iter().enumerate() {
        let (r, g, b) = (f64::from(r), f64::from(g), f64::from(b));
        luma[index] = (0.299 * r + 0.587 * g + 0.114 * b).round().clamp(0.0, 255.0) as u8;
    }
    for cy in 0..ch {
        for cx in 0..cw {
            let (mut cb, mut cr, mut count) = (0.0, 0.0, 0.0);
            for (x, y) in [(2 * cx, 2 * cy), (2 * cx + 1, 2 * cy), (2 * cx, 2 * cy + 1), (2 * cx + 1, 2 * cy + 1)] {
                if x < width && y < height {
                    let [r, g, b] = rgb[y * width + x].map(f64::from);
                    cb += 128.0 - 0.168_736 * r - 0.331_264 * g + 0.5 * b;
                    cr += 128.0 + 0.5 * r - 0.418_688 * g - 0.081_312 * b;
                    count += 1.0;
                }
            }
            cb_plane[cy * cw + cx] = (cb / count).round().clamp(0.0, 255.0) as u8;
            cr_plane[cy * cw + cx] = (cr / count).round().clamp(0.0, 255.0) as u8;
        }
    }
    out.write_all(b"FRAME\n")?;
    out.write_all(&planes)
}

/// Mean R, G, B of the mean Y, Cb, Cr of some pixels (BT.601; the conversion is affine, so the
/// mean colour is the colour of the mean samples). Samples scaled to 8 bits.
pub fn rgb_of_mean(y: f64, cb: f64, cr: f64, full_range: bool) -> [f64; 3] {
    let (y, cb, cr) = if full_range {
        (y, cb - 128.0, cr - 128.0)
    } else {
        ((y - 16.0) * 255.0 / 219.0, (cb - 128.0) * 255.0 / 224.0, (cr - 128.0) * 255.0 / 224.0)
    };
    [y + 1.402 * cr, y - 0.344_136 * cb - 0.714_136 * cr, y + 1.772 * cb]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_written_read_back_with_their_colour() {
        let (width, height) = (6, 4);
        let colour = [200u8, 120, 90];
        let mut video = Vec::new();
        write_header(&mut video, width, height, 30).unwrap();
        for _ in 0..3 {
            write_frame(&mut video, width, height, &vec![colour; width * height]).unwrap();
        }
        let mut input = video.as_slice();
        let header = read_header(&mut input).unwrap();
        assert_eq!((header.width, header.height, header.rate, header.chroma), (6, 4, 30.0, Some((1, 1))));
        assert!(header.full_range);
        let mut frame = Vec::new();
        let mut frames = 0;
        while read_frame(&mut input, &header, &mut frame).unwrap() {
            frames += 1;
            let (y, cb, cr) = (f64::from(frame[0]), f64::from(frame[24]), f64::from(frame[30]));
            let rgb = rgb_of_mean(y, cb, cr, true);
            for channel in 0..3 {
                assert!((rgb[channel] - f64::from(colour[channel])).abs() < 2.0, "{rgb:?}");
            }
        }
        assert_eq!(frames, 3);
    }

    #[test]
    fn bad_headers_and_cut_frames_are_refused_with_the_reason() {
        let header = |text: &str| read_header(&mut text.as_bytes()).map_err(|error| error.message);
        assert!(header("RIFF....AVI").unwrap_err().contains("does not start with YUV4MPEG2"));
        assert!(header("YUV4MPEG2 W640 F30:1\n").unwrap_err().contains("width and height"));
        assert!(header("YUV4MPEG2 W99999 H480 F30:1\n").unwrap_err().contains("width and height"));
        assert!(header("YUV4MPEG2 W640 H480 F30:0\n").unwrap_err().contains("frame rate"));
        assert!(header("YUV4MPEG2 W640 H480 F30:1 C411\n").unwrap_err().contains("not supported"));
        assert!(header(&format!("YUV4MPEG2 {}\n", "X".repeat(5000))).unwrap_err().contains("longer than"));
        let parsed = header("YUV4MPEG2 W640 H480 F30000:1001 C420p10\n").unwrap();
        assert_eq!((parsed.bytes_per_sample, parsed.max_value), (2, 1023));
        assert!((parsed.rate - 29.97).abs() < 0.01);
        assert!(!parsed.full_range);
        let mut video = b"YUV4MPEG2 W4 H2 F30:1\nFRAME\n".to_vec();
        video.extend([0u8; 5]);
        let mut input = video.as_slice();
        let parsed = read_header(&mut input).unwrap();
        let error = read_frame(&mut input, &parsed, &mut Vec::new()).unwrap_err();
        assert!(error.message.contains("cut off"), "{}", error.message);
    }
}
