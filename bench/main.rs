//! Braid's benchmark harness. Not a test: it prints figures.
//!
//!     cargo bench --bench braid-bench -- [all|read|ingest|startup|search|disk|pages] [--seconds N]
//!
//! Scenarios (each builds its own database in a temporary directory):
//! - `read`: read-by-id throughput and p50/p99 latency at 32 connections, Braid next to a
//!   baseline (a minimal actix-web handler returning the same bytes from memory), alternating
//!   rounds, medians reported.
//! - `ingest`: transaction bundles of 50 resources (1 Patient + 49 vital-sign Observations),
//!   validated and durably committed, from 8 concurrent clients. With `--compare-with BINARY`
//!   (another build of Braid) it alternates `--rounds` rounds between that build and this one
//!   and reports both medians and their ratio.
//! - `startup`: a database of 1,000,000 resources: time from process start to the first answer
//!   after a clean stop and after a crash (SIGKILL while clients write), and resident memory
//!   while serving random reads.
//! - `search`: 10,000 patients and 1,000,000 observations (10 codes × 10 years; ten patients
//!   have ~1,100 resources each): latency of the issue's query shapes, index size per resource.
//! - `disk`: bytes per resource, table by table, as written, on disk and after `braid compact`,
//!   on the demo load (official examples and Synthea) and on the search scenario's database
//!   (`search` prints the same for its database after its queries; `all` includes both).
//! - `pages`: 10,000 patients and 20,000 US Core lab Observations of ~1.4 KB (ten codes, one with
//!   60 hits, one with 1,060, the others ~2,360): read-by-id throughput and code-search page
//!   throughput (`_count=20`) at 32 connections on the same server, alternating rounds, and
//!   their ratio; first-page latency at one connection by number of hits.
//! - `auth-search`: the search scenario's database; search latency for a token limited to one
//!   patient's record (p3, ~1,100 resources) against the same searches with authorization off,
//!   alternating rounds, medians and their ratio.
//! - `push`: the ingest scenario's transaction bundles pushed by a source (namespaced ids and
//!   references, the original ids kept, one Provenance per push) and by a backend client with
//!   the same `system/*.cruds` scopes writing without a source, on one server with
//!   authorization on, `--rounds` rounds on fresh databases (which mode runs first swaps every
//!   round); medians and the namespacing overhead; per resource pushed, the index entries and
//!   bytes stored (and, in round 0, each table's share) and the server's CPU time (the whole
//!   process, and its writer thread), with their medians by mode. In two shapes: creates
//!   without ids (the ingest scenario's), and PUTs with the sender's own ids.
//! - `pull`: a pull source reading an upstream Braid (auth on) of 10,000 patients and
//!   `--resources` − 10,000 observations through its `$export`, into a fresh downstream database
//!   (durable commits, every search parameter indexed), `--rounds` rounds; end-to-end resources
//!   per second from `braid source sync` to its answer.
//! - `export`: a database of `--resources` resources (the search scenario's patients and
//!   observations): `$export` of all of it, from kick-off to the complete manifest, with the
//!   server's peak resident memory, then the download of its files.
//! - `auth`: SMART Backend Services tokens issued per second at 32 connections (ES384 client
//!   assertions, each with its own `jti`, signed before the clock starts: signing is the
//!   client's cost), and read-by-id throughput with a bearer token against the same database
//!   served with authorization off, alternating rounds, medians and their ratio.
//! - `mpi` (or one of `mpi-quality`, `mpi-match`, `mpi-lag`, `mpi-rematch`): the master
//!   patient index's matching quality on FEBRL and `braid synth` data, `Patient/$match` latency
//!   at `--mpi-patients` source Patients, matching lag under a sustained push, and re-matching
//!   after training (see `bench/mpi.rs`).

mod load;
mod mpi;
mod servers;
mod vitals;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid::fhir::{Id, ResourceType};
use braid::search::SearchIndexer;
use braid::store::{Action, Precondition, Store, StoreOptions, Target, WriteOp, WriteRequest};
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};

/// The allocator the server runs with (see `src/main.rs`), so that what the harness does
/// in-process (building data, matching) costs what it costs in the server.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(about = "Braid benchmark harness")]
struct Args {
    /// Which scenario to run.
    #[arg(value_enum, default_value = "all")]
    scenario: Scenario,
    /// Seconds per measured round.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds per server in the read scenario (alternating baseline and Braid).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Patients in the read scenario's database.
    #[arg(long, default_value_t = 10_000)]
    patients: usize,
    /// Resources in the start-up scenario's database.
    #[arg(long, default_value_t = 1_000_000)]
    resources: usize,
    /// Ids of the search database's observations as zero-padded numbers of this many digits (in
    /// write order), instead of `so<n>`: what the length of ids costs on disk.
    #[arg(long, default_value_t = 0)]
    id_digits: usize,
    /// Another build's `braid` binary: the ingest and mpi-lag scenarios then alternate rounds
    /// between it and this build and report both medians (side-by-side figures of two
    /// versions).
    #[arg(long)]
    compare_with: Option<PathBuf>,
    /// Source Patients in the mpi-match scenario's index.
    #[arg(long, default_value_t = 1_000_000)]
    mpi_patients: usize,
    /// The mpi-match scenario's database, kept after the run: built there when absent, used as
    /// it stands when present (matching then goes on from where it was).
    #[arg(long)]
    mpi_data: Option<PathBuf>,
    /// Stop the mpi-match scenario once its Patients are pushed, before matching them (with
    /// `--mpi-data`: a database to copy and match several times, e.g. under a profiler).
    #[arg(long)]
    mpi_push_only: bool,
    /// The mpi-lag scenario pushes into a copy of this database (an index already matched,
    /// e.g. one `--mpi-data` kept), to measure the lag at its size; else into an empty one.
    #[arg(long)]
    mpi_lag_base: Option<PathBuf>,
    /// Size of the apple scenario's generated export.xml, MB.
    #[arg(long, default_value_t = 1000)]
    apple_megabytes: u64,
    /// Synthetic clips per condition in the rppg-accuracy scenario.
    #[arg(long, default_value_t = 50)]
    rppg_clips: u64,
    /// Internal: run the baseline server on the given bodies file.
    #[arg(long, hide = true)]
    serve_baseline: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    All,
    Read,
    Ingest,
    Startup,
    Search,
    Disk,
    Pages,
    Auth,
    AuthSearch,
    Push,
    Export,
    Pull,
    /// The master patient index's four scenarios.
    Mpi,
    MpiQuality,
    MpiMatch,
    MpiLag,
    MpiRematch,
    /// rPPG speed on a 640x480 video and its trace.
    Rppg,
    /// rPPG accuracy per condition on synthetic clips (`--rppg-clips`).
    RppgAccuracy,
    /// `braid ingest apple` on a generated export.xml (`--apple-megabytes`), and the same file
    /// posted to a running server's `Patient/p1/$ingest-vitals`.
    Apple,
    /// Encryption at rest: the same data and load on a plain and an encrypted database, side by
    /// side (file size, build rate, read by id, search latencies, ingest; `--resources`).
    Encryption,
}

fn main() {
    // `cargo bench` passes `--bench`; it means nothing here.
    let args = Args::parse_from(std::env::args().filter(|arg| arg != "--bench"));
    if let Some(bodies) = &args.serve_baseline {
        servers::serve_baseline(bodies).expect("baseline server");
        return;
    }
    ID_DIGITS.set(args.id_digits).expect("set once");
    // reqwest (a dev-dependency) uses rustls without choosing its cryptography provider.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    println!(
        "braid-bench on {} cores; databases in {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        dir.path().display()
    );
    if matches!(args.scenario, Scenario::All | Scenario::Read) {
        runtime.block_on(read_scenario(&args, dir.path()));
    }
    if matches!(args.scenario, Scenario::All | Scenario::Ingest) {
        runtime.block_on(ingest_scenario(&args, dir.path()));
    }
    if matches!(args.scenario, Scenario::All | Scenario::Startup) {
        runtime.block_on(startup_scenario(&args, dir.path()));
    }
    if matches!(args.scenario, Scenario::All | Scenario::Search) {
        runtime.block_on(search_scenario(&args, dir.path()));
    }
    if matches!(args.scenario, Scenario::Disk) {
        runtime.block_on(disk_scenario(&args, dir.path()));
    }
    if matches!(args.scenario, Scenario::All) {
        // The search scenario printed the search database's figures.
        runtime.block_on(demo_disk(dir.path()));
    }
    if matches!(args.scenario, Scenario::All | Scenario::Pages) {
        runtime.block_on(pages_scenario(&args, dir.path()));
    }
    if matches!(args.scenario, Scenario::All | Scenario::Auth) {
        runtime.block_on(auth_scenario(&args, dir.path()));
    }
    if matches!(args.scenario, Scenario::AuthSearch) {
        runtime.block_on(auth_search_scenario(&args, dir.path()));
    }
    if matches!(args.scenario, Scenario::All | Scenario::Push) {
        runtime.block_on(push_scenario(&args, dir.path()));
    }
    if matches!(args.scenario, Scenario::Export) {
        runtime.block_on(export_scenario(&args, dir.path()));
    }
    if matches!(args.scenario, Scenario::Mpi | Scenario::MpiQuality) {
        runtime.block_on(mpi::quality_scenario(dir.path()));
    }
    if matches!(args.scenario, Scenario::Mpi | Scenario::MpiMatch) {
        runtime.block_on(mpi::match_scenario(
            dir.path(),
            mpi::MatchOptions {
                patients: args.mpi_patients,
                seconds: args.seconds,
                data: args.mpi_data.clone(),
                push_only: args.mpi_push_only,
            },
        ));
    }
    if matches!(args.scenario, Scenario::Mpi | Scenario::MpiLag) {
        runtime.block_on(mpi::lag_scenario(
            dir.path(),
            args.seconds,
            args.mpi_lag_base.as_deref(),
            args.compare_with.as_deref(),
            args.rounds,
        ));
    }
    if matches!(args.scenario, Scenario::Mpi | Scenario::MpiRematch) {
        runtime.block_on(mpi::rematch_scenario(dir.path()));
    }
    if matches!(args.scenario, Scenario::Rppg) {
        vitals::speed_scenario(dir.path(), args.rounds);
    }
    if matches!(args.scenario, Scenario::Apple) {
        runtime.block_on(vitals::apple_scenario(dir.path(), args.apple_megabytes));
    }
    if matches!(args.scenario, Scenario::RppgAccuracy) {
        vitals::accuracy_scenario(args.rppg_clips);
    }
    if matches!(args.scenario, Scenario::Pull) {
        runtime.block_on(pull_scenario(&args, dir.path()));
    }
    if matches!(args.scenario, Scenario::Encryption) {
        runtime.block_on(encryption_scenario(&args, dir.path()));
    }
}

