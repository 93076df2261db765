//! `aws:elbv2:LoadBalancer`: an application load balancer in two or more subnets.
//!
//! The name and the scheme force a replacement; the subnets (`SetSubnets`), the security
//! groups (`SetSecurityGroups`), the IP address type (`SetIpAddressType`) and tags change
//! in place. Subnets and security groups are sets: their order does not matter.
//!
//! A create waits until the load balancer is `active` (AWS takes a few minutes), a
//! delete until it is gone: 10 minutes at most each by default (see
//! `CAIRN_AWS_WAIT_TIMEOUT`).

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_elasticloadbalancingv2::types::{IpAddressType, LoadBalancer as Lb, LoadBalancerSchemeEnum, LoadBalancerStateEnum, LoadBalancerTypeEnum};
use cairn_sdk::provider::{DiffRequest, DiffResult};
use cairn_sdk::schema::Default;
use cairn_sdk::{CheckFailure, Decl, Observed, Props, ProviderError, Tags, Urn};
use serde_json::Value;

use super::{canonical, change_error, check_name, check_one_of, check_strings, create_tags, declared_len, observed_tags, retag, set_diff, tagged_with};
use crate::error::{aws_error, no_hint, or_missing};
use crate::kind::{finish, read_each, Clients, Kind};
use crate::wait::{self, Poll};

cairn_sdk::resource! {
    /// An application load balancer:
    /// `LoadBalancer::new("web").subnet_ids([a.id(), b.id()]).security_group_ids([sg.id()])`.
    /// Point a Route 53 alias at its `dns_name()` and `zone_id()`.
    pub struct LoadBalancer {
        token: "aws:elbv2:LoadBalancer",
        schema: LOAD_BALANCER,
        inputs: LoadBalancerInputs,
        /// A declared load balancer's outputs.
        handle: LoadBalancerRef,
        validate: validate,
    }
    inputs {
        /// The physical name, at most 32 letters, digits or hyphens; by default
        /// `<logical name>-<suffix>`, new on each replacement (forces replacement).
        name: String = auto_name().forces_replacement(),
        /// `"internet-facing"` (the default) or `"internal"` (forces replacement).
        scheme: String = default(Default::Str(SCHEME_DEFAULT)).forces_replacement(),
        /// Its subnets, at least two, in different Availability Zones; literals or subnets'
        /// `id()` outputs. A set, changed in place.
        subnet_ids: Vec<String> = required(),
        /// Its security groups. A set, changed in place; unset, AWS gives it the VPC's
        /// default group.
        security_group_ids: Vec<String> = computed(),
        /// `"ipv4"` (the default), `"dualstack"` or `"dualstack-without-public-ipv4"`.
        /// Changed in place.
        ip_address_type: String = default(Default::Str("ipv4")),
        /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    outputs {
        /// The load balancer ARN (its id), for listeners.
        arn: String,
        /// Its DNS name, for a CNAME or a Route 53 alias.
        dns_name: String,
        /// Its canonical hosted zone id, for a Route 53 alias.
        zone_id: String,
    }
    echoes {
        /// The load balancer name.
        name: String,
    }
}

const SCHEME_DEFAULT: &str = "internet-facing";
const SCHEMES: &[&str] = &[SCHEME_DEFAULT, "internal"];
const IP_ADDRESS_TYPES: &[&str] = &["ipv4", "dualstack", "dualstack-without-public-ipv4"];
/// The properties that are sets.
const SETS: &[&str] = &["subnet_ids", "security_group_ids"];
/// The fewest subnets an application load balancer takes.
const MIN_SUBNETS: usize = 2;

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    check_name(decl, true, out);
    check_one_of(decl, "scheme", SCHEMES, out);
    check_one_of(decl, "ip_address_type", IP_ADDRESS_TYPES, out);
    check_strings(decl, "subnet_ids", "subnet ids", out);
    check_strings(decl, "security_group_ids", "security group ids", out);
    if declared_len(decl, "subnet_ids").is_some_and(|n| n < MIN_SUBNETS) {
        out.push(CheckFailure::new("subnet_ids", decl.value("subnet_ids"), TOO_FEW_SUBNETS));
    }
}

const TOO_FEW_SUBNETS: &str = "name at least two subnets, in two Availability Zones (an application load balancer needs two)";

/// The load balancer's operations.
#[derive(Debug)]
pub(crate) struct LoadBalancerKind;

const MISSING: &[&str] = &["LoadBalancerNotFound"];

