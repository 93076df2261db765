//! A fault-injecting HTTP proxy to put between an AWS client and moto.
//!
//! [`FaultProxy::start`] listens on a free loopback port and forwards every request to
//! the upstream (normally [`crate::moto()`]'s endpoint), streaming the answer back. On
//! top of that it can, per call:
//!
//! - inject a random [`Fault`] into *mutating* calls, following a seeded [`FaultPlan`]
//!   (the plan never faults a read, so a test can always look at what really happened);
//! - hold the n-th mutating call ([`FaultProxy::hold_nth_mutating`]) until the test
//!   says whether it reaches the upstream, for tests that kill a client mid-call;
//! - answer a call itself with an answer the test gives ([`FaultProxy::answer_instead`]),
//!   for answers AWS gives and moto never does;
//! - inject a fault into the next call of one operation ([`FaultProxy::fault_next`]);
//! - count calls and log the faults it injected ([`FaultProxy::stats`]).
//!
//! The proxy runs on its own thread with its own tokio runtime, so it keeps serving
//! while a test blocks (on `std::process::Command`, say), and it can be shared by many
//! tests: everything is configured through `&self`.
//!
//! Calls are classified by AWS action: the `Action` of the query protocol (EC2, Auto
//! Scaling, ElastiCache, SQS's old protocol), the `x-amz-target` of the JSON protocol
//! (SQS today, EventBridge), or else the HTTP method (S3 and other REST services).
//! Injected error answers are shaped for the protocol of the call, so the AWS SDK reads
//! the usual error code from them (see [`Fault`]).
//!
//! ```no_run
//! use cairn_testkit::{moto, Fault, FaultPlan, FaultProxy, Release};
//! use std::time::Duration;
//!
//! let proxy = FaultProxy::start(moto().endpoint());
//! // Point the client at `proxy.endpoint()`; then, say, fault a third of its writes:
//! proxy.set_plan(FaultPlan::random(7, 0.3, vec![Fault::Throttle, Fault::LostAnswer]));
//! // ... or stop its next write on the way, kill the client, and let the write through:
//! let mut holder = proxy.hold_nth_mutating(1);
//! let action = holder.wait(Duration::from_secs(30)).expect("a write");
//! // (kill the client here)
//! holder.release(Release::Forward);
//! println!("{action} went through; {:?}", proxy.stats());
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::oneshot;

/// A fault the proxy can inject into a mutating call (by its [`FaultPlan`]), or into any
/// call ([`FaultProxy::fault_next`]).
///
/// The error answers ([`Fault::Status500`], [`Fault::Throttle`],
/// [`Fault::Status500AfterForward`]) follow the protocol of the call:
///
/// | protocol | throttling | internal error |
/// |---|---|---|
/// | EC2 query (`Version=2016-11-15`) | 503 `RequestLimitExceeded` | 500 `InternalError` |
/// | awsQuery (Auto Scaling, ElastiCache) | 400 `Throttling` (Sender) | 500 `InternalFailure` (Receiver) |
/// | JSON (`x-amz-target`) | 400 `ThrottlingException` | 500 `InternalFailure` |
/// | REST (S3) | 503 `SlowDown` | 500 `InternalError` |
/// | Smithy RPC v2 CBOR (CloudWatch) | 400 `Throttling` (Sender) | 500 `InternalFailure` (Receiver) |
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Fault {
    /// Answers 500 with the protocol's internal-error body; the upstream never sees the call.
    Status500,
    /// Answers the protocol's throttling error; the upstream never sees the call.
    Throttle,
    /// Closes the client's connection without forwarding or answering.
    ResetBeforeForward,
    /// Forwards the call, waits for the upstream's whole answer, then closes the client's
    /// connection without answering: the call took effect but the client never learns it.
    LostAnswer,
    /// Forwards the call, then answers 500 (internal error) instead of the upstream's answer.
    Status500AfterForward,
}

impl Fault {
    /// Every kind of fault.
    pub const ALL: [Fault; 5] =
        [Fault::Status500, Fault::Throttle, Fault::ResetBeforeForward, Fault::LostAnswer, Fault::Status500AfterForward];
}

/// Which faults the proxy injects, how often, and the latency it adds.
///
/// Each mutating call since the plan was set gets an ordinal `i` (0, 1, 2, ...), and
/// whether call `i` is faulted, and with which kind, is a function of `(seed, i)` alone:
/// a run is reproducible from its seed as long as the calls arrive in the same order.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultPlan {
    /// The seed of the pseudo-random choices.
    pub seed: u64,
    /// The probability, from 0.0 to 1.0, that a mutating call gets a fault. Reads never do.
    pub rate: f64,
    /// The faults to pick from, uniformly. Empty means no faults.
    pub kinds: Vec<Fault>,
    /// Added to every call, reads included, before it is forwarded or faulted.
    pub latency: Option<Duration>,
}

impl FaultPlan {
    /// No faults and no latency: a plain proxy.
    pub fn none() -> Self {
        FaultPlan { seed: 0, rate: 0.0, kinds: Vec::new(), latency: None }
    }

    /// `fault` on every mutating call.
    pub fn always(fault: Fault) -> Self {
        FaultPlan { seed: 0, rate: 1.0, kinds: vec![fault], latency: None }
    }

    /// One of `kinds` on a mutating call with probability `rate`, drawn from `seed`.
    pub fn random(seed: u64, rate: f64, kinds: Vec<Fault>) -> Self {
        FaultPlan { seed, rate, kinds, latency: None }
    }

