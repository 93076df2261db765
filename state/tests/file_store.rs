//! The local-file store: refusals, the journal, locks and commits.

use std::path::{Path, PathBuf};
use std::sync::Arc;

mod common;

use cairn_state::{
    FileStore, Journal, JournalRecord, Lock, PendingOperation, Props, ResourceState, StackState, StateError, StepEffect, StepOp,
    Store, StoredOptions, Urn,
};
use serde_json::json;

fn resource(name: &str, id: &str, deps: &[&str]) -> ResourceState {
    ResourceState {
        urn: Urn::new("dev", "test:Thing", name),
        ty: "test:Thing".into(),
        id: id.into(),
        inputs: Props::from_value(json!({"size": 1})).unwrap(),
        outputs: Props::new(),
        dependencies: deps.iter().map(|d| Urn::new("dev", "test:Thing", d)).collect(),
        options: StoredOptions::default(),
        pending_delete: false,
    }
}

/// The journal's records: its text up to the zeros that follow them.
fn records(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap();
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8(bytes[..end].to_vec()).unwrap()
}

/// The error's message with the temporary directory replaced, for stable snapshots.
fn message(e: StateError, dir: &Path) -> String {
    e.to_string().replace(&dir.display().to_string(), "<dir>")
}

async fn refusal(contents: &[u8]) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::new(tmp.path());
    let path = tmp.path().join("dev/state.json");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, contents).unwrap();

    let err = store.load("dev").await.unwrap_err();
    // Refused to write over it, too.
    let lock = store.lock("dev", "up").await.unwrap();
    let mut state = StackState::new("dev");
    state.serial = 7;
    let commit = store.commit(&lock, &state).await;
    assert!(commit.is_err(), "a commit over an unreadable snapshot must be refused");
    assert_eq!(std::fs::read(&path).unwrap(), contents, "the file is untouched");
    message(err, tmp.path())
}

#[tokio::test]
async fn an_empty_state_file_is_refused() {
    insta::assert_snapshot!(refusal(b"").await);
}

#[tokio::test]
async fn a_truncated_state_file_is_refused() {
    let full = serde_json::to_vec(&StackState::new("dev")).unwrap();
    insta::assert_snapshot!(refusal(&full[..full.len() / 2]).await.replace(&(full.len() / 2).to_string(), "N"));
}

#[tokio::test]
async fn a_corrupt_state_file_is_refused() {
    insta::assert_snapshot!(refusal(b"{\"version\": 1, \"stack\": \"dev\",, }").await);
}

#[tokio::test]
async fn a_state_file_from_a_newer_cairn_is_refused() {
    let mut doc = serde_json::to_value(StackState::new("dev")).unwrap();
    doc["version"] = json!(2);
    insta::assert_snapshot!(refusal(&serde_json::to_vec(&doc).unwrap()).await);
}

#[tokio::test]
async fn a_newer_format_is_reported_as_newer_whatever_its_fields_became() {
    // What a later format might change: the fields a commit compares, and the rest.
    let doc = json!({"version": 2, "lineage": {"id": "abc"}, "serial": "7", "resources": {"r": 1}});
    let message = refusal(&serde_json::to_vec(&doc).unwrap()).await;
    assert!(message.contains("has format version 2, but this Cairn reads versions up to 1"), "{message}");
}

#[tokio::test]
async fn a_file_that_is_not_cairn_state_is_refused() {
    insta::assert_snapshot!(refusal(b"{\"resources\": []}").await);
}

#[tokio::test]
async fn commit_then_load_round_trips_and_keeps_a_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::new(tmp.path());
    assert!(store.load("dev").await.unwrap().is_none(), "a new stack has no state");

    let lock = store.lock("dev", "up").await.unwrap();
    let mut state = StackState::new("dev");
    store.commit(&lock, &state).await.unwrap();
    state.serial = 1;
    state.resources.push(resource("a", "a-1", &[]));
    store.commit(&lock, &state).await.unwrap();

    assert_eq!(store.load("dev").await.unwrap().unwrap(), state);
    let backup: StackState = serde_json::from_slice(&std::fs::read(tmp.path().join("dev/state.json.bak")).unwrap()).unwrap();
    assert_eq!(backup.serial, 0, "the previous snapshot is kept");
}

#[tokio::test]
async fn a_commit_that_does_not_follow_the_stored_snapshot_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::new(tmp.path());
    let lock = store.lock("dev", "up").await.unwrap();
    let mut state = StackState::new("dev");
    state.serial = 3;
    store.commit(&lock, &state).await.unwrap();

    let stale = StackState { serial: 3, ..state.clone() };
    assert!(matches!(store.commit(&lock, &stale).await, Err(StateError::Conflict { .. })));
    let other = StackState { serial: 9, ..StackState::new("dev") };
    let err = store.commit(&lock, &other).await.unwrap_err();
    assert!(err.to_string().contains("changed by someone else"), "{err}");
}

