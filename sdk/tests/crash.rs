//! Crash safety, for real: a child process applying a stack is SIGKILLed at many points;
//! after each kill the state loads, interrupted steps are settled, the next `up`
//! converges and no resource exists twice. And two processes writing one stack.
//!
//! The child is this same test binary, re-executed with an environment variable that
//! sends the test function down its child path.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cairn_sdk::schema::{Property, ResourceType};
use cairn_sdk::testing::TestProvider;
use cairn_sdk::{DynamicResource, Handle, Progress, Stack, StepOp, StepReport, Urn};
use cairn_state::{FileStore, Store};

const CHILD_DIR: &str = "CAIRN_TEST_CHILD_DIR";
const RESOURCES: usize = 240;

static ITEM: ResourceType = ResourceType::new("crash:x:Item", &[Property::input("n"), Property::input("parent"), Property::output("id")]);

/// A tree of items, 4 children per node: wide and about 5 deep.
fn stack(cloud: &TestProvider) -> Stack<u32> {
    Stack::<u32>::new("dev").provider(cloud.clone()).program(|cx, generation| {
        let mut handles: Vec<Handle> = Vec::with_capacity(RESOURCES);
        for i in 0..RESOURCES {
            let mut item = DynamicResource::new(&ITEM, format!("item-{i:03}")).set("n", *generation);
            if i > 0 {
                item = item.set("parent", handles[(i - 1) / 4].output::<String>("id"));
            }
            handles.push(cx.add(item));
        }
        Ok(())
    })
}

/// Prints each step as it starts and ends, for the parent to count.
#[derive(Debug)]
struct Announce;

impl Progress for Announce {
    fn started(&self, urn: &Urn, _: StepOp) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "step started {}", urn.name());
        let _ = out.flush();
    }
    fn finished(&self, step: &StepReport) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "step finished {}", step.urn.name());
        let _ = out.flush();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn spawn_child(test: &str, dir: &Path) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(CHILD_DIR, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

#[test]
fn killed_at_any_point_an_apply_recovers_without_duplicates() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        // The child: apply the whole stack with some latency per call, part of it after
        // the call took effect, so that kills land there too (the resource exists, its
        // answer is not recorded) however fast the disk records answers.
        let dir = Path::new(&dir);
        runtime().block_on(async {
            let cloud = TestProvider::persistent("crash", dir.join("cloud")).unwrap().with_latency(Duration::from_millis(2)).with_answer_latency(Duration::from_millis(1));
            let stack = stack(&cloud).progress(Announce);
            let store: Arc<dyn Store> = Arc::new(FileStore::new(dir.join("state")));
            let mut session = stack.lock(store, "up").await.unwrap();
            let report = session.up(&1).await.unwrap();
            session.close().await.unwrap();
            assert!(report.succeeded());
        });
        return;
    }

    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        // xorshift64: deterministic kill points, spread over the whole apply.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let (mut kills, mut interrupted_steps, mut adopted) = (0, 0, 0);
    for _round in 0..24 {
        let tmp = tempfile::tempdir().unwrap();
        // Each step prints two lines; kill somewhere among them.
        let kill_at = 1 + (next() % (2 * RESOURCES as u64 - 2)) as usize;
        let mut child = spawn_child("killed_at_any_point_an_apply_recovers_without_duplicates", tmp.path());
        let pid = child.id();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        let mut killed = false;
        while let Some(Ok(line)) = lines.next() {
            if line.starts_with("step ") {
                seen += 1;
                if seen == kill_at {
                    child.kill().unwrap(); // SIGKILL: no destructor, no flush, no unlock.
                    killed = true;
                    break;
                }
            }
        }
        let status = child.wait().unwrap();
        // The child may finish before the kill lands; only a real SIGKILL counts.
        if !killed || std::os::unix::process::ExitStatusExt::signal(&status) != Some(9) {
            continue;
        }
        kills += 1;

        runtime().block_on(async {
            let cloud = TestProvider::persistent("crash", tmp.path().join("cloud")).unwrap();
            let stack = stack(&cloud);
            let store: Arc<dyn Store> = Arc::new(FileStore::new(tmp.path().join("state")));

            // The dead child still holds the lock: the next writer is told who.
            let err = stack.lock(store.clone(), "up").await.unwrap_err();
            assert!(err.to_string().contains(&format!("(pid {pid})")), "{err}");
            store.force_unlock("dev").await.unwrap();

            // The state loads; steps the kill interrupted are pending.
            let loaded = store.load("dev").await.unwrap().expect("the first snapshot is written before any step");
            interrupted_steps += loaded.pending.len();

            let mut session = stack.lock(store.clone(), "up").await.unwrap();
            adopted += session.recovered().iter().filter(|r| matches!(r, cairn_sdk::Recovery::Adopted { .. })).count();
            let report = session.up(&1).await.unwrap();
            assert!(report.succeeded(), "{:?}", report.failures().collect::<Vec<_>>());
            assert!(!session.preview(&1).unwrap().has_changes(), "converged");
            let state = session.state().clone();
            session.close().await.unwrap();

            let in_cloud = cloud.resources();
            let urns: HashSet<&Urn> = in_cloud.iter().map(|r| &r.urn).collect();
            assert_eq!(urns.len(), in_cloud.len(), "a resource exists twice (kill after line {kill_at})");
            assert_eq!(in_cloud.len(), RESOURCES);
            let ids_in_state: HashSet<&str> = state.resources.iter().map(|r| r.id.as_str()).collect();
            let ids_in_cloud: HashSet<&str> = in_cloud.iter().map(|r| r.id.as_str()).collect();
            assert_eq!(ids_in_state, ids_in_cloud, "state records exactly what exists");
        });
    }
    assert!(kills >= 20, "only {kills} kills landed");
    // The kills must have hit steps in flight, or this test proves little.
    assert!(interrupted_steps > 0 && adopted > 0, "interrupted {interrupted_steps}, adopted {adopted}");
    eprintln!("{kills} kills, {interrupted_steps} interrupted steps settled, {adopted} adopted");
}

#[test]
fn a_second_process_gets_the_lock_error_while_the_first_writes() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        // The child: try to write the stack; report how it went by the exit code.
        let dir = Path::new(&dir);
        let code = runtime().block_on(async {
            let stack = Stack::<u32>::new("dev").provider(TestProvider::new("crash"));
            let store: Arc<dyn Store> = Arc::new(FileStore::new(dir.join("state")));
            match stack.lock(store, "up").await {
                Ok(session) => {
                    session.close().await.unwrap();
                    println!("proceeded");
                    0
                }
                Err(e) => {
                    println!("refused: {e}");
                    3
                }
            }
        });
        std::process::exit(code);
    }

    let tmp = tempfile::tempdir().unwrap();
    let run_child = || {
        let child = spawn_child("a_second_process_gets_the_lock_error_while_the_first_writes", tmp.path());
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8(out.stdout).unwrap())
    };
    runtime().block_on(async {
        let stack = Stack::<u32>::new("dev").provider(TestProvider::new("crash"));
        let store: Arc<dyn Store> = Arc::new(FileStore::new(tmp.path().join("state")));
        let session = stack.lock(store, "up").await.unwrap();

        let (code, out) = run_child();
        assert_eq!(code, Some(3), "{out}");
        let expected = "refused: stack 'dev' is locked by ";
        assert!(out.contains(expected) && out.contains(&format!("(pid {})", std::process::id())), "{out}");
        assert!(out.contains("for 'up'") && out.contains("its lease expires in"), "{out}");

        session.close().await.unwrap();
    });
    let (code, out) = run_child();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("proceeded"));
}
