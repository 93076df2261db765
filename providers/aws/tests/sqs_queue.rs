//! `aws:sqs:Queue` against the local AWS, every effect checked with the SQS API itself.

use aws_sdk_sqs::types::QueueAttributeName as Attr;
use cairn_aws::sqs::Queue;
use cairn_sdk::{Action, Provider as _, Stack, Urn};
use serde::{Deserialize, Serialize};

mod common;
use common::queues_tagged;

async fn aws() -> (cairn_aws::Provider, aws_sdk_sqs::Client) {
    cairn_testkit::moto().configure_env();
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    (cairn_aws::Provider::new(&config), aws_sdk_sqs::Client::new(&config))
}

async fn attribute(sqs: &aws_sdk_sqs::Client, url: &str, attr: Attr) -> Option<String> {
    let out = sqs.get_queue_attributes().queue_url(url).attribute_names(attr.clone()).send().await.ok()?;
    out.attributes().and_then(|a| a.get(&attr)).cloned()
}

async fn exists(sqs: &aws_sdk_sqs::Client, url: &str) -> bool {
    sqs.get_queue_attributes().queue_url(url).attribute_names(Attr::All).send().await.is_ok()
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct Shop {
    visibility: u32,
    fifo_jobs: bool,
}

fn shop(stack: &str, aws: cairn_aws::Provider) -> Stack<Shop> {
    Stack::<Shop>::new(stack).provider(aws).program(|cx, s| {
        let dlq = cx.add(Queue::new("orders-dlq"));
        cx.add(Queue::new("orders").visibility_timeout(s.visibility).dead_letter(dlq.arn(), 3).tags([("team", "shop")]));
        cx.add(Queue::new("jobs").fifo(s.fifo_jobs));
        Ok(())
    })
}

fn url_of(state: &cairn_sdk::StackState, name: &str) -> String {
    let urn = Urn::new(&state.stack, "aws:sqs:Queue", name);
    state.resource(&urn).unwrap().id.clone()
}

#[tokio::test]
async fn queues_are_created_updated_in_place_replaced_and_destroyed() {
    let (provider, sqs) = aws().await;
    let stack = shop("sqs-lifecycle", provider);

    // Create.
    let first = Shop { visibility: 30, fifo_jobs: false };
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&first).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let (orders, dlq, jobs) = (url_of(&state, "orders"), url_of(&state, "orders-dlq"), url_of(&state, "jobs"));
    assert_eq!(attribute(&sqs, &orders, Attr::VisibilityTimeout).await.as_deref(), Some("30"));
    let dlq_arn = attribute(&sqs, &dlq, Attr::QueueArn).await.unwrap();
    let redrive = attribute(&sqs, &orders, Attr::RedrivePolicy).await.unwrap();
    assert!(redrive.contains(&dlq_arn), "the dead-letter queue is wired: {redrive}");
    let tags = sqs.list_queue_tags().queue_url(&orders).send().await.unwrap();
    let tags = tags.tags().unwrap();
    assert_eq!(tags.get("team").map(String::as_str), Some("shop"));
    assert_eq!(tags.get("cairn:urn").map(String::as_str), Some("urn:cairn:sqs-lifecycle::aws:sqs:Queue::orders"));
    assert!(!jobs.ends_with(".fifo"));

    // A second up with the same state changes nothing.
    assert!(!stack.preview(&first, &state).unwrap().has_changes());

    // An attribute change is made in place.
    let slower = Shop { visibility: 90, ..first.clone() };
    let plan = session.preview(&slower).unwrap();
    let actions: Vec<_> = plan.changed().map(|c| (c.urn.name().to_owned(), c.action)).collect();
    assert_eq!(actions, [("orders".to_owned(), Action::Update)]);
    let state = session.apply(&plan).await.unwrap().state;
    assert_eq!(url_of(&state, "orders"), orders, "same queue");
    assert_eq!(attribute(&sqs, &orders, Attr::VisibilityTimeout).await.as_deref(), Some("90"));

    // FIFO-ness forces a replacement: a new queue, the old one deleted.
    let fifo = Shop { fifo_jobs: true, ..slower.clone() };
    let plan = session.preview(&fifo).unwrap();
    let jobs_change = plan.changes.iter().find(|c| c.urn.name() == "jobs").unwrap();
    assert_eq!((jobs_change.action, jobs_change.replace_reasons.clone()), (Action::Replace, vec!["fifo".to_owned()]));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let new_jobs = url_of(&state, "jobs");
    assert!(new_jobs.ends_with(".fifo"), "{new_jobs}");
    assert_eq!(attribute(&sqs, &new_jobs, Attr::FifoQueue).await.as_deref(), Some("true"));
    assert!(!exists(&sqs, &jobs).await, "the old queue was deleted");

    // Read back, nothing drifted; the look-up by tags finds exactly the live queue.
    let refreshed = session.refresh().await.unwrap();
    assert!(refreshed.drift.is_empty(), "{:?}", refreshed.drift);
    let provider = cairn_aws::Provider::from_env().await;
    let found = provider.lookup(&Urn::new("sqs-lifecycle", "aws:sqs:Queue", "jobs"), &Default::default()).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.clone()).collect::<Vec<_>>(), [new_jobs]);

    // Destroy leaves nothing tagged with the stack.
    let report = session.destroy().await.unwrap();
    assert!(report.succeeded());
    assert!(queues_tagged(&sqs, "sqs-lifecycle").await.is_empty());
}

