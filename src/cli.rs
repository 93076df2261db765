//! `run_cli()`: the verbs users know, for any stack program.
//!
//! ```no_run
//! # #[derive(Clone, Default, serde::Serialize, serde::Deserialize)] struct Shop;
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     cairn::cli::Cli::new(|name| cairn::Stack::<Shop>::new(name)).run().await
//! }
//! ```

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_sdk::events::{AuditEntry, Event, Outcome, Reconciler, ReconcilerOptions, Schedule, Source};
use cairn_sdk::{Plan, Progress, RenderOptions, Session, Stack, StackState, StepOp, StepReport, StepStatus, Summary, Urn};
use cairn_state::Store;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// What the user state of a CLI-driven stack must be.
pub trait UserState: Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Default + Clone + Send + Sync + 'static> UserState for T {}

type StackFactory<S> = Box<dyn Fn(&str) -> Result<Stack<S>, CliError>>;

/// Where a [`Cli::configured`] program's per-stack configuration lives, and how a
/// changed one is checked against the program's config type.
struct ConfigSetup {
    dir: std::path::PathBuf,
    check: Box<ConfigCheck>,
}

type ConfigCheck = dyn Fn(&std::path::Path, &str, toml::Table) -> Result<(), crate::config::ConfigError>;

type VerbFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Result<ExitCode, CliError>>>>;

/// A verb the program adds with [`Cli::verb`].
struct CustomVerb {
    name: String,
    about: String,
    run: Box<dyn Fn(VerbContext) -> VerbFuture>,
}

/// What a verb of the program's own ([`Cli::verb`]) is given: the stack it is run for,
/// that stack's state and outputs, and the arguments after the verb.
#[derive(Debug)]
pub struct VerbContext {
    stack: String,
    args: Vec<String>,
    state: StackState,
}

impl VerbContext {
    /// The stack's name (`--stack`).
    pub fn stack(&self) -> &str {
        &self.stack
    }

    /// The arguments after the verb, but for `--stack` and `--state`.
    pub fn args(&self) -> &[String] {
        &self.args
    }

    /// The stack's state as stored.
    pub fn state(&self) -> &StackState {
        &self.state
    }

    /// The stack's outputs, as of the last apply.
    pub fn outputs(&self) -> &std::collections::BTreeMap<String, Value> {
        &self.state.outputs
    }

    /// The output `name`, or an error that says which outputs the stack has.
    pub fn output(&self, name: &str) -> Result<&Value, CliError> {
        self.state.outputs.get(name).ok_or_else(|| missing_output(&self.stack, &self.state, name))
    }

    /// The output `name`, which must be a string.
    pub fn output_str(&self, name: &str) -> Result<&str, CliError> {
        self.output(name)?
            .as_str()
            .ok_or_else(|| CliError::Output {
                stack: self.stack.clone(),
                name: name.to_owned(),
                reason: format!("output '{name}' of stack '{}' is not a string: {}", self.stack, cairn_sdk::secret::redact(&self.state.outputs[name])),
            })
    }
}

fn missing_output(stack: &str, state: &StackState, name: &str) -> CliError {
    let has = if state.outputs.is_empty() {
        "it has none yet: run `up` first".to_owned()
    } else {
        format!("it has: {}", state.outputs.keys().cloned().collect::<Vec<_>>().join(", "))
    };
    CliError::Output { stack: stack.to_owned(), name: name.to_owned(), reason: format!("stack '{stack}' has no output '{name}'; {has}") }
}

#[derive(Parser, Debug)]
#[command(about = "Manage this stack: preview, deploy, watch for events, inspect state.")]
struct Args {
    /// The stack to operate on.
    #[arg(long, global = true, default_value = "dev")]
    stack: String,
    /// Where state lives: file://DIR or s3://BUCKET/PREFIX (default: $CAIRN_STATE, else file://.cairn).
    #[arg(long, global = true)]
    state: Option<String>,
    #[command(subcommand)]
    verb: Verb,
}

