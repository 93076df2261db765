//! `aws:logs:LogGroup` against the local AWS, every effect checked with CloudWatch Logs'
//! own `DescribeLogGroups` and `ListTagsForResource`.
//!
//! moto 5.2.5 does not implement AssociateKmsKey/DisassociateKmsKey (which is why the KMS
//! key forces a replacement) and does not check that a KMS key exists or may be used.

use std::collections::HashMap;

use aws_sdk_cloudwatchlogs::types::LogGroup as Group;
use cairn_aws::logs::LogGroup;
use cairn_sdk::{Action, Provider as _, Stack, StackState, Urn};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const LOG_GROUP: &str = "aws:logs:LogGroup";
const KEY: &str = "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555";

async fn aws() -> (cairn_aws::Provider, aws_sdk_cloudwatchlogs::Client) {
    cairn_testkit::moto().configure_env();
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    (cairn_aws::Provider::new(&config), aws_sdk_cloudwatchlogs::Client::new(&config))
}

/// The log group named `name`, as CloudWatch Logs describes it.
async fn group(logs: &aws_sdk_cloudwatchlogs::Client, name: &str) -> Option<Group> {
    let out = logs.describe_log_groups().log_group_name_prefix(name).send().await.unwrap();
    out.log_groups().iter().find(|g| g.log_group_name() == Some(name)).cloned()
}

async fn tags(logs: &aws_sdk_cloudwatchlogs::Client, arn: &str) -> HashMap<String, String> {
    logs.list_tags_for_resource().resource_arn(arn).send().await.unwrap().tags().cloned().unwrap_or_default()
}

