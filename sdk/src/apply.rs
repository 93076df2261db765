//! Apply: carrying out a plan against the providers.
//!
//! The plan's changes become steps in a DAG. A step starts as soon as the steps it
//! depends on are done (not level by level), up to a parallelism limit. A failed step
//! skips only the steps that depend on it; everything else goes on, and the report
//! lists every step's outcome.
//!
//! Ordering rules:
//! - create and update after the resources they depend on;
//! - a replacement creates the new resource first, moves dependents to it, then deletes
//!   the old one (create-before-delete); with delete-before-replace the old one and any
//!   dependents replaced the same way are deleted first;
//! - a delete waits for everything that depended on the resource in state to be deleted
//!   or moved off it: the dependencies recorded in state, because a removed resource is
//!   no longer in the program.

use std::cell::OnceCell;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use std::sync::Arc;

use cairn_state::{
    Journal, JournalRecord, StepOp, PendingOperation, Props, ResourceState, StackState, StepEffect, StoredOptions, Urn,
};
use futures_util::stream::{FuturesUnordered, StreamExt};
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use rustc_hash::{FxHashMap as HashMap, FxHashSet as HashSet};

use crate::error::{Error, Result};
use crate::input::Prop;
use crate::panic::CatchUnwind;
use crate::plan::{Action, Change, Plan, Summary};
use crate::provider::{ErrorKind, Observed, ProviderError, ProviderOp, Providers};

/// How to apply.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// How many provider operations may run at once. Default 16; `usize::MAX` for no
    /// limit.
    pub parallelism: usize,
    /// Told when each step starts and ends (the CLI's progress display).
    pub progress: Option<Arc<dyn Progress>>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions { parallelism: 16, progress: None }
    }
}

/// Observes an apply's steps as they start and finish. Called on the apply's task, which
/// also polls every call in flight: keep it quick.
pub trait Progress: Send + Sync + std::fmt::Debug {
    /// A step is about to call its provider.
    fn started(&self, _urn: &Urn, _op: StepOp) {}
    /// A step finished (or was skipped).
    fn finished(&self, _step: &StepReport) {}
}

/// How a step ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum StepStatus {
    /// The provider call succeeded.
    Done,
    /// Nothing needed doing once unknown values were known (a "may replace" that did
    /// not), or a retained resource was forgotten without a call.
    NoOp {
        /// Why no call was made.
        reason: String,
    },
    /// The provider call failed. A refusal changed nothing; an uncertain failure (a
    /// timeout, a lost answer) may have, and is kept in the new state's `pending`; a
    /// create that made the resource before a later call failed records it and keeps
    /// it pending, to be read back.
    Failed {
        /// What failed, with the resource and the operation.
        error: ProviderError,
    },
    /// Not attempted because a step it depends on failed.
    Skipped {
        /// The resource whose failure caused the skip.
        because: Urn,
    },
}

impl StepStatus {
    /// The error of a failed step.
    pub fn error(&self) -> Option<&ProviderError> {
        match self {
            StepStatus::Failed { error } => Some(error),
            _ => None,
        }
    }
}

/// One step's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// The resource.
    pub urn: Urn,
    /// What the step did.
    pub op: StepOp,
    /// How it ended.
    #[serde(flatten)]
    pub status: StepStatus,
    /// How long the provider call took.
    #[serde(with = "secs")]
    pub elapsed: Duration,
}

mod secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs_f64(f64::deserialize(d)?))
    }
}

/// The result of an apply: every step's outcome and the new state.
#[derive(Clone, Debug)]
pub struct ApplyReport {
    /// Every step, in the order they finished.
    pub steps: Vec<StepReport>,
    /// The state after the apply, whatever failed: persist it.
    pub state: StackState,
    /// What was actually done, per action (a failed or skipped step counts nowhere).
    pub summary: Summary,
    /// Wall time of the whole apply.
    pub elapsed: Duration,
    /// Each stack output whose function failed, and why; it keeps the value it had.
    pub output_errors: BTreeMap<String, String>,
}

impl ApplyReport {
    /// Whether every step succeeded and every stack output was computed.
    pub fn succeeded(&self) -> bool {
        self.failures().next().is_none() && self.output_errors.is_empty()
    }

    /// The failed and skipped steps.
    pub fn failures(&self) -> impl Iterator<Item = &StepReport> {
        self.steps.iter().filter(|s| matches!(s.status, StepStatus::Failed { .. } | StepStatus::Skipped { .. }))
    }
}

struct Step {
    change: usize,
    op: StepOp,
    deps: Vec<usize>,
}

/// Why a step's call failed, and what the cloud may have done anyway.
struct Failure {
    /// What failed; if it is uncertain, the cloud may have carried it out and the step
    /// stays pending, as begun.
    error: ProviderError,
    /// A create made the resource before a later call of the step failed: it is
    /// recorded (the effect), and kept pending as an update (the operation) so that it
    /// is read back before the next plan.
    created: Option<(StepEffect, PendingOperation)>,
}

impl From<ProviderError> for Failure {
    fn from(e: ProviderError) -> Self {
        Failure { error: e, created: None }
    }
}

type CallFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<StepEffect, Failure>> + Send>>;

