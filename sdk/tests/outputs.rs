//! Output combinators: values computed from other resources' outputs, planned as
//! `(known after apply)` until those are known, applied with their values, and kept
//! working through a saved plan.

mod common;

use cairn_sdk::testing::Op;
use cairn_sdk::{all, assert_plan_snapshot, interpolate, Cx, Plan, ProgramResult, Stack};
use serde_json::json;
use common::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct App {
    suffix: String,
    panic_in_map: bool,
    /// Exports `bad` twice, and one referring to an undeclared resource.
    bad_exports: bool,
    /// Exports `subnets` too.
    more_exports: bool,
}

fn app() -> App {
    App { suffix: "dlq".into(), ..App::default() }
}

fn program(cx: &mut Cx, app: &App) -> ProgramResult {
    let net = cx.add(Network::new("shop").cidr_block("10.0.0.0/16"));
    let suffix = app.suffix.clone();
    let panics = app.panic_in_map;
    let arn = net.arn().map(move |arn: String| {
        assert!(!panics, "the program's map panicked on {arn}");
        format!("{arn}/{suffix}")
    });
    cx.add(Queue::new("orders").dead_letter_arn(arn));
    cx.add(Queue::new("jobs").dead_letter_arn(interpolate!("{}:{}@{}", net.id(), 7, "eu")));
    let a = cx.add(Subnet::new("web-a").network_id(net.id()).cidr_block("10.0.1.0/24"));
    let b = cx.add(Subnet::new("web-b").network_id(net.id()).cidr_block("10.0.2.0/24"));
    let ids = all([a.id(), b.id()]).map(|ids: Vec<String>| ids.join(","));
    let pair = a.id().zip(b.id()).map(|(a, b): (String, String)| format!("{b}+{a}"));
    cx.add(Queue::new("ids").dead_letter_arn(ids.clone()));
    cx.add(Queue::new("pair").dead_letter_arn(pair));
    cx.export("network_id", net.id());
    cx.export("site", interpolate!("https://{}.example.com", net.arn()));
    if app.more_exports {
        cx.export("subnets", ids);
    }
    if app.bad_exports {
        cx.export("bad", net.id());
        cx.export("bad", cx.reference::<NetworkRef>(&NETWORK, "elsewhere").id());
    }
    Ok(())
}

fn stack(provider: &TestProvider) -> Stack<App> {
    Stack::<App>::new("dev").program(program).provider(provider.clone())
}

/// What the fake cloud holds in `dead_letter_arn` of queue `name`.
fn dead_letter(provider: &TestProvider, name: &str) -> String {
    let queue = provider.resources().into_iter().find(|r| r.urn.name() == name).expect("the queue exists");
    queue.inputs.get("dead_letter_arn").and_then(|v| v.as_str()).expect("its dead_letter_arn is set").to_owned()
}

#[tokio::test]
async fn computed_inputs_are_known_after_apply_then_applied_with_their_values() {
    let provider = provider();
    let stack = stack(&provider);
    assert_plan_snapshot!("outputs_first_deploy", stack, &app(), &stack.new_state());

    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&app()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let net = provider.resources().into_iter().find(|r| r.urn.name() == "shop").unwrap();
    let subnet = |name: &str| provider.resources().into_iter().find(|r| r.urn.name() == name).unwrap().id;
    assert_eq!(dead_letter(&provider, "orders"), "arn:test:shop/dlq");
    assert_eq!(dead_letter(&provider, "jobs"), format!("{}:7@eu", net.id));
    assert_eq!(dead_letter(&provider, "ids"), format!("{},{}", subnet("web-a"), subnet("web-b")));
    assert_eq!(dead_letter(&provider, "pair"), format!("{}+{}", subnet("web-b"), subnet("web-a")));

    // Nothing changed: the computed values equal what was applied.
    assert!(!session.preview(&app()).unwrap().has_changes());
    // The network is unchanged, so the new value is known at plan time and shown.
    let other = App { suffix: "dead".into(), ..app() };
    let state = session.state().clone();
    assert_plan_snapshot!("outputs_known_at_plan_time", stack, &other, &state);
}

