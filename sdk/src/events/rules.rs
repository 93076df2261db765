//! Handlers, guards and the event plan policy, as registered on a [`Stack`](crate::Stack), and how an event runs them.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::{Event, Pattern};
use crate::plan::{Action, Plan};
use crate::Urn;
use crate::stack::BoxError;

/// What a handler returns.
pub type HandlerResult = Result<(), BoxError>;

/// What an async handler returns: a boxed future borrowing the event and `S`.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = HandlerResult> + Send + 'a>>;

type SyncHandler<S> = dyn Fn(&Event, &mut S) -> HandlerResult + Send + Sync;
type AsyncHandler<S> = dyn for<'a> Fn(&'a Event, &'a mut S) -> HandlerFuture<'a> + Send + Sync;
type GuardFn<S> = dyn Fn(&S) -> Result<(), BoxError> + Send + Sync;
type PlanCheck = dyn Fn(&Plan) -> Result<(), BoxError> + Send + Sync;

enum HandlerFn<S> {
    Sync(Arc<SyncHandler<S>>),
    Async(Arc<AsyncHandler<S>>),
}

impl<S> Clone for HandlerFn<S> {
    fn clone(&self) -> Self {
        match self {
            HandlerFn::Sync(f) => HandlerFn::Sync(f.clone()),
            HandlerFn::Async(f) => HandlerFn::Async(f.clone()),
        }
    }
}

/// The event side of a stack: handlers, guards and policy.
pub(crate) struct EventRules<S> {
    handlers: Vec<(Pattern, HandlerFn<S>)>,
    guards: Vec<(String, Arc<GuardFn<S>>)>,
    pub(crate) policy: EventPolicy,
}

impl<S> Default for EventRules<S> {
    fn default() -> Self {
        EventRules { handlers: Vec::new(), guards: Vec::new(), policy: EventPolicy::default() }
    }
}

impl<S> Clone for EventRules<S> {
    fn clone(&self) -> Self {
        EventRules { handlers: self.handlers.clone(), guards: self.guards.clone(), policy: self.policy.clone() }
    }
}

impl<S> std::fmt::Debug for EventRules<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRules")
            .field("handlers", &self.handlers.iter().map(|(p, _)| p.as_str()).collect::<Vec<_>>())
            .field("guards", &self.guards.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())
            .field("policy", &self.policy)
            .finish()
    }
}

/// A handler that panicked rejects its event like one that failed.
fn handler_panicked(panic: String) -> Rejection {
    Rejection::Handler(format!("handler panicked: {panic}"))
}

/// Why an event changed nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rejection {
    /// No handler matches its kind.
    Unhandled,
    /// A handler returned an error, or panicked (`handler panicked: <message>`).
    Handler(String),
    /// A guard refused the state the handlers produced, or panicked (its message is
    /// then `guard panicked: <message>`).
    Guard {
        /// The guard's name.
        guard: String,
        /// Its message.
        message: String,
    },
    /// The plan the event would cause breaks the event policy.
    Policy(PolicyViolation),
    /// The program cannot plan the state the event produced: it panicked or declared
    /// something invalid for it (the message says what).
    Unplannable(String),
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::Unhandled => f.write_str("no handler matches its kind"),
            Rejection::Handler(e) => write!(f, "a handler failed: {e}"),
            Rejection::Guard { guard, message } => write!(f, "guard '{guard}' refused it: {message}"),
            Rejection::Policy(e) => write!(f, "the event policy refused its plan: {e}"),
            Rejection::Unplannable(e) => write!(f, "its plan cannot be made: {e}"),
        }
    }
}

/// The rule of an [`EventPolicy`] a plan breaks.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyViolation {
    /// The plan deletes or replaces a resource that matches a
    /// [`EventPolicy::deny_replace_or_delete`] pattern.
    #[error("it would {action} {ty} '{name}', which events may not ({pattern} is denied replace or delete); change it with `up` instead", action = if *.action == Action::Delete { "delete" } else { "replace" }, name = .urn.name())]
    Frozen {
        /// The resource.
        urn: Urn,
        /// Its type token.
        ty: String,
        /// [`Action::Delete`] or [`Action::Replace`].
        action: Action,
        /// The pattern it matches.
        pattern: Pattern,
    },
    /// The plan changes more resources than [`EventPolicy::max_changes`] allows.
    #[error("it would change {changes} resources, more than the {max} one apply of events may (raise EventPolicy::max_changes if that is intended)")]
    TooManyChanges {
        /// Resources the plan creates, updates, replaces or deletes.
        changes: usize,
        /// The limit.
        max: usize,
    },
    /// A check of the user's own ([`EventPolicy::check`]) refused the plan or panicked
    /// (its message is then `it panicked: <message>`).
    #[error("check '{check}': {message}")]
    Check {
        /// The check's name.
        check: String,
        /// What it said.
        message: String,
    },
}

/// Bounds on the plans events may cause, checked before anything is applied. The
/// default allows at most 50 changed resources per apply; resources with `protect` are
/// never deleted or replaced by anyone.
#[derive(Clone)]
pub struct EventPolicy {
    max_changes: Option<usize>,
    frozen: Vec<Pattern>,
    checks: Vec<(String, Arc<PlanCheck>)>,
}

impl Default for EventPolicy {
    fn default() -> Self {
        EventPolicy { max_changes: Some(50), frozen: Vec::new(), checks: Vec::new() }
    }
}

impl std::fmt::Debug for EventPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPolicy")
            .field("max_changes", &self.max_changes)
            .field("frozen", &self.frozen)
            .field("checks", &self.checks.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())
            .finish()
    }
}

