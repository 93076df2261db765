//! Regression tests for recovery and sessions: each guards a failure found in review.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cairn_sdk::events::{Event, Outcome, Reconciler, ReconcilerOptions};
use cairn_sdk::recover::resolve_pending;
use cairn_sdk::schema::{Property, ResourceType};
use cairn_sdk::{DynamicResource, Error, Recovery, ResourceExt, Stack, StackState, StepOp, StepStatus, Urn};
use cairn_state::{Journal, JournalRecord, Lock, LockInfo, MemoryStore, PendingOperation, StateError, Store};
use common::*;

/// A store whose next commit fails, once, while `fail` is set; whose commits, while
/// `slow` is, take a second on a task of their own (as the file store's run on a
/// blocking thread: to their end, even if the caller stops waiting), noting in
/// `overlapped` if two were ever under way at once; and whose journal, while
/// `fail_read_back` is set, refuses the record that an incomplete create needs reading
/// back, and, if `slow_answers` was set when it was opened, answers each record a
/// second after writing it.
#[derive(Debug, Clone, Default)]
struct FaultyStore {
    inner: MemoryStore,
    fail: Arc<AtomicBool>,
    slow: Arc<AtomicBool>,
    committing: Arc<AtomicUsize>,
    overlapped: Arc<AtomicBool>,
    fail_read_back: Arc<AtomicBool>,
    slow_answers: Arc<AtomicBool>,
    /// Lock attempts to refuse with a service error, from now on.
    fail_locks: Arc<AtomicUsize>,
}

#[derive(Debug)]
struct FailingReadBack(Arc<dyn Journal>);

#[async_trait]
impl Journal for FailingReadBack {
    async fn record(&self, record: JournalRecord) -> Result<(), StateError> {
        if let JournalRecord::Begin { op: PendingOperation { kind: StepOp::Update, .. }, .. } = &record {
            return Err(StateError::Remote("disk full".into()));
        }
        self.0.record(record).await
    }
}

/// A journal that answers each record a second after it is written.
#[derive(Debug)]
struct SlowAnswers(Arc<dyn Journal>);

#[async_trait]
impl Journal for SlowAnswers {
    async fn record(&self, record: JournalRecord) -> Result<(), StateError> {
        self.0.record(record).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(())
    }
}

