//! SQS: queues.

pub mod queue;
pub mod source;

pub use queue::{Queue, QueueRef, QUEUE};
pub use source::{event_from_message, EventSource};

pub(crate) fn register(kinds: &mut crate::kind::Kinds) {
    kinds.insert(QUEUE.token, &queue::QueueKind);
}
