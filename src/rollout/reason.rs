//! Why an operation did not simply succeed: the reason an [`Outcome`]
//! carries, one variant per thing that can happen, with what it needs to
//! say so.
//!
//! A reason is rendered to text only at the edges (the admin API, the
//! history stored with the state, the progress message), by [`Display`],
//! and that text is what operators and scripts have always read. Stored
//! history keeps the text, not the variant: a reason read back from the
//! state is [`Reason::Recorded`], whichever teal wrote it, so old state
//! files read the same and nothing is parsed out of a sentence.
//!
//! [`Outcome`]: super::Outcome
//! [`Display`]: std::fmt::Display

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::drain::FleetDrain;
use super::{CheckResult, Phase};
use crate::config::Ratio;

/// Why an operation was refused, rolled back, aborted, left unconfirmed
/// or interrupted.
///
/// Serialized as its text; deserialized as [`Reason::Recorded`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Before the switch, a proxy rejects the configuration it was last
    /// sent.
    RejectingCurrent {
        /// The proxy's node id.
        proxy: String,
        /// What it rejected and its message.
        why: String,
    },
    /// Not every proxy held every fleet's clusters and endpoints in time.
    PrepareTimedOut {
        /// The proxies not ready.
        waiting: Proxies,
    },
    /// Some checks failed.
    ChecksFailed {
        /// Before the switch (nothing committed) or after it.
        after_switch: bool,
        /// The failed results.
        failed: Vec<CheckResult>,
    },
    /// The checks did not answer in time.
    ChecksTimedOut {
        /// The timeout.
        within: Duration,
    },
    /// The change could not be made durable or published.
    CommitFailed {
        /// The store's or the build's error.
        error: String,
    },
    /// The step would have sent traffic to a fleet whose endpoints went
    /// after the plan (`super::machine::Rollout::commit_gate`).
    FleetEmptied {
        /// The service.
        service: String,
        /// The fleet with no endpoints.
        fleet: String,
        /// The step and how many there are, for a shift of several steps.
        step: Option<(usize, usize)>,
    },
    /// The plan had no step to apply.
    NothingToDo,
    /// A retirement's fleet was not reported drained by every proxy in
    /// time; nothing was retired.
    DrainTimedOut {
        /// The fleet.
        fleet: String,
        /// The drain timeout.
        within: Duration,
        /// What the last load reports said; `None` when none came in.
        /// Boxed: every reason is carried by value, most of them small.
        last: Option<Box<FleetDrain>>,
    },
    /// A proxy rejected the version carrying the change.
    Rejected {
        /// The proxy's node id.
        proxy: String,
        /// What it rejected and its message.
        why: String,
    },
    /// Not every proxy applied the change in time.
    ApplyTimedOut {
        /// The proxies that did not.
        waiting: Proxies,
    },
    /// An operator stopped it while its step was being confirmed; the
    /// step is undone ([`Reason::Undone`] says so once it is).
    StoppedBy {
        /// Who.
        by: String,
        /// It is a retirement, cancelled by the rollback `by` asked for.
        for_rollback: bool,
    },
    /// An operator stopped it before its step was committed.
    StoppedBeforeCommit {
        /// Who.
        by: String,
        /// It is a retirement, cancelled by the rollback `by` asked for.
        for_rollback: bool,
        /// How many earlier steps stay in effect (a shift's).
        kept: usize,
    },
    /// The service left the config while the operation ran.
    ServiceRemoved,
    /// The service left the config while teal was stopped during the
    /// operation.
    ServiceRemovedWhileStopped,
    /// teal shut down while the operation ran.
    ShutDown {
        /// Where it was.
        phase: Phase,
    },
    /// teal stopped before the step in progress was committed.
    StoppedBeforeStep {
        /// The step, 1-based.
        step: usize,
        /// How many steps in all.
        steps: usize,
    },
    /// teal restarted during a step of a shift; that step was confirmed
    /// after the restart and the rest were not applied.
    RestartedDuring {
        /// The step, 1-based.
        step: usize,
        /// How many steps in all.
        steps: usize,
    },
    /// A rollback stays in effect, but these proxies did not confirm it.
    RollbackUnconfirmed {
        /// The rollback's timeout.
        within: Duration,
        /// The proxies that did not confirm.
        waiting: Proxies,
    },
    /// A rollback stays in effect, but proxies rejected it.
    RollbackRejected {
        /// Who rejected it, and why.
        rejections: Vec<Rejection>,
    },
    /// A rollback stays in effect, but its checks afterwards did not pass
    /// (failed or timed out: `checks`).
    RollbackChecks {
        /// Why the checks did not pass.
        checks: Box<Reason>,
    },
    /// The step in progress was undone after an operator stopped it.
    Undone {
        /// Why it was undone.
        cause: Box<Reason>,
    },
    /// Undoing the step failed at its commit: proxies keep the new weights.
    UndoNotCommitted {
        /// Why the step was being undone.
        cause: Box<Reason>,
        /// Why the undo could not be committed.
        error: String,
    },
    /// The undo is in effect, but proxies rejected it.
    UndoRejected {
        /// Why the step was undone.
        cause: Box<Reason>,
        /// Who rejected the undo, and why.
        rejections: Vec<Rejection>,
    },
    /// The undo is in effect, but not every proxy confirmed it in time.
    UndoUnconfirmed {
        /// Why the step was undone.
        cause: Box<Reason>,
        /// The proxies that did not confirm.
        waiting: Proxies,
    },
    /// After the switch, the error ratio of a fleet gaining traffic, as the
    /// proxies' load reports show it, went over what the service's
    /// `analysis` allows.
    TrafficErrors(Box<TrafficFigures>),
    /// The window ended without a verdict on a fleet's traffic (too few
    /// requests, or its only two proxies disagree), and the service's
    /// `analysis` counts that as a failure.
    TrafficUnjudged {
        /// The fleet.
        fleet: String,
        /// What was missing.
        shortfall: Shortfall,
        /// How long its traffic was watched.
        within: Duration,
        /// It waited for more (`too_few_requests: wait`) until the
        /// operation's timeout, rather than failing at the window's end.
        waited: bool,
    },
    /// A reason as text, read back from the state (or given by a backend
    /// that only has the text).
    Recorded(String),
}