/// Applies `plan` to the resources recorded in `state`.
///
/// Refuses a plan made against another state (lineage or serial differ) before any
/// provider call. Otherwise returns a report even when steps fail.
///
/// Each step's begin is recorded in `journal` before its provider call and its end
/// after, so a crash leaves pending operations rather than lost knowledge.
pub async fn apply(
    plan: &Plan,
    state: &StackState,
    providers: &Providers,
    options: &ApplyOptions,
    journal: Arc<dyn Journal>,
) -> Result<ApplyReport> {
    let started = Instant::now();
    if !state.pending.is_empty() {
        return Err(Error::pending(state));
    }
    plan.check_base(state)?;
    for change in plan.changed() {
        if providers.for_token(&change.ty).is_none() && !(change.options.retain_on_delete && change.action == Action::Delete) {
            return Err(Error::NoProvider {
                package: change.ty.split(':').next().unwrap_or_default().to_owned(),
                urn: change.urn.clone(),
            });
        }
    }
    check_secrets_open(plan, state, true)?;

    providers.ready(plan.changed().map(|c| &*c.ty)).await?;
    let steps = build_steps(plan, state)?;
    // The state being converged to is durable before anything changes. It already is
    // when it is the state's own, as for `up` and for an event's apply (the reconciler
    // recorded it with the event): one durable write fewer before the first call.
    let mut run = Run::new(plan, state, providers, &steps, journal.clone(), options.progress.clone());
    run.check_changes()?;
    if plan.user_state != state.user_state {
        journal.record(JournalRecord::UserState { base: state.serial, value: plan.user_state.clone() }).await?;
    }
    run.execute(options.parallelism.max(1)).await;
    Ok(run.into_report(started))
}

/// Refuses `plan` if a secret it would give a provider cannot be opened: one state
/// holds for a resource it updates, replaces or deletes, and with `new_inputs`, one of
/// the inputs to apply. A secret sealed with a key not loaded (a wrong passphrase) is
/// found here, naming the resource and the property, before any call. A preview checks
/// state's side only: the plan's own inputs are walked once, by the apply.
pub(crate) fn check_secrets_open(plan: &Plan, state: &StackState, new_inputs: bool) -> Result<()> {
    if new_inputs {
        for change in plan.changed() {
            for (property, prop) in &change.inputs {
                if let Some(source) = crate::secret::locked_in(prop) {
                    return Err(Error::SecretLocked { urn: change.urn.clone(), property: property.clone(), source });
                }
            }
        }
    }
    let touched: HashSet<&Urn> = plan.changed().filter(|c| c.action != Action::Create).map(|c| &c.urn).collect();
    if touched.is_empty() {
        return Ok(());
    }
    for resource in state.resources.iter().filter(|r| touched.contains(&r.urn)) {
        for (property, value) in resource.inputs.iter().chain(resource.outputs.iter()) {
            if let Some(source) = crate::secret::locked(value) {
                return Err(Error::SecretLocked { urn: resource.urn.clone(), property: property.to_owned(), source });
            }
        }
    }
    Ok(())
}

/// Per change of `plan`, its entry in `live` (the live resources of state), if any.
///
/// State is stored in the order of the plan that wrote it, and a plan for the same
/// resources follows that order: each change is first compared with the live entry
/// after the last one matched (URNs shared by the graph and state compare by address),
/// and `by_urn` is built only for a change found elsewhere. An event's apply, one
/// change among a thousand unchanged resources, so starts without hashing a thousand
/// URNs first.
fn live_resources<'a>(plan: &Plan, live: &[&'a ResourceState], by_urn: &OnceCell<HashMap<&'a Urn, usize>>) -> Vec<Option<&'a ResourceState>> {
    let mut next = 0;
    plan.changes
        .iter()
        .map(|c| {
            let at = match live.get(next) {
                Some(r) if r.urn == c.urn => Some(next),
                _ => by_urn.get_or_init(|| index_by_urn(live)).get(&c.urn).copied(),
            };
            at.map(|i| {
                next = i + 1;
                live[i]
            })
        })
        .collect()
}

/// The position of each of `live` by URN.
fn index_by_urn<'a>(live: &[&'a ResourceState]) -> HashMap<&'a Urn, usize> {
    live.iter().enumerate().map(|(i, r)| (&r.urn, i)).collect()
}

/// The provider operation a step calls.
fn provider_op(op: StepOp) -> ProviderOp {
    match op {
        StepOp::Create | StepOp::CreateReplacement => ProviderOp::Create,
        StepOp::Update => ProviderOp::Update,
        StepOp::Delete | StepOp::DeleteReplaced => ProviderOp::Delete,
    }
}

/// Whether `plan`'s steps would wait for each other in a loop.
pub(crate) fn steps_loop(plan: &Plan, state: &StackState) -> bool {
    build_steps(plan, state).is_err()
}

