//! ElastiCache: Redis subnet groups, cache clusters and replication groups.
//!
//! ElastiCache works slowly: a cluster or replication group takes minutes to become
//! `available` after a create or a change, and to disappear after a delete. Cairn waits
//! for each, 30 minutes at most by default (`CAIRN_AWS_WAIT_TIMEOUT` changes the bound,
//! a resource's custom timeouts cut it shorter); a wait that runs out leaves the step
//! pending, settled on the next run.
//!
//! ElastiCache ids are lowercase: cluster and replication group ids are at most 40
//! lowercase letters, digits and hyphens, starting with a letter. A generated id is the
//! logical name, a hyphen and 7 hex digits, so a resource left to be auto-named needs a
//! logical name of at most 32 such characters (checked before any call; Cairn does not
//! shorten or lowercase names behind your back).

pub mod cache_cluster;
pub mod replication_group;
pub mod subnet_group;

pub use cache_cluster::{CacheCluster, CacheClusterRef, CACHE_CLUSTER};
pub use replication_group::{ReplicationGroup, ReplicationGroupRef, REPLICATION_GROUP};
pub use subnet_group::{SubnetGroup, SubnetGroupRef, SUBNET_GROUP};

use std::time::Duration;

use aws_sdk_elasticache::types::Tag;
use cairn_sdk::{CheckFailure, Decl, ProviderError, Tags, Urn};
use serde_json::Value;

use crate::error::{aws_error, no_hint};
use crate::kind::{Clients, Kinds};
use crate::tags;

pub(crate) fn register(kinds: &mut Kinds) {
    kinds.insert(SUBNET_GROUP.token, &subnet_group::SubnetGroupKind);
    kinds.insert(CACHE_CLUSTER.token, &cache_cluster::CacheClusterKind);
    kinds.insert(REPLICATION_GROUP.token, &replication_group::ReplicationGroupKind);
}

/// How long to wait for a cluster or replication group to become available or to be
/// gone, unless `CAIRN_AWS_WAIT_TIMEOUT` says otherwise. Real ElastiCache takes 5 to 15
/// minutes for most operations.
pub(crate) const BOUND: Duration = Duration::from_secs(30 * 60);

/// The description Cairn gives when none is set: AWS requires one.
pub(crate) const DESCRIPTION: &str = "Managed by Cairn";

/// The naming rules of an ElastiCache identifier.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IdRules {
    /// The longest id.
    pub(crate) max: usize,
    /// Cluster and replication group ids: a letter first, no `--`, no `-` at the end.
    pub(crate) strict: bool,
}

impl IdRules {
    pub(crate) fn accepts(self, id: &str) -> bool {
        let chars_ok = id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        let len_ok = (1..=self.max).contains(&id.len());
        let shape_ok = !self.strict
            || (id.starts_with(|c: char| c.is_ascii_lowercase()) && !id.contains("--") && !id.ends_with('-'));
        chars_ok && len_ok && shape_ok
    }

    fn describe(self) -> String {
        if self.strict {
            format!(
                "1 to {} lowercase letters, digits or hyphens, starting with a letter, with no two hyphens in a row and no hyphen at the end",
                self.max
            )
        } else {
            format!("1 to {} lowercase letters, digits or hyphens", self.max)
        }
    }
}

/// Checks an auto-named id property: the id given, or else the one the engine will
/// generate from the logical name (`<logical name>-<7 hex digits>`).
pub(crate) fn check_id(decl: &Decl, key: &str, rules: IdRules, out: &mut Vec<CheckFailure>) {
    match decl.value(key) {
        Some(v) if !v.as_str().is_some_and(|s| rules.accepts(s)) => {
            out.push(CheckFailure::new(key, Some(v), format!("be {}", rules.describe())));
        }
        // The suffix is 7 lowercase hex digits: checking one checks them all.
        None if decl.get(key).is_none() && !rules.accepts(&format!("{}-0000000", decl.name())) => {
            out.push(CheckFailure::new(
                key,
                None,
                format!(
                    "be set, as the id generated from the logical name, '{}-<7 hex digits>', would not be {}; use a logical name of at most {} such characters, or set {key}",
                    decl.name(),
                    rules.describe(),
                    rules.max.saturating_sub(8)
                ),
            ));
        }
        _ => {}
    }
}

/// The tags to create a resource with ([`tags::wanted`]).
pub(crate) fn create_tags(urn: &Urn, user: Option<&Tags>) -> Vec<Tag> {
    tags::wanted(urn, user).into_iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

/// The resource's tags, as the `tags` input holds them ([`tags::observed`]).
pub(crate) async fn observed_tags(aws: &Clients, urn: &Urn, arn: &str) -> Result<Option<Tags>, ProviderError> {
    Ok(tags::observed(urn, list_tags(aws, arn).await?))
}

/// All tags of the resource with ARN `arn`.
pub(crate) async fn list_tags(aws: &Clients, arn: &str) -> Result<Vec<(String, String)>, ProviderError> {
    let out = aws
        .elasticache
        .list_tags_for_resource()
        .resource_name(arn)
        .send()
        .await
        .map_err(|e| aws_error("reading tags", e, no_hint))?;
    Ok(out.tag_list().iter().filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or_default().to_owned()))).collect())
}

