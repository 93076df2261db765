//! The default store: a directory per stack under `.cairn/`.
//!
//! ```text
//! .cairn/<stack>/state.json       the last snapshot
//! .cairn/<stack>/state.json.bak   the snapshot before it
//! .cairn/<stack>/journal.jsonl    step records since the snapshot, one JSON per line,
//!                                 then zeros (room for the next records)
//! .cairn/<stack>/lock.json        present while an operation holds the stack: its lease
//! .cairn/<stack>/lock.guard       an empty file, locked by the OS while the lock is read
//!                                 and written (exclusively) or a write is fenced (shared)
//! .cairn/<stack>/audit.jsonl      the audit log
//! ```
//!
//! Fencing: every journal batch and every commit checks, under a shared OS lock on
//! `lock.guard`, that `lock.json` is still the writer's; taking a lock over takes the OS
//! lock exclusively. So once a lease is taken over, no write of the old holder lands.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use tokio::sync::oneshot;

use crate::error::LockedError;
use crate::journal::{replay, Durable, Journal, JournalRecord};
use crate::store::{LockInfo, Store};
use crate::Lock;
use crate::{StackState, StateError, FORMAT_VERSION};

const SNAPSHOT: &str = "state.json";
const BACKUP: &str = "state.json.bak";
const JOURNAL: &str = "journal.jsonl";
const LOCK: &str = "lock.json";
const AUDIT: &str = "audit.jsonl";
const GUARD: &str = "lock.guard";
/// The longest a store waits for another process's OS lock on `lock.guard`.
const GUARD_WAIT: Duration = Duration::from_secs(10);
/// The zeros kept after the journal's last record: room for an event's apply of about
/// ten steps. A batch written over them changes no file size, so its fsync needs no
/// commit of the file system's own journal: on the development machine's ext4, 120
/// against 175 µs at p50, and 180 against 230–1,000 µs at p99. Past them, the file grows.
const JOURNAL_SLACK: u64 = 16 * 1024;

/// State in local files: a snapshot plus a journal per stack, written record after record.
///
/// Every step of an apply appends a begin and an end record, fsynced, so writing N
/// resources costs O(N) bytes; the snapshot is rewritten once, when the operation
/// commits (temporary file, fsync, rename, fsync of the directory).
#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
    lease: Duration,
    written: Arc<AtomicU64>,
}

impl FileStore {
    /// A store rooted at `root` (conventionally `.cairn`), whose locks have leases of
    /// [`DEFAULT_LEASE`](crate::DEFAULT_LEASE).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FileStore { root: root.into(), lease: crate::DEFAULT_LEASE, written: Arc::default() }
    }

    /// The same store, giving its locks leases of `lease`.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The directory of `stack`.
    pub fn stack_dir(&self, stack: &str) -> PathBuf {
        self.root.join(stack)
    }

    /// The directory of `stack`, once its name is checked.
    fn dir(&self, stack: &str) -> Result<PathBuf, StateError> {
        crate::store::check_stack_name(stack)?;
        Ok(self.stack_dir(stack))
    }

    async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, StateError> + Send + 'static) -> Result<T, StateError> {
        tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
    }
}

/// Reads and checks a snapshot file; `None` if it does not exist.
pub(crate) fn read_snapshot(path: &Path) -> Result<Option<StackState>, StateError> {
    read_bytes(path)?.map(|bytes| parse_snapshot(path, &bytes)).transpose()
}

/// Reads and checks only what a commit compares of the snapshot file it replaces.
fn read_snapshot_header(path: &Path) -> Result<Option<SnapshotHeader>, StateError> {
    read_bytes(path)?.map(|bytes| parse_snapshot_header(path, &bytes)).transpose()
}

fn read_bytes(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StateError::io("reading", path)(e)),
    }
}

/// What identifies a snapshot: enough for a commit to tell whether the state it
/// writes follows the one it replaces.
#[derive(Debug)]
pub(crate) struct SnapshotHeader {
    pub(crate) lineage: String,
    pub(crate) serial: u64,
}

