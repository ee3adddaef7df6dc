//! Logging: a tracing subscriber writing JSON lines (or human-readable text), and the request
//! middleware that gives every request an id carried by every log line it produces.
//!
//! Nothing here logs request or response bodies, query strings or headers: they can hold
//! patient data and tokens.

use std::time::Instant;

use actix_web::HttpMessage;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use tracing::Instrument;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

use crate::config::{LogFormat, Settings};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Installs the global subscriber. Call once, before anything logs; later calls are ignored
/// (tests start many servers in one process).
pub fn init(settings: &Settings) {
    let filter = EnvFilter::try_new(&settings.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter).with(DemoteConnectionErrors);
    let _ = match settings.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_current_span(true)
                    .with_span_list(false)
                    .with_writer(std::io::stdout),
            )
            .try_init(),
        LogFormat::Pretty => registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stdout)).try_init(),
    };
}

/// actix-http's HTTP/1 dispatcher logs at ERROR every connection that ends in an error, and
/// nearly all of those are the client's doing: a malformed request head (answered with a bare
/// 400 or 431 before Braid sees the request), a bad `Content-Length`, a dropped connection, a
/// slow request. Any client could fill the error log with them, so they are not written as
/// they are; [`DemoteConnectionErrors`] logs them again at INFO.
fn is_connection_error(metadata: &tracing::Metadata<'_>) -> bool {
    *metadata.level() == tracing::Level::ERROR && metadata.target() == "actix_http::h1::dispatcher"
}

/// Re-logs the events [`is_connection_error`] holds back: at INFO, except actix-http's own
/// internal errors, which stay at ERROR. The messages name the kind of error only (never the
/// URL, headers or body).
struct DemoteConnectionErrors;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for DemoteConnectionErrors {
    /// Drops the ERROR event for every layer and logs its message again at a fitting level.
    fn event_enabled(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) -> bool {
        if !is_connection_error(event.metadata()) {
            return true;
        }
        struct Message(String);
        impl tracing::field::Visit for Message {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                if field.name() == "message" {
                    self.0 = format!("{value:?}");
                }
            }
        }
        let mut message = Message(String::new());
        event.record(&mut message);
        if message.0.contains("internal error") {
            tracing::error!(problem = %message.0, "HTTP connection failed inside actix-http");
        } else {
            tracing::info!(problem = %message.0, "HTTP connection closed: malformed request or network error");
        }
        false
    }
}

/// A request id unique across restarts: a random per-process prefix and a counter. Cheaper
/// than a random UUID per request, which costs a system call on the hot path.
fn new_request_id() -> String {
    static PREFIX: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| uuid::Uuid::new_v4().as_u64_pair().0);
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{:016x}-{count:x}", *PREFIX)
}

/// The id of the request being handled, stored in the request's extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// Wraps each request in a span holding its id (the client's `X-Request-Id` if it is a sane
/// token, otherwise a new UUID), echoes the id in the response, and logs one line at the end.
pub async fn request_span(
    request: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    request.extensions_mut().insert(RequestId(request_id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        path = %request.path(),
    );
    let started = Instant::now();
    let result = next.call(request).instrument(span.clone()).await;
    let _entered = span.enter();
    match result {
        Ok(mut response) => {
            let status = response.status().as_u16();
            let millis = started.elapsed().as_secs_f64() * 1000.0;
            if status >= 500 {
                tracing::error!(status, millis, "request failed");
            } else {
                tracing::info!(status, millis, "request completed");
            }
            if let Ok(value) = HeaderValue::from_str(&request_id) {
                response.headers_mut().insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
            }
            Ok(response)
        }
        Err(error) => {
            // Errors that escape the handlers as actix errors (extractors, middleware) are the
            // client's fault when their status is 4xx: not worth an ERROR line.
            let status = error.as_response_error().status_code().as_u16();
            if status >= 500 {
                tracing::error!(status, error = %error, "request failed");
            } else {
                tracing::info!(status, "request rejected");
            }
            Err(error)
        }
    }
}
