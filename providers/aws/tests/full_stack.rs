//! A whole stack against the local AWS, shaped like the ecommerce example: a `Network`
//! (two zones, one NAT gateway), the web security group, launch template and Auto
//! Scaling group in the private subnets, and the SQS queues (orders with its dead-letter
//! queue, events). It is created, found unchanged by a second `up`, and destroyed, after
//! which nothing tagged with the stack is left, checked with each service's own API.
//!
//! Unlike the example it has no ElastiCache cache: the local AWS (moto) never finishes
//! deleting a replication group or cluster (they stay `deleting`) and does not implement
//! `DeleteCacheSubnetGroup`, so a stack with a cache cannot be destroyed cleanly there.
//! `tests/ecommerce_e2e.rs` covers what a destroy leaves when the cache is in the stack.

use aws_sdk_ec2::types::{Filter, NatGatewayState, RouteTable as AwsRouteTable};
use aws_sdk_sqs::types::QueueAttributeName;
use cairn_aws::autoscaling::Group;
use cairn_aws::ec2::{LaunchTemplate, Rule, SecurityGroup};
use cairn_aws::sqs::Queue;
use cairn_aws::{Nat, Network};
use cairn_sdk::{Stack, StackState, Urn};

mod common;
use common::rule_lines;

const STACK: &str = "full-stack";
const ZONES: [&str; 2] = ["us-east-1a", "us-east-1b"];

/// The clients that check what the stack did.
struct Aws {
    ec2: aws_sdk_ec2::Client,
    asg: aws_sdk_autoscaling::Client,
    sqs: aws_sdk_sqs::Client,
}

async fn aws() -> (cairn_aws::Provider, Aws) {
    cairn_testkit::moto().configure_env();
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    let aws = Aws {
        ec2: aws_sdk_ec2::Client::new(&config),
        asg: aws_sdk_autoscaling::Client::new(&config),
        sqs: aws_sdk_sqs::Client::new(&config),
    };
    (cairn_aws::Provider::new(&config), aws)
}

/// The shop without its cache.
fn shop(provider: cairn_aws::Provider) -> Stack<()> {
    Stack::<()>::new(STACK).provider(provider).program(|cx, _| {
        let net = Network::new("shop").cidr_block("10.70.0.0/16").zones(ZONES).nat(Nat::Single).tags([("app", "shop")]).declare(cx)?;
        let web_sg = cx.add(
            SecurityGroup::new("web")
                .vpc_id(net.vpc.id())
                .description("shop web servers")
                .ingress(Rule::tcp(80).from_cidr("0.0.0.0/0"))
                .ingress(Rule::tcp(443).from_cidr("0.0.0.0/0"))
                .allow_all_egress(),
        );
        let template = cx.add(
            LaunchTemplate::new("web")
                .image_id("ami-12c6146b")
                .instance_type("t3.small")
                .security_group_id(web_sg.id())
                .user_data("#!/bin/sh\nexec /opt/shop/web --port 80\n"),
        );
        cx.add(
            Group::new("web")
                .launch_template_id(template.id())
                .launch_template_version("$Latest")
                .subnet_ids(net.private_subnet_ids())
                .min_size(2)
                .max_size(12)
                .desired_capacity(2)
                .health_check_type("EC2")
                .tags([("role", "web")]),
        );
        let dlq = cx.add(Queue::new("orders-dlq").message_retention(1_209_600));
        cx.add(Queue::new("orders").visibility_timeout(60).dead_letter(dlq.arn(), 5));
        cx.add(Queue::new("shop-events").visibility_timeout(120));
        Ok(())
    })
}

fn id_of(state: &StackState, ty: &str, name: &str) -> String {
    state.resource(&Urn::new(&state.stack, ty, name)).unwrap_or_else(|| panic!("{ty} {name} in state")).id.clone()
}

/// How many resources of each type the state holds, by type token, sorted.
fn counts(state: &StackState) -> Vec<(String, usize)> {
    let mut counts = std::collections::BTreeMap::new();
    for r in &state.resources {
        *counts.entry(r.ty.clone()).or_insert(0) += 1;
    }
    counts.into_iter().collect()
}

