//! The reconciler: one per stack, turning events into at most one running apply.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustc_hash::FxHashSet;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};

use super::audit::{ApplyRecord, ApplyResult, AuditEntry, AuditOutcome, AuditedEvent, LastApply, StepFailure, Timings};
use super::metrics::{Metrics, Status};
use super::rules::{PolicyViolation, Rejection};
use super::{now_ms, Event, Pattern};
use crate::apply::ApplyReport;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::plan::Plan;
use crate::session::Session;

/// How the reconciler batches and retries.
#[derive(Clone, Debug)]
pub struct ReconcilerOptions {
    /// Wait for a quiet period before applying, to batch bursts (default: none; events
    /// that arrive during an apply are batched anyway).
    pub debounce: Option<Debounce>,
    /// After an apply caused by an event whose kind matches the pattern, hold further
    /// such events for the duration (they are not lost: they run when it ends).
    pub cooldowns: Vec<(Pattern, Duration)>,
    /// Retry delays after a failed apply.
    pub backoff: Backoff,
    /// Events queued before senders wait (default 1024): bounds memory in a storm.
    pub queue: usize,
}

impl Default for ReconcilerOptions {
    fn default() -> Self {
        ReconcilerOptions { debounce: None, cooldowns: Vec::new(), backoff: Backoff::default(), queue: 1024 }
    }
}

impl ReconcilerOptions {
    /// With a debounce.
    #[must_use]
    pub fn debounce(mut self, quiet: Duration, max_wait: Duration) -> Self {
        self.debounce = Some(Debounce { quiet, max_wait });
        self
    }

    /// With a cooldown for kinds matching `pattern`.
    #[must_use]
    pub fn cooldown(mut self, pattern: impl Into<Pattern>, period: Duration) -> Self {
        self.cooldowns.push((pattern.into(), period));
        self
    }

    /// With these retry delays.
    #[must_use]
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.backoff = Backoff { initial, max };
        self
    }
}

/// Apply only once no event arrived for `quiet`, or `max_wait` after the first one.
#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    /// The quiet period.
    pub quiet: Duration,
    /// The longest an event waits for its apply because of the debounce.
    pub max_wait: Duration,
}

/// Exponential backoff: `initial`, doubling, capped at `max`.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    /// The first delay.
    pub initial: Duration,
    /// The longest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_secs(1), max: Duration::from_secs(300) }
    }
}

/// What became of an event, once it is durably recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its handlers ran and their result is the new user state (applied next).
    Accepted,
    /// It changed nothing, for this reason.
    Rejected(Rejection),
    /// Its id was already processed; it was skipped.
    Duplicate,
}

impl Outcome {
    fn audited(&self) -> AuditOutcome {
        match self {
            Outcome::Accepted => AuditOutcome::Accepted,
            Outcome::Rejected(Rejection::Unhandled) => AuditOutcome::Unhandled,
            Outcome::Rejected(_) => AuditOutcome::Rejected,
            Outcome::Duplicate => AuditOutcome::Duplicate,
        }
    }
}

/// The reconciler stopped before recording the event: its source must deliver it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the stack's reconciler stopped before recording the event; deliver it again")]
pub struct EventsClosed;

struct Delivery {
    event: Event,
    received: Instant,
    ack: Option<oneshot::Sender<Outcome>>,
}

/// The way into a reconciler, for sources: cheap to clone.
#[derive(Clone, Debug)]
pub struct Events {
    tx: mpsc::Sender<Delivery>,
    metrics: Arc<Metrics>,
}

/// The other end of [`Events`]: what a reconciler takes events from, made before the
/// reconciler when the way in must exist first (a standby replica serves `/status` and
/// refuses webhook calls while it waits for the stack's lease).
#[derive(Debug)]
pub struct Inbox {
    rx: mpsc::Receiver<Delivery>,
    metrics: Arc<Metrics>,
    status: Arc<Mutex<Status>>,
}

