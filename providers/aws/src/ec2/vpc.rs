//! `aws:ec2:Vpc`: a virtual network.
//!
//! The CIDR block forces a replacement; DNS support, DNS hostnames and tags change in
//! place.

use async_trait::async_trait;
use aws_sdk_ec2::types::{AttributeBooleanValue, ResourceType as Ec2Type, VpcAttributeName};
use cairn_sdk::schema::Default;
use cairn_sdk::{CheckFailure, Decl, Observed, Props, ProviderError, Tags, Urn};
use serde_json::Value;

use super::{check_cidr, observed_tags, retag, tag_spec, tagged_with, urn_filter};
use crate::error::{aws_error, or_missing};
use crate::kind::{finish, read_each, Clients, Kind};

cairn_sdk::resource! {
    /// A VPC: `Vpc::new("shop").cidr_block("10.0.0.0/16")`. Its logical name is its
    /// `Name` tag.
    pub struct Vpc {
        token: "aws:ec2:Vpc",
        schema: VPC,
        inputs: VpcInputs,
        /// A declared VPC's outputs.
        handle: VpcRef,
        validate: validate,
    }
    inputs {
        /// The IPv4 range, /16 to /28 (forces replacement).
        cidr_block: String = required().forces_replacement(),
        /// Amazon-provided DNS resolution (default on).
        enable_dns_support: bool = default(Default::Bool(true)),
        /// DNS hostnames for instances (default off; needs DNS support).
        enable_dns_hostnames: bool = default(Default::Bool(false)),
        /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    outputs {
        /// The VPC id, `vpc-...`.
        id: String,
    }
    echoes {
        /// Its CIDR block.
        cidr_block: String,
    }
}

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    check_cidr(decl, "cidr_block", 16, 28, out);
    let flag = |k| decl.value(k).and_then(Value::as_bool);
    if flag("enable_dns_hostnames") == Some(true) && flag("enable_dns_support") == Some(false) {
        out.push(CheckFailure::new("enable_dns_hostnames", decl.value("enable_dns_hostnames"), "be false while enable_dns_support is false (AWS needs DNS support for hostnames)"));
    }
}

/// The VPC's operations.
#[derive(Debug)]
pub(crate) struct VpcKind;

const MISSING: &[&str] = &["InvalidVpcID.NotFound"];

fn hint(code: &str) -> Option<String> {
    match code {
        "DependencyViolation" => Some(
            "the VPC still has subnets, gateways, security groups or interfaces in it; Cairn deletes what it manages first, so something outside this stack uses the VPC: remove that, then run again"
                .to_owned(),
        ),
        "VpcLimitExceeded" => Some("the account's VPC quota for this region is used up; delete unused VPCs or ask AWS for more".to_owned()),
        _ => None,
    }
}

async fn set_dns(aws: &Clients, id: &str, attr: VpcAttributeName, on: bool) -> Result<(), ProviderError> {
    let value = AttributeBooleanValue::builder().value(on).build();
    let req = aws.ec2.modify_vpc_attribute().vpc_id(id);
    let req = match attr {
        VpcAttributeName::EnableDnsHostnames => req.enable_dns_hostnames(value),
        _ => req.enable_dns_support(value),
    };
    req.send().await.map_err(|e| aws_error("changing the VPC's DNS settings", e, hint))?;
    Ok(())
}

/// One of the VPC's DNS settings (`None` if AWS gave no value); `None` outside when the
/// VPC was not found.
async fn get_dns(aws: &Clients, id: &str, attr: VpcAttributeName) -> Result<Option<Option<bool>>, ProviderError> {
    let got = aws.ec2.describe_vpc_attribute().vpc_id(id).attribute(attr.clone()).send().await;
    let Some(out) = or_missing(got, MISSING, "reading the VPC's DNS settings", hint)? else { return Ok(None) };
    Ok(Some(match attr {
        VpcAttributeName::EnableDnsHostnames => out.enable_dns_hostnames().and_then(|a| a.value()),
        _ => out.enable_dns_support().and_then(|a| a.value()),
    }))
}

