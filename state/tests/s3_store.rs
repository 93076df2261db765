//! The S3 store against the local AWS's S3, which honours conditional writes.
#![cfg(feature = "s3")]

use std::process::Command;

mod common;

use cairn_state::{JournalRecord, Props, ResourceState, S3Store, StackState, StateError, StepEffect, Store, StoredOptions, Urn};
use serde_json::json;

const CHILD: &str = "CAIRN_TEST_S3_CHILD";

async fn store(bucket: &str) -> S3Store {
    cairn_testkit::moto().configure_env();
    let store = S3Store::from_env(bucket, "stacks").await;
    // A bucket of its own per test: the tests share one server.
    store.client().create_bucket().bucket(bucket).send().await.expect("the local S3 creates a bucket");
    store
}

fn resource(name: &str) -> ResourceState {
    ResourceState {
        urn: Urn::new("dev", "test:Thing", name),
        ty: "test:Thing".into(),
        id: format!("{name}-1"),
        inputs: Props::from_value(json!({"size": 1})).unwrap(),
        outputs: Props::new(),
        dependencies: vec![],
        options: StoredOptions::default(),
        pending_delete: false,
    }
}

#[tokio::test]
async fn commits_journals_and_loads_back() {
    let store = store("roundtrip").await;
    assert!(store.load("dev").await.unwrap().is_none());
    let lock = store.lock("dev", "up").await.unwrap();
    let state = StackState::new("dev");
    store.commit(&lock, &state).await.unwrap();

    let journal = store.journal(&lock).await.unwrap();
    journal.record(JournalRecord::UserState { base: 0, value: json!({"capacity": 3}) }).await.unwrap();
    // Enough records that reading them back runs concurrently, and order still holds.
    let names: Vec<String> = (0..40).map(|i| format!("r{i:02}")).collect();
    for (i, name) in names.iter().enumerate() {
        let effect = StepEffect::Upsert { resource: resource(name) };
        journal.record(JournalRecord::End { base: 0, step: (1, i as u32), effect }).await.unwrap();
    }
    journal.record(JournalRecord::End { base: 0, step: (1, 99), effect: StepEffect::Removed { urn: resource("r07").urn, id: "r07-1".into() } }).await.unwrap();

    let loaded = store.load("dev").await.unwrap().unwrap();
    let expected: Vec<&str> = names.iter().map(String::as_str).filter(|n| *n != "r07").collect();
    assert_eq!(loaded.resources.iter().map(|r| r.urn.name()).collect::<Vec<_>>(), expected, "replayed in write order");
    assert_eq!(loaded.user_state, json!({"capacity": 3}));

    let next = StackState { serial: 1, ..loaded };
    store.commit(&lock, &next).await.unwrap();
    assert_eq!(store.load("dev").await.unwrap().unwrap(), next, "the journal was folded in");
    let left = store.client().list_objects_v2().bucket("roundtrip").prefix("stacks/dev/journal/").send().await.unwrap();
    assert_eq!(left.contents().len(), 0, "and its objects deleted");
    store.unlock(lock).await.unwrap();
    assert!(store.lock_holder("dev").await.unwrap().is_none());
}

#[tokio::test]
async fn a_stale_writer_cannot_overwrite_a_newer_snapshot() {
    let a = store("lost-update").await;
    let lock = a.lock("dev", "up").await.unwrap();
    a.commit(&lock, &StackState::new("dev")).await.unwrap();
    let base = a.load("dev").await.unwrap().unwrap();

    // A second store read the same snapshot before `a` wrote a new one.
    let b = S3Store::from_env("lost-update", "stacks").await;
    b.load("dev").await.unwrap().unwrap();
    a.commit(&lock, &StackState { serial: 1, ..base.clone() }).await.unwrap();

    // `b` writes a higher serial, but against the ETag it read: If-Match refuses it.
    let err = b.commit(&lock, &StackState { serial: 2, ..base }).await.unwrap_err();
    assert!(matches!(err, StateError::Conflict { .. }), "{err}");
    assert!(err.to_string().contains("If-Match failed"), "{err}");
    assert_eq!(a.load("dev").await.unwrap().unwrap().serial, 1, "the newer snapshot survived");
}

