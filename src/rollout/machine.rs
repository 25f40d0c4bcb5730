//! The pure rollout state machine.
//!
//! A [`Rollout`] takes [`Event`]s (the proxies' state, check results, the
//! controller's confirmation that a version was published, the clock) and
//! returns [`Action`]s (run checks, commit a change, finish). It does no
//! I/O and reads no clock: `now` is passed in, so every order of events is
//! a plain test.
//!
//! ```text
//!          ┌──────────── every step ─────────────┐
//! start → Preparing → PreChecks → Committing → Confirming → PostChecks ─┬→ Done
//!            │ timeout    │ fail       │ fail      │ NACK/timeout │ fail  └→ Waiting → next step
//!            ▼            ▼            ▼           ▼              ▼
//!         Refused     Refused*     Refused*     UndoCommitting → Undoing → RolledBack
//! ```
//! `*` On the first step nothing was committed yet, so the operation is
//! refused; on a later step of a shift, earlier steps are undone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::{CheckResult, Operation, Outcome, Phase, Progress, RolloutError, Split};
use crate::config::Weights;

/// One proxy, as the rollout needs to see it. The controller computes it
/// from the proxy registry and the snapshot being served.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyView {
    /// The proxy's node id.
    pub id: String,
    /// It has ACKed the clusters and endpoints of the snapshot being
    /// served, so every fleet's cluster is warm on it.
    pub prepared: bool,
    /// It has applied the committed version (or a later one) on every type
    /// it subscribes to.
    pub confirmed: bool,
    /// Before a commit: it rejects the configuration it was last sent.
    /// After: it rejected the committed version or a later one. With the
    /// proxy's reason.
    pub nack: Option<String>,
}

/// A service's routing state to publish: every fleet's weight, and which
/// fleets are retired (no endpoints).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// The weights to serve.
    pub split: Split,
    /// Fleets served with no endpoints.
    pub retired: BTreeSet<String>,
}

/// Something that happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Time passed; deadlines may have expired.
    Tick,
    /// The proxies in the affected groups, as they are now.
    Proxies(Vec<ProxyView>),
    /// The checks asked for finished.
    Checks(Vec<CheckResult>),
    /// The change asked for was made durable and published as `version`.
    Committed {
        /// The fleet-wide version carrying it.
        version: String,
    },
    /// The change asked for could not be committed.
    CommitFailed(String),
    /// The operator asked to stop.
    Abort(String),
}

/// Something the controller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Run the service's checks against these fleets, then send
    /// [`Event::Checks`].
    RunChecks(Vec<String>),
    /// Make this change durable, publish it, then send
    /// [`Event::Committed`] (or [`Event::CommitFailed`]).
    Commit(Change),
    /// The operation is over.
    Finish(Outcome),
}

/// Where the machine is.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    Preparing,
    PreChecks,
    Committing,
    Confirming,
    PostChecks,
    Waiting { until: Instant },
    UndoCommitting { reason: String },
    Undoing { reason: String },
    Done,
}

/// What the operation will do, worked out from the request and the
/// service's current state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The changes, one per step.
    pub steps: Vec<Change>,
    /// Run checks?
    pub checks: bool,
    /// Deadline of each step's prepare and confirm phases.
    pub timeout: Duration,
    /// Pause before each step after the first (and before a retirement).
    pub interval: Duration,
    /// Wait `interval` before the first step too (retirement).
    pub wait_first: bool,
}

/// A service as the planner needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceView<'a> {
    /// The service's name.
    pub name: &'a str,
    /// Its fleets.
    pub fleets: Vec<&'a str>,
    /// The current split.
    pub split: &'a Split,
    /// The fleet live before the last switch.
    pub previous: Option<&'a str>,
    /// Retired fleets.
    pub retired: &'a BTreeSet<String>,
}

