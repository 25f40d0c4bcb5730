//! Durable state: per service the weights, the rollback point and the
//! operation in flight; the version counter, the operation id counter,
//! the change history and the endpoints of `registered` fleets, kept
//! across restarts (even `kill -9` during a change).
//!
//! - [`PersistedState`]: everything teal must not forget, as one value.
//! - [`StateStore`]: where it is kept, with compare-and-swap saves so a
//!   distributed backend (etcd, with watches) can replace the file without
//!   touching the rollout logic.
//! - [`file::FileStore`]: one JSON file, replaced atomically and durably.
//! - [`etcd::EtcdStore`]: one key in etcd, shared by replicas, with a
//!   watch that keeps each replica up to date.
//! - `memory::MemoryStore`: in memory, for tests of other modules.
//! - `StoreSpec`: `--store file://PATH` or `--store etcd://...`.
//!
//! After a restart teal serves the last state a `save` returned `Ok` for,
//! never an older one, so version numbers never go backwards.

pub mod etcd;
pub(crate) mod file;
pub(crate) mod memory;
mod spec;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::rollout::machine::Record;
use crate::rollout::serde_time;
use crate::rollout::{HistoryEntry, Split, Version};

pub use etcd::{EtcdOptions, EtcdStore};
pub use file::{FileStore, SaveStep};
pub(crate) use memory::MemoryStore;
pub(crate) use spec::StoreSpec;

/// How many history entries are kept per service; older ones are dropped.
pub(crate) const HISTORY_LIMIT: usize = 100;

/// Everything teal keeps across restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersistedState {
    /// The last fleet-wide version number used; the next one is larger.
    pub version_seq: u64,
    /// The version last committed, so a restart with the same content
    /// serves the same version; `None` before the first commit. Stored as
    /// its string, empty for none.
    #[serde(default, with = "crate::rollout::version::empty_is_none")]
    pub version: Option<Version>,
    /// Per service, by name.
    pub services: BTreeMap<String, ServiceState>,
    /// Per service, oldest first, at most `HISTORY_LIMIT` entries each.
    pub history: BTreeMap<String, Vec<HistoryEntry>>,
    /// The id of the last operation started; the next one is larger.
    /// Saved when an operation starts, so ids are never reused.
    pub next_operation_id: u64,
    /// The version label of each type of each group served at the last
    /// commit, with its content: after a restart teal serves unchanged
    /// types under the labels proxies hold, so it sends them nothing new.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: crate::xds::snapshot::TypeLabels,
    /// Endpoints of `endpoints: registered` fleets and the log of their
    /// changes. Absent from state files written before teal had them.
    #[serde(
        default,
        skip_serializing_if = "crate::rollout::registration::Registrations::is_empty"
    )]
    pub registered: crate::rollout::registration::Registrations,
    /// The digest of the checks (`crate::rollout::checks::digest`) of the config
    /// the state was last committed with: replicas must agree on them as
    /// on the resources, which the version's digest covers. `None` in
    /// states saved before teal kept it; then nothing is compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks_digest: Option<String>,
    /// Proxies that operations do not wait for, by node id: fleet-wide,
    /// changed only by the leader, applied by whichever replica leads.
    /// Absent from states saved before cordons were kept here (they were
    /// in a file of their own, `cordons.json`, which is read once and
    /// merged in: `crate::xds::cordon::Cordons::open`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub cordons: BTreeMap<String, crate::xds::cordon::Cordon>,
}

/// What teal keeps about one service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceState {
    /// The current split.
    pub weights: Split,
    /// Where `teal rollback` goes: the confirmed split in effect before
    /// the most recent operation whose changes are still in effect
    /// (`crate::rollout::plan::rollback_point`).
    #[serde(default)]
    pub rollback_to: Option<Split>,
    /// Fleets retired: no weight, no endpoints.
    pub retired: BTreeSet<String>,
    /// The operation running on the service, saved when it starts and
    /// with each of its commits, so that a restart resolves it.
    #[serde(default)]
    pub operation: Option<Record>,
    /// Since when more than one fleet has had endpoints (stored as unix
    /// milliseconds); `None` when only one has.
    #[serde(
        rename = "both_fleets_since_unix_ms",
        with = "serde_time::opt_unix_millis"
    )]
    pub both_fleets_since: Option<SystemTime>,
}

impl PersistedState {
    /// Appends `entry` to `service`'s history, dropping the oldest entries
    /// beyond `HISTORY_LIMIT`.
    pub fn record(&mut self, service: &str, entry: HistoryEntry) {
        let history = self.history.entry(service.to_owned()).or_default();
        history.push(entry);
        let excess = history.len().saturating_sub(HISTORY_LIMIT);
        history.drain(..excess);
    }

    /// `service`'s history, newest first.
    pub(crate) fn history_newest_first(&self, service: &str) -> Vec<HistoryEntry> {
        self.history
            .get(service)
            .map(|h| h.iter().rev().cloned().collect())
            .unwrap_or_default()
    }
}

/// A store's revision of the state: it grows by one with every save.
/// `Revision(0)` means nothing has been stored yet.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Revision(pub u64);

