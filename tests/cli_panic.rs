//! A panic in the middle of a CLI verb, after it took the stack's lock: the lock is
//! released as the panic unwinds, so the next run does not need `state unlock`.

use std::panic::{catch_unwind, AssertUnwindSafe};

use cairn::cli::Cli;
use cairn::Stack;
use cairn_state::{FileStore, Store};
use serde::{Deserialize, Serialize, Serializer};

/// A user state whose serialization panics (a bug in user code the engine does not
/// wrap, as it wraps handlers, guards and the program).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Fragile {
    #[serde(serialize_with = "explode")]
    capacity: u32,
}

fn explode<S: Serializer>(_: &u32, _: S) -> Result<S::Ok, S::Error> {
    panic!("serializing the user state exploded")
}

#[test]
fn a_panic_in_up_releases_the_stack_lock() {
    let dir = tempfile::tempdir().unwrap();
    let state = format!("file://{}", dir.path().display());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let args = ["shop", "--stack", "dev", "--state", state.as_str(), "up", "--yes"];
    let unwound = catch_unwind(AssertUnwindSafe(|| runtime.block_on(Cli::new(|name: &str| Stack::<Fragile>::new(name)).run_with(args))));
    let panic = unwound.expect_err("`up` panics while it holds the lock");
    assert_eq!(panic.downcast_ref::<&str>(), Some(&"serializing the user state exploded"));

    let store = FileStore::new(dir.path());
    runtime.block_on(async {
        assert!(store.load("dev").await.unwrap().is_some(), "`up` had opened the stack");
        assert_eq!(store.lock_holder("dev").await.unwrap(), None, "the lock was released");
        let lock = store.lock("dev", "up").await.expect("the stack can be locked again");
        store.unlock(lock).await.unwrap();
    });
}
