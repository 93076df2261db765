//! `aws:eventbridge:Rule`: a rule on an event bus, matching events by a pattern or firing
//! on a schedule.
//!
//! `PutRule` both creates and changes a rule: the description, pattern, schedule and
//! state change in place; the name and event bus force a replacement. Tags are set at
//! creation and changed with `TagResource`/`UntagResource`. The event pattern is kept as a
//! JSON value, so the order of its keys or its spacing is never a difference.
//!
//! Its id is `<event bus>|<name>`.

use async_trait::async_trait;
use aws_sdk_eventbridge::operation::put_rule::builders::PutRuleFluentBuilder;
use aws_sdk_eventbridge::types::{RuleState, Tag};
use cairn_sdk::schema::Default;
use cairn_sdk::{CheckFailure, Decl, Observed, Props, ProviderError, Tags, Urn};
use serde_json::Value;

use super::{check_bus, check_name, json_or_text, split_id, DEFAULT_BUS, MISSING};
use crate::error::{aws_error, missing, no_hint, or_missing};
use crate::kind::{finish, found_after_create, paginate, Clients, Kind};
use crate::tags::{self, Retag};

cairn_sdk::resource! {
    /// An EventBridge rule: `Rule::new("alarm-changes").event_pattern(json!({"source":
    /// ["aws.cloudwatch"]}))`, or `.schedule_expression("rate(5 minutes)")`. Exactly one of
    /// the two. Send what it matches somewhere with a [`Target`](super::Target).
    pub struct Rule {
        token: "aws:eventbridge:Rule",
        schema: RULE,
        inputs: RuleInputs,
        /// A declared rule's outputs.
        handle: RuleRef,
        validate: validate,
    }
    inputs {
        /// The physical name, 1 to 64 letters, digits, `.`, `-` or `_`; by default
        /// `<logical name>-<suffix>`, new on each replacement (forces replacement).
        name: String = auto_name().forces_replacement(),
        /// The event bus, by name or ARN (default `default`, where AWS services send their
        /// events; forces replacement).
        event_bus_name: String = default(Default::Str(DEFAULT_BUS)).forces_replacement().identity(),
        /// What the rule is for, up to 512 characters. Changed in place.
        description: String,
        /// The event pattern, a JSON object such as `{"source": ["aws.cloudwatch"]}`. Changed
        /// in place; key order and spacing are no change.
        event_pattern: Value,
        /// A schedule, `rate(5 minutes)` or `cron(0 12 * * ? *)`, on the default bus only.
        /// Changed in place.
        schedule_expression: String,
        /// Whether the rule is on (default true). Changed in place.
        enabled: bool = default(Default::Bool(true)),
        /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    outputs {
        /// The rule ARN: a queue policy's `aws:SourceArn`.
        arn: String,
    }
    echoes {
        /// The rule name, for a [`Target`](super::Target)'s `rule`.
        name: String,
    }
}

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    // An auto name is the logical name and 8 more characters.
    check_name(decl, "name", Some(format!("{}-0000000", decl.name())), out);
    check_bus(decl, out);
    if let Some(v) = decl.value("description") {
        if !v.as_str().is_some_and(|s| (1..=512).contains(&s.chars().count())) {
            out.push(CheckFailure::new("description", Some(v), "be 1 to 512 characters (leave it unset for none)"));
        }
    }
    let (pattern, schedule) = (decl.get("event_pattern").is_some(), decl.get("schedule_expression").is_some());
    match (pattern, schedule) {
        (false, false) => out.push(CheckFailure::new(
            "event_pattern",
            None,
            "be set, or schedule_expression: a rule needs exactly one of an event pattern and a schedule",
        )),
        (true, true) => out.push(CheckFailure::new(
            "schedule_expression",
            decl.value("schedule_expression"),
            "be unset as event_pattern is set: a rule needs exactly one of an event pattern and a schedule (use two rules for both)",
        )),
        _ => {}
    }
    if let Some(v) = decl.value("event_pattern") {
        match v {
            Value::Object(m) if m.is_empty() => {
                out.push(CheckFailure::new("event_pattern", Some(v), "have at least one field, such as {\"source\": [\"aws.cloudwatch\"]}"))
            }
            Value::Object(_) if v.to_string().len() > 4096 => {
                out.push(CheckFailure::new("event_pattern", Some(v), "be at most 4096 characters as JSON"))
            }
            Value::Object(_) => {}
            _ => out.push(CheckFailure::new("event_pattern", Some(v), "be a JSON object, such as {\"source\": [\"aws.cloudwatch\"]}")),
        }
    }
    if let Some(v) = decl.value("schedule_expression") {
        let ok = v.as_str().is_some_and(|s| (s.starts_with("rate(") || s.starts_with("cron(")) && s.ends_with(')') && s.len() <= 256);
        if !ok {
            out.push(CheckFailure::new("schedule_expression", Some(v), "be rate(<n> <unit>) or cron(<6 fields>), such as \"rate(5 minutes)\""));
        } else if decl.value("event_bus_name").and_then(Value::as_str).is_some_and(|b| b != DEFAULT_BUS) {
            out.push(CheckFailure::new(
                "schedule_expression",
                Some(v),
                "be used on the default event bus only (AWS runs schedules there): leave event_bus_name unset",
            ));
        }
    }
}

