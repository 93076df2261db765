//! `aws:cloudwatch:MetricAlarm`: an alarm on one CloudWatch metric against a static
//! threshold.
//!
//! Only the name forces a replacement. Everything else changes in place:
//! `PutMetricAlarm` both creates an alarm and replaces the whole configuration of an
//! existing one, so an update sends every setting again. Tags are set at creation
//! (`PutMetricAlarm`'s `Tags`, which AWS ignores on later calls) and changed with
//! `TagResource`/`UntagResource` on the alarm ARN.
//!
//! Because `PutMetricAlarm` overwrites an alarm of the same name without a word, Cairn
//! refuses to create an alarm whose name is taken.
//!
//! The alarm's `name()` is what an EventBridge rule matches as `detail.alarmName` in
//! "CloudWatch Alarm State Change" events.

use std::collections::BTreeMap;

use async_trait::async_trait;
use aws_sdk_cloudwatch::types::{AlarmType, ComparisonOperator, Dimension, MetricAlarm as Alarm, Statistic, Tag};
use cairn_sdk::provider::{schema_diff, DiffRequest, DiffResult};
use cairn_sdk::schema::Default;
use cairn_sdk::{CheckFailure, Decl, Input, Observed, Prop, Props, ProviderError, Tags, Urn};
use serde_json::Value;

use crate::error::{aws_error, no_hint, or_missing};
use crate::kind::{finish, found_after_create, one_of, paginate, Clients, Kind};
use crate::tags::{self, Retag};

