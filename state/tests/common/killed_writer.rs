//! A writer of a store SIGKILLed at many moments: in the middle of its journal records,
//! of its commit, or between the two. The child is the test binary itself, re-run with
//! an environment variable that sends the test down its child path.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use cairn_state::{JournalRecord, Props, ResourceState, StackState, StateError, StepEffect, Store, StoredOptions, Urn};
use serde_json::json;

const CHILD: &str = "CAIRN_TEST_KILLED_WRITER";
const RESOURCES: usize = 12;
const KILLS: usize = 6;

/// Whether this process is the child that writes until it is killed.
pub fn is_child() -> bool {
    std::env::var(CHILD).is_ok()
}

/// Generation `g` of the stack the writer keeps rewriting: every resource's size is
/// the generation, so a state mixing generations wrongly is caught.
fn generation(g: u64) -> Vec<ResourceState> {
    (0..RESOURCES)
        .map(|i| ResourceState {
            urn: Urn::new("dev", "test:Thing", &format!("r{i:02}")),
            ty: "test:Thing".into(),
            id: format!("r{i:02}-1"),
            inputs: Props::from_value(json!({ "size": g })).unwrap(),
            outputs: Props::new(),
            dependencies: vec![],
            options: StoredOptions::default(),
            pending_delete: false,
        })
        .collect()
}

/// The child: takes the lock, then writes generation after generation, as an apply
/// does (the user state, a record per resource, the commit), printing each commit.
pub async fn write_until_killed(store: &dyn Store) {
    let lock = store.lock("dev", "up").await.unwrap();
    let mut state = store.load("dev").await.unwrap().unwrap_or_else(|| StackState::new("dev"));
    loop {
        let g = state.serial + 1;
        let journal = store.journal(&lock).await.unwrap();
        journal.record(JournalRecord::UserState { base: state.serial, value: json!(g) }).await.unwrap();
        for (i, resource) in generation(g).into_iter().enumerate() {
            journal.record(JournalRecord::End { base: state.serial, step: (g, i as u32), effect: StepEffect::Upsert { resource } }).await.unwrap();
        }
        state = StackState { serial: g, user_state: json!(g), resources: generation(g), ..state };
        store.commit(&lock, &state).await.unwrap();
        println!("committed {g}");
    }
}

/// The parent: runs test `test` as the child `KILLS` times and kills it after one to
/// three commits plus up to 40 ms (deterministic moments). Each time the state loads,
/// is no older than the last commit reported, is that commit with a prefix of the next
/// generation's records replayed onto it, and the next writer takes over and commits.
pub async fn kill_and_check(store: &dyn Store, test: &str, env: &[(&str, String)]) {
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..KILLS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", test, "--nocapture", "--test-threads", "1"])
            .env(CHILD, "1")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // xorshift64
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let commits = 1 + seed % 3;
        let (mut last, mut seen) = (0, 0);
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            if let Some(g) = line.unwrap().strip_prefix("committed ") {
                last = g.parse::<u64>().unwrap();
                seen += 1;
                if seen == commits {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(seed % 40));
        child.kill().unwrap(); // SIGKILL: no unlock, no flush.
        child.wait().unwrap();

        let state = loads_whole(store, last).await;

        // The next writer breaks the dead one's lock, as `state unlock` does, and goes on.
        store.force_unlock("dev").await.unwrap();
        let lock = store.lock("dev", "up").await.unwrap();
        let read = state.serial;
        let next = StackState { serial: read + 1, ..state };
        let next = match store.commit(&lock, &next).await {
            Ok(()) => next,
            // The dead writer's commit was on its way when it was killed, and the local
            // S3 carried it out after the load above (a server finishes a request it has
            // whole): refused, as a commit over a state not read must be. Read again.
            Err(StateError::Conflict { .. }) => {
                let state = loads_whole(store, last).await;
                assert!(state.serial > read, "refused, but no later commit landed: serial {} after {read}", state.serial);
                let next = StackState { serial: state.serial + 1, ..state };
                store.commit(&lock, &next).await.expect("a commit over the state just read");
                next
            }
            Err(e) => panic!("the next writer's commit: {e}"),
        };
        assert_eq!(store.load("dev").await.unwrap().unwrap(), next);
        store.unlock(lock).await.unwrap();
    }
}

/// Loads the state a killed writer left, and checks it is whole: no older than `last`,
/// the commit reported, and that commit with a prefix of the next one's records.
async fn loads_whole(store: &dyn Store, last: u64) -> StackState {
    let state = store.load("dev").await.expect("the state loads after a kill").expect("it exists");
    let g = state.user_state.as_u64().unwrap();
    assert!(g >= last, "the state went back: generation {g} after commit {last} was reported");
    let sizes: Vec<u64> = state.resources.iter().map(|r| r.inputs.get("size").and_then(|v| v.as_u64()).unwrap()).collect();
    assert_eq!(state.resources.len(), RESOURCES, "{sizes:?}");
    assert!(sizes.iter().all(|&n| n == g || n + 1 == g), "generation {g}: {sizes:?}");
    assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "the records replayed are a prefix: {sizes:?}");
    state
}