/// Parses the header of snapshot bytes, telling empty, truncated, corrupt and too-new
/// apart. The rest is skipped over as JSON (its syntax is checked), not decoded: a
/// commit that only compares lineage and serial would otherwise decode a whole
/// 10,000-resource state, most of such a commit's time.
pub(crate) fn parse_snapshot_header(path: &Path, bytes: &[u8]) -> Result<SnapshotHeader, StateError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(StateError::Empty { path: path.to_owned() });
    }
    // Untyped, so the version is checked before anything else is read into a type: a
    // newer format is reported as such, whatever its fields have become.
    #[derive(serde::Deserialize)]
    struct Fields {
        version: Option<Value>,
        lineage: Option<Value>,
        serial: Option<Value>,
    }
    let fields: Fields = serde_json::from_slice(bytes).map_err(|e| {
        if e.is_eof() {
            StateError::Truncated { path: path.to_owned(), len: bytes.len() as u64 }
        } else {
            StateError::Corrupt { path: path.to_owned(), detail: e.to_string() }
        }
    })?;
    let corrupt = |detail: &str| StateError::Corrupt { path: path.to_owned(), detail: detail.to_owned() };
    match fields.version.as_ref().and_then(Value::as_u64) {
        None => return Err(corrupt("no format version: this is not a Cairn state file")),
        Some(v) if v > u64::from(FORMAT_VERSION) => {
            return Err(StateError::TooNew { path: path.to_owned(), found: v, supported: FORMAT_VERSION })
        }
        Some(_) => {}
    }
    let lineage = match fields.lineage {
        Some(Value::String(lineage)) => lineage,
        Some(_) => return Err(corrupt("`lineage` is not a string")),
        None => return Err(corrupt("missing field `lineage`")),
    };
    match fields.serial.as_ref().map(Value::as_u64) {
        Some(Some(serial)) => Ok(SnapshotHeader { lineage, serial }),
        Some(None) => Err(corrupt("`serial` is not a whole number")),
        None => Err(corrupt("missing field `serial`")),
    }
}

/// Parses snapshot bytes, telling empty, truncated, corrupt and too-new apart.
pub(crate) fn parse_snapshot(path: &Path, bytes: &[u8]) -> Result<StackState, StateError> {
    parse_snapshot_header(path, bytes)?;
    serde_json::from_slice(bytes).map_err(|e| StateError::Corrupt { path: path.to_owned(), detail: e.to_string() })
}

/// Reads journal records. A last line without its newline was cut off by a crash while
/// being written, before it was acknowledged: it is ignored. Any other bad line is
/// corruption.
pub(crate) fn read_journal(path: &Path) -> Result<Vec<JournalRecord>, StateError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StateError::io("reading", path)(e)),
    };
    // The records end at the first zero (JSON never holds one); what follows may be
    // any part of a torn batch, and is not read, not even as text.
    let end = records_end(&bytes);
    let text = std::str::from_utf8(&bytes[..end]).map_err(|e| StateError::io("reading", path)(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    read_records(path, text)
}

/// Where the whole records of a file journal's `bytes` end: after the last newline
/// before the first zero.
fn records_end(bytes: &[u8]) -> usize {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    bytes[..end].iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1)
}

pub(crate) fn read_records(path: &Path, text: &str) -> Result<Vec<JournalRecord>, StateError> {
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| StateError::JournalCorrupt { path: path.to_owned(), line: i + 1, detail: e.to_string() })
        })
        .collect()
}

/// Options that create a file only its owner may read or write: a stack's snapshot,
/// journal, audit log and lock hold its whole inventory, and may hold secrets. A file
/// that exists keeps its mode.
fn private_file() -> OpenOptions {
    #[allow(unused_mut)]
    let mut options = OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

/// Creates `dir` and its missing parents, each one only its owner may enter.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn fsync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(StateError::io("syncing", dir))
}

/// Writes `bytes` to `path` atomically: temporary file, fsync, rename, fsync of the
/// directory. Keeps the previous file as `backup` if given.
fn write_atomic(path: &Path, bytes: &[u8], backup: Option<&Path>) -> Result<(), StateError> {
    let dir = path.parent().expect("state files live in a directory");
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = private_file().write(true).create(true).truncate(true).open(&tmp).map_err(StateError::io("creating", &tmp))?;
        f.write_all(bytes).map_err(StateError::io("writing", &tmp))?;
        f.sync_all().map_err(StateError::io("syncing", &tmp))?;
    }
    if let Some(backup) = backup {
        if path.exists() {
            // A hard link keeps the old snapshot without a moment where no snapshot exists.
            let _ = fs::remove_file(backup);
            fs::hard_link(path, backup).or_else(|_| fs::copy(path, backup).map(|_| ())).map_err(StateError::io("backing up", path))?;
        }
    }
    fs::rename(&tmp, path).map_err(StateError::io("renaming into place", path))?;
    fsync_dir(dir)
}

#[async_trait]
impl Store for FileStore {
    fn journal_outlives_commit(&self) -> bool {
        // The file is emptied in place, and each record checks the lock.
        true
    }

