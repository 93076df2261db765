//! `aws:elasticache:SubnetGroup`: the subnets of a VPC that cache clusters and
//! replication groups are placed in.
//!
//! The name forces a replacement; the subnets, the description and tags change in place
//! (`ModifyCacheSubnetGroup`). Names are lowercase: AWS stores them so.

use async_trait::async_trait;
use aws_sdk_elasticache::types::CacheSubnetGroup;
use cairn_sdk::schema::Default;
use cairn_sdk::{CheckFailure, Decl, Observed, Props, ProviderError, Tags, Urn};
use serde_json::Value;

use super::{check_id, check_strings, create_tags, is_tagged, observed_tags, retag, IdRules, DESCRIPTION};
use crate::error::{aws_error, no_hint, or_missing};
use crate::kind::{paginate, Clients, Kind};

cairn_sdk::resource! {
    /// A cache subnet group: `SubnetGroup::new("cache").subnet_ids([a.id(), b.id()])`.
    pub struct SubnetGroup {
        token: "aws:elasticache:SubnetGroup",
        schema: SUBNET_GROUP,
        inputs: SubnetGroupInputs,
        /// A declared cache subnet group's outputs.
        handle: SubnetGroupRef,
        validate: validate,
    }
    inputs {
        /// The physical name, at most 255 lowercase letters, digits or hyphens; by default
        /// `<logical name>-<suffix>`, new on each replacement (forces replacement).
        name: String = auto_name().forces_replacement(),
        /// What it is for; `Managed by Cairn` when unset. Changed in place.
        description: String = default(Default::Str(DESCRIPTION)),
        /// The subnets, all of one VPC; literals or subnets' `id()` outputs. Changed in place.
        subnet_ids: Vec<String> = required(),
        /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    outputs {
        /// The group ARN.
        arn: String,
        /// The VPC its subnets belong to.
        vpc_id: String,
    }
    echoes {
        /// The group name (its id), for a cluster's or replication group's
        /// `subnet_group_name`.
        name: String,
    }
}

const NAME: IdRules = IdRules { max: 255, strict: false };

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    check_id(decl, "name", NAME, out);
    check_strings(decl, "subnet_ids", "subnet ids", out);
    if let Some(v) = decl.value("subnet_ids") {
        if v.as_array().is_some_and(Vec::is_empty) {
            out.push(CheckFailure::new("subnet_ids", Some(v), "name at least one subnet"));
        }
    }
    if let Some(v) = decl.value("description") {
        if v.as_str().is_none_or(str::is_empty) {
            out.push(CheckFailure::new("description", Some(v), "be a non-empty string (AWS requires a description)"));
        }
    }
}

/// The subnet group's operations.
#[derive(Debug)]
pub(crate) struct SubnetGroupKind;

const MISSING: &[&str] = &["CacheSubnetGroupNotFoundFault"];

fn hint(code: &str, want: &SubnetGroupInputs) -> Option<String> {
    match code {
        "CacheSubnetGroupAlreadyExists" => Some(format!(
            "a cache subnet group named {} already exists; choose another name, or leave the name unset and Cairn will pick a unique one",
            want.name.as_deref().unwrap_or_default()
        )),
        "InvalidSubnet" => Some(format!(
            "a subnet of {:?} does not exist or is not usable (deleted outside Cairn? run refresh); check subnet_ids",
            want.subnet_ids.as_deref().unwrap_or_default()
        )),
        "SubnetInUse" => Some("a subnet being removed is still used by a cache cluster; move the cluster first".to_owned()),
        "CacheSubnetGroupInUse" => Some(
            "a cache cluster or replication group still uses it; Cairn deletes those it manages first, so one outside this stack uses it: delete or move that, then run again"
                .to_owned(),
        ),
        "CacheSubnetGroupQuotaExceeded" | "CacheSubnetQuotaExceededFault" => Some(
            "the account's quota of cache subnet groups (or of subnets per group) is used up; delete unused ones or ask AWS for a higher quota"
                .to_owned(),
        ),
        _ => None,
    }
}