#[tokio::test]
async fn the_journal_replays_over_the_snapshot_and_leaves_unfinished_steps_pending() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::new(tmp.path());
    let lock = store.lock("dev", "up").await.unwrap();
    let mut state = StackState::new("dev");
    state.resources.push(resource("old", "old-1", &[]));
    store.commit(&lock, &state).await.unwrap();

    let journal = store.journal(&lock).await.unwrap();
    let begin = |n: u32, kind, name: &str, id: Option<&str>| JournalRecord::Begin {
        base: 0,
        step: (7, n),
        op: PendingOperation {
            kind,
            urn: Urn::new("dev", "test:Thing", name),
            id: id.map(Into::into),
            dependencies: vec![],
            options: StoredOptions::default(),
            inputs: Default::default(),
        },
    };
    journal.record(JournalRecord::UserState { base: 0, value: json!({"capacity": 4}) }).await.unwrap();
    journal.record(begin(0, StepOp::Create, "b", None)).await.unwrap();
    journal.record(begin(1, StepOp::Delete, "old", Some("old-1"))).await.unwrap();
    journal.record(begin(2, StepOp::Create, "c", None)).await.unwrap();
    journal.record(JournalRecord::End { base: 0, step: (7, 1), effect: StepEffect::Removed { urn: Urn::new("dev", "test:Thing", "old"), id: "old-1".into() } }).await.unwrap();
    journal.record(JournalRecord::End { base: 0, step: (7, 0), effect: StepEffect::Upsert { resource: resource("b", "b-1", &[]) } }).await.unwrap();
    // A record for an older snapshot (left by a compaction that crashed) is ignored.
    journal.record(JournalRecord::End { base: 99, step: (1, 1), effect: StepEffect::Upsert { resource: resource("ghost", "g-1", &[]) } }).await.unwrap();
    // A torn last line, before the zeros: the crash came in the middle of writing it.
    let path = tmp.path().join("dev/journal.jsonl");
    let torn = records(&path) + "{\"record\":\"end\",\"base\":0,\"st";
    overwrite(&path, 0, torn.as_bytes());

    let loaded = store.load("dev").await.unwrap().unwrap();
    // Appending after a torn line must not corrupt the journal.
    let again = store.journal(&lock).await.unwrap();
    again.record(JournalRecord::UserState { base: 0, value: json!({"capacity": 4}) }).await.unwrap();
    assert_eq!(store.load("dev").await.unwrap().unwrap(), loaded, "the torn line was cut, the new record read");
    let names: Vec<&str> = loaded.resources.iter().map(|r| r.urn.name()).collect();
    assert_eq!(names, ["b"]);
    assert_eq!(loaded.user_state, json!({"capacity": 4}));
    assert_eq!(loaded.pending.len(), 1);
    assert_eq!((loaded.pending[0].kind, loaded.pending[0].urn.name()), (StepOp::Create, "c"));

    // Committing folds the journal into the snapshot and empties it.
    let next = StackState { serial: 1, pending: vec![], ..loaded };
    store.commit(&lock, &next).await.unwrap();
    assert_eq!(records(&path), "");
    assert_eq!(store.load("dev").await.unwrap().unwrap(), next);
}

/// Stack `dev` in a file store in a temporary directory (kept while `tmp` lives),
/// committed empty, locked, and its journal (at `path`) open.
struct Journaled {
    tmp: tempfile::TempDir,
    store: FileStore,
    lock: Lock,
    path: PathBuf,
    journal: Arc<dyn Journal>,
}

async fn journaled() -> Journaled {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::new(tmp.path());
    let lock = store.lock("dev", "up").await.unwrap();
    store.commit(&lock, &StackState::new("dev")).await.unwrap();
    let path = tmp.path().join("dev/journal.jsonl");
    let journal = store.journal(&lock).await.unwrap();
    Journaled { tmp, store, lock, path, journal }
}

/// Writes `bytes` into the file at `path` from `at`, keeping the rest.
fn overwrite(path: &Path, at: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.seek(SeekFrom::Start(at)).unwrap();
    file.write_all(bytes).unwrap();
}