    /// The same plan, adding `latency` to every call.
    pub fn with_latency(mut self, latency: Duration) -> Self {
        self.latency = Some(latency);
        self
    }

    /// The fault, if any, for the mutating call with this ordinal since the plan was set.
    fn fault_for(&self, ordinal: u64) -> Option<Fault> {
        if self.kinds.is_empty() {
            return None;
        }
        // Call i reads outputs 2i+1 and 2i+2 of the seed's splitmix64 stream, so its fate
        // does not depend on how many calls before it were faulted, held or concurrent.
        let mut rng = SplitMix64(self.seed.wrapping_add(ordinal.wrapping_mul(2).wrapping_mul(SplitMix64::GAMMA)));
        let roll = rng.next_f64();
        let pick = rng.next_u64();
        (roll < self.rate).then(|| self.kinds[(pick % self.kinds.len() as u64) as usize])
    }
}

impl Default for FaultPlan {
    fn default() -> Self {
        FaultPlan::none()
    }
}

/// The splitmix64 generator: small, seedable, and good enough to pick faults.
struct SplitMix64(u64);

impl SplitMix64 {
    const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(Self::GAMMA);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1): the top 53 bits as the mantissa.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// What the proxy has seen since it started or since [`FaultProxy::reset_stats`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProxyStats {
    /// Every call received, reads and held calls included.
    pub calls: u64,
    /// The mutating calls among them.
    pub mutating_calls: u64,
    /// Every call by operation: the AWS action (`CreateVpc`), or for a REST call its
    /// method and the first two segments of its path (`POST /2013-04-01/hostedzone`).
    pub by_operation: BTreeMap<String, u64>,
    /// The calls among them that an AWS SDK sent again after a failed attempt (its
    /// `amz-sdk-request` header says `attempt=2` or later), by operation: answers that
    /// failed (a fault injected, or the service behind the proxy), not calls the code made.
    pub retries_by_operation: BTreeMap<String, u64>,
    /// The calls forwarded unfaulted whose upstream answer has come back, by operation:
    /// the upstream has done them (a test can wait for a read to be answered).
    pub answered_by_operation: BTreeMap<String, u64>,
    /// The calls the proxy answered itself, with answers given to
    /// [`FaultProxy::answer_instead`], by operation: the upstream never saw them.
    pub answered_instead: BTreeMap<String, u64>,
    /// How many faults of each kind were injected (kinds never injected are absent).
    pub faults: BTreeMap<Fault, u64>,
    /// The faulted calls, in the order they arrived.
    pub faulted: Vec<FaultedCall>,
}

impl ProxyStats {
    /// How many faults of `kind` were injected.
    pub fn faults_of(&self, kind: Fault) -> u64 {
        self.faults.get(&kind).copied().unwrap_or(0)
    }

    /// How many faults were injected, all kinds together.
    pub fn total_faults(&self) -> u64 {
        self.faults.values().sum()
    }

    /// The calls by operation without the SDK's own retries: the calls the code made.
    pub fn first_attempts_by_operation(&self) -> BTreeMap<String, u64> {
        let retries = |op: &str| self.retries_by_operation.get(op).copied().unwrap_or(0);
        self.by_operation.iter().map(|(op, n)| (op.clone(), n - retries(op))).filter(|(_, n)| *n > 0).collect()
    }
}

/// A call the proxy injected a fault into.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultedCall {
    /// The call's ordinal among the mutating calls since the plan was set (from 0): the
    /// index the plan's seed decided on, or that a [`FaultProxy::fault_next`] took over.
    /// A read faulted by `fault_next` has none of its own: it is logged with the next
    /// mutating call's.
    pub ordinal: u64,
    /// The AWS action (`CreateVpc`), or the HTTP method for REST calls (`PUT`).
    pub action: String,
    /// The fault injected.
    pub fault: Fault,
}

/// What becomes of a held call, told by [`Holder::release`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Forward the call to the upstream (it takes effect), then close the client's
    /// connection without answering: its client is presumed killed.
    Forward,
    /// Close the client's connection; the upstream never sees the call.
    Drop,
}

