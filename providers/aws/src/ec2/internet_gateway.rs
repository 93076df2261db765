//! `aws:ec2:InternetGateway`: a VPC's way to the internet, with its attachment.
//!
//! Moving the gateway to another VPC is done in place: it is detached, then attached.
//! Deleting detaches it first.

use async_trait::async_trait;
use aws_sdk_ec2::types::ResourceType as Ec2Type;
use cairn_sdk::schema::{Property, ResourceType};
use cairn_sdk::{typed_handle, Decl, Input, Observed, Props, ProviderError, Urn};
use serde_json::Value;

use super::{observed_tags, retag, tag_spec, tagged_with, urn_filter};
use crate::error::{aws_error, code};
use crate::kind::{finish, Clients, Kind};

/// The schema of `aws:ec2:InternetGateway`.
pub static INTERNET_GATEWAY: ResourceType =
    ResourceType::new("aws:ec2:InternetGateway", &[Property::input("vpc_id"), Property::input("tags"), Property::output("id")]);

/// An internet gateway: `InternetGateway::new("shop").vpc_id(vpc.id())`.
#[derive(Debug, Clone)]
pub struct InternetGateway(Decl);

typed_handle! {
    /// A declared internet gateway's outputs.
    pub struct InternetGatewayRef {
        /// The gateway id, `igw-...`, for routes.
        id: String,
    }
}

impl InternetGateway {
    /// An internet gateway with logical name `name` (its `Name` tag).
    pub fn new(name: &str) -> Self {
        InternetGateway(Decl::new(&INTERNET_GATEWAY, name))
    }

    /// The VPC it is attached to (changed in place).
    #[must_use]
    pub fn vpc_id(mut self, id: impl Into<Input<String>>) -> Self {
        self.0.set("vpc_id", id);
        self
    }

    /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
    #[must_use]
    pub fn tags<K: Into<String>, V: Into<String>>(mut self, tags: impl IntoIterator<Item = (K, V)>) -> Self {
        self.0.set("tags", crate::tags::to_value(tags));
        self
    }
}

cairn_sdk::impl_resource!(InternetGateway => InternetGatewayRef);

/// The gateway's operations.
#[derive(Debug)]
pub(crate) struct InternetGatewayKind;

const MISSING: &str = "InvalidInternetGatewayID.NotFound";

fn hint(code: &str) -> Option<String> {
    match code {
        "DependencyViolation" => Some(
            "the VPC still has public addresses mapped through the gateway; Cairn removes what it manages first, so something outside this stack uses it: remove that, then run again"
                .to_owned(),
        ),
        "Resource.AlreadyAssociated" => Some("the VPC already has another internet gateway; a VPC can have one".to_owned()),
        "InvalidVpcID.NotFound" => Some("its VPC does not exist (was it deleted outside Cairn? run refresh)".to_owned()),
        _ => None,
    }
}

async fn attach(aws: &Clients, id: &str, vpc: &str) -> Result<(), ProviderError> {
    aws.ec2
        .attach_internet_gateway()
        .internet_gateway_id(id)
        .vpc_id(vpc)
        .send()
        .await
        .map_err(|e| aws_error("attaching the gateway to its VPC", e, hint))?;
    Ok(())
}

async fn detach(aws: &Clients, id: &str, vpc: &str) -> Result<(), ProviderError> {
    match aws.ec2.detach_internet_gateway().internet_gateway_id(id).vpc_id(vpc).send().await {
        Ok(_) => Ok(()),
        // Already detached, or the VPC is gone: nothing to undo.
        Err(e) if matches!(code(&e), Some("Gateway.NotAttached" | "InvalidVpcID.NotFound" | MISSING)) => Ok(()),
        Err(e) => Err(aws_error("detaching the gateway from its VPC", e, hint)),
    }
}

fn vpc_of(inputs: &Props) -> Option<&str> {
    inputs.get("vpc_id").and_then(Value::as_str)
}

#[async_trait]
impl Kind for InternetGatewayKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let out = aws
            .once
            .ec2
            .create_internet_gateway()
            .tag_specifications(tag_spec(Ec2Type::InternetGateway, urn, inputs))
            .send()
            .await
            .map_err(|e| aws_error("creating the internet gateway", e, hint))?;
        let id = out.internet_gateway().and_then(|g| g.internet_gateway_id()).unwrap_or_default().to_owned();
        finish(&id, async {
            if let Some(vpc) = vpc_of(inputs) {
                attach(aws, &id, vpc).await?;
            }
            self.read_created(aws, urn, &id, inputs).await
        })
        .await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let out = match aws.ec2.describe_internet_gateways().internet_gateway_ids(id).send().await {
            Ok(out) => out,
            Err(e) if code(&e) == Some(MISSING) => return Ok(None),
            Err(e) => return Err(aws_error("reading the internet gateway", e, hint)),
        };
        let Some(g) = out.internet_gateways().first() else { return Ok(None) };
        let mut inputs = Props::new();
        if let Some(vpc) = g.attachments().iter().find_map(|a| a.vpc_id()) {
            inputs.insert("vpc_id", Value::from(vpc));
        }
        if let Some(t) = observed_tags(urn, g.tags()) {
            inputs.insert("tags", t);
        }
        let mut outputs = Props::new();
        outputs.insert("id", Value::from(id));
        Ok(Some(Observed { id: id.to_owned(), inputs, outputs }))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        if vpc_of(old) != vpc_of(new) {
            if let Some(vpc) = vpc_of(old) {
                detach(aws, id, vpc).await?;
            }
            if let Some(vpc) = vpc_of(new) {
                attach(aws, id, vpc).await?;
            }
        }
        retag(&aws.ec2, id, old, new).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, urn: &Urn, id: &str) -> Result<(), ProviderError> {
        // Detach from whatever VPC the cloud says, not only the one in state.
        if let Some(current) = self.read(aws, urn, id, &Props::new()).await? {
            if let Some(vpc) = vpc_of(&current.inputs) {
                detach(aws, id, vpc).await?;
            }
        }
        match aws.ec2.delete_internet_gateway().internet_gateway_id(id).send().await {
            Ok(_) => Ok(()),
            Err(e) if code(&e) == Some(MISSING) => Ok(()),
            Err(e) => Err(aws_error("deleting the internet gateway", e, hint)),
        }
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn) -> Result<Vec<Observed>, ProviderError> {
        let out = aws
            .ec2
            .describe_internet_gateways()
            .filters(urn_filter(urn))
            .send()
            .await
            .map_err(|e| aws_error("looking up internet gateways", e, hint))?;
        let mut found = Vec::new();
        for g in out.internet_gateways().iter().filter(|g| tagged_with(g.tags(), urn)) {
            if let Some(id) = g.internet_gateway_id() {
                found.extend(self.read(aws, urn, id, &Props::new()).await?);
            }
        }
        Ok(found)
    }
}