/// The rule's operations.
#[derive(Debug)]
pub(crate) struct RuleKind;

fn hint(code: &str, want: &RuleInputs) -> Option<String> {
    match code {
        "InvalidEventPatternException" => Some(format!(
            "EventBridge refused the event_pattern {}: each field must hold a list of values or of matchers, such as {{\"source\": [\"aws.cloudwatch\"]}}",
            want.event_pattern.as_ref().map(Value::to_string).unwrap_or_default()
        )),
        "LimitExceededException" => {
            Some("the account's quota of rules on this event bus is used up; delete unused rules or ask AWS for a higher quota".to_owned())
        }
        "ManagedRuleException" => Some(format!(
            "the rule {} is managed by an AWS service and cannot be changed; choose another name",
            want.name.as_deref().unwrap_or_default()
        )),
        "ResourceNotFoundException" => Some(format!(
            "the event bus {} does not exist; create it first, or leave event_bus_name unset for the default bus",
            bus(want)
        )),
        _ => None,
    }
}

fn bus(want: &RuleInputs) -> &str {
    want.event_bus_name.as_deref().unwrap_or(DEFAULT_BUS)
}

/// `PutRule` with everything but the tags: AWS replaces the whole rule on each call.
fn put_rule(aws: &aws_sdk_eventbridge::Client, want: &RuleInputs) -> PutRuleFluentBuilder {
    aws.put_rule()
        .set_name(want.name.clone())
        .event_bus_name(bus(want))
        .set_description(want.description.clone())
        .set_event_pattern(want.event_pattern.as_ref().map(Value::to_string))
        .set_schedule_expression(want.schedule_expression.clone())
        .state(if want.enabled == Some(false) { RuleState::Disabled } else { RuleState::Enabled })
}

/// The rule's tags, `None` when it is gone.
async fn tags_of(aws: &Clients, arn: &str) -> Result<Option<Vec<Tag>>, ProviderError> {
    let got = aws.eventbridge.list_tags_for_resource().resource_arn(arn).send().await;
    Ok(or_missing(got, MISSING, "reading the rule's tags", no_hint)?.map(|out| out.tags().to_vec()))
}

fn pairs(found: &[Tag]) -> impl Iterator<Item = (&str, &str)> {
    found.iter().map(|t| (t.key(), t.value()))
}

fn tag_list(pairs: impl IntoIterator<Item = (String, String)>) -> Result<Vec<Tag>, ProviderError> {
    pairs
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build().map_err(|e| ProviderError::failed(format!("a tag could not be built: {e}"))))
        .collect()
}

/// The rule with id `bus|name` as it is, `None` when it is gone; with `tags` when they
/// are known (just set by its create), read otherwise.
async fn read_rule(aws: &Clients, urn: &Urn, id: &str, tags: Option<Vec<Tag>>) -> Result<Option<Observed>, ProviderError> {
    let [bus, name] = split_id(id, "rule")?;
    let got = aws.eventbridge.describe_rule().name(name).event_bus_name(bus).send().await;
    let Some(rule) = or_missing(got, MISSING, "reading the rule", no_hint)? else { return Ok(None) };
    let arn = rule.arn().unwrap_or_default();
    let found = match tags {
        Some(tags) => tags,
        None => match tags_of(aws, arn).await? {
            Some(found) => found,
            None => return Ok(None),
        },
    };
    let inputs = RuleInputs {
        name: Some(name.to_owned()),
        // As it was given (a name or an ARN): AWS answers with the name.
        event_bus_name: Some(bus.to_owned()),
        description: rule.description().filter(|d| !d.is_empty()).map(str::to_owned),
        event_pattern: rule.event_pattern().filter(|p| !p.is_empty()).map(json_or_text),
        schedule_expression: rule.schedule_expression().filter(|s| !s.is_empty()).map(str::to_owned),
        enabled: Some(rule.state() != Some(&RuleState::Disabled)),
        tags: tags::observed(urn, pairs(&found)),
    };
    Ok(Some(Observed::new(id, inputs.to_props(), [("arn", Value::from(arn))])))
}

