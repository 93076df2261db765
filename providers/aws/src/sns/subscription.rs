//! `aws:sns:Subscription`: an endpoint (a queue, a function, a URL, an address) that a
//! topic delivers its messages to.
//!
//! The topic, protocol and endpoint force a replacement; raw delivery, the filter policy
//! and the Firehose role change in place (`SetSubscriptionAttributes`). A subscription
//! carries no tags: it is found again by its topic, protocol and endpoint.
//!
//! HTTP(S), email and SMS-like endpoints must confirm a subscription before they get
//! messages. Cairn asks AWS for the subscription's ARN even then
//! (`ReturnSubscriptionArn`), records it, and reports `pending_confirmation` as true
//! until the endpoint confirms; that is not an error. AWS removes a subscription left
//! unconfirmed for three days, and the next run then subscribes again.
//!
//! `Subscribe` is idempotent: for a topic, protocol and endpoint that are already
//! subscribed it answers with the existing subscription. So Cairn lists the topic's
//! subscriptions first and refuses to subscribe an endpoint that already is: taking
//! that subscription over would make destroying this resource remove someone else's.

use std::collections::HashMap;

use async_trait::async_trait;
use cairn_sdk::schema::Default;
use cairn_sdk::{CheckFailure, Decl, ErrorKind, Observed, Props, ProviderError, Urn};
use serde_json::Value;

use crate::error::{aws_error, missing, no_hint, or_missing};
use crate::kind::{paginate, Clients, Kind};

cairn_sdk::resource! {
    /// A subscription of an endpoint to a topic:
    /// `Subscription::new("orders-inbox").topic_arn(topic.arn()).protocol("sqs").endpoint(queue.arn())`.
    pub struct Subscription {
        token: "aws:sns:Subscription",
        schema: SUBSCRIPTION,
        inputs: SubscriptionInputs,
        /// A declared subscription's outputs.
        handle: SubscriptionRef,
        validate: validate,
    }
    inputs {
        /// The topic's ARN, a literal or a topic's `arn()` (forces replacement).
        topic_arn: String = required().forces_replacement().identity(),
        /// How messages are delivered: `sqs`, `lambda`, `http`, `https`, `email`,
        /// `email-json`, `sms`, `application` or `firehose` (forces replacement).
        protocol: String = required().forces_replacement().identity(),
        /// Where to: a queue's, function's, platform endpoint's or delivery stream's ARN,
        /// a URL, an email address or a phone number, as the protocol needs (forces
        /// replacement).
        endpoint: String = required().forces_replacement().identity(),
        /// Deliver the message body alone, without SNS's JSON envelope (default off;
        /// `sqs`, `http`, `https` and `firehose` only). Changed in place.
        raw_message_delivery: bool = default(Default::Bool(false)),
        /// Deliver only the messages whose attributes match this filter policy, a JSON
        /// object such as `{"kind": ["order"]}`; every message when unset. Changed in place.
        filter_policy: Value,
        /// The IAM role SNS assumes to write to a Firehose delivery stream (required for,
        /// and only for, `firehose`). Changed in place.
        subscription_role_arn: String,
    }
    outputs {
        /// The subscription ARN (its id).
        arn: String,
        /// Whether the endpoint has yet to confirm the subscription (an HTTP(S), email
        /// or SMS endpoint); no messages are delivered until it does.
        pending_confirmation: bool,
    }
}

/// The protocols AWS delivers by.
const PROTOCOLS: &[&str] = &["sqs", "lambda", "http", "https", "email", "email-json", "sms", "application", "firehose"];

/// The protocols that can deliver a message without SNS's envelope.
const RAW: &[&str] = &["sqs", "http", "https", "firehose"];

