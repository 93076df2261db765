//! `aws:ec2:Vpc`: a virtual network.
//!
//! The CIDR block forces a replacement; DNS support, DNS hostnames and tags change in
//! place.

use async_trait::async_trait;
use aws_sdk_ec2::types::{AttributeBooleanValue, ResourceType as Ec2Type, VpcAttributeName};
use cairn_sdk::schema::{Default, Property, ResourceType};
use cairn_sdk::{typed_handle, CheckFailure, Decl, Input, Observed, Props, ProviderError, Urn};
use serde_json::Value;

use super::{check_cidr, observed_tags, retag, tag_spec, tagged_with, urn_filter};
use crate::error::{aws_error, code};
use crate::kind::{finish, Clients, Kind};

/// The schema of `aws:ec2:Vpc`.
pub static VPC: ResourceType = ResourceType::new(
    "aws:ec2:Vpc",
    &[
        Property::input("cidr_block").required().forces_replacement(),
        Property::input("enable_dns_support").default(Default::Bool(true)),
        Property::input("enable_dns_hostnames").default(Default::Bool(false)),
        Property::input("tags"),
        Property::output("id"),
    ],
)
.with_validation(validate);

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    check_cidr(decl, "cidr_block", 16, 28, out);
    let flag = |k| decl.value(k).and_then(Value::as_bool);
    if flag("enable_dns_hostnames") == Some(true) && flag("enable_dns_support") == Some(false) {
        out.push(CheckFailure::new("enable_dns_hostnames", decl.value("enable_dns_hostnames"), "be false while enable_dns_support is false (AWS needs DNS support for hostnames)"));
    }
}

/// A VPC: `Vpc::new("shop").cidr_block("10.0.0.0/16")`.
#[derive(Debug, Clone)]
pub struct Vpc(Decl);

typed_handle! {
    /// A declared VPC's outputs.
    pub struct VpcRef {
        /// The VPC id, `vpc-...`.
        id: String,
        /// Its CIDR block.
        cidr_block: String,
    }
}

impl Vpc {
    /// A VPC with logical name `name` (its `Name` tag).
    pub fn new(name: &str) -> Self {
        Vpc(Decl::new(&VPC, name))
    }

    /// The IPv4 range, /16 to /28 (forces replacement).
    #[must_use]
    pub fn cidr_block(mut self, cidr: impl Into<Input<String>>) -> Self {
        self.0.set("cidr_block", cidr);
        self
    }

    /// Amazon-provided DNS resolution (default on).
    #[must_use]
    pub fn enable_dns_support(mut self, on: bool) -> Self {
        self.0.set("enable_dns_support", on);
        self
    }

    /// DNS hostnames for instances (default off; needs DNS support).
    #[must_use]
    pub fn enable_dns_hostnames(mut self, on: bool) -> Self {
        self.0.set("enable_dns_hostnames", on);
        self
    }

    /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
    #[must_use]
    pub fn tags<K: Into<String>, V: Into<String>>(mut self, tags: impl IntoIterator<Item = (K, V)>) -> Self {
        self.0.set("tags", crate::tags::to_value(tags));
        self
    }
}

cairn_sdk::impl_resource!(Vpc => VpcRef);

/// The VPC's operations.
#[derive(Debug)]
pub(crate) struct VpcKind;

fn flag(inputs: &Props, key: &str) -> Option<bool> {
    inputs.get(key).and_then(Value::as_bool)
}

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

async fn get_dns(aws: &Clients, id: &str, attr: VpcAttributeName) -> Result<Option<bool>, ProviderError> {
    let out = aws
        .ec2
        .describe_vpc_attribute()
        .vpc_id(id)
        .attribute(attr.clone())
        .send()
        .await
        .map_err(|e| aws_error("reading the VPC's DNS settings", e, hint))?;
    Ok(match attr {
        VpcAttributeName::EnableDnsHostnames => out.enable_dns_hostnames().and_then(|a| a.value()),
        _ => out.enable_dns_support().and_then(|a| a.value()),
    })
}

