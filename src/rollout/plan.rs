//! Planning: what an operation will do to a service, worked out from the
//! request and the service's current state, or why it cannot be done; and
//! where the service's rollback point goes when an operation ends.
//!
//! Pure functions of their inputs; [`super::machine`] runs the plans.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::analysis::Criteria;
use super::serde_time;
use super::{MAX_WAIT, Operation, RolloutError, ShiftSteps, Split};
use crate::config::Weights;

/// A service's routing state to publish: every fleet's weight, and which
/// fleets are retired (no endpoints).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The weights to serve.
    pub split: Split,
    /// Fleets served with no endpoints.
    pub retired: BTreeSet<String>,
}

/// What the operation will do, worked out from the request and the
/// service's current state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// The changes, one per step.
    pub steps: Vec<Change>,
    pub(crate) checks: bool,
    /// Deadline of each phase of a step (prepare, checks, confirm).
    #[serde(rename = "timeout_ms", with = "serde_time::millis")]
    pub(crate) timeout: Duration,
    /// Pause before each step after the first (and before a retirement).
    #[serde(rename = "interval_ms", with = "serde_time::millis")]
    pub(crate) interval: Duration,
    /// Wait `interval` before the first step too (retirement).
    pub(crate) wait_first: bool,
    /// A retirement: after its wait, how long to wait for every proxy to
    /// report the fleet drained; zero does not wait (and is what a record
    /// saved before teal waited for drains reads as).
    #[serde(rename = "drain_timeout_ms", with = "serde_time::millis", default)]
    pub(crate) drain_timeout: Duration,
    /// How each step's traffic is judged once it is confirmed; `None`
    /// (and in plans saved before analyses existed): it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) analysis: Option<Criteria>,
}

impl Plan {
    /// A plan that sends traffic per `split` in one push (a flip, a
    /// rollback), after restoring a retired fleet's endpoints if needed;
    /// its traffic judged by `analysis`, if any.
    fn one_step(
        service: &ServiceView<'_>,
        split: Split,
        skip_checks: bool,
        timeout: Duration,
        analysis: Option<Criteria>,
    ) -> Plan {
        Plan {
            steps: service.steps_to(&[split]),
            checks: !skip_checks && service.has_checks,
            timeout,
            interval: Duration::ZERO,
            wait_first: false,
            drain_timeout: Duration::ZERO,
            analysis,
        }
    }
}

/// A service as the planner needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceView<'a> {
    /// The service's name.
    pub name: &'a str,
    /// Its fleets.
    pub fleets: Vec<&'a str>,
    /// Fleets with no endpoints in the config: no traffic may go there.
    pub empty: BTreeSet<&'a str>,
    /// The current split.
    pub split: &'a Split,
    /// Where a rollback goes.
    pub rollback_to: Option<&'a Split>,
    /// Retired fleets.
    pub retired: &'a BTreeSet<String>,
    /// Whether the service has checks configured: a plan for one with
    /// none has no check phase (nothing to wait for, so a flip commits in
    /// the same turn it starts).
    pub has_checks: bool,
    /// How the service's traffic is judged after a flip or a shift step
    /// (its `analysis`), if it is.
    pub analysis: Option<Criteria>,
}

