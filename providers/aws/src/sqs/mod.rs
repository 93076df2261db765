//! SQS: queues.

pub mod queue;

pub use queue::{Queue, QueueRef, QUEUE};

pub(crate) fn register(kinds: &mut crate::kind::Kinds) {
    kinds.insert(QUEUE.token, &queue::QueueKind);
}