/// Turns changes into steps and their dependencies.
fn build_steps(plan: &Plan, state: &StackState) -> Result<Vec<Step>> {
    let mut steps: Vec<Step> = Vec::new();
    let mut fwd: HashMap<&Urn, usize> = HashMap::default();
    let mut dels: HashMap<&Urn, Vec<usize>> = HashMap::default();
    let mut delete_old: HashMap<&Urn, usize> = HashMap::default();
    for (ci, c) in plan.changes.iter().enumerate() {
        let mut push = |op| {
            steps.push(Step { change: ci, op, deps: Vec::new() });
            steps.len() - 1
        };
        match c.action {
            Action::Same => {}
            Action::Create => {
                fwd.insert(&c.urn, push(StepOp::Create));
            }
            Action::Update => {
                fwd.insert(&c.urn, push(StepOp::Update));
            }
            Action::Replace => {
                fwd.insert(&c.urn, push(StepOp::CreateReplacement));
                let d = push(StepOp::DeleteReplaced);
                delete_old.insert(&c.urn, d);
                dels.entry(&c.urn).or_default().push(d);
            }
            Action::Delete => {
                let d = push(StepOp::Delete);
                dels.entry(&c.urn).or_default().push(d);
            }
        }
    }

    // Who depended on whom when state was written, and who depends on whom in the
    // plan: only deletes need them, and most applies (an event's) delete nothing.
    let mut state_dependents: HashMap<&Urn, Vec<&Urn>> = HashMap::default();
    let mut plan_dependents: HashMap<&Urn, Vec<&Urn>> = HashMap::default();
    if !dels.is_empty() {
        for r in &state.resources {
            for d in &r.dependencies {
                state_dependents.entry(d).or_default().push(&r.urn);
            }
        }
        for c in plan.changes.iter().filter(|c| c.action != Action::Delete) {
            for d in c.dependencies.iter().flatten() {
                plan_dependents.entry(d).or_default().push(&c.urn);
            }
        }
    }

    // Deleted resources that a create, update or replacement waits for (the same cloud
    // object: a declaration renamed), with the resource whose step waits.
    let mut taken_over: HashMap<&Urn, &Urn> = HashMap::default();
    if !dels.is_empty() {
        taken_over.extend(plan.changes.iter().filter_map(|c| Some((c.after_delete.as_ref()?, &c.urn))));
    }

    #[allow(clippy::needless_range_loop)] // `s` is also compared with each dependency
    for s in 0..steps.len() {
        let c = &plan.changes[steps[s].change];
        let mut deps = Vec::new();
        match steps[s].op {
            StepOp::Create | StepOp::Update | StepOp::CreateReplacement => {
                deps.extend(c.dependencies.iter().flatten().filter_map(|d| fwd.get(d).copied()));
                if c.action == Action::Replace && c.delete_before_replace {
                    deps.push(delete_old[&c.urn]);
                }
                if let Some(old) = &c.after_delete {
                    deps.extend(dels.get(old).into_iter().flatten().copied());
                }
            }
            StepOp::DeleteReplaced | StepOp::Delete => {
                // Whatever referred to it in state goes (or moves off it) first.
                for dependent in state_dependents.get(&c.urn).into_iter().flatten() {
                    if *dependent == &c.urn {
                        continue;
                    }
                    deps.extend(dels.get(dependent).into_iter().flatten().copied());
                    // Deleted first, its dependents move to what comes next after it
                    // is gone, rather than before: all of them for a delete-before-replace,
                    // those that stand on the step that waits for this delete (a create,
                    // update or replacement), and that step itself if it stood on it.
                    let on_taker = |taker: &&Urn| *taker == *dependent || plan_dependents.get(*taker).is_some_and(|d| d.contains(dependent));
                    let dbr = steps[s].op == StepOp::DeleteReplaced && c.delete_before_replace;
                    let first = dbr || steps[s].op == StepOp::Delete && taken_over.get(&c.urn).is_some_and(on_taker);
                    if !first {
                        deps.extend(fwd.get(dependent).copied());
                    }
                }
                if steps[s].op == StepOp::DeleteReplaced && !c.delete_before_replace {
                    deps.push(fwd[&c.urn]);
                    for dependent in plan_dependents.get(&c.urn).into_iter().flatten() {
                        deps.extend(fwd.get(dependent).copied());
                    }
                }
            }
        }
        deps.retain(|&d| d != s);
        deps.sort_unstable();
        deps.dedup();
        steps[s].deps = deps;
    }

    // The rules above cannot loop for plans the planner makes; a hand-edited plan could.
    let mut indegree: Vec<usize> = steps.iter().map(|s| s.deps.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); steps.len()];
    for (i, s) in steps.iter().enumerate() {
        for &d in &s.deps {
            dependents[d].push(i);
        }
    }
    let mut queue: Vec<usize> = (0..steps.len()).filter(|&i| indegree[i] == 0).collect();
    let mut seen = 0;
    while let Some(i) = queue.pop() {
        seen += 1;
        for &j in &dependents[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                queue.push(j);
            }
        }
    }
    if seen != steps.len() {
        return Err(Error::BadPlan(
            "its steps depend on each other in a loop (a delete-before-replace resource, or a renamed declaration created after its old name's delete, whose dependents are replaced create-before-delete); set delete_before_replace on those dependents too".into(),
        ));
    }
    Ok(steps)
}

