//! `aws:elasticache:ReplicationGroup`: a Redis primary with up to five replicas and,
//! optionally, automatic failover (cluster mode disabled).
//!
//! The id, the port and the subnet group force a replacement. The description, node
//! type, number of nodes, automatic failover, parameter group, security groups and tags
//! change in place, and a new AUTH token is rotated in place; the encryption options
//! force a replacement. Each change waits until the group is `available` again before the
//! next, in an order AWS accepts: failover is turned off before replicas are removed and
//! on after they are added, and a new node type is applied on its own.

use async_trait::async_trait;
use aws_sdk_elasticache::types::{AutomaticFailoverStatus, ReplicationGroup as Group};
use cairn_sdk::provider::{schema_diff, DiffRequest, DiffResult};
use cairn_sdk::schema::Default;
use cairn_sdk::{CheckFailure, Decl, Observed, Props, ProviderError, Tags, Urn};
use serde_json::Value;

use super::cache_cluster::{check_node_type, CLUSTER_ID, MISSING as CLUSTER_MISSING};
use super::{changed, check_id, check_port, check_strings, create_tags, list_tags, node_hint, retag, Nodes, BOUND, DESCRIPTION};
use crate::error::{aws_error, no_hint, or_missing};
use crate::kind::{finish, paginate, Clients, Kind};
use crate::tags;
use crate::wait::{self, Poll};

