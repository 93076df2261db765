//! The HTTP side of `watch`: a signed webhook that turns requests into events, and the
//! endpoints that report on a watching stack.
//!
//! | route | answer |
//! | --- | --- |
//! | `POST /events` | the webhook (see below); 404 when it is not configured |
//! | `GET /healthz` | `ok` |
//! | `GET /metrics` | the [`Metrics`](cairn_sdk::events::Metrics) in Prometheus' text format |
//! | `GET /status` | the [`Status`] document as JSON, with the replica's `role` (`leader` or `standby`) |
//!
//! # The webhook
//!
//! A request carries the event in Cairn's envelope ([`Envelope`], the same rules as the
//! SQS source's): `{"kind": "traffic.spike", "payload": {...}, "id": "..."}` (`payload`
//! must be an object and defaults to `{}`; `id` and `time_ms` are optional; nothing
//! else), and two headers:
//!
//! - `X-Cairn-Timestamp`: the Unix time in seconds at which it was signed;
//! - `X-Cairn-Signature`: `v1=` and the lowercase hex of HMAC-SHA256 with the shared
//!   secret over `<timestamp>.<body>`, as [`sign`] computes it.
//!
//! A request is refused, changing nothing and counted in
//! `cairn_requests_refused_total{source="webhook",reason=...}`, when a header is missing
//! (401, `missing_signature`), the signature does not match (401, `bad_signature`), the
//! timestamp is more than the window away from the server's clock either way (401,
//! `stale_timestamp`), the body is larger than the limit (413, `too_large`), or the body
//! is not such an event (400, `malformed`). Each refusal answers
//! `{"error": <reason>, "message": <what was wrong and how to fix it>}`.
//!
//! An accepted request is submitted to the reconciler and answered once the event is
//! durably recorded: 200 with `{"id", "outcome": "accepted" | "duplicate" | "rejected",
//! "reason"}`. Without an `id` the event's id is derived from the signature, so an
//! identical request replayed within the window is a duplicate and is not applied twice;
//! a sender that retries with a fresh timestamp should send an `id`. When the reconciler
//! stopped before recording the event the answer is 503 with `Retry-After`: send it again.
//!
//! # Limits
//!
//! [`HttpLimits`] bound the server: a request not answered within `request_timeout`
//! (30 s by default) gets 408 Request Timeout, whatever it was waiting for (a body sent
//! slowly, or the webhook waiting for its event to be recorded behind a long apply: the
//! event stays queued, and sent again with the same `id` it is a duplicate if it was
//! recorded meanwhile). At most `max_webhook_requests` (64) webhook requests are handled
//! at once; one more is refused at once with 503 `overloaded` and `Retry-After: 1`,
//! counted like the other refusals. A standby replica (`watch --standby` while another
//! process leads the stack) refuses every signed webhook call with 503 `standby` and
//! `Retry-After: 1`, naming the leader. The body limit is the webhook's `max_body`: a body
//! is read only up to it, then refused with 413. `/status` shows who holds the lock, never
//! its token.
//!
//! ```
//! let signature = cairn::serve::sign(b"s3cr3t", 1_700_000_000, br#"{"kind":"traffic.spike"}"#);
//! assert!(signature.starts_with("v1=") && signature.len() == 3 + 64);
//! ```

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cairn_sdk::events::{Envelope, Event, Events, Outcome, Status};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::ServiceBuilder;
use tower_http::timeout::TimeoutLayer;

/// The header with the Unix time, in seconds, at which a webhook request was signed.
pub const TIMESTAMP_HEADER: &str = "x-cairn-timestamp";
/// The header with a webhook request's signature, `v1=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-cairn-signature";

/// How the webhook checks requests: the shared secret, how far a request's timestamp may
/// be from the server's clock, and the largest body it reads.
///
/// ```
/// use std::time::Duration;
/// let config = cairn::serve::WebhookConfig::new("s3cr3t").window(Duration::from_secs(60)).max_body(64 * 1024);
/// assert_eq!(config.max_body, 64 * 1024);
/// ```
#[derive(Clone)]
pub struct WebhookConfig {
    secret: Vec<u8>,
    /// A request whose timestamp is further than this from now, either way, is refused
    /// (default 5 minutes).
    pub window: Duration,
    /// The largest body read, in bytes (default 256 KiB).
    pub max_body: usize,
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("secret", &"<redacted>")
            .field("window", &self.window)
            .field("max_body", &self.max_body)
            .finish()
    }
}

