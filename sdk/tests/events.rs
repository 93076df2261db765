//! The reconciler on virtual time: coalescing, debounce, cooldown, backoff, shutdown,
//! deduplication, guards, policy, and a storm of 10,000 events.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cairn_sdk::events::{Event, EventPolicy, Events, EventsClosed, Outcome, PolicyViolation, Reconciler, ReconcilerOptions, Rejection, Schedule, Source};
use cairn_sdk::{Action, Session, Stack};
use cairn_state::{MemoryStore, Store};
use common::{provider, shop_stack, Op, Shop, TestProvider};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};

const WEB: &str = "urn:cairn:dev::test:compute:Group::web";

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn events_stack(p: &TestProvider) -> Stack<Shop> {
    shop_stack(p)
        .on_event("traffic.spike", |e: &Event, s: &mut Shop| {
            let rps: u32 = e.field("rps")?;
            s.capacity = rps.div_ceil(500).clamp(2, 12);
            Ok(())
        })
        .on_event("traffic.normal", |_: &Event, s: &mut Shop| {
            s.capacity = 2;
            Ok(())
        })
        .on_event("capacity.set", |e: &Event, s: &mut Shop| {
            s.capacity = e.field("capacity")?;
            Ok(())
        })
        .on_event("sale.*", |e: &Event, s: &mut Shop| {
            s.flash_sale = e.kind == "sale.started";
            Ok(())
        })
        .on_event("network.move", |e: &Event, s: &mut Shop| {
            s.network_cidr = e.field("cidr")?;
            Ok(())
        })
        .guard("capacity at most 12", |s: &Shop| if s.capacity <= 12 { Ok(()) } else { Err(format!("capacity {} is above 12", s.capacity).into()) })
        .event_policy(EventPolicy::default().deny_replace_or_delete("test:net:Network"))
}

fn spike(rps: u32) -> Event {
    Event::new("traffic.spike", json!({ "rps": rps }))
}

/// A deployed shop in a memory store, locked for watching.
async fn deployed(stack: &Stack<Shop>, store: &Arc<MemoryStore>) -> Session<Shop> {
    deployed_on(stack, &(store.clone() as Arc<dyn Store>)).await
}

/// A stack deployed on the test provider, its state in a file store in a temporary
/// directory (kept while `dir` lives), and the session that deployed it.
struct OnFiles {
    dir: tempfile::TempDir,
    store: Arc<dyn Store>,
    stack: Stack<Shop>,
    session: Session<Shop>,
}

/// The records of the file store's journal at `path`: its text before the zeros that
/// follow them.
fn journal_records(path: &std::path::Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    text.split('\0').next().unwrap().to_owned()
}

async fn deployed_on_files() -> OnFiles {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(cairn_state::FileStore::new(dir.path()));
    let stack = events_stack(&provider());
    let session = deployed_on(&stack, &store).await;
    OnFiles { dir, store, stack, session }
}

async fn deployed_on(stack: &Stack<Shop>, store: &Arc<dyn Store>) -> Session<Shop> {
    let mut session = stack.lock(store.clone(), "watch").await.unwrap();
    assert!(session.up(&Shop::new()).await.unwrap().succeeded());
    session
}

struct Running {
    events: Events,
    stop: oneshot::Sender<()>,
    task: JoinHandle<cairn_sdk::Result<Session<Shop>>>,
}

fn start(session: Session<Shop>, options: ReconcilerOptions) -> Running {
    let (reconciler, events) = Reconciler::new(session, options).unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(reconciler.run(async {
        let _ = stopped.await;
    }));
    Running { events, stop, task }
}

impl Running {
    async fn finish(self) -> Session<Shop> {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap()
    }
}

fn web_updates(p: &TestProvider) -> Vec<Instant> {
    p.calls().into_iter().filter(|c| c.op == Op::Update && c.urn.as_str() == WEB).map(|c| c.at).collect()
}

fn desired(store_state: &cairn_sdk::StackState) -> i64 {
    store_state.resource(&cairn_sdk::Urn::new("dev", "test:compute:Group", "web")).unwrap().inputs.get("desired").unwrap().as_i64().unwrap()
}

/// A schedule is a source: one event per period, each with an id of its own firing time
/// (so a restart or a second watcher never applies one firing twice), until the
/// reconciler stops.
#[tokio::test(start_paused = true)]
async fn a_schedule_fires_on_its_period_until_the_reconciler_stops() {
    let p = provider();
    let stack = events_stack(&p);
    let store = Arc::new(MemoryStore::new());
    let session = deployed(&stack, &store).await;
    let state = session.state().clone();
    let run = start(session, ReconcilerOptions::default());
    let schedule = Schedule::every(secs(60), "capacity.set").unwrap().payload(json!({"capacity": 5}));
    assert_eq!(schedule.name(), "schedule:capacity.set");
    let events = run.events.clone();
    let source = tokio::spawn(async move { schedule.run(&state, events).await.map_err(|e| e.to_string()) });

    sleep(secs(59)).await;
    assert!(store.history("dev").await.unwrap().is_empty(), "nothing before the first period ends");
    sleep(secs(62)).await;
    let session = run.finish().await;
    assert_eq!(timeout(secs(5), source).await.expect("the schedule stops with the reconciler").unwrap(), Ok(()));
    let history = store.history("dev").await.unwrap();
    let firings: Vec<(&str, &str)> = history.iter().map(|e| (e["event"]["source"].as_str().unwrap(), e["outcome"].as_str().unwrap())).collect();
    assert_eq!(firings, [("schedule", "accepted"), ("schedule", "accepted")], "{history:#?}");
    let ids: Vec<&str> = history.iter().map(|e| e["event"]["id"].as_str().unwrap()).collect();
    assert!(ids[0].starts_with("schedule:capacity.set:") && ids[0] != ids[1], "{ids:?}");
    assert_eq!(desired(session.state()), 5);
}