/// A running fault proxy. Dropping it stops it.
pub struct FaultProxy {
    port: u16,
    upstream: String,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FaultProxy")
            .field("endpoint", &self.endpoint())
            .field("upstream", &self.upstream)
            .finish()
    }
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://127.0.0.1:PORT`) on a free loopback port, on
    /// its own thread, with no faults.
    ///
    /// # Panics
    /// If `upstream` is not an `http://host:port` URL, or no loopback port is free.
    pub fn start(upstream: impl Into<String>) -> FaultProxy {
        let upstream = upstream.into();
        let upstream_uri: Uri = upstream
            .trim_end_matches('/')
            .parse()
            .unwrap_or_else(|e| panic!("the fault proxy's upstream {upstream:?} is not a URL: {e}"));
        assert!(
            upstream_uri.scheme_str() == Some("http") && upstream_uri.authority().is_some(),
            "the fault proxy's upstream must be http://host:port, not {upstream:?}"
        );
        // Bound here, not on the proxy's thread, so the port is known and accepting as
        // soon as `start` returns.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free loopback port for the fault proxy");
        listener.set_nonblocking(true).expect("a non-blocking listener for tokio");
        let port = listener.local_addr().expect("the fault proxy's address").port();

        let shared = Arc::new(Shared::new(upstream_uri));
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("fault-proxy-{port}"))
            .spawn({
                let shared = Arc::clone(&shared);
                move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a tokio runtime for the fault proxy");
                    runtime.block_on(accept_loop(listener, shared, stopped));
                    // Dropping the runtime drops every connection and call still in flight.
                }
            })
            .expect("a thread for the fault proxy");
        FaultProxy { port, upstream, shared, stop: Some(stop), thread: Some(thread) }
    }

    /// The proxy's endpoint, `http://127.0.0.1:PORT`, to give the client instead of the upstream.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The upstream, as given to [`FaultProxy::start`].
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// Replaces the fault plan. The ordinals the plan's seed decides on restart from 0.
    pub fn set_plan(&self, plan: FaultPlan) {
        let mut state = self.shared.state();
        state.plan = plan;
        state.mutating_since_plan = 0;
    }

    /// The current fault plan.
    pub fn plan(&self) -> FaultPlan {
        self.shared.state().plan.clone()
    }

    /// Holds the `n`-th mutating call from now (`n` = 1: the next one): the proxy keeps
    /// it, unforwarded, until the [`Holder`] releases it. The held call is never faulted.
    /// One hold at a time: a new hold replaces one whose call has not arrived yet.
    ///
    /// # Panics
    /// If `n` is 0.
    pub fn hold_nth_mutating(&self, n: u32) -> Holder {
        assert!(n >= 1, "hold_nth_mutating counts from 1 (the next mutating call)");
        let (arrived_tx, arrived) = mpsc::channel();
        let (release, release_rx) = oneshot::channel();
        let (done_tx, done) = mpsc::channel();
        let mut state = self.shared.state();
        state.next_hold_id += 1;
        let id = state.next_hold_id;
        state.hold = Some(HoldSlot {
            id,
            remaining: n,
            call: HeldCall { arrived: arrived_tx, release: release_rx, done: done_tx },
        });
        Holder { id, shared: Arc::clone(&self.shared), arrived, held_action: None, release: Some(release), done }
    }

    /// Answers the next call of `operation` (named as [`ProxyStats::by_operation`] names
    /// it: `RevokeSecurityGroupEgress`) with `body` and status 200, in the upstream's
    /// stead: the upstream never sees the call. For answers a real service gives and the
    /// local AWS never does, such as EC2's revoke that does not find a rule made a moment
    /// before (eventual consistency), or a read that does not show it yet. Each answer is
    /// given once, in the order set. The call is counted ([`ProxyStats::calls`] and the
    /// rest) and delayed by the plan's latency, but takes no part in the fault plan's
    /// ordinals or a hold's count, and is never faulted.
    pub fn answer_instead(&self, operation: &str, body: impl Into<Bytes>) {
        self.answer_instead_with_status(operation, 200, body);
    }

    /// [`FaultProxy::answer_instead`] with another HTTP status: an error answer AWS gives
    /// and the local AWS does not, its body shaped by the test for the call's protocol
    /// (for EC2, `<Response><Errors><Error><Code>...`).
    ///
    /// # Panics
    /// If `status` is not an HTTP status code.
    pub fn answer_instead_with_status(&self, operation: &str, status: u16, body: impl Into<Bytes>) {
        let status = StatusCode::from_u16(status).expect("an HTTP status code");
        self.shared.state().instead.push((operation.to_owned(), Instead::Answer(status, body.into())));
    }

    /// Injects `fault` into the next call of `operation`, whatever the plan says: to lose
    /// the answer of one chosen write ([`Fault::LostAnswer`]) without counting calls to
    /// find its ordinal. Given once, in the order set, together with the answers of
    /// [`FaultProxy::answer_instead`]. A mutating call keeps its place in the plan's
    /// ordinals (the plan's own fate for that ordinal is not drawn), takes no part in a
    /// hold's count, and is logged as any fault is ([`ProxyStats::faulted`]); a read can
    /// be faulted so too, and is logged with the ordinal the next mutating call will get.
    pub fn fault_next(&self, operation: &str, fault: Fault) {
        self.shared.state().instead.push((operation.to_owned(), Instead::Fault(fault)));
    }

    /// Drops the answers set with [`FaultProxy::answer_instead`] and the faults set with
    /// [`FaultProxy::fault_next`] not given yet; returns how many there were.
    pub fn clear_answers(&self) -> usize {
        std::mem::take(&mut self.shared.state().instead).len()
    }

    /// The counts and the log of faults since the start or the last [`FaultProxy::reset_stats`].
    pub fn stats(&self) -> ProxyStats {
        self.shared.state().stats.clone()
    }

    /// Zeroes the counts and empties the log of faults.
    pub fn reset_stats(&self) {
        self.shared.state().stats = ProxyStats::default();
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A hold on one mutating call, from [`FaultProxy::hold_nth_mutating`].
///
/// Dropping it without [`Holder::release`] cancels the hold if the call has not arrived,
/// and drops the call (as [`Release::Drop`]) if it has.
pub struct Holder {
    id: u64,
    shared: Arc<Shared>,
    arrived: mpsc::Receiver<String>,
    held_action: Option<String>,
    release: Option<oneshot::Sender<Release>>,
    done: mpsc::Receiver<Option<u16>>,
}

impl fmt::Debug for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Holder").field("id", &self.id).field("held_action", &self.held_action).finish()
    }
}

impl Holder {
    /// Blocks the calling thread until the held call has arrived, for at most `timeout`.
    /// Returns its action (`CreateVpc`, or the HTTP method of a REST call), or `None` if
    /// it did not arrive in time.
    pub fn wait(&mut self, timeout: Duration) -> Option<String> {
        if self.held_action.is_none() {
            self.held_action = self.arrived.recv_timeout(timeout).ok();
        }
        self.held_action.clone()
    }

