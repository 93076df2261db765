//! What a watching stack reports: Prometheus metrics and a status document.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

/// Upper bounds of the apply duration histogram, in seconds.
const BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

#[derive(Default, Debug)]
struct Counters {
    received: BTreeMap<String, u64>,
    rejected: BTreeMap<String, u64>,
    deduplicated: BTreeMap<String, u64>,
    /// Requests a source refused before they became events (bad signature, too large).
    refused: BTreeMap<(String, String), u64>,
    applies: BTreeMap<&'static str, u64>,
    apply_buckets: [u64; BUCKETS.len()],
    apply_count: u64,
    apply_sum: f64,
}

/// Counters of a watching stack, shared by the reconciler and its sources, rendered in
/// the Prometheus text format by [`Metrics::render`].
#[derive(Debug, Default)]
pub struct Metrics {
    counters: Mutex<Counters>,
    pending: AtomicI64,
    leader: AtomicBool,
}

impl Metrics {
    fn with<T>(&self, f: impl FnOnce(&mut Counters) -> T) -> T {
        f(&mut self.counters.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    pub(crate) fn received(&self, kind: &str) {
        self.with(|c| *c.received.entry(kind.to_owned()).or_default() += 1);
    }

    pub(crate) fn rejected(&self, kind: &str) {
        self.with(|c| *c.rejected.entry(kind.to_owned()).or_default() += 1);
    }

    pub(crate) fn deduplicated(&self, kind: &str) {
        self.with(|c| *c.deduplicated.entry(kind.to_owned()).or_default() += 1);
    }

    /// Counts a request `source` refused before it became an event, by reason
    /// (`bad_signature`, `too_large`, `malformed`, ...).
    pub fn refused(&self, source: &str, reason: &str) {
        self.with(|c| *c.refused.entry((source.to_owned(), reason.to_owned())).or_default() += 1);
    }

    pub(crate) fn applied(&self, result: &'static str, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        self.with(|c| {
            *c.applies.entry(result).or_default() += 1;
            for (bucket, bound) in c.apply_buckets.iter_mut().zip(BUCKETS) {
                if secs <= bound {
                    *bucket += 1;
                }
            }
            c.apply_count += 1;
            c.apply_sum += secs;
        });
    }

    pub(crate) fn pending_add(&self, n: i64) {
        self.pending.fetch_add(n, Ordering::Relaxed);
    }

    /// Says whether this process leads the stack (holds its lease and reconciles) or
    /// stands by: the `cairn_leader` gauge.
    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    /// Whether this process leads the stack.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Events received and not yet recorded.
    pub fn pending(&self) -> i64 {
        self.pending.load(Ordering::Relaxed)
    }

    /// Events received of `kind`.
    pub fn received_of(&self, kind: &str) -> u64 {
        self.with(|c| c.received.get(kind).copied().unwrap_or(0))
    }

    /// Requests `source` refused for `reason`.
    pub fn refused_of(&self, source: &str, reason: &str) -> u64 {
        self.with(|c| c.refused.get(&(source.to_owned(), reason.to_owned())).copied().unwrap_or(0))
    }

    /// Applies that ended with `result` (`succeeded`, `failed`, `refused`).
    pub fn applies_of(&self, result: &str) -> u64 {
        self.with(|c| c.applies.get(result).copied().unwrap_or(0))
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.with(|c| {
            let mut family = |name: &str, help: &str, rows: Vec<(String, u64)>| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
                for (labels, v) in rows {
                    let _ = writeln!(out, "{name}{labels} {v}");
                }
            };
            let by_kind = |m: &BTreeMap<String, u64>| m.iter().map(|(k, v)| (format!("{{kind=\"{}\"}}", escape(k)), *v)).collect();
            family("cairn_events_received_total", "Events received, by kind.", by_kind(&c.received));
            family("cairn_events_rejected_total", "Events rejected by handlers, guards or policy, by kind.", by_kind(&c.rejected));
            family("cairn_events_deduplicated_total", "Events skipped as already processed, by kind.", by_kind(&c.deduplicated));
            family(
                "cairn_requests_refused_total",
                "Requests a source refused before they became events, by source and reason.",
                c.refused.iter().map(|((s, r), v)| (format!("{{source=\"{}\",reason=\"{}\"}}", escape(s), escape(r)), *v)).collect(),
            );
            family(
                "cairn_applies_total",
                "Applies run by the reconciler, by result.",
                c.applies.iter().map(|(r, v)| (format!("{{result=\"{r}\"}}"), *v)).collect(),
            );
            let _ = writeln!(out, "# HELP cairn_apply_duration_seconds Duration of the reconciler's applies.");
            let _ = writeln!(out, "# TYPE cairn_apply_duration_seconds histogram");
            for (count, bound) in c.apply_buckets.iter().zip(BUCKETS) {
                let _ = writeln!(out, "cairn_apply_duration_seconds_bucket{{le=\"{bound}\"}} {count}");
            }
            let _ = writeln!(out, "cairn_apply_duration_seconds_bucket{{le=\"+Inf\"}} {}", c.apply_count);
            let _ = writeln!(out, "cairn_apply_duration_seconds_sum {}", c.apply_sum);
            let _ = writeln!(out, "cairn_apply_duration_seconds_count {}", c.apply_count);
        });
        let _ = writeln!(out, "# HELP cairn_events_pending Events received and not yet recorded.");
        let _ = writeln!(out, "# TYPE cairn_events_pending gauge");
        let _ = writeln!(out, "cairn_events_pending {}", self.pending());
        let _ = writeln!(out, "# HELP cairn_leader 1 if this process holds the stack's lease and reconciles it, 0 if it stands by.");
        let _ = writeln!(out, "# TYPE cairn_leader gauge");
        let _ = writeln!(out, "cairn_leader {}", u8::from(self.is_leader()));
        out
    }
}

fn escape(label: &str) -> String {
    label.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// A watching stack's status, served as JSON on `/status`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// The stack.
    pub stack: String,
    /// The current user state.
    pub user_state: Value,
    /// Whether the cloud matches the user state, as of the last apply.
    pub converged: bool,
    /// The last apply, if any: when, its result and what it did.
    pub last_apply: Option<super::audit::LastApply>,
    /// Who holds the stack's lock (the watcher itself while it runs).
    pub lock_holder: Option<Value>,
    /// Events received and not yet recorded.
    pub pending_events: i64,
    /// Whether this process reconciles the stack or waits for its lease.
    pub role: Role,
}

/// What a `watch` process does for a stack.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// It holds the stack's lease and reconciles it.
    #[default]
    Leader,
    /// Another process holds the lease; this one waits to take over when it expires,
    /// consuming no event meanwhile.
    Standby,
}
