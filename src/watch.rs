//! `watch`: the event loop of one stack or many, as the leader or as a standby.
//!
//! Each stack gets its own lease and reconciler. With `--standby`, a stack another
//! process leads is waited for: the replica serves `/status` (role `standby`), refuses
//! webhook calls with 503, starts no source (an SQS message stays in its queue for the
//! leader), and takes the stack over once the leader's lease has expired. A leader that
//! loses its lease stops that stack at once and exits non-zero when the rest stop.

use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::routing::get;
use axum::{Json, Router};
use cairn_sdk::events::{inbox, Events, Inbox, Reconciler, ReconcilerOptions, Role, Source, Status};
use cairn_sdk::{Session, Stack, Standby, STANDBY_STORE_ERRORS_FOR};
use cairn_state::Store;
use tokio::sync::watch;

use crate::cli::{CliError, UserState};
use crate::serve::HttpLimits;

/// How often a standby looks at the lease of a stack it waits for, at most: failover
/// comes within this of the leader's lease running out.
pub(crate) const STANDBY_POLL: Duration = Duration::from_millis(500);

/// How long a stack's sources get to settle once its reconciler stopped.
const SOURCE_GRACE: Duration = Duration::from_secs(5);

/// What `watch` was asked to do.
pub(crate) struct Plan<S> {
    pub(crate) stacks: Vec<Stack<S>>,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) listen: String,
    pub(crate) standby: bool,
    pub(crate) sources: Vec<Arc<dyn Source>>,
    pub(crate) options: ReconcilerOptions,
    pub(crate) http: HttpLimits,
}

/// One watched stack before it is led: its way in, and the inbox its reconciler will
/// take events from once this process holds the lease.
struct Watched<S> {
    stack: Stack<S>,
    events: Events,
    inbox: Inbox,
    status: Arc<Mutex<Status>>,
}

