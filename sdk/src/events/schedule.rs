//! The schedule source: events at an interval or on a cron expression.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;

use async_trait::async_trait;

use super::reconciler::{Events, EventsClosed};
use super::{now_ms, Event, Source};
use crate::stack::BoxError;
use crate::StackState;

/// A cron expression or interval that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("schedule for {kind}: cron expression '{expr}' is not valid: {reason}; use five fields, minute hour day-of-month month day-of-week, such as '0 8 * * MON-FRI'")]
    Cron {
        /// The event kind it was for.
        kind: String,
        /// The expression.
        expr: String,
        /// What the parser said.
        reason: String,
    },
    /// A zero interval.
    #[error("schedule for {kind}: the interval must be longer than zero")]
    ZeroInterval {
        /// The event kind it was for.
        kind: String,
    },
}

#[derive(Clone, Debug)]
enum When {
    Every(Duration),
    Cron(Box<croner::Cron>),
}

/// Emits an event of one kind on a schedule. Times are UTC.
///
/// Each firing's id is `schedule:<kind>:<time in ms>`, so two watchers of the same
/// stack (or a restart within the same minute) never apply one firing twice.
#[derive(Clone, Debug)]
pub struct Schedule {
    kind: String,
    payload: Value,
    when: When,
}

impl Schedule {
    /// An event of `kind` every `period`, the first one `period` from now.
    pub fn every(period: Duration, kind: impl Into<String>) -> Result<Self, ScheduleError> {
        let kind = kind.into();
        if period.is_zero() {
            return Err(ScheduleError::ZeroInterval { kind });
        }
        Ok(Schedule { kind, payload: Value::Null, when: When::Every(period) })
    }

    /// An event of `kind` at the times a five-field cron expression names
    /// (`"0 8 * * MON-FRI"`: 08:00 UTC on weekdays).
    pub fn cron(expr: &str, kind: impl Into<String>) -> Result<Self, ScheduleError> {
        let kind = kind.into();
        let cron = croner::Cron::from_str(expr)
            .map_err(|e| ScheduleError::Cron { kind: kind.clone(), expr: expr.to_owned(), reason: e.to_string() })?;
        Ok(Schedule { kind, payload: Value::Null, when: When::Cron(Box::new(cron)) })
    }

    /// The payload every firing carries.
    #[must_use]
    pub fn payload(mut self, payload: Value) -> Self {
        self.payload = payload;
        self
    }

    /// The kind of event it emits.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The first firing strictly after `time_ms` (ms since the epoch), for cron
    /// schedules; interval schedules count from when they start.
    pub fn next_after(&self, time_ms: u64) -> Option<u64> {
        match &self.when {
            When::Every(period) => Some(time_ms + period.as_millis() as u64),
            When::Cron(cron) => {
                let now: DateTime<Utc> = Utc.timestamp_millis_opt(time_ms as i64).single()?;
                let next = cron.find_next_occurrence(&now, false).ok()?;
                u64::try_from(next.timestamp_millis()).ok()
            }
        }
    }

    fn event_at(&self, time_ms: u64) -> Event {
        Event::new(self.kind.clone(), self.payload.clone())
            .with_id(format!("schedule:{}:{time_ms}", self.kind))
            .with_source("schedule")
            .with_time_ms(time_ms)
    }

    /// Sends the schedule's events to `events` until the reconciler stops, returning as
    /// soon as it does (not at the next firing). Interval schedules run on tokio's clock
    /// (so tests can pause it); cron schedules on the wall clock.
    async fn fire(&self, events: &Events) -> EventsClosed {
        let firings = async {
            match &self.when {
                When::Every(period) => {
                    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + *period, *period);
                    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let start = now_ms();
                    let started = tokio::time::Instant::now();
                    loop {
                        let tick = ticker.tick().await;
                        let at = start + tick.duration_since(started).as_millis() as u64;
                        if let Err(closed) = events.submit(self.event_at(at)).await {
                            return closed;
                        }
                    }
                }
                When::Cron(_) => loop {
                    let now = now_ms();
                    let Some(next) = self.next_after(now) else { return EventsClosed };
                    tokio::time::sleep(Duration::from_millis(next.saturating_sub(now))).await;
                    if let Err(closed) = events.submit(self.event_at(next)).await {
                        return closed;
                    }
                },
            }
        };
        tokio::select! {
            closed = firings => closed,
            () = events.closed() => EventsClosed,
        }
    }
}

/// `watch` runs a schedule as a source named `schedule:<kind>`; its events come from
/// source `schedule`.
#[async_trait]
impl Source for Schedule {
    fn name(&self) -> String {
        format!("schedule:{}", self.kind)
    }

    /// Never fails: it ends when the reconciler stops.
    async fn run(&self, _state: &StackState, events: Events) -> Result<(), BoxError> {
        self.fire(&events).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cron_schedules_fire_at_the_named_times() {
        // 2026-11-20 is a Friday.
        let friday_0730 = Utc.with_ymd_and_hms(2026, 11, 20, 7, 30, 0).unwrap().timestamp_millis() as u64;
        let s = Schedule::cron("0 8 * * MON-FRI", "traffic.peak_hours").unwrap();
        let next = s.next_after(friday_0730).unwrap();
        assert_eq!(next, Utc.with_ymd_and_hms(2026, 11, 20, 8, 0, 0).unwrap().timestamp_millis() as u64);
        // After Friday's firing, the next is Monday's.
        let monday = s.next_after(next).unwrap();
        assert_eq!(monday, Utc.with_ymd_and_hms(2026, 11, 23, 8, 0, 0).unwrap().timestamp_millis() as u64);
        assert_eq!(s.event_at(next).id, format!("schedule:traffic.peak_hours:{next}"));
    }

    #[test]
    fn bad_schedules_say_what_to_write() {
        let e = Schedule::cron("every morning", "x").unwrap_err().to_string();
        assert!(e.contains("cron expression 'every morning' is not valid") && e.contains("0 8 * * MON-FRI"), "{e}");
        assert!(Schedule::every(Duration::ZERO, "x").is_err());
    }
}