/// Opens a store for building a scenario's data in-process; `BRAID_QUICK_REPAIR=false` (as for
/// the servers it starts) commits without quick repair, to compare both.
fn open_store(path: &Path) -> Store {
    open_store_with(path, None)
}

/// [`open_store`], encrypted with the data key `key` unwraps when there is one.
fn open_store_with(path: &Path, key: Option<Arc<braid::crypt::KeyFile>>) -> Store {
    let quick_repair = std::env::var("BRAID_QUICK_REPAIR").map_or(true, |value| value.trim() != "false");
    let options = StoreOptions { quick_repair, encryption_key: key, ..StoreOptions::default() };
    Store::open(path, options, Arc::new(SearchIndexer)).expect("database opens")
}

/// Closes a store and waits until the writer has released the file.
async fn close_store(store: Store) {
    let finished = store.writer_finished();
    drop(store);
    while !finished() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Writes `count` resources made by `make(n)` (type, id, body) in transactions of `batch`.
async fn fill(store: &Store, count: usize, batch: usize, make: impl Fn(usize) -> (ResourceType, String, Value)) {
    let started = Instant::now();
    let mut n = 0;
    while n < count {
        let ops = (n..(n + batch).min(count))
            .map(|i| {
                let (resource_type, id, body) = make(i);
                let Value::Object(resource) = body else { unreachable!() };
                WriteOp {
                    full_url: None,
                    action: Action::Update {
                        resource_type,
                        target: Target::Id(Id::parse(&id).unwrap()),
                        resource,
                        precondition: Precondition::default(),
                    },
                }
            })
            .collect::<Vec<_>>();
        n += ops.len();
        store.write(WriteRequest { ops, ..Default::default() }).await.expect("bench data is valid");
        if n % 100_000 == 0 {
            println!("  ... {n} resources written ({:.0}/s)", n as f64 / started.elapsed().as_secs_f64());
        }
    }
}

/// Family and given names for the bench's Patients: with the varied birth dates and postal
/// codes below, each Patient is a different person to the master patient index, whose blocks
/// stay a few Patients each, as in real data (10,000 copies of one person would keep its
/// matcher busy for the whole measurement, and merge them all into one golden Patient).
const FAMILY_NAMES: [&str; 20] = [
    "Chalmers",
    "Nguyen",
    "Garcia",
    "Smith",
    "Okafor",
    "Kowalski",
    "Haddad",
    "Tanaka",
    "Johansson",
    "Moreau",
    "Rossi",
    "Silva",
    "Murphy",
    "Kim",
    "Novak",
    "Dubois",
    "Schmidt",
    "Ivanova",
    "Mensah",
    "Larsen",
];
const GIVEN_NAMES: [&str; 20] = [
    "Peter", "Amina", "Luis", "Mei", "Olga", "Tom", "Fatima", "Kenji", "Sara", "Noah", "Ines", "Ravi", "Chloe",
    "Emeka", "Anna", "Jonas", "Lucia", "Omar", "Hana", "Felix",
];

/// The official Patient example, parsed once: the template of every bench Patient.
static PATIENT_EXAMPLE: std::sync::LazyLock<Value> = std::sync::LazyLock::new(|| {
    serde_json::from_str(include_str!("../tests/data/examples/Patient-example.json")).expect("the example parses")
});

fn patient(n: usize) -> (ResourceType, String, Value) {
    let mut body = PATIENT_EXAMPLE.clone();
    let id = format!("p{n}");
    body["id"] = json!(id);
    body["identifier"][0]["value"] = json!(format!("MRN-{n}"));
    let (family, given) = (FAMILY_NAMES[n % 20], GIVEN_NAMES[(n / 20) % 20]);
    body["name"] = json!([{"use": "official", "family": family, "given": [given]}]);
    let days = i64::try_from(n.wrapping_mul(7919) % 25_000).expect("small");
    let born = jiff::civil::date(1930, 1, 1).checked_add(jiff::Span::new().days(days)).expect("a valid date");
    body["birthDate"] = json!(born.to_string());
    body["address"][0]["postalCode"] = json!(format!("{}", 1000 + n % 9000));
    (ResourceType::parse("Patient").unwrap(), id, body)
}

fn observation(n: usize) -> (ResourceType, String, Value) {
    let id = format!("o{n}");
    let body = json!({
        "resourceType": "Observation", "id": id,
        "meta": {"profile": ["http://hl7.org/fhir/StructureDefinition/heartrate"]},
        "identifier": [{"system": "urn:bench", "value": format!("obs-{n}")}],
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs", "display": "Vital Signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}], "text": "Heart rate"},
        "subject": {"reference": format!("Patient/p{}", n % 10_000)},
        "effectiveDateTime": format!("20{:02}-{:02}-{:02}T08:30:00Z", 15 + n % 10, 1 + n % 12, 1 + n % 28),
        "valueQuantity": {"value": 50 + n % 70, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"}
    });
    (ResourceType::parse("Observation").unwrap(), id, body)
}

/// A pseudo-random id among `count`, different per connection and request.
fn pick(connection: usize, n: usize, count: usize) -> usize {
    let mut x =
        (connection as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (n as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    (x % count as u64) as usize
}

/// The median (the mean of the two middle values of an even count; 0 for none).
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        length if length % 2 == 0 => (values[length / 2 - 1] + values[length / 2]) / 2.0,
        length => values[length / 2],
    }
}

async fn read_scenario(args: &Args, dir: &Path) {
    println!(
        "\n== read by id: {} patients, 32 connections, {} rounds of {} s per server ==",
        args.patients, args.rounds, args.seconds
    );
    let data = dir.join("read.redb");
    let store = open_store(&data);
    fill(&store, args.patients, 1000, patient).await;
    let snapshot = store.snapshot().unwrap();
    let patient_type = ResourceType::parse("Patient").unwrap();
    let mut bodies = String::new();
    for n in 0..args.patients {
        let version = snapshot.current(patient_type, &format!("p{n}")).unwrap().unwrap();
        bodies.push_str(&format!("p{n}\t{}\n", String::from_utf8(version.body).unwrap()));
    }
    drop(snapshot);
    close_store(store).await;
    let bodies_file = dir.join("bodies.tsv");
    std::fs::write(&bodies_file, bodies).unwrap();

    let patients = args.patients;
    let request =
        move |connection: usize, n: usize| load::get(&format!("/fhir/Patient/p{}", pick(connection, n, patients)));
    let (mut baseline, mut braid) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        for (name, results) in [("baseline", &mut baseline), ("braid", &mut braid)] {
            let server =
                if name == "baseline" { servers::start_baseline(&bodies_file) } else { servers::start_braid(&data) };
            let result = load::warmed_run(server.port, 32, Duration::from_secs(args.seconds), request).await;
            println!(
                "  round {round} {name:8}: {:>8.0} req/s  p50 {:.2} ms  p99 {:.2} ms  errors {}{}",
                result.throughput(),
                result.percentile(0.5),
                result.percentile(0.99),
                result.errors,
                result.error_note()
            );
            results.push(result);
        }
    }
    let summary = |results: &[load::LoadResult]| {
        let mut throughput: Vec<f64> = results.iter().map(load::LoadResult::throughput).collect();
        let mut p50: Vec<f64> = results.iter().map(|r| r.percentile(0.5)).collect();
        let mut p99: Vec<f64> = results.iter().map(|r| r.percentile(0.99)).collect();
        (median(&mut throughput), median(&mut p50), median(&mut p99))
    };
    let (base_rps, base_p50, base_p99) = summary(&baseline);
    let (braid_rps, braid_p50, braid_p99) = summary(&braid);
    println!("  median baseline: {base_rps:.0} req/s, p50 {base_p50:.2} ms, p99 {base_p99:.2} ms");
    println!("  median braid:    {braid_rps:.0} req/s, p50 {braid_p50:.2} ms, p99 {braid_p99:.2} ms");
    println!("  braid / baseline throughput: {:.0}% (target >= 60%)", 100.0 * braid_rps / base_rps);
}

