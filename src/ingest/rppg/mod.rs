//! Remote photoplethysmography: heart rate and breathing rate from the colour of facial skin.
//!
//! Two inputs: a Y4M video (the face is found and followed frame by frame, see [`skin`]), or a
//! trace of the per-frame mean skin colour with timestamps, which is what a browser or phone
//! computes on the device so that the video never leaves it. Either becomes an evenly sampled
//! [`Trace`], from which [`signal`] extracts the pulse (POS by default; CHROM and GREEN for
//! comparison) and the breathing. A reading is given only when its spectral signal-to-noise
//! ratio reaches [`MIN_PULSE_SNR_DB`]: a clip without a pulse (or too dark, or too shaken) gives
//! none, with the reason.
//!
//! Trace formats:
//! - JSON: `{"start": "2024-01-01T08:00:00Z", "device": "Pixel 8 front camera", "frames":
//!   [{"t": 0.0, "r": 151.2, "g": 108.4, "b": 92.0}, …]}` (`t` in seconds from the start;
//!   `start` and `device` optional), or the `frames` array alone, or frames as `[t, r, g, b]`.
//! - CSV: a header naming `t` (or `time`, seconds; or `timestamp_ms`), `r`, `g` and `b`, then
//!   one row per frame.

pub mod signal;
pub mod skin;
pub mod synth;
pub mod y4m;

use std::io::{BufRead, Read};

use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use signal::{Method, Rate};

use super::observation::{Device, Measured, Reading, SignalQuality, When};
use super::vitals::{Kind, Problem};
use super::{FormatError, Record};

/// The least spectral SNR of the pulse for a reading to be given, dB.
pub const MIN_PULSE_SNR_DB: f64 = -1.0;
/// The shortest clip that can give a reading, seconds: a few breaths and enough beats to
/// resolve the pulse to a beat per minute.
pub const MIN_SECONDS: f64 = 10.0;
/// The longest clip read, seconds (frames past it are refused).
pub const MAX_SECONDS: f64 = 300.0;
/// The evenly spaced rate a trace is resampled to when its own is irregular, and the bounds
/// of accepted rates.
const RATE_BOUNDS: (f64, f64) = (8.0, 120.0);
/// Most frames in a trace file.
const MAX_TRACE_FRAMES: usize = (MAX_SECONDS * RATE_BOUNDS.1) as usize;

/// The skin's mean colour, evenly sampled.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    /// Samples per second.
    pub rate: f64,
    /// Mean R, G, B (0 to 255) per sample.
    pub rgb: Vec<[f64; 3]>,
    /// When the first sample was taken, if known.
    pub start: Option<OffsetDateTime>,
    /// The camera, if the input names it.
    pub device: Option<String>,
}

impl Trace {
    pub fn seconds(&self) -> f64 {
        self.rgb.len() as f64 / self.rate
    }
}

/// What a clip yields.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    pub method: Method,
    /// The pulse's rate and quality, whether or not it reaches [`MIN_PULSE_SNR_DB`].
    pub pulse: Option<Rate>,
    pub breathing: Option<Rate>,
}

impl Estimate {
    /// The heart rate, when the signal is clean enough to give one.
    pub fn heart_rate(&self) -> Option<Rate> {
        self.pulse.filter(|rate| rate.snr_db >= MIN_PULSE_SNR_DB)
    }
}

/// Heart rate and breathing rate of a trace by `method`.
pub fn estimate(trace: &Trace, method: Method) -> Result<Estimate, Problem> {
    if trace.seconds() < MIN_SECONDS {
        return Err(Problem::new(format!(
            "the clip lasts {:.1} s; at least {MIN_SECONDS} s are needed",
            trace.seconds()
        )));
    }
    let pulse_signal = signal::pulse_signal(&trace.rgb, trace.rate, method);
    let pulse = signal::pulse_rate(&pulse_signal, trace.rate);
    let breathing = match pulse {
        Some(rate) if rate.snr_db >= MIN_PULSE_SNR_DB => {
            signal::breathing_rate(&signal::breathing_signals(&trace.rgb, trace.rate, &pulse_signal), trace.rate)
        }
        _ => None,
    };
    Ok(Estimate { method, pulse, breathing })
}

