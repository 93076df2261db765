//! `aws:sns:Topic` and `aws:sns:Subscription` against the local AWS, every effect checked
//! with the SNS and SQS APIs themselves.

use std::collections::HashMap;

use aws_sdk_sns::types::MessageAttributeValue;
use cairn_aws::sns::{Subscription, Topic};
use cairn_aws::sqs::Queue;
use cairn_sdk::{Action, Drift, Props, Provider as _, Stack, StackState, Urn};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

async fn aws() -> (cairn_aws::Provider, aws_sdk_sns::Client, aws_sdk_sqs::Client) {
    cairn_testkit::moto().configure_env();
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    (cairn_aws::Provider::new(&config), aws_sdk_sns::Client::new(&config), aws_sdk_sqs::Client::new(&config))
}

fn code<E: aws_sdk_sns::error::ProvideErrorMetadata>(e: &aws_sdk_sns::error::SdkError<E>) -> Option<&str> {
    match e {
        aws_sdk_sns::error::SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    }
}

/// The topic's attributes, `None` when it does not exist.
async fn topic(sns: &aws_sdk_sns::Client, arn: &str) -> Option<HashMap<String, String>> {
    match sns.get_topic_attributes().topic_arn(arn).send().await {
        Ok(out) => Some(out.attributes().cloned().unwrap_or_default()),
        Err(e) if code(&e) == Some("NotFound") => None,
        Err(e) => panic!("reading topic {arn}: {e:?}"),
    }
}

async fn topic_tags(sns: &aws_sdk_sns::Client, arn: &str) -> HashMap<String, String> {
    existing_topic_tags(sns, arn).await.unwrap_or_else(|| panic!("topic {arn} does not exist"))
}

/// The topic's tags, `None` when it does not exist.
async fn existing_topic_tags(sns: &aws_sdk_sns::Client, arn: &str) -> Option<HashMap<String, String>> {
    match sns.list_tags_for_resource().resource_arn(arn).send().await {
        Ok(out) => Some(out.tags().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect()),
        Err(e) if matches!(code(&e), Some("NotFound" | "ResourceNotFound")) => None,
        Err(e) => panic!("reading the tags of topic {arn}: {e:?}"),
    }
}

/// The subscription's attributes, `None` when it does not exist.
async fn subscription(sns: &aws_sdk_sns::Client, arn: &str) -> Option<HashMap<String, String>> {
    match sns.get_subscription_attributes().subscription_arn(arn).send().await {
        Ok(out) => Some(out.attributes().cloned().unwrap_or_default()),
        Err(e) if code(&e) == Some("NotFound") => None,
        Err(e) => panic!("reading subscription {arn}: {e:?}"),
    }
}

/// The ARNs of every topic tagged with `stack`.
async fn topics_of(sns: &aws_sdk_sns::Client, stack: &str) -> Vec<String> {
    let mut arns = Vec::new();
    let mut token = None;
    loop {
        let page = sns.list_topics().set_next_token(token).send().await.unwrap();
        for arn in page.topics().iter().filter_map(|t| t.topic_arn()) {
            // A topic deleted since the listing (by a test running beside this one) is
            // not one of them.
            let tags = existing_topic_tags(sns, arn).await.unwrap_or_default();
            if tags.get("cairn:stack").map(String::as_str) == Some(stack) {
                arns.push(arn.to_owned());
            }
        }
        match page.next_token() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    arns
}

fn resource<'a>(state: &'a StackState, ty: &str, name: &str) -> &'a cairn_sdk::ResourceState {
    state.resource(&Urn::new(&state.stack, ty, name)).unwrap_or_else(|| panic!("{name} is in state"))
}

fn id_of(state: &StackState, ty: &str, name: &str) -> String {
    resource(state, ty, name).id.clone()
}

fn actions(plan: &cairn_sdk::Plan) -> Vec<(String, Action)> {
    plan.changed().map(|c| (c.urn.name().to_owned(), c.action)).collect()
}

/// A policy that lets only the account's root publish.
fn owner_only() -> Value {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "OwnerPublishes",
            "Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
            "Action": "sns:Publish",
            "Resource": "*"
        }]
    })
}

