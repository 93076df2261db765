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
use cairn_sdk::schema::{Property, ResourceType};
use cairn_sdk::{typed_handle, Decl, Input, Observed, Props, ProviderError, Urn};
use serde_json::Value;

use super::{client_token, observed_tags, retag, tag_spec, tagged_with, urn_filter};
use crate::error::{aws_error, code};
use crate::kind::{finish, Clients, Kind};
use crate::wait::{until, Poll};

/// How long create and delete wait for AWS, unless `CAIRN_AWS_WAIT_TIMEOUT` says
/// otherwise: NAT gateways usually take one to a few minutes.
const WAIT: Duration = Duration::from_secs(10 * 60);

/// The schema of `aws:ec2:NatGateway`.
pub static NAT_GATEWAY: ResourceType = ResourceType::new(
    "aws:ec2:NatGateway",
    &[
        Property::input("subnet_id").required().forces_replacement(),
        Property::input("allocation_id").required().forces_replacement(),
        Property::input("tags"),
        Property::output("id"),
    ],
)
.with_validation(|decl: &Decl, out: &mut Vec<cairn_sdk::CheckFailure>| {
    for (key, prefix, what) in
        [("subnet_id", "subnet-", "a subnet id (subnet-...)"), ("allocation_id", "eipalloc-", "an Elastic IP allocation id (eipalloc-...)")]
    {
        if let Some(v) = decl.value(key) {
            if !v.as_str().is_some_and(|s| s.starts_with(prefix)) {
                out.push(cairn_sdk::CheckFailure::new(key, Some(v), format!("be {what}, such as another resource's output")));
            }
        }
    }
});

/// A NAT gateway in a public subnet:
/// `NatGateway::new("nat").subnet_id(public.id()).allocation_id(eip.allocation_id())`.
///
/// The subnet's VPC needs an internet gateway. Creating and deleting wait for AWS (a
/// minute or more), for up to 10 minutes (`CAIRN_AWS_WAIT_TIMEOUT` seconds if set).
///
/// An Elastic IP serves one NAT gateway at a time: to replace a NAT gateway while
/// keeping its address, declare it with `.delete_before_replace()`.
#[derive(Debug, Clone)]
pub struct NatGateway(Decl);

typed_handle! {
    /// A declared NAT gateway's outputs.
    pub struct NatGatewayRef {
        /// The NAT gateway id, `nat-...`, for routes.
        id: String,
    }
}

impl NatGateway {
    /// A NAT gateway with logical name `name` (its `Name` tag).
    pub fn new(name: &str) -> Self {
        NatGateway(Decl::new(&NAT_GATEWAY, name))
    }

    /// The public subnet it sits in (forces replacement).
    #[must_use]
    pub fn subnet_id(mut self, id: impl Into<Input<String>>) -> Self {
        self.0.set("subnet_id", id);
        self
    }

    /// The Elastic IP it sends traffic from, `eip.allocation_id()` (forces replacement).
    #[must_use]
    pub fn allocation_id(mut self, id: impl Into<Input<String>>) -> Self {
        self.0.set("allocation_id", id);
        self
    }

    /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
    #[must_use]
    pub fn tags<K: Into<String>, V: Into<String>>(mut self, tags: impl IntoIterator<Item = (K, V)>) -> Self {
        self.0.set("tags", crate::tags::to_value(tags));
        self
    }
}

cairn_sdk::impl_resource!(NatGateway => NatGatewayRef);

/// The NAT gateway's operations.
#[derive(Debug)]
pub(crate) struct NatGatewayKind;

fn is_missing(code: Option<&str>) -> bool {
    matches!(code, Some("NatGatewayNotFound" | "InvalidNatGatewayID.NotFound"))
}

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
    match aws.ec2.describe_nat_gateways().nat_gateway_ids(id).send().await {
        Ok(out) => Ok(out.nat_gateways().first().cloned()),
        Err(e) if is_missing(code(&e)) => Ok(None),
        Err(e) => Err(aws_error("reading the NAT gateway", e, hint)),
    }
}

/// A gateway that is deleted or failed is gone: it does nothing, and AWS removes it.
fn is_gone(state: Option<&NatGatewayState>) -> bool {
    matches!(state, Some(NatGatewayState::Deleted | NatGatewayState::Failed))
}

fn observe(urn: &Urn, id: &str, nat: &AwsNatGateway) -> Observed {
    let mut inputs = Props::new();
    inputs.insert("subnet_id", Value::from(nat.subnet_id().unwrap_or_default()));
    if let Some(allocation) = nat.nat_gateway_addresses().iter().find_map(|a| a.allocation_id()) {
        inputs.insert("allocation_id", Value::from(allocation));
    }
    if let Some(t) = observed_tags(urn, nat.tags()) {
        inputs.insert("tags", t);
    }
    let mut outputs = Props::new();
    outputs.insert("id", Value::from(id));
    Observed { id: id.to_owned(), inputs, outputs }
}

fn state_name(state: Option<&NatGatewayState>) -> String {
    state.map_or_else(|| "unknown".to_owned(), |s| s.as_str().to_owned())
}

#[async_trait]
impl Kind for NatGatewayKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let text = |k: &str| inputs.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let out = aws
            .once
            .ec2
            .create_nat_gateway()
            .client_token(client_token(urn))
            .subnet_id(text("subnet_id"))
            .allocation_id(text("allocation_id"))
            .tag_specifications(tag_spec(Ec2Type::Natgateway, urn, inputs))
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
        retag(&aws.ec2, id, old, new).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        match aws.ec2.delete_nat_gateway().nat_gateway_id(id).send().await {
            Ok(_) => {}
            Err(e) if is_missing(code(&e)) => return Ok(()),
            Err(e) => return Err(aws_error("deleting the NAT gateway", e, hint)),
        }
        // Its Elastic IP and subnet are free only once it is deleted.
        until("deleted", WAIT, || async {
            Ok(match describe(aws, id).await? {
                Some(nat) if !is_gone(nat.state()) => Poll::Waiting(state_name(nat.state())),
                _ => Poll::Done(()),
            })
        })
        .await
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn) -> Result<Vec<Observed>, ProviderError> {
        let out =
            aws.ec2.describe_nat_gateways().filter(urn_filter(urn)).send().await.map_err(|e| aws_error("looking up NAT gateways", e, hint))?;
        Ok(out.nat_gateways().iter().filter(|n| tagged_with(n.tags(), urn) && !is_gone(n.state())).filter_map(|n| Some(observe(urn, n.nat_gateway_id()?, n))).collect())
    }
}
