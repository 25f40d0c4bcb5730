//! What the [`Controller`](super::Controller) handle asks the driver
//! ([`Command`]), and the answers and errors that come back. Apart from
//! both, so the driver and the files that extend it take these types from
//! here and never from the handle's module, which starts the driver.

use tokio::sync::{oneshot, watch};

use crate::config::Config;
use crate::rollout::registration::EndpointLimits;
use crate::rollout::{
    CheckResult, HistoryEntry, Operation, Progress, RolloutError, StatusView, Version,
};
use crate::state::StateError;
use crate::xds::snapshot::BuildError;

use super::reconcile::ReconcileError;

/// Why the controller could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The state store could not be read.
    #[error("cannot load state: {0}")]
    Load(#[from] StateError),
    /// The first snapshot could not be built.
    #[error("cannot build the first snapshot: {0}")]
    Build(#[from] BuildError),
    /// The config would move traffic the stored state has elsewhere (65,
    /// like a state file from a newer teal; the rest is 73).
    #[error("the config does not fit the stored state: {0}")]
    Reconcile(#[from] ReconcileError),
    /// A stored split does not fit the config (reconcile makes them fit,
    /// so this is a bug).
    #[error("a stored split does not fit the config: {0}")]
    Weights(#[from] crate::config::WeightsError),
}

impl ControllerError {
    /// The exit code of `teal serve` for this error: a config at odds with
    /// the state is bad input (65), the rest an unusable state (73).
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            ControllerError::Reconcile(_)
            | ControllerError::Load(StateError::NewerFormat { .. }) => crate::exit::EX_DATAERR,
            ControllerError::Load(_) | ControllerError::Build(_) => crate::exit::EX_CANTCREAT,
            ControllerError::Weights(_) => crate::exit::EX_SOFTWARE,
        }
    }
}

/// Why a change could not be committed; nothing was served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CommitError {
    /// The snapshot could not be built (a bug, or a config the translator
    /// refuses).
    #[error("cannot build the snapshot: {0}")]
    Build(#[from] BuildError),
    /// The state could not be saved durably.
    #[error("cannot save the state: {0}")]
    Store(#[from] StateError),
    /// A split does not fit the config (a fleet it gives traffic to is
    /// gone): nothing is served rather than a split teal did not choose.
    #[error("{0}")]
    Weights(#[from] crate::config::WeightsError),
}

/// What a config reload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Reloaded {
    /// Published as this version.
    Applied { version: Version },
    /// Kept until an operation that depends on the service config it
    /// changes leaves its checks and confirmation; then applied.
    Deferred {
        /// The service of the operation.
        service: String,
        id: u64,
        phase: crate::rollout::Phase,
    },
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reloaded::Applied { version } => write!(f, "config applied as version {version}"),
            Reloaded::Deferred { service, id, phase } => write!(
                f,
                "config change waits for operation #{id} on {service} ({}) to finish \
                 checking and confirming",
                phase.as_str()
            ),
        }
    }
}

/// Why a config reload was refused; the last good config keeps being
/// served.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    /// The config would move traffic.
    #[error("{0}")]
    Reconcile(#[from] ReconcileError),
    /// The new version could not be built or saved.
    #[error("{0}")]
    Commit(#[from] CommitError),
    /// teal is shutting down.
    #[error("teal is shutting down")]
    ShuttingDown,
}

/// A request to the driver.
pub(super) enum Command {
    Start {
        op: Operation,
        actor: String,
        /// The HTTPRoute asking, when one is; only it may change the
        /// weights of a service it drives.
        route: Option<crate::config::KubernetesRef>,
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
        reply: oneshot::Sender<Result<Reloaded, ReloadError>>,
    },
    ChangeRegistered {
        service: String,
        fleet: String,
        request: crate::rollout::registration::Request,
        actor: String,
        force: bool,
        limits: EndpointLimits,
        reply: oneshot::Sender<Result<crate::rollout::registration::FleetView, RolloutError>>,
    },
    ShowFleet {
        service: String,
        fleet: String,
        reply: oneshot::Sender<Result<crate::rollout::registration::FleetView, RolloutError>>,
    },
    SetEndpoints {
        service: String,
        sets: crate::config::FleetSets,
        limits: EndpointLimits,
        reply: oneshot::Sender<Result<Version, RolloutError>>,
    },
    Cordon {
        change: CordonChange,
        actor: String,
        reply: oneshot::Sender<Result<bool, RolloutError>>,
    },
}

/// A cordon change a client asked for.
pub(super) enum CordonChange {
    /// Stop waiting for `node`.
    Cordon {
        /// Its node id.
        node: String,
        /// Why, as the operator said.
        reason: String,
    },
    /// Wait for `node` again.
    Uncordon {
        /// Its node id.
        node: String,
    },
}
