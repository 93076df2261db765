//! Testing aids for users' own stacks: an in-memory provider that records every call
//! and can be told to be slow or to fail, and plan snapshots.
//!
//! ```
//! use cairn_sdk::testing::{Op, TestProvider};
//!
//! // Serve the `aws` package from memory, with one failure injected.
//! let fake = TestProvider::new("aws").fail("web", Op::Create, "capacity exhausted");
//! // Stack::new("dev").program(infra).provider(fake.clone()) ... then inspect:
//! assert!(fake.calls().is_empty());
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use cairn_state::{Props, StackState, Urn};
use rustc_hash::FxHashMap;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::plan::RenderOptions;
use crate::provider::{Observed, Provider, ProviderError};
use crate::stack::Stack;

/// A provider operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// `create`
    Create,
    /// `read`
    Read,
    /// `update`
    Update,
    /// `delete`
    Delete,
    /// `lookup`
    Lookup,
}

/// One recorded call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    /// The operation.
    pub op: Op,
    /// The resource.
    pub urn: Urn,
    /// When it started, on tokio's clock (virtual in paused-time tests).
    pub at: tokio::time::Instant,
}

/// A resource living in the test provider's memory: its "cloud".
#[derive(Clone, Debug, PartialEq)]
pub struct FakeResource {
    /// The URN it was created for (its cairn tag).
    pub urn: Urn,
    /// Its id.
    pub id: String,
    /// The inputs it was created or last updated with.
    pub inputs: Props,
}

type OutputsFn = Arc<dyn Fn(&Urn, &Props) -> Props + Send + Sync>;

struct Failure {
    name: String,
    op: Op,
    message: String,
    remaining: Option<u32>,
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    latency: Duration,
    latency_for: FxHashMap<String, Duration>,
    /// How long the answer of a create, update or delete takes once it took effect.
    answer_latency: Duration,
    failures: Vec<Failure>,
    /// Operations that take effect but whose answer is "lost": `(name, op)`, once each.
    lost: Vec<(String, Op)>,
    /// Creates that make the resource without one property and then fail:
    /// `(name, property)`, once each.
    incomplete: Vec<(String, String)>,
    /// Creates that are carried out twice and whose answer is lost: names, once each.
    doubled: Vec<String>,
    /// What [`Provider::ready`] answers, when not ready.
    not_ready: Option<String>,
    cloud: BTreeMap<String, FakeResource>,
    created: FxHashMap<Urn, u32>,
    outputs: Option<OutputsFn>,
    in_flight: usize,
    max_in_flight: usize,
    /// Where the fake cloud is mirrored, to survive the process.
    dir: Option<PathBuf>,
    /// Sleep latencies on an OS thread (exact to ~0.1 ms) instead of tokio's timer.
    precise: bool,
    landing_window: Duration,
}

impl Inner {
    /// Mirrors a resource (or its deletion) to disk, atomically.
    fn persist(&self, id: &str) {
        let Some(dir) = &self.dir else { return };
        let path = dir.join(format!("{id}.json"));
        match self.cloud.get(id) {
            Some(r) => {
                let doc = serde_json::json!({ "urn": r.urn, "id": r.id, "inputs": r.inputs });
                let tmp = dir.join(format!(".{id}.tmp"));
                std::fs::write(&tmp, doc.to_string()).and_then(|()| std::fs::rename(&tmp, &path)).expect("the test cloud's directory is writable");
            }
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
    }
}

/// An in-memory provider for one package, for tests: it keeps the resources it
/// "created", records every call, and can inject latency and failures per resource.
///
/// Clones share everything, so keep one clone to inspect after giving another to the
/// stack. Ids are `<name>-<n>`, `n` counting the creates of that URN, so they are the
/// same on every run. Its outputs are `id` and whatever [`TestProvider::with_outputs`]
/// adds; like Cairn's AWS provider it does not repeat the inputs among them, and a
/// reference to an input of a resource resolves to the input, as it does there.
#[derive(Clone, Default)]
pub struct TestProvider {
    package: String,
    inner: Arc<Mutex<Inner>>,
}

impl fmt::Debug for TestProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestProvider").field("package", &self.package).finish_non_exhaustive()
    }
}

