//! Blue/green rollouts: the operations operators ask for, their progress
//! and results, and the errors the admin API reports them with.
//!
//! - [`plan`]: what an operation will do to a service, or why it cannot;
//!   where the rollback point goes.
//! - [`machine`]: the pure rollout state machine (events in, actions out).
//! - `version`: the fleet-wide version a commit publishes.
//! - `reason`: why an operation did not simply succeed.
//! - `checks`: the HTTP checks a rollout sends straight to a fleet's
//!   endpoints.
//! - [`drain`]: whether a fleet is drained, by the proxies' load reports
//!   (what they say of it arrives as `traffic`).
//! - [`confirmation`]: whether a service's current weights are confirmed
//!   by every proxy, the answer the orchestrators' gates give.
//! - [`registration`]: endpoints a deploy pipeline or an instance
//!   registers through the admin API, with TTLs.
//! - Every service's split, and the rule a split follows, are the
//!   config's (`crate::config::weights`).
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
//!
//! A rollback is the safe direction and is never undone: when a proxy
//! does not confirm it in time (or rejects it), it stays in effect and its
//! outcome says which proxies have not confirmed ([`Outcome::Unconfirmed`]).
//!
//! Each service keeps a **rollback point**: the confirmed weights in effect
//! before the most recent operation whose changes are still in effect.
//! `plan::rollback_point` is the one rule that moves it; a refused or
//! undone operation leaves it where it was.

pub(crate) mod analysis;
pub(crate) mod checks;
pub mod confirmation;
pub mod drain;
#[cfg(test)]
pub(crate) mod fixtures;
pub mod machine;
pub mod plan;
pub(crate) mod reason;
pub mod registration;
mod seen;
pub(crate) mod serde_time;
pub(crate) mod traffic;
pub(crate) mod version;

use crate::config::WeightsError;

pub use analysis::Criteria;
pub use confirmation::{Confirmation, Unconfirmed};
pub use drain::FleetDrain;
pub use reason::Reason;
pub use traffic::MeasuredFleet;
pub use version::Version;

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// A traffic split: fleet → weight, weights summing to 100.
pub type Split = BTreeMap<String, u32>;

/// The longest wait an operation may ask for (a timeout, a shift's
/// interval, a retirement's delay): a week. Longer values are refused
/// when the operation is planned, so no deadline can overflow the clock.
pub(crate) const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a flip, a shift step or a rollback waits for every proxy to
/// ACK when the request does not say (`timeout_ms: 0`; the CLI sends that
/// when `--timeout` is not given, so this is the only default).
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a retirement waits for every proxy to report the fleet
/// drained when the request does not say (`drain_timeout_ms` unset; the
/// CLI leaves it unset when `--drain-timeout` is not given). Long enough
/// for a slow upload or a long poll, short enough that a proxy that never
/// reports does not hold a release for an afternoon.
pub(crate) const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// What kind of operation: the verb operators type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verb {
    /// `teal flip`.
    Flip,
    /// `teal shift`.
    Shift,
    /// `teal rollback`.
    Rollback,
    /// `teal retire`.
    Retire,
}

impl Verb {
    /// The verb as operators type it: `flip`, `shift`, `rollback`, `retire`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Flip => "flip",
            Verb::Shift => "shift",
            Verb::Rollback => "rollback",
            Verb::Retire => "retire",
        }
    }
}