/// The journal keeps zeros after its records, so that a record overwrites them and its
/// sync changes no file size. A commit empties it and keeps them: the next record
/// lands at its start, in a file of the same size, from whichever store value the
/// commit came.
#[tokio::test]
async fn records_overwrite_the_zeros_after_them_and_a_commit_keeps_the_zeros() {
    let Journaled { tmp, store, lock, path, journal } = journaled().await;
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size >= 4096, "zeros wait for the records: {size} bytes");
    assert_eq!(records(&path), "");

    journal.record(JournalRecord::UserState { base: 0, value: json!({"capacity": 2}) }).await.unwrap();
    journal.record(JournalRecord::UserState { base: 0, value: json!({"capacity": 3}) }).await.unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size, "written over the zeros");
    assert_eq!(records(&path).lines().count(), 2);
    let loaded = store.load("dev").await.unwrap().unwrap();
    assert_eq!(loaded.user_state, json!({"capacity": 3}));

    // Committed through another value of the store, in another spelling of its path.
    let other = FileStore::new(tmp.path().join("dev/.."));
    let next = StackState { serial: 1, ..loaded };
    other.commit(&lock, &next).await.unwrap();
    assert_eq!(records(&path), "", "emptied");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), size, "its zeros kept");
    journal.record(JournalRecord::UserState { base: 1, value: json!({"capacity": 5}) }).await.unwrap();
    assert!(records(&path).starts_with("{\"record\":\"user_state\",\"base\":1"), "{}", records(&path));
    assert_eq!(store.load("dev").await.unwrap().unwrap().user_state, json!({"capacity": 5}));
}

/// A crash in the middle of a batch can leave any of its blocks on disk: a torn line
/// before the zeros, and parts of the batch after some. Loading reads the records before
/// the first zero; opening the journal cuts the rest off, so that later records do not
/// run into it.
#[tokio::test]
async fn parts_of_a_torn_batch_after_zeros_are_cut_off() {
    let Journaled { tmp: _tmp, store, lock, path, journal } = journaled().await;
    journal.record(JournalRecord::UserState { base: 0, value: json!(1) }).await.unwrap();
    drop(journal);
    let end = records(&path).len() as u64;
    // Its last part is not even text: it begins inside a character.
    overwrite(&path, end, b"{\"record\":\"user_st");
    overwrite(&path, end + 600, b"\xa9ate\",\"base\":0,\"value\":2}\n");
    assert_eq!(store.load("dev").await.unwrap().unwrap().user_state, json!(1));

    let journal = store.journal(&lock).await.unwrap();
    assert_eq!(records(&path).len() as u64, end, "the torn line is cut");
    // A record that ends inside where the torn batch's last part was: had that part
    // been kept, its rest would follow as a line of its own, and corrupt the journal.
    let line = |value: serde_json::Value| serde_json::to_vec(&JournalRecord::UserState { base: 0, value }).unwrap().len() + 1;
    let long = "x".repeat(610 - line(json!("")));
    assert_eq!(line(json!(long)), 610);
    journal.record(JournalRecord::UserState { base: 0, value: json!(long) }).await.unwrap();
    assert_eq!(store.load("dev").await.unwrap().unwrap().user_state, json!(long));
    assert_eq!(records(&path).lines().count(), 2);
}

/// Two writers open on one journal in one process share where its records end, as
/// appends did: neither writes over the other's records.
#[tokio::test]
async fn two_writers_on_one_journal_do_not_write_over_each_other() {
    let Journaled { tmp: _tmp, store, lock, path, journal } = journaled().await;
    let other = store.journal(&lock).await.unwrap();
    let state = |n: u32| JournalRecord::UserState { base: 0, value: json!(n) };
    journal.record(state(1)).await.unwrap();
    other.record(state(2)).await.unwrap();
    journal.record(state(3)).await.unwrap();
    // Each pair's two batches are led from two threads of the blocking pool at once.
    for n in 0..20 {
        let (a, b) = tokio::join!(journal.record(state(10 + n)), other.record(state(100 + n)));
        a.unwrap();
        b.unwrap();
    }
    assert_eq!(records(&path).lines().count(), 43, "{}", records(&path));
    store.load("dev").await.unwrap().unwrap();
}

/// A journal removed and made again while a writer is open on it is a new file: a
/// writer opened then writes to it, where loading reads.
#[tokio::test]
async fn a_journal_made_again_at_its_path_gets_a_writer_of_its_own() {
    let Journaled { tmp: _tmp, store, lock, path, journal } = journaled().await;
    journal.record(JournalRecord::UserState { base: 0, value: json!(1) }).await.unwrap();
    std::fs::remove_file(&path).unwrap();
    let again = store.journal(&lock).await.unwrap();
    again.record(JournalRecord::UserState { base: 0, value: json!(2) }).await.unwrap();
    assert_eq!(store.load("dev").await.unwrap().unwrap().user_state, json!(2));
    drop(journal);
}

