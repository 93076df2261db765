//! `aws:elasticache:CacheCluster`: a single-node Redis cache.
//!
//! The id, the port and the subnet group force a replacement. The node type, the engine
//! version, the parameter group, the security groups and tags change in place
//! (`ModifyCacheCluster`, applied immediately). Every create and change waits until the
//! cluster is `available` again, and a delete until it is gone (see the module's notes
//! on the bound). For replicas and automatic failover, use a
//! [`ReplicationGroup`](super::ReplicationGroup).

use async_trait::async_trait;
use aws_sdk_elasticache::types::CacheCluster as Cluster;
use cairn_sdk::provider::{schema_diff, DiffRequest, DiffResult};
use cairn_sdk::schema::{Default, Property, ResourceType};
use cairn_sdk::{typed_handle, CheckFailure, Decl, Input, Observed, Props, ProviderError, Urn};
use serde_json::Value;

use super::{
    check_id, check_port, check_strings, create_tags, int, list_tags, node_hint, retag, strings, text, IdRules, BOUND,
};
use crate::error::aws_error;
use crate::kind::{finish, keep_unreported, Clients, Kind};
use crate::tags;
use crate::wait::{self, Poll};

/// The schema of `aws:elasticache:CacheCluster`.
pub static CACHE_CLUSTER: ResourceType = ResourceType::new(
    "aws:elasticache:CacheCluster",
    &[
        Property::input("cluster_id").auto_name().forces_replacement(),
        Property::input("node_type").required(),
        Property::input("num_cache_nodes").default(Default::Int(1)),
        Property::input("port").default(Default::Int(6379)).forces_replacement(),
        Property::optional_computed("parameter_group_name"),
        Property::optional_computed("subnet_group_name").forces_replacement(),
        Property::optional_computed("security_group_ids"),
        Property::optional_computed("engine_version"),
        Property::input("tags"),
        Property::output("id"),
        Property::output("arn"),
        Property::output("endpoint_address"),
        Property::output("endpoint_port"),
        Property::output("status"),
    ],
)
.with_validation(validate);

/// Cluster ids: at most 40 lowercase letters, digits and hyphens, a letter first.
pub(crate) const CLUSTER_ID: IdRules = IdRules { max: 40, strict: true };

/// Inputs a describe may leave out, kept as recorded: the port is only in the nodes'
/// endpoints, which AWS lists once the node is up and moto never; moto reports no
/// security groups and no parameter group either. AWS reports all three for a cluster
/// that is available, so a change made there is still drift.
const UNREPORTED: &[&str] = &["port", "security_group_ids", "parameter_group_name"];

/// Statuses a cluster never leaves for `available` on its own.
const BROKEN: [&str; 5] = ["create-failed", "incompatible-network", "incompatible-parameters", "restore-failed", "incompatible-restore"];

pub(crate) fn check_node_type(decl: &Decl, out: &mut Vec<CheckFailure>) {
    if let Some(v) = decl.value("node_type") {
        if !v.as_str().is_some_and(|s| s.starts_with("cache.") && s.len() > "cache.".len()) {
            out.push(CheckFailure::new("node_type", Some(v), "be a cache node type such as cache.t3.micro"));
        }
    }
}

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    check_id(decl, "cluster_id", CLUSTER_ID, out);
    check_node_type(decl, out);
    if let Some(v) = decl.value("num_cache_nodes") {
        if v.as_i64() != Some(1) {
            out.push(CheckFailure::new(
                "num_cache_nodes",
                Some(v),
                "be 1: a Redis cache cluster has exactly one node (for replicas, use a ReplicationGroup with num_cache_clusters)"
            ));
        }
    }
    check_port(decl, out);
    check_strings(decl, "security_group_ids", "security group ids", out);
}

/// A Redis cache cluster: `CacheCluster::new("sessions").node_type("cache.t3.micro")`.
#[derive(Debug, Clone)]
pub struct CacheCluster(Decl);

typed_handle! {
    /// A declared cache cluster's outputs.
    pub struct CacheClusterRef {
        /// The cluster id.
        id: String,
        /// The cluster ARN.
        arn: String,
        /// The node's DNS name, to connect to. Absent where the endpoint reports none
        /// (moto).
        endpoint_address: String,
        /// The node's port. Absent where the endpoint reports none (moto).
        endpoint_port: u16,
        /// The cluster's status when last read, `available` after an apply.
        status: String,
    }
}

