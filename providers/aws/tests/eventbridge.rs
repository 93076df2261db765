//! `aws:eventbridge:Rule`, `aws:eventbridge:Target` and `aws:sqs:QueuePolicy` against the
//! local AWS, every effect checked with the EventBridge and SQS APIs themselves; and an
//! alarm event put on the default bus reaching the queue through all three.

use std::collections::BTreeMap;

use aws_sdk_eventbridge::types::{PutEventsRequestEntry, RuleState, Target as AwsTarget};
use aws_sdk_sqs::types::QueueAttributeName as Attr;
use cairn_aws::eventbridge::{Rule, Target};
use cairn_aws::sqs::{Queue, QueuePolicy};
use cairn_sdk::{Action, Plan, Props, Provider as _, RefreshReport, Stack, StackState, Urn};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const RULE: &str = "aws:eventbridge:Rule";
const TARGET: &str = "aws:eventbridge:Target";
const QUEUE: &str = "aws:sqs:Queue";
const POLICY: &str = "aws:sqs:QueuePolicy";

struct Aws {
    provider: cairn_aws::Provider,
    eb: aws_sdk_eventbridge::Client,
    sqs: aws_sdk_sqs::Client,
}

async fn aws() -> Aws {
    cairn_testkit::moto().configure_env();
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    Aws {
        provider: cairn_aws::Provider::new(&config),
        eb: aws_sdk_eventbridge::Client::new(&config),
        sqs: aws_sdk_sqs::Client::new(&config),
    }
}

fn alarm_pattern() -> Value {
    json!({"source": ["aws.cloudwatch"], "detail-type": ["CloudWatch Alarm State Change"]})
}

fn resource<'a>(state: &'a StackState, ty: &str, name: &str) -> &'a cairn_sdk::ResourceState {
    state.resource(&Urn::new(&state.stack, ty, name)).unwrap_or_else(|| panic!("{ty} {name} in state"))
}

fn id_of(state: &StackState, ty: &str, name: &str) -> String {
    resource(state, ty, name).id.clone()
}

/// An output, or an input the resource echoes.
fn prop_of(state: &StackState, ty: &str, name: &str, key: &str) -> String {
    let r = resource(state, ty, name);
    r.outputs.get(key).or_else(|| r.inputs.get(key)).and_then(Value::as_str).unwrap_or_else(|| panic!("{name}.{key}")).to_owned()
}

/// The changed resources of a plan, by logical name, with their actions.
fn actions(plan: &Plan) -> Vec<(String, Action)> {
    plan.changed().map(|c| (c.urn.name().to_owned(), c.action)).collect()
}

/// The drift a refresh reported, as JSON: `[{urn, diffs: [{name, old, new}]}]`.
fn drift(report: &RefreshReport) -> Value {
    serde_json::to_value(&report.drift).unwrap()
}

/// A rule on the default bus, as EventBridge describes it; `None` once it is gone.
async fn describe_rule(eb: &aws_sdk_eventbridge::Client, name: &str) -> Option<aws_sdk_eventbridge::operation::describe_rule::DescribeRuleOutput> {
    match eb.describe_rule().name(name).send().await {
        Ok(out) => Some(out),
        Err(e) if aws_sdk_eventbridge::error::ProvideErrorMetadata::code(&e) == Some("ResourceNotFoundException") => None,
        Err(e) => panic!("describe_rule {name}: {e:?}"),
    }
}

async fn rule_tags(eb: &aws_sdk_eventbridge::Client, arn: &str) -> BTreeMap<String, String> {
    let out = eb.list_tags_for_resource().resource_arn(arn).send().await.unwrap();
    out.tags().iter().map(|t| (t.key().to_owned(), t.value().to_owned())).collect()
}

/// A rule's targets on the default bus; `None` once the rule is gone.
async fn targets(eb: &aws_sdk_eventbridge::Client, rule: &str) -> Option<Vec<AwsTarget>> {
    match eb.list_targets_by_rule().rule(rule).send().await {
        Ok(out) => Some(out.targets().to_vec()),
        Err(e) if aws_sdk_eventbridge::error::ProvideErrorMetadata::code(&e) == Some("ResourceNotFoundException") => None,
        Err(e) => panic!("list_targets_by_rule {rule}: {e:?}"),
    }
}

async fn queue_exists(sqs: &aws_sdk_sqs::Client, url: &str) -> bool {
    sqs.get_queue_attributes().queue_url(url).attribute_names(Attr::QueueArn).send().await.is_ok()
}