/// A journal emptied or cut by someone who does not share its writer's view (here, by
/// hand) is read again before the next batch: the record lands where loading finds it.
#[tokio::test]
async fn a_journal_changed_behind_its_writer_is_read_again_before_the_next_batch() {
    let Journaled { tmp: _tmp, store, lock: _lock, path, journal } = journaled().await;
    journal.record(JournalRecord::UserState { base: 0, value: json!(1) }).await.unwrap();
    journal.record(JournalRecord::UserState { base: 0, value: json!(2) }).await.unwrap();
    let size = std::fs::metadata(&path).unwrap().len() as usize;
    std::fs::write(&path, vec![0u8; size]).unwrap();
    journal.record(JournalRecord::UserState { base: 0, value: json!(3) }).await.unwrap();
    assert_eq!(store.load("dev").await.unwrap().unwrap().user_state, json!(3));

    std::fs::write(&path, b"").unwrap();
    journal.record(JournalRecord::UserState { base: 0, value: json!(4) }).await.unwrap();
    assert_eq!(store.load("dev").await.unwrap().unwrap().user_state, json!(4));
    assert_eq!(records(&path).lines().count(), 1);
}

/// A staged record is written with the next record, in one write and one sync, or at a
/// flush; until then it is not on disk. If its batch cannot be written (here: another
/// holder took the lock), it fails with the records after it, which depend on it.
#[tokio::test]
async fn a_staged_record_is_written_with_the_next_record_or_a_flush() {
    let Journaled { tmp, store, lock: _lock, path, journal } = journaled().await;
    let events = |base: u64, capacity: u32, id: &str| JournalRecord::Events { base, user_state: json!({"capacity": capacity}), ids: vec![id.to_owned()] };

    let durable = journal.stage(events(0, 2, "a")).await.unwrap();
    assert_eq!(records(&path), "", "staged, not written");
    journal.record(JournalRecord::UserState { base: 1, value: json!({"capacity": 3}) }).await.unwrap();
    durable.await.unwrap();
    let durable = journal.stage(events(1, 4, "b")).await.unwrap();
    journal.flush().await.unwrap();
    durable.await.unwrap();
    journal.flush().await.unwrap(); // nothing waits: returns at once
    let loaded = store.load("dev").await.unwrap().unwrap();
    assert_eq!((loaded.serial, loaded.user_state.clone()), (2, json!({"capacity": 4})));
    assert!(loaded.processed_events.iter().eq(["a", "b"]));

    // Another holder's lock: the batch of the staged record and the next one is refused.
    let path_lock = tmp.path().join("dev/lock.json");
    let mut other: serde_json::Value = serde_json::from_slice(&std::fs::read(&path_lock).unwrap()).unwrap();
    other["token"] = json!("someone-else");
    std::fs::write(&path_lock, serde_json::to_vec(&other).unwrap()).unwrap();
    let durable = journal.stage(events(2, 5, "c")).await.unwrap();
    assert!(journal.record(JournalRecord::UserState { base: 3, value: json!(1) }).await.is_err());
    assert!(durable.await.is_err());
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(!after.contains("\"c\""), "{after}");
}

#[tokio::test]
async fn a_corrupt_line_inside_the_journal_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::new(tmp.path());
    let lock = store.lock("dev", "up").await.unwrap();
    store.commit(&lock, &StackState::new("dev")).await.unwrap();
    let path = tmp.path().join("dev/journal.jsonl");
    std::fs::write(&path, "{\"record\":\"user_state\",\"base\":0,\"value\":1}\nnot json\n{}\n").unwrap();
    let err = store.load("dev").await.unwrap_err();
    insta::assert_snapshot!(message(err, tmp.path()));
}

