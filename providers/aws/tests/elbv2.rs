//! `aws:elbv2:LoadBalancer`, `aws:elbv2:TargetGroup` and `aws:elbv2:Listener` (and an
//! Auto Scaling group's `target_group_arns`) against the local AWS, every effect checked
//! with the ELBv2 (and Auto Scaling) API itself.

use std::collections::HashMap;

use aws_sdk_ec2::types::{InstanceType, RequestLaunchTemplateData};
use aws_sdk_elasticloadbalancingv2::types::{Listener as Lst, LoadBalancer as Lb, TargetGroup as Tg};
use cairn_aws::autoscaling::Group;
use cairn_aws::ec2::{SecurityGroup, Subnet, Vpc};
use cairn_aws::elbv2::{Listener, LoadBalancer, TargetGroup};
use cairn_sdk::{Action, Props, Provider as _, Stack, StackState, Urn};
use serde::{Deserialize, Serialize};
use serde_json::json;

const LB: &str = "aws:elbv2:LoadBalancer";
const TG: &str = "aws:elbv2:TargetGroup";
const LISTENER: &str = "aws:elbv2:Listener";

struct Aws {
    provider: cairn_aws::Provider,
    elb: aws_sdk_elasticloadbalancingv2::Client,
    ec2: aws_sdk_ec2::Client,
    asg: aws_sdk_autoscaling::Client,
    acm: aws_sdk_acm::Client,
}

async fn aws() -> Aws {
    cairn_testkit::moto().configure_env();
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    Aws {
        provider: cairn_aws::Provider::new(&config),
        elb: aws_sdk_elasticloadbalancingv2::Client::new(&config),
        ec2: aws_sdk_ec2::Client::new(&config),
        asg: aws_sdk_autoscaling::Client::new(&config),
        acm: aws_sdk_acm::Client::new(&config),
    }
}

// ---------------------------------------------------------------------------------------
// Independent reads, through the ELBv2 client.

async fn load_balancer(elb: &aws_sdk_elasticloadbalancingv2::Client, arn: &str) -> Option<Lb> {
    match elb.describe_load_balancers().load_balancer_arns(arn).send().await {
        Ok(out) => out.load_balancers().first().cloned(),
        Err(e) if e.as_service_error().and_then(|s| s.meta().code()) == Some("LoadBalancerNotFound") => None,
        Err(e) => panic!("describe_load_balancers: {e:?}"),
    }
}

async fn target_group(elb: &aws_sdk_elasticloadbalancingv2::Client, arn: &str) -> Option<Tg> {
    match elb.describe_target_groups().target_group_arns(arn).send().await {
        Ok(out) => out.target_groups().first().cloned(),
        Err(e) if e.as_service_error().and_then(|s| s.meta().code()) == Some("TargetGroupNotFound") => None,
        Err(e) => panic!("describe_target_groups: {e:?}"),
    }
}

async fn listener(elb: &aws_sdk_elasticloadbalancingv2::Client, arn: &str) -> Option<Lst> {
    match elb.describe_listeners().listener_arns(arn).send().await {
        Ok(out) => out.listeners().first().cloned(),
        Err(e) if e.as_service_error().and_then(|s| s.meta().code()) == Some("ListenerNotFound") => None,
        Err(e) => panic!("describe_listeners: {e:?}"),
    }
}

async fn tags(elb: &aws_sdk_elasticloadbalancingv2::Client, arn: &str) -> HashMap<String, String> {
    let out = elb.describe_tags().resource_arns(arn).send().await.unwrap();
    let d = out.tag_descriptions().first().unwrap();
    d.tags().iter().map(|t| (t.key().unwrap().to_owned(), t.value().unwrap_or_default().to_owned())).collect()
}

/// The ARNs of the load balancers and target groups tagged with `stack`.
async fn balancers_and_groups_of(elb: &aws_sdk_elasticloadbalancingv2::Client, stack: &str) -> Vec<String> {
    let mut arns: Vec<String> = Vec::new();
    let lbs = elb.describe_load_balancers().send().await.unwrap();
    arns.extend(lbs.load_balancers().iter().filter_map(|l| l.load_balancer_arn()).map(str::to_owned));
    let tgs = elb.describe_target_groups().send().await.unwrap();
    arns.extend(tgs.target_groups().iter().filter_map(|g| g.target_group_arn()).map(str::to_owned));
    let mut mine = Vec::new();
    for arn in arns {
        if tags(elb, &arn).await.get("cairn:stack").map(String::as_str) == Some(stack) {
            mine.push(arn);
        }
    }
    mine.sort();
    mine
}

fn subnets_of(lb: &Lb) -> Vec<String> {
    let mut ids: Vec<String> = lb.availability_zones().iter().filter_map(|z| z.subnet_id()).map(str::to_owned).collect();
    ids.sort();
    ids
}

