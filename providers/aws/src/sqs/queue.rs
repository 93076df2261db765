//! `aws:sqs:Queue`: a standard or FIFO queue, with an optional dead-letter queue.
//!
//! Attribute changes are made in place; the name and FIFO-ness force a replacement.
//! FIFO queue names end in `.fifo`: Cairn adds it to generated names, and requires it of
//! names you give.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_sqs::types::QueueAttributeName as Attr;
use cairn_sdk::schema::{Default, Property, ResourceType};
use cairn_sdk::{typed_handle, CheckFailure, Decl, Input, Observed, Props, ProviderError, Urn};
use serde_json::{json, Value};

use crate::error::{aws_error, code};
use crate::kind::{Clients, Kind};
use crate::tags;

/// The schema of `aws:sqs:Queue`.
pub static QUEUE: ResourceType = ResourceType::new(
    "aws:sqs:Queue",
    &[
        Property::input("name").auto_name().forces_replacement(),
        Property::input("fifo").default(Default::Bool(false)).forces_replacement(),
        Property::input("visibility_timeout").default(Default::Int(30)),
        Property::input("message_retention").default(Default::Int(345_600)),
        Property::input("delay").default(Default::Int(0)),
        Property::input("dead_letter_arn"),
        Property::input("max_receive_count"),
        Property::input("tags"),
        Property::output("url"),
        Property::output("arn"),
    ],
)
.with_validation(validate);

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

/// An SQS queue. `Queue::new("orders")` is a standard queue named `orders-<suffix>`.
#[derive(Debug, Clone)]
pub struct Queue(Decl);

typed_handle! {
    /// A declared queue's outputs.
    pub struct QueueRef {
        /// The queue URL (its id).
        url: String,
        /// The queue ARN, for dead-letter targets and policies.
        arn: String,
        /// The queue name.
        name: String,
    }
}

impl Queue {
    /// A queue with logical name `name`.
    pub fn new(name: &str) -> Self {
        Queue(Decl::new(&QUEUE, name))
    }

    /// The physical name; by default `<logical name>-<suffix>`, new on each replacement.
    #[must_use]
    pub fn name(mut self, name: impl Into<Input<String>>) -> Self {
        self.0.set("name", name);
        self
    }

    /// A FIFO queue (forces replacement when changed).
    #[must_use]
    pub fn fifo(mut self, fifo: bool) -> Self {
        self.0.set("fifo", fifo);
        self
    }

    /// Seconds a received message stays invisible to other consumers (0 to 43200).
    #[must_use]
    pub fn visibility_timeout(mut self, seconds: impl Into<Input<u32>>) -> Self {
        self.0.set("visibility_timeout", seconds);
        self
    }

    /// Seconds a message is kept (60 to 1209600).
    #[must_use]
    pub fn message_retention(mut self, seconds: impl Into<Input<u32>>) -> Self {
        self.0.set("message_retention", seconds);
        self
    }

    /// Seconds each new message is delayed (0 to 900).
    #[must_use]
    pub fn delay(mut self, seconds: impl Into<Input<u32>>) -> Self {
        self.0.set("delay", seconds);
        self
    }

    /// Moves a message to the queue with ARN `arn` after `max_receive_count` receives.
    #[must_use]
    pub fn dead_letter(mut self, arn: impl Into<Input<String>>, max_receive_count: u32) -> Self {
        self.0.set("dead_letter_arn", arn);
        self.0.set("max_receive_count", max_receive_count);
        self
    }

    /// Tags of your own (Cairn adds `cairn:stack` and `cairn:urn`).
    #[must_use]
    pub fn tags<K: Into<String>, V: Into<String>>(mut self, tags: impl IntoIterator<Item = (K, V)>) -> Self {
        self.0.set("tags", tags::to_value(tags));
        self
    }
}

cairn_sdk::impl_resource!(Queue => QueueRef);

/// The queue's operations.
#[derive(Debug)]
pub(crate) struct QueueKind;

