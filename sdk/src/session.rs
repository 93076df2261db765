//! Running a stack against a state store: load, lock, journal, commit.

use std::sync::Arc;

use cairn_state::{Durable, JournalRecord, Lock, StackState, Store};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::apply::{apply, ApplyReport};
use crate::error::Result;
use crate::plan::Plan;
use crate::recover::{resolve_interrupted, settle_late, Recovery};
use crate::refresh::RefreshReport;
use crate::stack::Stack;

/// A stack opened for changes: it holds the stack's lock in its store until
/// [`Session::close`]. Every apply is journaled step by step and committed as a new
/// snapshot when it ends.
///
/// The lock is a lease: the session renews it in the background every third of the
/// lease (a task on the runtime it was opened on), and if the store says it was taken
/// over or cleared, every later write is refused ([`Session::lease_lost`] tells at once).
///
/// A session dropped without `close` stops renewing: its lease runs out, and another
/// process may take the stack over then, as after a crash. When a panic unwinds through
/// it, the lock is released on the way out (waiting at most 10 s for the store).
///
/// An operation may be cancelled by dropping its future (a `tokio::select!` on Ctrl-C,
/// a `tokio::time::timeout`): what it did is in the journal, and the session's next
/// operation reads it back before anything else, settling a call it cut off as a crash
/// recovery would. Until then [`Session::preview`] and [`Session::user_state`] fail with
/// [`Error::Interrupted`](crate::Error::Interrupted), and [`Session::state`] may lack
/// what the cancelled operation did.
///
/// ```no_run
/// # async fn run(stack: cairn_sdk::Stack<u32>) -> cairn_sdk::Result<()> {
/// let store = cairn_state::open(cairn_state::DEFAULT_LOCATION).await?;
/// let mut session = stack.lock(store, "up").await?;
/// let result = session.up(&3).await;
/// session.close().await?;
/// let report = result?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Session<S> {
    stack: Stack<S>,
    store: Arc<dyn Store>,
    lock: Lock,
    state: StackState,
    recovered: Vec<Recovery>,
    /// Set when a commit failed: the store's snapshot no longer matches `state`, so the
    /// session refuses further changes until the stack is reopened (which replays the
    /// journal, where every step is).
    broken: Option<String>,
    /// Set while an operation that changes the state runs (an apply, a state write, an
    /// event record), cleared when it ends: still set, its future was dropped before it
    /// ended (a `select!`, a timeout, an aborted task), and `state` may lack what it did.
    /// The next operation loads the state again first ([`Session::resume`]).
    unfinished: Option<&'static str>,
    /// The store's commit under way, on a task of its own: a commit, once started, runs
    /// to its end even if its operation is cancelled, and the next operation waits for
    /// it rather than writing beside it.
    committing: Option<tokio::task::JoinHandle<std::result::Result<(), cairn_state::StateError>>>,
    /// Event records in the journal since the last snapshot.
    journaled_events: usize,
    /// The stack's journal, opened on first use and kept: opening it (the store checks
    /// the lock, and the file store its torn tail) is not paid again by each event.
    journal: Option<Arc<dyn cairn_state::Journal>>,
    /// An event record was staged in the journal and may not be durable yet.
    staged: bool,
    /// When an apply last ended with steps whose calls may still take effect (left
    /// pending): settling them waits out what is left of the landing window after it.
    uncertain_since: Option<tokio::time::Instant>,
    /// Dropped with the session: tells the thread of a spawned reconciler that its
    /// runtime, which drives tasks the session's clients started, may stop.
    runtime_hold: Option<tokio::sync::oneshot::Sender<()>>,
    /// Renews the lease until the session is dropped or closed. Dropped first, so it
    /// has stopped when a panic releases the lock.
    renewer: Renewer,
    /// Releases the lock if a panic unwinds through the session before its close.
    unlock_on_panic: UnlockOnPanic,
}

/// How many event records the journal takes before they are folded into a snapshot:
/// bounds the journal of a stack whose events change nothing to apply.
const EVENT_RECORDS_PER_SNAPSHOT: usize = 1000;