impl CacheCluster {
    /// A cache cluster with logical name `name`.
    pub fn new(name: &str) -> Self {
        CacheCluster(Decl::new(&CACHE_CLUSTER, name))
    }

    /// The cluster id: at most 40 lowercase letters, digits or hyphens, starting with a
    /// letter. By default `<logical name>-<7 hex digits>`, new on each replacement, which
    /// needs a logical name of at most 32 such characters (forces replacement).
    #[must_use]
    pub fn cluster_id(mut self, id: impl Into<Input<String>>) -> Self {
        self.0.set("cluster_id", id);
        self
    }

    /// The node type, e.g. `cache.t3.micro`. Changed in place (the cluster is scaled).
    #[must_use]
    pub fn node_type(mut self, node_type: impl Into<Input<String>>) -> Self {
        self.0.set("node_type", node_type);
        self
    }

    /// The number of nodes: Redis allows only 1, the default.
    #[must_use]
    pub fn num_cache_nodes(mut self, count: impl Into<Input<u32>>) -> Self {
        self.0.set("num_cache_nodes", count);
        self
    }

    /// The port Redis listens on; 6379 when unset (forces replacement).
    #[must_use]
    pub fn port(mut self, port: impl Into<Input<u16>>) -> Self {
        self.0.set("port", port);
        self
    }

    /// The cache parameter group, e.g. `default.redis7`; AWS's default for the engine
    /// version when unset. Changed in place.
    #[must_use]
    pub fn parameter_group_name(mut self, name: impl Into<Input<String>>) -> Self {
        self.0.set("parameter_group_name", name);
        self
    }

    /// The cache subnet group to place it in, usually a
    /// [`SubnetGroup`](super::SubnetGroup)'s `name()` (forces replacement).
    #[must_use]
    pub fn subnet_group_name(mut self, name: impl Into<Input<String>>) -> Self {
        self.0.set("subnet_group_name", name);
        self
    }

    /// The VPC security groups; the VPC's default group when unset. Changed in place.
    #[must_use]
    pub fn security_group_ids(mut self, ids: impl Into<Input<Vec<String>>>) -> Self {
        self.0.set("security_group_ids", ids);
        self
    }

    /// The Redis version, e.g. `7.1`; AWS's default when unset. Changed in place
    /// (upgrades only).
    #[must_use]
    pub fn engine_version(mut self, version: impl Into<Input<String>>) -> Self {
        self.0.set("engine_version", version);
        self
    }

    /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
    #[must_use]
    pub fn tags<K: Into<String>, V: Into<String>>(mut self, tags: impl IntoIterator<Item = (K, V)>) -> Self {
        self.0.set("tags", tags::to_value(tags));
        self
    }
}

cairn_sdk::impl_resource!(CacheCluster => CacheClusterRef);

/// The cache cluster's operations.
#[derive(Debug)]
pub(crate) struct CacheClusterKind;

fn hint(inputs: &Props) -> impl Fn(&str) -> Option<String> + '_ {
    move |code| match code {
        "CacheClusterAlreadyExists" => Some(format!(
            "a cache cluster with id {} already exists; choose another cluster_id, or leave it unset and Cairn will pick a unique one",
            text(inputs, "cluster_id").unwrap_or_default()
        )),
        "InvalidCacheClusterState" => {
            Some("the cluster is busy (being created, changed or deleted); wait until it is available, then run again".to_owned())
        }
        _ => node_hint(code, inputs),
    }
}

/// The cluster with id `id`, if it exists.
async fn describe(aws: &Clients, id: &str) -> Result<Option<Cluster>, ProviderError> {
    let got = aws.elasticache.describe_cache_clusters().cache_cluster_id(id).show_cache_node_info(true).send().await;
    match got {
        Ok(out) => Ok(out.cache_clusters().first().cloned()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_cache_cluster_not_found_fault()) => Ok(None),
        Err(e) => Err(aws_error("reading the cache cluster", e, |_| None)),
    }
}

fn status(c: &Cluster) -> &str {
    c.cache_cluster_status().unwrap_or("unknown")
}

