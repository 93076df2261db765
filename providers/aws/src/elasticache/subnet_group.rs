//! `aws:elasticache:SubnetGroup`: the subnets of a VPC that cache clusters and
//! replication groups are placed in.
//!
//! The name forces a replacement; the subnets, the description and tags change in place
//! (`ModifyCacheSubnetGroup`). Names are lowercase: AWS stores them so.

use async_trait::async_trait;
use aws_sdk_elasticache::types::CacheSubnetGroup;
use cairn_sdk::schema::{Default, Property, ResourceType};
use cairn_sdk::{typed_handle, CheckFailure, Decl, Input, Observed, Props, ProviderError, Urn};
use serde_json::Value;

use super::{check_id, check_strings, create_tags, is_tagged, observed_tags, retag, strings, text, IdRules, DESCRIPTION};
use crate::error::aws_error;
use crate::kind::{Clients, Kind};
use crate::tags;

/// The schema of `aws:elasticache:SubnetGroup`.
pub static SUBNET_GROUP: ResourceType = ResourceType::new(
    "aws:elasticache:SubnetGroup",
    &[
        Property::input("name").auto_name().forces_replacement(),
        Property::input("description").default(Default::Str(DESCRIPTION)),
        Property::input("subnet_ids").required(),
        Property::input("tags"),
        Property::output("arn"),
        Property::output("vpc_id"),
    ],
)
.with_validation(validate);

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

/// A cache subnet group: `SubnetGroup::new("cache").subnet_ids([a.id(), b.id()])`.
#[derive(Debug, Clone)]
pub struct SubnetGroup(Decl);

typed_handle! {
    /// A declared cache subnet group's outputs.
    pub struct SubnetGroupRef {
        /// The group name (its id), for a cluster's or replication group's
        /// `subnet_group_name`.
        name: String,
        /// The group ARN.
        arn: String,
        /// The VPC its subnets belong to.
        vpc_id: String,
    }
}

impl SubnetGroup {
    /// A subnet group with logical name `name`.
    pub fn new(name: &str) -> Self {
        SubnetGroup(Decl::new(&SUBNET_GROUP, name))
    }

    /// The physical name, at most 255 lowercase letters, digits or hyphens; by default
    /// `<logical name>-<suffix>`, new on each replacement (forces replacement).
    #[must_use]
    pub fn name(mut self, name: impl Into<Input<String>>) -> Self {
        self.0.set("name", name);
        self
    }

    /// What it is for; `Managed by Cairn` when unset. Changed in place.
    #[must_use]
    pub fn description(mut self, description: impl Into<Input<String>>) -> Self {
        self.0.set("description", description);
        self
    }

    /// The subnets, all of one VPC; literals or subnets' `id()` outputs. Changed in place.
    #[must_use]
    pub fn subnet_ids(mut self, ids: impl Into<Input<Vec<String>>>) -> Self {
        self.0.set("subnet_ids", ids);
        self
    }

    /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
    #[must_use]
    pub fn tags<K: Into<String>, V: Into<String>>(mut self, tags: impl IntoIterator<Item = (K, V)>) -> Self {
        self.0.set("tags", tags::to_value(tags));
        self
    }
}

cairn_sdk::impl_resource!(SubnetGroup => SubnetGroupRef);

/// The subnet group's operations.
#[derive(Debug)]
pub(crate) struct SubnetGroupKind;