#[async_trait]
impl Kind for VpcKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let cidr = inputs.get("cidr_block").and_then(Value::as_str).unwrap_or_default();
        let out = aws
            .once
            .ec2
            .create_vpc()
            .cidr_block(cidr)
            .tag_specifications(tag_spec(Ec2Type::Vpc, urn, inputs))
            .send()
            .await
            .map_err(|e| aws_error("creating the VPC", e, hint))?;
        let id = out.vpc().and_then(|v| v.vpc_id()).unwrap_or_default().to_owned();
        finish(&id, async {
            // AWS creates VPCs with DNS support on and hostnames off: change only what differs.
            if flag(inputs, "enable_dns_support") == Some(false) {
                set_dns(aws, &id, VpcAttributeName::EnableDnsSupport, false).await?;
            }
            if flag(inputs, "enable_dns_hostnames") == Some(true) {
                set_dns(aws, &id, VpcAttributeName::EnableDnsHostnames, true).await?;
            }
            self.read_created(aws, urn, &id, inputs).await
        })
        .await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let out = match aws.ec2.describe_vpcs().vpc_ids(id).send().await {
            Ok(out) => out,
            Err(e) if code(&e) == Some("InvalidVpcID.NotFound") => return Ok(None),
            Err(e) => return Err(aws_error("reading the VPC", e, hint)),
        };
        let Some(vpc) = out.vpcs().first() else { return Ok(None) };
        let mut inputs = Props::new();
        inputs.insert("cidr_block", Value::from(vpc.cidr_block().unwrap_or_default()));
        if let Some(on) = get_dns(aws, id, VpcAttributeName::EnableDnsSupport).await? {
            inputs.insert("enable_dns_support", Value::from(on));
        }
        if let Some(on) = get_dns(aws, id, VpcAttributeName::EnableDnsHostnames).await? {
            inputs.insert("enable_dns_hostnames", Value::from(on));
        }
        if let Some(t) = observed_tags(urn, vpc.tags()) {
            inputs.insert("tags", t);
        }
        let mut outputs = Props::new();
        outputs.insert("id", Value::from(id));
        Ok(Some(Observed { id: id.to_owned(), inputs, outputs }))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        // Hostnames need support: turn support on before hostnames, hostnames off before support.
        let (support, hostnames) = (flag(new, "enable_dns_support"), flag(new, "enable_dns_hostnames"));
        if support == Some(true) && flag(old, "enable_dns_support") != support {
            set_dns(aws, id, VpcAttributeName::EnableDnsSupport, true).await?;
        }
        if let Some(on) = hostnames.filter(|h| flag(old, "enable_dns_hostnames") != Some(*h)) {
            set_dns(aws, id, VpcAttributeName::EnableDnsHostnames, on).await?;
        }
        if support == Some(false) && flag(old, "enable_dns_support") != support {
            set_dns(aws, id, VpcAttributeName::EnableDnsSupport, false).await?;
        }
        retag(&aws.ec2, id, old, new).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        match aws.ec2.delete_vpc().vpc_id(id).send().await {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some("InvalidVpcID.NotFound") => Ok(()),
            Err(e) => Err(aws_error("deleting the VPC", e, hint)),
        }
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn) -> Result<Vec<Observed>, ProviderError> {
        let out = aws.ec2.describe_vpcs().filters(urn_filter(urn)).send().await.map_err(|e| aws_error("looking up VPCs", e, hint))?;
        let mut found = Vec::new();
        for vpc in out.vpcs().iter().filter(|v| tagged_with(v.tags(), urn)) {
            if let Some(id) = vpc.vpc_id() {
                found.extend(self.read(aws, urn, id, &Props::new()).await?);
            }
        }
        Ok(found)
    }
}