#[derive(Subcommand, Debug)]
enum Verb {
    /// Show what `up` would change, without changing anything.
    Preview {
        /// Show each changed property.
        #[arg(long)]
        diff: bool,
        /// Print the plan as JSON.
        #[arg(long)]
        json: bool,
        /// Save the plan to FILE, for `up --plan FILE`.
        #[arg(long, value_name = "FILE")]
        out: Option<String>,
        /// Exit with status 2 if there are changes (for CI drift checks).
        #[arg(long)]
        expect_no_changes: bool,
    },
    /// Deploy: bring the cloud to what the program declares for the stack's state.
    Up {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Apply exactly this saved plan (from `preview --out`).
        #[arg(long, value_name = "FILE")]
        plan: Option<String>,
        /// Provider calls at once.
        #[arg(long, value_name = "N")]
        parallel: Option<usize>,
        /// Read every resource back from the cloud first.
        #[arg(long)]
        refresh: bool,
        /// Only this resource and what it depends on (repeatable).
        #[arg(long, value_name = "URN")]
        target: Vec<String>,
    },
    /// Delete every resource of the stack.
    Destroy {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Read every resource back from the cloud and show drift.
    Refresh {
        /// Record what was read in state.
        #[arg(long)]
        yes: bool,
    },
    /// Run the event loop: webhook, event sources, schedules; /healthz, /metrics, /status.
    Watch {
        /// Address to serve HTTP on.
        #[arg(long, default_value = "127.0.0.1:8787")]
        listen: String,
        /// While another process leads the stack, stand by (consuming no event) and take
        /// over once its lease expires, instead of failing at once.
        #[arg(long)]
        standby: bool,
        /// Watch these stacks instead of --stack (comma-separated): a lease and a
        /// reconciler each, served under /stacks/<stack>/.
        #[arg(long, value_name = "STACK,...", value_delimiter = ',', conflicts_with = "all_stacks")]
        stacks: Vec<String>,
        /// Watch every stack that has state in the store (as listed when watch starts).
        #[arg(long)]
        all_stacks: bool,
    },
    /// Send one event to the stack's handlers and apply the result.
    Emit {
        /// The event kind, e.g. traffic.spike.
        kind: String,
        /// The event payload, as JSON.
        #[arg(long, default_value = "{}")]
        payload: String,
        /// Show the new state and plan, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Print the resource graph.
    Graph {
        /// Output format.
        #[arg(long, default_value = "text", value_parser = ["text", "dot"])]
        format: String,
    },
    /// Inspect or repair state.
    State {
        #[command(subcommand)]
        verb: StateVerb,
    },
    /// Print the audit log of events and applies.
    History {
        /// As JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Read or change the stack's configuration (Cairn.<stack>.toml).
    Config {
        #[command(subcommand)]
        verb: ConfigVerb,
    },
    /// Print the stack's outputs, as of the last apply; secrets as [secret].
    Outputs {
        /// Only this output, bare (a string without quotes), for scripts.
        name: Option<String>,
        /// As one JSON object.
        #[arg(long)]
        json: bool,
        /// Print secret outputs in plaintext (needs the stack's key).
        #[arg(long)]
        show_secrets: bool,
    },
    /// A verb of the program's own (see `Cli::verb`).
    #[command(external_subcommand)]
    Custom(Vec<String>),
}

#[derive(Subcommand, Debug)]
enum ConfigVerb {
    /// Print the whole configuration, secrets as [secret].
    List {
        /// As one JSON object.
        #[arg(long)]
        json: bool,
        /// Print secrets in plaintext (needs the stack's key).
        #[arg(long)]
        show_secrets: bool,
    },
    /// Print one value (a string without quotes), a secret as [secret].
    Get {
        /// Its key; nested keys with dots, such as web.max.
        key: String,
        /// Print a secret in plaintext (needs the stack's key).
        #[arg(long)]
        show_secrets: bool,
    },
    /// Set one value, checked against the program's config type first.
    Set {
        /// Its key; nested keys with dots, such as web.max.
        key: String,
        /// A TOML value (40, true, ["a", "b"]); anything else is a string.
        value: String,
        /// Store it sealed with the stack's key (CAIRN_PASSPHRASE or
        /// CAIRN_SECRETS_KEY_FILE), for a `Secret` of the program's config.
        #[arg(long)]
        secret: bool,
    },
}

#[derive(Subcommand, Debug)]
enum StateVerb {
    /// List resources: URN and cloud id.
    List,
    /// Show one resource.
    Show {
        /// Its URN (see `state list`).
        urn: String,
    },
    /// Print the whole state as JSON.
    Export,
    /// Replace the state with FILE (from `state export`).
    Import {
        /// The state file.
        file: String,
        /// Also when its lineage differs from the stored state's.
        #[arg(long)]
        force: bool,
    },
    /// Remove a lock left by a process that died: refused while its lease is live.
    Unlock {
        /// Also a live lease: its holder's next write is refused, and it stops.
        #[arg(long)]
        force: bool,
    },
}

/// Why a verb failed: [`Cli::run`] prints it as `error: ...` and exits 1;
/// [`Cli::try_run_with`] returns it, for a program that handles it itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// The engine refused or failed: a plan, an apply, the program, a provider that
    /// cannot reach its cloud, a lock held elsewhere, ...
    #[error(transparent)]
    Engine(#[from] cairn_sdk::Error),
    /// State could not be read or written.
    #[error(transparent)]
    State(#[from] cairn_state::StateError),
    /// The stack's configuration file could not be read, or does not fit the program's
    /// config type.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A file, the terminal or the network could not be used.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A document could not be written as JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// An argument, flag, command or key the program cannot use as given: the message
    /// says which, and what it takes.
    #[error("{0}")]
    Usage(String),
    /// A change asked for without `--yes` where there is no terminal to ask.
    #[error("refusing to {what} without --yes: there is no terminal to ask; review with `preview`, then run again with --yes")]
    NeedsYes {
        /// What would have been done.
        what: String,
    },
    /// An event its handlers, guards or the event policy refused: nothing was recorded.
    #[error("event {kind}: {reason}")]
    EventRefused {
        /// The event's kind.
        kind: String,
        /// Why.
        reason: String,
    },
    /// The stack has no such output, or not of the type asked.
    #[error("{reason}")]
    Output {
        /// The stack.
        stack: String,
        /// The output asked for.
        name: String,
        /// What is wrong, naming both, and what there is.
        reason: String,
    },
    /// A file given to the command (a saved plan, an exported state) cannot be used.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: String,
        /// Why, and what to give instead.
        reason: String,
    },
    /// `watch` lost a stack's lease: another process leads it now, and this one stopped
    /// writing.
    #[error("stack '{stack}': this process lost its lease (it could not renew it in time, or another process took the stack over, or `state unlock --force` cleared it) and stopped, writing nothing more. Events not yet recorded stay with their sources for the new leader. Restart it (with --standby to stand by)")]
    LeaseLost {
        /// The stack.
        stack: String,
    },
    /// A stack's reconciler panicked outside the handlers and the program (whose
    /// panics are contained): a bug of Cairn's.
    #[error("the reconciler of stack '{stack}' panicked: {message}")]
    ReconcilerPanicked {
        /// The stack.
        stack: String,
        /// The panic's message.
        message: String,
    },
    /// A verb of the program's own failed ([`Cli::verb`]).
    #[error("{0}")]
    Verb(Box<dyn std::error::Error + Send + Sync>),
    /// `watch` stopped because a stack failed (its lease lost, its lock held elsewhere
    /// without `--standby`); each failure was printed as it happened.
    #[error("watch stopped: {failed} of its stacks failed")]
    WatchStopped {
        /// How many.
        failed: usize,
    },
}

pub(crate) type Outcome_ = Result<ExitCode, CliError>;

/// A stack's command line: build it with the stack factory, add event sources and
/// schedules for `watch`, then [`Cli::run`].
pub struct Cli<S> {
    factory: StackFactory<S>,
    config: Option<ConfigSetup>,
    verbs: Vec<CustomVerb>,
    sources: Vec<Arc<dyn Source>>,
    reconciler: ReconcilerOptions,
    http: crate::serve::HttpLimits,
}

impl<S> std::fmt::Debug for Cli<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cli").field("sources", &self.sources.iter().map(|s| s.name()).collect::<Vec<_>>()).finish()
    }
}

impl<S: UserState> Cli<S> {
    /// A CLI for the stack `factory` builds for the chosen `--stack` name (for each
    /// name of `watch --stacks`).
    pub fn new(factory: impl Fn(&str) -> Stack<S> + 'static) -> Self {
        Self::with_factory(Box::new(move |name| Ok(factory(name))))
    }

