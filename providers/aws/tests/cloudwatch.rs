//! `aws:cloudwatch:MetricAlarm` against the local AWS, every effect checked with
//! CloudWatch's own `DescribeAlarms` and `ListTagsForResource`.
//!
//! moto 5.2.5 stores alarms and their tags as AWS does, but never evaluates an alarm and
//! fires no action (see shared/moto-notes.md): these tests check configuration only.
//!
//! The CloudWatch SDK (aws-sdk-cloudwatch 1.140) speaks only the Smithy RPC v2 CBOR
//! protocol, which moto 5.2.5 does not serve; the local AWS the fixture starts
//! (`scripts/local_aws.py`) translates it to moto's JSON protocol, call for call. It
//! changes the encoding only: what is stored and answered is moto's.

use std::collections::BTreeMap;

use aws_sdk_cloudwatch::types::{ComparisonOperator, Dimension, MetricAlarm as Alarm, Statistic};
use cairn_aws::cloudwatch::MetricAlarm;
use cairn_aws::sqs::Queue;
use cairn_sdk::{Action, Provider as _, Stack, StackState, Urn};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const ALARM: &str = "aws:cloudwatch:MetricAlarm";
const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:ops";

async fn aws() -> (cairn_aws::Provider, aws_sdk_cloudwatch::Client) {
    cairn_testkit::moto().configure_env();
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    (cairn_aws::Provider::new(&config), aws_sdk_cloudwatch::Client::new(&config))
}

/// The metric alarm named `name`, as CloudWatch describes it.
async fn alarm(cw: &aws_sdk_cloudwatch::Client, name: &str) -> Option<Alarm> {
    let out = cw.describe_alarms().alarm_names(name).send().await.unwrap();
    out.metric_alarms().iter().find(|a| a.alarm_name() == Some(name)).cloned()
}

async fn tags(cw: &aws_sdk_cloudwatch::Client, arn: &str) -> BTreeMap<String, String> {
    let out = cw.list_tags_for_resource().resource_arn(arn).send().await.unwrap();
    out.tags().iter().map(|t| (t.key().unwrap().to_owned(), t.value().unwrap_or_default().to_owned())).collect()
}

fn dimensions(a: &Alarm) -> Vec<(String, String)> {
    a.dimensions().iter().map(|d| (d.name().unwrap().to_owned(), d.value().unwrap().to_owned())).collect()
}