#[async_trait]
impl Kind for RuleKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = RuleInputs::from_props(inputs)?;
        let (bus, name) = (bus(&want), want.name.as_deref().unwrap_or_default());
        // PutRule on an existing name replaces that rule: never take over someone else's.
        let existing = aws.eventbridge.describe_rule().name(name).event_bus_name(bus).send().await;
        let existing = or_missing(existing, MISSING, "checking whether the rule exists", no_hint)?;
        if let Some(rule) = &existing {
            let theirs = tags_of(aws, rule.arn().unwrap_or_default()).await?.unwrap_or_default();
            if !tags::is_tagged(urn, pairs(&theirs)) {
                return Err(ProviderError::failed(format!(
                    "a rule named {name} already exists on event bus {bus}; choose another name, or leave name unset and Cairn will pick a unique one"
                )));
            }
        }
        let tags = tag_list(tags::wanted(urn, want.tags.as_ref()))?;
        // With the SDK's retries: PutRule sets the rule of that name, so a call sent again
        // after its answer was lost sets the same rule again.
        put_rule(&aws.eventbridge, &want)
            .set_tags(Some(tags.clone()))
            .send()
            .await
            .map_err(|e| aws_error("creating the rule (PutRule)", e, |c| hint(c, &want)))?;
        // Read back; the tags are the ones the call just set, not read again, unless the
        // rule was there already (left by an interrupted create), whose tags PutRule
        // does not change.
        let id = format!("{bus}|{name}");
        let tags = existing.is_none().then_some(tags);
        finish(&id, async { found_after_create(read_rule(aws, urn, &id, tags).await?) }).await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        read_rule(aws, urn, id, None).await
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (RuleInputs::from_props(old)?, RuleInputs::from_props(new)?);
        let [bus, name] = split_id(id, "rule")?;
        let got = aws.eventbridge.describe_rule().name(name).event_bus_name(bus).send().await;
        let Some(current) = or_missing(got, MISSING, "reading the rule", no_hint)? else {
            return Err(ProviderError::not_found(format!("rule {name} on event bus {bus} is gone (deleted outside Cairn? run refresh)")));
        };
        let settings = |i: &RuleInputs| (i.description.clone(), i.event_pattern.clone(), i.schedule_expression.clone(), i.enabled != Some(false));
        if settings(&old) != settings(&want) {
            let want = RuleInputs { name: Some(name.to_owned()), event_bus_name: Some(bus.to_owned()), ..want.clone() };
            put_rule(&aws.eventbridge, &want).send().await.map_err(|e| aws_error("changing the rule (PutRule)", e, |c| hint(c, &want)))?;
        }
        let arn = current.arn().unwrap_or_default();
        let Retag { remove, set } = Retag::new(urn, old.tags.as_ref(), want.tags.as_ref());
        if !remove.is_empty() {
            aws.eventbridge
                .untag_resource()
                .resource_arn(arn)
                .set_tag_keys(Some(remove))
                .send()
                .await
                .map_err(|e| aws_error("removing the rule's tags", e, no_hint))?;
        }
        if !set.is_empty() {
            aws.eventbridge
                .tag_resource()
                .resource_arn(arn)
                .set_tags(Some(tag_list(set)?))
                .send()
                .await
                .map_err(|e| aws_error("tagging the rule", e, no_hint))?;
        }
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        let [bus, name] = split_id(id, "rule")?;
        match aws.eventbridge.delete_rule().name(name).event_bus_name(bus).send().await {
            Ok(_) => Ok(()),
            Err(e) if missing(&e, MISSING) => Ok(()),
            Err(e) if missing(&e, &["ValidationException: has targets"]) => Err(aws_error("deleting the rule (DeleteRule)", e, |_| {
                Some(format!(
                    "rule {name} on event bus {bus} still has targets; Cairn removes the targets it manages first, so a target outside this stack remains: remove it (aws events remove-targets), then run again"
                ))
            })),
            Err(e) => Err(aws_error("deleting the rule (DeleteRule)", e, no_hint)),
        }
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let want = RuleInputs::from_props(created_with)?;
        let (bus, prefix) = (bus(&want), &want.name);
        let rules = paginate(|token| async move {
            let page = aws.eventbridge.list_rules().event_bus_name(bus).set_name_prefix(prefix.clone()).set_next_token(token).send().await;
            let Some(page) = or_missing(page, MISSING, "listing the rules of the event bus", no_hint)? else { return Ok((Vec::new(), None)) };
            Ok((page.rules().to_vec(), page.next_token().map(str::to_owned)))
        })
        .await?;
        let mut found = Vec::new();
        for rule in &rules {
            let (Some(name), Some(arn)) = (rule.name(), rule.arn()) else { continue };
            let Some(theirs) = tags_of(aws, arn).await? else { continue };
            if tags::is_tagged(urn, pairs(&theirs)) {
                found.extend(self.read(aws, urn, &format!("{bus}|{name}"), &Props::new()).await?);
            }
        }
        Ok(found)
    }
}