    /// Forwards or drops the held call and blocks until that is done. Returns the
    /// upstream's HTTP status when the call was forwarded and answered, else `None`
    /// (dropped, upstream unreachable, or no call arrived yet: then the hold is cancelled).
    ///
    /// # Panics
    /// If the forwarded call has not finished within 60 s.
    pub fn release(mut self, how: Release) -> Option<u16> {
        if self.held_action.is_none() {
            self.held_action = self.arrived.try_recv().ok();
        }
        if self.held_action.is_none() && self.cancel_if_pending() {
            return None;
        }
        // The call has arrived, or is arriving right now: it is the held task's to finish.
        if let Some(release) = self.release.take() {
            let _ = release.send(how);
        }
        match self.done.recv_timeout(Duration::from_secs(60)) {
            Ok(upstream_status) => upstream_status,
            // The proxy was stopped, or a newer hold replaced this one before its call came.
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("the held call ({:?}) was not done 60 s after its release ({how:?})", self.held_action)
            }
        }
    }

    /// Removes this hold from the proxy if its call has not arrived; true if it removed it.
    fn cancel_if_pending(&self) -> bool {
        let mut state = self.shared.state();
        if state.hold.as_ref().is_some_and(|slot| slot.id == self.id) {
            state.hold = None;
            true
        } else {
            false
        }
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // A held call that already arrived sees its release sender dropped: Release::Drop.
        self.cancel_if_pending();
    }
}

/// Whether an AWS action changes anything, by the verb its name starts with
/// (`CreateVpc`, `TagResource`, `SendMessage`, ...). The verb must end the name or be
/// followed by an upper-case letter, so `Tag` matches `TagResource` but not `Tagline`.
pub fn is_mutating_action(action: &str) -> bool {
    const MUTATING_VERBS: &[&str] = &[
        "Create",
        "Delete",
        "Modify",
        "Put",
        "Set",
        "Attach",
        "Detach",
        "Associate",
        "Disassociate",
        "Authorize",
        "Revoke",
        "Allocate",
        "Release",
        "Update",
        "Replace",
        "Tag",
        "Untag",
        "Add",
        "Remove",
        "Send",
        "Purge",
        "Reboot",
        "Terminate",
        "Start",
        "Stop",
        "Enable",
        "Disable",
        "Register",
        "Deregister",
        "Change",
        "Apply",
        "Import",
        "Copy",
        "Restore",
        "Reset",
        "Cancel",
        "Request",
        "Subscribe",
        "Unsubscribe",
        "Publish",
        "Confirm",
        "Run",
        "Execute",
        "Suspend",
        "Resume",
        "Renew",
        "Resend",
        "Increase",
        "Decrease",
        "Complete",
        "Enter",
        "Exit",
    ];
    MUTATING_VERBS.iter().any(|verb| {
        action.strip_prefix(verb).is_some_and(|rest| rest.chars().next().is_none_or(|c| c.is_ascii_uppercase()))
    })
}

// ---------------------------------------------------------------------------------------
// The proxy's state, shared between the test's threads and the proxy's thread.

struct Shared {
    upstream: Uri,
    client: Client<HttpConnector, Full<Bytes>>,
    state: Mutex<State>,
    next_request_id: AtomicU64,
}

struct State {
    plan: FaultPlan,
    mutating_since_plan: u64,
    stats: ProxyStats,
    hold: Option<HoldSlot>,
    next_hold_id: u64,
    /// What to do in the plan's stead with the next call of an operation, first set first.
    instead: Vec<(String, Instead)>,
}

/// What [`FaultProxy::answer_instead`] and [`FaultProxy::fault_next`] set for one call.
enum Instead {
    Answer(StatusCode, Bytes),
    Fault(Fault),
}

struct HoldSlot {
    id: u64,
    /// Mutating calls still to come before the held one, the held one included.
    remaining: u32,
    call: HeldCall,
}

/// The proxy's end of a [`Holder`].
struct HeldCall {
    arrived: mpsc::Sender<String>,
    release: oneshot::Receiver<Release>,
    done: mpsc::Sender<Option<u16>>,
}

/// What the proxy does with one call, decided when it arrives.
enum Verdict {
    Run { latency: Option<Duration>, fault: Option<Fault> },
    Hold(HeldCall),
    /// Answer with this status and body after the latency, not forwarded.
    Answer { latency: Option<Duration>, status: StatusCode, body: Bytes },
}

