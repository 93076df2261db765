//! `aws:ec2:ElasticIp`: a static public IPv4 address, for a NAT gateway or an instance.
//!
//! Only tags change in place. Deleting releases the address, which is then gone for
//! good: replacing an Elastic IP gives a new address.

use async_trait::async_trait;
use aws_sdk_ec2::types::{DomainType, ResourceType as Ec2Type};
use cairn_sdk::schema::{Default, Property, ResourceType};
use cairn_sdk::{typed_handle, CheckFailure, Decl, Observed, Props, ProviderError, Urn};
use serde_json::Value;

use super::{observed_tags, retag, tag_spec, tagged_with, urn_filter};
use crate::error::{aws_error, code};
use crate::kind::{Clients, Kind};

/// The schema of `aws:ec2:ElasticIp`.
pub static ELASTIC_IP: ResourceType = ResourceType::new(
    "aws:ec2:ElasticIp",
    &[
        // Always `vpc`: EC2-Classic addresses no longer exist. Recorded, so state says so.
        Property::input("domain").default(Default::Str("vpc")).forces_replacement(),
        Property::input("tags"),
        Property::output("id"),
        Property::output("allocation_id"),
        Property::output("public_ip"),
    ],
)
.with_validation(validate);

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    if let Some(v) = decl.value("domain") {
        if v.as_str() != Some("vpc") {
            out.push(CheckFailure::new("domain", Some(v), "be \"vpc\" (EC2-Classic addresses no longer exist)"));
        }
    }
}

/// An Elastic IP address in a VPC: `ElasticIp::new("nat")`, for
/// `NatGateway::new("nat").allocation_id(eip.allocation_id())`.
#[derive(Debug, Clone)]
pub struct ElasticIp(Decl);

typed_handle! {
    /// A declared Elastic IP's outputs.
    pub struct ElasticIpRef {
        /// The allocation id, `eipalloc-...` (its id).
        id: String,
        /// The allocation id, `eipalloc-...`, for a NAT gateway.
        allocation_id: String,
        /// The public IPv4 address.
        public_ip: String,
    }
}

impl ElasticIp {
    /// An Elastic IP with logical name `name` (its `Name` tag). Its domain is `vpc`.
    pub fn new(name: &str) -> Self {
        ElasticIp(Decl::new(&ELASTIC_IP, name))
    }

    /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
    #[must_use]
    pub fn tags<K: Into<String>, V: Into<String>>(mut self, tags: impl IntoIterator<Item = (K, V)>) -> Self {
        self.0.set("tags", crate::tags::to_value(tags));
        self
    }
}

cairn_sdk::impl_resource!(ElasticIp => ElasticIpRef);

/// The Elastic IP's operations.
#[derive(Debug)]
pub(crate) struct ElasticIpKind;

const MISSING: &str = "InvalidAllocationID.NotFound";

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
        let out = aws
            .once
            .ec2
            .allocate_address()
            .domain(DomainType::Vpc)
            .tag_specifications(tag_spec(Ec2Type::ElasticIp, urn, inputs))
            .send()
            .await
            .map_err(|e| aws_error("allocating the Elastic IP", e, hint))?;
        let id = out.allocation_id().unwrap_or_default().to_owned();
        self.read_created(aws, urn, &id, inputs).await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let out = match aws.ec2.describe_addresses().allocation_ids(id).send().await {
            Ok(out) => out,
            Err(e) if code(&e) == Some(MISSING) => return Ok(None),
            Err(e) => return Err(aws_error("reading the Elastic IP", e, hint)),
        };
        let Some(a) = out.addresses().first() else { return Ok(None) };
        let mut inputs = Props::new();
        inputs.insert("domain", Value::from(a.domain().map_or("vpc", |d| d.as_str())));
        if let Some(t) = observed_tags(urn, a.tags()) {
            inputs.insert("tags", t);
        }
        let mut outputs = Props::new();
        outputs.insert("id", Value::from(id));
        outputs.insert("allocation_id", Value::from(id));
        outputs.insert("public_ip", Value::from(a.public_ip().unwrap_or_default()));
        Ok(Some(Observed { id: id.to_owned(), inputs, outputs }))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        retag(&aws.ec2, id, old, new).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        match aws.ec2.release_address().allocation_id(id).send().await {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some(MISSING) => Ok(()),
            Err(e) => Err(aws_error("releasing the Elastic IP", e, hint)),
        }
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn) -> Result<Vec<Observed>, ProviderError> {
        let out =
            aws.ec2.describe_addresses().filters(urn_filter(urn)).send().await.map_err(|e| aws_error("looking up Elastic IPs", e, hint))?;
        let mut found = Vec::new();
        for a in out.addresses().iter().filter(|a| tagged_with(a.tags(), urn)) {
            if let Some(id) = a.allocation_id() {
                found.extend(self.read(aws, urn, id, &Props::new()).await?);
            }
        }
        Ok(found)
    }
}