/// What the endpoint of `protocol` must be, if `endpoint` is not that.
fn endpoint_problem(protocol: &str, endpoint: &str) -> Option<&'static str> {
    let arn_of = |service: &str| endpoint.starts_with("arn:") && endpoint.split(':').nth(2) == Some(service);
    let phone = || {
        let digits: String = endpoint.chars().filter(|c| !matches!(c, '-' | '.' | ' ')).collect();
        let digits = digits.strip_prefix('+').unwrap_or(&digits);
        (1..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit())
    };
    match protocol {
        "sqs" if !arn_of("sqs") => Some("be an SQS queue's ARN (arn:aws:sqs:...), such as a queue's arn() output, as the protocol is sqs"),
        "lambda" if !arn_of("lambda") => Some("be a Lambda function's ARN (arn:aws:lambda:...), as the protocol is lambda"),
        "firehose" if !arn_of("firehose") => Some("be a Firehose delivery stream's ARN (arn:aws:firehose:...), as the protocol is firehose"),
        "application" if !arn_of("sns") => Some("be a platform endpoint's ARN (arn:aws:sns:...), as the protocol is application"),
        "http" if !endpoint.starts_with("http://") => Some("be a URL starting with http://, as the protocol is http"),
        "https" if !endpoint.starts_with("https://") => Some("be a URL starting with https://, as the protocol is https"),
        "email" | "email-json" if !endpoint.contains('@') => Some("be an email address, as the protocol is email"),
        "sms" if !phone() => Some("be a phone number in E.164 form, such as +14155550100, as the protocol is sms"),
        _ => None,
    }
}

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    if let Some(v) = decl.value("topic_arn") {
        if !v.as_str().is_some_and(|a| a.starts_with("arn:") && a.split(':').nth(2) == Some("sns")) {
            out.push(CheckFailure::new("topic_arn", Some(v), "be a topic's ARN (arn:aws:sns:...), such as a topic's arn() output"));
        }
    }
    let protocol = decl.value("protocol").and_then(Value::as_str);
    if let Some(v) = decl.value("protocol") {
        if !protocol.is_some_and(|p| PROTOCOLS.contains(&p)) {
            out.push(CheckFailure::new("protocol", Some(v), format!("be one of {}", PROTOCOLS.join(", "))));
        }
    }
    let protocol = protocol.filter(|p| PROTOCOLS.contains(p));
    if let (Some(p), Some(v)) = (protocol, decl.value("endpoint")) {
        if let Some(problem) = endpoint_problem(p, v.as_str().unwrap_or_default()) {
            out.push(CheckFailure::new("endpoint", Some(v), problem));
        }
    }
    if let (Some(p), Some(v)) = (protocol, decl.value("raw_message_delivery")) {
        if v.as_bool() == Some(true) && !RAW.contains(&p) {
            out.push(CheckFailure::new("raw_message_delivery", Some(v), format!("be false, as protocol {p} has no raw delivery (only {} do)", RAW.join(", "))));
        }
    }
    if let Some(v) = decl.value("filter_policy") {
        if v.as_object().is_none_or(serde_json::Map::is_empty) {
            out.push(CheckFailure::new("filter_policy", Some(v), "be a non-empty JSON object, such as {\"kind\": [\"order\"]}; leave it unset to deliver every message"));
        }
    }
    let role = decl.get("subscription_role_arn").is_some();
    match protocol {
        Some("firehose") if !role => out.push(CheckFailure::new("subscription_role_arn", None, "be set, as the protocol is firehose (the role SNS assumes to write to the stream)")),
        Some(p) if p != "firehose" && role => {
            out.push(CheckFailure::new("subscription_role_arn", decl.value("subscription_role_arn"), format!("be unset, as only firehose subscriptions use a role (the protocol is {p})")))
        }
        _ => {}
    }
}

/// The subscription's operations.
#[derive(Debug)]
pub(crate) struct SubscriptionKind;

/// What AWS answers when the subscription (or its topic) does not exist.
const MISSING: &[&str] = &["NotFound"];

