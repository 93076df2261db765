//! Components: a group of resources with a URN of its own, shown grouped in plans and
//! the graph, whose failure is reported with the program's other problems.

mod common;

use cairn_sdk::cx::ComponentFailed;
use cairn_sdk::{Cx, Error, ProgramResult, RenderOptions, Stack, Urn, ValidationError};
use common::*;

/// A site: a network with two subnets, and inside it, a component of queues.
fn site(cx: &mut Cx, name: &str, zones: &[&str]) -> Result<(), ComponentFailed> {
    cx.component("test:Site", name, |cx| {
        if zones.is_empty() {
            return Err("give at least one zone".into());
        }
        let net = cx.add(Network::new(name).cidr_block("10.0.0.0/16"));
        for (i, zone) in zones.iter().enumerate() {
            cx.add(Subnet::new(&format!("{name}-{zone}")).network_id(net.id()).cidr_block(format!("10.0.{i}.0/24")).zone(*zone));
        }
        cx.component("test:Queues", &format!("{name}-queues"), |cx| {
            let dlq = cx.add(Queue::new(&format!("{name}-dlq")));
            cx.add(Queue::new(&format!("{name}-orders")).dead_letter_arn(dlq.arn()));
            Ok(())
        })?;
        Ok(())
    })
}

// A program takes `&S`, and this stack's `S` is `Vec<String>`.
#[allow(clippy::ptr_arg)]
fn program(cx: &mut Cx, zones: &Vec<String>) -> ProgramResult {
    let zones: Vec<&str> = zones.iter().map(String::as_str).collect();
    site(cx, "shop", &zones)?;
    cx.add(Queue::new("audit"));
    Ok(())
}

fn stack(fake: &TestProvider) -> Stack<Vec<String>> {
    Stack::<Vec<String>>::new("dev").program(program).provider(fake.clone())
}

fn zones(z: &[&str]) -> Vec<String> {
    z.iter().map(|z| z.to_string()).collect()
}

#[tokio::test]
async fn a_components_resources_keep_their_urns_and_show_grouped_in_the_plan() {
    let fake = provider();
    let stack = stack(&fake);
    let plan = stack.preview(&zones(&["a", "b"]), &stack.new_state()).unwrap();
    // URNs as if declared outside any component.
    assert!(plan.changes.iter().any(|c| c.urn == Urn::new("dev", "test:net:Subnet", "shop-a")));
    let parents: Vec<(&str, Option<&str>)> = plan.changes.iter().map(|c| (c.urn.name(), c.options.parent.as_ref().map(Urn::name))).collect();
    assert!(parents.contains(&("shop-orders", Some("shop-queues"))) && parents.contains(&("audit", None)), "{parents:?}");
    insta::assert_snapshot!(plan.render(RenderOptions::default()), @r"
    Plan for stack 'dev':

          test:Site shop
        +   test:net:Network shop
            test:Queues shop-queues
          +   test:queue:Queue shop-dlq
          +   test:queue:Queue shop-orders
        +   test:net:Subnet shop-a
        +   test:net:Subnet shop-b
      +   test:queue:Queue audit

    Resources:
        + 6 to create
        6 changes. 0 unchanged
    ");
    let json = serde_json::to_value(&plan).unwrap();
    assert_eq!(json["components"][1], serde_json::json!({"urn": "urn:cairn:dev::test:Queues::shop-queues", "parent": "urn:cairn:dev::test:Site::shop"}));

    let graph = stack.render(&zones(&["a"])).unwrap();
    let dot = graph.to_dot();
    assert!(dot.contains("subgraph \"cluster_urn:cairn:dev::test:Site::shop\"") && dot.contains("label=\"test:Queues shop-queues\""), "{dot}");
    assert_eq!(graph.parent_of(&Urn::new("dev", "test:net:Network", "shop")), Some(&Urn::new("dev", "test:Site", "shop")));
}

#[tokio::test]
async fn state_remembers_the_component_so_a_destroy_plan_is_grouped_too() {
    let fake = provider();
    let stack = stack(&fake);
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&zones(&["a"])).await.unwrap();
    assert!(report.succeeded());
    let subnet = report.state.resource(&Urn::new("dev", "test:net:Subnet", "shop-a")).unwrap();
    assert_eq!(subnet.options.parent, Some(Urn::new("dev", "test:Site", "shop")));
    let plan = session.preview_destroy().unwrap();
    let shown = plan.render(RenderOptions::default());
    // State keeps each resource's component, not how components nest: a destroy
    // shows each group at the top.
    assert!(shown.contains("      test:Site shop\n    -   test:net:Subnet shop-a\n"), "{shown}");
}