/// A queue's policy as a JSON value; `None` when it has none.
async fn queue_policy(sqs: &aws_sdk_sqs::Client, url: &str) -> Option<Value> {
    let out = sqs.get_queue_attributes().queue_url(url).attribute_names(Attr::Policy).send().await.unwrap();
    out.attributes().and_then(|a| a.get(&Attr::Policy)).filter(|p| !p.is_empty()).map(|p| serde_json::from_str(p).unwrap())
}

// ---------------------------------------------------------------------------------------
// Rules

#[derive(Clone, Default, Serialize, Deserialize)]
struct Rules {
    description: String,
    enabled: bool,
    team: String,
    /// An explicit name for the alarms rule.
    name: Option<String>,
}

fn rules(stack: &str, provider: cairn_aws::Provider) -> Stack<Rules> {
    Stack::<Rules>::new(stack).provider(provider).program(|cx, s| {
        let mut alarms = Rule::new("alarms")
            .event_pattern(alarm_pattern())
            .description(s.description.as_str())
            .enabled(s.enabled)
            .tags([("team", s.team.as_str())]);
        if let Some(name) = &s.name {
            alarms = alarms.name(name.as_str());
        }
        cx.add(alarms);
        cx.add(Rule::new("nightly").schedule_expression("cron(0 3 * * ? *)"));
        Ok(())
    })
}