cairn_sdk::resource! {
    /// A metric alarm:
    /// `MetricAlarm::new("queue-backlog").namespace("AWS/SQS").metric_name("ApproximateNumberOfMessagesVisible")
    /// .dimension("QueueName", queue.name()).threshold(100.0).comparison_operator("GreaterThanThreshold")`.
    pub struct MetricAlarm {
        token: "aws:cloudwatch:MetricAlarm",
        schema: METRIC_ALARM,
        inputs: MetricAlarmInputs,
        /// A declared alarm's outputs.
        handle: MetricAlarmRef,
        validate: validate,
    }
    inputs {
        /// The alarm name, 1 to 255 characters; by default `<logical name>-<suffix>`, new on
        /// each replacement (forces replacement).
        name: String = auto_name().forces_replacement(),
        /// What the alarm is about, at most 1024 characters; none when unset.
        description: String,
        /// The metric's namespace, e.g. `AWS/SQS`, `AWS/EC2` or your own.
        namespace: String = required(),
        /// The metric's name, e.g. `ApproximateNumberOfMessagesVisible`.
        metric_name: String = required(),
        /// How the datapoints of each period are combined: `Average` (the default),
        /// `Sum`, `Minimum`, `Maximum` or `SampleCount`.
        statistic: String = default(Default::Str("Average")),
        /// Seconds in each period the statistic is taken over: 10, 20, 30 (high-resolution
        /// metrics only) or a multiple of 60; 60 when unset.
        period: u32 = default(Default::Int(60)),
        /// How many most recent periods are compared to the threshold (default 1). At most
        /// a day of periods for a period under an hour, else at most seven days.
        evaluation_periods: u32 = default(Default::Int(1)),
        /// The value the statistic is compared to.
        threshold: f64 = required(),
        /// How the statistic is compared to the threshold: `GreaterThanThreshold`,
        /// `GreaterThanOrEqualToThreshold`, `LessThanThreshold` or
        /// `LessThanOrEqualToThreshold`.
        comparison_operator: String = required(),
        /// How periods with no data count: `missing` (the default: they are skipped),
        /// `notBreaching`, `breaching` or `ignore` (keep the current state).
        treat_missing_data: String = default(Default::Str("missing")),
        /// ARNs to notify or run when the alarm goes to `ALARM` (an SNS topic, an Auto
        /// Scaling policy, an EC2 action), at most 5.
        alarm_actions: Vec<String>,
        /// ARNs to notify or run when the alarm goes back to `OK`, at most 5.
        ok_actions: Vec<String>,
        /// Whether the actions run on state changes (default true).
        actions_enabled: bool = default(Default::Bool(true)),
        /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    by_hand {
        /// The metric's dimensions, name to value: see [`MetricAlarm::dimension`] and
        /// [`MetricAlarm::dimensions`]. At most 30.
        dimensions: BTreeMap<String, String>,
    }
    outputs {
        /// The alarm ARN.
        arn: String,
    }
    echoes {
        /// The alarm name (its id): what an EventBridge rule matches as `alarmName`.
        name: String,
    }
}

impl MetricAlarm {
    /// Adds dimension `name` with `value`, a literal or another resource's output:
    /// `.dimension("AutoScalingGroupName", group.name())`. Setting a name again replaces
    /// its value.
    #[must_use]
    pub fn dimension(mut self, name: &str, value: impl Into<Input<String>>) -> Self {
        let mut fields: Vec<(String, Prop)> = match self.0.get("dimensions") {
            Some(Prop::Value(Value::Object(map))) => map.iter().map(|(k, v)| (k.clone(), Prop::Value(v.clone()))).collect(),
            Some(Prop::Object(fields)) => fields.clone(),
            _ => Vec::new(),
        };
        fields.retain(|(k, _)| k != name);
        fields.push((name.to_owned(), value.into().into_prop()));
        self.0.set_prop("dimensions", Prop::object(fields));
        self
    }

    /// Sets every dimension at once, replacing those set before:
    /// `.dimensions([("QueueName", queue.name())])`, or a map of literals.
    #[must_use]
    pub fn dimensions<K: Into<String>, V: Into<Input<String>>>(mut self, pairs: impl IntoIterator<Item = (K, V)>) -> Self {
        let fields = pairs.into_iter().map(|(k, v)| (k.into(), v.into().into_prop())).collect();
        self.0.set_prop("dimensions", Prop::object(fields));
        self
    }
}

/// The statistics a static-threshold alarm can use.
const STATISTICS: [&str; 5] = ["Average", "Sum", "Minimum", "Maximum", "SampleCount"];
/// The comparisons against a static threshold (the other three of AWS's list need an
/// anomaly detection band, which this kind does not model).
const COMPARISONS: [&str; 4] = ["GreaterThanThreshold", "GreaterThanOrEqualToThreshold", "LessThanThreshold", "LessThanOrEqualToThreshold"];
/// How missing data may be treated.
const MISSING_DATA: [&str; 4] = ["missing", "notBreaching", "breaching", "ignore"];
/// The longest alarm name AWS accepts.
const NAME_MAX: usize = 255;
/// What the engine appends to a logical name to make a physical one: `-` and 7 hex digits.
const AUTO_SUFFIX: usize = 8;
/// The most actions of each kind, and dimensions, AWS accepts.
const MAX_ACTIONS: usize = 5;
const MAX_DIMENSIONS: usize = 30;

/// A string of `lo` to `hi` characters.
fn text(decl: &Decl, key: &str, lo: usize, hi: usize, out: &mut Vec<CheckFailure>) {
    if let Some(v) = decl.value(key) {
        if !v.as_str().is_some_and(|s| (lo..=hi).contains(&s.chars().count())) {
            out.push(CheckFailure::new(key, Some(v), format!("be a string of {lo} to {hi} characters")));
        }
    }
}

fn actions(decl: &Decl, key: &str, out: &mut Vec<CheckFailure>) {
    if let Some(v) = decl.value(key) {
        let ok = v.as_array().is_some_and(|a| a.len() <= MAX_ACTIONS && a.iter().all(|x| x.as_str().is_some_and(|s| s.starts_with("arn:"))));
        if !ok {
            out.push(CheckFailure::new(key, Some(v), "be a list of at most 5 ARNs (arn:...), such as SNS topics or scaling policies"));
        }
    }
}

/// Seconds a period may last: 10, 20, 30 or a multiple of 60.
fn valid_period(p: i64) -> bool {
    matches!(p, 10 | 20 | 30) || (p >= 60 && p % 60 == 0)
}

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    match decl.value("name") {
        Some(v) if !v.as_str().is_some_and(|s| (1..=NAME_MAX).contains(&s.chars().count()) && !s.chars().any(|c| c.is_ascii_control())) => {
            out.push(CheckFailure::new("name", Some(v), "be 1 to 255 characters, none of them control characters"));
        }
        None if decl.get("name").is_none() && decl.name().chars().count() + AUTO_SUFFIX > NAME_MAX => {
            out.push(CheckFailure::new(
                "name",
                None,
                "be set, as the generated '<logical name>-<7 hex digits>' would be longer than 255 characters; or use a logical name of at most 247",
            ));
        }
        _ => {}
    }
    text(decl, "description", 0, 1024, out);
    if let Some(v) = decl.value("namespace") {
        if !v.as_str().is_some_and(|s| (1..=255).contains(&s.chars().count()) && !s.starts_with(':')) {
            out.push(CheckFailure::new("namespace", Some(v), "be 1 to 255 characters, not starting with ':' (e.g. \"AWS/SQS\")"));
        }
    }
    text(decl, "metric_name", 1, 255, out);
    one_of(decl, "statistic", &STATISTICS, out);
    one_of(decl, "comparison_operator", &COMPARISONS, out);
    one_of(decl, "treat_missing_data", &MISSING_DATA, out);
    let period = decl.value("period").map(|v| (v, v.as_i64().filter(|p| valid_period(*p))));
    if let Some((v, None)) = period {
        out.push(CheckFailure::new("period", Some(v), "be 10, 20, 30 (high-resolution metrics) or a multiple of 60 seconds"));
    }
    let evaluations = decl.value("evaluation_periods").map(|v| (v, v.as_i64().filter(|n| *n >= 1)));
    if let Some((v, None)) = evaluations {
        out.push(CheckFailure::new("evaluation_periods", Some(v), "be a whole number, 1 or more"));
    }
    // Both known, or one known and the other left to its default.
    let period = match period {
        Some((_, p)) => p,
        None if decl.get("period").is_none() => Some(60),
        None => None,
    };
    let evaluations = match evaluations {
        Some((_, n)) => n,
        None if decl.get("evaluation_periods").is_none() => Some(1),
        None => None,
    };
    if let (Some(p), Some(n)) = (period, evaluations) {
        let (limit, what) = if p < 3600 { (86_400, "one day (86400 s) for a period under an hour") } else { (604_800, "seven days (604800 s)") };
        if p.saturating_mul(n) > limit {
            out.push(CheckFailure::new(
                "evaluation_periods",
                decl.value("evaluation_periods"),
                format!("be at most {} with a period of {p} s: period times evaluation_periods may span at most {what}", limit / p),
            ));
        }
    }
    if let Some(v) = decl.value("threshold") {
        if !v.is_number() {
            out.push(CheckFailure::new("threshold", Some(v), "be a finite number"));
        }
    }
    actions(decl, "alarm_actions", out);
    actions(decl, "ok_actions", out);
    match decl.get("dimensions") {
        Some(Prop::Value(v)) => {
            let ok = v.as_object().is_some_and(|m| {
                m.len() <= MAX_DIMENSIONS && m.iter().all(|(k, v)| (1..=255).contains(&k.chars().count()) && v.as_str().is_some_and(|s| (1..=1024).contains(&s.chars().count())))
            });
            if !ok {
                out.push(CheckFailure::new("dimensions", Some(v), "be at most 30 names (1 to 255 characters) each with a value of 1 to 1024 characters"));
            }
        }
        Some(Prop::Object(fields)) if fields.len() > MAX_DIMENSIONS || fields.iter().any(|(k, _)| !(1..=255).contains(&k.chars().count())) => {
            // Some values are known only after apply: the names are what can be shown.
            let names = Value::from(fields.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>());
            out.push(CheckFailure::new("dimensions", Some(&names), "name at most 30 dimensions, each name 1 to 255 characters"));
        }
        _ => {}
    }
}

