//! The reconciler: one per stack, turning events into at most one running apply.
//!
//! Its parts, in the order an event meets them: `queue` is the way in (events, the
//! inbox, receipts); `timing` decides when to act (debounce, cooldowns, backoff);
//! `intake` runs a batch's handlers, checks its plan and records it; `converge` plans
//! (or takes intake's plan), applies and audits. This file holds the loop that joins
//! them.

mod converge;
mod intake;
mod queue;
mod timing;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustc_hash::FxHashSet;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};

pub use queue::{inbox, Events, EventsClosed, Inbox, Outcome, Receipt};
pub use timing::{Backoff, Debounce, ReconcilerOptions};

use super::audit::{ApplyRecord, ApplyResult, AuditEntry, AuditedEvent, Timings};
use super::metrics::{Metrics, Status};
use super::Event;
use crate::apply::ApplyReport;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::plan::Plan;
use crate::session::Session;
use queue::Delivery;

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
    /// Whether its batch's record is durable.
    recorded: Recorded,
}

/// Whether a batch's record is known to be durable, shared by its entries: set when
/// the record is written, or when a staged one turns out durable (just before its
/// senders are told). Entries of a batch never known to be recorded get no audit entry
/// if the reconciler stops: their senders deliver them again.
#[derive(Clone, Debug, Default)]
struct Recorded(Arc<AtomicBool>);

impl Recorded {
    fn set(&self) {
        self.0.store(true, Ordering::Release);
    }

    fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
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
    /// Audit entries of events done at intake (rejected, duplicates) whose record was
    /// staged: written once it is durable, by the converge that follows.
    unaudited: Vec<(AuditEntry, Recorded)>,
    last_report: Option<ApplyReport>,
    /// The plan intake made for the current user state, reused by the apply that
    /// follows it so an event costs one render and diff, not two; and the graph it was
    /// made from, freed once the apply has made its calls rather than before.
    planned: Option<(Plan, Graph)>,
    /// Set while an intake runs: still set at the next one, the last was cancelled (its
    /// `process` dropped), perhaps after its record was written, so the user state and
    /// the ids seen are taken again from the session first.
    in_intake: bool,
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
            unaudited: Vec::new(),
            last_report: None,
            planned: None,
            in_intake: false,
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
    /// refused a commit): the stack must be reopened. The events recorded by then still
    /// get their audit entries, their apply failed with that error.
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
                let taken = self.intake(ready).await;
                self.stop_on(taken).await?;
            }
            if self.dirty && self.retry_at.is_none_or(|t| t <= Instant::now()) {
                let converged = self.converge().await;
                self.stop_on(converged).await?;
            }
        }
        // Accepted events still waiting for an apply (a failed one's retry was not yet
        // due) are in the recorded `S`, which the next run converges to: their entries
        // are written now, with no apply.
        let waiting: Vec<AuditEntry> = self.unapplied.drain(..).map(|e| audit_entry(&e, super::now_ms(), None)).collect();
        self.audit(&waiting).await?;
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
        let taken = self.intake(batch).await;
        self.stop_on(taken).await?;
        if self.dirty {
            let converged = self.converge().await;
            self.stop_on(converged).await?;
        }
        let mut outcomes = Vec::with_capacity(receipts.len());
        for rx in receipts {
            outcomes.push(rx.await.map_err(|_| Error::Program { stack: self.session.state().stack.clone(), message: "an event was not recorded".to_owned() })?);
        }
        Ok(outcomes)
    }

    /// Gives `result` back. If it is an error (the reconciler stops: the stack must be
    /// reopened), the events recorded so far but not yet audited get their entries
    /// first, their apply failed with that error, so the audit log keeps every event
    /// that was recorded. Best effort: if the store cannot write them either, the
    /// error returned is still the first one.
    async fn stop_on(&mut self, result: Result<()>) -> Result<()> {
        let Err(error) = result else { return Ok(()) };
        let failed = ApplyRecord { error: Some(error.to_string()), ..ApplyRecord::new(ApplyResult::Failed) };
        let stamp = super::now_ms();
        let mut entries: Vec<AuditEntry> =
            std::mem::take(&mut self.unaudited).into_iter().filter(|(_, recorded)| recorded.is_set()).map(|(entry, _)| entry).collect();
        entries.extend(self.unapplied.drain(..).filter(|e| e.recorded.is_set()).map(|e| audit_entry(&e, stamp, Some(failed.clone()))));
        let _ = self.audit(&entries).await;
        Err(error)
    }

    /// Gives the session back (still locked).
    pub fn into_session(mut self) -> Session<S> {
        self.drop_held();
        self.session
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
