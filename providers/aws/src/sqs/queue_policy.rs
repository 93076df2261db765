//! `aws:sqs:QueuePolicy`: the access policy of a queue, such as the one that lets
//! EventBridge or SNS send to it.
//!
//! A child of its queue, without tags: the queue's `Policy` attribute. Setting it creates
//! and changes it; deleting it clears the attribute. The queue forces a replacement; the
//! policy changes in place. The policy is kept as a JSON value, so the order of its keys
//! or its spacing is never a difference. A queue has one policy: Cairn will not
//! overwrite one it did not set, and a declaration renamed is set only once the old
//! name's delete has cleared it (`queue_url` is its identity).
//!
//! Its id is the queue URL.

use async_trait::async_trait;
use aws_sdk_sqs::types::QueueAttributeName as Attr;
use cairn_sdk::{CheckFailure, Decl, Input, Observed, Prop, Props, ProviderError, Urn};
use serde_json::{json, Value};

use crate::error::{aws_error, no_hint, or_missing};
use crate::kind::{Clients, Kind};

cairn_sdk::resource! {
    /// A queue's access policy: `QueuePolicy::new("events").queue_url(queue.url())
    /// .allow_service(queue.arn(), "events.amazonaws.com", rule.arn())`, or a whole
    /// document with `.policy(json!({...}))`.
    pub struct QueuePolicy {
        token: "aws:sqs:QueuePolicy",
        schema: QUEUE_POLICY,
        inputs: QueuePolicyInputs,
        /// A declared queue policy's outputs.
        handle: QueuePolicyRef,
        validate: validate,
    }
    inputs {
        /// The queue's URL, such as `queue.url()` (forces replacement).
        queue_url: String = required().forces_replacement().identity(),
        /// The policy document, a JSON object with `Version` and `Statement`; see
        /// [`QueuePolicy::allow_service`] for the common case. Changed in place.
        policy: Value = required(),
    }
    outputs {}
    echoes {
        /// The queue's URL.
        queue_url: String,
    }
}

/// The policy language version AWS documents.
const VERSION: &str = "2012-10-17";

impl QueuePolicy {
    /// Adds a statement letting AWS service `service` (such as `events.amazonaws.com` or
    /// `sns.amazonaws.com`) send messages (`sqs:SendMessage`) to the queue with ARN
    /// `queue_arn`, on behalf of the resource with ARN `source_arn` only (the
    /// `aws:SourceArn` condition), such as a rule's `arn()`. Both ARNs may be outputs.
    /// Call it again to allow more senders; statements are added to `policy` as set so
    /// far (a `policy` that is another resource's output is replaced).
    #[must_use]
    pub fn allow_service(mut self, queue_arn: impl Into<Input<String>>, service: &str, source_arn: impl Into<Input<String>>) -> Self {
        let (mut fields, mut statements) = declared_policy(self.0.get("policy"));
        let literal = |v: Value| Prop::Value(v);
        let condition = Prop::object(vec![("aws:SourceArn".to_owned(), source_arn.into().into_prop())]);
        statements.push(Prop::object(vec![
            ("Sid".to_owned(), literal(Value::from(format!("AllowSendMessage{}", statements.len() + 1)))),
            ("Effect".to_owned(), literal(Value::from("Allow"))),
            ("Principal".to_owned(), literal(json!({ "Service": service }))),
            ("Action".to_owned(), literal(Value::from("sqs:SendMessage"))),
            ("Resource".to_owned(), queue_arn.into().into_prop()),
            ("Condition".to_owned(), Prop::object(vec![("ArnEquals".to_owned(), condition)])),
        ]));
        if !fields.iter().any(|(k, _)| k == "Version") {
            fields.push(("Version".to_owned(), literal(Value::from(VERSION))));
        }
        fields.push(("Statement".to_owned(), Prop::list(statements)));
        self.0.set_prop("policy", Prop::object(fields));
        self
    }
}

