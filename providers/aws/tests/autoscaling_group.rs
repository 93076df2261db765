//! `aws:autoscaling:Group` against the local AWS, every effect checked with the Auto
//! Scaling API itself.

use aws_sdk_autoscaling::types::{AutoScalingGroup, Filter, LaunchTemplateSpecification};
use aws_sdk_ec2::types::{InstanceType, RequestLaunchTemplateData};
use cairn_aws::autoscaling::Group;
use cairn_aws::ec2::{Subnet, Vpc};
use cairn_sdk::{Action, Provider as _, Stack, StackState, Urn};
use serde::{Deserialize, Serialize};

const GROUP: &str = "aws:autoscaling:Group";

struct Aws {
    provider: cairn_aws::Provider,
    asg: aws_sdk_autoscaling::Client,
    ec2: aws_sdk_ec2::Client,
}

async fn aws() -> Aws {
    cairn_testkit::moto().configure_env();
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    Aws {
        provider: cairn_aws::Provider::new(&config),
        asg: aws_sdk_autoscaling::Client::new(&config),
        ec2: aws_sdk_ec2::Client::new(&config),
    }
}

/// A launch template made with EC2's own API (the test is about the group).
async fn launch_template(ec2: &aws_sdk_ec2::Client, name: &str) -> String {
    let data = RequestLaunchTemplateData::builder().image_id("ami-12c6146b").instance_type(InstanceType::T3Micro).build();
    let out = ec2.create_launch_template().launch_template_name(name).launch_template_data(data).send().await.unwrap();
    out.launch_template().and_then(|t| t.launch_template_id()).unwrap().to_owned()
}

async fn describe(asg: &aws_sdk_autoscaling::Client, name: &str) -> Option<AutoScalingGroup> {
    let out = asg.describe_auto_scaling_groups().auto_scaling_group_names(name).send().await.unwrap();
    out.auto_scaling_groups().first().cloned()
}

/// The names of the groups tagged with `stack`.
async fn groups_of(asg: &aws_sdk_autoscaling::Client, stack: &str) -> Vec<String> {
    let filter = Filter::builder().name("tag:cairn:stack").values(stack).build();
    let out = asg.describe_auto_scaling_groups().filters(filter).send().await.unwrap();
    let mut names: Vec<String> = out.auto_scaling_groups().iter().filter_map(|g| g.auto_scaling_group_name()).map(str::to_owned).collect();
    names.sort();
    names
}

fn tag<'a>(g: &'a AutoScalingGroup, key: &str) -> Option<(&'a str, bool)> {
    g.tags().iter().find(|t| t.key() == Some(key)).map(|t| (t.value().unwrap_or_default(), t.propagate_at_launch() == Some(true)))
}

fn id_of(state: &StackState, ty: &str, name: &str) -> String {
    state.resource(&Urn::new(&state.stack, ty, name)).unwrap_or_else(|| panic!("{name} in state")).id.clone()
}

fn output(state: &StackState, ty: &str, name: &str, key: &str) -> Option<String> {
    let r = state.resource(&Urn::new(&state.stack, ty, name))?;
    r.outputs.get(key).and_then(|v| v.as_str()).map(str::to_owned)
}

#[derive(Clone, Serialize, Deserialize)]
struct Web {
    desired: u32,
    both_subnets: bool,
    health_check: String,
    grace: u32,
    version: String,
    name: Option<String>,
}

impl Default for Web {
    fn default() -> Self {
        Web { desired: 2, both_subnets: true, health_check: "EC2".into(), grace: 300, version: "$Default".into(), name: None }
    }
}

fn web(stack: &str, provider: cairn_aws::Provider, template: String) -> Stack<Web> {
    Stack::<Web>::new(stack).provider(provider).program(move |cx, w| {
        let vpc = cx.add(Vpc::new("net").cidr_block("10.20.0.0/16"));
        let a = cx.add(Subnet::new("a").vpc_id(vpc.id()).cidr_block("10.20.1.0/24").availability_zone("us-east-1a"));
        let b = cx.add(Subnet::new("b").vpc_id(vpc.id()).cidr_block("10.20.2.0/24").availability_zone("us-east-1b"));
        let subnets = if w.both_subnets { vec![a.id(), b.id()] } else { vec![b.id()] };
        let mut group = Group::new("web")
            .launch_template_id(template.as_str())
            .launch_template_version(w.version.as_str())
            .subnet_ids(subnets)
            .min_size(1)
            .max_size(4)
            .desired_capacity(w.desired)
            .health_check_type(w.health_check.as_str())
            .health_check_grace_period(w.grace)
            .tags([("team", "web")]);
        if let Some(name) = &w.name {
            group = group.name(name.as_str());
        }
        cx.add(group);
        Ok(())
    })
}

