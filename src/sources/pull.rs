//! Pull sources: Braid reads an upstream FHIR server with its own SMART Backend Services
//! credentials and writes what it reads in the source's namespace.
//!
//! A run prefers the upstream's Bulk Data `$export` (kick-off, polling with `Retry-After`, the
//! manifest, the NDJSON files; `_since` the previous complete run's `transactionTime`) and
//! falls back to paged searches per type (`_lastUpdated=gt` the previous run's start) when the
//! upstream offers no export. Resources are written in chunks, each one transaction with one
//! Provenance, through the same path as a push ([`super::admit`]: the quality policy, the
//! namespace); one that fails validation is recorded with its reason and the run goes on.
//!
//! A run is checkpointed in the source's record after every chunk: where it is (the export's
//! status URL, manifest, file and line; or the type and the next page's URL). A run that a
//! crash or a restart interrupted resumes there when the server starts. Writes are idempotent
//! (the same upstream resource is the same stored id, and identical content writes no
//! version), so the chunk in flight at a crash is written again without duplicating anything.
//! Network errors, 429 and 503 are retried with backoff (honouring `Retry-After`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ActiveSource, Registry, SOURCES, SourceKind, SourceRecord};
use crate::fhir::reference::{self, Target};
use crate::fhir::{Category, FhirError, Id, IssueCode, ResourceType};
use crate::store::{
    Action, Criteria, OutcomeKind, Precondition, Target as WriteTarget, WriteGuard, WriteOp, WriteRequest,
};

/// Resources written per transaction.
pub const CHUNK: usize = 500;

/// Resources asked for per search page.
pub const PAGE_SIZE: usize = 200;

/// Most attempts of one upstream request (network errors, 429, 502, 503, 504).
pub const MAX_ATTEMPTS: u32 = 8;

/// Longest wait between attempts, and longest `Retry-After` honoured.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Longest an export may take at the upstream before the run gives up.
pub const MAX_EXPORT_WAIT: Duration = Duration::from_secs(6 * 3600);

/// Longest wait between two polls of an export's status: its `Retry-After` is honoured up to
/// this, and without one the wait doubles from the first backoff up to it (the Bulk Data
/// specification asks clients to back off; an upstream may answer frequent polls with 429).
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(120);

/// Most times one run starts its export over because the upstream lost it (its status or a
/// file answered 404 or 410); beyond, the run fails instead of kicking off forever.
pub const MAX_EXPORT_RESTARTS: u32 = 2;

/// Most search pages read for one type in one run (at [`PAGE_SIZE`] each, 20 million
/// resources): a bound on an upstream whose next links never end.
pub const MAX_PAGES: usize = 100_000;

/// Largest NDJSON line (one resource), search page or manifest read from an upstream.
pub const MAX_DOCUMENT_BYTES: usize = 64 << 20;

/// Runs kept in a source's record, newest last.
pub const MAX_RUNS: usize = 20;

/// Most bytes of an upstream's error answer kept (in a run's error).
pub const MAX_ERROR_BYTES: usize = 2048;

/// How far back a search-mode run's `_lastUpdated` reaches before the previous run's start:
/// upstream commits in flight and clock differences would otherwise fall into the gap (what
/// is read twice is written unchanged).
pub const SEARCH_OVERLAP_MICROS: i64 = 5 * 60 * 1_000_000;

/// Most resources of types not pulled that one run fetches because pulled resources reference
/// them.
pub const MAX_REFERENCED: usize = 10_000;

/// The types pulled when the operator names none.
pub const DEFAULT_TYPES: &[&str] =
    &["Patient", "Observation", "Appointment", "Encounter", "Condition", "Practitioner", "Organization"];

/// How Braid reaches a pull source.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PullConfig {
    /// The upstream's FHIR base, without a trailing slash.
    pub base: String,
    /// Braid's client id at the upstream.
    pub client_id: String,
    /// The private key Braid signs its assertions with (PEM), and its algorithm and key id.
    pub key_pem: String,
    pub algorithm: String,
    pub kid: String,
    /// Seconds between scheduled runs (none: only `braid source sync`).
    pub every_secs: Option<u64>,
}

/// A pull source's progress between runs and within one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PullState {
    /// `_since` of the next run: the last complete run's transaction time (FHIR instant).
    pub since: Option<String>,
    /// The run in progress, if one is.
    pub checkpoint: Option<Checkpoint>,
    pub runs: VecDeque<RunRecord>,
}

/// Where a run stands.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Seconds since the epoch.
    pub started: u64,
    /// The `_since` this run asks for.
    pub since: Option<String>,
    pub stage: Stage,
    pub counts: RunCounts,
    /// How often the run was resumed after an interruption.
    pub resumed: u32,
    /// `bulk` or `search`, once decided.
    #[serde(default)]
    pub mode: Option<String>,
    /// `(type, id)` at the upstream of the resources of types not pulled that pulled resources
    /// reference, sorted, at most [`MAX_REFERENCED`]: fetched one by one at the end of the run.
    #[serde(default)]
    pub referenced: Vec<(String, String)>,
    /// How often the run started its export over (at most [`MAX_EXPORT_RESTARTS`]).
    #[serde(default)]
    pub restarts: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Stage {
    /// Not yet kicked off.
    Start,
    /// An export at the upstream: its status URL (empty when the kick-off answered with the
    /// manifest itself), then its manifest's files, the file being read and how many of its
    /// lines are written.
    Bulk { status_url: String, manifest: Option<Manifest>, file: usize, line: u64 },
    /// Paged searches: the type being read, the next page's URL (`None`: its first page), and
    /// the run's start (the next run's `_since`).
    Search { type_index: usize, next: Option<String>, started_at: String },
    /// The resources pulled resources reference, of types not pulled: how many of
    /// `Checkpoint::referenced` are done, and the next run's `_since` (`None`: the upstream
    /// reported export errors, and what it failed to export is asked for again next time, from
    /// the same `_since`).
    Referenced { done: usize, next_since: Option<String> },
}

/// The parts of an upstream's export manifest a run needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub transaction_time: String,
    pub requires_token: bool,
    /// `(type, url)` of each file.
    pub files: Vec<(String, String)>,
    /// How many error files (OperationOutcomes) the manifest lists.
    #[serde(default)]
    pub errors: usize,
    /// Their URLs (at most [`MAX_ERROR_FILES`]; a checkpoint written before they were kept has
    /// none, and then every error file counts as an error).
    #[serde(default)]
    pub error_files: Vec<String>,
    /// The URLs of the files of deletions (Bulk Data 2.0's `deleted`: Bundles of `DELETE`
    /// requests for what was deleted since `_since`), read after `files`: in the checkpoint,
    /// file `files.len() + n` is deletions file `n`.
    #[serde(default)]
    pub deleted_files: Vec<String>,
}

/// Most error files of a manifest that a run reads, and most bytes read of each: what they say
/// is kept as rejections (themselves bounded), not the files.
pub const MAX_ERROR_FILES: usize = 10;
pub const MAX_ERROR_FILE_BYTES: usize = 1 << 20;

/// What a run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCounts {
    pub received: u64,
    pub created: u64,
    pub updated: u64,
    pub unchanged: u64,
    pub rejected: u64,
    /// Records deleted because the upstream's export listed their deletion.
    #[serde(default)]
    pub deleted: u64,
}

/// One finished run, as `braid source show` lists them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub started: u64,
    pub finished: u64,
    pub duration_ms: u64,
    /// `bulk` or `search`.
    pub mode: String,
    pub counts: RunCounts,
    /// `complete` or `failed`.
    pub outcome: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub resumed: u32,
    /// Up to 20 of the resources refused, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejections: Vec<String>,
}

fn bad(message: impl Into<String>) -> FhirError {
    FhirError::incorrect(IssueCode::Value, message)
}

/// Reads a private key (PEM, PKCS#8 or the older RSA and EC forms) for RS384 or ES384, and the
/// public JWK the upstream must register, with `kid` (the key's RFC 7638 thumbprint if none is
/// given).
pub fn read_key(pem: &str, kid: Option<&str>) -> Result<(Algorithm, String, Value), FhirError> {
    let (algorithm, key) = match EncodingKey::from_ec_pem(pem.as_bytes()) {
        Ok(key) => (Algorithm::ES384, key),
        Err(_) => match EncodingKey::from_rsa_pem(pem.as_bytes()) {
            Ok(key) => (Algorithm::RS384, key),
            Err(_) => return Err(bad("--key must be a PEM private key: RSA (for RS384) or P-384 EC (for ES384)")),
        },
    };
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, algorithm)
        .map_err(|_| bad("the key cannot sign RS384 or ES384 (an EC key must be on P-384)"))?;
    let kid = match kid {
        Some(kid) => kid.to_owned(),
        None => jwk
            .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
            .map_err(|_| bad("the key's thumbprint cannot be computed"))?,
    };
    jwk.common.key_id = Some(kid.clone());
    // Signing once proves the key works before it is stored.
    let mut header = Header::new(algorithm);
    header.kid = Some(kid.clone());
    jsonwebtoken::encode(&header, &json!({"probe": true}), &key).map_err(|_| bad("the key cannot sign"))?;
    let public = serde_json::to_value(&jwk).map_err(|_| FhirError::fault("jwk"))?;
    Ok((algorithm, kid, public))
}