impl Inbox {
    /// The status document the reconciler made from this inbox will keep current;
    /// until then, whoever made the inbox keeps it.
    pub fn status(&self) -> Arc<Mutex<Status>> {
        self.status.clone()
    }
}

/// A way in for sources and its inbox, queueing up to `queue` events (see
/// [`ReconcilerOptions::queue`]); [`Reconciler::from_inbox`] takes the inbox.
pub fn inbox(stack: &str, queue: usize) -> (Events, Inbox) {
    let (tx, rx) = mpsc::channel(queue.max(1));
    let metrics = Arc::new(Metrics::default());
    let status = Arc::new(Mutex::new(Status { stack: stack.to_owned(), ..Status::default() }));
    (Events { tx, metrics: metrics.clone() }, Inbox { rx, metrics, status })
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("event", &self.event.id).finish_non_exhaustive()
    }
}

/// An event's place in the queue; [`Receipt::recorded`] resolves once its effect is
/// durable, which is when a source may acknowledge it (delete the queue message, answer
/// the webhook).
#[derive(Debug)]
pub struct Receipt(oneshot::Receiver<Outcome>);

impl Receipt {
    /// Waits until the event is recorded.
    pub async fn recorded(self) -> std::result::Result<Outcome, EventsClosed> {
        self.0.await.map_err(|_| EventsClosed)
    }
}

impl Events {
    /// Queues `event`, waiting while the queue is full.
    pub async fn submit(&self, event: Event) -> std::result::Result<Receipt, EventsClosed> {
        let (ack, rx) = oneshot::channel();
        self.metrics.pending_add(1);
        let delivery = Delivery { event, received: Instant::now(), ack: Some(ack) };
        if self.tx.send(delivery).await.is_err() {
            self.metrics.pending_add(-1);
            return Err(EventsClosed);
        }
        Ok(Receipt(rx))
    }

    /// Queues `event` and waits until it is recorded.
    pub async fn send(&self, event: Event) -> std::result::Result<Outcome, EventsClosed> {
        self.submit(event).await?.recorded().await
    }

    /// The reconciler's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Resolves once the reconciler takes no more events (it stopped): for a source that
    /// waits on something else, such as a queue's long poll, and should stop with it.
    pub async fn closed(&self) {
        self.tx.closed().await;
    }

    /// Whether the reconciler takes no more events (it stopped).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// A reconciler running on a thread of its own, from [`Reconciler::spawn`].
#[derive(Debug)]
pub struct Spawned<S> {
    stack: String,
    result: oneshot::Receiver<Result<Session<S>>>,
    /// Why the thread could not start, if it could not.
    not_started: Option<String>,
}

impl<S> Spawned<S> {
    /// Waits until the reconciler stops, and gives what [`Reconciler::run`] returns: the
    /// session, still locked.
    pub async fn finished(self) -> Result<Session<S>> {
        let stopped = |cause: String| Error::ReconcilerStopped { stack: self.stack.clone(), cause };
        if let Some(cause) = &self.not_started {
            return Err(stopped(cause.clone()));
        }
        self.result.await.unwrap_or_else(|_| Err(stopped("its thread panicked".to_owned())))
    }
}

/// An event's audit entry, completed when the apply that carries it ends.
struct Entry {
    event: Event,
    outcome: Outcome,
    before: Value,
    after: Value,
    queued: Duration,
    handled: Duration,
}

/// One per stack: takes events from its [`Events`] senders, runs their handlers, records
/// the new user state and the processed ids (then acknowledges the events), and applies.
///
/// At most one apply runs; events that arrive meanwhile wait and are handled together,
/// in order, before one more render, diff and apply. A failed apply is retried with
/// exponential backoff until the stack converges (also with no new event). Every event
/// gets an audit entry.
pub struct Reconciler<S> {
    session: Session<S>,
    s: S,
    rx: mpsc::Receiver<Delivery>,
    closed: bool,
    options: ReconcilerOptions,
    metrics: Arc<Metrics>,
    status: Arc<Mutex<Status>>,
    seen: FxHashSet<String>,
    held: VecDeque<Delivery>,
    cooling: Vec<Option<Instant>>,
    dirty: bool,
    retry_at: Option<Instant>,
    backoff: Duration,
    unapplied: Vec<Entry>,
    last_report: Option<ApplyReport>,
    /// The plan intake made for the current user state, reused by the apply that
    /// follows it so an event costs one render and diff, not two; and the graph it was
    /// made from, freed once the apply has made its calls rather than before.
    planned: Option<(Plan, Graph)>,
}

impl<S> std::fmt::Debug for Reconciler<S>
where
    S: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler")
            .field("stack", &self.session.stack().name())
            .field("held", &self.held.len())
            .field("dirty", &self.dirty)
            .finish_non_exhaustive()
    }
}

