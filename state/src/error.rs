use std::fmt;
use std::path::PathBuf;

use crate::store::LockInfo;

/// Why state could not be read or written. Every variant leaves the stored state as it
/// was: Cairn never overwrites state it could not read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The snapshot is empty (a crash before the first write, or a truncation to zero).
    #[error("state file {path} is empty; it was left untouched. Restore {path}.bak if it exists, or delete the file to start the stack afresh (its resources will then be unknown to Cairn)")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The snapshot ends in the middle of its JSON.
    #[error("state file {path} is truncated (it ends at byte {len} in the middle of the JSON); it was left untouched. Restore the previous snapshot from {path}.bak")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The snapshot is not valid state JSON.
    #[error("state file {path} is corrupt ({detail}); it was left untouched. Restore the previous snapshot from {path}.bak, or fix the file by hand")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser said.
        detail: String,
    },
    /// The snapshot was written by a newer Cairn.
    #[error("state file {path} has format version {found}, but this Cairn reads versions up to {supported}; upgrade Cairn to use this stack. The file was left untouched")]
    TooNew {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u64,
        /// The highest this build reads.
        supported: u32,
    },
    /// A journal record in the middle of the journal is unreadable.
    #[error("journal {path} is corrupt at line {line} ({detail}); it was left untouched. Move it aside to load the last snapshot (changes since it will be unknown to Cairn until a refresh)")]
    JournalCorrupt {
        /// The file.
        path: PathBuf,
        /// The 1-based line.
        line: usize,
        /// What the parser said.
        detail: String,
    },
    /// Another process holds the stack's lock.
    #[error("{0}")]
    Locked(Box<LockedError>),
    /// Someone else wrote the state since it was read (a lost update was prevented).
    #[error("the state of stack '{stack}' was changed by someone else since it was read ({detail}); nothing was written. Run the command again")]
    Conflict {
        /// The stack.
        stack: String,
        /// What differed.
        detail: String,
    },
    /// A state location that cannot be understood.
    #[error("unsupported state location '{0}': use a directory path, file://PATH or s3://BUCKET/PREFIX")]
    BadLocation(String),
    /// A stack name that cannot name a stack.
    #[error("'{0}' cannot name a stack: use letters, digits, '.', '_' and '-', not starting with '.'")]
    BadStackName(String),
    /// A write by a process that no longer holds the stack's lock: it was cleared
    /// (`state unlock --force`) or taken over once its lease expired. The holder writes
    /// nothing more.
    #[error("this process no longer holds the lock of stack '{0}' (it was taken over after its lease expired, or cleared with `state unlock`); it stopped writing, and nothing more was written. Run the command again")]
    LockLost(String),
    /// A write by a holder that could not renew its lease in time: another process may
    /// take the stack over now, so this one stops writing.
    #[error("the lease on stack '{stack}' ran out before this process could renew it (a lease lasts {} s; renewals failed or were starved): it stopped writing, and nothing more was written. Run the command again", lease.as_secs_f64())]
    LeaseExpired {
        /// The stack.
        stack: String,
        /// The lease's length.
        lease: std::time::Duration,
    },
    /// `state unlock` without `--force` on a lock whose lease is live.
    #[error("stack '{stack}' is locked by {}@{} (pid {}) for '{}', and {}: its holder renewed it recently, so it is most likely still working. Stop it, or wait: if it died, its lease ends by itself and the next command takes the stack over. `state unlock --force` clears it anyway; its holder then stops at its next write or renewal", holder.user, holder.host, holder.pid, holder.operation, holder.lease().describe(holder.pid))]
    LeaseLive {
        /// The stack.
        stack: String,
        /// Who holds it.
        holder: Box<LockInfo>,
    },
    /// A lease length that cannot be used.
    #[error("{0}")]
    BadLease(String),
    /// An `s3://` location in a build without the `s3` feature.
    #[error("state location '{0}' is in S3, but this build has no S3 support: enable the `s3` feature of cairn-state")]
    NoS3(String),
    /// A file system error.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done ("writing", "reading", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An error from a remote store's service.
    #[error("{0}")]
    Remote(String),
}

/// The details of a lock held by someone else.
#[derive(Debug)]
pub struct LockedError {
    /// The stack.
    pub stack: String,
    /// Who holds it.
    pub holder: LockInfo,
}

impl fmt::Display for LockedError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let h = &self.holder;
        let lease = h.lease();
        let what_to_do = match lease {
            crate::Lease::Live { holder_gone: false, .. } => "Wait for it to finish, or for its lease to expire if that process is gone".to_owned(),
            crate::Lease::Live { holder_gone: true, .. } => format!("Wait for the lease to expire, or clear it now with `state unlock --stack {}`", self.stack),
            _ => format!("If that process is gone, clear the stale lock with `state unlock --stack {}` (in code: cairn_state::unlock_stale)", self.stack),
        };
        write!(
            f,
            "stack '{}' is locked by {}@{} (pid {}) since {} for '{}'; {}. {what_to_do}",
            self.stack,
            h.user,
            h.host,
            h.pid,
            h.since,
            h.operation,
            lease.describe(h.pid)
        )
    }
}

impl StateError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> StateError {
        let path = path.into();
        move |source| StateError::Io { action, path, source }
    }
}
