//! `aws:ec2:ElasticIp`: a static public IPv4 address, for a NAT gateway or an instance.
//!
//! Only tags change in place. Deleting releases the address, which is then gone for
//! good: replacing an Elastic IP gives a new address.

use async_trait::async_trait;
use aws_sdk_ec2::types::{DomainType, ResourceType as Ec2Type};
use cairn_sdk::schema::Default;
use cairn_sdk::{CheckFailure, Decl, Observed, Props, ProviderError, Tags, Urn};
use serde_json::Value;

use super::{observed_tags, retag, tag_spec, tagged_with, urn_filter};
use crate::error::{aws_error, or_missing};
use crate::kind::{finish, read_each, Clients, Kind};

cairn_sdk::resource! {
    /// An Elastic IP address in a VPC: `ElasticIp::new("nat")`, for
    /// `NatGateway::new("nat").allocation_id(eip.allocation_id())`. Its logical name is
    /// its `Name` tag; its domain is `vpc`.
    pub struct ElasticIp {
        token: "aws:ec2:ElasticIp",
        schema: ELASTIC_IP,
        inputs: ElasticIpInputs,
        /// A declared Elastic IP's outputs.
        handle: ElasticIpRef,
        validate: validate,
    }
    inputs {
        /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    by_hand {
        /// Always `vpc`: EC2-Classic addresses no longer exist. Recorded, so state says so;
        /// no setter.
        domain: String = default(Default::Str("vpc")).forces_replacement(),
    }
    outputs {
        /// The allocation id, `eipalloc-...` (its id).
        id: String,
        /// The allocation id, `eipalloc-...`, for a NAT gateway.
        allocation_id: String,
        /// The public IPv4 address.
        public_ip: String,
    }
}

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    if let Some(v) = decl.value("domain") {
        if v.as_str() != Some("vpc") {
            out.push(CheckFailure::new("domain", Some(v), "be \"vpc\" (EC2-Classic addresses no longer exist)"));
        }
    }
}

/// The Elastic IP's operations.
#[derive(Debug)]
pub(crate) struct ElasticIpKind;

const MISSING: &[&str] = &["InvalidAllocationID.NotFound"];

fn hint(code: &str) -> Option<String> {
    match code {
        "AddressLimitExceeded" => {
            Some("the account's Elastic IP quota for this region (5 by default) is used up; release unused addresses or ask AWS for more".to_owned())
        }
        "InvalidIPAddress.InUse" | "AuthFailure" => Some(
            "the address is still associated with an instance, interface or NAT gateway outside this stack; disassociate it there, then run again"
                .to_owned(),
        ),
        _ => None,
    }
}

#[async_trait]
impl Kind for ElasticIpKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = ElasticIpInputs::from_props(inputs)?;
        let tags = tag_spec(Ec2Type::ElasticIp, urn, want.tags.as_ref());
        let out = aws
            .once
            .ec2
            .allocate_address()
            .domain(DomainType::Vpc)
            .tag_specifications(tags.clone())
            .send()
            .await
            .map_err(|e| aws_error("allocating the Elastic IP", e, hint))?;
        let id = out.allocation_id().unwrap_or_default().to_owned();
        // Nothing to read back: the answer holds the address and its domain, and the tags
        // are the ones just set. The address is on the way to the NAT gateway.
        finish(&id, async {
            let inputs = ElasticIpInputs {
                domain: Some(out.domain().map_or("vpc", |d| d.as_str()).to_owned()),
                tags: observed_tags(urn, tags.tags()),
            };
            let public_ip = out.public_ip().ok_or_else(|| ProviderError::uncertain("the answer did not say the address"))?;
            let outputs = [("id", Value::from(id.as_str())), ("allocation_id", Value::from(id.as_str())), ("public_ip", Value::from(public_ip))];
            Ok(Observed::new(&id, inputs.to_props(), outputs))
        })
        .await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let Some(out) = or_missing(aws.ec2.describe_addresses().allocation_ids(id).send().await, MISSING, "reading the Elastic IP", hint)? else {
            return Ok(None);
        };
        let Some(a) = out.addresses().first() else { return Ok(None) };
        let inputs = ElasticIpInputs {
            domain: Some(a.domain().map_or("vpc", |d| d.as_str()).to_owned()),
            tags: observed_tags(urn, a.tags()),
        };
        let outputs = [("id", Value::from(id)), ("allocation_id", Value::from(id)), ("public_ip", Value::from(a.public_ip().unwrap_or_default()))];
        Ok(Some(Observed::new(id, inputs.to_props(), outputs)))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (ElasticIpInputs::from_props(old)?, ElasticIpInputs::from_props(new)?);
        retag(&aws.ec2, urn, id, old.tags.as_ref(), want.tags.as_ref()).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        or_missing(aws.ec2.release_address().allocation_id(id).send().await, MISSING, "releasing the Elastic IP", hint)?;
        Ok(())
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, _created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let out =
            aws.ec2.describe_addresses().filters(urn_filter(urn)).send().await.map_err(|e| aws_error("looking up Elastic IPs", e, hint))?;
        let ids = out.addresses().iter().filter(|a| tagged_with(a.tags(), urn)).filter_map(|a| a.allocation_id().map(str::to_owned)).collect();
        read_each(self, aws, urn, ids).await
    }
}
