//! `aws:elasticache:ReplicationGroup`: a Redis primary with up to five replicas and,
//! optionally, automatic failover (cluster mode disabled).
//!
//! The id, the port and the subnet group force a replacement. The description, node
//! type, number of nodes, automatic failover, parameter group, security groups and tags
//! change in place. Each change waits until the group is `available` again before the
//! next, in an order AWS accepts: failover is turned off before replicas are removed and
//! on after they are added, and a new node type is applied on its own.

use async_trait::async_trait;
use aws_sdk_elasticache::types::{AutomaticFailoverStatus, ReplicationGroup as Group};
use cairn_sdk::provider::{schema_diff, DiffRequest, DiffResult};
use cairn_sdk::schema::{Default, Property, ResourceType};
use cairn_sdk::{typed_handle, CheckFailure, Decl, Input, Observed, Props, ProviderError, Urn};
use serde_json::Value;

use super::cache_cluster::{check_node_type, CLUSTER_ID};
use super::{check_id, check_port, check_strings, create_tags, int, list_tags, node_hint, retag, strings, text, BOUND, DESCRIPTION};
use crate::error::aws_error;
use crate::kind::{finish, keep_unreported, Clients, Kind};
use crate::tags;
use crate::wait::{self, Poll};

/// The schema of `aws:elasticache:ReplicationGroup`.
pub static REPLICATION_GROUP: ResourceType = ResourceType::new(
    "aws:elasticache:ReplicationGroup",
    &[
        Property::input("replication_group_id").auto_name().forces_replacement(),
        Property::input("description").default(Default::Str(DESCRIPTION)),
        Property::input("node_type").required(),
        Property::input("num_cache_clusters").default(Default::Int(1)),
        Property::input("automatic_failover").default(Default::Bool(false)),
        Property::input("port").default(Default::Int(6379)).forces_replacement(),
        Property::optional_computed("subnet_group_name").forces_replacement(),
        Property::optional_computed("security_group_ids"),
        Property::optional_computed("parameter_group_name"),
        Property::input("tags"),
        Property::output("id"),
        Property::output("arn"),
        Property::output("primary_endpoint_address"),
        Property::output("primary_endpoint_port"),
        Property::output("status"),
    ],
)
.with_validation(validate);

/// Inputs a describe may leave out, kept as recorded: the subnet group, security groups
/// and parameter group come from the primary's cache cluster, which moto cannot
/// describe; the port from the primary's endpoint, absent while AWS has none.
const UNREPORTED: &[&str] = &["port", "subnet_group_name", "security_group_ids", "parameter_group_name"];

/// Statuses a group never leaves for `available` on its own.
const BROKEN: [&str; 1] = ["create-failed"];

/// What is wrong with `num_cache_clusters` and `automatic_failover`, as far as known.
fn nodes_problem(nodes: Option<i64>, failover: Option<bool>) -> Option<(&'static str, String)> {
    if let Some(n) = nodes {
        if !(1..=6).contains(&n) {
            return Some(("num_cache_clusters", "be from 1 to 6: a primary and up to 5 replicas".to_owned()));
        }
        if failover == Some(true) && n < 2 {
            return Some((
                "automatic_failover",
                format!("be false while num_cache_clusters is {n}: failover needs a replica to promote; set num_cache_clusters to 2 or more"),
            ));
        }
    }
    None
}

fn validate(decl: &Decl, out: &mut Vec<CheckFailure>) {
    check_id(decl, "replication_group_id", CLUSTER_ID, out);
    check_node_type(decl, out);
    let nodes = decl.value("num_cache_clusters").map(|v| v.as_i64().unwrap_or(0));
    let failover = decl.value("automatic_failover").and_then(Value::as_bool);
    if let Some((key, expected)) = nodes_problem(nodes, failover) {
        out.push(CheckFailure::new(key, decl.value(key), expected));
    }
    if let Some(v) = decl.value("description") {
        if v.as_str().is_none_or(str::is_empty) {
            out.push(CheckFailure::new("description", Some(v), "be a non-empty string (AWS requires a description)"));
        }
    }
    check_port(decl, out);
    check_strings(decl, "security_group_ids", "security group ids", out);
}