impl EventPolicy {
    /// At most `n` resources created, updated, replaced or deleted by the events of one
    /// apply; `None` for no limit.
    #[must_use]
    pub fn max_changes(mut self, n: Option<usize>) -> Self {
        self.max_changes = n;
        self
    }

    /// Events may not delete or replace resources whose type token or logical name
    /// matches `pattern` (`aws:ec2:Vpc`, `aws:elasticache:*`, `sessions`).
    #[must_use]
    pub fn deny_replace_or_delete(mut self, pattern: impl Into<Pattern>) -> Self {
        self.frozen.push(pattern.into());
        self
    }

    /// A check of your own on each plan events cause, named for the audit log. A check
    /// that returns an error or panics refuses the plan.
    #[must_use]
    pub fn check(mut self, name: impl Into<String>, check: impl Fn(&Plan) -> Result<(), BoxError> + Send + Sync + 'static) -> Self {
        self.checks.push((name.into(), Arc::new(check)));
        self
    }

    /// Whether events may apply `plan`; the error says which rule it breaks.
    pub fn evaluate(&self, plan: &Plan) -> Result<(), PolicyViolation> {
        for change in plan.changed() {
            if !matches!(change.action, Action::Replace | Action::Delete) {
                continue;
            }
            if let Some(p) = self.frozen.iter().find(|p| p.matches(&change.ty) || p.matches(change.urn.name())) {
                return Err(PolicyViolation::Frozen {
                    urn: change.urn.clone(),
                    ty: change.ty.to_string(),
                    action: change.action,
                    pattern: p.clone(),
                });
            }
        }
        let changes = plan.summary.changes();
        if let Some(max) = self.max_changes.filter(|max| changes > *max) {
            return Err(PolicyViolation::TooManyChanges { changes, max });
        }
        for (name, check) in &self.checks {
            let verdict = match crate::panic::catch(|| check(plan)) {
                Ok(verdict) => verdict.map_err(|e| e.to_string()),
                Err(panic) => Err(format!("it panicked: {panic}")),
            };
            verdict.map_err(|message| PolicyViolation::Check { check: name.clone(), message })?;
        }
        Ok(())
    }
}

impl<S> EventRules<S> {
    pub(crate) fn add_handler(&mut self, pattern: Pattern, handler: impl Fn(&Event, &mut S) -> HandlerResult + Send + Sync + 'static) {
        self.handlers.push((pattern, HandlerFn::Sync(Arc::new(handler))));
    }

    pub(crate) fn add_async_handler(
        &mut self,
        pattern: Pattern,
        handler: impl for<'a> Fn(&'a Event, &'a mut S) -> HandlerFuture<'a> + Send + Sync + 'static,
    ) {
        self.handlers.push((pattern, HandlerFn::Async(Arc::new(handler))));
    }

    pub(crate) fn add_guard(&mut self, name: String, guard: impl Fn(&S) -> Result<(), BoxError> + Send + Sync + 'static) {
        self.guards.push((name, Arc::new(guard)));
    }

    /// [`Stack::handle_event`](crate::Stack::handle_event).
    pub(crate) fn handle(&self, event: &Event, s: &mut S) -> Result<(), Rejection>
    where
        S: Clone,
    {
        if self.handlers.iter().any(|(_, h)| matches!(h, HandlerFn::Async(_))) {
            return Err(Rejection::Handler(
                "the stack has async handlers: use handle_event_async".to_owned(),
            ));
        }
        let mut next = s.clone();
        let mut matched = false;
        for (pattern, handler) in &self.handlers {
            if let (true, HandlerFn::Sync(f)) = (pattern.matches(&event.kind), handler) {
                matched = true;
                // `next` is a copy: what a panicking handler left half-changed is dropped.
                let result = crate::panic::catch(|| f(event, &mut next)).map_err(handler_panicked)?;
                result.map_err(|e| Rejection::Handler(e.to_string()))?;
            }
        }
        self.finish(matched, next, s)
    }

    /// [`Stack::handle_event_async`](crate::Stack::handle_event_async).
    pub(crate) async fn handle_async(&self, event: &Event, s: &mut S) -> Result<(), Rejection>
    where
        S: Clone,
    {
        let mut next = s.clone();
        let mut matched = false;
        for (pattern, handler) in &self.handlers {
            if !pattern.matches(&event.kind) {
                continue;
            }
            matched = true;
            // `next` is a copy: what a panicking handler left half-changed is dropped.
            let result = match handler {
                HandlerFn::Sync(f) => crate::panic::catch(|| f(event, &mut next)),
                HandlerFn::Async(f) => match crate::panic::catch(|| f(event, &mut next)) {
                    Ok(future) => crate::panic::CatchUnwind(future).await,
                    Err(message) => Err(message),
                },
            };
            result.map_err(handler_panicked)?.map_err(|e| Rejection::Handler(e.to_string()))?;
        }
        self.finish(matched, next, s)
    }

    fn finish(&self, matched: bool, next: S, s: &mut S) -> Result<(), Rejection> {
        if !matched {
            return Err(Rejection::Unhandled);
        }
        for (name, guard) in &self.guards {
            let verdict = match crate::panic::catch(|| guard(&next)) {
                Ok(verdict) => verdict.map_err(|e| e.to_string()),
                Err(panic) => Err(format!("guard panicked: {panic}")),
            };
            verdict.map_err(|message| Rejection::Guard { guard: name.clone(), message })?;
        }
        *s = next;
        Ok(())
    }
}