#[async_trait]
impl Kind for VpcKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = VpcInputs::from_props(inputs)?;
        let tags = tag_spec(Ec2Type::Vpc, urn, want.tags.as_ref());
        let out = aws
            .once
            .ec2
            .create_vpc()
            .set_cidr_block(want.cidr_block.clone())
            .tag_specifications(tags.clone())
            .send()
            .await
            .map_err(|e| aws_error("creating the VPC", e, hint))?;
        let id = out.vpc().and_then(|v| v.vpc_id()).unwrap_or_default().to_owned();
        finish(&id, async {
            // AWS creates VPCs with DNS support on and hostnames off: change only what differs.
            if want.enable_dns_support == Some(false) {
                set_dns(aws, &id, VpcAttributeName::EnableDnsSupport, false).await?;
            }
            if want.enable_dns_hostnames == Some(true) {
                set_dns(aws, &id, VpcAttributeName::EnableDnsHostnames, true).await?;
            }
            // Nothing to read back: the answer holds the CIDR block, and the DNS settings
            // and tags are the ones just set. The VPC heads every branch of a network, so
            // this is three calls off the start of each.
            let inputs = VpcInputs {
                cidr_block: out.vpc().and_then(|v| v.cidr_block()).map(str::to_owned).or(want.cidr_block.clone()),
                enable_dns_support: Some(want.enable_dns_support.unwrap_or(true)),
                enable_dns_hostnames: Some(want.enable_dns_hostnames.unwrap_or(false)),
                tags: observed_tags(urn, tags.tags()),
            };
            Ok(Observed::new(&id, inputs.to_props(), [("id", Value::from(id.as_str()))]))
        })
        .await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        // The VPC and its two DNS attributes at once: three calls, one call's time.
        let (got, support, hostnames) = tokio::try_join!(
            async { or_missing(aws.ec2.describe_vpcs().vpc_ids(id).send().await, MISSING, "reading the VPC", hint) },
            get_dns(aws, id, VpcAttributeName::EnableDnsSupport),
            get_dns(aws, id, VpcAttributeName::EnableDnsHostnames),
        )?;
        let Some(vpc) = got.as_ref().and_then(|out| out.vpcs().first()) else { return Ok(None) };
        // The VPC is there, so a setting said to be missing is AWS not caught up yet (a
        // look-up right after an interrupted create): an error, not a setting unset.
        let (Some(enable_dns_support), Some(enable_dns_hostnames)) = (support, hostnames) else {
            return Err(ProviderError::failed(format!("VPC {id} was found but not its DNS settings; AWS may not have caught up yet, run again")));
        };
        let inputs = VpcInputs { cidr_block: vpc.cidr_block().map(str::to_owned), enable_dns_support, enable_dns_hostnames, tags: observed_tags(urn, vpc.tags()) };
        Ok(Some(Observed::new(id, inputs.to_props(), [("id", Value::from(id))])))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (VpcInputs::from_props(old)?, VpcInputs::from_props(new)?);
        // Hostnames need support: turn support on before hostnames, hostnames off before support.
        let (support, hostnames) = (want.enable_dns_support, want.enable_dns_hostnames);
        if support == Some(true) && old.enable_dns_support != support {
            set_dns(aws, id, VpcAttributeName::EnableDnsSupport, true).await?;
        }
        if let Some(on) = hostnames.filter(|h| old.enable_dns_hostnames != Some(*h)) {
            set_dns(aws, id, VpcAttributeName::EnableDnsHostnames, on).await?;
        }
        if support == Some(false) && old.enable_dns_support != support {
            set_dns(aws, id, VpcAttributeName::EnableDnsSupport, false).await?;
        }
        retag(&aws.ec2, urn, id, old.tags.as_ref(), want.tags.as_ref()).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        or_missing(aws.ec2.delete_vpc().vpc_id(id).send().await, MISSING, "deleting the VPC", hint)?;
        Ok(())
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, _created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let out = aws.ec2.describe_vpcs().filters(urn_filter(urn)).send().await.map_err(|e| aws_error("looking up VPCs", e, hint))?;
        let ids = out.vpcs().iter().filter(|v| tagged_with(v.tags(), urn)).filter_map(|v| v.vpc_id().map(str::to_owned)).collect();
        read_each(self, aws, urn, ids).await
    }
}