/// The ARN `ListSubscriptionsByTopic` shows for a subscription whose endpoint has not
/// confirmed it: it has an ARN, but only `Subscribe` tells it.
const PENDING: &str = "PendingConfirmation";

fn hint(code: &str, want: &SubscriptionInputs) -> Option<String> {
    match code {
        "NotFound" => Some(format!(
            "the topic {} does not exist; check `topic_arn` (a topic's arn() output keeps it right)",
            want.topic_arn.as_deref().unwrap_or_default()
        )),
        "SubscriptionLimitExceeded" => Some("the topic's subscription quota is used up; remove unused subscriptions or ask AWS for more".to_owned()),
        "FilterPolicyLimitExceeded" => {
            Some("the account's quota of filter policies is used up; remove `filter_policy` from some subscriptions or ask AWS for more".to_owned())
        }
        _ => None,
    }
}

/// The refusal of an endpoint that is already subscribed to the topic.
fn taken(want: &SubscriptionInputs, arn: Option<&str>) -> ProviderError {
    let (topic, protocol, endpoint) = key(want);
    let which = arn.map(|a| format!(" ({a})")).unwrap_or_default();
    ProviderError::failed(format!(
        "{endpoint} is already subscribed to {topic} by {protocol}{which}, and Cairn did not subscribe it; it does not take over a \
         subscription it did not make, as destroying this resource would remove it. Change `endpoint` or `topic_arn`, or remove \
         the existing subscription (aws sns unsubscribe) and run again"
    ))
}

fn key(want: &SubscriptionInputs) -> (&str, &str, &str) {
    fn s(v: &Option<String>) -> &str {
        v.as_deref().unwrap_or_default()
    }
    (s(&want.topic_arn), s(&want.protocol), s(&want.endpoint))
}

/// The ARNs of the subscriptions of `topic` by `protocol` to `endpoint` (an unconfirmed
/// one shows as [`PENDING`]); none when the topic is gone.
async fn subscribed(aws: &Clients, topic: &str, protocol: &str, endpoint: &str, want: &SubscriptionInputs) -> Result<Vec<String>, ProviderError> {
    paginate(|token| async move {
        let got = aws.sns.list_subscriptions_by_topic().topic_arn(topic).set_next_token(token).send().await;
        let Some(page) = or_missing(got, MISSING, "listing the topic's subscriptions", |c| hint(c, want))? else { return Ok((Vec::new(), None)) };
        let arns = page.subscriptions().iter().filter(|s| s.protocol() == Some(protocol) && s.endpoint() == Some(endpoint));
        Ok((arns.filter_map(|s| s.subscription_arn()).map(str::to_owned).collect(), page.next_token().map(str::to_owned)))
    })
    .await
}

/// A subscribe of `want`'s endpoint to its topic, answered with the subscription's ARN
/// (even while unconfirmed).
fn subscribe(sns: &aws_sdk_sns::Client, want: &SubscriptionInputs) -> aws_sdk_sns::operation::subscribe::builders::SubscribeFluentBuilder {
    let (topic, protocol, endpoint) = key(want);
    sns.subscribe()
        .topic_arn(topic)
        .protocol(protocol)
        .endpoint(endpoint)
        .return_subscription_arn(true)
        .set_attributes(Some(attributes(want)))
}

/// The attributes a subscribe sends.
fn attributes(want: &SubscriptionInputs) -> HashMap<String, String> {
    let mut a = HashMap::new();
    if want.raw_message_delivery == Some(true) {
        a.insert("RawMessageDelivery".to_owned(), "true".to_owned());
    }
    if let Some(p) = &want.filter_policy {
        a.insert("FilterPolicy".to_owned(), p.to_string());
    }
    if let Some(r) = &want.subscription_role_arn {
        a.insert("SubscriptionRoleArn".to_owned(), r.clone());
    }
    a
}

