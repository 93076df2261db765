//! The CLI as a program embeds it: a panic in the middle of a verb, after it took the
//! stack's lock, releases the lock as it unwinds, so the next run does not need
//! `state unlock`; and `Cli::try_run_with` gives errors back typed.

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

/// `Cli::try_run_with` gives a program the error as a value: here, `up` with a provider
/// that cannot reach its cloud, refused before the lock with nothing written.
#[test]
fn try_run_with_gives_the_error_typed_and_up_stops_before_the_lock_when_a_provider_is_not_ready() {
    let dir = tempfile::tempdir().unwrap();
    let state = format!("file://{}", dir.path().display());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let cloud = cairn::testing::TestProvider::new("aws").not_ready("no AWS region is configured: set AWS_REGION");
    let cli = Cli::new(move |name: &str| Stack::<u32>::new(name).provider(cloud.clone()));
    let args = ["shop", "--stack", "dev", "--state", state.as_str(), "up", "--yes"];
    let err = runtime.block_on(cli.try_run_with(args)).unwrap_err();
    assert!(
        matches!(&err, cairn::CliError::Engine(cairn::Error::ProviderNotReady { package, .. }) if package == "aws"),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("the aws provider cannot run: no AWS region is configured"), "{err}");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none(), "nothing was written");
}