async fn ingest_scenario(args: &Args, dir: &Path) {
    let rounds = if args.compare_with.is_some() { args.rounds } else { 1 };
    println!(
        "\n== ingest: transaction bundles of 50 resources (1 Patient + 49 vital signs), 8 clients, {} s{} ==",
        args.seconds * 2,
        if rounds > 1 { format!(" per round, {rounds} rounds per build, alternating") } else { String::new() }
    );
    let bundle = Arc::new(IngestBundle::new());
    println!("  bundle size: {} bytes", bundle.body(0).len());
    let builds: Vec<(&str, Option<&Path>)> = match &args.compare_with {
        Some(other) => vec![("other build", Some(other.as_path())), ("this build", None)],
        None => vec![("this build", None)],
    };
    let mut throughputs: Vec<Vec<f64>> = vec![Vec::new(); builds.len()];
    for round in 0..rounds {
        for (index, (name, binary)) in builds.iter().enumerate() {
            // Each round writes a fresh database, so every round ingests into the same state.
            let data = dir.join(format!("ingest-{round}-{index}.redb"));
            let server = match binary {
                Some(binary) => servers::start_braid_binary(binary, &data),
                None => servers::start_braid(&data),
            };
            let bundle = bundle.clone();
            let request =
                move |_: usize, _: usize| load::post("/fhir", &bundle.next_body(), "Prefer: return=minimal\r\n");
            let result = load::run(server.port, 8, Duration::from_secs(args.seconds * 2), request).await;
            drop(server);
            let _ = std::fs::remove_file(&data);
            println!(
                "  {name}: {:.0} bundles/s = {:.0} resources/s (target >= 8000)  p50 {:.1} ms  p99 {:.1} ms  errors {}{}",
                result.throughput(),
                result.throughput() * 50.0,
                result.percentile(0.5),
                result.percentile(0.99),
                result.errors,
                result.error_note()
            );
            throughputs[index].push(result.throughput() * 50.0);
        }
    }
    if rounds > 1 {
        let medians: Vec<f64> = throughputs.iter_mut().map(|values| median(values)).collect();
        println!(
            "  medians: other build {:.0} resources/s, this build {:.0} resources/s, ratio {:.2}",
            medians[0],
            medians[1],
            medians[1] / medians[0]
        );
    }
}

async fn startup_scenario(args: &Args, dir: &Path) {
    println!("\n== start-up and memory with {} stored resources ==", args.resources);
    let data = dir.join("million.redb");
    let store = open_store(&data);
    let started = Instant::now();
    fill(&store, args.resources, 5000, observation).await;
    close_store(store).await;
    println!(
        "  built in {:.0} s ({:.0} resources/s in-process); file {:.0} MiB",
        started.elapsed().as_secs_f64(),
        args.resources as f64 / started.elapsed().as_secs_f64(),
        std::fs::metadata(&data).map(|m| m.len() as f64 / 1048576.0).unwrap_or(0.0)
    );
    let mut ready = Vec::new();
    for _ in 0..3 {
        let server = servers::start_braid(&data);
        ready.push(server.ready_after.as_secs_f64() * 1000.0);
    }
    println!(
        "  time to serve (process start to first answer), 3 starts: {:.0?} ms; median {:.0} ms (target < 1000 ms)",
        ready,
        median(&mut ready.clone())
    );

    // After a crash: SIGKILL while 8 clients write, then start again. redb must then check the
    // file before it can serve (its repair is what this measures).
    let mut ready_after_crash = Vec::new();
    for round in 0..3 {
        let server = servers::start_braid(&data);
        let port = server.port;
        let writes = tokio::spawn(load::run(port, 8, Duration::from_secs(30), move |connection, n| {
            let (_, _, mut body) = observation(resources_offset(round, connection, n));
            body.as_object_mut().expect("an object").remove("id");
            load::post("/fhir/Observation", &serde_json::to_vec(&body).expect("json"), "Prefer: return=minimal\r\n")
        }));
        tokio::time::sleep(Duration::from_millis(1500)).await;
        server.kill_hard();
        let written = writes.await.expect("the write load ends when the server dies");
        let restarted = servers::start_braid(&data);
        println!(
            "  crash {round}: killed after {} acknowledged writes; time to serve after the crash {:.0} ms",
            written.requests,
            restarted.ready_after.as_secs_f64() * 1000.0
        );
        ready_after_crash.push(restarted.ready_after.as_secs_f64() * 1000.0);
    }
    println!(
        "  time to serve after a crash (SIGKILL mid-write), 3 crashes: {:.0?} ms; median {:.0} ms (target <= 2000 ms)",
        ready_after_crash,
        median(&mut ready_after_crash.clone())
    );

    let server = servers::start_braid(&data);
    let resources = args.resources;
    let request =
        move |connection: usize, n: usize| load::get(&format!("/fhir/Observation/o{}", pick(connection, n, resources)));
    let port = server.port;
    let load = tokio::spawn(load::run(port, 32, Duration::from_secs(args.seconds * 2), request));
    let mut peak: f64 = 0.0;
    while !load.is_finished() {
        peak = peak.max(server.rss_mib());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let result = load.await.unwrap();
    println!(
        "  random reads over all resources: {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, errors {}{}",
        result.throughput(),
        result.percentile(0.5),
        result.percentile(0.99),
        result.errors,
        result.error_note()
    );
    println!("  peak resident memory while serving: {peak:.0} MiB (target < 300 MiB)");
}

/// A number for the `n`-th write of `connection` in crash round `round`, distinct across rounds
/// and connections (the bodies differ; the server assigns the ids).
fn resources_offset(round: usize, connection: usize, n: usize) -> usize {
    round * 10_000_000 + connection * 1_000_000 + n
}

const CODES: [&str; 10] =
    ["8867-4", "9279-1", "8310-5", "29463-7", "8302-2", "39156-5", "59408-5", "8480-6", "8462-4", "9843-4"];

/// `--id-digits`, for [`search_observation`].
static ID_DIGITS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

/// Observation `n` of the search scenario: code and year cycle, ten patients get the first 10,000.
fn search_observation(n: usize) -> (ResourceType, String, Value) {
    let id = match ID_DIGITS.get() {
        Some(&digits) if digits > 0 => format!("{n:0digits$}"),
        _ => format!("so{n}"),
    };
    let patient = if n < 10_000 { n % 10 } else { n % 10_000 };
    let body = json!({
        "resourceType": "Observation", "id": id, "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": CODES[n % 10]}]},
        "subject": {"reference": format!("Patient/p{patient}")},
        "effectiveDateTime": format!("{}-{:02}-{:02}T08:30:00Z", 2015 + (n / 10) % 10, 1 + n % 12, 1 + n % 28),
        "valueQuantity": {"value": 40 + n % 100, "system": "http://unitsofmeasure.org", "code": "/min"}
    });
    (ResourceType::parse("Observation").unwrap(), id, body)
}

async fn search_scenario(args: &Args, dir: &Path) {
    let observations = args.resources;
    println!("\n== search: 10,000 patients and {observations} observations ==");
    let data = dir.join("search.redb");
    let (resources, elapsed) = build_search_database(&data, observations).await;
    let (bytes, _) = file_sizes(&data);
    println!(
        "  written with all search parameters indexed: {:.0} resources/s in-process ({elapsed:.0} s); file {:.0} MiB = {:.0} bytes per resource",
        resources as f64 / elapsed,
        bytes as f64 / 1048576.0,
        bytes as f64 / resources as f64
    );
    let server = servers::start_braid(&data);
    let mut queries = search_queries();
    let tenth_pages = tenth_sorted_pages(server.port).await;
    let tenth: MakeQuery = Arc::new(move |c, n| tenth_pages[pick(c, n, 10)].clone());
    // Before $everything, as it was printed.
    queries.insert(queries.len() - 1, ("Observation?code=Y&_sort=-date&_count=50 (page 10)", tenth, "p50 <= 20 ms"));
    for (name, make, target) in queries {
        let result = query_latency(server.port, &make, args.seconds).await;
        println!(
            "  {name:55} p50 {:>7.2} ms  p99 {:>7.2} ms  ({} requests, errors {})  target {target}{}",
            result.percentile(0.5),
            result.percentile(0.99),
            result.requests,
            result.errors,
            result.error_note()
        );
    }
    drop(server);
    report_file(&format!("search database (10,000 patients, {observations} observations)"), &data, resources, 2048);
}

