use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Journal, Lock, StackState, StateError};

/// Who holds a stack's lock, for what, and since when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// The operation (`up`, `destroy`, `refresh`, `watch`, ...).
    pub operation: String,
    /// The user name.
    pub user: String,
    /// The host name.
    pub host: String,
    /// The process id.
    pub pid: u32,
    /// When it was taken, UTC, `YYYY-MM-DDTHH:MM:SSZ`.
    pub since: String,
    /// A unique token, so a holder only ever releases its own lock.
    pub token: String,
    /// How many times the stack's lease was taken over from a holder whose lease
    /// expired: 1 for a lock taken on a free stack.
    #[serde(default)]
    pub generation: u64,
    /// When the lease ends unless the holder renews it, in milliseconds since the
    /// epoch. 0 for a lock without a lease (written by a Cairn before leases): it is
    /// held until `state unlock`.
    #[serde(default)]
    pub expires_ms: u64,
}

impl LockInfo {
    /// Describes this process taking a lock for `operation`, with a lease of `lease`
    /// from now.
    pub fn here(operation: &str, lease: std::time::Duration) -> Self {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        LockInfo {
            operation: operation.to_owned(),
            user: std::env::var("USER").or_else(|_| std::env::var("USERNAME")).unwrap_or_else(|_| "unknown".into()),
            host: hostname(),
            pid: std::process::id(),
            since: format_utc(now.as_secs()),
            token: crate::model::new_lineage(),
            generation: 1,
            expires_ms: crate::lease::expiry_from_now(lease),
        }
    }

    /// A holder that could not be read: `why` says what happened.
    pub(crate) fn unknown(why: &str) -> Self {
        LockInfo {
            operation: format!("unknown ({why})"),
            user: "unknown".into(),
            host: "unknown".into(),
            pid: 0,
            since: "unknown".into(),
            token: String::new(),
            generation: 0,
            expires_ms: 0,
        }
    }

    /// The lock that takes over from `previous` (absent, or an expired lease): the next
    /// generation.
    pub(crate) fn succeeding(mut self, previous: Option<&LockInfo>) -> Self {
        self.generation = previous.map_or(1, |p| p.generation + 1);
        self
    }

    /// What this lock's lease is now: live, expired, held by a process that is gone, or
    /// without a lease.
    pub fn lease(&self) -> crate::Lease {
        crate::lease::Lease::of(self)
    }
}

/// This host's name: the kernel's (what gethostname(2) says) where it can be read,
/// so that every process of a host agrees, whatever its environment.
pub(crate) fn hostname() -> String {
    let file = |path: &str| std::fs::read_to_string(path).ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
    file("/proc/sys/kernel/hostname")
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .or_else(|| file("/etc/hostname"))
        .unwrap_or_else(|| "localhost".into())
}

/// Checks that `stack` can name a stack: letters, digits, `.`, `_` and `-`, not
/// starting with `.`. Stores use the name as a directory or key prefix.
pub fn check_stack_name(stack: &str) -> Result<(), StateError> {
    let ok = !stack.is_empty()
        && !stack.starts_with('.')
        && stack.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(StateError::BadStackName(stack.to_owned()))
    }
}

/// Refuses to replace the stored snapshot, of `(lineage, serial)`, with `next` unless
/// `next` follows it: same lineage, a higher serial. What every store's commit checks,
/// so no update is lost.
pub(crate) fn check_follows(stack: &str, (lineage, serial): (&str, u64), next: &StackState) -> Result<(), StateError> {
    if lineage != next.lineage {
        return Err(StateError::Conflict { stack: stack.to_owned(), detail: format!("stored lineage {lineage} is not {}", next.lineage) });
    }
    if serial >= next.serial {
        return Err(StateError::Conflict { stack: stack.to_owned(), detail: format!("stored serial {serial} is not older than {}", next.serial) });
    }
    Ok(())
}

/// Refuses a write unless `held` (the lock as stored now) is `lock`'s and its lease
/// has not run out by this process's own clock. A lock found taken by someone else is
/// marked lost, so every later write of its holder is refused at once.
pub(crate) fn check_held(lock: &Lock, held: Option<&LockInfo>) -> Result<(), StateError> {
    check_stored(lock, held)?;
    lock.check()
}

/// The half of [`check_held`] that reads no clock: `held` is `lock`'s, and `lock` was
/// not found lost; if not, it is marked lost. What a renewal checks (a late renewal is
/// what makes a holder writable again), and threads outside the runtime, whose clock
/// (paused in tests) they cannot see.
pub(crate) fn check_stored(lock: &Lock, held: Option<&LockInfo>) -> Result<(), StateError> {
    match held {
        Some(h) if h.token == lock.info.token && !lock.is_lost() => Ok(()),
        _ => {
            lock.mark_lost();
            Err(lock.lost_error())
        }
    }
}