/// Whether changes AWS accepted are still to be applied.
fn pending(c: &Cluster) -> bool {
    c.pending_modified_values()
        .is_some_and(|p| p.cache_node_type().is_some() || p.engine_version().is_some() || p.num_cache_nodes().is_some())
}

/// Waits until the cluster is `available` with no change pending, and with `node_type`
/// if given: right after a change AWS may still say `available` for a moment. A status
/// it cannot recover from fails.
async fn wait_available(aws: &Clients, id: &str, node_type: Option<&str>) -> Result<(), ProviderError> {
    wait::until("available", BOUND, || async {
        match describe(aws, id).await? {
            None => Err(ProviderError::not_found(format!("cache cluster {id} disappeared while Cairn waited for it"))),
            Some(c) if status(&c) == "available" && !pending(&c) && node_type.is_none_or(|t| c.cache_node_type() == Some(t)) => {
                Ok(Poll::Done(()))
            }
            Some(c) if BROKEN.contains(&status(&c)) => Err(ProviderError::failed(format!(
                "cache cluster {id} is '{}' and will not become available; check node_type, subnet_group_name, security_group_ids and parameter_group_name, then delete it (or run destroy) and run again",
                status(&c)
            ))),
            Some(c) if status(&c) == "available" => Ok(Poll::Waiting("available, with changes pending".to_owned())),
            Some(c) => Ok(Poll::Waiting(status(&c).to_owned())),
        }
    })
    .await
}

/// The cluster as the inputs and outputs Cairn records.
fn observe(urn: &Urn, c: &Cluster, tags: Vec<(String, String)>) -> Observed {
    let id = c.cache_cluster_id().unwrap_or_default();
    let mut inputs = Props::new();
    inputs.insert("cluster_id", Value::from(id));
    if let Some(t) = c.cache_node_type() {
        inputs.insert("node_type", Value::from(t));
    }
    if let Some(n) = c.num_cache_nodes() {
        inputs.insert("num_cache_nodes", Value::from(n));
    }
    let endpoint = c.cache_nodes().iter().find_map(|n| n.endpoint());
    // Not every endpoint reports the nodes (moto does not): then the port is unknown.
    if let Some(port) = endpoint.and_then(|e| e.port()) {
        inputs.insert("port", Value::from(port));
    }
    if let Some(p) = c.cache_parameter_group().and_then(|p| p.cache_parameter_group_name()) {
        inputs.insert("parameter_group_name", Value::from(p));
    }
    if let Some(s) = c.cache_subnet_group_name() {
        inputs.insert("subnet_group_name", Value::from(s));
    }
    let groups: Vec<Value> = c.security_groups().iter().filter_map(|g| g.security_group_id()).map(Value::from).collect();
    if !groups.is_empty() {
        inputs.insert("security_group_ids", Value::Array(groups));
    }
    if let Some(v) = c.engine_version() {
        inputs.insert("engine_version", Value::from(v));
    }
    let mine: Vec<(String, String)> = tags.into_iter().filter(|(k, v)| !(k == "Name" && v == urn.name())).collect();
    if let Some(t) = tags::observed_user_tags(mine.iter().map(|(k, v)| (k, v))) {
        inputs.insert("tags", t);
    }
    let mut outputs = Props::new();
    outputs.insert("id", Value::from(id));
    outputs.insert("arn", Value::from(c.arn().unwrap_or_default()));
    outputs.insert("status", Value::from(status(c)));
    if let Some(address) = endpoint.and_then(|e| e.address()) {
        outputs.insert("endpoint_address", Value::from(address));
    }
    if let Some(port) = endpoint.and_then(|e| e.port()) {
        outputs.insert("endpoint_port", Value::from(port));
    }
    Observed { id: id.to_owned(), inputs, outputs }
}