/// What a fleet's traffic showed when it was judged, for the reason of a
/// rollback.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficFigures {
    /// The fleet judged.
    pub(crate) fleet: String,
    /// Its error ratio as the verdict weighs the proxies (see
    /// `super::analysis`).
    pub(crate) ratio: Ratio,
    /// The most it was allowed.
    pub(crate) allowed: Allowed,
    /// Requests completed in the window, as the proxies reported them.
    pub(crate) requests: u64,
    /// Of which failed.
    pub(crate) errors: u64,
    /// The proxies that reported them.
    pub(crate) proxies: Proxies,
    /// How long after the window opened the verdict came.
    pub(crate) after: Duration,
}

/// The error ratio a fleet may show, and where that figure comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Allowed {
    /// The threshold.
    pub(crate) ratio: Ratio,
    /// Set when the threshold over the baseline is the one that applies
    /// (the lower of the two, when both are set).
    pub(crate) over_baseline: Option<OverBaseline>,
}

/// A threshold set relative to what the fleets losing traffic did before
/// the switch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OverBaseline {
    /// The fleets losing traffic.
    pub(crate) fleets: Vec<String>,
    /// Their error ratio before the switch; `None`: too few requests to
    /// tell, taken as 0%.
    pub(crate) baseline: Option<Ratio>,
    /// The points allowed over it.
    pub(crate) points: Ratio,
}

/// Why a fleet's traffic could not be judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Shortfall {
    /// Fewer requests than the analysis needs.
    Requests {
        /// The requests counted (each proxy's weight capped; see
        /// `super::analysis`).
        counted: u64,
        /// The analysis's `min_requests`.
        needed: u64,
        /// How many proxies reported any.
        proxies: usize,
    },
    /// Only two proxies reported, one over the threshold and one not: one
    /// proxy alone never decides.
    Disagree {
        /// The one over, and its ratio.
        over: (String, Ratio),
        /// The one not, and its ratio.
        under: (String, Ratio),
        /// The threshold.
        allowed: Ratio,
    },
}
/// Proxies a reason names: the first few by id, and how many more.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Proxies {
    /// Node ids, the first [`WAITING_SHOWN`](super::machine::WAITING_SHOWN).
    pub(crate) named: Vec<String>,
    /// How many were left unnamed.
    pub(crate) more: usize,
}