/// Reads a Y4M video into its skin-colour trace.
pub fn read_video(mut input: impl BufRead) -> Result<Trace, FormatError> {
    let header = y4m::read_header(&mut input)?;
    if header.chroma.is_none() {
        return Err(FormatError::new("the video is grey (Cmono): skin is told by its colour"));
    }
    let max_frames = (MAX_SECONDS * header.rate) as usize;
    let mut tracker = skin::Tracker::new();
    let mut frame = Vec::new();
    let mut frames = 0;
    while y4m::read_frame(&mut input, &header, &mut frame)? {
        frames += 1;
        if frames > max_frames {
            return Err(FormatError::new(format!("the video is longer than {MAX_SECONDS} s")));
        }
        tracker.add(&header, &frame);
    }
    tracker.finish(header.rate).map_err(|problem| FormatError::new(problem.reason))
}

/// Reads a trace file (JSON or CSV, see the module's documentation), resampled evenly.
pub fn read_trace(mut input: impl BufRead) -> Result<Trace, FormatError> {
    let mut text = String::new();
    // A trace is small (a number per channel per frame): bounded, then parsed whole.
    let limit = (MAX_TRACE_FRAMES * 64) as u64;
    input.by_ref().take(limit + 1).read_to_string(&mut text).map_err(FormatError::io)?;
    if text.len() as u64 > limit {
        return Err(FormatError::new(format!("the trace is larger than {limit} bytes")));
    }
    let trimmed = text.trim_start_matches('\u{feff}').trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        json_trace(trimmed)
    } else {
        resample(csv_trace(trimmed)?, None, None)
    }
}

fn json_trace(text: &str) -> Result<Trace, FormatError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|error| FormatError::new(format!("the trace is not valid JSON: {error}")))?;
    let start =
        match value.get("start") {
            Some(Value::String(text)) => Some(OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
                FormatError::new(format!("the trace's start '{text}' is not a date-time with an offset"))
            })?),
            _ => None,
        };
    let frames = match &value {
        Value::Array(frames) => frames,
        Value::Object(object) => match object.get("frames") {
            Some(Value::Array(frames)) => frames,
            _ => return Err(FormatError::new("the trace has no 'frames' array")),
        },
        _ => return Err(FormatError::new("a trace is an object with 'frames' or an array of frames")),
    };
    if frames.len() > MAX_TRACE_FRAMES {
        return Err(FormatError::new(format!("the trace has more than {MAX_TRACE_FRAMES} frames")));
    }
    let mut samples = Vec::with_capacity(frames.len());
    for (index, frame) in frames.iter().enumerate() {
        let numbers: Option<[f64; 4]> = match frame {
            Value::Array(items) if items.len() == 4 => {
                let mut out = [0.0; 4];
                items
                    .iter()
                    .zip(out.iter_mut())
                    .try_for_each(|(item, slot)| {
                        *slot = item.as_f64()?;
                        Some(())
                    })
                    .map(|()| out)
            }
            Value::Object(_) => {
                (|| Some([frame["t"].as_f64()?, frame["r"].as_f64()?, frame["g"].as_f64()?, frame["b"].as_f64()?]))()
            }
            _ => None,
        };
        let [t, r, g, b] = numbers
            .ok_or_else(|| FormatError::new(format!("frame {} of the trace needs numbers t, r, g and b", index + 1)))?;
        samples.push((t, [r, g, b]));
    }
    let device = value.get("device").and_then(Value::as_str).map(|name| name.chars().take(200).collect());
    resample(samples, start, device)
}