/// A table's routes other than `local` (`destination -> target`) and its subnets, sorted.
fn routes_and_subnets(rt: &AwsRouteTable) -> (Vec<String>, Vec<String>) {
    let mut routes: Vec<String> = rt
        .routes()
        .iter()
        .filter(|r| r.gateway_id() != Some("local"))
        .map(|r| format!("{} -> {}", r.destination_cidr_block().unwrap_or_default(), r.gateway_id().or(r.nat_gateway_id()).unwrap_or_default()))
        .collect();
    routes.sort();
    let mut subnets: Vec<String> = rt.associations().iter().filter_map(|a| a.subnet_id().map(str::to_owned)).collect();
    subnets.sort();
    (routes, subnets)
}

/// What is tagged `cairn:stack=<stack>`, per kind, as each service lists it.
#[derive(Debug, Default, PartialEq)]
struct Tagged {
    vpcs: usize,
    subnets: usize,
    internet_gateways: usize,
    route_tables: usize,
    nat_gateways: usize,
    addresses: usize,
    security_groups: usize,
    launch_templates: usize,
    instances: usize,
    auto_scaling_groups: usize,
    queues: usize,
}

async fn tagged(aws: &Aws, stack: &str) -> Tagged {
    let f = || Filter::builder().name("tag:cairn:stack").values(stack).build();
    let ec2 = &aws.ec2;
    let nat_gateways = ec2.describe_nat_gateways().filter(f()).send().await.unwrap();
    let live = ["pending", "running", "shutting-down", "stopping", "stopped"];
    let instances = ec2
        .describe_instances()
        .filters(f())
        .filters(Filter::builder().name("instance-state-name").set_values(Some(live.map(String::from).to_vec())).build())
        .send()
        .await
        .unwrap();
    let asg_filter = aws_sdk_autoscaling::types::Filter::builder().name("tag:cairn:stack").values(stack).build();
    let queues = common::queues_tagged(&aws.sqs, stack).await.len();
    Tagged {
        vpcs: ec2.describe_vpcs().filters(f()).send().await.unwrap().vpcs().len(),
        subnets: ec2.describe_subnets().filters(f()).send().await.unwrap().subnets().len(),
        internet_gateways: ec2.describe_internet_gateways().filters(f()).send().await.unwrap().internet_gateways().len(),
        route_tables: ec2.describe_route_tables().filters(f()).send().await.unwrap().route_tables().len(),
        nat_gateways: nat_gateways.nat_gateways().iter().filter(|n| n.state() != Some(&NatGatewayState::Deleted)).count(),
        addresses: ec2.describe_addresses().filters(f()).send().await.unwrap().addresses().len(),
        security_groups: ec2.describe_security_groups().filters(f()).send().await.unwrap().security_groups().len(),
        launch_templates: ec2.describe_launch_templates().filters(f()).send().await.unwrap().launch_templates().len(),
        instances: instances.reservations().iter().map(|r| r.instances().len()).sum(),
        auto_scaling_groups: aws.asg.describe_auto_scaling_groups().filters(asg_filter).send().await.unwrap().auto_scaling_groups().len(),
        queues,
    }
}