fn hint(inputs: &Props) -> impl Fn(&str) -> Option<String> + '_ {
    move |code| match code {
        "CacheSubnetGroupAlreadyExists" => Some(format!(
            "a cache subnet group named {} already exists; choose another name, or leave the name unset and Cairn will pick a unique one",
            text(inputs, "name").unwrap_or_default()
        )),
        "InvalidSubnet" => Some(format!(
            "a subnet of {:?} does not exist or is not usable (deleted outside Cairn? run refresh); check subnet_ids",
            strings(inputs, "subnet_ids").unwrap_or_default()
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
    match aws.elasticache.describe_cache_subnet_groups().cache_subnet_group_name(name).send().await {
        Ok(out) => Ok(out.cache_subnet_groups().first().cloned()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_cache_subnet_group_not_found_fault()) => Ok(None),
        Err(e) => Err(aws_error("reading the subnet group", e, |_| None)),
    }
}

/// The group as the inputs and outputs Cairn records.
async fn observe(aws: &Clients, urn: &Urn, g: &CacheSubnetGroup) -> Result<Observed, ProviderError> {
    let name = g.cache_subnet_group_name().unwrap_or_default();
    let arn = g.arn().unwrap_or_default();
    let mut inputs = Props::new();
    inputs.insert("name", Value::from(name));
    inputs.insert("description", Value::from(g.cache_subnet_group_description().unwrap_or_default()));
    let subnets: Vec<Value> = g.subnets().iter().filter_map(|s| s.subnet_identifier()).map(Value::from).collect();
    inputs.insert("subnet_ids", Value::Array(subnets));
    if !arn.is_empty() {
        if let Some(t) = observed_tags(aws, urn, arn).await? {
            inputs.insert("tags", t);
        }
    }
    let mut outputs = Props::new();
    outputs.insert("arn", Value::from(arn));
    outputs.insert("vpc_id", Value::from(g.vpc_id().unwrap_or_default()));
    Ok(Observed { id: name.to_owned(), inputs, outputs })
}

#[async_trait]
impl Kind for SubnetGroupKind {
    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let name = text(inputs, "name").unwrap_or_default();
        aws.once
            .elasticache
            .create_cache_subnet_group()
            .cache_subnet_group_name(name)
            .cache_subnet_group_description(text(inputs, "description").unwrap_or(DESCRIPTION))
            .set_subnet_ids(strings(inputs, "subnet_ids"))
            .set_tags(Some(create_tags(urn, inputs)))
            .send()
            .await
            .map_err(|e| aws_error("creating the subnet group", e, hint(inputs)))?;
        self.read_created(aws, urn, name, inputs).await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, _recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        match describe(aws, id).await? {
            Some(g) => Ok(Some(observe(aws, urn, &g).await?)),
            None => Ok(None),
        }
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let Some(current) = describe(aws, id).await? else {
            return Err(ProviderError::not_found(format!("subnet group {id} is gone (deleted outside Cairn? run refresh)")));
        };
        if old.get("subnet_ids") != new.get("subnet_ids") || old.get("description") != new.get("description") {
            aws.elasticache
                .modify_cache_subnet_group()
                .cache_subnet_group_name(id)
                .set_cache_subnet_group_description(text(new, "description").map(str::to_owned))
                .set_subnet_ids(strings(new, "subnet_ids"))
                .send()
                .await
                .map_err(|e| aws_error("changing the subnet group (ModifyCacheSubnetGroup)", e, hint(new)))?;
        }
        retag(aws, urn, current.arn().unwrap_or_default(), old, new).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        match aws.elasticache.delete_cache_subnet_group().cache_subnet_group_name(id).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_cache_subnet_group_not_found_fault()) => Ok(()),
            Err(e) => Err(aws_error("deleting the subnet group (DeleteCacheSubnetGroup)", e, hint(&Props::new()))),
        }
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn) -> Result<Vec<Observed>, ProviderError> {
        let mut found = Vec::new();
        let mut marker = None;
        loop {
            let page = aws
                .elasticache
                .describe_cache_subnet_groups()
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| aws_error("looking up subnet groups", e, |_| None))?;
            for g in page.cache_subnet_groups() {
                let Some(arn) = g.arn() else { continue };
                if is_tagged(aws, urn, arn).await? {
                    found.push(observe(aws, urn, g).await?);
                }
            }
            match page.marker() {
                Some(m) if !m.is_empty() => marker = Some(m.to_owned()),
                _ => break,
            }
        }
        Ok(found)
    }
}
