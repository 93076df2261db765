//! `aws:sqs:Queue`: a standard or FIFO queue, with an optional dead-letter queue.
//!
//! Attribute changes are made in place; the name and FIFO-ness force a replacement.
//! FIFO queue names end in `.fifo`: Cairn adds it to generated names, and requires it of
//! names you give.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_sqs::types::QueueAttributeName as Attr;
use cairn_sdk::provider::{schema_diff, DiffRequest, DiffResult};
use cairn_sdk::schema::Default;
use cairn_sdk::{CheckFailure, Decl, Input, Observed, Props, ProviderError, Tags, Urn};
use serde_json::{json, Value};

use crate::error::{aws_error, missing, no_hint, or_missing};
use crate::kind::{paginate, Clients, Kind};
use crate::tags::{self, Retag};

cairn_sdk::resource! {
    /// An SQS queue. `Queue::new("orders")` is a standard queue named `orders-<suffix>`.
    pub struct Queue {
        token: "aws:sqs:Queue",
        schema: QUEUE,
        inputs: QueueInputs,
        /// A declared queue's outputs.
        handle: QueueRef,
        validate: validate,
    }
    inputs {
        /// The physical name; by default `<logical name>-<suffix>`, new on each replacement.
        name: String = auto_name().forces_replacement(),
        /// A FIFO queue (forces replacement when changed).
        fifo: bool = default(Default::Bool(false)).forces_replacement(),
        /// Seconds a received message stays invisible to other consumers (0 to 43200).
        visibility_timeout: u32 = default(Default::Int(30)),
        /// Seconds a message is kept (60 to 1209600).
        message_retention: u32 = default(Default::Int(345_600)),
        /// Seconds each new message is delayed (0 to 900).
        delay: u32 = default(Default::Int(0)),
        /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    by_hand {
        /// The ARN of the dead-letter queue: see [`Queue::dead_letter`].
        dead_letter_arn: String,
        /// Receives before a message moves to the dead-letter queue: see [`Queue::dead_letter`].
        max_receive_count: u32,
    }
    outputs {
        /// The queue URL (its id).
        url: String,
        /// The queue ARN, for dead-letter targets and policies.
        arn: String,
    }
    echoes {
        /// The queue name.
        name: String,
    }
}

impl Queue {
    /// Moves a message to the queue with ARN `arn` after `max_receive_count` receives.
    #[must_use]
    pub fn dead_letter(mut self, arn: impl Into<Input<String>>, max_receive_count: u32) -> Self {
        self.0.set("dead_letter_arn", arn);
        self.0.set("max_receive_count", max_receive_count);
        self
    }
}

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    let fifo = decl.value("fifo").and_then(Value::as_bool).unwrap_or(false);
    if let Some(v) = decl.value("name") {
        let name = v.as_str().unwrap_or_default();
        let base = name.strip_suffix(".fifo").unwrap_or(name);
        if name.len() > 80 || base.is_empty() || !base.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            out.push(CheckFailure::new("name", Some(v), "be 1 to 80 letters, digits, '-' or '_' (a FIFO queue's ending in .fifo)"));
        } else if fifo != name.ends_with(".fifo") {
            let expected = if fifo { "end in .fifo, as the queue is FIFO" } else { "not end in .fifo, as the queue is not FIFO" };
            out.push(CheckFailure::new("name", Some(v), expected));
        }
    }
    let range = |key: &str, lo: i64, hi: i64, out: &mut Vec<CheckFailure>| {
        if let Some(v) = decl.value(key) {
            if !v.as_i64().is_some_and(|n| (lo..=hi).contains(&n)) {
                out.push(CheckFailure::new(key, Some(v), format!("be a whole number of seconds from {lo} to {hi}")));
            }
        }
    };
    range("visibility_timeout", 0, 43_200, out);
    range("message_retention", 60, 1_209_600, out);
    range("delay", 0, 900, out);
    match (decl.get("dead_letter_arn").is_some(), decl.value("max_receive_count")) {
        (true, None) if decl.get("max_receive_count").is_none() => {
            out.push(CheckFailure::new("max_receive_count", None, "be set (1 to 1000) along with a dead-letter queue"))
        }
        (_, Some(v)) if !v.as_i64().is_some_and(|n| (1..=1000).contains(&n)) => {
            out.push(CheckFailure::new("max_receive_count", Some(v), "be from 1 to 1000"))
        }
        _ => {}
    }
}

/// The queue's operations.
#[derive(Debug)]
pub(crate) struct QueueKind;

/// What AWS answers when the queue does not exist.
const MISSING: &[&str] = &["AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"];

fn physical_name(want: &QueueInputs) -> String {
    let name = want.name.as_deref().unwrap_or_default();
    if want.fifo == Some(true) && !name.ends_with(".fifo") {
        format!("{name}.fifo")
    } else {
        name.to_owned()
    }
}

