//! Events from AWS: [`SqsSource`], a source that feeds a stack's reconciler from an SQS
//! queue, and [`event_from_message`], how a message body becomes an [`Event`].
//!
//! ```no_run
//! # async fn run(state: &cairn_sdk::StackState, events: cairn_sdk::events::Events) -> Result<(), cairn_sdk::BoxError> {
//! use cairn_aws::events::SqsSource;
//! use cairn_sdk::events::Source;
//!
//! // The queue the program declares as `Queue::new("events")`, its URL read from the
//! // state. With the `cairn` crate, `Cli::new(..).source(SqsSource::queue("events"))`
//! // has `watch` run it for each stack it leads.
//! SqsSource::queue("events").run(state, events).await
//! # }
//! ```
//!
//! Delivery is at least once and nothing is lost:
//! - a message is deleted only after [`Receipt::recorded`] says its effect on the user
//!   state is durable, whatever the outcome (accepted, rejected, duplicate: each is a
//!   durable record, and delivering it again would change nothing);
//! - while it waits for that, its visibility timeout is extended, so a long apply does
//!   not make SQS hand it out again;
//! - if the reconciler stops first, the message is made visible again at once and is
//!   redelivered. SQS cannot take back the long poll under way, which takes such a
//!   message as soon as it sees it: the source waits up to 2 s for that poll's answer
//!   and releases what it took. A message the poll takes later (after that wait, or
//!   after the process exited) comes back when its visibility timeout ends;
//! - a message whose effect was recorded but whose deletion was lost (a crash in
//!   between) comes back with the same SQS `MessageId`, hence the same event id, and
//!   the reconciler skips it as a duplicate.
//!
//! Message bodies understood (see [`event_from_message`]): EventBridge events (a rule
//! with the queue as target), CloudWatch alarm state changes (through EventBridge, or
//! an alarm's SNS notification, raw or in its SNS envelope), and Cairn's own
//! [`Envelope`], read by the same rules as the webhook. Anything else becomes an
//! [`UNRECOGNIZED`] event carrying the raw body: recorded in the audit log (as
//! unhandled, unless a handler takes it) and deleted, never dropped silently and never
//! redelivered forever.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::config::retry::{ClassifyRetry, RetryAction, RetryConfig, RetryPartition};
use aws_sdk_sqs::operation::receive_message::ReceiveMessageError;
use aws_sdk_sqs::types::{Message, MessageSystemAttributeName};
use aws_sdk_sqs::Client;
use aws_smithy_runtime_api::client::interceptors::context::InterceptorContext;
use aws_smithy_runtime_api::client::orchestrator::OrchestratorError;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_runtime_api::client::retries::classifiers::RetryClassifierPriority;
use aws_smithy_types::date_time::{DateTime, Format};
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use cairn_sdk::events::{Envelope, Event, Events, Receipt, Source};
use cairn_sdk::{BoxError, StackState, Urn};
use serde_json::{Map, Value};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

use crate::error::code;
use crate::sqs::QUEUE;

/// The kind of an event made from a message body that is none of the formats
/// understood; its payload is the raw body, as a string.
pub const UNRECOGNIZED: &str = "sqs.unrecognized";

/// The EventBridge `detail-type` of a CloudWatch alarm's state change.
pub const ALARM_STATE_CHANGE: &str = "CloudWatch Alarm State Change";

/// How long one receive call waits for a message: SQS's longest long poll.
const WAIT_SECONDS: i32 = 20;
/// The most messages one receive call returns: SQS's limit.
const BATCH: i32 = 10;
/// How long a received message stays invisible, renewed while its receipt is awaited.
const DEFAULT_EXTENSION: Duration = Duration::from_secs(60);
/// SQS's longest visibility timeout.
const MAX_VISIBILITY: Duration = Duration::from_secs(43_200);
/// How long a stopping source waits for its last long poll to take back the messages
/// it released (SQS answers at once; the local AWS looks once a second).
const RETAKE_WAIT: Duration = Duration::from_secs(2);
/// Messages awaiting their receipt before the source stops receiving more.
const MAX_IN_FLIGHT: usize = 100;
/// The longest wait between two tries of a failing call.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Which queue a source reads.
#[derive(Clone, Debug)]
enum QueueAt {
    /// An `aws:sqs:Queue` of the stack, by logical name: its URL is read from the state.
    Declared(String),
    /// A queue URL.
    Url(String),
    /// A queue URL the stack exports as an output (`cx.export(name, queue.url())`).
    Output(String),
}

