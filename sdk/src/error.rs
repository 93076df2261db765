//! The engine's errors. Each says what went wrong, where, and what to do next.

use std::fmt;

use cairn_state::Urn;
use serde_json::Value;

use crate::input::OutputRef;
use crate::schema::CheckFailure;

/// The result of engine operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can stop a preview or an apply.
///
/// An apply whose steps fail still returns a report listing every step's outcome; the
/// only errors returned after provider calls were made are a failed state write
/// ([`Error::State`] from a session's commit, the steps being in the journal) and
/// [`Error::SessionBroken`] afterwards.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The user's program returned an error. Nothing was planned or changed.
    #[error("the program of stack '{stack}' failed: {message}")]
    Program {
        /// The stack.
        stack: String,
        /// The program's message.
        message: String,
    },
    /// The program declared an invalid graph. Nothing was planned or changed.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    /// The plan would delete or replace protected resources. Nothing was changed.
    #[error(transparent)]
    Protected(#[from] ProtectViolations),
    /// A saved plan was made against another version of the state.
    #[error(
        "the saved plan was made against state serial {planned} of lineage {planned_lineage}, \
         but the state is now at serial {current} of lineage {current_lineage}; \
         run preview again and apply the new plan"
    )]
    StalePlan {
        /// The serial the plan was made against.
        planned: u64,
        /// The lineage the plan was made against.
        planned_lineage: String,
        /// The state's serial now.
        current: u64,
        /// The state's lineage now.
        current_lineage: String,
    },
    /// A plan was narrowed ([`Plan::target`](crate::Plan::target)) to a resource it does
    /// not know.
    #[error("--target {urn}: the plan has no such resource; `state list` shows the URNs")]
    UnknownTarget {
        /// The target.
        urn: Urn,
    },
    /// A resource's type belongs to a package no provider was registered for.
    #[error("no provider is registered for package '{package}' (needed by {urn}); register one with Stack::provider")]
    NoProvider {
        /// The package, e.g. `aws`.
        package: String,
        /// The first resource that needed it.
        urn: Urn,
    },
    /// A provider cannot reach its cloud (missing credentials, region, ...): nothing was
    /// called and state was left as it was.
    #[error("the {package} provider cannot run: {source}. Nothing was called, and state was left as it was")]
    ProviderNotReady {
        /// The package, e.g. `aws`.
        package: String,
        /// What is missing and how to set it (usually of kind [`ErrorKind::Unconfigured`](crate::ErrorKind::Unconfigured)).
        source: crate::ProviderError,
    },
    /// A secret the plan would give a provider (a new input, or one state holds for the
    /// resource) is sealed with a key that is not loaded: nothing was called.
    #[error("{urn}: '{property}' holds a secret that cannot be opened: {source}. Nothing was called, and state was left as it was")]
    SecretLocked {
        /// The resource.
        urn: Urn,
        /// The input or output.
        property: String,
        /// Why.
        source: crate::secret::SecretError,
    },
    /// The state belongs to another stack.
    #[error("the state given is stack '{found}', not '{expected}'; pass this stack's own state")]
    WrongStack {
        /// The stack being operated on.
        expected: String,
        /// The stack the state names.
        found: String,
    },
    /// The state has steps that were interrupted; they must be settled before planning.
    #[error(
        "stack '{stack}' has {count} interrupted operation{} (the first on {first}); \
         they are settled by looking the resources up in the cloud: run `up` or `refresh`, \
         or call Session::settle, then plan again",
        if *count == 1 { "" } else { "s" }
    )]
    PendingOperations {
        /// The stack.
        stack: String,
        /// How many.
        count: usize,
        /// The first one's resource.
        first: Urn,
    },
    /// A session whose last state write failed refuses further changes.
    #[error(
        "the state of stack '{stack}' could not be written after the last change ({cause}); \
         close this session and open the stack again: loading replays the journal, which has every step"
    )]
    SessionBroken {
        /// The stack.
        stack: String,
        /// Why the write failed.
        cause: String,
    },
    /// An operation of the session was cancelled before it ended: its future was
    /// dropped (by a `select!`, a timeout, an aborted task). What it did is in the
    /// journal; the session's next operation ([`Session::settle`](crate::Session::settle),
    /// `up`, `destroy`, `refresh`, `apply`) reads it back before anything else.
    #[error(
        "stack '{stack}': the session's last {operation} was cancelled before it ended; \
         what it did is in the journal: call Session::settle (or run `up` or `refresh`), \
         which reads it back, then plan again"
    )]
    Interrupted {
        /// The stack.
        stack: String,
        /// What was cancelled: `apply`, `state write` or `event record`.
        operation: &'static str,
    },
    /// A reconciler started with [`Reconciler::spawn`](crate::events::Reconciler::spawn)
    /// could not start its thread, or its thread panicked. Events it had not recorded
    /// are delivered again by their sources. Its session was not closed: after a panic
    /// the lock was released on the way out (unless the store could not be reached),
    /// otherwise it may still be held. A panicking handler, guard or program does not
    /// stop the reconciler: it rejects the event or fails the apply.
    #[error(
        "the reconciler of stack '{stack}' stopped: {cause}; state is as last recorded, \
         and the stack's lock may still be held (`state unlock` releases it)"
    )]
    ReconcilerStopped {
        /// The stack.
        stack: String,
        /// What happened.
        cause: String,
    },
    /// An interrupted operation could not be settled (the look-up or read failed).
    #[error("could not settle the interrupted {operation} of {urn}: {source}; nothing was planned, try again")]
    Recovery {
        /// The resource.
        urn: Urn,
        /// What was interrupted: "create", "update", ...
        operation: &'static str,
        /// The look-up's or the read's error.
        source: crate::ProviderError,
    },
    /// A plan that cannot be applied as given (an unknown format, steps in a loop).
    #[error("the plan cannot be applied: {0}")]
    BadPlan(String),
    /// Reading or writing state failed.
    #[error(transparent)]
    State(#[from] cairn_state::StateError),
    /// The user state `S` could not be converted to or from JSON.
    #[error("the stack's user state could not be {action} as JSON: {source}; check S's Serialize/Deserialize impls")]
    UserState {
        /// "read" or "written".
        action: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

impl Error {
    pub(crate) fn pending(state: &cairn_state::StackState) -> Self {
        Error::PendingOperations {
            stack: state.stack.clone(),
            count: state.pending.len(),
            first: state.pending[0].urn.clone(),
        }
    }

    /// An error from the user's program.
    pub fn program(stack: &str, message: impl fmt::Display) -> Self {
        Error::Program { stack: stack.to_owned(), message: message.to_string() }
    }
}

/// Every problem found in a declared graph, reported together so one run shows them all.
#[derive(Debug, PartialEq)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl std::error::Error for ValidationErrors {}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(f, "the program declares an invalid graph ({n} problem{}); nothing was changed:", plural(n))?;
        for e in &self.0 {
            write!(f, "\n  - {e}")?;
        }
        Ok(())
    }
}