/// How long to wait for a load balancer to be active or gone, unless
/// `CAIRN_AWS_WAIT_TIMEOUT` says otherwise.
const BOUND: Duration = Duration::from_secs(10 * 60);

/// Checks the subnets once every value is known, before any call.
fn check_subnets(want: &LoadBalancerInputs) -> Result<(), ProviderError> {
    if canonical(want.subnet_ids.as_deref()).len() < MIN_SUBNETS {
        return Err(ProviderError::failed(format!("subnet_ids must {TOO_FEW_SUBNETS}; got {:?}", want.subnet_ids.as_deref().unwrap_or_default())));
    }
    Ok(())
}

fn hint(code: &str, want: &LoadBalancerInputs) -> Option<String> {
    match code {
        "DuplicateLoadBalancerName" => Some(format!(
            "a load balancer named {} already exists; choose another name, or leave the name unset and Cairn will pick a unique one",
            want.name.as_deref().unwrap_or_default()
        )),
        "TooManyLoadBalancers" => {
            Some("the account's quota of load balancers is used up; delete load balancers you no longer need or ask AWS for a higher quota".to_owned())
        }
        "SubnetNotFound" | "InvalidSubnet" => Some(format!(
            "a subnet of {:?} does not exist or cannot be used (deleted outside Cairn? run refresh); check subnet_ids: at least two subnets of one VPC, one per Availability Zone",
            want.subnet_ids.as_deref().unwrap_or_default()
        )),
        "InvalidSecurityGroup" => Some(format!(
            "a security group of {:?} does not exist or is not in the load balancer's VPC; check security_group_ids",
            want.security_group_ids.as_deref().unwrap_or_default()
        )),
        "InvalidScheme" => Some(format!(
            "scheme {:?} cannot be used here (an internet-facing load balancer needs subnets of a VPC with an internet gateway); check scheme and subnet_ids",
            want.scheme.as_deref().unwrap_or_default()
        )),
        "AvailabilityZoneNotSupported" => Some("an Availability Zone of subnet_ids does not support load balancers; choose subnets in other zones".to_owned()),
        _ => None,
    }
}

fn delete_hint(code: &str) -> Option<String> {
    match code {
        "OperationNotPermitted" => Some(
            "the load balancer has deletion protection on; turn it off (attribute deletion_protection.enabled = false), then run again".to_owned(),
        ),
        "ResourceInUse" => Some("the load balancer is in use (by a VPC endpoint service?); remove that use, then run again".to_owned()),
        _ => None,
    }
}

/// The load balancer with ARN `arn`, if it exists.
async fn describe(aws: &Clients, arn: &str) -> Result<Option<Lb>, ProviderError> {
    let got = aws.elbv2.describe_load_balancers().load_balancer_arns(arn).send().await;
    let out = or_missing(got, MISSING, "reading the load balancer", no_hint)?;
    Ok(out.and_then(|o| o.load_balancers().iter().find(|lb| lb.load_balancer_arn() == Some(arn)).cloned()))
}

fn state(lb: &Lb) -> &str {
    lb.state().and_then(|s| s.code()).map_or("unknown", LoadBalancerStateEnum::as_str)
}

/// Waits until the new load balancer is active.
async fn wait_active(aws: &Clients, arn: &str) -> Result<(), ProviderError> {
    wait::until("active", BOUND, || async {
        // Just created: a describe may not see it yet.
        let Some(lb) = describe(aws, arn).await? else { return Ok(Poll::Waiting("not found yet".to_owned())) };
        match lb.state().and_then(|s| s.code()) {
            Some(LoadBalancerStateEnum::Active | LoadBalancerStateEnum::ActiveImpaired) => Ok(Poll::Done(())),
            Some(LoadBalancerStateEnum::Failed) => Err(ProviderError::failed(format!(
                "AWS could not provision the load balancer: {}; check subnet_ids and security_group_ids, then run again",
                lb.state().and_then(|s| s.reason()).unwrap_or("no reason given")
            ))),
            _ => Ok(Poll::Waiting(state(&lb).to_owned())),
        }
    })
    .await
}