pub(crate) async fn run<S: UserState>(plan: Plan<S>) -> Result<ExitCode, CliError> {
    let listener = tokio::net::TcpListener::bind(&plan.listen).await.map_err(|e| CliError::Usage(format!("cannot listen on {}: {e}; pick another address with --listen", plan.listen)))?;
    // Before any lock is taken: an error from here on must not leave one behind.
    let addr = listener.local_addr()?;
    let webhook = match std::env::var("CAIRN_WEBHOOK_SECRET") {
        Ok(secret) if secret.trim().is_empty() => {
            return Err(CliError::Usage("CAIRN_WEBHOOK_SECRET is set but empty; set it to a long random secret, or unset it to turn the webhook off".to_owned()))
        }
        Ok(secret) => Some(crate::serve::WebhookConfig::new(secret.into_bytes())),
        _ => {
            eprintln!("note: CAIRN_WEBHOOK_SECRET is not set, so POST /events is off");
            None
        }
    };
    let watched: Vec<Watched<S>> = plan
        .stacks
        .into_iter()
        .map(|stack| {
            let (events, inbox) = inbox(stack.name(), plan.options.queue);
            let status = inbox.status();
            // A standby waits for the lease; without --standby the lease is taken at
            // once or the command fails.
            if plan.standby {
                status.lock().unwrap_or_else(PoisonError::into_inner).role = Role::Standby;
            }
            Watched { stack, events, inbox, status }
        })
        .collect();

    let router = match &watched[..] {
        [one] => crate::serve::router_with_limits(one.events.clone(), one.status.clone(), webhook, plan.http),
        many => {
            // Each stack under /stacks/<name>/ with the single-stack routes; /status
            // lists them all.
            let statuses: Vec<(Arc<Mutex<Status>>, Events)> = many.iter().map(|w| (w.status.clone(), w.events.clone())).collect();
            let mut router = Router::new().route("/healthz", get(|| async { "ok" })).route(
                "/status",
                get(move || {
                    let all = statuses.iter().map(|(status, events)| crate::serve::status_of(status, events)).collect::<Vec<_>>();
                    async move { Json(all) }
                }),
            );
            for w in many {
                let routes = crate::serve::router_with_limits(w.events.clone(), w.status.clone(), webhook.clone(), plan.http);
                router = router.nest(&format!("/stacks/{}", w.stack.name()), routes);
            }
            router
        }
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    let mut http_stop = stop_rx.clone();
    let http = tokio::spawn(async move {
        let shutdown = async move {
            let _ = http_stop.wait_for(|s| *s).await;
        };
        if let Err(e) = crate::serve::serve(listener, router, shutdown).await {
            eprintln!("HTTP server stopped: {e}");
        }
    });
    let names: Vec<String> = watched.iter().map(|w| w.stack.name().to_owned()).collect();
    let routes = if names.len() == 1 { "/healthz, /metrics, /status, POST /events".to_owned() } else { "/healthz, /status, /stacks/<stack>/{metrics,status,events}".to_owned() };
    println!("Watching stack{} '{}' on http://{addr} ({routes}). Ctrl-C stops.", if names.len() == 1 { "" } else { "s" }, names.join("', '"));

    let shared = Arc::new(Shared {
        store: plan.store,
        standby: plan.standby,
        sources: plan.sources,
        options: plan.options,
        many: names.len() > 1,
        leading: AtomicUsize::new(0),
    });
    let mut leading = tokio::task::JoinSet::new();
    for w in watched {
        leading.spawn(lead(shared.clone(), w, stop_rx.clone()));
    }
    // A stack that fails (its lease lost, its lock held elsewhere without --standby)
    // stops the whole process, at once: a supervisor restarts it as a whole, and no
    // replica goes on silently covering fewer stacks than it was started for.
    let mut failures = 0;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut stopping = false;
    loop {
        let failure = tokio::select! {
            done = leading.join_next() => match done {
                None => break,
                Some(Ok(Ok(()))) => None,
                Some(Ok(Err(failure))) => Some(failure.to_string()),
                Some(Err(e)) => Some(format!("a stack's watcher panicked: {e}")),
            },
            _ = &mut ctrl_c, if !stopping => {
                stopping = true;
                let _ = stop_tx.send(true);
                None
            }
        };
        if let Some(why) = failure {
            eprintln!("error: {why}");
            failures += 1;
            let _ = stop_tx.send(true);
        }
    }
    let _ = stop_tx.send(true);
    let _ = http.await;
    if failures == 0 {
        println!("Stopped; state recorded.");
        Ok(ExitCode::SUCCESS)
    } else {
        // Each failure was printed as it happened.
        Err(CliError::WatchStopped { failed: failures })
    }
}

/// What every stack's watcher shares.
struct Shared {
    store: Arc<dyn Store>,
    standby: bool,
    sources: Vec<Arc<dyn Source>>,
    options: ReconcilerOptions,
    /// Several stacks: their reconcilers share the runtime, rather than taking a thread
    /// each.
    many: bool,
    /// How many stacks this process leads.
    leading: AtomicUsize,
}

impl Shared {
    /// How long a standby holds back before trying to take a stack: a random part (up to
    /// half the poll), so that replicas started together split the stacks between them
    /// rather than the first taking all; and 20 ms per stack it already leads (at most
    /// a poll), so that when a leader dies its stacks go first to the replicas that
    /// lead the fewest.
    fn hold_back(&self, stack: &str) -> Duration {
        if !self.many {
            return Duration::ZERO;
        }
        let random = {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write(stack.as_bytes());
            h.finish()
        };
        let jitter = Duration::from_millis(random % (STANDBY_POLL.as_millis() as u64 / 2));
        let load = (Duration::from_millis(20) * self.leading.load(Ordering::Relaxed) as u32).min(STANDBY_POLL);
        jitter + load
    }
}

/// Watches one stack until stopped: waits for its lease if asked to, then reconciles.
async fn lead<S: UserState>(shared: Arc<Shared>, w: Watched<S>, mut stop: watch::Receiver<bool>) -> Result<(), CliError> {
    let Watched { stack, events, inbox, status } = w;
    let name = stack.name().to_owned();
    stack.ready().await?;
    let session = {
        let acquire = acquire(&shared, &stack, &status);
        tokio::select! {
            session = acquire => session?,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        }
    };
    for r in session.recovered() {
        eprintln!("recovered: {r}");
    }
    println!("leading stack '{name}' (lease generation {}, renewed every {:.1} s)", session.lock_info().generation, session.lease().as_secs_f64() / 3.0);
    shared.leading.fetch_add(1, Ordering::Relaxed);
    let lost = session.lease_lost();
    let state = session.state().clone();
    let reconciler = Reconciler::from_inbox(crate::cli::readable(session).await?, shared.options.clone(), inbox)?;
    let metrics = events.metrics().clone();

    let mut tasks = tokio::task::JoinSet::new();
    for source in &shared.sources {
        let label = source.name();
        println!("source: {label} (stack '{name}')");
        let (source, state, events, stack) = (source.clone(), state.clone(), events.clone(), name.clone());
        tasks.spawn(async move {
            if let Err(e) = source.run(&state, events).await {
                eprintln!("source {label} of stack '{stack}' stopped: {e}");
            }
        });
    }
    drop(events);

    // Stops on Ctrl-C or when the lease is found lost, whichever comes first.
    let (lost_tx, mut lost_rx) = watch::channel(false);
    let mut stopping = stop.clone();
    let until = async move {
        tokio::select! {
            _ = stopping.wait_for(|s| *s) => {}
            () = lost => {
                let _ = lost_tx.send(true);
            }
        }
    };
    let finished = if shared.many {
        // The reconciler's future waits on its own stop signal; a task on this runtime.
        let (tx, rx) = tokio::sync::oneshot::channel();
        let shutdown = async move {
            let _ = rx.await;
        };
        let running = tokio::spawn(reconciler.run(shutdown));
        until.await;
        let _ = tx.send(());
        running.await.map_err(|e| CliError::ReconcilerPanicked { stack: name.to_string(), message: e.to_string() })?
    } else {
        // The reconciler gets a thread of its own, so an event's render, diff and apply
        // never wait behind the HTTP server or the sources.
        let (tx, mut rx) = watch::channel(false);
        let running = reconciler.spawn(async move {
            let _ = rx.wait_for(|s| *s).await;
        });
        let finished = running.finished();
        tokio::pin!(finished);
        tokio::select! {
            result = &mut finished => result,
            () = until => {
                let _ = tx.send(true);
                finished.await
            }
        }
    };
    // The reconciler is gone, so its `Events` are closed: sources settle what they hold
    // (an SQS source makes unrecorded messages visible again at once) and end. Those
    // that take longer are stopped; their messages come back when their visibility
    // timeout ends.
    let settled = tokio::time::timeout(SOURCE_GRACE, async { while tasks.join_next().await.is_some() {} }).await;
    if settled.is_err() {
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    metrics.set_leader(false);
    shared.leading.fetch_sub(1, Ordering::Relaxed);
    status.lock().unwrap_or_else(PoisonError::into_inner).role = Role::Standby;
    let lease_error = |e: &cairn_sdk::Error| {
        matches!(e, cairn_sdk::Error::State(cairn_state::StateError::LockLost(_) | cairn_state::StateError::LeaseExpired { .. }))
    };
    if *lost_rx.borrow_and_update() || finished.as_ref().is_err_and(lease_error) {
        // Its lock is another process's now, or will be: nothing to close or release.
        return Err(CliError::LeaseLost { stack: name.to_string() });
    }
    let session = finished?;
    session.close().await?;
    Ok(())
}

/// The stack's lock: at once, or as a standby, waiting for it.
async fn acquire<S: UserState>(shared: &Shared, stack: &Stack<S>, status: &Arc<Mutex<Status>>) -> Result<Session<S>, CliError> {
    if !shared.standby {
        return Ok(stack.lock(shared.store.clone(), "watch").await?);
    }
    let mut told = None;
    // Whether the store's errors were reported and have not passed yet.
    let mut failing = false;
    let answers_again = || println!("standby for stack '{}': the state store answers again", stack.name());
    let session = stack
        .lock_when_free(shared.store.clone(), "watch", STANDBY_POLL, || shared.hold_back(stack.name()), |found| match found {
            Standby::Held(holder) => {
                let mut s = status.lock().unwrap_or_else(PoisonError::into_inner);
                s.role = Role::Standby;
                s.lock_holder = serde_json::to_value(holder).ok();
                if std::mem::take(&mut failing) {
                    answers_again();
                }
                if told.as_deref() != Some(holder.token.as_str()) {
                    println!(
                        "standby for stack '{}': {}@{} (pid {}) leads it; {}",
                        stack.name(),
                        holder.user,
                        holder.host,
                        holder.pid,
                        holder.lease().describe(holder.pid)
                    );
                    told = Some(holder.token.clone());
                }
            }
            Standby::StoreFailing { error, .. } if !failing => {
                failing = true;
                eprintln!(
                    "standby for stack '{}': the state store failed ({error}); trying again every {:.1} s, and giving up \
                     once its errors have lasted {} s in a row",
                    stack.name(),
                    STANDBY_POLL.as_secs_f64(),
                    STANDBY_STORE_ERRORS_FOR.as_secs()
                );
            }
            _ => {}
        })
        .await?;
    if failing {
        answers_again();
    }
    Ok(session)
}