impl Shared {
    fn new(upstream: Uri) -> Shared {
        let client = Client::builder(TokioExecutor::new())
            // A fresh upstream connection per call: a pooled one the upstream closed while
            // idle could fail a call, a fault nobody asked for. Loopback connects are cheap.
            .pool_max_idle_per_host(0)
            .build_http();
        Shared {
            upstream,
            client,
            state: Mutex::new(State {
                plan: FaultPlan::none(),
                mutating_since_plan: 0,
                stats: ProxyStats::default(),
                hold: None,
                next_hold_id: 0,
                instead: Vec::new(),
            }),
            next_request_id: AtomicU64::new(1),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A test that panicked while holding the lock leaves consistent counters behind.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the call and decides its fate, all under one lock so that concurrent calls
    /// get distinct ordinals.
    fn decide(&self, call: &Call) -> Verdict {
        let mut state = self.state();
        state.stats.calls += 1;
        *state.stats.by_operation.entry(call.operation.clone()).or_default() += 1;
        if call.retry {
            *state.stats.retries_by_operation.entry(call.operation.clone()).or_default() += 1;
        }
        let latency = state.plan.latency;
        let instead = state.instead.iter().position(|(op, _)| *op == call.operation).map(|at| state.instead.remove(at).1);
        let one_fault = match instead {
            Some(Instead::Answer(status, body)) => {
                *state.stats.answered_instead.entry(call.operation.clone()).or_default() += 1;
                state.stats.mutating_calls += u64::from(call.mutating);
                return Verdict::Answer { latency, status, body };
            }
            Some(Instead::Fault(fault)) => Some(fault),
            None => None,
        };
        if !call.mutating && one_fault.is_none() {
            return Verdict::Run { latency, fault: None };
        }
        state.stats.mutating_calls += u64::from(call.mutating);
        let ordinal = state.mutating_since_plan;
        state.mutating_since_plan += u64::from(call.mutating);
        if let Some(fault) = one_fault {
            *state.stats.faults.entry(fault).or_default() += 1;
            state.stats.faulted.push(FaultedCall { ordinal, action: call.action.clone(), fault });
            return Verdict::Run { latency, fault: Some(fault) };
        }

        if let Some(slot) = state.hold.as_mut() {
            slot.remaining -= 1;
            if slot.remaining == 0 {
                let slot = state.hold.take().expect("the slot just seen");
                return Verdict::Hold(slot.call);
            }
        }

        let fault = state.plan.fault_for(ordinal);
        if let Some(fault) = fault {
            *state.stats.faults.entry(fault).or_default() += 1;
            state.stats.faulted.push(FaultedCall { ordinal, action: call.action.clone(), fault });
        }
        Verdict::Run { latency, fault }
    }

    fn request_id(&self) -> String {
        let n = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        format!("00000000-0000-4000-8000-{n:012x}")
    }

    /// Sends the call to the upstream: same method, path, query, headers (the client's
    /// `Host` included, so signatures and URLs moto builds from it stay the proxy's) and body.
    async fn forward(
        &self,
        parts: &Parts,
        body: Bytes,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        let path_and_query = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let uri = Uri::builder()
            .scheme("http")
            .authority(self.upstream.authority().expect("checked at start").clone())
            .path_and_query(path_and_query)
            .build()
            .expect("the upstream's authority and the request's own path make a URI");
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = parts.method.clone();
        *request.uri_mut() = uri;
        *request.headers_mut() = parts.headers.clone();
        remove_hop_by_hop(request.headers_mut());
        // The whole body is in hand already; an upstream waiting to say 100 Continue would only stall.
        request.headers_mut().remove(hyper::header::EXPECT);
        self.client.request(request).await
    }

    /// Forwards the call and reads the upstream's whole answer: the call has then taken
    /// effect. Returns the upstream's status, or `None` if it could not be reached.
    async fn forward_to_completion(&self, parts: &Parts, body: Bytes) -> Option<u16> {
        let response = self.forward(parts, body).await.ok()?;
        let status = response.status().as_u16();
        response.into_body().collect().await.ok()?;
        Some(status)
    }
}

// ---------------------------------------------------------------------------------------
// Serving.

type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// The service's error: hyper then closes the HTTP/1 connection without writing any
/// response, which is how the proxy drops a call.
#[derive(Debug)]
struct ConnectionDropped(&'static str);

impl fmt::Display for ConnectionDropped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the fault proxy dropped the connection: {}", self.0)
    }
}

impl std::error::Error for ConnectionDropped {}

async fn accept_loop(listener: std::net::TcpListener, shared: Arc<Shared>, mut stopped: oneshot::Receiver<()>) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("the fault proxy's listener in tokio");
    loop {
        let stream = tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: the next accept may work.
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| serve(Arc::clone(&shared), request));
            // Keep-alive is on by default: the AWS SDK pools its connections. The error of
            // a dropped call ends the connection, as intended, and is no news.
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn serve(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Response<ProxyBody>, ConnectionDropped> {
    let (parts, body) = request.into_parts();
    let body =
        body.collect().await.map_err(|_| ConnectionDropped("the client's request body did not arrive"))?.to_bytes();
    let call = Call::classify(&parts, &body);
    let verdict = shared.decide(&call);
    // The call runs in a task of its own so that it completes, as it would on AWS, even
    // when its client goes away meanwhile: hyper drops this future when it sees the
    // connection close, and a held call's client is expected to be killed.
    tokio::spawn(run(shared, parts, body, call, verdict))
        .await
        .unwrap_or(Err(ConnectionDropped("the call's task failed")))
}

async fn run(
    shared: Arc<Shared>,
    parts: Parts,
    body: Bytes,
    call: Call,
    verdict: Verdict,
) -> Result<Response<ProxyBody>, ConnectionDropped> {
    let (latency, fault) = match verdict {
        Verdict::Run { latency, fault } => (latency, fault),
        Verdict::Hold(held) => return run_held(&shared, &parts, body, &call, held).await,
        Verdict::Answer { latency, status, body } => {
            if let Some(latency) = latency {
                tokio::time::sleep(latency).await;
            }
            return Ok(answer_response(&call.protocol, status, body, &shared.request_id()));
        }
    };
    if let Some(latency) = latency {
        tokio::time::sleep(latency).await;
    }
    let Some(fault) = fault else {
        return Ok(match shared.forward(&parts, body).await {
            Ok(response) => {
                *shared.state().stats.answered_by_operation.entry(call.operation.clone()).or_default() += 1;
                let (mut head, body) = response.into_parts();
                remove_hop_by_hop(&mut head.headers);
                Response::from_parts(head, body.boxed())
            }
            Err(e) => {
                plain_response(StatusCode::BAD_GATEWAY, format!("the fault proxy could not reach its upstream: {e}"))
            }
        });
    };
    match fault {
        Fault::Status500 => Ok(error_response(&call.protocol, AwsError::Internal, &shared.request_id())),
        Fault::Throttle => Ok(error_response(&call.protocol, AwsError::Throttling, &shared.request_id())),
        Fault::ResetBeforeForward => Err(ConnectionDropped("ResetBeforeForward")),
        Fault::LostAnswer => {
            shared.forward_to_completion(&parts, body).await;
            Err(ConnectionDropped("LostAnswer"))
        }
        Fault::Status500AfterForward => {
            shared.forward_to_completion(&parts, body).await;
            Ok(error_response(&call.protocol, AwsError::Internal, &shared.request_id()))
        }
    }
}

async fn run_held(
    shared: &Shared,
    parts: &Parts,
    body: Bytes,
    call: &Call,
    held: HeldCall,
) -> Result<Response<ProxyBody>, ConnectionDropped> {
    let _ = held.arrived.send(call.action.clone());
    // A Holder dropped without a word means Release::Drop.
    let how = held.release.await.unwrap_or(Release::Drop);
    let upstream_status = match how {
        Release::Forward => shared.forward_to_completion(parts, body).await,
        Release::Drop => None,
    };
    let _ = held.done.send(upstream_status);
    Err(ConnectionDropped("held call released; its client is presumed gone"))
}

/// Removes the headers that describe one connection rather than the message.
fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Headers the Connection header names are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"] {
        headers.remove(name);
    }
}