#[async_trait]
impl Store for FaultyStore {
    fn location(&self) -> String {
        self.inner.location()
    }
    async fn load(&self, stack: &str) -> Result<Option<StackState>, StateError> {
        self.inner.load(stack).await
    }
    async fn lock(&self, stack: &str, operation: &str) -> Result<Lock, StateError> {
        if self.fail_locks.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
            return Err(StateError::Remote("service unavailable".into()));
        }
        self.inner.lock(stack, operation).await
    }
    async fn renew(&self, lock: &Lock) -> Result<(), StateError> {
        self.inner.renew(lock).await
    }
    async fn unlock(&self, lock: Lock) -> Result<(), StateError> {
        self.inner.unlock(lock).await
    }
    async fn force_unlock(&self, stack: &str) -> Result<Option<LockInfo>, StateError> {
        self.inner.force_unlock(stack).await
    }
    async fn lock_holder(&self, stack: &str) -> Result<Option<LockInfo>, StateError> {
        self.inner.lock_holder(stack).await
    }
    async fn stacks(&self) -> Result<Vec<String>, StateError> {
        self.inner.stacks().await
    }
    async fn journal(&self, lock: &Lock) -> Result<Arc<dyn Journal>, StateError> {
        let journal = self.inner.journal(lock).await?;
        Ok(if self.fail_read_back.load(Ordering::SeqCst) {
            Arc::new(FailingReadBack(journal))
        } else if self.slow_answers.load(Ordering::SeqCst) {
            Arc::new(SlowAnswers(journal))
        } else {
            journal
        })
    }
    async fn commit(&self, lock: &Lock, state: &StackState) -> Result<(), StateError> {
        if self.fail.swap(false, Ordering::SeqCst) {
            return Err(StateError::Remote("disk full".into()));
        }
        if self.slow.load(Ordering::SeqCst) {
            let (store, lock, state) = (self.clone(), lock.clone(), state.clone());
            let commit = async move {
                if store.committing.fetch_add(1, Ordering::SeqCst) > 0 {
                    store.overlapped.store(true, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                let committed = store.inner.commit(&lock, &state).await;
                store.committing.fetch_sub(1, Ordering::SeqCst);
                committed
            };
            return tokio::spawn(commit).await.unwrap();
        }
        self.inner.commit(lock, state).await
    }
    async fn audit(&self, stack: &str, entries: &[serde_json::Value]) -> Result<(), StateError> {
        self.inner.audit(stack, entries).await
    }
    async fn history(&self, stack: &str) -> Result<Vec<serde_json::Value>, StateError> {
        self.inner.history(stack).await
    }
}

#[tokio::test]
async fn a_failed_commit_never_leads_to_creating_resources_twice() {
    let cloud = provider();
    let stack = Stack::<()>::new("dev").provider(cloud.clone()).program(|cx, _| {
        cx.add(Queue::new("orders"));
        Ok(())
    });
    let store = FaultyStore::default();
    let mut session = stack.lock(Arc::new(store.clone()), "up").await.unwrap();
    store.fail.store(true, Ordering::SeqCst);
    let err = session.up(&()).await.unwrap_err();
    assert!(err.to_string().contains("disk full"), "{err}");
    // The session will not plan from a state the store does not have.
    let again = session.up(&()).await.unwrap_err();
    assert!(matches!(again, Error::SessionBroken { .. }), "{again}");
    session.close().await.unwrap();

    // Reopened, the journal has the create: nothing to do, nothing created twice.
    let session = stack.lock(Arc::new(store.clone()), "up").await.unwrap();
    assert!(!session.preview(&()).unwrap().has_changes());
    assert_eq!(cloud.resources().len(), 1);
    session.close().await.unwrap();
}

#[tokio::test]
async fn a_replacement_found_unnecessary_keeps_its_physical_name() {
    // `value` forces replacement and comes from an output that may change on update;
    // the planner names a new copy, but the value does not change after all.
    static NAMED: ResourceType = ResourceType::new(
        "test:misc:Named",
        &[Property::input("name").auto_name().forces_replacement(), Property::input("value").forces_replacement()],
    );
    let cloud = provider();
    let stack = Stack::<u32>::new("dev").provider(cloud.clone()).program(|cx, desired| {
        let web = cx.add(Group::new("web").subnets(["s-1"]).image("img").capacity(1, *desired, 12));
        cx.add(DynamicResource::new(&NAMED, "named").set("value", web.version()));
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let state = session.up(&1).await.unwrap().state;
    let urn = Urn::new("dev", "test:misc:Named", "named");
    let name = state.resource(&urn).unwrap().inputs.get("name").cloned();

    let plan = session.preview(&2).unwrap();
    let change = plan.changes.iter().find(|c| c.urn == urn).unwrap();
    assert!(change.may_replace && change.generated_names == ["name"]);
    cloud.clear_calls();
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded());
    assert_eq!(cloud.calls_of(Op::Update), ["web"], "no rename of `named` in place");
    assert_eq!(report.state.resource(&urn).unwrap().inputs.get("name").cloned(), name);
}

#[tokio::test]
async fn an_adopted_resource_keeps_its_options_and_dependencies() {
    let cloud = provider().lose_response("orders", Op::Create);
    let stack = Stack::<()>::new("dev").provider(cloud.clone()).program(|cx, _| {
        let dlq = cx.add(Queue::new("dlq"));
        cx.add(Queue::new("orders").dead_letter_arn(dlq.arn()).protect().retain_on_delete());
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    assert_eq!(report.state.pending.len(), 1, "the create may have happened: it is pending");

    let (settled, recovered) = resolve_pending(&report.state, stack.providers()).await.unwrap();
    assert!(matches!(&recovered[..], [Recovery::Adopted { urn, .. }] if urn.name() == "orders"));
    let orders = settled.resource(&Urn::new("dev", "test:queue:Queue", "orders")).unwrap();
    assert!(orders.options.protect && orders.options.retain_on_delete);
    assert_eq!(orders.dependencies, [Urn::new("dev", "test:queue:Queue", "dlq")]);
    assert!(matches!(stack.preview_destroy(&settled), Err(Error::Protected(_))), "still protected");
    assert_eq!(cloud.resources().len(), 2, "adopted, not created again");
}

/// One queue, `orders`, on a provider with `window` as its landing window whose first
/// create of it takes effect but loses its answer (the create is left pending).
fn late_stack(window: Duration) -> (TestProvider, Stack<()>) {
    let cloud = provider().with_landing_window(window).lose_response("orders", Op::Create);
    let stack = Stack::<()>::new("dev").provider(cloud.clone()).program(|cx, _| {
        cx.add(Queue::new("orders"));
        Ok(())
    });
    (cloud, stack)
}

/// Takes back the one resource `cloud` holds (its create had not landed yet) and makes
/// it again `after` from now (it lands late), answering its new id.
fn land_later(cloud: &TestProvider, after: Duration) -> (Urn, tokio::task::JoinHandle<String>) {
    use cairn_sdk::Provider as _;
    let [sent] = &cloud.resources()[..] else { panic!("one create") };
    cloud.remove(&sent.id);
    let (cloud, urn, inputs) = (cloud.clone(), sent.urn.clone(), sent.inputs.clone());
    let task = tokio::spawn({
        let urn = urn.clone();
        async move {
            tokio::time::sleep(after).await;
            cloud.create(&urn, &inputs).await.unwrap().id
        }
    });
    (urn, task)
}

/// A create the dead process sent can land after it died. Opening the stack does not
/// find it at first; it looks again after the provider's landing window, and adopts it
/// instead of making a second copy that state would never know.
#[tokio::test(start_paused = true)]
async fn a_create_that_lands_after_its_process_died_is_adopted_not_made_again() {
    let window = Duration::from_secs(5);
    let (cloud, stack) = late_stack(window);
    let store = Arc::new(MemoryStore::new());
    let mut session = stack.lock(store.clone(), "up").await.unwrap();
    assert_eq!(session.up(&()).await.unwrap().state.pending.len(), 1);
    drop(session); // the process dies, its create pending and its lock held

    // Its call had not reached the cloud yet: it does 2 s later.
    let (urn, late) = land_later(&cloud, Duration::from_secs(2));
    store.force_unlock("dev").await.unwrap();
    let opened = tokio::time::Instant::now();
    let mut session = stack.lock(store.clone(), "up").await.unwrap();
    assert!(opened.elapsed() >= window, "settling waited out the window");
    let late = late.await.unwrap();
    assert_eq!(session.recovered(), [Recovery::Adopted { urn: urn.clone(), id: late.clone(), duplicates: Vec::new() }]);

    let report = session.up(&()).await.unwrap();
    assert!(report.succeeded() && report.steps.is_empty(), "nothing to create: {:?}", report.steps);
    assert_eq!(cloud.resources().iter().map(|r| r.id.clone()).collect::<Vec<_>>(), [late]);
    session.close().await.unwrap();
}

/// The same within the session that saw the create end uncertainly (a connection
/// reset after the request went out): the next operation's settling waits out the rest
/// of the window after that apply before it concludes the create never happened.
#[tokio::test(start_paused = true)]
async fn a_create_whose_connection_was_lost_is_looked_for_again_until_the_window_ends() {
    let window = Duration::from_secs(5);
    let (cloud, stack) = late_stack(window);
    let mut session = stack.in_memory_session().await.unwrap();
    assert_eq!(session.up(&()).await.unwrap().state.pending.len(), 1);
    let ended = tokio::time::Instant::now();
    // Not there yet: it lands 3 s after the apply ended.
    let (urn, late) = land_later(&cloud, Duration::from_secs(3));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let recovered = session.settle().await.unwrap().to_vec();
    let waited = ended.elapsed();
    assert!(waited >= window && waited < window + Duration::from_millis(100), "it waited the rest of the window, no more: {waited:?}");
    let late = late.await.unwrap();
    assert_eq!(recovered, [Recovery::Adopted { urn, id: late, duplicates: Vec::new() }]);
    let report = session.up(&()).await.unwrap();
    assert!(report.succeeded() && report.steps.is_empty(), "{:?}", report.steps);
    assert_eq!(cloud.resources().len(), 1);
}

/// A cloud whose listing cannot show what a create made (an SNS subscription not yet
/// confirmed has no ARN in it) until the look-up that settles under the lock asks in a
/// way that may write ([`cairn_sdk::Provider::lookup_created`]); counts those.
#[derive(Debug, Clone)]
struct ShownOnlyWhenAsked {
    cloud: TestProvider,
    asked: Arc<AtomicUsize>,
}

#[async_trait]
impl cairn_sdk::Provider for ShownOnlyWhenAsked {
    fn package(&self) -> &str {
        self.cloud.package()
    }
    fn landing_window(&self) -> Duration {
        self.cloud.landing_window()
    }
    async fn create(&self, urn: &Urn, inputs: &cairn_sdk::Props) -> Result<cairn_sdk::Observed, cairn_sdk::ProviderError> {
        self.cloud.create(urn, inputs).await
    }
    async fn read(&self, urn: &Urn, id: &str, inputs: &cairn_sdk::Props, outputs: &cairn_sdk::Props) -> Result<Option<cairn_sdk::Observed>, cairn_sdk::ProviderError> {
        self.cloud.read(urn, id, inputs, outputs).await
    }
    async fn update(&self, urn: &Urn, id: &str, old: &cairn_sdk::Props, new: &cairn_sdk::Props) -> Result<cairn_sdk::Observed, cairn_sdk::ProviderError> {
        self.cloud.update(urn, id, old, new).await
    }
    async fn delete(&self, urn: &Urn, id: &str, inputs: &cairn_sdk::Props, outputs: &cairn_sdk::Props) -> Result<(), cairn_sdk::ProviderError> {
        self.cloud.delete(urn, id, inputs, outputs).await
    }
    async fn lookup(&self, _: &Urn, _: &cairn_sdk::Props) -> Result<Vec<cairn_sdk::Observed>, cairn_sdk::ProviderError> {
        Ok(Vec::new())
    }
    async fn lookup_created(&self, urn: &Urn, created_with: &cairn_sdk::Props) -> Result<Vec<cairn_sdk::Observed>, cairn_sdk::ProviderError> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        self.cloud.lookup(urn, created_with).await
    }
}

/// Previews settle interrupted creates by reading alone: they hold no lock, so they
/// never make the look-up that may write. Opening the stack for changes does, and
/// adopts what the create made.
#[tokio::test]
async fn only_settling_under_the_lock_makes_the_look_up_that_may_write() {
    let cloud = provider().lose_response("orders", Op::Create);
    let asked = Arc::new(AtomicUsize::new(0));
    let stack = Stack::<()>::new("dev").provider(ShownOnlyWhenAsked { cloud: cloud.clone(), asked: asked.clone() }).program(|cx, _| {
        cx.add(Queue::new("orders"));
        Ok(())
    });
    let store = Arc::new(MemoryStore::new());
    let mut session = stack.lock(store.clone(), "up").await.unwrap();
    assert_eq!(session.up(&()).await.unwrap().state.pending.len(), 1);
    drop(session); // the process dies, its create pending
    store.force_unlock("dev").await.unwrap();

    let (state, recovered) = stack.load(store.as_ref()).await.unwrap();
    assert!(matches!(recovered[..], [Recovery::Dropped { .. }]), "{recovered:?}");
    assert_eq!(stack.preview(&(), &state).unwrap().summary.create, 1);
    assert_eq!(asked.load(Ordering::SeqCst), 0, "a preview only reads");

    let session = stack.lock(store.clone(), "up").await.unwrap();
    let [made] = &cloud.resources()[..] else { panic!("one create") };
    assert_eq!(session.recovered(), [Recovery::Adopted { urn: made.urn.clone(), id: made.id.clone(), duplicates: Vec::new() }]);
    assert_eq!(asked.load(Ordering::SeqCst), 1);
    assert!(!session.preview(&()).unwrap().has_changes());
    session.close().await.unwrap();
}

#[tokio::test]
async fn an_update_whose_answer_was_lost_is_read_back() {
    let cloud = provider();
    let stack = shop_stack(&cloud);
    let state = deployed(&stack, &Shop::new()).await;
    let cloud = cloud.lose_response("web", Op::Update);
    let mut session = session_at(&stack, &state).await;
    let report = session.up(&Shop { capacity: 5, ..Shop::new() }).await.unwrap();
    let web = report.steps.iter().find(|s| s.urn.name() == "web").unwrap();
    assert_eq!(web.op, StepOp::Update);
    assert!(matches!(&web.status, StepStatus::Failed { error } if error.to_string().contains("may have taken effect")));
    assert_eq!(report.state.pending.len(), 1);

    let (settled, recovered) = resolve_pending(&report.state, stack.providers()).await.unwrap();
    assert!(matches!(&recovered[..], [Recovery::Refreshed { exists: true, .. }]));
    let web = settled.resource(&Urn::new("dev", "test:compute:Group", "web")).unwrap();
    assert_eq!(web.inputs.get("desired"), Some(&serde_json::json!(5)), "state learns what the cloud did");
    assert!(!stack.preview(&Shop { capacity: 5, ..Shop::new() }, &settled).unwrap().has_changes());
    drop(cloud);
}

/// A process that dies after an apply's steps are journaled but before its snapshot is
/// written leaves the journal ahead of the snapshot. A plan saved before that apply must
/// be refused, or it would create again what the apply created.
#[tokio::test]
async fn a_plan_saved_before_an_apply_whose_commit_was_lost_is_refused() {
    let cloud = provider();
    let stack = Stack::<u32>::new("dev").provider(cloud.clone()).program(|cx, n| {
        for i in 0..*n {
            cx.add(Queue::new(&format!("q{i}")));
        }
        Ok(())
    });
    let store = FaultyStore::default();
    let mut session = stack.lock(Arc::new(store.clone()), "up").await.unwrap();
    assert!(session.up(&1).await.unwrap().succeeded());
    let saved = session.preview(&2).unwrap();
    store.fail.store(true, Ordering::SeqCst);
    assert!(session.up(&2).await.is_err(), "the commit fails; the steps are journaled");
    session.close().await.unwrap();
    assert_eq!(cloud.resources().len(), 2);

    let mut session = stack.lock(Arc::new(store.clone()), "up").await.unwrap();
    assert_eq!(session.state().serial, saved.base.serial + 1, "the journal was written into a new snapshot");
    assert!(!session.state().replayed);
    let err = session.apply(&saved).await.unwrap_err();
    assert!(matches!(err, Error::StalePlan { .. }), "{err}");
    assert_eq!(cloud.resources().len(), 2, "nothing created twice");
    assert!(!session.preview(&2).unwrap().has_changes());
    session.close().await.unwrap();
}

/// Found against the local AWS through a faulty proxy: a subnet was created, the call
/// that turned on its public IPs failed, and the step was recorded as "nothing happened".
/// Every later run then tried to create it again and failed against its own orphan.
#[tokio::test]
async fn a_create_that_fails_after_making_the_resource_is_recorded_and_finished_not_made_again() {
    let cloud = provider().incomplete_create("orders-dlq", "visibility_timeout");
    let stack = shop_stack(&cloud);
    let store = MemoryStore::new();
    let mut session = stack.lock(Arc::new(store.clone()), "up").await.unwrap();
    let report = session.up(&Shop::new()).await.unwrap();
    let step = report.steps.iter().find(|s| s.urn.name() == "orders-dlq").unwrap();
    assert!(
        matches!(&step.status, StepStatus::Failed { error } if error.to_string().contains("setting visibility_timeout failed") && error.to_string().contains("created as orders-dlq-1")),
        "{step:?}"
    );
    let orders = report.steps.iter().find(|s| s.urn.name() == "orders").unwrap();
    assert!(matches!(orders.status, StepStatus::Skipped { .. }), "its dependents wait: {orders:?}");
    let urn = Urn::new("dev", "test:queue:Queue", "orders-dlq");
    assert_eq!(report.state.resource(&urn).map(|r| r.id.as_str()), Some("orders-dlq-1"), "recorded with its id");
    assert!(
        matches!(&report.state.pending[..], [op] if op.urn == urn && op.id.as_deref() == Some("orders-dlq-1")),
        "kept to be read back: {:?}",
        report.state.pending
    );
    session.close().await.unwrap();

    // The next run reads it back, sees the missing property, and updates it in place.
    cloud.clear_calls();
    let mut session = stack.lock(Arc::new(store.clone()), "up").await.unwrap();
    let report = session.up(&Shop::new()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert!(matches!(session.recovered(), [Recovery::Refreshed { exists: true, .. }]), "{:?}", session.recovered());
    assert_eq!(cloud.calls_of(Op::Update), ["orders-dlq"]);
    assert_eq!(cloud.calls_of(Op::Create), ["orders"], "the queue is not created again");
    let dlqs: Vec<_> = cloud.resources().into_iter().filter(|r| r.urn == urn).collect();
    assert_eq!(dlqs.len(), 1);
    assert_eq!(dlqs[0].inputs.get("visibility_timeout"), Some(&serde_json::json!(30)), "finished");
    assert!(!session.preview(&Shop::new()).unwrap().has_changes());
    session.close().await.unwrap();
}

/// The same, when the process dies before the apply's snapshot: the journal alone says
/// the resource exists and must be read back.
#[tokio::test]
async fn an_incomplete_create_survives_a_lost_commit_through_the_journal() {
    let cloud = provider().incomplete_create("orders", "dead_letter_arn");
    let stack = Stack::<()>::new("dev").provider(cloud.clone()).program(|cx, _| {
        let dlq = cx.add(Queue::new("dlq"));
        cx.add(Queue::new("orders").dead_letter_arn(dlq.arn()));
        Ok(())
    });
    let store = FaultyStore::default();
    let mut session = stack.lock(Arc::new(store.clone()), "up").await.unwrap();
    store.fail.store(true, Ordering::SeqCst);
    assert!(session.up(&()).await.is_err(), "the commit fails; the steps are journaled");
    session.close().await.unwrap();

    let mut session = stack.lock(Arc::new(store.clone()), "up").await.unwrap();
    let report = session.up(&()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    assert!(matches!(session.recovered(), [Recovery::Refreshed { exists: true, .. }]), "{:?}", session.recovered());
    assert_eq!(cloud.resources().len(), 2, "nothing created twice");
    assert!(cloud.resources().iter().all(|r| r.urn.name() != "orders" || r.inputs.get("dead_letter_arn").is_some()));
    session.close().await.unwrap();
}

#[tokio::test]
async fn a_create_carried_out_twice_is_adopted_once_and_the_copy_is_deleted() {
    let cloud = provider().double_create("orders");
    let stack = Stack::<()>::new("dev").provider(cloud.clone()).program(|cx, _| {
        // Retained on delete: the copy is deleted all the same, not forgotten.
        cx.add(Queue::new("orders").retain_on_delete());
        Ok(())
    });
    let mut session = stack.in_memory_session().await.unwrap();
    let report = session.up(&()).await.unwrap();
    assert_eq!(report.state.pending.len(), 1);
    assert_eq!(cloud.resources().len(), 2, "two copies in the cloud");

    let recovered = session.settle().await.unwrap().to_vec();
    let [Recovery::Adopted { id, duplicates, .. }] = &recovered[..] else { panic!("{recovered:?}") };
    assert_eq!((id.as_str(), &duplicates[..]), ("orders-1", &["orders-2".to_owned()][..]));
    let said = recovered[0].to_string();
    assert!(said.contains("orders-1, orders-2") && said.contains("next apply deletes"), "names every copy: {said}");

    let plan = session.preview(&()).unwrap();
    assert!(plan.has_changes(), "the copy is planned for deletion");
    let report = session.apply(&plan).await.unwrap();
    assert!(report.succeeded());
    let left: Vec<String> = cloud.resources().into_iter().map(|r| r.id).collect();
    assert_eq!(left, ["orders-1"]);
    assert_eq!(report.state.resources.len(), 1);
    assert!(!stack.preview(&(), &report.state).unwrap().has_changes());
}

/// If the record saying an incomplete create must be read back cannot be written, the
/// create must not be journaled as finished either: replayed after a crash, it would be
/// a resource with the declared inputs and nothing pending, never finished.
#[tokio::test]
async fn an_incomplete_create_whose_read_back_cannot_be_journaled_stays_a_pending_create() {
    let cloud = provider().incomplete_create("orders", "visibility_timeout");
    let stack = Stack::<()>::new("dev").provider(cloud.clone()).program(|cx, _| {
        cx.add(Queue::new("orders").visibility_timeout(45));
        Ok(())
    });
    let store = FaultyStore::default();
    let mut session = stack.lock(Arc::new(store.clone()), "up").await.unwrap();
    store.fail_read_back.store(true, Ordering::SeqCst);
    store.fail.store(true, Ordering::SeqCst);
    assert!(session.up(&()).await.is_err(), "the commit fails: only the journal remains");
    session.close().await.unwrap();
    store.fail_read_back.store(false, Ordering::SeqCst);

    let mut session = stack.lock(Arc::new(store.clone()), "up").await.unwrap();
    assert!(matches!(session.recovered(), [Recovery::Adopted { .. }]), "settled by the look-up: {:?}", session.recovered());
    let report = session.up(&()).await.unwrap();
    assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
    let queues = cloud.resources();
    assert_eq!(queues.len(), 1, "not created twice");
    assert_eq!(queues[0].inputs.get("visibility_timeout"), Some(&serde_json::json!(45)), "finished");
    session.close().await.unwrap();
}

/// A provider that cannot reach its cloud (no credentials, no region) stops `up`,
/// `refresh` and the settling of pending operations before any call, with its own
/// message, and state is left as it was.
#[tokio::test]
async fn a_provider_that_is_not_ready_stops_everything_before_any_call() {
    let ready = provider();
    let stack = |cloud: &cairn_sdk::testing::TestProvider| {
        Stack::<()>::new("dev").provider(cloud.clone()).program(|cx, _| {
            cx.add(Queue::new("orders"));
            Ok(())
        })
    };
    let store = Arc::new(MemoryStore::new());
    let mut session = stack(&ready).lock(store.clone(), "up").await.unwrap();
    session.up(&()).await.unwrap();
    session.close().await.unwrap();
    let before = store.load("dev").await.unwrap();

    let cloud = provider().not_ready("no AWS region is configured: set AWS_REGION");
    let stack = stack(&cloud);
    let err = stack.ready().await.unwrap_err();
    assert_eq!(err.to_string(), "the test provider cannot run: no AWS region is configured: set AWS_REGION. Nothing was called, and state was left as it was");
    let mut session = stack.lock(store.clone(), "up").await.unwrap();
    let plan = session.preview_destroy().unwrap();
    assert!(matches!(session.apply(&plan).await.unwrap_err(), Error::ProviderNotReady { .. }));
    assert!(matches!(session.refresh().await.unwrap_err(), Error::ProviderNotReady { .. }));
    session.close().await.unwrap();
    assert!(cloud.calls().is_empty(), "{:?}", cloud.calls());
    assert_eq!(store.load("dev").await.unwrap(), before);
}

/// A stack of `n` queues that the `grow` event adds one to.
fn growing_stack() -> Stack<u32> {
    Stack::<u32>::new("dev")
        .provider(provider())
        .program(|cx, n| {
            for i in 0..*n {
                cx.add(Queue::new(&format!("orders-{i}")));
            }
            Ok(())
        })
        .on_event("grow", |_: &Event, n: &mut u32| {
            *n += 1;
            Ok(())
        })
}

/// A `grow` event with id `id`.
fn grow(id: &str) -> Event {
    Event::new("grow", serde_json::json!({})).with_id(id)
}

/// Hands the reconciler the event `grow-1`, whose commit fails with an error that says
/// `why`: the reconciler stops with it, and the store's audit log then holds one entry,
/// the event accepted and its apply failed with that error.
async fn assert_stops_and_audits(reconciler: &mut Reconciler<u32>, store: &dyn Store, why: &str) {
    let err = reconciler.process(vec![grow("grow-1")]).await.unwrap_err();
    assert!(err.to_string().contains(why), "{err}");
    let history = store.history("dev").await.unwrap();
    let [entry] = &history[..] else { panic!("one entry: {history:?}") };
    assert_eq!(entry["event"]["id"], "grow-1");
    assert_eq!(entry["outcome"], "accepted");
    assert_eq!(entry["s_after"], 1);
    assert_eq!(entry["apply"]["result"], "failed");
    assert!(entry["apply"]["error"].as_str().is_some_and(|e| e.contains(why)), "{entry}");
}

/// A reconciler of [`growing_stack`] on a file store in a directory of its own.
async fn reconciler_on_disk() -> (tempfile::TempDir, Arc<cairn_state::FileStore>, Reconciler<u32>) {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(cairn_state::FileStore::new(tmp.path()));
    let session = growing_stack().lock(store.clone(), "watch").await.unwrap();
    let (reconciler, _events) = Reconciler::new(session, ReconcilerOptions::default()).unwrap();
    (tmp, store, reconciler)
}

/// An event was recorded and acknowledged, and its apply ran, but the commit after it
/// failed: the reconciler stops (the stack must be reopened), and the event's audit
/// entry is still written, with the apply failed and why.
#[tokio::test]
async fn an_event_whose_apply_could_not_be_committed_keeps_its_audit_entry() {
    let stack = growing_stack();
    let store = FaultyStore::default();
    let session = stack.lock(Arc::new(store.clone()), "watch").await.unwrap();
    let (mut reconciler, _events) = Reconciler::new(session, ReconcilerOptions::default()).unwrap();
    store.fail.store(true, Ordering::SeqCst);
    assert_stops_and_audits(&mut reconciler, &store, "disk full").await;
}

/// The same on the file store, where the event's record is staged and becomes durable
/// with the apply's first journal record: the entry is written once that is known.
#[tokio::test]
async fn an_event_staged_on_disk_whose_commit_failed_keeps_its_audit_entry() {
    let (_tmp, store, mut reconciler) = reconciler_on_disk().await;
    // A directory where the snapshot was: the commit after the apply cannot replace it.
    let snapshot = store.stack_dir("dev").join("state.json");
    std::fs::remove_file(&snapshot).unwrap();
    std::fs::create_dir(&snapshot).unwrap();
    assert_stops_and_audits(&mut reconciler, &*store, "state.json").await;
}

/// A batch whose staged record never reaches the disk (the stack's lock was taken away
/// before the write that would carry it): its senders are not told it was recorded, so
/// none of its events is counted as rejected nor written to the audit log; their sources
/// deliver them again.
#[tokio::test]
async fn a_batch_whose_record_never_became_durable_is_neither_counted_nor_audited() {
    let (tmp, store, mut reconciler) = reconciler_on_disk().await;
    let metrics = reconciler.metrics();
    // A first event opens the session's journal, which it keeps open.
    reconciler.process(vec![grow("grow-1")]).await.unwrap();
    let audited = store.history("dev").await.unwrap();
    assert_eq!(audited.len(), 1);
    // Another process takes the stack: the journal's next write is fenced off.
    cairn_state::FileStore::new(tmp.path()).force_unlock("dev").await.unwrap();
    let batch = vec![grow("grow-2"), Event::new("nobody.handles", serde_json::json!({})).with_id("odd-1")];
    let err = reconciler.process(batch).await.unwrap_err();
    assert!(err.to_string().contains("no longer holds the lock"), "{err}");
    assert_eq!(metrics.received_of("nobody.handles"), 1);
    assert!(!metrics.render().contains("cairn_events_rejected_total{kind=\"nobody.handles\"}"), "{}", metrics.render());
    assert_eq!(store.history("dev").await.unwrap(), audited);
}

static LINK: ResourceType = ResourceType::new("test:misc:Link", &[Property::input("size")]);

/// `n` resources in a chain, each depending on the one before.
fn chain(provider: &TestProvider) -> Stack<u32> {
    Stack::<u32>::new("dev").provider(provider.clone()).program(|cx, n: &u32| {
        let mut previous = None;
        for i in 0..*n {
            let mut r = DynamicResource::new(&LINK, format!("r{i}")).set("size", 1u32);
            if let Some(p) = &previous {
                r = r.depends_on(p);
            }
            previous = Some(cx.add(r));
        }
        Ok(())
    })
}

/// Runs `up` to `n` and drops it, as a `select!` or a timeout would, once the provider
/// has carried out `effects` creates, the last of them not yet answered.
async fn cancel_up_after(session: &mut cairn_sdk::Session<u32>, provider: &TestProvider, n: u32, effects: usize) {
    tokio::select! {
        finished = session.up(&n) => panic!("the up ended before it was cancelled: {:?}", finished.map(|r| r.summary)),
        () = async {
            while provider.resources().len() < effects {
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
        } => {}
    }
}

/// What a session recovered: one adoption, of `name`.
fn assert_adopted_only(recovered: &[Recovery], name: &str) {
    assert!(matches!(recovered, [Recovery::Adopted { urn, .. }] if urn.name() == name), "{recovered:?}");
}

/// An `up` whose future is dropped mid-apply (a `select!` on Ctrl-C, a timeout): the
/// session's next operation takes in what the apply did from the journal, adopting the
/// create that took effect without an answer, and creates nothing twice. Until then it
/// plans nothing from the state it had.
#[tokio::test(start_paused = true)]
async fn an_up_cancelled_mid_apply_is_taken_in_by_the_next_operation() {
    let provider = TestProvider::new("test").with_latency(Duration::from_millis(10)).with_answer_latency(Duration::from_millis(10));
    let stack = chain(&provider);
    let mut session = stack.in_memory_session().await.unwrap();
    cancel_up_after(&mut session, &provider, 6, 3).await;

    let err = session.preview(&6).unwrap_err();
    assert!(matches!(err, Error::Interrupted { operation: "apply", .. }), "{err}");
    assert!(err.to_string().contains("call Session::settle"), "{err}");

    let report = session.up(&6).await.unwrap();
    assert!(report.succeeded());
    assert_adopted_only(session.recovered(), "r2");
    assert_eq!(provider.calls_of(Op::Create).len(), 6, "{:?}", provider.calls_of(Op::Create));
    assert_cloud_is(&provider, session.state(), 6);
}

/// The same on the file store, closed right after the cancel: the close does not
/// write the session's state (which lacks the apply) over the journal, and the next
/// session adopts what the apply left.
#[tokio::test(start_paused = true)]
async fn a_session_closed_after_a_cancelled_up_leaves_the_journal_to_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(cairn_state::FileStore::new(tmp.path()));
    let provider = TestProvider::new("test").with_latency(Duration::from_millis(10)).with_answer_latency(Duration::from_millis(10));
    let stack = chain(&provider);
    let mut session = stack.lock(store.clone(), "up").await.unwrap();
    // An event recorded first, so that the close has event records it would fold.
    session.record_events(serde_json::json!(6), &["e-1".to_owned()]).await.unwrap();
    cancel_up_after(&mut session, &provider, 6, 3).await;
    session.close().await.unwrap();

    let mut session = stack.lock(store, "up").await.unwrap();
    assert_adopted_only(session.recovered(), "r2");
    assert_eq!(session.state().processed_events, ["e-1"]);
    let report = session.up(&6).await.unwrap();
    assert!(report.succeeded());
    assert_eq!(provider.calls_of(Op::Create).len(), 6, "{:?}", provider.calls_of(Op::Create));
    assert_cloud_is(&provider, session.state(), 6);
    session.close().await.unwrap();
}

/// An `up` cancelled while its commit is under way, on a store whose commits run to
/// their end regardless: the next operation waits for that commit before reading the
/// state, rather than reading it half written and committing beside it; also when that
/// operation is cancelled in turn while it waits.
#[tokio::test(start_paused = true)]
async fn the_next_operation_waits_for_the_commit_of_a_cancelled_up() {
    let provider = TestProvider::new("test").with_latency(Duration::from_millis(10));
    let stack = chain(&provider);
    let store = FaultyStore::default();
    let mut session = stack.lock(Arc::new(store.clone()), "up").await.unwrap();
    store.slow.store(true, Ordering::SeqCst);
    // Every create is answered 10 ms after it is made; the commit then takes a second.
    let cancelled = tokio::time::timeout(Duration::from_millis(500), session.up(&3)).await;
    assert!(cancelled.is_err(), "the up ended before it was cancelled");
    assert_eq!(provider.resources().len(), 3);
    assert_eq!(store.committing.load(Ordering::SeqCst), 1, "cancelled while its commit was under way");
    let cancelled = tokio::time::timeout(Duration::from_millis(200), session.up(&3)).await;
    assert!(cancelled.is_err(), "the next up did not wait for the commit");

    let report = session.up(&3).await.unwrap();
    assert!(!store.overlapped.load(Ordering::SeqCst), "two commits were under way at once");
    assert!(report.succeeded() && report.summary.changes() == 0, "{:?}", report.summary);
    assert!(session.recovered().is_empty(), "{:?}", session.recovered());
    assert_cloud_is(&provider, session.state(), 3);
}

/// An event record dropped on its way to the disk (its future cancelled once the journal
/// had it): until an operation has read it back, the session does not give out the user
/// state that lacks it (a reconciler started from it would apply the old one), and the
/// close does not write that state over it.
#[tokio::test]
async fn an_event_record_cancelled_on_its_way_to_disk_is_read_back_before_the_state_is_used() {
    let tmp = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(cairn_state::FileStore::new(tmp.path()));
    let stack = chain(&TestProvider::new("test"));
    let mut session = stack.lock(store.clone(), "watch").await.unwrap();
    // The first record opens the journal, so that the next one's first poll hands it over.
    session.record_events(serde_json::json!(1), &["e-1".to_owned()]).await.unwrap();
    {
        let ids = ["e-2".to_owned()];
        let record = session.record_events(serde_json::json!(2), &ids);
        tokio::pin!(record);
        tokio::select! {
            biased;
            _ = &mut record => panic!("the record was durable at its first poll"),
            () = std::future::ready(()) => {}
        }
    }
    let err = session.user_state().unwrap_err();
    assert!(matches!(err, Error::Interrupted { operation: "event record", .. }), "{err}");

    session.settle().await.unwrap();
    assert_eq!(session.user_state().unwrap(), 2);
    assert_eq!(session.state().processed_events, ["e-1", "e-2"]);
    session.close().await.unwrap();
    let session = stack.lock(store, "watch").await.unwrap();
    assert_eq!(session.user_state().unwrap(), 2);
    assert_eq!(session.state().processed_events, ["e-1", "e-2"]);
    session.close().await.unwrap();
}

/// Opening a stack settles what an interrupted apply left, through the providers, which
/// may be slow: an open cancelled then (a `timeout` around `Stack::lock`) lets the lock
/// go, rather than leaving the stack locked by this very process until its lease ends.
#[tokio::test(start_paused = true)]
async fn an_open_cancelled_while_it_settles_lets_the_lock_go() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let provider = TestProvider::new("test").with_latency(Duration::from_millis(10)).with_answer_latency(Duration::from_millis(10));
    let stack = chain(&provider);
    let mut session = stack.lock(store.clone(), "up").await.unwrap();
    cancel_up_after(&mut session, &provider, 6, 3).await;
    session.close().await.unwrap();

    // The create left without an answer is looked up as the stack opens: 10 ms.
    let cancelled = tokio::time::timeout(Duration::from_millis(1), stack.lock(store.clone(), "up")).await;
    assert!(cancelled.is_err(), "the open did not wait for the look-up");
    tokio::task::yield_now().await;
    assert_eq!(store.lock_holder("dev").await.unwrap(), None);
    let session = stack.lock(store, "up").await.unwrap();
    assert_adopted_only(session.recovered(), "r2");
    session.close().await.unwrap();
}

/// A close cancelled while it folds the session's event records into a snapshot (a
/// timeout around a slow store) lets the lock go all the same, and the records, still
/// in the journal, are the next session's.
#[tokio::test(start_paused = true)]
async fn a_close_cancelled_while_it_writes_lets_the_lock_go_and_keeps_the_events() {
    let store = FaultyStore::default();
    let stack = chain(&TestProvider::new("test"));
    let mut session = stack.lock(Arc::new(store.clone()), "watch").await.unwrap();
    session.record_events(serde_json::json!(4), &["e-1".to_owned()]).await.unwrap();
    store.slow.store(true, Ordering::SeqCst);
    assert!(tokio::time::timeout(Duration::from_millis(100), session.close()).await.is_err(), "the close did not wait for the store");
    tokio::task::yield_now().await;
    assert_eq!(store.lock_holder("dev").await.unwrap(), None);

    store.slow.store(false, Ordering::SeqCst);
    let session = stack.lock(Arc::new(store.clone()), "watch").await.unwrap();
    assert_eq!(session.user_state().unwrap(), 4);
    assert_eq!(session.state().processed_events, ["e-1"]);
    session.close().await.unwrap();
}

/// A `process` cancelled after its events' record was written, before it was answered:
/// the reconciler's next batch starts from the user state that record holds, so the
/// cancelled events' effect is kept, not written over.
#[tokio::test(start_paused = true)]
async fn a_batch_after_one_cancelled_once_recorded_starts_from_what_was_recorded() {
    let store = FaultyStore::default();
    store.slow_answers.store(true, Ordering::SeqCst);
    let session = growing_stack().lock(Arc::new(store.clone()), "watch").await.unwrap();
    let (mut reconciler, _events) = Reconciler::new(session, ReconcilerOptions::default()).unwrap();
    let cancelled = tokio::time::timeout(Duration::from_millis(100), reconciler.process(vec![grow("grow-1")])).await;
    assert!(cancelled.is_err(), "the record was answered before the cancel");

    assert_eq!(reconciler.process(vec![grow("grow-2")]).await.unwrap(), [Outcome::Accepted]);
    assert_eq!(*reconciler.user_state(), 2, "grow-1's record counts");
    let session = reconciler.into_session();
    assert_eq!(session.state().processed_events, ["grow-1", "grow-2"]);
    assert_eq!(session.state().resources.len(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_standby_outlives_the_stores_errors_until_they_last() {
    const POLL: Duration = Duration::from_millis(500);
    let store = FaultyStore::default();
    let stack = Stack::<()>::new("dev").provider(provider()).program(|_, _| Ok(()));
    // What the standby is told at each look: `held`, or how long the store has failed.
    let told = Arc::new(std::sync::Mutex::new(Vec::new()));
    let standby = |stack: &Stack<()>, store: &FaultyStore| {
        let (stack, store, told) = (stack.clone(), store.clone(), told.clone());
        tokio::spawn(async move {
            stack
                .lock_when_free(Arc::new(store), "watch", POLL, || Duration::ZERO, |found| {
                    told.lock().unwrap().push(match found {
                        cairn_sdk::Standby::Held(_) => "held".to_owned(),
                        cairn_sdk::Standby::StoreFailing { failing_for, .. } => format!("failing {:.1}", failing_for.as_secs_f64()),
                        _ => "other".to_owned(),
                    })
                })
                .await
        })
    };

    // An error at the first attempt says nothing works yet (a bucket that does not
    // exist): the wait ends with it.
    store.fail_locks.store(1, Ordering::SeqCst);
    let err = standby(&stack, &store).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("service unavailable"), "{err}");

    // Once it has read the lock as held, errors are a blip: 20 s of them, meanwhile the
    // leader stops, and the standby takes the stack when they pass.
    let leader = stack.lock(Arc::new(store.clone()), "watch").await.unwrap();
    let waiting = standby(&stack, &store);
    tokio::time::sleep(Duration::from_millis(100)).await;
    store.fail_locks.store(40, Ordering::SeqCst);
    leader.close().await.unwrap();
    let session = waiting.await.unwrap().expect("the standby takes the stack once the store answers again");
    assert_eq!(store.fail_locks.load(Ordering::SeqCst), 0, "it tried through every error");
    let told = std::mem::take(&mut *told.lock().unwrap());
    assert_eq!(told[..2], ["held", "failing 0.0"], "{told:?}");
    assert_eq!(told.len(), 41, "each failed look is told, with how long the errors have lasted: {told:?}");
    assert_eq!(told.last().unwrap(), "failing 19.5");
    session.close().await.unwrap();

    // Errors that last end the wait, with the store's own error.
    let leader = stack.lock(Arc::new(store.clone()), "watch").await.unwrap();
    let waiting = standby(&stack, &store);
    tokio::time::sleep(Duration::from_millis(100)).await;
    store.fail_locks.store(usize::MAX, Ordering::SeqCst);
    let began = tokio::time::Instant::now();
    let err = waiting.await.unwrap().unwrap_err();
    assert!(err.to_string().contains("service unavailable"), "{err}");
    assert!(began.elapsed() >= cairn_sdk::STANDBY_STORE_ERRORS_FOR, "{:?}", began.elapsed());
    assert!(began.elapsed() < cairn_sdk::STANDBY_STORE_ERRORS_FOR + 2 * POLL, "{:?}", began.elapsed());
    store.fail_locks.store(0, Ordering::SeqCst);
    leader.close().await.unwrap();
}
