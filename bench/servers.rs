//! The servers under test, each a child process: Braid itself (`braid serve`) and the baseline,
//! a minimal actix-web handler returning the same bytes from a HashMap (this binary, started
//! with `--serve-baseline`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{App, HttpResponse, HttpServer, web};

pub struct Server {
    pub child: Child,
    pub port: u16,
    /// From spawning the process to its first successful answer.
    pub ready_after: Duration,
    /// Set once the process was killed on purpose; nothing is left to stop.
    killed: bool,
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.killed {
            return;
        }
        // SIGTERM, so Braid closes its database cleanly for the next scenario.
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// SIGKILL, as a crash or power cut would stop it: no clean close of the database.
    pub fn kill_hard(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.killed = true;
    }

    /// Resident memory of the server process, in MiB.
    pub fn rss_mib(&self) -> f64 {
        self.memory_mib("VmRSS:")
    }

    /// The most resident memory the server process has had, in MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        self.memory_mib("VmHWM:")
    }

    /// CPU time the server process has used, user and system, in all its threads (those that
    /// have ended too), in seconds; `None` when it cannot be read. `/proc` counts it in ticks
    /// of USER_HZ, which Linux fixes at 100 per second on x86 and arm whatever the kernel's own
    /// tick.
    pub fn cpu_seconds(&self) -> Option<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).ok()?;
        // The command name (field 2) may hold spaces: fields are counted after its `)`.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks = |n: usize| fields.get(n).and_then(|field| field.parse::<f64>().ok());
        // utime and stime are fields 14 and 15 of the line, the 12th and 13th after the `)`.
        Some((ticks(11)? + ticks(12)?) / 100.0)
    }

    /// CPU time of the server's thread named `name` (`braid-writer`), in seconds, from the
    /// scheduler's nanosecond count; `None` when no thread has that name.
    pub fn thread_cpu_seconds(&self, name: &str) -> Option<f64> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).ok()?;
        tasks.flatten().find_map(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            if comm.trim_end() != name {
                return None;
            }
            let schedstat = std::fs::read_to_string(task.path().join("schedstat")).ok()?;
            let nanos: f64 = schedstat.split_whitespace().next()?.parse().ok()?;
            Some(nanos / 1e9)
        })
    }

    fn memory_mib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    }
}

/// This build's `braid` binary.
pub fn braid_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_braid"))
}

/// Starts `braid serve` on `data` and waits until it answers.
pub fn start_braid(data: &Path) -> Server {
    start_braid_binary(&braid_binary(), data)
}

/// Starts `binary serve` on `data` (another build of Braid, to compare with) and waits until it
/// answers.
pub fn start_braid_binary(binary: &Path, data: &Path) -> Server {
    start_braid_with(binary, data, &[])
}

/// Starts this build's `braid serve --auth on` on `data` and waits until it answers.
pub fn start_braid_with_auth(data: &Path) -> Server {
    start_braid_with(&braid_binary(), data, &[("BRAID_AUTH", "on")])
}

/// Starts this build's `braid serve` on `data` with these extra environment variables.
pub fn start_braid_with_env(data: &Path, env: &[(&str, &str)]) -> Server {
    start_braid_with(&braid_binary(), data, env)
}

/// Starts `binary serve` (another build) on `data` with these extra environment variables.
pub fn start_braid_binary_with_env(binary: &Path, data: &Path, env: &[(&str, &str)]) -> Server {
    start_braid_with(binary, data, env)
}

fn start_braid_with(binary: &Path, data: &Path, env: &[(&str, &str)]) -> Server {
    let port = free_port();
    let spawned = Instant::now();
    // Without tokens unless a scenario turns authorization on (loopback only, as it must be).
    let child = Command::new(binary)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(data)
        .env("BRAID_AUTH", "off")
        .envs(env.iter().copied())
        .env("BRAID_LOG_LEVEL", "warn")
        .env("BRAID_WORKERS", "2")
        // A bench killed midway leaves no server behind.
        .env("BRAID_PARENT_PID", std::process::id().to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cargo bench builds the braid binary");
    wait_until_ready(port);
    Server { child, port, ready_after: spawned.elapsed(), killed: false }
}

/// Starts the baseline server holding `bodies` (one `id<TAB>json` line each) in memory.
pub fn start_baseline(bodies: &Path) -> Server {
    let spawned = Instant::now();
    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .arg("--serve-baseline")
        .arg(bodies)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the bench binary can start itself");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("the baseline prints its port");
    let port: u16 = line.trim().parse().expect("a port number");
    wait_until_ready(port);
    Server { child, port, ready_after: spawned.elapsed(), killed: false }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn wait_until_ready(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        if let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ = stream.write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut head = [0u8; 12];
            if stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1") {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("the server on port {port} did not become ready");
}

/// The baseline: `GET /fhir/Patient/{id}` answered from a HashMap, nothing else.
pub fn serve_baseline(bodies: &Path) -> std::io::Result<()> {
    let text = std::fs::read_to_string(bodies)?;
    let map: HashMap<String, web::Bytes> = text
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(id, body)| (id.to_owned(), web::Bytes::copy_from_slice(body.as_bytes())))
        .collect();
    let map = Arc::new(map);
    actix_web::rt::System::new().block_on(async move {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        println!("{}", listener.local_addr()?.port());
        HttpServer::new(move || {
            let map = map.clone();
            App::new().route("/fhir/metadata", web::get().to(|| async { HttpResponse::Ok().body("{}") })).route(
                "/fhir/Patient/{id}",
                web::get().to(move |id: web::Path<String>| {
                    let map = map.clone();
                    async move {
                        match map.get(id.as_str()) {
                            Some(body) => HttpResponse::Ok().content_type("application/fhir+json").body(body.clone()),
                            None => HttpResponse::NotFound().finish(),
                        }
                    }
                }),
            )
        })
        .workers(2)
        .listen(listener)?
        .run()
        .await
    })
}