/// One problem in a declared graph.
#[derive(Debug, PartialEq)]
#[non_exhaustive]
pub enum ValidationError {
    /// Two declarations share type and name.
    Duplicate {
        /// The repeated identity.
        urn: Urn,
    },
    /// A property the type does not have (or an output, which a program cannot set).
    UnknownProperty {
        /// The resource.
        urn: Urn,
        /// The property set.
        property: String,
        /// The inputs the type does have.
        known: Vec<&'static str>,
    },
    /// A required property left unset.
    Missing {
        /// The resource.
        urn: Urn,
        /// The property.
        property: &'static str,
    },
    /// A value the type's checks refuse.
    Invalid {
        /// The resource.
        urn: Urn,
        /// What is wrong.
        failure: CheckFailure,
    },
    /// An input the schema marks secret is set, and the stack has no key to seal it.
    NoSecretsKey {
        /// The resource.
        urn: Urn,
        /// The property.
        property: &'static str,
        /// The stack.
        stack: String,
    },
    /// A component's body failed.
    Component {
        /// The component.
        urn: Urn,
        /// Its error.
        message: String,
    },
    /// A stack reference cannot be read as the program asks.
    Reference {
        /// The referenced stack.
        stack: String,
        /// The output the program reads.
        output: String,
        /// What is wrong, and how to fix it.
        reason: String,
    },
    /// A stack output cannot be exported as declared.
    Export {
        /// The output's name.
        name: String,
        /// What is wrong, and how to fix it.
        reason: String,
    },
    /// An input refers to a resource the program does not declare.
    Dangling {
        /// The resource with the reference.
        urn: Urn,
        /// Its property holding the reference (or `depends_on`).
        property: String,
        /// The missing resource.
        target: Urn,
    },
    /// An input refers to a property the referenced resource's type does not have.
    UnknownOutput {
        /// The resource with the reference.
        urn: Urn,
        /// Its property holding the reference.
        property: String,
        /// The reference.
        target: OutputRef,
        /// The properties the target does have.
        known: Vec<&'static str>,
    },
    /// Resources that depend on each other in a loop; the first is repeated at the end.
    Cycle {
        /// The loop.
        path: Vec<Urn>,
    },
    /// Two declarations of one type would be one cloud object: their identity
    /// properties and physical names ([`Property::identity`](crate::schema::Property#structfield.identity))
    /// hold the same values, such as a queue name given twice.
    SameObject {
        /// The later declaration.
        urn: Urn,
        /// The earlier one, named first.
        other: Urn,
        /// The values they share, by property.
        values: Vec<(&'static str, Value)>,
    },
}

fn who(urn: &Urn) -> String {
    format!("{} '{}'", urn.ty(), urn.name())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

fn show_value(v: &Option<Value>) -> String {
    match v {
        Some(v) => crate::secret::redact(v).to_string(),
        None => "(unset)".to_owned(),
    }
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValidationError::Duplicate { urn } => write!(
                f,
                "{} is declared more than once; give each declaration its own name",
                who(urn)
            ),
            ValidationError::UnknownProperty { urn, property, known } => write!(
                f,
                "{}: unknown property '{property}'; the inputs of {} are: {}",
                who(urn),
                urn.ty(),
                known.join(", ")
            ),
            ValidationError::Missing { urn, property } => {
                write!(f, "{}: property '{property}' is required; set it with .{property}(...)", who(urn))
            }
            ValidationError::Invalid { urn, failure } => write!(
                f,
                "{}: property '{}' = {} is invalid: it must {}",
                who(urn),
                failure.property,
                show_value(&failure.value),
                failure.expected
            ),
            ValidationError::NoSecretsKey { urn, property, stack } => write!(
                f,
                "{}: '{property}' is a secret and stack '{stack}' has no secrets key to seal it; set CAIRN_PASSPHRASE (or CAIRN_SECRETS_KEY_FILE) for a program run with `Cli::configured`, or give the stack a key with `Stack::secrets`",
                who(urn)
            ),
            ValidationError::Component { urn, message } => write!(f, "component {}: {message}", who(urn)),
            ValidationError::Export { name, reason } => write!(f, "stack output '{name}' {reason}"),
            ValidationError::Reference { stack, output, reason } => write!(f, "the program reads output '{output}' of stack '{stack}', but {reason}"),
            ValidationError::Dangling { urn, property, target } => write!(
                f,
                "{}: '{property}' refers to {}, which this program does not declare; declare it with cx.add or remove the reference",
                who(urn),
                who(target)
            ),
            ValidationError::UnknownOutput { urn, property, target, known } => write!(
                f,
                "{}: '{property}' refers to '{}' of {}, which has no such property; it has: {}",
                who(urn),
                target.property,
                who(&target.urn),
                known.join(", ")
            ),
            ValidationError::SameObject { urn, other, values } => {
                let shown: Vec<String> = values.iter().map(|(k, v)| format!("{k} = {}", show_value(&Some(v.clone())))).collect();
                let names: Vec<&str> = values.iter().map(|(k, _)| *k).collect();
                write!(
                    f,
                    "{} and {} would be one cloud object ({}); give one of them another {}, or declare it once",
                    who(other),
                    who(urn),
                    shown.join(", "),
                    names.join(" or ")
                )
            }
            ValidationError::Cycle { path } => {
                // The path follows the data (dependency first); read it as "depends on".
                let names: Vec<String> = path.iter().rev().map(who).collect();
                write!(
                    f,
                    "dependency cycle (each depends on the next): {}; remove one of these references",
                    names.join(" -> ")
                )
            }
        }
    }
}

/// Resources a plan would delete or replace although they are protected.
#[derive(Debug, PartialEq)]
pub struct ProtectViolations(pub Vec<ProtectViolation>);

/// One protected resource a plan would delete or replace.
#[derive(Debug, PartialEq)]
pub struct ProtectViolation {
    /// The resource.
    pub urn: Urn,
    /// "delete" or "replace".
    pub action: &'static str,
    /// For a replace, the properties forcing it.
    pub reasons: Vec<String>,
}

impl std::error::Error for ProtectViolations {}

impl fmt::Display for ProtectViolations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the plan would change protected resources; nothing was changed:")?;
        for v in &self.0 {
            write!(f, "\n  - {} is protected but would be {}d", who(&v.urn), v.action)?;
            if !v.reasons.is_empty() {
                write!(f, " (because of {})", v.reasons.join(", "))?;
            }
            write!(
                f,
                "; to go ahead, remove .protect() from it and run up once, then make the change"
            )?;
        }
        Ok(())
    }
}