/// A source of events: one SQS queue.
///
/// It long-polls the queue (20 s, up to 10 messages a call), submits each message as an
/// [`Event`] from source `sqs:<queue name>`, and deletes the message once its
/// [`Receipt`] says it is recorded. See the [module docs](self) for the guarantees.
///
/// Failing calls are retried by the SDK's standard retry strategy (throttling, 5xx,
/// connection errors), configured by [`retries`](Self::retries); a permanent error
/// (the queue does not exist, access denied) stops the source at once.
#[derive(Clone, Debug)]
pub struct SqsSource {
    queue: QueueAt,
    client: Option<Client>,
    extension: Option<Duration>,
    attempts: u32,
    first_delay: Duration,
}

impl SqsSource {
    /// A source reading the queue the stack's program declares as `logical_name`
    /// (`Queue::new(logical_name)`); its URL is read from the stack's state when the
    /// source starts, so the stack must have been deployed.
    pub fn queue(logical_name: impl Into<String>) -> Self {
        Self::at(QueueAt::Declared(logical_name.into()))
    }

    /// A source reading the queue whose URL the stack exports as output `name`
    /// (`cx.export(name, queue.url())`), read when the source starts.
    pub fn output(name: impl Into<String>) -> Self {
        Self::at(QueueAt::Output(name.into()))
    }

    /// A source reading the queue at `url`, which need not belong to the stack.
    pub fn url(url: impl Into<String>) -> Self {
        Self::at(QueueAt::Url(url.into()))
    }

    fn at(queue: QueueAt) -> Self {
        SqsSource { queue, client: None, extension: None, attempts: 10, first_delay: Duration::from_millis(500) }
    }

    /// The SQS client to use. Without one, a client is configured from the standard
    /// AWS chain when the source starts (environment, profile, IMDS;
    /// `AWS_ENDPOINT_URL` is honoured).
    #[must_use]
    pub fn client(mut self, client: Client) -> Self {
        self.client = Some(client);
        self
    }

    /// How long a received message stays invisible to other consumers while the
    /// reconciler has not recorded it (whole seconds from 1 s to 12 h). It is renewed
    /// every third of that for as long as the wait lasts, so it bounds how soon a
    /// message comes back after a crash, not how long an apply may take. Default:
    /// `CAIRN_SQS_VISIBILITY` (whole seconds) if set, else 60 s.
    #[must_use]
    pub fn visibility_extension(mut self, extension: Duration) -> Self {
        self.extension = Some(extension);
        self
    }

    /// How a failing receive call is retried before [`run`](Source::run) gives up:
    /// `attempts` tries in all (at least 1), with the SDK's exponential backoff with
    /// jitter from `first_delay`, 30 s at most between two (default: 10 tries from
    /// 500 ms, about a minute of failures on average). Every error is retried but those
    /// no retry mends (the queue does not exist, access is denied, the credentials are
    /// refused), which stop the source at once.
    #[must_use]
    pub fn retries(mut self, attempts: u32, first_delay: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.first_delay = first_delay;
        self
    }

    /// The URL of the queue declared as `aws:sqs:Queue` `logical_name` in a stack's
    /// state (its `url` output), if the stack has created it.
    pub fn queue_url_in(state: &StackState, logical_name: &str) -> Option<String> {
        let resource = state.resource(&Urn::new(&state.stack, QUEUE.token, logical_name))?;
        resource.outputs.get("url").and_then(Value::as_str).filter(|url| !url.is_empty()).map(str::to_owned)
    }

    /// The URL of the queue this source reads for the stack in `state`.
    pub fn url_for(&self, state: &StackState) -> Result<String, SqsSourceError> {
        match &self.queue {
            QueueAt::Url(url) => Ok(url.clone()),
            QueueAt::Declared(name) => Self::queue_url_in(state, name)
                .ok_or_else(|| SqsSourceError::NotDeployed { stack: state.stack.clone(), queue: name.clone() }),
            QueueAt::Output(name) => match state.outputs.get(name) {
                Some(Value::String(url)) if !url.is_empty() => Ok(url.clone()),
                found => Err(SqsSourceError::NoOutput { stack: state.stack.clone(), output: name.clone(), found: found.cloned() }),
            },
        }
    }

    fn extension(&self) -> Duration {
        let from_env = || std::env::var("CAIRN_SQS_VISIBILITY").ok()?.parse::<u64>().ok().map(Duration::from_secs);
        self.extension.or_else(from_env).unwrap_or(DEFAULT_EXTENSION).clamp(Duration::from_secs(1), MAX_VISIBILITY)
    }

    /// `client`, retrying `attempts` times from `first_delay`.
    fn retrying(client: &Client, attempts: u32, first_delay: Duration) -> aws_sdk_sqs::config::Builder {
        let retry = RetryConfig::standard().with_max_attempts(attempts).with_initial_backoff(first_delay).with_max_backoff(MAX_BACKOFF);
        client.config().to_builder().retry_config(retry)
    }
}