impl<S> Session<S>
where
    S: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
{
    /// [`Stack::lock`]: takes the lock, then loads and settles the state.
    pub(crate) async fn open(stack: &Stack<S>, store: Arc<dyn Store>, operation: &str) -> Result<Session<S>> {
        stack.load_references(&*store).await;
        let lock = store.lock(stack.name(), operation).await?;
        // Both at once: opening settles pending operations through the providers, which
        // may take longer than a lease.
        let mut renewer = Renewer::start(store.clone(), lock.clone());
        let mut unlock_on_panic = UnlockOnPanic(Some((store.clone(), lock.clone())));
        let mut release = ReleaseIfCancelled(Some((store.clone(), lock.clone())));
        let loaded = Self::load_locked(stack, &*store, &lock).await;
        if loaded.is_ok() {
            release.0 = None;
        }
        match loaded {
            Ok((state, recovered)) => Ok(Session {
                stack: stack.clone(),
                store,
                lock,
                state,
                recovered,
                broken: None,
                unfinished: None,
                uncertain_since: None,
                committing: None,
                journaled_events: 0,
                journal: None,
                staged: false,
                runtime_hold: None,
                unlock_on_panic,
                renewer,
            }),
            Err(e) => {
                unlock_on_panic.0 = None;
                renewer.stop().await;
                let _ = store.unlock(lock).await;
                release.0 = None;
                Err(e)
            }
        }
    }

    /// The stack's state as the lock holder loads it: created if there is none, with
    /// interrupted operations settled and the result committed.
    async fn load_locked(stack: &Stack<S>, store: &dyn Store, lock: &Lock) -> Result<(StackState, Vec<Recovery>)> {
        let Some(state) = store.load(stack.name()).await? else {
            // The first snapshot: the journal needs one to apply to.
            let state = stack.new_state();
            store.commit(lock, &state).await?;
            return Ok((state, Vec::new()));
        };
        let (state, recovered, changed) = Self::settle_loaded(stack, state).await?;
        if changed {
            store.commit(lock, &state).await?;
        }
        Ok((state, recovered))
    }

    /// A loaded state as its lock holder takes it, and whether that must be written as
    /// the snapshot.
    async fn settle_loaded(stack: &Stack<S>, state: StackState) -> Result<(StackState, Vec<Recovery>, bool)> {
        stack.check_state(&state)?;
        if state.pending.is_empty() && !state.replayed {
            return Ok((state, Vec::new(), false));
        }
        // Operations left pending are settled. Journal records the snapshot lacks (a
        // process died before its commit) are written into a snapshot with a new serial
        // first: without it, a plan saved before that process's apply would still match
        // the state, though the apply's steps (replayed here) changed the resources.
        let (mut settled, recovered) = if state.pending.is_empty() {
            let mut next = state;
            next.serial += 1;
            (next, Vec::new())
        } else {
            resolve_interrupted(&state, stack.providers()).await?
        };
        settled.replayed = false;
        Ok((settled, recovered, true))
    }
}