/// Makes a search's path from the connection and the request's number.
type MakeQuery = Arc<dyn Fn(usize, usize) -> String + Send + Sync>;

/// One search query's latency: one connection for `seconds`, after a warm-up.
async fn query_latency(port: u16, make: &MakeQuery, seconds: u64) -> load::LoadResult {
    let make = make.clone();
    load::warmed_run(port, 1, Duration::from_secs(seconds), move |c, n| load::get(&make(c, n))).await
}

/// The queries of the search database (`build_search_database`) with their targets: the search
/// scenario's (which adds the tenth sorted page), repeated by the encryption scenario.
fn search_queries() -> Vec<(&'static str, MakeQuery, &'static str)> {
    let patients = 10_000;
    vec![
        (
            "Observation?patient=X&code=Y",
            Arc::new(move |c, n| {
                format!(
                    "/fhir/Observation?patient=Patient/p{}&code=http://loinc.org|{}",
                    10 + pick(c, n, patients - 10),
                    CODES[pick(c, n + 7, 10)]
                )
            }),
            "p50 <= 2 ms, p99 <= 10 ms",
        ),
        (
            "Observation?code=Y&date=ge2020-01-01&_count=50",
            Arc::new(|c, n| {
                format!("/fhir/Observation?code=http://loinc.org|{}&date=ge2020-01-01&_count=50", CODES[pick(c, n, 10)])
            }),
            "p50 <= 20 ms",
        ),
        (
            "Observation?code=Y&_summary=count (100,000 hits)",
            Arc::new(|c, n| {
                format!("/fhir/Observation?code=http://loinc.org|{}&_summary=count", CODES[pick(c, n, 10)])
            }),
            "<= 50 ms",
        ),
        (
            "Observation?date=ge2024-01-01&_count=50",
            Arc::new(|_, _| "/fhir/Observation?date=ge2024-01-01&_count=50".to_owned()),
            "p50 <= 5 ms",
        ),
        (
            "Observation?code=Y&_sort=-date&_count=50 (page 1 of 100,000 hits)",
            Arc::new(|c, n| {
                format!("/fhir/Observation?code=http://loinc.org|{}&_sort=-date&_count=50", CODES[pick(c, n, 10)])
            }),
            "p50 <= 20 ms",
        ),
        (
            "Patient/X/$everything?_count=1000 (~1,100 resources)",
            Arc::new(|c, n| format!("/fhir/Patient/p{}/$everything?_count=1000", pick(c, n, 10))),
            "p50 <= 10 ms",
        ),
    ]
}

/// For each code, the path of the tenth page of `code=Y&_sort=-date&_count=50`, found by
/// following nine `next` links from the first page (cursors stay valid for an hour).
async fn tenth_sorted_pages(port: u16) -> Vec<String> {
    let client = reqwest::Client::new();
    let origin = format!("http://127.0.0.1:{port}");
    let mut pages = Vec::new();
    for code in CODES {
        let mut path = format!("/fhir/Observation?code=http://loinc.org|{code}&_sort=-date&_count=50");
        for _ in 0..9 {
            let bundle: Value =
                client.get(format!("{origin}{path}")).send().await.expect("search").json().await.expect("bundle");
            let next = bundle["link"]
                .as_array()
                .and_then(|links| links.iter().find(|link| link["relation"] == "next"))
                .and_then(|link| link["url"].as_str())
                .expect("a sorted search of 100,000 hits has a next page");
            let at = next.find("/fhir/").expect("links are on the server's base");
            path = next[at..].to_owned();
        }
        pages.push(path);
    }
    pages
}

/// The file's length, and the bytes it occupies on disk (its allocated blocks: redb grows the
/// file in large steps, up to doubling it, and the part not yet written is a hole that takes no
/// disk space on file systems with sparse files).
fn file_sizes(path: &Path) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path).expect("the database file exists");
    (metadata.len(), metadata.blocks() * 512)
}

/// Prints each table's share of the file: rows, bytes of keys and values, B-tree overhead and
/// unused page space, per resource.
fn print_table_usage(store: &Store, resources: usize) {
    let usage = store.table_usage().expect("table statistics");
    let per = |bytes: u64| bytes as f64 / resources as f64;
    let allocated = store.allocated_bytes().expect("database statistics");
    println!("  {:30} {:>10} {:>12} {:>12} {:>12}", "table", "rows", "data B/res", "btree B/res", "unused B/res");
    for table in usage {
        println!(
            "  {:30} {:>10} {:>12.0} {:>12.0} {:>12.0}",
            table.name,
            table.rows,
            per(table.stored_bytes),
            per(table.metadata_bytes),
            per(table.fragmented_bytes)
        );
    }
    println!("  pages in use: {:.0} MiB = {:.0} bytes per resource", allocated as f64 / 1048576.0, per(allocated));
}

/// Writes the search scenario's database at `data` (10,000 patients and `observations`
/// observations), prints its tables' usage and closes it. Returns the resources written and the
/// seconds writing them took.
async fn build_search_database(data: &Path, observations: usize) -> (usize, f64) {
    build_search_database_with(data, observations, None).await
}

async fn build_search_database_with(
    data: &Path,
    observations: usize,
    key: Option<Arc<braid::crypt::KeyFile>>,
) -> (usize, f64) {
    let store = open_store_with(data, key);
    let started = Instant::now();
    fill(&store, 10_000, 1000, patient).await;
    fill(&store, observations, 2000, search_observation).await;
    let elapsed = started.elapsed().as_secs_f64();
    let resources = observations + 10_000;
    print_table_usage(&store, resources);
    close_store(store).await;
    (resources, elapsed)
}

/// The disk figures: the demo load's, then the search database's (which the `search`
/// scenario also prints, after its queries).
async fn disk_scenario(args: &Args, dir: &Path) {
    demo_disk(dir).await;
    let observations = args.resources;
    let data = dir.join("disk.redb");
    let (resources, _) = build_search_database(&data, observations).await;
    report_file(&format!("search database (10,000 patients, {observations} observations)"), &data, resources, 2048);
}

/// Bytes per resource of the demo load (official examples and Synthea, US Core shaped).
async fn demo_disk(dir: &Path) {
    println!("\n== disk: bytes per resource ==");
    let data = dir.join("demo.redb");
    let store = open_store(&data);
    let limits = braid::http::Limits::from_settings(&braid::config::Settings::default());
    let loaded = braid::demo::load_if_empty(&store, &limits, "http://localhost/fhir").await.expect("demo data loads");
    let loaded = loaded.expect("the database is new");
    let resources = loaded.examples + loaded.synthea_resources;
    print_table_usage(&store, resources);
    close_store(store).await;
    report_file(
        &format!("demo load ({} official examples, {} Synthea resources)", loaded.examples, loaded.synthea_resources),
        &data,
        resources,
        4096,
    );
}

/// Prints the size of the database file at `data` (no server may have it open) per resource:
/// its length, the bytes it occupies on disk, and its length after `braid compact` (run here).
fn report_file(label: &str, data: &Path, resources: usize, target: u64) {
    let per = |bytes: u64| bytes as f64 / resources as f64;
    let (bytes, on_disk) = file_sizes(data);
    println!(
        "  {label}: file {:.1} MiB = {:.0} bytes per resource, on disk {:.0} (target <= {target})",
        bytes as f64 / 1048576.0,
        per(bytes),
        per(on_disk)
    );
    let compacted = braid::store::compact(data, None, Duration::from_secs(3600), &SearchIndexer).expect("compaction");
    println!(
        "  after `braid compact`: file {:.1} MiB = {:.0} bytes per resource",
        compacted.bytes_after as f64 / 1048576.0,
        per(compacted.bytes_after)
    );
}

/// Observations in the pages scenario.
const PAGE_OBSERVATIONS: usize = 20_000;

/// Laboratory codes of the pages scenario: the first has 60 hits, the second 1,060, the other
/// eight share the rest (~2,360 each).
const LAB_CODES: [(&str, &str); 10] = [
    ("2951-2", "Sodium [Moles/volume] in Serum or Plasma"),
    ("2823-3", "Potassium [Moles/volume] in Serum or Plasma"),
    ("2075-0", "Chloride [Moles/volume] in Serum or Plasma"),
    ("2028-9", "Carbon dioxide, total [Moles/volume] in Serum or Plasma"),
    ("3094-0", "Urea nitrogen [Mass/volume] in Serum or Plasma"),
    ("2160-0", "Creatinine [Mass/volume] in Serum or Plasma"),
    ("2345-7", "Glucose [Mass/volume] in Serum or Plasma"),
    ("17861-6", "Calcium [Mass/volume] in Serum or Plasma"),
    ("718-7", "Hemoglobin [Mass/volume] in Blood"),
    ("6690-2", "Leukocytes [#/volume] in Blood by Automated count"),
];

/// The index into [`LAB_CODES`] of observation `n`.
fn lab_code_of(n: usize) -> usize {
    match n {
        0..60 => 0,
        60..1120 => 1,
        _ => 2 + n % 8,
    }
}