/// The load balancer as the inputs and outputs Cairn records.
fn observe(lb: &Lb, tags: Option<Tags>) -> Observed {
    let arn = lb.load_balancer_arn().unwrap_or_default();
    let subnets: Vec<String> = lb.availability_zones().iter().filter_map(|z| z.subnet_id()).map(str::to_owned).collect();
    let groups = canonical(Some(lb.security_groups()));
    let inputs = LoadBalancerInputs {
        name: lb.load_balancer_name().map(str::to_owned),
        scheme: lb.scheme().map(|s| s.as_str().to_owned()),
        subnet_ids: Some(canonical(Some(&subnets))),
        security_group_ids: (!groups.is_empty()).then_some(groups),
        ip_address_type: lb.ip_address_type().map(|t| t.as_str().to_owned()),
        tags,
    };
    let outputs = [
        ("arn", Value::from(arn)),
        ("dns_name", Value::from(lb.dns_name().unwrap_or_default())),
        ("zone_id", Value::from(lb.canonical_hosted_zone_id().unwrap_or_default())),
    ];
    Observed::new(arn, inputs.to_props(), outputs)
}

#[async_trait]
impl Kind for LoadBalancerKind {
    fn diff(&self, req: &DiffRequest<'_>) -> DiffResult {
        set_diff(req, SETS)
    }

    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = LoadBalancerInputs::from_props(inputs)?;
        check_subnets(&want)?;
        let out = aws
            .once
            .elbv2
            .create_load_balancer()
            .name(want.name.as_deref().unwrap_or_default())
            .r#type(LoadBalancerTypeEnum::Application)
            .scheme(LoadBalancerSchemeEnum::from(want.scheme.as_deref().unwrap_or(SCHEME_DEFAULT)))
            .set_subnets(want.subnet_ids.clone())
            .set_security_groups(want.security_group_ids.clone())
            .set_ip_address_type(want.ip_address_type.as_deref().map(IpAddressType::from))
            .set_tags(Some(create_tags(urn, want.tags.as_ref())))
            .send()
            .await
            .map_err(|e| aws_error("creating the load balancer", e, |c| hint(c, &want)))?;
        let arn = out.load_balancers().first().and_then(|lb| lb.load_balancer_arn()).unwrap_or_default().to_owned();
        finish(&arn, async {
            wait_active(aws, &arn).await?;
            self.read_created(aws, urn, &arn, inputs).await
        })
        .await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let Some(lb) = describe(aws, id).await? else { return Ok(None) };
        let Some(tags) = observed_tags(aws, urn, id).await? else { return Ok(None) };
        Ok(Some(observe(&lb, tags)))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (LoadBalancerInputs::from_props(old)?, LoadBalancerInputs::from_props(new)?);
        check_subnets(&want)?;
        let gone = format!("load balancer {id}");
        if canonical(old.subnet_ids.as_deref()) != canonical(want.subnet_ids.as_deref()) {
            let call = aws.elbv2.set_subnets().load_balancer_arn(id).set_subnets(want.subnet_ids.clone());
            call.send().await.map_err(|e| change_error(e, MISSING, &gone, "changing the subnets (SetSubnets)", |c| hint(c, &want)))?;
        }
        // Unset security groups are AWS's to choose: left as they are.
        if want.security_group_ids.is_some() && canonical(old.security_group_ids.as_deref()) != canonical(want.security_group_ids.as_deref()) {
            let call = aws.elbv2.set_security_groups().load_balancer_arn(id).set_security_groups(want.security_group_ids.clone());
            call.send()
                .await
                .map_err(|e| change_error(e, MISSING, &gone, "changing the security groups (SetSecurityGroups)", |c| hint(c, &want)))?;
        }
        if let Some(kind) = want.ip_address_type.as_deref().filter(|_| old.ip_address_type != want.ip_address_type) {
            let call = aws.elbv2.set_ip_address_type().load_balancer_arn(id).ip_address_type(IpAddressType::from(kind));
            call.send()
                .await
                .map_err(|e| change_error(e, MISSING, &gone, "changing the IP address type (SetIpAddressType)", |c| hint(c, &want)))?;
        }
        retag(aws, urn, id, old.tags.as_ref(), want.tags.as_ref()).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        let asked = aws.elbv2.delete_load_balancer().load_balancer_arn(id).send().await;
        or_missing(asked, MISSING, "deleting the load balancer", delete_hint)?;
        wait::until("deleted", BOUND, || async {
            Ok(match describe(aws, id).await? {
                None => Poll::Done(()),
                Some(lb) => Poll::Waiting(state(&lb).to_owned()),
            })
        })
        .await
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, _created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let all = aws.elbv2.describe_load_balancers().into_paginator().items().send().try_collect().await;
        let all = all.map_err(|e| aws_error("looking up load balancers", e, no_hint))?;
        let arns: Vec<String> = all.iter().filter_map(|lb| lb.load_balancer_arn()).map(str::to_owned).collect();
        let ids = tagged_with(aws, urn, &arns).await?;
        read_each(self, aws, urn, ids).await
    }
}
