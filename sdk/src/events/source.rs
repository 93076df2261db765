//! Sources: what feeds a stack's reconciler events while a process leads the stack.

use async_trait::async_trait;

use super::Events;
use crate::stack::BoxError;
use crate::StackState;

/// A source of events for one stack: a queue, a schedule, anything that produces events
/// on its own.
///
/// `watch` starts a stack's sources once it leads the stack (a standby starts none, so
/// an SQS message stays in its queue for the leader), each on a task of its own, with
/// the stack's state as of then and a handle on its reconciler. The reconciler stopping
/// closes `events`; a source then returns `Ok`. An error stops that source only:
/// `watch` prints it, naming the source and the stack, and goes on serving.
///
/// [`Schedule`](super::Schedule) is one; `cairn_aws::events::SqsSource` another. The
/// webhook is not: it is the HTTP server's route, serving every stack on one port and
/// answering before this process leads them; it reads the same
/// [`Envelope`](super::Envelope).
///
/// ```
/// use cairn_sdk::events::{Event, Events, Source};
/// use cairn_sdk::{BoxError, StackState};
///
/// /// One `deploy.requested` event when the stack is first led.
/// struct OnStart;
///
/// #[cairn_sdk::async_trait]
/// impl Source for OnStart {
///     fn name(&self) -> String {
///         "on-start".to_owned()
///     }
///
///     async fn run(&self, state: &StackState, events: Events) -> Result<(), BoxError> {
///         let event = Event::new("deploy.requested", serde_json::json!({ "serial": state.serial }));
///         // Closed means the reconciler stopped: nothing is lost, the source just ends.
///         let _ = events.submit(event.with_source(self.name())).await;
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// The label `watch` prints and that a failure names: `sqs:events`,
    /// `schedule:traffic.peak_hours`. It need not be the `source` of the events it
    /// makes (an SQS source is named after the queue's logical name, its events after
    /// the queue's name in AWS).
    fn name(&self) -> String;

    /// Submits events to `events` until the reconciler behind it stops (then `Ok`), or
    /// fails. `state` is the stack's state when this process began to lead it.
    async fn run(&self, state: &StackState, events: Events) -> Result<(), BoxError>;
}
