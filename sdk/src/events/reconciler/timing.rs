//! When the reconciler acts: debounce, cooldowns and the backoff of failed applies.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::{sleep_until, Instant};

use super::queue::Delivery;
use super::Reconciler;
use crate::events::Pattern;

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

impl<S> Reconciler<S>
where
    S: Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static,
{
    pub(super) fn receive(&mut self, d: Option<Delivery>) {
        match d {
            Some(d) => self.held.push_back(d),
            None => self.closed = true,
        }
    }

    pub(super) fn drop_held(&mut self) {
        let n = self.held.len() as i64;
        self.held.clear();
        self.metrics.pending_add(-n);
    }

    pub(super) fn is_cooling(&self, kind: &str, now: Instant) -> bool {
        self.options.cooldowns.iter().zip(&self.cooling).any(|((p, _), until)| until.is_some_and(|u| u > now) && p.matches(kind))
    }

    pub(super) fn has_ready(&self, now: Instant) -> bool {
        self.held.iter().any(|d| !self.is_cooling(&d.event.kind, now))
    }

    pub(super) fn take_ready(&mut self, now: Instant) -> Vec<Delivery> {
        let (ready, cooling): (Vec<_>, Vec<_>) = self.held.drain(..).partition(|d| {
            !self.options.cooldowns.iter().zip(&self.cooling).any(|((p, _), until)| until.is_some_and(|u| u > now) && p.matches(&d.event.kind))
        });
        self.held = cooling.into();
        ready
    }

    /// The next time something becomes due: a retry, or the end of a cooldown that
    /// holds an event.
    pub(super) fn next_deadline(&self) -> Option<Instant> {
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
    pub(super) async fn debounce(&mut self, debounce: Debounce, shutdown: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>) -> bool {
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
}