impl std::fmt::Display for Verb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a shift says where traffic goes; the server resolves it against
/// the service's current split ([`plan::plan`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShiftSteps {
    /// Whole splits, applied in order (every fleet not named gets 0).
    Splits(Vec<Split>),
    /// One step: these fleets' weights; when they add up to less than 100
    /// and exactly one fleet is not named, that fleet takes the rest.
    Weights(Vec<(String, u32)>),
    /// The weight of `to` at each step, rising; the fleet that holds the
    /// rest of the traffic now gives it up.
    Percents {
        /// The fleet gaining traffic; `None` picks the other of two.
        to: Option<String>,
        /// Its weight at each step, strictly rising, 1 to 100.
        percents: Vec<u32>,
    },
}

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
        /// Where traffic goes at each step.
        steps: ShiftSteps,
        /// Pause between steps.
        interval: Duration,
        /// Skip the checks.
        skip_checks: bool,
        /// How long each step waits for every proxy to ACK.
        timeout: Duration,
    },
    /// Go back to the service's rollback point.
    Rollback {
        /// The service.
        service: String,
        /// Skip the checks of the fleets getting traffic back.
        skip_checks: bool,
        /// How long to wait for every proxy to ACK.
        timeout: Duration,
    },
    /// After a delay, and once every proxy reports no request in
    /// progress to it, drop a fleet's weight and endpoints.
    Retire {
        /// The service.
        service: String,
        /// The fleet to retire (never the live one).
        fleet: String,
        /// How long to wait first; `rollback` still works until then.
        after: Duration,
        /// How long to wait, after `after`, for every proxy to report the
        /// fleet drained before refusing; zero retires without waiting.
        drain_timeout: Duration,
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

    /// What kind of operation it is.
    pub fn verb(&self) -> Verb {
        match self {
            Operation::Flip { .. } => Verb::Flip,
            Operation::Shift { .. } => Verb::Shift,
            Operation::Rollback { .. } => Verb::Rollback,
            Operation::Retire { .. } => Verb::Retire,
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
    /// Watching the error ratio of the fleets gaining traffic in the
    /// proxies' load reports, after the switch.
    Analysis,
    /// Between two steps of a shift, or before a retirement.
    Waiting,
    /// Before a retirement, after its delay: waiting for every proxy to
    /// report no request in progress to the fleet.
    Draining,
    /// Putting every proxy back on the previous weights.
    RollingBack,
    /// Finished; see the outcome.
    Done,
}

impl Phase {
    /// Lower-case name for output.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Phase::Preparing => "preparing",
            Phase::PreChecks => "pre-checks",
            Phase::Confirming => "confirming",
            Phase::PostChecks => "post-checks",
            Phase::Analysis => "analysis",
            Phase::Waiting => "waiting",
            Phase::Draining => "draining",
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
        reason: Reason,
    },
    /// Something failed after the commit; every proxy was put back.
    RolledBack {
        /// Why.
        reason: Reason,
    },
    /// Stopped by the operator (or by teal shutting down): the step in
    /// progress was undone or never committed; earlier steps of a shift
    /// stay.
    Aborted {
        /// Why.
        reason: Reason,
    },
    /// Committed and left in effect, but not confirmed by every proxy (one
    /// did not ACK in time or rejected it), or its checks failed
    /// afterwards, or its undo could not be committed. teal never undoes a
    /// rollback, nor an undo; the reason names the proxies concerned.
    Unconfirmed {
        /// Why.
        reason: Reason,
    },
    /// teal stopped (a crash, `kill -9`) while the operation ran and found
    /// it on start-up with nothing left to confirm: the step in progress
    /// had not been committed.
    Interrupted {
        /// Why.
        reason: Reason,
    },
}

impl Outcome {
    /// Whether the operation did what was asked.
    pub fn is_success(&self) -> bool {
        matches!(self, Outcome::Succeeded)
    }

    /// The reason, for every outcome but success.
    pub(crate) fn reason(&self) -> Option<&Reason> {
        match self {
            Outcome::Succeeded => None,
            Outcome::Refused { reason }
            | Outcome::RolledBack { reason }
            | Outcome::Aborted { reason }
            | Outcome::Unconfirmed { reason }
            | Outcome::Interrupted { reason } => Some(reason),
        }
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
    /// What kind of operation.
    pub verb: Verb,
    /// Where it is.
    pub phase: Phase,
    /// The step being applied (1-based), and how many there are.
    pub step: usize,
    /// How many steps in all.
    pub steps: usize,
    /// The split being applied.
    pub target: Split,
    /// The version being confirmed, once committed.
    pub version: Option<Version>,
    /// Proxies that ACKed it; while draining, proxies that report the
    /// fleet idle.
    pub acked: usize,
    /// Proxies that must ACK it (or report the fleet idle).
    pub total: usize,
    /// Ids of proxies not done yet (not ACKed; while draining, not
    /// reporting the fleet idle): the first `WAITING_SHOWN` by id
    /// (`total - acked` counts them all).
    pub waiting_for: Vec<String>,
    /// Ids of cordoned proxies of the service's groups, which the
    /// operation does not wait for (and whose NACKs do not roll back).
    pub not_waiting_for: Vec<String>,
    /// The latest check results.
    pub checks: Vec<CheckResult>,
    /// A sentence on what is happening.
    pub message: String,
    /// Things the operator should know that do not stop the operation
    /// (no proxy to confirm a change, teal restarted during it...).
    pub warnings: Vec<String>,
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
    /// What kind of operation.
    pub verb: Verb,
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
    /// The split in effect when it ended (the one before again if it was
    /// undone or refused).
    pub to: Split,
    /// The split it set out to apply (its last step's); `None` in entries
    /// written before teal recorded it.
    #[serde(default)]
    pub target: Option<Split>,
    /// The version that carried the change, if one was committed (stored
    /// as its string, or null).
    pub version: Option<Version>,
    /// How it ended.
    pub outcome: Outcome,
    /// First push to last ACK of the last version every proxy confirmed;
    /// `None` when no version was confirmed, or no proxy was there to
    /// confirm it.
    #[serde(rename = "convergence_ms", with = "serde_time::opt_millis")]
    pub convergence: Option<Duration>,
    /// Per proxy: how long after the last push it ACKed; the
    /// `ACKS_KEPT` slowest, by proxy id.
    #[serde(rename = "acks_ms", with = "serde_time::acks_millis")]
    pub acks: Vec<(String, Duration)>,
    /// What the operator should know (see [`Progress::warnings`]).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Proxies the operation did not wait for: cordoned ones, at any
    /// point of it (see [`Progress::not_waiting_for`]), and those a
    /// rollback went without before its switch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_waited_for: Vec<String>,
}

/// A planned retirement (stored with `at` as unix milliseconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retirement {
    /// The fleet to retire.
    pub(crate) fleet: String,
    /// When its weight and endpoints go.
    #[serde(rename = "at_unix_ms", with = "serde_time::unix_millis")]
    pub(crate) at: SystemTime,
}

/// One service as `teal status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceStatus {
    /// The service.
    pub name: String,
    /// The fleet taking more than half of the traffic; empty when none
    /// does (a 50/50 split), see `plan::live_of`.
    pub live: String,
    /// The live fleet of the rollback point, if it has one.
    pub previous: Option<String>,
    /// Where `teal rollback` goes: the confirmed weights in effect before
    /// the most recent operation whose changes are still in effect; `None`
    /// when there is nothing to go back to.
    pub rollback_to: Option<Split>,
    /// The current split.
    pub weights: Split,
    /// Fleets retired: no weight, no endpoints.
    pub retired: Vec<String>,
    /// A pending retirement.
    pub retirement: Option<Retirement>,
    /// Per fleet with no weight, whether the proxies report it drained,
    /// in fleet order.
    pub drains: Vec<FleetDrain>,
    /// Since when more than one fleet has had endpoints (the cost window
    /// of running both fleets); `None` when only one has.
    pub both_fleets_since: Option<SystemTime>,
    /// The last change.
    pub last_change: Option<HistoryEntry>,
    /// The operation in progress.
    pub in_progress: Option<Progress>,
    /// What the proxies' load reports say, per fleet.
    pub traffic: Vec<MeasuredFleet>,
    /// How many of the proxies routing the service hold the weights
    /// served now.
    pub applied: Applied,
    /// The split every proxy confirmed, as far as teal knows: with an
    /// operation running, its last confirmed step's (or the split it
    /// started from); otherwise `weights` once every proxy routing the
    /// service ACKed the routes served, `None` until then.
    pub confirmed: Option<Split>,
    /// The HTTPRoute that drives the service's weights, and how far teal
    /// got with it; `None` when no route does.
    pub route: Option<RouteView>,
}