/// A US Core laboratory Observation of about 1.4 KB.
fn lab_observation(n: usize) -> (ResourceType, String, Value) {
    let id = format!("lab{n}");
    let (code, display) = LAB_CODES[lab_code_of(n)];
    let patient = n % 10_000;
    let day = format!("{}-{:02}-{:02}", 2016 + n % 9, 1 + n % 12, 1 + n % 28);
    let body = json!({
        "resourceType": "Observation", "id": id,
        "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-lab"]},
        "identifier": [{"use": "official", "system": "urn:oid:2.16.840.1.113883.3.1234.5.6", "value": format!("LAB-{n:08}")}],
        "basedOn": [{"reference": format!("ServiceRequest/sr{}", n / 4), "display": "Basic metabolic panel"}],
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory", "display": "Laboratory"}], "text": "Laboratory"}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display},
        "subject": {"reference": format!("Patient/p{patient}"), "display": format!("Patient {patient}")},
        "encounter": {"reference": format!("Encounter/e{}", n / 4)},
        "effectiveDateTime": format!("{day}T07:45:00Z"),
        "issued": format!("{day}T11:20:31.417Z"),
        "performer": [{"reference": "Organization/lab-1", "display": "Acme Clinical Laboratory"}],
        "valueQuantity": {"value": 100 + n % 50, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
        "interpretation": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation", "code": "N", "display": "Normal"}], "text": "Normal"}],
        "specimen": {"reference": format!("Specimen/s{}", n / 4), "display": "Serum specimen"},
        "referenceRange": [{
            "low": {"value": 98, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
            "high": {"value": 149, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
            "text": "98-149 mmol/L"
        }]
    });
    (ResourceType::parse("Observation").unwrap(), id, body)
}

async fn pages_scenario(args: &Args, dir: &Path) {
    println!(
        "\n== pages: 10,000 patients and {PAGE_OBSERVATIONS} lab observations; read by id and code-search pages at 32 \
         connections, {} alternating rounds of {} s ==",
        args.rounds, args.seconds
    );
    let data = dir.join("pages.redb");
    let store = open_store(&data);
    fill(&store, 10_000, 1000, patient).await;
    fill(&store, PAGE_OBSERVATIONS, 2000, lab_observation).await;
    let sample = store
        .snapshot()
        .unwrap()
        .current(ResourceType::parse("Observation").unwrap(), "lab0")
        .unwrap()
        .expect("lab0 is stored");
    println!("  an observation's stored body: {} bytes", sample.body.len());
    close_store(store).await;
    let server = servers::start_braid(&data);

    let read = |connection: usize, n: usize| {
        load::get(&format!("/fhir/Observation/lab{}", pick(connection, n, PAGE_OBSERVATIONS)))
    };
    // Every code but the rare one: each has 1,060 or more hits, so every page is full and has a
    // next link.
    let page = |connection: usize, n: usize| {
        let (code, _) = LAB_CODES[1 + pick(connection, n, LAB_CODES.len() - 1)];
        load::get(&format!("/fhir/Observation?code=http://loinc.org|{code}&_count=20"))
    };
    let (mut reads, mut pages) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        for (name, results) in [("read by id", &mut reads), ("page", &mut pages)] {
            let result = if name == "page" {
                load::warmed_run(server.port, 32, Duration::from_secs(args.seconds), page).await
            } else {
                load::warmed_run(server.port, 32, Duration::from_secs(args.seconds), read).await
            };
            println!(
                "  round {round} {name:10}: {:>8.0} req/s  p50 {:.2} ms  p99 {:.2} ms  errors {}{}",
                result.throughput(),
                result.percentile(0.5),
                result.percentile(0.99),
                result.errors,
                result.error_note()
            );
            results.push(result.throughput());
        }
    }
    let (read_rps, page_rps) = (median(&mut reads), median(&mut pages));
    println!("  median read by id: {read_rps:.0} req/s; median code-search page (_count=20): {page_rps:.0} req/s");
    println!("  page / read: {:.1}% (issue: 4.3% before; target >= 8.5%)", 100.0 * page_rps / read_rps);

    for (index, hits) in [(0, "60"), (1, "1,060"), (2, "~2,360")] {
        let code = LAB_CODES[index].0;
        let path = format!("/fhir/Observation?code=http://loinc.org|{code}&_count=20");
        let request = move |_: usize, _: usize| load::get(&path);
        let result = load::warmed_run(server.port, 1, Duration::from_secs(args.seconds), request).await;
        println!(
            "  first page, 1 connection, code with {hits:>6} hits: p50 {:.3} ms  p99 {:.3} ms  ({} requests){}",
            result.percentile(0.5),
            result.percentile(0.99),
            result.requests,
            result.error_note()
        );
    }
}

/// A backend client's ES384 key: signs assertions; its public half is registered.
pub(crate) struct BackendKey {
    private: jsonwebtoken::EncodingKey,
    pub(crate) public: jsonwebtoken::jwk::Jwk,
}

impl BackendKey {
    pub(crate) fn generate() -> BackendKey {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &rng,
        )
        .expect("key generation");
        let private = jsonwebtoken::EncodingKey::from_ec_der(pkcs8.as_ref());
        let mut public = jsonwebtoken::jwk::Jwk::from_encoding_key(&private, jsonwebtoken::Algorithm::ES384).unwrap();
        public.common.key_id = Some("bench".into());
        BackendKey { private, public }
    }

    /// `count` token request forms for `system/Patient.rs`, each with a fresh assertion for
    /// `client_id` at `port`.
    fn forms(&self, client_id: &str, port: u16, count: usize) -> Vec<String> {
        self.forms_for(client_id, port, count, "system%2FPatient.rs")
    }

    /// Like [`BackendKey::forms`], for the (form-encoded) `scope`.
    fn forms_for(&self, client_id: &str, port: u16, count: usize, scope: &str) -> Vec<String> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES384);
        header.kid = Some("bench".into());
        let aud = format!("http://127.0.0.1:{port}/auth/token");
        let exp = braid::auth::now_secs() + 280;
        (0..count)
            .map(|n| {
                let claims = json!({"iss": client_id, "sub": client_id, "aud": aud, "exp": exp, "jti": format!("{n}-{}", uuid::Uuid::new_v4())});
                let assertion = jsonwebtoken::encode(&header, &claims, &self.private).unwrap();
                format!(
                    "grant_type=client_credentials&scope={scope}&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={assertion}"
                )
            })
            .collect()
    }
}

async fn auth_scenario(args: &Args, dir: &Path) {
    println!(
        "\n== SMART: client_credentials tokens/s and read by id with a bearer token vs auth off: {} patients, 32 connections, {} rounds of {} s ==",
        args.patients, args.rounds, args.seconds
    );
    let data = dir.join("auth.redb");
    let store = open_store(&data);
    fill(&store, args.patients, 1000, patient).await;
    let key = BackendKey::generate();
    let jwks = serde_json::to_string(&json!({"keys": [key.public]})).unwrap();
    let new = braid::auth::clients::NewClient {
        name: "bench".into(),
        scope: "system/Patient.rs".into(),
        grant_types: Vec::new(),
        redirect_uris: Vec::new(),
        credential: braid::auth::clients::NewCredential::Jwks(jwks),
        source: None,
    };
    let client_id = braid::auth::clients::add(&store, new, braid::auth::now_secs()).await.unwrap().client.client_id;
    close_store(store).await;

    // Tokens per second: every request carries an assertion never used before.
    let mut tokens = Vec::new();
    for round in 0..args.rounds {
        let server = servers::start_braid_with_auth(&data);
        let count = 40_000;
        let host = format!("127.0.0.1:{}", server.port);
        let forms: Arc<Vec<Vec<u8>>> = Arc::new(
            key.forms(&client_id, server.port, count)
                .iter()
                .map(|form| load::post_form(&host, "/auth/token", form))
                .collect(),
        );
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let request = move |_: usize, _: usize| {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            forms[n % forms.len()].clone()
        };
        let result = load::run(server.port, 32, Duration::from_secs(args.seconds), request).await;
        println!(
            "  round {round} tokens: {:>7.0} tokens/s  p50 {:.2} ms  p99 {:.2} ms  errors {}{}",
            result.throughput(),
            result.percentile(0.5),
            result.percentile(0.99),
            result.errors,
            result.error_note()
        );
        if result.requests + result.errors >= count {
            println!("  (round {round} used every pre-signed assertion; later requests were replays)");
        }
        tokens.push(result.throughput());
    }
    println!("  median: {:.0} tokens/s (target >= 1000)", median(&mut tokens));

    // Read by id: the same reads without and with a bearer token.
    let patients = args.patients;
    let (mut open, mut bearer) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        for with_auth in [false, true] {
            let server = if with_auth { servers::start_braid_with_auth(&data) } else { servers::start_braid(&data) };
            let header = if with_auth {
                let token = backend_token(&key, &client_id, server.port, "system%2FPatient.rs").await;
                format!("Authorization: Bearer {token}\r\n")
            } else {
                String::new()
            };
            let host = format!("127.0.0.1:{}", server.port);
            let request = move |connection: usize, n: usize| {
                load::get_with(&host, &format!("/fhir/Patient/p{}", pick(connection, n, patients)), &header)
            };
            let result = load::warmed_run(server.port, 32, Duration::from_secs(args.seconds), request).await;
            let name = if with_auth { "bearer" } else { "auth off" };
            println!(
                "  round {round} {name:8}: {:>8.0} req/s  p50 {:.2} ms  p99 {:.2} ms  errors {}{}",
                result.throughput(),
                result.percentile(0.5),
                result.percentile(0.99),
                result.errors,
                result.error_note()
            );
            if with_auth { bearer.push(result.throughput()) } else { open.push(result.throughput()) }
        }
    }
    let (open, bearer) = (median(&mut open), median(&mut bearer));
    println!(
        "  median auth off {open:.0} req/s, bearer {bearer:.0} req/s: overhead {:.1}% (target <= 15%)",
        100.0 * (1.0 - bearer / open)
    );
}

