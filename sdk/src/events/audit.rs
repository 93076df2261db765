//! The audit log's entries, typed: what the reconciler writes and `history` reads.
//!
//! Stores keep entries as JSON objects (`Store::audit` takes `serde_json::Value`s, as
//! the state crate knows nothing of events); this is their one shape. Readers of an
//! older log get what they can: every field but `time_ms` and `outcome` has a default.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::plan::Summary;

/// One entry of a stack's audit log: an event and what became of it, or an apply no
/// event carried (a retry, the first convergence when `watch` starts).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When the entry was written, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The event, or `None` for an apply no event carried.
    pub event: Option<AuditedEvent>,
    /// What became of the event.
    pub outcome: AuditOutcome,
    /// Why an event was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The user state before the event's handlers ran.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub s_before: Value,
    /// The user state they made.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub s_after: Value,
    /// The apply that carried the event, if any ran (none for an event that changed
    /// nothing, or that the reconciler stopped before applying).
    pub apply: Option<ApplyRecord>,
    /// Where the event's time went before its apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
}

/// The event an entry is about: enough to find it again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditedEvent {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: String,
    /// Where it came from.
    pub source: String,
    /// When it happened, in milliseconds since the Unix epoch.
    pub time_ms: u64,
}

/// What became of an event, or `reconcile` for an apply no event carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// Its handlers ran; their result was applied.
    Accepted,
    /// A handler, guard or the policy refused it (`reason` says which and why).
    Rejected,
    /// No handler matches its kind.
    Unhandled,
    /// Its id was already processed.
    Duplicate,
    /// An apply no event carried.
    Reconcile,
}

impl AuditOutcome {
    /// As the log writes it: `accepted`, `rejected`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Accepted => "accepted",
            AuditOutcome::Rejected => "rejected",
            AuditOutcome::Unhandled => "unhandled",
            AuditOutcome::Duplicate => "duplicate",
            AuditOutcome::Reconcile => "reconcile",
        }
    }
}

/// One apply of the reconciler, as the audit log and `/status` record it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApplyRecord {
    /// How it ended.
    pub result: ApplyResult,
    /// What the plan would change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Summary>,
    /// What was done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<Summary>,
    /// The steps that failed or were skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<StepFailure>,
    /// Why the policy refused the plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Why the apply could not run (the program failed to render, the state could not
    /// be settled, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How long it took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
}

impl ApplyRecord {
    /// A record of `result` and nothing else.
    pub fn new(result: ApplyResult) -> Self {
        ApplyRecord { result, plan: None, done: None, failures: Vec::new(), reason: None, error: None, ms: None }
    }
}

/// How an apply of the reconciler ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ApplyResult {
    /// The plan changed nothing.
    Unchanged,
    /// Every step succeeded.
    Succeeded,
    /// A step failed, or the apply could not run: it is retried with backoff.
    Failed,
    /// The event policy refused the plan: nothing was done.
    Refused,
}

impl ApplyResult {
    /// As the log and the metrics write it: `succeeded`, `failed`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            ApplyResult::Unchanged => "unchanged",
            ApplyResult::Succeeded => "succeeded",
            ApplyResult::Failed => "failed",
            ApplyResult::Refused => "refused",
        }
    }
}

/// A step that failed or was skipped.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepFailure {
    /// The resource.
    pub urn: String,
    /// How the step ended ([`StepStatus`](crate::StepStatus) as JSON).
    pub status: Value,
}

/// Where an event's time went before its apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// Waiting in the reconciler's queue, in microseconds.
    pub queued_us: u64,
    /// Running its handlers, in microseconds.
    pub handlers_us: u64,
}

/// The last apply, as `/status` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastApply {
    /// When it ended, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// What it did.
    pub apply: ApplyRecord,
}

impl AuditEntry {
    /// The entry as a store keeps it.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("audit entries serialize")
    }

    /// An entry as a store keeps it; `None` for an object that is not one.
    pub fn from_value(value: &Value) -> Option<AuditEntry> {
        serde_json::from_value(value.clone()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entries_read_back_as_written_and_as_the_log_wrote_them_before() {
        let entry = AuditEntry {
            time_ms: 1,
            event: Some(AuditedEvent { id: "e1".into(), kind: "traffic.spike".into(), source: "webhook".into(), time_ms: 0 }),
            outcome: AuditOutcome::Rejected,
            reason: Some("guard".into()),
            s_before: json!({"web_capacity": 2}),
            s_after: json!({"web_capacity": 2}),
            apply: None,
            timings: Some(Timings { queued_us: 5, handlers_us: 7 }),
        };
        assert_eq!(AuditEntry::from_value(&entry.to_value()), Some(entry));
        // An entry as the untyped log wrote it, nulls and all.
        let old = json!({"time_ms": 2, "event": null, "outcome": "reconcile", "apply": {"result": "failed", "error": "boom", "ms": 3}});
        let read = AuditEntry::from_value(&old).unwrap();
        assert_eq!((read.outcome, read.apply.unwrap().result), (AuditOutcome::Reconcile, ApplyResult::Failed));
        assert_eq!(AuditEntry::from_value(&json!({"something": "else"})), None);
    }
}