/// A Redis replication group:
/// `ReplicationGroup::new("sessions").node_type("cache.t3.micro").num_cache_clusters(2).automatic_failover(true)`.
#[derive(Debug, Clone)]
pub struct ReplicationGroup(Decl);

typed_handle! {
    /// A declared replication group's outputs.
    pub struct ReplicationGroupRef {
        /// The replication group id.
        id: String,
        /// The replication group ARN.
        arn: String,
        /// The primary's DNS name, for writes. Absent until AWS reports one.
        primary_endpoint_address: String,
        /// The primary's port.
        primary_endpoint_port: u16,
        /// The group's status when last read, `available` after an apply.
        status: String,
    }
}

impl ReplicationGroup {
    /// A replication group with logical name `name`.
    pub fn new(name: &str) -> Self {
        ReplicationGroup(Decl::new(&REPLICATION_GROUP, name))
    }

    /// The group id: at most 40 lowercase letters, digits or hyphens, starting with a
    /// letter. By default `<logical name>-<7 hex digits>`, new on each replacement, which
    /// needs a logical name of at most 32 such characters (forces replacement).
    #[must_use]
    pub fn replication_group_id(mut self, id: impl Into<Input<String>>) -> Self {
        self.0.set("replication_group_id", id);
        self
    }

    /// What it is for; `Managed by Cairn` when unset. Changed in place.
    #[must_use]
    pub fn description(mut self, description: impl Into<Input<String>>) -> Self {
        self.0.set("description", description);
        self
    }

    /// The node type of every node, e.g. `cache.t3.micro`. Changed in place (the group
    /// is scaled).
    #[must_use]
    pub fn node_type(mut self, node_type: impl Into<Input<String>>) -> Self {
        self.0.set("node_type", node_type);
        self
    }

    /// The number of nodes, primary included: 1 to 6, 1 when unset. Changed in place
    /// (replicas are added or removed).
    #[must_use]
    pub fn num_cache_clusters(mut self, count: impl Into<Input<u32>>) -> Self {
        self.0.set("num_cache_clusters", count);
        self
    }

    /// Promote a replica when the primary fails; needs `num_cache_clusters` of 2 or more.
    /// Off when unset. Changed in place.
    #[must_use]
    pub fn automatic_failover(mut self, on: bool) -> Self {
        self.0.set("automatic_failover", on);
        self
    }

    /// The port Redis listens on; 6379 when unset (forces replacement).
    #[must_use]
    pub fn port(mut self, port: impl Into<Input<u16>>) -> Self {
        self.0.set("port", port);
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

    /// The cache parameter group, e.g. `default.redis7`; AWS's default when unset.
    /// Changed in place.
    #[must_use]
    pub fn parameter_group_name(mut self, name: impl Into<Input<String>>) -> Self {
        self.0.set("parameter_group_name", name);
        self
    }

    /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
    #[must_use]
    pub fn tags<K: Into<String>, V: Into<String>>(mut self, tags: impl IntoIterator<Item = (K, V)>) -> Self {
        self.0.set("tags", tags::to_value(tags));
        self
    }
}

cairn_sdk::impl_resource!(ReplicationGroup => ReplicationGroupRef);

/// The replication group's operations.
#[derive(Debug)]
pub(crate) struct ReplicationGroupKind;

fn hint(inputs: &Props) -> impl Fn(&str) -> Option<String> + '_ {
    move |code| match code {
        "ReplicationGroupAlreadyExists" => Some(format!(
            "a replication group with id {} already exists; choose another replication_group_id, or leave it unset and Cairn will pick a unique one",
            text(inputs, "replication_group_id").unwrap_or_default()
        )),
        "InvalidReplicationGroupState" => {
            Some("the group is busy (being created, changed or deleted); wait until it is available, then run again".to_owned())
        }
        _ => node_hint(code, inputs),
    }
}