    /// A CLI for a program with per-stack configuration: `factory` gets the stack's name
    /// and its config `C`, read from `Cairn.<stack>.toml` in `dir` (see
    /// [`config`](crate::config)). A file that does not fit `C` stops every verb with an
    /// error naming the file and the key; `config set` checks a change against `C`
    /// before writing it.
    pub fn configured<C, F>(dir: impl Into<std::path::PathBuf>, factory: F) -> Self
    where
        C: DeserializeOwned + 'static,
        F: Fn(&str, C) -> Stack<S> + 'static,
    {
        let dir = dir.into();
        let at = dir.clone();
        let mut cli = Self::with_factory(Box::new(move |name| {
            let config = crate::config::load::<C>(&at, name)?;
            let keyring = crate::config::keyring(&at, name)?;
            let stack = factory(name, config);
            Ok(match keyring {
                Some(keyring) => stack.secrets(keyring),
                None => stack,
            })
        }));
        cli.config = Some(ConfigSetup { dir, check: Box::new(|dir, stack, table| crate::config::typed::<C>(dir, stack, table).map(drop)) });
        cli
    }

    fn with_factory(factory: StackFactory<S>) -> Self {
        Cli {
            factory,
            config: None,
            verbs: Vec::new(),
            sources: Vec::new(),
            reconciler: ReconcilerOptions::default(),
            http: crate::serve::HttpLimits::default(),
        }
    }

    /// A verb of the program's own, run as `<program> NAME [ARGS...]` and listed in
    /// `--help`: `run` gets the stack's state and outputs ([`VerbContext`]). A verb of
    /// Cairn's own keeps its meaning: `name` must not be one.
    ///
    /// ```no_run
    /// # #[derive(Clone, Default, serde::Serialize, serde::Deserialize)] struct Shop;
    /// # async fn run() -> std::process::ExitCode {
    /// use cairn::cli::{Cli, CliError, VerbContext};
    /// async fn site(cx: VerbContext) -> Result<std::process::ExitCode, CliError> {
    ///     println!("{}", cx.output_str("site")?);
    ///     Ok(std::process::ExitCode::SUCCESS)
    /// }
    /// Cli::new(|name| cairn::Stack::<Shop>::new(name)).verb("site", "Print the shop's address", site).run().await
    /// # }
    /// ```
    #[must_use]
    pub fn verb<F, Fut>(mut self, name: impl Into<String>, about: impl Into<String>, run: F) -> Self
    where
        F: Fn(VerbContext) -> Fut + 'static,
        Fut: std::future::Future<Output = Result<ExitCode, CliError>> + 'static,
    {
        let name = name.into();
        assert!(
            !Args::command().get_subcommands().any(|c| c.get_name() == name) && !self.verbs.iter().any(|v| v.name == name),
            "Cli::verb(\"{name}\"): a command of that name exists already; give the verb another name"
        );
        self.verbs.push(CustomVerb { name, about: about.into(), run: Box::new(move |cx| Box::pin(run(cx))) });
        self
    }

    /// A schedule `watch` runs: shorthand for [`source`](Self::source).
    #[must_use]
    pub fn schedule(self, schedule: Schedule) -> Self {
        self.source(schedule)
    }

    /// An event source `watch` runs for each stack it leads (an SQS queue, a schedule,
    /// one of your own): see [`Source`].
    #[must_use]
    pub fn source(mut self, source: impl Source) -> Self {
        self.sources.push(Arc::new(source));
        self
    }

    /// Batching and retry options of `watch`'s reconciler.
    #[must_use]
    pub fn reconciler(mut self, options: ReconcilerOptions) -> Self {
        self.reconciler = options;
        self
    }

    /// The request timeout and webhook concurrency of `watch`'s HTTP server (default
    /// 30 s and 64; see [`HttpLimits`](crate::serve::HttpLimits)).
    #[must_use]
    pub fn http_limits(mut self, limits: crate::serve::HttpLimits) -> Self {
        self.http = limits;
        self
    }

