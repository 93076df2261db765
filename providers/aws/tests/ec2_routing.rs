//! `aws:ec2:RouteTable`, `aws:ec2:NatGateway` and `aws:ec2:ElasticIp` against the local
//! AWS, checked with EC2's own describe calls.

use aws_sdk_ec2::types::{Filter, NatGatewayState, RouteTable as AwsRouteTable};
use cairn_aws::ec2::{ElasticIp, InternetGateway, NatGateway, Route, RouteTable, Subnet, Vpc};
use cairn_sdk::{Action, Provider as _, ResourceExt, Stack, StackState, Urn};
use serde::{Deserialize, Serialize};

async fn ec2() -> (cairn_aws::Provider, aws_sdk_ec2::Client) {
    cairn_testkit::moto().configure_env();
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    (cairn_aws::Provider::new(&config), aws_sdk_ec2::Client::new(&config))
}

const RT: &str = "aws:ec2:RouteTable";
const NAT: &str = "aws:ec2:NatGateway";
const EIP: &str = "aws:ec2:ElasticIp";

fn id_of(state: &StackState, ty: &str, name: &str) -> String {
    state.resource(&Urn::new(&state.stack, ty, name)).unwrap_or_else(|| panic!("{name} in state")).id.clone()
}

fn output(state: &StackState, ty: &str, name: &str, property: &str) -> String {
    let r = state.resource(&Urn::new(&state.stack, ty, name)).unwrap();
    r.outputs.get(property).and_then(|v| v.as_str()).unwrap_or_else(|| panic!("{name}.{property}")).to_owned()
}

async fn table(ec2: &aws_sdk_ec2::Client, id: &str) -> Option<AwsRouteTable> {
    ec2.describe_route_tables().route_table_ids(id).send().await.ok()?.route_tables().first().cloned()
}

/// A table's routes other than `local`, as `destination -> target`, sorted.
fn routes(rt: &AwsRouteTable) -> Vec<String> {
    let mut out: Vec<String> = rt
        .routes()
        .iter()
        .filter(|r| r.gateway_id() != Some("local"))
        .map(|r| format!("{} -> {}", r.destination_cidr_block().unwrap_or_default(), r.gateway_id().or(r.nat_gateway_id()).unwrap_or_default()))
        .collect();
    out.sort();
    out
}

/// The subnets associated with a table, sorted.
fn subnets(rt: &AwsRouteTable) -> Vec<String> {
    let mut out: Vec<String> = rt.associations().iter().filter_map(|a| a.subnet_id().map(str::to_owned)).collect();
    out.sort();
    out
}

async fn nat_state(ec2: &aws_sdk_ec2::Client, id: &str) -> Option<NatGatewayState> {
    ec2.describe_nat_gateways().nat_gateway_ids(id).send().await.ok()?.nat_gateways().first()?.state().cloned()
}