fn csv_trace(text: &str) -> Result<Vec<(f64, [f64; 3])>, FormatError> {
    let mut lines = text.lines().filter(|line| !line.trim().is_empty());
    let header: Vec<String> =
        lines.next().unwrap_or_default().split(',').map(|name| name.trim().to_ascii_lowercase()).collect();
    let column = |names: &[&str]| header.iter().position(|name| names.contains(&name.as_str()));
    let (time, scale) = match (column(&["t", "time", "seconds"]), column(&["timestamp_ms", "ms"])) {
        (Some(at), _) => (at, 1.0),
        (None, Some(at)) => (at, 0.001),
        _ => return Err(FormatError::new("the trace CSV needs a column t (seconds) or timestamp_ms")),
    };
    let channels = [column(&["r", "red"]), column(&["g", "green"]), column(&["b", "blue"])];
    let [Some(r), Some(g), Some(b)] = channels else {
        return Err(FormatError::new("the trace CSV needs columns r, g and b"));
    };
    let mut samples = Vec::new();
    for (index, line) in lines.enumerate() {
        if samples.len() >= MAX_TRACE_FRAMES {
            return Err(FormatError::new(format!("the trace has more than {MAX_TRACE_FRAMES} frames")));
        }
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let number = |at: usize| cells.get(at).and_then(|cell| cell.parse::<f64>().ok());
        let (Some(t), Some(rv), Some(gv), Some(bv)) = (number(time), number(r), number(g), number(b)) else {
            return Err(FormatError::new(format!("row {} of the trace CSV needs numbers t, r, g and b", index + 2)));
        };
        samples.push((t * scale, [rv, gv, bv]));
    }
    Ok(samples)
}

/// Evenly resamples timestamped samples at their median rate (linear interpolation).
fn resample(
    mut samples: Vec<(f64, [f64; 3])>,
    start: Option<OffsetDateTime>,
    device: Option<String>,
) -> Result<Trace, FormatError> {
    if samples.iter().any(|(t, rgb)| !t.is_finite() || rgb.iter().any(|c| !c.is_finite() || *c < 0.0)) {
        return Err(FormatError::new("the trace has a time or colour that is not a non-negative number"));
    }
    samples.sort_by(|a, b| a.0.total_cmp(&b.0));
    samples.dedup_by(|a, b| a.0 == b.0);
    if samples.len() < 2 {
        return Err(FormatError::new("the trace has fewer than two frames"));
    }
    let mut gaps: Vec<f64> = samples.windows(2).map(|pair| pair[1].0 - pair[0].0).collect();
    gaps.sort_by(f64::total_cmp);
    let rate = 1.0 / gaps[gaps.len() / 2];
    if !(RATE_BOUNDS.0..=RATE_BOUNDS.1).contains(&rate) {
        return Err(FormatError::new(format!(
            "the trace's frame rate is {rate:.1} per second; {} to {} are accepted (is t in seconds?)",
            RATE_BOUNDS.0, RATE_BOUNDS.1
        )));
    }
    let (first, last) = (samples[0].0, samples[samples.len() - 1].0);
    if last - first > MAX_SECONDS {
        return Err(FormatError::new(format!("the trace is longer than {MAX_SECONDS} s")));
    }
    let count = ((last - first) * rate).floor() as usize + 1;
    let mut rgb = Vec::with_capacity(count);
    let mut next = 0;
    for index in 0..count {
        let t = first + index as f64 / rate;
        while next + 1 < samples.len() && samples[next + 1].0 <= t {
            next += 1;
        }
        let (t0, c0) = samples[next];
        let value = match samples.get(next + 1) {
            Some(&(t1, c1)) if t1 > t0 => std::array::from_fn(|c| c0[c] + (c1[c] - c0[c]) * (t - t0) / (t1 - t0)),
            _ => c0,
        };
        rgb.push(value);
    }
    Ok(Trace { rate, rgb, start: start.map(|start| start + time::Duration::seconds_f64(first)), device })
}

