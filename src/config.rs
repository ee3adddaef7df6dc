//! Settings: built-in defaults, then an optional TOML file, then `BRAID_*` environment
//! variables, then command-line flags; each later source overrides the earlier ones.
//!
//! [`SETTINGS`] is the one place every setting is documented; the README's table is checked
//! against it by a test.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub listen: String,
    pub data: PathBuf,
    pub base_url: Option<String>,
    pub max_body_bytes: usize,
    pub max_json_depth: usize,
    pub cache_mb: usize,
    pub writer_max_group: usize,
    pub page_size: usize,
    pub max_page_size: usize,
    pub workers: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    pub shutdown_timeout_secs: u64,
    pub cursor_ttl_secs: u64,
    pub gc_interval_secs: u64,
    pub conditional_delete_max: usize,
    pub max_json_values: usize,
    pub max_string_bytes: usize,
    pub body_read_timeout_secs: u64,
    pub request_head_timeout_secs: u64,
    pub keep_alive_secs: u64,
    pub max_connections: usize,
    pub trust_forwarded_headers: bool,
    pub max_url_bytes: usize,
    pub search_work_budget: u64,
    pub search_timeout_ms: u64,
    pub max_history_scan: usize,
    pub sort_in_memory_below: usize,
    pub quick_repair: bool,
    pub body_cache_mb: usize,
    pub tls_cert: Option<PathBuf>,
    /// Key file that unwraps the database's data key: the database and the files written
    /// besides it are encrypted. `None`: a plain database.
    pub encryption_key_file: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub auth: AuthMode,
    pub backend_token_secs: u64,
    pub access_token_secs: u64,
    pub totp: TotpPolicy,
    pub audit: bool,
    pub audit_window_secs: u64,
    pub smart_style_url: Option<String>,
    pub reminder_lead_times: String,
    pub reminder_interval_secs: u64,
    pub smtp_url: Option<String>,
    pub smtp_from: String,
    pub export_retention_secs: u64,
    pub mpi_auto_train: bool,
    pub max_ingest_bytes: u64,
    /// The process whose child Braid must stay (see the setting's doc).
    pub parent_pid: Option<u32>,
}

/// Whether users must give a second factor (a TOTP code) at login.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TotpPolicy {
    /// Every user enrols at their first login and gives a code at every login.
    Required,
    /// Users who enrolled give a code; the others are not asked to enrol.
    Optional,
    Off,
}

impl std::str::FromStr for TotpPolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<TotpPolicy, String> {
        match text.trim() {
            "required" => Ok(TotpPolicy::Required),
            "optional" => Ok(TotpPolicy::Optional),
            "off" => Ok(TotpPolicy::Off),
            _ => Err("expected required, optional or off".into()),
        }
    }
}

/// Whether Braid requires and checks SMART access tokens.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    On,
    Off,
}

impl std::str::FromStr for AuthMode {
    type Err = String;

    fn from_str(text: &str) -> Result<AuthMode, String> {
        match text.trim() {
            "on" => Ok(AuthMode::On),
            "off" => Ok(AuthMode::Off),
            _ => Err("expected on or off".into()),
        }
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Pretty,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: "127.0.0.1:8080".into(),
            data: PathBuf::from("./data/braid.redb"),
            base_url: None,
            max_body_bytes: 16 << 20,
            max_json_depth: 100,
            cache_mb: 64,
            writer_max_group: 256,
            page_size: 50,
            max_page_size: 1000,
            workers: 0,
            log_format: LogFormat::Json,
            log_level: "info".into(),
            shutdown_timeout_secs: 30,
            cursor_ttl_secs: 3600,
            gc_interval_secs: 60,
            conditional_delete_max: 1,
            max_json_values: 2_000_000,
            max_string_bytes: 1 << 20,
            body_read_timeout_secs: 30,
            request_head_timeout_secs: 5,
            keep_alive_secs: 5,
            max_connections: 1000,
            trust_forwarded_headers: false,
            max_url_bytes: 16384,
            search_work_budget: 5_000_000,
            search_timeout_ms: 10_000,
            max_history_scan: 10_000,
            sort_in_memory_below: 1000,
            quick_repair: true,
            body_cache_mb: 32,
            tls_cert: None,
            encryption_key_file: None,
            tls_key: None,
            auth: AuthMode::On,
            backend_token_secs: 300,
            access_token_secs: 3600,
            totp: TotpPolicy::Required,
            audit: true,
            audit_window_secs: 5,
            mpi_auto_train: true,
            max_ingest_bytes: 1 << 30,
            parent_pid: None,
            smart_style_url: None,
            reminder_lead_times: "3d,1d".into(),
            reminder_interval_secs: 60,
            smtp_url: None,
            smtp_from: "Braid <braid@localhost>".into(),
            export_retention_secs: 3600,
        }
    }
}