/// One apply in progress.
struct Run<'a> {
    plan: &'a Plan,
    providers: &'a Providers,
    steps: &'a [Step],
    dependents: Vec<Vec<usize>>,
    waiting: Vec<usize>,
    /// Per change: its live resource before the apply, if it had one.
    old: Vec<Option<&'a ResourceState>>,
    /// The live resources before the apply.
    live: Vec<&'a ResourceState>,
    /// Their positions in `live` by URN, built when first needed: for a change not
    /// found in order, or a reference to a resource that no step changes.
    by_urn: OnceCell<HashMap<&'a Urn, usize>>,
    /// Resources created, updated or replaced so far.
    new: HashMap<Urn, ResourceState>,
    /// Resources with a create, update or replacement step: until it is done, their
    /// outputs are unknown, not the old ones.
    changing: HashSet<&'a Urn>,
    /// Per change: a replacement that turned out not to be needed once values were known.
    downgraded: Vec<bool>,
    /// Per step: what its begin record said, to keep it pending if its call fails
    /// uncertainly, and the operation it really performed. Shared with the step's call,
    /// which records it: a panicking call returns nothing.
    begun: Vec<Option<(Arc<PendingOperation>, StepOp)>>,
    /// Changes whose old resource is gone (deleted or forgotten).
    deleted: Vec<bool>,
    skipped: Vec<bool>,
    reports: Vec<StepReport>,
    summary: Summary,
    state: &'a StackState,
    journal: Arc<dyn Journal>,
    progress: Option<Arc<dyn Progress>>,
    /// Identifies this apply's records in the journal.
    op_id: u64,
    /// Steps whose call failed in a way that may still have changed the cloud.
    uncertain: Vec<PendingOperation>,
}

impl<'a> Run<'a> {
    fn new(
        plan: &'a Plan,
        state: &'a StackState,
        providers: &'a Providers,
        steps: &'a [Step],
        journal: Arc<dyn Journal>,
        progress: Option<Arc<dyn Progress>>,
    ) -> Self {
        let mut dependents = vec![Vec::new(); steps.len()];
        for (i, s) in steps.iter().enumerate() {
            for &d in &s.deps {
                dependents[d].push(i);
            }
        }
        let live: Vec<&ResourceState> = state.resources.iter().filter(|r| !r.pending_delete).collect();
        let by_urn = OnceCell::new();
        let old = live_resources(plan, &live, &by_urn);
        Run {
            plan,
            providers,
            steps,
            dependents,
            waiting: steps.iter().map(|s| s.deps.len()).collect(),
            old,
            live,
            by_urn,
            new: HashMap::with_capacity_and_hasher(steps.len(), Default::default()),
            changing: steps
                .iter()
                .filter(|s| matches!(s.op, StepOp::Create | StepOp::Update | StepOp::CreateReplacement))
                .map(|s| &plan.changes[s.change].urn)
                .collect(),
            downgraded: vec![false; plan.changes.len()],
            begun: vec![None; steps.len()],
            deleted: vec![false; plan.changes.len()],
            skipped: vec![false; steps.len()],
            reports: Vec::with_capacity(steps.len()),
            summary: Summary::default(),
            state,
            journal,
            progress,
            op_id: {
                use std::hash::BuildHasher;
                std::collections::hash_map::RandomState::new().hash_one(Instant::now())
            },
            uncertain: Vec::new(),
        }
    }

    /// Refuses, before anything is called or recorded, a plan whose changes do not fit
    /// the state it is applied to: one edited by hand, or cut. Each change at most once;
    /// a create only of what state does not have; an update, replace or delete only of
    /// the resource with the id the plan names. The planner never makes such a plan.
    fn check_changes(&self) -> Result<()> {
        let bad = |c: &Change, what: String| Err(Error::BadPlan(format!("{what} ({}); make the plan again with `preview --out`", c.urn)));
        let mut seen: std::collections::HashSet<(&Urn, bool)> = std::collections::HashSet::default();
        for (ci, c) in self.plan.changes.iter().enumerate() {
            if c.action == Action::Same {
                continue;
            }
            if !seen.insert((&c.urn, c.pending_delete)) {
                return bad(c, "it changes a resource twice".into());
            }
            let live = self.old[ci];
            match (c.action, c.pending_delete) {
                (Action::Create, _) => {
                    if let Some(r) = live {
                        return bad(c, format!("it creates a resource that state already has, as {}", r.id));
                    }
                }
                (Action::Delete, true) => {
                    let found = self.state.resources.iter().any(|r| r.pending_delete && r.urn == c.urn && Some(&r.id) == c.id.as_ref());
                    if !found {
                        return bad(c, format!("it deletes an old copy, {}, that state does not have", c.id.as_deref().unwrap_or("without an id")));
                    }
                }
                (_, _) => match (live, &c.id) {
                    (Some(r), Some(id)) if r.id == *id => {}
                    (Some(r), _) => return bad(c, format!("it changes {}, but state has this resource as {}", c.id.as_deref().unwrap_or("a resource without an id"), r.id)),
                    (None, _) => return bad(c, format!("it changes {}, which state does not have", c.id.as_deref().unwrap_or("a resource without an id"))),
                },
            }
        }
        Ok(())
    }