/// The names of the groups tagged with `stack`.
async fn groups_of(logs: &aws_sdk_cloudwatchlogs::Client, stack: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut pages = logs.describe_log_groups().into_paginator().send();
    while let Some(page) = pages.next().await {
        for g in page.unwrap().log_groups() {
            if tags(logs, g.log_group_arn().unwrap()).await.get("cairn:stack").map(String::as_str) == Some(stack) {
                names.push(g.log_group_name().unwrap().to_owned());
            }
        }
    }
    names
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct App {
    retention: Option<u32>,
    team: String,
    encrypted: bool,
}

/// The audit group's own name in `stack`: every character kind AWS allows.
fn audit_name(stack: &str) -> String {
    format!("/cairn/{stack}/audit_trail.log#1")
}

fn app(stack: &str, aws: cairn_aws::Provider) -> Stack<App> {
    let audit = audit_name(stack);
    Stack::<App>::new(stack).provider(aws).program(move |cx, s| {
        let mut g = LogGroup::new("app").tags([("team", s.team.as_str())]);
        if let Some(days) = s.retention {
            g = g.retention_in_days(days);
        }
        if s.encrypted {
            g = g.kms_key_id(KEY);
        }
        cx.add(g);
        cx.add(LogGroup::new("audit").name(audit.as_str()));
        Ok(())
    })
}

fn id_of(state: &StackState, name: &str) -> String {
    state.resource(&Urn::new(&state.stack, LOG_GROUP, name)).unwrap_or_else(|| panic!("{name} in state")).id.clone()
}

/// What the handle's `key()` resolves to: an output, or an input the handle echoes.
fn output(state: &StackState, name: &str, key: &str) -> Value {
    let r = state.resource(&Urn::new(&state.stack, LOG_GROUP, name)).unwrap();
    r.outputs.get(key).or_else(|| r.inputs.get(key)).cloned().unwrap_or(Value::Null)
}

#[tokio::test]
async fn log_groups_are_created_updated_in_place_replaced_and_destroyed() {
    let (provider, logs) = aws().await;
    let stack = app("logs-lifecycle", provider);

    // Create: the retention, the tags on the ARN (without `:*`), a name with every kind
    // of character AWS allows.
    let first = App { retention: Some(7), team: "shop".into(), encrypted: false };
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&first).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let name = id_of(&state, "app");
    assert!(name.starts_with("app-"), "{name}");
    let g = group(&logs, &name).await.expect("the group exists");
    assert_eq!((g.retention_in_days(), g.kms_key_id()), (Some(7), None));
    let arn = g.log_group_arn().unwrap().to_owned();
    assert!(!arn.ends_with(":*"), "{arn}");
    assert_eq!(output(&state, "app", "arn"), json!(arn));
    assert_eq!(output(&state, "app", "name"), json!(name));
    let t = tags(&logs, &arn).await;
    assert_eq!(t.get("team").map(String::as_str), Some("shop"));
    assert_eq!(t.get("cairn:urn").map(String::as_str), Some("urn:cairn:logs-lifecycle::aws:logs:LogGroup::app"));
    let audit = group(&logs, &audit_name("logs-lifecycle")).await.expect("the audit group exists");
    assert_eq!(audit.retention_in_days(), None, "no retention: events never expire");

    // The same state again changes nothing; a refresh finds nothing changed.
    assert!(!stack.preview(&first, &state).unwrap().has_changes());
    let refreshed = session.refresh().await.unwrap();
    assert!(refreshed.drift.is_empty(), "{:?}", refreshed.drift);

    // Another retention and other tags: the same group, changed in place.
    let longer = App { retention: Some(30), team: "ops".into(), ..first.clone() };
    let plan = session.preview(&longer).unwrap();
    let actions: Vec<_> = plan.changed().map(|c| (c.urn.name().to_owned(), c.action)).collect();
    assert_eq!(actions, [("app".to_owned(), Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(id_of(&report.state, "app"), name, "same group");
    assert_eq!(group(&logs, &name).await.unwrap().retention_in_days(), Some(30));
    let t = tags(&logs, &arn).await;
    assert_eq!(t.get("team").map(String::as_str), Some("ops"));
    assert!(t.contains_key("cairn:urn"), "Cairn's tags stay: {t:?}");

    // No retention any more: events never expire (DeleteRetentionPolicy), in place.
    let forever = App { retention: None, ..longer.clone() };
    let plan = session.preview(&forever).unwrap();
    let actions: Vec<_> = plan.changed().map(|c| (c.urn.name().to_owned(), c.action)).collect();
    assert_eq!(actions, [("app".to_owned(), Action::Update)]);
    assert!(session.apply(&plan).await.unwrap().succeeded());
    assert_eq!(group(&logs, &name).await.unwrap().retention_in_days(), None);
    assert!(!session.preview(&forever).unwrap().has_changes());

    // A KMS key forces a replacement: a new group with the key, the old one deleted.
    let encrypted = App { encrypted: true, ..forever.clone() };
    let plan = session.preview(&encrypted).unwrap();
    let change = plan.changes.iter().find(|c| c.urn.name() == "app").unwrap();
    assert_eq!((change.action, change.replace_reasons.clone()), (Action::Replace, vec!["kms_key_id".to_owned()]));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let new_name = id_of(&report.state, "app");
    assert_ne!(new_name, name);
    let g = group(&logs, &new_name).await.expect("the new group exists");
    assert_eq!(g.kms_key_id(), Some(KEY));
    assert_eq!(tags(&logs, g.log_group_arn().unwrap()).await.get("team").map(String::as_str), Some("ops"));
    assert!(group(&logs, &name).await.is_none(), "the old group was deleted");

    // The look-up by tag finds exactly the live group.
    let provider = cairn_aws::Provider::from_env().await;
    let found = provider.lookup(&Urn::new("logs-lifecycle", LOG_GROUP, "app"), &Default::default()).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [new_name.as_str()]);

    // Destroy leaves no group of the stack.
    let report = session.destroy().await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert!(group(&logs, &new_name).await.is_none());
    assert!(group(&logs, &audit_name("logs-lifecycle")).await.is_none());
    assert!(groups_of(&logs, "logs-lifecycle").await.is_empty());
}

#[tokio::test]
async fn drift_made_outside_cairn_is_reported_and_corrected() {
    let (provider, logs) = aws().await;
    let stack = app("logs-drift", provider);
    let s = App { retention: Some(14), team: "shop".into(), encrypted: false };
    let mut session = stack.in_memory_session().await.unwrap();
    let state = session.up(&s).await.unwrap().state;
    let name = id_of(&state, "app");
    let arn = output(&state, "app", "arn").as_str().unwrap().to_owned();

    // Someone shortens the retention and retags the group by hand.
    logs.put_retention_policy().log_group_name(&name).retention_in_days(1).send().await.unwrap();
    logs.tag_resource().resource_arn(&arn).tags("team", "intruder").send().await.unwrap();

    let refreshed = session.refresh().await.unwrap();
    let drift = serde_json::to_value(&refreshed.drift).unwrap();
    assert_eq!(drift.as_array().unwrap().len(), 1, "{drift}");
    assert_eq!(drift[0]["urn"], "urn:cairn:logs-drift::aws:logs:LogGroup::app");
    let diffs: Vec<(Value, Value, Value)> =
        drift[0]["diffs"].as_array().unwrap().iter().map(|d| (d["name"].clone(), d["old"].clone(), d["new"].clone())).collect();
    assert_eq!(
        diffs,
        [(json!("retention_in_days"), json!(14), json!(1)), (json!("tags"), json!({"team": "shop"}), json!({"team": "intruder"}))]
    );

    // The next up puts both back.
    assert!(session.up(&s).await.unwrap().succeeded());
    assert_eq!(group(&logs, &name).await.unwrap().retention_in_days(), Some(14));
    assert_eq!(tags(&logs, &arn).await.get("team").map(String::as_str), Some("shop"));

    // Deleted by hand: refresh says it is gone, and up creates it again.
    logs.delete_log_group().log_group_name(&name).send().await.unwrap();
    let refreshed = session.refresh().await.unwrap();
    assert_eq!(serde_json::to_value(&refreshed.drift).unwrap()[0]["kind"], "gone");
    let report = session.up(&s).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(group(&logs, &id_of(&report.state, "app")).await.unwrap().retention_in_days(), Some(14));

    assert!(session.destroy().await.unwrap().succeeded());
    assert!(groups_of(&logs, "logs-drift").await.is_empty());
}

#[test]
fn bad_log_group_settings_are_refused_before_any_call() {
    let stack = Stack::<()>::new("logs-checks").program(|cx, _| {
        cx.add(LogGroup::new("a").retention_in_days(10));
        cx.add(LogGroup::new("b").name("bad name!"));
        cx.add(LogGroup::new("c").name("aws/lambda/mine"));
        cx.add(LogGroup::new("d").kms_key_id("alias/logs"));
        cx.add(LogGroup::new("web app"));
        Ok(())
    });
    let err = stack.preview(&(), &stack.new_state()).unwrap_err().to_string();
    assert_eq!(
        err,
        "the program declares an invalid graph (5 problems); nothing was changed:\n  \
         - aws:logs:LogGroup 'a': property 'retention_in_days' = 10 is invalid: it must be one of 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653 (days); leave it unset to keep events forever\n  \
         - aws:logs:LogGroup 'b': property 'name' = \"bad name!\" is invalid: it must be 1 to 512 letters, digits, '.', '-', '_', '/' or '#', not starting with \"aws/\"\n  \
         - aws:logs:LogGroup 'c': property 'name' = \"aws/lambda/mine\" is invalid: it must be 1 to 512 letters, digits, '.', '-', '_', '/' or '#', not starting with \"aws/\"\n  \
         - aws:logs:LogGroup 'd': property 'kms_key_id' = \"alias/logs\" is invalid: it must be the ARN of a KMS key (arn:aws:kms:<region>:<account>:key/<id>)\n  \
         - aws:logs:LogGroup 'web app': property 'name' = (unset) is invalid: it must be set, as the logical name 'web app' does not make a valid '<logical name>-<7 hex digits>' (a log group name must be 1 to 512 letters, digits, '.', '-', '_', '/' or '#', not starting with \"aws/\")"
    );
}
