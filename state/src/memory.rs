use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::error::LockedError;
use crate::journal::{replay, Journal, JournalRecord};
use crate::store::{LockInfo, Store};
use crate::Lock;
use crate::{StackState, StateError};

#[derive(Debug, Default)]
struct Stacks {
    snapshots: HashMap<String, StackState>,
    journals: HashMap<String, Vec<JournalRecord>>,
    locks: HashMap<String, LockInfo>,
    audit: HashMap<String, Vec<serde_json::Value>>,
}

/// State in memory, shared by clones: for tests and throwaway stacks.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    inner: Arc<Mutex<Stacks>>,
    lease: std::time::Duration,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore { inner: Arc::default(), lease: crate::DEFAULT_LEASE }
    }
}

impl MemoryStore {
    /// An empty store, whose locks have leases of [`DEFAULT_LEASE`](crate::DEFAULT_LEASE).
    pub fn new() -> Self {
        Self::default()
    }

    /// A store holding `state` as its stack's snapshot, as it is (lineage, serial,
    /// resources): to open a session on a state made elsewhere, such as a test's.
    pub fn holding(state: StackState) -> Self {
        let store = Self::default();
        store.with(|s| s.snapshots.insert(state.stack.clone(), state));
        store
    }

    /// The same store, giving its locks leases of `lease`.
    pub fn with_lease(mut self, lease: std::time::Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Ends the stack's lease now, as if its holder had stopped renewing it (a process
    /// that hung or died): the next [`Store::lock`] takes it over. For failover tests.
    pub fn expire_lease(&self, stack: &str) {
        self.with(|s| {
            if let Some(held) = s.locks.get_mut(stack) {
                held.expires_ms = 1;
            }
        });
    }

    fn with<T>(&self, f: impl FnOnce(&mut Stacks) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[derive(Debug)]
struct MemoryJournal {
    store: MemoryStore,
    lock: Lock,
}

#[async_trait]
impl Journal for MemoryJournal {
    async fn record(&self, record: JournalRecord) -> Result<(), StateError> {
        self.store.with(|s| {
            crate::store::check_held(&self.lock, s.locks.get(&self.lock.stack))?;
            s.journals.entry(self.lock.stack.clone()).or_default().push(record);
            Ok(())
        })
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn journal_outlives_commit(&self) -> bool {
        // The file is emptied in place, and each record checks the lock.
        true
    }

    fn location(&self) -> String {
        "memory://".into()
    }

    async fn load(&self, stack: &str) -> Result<Option<StackState>, StateError> {
        Ok(self.with(|s| {
            let mut state = s.snapshots.get(stack)?.clone();
            replay(&mut state, s.journals.get(stack).cloned().unwrap_or_default());
            state.sort_resources();
            Some(state)
        }))
    }

    async fn lock(&self, stack: &str, operation: &str) -> Result<Lock, StateError> {
        self.with(|s| match s.locks.get(stack) {
            Some(holder) if !holder.lease().is_expired() => Err(StateError::Locked(Box::new(LockedError { stack: stack.to_owned(), holder: holder.clone() }))),
            previous => {
                let info = LockInfo::here(operation, self.lease).succeeding(previous);
                s.locks.insert(stack.to_owned(), info.clone());
                Ok(Lock::new(stack, info, self.lease, tokio::time::Instant::now()))
            }
        })
    }

    async fn renew(&self, lock: &Lock) -> Result<(), StateError> {
        let started = tokio::time::Instant::now();
        self.with(|s| {
            crate::store::check_stored(lock, s.locks.get(&lock.stack))?;
            let info = lock.renewed_info();
            let expires_ms = info.expires_ms;
            s.locks.insert(lock.stack.clone(), info);
            lock.renewed(started, expires_ms);
            Ok(())
        })
    }

    async fn unlock(&self, lock: Lock) -> Result<(), StateError> {
        self.with(|s| {
            if s.locks.get(&lock.stack).is_some_and(|l| l.token == lock.info.token) {
                s.locks.remove(&lock.stack);
            }
        });
        Ok(())
    }

    async fn force_unlock(&self, stack: &str) -> Result<Option<LockInfo>, StateError> {
        Ok(self.with(|s| s.locks.remove(stack)))
    }

    async fn break_lock(&self, stack: &str, token: &str) -> Result<Option<LockInfo>, StateError> {
        Ok(self.with(|s| match s.locks.get(stack) {
            Some(held) if held.token == token => s.locks.remove(stack),
            _ => None,
        }))
    }

    async fn stacks(&self) -> Result<Vec<String>, StateError> {
        let mut stacks: Vec<String> = self.with(|s| s.snapshots.keys().cloned().collect());
        stacks.sort();
        Ok(stacks)
    }

    async fn lock_holder(&self, stack: &str) -> Result<Option<LockInfo>, StateError> {
        Ok(self.with(|s| s.locks.get(stack).cloned()))
    }

    async fn journal(&self, lock: &Lock) -> Result<Arc<dyn Journal>, StateError> {
        self.with(|s| crate::store::check_held(lock, s.locks.get(&lock.stack)))?;
        Ok(Arc::new(MemoryJournal { store: self.clone(), lock: lock.clone() }))
    }

    async fn commit(&self, lock: &Lock, state: &StackState) -> Result<(), StateError> {
        self.with(|s| {
            crate::store::check_held(lock, s.locks.get(&lock.stack))?;
            if let Some(current) = s.snapshots.get(&lock.stack) {
                crate::store::check_follows(&lock.stack, (&current.lineage, current.serial), state)?;
            }
            s.snapshots.insert(lock.stack.clone(), state.clone());
            s.journals.remove(&lock.stack);
            Ok(())
        })
    }

    async fn audit(&self, stack: &str, entries: &[serde_json::Value]) -> Result<(), StateError> {
        self.with(|s| s.audit.entry(stack.to_owned()).or_default().extend_from_slice(entries));
        Ok(())
    }

    async fn history(&self, stack: &str) -> Result<Vec<serde_json::Value>, StateError> {
        Ok(self.with(|s| s.audit.get(stack).cloned().unwrap_or_default()))
    }
}
