//! ElastiCache subnet groups, cache clusters and replication groups against the local
//! AWS, every effect checked with ElastiCache's own describe calls.
//!
//! moto 5.2.5 lacks ModifyCacheCluster, ModifyCacheSubnetGroup, DeleteCacheSubnetGroup
//! and Increase/DecreaseReplicaCount (it answers HTTP 500 with an HTML page), reports no
//! port for a cache cluster, makes one member per replication group whatever
//! NumCacheClusters says, and never finishes deleting a cache cluster or a replication
//! group (`deleting` forever). These tests assert that Cairn says so clearly and within a
//! bound, instead of pretending or hanging.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_elasticache::types::{AutomaticFailoverStatus, CacheCluster as Cluster, CacheSubnetGroup, ReplicationGroup as Group};
use cairn_aws::ec2::{SecurityGroup, Subnet, Vpc};
use cairn_aws::elasticache::{CacheCluster, ReplicationGroup, SubnetGroup};
use cairn_sdk::{Action, ApplyReport, Provider as _, ResourceExt, Stack, StackState, StepOp, StepReport, StepStatus, Timeouts, Urn};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

mod common;
use common::drift_of;

const SUBNET_GROUP: &str = "aws:elasticache:SubnetGroup";
const CLUSTER: &str = "aws:elasticache:CacheCluster";
const REPLICATION_GROUP: &str = "aws:elasticache:ReplicationGroup";

/// How long an operation moto lacks may take to fail: the client retries a 500 twice,
/// with backoff (measured: 1.5 to 3 s).
const UNSUPPORTED_WITHIN: Duration = Duration::from_secs(20);

/// Cairn's own bound on waits in this test binary, in seconds: what ends the wait for a
/// delete moto never finishes when the resource has no shorter custom timeout.
const WAIT_BOUND: &str = "5";

async fn aws() -> (cairn_aws::Provider, aws_sdk_elasticache::Client) {
    cairn_testkit::moto().configure_env();
    // Once, before any provider waits; every test here wants the same.
    static BOUNDED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BOUNDED.get_or_init(|| std::env::set_var("CAIRN_AWS_WAIT_TIMEOUT", WAIT_BOUND));
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    (cairn_aws::Provider::new(&config), aws_sdk_elasticache::Client::new(&config))
}

async fn subnet_group(ec: &aws_sdk_elasticache::Client, name: &str) -> Option<CacheSubnetGroup> {
    ec.describe_cache_subnet_groups().cache_subnet_group_name(name).send().await.ok()?.cache_subnet_groups().first().cloned()
}

async fn cluster(ec: &aws_sdk_elasticache::Client, id: &str) -> Option<Cluster> {
    ec.describe_cache_clusters().cache_cluster_id(id).send().await.ok()?.cache_clusters().first().cloned()
}

async fn replication_group(ec: &aws_sdk_elasticache::Client, id: &str) -> Option<Group> {
    ec.describe_replication_groups().replication_group_id(id).send().await.ok()?.replication_groups().first().cloned()
}

async fn tags(ec: &aws_sdk_elasticache::Client, arn: &str) -> HashMap<String, String> {
    let out = ec.list_tags_for_resource().resource_name(arn).send().await.unwrap();
    out.tag_list().iter().map(|t| (t.key().unwrap().to_owned(), t.value().unwrap_or_default().to_owned())).collect()
}

fn id_of(state: &StackState, ty: &str, name: &str) -> String {
    state.resource(&Urn::new(&state.stack, ty, name)).unwrap_or_else(|| panic!("{name} in state")).id.clone()
}

fn outputs(state: &StackState, ty: &str, name: &str) -> Value {
    let r = state.resource(&Urn::new(&state.stack, ty, name)).unwrap_or_else(|| panic!("{name} in state"));
    serde_json::to_value(&r.outputs).unwrap()
}

fn step<'a>(report: &'a ApplyReport, name: &str, op: StepOp) -> &'a StepReport {
    report.steps.iter().find(|s| s.urn.name() == name && s.op == op).unwrap_or_else(|| panic!("no {op:?} step of {name}: {:?}", report.steps))
}

/// A failed step's error, as [`shown`] shows it.
fn failed(error: &str) -> Option<String> {
    Some(error.to_owned())
}

/// A step's error as the user sees it; `None` if it did not fail.
fn shown(status: &StepStatus) -> Option<String> {
    status.error().map(ToString::to_string)
}

fn short_delete() -> Timeouts {
    Timeouts { delete: Some(Duration::from_secs(3)), ..Timeouts::default() }
}

// ---------------------------------------------------------------------------------
// Subnet groups.

#[derive(Clone, Default, Serialize, Deserialize)]
struct Net {
    both: bool,
    team: String,
    name: Option<String>,
}