/// The alarm names tagged with `stack`.
async fn alarms_of(cw: &aws_sdk_cloudwatch::Client, stack: &str) -> Vec<String> {
    let mut names = Vec::new();
    for a in cw.describe_alarms().send().await.unwrap().metric_alarms() {
        if tags(cw, a.alarm_arn().unwrap()).await.get("cairn:stack").map(String::as_str) == Some(stack) {
            names.push(a.alarm_name().unwrap().to_owned());
        }
    }
    names
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct Watch {
    threshold: f64,
    /// Notify the ops topic when the backlog alarm fires.
    notify: bool,
    team: String,
    /// The backlog alarm's own name, when set.
    name: Option<String>,
}

fn watch(stack: &str, aws: cairn_aws::Provider) -> Stack<Watch> {
    Stack::<Watch>::new(stack).provider(aws).program(|cx, s| {
        let queue = cx.add(Queue::new("jobs"));
        let mut backlog = MetricAlarm::new("backlog")
            .description("jobs are piling up")
            .namespace("AWS/SQS")
            .metric_name("ApproximateNumberOfMessagesVisible")
            .dimension("QueueName", queue.name())
            .statistic("Maximum")
            .period(300)
            .evaluation_periods(2)
            .threshold(s.threshold)
            .comparison_operator("GreaterThanThreshold")
            .treat_missing_data("notBreaching")
            .ok_actions([TOPIC])
            .tags([("team", s.team.as_str())]);
        if s.notify {
            backlog = backlog.alarm_actions([TOPIC]);
        }
        if let Some(name) = &s.name {
            backlog = backlog.name(name.as_str());
        }
        cx.add(backlog);
        // Every default left as it is.
        cx.add(MetricAlarm::new("cpu").namespace("AWS/EC2").metric_name("CPUUtilization").threshold(80.0).comparison_operator("GreaterThanOrEqualToThreshold"));
        Ok(())
    })
}

fn id_of(state: &StackState, name: &str) -> String {
    state.resource(&Urn::new(&state.stack, ALARM, name)).unwrap_or_else(|| panic!("{name} in state")).id.clone()
}

/// What the handle's `key()` resolves to: an output, or an input the handle echoes.
fn output(state: &StackState, name: &str, key: &str) -> Value {
    let r = state.resource(&Urn::new(&state.stack, ALARM, name)).unwrap();
    r.outputs.get(key).or_else(|| r.inputs.get(key)).cloned().unwrap_or(Value::Null)
}

#[tokio::test]
async fn alarms_are_created_updated_in_place_replaced_and_destroyed() {
    let (provider, cw) = aws().await;
    let stack = watch("cw-lifecycle", provider);

    // Create: every setting as declared, the queue's name as the dimension, the defaults
    // where nothing was said, the tags on the ARN.
    let first = Watch { threshold: 100.0, notify: true, team: "shop".into(), name: None };
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&first).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let queue = state.resource(&Urn::new("cw-lifecycle", "aws:sqs:Queue", "jobs")).unwrap().inputs.get("name").cloned().unwrap();
    let backlog = id_of(&state, "backlog");
    assert!(backlog.starts_with("backlog-"), "{backlog}");
    let a = alarm(&cw, &backlog).await.expect("the alarm exists");
    assert_eq!(a.alarm_description(), Some("jobs are piling up"));
    assert_eq!((a.namespace(), a.metric_name()), (Some("AWS/SQS"), Some("ApproximateNumberOfMessagesVisible")));
    assert_eq!(dimensions(&a), [("QueueName".to_owned(), queue.as_str().unwrap().to_owned())]);
    assert_eq!(a.statistic(), Some(&Statistic::Maximum));
    assert_eq!((a.period(), a.evaluation_periods(), a.threshold()), (Some(300), Some(2), Some(100.0)));
    assert_eq!(a.comparison_operator(), Some(&ComparisonOperator::GreaterThanThreshold));
    assert_eq!(a.treat_missing_data(), Some("notBreaching"));
    assert_eq!((a.alarm_actions(), a.ok_actions()), (&[TOPIC.to_owned()][..], &[TOPIC.to_owned()][..]));
    assert_eq!(a.actions_enabled(), Some(true));
    let arn = a.alarm_arn().unwrap().to_owned();
    assert_eq!(output(&state, "backlog", "arn"), json!(arn));
    assert_eq!(output(&state, "backlog", "name"), json!(backlog));
    let t = tags(&cw, &arn).await;
    assert_eq!(t.get("team").map(String::as_str), Some("shop"));
    assert_eq!(t.get("cairn:urn").map(String::as_str), Some("urn:cairn:cw-lifecycle::aws:cloudwatch:MetricAlarm::backlog"));
    let cpu = alarm(&cw, &id_of(&state, "cpu")).await.expect("the cpu alarm exists");
    assert_eq!((cpu.statistic(), cpu.period(), cpu.evaluation_periods()), (Some(&Statistic::Average), Some(60), Some(1)));
    assert_eq!((cpu.treat_missing_data(), cpu.actions_enabled()), (Some("missing"), Some(true)));
    assert!(cpu.dimensions().is_empty() && cpu.alarm_actions().is_empty() && cpu.alarm_description().is_none());

    // The same state again changes nothing, and a refresh finds nothing changed.
    assert!(!stack.preview(&first, &state).unwrap().has_changes());
    let refreshed = session.refresh().await.unwrap();
    assert!(refreshed.drift.is_empty(), "{:?}", refreshed.drift);
    assert!(!session.preview(&first).unwrap().has_changes());

    // A new threshold, no alarm actions and other tags: the same alarm, changed in place.
    let second = Watch { threshold: 250.5, notify: false, team: "ops".into(), name: None };
    let plan = session.preview(&second).unwrap();
    let actions: Vec<_> = plan.changed().map(|c| (c.urn.name().to_owned(), c.action)).collect();
    assert_eq!(actions, [("backlog".to_owned(), Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(id_of(&report.state, "backlog"), backlog, "same alarm");
    let a = alarm(&cw, &backlog).await.unwrap();
    assert_eq!(a.threshold(), Some(250.5));
    assert!(a.alarm_actions().is_empty(), "alarm actions removed: {:?}", a.alarm_actions());
    assert_eq!(a.ok_actions(), [TOPIC.to_owned()], "everything else as before");
    assert_eq!((a.statistic(), a.period(), dimensions(&a).len()), (Some(&Statistic::Maximum), Some(300), 1));
    let t = tags(&cw, &arn).await;
    assert_eq!(t.get("team").map(String::as_str), Some("ops"));
    assert!(t.contains_key("cairn:urn"), "Cairn's tags stay: {t:?}");
    assert!(!session.preview(&second).unwrap().has_changes());

    // A name of its own forces a replacement: the new alarm exists, the old one is gone.
    let renamed = Watch { name: Some("jobs-backlog".into()), ..second.clone() };
    let plan = session.preview(&renamed).unwrap();
    let change = plan.changes.iter().find(|c| c.urn.name() == "backlog").unwrap();
    assert_eq!((change.action, change.replace_reasons.clone()), (Action::Replace, vec!["name".to_owned()]));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(id_of(&report.state, "backlog"), "jobs-backlog");
    let a = alarm(&cw, "jobs-backlog").await.expect("the new alarm exists");
    assert_eq!((a.threshold(), dimensions(&a).len()), (Some(250.5), 1));
    assert_eq!(tags(&cw, a.alarm_arn().unwrap()).await.get("team").map(String::as_str), Some("ops"));
    assert!(alarm(&cw, &backlog).await.is_none(), "the old alarm was deleted");

    // The look-up by tag finds exactly the live alarm.
    let provider = cairn_aws::Provider::from_env().await;
    let found = provider.lookup(&Urn::new("cw-lifecycle", ALARM, "backlog"), &Default::default()).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.clone()).collect::<Vec<_>>(), ["jobs-backlog"]);

    // Destroy leaves no alarm of the stack.
    let report = session.destroy().await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert!(alarm(&cw, "jobs-backlog").await.is_none());
    assert!(alarms_of(&cw, "cw-lifecycle").await.is_empty());
}

#[tokio::test]
async fn drift_made_outside_cairn_is_reported_and_corrected() {
    let (provider, cw) = aws().await;
    let stack = watch("cw-drift", provider);
    let s = Watch { threshold: 10.0, notify: true, team: "shop".into(), name: None };
    let mut session = stack.in_memory_session().await.unwrap();
    let state = session.up(&s).await.unwrap().state;
    let name = id_of(&state, "backlog");
    let a = alarm(&cw, &name).await.unwrap();

    // Someone raises the threshold and turns the actions off by hand.
    cw.put_metric_alarm()
        .alarm_name(&name)
        .set_alarm_description(a.alarm_description().map(str::to_owned))
        .namespace("AWS/SQS")
        .metric_name("ApproximateNumberOfMessagesVisible")
        .set_dimensions(Some(a.dimensions().iter().map(|d| Dimension::builder().set_name(d.name().map(str::to_owned)).set_value(d.value().map(str::to_owned)).build()).collect()))
        .statistic(Statistic::Maximum)
        .period(300)
        .evaluation_periods(2)
        .threshold(99.0)
        .comparison_operator(ComparisonOperator::GreaterThanThreshold)
        .treat_missing_data("notBreaching")
        .alarm_actions(TOPIC)
        .ok_actions(TOPIC)
        .actions_enabled(false)
        .send()
        .await
        .unwrap();

    let refreshed = session.refresh().await.unwrap();
    let drift = serde_json::to_value(&refreshed.drift).unwrap();
    assert_eq!(drift.as_array().unwrap().len(), 1, "{drift}");
    assert_eq!(drift[0]["urn"], "urn:cairn:cw-drift::aws:cloudwatch:MetricAlarm::backlog");
    let diffs: Vec<(Value, Value, Value)> =
        drift[0]["diffs"].as_array().unwrap().iter().map(|d| (d["name"].clone(), d["old"].clone(), d["new"].clone())).collect();
    assert_eq!(diffs, [(json!("actions_enabled"), json!(true), json!(false)), (json!("threshold"), json!(10.0), json!(99.0))]);

    // The next up puts it back.
    assert!(session.up(&s).await.unwrap().succeeded());
    let a = alarm(&cw, &name).await.unwrap();
    assert_eq!((a.threshold(), a.actions_enabled()), (Some(10.0), Some(true)));
    assert!(session.destroy().await.unwrap().succeeded());
    assert!(alarm(&cw, &name).await.is_none());
}

#[test]
fn bad_alarm_settings_are_refused_before_any_call() {
    let stack = Stack::<()>::new("cw-checks").program(|cx, _| {
        let base = |n: &str| MetricAlarm::new(n).namespace("AWS/SQS").metric_name("NumberOfMessagesSent").threshold(1.0);
        cx.add(base("a").statistic("Median").comparison_operator("GreaterThanThreshold"));
        cx.add(base("b").comparison_operator("Above"));
        cx.add(base("c").comparison_operator("LessThanThreshold").period(45));
        cx.add(base("d").comparison_operator("LessThanThreshold").period(60).evaluation_periods(1441));
        cx.add(base("e").comparison_operator("LessThanThreshold").treat_missing_data("zero").alarm_actions(["ops-topic"]));
        Ok(())
    });
    let err = stack.preview(&(), &stack.new_state()).unwrap_err().to_string();
    assert_eq!(
        err,
        "the program declares an invalid graph (6 problems); nothing was changed:\n  \
         - aws:cloudwatch:MetricAlarm 'a': property 'statistic' = \"Median\" is invalid: it must be one of \"Average\", \"Sum\", \"Minimum\", \"Maximum\", \"SampleCount\"\n  \
         - aws:cloudwatch:MetricAlarm 'b': property 'comparison_operator' = \"Above\" is invalid: it must be one of \"GreaterThanThreshold\", \"GreaterThanOrEqualToThreshold\", \"LessThanThreshold\", \"LessThanOrEqualToThreshold\"\n  \
         - aws:cloudwatch:MetricAlarm 'c': property 'period' = 45 is invalid: it must be 10, 20, 30 (high-resolution metrics) or a multiple of 60 seconds\n  \
         - aws:cloudwatch:MetricAlarm 'd': property 'evaluation_periods' = 1441 is invalid: it must be at most 1440 with a period of 60 s: period times evaluation_periods may span at most one day (86400 s) for a period under an hour\n  \
         - aws:cloudwatch:MetricAlarm 'e': property 'treat_missing_data' = \"zero\" is invalid: it must be one of \"missing\", \"notBreaching\", \"breaching\", \"ignore\"\n  \
         - aws:cloudwatch:MetricAlarm 'e': property 'alarm_actions' = [\"ops-topic\"] is invalid: it must be a list of at most 5 ARNs (arn:...), such as SNS topics or scaling policies"
    );
}