#[tokio::test]
async fn a_second_writer_gets_the_lock_error_at_once_and_unlock_clears_it() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::new(tmp.path());
    let held = store.lock("dev", "up").await.unwrap();
    let err = store.lock("dev", "destroy").await.unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("stack 'dev' is locked by "), "{text}");
    assert!(text.contains(&format!("(pid {})", std::process::id())), "{text}");
    assert!(text.contains(&format!("since {} for 'up'", held.info.since)), "{text}");
    // The 15 s lease, less the time the first lock's writes and this one's read took:
    // a busy disk makes that more than the 50 ms that would still print as 15.0.
    let remaining: f64 = text.split("its lease expires in ").nth(1).and_then(|t| t.split(" s unless renewed").next()).unwrap().parse().unwrap();
    assert!((14.0..=15.0).contains(&remaining), "{text}");
    assert!(text.ends_with("Wait for it to finish, or for its lease to expire if that process is gone"), "{text}");

    // Reads need no lock.
    assert!(store.load("dev").await.is_ok());

    let cleared = store.force_unlock("dev").await.unwrap().unwrap();
    assert_eq!(cleared.token, held.info.token);
    // The old holder can no longer write.
    let err = store.commit(&held, &StackState::new("dev")).await.unwrap_err();
    assert!(matches!(err, StateError::LockLost(_)), "{err}");
    let again = store.lock("dev", "destroy").await.unwrap();
    // The old holder's unlock does not release the new holder's lock.
    store.unlock(held).await.unwrap();
    assert_eq!(store.lock_holder("dev").await.unwrap().unwrap().token, again.info.token);
    store.unlock(again).await.unwrap();
    assert!(store.lock_holder("dev").await.unwrap().is_none());
}

#[tokio::test]
async fn a_stack_name_cannot_escape_the_state_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::new(tmp.path());
    for bad in ["../x", "/abs", "a::b", ".hidden", ""] {
        let err = store.lock(bad, "up").await.unwrap_err();
        assert!(matches!(err, StateError::BadStackName(_)), "{bad}: {err}");
    }
}

#[tokio::test]
async fn the_audit_log_appends_and_reads_back_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::new(tmp.path());
    for i in 0..3 {
        store.audit("dev", &[json!({"event": i})]).await.unwrap();
    }
    let history = store.history("dev").await.unwrap();
    assert_eq!(history, [json!({"event": 0}), json!({"event": 1}), json!({"event": 2})]);
}

#[test]
fn the_location_comes_from_the_flag_then_cairn_state_then_the_default() {
    // One test owns CAIRN_STATE in this binary, so no other test races on it.
    std::env::remove_var("CAIRN_STATE");
    assert_eq!(cairn_state::location(None), "file://.cairn");
    std::env::set_var("CAIRN_STATE", "s3://bucket/stacks");
    assert_eq!(cairn_state::location(None), "s3://bucket/stacks");
    assert_eq!(cairn_state::location(Some("file:///tmp/x")), "file:///tmp/x");
    std::env::remove_var("CAIRN_STATE");
}

#[tokio::test]
async fn locations_pick_a_store() {
    assert!(cairn_state::open("file://.cairn").await.unwrap().location().starts_with("file://"));
    assert!(cairn_state::open("some/dir").await.is_ok());
    let err = cairn_state::open("ftp://x").await.unwrap_err();
    assert_eq!(err.to_string(), "unsupported state location 'ftp://x': use a directory path, file://PATH or s3://BUCKET/PREFIX");
}

/// A process writing the file store is SIGKILLed at many moments, inside its commit
/// (temporary file, fsync, rename) among them: see `common::killed_writer`.
#[tokio::test]
async fn a_writer_killed_at_any_moment_leaves_a_state_that_loads_whole() {
    const TEST: &str = "a_writer_killed_at_any_moment_leaves_a_state_that_loads_whole";
    const DIR: &str = "CAIRN_TEST_KILLED_WRITER_DIR";
    if common::killed_writer::is_child() {
        let dir = std::env::var(DIR).unwrap();
        return common::killed_writer::write_until_killed(&FileStore::new(dir)).await;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::new(tmp.path());
    common::killed_writer::kill_and_check(&store, TEST, &[(DIR, tmp.path().display().to_string())]).await;
}

/// A stack's files hold its whole inventory, and may hold secrets: the store creates
/// them for their owner alone (0600), in directories only the owner may enter (0700).
#[cfg(unix)]
#[tokio::test]
async fn state_files_are_created_for_their_owner_alone() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("state");
    let store = FileStore::new(&root);
    let lock = store.lock("dev", "up").await.unwrap();
    store.renew(&lock).await.unwrap();
    let journal = store.journal(&lock).await.unwrap();
    journal.record(JournalRecord::UserState { base: 0, value: json!({"capacity": 2}) }).await.unwrap();
    let mut state = StackState::new("dev");
    state.resources.push(resource("web", "i-1", &[]));
    store.commit(&lock, &state).await.unwrap();
    state.serial += 1;
    store.commit(&lock, &state).await.unwrap(); // leaves a backup of the first
    store.audit("dev", &[json!({"event": "traffic.spike"})]).await.unwrap();

    let mut seen = 0;
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{} is {mode:o}", dir.display());
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} is {mode:o}", path.display());
            seen += 1;
        }
    }
    assert!(seen >= 5, "the snapshot, its backup, the journal, the audit log and the lock: {seen} files");
    store.unlock(lock).await.unwrap();
}