impl ServiceView<'_> {
    /// The fleet taking more than half of the traffic, if one does.
    pub(crate) fn live(&self) -> Option<&str> {
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
    /// [`Weights::check`], the rule [`Weights::set`] applies too, and
    /// refuses traffic to a fleet with no endpoints.
    fn check_split(&self, split: &Split) -> Result<(), RolloutError> {
        Weights::check(self.name, |f| self.fleets.contains(&f), split)?;
        if let Some((fleet, _)) = split
            .iter()
            .find(|(f, w)| **w > 0 && self.empty.contains(f.as_str()))
        {
            return Err(RolloutError::Precondition(format!(
                "fleet {fleet:?} of service {:?} has no endpoints; \
                 traffic would go nowhere",
                self.name
            )));
        }
        Ok(())
    }

    /// The one fleet other than the live one, for requests that do not
    /// name a fleet.
    fn other_fleet(&self) -> Result<String, RolloutError> {
        let live = self.live();
        let others: Vec<&&str> = self.fleets.iter().filter(|f| Some(**f) != live).collect();
        match (live, others.as_slice()) {
            (Some(_), [one]) => Ok((**one).to_owned()),
            (None, _) => Err(RolloutError::Invalid(format!(
                "no fleet of service {:?} takes more than half of its traffic; \
                 say which fleet with --to",
                self.name
            ))),
            _ => Err(RolloutError::Invalid(format!(
                "service {:?} has {} fleets; say which with --to",
                self.name,
                self.fleets.len()
            ))),
        }
    }

    /// The service's routing state now, which an undo returns to.
    pub fn current(&self) -> Change {
        Change {
            split: self.split.clone(),
            retired: self.retired.clone(),
        }
    }

    /// The changes that send traffic per `splits`: a fleet that is retired
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

    /// Resolves a shift's steps into whole splits, checked against the
    /// current split: no step may repeat the one before it (the first, the
    /// current split), and percentages must move traffic towards `to`.
    fn shift_splits(&self, steps: &ShiftSteps) -> Result<Vec<Split>, RolloutError> {
        let splits = match steps {
            ShiftSteps::Splits(splits) => {
                for s in splits {
                    self.check_split(s)?;
                }
                splits.iter().map(|s| self.full(s)).collect()
            }
            ShiftSteps::Weights(given) => vec![self.fill_weights(given)?],
            ShiftSteps::Percents { to, percents } => {
                self.percent_splits(to.as_deref(), percents)?
            }
        };
        if splits.is_empty() {
            return Err(RolloutError::Invalid(
                "a shift needs at least one step".into(),
            ));
        }
        let mut before = self.full(self.split);
        for (i, split) in splits.iter().enumerate() {
            self.check_split(split)?;
            if *split == before {
                let which = if i == 0 {
                    "the current split".to_owned()
                } else {
                    format!("step {i}")
                };
                return Err(RolloutError::Precondition(format!(
                    "step {} ({}) is {which} already",
                    i + 1,
                    show(split)
                )));
            }
            before = split.clone();
        }
        Ok(splits)
    }

    fn fill_weights(&self, given: &[(String, u32)]) -> Result<Split, RolloutError> {
        let mut split = Split::new();
        for (fleet, w) in given {
            self.check_fleet(fleet)?;
            if split.insert(fleet.clone(), *w).is_some() {
                return Err(RolloutError::Invalid(format!(
                    "fleet {fleet:?} given twice"
                )));
            }
        }
        let sum: u32 = split.values().fold(0, |a, w| a.saturating_add(*w));
        let rest: Vec<&&str> = self
            .fleets
            .iter()
            .filter(|f| !split.contains_key(**f))
            .collect();
        if let ([only], true) = (rest.as_slice(), sum < Weights::TOTAL) {
            split.insert((**only).to_owned(), Weights::TOTAL - sum);
        }
        Ok(self.full(&split))
    }

    fn percent_splits(
        &self,
        to: Option<&str>,
        percents: &[u32],
    ) -> Result<Vec<Split>, RolloutError> {
        let to = match to {
            Some(t) => {
                self.check_fleet(t)?;
                t.to_owned()
            }
            None => self.other_fleet()?,
        };
        let now = self.split.get(&to).copied().unwrap_or(0);
        if now >= Weights::TOTAL {
            return Err(RolloutError::Precondition(format!(
                "{to:?} already takes all of {:?}'s traffic",
                self.name
            )));
        }
        let givers: Vec<&String> = self
            .split
            .iter()
            .filter(|(f, w)| **w > 0 && **f != to)
            .map(|(f, _)| f)
            .collect();
        let [from] = givers.as_slice() else {
            return Err(RolloutError::Invalid(format!(
                "traffic of {:?} is split among {} fleets; say each step's weights with --weight",
                self.name,
                givers.len()
            )));
        };
        let mut last = now;
        for p in percents {
            if *p <= last || *p > Weights::TOTAL {
                return Err(RolloutError::Invalid(format!(
                    "steps must rise from {to:?}'s current {now}% to at most 100%; {p}% does not"
                )));
            }
            last = *p;
        }
        Ok(percents
            .iter()
            .map(|p| {
                self.full(&Split::from([
                    (to.clone(), *p),
                    ((*from).clone(), Weights::TOTAL - p),
                ]))
            })
            .collect())
    }
}

/// The fleet taking more than half of a split's traffic: the live fleet.
/// A split without one (50/50, or three fleets none of which has a
/// majority) has no live fleet.
pub(crate) fn live_of(split: &Split) -> Option<&str> {
    let total: u32 = split.values().fold(0, |a, w| a.saturating_add(*w));
    split
        .iter()
        .find(|(_, w)| u64::from(**w) * 2 > u64::from(total))
        .map(|(f, _)| f.as_str())
}