cairn_sdk::resource! {
    /// A Redis replication group:
    /// `ReplicationGroup::new("sessions").node_type("cache.t3.micro").num_cache_clusters(2).automatic_failover(true)`.
    pub struct ReplicationGroup {
        token: "aws:elasticache:ReplicationGroup",
        schema: REPLICATION_GROUP,
        inputs: ReplicationGroupInputs,
        /// A declared replication group's outputs.
        handle: ReplicationGroupRef,
        validate: validate,
    }
    inputs {
        /// The group id: at most 40 lowercase letters, digits or hyphens, starting with a
        /// letter. By default `<logical name>-<7 hex digits>`, new on each replacement, which
        /// needs a logical name of at most 32 such characters (forces replacement).
        replication_group_id: String = auto_name().forces_replacement(),
        /// What it is for; `Managed by Cairn` when unset. Changed in place.
        description: String = default(Default::Str(DESCRIPTION)),
        /// The node type of every node, e.g. `cache.t3.micro`. Changed in place (the group
        /// is scaled).
        node_type: String = required(),
        /// The number of nodes, primary included: 1 to 6, 1 when unset. Changed in place
        /// (replicas are added or removed).
        num_cache_clusters: u32 = default(Default::Int(1)),
        /// Promote a replica when the primary fails; needs `num_cache_clusters` of 2 or more.
        /// Off when unset. Changed in place.
        automatic_failover: bool = default(Default::Bool(false)),
        /// The port Redis listens on; 6379 when unset (forces replacement).
        port: u16 = default(Default::Int(6379)).forces_replacement(),
        /// The cache subnet group to place it in, usually a
        /// [`SubnetGroup`](super::SubnetGroup)'s `name()` (forces replacement).
        subnet_group_name: String = computed().forces_replacement(),
        /// The VPC security groups; the VPC's default group when unset. Changed in place.
        security_group_ids: Vec<String> = computed(),
        /// The cache parameter group, e.g. `default.redis7`; AWS's default when unset.
        /// Changed in place.
        parameter_group_name: String = computed(),
        /// The Redis AUTH token clients must give, 16 to 128 printable characters without
        /// `@`, `"` or `/`; needs `transit_encryption`. A secret: sealed in plans and state,
        /// usually a [`Secret`](cairn_sdk::Secret) from the stack's configuration. A new
        /// token is changed in place as `auth_token_update` says; removing it forces
        /// replacement.
        auth_token: String = secret(),
        /// How a new `auth_token` replaces the old: `"rotate"` (the default; AWS accepts
        /// both until the next change, so clients move over without an outage) or
        /// `"set"` (only the new one is accepted at once: for a leaked token). Changed
        /// to `"set"` with the token kept, it ends a rotation: only the current token
        /// is accepted from then on.
        auth_token_update: String = default(Default::Str("rotate")),
        /// Encrypt traffic to and between the nodes (TLS). Off when unset (forces
        /// replacement).
        transit_encryption: bool = default(Default::Bool(false)).forces_replacement(),
        /// Encrypt the data on disk and in backups. Off when unset (forces replacement).
        at_rest_encryption: bool = default(Default::Bool(false)).forces_replacement(),
        /// Tags of your own (Cairn adds `Name`, `cairn:stack` and `cairn:urn`).
        tags: Tags,
    }
    outputs {
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
    check_auth_token(decl, out);
    crate::kind::one_of(decl, "auth_token_update", &["rotate", "set"], out);
}

/// The AUTH token's rules, where its plaintext is known (a sealed token is checked when
/// AWS gets it). A failure never quotes the token.
fn check_auth_token(decl: &Decl, out: &mut Vec<CheckFailure>) {
    let Some(token) = decl.value("auth_token") else { return };
    if decl.value("transit_encryption").and_then(Value::as_bool) != Some(true) {
        out.push(CheckFailure::new(
            "transit_encryption",
            decl.value("transit_encryption"),
            "be true when auth_token is set: AWS takes an AUTH token only over TLS; add .transit_encryption(true)",
        ));
    }
    if let Some(token) = token.as_str() {
        let allowed = |c: char| c.is_ascii_graphic() && !matches!(c, '@' | '"' | '/');
        if !(16..=128).contains(&token.len()) || !token.chars().all(allowed) {
            // The engine shows a secret's value as [secret] in the error.
            out.push(CheckFailure::new("auth_token", Some(&Value::from(token)), "be 16 to 128 printable ASCII characters other than @, \" and /"));
        }
    }
}

/// The replication group's operations.
#[derive(Debug)]
pub(crate) struct ReplicationGroupKind;

const MISSING: &[&str] = &["ReplicationGroupNotFoundFault"];

fn hint(code: &str, want: &ReplicationGroupInputs) -> Option<String> {
    let (subnet_group_name, parameter_group_name, node_type) = (want.subnet_group_name.as_deref(), want.parameter_group_name.as_deref(), want.node_type.as_deref());
    node_hint(code, Nodes { what: "replication group", id: ("replication_group_id", want.replication_group_id.as_deref()), subnet_group_name, parameter_group_name, node_type })
}

/// The group with id `id`, if it exists.
async fn describe(aws: &Clients, id: &str) -> Result<Option<Group>, ProviderError> {
    let got = aws.elasticache.describe_replication_groups().replication_group_id(id).send().await;
    Ok(or_missing(got, MISSING, "reading the replication group", no_hint)?.and_then(|out| out.replication_groups().first().cloned()))
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
async fn wait_available(aws: &Clients, id: &str, settled: impl Fn(&Group) -> bool) -> Result<Group, ProviderError> {
    wait::until("available", BOUND, || async {
        match describe(aws, id).await? {
            None => Err(ProviderError::not_found(format!("replication group {id} disappeared while Cairn waited for it"))),
            Some(g) if status(&g) == "available" && !pending(&g) && settled(&g) => Ok(Poll::Done(g)),
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

/// A node count as AWS takes it.
fn count(nodes: Option<u32>) -> Option<i32> {
    nodes.and_then(|n| i32::try_from(n).ok())
}

/// The group as the inputs and outputs Cairn records. What DescribeReplicationGroups
/// does not say (subnet group, security groups, parameter group) is read from the
/// primary's cache cluster. Inputs a describe may leave out are kept as `recorded`: the
/// subnet group, security groups and parameter group when the endpoint has no such
/// cluster (moto), the port while AWS has no primary endpoint.
async fn observe(
    aws: &Clients,
    urn: &Urn,
    g: &Group,
    tags: Vec<(String, String)>,
    recorded: &ReplicationGroupInputs,
) -> Result<Observed, ProviderError> {
    let id = g.replication_group_id().unwrap_or_default();
    let primary = g.node_groups().first().and_then(|n| n.primary_endpoint());
    let primary_cluster = g
        .node_groups()
        .first()
        .and_then(|n| n.node_group_members().iter().find(|m| m.current_role() == Some("primary")))
        .and_then(|m| m.cache_cluster_id())
        .or_else(|| g.member_clusters().first().map(String::as_str));
    let mut cluster = None;
    if let Some(member) = primary_cluster {
        let got = aws.elasticache.describe_cache_clusters().cache_cluster_id(member).send().await;
        cluster = or_missing(got, CLUSTER_MISSING, "reading the replication group's primary", no_hint)?
            .and_then(|out| out.cache_clusters().first().cloned());
    }
    let groups: Vec<String> = cluster
        .iter()
        .flat_map(|c| c.security_groups())
        .filter_map(|s| s.security_group_id())
        .map(str::to_owned)
        .collect();
    let inputs = ReplicationGroupInputs {
        replication_group_id: Some(id.to_owned()),
        description: Some(g.description().unwrap_or_default().to_owned()),
        node_type: g.cache_node_type().map(str::to_owned),
        num_cache_clusters: u32::try_from(g.member_clusters().len()).ok(),
        automatic_failover: Some(failover_on(g)),
        port: primary.and_then(|e| e.port()).and_then(|p| u16::try_from(p).ok()).or(recorded.port),
        subnet_group_name: cluster
            .as_ref()
            .and_then(|c| c.cache_subnet_group_name())
            .map(str::to_owned)
            .or_else(|| recorded.subnet_group_name.clone()),
        security_group_ids: Some(groups).filter(|g| !g.is_empty()).or_else(|| recorded.security_group_ids.clone()),
        parameter_group_name: cluster
            .as_ref()
            .and_then(|c| c.cache_parameter_group())
            .and_then(|p| p.cache_parameter_group_name())
            .map(str::to_owned)
            .or_else(|| recorded.parameter_group_name.clone()),
        // AWS never shows the token, only whether there is one.
        auth_token: recorded.auth_token.clone().filter(|_| g.auth_token_enabled() == Some(true)),
        // How Cairn changes it: its own setting.
        auth_token_update: recorded.auth_token_update.clone(),
        transit_encryption: Some(g.transit_encryption_enabled().unwrap_or(false)),
        at_rest_encryption: Some(g.at_rest_encryption_enabled().unwrap_or(false)),
        tags: tags::observed(urn, tags),
    };
    let mut outputs = vec![("id", Value::from(id)), ("arn", Value::from(g.arn().unwrap_or_default())), ("status", Value::from(status(g)))];
    if let Some(address) = primary.and_then(|e| e.address()) {
        outputs.push(("primary_endpoint_address", Value::from(address)));
    }
    if let Some(port) = primary.and_then(|e| e.port()) {
        outputs.push(("primary_endpoint_port", Value::from(port)));
    }
    Ok(Observed::new(id, inputs.to_props(), outputs))
}

/// Checks the node count and failover once every value is known, before any call.
fn check_nodes(want: &ReplicationGroupInputs) -> Result<(), ProviderError> {
    match nodes_problem(want.num_cache_clusters.map(i64::from), want.automatic_failover) {
        Some((key, expected)) => Err(ProviderError::failed(format!("{key} must {expected}"))),
        None => Ok(()),
    }
}

#[async_trait]
impl Kind for ReplicationGroupKind {
    /// The schema's diff, except that a port missing from state is not a change (see
    /// the cache cluster's).
    ///
    /// Nor are the encryption options missing from a state recorded before Cairn had
    /// them, when they stay off, nor `auth_token_update` when it is the default.
    /// Removing the AUTH token forces replacement.
    fn diff(&self, req: &DiffRequest<'_>) -> DiffResult {
        let mut diff = schema_diff(req);
        let off_before_recorded = |c: &cairn_sdk::PropertyDiff| {
            matches!(c.name.as_str(), "transit_encryption" | "at_rest_encryption") && c.old.is_none() && c.new == Some(Value::Bool(false))
                || c.name == "auth_token_update" && c.old.is_none() && c.new == Some(Value::from("rotate"))
        };
        let port_unrecorded = |c: &cairn_sdk::PropertyDiff| c.name == "port" && c.old.is_none();
        diff.changes.retain(|c| !port_unrecorded(c) && !off_before_recorded(c));
        for c in diff.changes.iter_mut().filter(|c| c.name == "auth_token" && c.known && c.new.is_none()) {
            c.replaces = true;
        }
        diff
    }

    async fn create(&self, aws: &Clients, urn: &Urn, inputs: &Props) -> Result<Observed, ProviderError> {
        let want = ReplicationGroupInputs::from_props(inputs)?;
        check_nodes(&want)?;
        let id = want.replication_group_id.as_deref().unwrap_or_default();
        aws.once
            .elasticache
            .create_replication_group()
            .replication_group_id(id)
            .replication_group_description(want.description.as_deref().unwrap_or(DESCRIPTION))
            .engine("redis")
            .set_cache_node_type(want.node_type.clone())
            .set_num_cache_clusters(count(want.num_cache_clusters))
            .set_automatic_failover_enabled(want.automatic_failover)
            .set_port(want.port.map(i32::from))
            .set_cache_subnet_group_name(want.subnet_group_name.clone())
            .set_security_group_ids(want.security_group_ids.clone())
            .set_cache_parameter_group_name(want.parameter_group_name.clone())
            .set_auth_token(want.auth_token.clone())
            .set_transit_encryption_enabled(want.transit_encryption)
            .set_at_rest_encryption_enabled(want.at_rest_encryption)
            .set_tags(Some(create_tags(urn, want.tags.as_ref())))
            .send()
            .await
            .map_err(|e| aws_error("creating the replication group", e, |c| hint(c, &want)))?;
        finish(id, async {
            // The wait's last look is the group as it now is, and the tags are the ones
            // just set: only its primary is read (for its security groups). The group
            // is at the end of the longest branch of the shop's first up.
            let g = wait_available(aws, id, |_| true).await?;
            let tags = tags::wanted(urn, want.tags.as_ref()).into_iter().collect();
            observe(aws, urn, &g, tags, &want).await
        })
        .await
    }

    async fn read(&self, aws: &Clients, urn: &Urn, id: &str, recorded: &Props) -> Result<Option<Observed>, ProviderError> {
        let Some(g) = describe(aws, id).await? else { return Ok(None) };
        let recorded = ReplicationGroupInputs::from_props(recorded)?;
        let tags = match g.arn() {
            Some(arn) => list_tags(aws, arn).await?,
            None => Vec::new(),
        };
        Ok(Some(observe(aws, urn, &g, tags, &recorded).await?))
    }

    async fn update(&self, aws: &Clients, urn: &Urn, id: &str, old: &Props, new: &Props) -> Result<Observed, ProviderError> {
        let (old, want) = (ReplicationGroupInputs::from_props(old)?, ReplicationGroupInputs::from_props(new)?);
        check_nodes(&want)?;
        let Some(current) = describe(aws, id).await? else {
            return Err(ProviderError::not_found(format!("replication group {id} is gone (deleted outside Cairn? run refresh)")));
        };
        let failover = changed(&old.automatic_failover, &want.automatic_failover);
        let modify = || aws.elasticache.modify_replication_group().replication_group_id(id).apply_immediately(true);
        let modified = |e| aws_error("changing the replication group (ModifyReplicationGroup)", e, |c| hint(c, &want));

        // 1. Failover off first: AWS refuses to remove the last replica while it is on.
        if failover == Some(false) {
            modify().automatic_failover_enabled(false).send().await.map_err(modified)?;
            wait_available(aws, id, |g| !failover_on(g)).await?;
        }
        // 2. Replicas: the count AWS takes excludes the primary.
        if let Some(nodes) = count(changed(&old.num_cache_clusters, &want.num_cache_clusters)) {
            let before = count(old.num_cache_clusters).unwrap_or(1);
            if nodes > before {
                aws.elasticache
                    .increase_replica_count()
                    .replication_group_id(id)
                    .new_replica_count(nodes - 1)
                    .apply_immediately(true)
                    .send()
                    .await
                    .map_err(|e| aws_error("adding replicas (IncreaseReplicaCount)", e, |c| hint(c, &want)))?;
            } else {
                aws.elasticache
                    .decrease_replica_count()
                    .replication_group_id(id)
                    .new_replica_count(nodes - 1)
                    .apply_immediately(true)
                    .send()
                    .await
                    .map_err(|e| aws_error("removing replicas (DecreaseReplicaCount)", e, |c| hint(c, &want)))?;
            }
            let wanted = usize::try_from(nodes).unwrap_or_default();
            wait_available(aws, id, |g| g.member_clusters().len() == wanted).await?;
        }
        // 3. A new node type, on its own: scaling is one operation.
        if let Some(node_type) = changed(&old.node_type, &want.node_type) {
            modify().cache_node_type(&node_type).send().await.map_err(modified)?;
            wait_available(aws, id, |g| g.cache_node_type() == Some(node_type.as_str())).await?;
        }
        // 4. Everything else, failover on last (after any replicas were added).
        let description = changed(&old.description, &want.description);
        let security_group_ids = changed(&old.security_group_ids, &want.security_group_ids);
        let parameter_group_name = changed(&old.parameter_group_name, &want.parameter_group_name);
        let others = description.is_some() || security_group_ids.is_some() || parameter_group_name.is_some();
        let turn_on = failover == Some(true);
        if others || turn_on {
            modify()
                .set_replication_group_description(description)
                .set_security_group_ids(security_group_ids)
                .set_cache_parameter_group_name(parameter_group_name)
                .set_automatic_failover_enabled(turn_on.then_some(true))
                .send()
                .await
                .map_err(modified)?;
            wait_available(aws, id, |g| !turn_on || failover_on(g)).await?;
        }
        // 5. A new AUTH token: rotated, so clients with the old one keep working until
        //    they have the new one, or set, so only the new one works.
        let set = want.auth_token_update.as_deref() == Some("set");
        let ends_rotation = set && old.auth_token_update.as_deref() != Some("set") && old.auth_token == want.auth_token;
        if let Some(token) = changed(&old.auth_token, &want.auth_token).or_else(|| want.auth_token.clone().filter(|_| ends_rotation)) {
            use aws_sdk_elasticache::types::AuthTokenUpdateStrategyType as Strategy;
            let strategy = if set { Strategy::Set } else { Strategy::Rotate };
            modify()
                .auth_token(token)
                .auth_token_update_strategy(strategy)
                .send()
                .await
                .map_err(modified)?;
            wait_available(aws, id, |_| true).await?;
        }
        retag(aws, urn, current.arn().unwrap_or_default(), old.tags.as_ref(), want.tags.as_ref()).await?;
        self.read_updated(aws, urn, id, new).await
    }

    async fn delete(&self, aws: &Clients, _urn: &Urn, id: &str) -> Result<(), ProviderError> {
        let asked = aws.elasticache.delete_replication_group().replication_group_id(id).retain_primary_cluster(false).send().await;
        let hint = |c: &str| hint(c, &ReplicationGroupInputs::default());
        wait::deleted(asked, MISSING, "deleting the replication group", hint, BOUND, "deleting", || async {
            Ok(describe(aws, id).await?.map(|g| status(&g).to_owned()))
        })
        .await
    }

    async fn lookup(&self, aws: &Clients, urn: &Urn, created_with: &Props) -> Result<Vec<Observed>, ProviderError> {
        // What AWS does not show (the token) is what the create was sent.
        let sent = ReplicationGroupInputs::from_props(created_with).unwrap_or_default();
        let groups = paginate(|marker| async move {
            let page = aws
                .elasticache
                .describe_replication_groups()
                .set_marker(marker)
                .send()
                .await
                .map_err(|e| aws_error("looking up replication groups", e, no_hint))?;
            Ok((page.replication_groups().to_vec(), page.marker().map(str::to_owned)))
        })
        .await?;
        let mut found = Vec::new();
        // A group being deleted is on its way out, not a copy to adopt.
        for g in groups.iter().filter(|g| status(g) != "deleting") {
            let Some(arn) = g.arn() else { continue };
            let tags = list_tags(aws, arn).await?;
            if tags::is_tagged(urn, tags.iter().map(|(k, v)| (k, v))) {
                found.push(observe(aws, urn, g, tags, &sent).await?);
            }
        }
        Ok(found)
    }
}
