//! `aws:logs:LogGroup`: a CloudWatch Logs log group.
//!
//! The name and the KMS key force a replacement; the retention and tags change in place
//! (`PutRetentionPolicy`, or `DeleteRetentionPolicy` to keep events forever;
//! `TagResource`/`UntagResource` on the group ARN). Tags are set at creation.
//!
//! The KMS key forces a replacement rather than being changed with
//! `AssociateKmsKey`/`DisassociateKmsKey`: the local AWS Cairn is tested against does
//! not implement those. A replacement makes a new, empty log group and deletes the old
//! one with its events, so choose the key when you create the group.

use async_trait::async_trait;
use aws_sdk_cloudwatchlogs::types::LogGroup as Group;
use cairn_sdk::{CheckFailure, Decl, Observed, Props, ProviderError, Tags, Urn};
use serde_json::Value;

use crate::error::{aws_error, no_hint, or_missing};
use crate::kind::{finish, found_after_create, Clients, Kind};
use crate::tags::{self, Retag};

cairn_sdk::resource! {
    /// A log group: `LogGroup::new("app").retention_in_days(30)`.
    pub struct LogGroup {
        token: "aws:logs:LogGroup",
        schema: LOG_GROUP,
        inputs: LogGroupInputs,
        /// A declared log group's outputs.
        handle: LogGroupRef,
        validate: validate,
    }
    inputs {
        /// The physical name: 1 to 512 letters, digits, `.`, `-`, `_`, `/` or `#`, not
        /// starting with `aws/`. By default `<logical name>-<suffix>`, new on each
        /// replacement (forces replacement).
        name: String = auto_name().forces_replacement(),
        /// Days its events are kept: 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400,
        /// 545, 731, 1096, 1827, 2192, 2557, 2922, 3288 or 3653. Unset, they never expire.
        /// Changed in place.
        retention_in_days: u32,
        /// The ARN of the KMS key that encrypts its events; CloudWatch Logs' own
        /// encryption when unset (forces replacement: a new, empty group).
        kms_key_id: String = forces_replacement(),
        /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    outputs {
        /// The log group ARN, without the `:*` DescribeLogGroups adds to its `arn`: what
        /// tagging and IAM policies on the group take.
        arn: String,
    }
    echoes {
        /// The log group name (its id).
        name: String,
    }
}

/// The retention periods AWS accepts, in days.
const RETENTION_DAYS: [u32; 22] = [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653];
/// The longest log group name AWS accepts.
const NAME_MAX: usize = 512;
/// What the engine appends to a logical name to make a physical one: `-` and 7 hex digits.
const AUTO_SUFFIX: usize = 8;

fn name_chars(s: &str) -> bool {
    s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/' | '#'))
}

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    const RULE: &str = "be 1 to 512 letters, digits, '.', '-', '_', '/' or '#', not starting with \"aws/\"";
    match decl.value("name") {
        Some(v) if !v.as_str().is_some_and(|s| (1..=NAME_MAX).contains(&s.len()) && name_chars(s) && !s.starts_with("aws/")) => {
            out.push(CheckFailure::new("name", Some(v), RULE));
        }
        None if decl.get("name").is_none() => {
            let logical = decl.name();
            if !name_chars(logical) || logical.starts_with("aws/") || logical.len() + AUTO_SUFFIX > NAME_MAX {
                out.push(CheckFailure::new(
                    "name",
                    None,
                    format!("be set, as the logical name '{logical}' does not make a valid '<logical name>-<7 hex digits>' (a log group name must {RULE})"),
                ));
            }
        }
        _ => {}
    }
    if let Some(v) = decl.value("retention_in_days") {
        if !v.as_u64().is_some_and(|d| RETENTION_DAYS.iter().any(|r| u64::from(*r) == d)) {
            let list = RETENTION_DAYS.iter().map(u32::to_string).collect::<Vec<_>>().join(", ");
            out.push(CheckFailure::new("retention_in_days", Some(v), format!("be one of {list} (days); leave it unset to keep events forever")));
        }
    }
    if let Some(v) = decl.value("kms_key_id") {
        if !v.as_str().is_some_and(|s| s.starts_with("arn:") && s.contains(":kms:")) {
            out.push(CheckFailure::new("kms_key_id", Some(v), "be the ARN of a KMS key (arn:aws:kms:<region>:<account>:key/<id>)"));
        }
    }
}