    /// Runs the steps: each call as soon as its last dependency is done, up to `limit`
    /// at once. The calls are polled here, on the apply's own task, rather than spawned:
    /// a call that ends wakes this task alone, and the steps it unblocks begin in the
    /// same poll, with no hop to another thread and back. A provider's calls wait on the
    /// network, not the CPU; the HTTP connections they use run as tasks of their own.
    async fn execute(&mut self, limit: usize) {
        let mut ready: VecDeque<usize> = (0..self.steps.len()).filter(|&s| self.waiting[s] == 0).collect();
        let mut running = FuturesUnordered::new();
        loop {
            while running.len() < limit {
                let Some(s) = ready.pop_front() else { break };
                if self.skipped[s] {
                    continue;
                }
                // Steps that end without waiting (no call, a memory journal and a provider
                // that answers at once) never yield on their own: each takes from tokio's
                // budget, so a long run of them still lets the runtime's other tasks in.
                tokio::task::coop::consume_budget().await;
                match self.start(s) {
                    Started::Call(pending, call) => {
                        // A downgraded replacement updates in place: report what is done.
                        let op = if pending.kind == StepOp::Update { StepOp::Update } else { self.steps[s].op };
                        if let Some(p) = &self.progress {
                            p.started(&pending.urn, op);
                        }
                        let pending = Arc::new(pending);
                        self.begun[s] = Some((pending.clone(), op));
                        let journal = self.journal.clone();
                        let (base, step) = (self.state.serial, (self.op_id, s as u32));
                        let t = Instant::now();
                        let mut call = CatchUnwind(Box::pin(journaled(journal, base, step, pending, call)));
                        // Polled once now, so that it is under way (its begin record on
                        // its way to the journal; with a journal that answers at once,
                        // its request sent) before this task turns to the other calls the
                        // same wake-up ended. Then it joins them: the set polls what it is
                        // given at once, with its own waker.
                        match (&mut call).now_or_never() {
                            Some(result) => self.finish_call(s, t.elapsed(), result, &mut ready),
                            None => running.push(async move {
                                let result = call.await;
                                (s, t.elapsed(), result)
                            }),
                        }
                    }
                    Started::Finished(status) => self.finish(s, Duration::ZERO, Ok(status), &mut ready),
                    Started::Refused(error) => self.finish(s, Duration::ZERO, Err(error), &mut ready),
                }
            }
            let Some((s, elapsed, result)) = running.next().await else { break };
            self.finish_call(s, elapsed, result, &mut ready);
        }
    }

    /// The value of a reference, from what this apply has done or from state.
    fn lookup(&self, urn: &Urn, property: &str) -> Option<Value> {
        let r = match self.new.get(urn) {
            Some(r) => r,
            None if self.changing.contains(urn) => return None,
            None => self.live[*self.by_urn.get_or_init(|| index_by_urn(&self.live)).get(urn)?],
        };
        r.outputs.get(property).or_else(|| r.inputs.get(property)).cloned()
    }

    fn resolve(&self, inputs: &[(String, Prop)]) -> std::result::Result<Props, String> {
        inputs
            .iter()
            .map(|(k, p)| {
                let mut missing = None;
                p.try_resolve(&mut |r| {
                    let v = self.lookup(&r.urn, &r.property);
                    if v.is_none() && missing.is_none() {
                        missing = Some(r.clone());
                    }
                    v
                })
                .map_err(|e| format!("input '{k}' could not be computed: {e}"))?
                .map(|v| (k.as_str(), v))
                .ok_or_else(|| match missing {
                    Some(r) => format!(
                        "input '{k}' refers to '{}' of {} '{}', which its provider did not return",
                        r.property,
                        r.urn.ty(),
                        r.urn.name()
                    ),
                    None => format!("input '{k}' could not be resolved"),
                })
            })
            .collect()
    }

