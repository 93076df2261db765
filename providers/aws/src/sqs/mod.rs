//! SQS: queues.

pub mod queue;
pub mod queue_policy;

pub use queue::{Queue, QueueRef, QUEUE};
pub use queue_policy::{QueuePolicy, QueuePolicyRef, QUEUE_POLICY};

pub(crate) fn register(kinds: &mut crate::kind::Kinds) {
    kinds.insert(QUEUE.token, &queue::QueueKind);
    kinds.insert(QUEUE_POLICY.token, &queue_policy::QueuePolicyKind);
}