/// The log group's operations.
#[derive(Debug)]
pub(crate) struct LogGroupKind;

const MISSING: &[&str] = &["ResourceNotFoundException"];

fn hint(code: &str, want: &LogGroupInputs) -> Option<String> {
    let name = want.name.as_deref().unwrap_or_default();
    match code {
        "ResourceAlreadyExistsException" => Some(format!(
            "a log group named {name} already exists; choose another name, or leave the name unset and Cairn will pick a unique one"
        )),
        "LimitExceededException" => Some(
            "the account's quota of log groups (or of tags on one) is used up; delete log groups you no longer need or ask AWS for a higher quota"
                .to_owned(),
        ),
        "OperationAbortedException" => Some(format!("another change to log group {name} was in progress; run again")),
        "AccessDeniedException" if want.kms_key_id.is_some() => Some(format!(
            "CloudWatch Logs may not use KMS key {}: its key policy must allow the logs.<region>.amazonaws.com service principal; fix the key policy or kms_key_id",
            want.kms_key_id.as_deref().unwrap_or_default()
        )),
        _ => None,
    }
}

/// The ARN tagging takes: the group's `logGroupArn`, or its `arn` without the `:*`.
fn arn_of(g: &Group) -> String {
    match g.log_group_arn() {
        Some(arn) => arn.to_owned(),
        None => g.arn().unwrap_or_default().trim_end_matches(":*").to_owned(),
    }
}

/// The groups whose names start with `prefix` (all when `None`), a page at a time, until
/// `keep` says stop.
async fn each_group(aws: &Clients, prefix: Option<&str>, mut keep: impl FnMut(&Group) -> bool) -> Result<(), ProviderError> {
    let mut token = None;
    loop {
        let page = aws
            .logs
            .describe_log_groups()
            .set_log_group_name_prefix(prefix.map(str::to_owned))
            .set_next_token(token)
            .send()
            .await
            .map_err(|e| aws_error("listing log groups (DescribeLogGroups)", e, no_hint))?;
        for g in page.log_groups() {
            if !keep(g) {
                return Ok(());
            }
        }
        match page.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_owned()),
            _ => return Ok(()),
        }
    }
}

/// The log group named `name`, if it exists.
async fn describe(aws: &Clients, name: &str) -> Result<Option<Group>, ProviderError> {
    let mut found = None;
    each_group(aws, Some(name), |g| {
        if g.log_group_name() == Some(name) {
            found = Some(g.clone());
        }
        found.is_none()
    })
    .await?;
    Ok(found)
}

/// All tags of the group with ARN `arn`; `None` when it is gone.
async fn list_tags(aws: &Clients, arn: &str) -> Result<Option<Vec<(String, String)>>, ProviderError> {
    let got = aws.logs.list_tags_for_resource().resource_arn(arn).send().await;
    Ok(or_missing(got, MISSING, "reading the log group's tags", no_hint)?.map(|out| out.tags().cloned().unwrap_or_default().into_iter().collect()))
}

/// The group as the inputs and outputs Cairn records.
fn observe(urn: &Urn, g: &Group, tags: Vec<(String, String)>) -> Observed {
    let name = g.log_group_name().unwrap_or_default();
    let inputs = LogGroupInputs {
        name: Some(name.to_owned()),
        retention_in_days: g.retention_in_days().and_then(|d| u32::try_from(d).ok()),
        kms_key_id: g.kms_key_id().map(str::to_owned),
        tags: tags::observed(urn, tags),
    };
    Observed::new(name, inputs.to_props(), [("arn", Value::from(arn_of(g)))])
}

async fn set_retention(aws: &Clients, name: &str, days: Option<u32>, want: &LogGroupInputs) -> Result<(), ProviderError> {
    match days.and_then(|d| i32::try_from(d).ok()) {
        Some(days) => {
            aws.logs
                .put_retention_policy()
                .log_group_name(name)
                .retention_in_days(days)
                .send()
                .await
                .map_err(|e| aws_error("setting the log group's retention (PutRetentionPolicy)", e, |c| hint(c, want)))?;
        }
        None => {
            aws.logs
                .delete_retention_policy()
                .log_group_name(name)
                .send()
                .await
                .map_err(|e| aws_error("removing the log group's retention (DeleteRetentionPolicy)", e, |c| hint(c, want)))?;
        }
    }
    Ok(())
}

