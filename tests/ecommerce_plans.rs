//! Plan snapshots of the ecommerce example: its first deploy, and the plan each event
//! causes from the state the previous one left; and the order its destroy deletes in,
//! checked against AWS's rules. The cloud is the test provider standing in for AWS, so
//! these run without one; `tests/ecommerce_e2e.rs` runs against the local AWS.

#[path = "../examples/ecommerce/shop.rs"]
#[allow(dead_code)]
mod shop;

use std::sync::{Arc, Mutex};

use cairn::events::{Event, Rejection};
use cairn::testing::{Op, TestProvider};
use cairn::{Progress, Props, RenderOptions, Stack, StackState, StepOp, StepReport, Urn};
use serde_json::{json, Value};
use shop::{Shop, ShopConfig};

/// What AWS would compute, enough for the example's references to resolve.
fn fake_aws() -> TestProvider {
    TestProvider::new("aws").with_outputs(|urn, _| {
        let mut p = Props::new();
        p.insert("arn", Value::from(format!("arn:aws:test:us-east-1:123456789012:{}", urn.name())));
        p.insert("allocation_id", Value::from(format!("eipalloc-{}", urn.name())));
        p.insert("url", Value::from(format!("http://sqs.local/123456789012/{}", urn.name())));
        p.insert("latest_version", Value::from(1));
        p.insert("dns_name", Value::from(format!("{}-123.us-east-1.elb.amazonaws.com", urn.name())));
        p.insert("zone_id", Value::from("Z35SXDOTRQ7X7K"));
        p.insert("validation_record_name", Value::from("_x1.shop.example.com."));
        p.insert("validation_record_type", Value::from("CNAME"));
        p.insert("validation_record_value", Value::from("_x2.acm-validations.aws."));
        p
    })
}

/// A session on an in-memory store holding `state` as it is.
async fn session_at(stack: &Stack<Shop>, state: &StackState) -> cairn::Session<Shop> {
    let store = Arc::new(cairn::state::MemoryStore::holding(state.clone()));
    stack.lock(store, "test").await.expect("the stack opens on its state")
}

fn stack(provider: &TestProvider) -> Stack<Shop> {
    shop::stack("dev", provider.clone(), ShopConfig::default())
}

/// Applies `shop` to the stack as `state` holds it, through a session.
async fn deploy(stack: &Stack<Shop>, shop: &Shop, state: &StackState) -> StackState {
    let mut session = session_at(stack, state).await;
    let report = session.up(shop).await.expect("the plan applies");
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    report.state
}

#[tokio::test]
async fn first_deploy_and_the_plan_of_each_event() {
    let provider = fake_aws();
    let stack = stack(&provider);
    let mut shop = Shop::default();
    let mut state = stack.new_state();
    insta::assert_snapshot!("first_deploy", stack.preview(&shop, &state).unwrap().render(RenderOptions::diff()));
    state = deploy(&stack, &shop, &state).await;

    let events = [
        ("traffic_spike", Event::new("traffic.spike", json!({"requests_per_second": 2600}))),
        ("sale_started", Event::new("sale.started", json!({}))),
        ("sale_ended", Event::new("sale.ended", json!({}))),
        ("az_degraded", Event::new("az.degraded", json!({"zone": "us-east-1a"}))),
        ("az_recovered", Event::new("az.recovered", json!({"zone": "us-east-1a"}))),
        ("traffic_normal", Event::new("traffic.normal", json!({}))),
    ];
    for (name, event) in events {
        stack.handle_event(&event, &mut shop).unwrap_or_else(|r| panic!("{name}: {r}"));
        let plan = stack.preview(&shop, &state).unwrap();
        stack.policy().evaluate(&plan).unwrap_or_else(|e| panic!("{name}: {e}"));
        insta::assert_snapshot!(name, plan.render(RenderOptions::diff()));
        state = deploy(&stack, &shop, &state).await;
    }
    assert_eq!(shop, Shop::default(), "the events leave the shop as it started");
}

#[test]
fn capacity_follows_requests_within_bounds() {
    let stack = stack(&fake_aws());
    let capacity = |rps: u32| {
        let mut shop = Shop::default();
        stack.handle_event(&Event::new("traffic.spike", json!({"requests_per_second": rps})), &mut shop).unwrap();
        shop.web_capacity
    };
    assert_eq!([capacity(0), capacity(1200), capacity(2600), capacity(6000), capacity(1_000_000)], [2, 3, 6, 12, 12]);
}