impl TestProvider {
    /// A provider serving the `package` type tokens (`"aws"` to stand in for AWS).
    pub fn new(package: impl Into<String>) -> Self {
        TestProvider { package: package.into(), inner: Arc::default() }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A test that panicked while holding the lock already failed; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A provider whose "cloud" is kept in `dir`, one file per resource, so that it
    /// outlives the process: for tests that kill a process in the middle of an apply.
    /// Resources already in `dir` are loaded.
    pub fn persistent(package: impl Into<String>, dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let p = Self::new(package);
        {
            let mut inner = p.lock();
            for entry in std::fs::read_dir(&dir)? {
                let path = entry?.path();
                if path.extension().is_none_or(|e| e != "json") {
                    continue;
                }
                let doc: Value = serde_json::from_slice(&std::fs::read(&path)?)?;
                let r = FakeResource {
                    urn: serde_json::from_value(doc["urn"].clone())?,
                    id: doc["id"].as_str().unwrap_or_default().to_owned(),
                    inputs: serde_json::from_value(doc["inputs"].clone())?,
                };
                // Ids are `<name>-<n>`: continue the numbering.
                let n = r.id.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0);
                let seen = inner.created.entry(r.urn.clone()).or_insert(0);
                *seen = (*seen).max(n);
                inner.cloud.insert(r.id.clone(), r);
            }
            inner.dir = Some(dir);
        }
        Ok(p)
    }

    /// Every call takes `latency` (on tokio's clock, so paused-time tests are instant).
    #[must_use]
    pub fn with_latency(self, latency: Duration) -> Self {
        self.lock().latency = latency;
        self
    }

    /// Latency is waited out by a timer thread of its own, accurate to about a tenth of
    /// a millisecond, instead of on tokio's timer, which rounds every sleep up to the
    /// next millisecond tick. For benchmarks that time the engine against a known
    /// latency.
    ///
    /// # Warning
    /// Precise latency is real time: it ignores `tokio::time::pause()`, so tests on
    /// virtual time must not use it. The timer thread keeps a core busy (yielding) for
    /// the last half millisecond before each call's end.
    #[must_use]
    pub fn with_precise_latency(self) -> Self {
        self.lock().precise = true;
        self
    }

    /// The answer of each create, update and delete arrives `latency` after the call
    /// took effect, on top of [`with_latency`](Self::with_latency), which passes before
    /// it does. A process killed in between leaves a resource its state has no answer
    /// for: for testing that recovery adopts it rather than creating it again.
    #[must_use]
    pub fn with_answer_latency(self, latency: Duration) -> Self {
        self.lock().answer_latency = latency;
        self
    }

    /// What [`Provider::landing_window`] answers (zero unless set): for tests of
    /// settling a crash whose calls land late, made by calling the provider directly.
    pub fn with_landing_window(self, window: Duration) -> Self {
        self.lock().landing_window = window;
        self
    }

    /// Calls about resource `name` take `latency`.
    #[must_use]
    pub fn latency_for(self, name: &str, latency: Duration) -> Self {
        self.lock().latency_for.insert(name.to_owned(), latency);
        self
    }

    /// Operation `op` on resource `name` always fails with `message`.
    #[must_use]
    pub fn fail(self, name: &str, op: Op, message: &str) -> Self {
        self.lock().failures.push(Failure { name: name.to_owned(), op, message: message.to_owned(), remaining: None });
        self
    }

    /// Operation `op` on resource `name` fails once with `message`, then succeeds.
    #[must_use]
    pub fn fail_once(self, name: &str, op: Op, message: &str) -> Self {
        self.lock().failures.push(Failure { name: name.to_owned(), op, message: message.to_owned(), remaining: Some(1) });
        self
    }

    /// Operation `op` on resource `name` takes effect, but its answer is lost once: the
    /// call fails with [`ErrorKind::Uncertain`](crate::ErrorKind::Uncertain), as a timeout or a dropped
    /// connection would. For testing recovery.
    #[must_use]
    pub fn lose_response(self, name: &str, op: Op) -> Self {
        self.lock().lost.push((name.to_owned(), op));
        self
    }

    /// The create of resource `name` makes it without `property` and then fails, once,
    /// as a create whose follow-up call (tagging, an attribute) failed: the call returns
    /// [`ErrorKind::Incomplete`](crate::ErrorKind::Incomplete) with the new id. For testing that such a resource
    /// is recorded, read back and finished, never created again.
    #[must_use]
    pub fn incomplete_create(self, name: &str, property: &str) -> Self {
        self.lock().incomplete.push((name.to_owned(), property.to_owned()));
        self
    }

