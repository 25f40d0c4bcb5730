//! The pure rollout state machine.
//!
//! A [`Rollout`] takes `Event`s (the proxies' state, check results, the
//! controller's confirmation that a version was published, the clock) and
//! returns [`Action`]s (look at the proxies, run checks, commit a change,
//! finish). It does no I/O and reads no clock: `now` is passed in, so every
//! order of events is a plain test.
//!
//! ```text
//!            ┌───────────────────────────── every step ─────────────────────────────┐
//! start → Preparing → PreChecks → Committing → Confirming → PostChecks → Analysing ─┬→ Done
//!            │ NACK,      │ fail,      │ fail      │ NACK,        │ fail       │ fail └→ Waiting → next step
//!            │ timeout    │ timeout    │           │ timeout      │            │
//!            ▼            ▼            ▼           ▼              ▼            ▼
//!         Refused*     Refused*     Refused*    UndoCommitting → Undoing → RolledBack
//!                                                                  └ timeout, NACK → Unconfirmed
//! ```
//! `*` On the first step nothing was committed yet, so the operation is
//! refused; on a later step of a shift, earlier steps are undone.
//!
//! `Analysing` is a step's only for a service with an `analysis`, once
//! its change is confirmed and its post-checks (if any) passed: the
//! machine watches the error ratio of the fleets gaining traffic in the
//! proxies' load reports for the analysis's window
//! (`super::analysis`), and fails the step as soon as it is over the
//! threshold with enough requests, as a failed post-check does. Its
//! baseline, what the fleets losing traffic did before the commit, is
//! measured just before the commit (`Action::MeasureBaseline`).
//!
//! A retirement first waits out its delay (`Waiting`), then, unless told
//! not to, waits in `Draining` until every proxy routing the service
//! reports no request in progress to the fleet for two reports in a row
//! ([`super::drain`]); it asks for those reports with
//! `Rollout::wants_traffic`. A proxy that reports no load is never taken
//! as drained. Past its drain timeout the retirement is refused, naming
//! the proxies still draining and those not reporting; nothing was
//! committed, so the fleet keeps its endpoints.
//!
//! ```text
//! start → Waiting → Draining ─┬→ Preparing → … (as above)
//!                             └ timeout → Refused
//! ```
//!
//! A rollback never goes to `UndoCommitting`: a NACK, a timeout or a failed
//! post-check leaves it in effect and ends it [`Outcome::Unconfirmed`].
//! Nor does it wait in `Preparing`: a proxy stuck or rejecting its
//! configuration does not hold the way back (`Rollout::passed_over`).
//!
//! Every commit is checked again when the driver carries it out
//! (`Rollout::commit_gate`): a step that would send traffic to a fleet
//! left with no endpoints since the plan fails like a failed check.
//! An abort (`Rollout::abort`) before the commit ends the operation; after
//! it, the step in progress is undone (back to the last confirmed step).
//!
//! Every phase has a deadline (`Rollout::next_deadline`), so every
//! operation ends on its own. `Rollout::record` is what the controller
//! saves with each commit, and `Rollout::resume` picks an operation up
//! from it after a crash.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use super::analysis::{Baseline, Verdict, Window};
use super::drain::{self, FleetDrain};
use super::plan::{Change, Plan, rollback_point};
use super::reason::{Proxies, Rejection};
use super::seen::{Seen, Until};
use super::serde_time;
use super::traffic::FleetTraffic;
use super::{
    CheckResult, MAX_WAIT, Operation, Outcome, Phase, Progress, Reason, RolloutError, Split, Verb,
    Version,
};
use crate::config::TooFewRequests;

// Defined beside the sets that hold it; the events name it from here.
pub(crate) use super::seen::ProxyView;

/// How many proxies' ACK delays a history entry keeps: the slowest. The
/// state holds up to [`HISTORY_LIMIT`](crate::state::HISTORY_LIMIT)
/// entries per service and is copied and saved whole at every commit, so
/// an entry holding every proxy of a large fleet would make each commit
/// cost O(history × proxies).
pub(crate) const ACKS_KEPT: usize = 100;

/// How many ids of proxies not yet done [`Progress::waiting_for`] and the
/// timeout messages name; `acked` and `total` count them all.
pub(crate) const WAITING_SHOWN: usize = 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// Time passed; deadlines may have expired.
    Tick,
    /// The proxies in the affected groups, as they are now: every one of
    /// them, replacing what the machine saw before.
    Proxies(Vec<ProxyView>),
    /// Some proxies in the affected groups changed since the last
    /// [`Event::Proxies`] or [`Event::ProxiesChanged`]: the machine updates
    /// only these, so following N proxies as they ACK one by one costs
    /// O(log N) per ACK, not O(N).
    ProxiesChanged {
        /// Proxies that joined or changed, as they are now.
        changed: Vec<ProxyView>,
        /// Ids of proxies that left.
        gone: Vec<String>,
    },
    /// The checks asked for finished.
    Checks(Vec<CheckResult>),
    /// The change asked for was made durable and published as `version`.
    Committed {
        /// The fleet-wide version carrying it.
        version: Version,
    },
    /// The change asked for could not be committed; nothing was saved or
    /// published.
    CommitFailed(String),
    /// What the proxies' load reports say of the fleets
    /// [`Rollout::wants_traffic`] named, one entry per fleet.
    Traffic(Vec<FleetTraffic>),
    /// What the fleets an [`Action::MeasureBaseline`] named did over its
    /// window, up to now.
    Baseline(Baseline),
}

/// Something the controller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Look at the proxies now and send `Event::Proxies`: the machine
    /// began waiting for them (a new step, a commit) and the registry may
    /// not change again for a while.
    ObserveProxies,
    /// Run the service's checks against these fleets, then send
    /// `Event::Checks`.
    RunChecks(Vec<String>),
    /// Make this change durable (with `Rollout::record`), publish it,
    /// then send `Event::Committed` (or `Event::CommitFailed`).
    Commit(Change),
    /// Look at what the proxies' load reports say of the fleets
    /// `Rollout::wants_traffic` names now and send `Event::Traffic`:
    /// the machine began judging their traffic, or its window ended, or a
    /// retirement began waiting for its fleet to drain.
    ObserveTraffic,
    /// Sum what these fleets' load reports counted over the last `window`
    /// and send `Event::Baseline`: the step about to be committed moves
    /// traffic away from them, and its analysis measures the fleets
    /// gaining it against that.
    MeasureBaseline {
        /// The fleets losing traffic.
        fleets: Vec<String>,
        /// How far back.
        window: Duration,
    },
    /// The operation is over.
    Finish(Outcome),
}