/// The last segment of a queue URL: the queue's name.
fn queue_name(url: &str) -> String {
    url.trim_end_matches('/').rsplit('/').next().unwrap_or_default().to_owned()
}

/// Why an [`SqsSource`] stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SqsSourceError {
    /// [`SqsSource::queue`] names a queue the stack's state has no URL for.
    #[error("the SQS event source cannot start: stack '{stack}' has no aws:sqs:Queue '{queue}' with a URL in its state; declare it in the program and run `up` first")]
    NotDeployed {
        /// The stack.
        stack: String,
        /// The logical name.
        queue: String,
    },
    /// [`SqsSource::output`] names an output the stack's state has no URL in.
    #[error("the SQS event source cannot start: stack '{stack}' has no output '{output}' holding a queue URL{}; export it with cx.export(\"{output}\", queue.url()) and run `up` first", found.as_ref().map(|v| format!(" (it holds {v})")).unwrap_or_default())]
    NoOutput {
        /// The stack.
        stack: String,
        /// The output's name.
        output: String,
        /// What the output holds instead, if anything.
        found: Option<Value>,
    },
    /// Receiving messages failed for good: an error no retry mends (the queue does not
    /// exist, access is denied), or one that outlasted the retries.
    #[error("the SQS event source for queue {queue} ({url}) stopped: receiving messages failed: {message}")]
    Receive {
        /// The queue's name.
        queue: String,
        /// Its URL.
        url: String,
        /// What AWS or the connection said, and what to check.
        message: String,
        /// The SDK's error.
        #[source]
        source: BoxError,
    },
}

#[async_trait]
impl Source for SqsSource {
    /// `sqs:<logical name>`, `sqs:output:<output name>` or, for a URL,
    /// `sqs:<queue name>`. Its events carry `sqs:<queue name>` as their source: the name
    /// in AWS, which for a queue with an auto-name has a suffix.
    fn name(&self) -> String {
        match &self.queue {
            QueueAt::Declared(name) => format!("sqs:{name}"),
            QueueAt::Output(name) => format!("sqs:output:{name}"),
            QueueAt::Url(url) => format!("sqs:{}", queue_name(url)),
        }
    }

    /// Receives messages and hands them to `events` until the reconciler behind it
    /// stops, then waits for the messages in flight to be deleted (if recorded) or made
    /// visible again (if not), and returns `Ok`.
    ///
    /// Fails with an [`SqsSourceError`]: at once when the queue is not deployed, does
    /// not exist or access is denied; after the [retries](SqsSource::retries) when
    /// SQS keeps failing. Messages in flight are settled first in that case too.
    async fn run(&self, state: &StackState, events: Events) -> Result<(), BoxError> {
        let url = self.url_for(state)?;
        let client = match &self.client {
            Some(client) => client.clone(),
            None => Client::new(&aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await),
        };
        // Receives retry every error but the permanent ones, with a retry budget of
        // their own: failing deletes and renewals must not use up the receives' retries.
        let receiver = Self::retrying(&client, self.attempts, self.first_delay)
            .retry_classifier(RetryUnlessPermanent)
            .retry_partition(RetryPartition::new("cairn-sqs-source-receive"))
            .build();
        let poller = Poller {
            receiver: Client::from_conf(receiver),
            // Deletes and visibility changes: a few quick tries. A message whose deletion
            // fails for good is delivered again, and recognised as a duplicate.
            settler: Client::from_conf(Self::retrying(&client, 4, Duration::from_millis(250)).build()),
            queue_name: queue_name(&url),
            url,
            extension: self.extension(),
        };
        Ok(poller.run(events).await?)
    }
}

/// A running source.
#[derive(Clone)]
struct Poller {
    receiver: Client,
    settler: Client,
    url: String,
    queue_name: String,
    extension: Duration,
}

