//! Blue/green rollouts: the operations operators ask for, their progress
//! and results, and the [`Backend`] the admin API drives them through.
//!
//! - [`machine`]: the pure rollout state machine (events in, actions out).
//! - The controller (`crate::controller`) runs it against the real
//!   snapshot store, proxy registry, checks and durable state.
//!
//! A rollout changes one service's route weights in one fleet-wide version:
//! 1. **Prepare**: every proxy that routes the service has ACKed the
//!    clusters and endpoints of every fleet (make before break).
//! 2. **Check** the target fleet, unless told to skip; failing checks
//!    refuse the change and nothing is published.
//! 3. **Commit** one new version carrying the new weights to all proxies.
//! 4. **Confirm**: wait until every connected proxy in the affected groups
//!    has ACKed that version (or a later one), with a timeout; then run the
//!    checks again.
//! 5. **Undo** on any NACK, timeout or failed post-check: publish the
//!    previous weights as a new version, everywhere.

pub mod machine;
pub(crate) mod serde_time;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::WeightsError;
use crate::xds::ProxyStatus;

/// A traffic split: fleet → weight, weights summing to 100.
pub type Split = BTreeMap<String, u32>;

/// What an operator asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Send all of a service's traffic to one fleet.
    Flip {
        /// The service.
        service: String,
        /// The fleet to switch to; `None` picks the other of two fleets.
        to: Option<String>,
        /// Skip the checks before and after the switch.
        skip_checks: bool,
        /// How long to wait for every proxy to ACK.
        timeout: Duration,
    },
    /// Move traffic in steps, each a confirmed push with checks between.
    Shift {
        /// The service.
        service: String,
        /// The splits to apply, in order.
        steps: Vec<Split>,
        /// Pause between steps.
        interval: Duration,
        /// Skip the checks.
        skip_checks: bool,
        /// How long each step waits for every proxy to ACK.
        timeout: Duration,
    },
    /// Go back to the previous live fleet.
    Rollback {
        /// The service.
        service: String,
        /// How long to wait for every proxy to ACK.
        timeout: Duration,
    },
    /// After a delay, drop a fleet's weight and endpoints.
    Retire {
        /// The service.
        service: String,
        /// The fleet to retire (never the live one).
        fleet: String,
        /// How long to wait first; `rollback` still works until then.
        after: Duration,
    },
}

impl Operation {
    /// The service the operation acts on.
    pub fn service(&self) -> &str {
        match self {
            Operation::Flip { service, .. }
            | Operation::Shift { service, .. }
            | Operation::Rollback { service, .. }
            | Operation::Retire { service, .. } => service,
        }
    }

    /// A short verb for logs and history: `flip`, `shift`, `rollback`, `retire`.
    pub fn verb(&self) -> &'static str {
        match self {
            Operation::Flip { .. } => "flip",
            Operation::Shift { .. } => "shift",
            Operation::Rollback { .. } => "rollback",
            Operation::Retire { .. } => "retire",
        }
    }
}

/// Where a running operation is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Waiting for every proxy to hold both fleets' clusters and endpoints.
    Preparing,
    /// Running checks against the target fleet.
    PreChecks,
    /// Waiting for every proxy to ACK the new version.
    Confirming,
    /// Running checks after the switch.
    PostChecks,
    /// Between two steps of a shift, or before a retirement.
    Waiting,
    /// Putting every proxy back on the previous weights.
    RollingBack,
    /// Finished; see the outcome.
    Done,
}

impl Phase {
    /// Lower-case name for output.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Preparing => "preparing",
            Phase::PreChecks => "pre-checks",
            Phase::Confirming => "confirming",
            Phase::PostChecks => "post-checks",
            Phase::Waiting => "waiting",
            Phase::RollingBack => "rolling-back",
            Phase::Done => "done",
        }
    }
}