/// A proxy that rejected a version, with its message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// The proxy's node id.
    pub(crate) proxy: String,
    /// What it rejected and its message.
    pub(crate) why: String,
}

/// `1% allowed`, and where a threshold over a baseline comes from.
impl fmt::Display for Allowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} allowed", self.ratio)?;
        let Some(o) = &self.over_baseline else {
            return Ok(());
        };
        let fleets = o.fleets.join(" and ");
        let points = o.points.to_string();
        let points = points.trim_end_matches('%');
        match o.baseline {
            Some(b) => write!(f, " ({fleets}'s {b} before the switch + {points} points)"),
            None => write!(
                f,
                " (too few requests to {fleets} before the switch for a baseline: 0% + \
                 {points} points)"
            ),
        }
    }
}

impl fmt::Display for Shortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shortfall::Requests {
                counted,
                needed,
                proxies,
            } => write!(
                f,
                "too few requests ({counted} from {proxies} {}, {needed} needed)",
                if *proxies == 1 { "proxy" } else { "proxies" }
            ),
            Shortfall::Disagree {
                over,
                under,
                allowed,
            } => write!(
                f,
                "its only two reporting proxies disagree ({} saw {}, {} saw {}; {allowed} \
                 allowed) and one proxy alone does not decide",
                over.0, over.1, under.0, under.1
            ),
        }
    }
}

/// A duration to the millisecond, for figures.
fn millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl fmt::Display for Proxies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.named.join(", "))?;
        if self.more > 0 {
            write!(f, " and {} more", self.more)?;
        }
        Ok(())
    }
}

/// `items` each written by `one`, separated by `sep`.
fn list<T>(
    f: &mut fmt::Formatter<'_>,
    items: &[T],
    sep: &str,
    one: impl Fn(&mut fmt::Formatter<'_>, &T) -> fmt::Result,
) -> fmt::Result {
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            f.write_str(sep)?;
        }
        one(f, item)?;
    }
    Ok(())
}

fn failures(f: &mut fmt::Formatter<'_>, failed: &[CheckResult]) -> fmt::Result {
    list(f, failed, "; ", |f, r| {
        write!(f, "{} on {}: {}", r.check, r.endpoint, r.detail)
    })
}

fn rejections(f: &mut fmt::Formatter<'_>, rejections: &[Rejection]) -> fmt::Result {
    list(f, rejections, "; ", |f, r| {
        write!(f, "{} rejected it: {}", r.proxy, r.why)
    })
}

fn stopped_by(f: &mut fmt::Formatter<'_>, by: &str, for_rollback: bool) -> fmt::Result {
    write!(f, "stopped by {by}")?;
    if for_rollback {
        f.write_str(" (a rollback cancels the retirement)")?;
    }
    Ok(())
}