#[async_trait]
impl Kind for CacheClusterKind {
    /// The schema's diff, except that a port missing from state is not a change: Cairn
    /// always records the port it creates a cluster with (and a read keeps it), so a
    /// missing one was dropped by a refresh before reads kept it, and replacing the
    /// cluster for that would be wrong.
    fn diff(&self, req: &DiffRequest<'_>) -> DiffResult {
        let mut diff = schema_diff(req);
        diff.changes.retain(|c| !(c.name == "port" && c.old.is_none()));
        diff
    }

    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let id = text(inputs, "cluster_id").unwrap_or_default();
        aws.once
            .elasticache
            .create_cache_cluster()
            .cache_cluster_id(id)
            .engine("redis")
            .set_cache_node_type(text(inputs, "node_type").map(str::to_owned))
            .set_num_cache_nodes(int(inputs, "num_cache_nodes"))
            .set_port(int(inputs, "port"))
            .set_cache_parameter_group_name(text(inputs, "parameter_group_name").map(str::to_owned))
            .set_cache_subnet_group_name(text(inputs, "subnet_group_name").map(str::to_owned))
            .set_security_group_ids(strings(inputs, "security_group_ids"))
            .set_engine_version(text(inputs, "engine_version").map(str::to_owned))
            .set_tags(Some(create_tags(urn, inputs)))
            .send()
            .await
            .map_err(|e| aws_error("creating the cache cluster", e, hint(inputs)))?;
        finish(id, async {
            wait_available(aws, id, None).await?;
            self.read_created(aws, urn, id, inputs).await
        })
        .await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let Some(c) = describe(aws, id).await? else { return Ok(None) };
        let tags = match c.arn() {
            Some(arn) => list_tags(aws, arn).await?,
            None => Vec::new(),
        };
        let mut found = observe(urn, &c, tags);
        keep_unreported(&mut found.inputs, recorded, UNREPORTED);
        Ok(Some(found))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let Some(current) = describe(aws, id).await? else {
            return Err(ProviderError::not_found(format!("cache cluster {id} is gone (deleted outside Cairn? run refresh)")));
        };
        let changed = |key: &str| new.get(key).is_some() && old.get(key) != new.get(key);
        let modified = ["node_type", "engine_version", "parameter_group_name", "security_group_ids"].into_iter().any(changed);
        if modified {
            let pick = |key: &str| text(new, key).filter(|_| changed(key)).map(str::to_owned);
            aws.elasticache
                .modify_cache_cluster()
                .cache_cluster_id(id)
                .apply_immediately(true)
                .set_cache_node_type(pick("node_type"))
                .set_engine_version(pick("engine_version"))
                .set_cache_parameter_group_name(pick("parameter_group_name"))
                .set_security_group_ids(strings(new, "security_group_ids").filter(|_| changed("security_group_ids")))
                .send()
                .await
                .map_err(|e| aws_error("changing the cache cluster (ModifyCacheCluster)", e, hint(new)))?;
            wait_available(aws, id, pick("node_type").as_deref()).await?;
        }
        retag(aws, urn, current.arn().unwrap_or_default(), old, new).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        match aws.elasticache.delete_cache_cluster().cache_cluster_id(id).send().await {
            Ok(_) => {}
            Err(e) if e.as_service_error().is_some_and(|s| s.is_cache_cluster_not_found_fault()) => return Ok(()),
            Err(e) => {
                // Already being deleted (an earlier run stopped waiting): wait again.
                let deleting = describe(aws, id).await.ok().flatten().is_some_and(|c| status(&c) == "deleting");
                if !deleting {
                    return Err(aws_error("deleting the cache cluster", e, hint(&Props::new())));
                }
            }
        }
        wait::until("deleted", BOUND, || async {
            Ok(match describe(aws, id).await? {
                None => Poll::Done(()),
                Some(c) => Poll::Waiting(status(&c).to_owned()),
            })
        })
        .await
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn) -> Result<Vec<Observed>, ProviderError> {
        let mut found = Vec::new();
        let mut marker = None;
        loop {
            let page = aws
                .elasticache
                .describe_cache_clusters()
                .show_cache_node_info(true)
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| aws_error("looking up cache clusters", e, |_| None))?;
            // Members of replication groups are the groups' own; a cluster being deleted
            // is on its way out, not a copy to adopt.
            for c in page.cache_clusters().iter().filter(|c| c.replication_group_id().is_none() && status(c) != "deleting") {
                let Some(arn) = c.arn() else { continue };
                let tags = list_tags(aws, arn).await?;
                if tags::is_tagged(urn, tags.iter().map(|(k, v)| (k, v))) {
                    found.push(observe(urn, c, tags));
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
