//! `aws:ec2:Subnet`: a range of a VPC in one availability zone.
//!
//! The VPC, the CIDR block and the zone force a replacement; public IPs on launch and
//! tags change in place. Left unset, the zone is chosen by AWS and kept.

use async_trait::async_trait;
use aws_sdk_ec2::types::{AttributeBooleanValue, Filter, ResourceType as Ec2Type};
use cairn_sdk::schema::Default;
use cairn_sdk::{CheckFailure, Decl, Observed, Props, ProviderError, Tags, Urn};
use serde_json::Value;

use super::{check_cidr, observed_tags, retag, tag_spec, tagged_with, urn_filter};
use crate::error::{aws_error, code, or_missing};
use crate::kind::{finish, read_each, Clients, Kind};

cairn_sdk::resource! {
    /// A subnet: `Subnet::new("web-a").vpc_id(vpc.id()).cidr_block("10.0.1.0/24")`. Its
    /// logical name is its `Name` tag.
    pub struct Subnet {
        token: "aws:ec2:Subnet",
        schema: SUBNET,
        inputs: SubnetInputs,
        /// A declared subnet's outputs.
        handle: SubnetRef,
        validate: validate,
    }
    inputs {
        /// The VPC (forces replacement).
        vpc_id: String = required().forces_replacement(),
        /// The IPv4 range, /16 to /28, inside the VPC's (forces replacement).
        cidr_block: String = required().forces_replacement(),
        /// The availability zone, e.g. `us-east-1a`; AWS picks one when unset (forces
        /// replacement).
        availability_zone: String = computed().forces_replacement(),
        /// Give instances launched here a public IP (public subnets; default off).
        map_public_ip_on_launch: bool = default(Default::Bool(false)),
        /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    outputs {
        /// The subnet id, `subnet-...`.
        id: String,
    }
    echoes {
        /// Its availability zone.
        availability_zone: String,
        /// Its CIDR block.
        cidr_block: String,
    }
}

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    check_cidr(decl, "cidr_block", 16, 28, out);
}

/// The subnet's operations.
#[derive(Debug)]
pub(crate) struct SubnetKind;

const MISSING: &[&str] = &["InvalidSubnetID.NotFound"];

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

/// The subnet as AWS describes it.
fn observe(urn: &Urn, id: &str, s: &aws_sdk_ec2::types::Subnet) -> Observed {
    let zone = s.availability_zone().unwrap_or_default();
    let inputs = SubnetInputs {
        vpc_id: s.vpc_id().map(str::to_owned),
        cidr_block: s.cidr_block().map(str::to_owned),
        availability_zone: Some(zone.to_owned()),
        map_public_ip_on_launch: Some(s.map_public_ip_on_launch().unwrap_or(false)),
        tags: observed_tags(urn, s.tags()),
    };
    Observed::new(id, inputs.to_props(), [("id", Value::from(id)), ("availability_zone", Value::from(zone))])
}

#[async_trait]
impl Kind for SubnetKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = SubnetInputs::from_props(inputs)?;
        let (vpc, cidr) = (want.vpc_id.as_deref().unwrap_or_default(), want.cidr_block.as_deref().unwrap_or_default());
        let created = aws
            .once
            .ec2
            .create_subnet()
            .vpc_id(vpc)
            .cidr_block(cidr)
            .set_availability_zone(want.availability_zone.clone())
            .tag_specifications(tag_spec(Ec2Type::Subnet, urn, want.tags.as_ref()))
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
            if want.map_public_ip_on_launch == Some(true) {
                set_public_ips(aws, &id, true).await?;
            }
            // The answer is the new subnet, its zone and tags included; the one change
            // made since is known. Nothing is left to read back.
            match out.subnet() {
                Some(s) => {
                    let mut observed = observe(urn, &id, s);
                    if want.map_public_ip_on_launch == Some(true) {
                        observed.inputs.insert("map_public_ip_on_launch", Value::Bool(true));
                    }
                    Ok(observed)
                }
                None => self.read_created(aws, urn, &id, inputs).await,
            }
        })
        .await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let Some(out) = or_missing(aws.ec2.describe_subnets().subnet_ids(id).send().await, MISSING, "reading the subnet", hint)? else {
            return Ok(None);
        };
        Ok(out.subnets().first().map(|s| observe(urn, id, s)))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (SubnetInputs::from_props(old)?, SubnetInputs::from_props(new)?);
        if let Some(on) = want.map_public_ip_on_launch.filter(|on| old.map_public_ip_on_launch != Some(*on)) {
            set_public_ips(aws, id, on).await?;
        }
        retag(&aws.ec2, urn, id, old.tags.as_ref(), want.tags.as_ref()).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        or_missing(aws.ec2.delete_subnet().subnet_id(id).send().await, MISSING, "deleting the subnet", hint)?;
        Ok(())
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, _created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let out = aws.ec2.describe_subnets().filters(urn_filter(urn)).send().await.map_err(|e| aws_error("looking up subnets", e, hint))?;
        let ids = out.subnets().iter().filter(|s| tagged_with(s.tags(), urn)).filter_map(|s| s.subnet_id().map(str::to_owned)).collect();
        read_each(self, aws, urn, ids).await
    }
}
