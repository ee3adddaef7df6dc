//! Wiring: opens the store, builds the app state and the routes, binds the listener. The only
//! module that knows every other one.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};

use crate::auth::AuthState;
use crate::config::{AuthMode, Settings};
use crate::http::{self, AppState, Limits};
use crate::search::SearchIndexer;
use crate::store::{Store, StoreError, StoreOptions};
use crate::telemetry;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open the database at {path}: {source}")]
    Store { path: String, source: StoreError },
    #[error("cannot listen on {address}: {source}")]
    Listen { address: String, source: std::io::Error },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("HTTPS needs both a certificate (tls_cert, --tls-cert) and its private key (tls_key, --tls-key)")]
    TlsIncomplete,
    #[error("cannot prepare the authorization server (its signing keys): {0}")]
    Auth(crate::fhir::FhirError),
    #[error("cannot load the Bulk Data export jobs: {0}")]
    Exports(crate::fhir::FhirError),
    #[error("cannot prepare the upload spool directory next to {path}: {source}")]
    Spool { path: String, source: std::io::Error },
    #[error(
        "auth is off, but Braid would listen on {0}, which is not a loopback address: anyone who can reach it could \
         read and change every record. Turn auth on, or listen on 127.0.0.1 or [::1]"
    )]
    AuthOffNotLoopback(String),
    #[error("appointment reminders: {0}")]
    Reminders(String),
    #[error("the encryption key: {0}")]
    EncryptionKey(#[from] crate::crypt::CryptError),
}

/// A bound, not yet running server.
pub struct Application {
    port: u16,
    https: bool,
    server: Server,
    /// The operator's socket (see [`crate::auth::admin`]) and its path.
    admin: Option<(Server, std::path::PathBuf)>,
    store: Store,
    /// Their counters are flushed once more at shutdown, and running pulls stopped.
    sources: Arc<crate::sources::Registry>,
    /// Running exports are stopped at shutdown.
    exports: Arc<crate::sources::export::Exports>,
    /// Its worker is stopped at shutdown.
    mpi: Arc<crate::mpi::service::Mpi>,
    /// The appointment reminders' passes (none when reminders are off); stopped at shutdown.
    reminders: Option<tokio::task::JoinHandle<()>>,
    shutdown_timeout: Duration,
    /// The process Braid must stay the child of (`parent_pid`), if any.
    parent_pid: Option<u32>,
}