    /// The create of resource `name` is carried out twice (a create retried after its
    /// answer was lost, against a cloud that does not deduplicate it) and its answer is
    /// lost, once. For testing that a look-up finding two copies adopts one and the
    /// next apply deletes the other.
    #[must_use]
    pub fn double_create(self, name: &str) -> Self {
        self.lock().doubled.push(name.to_owned());
        self
    }

    /// A provider that cannot reach its cloud: [`Provider::ready`] answers `message`,
    /// as a real provider does without credentials. For testing that nothing is called
    /// and state is left as it was.
    #[must_use]
    pub fn not_ready(self, message: &str) -> Self {
        self.lock().not_ready = Some(message.to_owned());
        self
    }

    async fn answer<T>(&self, op: Op, urn: &Urn, value: T) -> Result<T, ProviderError> {
        let (latency, precise) = {
            let inner = self.lock();
            (inner.answer_latency, inner.precise)
        };
        wait(latency, precise).await;
        let mut inner = self.lock();
        match inner.lost.iter().position(|(n, o)| n == urn.name() && *o == op) {
            Some(i) => {
                inner.lost.remove(i);
                Err(ProviderError::uncertain(format!("{op:?} of {} took effect, but its answer was lost", urn.name())))
            }
            None => Ok(value),
        }
    }

    /// Adds computed outputs: `f(urn, inputs)` is merged into each resource's outputs.
    #[must_use]
    pub fn with_outputs(self, f: impl Fn(&Urn, &Props) -> Props + Send + Sync + 'static) -> Self {
        self.lock().outputs = Some(Arc::new(f));
        self
    }

    /// Every call so far, in the order they started.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// The calls of one kind, as `(op, resource name)` pairs, sorted: handy to assert.
    pub fn calls_of(&self, op: Op) -> Vec<String> {
        let mut v: Vec<String> = self.lock().calls.iter().filter(|c| c.op == op).map(|c| c.urn.name().to_owned()).collect();
        v.sort();
        v
    }

    /// Forgets the calls recorded so far.
    pub fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// The resources that exist in the provider's memory, by id.
    pub fn resources(&self) -> Vec<FakeResource> {
        self.lock().cloud.values().cloned().collect()
    }

    /// The most calls that were ever in flight at once.
    pub fn max_concurrency(&self) -> usize {
        self.lock().max_in_flight
    }

    /// Changes a resource's inputs behind the engine's back, as a person in the cloud
    /// console would: for drift tests.
    pub fn tamper(&self, id: &str, property: &str, value: Value) {
        let mut inner = self.lock();
        if let Some(r) = inner.cloud.get_mut(id) {
            r.inputs.insert(property, value);
        }
        inner.persist(id);
    }

    /// Deletes a resource behind the engine's back.
    pub fn remove(&self, id: &str) {
        let mut inner = self.lock();
        inner.cloud.remove(id);
        inner.persist(id);
    }

    async fn enter(&self, op: Op, urn: &Urn) -> Result<(), ProviderError> {
        let (latency, precise) = {
            let mut inner = self.lock();
            inner.calls.push(Call { op, urn: urn.clone(), at: tokio::time::Instant::now() });
            inner.in_flight += 1;
            inner.max_in_flight = inner.max_in_flight.max(inner.in_flight);
            (inner.latency_for.get(urn.name()).copied().unwrap_or(inner.latency), inner.precise)
        };
        wait(latency, precise).await;
        let mut inner = self.lock();
        inner.in_flight -= 1;
        let hit = inner.failures.iter_mut().find(|f| f.name == urn.name() && f.op == op && f.remaining != Some(0));
        match hit {
            Some(f) => {
                if let Some(n) = f.remaining.as_mut() {
                    *n -= 1;
                }
                Err(ProviderError::failed(f.message.clone()))
            }
            None => Ok(()),
        }
    }

    fn observe(inner: &Inner, r: &FakeResource) -> Observed {
        let mut outputs = Props::new();
        if let Some(f) = &inner.outputs {
            for (k, v) in f(&r.urn, &r.inputs).iter() {
                outputs.insert(k, v.clone());
            }
        }
        outputs.insert("id", Value::from(r.id.clone()));
        Observed { id: r.id.clone(), inputs: r.inputs.clone(), outputs }
    }
}