/// What an rPPG input yields as records: a heart-rate and a respiratory-rate reading over the
/// clip (from `start` when the input does not say when it began), or why there is none.
pub fn records(trace: &Trace, start: OffsetDateTime, method: Method) -> Vec<Record> {
    let estimate = match estimate(trace, method) {
        Ok(estimate) => estimate,
        Err(problem) => return vec![Record::new("the clip", Err(problem))],
    };
    let begin = trace.start.unwrap_or(start);
    let when = When::Between(begin, begin + time::Duration::seconds_f64(trace.seconds()));
    let reading = |kind: Kind, rate: Rate| {
        let per_minute = (rate.per_minute * 10.0).round() / 10.0;
        let quality = Some(SignalQuality { snr_db: rate.snr_db, method: method.name() });
        let device = Device { name: trace.device.clone().unwrap_or_else(|| "Camera".to_owned()), ..Device::default() };
        Reading { kind, measured: Measured::Value(per_minute), when, device: Some(device), quality }
    };
    let mut records = Vec::new();
    match estimate.heart_rate() {
        Some(rate) => records.push(Record::new("the clip's pulse", Ok(reading(Kind::HeartRate, rate)))),
        None => records.push(Record::new(
            "the clip's pulse",
            Err(Problem::new(match estimate.pulse {
                Some(rate) => format!(
                    "no reliable reading: the pulse's signal-to-noise ratio is {:.1} dB, below {MIN_PULSE_SNR_DB} dB (try better, steadier light)",
                    rate.snr_db
                ),
                None => "no reliable reading: no pulse in the clip (try better, steadier light)".to_owned(),
            })),
        )),
    }
    if let Some(rate) = estimate.breathing {
        records.push(Record::new("the clip's breathing", Ok(reading(Kind::RespiratoryRate, rate))));
    } else if estimate.heart_rate().is_some() {
        records.push(Record::new(
            "the clip's breathing",
            Err(Problem::new("no reliable breathing rate: its signs in the clip disagree")),
        ));
    }
    records
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::synth::{Clip, ClipOptions};
    use super::*;

    fn trace_json(clip: &mut Clip) -> String {
        let frames: Vec<Value> =
            clip.trace().iter().map(|(t, [r, g, b])| serde_json::json!({"t": t, "r": r, "g": g, "b": b})).collect();
        serde_json::json!({"start": "2024-05-01T09:30:00+02:00", "device": "Pixel 8 front camera", "frames": frames})
            .to_string()
    }

    #[test]
    fn a_trace_with_jittered_timestamps_is_resampled_evenly_and_gives_the_pulse() {
        let mut clip = Clip::new(ClipOptions::clean(3, 64, 48));
        let truth = clip.truth();
        let trace = read_trace(trace_json(&mut clip).as_bytes()).unwrap();
        assert!((trace.rate - 30.0).abs() < 0.2, "{}", trace.rate);
        assert!((trace.seconds() - 30.0).abs() < 0.1);
        // The first frame's own timestamp, jittered by up to 3 ms.
        let start = trace.start.unwrap();
        assert!((start - datetime!(2024-05-01 09:30:00 +02:00)).abs() <= time::Duration::milliseconds(3));
        let records = records(&trace, OffsetDateTime::UNIX_EPOCH, Method::Pos);
        let Ok(heart) = &records[0].outcome else { panic!("{records:?}") };
        let Measured::Value(rate) = heart.measured else { panic!() };
        assert!((rate - truth.heart_rate).abs() < 1.0, "{rate} vs {}", truth.heart_rate);
        assert_eq!(heart.when.start(), start);
        assert_eq!(heart.device.as_ref().unwrap().name, "Pixel 8 front camera");
        assert!(heart.quality.unwrap().snr_db >= MIN_PULSE_SNR_DB);
    }

    #[test]
    fn csv_traces_and_frame_arrays_read_like_json_ones() {
        let mut clip = Clip::new(ClipOptions::clean(4, 64, 48));
        let samples = clip.trace();
        let csv: String = std::iter::once("timestamp_ms,r,g,b\n".to_owned())
            .chain(samples.iter().map(|(t, [r, g, b])| format!("{},{r},{g},{b}\n", t * 1000.0)))
            .collect();
        let arrays =
            serde_json::to_string(&samples.iter().map(|(t, [r, g, b])| [*t, *r, *g, *b]).collect::<Vec<_>>()).unwrap();
        let from_csv = read_trace(csv.as_bytes()).unwrap();
        let from_arrays = read_trace(arrays.as_bytes()).unwrap();
        assert_eq!(from_csv.rgb.len(), from_arrays.rgb.len());
        let (a, b) = (estimate(&from_csv, Method::Pos).unwrap(), estimate(&from_arrays, Method::Pos).unwrap());
        assert!((a.pulse.unwrap().per_minute - b.pulse.unwrap().per_minute).abs() < 0.01);
    }

    #[test]
    fn bad_traces_are_refused_with_the_reason() {
        let refuse = |text: &str| read_trace(text.as_bytes()).unwrap_err().message;
        assert!(refuse("t,r,g\n0,1,2\n").contains("columns r, g and b"));
        assert!(refuse("x,r,g,b\n0,1,2,3\n").contains("column t"));
        assert!(refuse("t,r,g,b\n0,1,2,3\n0.033,1,2,x\n").contains("row 3"));
        assert!(refuse(r#"{"frames": [[0, 1, 2, 3]]}"#).contains("fewer than two frames"));
        assert!(refuse(r#"{"frames": [[0, 1, 2, 3], [33, 1, 2, 3]]}"#).contains("is t in seconds"));
        assert!(refuse(r#"{"frames": [{"t": 0, "r": 1}]}"#).contains("frame 1"));
        assert!(refuse(r#"{"start": "yesterday", "frames": []}"#).contains("not a date-time"));
        assert!(refuse(r#"{"frames": [[0, -1, 2, 3], [0.03, 1, 2, 3]]}"#).contains("non-negative"));
        // A short clip is read, but gives no reading.
        let short: Vec<[f64; 4]> = (0..150).map(|i| [f64::from(i) / 30.0, 150.0, 110.0, 90.0]).collect();
        let trace = read_trace(serde_json::to_string(&short).unwrap().as_bytes()).unwrap();
        let records = records(&trace, OffsetDateTime::UNIX_EPOCH, Method::Pos);
        assert!(records[0].outcome.as_ref().unwrap_err().reason.contains("at least 10 s"));
    }

    #[test]
    fn a_clip_without_a_pulse_gives_no_reading_and_says_why() {
        let mut options = ClipOptions::clean(5, 64, 48);
        options.pulse = false;
        let mut clip = Clip::new(options);
        let trace = read_trace(trace_json(&mut clip).as_bytes()).unwrap();
        let records = records(&trace, OffsetDateTime::UNIX_EPOCH, Method::Pos);
        assert_eq!(records.len(), 1, "{records:?}");
        let problem = records[0].outcome.as_ref().unwrap_err();
        assert!(problem.reason.starts_with("no reliable reading"), "{problem}");
    }

    #[test]
    fn a_video_is_read_frame_by_frame_and_the_face_found_and_followed() {
        let mut options = ClipOptions::clean(6, 96, 72);
        options.motion = true;
        let mut clip = Clip::new(options);
        let truth = clip.truth();
        let mut video = Vec::new();
        clip.write_y4m(&mut video).unwrap();
        let trace = read_video(video.as_slice()).unwrap();
        assert_eq!(trace.rgb.len(), 900);
        let estimate = estimate(&trace, Method::Pos).unwrap();
        let heart = estimate.heart_rate().unwrap();
        assert!((heart.per_minute - truth.heart_rate).abs() < 2.0, "{heart:?} vs {truth:?}");
    }

    /// A wall whose colour lies in the broad skin range all around the face makes one region
    /// with it, too large to be a face. In these clips taking the frame's mean colour off (the
    /// grey-world retry) does not free the face either: the region is split in two by chroma,
    /// the face found in one part, and its pulse read. (At this size the split frees the face
    /// in 5 of the 15 such clips among the first 40 seeds; at 160×120, in all 12 of 50.)
    #[test]
    fn a_face_against_a_skin_coloured_wall_is_found_and_its_pulse_read() {
        let mut errors = Vec::new();
        for seed in [5, 187, 239, 291, 304] {
            let mut options = ClipOptions::clean(seed, 96, 72);
            options.warm_background = true;
            let mut clip = Clip::new(options);
            let truth = clip.truth();
            let mut video = Vec::new();
            clip.write_y4m(&mut video).unwrap();
            let trace = read_video(video.as_slice()).unwrap_or_else(|error| panic!("seed {seed}: {error}"));
            let heart = estimate(&trace, Method::Pos).ok().and_then(|estimate| estimate.heart_rate());
            errors.push(heart.map(|heart| (heart.per_minute - truth.heart_rate).abs()));
        }
        let read: Vec<f64> = errors.iter().flatten().copied().collect();
        assert_eq!(read.len(), 5, "{errors:?}");
        assert!(read.iter().sum::<f64>() / read.len() as f64 <= 1.5, "{errors:?}");
    }

    #[test]
    fn a_video_without_a_face_is_refused() {
        let mut video = Vec::new();
        y4m::write_header(&mut video, 32, 24, 30).unwrap();
        for _ in 0..300 {
            y4m::write_frame(&mut video, 32, 24, &vec![[40, 90, 160]; 32 * 24]).unwrap();
        }
        assert_eq!(read_video(video.as_slice()).unwrap_err().message, "no face found in the video");
    }
}