#[tokio::test]
async fn rules_are_created_changed_in_place_replaced_and_destroyed() {
    const STACK: &str = "eb-rules";
    let aws = aws().await;
    let stack = rules(STACK, aws.provider.clone());
    let first = Rules { description: "alarm state changes".into(), enabled: true, team: "ops".into(), name: None };

    // Create: a pattern rule and a schedule rule, tagged.
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&first).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let name = prop_of(&state, RULE, "alarms", "name");
    assert!(name.starts_with("alarms-"), "{name}");
    assert_eq!(id_of(&state, RULE, "alarms"), format!("default|{name}"));
    let rule = describe_rule(&aws.eb, &name).await.expect("the rule exists");
    let arn = rule.arn().unwrap().to_owned();
    assert_eq!(prop_of(&state, RULE, "alarms", "arn"), arn);
    assert_eq!(serde_json::from_str::<Value>(rule.event_pattern().unwrap()).unwrap(), alarm_pattern());
    assert_eq!(rule.state(), Some(&RuleState::Enabled));
    assert_eq!(rule.description(), Some("alarm state changes"));
    assert_eq!(rule.schedule_expression(), None);
    let tags = rule_tags(&aws.eb, &arn).await;
    assert_eq!(tags.get("team").map(String::as_str), Some("ops"));
    assert_eq!(tags.get("cairn:urn").map(String::as_str), Some("urn:cairn:eb-rules::aws:eventbridge:Rule::alarms"));
    let nightly = describe_rule(&aws.eb, &prop_of(&state, RULE, "nightly", "name")).await.expect("the schedule rule exists");
    assert_eq!(nightly.schedule_expression(), Some("cron(0 3 * * ? *)"));
    assert_eq!(nightly.event_pattern(), None);

    // The same program again changes nothing.
    assert!(!stack.preview(&first, &state).unwrap().has_changes());

    // The pattern rewritten outside Cairn with its keys in another order and other
    // spacing is the same pattern: no drift.
    aws.eb
        .put_rule()
        .name(&name)
        .description("alarm state changes")
        .event_pattern(r#"{ "detail-type" : ["CloudWatch Alarm State Change"],  "source":["aws.cloudwatch"] }"#)
        .state(RuleState::Enabled)
        .send()
        .await
        .unwrap();
    let refreshed = session.refresh().await.unwrap();
    assert!(refreshed.drift.is_empty(), "{:?}", refreshed.drift);
    assert!(!session.preview(&first).unwrap().has_changes());

    // Description, state and tags change in place: the same rule.
    let changed = Rules { description: "paused".into(), enabled: false, team: "sre".into(), ..first.clone() };
    let plan = session.preview(&changed).unwrap();
    assert_eq!(actions(&plan), [("alarms".to_owned(), Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(prop_of(&report.state, RULE, "alarms", "arn"), arn, "same rule");
    let rule = describe_rule(&aws.eb, &name).await.unwrap();
    assert_eq!((rule.state(), rule.description()), (Some(&RuleState::Disabled), Some("paused")));
    assert_eq!(serde_json::from_str::<Value>(rule.event_pattern().unwrap()).unwrap(), alarm_pattern(), "the pattern is kept");
    assert_eq!(rule_tags(&aws.eb, &arn).await.get("team").map(String::as_str), Some("sre"));

    // Drift: enabled outside Cairn; refresh reports it, up turns it off again.
    aws.eb.enable_rule().name(&name).send().await.unwrap();
    let refreshed = session.refresh().await.unwrap();
    let drift = drift(&refreshed);
    assert_eq!(drift.as_array().unwrap().len(), 1, "{drift}");
    assert_eq!(drift[0]["urn"], "urn:cairn:eb-rules::aws:eventbridge:Rule::alarms");
    assert_eq!(drift[0]["diffs"], json!([{"name": "enabled", "old": false, "new": true, "known": true, "replaces": false}]));
    assert!(session.up(&changed).await.unwrap().succeeded());
    assert_eq!(describe_rule(&aws.eb, &name).await.unwrap().state(), Some(&RuleState::Disabled));

    // A new name forces a replacement: the new rule exists, the old one is gone.
    let renamed = Rules { name: Some("eb-rules-alarms-v2".into()), ..changed.clone() };
    let plan = session.preview(&renamed).unwrap();
    let change = plan.changes.iter().find(|c| c.urn.name() == "alarms").unwrap();
    assert_eq!((change.action, change.replace_reasons.clone()), (Action::Replace, vec!["name".to_owned()]));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let new = describe_rule(&aws.eb, "eb-rules-alarms-v2").await.expect("the new rule exists");
    assert_eq!((new.state(), new.description()), (Some(&RuleState::Disabled), Some("paused")));
    assert!(describe_rule(&aws.eb, &name).await.is_none(), "the old rule was deleted");

    // The look-up by tags finds exactly the live rule.
    let urn = Urn::new(STACK, RULE, "alarms");
    let found = aws.provider.lookup(&urn, &Props::new()).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.clone()).collect::<Vec<_>>(), ["default|eb-rules-alarms-v2"]);

    // Destroy leaves neither rule.
    let nightly = prop_of(session.state(), RULE, "nightly", "name");
    assert!(session.destroy().await.unwrap().succeeded());
    assert!(describe_rule(&aws.eb, "eb-rules-alarms-v2").await.is_none());
    assert!(describe_rule(&aws.eb, &nightly).await.is_none());
}

#[tokio::test]
async fn rules_and_targets_outside_the_stack_are_not_taken_over() {
    let aws = aws().await;
    // A rule of the same name made outside Cairn: the create is refused, the rule kept.
    aws.eb.put_rule().name("eb-foreign-rule").description("theirs").event_pattern(r#"{"source":["theirs"]}"#).send().await.unwrap();
    let stack = Stack::<()>::new("eb-foreign").provider(aws.provider.clone()).program(|cx, _| {
        cx.add(Rule::new("named").name("eb-foreign-rule").event_pattern(alarm_pattern()));
        // Not the alarm pattern: its target is a queue that does not exist, and the local
        // AWS fails a whole `PutEvents` (the delivery test's) that matches such a rule.
        let own = cx.add(Rule::new("own").event_pattern(json!({"source": ["eb-foreign"]})));
        cx.add(Target::new("mine").rule(own.name()).arn("arn:aws:sqs:us-east-1:123456789012:eb-foreign"));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    let failures: Vec<String> = report.failures().map(|f| format!("{f:?}")).collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures.iter().any(|f| f.contains("a rule named eb-foreign-rule already exists on event bus default")), "{failures:?}");
    assert_eq!(describe_rule(&aws.eb, "eb-foreign-rule").await.unwrap().description(), Some("theirs"), "left as it was");
    aws.eb.delete_rule().name("eb-foreign-rule").send().await.unwrap();

    // Destroying a rule that still has a target made outside Cairn fails with the reason.
    let own = prop_of(session.state(), RULE, "own", "name");
    let theirs = AwsTarget::builder().id("extra").arn("arn:aws:sqs:us-east-1:123456789012:elsewhere").build().unwrap();
    aws.eb.put_targets().rule(&own).targets(theirs).send().await.unwrap();
    let report = session.destroy().await.unwrap();
    let failures: Vec<String> = report.failures().map(|f| format!("{f:?}")).collect();
    assert!(failures.iter().any(|f| f.contains("still has targets")), "{failures:?}");
    assert!(describe_rule(&aws.eb, &own).await.is_some());
    aws.eb.remove_targets().rule(&own).ids("extra").send().await.unwrap();
    assert!(session.destroy().await.unwrap().succeeded());
    assert!(describe_rule(&aws.eb, &own).await.is_none());
}

// ---------------------------------------------------------------------------------------
// Targets

#[derive(Clone, Default, Serialize, Deserialize)]
struct Targets {
    /// Send to queue `b` rather than `a`.
    second: bool,
    input: Option<String>,
    target_id: Option<String>,
}

fn targets_stack(stack: &str, provider: cairn_aws::Provider) -> Stack<Targets> {
    Stack::<Targets>::new(stack).provider(provider).program(|cx, s| {
        let a = cx.add(Queue::new("a"));
        let b = cx.add(Queue::new("b"));
        let rule = cx.add(Rule::new("orders").event_pattern(json!({"source": ["eb-targets.orders"]})));
        let mut target = Target::new("to-queue").rule(rule.name()).arn(if s.second { b.arn() } else { a.arn() });
        if let Some(input) = &s.input {
            target = target.input(input.as_str());
        }
        if let Some(id) = &s.target_id {
            target = target.target_id(id.as_str());
        }
        cx.add(target);
        Ok(())
    })
}

#[tokio::test]
async fn targets_are_created_changed_in_place_replaced_and_destroyed() {
    const STACK: &str = "eb-targets";
    let aws = aws().await;
    let stack = targets_stack(STACK, aws.provider.clone());
    let first = Targets::default();

    // Create: the target's id within the rule is its logical name.
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&first).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let rule = prop_of(&state, RULE, "orders", "name");
    let (a, b) = (prop_of(&state, QUEUE, "a", "arn"), prop_of(&state, QUEUE, "b", "arn"));
    assert_eq!(id_of(&state, TARGET, "to-queue"), format!("default|{rule}|to-queue"));
    let found = targets(&aws.eb, &rule).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].id(), found[0].arn(), found[0].input()), ("to-queue", a.as_str(), None));

    // The same program again changes nothing.
    assert!(!stack.preview(&first, &state).unwrap().has_changes());

    // The destination and the input change in place.
    let second = Targets { second: true, input: Some(r#"{"kind":"order"}"#.into()), ..first.clone() };
    let plan = session.preview(&second).unwrap();
    assert_eq!(actions(&plan), [("to-queue".to_owned(), Action::Update)]);
    assert!(session.apply(&plan).await.unwrap().succeeded());
    let found = targets(&aws.eb, &rule).await.unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!((found[0].id(), found[0].arn(), found[0].input()), ("to-queue", b.as_str(), Some(r#"{"kind":"order"}"#)));

    // Drift: pointed back at queue a outside Cairn; refresh reports it, up restores it.
    let theirs = AwsTarget::builder().id("to-queue").arn(&a).input(r#"{"kind":"order"}"#).build().unwrap();
    aws.eb.put_targets().rule(&rule).targets(theirs).send().await.unwrap();
    let refreshed = session.refresh().await.unwrap();
    let drift = drift(&refreshed);
    assert_eq!(drift[0]["urn"], "urn:cairn:eb-targets::aws:eventbridge:Target::to-queue");
    assert_eq!(drift[0]["diffs"], json!([{"name": "arn", "old": b, "new": a, "known": true, "replaces": false}]));
    assert!(session.up(&second).await.unwrap().succeeded());
    assert_eq!(targets(&aws.eb, &rule).await.unwrap()[0].arn(), b);

    // Removing the input is a change in place too: PutTargets replaces the whole target.
    let plain = Targets { input: None, ..second.clone() };
    assert_eq!(actions(&session.preview(&plain).unwrap()), [("to-queue".to_owned(), Action::Update)]);
    assert!(session.up(&plain).await.unwrap().succeeded());
    assert_eq!(targets(&aws.eb, &rule).await.unwrap()[0].input(), None);

    // Another target id forces a replacement: the rule has only the new target.
    let renamed = Targets { target_id: Some("orders-queue".into()), ..plain.clone() };
    let plan = session.preview(&renamed).unwrap();
    let change = plan.changes.iter().find(|c| c.urn.name() == "to-queue").unwrap();
    assert_eq!((change.action, change.replace_reasons.clone()), (Action::Replace, vec!["target_id".to_owned()]));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let found = targets(&aws.eb, &rule).await.unwrap();
    assert_eq!(found.iter().map(|t| (t.id(), t.arn())).collect::<Vec<_>>(), [("orders-queue", b.as_str())]);
    let refreshed = session.refresh().await.unwrap();
    assert!(refreshed.drift.is_empty(), "{:?}", refreshed.drift);

    // The look-up finds the target by the rule and id it was created with; with nothing
    // to go by, it finds nothing (a target has no tags).
    let urn = Urn::new(STACK, TARGET, "to-queue");
    let created_with = Props::from_value(json!({"rule": rule, "target_id": "orders-queue"})).unwrap();
    let found = aws.provider.lookup(&urn, &created_with).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.clone()).collect::<Vec<_>>(), [format!("default|{rule}|orders-queue")]);
    assert!(aws.provider.lookup(&urn, &Props::new()).await.unwrap().is_empty());

    // Destroy removes the target before its rule (which AWS requires), then the rule.
    let (url_a, url_b) = (id_of(session.state(), QUEUE, "a"), id_of(session.state(), QUEUE, "b"));
    let report = session.destroy().await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert!(targets(&aws.eb, &rule).await.is_none(), "the rule is gone, and its targets");
    assert!(!queue_exists(&aws.sqs, &url_a).await && !queue_exists(&aws.sqs, &url_b).await);
}

// ---------------------------------------------------------------------------------------
// Queue policies

#[derive(Clone, Default, Serialize, Deserialize)]
struct Policies {
    /// The ARN allowed to send.
    source: String,
    /// A queue made outside the stack, `(url, arn)`, to put the policy on instead.
    other: Option<(String, String)>,
}

fn policies(stack: &str, provider: cairn_aws::Provider) -> Stack<Policies> {
    Stack::<Policies>::new(stack).provider(provider).program(|cx, s| {
        let queue = cx.add(Queue::new("inbox"));
        let policy = match &s.other {
            None => QueuePolicy::new("events").queue_url(queue.url()).allow_service(queue.arn(), "events.amazonaws.com", s.source.as_str()),
            Some((url, arn)) => QueuePolicy::new("events").queue_url(url.as_str()).allow_service(arn.as_str(), "events.amazonaws.com", s.source.as_str()),
        };
        cx.add(policy);
        Ok(())
    })
}

/// The statement `allow_service` builds.
fn statement(queue_arn: &str, source: &str) -> Value {
    json!({
        "Sid": "AllowSendMessage1",
        "Effect": "Allow",
        "Principal": {"Service": "events.amazonaws.com"},
        "Action": "sqs:SendMessage",
        "Resource": queue_arn,
        "Condition": {"ArnEquals": {"aws:SourceArn": source}},
    })
}

#[tokio::test]
async fn queue_policies_are_set_changed_in_place_moved_and_cleared() {
    const STACK: &str = "eb-policies";
    let aws = aws().await;
    let stack = policies(STACK, aws.provider.clone());
    let rule_a = "arn:aws:events:us-east-1:123456789012:rule/eb-policies-a";
    let first = Policies { source: rule_a.into(), other: None };

    // Create: the queue's Policy attribute, built from the queue's ARN output.
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&first).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let (url, arn) = (id_of(&state, QUEUE, "inbox"), prop_of(&state, QUEUE, "inbox", "arn"));
    assert_eq!(id_of(&state, POLICY, "events"), url);
    let expected = json!({"Version": "2012-10-17", "Statement": [statement(&arn, rule_a)]});
    assert_eq!(queue_policy(&aws.sqs, &url).await, Some(expected.clone()));

    // The same program again changes nothing.
    assert!(!stack.preview(&first, &state).unwrap().has_changes());

    // The same policy written outside Cairn with other key order and spacing: no drift.
    let reordered = format!(
        r#"{{"Statement":[{{"Condition":{{"ArnEquals":{{"aws:SourceArn":"{rule_a}"}}}}, "Resource":"{arn}","Action":"sqs:SendMessage","Principal":{{"Service":"events.amazonaws.com"}},"Effect":"Allow","Sid":"AllowSendMessage1"}}],   "Version":"2012-10-17"}}"#
    );
    aws.sqs.set_queue_attributes().queue_url(&url).attributes(Attr::Policy, reordered).send().await.unwrap();
    let refreshed = session.refresh().await.unwrap();
    assert!(refreshed.drift.is_empty(), "{:?}", refreshed.drift);

    // Another sender changes the policy in place.
    let rule_b = "arn:aws:events:us-east-1:123456789012:rule/eb-policies-b";
    let second = Policies { source: rule_b.into(), other: None };
    let plan = session.preview(&second).unwrap();
    assert_eq!(actions(&plan), [("events".to_owned(), Action::Update)]);
    assert!(session.apply(&plan).await.unwrap().succeeded());
    let expected = json!({"Version": "2012-10-17", "Statement": [statement(&arn, rule_b)]});
    assert_eq!(queue_policy(&aws.sqs, &url).await, Some(expected.clone()));

    // Drift: the policy replaced outside Cairn; refresh reports it, up restores it.
    let theirs = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "sqs:*", "Resource": arn}]});
    aws.sqs.set_queue_attributes().queue_url(&url).attributes(Attr::Policy, theirs.to_string()).send().await.unwrap();
    let refreshed = session.refresh().await.unwrap();
    let drift = drift(&refreshed);
    assert_eq!(drift[0]["urn"], "urn:cairn:eb-policies::aws:sqs:QueuePolicy::events");
    assert_eq!(drift[0]["diffs"], json!([{"name": "policy", "old": expected, "new": theirs, "known": true, "replaces": false}]));
    assert!(session.up(&second).await.unwrap().succeeded());
    assert_eq!(queue_policy(&aws.sqs, &url).await, Some(expected.clone()));

    // Another queue forces a replacement: its policy is set, the first queue's cleared.
    let other = aws.sqs.create_queue().queue_name("eb-policies-other").send().await.unwrap();
    let other_url = other.queue_url().unwrap().to_owned();
    let other_arn = aws
        .sqs
        .get_queue_attributes()
        .queue_url(&other_url)
        .attribute_names(Attr::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes()
        .unwrap()[&Attr::QueueArn]
        .clone();
    let moved = Policies { other: Some((other_url.clone(), other_arn.clone())), ..second.clone() };
    let plan = session.preview(&moved).unwrap();
    let change = plan.changes.iter().find(|c| c.urn.name() == "events").unwrap();
    assert_eq!((change.action, change.replace_reasons.clone()), (Action::Replace, vec!["queue_url".to_owned()]));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(queue_policy(&aws.sqs, &other_url).await, Some(json!({"Version": "2012-10-17", "Statement": [statement(&other_arn, rule_b)]})));
    assert_eq!(queue_policy(&aws.sqs, &url).await, None, "the first queue's policy was cleared");

    // The look-up finds the policy by the queue it was created with.
    let urn = Urn::new(STACK, POLICY, "events");
    let found = aws.provider.lookup(&urn, &Props::from_value(json!({"queue_url": other_url})).unwrap()).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [other_url.as_str()]);

    // Destroy clears the policy of the queue the stack does not own, and leaves the queue.
    let report = session.destroy().await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert!(queue_exists(&aws.sqs, &other_url).await);
    assert_eq!(queue_policy(&aws.sqs, &other_url).await, None);
    assert!(!queue_exists(&aws.sqs, &url).await);
    aws.sqs.delete_queue().queue_url(&other_url).send().await.unwrap();
}