#[async_trait]
impl Provider for TestProvider {
    fn package(&self) -> &str {
        &self.package
    }

    async fn ready(&self) -> Result<(), ProviderError> {
        self.lock().not_ready.clone().map_or(Ok(()), |message| Err(ProviderError::unconfigured(message)))
    }

    fn landing_window(&self) -> Duration {
        self.lock().landing_window
    }

    async fn create(&self, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        self.enter(Op::Create, urn).await?;
        let (observed, doubled, missing) = {
            let mut inner = self.lock();
            let doubled = take_first(&mut inner.doubled, |n| n == urn.name()).is_some();
            let missing = take_first(&mut inner.incomplete, |(n, _)| n == urn.name()).map(|(_, p)| p);
            let mut observed = None;
            for _ in 0..if doubled { 2 } else { 1 } {
                let n = inner.created.entry(urn.clone()).or_insert(0);
                *n += 1;
                let id = format!("{}-{}", urn.name(), n);
                let mut inputs = inputs.clone();
                if let Some(p) = &missing {
                    inputs.remove(p);
                }
                let r = FakeResource { urn: urn.clone(), id: id.clone(), inputs };
                observed = Some(Self::observe(&inner, &r));
                inner.cloud.insert(id.clone(), r);
                inner.persist(&id);
            }
            (observed, doubled, missing)
        };
        let observed = observed.expect("created at least once");
        if doubled {
            return Err(ProviderError::uncertain(format!("create of {} was sent twice and its answer lost", urn.name())));
        }
        if let Some(p) = missing {
            return Err(ProviderError::failed(format!("setting {p} failed")).after_create(&observed.id));
        }
        self.answer(Op::Create, urn, observed).await
    }

    async fn read(&self, urn: &Urn, id: &str, _inputs: &Props, _outputs: &Props) -> Result<Option<Observed>, ProviderError> {
        self.enter(Op::Read, urn).await?;
        let inner = self.lock();
        Ok(inner.cloud.get(id).map(|r| Self::observe(&inner, r)))
    }

    async fn update(&self, urn: &Urn, id: &str, _old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        self.enter(Op::Update, urn).await?;
        let observed = {
            let mut inner = self.lock();
            let Some(r) = inner.cloud.get_mut(id) else {
                return Err(ProviderError::not_found(format!("{urn} ({id})")));
            };
            r.inputs = new.clone();
            let r = r.clone();
            inner.persist(id);
            Self::observe(&inner, &r)
        };
        self.answer(Op::Update, urn, observed).await
    }

    async fn delete(&self, urn: &Urn, id: &str, _inputs: &Props, _outputs: &Props) -> Result<(), ProviderError> {
        self.enter(Op::Delete, urn).await?;
        {
            let mut inner = self.lock();
            inner.cloud.remove(id);
            inner.persist(id);
        }
        self.answer(Op::Delete, urn, ()).await
    }

    async fn lookup(&self, urn: &Urn, _created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        self.enter(Op::Lookup, urn).await?;
        let inner = self.lock();
        Ok(inner.cloud.values().filter(|r| &r.urn == urn).map(|r| Self::observe(&inner, r)).collect())
    }
}

/// Waits out a call's latency: on tokio's clock, or of real time when `precise`.
async fn wait(latency: Duration, precise: bool) {
    if latency.is_zero() {
        return;
    }
    if precise {
        precise_sleep(latency).await;
    } else {
        tokio::time::sleep(latency).await;
    }
}

/// Removes and returns the first item of `v` that matches.
fn take_first<T>(v: &mut Vec<T>, matches: impl Fn(&T) -> bool) -> Option<T> {
    let i = v.iter().position(matches)?;
    Some(v.remove(i))
}

