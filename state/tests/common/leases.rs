//! What every store must do with leases, run against each store: a live lease is never
//! taken, an expired one is, and its old holder writes nothing more.

use cairn_state::{JournalRecord, Lease, Store, StackState, StateError};

fn user_state(base: u64, value: u64) -> JournalRecord {
    JournalRecord::UserState { base, value: value.into() }
}

/// `expire` ends the stack's stored lease, as time passing without a renewal would (the
/// holder hung, or was stopped); the holder's own clock is not told, as it is not when
/// a process is paused.
pub async fn expired_lease_is_taken_over_and_fenced(store: &dyn Store, expire: impl AsyncFn()) {
    let old = store.lock("dev", "watch").await.unwrap();
    assert_eq!(old.info.generation, 1);
    store.commit(&old, &StackState::new("dev")).await.unwrap();
    let old_journal = store.journal(&old).await.unwrap();
    old_journal.record(user_state(0, 1)).await.unwrap();

    // Live: refused, and the error says so.
    let err = store.lock("dev", "up").await.unwrap_err();
    assert!(err.to_string().contains("its lease expires in"), "{err}");

    expire().await;
    assert!(store.lock_holder("dev").await.unwrap().unwrap().lease().is_expired());
    let new = store.lock("dev", "watch").await.unwrap();
    assert_eq!(new.info.generation, 2, "a takeover is the next generation");

    // The old holder, unaware, tries to go on: every write is refused.
    let err = old_journal.record(user_state(0, 2)).await.unwrap_err();
    assert!(matches!(err, StateError::LockLost(_)), "{err}");
    assert!(old.is_lost());
    let err = old_journal.record(user_state(0, 3)).await.unwrap_err();
    assert!(matches!(err, StateError::LockLost(_)), "{err}");
    assert!(matches!(store.journal(&old).await.unwrap_err(), StateError::LockLost(_)));
    let err = store.commit(&old, &StackState { serial: 1, ..store.load("dev").await.unwrap().unwrap() }).await.unwrap_err();
    assert!(matches!(err, StateError::LockLost(_)), "{err}");
    assert!(matches!(store.renew(&old).await.unwrap_err(), StateError::LockLost(_)));
    // Nor does its unlock release the new holder's lock.
    store.unlock(old).await.unwrap();
    assert_eq!(store.lock_holder("dev").await.unwrap().unwrap().token, new.info.token);

    assert_eq!(store.stacks().await.unwrap(), ["dev"]);
    // The new holder sees what the old one wrote before the takeover, and nothing after.
    let state = store.load("dev").await.unwrap().unwrap();
    assert_eq!(state.user_state, serde_json::json!(1));
    store.journal(&new).await.unwrap().record(user_state(0, 4)).await.unwrap();
    assert_eq!(store.load("dev").await.unwrap().unwrap().user_state, serde_json::json!(4));
    store.unlock(new).await.unwrap();
    assert!(store.lock_holder("dev").await.unwrap().is_none());
}

/// A renewal moves the lease's end on; `unlock_stale` refuses a live lease unless
/// forced, and clears an expired one.
pub async fn renewal_and_unlock_stale(store: &dyn Store, expire: impl AsyncFn()) {
    let lock = store.lock("dev", "watch").await.unwrap();
    let first = store.lock_holder("dev").await.unwrap().unwrap().expires_ms;
    // Lease ends are in milliseconds: let one pass.
    std::thread::sleep(std::time::Duration::from_millis(2));
    store.renew(&lock).await.unwrap();
    let renewed = store.lock_holder("dev").await.unwrap().unwrap();
    assert!(renewed.expires_ms > first, "{} > {first}", renewed.expires_ms);
    assert_eq!(renewed.token, lock.info.token);
    assert!(matches!(renewed.lease(), Lease::Live { holder_gone: false, .. }));

    let err = cairn_state::unlock_stale(store, "dev", false).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, StateError::LeaseLive { .. }), "{text}");
    assert!(text.contains("`state unlock --force`"), "{text}");
    assert_eq!(store.lock_holder("dev").await.unwrap().unwrap().token, lock.info.token);

    expire().await;
    let cleared = cairn_state::unlock_stale(store, "dev", false).await.unwrap().unwrap();
    assert_eq!(cleared.token, lock.info.token);
    assert!(matches!(store.renew(&lock).await.unwrap_err(), StateError::LockLost(_)));

    let again = store.lock("dev", "up").await.unwrap();
    // Breaking a lock read before a takeover leaves the new holder's alone.
    assert_eq!(store.break_lock("dev", &lock.info.token).await.unwrap(), None);
    assert_eq!(store.lock_holder("dev").await.unwrap().unwrap().token, again.info.token);
    let forced = cairn_state::unlock_stale(store, "dev", true).await.unwrap().unwrap();
    assert_eq!(forced.token, again.info.token);
    assert!(store.lock_holder("dev").await.unwrap().is_none());
}
