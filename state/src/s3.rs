//! State in S3 (feature `s3`): `s3://bucket/prefix`.
//!
//! ```text
//! <prefix>/<stack>/state.json            the snapshot, replaced only with If-Match on its ETag;
//!                                        written again by each new lock holder, so that an
//!                                        old holder's commit on its way is refused
//! <prefix>/<stack>/state.json.bak        the snapshot before it
//! <prefix>/<stack>/lock.json             the lease: created with If-None-Match: *, renewed and
//!                                        taken over with If-Match on its ETag, so one writer wins
//! <prefix>/<stack>/journal/<key>.json    one object per journal record, keys in write order, each
//!                                        created with If-None-Match: *, so none is overwritten
//! <prefix>/<stack>/audit/<key>.json      one object per batch of audit entries (a JSON array)
//! ```

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::Client;

use crate::error::LockedError;
use crate::file::{parse_snapshot, parse_snapshot_header, read_records};
use crate::journal::{replay, Journal, JournalRecord};
use crate::store::{LockInfo, Store};
use crate::Lock;
use crate::{StackState, StateError};

/// State in an S3 bucket. Concurrency comes from S3's conditional writes, so any number
/// of machines can share a bucket safely.
#[derive(Clone, Debug)]
pub struct S3Store {
    client: Client,
    bucket: String,
    prefix: String,
    /// The ETag of each stack's snapshot as last read or written here: a commit
    /// replaces exactly that object. Forgotten, the next commit reads it afresh.
    snapshot_etags: Etags,
    /// The ETag of each lock this store took, by its token, as last written: a renewal
    /// replaces exactly that object.
    lock_etags: Etags,
    lease: std::time::Duration,
    written: Arc<AtomicU64>,
}

/// How an S3 call failed, reduced to what the store decides on.
enum S3Failure {
    PreconditionFailed,
    NotFound,
    Other(String),
}

fn classify<E: ProvideErrorMetadata + std::fmt::Debug>(e: SdkError<E, aws_smithy_runtime_api::http::Response>) -> S3Failure {
    let status = e.raw_response().map(|r| r.status().as_u16());
    match (status, e.code()) {
        // A missing bucket is an error, not an empty stack.
        (_, Some("NoSuchBucket")) => S3Failure::Other("the bucket does not exist; create it, or fix the state location".into()),
        // 409: another conditional write of the same key was in progress, and won.
        (Some(412 | 409), _) | (_, Some("PreconditionFailed" | "ConditionalRequestConflict")) => S3Failure::PreconditionFailed,
        (Some(404), _) | (_, Some("NoSuchKey")) => S3Failure::NotFound,
        _ => S3Failure::Other(match e.message() {
            Some(m) => format!("{}: {m}", e.code().unwrap_or("S3 error")),
            None => format!("{e:?}"),
        }),
    }
}

/// ETags this store last read or wrote, by key, shared by the store's clones.
#[derive(Clone, Debug, Default)]
struct Etags(Arc<Mutex<HashMap<String, String>>>);

impl Etags {
    fn get(&self, key: &str) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    /// Remembers `etag` for `key`; `None` forgets it.
    fn set(&self, key: &str, etag: Option<&str>) {
        let mut etags = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match etag {
            Some(etag) => etags.insert(key.to_owned(), etag.to_owned()),
            None => etags.remove(key),
        };
    }
}

impl S3Store {
    /// A store in `bucket` under `prefix`, with the given client.
    pub fn new(client: Client, bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into().trim_matches('/').to_owned();
        S3Store {
            client,
            bucket: bucket.into(),
            prefix,
            snapshot_etags: Etags::default(),
            lock_etags: Etags::default(),
            lease: crate::DEFAULT_LEASE,
            written: Arc::default(),
        }
    }

    /// The same store, giving its locks leases of `lease`.
    pub fn with_lease(mut self, lease: std::time::Duration) -> Self {
        self.lease = lease;
        self
    }