async fn address_exists(ec2: &aws_sdk_ec2::Client, allocation: &str) -> bool {
    ec2.describe_addresses().allocation_ids(allocation).send().await.is_ok_and(|o| !o.addresses().is_empty())
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct Net {
    /// The private table's default route goes through the NAT gateway, not the internet
    /// gateway.
    via_nat: bool,
    /// The second private subnet uses the private table too.
    with_b: bool,
    /// Declare routes and subnets in another order.
    reordered: bool,
    /// The NAT gateway uses the second Elastic IP.
    second_eip: bool,
    eip_tag: Option<String>,
}

fn network(stack: &str, aws: cairn_aws::Provider) -> Stack<Net> {
    Stack::<Net>::new(stack).provider(aws).program(|cx, n| {
        let vpc = cx.add(Vpc::new("net").cidr_block("10.30.0.0/16"));
        let igw = cx.add(InternetGateway::new("igw").vpc_id(vpc.id()));
        let public = cx.add(Subnet::new("public").vpc_id(vpc.id()).cidr_block("10.30.0.0/24").availability_zone("us-east-1a"));
        let a = cx.add(Subnet::new("private-a").vpc_id(vpc.id()).cidr_block("10.30.1.0/24").availability_zone("us-east-1a"));
        let b = cx.add(Subnet::new("private-b").vpc_id(vpc.id()).cidr_block("10.30.2.0/24").availability_zone("us-east-1b"));
        let mut first = ElasticIp::new("nat-ip");
        if let Some(tag) = &n.eip_tag {
            first = first.tags([("purpose", tag.as_str())]);
        }
        let first = cx.add(first);
        let second = cx.add(ElasticIp::new("nat-ip-2"));
        let eip = if n.second_eip { second.allocation_id() } else { first.allocation_id() };
        let nat = cx.add(NatGateway::new("nat").subnet_id(public.id()).allocation_id(eip).depends_on(&igw));
        cx.add(RouteTable::new("public").vpc_id(vpc.id()).route(Route::to("0.0.0.0/0").via_gateway(igw.id())).subnet_id(public.id()));
        let default = if n.via_nat { Route::to("0.0.0.0/0").via_nat_gateway(nat.id()) } else { Route::to("0.0.0.0/0").via_gateway(igw.id()) };
        let mut routes = vec![default, Route::to("192.168.0.0/16").via_gateway(igw.id())];
        let mut private = vec![a.id()];
        if n.with_b {
            private.push(b.id());
        }
        if n.reordered {
            routes.reverse();
            private.reverse();
        }
        cx.add(RouteTable::new("private").vpc_id(vpc.id()).routes(routes).subnet_ids(private));
        Ok(())
    })
}

#[tokio::test]
async fn route_tables_nat_gateways_and_elastic_ips_are_created_changed_and_destroyed() {
    let (provider, ec2) = ec2().await;
    let stack = network("ec2-routing", provider);

    // Created, checked with describe calls.
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&Net::default()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let (igw, public) = (id_of(&state, "aws:ec2:InternetGateway", "igw"), id_of(&state, "aws:ec2:Subnet", "public"));
    let (a, b) = (id_of(&state, "aws:ec2:Subnet", "private-a"), id_of(&state, "aws:ec2:Subnet", "private-b"));
    let eip = id_of(&state, EIP, "nat-ip");
    let address = ec2.describe_addresses().allocation_ids(&eip).send().await.unwrap().addresses()[0].clone();
    assert_eq!(address.public_ip(), Some(output(&state, EIP, "nat-ip", "public_ip").as_str()));
    assert_eq!(output(&state, EIP, "nat-ip", "allocation_id"), eip);
    assert!(address.tags().iter().any(|t| t.key() == Some("Name") && t.value() == Some("nat-ip")));
    let nat = id_of(&state, NAT, "nat");
    let described = ec2.describe_nat_gateways().nat_gateway_ids(&nat).send().await.unwrap();
    let n = &described.nat_gateways()[0];
    assert_eq!((n.state(), n.subnet_id()), (Some(&NatGatewayState::Available), Some(public.as_str())));
    assert_eq!(n.nat_gateway_addresses()[0].allocation_id(), Some(eip.as_str()));
    let private = id_of(&state, RT, "private");
    let rt = table(&ec2, &private).await.unwrap();
    assert_eq!(routes(&rt), [format!("0.0.0.0/0 -> {igw}"), format!("192.168.0.0/16 -> {igw}")]);
    assert_eq!(subnets(&rt), [a.as_str()]);
    let rt = table(&ec2, &id_of(&state, RT, "public")).await.unwrap();
    assert_eq!((routes(&rt), subnets(&rt)), (vec![format!("0.0.0.0/0 -> {igw}")], vec![public.clone()]));
    assert!(!stack.preview(&Net::default(), &state).unwrap().has_changes(), "a second up changes nothing");
    let refreshed = stack.preview_refresh(&state).await.unwrap();
    assert!(refreshed.drift.is_empty(), "read back as declared: {:?}", refreshed.drift);

    // Each is found by its tags, as an interrupted create would be.
    let lookup = cairn_aws::Provider::from_env().await;
    for (ty, name, id) in [(RT, "private", &private), (NAT, "nat", &nat), (EIP, "nat-ip", &eip)] {
        let found = lookup.lookup(&Urn::new("ec2-routing", ty, name), &Default::default()).await.unwrap();
        assert_eq!(found.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [id.as_str()], "{ty}");
    }

    // The same routes and subnets in another order: nothing to do.
    let plan = stack.preview(&Net { reordered: true, ..Net::default() }, &state).unwrap();
    assert!(!plan.has_changes(), "{}", plan.render(Default::default()));

    // The default route moves from the internet gateway to the NAT gateway and a second
    // subnet joins, in place.
    let moved = Net { via_nat: true, with_b: true, ..Net::default() };
    let plan = session.preview(&moved).unwrap();
    let actions: Vec<_> = plan.changed().map(|c| (c.urn.name().to_owned(), c.action)).collect();
    assert_eq!(actions, [("private".to_owned(), Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    assert_eq!(id_of(&state, RT, "private"), private, "same route table");
    let rt = table(&ec2, &private).await.unwrap();
    assert_eq!(routes(&rt), [format!("0.0.0.0/0 -> {nat}"), format!("192.168.0.0/16 -> {igw}")]);
    assert_eq!(subnets(&rt), {
        let mut s = vec![a.clone(), b.clone()];
        s.sort();
        s
    });
    let plan = stack.preview(&Net { reordered: true, ..moved.clone() }, &state).unwrap();
    assert!(!plan.has_changes(), "{}", plan.render(Default::default()));

    // The second subnet leaves again; the Elastic IP gets a tag; both in place.
    let tagged = Net { via_nat: true, eip_tag: Some("nat".into()), ..Net::default() };
    let plan = session.preview(&tagged).unwrap();
    let actions: Vec<_> = plan.changed().map(|c| (c.urn.name().to_owned(), c.action)).collect();
    assert_eq!(actions, [("nat-ip".to_owned(), Action::Update), ("private".to_owned(), Action::Update)]);
    let state = session.apply(&plan).await.unwrap().state;
    assert_eq!(subnets(&table(&ec2, &private).await.unwrap()), [a.as_str()]);
    assert!(
        ec2.describe_route_tables()
            .filters(Filter::builder().name("association.subnet-id").values(&b).build())
            .send()
            .await
            .unwrap()
            .route_tables()
            .is_empty(),
        "subnet b is associated with no table"
    );
    let address = ec2.describe_addresses().allocation_ids(&eip).send().await.unwrap().addresses()[0].clone();
    assert!(address.tags().iter().any(|t| t.key() == Some("purpose") && t.value() == Some("nat")));
    assert_eq!(id_of(&state, EIP, "nat-ip"), eip, "same address");

    // Another Elastic IP forces a new NAT gateway; the route follows it in place.
    let renewed = Net { second_eip: true, ..tagged.clone() };
    let plan = session.preview(&renewed).unwrap();
    let actions: Vec<_> = plan.changed().map(|c| (c.urn.name().to_owned(), c.action)).collect();
    assert_eq!(actions, [("nat".to_owned(), Action::Replace), ("private".to_owned(), Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let new_nat = id_of(&state, NAT, "nat");
    assert_ne!(new_nat, nat);
    assert_eq!(nat_state(&ec2, &nat).await, Some(NatGatewayState::Deleted), "the old NAT gateway is deleted");
    assert_eq!(nat_state(&ec2, &new_nat).await, Some(NatGatewayState::Available));
    assert!(routes(&table(&ec2, &private).await.unwrap()).contains(&format!("0.0.0.0/0 -> {new_nat}")));
    let refreshed = stack.preview_refresh(&state).await.unwrap();
    assert!(refreshed.drift.is_empty(), "{:?}", refreshed.drift);

    // Destroyed: tables gone, NAT gateway deleted, addresses released.
    let second = id_of(&state, EIP, "nat-ip-2");
    assert!(session.destroy().await.unwrap().succeeded());
    assert!(table(&ec2, &private).await.is_none());
    assert_eq!(nat_state(&ec2, &new_nat).await, Some(NatGatewayState::Deleted));
    assert!(!address_exists(&ec2, &eip).await && !address_exists(&ec2, &second).await, "addresses released");
    let gone = cairn_aws::Provider::from_env().await.lookup(&Urn::new("ec2-routing", NAT, "nat"), &Default::default()).await.unwrap();
    assert!(gone.is_empty(), "a deleted NAT gateway is not found");
}

#[tokio::test]
async fn a_route_table_moves_to_another_vpc_by_replacement() {
    let (provider, ec2) = ec2().await;
    let stack = Stack::<bool>::new("ec2-rt-replace").provider(provider).program(|cx, second| {
        let a = cx.add(Vpc::new("a").cidr_block("10.31.0.0/16"));
        let b = cx.add(Vpc::new("b").cidr_block("10.32.0.0/16"));
        let vpc = if *second { b.id() } else { a.id() };
        let igw = cx.add(InternetGateway::new("igw").vpc_id(vpc.clone()));
        cx.add(RouteTable::new("rt").vpc_id(vpc).route(Route::to("0.0.0.0/0").via_gateway(igw.id())).tags([("env", "test")]));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let state = session.up(&false).await.unwrap().state;
    let old = id_of(&state, RT, "rt");
    let rt = table(&ec2, &old).await.unwrap();
    assert_eq!(rt.vpc_id(), Some(id_of(&state, "aws:ec2:Vpc", "a").as_str()));
    assert!(rt.tags().iter().any(|t| t.key() == Some("env") && t.value() == Some("test")));

    let plan = session.preview(&true).unwrap();
    let rt_change = plan.changed().find(|c| c.urn.name() == "rt").unwrap();
    assert_eq!((rt_change.action, rt_change.replace_reasons.clone()), (Action::Replace, vec!["vpc_id".to_owned()]));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let new = id_of(&state, RT, "rt");
    assert_ne!(new, old);
    assert!(table(&ec2, &old).await.is_none(), "the old table is deleted");
    let rt = table(&ec2, &new).await.unwrap();
    assert_eq!(rt.vpc_id(), Some(id_of(&state, "aws:ec2:Vpc", "b").as_str()));
    assert_eq!(routes(&rt), [format!("0.0.0.0/0 -> {}", id_of(&state, "aws:ec2:InternetGateway", "igw"))]);
    assert!(session.destroy().await.unwrap().succeeded());
    assert!(table(&ec2, &new).await.is_none());
}

#[tokio::test]
async fn a_subnet_moves_between_route_tables_of_the_stack_in_one_apply() {
    let (provider, ec2) = ec2().await;
    // One step at a time, in plan order: the table that takes the subnet ("first")
    // associates it before the one that gives it up ("second") lets go.
    let stack = Stack::<bool>::new("ec2-rt-move").provider(provider).parallelism(1).program(|cx, moved| {
        let vpc = cx.add(Vpc::new("net").cidr_block("10.33.0.0/16"));
        let s = cx.add(Subnet::new("s").vpc_id(vpc.id()).cidr_block("10.33.1.0/24").availability_zone("us-east-1a"));
        let (first, second) = (RouteTable::new("first").vpc_id(vpc.id()).depends_on(&s), RouteTable::new("second").vpc_id(vpc.id()).depends_on(&s));
        let (first, second) = if *moved { (first.subnet_id(s.id()), second) } else { (first, second.subnet_id(s.id())) };
        cx.add(first);
        cx.add(second);
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let state = session.up(&false).await.unwrap().state;
    let (first, second, s) = (id_of(&state, RT, "first"), id_of(&state, RT, "second"), id_of(&state, "aws:ec2:Subnet", "s"));
    assert_eq!(subnets(&table(&ec2, &second).await.unwrap()), [s.as_str()]);

    let plan = session.preview(&true).unwrap();
    let actions: Vec<_> = plan.changed().map(|c| (c.urn.name().to_owned(), c.action)).collect();
    assert_eq!(actions, [("first".to_owned(), Action::Update), ("second".to_owned(), Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let order: Vec<&str> = report.steps.iter().map(|r| r.urn.name()).collect();
    assert_eq!(order, ["first", "second"], "the taker went first, so the subnet was moved, not associated twice");
    assert_eq!(subnets(&table(&ec2, &first).await.unwrap()), [s.as_str()]);
    assert!(subnets(&table(&ec2, &second).await.unwrap()).is_empty());
    assert!(!stack.preview(&true, &report.state).unwrap().has_changes());
    assert!(session.destroy().await.unwrap().succeeded());
}

/// EC2's answer to associating a subnet that has a route table already (the local AWS
/// answers with the association made before).
const ALREADY_ASSOCIATED: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<Response><Errors><Error><Code>Resource.AlreadyAssociated</Code><Message>the specified association for route table conflicts with an existing association</Message></Error></Errors><RequestID>59dbff89-35bd-4eac-99ed-be587EXAMPLE</RequestID></Response>"#;

/// An association whose answer was lost: the SDK sends it again, and EC2 refuses it as
/// the subnet has a table, the one the first attempt gave it. Taken for done.
#[tokio::test]
async fn an_association_whose_answer_was_lost_is_taken_for_done() {
    use cairn_testkit::{Fault, FaultProxy};
    let proxy = FaultProxy::start(cairn_testkit::moto().endpoint());
    cairn_testkit::moto().configure_env();
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest()).endpoint_url(proxy.endpoint()).load().await;
    let stack = Stack::<()>::new("ec2-rt-lost-association").provider(cairn_aws::Provider::new(&config)).program(|cx, _| {
        let vpc = cx.add(Vpc::new("net").cidr_block("10.34.0.0/16"));
        let s = cx.add(Subnet::new("s").vpc_id(vpc.id()).cidr_block("10.34.1.0/24").availability_zone("us-east-1a"));
        cx.add(RouteTable::new("t").vpc_id(vpc.id()).subnet_id(s.id()));
        Ok(())
    });
    proxy.fault_next("AssociateRouteTable", Fault::LostAnswer);
    proxy.answer_instead_with_status("AssociateRouteTable", 400, ALREADY_ASSOCIATED);
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let stats = proxy.stats();
    assert_eq!((stats.faults_of(Fault::LostAnswer), stats.answered_instead.get("AssociateRouteTable")), (1, Some(&1)), "the retry was refused");

    let ec2 = aws_sdk_ec2::Client::new(&config);
    let (t, s) = (id_of(&report.state, RT, "t"), id_of(&report.state, "aws:ec2:Subnet", "s"));
    assert_eq!(subnets(&table(&ec2, &t).await.unwrap()), [s.as_str()]);
    assert!(session.refresh().await.unwrap().drift.is_empty(), "state says what the table has");
    assert!(session.destroy().await.unwrap().succeeded());
}

#[test]
fn bad_routes_are_refused_before_any_call() {
    let stack = Stack::<()>::new("ec2-rt-checks").program(|cx, _| {
        cx.add(
            RouteTable::new("rt")
                .vpc_id("vpc-123")
                .route(Route::to("0.0.0.0/0").via_gateway("igw-1"))
                .route(Route::to("0.0.0.0/0").via_nat_gateway("nat-1"))
                .route(Route::to("10.0.0.1/16").via_nat_gateway("igw-2"))
                .subnet_id("sn-1"),
        );
        cx.add(NatGateway::new("nat").subnet_id("subnet-1").allocation_id("192.0.2.1"));
        Ok(())
    });
    let err = stack.preview(&(), &stack.new_state()).unwrap_err().to_string();
    assert_eq!(
        err,
        "the program declares an invalid graph (5 problems); nothing was changed:\n  \
         - aws:ec2:RouteTable 'rt': property 'subnet_ids' = \"sn-1\" is invalid: it must be a list of ids, each a subnet id (subnet-...), such as another resource's .id()\n  \
         - aws:ec2:RouteTable 'rt': property 'routes' = {\"destination\":\"0.0.0.0/0\",\"nat_gateway_id\":\"nat-1\"} is invalid: it must be the only route to \"0.0.0.0/0\": a route table has one route per destination\n  \
         - aws:ec2:RouteTable 'rt': property 'routes' = {\"destination\":\"10.0.0.1/16\",\"nat_gateway_id\":\"igw-2\"} is invalid: it must have an IPv4 network in CIDR form without host bits as its destination, such as 0.0.0.0/0\n  \
         - aws:ec2:RouteTable 'rt': property 'routes' = {\"destination\":\"10.0.0.1/16\",\"nat_gateway_id\":\"igw-2\"} is invalid: it must have a NAT gateway id (nat-...) as its nat_gateway_id\n  \
         - aws:ec2:NatGateway 'nat': property 'allocation_id' = \"192.0.2.1\" is invalid: it must be an Elastic IP allocation id (eipalloc-...), such as another resource's output"
    );
}