    /// Parses the process's arguments, runs the verb, prints errors; the exit code is 0
    /// on success, 1 on an error, 2 for `preview --expect-no-changes` with changes.
    pub async fn run(self) -> ExitCode {
        self.run_with(std::env::args_os()).await
    }

    /// [`Cli::run`] with explicit arguments (the first is the program name).
    pub async fn run_with<I, T>(self, args: I) -> ExitCode
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        match self.try_run_with(args).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        }
    }

    /// [`Cli::run_with`], giving the error back instead of printing it, for a program
    /// that handles it itself. A command line that does not parse is still answered by
    /// clap (its message or the help, printed), with the exit code it calls for.
    pub async fn try_run_with<I, T>(self, args: I) -> Result<ExitCode, CliError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut command = Args::command();
        if !self.verbs.is_empty() {
            let width = self.verbs.iter().map(|v| v.name.len()).max().unwrap_or(0);
            let list: Vec<String> = self.verbs.iter().map(|v| format!("  {:width$}  {}", v.name, v.about)).collect();
            command = command.after_help(format!("This program's own commands:\n{}", list.join("\n")));
        }
        match command.try_get_matches_from(args).and_then(|m| Args::from_arg_matches(&m)) {
            Ok(args) => self.execute(args).await,
            Err(e) => {
                let _ = e.print();
                Ok(if e.use_stderr() { ExitCode::from(1) } else { ExitCode::SUCCESS })
            }
        }
    }

    async fn execute(self, mut args: Args) -> Outcome_ {
        let terminal = Terminal::detect();
        // A custom verb's arguments come after it, `--stack` and `--state` among them.
        let mut custom = None;
        if let Verb::Custom(words) = &mut args.verb {
            let (name, rest) = words.split_first().map(|(n, r)| (n.clone(), r.to_vec())).unwrap_or_default();
            let (rest, stack, state) = take_globals(rest);
            args.stack = stack.unwrap_or(args.stack);
            args.state = state.or(args.state);
            custom = Some((name, rest));
        }
        let location = cairn_state::location(args.state.as_deref());
        let store = cairn_state::open(&location).await?;
        if let Verb::Config { verb } = args.verb {
            return config_verb(self.config.as_ref(), &args.stack, verb);
        }
        let build = |name: &str| {
            let stack = (self.factory)(name)?.progress(LiveProgress::new(terminal));
            if stack.name() != name {
                return Err(CliError::Usage(format!("the stack factory built stack '{}' for --stack {name}; build it with the name it is given", stack.name())));
            }
            Ok(stack)
        };
        if let Verb::Watch { listen, standby, stacks, all_stacks } = args.verb {
            let names = match (all_stacks, stacks.is_empty()) {
                (true, _) => store.stacks().await?,
                (false, true) => vec![args.stack.clone()],
                (false, false) => stacks,
            };
            if names.is_empty() {
                return Err(CliError::Usage(format!("--all-stacks: no stack has state in {location}; deploy one with `up` first")));
            }
            let stacks = names.iter().map(|n| build(n)).collect::<Result<Vec<_>, _>>()?;
            let plan = crate::watch::Plan { stacks, store, listen, standby, sources: self.sources, options: self.reconciler, http: self.http };
            return crate::watch::run(plan).await;
        }
        if let Some((name, rest)) = custom {
            let Some(verb) = self.verbs.iter().find(|v| v.name == name) else {
                let mut known: Vec<String> = Args::command().get_subcommands().map(|c| c.get_name().to_owned()).collect();
                known.extend(self.verbs.iter().map(|v| v.name.clone()));
                return Err(CliError::Usage(format!("unknown command '{name}'; the commands are: {} (see --help)", known.join(", "))));
            };
            let state = store.load(&args.stack).await?.unwrap_or_else(|| StackState::new(&args.stack));
            return (verb.run)(VerbContext { stack: args.stack, args: rest, state }).await;
        }
        let ctx = Ctx { stack: build(&args.stack)?, store, terminal };
        match args.verb {
            Verb::Preview { diff, json, out, expect_no_changes } => ctx.preview(diff, json, out, expect_no_changes).await,
            Verb::Up { yes, plan, parallel, refresh, target } => ctx.up(yes, plan, parallel, refresh, target).await,
            Verb::Destroy { yes } => ctx.destroy(yes).await,
            Verb::Refresh { yes } => ctx.refresh(yes).await,
            Verb::Watch { .. } => unreachable!("watch is run above"),
            Verb::Emit { kind, payload, dry_run, yes } => ctx.emit(kind, &payload, dry_run, yes).await,
            Verb::Graph { format } => ctx.graph(&format).await,
            Verb::State { verb } => ctx.state(verb).await,
            Verb::History { json } => ctx.history(json).await,
            Verb::Outputs { name, json, show_secrets } => ctx.outputs(name, json, show_secrets).await,
            Verb::Custom(_) => unreachable!("custom verbs are run above"),
            Verb::Config { .. } => unreachable!("config is run above"),
        }
    }
}

/// Runs the CLI for the stack `factory` builds: `cairn::run_cli(|name| Stack::new(name)...)`.
pub async fn run_cli<S: UserState>(factory: impl Fn(&str) -> Stack<S> + 'static) -> ExitCode {
    Cli::new(factory).run().await
}

#[derive(Clone, Copy, Debug)]
struct Terminal {
    out: bool,
    input: bool,
}

impl Terminal {
    fn detect() -> Self {
        let no_color = std::env::var_os("NO_COLOR").is_some();
        Terminal { out: std::io::stdout().is_terminal() && !no_color, input: std::io::stdin().is_terminal() }
    }