fn net(stack: &str, provider: cairn_aws::Provider) -> Stack<Net> {
    Stack::<Net>::new(stack).provider(provider).program(|cx, n| {
        let vpc = cx.add(Vpc::new("vpc").cidr_block("10.30.0.0/16"));
        let a = cx.add(Subnet::new("a").vpc_id(vpc.id()).cidr_block("10.30.1.0/24").availability_zone("us-east-1a"));
        let b = cx.add(Subnet::new("b").vpc_id(vpc.id()).cidr_block("10.30.2.0/24").availability_zone("us-east-1b"));
        let subnets = if n.both { vec![a.id(), b.id()] } else { vec![a.id()] };
        let mut group = SubnetGroup::new("cache").subnet_ids(subnets).tags([("team", n.team.as_str())]);
        if let Some(name) = &n.name {
            group = group.name(name.as_str());
        }
        cx.add(group);
        Ok(())
    })
}

#[tokio::test]
async fn a_subnet_group_is_created_retagged_replaced_and_moto_lacks_the_rest() {
    let (provider, ec) = aws().await;
    let stack = net("ec-subnets", provider);

    // Create.
    let first = Net { both: false, team: "cache".into(), name: None };
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&first).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let name = id_of(&state, SUBNET_GROUP, "cache");
    assert!(name.starts_with("cache-") && name.len() == "cache-".len() + 7, "an auto-name: {name}");
    let (a, vpc) = (id_of(&state, "aws:ec2:Subnet", "a"), id_of(&state, "aws:ec2:Vpc", "vpc"));
    let g = subnet_group(&ec, &name).await.expect("the subnet group exists");
    assert_eq!(g.cache_subnet_group_description(), Some("Managed by Cairn"));
    assert_eq!(g.subnets().iter().filter_map(|s| s.subnet_identifier()).collect::<Vec<_>>(), [a.as_str()]);
    assert_eq!(outputs(&state, SUBNET_GROUP, "cache")["vpc_id"], json!(vpc));
    let arn = g.arn().unwrap().to_owned();
    assert_eq!(outputs(&state, SUBNET_GROUP, "cache")["arn"], json!(arn));
    let found = tags(&ec, &arn).await;
    assert_eq!(found.get("cairn:urn").map(String::as_str), Some("urn:cairn:ec-subnets::aws:elasticache:SubnetGroup::cache"));
    assert_eq!((found.get("Name").map(String::as_str), found.get("team").map(String::as_str)), (Some("cache"), Some("cache")));

    // Read back and looked up: no drift, exactly this group.
    let refreshed = stack.preview_refresh(&state).await.unwrap();
    assert!(refreshed.drift.is_empty(), "{:?}", refreshed.drift);
    let provider = cairn_aws::Provider::from_env().await;
    let found = provider.lookup(&Urn::new("ec-subnets", SUBNET_GROUP, "cache"), &Default::default()).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [name.as_str()]);

    // Tags change in place.
    let retagged = Net { team: "platform".into(), ..first.clone() };
    let plan = session.preview(&retagged).unwrap();
    assert_eq!(plan.changed().map(|c| (c.urn.name(), c.action)).collect::<Vec<_>>(), [("cache", Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(tags(&ec, &arn).await.get("team").map(String::as_str), Some("platform"));

    // New subnets are an in-place change, which moto does not implement: a clear
    // failure, quickly, and nothing recorded.
    let wider = Net { both: true, ..retagged.clone() };
    let plan = session.preview(&wider).unwrap();
    assert_eq!(plan.changed().map(|c| (c.urn.name(), c.action)).collect::<Vec<_>>(), [("cache", Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    let s = step(&report, "cache", StepOp::Update);
    assert_eq!(
        shown(&s.status),
        failed("aws:elasticache:SubnetGroup 'cache': the AWS endpoint does not implement changing the subnet group (ModifyCacheSubnetGroup): it answered HTTP 500 with an HTML page (a local AWS answers so too when it fails on an operation it has; its log tells which)")
    );
    eprintln!("ModifyCacheSubnetGroup failed after {:?}", s.elapsed);
    assert!(s.elapsed < UNSUPPORTED_WITHIN, "{:?}", s.elapsed);
    assert!(report.state.pending.is_empty(), "a refusal, not an uncertain step");
    let state = report.state;
    assert_eq!(subnet_group(&ec, &name).await.unwrap().subnets().len(), 1, "unchanged");
    assert!(stack.preview(&wider, &state).unwrap().has_changes(), "still to do");

    // The name forces a replacement: the new group is made; deleting the old one is
    // another operation moto lacks, so the old copy stays in state, to delete later.
    let renamed = Net { name: Some("ec-subnets-cache".into()), ..retagged.clone() };
    let plan = session.preview(&renamed).unwrap();
    let change = plan.changes.iter().find(|c| c.urn.name() == "cache").unwrap();
    assert_eq!((change.action, change.replace_reasons.clone()), (Action::Replace, vec!["name".to_owned()]));
    let report = session.apply(&plan).await.unwrap();
    assert_eq!(step(&report, "cache", StepOp::CreateReplacement).status, StepStatus::Done);
    let s = step(&report, "cache", StepOp::DeleteReplaced);
    assert_eq!(
        shown(&s.status),
        failed("aws:elasticache:SubnetGroup 'cache': the AWS endpoint does not implement deleting the subnet group (DeleteCacheSubnetGroup): it answered HTTP 500 with an HTML page (a local AWS answers so too when it fails on an operation it has; its log tells which)")
    );
    eprintln!("DeleteCacheSubnetGroup failed after {:?}", s.elapsed);
    assert!(s.elapsed < UNSUPPORTED_WITHIN, "{:?}", s.elapsed);
    let state = report.state;
    assert!(subnet_group(&ec, "ec-subnets-cache").await.is_some(), "the replacement exists");
    assert!(subnet_group(&ec, &name).await.is_some(), "the old one too: moto cannot delete it");
    let copies: Vec<_> = state.resources.iter().filter(|r| r.urn.name() == "cache").map(|r| (r.id.clone(), r.pending_delete)).collect();
    assert_eq!(copies.len(), 2, "{copies:?}");
    assert!(copies.contains(&(name.clone(), true)) && copies.contains(&("ec-subnets-cache".to_owned(), false)), "{copies:?}");

    // Destroy: the subnet groups cannot be deleted here, so the subnets and the VPC
    // they sit in are left too; each says why.
    let report = session.destroy().await.unwrap();
    let deletes: Vec<_> = report.steps.iter().filter(|s| s.urn.name() == "cache").map(|s| s.status.clone()).collect();
    assert_eq!(deletes.len(), 2);
    assert!(deletes.iter().all(|s| matches!(s, StepStatus::Failed { error } if error.to_string().contains("does not implement deleting the subnet group"))), "{deletes:?}");
    assert!(report.steps.iter().any(|s| s.urn.name() == "vpc" && matches!(s.status, StepStatus::Skipped { .. })));
}

// ---------------------------------------------------------------------------------
// Cache clusters.

#[derive(Clone, Serialize, Deserialize)]
struct Cache {
    node_type: String,
    port: u16,
    team: String,
}

impl Default for Cache {
    fn default() -> Self {
        Cache { node_type: "cache.t3.micro".into(), port: 6379, team: "web".into() }
    }
}

fn cache(stack: &str, provider: cairn_aws::Provider) -> Stack<Cache> {
    Stack::<Cache>::new(stack).provider(provider).program(|cx, c| {
        let vpc = cx.add(Vpc::new("vpc").cidr_block("10.31.0.0/16"));
        let a = cx.add(Subnet::new("a").vpc_id(vpc.id()).cidr_block("10.31.1.0/24").availability_zone("us-east-1a"));
        let net = cx.add(SubnetGroup::new("sessions-net").subnet_ids([a.id()]));
        cx.add(
            CacheCluster::new("sessions")
                .node_type(c.node_type.as_str())
                .port(c.port)
                .subnet_group_name(net.name())
                .engine_version("7.0")
                .tags([("team", c.team.as_str())])
                .timeouts(short_delete()),
        );
        Ok(())
    })
}

#[tokio::test]
async fn a_cache_cluster_is_created_retagged_and_replaced_and_moto_never_finishes_a_delete() {
    let (provider, ec) = aws().await;
    let stack = cache("ec-cluster", provider);

    // Create: moto has it available at once.
    let first = Cache::default();
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&first).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let id = id_of(&state, CLUSTER, "sessions");
    assert!(id.starts_with("sessions-") && id.len() == "sessions-".len() + 7, "an auto-name: {id}");
    let c = cluster(&ec, &id).await.expect("the cluster exists");
    assert_eq!((c.cache_cluster_status(), c.engine(), c.engine_version()), (Some("available"), Some("redis"), Some("7.0")));
    assert_eq!((c.cache_node_type(), c.num_cache_nodes()), (Some("cache.t3.micro"), Some(1)));
    assert_eq!(c.cache_subnet_group_name(), Some(id_of(&state, SUBNET_GROUP, "sessions-net").as_str()));
    let arn = c.arn().unwrap().to_owned();
    let out = outputs(&state, CLUSTER, "sessions");
    assert_eq!((&out["id"], &out["arn"], &out["status"]), (&json!(id), &json!(arn), &json!("available")));
    assert_eq!(out.get("endpoint_address"), None, "moto reports no endpoint for a cache cluster");
    let found = tags(&ec, &arn).await;
    assert_eq!(found.get("cairn:urn").map(String::as_str), Some("urn:cairn:ec-cluster::aws:elasticache:CacheCluster::sessions"));
    assert_eq!((found.get("Name").map(String::as_str), found.get("team").map(String::as_str)), (Some("sessions"), Some("web")));
    assert!(!stack.preview(&first, &state).unwrap().has_changes(), "a second up changes nothing");

    // Looked up by tag: exactly this cluster.
    let provider = cairn_aws::Provider::from_env().await;
    let found = provider.lookup(&Urn::new("ec-cluster", CLUSTER, "sessions"), &Default::default()).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [id.as_str()]);

    // Read back: moto does not report the port; refresh keeps the recorded one, so
    // there is no drift and no replacement.
    let refreshed = stack.preview_refresh(&state).await.unwrap();
    assert_eq!(drift_of(&refreshed), []);
    assert!(!stack.preview(&first, &refreshed.state).unwrap().has_changes());

    // Tags change in place.
    let retagged = Cache { team: "platform".into(), ..first.clone() };
    let plan = session.preview(&retagged).unwrap();
    assert_eq!(plan.changed().map(|c| (c.urn.name(), c.action)).collect::<Vec<_>>(), [("sessions", Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(tags(&ec, &arn).await.get("team").map(String::as_str), Some("platform"));

    // A new node type is an in-place ModifyCacheCluster, which moto lacks.
    let bigger = Cache { node_type: "cache.t3.small".into(), ..retagged.clone() };
    let plan = session.preview(&bigger).unwrap();
    assert_eq!(plan.changed().map(|c| (c.urn.name(), c.action)).collect::<Vec<_>>(), [("sessions", Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    let s = step(&report, "sessions", StepOp::Update);
    assert_eq!(
        shown(&s.status),
        failed("aws:elasticache:CacheCluster 'sessions': the AWS endpoint does not implement changing the cache cluster (ModifyCacheCluster): it answered HTTP 500 with an HTML page (a local AWS answers so too when it fails on an operation it has; its log tells which)")
    );
    eprintln!("ModifyCacheCluster failed after {:?}", s.elapsed);
    assert!(s.elapsed < UNSUPPORTED_WITHIN, "{:?}", s.elapsed);
    assert_eq!(cluster(&ec, &id).await.unwrap().cache_node_type(), Some("cache.t3.micro"), "unchanged");

    // The port forces a replacement. The new cluster is made; moto never finishes
    // deleting the old one, so the resource's 3 s delete timeout ends the wait, and
    // the delete stays pending for the next run to settle.
    let moved = Cache { port: 6380, ..retagged.clone() };
    let plan = session.preview(&moved).unwrap();
    let change = plan.changes.iter().find(|c| c.urn.name() == "sessions").unwrap();
    assert_eq!((change.action, change.replace_reasons.clone()), (Action::Replace, vec!["port".to_owned()]));
    let report = session.apply(&plan).await.unwrap();
    assert_eq!(step(&report, "sessions", StepOp::CreateReplacement).status, StepStatus::Done);
    let s = step(&report, "sessions", StepOp::DeleteReplaced);
    assert_eq!(shown(&s.status), failed("aws:elasticache:CacheCluster 'sessions': timed out after 3s (custom timeout) (the request may have taken effect)"));
    assert!(s.elapsed < Duration::from_secs(10), "{:?}", s.elapsed);
    assert_eq!(report.state.pending.len(), 1, "the delete may yet finish: settled next run");
    let state = report.state;
    let new_id = id_of(&state, CLUSTER, "sessions");
    assert_ne!(new_id, id);
    assert_eq!(cluster(&ec, &new_id).await.unwrap().cache_cluster_status(), Some("available"));
    assert_eq!(cluster(&ec, &id).await.unwrap().cache_cluster_status(), Some("deleting"));

    // Destroy: the resource's delete timeout is kept in state, so it bounds each delete
    // (both copies) even though destroy does not run the program; never a hang.
    let started = std::time::Instant::now();
    let report = session.destroy().await.unwrap();
    let deletes: Vec<_> = report.steps.iter().filter(|s| s.urn.name() == "sessions").map(|s| shown(&s.status)).collect();
    let stuck = failed("aws:elasticache:CacheCluster 'sessions': timed out after 3s (custom timeout) (the request may have taken effect)");
    assert_eq!(deletes, [stuck.clone(), stuck]);
    eprintln!("destroying two never-deleted cache clusters took {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(20), "{:?}", started.elapsed());
    assert!(report.steps.iter().any(|s| s.urn.name() == "sessions-net" && matches!(s.status, StepStatus::Skipped { .. })));
    assert_eq!(cluster(&ec, &id).await.unwrap().cache_cluster_status(), Some("deleting"));
    assert_eq!(cluster(&ec, &new_id).await.unwrap().cache_cluster_status(), Some("deleting"));
}

// ---------------------------------------------------------------------------------
// Replication groups.

#[derive(Clone, Serialize, Deserialize)]
struct Redis {
    node_type: String,
    description: String,
    nodes: u32,
    failover: bool,
    port: u16,
}

impl Default for Redis {
    fn default() -> Self {
        Redis { node_type: "cache.t3.micro".into(), description: "orders cache".into(), nodes: 2, failover: true, port: 6390 }
    }
}

fn redis(stack: &str, provider: cairn_aws::Provider) -> Stack<Redis> {
    Stack::<Redis>::new(stack).provider(provider).program(|cx, r| {
        cx.add(
            ReplicationGroup::new("orders")
                .node_type(r.node_type.as_str())
                .description(r.description.as_str())
                .num_cache_clusters(r.nodes)
                .automatic_failover(r.failover)
                .port(r.port)
                .tags([("team", "shop")])
                .timeouts(short_delete()),
        );
        Ok(())
    })
}

#[tokio::test]
async fn a_replication_group_is_created_modified_in_place_and_replaced() {
    let (provider, ec) = aws().await;
    let stack = redis("ec-replication", provider);

    // Create.
    let first = Redis::default();
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&first).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let id = id_of(&state, REPLICATION_GROUP, "orders");
    assert!(id.starts_with("orders-") && id.len() == "orders-".len() + 7, "an auto-name: {id}");
    let g = replication_group(&ec, &id).await.expect("the group exists");
    assert_eq!((g.status(), g.description(), g.cache_node_type()), (Some("available"), Some("orders cache"), Some("cache.t3.micro")));
    assert_eq!(g.automatic_failover(), Some(&AutomaticFailoverStatus::Enabled));
    let primary = g.node_groups()[0].primary_endpoint().unwrap();
    assert_eq!(primary.port(), Some(6390));
    assert_eq!(g.member_clusters().len(), 1, "moto makes one member whatever NumCacheClusters says");
    let arn = g.arn().unwrap().to_owned();
    let out = outputs(&state, REPLICATION_GROUP, "orders");
    assert_eq!((&out["id"], &out["arn"], &out["status"]), (&json!(id), &json!(arn), &json!("available")));
    assert_eq!((&out["primary_endpoint_address"], &out["primary_endpoint_port"]), (&json!(primary.address().unwrap()), &json!(6390)));
    let found = tags(&ec, &arn).await;
    assert_eq!(found.get("cairn:urn").map(String::as_str), Some("urn:cairn:ec-replication::aws:elasticache:ReplicationGroup::orders"));
    assert_eq!((found.get("Name").map(String::as_str), found.get("team").map(String::as_str)), (Some("orders"), Some("shop")));
    assert!(!stack.preview(&first, &state).unwrap().has_changes(), "a second up changes nothing");

    // Looked up by tag; read back, where moto's single member shows as drift.
    let provider = cairn_aws::Provider::from_env().await;
    let found = provider.lookup(&Urn::new("ec-replication", REPLICATION_GROUP, "orders"), &Default::default()).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [id.as_str()]);
    let refreshed = stack.preview_refresh(&state).await.unwrap();
    assert_eq!(drift_of(&refreshed), [("orders".to_owned(), "num_cache_clusters".to_owned(), json!(2), json!(1))]);

    // A new node type is modified in place, on the same group.
    let bigger = Redis { node_type: "cache.t3.small".into(), ..first.clone() };
    let plan = session.preview(&bigger).unwrap();
    let changes: Vec<_> = plan.changed().map(|c| (c.urn.name().to_owned(), c.action, c.diffs.iter().map(|d| d.name.clone()).collect::<Vec<_>>())).collect();
    assert_eq!(changes, [("orders".to_owned(), Action::Update, vec!["node_type".to_owned()])]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    assert_eq!(id_of(&state, REPLICATION_GROUP, "orders"), id);
    let g = replication_group(&ec, &id).await.unwrap();
    assert_eq!((g.cache_node_type(), g.status(), g.arn()), (Some("cache.t3.small"), Some("available"), Some(arn.as_str())));

    // Description and failover too.
    let calmer = Redis { description: "orders cache, no failover".into(), failover: false, ..bigger.clone() };
    let report = session.up(&calmer).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(report.summary.update, 1);
    let g = replication_group(&ec, &id).await.unwrap();
    assert_eq!((g.description(), g.automatic_failover()), (Some("orders cache, no failover"), Some(&AutomaticFailoverStatus::Disabled)));

    // Another replica is IncreaseReplicaCount, which moto lacks.
    let more = Redis { nodes: 3, ..calmer.clone() };
    let report = session.up(&more).await.unwrap();
    let s = step(&report, "orders", StepOp::Update);
    assert_eq!(
        shown(&s.status),
        failed("aws:elasticache:ReplicationGroup 'orders': the AWS endpoint does not implement adding replicas (IncreaseReplicaCount): it answered HTTP 500 with an HTML page (a local AWS answers so too when it fails on an operation it has; its log tells which)")
    );
    eprintln!("IncreaseReplicaCount failed after {:?}", s.elapsed);
    assert!(s.elapsed < UNSUPPORTED_WITHIN, "{:?}", s.elapsed);

    // The port forces a replacement; moto never finishes deleting the old group.
    let moved = Redis { port: 6391, ..calmer.clone() };
    let plan = session.preview(&moved).unwrap();
    let change = plan.changes.iter().find(|c| c.urn.name() == "orders").unwrap();
    assert_eq!((change.action, change.replace_reasons.clone()), (Action::Replace, vec!["port".to_owned()]));
    let report = session.apply(&plan).await.unwrap();
    assert_eq!(step(&report, "orders", StepOp::CreateReplacement).status, StepStatus::Done);
    assert_eq!(
        shown(&step(&report, "orders", StepOp::DeleteReplaced).status),
        failed("aws:elasticache:ReplicationGroup 'orders': timed out after 3s (custom timeout) (the request may have taken effect)")
    );
    let state = report.state;
    let new_id = id_of(&state, REPLICATION_GROUP, "orders");
    assert_ne!(new_id, id);
    let g = replication_group(&ec, &new_id).await.unwrap();
    assert_eq!((g.status(), g.node_groups()[0].primary_endpoint().and_then(|e| e.port())), (Some("available"), Some(6391)));
    assert_eq!(g.description(), Some("orders cache, no failover"));
    assert_eq!(replication_group(&ec, &id).await.unwrap().status(), Some("deleting"));

    // Destroy is bounded the same way.
    let report = session.destroy().await.unwrap();
    let deletes: Vec<_> = report.steps.iter().map(|s| shown(&s.status)).collect();
    let stuck = failed("aws:elasticache:ReplicationGroup 'orders': timed out after 3s (custom timeout) (the request may have taken effect)");
    assert_eq!(deletes, [stuck.clone(), stuck]);
    assert_eq!(replication_group(&ec, &new_id).await.unwrap().status(), Some("deleting"));
}

// ---------------------------------------------------------------------------------
// The AUTH token: a secret, over TLS.

#[derive(Clone, Default, Serialize, Deserialize)]
struct Guarded {
    /// `auth_token_update`, when set.
    update: Option<String>,
    token: Option<cairn_sdk::Secret<String>>,
}

fn guarded(stack: &str, provider: cairn_aws::Provider, keyring: std::sync::Arc<cairn_sdk::Keyring>) -> Stack<Guarded> {
    Stack::<Guarded>::new(stack).provider(provider).secrets(keyring).program(|cx, g| {
        let mut group = ReplicationGroup::new("sessions")
            .node_type("cache.t3.micro")
            .transit_encryption(true)
            .at_rest_encryption(true)
            .timeouts(short_delete());
        if let Some(token) = &g.token {
            group = group.auth_token(token);
        }
        if let Some(update) = &g.update {
            group = group.auth_token_update(update);
        }
        cx.add(group);
        Ok(())
    })
}

#[tokio::test]
async fn an_auth_token_is_sent_over_tls_kept_sealed_rotated_in_place_and_its_removal_replaces() {
    let (provider, ec) = aws().await;
    let keyring = cairn_sdk::Keyring::from_key(&[11; 64]).unwrap();
    let token = |t: &str| Some(cairn_sdk::Secret::seal(&keyring, &t.to_owned()));
    let stack = guarded("ec-auth", provider, keyring.clone());
    let mut session = stack.in_memory_session().await.unwrap();
    let first = Guarded { token: token("first-auth-token-0123"), update: None };
    let report = session.up(&first).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let id = id_of(&report.state, REPLICATION_GROUP, "sessions");
    let g = replication_group(&ec, &id).await.unwrap();
    assert_eq!((g.auth_token_enabled(), g.transit_encryption_enabled(), g.at_rest_encryption_enabled()), (Some(true), Some(true), Some(true)));
    let stored = serde_json::to_string(&report.state).unwrap();
    assert!(!stored.contains("first-auth-token"), "the token is sealed in state: {stored}");
    assert!(!stack.preview(&first, &report.state).unwrap().has_changes(), "a sealed token compares equal");
    assert!(drift_of(&stack.preview_refresh(&report.state).await.unwrap()).is_empty(), "AWS shows no token; Cairn keeps its own");

    // A new token is rotated on the same group, its values shown as [secret].
    let second = Guarded { token: token("second-auth-token-4567"), update: None };
    let plan = session.preview(&second).unwrap();
    let change = plan.changed().next().unwrap();
    assert_eq!((change.action, change.diffs.iter().map(|d| (d.name.as_str(), d.old.clone(), d.new.clone())).collect::<Vec<_>>()), (Action::Update, vec![("auth_token", Some(json!("[secret]")), Some(json!("[secret]")))]));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(id_of(&report.state, REPLICATION_GROUP, "sessions"), id);

    // The rotation ended (SET with the token kept), then a leaked token set out at once,
    // each on the same group.
    let ended = Guarded { token: token("second-auth-token-4567"), update: Some("set".to_owned()) };
    let third = Guarded { token: token("third-auth-token-89ab"), update: Some("set".to_owned()) };
    for step in [&ended, &third] {
        let report = session.up(step).await.unwrap();
        assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
        assert_eq!((report.summary.update, id_of(&report.state, REPLICATION_GROUP, "sessions")), (1, id.clone()));
        assert!(!session.preview(step).unwrap().has_changes());
    }

    // Without a token the group must be replaced: AWS cannot drop AUTH in place.
    let plan = session.preview(&Guarded { token: None, update: None }).unwrap();
    assert_eq!(plan.changed().next().map(|c| (c.action, c.replace_reasons.clone())), Some((Action::Replace, vec!["auth_token".to_owned()])));
}

#[tokio::test]
async fn an_auth_token_without_tls_or_of_a_bad_shape_is_refused_before_any_call_without_quoting_it() {
    let (provider, _) = aws().await;
    let stack = Stack::<()>::new("ec-auth-bad").provider(provider).secrets(cairn_sdk::Keyring::from_key(&[12; 64]).unwrap()).program(|cx, _| {
        cx.add(ReplicationGroup::new("sessions").node_type("cache.t3.micro").auth_token("short@token").auth_token_update("swap"));
        Ok(())
    });
    let err = stack.preview(&(), &stack.new_state()).unwrap_err().to_string();
    assert!(err.contains("'transit_encryption'") && err.contains("add .transit_encryption(true)"), "{err}");
    assert!(err.contains("property 'auth_token' = \"[secret]\" is invalid"), "{err}");
    assert!(err.contains("16 to 128 printable ASCII characters") && !err.contains("short@token"), "{err}");
    assert!(err.contains("'auth_token_update' = \"swap\"") && err.contains("be one of \"rotate\", \"set\""), "{err}");
}

// ---------------------------------------------------------------------------------
// Refresh of what ElastiCache does not report.

/// A cache cluster and a replication group with every placement input set: the ones
/// moto does not report (a cluster's port, security groups and parameter group; a
/// group's subnet group, security groups and parameter group, read from a member moto
/// cannot describe) included.
fn placed(stack: &str, provider: cairn_aws::Provider) -> Stack<()> {
    Stack::<()>::new(stack).provider(provider).program(|cx, ()| {
        let vpc = cx.add(Vpc::new("vpc").cidr_block("10.32.0.0/16"));
        let a = cx.add(Subnet::new("a").vpc_id(vpc.id()).cidr_block("10.32.1.0/24").availability_zone("us-east-1a"));
        let sg = cx.add(SecurityGroup::new("cache-sg").vpc_id(vpc.id()));
        let net = cx.add(SubnetGroup::new("placed-net").subnet_ids([a.id()]));
        cx.add(
            CacheCluster::new("placed-cache")
                .node_type("cache.t3.micro")
                .port(6385)
                .subnet_group_name(net.name())
                .security_group_ids(vec![sg.id()])
                .parameter_group_name("default.redis7")
                .engine_version("7.0")
                .timeouts(short_delete()),
        );
        cx.add(
            ReplicationGroup::new("placed-group")
                .node_type("cache.t3.micro")
                .port(6386)
                .subnet_group_name(net.name())
                .security_group_ids(vec![sg.id()])
                .parameter_group_name("default.redis7")
                .timeouts(short_delete()),
        );
        Ok(())
    })
}

#[tokio::test]
async fn a_refresh_keeps_inputs_elasticache_does_not_report_and_finds_no_drift() {
    let (provider, _ec) = aws().await;
    let stack = placed("ec-placed", provider);
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let sg = id_of(&state, "aws:ec2:SecurityGroup", "cache-sg");
    let net = id_of(&state, SUBNET_GROUP, "placed-net");

    // What a user relies on: a refresh right after an up finds nothing changed, keeps
    // what was declared, and the next up has nothing to do.
    let refreshed = session.refresh().await.unwrap();
    assert!(refreshed.errors.is_empty(), "{:?}", refreshed.errors);
    assert_eq!(drift_of(&refreshed), []);
    let inputs = |ty: &str, name: &str| {
        let r = refreshed.state.resource(&Urn::new("ec-placed", ty, name)).unwrap_or_else(|| panic!("{name} in state"));
        serde_json::to_value(&r.inputs).unwrap()
    };
    let cache = inputs(CLUSTER, "placed-cache");
    assert_eq!((&cache["port"], &cache["security_group_ids"]), (&json!(6385), &json!([sg])));
    assert_eq!(cache["parameter_group_name"], json!("default.redis7"));
    let group = inputs(REPLICATION_GROUP, "placed-group");
    assert_eq!((&group["subnet_group_name"], &group["security_group_ids"]), (&json!(net), &json!([sg])));
    assert_eq!(group["parameter_group_name"], json!("default.redis7"));
    let plan = stack.preview(&(), &refreshed.state).unwrap();
    assert!(!plan.has_changes(), "{:?}", plan.changed().map(|c| (c.urn.name().to_owned(), c.diffs.clone())).collect::<Vec<_>>());
}

#[test]
fn bad_cache_settings_are_refused_before_any_call() {
    let stack = Stack::<()>::new("ec-checks").program(|cx, _| {
        cx.add(CacheCluster::new("Sessions").node_type("cache.t3.micro"));
        cx.add(CacheCluster::new("sessions-for-the-checkout-service").node_type("cache.t3.micro"));
        cx.add(CacheCluster::new("two").cluster_id("9lives").node_type("t3.micro").num_cache_nodes(2));
        cx.add(ReplicationGroup::new("lonely").node_type("cache.t3.micro").automatic_failover(true));
        cx.add(ReplicationGroup::new("crowd").node_type("cache.t3.micro").num_cache_clusters(7));
        cx.add(SubnetGroup::new("net").name("Cache_Net").subnet_ids(Vec::<String>::new()));
        Ok(())
    });
    let err = stack.preview(&(), &stack.new_state()).unwrap_err().to_string();
    assert_eq!(
        err,
        "the program declares an invalid graph (9 problems); nothing was changed:\n  \
         - aws:elasticache:CacheCluster 'Sessions': property 'cluster_id' = (unset) is invalid: it must be set, as the id generated from the logical name, 'Sessions-<7 hex digits>', would not be 1 to 40 lowercase letters, digits or hyphens, starting with a letter, with no two hyphens in a row and no hyphen at the end; use a logical name of at most 32 such characters, or set cluster_id\n  \
         - aws:elasticache:CacheCluster 'sessions-for-the-checkout-service': property 'cluster_id' = (unset) is invalid: it must be set, as the id generated from the logical name, 'sessions-for-the-checkout-service-<7 hex digits>', would not be 1 to 40 lowercase letters, digits or hyphens, starting with a letter, with no two hyphens in a row and no hyphen at the end; use a logical name of at most 32 such characters, or set cluster_id\n  \
         - aws:elasticache:CacheCluster 'two': property 'cluster_id' = \"9lives\" is invalid: it must be 1 to 40 lowercase letters, digits or hyphens, starting with a letter, with no two hyphens in a row and no hyphen at the end\n  \
         - aws:elasticache:CacheCluster 'two': property 'node_type' = \"t3.micro\" is invalid: it must be a cache node type such as cache.t3.micro\n  \
         - aws:elasticache:CacheCluster 'two': property 'num_cache_nodes' = 2 is invalid: it must be 1: a Redis cache cluster has exactly one node (for replicas, use a ReplicationGroup with num_cache_clusters)\n  \
         - aws:elasticache:ReplicationGroup 'lonely': property 'automatic_failover' = true is invalid: it must be false while num_cache_clusters is 1: failover needs a replica to promote; set num_cache_clusters to 2 or more\n  \
         - aws:elasticache:ReplicationGroup 'crowd': property 'num_cache_clusters' = 7 is invalid: it must be from 1 to 6: a primary and up to 5 replicas\n  \
         - aws:elasticache:SubnetGroup 'net': property 'name' = \"Cache_Net\" is invalid: it must be 1 to 255 lowercase letters, digits or hyphens\n  \
         - aws:elasticache:SubnetGroup 'net': property 'subnet_ids' = [] is invalid: it must name at least one subnet"
    );
}