impl ServiceView<'_> {
    /// The fleet with the most weight (ties: first by name).
    pub fn live(&self) -> &str {
        live_of(self.split)
    }

    fn check_fleet(&self, fleet: &str) -> Result<(), RolloutError> {
        if !self.fleets.contains(&fleet) {
            return Err(RolloutError::UnknownFleet {
                service: self.name.to_owned(),
                fleet: fleet.to_owned(),
            });
        }
        Ok(())
    }

    /// Checks `split` against the service's fleets with
    /// [`Weights::check`], the rule [`Weights::set`] applies too.
    fn check_split(&self, split: &Split) -> Result<(), RolloutError> {
        Weights::check(self.name, |f| self.fleets.contains(&f), split)?;
        Ok(())
    }

    /// The service's routing state now, which an undo returns to.
    pub fn current(&self) -> Change {
        Change {
            split: self.split.clone(),
            retired: self.retired.clone(),
        }
    }

    /// The changes that send traffic per `split`: a fleet that is retired
    /// and gets weight first has its endpoints restored in a step of its
    /// own, so proxies hold them before any route sends traffic there.
    fn steps_to(&self, splits: &[Split]) -> Vec<Change> {
        let mut retired = self.retired.clone();
        let mut steps = Vec::new();
        for split in splits {
            let full = self.full(split);
            let reviving: Vec<String> = full
                .iter()
                .filter(|(f, w)| **w > 0 && retired.contains(*f))
                .map(|(f, _)| f.clone())
                .collect();
            if !reviving.is_empty() {
                for f in &reviving {
                    retired.remove(f);
                }
                let split = steps
                    .last()
                    .map(|c: &Change| c.split.clone())
                    .unwrap_or_else(|| self.split.clone());
                steps.push(Change {
                    split,
                    retired: retired.clone(),
                });
            }
            steps.push(Change {
                split: full,
                retired: retired.clone(),
            });
        }
        steps
    }

    fn full(&self, split: &Split) -> Split {
        self.fleets
            .iter()
            .map(|f| ((*f).to_owned(), split.get(*f).copied().unwrap_or(0)))
            .collect()
    }
}

/// The fleet with the most weight (ties: first by name).
pub fn live_of(split: &Split) -> &str {
    let mut best: Option<(&str, u32)> = None;
    for (f, w) in split {
        if best.is_none_or(|(_, bw)| *w > bw) {
            best = Some((f, *w));
        }
    }
    best.map(|(f, _)| f).unwrap_or("")
}

fn all_to(fleet: &str) -> Split {
    BTreeMap::from([(fleet.to_owned(), Weights::TOTAL)])
}

/// Works out what `op` does to `service`, or why it cannot be done.
pub fn plan(op: &Operation, service: &ServiceView<'_>) -> Result<Plan, RolloutError> {
    match op {
        Operation::Flip {
            to,
            skip_checks,
            timeout,
            ..
        } => {
            let target = match to {
                Some(t) => t.clone(),
                None => {
                    let others: Vec<&&str> = service
                        .fleets
                        .iter()
                        .filter(|f| **f != service.live())
                        .collect();
                    match others.as_slice() {
                        [one] => (**one).to_owned(),
                        _ => {
                            return Err(RolloutError::Invalid(format!(
                                "service {:?} has {} fleets; say which with --to",
                                service.name,
                                service.fleets.len()
                            )));
                        }
                    }
                }
            };
            service.check_fleet(&target)?;
            let split = all_to(&target);
            service.check_split(&split)?;
            if service.full(&split) == *service.split {
                return Err(RolloutError::Invalid(format!(
                    "{target:?} already takes all of {:?}'s traffic",
                    service.name
                )));
            }
            Ok(Plan {
                steps: service.steps_to(&[split]),
                checks: !skip_checks,
                timeout: *timeout,
                interval: Duration::ZERO,
                wait_first: false,
            })
        }
        Operation::Shift {
            steps,
            interval,
            skip_checks,
            timeout,
            ..
        } => {
            if steps.is_empty() {
                return Err(RolloutError::Invalid(
                    "a shift needs at least one step".into(),
                ));
            }
            for s in steps {
                service.check_split(s)?;
            }
            Ok(Plan {
                steps: service.steps_to(steps),
                checks: !skip_checks,
                timeout: *timeout,
                interval: *interval,
                wait_first: false,
            })
        }
        Operation::Rollback { timeout, .. } => {
            let Some(previous) = service.previous else {
                return Err(RolloutError::Invalid(format!(
                    "service {:?} has no previous live fleet to go back to",
                    service.name
                )));
            };
            let split = all_to(previous);
            service.check_split(&split)?;
            Ok(Plan {
                steps: service.steps_to(&[split]),
                checks: true,
                timeout: *timeout,
                interval: Duration::ZERO,
                wait_first: false,
            })
        }
        Operation::Retire { fleet, after, .. } => {
            service.check_fleet(fleet)?;
            if service.split.get(fleet).copied().unwrap_or(0) > 0 {
                return Err(RolloutError::Invalid(format!(
                    "fleet {fleet:?} still takes traffic; flip away from it first"
                )));
            }
            if service.retired.contains(fleet) {
                return Err(RolloutError::Invalid(format!(
                    "fleet {fleet:?} is already retired"
                )));
            }
            Ok(Plan {
                steps: vec![Change {
                    split: service.split.clone(),
                    retired: {
                        let mut r = service.retired.clone();
                        r.insert(fleet.clone());
                        r
                    },
                }],
                checks: false,
                timeout: Duration::from_secs(30),
                interval: *after,
                wait_first: true,
            })
        }
    }
}

