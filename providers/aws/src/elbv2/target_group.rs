//! `aws:elbv2:TargetGroup`: the targets (instances or IP addresses) a load balancer's
//! listener forwards to, with their health check.
//!
//! The name, port, protocol, VPC and target type force a replacement; the health check
//! and tags change in place (`ModifyTargetGroup`). An Auto Scaling group registers its
//! instances when given the group's ARN (`Group::target_group_arns`).

use async_trait::async_trait;
use aws_sdk_elasticloadbalancingv2::types::{ProtocolEnum, TargetGroup as Tg, TargetTypeEnum};
use cairn_sdk::schema::Default;
use cairn_sdk::{CheckFailure, Decl, Observed, Props, ProviderError, Tags, Urn};
use serde_json::Value;

use super::{change_error, check_name, check_one_of, check_port, create_tags, observed_tags, retag, tagged_with};
use crate::error::{aws_error, no_hint, or_missing};
use crate::kind::{read_each, Clients, Kind};

cairn_sdk::resource! {
    /// A target group: `TargetGroup::new("web").port(8080).vpc_id(vpc.id())`, HTTP to
    /// instances, checked with `GET /`.
    pub struct TargetGroup {
        token: "aws:elbv2:TargetGroup",
        schema: TARGET_GROUP,
        inputs: TargetGroupInputs,
        /// A declared target group's outputs.
        handle: TargetGroupRef,
        validate: validate,
    }
    inputs {
        /// The physical name, at most 32 letters, digits or hyphens; by default
        /// `<logical name>-<suffix>`, new on each replacement (forces replacement).
        name: String = auto_name().forces_replacement(),
        /// The port targets receive traffic on (forces replacement).
        port: u16 = required().forces_replacement(),
        /// `"HTTP"` (the default) or `"HTTPS"`, to the targets (forces replacement).
        protocol: String = default(Default::Str("HTTP")).forces_replacement(),
        /// The VPC of the targets (forces replacement).
        vpc_id: String = required().forces_replacement(),
        /// `"instance"` (the default: instance ids, as an Auto Scaling group registers
        /// them) or `"ip"` (forces replacement).
        target_type: String = default(Default::Str("instance")).forces_replacement(),
        /// The path the health check requests, starting with `/` (default `/`). Changed
        /// in place.
        health_check_path: String = default(Default::Str("/")),
        /// Seconds between health checks of a target, 5 to 300, more than the check's
        /// timeout; AWS's default (30) when unset. Changed in place.
        health_check_interval_seconds: u32 = computed(),
        /// Successful checks in a row before a target counts as healthy, 2 to 10; AWS's
        /// default (5) when unset. Changed in place.
        healthy_threshold: u32 = computed(),
        /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    outputs {
        /// The target group ARN (its id), for a listener's default action and an Auto
        /// Scaling group's `target_group_arns`.
        arn: String,
    }
    echoes {
        /// The target group name.
        name: String,
    }
}

const PROTOCOLS: &[&str] = &["HTTP", "HTTPS"];
const TARGET_TYPES: &[&str] = &["instance", "ip"];

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    check_name(decl, false, out);
    check_port(decl, out);
    check_one_of(decl, "protocol", PROTOCOLS, out);
    check_one_of(decl, "target_type", TARGET_TYPES, out);
    if let Some(v) = decl.value("health_check_path") {
        if !v.as_str().is_some_and(|p| p.starts_with('/') && p.len() <= 1024) {
            out.push(CheckFailure::new("health_check_path", Some(v), "be a path starting with '/', at most 1024 characters"));
        }
    }
    let range = |key: &str, lo: i64, hi: i64, unit: &str, out: &mut Vec<CheckFailure>| {
        if let Some(v) = decl.value(key) {
            if !v.as_i64().is_some_and(|n| (lo..=hi).contains(&n)) {
                out.push(CheckFailure::new(key, Some(v), format!("be a whole number of {unit} from {lo} to {hi}")));
            }
        }
    };
    range("health_check_interval_seconds", 5, 300, "seconds", out);
    range("healthy_threshold", 2, 10, "checks", out);
}

/// The target group's operations.
#[derive(Debug)]
pub(crate) struct TargetGroupKind;

const MISSING: &[&str] = &["TargetGroupNotFound"];

fn hint(code: &str, want: &TargetGroupInputs) -> Option<String> {
    match code {
        "DuplicateTargetGroupName" => Some(format!(
            "a target group named {} already exists with other settings; choose another name, or leave the name unset and Cairn will pick a unique one",
            want.name.as_deref().unwrap_or_default()
        )),
        "TooManyTargetGroups" => Some(
            "the account's quota of target groups is used up; delete target groups you no longer need or ask AWS for a higher quota".to_owned(),
        ),
        _ => None,
    }
}