    /// A store configured from the standard AWS chain (environment, profile, ...).
    /// `AWS_ENDPOINT_URL` is honoured; with an endpoint set, path-style addressing is
    /// used, which local emulators need.
    pub async fn from_env(bucket: &str, prefix: &str) -> Self {
        let config = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        let custom_endpoint = std::env::var_os("AWS_ENDPOINT_URL").is_some() || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        let s3 = aws_sdk_s3::config::Builder::from(&config).force_path_style(custom_endpoint).build();
        Self::new(Client::from_conf(s3), bucket, prefix)
    }

    /// The S3 client, for setting up buckets.
    pub fn client(&self) -> &Client {
        &self.client
    }

    fn key(&self, stack: &str, name: &str) -> String {
        if self.prefix.is_empty() {
            format!("{stack}/{name}")
        } else {
            format!("{}/{stack}/{name}", self.prefix)
        }
    }

    fn path(&self, key: &str) -> PathBuf {
        PathBuf::from(format!("s3://{}/{key}", self.bucket))
    }

    fn remote(&self, action: &str, key: &str, detail: String) -> StateError {
        StateError::Remote(format!("{action} s3://{}/{key}: {detail}", self.bucket))
    }

    async fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Option<String>)>, StateError> {
        match self.client.get_object().bucket(&self.bucket).key(key).send().await {
            Ok(out) => {
                let etag = out.e_tag().map(str::to_owned);
                let bytes = out.body.collect().await.map_err(|e| self.remote("reading", key, e.to_string()))?;
                Ok(Some((bytes.into_bytes().to_vec(), etag)))
            }
            Err(e) => match classify(e) {
                S3Failure::NotFound => Ok(None),
                S3Failure::PreconditionFailed => Err(self.remote("reading", key, "precondition failed".into())),
                S3Failure::Other(m) => Err(self.remote("reading", key, m)),
            },
        }
    }

    /// The keys under `prefix`, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StateError> {
        let (mut keys, _) = self.list_pages(prefix, None).await?;
        keys.sort();
        Ok(keys)
    }

    /// Every page of a listing under `prefix`: its keys, and with a `delimiter` its
    /// common prefixes (the "directories").
    async fn list_pages(&self, prefix: &str, delimiter: Option<&str>) -> Result<(Vec<String>, Vec<String>), StateError> {
        let (mut keys, mut prefixes) = (Vec::new(), Vec::new());
        let mut token = None;
        loop {
            let out = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(prefix)
                .set_delimiter(delimiter.map(str::to_owned))
                .set_continuation_token(token)
                .send()
                .await
                .map_err(|e| self.remote("listing", prefix, format!("{:?}", e.into_service_error())))?;
            keys.extend(out.contents().iter().filter_map(|o| o.key().map(str::to_owned)));
            prefixes.extend(out.common_prefixes().iter().filter_map(|p| p.prefix().map(str::to_owned)));
            match out.next_continuation_token() {
                Some(t) => token = Some(t.to_owned()),
                None => break,
            }
        }
        Ok((keys, prefixes))
    }

    /// The objects at `keys`, in order (`None` for one deleted meanwhile), fetched up to
    /// 16 at a time: a journal has one object per record.
    async fn get_all(&self, keys: Vec<String>) -> Result<Vec<Option<Vec<u8>>>, StateError> {
        let mut found: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        let mut running = tokio::task::JoinSet::new();
        let mut next = 0;
        loop {
            while running.len() < 16 && next < keys.len() {
                let (store, key, i) = (self.clone(), keys[next].clone(), next);
                running.spawn(async move { (i, store.get(&key).await) });
                next += 1;
            }
            match running.join_next().await {
                Some(Ok((i, got))) => found[i] = got?.map(|(bytes, _)| bytes),
                Some(Err(e)) => return Err(StateError::Remote(format!("reading the journal from s3://{}: {e}", self.bucket))),
                None => return Ok(found),
            }
        }
    }

    /// Deletes `keys`, 1000 per request (S3's limit).
    async fn delete_all(&self, keys: Vec<String>) -> Result<(), StateError> {
        use aws_sdk_s3::types::{Delete, ObjectIdentifier};
        for batch in keys.chunks(1000) {
            let objects = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StateError::Remote(format!("clearing the journal in s3://{}: {e}", self.bucket)))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| StateError::Remote(format!("clearing the journal in s3://{}: {e}", self.bucket)))?;
            let out = self
                .client
                .delete_objects()
                .bucket(&self.bucket)
                .delete(delete)
                .send()
                .await
                .map_err(|e| self.remote("clearing the journal in", &batch[0], format!("{:?}", e.into_service_error())))?;
            if let Some(failed) = out.errors().first() {
                let key = failed.key().unwrap_or_default();
                return Err(self.remote("clearing the journal at", key, failed.message().unwrap_or("refused").to_owned()));
            }
        }
        Ok(())
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> Result<Option<String>, StateError> {
        let len = bytes.len() as u64;
        let out = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| match classify(e) {
                S3Failure::Other(m) => self.remote("writing", key, m),
                _ => self.remote("writing", key, "refused".into()),
            })?;
        self.written.fetch_add(len, Ordering::Relaxed);
        Ok(out.e_tag().map(str::to_owned))
    }

    /// Runs the write `write` for the holder of `lock`, abandoning it once the holder
    /// must stop writing: a write that landed later could follow a takeover. Dropped
    /// before S3 has the whole request, it never lands; one S3 already has whole may
    /// still finish. A late journal record is refused by the key the next holder
    /// claims first; a late commit, conditional on the snapshot it read (`If-Match`),
    /// is refused once the next holder has claimed the snapshot (`claim_snapshot`).
    async fn before_lease_ends<T>(&self, lock: &Lock, write: impl std::future::Future<Output = Result<T, StateError>>) -> Result<T, StateError> {
        lock.check()?;
        match tokio::time::timeout(lock.writable_for(), write).await {
            Ok(done) => done,
            Err(_) => Err(StateError::LeaseExpired { stack: lock.stack.clone(), lease: lock.lease() }),
        }
    }

    /// The lock object: what it says (an unreadable one as an unknown holder) and its
    /// ETag.
    async fn read_lock(&self, key: &str) -> Result<Option<(LockInfo, Option<String>)>, StateError> {
        Ok(self.get(key).await?.map(|(bytes, etag)| {
            let held = serde_json::from_slice::<LockInfo>(&bytes).unwrap_or_else(|_| LockInfo::unknown("the lock object is unreadable"));
            (held, etag)
        }))
    }

    /// Creates `key` unless it exists: `Ok(false)` if it does.
    async fn create(&self, key: &str, bytes: Vec<u8>) -> Result<bool, StateError> {
        let len = bytes.len() as u64;
        match self.client.put_object().bucket(&self.bucket).key(key).if_none_match("*").body(ByteStream::from(bytes)).send().await {
            Ok(_) => {
                self.written.fetch_add(len, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) => match classify(e) {
                S3Failure::PreconditionFailed => Ok(false),
                S3Failure::NotFound => Err(self.remote("writing", key, "the bucket does not exist".into())),
                S3Failure::Other(m) => Err(self.remote("writing", key, m)),
            },
        }
    }

    /// The number of the journal's last record key, if any.
    async fn last_record(&self, stack: &str) -> Result<Option<u64>, StateError> {
        let prefix = self.key(stack, "journal/");
        Ok(self.list(&prefix).await?.iter().filter_map(|k| k.strip_prefix(&prefix)?.strip_suffix(".json")?.parse::<u64>().ok()).max())
    }

    /// Takes the journal's next key for a new holder, so the holder it took the lease
    /// over from, if still writing, has its next record refused.
    async fn fence(&self, stack: &str) -> Result<(), StateError> {
        let next = self.last_record(stack).await?.map_or(0, |n| n + 1);
        for seq in next..next + 8 {
            if self.create(&self.key(stack, &format!("journal/{seq:020}.json")), Vec::new()).await? {
                return Ok(());
            }
        }
        Err(self.remote("fencing", &self.key(stack, "journal/"), "eight record keys in a row were taken by another writer".into()))
    }

    /// Writes the snapshot again, marked with the new holder's lock token, so that its
    /// ETag changes: an old holder's commit still on its way is conditional on the ETag
    /// it read (`If-Match`) and is refused from now on, before this holder writes a
    /// record. Without it, such a commit could land after this holder's first records,
    /// which, written against the snapshot read at the takeover, a later load would skip.
    /// A commit that lands first is simply what this holder then loads.
    async fn claim_snapshot(&self, stack: &str, lock: &Lock) -> Result<(), StateError> {
        let key = self.key(stack, "state.json");
        let mark = claim_mark(&lock.info.token);
        for _ in 0..4 {
            let Some((bytes, etag)) = self.get(&key).await? else { return Ok(()) };
            let Some(etag) = etag else {
                return Err(self.remote("claiming", &key, "the store gave no ETag for the snapshot, so an old holder's commit cannot be fenced".into()));
            };
            // Claimed already: the SDK sent the claim again after it had landed.
            if bytes.starts_with(&mark) {
                self.snapshot_etags.set(stack, Some(&etag));
                return Ok(());
            }
            parse_snapshot_header(&self.path(&key), &bytes)?;
            let claimed = claimed(&mark, &bytes).ok_or_else(|| StateError::Corrupt { path: self.path(&key), detail: "the snapshot is not a JSON object".into() })?;
            let len = claimed.len() as u64;
            let put = self.client.put_object().bucket(&self.bucket).key(&key).if_match(etag).body(ByteStream::from(claimed));
            match self.before_lease_ends(lock, async { Ok(put.send().await) }).await? {
                Ok(out) => {
                    self.written.fetch_add(len, Ordering::Relaxed);
                    self.snapshot_etags.set(stack, out.e_tag());
                    return Ok(());
                }
                Err(e) => match classify(e) {
                    // An old holder's commit landed since the read: claim that one, while
                    // the lock is still this holder's (broken by force, a newer holder's
                    // claim is not to be written over).
                    S3Failure::PreconditionFailed | S3Failure::NotFound => {
                        crate::store::check_held(lock, self.lock_holder(stack).await?.as_ref())?;
                        continue;
                    }
                    S3Failure::Other(m) => return Err(self.remote("claiming", &key, m)),
                },
            }
        }
        Err(self.remote("claiming", &key, "the snapshot changed under each of four attempts to claim it".into()))
    }

    /// Keys that sort in write order across processes: time, then a counter.
    fn ordered_name(counter: &AtomicU64) -> String {
        let micros = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros();
        format!("{micros:020}-{:010}-{:08x}", counter.fetch_add(1, Ordering::Relaxed), std::process::id())
    }
}

