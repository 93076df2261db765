//! Apply behaviour users rely on, on the test provider and tokio's virtual clock.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_sdk::schema::{Property, ResourceType};
use cairn_sdk::testing::{Call, Op};
use cairn_sdk::{
    Action, DynamicResource, Error, ErrorKind, Handle, Plan, ProviderOp, RenderOptions, ResourceExt, Stack, StackState, StepStatus, Timeouts,
    Urn,
};
use common::*;
use tokio::time::Instant;

static THING: ResourceType = ResourceType::new("test:misc:Thing", &[Property::input("size"), Property::input("after")]);

fn thing(name: &str) -> DynamicResource {
    DynamicResource::new(&THING, name).set("size", 1u32)
}

/// The position of the first call `op` on resource `name`.
fn pos(calls: &[Call], op: Op, name: &str) -> usize {
    calls
        .iter()
        .position(|c| c.op == op && c.urn.name() == name)
        .unwrap_or_else(|| panic!("no {op:?} of {name} in {calls:?}"))
}

/// Every delete comes after the deletes of what depended on it in `state`.
fn assert_deletes_respect(state: &StackState, calls: &[Call]) {
    let deleted: HashMap<&Urn, usize> =
        calls.iter().enumerate().filter(|(_, c)| c.op == Op::Delete).map(|(i, c)| (&c.urn, i)).collect();
    for r in &state.resources {
        for d in &r.dependencies {
            if let (Some(dep), Some(me)) = (deleted.get(d), deleted.get(&r.urn)) {
                assert!(me < dep, "{} deleted after its dependency {}", r.urn, d);
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_step_starts_as_soon_as_its_own_dependencies_finish() {
    // slow (100 ms) stands alone; fast (10 ms) -> next (10 ms). Level by level would take
    // 110 ms (slow and fast, then next); per-step scheduling takes 100 ms.
    let fake = TestProvider::new("test").latency_for("slow", Duration::from_millis(100)).latency_for("fast", Duration::from_millis(10)).latency_for("next", Duration::from_millis(10));
    let stack = Stack::<()>::new("dev").provider(fake.clone()).program(|cx, _| {
        cx.add(thing("slow"));
        let fast = cx.add(thing("fast"));
        cx.add(thing("next").depends_on(&fast));
        Ok(())
    });
    let t = Instant::now();
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    assert!(report.succeeded());
    assert_eq!(t.elapsed(), Duration::from_millis(100));
    let calls = fake.calls();
    assert!(pos(&calls, Op::Create, "fast") < pos(&calls, Op::Create, "next"));
}

/// Notes, as each step's end is reported, how many creates the provider has been asked
/// for by then.
#[derive(Debug, Clone)]
struct CreatesSeen {
    fake: TestProvider,
    log: Arc<Mutex<Vec<(String, usize)>>>,
}

impl cairn_sdk::Progress for CreatesSeen {
    fn finished(&self, step: &cairn_sdk::StepReport) {
        self.log.lock().unwrap().push((step.urn.name().to_owned(), self.fake.calls_of(Op::Create).len()));
    }
}

#[tokio::test(start_paused = true)]
async fn a_steps_call_goes_out_before_the_other_ends_that_came_with_its_dependencys() {
    // Eight calls end at the same instant; `next` waits on the first of them only. Its
    // request goes out as soon as that end is taken, not after the other seven are.
    // tokio fires the timers of one instant in the order they were set, so a0's end
    // comes first; were it last, the check below that some end came after it fails.
    let fake = TestProvider::new("test").with_latency(Duration::from_millis(10));
    let seen = CreatesSeen { fake: fake.clone(), log: Arc::default() };
    let stack = Stack::<()>::new("dev").provider(fake.clone()).progress(seen.clone()).program(|cx, _| {
        let first = cx.add(thing("a0"));
        for i in 1..8 {
            cx.add(thing(&format!("a{i}")));
        }
        cx.add(thing("next").depends_on(&first));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    assert!(session.up(&()).await.unwrap().succeeded());
    let log = seen.log.lock().unwrap().clone();
    let first = log.iter().position(|(name, _)| name == "a0").expect("a0 is reported");
    let after: Vec<&(String, usize)> = log[first + 1..].iter().filter(|(name, _)| name.starts_with('a')).collect();
    assert!(!after.is_empty(), "some end came after a0's in the same wake-up, or the test shows nothing: {log:?}");
    for (name, creates) in after {
        assert_eq!(*creates, 9, "when {name}'s end was taken, next's create had gone out: {log:?}");
    }
}

/// On a one-thread runtime (the reconciler's), an apply whose calls all end at once
/// still lets the runtime's other tasks run while it goes on: a lease renewal does not
/// wait for the whole apply.
#[tokio::test]
async fn an_apply_whose_calls_never_wait_still_lets_other_tasks_run() {
    let fake = TestProvider::new("test");
    let stack = Stack::<()>::new("dev").provider(fake.clone()).parallelism(usize::MAX).program(|cx, _| {
        for i in 0..1000 {
            cx.add(thing(&format!("t{i:04}")));
        }
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let other = tokio::spawn({
        let fake = fake.clone();
        // Looks again each time it runs until the apply has begun.
        async move {
            loop {
                match fake.calls_of(Op::Create).len() {
                    0 => tokio::task::yield_now().await,
                    n => return n,
                }
            }
        }
    });
    assert!(session.up(&()).await.unwrap().succeeded());
    let creates_when_it_ran = other.await.unwrap();
    assert!(creates_when_it_ran < 1000, "the other task ran again only after the apply's {creates_when_it_ran} creates");
}

#[tokio::test(start_paused = true)]
async fn parallelism_limit_is_respected_and_used() {
    let fake = TestProvider::new("test").with_latency(Duration::from_millis(10));
    let stack = Stack::<()>::new("dev").provider(fake.clone()).parallelism(4).program(|cx, _| {
        for i in 0..50 {
            cx.add(thing(&format!("t{i:02}")));
        }
        Ok(())
    });
    let t = Instant::now();
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    assert_eq!(report.summary.create, 50);
    assert_eq!(fake.max_concurrency(), 4);
    assert_eq!(t.elapsed(), Duration::from_millis(130), "13 rounds of 4 at 10 ms");
}

#[tokio::test]
async fn the_default_parallelism_is_16() {
    let fake = TestProvider::new("test").with_latency(Duration::from_millis(1));
    let stack = Stack::<()>::new("dev").provider(fake.clone()).program(|cx, _| {
        for i in 0..40 {
            cx.add(thing(&format!("t{i:02}")));
        }
        Ok(())
    });
    tokio::time::pause();
    let mut session = stack.in_memory_session().await.unwrap();
    session.up(&()).await.unwrap();
    assert_eq!(fake.max_concurrency(), 16);
}

#[tokio::test(start_paused = true)]
async fn a_failure_skips_only_its_dependents_and_the_next_up_converges() {
    let fake = provider().fail_once("web-a", Op::Create, "no capacity in zone-a");
    let stack = shop_stack(&fake);
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&Shop::new()).await.unwrap();

    let status: HashMap<&str, &StepStatus> = report.steps.iter().map(|s| (s.urn.name(), &s.status)).collect();
    // The error is a value: what failed, where, and what it lets a caller conclude.
    let error = status["web-a"].error().expect("web-a failed");
    assert_eq!(
        (error.urn().map(|u| u.name()), error.op(), error.kind(), error.message()),
        (Some("web-a"), Some(ProviderOp::Create), &ErrorKind::Failed, "no capacity in zone-a")
    );
    assert_eq!(error.to_string(), "test:net:Subnet 'web-a': no capacity in zone-a");
    assert!(matches!(status["web"], StepStatus::Skipped { because } if because.name() == "web-a"));
    for done in ["shop", "web-b", "orders", "orders-dlq"] {
        assert_eq!(status[done], &StepStatus::Done, "{done}");
    }
    assert_eq!(report.steps.len(), 6, "every step is reported");
    assert!(!report.succeeded());
    let names: Vec<&str> = report.state.resources.iter().map(|r| r.urn.name()).collect();
    assert_eq!(names, ["shop", "orders-dlq", "web-b", "orders"]);

    fake.clear_calls();
    let again = session.up(&Shop::new()).await.unwrap();
    assert!(again.succeeded());
    assert_eq!(fake.calls_of(Op::Create), ["web", "web-a"]);
    assert!(!stack.preview(&Shop::new(), &again.state).unwrap().has_changes());
}

#[tokio::test(start_paused = true)]
async fn deletes_go_in_reverse_dependency_order_from_state() {
    let fake = provider().with_latency(Duration::from_millis(5));
    let stack = shop_stack(&fake);
    let state = deployed(&stack, &Shop { flash_sale: true, ..Shop::new() }).await;
    fake.clear_calls();
    let mut session = session_at(&stack, &state).await;
    let report = session.destroy().await.unwrap();
    assert!(report.succeeded());
    assert_eq!(report.summary.delete, 9);
    assert!(report.state.resources.is_empty());
    assert!(fake.resources().is_empty(), "nothing left in the cloud");
    assert_deletes_respect(&state, &fake.calls());
}

#[tokio::test(start_paused = true)]
async fn replace_creates_first_moves_dependents_then_deletes_the_old_one() {
    let fake = provider().with_latency(Duration::from_millis(5));
    let stack = shop_stack(&fake);
    let state = deployed(&stack, &Shop::new()).await;
    fake.clear_calls();
    let mut session = session_at(&stack, &state).await;
    let report = session.up(&Shop { network_cidr: "10.1.0.0/16".into(), ..Shop::new() }).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.steps);
    assert_eq!((report.summary.replace, report.summary.update), (3, 1));

    let calls = fake.calls();
    let create_net = pos(&calls, Op::Create, "shop");
    let create_a = pos(&calls, Op::Create, "web-a");
    let update_web = pos(&calls, Op::Update, "web");
    let delete_a = pos(&calls, Op::Delete, "web-a");
    let delete_net = pos(&calls, Op::Delete, "shop");
    assert!(create_net < create_a && create_a < update_web, "{calls:?}");
    assert!(update_web < delete_a && delete_a < delete_net, "{calls:?}");

    // The new network got a new physical name; everything points at the new ids.
    let net = report.state.resource(&Urn::new("dev", "test:net:Network", "shop")).unwrap();
    assert_eq!(net.id, "shop-2");
    let old_name = state.resource(&net.urn).unwrap().inputs.get("name").unwrap();
    assert_ne!(net.inputs.get("name").unwrap(), old_name);
    let a = report.state.resource(&Urn::new("dev", "test:net:Subnet", "web-a")).unwrap();
    assert_eq!(a.inputs.get("network_id").unwrap(), "shop-2");
    assert_eq!(fake.resources().len(), 6, "old copies are gone");
}

#[tokio::test(start_paused = true)]
async fn an_explicit_physical_name_replaces_delete_first() {
    let fake = provider();
    let stack = Stack::<bool>::new("dev").provider(fake.clone()).program(|cx, fifo| {
        cx.add(Queue::new("jobs").name("jobs-queue").fifo(*fifo));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    assert!(session.up(&false).await.unwrap().succeeded());
    let plan = session.preview(&true).unwrap();
    assert!(plan.changes[0].delete_before_replace, "two queues named jobs-queue cannot coexist");
    fake.clear_calls();
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded());
    let calls = fake.calls();
    assert!(pos(&calls, Op::Delete, "jobs") < pos(&calls, Op::Create, "jobs"));
}

#[tokio::test(start_paused = true)]
async fn delete_before_replace_deletes_dependents_replaced_with_it_first() {
    let fake = provider();
    let stack = Stack::<String>::new("dev").provider(fake.clone()).program(|cx, cidr| {
        let net = cx.add(Network::new("shop").cidr_block(cidr.as_str()).delete_before_replace());
        cx.add(Subnet::new("web-a").network_id(net.id()).cidr_block("10.0.1.0/24"));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    assert!(session.up(&"10.0.0.0/16".to_owned()).await.unwrap().succeeded());
    fake.clear_calls();
    let report = session.up(&"10.1.0.0/16".to_owned()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.steps);
    let calls: Vec<(Op, &str)> = fake.calls().iter().map(|c| (c.op, c.urn.name())).collect::<Vec<_>>().into_iter().map(|(o, n)| (o, leak(n))).collect();
    assert_eq!(calls, [(Op::Delete, "web-a"), (Op::Delete, "shop"), (Op::Create, "shop"), (Op::Create, "web-a")]);
}

/// Like a queue's one policy: the cloud has a single one per `queue`.
static POLICY: ResourceType = ResourceType::new("test:misc:Policy", &[Property::input("queue").identity(), Property::input("doc")]);

/// One policy; S: its logical name, and its queue.
fn policy_stack(fake: &TestProvider) -> Stack<(String, String)> {
    Stack::<(String, String)>::new("dev").provider(fake.clone()).program(|cx, (name, queue)| {
        cx.add(DynamicResource::new(&POLICY, name).set("queue", queue.as_str()).set("doc", "allow"));
        Ok(())
    })
}

fn policy_at(name: &str, queue: &str) -> (String, String) {
    (name.to_owned(), queue.to_owned())
}

#[tokio::test(start_paused = true)]
async fn a_renamed_declaration_of_the_same_cloud_object_is_created_once_the_old_one_is_deleted() {
    let latency = Duration::from_millis(5);
    let fake = provider().with_latency(latency);
    let stack = policy_stack(&fake);
    let mut session = stack.in_memory_session().await.unwrap();
    assert!(session.up(&policy_at("events", "q-1")).await.unwrap().succeeded());

    // Renamed: created in parallel, the delete would clear the policy just set.
    let plan = session.preview(&policy_at("events-policy", "q-1")).unwrap();
    let create = plan.changes.iter().find(|c| c.action == Action::Create).unwrap();
    assert_eq!(create.after_delete, Some(Urn::new("dev", "test:misc:Policy", "events")));
    let shown = plan.render(RenderOptions::diff());
    assert!(shown.contains("after deleting test:misc:Policy events: the same cloud object"), "{shown}");
    let mut targeted = plan.clone();
    targeted.target(std::slice::from_ref(&create.urn)).unwrap();
    assert_eq!((targeted.summary.create, targeted.summary.delete), (1, 1), "a target keeps the delete its create waits for");
    fake.clear_calls();
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.steps);
    let calls = fake.calls();
    let (delete, create) = (&calls[pos(&calls, Op::Delete, "events")], &calls[pos(&calls, Op::Create, "events-policy")]);
    assert!(create.at >= delete.at + latency, "created while the old one was being deleted: {calls:?}");
    assert_eq!(fake.resources().len(), 1);

    // Another queue's policy is another object: nothing to wait for.
    let plan = session.preview(&policy_at("orders-policy", "q-2")).unwrap();
    assert!(plan.changes.iter().all(|c| c.after_delete.is_none()), "{plan:?}");
    fake.clear_calls();
    assert!(session.apply(&plan).await.unwrap().succeeded());
    let calls = fake.calls();
    assert_eq!(calls[pos(&calls, Op::Create, "orders-policy")].at, calls[pos(&calls, Op::Delete, "events-policy")].at);
}

#[tokio::test(start_paused = true)]
async fn a_renamed_declaration_keeping_its_physical_name_is_created_once_the_old_one_is_deleted() {
    let latency = Duration::from_millis(5);
    let fake = provider().with_latency(latency);
    // S: the network's logical name, and the physical name given, if any.
    let stack = Stack::<(String, Option<String>)>::new("dev").provider(fake.clone()).program(|cx, (logical, name)| {
        let network = Network::new(logical.as_str()).cidr_block("10.0.0.0/16");
        cx.add(match name {
            Some(name) => network.name(name.as_str()),
            None => network,
        });
        Ok(())
    });
    let at = |logical: &str, name: Option<&str>| (logical.to_owned(), name.map(str::to_owned));
    let mut session = stack.in_memory_session().await.unwrap();
    assert!(session.up(&at("main", Some("shop"))).await.unwrap().succeeded());

    // One physical name, one object (AWS answers a create of an existing queue or topic
    // with it): the renamed declaration is created once the old one is gone.
    let plan = session.preview(&at("core", Some("shop"))).unwrap();
    let create = plan.changes.iter().find(|c| c.action == Action::Create).unwrap();
    assert_eq!(create.after_delete, Some(Urn::new("dev", "test:net:Network", "main")));
    fake.clear_calls();
    assert!(session.apply(&plan).await.unwrap().succeeded());
    let calls = fake.calls();
    assert!(calls[pos(&calls, Op::Create, "core")].at >= calls[pos(&calls, Op::Delete, "main")].at + latency, "{calls:?}");

    // A name Cairn generates is made from the URN: a renamed declaration gets another,
    // and nothing waits.
    assert!(session.up(&at("core", None)).await.unwrap().succeeded());
    let plan = session.preview(&at("edge", None)).unwrap();
    assert!(plan.changes.iter().all(|c| c.after_delete.is_none()), "{plan:?}");
    fake.clear_calls();
    assert!(session.apply(&plan).await.unwrap().succeeded());
    let calls = fake.calls();
    assert_eq!(calls[pos(&calls, Op::Create, "edge")].at, calls[pos(&calls, Op::Delete, "core")].at);
    assert_eq!(fake.resources().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_update_onto_what_the_plan_frees_waits_for_the_delete_even_standing_on_it() {
    let latency = Duration::from_millis(5);
    let fake = provider().with_latency(latency);
    // Two policies, the second's document read from the first; then the first gone, and
    // the second moved onto its queue.
    let stack = Stack::<bool>::new("dev").provider(fake.clone()).program(|cx, moved| {
        if *moved {
            cx.add(DynamicResource::new(&POLICY, "second").set("queue", "q-1").set("doc", "allow"));
        } else {
            let first = cx.add(DynamicResource::new(&POLICY, "first").set("queue", "q-1").set("doc", "allow"));
            cx.add(DynamicResource::new(&POLICY, "second").set("queue", "q-2").set("doc", first.output::<String>("doc")));
        }
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    assert!(session.up(&false).await.unwrap().succeeded());

    // Updated alongside, the delete would clear the policy just moved there. The delete
    // waited for its dependents, the mover among them, which waits for it: it does not.
    let plan = session.preview(&true).unwrap();
    let update = plan.changes.iter().find(|c| c.action == Action::Update).unwrap();
    assert_eq!(update.after_delete, Some(Urn::new("dev", "test:misc:Policy", "first")));
    let shown = plan.render(RenderOptions::diff());
    assert!(shown.contains("after deleting test:misc:Policy first: the same cloud object"), "{shown}");
    fake.clear_calls();
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.steps);
    let calls = fake.calls();
    assert!(calls[pos(&calls, Op::Update, "second")].at >= calls[pos(&calls, Op::Delete, "first")].at + latency, "{calls:?}");
    assert_cloud_is(&fake, &report.state, 1);
}

#[tokio::test(start_paused = true)]
async fn a_replacement_onto_what_the_plan_frees_waits_for_the_delete_even_standing_on_it() {
    static RECORD: ResourceType = ResourceType::new("test:misc:Record", &[Property::input("name").identity().forces_replacement(), Property::input("value")]);
    let latency = Duration::from_millis(5);
    let fake = provider().with_latency(latency);
    // `www` and `api`, whose value is read from `www`; then `www` gone, and `api` renamed
    // to its name, which replaces it.
    let stack = Stack::<bool>::new("dev").provider(fake.clone()).program(|cx, moved| {
        if *moved {
            cx.add(DynamicResource::new(&RECORD, "api").set("name", "www.example.com").set("value", "10.0.0.2"));
        } else {
            let www = cx.add(DynamicResource::new(&RECORD, "www").set("name", "www.example.com").set("value", "10.0.0.1"));
            cx.add(DynamicResource::new(&RECORD, "api").set("name", "api.example.com").set("value", www.output::<String>("value")));
        }
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    assert!(session.up(&false).await.unwrap().succeeded());

    // The new copy waits for the delete; the old one stood on the deleted record, whose
    // delete waits for it, so it goes first rather than after the new copy.
    let plan = session.preview(&true).unwrap();
    let replace = plan.changes.iter().find(|c| c.action == Action::Replace).unwrap();
    assert_eq!(replace.after_delete, Some(Urn::new("dev", "test:misc:Record", "www")));
    assert!(replace.delete_before_replace);
    fake.clear_calls();
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.steps);
    let calls = fake.calls();
    assert!(calls[pos(&calls, Op::Create, "api")].at >= calls[pos(&calls, Op::Delete, "www")].at + latency, "{calls:?}");
    assert_cloud_is(&fake, &report.state, 1);
}

#[tokio::test]
async fn a_second_declaration_of_a_live_object_is_refused_before_any_call() {
    let fake = provider();
    // S: the name the second queue is given, if any.
    let stack = Stack::<Option<String>>::new("dev").provider(fake.clone()).program(|cx, second| {
        cx.add(Queue::new("orders").name("shop-orders"));
        if let Some(name) = second {
            cx.add(Queue::new("jobs").name(name.as_str()));
        }
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    assert!(session.up(&None).await.unwrap().succeeded());
    let before = session.state().clone();
    fake.clear_calls();

    // The queue exists, unchanged; the new declaration gives its name.
    let err = session.up(&Some("shop-orders".to_owned())).await.unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "the program declares an invalid graph (1 problem); nothing was changed:\n  \
         - test:queue:Queue 'orders' and test:queue:Queue 'jobs' would be one cloud object (name = \"shop-orders\"); give one of them another name, or declare it once"
    );
    assert!(fake.calls().is_empty(), "{:?}", fake.calls());
    assert_eq!(session.state(), &before);
    assert!(session.up(&Some("shop-jobs".to_owned())).await.unwrap().succeeded());
}

#[tokio::test(start_paused = true)]
async fn a_resource_replaced_onto_a_renamed_declaration_goes_first_rather_than_waiting_in_a_loop() {
    static WATCHER: ResourceType = ResourceType::new("test:misc:Watcher", &[Property::input("policy"), Property::input("version").forces_replacement()]);
    let fake = provider().with_latency(Duration::from_millis(5));
    // S: the policy's logical name, and the watcher's version.
    let stack = Stack::<(String, u32)>::new("dev").provider(fake.clone()).program(|cx, (name, version)| {
        let policy = cx.add(DynamicResource::new(&POLICY, name).set("queue", "q-1").set("doc", "allow"));
        cx.add(DynamicResource::new(&WATCHER, "w").set("policy", policy.output::<String>("queue")).set("version", *version));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    assert!(session.up(&("events".to_owned(), 1)).await.unwrap().succeeded());

    // The watcher's old copy stands on the old policy, whose delete the new policy
    // waits for, and its new copy stands on the new policy: created first, it would
    // wait for itself. So its old copy goes first.
    let plan = session.preview(&("events-policy".to_owned(), 2)).unwrap();
    let watcher = plan.changes.iter().find(|c| c.urn.name() == "w").unwrap();
    assert_eq!((watcher.action, watcher.delete_before_replace), (Action::Replace, true));
    fake.clear_calls();
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.steps);
    let calls = fake.calls();
    let order = [pos(&calls, Op::Delete, "w"), pos(&calls, Op::Delete, "events"), pos(&calls, Op::Create, "events-policy"), pos(&calls, Op::Create, "w")];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{calls:?}");
    assert_eq!(fake.resources().len(), 2);
}

/// Applies `plan` through `fake` (whose calls take `latency`), checking that `edge` is
/// created after `main`'s new copy, and only once the delete of `main`'s old copy ended.
async fn apply_edge_after_mains_old_copy<S: serde::Serialize + serde::de::DeserializeOwned + Default + Send + Sync + 'static>(
    session: &mut cairn_sdk::Session<S>,
    plan: &cairn_sdk::Plan,
    fake: &TestProvider,
    latency: Duration,
) {
    fake.clear_calls();
    let report = session.apply(plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.steps);
    let calls = fake.calls();
    let order = [pos(&calls, Op::Create, "main"), pos(&calls, Op::Delete, "main"), pos(&calls, Op::Create, "edge")];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{calls:?}");
    assert!(calls[order[2]].at >= calls[order[1]].at + latency, "created while the old copy was being deleted: {calls:?}");
    assert_cloud_is(fake, &report.state, 2);
}

/// A name a replacement gives up (its resource renamed create-before-delete), taken by
/// another declaration in the same plan: the taker waits for the old copy's delete,
/// though it comes first in the order. Where that wait would close a loop (the
/// replacement reads the taker, so the old copy's delete waits for it), the two run
/// side by side, as before.
#[tokio::test(start_paused = true)]
async fn a_name_a_replacement_gives_up_is_taken_once_its_old_copy_is_deleted() {
    static BUCKET: ResourceType =
        ResourceType::new("test:misc:Bucket", &[Property::input("name").auto_name().forces_replacement(), Property::input("note")]);
    let latency = Duration::from_millis(5);
    let fake = provider().with_latency(latency);
    // S: main's name; whether `edge`, declared first, takes the name "shop"; whether
    // main's note reads edge's.
    let stack = Stack::<(String, bool, bool)>::new("dev").provider(fake.clone()).program(|cx, (name, edge, reads)| {
        let edge = edge.then(|| cx.add(DynamicResource::new(&BUCKET, "edge").set("name", "shop").set("note", "edge")));
        let main = DynamicResource::new(&BUCKET, "main").set("name", name.as_str());
        cx.add(match &edge {
            Some(edge) if *reads => main.set("note", edge.output::<String>("note")),
            _ => main.set("note", "main"),
        });
        Ok(())
    });
    let at = |name: &str, edge, reads| (name.to_owned(), edge, reads);

    let mut session = stack.in_memory_session().await.unwrap();
    assert!(session.up(&at("shop", false, false)).await.unwrap().succeeded());
    let plan = session.preview(&at("shop-v2", true, false)).unwrap();
    let main = plan.changes.iter().find(|c| c.urn.name() == "main").unwrap();
    assert_eq!((main.action, main.delete_before_replace), (Action::Replace, false));
    let edge = plan.changes.iter().find(|c| c.urn.name() == "edge").unwrap();
    assert_eq!(edge.after_delete, Some(Urn::new("dev", "test:misc:Bucket", "main")));
    apply_edge_after_mains_old_copy(&mut session, &plan, &fake, latency).await;

    // The new copy reads the taker: the taker cannot wait for the old copy's delete.
    let fake = provider().with_latency(latency);
    let stack = stack.provider(fake.clone());
    let mut session = stack.in_memory_session().await.unwrap();
    assert!(session.up(&at("shop", false, false)).await.unwrap().succeeded());
    let plan = session.preview(&at("shop-v2", true, true)).unwrap();
    assert!(plan.changes.iter().all(|c| c.after_delete.is_none()), "{plan:?}");
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.steps);
    assert_cloud_is(&fake, &report.state, 2);
}

/// The same when the taker is itself replaced onto the name (a second rename in the
/// same change): its new copy is created once the other's old copy is deleted.
#[tokio::test(start_paused = true)]
async fn a_replacement_onto_a_name_another_replacement_gives_up_waits_for_its_old_copy() {
    static BUCKET: ResourceType =
        ResourceType::new("test:misc:Bucket", &[Property::input("name").auto_name().forces_replacement()]);
    let latency = Duration::from_millis(5);
    let fake = provider().with_latency(latency);
    // S: the names of `edge` (declared first) and `main`.
    let stack = Stack::<(String, String)>::new("dev").provider(fake.clone()).program(|cx, (edge, main)| {
        cx.add(DynamicResource::new(&BUCKET, "edge").set("name", edge.as_str()));
        cx.add(DynamicResource::new(&BUCKET, "main").set("name", main.as_str()));
        Ok(())
    });
    let names = |edge: &str, main: &str| (edge.to_owned(), main.to_owned());
    let mut session = stack.in_memory_session().await.unwrap();
    assert!(session.up(&names("edge", "shop")).await.unwrap().succeeded());

    let plan = session.preview(&names("shop", "shop-v2")).unwrap();
    let change = |name: &str| plan.changes.iter().find(|c| c.urn.name() == name && c.action != Action::Delete).unwrap();
    assert_eq!((change("main").action, change("main").delete_before_replace), (Action::Replace, false));
    assert_eq!((change("edge").action, change("edge").delete_before_replace), (Action::Replace, false));
    assert_eq!(change("edge").after_delete, Some(Urn::new("dev", "test:misc:Bucket", "main")));
    apply_edge_after_mains_old_copy(&mut session, &plan, &fake, latency).await;

    // Two that swap names would each wait for the other: the wait of the one later in
    // the order is dropped (that one's create races as before), and the plan applies.
    let plan = session.preview(&names("shop-v2", "shop")).unwrap();
    let waits: Vec<&str> = plan.changes.iter().filter(|c| c.after_delete.is_some()).map(|c| c.urn.name()).collect();
    assert_eq!(waits, ["edge"], "{plan:?}");
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.steps);
    assert_cloud_is(&fake, &report.state, 2);
}

/// The old name's delete fails, then its answer is lost: the create that waits for it
/// is not made, the cloud holds what state says each time, and the next `up` finishes.
#[tokio::test(start_paused = true)]
async fn a_renamed_declaration_whose_old_delete_fails_is_created_by_the_next_up() {
    let fake = provider()
        .with_latency(Duration::from_millis(5))
        .fail_once("events", Op::Delete, "Throttling: rate exceeded")
        .lose_response("events-policy", Op::Delete);
    let stack = policy_stack(&fake);
    let mut session = stack.in_memory_session().await.unwrap();
    assert!(session.up(&policy_at("events", "q-1")).await.unwrap().succeeded());

    let names = |state: &StackState| state.resources.iter().map(|r| r.urn.name().to_owned()).collect::<Vec<_>>();
    // Refused, the old one is still there; with its answer lost, the delete took effect
    // and is left pending, for the next operation to settle by a look-up.
    for (from, to, left) in [("events", "events-policy", 1), ("events-policy", "orders-policy", 0)] {
        let failed = session.up(&policy_at(to, "q-1")).await.unwrap();
        assert!(!failed.succeeded(), "the delete of {from} fails");
        assert!(fake.calls_of(Op::Create).iter().all(|c| c != to), "{to} was created while {from} could still exist");
        session.settle().await.unwrap();
        assert_eq!(names(session.state()), [from].into_iter().take(left).collect::<Vec<_>>());
        assert_cloud_is(&fake, session.state(), left);
        let report = session.up(&policy_at(to, "q-1")).await.unwrap();
        assert!(report.succeeded(), "{:?}", report.steps);
        assert_eq!(names(&report.state), [to]);
        assert_cloud_is(&fake, &report.state, 1);
    }
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

#[tokio::test(start_paused = true)]
async fn retain_on_delete_forgets_without_deleting() {
    let fake = provider();
    let stack = Stack::<bool>::new("dev").provider(fake.clone()).program(|cx, keep| {
        if *keep {
            cx.add(Queue::new("archive").retain_on_delete());
        }
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    assert!(session.up(&true).await.unwrap().succeeded());
    fake.clear_calls();
    let report = session.up(&false).await.unwrap();
    assert!(report.succeeded());
    assert!(report.state.resources.is_empty(), "forgotten by cairn");
    assert!(fake.calls_of(Op::Delete).is_empty(), "not deleted in the cloud");
    assert_eq!(fake.resources().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn ignore_changes_keeps_the_value_the_resource_was_created_with() {
    let stack = shop_stack(&provider());
    let stack = stack.program(|cx, shop: &Shop| {
        cx.add(Group::new("web").subnets(["s-1"]).image("img").capacity(1, shop.capacity, 12).ignore_changes(["desired"]));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let state = session.up(&Shop { capacity: 2, ..Shop::new() }).await.unwrap().state;
    let plan = stack.preview(&Shop { capacity: 9, ..Shop::new() }, &state).unwrap();
    assert!(!plan.has_changes(), "{}", plan.render(Default::default()));
}

#[tokio::test(start_paused = true)]
async fn a_custom_timeout_fails_the_step() {
    let fake = TestProvider::new("test").latency_for("slow", Duration::from_secs(600));
    let stack = Stack::<()>::new("dev").provider(fake).program(|cx, _| {
        cx.add(thing("slow").timeouts(Timeouts { create: Some(Duration::from_secs(30)), ..Default::default() }));
        Ok(())
    });
    let t = Instant::now();
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    assert_eq!(t.elapsed(), Duration::from_secs(30));
    assert!(matches!(&report.steps[0].status, StepStatus::Failed { error } if error.is_uncertain() && error.message().contains("timed out after 30s")));
    assert!(report.state.resources.is_empty());
    // The create was in flight: it may still land, so it stays pending, planning is
    // refused until it is settled, and the next up settles it with a look-up.
    assert_eq!(report.state.pending.len(), 1);
    assert!(matches!(stack.preview(&(), &report.state), Err(Error::PendingOperations { count: 1, .. })));
    let (settled, recovered) = cairn_sdk::recover::resolve_pending(&report.state, stack.providers()).await.unwrap();
    assert_eq!(recovered, [cairn_sdk::Recovery::Dropped { urn: Urn::new("dev", "test:misc:Thing", "slow") }]);
    assert!(settled.pending.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_delete_timeout_still_bounds_the_delete_after_the_program_dropped_the_resource() {
    let fake = TestProvider::new("test");
    let stack = Stack::<()>::new("dev").provider(fake.clone()).program(|cx, _| {
        cx.add(thing("slow").timeouts(Timeouts { delete: Some(Duration::from_secs(45)), ..Default::default() }));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let state = session.up(&()).await.unwrap().state;
    // Deleting it now hangs in the cloud; destroy knows nothing of the program, only state.
    let fake = fake.latency_for("slow", Duration::from_secs(3600));
    let t = Instant::now();
    let report = session_at(&Stack::<()>::new("dev").provider(fake), &state).await.destroy().await.unwrap();
    assert_eq!(t.elapsed(), Duration::from_secs(45), "bounded by the timeout recorded in state");
    assert!(matches!(&report.steps[0].status, StepStatus::Failed { error } if error.message().contains("timed out after 45s")), "{:?}", report.steps);
}

#[tokio::test(start_paused = true)]
async fn a_saved_plan_applies_exactly_and_is_refused_once_state_moved() {
    let fake = provider();
    let stack = shop_stack(&fake);
    let state = deployed(&stack, &Shop::new()).await;
    let saved = stack.preview(&Shop { capacity: 4, ..Shop::new() }, &state).unwrap().to_json();

    let plan = Plan::from_json(&saved).unwrap();
    fake.clear_calls();
    let mut session = session_at(&stack, &state).await;
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded());
    assert_eq!(fake.calls_of(Op::Update), ["web"]);
    assert_eq!(report.state.user_state["capacity"], 4, "the plan's S is persisted");

    fake.clear_calls();
    let err = session.apply(&plan).await.unwrap_err();
    assert!(matches!(err, Error::StalePlan { planned: 1, current: 2, .. }), "{err}");
    assert!(err.to_string().contains("run preview again"));
    assert!(fake.calls().is_empty(), "refused before any provider call");
}

#[tokio::test(start_paused = true)]
async fn a_may_replace_that_does_not_is_not_replaced() {
    // `tag.value` forces replacement and comes from the group's `version`, an output that
    // may change on update. The fake cloud keeps version 1, so nothing is replaced.
    static TAG: ResourceType = ResourceType::new("test:misc:Tag", &[Property::input("value").forces_replacement()]);
    let fake = provider();
    let stack = Stack::<u32>::new("dev").provider(fake.clone()).program(|cx, desired| {
        let web = cx.add(Group::new("web").subnets(["s-1"]).image("img").capacity(1, *desired, 12));
        cx.add(DynamicResource::new(&TAG, "tag").set("value", web.version()));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    assert!(session.up(&1).await.unwrap().succeeded());
    let plan = session.preview(&2).unwrap();
    let tag = plan.changes.iter().find(|c| c.urn.name() == "tag").unwrap();
    assert!(tag.action == Action::Replace && tag.may_replace);
    fake.clear_calls();
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded());
    assert_eq!(fake.calls_of(Op::Create), Vec::<String>::new());
    assert_eq!(fake.calls_of(Op::Delete), Vec::<String>::new());
    assert_eq!(report.summary.replace, 0);
    let tag_steps: Vec<_> = report.steps.iter().filter(|s| s.urn.name() == "tag").collect();
    assert!(tag_steps.iter().all(|s| matches!(s.status, StepStatus::NoOp { .. })), "{tag_steps:?}");
}

#[tokio::test(start_paused = true)]
async fn an_old_copy_whose_delete_failed_is_deleted_by_the_next_apply() {
    let fake = provider().fail_once("orders", Op::Delete, "queue busy");
    let stack = Stack::<bool>::new("dev").provider(fake.clone()).program(|cx, fifo| {
        cx.add(Queue::new("orders").fifo(*fifo));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    assert!(session.up(&false).await.unwrap().succeeded());
    let report = session.up(&true).await.unwrap();
    assert!(!report.succeeded());
    let copies: Vec<bool> = report.state.resources.iter().map(|r| r.pending_delete).collect();
    assert_eq!(copies, [false, true], "the new queue, and the old one still to delete");

    let plan = session.preview(&true).unwrap();
    assert_eq!(plan.summary.delete, 1);
    assert!(plan.changes.iter().any(|c| c.pending_delete));
    let done = session.apply(&plan).await.unwrap();
    assert!(done.succeeded());
    assert_eq!(done.state.resources.len(), 1);
    assert_eq!(fake.resources().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn refresh_reports_drift_and_the_next_up_corrects_it() {
    let fake = provider();
    let stack = shop_stack(&fake);
    let state = deployed(&stack, &Shop::new()).await;
    fake.tamper("web-1", "desired", serde_json::json!(7));
    fake.remove("orders-dlq-1");

    let mut session = session_at(&stack, &state).await;
    let refreshed = session.refresh().await.unwrap();
    let drift = serde_json::to_value(&refreshed.drift).unwrap();
    insta::assert_json_snapshot!(drift);
    assert!(refreshed.errors.is_empty());

    fake.clear_calls();
    let report = session.up(&Shop::new()).await.unwrap();
    assert!(report.succeeded());
    // The queue comes back and the group's capacity is set back. `orders` pointed at the
    // queue's ARN, unknown at plan time; the new queue has the same ARN, so no update.
    assert_eq!((report.summary.create, report.summary.update), (1, 1), "{:?}", report.steps);
    assert_eq!(fake.calls_of(Op::Update), ["web"]);
    let again = stack.preview_refresh(&report.state).await.unwrap();
    assert!(again.drift.is_empty());
}

#[tokio::test]
async fn refresh_is_not_drift_for_what_the_program_leaves_to_the_cloud() {
    let fake = provider();
    let stack = Stack::<()>::new("dev").provider(fake.clone()).program(|cx, _| {
        let net = cx.add(Network::new("shop").cidr_block("10.0.0.0/16"));
        // No zone: the cloud picks one.
        cx.add(Subnet::new("web").network_id(net.id()).cidr_block("10.0.1.0/24"));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    assert!(session.up(&()).await.unwrap().succeeded());
    fake.tamper("web-1", "zone", serde_json::json!("zone-c"));
    let refreshed = session.refresh().await.unwrap();
    assert!(refreshed.drift.is_empty(), "a zone the cloud chose is not drift: {:?}", refreshed.drift);
    fake.tamper("web-1", "cidr_block", serde_json::json!("10.0.9.0/24"));
    let refreshed = stack.preview_refresh(&refreshed.state).await.unwrap();
    assert_eq!(refreshed.drift.len(), 1, "{:?}", refreshed.drift);
    assert!(refreshed.drift[0].to_string().contains("cidr_block: \"10.0.1.0/24\" -> \"10.0.9.0/24\""), "{}", refreshed.drift[0]);
}

#[tokio::test]
async fn a_missing_provider_is_refused_before_any_call() {
    let stack = Stack::<Shop>::new("dev").program(shop_program).secrets(common::keyring());
    let mut session = stack.in_memory_session().await.unwrap();
    let err = session.up(&Shop::new()).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "no provider is registered for package 'test' (needed by urn:cairn:dev::test:net:Network::shop); register one with Stack::provider"
    );
}

#[tokio::test]
async fn state_of_another_stack_is_refused() {
    let stack = shop_stack(&provider());
    let err = stack.preview(&Shop::new(), &StackState::new("prod")).unwrap_err();
    assert!(matches!(err, Error::WrongStack { .. }), "{err}");
}

#[test]
fn handles_deref_to_their_urn() {
    let mut cx = cairn_sdk::Cx::new("dev");
    let net = cx.add(Network::new("shop").cidr_block("10.0.0.0/16"));
    let h: &Handle = &net;
    assert_eq!(h.urn().as_str(), "urn:cairn:dev::test:net:Network::shop");
}

#[tokio::test]
async fn an_output_the_provider_did_not_return_fails_the_dependent_clearly() {
    // A provider without computed outputs: `arn` never comes back.
    let stack = Stack::<()>::new("dev").provider(TestProvider::new("test")).program(|cx, _| {
        let dlq = cx.add(Queue::new("dlq"));
        cx.add(Queue::new("orders").dead_letter_arn(dlq.arn()));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    let orders = report.steps.iter().find(|s| s.urn.name() == "orders").unwrap();
    assert_eq!(
        orders.status.error().map(|e| e.message()),
        Some("input 'dead_letter_arn' refers to 'arn' of test:queue:Queue 'dlq', which its provider did not return")
    );
}

#[tokio::test]
async fn a_new_depends_on_is_recorded_for_an_otherwise_unchanged_resource() {
    let stack = Stack::<bool>::new("dev").provider(provider()).program(|cx, linked| {
        let a = cx.add(thing("a"));
        let mut b = thing("b");
        if *linked {
            b = b.depends_on(&a);
        }
        cx.add(b);
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    assert!(session.up(&false).await.unwrap().succeeded());
    let plan = session.preview(&true).unwrap();
    assert!(!plan.has_changes(), "a dependency alone changes nothing in the cloud");
    let report = session.apply(&plan).await.unwrap();
    let b = report.state.resource(&Urn::new("dev", "test:misc:Thing", "b")).unwrap();
    assert_eq!(b.dependencies, [Urn::new("dev", "test:misc:Thing", "a")], "deletes will honour it");
}

#[tokio::test]
async fn refresh_hides_secret_values_in_drift() {
    let fake = provider();
    let stack = shop_stack(&fake);
    let state = deployed(&stack, &Shop::new()).await;
    fake.tamper("orders-1", "auth_token", serde_json::json!("leaked-new-token"));
    let refreshed = stack.preview_refresh(&state).await.unwrap();
    let drift = serde_json::to_string(&refreshed.drift).unwrap();
    assert!(drift.contains("auth_token") && drift.contains("[secret]"), "{drift}");
    assert!(!drift.contains("s3cr3t") && !drift.contains("leaked-new-token"), "{drift}");
}

#[tokio::test(start_paused = true)]
async fn an_apply_finds_each_resource_in_state_stored_in_another_order() {
    // State is matched to the plan's changes mostly by position; a state in another
    // order (written by hand, or by an older version) must give the same result.
    let fake = provider();
    let stack = shop_stack(&fake);
    let mut state = deployed(&stack, &Shop { flash_sale: true, ..Shop::new() }).await;
    state.resources.reverse();
    let changed = Shop { capacity: 5, dlq_timeout: 60, ..Shop::new() };
    fake.clear_calls();
    // At the engine level: a store sorts what it loads.
    let plan = stack.preview(&changed, &state).unwrap();
    let journal = std::sync::Arc::new(cairn_state::NoJournal);
    let report = cairn_sdk::apply::apply(&plan, &state, stack.providers(), &cairn_sdk::ApplyOptions::default(), journal).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.steps);
    assert_eq!(fake.calls_of(Op::Update), ["orders-dlq", "web"]);
    assert_eq!(fake.calls_of(Op::Delete), ["sale-dlq", "sale-orders", "sale-workers"]);
    // Each update went to the resource's own cloud copy, with its own new inputs.
    for r in fake.resources() {
        match r.urn.name() {
            "web" => assert_eq!(r.inputs.get("desired"), Some(&serde_json::json!(5)), "{r:?}"),
            "orders-dlq" => assert_eq!(r.inputs.get("visibility_timeout"), Some(&serde_json::json!(60)), "{r:?}"),
            _ => {}
        }
    }
    assert!(!stack.preview(&changed, &report.state).unwrap().has_changes());
    assert_eq!(report.state.resources.len(), 6);
}

/// A saved plan edited by hand (or cut, or from another stack's run) is refused when
/// applied, before any call, when its changes do not fit the state: never a panic, and
/// never a call for a change that cannot be carried out as written. Edits that still
/// describe a possible change (a dependency dropped) are applied.
#[tokio::test]
async fn a_saved_plan_edited_by_hand_is_refused_before_any_call_never_a_panic() {
    let cloud = provider();
    let stack = |n: u32| {
        Stack::<u32>::new("dev").provider(cloud.clone()).program(move |cx, _| {
            let a = cx.add(thing("a"));
            let b = cx.add(thing("b").set("after", a.output::<u32>("size")));
            if n > 1 {
                cx.add(thing("c").set("after", b.output::<u32>("size")));
            }
            Ok(())
        })
    };
    let store = std::sync::Arc::new(cairn_state::MemoryStore::new());
    let mut session = stack(1).lock(store.clone(), "up").await.unwrap();
    session.up(&1).await.unwrap();
    let plan = stack(2).preview(&2, session.state()).unwrap();
    let json: serde_json::Value = serde_json::from_str(&plan.to_json()).unwrap();
    let at = |p: &serde_json::Value, name: &str| p["changes"].as_array().unwrap().iter().position(|c| c["urn"].as_str().unwrap().ends_with(&format!("::{name}"))).unwrap();

    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let edits: Vec<(&str, Option<&str>, Edit)> = vec![
        ("a change twice", Some("it changes a resource twice"), Box::new(move |p| {
            let c = at(p, "c");
            let c = p["changes"][c].clone();
            p["changes"].as_array_mut().unwrap().push(c);
        })),
        ("an update without an id", Some("it changes a resource without an id, but state has this resource as a-1"), Box::new(move |p| {
            let a = at(p, "a");
            p["changes"][a]["action"] = serde_json::json!("update");
            p["changes"][a].as_object_mut().unwrap().remove("id");
        })),
        ("an update of another id", Some("it changes a-9, but state has this resource as a-1"), Box::new(move |p| {
            let a = at(p, "a");
            p["changes"][a]["action"] = serde_json::json!("update");
            p["changes"][a]["id"] = serde_json::json!("a-9");
        })),
        ("a create of what state has", Some("it creates a resource that state already has, as b-1"), Box::new(move |p| {
            let b = at(p, "b");
            p["changes"][b]["action"] = serde_json::json!("create");
        })),
        ("a delete of what state does not have", Some("it changes ghost-1, which state does not have"), Box::new(move |p| {
            let c = at(p, "c");
            p["changes"][c]["action"] = serde_json::json!("delete");
            p["changes"][c]["id"] = serde_json::json!("ghost-1");
        })),
        ("a cycle", Some("in a loop"), Box::new(move |p| {
            let (a, c) = (at(p, "a"), at(p, "c"));
            p["changes"][a]["action"] = serde_json::json!("update");
            p["changes"][a]["dependencies"] = serde_json::json!([p["changes"][c]["urn"]]);
            p["changes"][c]["dependencies"] = serde_json::json!([p["changes"][a]["urn"]]);
        })),
        ("a dependency dropped from the plan", None, Box::new(move |p| {
            let b = at(p, "b");
            p["changes"].as_array_mut().unwrap().remove(b);
        })),
    ];
    for (what, refused, edit) in edits {
        let mut edited = json.clone();
        edit(&mut edited);
        let plan = Plan::from_json(&edited.to_string()).unwrap();
        let state = session.state().clone();
        let providers = stack(2).providers().clone();
        cloud.clear_calls();
        let journal = std::sync::Arc::new(cairn_state::NoJournal);
        let applied = tokio::spawn(async move { cairn_sdk::apply::apply(&plan, &state, &providers, &cairn_sdk::ApplyOptions::default(), journal).await })
            .await
            .unwrap_or_else(|_| panic!("{what}: the apply panicked"));
        match (refused, applied) {
            (Some(message), Err(e)) => {
                assert!(matches!(e, Error::BadPlan(_)) && e.to_string().contains(message), "{what}: {e}");
                assert!(cloud.calls().is_empty(), "{what}: {:?}", cloud.calls());
            }
            (None, Ok(report)) => assert!(report.succeeded(), "{what}"),
            (_, other) => panic!("{what}: {:?}", other.map(|r| r.succeeded())),
        }
    }
    session.close().await.unwrap();
}

/// A provider with a bug: `op` on resource `name` panics, after the call may have
/// reached the cloud. At once, or with `after_waiting` after waiting once, so that the
/// panic comes from a call the apply polls among the others, not from its first poll.
/// Everything else succeeds.
#[derive(Debug)]
struct PanicsIn {
    op: Op,
    name: &'static str,
    after_waiting: bool,
}

impl PanicsIn {
    async fn call(&self, op: Op, urn: &Urn) {
        if op == self.op && urn.name() == self.name {
            if self.after_waiting {
                tokio::task::yield_now().await;
            }
            panic!("a bug in the provider while {} {}", if op == Op::Read { "reading" } else { "creating" }, self.name);
        }
    }
}

#[async_trait::async_trait]
impl cairn_sdk::Provider for PanicsIn {
    fn package(&self) -> &str {
        "test"
    }
    async fn create(&self, urn: &Urn, inputs: &cairn_sdk::Props) -> Result<cairn_sdk::Observed, cairn_sdk::ProviderError> {
        self.call(Op::Create, urn).await;
        Ok(cairn_sdk::Observed { id: urn.name().into(), inputs: inputs.clone(), outputs: Default::default() })
    }
    async fn read(&self, urn: &Urn, id: &str, inputs: &cairn_sdk::Props, _: &cairn_sdk::Props) -> Result<Option<cairn_sdk::Observed>, cairn_sdk::ProviderError> {
        self.call(Op::Read, urn).await;
        Ok(Some(cairn_sdk::Observed { id: id.into(), inputs: inputs.clone(), outputs: Default::default() }))
    }
    async fn update(&self, _: &Urn, id: &str, _: &cairn_sdk::Props, new: &cairn_sdk::Props) -> Result<cairn_sdk::Observed, cairn_sdk::ProviderError> {
        Ok(cairn_sdk::Observed { id: id.into(), inputs: new.clone(), outputs: Default::default() })
    }
    async fn delete(&self, _: &Urn, _: &str, _: &cairn_sdk::Props, _: &cairn_sdk::Props) -> Result<(), cairn_sdk::ProviderError> {
        Ok(())
    }
    async fn lookup(&self, _: &Urn, _: &cairn_sdk::Props) -> Result<Vec<cairn_sdk::Observed>, cairn_sdk::ProviderError> {
        Ok(Vec::new())
    }
}

/// A provider that panics mid-create has a bug, and the call may have reached the cloud:
/// the step fails as uncertain, stays pending exactly as begun (its inputs and
/// dependencies), what depends on it is skipped, and planning waits until it is settled.
#[tokio::test]
async fn a_provider_that_panics_leaves_its_step_pending_as_begun() {
    for after_waiting in [false, true] {
        a_panic_leaves_its_step_pending(PanicsIn { op: Op::Create, name: "first", after_waiting }).await;
    }
}

async fn a_panic_leaves_its_step_pending(provider: PanicsIn) {
    let stack = Stack::<()>::new("dev").provider(provider).program(|cx, _| {
        let first = cx.add(thing("first"));
        cx.add(thing("second").depends_on(&first));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    let status = |name: &str| &report.steps.iter().find(|s| s.urn.name() == name).expect("a step per resource").status;
    assert!(matches!(status("first"), StepStatus::Failed { error } if error.is_uncertain() && error.message().contains("the provider panicked")));
    assert!(matches!(status("second"), StepStatus::Skipped { .. }), "{:?}", report.steps);
    assert!(report.state.resources.is_empty());
    let [pending] = &report.state.pending[..] else { panic!("one step pending: {:?}", report.state.pending) };
    assert_eq!(pending.urn, Urn::new("dev", "test:misc:Thing", "first"));
    assert_eq!(pending.inputs.get("size"), Some(&serde_json::json!(1)));
    assert!(matches!(stack.preview(&(), &report.state), Err(Error::PendingOperations { count: 1, .. })));
}

/// A read that panics is that resource's refresh error, uncertain and named; the other
/// resources are read, and state keeps what it had for the one not read.
#[tokio::test]
async fn a_provider_that_panics_while_reading_fails_that_resource_alone() {
    let stack = Stack::<()>::new("dev").provider(PanicsIn { op: Op::Read, name: "b", after_waiting: false }).program(|cx, _| {
        for name in ["a", "b", "c"] {
            cx.add(thing(name));
        }
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let up = session.up(&()).await.unwrap();
    assert!(up.succeeded());
    let refreshed = session.refresh().await.unwrap();
    let [error] = &refreshed.errors[..] else { panic!("one error: {:?}", refreshed.errors) };
    assert_eq!((error.urn().map(|u| u.name()), error.op()), (Some("b"), Some(ProviderOp::Read)));
    assert!(error.is_uncertain() && error.message().contains("the provider panicked: a bug in the provider while reading b"), "{error}");
    assert!(refreshed.drift.is_empty(), "{:?}", refreshed.drift);
    assert_eq!(refreshed.state.resources, up.state.resources);
}