/// The HTTPRoute that drives a service (`services.<s>.kubernetes.route`),
/// as its task last said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteView {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The latest generation teal took on; `None` before the first.
    pub generation: Option<i64>,
    /// The latest generation whose weights every proxy confirmed.
    pub confirmed_generation: Option<i64>,
    /// Where `generation` is; `None` before the first.
    pub state: Option<RouteState>,
}

/// Where a route's generation is, as its `teal.dev/Confirmed` condition
/// (or, when it was not applied, its other conditions) says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteState {
    /// Being applied.
    Pending,
    /// Every proxy confirmed it.
    Confirmed,
    /// Applied, then undone.
    RolledBack,
    /// Refused before anything ran.
    Refused,
    /// Not accepted, or its backends do not resolve: nothing to apply.
    NotApplied,
}

impl RouteState {
    /// The name the gates' JSON uses.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteState::Pending => "pending",
            RouteState::Confirmed => "confirmed",
            RouteState::RolledBack => "rolled_back",
            RouteState::Refused => "refused",
            RouteState::NotApplied => "not_applied",
        }
    }
}

/// The proxies routing a service (connected, or holding their place while
/// they reconnect; cordoned ones left out, as operations leave them out)
/// against the route configuration served to their groups now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Those that ACKed the route configuration (which carries the
    /// weights) served to their group, or do not ask for one.
    pub acked: usize,
    /// All of them.
    pub total: usize,
    /// Ids of those that have not: the first `machine::WAITING_SHOWN` by
    /// id (`total - acked` counts them all).
    pub waiting_for: Vec<String>,
    /// Ids of those whose last answer was a rejection, with it: the first
    /// `machine::WAITING_SHOWN` by id.
    pub rejecting: Vec<(String, String)>,
    /// The proxy groups that route the service, whose proxies are counted.
    pub groups: Vec<String>,
}