/// How a claimed snapshot starts: `{"claimed_by":"<token>",`.
fn claim_mark(token: &str) -> Vec<u8> {
    let mut mark = br#"{"claimed_by":"#.to_vec();
    mark.extend(serde_json::to_vec(token).expect("a string serializes"));
    mark.push(b',');
    mark
}

/// The snapshot `bytes` (a non-empty JSON object) marked with `mark` in place of any
/// earlier claim's: spliced, not parsed, since a snapshot can be tens of megabytes.
/// `None` if the bytes do not start an object.
fn claimed(mark: &[u8], bytes: &[u8]) -> Option<Vec<u8>> {
    let mut rest = bytes.trim_ascii_start().strip_prefix(b"{")?;
    if let Some(earlier) = rest.strip_prefix(br#""claimed_by":""#) {
        // Tokens hold no quote or backslash: the mark ends at the next quote.
        let end = earlier.iter().position(|&b| b == b'"')?;
        rest = earlier[end + 1..].strip_prefix(b",")?;
    }
    let mut out = Vec::with_capacity(mark.len() + rest.len());
    out.extend_from_slice(mark);
    out.extend_from_slice(rest);
    Some(out)
}

#[derive(Debug)]
struct S3Journal {
    store: S3Store,
    lock: Lock,
    /// The next record's number: records are numbered in order under the lock, so
    /// replay order never depends on clocks.
    next: AtomicU64,
}