/// A PKCS#8 private key (DER) in the PEM form `--key` reads. No key is ever kept in the
/// repository: the tests and the benchmark generate theirs and write them with this.
pub fn pkcs8_pem(der: &[u8]) -> String {
    use base64::Engine;
    // The armour's label, as RFC 7468 names PKCS#8 keys.
    let label = ["PRIVATE", "KEY"].join(" ");
    let text = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = text.as_bytes().chunks(64).map(|chunk| std::str::from_utf8(chunk).unwrap_or("")).collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// Parses `--every`: a number with `s`, `m`, `h` or `d` (`15m`, `1h`), at least a minute.
pub fn parse_every(text: &str) -> Result<u64, FhirError> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 =
        number.parse().map_err(|_| bad(format!("--every takes a duration such as 15m or 1h, not '{text}'")))?;
    let unit_secs: u64 = match unit {
        "s" => 1,
        "m" | "" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad(format!("--every takes a duration such as 15m or 1h, not '{text}'"))),
    };
    let seconds = number
        .checked_mul(unit_secs)
        .filter(|&seconds| seconds <= 366 * 86_400)
        .ok_or_else(|| bad("--every is at most a year"))?;
    if seconds < 60 {
        return Err(bad("--every must be at least a minute"));
    }
    Ok(seconds)
}

/// An upstream as one run talks to it: its token endpoint, the token, the retry policy.
struct Upstream {
    http: reqwest::Client,
    config: PullConfig,
    types: Vec<String>,
    /// The token endpoint, and which SMART scope syntax the upstream takes, once discovered.
    token_endpoint: Option<(String, ScopeSyntax)>,
    token: Option<(String, std::time::Instant)>,
    /// The shortest wait between attempts (tests shorten it).
    first_backoff: Duration,
    /// The key client assertions are signed with, read once per run.
    key: EncodingKey,
    algorithm: Algorithm,
    /// The server is stopping: no request is sent and no wait goes on once it is set.
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

/// Which SMART scopes an upstream takes: v2 (`system/Patient.rs`) or v1 (`system/Patient.read`),
/// as its smart-configuration says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ScopeSyntax {
    V1,
    V2,
}

impl ScopeSyntax {
    /// v1 when the smart-configuration lists `permission-v1` among its `capabilities` and not
    /// `permission-v2`, or lists only v1 scopes (`.read`, `.write`, `.*`) in `scopes_supported`;
    /// else v2 (SMART 2.0's default). Servers on SMART 1.0 (many EHRs) refuse v2 scopes.
    fn of(configuration: &Value) -> ScopeSyntax {
        let listed = |key: &str| -> Vec<&str> {
            configuration[key].as_array().into_iter().flatten().filter_map(Value::as_str).collect()
        };
        let capabilities = listed("capabilities");
        if capabilities.contains(&"permission-v2") {
            return ScopeSyntax::V2;
        }
        if capabilities.contains(&"permission-v1") {
            return ScopeSyntax::V1;
        }
        let resource_scopes: Vec<&str> =
            listed("scopes_supported").into_iter().filter(|scope| scope.starts_with("system/")).collect();
        let v1 = |scope: &&str| [".read", ".write", ".*"].iter().any(|suffix| scope.ends_with(suffix));
        if !resource_scopes.is_empty() && resource_scopes.iter().all(v1) {
            return ScopeSyntax::V1;
        }
        ScopeSyntax::V2
    }

    /// The scope a run asks for: searching and reading each pulled type, and reading every type
    /// (so that the run can fetch what pulled resources reference; an upstream may grant less,
    /// and those fetches are then refused one by one).
    fn scope(self, types: &[String]) -> String {
        let (each, all) = match self {
            ScopeSyntax::V2 => ("rs", "system/*.r"),
            ScopeSyntax::V1 => ("read", "system/*.read"),
        };
        let mut scope = types.iter().map(|t| format!("system/{t}.{each}")).collect::<Vec<_>>().join(" ");
        scope.push(' ');
        scope.push_str(all);
        scope
    }
}

/// Longest an upstream connection may go without sending a byte before Braid gives up on it
/// (and retries).
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// Longest one upstream request may take in all (a token, a status, a page, a manifest), so
/// that an upstream trickling bytes cannot hold a run, and the source, forever; export files
/// have only [`READ_TIMEOUT`].
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The longest a wait sleeps before it looks at the stop flag again.
const STOP_CHECK: Duration = Duration::from_millis(250);

/// Why an upstream request failed.
enum Failure {
    /// The upstream answered with this status (after retries, for the retried ones).
    Status(u16, String),
    /// No answer (after retries).
    Network(String),
    /// Something Braid does: storage, a malformed document.
    Braid(String),
    /// The server is stopping: the run ends here and resumes at the next start.
    Stopped,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status(status, text) => write!(f, "the upstream answered {status}: {text}"),
            Failure::Network(reason) => write!(f, "the upstream could not be reached: {reason}"),
            Failure::Braid(reason) => f.write_str(reason),
            Failure::Stopped => f.write_str("the server stopped; the run resumes at the next start"),
        }
    }
}

impl From<FhirError> for Failure {
    fn from(error: FhirError) -> Self {
        Failure::Braid(error.to_string())
    }
}

impl Upstream {
    fn new(
        config: PullConfig,
        types: Vec<String>,
        first_backoff: Duration,
        stopping: Arc<std::sync::atomic::AtomicBool>,
    ) -> Result<Upstream, FhirError> {
        let http = crate::outbound::client(
            // An idle timeout, not one on the whole request: an export file may take longer than
            // any fixed time to download, but a connection that sends nothing is dead.
            reqwest::Client::builder().connect_timeout(Duration::from_secs(10)).read_timeout(READ_TIMEOUT),
        )
        .map_err(|_| FhirError::fault("upstream client"))?;
        let algorithm = if config.algorithm == "ES384" { Algorithm::ES384 } else { Algorithm::RS384 };
        let key = match algorithm {
            Algorithm::ES384 => EncodingKey::from_ec_pem(config.key_pem.as_bytes()),
            _ => EncodingKey::from_rsa_pem(config.key_pem.as_bytes()),
        }
        .map_err(|_| bad(format!("the key of the source at {} cannot be read", config.base)))?;
        Ok(Upstream { http, config, types, token_endpoint: None, token: None, first_backoff, key, algorithm, stopping })
    }

    /// Fails with [`Failure::Stopped`] once the server is stopping.
    fn check_stopping(&self) -> Result<(), Failure> {
        if self.stopping.load(std::sync::atomic::Ordering::Relaxed) { Err(Failure::Stopped) } else { Ok(()) }
    }

    /// Waits `wait`, or less if the server stops meanwhile (then fails with
    /// [`Failure::Stopped`]): a wait may be minutes (a `Retry-After`, an export still running).
    async fn pause(&self, wait: Duration) -> Result<(), Failure> {
        let until = std::time::Instant::now() + wait;
        loop {
            self.check_stopping()?;
            let left = until.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            tokio::time::sleep(left.min(STOP_CHECK)).await;
        }
    }