#[tokio::test]
async fn a_second_process_gets_the_lock_error() {
    if std::env::var(CHILD).is_ok() {
        // The child: try to lock the stack the parent holds.
        let store = S3Store::from_env("two-writers", "stacks").await;
        match store.lock("dev", "destroy").await {
            Ok(_) => println!("proceeded"),
            Err(e) => println!("refused: {e}"),
        }
        return;
    }
    let store = store("two-writers").await;
    let lock = store.lock("dev", "up").await.unwrap();
    let run_child = || {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "a_second_process_gets_the_lock_error", "--nocapture", "--test-threads", "1"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let out = run_child();
    assert!(out.contains("refused: stack 'dev' is locked by "), "{out}");
    assert!(out.contains(&format!("(pid {})", std::process::id())) && out.contains("for 'up'"), "{out}");

    store.unlock(lock).await.unwrap();
    assert!(run_child().contains("proceeded"));
}

#[tokio::test]
async fn unlocking_leaves_a_lock_another_process_took_after_a_forced_unlock() {
    let store = store("broken-lock").await;
    let first = store.lock("dev", "watch").await.unwrap();
    // Someone breaks the lock (`state unlock`) and another process takes it.
    store.force_unlock("dev").await.unwrap();
    let second = store.lock("dev", "up").await.unwrap();
    // The first holder, finishing, must not release the second's lock.
    store.unlock(first).await.unwrap();
    let holder = store.lock_holder("dev").await.unwrap().expect("the second lock stays");
    assert_eq!(holder.token, second.info.token);
    store.unlock(second).await.unwrap();
    assert!(store.lock_holder("dev").await.unwrap().is_none());
}

/// A process writing the S3 store is SIGKILLed at many moments: see `common::killed_writer`.
#[tokio::test]
async fn a_writer_killed_at_any_moment_leaves_a_state_that_loads_whole() {
    const TEST: &str = "a_writer_killed_at_any_moment_leaves_a_state_that_loads_whole";
    if common::killed_writer::is_child() {
        // The child: the parent set up the endpoint and the bucket.
        return common::killed_writer::write_until_killed(&S3Store::from_env("killed-writer", "stacks").await).await;
    }
    let store = store("killed-writer").await;
    common::killed_writer::kill_and_check(&store, TEST, &[]).await;
}

/// Ends the stored lease of `dev`, as a holder that stopped renewing would leave it.
async fn expire(store: &S3Store, bucket: &str) {
    let key = "stacks/dev/lock.json";
    let got = store.client().get_object().bucket(bucket).key(key).send().await.unwrap();
    let mut held: cairn_state::LockInfo = serde_json::from_slice(&got.body.collect().await.unwrap().into_bytes()).unwrap();
    held.expires_ms = 1;
    let body = aws_sdk_s3::primitives::ByteStream::from(serde_json::to_vec(&held).unwrap());
    store.client().put_object().bucket(bucket).key(key).body(body).send().await.unwrap();
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_and_its_old_holder_fenced() {
    let store = store("lease-takeover").await;
    common::leases::expired_lease_is_taken_over_and_fenced(&store, async || expire(&store, "lease-takeover").await).await;
}

#[tokio::test]
async fn leases_renew_and_only_stale_ones_unlock_unless_forced() {
    let store = store("lease-renewal").await;
    common::leases::renewal_and_unlock_stale(&store, async || expire(&store, "lease-renewal").await).await;
}

/// Two writers numbering records from the same point (a lock broken by force while its
/// holder writes): the second to write a number is refused instead of overwriting.
#[tokio::test]
async fn a_journal_record_never_overwrites_another_writers() {
    let store = store("lease-records").await;
    let old = store.lock("dev", "watch").await.unwrap();
    store.commit(&old, &StackState::new("dev")).await.unwrap();
    let old_journal = store.journal(&old).await.unwrap();
    cairn_state::unlock_stale(&store, "dev", true).await.unwrap();
    let new = store.lock("dev", "up").await.unwrap();
    let new_journal = store.journal(&new).await.unwrap();
    new_journal.record(JournalRecord::UserState { base: 0, value: json!("new") }).await.unwrap();
    let err = old_journal.record(JournalRecord::UserState { base: 0, value: json!("old") }).await.unwrap_err();
    assert!(matches!(err, StateError::LockLost(_)), "{err}");
    assert_eq!(store.load("dev").await.unwrap().unwrap().user_state, json!("new"));
}

/// An old holder's commit still on its way when the stack is taken over (S3 already
/// had the whole request, or the lock was broken by force) lands only before the new
/// holder writes anything: taking the lock writes the snapshot again, so the commit,
/// conditional on the ETag it read, is refused after. Before that, it would land over
/// the new holder's first records, which a load would then skip as written against an
/// older snapshot.
#[tokio::test]
async fn an_old_holders_commit_still_on_its_way_cannot_land_after_a_takeover() {
    let (bucket, key) = ("late-commit", "stacks/dev/state.json");
    let store = store(bucket).await;
    let old = store.lock("dev", "watch").await.unwrap();
    store.commit(&old, &StackState::new("dev")).await.unwrap();
    let events = |base, user_state, id: &str| JournalRecord::Events { base, user_state, ids: vec![id.to_owned()] };
    store.journal(&old).await.unwrap().record(events(0, json!("old"), "e1")).await.unwrap();
    // The old holder's next commit, made and sent against the snapshot it read.
    let read = store.client().get_object().bucket(bucket).key(key).send().await.unwrap();
    let read_etag = read.e_tag().unwrap().to_owned();
    let mut late = store.load("dev").await.unwrap().unwrap();
    late.serial += 1;

    cairn_state::unlock_stale(&store, "dev", true).await.unwrap();
    let new = store.lock("dev", "watch").await.unwrap();
    let loaded = store.load("dev").await.unwrap().unwrap();
    assert_eq!((loaded.serial, &loaded.user_state), (1, &json!("old")));
    store.journal(&new).await.unwrap().record(events(1, json!("new"), "e2")).await.unwrap();

    // The late commit arrives now.
    let body = aws_sdk_s3::primitives::ByteStream::from(serde_json::to_vec(&late).unwrap());
    let landed = store.client().put_object().bucket(bucket).key(key).if_match(read_etag).body(body).send().await;
    let refused = landed.expect_err("the old holder's commit is refused").raw_response().map(|r| r.status().as_u16());
    assert_eq!(refused, Some(412));
    let after = store.load("dev").await.unwrap().unwrap();
    assert_eq!((after.serial, &after.user_state), (2, &json!("new")), "the new holder's record is loaded");
    assert_eq!(after.processed_events, ["e1", "e2"]);
    // The new holder's commit follows the snapshot it claimed.
    store.commit(&new, &StackState { serial: 3, ..after }).await.unwrap();
    store.unlock(new).await.unwrap();
    // Each next holder claims it in turn, with nothing committed between: one mark, the
    // last holder's.
    let again = store.lock("dev", "up").await.unwrap();
    store.unlock(again).await.unwrap();
    let next = store.lock("dev", "up").await.unwrap();
    let text = object_text(store.client(), bucket, key).await;
    assert!(text.starts_with(&format!("{{\"claimed_by\":\"{}\",", next.info.token)) && text.matches("claimed_by").count() == 1, "{text}");
    assert_eq!(store.load("dev").await.unwrap().unwrap().serial, 3);
    store.unlock(next).await.unwrap();
}

/// A renewal whose ETag is stale though the lock is still its holder's (the SDK sent
/// the previous write again after it had landed; here another client of the same
/// holder renewed) is not taken for a loss: the holder keeps its lease.
#[tokio::test]
async fn a_renewal_refused_on_a_stale_etag_of_its_own_lock_keeps_the_lease() {
    let store = store("lease-stale-etag").await;
    let lock = store.lock("dev", "watch").await.unwrap();
    let other = S3Store::new(store.client().clone(), "lease-stale-etag", "stacks");
    other.renew(&lock).await.unwrap();
    store.renew(&lock).await.unwrap();
    assert!(!lock.is_lost());
    assert_eq!(store.lock_holder("dev").await.unwrap().unwrap().token, lock.info.token);
    store.unlock(lock).await.unwrap();
    assert!(store.lock_holder("dev").await.unwrap().is_none());
}

/// The text of object `key`.
async fn object_text(client: &aws_sdk_s3::Client, bucket: &str, key: &str) -> String {
    let got = client.get_object().bucket(bucket).key(key).send().await.unwrap();
    String::from_utf8(got.body.collect().await.unwrap().into_bytes().to_vec()).unwrap()
}

/// A store of `bucket` whose calls go through a fault proxy in front of the local AWS.
async fn through_proxy(bucket: &str) -> (cairn_testkit::FaultProxy, S3Store) {
    let proxy = cairn_testkit::FaultProxy::start(cairn_testkit::moto().endpoint());
    let config = aws_config::defaults(aws_config::BehaviorVersion::latest()).endpoint_url(proxy.endpoint()).load().await;
    let client = aws_sdk_s3::Client::from_conf(aws_sdk_s3::config::Builder::from(&config).force_path_style(true).build());
    (proxy, S3Store::new(client, bucket, "stacks"))
}

/// The held write, once it reached the proxy: a write to S3 is a `PUT`. Taking a free
/// lock writes the lock object, then the fence's journal key, then the claim: the third.
async fn arrived(mut held: cairn_testkit::Holder) -> cairn_testkit::Holder {
    tokio::task::spawn_blocking(move || {
        assert_eq!(held.wait(std::time::Duration::from_secs(30)).as_deref(), Some("PUT"), "the write reached the proxy");
        held
    })
    .await
    .unwrap()
}

/// The snapshot's claim whose answer is lost (S3 wrote it, the connection closed before
/// the reply): the SDK sends it again, S3 refuses that on the ETag the first one
/// changed, and the claim reads the snapshot back, finds its own mark and is done. The
/// lock is taken, the snapshot marked once, and an old holder's commit still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_answer_is_lost_still_fences_the_old_holder() {
    let (bucket, key) = ("claim-lost", "stacks/dev/state.json");
    let direct = store(bucket).await;
    let old = direct.lock("dev", "watch").await.unwrap();
    direct.commit(&old, &StackState::new("dev")).await.unwrap();
    let read_etag = direct.client().get_object().bucket(bucket).key(key).send().await.unwrap().e_tag().unwrap().to_owned();
    cairn_state::unlock_stale(&direct, "dev", true).await.unwrap();

    let (proxy, proxied) = through_proxy(bucket).await;
    let claim = proxy.hold_nth_mutating(3);
    let locking = tokio::spawn(async move { proxied.lock("dev", "watch").await.map(|lock| (proxied, lock)) });
    let claim = arrived(claim).await;
    // It is the claim: the lock and the fence's journal key are written, the mark is not.
    assert!(direct.lock_holder("dev").await.unwrap().is_some());
    let fenced = direct.client().list_objects_v2().bucket(bucket).prefix("stacks/dev/journal/").send().await.unwrap();
    assert_eq!(fenced.key_count(), Some(1), "{fenced:?}");
    assert!(!object_text(direct.client(), bucket, key).await.starts_with("{\"claimed_by\""));
    let released = tokio::task::spawn_blocking(move || claim.release(cairn_testkit::Release::Forward));
    assert_eq!(released.await.unwrap(), Some(200), "the claim took effect");
    let (proxied, new) = locking.await.unwrap().expect("the lock is taken though the claim's answer was lost");

    let text = object_text(direct.client(), bucket, key).await;
    assert!(text.starts_with(&format!("{{\"claimed_by\":\"{}\",", new.info.token)) && text.matches("claimed_by").count() == 1, "{text}");
    let late = serde_json::to_vec(&StackState { serial: 1, ..StackState::new("dev") }).unwrap();
    let landed = direct.client().put_object().bucket(bucket).key(key).if_match(read_etag).body(late.into()).send().await;
    assert_eq!(landed.expect_err("the old holder's commit is refused").raw_response().map(|r| r.status().as_u16()), Some(412));
    // The new holder commits on the snapshot its claim left.
    let loaded = proxied.load("dev").await.unwrap().unwrap();
    proxied.commit(&new, &StackState { serial: 1, ..loaded }).await.unwrap();
    proxied.unlock(new).await.unwrap();
    assert_eq!(direct.load("dev").await.unwrap().unwrap().serial, 1);
}

/// A holder whose lock is broken by force while its claim is on its way: the newer
/// holder claims the snapshot first, so the older claim is refused on the ETag, and the
/// older holder, finding the lock no longer its own, gives up rather than claim over the
/// newer holder's mark (which would leave the newer holder unable to commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_refused_after_the_lock_was_broken_does_not_write_over_the_newer_claim() {
    let (bucket, key) = ("claim-broken", "stacks/dev/state.json");
    let direct = store(bucket).await;
    let first = direct.lock("dev", "watch").await.unwrap();
    direct.commit(&first, &StackState::new("dev")).await.unwrap();
    direct.unlock(first).await.unwrap();

    let (proxy, proxied) = through_proxy(bucket).await;
    let claim = proxy.hold_nth_mutating(3);
    let locking = tokio::spawn(async move { proxied.lock("dev", "up").await });
    let claim = arrived(claim).await;
    // Meanwhile its lock is broken, and another process takes the stack and claims it.
    cairn_state::unlock_stale(&direct, "dev", true).await.unwrap();
    let newer = direct.lock("dev", "up").await.unwrap();
    let released = tokio::task::spawn_blocking(move || claim.release(cairn_testkit::Release::Forward));
    assert_eq!(released.await.unwrap(), Some(412), "the older claim is refused");
    locking.await.unwrap().expect_err("the older holder's lock is not taken");

    let text = object_text(direct.client(), bucket, key).await;
    assert!(text.starts_with(&format!("{{\"claimed_by\":\"{}\",", newer.info.token)), "{text}");
    let loaded = direct.load("dev").await.unwrap().unwrap();
    direct.commit(&newer, &StackState { serial: 1, ..loaded }).await.expect("the newer holder commits on its claim");
    assert_eq!(direct.lock_holder("dev").await.unwrap().unwrap().token, newer.info.token);
    direct.unlock(newer).await.unwrap();
}

