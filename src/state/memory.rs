//! [`MemoryStore`]: the state in memory, with the same compare-and-swap
//! semantics as the durable stores, for tests of other modules.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::watch;

use super::{PersistedState, Revision, StateError, StateStore, Stored};

/// State in memory. Clones share the same state, like replicas sharing a
/// distributed store.
#[derive(Clone, Debug)]
pub(crate) struct MemoryStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    stored: Mutex<Option<Stored>>,
    /// Every save is published here.
    changes: watch::Sender<Option<Stored>>,
    /// Whether [`StateStore::watch`] offers `changes`.
    watchable: bool,
    /// Makes saves fail, to test what callers do then.
    failing: AtomicBool,
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store whose `watch` is `None`, like a single-process store.
    pub(crate) fn new() -> MemoryStore {
        MemoryStore::build(None, false)
    }

    /// An empty store whose `watch` reports every save, like a
    /// distributed store (clones act as the other replicas).
    #[cfg(test)]
    pub(crate) fn watchable() -> MemoryStore {
        MemoryStore::build(None, true)
    }

    fn build(stored: Option<Stored>, watchable: bool) -> MemoryStore {
        let (changes, _) = watch::channel(stored.clone());
        MemoryStore {
            shared: Arc::new(Shared {
                stored: Mutex::new(stored),
                changes,
                watchable,
                failing: AtomicBool::new(false),
            }),
        }
    }

    /// While `fail` is set, every save fails with [`StateError::Io`] and
    /// changes nothing.
    #[cfg(test)]
    pub(crate) fn fail_saves(&self, fail: bool) {
        self.shared.failing.store(fail, Ordering::SeqCst);
    }

    /// The stored state, without going through the async trait.
    pub(crate) fn current(&self) -> Option<Stored> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Stored>> {
        self.shared
            .stored
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

#[tonic::async_trait]
impl StateStore for MemoryStore {
    async fn load(&self) -> Result<Option<Stored>, StateError> {
        Ok(self.current())
    }

    async fn save(
        &self,
        state: &PersistedState,
        expected: Revision,
    ) -> Result<Revision, StateError> {
        let mut stored = self.lock();
        if self.shared.failing.load(Ordering::SeqCst) {
            return Err(StateError::io(
                "memory",
                std::io::Error::other("saves are set to fail"),
            ));
        }
        let found = stored.as_ref().map_or(Revision(0), |s| s.revision);
        if found != expected {
            return Err(StateError::Conflict { expected, found });
        }
        let next = found.next()?;
        let new = Stored {
            state: state.clone(),
            revision: next,
        };
        *stored = Some(new.clone());
        self.shared.changes.send_replace(Some(new));
        Ok(next)
    }

    fn watch(&self) -> Option<watch::Receiver<Option<Stored>>> {
        self.shared
            .watchable
            .then(|| self.shared.changes.subscribe())
    }

    fn describe(&self) -> String {
        "memory".to_owned()
    }
}
