//! `aws:ec2:NatGateway`: outbound internet access for private subnets, through an
//! Elastic IP in a public subnet.
//!
//! The subnet and the Elastic IP force a replacement; tags change in place. AWS takes a
//! minute or more to make a NAT gateway available and to delete it: create and delete
//! wait for it, polling at once and then every few seconds, for up to 10 minutes (or
//! `CAIRN_AWS_WAIT_TIMEOUT` seconds). A gateway that does not get there in time fails
//! the step as uncertain, naming the state it is stuck in; the next run finds it again
//! (by its tags) and carries on. A gateway in state `deleted` or `failed` reads as gone.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ec2::types::{NatGateway as AwsNatGateway, NatGatewayState, ResourceType as Ec2Type};
use cairn_sdk::{CheckFailure, Decl, Observed, Props, ProviderError, Tags, Urn};
use serde_json::Value;

use super::{client_token, observed_tags, retag, tag_spec, tagged_with, urn_filter};
use crate::error::{aws_error, or_missing};
use crate::kind::{finish, Clients, Kind};
use crate::wait::{self, until, Poll};

/// How long create and delete wait for AWS, unless `CAIRN_AWS_WAIT_TIMEOUT` says
/// otherwise: NAT gateways usually take one to a few minutes.
const WAIT: Duration = Duration::from_secs(10 * 60);

cairn_sdk::resource! {
    /// A NAT gateway in a public subnet:
    /// `NatGateway::new("nat").subnet_id(public.id()).allocation_id(eip.allocation_id())`.
    /// Its logical name is its `Name` tag.
    ///
    /// The subnet's VPC needs an internet gateway. Creating and deleting wait for AWS (a
    /// minute or more), for up to 10 minutes (`CAIRN_AWS_WAIT_TIMEOUT` seconds if set).
    ///
    /// An Elastic IP serves one NAT gateway at a time: to replace a NAT gateway while
    /// keeping its address, declare it with `.delete_before_replace()`.
    pub struct NatGateway {
        token: "aws:ec2:NatGateway",
        schema: NAT_GATEWAY,
        inputs: NatGatewayInputs,
        /// A declared NAT gateway's outputs.
        handle: NatGatewayRef,
        validate: validate,
    }
    inputs {
        /// The public subnet it sits in (forces replacement).
        subnet_id: String = required().forces_replacement(),
        /// The Elastic IP it sends traffic from, `eip.allocation_id()` (forces replacement).
        allocation_id: String = required().forces_replacement(),
        /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    outputs {
        /// The NAT gateway id, `nat-...`, for routes.
        id: String,
    }
}

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    for (key, prefix, what) in
        [("subnet_id", "subnet-", "a subnet id (subnet-...)"), ("allocation_id", "eipalloc-", "an Elastic IP allocation id (eipalloc-...)")]
    {
        if let Some(v) = decl.value(key) {
            if !v.as_str().is_some_and(|s| s.starts_with(prefix)) {
                out.push(CheckFailure::new(key, Some(v), format!("be {what}, such as another resource's output")));
            }
        }
    }
}

/// The NAT gateway's operations.
#[derive(Debug)]
pub(crate) struct NatGatewayKind;

const MISSING: &[&str] = &["NatGatewayNotFound", "InvalidNatGatewayID.NotFound"];

fn hint(code: &str) -> Option<String> {
    match code {
        "InvalidSubnetID.NotFound" => Some("its subnet does not exist (was it deleted outside Cairn? run refresh)".to_owned()),
        "InvalidAllocationID.NotFound" | "InvalidElasticIpID.NotFound" => {
            Some("its Elastic IP does not exist (was it released outside Cairn? run refresh)".to_owned())
        }
        "Resource.AlreadyAssociated" => Some(
            "its Elastic IP is already used by another NAT gateway or instance; give each NAT gateway an ElasticIp of its own, or, to replace this NAT gateway keeping its address, declare it with .delete_before_replace()"
                .to_owned(),
        ),
        "Gateway.NotAttached" => Some(
            "a public NAT gateway needs an internet gateway attached to its subnet's VPC: declare an InternetGateway with that vpc_id".to_owned(),
        ),
        "NatGatewayLimitExceeded" => Some(
            "the zone's NAT gateway quota (5 by default) is used up; delete unused NAT gateways or ask AWS for more".to_owned(),
        ),
        _ => None,
    }
}