impl Application {
    /// Opens the database and binds the listener (port 0 picks a free port; see [`port`]).
    ///
    /// [`port`]: Application::port
    pub async fn build(settings: &Settings) -> Result<Application, StartupError> {
        let options = StoreOptions {
            cache_bytes: settings.cache_mb << 20,
            max_group: settings.writer_max_group,
            cursor_ttl: Duration::from_secs(settings.cursor_ttl_secs),
            gc_interval: Duration::from_secs(settings.gc_interval_secs),
            conditional_delete_max: settings.conditional_delete_max,
            quick_repair: settings.quick_repair,
            body_cache_bytes: settings.body_cache_mb << 20,
            encryption_key: crate::crypt::KeyFile::load_setting(settings.encryption_key_file.as_deref())?,
            ..StoreOptions::default()
        };
        let unsupported = crate::search::registry::registry().unsupported();
        if !unsupported.is_empty() {
            let list: Vec<String> = unsupported.iter().map(|u| format!("{} ({})", u.code, u.base)).collect();
            tracing::warn!(count = unsupported.len(), parameters = %list.join(", "), "search parameters that cannot be evaluated");
        }
        if settings.auth == AuthMode::Off && !is_loopback(&settings.listen) {
            return Err(StartupError::AuthOffNotLoopback(settings.listen.clone()));
        }
        // Checked before the database is opened: a bad certificate is the operator's to fix first.
        let tls = match (&settings.tls_cert, &settings.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
            (None, None) => None,
            _ => return Err(StartupError::TlsIncomplete),
        };
        let store = Store::open(&settings.data, options, Arc::new(SearchIndexer))
            .map_err(|source| StartupError::Store { path: settings.data.display().to_string(), source })?;
        let listener = TcpListener::bind(&settings.listen)
            .map_err(|source| StartupError::Listen { address: settings.listen.clone(), source })?;
        let port = listener
            .local_addr()
            .map_err(|source| StartupError::Listen { address: settings.listen.clone(), source })?
            .port();
        let auth = match settings.auth {
            AuthMode::On => Some(Arc::new(
                AuthState::start(
                    store.clone(),
                    crate::auth::AuthConfig {
                        backend_token_secs: settings.backend_token_secs,
                        access_token_secs: settings.access_token_secs,
                        totp: settings.totp,
                        smart_style_url: settings.smart_style_url.clone(),
                        base_url: settings.base_url.clone(),
                    },
                )
                .await
                .map_err(StartupError::Auth)?,
            )),
            AuthMode::Off => {
                tracing::warn!("authorization is off: every request is allowed (listening on loopback only)");
                None
            }
        };
        if let Some(auth) = &auth {
            start_sweeper(Arc::downgrade(auth));
        }
        let sources = Arc::new(
            crate::sources::Registry::load(&store)
                .map_err(|source| StartupError::Store { path: settings.data.display().to_string(), source })?,
        );
        start_source_flusher(Arc::downgrade(&sources));
        start_pullers(&sources);
        let mpi = crate::mpi::service::Mpi::open(&store, settings.mpi_auto_train)
            .map_err(|source| StartupError::Store { path: settings.data.display().to_string(), source })?;
        crate::mpi::service::start_worker(Arc::downgrade(&mpi));
        let reminders = start_reminders(settings, &store, &mpi)?;
        let socket = crate::auth::admin::socket_path(&settings.data);
        let admin = match http::admin::serve(&socket, store.clone(), auth.clone(), sources.clone(), mpi.clone()) {
            Ok(server) => Some((server, socket)),
            Err(error) => {
                // Not fatal: the operator can still manage clients with the server stopped.
                tracing::warn!(%error, socket = %socket.display(), "cannot open the operator socket; client management needs the server stopped");
                None
            }
        };
        let exports = Arc::new(
            crate::sources::export::Exports::open(&store, &settings.data, settings.export_retention_secs)
                .await
                .map_err(StartupError::Exports)?,
        );
        start_export_sweeper(Arc::downgrade(&exports));
        let imports = http::ingest::Imports::open(&settings.data, store.data_key().cloned())
            .map_err(|source| StartupError::Spool { path: settings.data.display().to_string(), source })?;
        let stopping_exports = exports.clone();
        let audit = (auth.is_some() && settings.audit).then(|| {
            crate::auth::audit::AuditSink::start(store.clone(), Duration::from_secs(settings.audit_window_secs))
        });
        let state = web::Data::new(AppState {
            store: store.clone(),
            limits: Limits::from_settings(settings),
            base_url: settings.base_url.clone(),
            trust_forwarded_headers: settings.trust_forwarded_headers,
            auth,
            audit,
            sources: sources.clone(),
            exports,
            mpi: mpi.clone(),
            imports,
        });
        let mut server = HttpServer::new(move || {
            App::new()
                .wrap(from_fn(telemetry::request_span))
                .app_data(state.clone())
                .configure(http::configure)
                .configure(crate::portal::configure)
        })
        .shutdown_timeout(settings.shutdown_timeout_secs)
        // Every connection is bounded in time (head, body via `Limits`, idle keep-alive) and in
        // number: a client holding connections open cannot starve the others for long.
        .client_request_timeout(Duration::from_secs(settings.request_head_timeout_secs))
        .keep_alive(Duration::from_secs(settings.keep_alive_secs))
        .max_connections(settings.max_connections.max(1));
        if settings.workers > 0 {
            server = server.workers(settings.workers);
        }
        let https = tls.is_some();
        let server = match tls {
            Some(config) => {
                tracing::info!("serving HTTPS: TLS 1.2 and 1.3, HTTP/1.1 and HTTP/2");
                server.listen_rustls_0_23(listener, config)
            }
            None => {
                tracing::info!("serving plain HTTP (no tls_cert and tls_key): put a TLS proxy in front or set them");
                server.listen(listener)
            }
        }
        .map_err(|source| StartupError::Listen { address: settings.listen.clone(), source })?
        .run();
        let shutdown_timeout = Duration::from_secs(settings.shutdown_timeout_secs);
        Ok(Application {
            port,
            https,
            server,
            admin,
            store,
            sources,
            exports: stopping_exports,
            mpi,
            reminders,
            shutdown_timeout,
            parent_pid: settings.parent_pid,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the listener speaks HTTPS (see [`crate::tls`]).
    pub fn serves_https(&self) -> bool {
        self.https
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The upstream systems (sources) the server knows.
    pub fn sources(&self) -> &Arc<crate::sources::Registry> {
        &self.sources
    }

    /// The master patient index the server runs.
    pub fn mpi(&self) -> &Arc<crate::mpi::service::Mpi> {
        &self.mpi
    }

    /// Serves until SIGINT or SIGTERM, lets in-flight requests finish, then waits for the writer
    /// to close the database cleanly (so the next start needs no recovery).
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let Application {
            server, admin, store, sources, exports, mpi, reminders, shutdown_timeout, parent_pid, ..
        } = self;
        if let Some(parent) = parent_pid {
            stop_when_orphaned(parent, server.handle());
        }
        let result = match admin {
            Some((admin, socket)) => {
                let handle = admin.handle();
                let admin = tokio::spawn(admin);
                let result = server.await;
                handle.stop(true).await;
                let _ = admin.await;
                let _ = std::fs::remove_file(socket);
                result
            }
            None => server.await,
        };
        if let Some(reminders) = reminders {
            // A pass stopped midway loses nothing: each reminder's state is in its own write.
            reminders.abort();
            let _ = reminders.await;
        }
        // Pulls and exports let go of the store at their next step.
        sources.stop();
        exports.stop();
        mpi.stop();
        drop(exports);
        drop(mpi);
        if let Err(error) = sources.flush().await {
            tracing::warn!(%error, "the sources' last counts could not be stored");
        }
        drop(sources);
        let writer_done = store.writer_finished();
        drop(store);
        let deadline = Instant::now() + shutdown_timeout;
        while !writer_done() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if writer_done() {
            tracing::info!("database closed cleanly");
        } else {
            tracing::warn!("the writer did not stop in time; the next start will check the database");
        }
        result
    }
}

/// How often Braid looks whether the process that started it is still its parent.
const PARENT_CHECK: Duration = Duration::from_millis(500);

/// Stops the server (gracefully, as SIGTERM does) once `parent` is no longer this process's
/// parent: it exited or was killed, and Braid was handed to another (init, or a subreaper).
/// Also when it is not the parent from the start (it was gone before Braid looked).
fn stop_when_orphaned(parent: u32, server: actix_web::dev::ServerHandle) {
    tokio::spawn(async move {
        while std::os::unix::process::parent_id() == parent {
            tokio::time::sleep(PARENT_CHECK).await;
        }
        tracing::warn!(parent, "the process that started Braid is gone; stopping");
        server.stop(true).await;
    });
}

/// Runs `work` on `target` every `period` (the first time after `first`), each run awaited
/// before the next, until `target` is gone (the server stopped).
fn every<T, F, Fut>(period: Duration, first: Duration, target: std::sync::Weak<T>, work: F)
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
        loop {
            interval.tick().await;
            let Some(target) = target.upgrade() else { break };
            work(target).await;
        }
    });
}

