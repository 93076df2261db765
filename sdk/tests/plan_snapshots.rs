//! Snapshots of planned diffs: what users read before anything changes.

mod common;

use cairn_sdk::{assert_plan_snapshot, Cx, DynamicResource, Handle, ProgramResult, ResourceExt, Stack, StackState};
use common::*;

fn no_provider_stack() -> Stack<Shop> {
    Stack::<Shop>::new("dev").program(shop_program).secrets(common::keyring())
}

#[test]
fn first_deploy() {
    let stack = no_provider_stack();
    assert_plan_snapshot!(stack, &Shop::new(), &stack.new_state());
}

#[tokio::test]
async fn no_op() {
    let stack = shop_stack(&provider());
    let state = deployed(&stack, &Shop::new()).await;
    assert_plan_snapshot!(stack, &Shop::new(), &state);
}

#[tokio::test]
async fn in_place_update() {
    let stack = shop_stack(&provider());
    let state = deployed(&stack, &Shop::new()).await;
    let shop = Shop { capacity: 5, dlq_timeout: 60, ..Shop::new() };
    assert_plan_snapshot!(stack, &shop, &state);
}

#[tokio::test]
async fn replace_with_dependents_and_may_replace() {
    let stack = shop_stack(&provider());
    let state = deployed(&stack, &Shop::new()).await;
    let shop = Shop { network_cidr: "10.1.0.0/16".into(), ..Shop::new() };
    assert_plan_snapshot!(stack, &shop, &state);
}

#[tokio::test]
async fn removal_of_a_subtree() {
    let stack = shop_stack(&provider());
    let state = deployed(&stack, &Shop { flash_sale: true, ..Shop::new() }).await;
    assert_plan_snapshot!(stack, &Shop::new(), &state);
}

#[tokio::test]
async fn protect_violation() {
    let stack = shop_stack(&provider());
    let protected = Shop { protect_network: true, ..Shop::new() };
    let state = deployed(&stack, &protected).await;
    let shop = Shop { network_cidr: "10.9.0.0/16".into(), ..protected };
    assert_plan_snapshot!(stack, &shop, &state);
}

#[tokio::test]
async fn destroy_of_a_protected_resource_is_refused() {
    let stack = shop_stack(&provider());
    let state = deployed(&stack, &Shop { protect_network: true, ..Shop::new() }).await;
    let err = stack.preview_destroy(&state).unwrap_err();
    insta::assert_snapshot!(err.to_string());
}

#[tokio::test]
async fn plan_json_has_the_documented_shape() {
    let stack = shop_stack(&provider());
    let mut state = deployed(&stack, &Shop::new()).await;
    state.lineage = "0123456789abcdef0123456789abcdef".into();
    let plan = stack.preview(&Shop { capacity: 3, ..Shop::new() }, &state).unwrap();
    insta::assert_snapshot!(plan.to_json());
}

/// `up --target`: the target and what it depends on, nothing else; an unknown target is
/// an error that names it.
#[tokio::test]
async fn a_targeted_plan_keeps_the_target_and_its_dependencies() {
    let stack = shop_stack(&provider());
    let mut plan = stack.preview(&Shop::new(), &stack.new_state()).unwrap();
    let subnet = plan.changes.iter().find(|c| c.urn.name() == "web-a").unwrap().urn.clone();
    plan.target(std::slice::from_ref(&subnet)).unwrap();
    let kept: Vec<&str> = plan.changed().map(|c| c.urn.name()).collect();
    assert_eq!(kept, ["shop", "web-a"]);
    assert_eq!(plan.summary.create, 2);

    let unknown = cairn_sdk::Urn::parse("urn:cairn:dev::test:net:Subnet::web-z").unwrap();
    let err = plan.target(&[unknown]).unwrap_err();
    assert!(matches!(&err, cairn_sdk::Error::UnknownTarget { urn } if urn.name() == "web-z"), "{err:?}");
    assert!(err.to_string().contains("state list"), "{err}");
}

// --- Validation: every message, each naming the resource, property and fix ----------

fn plan_of(program: impl Fn(&mut Cx, &Shop) -> ProgramResult + Send + Sync + 'static) -> String {
    let stack = Stack::<Shop>::new("dev").program(program);
    cairn_sdk::testing::render_plan(&stack, &Shop::new(), &StackState::new("dev"))
}

#[test]
fn error_duplicate_name() {
    insta::assert_snapshot!(plan_of(|cx, _| {
        cx.add(Queue::new("orders"));
        cx.add(Queue::new("orders").fifo(true));
        Ok(())
    }));
}

#[test]
fn error_one_cloud_object_declared_twice() {
    // Names the program gives: AWS would answer the second create with the first queue.
    // Names Cairn generates differ.
    insta::assert_snapshot!(plan_of(|cx, _| {
        cx.add(Queue::new("orders").name("shop-orders"));
        cx.add(Queue::new("jobs").name("shop-orders"));
        cx.add(Queue::new("spare"));
        cx.add(Queue::new("extra"));
        Ok(())
    }));
}