impl Poller {
    async fn run(&self, events: Events) -> Result<(), SqsSourceError> {
        let mut in_flight: JoinSet<Settled> = JoinSet::new();
        // Messages handed to the reconciler and made visible again because it stopped
        // before recording them.
        let mut released = 0;
        let released_by = |settled: Option<Result<Settled, _>>| usize::from(matches!(settled, Some(Ok(Settled::Released))));
        let (result, mut poll) = loop {
            while let Some(settled) = in_flight.try_join_next() {
                released += released_by(Some(settled));
            }
            if in_flight.len() >= MAX_IN_FLIGHT {
                // Their receipts resolve when the reconciler records them or stops.
                released += released_by(in_flight.join_next().await);
                continue;
            }
            let mut answer = self.start_receive();
            let received = tokio::select! {
                biased;
                () = events.closed() => break (Ok(()), Some(answer)),
                received = &mut answer => received.expect("the long poll's task answers unless it panicked"),
            };
            let messages = match received {
                Ok(messages) => messages,
                Err(e) => break (Err(e), None),
            };
            let mut closed = false;
            for message in messages {
                let Some(pending) = self.pending(&message) else { continue };
                if closed {
                    pending.release().await;
                    continue;
                }
                match events.submit(self.event_of(&message)).await {
                    Ok(receipt) => {
                        in_flight.spawn(pending.acknowledge(receipt, self.extension));
                    }
                    Err(_) => {
                        closed = true;
                        pending.release().await;
                    }
                }
            }
            if closed {
                break (Ok(()), None);
            }
        };
        while let Some(settled) = in_flight.join_next().await {
            released += released_by(Some(settled));
        }
        // The long poll under way when the reconciler stopped takes the messages just
        // released as soon as it sees them (SQS answers then; the local AWS looks once
        // a second): wait that long for its answer, and release them again. Otherwise
        // what it has answered already is released here, and what it answers later by
        // its task, if the process lives that long.
        if let Some(answer) = &mut poll {
            if released > 0 {
                if let Ok(Ok(Ok(messages))) = tokio::time::timeout(RETAKE_WAIT, &mut *answer).await {
                    self.release(&messages).await;
                    return result;
                }
            }
            answer.close();
            if let Ok(Ok(messages)) = answer.try_recv() {
                self.release(&messages).await;
            }
        }
        result
    }

    /// The event a received message stands for.
    fn event_of(&self, message: &Message) -> Event {
        let sent_ms = message
            .attributes()
            .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
            .and_then(|t| t.parse::<u64>().ok());
        event_from_message(&self.queue_name, message.message_id().unwrap_or_default(), message.body().unwrap_or_default(), sent_ms)
    }

    /// Starts one long poll (the SDK retries it), for its answer.
    ///
    /// A long poll cannot be taken back: dropped, it would still take the messages
    /// that arrive (those the source releases as it stops included) and hide them for
    /// the visibility timeout, its answer lost. So the poll runs on a task of its own,
    /// and if the source has stopped waiting by the time it answers, the task releases
    /// what it took.
    fn start_receive(&self) -> oneshot::Receiver<Result<Vec<Message>, SqsSourceError>> {
        let (answer, answered) = oneshot::channel();
        let poller = self.clone();
        tokio::spawn(async move {
            if let Err(Ok(messages)) = answer.send(poller.long_poll().await) {
                poller.release(&messages).await;
            }
        });
        answered
    }

    /// Makes received messages visible again at once.
    async fn release(&self, messages: &[Message]) {
        for message in messages {
            if let Some(pending) = self.pending(message) {
                pending.release().await;
            }
        }
    }

    async fn long_poll(&self) -> Result<Vec<Message>, SqsSourceError> {
        let call = self
            .receiver
            .receive_message()
            .queue_url(&self.url)
            .wait_time_seconds(WAIT_SECONDS)
            .max_number_of_messages(BATCH)
            .visibility_timeout(seconds(self.extension))
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await;
        call.map(|out| out.messages.unwrap_or_default()).map_err(|e| SqsSourceError::Receive {
            queue: self.queue_name.clone(),
            url: self.url.clone(),
            message: describe(&e),
            source: Box::new(e),
        })
    }

    /// A received message's handle, to delete it or release it.
    fn pending(&self, message: &Message) -> Option<Pending> {
        let handle = message.receipt_handle()?.to_owned();
        Some(Pending { client: self.settler.clone(), url: self.url.clone(), handle })
    }
}

/// How a message handed to the reconciler was settled.
enum Settled {
    /// Recorded, so deleted.
    Deleted,
    /// Made visible again: the reconciler stopped before recording it.
    Released,
}

/// A received message not yet deleted.
struct Pending {
    client: Client,
    url: String,
    handle: String,
}

impl Pending {
    /// Waits for `receipt`, keeping the message invisible meanwhile; then deletes it if
    /// it was recorded, or makes it visible again if the reconciler stopped first.
    async fn acknowledge(self, receipt: Receipt, extension: Duration) -> Settled {
        let recorded = receipt.recorded();
        tokio::pin!(recorded);
        let every = (extension / 3).max(Duration::from_millis(500));
        let mut renewing = true;
        let outcome = loop {
            tokio::select! {
                outcome = &mut recorded => break outcome,
                () = tokio::time::sleep(every) => {
                    if renewing {
                        // Best effort: a failure here at worst lets the message come back
                        // early, and its id makes it a duplicate then.
                        renewing = self.set_visibility(seconds(extension)).await;
                    }
                }
            }
        };
        match outcome {
            // Best effort: a message whose deletion fails is delivered again, and
            // recognised as a duplicate.
            Ok(_) => {
                drop(self.client.delete_message().queue_url(&self.url).receipt_handle(&self.handle).send().await);
                Settled::Deleted
            }
            Err(_) => {
                self.release().await;
                Settled::Released
            }
        }
    }

