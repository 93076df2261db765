//! Intake: a batch's handlers, its plan checked against the policy (replayed event by
//! event when it breaks it), then the new user state and the ids recorded, and every
//! event acknowledged.

use std::task::{Context, Poll, Waker};

use serde::de::DeserializeOwned;
use serde::Serialize;
use rustc_hash::FxHashSet;
use tokio::time::Instant;

use super::queue::{Delivery, Outcome};
use super::{audit_entry, to_value, Entry, Reconciler, Recorded};
use crate::events::now_ms;
use crate::error::Result;
use crate::events::audit::{ApplyRecord, ApplyResult, AuditEntry};
use crate::events::rules::Rejection;
use crate::graph::Graph;
use crate::plan::Plan;

impl<S> Reconciler<S>
where
    S: Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static,
{
    /// Runs the handlers of `batch` in order, checks the plan against the policy,
    /// records the new user state and the processed ids, then acknowledges every event.
    pub(super) async fn intake(&mut self, batch: Vec<Delivery>) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if std::mem::replace(&mut self.in_intake, true) {
            // The last intake was cut off: the session reads back what it recorded.
            self.session.settle().await?;
            self.s = self.session.user_state()?;
            self.seen = self.session.state().processed_events.iter().cloned().collect();
            // Its S, if it was recorded, may not be applied yet.
            self.dirty = true;
        }
        let stack = self.session.stack().clone();
        let start = self.s.clone();
        let mut s = start.clone();
        let mut entries = Vec::with_capacity(batch.len());
        let mut acks = Vec::with_capacity(batch.len());
        let mut ids = Vec::with_capacity(batch.len());
        // This batch's ids, taken into `seen` once recorded: an intake cancelled before
        // then (an async handler cut off by a timeout around `process`) leaves the
        // events new, for their redelivery.
        let mut fresh = FxHashSet::default();
        let recorded = Recorded::default();
        for d in batch {
            self.metrics.received(&d.event.kind);
            let queued = d.received.elapsed();
            acks.push(d.ack);
            let before = to_value(&s);
            let began = Instant::now();
            let outcome = if self.seen.contains(&d.event.id) || !fresh.insert(d.event.id.clone()) {
                Outcome::Duplicate
            } else {
                ids.push(d.event.id.clone());
                match stack.handle_event_async(&d.event, &mut s).await {
                    Ok(()) => Outcome::Accepted,
                    Err(r) => Outcome::Rejected(r),
                }
            };
            let after = if outcome == Outcome::Accepted { to_value(&s) } else { before.clone() };
            entries.push(Entry { event: d.event, outcome, before, after, queued, handled: began.elapsed(), recorded: recorded.clone() });
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
        // Durable before any acknowledgement: a crash before then redelivers, and the
        // recorded ids make a later redelivery a duplicate. When S changed, its apply
        // follows at once, and the record shares the sync of the apply's first journal
        // record (converge flushes it if there is none): the events are acknowledged
        // once that is durable, and no provider call comes before it.
        let value = to_value(&s);
        let changed = value != self.session.state().user_state;
        let durable = if changed {
            Some(self.session.stage_events(value, &ids).await?)
        } else {
            self.session.record_events(value, &ids).await?;
            None
        };
        self.seen.extend(fresh);
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
        let mut answers = Vec::with_capacity(acks.len());
        // Outcomes are counted once they are recorded, as their senders are told.
        let mut rejected = Vec::new();
        let mut duplicates = Vec::new();
        for (entry, ack) in entries.iter().zip(acks) {
            match &entry.outcome {
                Outcome::Accepted => {}
                Outcome::Duplicate => duplicates.push(entry.event.kind.clone()),
                Outcome::Rejected(_) => rejected.push(entry.event.kind.clone()),
            }
            if let Some(ack) = ack {
                answers.push((ack, entry.outcome.clone()));
            }
        }
        let metrics = self.metrics.clone();
        let answer = move || {
            recorded.set();
            rejected.iter().for_each(|kind| metrics.rejected(kind));
            duplicates.iter().for_each(|kind| metrics.deduplicated(kind));
            for (ack, outcome) in answers {
                let _ = ack.send(outcome);
            }
        };
        let mut written = true;
        match durable {
            None => answer(),
            // A store whose journal wrote the record at once: no task to wait for it.
            Some(mut durable) => match poll_once(&mut durable) {
                Poll::Ready(Ok(())) => answer(),
                // Never written: the session is broken, the senders see the events
                // unrecorded, and their sources deliver them again.
                Poll::Ready(Err(e)) => return Err(self.session.journal_failed(e.into())),
                Poll::Pending => {
                    written = false;
                    drop(tokio::spawn(async move {
                        if durable.await.is_ok() {
                            answer();
                        }
                    }));
                }
            },
        }
        // Accepted events wait for the apply they cause; without one pending (their S
        // changed nothing), they are done now, as unchanged.
        let (accepted, done): (Vec<_>, Vec<_>) =
            if self.dirty { entries.into_iter().partition(|e| e.outcome == Outcome::Accepted) } else { (Vec::new(), entries) };
        self.unapplied.extend(accepted);
        let now = now_ms();
        let unchanged = |e: &Entry| (e.outcome == Outcome::Accepted).then(|| ApplyRecord::new(ApplyResult::Unchanged));
        if written {
            let done: Vec<AuditEntry> = done.iter().map(|e| audit_entry(e, now, unchanged(e))).collect();
            self.audit(&done).await?;
        } else {
            // Audited once their record is durable: by converge, which follows.
            self.unaudited.extend(done.iter().map(|e| (audit_entry(e, now, unchanged(e)), e.recorded.clone())));
        }
        self.update_status(None);
        self.in_intake = false;
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
}

/// Polls `durable` once, without waiting.
fn poll_once(durable: &mut cairn_state::Durable) -> Poll<std::result::Result<(), cairn_state::StateError>> {
    durable.as_mut().poll(&mut Context::from_waker(Waker::noop()))
}