impl WebhookConfig {
    /// The default replay window: 5 minutes.
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(5 * 60);
    /// The default body limit: 256 KiB.
    pub const DEFAULT_MAX_BODY: usize = 256 * 1024;

    /// Requests signed with `secret` (a string or bytes), with the default window and
    /// body limit.
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        WebhookConfig { secret: secret.as_ref().to_vec(), window: Self::DEFAULT_WINDOW, max_body: Self::DEFAULT_MAX_BODY }
    }

    /// With this replay window.
    #[must_use]
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// With this body limit, in bytes.
    #[must_use]
    pub fn max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }
}

fn mac(secret: &[u8], timestamp: u64, body: &[u8]) -> Hmac<Sha256> {
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        unreachable!("HMAC takes keys of any length")
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The signature of a webhook request: `v1=` followed by the lowercase hex of
/// HMAC-SHA256 keyed with `secret` over `<timestamp>.<body>` (the timestamp in decimal
/// Unix seconds, as sent in `X-Cairn-Timestamp`).
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    format!("v1={}", hex::encode(mac(secret, timestamp, body).finalize().into_bytes()))
}

/// Whether `signature` (`v1=<hex>`) signs `timestamp` and `body`, compared in constant time.
fn verify(secret: &[u8], timestamp: u64, body: &[u8], signature: &str) -> bool {
    let Some(tag) = signature.trim().strip_prefix("v1=").and_then(|h| hex::decode(h).ok()) else {
        return false;
    };
    mac(secret, timestamp, body).verify_slice(&tag).is_ok()
}

/// Bounds on `watch`'s HTTP server (see the [module](self) documentation).
///
/// ```
/// use std::time::Duration;
/// let limits = cairn::serve::HttpLimits::default().request_timeout(Duration::from_secs(10)).max_webhook_requests(16);
/// assert_eq!(limits.max_webhook_requests, 16);
/// ```
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// A request not answered within this gets 408 Request Timeout (default 30 s).
    pub request_timeout: Duration,
    /// Webhook requests handled at once (default 64); more are refused with 503.
    pub max_webhook_requests: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits { request_timeout: Self::DEFAULT_REQUEST_TIMEOUT, max_webhook_requests: Self::DEFAULT_MAX_WEBHOOK_REQUESTS }
    }
}

impl HttpLimits {
    /// The default request timeout: 30 s.
    pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    /// The default number of webhook requests handled at once: 64.
    pub const DEFAULT_MAX_WEBHOOK_REQUESTS: usize = 64;

    /// With this request timeout.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// With at most `n` webhook requests at once (at least 1).
    #[must_use]
    pub fn max_webhook_requests(mut self, n: usize) -> Self {
        self.max_webhook_requests = n.max(1);
        self
    }
}

#[derive(Clone)]
struct App {
    events: Events,
    status: Arc<Mutex<Status>>,
    webhook: Option<Arc<WebhookConfig>>,
}

/// The HTTP routes of a watching stack (see the [module](self) documentation): the
/// webhook submits to `events` when `webhook` is configured; `/metrics` renders
/// `events.metrics()`; `/status` serves `status`. With the default [`HttpLimits`].
pub fn router(events: Events, status: Arc<Mutex<Status>>, webhook: Option<WebhookConfig>) -> Router {
    router_with_limits(events, status, webhook, HttpLimits::default())
}