    /// Makes the message visible again at once, for redelivery (best effort: otherwise
    /// it comes back when its visibility timeout ends).
    async fn release(&self) {
        self.set_visibility(0).await;
    }

    /// Whether the change was accepted.
    async fn set_visibility(&self, seconds: i32) -> bool {
        let call = self
            .client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(&self.handle)
            .visibility_timeout(seconds)
            .send()
            .await;
        call.is_ok()
    }
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// Error codes no retry mends: the queue is not there, or this caller may not use it.
const PERMANENT: [&str; 7] = [
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "InvalidAddress",
];

/// Retries a failed receive unless its error code is [`PERMANENT`]: the SDK's own
/// classifiers retry only throttling, transient and 5xx errors, and a source that
/// stops on anything else (a KMS throttle, an unknown code) stops reading its queue.
#[derive(Debug)]
struct RetryUnlessPermanent;

impl ClassifyRetry for RetryUnlessPermanent {
    fn classify_retry(&self, ctx: &InterceptorContext) -> RetryAction {
        let Some(Err(error)) = ctx.output_or_error() else { return RetryAction::NoActionIndicated };
        let code = OrchestratorError::as_operation_error(error).and_then(|e| e.downcast_ref::<ReceiveMessageError>()).and_then(|e| e.code());
        match code {
            Some(code) if PERMANENT.contains(&code) => RetryAction::RetryForbidden,
            Some(_) => RetryAction::transient_error(),
            // Not a service error: the SDK's classifiers judge it (I/O, timeouts).
            None => RetryAction::NoActionIndicated,
        }
    }

    fn classify_retry_v2(&self, ctx: &InterceptorContext, previous: &RetryAction) -> RetryAction {
        match self.classify_retry(ctx) {
            // What the SDK already retries (throttling, 5xx) keeps its own kind of retry.
            RetryAction::RetryIndicated(_) if previous.should_retry() => RetryAction::NoActionIndicated,
            action => action,
        }
    }

    fn name(&self) -> &'static str {
        "cairn: retry SQS receives unless the error is permanent"
    }

    fn priority(&self) -> RetryClassifierPriority {
        RetryClassifierPriority::run_after(RetryClassifierPriority::transient_error_classifier())
    }
}

/// What a failed SQS call said, and what to check.
fn describe<E, R>(e: &SdkError<E, R>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match (e, code(e)) {
        (SdkError::ServiceError(service), Some(code)) => {
            let message = service.err().message().unwrap_or("no message").trim_end_matches('.');
            let hint = match code {
                "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" => {
                    "; check the queue URL (SqsSource::queue reads it from the stack's state) and the region"
                }
                _ if PERMANENT.contains(&code) => "; check the credentials, the region and the queue's access policy",
                _ => "",
            };
            format!("{code}: {message}{hint}")
        }
        _ => match std::error::Error::source(e) {
            Some(source) => format!("{e}: {source}; check the network, AWS_ENDPOINT_URL and AWS_REGION"),
            None => e.to_string(),
        },
    }
}

// ---------------------------------------------------------------------------------------
// Message bodies

/// The event an SQS message stands for: its kind, payload, id and time from the body,
/// from source `sqs:<queue_name>`.
///
/// | body | kind | payload | id |
/// | --- | --- | --- | --- |
/// | EventBridge event (`detail-type`, `source`, `detail`, `id`, `time`) | its `detail-type` | its `detail` | its `id` |
/// | EventBridge `CloudWatch Alarm State Change` | `alarm.<alarm name>.<state>`, such as `alarm.web-cpu-high.alarm` | its `detail` | its `id` |
/// | CloudWatch alarm notification (`AlarmName`, `NewStateValue`, as SNS sends it) | `alarm.<AlarmName>.<NewStateValue>` | the whole body | `sqs:<MessageId>` |
/// | SNS envelope (`"Type": "Notification"`, `Message`, `MessageId`) | that of its `Message`, read as a body | | the message's own, or the SNS `MessageId` |
/// | Cairn's [`Envelope`]: `{"kind": ..., "payload": {...}, "id": ..., "time_ms": ...}` | `kind` | `payload` (`{}` if left out) | `id` |
/// | anything else | [`UNRECOGNIZED`] | the raw body, as a string | `sqs:<MessageId>` |
///
/// States are lowercased (`ALARM`, `OK`, `INSUFFICIENT_DATA` give `alarm`, `ok`,
/// `insufficient_data`). Without an id of its own, a message's id is `sqs:<MessageId>`:
/// SQS keeps the `MessageId` when it delivers a message again, so a redelivery is
/// recognised as a duplicate. The time is the body's (`time`, `StateChangeTime`,
/// `Timestamp` or `time_ms`), else `sent_ms` (when SQS received it), else now.
pub fn event_from_message(queue_name: &str, message_id: &str, body: &str, sent_ms: Option<u64>) -> Event {
    let recognised = serde_json::from_str::<Value>(body).ok().as_ref().and_then(recognise);
    let fallback_id = || format!("sqs:{message_id}");
    let (event, time_ms) = match recognised {
        Some(r) => (Event::new(r.kind, r.payload).with_id(r.id.unwrap_or_else(fallback_id)), r.time_ms),
        None => (Event::new(UNRECOGNIZED, Value::String(body.to_owned())).with_id(fallback_id()), None),
    };
    let event = event.with_source(format!("sqs:{queue_name}"));
    match time_ms.or(sent_ms) {
        Some(t) => event.with_time_ms(t),
        None => event,
    }
}

