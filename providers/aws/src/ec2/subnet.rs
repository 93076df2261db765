//! `aws:ec2:Subnet`: a range of a VPC in one availability zone.
//!
//! The VPC, the CIDR block and the zone force a replacement; public IPs on launch and
//! tags change in place. Left unset, the zone is chosen by AWS and kept.

use async_trait::async_trait;
use aws_sdk_ec2::types::{AttributeBooleanValue, Filter, ResourceType as Ec2Type};
use cairn_sdk::schema::{Default, Property, ResourceType};
use cairn_sdk::{typed_handle, CheckFailure, Decl, Input, Observed, Props, ProviderError, Urn};
use serde_json::Value;

use super::{check_cidr, observed_tags, retag, tag_spec, tagged_with, urn_filter};
use crate::error::{aws_error, code};
use crate::kind::{finish, Clients, Kind};

/// The schema of `aws:ec2:Subnet`.
pub static SUBNET: ResourceType = ResourceType::new(
    "aws:ec2:Subnet",
    &[
        Property::input("vpc_id").required().forces_replacement(),
        Property::input("cidr_block").required().forces_replacement(),
        Property::optional_computed("availability_zone").forces_replacement(),
        Property::input("map_public_ip_on_launch").default(Default::Bool(false)),
        Property::input("tags"),
        Property::output("id"),
    ],
)
.with_validation(|decl: &Decl, out: &mut Vec<CheckFailure>| check_cidr(decl, "cidr_block", 16, 28, out));

/// A subnet: `Subnet::new("web-a").vpc_id(vpc.id()).cidr_block("10.0.1.0/24")`.
#[derive(Debug, Clone)]
pub struct Subnet(Decl);

typed_handle! {
    /// A declared subnet's outputs.
    pub struct SubnetRef {
        /// The subnet id, `subnet-...`.
        id: String,
        /// Its availability zone.
        availability_zone: String,
        /// Its CIDR block.
        cidr_block: String,
    }
}

impl Subnet {
    /// A subnet with logical name `name` (its `Name` tag).
    pub fn new(name: &str) -> Self {
        Subnet(Decl::new(&SUBNET, name))
    }

    /// The VPC (forces replacement).
    #[must_use]
    pub fn vpc_id(mut self, id: impl Into<Input<String>>) -> Self {
        self.0.set("vpc_id", id);
        self
    }

    /// The IPv4 range, /16 to /28, inside the VPC's (forces replacement).
    #[must_use]
    pub fn cidr_block(mut self, cidr: impl Into<Input<String>>) -> Self {
        self.0.set("cidr_block", cidr);
        self
    }

    /// The availability zone, e.g. `us-east-1a` (forces replacement).
    #[must_use]
    pub fn availability_zone(mut self, zone: impl Into<Input<String>>) -> Self {
        self.0.set("availability_zone", zone);
        self
    }

    /// Give instances launched here a public IP (public subnets).
    #[must_use]
    pub fn map_public_ip_on_launch(mut self, on: bool) -> Self {
        self.0.set("map_public_ip_on_launch", on);
        self
    }

    /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
    #[must_use]
    pub fn tags<K: Into<String>, V: Into<String>>(mut self, tags: impl IntoIterator<Item = (K, V)>) -> Self {
        self.0.set("tags", crate::tags::to_value(tags));
        self
    }
}

cairn_sdk::impl_resource!(Subnet => SubnetRef);

/// The subnet's operations.
#[derive(Debug)]
pub(crate) struct SubnetKind;

fn text<'a>(inputs: &'a Props, key: &str) -> &'a str {
    inputs.get(key).and_then(Value::as_str).unwrap_or_default()
}

fn hint(code: &str) -> Option<String> {
    match code {
        "InvalidVpcID.NotFound" => Some("its VPC does not exist (was it deleted outside Cairn? run refresh)".to_owned()),
        "DependencyViolation" => Some(
            "the subnet still has instances, interfaces or gateways in it; Cairn deletes what it manages first, so something outside this stack uses it: remove that, then run again"
                .to_owned(),
        ),
        _ => None,
    }
}

/// Names the subnet of the same VPC whose range overlaps `cidr`, for the conflict error.
async fn overlapping(aws: &Clients, vpc_id: &str, cidr: &str) -> Option<String> {
    let mine: ipnet::Ipv4Net = cidr.parse().ok()?;
    let out = aws.ec2.describe_subnets().filters(Filter::builder().name("vpc-id").values(vpc_id).build()).send().await.ok()?;
    out.subnets().iter().find_map(|s| {
        let theirs: ipnet::Ipv4Net = s.cidr_block()?.parse().ok()?;
        if !(mine.contains(&theirs) || theirs.contains(&mine)) {
            return None;
        }
        let name = s.tags().iter().find(|t| t.key() == Some("Name")).and_then(|t| t.value()).or(s.subnet_id())?;
        Some(format!("{name} ({theirs})"))
    })
}