#[test]
fn guards_refuse_what_the_shop_must_never_do() {
    let stack = stack(&fake_aws());
    let mut shop = Shop::default();
    for zone in shop::ZONES.into_iter().take(1) {
        stack.handle_event(&Event::new("az.degraded", json!({ "zone": zone })), &mut shop).unwrap();
    }
    let last = Event::new("az.degraded", json!({"zone": shop::ZONES[1]}));
    let refused = stack.handle_event(&last, &mut shop).unwrap_err();
    assert_eq!(refused, Rejection::Guard { guard: "a healthy zone remains".into(), message: "every zone would be degraded; the web group needs at least one".into() });
    let unknown = stack.handle_event(&Event::new("az.degraded", json!({"zone": "mars-1a"})), &mut shop).unwrap_err();
    assert!(matches!(&unknown, Rejection::Handler(m) if m.contains("zone mars-1a is not one of the shop's zones")), "{unknown:?}");
    let missing = stack.handle_event(&Event::new("traffic.spike", json!({"rps": 5})), &mut shop).unwrap_err();
    assert!(matches!(&missing, Rejection::Handler(m) if m.contains("no field `requests_per_second`")), "{missing:?}");
}

#[tokio::test]
async fn no_event_may_replace_the_vpc_or_the_cache() {
    let provider = fake_aws();
    // A variant of the shop whose program moves the VPC when a flag is set: what a bad
    // handler could cause. The policy stops it before anything is applied.
    let stack = stack(&provider);
    let state = deploy(&stack, &Shop::default(), &stack.new_state()).await;
    let mut plan = stack.preview(&Shop::default(), &state).unwrap();
    let vpc = plan.changes.iter_mut().find(|c| c.ty == "aws:ec2:Vpc").unwrap();
    vpc.action = cairn::Action::Replace;
    plan.summary.replace += 1;
    let refused = stack.policy().evaluate(&plan).unwrap_err();
    assert!(refused.to_string().contains("would replace aws:ec2:Vpc 'shop'"), "{refused}");
}

/// The engine's steps as they start and finish, in the order they do: from its progress
/// hooks, which it calls just before a step's provider call starts and once that call
/// has returned.
#[derive(Clone, Debug, Default)]
struct Timeline(Arc<Mutex<Vec<(Moment, StepOp, Urn)>>>);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Moment {
    Started,
    Finished,
}

impl Progress for Timeline {
    fn started(&self, urn: &Urn, op: StepOp) {
        self.0.lock().unwrap().push((Moment::Started, op, urn.clone()));
    }
    fn finished(&self, step: &StepReport) {
        self.0.lock().unwrap().push((Moment::Finished, step.op, step.urn.clone()));
    }
}

impl Timeline {
    /// Where in the timeline the delete of `(type, name)` started or finished.
    fn delete(&self, moment: Moment, (ty, name): Named) -> Option<usize> {
        let events = self.0.lock().unwrap();
        events.iter().position(|(m, op, urn)| *m == moment && *op == StepOp::Delete && urn.ty() == ty && urn.name() == name)
    }
}

/// A resource by type token and logical name: `("aws:ec2:Vpc", "shop")`.
type Named = (&'static str, &'static str);

