//! Plan snapshots of the ecommerce example: its first deploy, and the plan each event
//! causes from the state the previous one left. The cloud is the test provider standing
//! in for AWS, so these run without one; `tests/ecommerce_e2e.rs` runs against the local AWS.

#[path = "../examples/ecommerce/shop.rs"]
#[allow(dead_code)]
mod shop;

use cairn::events::{Event, Rejection};
use cairn::testing::TestProvider;
use cairn::{Props, RenderOptions, Stack, StackState};
use serde_json::{json, Value};
use shop::Shop;

/// What AWS would compute, enough for the example's references to resolve.
fn fake_aws() -> TestProvider {
    TestProvider::new("aws").with_outputs(|urn, _| {
        let mut p = Props::new();
        p.insert("arn", Value::from(format!("arn:aws:test:us-east-1:123456789012:{}", urn.name())));
        p.insert("allocation_id", Value::from(format!("eipalloc-{}", urn.name())));
        p.insert("url", Value::from(format!("http://sqs.local/123456789012/{}", urn.name())));
        p.insert("latest_version", Value::from(1));
        p
    })
}

fn stack(provider: &TestProvider) -> Stack<Shop> {
    shop::stack("dev", provider.clone())
}

async fn deploy(stack: &Stack<Shop>, shop: &Shop, state: &StackState) -> StackState {
    let report = stack.up(shop, state).await.expect("the plan applies");
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
    assert!(refused.contains("would replace aws:ec2:Vpc 'shop'"), "{refused}");
}