/// The group with id `id`, if it exists.
async fn describe(aws: &Clients, id: &str) -> Result<Option<Group>, ProviderError> {
    match aws.elasticache.describe_replication_groups().replication_group_id(id).send().await {
        Ok(out) => Ok(out.replication_groups().first().cloned()),
        Err(e) if e.as_service_error().is_some_and(|s| s.is_replication_group_not_found_fault()) => Ok(None),
        Err(e) => Err(aws_error("reading the replication group", e, |_| None)),
    }
}

fn status(g: &Group) -> &str {
    g.status().unwrap_or("unknown")
}

/// Whether changes AWS accepted are still to be applied.
fn pending(g: &Group) -> bool {
    g.pending_modified_values().is_some_and(|p| {
        p.automatic_failover_status().is_some() || p.primary_cluster_id().is_some() || p.resharding().is_some()
    })
}

/// Waits until the group is `available` with no change pending and `settled` true of it
/// (the change just asked for is visible): right after a change AWS may still say
/// `available` for a moment. A status it cannot recover from fails.
async fn wait_available(aws: &Clients, id: &str, settled: impl Fn(&Group) -> bool) -> Result<(), ProviderError> {
    wait::until("available", BOUND, || async {
        match describe(aws, id).await? {
            None => Err(ProviderError::not_found(format!("replication group {id} disappeared while Cairn waited for it"))),
            Some(g) if status(&g) == "available" && !pending(&g) && settled(&g) => Ok(Poll::Done(())),
            Some(g) if BROKEN.contains(&status(&g)) => Err(ProviderError::failed(format!(
                "replication group {id} is '{}' and will not become available; check node_type, subnet_group_name, security_group_ids and parameter_group_name, then delete it (or run destroy) and run again",
                status(&g)
            ))),
            Some(g) if status(&g) == "available" => Ok(Poll::Waiting("available, with changes pending".to_owned())),
            Some(g) => Ok(Poll::Waiting(status(&g).to_owned())),
        }
    })
    .await
}

/// Whether the group's automatic failover is on (or being turned on).
fn failover_on(g: &Group) -> bool {
    matches!(g.automatic_failover(), Some(AutomaticFailoverStatus::Enabled | AutomaticFailoverStatus::Enabling))
}

/// The group as the inputs and outputs Cairn records. What DescribeReplicationGroups
/// does not say (subnet group, security groups, parameter group) is read from the
/// primary's cache cluster; an endpoint that has no such cluster (moto) leaves them out,
/// and `read` keeps them as recorded.
async fn observe(aws: &Clients, urn: &Urn, g: &Group, tags: Vec<(String, String)>) -> Result<Observed, ProviderError> {
    let id = g.replication_group_id().unwrap_or_default();
    let mut inputs = Props::new();
    inputs.insert("replication_group_id", Value::from(id));
    inputs.insert("description", Value::from(g.description().unwrap_or_default()));
    if let Some(t) = g.cache_node_type() {
        inputs.insert("node_type", Value::from(t));
    }
    inputs.insert("num_cache_clusters", Value::from(g.member_clusters().len()));
    inputs.insert("automatic_failover", Value::from(failover_on(g)));
    let primary = g.node_groups().first().and_then(|n| n.primary_endpoint());
    if let Some(port) = primary.and_then(|e| e.port()) {
        inputs.insert("port", Value::from(port));
    }
    let primary_cluster = g
        .node_groups()
        .first()
        .and_then(|n| n.node_group_members().iter().find(|m| m.current_role() == Some("primary")))
        .and_then(|m| m.cache_cluster_id())
        .or_else(|| g.member_clusters().first().map(String::as_str));
    if let Some(member) = primary_cluster {
        let got = aws.elasticache.describe_cache_clusters().cache_cluster_id(member).send().await;
        let cluster = match got {
            Ok(out) => out.cache_clusters().first().cloned(),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_cache_cluster_not_found_fault()) => None,
            Err(e) => return Err(aws_error("reading the replication group's primary", e, |_| None)),
        };
        if let Some(c) = cluster {
            if let Some(s) = c.cache_subnet_group_name() {
                inputs.insert("subnet_group_name", Value::from(s));
            }
            let groups: Vec<Value> = c.security_groups().iter().filter_map(|s| s.security_group_id()).map(Value::from).collect();
            if !groups.is_empty() {
                inputs.insert("security_group_ids", Value::Array(groups));
            }
            if let Some(p) = c.cache_parameter_group().and_then(|p| p.cache_parameter_group_name()) {
                inputs.insert("parameter_group_name", Value::from(p));
            }
        }
    }
    let mine: Vec<(String, String)> = tags.into_iter().filter(|(k, v)| !(k == "Name" && v == urn.name())).collect();
    if let Some(t) = tags::observed_user_tags(mine.iter().map(|(k, v)| (k, v))) {
        inputs.insert("tags", t);
    }
    let mut outputs = Props::new();
    outputs.insert("id", Value::from(id));
    outputs.insert("arn", Value::from(g.arn().unwrap_or_default()));
    outputs.insert("status", Value::from(status(g)));
    if let Some(address) = primary.and_then(|e| e.address()) {
        outputs.insert("primary_endpoint_address", Value::from(address));
    }
    if let Some(port) = primary.and_then(|e| e.port()) {
        outputs.insert("primary_endpoint_port", Value::from(port));
    }
    Ok(Observed { id: id.to_owned(), inputs, outputs })
}