#[async_trait]
impl Kind for LogGroupKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = LogGroupInputs::from_props(inputs)?;
        let name = want.name.as_deref().unwrap_or_default();
        let tags = tags::wanted(urn, want.tags.as_ref());
        aws.once
            .logs
            .create_log_group()
            .log_group_name(name)
            .set_kms_key_id(want.kms_key_id.clone())
            .set_tags(Some(tags.clone().into_iter().collect()))
            .send()
            .await
            .map_err(|e| aws_error("creating the log group (CreateLogGroup)", e, |c| hint(c, &want)))?;
        finish(name, async {
            if want.retention_in_days.is_some() {
                set_retention(aws, name, want.retention_in_days, &want).await?;
            }
            // Read back for what AWS computes (the ARN, the creation time); the tags are
            // the ones the call just set, not read again.
            let group = found_after_create(describe(aws, name).await?)?;
            Ok(observe(urn, &group, tags.into_iter().collect()))
        })
        .await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let Some(group) = describe(aws, id).await? else { return Ok(None) };
        let Some(tags) = list_tags(aws, &arn_of(&group)).await? else { return Ok(None) };
        Ok(Some(observe(urn, &group, tags)))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (LogGroupInputs::from_props(old)?, LogGroupInputs::from_props(new)?);
        let Some(current) = describe(aws, id).await? else {
            return Err(ProviderError::not_found(format!("log group {id} is gone (deleted outside Cairn? run refresh)")));
        };
        if old.retention_in_days != want.retention_in_days {
            set_retention(aws, id, want.retention_in_days, &want).await?;
        }
        let arn = arn_of(&current);
        let Retag { remove, set } = Retag::new(urn, old.tags.as_ref(), want.tags.as_ref());
        if !remove.is_empty() {
            aws.logs
                .untag_resource()
                .resource_arn(&arn)
                .set_tag_keys(Some(remove))
                .send()
                .await
                .map_err(|e| aws_error("removing the log group's tags (UntagResource)", e, |c| hint(c, &want)))?;
        }
        if !set.is_empty() {
            aws.logs
                .tag_resource()
                .resource_arn(&arn)
                .set_tags(Some(set.into_iter().collect()))
                .send()
                .await
                .map_err(|e| aws_error("tagging the log group (TagResource)", e, |c| hint(c, &want)))?;
        }
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        let unknown = LogGroupInputs { name: Some(id.to_owned()), ..LogGroupInputs::default() };
        let deleted = aws.logs.delete_log_group().log_group_name(id).send().await;
        or_missing(deleted, MISSING, "deleting the log group (DeleteLogGroup)", |c| hint(c, &unknown))?;
        Ok(())
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        // The name it was created with narrows the listing; without it, every group.
        let prefix = LogGroupInputs::from_props(created_with).ok().and_then(|i| i.name);
        let mut groups = Vec::new();
        each_group(aws, prefix.as_deref(), |g| {
            groups.push(g.clone());
            true
        })
        .await?;
        let mut found = Vec::new();
        for g in groups {
            let Some(tags) = list_tags(aws, &arn_of(&g)).await? else { continue };
            if tags::is_tagged(urn, tags.iter().map(|(k, v)| (k, v))) {
                found.push(observe(urn, &g, tags));
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_arn_for_tagging_has_no_trailing_wildcard() {
        let g = Group::builder().arn("arn:aws:logs:us-east-1:1:log-group:app:*").build();
        assert_eq!(arn_of(&g), "arn:aws:logs:us-east-1:1:log-group:app");
        let g = Group::builder().arn("arn:aws:logs:us-east-1:1:log-group:app:*").log_group_arn("arn:aws:logs:us-east-1:1:log-group:app").build();
        assert_eq!(arn_of(&g), "arn:aws:logs:us-east-1:1:log-group:app");
    }
}