/// How often expired single-use records (assertion `jti`s) and retired keys are deleted.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// Sweeps the authorization records every [`SWEEP_INTERVAL`] until the server is gone.
fn start_sweeper(auth: std::sync::Weak<AuthState>) {
    every(SWEEP_INTERVAL, Duration::ZERO, auth, |auth| async move {
        if let Err(error) = auth.sweep().await {
            tracing::warn!(%error, "sweeping expired authorization records failed");
        }
    });
}

/// How often expired exports are deleted.
const EXPORT_SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Deletes expired exports every [`EXPORT_SWEEP_INTERVAL`] until the server is gone (the first
/// sweep is one interval in: opening the exports has just swept).
fn start_export_sweeper(exports: std::sync::Weak<crate::sources::export::Exports>) {
    every(EXPORT_SWEEP_INTERVAL, EXPORT_SWEEP_INTERVAL, exports, |exports| async move {
        if let Err(error) = exports.sweep().await {
            tracing::warn!(%error, "deleting expired exports failed");
        }
    });
}

/// Runs the pulls that are due, each on its own task, until the server is gone: first those a
/// stop interrupted (the first look is at once), then the scheduled ones.
fn start_pullers(sources: &Arc<crate::sources::Registry>) {
    // The schedule is looked at every few seconds, so a source added or removed while Braid
    // runs is followed at once; a pull that is due starts on its own task. One look decides for
    // every source, so an interrupted run is resumed once.
    every(SCHEDULE_INTERVAL, Duration::ZERO, Arc::downgrade(sources), |sources| async move {
        for name in sources.due_pulls(crate::auth::now_secs()) {
            let weak = Arc::downgrade(&sources);
            tokio::spawn(async move {
                let Some(sources) = weak.upgrade() else { return };
                if let Err(error) = sources.sync(&name).await {
                    tracing::warn!(source = name, %error, "a scheduled pull failed");
                }
            });
        }
    });
}

/// How often the pull schedule is looked at.
const SCHEDULE_INTERVAL: Duration = Duration::from_secs(15);

/// How often the sources' counters are added to their stored records.
const SOURCE_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// Flushes the sources' counters every [`SOURCE_FLUSH_INTERVAL`] until the server is gone.
fn start_source_flusher(sources: std::sync::Weak<crate::sources::Registry>) {
    every(SOURCE_FLUSH_INTERVAL, Duration::ZERO, sources, |sources| async move {
        if let Err(error) = sources.flush().await {
            tracing::warn!(%error, "storing the sources' counts failed; they are kept for the next try");
        }
    });
}

/// Whether `listen` (`host:port`) names a loopback address (`localhost` resolves to one).
fn is_loopback(listen: &str) -> bool {
    let host = listen.rsplit_once(':').map_or(listen, |(host, _)| host);
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Starts the appointment reminders' passes, unless no lead time is set. The settings may come
/// from a file, which is not checked as it is read: a wrong lead time or SMTP URL stops the start.
fn start_reminders(
    settings: &Settings,
    store: &Store,
    mpi: &Arc<crate::mpi::service::Mpi>,
) -> Result<Option<tokio::task::JoinHandle<()>>, StartupError> {
    let lead_times =
        crate::reminders::parse_lead_times(&settings.reminder_lead_times).map_err(StartupError::Reminders)?;
    if lead_times.is_empty() {
        return Ok(None);
    }
    let mailer = match &settings.smtp_url {
        Some(url) => Some(Arc::new(
            crate::reminders::mail::Mailer::new(url, &settings.smtp_from).map_err(StartupError::Reminders)?,
        )),
        None => None,
    };
    let portal_url = settings.base_url.as_deref().map(|base| {
        format!("{}{}", crate::auth::Endpoints::for_base(base).origin(), crate::auth::clients::PORTAL_PATH)
    });
    let reminders = crate::reminders::Reminders::new(
        store.clone(),
        crate::reminders::Settings { lead_times, mailer, portal_url },
        Some(mpi.clone()),
    );
    Ok(Some(Arc::new(reminders).start(Duration::from_secs(settings.reminder_interval_secs.max(1)))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_addresses_are_loopback() {
        for listen in ["127.0.0.1:8080", "[::1]:80", "localhost:1", "127.1.2.3:0"] {
            assert!(is_loopback(listen), "{listen}");
        }
        for listen in ["0.0.0.0:8080", "[::]:80", "10.0.0.5:1", "example.org:80", "127.0.0.1.evil:1"] {
            assert!(!is_loopback(listen), "{listen}");
        }
    }
}