#[tokio::test]
async fn a_saved_plan_applies_its_computed_inputs_with_the_programs_functions() {
    let provider = provider();
    let stack = stack(&provider);
    let mut session = stack.in_memory_session().await.unwrap();
    let saved = session.preview(&app()).unwrap().to_json();

    let plan = Plan::from_json(&saved).unwrap();
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert_eq!(dead_letter(&provider, "orders"), "arn:test:shop/dlq");
}

#[tokio::test]
async fn a_saved_plan_whose_program_no_longer_computes_an_input_is_refused_before_any_call() {
    fn changed(cx: &mut Cx, _: &App) -> ProgramResult {
        let net = cx.add(Network::new("shop").cidr_block("10.0.0.0/16"));
        cx.add(Queue::new("orders").dead_letter_arn(net.arn()));
        Ok(())
    }
    let provider = provider();
    let saved = stack(&provider).in_memory_session().await.unwrap().preview(&app()).unwrap().to_json();

    let other = Stack::<App>::new("dev").program(changed).provider(provider.clone());
    let mut session = other.in_memory_session().await.unwrap();
    let err = session.apply(&Plan::from_json(&saved).unwrap()).await.unwrap_err();
    assert!(matches!(err, cairn_sdk::Error::BadPlan(_)), "{err}");
    assert!(err.to_string().contains("input 'dead_letter_arn'"), "{err}");
    assert!(provider.calls().is_empty(), "{:?}", provider.calls());
}

#[tokio::test]
async fn a_panicking_function_fails_only_its_resource_and_names_the_input() {
    let provider = provider();
    let stack = stack(&provider);
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&App { panic_in_map: true, ..app() }).await.unwrap();

    let failures: Vec<String> = report.failures().map(|s| format!("{}: {:?}", s.urn.name(), s.status)).collect();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].starts_with("orders: "), "{failures:?}");
    assert!(failures[0].contains("input 'dead_letter_arn' could not be computed: `map` panicked"), "{failures:?}");
    assert!(!provider.calls_of(Op::Create).contains(&"orders".to_owned()), "no call for the failed queue");
    assert_eq!(dead_letter(&provider, "jobs").split(':').nth(1), Some("7@eu"));
}

#[test]
fn interpolate_keeps_braces_and_renders_non_strings_as_json() {
    use cairn_sdk::{Output, Urn};
    let id: Output<String> = Output::new(Urn::new("dev", "test:net:Network", "shop"), "id");
    let prop = cairn_sdk::Input::from(interpolate!("{{{}}} {} {}", &id, true, 1.5)).into_prop();
    let value = prop.resolve(&mut |_| Some(serde_json::json!("net-1")));
    assert_eq!(value, Some(serde_json::json!("{net-1} true 1.5")));
    assert_eq!(prop.resolve(&mut |_| None), None, "unknown while the network's id is");
}

#[tokio::test]
async fn stack_outputs_are_recorded_by_apply_and_their_changes_planned() {
    let provider = provider();
    let stack = stack(&provider);
    let mut session = stack.in_memory_session().await.unwrap();
    assert!(session.up(&app()).await.unwrap().succeeded());
    let net = provider.resources().into_iter().find(|r| r.urn.name() == "shop").unwrap();
    let outputs = &session.state().outputs;
    assert_eq!(outputs["network_id"], json!(net.id));
    assert_eq!(outputs["site"], json!("https://arn:test:shop.example.com"));
    assert_eq!(outputs.len(), 2, "{outputs:?}");

    // A new output alone is a change: applying it calls no provider.
    provider.clear_calls();
    let more = App { more_exports: true, ..app() };
    let plan = session.preview(&more).unwrap();
    assert!(plan.has_changes() && plan.summary.changes() == 0);
    let state = session.state().clone();
    assert_plan_snapshot!("outputs_a_new_export", stack, &more, &state);
    assert!(session.apply(&plan).await.unwrap().succeeded());
    assert!(provider.calls().is_empty(), "{:?}", provider.calls());
    assert!(session.state().outputs["subnets"].as_str().is_some_and(|s| s.contains(',')));
    assert!(!session.preview(&more).unwrap().has_changes());

    // Dropped from the program, dropped from state; destroy leaves none.
    assert!(session.up(&app()).await.unwrap().succeeded());
    assert!(!session.state().outputs.contains_key("subnets"));
    assert!(session.destroy().await.unwrap().succeeded());
    assert!(session.state().outputs.is_empty());
}