/// A record whose answer is lost (S3 wrote it; the connection closed before the reply):
/// the SDK sends it again, S3 refuses that as the key exists, and the journal finds its
/// own record there. Written once: not again under the next key, where a load would
/// replay it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_answer_is_lost_is_written_once() {
    let bucket = "record-lost";
    let direct = store(bucket).await;
    let (proxy, proxied) = through_proxy(bucket).await;
    let lock = proxied.lock("dev", "up").await.unwrap();
    let journal = proxied.journal(&lock).await.unwrap();
    proxy.fault_next(&format!("PUT /{bucket}/stacks"), cairn_testkit::Fault::LostAnswer);
    journal.record(JournalRecord::UserState { base: 0, value: json!("once") }).await.unwrap();
    assert_eq!(proxy.clear_answers(), 0, "the record's answer was lost");
    assert_eq!(proxy.stats().retries_by_operation.get(&format!("PUT /{bucket}/stacks")), Some(&1), "and the SDK sent it again");
    let listed = direct.client().list_objects_v2().bucket(bucket).prefix("stacks/dev/journal/").send().await.unwrap();
    let records: Vec<&str> = listed.contents().iter().filter(|o| o.size() > Some(0)).filter_map(|o| o.key()).collect();
    assert_eq!(records.len(), 1, "{records:?}");
    proxied.unlock(lock).await.unwrap();
}