impl Applied {
    /// Whether every proxy routing the service holds the weights served.
    pub fn all(&self) -> bool {
        self.acked == self.total
    }
}

/// Everything `teal status` shows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusView {
    /// The fleet-wide version being served; `None` before the first
    /// commit.
    pub version: Option<Version>,
    /// Services, by name.
    pub services: Vec<ServiceStatus>,
}

/// Why the backend refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RolloutError {
    /// No such service.
    #[error("unknown service {service:?}{}", known_services(.known))]
    UnknownService {
        /// The name asked for.
        service: String,
        /// The services the config has, to say what would have worked
        /// (empty when the caller does not know them).
        known: Vec<String>,
    },
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
    /// The request is valid but the service's state does not allow it
    /// (nothing to roll back to, a fleet with no endpoints, already there).
    #[error("{0}")]
    Precondition(String),
    /// Another operation on the service is running.
    #[error(
        "service {service:?} is busy: {verb} #{id} is in progress \
         (follow it with `teal follow {id}`, stop it with `teal abort {id}`)"
    )]
    Busy {
        /// The service.
        service: String,
        /// What is running.
        verb: Verb,
        /// Its id.
        id: u64,
    },
    /// The operation cannot be stopped now; the message says why and when
    /// it ends on its own.
    #[error("operation #{id} cannot be aborted now: {why}")]
    CannotAbort {
        /// The operation.
        id: u64,
        /// Why.
        why: String,
    },
    /// No such operation.
    #[error("no operation #{0} in progress")]
    NoSuchOperation(u64),
    /// The request goes past a limit the server sets (a flag of `teal
    /// serve`, named in the message); nothing changed.
    #[error("{0}")]
    Limit(String),
    /// Durable state could not be written; nothing changed.
    #[error("state store: {0}")]
    Store(String),
    /// The shared state store cannot be reached; nothing changed, and
    /// this replica keeps serving its last version.
    #[error("{0}")]
    StoreUnavailable(String),
    /// teal is shutting down and takes no more requests.
    #[error("teal is shutting down")]
    ShuttingDown,
    /// This replica does not lead; changes go to the leader (its admin
    /// address, when one is known, rides along as `LEADER_KEY`).
    #[error("this replica does not lead{}", match leader {
        Some(a) => format!("; the leader's admin API is at {a}"),
        None => "; no replica leads right now (is etcd reachable?)".to_owned(),
    })]
    NotLeader {
        /// The leader's admin address, if one leads.
        leader: Option<String>,
    },
}