fn policy_of(attrs: &HashMap<String, String>) -> Value {
    serde_json::from_str(&attrs["Policy"]).unwrap()
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct Alerts {
    display: String,
    team: String,
    locked: bool,
    encrypted: bool,
    fifo_jobs: bool,
}

fn alerts(stack: &str, aws: cairn_aws::Provider) -> Stack<Alerts> {
    Stack::<Alerts>::new(stack).provider(aws).program(|cx, s| {
        let mut alerts = Topic::new("alerts").display_name(s.display.as_str()).tags([("team", s.team.as_str())]);
        if s.locked {
            alerts = alerts.policy(owner_only());
        }
        if s.encrypted {
            alerts = alerts.kms_master_key_id("alias/aws/sns");
        }
        cx.add(alerts);
        cx.add(Topic::new("jobs").fifo(s.fifo_jobs));
        Ok(())
    })
}

const TOPIC: &str = "aws:sns:Topic";
const SUBSCRIPTION: &str = "aws:sns:Subscription";
const QUEUE: &str = "aws:sqs:Queue";

#[tokio::test]
async fn topics_are_created_updated_in_place_replaced_and_destroyed() {
    let (provider, sns, _) = aws().await;
    let stack = alerts("sns-topic-lifecycle", provider);

    // Create.
    let first = Alerts { display: "Alerts".into(), team: "ops".into(), ..Alerts::default() };
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&first).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let (alerts, jobs) = (id_of(&state, TOPIC, "alerts"), id_of(&state, TOPIC, "jobs"));
    let attrs = topic(&sns, &alerts).await.expect("the topic exists");
    assert_eq!(attrs.get("DisplayName").map(String::as_str), Some("Alerts"));
    assert_eq!(policy_of(&attrs)["Id"], "__default_policy_ID", "no policy given: AWS's default");
    assert_eq!(attrs.get("KmsMasterKeyId"), None, "not encrypted");
    let tags = topic_tags(&sns, &alerts).await;
    assert_eq!(tags.get("team").map(String::as_str), Some("ops"));
    assert_eq!(tags.get("cairn:urn").map(String::as_str), Some("urn:cairn:sns-topic-lifecycle::aws:sns:Topic::alerts"));
    let name = resource(&state, TOPIC, "alerts").inputs.get("name").unwrap().as_str().unwrap().to_owned();
    assert!(name.starts_with("alerts-") && alerts.ends_with(&format!(":{name}")), "{name} {alerts}");
    assert!(!jobs.ends_with(".fifo"));
    assert_eq!(topic(&sns, &jobs).await.unwrap().get("FifoTopic"), None);

    // The same program again changes nothing.
    assert!(!stack.preview(&first, &state).unwrap().has_changes());

    // The display name, the policy, the key and tags change in place.
    let second = Alerts { display: "Paging".into(), team: "sre".into(), locked: true, encrypted: true, ..first.clone() };
    let plan = session.preview(&second).unwrap();
    assert_eq!(actions(&plan), [("alerts".to_owned(), Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    assert_eq!(id_of(&state, TOPIC, "alerts"), alerts, "the same topic");
    let attrs = topic(&sns, &alerts).await.unwrap();
    assert_eq!(attrs.get("DisplayName").map(String::as_str), Some("Paging"));
    assert_eq!(policy_of(&attrs), owner_only());
    assert_eq!(attrs.get("KmsMasterKeyId").map(String::as_str), Some("alias/aws/sns"));
    assert_eq!(topic_tags(&sns, &alerts).await.get("team").map(String::as_str), Some("sre"));
    assert!(!stack.preview(&second, &state).unwrap().has_changes(), "what was read back is what was asked for");

    // FIFO-ness forces a replacement: a new topic, named .fifo, the old one deleted.
    let third = Alerts { fifo_jobs: true, ..second.clone() };
    let plan = session.preview(&third).unwrap();
    let change = plan.changes.iter().find(|c| c.urn.name() == "jobs").unwrap();
    assert_eq!((change.action, change.replace_reasons.clone()), (Action::Replace, vec!["fifo".to_owned()]));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let new_jobs = id_of(&state, TOPIC, "jobs");
    assert!(new_jobs.ends_with(".fifo") && new_jobs != jobs, "{new_jobs}");
    assert_eq!(topic(&sns, &new_jobs).await.unwrap().get("FifoTopic").map(String::as_str), Some("true"));
    assert!(topic(&sns, &jobs).await.is_none(), "the old topic was deleted");
    assert_eq!(resource(&state, TOPIC, "jobs").outputs.get("name"), Some(&Value::from(new_jobs.rsplit(':').next().unwrap())));
    assert!(!stack.preview(&third, &state).unwrap().has_changes());

    // Read back, nothing drifted; the look-up by tag finds exactly the live topic.
    let refreshed = session.refresh().await.unwrap();
    assert!(refreshed.drift.is_empty(), "{:?}", refreshed.drift);
    let found = cairn_aws::Provider::from_env().await.lookup(&Urn::new("sns-topic-lifecycle", TOPIC, "jobs"), &Props::new()).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [new_jobs.as_str()]);

    // Destroy leaves nothing.
    let report = session.destroy().await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert!(topic(&sns, &alerts).await.is_none() && topic(&sns, &new_jobs).await.is_none());
    assert!(topics_of(&sns, "sns-topic-lifecycle").await.is_empty());
}

#[tokio::test]
async fn topic_drift_made_outside_cairn_is_reported_and_corrected() {
    let (provider, sns, _) = aws().await;
    let stack = alerts("sns-topic-drift", provider);
    let s = Alerts { display: "Alerts".into(), team: "ops".into(), ..Alerts::default() };
    let mut session = stack.in_memory_session().await.unwrap();
    let state = session.up(&s).await.unwrap().state;
    let alerts = id_of(&state, TOPIC, "alerts");
    let set = |name: &'static str, value: String| sns.set_topic_attributes().topic_arn(&alerts).attribute_name(name).attribute_value(value).send();
    set("DisplayName", "Renamed".into()).await.unwrap();
    set("Policy", owner_only().to_string()).await.unwrap();
    set("KmsMasterKeyId", "alias/outside".into()).await.unwrap();

    let refreshed = session.refresh().await.unwrap();
    let [Drift::Changed { urn, diffs }] = &refreshed.drift[..] else { panic!("{:?}", refreshed.drift) };
    assert_eq!(urn.as_str(), "urn:cairn:sns-topic-drift::aws:sns:Topic::alerts");
    let found: Vec<_> = diffs.iter().map(|d| (d.name.as_str(), d.old.clone(), d.new.clone())).collect();
    assert_eq!(
        found,
        [
            ("display_name", Some(json!("Alerts")), Some(json!("Renamed"))),
            ("kms_master_key_id", None, Some(json!("alias/outside"))),
            ("policy", None, Some(owner_only()))
        ]
    );

    // The next up puts them back: the program's name, no encryption, AWS's default policy.
    let report = session.up(&s).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let attrs = topic(&sns, &alerts).await.unwrap();
    assert_eq!(attrs.get("DisplayName").map(String::as_str), Some("Alerts"));
    assert_eq!(policy_of(&attrs)["Id"], "__default_policy_ID");
    assert_eq!(attrs.get("KmsMasterKeyId"), None);
    assert!(session.refresh().await.unwrap().drift.is_empty());
    assert!(session.destroy().await.unwrap().succeeded());
    assert!(topic(&sns, &alerts).await.is_none());
}

/// A name that another topic has is refused, whether that topic is Cairn's or not, and
/// the topic is left alone; a create of Cairn's own topic sent twice gets the same one.
#[tokio::test]
async fn a_topic_name_taken_outside_the_resource_is_refused_not_adopted() {
    let (provider, sns, _) = aws().await;

    // A topic made outside Cairn.
    let name = "sns-claim-outside";
    let outside = sns.create_topic().name(name).tags(aws_sdk_sns::types::Tag::builder().key("owner").value("billing").build().unwrap()).send().await.unwrap();
    let outside = outside.topic_arn().unwrap().to_owned();
    let stack = Stack::<()>::new("sns-claim-a").provider(provider.clone()).program(move |cx, _| {
        cx.add(Topic::new("t").name(name).display_name("Mine"));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    let errors: Vec<String> = report.failures().filter_map(|s| s.status.error()).map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("aws:sns:Topic 't'")
            && errors[0].contains("a topic named sns-claim-outside already exists and was not made by Cairn (it has no cairn:urn tag)")
            && errors[0].contains("Set `name` to another name"),
        "{}",
        errors[0]
    );
    assert!(report.state.resources.is_empty() && report.state.pending.is_empty(), "nothing recorded: {:?}", report.state);
    let attrs = topic(&sns, &outside).await.expect("the other topic is still there");
    assert_eq!(attrs.get("DisplayName").map(String::as_str), Some(""), "and unchanged");
    assert_eq!(topic_tags(&sns, &outside).await, HashMap::from([("owner".to_owned(), "billing".to_owned())]));
    assert!(session.destroy().await.unwrap().succeeded());
    assert!(topic(&sns, &outside).await.is_some(), "destroy did not touch it");
    sns.delete_topic().topic_arn(&outside).send().await.unwrap();

    // A topic of another Cairn resource.
    let program = |stack: &str| {
        Stack::<()>::new(stack).provider(provider.clone()).program(|cx, _| {
            cx.add(Topic::new("t").name("sns-claim-shared"));
            Ok(())
        })
    };
    let mut b = program("sns-claim-b").in_memory_session().await.unwrap();
    let report = b.up(&()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let shared = id_of(&report.state, TOPIC, "t");
    let mut c = program("sns-claim-c").in_memory_session().await.unwrap();
    let report = c.up(&()).await.unwrap();
    let errors: Vec<String> = report.failures().filter_map(|s| s.status.error()).map(ToString::to_string).collect();
    assert!(
        errors.len() == 1 && errors[0].contains("already exists and belongs to urn:cairn:sns-claim-b::aws:sns:Topic::t"),
        "{errors:?}"
    );
    assert!(report.state.resources.is_empty());
    assert!(c.destroy().await.unwrap().succeeded());
    assert!(topic(&sns, &shared).await.is_some(), "the other stack's topic is still there");

    // The same create sent twice (an answer lost, say) gets Cairn's own topic back.
    let urn = Urn::new("sns-claim-b", TOPIC, "t");
    let inputs = resource(b.state(), TOPIC, "t").inputs.clone();
    let again = provider.create(&urn, &inputs).await.unwrap();
    assert_eq!(again.id, shared);
    assert!(b.destroy().await.unwrap().succeeded());
    assert!(topic(&sns, &shared).await.is_none());
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct Fanout {
    raw: bool,
    filtered: bool,
    to_spare: bool,
}

fn fanout(stack: &str, aws: cairn_aws::Provider) -> Stack<Fanout> {
    Stack::<Fanout>::new(stack).provider(aws).program(|cx, s| {
        let topic = cx.add(Topic::new("events"));
        let inbox = cx.add(Queue::new("inbox"));
        let spare = cx.add(Queue::new("spare"));
        let queue = if s.to_spare { spare.arn() } else { inbox.arn() };
        let mut sub = Subscription::new("to-queue").topic_arn(topic.arn()).protocol("sqs").endpoint(queue).raw_message_delivery(s.raw);
        if s.filtered {
            sub = sub.filter_policy(json!({"kind": ["order"]}));
        }
        cx.add(sub);
        Ok(())
    })
}

async fn publish(sns: &aws_sdk_sns::Client, topic: &str, message: &str, kind: &str) {
    let kind = MessageAttributeValue::builder().data_type("String").string_value(kind).build().unwrap();
    sns.publish().topic_arn(topic).message(message).message_attributes("kind", kind).send().await.unwrap();
}

/// The bodies of the messages waiting in the queue, which are deleted. The local AWS
/// delivers from SNS to SQS within the publish call: no waiting needed.
async fn drain(sqs: &aws_sdk_sqs::Client, url: &str) -> Vec<String> {
    let out = sqs.receive_message().queue_url(url).max_number_of_messages(10).wait_time_seconds(0).send().await.unwrap();
    let mut bodies = Vec::new();
    for m in out.messages() {
        bodies.push(m.body().unwrap_or_default().to_owned());
        sqs.delete_message().queue_url(url).receipt_handle(m.receipt_handle().unwrap()).send().await.unwrap();
    }
    bodies
}

#[tokio::test]
async fn a_subscription_delivers_to_a_queue_changes_in_place_is_replaced_and_destroyed() {
    let (provider, sns, sqs) = aws().await;
    let stack = fanout("sns-subscription", provider.clone());

    // Create: the queue is subscribed, and a message published to the topic reaches it.
    let first = Fanout::default();
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&first).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let (sub, topic_arn) = (id_of(&state, SUBSCRIPTION, "to-queue"), id_of(&state, TOPIC, "events"));
    let (inbox, spare) = (id_of(&state, QUEUE, "inbox"), id_of(&state, QUEUE, "spare"));
    let queue_arn = |name| resource(&state, QUEUE, name).outputs.get("arn").unwrap().as_str().unwrap().to_owned();
    let (inbox_arn, spare_arn) = (queue_arn("inbox"), queue_arn("spare"));
    let attrs = subscription(&sns, &sub).await.expect("subscribed");
    for (k, v) in [("TopicArn", topic_arn.as_str()), ("Protocol", "sqs"), ("Endpoint", &inbox_arn), ("RawMessageDelivery", "false"), ("PendingConfirmation", "false")] {
        assert_eq!(attrs.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert_eq!(resource(&state, SUBSCRIPTION, "to-queue").outputs.get("pending_confirmation"), Some(&Value::Bool(false)));
    let listed = sns.list_subscriptions_by_topic().topic_arn(&topic_arn).send().await.unwrap();
    assert_eq!(listed.subscriptions().iter().filter_map(|s| s.subscription_arn()).collect::<Vec<_>>(), [sub.as_str()]);
    publish(&sns, &topic_arn, "hello", "greeting").await;
    let got = drain(&sqs, &inbox).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let envelope: Value = serde_json::from_str(&got[0]).unwrap();
    assert_eq!((envelope["Message"].as_str(), envelope["TopicArn"].as_str()), (Some("hello"), Some(topic_arn.as_str())), "SNS's envelope");

    // The same program again changes nothing.
    assert!(!stack.preview(&first, &state).unwrap().has_changes());

    // Raw delivery and a filter policy are set in place.
    let filtered = Fanout { raw: true, filtered: true, ..first.clone() };
    let plan = session.preview(&filtered).unwrap();
    assert_eq!(actions(&plan), [("to-queue".to_owned(), Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(id_of(&report.state, SUBSCRIPTION, "to-queue"), sub, "the same subscription");
    let attrs = subscription(&sns, &sub).await.unwrap();
    assert_eq!(attrs.get("RawMessageDelivery").map(String::as_str), Some("true"));
    assert_eq!(serde_json::from_str::<Value>(&attrs["FilterPolicy"]).unwrap(), json!({"kind": ["order"]}));
    publish(&sns, &topic_arn, "skip-me", "greeting").await;
    publish(&sns, &topic_arn, "order-1", "order").await;
    assert_eq!(drain(&sqs, &inbox).await, ["order-1"], "filtered, and the body alone");
    assert!(!stack.preview(&filtered, &report.state).unwrap().has_changes());

    // Drift: raw delivery turned off outside Cairn is reported, and the next up turns it on.
    sns.set_subscription_attributes().subscription_arn(&sub).attribute_name("RawMessageDelivery").attribute_value("false").send().await.unwrap();
    let refreshed = session.refresh().await.unwrap();
    let [Drift::Changed { urn, diffs }] = &refreshed.drift[..] else { panic!("{:?}", refreshed.drift) };
    assert_eq!(urn.as_str(), "urn:cairn:sns-subscription::aws:sns:Subscription::to-queue");
    let found: Vec<_> = diffs.iter().map(|d| (d.name.as_str(), d.old.clone(), d.new.clone())).collect();
    assert_eq!(found, [("raw_message_delivery", Some(json!(true)), Some(json!(false)))]);
    assert!(session.up(&filtered).await.unwrap().succeeded());
    assert_eq!(subscription(&sns, &sub).await.unwrap().get("RawMessageDelivery").map(String::as_str), Some("true"));

    // Removing the filter policy delivers every message again.
    let unfiltered = Fanout { filtered: false, ..filtered.clone() };
    assert!(session.up(&unfiltered).await.unwrap().succeeded());
    // AWS then reports no FilterPolicy; the local AWS an empty one.
    let policy = subscription(&sns, &sub).await.unwrap().get("FilterPolicy").cloned();
    assert!(policy.as_deref().is_none_or(str::is_empty), "{policy:?}");
    publish(&sns, &topic_arn, "any", "greeting").await;
    assert_eq!(drain(&sqs, &inbox).await, ["any"]);

    // The look-up of a tagless subscription goes by the inputs it was created with.
    let urn = Urn::new("sns-subscription", SUBSCRIPTION, "to-queue");
    let created_with = Props::from_value(json!({"topic_arn": topic_arn, "protocol": "sqs", "endpoint": inbox_arn})).unwrap();
    let found = provider.lookup(&urn, &created_with).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [sub.as_str()]);
    assert!(provider.lookup(&urn, &Props::new()).await.unwrap().is_empty(), "nothing to go by, nothing found");

    // Another endpoint forces a replacement: a new subscription, the old one removed.
    let moved = Fanout { to_spare: true, ..unfiltered.clone() };
    let plan = session.preview(&moved).unwrap();
    let change = plan.changes.iter().find(|c| c.urn.name() == "to-queue").unwrap();
    assert_eq!((change.action, change.replace_reasons.clone()), (Action::Replace, vec!["endpoint".to_owned()]));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let new_sub = id_of(&report.state, SUBSCRIPTION, "to-queue");
    assert_ne!(new_sub, sub);
    assert!(subscription(&sns, &sub).await.is_none(), "the old subscription was removed");
    assert_eq!(subscription(&sns, &new_sub).await.unwrap().get("Endpoint"), Some(&spare_arn));
    publish(&sns, &topic_arn, "moved", "order").await;
    assert_eq!((drain(&sqs, &spare).await, drain(&sqs, &inbox).await), (vec!["moved".to_owned()], vec![]));

    // Destroy leaves nothing.
    let report = session.destroy().await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert!(subscription(&sns, &new_sub).await.is_none());
    assert!(topic(&sns, &topic_arn).await.is_none());
    assert!(sqs.get_queue_url().queue_name(inbox.rsplit('/').next().unwrap()).send().await.is_err());
}

/// A topic and a queue; S: whether the queue is subscribed to the topic.
fn inbox_stack(stack: &str, aws: cairn_aws::Provider) -> Stack<bool> {
    Stack::<bool>::new(stack).provider(aws).program(|cx, subscribe| {
        let topic = cx.add(Topic::new("events"));
        let queue = cx.add(Queue::new("inbox"));
        if *subscribe {
            cx.add(Subscription::new("to-queue").topic_arn(topic.arn()).protocol("sqs").endpoint(queue.arn()));
        }
        Ok(())
    })
}

/// An endpoint already subscribed outside Cairn is refused, not adopted: destroying the
/// resource would otherwise remove that subscription.
#[tokio::test]
async fn an_endpoint_already_subscribed_outside_cairn_is_refused() {
    let (provider, sns, _) = aws().await;
    let stack = inbox_stack("sns-subscription-taken", provider);
    let mut session = stack.in_memory_session().await.unwrap();
    let state = session.up(&false).await.unwrap().state;
    let topic_arn = id_of(&state, TOPIC, "events");
    let queue_arn = resource(&state, QUEUE, "inbox").outputs.get("arn").unwrap().as_str().unwrap().to_owned();
    let outside = sns.subscribe().topic_arn(&topic_arn).protocol("sqs").endpoint(&queue_arn).return_subscription_arn(true).send().await.unwrap();
    let outside = outside.subscription_arn().unwrap().to_owned();

    let report = session.up(&true).await.unwrap();
    let errors: Vec<String> = report.failures().filter_map(|s| s.status.error()).map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("aws:sns:Subscription 'to-queue'")
            && errors[0].contains(&format!("{queue_arn} is already subscribed to {topic_arn} by sqs ({outside})"))
            && errors[0].contains("Change `endpoint` or `topic_arn`"),
        "{}",
        errors[0]
    );
    assert!(report.state.resource(&Urn::new("sns-subscription-taken", SUBSCRIPTION, "to-queue")).is_none());
    assert!(subscription(&sns, &outside).await.is_some(), "the other subscription is left alone");

    // Once it is gone, Cairn subscribes the endpoint itself.
    sns.unsubscribe().subscription_arn(&outside).send().await.unwrap();
    let report = session.up(&true).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let sub = id_of(&report.state, SUBSCRIPTION, "to-queue");
    assert!(subscription(&sns, &sub).await.is_some());
    assert!(session.destroy().await.unwrap().succeeded());
    assert!(subscription(&sns, &sub).await.is_none() && topic(&sns, &topic_arn).await.is_none());
}

/// What AWS lists for a subscription its endpoint has not confirmed: no ARN.
fn pending_listing(topic_arn: &str, protocol: &str, endpoint: &str) -> String {
    format!(
        r#"<ListSubscriptionsByTopicResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/">
  <ListSubscriptionsByTopicResult>
    <Subscriptions>
      <member><TopicArn>{topic_arn}</TopicArn><Protocol>{protocol}</Protocol><SubscriptionArn>PendingConfirmation</SubscriptionArn><Owner>123456789012</Owner><Endpoint>{endpoint}</Endpoint></member>
    </Subscriptions>
  </ListSubscriptionsByTopicResult>
  <ResponseMetadata><RequestId>0c4bd3b7-5a6e-4bc2-8c3c-4c4f5f0e3a21</RequestId></ResponseMetadata>
</ListSubscriptionsByTopicResponse>"#
    )
}

/// A subscribe whose answer is lost, to an endpoint that has not confirmed yet (HTTP,
/// email): its look-up lists it without an ARN. It is found all the same, not dropped
/// and then refused as not Cairn's once confirmed.
#[tokio::test]
async fn a_lost_subscribe_still_unconfirmed_is_found_not_dropped() {
    let (_, sns, _) = aws().await;
    // Through the fault proxy: it loses the subscribe's answer, then lists the
    // subscription as AWS does until its endpoint confirms (moto confirms at once).
    let proxy = cairn_testkit::FaultProxy::start(cairn_testkit::moto().endpoint());
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest()).endpoint_url(proxy.endpoint()).load().await;
    let stack = inbox_stack("sns-unconfirmed", cairn_aws::Provider::new(&config));
    let mut session = stack.in_memory_session().await.unwrap();
    let state = session.up(&false).await.unwrap().state;
    let topic_arn = id_of(&state, TOPIC, "events");
    let queue_arn = resource(&state, QUEUE, "inbox").outputs.get("arn").unwrap().as_str().unwrap().to_owned();

    proxy.set_plan(cairn_testkit::FaultPlan::always(cairn_testkit::Fault::LostAnswer));
    let report = session.up(&true).await.unwrap();
    assert!(!report.succeeded(), "the subscribe's answer was lost");
    proxy.set_plan(cairn_testkit::FaultPlan::none());
    let listed = sns.list_subscriptions_by_topic().topic_arn(&topic_arn).send().await.unwrap();
    let made: Vec<String> = listed.subscriptions().iter().filter_map(|s| s.subscription_arn()).map(str::to_owned).collect();
    assert_eq!(made.len(), 1, "the subscribe took effect: {made:?}");

    // Both looks (the settling's first, and its second after the landing window) see
    // it unconfirmed, as AWS would.
    for _ in 0..2 {
        proxy.answer_instead("ListSubscriptionsByTopic", pending_listing(&topic_arn, "sqs", &queue_arn));
    }
    let report = session.up(&true).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(proxy.clear_answers(), 1, "the first look found it");
    assert_eq!(id_of(&report.state, SUBSCRIPTION, "to-queue"), made[0], "the subscription made is the one in state");
    let listed = sns.list_subscriptions_by_topic().topic_arn(&topic_arn).send().await.unwrap();
    assert_eq!(listed.subscriptions().len(), 1, "no second subscription");
    assert!(session.destroy().await.unwrap().succeeded());
    assert!(subscription(&sns, &made[0]).await.is_none() && topic(&sns, &topic_arn).await.is_none());
}

#[test]
fn bad_topic_and_subscription_settings_are_refused_before_any_call() {
    let topic = "arn:aws:sns:us-east-1:123456789012:events";
    let stack = Stack::<()>::new("sns-checks").program(move |cx, _| {
        cx.add(Topic::new("a").name("jobs").fifo(true));
        cx.add(Topic::new("b").name("bad name!"));
        cx.add(Topic::new("c").policy(json!("allow everyone")));
        cx.add(Subscription::new("d").topic_arn(topic).protocol("smtp").endpoint("ops@example.com"));
        cx.add(Subscription::new("e").topic_arn(topic).protocol("email").endpoint("ops.example.com").raw_message_delivery(true));
        cx.add(Subscription::new("f").topic_arn("events").protocol("sqs").endpoint("https://sqs.example.com/q"));
        Ok(())
    });
    let err = stack.preview(&(), &stack.new_state()).unwrap_err().to_string();
    assert_eq!(
        err,
        "the program declares an invalid graph (8 problems); nothing was changed:\n  \
         - aws:sns:Topic 'a': property 'name' = \"jobs\" is invalid: it must end in .fifo, as the topic is FIFO\n  \
         - aws:sns:Topic 'b': property 'name' = \"bad name!\" is invalid: it must be 1 to 256 letters, digits, '-' or '_' (a FIFO topic's ending in .fifo)\n  \
         - aws:sns:Topic 'c': property 'policy' = \"allow everyone\" is invalid: it must be a JSON object: a policy document with a Statement list\n  \
         - aws:sns:Subscription 'd': property 'protocol' = \"smtp\" is invalid: it must be one of sqs, lambda, http, https, email, email-json, sms, application, firehose\n  \
         - aws:sns:Subscription 'e': property 'endpoint' = \"ops.example.com\" is invalid: it must be an email address, as the protocol is email\n  \
         - aws:sns:Subscription 'e': property 'raw_message_delivery' = true is invalid: it must be false, as protocol email has no raw delivery (only sqs, http, https, firehose do)\n  \
         - aws:sns:Subscription 'f': property 'topic_arn' = \"events\" is invalid: it must be a topic's ARN (arn:aws:sns:...), such as a topic's arn() output\n  \
         - aws:sns:Subscription 'f': property 'endpoint' = \"https://sqs.example.com/q\" is invalid: it must be an SQS queue's ARN (arn:aws:sqs:...), such as a queue's arn() output, as the protocol is sqs"
    );
}

#[tokio::test]
async fn a_renamed_subscription_is_made_once_the_old_one_is_unsubscribed() {
    let (provider, sns, sqs) = aws().await;
    // S: the subscription's logical name.
    let stack = Stack::<String>::new("sns-renamed").provider(provider).program(|cx, name| {
        let topic = cx.add(Topic::new("events"));
        let inbox = cx.add(Queue::new("inbox"));
        cx.add(Subscription::new(name.as_str()).topic_arn(topic.arn()).protocol("sqs").endpoint(inbox.arn()));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&"to-queue".to_owned()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let (topic_arn, inbox) = (id_of(&report.state, TOPIC, "events"), id_of(&report.state, QUEUE, "inbox"));

    // A topic has one subscription per endpoint: made first, the new one would be
    // refused as taken. It waits for the old one's unsubscribe.
    let plan = session.preview(&"to-inbox".to_owned()).unwrap();
    let create = plan.changes.iter().find(|c| c.action == Action::Create).unwrap();
    assert_eq!(create.after_delete, Some(Urn::new("sns-renamed", SUBSCRIPTION, "to-queue")));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let sub = id_of(&report.state, SUBSCRIPTION, "to-inbox");
    let listed = sns.list_subscriptions_by_topic().topic_arn(&topic_arn).send().await.unwrap();
    assert_eq!(listed.subscriptions().iter().filter_map(|s| s.subscription_arn()).collect::<Vec<_>>(), [sub.as_str()]);
    publish(&sns, &topic_arn, "hello", "greeting").await;
    assert_eq!(drain(&sqs, &inbox).await.len(), 1, "delivered once, by the one subscription");
    assert!(session.destroy().await.unwrap().succeeded());
}