#[tokio::test]
async fn a_renamed_target_keeping_its_target_id_is_put_once_the_old_one_is_removed() {
    const STACK: &str = "eb-target-renamed";
    let aws = aws().await;
    // S: the target's logical name, and whether its id within the rule is given.
    let stack = Stack::<(String, bool)>::new(STACK).provider(aws.provider.clone()).program(|cx, (name, given)| {
        let queue = cx.add(Queue::new("inbox"));
        let rule = cx.add(Rule::new("orders").event_pattern(json!({"source": ["eb-target-renamed.orders"]})));
        let target = Target::new(name.as_str()).rule(rule.name()).arn(queue.arn());
        cx.add(if *given { target.target_id("to-inbox") } else { target });
        Ok(())
    });
    let at = |name: &str, given: bool| (name.to_owned(), given);
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&at("to-queue", true)).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let (rule, arn) = (prop_of(&report.state, RULE, "orders", "name"), prop_of(&report.state, QUEUE, "inbox", "arn"));

    // A rule has one target per id, and PutTargets overwrites: put alongside the old
    // declaration's removal, the new target could be the one removed, and the rule
    // would deliver nowhere while state says it delivers.
    let plan = session.preview(&at("to-inbox", true)).unwrap();
    let create = plan.changes.iter().find(|c| c.action == Action::Create).unwrap();
    assert_eq!(create.after_delete, Some(Urn::new(STACK, TARGET, "to-queue")));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let found = targets(&aws.eb, &rule).await.unwrap();
    assert_eq!(found.iter().map(|t| (t.id(), t.arn())).collect::<Vec<_>>(), [("to-inbox", arn.as_str())]);
    let refreshed = session.refresh().await.unwrap();
    assert!(refreshed.drift.is_empty(), "{:?}", refreshed.drift);

    // Left to default to the logical name, a renamed target's id is another: nothing
    // waits.
    assert!(session.up(&at("to-inbox", false)).await.unwrap().succeeded());
    let plan = session.preview(&at("deliver", false)).unwrap();
    assert!(plan.changes.iter().all(|c| c.after_delete.is_none()), "{plan:?}");
    assert!(session.apply(&plan).await.unwrap().succeeded());
    let found = targets(&aws.eb, &rule).await.unwrap();
    assert_eq!(found.iter().map(|t| (t.id(), t.arn())).collect::<Vec<_>>(), [("deliver", arn.as_str())]);
    assert!(session.destroy().await.unwrap().succeeded());
}