impl<S> Session<S>
where
    S: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
{
    /// The stack's current state.
    pub fn state(&self) -> &StackState {
        &self.state
    }

    /// How interrupted operations were settled since the session opened.
    pub fn recovered(&self) -> &[Recovery] {
        &self.recovered
    }

    /// The user state recorded for the stack (`S::default()` before the first deploy).
    pub fn user_state(&self) -> Result<S> {
        self.finished()?;
        self.stack.user_state(&self.state)
    }

    /// Plans the changes for user state `s`.
    pub fn preview(&self, s: &S) -> Result<Plan> {
        self.finished()?;
        self.stack.preview(s, &self.state)
    }

    pub(crate) fn preview_with_graph(&self, s: &S) -> Result<(Plan, crate::Graph)> {
        self.finished()?;
        self.stack.preview_with_graph(s, &self.state)
    }

    /// Plans the deletion of everything.
    pub fn preview_destroy(&self) -> Result<Plan> {
        self.finished()?;
        self.stack.preview_destroy(&self.state)
    }

    /// Applies `plan`, journaling each step, and commits the new state, also when steps
    /// failed (the report says which).
    pub async fn apply(&mut self, plan: &Plan) -> Result<ApplyReport> {
        self.resume().await?;
        let outer = self.unfinished.replace("apply");
        let applied = self.apply_resumed(plan).await;
        self.unfinished = outer;
        applied
    }

    async fn apply_resumed(&mut self, plan: &Plan) -> Result<ApplyReport> {
        let restored;
        let plan = match self.with_functions(plan)? {
            Some(p) => {
                restored = p;
                &restored
            }
            None => plan,
        };
        let journal = self.journal().await?;
        // Steps that failed uncertainly stay pending in the new state: a timed-out create
        // may still land, so they are settled when the next operation starts.
        self.usable()?;
        let applied = apply(plan, &self.state, self.stack.providers(), self.stack.apply_options(), journal).await;
        // Events staged before the apply are durable before it is reported or committed;
        // its first step's record has usually carried them already.
        self.flush().await?;
        let report = applied?;
        if !report.state.pending.is_empty() {
            self.uncertain_since = Some(tokio::time::Instant::now());
        }
        if !report.succeeded() {
            // A journal that failed stays failed: the next apply opens it again.
            self.journal = None;
        }
        self.commit(report.state.clone()).await?;
        Ok(report)
    }

    /// A plan read from a file has its outputs' functions ([`Output::map`](crate::Output::map),
    /// [`interpolate!`](crate::interpolate)) without their bodies: they are taken from
    /// the program rendered again from the plan's user state. `None` when none lacks.
    fn with_functions(&self, plan: &Plan) -> Result<Option<Plan>> {
        let lacking = |inputs: &[(String, crate::Prop)]| inputs.iter().any(|(_, p)| p.lacks_functions());
        if !plan.changes.iter().any(|c| lacking(&c.inputs)) && !lacking(&plan.outputs) {
            return Ok(None);
        }
        let s = self.stack.user_state_from(&plan.user_state)?;
        let graph = self.stack.render(&s)?;
        let mut plan = plan.clone();
        for change in plan.changes.iter_mut().filter(|c| lacking(&c.inputs)) {
            let node = graph.find(&change.urn).map(|i| &graph.nodes[i]);
            for (name, prop) in change.inputs.iter_mut().filter(|(_, p)| p.lacks_functions()) {
                let declared = node.and_then(|n| n.decl.get(name)).ok_or_else(|| {
                    crate::Error::BadPlan(format!("{} input '{name}': the program no longer declares it", change.urn))
                })?;
                prop.restore_functions(declared)
                    .map_err(|why| crate::Error::BadPlan(format!("{} input '{name}': {why}; make the plan again", change.urn)))?;
            }
        }
        for (name, prop) in plan.outputs.iter_mut().filter(|(_, p)| p.lacks_functions()) {
            let declared = graph.exports().iter().find(|(n, _)| n == name).map(|(_, p)| p).ok_or_else(|| {
                crate::Error::BadPlan(format!("stack output '{name}': the program no longer exports it; make the plan again"))
            })?;
            prop.restore_functions(declared)
                .map_err(|why| crate::Error::BadPlan(format!("stack output '{name}': {why}; make the plan again")))?;
        }
        Ok(Some(plan))
    }

    /// Makes `state` the session's state and writes it as the snapshot. The session
    /// takes the state first: what the cloud now holds must never be planned from the
    /// old state, even if the write fails.
    async fn commit(&mut self, state: StackState) -> Result<()> {
        let outer = self.unfinished.replace("state write");
        let committed = self.commit_marked(state).await;
        self.unfinished = outer;
        committed
    }

    async fn commit_marked(&mut self, state: StackState) -> Result<()> {
        self.state = state;
        self.journaled_events = 0;
        self.flush().await?;
        if !self.store.journal_outlives_commit() {
            self.journal = None;
        }
        let (store, lock, state) = (self.store.clone(), self.lock.clone(), self.state.clone());
        self.committing = Some(tokio::spawn(async move { store.commit(&lock, &state).await }));
        if let Some(Err(e)) = self.wait_for_commit().await {
            self.broken = Some(e.to_string());
            return Err(e.into());
        }
        Ok(())
    }

    /// Refuses to plan from a state that a cancelled operation may have left behind.
    fn finished(&self) -> Result<()> {
        match self.unfinished {
            None => Ok(()),
            Some(operation) => Err(crate::Error::Interrupted { stack: self.state.stack.clone(), operation }),
        }
    }

    /// After an operation whose future was dropped before it ended, loads the state
    /// again as opening the stack does: the journal has every step the operation began
    /// (steps left without an answer are settled through the providers) and every event
    /// it recorded. Until this succeeds the session plans nothing; cancelled or failed
    /// (the store unreachable), it is tried again by the next operation.
    async fn resume(&mut self) -> Result<()> {
        if self.unfinished.is_none() {
            return Ok(());
        }
        self.usable()?;
        // A commit it started ends first: the load must not read the snapshot while it
        // is being replaced, nor commit beside it. Its outcome is what the load finds.
        // Each handle is let go only once it is done, in case this is cancelled too.
        self.wait_for_commit().await;
        // What the dropped operation queued is written before the journal is read.
        if let Some(journal) = self.journal.clone() {
            journal.flush().await.map_err(|e| self.journal_failed(e.into()))?;
        }
        self.staged = false;
        let stack = self.state.stack.clone();
        let gone = || crate::Error::SessionBroken { stack: stack.clone(), cause: "its snapshot is no longer in the store".to_owned() };
        let loaded = self.store.load(&stack).await?.ok_or_else(gone)?;
        let (state, recovered, changed) = Self::settle_loaded(&self.stack, loaded).await?;
        if changed {
            // Through the session's own commit: tracked, should this be cancelled too.
            self.commit(state).await?;
        } else {
            // Its event records since the last snapshot, if any, are still the journal's
            // (and counted): only a commit folds them.
            self.state = state;
        }
        self.recovered.extend(recovered);
        self.unfinished = None;
        Ok(())
    }

    /// Waits for the commit under way (the one just started, or one that a cancelled
    /// operation left running) and gives its outcome; `None` if there is none.
    async fn wait_for_commit(&mut self) -> Option<std::result::Result<(), cairn_state::StateError>> {
        let committing = self.committing.as_mut()?;
        let outcome = committing.await;
        self.committing = None;
        Some(outcome.unwrap_or_else(|e| match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(_) => Err(cairn_state::StateError::Remote("the runtime shut down while the state was being written".to_owned())),
        }))
    }

    fn usable(&self) -> Result<()> {
        match &self.broken {
            None => Ok(()),
            Some(why) => Err(crate::Error::SessionBroken { stack: self.state.stack.clone(), cause: why.clone() }),
        }
    }

    /// Settles operations left pending (by a crash, or by an uncertain failure in an
    /// earlier apply of this session) and records the result. `up`, `destroy` and
    /// `refresh` do this first; call it before `preview` if the state has pending
    /// operations. Where the cloud does not show such a call done, it first waits what
    /// is left of the providers' landing window after the apply that left it
    /// ([`crate::recover::resolve_interrupted`]), as the call may still land.
    pub async fn settle(&mut self) -> Result<&[Recovery]> {
        self.usable()?;
        self.resume().await?;
        if !self.state.pending.is_empty() {
            // Settling reads the cloud: what was staged is durable first.
            self.flush().await?;
            let (settled, recovered) = settle_late(&self.state, self.stack.providers(), self.uncertain_since).await?;
            self.recovered.extend(recovered);
            self.commit(settled).await?;
            self.uncertain_since = None;
        }
        Ok(&self.recovered)
    }

    /// Previews and applies user state `s`.
    pub async fn up(&mut self, s: &S) -> Result<ApplyReport> {
        self.settle().await?;
        let plan = self.preview(s)?;
        self.apply(&plan).await
    }

    /// Deletes every resource of the stack.
    pub async fn destroy(&mut self) -> Result<ApplyReport> {
        self.settle().await?;
        let plan = self.preview_destroy()?;
        self.apply(&plan).await
    }

    /// Reads every resource back, reports drift, and records what was read.
    pub async fn refresh(&mut self) -> Result<RefreshReport> {
        self.settle().await?;
        self.stack.providers().ready(self.state.resources.iter().map(|r| r.ty.as_str())).await?;
        let report = self.stack.refresh_settled(&self.state).await;
        self.commit(report.state.clone()).await?;
        Ok(report)
    }

    /// Records a new user state and the ids of the events that produced it, durably,
    /// before any of those events is acknowledged. It is one journal record, not a new
    /// snapshot, so its cost does not grow with the stack; it still makes a new serial.
    /// After 1,000 such records with no apply between them, the journal is folded into
    /// a snapshot.
    pub async fn record_events(&mut self, user_state: serde_json::Value, ids: &[String]) -> Result<()> {
        self.usable()?;
        self.resume().await?;
        if ids.is_empty() && user_state == self.state.user_state {
            return Ok(());
        }
        self.journal_events(user_state, ids, false).await?;
        if self.journaled_events >= EVENT_RECORDS_PER_SNAPSHOT {
            self.fold_events().await?;
        }
        Ok(())
    }

    /// As [`Session::record_events`], but the record shares the sync of the journal's
    /// next write (an event's apply's first step) instead of paying for one of its own.
    /// The events may be acknowledged only once the returned [`Durable`] resolves. The
    /// session makes it durable at the latest at its next apply, commit, [`Session::flush`]
    /// or close. If it cannot be written, the session is broken, as when `record_events`
    /// fails, and the events, never acknowledged, are delivered again.
    pub async fn stage_events(&mut self, user_state: serde_json::Value, ids: &[String]) -> Result<Durable> {
        self.usable()?;
        self.resume().await?;
        let unchanged = ids.is_empty() && user_state == self.state.user_state;
        if unchanged || self.journaled_events + 1 >= EVENT_RECORDS_PER_SNAPSHOT {
            // Nothing to write, or folded into a snapshot at once: nothing to share.
            self.record_events(user_state, ids).await?;
            return Ok(cairn_state::already_durable());
        }
        Ok(self.journal_events(user_state, ids, true).await?.unwrap_or_else(cairn_state::already_durable))
    }

    /// Writes one event record (or stages it) and moves the state on with it. The
    /// [`Durable`] of a staged record.
    async fn journal_events(&mut self, user_state: serde_json::Value, ids: &[String], stage: bool) -> Result<Option<Durable>> {
        let record = JournalRecord::Events { base: self.state.serial, user_state, ids: ids.to_vec() };
        let journal = match self.journal().await {
            Ok(journal) => journal,
            Err(e) => return Err(self.journal_failed(e)),
        };
        // Written but dropped before the replay below, the record would be on disk and
        // not in `state`.
        let outer = self.unfinished.replace("event record");
        let written = if stage { journal.stage(record.clone()).await.map(Some) } else { journal.record(record.clone()).await.map(|()| None) };
        self.unfinished = outer;
        let durable = written.map_err(|e| self.journal_failed(e.into()))?;
        cairn_state::replay(&mut self.state, [record]);
        self.journaled_events += 1;
        self.staged |= stage;
        Ok(durable)
    }

    /// Makes a record staged by [`Session::stage_events`] durable now; at once if there
    /// is none. A failure breaks the session; a broken session's flush fails, as it may
    /// have lost what was staged.
    pub async fn flush(&mut self) -> Result<()> {
        self.usable()?;
        if !std::mem::take(&mut self.staged) {
            return Ok(());
        }
        let flushed = match &self.journal {
            Some(journal) => journal.flush().await.map_err(crate::Error::from),
            None => Err(crate::Error::SessionBroken {
                stack: self.state.stack.clone(),
                cause: "the journal holding a staged event record was closed".to_owned(),
            }),
        };
        flushed.map_err(|e| self.journal_failed(e))
    }

    /// Breaks the session after a journal write whose outcome is unknown (reopening the
    /// stack replays the journal and finds out), and gives the error back.
    pub(crate) fn journal_failed(&mut self, e: crate::Error) -> crate::Error {
        self.journal = None;
        self.staged = false;
        self.broken = Some(e.to_string());
        e
    }

    /// The stack's journal, opened once per session.
    async fn journal(&mut self) -> Result<Arc<dyn cairn_state::Journal>> {
        if let Some(journal) = &self.journal {
            return Ok(journal.clone());
        }
        let journal = self.store.journal(&self.lock).await?;
        self.journal = Some(journal.clone());
        Ok(journal)
    }

    /// Replaces the stack's state with `state` (`state import`): it takes the stored
    /// state's lineage and the next serial, so it follows what it replaces.
    pub async fn import(&mut self, mut state: StackState) -> Result<()> {
        self.usable()?;
        self.resume().await?;
        self.stack.check_state(&state)?;
        state.lineage = self.state.lineage.clone();
        state.serial = self.state.serial + 1;
        self.commit(state).await
    }

    /// The stack.
    pub fn stack(&self) -> &Stack<S> {
        &self.stack
    }

    /// Keeps `hold` until the session is dropped: see [`crate::events::Reconciler::spawn`].
    pub(crate) fn keep_alive(&mut self, hold: tokio::sync::oneshot::Sender<()>) {
        self.runtime_hold = Some(hold);
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// How long the session's lease lasts unless renewed.
    pub fn lease(&self) -> std::time::Duration {
        self.lock.lease()
    }

    /// The stack's lock: its generation and lease.
    pub fn lock_info(&self) -> &cairn_state::LockInfo {
        &self.lock.info
    }

    /// Resolves when the session's lock is found lost (taken over after its lease
    /// expired, or cleared with `state unlock --force`): the session can write nothing
    /// more. `watch` stops on it. Never resolves while the lock is held.
    pub fn lease_lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.lock.lost()
    }

    /// Writes the event records this session journaled into a snapshot (so the next
    /// session starts from one, not from a journal to replay), and releases the
    /// stack's lock, also if that write fails: the records stay in the journal.
    pub async fn close(mut self) -> Result<()> {
        // Cancelled on its way (a timeout around a slow fold), the lock is let go anyway:
        // what was not folded is in the journal.
        let mut release = ReleaseIfCancelled(Some((self.store.clone(), self.lock.clone())));
        let folded = if self.unfinished.is_none() {
            if self.journaled_events > 0 && self.broken.is_none() { self.fold_events().await } else { Ok(()) }
        } else {
            // After a cancelled operation `state` may lack what it did: the journal has
            // it, and is left for the next session to replay. What that operation started
            // writing lands before the lock is let go.
            let committed = self.wait_for_commit().await.unwrap_or(Ok(()));
            let flushed = match &self.journal {
                Some(journal) => journal.flush().await,
                None => Ok(()),
            };
            committed.and(flushed).map_err(crate::Error::from)
        };
        self.unlock_on_panic.0 = None;
        // Stopped before the release: a renewal landing after it would lock the stack
        // again until the lease ran out.
        self.renewer.stop().await;
        let unlocked = self.store.unlock(self.lock).await;
        release.0 = None;
        unlocked?;
        folded
    }

    /// Writes the state that the event records journaled since the last snapshot
    /// make, as the snapshot. Each record already moved the serial on, so the state
    /// keeps its serial: a plan made from it still applies.
    async fn fold_events(&mut self) -> Result<()> {
        let state = self.state.clone();
        self.commit(state).await
    }
}