/// One documented setting: its key in the TOML file, its environment variable, its default and
/// what it does.
pub struct SettingDoc {
    pub key: &'static str,
    pub env: &'static str,
    pub default: &'static str,
    pub doc: &'static str,
    apply: fn(&mut Settings, &str) -> Result<(), String>,
}

/// Every setting Braid reads.
pub const SETTINGS: &[SettingDoc] = &[
    SettingDoc {
        key: "listen",
        env: "BRAID_LISTEN",
        default: "127.0.0.1:8080",
        doc: "Address and port to listen on (port 0 picks a free port).",
        apply: |s, v| {
            s.listen = v.into();
            Ok(())
        },
    },
    SettingDoc {
        key: "data",
        env: "BRAID_DATA",
        default: "./data/braid.redb",
        doc: "Path of the database file; created with its directory on first start.",
        apply: |s, v| {
            s.data = v.into();
            Ok(())
        },
    },
    SettingDoc {
        key: "base_url",
        env: "BRAID_BASE_URL",
        default: "(from the request's Host)",
        doc: "Public base URL of the FHIR API used in links and Location headers, e.g. https://fhir.example.org/fhir.",
        apply: |s, v| {
            s.base_url = Some(v.trim_end_matches('/').into());
            Ok(())
        },
    },
    SettingDoc {
        key: "max_body_bytes",
        env: "BRAID_MAX_BODY_BYTES",
        default: "16777216",
        doc: "Largest request body accepted; larger ones get 413.",
        apply: |s, v| parse_into(&mut s.max_body_bytes, v),
    },
    SettingDoc {
        key: "max_json_depth",
        env: "BRAID_MAX_JSON_DEPTH",
        default: "100",
        doc: "Deepest nesting of JSON arrays and objects accepted; deeper bodies get 400.",
        apply: |s, v| parse_into(&mut s.max_json_depth, v),
    },
    SettingDoc {
        key: "cache_mb",
        env: "BRAID_CACHE_MB",
        default: "64",
        doc: "Database page cache in MiB; the main part of Braid's memory use (each MiB of cache costs about 1.3 MiB of memory once full, with the allocator's overhead). A larger cache helps when the often-read part of the database is larger than it.",
        apply: |s, v| parse_into(&mut s.cache_mb, v),
    },
    SettingDoc {
        key: "writer_max_group",
        env: "BRAID_WRITER_MAX_GROUP",
        default: "256",
        doc: "Most write requests committed together in one durable transaction.",
        apply: |s, v| parse_into(&mut s.writer_max_group, v),
    },
    SettingDoc {
        key: "page_size",
        env: "BRAID_PAGE_SIZE",
        default: "50",
        doc: "Entries per page of history and search results when the client sends no _count.",
        apply: |s, v| parse_into(&mut s.page_size, v),
    },
    SettingDoc {
        key: "max_page_size",
        env: "BRAID_MAX_PAGE_SIZE",
        default: "1000",
        doc: "Largest _count honoured; larger values are reduced to it.",
        apply: |s, v| parse_into(&mut s.max_page_size, v),
    },
    SettingDoc {
        key: "workers",
        env: "BRAID_WORKERS",
        default: "0",
        doc: "HTTP worker threads; 0 means one per CPU core.",
        apply: |s, v| parse_into(&mut s.workers, v),
    },
    SettingDoc {
        key: "log_format",
        env: "BRAID_LOG_FORMAT",
        default: "json",
        doc: "json (one JSON object per line, with the request id) or pretty (for humans).",
        apply: |s, v| match v {
            "json" => {
                s.log_format = LogFormat::Json;
                Ok(())
            }
            "pretty" => {
                s.log_format = LogFormat::Pretty;
                Ok(())
            }
            _ => Err("expected json or pretty".into()),
        },
    },
    SettingDoc {
        key: "log_level",
        env: "BRAID_LOG_LEVEL",
        default: "info",
        doc: "Log filter in tracing's EnvFilter syntax, e.g. info or braid=debug,actix_web=warn.",
        apply: |s, v| {
            s.log_level = v.into();
            Ok(())
        },
    },
    SettingDoc {
        key: "shutdown_timeout_secs",
        env: "BRAID_SHUTDOWN_TIMEOUT_SECS",
        default: "30",
        doc: "On SIGTERM/SIGINT, how long in-flight requests may take to finish.",
        apply: |s, v| parse_into(&mut s.shutdown_timeout_secs, v),
    },
    SettingDoc {
        key: "cursor_ttl_secs",
        env: "BRAID_CURSOR_TTL_SECS",
        default: "3600",
        doc: "How long a paging link (next/previous) stays valid; older ones get 410. Superseded search index entries are kept this long.",
        apply: |s, v| parse_into(&mut s.cursor_ttl_secs, v),
    },
    SettingDoc {
        key: "gc_interval_secs",
        env: "BRAID_GC_INTERVAL_SECS",
        default: "60",
        doc: "How often index entries of superseded versions that no valid paging link needs are removed; 0 turns this off.",
        apply: |s, v| parse_into(&mut s.gc_interval_secs, v),
    },
    SettingDoc {
        key: "conditional_delete_max",
        env: "BRAID_CONDITIONAL_DELETE_MAX",
        default: "1",
        doc: "Most resources one conditional delete may delete (at most 10000); more matches delete nothing and get 412.",
        apply: |s, v| parse_into(&mut s.conditional_delete_max, v),
    },
    SettingDoc {
        key: "max_json_values",
        env: "BRAID_MAX_JSON_VALUES",
        default: "2000000",
        doc: "Most JSON values (objects, arrays, their members and items) in a request body; more get 413 before parsing.",
        apply: |s, v| parse_into(&mut s.max_json_values, v),
    },
    SettingDoc {
        key: "max_string_bytes",
        env: "BRAID_MAX_STRING_BYTES",
        default: "1048576",
        doc: "Longest single JSON string in a body, except base64 data (Attachment.data, Binary.data, ...); longer ones get 400 naming the element.",
        apply: |s, v| parse_into(&mut s.max_string_bytes, v),
    },
    SettingDoc {
        key: "body_read_timeout_secs",
        env: "BRAID_BODY_READ_TIMEOUT_SECS",
        default: "30",
        doc: "How long the whole body of a request may take to arrive; a slower one gets 408 and its connection is closed.",
        apply: |s, v| parse_into(&mut s.body_read_timeout_secs, v),
    },
    SettingDoc {
        key: "request_head_timeout_secs",
        env: "BRAID_REQUEST_HEAD_TIMEOUT_SECS",
        default: "5",
        doc: "How long a new connection may take to send its request line and headers; a slower one gets 408 and is closed.",
        apply: |s, v| parse_into(&mut s.request_head_timeout_secs, v),
    },
    SettingDoc {
        key: "keep_alive_secs",
        env: "BRAID_KEEP_ALIVE_SECS",
        default: "5",
        doc: "How long an idle keep-alive connection stays open between requests.",
        apply: |s, v| parse_into(&mut s.keep_alive_secs, v),
    },
    SettingDoc {
        key: "max_connections",
        env: "BRAID_MAX_CONNECTIONS",
        default: "1000",
        doc: "Most open connections per worker; further connections wait in the listen queue until one closes.",
        apply: |s, v| parse_into(&mut s.max_connections, v),
    },
    SettingDoc {
        key: "trust_forwarded_headers",
        env: "BRAID_TRUST_FORWARDED_HEADERS",
        default: "false",
        doc: "Without base_url, build links from the Forwarded / X-Forwarded-Host / X-Forwarded-Proto headers; \
              set it only behind a proxy that sets them. Otherwise links use the Host header.",
        apply: |s, v| match v.trim() {
            "true" => {
                s.trust_forwarded_headers = true;
                Ok(())
            }
            "false" => {
                s.trust_forwarded_headers = false;
                Ok(())
            }
            _ => Err("expected true or false".into()),
        },
    },
    SettingDoc {
        key: "max_url_bytes",
        env: "BRAID_MAX_URL_BYTES",
        default: "16384",
        doc: "Longest request URL (path and query) accepted; longer ones get 414. Use POST _search for longer \
              searches. URLs over 64 KiB are refused by the HTTP parser with a bare 400 whatever this says.",
        apply: |s, v| parse_into(&mut s.max_url_bytes, v),
    },
    SettingDoc {
        key: "search_work_budget",
        env: "BRAID_SEARCH_WORK_BUDGET",
        default: "5000000",
        doc: "Index entries one search request may visit (planning, matching, counting, sorting, includes, chains); \
              a search needing more gets 400 too-costly.",
        apply: |s, v| parse_into(&mut s.search_work_budget, v),
    },
    SettingDoc {
        key: "search_timeout_ms",
        env: "BRAID_SEARCH_TIMEOUT_MS",
        default: "10000",
        doc: "How long one search request may work before it gets 400 too-costly.",
        apply: |s, v| parse_into(&mut s.search_timeout_ms, v),
    },
    SettingDoc {
        key: "max_history_scan",
        env: "BRAID_MAX_HISTORY_SCAN",
        default: "10000",
        doc: "Most history entries one page of an _at history examines; a page that reaches it is shorter and links to the next.",
        apply: |s, v| parse_into(&mut s.max_history_scan, v),
    },
    SettingDoc {
        key: "sort_in_memory_below",
        env: "BRAID_SORT_IN_MEMORY_BELOW",
        default: "1000",
        doc: "A _sort search whose most selective parameter has fewer index entries than this is sorted in memory; \
              otherwise one sort key with an index of its own (a date) is read in order from that index, page by page. \
              0 always reads the index; above 1000 (the planner's counting limit) always sorts in memory.",
        apply: |s, v| parse_into(&mut s.sort_in_memory_below, v),
    },
    SettingDoc {
        key: "quick_repair",
        env: "BRAID_QUICK_REPAIR",
        default: "true",
        doc: "Each commit also saves the database's free-page state (one more sync per commit), so that the first \
              start after a crash or power loss need not scan the whole file to rebuild it. false: somewhat faster \
              commits, but that start takes time proportional to the file size.",
        apply: |s, v| match v.trim() {
            "true" => {
                s.quick_repair = true;
                Ok(())
            }
            "false" => {
                s.quick_repair = false;
                Ok(())
            }
            _ => Err("expected true or false".into()),
        },
    },
    SettingDoc {
        key: "body_cache_mb",
        env: "BRAID_BODY_CACHE_MB",
        default: "32",
        doc: "Memory in MiB for resource bodies already decompressed, so that reads of often-read resources skip \
              decompression; 0 turns the cache off.",
        apply: |s, v| parse_into(&mut s.body_cache_mb, v),
    },
    SettingDoc {
        key: "encryption_key_file",
        env: "BRAID_ENCRYPTION_KEY_FILE",
        default: "(none: a plain database)",
        doc: "Key file made by `braid keygen`: the database, its exports and spooled uploads are encrypted \
              (AES-256-GCM) with a data key this key unwraps. Needed by every command that opens an \
              encrypted database; also the `--encryption-key-file` flag.",
        apply: |s, v| {
            // Empty: no key (how the Docker image's default is turned off).
            s.encryption_key_file = (!v.trim().is_empty()).then(|| v.into());
            Ok(())
        },
    },
    SettingDoc {
        key: "tls_cert",
        env: "BRAID_TLS_CERT",
        default: "(none: plain HTTP)",
        doc: "PEM file with the server's certificate chain (its own certificate first). With `tls_key`, Braid serves \
              HTTPS (TLS 1.2 and 1.3, HTTP/1.1 and HTTP/2) instead of plain HTTP.",
        apply: |s, v| {
            s.tls_cert = Some(v.into());
            Ok(())
        },
    },
    SettingDoc {
        key: "tls_key",
        env: "BRAID_TLS_KEY",
        default: "(none: plain HTTP)",
        doc: "PEM file with the private key of `tls_cert` (PKCS#8, PKCS#1 or SEC1).",
        apply: |s, v| {
            s.tls_key = Some(v.into());
            Ok(())
        },
    },
    SettingDoc {
        key: "auth",
        env: "BRAID_AUTH",
        default: "on",
        doc: "on: every FHIR request needs a SMART access token that allows it, and Braid is its own \
              authorization server (`/auth/token`, discovery at `/fhir/.well-known/smart-configuration`). off: \
              every request is allowed; only when listening on a loopback address, and Braid warns at start.",
        apply: |s, v| {
            s.auth = v.parse()?;
            Ok(())
        },
    },
    SettingDoc {
        key: "backend_token_secs",
        env: "BRAID_BACKEND_TOKEN_SECS",
        default: "300",
        doc: "Lifetime in seconds of the access tokens backend services get (client_credentials); at most 300.",
        apply: |s, v| parse_into(&mut s.backend_token_secs, v),
    },
    SettingDoc {
        key: "access_token_secs",
        env: "BRAID_ACCESS_TOKEN_SECS",
        default: "3600",
        doc: "Lifetime in seconds of the access tokens apps get after a login; at most 3600.",
        apply: |s, v| parse_into(&mut s.access_token_secs, v),
    },
    SettingDoc {
        key: "totp",
        env: "BRAID_TOTP",
        default: "required",
        doc: "The second factor at login: required (every user enrols a TOTP app at their first login), optional \
              (only users who enrolled are asked) or off.",
        apply: |s, v| {
            s.totp = v.parse()?;
            Ok(())
        },
    },
    SettingDoc {
        key: "audit",
        env: "BRAID_AUDIT",
        default: "true",
        doc: "With auth on, record every request made with an access token as part of an AuditEvent (who, what, \
              which patients, the outcome), written in the background.",
        apply: |s, v| match v.trim() {
            "true" => {
                s.audit = true;
                Ok(())
            }
            "false" => {
                s.audit = false;
                Ok(())
            }
            _ => Err("expected true or false".into()),
        },
    },
    SettingDoc {
        key: "smart_style_url",
        env: "BRAID_SMART_STYLE_URL",
        default: "(none)",
        doc: "An absolute http(s) URL of a SMART styling document, given to apps in the token response of a \
              user's launch (`smart_style_url`) so that they can match the portal's look.",
        apply: |s, v| {
            let v = v.trim();
            if !(v.starts_with("https://") || v.starts_with("http://")) || v.chars().any(char::is_whitespace) {
                return Err("expected an absolute http(s) URL".into());
            }
            s.smart_style_url = Some(v.to_owned());
            Ok(())
        },
    },
    SettingDoc {
        key: "audit_window_secs",
        env: "BRAID_AUDIT_WINDOW_SECS",
        default: "5",
        doc: "How many seconds of one client's (and user's) requests of one kind and outcome are gathered into one \
              AuditEvent listing the distinct resources they touched and the period; 1 to 60. Longer windows write \
              less under heavy reading; the events of a window are written when it ends.",
        apply: |s, v| {
            parse_into(&mut s.audit_window_secs, v)?;
            if !(1..=60).contains(&s.audit_window_secs) {
                return Err("expected a number of seconds from 1 to 60".into());
            }
            Ok(())
        },
    },
    SettingDoc {
        key: "export_retention_secs",
        env: "BRAID_EXPORT_RETENTION_SECS",
        default: "3600",
        doc: "How many seconds the files of a finished Bulk Data export ($export) are kept for its client to \
              download (from when it ends); then they and the job are deleted. 60 to 604800.",
        apply: |s, v| {
            parse_into(&mut s.export_retention_secs, v)?;
            if !(60..=604_800).contains(&s.export_retention_secs) {
                return Err("expected a number of seconds from 60 to 604800".into());
            }
            Ok(())
        },
    },
    SettingDoc {
        key: "reminder_lead_times",
        env: "BRAID_REMINDER_LEAD_TIMES",
        default: "3d,1d",
        doc: "How long before each upcoming Appointment its Patients are reminded (a Communication in their record, \
              and an email when they have an address and smtp_url is set): days, hours or minutes, e.g. 3d,1d,2h. \
              Empty turns reminders off.",
        apply: |s, v| {
            crate::reminders::parse_lead_times(v)?;
            s.reminder_lead_times = v.to_owned();
            Ok(())
        },
    },
    SettingDoc {
        key: "reminder_interval_secs",
        env: "BRAID_REMINDER_INTERVAL_SECS",
        default: "60",
        doc: "How often, in seconds, reminders are looked at: made, sent when due, updated when their appointment \
              moves, withdrawn when it is cancelled. 1 to 3600.",
        apply: |s, v| {
            parse_into(&mut s.reminder_interval_secs, v)?;
            if !(1..=3600).contains(&s.reminder_interval_secs) {
                return Err("expected a number of seconds from 1 to 3600".into());
            }
            Ok(())
        },
    },
    SettingDoc {
        key: "smtp_url",
        env: "BRAID_SMTP_URL",
        default: "(none: no email)",
        doc: "The SMTP server reminders are emailed through: smtp://host:587?tls=required (STARTTLS), smtps://host:465 \
              (TLS) or smtp://127.0.0.1:25 (a relay on this machine: plain smtp:// and tls=opportunistic are refused \
              for any other host), with user:password@ for a login. A secret when it holds a password: never logged.",
        apply: |s, v| {
            crate::reminders::mail::Mailer::new(v, &s.smtp_from)?;
            s.smtp_url = Some(v.to_owned());
            Ok(())
        },
    },
    SettingDoc {
        key: "smtp_from",
        env: "BRAID_SMTP_FROM",
        default: "Braid <braid@localhost>",
        doc: "The sender of reminder emails: an address, or a name and an address in angle brackets.",
        apply: |s, v| {
            v.parse::<lettre::message::Mailbox>().map_err(|_| format!("'{v}' is not an email address"))?;
            s.smtp_from = v.to_owned();
            Ok(())
        },
    },
    SettingDoc {
        key: "mpi_auto_train",
        env: "BRAID_MPI_AUTO_TRAIN",
        default: "true",
        doc: "Train the master patient index's parameters on its own Patients once it holds 1,000 and again each time \
              that number doubles (as `braid mpi train` does, re-scoring the automatic links; manual links stay). \
              With false, the shipped parameters are used until an operator trains.",
        apply: |s, v| match v.trim() {
            "true" => {
                s.mpi_auto_train = true;
                Ok(())
            }
            "false" => {
                s.mpi_auto_train = false;
                Ok(())
            }
            _ => Err("expected true or false".into()),
        },
    },
    SettingDoc {
        key: "parent_pid",
        env: "BRAID_PARENT_PID",
        default: "(none)",
        doc: "For a process that starts Braid as its child (a test harness, a benchmark, a supervisor): its pid. \
              Braid stops, as on SIGTERM, once that process is no longer its parent (it exited or was killed), so \
              that no server outlives what started it. Checked every half second.",
        apply: |s, v| {
            let pid = v.trim().parse().map_err(|_| format!("'{v}' is not a process id"))?;
            s.parent_pid = Some(pid);
            Ok(())
        },
    },
    SettingDoc {
        key: "max_ingest_bytes",
        env: "BRAID_MAX_INGEST_BYTES",
        default: "1073741824",
        doc: "Largest file uploaded raw to `Patient/[id]/$ingest-vitals` (a wearable export or a camera trace); larger \
              ones get 413. An upload must arrive at no less than max_body_bytes per body_read_timeout_secs.",
        apply: |s, v| parse_into(&mut s.max_ingest_bytes, v),
    },
];