/// Whether the driver carries out the [`Action::Commit`] it is about to,
/// as [`Rollout::commit_gate`] decides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Gate {
    Go,
    /// Do not: the operation moved on (refused, or undoing what it
    /// committed); carry out these actions instead.
    Withdrawn(Vec<Action>),
}

/// Why an undo runs, and where it goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Undo {
    /// The failure, or who aborted (read back from a record as
    /// [`Reason::Recorded`]).
    pub(crate) reason: Reason,
    /// An operator abort (ends `Aborted`), not a failure (ends
    /// `RolledBack`).
    pub(crate) abort: bool,
    /// The routing state it restores.
    pub(crate) to: Change,
}

/// How far the step in progress got, as saved with every commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Stage {
    /// Nothing of this step is committed.
    Pending,
    /// This step's change is committed: it is the stored version.
    Applied,
    /// The undo is committed: it is the stored version.
    Undoing(Undo),
}

/// A running operation as saved in the durable state, so that a restart
/// (even after `kill -9`) can resolve it (`Rollout::resume`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The operation's id.
    pub id: u64,
    pub(crate) verb: Verb,
    pub(crate) actor: String,
    #[serde(rename = "started_unix_ms", with = "serde_time::unix_millis")]
    pub(crate) started: SystemTime,
    pub(crate) plan: Plan,
    /// The routing state before it.
    pub(crate) original: Change,
    /// The rollback point before it.
    pub(crate) rollback_before: Option<Split>,
    /// The step in progress, 1-based.
    pub(crate) step: usize,
    /// How far that step got.
    pub(crate) stage: Stage,
    /// The version of the last step every proxy confirmed.
    pub(crate) confirmed_version: Option<Version>,
    /// The last confirmed step's change.
    pub(crate) confirmed: Option<Change>,
    /// When a wait before the step ends (retirements), wall clock.
    #[serde(
        rename = "wait_until_unix_ms",
        with = "serde_time::opt_unix_millis",
        default
    )]
    pub(crate) wait_until: Option<SystemTime>,
    #[serde(default)]
    pub(crate) warnings: Vec<String>,
    /// What the fleets losing traffic in the step in progress did before
    /// its commit, for its analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) baseline: Option<Baseline>,
}

/// Where the machine is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Waiting {
        until: Instant,
    },
    /// A retirement waiting for its fleet to drain.
    Draining {
        deadline: Instant,
    },
    Preparing {
        deadline: Instant,
    },
    PreChecks {
        deadline: Instant,
    },
    Committing,
    Confirming {
        version: Version,
        since: Instant,
        deadline: Instant,
    },
    PostChecks {
        version: Version,
        deadline: Instant,
    },
    /// Judging the traffic of the fleets gaining it (`Rollout::window`).
    Analysing {
        version: Version,
        /// When the window ends.
        ends: Instant,
        /// After the window, how long `too_few_requests: wait` waits for
        /// enough requests.
        deadline: Instant,
        /// The window has ended without a verdict; waiting for more.
        ended: bool,
    },
    UndoCommitting(Undo),
    Undoing {
        undo: Undo,
        version: Version,
        deadline: Instant,
    },
    Done(Outcome),
}

/// One running operation.
#[derive(Debug)]
pub struct Rollout {
    id: u64,
    verb: Verb,
    service: String,
    actor: String,
    started: SystemTime,
    plan: Plan,
    original: Change,
    rollback_before: Option<Split>,
    /// The step in progress, 1-based.
    step: usize,
    state: State,
    /// The last step every proxy confirmed: its version and change.
    confirmed: Option<(Version, Change)>,
    /// Per proxy, how long after the push of the step in progress it ACKed.
    /// Hashed; [`Rollout::convergence`] orders what it reports.
    acks: HashMap<Arc<str>, Duration>,
    /// First push to last ACK of the last confirmed step, when proxies
    /// confirmed it.
    convergence: Option<Duration>,
    /// Picked up after a restart: ends once the step in progress is
    /// resolved.
    resumed: bool,
    /// The last version this operation committed (a step or an undo).
    last_version: Option<Version>,
    warnings: Vec<String>,
    /// Proxies a rollback went without before its switch (not in sync
    /// with the configuration served, or rejecting it): the first
    /// [`ACKS_KEPT`] by id, for the history entry.
    passed_over: Vec<Arc<str>>,
    // What the progress view shows; the phase, version and outcome come
    // from the state.
    acked: usize,
    total: usize,
    waiting_for: Vec<Arc<str>>,
    /// The proxies as last observed.
    seen: Seen,
    /// What the load reports said of the fleet being drained, last.
    drain: Option<FleetDrain>,
    checks: Vec<CheckResult>,
    message: String,
    /// The traffic counted since the step in progress began its analysis.
    window: Option<Window>,
    /// What the fleets losing traffic in the step in progress did before
    /// its commit.
    baseline: Option<Baseline>,
}

/// Who and when, for a new operation.
#[derive(Clone, Debug)]
pub struct Origin {
    /// The operation's id.
    pub id: u64,
    /// Who asked.
    pub actor: String,
    /// When, wall clock.
    pub started: SystemTime,
}

impl Rollout {
    /// Starts an operation on a service currently in state `original`
    /// whose rollback point is `rollback_before`.
    pub fn start(
        origin: Origin,
        op: &Operation,
        plan: Plan,
        original: Change,
        rollback_before: Option<Split>,
        now: Instant,
    ) -> (Rollout, Vec<Action>) {
        let mut r = Rollout::new(
            origin,
            op.verb(),
            op.service(),
            plan,
            original,
            rollback_before,
        );
        let actions = if r.plan.wait_first {
            r.wait(now + r.plan.interval);
            Vec::new()
        } else {
            r.begin_step(now)
        };
        (r, actions)
    }

