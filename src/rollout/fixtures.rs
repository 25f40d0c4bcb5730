//! Builders shared by the rollout's tests, and by those of the layers
//! above that need a service's status.

use std::collections::BTreeSet;
use std::time::Duration;

use super::plan::{Change, ServiceView};
use super::{Operation, ServiceStatus, ShiftSteps, Split};

pub(crate) static NONE_RETIRED: BTreeSet<String> = BTreeSet::new();

pub(crate) fn split(pairs: &[(&str, u32)]) -> Split {
    pairs.iter().map(|(f, w)| ((*f).to_owned(), *w)).collect()
}

/// `name` split as `weights`, its first fleet live, with nothing else to
/// say: no operation, no change, no proxy, no load report. A test sets
/// what it looks at on top (`ServiceStatus { applied, ..service_status(..) }`).
pub(crate) fn service_status(name: &str, weights: &[(&str, u32)]) -> ServiceStatus {
    ServiceStatus {
        name: name.into(),
        live: weights
            .first()
            .map(|(f, _)| (*f).to_owned())
            .unwrap_or_default(),
        previous: None,
        rollback_to: None,
        weights: split(weights),
        retired: Vec::new(),
        retirement: None,
        drains: Vec::new(),
        both_fleets_since: None,
        last_change: None,
        in_progress: None,
        traffic: Vec::new(),
        applied: Default::default(),
        confirmed: None,
        route: None,
    }
}

/// Service `web` with fleets blue and green, split as `current`.
pub(crate) fn view<'a>(current: &'a Split, rollback_to: Option<&'a Split>) -> ServiceView<'a> {
    ServiceView {
        name: "web",
        fleets: vec!["blue", "green"],
        empty: BTreeSet::new(),
        split: current,
        rollback_to,
        retired: &NONE_RETIRED,
        has_checks: true,
        analysis: None,
    }
}

pub(crate) fn flip(skip_checks: bool) -> Operation {
    Operation::Flip {
        service: "web".into(),
        to: None,
        skip_checks,
        timeout: Duration::from_secs(10),
    }
}

pub(crate) fn rollback(skip_checks: bool) -> Operation {
    Operation::Rollback {
        service: "web".into(),
        skip_checks,
        timeout: Duration::from_secs(10),
    }
}

pub(crate) fn shift(steps: ShiftSteps, interval: Duration, skip_checks: bool) -> Operation {
    Operation::Shift {
        service: "web".into(),
        steps,
        interval,
        skip_checks,
        timeout: Duration::from_secs(10),
    }
}

/// Retire `fleet` of web after `after`, waiting up to `drain` for it to
/// drain.
pub(crate) fn retire(fleet: &str, after: Duration, drain: Duration) -> Operation {
    Operation::Retire {
        service: "web".into(),
        fleet: fleet.into(),
        after,
        drain_timeout: drain,
    }
}

pub(crate) fn percents(to: Option<&str>, p: &[u32]) -> ShiftSteps {
    ShiftSteps::Percents {
        to: to.map(str::to_owned),
        percents: p.to_vec(),
    }
}

/// All of web on green.
pub(crate) fn green() -> Change {
    Change {
        split: split(&[("blue", 0), ("green", 100)]),
        retired: BTreeSet::new(),
    }
}

/// All of web on blue.
pub(crate) fn back() -> Change {
    Change {
        split: split(&[("blue", 100), ("green", 0)]),
        retired: BTreeSet::new(),
    }
}