/// A commit whose answer is lost: the SDK sends it again, S3 refuses that on the ETag
/// the first one changed, and the commit finds its own snapshot there: done, not a
/// conflict with another writer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_is_done() {
    let bucket = "commit-lost";
    let direct = store(bucket).await;
    let (proxy, proxied) = through_proxy(bucket).await;
    let lock = proxied.lock("dev", "up").await.unwrap();
    proxied.commit(&lock, &StackState::new("dev")).await.unwrap();
    let loaded = proxied.load("dev").await.unwrap().unwrap();
    // The commit backs the snapshot up (a copy, also a PUT), then writes it.
    let put = proxy.hold_nth_mutating(2);
    let committing = tokio::spawn(async move {
        let committed = proxied.commit(&lock, &StackState { serial: 1, ..loaded }).await;
        (proxied, lock, committed)
    });
    let put = arrived(put).await;
    // It is the snapshot's write: the backup is made, the snapshot not yet written.
    let bak = direct.client().head_object().bucket(bucket).key("stacks/dev/state.json.bak").send().await;
    assert!(bak.is_ok(), "the backup was made first: {bak:?}");
    assert_eq!(direct.load("dev").await.unwrap().unwrap().serial, 0);
    let released = tokio::task::spawn_blocking(move || put.release(cairn_testkit::Release::Forward));
    assert_eq!(released.await.unwrap(), Some(200), "the commit took effect");
    let (proxied, lock, committed) = committing.await.unwrap();
    committed.expect("a commit that landed is done");
    assert_eq!(proxy.stats().retries_by_operation.get(&format!("PUT /{bucket}/stacks")), Some(&1), "the SDK sent it again");
    let landed = direct.load("dev").await.unwrap().unwrap();
    assert_eq!(landed.serial, 1);
    // And the next commit follows it, on the ETag the commit found.
    proxied.commit(&lock, &StackState { serial: 2, ..landed }).await.unwrap();
    proxied.unlock(lock).await.unwrap();
    assert_eq!(direct.load("dev").await.unwrap().unwrap().serial, 2);
}