#[tokio::test]
async fn the_shop_without_its_cache_is_created_left_alone_and_destroyed_without_a_trace() {
    let (provider, aws) = aws().await;
    let stack = shop(provider);
    assert_eq!(tagged(&aws, STACK).await, Tagged::default(), "the stack starts from nothing");

    // (a) Created: every resource, each checked with its service's describe call.
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let expected = [
        ("aws:autoscaling:Group", 1),
        ("aws:ec2:ElasticIp", 1),
        ("aws:ec2:InternetGateway", 1),
        ("aws:ec2:LaunchTemplate", 1),
        ("aws:ec2:NatGateway", 1),
        ("aws:ec2:RouteTable", 3),
        ("aws:ec2:SecurityGroup", 1),
        ("aws:ec2:Subnet", 4),
        ("aws:ec2:Vpc", 1),
        ("aws:sqs:Queue", 3),
    ];
    assert_eq!(counts(&state), expected.map(|(t, n)| (t.to_owned(), n)));
    assert_eq!((report.summary.create, report.summary.changes()), (17, 17));

    let ec2 = &aws.ec2;
    let vpc = id_of(&state, "aws:ec2:Vpc", "shop");
    let described = ec2.describe_vpcs().vpc_ids(&vpc).send().await.unwrap();
    assert_eq!(described.vpcs()[0].cidr_block(), Some("10.70.0.0/16"));

    // Four subnets: public ones from the first /24s, private ones from the 129th.
    let in_vpc = Filter::builder().name("vpc-id").values(&vpc).build();
    let subnets = ec2.describe_subnets().filters(in_vpc).send().await.unwrap();
    let mut layout: Vec<(String, String, bool)> = subnets
        .subnets()
        .iter()
        .map(|s| (s.cidr_block().unwrap().to_owned(), s.availability_zone().unwrap().to_owned(), s.map_public_ip_on_launch() == Some(true)))
        .collect();
    layout.sort();
    let subnet = |cidr: &str, zone: &str, public: bool| (cidr.to_owned(), zone.to_owned(), public);
    assert_eq!(
        layout,
        [
            subnet("10.70.0.0/24", "us-east-1a", true),
            subnet("10.70.1.0/24", "us-east-1b", true),
            subnet("10.70.128.0/24", "us-east-1a", false),
            subnet("10.70.129.0/24", "us-east-1b", false),
        ]
    );
    let public_a = id_of(&state, "aws:ec2:Subnet", "shop-public-us-east-1a");
    let public_b = id_of(&state, "aws:ec2:Subnet", "shop-public-us-east-1b");
    let private_a = id_of(&state, "aws:ec2:Subnet", "shop-private-us-east-1a");
    let private_b = id_of(&state, "aws:ec2:Subnet", "shop-private-us-east-1b");

    // The internet gateway is attached to the VPC.
    let igw = id_of(&state, "aws:ec2:InternetGateway", "shop");
    let described = ec2.describe_internet_gateways().internet_gateway_ids(&igw).send().await.unwrap();
    let attachments: Vec<_> = described.internet_gateways()[0].attachments().iter().map(|a| a.vpc_id().unwrap_or_default().to_owned()).collect();
    assert_eq!(attachments, [vpc.as_str()]);

    // One NAT gateway, available, in the first public subnet, on the Elastic IP.
    let eip = id_of(&state, "aws:ec2:ElasticIp", "shop-nat-us-east-1a");
    let address = ec2.describe_addresses().allocation_ids(&eip).send().await.unwrap().addresses()[0].clone();
    assert!(address.public_ip().is_some(), "the Elastic IP is allocated: {address:?}");
    let nat = id_of(&state, "aws:ec2:NatGateway", "shop-nat-us-east-1a");
    let described = ec2.describe_nat_gateways().nat_gateway_ids(&nat).send().await.unwrap();
    let n = &described.nat_gateways()[0];
    assert_eq!((n.state(), n.subnet_id()), (Some(&NatGatewayState::Available), Some(public_a.as_str())));
    assert_eq!(n.nat_gateway_addresses().iter().filter_map(|a| a.allocation_id()).collect::<Vec<_>>(), [eip.as_str()]);

    // Default routes: public subnets through the internet gateway, private ones through NAT.
    let table = |name: &str| {
        let id = id_of(&state, "aws:ec2:RouteTable", name);
        async move { ec2.describe_route_tables().route_table_ids(id).send().await.unwrap().route_tables()[0].clone() }
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };
    assert_eq!(routes_and_subnets(&table("shop-public").await), (vec![format!("0.0.0.0/0 -> {igw}")], sorted(vec![public_a.clone(), public_b.clone()])));
    assert_eq!(routes_and_subnets(&table("shop-private-us-east-1a").await), (vec![format!("0.0.0.0/0 -> {nat}")], vec![private_a.clone()]));
    assert_eq!(routes_and_subnets(&table("shop-private-us-east-1b").await), (vec![format!("0.0.0.0/0 -> {nat}")], vec![private_b.clone()]));

    // The web security group: HTTP and HTTPS from anywhere, anything out.
    let web_sg = id_of(&state, "aws:ec2:SecurityGroup", "web");
    let described = ec2.describe_security_groups().group_ids(&web_sg).send().await.unwrap();
    let g = &described.security_groups()[0];
    assert_eq!(g.vpc_id(), Some(vpc.as_str()));
    assert_eq!(rule_lines(g.ip_permissions()), ["tcp 443-443 0.0.0.0/0", "tcp 80-80 0.0.0.0/0"]);
    assert_eq!(rule_lines(g.ip_permissions_egress()), ["-1 all 0.0.0.0/0"]);

    // The launch template starts instances of the image, in the web group.
    let template = id_of(&state, "aws:ec2:LaunchTemplate", "web");
    let versions = ec2.describe_launch_template_versions().launch_template_id(&template).versions("$Latest").send().await.unwrap();
    let data = versions.launch_template_versions()[0].launch_template_data().unwrap();
    assert_eq!((data.image_id(), data.instance_type().map(|t| t.as_str())), (Some("ami-12c6146b"), Some("t3.small")));
    assert_eq!(data.security_group_ids(), [web_sg.as_str()]);

    // The group: 2 of 2..=12 instances from the template, in the private subnets.
    let group = id_of(&state, "aws:autoscaling:Group", "web");
    let described = aws.asg.describe_auto_scaling_groups().auto_scaling_group_names(&group).send().await.unwrap();
    let g = &described.auto_scaling_groups()[0];
    assert_eq!((g.min_size(), g.max_size(), g.desired_capacity()), (Some(2), Some(12), Some(2)));
    assert_eq!(g.launch_template().and_then(|t| t.launch_template_id()), Some(template.as_str()));
    let zone_subnets = sorted(g.vpc_zone_identifier().unwrap_or_default().split(',').map(str::to_owned).collect());
    assert_eq!(zone_subnets, sorted(vec![private_a.clone(), private_b.clone()]));
    assert_eq!(g.instances().len(), 2, "the group launched its desired capacity");

    // The queues: orders redrives to its dead-letter queue after 5 receives.
    let attribute = |name: &str, attr: QueueAttributeName| {
        let url = id_of(&state, "aws:sqs:Queue", name);
        let sqs = &aws.sqs;
        async move {
            let out = sqs.get_queue_attributes().queue_url(url).attribute_names(attr.clone()).send().await.unwrap();
            out.attributes().and_then(|a| a.get(&attr)).cloned().unwrap_or_default()
        }
    };
    let dlq_arn = attribute("orders-dlq", QueueAttributeName::QueueArn).await;
    assert_eq!(attribute("orders-dlq", QueueAttributeName::MessageRetentionPeriod).await, "1209600");
    let redrive: serde_json::Value = serde_json::from_str(&attribute("orders", QueueAttributeName::RedrivePolicy).await).unwrap();
    assert_eq!(redrive["deadLetterTargetArn"], dlq_arn.as_str());
    assert_eq!(redrive["maxReceiveCount"].to_string().trim_matches('"'), "5");
    assert_eq!(attribute("orders", QueueAttributeName::VisibilityTimeout).await, "60");
    assert_eq!(attribute("shop-events", QueueAttributeName::VisibilityTimeout).await, "120");

    // Everything is tagged with the stack, as the services list it (which also shows
    // that the listings used after destroy find what they look for).
    let everything = Tagged {
        vpcs: 1,
        subnets: 4,
        internet_gateways: 1,
        route_tables: 3,
        nat_gateways: 1,
        addresses: 1,
        security_groups: 1,
        launch_templates: 1,
        instances: 2,
        auto_scaling_groups: 1,
        queues: 3,
    };
    assert_eq!(tagged(&aws, STACK).await, everything);

    // (b) A second up plans nothing and applies nothing.
    let plan = stack.preview(&(), &state).unwrap();
    assert!(!plan.has_changes(), "{}", plan.render(Default::default()));
    let again = session.up(&()).await.unwrap();
    assert!(again.succeeded());
    assert!(again.steps.is_empty(), "no step runs: {:?}", again.steps);
    assert_eq!(again.summary.changes(), 0);
    assert_eq!(counts(&again.state), counts(&state));

    // (c) Destroyed: every resource deleted, and nothing tagged with the stack remains.
    let destroyed = session.destroy().await.unwrap();
    assert!(destroyed.succeeded(), "{:?}", destroyed.failures().collect::<Vec<_>>());
    assert_eq!(destroyed.summary.delete, 17);
    assert!(destroyed.state.resources.is_empty() && destroyed.state.pending.is_empty(), "{:?}", destroyed.state.resources);
    assert_eq!(tagged(&aws, STACK).await, Tagged::default(), "nothing tagged cairn:stack={STACK} remains");
}