    fn start(&mut self, s: usize) -> Started {
        let step = &self.steps[s];
        let change = &self.plan.changes[step.change];
        let provider = self.providers.for_token(&change.ty).cloned();
        let urn = change.urn.clone();
        let timeouts = change.options.timeouts;
        match step.op {
            StepOp::Create | StepOp::Update | StepOp::CreateReplacement => {
                let mut inputs = match self.resolve(&change.inputs) {
                    Ok(i) => i,
                    Err(e) => return Started::Refused(ProviderError::failed(e)),
                };
                let old = self.old[step.change];
                let mut op = step.op;
                if let Some(old) = old {
                    // Values unknown at plan time are known now: the replacement or the
                    // update may turn out to be unnecessary. If so, the physical names
                    // generated for the new copy give way to the existing ones.
                    let mut kept = inputs.clone();
                    for name in &change.generated_names {
                        if let Some(v) = old.inputs.get(name) {
                            kept.insert(name.clone(), v.clone());
                        }
                    }
                    let needed = still_needed(change, &old.inputs, &kept);
                    if op == StepOp::CreateReplacement && needed != Needed::Replace && !self.deleted[step.change] {
                        self.downgraded[step.change] = true;
                        op = StepOp::Update;
                        inputs = kept;
                    }
                    if op == StepOp::Update && needed == Needed::Nothing {
                        self.new.insert(change.urn.clone(), ResourceState {
                            dependencies: change.dependencies.clone().unwrap_or_else(|| old.dependencies.clone()),
                            options: stored(change),
                            ..old.clone()
                        });
                        return Started::Finished(StepStatus::NoOp {
                            reason: "unchanged once unknown values were known".to_owned(),
                        });
                    }
                }
                let provider = provider.expect("checked before the apply started");
                let template = ResourceState {
                    urn: urn.clone(),
                    ty: change.ty.to_string(),
                    id: String::new(),
                    inputs: Props::new(),
                    outputs: Props::new(),
                    dependencies: change.dependencies.clone().unwrap_or_default(),
                    options: stored(change),
                    pending_delete: false,
                };
                let into_state = move |obs: Observed, inputs: Props| ResourceState { id: obs.id, inputs, outputs: obs.outputs, ..template };
                match op {
                    StepOp::Update => {
                        let old = old.expect("an update has a resource in state");
                        let (id, old_inputs) = (old.id.clone(), old.inputs.clone());
                        let pending = self.pending(change, StepOp::Update, Some(&id), None);
                        Started::call(pending, timeouts.update, async move {
                            let obs = provider.update(&urn, &id, &old_inputs, &inputs).await.map_err(Failure::from)?;
                            Ok(StepEffect::Upsert { resource: into_state(obs, inputs) })
                        })
                    }
                    _ => {
                        // A replacement whose old copy is already gone (delete first) is
                        // a plain create as far as state goes.
                        let replaces = op == StepOp::CreateReplacement && !self.deleted[step.change];
                        let kind = if replaces { StepOp::CreateReplacement } else { StepOp::Create };
                        let pending = self.pending(change, kind, None, Some(&inputs));
                        let effect = move |resource| if replaces { StepEffect::Replaced { resource } } else { StepEffect::Upsert { resource } };
                        Started::call(pending, timeouts.create, async move {
                            let e = match provider.create(&urn, &inputs).await {
                                Ok(obs) => return Ok(effect(into_state(obs, inputs))),
                                Err(e) => e,
                            };
                            let ErrorKind::Incomplete { id } = e.kind() else { return Err(e.into()) };
                            let read_back = PendingOperation {
                                kind: StepOp::Update,
                                urn: urn.clone(),
                                id: Some(id.clone()),
                                dependencies: Vec::new(),
                                options: StoredOptions::default(),
                                inputs: Props::new(),
                            };
                            // What is known: its id. The read-back fills in the rest.
                            let resource = into_state(Observed { id: id.clone(), inputs: Props::new(), outputs: Props::new() }, inputs);
                            Err(Failure { error: e, created: Some((effect(resource), read_back)) })
                        })
                    }
                }
            }
            StepOp::DeleteReplaced | StepOp::Delete => {
                if step.op == StepOp::DeleteReplaced {
                    if self.downgraded[step.change] {
                        return Started::Finished(StepStatus::NoOp {
                            reason: "the replacement was not needed once unknown values were known".to_owned(),
                        });
                    }
                    if change.delete_before_replace {
                        if let (Ok(inputs), Some(old)) = (self.resolve(&change.inputs), self.old[step.change]) {
                            if still_needed(change, &old.inputs, &inputs) != Needed::Replace {
                                self.downgraded[step.change] = true;
                                return Started::Finished(StepStatus::NoOp {
                                    reason: "the replacement was not needed once unknown values were known".to_owned(),
                                });
                            }
                        }
                    }
                }
                if change.options.retain_on_delete {
                    return Started::Finished(StepStatus::NoOp { reason: "retained: forgotten, not deleted".to_owned() });
                }
                let Some(old) = self.old_copy(step.change) else {
                    return Started::Finished(StepStatus::NoOp { reason: "not in state".to_owned() });
                };
                let (id, inputs, outputs) = (old.id.clone(), old.inputs.clone(), old.outputs.clone());
                let provider = provider.expect("checked before the apply started");
                let kind = if step.op == StepOp::Delete { StepOp::Delete } else { StepOp::DeleteReplaced };
                let pending = self.pending(change, kind, Some(&id), None);
                Started::call(pending, timeouts.delete, async move {
                    provider.delete(&urn, &id, &inputs, &outputs).await.map_err(Failure::from)?;
                    Ok(StepEffect::Removed { urn, id })
                })
            }
        }
    }

