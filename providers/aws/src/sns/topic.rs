//! `aws:sns:Topic`: a standard or FIFO topic.
//!
//! The name and FIFO-ness force a replacement; the display name, the access policy, the
//! KMS key and tags change in place (`SetTopicAttributes`, `TagResource`). FIFO topic
//! names end in `.fifo`: Cairn adds it to generated names, and requires it of names you
//! give.
//!
//! `CreateTopic` is idempotent by name: for a name that is taken it answers with the
//! existing topic's ARN instead of an error (AWS refuses only when the tags or
//! attributes sent differ; the local AWS never refuses). So right after the create,
//! Cairn reads the topic's tags: a topic it made carries this resource's `cairn:urn`,
//! written by the create call itself, and is taken; a topic with another `cairn:urn`,
//! or none, already had the name and is refused, and not recorded, so that nothing
//! Cairn does later (an update, a destroy) touches it.

use std::collections::HashMap;

use async_trait::async_trait;
use aws_sdk_sns::types::Tag;
use cairn_sdk::schema::Default;
use cairn_sdk::{CheckFailure, Decl, Observed, Props, ProviderError, Tags, Urn};
use serde_json::{json, Value};

use crate::error::{aws_error, missing, no_hint, or_missing};
use crate::kind::{paginate, Clients, Kind};
use crate::tags::{self, Retag};

cairn_sdk::resource! {
    /// An SNS topic. `Topic::new("alerts")` is a standard topic named `alerts-<suffix>`.
    pub struct Topic {
        token: "aws:sns:Topic",
        schema: TOPIC,
        inputs: TopicInputs,
        /// A declared topic's outputs.
        handle: TopicRef,
        validate: validate,
    }
    inputs {
        /// The physical name, 1 to 256 letters, digits, `-` or `_` (a FIFO topic's ending
        /// in `.fifo`); by default `<logical name>-<suffix>`, new on each replacement
        /// (forces replacement).
        name: String = auto_name().forces_replacement(),
        /// A FIFO topic (default off; forces replacement).
        fifo: bool = default(Default::Bool(false)).forces_replacement(),
        /// The name shown as the sender of email and SMS notifications, at most 100
        /// characters (default none). Changed in place.
        display_name: String = default(Default::Str("")),
        /// The access policy, a JSON policy document; AWS's default (only this account
        /// may use the topic) when unset. Changed in place.
        policy: Value,
        /// The KMS key that encrypts messages at rest (an id, ARN or alias such as
        /// `alias/aws/sns`); unencrypted when unset. Changed in place.
        kms_master_key_id: String,
        /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    outputs {
        /// The topic ARN (its id): what subscriptions, alarms and policies name.
        arn: String,
    }
    echoes {
        /// The topic's name, with `.fifo` for a FIFO topic.
        name: String,
    }
}

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    let fifo = decl.value("fifo").and_then(Value::as_bool).unwrap_or(false);
    if let Some(v) = decl.value("name") {
        let name = v.as_str().unwrap_or_default();
        let base = name.strip_suffix(".fifo").unwrap_or(name);
        if name.len() > 256 || base.is_empty() || !base.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            out.push(CheckFailure::new("name", Some(v), "be 1 to 256 letters, digits, '-' or '_' (a FIFO topic's ending in .fifo)"));
        } else if fifo != name.ends_with(".fifo") {
            let expected = if fifo { "end in .fifo, as the topic is FIFO" } else { "not end in .fifo, as the topic is not FIFO (set fifo to true for a FIFO topic)" };
            out.push(CheckFailure::new("name", Some(v), expected));
        }
    }
    if let Some(v) = decl.value("display_name") {
        if v.as_str().is_none_or(|s| s.chars().count() > 100) {
            out.push(CheckFailure::new("display_name", Some(v), "be at most 100 characters"));
        }
    }
    if let Some(v) = decl.value("policy") {
        if !v.is_object() {
            out.push(CheckFailure::new("policy", Some(v), "be a JSON object: a policy document with a Statement list"));
        }
    }
    if let Some(v) = decl.value("kms_master_key_id") {
        if v.as_str().is_none_or(str::is_empty) {
            out.push(CheckFailure::new("kms_master_key_id", Some(v), "name a KMS key (an id, ARN or alias such as alias/aws/sns); leave it unset for no encryption"));
        }
    }
}