#[tokio::test]
async fn a_fifo_queue_named_by_the_program_is_unchanged_after_up_and_refresh() {
    let (provider, sqs) = aws().await;
    let stack = Stack::<()>::new("sqs-fifo-named").provider(provider).program(|cx, _| {
        cx.add(Queue::new("audit").name("sqs-fifo-named-audit.fifo").fifo(true));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let url = url_of(&report.state, "audit");
    assert!(url.ends_with("/sqs-fifo-named-audit.fifo"), "{url}");
    assert_eq!(attribute(&sqs, &url, Attr::FifoQueue).await.as_deref(), Some("true"));
    // The name reads back as the program gave it: no replacement planned, before or
    // after a refresh.
    let unchanged = |plan: cairn_sdk::Plan| {
        let changed: Vec<_> = plan.changed().map(|c| (c.action, c.replace_reasons.clone())).collect();
        assert!(changed.is_empty(), "{changed:?}");
    };
    unchanged(session.preview(&()).unwrap());
    let refreshed = session.refresh().await.unwrap();
    assert!(refreshed.drift.is_empty(), "{:?}", refreshed.drift);
    unchanged(session.preview(&()).unwrap());
    assert!(session.destroy().await.unwrap().succeeded());
    assert!(!exists(&sqs, &url).await);
}

#[tokio::test]
async fn drift_made_outside_cairn_is_reported_and_corrected() {
    let (provider, sqs) = aws().await;
    let stack = shop("sqs-drift", provider);
    let s = Shop { visibility: 30, fifo_jobs: false };
    let mut session = stack.in_memory_session().await.unwrap();
    let state = session.up(&s).await.unwrap().state;
    let orders = url_of(&state, "orders");
    sqs.set_queue_attributes().queue_url(&orders).attributes(Attr::VisibilityTimeout, "5").send().await.unwrap();

    let refreshed = session.refresh().await.unwrap();
    let drift = serde_json::to_value(&refreshed.drift).unwrap();
    assert_eq!(drift[0]["urn"], "urn:cairn:sqs-drift::aws:sqs:Queue::orders");
    assert_eq!(drift[0]["diffs"][0]["name"], "visibility_timeout");
    assert_eq!((drift[0]["diffs"][0]["old"].clone(), drift[0]["diffs"][0]["new"].clone()), (30.into(), 5.into()));

    assert!(session.up(&s).await.unwrap().succeeded());
    assert_eq!(attribute(&sqs, &orders, Attr::VisibilityTimeout).await.as_deref(), Some("30"));
    session.destroy().await.unwrap();
}

#[test]
fn bad_queue_settings_are_refused_before_any_call() {
    let stack = Stack::<()>::new("sqs-checks").program(|cx, _| {
        cx.add(Queue::new("a").visibility_timeout(50_000));
        cx.add(Queue::new("b").name("jobs").fifo(true));
        cx.add(Queue::new("c").name("bad name!"));
        Ok(())
    });
    let err = stack.preview(&(), &stack.new_state()).unwrap_err().to_string();
    assert_eq!(
        err,
        "the program declares an invalid graph (3 problems); nothing was changed:\n  \
         - aws:sqs:Queue 'a': property 'visibility_timeout' = 50000 is invalid: it must be a whole number of seconds from 0 to 43200\n  \
         - aws:sqs:Queue 'b': property 'name' = \"jobs\" is invalid: it must end in .fifo, as the queue is FIFO\n  \
         - aws:sqs:Queue 'c': property 'name' = \"bad name!\" is invalid: it must be 1 to 80 letters, digits, '-' or '_' (a FIFO queue's ending in .fifo)"
    );
}

#[tokio::test]
async fn a_renamed_declaration_keeping_its_queue_name_is_created_once_the_old_queue_is_gone() {
    let (provider, sqs) = aws().await;
    // S: the logical name of a queue whose physical name is given.
    let stack = Stack::<String>::new("sqs-renamed").provider(provider).program(|cx, logical| {
        cx.add(Queue::new(logical.as_str()).name("sqs-renamed-orders"));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&"orders".to_owned()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let old = url_of(&report.state, "orders");

    // One name, one queue: AWS answers a create of an existing queue with that queue, so
    // made alongside the old declaration's delete, the new one would be the queue that
    // delete removes. It is created once the delete is done.
    let plan = session.preview(&"inbox".to_owned()).unwrap();
    let create = plan.changes.iter().find(|c| c.action == Action::Create).unwrap();
    assert_eq!(create.after_delete, Some(Urn::new("sqs-renamed", "aws:sqs:Queue", "orders")));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let new = url_of(&report.state, "inbox");
    assert!(new.ends_with("/sqs-renamed-orders"), "{new}");
    assert!(exists(&sqs, &new).await, "state has the queue {new}, and so does the cloud");
    let refreshed = session.refresh().await.unwrap();
    assert!(refreshed.drift.is_empty(), "{:?}", refreshed.drift);
    assert_eq!(refreshed.state.resources.len(), 1);
    assert!(session.destroy().await.unwrap().succeeded());
    assert!(!exists(&sqs, &old).await && !exists(&sqs, &new).await);
}