#[async_trait]
impl Journal for S3Journal {
    /// Fenced: nothing is sent once the lease may have run out (by this process's
    /// clocks) or was found lost, and a write not done by then is abandoned; no record
    /// replaces another (each key is created with
    /// If-None-Match). A process that takes the lock creates the next key first (an
    /// empty object, which loading skips), so an old holder's next record is refused
    /// and it stops. A refused key is taken as a loss only if the lock is no longer this
    /// writer's; the rightful holder moves past it.
    async fn record(&self, record: JournalRecord) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(&record).expect("journal records serialize");
        for _ in 0..8 {
            let seq = self.next.fetch_add(1, Ordering::SeqCst);
            let key = self.store.key(&self.lock.stack, &format!("journal/{seq:020}.json"));
            if self.store.before_lease_ends(&self.lock, self.store.create(&key, bytes.clone())).await? {
                return Ok(());
            }
            let held = self.store.lock_holder(&self.lock.stack).await?;
            crate::store::check_held(&self.lock, held.as_ref())?;
            // Refused as the key exists, and the lock still this writer's: by this very
            // record, if the SDK sent it again after it had landed (its answer lost). Not
            // written again under the next key, where a load would replay it twice.
            if self.store.get(&key).await?.is_some_and(|(found, _)| found == bytes) {
                return Ok(());
            }
        }
        Err(self.store.remote("writing", &self.store.key(&self.lock.stack, "journal/"), "eight record keys in a row were taken by another writer".into()))
    }
}