/// The group named `name`, if it exists.
async fn describe(aws: &Clients, name: &str) -> Result<Option<CacheSubnetGroup>, ProviderError> {
    let got = aws.elasticache.describe_cache_subnet_groups().cache_subnet_group_name(name).send().await;
    Ok(or_missing(got, MISSING, "reading the subnet group", no_hint)?.and_then(|out| out.cache_subnet_groups().first().cloned()))
}

/// The group as the inputs and outputs Cairn records.
async fn observe(aws: &Clients, urn: &Urn, g: &CacheSubnetGroup) -> Result<Observed, ProviderError> {
    let name = g.cache_subnet_group_name().unwrap_or_default();
    let arn = g.arn().unwrap_or_default();
    let inputs = SubnetGroupInputs {
        name: Some(name.to_owned()),
        description: Some(g.cache_subnet_group_description().unwrap_or_default().to_owned()),
        subnet_ids: Some(g.subnets().iter().filter_map(|s| s.subnet_identifier()).map(str::to_owned).collect()),
        tags: if arn.is_empty() { None } else { observed_tags(aws, urn, arn).await? },
    };
    let outputs = [("arn", Value::from(arn)), ("vpc_id", Value::from(g.vpc_id().unwrap_or_default()))];
    Ok(Observed::new(name, inputs.to_props(), outputs))
}

#[async_trait]
impl Kind for SubnetGroupKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = SubnetGroupInputs::from_props(inputs)?;
        let name = want.name.as_deref().unwrap_or_default();
        aws.once
            .elasticache
            .create_cache_subnet_group()
            .cache_subnet_group_name(name)
            .cache_subnet_group_description(want.description.as_deref().unwrap_or(DESCRIPTION))
            .set_subnet_ids(want.subnet_ids.clone())
            .set_tags(Some(create_tags(urn, want.tags.as_ref())))
            .send()
            .await
            .map_err(|e| aws_error("creating the subnet group", e, |c| hint(c, &want)))?;
        self.read_created(aws, urn, name, inputs).await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        match describe(aws, id).await? {
            Some(g) => Ok(Some(observe(aws, urn, &g).await?)),
            None => Ok(None),
        }
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (SubnetGroupInputs::from_props(old)?, SubnetGroupInputs::from_props(new)?);
        let Some(current) = describe(aws, id).await? else {
            return Err(ProviderError::not_found(format!("subnet group {id} is gone (deleted outside Cairn? run refresh)")));
        };
        if old.subnet_ids != want.subnet_ids || old.description != want.description {
            aws.elasticache
                .modify_cache_subnet_group()
                .cache_subnet_group_name(id)
                .set_cache_subnet_group_description(want.description.clone())
                .set_subnet_ids(want.subnet_ids.clone())
                .send()
                .await
                .map_err(|e| aws_error("changing the subnet group (ModifyCacheSubnetGroup)", e, |c| hint(c, &want)))?;
        }
        retag(aws, urn, current.arn().unwrap_or_default(), old.tags.as_ref(), want.tags.as_ref()).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        let unknown = SubnetGroupInputs::default();
        let deleted = aws.elasticache.delete_cache_subnet_group().cache_subnet_group_name(id).send().await;
        or_missing(deleted, MISSING, "deleting the subnet group (DeleteCacheSubnetGroup)", |c| hint(c, &unknown))?;
        Ok(())
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, _created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let groups = paginate(|marker| async move {
            let page = aws
                .elasticache
                .describe_cache_subnet_groups()
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| aws_error("looking up subnet groups", e, no_hint))?;
            Ok((page.cache_subnet_groups().to_vec(), page.marker().map(str::to_owned)))
        })
        .await?;
        let mut found = Vec::new();
        for g in &groups {
            let Some(arn) = g.arn() else { continue };
            if is_tagged(aws, urn, arn).await? {
                found.push(observe(aws, urn, g).await?);
            }
        }
        Ok(found)
    }
}
