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
    pub max_history_scan: usize,
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
            max_body_bytes: 64 << 20,
            max_json_depth: 100,
            cache_mb: 128,
            writer_max_group: 256,
            page_size: 50,
            max_page_size: 1000,
            workers: 0,
            log_format: LogFormat::Json,
            log_level: "info".into(),
            shutdown_timeout_secs: 30,
            max_history_scan: 10_000,
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
        default: "67108864",
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
        default: "128",
        doc: "Database page cache in MiB; the main part of Braid's memory use.",
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
        key: "max_history_scan",
        env: "BRAID_MAX_HISTORY_SCAN",
        default: "10000",
        doc: "Most history entries one page of an _at history examines; a page that reaches it is shorter and links to the next.",
        apply: |s, v| parse_into(&mut s.max_history_scan, v),
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