enum Converge {
    Nothing,
    Applied(Box<ApplyReport>, Box<Plan>),
    Refused(PolicyViolation),
    Failed(String),
}

impl<S> Reconciler<S>
where
    S: Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static,
{
    /// A reconciler for the locked stack of `session`, and the sender sources use.
    pub fn new(session: Session<S>, options: ReconcilerOptions) -> Result<(Self, Events)> {
        let (events, inbox) = inbox(&session.state().stack, options.queue);
        Ok((Self::from_inbox(session, options, inbox)?, events))
    }

    /// A reconciler for the locked stack of `session` that takes its events from
    /// `inbox` (see [`inbox`]): its status becomes the leader's.
    pub fn from_inbox(session: Session<S>, options: ReconcilerOptions, inbox: Inbox) -> Result<Self> {
        let s = session.user_state()?;
        let Inbox { rx, metrics, status } = inbox;
        let seen = session.state().processed_events.iter().cloned().collect();
        {
            let mut status = status.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            status.stack = session.state().stack.clone();
            status.user_state = session.state().user_state.clone();
            status.role = super::Role::Leader;
            let holder = session.lock_info();
            status.lock_holder = serde_json::to_value(holder).ok();
        }
        metrics.set_leader(true);
        let cooling = vec![None; options.cooldowns.len()];
        let backoff = options.backoff.initial;
        let reconciler = Reconciler {
            session,
            s,
            rx,
            closed: false,
            options,
            metrics,
            status,
            seen,
            held: VecDeque::new(),
            cooling,
            dirty: true,
            retry_at: None,
            backoff,
            unapplied: Vec::new(),
            last_report: None,
            planned: None,
        };
        Ok(reconciler)
    }

    /// The metrics its sources and the reconciler update.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The status document, kept current.
    pub fn status(&self) -> Arc<Mutex<Status>> {
        self.status.clone()
    }

    /// The current user state.
    pub fn user_state(&self) -> &S {
        &self.s
    }

    /// The last apply's report.
    pub fn last_report(&self) -> Option<&ApplyReport> {
        self.last_report.as_ref()
    }

    /// Runs until `shutdown` resolves or every [`Events`] sender is gone and all work is
    /// done: first converges what the state asks for, then serves events. On shutdown a
    /// running apply finishes and is recorded; events not yet recorded are left to their
    /// sources to deliver again. Returns the session, still locked: close it.
    ///
    /// Fails only when state can no longer be written (the lock was lost, the store
    /// refused a commit): the stack must be reopened.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<Session<S>> {
        tokio::pin!(shutdown);
        loop {
            let now = Instant::now();
            let apply_due = self.dirty && self.retry_at.is_none_or(|t| t <= now);
            if !apply_due && !self.has_ready(now) {
                if self.closed && self.held.is_empty() && !self.dirty {
                    break;
                }
                let deadline = self.next_deadline();
                tokio::select! {
                    biased;
                    () = &mut shutdown => break,
                    d = self.rx.recv(), if !self.closed => self.receive(d),
                    () = sleep_until(deadline.unwrap_or(now)), if deadline.is_some() => {}
                }
                continue;
            }
            if self.has_ready(now) {
                if let Some(debounce) = self.options.debounce {
                    if self.debounce(debounce, &mut shutdown).await {
                        break;
                    }
                }
                while let Ok(d) = self.rx.try_recv() {
                    self.held.push_back(d);
                }
                let ready = self.take_ready(Instant::now());
                self.intake(ready).await?;
            }
            if self.dirty && self.retry_at.is_none_or(|t| t <= Instant::now()) {
                self.converge().await?;
            }
        }
        self.drop_held();
        Ok(self.session)
    }

    /// Runs the reconciler ([`Reconciler::run`]) on a thread of its own, with a
    /// single-threaded tokio runtime, and returns at once. An event's handlers, render,
    /// diff and the start of its apply then never wait behind other tasks nor move
    /// between cores: on a two-core machine this takes about a third off the time from
    /// an event to the first provider call (see docs/performance.md). The
    /// apply's provider calls run on that runtime too. `watch` runs its reconciler so.
    ///
    /// `shutdown` is polled on the reconciler's thread: signal it with something that
    /// works across runtimes, such as a `tokio::sync::watch` channel.
    ///
    /// Clients used on that runtime (a store's, a provider's) may have started tasks
    /// there, such as the tasks that drive their pooled connections; the session handed
    /// back still needs them to close. So the thread keeps its runtime running until
    /// that session is dropped (after [`Session::close`], or without it).
    pub fn spawn(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> Spawned<S> {
        let stack = self.session.state().stack.clone();
        let (done, result) = oneshot::channel();
        let started = std::thread::Builder::new().name(format!("cairn-reconciler-{stack}")).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(e) => {
                    let cause = format!("its runtime could not start: {e}");
                    let _ = done.send(Err(Error::ReconcilerStopped { stack: self.session.state().stack.clone(), cause }));
                    return;
                }
            };
            let (hold, released) = oneshot::channel::<()>();
            let outcome = runtime.block_on(self.run(shutdown)).map(|mut session| {
                session.keep_alive(hold);
                session
            });
            let _ = done.send(outcome);
            // Resolves once the session (holding the sender) is dropped, or at once if
            // the reconciler failed and gave none back.
            runtime.block_on(async {
                let _ = released.await;
            });
        });
        let not_started = started.err().map(|e| format!("its thread could not start: {e}"));
        Spawned { stack, result, not_started }
    }

    /// Handles `events` and applies the result once, without retries: for one-off use
    /// (`emit`). Returns each event's outcome.
    pub async fn process(&mut self, events: Vec<Event>) -> Result<Vec<Outcome>> {
        let mut receipts = Vec::with_capacity(events.len());
        let batch = events
            .into_iter()
            .map(|event| {
                let (ack, rx) = oneshot::channel();
                receipts.push(rx);
                self.metrics.pending_add(1);
                Delivery { event, received: Instant::now(), ack: Some(ack) }
            })
            .collect();
        self.intake(batch).await?;
        if self.dirty {
            self.converge().await?;
        }
        let mut outcomes = Vec::with_capacity(receipts.len());
        for rx in receipts {
            outcomes.push(rx.await.map_err(|_| Error::Program { stack: self.session.state().stack.clone(), message: "an event was not recorded".to_owned() })?);
        }
        Ok(outcomes)
    }

    /// Gives the session back (still locked).
    pub fn into_session(mut self) -> Session<S> {
        self.drop_held();
        self.session
    }

    fn receive(&mut self, d: Option<Delivery>) {
        match d {
            Some(d) => self.held.push_back(d),
            None => self.closed = true,
        }
    }

    fn drop_held(&mut self) {
        let n = self.held.len() as i64;
        self.held.clear();
        self.metrics.pending_add(-n);
    }

    fn is_cooling(&self, kind: &str, now: Instant) -> bool {
        self.options.cooldowns.iter().zip(&self.cooling).any(|((p, _), until)| until.is_some_and(|u| u > now) && p.matches(kind))
    }

    fn has_ready(&self, now: Instant) -> bool {
        self.held.iter().any(|d| !self.is_cooling(&d.event.kind, now))
    }

    fn take_ready(&mut self, now: Instant) -> Vec<Delivery> {
        let (ready, cooling): (Vec<_>, Vec<_>) = self.held.drain(..).partition(|d| {
            !self.options.cooldowns.iter().zip(&self.cooling).any(|((p, _), until)| until.is_some_and(|u| u > now) && p.matches(&d.event.kind))
        });
        self.held = cooling.into();
        ready
    }

    /// The next time something becomes due: a retry, or the end of a cooldown that
    /// holds an event.
    fn next_deadline(&self) -> Option<Instant> {
        let retry = self.retry_at.filter(|_| self.dirty);
        let cooldown = self
            .held
            .iter()
            .filter_map(|d| {
                self.options.cooldowns.iter().zip(&self.cooling).filter(|((p, _), _)| p.matches(&d.event.kind)).filter_map(|(_, u)| *u).max()
            })
            .min();
        match (retry, cooldown) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Gathers events until a quiet period passes or the oldest ready one waited
    /// `max_wait`. True if shutdown came meanwhile.
    async fn debounce(&mut self, debounce: Debounce, shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>) -> bool {
        let oldest = self.held.iter().map(|d| d.received).min().unwrap_or_else(Instant::now);
        let hard = oldest + debounce.max_wait;
        loop {
            let until = (Instant::now() + debounce.quiet).min(hard);
            if until <= Instant::now() || self.closed {
                return false;
            }
            tokio::select! {
                biased;
                () = shutdown.as_mut() => return true,
                d = self.rx.recv() => self.receive(d),
                () = sleep_until(until) => return false,
            }
        }
    }

    /// Runs the handlers of `batch` in order, checks the plan against the policy,
    /// records the new user state and the processed ids, then acknowledges every event.
    async fn intake(&mut self, batch: Vec<Delivery>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let stack = self.session.stack().clone();
        let start = self.s.clone();
        let mut s = start.clone();
        let mut entries = Vec::with_capacity(batch.len());
        let mut acks = Vec::with_capacity(batch.len());
        let mut ids = Vec::with_capacity(batch.len());
        for d in batch {
            self.metrics.received(&d.event.kind);
            let queued = d.received.elapsed();
            acks.push(d.ack);
            let before = to_value(&s);
            let began = Instant::now();
            let outcome = if self.seen.contains(&d.event.id) {
                Outcome::Duplicate
            } else {
                self.seen.insert(d.event.id.clone());
                ids.push(d.event.id.clone());
                match stack.handle_event_async(&d.event, &mut s).await {
                    Ok(()) => Outcome::Accepted,
                    Err(r) => Outcome::Rejected(r),
                }
            };
            let after = if outcome == Outcome::Accepted { to_value(&s) } else { before.clone() };
            entries.push(Entry { event: d.event, outcome, before, after, queued, handled: began.elapsed() });
        }
        let mut planned = None;
        if entries.iter().any(|e| e.outcome == Outcome::Accepted) {
            // The policy needs a plan, and a plan needs a settled state.
            let _ = self.session.settle().await;
            match self.check(&s) {
                Ok(plan) => planned = Some(plan),
                // The stack could not be planned before these events either (a provider
                // or program problem): not theirs to answer for. The apply will fail
                // and be retried.
                Err(_) if self.check(&start).is_err() => {}
                Err(_) => s = self.attribute(&stack, start, &mut entries).await,
            }
        }
        // Durable before any acknowledgement: a crash from here on redelivers, and the
        // recorded ids make the redelivery a duplicate.
        let value = to_value(&s);
        let changed = value != self.session.state().user_state;
        self.session.record_events(value, &ids).await?;
        // Recording changed only S and the ids, not resources: the plan still holds
        // for the new serial (a plan that does not is dropped and made again).
        self.planned = planned.and_then(|(mut plan, graph)| plan.rebase(self.session.state()).ok().map(|()| (plan, graph)));
        if self.seen.len() > 2 * cairn_state::PROCESSED_EVENTS_KEPT {
            self.seen = self.session.state().processed_events.iter().cloned().collect();
        }
        self.s = s;
        if changed {
            self.dirty = true;
            self.retry_at = None;
            self.backoff = self.options.backoff.initial;
        }
        self.metrics.pending_add(-(acks.len() as i64));
        for (entry, ack) in entries.iter().zip(acks) {
            match &entry.outcome {
                Outcome::Accepted => {}
                Outcome::Duplicate => self.metrics.deduplicated(&entry.event.kind),
                Outcome::Rejected(_) => self.metrics.rejected(&entry.event.kind),
            }
            if let Some(ack) = ack {
                let _ = ack.send(entry.outcome.clone());
            }
        }
        // Accepted events wait for the apply they cause; without one pending (their S
        // changed nothing), they are done now, as unchanged.
        let (accepted, done): (Vec<_>, Vec<_>) =
            if self.dirty { entries.into_iter().partition(|e| e.outcome == Outcome::Accepted) } else { (Vec::new(), entries) };
        self.unapplied.extend(accepted);
        let now = now_ms();
        let unchanged = |e: &Entry| (e.outcome == Outcome::Accepted).then(|| ApplyRecord::new(ApplyResult::Unchanged));
        let done: Vec<AuditEntry> = done.iter().map(|e| audit_entry(e, now, unchanged(e))).collect();
        self.audit(&done).await?;
        self.update_status(None);
        Ok(())
    }

    /// A plan for `s` that the policy allows (with its graph), or why not.
    fn check(&self, s: &S) -> std::result::Result<(Plan, Graph), Rejection> {
        let (plan, graph) = self.session.preview_with_graph(s).map_err(|e| Rejection::Unplannable(e.to_string()))?;
        self.session.stack().policy().evaluate(&plan).map_err(Rejection::Policy)?;
        Ok((plan, graph))
    }

    /// Replays the accepted events of a batch one at a time from `start`, rejecting
    /// those whose own step breaks the policy. Returns the resulting user state.
    async fn attribute(&self, stack: &crate::Stack<S>, start: S, entries: &mut [Entry]) -> S {
        let mut s = start;
        for entry in entries.iter_mut().filter(|e| e.outcome == Outcome::Accepted) {
            let mut next = s.clone();
            entry.before = to_value(&s);
            let verdict = match stack.handle_event_async(&entry.event, &mut next).await {
                Err(r) => Err(r),
                Ok(()) => self.check(&next).map(drop),
            };
            match verdict {
                Ok(()) => {
                    entry.after = to_value(&next);
                    s = next;
                }
                Err(r) => {
                    entry.after = entry.before.clone();
                    entry.outcome = Outcome::Rejected(r);
                }
            }
        }
        s
    }

    /// Settles, plans and applies the current user state once.
    async fn converge(&mut self) -> Result<()> {
        let started = Instant::now();
        let outcome = match self.try_converge().await {
            Ok(c) => c,
            Err(e @ (Error::SessionBroken { .. } | Error::State(_))) => return Err(e),
            Err(e) => Converge::Failed(e.to_string()),
        };
        let elapsed = started.elapsed();
        let now = Instant::now();
        let record = ApplyRecord::new;
        let ms = Some(elapsed.as_millis() as u64);
        let apply = match &outcome {
            Converge::Nothing => record(ApplyResult::Unchanged),
            Converge::Applied(report, plan) => ApplyRecord {
                plan: Some(plan.summary),
                done: Some(report.summary),
                failures: report
                    .failures()
                    .map(|f| StepFailure { urn: f.urn.to_string(), status: serde_json::to_value(&f.status).unwrap_or(Value::Null) })
                    .collect(),
                ms,
                ..record(if report.succeeded() { ApplyResult::Succeeded } else { ApplyResult::Failed })
            },
            Converge::Refused(why) => ApplyRecord { reason: Some(why.to_string()), ..record(ApplyResult::Refused) },
            Converge::Failed(why) => ApplyRecord { error: Some(why.clone()), ms, ..record(ApplyResult::Failed) },
        };
        let result = apply.result;
        match result {
            ApplyResult::Failed => {
                self.retry_at = Some(now + self.backoff);
                self.backoff = (self.backoff * 2).min(self.options.backoff.max);
            }
            _ => {
                self.dirty = false;
                self.retry_at = None;
                self.backoff = self.options.backoff.initial;
            }
        }
        if result == ApplyResult::Succeeded {
            for entry in &self.unapplied {
                for ((pattern, period), until) in self.options.cooldowns.iter().zip(self.cooling.iter_mut()) {
                    if pattern.matches(&entry.event.kind) {
                        *until = Some(now + *period);
                    }
                }
            }
        }
        let stamp = now_ms();
        let mut entries: Vec<AuditEntry> = self.unapplied.drain(..).map(|e| audit_entry(&e, stamp, Some(apply.clone()))).collect();
        if entries.is_empty() && !matches!(outcome, Converge::Nothing) {
            // A retry, or the first convergence at start: no event carries it.
            entries.push(AuditEntry {
                time_ms: stamp,
                event: None,
                outcome: AuditOutcome::Reconcile,
                reason: None,
                s_before: Value::Null,
                s_after: Value::Null,
                apply: Some(apply.clone()),
                timings: None,
            });
        }
        self.audit(&entries).await?;
        let counted = !matches!(outcome, Converge::Nothing);
        if let Converge::Applied(report, _) = outcome {
            self.last_report = Some(*report);
        }
        self.update_status(Some(LastApply { time_ms: stamp, apply }));
        // Counted last: once the metrics show an apply, its audit entries and the status
        // are there too.
        if counted {
            self.metrics.applied(result.as_str(), elapsed);
        }
        Ok(())
    }

    async fn try_converge(&mut self) -> Result<Converge> {
        let planned = self.planned.take();
        self.session.settle().await?;
        let base = &self.session.state();
        // The plan intake made and checked against the policy, if it still holds: the
        // policy is checked once per batch.
        let (plan, _graph, checked) = match planned {
            Some((plan, graph)) if plan.base.serial == base.serial && plan.base.lineage == base.lineage => (plan, Some(graph), true),
            _ => (self.session.preview(&self.s)?, None, false),
        };
        if !plan.has_changes() {
            return Ok(Converge::Nothing);
        }
        if !checked {
            if let Err(why) = self.session.stack().policy().evaluate(&plan) {
                return Ok(Converge::Refused(why));
            }
        }
        let report = self.session.apply(&plan).await?;
        Ok(Converge::Applied(Box::new(report), Box::new(plan)))
    }

    async fn audit(&self, entries: &[AuditEntry]) -> Result<()> {
        let stack = &self.session.state().stack;
        let entries: Vec<Value> = entries.iter().map(AuditEntry::to_value).collect();
        self.session.store().audit(stack, &entries).await?;
        Ok(())
    }

    fn update_status(&self, last_apply: Option<LastApply>) {
        let mut status = self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        status.user_state = self.session.state().user_state.clone();
        status.converged = !self.dirty;
        status.pending_events = self.metrics.pending();
        if last_apply.is_some() {
            status.last_apply = last_apply;
        }
    }
}

fn to_value<S: Serialize>(s: &S) -> Value {
    serde_json::to_value(s).unwrap_or(Value::Null)
}

fn audit_entry(e: &Entry, time_ms: u64, apply: Option<ApplyRecord>) -> AuditEntry {
    AuditEntry {
        time_ms,
        event: Some(AuditedEvent { id: e.event.id.clone(), kind: e.event.kind.clone(), source: e.event.source.clone(), time_ms: e.event.time_ms }),
        outcome: e.outcome.audited(),
        reason: match &e.outcome {
            Outcome::Rejected(r) => Some(r.to_string()),
            _ => None,
        },
        s_before: e.before.clone(),
        s_after: e.after.clone(),
        apply,
        timings: Some(Timings { queued_us: e.queued.as_micros() as u64, handlers_us: e.handled.as_micros() as u64 }),
    }
}
