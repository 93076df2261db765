//! [`Stack<S>`]: a program, its providers and event rules, and what can be done with
//! them without a store: render, plan, handle an event. [`Stack::lock`] opens a
//! [`Session`], through which every change to a stored stack goes.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use cairn_state::{StackState, Store};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::apply::{ApplyOptions, Progress};
use crate::cx::{Cx, Declared};
use crate::events::rules::{EventPolicy, EventRules, HandlerFuture, HandlerResult, Rejection};
use crate::events::{Event, Pattern};
use crate::error::{Error, Result, ValidationError, ValidationErrors};
use crate::graph::Graph;
use crate::plan::{plan, Plan};
use crate::provider::{Provider, ProviderOf, Providers};
use crate::recover::{resolve_pending, Recovery};
use crate::refresh::{refresh, RefreshReport};
use crate::reference::StackReference;
use crate::session::Session;
use crate::secret::Keyring;

/// How long the store's own errors may last, in a row, before a standby waiting in
/// [`Stack::lock_when_free`] gives up: four default leases, so a leader's death during
/// a blip is still taken over by the standbys that outlived it.
pub const STANDBY_STORE_ERRORS_FOR: std::time::Duration = std::time::Duration::from_secs(60);

/// What a standby waiting in [`Stack::lock_when_free`] found on one look at the lock.
#[derive(Debug)]
#[non_exhaustive]
pub enum Standby<'a> {
    /// Another process holds the stack.
    Held(&'a cairn_state::LockInfo),
    /// The store failed (a service or I/O error) after it had answered before: the
    /// standby tries again at its next poll, and gives up once such errors have lasted
    /// [`STANDBY_STORE_ERRORS_FOR`] in a row.
    #[non_exhaustive]
    StoreFailing {
        /// The store's error.
        error: &'a Error,
        /// How long its errors have lasted in a row (zero at the first).
        failing_for: std::time::Duration,
    },
}

/// Any error a program may return with `?`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a program returns.
pub type ProgramResult = std::result::Result<(), BoxError>;

type Program<S> = dyn Fn(&mut Cx, &S) -> ProgramResult + Send + Sync;

/// A stack: a program that renders the user's state `S` into resources, and the
/// providers that manage them.
///
/// ```
/// use cairn_sdk::{Cx, ProgramResult, Stack};
///
/// #[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
/// struct Shop { web_capacity: u32 }
///
/// fn infra(cx: &mut Cx, shop: &Shop) -> ProgramResult {
///     // cx.add(...) each resource, from `shop`.
///     let _ = (cx, shop);
///     Ok(())
/// }
///
/// let stack = Stack::<Shop>::new("dev").program(infra);
/// assert_eq!(stack.name(), "dev");
/// ```
pub struct Stack<S> {
    name: String,
    program: Option<Arc<Program<S>>>,
    providers: Providers,
    apply_options: ApplyOptions,
    events: Arc<EventRules<S>>,
    /// The URNs the program declared last time it ran, in order. The next render
    /// reuses the one at each position if its resource is still the one declared there
    /// (as nearly always), rather than allocating a new one and freeing it with the
    /// plan. Its length also sizes the next render's vector. Shared by clones, which
    /// run the same program.
    declared: Arc<Mutex<Declared>>,
    /// The stacks whose outputs the program reads.
    references: Arc<Vec<StackReference>>,
    /// Their outputs, as loaded when the stack was last opened. Shared by clones.
    referenced: crate::reference::Shared,
    /// The key that seals the inputs the schema marks secret.
    keyring: Option<Arc<Keyring>>,
}

impl<S> Clone for Stack<S> {
    fn clone(&self) -> Self {
        Stack {
            name: self.name.clone(),
            program: self.program.clone(),
            providers: self.providers.clone(),
            apply_options: self.apply_options.clone(),
            events: self.events.clone(),
            declared: self.declared.clone(),
            references: self.references.clone(),
            referenced: self.referenced.clone(),
            keyring: self.keyring.clone(),
        }
    }
}

impl<S> fmt::Debug for Stack<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Stack")
            .field("name", &self.name)
            .field("providers", &self.providers)
            .field("apply_options", &self.apply_options)
            .field("events", &self.events)
            .finish_non_exhaustive()
    }
}