fn steps_kept(f: &mut fmt::Formatter<'_>, kept: usize) -> fmt::Result {
    if kept > 0 {
        write!(f, "; steps 1 to {kept} stay in effect")?;
    }
    Ok(())
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::RejectingCurrent { proxy, why } => write!(
                f,
                "proxy {proxy} is rejecting its current configuration ({why}); fix that before \
                 switching"
            ),
            Reason::PrepareTimedOut { waiting } => write!(
                f,
                "timed out preparing: not every proxy holds the current configuration yet \
                 ({waiting})"
            ),
            Reason::ChecksFailed {
                after_switch,
                failed,
            } => {
                let when = if *after_switch { "after" } else { "before" };
                write!(f, "checks failed {when} the switch: ")?;
                failures(f, failed)
            }
            Reason::ChecksTimedOut { within } => {
                write!(f, "checks did not finish within {within:?}")
            }
            Reason::CommitFailed { error } => write!(f, "could not commit: {error}"),
            Reason::FleetEmptied {
                service,
                fleet,
                step,
            } => {
                write!(
                    f,
                    "fleet {fleet:?} of service {service:?} has no endpoints any more"
                )?;
                if let Some((step, steps)) = step {
                    write!(f, " at step {step} of {steps}")?;
                }
                f.write_str("; traffic would go nowhere, so it was not committed")
            }
            Reason::NothingToDo => f.write_str("nothing to do"),
            Reason::DrainTimedOut {
                fleet,
                within,
                last,
            } => {
                write!(f, "fleet {fleet:?} did not drain within {within:?}: ")?;
                match last {
                    Some(drain) => write!(f, "{drain}")?,
                    None => f.write_str("no load report came in")?,
                }
                f.write_str(
                    "; nothing was retired (retry later, or retire without waiting with \
                     --drain-timeout 0)",
                )
            }
            Reason::Rejected { proxy, why } => {
                write!(f, "proxy {proxy} rejected the change: {why}")
            }
            Reason::ApplyTimedOut { waiting } => write!(
                f,
                "timed out waiting for proxies to apply the change: {waiting}"
            ),
            Reason::StoppedBy { by, for_rollback } => stopped_by(f, by, *for_rollback),
            Reason::StoppedBeforeCommit {
                by,
                for_rollback,
                kept,
            } => {
                stopped_by(f, by, *for_rollback)?;
                steps_kept(f, *kept)
            }
            Reason::ServiceRemoved => f.write_str("the service was removed from the config"),
            Reason::ServiceRemovedWhileStopped => f.write_str(
                "the service was removed from the config while teal was stopped during the \
                 operation",
            ),
            Reason::ShutDown { phase } => write!(f, "teal shut down during {}", phase.as_str()),
            Reason::StoppedBeforeStep { step, steps } => {
                write!(
                    f,
                    "teal stopped before step {step} of {steps} was committed; nothing of it is \
                     in effect"
                )?;
                steps_kept(f, step.saturating_sub(1))
            }
            Reason::RestartedDuring { step, steps } => write!(
                f,
                "teal restarted during step {step} of {steps}; steps 1 to {step} are in effect \
                 and confirmed, the rest were not applied"
            ),
            Reason::RollbackUnconfirmed { within, waiting } => write!(
                f,
                "the rollback is in effect, but these proxies did not confirm it within \
                 {within:?}: {waiting}; teal keeps serving it to them"
            ),
            Reason::RollbackRejected { rejections: r } => {
                f.write_str("the rollback is in effect, but ")?;
                rejections(f, r)?;
                f.write_str("; teal does not undo a rollback")
            }
            Reason::RollbackChecks { checks } => {
                write!(f, "the rollback is in effect, but {checks}")
            }
            Reason::Undone { cause } => write!(f, "{cause}; the step in progress was undone"),
            Reason::UndoNotCommitted { cause, error } => write!(
                f,
                "{cause}; and the undo could not be committed ({error}): proxies keep the new \
                 weights (teal rollback returns to the rollback point)"
            ),
            Reason::UndoRejected {
                cause,
                rejections: r,
            } => {
                write!(f, "{cause}; put back, but ")?;
                rejections(f, r)
            }
            Reason::UndoUnconfirmed { cause, waiting } => write!(
                f,
                "{cause}; put back, but not yet confirmed by every proxy: {waiting}; teal keeps \
                 serving the previous weights to them"
            ),
            Reason::TrafficErrors(t) => write!(
                f,
                "{}'s error ratio was {}, over the {}: {} errors in {} requests \
                 reported by {} {}, {:?} after the switch",
                t.fleet,
                t.ratio,
                t.allowed,
                t.errors,
                t.requests,
                if t.proxies.named.len() + t.proxies.more == 1 {
                    "proxy"
                } else {
                    "proxies"
                },
                t.proxies,
                millis(t.after)
            ),
            Reason::TrafficUnjudged {
                fleet,
                shortfall,
                within,
                waited,
            } => {
                write!(
                    f,
                    "{fleet}'s traffic could not be judged within {:?}: {shortfall}",
                    millis(*within)
                )?;
                if *waited {
                    f.write_str("; waited for more until the operation's timeout")
                } else {
                    f.write_str("; `too_few_requests: fail` counts that as a failure")
                }
            }
            Reason::Recorded(text) => f.write_str(text),
        }
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Reason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Reason, D::Error> {
        String::deserialize(d).map(Reason::Recorded)
    }
}

#[cfg(test)]
#[path = "reason_tests.rs"]
mod tests;
