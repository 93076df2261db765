//! Elastic Load Balancing v2: application load balancers, target groups and listeners.
//!
//! Each is known by its ARN, which is its id and its `arn()` output: a listener names
//! its load balancer and its target group by theirs, and an Auto Scaling group joins a
//! target group by its ARN (`Group::target_group_arns`).
//!
//! Load balancer and target group names are at most 32 letters, digits or hyphens, not
//! starting or ending with a hyphen (and a load balancer's not starting with
//! `internal-`). A generated name is the logical name, a hyphen and 7 hex digits, so a
//! resource left to be auto-named needs a logical name of at most 24 such characters
//! (checked before any call).
//!
//! All three carry Cairn's tags from their create call on, which is how an interrupted
//! create is found again.

pub mod listener;
pub mod load_balancer;
pub mod target_group;

pub use listener::{Listener, ListenerRef, LISTENER};
pub use load_balancer::{LoadBalancer, LoadBalancerRef, LOAD_BALANCER};
pub use target_group::{TargetGroup, TargetGroupRef, TARGET_GROUP};

use std::collections::HashMap;

use aws_sdk_elasticloadbalancingv2::types::Tag;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use cairn_sdk::{CheckFailure, Decl, ProviderError, Tags, Urn};
use serde_json::Value;

use crate::error::{aws_error, missing, no_hint};
use crate::kind::{Clients, Kinds};
use crate::tags;

pub(crate) fn register(kinds: &mut Kinds) {
    kinds.insert(LOAD_BALANCER.token, &load_balancer::LoadBalancerKind);
    kinds.insert(TARGET_GROUP.token, &target_group::TargetGroupKind);
    kinds.insert(LISTENER.token, &listener::ListenerKind);
}

/// The longest load balancer or target group name.
const NAME_MAX: usize = 32;

/// What ELBv2 answers when a load balancer, target group or listener does not exist.
const ANY_MISSING: &[&str] = &["LoadBalancerNotFound", "TargetGroupNotFound", "ListenerNotFound"];

/// The naming rules of a load balancer (`balancer`) or a target group.
fn name_ok(name: &str, balancer: bool) -> bool {
    (1..=NAME_MAX).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !(balancer && name.starts_with("internal-"))
}

fn name_rules(balancer: bool) -> String {
    let internal = if balancer { ", and not starting with 'internal-'" } else { "" };
    format!("1 to {NAME_MAX} letters, digits or hyphens, not starting or ending with a hyphen{internal}")
}

/// Checks an auto-named `name`: the one given, or else the one the engine will generate
/// from the logical name (`<logical name>-<7 hex digits>`). `balancer` adds the load
/// balancer's own rule.
pub(crate) fn check_name(decl: &Decl, balancer: bool, out: &mut Vec<CheckFailure>) {
    match decl.value("name") {
        Some(v) if !v.as_str().is_some_and(|s| name_ok(s, balancer)) => {
            out.push(CheckFailure::new("name", Some(v), format!("be {}", name_rules(balancer))));
        }
        // The suffix is 7 lowercase hex digits: checking one checks them all.
        None if decl.get("name").is_none() && !name_ok(&format!("{}-0000000", decl.name()), balancer) => {
            out.push(CheckFailure::new(
                "name",
                None,
                format!(
                    "be set, as the name generated from the logical name, '{}-<7 hex digits>', would not be {}; use a logical name of at most {} such characters, or set name",
                    decl.name(),
                    name_rules(balancer),
                    NAME_MAX - 8
                ),
            ));
        }
        _ => {}
    }
}

/// Checks that a port input, if literal, is a TCP port.
pub(crate) fn check_port(decl: &Decl, out: &mut Vec<CheckFailure>) {
    if let Some(v) = decl.value("port") {
        if !v.as_i64().is_some_and(|p| (1..=65_535).contains(&p)) {
            out.push(CheckFailure::new("port", Some(v), "be a TCP port, 1 to 65535"));
        }
    }
}

/// Checks that a string input, if literal, is one of `allowed`.
pub(crate) fn check_one_of(decl: &Decl, key: &str, allowed: &[&str], out: &mut Vec<CheckFailure>) {
    if let Some(v) = decl.value(key) {
        if !v.as_str().is_some_and(|s| allowed.contains(&s)) {
            let list: Vec<String> = allowed.iter().map(|a| format!("\"{a}\"")).collect();
            out.push(CheckFailure::new(key, Some(v), format!("be one of {}", list.join(", "))));
        }
    }
}

/// Checks that a list input, if literal, holds only strings.
pub(crate) fn check_strings(decl: &Decl, key: &str, what: &str, out: &mut Vec<CheckFailure>) {
    if let Some(v) = decl.value(key) {
        if !v.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
            out.push(CheckFailure::new(key, Some(v), format!("be a list of {what}")));
        }
    }
}

/// Checks that an input, if literal, looks like an ARN.
pub(crate) fn check_arn(decl: &Decl, key: &str, what: &str, out: &mut Vec<CheckFailure>) {
    if let Some(v) = decl.value(key) {
        if !v.as_str().is_some_and(|s| s.starts_with("arn:")) {
            out.push(CheckFailure::new(key, Some(v), format!("be the ARN of {what} (arn:...), usually its arn() output")));
        }
    }
}