/// [`router`] with these limits.
pub fn router_with_limits(events: Events, status: Arc<Mutex<Status>>, webhook: Option<WebhookConfig>, limits: HttpLimits) -> Router {
    let limit = webhook.as_ref().map_or(WebhookConfig::DEFAULT_MAX_BODY, |w| w.max_body);
    let metrics = events.metrics().clone();
    let app = App { events, status, webhook: webhook.map(Arc::new) };
    // Only the webhook is limited: it holds a body and waits for the reconciler, while
    // the reporting routes answer from memory at once, and /healthz must keep answering
    // in a burst of webhook requests.
    let overloaded = HandleErrorLayer::new(move |_: tower::BoxError| {
        let metrics = metrics.clone();
        async move {
            metrics.refused("webhook", "overloaded");
            let message = "too many webhook requests are being handled at once: send it again shortly";
            (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "1")], Json(json!({"error": "overloaded", "message": message})))
        }
    });
    let webhook_limits = ServiceBuilder::new()
        .layer(overloaded)
        .layer(LoadShedLayer::new())
        .layer(GlobalConcurrencyLimitLayer::new(limits.max_webhook_requests.max(1)));
    Router::new()
        .route("/events", post(receive).layer::<_, std::convert::Infallible>(DefaultBodyLimit::max(limit)).layer(webhook_limits))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(serve_metrics))
        .route("/status", get(serve_status))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout))
        .with_state(app)
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting
/// connections and waits for the requests in flight.
pub async fn serve(listener: tokio::net::TcpListener, router: Router, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown).await
}

async fn serve_metrics(State(app): State<App>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], app.events.metrics().render())
}

async fn serve_status(State(app): State<App>) -> Json<Status> {
    Json(status_of(&app.status, &app.events))
}

/// The status document as `/status` serves it: current, without the lock's token.
pub(crate) fn status_of(status: &Mutex<Status>, events: &Events) -> Status {
    let mut status = status.lock().unwrap_or_else(PoisonError::into_inner).clone();
    status.pending_events = events.metrics().pending();
    status.lock_holder = status.lock_holder.map(redact_lock);
    status
}

/// The lock holder as `/status` shows it: without the lock's token, which is what a
/// holder proves it holds the lock with (a forced unlock, a write).
pub(crate) fn redact_lock(mut holder: Value) -> Value {
    if let Some(fields) = holder.as_object_mut() {
        fields.remove("token");
    }
    holder
}

/// A request the webhook refuses before it becomes an event.
struct Refusal {
    status: StatusCode,
    reason: &'static str,
    message: String,
}

