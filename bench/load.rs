//! A small HTTP/1.1 load generator: `connections` keep-alive connections, each sending its next
//! request as soon as the previous answer has been read, for a fixed time. Minimal on purpose,
//! so that the client costs as little CPU as possible next to the server it measures.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub struct LoadResult {
    /// Answers with a 2xx status: the only ones that count as throughput.
    pub requests: usize,
    /// Answers with any other status; they are reported, never counted as throughput.
    pub errors: usize,
    pub elapsed: Duration,
    /// Latencies of the successful requests in microseconds, sorted.
    pub latencies: Vec<u32>,
}

impl LoadResult {
    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    /// A warning to print next to the figures when some requests failed: a run whose answers
    /// were errors measured something other than what it names.
    pub fn error_note(&self) -> String {
        if self.errors == 0 {
            String::new()
        } else {
            format!(
                "  !! {} of {} requests failed; figures cover successes only",
                self.errors,
                self.errors + self.requests
            )
        }
    }

    pub fn percentile(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let index = ((self.latencies.len() - 1) as f64 * p).round() as usize;
        f64::from(self.latencies[index]) / 1000.0
    }
}

/// [`run`] after a one-second warm-up whose answers are not counted (connections, caches).
pub async fn warmed_run(
    port: u16,
    connections: usize,
    duration: Duration,
    request: impl Fn(usize, usize) -> Vec<u8> + Send + Sync + Clone + 'static,
) -> LoadResult {
    run(port, connections, Duration::from_secs(1), request.clone()).await;
    run(port, connections, duration, request).await
}

/// Runs `connections` connections against `port` for `duration`; `request(n)` builds the n-th
/// raw HTTP request of a connection.
pub async fn run(
    port: u16,
    connections: usize,
    duration: Duration,
    request: impl Fn(usize, usize) -> Vec<u8> + Send + Sync + Clone + 'static,
) -> LoadResult {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..connections)
        .map(|connection| {
            let request = request.clone();
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0usize);
                // A connection the server refuses or drops (e.g. a crash scenario kills it) ends
                // this connection's loop with one error.
                let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
                    return (latencies, 1);
                };
                stream.set_nodelay(true).ok();
                let mut buffer = Vec::with_capacity(64 * 1024);
                let mut n = 0;
                while Instant::now() < deadline {
                    let bytes = request(connection, n);
                    n += 1;
                    let sent = Instant::now();
                    if stream.write_all(&bytes).await.is_err() {
                        errors += 1;
                        break;
                    }
                    let Ok(status) = read_response(&mut stream, &mut buffer).await else {
                        errors += 1;
                        break;
                    };
                    if (200..300).contains(&status) {
                        latencies.push(sent.elapsed().as_micros() as u32);
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (mut l, e) = task.await.expect("load task");
        latencies.append(&mut l);
        errors += e;
    }
    let elapsed = started.elapsed();
    latencies.sort_unstable();
    LoadResult { requests: latencies.len(), errors, elapsed, latencies }
}

/// Reads one response (headers and a Content-Length body) and returns its status.
async fn read_response(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<u16> {
    buffer.clear();
    let mut chunk = [0u8; 16 * 1024];
    let header_end = loop {
        if let Some(end) = find(buffer, b"\r\n\r\n") {
            break end + 4;
        }
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).to_ascii_lowercase();
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length: usize = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buffer.len() < header_end + length {
        let read = stream.read(&mut chunk).await?;
        if read == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
    Ok(status)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|window| window == needle)
}

pub fn get(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").into_bytes()
}

/// A GET to `host` (`127.0.0.1:PORT`: where tokens are checked, the audience is the URL the
/// client used) with `extra_headers` (each line ending in `\r\n`).
pub fn get_with(host: &str, path: &str, extra_headers: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra_headers}\r\n").into_bytes()
}

/// A form POST (`application/x-www-form-urlencoded`) to `host`.
pub fn post_form(host: &str, path: &str, form: &str) -> Vec<u8> {
    format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    )
    .into_bytes()
}

pub fn post(path: &str, body: &[u8], extra_headers: &str) -> Vec<u8> {
    post_to("127.0.0.1", path, body, extra_headers)
}

/// A FHIR JSON POST to `host` (see [`get_with`] for why the host matters with tokens).
pub fn post_to(host: &str, path: &str, body: &[u8], extra_headers: &str) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/fhir+json\r\nContent-Length: {}\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}