/// AWS's own rules for tearing the shop down, as `(deleted first, before, why)`: each
/// says the first resource must be gone before the second's delete may start, or AWS
/// refuses it (DependencyViolation, "in use") or the provider can no longer undo what it
/// set up. Written from AWS's rules, not from the engine's dependency lists.
fn aws_delete_rules() -> Vec<(Named, Named, &'static str)> {
    const VPC: &str = "aws:ec2:Vpc";
    const SUBNET: &str = "aws:ec2:Subnet";
    const IGW: &str = "aws:ec2:InternetGateway";
    const NAT: &str = "aws:ec2:NatGateway";
    const EIP: &str = "aws:ec2:ElasticIp";
    const RT: &str = "aws:ec2:RouteTable";
    const SG: &str = "aws:ec2:SecurityGroup";
    const LT: &str = "aws:ec2:LaunchTemplate";
    const ASG: &str = "aws:autoscaling:Group";
    const CACHE: &str = "aws:elasticache:ReplicationGroup";
    const CACHE_SUBNETS: &str = "aws:elasticache:SubnetGroup";
    const QUEUE: &str = "aws:sqs:Queue";
    const LB: &str = "aws:elbv2:LoadBalancer";
    const TARGETS: &str = "aws:elbv2:TargetGroup";
    const LISTENER: &str = "aws:elbv2:Listener";
    const CERT: &str = "aws:acm:Certificate";
    const ZONE: &str = "aws:route53:Zone";
    const RECORD: &str = "aws:route53:Record";
    const RULE: &str = "aws:eventbridge:Rule";
    const TARGET: &str = "aws:eventbridge:Target";
    let (public_a, public_b) = ((SUBNET, "shop-public-us-east-1a"), (SUBNET, "shop-public-us-east-1b"));
    let (private_a, private_b) = ((SUBNET, "shop-private-us-east-1a"), (SUBNET, "shop-private-us-east-1b"));
    let (web_group, template) = ((ASG, "web"), (LT, "web"));
    let (web_sg, sessions_sg) = ((SG, "web"), (SG, "sessions"));
    let (cache, cache_subnets) = ((CACHE, "sessions"), (CACHE_SUBNETS, "sessions"));
    let (nat, eip, igw, vpc) = ((NAT, "shop-nat-us-east-1a"), (EIP, "shop-nat-us-east-1a"), (IGW, "shop"), (VPC, "shop"));
    let (public_rt, private_rt_a, private_rt_b) = ((RT, "shop-public"), (RT, "shop-private-us-east-1a"), (RT, "shop-private-us-east-1b"));
    let mut rules = vec![
        (web_group, template, "the group launches from the template"),
        (web_group, private_a, "the group's instances run in the private subnets"),
        (web_group, private_b, "the group's instances run in the private subnets"),
        (web_group, web_sg, "the group's instances use the web security group"),
        (template, web_sg, "the template names the web security group"),
        (sessions_sg, web_sg, "a rule of the sessions group references the web group"),
        (cache, cache_subnets, "a cache subnet group in use by a replication group cannot be deleted"),
        (cache, sessions_sg, "the cache's nodes use the sessions security group"),
        (cache_subnets, private_a, "the cache subnet group holds the private subnets"),
        (cache_subnets, private_b, "the cache subnet group holds the private subnets"),
        (public_rt, public_a, "the public route table is associated with the public subnets"),
        (public_rt, public_b, "the public route table is associated with the public subnets"),
        (private_rt_a, private_a, "each private route table is associated with its zone's private subnet"),
        (private_rt_b, private_b, "each private route table is associated with its zone's private subnet"),
        (nat, public_a, "the NAT gateway sits in the first public subnet"),
        (nat, eip, "the NAT gateway holds the Elastic IP"),
        (nat, igw, "an internet gateway cannot be detached while the VPC has mapped public addresses"),
        (igw, vpc, "a VPC cannot be deleted while an internet gateway is attached"),
    ];
    for (dependent, why) in [
        (public_a, "a VPC with subnets cannot be deleted"),
        (public_b, "a VPC with subnets cannot be deleted"),
        (private_a, "a VPC with subnets cannot be deleted"),
        (private_b, "a VPC with subnets cannot be deleted"),
        (web_sg, "a VPC with security groups cannot be deleted"),
        (sessions_sg, "a VPC with security groups cannot be deleted"),
        (public_rt, "a VPC with route tables cannot be deleted"),
        (private_rt_a, "a VPC with route tables cannot be deleted"),
        (private_rt_b, "a VPC with route tables cannot be deleted"),
    ] {
        rules.push((dependent, vpc, why));
    }
    rules.push(((QUEUE, "orders"), (QUEUE, "orders-dlq"), "the orders queue's redrive policy points at orders-dlq"));
    let (lb, listener, web_targets, cert, zone) = ((LB, "web"), (LISTENER, "https"), (TARGETS, "web"), (CERT, "shop"), (ZONE, "shop"));
    rules.extend([
        (listener, lb, "a load balancer's listeners go with it, but the listener's delete must not outlive it"),
        (listener, web_targets, "a target group a listener forwards to is in use (ResourceInUse)"),
        (listener, cert, "a certificate a listener serves is in use (ResourceInUseException)"),
        (web_group, web_targets, "a target group attached to an Auto Scaling group is in use"),
        (lb, public_a, "the load balancer's interfaces sit in the public subnets"),
        (lb, public_b, "the load balancer's interfaces sit in the public subnets"),
        (lb, (SG, "lb"), "the load balancer uses its security group"),
        (web_sg, (SG, "lb"), "a rule of the web group references the load balancer's group"),
        ((RECORD, "shop"), zone, "a zone with records other than SOA and NS cannot be deleted (HostedZoneNotEmpty)"),
        ((RECORD, "shop-cert-validation"), zone, "a zone with records other than SOA and NS cannot be deleted (HostedZoneNotEmpty)"),
        ((TARGET, "alarms-to-events"), (RULE, "alarms"), "a rule that still has targets cannot be deleted"),
        ((SG, "lb"), vpc, "a VPC with security groups cannot be deleted"),
    ]);
    rules
}

