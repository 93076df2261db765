//! `aws:ec2:Vpc` and `aws:ec2:Subnet` against the local AWS, checked with EC2's own
//! describe calls.

use aws_sdk_ec2::types::{Filter, VpcAttributeName};
use cairn_aws::ec2::{Subnet, Vpc};
use cairn_sdk::{Action, ResourceExt, Stack, StackState, Urn};
use serde::{Deserialize, Serialize};

async fn ec2() -> (cairn_aws::Provider, aws_sdk_ec2::Client) {
    cairn_testkit::moto().configure_env();
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    (cairn_aws::Provider::new(&config), aws_sdk_ec2::Client::new(&config))
}

fn id_of(state: &StackState, ty: &str, name: &str) -> String {
    state.resource(&Urn::new(&state.stack, ty, name)).unwrap_or_else(|| panic!("{name} in state")).id.clone()
}

async fn vpc_exists(ec2: &aws_sdk_ec2::Client, id: &str) -> bool {
    ec2.describe_vpcs().vpc_ids(id).send().await.is_ok_and(|o| !o.vpcs().is_empty())
}

async fn subnet(ec2: &aws_sdk_ec2::Client, id: &str) -> Option<aws_sdk_ec2::types::Subnet> {
    ec2.describe_subnets().subnet_ids(id).send().await.ok()?.subnets().first().cloned()
}

/// Everything tagged with `stack`: VPC and subnet ids.
async fn tagged(ec2: &aws_sdk_ec2::Client, stack: &str) -> (usize, usize) {
    let f = || Filter::builder().name("tag:cairn:stack").values(stack).build();
    let vpcs = ec2.describe_vpcs().filters(f()).send().await.unwrap().vpcs().len();
    let subnets = ec2.describe_subnets().filters(f()).send().await.unwrap().subnets().len();
    (vpcs, subnets)
}

#[derive(Clone, Serialize, Deserialize)]
struct Net {
    vpc_cidr: String,
    hostnames: bool,
    b_cidr: String,
    public_a: bool,
}

impl Default for Net {
    fn default() -> Self {
        Net { vpc_cidr: "10.0.0.0/16".into(), hostnames: true, b_cidr: "10.0.2.0/24".into(), public_a: false }
    }
}

fn network(stack: &str, aws: cairn_aws::Provider) -> Stack<Net> {
    Stack::<Net>::new(stack).provider(aws).program(|cx, n| {
        let vpc = cx.add(Vpc::new("shop").cidr_block(n.vpc_cidr.as_str()).enable_dns_hostnames(n.hostnames).tags([("team", "shop")]));
        let a_cidr = n.vpc_cidr.replace(".0.0/16", ".1.0/24");
        cx.add(Subnet::new("web-a").vpc_id(vpc.id()).cidr_block(a_cidr.as_str()).availability_zone("us-east-1a").map_public_ip_on_launch(n.public_a));
        let b_cidr = n.b_cidr.replace("10.0.", &n.vpc_cidr.replace(".0.0/16", "."));
        cx.add(Subnet::new("web-b").vpc_id(vpc.id()).cidr_block(b_cidr.as_str()).availability_zone("us-east-1b"));
        Ok(())
    })
}

