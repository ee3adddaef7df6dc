//! Vitals ingest's scenarios: rPPG on a 30-second 640×480 video and on its trace (one core),
//! rPPG accuracy per condition on synthetic clips, and an Apple Health export imported by
//! `braid ingest` (dry run and into a database) and posted raw to a running server's
//! `Patient/p1/$ingest-vitals`.

use std::io::{BufReader, BufWriter};
use std::path::Path;
use std::time::Instant;

use braid::ingest::rppg::synth::{Clip, ClipOptions};
use braid::ingest::rppg::{Method, estimate, read_trace, read_video};
use serde_json::{Value, json};

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
        crate::median(&mut video_seconds),
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
        crate::median(&mut trace_millis),
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
    let conditions: [(&str, Setup); 6] = [
        ("clean", |_| {}),
        ("motion", |options| options.motion = true),
        ("illumination", |options| options.illumination = true),
        ("coloured light", |options| options.coloured_light = true),
        ("no pulse", |options| options.pulse = false),
        ("warm background", |options| options.warm_background = true),
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

/// Writes a synthetic Apple Health `export.xml` of about `megabytes`: a watch's heart rate every
/// 5 s through the day, steps, energy and distance (skipped kinds), and daily resting heart rate,
/// SpO2, respiratory rate, weight and a blood-pressure correlation, in the export's own syntax.
/// Returns the file's size in bytes.
fn write_apple_export(path: &Path, megabytes: u64) -> u64 {
    use std::io::Write;
    let watch = "&lt;&lt;HKDevice: 0x283f5a3a0&gt;, name:Apple Watch, manufacturer:Apple Inc., model:Watch, hardware:Watch6,2, software:10.1&gt;";
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).expect("the export file"));
    let mut written: u64 = 0;
    fn put(out: &mut BufWriter<std::fs::File>, written: &mut u64, text: &str) {
        out.write_all(text.as_bytes()).expect("written");
        *written += text.len() as u64;
    }
    put(
        &mut out,
        &mut written,
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE HealthData [\n<!ELEMENT HealthData (ExportDate,Me,(Record|Correlation|Workout|ActivitySummary)*)>\n<!ATTLIST HealthData locale CDATA #REQUIRED>\n]>\n<HealthData locale=\"en_US\">\n <ExportDate value=\"2024-06-01 10:00:00 +0100\"/>\n <Me HKCharacteristicTypeIdentifierDateOfBirth=\"1980-04-02\" HKCharacteristicTypeIdentifierBiologicalSex=\"HKBiologicalSexFemale\"/>\n",
    );
    let limit = megabytes * 1_000_000;
    let mut state = 12345u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let stamp = |seconds: u64| {
        let (day, rest) = (seconds / 86_400, seconds % 86_400);
        let date = time::Date::from_julian_day(2_460_000 + day as i32).expect("a date");
        format!("{date} {:02}:{:02}:{:02} +0100", rest / 3600, rest % 3600 / 60, rest % 60)
    };
    let mut seconds = 0u64;
    let mut day = u64::MAX;
    while written < limit {
        seconds += 5;
        let at = stamp(seconds);
        let heart = 55 + next() % 60;
        put(
            &mut out,
            &mut written,
            &format!(
                " <Record type=\"HKQuantityTypeIdentifierHeartRate\" sourceName=\"Jane’s Apple Watch\" sourceVersion=\"10.1\" device=\"{watch}\" unit=\"count/min\" creationDate=\"{at}\" startDate=\"{at}\" endDate=\"{at}\" value=\"{heart}\">\n  <MetadataEntry key=\"HKMetadataKeyHeartRateMotionContext\" value=\"0\"/>\n </Record>\n"
            ),
        );
        if seconds % 10 == 0 {
            for (kind, unit, value) in [
                ("HKQuantityTypeIdentifierStepCount", "count", (next() % 40).to_string()),
                (
                    "HKQuantityTypeIdentifierActiveEnergyBurned",
                    "kcal",
                    format!("{:.3}", (next() % 1000) as f64 / 100.0),
                ),
            ] {
                put(
                    &mut out,
                    &mut written,
                    &format!(
                        " <Record type=\"{kind}\" sourceName=\"Jane’s iPhone\" sourceVersion=\"17.2\" device=\"&lt;&lt;HKDevice: 0x281b2c0f0&gt;, name:iPhone, manufacturer:Apple Inc., model:iPhone, hardware:iPhone15,2, software:17.2&gt;\" unit=\"{unit}\" creationDate=\"{at}\" startDate=\"{at}\" endDate=\"{}\" value=\"{value}\"/>\n",
                        stamp(seconds + 10)
                    ),
                );
            }
        }
        if seconds / 86_400 != day {
            day = seconds / 86_400;
            let morning = stamp(day * 86_400 + 7 * 3600);
            for (kind, unit, value) in [
                ("HKQuantityTypeIdentifierRestingHeartRate", "count/min", (50 + next() % 20).to_string()),
                ("HKQuantityTypeIdentifierOxygenSaturation", "%", format!("0.{}", 93 + next() % 7)),
                ("HKQuantityTypeIdentifierRespiratoryRate", "count/min", format!("{}.5", 12 + next() % 6)),
                ("HKQuantityTypeIdentifierBodyMass", "lb", format!("{}.2", 140 + next() % 20)),
            ] {
                put(
                    &mut out,
                    &mut written,
                    &format!(
                        " <Record type=\"{kind}\" sourceName=\"Jane’s Apple Watch\" device=\"{watch}\" unit=\"{unit}\" creationDate=\"{morning}\" startDate=\"{morning}\" endDate=\"{morning}\" value=\"{value}\"/>\n"
                    ),
                );
            }
            let (systolic, diastolic) = (110 + next() % 30, 65 + next() % 20);
            put(
                &mut out,
                &mut written,
                &format!(
                    " <Correlation type=\"HKCorrelationTypeIdentifierBloodPressure\" sourceName=\"Withings\" creationDate=\"{morning}\" startDate=\"{morning}\" endDate=\"{morning}\">\n  <Record type=\"HKQuantityTypeIdentifierBloodPressureSystolic\" sourceName=\"Withings\" unit=\"mmHg\" creationDate=\"{morning}\" startDate=\"{morning}\" endDate=\"{morning}\" value=\"{systolic}\"/>\n  <Record type=\"HKQuantityTypeIdentifierBloodPressureDiastolic\" sourceName=\"Withings\" unit=\"mmHg\" creationDate=\"{morning}\" startDate=\"{morning}\" endDate=\"{morning}\" value=\"{diastolic}\"/>\n </Correlation>\n"
                ),
            );
        }
    }
    put(&mut out, &mut written, "</HealthData>\n");
    out.flush().expect("flushed");
    written
}

