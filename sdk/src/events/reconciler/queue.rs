//! The way in: [`Events`] for sources, the [`Inbox`] the reconciler takes them from,
//! and the [`Receipt`] that tells a source when its event is recorded.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::super::audit::AuditOutcome;
use super::super::metrics::{Metrics, Status};
use super::super::rules::Rejection;
use super::super::Event;

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
    pub(super) fn audited(&self) -> AuditOutcome {
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

pub(super) struct Delivery {
    pub(super) event: Event,
    pub(super) received: Instant,
    pub(super) ack: Option<oneshot::Sender<Outcome>>,
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
    pub(super) rx: mpsc::Receiver<Delivery>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) status: Arc<Mutex<Status>>,
}

impl Inbox {
    /// The status document the reconciler made from this inbox will keep current;
    /// until then, whoever made the inbox keeps it.
    pub fn status(&self) -> Arc<Mutex<Status>> {
        self.status.clone()
    }
}

/// A way in for sources and its inbox, queueing up to `queue` events (see
/// [`ReconcilerOptions::queue`](super::ReconcilerOptions::queue)); [`Reconciler::from_inbox`](super::Reconciler::from_inbox) takes the inbox.
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
