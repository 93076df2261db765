//! `aws:eventbridge:Target`: where a rule sends the events it matches.
//!
//! A child of its rule, without tags: `PutTargets` creates and changes it (the
//! destination and what is sent change in place), `RemoveTargets` deletes it; the rule,
//! the event bus and the target id force a replacement. It is found again by its rule and
//! id.
//!
//! Its id is `<event bus>|<rule>|<target id>`.

use async_trait::async_trait;
use aws_sdk_eventbridge::types::Target as AwsTarget;
use cairn_sdk::schema::Default;
use cairn_sdk::{CheckFailure, Decl, Observed, Props, ProviderError, Urn};
use serde_json::Value;

use super::{check_bus, check_name, split_id, DEFAULT_BUS, MISSING};
use crate::error::{aws_error, missing, no_hint, or_missing};
use crate::kind::{Clients, Kind};

cairn_sdk::resource! {
    /// A rule's target: `Target::new("to-queue").rule(rule.name()).arn(queue.arn())`. An
    /// SQS queue as target needs a [`QueuePolicy`](crate::sqs::QueuePolicy) that lets
    /// `events.amazonaws.com` send to it.
    pub struct Target {
        token: "aws:eventbridge:Target",
        schema: TARGET,
        inputs: TargetInputs,
        /// A declared target's outputs.
        handle: TargetRef,
        validate: validate,
    }
    inputs {
        /// The rule's name, such as `rule.name()` (forces replacement).
        rule: String = required().forces_replacement().identity(),
        /// The rule's event bus, by name or ARN (default `default`; forces replacement).
        event_bus_name: String = default(Default::Str(DEFAULT_BUS)).forces_replacement().identity(),
        /// The target's id within the rule, 1 to 64 letters, digits, `.`, `-` or `_`; the
        /// logical name when unset (forces replacement).
        target_id: String = computed().forces_replacement().identity(),
        /// The destination's ARN, such as `queue.arn()`. Changed in place.
        arn: String = required(),
        /// JSON text sent instead of the matched event. At most one of `input` and
        /// `input_path`. Changed in place.
        input: String,
        /// A JSONPath, such as `$.detail`: the part of the event to send. Changed in place.
        input_path: String,
    }
    outputs {}
    echoes {
        /// The rule's name.
        rule: String,
    }
}

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    check_name(decl, "rule", None, out);
    check_name(decl, "target_id", Some(decl.name().to_owned()), out);
    check_bus(decl, out);
    if let Some(v) = decl.value("arn") {
        if !v.as_str().is_some_and(|s| s.starts_with("arn:") && s.len() <= 1600) {
            out.push(CheckFailure::new("arn", Some(v), "be an ARN (arn:...), such as a queue's arn()"));
        }
    }
    if let Some(v) = decl.value("input") {
        let json = v.as_str().is_some_and(|s| s.len() <= 8192 && serde_json::from_str::<Value>(s).is_ok());
        if !json {
            out.push(CheckFailure::new("input", Some(v), "be JSON text of at most 8192 characters, such as \"{\\\"kind\\\": \\\"alarm\\\"}\""));
        }
    }
    if let Some(v) = decl.value("input_path") {
        if !v.as_str().is_some_and(|s| s.starts_with('$') && s.len() <= 256) {
            out.push(CheckFailure::new("input_path", Some(v), "be a JSONPath starting with '$', such as \"$.detail\""));
        }
    }
    if decl.get("input").is_some() && decl.get("input_path").is_some() {
        out.push(CheckFailure::new("input_path", decl.value("input_path"), "be unset as input is set: a target sends one of the two"));
    }
}

/// The target's operations.
#[derive(Debug)]
pub(crate) struct TargetKind;

fn hint(code: &str, want: &TargetInputs) -> Option<String> {
    match code {
        "ResourceNotFoundException" => Some(format!(
            "the rule {} does not exist on event bus {} (deleted outside Cairn? run refresh); check rule and event_bus_name",
            want.rule.as_deref().unwrap_or_default(),
            want.event_bus_name.as_deref().unwrap_or(DEFAULT_BUS)
        )),
        "LimitExceededException" => Some(format!(
            "the rule {} has the most targets AWS allows (5); remove one, or use another rule",
            want.rule.as_deref().unwrap_or_default()
        )),
        "ManagedRuleException" => Some("the rule is managed by an AWS service, whose targets cannot be changed".to_owned()),
        _ => None,
    }
}

/// The key of a target: its bus, rule and id, from its inputs (the id defaulting to the
/// logical name).
fn key<'a>(urn: &'a Urn, want: &'a TargetInputs) -> (&'a str, &'a str, &'a str) {
    (
        want.event_bus_name.as_deref().unwrap_or(DEFAULT_BUS),
        want.rule.as_deref().unwrap_or_default(),
        want.target_id.as_deref().unwrap_or(urn.name()),
    )
}