/// Renews a session's lease every third of it, on the runtime the session was opened
/// on, until stopped or dropped. A renewal that fails for a passing reason (the store
/// unreachable, or not answering within a fifth of the lease) is tried again sooner; if
/// none succeeds in time, the lease's own clock stops the session's writes before anyone
/// may take over. A lock found lost ends it (and [`Lock::lost`] tells the session).
#[derive(Debug)]
struct Renewer {
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Renewer {
    fn start(store: Arc<dyn Store>, lock: Lock) -> Renewer {
        let task = tokio::spawn(async move {
            let mut wait = lock.renew_every();
            loop {
                tokio::time::sleep(wait).await;
                let attempt = tokio::time::timeout(lock.lease() / 5, store.renew(&lock)).await;
                wait = match attempt {
                    Ok(Ok(())) => lock.renew_every(),
                    Ok(Err(_)) if lock.is_lost() => return,
                    Ok(Err(_)) | Err(_) => lock.lease() / 10,
                };
            }
        });
        Renewer { task: Some(task) }
    }

    /// Stops renewing, once any renewal under way has ended or been abandoned.
    async fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Renewer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The lock [`Session::open`] took, released if its future is dropped before the
/// session exists (a `timeout` around an open that settles slow operations), or if
/// [`Session::close`]'s is dropped before it let the lock go: otherwise the stack would
/// stay locked, by this very process, until the lease ran out. The release runs on a
/// task, as a drop cannot wait; a panic is [`UnlockOnPanic`]'s.
struct ReleaseIfCancelled(Option<(Arc<dyn Store>, Lock)>);

impl Drop for ReleaseIfCancelled {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        if let (Some((store, lock)), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            drop(runtime.spawn(async move {
                let _ = store.unlock(lock).await;
            }));
        }
    }
}

/// How long releasing the lock of a session a panic unwinds through may take.
const UNLOCK_ON_PANIC_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The store and lock of a session, to release if it is dropped by a panic. Dropped
/// otherwise (a session that is not closed), it does nothing: that is a crash, and the
/// stack stays locked until its lease, no longer renewed, ends.
struct UnlockOnPanic(Option<(Arc<dyn Store>, Lock)>);

impl std::fmt::Debug for UnlockOnPanic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("UnlockOnPanic").field(&self.0.is_some()).finish()
    }
}

