//! The public keys of clients registered with a JWKS URL (`braid client add --jwks-url`),
//! fetched when needed and cached.
//!
//! A cached set is used for an hour. An assertion naming a `kid` the cached set lacks (the
//! client rotated its keys) fetches the set again, but such refetches happen at most once every
//! five minutes per URL, so that assertions with made-up `kid`s cannot make Braid fetch without
//! end. When a fetch fails, a set fetched earlier is used until it is a day old, and the URL is
//! not tried again for five minutes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;

use super::TokenError;
use super::clients::{MAX_JWKS_BYTES, parse_client_jwks};
use crate::fhir::FhirError;

/// How long a fetched set is used without fetching again.
const FRESH_FOR: Duration = Duration::from_secs(3600);

/// Least time between two fetches of one URL.
const MIN_REFETCH: Duration = Duration::from_secs(300);

/// How long a set may stand in for fetches that fail.
const STALE_LIMIT: Duration = Duration::from_secs(24 * 3600);

/// How long one fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Most URLs cached (one per client registered by URL).
const MAX_URLS: usize = 10_000;

struct Cached {
    keys: Option<Arc<JwkSet>>,
    /// When `keys` were fetched.
    fetched: Instant,
    /// The last fetch tried, successful or not.
    last_attempt: Instant,
    /// The last fetch made because an assertion named a `kid` the cached set lacks.
    last_unknown_kid: Option<Instant>,
}

pub struct ClientKeys {
    http: reqwest::Client,
    cache: Mutex<HashMap<String, Cached>>,
}

impl ClientKeys {
    pub fn new() -> Result<ClientKeys, FhirError> {
        let http = crate::outbound::client(
            reqwest::Client::builder().timeout(FETCH_TIMEOUT).redirect(reqwest::redirect::Policy::none()),
        )
        .map_err(|error| {
            tracing::error!(%error, "cannot build the HTTP client for client JWKS URLs");
            FhirError::fault("jwks client")
        })?;
        Ok(ClientKeys { http, cache: Mutex::new(HashMap::new()) })
    }

    /// The keys at `url`, fresh enough to hold `kid` if the client published it.
    pub async fn get(&self, url: &str, kid: Option<&str>) -> Result<Arc<JwkSet>, TokenError> {
        let now = Instant::now();
        let mut for_unknown_kid = false;
        {
            let cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(entry) = cache.get(url) {
                let tried_lately = now.duration_since(entry.last_attempt) < MIN_REFETCH;
                match &entry.keys {
                    Some(keys) => {
                        let fresh = now.duration_since(entry.fetched) < FRESH_FOR;
                        let has_kid = kid.is_none_or(|kid| keys.find(kid).is_some());
                        let refetched_lately =
                            entry.last_unknown_kid.is_some_and(|at| now.duration_since(at) < MIN_REFETCH);
                        // Fresh and complete; or the kid is unknown but the set was refetched
                        // for one lately; or stale, but a fetch failed lately.
                        if (fresh && (has_kid || refetched_lately)) || (!fresh && tried_lately) {
                            return Ok(keys.clone());
                        }
                        for_unknown_kid = fresh;
                    }
                    None if tried_lately => {
                        return Err(TokenError::invalid_client(
                            "the client's JWKS URL could not be read; it is tried again in a few minutes",
                        ));
                    }
                    None => {}
                }
            }
        }
        let fetched = self.fetch(url).await;
        let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= MAX_URLS && !cache.contains_key(url) {
            cache.clear();
        }
        let entry = cache.entry(url.to_owned()).or_insert(Cached {
            keys: None,
            fetched: now,
            last_attempt: now,
            last_unknown_kid: None,
        });
        entry.last_attempt = now;
        if for_unknown_kid {
            entry.last_unknown_kid = Some(now);
        }
        match fetched {
            Ok(keys) => {
                let keys = Arc::new(keys);
                entry.keys = Some(keys.clone());
                entry.fetched = now;
                Ok(keys)
            }
            Err(reason) => {
                tracing::warn!(url, %reason, "cannot fetch a client's JWKS");
                match &entry.keys {
                    Some(keys) if now.duration_since(entry.fetched) < STALE_LIMIT => Ok(keys.clone()),
                    _ => Err(TokenError::invalid_client(format!("the client's JWKS URL could not be read: {reason}"))),
                }
            }
        }
    }

    async fn fetch(&self, url: &str) -> Result<JwkSet, String> {
        let mut response = self.http.get(url).send().await.map_err(|error| error.without_url().to_string())?;
        if !response.status().is_success() {
            return Err(format!("it answered {}", response.status()));
        }
        let body = crate::outbound::read_capped(&mut response, MAX_JWKS_BYTES).await.map_err(|error| match error {
            crate::outbound::ReadError::TooLarge => format!("the JWKS is larger than {MAX_JWKS_BYTES} bytes"),
            crate::outbound::ReadError::Failed(reason) => reason,
        })?;
        let text = String::from_utf8(body).map_err(|_| "the JWKS is not UTF-8".to_owned())?;
        parse_client_jwks(&text).map_err(|error| {
            error.issues.first().map_or_else(|| "the JWKS is not valid".to_owned(), |issue| issue.diagnostics.clone())
        })
    }
}