/// A split as `blue=90 green=10`, for messages.
pub(crate) fn show(split: &Split) -> String {
    split
        .iter()
        .map(|(f, w)| format!("{f}={w}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn all_to(fleet: &str) -> Split {
    BTreeMap::from([(fleet.to_owned(), Weights::TOTAL)])
}

fn check_wait(what: &str, d: Duration) -> Result<(), RolloutError> {
    if d > MAX_WAIT {
        return Err(RolloutError::Invalid(format!(
            "{what} {d:?} is longer than the most teal waits ({}h)",
            MAX_WAIT.as_secs() / 3600
        )));
    }
    Ok(())
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
            check_wait("timeout", *timeout)?;
            let split = flip_split(service, to.as_deref())?;
            let analysis = service.analysis.clone();
            Ok(Plan::one_step(
                service,
                split,
                *skip_checks,
                *timeout,
                analysis,
            ))
        }
        Operation::Shift {
            steps,
            interval,
            skip_checks,
            timeout,
            ..
        } => {
            check_wait("timeout", *timeout)?;
            check_wait("interval", *interval)?;
            let splits = service.shift_splits(steps)?;
            Ok(Plan {
                steps: service.steps_to(&splits),
                checks: !skip_checks && service.has_checks,
                timeout: *timeout,
                interval: *interval,
                wait_first: false,
                drain_timeout: Duration::ZERO,
                analysis: service.analysis.clone(),
            })
        }
        Operation::Rollback {
            timeout,
            skip_checks,
            ..
        } => {
            check_wait("timeout", *timeout)?;
            let split = rollback_split(service)?;
            // The way back is not judged: the traffic it restores is what
            // the service had before.
            Ok(Plan::one_step(service, split, *skip_checks, *timeout, None))
        }
        Operation::Retire {
            fleet,
            after,
            drain_timeout,
            ..
        } => {
            check_wait("delay", *after)?;
            check_wait("drain timeout", *drain_timeout)?;
            Ok(Plan {
                steps: vec![retirement(service, fleet)?],
                checks: false,
                timeout: RETIRE_TIMEOUT,
                interval: *after,
                wait_first: true,
                drain_timeout: *drain_timeout,
                analysis: None,
            })
        }
    }
}

/// A flip's split: everything to `to`, or to the other fleet.
fn flip_split(service: &ServiceView<'_>, to: Option<&str>) -> Result<Split, RolloutError> {
    let target = match to {
        Some(t) => t.to_owned(),
        None => service.other_fleet()?,
    };
    service.check_fleet(&target)?;
    let split = all_to(&target);
    service.check_split(&split)?;
    if service.full(&split) == *service.split {
        return Err(RolloutError::Precondition(format!(
            "{target:?} already takes all of {:?}'s traffic",
            service.name
        )));
    }
    Ok(split)
}

/// A rollback's split: the rollback point, if there is one to go to.
fn rollback_split(service: &ServiceView<'_>) -> Result<Split, RolloutError> {
    let Some(point) = service.rollback_to else {
        return Err(RolloutError::Precondition(format!(
            "service {:?} has nothing to roll back to: no change of its weights \
             is in effect since teal started managing it, or the last one was \
             undone, or the fleet it would go back to was retired",
            service.name
        )));
    };
    let split = service.full(point);
    if split == *service.split {
        return Err(RolloutError::Precondition(format!(
            "service {:?} is at its rollback point ({}) already",
            service.name,
            show(&split)
        )));
    }
    service.check_split(&split)?;
    Ok(split)
}

/// A retirement's change: the same split, `fleet` retired; never a fleet
/// that takes traffic.
fn retirement(service: &ServiceView<'_>, fleet: &str) -> Result<Change, RolloutError> {
    service.check_fleet(fleet)?;
    if service.split.get(fleet).copied().unwrap_or(0) > 0 {
        return Err(RolloutError::Precondition(format!(
            "fleet {fleet:?} still takes traffic; flip away from it first"
        )));
    }
    if service.retired.contains(fleet) {
        return Err(RolloutError::Precondition(format!(
            "fleet {fleet:?} is already retired"
        )));
    }
    let mut retired = service.retired.clone();
    retired.insert(fleet.to_owned());
    Ok(Change {
        split: service.split.clone(),
        retired,
    })
}

/// How long a retirement waits for every proxy to drop the fleet's
/// endpoints.
const RETIRE_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a service's rollback point is after an operation ends, with
/// `in_effect` the routing state then committed.
///
/// The rollback point is the confirmed split in effect before the most
/// recent operation whose changes are still in effect. So: an operation
/// that changed the weights and is still in effect (a flip, a shift, a
/// rollback, the committed steps of an aborted shift) moves it to the
/// split before it; one that was refused or undone leaves it; a retirement
/// changes no weight and leaves it too. A point that would send traffic to
/// a retired fleet is dropped: that fleet is gone.
pub(crate) fn rollback_point(
    original: &Change,
    before: Option<&Split>,
    in_effect: &Change,
) -> Option<Split> {
    let point = if in_effect.split != original.split {
        Some(&original.split)
    } else {
        before
    };
    point
        .filter(|p| {
            !p.iter()
                .any(|(f, w)| *w > 0 && in_effect.retired.contains(f))
        })
        .cloned()
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