/// The alarm's operations.
#[derive(Debug)]
pub(crate) struct MetricAlarmKind;

/// What CloudWatch answers when the alarm does not exist (`DeleteAlarms`, tagging).
const MISSING: &[&str] = &["ResourceNotFound", "ResourceNotFoundException"];

fn hint(code: &str, want: &MetricAlarmInputs) -> Option<String> {
    match code {
        "LimitExceeded" | "LimitExceededFault" | "LimitExceededException" => Some(
            "the account's quota of CloudWatch alarms for this region is used up; delete alarms you no longer need or ask AWS for a higher quota"
                .to_owned(),
        ),
        "ResourceNotFound" | "ResourceNotFoundException" => Some(format!(
            "alarm {} is gone (deleted outside Cairn?); run refresh, then up to create it again",
            want.name.as_deref().unwrap_or_default()
        )),
        _ => None,
    }
}

/// A blank value: absent, an empty list, map or string. AWS reports no description, no
/// actions and no dimensions as blank, so a blank declared is no change.
fn blank(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => true,
        Some(Value::Array(a)) => a.is_empty(),
        Some(Value::Object(o)) => o.is_empty(),
        Some(Value::String(s)) => s.is_empty(),
        Some(_) => false,
    }
}

/// The metric alarm named `name`, if it exists.
async fn describe(aws: &Clients, name: &str) -> Result<Option<Alarm>, ProviderError> {
    let out = aws
        .cloudwatch
        .describe_alarms()
        .alarm_names(name)
        .alarm_types(AlarmType::MetricAlarm)
        .send()
        .await
        .map_err(|e| aws_error("reading the alarm (DescribeAlarms)", e, no_hint))?;
    Ok(out.metric_alarms().iter().find(|a| a.alarm_name() == Some(name)).cloned())
}

