//! Sessions keep their lease alive, and stop writing once another process has taken
//! the stack over.

mod common;

use std::sync::Arc;
use std::time::Duration;

use cairn_sdk::{Error, Stack};
use cairn_state::{MemoryStore, StateError, Store};
use common::*;

fn stack(provider: &cairn_sdk::testing::TestProvider) -> Stack<u32> {
    Stack::<u32>::new("dev").provider(provider.clone()).program(|cx, n| {
        for i in 0..*n {
            cx.add(Queue::new(&format!("q{i}")));
        }
        Ok(())
    })
}

/// A session renews its lease in the background: far longer than the lease, nobody
/// can take the stack, and the session still writes.
#[tokio::test(start_paused = true)]
async fn a_session_keeps_its_lease_for_as_long_as_it_runs() {
    let store = MemoryStore::new().with_lease(Duration::from_secs(3));
    let cloud = provider();
    let mut session = stack(&cloud).lock(Arc::new(store.clone()), "watch").await.unwrap();
    // Twenty seconds on the runtime's clock: without renewals, the lease's clock would
    // refuse the session's writes after 2.4 s.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(matches!(store.lock("dev", "up").await.unwrap_err(), StateError::Locked(_)));
    session.up(&2).await.unwrap();
    assert_eq!(cloud.resources().len(), 2);
    session.close().await.unwrap();
    assert!(store.lock_holder("dev").await.unwrap().is_none());
}

/// A session whose lease is taken over (it hung past its lease, and a standby took the
/// stack) learns it at its next renewal and writes nothing more: no step, no commit.
#[tokio::test(start_paused = true)]
async fn a_session_whose_lease_was_taken_over_stops_writing_at_once() {
    let store = MemoryStore::new().with_lease(Duration::from_secs(3));
    let cloud = provider();
    let mut old = stack(&cloud).lock(Arc::new(store.clone()), "watch").await.unwrap();
    old.up(&1).await.unwrap();
    store.expire_lease("dev");
    let new = stack(&cloud).lock(Arc::new(store.clone()), "watch").await.unwrap();
    assert_eq!(new.lock_info().generation, 2);

    // The old session finds out at its next renewal, a third of the lease later.
    tokio::time::timeout(Duration::from_secs(2), old.lease_lost()).await.expect("the loss is seen at the next renewal");
    cloud.clear_calls();
    let err = old.up(&3).await.unwrap_err();
    assert!(matches!(err, Error::State(StateError::LockLost(_))), "{err}");
    assert!(cloud.calls().is_empty(), "a session that lost its lease makes no cloud call: {:?}", cloud.calls());
    // Its close releases nothing of the new holder's.
    old.close().await.unwrap();
    assert_eq!(store.lock_holder("dev").await.unwrap().unwrap().token, new.lock_info().token);
    new.close().await.unwrap();
}