/// The topic's operations.
#[derive(Debug)]
pub(crate) struct TopicKind;

/// What AWS answers when the topic does not exist: `NotFound` to the topic calls,
/// `ResourceNotFound` to the tag calls.
const MISSING: &[&str] = &["NotFound", "ResourceNotFound"];

/// The `Id` of the policy AWS gives a topic that was given none.
const DEFAULT_POLICY_ID: &str = "__default_policy_ID";

fn physical_name(want: &TopicInputs) -> String {
    let name = want.name.as_deref().unwrap_or_default();
    if want.fifo == Some(true) && !name.ends_with(".fifo") {
        format!("{name}.fifo")
    } else {
        name.to_owned()
    }
}

/// The policy AWS gives a new topic: the owning account may do everything. What an
/// update sets when the program stops setting `policy`.
fn default_policy(arn: &str) -> Value {
    let account = arn.split(':').nth(4).unwrap_or_default();
    json!({
        "Version": "2008-10-17",
        "Id": DEFAULT_POLICY_ID,
        "Statement": [{
            "Sid": "__default_statement_ID",
            "Effect": "Allow",
            "Principal": {"AWS": "*"},
            "Action": [
                "SNS:GetTopicAttributes", "SNS:SetTopicAttributes", "SNS:AddPermission", "SNS:RemovePermission",
                "SNS:DeleteTopic", "SNS:Subscribe", "SNS:ListSubscriptionsByTopic", "SNS:Publish"
            ],
            "Resource": arn,
            "Condition": {"StringEquals": {"AWS:SourceOwner": account}}
        }]
    })
}

/// The attributes a create sends.
fn attributes(want: &TopicInputs) -> HashMap<String, String> {
    let mut a = HashMap::new();
    if want.fifo == Some(true) {
        a.insert("FifoTopic".to_owned(), "true".to_owned());
    }
    if let Some(d) = want.display_name.as_deref().filter(|d| !d.is_empty()) {
        a.insert("DisplayName".to_owned(), d.to_owned());
    }
    if let Some(p) = &want.policy {
        a.insert("Policy".to_owned(), p.to_string());
    }
    if let Some(k) = &want.kms_master_key_id {
        a.insert("KmsMasterKeyId".to_owned(), k.clone());
    }
    a
}

fn sns_tags(pairs: impl IntoIterator<Item = (String, String)>) -> Result<Vec<Tag>, ProviderError> {
    pairs
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build().map_err(|e| ProviderError::failed(format!("a tag could not be built: {e}"))))
        .collect()
}

/// The refusal of a name another topic has: `whose` says whose it is.
fn taken(name: &str, whose: &str) -> ProviderError {
    ProviderError::failed(format!(
        "a topic named {name} already exists and {whose}; Cairn does not take over a topic it did not create. \
         Set `name` to another name, or leave it unset and Cairn will pick a unique one"
    ))
}

fn hint(code: &str, want: &TopicInputs) -> Option<String> {
    match code {
        "TopicLimitExceeded" => Some("the account's topic quota for this region is used up; delete unused topics or ask AWS for more".to_owned()),
        "TagPolicy" => Some(format!("the tags {:?} break the account's tag policy; change `tags` to fit it", want.tags.clone().unwrap_or_default())),
        "InvalidSecurity" | "KMSNotFound" | "KMSInvalidState" | "KMSDisabled" | "KMSAccessDenied" => Some(format!(
            "the KMS key {} cannot be used to encrypt the topic ({code}); check `kms_master_key_id` names an enabled key that SNS may use",
            want.kms_master_key_id.as_deref().unwrap_or("(none)")
        )),
        _ => None,
    }
}

