//! `aws:ec2:SecurityGroup` against the local AWS, checked with EC2's own describe calls.

use aws_sdk_ec2::types::{Filter, IpPermission, SecurityGroup as AwsGroup};
use cairn_aws::ec2::{Rule, SecurityGroup, Vpc, SECURITY_GROUP};
use cairn_sdk::{Action, DynamicResource, Provider as _, Stack, StackState, Urn};
use cairn_testkit::{Fault, FaultProxy};
use serde::{Deserialize, Serialize};
use serde_json::json;

mod common;
use common::rule_lines;

async fn ec2() -> (cairn_aws::Provider, aws_sdk_ec2::Client) {
    cairn_testkit::moto().configure_env();
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    (cairn_aws::Provider::new(&config), aws_sdk_ec2::Client::new(&config))
}

const SG: &str = "aws:ec2:SecurityGroup";

fn id_of(state: &StackState, ty: &str, name: &str) -> String {
    state.resource(&Urn::new(&state.stack, ty, name)).unwrap_or_else(|| panic!("{name} in state")).id.clone()
}

async fn group(ec2: &aws_sdk_ec2::Client, id: &str) -> Option<AwsGroup> {
    ec2.describe_security_groups().group_ids(id).send().await.ok()?.security_groups().first().cloned()
}

#[derive(Clone, Default, Serialize, Deserialize)]
struct Fw {
    /// Serve 8443 instead of 80.
    moved: bool,
    /// Declare the same rules in another order.
    reordered: bool,
    description: Option<String>,
}

fn firewall(stack: &str, aws: cairn_aws::Provider) -> Stack<Fw> {
    Stack::<Fw>::new(stack).provider(aws).program(|cx, fw| {
        let vpc = cx.add(Vpc::new("shop").cidr_block("10.20.0.0/16"));
        let mut rules = vec![
            Rule::tcp(443).from_cidr("0.0.0.0/0"),
            Rule::tcp(if fw.moved { 8443 } else { 80 }).from_cidr("0.0.0.0/0"),
            Rule::tcp(22).from_cidr("10.20.0.0/16"),
            Rule::tcp(22).from_self(),
            Rule::icmp_all().from_cidr("10.20.0.0/16"),
        ];
        if fw.reordered {
            rules.reverse();
        }
        let mut web = SecurityGroup::new("web").vpc_id(vpc.id()).ingress_rules(rules).allow_all_egress().tags([("tier", "web")]);
        if let Some(d) = &fw.description {
            web = web.description(d.as_str());
        }
        let web = cx.add(web);
        // No egress declared: the group allows no outbound traffic.
        cx.add(SecurityGroup::new("db").vpc_id(vpc.id()).ingress(Rule::tcp(5432).from_group(web.id())));
        Ok(())
    })
}

