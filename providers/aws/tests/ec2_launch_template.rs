//! `aws:ec2:LaunchTemplate` against the local AWS, checked with EC2's own describe calls.

use aws_sdk_ec2::types::{LaunchTemplate as AwsTemplate, ResponseLaunchTemplateData};
use cairn_aws::ec2::{LaunchTemplate, SecurityGroup, Vpc};
use cairn_sdk::{Action, Provider as _, Stack, StackState, Urn};
use serde::{Deserialize, Serialize};

async fn ec2() -> (cairn_aws::Provider, aws_sdk_ec2::Client) {
    cairn_testkit::moto().configure_env();
    let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
    (cairn_aws::Provider::new(&config), aws_sdk_ec2::Client::new(&config))
}

const LT: &str = "aws:ec2:LaunchTemplate";

fn id_of(state: &StackState, ty: &str, name: &str) -> String {
    state.resource(&Urn::new(&state.stack, ty, name)).unwrap_or_else(|| panic!("{name} in state")).id.clone()
}

async fn template(ec2: &aws_sdk_ec2::Client, id: &str) -> Option<AwsTemplate> {
    ec2.describe_launch_templates().launch_template_ids(id).send().await.ok()?.launch_templates().first().cloned()
}

/// The data of version `version` (`"$Default"`, `"1"`, ...).
async fn version(ec2: &aws_sdk_ec2::Client, id: &str, version: &str) -> ResponseLaunchTemplateData {
    let out = ec2.describe_launch_template_versions().launch_template_id(id).versions(version).send().await.unwrap();
    out.launch_template_versions()[0].launch_template_data().unwrap().clone()
}

fn user_data(d: &ResponseLaunchTemplateData) -> String {
    String::from_utf8(aws_smithy_types::base64::decode(d.user_data().unwrap()).unwrap()).unwrap()
}

fn groups(d: &ResponseLaunchTemplateData) -> Vec<String> {
    let mut g = d.security_group_ids().to_vec();
    g.sort();
    g
}

#[derive(Clone, Serialize, Deserialize)]
struct Web {
    instance_type: String,
    reordered: bool,
    name: Option<String>,
}

impl Default for Web {
    fn default() -> Self {
        Web { instance_type: "t3.micro".into(), reordered: false, name: None }
    }
}

const BOOT: &str = "#!/bin/sh\necho 'hello from cairn' > /tmp/hello\n";

fn web(stack: &str, aws: cairn_aws::Provider) -> Stack<Web> {
    Stack::<Web>::new(stack).provider(aws).program(|cx, w| {
        let vpc = cx.add(Vpc::new("net").cidr_block("10.40.0.0/16"));
        let a = cx.add(SecurityGroup::new("a").vpc_id(vpc.id()));
        let b = cx.add(SecurityGroup::new("b").vpc_id(vpc.id()));
        let groups = if w.reordered { [b.id(), a.id()] } else { [a.id(), b.id()] };
        let mut lt = LaunchTemplate::new("web")
            .image_id("ami-12c6146b")
            .instance_type(w.instance_type.as_str())
            .security_group_ids(groups)
            .user_data(BOOT)
            .tags([("app", "shop")]);
        if let Some(name) = &w.name {
            lt = lt.name(name.as_str());
        }
        cx.add(lt);
        Ok(())
    })
}