/// The gRPC metadata key under which a follower names the leader's admin
/// address with [`ErrorKind::NotLeader`].
pub(crate) const LEADER_KEY: &str = "teal-leader";

/// A split refused by [`crate::config::Weights::check`]: an unknown
/// service or fleet stays one (NOT_FOUND over gRPC), a bad sum is
/// [`RolloutError::Invalid`] (INVALID_ARGUMENT), with the same message.
impl From<WeightsError> for RolloutError {
    fn from(e: WeightsError) -> RolloutError {
        match e {
            WeightsError::UnknownService(service) => RolloutError::UnknownService {
                service,
                known: Vec::new(),
            },
            WeightsError::UnknownFleet { service, fleet } => {
                RolloutError::UnknownFleet { service, fleet }
            }
            e @ WeightsError::BadSum { .. } => RolloutError::Invalid(e.to_string()),
        }
    }
}

/// The gRPC metadata key (a header or trailer) under which the admin API
/// names an error's [`ErrorKind`], so a client picks its reaction (the
/// CLI, its exit code) from the kind, never from the message text.
pub(crate) const ERROR_KIND_KEY: &str = "teal-error-kind";

/// ` (known: a, b)` for a refusal naming an unknown service, or nothing.
fn known_services(known: &[String]) -> String {
    if known.is_empty() {
        String::new()
    } else {
        format!(" (known: {})", known.join(", "))
    }
}

/// What kind of error the admin API answered, machine-readable (sent as
/// `ERROR_KIND_KEY`). Several kinds share a gRPC code: a full disk and a
/// server shutting down are both `UNAVAILABLE`, and so is a server that
/// cannot be reached, which has no kind at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// [`RolloutError::UnknownService`].
    UnknownService,
    /// [`RolloutError::UnknownFleet`].
    UnknownFleet,
    /// [`RolloutError::Invalid`].
    Invalid,
    /// [`RolloutError::Precondition`].
    Precondition,
    /// [`RolloutError::Busy`].
    Busy,
    /// [`RolloutError::CannotAbort`].
    CannotAbort,
    /// [`RolloutError::NoSuchOperation`].
    NoSuchOperation,
    /// [`RolloutError::Limit`].
    Limit,
    /// [`RolloutError::Store`]: the server is up but cannot save.
    Store,
    /// [`RolloutError::StoreUnavailable`]: the shared store is away.
    StoreUnavailable,
    /// [`RolloutError::NotLeader`]: ask the leader.
    NotLeader,
    /// [`RolloutError::ShuttingDown`], or an operation's progress that
    /// stopped because the server is going away.
    ShuttingDown,
}