/// All tags of the alarm with ARN `arn`; `None` when it is gone.
async fn list_tags(aws: &Clients, arn: &str) -> Result<Option<Vec<(String, String)>>, ProviderError> {
    let got = aws.cloudwatch.list_tags_for_resource().resource_arn(arn).send().await;
    Ok(or_missing(got, MISSING, "reading the alarm's tags", no_hint)?
        .map(|out| out.tags().iter().filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned()))).collect()))
}

fn tag(k: impl Into<String>, v: impl Into<String>) -> Tag {
    Tag::builder().key(k).value(v).build()
}

/// A list as AWS takes it: absent when empty (PutMetricAlarm replaces the whole alarm,
/// so an absent list clears it).
fn nonempty<T>(v: Option<Vec<T>>) -> Option<Vec<T>> {
    v.filter(|v| !v.is_empty())
}

fn int(n: Option<u32>) -> Option<i32> {
    n.and_then(|n| i32::try_from(n).ok())
}

/// The `PutMetricAlarm` call for `want`, without tags.
fn put(aws: &aws_sdk_cloudwatch::Client, want: &MetricAlarmInputs) -> aws_sdk_cloudwatch::operation::put_metric_alarm::builders::PutMetricAlarmFluentBuilder {
    let dimensions = want.dimensions.as_ref().map(|d| d.iter().map(|(k, v)| Dimension::builder().name(k).value(v).build()).collect());
    aws.put_metric_alarm()
        .set_alarm_name(want.name.clone())
        .set_alarm_description(want.description.clone().filter(|d| !d.is_empty()))
        .set_namespace(want.namespace.clone())
        .set_metric_name(want.metric_name.clone())
        .set_dimensions(nonempty(dimensions))
        .statistic(Statistic::from(want.statistic.as_deref().unwrap_or("Average")))
        .set_period(int(want.period.or(Some(60))))
        .set_evaluation_periods(int(want.evaluation_periods.or(Some(1))))
        .set_threshold(want.threshold)
        .set_comparison_operator(want.comparison_operator.as_deref().map(ComparisonOperator::from))
        .treat_missing_data(want.treat_missing_data.as_deref().unwrap_or("missing"))
        .set_alarm_actions(nonempty(want.alarm_actions.clone()))
        .set_ok_actions(nonempty(want.ok_actions.clone()))
        .actions_enabled(want.actions_enabled.unwrap_or(true))
}