async fn set_public_ips(aws: &Clients, id: &str, on: bool) -> Result<(), ProviderError> {
    aws.ec2
        .modify_subnet_attribute()
        .subnet_id(id)
        .map_public_ip_on_launch(AttributeBooleanValue::builder().value(on).build())
        .send()
        .await
        .map_err(|e| aws_error("changing public IPs on launch", e, hint))?;
    Ok(())
}

#[async_trait]
impl Kind for SubnetKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let (vpc, cidr) = (text(inputs, "vpc_id"), text(inputs, "cidr_block"));
        let zone = inputs.get("availability_zone").and_then(Value::as_str).map(str::to_owned);
        let created = aws
            .once
            .ec2
            .create_subnet()
            .vpc_id(vpc)
            .cidr_block(cidr)
            .set_availability_zone(zone)
            .tag_specifications(tag_spec(Ec2Type::Subnet, urn, inputs))
            .send()
            .await;
        let out = match created {
            Ok(out) => out,
            Err(e) if code(&e) == Some("InvalidSubnet.Conflict") => {
                let other = overlapping(aws, vpc, cidr).await.unwrap_or_else(|| "another subnet of the VPC".to_owned());
                return Err(ProviderError::failed(format!(
                    "CIDR {cidr} overlaps subnet {other}; give it a range no other subnet of the VPC uses"
                    )));
            }
            Err(e) if code(&e) == Some("InvalidSubnet.Range") => {
                return Err(ProviderError::failed(format!(
                    "CIDR {cidr} is not inside its VPC's range; pick a range within the VPC's CIDR block"
                    )))
            }
            Err(e) => return Err(aws_error("creating the subnet", e, hint)),
        };
        let id = out.subnet().and_then(|s| s.subnet_id()).unwrap_or_default().to_owned();
        finish(&id, async {
            if inputs.get("map_public_ip_on_launch").and_then(Value::as_bool) == Some(true) {
                set_public_ips(aws, &id, true).await?;
            }
            self.read_created(aws, urn, &id, inputs).await
        })
        .await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let out = match aws.ec2.describe_subnets().subnet_ids(id).send().await {
            Ok(out) => out,
            Err(e) if code(&e) == Some("InvalidSubnetID.NotFound") => return Ok(None),
            Err(e) => return Err(aws_error("reading the subnet", e, hint)),
        };
        let Some(s) = out.subnets().first() else { return Ok(None) };
        let mut inputs = Props::new();
        inputs.insert("vpc_id", Value::from(s.vpc_id().unwrap_or_default()));
        inputs.insert("cidr_block", Value::from(s.cidr_block().unwrap_or_default()));
        inputs.insert("availability_zone", Value::from(s.availability_zone().unwrap_or_default()));
        inputs.insert("map_public_ip_on_launch", Value::from(s.map_public_ip_on_launch().unwrap_or(false)));
        if let Some(t) = observed_tags(urn, s.tags()) {
            inputs.insert("tags", t);
        }
        let mut outputs = Props::new();
        outputs.insert("id", Value::from(id));
        outputs.insert("availability_zone", Value::from(s.availability_zone().unwrap_or_default()));
        Ok(Some(Observed { id: id.to_owned(), inputs, outputs }))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let public = |p: &Props| p.get("map_public_ip_on_launch").and_then(Value::as_bool);
        if let Some(on) = public(new).filter(|on| public(old) != Some(*on)) {
            set_public_ips(aws, id, on).await?;
        }
        retag(&aws.ec2, id, old, new).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        match aws.ec2.delete_subnet().subnet_id(id).send().await {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some("InvalidSubnetID.NotFound") => Ok(()),
            Err(e) => Err(aws_error("deleting the subnet", e, hint)),
        }
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn) -> Result<Vec<Observed>, ProviderError> {
        let out = aws.ec2.describe_subnets().filters(urn_filter(urn)).send().await.map_err(|e| aws_error("looking up subnets", e, hint))?;
        let mut found = Vec::new();
        for s in out.subnets().iter().filter(|s| tagged_with(s.tags(), urn)) {
            if let Some(id) = s.subnet_id() {
                found.extend(self.read(aws, urn, id, &Props::new()).await?);
            }
        }
        Ok(found)
    }
}