/// The attributes the inputs ask for. `removing` is set on updates, where a dead-letter
/// queue that is no longer wanted must be cleared explicitly.
fn attributes(want: &QueueInputs, removing: bool) -> HashMap<Attr, String> {
    let mut a = HashMap::new();
    for (n, attr) in [
        (want.visibility_timeout, Attr::VisibilityTimeout),
        (want.message_retention, Attr::MessageRetentionPeriod),
        (want.delay, Attr::DelaySeconds),
    ] {
        if let Some(n) = n {
            a.insert(attr, n.to_string());
        }
    }
    match want.dead_letter_arn.as_deref() {
        Some(arn) => {
            let max = want.max_receive_count.unwrap_or(1);
            a.insert(Attr::RedrivePolicy, json!({"deadLetterTargetArn": arn, "maxReceiveCount": max}).to_string());
        }
        None if removing => {
            a.insert(Attr::RedrivePolicy, String::new());
        }
        None => {}
    }
    a
}

fn hint(code: &str, want: &QueueInputs) -> Option<String> {
    match code {
        "QueueAlreadyExists" | "QueueNameExists" => Some(format!(
            "a queue named {} already exists with other attributes; choose another name, or leave the name unset and Cairn will pick a unique one",
            physical_name(want)
        )),
        "AWS.SimpleQueueService.QueueDeletedRecently" | "QueueDeletedRecently" => Some(format!(
            "a queue named {} was deleted less than 60 s ago and AWS will not reuse the name yet; wait a minute, or leave the name unset",
            physical_name(want)
        )),
        _ => None,
    }
}

#[async_trait]
impl Kind for QueueKind {
    /// The schema's diff, except that a FIFO name recorded without its `.fifo` is the
    /// same name: a refresh before Cairn read given FIFO names back whole recorded them
    /// so, and replacing the queue for it would lose its messages.
    fn diff(&self, req: &DiffRequest<'_>) -> DiffResult {
        let mut diff = schema_diff(req);
        diff.changes.retain(|c| !(c.name == "name" && same_fifo_name(c.old.as_ref(), c.new.as_ref())));
        diff
    }

    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = QueueInputs::from_props(inputs)?;
        let mut attrs = attributes(&want, false);
        if want.fifo == Some(true) {
            attrs.insert(Attr::FifoQueue, "true".into());
        }
        // With the SDK's retries: SQS answers a CreateQueue of an existing name and the
        // same attributes with that queue, so a call sent again after its answer was
        // lost finds the queue the first one made.
        let out = aws
            .sqs
            .create_queue()
            .queue_name(physical_name(&want))
            .set_attributes(Some(attrs))
            .set_tags(Some(tags::wanted(urn, want.tags.as_ref()).into_iter().collect()))
            .send()
            .await
            .map_err(|e| aws_error("creating the queue", e, |c| hint(c, &want)))?;
        let url = out.queue_url().unwrap_or_default().to_owned();
        self.read_created(aws, urn, &url, inputs).await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let got = aws.sqs.get_queue_attributes().queue_url(id).attribute_names(Attr::All).send().await;
        let Some(out) = or_missing(got, MISSING, "reading the queue", no_hint)? else { return Ok(None) };
        let attrs = out.attributes().cloned().unwrap_or_default();
        let got = aws.sqs.list_queue_tags().queue_url(id).send().await;
        let Some(out) = or_missing(got, MISSING, "reading the queue's tags", no_hint)? else { return Ok(None) };
        let tags = out.tags().cloned().unwrap_or_default();
        Ok(Some(observe(urn, id, &attrs, &tags, recorded_name(recorded))))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (QueueInputs::from_props(old)?, QueueInputs::from_props(new)?);
        let before = attributes(&old, false);
        let attrs: HashMap<Attr, String> = attributes(&want, true).into_iter().filter(|(k, v)| before.get(k) != Some(v)).collect();
        if !attrs.is_empty() {
            aws.sqs
                .set_queue_attributes()
                .queue_url(id)
                .set_attributes(Some(attrs))
                .send()
                .await
                .map_err(|e| aws_error("changing the queue's attributes", e, no_hint))?;
        }
        let Retag { remove, set } = Retag::new(urn, old.tags.as_ref(), want.tags.as_ref());
        if !remove.is_empty() {
            aws.sqs
                .untag_queue()
                .queue_url(id)
                .set_tag_keys(Some(remove))
                .send()
                .await
                .map_err(|e| aws_error("removing tags", e, no_hint))?;
        }
        if !set.is_empty() {
            aws.sqs
                .tag_queue()
                .queue_url(id)
                .set_tags(Some(set.into_iter().collect()))
                .send()
                .await
                .map_err(|e| aws_error("tagging the queue", e, no_hint))?;
        }
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        or_missing(aws.sqs.delete_queue().queue_url(id).send().await, MISSING, "deleting the queue", no_hint)?;
        Ok(())
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let urls = paginate(|token| async move {
            let page = aws
                .sqs
                .list_queues()
                .max_results(1000)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| aws_error("listing queues", e, no_hint))?;
            Ok((page.queue_urls().to_vec(), page.next_token().map(str::to_owned)))
        })
        .await?;
        let mut found = Vec::new();
        for url in &urls {
            let tags = match aws.sqs.list_queue_tags().queue_url(url).send().await {
                Ok(out) => out.tags().cloned().unwrap_or_default(),
                Err(e) if missing(&e, MISSING) => continue,
                Err(e) => return Err(aws_error("reading a queue's tags", e, no_hint)),
            };
            if tags::is_tagged(urn, tags.iter()) {
                found.extend(self.read(aws, urn, url, created_with).await?);
            }
        }
        Ok(found)
    }
}