#[tokio::test]
async fn a_renamed_queue_policy_is_set_once_the_old_name_has_cleared_it() {
    const STACK: &str = "eb-policy-renamed";
    const RULE: &str = "arn:aws:events:us-east-1:123456789012:rule/eb-policy-renamed";
    let aws = aws().await;
    // S: the policy's logical name.
    let stack = Stack::<String>::new(STACK).provider(aws.provider.clone()).program(|cx, name| {
        let queue = cx.add(Queue::new("inbox"));
        cx.add(QueuePolicy::new(name.as_str()).queue_url(queue.url()).allow_service(queue.arn(), "events.amazonaws.com", RULE));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&"events".to_owned()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let (url, arn) = (id_of(&report.state, QUEUE, "inbox"), prop_of(&report.state, QUEUE, "inbox", "arn"));
    let expected = json!({"Version": "2012-10-17", "Statement": [statement(&arn, RULE)]});

    // The queue has one policy, so the renamed declaration is the same one: set in
    // parallel, the old name's delete could clear it after, and EventBridge could no
    // longer deliver. It is set once that delete is done.
    let plan = session.preview(&"events-policy".to_owned()).unwrap();
    let create = plan.changes.iter().find(|c| c.action == Action::Create).unwrap();
    assert_eq!(create.after_delete, Some(Urn::new(STACK, POLICY, "events")));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(queue_policy(&aws.sqs, &url).await, Some(expected));
    assert_eq!(id_of(&report.state, POLICY, "events-policy"), url);
    let refreshed = session.refresh().await.unwrap();
    assert!(refreshed.drift.is_empty(), "{:?}", refreshed.drift);
    assert!(session.destroy().await.unwrap().succeeded());
}

#[tokio::test]
async fn a_queue_policy_set_outside_cairn_is_not_overwritten() {
    let aws = aws().await;
    let queue = aws.sqs.create_queue().queue_name("eb-policy-theirs").send().await.unwrap();
    let url = queue.queue_url().unwrap().to_owned();
    let theirs = json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "sqs:SendMessage", "Resource": "*"}]});
    aws.sqs.set_queue_attributes().queue_url(&url).attributes(Attr::Policy, theirs.to_string()).send().await.unwrap();

    let stack = policies("eb-policy-theirs", aws.provider.clone());
    let s = Policies { source: "arn:aws:events:us-east-1:123456789012:rule/x".into(), other: Some((url.clone(), "arn:aws:sqs:us-east-1:123456789012:eb-policy-theirs".into())) };
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&s).await.unwrap();
    let failures: Vec<String> = report.failures().map(|f| format!("{f:?}")).collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("already has a policy that Cairn did not set"), "{failures:?}");
    assert_eq!(queue_policy(&aws.sqs, &url).await, Some(theirs), "left as it was");
    assert!(session.destroy().await.unwrap().succeeded());
    aws.sqs.delete_queue().queue_url(&url).send().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// The three together: an alarm state change reaches the queue.