#[async_trait]
impl Store for S3Store {
    fn location(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    async fn load(&self, stack: &str) -> Result<Option<StackState>, StateError> {
        crate::store::check_stack_name(stack)?;
        let key = self.key(stack, "state.json");
        let Some((bytes, etag)) = self.get(&key).await? else { return Ok(None) };
        let mut state = parse_snapshot(&self.path(&key), &bytes)?;
        if let Some(etag) = etag {
            self.snapshot_etags.set(stack, Some(&etag));
        }
        let mut lines = String::new();
        for bytes in self.get_all(self.list(&self.key(stack, "journal/")).await?).await?.into_iter().flatten() {
            lines.push_str(&String::from_utf8_lossy(&bytes));
            lines.push('\n');
        }
        replay(&mut state, read_records(&self.path(&self.key(stack, "journal/")), &lines)?);
        state.sort_resources();
        Ok(Some(state))
    }

    async fn lock(&self, stack: &str, operation: &str) -> Result<Lock, StateError> {
        crate::store::check_stack_name(stack)?;
        let key = self.key(stack, "lock.json");
        let previous = match self.read_lock(&key).await? {
            Some((held, _)) if !held.lease().is_expired() => {
                return Err(StateError::Locked(Box::new(LockedError { stack: stack.to_owned(), holder: held })));
            }
            previous => previous,
        };
        let taken = tokio::time::Instant::now();
        let info = LockInfo::here(operation, self.lease).succeeding(previous.as_ref().map(|(held, _)| held));
        let body = serde_json::to_vec_pretty(&info).expect("lock info serializes");
        let put = self.client.put_object().bucket(&self.bucket).key(&key).body(ByteStream::from(body));
        // Created only if absent, or taken over only from the expired lease just read:
        // of processes racing for it, one wins.
        let put = match previous {
            None => put.if_none_match("*"),
            Some((_, Some(etag))) => put.if_match(etag),
            Some((_, None)) => return Err(self.remote("locking", &key, "the store gave no ETag for the expired lock, so it cannot be taken over safely; clear it with `state unlock`".into())),
        };
        let etag = match put.send().await {
            Ok(out) => out.e_tag().map(str::to_owned),
            Err(e) => match classify(e) {
                // Another process was first (it created the lock, or took the expired
                // lease over, or it was cleared since it was read), or the SDK sent
                // this very write again after it had landed: the lock object says which.
                S3Failure::PreconditionFailed | S3Failure::NotFound => match self.read_lock(&key).await? {
                    Some((held, etag)) if held.token == info.token => etag,
                    held => {
                        let holder = held.map_or_else(|| LockInfo::unknown("the lock was released while reading it; try again"), |(h, _)| h);
                        return Err(StateError::Locked(Box::new(LockedError { stack: stack.to_owned(), holder })));
                    }
                },
                S3Failure::Other(m) => return Err(self.remote("locking", &key, m)),
            },
        };
        self.lock_etags.set(&info.token, etag.as_deref());
        let lock = Lock::new(stack, info, self.lease, taken);
        // Always, not only on a takeover: after `state unlock --force` the old holder
        // may still be writing, and its next record and its next commit must be refused.
        let fenced = match self.fence(stack).await {
            Ok(()) => self.claim_snapshot(stack, &lock).await,
            Err(e) => Err(e),
        };
        if let Err(e) = fenced {
            let _ = self.unlock(lock).await;
            return Err(e);
        }
        Ok(lock)
    }

    async fn renew(&self, lock: &Lock) -> Result<(), StateError> {
        let started = tokio::time::Instant::now();
        let key = self.key(&lock.stack, "lock.json");
        let lost = || {
            self.lock_etags.set(&lock.info.token, None);
            lock.mark_lost();
            lock.lost_error()
        };
        if lock.is_lost() {
            return Err(lock.lost_error());
        }
        // Twice at most: a renewal refused because the SDK sent it again after it had
        // landed finds the lock still its own, and goes on from the ETag it now has.
        for _ in 0..2 {
            let etag = match self.lock_etags.get(&lock.info.token) {
                Some(etag) => etag,
                None => match self.read_lock(&key).await? {
                    Some((held, Some(etag))) if held.token == lock.info.token => etag,
                    _ => return Err(lost()),
                },
            };
            let info = lock.renewed_info();
            let body = serde_json::to_vec_pretty(&info).expect("lock info serializes");
            let put = self.client.put_object().bucket(&self.bucket).key(&key).if_match(etag).body(ByteStream::from(body));
            match put.send().await {
                Ok(out) => {
                    self.lock_etags.set(&lock.info.token, out.e_tag());
                    lock.renewed(started, info.expires_ms);
                    return Ok(());
                }
                Err(e) => match classify(e) {
                    // Replaced (taken over) or deleted (`state unlock`) since this
                    // process last wrote it, unless it is still this holder's.
                    S3Failure::PreconditionFailed | S3Failure::NotFound => match self.read_lock(&key).await? {
                        Some((held, etag)) if held.token == lock.info.token => self.lock_etags.set(&lock.info.token, etag.as_deref()),
                        _ => return Err(lost()),
                    },
                    S3Failure::Other(m) => return Err(self.remote("renewing the lease at", &key, m)),
                },
            }
        }
        Err(self.remote("renewing the lease at", &key, "the lock kept changing under this holder".into()))
    }

    async fn unlock(&self, lock: Lock) -> Result<(), StateError> {
        let key = self.key(&lock.stack, "lock.json");
        self.lock_etags.set(&lock.info.token, None);
        // Only the lock just read, and only while it is this holder's: one broken and
        // taken by another process in between fails the delete's precondition and stays
        // theirs. A renewal of this holder's that lands in between fails it too: read
        // again and retry.
        for _ in 0..3 {
            let Some((held, etag)) = self.read_lock(&key).await? else { return Ok(()) };
            if held.token != lock.info.token {
                return Ok(());
            }
            let Some(etag) = etag else {
                return Err(self.remote(
                    "unlocking",
                    &key,
                    "the store gave no ETag for the lock, so it cannot be released safely; release it with `state unlock`".into(),
                ));
            };
            match self.client.delete_object().bucket(&self.bucket).key(&key).if_match(etag).send().await {
                Ok(_) => return Ok(()),
                Err(e) => match classify(e) {
                    S3Failure::NotFound => return Ok(()),
                    S3Failure::PreconditionFailed => continue,
                    S3Failure::Other(m) => return Err(self.remote("unlocking", &key, m)),
                },
            }
        }
        Err(self.remote("unlocking", &key, "the lock kept changing while it was released; `state unlock` releases it".into()))
    }

    async fn break_lock(&self, stack: &str, token: &str) -> Result<Option<LockInfo>, StateError> {
        let key = self.key(stack, "lock.json");
        let Some((held, Some(etag))) = self.read_lock(&key).await? else { return Ok(None) };
        if held.token != token {
            return Ok(None);
        }
        match self.client.delete_object().bucket(&self.bucket).key(&key).if_match(etag).send().await {
            Ok(_) => Ok(Some(held)),
            Err(e) => match classify(e) {
                S3Failure::PreconditionFailed | S3Failure::NotFound => Ok(None),
                S3Failure::Other(m) => Err(self.remote("unlocking", &key, m)),
            },
        }
    }

    async fn force_unlock(&self, stack: &str) -> Result<Option<LockInfo>, StateError> {
        let held = self.lock_holder(stack).await?;
        let key = self.key(stack, "lock.json");
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(&key)
            .send()
            .await
            .map_err(|e| self.remote("unlocking", &key, format!("{:?}", e.into_service_error())))?;
        Ok(held)
    }

    async fn stacks(&self) -> Result<Vec<String>, StateError> {
        // The "directories" under the prefix, listed with a delimiter: one entry per
        // stack, however many objects each has.
        let prefix = if self.prefix.is_empty() { String::new() } else { format!("{}/", self.prefix) };
        let (_, dirs) = self.list_pages(&prefix, Some("/")).await?;
        let mut stacks: Vec<String> = dirs
            .iter()
            .filter_map(|d| d.strip_prefix(&prefix)?.strip_suffix('/'))
            .filter(|n| crate::store::check_stack_name(n).is_ok())
            .map(str::to_owned)
            .collect();
        stacks.sort();
        Ok(stacks)
    }

    async fn lock_holder(&self, stack: &str) -> Result<Option<LockInfo>, StateError> {
        Ok(self.get(&self.key(stack, "lock.json")).await?.and_then(|(bytes, _)| serde_json::from_slice(&bytes).ok()))
    }

    async fn journal(&self, lock: &Lock) -> Result<Arc<dyn Journal>, StateError> {
        crate::store::check_held(lock, self.lock_holder(&lock.stack).await?.as_ref())?;
        let next = AtomicU64::new(self.last_record(&lock.stack).await?.map_or(0, |n| n + 1));
        Ok(Arc::new(S3Journal { store: self.clone(), lock: lock.clone(), next }))
    }

    async fn commit(&self, lock: &Lock, state: &StackState) -> Result<(), StateError> {
        let stack = &lock.stack;
        // No lost update: replace exactly the snapshot this process last saw (read by its
        // load, or written by its last commit or its claim). Taken before the holder is
        // checked: should a new holder in this process claim the snapshot meanwhile, this
        // commit still carries the ETag from before the claim, and is refused.
        let expected = self.snapshot_etags.get(stack);
        crate::store::check_held(lock, self.lock_holder(stack).await?.as_ref())?;
        let key = self.key(stack, "state.json");
        let current = self.get(&key).await?;
        let conflict = || StateError::Conflict { stack: stack.clone(), detail: "the snapshot's ETag changed (If-Match failed)".into() };
        if let Some((bytes, etag)) = &current {
            // Never replace a snapshot that is not JSON of a format we know, nor one this
            // state does not follow.
            let stored = parse_snapshot_header(&self.path(&key), bytes)?;
            crate::store::check_follows(stack, (&stored.lineage, stored.serial), state)?;
            // The backup is taken only of the snapshot this commit replaces.
            let copy = format!("{}/{key}", self.bucket);
            let backed_up = self
                .client
                .copy_object()
                .bucket(&self.bucket)
                .key(self.key(stack, "state.json.bak"))
                .copy_source(copy)
                .set_copy_source_if_match(expected.clone().or_else(|| etag.clone()))
                .send()
                .await;
            if let Err(e) = backed_up {
                return Err(match classify(e) {
                    // The snapshot changed, or was deleted, since this holder read it.
                    S3Failure::PreconditionFailed | S3Failure::NotFound => conflict(),
                    S3Failure::Other(m) => self.remote("backing up", &key, m),
                });
            }
        }
        // The records this snapshot takes in: listed before it is written, so that only
        // they are cleared after (a record written after the listing is not in it).
        let records = self.list(&self.key(stack, "journal/")).await?;
        // Shared with the request, to recognise this snapshot if the SDK's second attempt
        // is refused (below).
        let bytes = bytes::Bytes::from(serde_json::to_vec(state).expect("state serializes"));
        let len = bytes.len() as u64;
        let put = self.client.put_object().bucket(&self.bucket).key(&key).body(ByteStream::from(bytes.clone()));
        let put = match &current {
            None => put.if_none_match("*"),
            Some((_, etag)) => put.set_if_match(expected.or_else(|| etag.clone())),
        };
        let sent = self.before_lease_ends(lock, async { Ok(put.send().await) }).await?;
        let etag = match sent {
            Ok(out) => out.e_tag().map(str::to_owned),
            Err(e) => match classify(e) {
                // Refused on the ETag: another writer's, or this very snapshot's, if the
                // SDK sent it again after it had landed (its answer lost). Its bytes, while
                // the lock is still this holder's, tell which.
                S3Failure::PreconditionFailed => match self.get(&key).await? {
                    Some((found, etag)) if found == bytes => {
                        let held = self.lock_holder(stack).await?;
                        crate::store::check_held(lock, held.as_ref()).map_err(|_| conflict())?;
                        etag
                    }
                    _ => return Err(conflict()),
                },
                S3Failure::NotFound => return Err(self.remote("writing", &key, "the bucket does not exist".into())),
                S3Failure::Other(m) => return Err(self.remote("writing", &key, m)),
            },
        };
        self.written.fetch_add(len, Ordering::Relaxed);
        if let Some(etag) = etag {
            self.snapshot_etags.set(stack, Some(&etag));
        }
        // Those records are in the snapshot now. Cleared only while the lock is still this
        // holder's: a holder whose commit landed just before a takeover (its lock broken
        // by force) must not clear the key the new holder claimed after the listing, or
        // its next record could take that key. Left, they are behind the snapshot's
        // serial, skipped by loads and cleared by the next commit. So this clean-up is
        // best effort: the commit has landed, and failing it now would break the session.
        if self.lock_holder(stack).await.is_ok_and(|held| held.is_some_and(|held| held.token == lock.info.token)) {
            let _ = self.delete_all(records).await;
        }
        Ok(())
    }

    async fn audit(&self, stack: &str, entries: &[serde_json::Value]) -> Result<(), StateError> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        if entries.is_empty() {
            return Ok(());
        }
        // One object per batch: a JSON array of its entries.
        let key = self.key(stack, &format!("audit/{}.json", Self::ordered_name(&COUNTER)));
        self.put(&key, serde_json::to_vec(entries).expect("audit entries serialize")).await.map(|_| ())
    }