#[tokio::test]
async fn a_failed_component_is_reported_with_every_other_problem_and_nothing_is_called() {
    let fake = provider();
    let stack = Stack::<Vec<String>>::new("dev").provider(fake.clone()).program(|cx, z: &Vec<String>| {
        // A problem before the component: a subnet without its required network.
        cx.add(Subnet::new("loose").cidr_block("10.9.0.0/24"));
        let zones: Vec<&str> = z.iter().map(String::as_str).collect();
        site(cx, "shop", &zones)?;
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let err = session.up(&Vec::new()).await.unwrap_err();
    let Error::Invalid(errors) = &err else { panic!("{err}") };
    assert!(errors.0.iter().any(|e| matches!(e, ValidationError::Component { urn, message } if urn.name() == "shop" && message == "give at least one zone")), "{err}");
    assert!(errors.0.iter().any(|e| matches!(e, ValidationError::Missing { property: "network_id", .. })), "{err}");
    assert!(err.to_string().contains("component test:Site 'shop': give at least one zone"), "{err}");
    assert!(fake.calls().is_empty());
}

/// A program's own error around a component's.
#[derive(Debug)]
struct Wrapped(ComponentFailed);

impl std::fmt::Display for Wrapped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("building the site")
    }
}

impl std::error::Error for Wrapped {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

#[test]
fn a_failed_component_is_reported_when_the_program_wraps_its_error_in_its_own() {
    let stack = Stack::<Vec<String>>::new("dev").program(|cx, z: &Vec<String>| {
        let zones: Vec<&str> = z.iter().map(String::as_str).collect();
        // As `anyhow`'s `.context(..)` would: its own message, the component's as source.
        site(cx, "shop", &zones).map_err(Wrapped)?;
        Ok(())
    });
    let err = stack.render(&Vec::new()).unwrap_err();
    let Error::Invalid(errors) = &err else { panic!("{err}") };
    assert!(errors.0.iter().any(|e| matches!(e, ValidationError::Component { message, .. } if message == "give at least one zone")), "{err}");
}

#[test]
fn another_error_of_the_program_after_a_component_failed_is_reported_as_it_is() {
    let stack = Stack::<Vec<String>>::new("dev").program(|cx, _: &Vec<String>| {
        let _handled = site(cx, "shop", &[]);
        Err("the catalogue is unreachable".into())
    });
    let err = stack.render(&Vec::new()).unwrap_err().to_string();
    assert!(err.contains("the catalogue is unreachable"), "{err}");
}

#[tokio::test]
async fn a_saved_plan_whose_components_are_each_others_parents_still_shows_every_change() {
    let fake = provider();
    let plan = stack(&fake).in_memory_session().await.unwrap().preview(&zones(&["a"])).unwrap();
    let mut json = serde_json::to_value(&plan).unwrap();
    // Edited by hand: the site's parent is its own queues component.
    json["components"][0]["parent"] = json["components"][1]["urn"].clone();
    let edited: cairn_sdk::Plan = serde_json::from_value(json).unwrap();
    let shown = edited.render(RenderOptions::default());
    for name in ["shop-dlq", "shop-orders", "shop-a", "audit"] {
        assert!(shown.contains(name), "{name} is not shown: {shown}");
    }
}

#[test]
fn the_graph_draws_a_resource_whose_parent_is_no_declared_component() {
    let stack = Stack::<()>::new("dev").program(|cx, _| {
        let mut q = Queue::new("orphan");
        cairn_sdk::Resource::decl_mut(&mut q).options_mut().parent = Some(Urn::new("dev", "test:Site", "elsewhere"));
        cx.add(q);
        Ok(())
    });
    let dot = stack.render(&()).unwrap().to_dot();
    assert!(dot.contains("\"urn:cairn:dev::test:queue:Queue::orphan\" [label="), "{dot}");
}

#[test]
fn two_components_of_one_name_and_type_are_refused() {
    let stack = Stack::<()>::new("dev").program(|cx, _| {
        cx.component("test:Site", "shop", |_| Ok(()))?;
        cx.component("test:Site", "shop", |_| Ok(()))?;
        Ok(())
    });
    let err = stack.render(&()).unwrap_err().to_string();
    assert!(err.contains("test:Site 'shop' is declared more than once"), "{err}");
}