/// The base URL the auth-search servers announce, so that tokens can be signed before they start.
const AUTH_SEARCH_BASE: &str = "http://bench.local/fhir";

async fn auth_search_scenario(args: &Args, dir: &Path) {
    let observations = args.resources;
    println!(
        "\n== search with a patient-scoped token vs authorization off: 10,000 patients, {observations} observations, {} rounds of {} s ==",
        args.rounds, args.seconds
    );
    let data = dir.join("auth-search.redb");
    build_search_database(&data, observations).await;
    // A token for patient p3, signed with the database's own key.
    let store = open_store(&data);
    braid::auth::keys::ensure(&store).await.expect("keys");
    let ring = store.auth_read(braid::auth::keys::KeyRing::load).expect("key ring");
    close_store(store).await;
    let now = braid::auth::now_secs();
    let claims = braid::auth::token::AccessClaims {
        iss: AUTH_SEARCH_BASE.into(),
        aud: AUTH_SEARCH_BASE.into(),
        sub: "p3-user".into(),
        client_id: "bench".into(),
        scope: "launch/patient patient/*.rs".into(),
        iat: now,
        exp: now + 3000,
        jti: "bench".into(),
        patient: Some("p3".into()),
        fhir_user: None,
        gid: None,
        role: None,
        source: None,
    };
    let token = braid::auth::token::issue(&ring, &claims).expect("a token");
    type MakeQuery = Box<dyn Fn(usize, usize) -> String + Send + Sync>;
    let queries: Vec<(&str, MakeQuery)> = vec![
        (
            "Observation?patient=p3&code=Y",
            Box::new(|c, n| {
                format!("/fhir/Observation?patient=Patient/p3&code=http://loinc.org|{}", CODES[pick(c, n, 10)])
            }),
        ),
        (
            "Observation?patient=p3&date=ge2020-01-01&_count=50",
            Box::new(|_, _| "/fhir/Observation?patient=Patient/p3&date=ge2020-01-01&_count=50".to_owned()),
        ),
        ("Patient/p3/Observation?_count=50", Box::new(|_, _| "/fhir/Patient/p3/Observation?_count=50".to_owned())),
    ];
    let header = format!("Authorization: Bearer {token}\r\n");
    for (name, make) in queries {
        let make = Arc::new(make);
        let (mut open, mut scoped) = (Vec::new(), Vec::new());
        for _ in 0..args.rounds {
            for with_auth in [false, true] {
                let env: &[(&str, &str)] =
                    if with_auth { &[("BRAID_AUTH", "on"), ("BRAID_BASE_URL", AUTH_SEARCH_BASE)] } else { &[] };
                let server = servers::start_braid_with_env(&data, env);
                let header = if with_auth { header.clone() } else { String::new() };
                let make = make.clone();
                let request = move |c: usize, n: usize| load::get_with("127.0.0.1", &make(c, n), &header);
                let result = load::warmed_run(server.port, 1, Duration::from_secs(args.seconds), request).await;
                assert_eq!(result.errors, 0, "{name}: {}", result.error_note());
                if with_auth { scoped.push(result.percentile(0.5)) } else { open.push(result.percentile(0.5)) }
            }
        }
        let (open, scoped) = (median(&mut open), median(&mut scoped));
        println!(
            "  {name:52} p50 auth off {open:.3} ms, patient token {scoped:.3} ms: overhead {:.1}% (target <= 20%)",
            100.0 * (scoped / open - 1.0)
        );
    }
}

/// The ingest bundle: a transaction of one Patient and 49 vital signs about it. Each request
/// sends a different person ([`IngestBundle::next_body`]), as a real feed does: 10,000 copies of one
/// Patient would have the master patient index merge them all into one golden Patient while
/// the writes are measured.
struct IngestBundle {
    /// The bundle's bytes before and after the Patient resource.
    before: Vec<u8>,
    after: Vec<u8>,
    /// Whether the entries carry the sender's ids (`@N@` in the bytes stands for the request's
    /// number).
    keyed: bool,
    /// The number of the next request's Patient.
    next: std::sync::atomic::AtomicUsize,
}

impl IngestBundle {
    /// Creates without ids, the Observations pointing at the Patient's `urn:uuid`.
    fn new() -> IngestBundle {
        IngestBundle::shaped(false)
    }

    /// The same resources with the sender's own ids, written by `PUT Type/id` (as an
    /// integration engine sends its records): `Patient/p{n}` and `Observation/p{n}-{k}`.
    fn keyed() -> IngestBundle {
        IngestBundle::shaped(true)
    }

    fn shaped(keyed: bool) -> IngestBundle {
        let patient_url = "urn:uuid:2b6a1b3e-9e5d-4a65-8a55-0a6f1f0e0001";
        let (patient_request, subject) = if keyed {
            (json!({"method": "PUT", "url": "Patient/p@N@"}), "Patient/p@N@")
        } else {
            (json!({"method": "POST", "url": "Patient"}), patient_url)
        };
        let mut entries = vec![json!({"fullUrl": patient_url, "resource": "@PATIENT@", "request": patient_request})];
        for n in 0..49 {
            let mut observation = observation(n).2;
            let request = if keyed {
                let id = format!("p@N@-{n}");
                observation["id"] = json!(id);
                json!({"method": "PUT", "url": format!("Observation/{id}")})
            } else {
                observation.as_object_mut().unwrap().remove("id");
                json!({"method": "POST", "url": "Observation"})
            };
            observation["subject"]["reference"] = json!(subject);
            entries.push(json!({"resource": observation, "request": request}));
        }
        let bundle =
            serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})).unwrap();
        let at = bundle.windows(11).position(|window| window == b"\"@PATIENT@\"").expect("the placeholder");
        IngestBundle {
            before: bundle[..at].to_vec(),
            after: bundle[at + 11..].to_vec(),
            keyed,
            next: Default::default(),
        }
    }

    /// The bundle with Patient `n` (a different person for each `n`).
    fn body(&self, n: usize) -> Vec<u8> {
        let mut patient = patient(n).2;
        if !self.keyed {
            patient.as_object_mut().unwrap().remove("id");
        }
        let body = [self.before.as_slice(), &serde_json::to_vec(&patient).unwrap(), &self.after].concat();
        if self.keyed { String::from_utf8(body).unwrap().replace("@N@", &n.to_string()).into_bytes() } else { body }
    }

    /// The bundle with the next Patient: every request of a run about someone new.
    fn next_body(&self) -> Vec<u8> {
        self.body(self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
    }
}

/// An access token for `client_id` from the server at `port`, asking for `scope`
/// (form-encoded).
async fn backend_token(key: &BackendKey, client_id: &str, port: u16, scope: &str) -> String {
    let form = key.forms_for(client_id, port, 1, scope).remove(0);
    let reply = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/auth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    let token: Value = reply.json().await.unwrap();
    token["access_token"].as_str().expect("a token").to_owned()
}

/// One mode's runs in the push scenario, by round: resources per second, and microseconds of
/// server CPU per resource pushed (the whole process, and its writer thread; NaN when a
/// reading failed).
#[derive(Default)]
struct PushRuns {
    rates: Vec<f64>,
    cpu: Vec<f64>,
    writer: Vec<f64>,
}

/// The median over rounds of `compare(plain, source)` for the two runs of each round, left out
/// where it is not a number. A round's two runs follow each other, so their ratio is spared
/// the drift of a shared machine between rounds: the steadier figure.
fn median_of_rounds(plain: &[f64], source: &[f64], compare: impl Fn(f64, f64) -> f64) -> f64 {
    let mut per_round: Vec<f64> =
        plain.iter().zip(source).map(|(&plain, &source)| compare(plain, source)).filter(|v| v.is_finite()).collect();
    median(&mut per_round)
}

/// The median of the values that are numbers.
fn finite_median(values: &[f64]) -> f64 {
    let mut finite: Vec<f64> = values.iter().copied().filter(|value| value.is_finite()).collect();
    median(&mut finite)
}