fn refuse(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Refusal {
    Refusal { status, reason, message: message.into() }
}

fn unauthorized(reason: &'static str, message: impl Into<String>) -> Refusal {
    refuse(StatusCode::UNAUTHORIZED, reason, message)
}

fn malformed(message: impl Into<String>) -> Refusal {
    refuse(StatusCode::BAD_REQUEST, "malformed", message)
}

async fn receive(State(app): State<App>, request: Request) -> Response {
    let Some(config) = app.webhook.clone() else {
        let message = "the webhook is not configured: set CAIRN_WEBHOOK_SECRET to the shared secret and restart `watch`";
        return (StatusCode::NOT_FOUND, Json(json!({"error": "webhook_not_configured", "message": message}))).into_response();
    };
    let event = match check(&config, request).await {
        Ok(event) => event,
        Err(refusal) => {
            app.events.metrics().refused("webhook", refusal.reason);
            let body = json!({"error": refusal.reason, "message": refusal.message});
            return (refusal.status, Json(body)).into_response();
        }
    };
    // After the signature check: only a caller with the secret learns who leads.
    if let Some(refusal) = standing_by(&app) {
        app.events.metrics().refused("webhook", refusal.reason);
        let body = json!({"error": refusal.reason, "message": refusal.message});
        return (refusal.status, [(header::RETRY_AFTER, "1")], Json(body)).into_response();
    }
    let id = event.id.clone();
    let outcome = match app.events.submit(event).await {
        Ok(receipt) => receipt.recorded().await,
        Err(closed) => Err(closed),
    };
    match outcome {
        Ok(outcome) => {
            let (label, reason) = match outcome {
                Outcome::Accepted => ("accepted", Value::Null),
                Outcome::Duplicate => ("duplicate", Value::Null),
                Outcome::Rejected(why) => ("rejected", Value::from(why.to_string())),
            };
            Json(json!({"id": id, "outcome": label, "reason": reason})).into_response()
        }
        Err(closed) => {
            let body = json!({"error": "unavailable", "message": format!("{closed}: retry the same request later")});
            (StatusCode::SERVICE_UNAVAILABLE, [(header::RETRY_AFTER, "5")], Json(body)).into_response()
        }
    }
}

/// The refusal of a webhook call to a standby replica: it consumes no event, so the
/// sender (or the load balancer in front of the replicas) must reach the leader.
fn standing_by(app: &App) -> Option<Refusal> {
    let status = app.status.lock().unwrap_or_else(PoisonError::into_inner);
    if status.role != cairn_sdk::events::Role::Standby {
        return None;
    }
    let leader = status.lock_holder.as_ref().map_or_else(
        || "another replica".to_owned(),
        |h| format!("{}@{} (pid {})", h["user"].as_str().unwrap_or("?"), h["host"].as_str().unwrap_or("?"), h["pid"]),
    );
    let message = format!("this replica is a standby for stack '{}': {leader} leads it. Send the event to the leader, or again shortly (a standby takes over within a lease of the leader's death)", status.stack);
    Some(refuse(StatusCode::SERVICE_UNAVAILABLE, "standby", message))
}

/// Checks a webhook request's headers, size, signature, timestamp and body, in that
/// order, and makes the event it carries.
async fn check(config: &WebhookConfig, request: Request) -> Result<Event, Refusal> {
    let headers = request.headers();
    let (Some(timestamp), Some(signature)) = (headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER)) else {
        let missing = if headers.contains_key(TIMESTAMP_HEADER) { "X-Cairn-Signature" } else { "X-Cairn-Timestamp" };
        return Err(unauthorized(
            "missing_signature",
            format!(
                "the {missing} header is missing: send X-Cairn-Timestamp (Unix seconds) and X-Cairn-Signature \
                 (v1=<lowercase hex of HMAC-SHA256(secret, \"<timestamp>.<body>\")>)"
            ),
        ));
    };
    let Some(timestamp) = timestamp.to_str().ok().and_then(|t| t.trim().parse::<u64>().ok()) else {
        return Err(unauthorized("bad_signature", "X-Cairn-Timestamp must be the Unix time in seconds, in decimal digits"));
    };
    let signature = signature.to_str().unwrap_or_default().to_owned();
    if content_length(request.headers()).is_some_and(|n| n > config.max_body) {
        return Err(too_large(config));
    }
    let body = match Bytes::from_request(request, &()).await {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => return Err(too_large(config)),
        Err(rejection) => return Err(malformed(format!("the body could not be read ({rejection}): send it again"))),
    };
    if !verify(&config.secret, timestamp, &body, &signature) {
        return Err(unauthorized(
            "bad_signature",
            "X-Cairn-Signature does not match: sign exactly the bytes sent, as v1=<lowercase hex of \
             HMAC-SHA256(secret, \"<timestamp>.<body>\")> with the timestamp of X-Cairn-Timestamp and the shared secret",
        ));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if now.abs_diff(timestamp) > config.window.as_secs() {
        return Err(unauthorized(
            "stale_timestamp",
            format!(
                "X-Cairn-Timestamp is {} s from the server's clock, more than the {} s allowed: sign each request \
                 with the current time (and check the sender's clock)",
                now.abs_diff(timestamp),
                config.window.as_secs()
            ),
        ));
    }
    let envelope = Envelope::from_json(&body).map_err(|e| malformed(e.to_string()))?;
    // Without an id of its own: the signature covers the timestamp and the body, so a
    // replay of the same request gets the same id, and the reconciler skips it.
    let id = || format!("webhook-{}", signature.trim().trim_start_matches("v1=").to_ascii_lowercase());
    Ok(envelope.into_event("webhook", id, Some(timestamp.saturating_mul(1000))))
}

fn content_length(headers: &HeaderMap) -> Option<usize> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn too_large(config: &WebhookConfig) -> Refusal {
    refuse(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the body is larger than {} bytes: send a smaller payload", config.max_body),
    )
}