/// The alarm as the inputs and outputs Cairn records.
fn observe(urn: &Urn, a: &Alarm, tags: Vec<(String, String)>) -> Observed {
    let name = a.alarm_name().unwrap_or_default();
    let list = |l: &[String]| Some(l.to_vec()).filter(|l| !l.is_empty());
    let dimensions: BTreeMap<String, String> =
        a.dimensions().iter().filter_map(|d| Some((d.name()?.to_owned(), d.value().unwrap_or_default().to_owned()))).collect();
    let inputs = MetricAlarmInputs {
        name: Some(name.to_owned()),
        description: a.alarm_description().filter(|d| !d.is_empty()).map(str::to_owned),
        namespace: a.namespace().map(str::to_owned),
        metric_name: a.metric_name().map(str::to_owned),
        statistic: a.statistic().map(|s| s.as_str().to_owned()),
        period: a.period().and_then(|p| u32::try_from(p).ok()),
        evaluation_periods: a.evaluation_periods().and_then(|p| u32::try_from(p).ok()),
        threshold: a.threshold(),
        comparison_operator: a.comparison_operator().map(|c| c.as_str().to_owned()),
        // AWS leaves it out when it is its default.
        treat_missing_data: Some(a.treat_missing_data().unwrap_or("missing").to_owned()),
        alarm_actions: list(a.alarm_actions()),
        ok_actions: list(a.ok_actions()),
        actions_enabled: a.actions_enabled(),
        tags: tags::observed(urn, tags),
        dimensions: Some(dimensions).filter(|d| !d.is_empty()),
    };
    Observed::new(name, inputs.to_props(), [("arn", Value::from(a.alarm_arn().unwrap_or_default()))])
}