    fn location(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn load(&self, stack: &str) -> Result<Option<StackState>, StateError> {
        let dir = self.dir(stack)?;
        Self::blocking(move || {
            let Some(mut state) = read_snapshot(&dir.join(SNAPSHOT))? else { return Ok(None) };
            let records = read_journal(&dir.join(JOURNAL))?;
            replay(&mut state, records);
            state.sort_resources();
            Ok(Some(state))
        })
        .await
    }

    async fn lock(&self, stack: &str, operation: &str) -> Result<Lock, StateError> {
        let dir = self.dir(stack)?;
        let lease = self.lease;
        let info = LockInfo::here(operation, lease);
        let stack = stack.to_owned();
        let written = self.written.clone();
        let taken = tokio::time::Instant::now();
        Self::blocking(move || {
            create_private_dir(&dir).map_err(StateError::io("creating", &dir))?;
            let _guard = Guard::exclusive(&dir)?;
            let path = dir.join(LOCK);
            let held = read_bytes(&path)?.map(|bytes| {
                serde_json::from_slice::<LockInfo>(&bytes).unwrap_or_else(|_| {
                    // Cut short by a crash of this host (renewals are not synced): its
                    // holder died with it. Its lease is taken to end a lease after the
                    // file was last written.
                    let written = fs::metadata(&path).and_then(|m| m.modified()).ok();
                    let ms = written.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map_or(0, |d| d.as_millis() as u64);
                    LockInfo { expires_ms: ms + lease.as_millis() as u64, ..LockInfo::unknown("the lock file is unreadable, cut short by a crash") }
                })
            });
            if let Some(holder) = held.as_ref().filter(|h| !h.lease().is_expired()) {
                return Err(StateError::Locked(Box::new(LockedError { stack, holder: holder.clone() })));
            }
            let info = info.succeeding(held.as_ref());
            let bytes = serde_json::to_vec_pretty(&info).expect("lock info serializes");
            write_atomic(&path, &bytes, None)?;
            written.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            Ok(Lock::new(stack, info, lease, taken))
        })
        .await
    }

    async fn renew(&self, lock: &Lock) -> Result<(), StateError> {
        let dir = self.dir(&lock.stack)?;
        let lock = lock.clone();
        let started = tokio::time::Instant::now();
        Self::blocking(move || {
            let _guard = Guard::exclusive(&dir)?;
            let path = dir.join(LOCK);
            crate::store::check_stored(&lock, read_lock(&path)?.as_ref())?;
            let info = lock.renewed_info();
            let bytes = serde_json::to_vec_pretty(&info).expect("lock info serializes");
            // Replaced atomically, not synced: a crash of this host, which loses the
            // renewal, loses its holder with it. The lease then ends sooner, or (a file
            // cut short) a lease after it was written.
            let tmp = path.with_extension("json.tmp");
            private_file()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)
                .and_then(|mut f| f.write_all(&bytes))
                .and_then(|()| fs::rename(&tmp, &path))
                .map_err(StateError::io("renewing the lease in", &path))?;
            lock.renewed(started, info.expires_ms);
            Ok(())
        })
        .await
    }

    async fn unlock(&self, lock: Lock) -> Result<(), StateError> {
        let dir = self.dir(&lock.stack)?;
        Self::blocking(move || {
            let _guard = Guard::exclusive(&dir)?;
            let path = dir.join(LOCK);
            // Release only our own lock: it may have been taken over or handed on.
            if read_lock(&path)?.is_some_and(|held| held.token == lock.info.token) {
                fs::remove_file(&path).map_err(StateError::io("removing", &path))?;
            }
            Ok(())
        })
        .await
    }