    /// An access token, asked for again a minute before the last one expires.
    async fn token(&mut self) -> Result<String, Failure> {
        if let Some((token, valid_until)) = &self.token {
            if std::time::Instant::now() < *valid_until {
                return Ok(token.clone());
            }
        }
        let (endpoint, syntax) = match &self.token_endpoint {
            Some(discovered) => discovered.clone(),
            None => {
                let url = format!("{}/.well-known/smart-configuration", self.config.base);
                let discovered = self.json(|http| http.get(&url).timeout(REQUEST_TIMEOUT)).await?;
                let endpoint = discovered["token_endpoint"]
                    .as_str()
                    .ok_or_else(|| Failure::Braid("the upstream's smart-configuration names no token_endpoint".into()))?
                    .to_owned();
                crate::auth::clients::check_https_or_loopback(&endpoint)
                    .map_err(|_| Failure::Braid(format!("the upstream's token endpoint {endpoint} is not https")))?;
                let syntax = ScopeSyntax::of(&discovered);
                self.token_endpoint = Some((endpoint.clone(), syntax));
                (endpoint, syntax)
            }
        };
        let scope = syntax.scope(&self.types);
        let mut reply = Value::Null;
        // Each attempt signs a fresh assertion: its jti may be used once only.
        for attempt in 0..MAX_ATTEMPTS {
            self.check_stopping()?;
            let mut header = Header::new(self.algorithm);
            header.kid = Some(self.config.kid.clone());
            header.typ = Some("JWT".into());
            let now = crate::auth::now_secs();
            let claims = json!({"iss": self.config.client_id, "sub": self.config.client_id, "aud": endpoint,
                "exp": now + 240, "iat": now, "jti": uuid::Uuid::new_v4().to_string()});
            let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
                .map_err(|_| Failure::Braid("cannot sign the client assertion".into()))?;
            let form = [
                ("grant_type", "client_credentials"),
                ("scope", scope.as_str()),
                ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
                ("client_assertion", assertion.as_str()),
            ];
            match self.http.post(&endpoint).form(&form).timeout(REQUEST_TIMEOUT).send().await {
                Ok(response) if response.status().is_success() => {
                    reply = read_json(response).await?;
                    break;
                }
                Ok(response) if retryable(response.status().as_u16()) && attempt + 1 < MAX_ATTEMPTS => {
                    self.pause(self.backoff(attempt, Some(&response))).await?;
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    return Err(Failure::Status(status, error_text(response).await));
                }
                Err(error) if attempt + 1 < MAX_ATTEMPTS => {
                    tracing::debug!(%error, "token request failed; retrying");
                    self.pause(self.backoff(attempt, None)).await?;
                }
                Err(error) => return Err(Failure::Network(error.to_string())),
            }
        }
        let token = reply["access_token"]
            .as_str()
            .ok_or_else(|| Failure::Braid("the upstream's token response has no access_token".into()))?
            .to_owned();
        let lifetime = reply["expires_in"].as_u64().unwrap_or(300).clamp(60, 86_400);
        let valid_until = std::time::Instant::now() + Duration::from_secs(lifetime - 30);
        self.token = Some((token.clone(), valid_until));
        Ok(token)
    }

    /// The wait before attempt `attempt + 1`: the response's `Retry-After` if it has one, else
    /// the first backoff doubled per attempt; at most [`MAX_BACKOFF`].
    fn backoff(&self, attempt: u32, response: Option<&reqwest::Response>) -> Duration {
        self.wait(attempt, response, MAX_BACKOFF)
    }

    /// [`Upstream::backoff`], at most `longest`.
    fn wait(&self, attempt: u32, response: Option<&reqwest::Response>, longest: Duration) -> Duration {
        let asked = response.and_then(|response| retry_after(response.headers(), std::time::SystemTime::now()));
        asked.unwrap_or_else(|| self.first_backoff.saturating_mul(2u32.saturating_pow(attempt))).min(longest)
    }