#[tokio::test]
async fn a_launch_template_gets_a_new_default_version_in_place_and_is_replaced_on_rename() {
    let (provider, ec2) = ec2().await;
    let stack = web("ec2-lt", provider);

    // Created: version 1, the default, with every field.
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&Web::default()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let id = id_of(&state, LT, "web");
    let (a, b) = (id_of(&state, "aws:ec2:SecurityGroup", "a"), id_of(&state, "aws:ec2:SecurityGroup", "b"));
    let t = template(&ec2, &id).await.unwrap();
    assert!(t.launch_template_name().unwrap().starts_with("web-"), "auto-named: {:?}", t.launch_template_name());
    assert_eq!((t.default_version_number(), t.latest_version_number()), (Some(1), Some(1)));
    assert!(t.tags().iter().any(|t| t.key() == Some("app") && t.value() == Some("shop")));
    assert!(t.tags().iter().any(|t| t.key() == Some("cairn:urn") && t.value() == Some("urn:cairn:ec2-lt::aws:ec2:LaunchTemplate::web")));
    let d = version(&ec2, &id, "$Default").await;
    assert_eq!((d.image_id(), d.instance_type().map(|t| t.as_str())), (Some("ami-12c6146b"), Some("t3.micro")));
    assert_eq!(user_data(&d), BOOT, "user data is sent base64-encoded and reads back as the text");
    assert_eq!(groups(&d), {
        let mut g = vec![a.clone(), b.clone()];
        g.sort();
        g
    });
    let outputs = &state.resource(&Urn::new("ec2-lt", LT, "web")).unwrap().outputs;
    assert_eq!((outputs.get("latest_version"), outputs.get("default_version")), (Some(&1.into()), Some(&1.into())));
    assert!(!stack.preview(&Web::default(), &state).unwrap().has_changes(), "a second up changes nothing");
    // Read back as declared. (Refresh compares lists exactly, so it may list the
    // security groups as reordered; a plan compares them as a set.)
    let refreshed = stack.preview_refresh(&state).await.unwrap();
    assert!(refreshed
        .drift
        .iter()
        .all(|d| matches!(d, cairn_sdk::Drift::Changed { diffs, .. } if diffs.iter().all(|p| p.name == "security_group_ids"))));
    assert!(!stack.preview(&Web::default(), &refreshed.state).unwrap().has_changes(), "{:?}", refreshed.drift);

    let found = cairn_aws::Provider::from_env().await.lookup(&Urn::new("ec2-lt", LT, "web"), &Default::default()).await.unwrap();
    assert_eq!(found.iter().map(|o| o.id.as_str()).collect::<Vec<_>>(), [id.as_str()]);

    // The security groups in another order: nothing to do.
    let plan = stack.preview(&Web { reordered: true, ..Web::default() }, &state).unwrap();
    assert!(!plan.has_changes(), "{}", plan.render(Default::default()));

    // A new instance type: version 2, with the full data, becomes the default, in place.
    let bigger = Web { instance_type: "t3.small".into(), ..Web::default() };
    let plan = session.preview(&bigger).unwrap();
    let actions: Vec<_> = plan.changed().map(|c| (c.urn.name().to_owned(), c.action)).collect();
    assert_eq!(actions, [("web".to_owned(), Action::Update)]);
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    assert_eq!(id_of(&state, LT, "web"), id, "same template");
    let t = template(&ec2, &id).await.unwrap();
    assert_eq!((t.default_version_number(), t.latest_version_number()), (Some(2), Some(2)));
    let d = version(&ec2, &id, "$Default").await;
    assert_eq!((d.image_id(), d.instance_type().map(|t| t.as_str())), (Some("ami-12c6146b"), Some("t3.small")));
    assert_eq!(user_data(&d), BOOT, "the new version carries the full data");
    assert_eq!(groups(&d).len(), 2);
    assert_eq!(version(&ec2, &id, "1").await.instance_type().map(|t| t.as_str()), Some("t3.micro"), "version 1 is kept");
    let outputs = &state.resource(&Urn::new("ec2-lt", LT, "web")).unwrap().outputs;
    assert_eq!((outputs.get("latest_version"), outputs.get("default_version")), (Some(&2.into()), Some(&2.into())));
    assert!(!stack.preview(&bigger, &state).unwrap().has_changes());

    // A new name forces a replacement.
    let renamed = Web { name: Some("web-servers".into()), ..bigger.clone() };
    let plan = session.preview(&renamed).unwrap();
    let change = plan.changed().next().unwrap();
    assert_eq!((change.action, change.replace_reasons.clone()), (Action::Replace, vec!["name".to_owned()]));
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let state = report.state;
    let new = id_of(&state, LT, "web");
    assert_ne!(new, id);
    assert!(template(&ec2, &id).await.is_none(), "the old template is deleted");
    let t = template(&ec2, &new).await.unwrap();
    assert_eq!((t.launch_template_name(), t.default_version_number()), (Some("web-servers"), Some(1)));
    assert_eq!(version(&ec2, &new, "$Default").await.instance_type().map(|t| t.as_str()), Some("t3.small"));

    assert!(session.destroy().await.unwrap().succeeded());
    assert!(template(&ec2, &new).await.is_none());
}

#[test]
fn bad_launch_templates_are_refused_before_any_call() {
    let stack = Stack::<()>::new("ec2-lt-checks").program(|cx, _| {
        cx.add(LaunchTemplate::new("web").name("x").image_id("img-123").instance_type("t3micro").security_group_ids(["default"]));
        Ok(())
    });
    let err = stack.preview(&(), &stack.new_state()).unwrap_err().to_string();
    assert_eq!(
        err,
        "the program declares an invalid graph (4 problems); nothing was changed:\n  \
         - aws:ec2:LaunchTemplate 'web': property 'name' = \"x\" is invalid: it must be 3 to 128 letters, digits or ().-/_, or be left unset for a generated name\n  \
         - aws:ec2:LaunchTemplate 'web': property 'image_id' = \"img-123\" is invalid: it must be an AMI id: ami- followed by letters and digits, such as ami-0abcdef1234567890\n  \
         - aws:ec2:LaunchTemplate 'web': property 'instance_type' = \"t3micro\" is invalid: it must be an instance type: family.size in lower case, such as t3.micro or m5.large\n  \
         - aws:ec2:LaunchTemplate 'web': property 'security_group_ids' = \"default\" is invalid: it must be a list of ids, each a security group id (sg-...), such as another resource's .id()"
    );
}