#[test]
fn a_bad_export_is_a_validation_error_naming_the_output() {
    let stack = stack(&provider());
    let err = stack.preview(&App { bad_exports: true, ..app() }, &stack.new_state()).unwrap_err().to_string();
    assert!(err.contains("stack output 'bad' is exported twice"), "{err}");
    assert!(err.contains("stack output 'bad' refers to urn:cairn:dev::test:net:Network::elsewhere, which this program does not declare"), "{err}");
}

/// A network stack and an application stack, deployed and locked separately in one
/// store: the application reads the network's outputs through a stack reference, and
/// plans the change when they change.
#[tokio::test]
async fn an_application_stack_reads_the_network_stacks_outputs_and_follows_their_changes() {
    use cairn_sdk::StackReference;
    use std::sync::Arc;
    let store: Arc<dyn cairn_state::Store> = Arc::new(cairn_state::MemoryStore::new());
    let provider = provider();
    let network = Stack::<String>::new("network").provider(provider.clone()).program(|cx, cidr: &String| {
        let net = cx.add(Network::new("shop").cidr_block(cidr.as_str()));
        cx.export("network_id", net.id());
        cx.export("cidr", cidr.as_str());
        Ok(())
    });
    let app = |output: &'static str, referenced: bool| {
        let mut stack = Stack::<()>::new("app").provider(provider.clone()).program(move |cx, _| {
            let id = cx.stack_output::<String>("network", output);
            cx.add(Subnet::new("web").network_id(id).cidr_block("10.0.1.0/24"));
            Ok(())
        });
        if referenced {
            stack = stack.reference(StackReference::new("network"));
        }
        stack
    };
    let up_network = |cidr: &'static str| {
        let (network, store) = (network.clone(), store.clone());
        async move {
            let mut session = network.lock(store, "up").await.unwrap();
            assert!(session.up(&cidr.to_owned()).await.unwrap().succeeded());
            session.close().await.unwrap();
        }
    };
    let preview_app = |stack: Stack<()>| {
        let store = store.clone();
        async move {
            let session = stack.lock(store, "preview").await.unwrap();
            let plan = session.preview(&());
            session.close().await.unwrap();
            plan
        }
    };

    let err = preview_app(app("network_id", true)).await.unwrap_err().to_string();
    assert!(err.contains("the program reads output 'network_id' of stack 'network', but it has no state in memory"), "{err}");

    up_network("10.0.0.0/16").await;
    let mut session = app("network_id", true).lock(store.clone(), "up").await.unwrap();
    assert!(session.up(&()).await.unwrap().succeeded());
    session.close().await.unwrap();
    let net_id = |p: &TestProvider| p.resources().into_iter().find(|r| r.urn.name() == "shop").unwrap().id;
    let subnet = provider.resources().into_iter().find(|r| r.urn.name() == "web").unwrap();
    assert_eq!(subnet.inputs.get("network_id"), Some(&json!(net_id(&provider))));

    // The network is replaced: a new id, which the application's next plan follows.
    up_network("10.9.0.0/16").await;
    let plan = preview_app(app("network_id", true)).await.unwrap();
    let web = plan.changed().find(|c| c.urn.name() == "web").expect("the subnet follows the network");
    let diff = web.diffs.iter().find(|d| d.name == "network_id").unwrap();
    assert_eq!(diff.new, Some(json!(net_id(&provider))));

    let err = preview_app(app("vpc_id", true)).await.unwrap_err().to_string();
    assert!(err.contains("output 'vpc_id' of stack 'network', but it exports only: cidr, network_id"), "{err}");
    let err = preview_app(app("network_id", false)).await.unwrap_err().to_string();
    assert!(err.contains("the stack does not reference it: add .reference(StackReference::new(\"network\")) to stack 'app'"), "{err}");
}
