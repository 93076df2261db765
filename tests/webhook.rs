//! The HTTP side of `watch`, driven in-process: every way the webhook refuses a request
//! (and that a refusal changes nothing and is counted), accepted and replayed requests,
//! and the reporting endpoints.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{to_bytes, Body};
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::Router;
use cairn::serve::{router_with_limits, sign, HttpLimits, WebhookConfig};
use cairn_sdk::events::{Event, Events, Reconciler, ReconcilerOptions, Status};
use cairn_sdk::testing::{Op, TestProvider};
use cairn_sdk::{DynamicResource, Property, ResourceType, Session, Stack};
use cairn_state::{MemoryStore, Store};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tower::ServiceExt;

const SECRET: &str = "s3cr3t";
const SIX_MINUTES: u64 = 6 * 60;

static GROUP: ResourceType = ResourceType::new("test:compute:Group", &[Property::input("desired").required(), Property::output("id")]);

/// The user state: a capacity, and how many times a handler changed it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Scale {
    capacity: u32,
    handled: u32,
}

fn stack(provider: &TestProvider) -> Stack<Scale> {
    Stack::<Scale>::new("dev")
        .program(|cx, s: &Scale| {
            cx.add(DynamicResource::new(&GROUP, "web").set::<u32>("desired", s.capacity));
            Ok(())
        })
        .provider(provider.clone())
        .on_event("traffic.spike", |e: &Event, s: &mut Scale| {
            s.capacity = e.field("capacity")?;
            s.handled += 1;
            Ok(())
        })
        // Takes `secs` seconds (of tokio's clock) to decide: the reconciler is busy meanwhile.
        .on_event_async("traffic.slow", |e: &Event, s: &mut Scale| {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_secs(e.field("secs")?)).await;
                s.handled += 1;
                Ok(())
            })
        })
}

/// A deployed stack watched by a reconciler, and the router in front of it.
struct Watch {
    app: Router,
    events: Events,
    provider: TestProvider,
    store: Arc<MemoryStore>,
    status: Arc<Mutex<Status>>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<cairn_sdk::Result<Session<Scale>>>,
}

async fn watch(webhook: Option<WebhookConfig>) -> Watch {
    watch_with(webhook, HttpLimits::default()).await
}

async fn watch_with(webhook: Option<WebhookConfig>, limits: HttpLimits) -> Watch {
    let provider = TestProvider::new("test");
    let store = Arc::new(MemoryStore::new());
    let mut session = stack(&provider).lock(store.clone(), "watch").await.unwrap();
    assert!(session.up(&Scale { capacity: 2, handled: 0 }).await.unwrap().succeeded());
    provider.clear_calls();
    let (reconciler, events) = Reconciler::new(session, ReconcilerOptions::default()).unwrap();
    let status = reconciler.status();
    let app = router_with_limits(events.clone(), status.clone(), webhook, limits);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(reconciler.run(async {
        let _ = stopped.await;
    }));
    Watch { app, events, provider, store, status, stop, task }
}

impl Watch {
    async fn call(&self, request: Request<Body>) -> (StatusCode, Response) {
        let response = self.app.clone().oneshot(request).await.unwrap();
        (response.status(), response)
    }

    async fn get(&self, path: &str) -> (StatusCode, String) {
        let (status, response) = self.call(Request::get(path).body(Body::empty()).unwrap()).await;
        (status, text(response).await)
    }

    async fn metrics(&self) -> String {
        self.get("/metrics").await.1
    }

    async fn recorded(&self) -> Scale {
        let state = self.store.load("dev").await.unwrap().unwrap();
        serde_json::from_value(state.user_state).unwrap()
    }

    /// Stops the reconciler (its running apply finishes first) and closes the session.
    async fn finish(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap().close().await.unwrap();
    }
}

async fn text(response: Response) -> String {
    String::from_utf8(to_bytes(response.into_body(), usize::MAX).await.unwrap().to_vec()).unwrap()
}