/// The gateway as AWS has it, in any state; `None` if AWS does not know it.
async fn describe(aws: &Clients, id: &str) -> Result<Option<AwsNatGateway>, ProviderError> {
    let answer = aws.ec2.describe_nat_gateways().nat_gateway_ids(id).send().await;
    Ok(or_missing(answer, MISSING, "reading the NAT gateway", hint)?.and_then(|out| out.nat_gateways().first().cloned()))
}

/// A gateway that is deleted or failed is gone: it does nothing, and AWS removes it.
fn is_gone(state: Option<&NatGatewayState>) -> bool {
    matches!(state, Some(NatGatewayState::Deleted | NatGatewayState::Failed))
}

fn observe(urn: &Urn, id: &str, nat: &AwsNatGateway) -> Observed {
    let inputs = NatGatewayInputs {
        subnet_id: Some(nat.subnet_id().unwrap_or_default().to_owned()),
        allocation_id: nat.nat_gateway_addresses().iter().find_map(|a| a.allocation_id()).map(str::to_owned),
        tags: observed_tags(urn, nat.tags()),
    };
    Observed::new(id, inputs.to_props(), [("id", Value::from(id))])
}

fn state_name(state: Option<&NatGatewayState>) -> String {
    state.map_or_else(|| "unknown".to_owned(), |s| s.as_str().to_owned())
}

#[async_trait]
impl Kind for NatGatewayKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = NatGatewayInputs::from_props(inputs)?;
        let out = aws
            .once
            .ec2
            .create_nat_gateway()
            .client_token(client_token(urn))
            .set_subnet_id(want.subnet_id)
            .set_allocation_id(want.allocation_id)
            .tag_specifications(tag_spec(Ec2Type::Natgateway, urn, want.tags.as_ref()))
            .send()
            .await
            .map_err(|e| aws_error("creating the NAT gateway", e, hint))?;
        let id = out.nat_gateway().and_then(|n| n.nat_gateway_id()).unwrap_or_default().to_owned();
        // The gateway exists: whatever fails while waiting for it, it is recorded.
        let available = until("available", WAIT, || async {
            let Some(nat) = describe(aws, &id).await? else {
                return Ok(Poll::Waiting("not yet visible".to_owned()));
            };
            match nat.state() {
                Some(NatGatewayState::Available) => Ok(Poll::Done(observe(urn, &id, &nat))),
                Some(NatGatewayState::Failed) => Err(ProviderError::failed(format!(
                    "NAT gateway {id} failed: {}: {}; AWS deletes it on its own. Check that the subnet is public (its VPC has an internet gateway) and the Elastic IP is free, then run again",
                    nat.failure_code().unwrap_or("no code"),
                    nat.failure_message().unwrap_or("no message"),
                ))),
                state => Ok(Poll::Waiting(state_name(state))),
            }
        });
        finish(&id, available).await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        Ok(describe(aws, id).await?.filter(|n| !is_gone(n.state())).map(|n| observe(urn, id, &n)))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (NatGatewayInputs::from_props(old)?, NatGatewayInputs::from_props(new)?);
        retag(&aws.ec2, urn, id, old.tags.as_ref(), want.tags.as_ref()).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        let asked = aws.ec2.delete_nat_gateway().nat_gateway_id(id).send().await;
        // Its Elastic IP and subnet are free only once it is deleted.
        wait::deleted(asked, MISSING, "deleting the NAT gateway", hint, WAIT, "deleting", || async {
            Ok(describe(aws, id).await?.filter(|nat| !is_gone(nat.state())).map(|nat| state_name(nat.state())))
        })
        .await
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, _created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let out =
            aws.ec2.describe_nat_gateways().filter(urn_filter(urn)).send().await.map_err(|e| aws_error("looking up NAT gateways", e, hint))?;
        Ok(out.nat_gateways().iter().filter(|n| tagged_with(n.tags(), urn) && !is_gone(n.state())).filter_map(|n| Some(observe(urn, n.nat_gateway_id()?, n))).collect())
    }
}