/// Sleeps `d` of real time to within about a tenth of a millisecond: one thread keeps
/// every pending deadline in a heap and wakes each sleeper on time, rather than tokio's
/// timer (1 ms ticks, rounding up) or a thread per sleeper. The OS wakes a sleeping
/// thread a quarter of a millisecond late or more on a VM, so the timer thread sleeps
/// until half a millisecond before the first deadline and yields in a loop from there.
/// A new sleeper wakes that thread only when its deadline comes first, so calls that
/// start while others sleep cost the caller no switch to the timer thread and back.
async fn precise_sleep(d: Duration) {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    use std::sync::{Condvar, OnceLock};
    use std::time::Instant;

    /// How long before a deadline the timer thread stops sleeping and starts yielding:
    /// more than the OS's usual lateness in waking it.
    const SPIN: Duration = Duration::from_micros(500);

    #[derive(Default)]
    struct Sleepers {
        deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
        wakers: HashMap<u64, tokio::sync::oneshot::Sender<()>>,
        next_id: u64,
    }
    static TIMER: OnceLock<Arc<(Mutex<Sleepers>, Condvar)>> = OnceLock::new();
    let timer = TIMER.get_or_init(|| {
        let timer = Arc::new((Mutex::new(Sleepers::default()), Condvar::new()));
        let shared = timer.clone();
        std::thread::Builder::new()
            .name("cairn-test-timer".into())
            .spawn(move || {
                let (sleepers, changed) = &*shared;
                let mut s = sleepers.lock().unwrap_or_else(|e| e.into_inner());
                let mut due = Vec::new();
                loop {
                    let now = Instant::now();
                    while let Some(&Reverse((_, id))) = s.deadlines.peek().filter(|Reverse((at, _))| *at <= now) {
                        s.deadlines.pop();
                        due.extend(s.wakers.remove(&id));
                    }
                    if !due.is_empty() {
                        // Woken outside the lock: a sleeper woken may start another.
                        drop(s);
                        for w in due.drain(..) {
                            let _ = w.send(());
                        }
                        s = sleepers.lock().unwrap_or_else(|e| e.into_inner());
                        continue;
                    }
                    s = match s.deadlines.peek() {
                        // Close: yield until it comes (a sleeper that registers meanwhile
                        // takes the lock between two looks).
                        Some(Reverse((at, _))) if at.saturating_duration_since(now) <= SPIN => {
                            drop(s);
                            std::thread::yield_now();
                            sleepers.lock().unwrap_or_else(|e| e.into_inner())
                        }
                        Some(Reverse((at, _))) => {
                            let wait = at.saturating_duration_since(now) - SPIN;
                            changed.wait_timeout(s, wait).unwrap_or_else(|e| e.into_inner()).0
                        }
                        None => changed.wait(s).unwrap_or_else(|e| e.into_inner()),
                    };
                }
            })
            .expect("the test timer thread starts");
        timer
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    {
        let (sleepers, changed) = &**timer;
        let mut s = sleepers.lock().unwrap_or_else(|e| e.into_inner());
        let at = Instant::now() + d;
        let first = s.deadlines.peek().is_none_or(|Reverse((next, _))| at < *next);
        let id = s.next_id;
        s.next_id += 1;
        s.deadlines.push(Reverse((at, id)));
        s.wakers.insert(id, tx);
        if first {
            changed.notify_one();
        }
    }
    let _ = rx.await;
}

/// The plan of `stack` for user state `s` against `state`, rendered with property
/// diffs and no colour; if planning fails, the error message instead. What
/// `assert_plan_snapshot!` (feature `testing`) snapshots.
pub fn render_plan<S>(stack: &Stack<S>, s: &S, state: &StackState) -> String
where
    S: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
{
    match stack.preview(s, state) {
        Ok(plan) => plan.render(RenderOptions::diff()),
        Err(e) => format!("error: {e}\n"),
    }
}

#[cfg(feature = "testing")]
#[doc(hidden)]
pub use insta as __insta;

/// Snapshot-tests the plan of a stack for a user state against a state, with insta:
/// `assert_plan_snapshot!(stack, &shop, &state)`, or with a snapshot name first.
/// A plan that fails (validation, protection) snapshots its error message.
///
/// Needs the `testing` feature.
#[cfg(feature = "testing")]
#[macro_export]
macro_rules! assert_plan_snapshot {
    ($stack:expr, $s:expr, $state:expr $(,)?) => {
        $crate::testing::__insta::assert_snapshot!($crate::testing::render_plan(&$stack, $s, $state))
    };
    ($name:expr, $stack:expr, $s:expr, $state:expr $(,)?) => {
        $crate::testing::__insta::assert_snapshot!($name, $crate::testing::render_plan(&$stack, $s, $state))
    };
}