#[async_trait]
impl Kind for SubscriptionKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = SubscriptionInputs::from_props(inputs)?;
        let (topic, protocol, endpoint) = key(&want);
        // An unconfirmed subscription's ARN is not listed: one can only be told by
        // subscribing again, which also sends the endpoint a new confirmation request.
        if let Some(arn) = subscribed(aws, topic, protocol, endpoint, &want).await?.into_iter().find(|a| a != PENDING) {
            return Err(taken(&want, Some(&arn)));
        }
        // With the SDK's retries: SNS answers a Subscribe of an endpoint already
        // subscribed, with the same attributes, with that subscription (an unconfirmed
        // endpoint gets its confirmation request again).
        let out = subscribe(&aws.sns, &want)
            .send()
            .await
            .map_err(|e| {
                // AWS's answer for an endpoint already subscribed with other attributes.
                if missing(&e, &["InvalidParameter: already exists"]) {
                    taken(&want, None)
                } else {
                    aws_error("subscribing", e, |c| hint(c, &want))
                }
            })?;
        // Asked to, AWS answers with the ARN even for an unconfirmed subscription; any
        // other answer leaves the id unknown, which the look-up settles.
        let arn = out.subscription_arn().filter(|a| a.starts_with("arn:")).unwrap_or_default();
        self.read_created(aws, urn, arn, inputs).await
    }

    async fn read(&self, aws: &Clients, _urn: &Urn, id: &str, recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let recorded = SubscriptionInputs::from_props(recorded)?;
        let got = aws.sns.get_subscription_attributes().subscription_arn(id).send().await;
        let Some(out) = or_missing(got, MISSING, "reading the subscription", no_hint)? else { return Ok(None) };
        Ok(Some(observe(id, &out.attributes().cloned().unwrap_or_default(), &recorded)))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (SubscriptionInputs::from_props(old)?, SubscriptionInputs::from_props(new)?);
        let mut changes = Vec::new();
        if old.raw_message_delivery != want.raw_message_delivery {
            changes.push(("RawMessageDelivery", want.raw_message_delivery.unwrap_or(false).to_string()));
        }
        if old.filter_policy != want.filter_policy {
            // An empty filter policy removes it.
            changes.push(("FilterPolicy", want.filter_policy.as_ref().map(Value::to_string).unwrap_or_default()));
        }
        if let Some(role) = want.subscription_role_arn.as_ref().filter(|r| old.subscription_role_arn.as_ref() != Some(*r)) {
            changes.push(("SubscriptionRoleArn", role.clone()));
        }
        for (attribute, value) in changes {
            aws.sns
                .set_subscription_attributes()
                .subscription_arn(id)
                .attribute_name(attribute)
                .attribute_value(value)
                .send()
                .await
                .map_err(|e| aws_error(&format!("changing the subscription's {attribute}"), e, no_hint))?;
        }
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        or_missing(aws.sns.unsubscribe().subscription_arn(id).send().await, MISSING, "unsubscribing", no_hint)?;
        Ok(())
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        Ok(self.listed(aws, urn, created_with).await?.0)
    }

    async fn lookup_created(&self, aws: &Clients, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let (mut found, unconfirmed) = self.listed(aws, urn, created_with).await?;
        if !unconfirmed {
            return Ok(found);
        }
        // A subscription its endpoint has not confirmed (HTTP, email) is listed without
        // its ARN, yet it may be the interrupted create's: left unfound, the create would
        // be dropped, and once confirmed, the next create would refuse it as not Cairn's.
        // Only subscribing again tells its ARN: AWS makes no second one, and sends the
        // endpoint its confirmation request again.
        let want = SubscriptionInputs::from_props(created_with)?;
        let answer = subscribe(&aws.sns, &want).send().await;
        let out = match answer {
            Ok(out) => out,
            // Refused (unconfirmed with other attributes: not the create's; the topic
            // gone; not allowed): as before this look, nothing found, and the create
            // planned again says why. Only an answer that may have done something fails
            // the settling.
            Err(e) => {
                let e = aws_error("finding the unconfirmed subscription (Subscribe)", e, |c| hint(c, &want));
                return if e.kind() == &ErrorKind::Failed { Ok(found) } else { Err(e) };
            }
        };
        if let Some(arn) = out.subscription_arn().filter(|a| a.starts_with("arn:") && !found.iter().any(|f| f.id == *a)) {
            found.extend(self.read(aws, urn, arn, created_with).await?);
        }
        Ok(found)
    }
}