/// Whether the resource with ARN `arn` carries `urn`'s tag.
pub(crate) async fn is_tagged(aws: &Clients, urn: &Urn, arn: &str) -> Result<bool, ProviderError> {
    Ok(tags::is_tagged(urn, list_tags(aws, arn).await?))
}

/// Brings the tags of the resource with ARN `arn` from the user's `old` to `new`.
pub(crate) async fn retag(aws: &Clients, urn: &Urn, arn: &str, old: Option<&Tags>, new: Option<&Tags>) -> Result<(), ProviderError> {
    let change = tags::Retag::new(urn, old, new);
    if !change.remove.is_empty() {
        aws.elasticache
            .remove_tags_from_resource()
            .resource_name(arn)
            .set_tag_keys(Some(change.remove))
            .send()
            .await
            .map_err(|e| aws_error("removing tags", e, no_hint))?;
    }
    if !change.set.is_empty() {
        let set = change.set.into_iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect();
        aws.elasticache
            .add_tags_to_resource()
            .resource_name(arn)
            .set_tags(Some(set))
            .send()
            .await
            .map_err(|e| aws_error("tagging", e, no_hint))?;
    }
    Ok(())
}

/// The new value of an input an update changes: `new` when set and not `old`.
pub(crate) fn changed<T: PartialEq + Clone>(old: &Option<T>, new: &Option<T>) -> Option<T> {
    new.clone().filter(|_| old != new)
}

/// What a cache cluster and a replication group name in [`node_hint`]'s messages.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Nodes<'a> {
    /// "cache cluster" or "replication group".
    pub(crate) what: &'a str,
    /// Its id property, and the id.
    pub(crate) id: (&'a str, Option<&'a str>),
    pub(crate) subnet_group_name: Option<&'a str>,
    pub(crate) parameter_group_name: Option<&'a str>,
    pub(crate) node_type: Option<&'a str>,
}

/// Hints for the errors of a cache cluster or a replication group: its id taken, it
/// being busy, its subnet group, parameter group, node capacity, quotas and VPC.
pub(crate) fn node_hint(code: &str, want: Nodes<'_>) -> Option<String> {
    let (what, (id_key, id)) = (want.what, want.id);
    match code {
        "CacheClusterAlreadyExists" | "ReplicationGroupAlreadyExists" => Some(format!(
            "a {what} with id {} already exists; choose another {id_key}, or leave it unset and Cairn will pick a unique one",
            id.unwrap_or_default()
        )),
        "InvalidCacheClusterState" | "InvalidReplicationGroupState" => {
            Some(format!("the {what} is busy (being created, changed or deleted); wait until it is available, then run again"))
        }
        "CacheSubnetGroupNotFoundFault" => Some(format!(
            "cache subnet group {} does not exist (deleted outside Cairn? run refresh); check subnet_group_name",
            want.subnet_group_name.unwrap_or_default()
        )),
        "CacheParameterGroupNotFound" => Some(format!(
            "cache parameter group {} does not exist; check parameter_group_name",
            want.parameter_group_name.unwrap_or_default()
        )),
        "InsufficientCacheClusterCapacity" => Some(format!(
            "AWS has no capacity for node type {} here right now; try another node type, or again later",
            want.node_type.unwrap_or_default()
        )),
        "ClusterQuotaForCustomerExceeded" | "NodeQuotaForClusterExceeded" | "NodeQuotaForCustomerExceeded" => Some(
            "the account's quota of cache clusters or nodes is used up; delete unused ones or ask AWS for a higher quota".to_owned(),
        ),
        "InvalidVPCNetworkStateFault" => Some(
            "the subnet group and the security groups must belong to the same VPC; check subnet_group_name and security_group_ids".to_owned(),
        ),
        _ => None,
    }
}

/// Checks that a list input, if literal, holds only strings.
pub(crate) fn check_strings(decl: &Decl, key: &str, what: &str, out: &mut Vec<CheckFailure>) {
    if let Some(v) = decl.value(key) {
        if !v.as_array().is_some_and(|a| a.iter().all(Value::is_string)) {
            out.push(CheckFailure::new(key, Some(v), format!("be a list of {what}")));
        }
    }
}

/// Checks that a port input, if literal, is a TCP port.
pub(crate) fn check_port(decl: &Decl, out: &mut Vec<CheckFailure>) {
    if let Some(v) = decl.value("port") {
        if !v.as_i64().is_some_and(|p| (1..=65_535).contains(&p)) {
            out.push(CheckFailure::new("port", Some(v), "be a TCP port, 1 to 65535"));
        }
    }
}
