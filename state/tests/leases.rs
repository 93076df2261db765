//! Leases and fencing on the memory and file stores (the S3 store's are in s3_store.rs).

mod common;

use cairn_state::{FileStore, LockInfo, MemoryStore, Store};

/// Ends the stored lease of `dev` in a file store, as a holder that stopped renewing
/// would leave it.
fn expire_file(dir: &std::path::Path) {
    let path = dir.join("dev").join("lock.json");
    let mut held: LockInfo = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    held.expires_ms = 1;
    std::fs::write(&path, serde_json::to_vec(&held).unwrap()).unwrap();
}

#[tokio::test]
async fn memory_store_takes_an_expired_lease_over_and_fences_its_old_holder() {
    let store = MemoryStore::new();
    common::leases::expired_lease_is_taken_over_and_fenced(&store, async || store.expire_lease("dev")).await;
}

#[tokio::test]
async fn file_store_takes_an_expired_lease_over_and_fences_its_old_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::new(tmp.path());
    common::leases::expired_lease_is_taken_over_and_fenced(&store, async || expire_file(tmp.path())).await;
}

#[tokio::test]
async fn memory_store_renews_and_unlocks_only_stale_leases_unless_forced() {
    let store = MemoryStore::new();
    common::leases::renewal_and_unlock_stale(&store, async || store.expire_lease("dev")).await;
}

#[tokio::test]
async fn file_store_renews_and_unlocks_only_stale_leases_unless_forced() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::new(tmp.path());
    common::leases::renewal_and_unlock_stale(&store, async || expire_file(tmp.path())).await;
}

/// A holder whose renewals stopped (its renewer starved or the store unreachable)
/// stops writing by its own clock once four fifths of its lease have passed, before
/// anyone may take the stack over.
#[tokio::test(start_paused = true)]
async fn a_holder_that_cannot_renew_stops_writing_before_its_lease_ends() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::new(tmp.path()).with_lease(std::time::Duration::from_secs(10));
    let lock = store.lock("dev", "watch").await.unwrap();
    store.commit(&lock, &cairn_state::StackState::new("dev")).await.unwrap();
    let journal = store.journal(&lock).await.unwrap();
    tokio::time::advance(std::time::Duration::from_secs(7)).await;
    journal.record(cairn_state::JournalRecord::UserState { base: 0, value: 1.into() }).await.unwrap();
    tokio::time::advance(std::time::Duration::from_secs(1)).await;
    let err = journal.record(cairn_state::JournalRecord::UserState { base: 0, value: 2.into() }).await.unwrap_err();
    assert!(matches!(err, cairn_state::StateError::LeaseExpired { .. }), "{err}");
    assert!(err.to_string().contains("it stopped writing"), "{err}");
    // A renewal that comes late, while nobody took the stack, makes it writable again.
    store.renew(&lock).await.unwrap();
    journal.record(cairn_state::JournalRecord::UserState { base: 0, value: 3.into() }).await.unwrap();
    assert_eq!(store.load("dev").await.unwrap().unwrap().user_state, serde_json::json!(3));
}

/// A lock left by a process of this host that is gone says so, and `state unlock`
/// clears it without `--force`, though its lease has not run out.
#[tokio::test]
async fn a_lock_whose_holder_is_gone_says_so_and_unlocks_without_force() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::new(tmp.path());
    let lock = store.lock("dev", "watch").await.unwrap();
    // Its process is gone: a pid above Linux's maximum (2^22) runs nowhere.
    let path = tmp.path().join("dev").join("lock.json");
    let held = LockInfo { pid: 4_194_311, ..lock.info.clone() };
    std::fs::write(&path, serde_json::to_vec(&held).unwrap()).unwrap();
    let err = store.lock("dev", "up").await.unwrap_err().to_string();
    assert!(err.contains("process 4194311 is no longer running on this host"), "{err}");
    assert!(err.contains("clear it now with `state unlock --stack dev`"), "{err}");
    let cleared = cairn_state::unlock_stale(&store, "dev", false).await.unwrap().unwrap();
    assert_eq!(cleared.pid, 4_194_311);
}

/// A lock file cut short by a crash of the host (renewals are not synced) holds the
/// stack for a lease after it was written, then is taken over: never for ever.
#[tokio::test]
async fn a_lock_file_cut_short_by_a_crash_is_taken_over_a_lease_after_it_was_written() {
    let tmp = tempfile::tempdir().unwrap();
    let store = FileStore::new(tmp.path()).with_lease(std::time::Duration::from_secs(15));
    std::fs::create_dir_all(tmp.path().join("dev")).unwrap();
    let path = tmp.path().join("dev").join("lock.json");
    std::fs::write(&path, b"{\"operation\": \"wat").unwrap();
    let err = store.lock("dev", "up").await.unwrap_err().to_string();
    assert!(err.contains("the lock file is unreadable, cut short by a crash") && err.contains("its lease expires in"), "{err}");
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(16)).unwrap();
    let lock = store.lock("dev", "up").await.unwrap();
    store.unlock(lock).await.unwrap();
}