/// Makes sure the topic `CreateTopic` answered with is this resource's: see the module
/// documentation. A refusal is `Failed` without the ARN, so the engine records nothing
/// and never changes or deletes that topic. Tags that cannot be read leave it open:
/// `Uncertain`, settled by the look-up, which finds the topic only if it carries this
/// resource's `cairn:urn`.
async fn claim(aws: &Clients, urn: &Urn, arn: &str, name: &str) -> Result<(), ProviderError> {
    let tags = match aws.sns.list_tags_for_resource().resource_arn(arn).send().await {
        Ok(out) => out.tags().to_vec(),
        Err(e) => {
            let e = aws_error("reading the new topic's tags", e, no_hint);
            return Err(ProviderError::uncertain(format!(
                "the create answered with the topic {arn}, but its tags could not be read to tell whether Cairn made it or it already had the name: {e}"
            )));
        }
    };
    match tags.iter().find(|t| t.key() == tags::URN).map(Tag::value) {
        Some(owner) if owner == urn.as_str() => Ok(()),
        Some(owner) => Err(taken(name, &format!("belongs to {owner}"))),
        None => Err(taken(name, &format!("was not made by Cairn (it has no {} tag)", tags::URN))),
    }
}

#[async_trait]
impl Kind for TopicKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = TopicInputs::from_props(inputs)?;
        let name = physical_name(&want);
        // With the SDK's retries: SNS answers a CreateTopic of an existing name, tags and
        // attributes with that topic, so a call sent again after its answer was lost
        // finds the topic the first one made (and `claim` checks it is this resource's).
        let out = aws
            .sns
            .create_topic()
            .name(&name)
            .set_attributes(Some(attributes(&want)))
            .set_tags(Some(sns_tags(tags::wanted(urn, want.tags.as_ref()))?))
            .send()
            .await
            .map_err(|e| {
                // AWS's answer for a taken name whose topic has other tags or attributes.
                if missing(&e, &["InvalidParameter: already exists"]) {
                    taken(&name, "has other tags or attributes")
                } else {
                    aws_error("creating the topic", e, |c| hint(c, &want))
                }
            })?;
        let arn = out.topic_arn().unwrap_or_default().to_owned();
        if !arn.is_empty() {
            claim(aws, urn, &arn, &name).await?;
        }
        self.read_created(aws, urn, &arn, inputs).await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let recorded = TopicInputs::from_props(recorded)?;
        let got = aws.sns.get_topic_attributes().topic_arn(id).send().await;
        let Some(out) = or_missing(got, MISSING, "reading the topic", no_hint)? else { return Ok(None) };
        let attrs = out.attributes().cloned().unwrap_or_default();
        let got = aws.sns.list_tags_for_resource().resource_arn(id).send().await;
        let Some(out) = or_missing(got, MISSING, "reading the topic's tags", no_hint)? else { return Ok(None) };
        let tags = out.tags().iter().map(|t| (t.key(), t.value()));
        Ok(Some(observe(urn, id, &attrs, tags, &recorded)))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (TopicInputs::from_props(old)?, TopicInputs::from_props(new)?);
        let mut changes = Vec::new();
        if old.display_name != want.display_name {
            changes.push(("DisplayName", want.display_name.clone().unwrap_or_default()));
        }
        if old.policy != want.policy {
            // No policy is AWS's default one, which must be set back explicitly.
            changes.push(("Policy", want.policy.clone().unwrap_or_else(|| default_policy(id)).to_string()));
        }
        if old.kms_master_key_id != want.kms_master_key_id {
            // An empty key id turns encryption off.
            changes.push(("KmsMasterKeyId", want.kms_master_key_id.clone().unwrap_or_default()));
        }
        for (attribute, value) in changes {
            aws.sns
                .set_topic_attributes()
                .topic_arn(id)
                .attribute_name(attribute)
                .attribute_value(value)
                .send()
                .await
                .map_err(|e| aws_error(&format!("changing the topic's {attribute}"), e, |c| hint(c, &want)))?;
        }
        let Retag { remove, set } = Retag::new(urn, old.tags.as_ref(), want.tags.as_ref());
        if !remove.is_empty() {
            aws.sns
                .untag_resource()
                .resource_arn(id)
                .set_tag_keys(Some(remove))
                .send()
                .await
                .map_err(|e| aws_error("removing the topic's tags", e, |c| hint(c, &want)))?;
        }
        if !set.is_empty() {
            aws.sns
                .tag_resource()
                .resource_arn(id)
                .set_tags(Some(sns_tags(set)?))
                .send()
                .await
                .map_err(|e| aws_error("tagging the topic", e, |c| hint(c, &want)))?;
        }
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        // AWS deletes the topic's subscriptions with it; deleting a topic that is gone succeeds.
        or_missing(aws.sns.delete_topic().topic_arn(id).send().await, MISSING, "deleting the topic", no_hint)?;
        Ok(())
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, _created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let arns = paginate(|token| async move {
            let page = aws.sns.list_topics().set_next_token(token).send().await.map_err(|e| aws_error("listing topics", e, no_hint))?;
            Ok((page.topics().iter().filter_map(|t| t.topic_arn()).map(str::to_owned).collect(), page.next_token().map(str::to_owned)))
        })
        .await?;
        let mut found = Vec::new();
        for arn in &arns {
            let tags = match aws.sns.list_tags_for_resource().resource_arn(arn).send().await {
                Ok(out) => out.tags().to_vec(),
                Err(e) if missing(&e, MISSING) => continue,
                Err(e) => return Err(aws_error("reading a topic's tags", e, no_hint)),
            };
            if tags::is_tagged(urn, tags.iter().map(|t| (t.key(), t.value()))) {
                found.extend(self.read(aws, urn, arn, &Props::new()).await?);
            }
        }
        Ok(found)
    }
}