fn physical_name(inputs: &Props) -> String {
    let name = inputs.get("name").and_then(Value::as_str).unwrap_or_default();
    let fifo = inputs.get("fifo").and_then(Value::as_bool).unwrap_or(false);
    if fifo && !name.ends_with(".fifo") {
        format!("{name}.fifo")
    } else {
        name.to_owned()
    }
}

fn number(inputs: &Props, key: &str) -> Option<String> {
    inputs.get(key).and_then(Value::as_i64).map(|n| n.to_string())
}

/// The attributes the inputs ask for. `removing` is set on updates, where a dead-letter
/// queue that is no longer wanted must be cleared explicitly.
fn attributes(inputs: &Props, removing: bool) -> HashMap<Attr, String> {
    let mut a = HashMap::new();
    for (key, attr) in [
        ("visibility_timeout", Attr::VisibilityTimeout),
        ("message_retention", Attr::MessageRetentionPeriod),
        ("delay", Attr::DelaySeconds),
    ] {
        if let Some(v) = number(inputs, key) {
            a.insert(attr, v);
        }
    }
    match inputs.get("dead_letter_arn").and_then(Value::as_str) {
        Some(arn) => {
            let max = inputs.get("max_receive_count").and_then(Value::as_i64).unwrap_or(1);
            a.insert(Attr::RedrivePolicy, json!({"deadLetterTargetArn": arn, "maxReceiveCount": max}).to_string());
        }
        None if removing => {
            a.insert(Attr::RedrivePolicy, String::new());
        }
        None => {}
    }
    a
}

/// Whether an error means the queue does not exist.
fn is_missing(code: Option<&str>) -> bool {
    matches!(code, Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist"))
}

fn hint(inputs: &Props) -> impl Fn(&str) -> Option<String> + '_ {
    move |code| match code {
        "QueueAlreadyExists" | "QueueNameExists" => Some(format!(
            "a queue named {} already exists with other attributes; choose another name, or leave the name unset and Cairn will pick a unique one",
            physical_name(inputs)
        )),
        "AWS.SimpleQueueService.QueueDeletedRecently" | "QueueDeletedRecently" => Some(format!(
            "a queue named {} was deleted less than 60 s ago and AWS will not reuse the name yet; wait a minute, or leave the name unset",
            physical_name(inputs)
        )),
        _ => None,
    }
}