impl<S> Stack<S>
where
    S: Serialize + DeserializeOwned + Default + Send + Sync + 'static,
{
    /// A stack named `name` with no program (it declares nothing) and no providers.
    pub fn new(name: impl Into<String>) -> Self {
        Stack {
            name: name.into(),
            program: None,
            providers: Providers::new(),
            apply_options: ApplyOptions::default(),
            events: Arc::new(EventRules::default()),
            declared: Arc::default(),
            references: Arc::default(),
            referenced: Arc::default(),
            keyring: None,
        }
    }

    /// Seals the stack's secrets with `keyring` ([`crate::secret`]): the inputs the
    /// schema marks secret that the program sets in plaintext. A [`Secret`](crate::Secret)
    /// the program passes is sealed already, and is opened with whichever loaded keyring
    /// sealed it.
    pub fn secrets(mut self, keyring: Arc<Keyring>) -> Self {
        self.keyring = Some(keyring);
        self
    }

    /// The key that seals the stack's secrets, if it has one.
    pub fn keyring(&self) -> Option<&Arc<Keyring>> {
        self.keyring.as_ref()
    }

    /// A stack whose outputs the program reads with
    /// [`Cx::stack_output`](crate::Cx::stack_output): `StackReference::new("network")`
    /// in the same store, or `.state(url)` for another. Its outputs are read each time
    /// this stack is opened (every command; `watch` when it starts leading).
    #[must_use]
    pub fn reference(mut self, reference: StackReference) -> Self {
        Arc::make_mut(&mut self.references).push(reference);
        self
    }

    /// Reads the outputs of the stacks this one references, for the renders that
    /// follow; `store` is this stack's.
    pub(crate) async fn load_references(&self, store: &dyn Store) {
        if self.references.is_empty() {
            return;
        }
        let loaded = crate::reference::load(&self.references, store).await;
        *self.referenced.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(loaded);
    }

    /// The program: a pure function from `S` to resources.
    #[must_use]
    pub fn program(mut self, program: impl Fn(&mut Cx, &S) -> ProgramResult + Send + Sync + 'static) -> Self {
        self.program = Some(Arc::new(program));
        // Another program declares other resources.
        self.declared = Arc::default();
        self
    }

    /// Registers the provider for its package.
    #[must_use]
    pub fn provider(mut self, provider: impl Provider) -> Self {
        self.providers.insert(Arc::new(provider));
        self
    }

    /// How many provider operations an apply runs at once (default 16).
    #[must_use]
    pub fn parallelism(mut self, n: usize) -> Self {
        self.apply_options.parallelism = n.max(1);
        self
    }

    /// Reports each apply step as it starts and finishes.
    #[must_use]
    pub fn progress(mut self, progress: impl Progress + 'static) -> Self {
        self.apply_options.progress = Some(Arc::new(progress));
        self
    }

    /// Runs `handler` for events whose kind matches `pattern` (exact, or a glob such as
    /// `traffic.*`). Handlers of one event run in the order registered, on the user
    /// state; if any fails or panics, the event changes nothing and is rejected (a panic
    /// as `handler panicked: <message>`). Handlers must be functions of
    /// the event and `S` only: an event may be handled more than once (a redelivery
    /// before it was recorded, or a recheck when a batch breaks the policy).
    #[must_use]
    pub fn on_event(
        mut self,
        pattern: impl Into<Pattern>,
        handler: impl Fn(&Event, &mut S) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        self.events_mut().add_handler(pattern.into(), handler);
        self
    }

    /// An async handler: `|event, s| Box::pin(async move { ...; Ok(()) })`.
    #[must_use]
    pub fn on_event_async(
        mut self,
        pattern: impl Into<Pattern>,
        handler: impl for<'a> Fn(&'a Event, &'a mut S) -> HandlerFuture<'a> + Send + Sync + 'static,
    ) -> Self {
        self.events_mut().add_async_handler(pattern.into(), handler);
        self
    }

    /// A check of the user state after an event's handlers: an `Err` (or a panic) rejects
    /// the event, which then changes nothing and is recorded as rejected.
    #[must_use]
    pub fn guard(mut self, name: impl Into<String>, guard: impl Fn(&S) -> Result<(), BoxError> + Send + Sync + 'static) -> Self {
        self.events_mut().add_guard(name.into(), guard);
        self
    }

    /// The bounds on plans events cause (see [`EventPolicy`]).
    #[must_use]
    pub fn event_policy(mut self, policy: EventPolicy) -> Self {
        self.events_mut().policy = policy;
        self
    }

    /// The stack's event policy.
    pub fn policy(&self) -> &EventPolicy {
        &self.events().policy
    }

    /// Runs the handlers for `event` on `s`, then the guards. On a rejection `s` is left
    /// as it was: they run on a copy, so a handler or guard that panics rejects the event
    /// and leaves nothing half-changed. Makes no cloud call and changes no state.
    pub fn handle_event(&self, event: &Event, s: &mut S) -> Result<(), Rejection>
    where
        S: Clone,
    {
        self.events().handle(event, s)
    }

    /// [`Stack::handle_event`] for stacks with async handlers.
    pub async fn handle_event_async(&self, event: &Event, s: &mut S) -> Result<(), Rejection>
    where
        S: Clone,
    {
        self.events().handle_async(event, s).await
    }

    pub(crate) fn apply_options(&self) -> &ApplyOptions {
        &self.apply_options
    }

    pub(crate) fn events(&self) -> &EventRules<S> {
        &self.events
    }

    pub(crate) fn events_mut(&mut self) -> &mut EventRules<S> {
        Arc::make_mut(&mut self.events)
    }

    /// The stack's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The registered providers.
    pub fn providers(&self) -> &Providers {
        &self.providers
    }

    /// The state of this stack before its first deploy.
    pub fn new_state(&self) -> StackState {
        StackState::new(&self.name)
    }

    /// The user state recorded in `state`, or `S::default()` before the first deploy.
    pub fn user_state(&self, state: &StackState) -> Result<S> {
        self.user_state_from(&state.user_state)
    }

    /// The user state `S` a state or plan records as JSON (`null`: `S::default()`).
    pub(crate) fn user_state_from(&self, recorded: &serde_json::Value) -> Result<S> {
        if recorded.is_null() {
            return Ok(S::default());
        }
        S::deserialize(recorded).map_err(|source| Error::UserState { action: "read", source })
    }

    /// Runs the program on `s` and validates the graph it declares. Makes no cloud call.
    /// A program that panics fails the render with [`Error::Program`] (`the program
    /// panicked: <message>`).
    pub fn render(&self, s: &S) -> Result<Graph> {
        // Taken, not shared: a render running at the same time starts without.
        let declared = std::mem::take(&mut *self.declared.lock().unwrap_or_else(PoisonError::into_inner));
        let references = self.referenced.read().unwrap_or_else(PoisonError::into_inner).clone();
        let mut cx = Cx::reusing(&self.name, declared).with_references(references);
        let ran = match &self.program {
            // A panicking program is an ordinary error: what it declared before is dropped
            // with the failed render.
            Some(program) => crate::panic::catch(|| program(&mut cx, s))
                .unwrap_or_else(|panic| Err(format!("the program panicked: {panic}").into())),
            None => Ok(()),
        };
        let crate::cx::Parts { nodes, distinct, mut declared, exports, errors: collected, components } = cx.into_parts();
        // A failed component stops the program where it passes the error on (as it is,
        // or wrapped in an error of the program's own that keeps it as its source); what
        // was declared until then is validated, and every problem reported at once. Any
        // other error of the program is its own, and reported as it is.
        let component_failed = |e: &crate::BoxError| {
            let first: &(dyn std::error::Error + 'static) = &**e;
            std::iter::successors(Some(first), |c| c.source()).any(|c| c.is::<crate::cx::ComponentFailed>()) && !collected.is_empty()
        };
        let graph = match ran {
            Ok(()) => Ok(()),
            Err(e) if component_failed(&e) => Ok(()),
            Err(e) => Err(Error::program(&self.name, e)),
        }
        .and_then(|()| {
            let built = Graph::from_declared(nodes, distinct)
                .and_then(|g| g.with_components(components))
                .and_then(|g| g.with_exports(exports))
                .and_then(|mut g| g.seal_secret_inputs(&self.name, self.keyring.as_ref()).map(|()| g));
            match built {
                Ok(_) if !collected.is_empty() => Err(Error::from(crate::error::ValidationErrors(collected))),
                Ok(g) => Ok(g),
                Err(crate::error::ValidationErrors(mut found)) => {
                    let mut all = collected;
                    all.append(&mut found);
                    Err(Error::from(crate::error::ValidationErrors(all)))
                }
            }
        });
        // The URNs of a graph differ from one another: a render that declares them
        // again need not check.
        declared.distinct = graph.is_ok();
        *self.declared.lock().unwrap_or_else(PoisonError::into_inner) = declared;
        let graph = graph?;
        self.provider_checks(&graph)?;
        Ok(graph)
    }

    fn provider_checks(&self, graph: &Graph) -> Result<()> {
        let mut errors = Vec::new();
        let mut provider_of = ProviderOf::new(&self.providers);
        for node in &graph.nodes {
            let Some(provider) = provider_of.get(node.decl.ty) else { continue };
            for failure in provider.check(&node.urn, &node.decl) {
                errors.push(ValidationError::Invalid { urn: node.urn.clone(), failure });
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors(errors).into())
        }
    }

    /// Plans the changes that bring `state` to what the program declares for `s`.
    /// Makes no cloud call.
    pub fn preview(&self, s: &S, state: &StackState) -> Result<Plan> {
        self.preview_with_graph(s, state).map(|(plan, _graph)| plan)
    }

    /// [`Stack::preview`], also returning the rendered graph, so a caller on a latency
    /// path can drop it (a thousand declarations take a while to free) after it acts.
    pub(crate) fn preview_with_graph(&self, s: &S, state: &StackState) -> Result<(Plan, Graph)> {
        self.check_state(state)?;
        let graph = self.render(s)?;
        let user_state = serde_json::to_value(s).map_err(|source| Error::UserState { action: "written", source })?;
        let plan = plan(&graph, state, &self.providers, user_state)?;
        crate::apply::check_secrets_open(&plan, state, false)?;
        Ok((plan, graph))
    }

    /// Plans the deletion of every resource in `state`.
    pub fn preview_destroy(&self, state: &StackState) -> Result<Plan> {
        self.check_state(state)?;
        let graph = Graph::build(&self.name, Vec::new())?;
        let plan = plan(&graph, state, &self.providers, state.user_state.clone())?;
        crate::apply::check_secrets_open(&plan, state, false)?;
        Ok(plan)
    }

    /// Reads every resource of `state` back from the cloud and reports drift, changing
    /// nothing: no state is written (`refresh` without `--yes`). Interrupted operations
    /// are settled in memory first, by looking the resources up. To record what was
    /// read, use [`Session::refresh`].
    pub async fn preview_refresh(&self, state: &StackState) -> Result<RefreshReport> {
        self.check_state(state)?;
        let settled = if state.pending.is_empty() {
            std::borrow::Cow::Borrowed(state)
        } else {
            std::borrow::Cow::Owned(resolve_pending(state, &self.providers).await?.0)
        };
        self.providers.ready(settled.resources.iter().map(|r| r.ty.as_str())).await?;
        Ok(self.refresh_settled(&settled).await)
    }

    /// Reads the stack's state from `store` without locking it, for previews. Operations
    /// a crash interrupted are settled in memory (by looking the resources up in the
    /// cloud, which changes nothing) and returned, so the preview is right.
    pub async fn load(&self, store: &dyn Store) -> Result<(StackState, Vec<Recovery>)> {
        self.load_references(store).await;
        let state = match store.load(self.name()).await? {
            Some(state) => state,
            None => return Ok((self.new_state(), Vec::new())),
        };
        self.check_state(&state)?;
        if state.pending.is_empty() {
            return Ok((state, Vec::new()));
        }
        resolve_pending(&state, self.providers()).await
    }

    /// Opens the stack for changes: takes its lock (failing at once, naming the holder,
    /// if another process has it), loads its state and settles interrupted operations,
    /// recording the result. Call [`Session::close`] when done.
    pub async fn lock(&self, store: Arc<dyn Store>, operation: &str) -> Result<Session<S>> {
        Session::open(self, store, operation).await
    }

    /// A session on a fresh in-memory store, for tests and throwaway runs: the same
    /// journaled path as any session, with nothing kept once it is dropped.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// let stack = cairn_sdk::Stack::<u32>::new("dev");
    /// let mut session = stack.in_memory_session().await.unwrap();
    /// let report = session.up(&3).await.unwrap();
    /// assert!(report.succeeded());
    /// assert_eq!(session.user_state().unwrap(), 3);
    /// # });
    /// ```
    pub async fn in_memory_session(&self) -> Result<Session<S>> {
        self.lock(Arc::new(cairn_state::MemoryStore::new()), "in-memory").await
    }

    /// [`Stack::lock`], waiting while another process holds the stack: a standby
    /// replica. It tries again when the holder's lease would expire, and at least every
    /// `poll` (a lease renewed meanwhile is waited for again); `waiting` is told what
    /// each look found: the holder ([`Standby::Held`]), or the store failing
    /// ([`Standby::StoreFailing`]). Each attempt is held back by what
    /// `hold_back` says first: replicas of many stacks hold back more the more stacks
    /// they already lead, so stacks spread over them. Resolves once the lease is this
    /// process's: within `poll` (plus the hold-back) of the old holder's lease running
    /// out after it died.
    ///
    /// An error of the store itself (a service error, an I/O error) once the lock has
    /// been read as held is taken as passing, as a standby outlives a store's blips: it
    /// is tried again every `poll`, and ends the wait only once such errors have lasted
    /// [`STANDBY_STORE_ERRORS_FOR`] in a row. Any other error, and one on the first
    /// attempt (a bucket that does not exist, access denied), ends it at once.
    pub async fn lock_when_free(
        &self,
        store: Arc<dyn Store>,
        operation: &str,
        poll: std::time::Duration,
        hold_back: impl Fn() -> std::time::Duration,
        mut waiting: impl FnMut(Standby<'_>),
    ) -> Result<Session<S>> {
        use cairn_state::StateError;
        // Once the lock was read, the store works: when its errors began, if they did.
        let mut read_once = false;
        let mut failing_since = None;
        loop {
            let wait = hold_back();
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            match self.lock(store.clone(), operation).await {
                Err(e @ crate::Error::State(StateError::Remote(_) | StateError::Io { .. })) if read_once => {
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= STANDBY_STORE_ERRORS_FOR {
                        return Err(e);
                    }
                    waiting(Standby::StoreFailing { error: &e, failing_for: since.elapsed() });
                    tokio::time::sleep(poll).await;
                }
                Err(crate::Error::State(StateError::Locked(locked))) => {
                    (read_once, failing_since) = (true, None);
                    waiting(Standby::Held(&locked.holder));
                    let wait = match locked.holder.lease() {
                        // Just after it would expire, by this host's clock.
                        cairn_state::Lease::Live { remaining, .. } => (remaining + std::time::Duration::from_millis(5)).min(poll),
                        _ => poll,
                    };
                    tokio::time::sleep(wait).await;
                }
                other => return other,
            }
        }
    }

    /// Checks that every provider of the stack can reach its cloud
    /// ([`Provider::ready`]): what a command that will call the
    /// cloud asks before it locks the stack, so a missing credential or region changes
    /// nothing at all.
    pub async fn ready(&self) -> Result<()> {
        self.providers.all_ready().await
    }

    /// Refresh of a state without pending operations, with secrets hidden as in plans.
    pub(crate) async fn refresh_settled(&self, state: &StackState) -> RefreshReport {
        let secrets = self.secret_properties(state);
        // A resource the program no longer declares has no schema here: it is compared
        // value by value, and nothing of it is shown.
        refresh(state, &self.providers, self.apply_options.parallelism, &|urn| secrets.get(urn).copied()).await
    }

    /// The schema of each resource the program declares for the state's `S`, to know
    /// which properties are secret. Empty if the program cannot render.
    fn secret_properties(&self, state: &StackState) -> HashMap<cairn_state::Urn, &'static crate::ResourceType> {
        let graph = self.user_state(state).ok().and_then(|s| self.render(&s).ok());
        graph.map(|g| g.nodes.into_iter().map(|n| (n.urn, n.decl.ty)).collect()).unwrap_or_default()
    }

    pub(crate) fn check_state(&self, state: &StackState) -> Result<()> {
        cairn_state::check_stack_name(&self.name)?;
        if state.stack != self.name {
            return Err(Error::WrongStack { expected: self.name.clone(), found: state.stack.clone() });
        }
        Ok(())
    }
}