async fn push_scenario(args: &Args, dir: &Path) {
    println!(
        "\n== push: the ingest bundles (50 resources) as a source vs without one, auth on, 8 clients, {} rounds of {} s ==",
        args.rounds,
        args.seconds * 2
    );
    let key = BackendKey::generate();
    let jwks = serde_json::to_string(&json!({"keys": [key.public]})).unwrap();
    let shapes = [("creates without ids", IngestBundle::new()), ("PUTs with the sender's ids", IngestBundle::keyed())];
    for (shape, bundle) in shapes {
        println!("  {shape}:");
        let bundle = Arc::new(bundle);
        // By mode: no source, as a source. Server CPU is steadier than throughput on a shared
        // machine, and says where a source's cost lies.
        let mut runs = [PushRuns::default(), PushRuns::default()];
        for round in 0..args.rounds {
            // The two runs of a round swap places every other round, so that a drift of the
            // machine during a round (the page cache, the previous run's writeback) does not
            // always fall on the same mode.
            let order = if round % 2 == 0 { [false, true] } else { [true, false] };
            for as_source in order {
                let name = if as_source { "as a source" } else { "no source" };
                // A fresh database per round, with both clients registered before the server starts.
                let data = dir.join(format!("push-{round}-{as_source}.redb"));
                let store = open_store(&data);
                let client_id = if as_source {
                    let sources = braid::sources::Registry::load(&store).unwrap();
                    let source = braid::sources::NewSource {
                        name: "clinic".into(),
                        credential: braid::auth::clients::NewCredential::Jwks(jwks.clone()),
                        pull: None,
                        types: Vec::new(),
                        lenient: false,
                        extra_scope: None,
                    };
                    let added = sources.add(source).await.unwrap();
                    added["client_id"].as_str().unwrap().to_owned()
                } else {
                    let new = braid::auth::clients::NewClient {
                        name: "plain".into(),
                        scope: "system/*.cruds".into(),
                        grant_types: Vec::new(),
                        redirect_uris: Vec::new(),
                        credential: braid::auth::clients::NewCredential::Jwks(jwks.clone()),
                        source: None,
                    };
                    braid::auth::clients::add(&store, new, braid::auth::now_secs()).await.unwrap().client.client_id
                };
                close_store(store).await;
                let server = servers::start_braid_with_auth(&data);
                let token = backend_token(&key, &client_id, server.port, "system%2F*.cruds").await;
                let headers = format!("Prefer: return=minimal\r\nAuthorization: Bearer {token}\r\n");
                let (bundle, host) = (bundle.clone(), format!("127.0.0.1:{}", server.port));
                let request = move |_: usize, _: usize| load::post_to(&host, "/fhir", &bundle.next_body(), &headers);
                let cpu_seconds = || (server.cpu_seconds(), server.thread_cpu_seconds("braid-writer"));
                let before = cpu_seconds();
                let result = load::run(server.port, 8, Duration::from_secs(args.seconds * 2), request).await;
                let after = cpu_seconds();
                drop(server);
                // What the writer had to store per resource pushed: the work a source adds.
                let store = open_store(&data);
                let pushed = (result.requests * 50).max(1) as f64;
                let entries = store.index_stats().unwrap().entries as f64 / pushed;
                let stored: u64 = store.table_usage().unwrap().iter().map(|table| table.stored_bytes).sum();
                if round == 0 {
                    // Where the bytes a source adds go, once per mode and shape.
                    println!("    round 0 {name}, per table:");
                    print_table_usage(&store, pushed as usize);
                }
                close_store(store).await;
                let _ = std::fs::remove_file(&data);
                // Microseconds of server CPU per resource pushed. A reading that failed (no such
                // process or thread) is NaN: printed as such, and left out of the medians.
                let per_resource = |before: Option<f64>, after: Option<f64>| {
                    before.zip(after).map_or(f64::NAN, |(before, after)| (after - before) * 1e6 / pushed)
                };
                let (cpu_per, writer_per) = (per_resource(before.0, after.0), per_resource(before.1, after.1));
                println!(
                    "    round {round} {name:11}: {:>6.0} resources/s  p50 {:.1} ms  p99 {:.1} ms  errors {}{}  ({entries:.1} index entries, {:.0} bytes stored, server CPU {cpu_per:.0} µs, writer {writer_per:.0} µs per resource pushed)",
                    result.throughput() * 50.0,
                    result.percentile(0.5),
                    result.percentile(0.99),
                    result.errors,
                    result.error_note(),
                    stored as f64 / pushed,
                );
                let mode = &mut runs[usize::from(as_source)];
                mode.rates.push(result.throughput() * 50.0);
                mode.cpu.push(cpu_per);
                mode.writer.push(writer_per);
            }
        }
        let [plain, source] = &runs;
        // Throughput lost as a source; extra CPU as a source (both positive when a source costs).
        let overhead = |plain: f64, source: f64| 100.0 * (1.0 - source / plain);
        let extra = |plain: f64, source: f64| 100.0 * (source / plain - 1.0);
        let (plain_rate, source_rate) = (finite_median(&plain.rates), finite_median(&source.rates));
        println!(
            "  {shape}: median no source {plain_rate:.0} resources/s, as a source {source_rate:.0} resources/s: namespacing overhead {:.1}%, median of the rounds' overheads {:.1}% (target <= 10%)",
            overhead(plain_rate, source_rate),
            median_of_rounds(&plain.rates, &source.rates, overhead)
        );
        println!(
            "  {shape}: server CPU per resource, medians: no source {:.0} µs, as a source {:.0} µs; a source's extra CPU, median of the rounds' own: {:+.1}%; in the writer thread (no source {:.0} µs, as a source {:.0} µs): {:+.1}%",
            finite_median(&plain.cpu),
            finite_median(&source.cpu),
            median_of_rounds(&plain.cpu, &source.cpu, extra),
            finite_median(&plain.writer),
            finite_median(&source.writer),
            median_of_rounds(&plain.writer, &source.writer, extra)
        );
    }
}

