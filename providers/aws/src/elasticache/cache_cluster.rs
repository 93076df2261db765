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
use cairn_sdk::schema::Default;
use cairn_sdk::{CheckFailure, Decl, Observed, Props, ProviderError, Tags, Urn};
use serde_json::Value;

use super::{changed, check_id, check_port, check_strings, create_tags, list_tags, node_hint, retag, IdRules, Nodes, BOUND};
use crate::error::{aws_error, no_hint, or_missing};
use crate::kind::{finish, paginate, Clients, Kind};
use crate::tags;
use crate::wait::{self, Poll};

cairn_sdk::resource! {
    /// A Redis cache cluster: `CacheCluster::new("sessions").node_type("cache.t3.micro")`.
    pub struct CacheCluster {
        token: "aws:elasticache:CacheCluster",
        schema: CACHE_CLUSTER,
        inputs: CacheClusterInputs,
        /// A declared cache cluster's outputs.
        handle: CacheClusterRef,
        validate: validate,
    }
    inputs {
        /// The cluster id: at most 40 lowercase letters, digits or hyphens, starting with a
        /// letter. By default `<logical name>-<7 hex digits>`, new on each replacement, which
        /// needs a logical name of at most 32 such characters (forces replacement).
        cluster_id: String = auto_name().forces_replacement(),
        /// The node type, e.g. `cache.t3.micro`. Changed in place (the cluster is scaled).
        node_type: String = required(),
        /// The number of nodes: Redis allows only 1, the default.
        num_cache_nodes: u32 = default(Default::Int(1)),
        /// The port Redis listens on; 6379 when unset (forces replacement).
        port: u16 = default(Default::Int(6379)).forces_replacement(),
        /// The cache parameter group, e.g. `default.redis7`; AWS's default for the engine
        /// version when unset. Changed in place.
        parameter_group_name: String = computed(),
        /// The cache subnet group to place it in, usually a
        /// [`SubnetGroup`](super::SubnetGroup)'s `name()` (forces replacement).
        subnet_group_name: String = computed().forces_replacement(),
        /// The VPC security groups; the VPC's default group when unset. Changed in place.
        security_group_ids: Vec<String> = computed(),
        /// The Redis version, e.g. `7.1`; AWS's default when unset. Changed in place
        /// (upgrades only).
        engine_version: String = computed(),
        /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    outputs {
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

/// Cluster ids: at most 40 lowercase letters, digits and hyphens, a letter first.
pub(crate) const CLUSTER_ID: IdRules = IdRules { max: 40, strict: true };

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

/// The cache cluster's operations.
#[derive(Debug)]
pub(crate) struct CacheClusterKind;

pub(crate) const MISSING: &[&str] = &["CacheClusterNotFound"];

fn hint(code: &str, want: &CacheClusterInputs) -> Option<String> {
    let (subnet_group_name, parameter_group_name, node_type) = (want.subnet_group_name.as_deref(), want.parameter_group_name.as_deref(), want.node_type.as_deref());
    node_hint(code, Nodes { what: "cache cluster", id: ("cluster_id", want.cluster_id.as_deref()), subnet_group_name, parameter_group_name, node_type })
}

/// The cluster with id `id`, if it exists.
async fn describe(aws: &Clients, id: &str) -> Result<Option<Cluster>, ProviderError> {
    let got = aws.elasticache.describe_cache_clusters().cache_cluster_id(id).show_cache_node_info(true).send().await;
    Ok(or_missing(got, MISSING, "reading the cache cluster", no_hint)?.and_then(|out| out.cache_clusters().first().cloned()))
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

/// The cluster as the inputs and outputs Cairn records. Inputs a describe may leave out
/// are kept as `recorded`: the port is only in the nodes' endpoints, which AWS lists
/// once the node is up and moto never; moto reports no security groups and no parameter
/// group either. AWS reports all three for a cluster that is available, so a change made
/// there is still drift.
fn observe(urn: &Urn, c: &Cluster, tags: Vec<(String, String)>, recorded: &CacheClusterInputs) -> Observed {
    let id = c.cache_cluster_id().unwrap_or_default();
    let endpoint = c.cache_nodes().iter().find_map(|n| n.endpoint());
    // Not every endpoint reports the nodes (moto does not): then the port is unknown.
    let port = endpoint.and_then(|e| e.port());
    let groups: Vec<String> = c.security_groups().iter().filter_map(|g| g.security_group_id()).map(str::to_owned).collect();
    let inputs = CacheClusterInputs {
        cluster_id: Some(id.to_owned()),
        node_type: c.cache_node_type().map(str::to_owned),
        num_cache_nodes: c.num_cache_nodes().and_then(|n| u32::try_from(n).ok()),
        port: port.and_then(|p| u16::try_from(p).ok()).or(recorded.port),
        parameter_group_name: c
            .cache_parameter_group()
            .and_then(|p| p.cache_parameter_group_name())
            .map(str::to_owned)
            .or_else(|| recorded.parameter_group_name.clone()),
        subnet_group_name: c.cache_subnet_group_name().map(str::to_owned),
        security_group_ids: Some(groups).filter(|g| !g.is_empty()).or_else(|| recorded.security_group_ids.clone()),
        engine_version: c.engine_version().map(str::to_owned),
        tags: tags::observed(urn, tags),
    };
    let mut outputs = vec![("id", Value::from(id)), ("arn", Value::from(c.arn().unwrap_or_default())), ("status", Value::from(status(c)))];
    if let Some(address) = endpoint.and_then(|e| e.address()) {
        outputs.push(("endpoint_address", Value::from(address)));
    }
    if let Some(port) = port {
        outputs.push(("endpoint_port", Value::from(port)));
    }
    Observed::new(id, inputs.to_props(), outputs)
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
        let want = CacheClusterInputs::from_props(inputs)?;
        let id = want.cluster_id.as_deref().unwrap_or_default();
        aws.once
            .elasticache
            .create_cache_cluster()
            .cache_cluster_id(id)
            .engine("redis")
            .set_cache_node_type(want.node_type.clone())
            .set_num_cache_nodes(want.num_cache_nodes.and_then(|n| i32::try_from(n).ok()))
            .set_port(want.port.map(i32::from))
            .set_cache_parameter_group_name(want.parameter_group_name.clone())
            .set_cache_subnet_group_name(want.subnet_group_name.clone())
            .set_security_group_ids(want.security_group_ids.clone())
            .set_engine_version(want.engine_version.clone())
            .set_tags(Some(create_tags(urn, want.tags.as_ref())))
            .send()
            .await
            .map_err(|e| aws_error("creating the cache cluster", e, |c| hint(c, &want)))?;
        finish(id, async {
            wait_available(aws, id, None).await?;
            self.read_created(aws, urn, id, inputs).await
        })
        .await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let Some(c) = describe(aws, id).await? else { return Ok(None) };
        let recorded = CacheClusterInputs::from_props(recorded)?;
        let tags = match c.arn() {
            Some(arn) => list_tags(aws, arn).await?,
            None => Vec::new(),
        };
        Ok(Some(observe(urn, &c, tags, &recorded)))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (CacheClusterInputs::from_props(old)?, CacheClusterInputs::from_props(new)?);
        let Some(current) = describe(aws, id).await? else {
            return Err(ProviderError::not_found(format!("cache cluster {id} is gone (deleted outside Cairn? run refresh)")));
        };
        let node_type = changed(&old.node_type, &want.node_type);
        let engine_version = changed(&old.engine_version, &want.engine_version);
        let parameter_group_name = changed(&old.parameter_group_name, &want.parameter_group_name);
        let security_group_ids = changed(&old.security_group_ids, &want.security_group_ids);
        let modified = node_type.is_some() || engine_version.is_some() || parameter_group_name.is_some() || security_group_ids.is_some();
        if modified {
            aws.elasticache
                .modify_cache_cluster()
                .cache_cluster_id(id)
                .apply_immediately(true)
                .set_cache_node_type(node_type.clone())
                .set_engine_version(engine_version)
                .set_cache_parameter_group_name(parameter_group_name)
                .set_security_group_ids(security_group_ids)
                .send()
                .await
                .map_err(|e| aws_error("changing the cache cluster (ModifyCacheCluster)", e, |c| hint(c, &want)))?;
            wait_available(aws, id, node_type.as_deref()).await?;
        }
        retag(aws, urn, current.arn().unwrap_or_default(), old.tags.as_ref(), want.tags.as_ref()).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        let asked = aws.elasticache.delete_cache_cluster().cache_cluster_id(id).send().await;
        let hint = |c: &str| hint(c, &CacheClusterInputs::default());
        wait::deleted(asked, MISSING, "deleting the cache cluster", hint, BOUND, "deleting", || async {
            Ok(describe(aws, id).await?.map(|c| status(&c).to_owned()))
        })
        .await
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, _created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        let clusters = paginate(|marker| async move {
            let page = aws
                .elasticache
                .describe_cache_clusters()
                .show_cache_node_info(true)
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| aws_error("looking up cache clusters", e, no_hint))?;
            Ok((page.cache_clusters().to_vec(), page.marker().map(str::to_owned)))
        })
        .await?;
        let mut found = Vec::new();
        // Members of replication groups are the groups' own; a cluster being deleted is on
        // its way out, not a copy to adopt.
        for c in clusters.iter().filter(|c| c.replication_group_id().is_none() && status(c) != "deleting") {
            let Some(arn) = c.arn() else { continue };
            let tags = list_tags(aws, arn).await?;
            if tags::is_tagged(urn, tags.iter().map(|(k, v)| (k, v))) {
                found.push(observe(urn, c, tags, &CacheClusterInputs::default()));
            }
        }
        Ok(found)
    }
}