#[async_trait]
impl Kind for MetricAlarmKind {
    /// The schema's diff, less changes between two blanks: no description, actions or
    /// dimensions read back the same whether they were declared empty or not at all.
    fn diff(&self, req: &DiffRequest<'_>) -> DiffResult {
        let mut diff = schema_diff(req);
        diff.changes.retain(|c| !(c.known && blank(c.old.as_ref()) && blank(c.new.as_ref())));
        diff
    }

    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = MetricAlarmInputs::from_props(inputs)?;
        let name = want.name.as_deref().unwrap_or_default();
        // PutMetricAlarm would silently take over an alarm of that name.
        if describe(aws, name).await?.is_some() {
            return Err(ProviderError::failed(format!(
                "an alarm named {name} already exists; choose another name, or leave the name unset and Cairn will pick a unique one"
            )));
        }
        let tags: Vec<(String, String)> = tags::wanted(urn, want.tags.as_ref()).into_iter().collect();
        // With the SDK's retries: PutMetricAlarm sets the alarm of that name, so a call
        // sent again after its answer was lost sets the same alarm again.
        put(&aws.cloudwatch, &want)
            .set_tags(Some(tags.iter().map(|(k, v)| tag(k, v)).collect()))
            .send()
            .await
            .map_err(|e| aws_error("creating the alarm (PutMetricAlarm)", e, |c| hint(c, &want)))?;
        // Read back for what AWS computes (the ARN, the state); the tags are the ones the
        // call just set, not read again.
        finish(name, async {
            let alarm = found_after_create(describe(aws, name).await?)?;
            Ok(observe(urn, &alarm, tags))
        })
        .await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let Some(alarm) = describe(aws, id).await? else { return Ok(None) };
        let Some(tags) = list_tags(aws, alarm.alarm_arn().unwrap_or_default()).await? else { return Ok(None) };
        Ok(Some(observe(urn, &alarm, tags)))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (MetricAlarmInputs::from_props(old)?, MetricAlarmInputs::from_props(new)?);
        let Some(current) = describe(aws, id).await? else {
            return Err(ProviderError::not_found(format!("alarm {id} is gone (deleted outside Cairn? run refresh)")));
        };
        let settings = |i: &MetricAlarmInputs| MetricAlarmInputs { tags: None, ..i.clone() };
        if settings(&old) != settings(&want) {
            // The whole configuration again: PutMetricAlarm replaces it (tags are kept).
            let want = MetricAlarmInputs { name: Some(id.to_owned()), ..want.clone() };
            put(&aws.cloudwatch, &want)
                .send()
                .await
                .map_err(|e| aws_error("changing the alarm (PutMetricAlarm)", e, |c| hint(c, &want)))?;
        }
        let arn = current.alarm_arn().unwrap_or_default();
        let Retag { remove, set } = Retag::new(urn, old.tags.as_ref(), want.tags.as_ref());
        if !remove.is_empty() {
            aws.cloudwatch
                .untag_resource()
                .resource_arn(arn)
                .set_tag_keys(Some(remove))
                .send()
                .await
                .map_err(|e| aws_error("removing the alarm's tags (UntagResource)", e, |c| hint(c, &want)))?;
        }
        if !set.is_empty() {
            aws.cloudwatch
                .tag_resource()
                .resource_arn(arn)
                .set_tags(Some(set.into_iter().map(|(k, v)| tag(k, v)).collect()))
                .send()
                .await
                .map_err(|e| aws_error("tagging the alarm (TagResource)", e, |c| hint(c, &want)))?;
        }
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        let deleted = aws.cloudwatch.delete_alarms().alarm_names(id).send().await;
        or_missing(deleted, MISSING, "deleting the alarm (DeleteAlarms)", no_hint)?;
        Ok(())
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        // The name it was created with narrows the listing; without it, every alarm.
        let prefix = &MetricAlarmInputs::from_props(created_with).ok().and_then(|i| i.name);
        let alarms = paginate(|token| async move {
            let page = aws
                .cloudwatch
                .describe_alarms()
                .alarm_types(AlarmType::MetricAlarm)
                .set_alarm_name_prefix(prefix.clone())
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| aws_error("looking up alarms (DescribeAlarms)", e, no_hint))?;
            Ok((page.metric_alarms().to_vec(), page.next_token().map(str::to_owned)))
        })
        .await?;
        let mut found = Vec::new();
        for alarm in &alarms {
            let Some(arn) = alarm.alarm_arn() else { continue };
            let Some(tags) = list_tags(aws, arn).await? else { continue };
            if tags::is_tagged(urn, tags.iter().map(|(k, v)| (k, v))) {
                found.push(observe(urn, alarm, tags));
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_sdk::Output;

    #[test]
    fn periods_are_ten_twenty_thirty_or_whole_minutes() {
        assert!([10, 20, 30, 60, 120, 3600].into_iter().all(valid_period));
        assert!(![0, 5, 45, 90, 61].into_iter().any(valid_period));
    }

    #[test]
    fn dimensions_mix_literals_and_outputs_and_the_last_value_wins() {
        let group: Output<String> = Output::new(Urn::new("dev", "aws:autoscaling:Group", "web"), "name");
        let alarm = MetricAlarm::new("cpu").dimension("InstanceType", "t3.micro").dimension("AutoScalingGroupName", &group).dimension("InstanceType", "t3.small");
        let Some(Prop::Object(fields)) = alarm.0.get("dimensions") else { panic!("an object with a reference: {:?}", alarm.0.get("dimensions")) };
        let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["AutoScalingGroupName", "InstanceType"]);
        assert_eq!(fields[1].1, Prop::Value(Value::from("t3.small")));
        let literal = MetricAlarm::new("q").dimensions([("QueueName", "jobs")]);
        assert_eq!(literal.0.value("dimensions"), Some(&serde_json::json!({"QueueName": "jobs"})));
    }
}