/// How an operation ended.
///
/// Stored as `{"kind": "succeeded"}`, `{"kind": "refused", "reason": ...}`...
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// Every proxy ACKed and every check passed.
    Succeeded,
    /// Refused before anything changed (failing pre-checks, bad request).
    Refused {
        /// Why.
        reason: String,
    },
    /// Something failed after the commit; every proxy was put back.
    RolledBack {
        /// Why.
        reason: String,
    },
    /// Stopped by the operator; what was committed stays.
    Aborted {
        /// Why.
        reason: String,
    },
}

impl Outcome {
    /// Whether the operation did what was asked.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Succeeded)
    }
}

/// One check run against one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    /// The check's name in the config.
    pub check: String,
    /// The endpoint, `host:port`.
    pub endpoint: String,
    /// Whether it passed.
    pub ok: bool,
    /// What happened: the status and time, or the error.
    pub detail: String,
}

/// A live view of one operation, sent to the CLI as it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Unique id of the operation.
    pub id: u64,
    /// The service.
    pub service: String,
    /// `flip`, `shift`, `rollback` or `retire`.
    pub verb: String,
    /// Where it is.
    pub phase: Phase,
    /// The step being applied (1-based), and how many there are.
    pub step: usize,
    /// How many steps in all.
    pub steps: usize,
    /// The split being applied.
    pub target: Split,
    /// The version being confirmed, once committed.
    pub version: Option<String>,
    /// Proxies that ACKed it.
    pub acked: usize,
    /// Proxies that must ACK it.
    pub total: usize,
    /// Ids of proxies that have not ACKed yet.
    pub waiting_for: Vec<String>,
    /// The latest check results.
    pub checks: Vec<CheckResult>,
    /// A sentence on what is happening.
    pub message: String,
    /// Set when the operation is over.
    pub outcome: Option<Outcome>,
}

/// One past change of one service.
///
/// Stored with times as unix milliseconds and durations as milliseconds
/// (so they round-trip at millisecond precision).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The operation's id.
    pub id: u64,
    /// `flip`, `shift`, `rollback`, `retire`.
    pub verb: String,
    /// Who asked (the token's name).
    pub actor: String,
    /// When it started.
    #[serde(rename = "started_unix_ms", with = "serde_time::unix_millis")]
    pub started: SystemTime,
    /// When it ended.
    #[serde(rename = "finished_unix_ms", with = "serde_time::unix_millis")]
    pub finished: SystemTime,
    /// The split before.
    pub from: Split,
    /// The split after (the previous one again if it was undone).
    pub to: Split,
    /// The version that carried the change, if one was committed.
    pub version: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// First push to last ACK of the committed version.
    #[serde(rename = "convergence_ms", with = "serde_time::opt_millis")]
    pub convergence: Option<Duration>,
    /// Per proxy: how long after the push it ACKed.
    #[serde(rename = "acks_ms", with = "serde_time::acks_millis")]
    pub acks: Vec<(String, Duration)>,
}

/// A planned retirement (stored with `at` as unix milliseconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retirement {
    /// The fleet to retire.
    pub fleet: String,
    /// When its weight and endpoints go.
    #[serde(rename = "at_unix_ms", with = "serde_time::unix_millis")]
    pub at: SystemTime,
}

/// One service as `teal status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceStatus {
    /// The service.
    pub name: String,
    /// The fleet with the most weight.
    pub live: String,
    /// The fleet that was live before the last switch, for rollback.
    pub previous: Option<String>,
    /// The current split.
    pub weights: Split,
    /// Fleets retired: no weight, no endpoints.
    pub retired: Vec<String>,
    /// A pending retirement.
    pub retirement: Option<Retirement>,
    /// Since when more than one fleet has had endpoints (the cost window
    /// of running both fleets); `None` when only one has.
    pub both_fleets_since: Option<SystemTime>,
    /// The last change.
    pub last_change: Option<HistoryEntry>,
    /// The operation in progress.
    pub in_progress: Option<Progress>,
}