/// The policy declared so far: its fields but `Statement`, and its statements.
fn declared_policy(prop: Option<&Prop>) -> (Vec<(String, Prop)>, Vec<Prop>) {
    let fields: Vec<(String, Prop)> = match prop {
        Some(Prop::Value(Value::Object(map))) => map.iter().map(|(k, v)| (k.clone(), Prop::Value(v.clone()))).collect(),
        Some(Prop::Object(fields)) => fields.clone(),
        _ => Vec::new(),
    };
    let (statement, rest): (Vec<_>, Vec<_>) = fields.into_iter().partition(|(k, _)| k == "Statement");
    let statements = match statement.into_iter().next().map(|(_, p)| p) {
        Some(Prop::Value(Value::Array(items))) => items.into_iter().map(Prop::Value).collect(),
        Some(Prop::List(items)) => items,
        Some(one) => vec![one],
        None => Vec::new(),
    };
    (rest, statements)
}

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    if let Some(v) = decl.value("queue_url") {
        if !v.as_str().is_some_and(|s| s.starts_with("https://") || s.starts_with("http://")) {
            out.push(CheckFailure::new("queue_url", Some(v), "be a queue URL (https://...), such as a queue's url()"));
        }
    }
    const EXPECTED: &str = "be a policy document: a JSON object with a non-empty \"Statement\" list, such as QueuePolicy::allow_service builds";
    match decl.get("policy") {
        Some(Prop::Value(v)) => {
            let statements = v.get("Statement");
            let ok = v.is_object()
                && statements.is_some_and(|s| s.as_array().map_or(s.is_object(), |a| !a.is_empty() && a.iter().all(Value::is_object)));
            if !ok {
                out.push(CheckFailure::new("policy", Some(v), EXPECTED));
            } else if v.to_string().len() > 20_480 {
                out.push(CheckFailure::new("policy", Some(v), "be at most 20480 characters as JSON"));
            }
        }
        Some(Prop::List(_)) => out.push(CheckFailure::new("policy", None, EXPECTED)),
        Some(Prop::Object(fields)) if !fields.iter().any(|(k, _)| k == "Statement") => out.push(CheckFailure::new("policy", None, EXPECTED)),
        _ => {}
    }
}

/// The queue policy's operations.
#[derive(Debug)]
pub(crate) struct QueuePolicyKind;

/// What AWS answers when the queue does not exist.
const MISSING: &[&str] = &["AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"];

fn hint(code: &str) -> Option<String> {
    match code {
        "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" => {
            Some("the queue does not exist (deleted outside Cairn? run refresh); check queue_url".to_owned())
        }
        "InvalidAttributeValue" | "InvalidParameterValue" => Some(
            "SQS refused the policy: check its JSON (Version \"2012-10-17\", each statement's Effect, Principal, Action and Resource, the queue's ARN)"
                .to_owned(),
        ),
        _ => None,
    }
}

/// The queue's policy: `None` when the queue is gone, `Some(None)` when it has none.
async fn current(aws: &Clients, url: &str) -> Result<Option<Option<Value>>, ProviderError> {
    let got = aws.sqs.get_queue_attributes().queue_url(url).attribute_names(Attr::Policy).send().await;
    let Some(out) = or_missing(got, MISSING, "reading the queue's policy", no_hint)? else { return Ok(None) };
    let policy = out.attributes().and_then(|a| a.get(&Attr::Policy)).filter(|p| !p.trim().is_empty());
    Ok(Some(policy.map(|p| serde_json::from_str(p).unwrap_or_else(|_| Value::from(p.as_str())))))
}

async fn set(aws: &aws_sdk_sqs::Client, url: &str, policy: String, action: &str) -> Result<(), ProviderError> {
    aws.set_queue_attributes().queue_url(url).attributes(Attr::Policy, policy).send().await.map_err(|e| aws_error(action, e, hint))?;
    Ok(())
}

#[async_trait]
impl Kind for QueuePolicyKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = QueuePolicyInputs::from_props(inputs)?;
        let url = want.queue_url.as_deref().unwrap_or_default();
        let policy = want.policy.clone().unwrap_or(Value::Null);
        match current(aws, url).await? {
            None => return Err(ProviderError::failed(hint("QueueDoesNotExist").unwrap_or_default())),
            Some(Some(theirs)) if theirs != policy => {
                return Err(ProviderError::failed(format!(
                    "the queue {url} already has a policy that Cairn did not set, and a queue has only one; merge its statements into this policy, then remove it (set-queue-attributes with an empty Policy) and run again"
                )))
            }
            Some(_) => {}
        }
        // With the SDK's retries: setting the policy again sets the same policy.
        set(&aws.sqs, url, policy.to_string(), "setting the queue's policy").await?;
        self.read_created(aws, urn, url, inputs).await
    }

    async fn read(&self, aws: &Clients, _urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let Some(Some(policy)) = current(aws, id).await? else { return Ok(None) };
        let inputs = QueuePolicyInputs { queue_url: Some(id.to_owned()), policy: Some(policy) };
        Ok(Some(Observed::new(id, inputs.to_props(), [])))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, _old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let want = QueuePolicyInputs::from_props(new)?;
        if current(aws, id).await?.is_none() {
            return Err(ProviderError::not_found(format!("the queue {id} is gone (deleted outside Cairn? run refresh)")));
        }
        set(&aws.sqs, id, want.policy.unwrap_or(Value::Null).to_string(), "changing the queue's policy").await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        let cleared = aws.sqs.set_queue_attributes().queue_url(id).attributes(Attr::Policy, "").send().await;
        // A queue that is gone has no policy either.
        or_missing(cleared, MISSING, "clearing the queue's policy", hint)?;
        Ok(())
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let want = QueuePolicyInputs::from_props(created_with)?;
        let Some(url) = want.queue_url else { return Ok(Vec::new()) };
        Ok(self.read(aws, urn, &url, &Props::new()).await?.into_iter().collect())
    }
}
