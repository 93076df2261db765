//! `watch --stacks`: many stacks in one process, a lease and a reconciler each; and a
//! second process of them as a standby that takes every stack over when the first
//! dies. In-process: each "process" is a runtime on a thread of its own, and killing
//! it drops everything it ran (its renewals too) with no clean-up, as a crash does.

use std::time::{Duration, Instant};

use cairn::cli::Cli;
use cairn::state::{FileStore, Store};
use cairn::Stack;
use serde_json::Value;

/// Leases of 1 s, for every test of this binary, set before any reads it.
fn short_leases() {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| std::env::set_var("CAIRN_LEASE_SECS", "1"));
}

#[test]
fn many_stacks_in_one_process_and_a_standby_process_that_takes_them_all_over() {
    short_leases();
    let dir = tempfile::tempdir().unwrap();
    let state = format!("file://{}", dir.path().display());
    let stacks = ["blue", "green", "red"];

    let first = Replica::start(&state, &stacks, false);
    let statuses = first.wait_until("the first process leads every stack", |s| s.iter().all(|s| s["role"] == "leader"));
    let names: Vec<&str> = statuses.iter().map(|s| s["stack"].as_str().unwrap()).collect();
    assert_eq!(names, stacks);
    let one = first.get("/stacks/green/status").unwrap();
    assert!(one.contains("\"stack\":\"green\"") && one.contains("\"role\":\"leader\""), "{one}");
    assert!(!one.contains("token"), "the lock's token is never shown: {one}");
    assert!(first.get("/stacks/green/metrics").unwrap().contains("cairn_leader 1"));

    let second = Replica::start(&state, &stacks, true);
    second.wait_until("the second process stands by for every stack", |s| s.iter().all(|s| s["role"] == "standby"));
    let metrics = second.get("/stacks/red/metrics").unwrap();
    assert!(metrics.contains("cairn_leader 0"), "{metrics}");

    // The first process dies: its leases run out, and the standby takes each stack.
    let died = Instant::now();
    drop(first);
    second.wait_until("the standby leads every stack", |s| s.iter().all(|s| s["role"] == "leader"));
    let failover = died.elapsed();
    // About the lease: its rest, then the standby's look (every 0.5 s at most) and
    // each stack's hold-back before it tries (up to 250 ms, more per stack it leads).
    assert!(failover < Duration::from_millis(1000 + 2000), "took {failover:?}: more than the lease + 2 s");

    // Someone breaks the lock of one stack and takes it: the process that led it finds
    // its lease lost at its next renewal, stops every stack it led (releasing the
    // others' locks), and exits 1 for its supervisor to restart it.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = FileStore::new(dir.path());
    let intruder = runtime.block_on(async {
        let held = store.lock_holder("blue").await.unwrap().unwrap();
        store.break_lock("blue", &held.token).await.unwrap().expect("the lock just read");
        store.lock("blue", "up").await.unwrap()
    });
    let code = second.exited_within(Duration::from_secs(5)).expect("the process that lost a lease exits");
    assert_eq!(format!("{code:?}"), format!("{:?}", std::process::ExitCode::from(1)));
    runtime.block_on(async {
        for stack in ["green", "red"] {
            assert_eq!(store.lock_holder(stack).await.unwrap(), None, "{stack} released on the way out");
        }
        assert_eq!(store.lock_holder("blue").await.unwrap().unwrap().token, intruder.info.token, "blue stays the intruder's");
    });
}

/// Two standby processes of the same 12 stacks, started together, split them: each
/// stack is led by exactly one, and each process leads some. A third, watching
/// `--all-stacks`, finds all 12 in the store and stands by for each.
#[test]
fn standby_processes_started_together_spread_the_stacks_and_all_stacks_finds_them() {
    short_leases();
    let dir = tempfile::tempdir().unwrap();
    let state = format!("file://{}", dir.path().display());
    let names: Vec<String> = (0..12).map(|i| format!("s{i:02}")).collect();
    let stacks: Vec<&str> = names.iter().map(String::as_str).collect();
    let a = Replica::start(&state, &stacks, true);
    let b = Replica::start(&state, &stacks, true);
    let led = |r: &Replica| -> Vec<String> {
        r.get("/status")
            .and_then(|body| serde_json::from_str::<Vec<Value>>(&body).ok())
            .map(|all| all.iter().filter(|s| s["role"] == "leader").map(|s| s["stack"].as_str().unwrap().to_owned()).collect())
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let (by_a, by_b) = loop {
        let (by_a, by_b) = (led(&a), led(&b));
        if by_a.len() + by_b.len() == stacks.len() {
            break (by_a, by_b);
        }
        assert!(Instant::now() < deadline, "not every stack led within 30 s: {by_a:?} {by_b:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(by_a.iter().all(|s| !by_b.contains(s)), "a stack led twice: {by_a:?} {by_b:?}");
    assert!(!by_a.is_empty() && !by_b.is_empty(), "one process took every stack: {by_a:?} {by_b:?}");

    let all = Replica::start_with(&state, &["--all-stacks", "--standby"]);
    let statuses = all.wait_until("--all-stacks stands by for all 12", |s| s.len() == 12 && s.iter().all(|s| s["role"] == "standby"));
    let found: Vec<&str> = statuses.iter().map(|s| s["stack"].as_str().unwrap()).collect();
    assert_eq!(found, stacks);
}

/// A `watch` process: a runtime on its own thread running the CLI until killed, or
/// until it exits by itself (with the exit code it gives back).
struct Replica {
    port: u16,
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Option<std::process::ExitCode>>>,
}

impl Replica {
    fn start(state: &str, stacks: &[&str], standby: bool) -> Replica {
        let stacks = stacks.join(",");
        let mut flags = vec!["--stacks", stacks.as_str()];
        if standby {
            flags.push("--standby");
        }
        Replica::start_with(state, &flags)
    }

    /// `watch` with these flags.
    fn start_with(state: &str, flags: &[&str]) -> Replica {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut args = vec!["shop".to_owned(), "--state".into(), state.into(), "watch".into(), "--listen".into(), format!("127.0.0.1:{port}")];
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                tokio::select! {
                    code = Cli::new(|name: &str| Stack::<u32>::new(name)).run_with(args) => Some(code),
                    _ = killed => None,
                }
            })
        });
        Replica { port, kill: Some(kill), thread: Some(thread) }
    }

    /// The exit code, if it exits by itself within `within`.
    fn exited_within(mut self, within: Duration) -> Option<std::process::ExitCode> {
        let deadline = Instant::now() + within;
        while !self.thread.as_ref()?.is_finished() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.thread.take()?.join().ok()?
    }

    fn get(&self, path: &str) -> Option<String> {
        cairn_testkit::http_get(self.port, path).map(|(_, body)| body)
    }

    /// Polls `/status` (every stack's document) until `done` holds, for at most 30 s.
    fn wait_until(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let statuses: Option<Vec<Value>> = self.get("/status").and_then(|body| serde_json::from_str(&body).ok());
            if let Some(s) = statuses.filter(|s| done(s)) {
                return s;
            }
            assert!(Instant::now() < deadline, "{what}: not within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