    /// The state entry a delete step removes.
    fn old_copy(&self, ci: usize) -> Option<&'a ResourceState> {
        let change = &self.plan.changes[ci];
        if change.pending_delete {
            self.state.resources.iter().find(|r| r.pending_delete && r.urn == change.urn && Some(&r.id) == change.id.as_ref())
        } else {
            self.old[ci]
        }
    }

    /// What a step's begin record says is pending; `inputs` are a create's.
    fn pending(&self, change: &Change, kind: StepOp, id: Option<&str>, inputs: Option<&Props>) -> PendingOperation {
        let creates = matches!(kind, StepOp::Create | StepOp::CreateReplacement);
        PendingOperation {
            kind,
            urn: change.urn.clone(),
            id: id.map(str::to_owned),
            dependencies: if creates { change.dependencies.clone().unwrap_or_default() } else { Vec::new() },
            options: if creates { stored(change) } else { StoredOptions::default() },
            inputs: inputs.cloned().unwrap_or_default(),
        }
    }

    /// Takes the end of step `s`'s call: its outcome, or the message of its panic.
    fn finish_call(
        &mut self,
        s: usize,
        elapsed: Duration,
        result: std::result::Result<Result<StepEffect, Failure>, String>,
        ready: &mut VecDeque<usize>,
    ) {
        // A provider that panics has a bug; its step fails like any other, as uncertain:
        // the call may have taken effect.
        let result = match result {
            Ok(outcome) => outcome,
            Err(panic) => Err(ProviderError::panicked(&panic).into()),
        };
        let status = match result {
            Ok(StepEffect::Upsert { resource } | StepEffect::Replaced { resource }) => {
                self.new.insert(resource.urn.clone(), resource);
                Ok(StepStatus::Done)
            }
            Ok(_) => Ok(StepStatus::Done),
            Err(Failure { error, created: Some((effect, read_back)) }) => {
                // The resource exists: recorded, and read back before the next plan.
                if let StepEffect::Upsert { resource } | StepEffect::Replaced { resource } = effect {
                    self.new.insert(resource.urn.clone(), resource);
                }
                self.uncertain.push(read_back);
                Err(error)
            }
            Err(f) => {
                // The cloud may have done it: it stays pending, exactly as begun.
                if let (true, Some((pending, _))) = (f.error.is_uncertain(), &self.begun[s]) {
                    self.uncertain.push(PendingOperation::clone(pending));
                }
                Err(f.error)
            }
        };
        self.finish(s, elapsed, status, ready);
    }

    fn finish(&mut self, s: usize, elapsed: Duration, status: Result<StepStatus, ProviderError>, ready: &mut VecDeque<usize>) {
        let step = &self.steps[s];
        let change = &self.plan.changes[step.change];
        let status = status.unwrap_or_else(|error| {
            let op = self.begun[s].as_ref().map_or(step.op, |(_, op)| *op);
            StepStatus::Failed { error: error.at(&change.urn, provider_op(op)) }
        });
        match &status {
            StepStatus::Failed { .. } => self.skip_dependents(s, &change.urn),
            _ => {
                if matches!(step.op, StepOp::Delete | StepOp::DeleteReplaced)
                    && !(step.op == StepOp::DeleteReplaced && self.downgraded[step.change])
                {
                    self.deleted[step.change] = true;
                }
                let counted = match (step.op, &status) {
                    (StepOp::Create, _) => Some(Action::Create),
                    (StepOp::Update, StepStatus::Done) => Some(Action::Update),
                    (StepOp::CreateReplacement, _) if self.downgraded[step.change] => {
                        matches!(status, StepStatus::Done).then_some(Action::Update)
                    }
                    (StepOp::CreateReplacement, _) => Some(Action::Replace),
                    (StepOp::Delete, _) => Some(Action::Delete),
                    _ => None,
                };
                if let Some(a) = counted {
                    self.summary.add(a);
                }
                for &d in &self.dependents[s] {
                    self.waiting[d] -= 1;
                    if self.waiting[d] == 0 {
                        ready.push_back(d);
                    }
                }
            }
        }
        let op = self.begun[s].as_ref().map_or(step.op, |(_, op)| *op);
        let report = StepReport { urn: change.urn.clone(), op, status, elapsed };
        if let Some(p) = &self.progress {
            p.finished(&report);
        }
        self.reports.push(report);
    }

    fn skip_dependents(&mut self, failed: usize, because: &Urn) {
        let mut stack: Vec<usize> = self.dependents[failed].clone();
        while let Some(d) = stack.pop() {
            if self.skipped[d] {
                continue;
            }
            self.skipped[d] = true;
            let c = &self.plan.changes[self.steps[d].change];
            let report = StepReport {
                urn: c.urn.clone(),
                op: self.steps[d].op,
                status: StepStatus::Skipped { because: because.clone() },
                elapsed: Duration::ZERO,
            };
            if let Some(p) = &self.progress {
                p.finished(&report);
            }
            self.reports.push(report);
            stack.extend(self.dependents[d].iter().copied());
        }
    }

    /// Assembles the new state from what happened.
    fn into_report(mut self, started: Instant) -> ApplyReport {
        let mut entries = Vec::with_capacity(self.plan.changes.len());
        for (ci, c) in self.plan.changes.iter().enumerate() {
            if c.action == Action::Delete {
                if !self.deleted[ci] {
                    entries.extend(self.old_copy(ci).cloned());
                }
                continue;
            }
            match (self.new.remove(&c.urn), self.old[ci]) {
                (Some(new), Some(old))
                    if c.action == Action::Replace && !self.deleted[ci] && !self.downgraded[ci] =>
                {
                    // Created the replacement, but the old one is not deleted (yet): the
                    // next apply deletes it.
                    entries.push(new);
                    entries.push(ResourceState { pending_delete: true, ..old.clone() });
                }
                (Some(new), _) => entries.push(new),
                // Deleted first (delete-before-replace), then the create failed.
                (None, Some(_)) if self.deleted[ci] => {}
                // Field by field: `..old.clone()` would copy the dependencies and
                // options only to drop them, for each unchanged resource of every apply.
                (None, Some(old)) if c.action == Action::Same => entries.push(ResourceState {
                    urn: old.urn.clone(),
                    ty: old.ty.clone(),
                    id: old.id.clone(),
                    inputs: old.inputs.clone(),
                    outputs: old.outputs.clone(),
                    dependencies: c.dependencies.clone().unwrap_or_else(|| old.dependencies.clone()),
                    options: stored(c),
                    pending_delete: old.pending_delete,
                }),
                (None, Some(old)) => entries.push(old.clone()),
                (None, None) => {}
            }
        }
        let mut state = StackState {
            serial: self.state.serial + 1,
            user_state: self.plan.user_state.clone(),
            resources: entries,
            pending: std::mem::take(&mut self.uncertain),
            ..self.state.clone_without_resources()
        };
        state.sort_resources();
        let (outputs, output_errors) = stack_outputs(self.plan, &state, &self.state.outputs);
        state.outputs = outputs;
        ApplyReport { steps: self.reports, state, summary: self.summary, elapsed: started.elapsed(), output_errors }
    }
}