// ---------------------------------------------------------------------------------------
// Classifying calls and shaping AWS errors.

/// The wire protocol of a call, which decides the shape of an injected error.
#[derive(Debug, Clone, PartialEq)]
enum Protocol {
    /// EC2's own query protocol: `<Response><Errors><Error>`.
    Ec2Query,
    /// The awsQuery protocol (Auto Scaling, ElastiCache): `<ErrorResponse><Error>`.
    AwsQuery,
    /// The JSON protocols, with the request's content type to answer in. SQS is
    /// awsQuery-compatible: it also reads the error code from `x-amzn-query-error`.
    AwsJson { content_type: HeaderValue, sqs: bool },
    /// REST-XML (S3): `<Error>`.
    RestXml,
    /// Smithy RPC v2 CBOR (CloudWatch): `POST /service/<service>/operation/<Op>`, a CBOR
    /// body; CloudWatch is awsQuery-compatible, so its errors also carry
    /// `x-amzn-query-error`.
    RpcV2Cbor,
}

#[derive(Debug)]
struct Call {
    /// An AWS SDK's second or later attempt at the same operation.
    retry: bool,
    action: String,
    /// What [`ProxyStats::by_operation`] counts it as.
    operation: String,
    mutating: bool,
    protocol: Protocol,
}

/// Whether the request is an AWS SDK's retry: its `amz-sdk-request` header reads
/// `attempt=N; max=M` with N above 1.
fn is_sdk_retry(parts: &Parts) -> bool {
    let header = parts.headers.get("amz-sdk-request").and_then(|v| v.to_str().ok()).unwrap_or("");
    header.split(';').filter_map(|field| field.trim().strip_prefix("attempt=")).any(|n| n.parse::<u32>().is_ok_and(|n| n > 1))
}

impl Call {
    fn classify(parts: &Parts, body: &[u8]) -> Call {
        let retry = is_sdk_retry(parts);
        let cbor = parts.headers.get("smithy-protocol").is_some_and(|p| p.as_bytes() == b"rpc-v2-cbor");
        if let Some((_, operation)) = parts.uri.path().rsplit_once("/operation/").filter(|_| cbor) {
            return Call {
                retry,
                action: operation.to_owned(),
                operation: operation.to_owned(),
                mutating: is_mutating_action(operation),
                protocol: Protocol::RpcV2Cbor,
            };
        }
        if let Some(target) = parts.headers.get("x-amz-target").and_then(|t| t.to_str().ok()) {
            // `AmazonSQS.CreateQueue`: the service, a dot, the action.
            let (service, action) = target.rsplit_once('.').unwrap_or(("", target));
            let content_type = parts
                .headers
                .get(CONTENT_TYPE)
                .filter(|ct| ct.as_bytes().starts_with(b"application/x-amz-json"))
                .cloned()
                .unwrap_or(HeaderValue::from_static("application/x-amz-json-1.0"));
            return Call {
                retry,
                action: action.to_string(),
                operation: action.to_string(),
                mutating: is_mutating_action(action),
                protocol: Protocol::AwsJson { content_type, sqs: service == "AmazonSQS" },
            };
        }

        let is_form = parts
            .headers
            .get(CONTENT_TYPE)
            .is_some_and(|ct| ct.as_bytes().starts_with(b"application/x-www-form-urlencoded"));
        // Only a form body can carry query parameters: an S3 object could contain anything.
        let form = if is_form { std::str::from_utf8(body).unwrap_or("") } else { "" };
        let query = parts.uri.query().unwrap_or("");
        let param = |name: &str| form_value(form, name).or_else(|| form_value(query, name));
        if let Some(action) = param("Action") {
            let protocol = if param("Version") == Some("2016-11-15") { Protocol::Ec2Query } else { Protocol::AwsQuery };
            return Call { retry, action: action.to_string(), operation: action.to_string(), mutating: is_mutating_action(action), protocol };
        }

        let path: Vec<&str> = parts.uri.path().split('/').filter(|s| !s.is_empty()).take(2).collect();
        Call {
            retry,
            action: parts.method.to_string(),
            operation: format!("{} /{}", parts.method, path.join("/")),
            mutating: matches!(parts.method, Method::PUT | Method::POST | Method::DELETE),
            protocol: Protocol::RestXml,
        }
    }
}

