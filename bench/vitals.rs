//! Vitals ingest's scenarios: rPPG on a 30-second 640×480 video and on its trace (one core),
//! and rPPG accuracy per condition on synthetic clips.

use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::time::Instant;

use braid::ingest::rppg::synth::{Clip, ClipOptions};
use braid::ingest::rppg::{Method, estimate, read_trace, read_video};
use serde_json::json;

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 0 => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        n => values[n / 2],
    }
}

/// Times rPPG on one clip: the video read from a file (face found and followed, then POS), and
/// the same clip's trace as a device would send it. All on the calling thread (one core).
pub fn speed_scenario(dir: &Path, rounds: usize) {
    println!("\n== rppg: a 30 s 640x480 30 fps Y4M video and its trace, POS, one core ==");
    let mut clip = Clip::new(ClipOptions { motion: true, ..ClipOptions::clean(11, 640, 480) });
    let truth = clip.truth();
    let path = dir.join("rppg.y4m");
    let started = Instant::now();
    {
        let mut out = BufWriter::new(std::fs::File::create(&path).expect("the video file"));
        clip.write_y4m(&mut out).expect("the video is written");
    }
    let size = std::fs::metadata(&path).map(|metadata| metadata.len()).unwrap_or(0);
    println!(
        "  rendered {} frames ({:.0} MB) in {:.1} s",
        clip.frame_count(),
        size as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );
    let mut video_seconds = Vec::new();
    let mut reading = None;
    for _ in 0..rounds.max(1) {
        let started = Instant::now();
        let input = BufReader::with_capacity(1 << 20, std::fs::File::open(&path).expect("the video"));
        let trace = read_video(input).expect("the video is read");
        let estimate = estimate(&trace, Method::Pos).expect("an estimate");
        video_seconds.push(started.elapsed().as_secs_f64());
        reading = estimate.heart_rate();
    }
    let reading =
        reading.map_or("none".to_owned(), |rate| format!("{:.1} /min at {:.1} dB", rate.per_minute, rate.snr_db));
    println!(
        "  video: median {:.2} s over {} rounds (target <= 2 s); read {reading}, true {:.1} /min",
        median(video_seconds),
        rounds.max(1),
        truth.heart_rate
    );
    let frames: Vec<_> = clip.trace().iter().map(|(t, [r, g, b])| json!({"t": t, "r": r, "g": g, "b": b})).collect();
    let text = json!({"frames": frames}).to_string();
    let mut trace_millis = Vec::new();
    for _ in 0..(rounds.max(1) * 10) {
        let started = Instant::now();
        let trace = read_trace(text.as_bytes()).expect("the trace is read");
        let estimate = estimate(&trace, Method::Pos).expect("an estimate");
        trace_millis.push(started.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(estimate);
    }
    println!(
        "  trace ({} KB of JSON): median {:.1} ms over {} runs (target <= 20 ms)",
        text.len() / 1024,
        median(trace_millis),
        rounds.max(1) * 10
    );
    let _ = std::fs::remove_file(&path);
}

/// rPPG accuracy on `clips` synthetic clips per condition, each read as a 160×120 video: mean
/// absolute error per method, and clips without a reading.
pub fn accuracy_scenario(clips: u64) {
    println!("\n== rppg-accuracy: {clips} synthetic 30 s clips per condition, 160x120 video, mean absolute error ==");
    let methods = [Method::Pos, Method::Chrom, Method::Green];
    type Setup = fn(&mut ClipOptions);
    let conditions: [(&str, Setup); 5] = [
        ("clean", |_| {}),
        ("motion", |options| options.motion = true),
        ("illumination", |options| options.illumination = true),
        ("coloured light", |options| options.coloured_light = true),
        ("no pulse", |options| options.pulse = false),
    ];
    for (name, setup) in conditions {
        let started = Instant::now();
        let mut errors = [0.0f64; 3];
        let mut missing = [0usize; 3];
        for seed in 0..clips {
            let mut options = ClipOptions::clean(seed * 13 + 5, 160, 120);
            setup(&mut options);
            let mut clip = Clip::new(options);
            let mut video = Vec::new();
            clip.write_y4m(&mut video).expect("in memory");
            let trace = read_video(video.as_slice());
            for (index, method) in methods.iter().enumerate() {
                let reading = trace.as_ref().ok().and_then(|trace| estimate(trace, *method).ok()?.heart_rate());
                match reading {
                    Some(rate) => errors[index] += (rate.per_minute - clip.truth().heart_rate).abs(),
                    None => missing[index] += 1,
                }
            }
        }
        let shown: Vec<String> = methods
            .iter()
            .enumerate()
            .map(|(index, method)| {
                let read = clips as usize - missing[index];
                let error = if read > 0 { format!("{:.2}", errors[index] / read as f64) } else { "-".to_owned() };
                format!("{} {error} /min ({} without reading)", method.name(), missing[index])
            })
            .collect();
        println!("  {name:<15} {}  [{:.0} s]", shown.join(", "), started.elapsed().as_secs_f64());
    }
}