#[tokio::test]
async fn a_security_group_is_created_changed_in_place_replaced_and_destroyed() {
    let (provider, ec2) = ec2().await;
    let stack = firewall("ec2-sg-lifecycle", provider);

    // Created: exactly the declared rules, AWS's merged permissions notwithstanding.
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&Fw::default()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let (web, db) = (id_of(&state, SG, "web"), id_of(&state, SG, "db"));
    let g = group(&ec2, &web).await.unwrap();
    assert_eq!(
        rule_lines(g.ip_permissions()),
        ["icmp -1--1 10.20.0.0/16", "tcp 22-22 10.20.0.0/16", &format!("tcp 22-22 {web}"), "tcp 443-443 0.0.0.0/0", "tcp 80-80 0.0.0.0/0"]
    );
    assert_eq!(rule_lines(g.ip_permissions_egress()), ["-1 all 0.0.0.0/0"], "allow-all egress, as declared");
    assert_eq!(g.description(), Some("Managed by Cairn"));
    assert!(g.group_name().unwrap().starts_with("web-"), "auto-named: {:?}", g.group_name());
    assert!(g.tags().iter().any(|t| t.key() == Some("tier") && t.value() == Some("web")));
    assert!(g.tags().iter().any(|t| t.key() == Some("cairn:urn") && t.value() == Some("urn:cairn:ec2-sg-lifecycle::aws:ec2:SecurityGroup::web")));
    let d = group(&ec2, &db).await.unwrap();
    assert_eq!(rule_lines(d.ip_permissions()), [format!("tcp 5432-5432 {web}")]);
    assert!(d.ip_permissions_egress().is_empty(), "AWS's default egress rule is revoked when none is declared");
    assert!(!stack.preview(&Fw::default(), &state).unwrap().has_changes(), "a second up changes nothing");
    assert!(stack.preview_refresh(&state).await.unwrap().drift.is_empty(), "read back as declared");

    // Found by its tags, as an interrupted create would be.
    let found = cairn_aws::Provider::from_env().await.lookup(&Urn::new("ec2-sg-lifecycle", SG, "web"), &Default::default()).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [web.as_str()]);
    assert_eq!(found[0].inputs.get("egress"), Some(&json!([{"protocol": "-1", "cidr": "0.0.0.0/0"}])));

    // The same rules in another order: nothing to do.
    let plan = stack.preview(&Fw { reordered: true, ..Fw::default() }, &state).unwrap();
    assert!(!plan.has_changes(), "{}", plan.render(Default::default()));

    // One rule added (8443), one removed (80), in place.
    let moved = Fw { moved: true, ..Fw::default() };
    let plan = session.preview(&moved).unwrap();
    let actions: Vec<_> = plan.changed().map(|c| (c.urn.name().to_owned(), c.action)).collect();
    assert_eq!(actions, [("web".to_owned(), Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    assert_eq!(id_of(&state, SG, "web"), web, "same group");
    let g = group(&ec2, &web).await.unwrap();
    assert_eq!(
        rule_lines(g.ip_permissions()),
        ["icmp -1--1 10.20.0.0/16", "tcp 22-22 10.20.0.0/16", &format!("tcp 22-22 {web}"), "tcp 443-443 0.0.0.0/0", "tcp 8443-8443 0.0.0.0/0"]
    );
    assert_eq!(rule_lines(g.ip_permissions_egress()), ["-1 all 0.0.0.0/0"]);
    assert!(!stack.preview(&moved, &state).unwrap().has_changes());

    // The description forces a replacement; the group that refers to it follows in place.
    let described = Fw { description: Some("Web servers".into()), ..moved.clone() };
    let plan = session.preview(&described).unwrap();
    let actions: Vec<_> = plan.changed().map(|c| (c.urn.name().to_owned(), c.action)).collect();
    assert_eq!(actions, [("web".to_owned(), Action::Replace), ("db".to_owned(), Action::Update)]);
    assert_eq!(plan.changed().next().unwrap().replace_reasons, ["description"]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let new_web = id_of(&state, SG, "web");
    assert_ne!(new_web, web);
    assert!(group(&ec2, &web).await.is_none(), "the old group is deleted");
    let g = group(&ec2, &new_web).await.unwrap();
    assert_eq!(g.description(), Some("Web servers"));
    assert!(rule_lines(g.ip_permissions()).contains(&format!("tcp 22-22 {new_web}")), "self rules follow the new group");
    assert_eq!(rule_lines(group(&ec2, &db).await.unwrap().ip_permissions()), [format!("tcp 5432-5432 {new_web}")]);
    assert_eq!(id_of(&state, SG, "db"), db);

    // Destroyed: nothing tagged with the stack remains.
    assert!(session.destroy().await.unwrap().succeeded());
    let tagged =
        ec2.describe_security_groups().filters(Filter::builder().name("tag:cairn:stack").values("ec2-sg-lifecycle").build()).send().await.unwrap();
    assert!(tagged.security_groups().is_empty());
}

#[tokio::test]
async fn rules_changed_outside_cairn_are_set_right_by_the_next_update() {
    let (provider, ec2) = ec2().await;
    let stack = Stack::<u16>::new("ec2-sg-drift").provider(provider).program(|cx, port| {
        let vpc = cx.add(Vpc::new("net").cidr_block("10.21.0.0/16"));
        cx.add(
            SecurityGroup::new("app").vpc_id(vpc.id()).ingress(Rule::tcp(*port).from_cidr("10.0.0.0/8")).egress(Rule::tcp(443).to_cidr("0.0.0.0/0")),
        );
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let state = session.up(&8080).await.unwrap().state;
    let app = id_of(&state, SG, "app");
    // Someone opens SSH to the world by hand.
    let ssh = IpPermission::builder()
        .ip_protocol("tcp")
        .from_port(22)
        .to_port(22)
        .ip_ranges(aws_sdk_ec2::types::IpRange::builder().cidr_ip("0.0.0.0/0").build())
        .build();
    ec2.authorize_security_group_ingress().group_id(&app).ip_permissions(ssh).send().await.unwrap();
    let refreshed = session.refresh().await.unwrap();
    assert_eq!(refreshed.drift.len(), 1, "the extra rule shows as drift");

    let report = session.up(&8081).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let g = group(&ec2, &app).await.unwrap();
    assert_eq!(rule_lines(g.ip_permissions()), ["tcp 8081-8081 10.0.0.0/8"], "the hand-made rule is revoked");
    assert_eq!(rule_lines(g.ip_permissions_egress()), ["tcp 443-443 0.0.0.0/0"], "egress exactly as declared");
    assert!(session.destroy().await.unwrap().succeeded());
}

/// EC2's answer to a revoke of the rule it gives every new group, when it does not see
/// that rule yet (eventual consistency): success, with the rule listed as unknown.
const ALL_OUT_UNKNOWN: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<RevokeSecurityGroupEgressResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
  <requestId>59dbff89-35bd-4eac-99ed-be587EXAMPLE</requestId>
  <return>true</return>
  <unknownIpPermissionSet>
    <item><ipProtocol>-1</ipProtocol><ipRanges><item><cidrIp>0.0.0.0/0</cidrIp></item></ipRanges></item>
  </unknownIpPermissionSet>
</RevokeSecurityGroupEgressResponse>"#;

/// A proxy in front of the local AWS, with the SDK configured to go through it, and a
/// stack of one VPC and a group `locked` in it that lets in TCP on `ports` from the VPC
/// and allows no traffic out.
async fn locked_through_proxy(stack: &str, cidr: &'static str, ports: &'static [u16]) -> (FaultProxy, aws_sdk_ec2::Client, Stack<()>) {
    let proxy = FaultProxy::start(cairn_testkit::moto().endpoint());
    cairn_testkit::moto().configure_env();
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest()).endpoint_url(proxy.endpoint()).load().await;
    let stack = Stack::<()>::new(stack).provider(cairn_aws::Provider::new(&config)).program(move |cx, _| {
        let vpc = cx.add(Vpc::new("net").cidr_block(cidr));
        // No egress declared: no traffic out.
        cx.add(SecurityGroup::new("locked").vpc_id(vpc.id()).ingress_rules(ports.iter().map(|&p| Rule::tcp(p).from_cidr(cidr))));
        Ok(())
    });
    (proxy, aws_sdk_ec2::Client::new(&config), stack)
}

#[tokio::test]
async fn a_revoke_that_finds_no_rule_is_not_taken_for_done() {
    // The proxy answers the create's revoke of the all-out rule itself, as EC2 does when
    // it does not see the rule yet: moto keeps the rule.
    let (proxy, ec2, stack) = locked_through_proxy("ec2-sg-unrevoked", "10.29.0.0/16", &[443]).await;
    proxy.answer_instead("RevokeSecurityGroupEgress", ALL_OUT_UNKNOWN);
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let stats = proxy.stats();
    assert_eq!(stats.answered_instead.get("RevokeSecurityGroupEgress"), Some(&1), "the proxy answered the first revoke");
    assert_eq!(stats.by_operation.get("RevokeSecurityGroupEgress"), Some(&2), "and moto the second");

    // The create read the group again and revoked the rule for good: the group lets
    // nothing out, as declared and as state says.
    let locked = id_of(&report.state, SG, "locked");
    let g = group(&ec2, &locked).await.unwrap();
    assert_eq!(rule_lines(g.ip_permissions_egress()), Vec::<String>::new(), "the all-out rule is gone");
    let recorded = report.state.resource(&Urn::new("ec2-sg-unrevoked", SG, "locked")).unwrap();
    assert_eq!(recorded.inputs.get("egress"), None, "state records no egress");
    assert!(session.refresh().await.unwrap().drift.is_empty(), "no drift");
    assert!(session.destroy().await.unwrap().succeeded());
}

/// When the second revoke does not find the rule either, the create does not claim
/// the declared rules: its step fails with the group kept in state as AWS lists it,
/// and the next `up` revokes the rule.
#[tokio::test]
async fn a_rule_that_will_not_go_fails_the_create_and_the_next_up_takes_it_away() {
    let (proxy, ec2, stack) = locked_through_proxy("ec2-sg-unrevoked-twice", "10.28.0.0/16", &[443]).await;
    for _ in 0..2 {
        proxy.answer_instead("RevokeSecurityGroupEgress", ALL_OUT_UNKNOWN);
    }
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    let errors: Vec<String> = report.failures().filter_map(|s| s.status.error()).map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("did not come to the declared ones after two syncs") && errors[0].contains("kept in state"), "{}", errors[0]);
    let locked = id_of(&report.state, SG, "locked");
    assert_eq!(rule_lines(group(&ec2, &locked).await.unwrap().ip_permissions_egress()), ["-1 all 0.0.0.0/0"]);

    let report = session.up(&()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(id_of(&report.state, SG, "locked"), locked, "the same group, set right");
    assert_eq!(rule_lines(group(&ec2, &locked).await.unwrap().ip_permissions_egress()), Vec::<String>::new());
    assert!(session.refresh().await.unwrap().drift.is_empty(), "no drift");
    assert!(session.destroy().await.unwrap().succeeded());
}

/// An add whose answer was lost took effect: the SDK sends it again, and EC2 refuses the
/// whole batch as the group has its rules. Taken for done, rule by rule.
#[tokio::test]
async fn an_add_whose_answer_was_lost_is_taken_for_done() {
    let (proxy, ec2, stack) = locked_through_proxy("ec2-sg-lost-add", "10.27.0.0/16", &[443, 8443]).await;
    proxy.fault_next("AuthorizeSecurityGroupIngress", Fault::LostAnswer);
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let stats = proxy.stats();
    assert_eq!(stats.faults_of(Fault::LostAnswer), 1);
    assert_eq!(stats.retries_by_operation.get("AuthorizeSecurityGroupIngress"), Some(&1), "the SDK sent the batch again");
    assert_eq!(stats.by_operation.get("AuthorizeSecurityGroupIngress"), Some(&4), "the batch twice, then each rule");

    let locked = id_of(&report.state, SG, "locked");
    let g = group(&ec2, &locked).await.unwrap();
    assert_eq!(rule_lines(g.ip_permissions()), ["tcp 443-443 10.27.0.0/16", "tcp 8443-8443 10.27.0.0/16"]);
    assert_eq!(rule_lines(g.ip_permissions_egress()), Vec::<String>::new());
    assert!(session.refresh().await.unwrap().drift.is_empty(), "state says what the group has");
    assert!(session.destroy().await.unwrap().succeeded());
}

#[tokio::test]
async fn a_group_left_to_the_default_vpc_gives_its_vpc_id_to_others() {
    use cairn_aws::ec2::Subnet;
    let (provider, ec2) = ec2().await;
    let stack = Stack::<()>::new("ec2-sg-default-vpc").provider(provider).program(|cx, _| {
        let sg = cx.add(SecurityGroup::new("plain").ingress(Rule::udp(53).from_cidr("172.31.0.0/16")));
        cx.add(Subnet::new("beside").vpc_id(sg.vpc_id()).cidr_block("172.31.200.0/24").availability_zone("us-east-1a"));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let g = group(&ec2, &id_of(&report.state, SG, "plain")).await.unwrap();
    let subnet = ec2.describe_subnets().subnet_ids(id_of(&report.state, "aws:ec2:Subnet", "beside")).send().await.unwrap();
    assert_eq!(subnet.subnets()[0].vpc_id(), g.vpc_id(), "the subnet went into the group's (default) VPC");
    assert_eq!(rule_lines(g.ip_permissions()), ["udp 53-53 172.31.0.0/16"]);
    assert!(!stack.preview(&(), &report.state).unwrap().has_changes());
    assert!(session.destroy().await.unwrap().succeeded());
    assert!(group(&ec2, &id_of(&report.state, SG, "plain")).await.is_none());
}

#[test]
fn bad_rules_are_refused_before_any_call() {
    let stack = Stack::<()>::new("ec2-sg-checks").program(|cx, _| {
        cx.add(
            SecurityGroup::new("web")
                .name("sg-web")
                .ingress(Rule::tcp_range(500, 80).from_cidr("0.0.0.0/0"))
                .ingress(Rule::tcp(443).from_cidr("10.0.0.1/8"))
                .egress(Rule::icmp(300, 0).to_cidr("0.0.0.0/0")),
        );
        cx.add(DynamicResource::new(&SECURITY_GROUP, "raw").set(
            "ingress",
            json!([
                {"protocol": "tcp", "from_port": 22, "to_port": 22, "cidr": "10.0.0.0/8", "group_id": "sg-123"},
                {"protocol": "gre", "cidr": "10.0.0.0/8"},
                {"protocol": "-1", "from_port": 0, "to_port": 0, "cidr": "10.0.0.0/8"}
            ]),
        ));
        Ok(())
    });
    let err = stack.preview(&(), &stack.new_state()).unwrap_err().to_string();
    assert_eq!(
        err,
        "the program declares an invalid graph (7 problems); nothing was changed:\n  \
         - aws:ec2:SecurityGroup 'web': property 'name' = \"sg-web\" is invalid: it must be 1 to 255 ASCII characters not starting with sg-, or be left unset for a generated name\n  \
         - aws:ec2:SecurityGroup 'web': property 'ingress' = {\"cidr\":\"0.0.0.0/0\",\"from_port\":500,\"protocol\":\"tcp\",\"to_port\":80} is invalid: it must have ports from 0 to 65535 with from_port no greater than to_port\n  \
         - aws:ec2:SecurityGroup 'web': property 'ingress' = {\"cidr\":\"10.0.0.1/8\",\"from_port\":443,\"protocol\":\"tcp\",\"to_port\":443} is invalid: it must have an IPv4 network in CIDR form without host bits as its source, such as 10.0.0.0/16 or 0.0.0.0/0\n  \
         - aws:ec2:SecurityGroup 'web': property 'egress' = {\"cidr\":\"0.0.0.0/0\",\"from_port\":300,\"protocol\":\"icmp\",\"to_port\":0} is invalid: it must have an ICMP type (from_port) and code (to_port), each from 0 to 255 or -1 for all\n  \
         - aws:ec2:SecurityGroup 'raw': property 'ingress' = {\"cidr\":\"10.0.0.0/8\",\"from_port\":22,\"group_id\":\"sg-123\",\"protocol\":\"tcp\",\"to_port\":22} is invalid: it must have exactly one source: cidr, group_id or self (found cidr and group_id)\n  \
         - aws:ec2:SecurityGroup 'raw': property 'ingress' = {\"cidr\":\"10.0.0.0/8\",\"protocol\":\"gre\"} is invalid: it must have protocol \"tcp\", \"udp\", \"icmp\" or \"-1\" (all traffic)\n  \
         - aws:ec2:SecurityGroup 'raw': property 'ingress' = {\"cidr\":\"10.0.0.0/8\",\"from_port\":0,\"protocol\":\"-1\",\"to_port\":0} is invalid: it must have no from_port or to_port with protocol -1 (all traffic covers every port)"
    );
}

#[test]
fn a_group_name_given_twice_is_refused_only_within_one_vpc() {
    // S: the second group's VPC. A group's name is unique within its VPC only.
    let stack = Stack::<String>::new("ec2-sg-twice").program(|cx, vpc| {
        cx.add(SecurityGroup::new("web").name("web").vpc_id("vpc-0a"));
        cx.add(SecurityGroup::new("web-copy").name("web").vpc_id(vpc.as_str()));
        Ok(())
    });
    let plan = stack.preview(&"vpc-0b".to_owned(), &stack.new_state()).unwrap();
    assert_eq!(plan.summary.create, 2);
    let err = stack.preview(&"vpc-0a".to_owned(), &stack.new_state()).unwrap_err().to_string();
    assert_eq!(
        err,
        "the program declares an invalid graph (1 problem); nothing was changed:\n  \
         - aws:ec2:SecurityGroup 'web' and aws:ec2:SecurityGroup 'web-copy' would be one cloud object (name = \"web\", vpc_id = \"vpc-0a\"); give one of them another name or vpc_id, or declare it once"
    );
}