/// The raw value of `name` in a form-encoded string. Action names and API versions are
/// plain ASCII, so they need no percent-decoding.
fn form_value<'a>(form: &'a str, name: &str) -> Option<&'a str> {
    form.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('='))
}

#[derive(Debug, Clone, Copy)]
enum AwsError {
    Throttling,
    Internal,
}

/// The error answer AWS would give for this protocol, which the SDK parses into the
/// error code shown in [`Fault`]'s table.
fn error_response(protocol: &Protocol, error: AwsError, request_id: &str) -> Response<ProxyBody> {
    use AwsError::{Internal, Throttling};
    let xml = HeaderValue::from_static("text/xml");
    let (status, content_type, body, query_error): (StatusCode, HeaderValue, Bytes, Option<&str>) = match (protocol, error) {
        // The EC2 SDK reads Response/Errors/Error/Code; the status does not matter to it.
        (Protocol::Ec2Query, Throttling) => (
            StatusCode::SERVICE_UNAVAILABLE,
            xml,
            ec2_error("RequestLimitExceeded", "Request limit exceeded.", request_id).into(),
            None,
        ),
        (Protocol::Ec2Query, Internal) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            xml,
            ec2_error("InternalError", "An internal error has occurred.", request_id).into(),
            None,
        ),
        // awsQuery SDKs read ErrorResponse/Error/Code.
        (Protocol::AwsQuery, Throttling) => {
            (StatusCode::BAD_REQUEST, xml, query_error_body("Sender", "Throttling", "Rate exceeded", request_id).into(), None)
        }
        (Protocol::AwsQuery, Internal) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            xml,
            query_error_body("Receiver", "InternalFailure", "An internal error has occurred.", request_id).into(),
            None,
        ),
        // JSON SDKs take the code from `__type` after its last `#`; SQS's then lets the
        // `x-amzn-query-error` header (`Code;Type`) override it, as AWS sends for
        // awsQuery-compatible services.
        (Protocol::AwsJson { content_type, sqs }, Throttling) => (
            StatusCode::BAD_REQUEST,
            content_type.clone(),
            json_error(
                if *sqs { "com.amazonaws.sqs#ThrottlingException" } else { "ThrottlingException" },
                "Rate exceeded",
            )
            .into(),
            sqs.then_some("ThrottlingException;Sender"),
        ),
        (Protocol::AwsJson { content_type, sqs }, Internal) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            content_type.clone(),
            json_error("InternalFailure", "An internal error has occurred.").into(),
            sqs.then_some("InternalFailure;Receiver"),
        ),
        // S3 reads Error/Code at the root.
        (Protocol::RestXml, Throttling) => (
            StatusCode::SERVICE_UNAVAILABLE,
            xml,
            rest_xml_error("SlowDown", "Please reduce your request rate.", request_id).into(),
            None,
        ),
        (Protocol::RestXml, Internal) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            xml,
            rest_xml_error("InternalError", "We encountered an internal error. Please try again.", request_id).into(),
            None,
        ),
        // RPC v2 CBOR SDKs read `__type` from a CBOR map; awsQuery-compatible services
        // (CloudWatch) let `x-amzn-query-error` override the code, as for SQS.
        (Protocol::RpcV2Cbor, Throttling) => (
            StatusCode::BAD_REQUEST,
            HeaderValue::from_static("application/cbor"),
            cbor_error("ThrottlingException", "Rate exceeded").into(),
            Some("Throttling;Sender"),
        ),
        (Protocol::RpcV2Cbor, Internal) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            HeaderValue::from_static("application/cbor"),
            cbor_error("InternalFailure", "An internal error has occurred.").into(),
            Some("InternalFailure;Receiver"),
        ),
    };
    aws_response(protocol, status, content_type, body, request_id, query_error)
}

/// An answer as an AWS service shapes it for the call's protocol.
fn aws_response(
    protocol: &Protocol,
    status: StatusCode,
    content_type: HeaderValue,
    body: Bytes,
    request_id: &str,
    query_error: Option<&'static str>,
) -> Response<ProxyBody> {
    let mut response = Response::new(full_body(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, content_type);
    // The SDK's request-id accessors read these headers.
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-requestid", id.clone());
        headers.insert("x-amz-request-id", id);
    }
    if let Some(query_error) = query_error {
        headers.insert("x-amzn-query-error", HeaderValue::from_static(query_error));
    }
    if *protocol == Protocol::RpcV2Cbor {
        headers.insert("smithy-protocol", HeaderValue::from_static("rpc-v2-cbor"));
    }
    response
}

fn ec2_error(code: &str, message: &str, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error></Errors>\
         <RequestID>{request_id}</RequestID></Response>"
    )
}