/// Everything `teal status` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusView {
    /// The fleet-wide version being served.
    pub version: String,
    /// Services, by name.
    pub services: Vec<ServiceStatus>,
}

/// Why the backend refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    /// No such service.
    #[error("unknown service {0:?}")]
    UnknownService(String),
    /// No such fleet.
    #[error("service {service:?} has no fleet {fleet:?}")]
    UnknownFleet {
        /// The service.
        service: String,
        /// The fleet.
        fleet: String,
    },
    /// The request does not make sense (bad weights, retiring the live fleet...).
    #[error("{0}")]
    Invalid(String),
    /// Another operation on the service is running.
    #[error("service {service:?} is busy: {verb} #{id} is in progress")]
    Busy {
        /// The service.
        service: String,
        /// What is running.
        verb: String,
        /// Its id.
        id: u64,
    },
    /// No such operation.
    #[error("no operation #{0} in progress")]
    NoSuchOperation(u64),
    /// Durable state could not be written; nothing changed.
    #[error("state store: {0}")]
    Store(String),
}

/// A split refused by [`crate::config::Weights::check`]: an unknown
/// service or fleet stays one (NOT_FOUND over gRPC), a bad sum is
/// [`RolloutError::Invalid`] (INVALID_ARGUMENT), with the same message.
impl From<WeightsError> for RolloutError {
    fn from(e: WeightsError) -> RolloutError {
        match e {
            WeightsError::UnknownService(service) => RolloutError::UnknownService(service),
            WeightsError::UnknownFleet { service, fleet } => {
                RolloutError::UnknownFleet { service, fleet }
            }
            e @ WeightsError::BadSum { .. } => RolloutError::Invalid(e.to_string()),
        }
    }
}

impl From<RolloutError> for tonic::Status {
    fn from(e: RolloutError) -> tonic::Status {
        use tonic::Status;
        match &e {
            RolloutError::UnknownService(_) | RolloutError::UnknownFleet { .. } => {
                Status::not_found(e.to_string())
            }
            RolloutError::Invalid(_) => Status::invalid_argument(e.to_string()),
            RolloutError::Busy { .. } => Status::failed_precondition(e.to_string()),
            RolloutError::NoSuchOperation(_) => Status::not_found(e.to_string()),
            RolloutError::Store(_) => Status::unavailable(e.to_string()),
        }
    }
}

/// What the admin API needs from the running server. The controller
/// implements it; admin API tests can stand in their own.
#[tonic::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The status of every service, or of one.
    async fn status(&self, service: Option<&str>) -> Result<StatusView, RolloutError>;
    /// Every connected proxy.
    fn proxies(&self) -> Vec<ProxyStatus>;
    /// The fleet-wide version the proxies should be on, per proxy group
    /// and type, to tell SYNCED from STALE.
    fn current_versions(&self) -> BTreeMap<String, [String; 4]>;
    /// Starts an operation; its progress arrives on the returned receiver,
    /// the last value having `outcome` set. The operation belongs to the
    /// server: dropping the receiver does not stop it.
    async fn start(
        &self,
        op: Operation,
        actor: &str,
    ) -> Result<tokio::sync::watch::Receiver<Progress>, RolloutError>;
    /// Follows an operation already running.
    async fn follow(&self, id: u64)
    -> Result<tokio::sync::watch::Receiver<Progress>, RolloutError>;
    /// Stops an operation between steps (a shift or a pending retirement).
    async fn abort(&self, id: u64, actor: &str) -> Result<(), RolloutError>;
    /// Runs a service's checks against one fleet now.
    async fn verify(&self, service: &str, fleet: &str) -> Result<Vec<CheckResult>, RolloutError>;
    /// Past changes of a service, newest first.
    async fn history(&self, service: &str) -> Result<Vec<HistoryEntry>, RolloutError>;
}