    /// Picks up an operation that was running when teal stopped, from its
    /// record; `service` names it, `now` and `wall` are the same instant on
    /// the monotonic and the wall clock.
    ///
    /// - Nothing of the step in progress committed: a retirement waits out
    ///   the rest of its delay, then for its fleet to drain (again, if it
    ///   was draining, with its whole drain timeout); anything else ends
    ///   `Interrupted` (earlier steps of a shift stay in effect).
    /// - The step committed: every proxy must confirm it again (and the
    ///   post-checks pass) within the timeout, or it is undone. A shift
    ///   then ends, `Interrupted` if steps were left.
    /// - An undo committed: every proxy must confirm it.
    pub(crate) fn resume(
        service: &str,
        rec: Record,
        version: &Version,
        now: Instant,
        wall: SystemTime,
    ) -> (Rollout, Vec<Action>) {
        // The record comes from a file: bound what it may ask to wait, as
        // `plan` does for a request, so no deadline can overflow the clock.
        let mut rec = rec;
        rec.plan.timeout = rec.plan.timeout.min(MAX_WAIT);
        rec.plan.interval = rec.plan.interval.min(MAX_WAIT);
        rec.plan.drain_timeout = rec.plan.drain_timeout.min(MAX_WAIT);
        if let Some(a) = rec.plan.analysis.as_mut() {
            a.window = a.window.min(crate::config::ANALYSIS_WINDOW.1);
        }
        let mut r = Rollout::new(
            Origin {
                id: rec.id,
                actor: rec.actor,
                started: rec.started,
            },
            rec.verb,
            service,
            rec.plan,
            rec.original,
            rec.rollback_before,
        );
        r.step = rec.step.max(1);
        r.confirmed = rec.confirmed_version.zip(rec.confirmed);
        r.resumed = true;
        r.warnings = rec.warnings;
        r.baseline = rec.baseline;
        if !matches!(rec.stage, Stage::Pending) {
            r.last_version = Some(version.clone());
        }
        let actions = match rec.stage {
            Stage::Pending => match rec.wait_until {
                Some(at) if r.verb == Verb::Retire => {
                    let left = at.duration_since(wall).unwrap_or_default().min(MAX_WAIT);
                    r.wait(now + left);
                    Vec::new()
                }
                _ => {
                    let reason = Reason::StoppedBeforeStep {
                        step: r.step,
                        steps: r.plan.steps.len(),
                    };
                    r.finish(Outcome::Interrupted { reason })
                }
            },
            Stage::Applied => {
                r.warnings.push(
                    "teal restarted while this operation ran; its version was confirmed again \
                     after the restart"
                        .into(),
                );
                r.confirming(version.clone(), now)
            }
            Stage::Undoing(undo) => {
                r.message = format!("{}; waiting for every proxy to go back", undo.reason);
                r.state = State::Undoing {
                    undo,
                    version: version.clone(),
                    deadline: now + r.plan.timeout,
                };
                vec![Action::ObserveProxies]
            }
        };
        (r, actions)
    }

    /// An operation at its first step, before anything happened; `start`
    /// and `resume` then put it where it is.
    fn new(
        origin: Origin,
        verb: Verb,
        service: &str,
        plan: Plan,
        original: Change,
        rollback_before: Option<Split>,
    ) -> Rollout {
        Rollout {
            id: origin.id,
            verb,
            service: service.to_owned(),
            actor: origin.actor,
            started: origin.started,
            plan,
            original,
            rollback_before,
            step: 1,
            state: State::Done(Outcome::Succeeded),
            confirmed: None,
            acks: HashMap::new(),
            convergence: None,
            resumed: false,
            last_version: None,
            warnings: Vec::new(),
            passed_over: Vec::new(),
            acked: 0,
            total: 0,
            waiting_for: Vec::new(),
            seen: Seen::default(),
            drain: None,
            checks: Vec::new(),
            message: String::new(),
            window: None,
            baseline: None,
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// What kind of operation.
    pub(crate) fn verb(&self) -> Verb {
        self.verb
    }

    pub(crate) fn actor(&self) -> &str {
        &self.actor
    }

    /// When it started, wall clock.
    pub(crate) fn started(&self) -> SystemTime {
        self.started
    }

    pub(crate) fn phase(&self) -> Phase {
        match &self.state {
            State::Waiting { .. } => Phase::Waiting,
            State::Draining { .. } => Phase::Draining,
            State::Preparing { .. } => Phase::Preparing,
            State::PreChecks { .. } => Phase::PreChecks,
            State::Committing | State::Confirming { .. } => Phase::Confirming,
            State::PostChecks { .. } => Phase::PostChecks,
            State::Analysing { .. } => Phase::Analysis,
            State::UndoCommitting(_) | State::Undoing { .. } => Phase::RollingBack,
            State::Done(_) => Phase::Done,
        }
    }

    /// The live view of the operation.
    pub fn progress(&self) -> Progress {
        let version = self.version().cloned();
        let target = match &self.state {
            State::UndoCommitting(u) | State::Undoing { undo: u, .. } => u.to.split.clone(),
            _ => self
                .step_change()
                .map(|c| c.split.clone())
                .unwrap_or_default(),
        };
        Progress {
            id: self.id,
            service: self.service.clone(),
            verb: self.verb,
            phase: self.phase(),
            step: self.step,
            steps: self.plan.steps.len(),
            target,
            version,
            acked: self.acked,
            total: self.total,
            waiting_for: self.waiting_for.iter().map(|id| id.to_string()).collect(),
            // Cordons are the driver's to know; it fills this in.
            not_waiting_for: Vec::new(),
            checks: self.checks.clone(),
            message: self.message.clone(),
            warnings: self.warnings.clone(),
            outcome: self.outcome().cloned(),
        }
    }

    /// The split every proxy confirmed last, as far as this operation
    /// knows: its last confirmed step's, or, before one, the split it
    /// started from (what was in effect when it began).
    pub(crate) fn confirmed_split(&self) -> &Split {
        self.confirmed
            .as_ref()
            .map_or(&self.original.split, |(_, change)| &change.split)
    }

    /// How it ended, once it has.
    pub(crate) fn outcome(&self) -> Option<&Outcome> {
        match &self.state {
            State::Done(o) => Some(o),
            _ => None,
        }
    }

    /// When the machine next needs an [`Event::Tick`].
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Waiting { until } => Some(*until),
            State::Draining { deadline } => Some(*deadline),
            State::Preparing { deadline }
            | State::PreChecks { deadline }
            | State::Confirming { deadline, .. }
            | State::PostChecks { deadline, .. }
            | State::Undoing { deadline, .. } => Some(*deadline),
            State::Analysing {
                ends,
                deadline,
                ended,
                ..
            } => Some(if *ended { *deadline } else { *ends }),
            State::Committing | State::UndoCommitting(_) | State::Done(_) => None,
        }
    }

    /// Whether proxy views matter now; the controller skips computing them
    /// on registry changes otherwise.
    pub(crate) fn wants_proxies(&self) -> bool {
        matches!(
            self.state,
            State::Preparing { .. } | State::Confirming { .. } | State::Undoing { .. }
        )
    }

    /// The fleets whose traffic the machine needs now, as
    /// [`Event::Traffic`] every report interval (empty: none).
    pub(crate) fn wants_traffic(&self) -> Vec<String> {
        match (&self.state, &self.window) {
            (State::Draining { .. }, _) => self.retiring().into_iter().collect(),
            (State::Analysing { .. }, Some(w)) => w.fleets().cloned().collect(),
            _ => Vec::new(),
        }
    }