    fn render(self, diff: bool) -> RenderOptions {
        RenderOptions { diff, color: self.out }
    }
}

struct Ctx<S> {
    stack: Stack<S>,
    store: Arc<dyn Store>,
    terminal: Terminal,
}

impl<S: UserState> Ctx<S> {
    async fn load(&self) -> Result<StackState, CliError> {
        let (state, recovered) = self.stack.load(&*self.store).await?;
        for r in recovered {
            eprintln!("note: {r}");
        }
        Ok(state)
    }

    async fn lock(&self, operation: &str) -> Result<Session<S>, CliError> {
        Self::opened(self.stack.lock(self.store.clone(), operation).await?)
    }

    fn opened(session: Session<S>) -> Result<Session<S>, CliError> {
        for r in session.recovered() {
            eprintln!("recovered: {r}");
        }
        Ok(session)
    }

    /// The one path of every verb that changes the stack: `stack` opened for
    /// `operation`, `work` done with it, and the session closed (its lock released)
    /// whatever `work` returned.
    async fn locked<T>(&self, stack: &Stack<S>, operation: &str, work: impl AsyncFnOnce(&mut Session<S>) -> Result<T, CliError>) -> Result<T, CliError> {
        let mut session = Self::opened(stack.lock(self.store.clone(), operation).await?)?;
        let result = work(&mut session).await;
        session.close().await?;
        result
    }

    /// Asks before changing anything; `--yes` answers for non-interactive runs.
    fn confirm(&self, yes: bool, what: &str) -> Result<bool, CliError> {
        if yes {
            return Ok(true);
        }
        if !self.terminal.input {
            return Err(CliError::NeedsYes { what: what.to_owned() });
        }
        print!("Do you want to {what}? [y/N] ");
        let _ = std::io::stdout().flush();
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
    }

