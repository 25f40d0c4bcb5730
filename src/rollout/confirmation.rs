//! Whether a service's current weights are confirmed by every proxy: the
//! one question an orchestrator (Argo Rollouts, Flagger) asks before it
//! moves traffic further, answered from a [`ServiceStatus`].
//!
//! Confirmed means all of: no operation is running on the service; its
//! last change did what it was asked (or it has none yet); and every
//! proxy routing it (cordoned ones aside, as operations leave them aside)
//! has ACKed the route configuration served to its group now (it carries
//! the weights). The last change matters,
//! not only the proxies: after a change rolled back, the proxies all hold
//! the weights put back, but the weights asked for never landed, and an
//! orchestrator that moved on would promote a release teal refused. Such
//! a service stays unconfirmed until a later change succeeds (the
//! orchestrator's own rollback is one). A retirement that did not happen
//! changed no weight, so it does not count as the last change.

use std::fmt;

use super::{Outcome, Phase, ServiceStatus, Verb};

/// The answer for one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Confirmation {
    /// Its current weights are confirmed by every proxy.
    Confirmed,
    /// They are not, and why.
    Unconfirmed(Unconfirmed),
}

/// Why a service's weights are not confirmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unconfirmed {
    /// An operation is running on it.
    InProgress {
        /// The operation's id.
        id: u64,
        /// What kind.
        verb: Verb,
        /// Where it is.
        phase: Phase,
        /// Its step (1-based) and how many there are.
        step: usize,
        /// How many steps in all.
        steps: usize,
        /// Proxies that ACKed the step being confirmed.
        acked: usize,
        /// Proxies that must.
        total: usize,
        /// Some of those that have not.
        waiting_for: Vec<String>,
    },
    /// Its last change did not do what it was asked.
    LastChange {
        /// The change's id.
        id: u64,
        /// What kind.
        verb: Verb,
        /// How it ended.
        outcome: Outcome,
    },
    /// Some proxies routing it have not ACKed the routes served.
    Proxies {
        /// Those that did.
        acked: usize,
        /// All of them.
        total: usize,
        /// Some of those that have not.
        waiting_for: Vec<String>,
        /// Some of those whose last answer was a rejection, with it.
        rejecting: Vec<(String, String)>,
    },
}

impl Unconfirmed {
    /// A short machine-readable name: `in_progress`, `last_change`,
    /// `proxies`.
    pub fn kind(&self) -> &'static str {
        match self {
            Unconfirmed::InProgress { .. } => "in_progress",
            Unconfirmed::LastChange { .. } => "last_change",
            Unconfirmed::Proxies { .. } => "proxies",
        }
    }
}

/// The name of an outcome other than success, as `teal history` writes it.
fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Succeeded => "succeeded",
        Outcome::Refused { .. } => "refused",
        Outcome::RolledBack { .. } => "rolled back",
        Outcome::Aborted { .. } => "aborted",
        Outcome::Unconfirmed { .. } => "unconfirmed",
        Outcome::Interrupted { .. } => "interrupted",
    }
}

/// `ids` joined, with how many more there are past them.
fn some_of(ids: &[String], count: usize) -> String {
    let mut s = ids.join(", ");
    if count > ids.len() {
        s.push_str(&format!(" and {} more", count - ids.len()));
    }
    s
}

impl fmt::Display for Unconfirmed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unconfirmed::InProgress {
                id,
                verb,
                phase,
                step,
                steps,
                acked,
                total,
                waiting_for,
            } => {
                write!(
                    f,
                    "{verb} #{id} is in progress: step {step}/{steps}, {}, {acked}/{total} proxies ACKed",
                    phase.as_str()
                )?;
                if !waiting_for.is_empty() {
                    let left = total.saturating_sub(*acked);
                    write!(f, " (waiting for {})", some_of(waiting_for, left))?;
                }
                Ok(())
            }
            Unconfirmed::LastChange { id, verb, outcome } => {
                write!(
                    f,
                    "the last change, {verb} #{id}, {}",
                    outcome_name(outcome)
                )?;
                if let Some(reason) = outcome.reason() {
                    write!(f, ": {reason}")?;
                }
                Ok(())
            }
            Unconfirmed::Proxies {
                acked,
                total,
                waiting_for,
                rejecting,
            } => {
                let left = total.saturating_sub(*acked);
                write!(
                    f,
                    "{acked}/{total} proxies ACKed the routes served; waiting for {}",
                    some_of(waiting_for, left)
                )?;
                if let Some((proxy, why)) = rejecting.first() {
                    write!(f, "; {proxy} rejects it: {why}")?;
                }
                Ok(())
            }
        }
    }
}

/// Whether `s`'s current weights are confirmed by every proxy.
pub fn of(s: &ServiceStatus) -> Confirmation {
    if let Some(p) = &s.in_progress {
        return Confirmation::Unconfirmed(Unconfirmed::InProgress {
            id: p.id,
            verb: p.verb,
            phase: p.phase,
            step: p.step,
            steps: p.steps,
            acked: p.acked,
            total: p.total,
            waiting_for: p.waiting_for.clone(),
        });
    }
    if let Some(last) = &s.last_change
        && !last.outcome.is_success()
        // A retirement that did not happen left the weights as they were.
        && last.verb != Verb::Retire
    {
        return Confirmation::Unconfirmed(Unconfirmed::LastChange {
            id: last.id,
            verb: last.verb,
            outcome: last.outcome.clone(),
        });
    }
    if !s.applied.all() {
        return Confirmation::Unconfirmed(Unconfirmed::Proxies {
            acked: s.applied.acked,
            total: s.applied.total,
            waiting_for: s.applied.waiting_for.clone(),
            rejecting: s.applied.rejecting.clone(),
        });
    }
    Confirmation::Confirmed
}

#[cfg(test)]
#[path = "confirmation_tests.rs"]
mod tests;