fn delete_hint(code: &str) -> Option<String> {
    (code == "ResourceInUse").then(|| {
        "the target group is still used by a listener or rule; Cairn deletes those it manages first, so one outside this stack uses it: remove that use, then run again"
            .to_owned()
    })
}

/// A count as AWS takes it.
fn int(n: Option<u32>) -> Option<i32> {
    n.and_then(|n| i32::try_from(n).ok())
}

/// A count as AWS gives it.
fn count(n: Option<i32>) -> Option<u32> {
    n.and_then(|n| u32::try_from(n).ok())
}

/// The target group with ARN `arn`, if it exists.
async fn describe(aws: &Clients, arn: &str) -> Result<Option<Tg>, ProviderError> {
    let got = aws.elbv2.describe_target_groups().target_group_arns(arn).send().await;
    let out = or_missing(got, MISSING, "reading the target group", no_hint)?;
    Ok(out.and_then(|o| o.target_groups().iter().find(|g| g.target_group_arn() == Some(arn)).cloned()))
}

/// The target group as the inputs and outputs Cairn records.
fn observe(g: &Tg, tags: Option<Tags>) -> Observed {
    let arn = g.target_group_arn().unwrap_or_default();
    let inputs = TargetGroupInputs {
        name: g.target_group_name().map(str::to_owned),
        port: g.port().and_then(|p| u16::try_from(p).ok()),
        protocol: g.protocol().map(|p| p.as_str().to_owned()),
        vpc_id: g.vpc_id().map(str::to_owned),
        target_type: g.target_type().map(|t| t.as_str().to_owned()),
        health_check_path: g.health_check_path().map(str::to_owned),
        health_check_interval_seconds: count(g.health_check_interval_seconds()),
        healthy_threshold: count(g.healthy_threshold_count()),
        tags,
    };
    Observed::new(arn, inputs.to_props(), [("arn", Value::from(arn))])
}

#[async_trait]
impl Kind for TargetGroupKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = TargetGroupInputs::from_props(inputs)?;
        let out = aws
            .once
            .elbv2
            .create_target_group()
            .name(want.name.as_deref().unwrap_or_default())
            .set_port(want.port.map(i32::from))
            .protocol(ProtocolEnum::from(want.protocol.as_deref().unwrap_or("HTTP")))
            .set_vpc_id(want.vpc_id.clone())
            .target_type(TargetTypeEnum::from(want.target_type.as_deref().unwrap_or("instance")))
            .set_health_check_path(want.health_check_path.clone())
            .set_health_check_interval_seconds(int(want.health_check_interval_seconds))
            .set_healthy_threshold_count(int(want.healthy_threshold))
            .set_tags(Some(create_tags(urn, want.tags.as_ref())))
            .send()
            .await
            .map_err(|e| aws_error("creating the target group", e, |c| hint(c, &want)))?;
        let arn = out.target_groups().first().and_then(|g| g.target_group_arn()).unwrap_or_default().to_owned();
        self.read_created(aws, urn, &arn, inputs).await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let Some(g) = describe(aws, id).await? else { return Ok(None) };
        let Some(tags) = observed_tags(aws, urn, id).await? else { return Ok(None) };
        Ok(Some(observe(&g, tags)))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (TargetGroupInputs::from_props(old)?, TargetGroupInputs::from_props(new)?);
        // Unset counts are AWS's: left as they are.
        let path = want.health_check_path.clone().filter(|_| old.health_check_path != want.health_check_path);
        let interval = int(want.health_check_interval_seconds.filter(|_| old.health_check_interval_seconds != want.health_check_interval_seconds));
        let healthy = int(want.healthy_threshold.filter(|_| old.healthy_threshold != want.healthy_threshold));
        if path.is_some() || interval.is_some() || healthy.is_some() {
            aws.elbv2
                .modify_target_group()
                .target_group_arn(id)
                .set_health_check_path(path)
                .set_health_check_interval_seconds(interval)
                .set_healthy_threshold_count(healthy)
                .send()
                .await
                .map_err(|e| change_error(e, MISSING, &format!("target group {id}"), "changing the health check (ModifyTargetGroup)", |c| hint(c, &want)))?;
        }
        retag(aws, urn, id, old.tags.as_ref(), want.tags.as_ref()).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        let asked = aws.elbv2.delete_target_group().target_group_arn(id).send().await;
        or_missing(asked, MISSING, "deleting the target group", delete_hint)?;
        Ok(())
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, _created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let all = aws.elbv2.describe_target_groups().into_paginator().items().send().try_collect().await;
        let all = all.map_err(|e| aws_error("looking up target groups", e, no_hint))?;
        let arns: Vec<String> = all.iter().filter_map(|g| g.target_group_arn()).map(str::to_owned).collect();
        let ids = tagged_with(aws, urn, &arns).await?;
        read_each(self, aws, urn, ids).await
    }
}