/// `PutTargets` of the one target; a failed entry is the error.
async fn put(client: &aws_sdk_eventbridge::Client, action: &str, bus: &str, rule: &str, id: &str, want: &TargetInputs) -> Result<(), ProviderError> {
    let target = AwsTarget::builder()
        .id(id)
        .set_arn(want.arn.clone())
        .set_input(want.input.clone())
        .set_input_path(want.input_path.clone())
        .build()
        .map_err(|e| ProviderError::failed(format!("{action}: the target could not be built: {e}")))?;
    let out = client
        .put_targets()
        .rule(rule)
        .event_bus_name(bus)
        .targets(target)
        .send()
        .await
        .map_err(|e| aws_error(action, e, |c| hint(c, want)))?;
    match out.failed_entries().first() {
        None if out.failed_entry_count() == 0 => Ok(()),
        failed => {
            let code = failed.and_then(|f| f.error_code()).unwrap_or("Unknown");
            let message = failed.and_then(|f| f.error_message()).unwrap_or("no message");
            Err(ProviderError::failed(match hint(code, want) {
                Some(h) => h,
                None => format!("{action} failed: {code}: {message}"),
            }))
        }
    }
}

/// The target `id` of `rule` on `bus`; `None` when it or its rule is gone.
async fn find(aws: &Clients, bus: &str, rule: &str, id: &str) -> Result<Option<AwsTarget>, ProviderError> {
    let mut token = None;
    loop {
        let page = aws.eventbridge.list_targets_by_rule().rule(rule).event_bus_name(bus).set_next_token(token).send().await;
        let Some(page) = or_missing(page, MISSING, "reading the rule's targets", no_hint)? else { return Ok(None) };
        if let Some(t) = page.targets().iter().find(|t| t.id() == id) {
            return Ok(Some(t.clone()));
        }
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => return Ok(None),
        }
    }
}

#[async_trait]
impl Kind for TargetKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = TargetInputs::from_props(inputs)?;
        let (bus, rule, target_id) = key(urn, &want);
        // PutTargets on an existing id replaces that target: never take over someone else's.
        if find(aws, bus, rule, target_id).await?.is_some() {
            return Err(ProviderError::failed(format!(
                "rule {rule} on event bus {bus} already has a target with id {target_id}; set target_id to another id"
            )));
        }
        // With the SDK's retries: PutTargets sets the target of that id, so a call sent
        // again after its answer was lost sets the same target again.
        put(&aws.eventbridge, "adding the target (PutTargets)", bus, rule, target_id, &want).await?;
        let id = format!("{bus}|{rule}|{target_id}");
        self.read_created(aws, urn, &id, inputs).await
    }

    async fn read(&self, aws: &Clients, _urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let [bus, rule, target_id] = split_id(id, "target")?;
        let Some(t) = find(aws, bus, rule, target_id).await? else { return Ok(None) };
        let inputs = TargetInputs {
            rule: Some(rule.to_owned()),
            event_bus_name: Some(bus.to_owned()),
            target_id: Some(target_id.to_owned()),
            arn: Some(t.arn().to_owned()),
            input: t.input().filter(|s| !s.is_empty()).map(str::to_owned),
            input_path: t.input_path().filter(|s| !s.is_empty()).map(str::to_owned),
        };
        Ok(Some(Observed::new(id, inputs.to_props(), [])))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, _old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let want = TargetInputs::from_props(new)?;
        let [bus, rule, target_id] = split_id(id, "target")?;
        if find(aws, bus, rule, target_id).await?.is_none() {
            return Err(ProviderError::not_found(format!(
                "target {target_id} of rule {rule} on event bus {bus} is gone (deleted outside Cairn? run refresh)"
            )));
        }
        // PutTargets replaces the whole target, so what is no longer wanted goes too.
        put(&aws.eventbridge, "changing the target (PutTargets)", bus, rule, target_id, &want).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        let [bus, rule, target_id] = split_id(id, "target")?;
        let removed = aws.eventbridge.remove_targets().rule(rule).event_bus_name(bus).ids(target_id).send().await;
        let out = match removed {
            Ok(out) => out,
            // The rule is gone, and its targets with it.
            Err(e) if missing(&e, MISSING) => return Ok(()),
            Err(e) => return Err(aws_error("removing the target (RemoveTargets)", e, no_hint)),
        };
        match out.failed_entries().first() {
            None => Ok(()),
            Some(f) if MISSING.contains(&f.error_code().unwrap_or_default()) => Ok(()),
            Some(f) => Err(ProviderError::failed(format!(
                "removing the target (RemoveTargets) failed: {}: {}",
                f.error_code().unwrap_or("Unknown"),
                f.error_message().unwrap_or("no message")
            ))),
        }
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let want = TargetInputs::from_props(created_with)?;
        if want.rule.is_none() {
            return Ok(Vec::new());
        }
        let (bus, rule, target_id) = key(urn, &want);
        Ok(self.read(aws, urn, &format!("{bus}|{rule}|{target_id}"), &Props::new()).await?.into_iter().collect())
    }
}