    /// The fleet a retirement retires.
    fn retiring(&self) -> Option<String> {
        if self.verb != Verb::Retire {
            return None;
        }
        let change = self.plan.steps.first()?;
        change
            .retired
            .difference(&self.original.retired)
            .next()
            .cloned()
    }

    /// The version being confirmed (a step's or an undo's), if any.
    pub(crate) fn version(&self) -> Option<&Version> {
        match &self.state {
            State::Confirming { version, .. }
            | State::PostChecks { version, .. }
            | State::Analysing { version, .. }
            | State::Undoing { version, .. } => Some(version),
            _ => None,
        }
    }

    /// The last version the operation committed, a step's or an undo's.
    pub(crate) fn last_version(&self) -> Option<&Version> {
        self.last_version.as_ref()
    }

    /// Whether it is over.
    pub(crate) fn is_done(&self) -> bool {
        matches!(self.state, State::Done(_))
    }

    /// A retirement that has not started its step: waiting out its delay
    /// or for its fleet to drain. A rollback may still cancel it.
    pub(crate) fn is_pending_retirement(&self) -> bool {
        self.verb == Verb::Retire
            && matches!(self.state, State::Waiting { .. } | State::Draining { .. })
    }

    /// A pending retirement: the fleet, and when it goes (`now` and `wall`
    /// are the same instant on both clocks); while it waits for the fleet
    /// to drain, as soon as it has (`wall`).
    pub(crate) fn retirement(
        &self,
        now: Instant,
        wall: SystemTime,
    ) -> Option<(String, SystemTime)> {
        let at = match self.state {
            State::Waiting { until } => wall + until.saturating_duration_since(now),
            State::Draining { .. } => wall,
            _ => return None,
        };
        Some((self.retiring()?, at))
    }

