//! Converge: settle, plan (or take intake's plan), check the policy once, apply, and
//! write the audit entries of the events the apply carries.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
use tokio::time::Instant;

use super::{audit_entry, Reconciler};
use crate::apply::ApplyReport;
use crate::error::{Error, Result};
use crate::events::audit::{ApplyRecord, ApplyResult, AuditEntry, AuditOutcome, LastApply, StepFailure};
use crate::events::now_ms;
use crate::events::rules::PolicyViolation;
use crate::plan::Plan;

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
    /// Settles, plans and applies the current user state once.
    pub(super) async fn converge(&mut self) -> Result<()> {
        let started = Instant::now();
        let outcome = match self.try_converge().await {
            Ok(c) => c,
            // The stack must be reopened: the reconciler stops, writing the entries of
            // the events recorded so far on its way out.
            Err(e @ (Error::SessionBroken { .. } | Error::State(_))) => return Err(e),
            Err(e) => Converge::Failed(e.to_string()),
        };
        // The events intake staged are durable before their audit entries, also when no
        // apply wrote a record after them (nothing to change, refused, failed early).
        self.session.flush().await?;
        let earlier: Vec<AuditEntry> = std::mem::take(&mut self.unaudited).into_iter().map(|(entry, _)| entry).collect();
        self.audit(&earlier).await?;
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
                // Stack outputs whose function failed: the apply failed on them alone.
                error: (!report.output_errors.is_empty()).then(|| {
                    report.output_errors.iter().map(|(name, why)| format!("stack output `{name}`: {why}")).collect::<Vec<_>>().join("; ")
                }),
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
        // The plan intake made (on a settled state) and checked against the policy, if
        // the state is still the one it was made for: then a batch is settled, planned
        // and checked once. Otherwise (a retry, the first convergence), settle and plan.
        let base = self.session.state();
        let (plan, _graph, checked) = match self.planned.take() {
            Some((plan, graph)) if plan.base.serial == base.serial && plan.base.lineage == base.lineage && base.pending.is_empty() => {
                (plan, Some(graph), true)
            }
            _ => {
                self.session.settle().await?;
                (self.session.preview(&self.s)?, None, false)
            }
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

    pub(super) async fn audit(&self, entries: &[AuditEntry]) -> Result<()> {
        let stack = &self.session.state().stack;
        let entries: Vec<Value> = entries.iter().map(AuditEntry::to_value).collect();
        self.session.store().audit(stack, &entries).await?;
        Ok(())
    }

    pub(super) fn update_status(&self, last_apply: Option<LastApply>) {
        let mut status = self.status.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        status.user_state = self.session.state().user_state.clone();
        status.converged = !self.dirty;
        status.pending_events = self.metrics.pending();
        if last_apply.is_some() {
            status.last_apply = last_apply;
        }
    }
}