impl ErrorKind {
    pub(crate) const ALL: [ErrorKind; 12] = [
        ErrorKind::UnknownService,
        ErrorKind::UnknownFleet,
        ErrorKind::Invalid,
        ErrorKind::Precondition,
        ErrorKind::Busy,
        ErrorKind::CannotAbort,
        ErrorKind::NoSuchOperation,
        ErrorKind::Limit,
        ErrorKind::Store,
        ErrorKind::StoreUnavailable,
        ErrorKind::NotLeader,
        ErrorKind::ShuttingDown,
    ];

    /// The name sent on the wire.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ErrorKind::UnknownService => "unknown-service",
            ErrorKind::UnknownFleet => "unknown-fleet",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Precondition => "precondition",
            ErrorKind::Busy => "busy",
            ErrorKind::CannotAbort => "cannot-abort",
            ErrorKind::NoSuchOperation => "no-such-operation",
            ErrorKind::Limit => "limit",
            ErrorKind::Store => "store",
            ErrorKind::StoreUnavailable => "store-unavailable",
            ErrorKind::NotLeader => "not-leader",
            ErrorKind::ShuttingDown => "shutting-down",
        }
    }

    /// The kind a status names, if it names one this teal knows.
    pub(crate) fn of(status: &tonic::Status) -> Option<ErrorKind> {
        let name = status.metadata().get(ERROR_KIND_KEY)?.to_str().ok()?;
        ErrorKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// `status` with this kind attached.
    pub(crate) fn attach(self, mut status: tonic::Status) -> tonic::Status {
        status.metadata_mut().insert(
            ERROR_KIND_KEY,
            tonic::metadata::MetadataValue::from_static(self.as_str()),
        );
        status
    }
}

impl RolloutError {
    /// The error's kind, as the admin API names it.
    pub fn kind(&self) -> ErrorKind {
        match self {
            RolloutError::UnknownService { .. } => ErrorKind::UnknownService,
            RolloutError::UnknownFleet { .. } => ErrorKind::UnknownFleet,
            RolloutError::Invalid(_) => ErrorKind::Invalid,
            RolloutError::Precondition(_) => ErrorKind::Precondition,
            RolloutError::Busy { .. } => ErrorKind::Busy,
            RolloutError::CannotAbort { .. } => ErrorKind::CannotAbort,
            RolloutError::NoSuchOperation(_) => ErrorKind::NoSuchOperation,
            RolloutError::Limit(_) => ErrorKind::Limit,
            RolloutError::Store(_) => ErrorKind::Store,
            RolloutError::StoreUnavailable(_) => ErrorKind::StoreUnavailable,
            RolloutError::NotLeader { .. } => ErrorKind::NotLeader,
            RolloutError::ShuttingDown => ErrorKind::ShuttingDown,
        }
    }
}

/// The gRPC code says what a generic client should do; the attached
/// [`ErrorKind`] says exactly what happened.
impl From<RolloutError> for tonic::Status {
    fn from(e: RolloutError) -> tonic::Status {
        use tonic::Status;
        let status = match &e {
            RolloutError::UnknownService { .. } | RolloutError::UnknownFleet { .. } => {
                Status::not_found(e.to_string())
            }
            RolloutError::Invalid(_) => Status::invalid_argument(e.to_string()),
            RolloutError::Precondition(_)
            | RolloutError::Busy { .. }
            | RolloutError::CannotAbort { .. } => Status::failed_precondition(e.to_string()),
            RolloutError::NoSuchOperation(_) => Status::not_found(e.to_string()),
            RolloutError::Limit(_) => Status::resource_exhausted(e.to_string()),
            RolloutError::Store(_)
            | RolloutError::StoreUnavailable(_)
            | RolloutError::ShuttingDown => Status::unavailable(e.to_string()),
            RolloutError::NotLeader { leader } => {
                let mut status = Status::unavailable(e.to_string());
                if let Some(value) = leader.as_deref().and_then(|a| a.parse().ok()) {
                    status.metadata_mut().insert(LEADER_KEY, value);
                }
                status
            }
        };
        e.kind().attach(status)
    }
}