fn forwards_to(l: &Lst) -> Option<&str> {
    l.default_actions().first().filter(|a| a.r#type().map(|t| t.as_str()) == Some("forward")).and_then(|a| a.target_group_arn())
}

fn id_of(state: &StackState, ty: &str, name: &str) -> String {
    state.resource(&Urn::new(&state.stack, ty, name)).unwrap_or_else(|| panic!("{name} in state")).id.clone()
}

fn output(state: &StackState, ty: &str, name: &str, key: &str) -> Option<String> {
    let r = state.resource(&Urn::new(&state.stack, ty, name))?;
    r.outputs.get(key).and_then(|v| v.as_str()).map(str::to_owned)
}

fn sorted<const N: usize>(items: [&str; N]) -> Vec<String> {
    let mut v: Vec<String> = items.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

fn changes(plan: &cairn_sdk::Plan) -> Vec<(String, Action)> {
    plan.changed().map(|c| (c.urn.name().to_owned(), c.action)).collect()
}

// ---------------------------------------------------------------------------------------
// A load balancer, a target group and a listener.

#[derive(Clone, Serialize, Deserialize)]
struct Web {
    third_subnet: bool,
    /// Declare the subnets in the opposite order.
    reversed: bool,
    internal: bool,
    target_port: u16,
    health_path: String,
    listener_port: u16,
}

impl Default for Web {
    fn default() -> Self {
        Web { third_subnet: false, reversed: false, internal: false, target_port: 8080, health_path: "/health".into(), listener_port: 80 }
    }
}

/// The network the load balancer lives in: a VPC, three subnets in three zones and a
/// security group, in `10.<net>.0.0/16`.
struct Net {
    vpc: cairn_aws::ec2::VpcRef,
    subnets: [cairn_aws::ec2::SubnetRef; 3],
    sg: cairn_aws::ec2::SecurityGroupRef,
}

fn net(cx: &mut cairn_sdk::Cx, net: u8) -> Net {
    let vpc = cx.add(Vpc::new("net").cidr_block(format!("10.{net}.0.0/16")));
    let subnet = |cx: &mut cairn_sdk::Cx, name: &str, i: u8, zone: &str| {
        cx.add(Subnet::new(name).vpc_id(vpc.id()).cidr_block(format!("10.{net}.{i}.0/24")).availability_zone(zone))
    };
    let subnets = [subnet(cx, "a", 1, "us-east-1a"), subnet(cx, "b", 2, "us-east-1b"), subnet(cx, "c", 3, "us-east-1c")];
    let sg = cx.add(SecurityGroup::new("lb").vpc_id(vpc.id()));
    Net { vpc, subnets, sg }
}

fn web(stack: &str, provider: cairn_aws::Provider) -> Stack<Web> {
    Stack::<Web>::new(stack).provider(provider).program(|cx, w| {
        let Net { vpc, subnets: [a, b, c], sg } = net(cx, 40);
        let mut subnets = if w.third_subnet { vec![a.id(), b.id(), c.id()] } else { vec![a.id(), b.id()] };
        if w.reversed {
            subnets.reverse();
        }
        let scheme = if w.internal { "internal" } else { "internet-facing" };
        let lb = cx.add(LoadBalancer::new("web").scheme(scheme).subnet_ids(subnets).security_group_ids([sg.id()]).tags([("team", "web")]));
        let tg = cx.add(TargetGroup::new("app").port(w.target_port).vpc_id(vpc.id()).health_check_path(w.health_path.as_str()).tags([("team", "web")]));
        cx.add(Listener::new("http").load_balancer_arn(lb.arn()).port(w.listener_port).default_target_group_arn(tg.arn()).tags([("team", "web")]));
        Ok(())
    })
}

#[tokio::test]
async fn a_load_balancer_target_group_and_listener_are_created_updated_replaced_and_destroyed() {
    let aws = aws().await;
    let stack = web("elbv2-lifecycle", aws.provider);

    // Create, checked with describe calls.
    let first = Web::default();
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&first).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let (lb_arn, tg_arn, l_arn) = (id_of(&state, LB, "web"), id_of(&state, TG, "app"), id_of(&state, LISTENER, "http"));
    let (a, b, c) = (id_of(&state, "aws:ec2:Subnet", "a"), id_of(&state, "aws:ec2:Subnet", "b"), id_of(&state, "aws:ec2:Subnet", "c"));
    let (vpc, sg) = (id_of(&state, "aws:ec2:Vpc", "net"), id_of(&state, "aws:ec2:SecurityGroup", "lb"));

    let lb = load_balancer(&aws.elb, &lb_arn).await.expect("the load balancer exists");
    let name = lb.load_balancer_name().unwrap().to_owned();
    assert!(name.starts_with("web-") && name.len() == "web-".len() + 7, "an auto-name: {name}");
    assert_eq!(lb.r#type().map(|t| t.as_str()), Some("application"));
    assert_eq!(lb.scheme().map(|s| s.as_str()), Some("internet-facing"));
    assert_eq!(lb.state().and_then(|s| s.code()).map(|c| c.as_str()), Some("active"), "waited for");
    assert_eq!(lb.ip_address_type().map(|t| t.as_str()), Some("ipv4"));
    assert_eq!(subnets_of(&lb), sorted([&a, &b]));
    assert_eq!(lb.security_groups(), [sg.as_str()]);
    assert_eq!(lb.vpc_id(), Some(vpc.as_str()));
    assert_eq!(output(&state, LB, "web", "arn").as_deref(), Some(lb_arn.as_str()));
    assert_eq!(output(&state, LB, "web", "dns_name").as_deref(), lb.dns_name());
    assert_eq!(output(&state, LB, "web", "zone_id").as_deref(), lb.canonical_hosted_zone_id());
    assert!(lb.canonical_hosted_zone_id().is_some_and(|z| !z.is_empty()));
    let t = tags(&aws.elb, &lb_arn).await;
    assert_eq!(t.get("team").map(String::as_str), Some("web"));
    assert_eq!(t.get("Name").map(String::as_str), Some("web"));
    assert_eq!(t.get("cairn:urn").map(String::as_str), Some("urn:cairn:elbv2-lifecycle::aws:elbv2:LoadBalancer::web"));

    let tg = target_group(&aws.elb, &tg_arn).await.expect("the target group exists");
    assert!(tg.target_group_name().is_some_and(|n| n.starts_with("app-")));
    assert_eq!((tg.port(), tg.protocol().map(|p| p.as_str()), tg.vpc_id()), (Some(8080), Some("HTTP"), Some(vpc.as_str())));
    assert_eq!(tg.target_type().map(|t| t.as_str()), Some("instance"));
    assert_eq!(tg.health_check_path(), Some("/health"));
    assert_eq!(tags(&aws.elb, &tg_arn).await.get("cairn:urn").map(String::as_str), Some("urn:cairn:elbv2-lifecycle::aws:elbv2:TargetGroup::app"));

    let l = listener(&aws.elb, &l_arn).await.expect("the listener exists");
    assert_eq!((l.load_balancer_arn(), l.port(), l.protocol().map(|p| p.as_str())), (Some(lb_arn.as_str()), Some(80), Some("HTTP")));
    assert_eq!(forwards_to(&l), Some(tg_arn.as_str()));
    assert_eq!(tags(&aws.elb, &l_arn).await.get("cairn:urn").map(String::as_str), Some("urn:cairn:elbv2-lifecycle::aws:elbv2:Listener::http"));

    // A second up with the same state changes nothing; read back, nothing drifted.
    assert!(!stack.preview(&first, &state).unwrap().has_changes(), "a second up changes nothing");
    let refreshed = stack.preview_refresh(&state).await.unwrap();
    assert!(refreshed.drift.is_empty(), "{:?}", refreshed.drift);

    // Looked up by tag: exactly these. A listener is looked up on the load balancer its
    // create was sent for; without that, there is nothing to look on.
    let provider = cairn_aws::Provider::from_env().await;
    let found = provider.lookup(&Urn::new("elbv2-lifecycle", LB, "web"), &Props::new()).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [lb_arn.as_str()]);
    assert_eq!(found[0].outputs.get("dns_name").and_then(|v| v.as_str()), lb.dns_name());
    let found = provider.lookup(&Urn::new("elbv2-lifecycle", TG, "app"), &Props::new()).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [tg_arn.as_str()]);
    let created_with = Props::from_value(json!({"load_balancer_arn": lb_arn, "port": 80})).unwrap();
    let found = provider.lookup(&Urn::new("elbv2-lifecycle", LISTENER, "http"), &created_with).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [l_arn.as_str()]);
    assert!(provider.lookup(&Urn::new("elbv2-lifecycle", LISTENER, "http"), &Props::new()).await.unwrap().is_empty());
    assert!(provider.lookup(&Urn::new("elbv2-lifecycle", LISTENER, "other"), &created_with).await.unwrap().is_empty());

    // Subnets, the health check path and the listener port change in place.
    let moved = Web { third_subnet: true, health_path: "/ready".into(), listener_port: 8080, ..first.clone() };
    let plan = session.preview(&moved).unwrap();
    let mut got = changes(&plan);
    got.sort();
    assert_eq!(got, [("app".to_owned(), Action::Update), ("http".to_owned(), Action::Update), ("web".to_owned(), Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    assert_eq!((id_of(&state, LB, "web"), id_of(&state, TG, "app"), id_of(&state, LISTENER, "http")), (lb_arn.clone(), tg_arn.clone(), l_arn.clone()));
    assert_eq!(subnets_of(&load_balancer(&aws.elb, &lb_arn).await.unwrap()), sorted([&a, &b, &c]));
    assert_eq!(target_group(&aws.elb, &tg_arn).await.unwrap().health_check_path(), Some("/ready"));
    assert_eq!(listener(&aws.elb, &l_arn).await.unwrap().port(), Some(8080));
    assert!(!stack.preview(&moved, &state).unwrap().has_changes());
    let reversed = Web { reversed: true, ..moved.clone() };
    assert!(!stack.preview(&reversed, &state).unwrap().has_changes(), "subnets are a set: their order is no change");

    // The target port forces a new target group; the listener follows it in place, and
    // the old group is deleted once nothing forwards to it.
    let ported = Web { target_port: 9090, ..moved.clone() };
    let plan = session.preview(&ported).unwrap();
    let app = plan.changes.iter().find(|c| c.urn.name() == "app").unwrap();
    assert_eq!((app.action, app.replace_reasons.clone()), (Action::Replace, vec!["port".to_owned()]));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let new_tg = id_of(&state, TG, "app");
    assert_ne!(new_tg, tg_arn);
    assert_eq!(target_group(&aws.elb, &new_tg).await.unwrap().port(), Some(9090));
    assert!(target_group(&aws.elb, &tg_arn).await.is_none(), "the old target group is gone");
    assert_eq!(id_of(&state, LISTENER, "http"), l_arn, "the listener was changed, not replaced");
    assert_eq!(forwards_to(&listener(&aws.elb, &l_arn).await.unwrap()), Some(new_tg.as_str()));

    // The scheme forces a new load balancer, and the listener moves with it: a new one
    // on the new load balancer, the old ones deleted.
    let internal = Web { internal: true, ..ported.clone() };
    let plan = session.preview(&internal).unwrap();
    let web_change = plan.changes.iter().find(|c| c.urn.name() == "web").unwrap();
    assert_eq!((web_change.action, web_change.replace_reasons.clone()), (Action::Replace, vec!["scheme".to_owned()]));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let (new_lb, new_l) = (id_of(&state, LB, "web"), id_of(&state, LISTENER, "http"));
    assert_ne!(new_lb, lb_arn);
    assert_ne!(new_l, l_arn);
    let lb = load_balancer(&aws.elb, &new_lb).await.unwrap();
    assert_eq!(lb.scheme().map(|s| s.as_str()), Some("internal"));
    assert_ne!(lb.load_balancer_name(), Some(name.as_str()), "a new name, so the two could coexist");
    assert!(load_balancer(&aws.elb, &lb_arn).await.is_none(), "the old load balancer is gone");
    assert!(listener(&aws.elb, &l_arn).await.is_none(), "the old listener is gone");
    let l = listener(&aws.elb, &new_l).await.unwrap();
    assert_eq!((l.load_balancer_arn(), l.port(), forwards_to(&l)), (Some(new_lb.as_str()), Some(8080), Some(new_tg.as_str())));

    // Destroy leaves nothing of the stack.
    let report = session.destroy().await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert!(load_balancer(&aws.elb, &new_lb).await.is_none());
    assert!(target_group(&aws.elb, &new_tg).await.is_none());
    assert!(listener(&aws.elb, &new_l).await.is_none());
    assert!(balancers_and_groups_of(&aws.elb, "elbv2-lifecycle").await.is_empty());
}

#[tokio::test]
async fn drift_made_outside_cairn_is_reported_and_corrected() {
    let aws = aws().await;
    let stack = Stack::<()>::new("elbv2-drift").provider(aws.provider).program(|cx, _| {
        let Net { vpc, subnets: [a, b, _], sg } = net(cx, 41);
        let lb = cx.add(LoadBalancer::new("web").subnet_ids([a.id(), b.id()]).security_group_ids([sg.id()]));
        let tg = cx.add(TargetGroup::new("app").port(8080u16).vpc_id(vpc.id()).health_check_path("/health").healthy_threshold(3u32));
        cx.add(Listener::new("http").load_balancer_arn(lb.arn()).port(80u16).default_target_group_arn(tg.arn()));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let (lb_arn, tg_arn, l_arn) = (id_of(&state, LB, "web"), id_of(&state, TG, "app"), id_of(&state, LISTENER, "http"));
    let (vpc, sg) = (id_of(&state, "aws:ec2:Vpc", "net"), id_of(&state, "aws:ec2:SecurityGroup", "lb"));
    assert_eq!(target_group(&aws.elb, &tg_arn).await.unwrap().healthy_threshold_count(), Some(3));

    // Someone changes all three by hand.
    let other = aws.ec2.create_security_group().group_name("elbv2-drift-other").description("by hand").vpc_id(&vpc).send().await.unwrap();
    let other = other.group_id().unwrap().to_owned();
    aws.elb.set_security_groups().load_balancer_arn(&lb_arn).security_groups(&other).send().await.unwrap();
    aws.elb.modify_target_group().target_group_arn(&tg_arn).health_check_path("/by-hand").healthy_threshold_count(7).send().await.unwrap();
    aws.elb.modify_listener().listener_arn(&l_arn).port(81).send().await.unwrap();

    let refreshed = session.refresh().await.unwrap();
    let drift = serde_json::to_value(&refreshed.drift).unwrap();
    // Each resource's URN, with each property's name, old value and new value.
    type Drifted = (String, Vec<(String, serde_json::Value, serde_json::Value)>);
    let mut found: Vec<Drifted> = drift
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            let diffs = d["diffs"].as_array().unwrap().iter().map(|p| (p["name"].as_str().unwrap().to_owned(), p["old"].clone(), p["new"].clone())).collect();
            (d["urn"].as_str().unwrap().to_owned(), diffs)
        })
        .collect();
    found.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        found,
        [
            ("urn:cairn:elbv2-drift::aws:elbv2:Listener::http".to_owned(), vec![("port".to_owned(), json!(80), json!(81))]),
            ("urn:cairn:elbv2-drift::aws:elbv2:LoadBalancer::web".to_owned(), vec![("security_group_ids".to_owned(), json!([sg]), json!([other]))]),
            (
                "urn:cairn:elbv2-drift::aws:elbv2:TargetGroup::app".to_owned(),
                vec![("health_check_path".to_owned(), json!("/health"), json!("/by-hand")), ("healthy_threshold".to_owned(), json!(3), json!(7))]
            ),
        ]
    );

    // The next up puts everything back, in place.
    let report = session.up(&()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(load_balancer(&aws.elb, &lb_arn).await.unwrap().security_groups(), [sg.as_str()]);
    let tg = target_group(&aws.elb, &tg_arn).await.unwrap();
    assert_eq!((tg.health_check_path(), tg.healthy_threshold_count()), (Some("/health"), Some(3)));
    assert_eq!(listener(&aws.elb, &l_arn).await.unwrap().port(), Some(80));
    assert!(session.refresh().await.unwrap().drift.is_empty());

    assert!(session.destroy().await.unwrap().succeeded());
    aws.ec2.delete_security_group().group_id(&other).send().await.unwrap();
    assert!(balancers_and_groups_of(&aws.elb, "elbv2-drift").await.is_empty());
}

#[tokio::test]
async fn a_listener_renamed_or_moved_onto_a_deleted_ones_port_waits_for_that_delete() {
    const STACK: &str = "elbv2-renamed";
    let aws = aws().await;
    // S: the listeners, by logical name and port.
    let stack = Stack::<Vec<(String, u16)>>::new(STACK).provider(aws.provider.clone()).program(|cx, listeners| {
        let Net { vpc, subnets: [a, b, _], sg } = net(cx, 44);
        let lb = cx.add(LoadBalancer::new("web").subnet_ids([a.id(), b.id()]).security_group_ids([sg.id()]));
        let tg = cx.add(TargetGroup::new("app").port(8080u16).vpc_id(vpc.id()));
        for (name, port) in listeners {
            cx.add(Listener::new(name.as_str()).load_balancer_arn(lb.arn()).port(*port).default_target_group_arn(tg.arn()));
        }
        Ok(())
    });
    let at = |listeners: &[(&str, u16)]| listeners.iter().map(|(n, p)| ((*n).to_owned(), *p)).collect::<Vec<_>>();
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&at(&[("http", 80)])).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let lb_arn = id_of(&report.state, LB, "web");
    let ports = || async {
        let listed = aws.elb.describe_listeners().load_balancer_arn(&lb_arn).send().await.unwrap();
        let mut found: Vec<(String, Option<i32>)> = listed.listeners().iter().map(|l| (l.listener_arn().unwrap().to_owned(), l.port())).collect();
        found.sort_by_key(|(_, port)| *port);
        found
    };

    // A load balancer has one listener per port: the renamed declaration waits for the
    // old one's delete rather than asking for a port that is taken.
    let plan = session.preview(&at(&[("web-http", 80)])).unwrap();
    let create = plan.changes.iter().find(|c| c.action == Action::Create).unwrap();
    assert_eq!(create.after_delete, Some(Urn::new(STACK, LISTENER, "http")));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(ports().await, [(id_of(&report.state, LISTENER, "web-http"), Some(80))]);

    // So does a listener moved in place to the port of one deleted.
    let report = session.up(&at(&[("web-http", 80), ("alt", 8081)])).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let plan = session.preview(&at(&[("alt", 80)])).unwrap();
    let update = plan.changes.iter().find(|c| c.action == Action::Update).unwrap();
    assert_eq!(update.after_delete, Some(Urn::new(STACK, LISTENER, "web-http")));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(ports().await, [(id_of(&report.state, LISTENER, "alt"), Some(80))]);
    assert!(session.refresh().await.unwrap().drift.is_empty());

    assert!(session.destroy().await.unwrap().succeeded());
    assert!(balancers_and_groups_of(&aws.elb, STACK).await.is_empty());
}

// ---------------------------------------------------------------------------------------
// HTTPS listeners, with certificates from the local ACM.

#[derive(Clone, Default, Serialize, Deserialize)]
struct Tls {
    /// The certificate of the `secure` listener: 0 or 1.
    cert: usize,
    /// Whether the `plain` listener has moved to HTTPS.
    upgraded: bool,
}

async fn certificate(acm: &aws_sdk_acm::Client, domain: &str) -> String {
    let out = acm.request_certificate().domain_name(domain).send().await.unwrap();
    out.certificate_arn().unwrap().to_owned()
}

#[tokio::test]
async fn https_listeners_take_their_certificate_at_creation_and_in_place_and_can_go_back_to_http() {
    let aws = aws().await;
    let certs = [certificate(&aws.acm, "shop.example.com").await, certificate(&aws.acm, "www.shop.example.com").await];
    let c = certs.clone();
    let stack = Stack::<Tls>::new("elbv2-https").provider(aws.provider).program(move |cx, s| {
        let Net { vpc, subnets: [a, b, _], sg } = net(cx, 42);
        let lb = cx.add(LoadBalancer::new("web").subnet_ids([a.id(), b.id()]).security_group_ids([sg.id()]));
        let tg = cx.add(TargetGroup::new("app").port(8080u16).vpc_id(vpc.id()));
        cx.add(
            Listener::new("secure")
                .load_balancer_arn(lb.arn())
                .port(443u16)
                .protocol("HTTPS")
                .certificate_arn(c[s.cert].as_str())
                .default_target_group_arn(tg.arn()),
        );
        let plain = Listener::new("plain").load_balancer_arn(lb.arn()).default_target_group_arn(tg.arn());
        cx.add(if s.upgraded { plain.port(8443u16).protocol("HTTPS").certificate_arn(c[0].as_str()).ssl_policy("ELBSecurityPolicy-TLS-1-2-2017-01") } else { plain.port(80u16) });
        Ok(())
    });

    // Created as HTTPS with its certificate; AWS picks the SSL policy.
    let first = Tls { cert: 0, upgraded: false };
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&first).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let (secure, plain) = (id_of(&state, LISTENER, "secure"), id_of(&state, LISTENER, "plain"));
    let l = listener(&aws.elb, &secure).await.unwrap();
    assert_eq!((l.port(), l.protocol().map(|p| p.as_str())), (Some(443), Some("HTTPS")));
    assert_eq!(l.certificates().iter().filter_map(|c| c.certificate_arn()).collect::<Vec<_>>(), [certs[0].as_str()]);
    assert!(l.ssl_policy().is_some_and(|p| p.starts_with("ELBSecurityPolicy")), "{:?}", l.ssl_policy());
    assert_eq!(listener(&aws.elb, &plain).await.unwrap().protocol().map(|p| p.as_str()), Some("HTTP"));
    assert!(!stack.preview(&first, &state).unwrap().has_changes(), "the policy AWS chose is no change");
    assert!(stack.preview_refresh(&state).await.unwrap().drift.is_empty());

    // Another certificate, and an HTTP listener made HTTPS: both in place.
    let second = Tls { cert: 1, upgraded: true };
    let plan = session.preview(&second).unwrap();
    let mut got = changes(&plan);
    got.sort();
    assert_eq!(got, [("plain".to_owned(), Action::Update), ("secure".to_owned(), Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    assert_eq!((id_of(&state, LISTENER, "secure"), id_of(&state, LISTENER, "plain")), (secure.clone(), plain.clone()));
    let l = listener(&aws.elb, &secure).await.unwrap();
    assert_eq!(l.certificates().first().and_then(|c| c.certificate_arn()), Some(certs[1].as_str()));
    let l = listener(&aws.elb, &plain).await.unwrap();
    assert_eq!((l.port(), l.protocol().map(|p| p.as_str())), (Some(8443), Some("HTTPS")));
    assert_eq!(l.certificates().first().and_then(|c| c.certificate_arn()), Some(certs[0].as_str()));
    assert_eq!(l.ssl_policy(), Some("ELBSecurityPolicy-TLS-1-2-2017-01"));
    assert!(!stack.preview(&second, &state).unwrap().has_changes());

    // Back to HTTP, in place: the certificate and policy are no longer the listener's.
    let third = Tls { upgraded: false, ..second.clone() };
    let plan = session.preview(&third).unwrap();
    assert_eq!(changes(&plan), [("plain".to_owned(), Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let l = listener(&aws.elb, &plain).await.unwrap();
    assert_eq!((l.port(), l.protocol().map(|p| p.as_str())), (Some(80), Some("HTTP")));
    assert_eq!(id_of(&state, LISTENER, "plain"), plain);
    assert!(!stack.preview(&third, &state).unwrap().has_changes());
    assert!(stack.preview_refresh(&state).await.unwrap().drift.is_empty());

    let report = session.destroy().await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert!(listener(&aws.elb, &secure).await.is_none() && listener(&aws.elb, &plain).await.is_none());
    assert!(balancers_and_groups_of(&aws.elb, "elbv2-https").await.is_empty());
}

// ---------------------------------------------------------------------------------------
// An Auto Scaling group registered with target groups.

#[derive(Clone, Default, Serialize, Deserialize)]
struct Fleet {
    /// The target groups the group is attached to, by logical name, in this order.
    attached: Vec<String>,
}

async fn launch_template(ec2: &aws_sdk_ec2::Client, name: &str) -> String {
    let data = RequestLaunchTemplateData::builder().image_id("ami-12c6146b").instance_type(InstanceType::T3Micro).build();
    let out = ec2.create_launch_template().launch_template_name(name).launch_template_data(data).send().await.unwrap();
    out.launch_template().and_then(|t| t.launch_template_id()).unwrap().to_owned()
}

async fn attached(asg: &aws_sdk_autoscaling::Client, name: &str) -> Vec<String> {
    let out = asg.describe_auto_scaling_groups().auto_scaling_group_names(name).send().await.unwrap();
    let mut arns = out.auto_scaling_groups().first().expect("the group exists").target_group_arns().to_vec();
    arns.sort();
    arns
}

/// The targets registered with the target group.
async fn targets(elb: &aws_sdk_elasticloadbalancingv2::Client, arn: &str) -> Vec<String> {
    let out = elb.describe_target_health().target_group_arn(arn).send().await.unwrap();
    let mut ids: Vec<String> = out.target_health_descriptions().iter().filter_map(|d| d.target().and_then(|t| t.id())).map(str::to_owned).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn an_auto_scaling_group_is_attached_to_its_target_groups_in_place() {
    let aws = aws().await;
    let template = launch_template(&aws.ec2, "elbv2-asg").await;
    let stack = Stack::<Fleet>::new("elbv2-asg").provider(aws.provider).program(move |cx, f| {
        let Net { vpc, subnets: [a, b, _], .. } = net(cx, 43);
        let blue = cx.add(TargetGroup::new("blue").port(8080u16).vpc_id(vpc.id()));
        let green = cx.add(TargetGroup::new("green").port(8080u16).vpc_id(vpc.id()));
        let arns: Vec<_> = f.attached.iter().map(|n| if n == "blue" { blue.arn() } else { green.arn() }).collect();
        cx.add(Group::new("fleet").launch_template_id(template.as_str()).subnet_ids([a.id(), b.id()]).min_size(2).max_size(2).target_group_arns(arns));
        Ok(())
    });

    // Created attached to blue: its instances are registered there.
    let first = Fleet { attached: vec!["blue".into()] };
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&first).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let (group, blue, green) = (id_of(&state, "aws:autoscaling:Group", "fleet"), id_of(&state, TG, "blue"), id_of(&state, TG, "green"));
    assert_eq!(attached(&aws.asg, &group).await, [blue.as_str()]);
    let out = aws.asg.describe_auto_scaling_groups().auto_scaling_group_names(&group).send().await.unwrap();
    let mut instances: Vec<String> = out.auto_scaling_groups()[0].instances().iter().filter_map(|i| i.instance_id()).map(str::to_owned).collect();
    instances.sort();
    assert_eq!(instances.len(), 2);
    assert_eq!(targets(&aws.elb, &blue).await, instances, "the group registered its instances");
    assert!(!stack.preview(&first, &state).unwrap().has_changes());

    // Green added: attached in place, the same group.
    let both = Fleet { attached: vec!["green".into(), "blue".into()] };
    let plan = session.preview(&both).unwrap();
    assert_eq!(changes(&plan), [("fleet".to_owned(), Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    assert_eq!(id_of(&state, "aws:autoscaling:Group", "fleet"), group);
    assert_eq!(attached(&aws.asg, &group).await, sorted([&blue, &green]));

    // The same set in another order is no change, and no drift.
    let reordered = Fleet { attached: vec!["blue".into(), "green".into()] };
    assert!(!stack.preview(&reordered, &state).unwrap().has_changes());
    assert!(stack.preview_refresh(&state).await.unwrap().drift.is_empty());

    // Blue dropped: detached in place.
    let green_only = Fleet { attached: vec!["green".into()] };
    let report = session.up(&green_only).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(attached(&aws.asg, &group).await, [green.as_str()]);

    // Detached by hand: drift, put back by the next up.
    aws.asg.detach_load_balancer_target_groups().auto_scaling_group_name(&group).target_group_arns(&green).send().await.unwrap();
    let refreshed = session.refresh().await.unwrap();
    let drift = serde_json::to_value(&refreshed.drift).unwrap();
    assert_eq!(drift[0]["urn"], "urn:cairn:elbv2-asg::aws:autoscaling:Group::fleet", "{drift}");
    assert_eq!(drift[0]["diffs"][0]["name"], "target_group_arns");
    assert!(session.up(&green_only).await.unwrap().succeeded());
    assert_eq!(attached(&aws.asg, &group).await, [green.as_str()]);

    let report = session.destroy().await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert!(target_group(&aws.elb, &blue).await.is_none() && target_group(&aws.elb, &green).await.is_none());
}

// ---------------------------------------------------------------------------------------
// Checks before any call.

#[test]
fn bad_settings_are_refused_before_any_call() {
    let stack = Stack::<()>::new("elbv2-checks").program(|cx, _| {
        let two = ["subnet-1", "subnet-2"];
        cx.add(LoadBalancer::new("long").name("a-name-of-more-than-thirty-two-chars").subnet_ids(two));
        cx.add(LoadBalancer::new("inside").name("internal-web").subnet_ids(two).scheme("private"));
        cx.add(LoadBalancer::new("a-logical-name-too-long-for-aws").subnet_ids(["subnet-1"]));
        cx.add(TargetGroup::new("tg").name("app_1").port(0u16).vpc_id("vpc-1").protocol("TCP").health_check_interval_seconds(400u32).healthy_threshold(1u32));
        let base = |name: &str| Listener::new(name).load_balancer_arn("arn:lb").default_target_group_arn("arn:tg").port(443u16);
        cx.add(base("tls").protocol("HTTPS"));
        cx.add(base("plain").certificate_arn("arn:cert").ssl_policy("ELBSecurityPolicy-2016-08"));
        cx.add(base("odd").load_balancer_arn("web").protocol("TCP"));
        Ok(())
    });
    let err = stack.preview(&(), &stack.new_state()).unwrap_err().to_string();
    assert_eq!(
        err,
        "the program declares an invalid graph (15 problems); nothing was changed:\n  \
         - aws:elbv2:LoadBalancer 'long': property 'name' = \"a-name-of-more-than-thirty-two-chars\" is invalid: it must be 1 to 32 letters, digits or hyphens, not starting or ending with a hyphen, and not starting with 'internal-'\n  \
         - aws:elbv2:LoadBalancer 'inside': property 'name' = \"internal-web\" is invalid: it must be 1 to 32 letters, digits or hyphens, not starting or ending with a hyphen, and not starting with 'internal-'\n  \
         - aws:elbv2:LoadBalancer 'inside': property 'scheme' = \"private\" is invalid: it must be one of \"internet-facing\", \"internal\"\n  \
         - aws:elbv2:LoadBalancer 'a-logical-name-too-long-for-aws': property 'name' = (unset) is invalid: it must be set, as the name generated from the logical name, 'a-logical-name-too-long-for-aws-<7 hex digits>', would not be 1 to 32 letters, digits or hyphens, not starting or ending with a hyphen, and not starting with 'internal-'; use a logical name of at most 24 such characters, or set name\n  \
         - aws:elbv2:LoadBalancer 'a-logical-name-too-long-for-aws': property 'subnet_ids' = [\"subnet-1\"] is invalid: it must name at least two subnets, in two Availability Zones (an application load balancer needs two)\n  \
         - aws:elbv2:TargetGroup 'tg': property 'name' = \"app_1\" is invalid: it must be 1 to 32 letters, digits or hyphens, not starting or ending with a hyphen\n  \
         - aws:elbv2:TargetGroup 'tg': property 'port' = 0 is invalid: it must be a TCP port, 1 to 65535\n  \
         - aws:elbv2:TargetGroup 'tg': property 'protocol' = \"TCP\" is invalid: it must be one of \"HTTP\", \"HTTPS\"\n  \
         - aws:elbv2:TargetGroup 'tg': property 'health_check_interval_seconds' = 400 is invalid: it must be a whole number of seconds from 5 to 300\n  \
         - aws:elbv2:TargetGroup 'tg': property 'healthy_threshold' = 1 is invalid: it must be a whole number of checks from 2 to 10\n  \
         - aws:elbv2:Listener 'tls': property 'certificate_arn' = (unset) is invalid: it must be set for an HTTPS listener: the ARN of a certificate for its domain, usually an ACM certificate's arn()\n  \
         - aws:elbv2:Listener 'plain': property 'certificate_arn' = \"arn:cert\" is invalid: it must be unset for an HTTP listener (only HTTPS listeners take one); set protocol to \"HTTPS\" or drop certificate_arn\n  \
         - aws:elbv2:Listener 'plain': property 'ssl_policy' = \"ELBSecurityPolicy-2016-08\" is invalid: it must be unset for an HTTP listener (only HTTPS listeners take one); set protocol to \"HTTPS\" or drop ssl_policy\n  \
         - aws:elbv2:Listener 'odd': property 'load_balancer_arn' = \"web\" is invalid: it must be the ARN of a load balancer (arn:...), usually its arn() output\n  \
         - aws:elbv2:Listener 'odd': property 'protocol' = \"TCP\" is invalid: it must be one of \"HTTP\", \"HTTPS\""
    );
}

#[test]
fn an_auto_scaling_group_refuses_target_groups_that_are_not_arns() {
    let stack = Stack::<()>::new("elbv2-asg-checks").program(|cx, _| {
        cx.add(Group::new("web").launch_template_id("lt-1").subnet_ids(["subnet-1"]).min_size(1).max_size(1).target_group_arns(["app"]));
        Ok(())
    });
    let err = stack.preview(&(), &stack.new_state()).unwrap_err().to_string();
    assert!(
        err.contains("aws:autoscaling:Group 'web': property 'target_group_arns' = [\"app\"] is invalid: it must be a list of target group ARNs (arn:...), usually target groups' arn() outputs"),
        "{err}"
    );
}