    /// First push to last ACK of the last step every proxy confirmed
    /// (`None` when none was, or no proxy was there to confirm it), and
    /// the ACK delays for the last step pushed of the [`ACKS_KEPT`]
    /// slowest proxies, by proxy id.
    pub(crate) fn convergence(&self) -> (Option<Duration>, Vec<(String, Duration)>) {
        let mut slowest: Vec<(&Arc<str>, &Duration)> = self.acks.iter().collect();
        if slowest.len() > ACKS_KEPT {
            slowest.select_nth_unstable_by(ACKS_KEPT - 1, |a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            slowest.truncate(ACKS_KEPT);
        }
        slowest.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let acks = slowest
            .into_iter()
            .map(|(p, d)| (p.to_string(), *d))
            .collect();
        (self.convergence, acks)
    }

    /// The version that carried the last confirmed step.
    #[cfg(test)]
    pub(crate) fn confirmed_version(&self) -> Option<&Version> {
        self.confirmed.as_ref().map(|(v, _)| v)
    }

    /// The service's routing state before the operation.
    pub(crate) fn original(&self) -> &Change {
        &self.original
    }

    /// The split the operation set out to apply (its last step's).
    pub(crate) fn target(&self) -> Option<&Split> {
        self.plan.steps.last().map(|c| &c.split)
    }

    /// The rollback point once the operation is over, given the routing
    /// state then in effect ([`rollback_point`]).
    pub(crate) fn rollback_after(&self, in_effect: &Change) -> Option<Split> {
        // A rollback that went without some proxies leaves a split they
        // never confirmed: no point to go back to (a rollback point is
        // weights every proxy confirmed).
        if !self.passed_over.is_empty() && in_effect.split != self.original.split {
            return None;
        }
        rollback_point(&self.original, self.rollback_before.as_ref(), in_effect)
    }

    /// What to save with a commit, or at the start: enough to resolve the
    /// operation after a crash. `now` and `wall` are the same instant.
    pub(crate) fn record(&self, now: Instant, wall: SystemTime) -> Record {
        let stage = match &self.state {
            State::Committing
            | State::Confirming { .. }
            | State::PostChecks { .. }
            | State::Analysing { .. } => Stage::Applied,
            State::UndoCommitting(u) | State::Undoing { undo: u, .. } => Stage::Undoing(u.clone()),
            _ => Stage::Pending,
        };
        let wait_until = match self.state {
            State::Waiting { until } => Some(wall + until.saturating_duration_since(now)),
            // Its delay is over: resumed, it drains again at once.
            State::Draining { .. } => Some(wall),
            _ => None,
        };
        Record {
            id: self.id,
            verb: self.verb,
            actor: self.actor.clone(),
            started: self.started,
            plan: self.plan.clone(),
            original: self.original.clone(),
            rollback_before: self.rollback_before.clone(),
            step: self.step,
            stage,
            confirmed_version: self.confirmed.as_ref().map(|(v, _)| v.clone()),
            confirmed: self.confirmed.as_ref().map(|(_, c)| c.clone()),
            wait_until,
            warnings: self.warnings.clone(),
            baseline: self.baseline.clone(),
        }
    }

    fn step_change(&self) -> Option<&Change> {
        self.plan.steps.get(self.step.saturating_sub(1))
    }

    /// The fleets gaining traffic in the step in progress: the ones its
    /// checks look at, and its analysis judges. A fleet losing traffic is
    /// not checked, so a broken fleet never blocks moving away from it.
    fn check_fleets(&self) -> Vec<String> {
        self.moving(|before, after| after > before)
    }

    /// The fleets losing traffic in the step in progress: its baseline.
    fn losing_fleets(&self) -> Vec<String> {
        self.moving(|before, after| after < before)
    }

    /// The fleets whose weight before the step in progress and in it
    /// pass `moved`.
    fn moving(&self, moved: impl Fn(u32, u32) -> bool) -> Vec<String> {
        let before = match self.step {
            1 => &self.original,
            n => self.plan.steps.get(n - 2).unwrap_or(&self.original),
        };
        self.step_change()
            .map(|c| {
                c.split
                    .iter()
                    .filter(|(f, w)| moved(before.split.get(*f).copied().unwrap_or(0), **w))
                    .map(|(f, _)| f.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn wait(&mut self, until: Instant) {
        self.message = format!(
            "waiting {:?} before step {} of {}",
            self.plan.interval,
            self.step,
            self.plan.steps.len()
        );
        self.state = State::Waiting { until };
    }

    fn begin_step(&mut self, now: Instant) -> Vec<Action> {
        self.acks.clear();
        self.message = "waiting for every proxy to hold the current configuration, \
                        every fleet's clusters and endpoints included"
            .into();
        self.state = State::Preparing {
            deadline: now + self.plan.timeout,
        };
        vec![Action::ObserveProxies]
    }

    fn commit(&mut self) -> Vec<Action> {
        let Some(change) = self.step_change().cloned() else {
            return self.finish(Outcome::Refused {
                reason: Reason::NothingToDo,
            });
        };
        self.message = "committing".into();
        self.state = State::Committing;
        self.baseline = None;
        let losing = self.losing_fleets();
        match &self.plan.analysis {
            Some(a) if a.over_baseline.is_some() && !losing.is_empty() => vec![
                Action::MeasureBaseline {
                    fleets: losing,
                    window: a.window,
                },
                Action::Commit(change),
            ],
            _ => vec![Action::Commit(change)],
        }
    }

    fn confirming(&mut self, version: Version, now: Instant) -> Vec<Action> {
        self.last_version = Some(version.clone());
        // Room for every proxy's ACK time at once, not grown (and rehashed)
        // a few times per flip.
        self.acks.reserve(self.seen.len());
        self.message = format!("waiting for every proxy to apply {version}");
        self.state = State::Confirming {
            version,
            since: now,
            deadline: now + self.plan.timeout,
        };
        vec![Action::ObserveProxies]
    }

    fn finish(&mut self, outcome: Outcome) -> Vec<Action> {
        self.message = match outcome.reason() {
            None => "done".into(),
            Some(reason) => reason.to_string(),
        };
        self.state = State::Done(outcome.clone());
        vec![Action::Finish(outcome)]
    }

    /// Whether a change of this operation (an earlier step, or the step in
    /// progress) is in effect.
    fn committed_any(&self) -> bool {
        self.step > 1
            || matches!(
                self.state,
                State::Confirming { .. } | State::PostChecks { .. } | State::Analysing { .. }
            )
    }

    /// Something failed: before anything was committed the operation is
    /// refused; after, every proxy goes back to the original state.
    fn fail(&mut self, reason: Reason) -> Vec<Action> {
        if !self.committed_any() {
            return self.finish(Outcome::Refused { reason });
        }
        self.undo(Undo {
            reason,
            abort: false,
            to: self.original.clone(),
        })
    }

    fn undo(&mut self, undo: Undo) -> Vec<Action> {
        self.message = format!("{}; putting every proxy back", undo.reason);
        let to = undo.to.clone();
        self.state = State::UndoCommitting(undo);
        vec![Action::Commit(to)]
    }

    fn step_done(&mut self, version: Version, now: Instant) -> Vec<Action> {
        let change = self.step_change().cloned().unwrap_or_default();
        self.confirmed = Some((version, change));
        let steps = self.plan.steps.len();
        if self.step >= steps {
            return self.finish(Outcome::Succeeded);
        }
        if self.resumed {
            return self.finish(Outcome::Interrupted {
                reason: Reason::RestartedDuring {
                    step: self.step,
                    steps,
                },
            });
        }
        self.step += 1;
        if self.plan.interval.is_zero() {
            self.begin_step(now)
        } else {
            self.wait(now + self.plan.interval);
            Vec::new()
        }
    }

    /// Takes in an observation of the proxies (else does nothing), moving
    /// the views out of `event` (the phases only look at its kind). In
    /// `Confirming`, a proxy seen confirmed for the first time has its ACK
    /// time recorded.
    fn observe(&mut self, event: &mut Event, now: Instant) {
        let (changed, gone) = match event {
            Event::Proxies(all) => {
                let all = std::mem::take(all);
                if let State::Confirming { since, .. } = &self.state {
                    let after = now.saturating_duration_since(*since);
                    for view in all.iter().filter(|v| v.confirmed) {
                        self.acks.entry(view.id.clone()).or_insert(after);
                    }
                }
                self.seen.replace(all);
                return;
            }
            Event::ProxiesChanged { changed, gone } => {
                (std::mem::take(changed), std::mem::take(gone))
            }
            _ => return,
        };
        for id in &gone {
            self.seen.remove(id);
        }
        let since = match &self.state {
            State::Confirming { since, .. } => Some(*since),
            _ => None,
        };
        for view in changed {
            if let Some(since) = since
                && view.confirmed
            {
                // One lookup: the first confirmation of a proxy is kept.
                self.acks
                    .entry(view.id.clone())
                    .or_insert_with(|| now.saturating_duration_since(since));
            }
            self.seen.insert(view);
        }
    }

    /// Updates the progress counts; true when every proxy is done.
    fn track(&mut self, until: Until) -> bool {
        let waiting = self.seen.waiting_len(until);
        self.total = self.seen.len();
        self.acked = self.total - waiting;
        // Made again only when it changes: the first ids of the set move
        // only when one of them answers, a few hundred times in a flip of
        // thousands of proxies, not at every ACK.
        if !self
            .seen
            .waiting(until)
            .take(WAITING_SHOWN)
            .eq(self.waiting_for.iter())
        {
            self.waiting_for = self
                .seen
                .waiting(until)
                .take(WAITING_SHOWN)
                .cloned()
                .collect();
        }
        waiting == 0
    }

    /// A rollback's preparation: the proxies not ready (not in sync with
    /// the configuration served, or rejecting it) are not waited for;
    /// they are kept for the history entry and named in a warning.
    fn pass_over_unready(&mut self) {
        self.track(Until::Ready);
        let unready: BTreeSet<&Arc<str>> = self
            .seen
            .waiting(Until::Ready)
            .chain(self.seen.nacking().map(|p| &p.id))
            .collect();
        if unready.is_empty() {
            return;
        }
        let count = unready.len();
        self.passed_over = unready.into_iter().take(ACKS_KEPT).cloned().collect();
        let mut named = self
            .passed_over
            .iter()
            .take(WAITING_SHOWN)
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        if count > WAITING_SHOWN {
            named.push_str(&format!(" and {} more", count - WAITING_SHOWN));
        }
        self.warnings.push(format!(
            "the rollback did not wait for proxies not in sync with the current configuration \
             or rejecting it: {named}; they were sent it too"
        ));
    }

    /// The proxies not done yet: the first [`WAITING_SHOWN`] by id, and
    /// how many more.
    fn waiting_list(&self) -> Proxies {
        Proxies {
            named: self.waiting_for.iter().map(|id| id.to_string()).collect(),
            more: (self.total - self.acked).saturating_sub(self.waiting_for.len()),
        }
    }

    /// Runs the step's checks (entering `checking`, with `what` for the
    /// message), or goes on with `otherwise` when there are none to run.
    fn checks_or(
        &mut self,
        checking: State,
        what: &str,
        otherwise: impl FnOnce(&mut Self) -> Vec<Action>,
    ) -> Vec<Action> {
        let fleets = self.check_fleets();
        if !self.plan.checks || fleets.is_empty() {
            return otherwise(self);
        }
        self.message = format!("checking {}{what}", fleets.join(", "));
        self.state = checking;
        vec![Action::RunChecks(fleets)]
    }

    /// Handles one event at time `now`.
    pub(crate) fn on_event(&mut self, mut event: Event, now: Instant) -> Vec<Action> {
        self.observe(&mut event, now);
        match self.state.clone() {
            State::Waiting { until } => self.on_waiting(event, until, now),
            State::Draining { deadline } => self.on_draining(event, deadline, now),
            State::Preparing { deadline } => self.on_preparing(event, deadline, now),
            State::PreChecks { deadline } => self.on_pre_checks(event, deadline, now),
            State::Committing => self.on_committing(event, now),
            State::Confirming {
                version,
                since: _,
                deadline,
            } => self.on_confirming(event, version, deadline, now),
            State::PostChecks { version, deadline } => {
                self.on_post_checks(event, version, deadline, now)
            }
            State::Analysing {
                version,
                deadline,
                ends,
                ended,
            } => self.on_analysing(event, version, ends, deadline, ended, now),
            State::UndoCommitting(undo) => self.on_undo_committing(event, undo, now),
            State::Undoing {
                undo,
                version: _,
                deadline,
            } => self.on_undoing(event, undo, deadline, now),
            State::Done(_) => Vec::new(),
        }
    }

    fn on_waiting(&mut self, event: Event, until: Instant, now: Instant) -> Vec<Action> {
        match event {
            Event::Tick if now >= until => self.after_wait(now),
            _ => Vec::new(),
        }
    }

    /// The wait before a step is over: a retirement that waits for its
    /// fleet to drain starts draining, anything else its step.
    fn after_wait(&mut self, now: Instant) -> Vec<Action> {
        if self.verb != Verb::Retire || self.plan.drain_timeout.is_zero() {
            return self.begin_step(now);
        }
        let fleet = self.retiring().unwrap_or_default();
        self.message = format!("waiting for every proxy to report {fleet} drained");
        self.drain = None;
        self.state = State::Draining {
            deadline: now + self.plan.drain_timeout,
        };
        // At once: a fleet idle for long is retired without waiting for
        // the next report interval.
        vec![Action::ObserveTraffic]
    }

    fn on_draining(&mut self, event: Event, deadline: Instant, now: Instant) -> Vec<Action> {
        match event {
            Event::Traffic(fleets) => {
                let fleet = self.retiring();
                let Some(traffic) = fleets.iter().find(|f| Some(&f.fleet) == fleet.as_ref()) else {
                    return Vec::new();
                };
                let drain = drain::judge(traffic, WAITING_SHOWN);
                if drain.is_drained() {
                    // With no proxy at all, none carries anything; the
                    // step then warns that no proxy confirmed it.
                    self.drain = Some(drain);
                    return self.begin_step(now);
                }
                self.message = format!("waiting for {} to drain: {drain}", drain.fleet);
                self.acked = drain.idle;
                self.total = drain.proxies;
                self.waiting_for = drain
                    .not_drained(WAITING_SHOWN)
                    .into_iter()
                    .map(Arc::from)
                    .collect();
                self.drain = Some(drain);
                Vec::new()
            }
            Event::Tick if now >= deadline => {
                let reason = Reason::DrainTimedOut {
                    fleet: self.retiring().unwrap_or_default(),
                    within: self.plan.drain_timeout,
                    last: self.drain.take().map(Box::new),
                };
                self.fail(reason)
            }
            _ => Vec::new(),
        }
    }

    fn on_preparing(&mut self, event: Event, deadline: Instant, now: Instant) -> Vec<Action> {
        match event {
            Event::Proxies(_) | Event::ProxiesChanged { .. } => {
                if self.verb == Verb::Rollback {
                    // The way back waits for no proxy to be ready: the
                    // one stuck or rejecting its configuration may be why
                    // it is needed. Its target's clusters are served
                    // already (a rollback never goes to a retired fleet),
                    // so every proxy gets it whole; those not in sync are
                    // named, and confirming still waits for them.
                    self.pass_over_unready();
                } else {
                    if let Some(p) = self.seen.first_nack() {
                        let reason = Reason::RejectingCurrent {
                            proxy: p.id.to_string(),
                            why: p.nack.clone().unwrap_or_default(),
                        };
                        return self.fail(reason);
                    }
                    if !self.track(Until::Ready) {
                        return Vec::new();
                    }
                }
                let checking = State::PreChecks {
                    deadline: now + self.plan.timeout,
                };
                self.checks_or(checking, "", |r| r.commit())
            }
            Event::Tick if now >= deadline => {
                let waiting = self.waiting_list();
                self.fail(Reason::PrepareTimedOut { waiting })
            }
            _ => Vec::new(),
        }
    }

    fn on_pre_checks(&mut self, event: Event, deadline: Instant, now: Instant) -> Vec<Action> {
        match event {
            Event::Checks(results) => {
                let failed = failures(&results);
                self.checks = results;
                if failed.is_empty() {
                    self.commit()
                } else {
                    self.fail(Reason::ChecksFailed {
                        after_switch: false,
                        failed,
                    })
                }
            }
            Event::Tick if now >= deadline => self.fail(Reason::ChecksTimedOut {
                within: self.plan.timeout,
            }),
            _ => Vec::new(),
        }
    }

    fn on_committing(&mut self, event: Event, now: Instant) -> Vec<Action> {
        match event {
            Event::Baseline(b) => {
                self.baseline = Some(b);
                Vec::new()
            }
            Event::Committed { version } => self.confirming(version, now),
            // Nothing was saved or published: the state is what it was
            // before this step.
            Event::CommitFailed(error) => self.fail(Reason::CommitFailed { error }),
            _ => Vec::new(),
        }
    }

    fn on_confirming(
        &mut self,
        event: Event,
        version: Version,
        deadline: Instant,
        now: Instant,
    ) -> Vec<Action> {
        let safe = self.verb == Verb::Rollback;
        match event {
            Event::Proxies(_) | Event::ProxiesChanged { .. } => {
                if !safe && let Some(p) = self.seen.first_nack() {
                    let reason = Reason::Rejected {
                        proxy: p.id.to_string(),
                        why: p.nack.clone().unwrap_or_default(),
                    };
                    return self.fail(reason);
                }
                if !self.track(Until::Settled) {
                    return Vec::new();
                }
                self.all_answered(version, now)
            }
            Event::Tick if now >= deadline => {
                let waiting = self.waiting_list();
                if safe {
                    self.finish(Outcome::Unconfirmed {
                        reason: Reason::RollbackUnconfirmed {
                            within: self.plan.timeout,
                            waiting,
                        },
                    })
                } else {
                    self.fail(Reason::ApplyTimedOut { waiting })
                }
            }
            _ => Vec::new(),
        }
    }

    /// Every proxy confirmed the step's version or (a rollback's) rejected
    /// it: on to the post-checks, or the end.
    fn all_answered(&mut self, version: Version, now: Instant) -> Vec<Action> {
        let rejections = rejections(&self.seen);
        if !rejections.is_empty() {
            return self.finish(Outcome::Unconfirmed {
                reason: Reason::RollbackRejected { rejections },
            });
        }
        // With no proxy left connected, not every proxy that was sent the
        // version confirmed it: no convergence to record.
        let none = self.seen.is_empty();
        self.convergence = if none {
            None
        } else {
            self.acks.values().max().copied()
        };
        if none {
            let warning = format!(
                "no connected proxy routes {}: no proxy confirmed the change",
                self.service
            );
            if !self.warnings.contains(&warning) {
                self.warnings.push(warning);
            }
        }
        let checking = State::PostChecks {
            version: version.clone(),
            deadline: now + self.plan.timeout,
        };
        self.checks_or(checking, " after the switch", |r| r.analyse(version, now))
    }

    fn on_post_checks(
        &mut self,
        event: Event,
        version: Version,
        deadline: Instant,
        now: Instant,
    ) -> Vec<Action> {
        let failed = match event {
            Event::Checks(results) => {
                let failed = failures(&results);
                self.checks = results;
                if failed.is_empty() {
                    return self.analyse(version, now);
                }
                Reason::ChecksFailed {
                    after_switch: true,
                    failed,
                }
            }
            Event::Tick if now >= deadline => Reason::ChecksTimedOut {
                within: self.plan.timeout,
            },
            _ => return Vec::new(),
        };
        if self.verb == Verb::Rollback {
            return self.finish(Outcome::Unconfirmed {
                reason: Reason::RollbackChecks {
                    checks: Box::new(failed),
                },
            });
        }
        self.fail(failed)
    }

    /// The step's change is confirmed and its post-checks passed: judge
    /// the traffic of the fleets gaining it, when the plan says so (never a
    /// rollback's), else the step is done.
    fn analyse(&mut self, version: Version, now: Instant) -> Vec<Action> {
        let gaining = self.check_fleets();
        let Some(criteria) = self
            .plan
            .analysis
            .as_ref()
            .filter(|_| self.verb != Verb::Rollback)
        else {
            return self.step_done(version, now);
        };
        if gaining.is_empty() {
            return self.step_done(version, now);
        }
        let window = Window::new(&gaining, now, criteria.window);
        self.message = format!(
            "watching the traffic of {} for {:?}",
            gaining.join(", "),
            criteria.window
        );
        self.state = State::Analysing {
            version,
            ends: window.ends(),
            deadline: window.ends() + self.plan.timeout,
            ended: false,
        };
        self.window = Some(window);
        vec![Action::ObserveTraffic]
    }

    fn on_analysing(
        &mut self,
        event: Event,
        version: Version,
        ends: Instant,
        deadline: Instant,
        ended: bool,
        now: Instant,
    ) -> Vec<Action> {
        match event {
            Event::Traffic(traffic) => {
                if let Some(w) = self.window.as_mut() {
                    w.observe(&traffic);
                }
                self.judge(version, ends, deadline, now)
            }
            // Judged on the proxies' counts as they are at the end, not as
            // the last report interval left them.
            Event::Tick if !ended && now >= ends => {
                self.state = State::Analysing {
                    version,
                    ends,
                    deadline,
                    ended: true,
                };
                vec![Action::ObserveTraffic]
            }
            Event::Tick if ended && now >= deadline => self.judge(version, ends, deadline, now),
            _ => Vec::new(),
        }
    }

    /// What the window says at `now`, acted on.
    fn judge(
        &mut self,
        version: Version,
        ends: Instant,
        deadline: Instant,
        now: Instant,
    ) -> Vec<Action> {
        let (Some(criteria), Some(window)) = (&self.plan.analysis, &self.window) else {
            return self.step_done(version, now);
        };
        let allowed = criteria.allowed(self.baseline.as_ref());
        let verdict = window.verdict(&allowed, criteria.min_requests, now);
        let policy = criteria.too_few_requests;
        let watched = now.saturating_duration_since(window.started());
        let (fleet, shortfall) = match verdict {
            Verdict::Fail(figures) => return self.fail(Reason::TrafficErrors(figures)),
            Verdict::Pass => return self.step_done(version, now),
            Verdict::Pending => {
                self.message = format!(
                    "watching the traffic: {}; {:?} left",
                    window.summary(),
                    whole_seconds(ends.saturating_duration_since(now))
                );
                return Vec::new();
            }
            Verdict::TooFew { fleet, shortfall } => (fleet, shortfall),
        };
        match policy {
            TooFewRequests::Pass => {
                let warning = format!(
                    "{fleet}'s traffic could not be judged within {watched:?}: {shortfall}; \
                     passed, as `too_few_requests: pass` says"
                );
                self.warnings.push(warning);
                self.step_done(version, now)
            }
            TooFewRequests::Fail => self.fail(Reason::TrafficUnjudged {
                fleet,
                shortfall,
                within: watched,
                waited: false,
            }),
            TooFewRequests::Wait if now >= deadline => self.fail(Reason::TrafficUnjudged {
                fleet,
                shortfall,
                within: watched,
                waited: true,
            }),
            TooFewRequests::Wait => {
                self.message = format!(
                    "{fleet}'s traffic cannot be judged yet: {shortfall}; waiting for more, \
                     {:?} left",
                    whole_seconds(deadline.saturating_duration_since(now))
                );
                self.state = State::Analysing {
                    version,
                    ends,
                    deadline,
                    ended: true,
                };
                Vec::new()
            }
        }
    }

    fn on_undo_committing(&mut self, event: Event, undo: Undo, now: Instant) -> Vec<Action> {
        match event {
            Event::Committed { version } => {
                self.last_version = Some(version.clone());
                self.message = format!("{}; waiting for every proxy to go back", undo.reason);
                self.acks.clear();
                self.state = State::Undoing {
                    undo,
                    version,
                    deadline: now + self.plan.timeout,
                };
                vec![Action::ObserveProxies]
            }
            Event::CommitFailed(error) => self.finish(Outcome::Unconfirmed {
                reason: Reason::UndoNotCommitted {
                    cause: Box::new(undo.reason),
                    error,
                },
            }),
            _ => Vec::new(),
        }
    }

    fn on_undoing(
        &mut self,
        event: Event,
        undo: Undo,
        deadline: Instant,
        now: Instant,
    ) -> Vec<Action> {
        match event {
            Event::Proxies(_) | Event::ProxiesChanged { .. } => {
                if !self.track(Until::Settled) {
                    return Vec::new();
                }
                let rejections = rejections(&self.seen);
                if !rejections.is_empty() {
                    return self.finish(Outcome::Unconfirmed {
                        reason: Reason::UndoRejected {
                            cause: Box::new(undo.reason),
                            rejections,
                        },
                    });
                }
                self.finish(if undo.abort {
                    Outcome::Aborted {
                        reason: Reason::Undone {
                            cause: Box::new(undo.reason),
                        },
                    }
                } else {
                    Outcome::RolledBack {
                        reason: undo.reason,
                    }
                })
            }
            Event::Tick if now >= deadline => {
                let waiting = self.waiting_list();
                self.finish(Outcome::Unconfirmed {
                    reason: Reason::UndoUnconfirmed {
                        cause: Box::new(undo.reason),
                        waiting,
                    },
                })
            }
            _ => Vec::new(),
        }
    }

    /// Asked by the driver just before it carries out an
    /// [`Action::Commit`] of this operation, with the service's fleets
    /// that have no endpoints in the config served at that moment.
    /// Endpoints can go while an operation prepares, checks or waits
    /// between steps (a registration expires or is removed, pods go
    /// unready, a reload): the plan's check is no guarantee by then. A
    /// step that would send traffic to an empty fleet is not committed:
    /// it fails as a failed check does (refused before anything was
    /// committed; else every proxy goes back to where the operation
    /// started). An undo always goes: it is the way back.
    pub(crate) fn commit_gate(&mut self, empty: &BTreeSet<String>) -> Gate {
        if !matches!(self.state, State::Committing) {
            return Gate::Go;
        }
        let Some(change) = self.step_change() else {
            return Gate::Go;
        };
        let Some(fleet) = change
            .split
            .iter()
            .find(|(f, w)| **w > 0 && empty.contains(*f))
            .map(|(f, _)| f.clone())
        else {
            return Gate::Go;
        };
        let steps = self.plan.steps.len();
        let reason = Reason::FleetEmptied {
            service: self.service.clone(),
            fleet,
            step: (steps > 1).then_some((self.step, steps)),
        };
        Gate::Withdrawn(self.fail(reason))
    }

    /// Proxies a rollback did not wait for before its switch: the first
    /// [`ACKS_KEPT`] by id.
    pub(crate) fn passed_over(&self) -> impl Iterator<Item = &str> {
        self.passed_over.iter().map(|id| &**id)
    }

    /// An operator (`by`) asks to stop. Before the step in progress is
    /// committed the operation ends; after, that step is undone (back to
    /// the last confirmed step). A rollback and an undo in progress cannot
    /// be stopped: they are the way back, and they end on their own.
    pub(crate) fn abort(&mut self, by: &str, _now: Instant) -> Result<Vec<Action>, RolloutError> {
        self.stop(by, false)
    }

    /// A rollback `by` asked for cancels this retirement: it stops as
    /// [`Rollout::abort`] would stop it.
    pub(crate) fn cancel_retirement(
        &mut self,
        by: &str,
        _now: Instant,
    ) -> Result<Vec<Action>, RolloutError> {
        self.stop(by, true)
    }

    fn stop(&mut self, by: &str, for_rollback: bool) -> Result<Vec<Action>, RolloutError> {
        match &self.state {
            State::Waiting { .. }
            | State::Draining { .. }
            | State::Preparing { .. }
            | State::PreChecks { .. } => {
                let reason = Reason::StoppedBeforeCommit {
                    by: by.to_owned(),
                    for_rollback,
                    kept: self.step.saturating_sub(1),
                };
                Ok(self.finish(Outcome::Aborted { reason }))
            }
            State::Confirming { .. } | State::PostChecks { .. } | State::Analysing { .. }
                if self.verb != Verb::Rollback =>
            {
                let to = self
                    .confirmed
                    .as_ref()
                    .map(|(_, c)| c.clone())
                    .unwrap_or_else(|| self.original.clone());
                Ok(self.undo(Undo {
                    reason: Reason::StoppedBy {
                        by: by.to_owned(),
                        for_rollback,
                    },
                    abort: true,
                    to,
                }))
            }
            State::Confirming { .. } | State::PostChecks { .. } | State::Analysing { .. } => {
                Err(RolloutError::CannotAbort {
                    id: self.id,
                    why: "a rollback is not undone; it ends when every proxy confirms it or \
                          after its timeout"
                        .into(),
                })
            }
            State::Committing | State::UndoCommitting(_) | State::Undoing { .. } => {
                Err(RolloutError::CannotAbort {
                    id: self.id,
                    why: "every proxy is being put back; that ends when they confirm it or \
                          after its timeout"
                        .into(),
                })
            }
            State::Done(_) => Err(RolloutError::NoSuchOperation(self.id)),
        }
    }

    /// The service was removed from the config: the operation ends
    /// `Aborted` where it is.
    pub(crate) fn end_removed(&mut self) -> Vec<Action> {
        if self.is_done() {
            return Vec::new();
        }
        self.finish(Outcome::Aborted {
            reason: Reason::ServiceRemoved,
        })
    }

    /// teal is shutting down: the operation ends `Aborted` where it is,
    /// and what is committed stays (its rollback point says where
    /// `teal rollback` goes). A pending retirement (waiting or draining)
    /// is not ended: it is saved, and resumes when teal starts again.
    pub(crate) fn shut_down(&mut self) -> Option<Outcome> {
        if self.is_done() || self.is_pending_retirement() {
            return None;
        }
        let reason = Reason::ShutDown {
            phase: self.phase(),
        };
        self.finish(Outcome::Aborted { reason });
        self.outcome().cloned()
    }
}

/// The proxies that rejected the version being confirmed and have not
/// applied it since.
fn rejections(seen: &Seen) -> Vec<Rejection> {
    seen.nacking()
        .filter_map(|p| {
            p.nack
                .as_ref()
                .filter(|_| !p.confirmed)
                .map(|why| Rejection {
                    proxy: p.id.to_string(),
                    why: why.clone(),
                })
        })
        .collect()
}

/// `d` rounded up to whole seconds, for what a progress message says is
/// left.
fn whole_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs() + u64::from(d.subsec_nanos() > 0))
}

fn failures(results: &[CheckResult]) -> Vec<CheckResult> {
    results.iter().filter(|r| !r.ok).cloned().collect()
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
