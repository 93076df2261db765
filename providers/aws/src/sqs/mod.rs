//! SQS: queues.

pub mod queue;

pub use queue::{Queue, QueueRef, QUEUE};