/// The values of the stack outputs `plan` exports, from what `state` now holds, and
/// why each whose function failed did. One not known (a step it depends on failed) or
/// failed keeps the value it had `before`.
fn stack_outputs(
    plan: &Plan,
    state: &StackState,
    before: &BTreeMap<String, Value>,
) -> (BTreeMap<String, Value>, BTreeMap<String, String>) {
    let mut values = BTreeMap::new();
    let mut errors = BTreeMap::new();
    for (name, prop) in &plan.outputs {
        let value = prop.try_resolve(&mut |r| {
            let resource = state.resource(&r.urn)?;
            resource.outputs.get(&r.property).or_else(|| resource.inputs.get(&r.property)).cloned()
        });
        let value = value.unwrap_or_else(|error| {
            errors.insert(name.clone(), error);
            None
        });
        if let Some(v) = value.or_else(|| before.get(name).cloned()) {
            values.insert(name.clone(), v);
        }
    }
    (values, errors)
}

enum Started {
    /// A provider call to make, with what is pending while it runs.
    Call(PendingOperation, CallFuture),
    /// Decided without a provider call.
    Finished(StepStatus),
    /// Failed before its provider call (an input could not be resolved).
    Refused(ProviderError),
}

impl Started {
    fn call<F>(pending: PendingOperation, timeout: Option<Duration>, fut: F) -> Started
    where
        F: std::future::Future<Output = std::result::Result<StepEffect, Failure>> + Send + 'static,
    {
        Started::Call(
            pending,
            Box::pin(async move {
                match timeout {
                    Some(t) => match tokio::time::timeout(t, fut).await {
                        Ok(r) => r,
                        // The request was in flight: it may have been carried out.
                        Err(_) => Err(ProviderError::uncertain(format!("timed out after {t:?} (custom timeout)")).into()),
                    },
                    None => fut.await,
                }
            }),
        )
    }
}

/// Runs a step's call between its journal records. The begin is durable before the
/// call; an uncertain failure records no end, so the step stays pending.
async fn journaled(
    journal: Arc<dyn Journal>,
    base: u64,
    step: (u64, u32),
    pending: Arc<PendingOperation>,
    call: CallFuture,
) -> Result<StepEffect, Failure> {
    if let Err(e) = journal.record(JournalRecord::Begin { base, step, op: PendingOperation::clone(&pending) }).await {
        return Err(ProviderError::failed(format!("not started: the journal could not record it: {e}")).into());
    }
    let result = call.await;
    let end = match &result {
        Ok(effect) => Some(effect.after(&pending)),
        Err(Failure { created: Some((effect, read_back)), .. }) => {
            // The resource exists but is unfinished: that it must be read back is a step
            // of its own, begun and never ended, as a crash would leave it. Written
            // first: if it cannot be, the create stays pending (no end) and is settled by
            // a look-up, never recorded as finished.
            let read_step = (step.0, step.1 | 1 << 31);
            let begun = journal.record(JournalRecord::Begin { base, step: read_step, op: read_back.clone() }).await;
            begun.is_ok().then(|| effect.after(&pending))
        }
        Err(f) if !f.error.is_uncertain() => Some(StepEffect::Nothing),
        Err(_) => None,
    };
    if let Some(effect) = end {
        // If this write fails the step stays pending in the journal; the snapshot
        // written at the end of the apply records the truth, and a crash before it
        // is settled by a look-up, as for any pending step.
        let _ = journal.record(JournalRecord::End { base, step, effect }).await;
    }
    result
}

#[derive(Debug, PartialEq, Eq)]
enum Needed {
    Nothing,
    Update,
    Replace,
}

/// What a change still needs once every input is known.
fn still_needed(change: &Change, old: &Props, new: &Props) -> Needed {
    let replacing_props: Vec<&str> = change.diffs.iter().filter(|d| d.replaces).map(|d| d.name.as_str()).collect();
    let mut needed = Needed::Nothing;
    let keys = old.keys().chain(new.keys());
    for k in keys {
        if old.get(k) != new.get(k) {
            if replacing_props.contains(&k) || (change.action == Action::Replace && !change.may_replace) {
                return Needed::Replace;
            }
            needed = Needed::Update;
        }
    }
    if change.action == Action::Replace && !change.may_replace {
        return Needed::Replace;
    }
    needed
}

fn stored(change: &Change) -> StoredOptions {
    StoredOptions {
        protect: change.options.protect,
        retain_on_delete: change.options.retain_on_delete,
        delete_timeout_ms: change.options.timeouts.delete.map(|d| d.as_millis() as u64),
        parent: change.options.parent.clone(),
    }
}