/// The number of items of a list input, as far as the declaration shows it: `None`
/// when the whole list comes from another resource's output.
pub(crate) fn declared_len(decl: &Decl, key: &str) -> Option<usize> {
    match decl.get(key)? {
        cairn_sdk::Prop::Value(Value::Array(items)) => Some(items.len()),
        cairn_sdk::Prop::List(items) => Some(items.len()),
        _ => None,
    }
}

pub(crate) use crate::kind::{canonical, set_diff};

/// The tags to create a resource with ([`tags::wanted`]).
pub(crate) fn create_tags(urn: &Urn, user: Option<&Tags>) -> Vec<Tag> {
    tags::wanted(urn, user).into_iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

/// The most ARNs one `DescribeTags` call takes.
const TAGS_PER_CALL: usize = 20;

/// The tags of each resource in `arns` that still exists, by ARN. A resource deleted
/// meanwhile is left out (AWS refuses a whole call for one missing ARN, so such a call
/// is made again one ARN at a time).
pub(crate) async fn tags_of(aws: &Clients, arns: &[String]) -> Result<HashMap<String, Vec<(String, String)>>, ProviderError> {
    let mut found = HashMap::new();
    for chunk in arns.chunks(TAGS_PER_CALL) {
        match describe_tags(aws, chunk).await {
            Ok(tags) => found.extend(tags),
            Err(None) => {
                for arn in chunk {
                    match describe_tags(aws, std::slice::from_ref(arn)).await {
                        Ok(tags) => found.extend(tags),
                        Err(None) => {}
                        Err(Some(e)) => return Err(e),
                    }
                }
            }
            Err(Some(e)) => return Err(e),
        }
    }
    Ok(found)
}

/// One `DescribeTags` call; `Err(None)` when a resource named does not exist.
async fn describe_tags(aws: &Clients, arns: &[String]) -> Result<HashMap<String, Vec<(String, String)>>, Option<ProviderError>> {
    let out = match aws.elbv2.describe_tags().set_resource_arns(Some(arns.to_vec())).send().await {
        Ok(out) => out,
        Err(e) if missing(&e, ANY_MISSING) => return Err(None),
        Err(e) => return Err(Some(aws_error("reading tags", e, no_hint))),
    };
    Ok(out
        .tag_descriptions()
        .iter()
        .filter_map(|d| {
            let pairs = d.tags().iter().filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned()))).collect();
            Some((d.resource_arn()?.to_owned(), pairs))
        })
        .collect())
}

/// The ARNs among `arns` whose resource carries `urn`'s tag.
pub(crate) async fn tagged_with(aws: &Clients, urn: &Urn, arns: &[String]) -> Result<Vec<String>, ProviderError> {
    let tags = tags_of(aws, arns).await?;
    Ok(arns.iter().filter(|arn| tags.get(*arn).is_some_and(|t| tags::is_tagged(urn, t.iter().map(|(k, v)| (k, v))))).cloned().collect())
}

/// The resource's tags as the `tags` input holds them ([`tags::observed`]); `None` for
/// the resource too when it no longer exists.
pub(crate) async fn observed_tags(aws: &Clients, urn: &Urn, arn: &str) -> Result<Option<Option<Tags>>, ProviderError> {
    match describe_tags(aws, &[arn.to_owned()]).await {
        Ok(mut tags) => Ok(Some(tags::observed(urn, tags.remove(arn).unwrap_or_default()))),
        Err(None) => Ok(None),
        Err(Some(e)) => Err(e),
    }
}

/// Brings the tags of the resource with ARN `arn` from the user's `old` to `new`.
pub(crate) async fn retag(aws: &Clients, urn: &Urn, arn: &str, old: Option<&Tags>, new: Option<&Tags>) -> Result<(), ProviderError> {
    let change = tags::Retag::new(urn, old, new);
    if !change.remove.is_empty() {
        aws.elbv2
            .remove_tags()
            .resource_arns(arn)
            .set_tag_keys(Some(change.remove))
            .send()
            .await
            .map_err(|e| aws_error("removing tags", e, tag_hint))?;
    }
    if !change.set.is_empty() {
        let set = change.set.into_iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
        aws.elbv2.add_tags().resource_arns(arn).set_tags(Some(set)).send().await.map_err(|e| aws_error("tagging", e, tag_hint))?;
    }
    Ok(())
}

fn tag_hint(code: &str) -> Option<String> {
    (code == "TooManyTags").then(|| {
        "AWS allows at most 50 tags on a load balancer, target group or listener, and Cairn adds 3 of its own (Name, cairn:stack, cairn:urn); remove some from tags".to_owned()
    })
}

/// The error of a change to a resource that may have been deleted meanwhile: "gone" when
/// AWS says it does not exist (by `codes`), else as [`aws_error`] says.
pub(crate) fn change_error<E>(e: SdkError<E, HttpResponse>, codes: &[&str], gone: &str, action: &str, hint: impl Fn(&str) -> Option<String>) -> ProviderError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    if missing(&e, codes) {
        ProviderError::not_found(format!("{gone} is gone (deleted outside Cairn? run refresh)"))
    } else {
        aws_error(action, e, hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_32_character_rules() {
        assert!(name_ok("web-1", true));
        assert!(name_ok(&"a".repeat(32), true));
        assert!(!name_ok(&"a".repeat(33), true));
        assert!(!name_ok("-web", false) && !name_ok("web-", false) && !name_ok("web_1", false) && !name_ok("", false));
        assert!(!name_ok("internal-web", true) && name_ok("internal-web", false));
    }
}