/// What a recognised body says.
#[derive(Debug, PartialEq)]
struct Recognised {
    kind: String,
    payload: Value,
    id: Option<String>,
    time_ms: Option<u64>,
}

fn text<'a>(body: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    body.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// An id given as a non-empty string or a number.
fn id(body: &Map<String, Value>, key: &str) -> Option<String> {
    match body.get(key)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn time(body: &Map<String, Value>, key: &str) -> Option<u64> {
    text(body, key).and_then(parse_time_ms)
}

fn alarm_kind(name: &str, state: &str) -> String {
    format!("alarm.{name}.{}", state.to_ascii_lowercase())
}

fn recognise(body: &Value) -> Option<Recognised> {
    let obj = body.as_object()?;
    if let (Some(detail_type), Some(_)) = (text(obj, "detail-type"), text(obj, "source")) {
        let detail = match obj.get("detail") {
            // Some producers send the detail as JSON text; EventBridge itself sends an object.
            Some(Value::String(s)) => serde_json::from_str::<Value>(s).ok().filter(Value::is_object).unwrap_or_else(|| Value::String(s.clone())),
            Some(v) => v.clone(),
            None => Value::Null,
        };
        let alarm = (detail_type == ALARM_STATE_CHANGE)
            .then(|| {
                let name = detail.get("alarmName").and_then(Value::as_str).filter(|s| !s.is_empty())?;
                let state = detail.pointer("/state/value").and_then(Value::as_str).filter(|s| !s.is_empty())?;
                Some(alarm_kind(name, state))
            })
            .flatten();
        return Some(Recognised {
            kind: alarm.unwrap_or_else(|| detail_type.to_owned()),
            payload: detail,
            id: id(obj, "id"),
            time_ms: time(obj, "time"),
        });
    }
    if text(obj, "Type") == Some("Notification") {
        if let Some(message) = text(obj, "Message") {
            let mut inner = serde_json::from_str::<Value>(message).ok().as_ref().and_then(recognise)?;
            inner.id = inner.id.or_else(|| id(obj, "MessageId"));
            inner.time_ms = inner.time_ms.or_else(|| time(obj, "Timestamp"));
            return Some(inner);
        }
    }
    if let (Some(name), Some(state)) = (text(obj, "AlarmName"), text(obj, "NewStateValue")) {
        return Some(Recognised { kind: alarm_kind(name, state), payload: body.clone(), id: None, time_ms: time(obj, "StateChangeTime") });
    }
    if obj.contains_key("kind") {
        // Cairn's own envelope, by the rules the webhook applies too; a body that
        // breaks them is unrecognized, carrying its text for a handler to look at.
        let envelope = Envelope::from_value(body).ok()?;
        return Some(Recognised { kind: envelope.kind, payload: envelope.payload, id: envelope.id, time_ms: envelope.time_ms });
    }
    None
}

/// Milliseconds since the Unix epoch of an RFC 3339 time as AWS writes them:
/// `2024-05-01T12:00:00Z`, `2024-05-01T12:00:00.123Z`, and with an offset, which
/// CloudWatch writes without its colon (`2024-05-01T12:00:00.123+0000`).
fn parse_time_ms(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    let n = b.len();
    let compact_offset = n > 5 && matches!(b[n - 5], b'+' | b'-') && b[n - 4..].iter().all(u8::is_ascii_digit);
    let time = if compact_offset { format!("{}:{}", &s[..n - 2], &s[n - 2..]) } else { s.to_owned() };
    let t = DateTime::from_str(&time, Format::DateTimeWithOffset).ok()?;
    u64::try_from(t.to_millis().ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: &str) -> Event {
        event_from_message("shop-events", "m-1", body, Some(1_700_000_000_000))
    }

    #[test]
    fn a_source_on_an_output_reads_the_url_the_stack_exports_or_says_how_to_export_it() {
        let mut state = StackState::new("dev");
        let source = SqsSource::output("events_queue_url");
        let err = source.url_for(&state).unwrap_err().to_string();
        assert_eq!(
            err,
            "the SQS event source cannot start: stack 'dev' has no output 'events_queue_url' holding a queue URL; \
             export it with cx.export(\"events_queue_url\", queue.url()) and run `up` first"
        );
        state.outputs.insert("events_queue_url".into(), json!(3));
        assert!(source.url_for(&state).unwrap_err().to_string().contains("(it holds 3)"));
        state.outputs.insert("events_queue_url".into(), json!("http://sqs/123/events"));
        assert_eq!(source.url_for(&state).unwrap(), "http://sqs/123/events");
    }

    #[test]
    fn an_eventbridge_event_gives_its_detail_type_detail_id_and_time() {
        let body = json!({
            "version": "0",
            "id": "6a7e8feb-b491-4cf7-a9f1-bf3703467718",
            "detail-type": "traffic.spike",
            "source": "shop.traffic",
            "account": "123456789012",
            "time": "2024-05-01T12:00:00Z",
            "region": "us-east-1",
            "resources": [],
            "detail": {"requests_per_second": 2600}
        });
        let e = parse(&body.to_string());
        assert_eq!(e.kind, "traffic.spike");
        assert_eq!(e.payload, json!({"requests_per_second": 2600}));
        assert_eq!(e.id, "6a7e8feb-b491-4cf7-a9f1-bf3703467718");
        assert_eq!(e.source, "sqs:shop-events");
        assert_eq!(e.time_ms, 1_714_564_800_000);
    }

    #[test]
    fn an_eventbridge_event_without_an_id_keeps_the_message_id_and_text_detail_is_read() {
        let body = json!({"detail-type": "sale.started", "source": "shop", "detail": "{\"sku\": 7}"});
        let e = parse(&body.to_string());
        assert_eq!((e.kind.as_str(), e.id.as_str()), ("sale.started", "sqs:m-1"));
        assert_eq!(e.payload, json!({"sku": 7}));
        assert_eq!(e.time_ms, 1_700_000_000_000, "the time SQS received it");
    }

    #[test]
    fn an_alarm_state_change_through_eventbridge_is_named_after_the_alarm_and_state() {
        let detail = json!({
            "alarmName": "web-cpu-high",
            "state": {"value": "ALARM", "reason": "Threshold Crossed", "timestamp": "2024-05-01T12:00:05.000+0000"},
            "previousState": {"value": "OK"}
        });
        let body = json!({
            "id": "c4c1c1c9-6542-e61b-6ef0-8c4d36933a92",
            "detail-type": "CloudWatch Alarm State Change",
            "source": "aws.cloudwatch",
            "time": "2024-05-01T12:00:05Z",
            "detail": detail
        });
        let e = parse(&body.to_string());
        assert_eq!(e.kind, "alarm.web-cpu-high.alarm");
        assert_eq!(e.payload, detail);
        assert_eq!(e.id, "c4c1c1c9-6542-e61b-6ef0-8c4d36933a92");
        assert_eq!(e.time_ms, 1_714_564_805_000);

        // Without the alarm's name or state it is still an EventBridge event.
        let odd = json!({"detail-type": "CloudWatch Alarm State Change", "source": "aws.cloudwatch", "detail": {}});
        assert_eq!(parse(&odd.to_string()).kind, "CloudWatch Alarm State Change");
    }

    #[test]
    fn an_alarm_notification_as_sns_sends_it_raw_or_enveloped() {
        let alarm = json!({
            "AlarmName": "web-cpu-high",
            "AlarmDescription": null,
            "NewStateValue": "OK",
            "NewStateReason": "Threshold Crossed: 1 datapoint [12.0] was not greater than the threshold (70.0).",
            "StateChangeTime": "2024-05-01T12:10:00.250+0000",
            "OldStateValue": "ALARM"
        });
        let raw = parse(&alarm.to_string());
        assert_eq!(raw.kind, "alarm.web-cpu-high.ok");
        assert_eq!(raw.payload, alarm);
        assert_eq!(raw.id, "sqs:m-1");
        assert_eq!(raw.time_ms, 1_714_565_400_250);

        let envelope = json!({
            "Type": "Notification",
            "MessageId": "95df01b4-ee98-5cb9-9903-4c221d41eb5e",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:alarms",
            "Subject": "ALARM: \"web-cpu-high\"",
            "Message": json!({"AlarmName": "web-cpu-high", "NewStateValue": "INSUFFICIENT_DATA"}).to_string(),
            "Timestamp": "2024-05-01T12:10:01.000Z"
        });
        let sns = parse(&envelope.to_string());
        assert_eq!(sns.kind, "alarm.web-cpu-high.insufficient_data");
        assert_eq!(sns.id, "95df01b4-ee98-5cb9-9903-4c221d41eb5e", "the SNS message id");
        assert_eq!(sns.time_ms, 1_714_565_401_000);
    }

    #[test]
    fn cairns_own_format_gives_kind_payload_and_optional_id() {
        let e = parse(r#"{"kind": "traffic.spike", "payload": {"requests_per_second": 4000}, "id": "load-test-17"}"#);
        assert_eq!((e.kind.as_str(), e.id.as_str()), ("traffic.spike", "load-test-17"));
        assert_eq!(e.payload, json!({"requests_per_second": 4000}));
        assert_eq!(e.source, "sqs:shop-events");

        let bare = parse(r#"{"kind": "traffic.normal"}"#);
        assert_eq!((bare.kind.as_str(), bare.id.as_str(), &bare.payload), ("traffic.normal", "sqs:m-1", &json!({})));
        assert_eq!(parse(r#"{"kind": "x", "id": 42}"#).id, "42");
        assert_eq!(parse(r#"{"kind": "x", "time_ms": 5}"#).time_ms, 5);
    }

    #[test]
    fn anything_else_is_an_unrecognized_event_carrying_the_raw_body() {
        // Cairn's envelope breaking the webhook's rules is unrecognized too: an empty id,
        // a payload that is not an object, a misspelt field.
        let broken = [r#"{"kind": "x", "id": ""}"#, r#"{"kind": "x", "payload": 5}"#, r#"{"kind": "x", "paylod": {}}"#];
        for body in ["hello", "", "[1, 2]", r#"{"kind": ""}"#, r#"{"detail-type": "x"}"#, r#"{"Type": "Notification", "Message": "not json"}"#, "{\"kind\": "].into_iter().chain(broken) {
            let e = parse(body);
            assert_eq!(e.kind, UNRECOGNIZED, "{body}");
            assert_eq!(e.payload, Value::String(body.to_owned()));
            assert_eq!(e.id, "sqs:m-1");
            assert_eq!(e.time_ms, 1_700_000_000_000);
        }
    }

    #[test]
    fn a_redelivered_message_keeps_its_event_id() {
        let body = r#"{"kind": "traffic.spike", "payload": {"requests_per_second": 4000}}"#;
        let first = event_from_message("q", "5fea7756-0ea4-451a-a703-a558b933e274", body, Some(1));
        let again = event_from_message("q", "5fea7756-0ea4-451a-a703-a558b933e274", body, Some(1));
        assert_eq!(first.id, again.id);
        assert_eq!(first.id, "sqs:5fea7756-0ea4-451a-a703-a558b933e274");
    }

    /// A receive that failed with `code`, as the retry classifiers see it.
    fn failed_receive(code: &str) -> InterceptorContext {
        use aws_smithy_runtime_api::client::interceptors::context::{Error, Input};
        let mut ctx = InterceptorContext::new(Input::doesnt_matter());
        let error = ReceiveMessageError::generic(aws_smithy_types::error::ErrorMetadata::builder().code(code).build());
        ctx.set_output_or_error(Err(OrchestratorError::operation(Error::erase(error))));
        ctx
    }

    #[test]
    fn receives_are_retried_unless_the_error_is_permanent() {
        let classify = |code: &str, previous: RetryAction| RetryUnlessPermanent.classify_retry_v2(&failed_receive(code), &previous);
        // Codes the SDK does not retry on its own (a KMS throttle, a code it does not
        // know) would stop the source: they are retried.
        for code in ["KmsThrottled", "SomethingNew"] {
            assert!(classify(code, RetryAction::NoActionIndicated).should_retry(), "{code}");
        }
        // What the SDK already retries keeps the SDK's verdict (a throttle stays one).
        assert_eq!(classify("ThrottlingException", RetryAction::throttling_error()), RetryAction::NoActionIndicated);
        // No retry mends these: the source stops at once.
        for code in PERMANENT {
            assert_eq!(classify(code, RetryAction::server_error()), RetryAction::RetryForbidden, "{code}");
        }
    }

    #[test]
    fn times_are_read_as_aws_writes_them() {
        assert_eq!(parse_time_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time_ms("2024-02-29T23:59:59.5Z"), Some(1_709_251_199_500));
        assert_eq!(parse_time_ms("2024-05-01T14:00:00+02:00"), Some(1_714_564_800_000));
        assert_eq!(parse_time_ms("2024-05-01T07:00:00.000-0500"), Some(1_714_564_800_000));
        assert_eq!(parse_time_ms("2024-05-01T12:00:00.123456Z"), Some(1_714_564_800_123));
        for bad in ["", "2024-05-01", "2024-13-01T00:00:00Z", "2024-05-01T12:00:00", "2024-05-01T12:00:00Zjunk", "2024-05-01T12:00:00.Z", "1969-12-31T23:59:59Z"] {
            assert_eq!(parse_time_ms(bad), None, "{bad}");
        }
    }
}