#[tokio::test(start_paused = true)]
async fn events_during_an_apply_are_coalesced_into_one_more_apply() {
    let p = provider().with_latency(secs(1));
    let stack = events_stack(&p);
    let store = Arc::new(MemoryStore::new());
    let session = deployed(&stack, &store).await;
    let run = start(session, ReconcilerOptions::default());

    let first = run.events.submit(spike(1500)).await.unwrap();
    sleep(Duration::from_millis(100)).await; // its apply is running now
    assert_eq!(web_updates(&p).len(), 1);
    let later = [spike(3000), Event::new("sale.started", json!({})), spike(4000)];
    let mut receipts = Vec::new();
    for e in later {
        receipts.push(run.events.submit(e).await.unwrap());
    }
    assert_eq!(first.recorded().await.unwrap(), Outcome::Accepted);
    for r in receipts {
        assert_eq!(r.recorded().await.unwrap(), Outcome::Accepted);
    }
    let metrics = run.events.metrics().clone();
    let session = run.finish().await;

    // One apply for the first event, one for the three that came during it.
    assert_eq!(metrics.applies_of("succeeded"), 2);
    assert_eq!(web_updates(&p).len(), 2);
    let state = store.load("dev").await.unwrap().unwrap();
    let shop: Shop = serde_json::from_value(state.user_state.clone()).unwrap();
    assert_eq!((shop.capacity, shop.flash_sale), (8, true), "handlers ran in arrival order");
    assert_eq!(desired(&state), 8);
    assert!(state.resource(&cairn_sdk::Urn::new("dev", "test:queue:Queue", "sale-orders")).is_some());
    let history = store.history("dev").await.unwrap();
    let kinds: Vec<&str> = history.iter().filter_map(|e| e["event"]["kind"].as_str()).collect();
    assert_eq!(kinds, ["traffic.spike", "traffic.spike", "sale.started", "traffic.spike"]);
    assert!(history.iter().all(|e| e["apply"]["result"] == "succeeded"), "{history:#?}");
    session.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn debounce_waits_for_quiet_but_never_longer_than_max_wait() {
    let p = provider();
    let stack = events_stack(&p);
    let store = Arc::new(MemoryStore::new());
    let session = deployed(&stack, &store).await;
    let run = start(session, ReconcilerOptions::default().debounce(secs(2), secs(10)));

    // A burst of three, a second apart: one apply, 2 s after the last.
    let t0 = Instant::now();
    for rps in [1500, 2000, 2500] {
        run.events.submit(spike(rps)).await.unwrap();
        sleep(secs(1)).await;
    }
    sleep(secs(5)).await;
    let updates = web_updates(&p);
    assert_eq!(updates.len(), 1, "one apply for the burst");
    assert_eq!(updates[0] - t0, secs(4));

    // A steady stream, one event a second for 30 s: the debounce never sees quiet, so
    // max_wait bounds each event's wait.
    let t1 = Instant::now();
    for i in 0..30 {
        run.events.submit(spike(1000 + 100 * (i % 2))).await.unwrap();
        sleep(secs(1)).await;
    }
    sleep(secs(5)).await;
    let stream: Vec<Duration> = web_updates(&p)[1..].iter().map(|t| *t - t1).collect();
    assert!(stream.len() >= 2, "{stream:?}");
    assert_eq!(stream[0], secs(10), "first apply of the stream at max_wait");
    run.finish().await.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_kind_in_cooldown_waits_and_other_kinds_do_not() {
    let p = provider();
    let stack = events_stack(&p);
    let store = Arc::new(MemoryStore::new());
    let session = deployed(&stack, &store).await;
    let run = start(session, ReconcilerOptions::default().cooldown("traffic.*", secs(60)));

    let t0 = Instant::now();
    assert_eq!(run.events.send(spike(3000)).await.unwrap(), Outcome::Accepted);
    sleep(secs(5)).await;
    let held = run.events.submit(spike(5000)).await.unwrap();
    // Another kind goes straight through.
    assert_eq!(run.events.send(Event::new("sale.started", json!({}))).await.unwrap(), Outcome::Accepted);
    let sale_created = p.calls().iter().find(|c| c.op == Op::Create && c.urn.name() == "sale-orders").map(|c| c.at).unwrap();
    assert_eq!(sale_created - t0, secs(5));
    // The held spike is not lost: it runs when the cooldown ends.
    assert_eq!(held.recorded().await.unwrap(), Outcome::Accepted);
    let updates = web_updates(&p);
    assert_eq!(updates.len(), 2);
    assert_eq!(updates[1] - t0, secs(60));
    let session = run.finish().await;
    assert_eq!(desired(session.state()), 10);
    session.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failed_apply_is_retried_with_exponential_backoff_until_it_converges() {
    let p = provider()
        .fail_once("web", Op::Update, "throttled")
        .fail_once("web", Op::Update, "throttled")
        .fail_once("web", Op::Update, "throttled");
    let stack = events_stack(&p);
    let store = Arc::new(MemoryStore::new());
    let session = deployed(&stack, &store).await;
    let run = start(session, ReconcilerOptions::default().backoff(secs(1), secs(60)));

    assert_eq!(run.events.send(spike(3000)).await.unwrap(), Outcome::Accepted);
    // No further event: the reconciler keeps going on its own.
    sleep(secs(30)).await;
    let updates = web_updates(&p);
    let gaps: Vec<Duration> = updates.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(gaps, [secs(1), secs(2), secs(4)]);
    let metrics = run.events.metrics().clone();
    assert_eq!((metrics.applies_of("failed"), metrics.applies_of("succeeded")), (3, 1));
    let session = run.finish().await;
    assert_eq!(desired(session.state()), 6);
    let history = store.history("dev").await.unwrap();
    let results: Vec<&str> = history.iter().filter_map(|e| e["apply"]["result"].as_str()).collect();
    assert_eq!(results, ["failed", "failed", "failed", "succeeded"], "the event's entry, then each retry");
    session.close().await.unwrap();
}

/// Every accepted event gets its audit entry: one that changes nothing at once (as
/// unchanged, with no apply to wait for); one that arrives while a failed apply waits
/// for its retry is applied at once, not at the retry.
#[tokio::test(start_paused = true)]
async fn an_accepted_event_is_audited_even_when_no_apply_follows() {
    let p = provider().fail("web", Op::Update, "throttled");
    let stack = events_stack(&p);
    let store = Arc::new(MemoryStore::new());
    let session = deployed(&stack, &store).await;
    let run = start(session, ReconcilerOptions::default().backoff(secs(60), secs(60)));

    let same = Event::new("capacity.set", json!({ "capacity": 2 })).with_id("same");
    assert_eq!(run.events.send(same).await.unwrap(), Outcome::Accepted);
    assert_eq!(run.events.send(spike(3000).with_id("failing")).await.unwrap(), Outcome::Accepted);
    sleep(secs(1)).await;
    // The retry is a minute away; a new event does not wait for it.
    assert_eq!(run.events.send(spike(4000).with_id("waiting")).await.unwrap(), Outcome::Accepted);
    let session = run.finish().await;

    let history = store.history("dev").await.unwrap();
    let entries: Vec<(&str, &str, &str)> = history
        .iter()
        .map(|e| (e["event"]["id"].as_str().unwrap(), e["outcome"].as_str().unwrap(), e["apply"]["result"].as_str().unwrap_or("-")))
        .collect();
    assert_eq!(entries, [("same", "accepted", "unchanged"), ("failing", "accepted", "failed"), ("waiting", "accepted", "failed")], "{history:#?}");
    assert_eq!(web_updates(&p).len(), 2);

    // One that changes nothing while a failed apply waits for its retry waits with it;
    // stopped before the retry, the reconciler still writes its entry, with no apply.
    let run = start(session, ReconcilerOptions::default().backoff(secs(60), secs(60)));
    sleep(secs(1)).await;
    let same_again = Event::new("capacity.set", json!({ "capacity": 8 })).with_id("same-again");
    assert_eq!(run.events.send(same_again).await.unwrap(), Outcome::Accepted);
    let session = run.finish().await;
    let history = store.history("dev").await.unwrap();
    let last = history.last().unwrap();
    assert_eq!((last["event"]["id"].as_str(), last["outcome"].as_str()), (Some("same-again"), Some("accepted")), "{last:#}");
    assert!(last["apply"].is_null(), "{last:#}");
    session.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_the_running_apply_and_leaves_unrecorded_events_to_their_source() {
    let p = provider().with_latency(secs(10));
    let stack = events_stack(&p);
    let store = Arc::new(MemoryStore::new());
    let session = deployed(&stack, &store).await;
    let run = start(session, ReconcilerOptions::default());

    let first = run.events.submit(spike(3000)).await.unwrap();
    sleep(secs(1)).await;
    let second = run.events.submit(spike(6000)).await.unwrap();
    let _ = run.stop.send(());
    let session = run.task.await.unwrap().unwrap();

    assert_eq!(first.recorded().await.unwrap(), Outcome::Accepted);
    assert_eq!(second.recorded().await, Err(EventsClosed), "the source must deliver it again");
    let stored = store.load("dev").await.unwrap().unwrap();
    assert_eq!(desired(&stored), 6, "the running apply finished and was recorded");
    assert!(stored.pending.is_empty());
    session.close().await.unwrap();
    assert!(store.lock_holder("dev").await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_redelivered_event_is_recognised_across_restarts_and_not_applied_twice() {
    let p = provider();
    let stack = events_stack(&p);
    let store = Arc::new(MemoryStore::new());
    let session = deployed(&stack, &store).await;
    let run = start(session, ReconcilerOptions::default());
    let event = spike(3000).with_id("sqs-message-1");
    assert_eq!(run.events.send(event.clone()).await.unwrap(), Outcome::Accepted);
    assert_eq!(run.events.send(event.clone()).await.unwrap(), Outcome::Duplicate);
    run.finish().await.close().await.unwrap();

    // A new watcher on the same state: the id is remembered.
    let session = stack.lock(store.clone(), "watch").await.unwrap();
    let run = start(session, ReconcilerOptions::default());
    assert_eq!(run.events.send(event).await.unwrap(), Outcome::Duplicate);
    let metrics = run.events.metrics().clone();
    run.finish().await.close().await.unwrap();
    assert_eq!(web_updates(&p).len(), 1);
    assert!(metrics.render().contains("cairn_events_deduplicated_total{kind=\"traffic.spike\"} 1"), "{}", metrics.render());
}

#[tokio::test(start_paused = true)]
async fn guards_and_failing_handlers_reject_an_event_which_then_changes_nothing() {
    let p = provider();
    let stack = events_stack(&p);
    let store = Arc::new(MemoryStore::new());
    let session = deployed(&stack, &store).await;
    let before = session.state().user_state.clone();
    let run = start(session, ReconcilerOptions::default());
    p.clear_calls();

    let too_many = run.events.send(Event::new("capacity.set", json!({"capacity": 20}))).await.unwrap();
    assert_eq!(too_many, Outcome::Rejected(Rejection::Guard { guard: "capacity at most 12".into(), message: "capacity 20 is above 12".into() }));
    let Outcome::Rejected(Rejection::Handler(why)) = run.events.send(Event::new("traffic.spike", json!({}))).await.unwrap() else {
        panic!("a handler error rejects the event")
    };
    assert!(why.contains("no field `rps`"), "{why}");
    assert_eq!(run.events.send(Event::new("unknown.kind", json!({}))).await.unwrap(), Outcome::Rejected(Rejection::Unhandled));
    let metrics = run.events.metrics().clone();
    let session = run.finish().await;

    assert!(p.calls().iter().all(|c| c.op == Op::Lookup || c.op == Op::Read), "no change reached the cloud: {:?}", p.calls());
    assert_eq!(session.state().user_state, before);
    assert_eq!(metrics.applies_of("succeeded"), 0);
    let history = store.history("dev").await.unwrap();
    let outcomes: Vec<&str> = history.iter().filter_map(|e| e["outcome"].as_str()).collect();
    assert_eq!(outcomes, ["rejected", "rejected", "unhandled"]);
    assert!(history[0]["reason"].as_str().unwrap().contains("guard 'capacity at most 12' refused it"));
    assert_eq!(history[0]["s_before"], history[0]["s_after"]);
    session.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_policy_rejects_only_the_events_whose_plan_breaks_it() {
    let p = provider().with_latency(secs(1));
    let stack = events_stack(&p).event_policy(EventPolicy::default().max_changes(Some(2)).deny_replace_or_delete("test:net:Network"));
    let store = Arc::new(MemoryStore::new());
    let session = deployed(&stack, &store).await;
    let run = start(session, ReconcilerOptions::default());

    let first = run.events.submit(spike(1500)).await.unwrap();
    sleep(Duration::from_millis(100)).await;
    // These three arrive during the first apply and are handled as one batch.
    let spike = run.events.submit(spike(3000)).await.unwrap();
    let moved = run.events.submit(Event::new("network.move", json!({"cidr": "10.9.0.0/16"}))).await.unwrap();
    let sale = run.events.submit(Event::new("sale.started", json!({}))).await.unwrap();
    assert_eq!(first.recorded().await.unwrap(), Outcome::Accepted);
    assert_eq!(spike.recorded().await.unwrap(), Outcome::Accepted);
    let Outcome::Rejected(Rejection::Policy(why)) = moved.recorded().await.unwrap() else { panic!("the network move is refused") };
    assert!(matches!(&why, PolicyViolation::Frozen { ty, action: Action::Replace, .. } if ty == "test:net:Network"), "{why:?}");
    assert!(why.to_string().contains("would replace test:net:Network 'shop'"), "{why}");
    let Outcome::Rejected(Rejection::Policy(why)) = sale.recorded().await.unwrap() else { panic!("the sale is too big") };
    assert!(matches!(why, PolicyViolation::TooManyChanges { changes, max: 2 } if changes > 2), "{why:?}");
    let session = run.finish().await;
    let shop: Shop = serde_json::from_value(session.state().user_state.clone()).unwrap();
    assert_eq!((shop.capacity, shop.network_cidr.as_str(), shop.flash_sale), (6, "10.0.0.0/16", false));
    assert_eq!(desired(session.state()), 6);
    session.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_storm_of_ten_thousand_events_is_all_recorded_in_a_handful_of_applies() {
    let p = provider().with_latency(Duration::from_millis(200));
    let stack = events_stack(&p);
    // A lease is also bounded by the wall clock, which paused time does not stop: this
    // test's 10,000 events take seconds of real time for little virtual time, so the
    // default lease's renewals (on virtual time) could fall behind it on a slow machine.
    let store = Arc::new(MemoryStore::new().with_lease(Duration::from_secs(3600)));
    let session = deployed(&stack, &store).await;
    let run = start(session, ReconcilerOptions::default());

    let producer = {
        let events = run.events.clone();
        tokio::spawn(async move {
            let mut receipts = Vec::with_capacity(10_000);
            for i in 0..10_000u32 {
                let rps = 1000 + (i % 10) * 500;
                receipts.push(events.submit(spike(rps).with_id(format!("storm-{i}"))).await.unwrap());
            }
            receipts
        })
    };
    let receipts = producer.await.unwrap();
    let mut accepted = 0;
    for r in receipts {
        if r.recorded().await.unwrap() == Outcome::Accepted {
            accepted += 1;
        }
    }
    assert_eq!(accepted, 10_000, "every event recorded, none lost");
    let metrics = run.events.metrics().clone();
    let session = run.finish().await;
    let applies = metrics.applies_of("succeeded");
    assert!((1..=20).contains(&applies), "{applies} applies for 10,000 events");
    assert_eq!(metrics.pending(), 0);
    let history = store.history("dev").await.unwrap();
    assert_eq!(history.iter().filter(|e| e["outcome"] == "accepted").count(), 10_000);
    // The last event (i = 9999: 5500 rps) decides the capacity.
    assert_eq!(desired(session.state()), 11);
    session.close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn async_handlers_run_in_order_with_sync_ones() {
    let p = provider();
    let stack = events_stack(&p).on_event_async("traffic.*", |e: &Event, s: &mut Shop| {
        Box::pin(async move {
            // Something slow, such as asking a metrics service, before deciding.
            sleep(Duration::from_millis(50)).await;
            if e.kind == "traffic.spike" {
                s.capacity += 1;
            }
            Ok(())
        })
    });
    let mut shop = Shop::new();
    stack.handle_event_async(&spike(3000), &mut shop).await.unwrap();
    assert_eq!(shop.capacity, 7, "the sync handler set 6, then the async one added 1");
    assert!(matches!(stack.handle_event(&spike(3000), &mut shop), Err(Rejection::Handler(m)) if m.contains("handle_event_async")));
    let store = Arc::new(MemoryStore::new());
    let session = deployed(&stack, &store).await;
    let run = start(session, ReconcilerOptions::default());
    assert_eq!(run.events.send(spike(1000)).await.unwrap(), Outcome::Accepted);
    let session = run.finish().await;
    assert_eq!(desired(session.state()), 3);
    session.close().await.unwrap();
}

/// Recording events is one journal line: the snapshot is not rewritten, yet the new user
/// state and the ids survive a crash, and the record is a new version of the state, so
/// a plan saved before it is refused.
#[tokio::test]
async fn recorded_events_are_journaled_survive_a_crash_and_make_a_saved_plan_stale() {
    let OnFiles { dir, store, stack, mut session } = deployed_on_files().await;
    let serial = session.state().serial;
    let saved = session.preview(&Shop { capacity: 3, ..Shop::new() }).unwrap();
    let snapshot = std::fs::read(dir.path().join("dev/state.json")).unwrap();

    let mut after = serde_json::to_value(Shop::new()).unwrap();
    after["capacity"] = json!(7);
    session.record_events(after.clone(), &["sqs-1".to_owned(), "sqs-2".to_owned()]).await.unwrap();
    assert_eq!(session.state().serial, serial + 1);
    assert_eq!(std::fs::read(dir.path().join("dev/state.json")).unwrap(), snapshot, "the snapshot is not rewritten");
    drop(session); // a crash: no close, the lock stays

    // Loading and opening replay the record, at the serial it was written with.
    assert_eq!(stack.load(&*store).await.unwrap().0.serial, serial + 1);
    store.force_unlock("dev").await.unwrap();
    let mut session = stack.lock(store.clone(), "up").await.unwrap();
    assert_eq!(session.state().serial, serial + 1);
    assert_eq!(session.state().user_state, after);
    assert!(session.state().processed_events.iter().eq(["sqs-1", "sqs-2"]));
    let err = session.apply(&saved).await.unwrap_err();
    assert!(matches!(err, cairn_sdk::Error::StalePlan { planned, current, .. } if planned == serial && current == serial + 1), "{err}");
    // The next apply folds the journal into its snapshot.
    assert!(session.up(&Shop { capacity: 7, ..Shop::new() }).await.unwrap().succeeded());
    assert_eq!(journal_records(&dir.path().join("dev/journal.jsonl")), "");
    session.close().await.unwrap();
    let loaded = store.load("dev").await.unwrap().unwrap();
    assert_eq!((loaded.serial, desired(&loaded)), (serial + 2, 7));
}

/// `watch` or `emit` whose events changed nothing to apply, then `preview --out` and
/// `up --plan`: the plan was made from the state the events left, so it applies.
#[tokio::test]
async fn a_plan_saved_after_a_session_that_only_recorded_events_applies() {
    let OnFiles { dir, store, stack, mut session } = deployed_on_files().await;
    let s = session.state().user_state.clone();
    session.record_events(s.clone(), &["dup-1".to_owned()]).await.unwrap();
    let serial = session.state().serial;
    session.close().await.unwrap();
    assert_eq!(journal_records(&dir.path().join("dev/journal.jsonl")), "", "closing folds the records");
    let loaded = store.load("dev").await.unwrap().unwrap();
    assert_eq!(loaded.serial, serial);
    assert!(loaded.processed_events.iter().any(|id| id == "dup-1"));

    let (state, _) = stack.load(&*store).await.unwrap();
    let saved = stack.preview(&Shop { capacity: 4, ..Shop::new() }, &state).unwrap();
    let mut session = stack.lock(store.clone(), "up").await.unwrap();
    assert!(session.apply(&saved).await.unwrap().succeeded(), "the saved plan is not stale");

    // The same after a crash, with the records still in the journal.
    session.record_events(session.state().user_state.clone(), &["dup-2".to_owned()]).await.unwrap();
    drop(session);
    store.force_unlock("dev").await.unwrap();
    let (state, _) = stack.load(&*store).await.unwrap();
    let saved = stack.preview(&Shop { capacity: 5, ..Shop::new() }, &state).unwrap();
    let mut session = stack.lock(store.clone(), "up").await.unwrap();
    assert!(session.apply(&saved).await.unwrap().succeeded(), "the saved plan is not stale after a crash either");
    session.close().await.unwrap();
}

/// On the file store, an event whose user state needs an apply has its record staged,
/// to share that apply's first fsync (the benchmark measures the saving): it must still
/// be on disk, before the step's begin, when the provider is asked to change anything.
/// An event that changes nothing to apply is written at once, and a batch's rejected
/// event is audited.
#[tokio::test]
async fn an_events_record_is_durable_with_its_applys_first_step_before_any_call_or_acknowledgement() {
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("dev/journal.jsonl");
    // What the journal held when the provider was asked to change the web group.
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let p = TestProvider::new("test").with_outputs({
        let (journal, seen) = (journal.clone(), seen.clone());
        move |urn, _| {
            if urn.name() == "web" {
                seen.lock().unwrap().push(journal_records(&journal));
            }
            let mut outputs = cairn_sdk::Props::new();
            outputs.insert("arn", json!(format!("arn:test:{}", urn.name())));
            outputs.insert("version", json!(1));
            outputs
        }
    });
    let store: Arc<dyn Store> = Arc::new(cairn_state::FileStore::new(dir.path()));
    let stack = events_stack(&p);
    let session = deployed_on(&stack, &store).await;
    seen.lock().unwrap().clear();
    let run = start(session, ReconcilerOptions::default());
    assert_eq!(run.events.send(spike(3000).with_id("spike-1")).await.unwrap(), Outcome::Accepted);
    assert_eq!(run.events.send(spike(3000).with_id("spike-2")).await.unwrap(), Outcome::Accepted, "same S: nothing to apply");
    let session = run.finish().await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "one update of web: {seen:?}");
    let lines: Vec<&str> = seen[0].lines().collect();
    assert!(lines.len() >= 2 && lines[0].contains("\"spike-1\"") && lines[1].contains("\"begin\""), "{lines:#?}");

    // A batch's rejected event is audited too, once the record naming it is durable.
    let (mut reconciler, _events) = Reconciler::new(session, ReconcilerOptions::default()).unwrap();
    let too_big = Event::new("capacity.set", json!({ "capacity": 20 })).with_id("too-big");
    let outcomes = reconciler.process(vec![spike(4000).with_id("spike-3"), too_big]).await.unwrap();
    assert!(matches!(outcomes[..], [Outcome::Accepted, Outcome::Rejected(_)]), "{outcomes:?}");
    let history = store.history("dev").await.unwrap();
    let outcome_of = |id: &str| history.iter().rev().find(|e| e["event"]["id"] == id).map(|e| e["outcome"].clone());
    assert_eq!((outcome_of("spike-3"), outcome_of("too-big")), (Some(json!("accepted")), Some(json!("rejected"))));
    reconciler.into_session().close().await.unwrap();
    let stored = store.load("dev").await.unwrap().unwrap();
    assert!(stored.processed_events.iter().eq(["spike-1", "spike-2", "spike-3", "too-big"]));
    assert_eq!(desired(&stored), 8);
}

/// An event whose record cannot be written (here another holder took the lock after the
/// reconciler started) is never acknowledged: its sender sees it unrecorded, so its
/// source delivers it again, and the reconciler stops with the error, having changed
/// nothing.
#[tokio::test]
async fn an_event_whose_record_cannot_be_written_is_never_acknowledged() {
    let OnFiles { dir, store, stack: _, session } = deployed_on_files().await;
    let before = store.load("dev").await.unwrap().unwrap();
    let run = start(session, ReconcilerOptions::default());
    let lock = dir.path().join("dev/lock.json");
    let mut other: serde_json::Value = serde_json::from_slice(&std::fs::read(&lock).unwrap()).unwrap();
    other["token"] = json!("someone-else");
    std::fs::write(&lock, serde_json::to_vec(&other).unwrap()).unwrap();

    assert_eq!(run.events.send(spike(3000).with_id("unrecorded")).await, Err(EventsClosed));
    let err = run.task.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("lock"), "{err}");
    let stored = store.load("dev").await.unwrap().unwrap();
    assert!(!stored.processed_events.iter().any(|id| id == "unrecorded"));
    assert_eq!((stored.serial, desired(&stored)), (before.serial, desired(&before)));
}

/// A staged event record is durable only once written: flushed, it is; dropped with its
/// session (a crash) before any write, it never was, so its events were never
/// acknowledged and their sources deliver them again.
#[tokio::test]
async fn a_staged_event_record_is_acknowledged_only_once_written() {
    let OnFiles { dir, store, stack, mut session } = deployed_on_files().await;
    let journal = dir.path().join("dev/journal.jsonl");
    let mut s = session.state().user_state.clone();
    s["capacity"] = json!(5);
    let durable = session.stage_events(s.clone(), &["flushed".to_owned()]).await.unwrap();
    assert!(!journal_records(&journal).contains("flushed"), "staged, not yet written");
    session.flush().await.unwrap();
    durable.await.unwrap();
    assert!(journal_records(&journal).contains("flushed"));

    session.close().await.unwrap();
    // Staged by a session that has written nothing yet, so no write under way takes it.
    let mut session = stack.lock(store.clone(), "watch").await.unwrap();
    s["capacity"] = json!(6);
    let durable = session.stage_events(s, &["lost".to_owned()]).await.unwrap();
    drop(session); // a crash: no flush, no close
    let err = durable.await.unwrap_err();
    assert!(err.to_string().contains("closed before the record was written"), "{err}");
    let stored = store.load("dev").await.unwrap().unwrap();
    assert!(stored.processed_events.iter().eq(["flushed"]));
    assert_eq!(stored.user_state["capacity"], json!(5));
}

/// Events that never lead to an apply (duplicates, rejections) still must not grow the
/// journal without end: every 1,000 records it is folded into a snapshot.
#[tokio::test]
async fn a_thousand_event_records_without_an_apply_are_folded_into_a_snapshot() {
    let OnFiles { dir, store, stack: _, mut session } = deployed_on_files().await;
    let s = session.state().user_state.clone();
    let journal = dir.path().join("dev/journal.jsonl");
    for i in 0..999 {
        session.record_events(s.clone(), &[format!("id-{i}")]).await.unwrap();
    }
    assert_eq!(journal_records(&journal).lines().count(), 999);
    session.record_events(s.clone(), &["id-999".to_owned()]).await.unwrap();
    assert_eq!(journal_records(&journal), "", "folded into the snapshot");
    let serial = session.state().serial;
    session.close().await.unwrap();
    let loaded = store.load("dev").await.unwrap().unwrap();
    assert_eq!(loaded.serial, serial);
    assert_eq!(loaded.processed_events.len(), 1000);
}

/// `watch` runs its reconciler on a thread of its own: handlers run there, events sent
/// from this runtime are recorded and applied, and shutdown gives the session back.
#[tokio::test]
async fn a_spawned_reconciler_runs_on_its_own_thread_and_gives_the_session_back() {
    let p = provider();
    let threads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = threads.clone();
    let stack = events_stack(&p).on_event("traffic.spike", move |_: &Event, _: &mut Shop| {
        seen.lock().unwrap().push(std::thread::current().name().map(str::to_owned));
        Ok(())
    });
    let store = Arc::new(MemoryStore::new());
    let session = deployed(&stack, &store).await;
    let (reconciler, events) = Reconciler::new(session, ReconcilerOptions::default()).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut stopped = stopped.clone();
    let running = reconciler.spawn(async move {
        let _ = stopped.wait_for(|s| *s).await;
    });
    assert_eq!(events.send(spike(3000)).await.unwrap(), Outcome::Accepted);
    assert_eq!(events.send(spike(5000)).await.unwrap(), Outcome::Accepted);
    stop.send(true).unwrap();
    let session = running.finished().await.unwrap();
    assert_eq!(desired(session.state()), 10, "both events applied before it stopped");
    session.close().await.unwrap();
    assert_eq!(*threads.lock().unwrap(), vec![Some("cairn-reconciler-dev".to_owned()); 2]);
    assert!(events.send(spike(1000)).await.is_err(), "a stopped reconciler takes no events");
}

/// A provider whose calls start a task on the runtime they run on, as an HTTP client
/// starts the task that drives a pooled connection; the task answers pings.
#[derive(Clone, Debug, Default)]
struct ConnectionProvider {
    ping: Arc<std::sync::Mutex<Option<tokio::sync::mpsc::Sender<oneshot::Sender<()>>>>>,
    /// Resolves (with an error) once the last task started is gone.
    gone: Arc<std::sync::Mutex<Option<oneshot::Receiver<()>>>>,
}

impl ConnectionProvider {
    fn connect(&self) {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<oneshot::Sender<()>>(1);
        let (alive, gone) = oneshot::channel::<()>();
        *self.gone.lock().unwrap() = Some(gone);
        tokio::spawn(async move {
            let _alive = alive;
            while let Some(pong) = rx.recv().await {
                let _ = pong.send(());
            }
        });
        *self.ping.lock().unwrap() = Some(tx);
    }

    /// Whether the connection's task still answers.
    async fn alive(&self) -> bool {
        let Some(ping) = self.ping.lock().unwrap().clone() else { return false };
        let (pong, answered) = oneshot::channel();
        ping.send(pong).await.is_ok() && answered.await.is_ok()
    }
}

#[async_trait::async_trait]
impl cairn_sdk::Provider for ConnectionProvider {
    fn package(&self) -> &str {
        "test"
    }
    async fn create(&self, _: &cairn_sdk::Urn, inputs: &cairn_sdk::Props) -> Result<cairn_sdk::Observed, cairn_sdk::ProviderError> {
        self.connect();
        Ok(cairn_sdk::Observed { id: "q-1".into(), inputs: inputs.clone(), outputs: Default::default() })
    }
    async fn read(&self, _: &cairn_sdk::Urn, _: &str, _: &cairn_sdk::Props, _: &cairn_sdk::Props) -> Result<Option<cairn_sdk::Observed>, cairn_sdk::ProviderError> {
        Ok(None)
    }
    async fn update(&self, _: &cairn_sdk::Urn, id: &str, _: &cairn_sdk::Props, new: &cairn_sdk::Props) -> Result<cairn_sdk::Observed, cairn_sdk::ProviderError> {
        self.connect();
        Ok(cairn_sdk::Observed { id: id.into(), inputs: new.clone(), outputs: Default::default() })
    }
    async fn delete(&self, _: &cairn_sdk::Urn, _: &str, _: &cairn_sdk::Props, _: &cairn_sdk::Props) -> Result<(), cairn_sdk::ProviderError> {
        Ok(())
    }
    async fn lookup(&self, _: &cairn_sdk::Urn, _: &cairn_sdk::Props) -> Result<Vec<cairn_sdk::Observed>, cairn_sdk::ProviderError> {
        Ok(Vec::new())
    }
}

/// What a spawned reconciler's clients started on its runtime (the tasks behind their
/// connections) keeps running after it stops, until the session it gave back is gone:
/// closing the session (an S3 unlock) may need them.
#[tokio::test]
async fn a_spawned_reconcilers_runtime_outlives_it_until_its_session_is_dropped() {
    let cloud = ConnectionProvider::default();
    let stack = Stack::<u32>::new("dev")
        .provider(cloud.clone())
        .program(|cx, n| {
            cx.add(common::Queue::new("orders").visibility_timeout(*n));
            Ok(())
        })
        .on_event("tune", |e: &Event, n: &mut u32| {
            *n = e.field("n")?;
            Ok(())
        });
    let mut session = stack.lock(Arc::new(MemoryStore::new()), "watch").await.unwrap();
    assert!(session.up(&30).await.unwrap().succeeded());
    let (reconciler, events) = Reconciler::new(session, ReconcilerOptions::default()).unwrap();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut stopped = stopped.clone();
    let running = reconciler.spawn(async move {
        let _ = stopped.wait_for(|s| *s).await;
    });
    assert_eq!(events.send(Event::new("tune", json!({ "n": 60 }))).await.unwrap(), Outcome::Accepted);
    stop.send(true).unwrap();
    let session = running.finished().await.unwrap();
    assert_eq!(session.state().resources[0].inputs.get("visibility_timeout"), Some(&json!(60)), "applied on the reconciler's runtime");
    assert!(cloud.alive().await, "the task the update started still runs");
    session.close().await.unwrap();
    let gone = cloud.gone.lock().unwrap().take().unwrap();
    // A bound, not a timing: the thread ends its runtime as soon as it is told.
    tokio::time::timeout(Duration::from_secs(30), gone).await.expect("the runtime stops once the session is gone").unwrap_err();
    assert!(!cloud.alive().await);
}

// --- User code that panics -----------------------------------------------------------

/// The history entry of the event with `kind`.
async fn entry_of(store: &MemoryStore, kind: &str) -> serde_json::Value {
    let history = store.history("dev").await.unwrap();
    history.into_iter().find(|e| e["event"]["kind"] == kind).unwrap_or_else(|| panic!("no entry for {kind}"))
}

/// A handler that panics (sync, or async between two polls) rejects its event like one
/// that fails: recorded, counted, `S` unchanged; the reconciler serves the next event.
#[tokio::test(start_paused = true)]
async fn a_panicking_handler_rejects_its_event_and_the_reconciler_keeps_serving() {
    let p = provider();
    let stack = events_stack(&p)
        .on_event("handler.panics", |_: &Event, s: &mut Shop| {
            s.capacity = 11; // half-done: must not stick
            panic!("handler exploded");
        })
        .on_event_async("async.panics", |_: &Event, s: &mut Shop| {
            Box::pin(async move {
                s.capacity = 9;
                tokio::task::yield_now().await;
                panic!("async handler exploded after {}", s.capacity);
            })
        });
    let store = Arc::new(MemoryStore::new());
    let session = deployed(&stack, &store).await;
    let run = start(session, ReconcilerOptions::default());

    let Outcome::Rejected(Rejection::Handler(why)) = run.events.send(Event::new("handler.panics", json!({}))).await.unwrap() else {
        panic!("the panicking handler's event is rejected")
    };
    assert_eq!(why, "handler panicked: handler exploded");
    let Outcome::Rejected(Rejection::Handler(why)) = run.events.send(Event::new("async.panics", json!({}))).await.unwrap() else {
        panic!("the panicking async handler's event is rejected")
    };
    assert_eq!(why, "handler panicked: async handler exploded after 9");
    assert!(!run.task.is_finished(), "the reconciler still runs");
    assert_eq!(run.events.send(spike(3000)).await.unwrap(), Outcome::Accepted);

    let metrics = run.events.metrics().clone();
    let session = run.finish().await;
    assert_eq!(desired(session.state()), 6, "the later event was applied");
    let shop: Shop = serde_json::from_value(session.state().user_state.clone()).unwrap();
    assert_eq!(shop.capacity, 6, "what the panicking handlers set was dropped");
    assert!(metrics.render().contains("cairn_events_rejected_total{kind=\"handler.panics\"} 1"));
    assert!(metrics.render().contains("cairn_events_rejected_total{kind=\"async.panics\"} 1"));
    session.close().await.unwrap();

    let entry = entry_of(&store, "handler.panics").await;
    assert_eq!(entry["outcome"], "rejected");
    assert_eq!(entry["reason"], "a handler failed: handler panicked: handler exploded");
    assert_eq!(entry["s_before"], entry["s_after"]);
    // The lock was released by close: the stack opens again.
    stack.lock(store.clone(), "up").await.unwrap().close().await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_panicking_guard_rejects_its_event_and_the_reconciler_keeps_serving() {
    let p = provider();
    let stack = events_stack(&p).guard("seven is unlucky", |s: &Shop| {
        assert_ne!(s.capacity, 7, "guard exploded");
        Ok(())
    });
    let store = Arc::new(MemoryStore::new());
    let session = deployed(&stack, &store).await;
    let run = start(session, ReconcilerOptions::default());

    let set = |n: u32| Event::new("capacity.set", json!({ "capacity": n }));
    let Outcome::Rejected(Rejection::Guard { guard, message }) = run.events.send(set(7)).await.unwrap() else {
        panic!("the event the guard panics on is rejected")
    };
    assert_eq!(guard, "seven is unlucky");
    assert!(message.starts_with("guard panicked: assertion `left != right` failed: guard exploded"), "{message}");
    assert!(!run.task.is_finished(), "the reconciler still runs");
    assert_eq!(run.events.send(set(5)).await.unwrap(), Outcome::Accepted);

    let metrics = run.events.metrics().clone();
    let session = run.finish().await;
    assert_eq!(desired(session.state()), 5);
    assert!(metrics.render().contains("cairn_events_rejected_total{kind=\"capacity.set\"} 1"));
    session.close().await.unwrap();
    let entry = entry_of(&store, "capacity.set").await;
    assert_eq!(entry["outcome"], "rejected");
    assert!(entry["reason"].as_str().unwrap().contains("guard panicked"), "{entry}");
    assert_eq!(entry["s_before"], entry["s_after"]);
    stack.lock(store.clone(), "up").await.unwrap().close().await.unwrap();
}

/// A program that panics is an ordinary error: for an event whose `S` it panics on, the
/// event is rejected (its plan cannot be made, as for a program that returns an error);
/// when it panics whatever `S` is, the apply fails, is retried, and converges once the
/// program renders again; `up` fails with the panic's message. The reconciler, and the
/// lock, survive all of it.
#[tokio::test(start_paused = true)]
async fn a_panicking_program_fails_the_apply_and_later_events_still_work() {
    use std::sync::atomic::{AtomicBool, Ordering};
    static BROKEN: AtomicBool = AtomicBool::new(false);
    let p = provider();
    let stack = events_stack(&p).program(|cx, s: &Shop| {
        assert!(s.capacity != 9, "program exploded at 9");
        if BROKEN.load(Ordering::SeqCst) {
            panic!("program broken");
        }
        common::shop_program(cx, s)
    });
    let store = Arc::new(MemoryStore::new());
    let session = deployed(&stack, &store).await;
    let run = start(session, ReconcilerOptions::default().backoff(secs(1), secs(60)));
    let set = |n: u32| Event::new("capacity.set", json!({ "capacity": n }));

    // Panics for the event's S only: the event is rejected, the stack stays as it was.
    let Outcome::Rejected(Rejection::Unplannable(why)) = run.events.send(set(9)).await.unwrap() else {
        panic!("an event whose S the program panics on is rejected")
    };
    assert!(why.contains("the program panicked: program exploded at 9"), "{why}");
    assert_eq!(run.events.send(set(4)).await.unwrap(), Outcome::Accepted);
    sleep(secs(1)).await;
    assert_eq!(desired(&store.load("dev").await.unwrap().unwrap()), 4);

    // Panics for every S: the event is recorded, its apply fails and is retried.
    BROKEN.store(true, Ordering::SeqCst);
    assert_eq!(run.events.send(set(5)).await.unwrap(), Outcome::Accepted);
    sleep(Duration::from_millis(500)).await;
    let metrics = run.events.metrics().clone();
    assert_eq!(metrics.applies_of("failed"), 1);
    let history = store.history("dev").await.unwrap();
    let failed = history.iter().find(|e| e["apply"]["result"] == "failed").unwrap_or_else(|| panic!("{history:#?}"));
    assert_eq!(failed["event"]["kind"], "capacity.set");
    assert!(failed["apply"]["error"].as_str().unwrap().contains("the program panicked: program broken"), "{failed}");
    BROKEN.store(false, Ordering::SeqCst);
    sleep(secs(2)).await;
    assert_eq!(metrics.applies_of("failed"), 1);
    assert_eq!(desired(&store.load("dev").await.unwrap().unwrap()), 5, "the retry converged");
    assert!(!run.task.is_finished(), "the reconciler still runs");
    assert_eq!(run.events.send(set(3)).await.unwrap(), Outcome::Accepted);

    let mut session = run.finish().await;
    assert_eq!(desired(session.state()), 3);
    // `up` of an S the program panics on: an error, and the session goes on.
    let err = session.up(&Shop { capacity: 9, ..Shop::new() }).await.unwrap_err();
    assert!(matches!(&err, cairn_sdk::Error::Program { .. }), "{err}");
    assert!(err.to_string().contains("the program panicked: program exploded at 9"), "{err}");
    assert!(session.up(&Shop { capacity: 2, ..Shop::new() }).await.unwrap().succeeded());
    session.close().await.unwrap();
    stack.lock(store.clone(), "up").await.unwrap().close().await.unwrap();
}

/// A session a panic unwinds through releases the stack's lock on the way out (a session
/// merely dropped keeps it: that is a crash).
#[test]
fn a_panic_that_unwinds_through_a_session_releases_its_lock() {
    let dir = tempfile::tempdir().unwrap();
    let stores: [Arc<dyn Store>; 2] = [Arc::new(MemoryStore::new()), Arc::new(cairn_state::FileStore::new(dir.path()))];
    for store in stores {
        let stack = shop_stack(&provider());
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            runtime.block_on(async {
                let session = stack.lock(store.clone(), "up").await.unwrap();
                assert!(store.lock_holder("dev").await.unwrap().is_some());
                panic!("a bug while {} holds the lock", session.state().stack);
            })
        }));
        assert!(unwound.is_err());
        runtime.block_on(async {
            assert_eq!(store.lock_holder("dev").await.unwrap(), None, "{store:?}");
            let session = stack.lock(store.clone(), "up").await.expect("the stack opens again");
            drop(session);
            assert!(store.lock_holder("dev").await.unwrap().is_some(), "a plain drop keeps the lock");
        });
    }
}

/// A step progress reporter that panics when an update starts: user code the apply runs.
#[derive(Debug)]
struct PanicsOnUpdate;

impl cairn_sdk::Progress for PanicsOnUpdate {
    fn started(&self, _: &cairn_sdk::Urn, op: cairn_sdk::StepOp) {
        assert!(op != cairn_sdk::StepOp::Update, "progress exploded");
    }
}

/// A panic the reconciler cannot turn into an error (here, in the middle of an apply)
/// stops its thread, and the lock is released as the thread unwinds: the stack opens
/// again, with the event that was recorded before.
#[tokio::test]
async fn a_spawned_reconciler_whose_thread_panics_releases_the_lock() {
    let p = provider();
    let stack = events_stack(&p).progress(PanicsOnUpdate);
    let store = Arc::new(MemoryStore::new());
    let session = deployed(&stack, &store).await;
    let (reconciler, events) = Reconciler::new(session, ReconcilerOptions::default()).unwrap();
    let running = reconciler.spawn(std::future::pending());
    assert_eq!(events.send(spike(3000)).await.unwrap(), Outcome::Accepted, "recorded before its apply");
    let err = running.finished().await.unwrap_err();
    assert!(matches!(&err, cairn_sdk::Error::ReconcilerStopped { cause, .. } if cause.contains("panicked")), "{err}");
    assert_eq!(store.lock_holder("dev").await.unwrap(), None);
    let mut session = events_stack(&p).lock(store.clone(), "up").await.expect("the stack opens again");
    let shop = session.user_state().unwrap();
    assert_eq!(shop.capacity, 6);
    assert!(session.up(&shop).await.unwrap().succeeded());
    assert_eq!(desired(session.state()), 6);
    session.close().await.unwrap();
}

/// An event whose `process` is cancelled in its async handler (a timeout around a slow
/// one) was never recorded: delivered again, it is handled as new, not dropped as a
/// duplicate of itself.
#[tokio::test(start_paused = true)]
async fn an_event_cut_off_in_its_async_handler_is_new_when_delivered_again() {
    let p = provider();
    let slow = std::sync::atomic::AtomicBool::new(true);
    let stack = events_stack(&p).on_event_async("capacity.ask", move |_: &Event, s: &mut Shop| {
        let slow = slow.swap(false, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async move {
            // Asking a metrics service that does not answer the first time.
            if slow {
                sleep(secs(60)).await;
            }
            s.capacity = 5;
            Ok(())
        })
    });
    let store = Arc::new(MemoryStore::new());
    let (mut reconciler, _events) = Reconciler::new(deployed(&stack, &store).await, ReconcilerOptions::default()).unwrap();
    let ask = Event::new("capacity.ask", json!({})).with_id("ask-1");
    assert!(timeout(secs(1), reconciler.process(vec![ask.clone()])).await.is_err(), "the handler was not cut off");

    assert_eq!(reconciler.process(vec![ask]).await.unwrap(), [Outcome::Accepted]);
    assert_eq!(reconciler.user_state().capacity, 5);
    assert!(reconciler.into_session().state().processed_events.iter().any(|id| id == "ask-1"));
}