    async fn force_unlock(&self, stack: &str) -> Result<Option<LockInfo>, StateError> {
        let dir = self.dir(stack)?;
        Self::blocking(move || {
            let path = dir.join(LOCK);
            if !dir.exists() {
                return Ok(None);
            }
            let _guard = Guard::exclusive(&dir)?;
            let held = read_lock(&path)?;
            match fs::remove_file(&path) {
                Ok(()) => Ok(held),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StateError::io("removing", &path)(e)),
            }
        })
        .await
    }

    async fn break_lock(&self, stack: &str, token: &str) -> Result<Option<LockInfo>, StateError> {
        let dir = self.dir(stack)?;
        let token = token.to_owned();
        Self::blocking(move || {
            if !dir.exists() {
                return Ok(None);
            }
            let _guard = Guard::exclusive(&dir)?;
            let path = dir.join(LOCK);
            match read_lock(&path)? {
                Some(held) if held.token == token => {
                    fs::remove_file(&path).map_err(StateError::io("removing", &path))?;
                    Ok(Some(held))
                }
                _ => Ok(None),
            }
        })
        .await
    }

    async fn stacks(&self) -> Result<Vec<String>, StateError> {
        let root = self.root.clone();
        Self::blocking(move || {
            let entries = match fs::read_dir(&root) {
                Ok(entries) => entries,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(StateError::io("listing", &root)(e)),
            };
            let mut stacks = Vec::new();
            for entry in entries {
                let entry = entry.map_err(StateError::io("listing", &root))?;
                let Ok(name) = entry.file_name().into_string() else { continue };
                if crate::store::check_stack_name(&name).is_ok() && entry.path().join(SNAPSHOT).exists() {
                    stacks.push(name);
                }
            }
            stacks.sort();
            Ok(stacks)
        })
        .await
    }

    async fn lock_holder(&self, stack: &str) -> Result<Option<LockInfo>, StateError> {
        let path = self.stack_dir(stack).join(LOCK);
        Self::blocking(move || read_lock(&path)).await
    }

    async fn journal(&self, lock: &Lock) -> Result<Arc<dyn Journal>, StateError> {
        // The lease's clock is read here, on the runtime; the stored lock under the guard.
        lock.check()?;
        let dir = self.dir(&lock.stack)?;
        let written = self.written.clone();
        let lock = lock.clone();
        let journal = Self::blocking(move || {
            // Held through the repair of a torn tail too: a holder that lost the lock
            // must not cut a line the new holder is appending.
            let _guard = Guard::shared(&dir)?;
            crate::store::check_stored(&lock, read_lock(&dir.join(LOCK))?.as_ref())?;
            FileJournal::open(dir, lock, written)
        })
        .await?;
        Ok(Arc::new(journal))
    }

    async fn commit(&self, lock: &Lock, state: &StackState) -> Result<(), StateError> {
        lock.check()?;
        let dir = self.dir(&lock.stack)?;
        let state = state.clone();
        let written = self.written.clone();
        let stack = lock.stack.clone();
        let lock = lock.clone();
        Self::blocking(move || {
            create_private_dir(&dir).map_err(StateError::io("creating", &dir))?;
            // Held until the snapshot is in place: a takeover waits for it, and a write
            // after one is refused.
            let _guard = Guard::shared(&dir)?;
            crate::store::check_stored(&lock, read_lock(&dir.join(LOCK))?.as_ref())?;
            let path = dir.join(SNAPSHOT);
            // Never replace a snapshot that is not JSON of a format we know, or one
            // that is not the predecessor of this state.
            if let Some(current) = read_snapshot_header(&path)? {
                crate::store::check_follows(&stack, (&current.lineage, current.serial), &state)?;
            }
            let mut bytes = serde_json::to_vec(&state).expect("state serializes");
            bytes.push(b'\n');
            write_atomic(&path, &bytes, Some(&dir.join(BACKUP)))?;
            written.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            // The journal's records are in the snapshot now (and carry the old serial,
            // so replaying them by mistake would skip them).
            empty_journal(&dir.join(JOURNAL), &written)
        })
        .await
    }

    async fn audit(&self, stack: &str, entries: &[serde_json::Value]) -> Result<(), StateError> {
        if entries.is_empty() {
            return Ok(());
        }
        let dir = self.stack_dir(stack);
        let mut line = Vec::new();
        for entry in entries {
            serde_json::to_writer(&mut line, entry).expect("audit entries serialize");
            line.push(b'\n');
        }
        let written = self.written.clone();
        Self::blocking(move || {
            create_private_dir(&dir).map_err(StateError::io("creating", &dir))?;
            let path = dir.join(AUDIT);
            let mut f = private_file().create(true).append(true).open(&path).map_err(StateError::io("opening", &path))?;
            f.write_all(&line).and_then(|()| f.sync_data()).map_err(StateError::io("writing", &path))?;
            written.fetch_add(line.len() as u64, Ordering::Relaxed);
            Ok(())
        })
        .await
    }

    async fn history(&self, stack: &str) -> Result<Vec<serde_json::Value>, StateError> {
        let path = self.stack_dir(stack).join(AUDIT);
        Self::blocking(move || {
            let text = match fs::read_to_string(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(StateError::io("reading", &path)(e)),
            };
            // The log is for people: an unreadable line (a torn last one, after a crash
            // mid-append) is skipped rather than hiding the rest.
            Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
        })
        .await
    }

    fn bytes_written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }
}