async fn json_of(response: Response) -> Value {
    serde_json::from_str(&text(response).await).unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn post(body: impl Into<Vec<u8>>, headers: &[(&str, String)]) -> Request<Body> {
    let mut request = Request::post("/events").header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.body(Body::from(body.into())).unwrap()
}

/// A request signed with the shared secret at `timestamp`.
fn signed_at(body: &[u8], timestamp: u64) -> Request<Body> {
    let signature = sign(SECRET.as_bytes(), timestamp, body);
    post(body, &[("X-Cairn-Timestamp", timestamp.to_string()), ("X-Cairn-Signature", signature)])
}

fn signed(body: &[u8]) -> Request<Body> {
    signed_at(body, now())
}

fn spike(capacity: u32) -> Vec<u8> {
    serde_json::to_vec(&json!({"kind": "traffic.spike", "payload": {"capacity": capacity}})).unwrap()
}

fn refused_line(reason: &str, n: u64) -> String {
    format!("cairn_requests_refused_total{{source=\"webhook\",reason=\"{reason}\"}} {n}")
}

/// Sends `request` to a fresh watch and checks that it is refused with `status` for
/// `reason`, that the answer says what to fix (`hint`), that nothing changed and that
/// the refusal was counted.
async fn assert_refused(request: Request<Body>, status: StatusCode, reason: &str, hint: &str) {
    let w = watch(Some(WebhookConfig::new(SECRET))).await;
    let before = w.recorded().await;
    let (got, response) = w.call(request).await;
    assert_eq!(got, status);
    let body = json_of(response).await;
    assert_eq!(body["error"], reason, "{body}");
    let message = body["message"].as_str().unwrap();
    assert!(message.contains(hint), "{message}");
    assert_eq!(w.recorded().await, before, "a refused request changes nothing");
    assert_eq!(w.events.metrics().received_of("traffic.spike"), 0, "it never became an event");
    let metrics = w.metrics().await;
    assert!(metrics.contains(&refused_line(reason, 1)), "{metrics}");
    let events = w.events.clone();
    w.finish().await;
    assert!(events.metrics().applies_of("succeeded") == 0);
}

#[test]
fn the_signature_is_v1_and_the_hex_hmac_sha256_of_timestamp_dot_body() {
    // Computed independently: printf '%s' '1700000000.<body>' | openssl dgst -sha256 -hmac s3cr3t
    let body = br#"{"kind":"traffic.spike","payload":{"capacity":6}}"#;
    assert_eq!(sign(b"s3cr3t", 1_700_000_000, body), "v1=c608ac4bc9a71b7a0ecfef4ff963f6fd16c1cd1fda986756811a7b170076f1eb");
}

#[tokio::test]
async fn a_request_without_the_signature_header_is_refused_401() {
    let request = post(spike(6), &[("X-Cairn-Timestamp", now().to_string())]);
    assert_refused(request, StatusCode::UNAUTHORIZED, "missing_signature", "X-Cairn-Signature header is missing").await;
}

#[tokio::test]
async fn a_request_without_the_timestamp_header_is_refused_401() {
    let body = spike(6);
    let request = post(body.clone(), &[("X-Cairn-Signature", sign(SECRET.as_bytes(), now(), &body))]);
    assert_refused(request, StatusCode::UNAUTHORIZED, "missing_signature", "X-Cairn-Timestamp header is missing").await;
}

#[tokio::test]
async fn a_wrong_signature_is_refused_401() {
    let body = spike(6);
    let t = now();
    let forged = sign(b"not the secret", t, &body);
    let request = post(body, &[("X-Cairn-Timestamp", t.to_string()), ("X-Cairn-Signature", forged)]);
    assert_refused(request, StatusCode::UNAUTHORIZED, "bad_signature", "HMAC-SHA256").await;
}

#[tokio::test]
async fn a_signature_over_a_different_body_is_refused_401() {
    let t = now();
    let signature = sign(SECRET.as_bytes(), t, &spike(6));
    let request = post(spike(12), &[("X-Cairn-Timestamp", t.to_string()), ("X-Cairn-Signature", signature)]);
    assert_refused(request, StatusCode::UNAUTHORIZED, "bad_signature", "sign exactly the bytes sent").await;
}

#[tokio::test]
async fn a_timestamp_six_minutes_old_is_refused_401() {
    let request = signed_at(&spike(6), now() - SIX_MINUTES);
    assert_refused(request, StatusCode::UNAUTHORIZED, "stale_timestamp", "sign each request with the current time").await;
}

#[tokio::test]
async fn a_timestamp_six_minutes_ahead_is_refused_401() {
    let request = signed_at(&spike(6), now() + SIX_MINUTES);
    assert_refused(request, StatusCode::UNAUTHORIZED, "stale_timestamp", "more than the 300 s allowed").await;
}

#[tokio::test]
async fn a_body_one_byte_over_256_kib_is_refused_413() {
    let mut body = br#"{"kind": "traffic.spike", "payload": {"capacity": 6}}"#.to_vec();
    body.resize(256 * 1024 + 1, b' ');
    assert_refused(signed(&body), StatusCode::PAYLOAD_TOO_LARGE, "too_large", "larger than 262144 bytes").await;
}

#[tokio::test]
async fn a_body_of_exactly_256_kib_is_accepted() {
    let w = watch(Some(WebhookConfig::new(SECRET))).await;
    let mut body = spike(6);
    body.resize(256 * 1024, b' ');
    let (status, response) = w.call(signed(&body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json_of(response).await["outcome"], "accepted");
    w.finish().await;
}

#[tokio::test]
async fn a_declared_length_over_the_limit_is_refused_413_before_the_body_is_read() {
    let body = spike(6);
    let t = now();
    let request = post(
        body.clone(),
        &[
            ("X-Cairn-Timestamp", t.to_string()),
            ("X-Cairn-Signature", sign(SECRET.as_bytes(), t, &body)),
            ("Content-Length", (256 * 1024 + 1).to_string()),
        ],
    );
    assert_refused(request, StatusCode::PAYLOAD_TOO_LARGE, "too_large", "send a smaller payload").await;
}

#[tokio::test]
async fn malformed_json_is_refused_400() {
    let request = signed(br#"{"kind": "traffic.spike", "payload": {"capacity": 6}"#);
    assert_refused(request, StatusCode::BAD_REQUEST, "malformed", r#"send {"kind": "traffic.spike""#).await;
}

#[tokio::test]
async fn a_body_without_a_kind_is_refused_400() {
    let request = signed(br#"{"payload": {"capacity": 6}}"#);
    assert_refused(request, StatusCode::BAD_REQUEST, "malformed", "missing field `kind`").await;
}

#[tokio::test]
async fn an_empty_kind_and_a_payload_that_is_not_an_object_are_refused_400() {
    let w = watch(Some(WebhookConfig::new(SECRET))).await;
    let before = w.recorded().await;
    for (body, hint) in [
        (json!({"kind": "  ", "payload": {"capacity": 6}}), "`kind` is empty"),
        (json!({"kind": "traffic.spike", "payload": [6]}), "`payload` must be a JSON object"),
        (json!({"kind": "traffic.spike", "payload": {}, "id": ""}), "`id` is empty"),
        (json!({"kind": "traffic.spike", "paylod": {"capacity": 6}}), "unknown field `paylod`"),
    ] {
        let (status, response) = w.call(signed(&serde_json::to_vec(&body).unwrap())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let answer = json_of(response).await;
        assert!(answer["message"].as_str().unwrap().contains(hint), "{answer}");
    }
    assert_eq!(w.recorded().await, before);
    assert!(w.metrics().await.contains(&refused_line("malformed", 4)));
    w.finish().await;
}

#[tokio::test]
async fn a_valid_request_is_accepted_recorded_and_applied() {
    let w = watch(Some(WebhookConfig::new(SECRET))).await;
    let (status, response) = w.call(signed(&spike(6))).await;
    assert_eq!(status, StatusCode::OK);
    let answer = json_of(response).await;
    assert_eq!(answer["outcome"], "accepted", "{answer}");
    assert_eq!(answer["reason"], Value::Null);
    assert!(answer["id"].as_str().unwrap().starts_with("webhook-"), "{answer}");
    // Answered once durably recorded.
    assert_eq!(w.recorded().await, Scale { capacity: 6, handled: 1 });

    let (provider, store) = (w.provider.clone(), w.store.clone());
    w.finish().await; // the apply the event started finishes first
    let updates = provider.calls().into_iter().filter(|c| c.op == Op::Update).count();
    assert_eq!(updates, 1, "{:?}", provider.calls());
    let state = store.load("dev").await.unwrap().unwrap();
    let web = state.resource(&cairn_sdk::Urn::new("dev", "test:compute:Group", "web")).unwrap();
    assert_eq!(web.inputs.get("desired"), Some(&json!(6)));
    let history = store.history("dev").await.unwrap();
    let entry = history.iter().find(|e| e["event"]["source"] == "webhook").unwrap();
    assert_eq!((entry["outcome"].as_str(), entry["apply"]["result"].as_str()), (Some("accepted"), Some("succeeded")));
}

#[tokio::test]
async fn the_same_request_replayed_is_a_duplicate_and_not_applied_twice() {
    let w = watch(Some(WebhookConfig::new(SECRET))).await;
    let body = spike(6);
    let t = now();
    let first = json_of(w.call(signed_at(&body, t)).await.1).await;
    assert_eq!(first["outcome"], "accepted", "{first}");
    let replay = json_of(w.call(signed_at(&body, t)).await.1).await;
    assert_eq!(replay["outcome"], "duplicate", "{replay}");
    assert_eq!(replay["id"], first["id"]);
    assert_eq!(w.recorded().await, Scale { capacity: 6, handled: 1 }, "the handler ran once");
    assert!(w.metrics().await.contains("cairn_events_deduplicated_total{kind=\"traffic.spike\"} 1"));
    let provider = w.provider.clone();
    w.finish().await;
    assert_eq!(provider.calls().into_iter().filter(|c| c.op == Op::Update).count(), 1);
}

#[tokio::test]
async fn a_retry_with_a_fresh_timestamp_and_the_same_id_is_a_duplicate() {
    let w = watch(Some(WebhookConfig::new(SECRET))).await;
    let body = serde_json::to_vec(&json!({"kind": "traffic.spike", "payload": {"capacity": 6}, "id": "alert-42"})).unwrap();
    let first = json_of(w.call(signed_at(&body, now() - 10)).await.1).await;
    assert_eq!((first["id"].as_str(), first["outcome"].as_str()), (Some("alert-42"), Some("accepted")));
    let retry = json_of(w.call(signed(&body)).await.1).await;
    assert_eq!((retry["id"].as_str(), retry["outcome"].as_str()), (Some("alert-42"), Some("duplicate")));
    assert_eq!(w.recorded().await.handled, 1);
    w.finish().await;
}

#[tokio::test]
async fn an_event_its_handler_rejects_is_answered_200_rejected_with_the_reason() {
    let w = watch(Some(WebhookConfig::new(SECRET))).await;
    let answer = json_of(w.call(signed(br#"{"kind": "traffic.spike", "payload": {}}"#)).await.1).await;
    assert_eq!(answer["outcome"], "rejected", "{answer}");
    assert!(answer["reason"].as_str().unwrap().contains("no field `capacity`"), "{answer}");
    let unhandled = json_of(w.call(signed(br#"{"kind": "nobody.listens"}"#)).await.1).await;
    assert_eq!(unhandled["outcome"], "rejected", "{unhandled}");
    assert_eq!(w.recorded().await, Scale { capacity: 2, handled: 0 });
    w.finish().await;
}

#[tokio::test]
async fn when_the_reconciler_has_stopped_the_webhook_answers_503_with_retry_after() {
    let w = watch(Some(WebhookConfig::new(SECRET))).await;
    let app = w.app.clone();
    w.finish().await;
    let response = app.oneshot(signed(&spike(6))).await.unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "5");
    assert!(json_of(response).await["message"].as_str().unwrap().contains("retry"));
}

#[tokio::test]
async fn without_a_secret_the_webhook_answers_404_and_says_how_to_configure_it() {
    let w = watch(None).await;
    let (status, response) = w.call(signed(&spike(6))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(json_of(response).await["message"].as_str().unwrap().contains("CAIRN_WEBHOOK_SECRET"));
    assert_eq!(w.recorded().await.handled, 0);
    let (status, body) = w.get("/healthz").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    w.finish().await;
}

#[tokio::test]
async fn healthz_metrics_and_status_report_on_the_stack() {
    let w = watch(Some(WebhookConfig::new(SECRET))).await;
    let (status, body) = w.get("/healthz").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));

    let _ = w.call(signed(&spike(6))).await;
    let _ = w.call(post(spike(6), &[])).await;
    let (status, response) = w.call(Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain; version=0.0.4"));
    let metrics = text(response).await;
    for line in [
        "# TYPE cairn_events_received_total counter",
        "cairn_events_received_total{kind=\"traffic.spike\"} 1",
        &refused_line("missing_signature", 1),
        "# TYPE cairn_events_pending gauge",
        "cairn_events_pending 0",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    let (status, body) = w.get("/status").await;
    assert_eq!(status, StatusCode::OK);
    let status: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status["stack"], "dev");
    assert_eq!(status["user_state"], json!({"capacity": 6, "handled": 1}));
    assert_eq!(status["pending_events"], 0);
    assert!(status.get("converged").is_some_and(Value::is_boolean), "{status}");
    w.finish().await;
}

/// Sends raw HTTP/1.1 `request` to `address` and reads the whole answer.
async fn exchange(address: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    socket.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let _ = socket.read_to_end(&mut answer).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn serve_answers_on_loopback_enforces_the_limit_on_streamed_bodies_and_stops_gracefully() {
    let w = watch(Some(WebhookConfig::new(SECRET).max_body(512))).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(cairn::serve::serve(listener, w.app.clone(), async {
        let _ = stopped.await;
    }));

    let answer = exchange(address, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("ok"), "{answer}");

    // A chunked body declares no length: the limit holds while it is read.
    let mut body = spike(6);
    body.resize(1024, b' ');
    let t = now();
    let mut request = format!(
        "POST /events HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\
         X-Cairn-Timestamp: {t}\r\nX-Cairn-Signature: {}\r\n\r\n",
        sign(SECRET.as_bytes(), t, &body)
    )
    .into_bytes();
    for chunk in body.chunks(128) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let answer = exchange(address, &request).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("too_large"), "{answer}");
    assert_eq!(w.recorded().await.handled, 0);

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    w.finish().await;
}

// --- Limits --------------------------------------------------------------------------

/// A signed webhook request whose body is `first`, then nothing more, ever: the stream
/// neither yields nor ends.
fn never_ending(first: Vec<u8>) -> Request<Body> {
    use futures_util::StreamExt;
    let t = now();
    let signature = sign(SECRET.as_bytes(), t, &first);
    let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(axum::body::Bytes::from(first)) }).chain(futures_util::stream::pending());
    Request::post("/events")
        .header("content-type", "application/json")
        .header("X-Cairn-Timestamp", t.to_string())
        .header("X-Cairn-Signature", signature)
        .body(Body::from_stream(body))
        .unwrap()
}

fn slow(secs: u64, id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"kind": "traffic.slow", "payload": {"secs": secs}, "id": id})).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_body_never_ends_times_out_408() {
    let w = watch_with(Some(WebhookConfig::new(SECRET)), HttpLimits::default().request_timeout(Duration::from_secs(10))).await;
    let started = tokio::time::Instant::now();
    let (status, _) = w.call(never_ending(spike(6)[..10].to_vec())).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(started.elapsed(), Duration::from_secs(10), "answered at the timeout");
    assert_eq!(w.recorded().await.handled, 0);
    // The server goes on.
    let (status, response) = w.call(signed(&spike(6))).await;
    assert_eq!((status, json_of(response).await["outcome"].as_str()), (StatusCode::OK, Some("accepted")));
    w.finish().await;
}

/// The default timeout also bounds a webhook request waiting for its event to be
/// recorded; the event stays queued and is recorded, so the same request sent again is
/// a duplicate.
#[tokio::test(start_paused = true)]
async fn a_webhook_request_waiting_past_the_timeout_gets_408_and_its_event_is_still_recorded() {
    let w = watch(Some(WebhookConfig::new(SECRET))).await;
    let body = slow(45, "slow-1");
    let started = tokio::time::Instant::now();
    let (status, _) = w.call(signed(&body)).await;
    assert_eq!(status, StatusCode::REQUEST_TIMEOUT);
    assert_eq!(started.elapsed(), HttpLimits::DEFAULT_REQUEST_TIMEOUT);
    let again = json_of(w.call(signed(&body)).await.1).await;
    assert_eq!(again["outcome"], "duplicate", "{again}");
    assert_eq!(w.recorded().await.handled, 1, "recorded once");
    w.finish().await;
}

#[tokio::test(start_paused = true)]
async fn a_body_over_the_limit_that_never_ends_is_refused_413_without_reading_the_rest() {
    let w = watch(Some(WebhookConfig::new(SECRET).max_body(1024))).await;
    let mut first = spike(6);
    first.resize(1025, b' ');
    let started = tokio::time::Instant::now();
    let (status, response) = w.call(never_ending(first)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(started.elapsed(), Duration::ZERO, "refused once the limit was passed, not at the timeout");
    assert_eq!(json_of(response).await["error"], "too_large");
    assert!(w.metrics().await.contains(&refused_line("too_large", 1)));
    w.finish().await;
}

#[tokio::test(start_paused = true)]
async fn webhook_requests_over_the_concurrency_limit_are_refused_503_and_healthz_still_answers() {
    let w = watch_with(Some(WebhookConfig::new(SECRET)), HttpLimits::default().max_webhook_requests(1)).await;
    let first = tokio::spawn(w.app.clone().oneshot(signed(&slow(5, "slow-1"))));
    tokio::time::sleep(Duration::from_secs(1)).await; // the first is in its handler
    let (status, response) = w.call(signed(&spike(6))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let answer = json_of(response).await;
    assert_eq!(answer["error"], "overloaded", "{answer}");
    assert!(w.metrics().await.contains(&refused_line("overloaded", 1)));
    let (status, body) = w.get("/healthz").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"), "only the webhook is limited");

    let first = first.await.unwrap().unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(json_of(first).await["outcome"], "accepted");
    // Its slot is free again.
    let (status, response) = w.call(signed(&spike(6))).await;
    assert_eq!((status, json_of(response).await["outcome"].as_str()), (StatusCode::OK, Some("accepted")));
    w.finish().await;
}

#[tokio::test]
async fn status_names_the_lock_holder_but_not_the_lock_token() {
    let w = watch(Some(WebhookConfig::new(SECRET))).await;
    let held = w.store.lock_holder("dev").await.unwrap().unwrap();
    assert!(!held.token.is_empty());
    // As `watch` fills it in.
    w.status.lock().unwrap().lock_holder = Some(serde_json::to_value(&held).unwrap());
    let (status, body) = w.get("/status").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains(&held.token), "{body}");
    let status: Value = serde_json::from_str(&body).unwrap();
    let holder = status["lock_holder"].as_object().unwrap();
    assert_eq!(holder["operation"], "watch");
    assert_eq!(holder["pid"], std::process::id());
    assert!(!holder.contains_key("token"), "{body}");
    w.finish().await;
}