/// Whether `old` is `new` without the `.fifo` it must end in.
fn same_fifo_name(old: Option<&Value>, new: Option<&Value>) -> bool {
    match (old.and_then(Value::as_str), new.and_then(Value::as_str)) {
        (Some(old), Some(new)) => new.strip_suffix(".fifo") == Some(old),
        _ => false,
    }
}

/// The name the queue's inputs hold, if they hold one.
fn recorded_name(recorded: &Props) -> Option<&str> {
    recorded.get("name").and_then(Value::as_str)
}

/// The queue as the inputs and outputs Cairn records. The name is the queue's own,
/// except for a generated FIFO name, recorded without the `.fifo` Cairn added to it: a
/// name the program gave ends in `.fifo` itself, and reads back as given.
fn observe(urn: &Urn, url: &str, attrs: &HashMap<Attr, String>, tags: &HashMap<String, String>, recorded: Option<&str>) -> Observed {
    let fifo = attrs.get(&Attr::FifoQueue).is_some_and(|v| v == "true");
    let physical = url.rsplit('/').next().unwrap_or_default();
    let name = match recorded {
        Some(r) if physical.strip_suffix(".fifo") == Some(r) => r,
        _ => physical,
    };
    let int = |a: &Attr| attrs.get(a).and_then(|v| v.parse::<u32>().ok());
    let policy = attrs.get(&Attr::RedrivePolicy).and_then(|p| serde_json::from_str::<Value>(p).ok());
    let policy = |key: &str| policy.as_ref().and_then(|p| p.get(key));
    let inputs = QueueInputs {
        name: Some(name.to_owned()),
        fifo: Some(fifo),
        visibility_timeout: int(&Attr::VisibilityTimeout),
        message_retention: int(&Attr::MessageRetentionPeriod),
        delay: int(&Attr::DelaySeconds),
        tags: tags::observed(urn, tags),
        dead_letter_arn: policy("deadLetterTargetArn").and_then(Value::as_str).map(str::to_owned),
        // AWS documents a number; some endpoints answer a string.
        max_receive_count: policy("maxReceiveCount")
            .and_then(|v| v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())))
            .and_then(|n| u32::try_from(n).ok()),
    };
    let arn = attrs.get(&Attr::QueueArn).cloned().unwrap_or_default();
    Observed::new(url, inputs.to_props(), [("url", Value::from(url)), ("arn", Value::from(arn))])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_name(url: &str, recorded: Option<&str>) -> Option<String> {
        let urn = Urn::new("dev", "aws:sqs:Queue", "jobs");
        let attrs = HashMap::from([(Attr::FifoQueue, "true".to_owned())]);
        QueueInputs::from_props(&observe(&urn, url, &attrs, &HashMap::new(), recorded).inputs).unwrap().name
    }

    #[test]
    fn a_fifo_queue_reads_back_with_the_name_it_was_recorded_with() {
        let base = "https://sqs.us-east-1.amazonaws.com/123456789012";
        // Generated: Cairn added the suffix, so the recorded name has none.
        assert_eq!(read_name(&format!("{base}/jobs-1234567.fifo"), Some("jobs-1234567")).as_deref(), Some("jobs-1234567"));
        // Given: the program's name ends in .fifo (validation requires it), and stays so.
        assert_eq!(read_name(&format!("{base}/jobs.fifo"), Some("jobs.fifo")).as_deref(), Some("jobs.fifo"));
        // Nothing recorded (an import): the queue's own name.
        assert_eq!(read_name(&format!("{base}/jobs.fifo"), None).as_deref(), Some("jobs.fifo"));
    }

    #[test]
    fn a_given_fifo_name_recorded_without_its_suffix_plans_no_replacement() {
        let urn = Urn::new("dev", "aws:sqs:Queue", "jobs");
        let diff = |old: &str, new: &str| {
            let old = Props::from_value(json!({"name": old, "fifo": true})).unwrap();
            let (name, fifo) = (Value::from(new), Value::Bool(true));
            let new = [
                ("fifo", cairn_sdk::Planned::Known(std::borrow::Cow::Borrowed(&fifo))),
                ("name", cairn_sdk::Planned::Known(std::borrow::Cow::Borrowed(&name))),
            ];
            QueueKind.diff(&DiffRequest { urn: &urn, ty: &QUEUE, old: &old, new: &new }).changes
        };
        // As an earlier refresh recorded it: the same queue.
        assert!(diff("jobs", "jobs.fifo").is_empty());
        // A real rename still replaces.
        let changes = diff("work.fifo", "jobs.fifo");
        assert_eq!(changes.iter().map(|c| (c.name.as_str(), c.replaces)).collect::<Vec<_>>(), [("name", true)]);
    }
}