#[test]
fn error_unknown_property() {
    insta::assert_snapshot!(plan_of(|cx, _| {
        cx.add(DynamicResource::new(&NETWORK, "shop").set("cidr_block", "10.0.0.0/16").set("cidr", "10.0.0.0/8"));
        Ok(())
    }));
}

#[test]
fn error_missing_required_property() {
    insta::assert_snapshot!(plan_of(|cx, _| {
        cx.add(Network::new("shop"));
        Ok(())
    }));
}

#[test]
fn error_invalid_values() {
    insta::assert_snapshot!(plan_of(|cx, _| {
        let net = cx.add(Network::new("shop").cidr_block("10.0.0.0/33"));
        let a = cx.add(Subnet::new("web-a").network_id(net.id()).cidr_block("not-a-cidr"));
        cx.add(Group::new("web").subnets([a.id()]).image("img-1").capacity(2, 14, 12));
        Ok(())
    }));
}

#[test]
fn error_dangling_reference() {
    insta::assert_snapshot!(plan_of(|cx, _| {
        let ghost: NetworkRef = cx.reference(&NETWORK, "ghost");
        cx.add(Subnet::new("web-a").network_id(ghost.id()).cidr_block("10.0.1.0/24"));
        let missing: Handle = cx.reference(&QUEUE, "missing");
        cx.add(Queue::new("orders").depends_on(&missing));
        Ok(())
    }));
}

#[test]
fn error_reference_to_a_property_that_does_not_exist() {
    insta::assert_snapshot!(plan_of(|cx, _| {
        let net = cx.add(Network::new("shop").cidr_block("10.0.0.0/16"));
        cx.add(Subnet::new("web-a").network_id(net.output::<String>("vpc_id")).cidr_block("10.0.1.0/24"));
        Ok(())
    }));
}

#[test]
fn error_cycle() {
    insta::assert_snapshot!(plan_of(|cx, _| {
        let b: QueueRef = cx.reference(&QUEUE, "b");
        let a = cx.add(Queue::new("a").dead_letter_arn(b.arn()));
        let c = cx.add(Queue::new("c").dead_letter_arn(a.arn()));
        cx.add(Queue::new("b").dead_letter_arn(c.arn()));
        Ok(())
    }));
}

#[test]
fn error_self_reference() {
    insta::assert_snapshot!(plan_of(|cx, _| {
        let me: QueueRef = cx.reference(&QUEUE, "loop");
        cx.add(Queue::new("loop").dead_letter_arn(me.arn()));
        Ok(())
    }));
}

#[test]
fn error_from_the_program() {
    insta::assert_snapshot!(plan_of(|_, _| Err("capacity above 12".into())));
}

#[test]
fn errors_are_all_reported_at_once() {
    let text = plan_of(|cx, _| {
        cx.add(Network::new("a"));
        cx.add(Network::new("b").cidr_block("nope"));
        Ok(())
    });
    assert!(text.contains("2 problems"), "{text}");
    assert!(text.contains("'a': property 'cidr_block' is required"), "{text}");
    assert!(text.contains("'b': property 'cidr_block' = \"nope\" is invalid"), "{text}");
}

// --- Renders after the first ---------------------------------------------------------
// A stack reuses what its last render declared (the URNs, and that they were distinct):
// a later render must still find every problem a first one would.

#[test]
fn a_duplicate_is_found_after_a_render_that_had_none() {
    let stack = Stack::<Shop>::new("dev").program(|cx, shop: &Shop| {
        cx.add(Queue::new("orders"));
        // The flash sale declares a second "orders" in place of "returns".
        cx.add(Queue::new(if shop.flash_sale { "orders" } else { "returns" }));
        Ok(())
    });
    assert_eq!(stack.render(&Shop::new()).expect("distinct names").len(), 2);
    let err = stack.render(&Shop { flash_sale: true, ..Shop::new() }).unwrap_err();
    assert!(err.to_string().contains("test:queue:Queue 'orders'"), "{err}");
    assert!(err.to_string().contains("declared more than once"), "{err}");
    // And back: the names are distinct again.
    assert_eq!(stack.render(&Shop::new()).expect("distinct names").len(), 2);
}

#[test]
fn references_resolve_after_renders_that_add_and_drop_resources() {
    let stack = no_provider_stack();
    let state = stack.new_state();
    let sale = Shop { flash_sale: true, ..Shop::new() };
    // Fewer, more, then fewer resources than the render before; each plan is the same
    // as a fresh stack's.
    for shop in [Shop::new(), sale.clone(), Shop::new(), sale] {
        let fresh = no_provider_stack();
        assert_eq!(
            stack.preview(&shop, &state).unwrap().to_json(),
            fresh.preview(&shop, &state).unwrap().to_json(),
        );
    }
}