/// One running operation.
#[derive(Debug)]
pub struct Rollout {
    plan: Plan,
    original: Change,
    state: State,
    deadline: Option<Instant>,
    committed_at: Option<Instant>,
    acks: BTreeMap<String, Duration>,
    progress: Progress,
    /// The version of the last step that every proxy confirmed.
    confirmed_version: Option<String>,
}

impl Rollout {
    /// Starts an operation with id `id` on a service currently split as
    /// `original`.
    pub fn start(
        id: u64,
        op: &Operation,
        plan: Plan,
        original: Change,
        now: Instant,
    ) -> (Rollout, Vec<Action>) {
        let progress = Progress {
            id,
            service: op.service().to_owned(),
            verb: op.verb().to_owned(),
            phase: Phase::Preparing,
            step: 1,
            steps: plan.steps.len(),
            target: plan
                .steps
                .first()
                .map(|c| c.split.clone())
                .unwrap_or_default(),
            version: None,
            acked: 0,
            total: 0,
            waiting_for: Vec::new(),
            checks: Vec::new(),
            message: String::new(),
            outcome: None,
        };
        let mut r = Rollout {
            plan,
            original,
            state: State::Preparing,
            deadline: None,
            committed_at: None,
            acks: BTreeMap::new(),
            progress,
            confirmed_version: None,
        };
        if r.plan.wait_first {
            r.wait(now + r.plan.interval);
        } else {
            r.begin_step(now);
        }
        (r, Vec::new())
    }