    /// Sends the request `make` builds (again for each attempt), retrying network errors,
    /// 429 and 5xx gateways; returns the final response, whatever its status.
    async fn send(
        &self,
        make: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Failure> {
        for attempt in 0..MAX_ATTEMPTS {
            self.check_stopping()?;
            match make(&self.http).send().await {
                Ok(response) if retryable(response.status().as_u16()) && attempt + 1 < MAX_ATTEMPTS => {
                    tracing::debug!(status = response.status().as_u16(), "upstream busy; retrying");
                    self.pause(self.backoff(attempt, Some(&response))).await?;
                }
                Ok(response) => return Ok(response),
                Err(error) if attempt + 1 < MAX_ATTEMPTS => {
                    tracing::debug!(%error, "upstream request failed; retrying");
                    self.pause(self.backoff(attempt, None)).await?;
                }
                Err(error) => return Err(Failure::Network(error.to_string())),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// A JSON document (2xx only).
    async fn json(&self, make: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder) -> Result<Value, Failure> {
        let response = self.send(make).await?;
        if !response.status().is_success() {
            let status = response.status().as_u16();
            return Err(Failure::Status(status, error_text(response).await));
        }
        read_json(response).await
    }

    /// A GET of `url` with the token, accepting `accept` (FHIR JSON unless said otherwise),
    /// retried as [`Upstream::send`] does. The token goes only to the upstream's own origin.
    /// The whole answer must arrive within [`REQUEST_TIMEOUT`].
    async fn get(&mut self, url: &str, headers: &[(&str, &str)]) -> Result<reqwest::Response, Failure> {
        self.get_within(url, headers, Some(REQUEST_TIMEOUT)).await
    }

    /// A GET of one of an export's files (its output, its deletions or its errors), which may
    /// take longer than any fixed time: only the client's idle [`READ_TIMEOUT`] applies. With
    /// the token when the manifest requires one (on the upstream's origin only, as
    /// [`Upstream::get`]); else without it, over https, since such files may live elsewhere (a
    /// storage service).
    async fn get_export_file(&mut self, url: &str, requires_token: bool) -> Result<reqwest::Response, Failure> {
        if requires_token {
            return self.get_within(url, &[("accept", "application/fhir+ndjson")], None).await;
        }
        crate::auth::clients::check_https_or_loopback(url)
            .map_err(|_| Failure::Braid(format!("the export file {url} is not https")))?;
        self.send(|http| http.get(url)).await
    }

    async fn get_within(
        &mut self,
        url: &str,
        headers: &[(&str, &str)],
        whole: Option<Duration>,
    ) -> Result<reqwest::Response, Failure> {
        if !same_origin(url, &self.config.base) {
            return Err(Failure::Braid(format!(
                "the upstream pointed at {}, which is not on its own origin: Braid sends its token nowhere else",
                url.chars().take(200).collect::<String>()
            )));
        }
        let accept = headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("accept"))
            .map_or("application/fhir+json", |(_, value)| *value);
        let headers: Vec<(&str, &str)> =
            headers.iter().filter(|(name, _)| !name.eq_ignore_ascii_case("accept")).copied().collect();
        let headers = headers.as_slice();
        let build = |http: &reqwest::Client, token: &str| {
            let mut request = http.get(url).bearer_auth(token).header("accept", accept);
            for (name, value) in headers {
                request = request.header(*name, *value);
            }
            match whole {
                Some(limit) => request.timeout(limit),
                None => request,
            }
        };
        let token = self.token().await?;
        let response = self.send(|http| build(http, &token)).await?;
        if response.status().as_u16() == 401 {
            // An expired or revoked token: one new one, one more try.
            self.token = None;
            let token = self.token().await?;
            return self.send(|http| build(http, &token)).await;
        }
        Ok(response)
    }
}

/// The start of an error answer's body (at most [`MAX_ERROR_BYTES`]): enough to say why, never
/// more than a run record should keep.
async fn error_text(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        bytes.extend_from_slice(&chunk);
        if bytes.len() >= MAX_ERROR_BYTES {
            bytes.truncate(MAX_ERROR_BYTES);
            break;
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The parts of the export manifest `manifest` (the answer to a request of `from`) a run needs,
/// its URLs resolved as [`follow_link`] does.
fn read_manifest(base: &str, from: &str, manifest: &Value) -> Result<Manifest, Failure> {
    let requires_token = manifest["requiresAccessToken"].as_bool().unwrap_or(true);
    let files = manifest["output"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|output| {
            let url = follow_link(base, from, output["url"].as_str()?, requires_token);
            Some((output["type"].as_str()?.to_owned(), url))
        })
        .collect();
    let transaction_time = manifest["transactionTime"]
        .as_str()
        .ok_or_else(|| Failure::Braid("the upstream's manifest has no transactionTime".into()))?
        .to_owned();
    let errors = manifest["error"].as_array().map_or(0, Vec::len);
    let error_files = manifest["error"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|error| error["url"].as_str())
        .take(MAX_ERROR_FILES)
        .map(|url| follow_link(base, from, url, requires_token))
        .collect();
    let deleted_files = manifest["deleted"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|deleted| deleted["url"].as_str())
        .map(|url| follow_link(base, from, url, requires_token))
        .collect();
    Ok(Manifest { transaction_time, requires_token, files, errors, error_files, deleted_files })
}

/// Where the next search-mode run starts (its `_lastUpdated=gt`): this run's start by the
/// upstream's clock (its `Date` header, when it sends a readable one; else Braid's `now`), less
/// [`SEARCH_OVERLAP_MICROS`]. The upstream stamps `lastUpdated` by its own clock: a mark taken
/// from Braid's would miss its updates if its clock ran behind by more than the overlap.
fn search_mark(upstream_date: Option<&str>, now: std::time::SystemTime) -> String {
    let at = upstream_date.and_then(|date| httpdate::parse_http_date(date.trim()).ok()).unwrap_or(now);
    let micros = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_micros() as i64);
    crate::fhir::json::format_instant(micros - SEARCH_OVERLAP_MICROS)
}

/// The wait a `Retry-After` header asks for, in seconds or as an HTTP date (RFC 9110 10.2.3);
/// `None` without one, or when it cannot be read. A date already past asks for no wait.
fn retry_after(headers: &reqwest::header::HeaderMap, now: std::time::SystemTime) -> Option<Duration> {
    let text = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A URL the upstream gave in answer to a request of `from` (a next page, an export's status
/// or file), as Braid follows it:
/// - a relative one is resolved against `from`, as a browser would;
/// - when `own` is set (the URL is to get Braid's token), an absolute one on another origin
///   whose path lies under the configured `base`'s path is read as the upstream naming itself
///   by another address (a server behind a proxy that builds its links from its own host
///   name, or `localhost` for `127.0.0.1`), and is sent to `base`'s origin with its path and
///   query unchanged. The token still goes to `base`'s origin only.
///
/// Anything else is returned as given (and then refused wherever a token would go to it).
fn follow_link(base: &str, from: &str, link: &str, own: bool) -> String {
    let link = link.trim();
    let Ok(resolved) = reqwest::Url::parse(from).and_then(|from| from.join(link)) else { return link.to_owned() };
    let Ok(base) = reqwest::Url::parse(base) else { return resolved.into() };
    if !own || resolved.origin() == base.origin() || !matches!(resolved.scheme(), "http" | "https") {
        return resolved.into();
    }
    let base_path = base.path().trim_end_matches('/');
    // A base at the root would claim every path: then no other host is read as the upstream.
    let under_base = !base_path.is_empty()
        && (resolved.path() == base_path || resolved.path().starts_with(&format!("{base_path}/")));
    if !under_base {
        return resolved.into();
    }
    let mut moved = base.clone();
    moved.set_path(resolved.path());
    moved.set_query(resolved.query());
    moved.into()
}

/// Whether `url` is on the same origin (scheme, host and port, a default port spelled out or
/// not) as `base`: where Braid sends its upstream token.
fn same_origin(url: &str, base: &str) -> bool {
    let origin = |text: &str| reqwest::Url::parse(text).ok().map(|url| url.origin());
    origin(url).is_some_and(|origin_of_url| origin_of_url.is_tuple() && Some(origin_of_url) == origin(base))
}

fn retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// The body of `response` as JSON, at most [`MAX_DOCUMENT_BYTES`].
async fn read_json(mut response: reqwest::Response) -> Result<Value, Failure> {
    let bytes = crate::outbound::read_capped(&mut response, MAX_DOCUMENT_BYTES).await.map_err(|error| match error {
        crate::outbound::ReadError::TooLarge => {
            Failure::Braid(format!("an upstream document is larger than {MAX_DOCUMENT_BYTES} bytes"))
        }
        crate::outbound::ReadError::Failed(reason) => Failure::Network(reason),
    })?;
    serde_json::from_slice(&bytes).map_err(|error| Failure::Braid(format!("the upstream sent malformed JSON: {error}")))
}

/// What one run needs besides the upstream.
struct Run<'a> {
    registry: &'a Registry,
    source: Arc<ActiveSource>,
    /// The types the run pulls (others are fetched only when referenced).
    pulled: Vec<String>,
    name: String,
    checkpoint: Checkpoint,
    rejections: Vec<String>,
    /// The source record's `created`: a source removed (and perhaps added again) during the
    /// run is not this run's any more.
    created: u64,
}

impl Registry {
    /// Runs one pull of the source `name` now (resuming its interrupted run if it has one) and
    /// returns the run's record. One run per source at a time: a second waits for the first.
    pub async fn sync(&self, name: &str) -> Result<RunRecord, FhirError> {
        self.sync_with(name, Duration::from_millis(200)).await
    }

    /// [`Registry::sync`] with the shortest wait between retried attempts.
    pub async fn sync_with(&self, name: &str, first_backoff: Duration) -> Result<RunRecord, FhirError> {
        let source = self.get(name).ok_or_else(|| bad(format!("there is no source {name}")))?;
        let guard_source = source.clone();
        let _running = guard_source.run_lock.lock().await;
        let record = self.record(name)?.ok_or_else(|| bad(format!("there is no source {name}")))?;
        let SourceKind::Pull { pull } = &record.kind else {
            return Err(bad(format!("{name} is a push source: it sends its records, Braid does not pull them")));
        };
        let state = record.pull.clone().unwrap_or_default();
        let types = if record.types.is_empty() {
            DEFAULT_TYPES.iter().map(|t| (*t).to_owned()).collect()
        } else {
            record.types.clone()
        };
        let checkpoint = match state.checkpoint {
            Some(mut checkpoint) => {
                checkpoint.resumed += 1;
                checkpoint
            }
            None => Checkpoint {
                started: crate::auth::now_secs(),
                since: state.since.clone(),
                stage: Stage::Start,
                counts: RunCounts::default(),
                resumed: 0,
                mode: None,
                referenced: Vec::new(),
                restarts: 0,
            },
        };
        let mut upstream = Upstream::new(pull.clone(), types.clone(), first_backoff, self.stopping.clone())?;
        let mut run = Run {
            registry: self,
            source,
            pulled: types,
            name: name.to_owned(),
            checkpoint,
            rejections: Vec::new(),
            created: record.created,
        };
        let began = std::time::Instant::now();
        run.save()
            .await
            .map_err(|failure| FhirError::new(Category::Conflict, IssueCode::Conflict, failure.to_string()))?;
        let result = run.execute(&mut upstream).await;
        if let Err(Failure::Stopped) = result {
            // The checkpoint stays for the next start; nothing of the run is recorded yet.
            return Err(FhirError::busy("the server is stopping; the pull resumes when it starts again"));
        }
        let finished = crate::auth::now_secs();
        let mode = run.checkpoint.mode.clone().unwrap_or_else(|| "bulk".to_owned());
        let (outcome, error, next_since) = match result {
            Ok(next_since) => ("complete", None, next_since),
            Err(failure) => {
                tracing::warn!(source = name, error = %failure, "a pull failed");
                ("failed", Some(failure.to_string()), None)
            }
        };
        let record = RunRecord {
            started: run.checkpoint.started,
            finished,
            duration_ms: began.elapsed().as_millis() as u64,
            mode,
            counts: run.checkpoint.counts,
            outcome: outcome.to_owned(),
            error,
            resumed: run.checkpoint.resumed,
            rejections: run.rejections.clone(),
        };
        let finished_run = record.clone();
        let (owned, created) = (name.to_owned(), run.created);
        self.store()
            .auth_write(move |txn| {
                let Some(mut stored) = SOURCES.get_in::<SourceRecord>(txn, &owned)? else { return Ok(()) };
                if stored.created != created {
                    return Ok(());
                }
                let state = stored.pull.get_or_insert_with(PullState::default);
                // A failed run starts afresh next time, with the same `_since`.
                state.checkpoint = None;
                if let Some(since) = &next_since {
                    state.since = Some(since.clone());
                }
                if state.runs.len() == MAX_RUNS {
                    state.runs.pop_front();
                }
                state.runs.push_back(finished_run.clone());
                SOURCES.put_in(txn, &owned, &stored)
            })
            .await?;
        Ok(record)
    }

    /// The pull sources due at `now`, none of them running: those with a checkpoint (a run a
    /// stop or a departed caller interrupted: it is resumed at once), and the scheduled ones
    /// whose last run started at least their interval ago (or that never ran).
    pub fn due_pulls(&self, now: u64) -> Vec<String> {
        SOURCES
            .all::<SourceRecord>(self.store())
            .unwrap_or_default()
            .into_iter()
            .filter(|record| {
                let (SourceKind::Pull { pull }, Some(state)) = (&record.kind, &record.pull) else { return false };
                let running = self.get(&record.name).is_none_or(|source| source.run_lock.try_lock().is_err());
                let last = state.runs.back().map(|run| run.started);
                let scheduled =
                    pull.every_secs.is_some_and(|every| last.is_none_or(|last| now >= last.saturating_add(every)));
                !running && (state.checkpoint.is_some() || scheduled)
            })
            .map(|record| record.name)
            .collect()
    }
}

impl Run<'_> {
    /// Stores the checkpoint; fails if the source was removed meanwhile (the run then stops).
    async fn save(&self) -> Result<(), Failure> {
        if self.registry.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Failure::Stopped);
        }
        let (name, checkpoint, created) = (self.name.clone(), self.checkpoint.clone(), self.created);
        let stored = self
            .registry
            .store()
            .auth_write(move |txn| {
                let Some(mut stored) = SOURCES.get_in::<SourceRecord>(txn, &name)? else { return Ok(false) };
                if stored.created != created {
                    return Ok(false);
                }
                stored.pull.get_or_insert_with(PullState::default).checkpoint = Some(checkpoint.clone());
                SOURCES.put_in(txn, &name, &stored)?;
                Ok(true)
            })
            .await?;
        if stored { Ok(()) } else { Err(Failure::Braid("the source was removed during the run".into())) }
    }

    /// Runs from the checkpoint to the end; returns the next run's `_since` (`None`: keep this
    /// run's).
    async fn execute(&mut self, upstream: &mut Upstream) -> Result<Option<String>, Failure> {
        // Export files whose download broke off in this run, one after another: each is read
        // again from the checkpoint's line, at most MAX_ATTEMPTS times in a row.
        let mut broken_downloads = 0;
        loop {
            match self.checkpoint.stage.clone() {
                Stage::Start => self.kick_off(upstream).await?,
                Stage::Bulk { status_url, manifest: None, .. } => {
                    match self.wait_for_manifest(upstream, &status_url).await? {
                        Some(manifest) => {
                            self.checkpoint.stage =
                                Stage::Bulk { status_url, manifest: Some(manifest), file: 0, line: 0 };
                            self.save().await?;
                        }
                        // The export is gone at the upstream (it expired while Braid was down):
                        // again from the kick-off; what was written is written again unchanged.
                        None => self.start_over("its status").await?,
                    }
                }
                Stage::Bulk { status_url, manifest: Some(manifest), file, line } => {
                    if file >= manifest.files.len() + manifest.deleted_files.len() {
                        // What the upstream failed to export is asked for again next time; its
                        // warnings and notes alone do not hold the run's `_since` back. Read
                        // before the export is deleted, which frees its error files too.
                        let next_since = if self.export_failed_in_part(upstream, &manifest).await? {
                            None
                        } else {
                            Some(manifest.transaction_time)
                        };
                        // Done: the export is no longer needed at the upstream.
                        if same_origin(&status_url, &upstream.config.base) {
                            let token = upstream.token().await.ok();
                            let _ = upstream
                                .send(|http| {
                                    let request = http.delete(&status_url);
                                    match &token {
                                        Some(token) => request.bearer_auth(token),
                                        None => request,
                                    }
                                })
                                .await;
                        }
                        self.checkpoint.stage = Stage::Referenced { done: 0, next_since };
                        self.save().await?;
                        continue;
                    }
                    match self.read_file(upstream, &manifest, file, line).await {
                        // The connection dropped mid-file (the upstream restarted, a proxy timed
                        // out): again from the last line written, not the whole run again.
                        Err(Failure::Network(reason)) if broken_downloads + 1 < MAX_ATTEMPTS => {
                            tracing::debug!(source = self.name, %reason, "an export file broke off; reading on");
                            // A download that got further than the last one starts the count
                            // again: only breaks without progress are bounded in a row.
                            let reached = match &self.checkpoint.stage {
                                Stage::Bulk { file: at_file, line: at_line, .. } => (*at_file, *at_line),
                                _ => (file, line),
                            };
                            if reached > (file, line) {
                                broken_downloads = 0;
                            }
                            upstream.pause(upstream.backoff(broken_downloads, None)).await?;
                            broken_downloads += 1;
                        }
                        Err(failure) => return Err(failure),
                        Ok(()) => broken_downloads = 0,
                    }
                }
                Stage::Search { type_index, next, started_at } => {
                    let Some(type_name) = upstream.types.get(type_index).cloned() else {
                        self.checkpoint.stage = Stage::Referenced { done: 0, next_since: Some(started_at) };
                        self.save().await?;
                        continue;
                    };
                    self.read_pages(upstream, type_index, &type_name, next, &started_at).await?;
                }
                Stage::Referenced { done, next_since } => {
                    if done >= self.checkpoint.referenced.len() {
                        return Ok(next_since);
                    }
                    self.read_referenced(upstream, done, &next_since).await?;
                }
            }
        }
    }

    /// Starts the export over from its kick-off, because the upstream no longer has `what`
    /// (404 or 410); fails once the run has done so [`MAX_EXPORT_RESTARTS`] times.
    async fn start_over(&mut self, what: &str) -> Result<(), Failure> {
        if self.checkpoint.restarts >= MAX_EXPORT_RESTARTS {
            return Err(Failure::Braid(format!(
                "the upstream lost its export ({what} answered 404 or 410) {} times in one run",
                self.checkpoint.restarts + 1
            )));
        }
        self.checkpoint.restarts += 1;
        self.checkpoint.stage = Stage::Start;
        self.save().await
    }

    /// Asks the upstream for an export; without one, the run pages through searches.
    async fn kick_off(&mut self, upstream: &mut Upstream) -> Result<(), Failure> {
        let mut url = format!("{}/$export?_type={}", upstream.config.base, upstream.types.join(","));
        if let Some(since) = &self.checkpoint.since {
            url.push_str(&format!("&_since={}", encode(since)));
        }
        let response = upstream.get(&url, &[("prefer", "respond-async")]).await?;
        let status = response.status().as_u16();
        let upstream_clock = response.headers().get(reqwest::header::DATE).and_then(|value| value.to_str().ok());
        let mark = search_mark(upstream_clock, std::time::SystemTime::now());
        let location = response
            .headers()
            .get(reqwest::header::CONTENT_LOCATION)
            .and_then(|value| value.to_str().ok())
            .map(|location| follow_link(&upstream.config.base, &url, location, true));
        self.checkpoint.stage = match (status, location) {
            (202, Some(status_url)) => {
                self.checkpoint.mode = Some("bulk".into());
                Stage::Bulk { status_url, manifest: None, file: 0, line: 0 }
            }
            // The export answered at once with its manifest, as a server may for a small one.
            // No status URL: nothing to poll, nor to delete at the end.
            (200, _) => {
                let manifest = read_manifest(&upstream.config.base, &url, &read_json(response).await?)?;
                self.checkpoint.mode = Some("bulk".into());
                Stage::Bulk { status_url: String::new(), manifest: Some(manifest), file: 0, line: 0 }
            }
            // No export here (404, 405, 501, or a refusal of its parameters): searches.
            (400..=599, _) | (202, None) => {
                tracing::info!(source = self.name, status, "the upstream offers no $export; paging through searches");
                self.checkpoint.mode = Some("search".into());
                Stage::Search { type_index: 0, next: None, started_at: mark }
            }
            (other, _) => return Err(Failure::Status(other, "unexpected answer to the $export kick-off".into())),
        };
        self.save().await?;
        Ok(())
    }

    /// Polls an export until its manifest; `None` if the upstream no longer knows it.
    async fn wait_for_manifest(
        &mut self,
        upstream: &mut Upstream,
        status_url: &str,
    ) -> Result<Option<Manifest>, Failure> {
        let deadline = std::time::Instant::now() + MAX_EXPORT_WAIT;
        // Bounded by the deadline: every poll waits at least 100 ms.
        for poll in 0u32.. {
            let response = upstream.get(status_url, &[]).await?;
            match response.status().as_u16() {
                200 => return read_manifest(&upstream.config.base, status_url, &read_json(response).await?).map(Some),
                // Still running; or busy (a 429 for polling too often, a 503), which the
                // request's own retries did not outlast: wait longer and poll again.
                202 | 429 | 503 => {
                    let wait = upstream.wait(poll, Some(&response), MAX_POLL_WAIT).max(Duration::from_millis(100));
                    if std::time::Instant::now() + wait > deadline {
                        return Err(Failure::Braid("the upstream's export took too long".into()));
                    }
                    upstream.pause(wait).await?;
                }
                404 | 410 => return Ok(None),
                status => return Err(Failure::Status(status, error_text(response).await)),
            }
        }
        Err(Failure::Braid("the upstream's export took too long".into()))
    }

    /// Whether the upstream's export left something out, as its error files say: one that
    /// reports an error or fatal issue, or that cannot be read (or is beyond those read), does;
    /// warnings and information do not. Each error issue is recorded as a rejection.
    async fn export_failed_in_part(&mut self, upstream: &mut Upstream, manifest: &Manifest) -> Result<bool, Failure> {
        // More error files than Braid reads (see `MAX_ERROR_FILES`): the rest count as failed.
        let unread = manifest.errors > manifest.error_files.len();
        let mut failed = unread;
        for url in &manifest.error_files {
            let issues = match upstream.get_export_file(url, manifest.requires_token).await {
                Ok(mut response) if response.status().is_success() => {
                    crate::outbound::read_capped(&mut response, MAX_ERROR_FILE_BYTES).await.ok().map(|body| {
                        body.split(|&byte| byte == b'\n')
                            .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
                            .flat_map(|outcome| outcome["issue"].as_array().cloned().unwrap_or_default())
                            .collect::<Vec<Value>>()
                    })
                }
                // Not fetched (a URL the token may not go to, or not https), or not there.
                Ok(_) | Err(Failure::Braid(_)) => None,
                Err(failure) => return Err(failure),
            };
            let Some(issues) = issues else {
                failed = true;
                self.reject(Refused {
                    what: None,
                    error: FhirError::incorrect(
                        IssueCode::Processing,
                        "the upstream's export lists an error file that could not be read",
                    ),
                });
                continue;
            };
            for issue in issues {
                if matches!(issue["severity"].as_str(), Some("error" | "fatal")) {
                    failed = true;
                    let said = issue["diagnostics"]
                        .as_str()
                        .or_else(|| issue["details"]["text"].as_str())
                        .unwrap_or("no diagnostics");
                    let reason = format!(
                        "the upstream's export reported an error: {}",
                        said.chars().take(500).collect::<String>()
                    );
                    self.reject(Refused { what: None, error: FhirError::incorrect(IssueCode::Processing, reason) });
                }
            }
        }
        if unread {
            let reason = format!("the upstream's export reported {} error file(s)", manifest.errors);
            self.reject(Refused { what: None, error: FhirError::incorrect(IssueCode::Processing, reason) });
        }
        Ok(failed)
    }

    /// Reads one export file from line `line`, writing chunk by chunk and moving the
    /// checkpoint after each.
    async fn read_file(
        &mut self,
        upstream: &mut Upstream,
        manifest: &Manifest,
        file: usize,
        line: u64,
    ) -> Result<(), Failure> {
        // The files of resources, then those of deletions (see `Manifest::deleted_files`).
        let deletions = file >= manifest.files.len();
        let url = match manifest.files.get(file) {
            Some((_, url)) => url,
            None => &manifest.deleted_files[file - manifest.files.len()],
        };
        let response = upstream.get_export_file(url, manifest.requires_token).await?;
        match response.status().as_u16() {
            200 => {}
            // The files are gone: the export expired; start over.
            404 | 410 => return self.start_over("a file").await,
            status => return Err(Failure::Status(status, error_text(response).await)),
        }
        let mut response = response;
        let (mut pending, mut buffer, mut seen) = (Vec::new(), Vec::new(), 0u64);
        let mut done = line;
        // How much of `buffer` is known to hold no newline: each byte is looked at once.
        let mut scanned = 0;
        loop {
            let chunk = response.chunk().await.map_err(|error| Failure::Network(error.to_string()))?;
            let finished = chunk.is_none();
            if let Some(chunk) = chunk {
                buffer.extend_from_slice(&chunk);
            } else if !buffer.is_empty() && !buffer.ends_with(b"\n") {
                buffer.push(b'\n');
            }
            while let Some(end) = buffer[scanned..].iter().position(|&byte| byte == b'\n').map(|at| scanned + at) {
                scanned = 0;
                let text: Vec<u8> = buffer.drain(..=end).collect();
                let text = &text[..text.len() - 1];
                if text.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                seen += 1;
                if seen <= line {
                    continue;
                }
                pending.push(parse_line(text));
                if pending.len() == CHUNK {
                    done += pending.len() as u64;
                    self.apply_lines(deletions, std::mem::take(&mut pending)).await?;
                    self.save_bulk_position(file, done).await?;
                }
            }
            scanned = buffer.len();
            if buffer.len() > MAX_DOCUMENT_BYTES {
                return Err(Failure::Braid(format!("an NDJSON line is longer than {MAX_DOCUMENT_BYTES} bytes")));
            }
            if finished {
                break;
            }
        }
        self.apply_lines(deletions, pending).await?;
        self.save_bulk_position(file + 1, 0).await
    }

    /// Applies a chunk of an export file's lines: resources to write, or (from a `deleted` file)
    /// deletions.
    async fn apply_lines(&mut self, deletions: bool, lines: Vec<Result<Value, Refused>>) -> Result<(), Failure> {
        if deletions { self.delete_listed(lines).await } else { self.write(lines).await }
    }

    /// Moves the checkpoint of a run reading an export's files to `line` of `file`, and
    /// stores it.
    async fn save_bulk_position(&mut self, file: usize, line: u64) -> Result<(), Failure> {
        if let Stage::Bulk { file: at_file, line: at_line, .. } = &mut self.checkpoint.stage {
            (*at_file, *at_line) = (file, line);
        }
        self.save().await
    }

    /// Pages through the search of one type from `next` (its first page if `None`).
    async fn read_pages(
        &mut self,
        upstream: &mut Upstream,
        type_index: usize,
        type_name: &str,
        next: Option<String>,
        started_at: &str,
    ) -> Result<(), Failure> {
        let mut first = format!("{}/{type_name}?_count={PAGE_SIZE}", upstream.config.base);
        if let Some(since) = &self.checkpoint.since {
            first.push_str(&format!("&_lastUpdated=gt{}", encode(since)));
        }
        let mut url = next.unwrap_or_else(|| first.clone());
        let mut restarted = false;
        // The pages read (hashes of their URLs: at most MAX_PAGES of 8 bytes), to stop an
        // upstream whose next links go round in a circle.
        let mut read: HashSet<u64> = HashSet::new();
        let page_hash = |url: &str| {
            let mut hasher = std::hash::DefaultHasher::new();
            url.hash(&mut hasher);
            hasher.finish()
        };
        loop {
            if !read.insert(page_hash(&url)) {
                return Err(Failure::Braid(format!(
                    "the upstream's next links for {type_name} lead back to a page already read"
                )));
            }
            if read.len() > MAX_PAGES {
                return Err(Failure::Braid(format!("the search for {type_name} has more than {MAX_PAGES} pages")));
            }
            let response = upstream.get(&url, &[]).await?;
            let status = response.status().as_u16();
            if !(200..300).contains(&status) {
                // A page link that expired while Braid was down: the type again from its first page.
                if !restarted && matches!(status, 400 | 404 | 410) && url != first {
                    restarted = true;
                    url = first.clone();
                    read.clear();
                    continue;
                }
                return Err(Failure::Status(status, error_text(response).await));
            }
            let bundle = read_json(response).await?;
            let resources: Vec<Result<Value, Refused>> = bundle["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|entry| entry["search"]["mode"].as_str().is_none_or(|mode| mode == "match"))
                .filter_map(|entry| entry.get("resource").cloned())
                .map(Ok)
                .collect();
            let mut resources = resources;
            while !resources.is_empty() {
                let rest = resources.split_off(resources.len().min(CHUNK));
                self.write(std::mem::replace(&mut resources, rest)).await?;
            }
            let next = bundle["link"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|link| link["relation"] == "next")
                .and_then(|link| link["url"].as_str())
                .map(|next| follow_link(&upstream.config.base, &url, next, true));
            self.checkpoint.stage = match &next {
                Some(next) => Stage::Search { type_index, next: Some(next.clone()), started_at: started_at.to_owned() },
                None => Stage::Search { type_index: type_index + 1, next: None, started_at: started_at.to_owned() },
            };
            self.save().await?;
            match next {
                Some(next) => url = next,
                None => return Ok(()),
            }
        }
    }

    /// Fetches the next chunk of the referenced resources (those Braid does not hold yet) and
    /// writes them.
    async fn read_referenced(
        &mut self,
        upstream: &mut Upstream,
        done: usize,
        next_since: &Option<String>,
    ) -> Result<(), Failure> {
        let end = (done + CHUNK).min(self.checkpoint.referenced.len());
        let wanted: Vec<(String, String)> = self.checkpoint.referenced[done..end].to_vec();
        let snapshot = self.registry.store().snapshot()?;
        let mut fetched = Vec::new();
        for (type_name, id) in wanted {
            let (Some(resource_type), Ok(original)) = (ResourceType::parse(&type_name), Id::parse(&id)) else {
                continue;
            };
            if snapshot.is_live(resource_type, self.source.namespace.id(&original).as_str())? {
                continue;
            }
            let url = format!("{}/{type_name}/{id}", upstream.config.base);
            let response = upstream.get(&url, &[]).await?;
            match response.status().as_u16() {
                200 => fetched.push(Ok(read_json(response).await?)),
                404 | 410 => fetched.push(Err(Refused {
                    what: Some(format!("{type_name}/{id}")),
                    error: FhirError::not_found("referenced, but the upstream does not have it"),
                })),
                401 | 403 => fetched.push(Err(Refused {
                    what: Some(format!("{type_name}/{id}")),
                    error: FhirError::new(
                        Category::Forbidden,
                        IssueCode::Forbidden,
                        "referenced, but the upstream does not let Braid read it",
                    ),
                })),
                status => return Err(Failure::Status(status, error_text(response).await)),
            }
        }
        drop(snapshot);
        self.write(fetched).await?;
        self.checkpoint.stage = Stage::Referenced { done: end, next_since: next_since.clone() };
        self.save().await?;
        Ok(())
    }

    /// Notes the resources `value` references that are of types the run does not pull (on the
    /// upstream: relative references, or absolute ones on its base).
    fn note_references(&mut self, value: &mut Value, pulled: &[String], base: &str) {
        if self.checkpoint.referenced.len() >= MAX_REFERENCED {
            return;
        }
        let referenced = &mut self.checkpoint.referenced;
        let _ = reference::rewrite_resource_references(value, &mut |text: &str| {
            if let Target::Local { resource_type, id, version: _ } =
                reference::parse(reference::relative_to(text, base))
            {
                let key = (resource_type.as_str().to_owned(), id.as_str().to_owned());
                if !pulled.iter().any(|t| t == resource_type.as_str()) && referenced.len() < MAX_REFERENCED {
                    if let Err(position) = referenced.binary_search(&key) {
                        referenced.insert(position, key);
                    }
                }
            }
            Ok::<_, FhirError>(None)
        });
    }

    /// Writes pulled resources in one transaction with one Provenance. Those refused by
    /// validation are recorded and left out; if the transaction fails as a whole, each
    /// resource is written on its own so that one bad resource costs only itself.
    async fn write(&mut self, resources: Vec<Result<Value, Refused>>) -> Result<(), Failure> {
        if resources.is_empty() {
            return Ok(());
        }
        self.checkpoint.counts.received += resources.len() as u64;
        let (pulled, base) = (self.pulled.clone(), self.source.namespace.own_base().unwrap_or("").to_owned());
        let mut resources = resources;
        // Resources fetched because they are referenced are the end of the chain: what they
        // reference in turn is not followed (and the list being worked through stays as it is).
        if !matches!(self.checkpoint.stage, Stage::Referenced { .. }) {
            for resource in resources.iter_mut().flatten() {
                self.note_references(resource, &pulled, &base);
            }
        }
        let mut admitted: Vec<Admitted> = Vec::new();
        let mut positions: HashMap<(ResourceType, Id), usize> = HashMap::new();
        for resource in resources {
            match resource.and_then(|value| self.admit(value)) {
                Ok(one) => {
                    // The same resource twice (updated between two pages): the later one.
                    match positions.get(&(one.resource_type, one.id.clone())) {
                        Some(&position) => admitted[position] = one,
                        None => {
                            positions.insert((one.resource_type, one.id.clone()), admitted.len());
                            admitted.push(one);
                        }
                    }
                }
                Err(refused) => self.reject(refused),
            }
        }
        if admitted.is_empty() {
            return Ok(());
        }
        let writes: Vec<RunWrite> = admitted.into_iter().map(Admitted::into_write).collect();
        self.write_all(&writes).await
    }

    /// Counts a resource not stored, in the run's figures and the source's (which keep what
    /// it was and the error as it is).
    fn reject(&mut self, refused: Refused) {
        self.checkpoint.counts.rejected += 1;
        if self.rejections.len() < 20 {
            let issues = super::issues_text(&refused.error);
            self.rejections.push(match &refused.what {
                Some(what) => format!("{what}: {issues}"),
                None => issues,
            });
        }
        self.source.rejected(refused.what, &refused.error);
    }

    /// Validates a pulled resource under the source's policy and moves it into its namespace.
    /// Its conditional references (matching only the source's own records) are found on the
    /// way, for the writer to resolve.
    fn admit(&self, mut value: Value) -> Result<Admitted, Refused> {
        let unnamed = |error: FhirError| Refused { what: None, error };
        let resource_type = crate::fhir::json::resource_type_of(&value).map_err(unnamed)?;
        let original = value
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| unnamed(FhirError::incorrect(IssueCode::Required, "a pulled resource has no id")))?;
        let original = Id::parse(original).map_err(unnamed)?;
        let describe = |error: FhirError| Refused { what: Some(format!("{resource_type}/{original}")), error };
        super::admit(Some(&self.source), resource_type, &mut value, None).map_err(describe)?;
        let name = self.source.name().as_str();
        let conditional = crate::search::conditional_references(&mut value, &mut |resource_type, query| {
            let limit = super::ownership_clause(name, resource_type)?;
            crate::search::parse_criteria_within(resource_type, query, vec![limit])
        })
        .map_err(describe)?;
        let Value::Object(resource) = value else {
            return Err(describe(FhirError::incorrect(IssueCode::Structure, "a resource must be a JSON object")));
        };
        Ok(Admitted { resource_type, id: self.source.namespace.id(&original), resource, conditional })
    }

    /// Deletes the source's records that the Bundles `bundles` (lines of an export's file of
    /// deletions) list as deleted at the upstream: their `DELETE` entries' `Type/id`, on the
    /// source's own base or relative, in the source's namespace. What is not the source's own
    /// (or not there) is left alone; an entry that names nothing readable is a rejection.
    async fn delete_listed(&mut self, bundles: Vec<Result<Value, Refused>>) -> Result<(), Failure> {
        let mut deletions: Vec<RunWrite> = Vec::new();
        for bundle in bundles {
            let bundle = match bundle {
                Ok(bundle) => bundle,
                Err(refused) => {
                    self.reject(refused);
                    continue;
                }
            };
            for entry in bundle["entry"].as_array().into_iter().flatten() {
                if !entry["request"]["method"].as_str().is_some_and(|method| method.eq_ignore_ascii_case("DELETE")) {
                    continue;
                }
                self.checkpoint.counts.received += 1;
                let url = entry["request"]["url"].as_str().unwrap_or("");
                match self.source.namespace.local_target(url, None) {
                    Some((resource_type, id, _)) => {
                        deletions.push(RunWrite {
                            what: format!("{resource_type}/{id}"),
                            op: WriteOp {
                                full_url: None,
                                action: Action::Delete {
                                    resource_type,
                                    target: WriteTarget::Id(id),
                                    precondition: Precondition::default(),
                                },
                            },
                            conditional: HashMap::new(),
                        });
                    }
                    None => self.reject(Refused {
                        what: Some(url.chars().take(200).collect()),
                        error: FhirError::incorrect(
                            IssueCode::Invalid,
                            "a deletion the upstream listed does not name a resource as Type/id",
                        ),
                    }),
                }
            }
        }
        // One transaction per CHUNK deletions, whatever the Bundles held.
        for chunk in deletions.chunks(CHUNK) {
            self.write_all(chunk).await?;
        }
        Ok(())
    }

    /// Writes `writes` in one transaction. When the store refuses it for one of them (a
    /// conditional reference that matches nothing; another source's record, which the guard
    /// keeps), writes them one by one, each refused one recorded as a rejection.
    async fn write_all(&mut self, writes: &[RunWrite]) -> Result<(), Failure> {
        match self.write_together(writes).await {
            Ok(()) => Ok(()),
            Err(WriteFailure::Storage(error)) => Err(Failure::Braid(error)),
            Err(WriteFailure::Data(_)) => {
                for single in writes.chunks(1) {
                    match self.write_together(single).await {
                        Ok(()) => {}
                        Err(WriteFailure::Data(error)) => {
                            self.reject(Refused { what: Some(single[0].what.clone()), error });
                        }
                        Err(WriteFailure::Storage(error)) => return Err(Failure::Braid(error)),
                    }
                }
                Ok(())
            }
        }
    }

    /// Writes `writes` in one transaction, as the source's own (guarded, namespaced, with its
    /// Provenance), and counts what each did.
    async fn write_together(&mut self, writes: &[RunWrite]) -> Result<(), WriteFailure> {
        let mut request =
            WriteRequest { guard: Some(ownership_guard(self.source.name().as_str())), ..Default::default() };
        for write in writes {
            request.conditional_references.extend(write.conditional.clone());
            request.ops.push(write.op.clone());
        }
        let request = super::namespaced(Some(&self.source), request);
        match self.registry.store().write(request).await {
            Ok(outcomes) => {
                super::count(Some(&self.source), &outcomes);
                for outcome in &outcomes {
                    match outcome.kind {
                        OutcomeKind::Created => self.checkpoint.counts.created += 1,
                        OutcomeKind::Updated => self.checkpoint.counts.updated += 1,
                        OutcomeKind::Deleted { count } => self.checkpoint.counts.deleted += count as u64,
                        _ => self.checkpoint.counts.unchanged += 1,
                    }
                }
                Ok(())
            }
            Err(error) if matches!(error.category, Category::Fault | Category::Busy) => {
                Err(WriteFailure::Storage(error.to_string()))
            }
            Err(error) => Err(WriteFailure::Data(error)),
        }
    }
}

/// A pulled resource ready to write: in the source's namespace, with its conditional
/// references parsed.
struct Admitted {
    resource_type: ResourceType,
    /// The stored id.
    id: Id,
    resource: serde_json::Map<String, Value>,
    conditional: HashMap<String, (ResourceType, Criteria)>,
}

impl Admitted {
    fn into_write(self) -> RunWrite {
        RunWrite {
            what: format!("{}/{}", self.resource_type, self.id),
            op: WriteOp {
                full_url: None,
                action: Action::Update {
                    resource_type: self.resource_type,
                    target: WriteTarget::Id(self.id),
                    resource: self.resource,
                    precondition: Precondition::default(),
                },
            },
            conditional: self.conditional,
        }
    }
}

/// One write of a run (a pulled resource, or a deletion the upstream listed): the operation,
/// the conditional references it carries, and what it is called in a rejection.
struct RunWrite {
    what: String,
    op: WriteOp,
    conditional: HashMap<String, (ResourceType, Criteria)>,
}

enum WriteFailure {
    /// The data was refused (a conditional reference that matches nothing, say).
    Data(FhirError),
    /// The store failed.
    Storage(String),
}

/// A pulled resource Braid does not store: what it was, when known, and why.
struct Refused {
    what: Option<String>,
    error: FhirError,
}

fn parse_line(text: &[u8]) -> Result<Value, Refused> {
    serde_json::from_slice::<Value>(text).map_err(|error| Refused {
        what: None,
        error: FhirError::incorrect(IssueCode::Structure, format!("an NDJSON line is not JSON: {error}")),
    })
}

fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// The guard that keeps a source's writes on its own records (see [`super::ownership_clause`]).
pub fn ownership_guard(name: &str) -> WriteGuard {
    let name = name.to_owned();
    WriteGuard(Arc::new(move |view, resource_type, id, version, _change| {
        super::owns_version(view, &name, resource_type, id.as_str(), version)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_are_durations_of_at_least_a_minute() {
        assert_eq!(parse_every("15m").unwrap(), 900);
        assert_eq!(parse_every("1h").unwrap(), 3600);
        assert_eq!(parse_every("2d").unwrap(), 172_800);
        assert_eq!(parse_every("90s").unwrap(), 90);
        assert_eq!(parse_every("5").unwrap(), 300, "minutes by default");
        for bad in ["", "m", "30s", "1w", "-5m", "1.5h"] {
            assert!(parse_every(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn keys_are_read_for_es384_or_rs384_with_a_thumbprint_id() {
        let pkcs8 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .unwrap();
        let pem = pkcs8_pem(pkcs8.as_ref());
        let (algorithm, kid, public) = read_key(&pem, None).unwrap();
        assert_eq!(algorithm, Algorithm::ES384);
        assert_eq!(public["kid"], kid.as_str());
        assert_eq!(kid.len(), 43, "a base64url SHA-256 thumbprint");
        // RFC 7638: the SHA-256 of the required members, in lexicographic order, no spaces.
        let canonical = format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            public["crv"].as_str().unwrap(),
            public["x"].as_str().unwrap(),
            public["y"].as_str().unwrap()
        );
        use base64::Engine as _;
        use sha2::Digest as _;
        let thumbprint = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(canonical));
        assert_eq!(kid, thumbprint);
        assert!(public.get("d").is_none(), "only the public half");
        let (_, named, _) = read_key(&pem, Some("mine")).unwrap();
        assert_eq!(named, "mine");
        let p256 = aws_lc_rs::signature::EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .unwrap();
        assert!(read_key(&pkcs8_pem(p256.as_ref()), None).is_err());
        assert!(read_key("not a key", None).is_err());
        use aws_lc_rs::encoding::AsDer;
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let rsa_pem = pkcs8_pem(rsa.as_der().unwrap().as_ref());
        let (algorithm, rsa_kid, public) = read_key(&rsa_pem, None).unwrap();
        assert_eq!(algorithm, Algorithm::RS384);
        assert_eq!(public["kty"], "RSA");
        assert!(["d", "p", "q", "dp", "dq", "qi"].iter().all(|private| public.get(*private).is_none()), "{public}");
        assert_ne!(rsa_kid, kid, "another key, another thumbprint");
    }
}

#[cfg(test)]
mod origin_tests {
    use super::same_origin;

    #[test]
    fn the_token_goes_only_to_the_upstreams_own_origin() {
        let base = "https://ehr.example/fhir";
        assert!(same_origin("https://ehr.example/fhir/Patient?page=2", base));
        assert!(same_origin("HTTPS://EHR.example/other/path", base));
        for other in [
            "http://ehr.example/fhir/Patient",
            "https://ehr.example:8443/fhir",
            "https://ehr.example.evil/fhir",
            "https://evil.example/fhir?x=https://ehr.example/fhir",
            "https://169.254.169.254/latest",
            "not a url",
        ] {
            assert!(!same_origin(other, base), "{other}");
        }
    }
}

#[cfg(test)]
mod link_tests {
    use std::time::{Duration, SystemTime};

    use super::{follow_link, retry_after, same_origin};

    #[test]
    fn links_the_upstream_gives_are_resolved_and_kept_on_its_origin() {
        let base = "http://127.0.0.1:8080/fhir";
        let page = "http://127.0.0.1:8080/fhir/Observation?_count=200";
        let followed = |link: &str, own: bool| follow_link(base, page, link, own);
        // Relative links, as a browser resolves them.
        assert_eq!(
            followed("/fhir/Observation?_offset=200", true),
            "http://127.0.0.1:8080/fhir/Observation?_offset=200"
        );
        assert_eq!(followed("Observation?_offset=200", true), "http://127.0.0.1:8080/fhir/Observation?_offset=200");
        assert_eq!(followed("?page=3", true), "http://127.0.0.1:8080/fhir/Observation?page=3");
        // The upstream naming itself by another address, under its own base path: its origin.
        assert_eq!(
            followed("https://localhost/fhir/Observation?_offset=200", true),
            "http://127.0.0.1:8080/fhir/Observation?_offset=200"
        );
        assert_eq!(followed("http://proxy.internal:9/fhir", true), "http://127.0.0.1:8080/fhir");
        // A base at the root claims no other host's paths.
        assert_eq!(
            follow_link(
                "http://127.0.0.1:8080",
                "http://127.0.0.1:8080/Patient",
                "https://files.example/x.ndjson",
                true
            ),
            "https://files.example/x.ndjson"
        );
        // Outside its base path, a file served without a token, or not http: left as given,
        // and so refused wherever the token would go.
        for (link, own) in [
            ("https://other.example/elsewhere/Observation", true),
            ("https://other.example/fhirish/Observation", true),
            ("https://bucket.s3.example/fhir/export/1.ndjson", false),
            ("ftp://127.0.0.2/fhir/x", true),
        ] {
            let resolved = followed(link, own);
            assert_eq!(resolved, link, "{link}");
            assert!(!same_origin(&resolved, base) || !own, "{link}");
        }
    }

    #[test]
    fn the_scopes_asked_for_follow_the_smart_version_the_upstream_declares() {
        use super::ScopeSyntax;
        use serde_json::json;
        let types = ["Patient".to_owned(), "Observation".to_owned()];
        let v2 = "system/Patient.rs system/Observation.rs system/*.r";
        let v1 = "system/Patient.read system/Observation.read system/*.read";
        for (configuration, scope) in [
            (json!({"token_endpoint": "https://x/token"}), v2),
            (json!({"capabilities": ["client-confidential-asymmetric", "permission-v2", "permission-v1"]}), v2),
            (json!({"capabilities": ["client-confidential-asymmetric", "permission-v1"]}), v1),
            (json!({"scopes_supported": ["openid", "system/Patient.read", "system/*.read"]}), v1),
            (json!({"scopes_supported": ["system/Patient.rs", "system/Patient.read"]}), v2),
            (json!({"capabilities": "not a list", "scopes_supported": 3}), v2),
        ] {
            assert_eq!(ScopeSyntax::of(&configuration).scope(&types), scope, "{configuration}");
        }
    }

    #[test]
    fn a_search_run_is_marked_by_the_upstreams_clock_less_the_overlap() {
        use super::search_mark;
        let ours = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000); // 2023-11-14T22:13:20Z
        // The upstream's clock an hour behind Braid's: its own is what its lastUpdated follow.
        let theirs = httpdate::fmt_http_date(ours - Duration::from_secs(3600));
        assert_eq!(search_mark(Some(&theirs), ours), "2023-11-14T21:08:20.000Z");
        // Without a readable Date, Braid's clock.
        for missing in [None, Some("yesterday")] {
            assert_eq!(search_mark(missing, ours), "2023-11-14T22:08:20.000Z");
        }
    }

    #[test]
    fn retry_after_is_read_in_seconds_or_as_an_http_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let header = |value: &str| {
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::RETRY_AFTER, value.parse().unwrap());
            retry_after(&headers, now)
        };
        assert_eq!(header("120"), Some(Duration::from_secs(120)));
        assert_eq!(header(" 7 "), Some(Duration::from_secs(7)));
        let in_90_s = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(header(&in_90_s), Some(Duration::from_secs(90)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(header(&past), Some(Duration::ZERO), "a date already past: no wait");
        assert_eq!(header("soon"), None);
        assert_eq!(header("-5"), None);
        assert_eq!(retry_after(&reqwest::header::HeaderMap::new(), now), None);
    }
}