impl SubscriptionKind {
    /// The subscriptions of the topic by the protocol to the endpoint in `created_with`,
    /// read; and whether the listing also shows one unconfirmed (no ARN).
    async fn listed(&self, aws: &Clients, urn: &Urn, created_with: &Props) -> Result<(Vec<Observed>, bool), ProviderError> {
        let want = SubscriptionInputs::from_props(created_with)?;
        let (topic, protocol, endpoint) = key(&want);
        if topic.is_empty() || protocol.is_empty() || endpoint.is_empty() {
            return Ok((Vec::new(), false));
        }
        let mut found = Vec::new();
        let mut unconfirmed = false;
        for arn in subscribed(aws, topic, protocol, endpoint, &want).await? {
            if arn == PENDING {
                unconfirmed = true;
            } else {
                found.extend(self.read(aws, urn, &arn, created_with).await?);
            }
        }
        Ok((found, unconfirmed))
    }
}

/// The subscription as the inputs and outputs Cairn records: what AWS reports, and
/// from `recorded` what it did not.
fn observe(arn: &str, attrs: &HashMap<String, String>, recorded: &SubscriptionInputs) -> Observed {
    let attr = |k: &str| attrs.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let text = |k: &str, kept: &Option<String>| attr(k).map(str::to_owned).or_else(|| kept.clone());
    let inputs = SubscriptionInputs {
        topic_arn: text("TopicArn", &recorded.topic_arn),
        protocol: text("Protocol", &recorded.protocol),
        endpoint: text("Endpoint", &recorded.endpoint),
        raw_message_delivery: Some(attr("RawMessageDelivery") == Some("true")),
        // An empty policy is none.
        filter_policy: attr("FilterPolicy")
            .and_then(|p| serde_json::from_str::<Value>(p).ok())
            .filter(|p| p.as_object().is_some_and(|o| !o.is_empty())),
        subscription_role_arn: attr("SubscriptionRoleArn").map(str::to_owned),
    };
    let pending = attr("PendingConfirmation") == Some("true");
    Observed::new(arn, inputs.to_props(), [("arn", Value::from(arn)), ("pending_confirmation", Value::from(pending))])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The local AWS confirms every subscription at once; AWS does not (HTTP, email).
    #[test]
    fn an_unconfirmed_subscription_reads_back_as_pending_not_as_an_error() {
        let arn = "arn:aws:sns:us-east-1:123456789012:alerts:5f1c0f6e-2d7a-4c1b-9d55-0b3a2c1e9f00";
        let attrs: HashMap<String, String> = [
            ("TopicArn", "arn:aws:sns:us-east-1:123456789012:alerts"),
            ("Protocol", "https"),
            ("Endpoint", "https://hooks.example.com/sns"),
            ("PendingConfirmation", "true"),
            ("RawMessageDelivery", "false"),
            ("FilterPolicy", r#"{"kind": ["order"]}"#),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let seen = observe(arn, &attrs, &SubscriptionInputs::default());
        assert_eq!(seen.outputs.get("pending_confirmation"), Some(&Value::Bool(true)));
        let inputs = SubscriptionInputs::from_props(&seen.inputs).unwrap();
        assert_eq!(inputs.protocol.as_deref(), Some("https"));
        assert_eq!(inputs.filter_policy, Some(serde_json::json!({"kind": ["order"]})));
        assert_eq!(inputs.raw_message_delivery, Some(false));
    }
}
