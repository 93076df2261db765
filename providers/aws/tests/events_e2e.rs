//! Event-driven operation end to end, against the local AWS: an EventBridge event reaches
//! the stack's events queue, the SQS source hands it to the reconciler, a handler raises
//! the user state's capacity, the Auto Scaling group is resized, and the message is
//! deleted. Then a crash between recording an event and deleting its message: the
//! redelivered message is recognised as a duplicate, changes nothing, and is deleted.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_eventbridge::types::{PutEventsRequestEntry, Target};
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use cairn_aws::autoscaling::Group;
use cairn_aws::ec2::{LaunchTemplate, Subnet, Vpc};
use cairn_aws::events::{event_from_message, SqsSource, SqsSourceError};
use cairn_aws::sqs::Queue;
use cairn_sdk::events::Source;
use cairn_sdk::events::{Event, Events, Metrics, Outcome, Reconciler, ReconcilerOptions};
use cairn_sdk::{Session, Stack, StackState, Urn};
use cairn_state::{MemoryStore, Store};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::timeout;

struct Aws {
    provider: cairn_aws::Provider,
    asg: aws_sdk_autoscaling::Client,
    sqs: aws_sdk_sqs::Client,
    eventbridge: aws_sdk_eventbridge::Client,
}

async fn aws() -> Aws {
    cairn_testkit::moto().configure_env();
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    Aws {
        provider: cairn_aws::Provider::new(&config),
        asg: aws_sdk_autoscaling::Client::new(&config),
        sqs: aws_sdk_sqs::Client::new(&config),
        eventbridge: aws_sdk_eventbridge::Client::new(&config),
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Shop {
    capacity: u32,
}

impl Default for Shop {
    fn default() -> Self {
        Shop { capacity: 2 }
    }
}

/// A web tier sized by `capacity`, and the queue its events arrive on.
fn shop(name: &str, provider: cairn_aws::Provider) -> Stack<Shop> {
    Stack::<Shop>::new(name)
        .provider(provider)
        .program(|cx, s| {
            let vpc = cx.add(Vpc::new("net").cidr_block("10.60.0.0/16"));
            let subnet = cx.add(Subnet::new("web").vpc_id(vpc.id()).cidr_block("10.60.1.0/24").availability_zone("us-east-1a"));
            let template = cx.add(LaunchTemplate::new("web").image_id("ami-12c6146b").instance_type("t3.micro"));
            cx.add(
                Group::new("web")
                    .launch_template_id(template.id())
                    .subnet_ids(vec![subnet.id()])
                    .min_size(1)
                    .max_size(10)
                    .desired_capacity(s.capacity),
            );
            cx.add(Queue::new("events"));
            Ok(())
        })
        .on_event("traffic.spike", |e: &Event, s: &mut Shop| {
            let rps: u32 = e.field("requests_per_second")?;
            s.capacity = rps.div_ceil(500);
            Ok(())
        })
}

/// The stack deployed at capacity 2, locked for watching.
async fn deployed(stack: &Stack<Shop>, store: &Arc<MemoryStore>) -> Session<Shop> {
    let mut session = stack.lock(store.clone(), "watch").await.unwrap();
    let report = session.up(&Shop::default()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    session
}

fn id_of(state: &StackState, ty: &str, name: &str) -> String {
    state.resource(&Urn::new(&state.stack, ty, name)).unwrap_or_else(|| panic!("{name} in state")).id.clone()
}

fn queue_arn(state: &StackState) -> String {
    let queue = state.resource(&Urn::new(&state.stack, "aws:sqs:Queue", "events")).unwrap();
    queue.outputs.get("arn").and_then(Value::as_str).unwrap().to_owned()
}

/// The group's desired capacity, as Auto Scaling reports it.
async fn desired(asg: &aws_sdk_autoscaling::Client, group: &str) -> Option<i32> {
    let out = asg.describe_auto_scaling_groups().auto_scaling_group_names(group).send().await.ok()?;
    out.auto_scaling_groups().first().and_then(|g| g.desired_capacity())
}

/// Messages in the queue: (visible, in flight).
async fn messages(sqs: &aws_sdk_sqs::Client, url: &str) -> (u64, u64) {
    let out = sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let count = |a: QueueAttributeName| out.attributes().and_then(|m| m.get(&a)).and_then(|v| v.parse().ok()).unwrap_or(u64::MAX);
    (count(QueueAttributeName::ApproximateNumberOfMessages), count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible))
}

/// Polls `check` until it holds, failing the test after `limit`.
async fn eventually<F, Fut>(what: &str, limit: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let polled = timeout(limit, async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(polled.is_ok(), "waited {limit:?} for {what}");
}

/// A reconciler running on its own task.
struct Running {
    events: Events,
    metrics: Arc<Metrics>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<cairn_sdk::Result<Session<Shop>>>,
}

fn reconcile(session: Session<Shop>) -> Running {
    let (reconciler, events) = Reconciler::new(session, ReconcilerOptions::default()).unwrap();
    let metrics = reconciler.metrics();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(reconciler.run(async {
        let _ = stopped.await;
    }));
    Running { events, metrics, stop, task }
}

impl Running {
    async fn stop(self) -> Session<Shop> {
        let _ = self.stop.send(());
        timeout(Duration::from_secs(60), self.task).await.expect("the reconciler stops").unwrap().unwrap()
    }
}

/// The audit entries of event `id`.
async fn entries_of(store: &MemoryStore, stack: &str, id: &str) -> Vec<Value> {
    store.history(stack).await.unwrap().into_iter().filter(|e| e["event"]["id"] == id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eventbridge_event_resizes_the_group_through_the_queue_and_its_message_is_deleted() {
    const STACK: &str = "events-e2e";
    let aws = aws().await;
    let stack = shop(STACK, aws.provider);
    let store = Arc::new(MemoryStore::new());
    let session = deployed(&stack, &store).await;
    let group = id_of(session.state(), "aws:autoscaling:Group", "web");
    assert_eq!(desired(&aws.asg, &group).await, Some(2));
    let url = SqsSource::queue_url_in(session.state(), "events").expect("the events queue's url output");
    assert_eq!(SqsSource::queue_url_in(session.state(), "orders"), None, "no such queue in the stack");
    let queue_name = url.rsplit('/').next().unwrap().to_owned();

    // EventBridge delivers the shop's traffic events to the queue.
    let rule = "events-e2e-traffic";
    aws.eventbridge
        .put_rule()
        .name(rule)
        .event_bus_name("default")
        .event_pattern(json!({"source": ["shop.traffic"]}).to_string())
        .send()
        .await
        .unwrap();
    let target = Target::builder().id("cairn-events").arn(queue_arn(session.state())).build().unwrap();
    aws.eventbridge.put_targets().rule(rule).event_bus_name("default").targets(target).send().await.unwrap();

    let started = Instant::now();
    let state = session.state().clone();
    let running = reconcile(session);
    // By the queue's logical name: the source reads its URL from the state.
    let events = running.events.clone();
    let source = SqsSource::queue("events").client(aws.sqs.clone()).visibility_extension(Duration::from_secs(30));
    let source = tokio::spawn(async move { source.run(&state, events).await.map_err(|e| e.to_string()) });
    let entry = PutEventsRequestEntry::builder()
        .source("shop.traffic")
        .detail_type("traffic.spike")
        .detail(json!({"requests_per_second": 2600}).to_string())
        .build();
    let put = aws.eventbridge.put_events().entries(entry).send().await.unwrap();
    assert_eq!(put.failed_entry_count(), 0, "{put:?}");
    let event_id = put.entries()[0].event_id().unwrap().to_owned();

    // ceil(2600 / 500) = 6.
    eventually("the group's desired capacity to become 6", Duration::from_secs(60), || async { desired(&aws.asg, &group).await == Some(6) }).await;
    eventually("the message to be deleted", Duration::from_secs(30), || async { messages(&aws.sqs, &url).await == (0, 0) }).await;
    let received = aws.sqs.receive_message().queue_url(&url).wait_time_seconds(1).send().await.unwrap();
    assert!(received.messages().is_empty(), "{received:?}");
    println!("event to resized group and deleted message: {:?}", started.elapsed());

    let metrics = running.metrics.clone();
    let session = running.stop().await;
    let ran = timeout(Duration::from_secs(30), source).await.expect("the source stops with the reconciler").unwrap();
    assert_eq!(ran, Ok(()));

    // The audit log: the EventBridge event, by its own id, from the queue.
    let entries = entries_of(&store, STACK, &event_id).await;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    let e = &entries[0];
    assert_eq!(e["event"]["kind"], "traffic.spike");
    assert_eq!(e["event"]["source"], format!("sqs:{queue_name}"));
    assert_eq!(e["outcome"], "accepted");
    assert_eq!((e["s_before"]["capacity"].as_u64(), e["s_after"]["capacity"].as_u64()), (Some(2), Some(6)));
    assert_eq!(e["apply"]["result"], "succeeded", "{e:#}");
    assert_eq!((metrics.received_of("traffic.spike"), metrics.applies_of("succeeded")), (1, 1));
    let user: Shop = serde_json::from_value(session.state().user_state.clone()).unwrap();
    assert_eq!(user.capacity, 6);
    assert!(session.state().processed_events.iter().any(|id| *id == event_id));
    session.close().await.unwrap();

    aws.eventbridge.remove_targets().rule(rule).ids("cairn-events").send().await.unwrap();
    aws.eventbridge.delete_rule().name(rule).send().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_recorded_but_not_deleted_before_a_crash_is_a_duplicate_when_redelivered() {
    const STACK: &str = "events-crash";
    let aws = aws().await;
    let stack = shop(STACK, aws.provider);
    let store = Arc::new(MemoryStore::new());
    let session = deployed(&stack, &store).await;
    let group = id_of(session.state(), "aws:autoscaling:Group", "web");
    let url = SqsSource::queue_url_in(session.state(), "events").unwrap();
    let queue_name = url.rsplit('/').next().unwrap().to_owned();

    // Cairn's own format, without an id: the SQS MessageId is the event id.
    let body = json!({"kind": "traffic.spike", "payload": {"requests_per_second": 4000}}).to_string();
    let sent = aws.sqs.send_message().queue_url(&url).message_body(&body).send().await.unwrap();
    let message_id = sent.message_id().unwrap().to_owned();

    // The first process receives the message, records its event and applies it, then
    // dies before deleting the message.
    let first = reconcile(session);
    let got = aws
        .sqs
        .receive_message()
        .queue_url(&url)
        .wait_time_seconds(5)
        .visibility_timeout(600)
        .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
        .send()
        .await
        .unwrap();
    let message = got.messages().first().expect("the message").clone();
    assert_eq!(message.message_id(), Some(message_id.as_str()));
    let sent_ms = message.attributes().and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp)).and_then(|t| t.parse().ok());
    let event = event_from_message(&queue_name, &message_id, message.body().unwrap(), sent_ms);
    let event_id = format!("sqs:{message_id}");
    assert_eq!(event.id, event_id);
    assert_eq!(first.events.send(event).await, Ok(Outcome::Accepted));
    eventually("the group's desired capacity to become 8", Duration::from_secs(60), || async { desired(&aws.asg, &group).await == Some(8) }).await;
    let first_metrics = first.metrics.clone();
    let session = first.stop().await;
    assert_eq!(first_metrics.applies_of("succeeded"), 1);
    session.close().await.unwrap();
    assert_eq!(messages(&aws.sqs, &url).await, (0, 1), "not deleted: in flight");

    // Its visibility timeout runs out: SQS delivers it again, with the same MessageId.
    let handle = message.receipt_handle().unwrap();
    aws.sqs.change_message_visibility().queue_url(&url).receipt_handle(handle).visibility_timeout(0).send().await.unwrap();
    assert_eq!(messages(&aws.sqs, &url).await, (1, 0));
    // And a body in no format the source knows: recorded, not lost, not redelivered forever.
    let junk = aws.sqs.send_message().queue_url(&url).message_body("restart the web tier, please").send().await.unwrap();
    let junk_id = format!("sqs:{}", junk.message_id().unwrap());

    // A fresh process on the same state, with the real source.
    let started = Instant::now();
    let session = stack.lock(store.clone(), "watch").await.unwrap();
    assert!(session.state().processed_events.iter().any(|id| *id == event_id), "the id was recorded durably");
    let state = session.state().clone();
    let second = reconcile(session);
    let events = second.events.clone();
    let source = SqsSource::url(&url).client(aws.sqs.clone());
    let source = tokio::spawn(async move { source.run(&state, events).await.map_err(|e| e.to_string()) });
    eventually("the redelivered message to be deleted", Duration::from_secs(60), || async { messages(&aws.sqs, &url).await == (0, 0) }).await;
    println!("redelivered message recognised and deleted: {:?}", started.elapsed());

    let second_metrics = second.metrics.clone();
    let session = second.stop().await;
    assert_eq!(timeout(Duration::from_secs(30), source).await.expect("the source stops with the reconciler").unwrap(), Ok(()));

    let entries = entries_of(&store, STACK, &event_id).await;
    let outcomes: Vec<&str> = entries.iter().filter_map(|e| e["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["accepted", "duplicate"], "{entries:#?}");
    let duplicate = &entries[1];
    assert_eq!(duplicate["event"]["source"], format!("sqs:{queue_name}"));
    assert_eq!(duplicate["s_before"], duplicate["s_after"], "a duplicate changes nothing");
    // No second apply: the second process received the event and applied nothing.
    assert_eq!(second_metrics.received_of("traffic.spike"), 1);
    assert_eq!((second_metrics.applies_of("succeeded"), second_metrics.applies_of("failed")), (0, 0));
    let history = store.history(STACK).await.unwrap();
    let applies_after: Vec<&Value> =
        history.iter().skip_while(|e| e["event"]["id"] != event_id).skip(1).filter(|e| e["apply"]["result"].is_string()).collect();
    assert!(applies_after.is_empty(), "{applies_after:#?}");
    assert_eq!(desired(&aws.asg, &group).await, Some(8));
    let junk = entries_of(&store, STACK, &junk_id).await;
    assert_eq!(junk.len(), 1, "{junk:#?}");
    assert_eq!((junk[0]["event"]["kind"].as_str(), junk[0]["outcome"].as_str()), (Some("sqs.unrecognized"), Some("unhandled")));
    let user: Shop = serde_json::from_value(session.state().user_state.clone()).unwrap();
    assert_eq!(user.capacity, 8);
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_stays_hidden_until_recorded_and_comes_back_if_the_reconciler_stops_first() {
    const STACK: &str = "events-unrecorded";
    let aws = aws().await;
    let stack = Stack::<Shop>::new(STACK).provider(aws.provider).program(|cx, _| {
        cx.add(Queue::new("events"));
        Ok(())
    });
    let store = Arc::new(MemoryStore::new());
    let mut session = stack.lock(store.clone(), "watch").await.unwrap();
    assert!(session.up(&Shop::default()).await.unwrap().succeeded());
    let url = SqsSource::queue_url_in(session.state(), "events").unwrap();
    let state = session.state().clone();

    // A reconciler that takes events but is never run, so records nothing.
    let (reconciler, events) = Reconciler::new(session, ReconcilerOptions::default()).unwrap();
    let metrics = reconciler.metrics();
    let source = SqsSource::url(&url).client(aws.sqs.clone()).visibility_extension(Duration::from_secs(3));
    // On a runtime of its own, dropped once the source returns, as a `watch` process
    // exits once its sources have stopped: nothing of the source runs on after that.
    let source = tokio::task::spawn_blocking(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(source.run(&state, events)).map_err(|e| e.to_string())
    });
    let body = json!({"kind": "traffic.spike", "payload": {"requests_per_second": 4000}}).to_string();
    aws.sqs.send_message().queue_url(&url).message_body(body).send().await.unwrap();
    eventually("the source to receive the message", Duration::from_secs(30), || async { messages(&aws.sqs, &url).await == (0, 1) }).await;

    // Twice its visibility timeout: renewed while unrecorded, it stays hidden and is not
    // delivered (so submitted) again.
    let watch_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < watch_until {
        assert_eq!(messages(&aws.sqs, &url).await, (0, 1), "hidden and not deleted while unrecorded");
        assert_eq!(metrics.pending(), 1, "submitted once: not redelivered while unrecorded");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The reconciler stops without recording it: the source makes the message visible
    // again, for redelivery, and stops. Its last long poll, still under way, takes the
    // message as soon as it sees it (moto looks once a second), so the source waits
    // for that poll's answer and releases the message again before it returns.
    // Abandoned, the poll would hide the message for 3 s more, after the exit.
    let session = reconciler.into_session();
    let ran = timeout(Duration::from_secs(30), source).await.expect("the source stops with the reconciler").unwrap();
    assert_eq!(ran, Ok(()));
    assert_eq!(messages(&aws.sqs, &url).await, (1, 0), "visible again once the source has stopped");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(messages(&aws.sqs, &url).await, (1, 0), "still visible: no poll of the source took it since");
    assert!(store.history(STACK).await.unwrap().is_empty(), "nothing was recorded");
    session.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_that_does_not_exist_stops_the_source_with_an_error_naming_it() {
    let aws = aws().await;
    let stack = Stack::<Shop>::new("events-no-queue").provider(aws.provider).program(|_, _| Ok(()));
    let store = Arc::new(MemoryStore::new());
    let session = stack.lock(store.clone(), "watch").await.unwrap();
    let state = session.state().clone();
    let (reconciler, events) = Reconciler::new(session, ReconcilerOptions::default()).unwrap();

    // A queue the stack does not declare: said before any call.
    let undeployed = SqsSource::queue("events").client(aws.sqs.clone());
    assert_eq!(undeployed.name(), "sqs:events");
    let err = undeployed.run(&state, events.clone()).await.unwrap_err();
    assert!(matches!(err.downcast_ref::<SqsSourceError>(), Some(SqsSourceError::NotDeployed { .. })), "{err:?}");
    assert!(err.to_string().contains("no aws:sqs:Queue 'events'") && err.to_string().contains("run `up` first"), "{err}");

    // A URL where there is no queue: a permanent error, not retried. (Retried, ten tries
    // from 5 s with jitter would take far longer than the bound.)
    let url = "http://sqs.us-east-1.localhost/123456789012/no-such-events-queue";
    let source = SqsSource::url(url).client(aws.sqs.clone()).retries(10, Duration::from_secs(5));
    assert_eq!(source.name(), "sqs:no-such-events-queue");
    let started = Instant::now();
    let err = timeout(Duration::from_secs(120), source.run(&state, events)).await.expect("the source gives up").unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(3), "a permanent error stops the source at once: {:?}", started.elapsed());
    let Some(SqsSourceError::Receive { queue, .. }) = err.downcast_ref::<SqsSourceError>() else { panic!("{err:?}") };
    assert_eq!(queue, "no-such-events-queue");
    let err = err.to_string();
    assert!(err.contains("queue no-such-events-queue") && err.contains("does not exist"), "{err}");
    reconciler.into_session().close().await.unwrap();
}
