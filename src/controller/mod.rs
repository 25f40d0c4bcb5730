//! The controller: runs rollouts against the real world.
//!
//! One task (the driver) owns everything that decides what teal serves:
//! the config, the durable state, and the snapshot writer. Admin calls
//! reach it as commands through the cloneable [`Controller`] handle,
//! which implements the admin API's [`Backend`]. The driver feeds each
//! running [`Rollout`](crate::rollout::machine::Rollout) the proxies'
//! state (from the [`ProxyRegistry`]), check results and the clock, and
//! carries out what it asks:
//!
//! - **Commit** builds the new snapshot (validating it whole), saves the
//!   new state durably, and only then serves the snapshot. A crash between
//!   the two serves the saved state on restart, so teal never serves an
//!   older state than it committed, and version numbers never go back.
//! - **RunChecks** runs the service's checks in a task of its own.
//!
//! Versions are `{seq}-{digest}`: a sequence number kept in the state
//! store and a digest of the content, so a restart with the same state
//! serves the very same version string.

mod driver;
mod views;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::admin::Metrics;
use crate::config::Config;
use crate::resources::ResourceType;
use crate::rollout::{
    Backend, CheckResult, HistoryEntry, Operation, Progress, RolloutError, StatusView,
};
use crate::shutdown::Shutdown;
use crate::snapshot::{BuildError, Snapshot};
use crate::snapshot_store::{SnapshotReader, SnapshotWriter};
use crate::state::{PersistedState, Revision, StateError, StateStore};
use crate::xds::{ProxyRegistry, ProxyStatus};

use driver::Driver;
pub use views::proxy_views;

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The state store could not be read.
    #[error("cannot load state: {0}")]
    Load(#[from] StateError),
    /// The first snapshot could not be built.
    #[error("cannot build the first snapshot: {0}")]
    Build(#[from] BuildError),
}

/// A request to the driver.
enum Command {
    Start {
        op: Operation,
        actor: String,
        reply: oneshot::Sender<Result<watch::Receiver<Progress>, RolloutError>>,
    },
    Follow {
        id: u64,
        reply: oneshot::Sender<Result<watch::Receiver<Progress>, RolloutError>>,
    },
    Abort {
        id: u64,
        actor: String,
        reply: oneshot::Sender<Result<(), RolloutError>>,
    },
    Status {
        service: Option<String>,
        reply: oneshot::Sender<Result<StatusView, RolloutError>>,
    },
    History {
        service: String,
        reply: oneshot::Sender<Result<Vec<HistoryEntry>, RolloutError>>,
    },
    Verify {
        service: String,
        fleet: String,
        reply: oneshot::Sender<Result<Vec<CheckResult>, RolloutError>>,
    },
    Reload {
        config: Box<Config>,
        reply: oneshot::Sender<Result<String, String>>,
    },
}

/// The handle the admin API and `teal serve` use.
#[derive(Clone, Debug)]
pub struct Controller {
    tx: mpsc::Sender<Command>,
    registry: Arc<ProxyRegistry>,
    snapshots: SnapshotReader,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

/// Starts the controller: loads the durable state (or starts from the
/// config), publishes the first snapshot and spawns the driver.
pub async fn start(
    config: Config,
    writer: SnapshotWriter,
    store: Arc<dyn StateStore>,
    registry: Arc<ProxyRegistry>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> Result<(Controller, tokio::task::JoinHandle<()>), ControllerError> {
    let (state, revision) = match store.load().await? {
        Some(stored) => (stored.state, stored.revision),
        None => (PersistedState::default(), Revision(0)),
    };
    let snapshots = writer.reader();
    let (checks_tx, checks_rx) = mpsc::channel(64);
    let mut driver = Driver {
        config,
        writer,
        store,
        state,
        revision,
        registry: registry.clone(),
        running: BTreeMap::new(),
        finished: HashMap::new(),
        checks_tx,
        metrics,
    };
    driver.reconcile();
    let version = driver
        .publish_current(true)
        .await
        .map_err(ControllerError::Build)?;
    tracing::info!(%version, store = %driver.store.describe(), "controller started");
    let (tx, rx) = mpsc::channel(64);
    let controller = Controller {
        tx,
        registry,
        snapshots,
    };
    driver.resume_retirements();
    let task = tokio::spawn(driver.run(rx, checks_rx, shutdown));
    Ok((controller, task))
}

impl Controller {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, RolloutError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| RolloutError::Store("teal is shutting down".into()))?;
        rx.await
            .map_err(|_| RolloutError::Store("teal is shutting down".into()))
    }

    /// Replaces the config (already validated) and publishes it. Returns
    /// the new version, or why it was refused (nothing changed then).
    pub async fn reload(&self, config: Config) -> Result<String, String> {
        self.ask(|reply| Command::Reload {
            config: Box::new(config),
            reply,
        })
        .await
        .map_err(|e| e.to_string())?
    }

    /// The snapshot being served.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.peek()
    }
}

#[tonic::async_trait]
impl Backend for Controller {
    async fn status(&self, service: Option<&str>) -> Result<StatusView, RolloutError> {
        let service = service.map(str::to_owned);
        self.ask(|reply| Command::Status { service, reply }).await?
    }

    fn proxies(&self) -> Vec<ProxyStatus> {
        self.registry.proxies()
    }

    fn current_versions(&self) -> BTreeMap<String, [String; 4]> {
        let snap = self.snapshots.peek();
        snap.group_names()
            .map(|g| {
                let group = snap.group(g);
                let versions = ResourceType::ALL.map(|t| group.of(t).version().to_owned());
                (g.to_owned(), versions)
            })
            .collect()
    }

    async fn start(
        &self,
        op: Operation,
        actor: &str,
    ) -> Result<watch::Receiver<Progress>, RolloutError> {
        let actor = actor.to_owned();
        self.ask(|reply| Command::Start { op, actor, reply })
            .await?
    }

    async fn follow(&self, id: u64) -> Result<watch::Receiver<Progress>, RolloutError> {
        self.ask(|reply| Command::Follow { id, reply }).await?
    }

    async fn abort(&self, id: u64, actor: &str) -> Result<(), RolloutError> {
        let actor = actor.to_owned();
        self.ask(|reply| Command::Abort { id, actor, reply })
            .await?
    }

    async fn verify(&self, service: &str, fleet: &str) -> Result<Vec<CheckResult>, RolloutError> {
        let (service, fleet) = (service.to_owned(), fleet.to_owned());
        self.ask(|reply| Command::Verify {
            service,
            fleet,
            reply,
        })
        .await?
    }

    async fn history(&self, service: &str) -> Result<Vec<HistoryEntry>, RolloutError> {
        let service = service.to_owned();
        self.ask(|reply| Command::History { service, reply })
            .await?
    }
}

/// The sequence number at the front of a version string (`12-ab34...`).
pub fn version_seq(version: &str) -> Option<u64> {
    let digits: String = version.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests;