/// Removes the stack's lock if its lease is not live (expired, no lease, or held by a
/// process on this host that is gone), or whatever it is with `force`. A live lease is
/// refused with [`StateError::LeaseLive`]: its holder renewed it recently, and breaking
/// its lock would only stop it (its next write is refused). Only the lock read here is
/// removed: one taken over meanwhile is left alone. Returns the lock removed.
pub async fn unlock_stale(store: &dyn Store, stack: &str, force: bool) -> Result<Option<LockInfo>, StateError> {
    let Some(held) = store.lock_holder(stack).await? else { return Ok(None) };
    if !force && matches!(held.lease(), crate::Lease::Live { holder_gone: false, .. }) {
        return Err(StateError::LeaseLive { stack: stack.to_owned(), holder: Box::new(held) });
    }
    store.break_lock(stack, &held.token).await
}

/// Seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Where stacks' state lives. Reads need no lock; every write needs the stack's [`Lock`].
///
/// Implementations: [`FileStore`](crate::FileStore) (the default, `.cairn/`),
/// [`MemoryStore`](crate::MemoryStore), and `S3Store` (feature `s3`).
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Where it is, as a location string (`file:///...`, `s3://...`).
    fn location(&self) -> String;

    /// The stack's state: the last snapshot with its journal replayed, begins without an
    /// end as [`StackState::pending`]. `None` if the stack was never written.
    async fn load(&self, stack: &str) -> Result<Option<StackState>, StateError>;

    /// Takes the stack's lock, or fails at once with [`StateError::Locked`] while
    /// another holder's lease is live. A lock whose lease expired is taken over (the
    /// next generation): its old holder's writes are refused from then on.
    async fn lock(&self, stack: &str, operation: &str) -> Result<Lock, StateError>;

    /// Extends the lease of `lock` by its full duration from now. Fails with
    /// [`StateError::LockLost`] if the lock was taken over or cleared meanwhile, and
    /// marks `lock` lost. The holder calls it every third of the lease
    /// ([`Lock::renew_every`]); `cairn_sdk`'s sessions do so on their own.
    async fn renew(&self, lock: &Lock) -> Result<(), StateError>;

    /// Releases a lock this process holds.
    async fn unlock(&self, lock: Lock) -> Result<(), StateError>;

    /// Removes the stack's lock whoever holds it, live lease or not; returns what it
    /// was. `state unlock` calls it through [`unlock_stale`], which refuses a live lease
    /// unless forced.
    async fn force_unlock(&self, stack: &str) -> Result<Option<LockInfo>, StateError>;

    /// Removes the stack's lock if it is still the one with `token` (as read just
    /// before); returns it, or `None` if the lock changed meanwhile (a standby took it
    /// over) and was left alone. [`unlock_stale`] uses it. The default is
    /// [`Store::force_unlock`] after a check, which a lock taken in between can slip
    /// through: stores override it with an atomic check.
    async fn break_lock(&self, stack: &str, token: &str) -> Result<Option<LockInfo>, StateError> {
        match self.lock_holder(stack).await? {
            Some(held) if held.token == token => self.force_unlock(stack).await,
            _ => Ok(None),
        }
    }

    /// The stacks that have state here, sorted: `watch --all-stacks` watches them.
    async fn stacks(&self) -> Result<Vec<String>, StateError>;

    /// Who holds the stack's lock, if anyone.
    async fn lock_holder(&self, stack: &str) -> Result<Option<LockInfo>, StateError>;

    /// The journal of the locked stack, for an apply to record its steps.
    async fn journal(&self, lock: &Lock) -> Result<Arc<dyn Journal>, StateError>;

    /// Whether a journal stays right to write to after a [`Store::commit`] (which
    /// empties the journal): then a session keeps it open. `false` unless a store says
    /// so; S3's is reopened, as it numbers its records from what it finds when opened.
    fn journal_outlives_commit(&self) -> bool {
        false
    }

    /// Writes `state` as the new snapshot and clears the journal. Refuses (with
    /// [`StateError::Conflict`]) if the stored snapshot is not the one `state` follows.
    async fn commit(&self, lock: &Lock, state: &StackState) -> Result<(), StateError>;

    /// Appends entries to the stack's audit log, durably, in one write: an event storm
    /// records a batch per apply, not a sync per event.
    async fn audit(&self, stack: &str, entries: &[serde_json::Value]) -> Result<(), StateError>;

    /// The stack's audit log, oldest first.
    async fn history(&self, stack: &str) -> Result<Vec<serde_json::Value>, StateError>;

    /// Bytes written so far by this store (snapshots, journal, audit): for benchmarks.
    fn bytes_written(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_utc(951_827_696), "2000-02-29T12:34:56Z");
        assert_eq!(format_utc(1_795_305_600), "2026-11-22T00:00:00Z");
    }
}