fn parse_into<T: std::str::FromStr>(target: &mut T, text: &str) -> Result<(), String> {
    *target = text.trim().parse().map_err(|_| format!("'{text}' is not a valid number"))?;
    Ok(())
}

#[derive(Debug)]
pub struct ConfigError(String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Settings {
    /// Defaults, then `file` (if given), then the environment as returned by `env`.
    pub fn load(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        let mut settings = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
                toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))?
            }
            None => Settings::default(),
        };
        for setting in SETTINGS {
            if let Some(value) = env(setting.env) {
                (setting.apply)(&mut settings, &value).map_err(|e| ConfigError(format!("{}: {e}", setting.env)))?;
            }
        }
        Ok(settings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("braid.toml");
        std::fs::write(&file, "listen = \"0.0.0.0:9000\"\ncache_mb = 64\n").unwrap();
        let settings = Settings::load(Some(&file), |name| (name == "BRAID_CACHE_MB").then(|| "32".to_owned())).unwrap();
        assert_eq!(settings.listen, "0.0.0.0:9000");
        assert_eq!(settings.cache_mb, 32);
        assert_eq!(settings.page_size, 50);
    }

    #[test]
    fn bad_values_and_unknown_keys_are_reported() {
        let error = Settings::load(None, |name| (name == "BRAID_PAGE_SIZE").then(|| "many".to_owned())).unwrap_err();
        assert!(error.to_string().contains("BRAID_PAGE_SIZE"));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("braid.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        assert!(Settings::load(Some(&file), |_| None).is_err());
    }

    #[test]
    fn the_audit_window_and_the_style_url_are_checked() {
        let load =
            |name: &'static str, value: &'static str| Settings::load(None, move |n| (n == name).then(|| value.into()));
        assert!(load("BRAID_AUDIT_WINDOW_SECS", "0").is_err());
        assert!(load("BRAID_AUDIT_WINDOW_SECS", "61").is_err());
        assert_eq!(load("BRAID_AUDIT_WINDOW_SECS", "60").unwrap().audit_window_secs, 60);
        assert!(load("BRAID_SMART_STYLE_URL", "javascript:alert(1)").is_err());
        assert!(load("BRAID_SMART_STYLE_URL", "https://a.example/x y").is_err());
        let style = load("BRAID_SMART_STYLE_URL", "https://portal.example/style.json").unwrap().smart_style_url;
        assert_eq!(style.as_deref(), Some("https://portal.example/style.json"));
    }

    #[test]
    fn an_empty_encryption_key_file_means_none() {
        let load = |value: &'static str| {
            Settings::load(None, move |n| (n == "BRAID_ENCRYPTION_KEY_FILE").then(|| value.into()))
        };
        assert_eq!(load("/run/secrets/braid.key").unwrap().encryption_key_file, Some("/run/secrets/braid.key".into()));
        assert_eq!(load("").unwrap().encryption_key_file, None);
        assert_eq!(load("  ").unwrap().encryption_key_file, None);
    }

    #[test]
    fn documented_defaults_match_the_real_defaults() {
        let defaults = Settings::default();
        let mut applied = Settings::default();
        for setting in SETTINGS.iter().filter(|s| !s.default.starts_with('(')) {
            (setting.apply)(&mut applied, setting.default).unwrap();
        }
        assert_eq!(applied, defaults);
    }

    #[test]
    fn the_readme_documents_every_setting() {
        let readme = include_str!("../README.md");
        for setting in SETTINGS {
            assert!(readme.contains(setting.env), "README.md does not mention {}", setting.env);
        }
    }
}