#[tokio::test]
async fn an_alarm_state_change_event_is_delivered_to_the_queue() {
    const STACK: &str = "eb-delivery";
    let aws = aws().await;
    let stack = Stack::<()>::new(STACK).provider(aws.provider.clone()).program(|cx, _| {
        let queue = cx.add(Queue::new("alarms"));
        let rule = cx.add(Rule::new("alarm-changes").event_pattern(alarm_pattern()));
        cx.add(Target::new("to-queue").rule(rule.name()).arn(queue.arn()));
        cx.add(QueuePolicy::new("alarms").queue_url(queue.url()).allow_service(queue.arn(), "events.amazonaws.com", rule.arn()));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let (url, queue_arn) = (id_of(&state, QUEUE, "alarms"), prop_of(&state, QUEUE, "alarms", "arn"));
    let (rule, rule_arn) = (prop_of(&state, RULE, "alarm-changes", "name"), prop_of(&state, RULE, "alarm-changes", "arn"));

    // The wiring, as AWS has it: the rule sends to the queue, and the queue lets
    // EventBridge send on behalf of that rule only. (The local AWS does not enforce queue
    // policies, so this is what shows the policy right.)
    let found = targets(&aws.eb, &rule).await.unwrap();
    assert_eq!(found.iter().map(|t| (t.id(), t.arn())).collect::<Vec<_>>(), [("to-queue", queue_arn.as_str())]);
    let policy = queue_policy(&aws.sqs, &url).await.expect("the queue has a policy");
    assert_eq!(policy["Statement"], json!([statement(&queue_arn, &rule_arn)]));

    // An alarm state change and an event the pattern does not match.
    let alarm = PutEventsRequestEntry::builder()
        .source("aws.cloudwatch")
        .detail_type("CloudWatch Alarm State Change")
        .detail(json!({"alarmName": "eb-delivery-cpu-high", "state": {"value": "ALARM"}, "previousState": {"value": "OK"}}).to_string())
        .build();
    let other = PutEventsRequestEntry::builder()
        .source("eb-delivery.other")
        .detail_type("CloudWatch Alarm State Change")
        .detail(json!({"alarmName": "not-for-us"}).to_string())
        .build();
    let put = aws.eb.put_events().entries(alarm).entries(other).send().await.unwrap();
    assert_eq!(put.failed_entry_count(), 0, "{put:?}");

    // Received with SQS: exactly the alarm's envelope.
    let mut bodies = Vec::new();
    for _ in 0..5 {
        let out = aws.sqs.receive_message().queue_url(&url).max_number_of_messages(10).wait_time_seconds(1).send().await.unwrap();
        if out.messages().is_empty() && !bodies.is_empty() {
            break;
        }
        bodies.extend(out.messages().iter().map(|m| serde_json::from_str::<Value>(m.body().unwrap()).unwrap()));
    }
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    let event = &bodies[0];
    assert_eq!((event["source"].as_str(), event["detail-type"].as_str()), (Some("aws.cloudwatch"), Some("CloudWatch Alarm State Change")));
    assert_eq!(event["detail"]["alarmName"], "eb-delivery-cpu-high");
    assert_eq!(event["detail"]["state"]["value"], "ALARM");

    // Destroy: target, policy, rule and queue are gone.
    let report = session.destroy().await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert!(describe_rule(&aws.eb, &rule).await.is_none());
    assert!(!queue_exists(&aws.sqs, &url).await);
}

// ---------------------------------------------------------------------------------------
// Checks before any call

#[test]
fn bad_rules_targets_and_policies_are_refused_before_any_call() {
    let stack = Stack::<()>::new("eb-checks").program(|cx, _| {
        cx.add(Rule::new("both").event_pattern(json!({"source": ["x"]})).schedule_expression("rate(5 minutes)"));
        cx.add(Rule::new("neither"));
        cx.add(Rule::new("list").event_pattern(json!(["aws.cloudwatch"])));
        cx.add(Rule::new("every").schedule_expression("every 5 minutes"));
        cx.add(Rule::new("bus").schedule_expression("rate(1 hour)").event_bus_name("orders"));
        cx.add(Target::new("two-inputs").rule("r").arn("arn:aws:sqs:us-east-1:123456789012:q").input("{}").input_path("$.detail"));
        cx.add(Target::new("bad-arn").rule("r").arn("queue-url").target_id("no spaces allowed"));
        cx.add(QueuePolicy::new("no-statement").queue_url("https://sqs.us-east-1.amazonaws.com/123456789012/q").policy(json!({"Version": "2012-10-17"})));
        Ok(())
    });
    let err = stack.preview(&(), &stack.new_state()).unwrap_err().to_string();
    assert_eq!(
        err,
        "the program declares an invalid graph (9 problems); nothing was changed:\n  \
         - aws:eventbridge:Rule 'both': property 'schedule_expression' = \"rate(5 minutes)\" is invalid: it must be unset as event_pattern is set: a rule needs exactly one of an event pattern and a schedule (use two rules for both)\n  \
         - aws:eventbridge:Rule 'neither': property 'event_pattern' = (unset) is invalid: it must be set, or schedule_expression: a rule needs exactly one of an event pattern and a schedule\n  \
         - aws:eventbridge:Rule 'list': property 'event_pattern' = [\"aws.cloudwatch\"] is invalid: it must be a JSON object, such as {\"source\": [\"aws.cloudwatch\"]}\n  \
         - aws:eventbridge:Rule 'every': property 'schedule_expression' = \"every 5 minutes\" is invalid: it must be rate(<n> <unit>) or cron(<6 fields>), such as \"rate(5 minutes)\"\n  \
         - aws:eventbridge:Rule 'bus': property 'schedule_expression' = \"rate(1 hour)\" is invalid: it must be used on the default event bus only (AWS runs schedules there): leave event_bus_name unset\n  \
         - aws:eventbridge:Target 'two-inputs': property 'input_path' = \"$.detail\" is invalid: it must be unset as input is set: a target sends one of the two\n  \
         - aws:eventbridge:Target 'bad-arn': property 'target_id' = \"no spaces allowed\" is invalid: it must be 1 to 64 letters, digits, '.', '-' or '_'\n  \
         - aws:eventbridge:Target 'bad-arn': property 'arn' = \"queue-url\" is invalid: it must be an ARN (arn:...), such as a queue's arn()\n  \
         - aws:sqs:QueuePolicy 'no-statement': property 'policy' = {\"Version\":\"2012-10-17\"} is invalid: it must be a policy document: a JSON object with a non-empty \"Statement\" list, such as QueuePolicy::allow_service builds"
    );
}