/// The rules the timeline breaks: a delete that started before the one it must follow
/// had finished (or either never ran).
fn broken_rules(timeline: &Timeline) -> Vec<String> {
    let mut broken = Vec::new();
    for (first, then, why) in aws_delete_rules() {
        let (done, starts) = (timeline.delete(Moment::Finished, first), timeline.delete(Moment::Started, then));
        match (done, starts) {
            (Some(done), Some(starts)) if done < starts => {}
            (Some(_), Some(_)) => broken.push(format!("{} {} started before {} {} was deleted ({why})", then.0, then.1, first.0, first.1)),
            _ => broken.push(format!("{} {} or {} {} was never deleted", first.0, first.1, then.0, then.1)),
        }
    }
    broken
}

#[tokio::test]
async fn destroy_deletes_in_an_order_aws_accepts() {
    let provider = fake_aws();
    let timeline = Timeline::default();
    let stack = stack(&provider).progress(timeline.clone());
    let state = deploy(&stack, &Shop::default(), &stack.new_state()).await;
    let deployed: Vec<String> = state.resources.iter().map(|r| r.urn.to_string()).collect();
    assert_eq!(deployed.len(), 35);
    timeline.0.lock().unwrap().clear();
    provider.clear_calls();

    let mut session = session_at(&stack, &state).await;
    let report = session.destroy().await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert!(report.state.resources.is_empty() && provider.resources().is_empty(), "everything is deleted");
    let calls = provider.calls();
    assert!(calls.iter().all(|c| c.op == Op::Delete), "{calls:?}");
    let mut deleted: Vec<String> = calls.iter().map(|c| c.urn.to_string()).collect();
    deleted.sort();
    let mut expected = deployed.clone();
    expected.sort();
    assert_eq!(deleted, expected, "one delete call per resource");

    // Each rule's first delete had returned before the second's began...
    let broken = broken_rules(&timeline);
    assert!(broken.is_empty(), "{}", broken.join("\n"));
    // ...and the provider received them in that order.
    let call = |(ty, name): Named| calls.iter().position(|c| c.urn.ty() == ty && c.urn.name() == name).unwrap();
    for (first, then, why) in aws_delete_rules() {
        assert!(call(first) < call(then), "{first:?} must be deleted before {then:?}: {why}");
    }
}

/// The example's two stacks differ by their configuration files only: dev's file holds
/// the defaults and its own AUTH token, prod's spreads over three zones with bigger, more
/// servers. Neither needs its key to plan: the tokens stay sealed.
#[tokio::test]
async fn dev_and_prod_are_one_program_with_two_configurations() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ecommerce");
    let dev: ShopConfig = cairn::config::load(&dir, "dev").unwrap();
    assert!(dev.redis_auth_token.is_some(), "Cairn.dev.toml holds the cache's token");
    assert_eq!(ShopConfig { redis_auth_token: None, ..dev }, ShopConfig::default(), "Cairn.dev.toml holds dev's defaults");
    let prod: ShopConfig = cairn::config::load(&dir, "prod").unwrap();
    assert_eq!((prod.zones.len(), prod.web.min, prod.web.max), (3, 4, 40));
    assert!(prod.redis_auth_token.is_some(), "Cairn.prod.toml holds the cache's token");

    let stack = shop::stack("prod", fake_aws(), prod);
    insta::assert_snapshot!("prod_first_deploy", stack.preview(&Shop::default(), &stack.new_state()).unwrap().render(RenderOptions::diff()));
    // Scaling stays within prod's bounds: a spike of 30,000 rps wants 60 servers.
    let mut shop = Shop::default();
    stack.handle_event(&Event::new("traffic.spike", json!({"requests_per_second": 30_000})), &mut shop).unwrap();
    assert_eq!(shop.web_capacity, 40);
    stack.handle_event(&Event::new("traffic.normal", json!({})), &mut shop).unwrap();
    assert_eq!(shop.web_capacity, 4);
    let zone = stack.handle_event(&Event::new("az.degraded", json!({"zone": "us-east-1c"})), &mut shop);
    assert!(zone.is_ok(), "prod's third zone is one of its zones: {zone:?}");
}