/// An OS lock (`flock`) on a stack's `lock.guard`, released when dropped (and by the OS
/// when the process dies, so it can never be left behind).
struct Guard(File);

impl Guard {
    fn open(dir: &Path) -> Result<File, StateError> {
        let path = dir.join(GUARD);
        private_file().create(true).truncate(false).write(true).open(&path).map_err(StateError::io("opening", &path))
    }

    /// Held while the lock is read and replaced.
    fn exclusive(dir: &Path) -> Result<Guard, StateError> {
        let file = Self::open(dir)?;
        Self::wait(dir, || file.try_lock())?;
        Ok(Guard(file))
    }

    /// Held while a write checks that the lock is still its writer's.
    fn shared(dir: &Path) -> Result<Guard, StateError> {
        let file = Self::open(dir)?;
        Self::wait(dir, || file.try_lock_shared())?;
        Ok(Guard(file))
    }

    /// Takes the OS lock with `try_lock`, trying again for up to 10 s: it is held only
    /// for a read and a write, so a longer wait means a process stuck on the disk.
    fn wait(dir: &Path, mut try_lock: impl FnMut() -> Result<(), std::fs::TryLockError>) -> Result<(), StateError> {
        let deadline = std::time::Instant::now() + GUARD_WAIT;
        loop {
            match try_lock() {
                Ok(()) => return Ok(()),
                Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                Err(std::fs::TryLockError::WouldBlock) => {
                    let path = dir.join(GUARD);
                    let stuck = io::Error::other(format!(
                        "another process has held it for more than {} s, stuck writing state (a hung disk?); find it with `fuser {}`",
                        GUARD_WAIT.as_secs(),
                        path.display()
                    ));
                    return Err(StateError::io("locking", path)(stuck));
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(StateError::io("locking", dir.join(GUARD))(e)),
            }
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

fn read_lock(path: &Path) -> Result<Option<LockInfo>, StateError> {
    match fs::read(path) {
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StateError::io("reading", path)(e)),
    }
}

/// A record waiting to be written, and who waits for it.
struct Pending {
    /// The line; empty for a flush's marker, which writes nothing.
    bytes: Vec<u8>,
    ack: oneshot::Sender<Result<(), StateError>>,
    /// Staged: the records after it depend on it, so if it fails the journal stops.
    staged: bool,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("bytes", &self.bytes.len()).field("staged", &self.staged).finish()
    }
}

/// The journal file. Whatever records are waiting are written with one write and one
/// fsync (group commit): parallel steps share the cost of durability instead of queueing
/// for it. The caller that finds no write under way leads it, on the blocking pool, and
/// takes every record that arrives meanwhile; so no thread is kept per open journal (a
/// session keeps its journal open). A staged record waits for the next record, or a
/// flush, to lead its batch. Each batch is fenced: written only while the stack's lock
/// is still its writer's.
///
/// Records are written where the last one ended, over the zeros that follow it
/// ([`JOURNAL_SLACK`]); past them, the file grows. The writers open on one file share
/// where its records end ([`JournalFile`]), check it before each batch, and read it again
/// from the file if it does not hold. A commit empties the journal ([`empty_journal`]);
/// the next batch is written at its start.
#[derive(Debug)]
struct FileJournal {
    writer: Arc<JournalWriter>,
}

#[derive(Debug)]
struct JournalWriter {
    queue: Mutex<Queue>,
    file: Arc<JournalFile>,
    guard: File,
    dir: PathBuf,
    path: PathBuf,
    fence: Lock,
    written: Arc<AtomicU64>,
}

/// A journal file as this process has it open: one per file, shared by the writers
/// open on it, so that their batches follow one another (as appends did) and a commit
/// finds where they write.
#[derive(Debug)]
struct JournalFile {
    file: File,
    /// Where the records end, when known; held while a batch is written or the journal
    /// emptied.
    end: Mutex<Option<u64>>,
}

/// The journal files open in this process, by canonical path.
static JOURNAL_FILES: Mutex<Vec<(PathBuf, Weak<JournalFile>)>> = Mutex::new(Vec::new());

fn journal_files() -> std::sync::MutexGuard<'static, Vec<(PathBuf, Weak<JournalFile>)>> {
    JOURNAL_FILES.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl JournalFile {
    /// The journal file at `path` (created if missing), shared with the writers this
    /// process has open on it.
    fn open(path: &Path) -> Result<Arc<JournalFile>, StateError> {
        let file = private_file().create(true).read(true).write(true).open(path).map_err(StateError::io("opening", path))?;
        let canonical = fs::canonicalize(path).map_err(StateError::io("opening", path))?;
        let mut files = journal_files();
        // One the path no longer leads to (removed and made again) is left to its
        // writers; the path's file gets a view of its own.
        files.retain(|(p, f)| f.upgrade().is_some_and(|f| *p != canonical || same_file(&f.file, &file)));
        if let Some(shared) = files.iter().find(|(p, _)| *p == canonical).and_then(|(_, f)| f.upgrade()) {
            return Ok(shared);
        }
        let shared = Arc::new(JournalFile { file, end: Mutex::new(None) });
        files.push((canonical, Arc::downgrade(&shared)));
        Ok(shared)
    }

    /// The open journal file at `path`, if this process has one.
    fn find(path: &Path) -> Option<Arc<JournalFile>> {
        let canonical = fs::canonicalize(path).ok()?;
        journal_files().iter().find(|(p, _)| *p == canonical).and_then(|(_, f)| f.upgrade())
    }

    fn end(&self) -> std::sync::MutexGuard<'_, Option<u64>> {
        self.end.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where the records end, read from the file. A crash mid-write leaves a torn last
    /// line, which loading ignores, and may leave parts of its batch after zeros: both
    /// are cut off, so that the next record does not land before them and turn them
    /// into corruption. Then zeros are kept after the records again.
    fn scan(&self, written: &AtomicU64) -> io::Result<u64> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = &self.file;
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_end(&mut bytes)?;
        let end = records_end(&bytes) as u64;
        let mut len = bytes.len() as u64;
        if bytes[end as usize..].iter().any(|&b| b != 0) {
            self.file.set_len(end).and_then(|()| self.file.sync_all())?;
            len = end;
        }
        if len < end + JOURNAL_SLACK {
            write_zeros(&self.file, len, end + JOURNAL_SLACK - len).and_then(|()| self.file.sync_data())?;
            written.fetch_add(end + JOURNAL_SLACK - len, Ordering::Relaxed);
        }
        Ok(end)
    }

    /// Whether the records end at `end`: after a newline (or at the start), with a zero
    /// or the end of the file next. Anything else means the file was written or cut by
    /// someone who did not share this view (a store that reached it by another path).
    fn ends_at(&self, end: u64) -> bool {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = &self.file;
        let mut around = [0u8; 2];
        let (from, wanted) = if end == 0 { (0, 1) } else { (end - 1, 2) };
        let Ok(read) = file.seek(SeekFrom::Start(from)).and_then(|_| file.read(&mut around[..wanted])) else { return false };
        let around = &around[..read];
        let after_a_line = end == 0 || around.first() == Some(&b'\n');
        let next = if end == 0 { around.first() } else { around.get(1) };
        after_a_line && next.is_none_or(|&b| b == 0)
    }
}

/// Whether `a` and `b` are the same file (not just at the same path).
#[cfg(unix)]
fn same_file(a: &File, b: &File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (a.metadata(), b.metadata()) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// Whether `a` and `b` are the same file: elsewhere, taken to be so at the same path.
#[cfg(not(unix))]
fn same_file(_: &File, _: &File) -> bool {
    true
}

/// Empties the journal at `path`, whose records are in the snapshot now. When this
/// process has the file open, it keeps its zeros: the records are overwritten with zeros
/// or, after a large apply, the file is cut and padded again, and its writers go on from
/// the start. Otherwise the file is cut.
fn empty_journal(path: &Path, written: &AtomicU64) -> Result<(), StateError> {
    let Some(shared) = JournalFile::find(path) else {
        return match OpenOptions::new().write(true).open(path) {
            Ok(f) => f.set_len(0).and_then(|()| f.sync_all()).map_err(StateError::io("truncating", path)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StateError::io("opening", path)(e)),
        };
    };
    let mut end = shared.end();
    let file = &shared.file;
    let len = file.metadata().map_err(StateError::io("reading", path))?.len();
    // Records known to end within the zeros kept are overwritten, and the file keeps its
    // size and the zeros after them; otherwise the file is cut and padded again. Until
    // that succeeds, where the records end is unknown, and the next batch reads it.
    let zeros = match end.take() {
        Some(used) if used <= JOURNAL_SLACK && len >= JOURNAL_SLACK && shared.ends_at(used) => {
            write_zeros(file, 0, used).and_then(|()| file.sync_data()).map(|()| used)
        }
        _ => file.set_len(0).and_then(|()| write_zeros(file, 0, JOURNAL_SLACK)).and_then(|()| file.sync_all()).map(|()| JOURNAL_SLACK),
    };
    written.fetch_add(zeros.map_err(StateError::io("emptying", path))?, Ordering::Relaxed);
    *end = Some(0);
    Ok(())
}

/// Writes `count` zero bytes into `file` from `at`.
fn write_zeros(mut file: &File, at: u64, count: u64) -> io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    file.seek(SeekFrom::Start(at))?;
    io::copy(&mut io::repeat(0).take(count), &mut file).map(drop)
}

#[derive(Debug, Default)]
struct Queue {
    waiting: Vec<Pending>,
    /// A batch is being written: its leader takes what waits when it is done.
    writing: bool,
    /// Why the journal takes no more records (a failed write could not be taken back).
    stopped: Option<String>,
}

impl FileJournal {
    fn open(dir: PathBuf, lock: Lock, written: Arc<AtomicU64>) -> Result<Self, StateError> {
        let path = dir.join(JOURNAL);
        let existed = path.exists();
        let file = JournalFile::open(&path)?;
        // Found again, also when this process had it open: another may have written it
        // since. Held while scanning: no batch is written meanwhile.
        {
            let mut end = file.end();
            *end = Some(file.scan(&written).map_err(StateError::io("repairing", &path))?);
        }
        if !existed {
            fsync_dir(&dir)?;
        }
        let guard = Guard::open(&dir)?;
        let writer = JournalWriter { queue: Mutex::new(Queue::default()), file, guard, dir, path, fence: lock, written };
        Ok(FileJournal { writer: Arc::new(writer) })
    }
}

/// The lead of a journal's writes, moved into the task that writes. When the writes end
/// otherwise than with nothing left to write (the journal stopped, the task panicked, or
/// it never ran because the runtime is shutting down), the lead is given up here, the
/// records waiting are told why (none waits for ever), and the journal stops: a record
/// written after one of them, which may be staged, could describe a version that is not
/// on disk.
struct Lead {
    writer: Arc<JournalWriter>,
    /// The writes ended with nothing left to write, and gave up the lead themselves: a
    /// new lead may already be writing, and nothing is to be done here.
    finished: bool,
}

impl Drop for Lead {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let writer = &self.writer;
        let mut queue = writer.queue();
        queue.writing = false;
        let why = if std::thread::panicking() { "the journal writer panicked" } else { "the journal writer stopped" };
        let why = queue.stopped.get_or_insert_with(|| why.to_owned()).clone();
        for pending in queue.waiting.drain(..) {
            let _ = pending.ack.send(Err(writer.stopped_error(&why)));
        }
    }
}