/// Checks the node count and failover once every value is known, before any call.
fn check_nodes(inputs: &Props) -> Result<(), ProviderError> {
    let nodes = inputs.get("num_cache_clusters").and_then(Value::as_i64);
    let failover = inputs.get("automatic_failover").and_then(Value::as_bool);
    match nodes_problem(nodes, failover) {
        Some((key, expected)) => Err(ProviderError::failed(format!("{key} must {expected}"))),
        None => Ok(()),
    }
}

#[async_trait]
impl Kind for ReplicationGroupKind {
    /// The schema's diff, except that a port missing from state is not a change (see
    /// the cache cluster's).
    fn diff(&self, req: &DiffRequest<'_>) -> DiffResult {
        let mut diff = schema_diff(req);
        diff.changes.retain(|c| !(c.name == "port" && c.old.is_none()));
        diff
    }

    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        check_nodes(inputs)?;
        let id = text(inputs, "replication_group_id").unwrap_or_default();
        aws.once
            .elasticache
            .create_replication_group()
            .replication_group_id(id)
            .replication_group_description(text(inputs, "description").unwrap_or(DESCRIPTION))
            .engine("redis")
            .set_cache_node_type(text(inputs, "node_type").map(str::to_owned))
            .set_num_cache_clusters(int(inputs, "num_cache_clusters"))
            .set_automatic_failover_enabled(inputs.get("automatic_failover").and_then(Value::as_bool))
            .set_port(int(inputs, "port"))
            .set_cache_subnet_group_name(text(inputs, "subnet_group_name").map(str::to_owned))
            .set_security_group_ids(strings(inputs, "security_group_ids"))
            .set_cache_parameter_group_name(text(inputs, "parameter_group_name").map(str::to_owned))
            .set_tags(Some(create_tags(urn, inputs)))
            .send()
            .await
            .map_err(|e| aws_error("creating the replication group", e, hint(inputs)))?;
        finish(id, async {
            wait_available(aws, id, |_| true).await?;
            self.read_created(aws, urn, id, inputs).await
        })
        .await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let Some(g) = describe(aws, id).await? else { return Ok(None) };
        let tags = match g.arn() {
            Some(arn) => list_tags(aws, arn).await?,
            None => Vec::new(),
        };
        let mut found = observe(aws, urn, &g, tags).await?;
        keep_unreported(&mut found.inputs, recorded, UNREPORTED);
        Ok(Some(found))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        check_nodes(new)?;
        let Some(current) = describe(aws, id).await? else {
            return Err(ProviderError::not_found(format!("replication group {id} is gone (deleted outside Cairn? run refresh)")));
        };
        let changed = |key: &str| new.get(key).is_some() && old.get(key) != new.get(key);
        let failover = new.get("automatic_failover").and_then(Value::as_bool);
        let modify = || aws.elasticache.modify_replication_group().replication_group_id(id).apply_immediately(true);
        let modified = |e| aws_error("changing the replication group (ModifyReplicationGroup)", e, hint(new));