/// Runs `braid ingest apple` on a generated export of `megabytes`, as a child process: its
/// rate, peak memory (the child's VmHWM, polled until it exits) and Observations stored per second; and the
/// same read with `--dry-run` (reading and converting only); then the same export sent to a
/// server's `$ingest-vitals`.
pub async fn apple_scenario(dir: &Path, megabytes: u64) {
    println!(
        "\n== apple: braid ingest apple, then $ingest-vitals over HTTP, on a generated {megabytes} MB export.xml =="
    );
    let export = dir.join("export.xml");
    let started = Instant::now();
    let size = write_apple_export(&export, megabytes);
    println!("  generated {:.0} MB in {:.1} s", size as f64 / 1e6, started.elapsed().as_secs_f64());
    let data = dir.join("apple.redb");
    {
        let store = crate::open_store(&data);
        let Value::Object(patient) = json!({"resourceType": "Patient", "id": "p1"}) else { unreachable!() };
        let op = braid::store::WriteOp {
            full_url: None,
            action: braid::store::Action::Update {
                resource_type: braid::fhir::ResourceType::PATIENT,
                target: braid::store::Target::Id(braid::fhir::Id::parse("p1").expect("an id")),
                resource: patient,
                precondition: braid::store::Precondition::default(),
            },
        };
        store.write(braid::store::WriteRequest { ops: vec![op], ..Default::default() }).await.expect("the patient");
        crate::close_store(store).await;
    }
    for dry_run in [true, false] {
        let mut command = std::process::Command::new(crate::servers::braid_binary());
        command.args(["ingest", "apple"]).arg(&export).args(["--patient", "p1", "--data"]).arg(&data);
        if dry_run {
            command.arg("--dry-run");
        }
        let started = Instant::now();
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("braid ingest starts");
        let status_file = format!("/proc/{}/status", child.id());
        let mut stdout = child.stdout.take().expect("piped");
        // Drained on a thread (a dry run prints every Observation), counting lines.
        let reader = std::thread::spawn(move || {
            let mut text = Vec::new();
            std::io::Read::read_to_end(&mut stdout, &mut text).expect("stdout");
            text
        });
        let mut peak_kb = 0u64;
        loop {
            if let Ok(status) = std::fs::read_to_string(&status_file)
                && let Some(line) = status.lines().find(|line| line.starts_with("VmHWM:"))
            {
                peak_kb = peak_kb.max(line.split_whitespace().nth(1).and_then(|kb| kb.parse().ok()).unwrap_or(0));
            }
            if child.try_wait().expect("the child").is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let output = reader.join().expect("the reader");
        let rate = size as f64 / 1e6 / elapsed;
        if dry_run {
            let observations = output.iter().filter(|&&byte| byte == b'\n').count();
            println!(
                "  --dry-run: {elapsed:.1} s = {rate:.0} MB/s, {observations} Observations made, peak memory {:.0} MiB",
                peak_kb as f64 / 1024.0
            );
        } else {
            let summary: Value = serde_json::from_slice(&output).unwrap_or(Value::Null);
            let created = summary["created"].as_u64().unwrap_or(0);
            println!(
                "  import:    {elapsed:.1} s = {rate:.0} MB/s (target >= 20 MB/s), peak memory {:.0} MiB (target <= 200 MB), {created} Observations stored = {:.0}/s; {} records, {} skipped, {} rejected",
                peak_kb as f64 / 1024.0,
                created as f64 / elapsed,
                summary["records"],
                summary["skipped"],
                summary["rejected"]
            );
        }
    }
    let _ = std::fs::remove_file(&data);
    http_import(dir, &export, size).await;
    let _ = std::fs::remove_file(&export);
}

/// The same export posted raw to `Patient/p1/$ingest-vitals` of a running server (authorization
/// off, on loopback): from the first byte sent to the answer, with the server's peak memory.
async fn http_import(dir: &Path, export: &Path, size: u64) {
    let data = dir.join("apple-http.redb");
    let limit = (size + (1 << 20)).to_string();
    let server = crate::servers::start_braid_with_env(&data, &[("BRAID_MAX_INGEST_BYTES", limit.as_str())]);
    let base = format!("http://127.0.0.1:{}/fhir", server.port);
    let client = reqwest::Client::new();
    let reply = client
        .put(format!("{base}/Patient/p1"))
        .header("content-type", "application/fhir+json")
        .body(json!({"resourceType": "Patient", "id": "p1"}).to_string())
        .send()
        .await
        .expect("the patient");
    assert!(reply.status().is_success(), "the patient is created");
    let body = std::fs::read(export).expect("the export");
    let started = Instant::now();
    let reply = client
        .post(format!("{base}/Patient/p1/$ingest-vitals?format=apple"))
        .header("content-type", "application/xml")
        .body(body)
        .send()
        .await
        .expect("the upload");
    let status = reply.status();
    let answer: Value = reply.json().await.unwrap_or(Value::Null);
    let elapsed = started.elapsed().as_secs_f64();
    assert!(status.is_success(), "$ingest-vitals answered {status}: {answer}");
    let count = |name: &str| {
        answer["parameter"]
            .as_array()
            .and_then(|parameters| parameters.iter().find(|parameter| parameter["name"] == name))
            .and_then(|parameter| parameter["valueInteger"].as_u64())
            .unwrap_or(0)
    };
    let created = count("created");
    println!(
        "  $ingest-vitals over HTTP: {elapsed:.1} s = {:.0} MB/s, {created} Observations stored = {:.0}/s, server peak memory {:.0} MiB",
        size as f64 / 1e6 / elapsed,
        created as f64 / elapsed,
        server.peak_rss_mib()
    );
    drop(server);
    let _ = std::fs::remove_file(&data);
}