#[tokio::test]
async fn a_group_is_created_resized_in_place_replaced_and_destroyed() {
    let aws = aws().await;
    let template = launch_template(&aws.ec2, "asg-lifecycle").await;
    let stack = web("asg-lifecycle", aws.provider, template.clone());

    // Create, checked with describe calls.
    let first = Web::default();
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&first).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let name = id_of(&state, GROUP, "web");
    assert!(name.starts_with("web-") && name.len() == "web-".len() + 7, "an auto-name: {name}");
    let (a, b) = (id_of(&state, "aws:ec2:Subnet", "a"), id_of(&state, "aws:ec2:Subnet", "b"));
    let g = describe(&aws.asg, &name).await.expect("the group exists");
    let arn = g.auto_scaling_group_arn().unwrap().to_owned();
    assert_eq!(output(&state, GROUP, "web", "arn").as_deref(), Some(arn.as_str()));
    let lt = g.launch_template().unwrap();
    assert_eq!((lt.launch_template_id(), lt.version()), (Some(template.as_str()), Some("$Default")));
    assert_eq!((g.min_size(), g.desired_capacity(), g.max_size()), (Some(1), Some(2), Some(4)));
    assert_eq!(g.vpc_zone_identifier(), Some(format!("{a},{b}").as_str()));
    assert_eq!((g.health_check_type(), g.health_check_grace_period()), (Some("EC2"), Some(300)));
    assert_eq!(g.instances().len(), 2, "the endpoint launched the desired instances");
    assert_eq!(tag(&g, "team"), Some(("web", true)), "user tags propagate at launch");
    assert_eq!(tag(&g, "Name"), Some(("web", true)));
    assert_eq!(tag(&g, "cairn:urn"), Some(("urn:cairn:asg-lifecycle::aws:autoscaling:Group::web", true)));
    assert!(!stack.preview(&first, &state).unwrap().has_changes(), "a second up changes nothing");

    // Read back and looked up by tag: exactly this group, no drift.
    let refreshed = stack.preview_refresh(&state).await.unwrap();
    assert!(refreshed.drift.is_empty(), "{:?}", refreshed.drift);
    let provider = cairn_aws::Provider::from_env().await;
    let found = provider.lookup(&Urn::new("asg-lifecycle", GROUP, "web"), &Default::default()).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [name.as_str()]);
    assert_eq!(found[0].outputs.get("arn").and_then(|v| v.as_str()), Some(arn.as_str()));

    // A new desired capacity is an in-place update of the same group.
    let busier = Web { desired: 3, ..first.clone() };
    let plan = session.preview(&busier).unwrap();
    let changes: Vec<_> = plan.changed().map(|c| (c.urn.name().to_owned(), c.action, c.diffs.iter().map(|d| d.name.clone()).collect::<Vec<_>>())).collect();
    assert_eq!(changes, [("web".to_owned(), Action::Update, vec!["desired_capacity".to_owned()])]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    assert_eq!(id_of(&state, GROUP, "web"), name, "same group");
    let g = describe(&aws.asg, &name).await.unwrap();
    assert_eq!(g.desired_capacity(), Some(3));
    assert_eq!(g.auto_scaling_group_arn(), Some(arn.as_str()), "same ARN: not recreated");
    assert_eq!(g.instances().len(), 3);

    // Subnets, health checks and the template version change in place too.
    let moved = Web { both_subnets: false, health_check: "ELB".into(), grace: 60, version: "$Latest".into(), ..busier.clone() };
    let plan = session.preview(&moved).unwrap();
    assert_eq!(plan.changed().map(|c| (c.urn.name(), c.action)).collect::<Vec<_>>(), [("web", Action::Update)]);
    assert!(session.apply(&plan).await.unwrap().succeeded());
    let g = describe(&aws.asg, &name).await.unwrap();
    assert_eq!(g.vpc_zone_identifier(), Some(b.as_str()));
    assert_eq!((g.health_check_type(), g.health_check_grace_period()), (Some("ELB"), Some(60)));
    assert_eq!(g.launch_template().and_then(|t| t.version()), Some("$Latest"));
    assert_eq!(g.auto_scaling_group_arn(), Some(arn.as_str()));

    // The name forces a replacement: a new group, the old one deleted (and waited for).
    let renamed = Web { name: Some("asg-lifecycle-web".into()), ..moved.clone() };
    let plan = session.preview(&renamed).unwrap();
    let change = plan.changes.iter().find(|c| c.urn.name() == "web").unwrap();
    assert_eq!((change.action, change.replace_reasons.clone()), (Action::Replace, vec!["name".to_owned()]));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    assert_eq!(id_of(&state, GROUP, "web"), "asg-lifecycle-web");
    assert!(describe(&aws.asg, &name).await.is_none(), "the old group is gone");
    let g = describe(&aws.asg, "asg-lifecycle-web").await.unwrap();
    assert_eq!((g.desired_capacity(), g.vpc_zone_identifier()), (Some(3), Some(b.as_str())));
    assert_ne!(g.auto_scaling_group_arn(), Some(arn.as_str()));
    assert_eq!(groups_of(&aws.asg, "asg-lifecycle").await, ["asg-lifecycle-web"]);

    // Destroy leaves no group of the stack.
    let report = session.destroy().await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert!(groups_of(&aws.asg, "asg-lifecycle").await.is_empty());
}

