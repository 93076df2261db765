//! `aws:ec2:InternetGateway`: a VPC's way to the internet, with its attachment.
//!
//! Moving the gateway to another VPC is done in place: it is detached, then attached.
//! Deleting detaches it first.

use async_trait::async_trait;
use aws_sdk_ec2::types::ResourceType as Ec2Type;
use cairn_sdk::{Observed, Props, ProviderError, Tags, Urn};
use serde_json::Value;

use super::{observed_tags, retag, tag_spec, tagged_with, urn_filter};
use crate::error::{aws_error, code, missing, or_missing};
use crate::kind::{finish, read_each, Clients, Kind};

cairn_sdk::resource! {
    /// An internet gateway: `InternetGateway::new("shop").vpc_id(vpc.id())`. Its logical
    /// name is its `Name` tag.
    pub struct InternetGateway {
        token: "aws:ec2:InternetGateway",
        schema: INTERNET_GATEWAY,
        inputs: InternetGatewayInputs,
        /// A declared internet gateway's outputs.
        handle: InternetGatewayRef,
    }
    inputs {
        /// The VPC it is attached to (changed in place).
        vpc_id: String,
        /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    outputs {
        /// The gateway id, `igw-...`, for routes.
        id: String,
    }
}

/// The gateway's operations.
#[derive(Debug)]
pub(crate) struct InternetGatewayKind;

const MISSING: &[&str] = &["InvalidInternetGatewayID.NotFound"];

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
    let Err(e) = aws.ec2.attach_internet_gateway().internet_gateway_id(id).vpc_id(vpc).send().await else { return Ok(()) };
    // Refused as attached already: done if this gateway is attached to this VPC (the SDK
    // sent the attach again after its answer was lost). If the VPC has another gateway,
    // the refusal stands.
    if code(&e) == Some("Resource.AlreadyAssociated") {
        let answer = aws.ec2.describe_internet_gateways().internet_gateway_ids(id).send().await;
        let gateway = or_missing(answer, MISSING, "reading the internet gateway", hint)?;
        let attachments = gateway.iter().flat_map(|out| out.internet_gateways()).flat_map(|g| g.attachments());
        if attachments.into_iter().any(|a| a.vpc_id() == Some(vpc)) {
            return Ok(());
        }
    }
    Err(aws_error("attaching the gateway to its VPC", e, hint))
}

async fn detach(aws: &Clients, id: &str, vpc: &str) -> Result<(), ProviderError> {
    match aws.ec2.detach_internet_gateway().internet_gateway_id(id).vpc_id(vpc).send().await {
        Ok(_) => Ok(()),
        // Already detached, or the VPC is gone: nothing to undo.
        Err(e) if missing(&e, &["Gateway.NotAttached", "InvalidVpcID.NotFound"]) || missing(&e, MISSING) => Ok(()),
        Err(e) => Err(aws_error("detaching the gateway from its VPC", e, hint)),
    }
}

#[async_trait]
impl Kind for InternetGatewayKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = InternetGatewayInputs::from_props(inputs)?;
        let tags = tag_spec(Ec2Type::InternetGateway, urn, want.tags.as_ref());
        let out = aws
            .once
            .ec2
            .create_internet_gateway()
            .tag_specifications(tags.clone())
            .send()
            .await
            .map_err(|e| aws_error("creating the internet gateway", e, hint))?;
        let id = out.internet_gateway().and_then(|g| g.internet_gateway_id()).unwrap_or_default().to_owned();
        finish(&id, async {
            if let Some(vpc) = &want.vpc_id {
                attach(aws, &id, vpc).await?;
            }
            // Nothing to read back: attached as asked, tagged as sent. The gateway is on
            // the way to the public routes and the NAT gateway.
            let inputs = InternetGatewayInputs { vpc_id: want.vpc_id.clone(), tags: observed_tags(urn, tags.tags()) };
            Ok(Observed::new(&id, inputs.to_props(), [("id", Value::from(id.as_str()))]))
        })
        .await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let answer = aws.ec2.describe_internet_gateways().internet_gateway_ids(id).send().await;
        let Some(out) = or_missing(answer, MISSING, "reading the internet gateway", hint)? else { return Ok(None) };
        let Some(g) = out.internet_gateways().first() else { return Ok(None) };
        let inputs = InternetGatewayInputs {
            vpc_id: g.attachments().iter().find_map(|a| a.vpc_id()).map(str::to_owned),
            tags: observed_tags(urn, g.tags()),
        };
        Ok(Some(Observed::new(id, inputs.to_props(), [("id", Value::from(id))])))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (InternetGatewayInputs::from_props(old)?, InternetGatewayInputs::from_props(new)?);
        if old.vpc_id != want.vpc_id {
            if let Some(vpc) = &old.vpc_id {
                detach(aws, id, vpc).await?;
            }
            if let Some(vpc) = &want.vpc_id {
                attach(aws, id, vpc).await?;
            }
        }
        retag(&aws.ec2, urn, id, old.tags.as_ref(), want.tags.as_ref()).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, urn: &Urn, id: &str) -> Result<(), ProviderError> {
        // Detach from whatever VPC the cloud says, not only the one in state.
        if let Some(current) = self.read(aws, urn, id, &Props::new()).await? {
            if let Some(vpc) = InternetGatewayInputs::from_props(&current.inputs)?.vpc_id {
                detach(aws, id, &vpc).await?;
            }
        }
        let answer = aws.ec2.delete_internet_gateway().internet_gateway_id(id).send().await;
        or_missing(answer, MISSING, "deleting the internet gateway", hint)?;
        Ok(())
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, _created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let out = aws
            .ec2
            .describe_internet_gateways()
            .filters(urn_filter(urn))
            .send()
            .await
            .map_err(|e| aws_error("looking up internet gateways", e, hint))?;
        let ids = out.internet_gateways().iter().filter(|g| tagged_with(g.tags(), urn)).filter_map(|g| g.internet_gateway_id().map(str::to_owned));
        read_each(self, aws, urn, ids.collect()).await
    }
}