impl JournalWriter {
    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn io_error(&self, e: &io::Error) -> StateError {
        StateError::io("writing", &self.path)(io::Error::new(e.kind(), e.to_string()))
    }

    fn stopped_error(&self, why: &str) -> StateError {
        self.io_error(&io::Error::other(why))
    }

    /// Writes batches until none waits, then gives up the lead and returns true; or
    /// until the journal stops, and returns false (then [`Lead`] answers the records
    /// still waiting). Run by the leader, on the blocking pool.
    fn write_waiting(&self) -> bool {
        loop {
            let batch = {
                let mut queue = self.queue();
                if queue.waiting.is_empty() {
                    queue.writing = false;
                    return true;
                }
                std::mem::take(&mut queue.waiting)
            };
            if let Err(stopped) = self.write_batch(batch) {
                self.queue().stopped = Some(stopped);
                return false;
            }
        }
    }

    /// Writes and syncs one batch and answers each of its records; an error when the
    /// journal can take no more.
    fn write_batch(&self, batch: Vec<Pending>) -> Result<(), String> {
        let mut buf = Vec::with_capacity(batch.iter().map(|p| p.bytes.len()).sum());
        for pending in &batch {
            buf.extend_from_slice(&pending.bytes);
        }
        if buf.is_empty() {
            // Flush markers alone: what they wait for was written before them.
            for pending in batch {
                let _ = pending.ack.send(Ok(()));
            }
            return Ok(());
        }
        let staged = batch.iter().any(|p| p.staged);
        let guard = &self.guard;
        // Fenced: a takeover (an exclusive lock of the guard) waits for this write, and
        // this write sees a takeover that came first.
        let fenced = Guard::wait(&self.dir, || guard.try_lock_shared())
            .and_then(|()| read_lock(&self.dir.join(LOCK)).and_then(|held| crate::store::check_stored(&self.fence, held.as_ref())));
        if let Err(e) = fenced {
            let _ = guard.unlock();
            // Each waiting record gets the error: the lock's own, or the I/O one.
            let message = e.to_string();
            let mut first = Some(e);
            for pending in batch {
                let e = first.take().unwrap_or_else(|| if self.fence.is_lost() { self.fence.lost_error() } else { self.stopped_error(&message) });
                let _ = pending.ack.send(Err(e));
            }
            return if staged { Err(format!("a staged record was not written: {message}")) } else { Ok(()) };
        }
        let shared = &self.file;
        let mut end = shared.end();
        let at = match *end {
            Some(at) if shared.ends_at(at) => Ok(at),
            _ => shared.scan(&self.written),
        };
        // Unknown until the batch is written or taken back.
        *end = None;
        let mut left_torn = false;
        let result = at.and_then(|at| {
            use std::io::{Seek, SeekFrom};
            let mut file = &shared.file;
            let result = file.seek(SeekFrom::Start(at)).and_then(|_| file.write_all(&buf)).and_then(|()| file.sync_data());
            // A partial batch is taken back with the zeros after it, so that later
            // records start on a clean line; before the guard is let go, after which the
            // file may be another holder's.
            *end = match &result {
                Ok(()) => Some(at + buf.len() as u64),
                Err(_) => shared.file.set_len(at).ok().map(|()| at),
            };
            left_torn = end.is_none();
            result
        });
        drop(end);
        let _ = guard.unlock();
        // If even that fails, stop: every later record would fail too.
        if left_torn {
            let stopped = "the journal could not be repaired after a failed write".to_owned();
            for pending in batch {
                let _ = pending.ack.send(Err(self.stopped_error(&stopped)));
            }
            return Err(stopped);
        }
        if result.is_ok() {
            self.written.fetch_add(buf.len() as u64, Ordering::Relaxed);
        }
        for pending in batch {
            let _ = pending.ack.send(result.as_ref().map(|_| ()).map_err(|e| self.io_error(e)));
        }
        match result {
            Err(e) if staged => Err(format!("a staged record was not written: {e}")),
            _ => Ok(()),
        }
    }
}

