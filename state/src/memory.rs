use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::error::LockedError;
use crate::journal::{replay, Journal, JournalRecord};
use crate::store::{Lock, LockInfo, Store};
use crate::{StackState, StateError};

#[derive(Debug, Default)]
struct Stacks {
    snapshots: HashMap<String, StackState>,
    journals: HashMap<String, Vec<JournalRecord>>,
    locks: HashMap<String, LockInfo>,
    audit: HashMap<String, Vec<serde_json::Value>>,
}

/// State in memory, shared by clones: for tests and throwaway stacks.
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Stacks>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut Stacks) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[derive(Debug)]
struct MemoryJournal {
    store: MemoryStore,
    stack: String,
}

#[async_trait]
impl Journal for MemoryJournal {
    async fn record(&self, record: JournalRecord) -> Result<(), StateError> {
        self.store.with(|s| s.journals.entry(self.stack.clone()).or_default().push(record));
        Ok(())
    }
}

#[async_trait]
impl Store for MemoryStore {
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
            Some(holder) => Err(StateError::Locked(Box::new(LockedError { stack: stack.to_owned(), holder: holder.clone() }))),
            None => {
                let info = LockInfo::here(operation);
                s.locks.insert(stack.to_owned(), info.clone());
                Ok(Lock { stack: stack.to_owned(), info })
            }
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

    async fn lock_holder(&self, stack: &str) -> Result<Option<LockInfo>, StateError> {
        Ok(self.with(|s| s.locks.get(stack).cloned()))
    }

    async fn journal(&self, lock: &Lock) -> Result<Arc<dyn Journal>, StateError> {
        self.with(|s| crate::store::check_held(lock, s.locks.get(&lock.stack)))?;
        Ok(Arc::new(MemoryJournal { store: self.clone(), stack: lock.stack.clone() }))
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