    async fn history(&self, stack: &str) -> Result<Vec<serde_json::Value>, StateError> {
        let mut entries = Vec::new();
        for k in self.list(&self.key(stack, "audit/")).await? {
            if let Some((bytes, _)) = self.get(&k).await? {
                // An unreadable object is skipped, as the file store skips a torn line.
                if let Ok(batch) = serde_json::from_slice::<Vec<serde_json::Value>>(&bytes) {
                    entries.extend(batch);
                }
            }
        }
        Ok(entries)
    }

    fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::{claim_mark, claimed};

    fn claim(token: &str, bytes: &str) -> Option<String> {
        claimed(&claim_mark(token), bytes.as_bytes()).map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn a_claim_marks_the_snapshot_once_replacing_an_earlier_claim() {
        let first = claim("t1", r#"{"version":1,"serial":3}"#).unwrap();
        assert_eq!(first, r#"{"claimed_by":"t1","version":1,"serial":3}"#);
        assert_eq!(claim("t2", &first).unwrap(), r#"{"claimed_by":"t2","version":1,"serial":3}"#);
        // Written by hand, pretty: still an object that parses.
        let pretty = claim("t3", " \n{\n  \"version\": 1\n}").unwrap();
        assert_eq!(serde_json::from_str::<serde_json::Value>(&pretty).unwrap(), serde_json::json!({"claimed_by": "t3", "version": 1}));
        assert_eq!(claim("t4", r#"[{"version":1}]"#), None);
    }
}