impl FileJournal {
    /// Queues `bytes`; leads the writes if `lead` and none is under way. `None` when
    /// there is nothing to wait for (a flush with nothing queued).
    fn enqueue(&self, bytes: Vec<u8>, lead: bool, staged: bool) -> Result<Option<oneshot::Receiver<Result<(), StateError>>>, StateError> {
        let (ack, done) = oneshot::channel();
        let lead = {
            let mut queue = self.writer.queue();
            if let Some(stopped) = &queue.stopped {
                return Err(self.writer.stopped_error(stopped));
            }
            if bytes.is_empty() && queue.waiting.is_empty() && !queue.writing {
                return Ok(None);
            }
            queue.waiting.push(Pending { bytes, ack, staged });
            lead && !std::mem::replace(&mut queue.writing, true)
        };
        if lead {
            let lead = Lead { writer: self.writer.clone(), finished: false };
            tokio::task::spawn_blocking(move || {
                let mut lead = lead; // The whole lead, dropped when the writes end.
                lead.finished = lead.writer.write_waiting();
            });
        }
        Ok(Some(done))
    }

    fn line(&self, record: &JournalRecord) -> Result<Vec<u8>, StateError> {
        // The lease's clock here; the writer checks the stored lock under the guard.
        self.writer.fence.check()?;
        let mut bytes = serde_json::to_vec(record).expect("journal records serialize");
        bytes.push(b'\n');
        Ok(bytes)
    }
}

/// Waits for a queued record's answer. A record dropped unanswered was never written:
/// its journal (at `path`) was closed first. Holds no reference to the journal, so that a
/// staged record's waiter does not keep it open.
async fn written(path: &Path, done: Option<oneshot::Receiver<Result<(), StateError>>>) -> Result<(), StateError> {
    match done {
        None => Ok(()),
        Some(done) => {
            let closed = || StateError::io("writing", path)(io::Error::other("the journal was closed before the record was written"));
            done.await.map_err(|_| closed())?
        }
    }
}

#[async_trait]
impl Journal for FileJournal {
    async fn record(&self, record: JournalRecord) -> Result<(), StateError> {
        let done = self.enqueue(self.line(&record)?, true, false)?;
        written(&self.writer.path, done).await
    }

    async fn stage(&self, record: JournalRecord) -> Result<Durable, StateError> {
        let done = self.enqueue(self.line(&record)?, false, true)?;
        let path = self.writer.path.clone();
        Ok(Box::pin(async move { written(&path, done).await }))
    }

    async fn flush(&self) -> Result<(), StateError> {
        let done = self.enqueue(Vec::new(), true, false)?;
        written(&self.writer.path, done).await
    }
}
