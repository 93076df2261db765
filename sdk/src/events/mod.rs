//! Events: what happens to a running stack, the handlers that turn it into a new user
//! state `S`, the guards and policy that bound what an event may do, and the
//! [`Reconciler`] that applies the result.
//!
//! ```
//! use cairn_sdk::events::{Event, EventPolicy};
//! use cairn_sdk::Stack;
//!
//! #[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
//! struct Shop { web_capacity: u32 }
//!
//! let stack = Stack::<Shop>::new("dev")
//!     .on_event("traffic.spike", |event: &Event, shop: &mut Shop| {
//!         let rps: u32 = event.field("requests_per_second")?;
//!         shop.web_capacity = rps.div_ceil(500).clamp(2, 12);
//!         Ok(())
//!     })
//!     .on_event("traffic.normal", |_: &Event, shop: &mut Shop| {
//!         shop.web_capacity = 2;
//!         Ok(())
//!     })
//!     .guard("capacity within 2..=12", |shop: &Shop| {
//!         if (2..=12).contains(&shop.web_capacity) { Ok(()) } else { Err(format!("capacity {} is outside 2..=12", shop.web_capacity).into()) }
//!     })
//!     .event_policy(EventPolicy::default().deny_replace_or_delete("aws:ec2:Vpc"));
//!
//! let mut shop = Shop { web_capacity: 2 };
//! let event = Event::new("traffic.spike", serde_json::json!({"requests_per_second": 2600}));
//! stack.handle_event(&event, &mut shop).unwrap();
//! assert_eq!(shop.web_capacity, 6);
//! ```

mod audit;
mod envelope;
mod metrics;
mod reconciler;
pub(crate) mod rules;
mod schedule;
mod source;

pub use audit::{ApplyRecord, ApplyResult, AuditEntry, AuditOutcome, AuditedEvent, LastApply, StepFailure, Timings};
pub use envelope::{Envelope, EnvelopeError, ENVELOPE_FORMAT};
pub use metrics::{Metrics, Role, Status};
pub use reconciler::{inbox, Backoff, Debounce, Events, EventsClosed, Inbox, Outcome, Reconciler, ReconcilerOptions, Receipt, Spawned};
pub use rules::{EventPolicy, HandlerFuture, HandlerResult, PolicyViolation, Rejection};
pub use schedule::{Schedule, ScheduleError};
pub use source::Source;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::stack::BoxError;

/// Something that happened: a traffic spike, an alarm, a queue message, a webhook call,
/// a schedule firing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per event; a redelivered event keeps its id and is recognised.
    pub id: String,
    /// What happened, dotted: `traffic.spike`.
    pub kind: String,
    /// Where it came from: `sqs:<queue>`, `webhook`, `schedule`, `cli`.
    pub source: String,
    /// When it happened, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// Its data.
    #[serde(default)]
    pub payload: Value,
}

impl Event {
    /// A new event of `kind` with a fresh id, from source `app`, now.
    pub fn new(kind: impl Into<String>, payload: Value) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let time_ms = now_ms();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Event {
            id: format!("evt-{time_ms:x}-{:x}-{n}", std::process::id()),
            kind: kind.into(),
            source: "app".to_owned(),
            time_ms,
            payload,
        }
    }

    /// The same event with id `id` (a source's own message id, so redeliveries match).
    #[must_use]
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// The same event from `source`.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<String>) -> Self {
        self.source = source.into();
        self
    }

    /// The same event at `time_ms`.
    #[must_use]
    pub fn with_time_ms(mut self, time_ms: u64) -> Self {
        self.time_ms = time_ms;
        self
    }

    /// The payload's field `name` as a `T`, or an error a handler can return with `?`
    /// that names the event, the field and what was expected.
    pub fn field<T: DeserializeOwned>(&self, name: &str) -> Result<T, BoxError> {
        let value = self.payload.get(name).ok_or_else(|| {
            format!("event {} ({}): its payload has no field `{name}`; send it as {{\"{name}\": ...}}", self.kind, self.id)
        })?;
        T::deserialize(value).map_err(|e| {
            format!("event {} ({}): payload field `{name}` is {value}, which does not fit: {e}", self.kind, self.id).into()
        })
    }

    /// The whole payload as a `T`.
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T, BoxError> {
        T::deserialize(&self.payload)
            .map_err(|e| format!("event {} ({}): its payload {} does not fit: {e}", self.kind, self.id, self.payload).into())
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Which event kinds a handler, cooldown or policy applies to: an exact kind
/// (`traffic.spike`) or a glob where `*` matches any run of characters and `?` one
/// (`traffic.*`, `az.*ed`, `*`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern from its text.
    pub fn new(pattern: impl Into<String>) -> Self {
        Pattern(pattern.into())
    }

    /// The pattern's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `kind` matches.
    pub fn matches(&self, kind: &str) -> bool {
        glob(self.0.as_bytes(), kind.as_bytes())
    }
}

impl From<&str> for Pattern {
    fn from(s: &str) -> Self {
        Pattern::new(s)
    }
}

impl From<String> for Pattern {
    fn from(s: String) -> Self {
        Pattern(s)
    }
}

impl std::fmt::Display for Pattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Glob matching with `*` and `?`, linear in practice: on a mismatch after a `*`, the
/// star absorbs one more character and matching resumes from there.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_exact_kinds_prefixes_and_globs() {
        let m = |p: &str, k: &str| Pattern::new(p).matches(k);
        assert!(m("traffic.spike", "traffic.spike"));
        assert!(!m("traffic.spike", "traffic.spiked"));
        assert!(!m("traffic.spike", "traffic"));
        assert!(m("traffic.*", "traffic.spike"));
        assert!(m("traffic.*", "traffic."));
        assert!(!m("traffic.*", "traffic"));
        assert!(!m("traffic.*", "sale.started"));
        assert!(m("*", "anything.at.all"));
        assert!(m("az.*ed", "az.degraded"));
        assert!(m("az.*ed", "az.recovered"));
        assert!(!m("az.*ed", "az.degrading"));
        assert!(m("sale.?nded", "sale.ended"));
        assert!(m("*.*.*", "a.b.c"));
        assert!(!m("*.*.*", "a.b"));
    }

    #[test]
    fn fields_are_typed_and_missing_ones_are_named() {
        let e = Event::new("traffic.spike", serde_json::json!({"requests_per_second": 2600, "zone": 3}));
        assert_eq!(e.field::<u32>("requests_per_second").unwrap(), 2600);
        let missing = e.field::<u32>("rps").unwrap_err().to_string();
        assert!(missing.contains("no field `rps`"), "{missing}");
        let wrong = e.field::<String>("zone").unwrap_err().to_string();
        assert!(wrong.contains("payload field `zone` is 3"), "{wrong}");
    }

    #[test]
    fn fresh_events_have_distinct_ids() {
        let a = Event::new("x", Value::Null);
        let b = Event::new("x", Value::Null);
        assert_ne!(a.id, b.id);
    }
}