    /// The live view of the operation.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// When the machine next needs an [`Event::Tick`].
    pub fn next_deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Waiting { until } => Some(*until),
            State::Done => None,
            _ => self.deadline,
        }
    }

    /// Whether proxy views matter now (the controller can skip computing
    /// them otherwise).
    pub fn wants_proxies(&self) -> bool {
        matches!(
            self.state,
            State::Preparing | State::Confirming | State::Undoing { .. }
        )
    }

    /// Whether it is over.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// First push to last ACK of the last confirmed version, and each
    /// proxy's ACK delay.
    pub fn convergence(&self) -> (Option<Duration>, Vec<(String, Duration)>) {
        let max = self.acks.values().max().copied();
        let acks = self.acks.iter().map(|(p, d)| (p.clone(), *d)).collect();
        (max.or(self.committed_at.map(|_| Duration::ZERO)), acks)
    }

    /// The version that carried the last confirmed step.
    pub fn confirmed_version(&self) -> Option<&str> {
        self.confirmed_version.as_deref()
    }

    /// The service's routing state before the operation.
    pub fn original(&self) -> &Change {
        &self.original
    }

    fn step_change(&self) -> Option<&Change> {
        self.plan.steps.get(self.progress.step.saturating_sub(1))
    }

    fn check_fleets(&self) -> Vec<String> {
        self.step_change()
            .map(|c| {
                c.split
                    .iter()
                    .filter(|(_, w)| **w > 0)
                    .map(|(f, _)| f.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    fn set(&mut self, state: State, phase: Phase, message: String) {
        self.state = state;
        self.progress.phase = phase;
        self.progress.message = message;
    }

    fn wait(&mut self, until: Instant) {
        self.deadline = None;
        let msg = format!(
            "waiting {:?} before step {} of {}",
            self.plan.interval, self.progress.step, self.progress.steps
        );
        self.set(State::Waiting { until }, Phase::Waiting, msg);
    }

    fn begin_step(&mut self, now: Instant) {
        self.deadline = Some(now + self.plan.timeout);
        self.progress.target = self
            .step_change()
            .map(|c| c.split.clone())
            .unwrap_or_default();
        self.progress.version = None;
        self.acks.clear();
        self.committed_at = None;
        let msg = "waiting for every proxy to hold every fleet's clusters and endpoints".into();
        self.set(State::Preparing, Phase::Preparing, msg);
    }

    fn commit(&mut self) -> Vec<Action> {
        let Some(change) = self.step_change().cloned() else {
            return self.finish(Outcome::Refused {
                reason: "nothing to do".into(),
            });
        };
        self.set(State::Committing, Phase::Confirming, "committing".into());
        vec![Action::Commit(change)]
    }

    fn finish(&mut self, outcome: Outcome) -> Vec<Action> {
        self.deadline = None;
        self.progress.message = match &outcome {
            Outcome::Succeeded => "done".into(),
            Outcome::Refused { reason }
            | Outcome::RolledBack { reason }
            | Outcome::Aborted { reason } => reason.clone(),
        };
        self.state = State::Done;
        self.progress.phase = Phase::Done;
        self.progress.outcome = Some(outcome.clone());
        vec![Action::Finish(outcome)]
    }

    /// Something failed: before anything was committed the operation is
    /// refused; after, every proxy goes back to the original split.
    fn fail(&mut self, reason: String) -> Vec<Action> {
        let anything_committed = self.progress.step > 1 || self.committed_at.is_some();
        if !anything_committed {
            return self.finish(Outcome::Refused { reason });
        }
        self.deadline = None;
        let msg = format!("{reason}; putting every proxy back");
        self.set(State::UndoCommitting { reason }, Phase::RollingBack, msg);
        vec![Action::Commit(self.original.clone())]
    }

    fn step_done(&mut self, now: Instant) -> Vec<Action> {
        self.confirmed_version = self.progress.version.clone();
        if self.progress.step >= self.plan.steps.len() {
            return self.finish(Outcome::Succeeded);
        }
        self.progress.step += 1;
        if self.plan.interval.is_zero() {
            self.begin_step(now);
        } else {
            self.wait(now + self.plan.interval);
        }
        Vec::new()
    }

    fn track(&mut self, proxies: &[ProxyView], done: impl Fn(&ProxyView) -> bool) -> bool {
        self.progress.total = proxies.len();
        self.progress.acked = proxies.iter().filter(|p| done(p)).count();
        self.progress.waiting_for = proxies
            .iter()
            .filter(|p| !done(p))
            .map(|p| p.id.clone())
            .collect();
        self.progress.waiting_for.is_empty()
    }

    /// Handles one event at time `now`.
    pub fn on_event(&mut self, event: Event, now: Instant) -> Vec<Action> {
        if let Event::Abort(reason) = &event {
            return match self.state {
                State::Waiting { .. } | State::Preparing | State::PreChecks => {
                    let reason = format!("aborted: {reason}");
                    self.finish(Outcome::Aborted { reason })
                }
                _ => Vec::new(),
            };
        }
        let expired = self.deadline.is_some_and(|d| now >= d);
        match (self.state.clone(), event) {
            (State::Waiting { until }, Event::Tick) if now >= until => {
                self.begin_step(now);
                Vec::new()
            }
            (State::Preparing, Event::Proxies(proxies)) => {
                if let Some(p) = proxies.iter().find(|p| p.nack.is_some()) {
                    let why = p.nack.clone().unwrap_or_default();
                    return self.fail(format!(
                        "proxy {} is rejecting its current configuration ({why}); \
                         fix that before switching",
                        p.id
                    ));
                }
                if !self.track(&proxies, |p| p.prepared) {
                    return Vec::new();
                }
                if self.plan.checks && !self.check_fleets().is_empty() {
                    let fleets = self.check_fleets();
                    let msg = format!("checking {}", fleets.join(", "));
                    self.set(State::PreChecks, Phase::PreChecks, msg);
                    vec![Action::RunChecks(fleets)]
                } else {
                    self.commit()
                }
            }
            (State::Preparing, Event::Tick) if expired => {
                let waiting = self.progress.waiting_for.join(", ");
                self.fail(format!(
                    "timed out preparing: not every proxy holds the clusters yet ({waiting})"
                ))
            }
            (State::PreChecks, Event::Checks(results)) => {
                let failed = failures(&results);
                self.progress.checks = results;
                if failed.is_empty() {
                    self.commit()
                } else {
                    self.fail(format!("checks failed before the switch: {failed}"))
                }
            }
            (State::Committing, Event::Committed { version }) => {
                self.committed_at = Some(now);
                self.deadline = Some(now + self.plan.timeout);
                let msg = format!("waiting for every proxy to apply {version}");
                self.progress.version = Some(version);
                self.set(State::Confirming, Phase::Confirming, msg);
                Vec::new()
            }
            (State::Committing, Event::CommitFailed(reason)) => {
                self.fail(format!("could not commit: {reason}"))
            }
            (State::Confirming, Event::Proxies(proxies)) => {
                if let Some(p) = proxies.iter().find(|p| p.nack.is_some()) {
                    let why = p.nack.clone().unwrap_or_default();
                    return self.fail(format!("proxy {} rejected the change: {why}", p.id));
                }
                let since = self.committed_at.map(|t| now.saturating_duration_since(t));
                for p in proxies.iter().filter(|p| p.confirmed) {
                    self.acks
                        .entry(p.id.clone())
                        .or_insert(since.unwrap_or_default());
                }
                if !self.track(&proxies, |p| p.confirmed) {
                    return Vec::new();
                }
                if self.plan.checks && !self.check_fleets().is_empty() {
                    let fleets = self.check_fleets();
                    let msg = format!("checking {} after the switch", fleets.join(", "));
                    self.set(State::PostChecks, Phase::PostChecks, msg);
                    vec![Action::RunChecks(fleets)]
                } else {
                    self.step_done(now)
                }
            }
            (State::Confirming, Event::Tick) if expired => {
                let waiting = self.progress.waiting_for.join(", ");
                self.fail(format!(
                    "timed out waiting for proxies to apply the change: {waiting}"
                ))
            }
            (State::PostChecks, Event::Checks(results)) => {
                let failed = failures(&results);
                self.progress.checks = results;
                if failed.is_empty() {
                    self.step_done(now)
                } else {
                    self.fail(format!("checks failed after the switch: {failed}"))
                }
            }
            (State::UndoCommitting { reason }, Event::Committed { version }) => {
                self.deadline = Some(now + self.plan.timeout);
                self.progress.version = Some(version);
                let msg = format!("{reason}; waiting for every proxy to go back");
                self.set(State::Undoing { reason }, Phase::RollingBack, msg);
                Vec::new()
            }
            (State::UndoCommitting { reason }, Event::CommitFailed(why)) => {
                self.finish(Outcome::RolledBack {
                    reason: format!("{reason}; and the undo could not be committed: {why}"),
                })
            }
            (State::Undoing { reason }, Event::Proxies(proxies)) => {
                if self.track(&proxies, |p| p.confirmed) {
                    self.finish(Outcome::RolledBack { reason })
                } else {
                    Vec::new()
                }
            }
            (State::Undoing { reason }, Event::Tick) if expired => {
                let waiting = self.progress.waiting_for.join(", ");
                self.finish(Outcome::RolledBack {
                    reason: format!("{reason}; not yet back on every proxy: {waiting}"),
                })
            }
            _ => Vec::new(),
        }
    }
}

fn failures(results: &[CheckResult]) -> String {
    results
        .iter()
        .filter(|r| !r.ok)
        .map(|r| format!("{} on {}: {}", r.check, r.endpoint, r.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
#[path = "machine_tests.rs"]
mod tests;