#[tokio::test]
async fn a_network_is_created_updated_replaced_and_destroyed() {
    let (provider, ec2) = ec2().await;
    let stack = network("ec2-lifecycle", provider);
    const VPC: &str = "aws:ec2:Vpc";
    const SUBNET: &str = "aws:ec2:Subnet";

    // Create, checked with describe calls.
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&Net::default()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let vpc = id_of(&state, VPC, "shop");
    let described = ec2.describe_vpcs().vpc_ids(&vpc).send().await.unwrap();
    let v = &described.vpcs()[0];
    assert_eq!(v.cidr_block(), Some("10.0.0.0/16"));
    assert!(v.tags().iter().any(|t| t.key() == Some("Name") && t.value() == Some("shop")));
    assert!(v.tags().iter().any(|t| t.key() == Some("cairn:urn") && t.value() == Some("urn:cairn:ec2-lifecycle::aws:ec2:Vpc::shop")));
    let hostnames = ec2.describe_vpc_attribute().vpc_id(&vpc).attribute(VpcAttributeName::EnableDnsHostnames).send().await.unwrap();
    assert_eq!(hostnames.enable_dns_hostnames().and_then(|a| a.value()), Some(true));
    let a = subnet(&ec2, &id_of(&state, SUBNET, "web-a")).await.unwrap();
    assert_eq!((a.vpc_id(), a.cidr_block(), a.availability_zone()), (Some(vpc.as_str()), Some("10.0.1.0/24"), Some("us-east-1a")));
    assert!(!stack.preview(&Net::default(), &state).unwrap().has_changes(), "a second up changes nothing");

    // In place: DNS hostnames off, public IPs on.
    let tweaked = Net { hostnames: false, public_a: true, ..Net::default() };
    let plan = session.preview(&tweaked).unwrap();
    let actions: Vec<_> = plan.changed().map(|c| (c.urn.name().to_owned(), c.action)).collect();
    assert_eq!(actions, [("shop".to_owned(), Action::Update), ("web-a".to_owned(), Action::Update)]);
    let state = session.apply(&plan).await.unwrap().state;
    assert_eq!(id_of(&state, VPC, "shop"), vpc);
    let hostnames = ec2.describe_vpc_attribute().vpc_id(&vpc).attribute(VpcAttributeName::EnableDnsHostnames).send().await.unwrap();
    assert_eq!(hostnames.enable_dns_hostnames().and_then(|a| a.value()), Some(false));
    assert_eq!(subnet(&ec2, &id_of(&state, SUBNET, "web-a")).await.unwrap().map_public_ip_on_launch(), Some(true));

    // A subnet's CIDR forces its replacement.
    let old_b = id_of(&state, SUBNET, "web-b");
    let moved = Net { b_cidr: "10.0.3.0/24".into(), ..tweaked.clone() };
    let report = session.up(&moved).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    assert!(subnet(&ec2, &old_b).await.is_none(), "the old subnet is deleted");
    assert_eq!(subnet(&ec2, &id_of(&state, SUBNET, "web-b")).await.unwrap().cidr_block(), Some("10.0.3.0/24"));

    // The VPC's CIDR forces its replacement, and its subnets move with it.
    let elsewhere = Net { vpc_cidr: "10.9.0.0/16".into(), ..moved.clone() };
    let plan = session.preview(&elsewhere).unwrap();
    assert_eq!(plan.summary.replace, 3, "{}", plan.render(Default::default()));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let new_vpc = id_of(&state, VPC, "shop");
    assert_ne!(new_vpc, vpc);
    assert!(!vpc_exists(&ec2, &vpc).await, "the old VPC is deleted");
    assert_eq!(subnet(&ec2, &id_of(&state, SUBNET, "web-a")).await.unwrap().vpc_id(), Some(new_vpc.as_str()));
    assert_eq!(tagged(&ec2, "ec2-lifecycle").await, (1, 2), "no old copies left");

    // Drift-free, then destroyed: nothing tagged with the stack remains.
    assert!(session.refresh().await.unwrap().drift.is_empty());
    assert!(session.destroy().await.unwrap().succeeded());
    assert_eq!(tagged(&ec2, "ec2-lifecycle").await, (0, 0));
}