impl Revision {
    /// The revision after this one; a stored revision at the largest
    /// number (only a hostile or corrupt file has one) cannot be followed.
    pub(crate) fn next(self) -> Result<Revision, StateError> {
        self.0
            .checked_add(1)
            .map(Revision)
            .ok_or(StateError::Exhausted {
                counter: "revision",
            })
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// A stored state and the revision it was stored at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stored {
    /// The state.
    pub state: PersistedState,
    /// Its revision; pass it to [`StateStore::save`] to replace it.
    pub revision: Revision,
}

/// Why the state could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// Reading or writing failed; for a save, the old state is still the
    /// stored one.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The stored state cannot be read back; teal refuses to start from
    /// an empty state instead.
    #[error("{path}: corrupt state: {reason}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The stored state was written by a newer teal, in a format this one
    /// does not know; teal refuses to start rather than lose what it
    /// cannot read. Run the newer teal (or move the state away).
    #[error(
        "{path}: written by a newer teal (state format {found}; this teal reads format {supported})"
    )]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// The format in the file.
        found: u32,
        /// The newest format this teal reads.
        supported: u32,
    },
    /// Someone else saved since the state was loaded; load again and retry.
    #[error("state changed underneath: expected revision {expected}, found {found}")]
    Conflict {
        /// The revision the save was based on.
        expected: Revision,
        /// The revision actually stored.
        found: Revision,
    },
    /// A counter in the stored state (the revision, the version number,
    /// the operation id) is at its largest value: teal refuses to wrap it
    /// around, which would make versions go backwards.
    #[error("the state's {counter} counter is at its largest value; it cannot go on")]
    Exhausted {
        /// Which counter.
        counter: &'static str,
    },
    /// Another process holds the state directory.
    #[error("{path}: locked by another teal process")]
    Locked {
        /// The lock file.
        path: PathBuf,
    },
    /// The store cannot be reached (etcd down, partitioned away, or too
    /// slow to answer); nothing was written. teal keeps serving what it
    /// serves and refuses changes until the store is back.
    #[error("store unavailable: {store}: {reason}")]
    Unavailable {
        /// Which store.
        store: String,
        /// What failed.
        reason: String,
    },
    /// The store answered but refused the request (permissions, a request
    /// over its size limit, bad credentials).
    #[error("{store} refused: {reason}")]
    Refused {
        /// Which store.
        store: String,
        /// Its answer.
        reason: String,
    },
    /// This replica does not hold the leadership the write was fenced on
    /// (its lease ran out, another replica leads, or it never led): the
    /// write did not land. Only the leader writes the shared state, so a
    /// replica that was cut off, paused or deposed can never overwrite
    /// what the new leader saved; it hands its operations over instead.
    #[error("{store}: this replica does not lead; its write was fenced off")]
    NotLeading {
        /// Which store.
        store: String,
    },
    /// A stored value (or one about to be stored) is over the size limit.
    #[error("{path}: {size} bytes, over the limit of {limit} (--store-max-value-bytes)")]
    TooLarge {
        /// Where the value is kept: the store and the key, as in
        /// `etcd://HOST:PORT/PREFIXstate`.
        path: PathBuf,
        /// Its size in bytes.
        size: usize,
        /// The limit in bytes (`--store-max-value-bytes`).
        limit: usize,
    },
}

/// A save that failed, as the admin API reports it: an unreachable store
/// is its own kind, so the CLI says "store unavailable" and exits 1.
impl From<StateError> for crate::rollout::RolloutError {
    fn from(e: StateError) -> Self {
        match e {
            StateError::Unavailable { .. } => {
                crate::rollout::RolloutError::StoreUnavailable(e.to_string())
            }
            // No longer leading is, for whoever asked, the store being
            // unavailable to this replica: no change can land here now.
            StateError::NotLeading { .. } => {
                crate::rollout::RolloutError::StoreUnavailable(format!("store unavailable: {e}"))
            }
            e => crate::rollout::RolloutError::Store(e.to_string()),
        }
    }
}

impl StateError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> StateError {
        StateError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Where [`PersistedState`] is kept.
///
/// Saves are compare-and-swap on the [`Revision`], so several replicas
/// can share one store: a replica whose save fails with
/// [`StateError::Conflict`] reloads, and learns of other replicas' saves
/// through [`watch`](StateStore::watch).
#[tonic::async_trait]
pub trait StateStore: Send + Sync + 'static {
    /// The stored state, or `None` if nothing was ever saved. A stored
    /// state that cannot be read is an error, never `None`.
    async fn load(&self) -> Result<Option<Stored>, StateError>;
    /// Writes `state` if the stored revision is still `expected`
    /// (compare-and-swap); returns the new revision. When this returns
    /// `Ok`, the state survives a crash.
    async fn save(
        &self,
        state: &PersistedState,
        expected: Revision,
    ) -> Result<Revision, StateError>;
    /// Changes written by other replicas; `None` for single-process stores.
    fn watch(&self) -> Option<tokio::sync::watch::Receiver<Option<Stored>>>;
    /// Where the state is kept, for logs.
    fn describe(&self) -> String;
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