async fn export_scenario(args: &Args, dir: &Path) {
    println!(
        "\n== export: $export of {} resources (auth off), kick-off to manifest, then the download ==",
        args.resources
    );
    let data = dir.join("export.redb");
    let (resources, _) = build_search_database(&data, args.resources.saturating_sub(10_000)).await;
    let server = servers::start_braid(&data);
    let base = format!("http://127.0.0.1:{}/fhir", server.port);
    let client = reqwest::Client::new();
    let idle = server.rss_mib();
    let started = Instant::now();
    let reply = client.get(format!("{base}/$export")).header("prefer", "respond-async").send().await.unwrap();
    assert_eq!(reply.status().as_u16(), 202);
    let status_url = reply.headers()["content-location"].to_str().unwrap().to_owned();
    let manifest: Value = loop {
        let reply = client.get(&status_url).send().await.unwrap();
        match reply.status().as_u16() {
            202 => tokio::time::sleep(Duration::from_millis(100)).await,
            200 => break reply.json().await.unwrap(),
            other => panic!("the export failed with {other}: {}", reply.text().await.unwrap_or_default()),
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    let peak = server.peak_rss_mib();
    let outputs = manifest["output"].as_array().unwrap();
    let exported: u64 = outputs.iter().map(|output| output["count"].as_u64().unwrap()).sum();
    println!(
        "  exported {exported} of {resources} resources in {elapsed:.1} s = {:.0} resources/s (target >= 50000), {} files",
        exported as f64 / elapsed,
        outputs.len()
    );
    println!("  server resident memory: {idle:.0} MiB idle before, peak {peak:.0} MiB (target < 300)");
    let started = Instant::now();
    let (mut lines, mut bytes) = (0u64, 0u64);
    for output in outputs {
        let mut response = client.get(output["url"].as_str().unwrap()).send().await.unwrap();
        while let Some(chunk) = response.chunk().await.unwrap() {
            bytes += chunk.len() as u64;
            lines += chunk.iter().filter(|&&byte| byte == b'\n').count() as u64;
        }
    }
    let download = started.elapsed().as_secs_f64();
    println!(
        "  downloaded {lines} lines ({:.0} MiB) in {download:.1} s = {:.0} resources/s; peak resident memory now {:.0} MiB",
        bytes as f64 / 1_048_576.0,
        lines as f64 / download,
        server.peak_rss_mib()
    );
    assert_eq!(lines, exported, "every exported resource is one line");
    drop(server);
    let _ = std::fs::remove_file(&data);
}

/// A fresh P-384 private key, in the PEM form a pull source's `--key` reads.
fn private_key_pem() -> String {
    let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
        &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        &aws_lc_rs::rand::SystemRandom::new(),
    )
    .expect("key generation");
    braid::sources::pull::pkcs8_pem(pkcs8.as_ref())
}

async fn pull_scenario(args: &Args, dir: &Path) {
    println!(
        "\n== pull: a pull source reads an upstream Braid of {} resources through its $export, {} rounds ==",
        args.resources, args.rounds
    );
    let upstream_data = dir.join("upstream.redb");
    let (resources, _) = build_search_database(&upstream_data, args.resources.saturating_sub(10_000)).await;
    let key = private_key_pem();
    let (_, _, public) = braid::sources::pull::read_key(&key, None).unwrap();
    let store = open_store(&upstream_data);
    let new = braid::auth::clients::NewClient {
        name: "downstream".into(),
        scope: "system/*.rs".into(),
        grant_types: Vec::new(),
        redirect_uris: Vec::new(),
        credential: braid::auth::clients::NewCredential::Jwks(json!({"keys": [public]}).to_string()),
        source: None,
    };
    let client_id = braid::auth::clients::add(&store, new, braid::auth::now_secs()).await.unwrap().client.client_id;
    close_store(store).await;
    let upstream = servers::start_braid_with_auth(&upstream_data);
    let base = format!("http://127.0.0.1:{}/fhir", upstream.port);
    let mut rates = Vec::new();
    for round in 0..args.rounds {
        let data = dir.join(format!("downstream-{round}.redb"));
        let store = open_store(&data);
        let sources = braid::sources::Registry::load(&store).unwrap();
        let source = braid::sources::NewSource {
            name: "clinic".into(),
            credential: braid::auth::clients::NewCredential::None,
            pull: Some(braid::sources::NewPull {
                base: base.clone(),
                client_id: client_id.clone(),
                key_pem: key.clone(),
                kid: None,
                every: None,
            }),
            types: vec!["Patient".into(), "Observation".into()],
            lenient: false,
            extra_scope: None,
        };
        sources.add(source).await.unwrap();
        drop(sources);
        close_store(store).await;
        let downstream = servers::start_braid(&data);
        let socket = braid::auth::admin::socket_path(&data);
        let started = Instant::now();
        let answer = tokio::task::spawn_blocking(move || {
            braid::auth::admin::send(&socket, &braid::auth::admin::AdminRequest::SyncSource { name: "clinic".into() })
        })
        .await
        .unwrap()
        .unwrap();
        let elapsed = started.elapsed().as_secs_f64();
        let braid::auth::admin::Sent::Answered(Ok(answer)) = answer else { panic!("the sync failed") };
        let run = &answer["run"];
        let received = run["counts"]["received"].as_u64().unwrap_or(0);
        assert_eq!(run["outcome"], "complete", "{answer}");
        println!(
            "  round {round}: {received} of {resources} resources ({}) in {elapsed:.1} s = {:.0} resources/s (target >= 5000); downstream peak memory {:.0} MiB",
            run["mode"].as_str().unwrap_or(""),
            received as f64 / elapsed,
            downstream.peak_rss_mib()
        );
        rates.push(received as f64 / elapsed);
        drop(downstream);
        let _ = std::fs::remove_file(&data);
    }
    println!("  median: {:.0} resources/s (target >= 5000)", median(&mut rates));
}

/// Encryption at rest, side by side: the search database built plain and encrypted (build rate,
/// file size), then servers on both answering the same load in alternating rounds: read by id
/// (with the default page cache, and with a 16 MiB one so that most reads decrypt a page),
/// the search scenario's queries, and transaction ingest into fresh databases.
async fn encryption_scenario(args: &Args, dir: &Path) {
    let observations = args.resources;
    println!(
        "\n== encryption at rest: plain vs encrypted; 10,000 patients and {observations} observations; {} rounds of {} s, alternating ==",
        args.rounds, args.seconds
    );
    let key_path = dir.join("bench.key");
    braid::crypt::KeyFile::generate(&key_path).expect("a key file");
    let key = Arc::new(braid::crypt::KeyFile::load(&key_path).expect("the key file loads"));
    let key_text = key_path.to_str().expect("a UTF-8 path").to_owned();
    let modes = ["plain", "encrypted"];
    let env_of = |mode: &str| -> Vec<(&str, &str)> {
        if mode == "encrypted" { vec![("BRAID_ENCRYPTION_KEY_FILE", key_text.as_str())] } else { Vec::new() }
    };
    let data_of = |mode: &str| dir.join(format!("crypt-{mode}.redb"));

    let mut sizes = Vec::new();
    for mode in modes {
        let key = (mode == "encrypted").then(|| key.clone());
        let (resources, elapsed) = build_search_database_with(&data_of(mode), observations, key).await;
        let (length, blocks) = file_sizes(&data_of(mode));
        println!(
            "  {mode:9} built at {:.0} resources/s in-process; file {:.1} MiB ({:.0} bytes/resource), on disk {:.1} MiB ({:.0} bytes/resource)",
            resources as f64 / elapsed,
            length as f64 / 1048576.0,
            length as f64 / resources as f64,
            blocks as f64 / 1048576.0,
            blocks as f64 / resources as f64
        );
        sizes.push((length, blocks, resources as f64 / elapsed));
    }
    println!(
        "  encrypted / plain: file length {:.3}, on disk {:.3} (target <= 1.05); build rate {:.3}",
        sizes[1].0 as f64 / sizes[0].0 as f64,
        sizes[1].1 as f64 / sizes[0].1 as f64,
        sizes[1].2 / sizes[0].2
    );

    // Read by id and the search queries, on servers started afresh each round.
    let patients = 10_000;
    let read = move |c: usize, n: usize| load::get(&format!("/fhir/Patient/p{}", pick(c, n, patients)));
    let queries = search_queries();
    let mut reads: Vec<Vec<f64>> = vec![Vec::new(); 2];
    let mut cold_reads: Vec<Vec<f64>> = vec![Vec::new(); 2];
    let mut latencies: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); queries.len()]; 2];
    for round in 0..args.rounds {
        for (index, mode) in modes.iter().enumerate() {
            let server = servers::start_braid_with_env(&data_of(mode), &env_of(mode));
            let result = load::warmed_run(server.port, 32, Duration::from_secs(args.seconds), read).await;
            println!(
                "  round {round} {mode:9} read by id: {:>8.0} req/s  p50 {:.2} ms  errors {}{}",
                result.throughput(),
                result.percentile(0.5),
                result.errors,
                result.error_note()
            );
            reads[index].push(result.throughput());
            for (query, (name, make, _)) in queries.iter().enumerate() {
                let result = query_latency(server.port, make, args.seconds).await;
                println!(
                    "  round {round} {mode:9} {name:48} p50 {:>7.2} ms  p99 {:>7.2} ms  errors {}{}",
                    result.percentile(0.5),
                    result.percentile(0.99),
                    result.errors,
                    result.error_note()
                );
                latencies[index][query].push(result.percentile(0.5));
            }
            drop(server);
            // A page cache far smaller than the file: most reads fetch (and decrypt) pages.
            let mut env = env_of(mode);
            env.push(("BRAID_CACHE_MB", "16"));
            env.push(("BRAID_BODY_CACHE_MB", "0"));
            let server = servers::start_braid_with_env(&data_of(mode), &env);
            let result = load::warmed_run(server.port, 32, Duration::from_secs(args.seconds), read).await;
            println!(
                "  round {round} {mode:9} read by id, 16 MiB cache: {:>8.0} req/s  p50 {:.2} ms  errors {}{}",
                result.throughput(),
                result.percentile(0.5),
                result.errors,
                result.error_note()
            );
            cold_reads[index].push(result.throughput());
        }
    }

    // Ingest: transaction bundles into a fresh database each round.
    let bundle = Arc::new(IngestBundle::new());
    let mut ingests: Vec<Vec<f64>> = vec![Vec::new(); 2];
    for round in 0..args.rounds {
        for (index, mode) in modes.iter().enumerate() {
            let data = dir.join(format!("crypt-ingest-{round}-{mode}.redb"));
            let server = servers::start_braid_with_env(&data, &env_of(mode));
            let bundle = bundle.clone();
            let request =
                move |_: usize, _: usize| load::post("/fhir", &bundle.next_body(), "Prefer: return=minimal\r\n");
            let result = load::run(server.port, 8, Duration::from_secs(args.seconds * 2), request).await;
            drop(server);
            println!(
                "  round {round} {mode:9} ingest: {:.0} resources/s  p50 {:.1} ms  errors {}{}",
                result.throughput() * 50.0,
                result.percentile(0.5),
                result.errors,
                result.error_note()
            );
            ingests[index].push(result.throughput() * 50.0);
            let _ = std::fs::remove_file(&data);
        }
    }

    println!("  medians (plain, encrypted, encrypted/plain; target: overhead <= 20%):");
    let report = |name: &str, unit: &str, values: &mut [Vec<f64>], higher_is_better: bool| {
        let (plain, encrypted) = (median(&mut values[0]), median(&mut values[1]));
        let overhead = if higher_is_better { plain / encrypted - 1.0 } else { encrypted / plain - 1.0 };
        println!(
            "    {name:52} {plain:>10.2} {encrypted:>10.2} {unit:6} ratio {:.3}  overhead {:+.1}%",
            encrypted / plain,
            100.0 * overhead
        );
    };
    report("read by id", "req/s", &mut reads, true);
    report("read by id, 16 MiB page cache", "req/s", &mut cold_reads, true);
    for (query, (name, _, _)) in queries.iter().enumerate() {
        let mut values = vec![latencies[0][query].clone(), latencies[1][query].clone()];
        report(&format!("{name} p50"), "ms", &mut values, false);
    }
    report("ingest (transactions of 50)", "res/s", &mut ingests, true);
}