#[tokio::test]
async fn an_overlapping_subnet_is_refused_with_the_subnet_it_overlaps() {
    let (provider, _) = ec2().await;
    let stack = Stack::<()>::new("ec2-overlap").provider(provider).program(|cx, _| {
        let vpc = cx.add(Vpc::new("shop").cidr_block("10.0.0.0/16"));
        let b = cx.add(Subnet::new("web-b").vpc_id(vpc.id()).cidr_block("10.0.0.0/23"));
        cx.add(Subnet::new("web-a").vpc_id(vpc.id()).cidr_block("10.0.1.0/24").depends_on(&b));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    let a = report.steps.iter().find(|s| s.urn.name() == "web-a").unwrap();
    assert_eq!(
        a.status.error().map(ToString::to_string).as_deref(),
        Some("aws:ec2:Subnet 'web-a': CIDR 10.0.1.0/24 overlaps subnet web-b (10.0.0.0/23); give it a range no other subnet of the VPC uses")
    );
    assert!(session.destroy().await.unwrap().succeeded());
}

#[test]
fn bad_network_inputs_are_refused_before_any_call() {
    let stack = Stack::<()>::new("ec2-checks").program(|cx, _| {
        let vpc = cx.add(Vpc::new("shop").cidr_block("10.0.0.0/8").enable_dns_support(false).enable_dns_hostnames(true));
        cx.add(Subnet::new("web-a").vpc_id(vpc.id()).cidr_block("10.0.1.7/24"));
        Ok(())
    });
    let err = stack.preview(&(), &stack.new_state()).unwrap_err().to_string();
    assert_eq!(
        err,
        "the program declares an invalid graph (3 problems); nothing was changed:\n  \
         - aws:ec2:Vpc 'shop': property 'cidr_block' = \"10.0.0.0/8\" is invalid: it must be an IPv4 network in CIDR form with a /16 to /28 prefix and no host bits, such as 10.0.0.0/16\n  \
         - aws:ec2:Vpc 'shop': property 'enable_dns_hostnames' = true is invalid: it must be false while enable_dns_support is false (AWS needs DNS support for hostnames)\n  \
         - aws:ec2:Subnet 'web-a': property 'cidr_block' = \"10.0.1.7/24\" is invalid: it must be an IPv4 network in CIDR form with a /16 to /28 prefix and no host bits, such as 10.0.0.0/16"
    );
}

#[tokio::test]
async fn an_internet_gateway_is_attached_moved_in_place_and_deleted() {
    use cairn_aws::ec2::InternetGateway;
    let (provider, ec2) = ec2().await;
    let stack = Stack::<bool>::new("ec2-igw").provider(provider).program(|cx, second| {
        let a = cx.add(Vpc::new("a").cidr_block("10.1.0.0/16"));
        let b = cx.add(Vpc::new("b").cidr_block("10.2.0.0/16"));
        cx.add(InternetGateway::new("gw").vpc_id(if *second { b.id() } else { a.id() }));
        Ok(())
    });
    let attached_to = |out: aws_sdk_ec2::operation::describe_internet_gateways::DescribeInternetGatewaysOutput| {
        out.internet_gateways()[0].attachments().iter().find_map(|a| a.vpc_id()).map(str::to_owned)
    };

    let mut session = stack.in_memory_session().await.unwrap();
    let state = session.up(&false).await.unwrap().state;
    let gw = id_of(&state, "aws:ec2:InternetGateway", "gw");
    let a = id_of(&state, "aws:ec2:Vpc", "a");
    let out = ec2.describe_internet_gateways().internet_gateway_ids(&gw).send().await.unwrap();
    assert_eq!(attached_to(out), Some(a));

    let plan = session.preview(&true).unwrap();
    let actions: Vec<_> = plan.changed().map(|c| (c.urn.name().to_owned(), c.action)).collect();
    assert_eq!(actions, [("gw".to_owned(), Action::Update)], "moved in place");
    let state = session.apply(&plan).await.unwrap().state;
    assert_eq!(id_of(&state, "aws:ec2:InternetGateway", "gw"), gw, "same gateway");
    let out = ec2.describe_internet_gateways().internet_gateway_ids(&gw).send().await.unwrap();
    assert_eq!(attached_to(out), Some(id_of(&state, "aws:ec2:Vpc", "b")));

    assert!(session.destroy().await.unwrap().succeeded());
    let gone = ec2.describe_internet_gateways().internet_gateway_ids(&gw).send().await;
    assert!(gone.map_or(true, |o| o.internet_gateways().is_empty()), "the gateway is deleted");
    assert_eq!(tagged(&ec2, "ec2-igw").await, (0, 0));
}