/// The topic as the inputs and outputs Cairn records. The name is the topic's own,
/// except for a generated FIFO name, recorded without the `.fifo` Cairn added. The
/// default policy reads as none, unless that is what the program set.
fn observe<'a>(
    urn: &Urn,
    arn: &str,
    attrs: &HashMap<String, String>,
    tags: impl IntoIterator<Item = (&'a str, &'a str)>,
    recorded: &TopicInputs,
) -> Observed {
    let physical = arn.rsplit(':').next().unwrap_or_default();
    let name = match recorded.name.as_deref() {
        Some(r) if physical.strip_suffix(".fifo") == Some(r) => r,
        _ => physical,
    };
    let attr = |k: &str| attrs.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let policy = attr("Policy").and_then(|p| serde_json::from_str::<Value>(p).ok());
    let policy = policy.filter(|p| recorded.policy.as_ref() == Some(p) || p.get("Id").and_then(Value::as_str) != Some(DEFAULT_POLICY_ID));
    let inputs = TopicInputs {
        name: Some(name.to_owned()),
        fifo: Some(attr("FifoTopic") == Some("true")),
        display_name: Some(attr("DisplayName").unwrap_or_default().to_owned()),
        policy,
        kms_master_key_id: attr("KmsMasterKeyId").map(str::to_owned),
        tags: tags::observed(urn, tags),
    };
    // `name` is an output too, so that the handle's `name()` is the topic's real name.
    Observed::new(arn, inputs.to_props(), [("arn", Value::from(arn)), ("name", Value::from(physical))])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arn(name: &str) -> String {
        format!("arn:aws:sns:us-east-1:123456789012:{name}")
    }

    #[test]
    fn a_generated_fifo_name_reads_back_as_recorded_and_the_default_policy_as_none() {
        let urn = Urn::new("dev", "aws:sns:Topic", "jobs");
        let id = arn("jobs-1234567.fifo");
        let mut attrs = HashMap::from([("FifoTopic".to_owned(), "true".to_owned())]);
        attrs.insert("Policy".to_owned(), default_policy(&id).to_string());
        let recorded = TopicInputs { name: Some("jobs-1234567".to_owned()), ..TopicInputs::default() };
        let seen = observe(&urn, &id, &attrs, [], &recorded);
        let inputs = TopicInputs::from_props(&seen.inputs).unwrap();
        assert_eq!((inputs.name.as_deref(), inputs.fifo, inputs.policy), (Some("jobs-1234567"), Some(true), None));
        assert_eq!(seen.outputs.get("name"), Some(&Value::from("jobs-1234567.fifo")));

        // A name given with its suffix, and a policy that is not the default, read as they are.
        let recorded = TopicInputs { name: Some("jobs.fifo".to_owned()), ..TopicInputs::default() };
        attrs.insert("Policy".to_owned(), json!({"Version": "2012-10-17", "Statement": []}).to_string());
        let seen = observe(&urn, &arn("jobs.fifo"), &attrs, [], &recorded);
        let inputs = TopicInputs::from_props(&seen.inputs).unwrap();
        assert_eq!(inputs.name.as_deref(), Some("jobs.fifo"));
        assert_eq!(inputs.policy, Some(json!({"Version": "2012-10-17", "Statement": []})));
    }
}