    async fn preview(&self, diff: bool, json: bool, out: Option<String>, expect_no_changes: bool) -> Outcome_ {
        let state = self.load().await?;
        let s = self.stack.user_state(&state)?;
        let plan = self.stack.preview(&s, &state)?;
        if let Some(path) = out {
            std::fs::write(&path, plan.to_json()).map_err(|e| CliError::File { path: path.clone(), reason: format!("the plan could not be written: {e}") })?;
            eprintln!("Plan saved to {path}; apply it with `up --plan {path}`.");
        }
        if json {
            println!("{}", plan.to_json());
        } else {
            print!("{}", plan.render(self.terminal.render(diff)));
        }
        if expect_no_changes && plan.has_changes() {
            eprintln!("error: --expect-no-changes: the plan has {} changes", plan.summary.changes());
            return Ok(ExitCode::from(2));
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn up(&self, yes: bool, plan_file: Option<String>, parallel: Option<usize>, refresh: bool, target: Vec<String>) -> Outcome_ {
        // Before the lock: a missing credential or region changes nothing at all.
        self.stack.ready().await?;
        let stack = match parallel {
            Some(n) => self.stack.clone().parallelism(n),
            None => self.stack.clone(),
        };
        self.locked(&stack, "up", async |session| self.up_locked(session, yes, plan_file, refresh, target).await).await
    }

    async fn up_locked(&self, session: &mut Session<S>, yes: bool, plan_file: Option<String>, refresh: bool, target: Vec<String>) -> Outcome_ {
        session.settle().await?;
        if refresh {
            let report = session.refresh().await?;
            print_drift(&report);
        }
        let mut plan = match &plan_file {
            Some(path) => {
                let bad = |reason: String| CliError::File { path: path.clone(), reason };
                let text = std::fs::read_to_string(path).map_err(|e| bad(format!("the plan could not be read: {e}")))?;
                let plan = Plan::from_json(&text).map_err(|e| bad(format!("not a plan saved by `preview --out`: {e}")))?;
                plan.check_base(session.state())?;
                plan
            }
            None => session.preview(&session.user_state()?)?,
        };
        if !target.is_empty() {
            let urns = target.iter().map(|t| Urn::parse(t).map_err(|e| CliError::Usage(format!("--target: {e}")))).collect::<Result<Vec<Urn>, _>>()?;
            plan.target(&urns)?;
        }
        print!("{}", plan.render(self.terminal.render(true)));
        if !plan.has_changes() {
            return Ok(ExitCode::SUCCESS);
        }
        if !self.confirm(yes || plan_file.is_some(), "perform these changes")? {
            println!("Nothing changed.");
            return Ok(ExitCode::SUCCESS);
        }
        let report = session.apply(&plan).await?;
        finish_report(&report)
    }

    async fn destroy(&self, yes: bool) -> Outcome_ {
        self.stack.ready().await?;
        self.locked(&self.stack, "destroy", async |session| {
            session.settle().await?;
            let plan = session.preview_destroy()?;
            print!("{}", plan.render(self.terminal.render(false)));
            if !plan.has_changes() || !self.confirm(yes, "delete every resource of the stack")? {
                return Ok(ExitCode::SUCCESS);
            }
            let report = session.apply(&plan).await?;
            finish_report(&report)
        })
        .await
    }

    async fn refresh(&self, yes: bool) -> Outcome_ {
        self.stack.ready().await?;
        if !yes {
            let state = self.load().await?;
            let report = self.stack.preview_refresh(&state).await?;
            print_drift(&report);
            if !report.drift.is_empty() {
                println!("Run `refresh --yes` to record what was read, or `up` to put it back.");
            }
            return Ok(ExitCode::SUCCESS);
        }
        let report = self.locked(&self.stack, "refresh", async |session| Ok(session.refresh().await?)).await?;
        print_drift(&report);
        println!("State updated with what was read.");
        Ok(ExitCode::SUCCESS)
    }

    async fn emit(&self, kind: String, payload: &str, dry_run: bool, yes: bool) -> Outcome_ {
        let payload: Value = serde_json::from_str(payload)
            .map_err(|e| CliError::Usage(format!("--payload is not JSON ({e}); pass an object such as '{{\"requests_per_second\": 2600}}'")))?;
        let event = Event::new(kind, payload).with_source("cli");
        // What it would do, from the state as stored: changes nothing.
        let state = self.load().await?;
        let mut s = self.stack.user_state(&state)?;
        let before = serde_json::to_value(&s)?;
        if let Err(rejection) = self.stack.handle_event_async(&event, &mut s).await {
            return Err(CliError::EventRefused { kind: event.kind, reason: format!("rejected: {rejection}") });
        }
        let plan = self.stack.preview(&s, &state)?;
        print_state_change(&before, &serde_json::to_value(&s)?);
        print!("{}", plan.render(self.terminal.render(true)));
        if let Err(why) = self.stack.policy().evaluate(&plan) {
            return Err(CliError::EventRefused { kind: event.kind, reason: format!("the event policy refuses its plan: {why}") });
        }
        if dry_run {
            println!("Dry run: nothing recorded or changed.");
            return Ok(ExitCode::SUCCESS);
        }
        if plan.has_changes() && !self.confirm(yes, "record this event and perform these changes")? {
            println!("Nothing changed.");
            return Ok(ExitCode::SUCCESS);
        }
        self.stack.ready().await?;
        let session = self.lock("emit").await?;
        let (mut reconciler, _events) = Reconciler::new(readable(session).await?, ReconcilerOptions::default())?;
        let kind = event.kind.clone();
        let outcome = reconciler.process(vec![event]).await;
        let report = reconciler.last_report().cloned();
        reconciler.into_session().close().await?;
        match outcome?.pop() {
            Some(Outcome::Accepted) => {}
            Some(Outcome::Rejected(r)) => return Err(CliError::EventRefused { kind, reason: format!("rejected: {r}") }),
            Some(Outcome::Duplicate) | None => println!("The event was already processed."),
        }
        match report {
            Some(report) => finish_report(&report),
            None => {
                println!("Recorded; no resource needed a change.");
                Ok(ExitCode::SUCCESS)
            }
        }
    }

    async fn graph(&self, format: &str) -> Outcome_ {
        let state = self.load().await?;
        let graph = self.stack.render(&self.stack.user_state(&state)?)?;
        if format == "dot" {
            print!("{}", graph.to_dot());
        } else {
            for (urn, deps) in graph.resources() {
                match graph.parent_of(urn) {
                    Some(parent) => println!("{urn}  (in {} '{}')", parent.ty(), parent.name()),
                    None => println!("{urn}"),
                }
                for d in deps {
                    println!("    <- {d}");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn outputs(&self, name: Option<String>, json: bool, show_secrets: bool) -> Outcome_ {
        let mut state = self.load().await?;
        let stack = self.stack.name();
        for value in state.outputs.values_mut() {
            *value = match show_secrets {
                true => cairn_sdk::secret::open_all(value).map_err(|e| CliError::Usage(format!("outputs --show-secrets: {e}")))?.0,
                false => cairn_sdk::secret::redact(value),
            };
        }
        match (name, json) {
            (Some(name), json) => match state.outputs.get(&name) {
                Some(Value::String(s)) if !json => println!("{s}"),
                Some(value) => println!("{value}"),
                None => return Err(missing_output(stack, &state, &name)),
            },
            (None, true) => println!("{}", serde_json::to_string_pretty(&state.outputs)?),
            (None, false) if state.outputs.is_empty() => println!("Stack '{stack}' has no outputs."),
            (None, false) => {
                let width = state.outputs.keys().map(String::len).max().unwrap_or(0);
                for (name, value) in &state.outputs {
                    println!("{name:width$}  {value}");
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn state(&self, verb: StateVerb) -> Outcome_ {
        match verb {
            StateVerb::List => {
                let state = self.load().await?;
                for r in &state.resources {
                    println!("{}  {}", r.urn, r.id);
                }
                println!("{} resources, serial {}", state.resources.len(), state.serial);
            }
            StateVerb::Show { urn } => {
                let state = self.load().await?;
                let r = state
                    .resource(&Urn::parse(&urn).map_err(|e| CliError::Usage(format!("state show: {e}")))?)
                    .ok_or_else(|| CliError::Usage(format!("no resource {urn} in stack '{}'; `state list` shows the URNs", self.stack.name())))?;
                let mut r = r.clone();
                for props in [&mut r.inputs, &mut r.outputs] {
                    *props = props.iter().map(|(k, v)| (k.to_owned(), cairn_sdk::secret::redact(v))).collect();
                }
                println!("{}", serde_json::to_string_pretty(&r)?);
            }
            StateVerb::Export => {
                let state = self.store.load(self.stack.name()).await?.unwrap_or_else(|| self.stack.new_state());
                println!("{}", serde_json::to_string_pretty(&state)?);
            }
            StateVerb::Import { file, force } => return self.import(&file, force).await,
            StateVerb::Unlock { force } => match cairn_state::unlock_stale(&*self.store, self.stack.name(), force).await? {
                Some(held) => println!(
                    "Removed the lock held by {} (pid {} on {}) for '{}' since {}; {}.",
                    held.user,
                    held.pid,
                    held.host,
                    held.operation,
                    held.since,
                    held.lease().describe(held.pid)
                ),
                None => println!("Stack '{}' was not locked.", self.stack.name()),
            },
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn import(&self, file: &str, force: bool) -> Outcome_ {
        let bad = |reason: String| CliError::File { path: file.to_owned(), reason };
        let text = std::fs::read_to_string(file).map_err(|e| bad(format!("it could not be read: {e}")))?;
        let mut imported: StackState = serde_json::from_str(&text).map_err(|e| bad(format!("not a state exported by `state export`: {e}")))?;
        if imported.stack != self.stack.name() {
            return Err(bad(format!("it holds stack '{}', not '{}'; pass --stack {}", imported.stack, self.stack.name(), imported.stack)));
        }
        imported.pending.clear();
        let count = imported.resources.len();
        self.locked(&self.stack, "state import", async |session| {
            let current = session.state();
            if imported.lineage != current.lineage && !current.resources.is_empty() && !force {
                return Err(CliError::File {
                    path: file.to_owned(),
                    reason: format!(
                        "it has lineage {}, the stored state {}: it is another history of this stack; pass --force to replace it anyway",
                        imported.lineage, current.lineage
                    ),
                });
            }
            Ok(session.import(imported).await?)
        })
        .await?;
        println!("Imported {count} resources from {file}.");
        Ok(ExitCode::SUCCESS)
    }

    async fn history(&self, json: bool) -> Outcome_ {
        let entries = self.store.history(self.stack.name()).await?;
        for value in &entries {
            if json {
                println!("{value}");
                continue;
            }
            let Some(e) = AuditEntry::from_value(value) else {
                // Written by something else, or a newer Cairn: shown as it is.
                println!("{value}");
                continue;
            };
            let time = cairn_state::format_utc(e.time_ms / 1000);
            let result = e.apply.as_ref().map_or("-", |a| a.result.as_str());
            match &e.event {
                Some(ev) => {
                    let reason = e.reason.as_ref().map(|r| format!(" ({r})")).unwrap_or_default();
                    println!("{time}  {:<16} {:<9}{reason}  apply: {result}  [{} from {}]", ev.kind, e.outcome.as_str(), ev.id, ev.source);
                    if e.s_before != e.s_after {
                        print_state_change(&e.s_before, &e.s_after);
                    }
                }
                None => println!("{time}  (reconcile)                 apply: {result}"),
            }
        }
        if entries.is_empty() {
            println!("No events recorded for stack '{}'.", self.stack.name());
        }
        Ok(ExitCode::SUCCESS)
    }

}

/// The session, once its stored user state reads as `S`; if it does not, the session
/// is closed first, so the lock is not left behind.
pub(crate) async fn readable<S: UserState>(session: Session<S>) -> Result<Session<S>, CliError> {
    if let Err(e) = session.user_state() {
        let _ = session.close().await;
        return Err(e.into());
    }
    Ok(session)
}

fn print_drift(report: &cairn_sdk::RefreshReport) {
    if report.drift.is_empty() {
        println!("No drift: the cloud matches state.");
    }
    for d in &report.drift {
        println!("drift: {d}");
    }
    for e in &report.errors {
        println!("could not read {e}");
    }
}

fn print_state_change(before: &Value, after: &Value) {
    let (Some(b), Some(a)) = (before.as_object(), after.as_object()) else {
        if before != after {
            println!("  state: {before} -> {after}");
        }
        return;
    };
    for (k, v) in a {
        if b.get(k) != Some(v) {
            println!("  state.{k}: {} -> {v}", b.get(k).unwrap_or(&Value::Null));
        }
    }
}

/// The closing summary, and the exit code: 1 if any step failed.
fn finish_report(report: &cairn_sdk::ApplyReport) -> Outcome_ {
    let failures: Vec<&StepReport> = report.failures().collect();
    for f in &failures {
        match &f.status {
            StepStatus::Failed { error } => eprintln!("failed to {}: {error}", error.op().map_or_else(|| format!("{:?}", f.op), |op| op.to_string())),
            StepStatus::Skipped { because } => eprintln!("skipped: {} because {because} failed", f.urn),
            _ => {}
        }
    }
    for (name, error) in &report.output_errors {
        eprintln!("stack output `{name}` not computed (it keeps its last value): {error}");
    }
    let failed = failures.len() + report.output_errors.len();
    let mut summary = report.summary;
    // Resources the apply did not touch: the rest of the new state.
    summary.same = report.state.resources.len().saturating_sub(summary.create + summary.update + summary.replace);
    println!("{}", summary_line(&summary, report.elapsed, failed));
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn summary_line(s: &Summary, elapsed: Duration, failed: usize) -> String {
    let mut parts = Vec::new();
    for (n, label) in [(s.create, "created"), (s.update, "updated"), (s.replace, "replaced"), (s.delete, "deleted"), (s.same, "unchanged")] {
        if n > 0 {
            parts.push(format!("{n} {label}"));
        }
    }
    if failed > 0 {
        parts.push(format!("{failed} failed or skipped"));
    }
    if parts.is_empty() {
        parts.push("nothing to do".to_owned());
    }
    format!("{} in {:.1} s", parts.join(", "), elapsed.as_secs_f64())
}

/// A line per resource as each step finishes; on a terminal, also a live line of what
/// is in flight.
#[derive(Debug)]
struct LiveProgress {
    terminal: Terminal,
    started: Mutex<Vec<(Urn, StepOp, Instant)>>,
}

impl LiveProgress {
    fn new(terminal: Terminal) -> Self {
        LiveProgress { terminal, started: Mutex::new(Vec::new()) }
    }

    fn live_line(&self, inflight: &[(Urn, StepOp, Instant)]) {
        if !self.terminal.out {
            return;
        }
        let mut out = std::io::stdout().lock();
        let _ = write!(out, "\r\x1b[2K");
        if let Some((urn, op, at)) = inflight.first() {
            let more = if inflight.len() > 1 { format!(" (+{} more)", inflight.len() - 1) } else { String::new() };
            let _ = write!(out, "  {} {} {}... {:.1}s{more}", verb(*op), urn.ty(), urn.name(), at.elapsed().as_secs_f64());
        }
        let _ = out.flush();
    }
}

fn verb(op: StepOp) -> &'static str {
    match op {
        StepOp::Create => "creating",
        StepOp::Update => "updating",
        StepOp::CreateReplacement => "creating replacement of",
        StepOp::DeleteReplaced => "deleting replaced",
        StepOp::Delete => "deleting",
    }
}

fn noun(op: StepOp) -> &'static str {
    match op {
        StepOp::Create => "create",
        StepOp::Update => "update",
        StepOp::CreateReplacement => "create replacement",
        StepOp::DeleteReplaced => "delete replaced",
        StepOp::Delete => "delete",
    }
}

impl Progress for LiveProgress {
    fn started(&self, urn: &Urn, op: StepOp) {
        let mut started = self.started.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        started.push((urn.clone(), op, Instant::now()));
        self.live_line(&started);
    }

    fn finished(&self, step: &StepReport) {
        let mut started = self.started.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        started.retain(|(u, op, _)| !(u == &step.urn && *op == step.op));
        let (mark, colour) = match &step.status {
            StepStatus::Done | StepStatus::NoOp { .. } => ("ok", "\x1b[32m"),
            StepStatus::Failed { .. } => ("FAILED", "\x1b[31m"),
            StepStatus::Skipped { .. } => ("skipped", "\x1b[33m"),
        };
        let line = format!("  {} {} {} ({:.1}s)", noun(step.op), step.urn.ty(), step.urn.name(), step.elapsed.as_secs_f64());
        let mut out = std::io::stdout().lock();
        if self.terminal.out {
            let _ = writeln!(out, "\r\x1b[2K{colour}{mark:>7}\x1b[0m{line}");
        } else {
            let _ = writeln!(out, "{mark:>7}{line}");
        }
        drop(out);
        self.live_line(&started);
    }
}

/// `config list|get|set` on the stack's configuration file.
fn config_verb(setup: Option<&ConfigSetup>, stack: &str, verb: ConfigVerb) -> Outcome_ {
    use crate::config;
    let setup = setup.ok_or_else(|| {
        CliError::Usage("this program reads no per-stack configuration: build its command line with Cli::configured(dir, factory)".to_owned())
    })?;
    let path = config::path(&setup.dir, stack);
    let mut table = config::read(&setup.dir, stack)?;
    let shown = |value: &toml::Value, show: bool| -> Result<toml::Value, CliError> {
        if show {
            // Loads the stack's key, checked against the file.
            config::keyring(&setup.dir, stack)?.ok_or_else(|| config::ConfigError::NoKey { stack: stack.to_owned(), path: path.clone() })?;
        }
        Ok(config::reveal(value, show)?)
    };
    match verb {
        ConfigVerb::List { json, show_secrets } => {
            let table = shown(&toml::Value::Table(table), show_secrets)?;
            match table.as_table() {
                Some(t) if t.is_empty() && !json => println!("Stack '{stack}' has no configuration ({} does not exist or is empty).", path.display()),
                _ if json => println!("{}", serde_json::to_string_pretty(&table)?),
                _ => print!("{}", toml::to_string(&table).map_err(|e| CliError::File { path: path.display().to_string(), reason: e.to_string() })?),
            }
        }
        ConfigVerb::Get { key, show_secrets } => match config::get(&table, &key) {
            Some(value) => match shown(value, show_secrets)? {
                toml::Value::String(s) => println!("{s}"),
                value => println!("{value}"),
            },
            None => {
                let keys: Vec<&String> = table.keys().collect();
                return Err(CliError::Usage(format!("{} has no key '{key}'; its keys: {keys:?}", path.display())));
            }
        },
        ConfigVerb::Set { key, value, secret } => {
            let mut value = config::parse_value(&value);
            if secret {
                let keyring = config::keyring_for_new_secret(&setup.dir, stack, &mut table)?;
                value = config::seal(&keyring, &value);
            }
            config::set(&mut table, &key, value.clone()).map_err(|e| CliError::Usage(format!("config set: {e}")))?;
            let value = config::reveal(&value, false)?;
            // Checked before it is written: a file the program cannot read stops every verb.
            (setup.check)(&setup.dir, stack, table.clone())?;
            config::write(&setup.dir, stack, &table)?;
            println!("Set {key} = {value} in {}.", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `words` without the `--stack NAME` and `--state URL` among them (also as
/// `--stack=NAME`), and their values.
fn take_globals(words: Vec<String>) -> (Vec<String>, Option<String>, Option<String>) {
    let (mut rest, mut stack, mut state) = (Vec::new(), None, None);
    let mut words = words.into_iter();
    while let Some(word) = words.next() {
        let (flag, inline) = match word.split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (word.clone(), None),
        };
        let slot = match flag.as_str() {
            "--stack" => &mut stack,
            "--state" => &mut state,
            _ => {
                rest.push(word);
                continue;
            }
        };
        *slot = inline.or_else(|| words.next());
    }
    (rest, stack, state)
}