fn query_error_body(kind: &str, code: &str, message: &str, request_id: &str) -> String {
    format!(
        "<ErrorResponse><Error><Type>{kind}</Type><Code>{code}</Code><Message>{message}</Message></Error>\
         <RequestId>{request_id}</RequestId></ErrorResponse>"
    )
}

/// `{"__type": kind, "message": message}` in CBOR: a map of two text strings (all
/// shorter than 24 bytes but `message`, which fits one length byte).
fn cbor_error(kind: &str, message: &str) -> Vec<u8> {
    let mut out = vec![0xa2];
    for text in ["__type", kind, "message", message] {
        let len = u8::try_from(text.len()).expect("an error text under 256 bytes");
        if len < 24 {
            out.push(0x60 | len);
        } else {
            out.extend([0x78, len]);
        }
        out.extend(text.as_bytes());
    }
    out
}

fn json_error(kind: &str, message: &str) -> String {
    format!("{{\"__type\":\"{kind}\",\"message\":\"{message}\"}}")
}

fn rest_xml_error(code: &str, message: &str, request_id: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <Error><Code>{code}</Code><Message>{message}</Message><RequestId>{request_id}</RequestId></Error>"
    )
}

/// An answer with `status` and `body`, in the content type the call's protocol reads.
fn answer_response(protocol: &Protocol, status: StatusCode, body: Bytes, request_id: &str) -> Response<ProxyBody> {
    let content_type = match protocol {
        Protocol::Ec2Query | Protocol::AwsQuery | Protocol::RestXml => HeaderValue::from_static("text/xml"),
        Protocol::AwsJson { content_type, .. } => content_type.clone(),
        Protocol::RpcV2Cbor => HeaderValue::from_static("application/cbor"),
    };
    aws_response(protocol, status, content_type, body, request_id, None)
}

fn plain_response(status: StatusCode, text: String) -> Response<ProxyBody> {
    let mut response = Response::new(full_body(text));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

fn full_body(body: impl Into<Bytes>) -> ProxyBody {
    Full::new(body.into()).map_err(|never| match never {}).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut builder = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    const FORM: (&str, &str) = ("content-type", "application/x-www-form-urlencoded; charset=utf-8");

    #[test]
    fn classifies_each_protocol() {
        let ec2 = Call::classify(
            &parts(Method::POST, "/", &[FORM]),
            b"Action=CreateVpc&Version=2016-11-15&CidrBlock=10.0.0.0%2F16",
        );
        assert_eq!((ec2.action.as_str(), ec2.mutating, ec2.protocol), ("CreateVpc", true, Protocol::Ec2Query));

        let asg =
            Call::classify(&parts(Method::POST, "/", &[FORM]), b"Action=DescribeAutoScalingGroups&Version=2011-01-01");
        assert_eq!(
            (asg.action.as_str(), asg.mutating, asg.protocol),
            ("DescribeAutoScalingGroups", false, Protocol::AwsQuery)
        );

        let in_query = Call::classify(&parts(Method::GET, "/?Version=2016-11-15&Action=RunInstances", &[]), b"");
        assert_eq!((in_query.action.as_str(), in_query.protocol), ("RunInstances", Protocol::Ec2Query));

        let sqs = Call::classify(
            &parts(
                Method::POST,
                "/",
                &[("x-amz-target", "AmazonSQS.SendMessage"), ("content-type", "application/x-amz-json-1.0")],
            ),
            b"{}",
        );
        assert_eq!((sqs.action.as_str(), sqs.mutating), ("SendMessage", true));
        assert!(matches!(sqs.protocol, Protocol::AwsJson { sqs: true, .. }));

        // An S3 object whose content looks like a form is still a PUT.
        let s3 = Call::classify(&parts(Method::PUT, "/bucket/key", &[]), b"Action=DeleteVpc");
        assert_eq!((s3.action.as_str(), s3.mutating, s3.protocol), ("PUT", true, Protocol::RestXml));
        let s3_read = Call::classify(&parts(Method::GET, "/bucket/key", &[]), b"");
        assert!(!s3_read.mutating);
    }

    #[test]
    fn mutating_actions_are_told_by_their_verb() {
        for action in ["CreateVpc", "DeleteQueue", "TagResource", "SendMessage", "PurgeQueue", "RequestCertificate", "Subscribe", "Unsubscribe", "Publish"] {
            assert!(is_mutating_action(action), "{action}");
        }
        for action in ["DescribeVpcs", "GetQueueUrl", "ListQueues", "ReceiveMessage", "Tagline", "Settings", "Requestor", "Runway"] {
            assert!(!is_mutating_action(action), "{action}");
        }
    }

    #[test]
    fn a_call_fate_depends_only_on_seed_and_ordinal() {
        let plan = FaultPlan::random(7, 0.5, Fault::ALL.to_vec());
        let fates: Vec<_> = (0..200).map(|i| plan.fault_for(i)).collect();
        assert_eq!(fates, (0..200).map(|i| plan.fault_for(i)).collect::<Vec<_>>());
        let faulted = fates.iter().filter(|f| f.is_some()).count();
        assert!((60..140).contains(&faulted), "about half of 200 calls faulted, not {faulted}");
        for kind in Fault::ALL {
            assert!(fates.contains(&Some(kind)), "{kind:?} is picked sometimes");
        }
        assert!((0..100).all(|i| FaultPlan::always(Fault::Throttle).fault_for(i) == Some(Fault::Throttle)));
        assert!((0..100).all(|i| FaultPlan::none().fault_for(i).is_none()));
    }
}