        // 1. Failover off first: AWS refuses to remove the last replica while it is on.
        if changed("automatic_failover") && failover == Some(false) {
            modify().automatic_failover_enabled(false).send().await.map_err(modified)?;
            wait_available(aws, id, |g| !failover_on(g)).await?;
        }
        // 2. Replicas: the count AWS takes excludes the primary.
        if let Some(nodes) = int(new, "num_cache_clusters").filter(|_| changed("num_cache_clusters")) {
            let before = int(old, "num_cache_clusters").unwrap_or(1);
            if nodes > before {
                aws.elasticache
                    .increase_replica_count()
                    .replication_group_id(id)
                    .new_replica_count(nodes - 1)
                    .apply_immediately(true)
                    .send()
                    .await
                    .map_err(|e| aws_error("adding replicas (IncreaseReplicaCount)", e, hint(new)))?;
            } else {
                aws.elasticache
                    .decrease_replica_count()
                    .replication_group_id(id)
                    .new_replica_count(nodes - 1)
                    .apply_immediately(true)
                    .send()
                    .await
                    .map_err(|e| aws_error("removing replicas (DecreaseReplicaCount)", e, hint(new)))?;
            }
            let wanted = usize::try_from(nodes).unwrap_or_default();
            wait_available(aws, id, |g| g.member_clusters().len() == wanted).await?;
        }
        // 3. A new node type, on its own: scaling is one operation.
        if let Some(node_type) = text(new, "node_type").filter(|_| changed("node_type")) {
            modify().cache_node_type(node_type).send().await.map_err(modified)?;
            wait_available(aws, id, |g| g.cache_node_type() == Some(node_type)).await?;
        }
        // 4. Everything else, failover on last (after any replicas were added).
        let others = ["description", "security_group_ids", "parameter_group_name"].into_iter().any(changed);
        let turn_on = changed("automatic_failover") && failover == Some(true);
        if others || turn_on {
            let pick = |key: &str| text(new, key).filter(|_| changed(key)).map(str::to_owned);
            modify()
                .set_replication_group_description(pick("description"))
                .set_security_group_ids(strings(new, "security_group_ids").filter(|_| changed("security_group_ids")))
                .set_cache_parameter_group_name(pick("parameter_group_name"))
                .set_automatic_failover_enabled(turn_on.then_some(true))
                .send()
                .await
                .map_err(modified)?;
            wait_available(aws, id, |g| !turn_on || failover_on(g)).await?;
        }
        retag(aws, urn, current.arn().unwrap_or_default(), old, new).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        match aws.elasticache.delete_replication_group().replication_group_id(id).retain_primary_cluster(false).send().await {
            Ok(_) => {}
            Err(e) if e.as_service_error().is_some_and(|s| s.is_replication_group_not_found_fault()) => return Ok(()),
            Err(e) => {
                // Already being deleted (an earlier run stopped waiting): wait again.
                let deleting = describe(aws, id).await.ok().flatten().is_some_and(|g| status(&g) == "deleting");
                if !deleting {
                    return Err(aws_error("deleting the replication group", e, hint(&Props::new())));
                }
            }
        }
        wait::until("deleted", BOUND, || async {
            Ok(match describe(aws, id).await? {
                None => Poll::Done(()),
                Some(g) => Poll::Waiting(status(&g).to_owned()),
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
                .describe_replication_groups()
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| aws_error("looking up replication groups", e, |_| None))?;
            // A group being deleted is on its way out, not a copy to adopt.
            for g in page.replication_groups().iter().filter(|g| status(g) != "deleting") {
                let Some(arn) = g.arn() else { continue };
                let tags = list_tags(aws, arn).await?;
                if tags::is_tagged(urn, tags.iter().map(|(k, v)| (k, v))) {
                    found.push(observe(aws, urn, g, tags).await?);
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