#[tokio::test]
async fn a_taken_name_is_refused_and_the_other_group_left_alone() {
    let aws = aws().await;
    let template = launch_template(&aws.ec2, "asg-taken").await;
    let subnet = {
        let vpc = aws.ec2.create_vpc().cidr_block("10.21.0.0/16").send().await.unwrap();
        let vpc = vpc.vpc().and_then(|v| v.vpc_id()).unwrap().to_owned();
        let s = aws.ec2.create_subnet().vpc_id(vpc).cidr_block("10.21.1.0/24").send().await.unwrap();
        s.subnet().and_then(|s| s.subnet_id()).unwrap().to_owned()
    };
    // Someone else's group, made outside Cairn.
    let spec = LaunchTemplateSpecification::builder().launch_template_id(&template).version("$Default").build();
    aws.asg
        .create_auto_scaling_group()
        .auto_scaling_group_name("asg-taken")
        .launch_template(spec)
        .min_size(0)
        .max_size(1)
        .desired_capacity(1)
        .vpc_zone_identifier(&subnet)
        .send()
        .await
        .unwrap();

    let stack = Stack::<()>::new("asg-taken").provider(aws.provider).program(move |cx, _| {
        cx.add(Group::new("web").name("asg-taken").launch_template_id(template.as_str()).subnet_ids([subnet.as_str()]).min_size(2).max_size(3));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    assert_eq!(
        report.steps[0].status.error().map(ToString::to_string).as_deref(),
        Some("aws:autoscaling:Group 'web': an Auto Scaling group named asg-taken already exists; choose another name, or leave the name unset and Cairn will pick a unique one")
    );
    assert!(report.state.resources.is_empty() && report.state.pending.is_empty(), "nothing recorded");
    // The endpoint would have replaced it silently: it is untouched.
    let g = describe(&aws.asg, "asg-taken").await.unwrap();
    assert_eq!((g.min_size(), g.max_size()), (Some(0), Some(1)));
    assert!(tag(&g, "cairn:urn").is_none());
}

#[tokio::test]
async fn sizes_known_only_at_apply_are_checked_before_any_call() {
    let aws = aws().await;
    let template = launch_template(&aws.ec2, "asg-late-sizes").await;
    let stack = Stack::<()>::new("asg-late-sizes").provider(aws.provider).program(move |cx, _| {
        // A number held by another resource: the graph's checks cannot see it.
        let queue = cx.add(cairn_aws::sqs::Queue::new("scale").visibility_timeout(5));
        let desired = queue.output::<u32>("visibility_timeout");
        cx.add(Group::new("web").launch_template_id(template.as_str()).subnet_ids(["subnet-1"]).min_size(1).max_size(4).desired_capacity(desired));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    let web = report.steps.iter().find(|s| s.urn.name() == "web").unwrap();
    assert_eq!(
        web.status.error().map(ToString::to_string).as_deref(),
        Some("aws:autoscaling:Group 'web': desired_capacity must be at most max_size (min_size 1, desired_capacity 5, max_size 4); raise max_size to at least 5 or lower desired_capacity")
    );
    assert!(groups_of(&aws.asg, "asg-late-sizes").await.is_empty(), "no call was made");
    assert!(session.destroy().await.unwrap().succeeded());
}

#[test]
fn out_of_order_sizes_and_bad_settings_are_refused_before_any_call() {
    let stack = Stack::<()>::new("asg-checks").program(|cx, _| {
        let base = |name: &str| Group::new(name).launch_template_id("lt-0123456789abcdef0").subnet_ids(["subnet-1"]);
        cx.add(base("over").min_size(1).max_size(4).desired_capacity(5));
        cx.add(base("under").min_size(2).max_size(4).desired_capacity(1));
        cx.add(base("inverted").min_size(3).max_size(2));
        cx.add(base("odd").min_size(0).max_size(1).launch_template_version("latest").health_check_type("HTTP"));
        Ok(())
    });
    let err = stack.preview(&(), &stack.new_state()).unwrap_err().to_string();
    assert_eq!(
        err,
        "the program declares an invalid graph (5 problems); nothing was changed:\n  \
         - aws:autoscaling:Group 'over': property 'desired_capacity' = 5 is invalid: it must be at most max_size (min_size 1, desired_capacity 5, max_size 4); raise max_size to at least 5 or lower desired_capacity\n  \
         - aws:autoscaling:Group 'under': property 'desired_capacity' = 1 is invalid: it must be at least min_size (min_size 2, desired_capacity 1, max_size 4); lower min_size to at most 1 or raise desired_capacity\n  \
         - aws:autoscaling:Group 'inverted': property 'min_size' = 3 is invalid: it must be at most max_size (min_size 3, desired_capacity unset, max_size 2); lower min_size or raise max_size\n  \
         - aws:autoscaling:Group 'odd': property 'launch_template_version' = \"latest\" is invalid: it must be a version number such as \"3\", \"$Latest\" or \"$Default\"\n  \
         - aws:autoscaling:Group 'odd': property 'health_check_type' = \"HTTP\" is invalid: it must be \"EC2\" or \"ELB\" (or \"EBS\", \"VPC_LATTICE\"; several comma-separated)"
    );
}