#[async_trait]
impl Kind for QueueKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let mut attrs = attributes(inputs, false);
        if inputs.get("fifo").and_then(Value::as_bool) == Some(true) {
            attrs.insert(Attr::FifoQueue, "true".into());
        }
        let out = aws
            .once
            .sqs
            .create_queue()
            .queue_name(physical_name(inputs))
            .set_attributes(Some(attrs))
            .set_tags(Some(tags::with_cairn_tags(urn, inputs)))
            .send()
            .await
            .map_err(|e| aws_error("creating the queue", e, hint(inputs)))?;
        let url = out.queue_url().unwrap_or_default().to_owned();
        self.read_created(aws, urn, &url, inputs).await
    }

    async fn read(&self, aws: &Clients, _urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let got = aws.sqs.get_queue_attributes().queue_url(id).attribute_names(Attr::All).send().await;
        let attrs = match got {
            Ok(out) => out.attributes().cloned().unwrap_or_default(),
            Err(e) if is_missing(code(&e)) => return Ok(None),
            Err(e) => return Err(aws_error("reading the queue", e, |_| None)),
        };
        let tags = match aws.sqs.list_queue_tags().queue_url(id).send().await {
            Ok(out) => out.tags().cloned().unwrap_or_default(),
            Err(e) if is_missing(code(&e)) => return Ok(None),
            Err(e) => return Err(aws_error("reading the queue's tags", e, |_| None)),
        };
        Ok(Some(observe(id, &attrs, &tags)))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let attrs: HashMap<Attr, String> = attributes(new, true)
            .into_iter()
            .filter(|(k, v)| attributes(old, false).get(k) != Some(v))
            .collect();
        if !attrs.is_empty() {
            aws.sqs
                .set_queue_attributes()
                .queue_url(id)
                .set_attributes(Some(attrs))
                .send()
                .await
                .map_err(|e| aws_error("changing the queue's attributes", e, |_| None))?;
        }
        let (before, after) = (tags::user_tags(old), tags::user_tags(new));
        let gone: Vec<String> = before.keys().filter(|k| !after.contains_key(*k)).cloned().collect();
        if !gone.is_empty() {
            aws.sqs
                .untag_queue()
                .queue_url(id)
                .set_tag_keys(Some(gone))
                .send()
                .await
                .map_err(|e| aws_error("removing tags", e, |_| None))?;
        }
        let changed: HashMap<String, String> = after.into_iter().filter(|(k, v)| before.get(k) != Some(v)).collect();
        if !changed.is_empty() {
            aws.sqs
                .tag_queue()
                .queue_url(id)
                .set_tags(Some(changed))
                .send()
                .await
                .map_err(|e| aws_error("tagging the queue", e, |_| None))?;
        }
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        match aws.sqs.delete_queue().queue_url(id).send().await {
            Ok(_) => Ok(()),
            Err(e) if is_missing(code(&e)) => Ok(()),
            Err(e) => Err(aws_error("deleting the queue", e, |_| None)),
        }
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn) -> Result<Vec<Observed>, ProviderError> {
        let mut found = Vec::new();
        let mut token = None;
        loop {
            let page = aws
                .sqs
                .list_queues()
                .max_results(1000)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| aws_error("listing queues", e, |_| None))?;
            for url in page.queue_urls() {
                let tags = match aws.sqs.list_queue_tags().queue_url(url).send().await {
                    Ok(out) => out.tags().cloned().unwrap_or_default(),
                    Err(e) if is_missing(code(&e)) => continue,
                    Err(e) => return Err(aws_error("reading a queue's tags", e, |_| None)),
                };
                if tags::is_tagged(urn, tags.iter()) {
                    found.extend(self.read(aws, urn, url, &Props::new()).await?);
                }
            }
            match page.next_token() {
                Some(t) => token = Some(t.to_owned()),
                None => break,
            }
        }
        Ok(found)
    }
}

/// The queue as the inputs and outputs Cairn records.
fn observe(url: &str, attrs: &HashMap<Attr, String>, tags: &HashMap<String, String>) -> Observed {
    let fifo = attrs.get(&Attr::FifoQueue).is_some_and(|v| v == "true");
    let physical = url.rsplit('/').next().unwrap_or_default();
    let name = if fifo { physical.strip_suffix(".fifo").unwrap_or(physical) } else { physical };
    let int = |a: &Attr| attrs.get(a).and_then(|v| v.parse::<i64>().ok());
    let mut inputs = Props::new();
    inputs.insert("name", Value::from(name));
    inputs.insert("fifo", Value::from(fifo));
    for (key, attr) in [
        ("visibility_timeout", Attr::VisibilityTimeout),
        ("message_retention", Attr::MessageRetentionPeriod),
        ("delay", Attr::DelaySeconds),
    ] {
        if let Some(n) = int(&attr) {
            inputs.insert(key, Value::from(n));
        }
    }
    if let Some(policy) = attrs.get(&Attr::RedrivePolicy).and_then(|p| serde_json::from_str::<Value>(p).ok()) {
        if let Some(arn) = policy.get("deadLetterTargetArn").and_then(Value::as_str) {
            inputs.insert("dead_letter_arn", Value::from(arn));
        }
        // AWS documents a number; some endpoints answer a string.
        let max = policy.get("maxReceiveCount").and_then(|v| v.as_i64().or_else(|| v.as_str().and_then(|s| s.parse().ok())));
        if let Some(max) = max {
            inputs.insert("max_receive_count", Value::from(max));
        }
    }
    if let Some(t) = tags::observed_user_tags(tags.iter()) {
        inputs.insert("tags", t);
    }
    let mut outputs = Props::new();
    outputs.insert("url", Value::from(url));
    outputs.insert("arn", Value::from(attrs.get(&Attr::QueueArn).cloned().unwrap_or_default()));
    Observed { id: url.to_owned(), inputs, outputs }
}