impl Drop for UnlockOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        use std::io::Write as _;
        let Some((store, lock)) = self.0.take() else { return };
        let stack = lock.stack.clone();
        // Unlocking is async, and the runtime this runs on may be the one unwinding (or
        // a single thread blocked here): it runs on a thread and runtime of its own.
        let (done, result) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new().name(format!("cairn-unlock-{stack}")).spawn(move || {
            let outcome = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime.block_on(async {
                    match tokio::time::timeout(UNLOCK_ON_PANIC_TIMEOUT, store.unlock(lock)).await {
                        Ok(unlocked) => unlocked.map_err(|e| e.to_string()),
                        Err(_) => Err(format!("the store did not answer within {} s", UNLOCK_ON_PANIC_TIMEOUT.as_secs())),
                    }
                }),
                Err(e) => Err(format!("no runtime to release it on: {e}")),
            };
            let _ = done.send(outcome);
        });
        let outcome = match spawned {
            Ok(_) => result.recv_timeout(UNLOCK_ON_PANIC_TIMEOUT + std::time::Duration::from_secs(1)).unwrap_or_else(|_| Err("it took too long".to_owned())),
            Err(e) => Err(format!("no thread to release it on: {e}")),
        };
        // Not eprintln!, which panics if stderr is gone: a panic while panicking aborts.
        let mut stderr = std::io::stderr();
        let _ = match outcome {
            Ok(()) => writeln!(stderr, "cairn: released the lock of stack '{stack}' after the panic"),
            Err(e) => writeln!(stderr, "cairn: could not release the lock of stack '{stack}' after the panic ({e}); `state unlock` releases it"),
        };
    }
}
