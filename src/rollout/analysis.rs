//! Judging a switch by its traffic: the error ratio of the fleets gaining
//! traffic, as the proxies' own load reports (LRS) show it over a window
//! after the switch is confirmed.
//!
//! Pure: a [`Window`] takes what the controller hands the machine
//! ([`FleetTraffic`], sums since each proxy's load stream opened), keeps a
//! mark per proxy and fleet at the window's start and counts what came
//! after it, and [`Window::verdict`] judges those counts at a given time.
//! Memory is one mark per proxy and fleet judged; a proxy that leaves
//! takes its counts with it; an evaluation is O(proxies).
//!
//! # How a verdict weighs the proxies
//!
//! Every proxy reports its own counts, and teal cannot tell a proxy that
//! lies (or is broken, or sits in front of the one bad endpoint) from the
//! others. So no single proxy decides a verdict alone while others
//! report:
//!
//! 1. Only proxies that completed requests to the fleet in the window
//!    count ("reporting proxies"); one that reports nothing is neither
//!    healthy nor failing.
//! 2. **Capped weight.** A proxy counts for at most [`WEIGHT_CAP`] times
//!    the requests of the median reporting proxy (the lower middle one of
//!    an even number; its errors scaled down in proportion), so one proxy
//!    claiming a billion requests weighs no more than a couple of ordinary
//!    ones. `min_requests` is checked against these capped counts: of two
//!    proxies, whose verdict rests on both, the busier counts for at most
//!    twice the other.
//! 3. **The extremes left out.** With three or more reporting proxies,
//!    the one with the highest error ratio and the one with the lowest are
//!    left out, and the ratio is the others' pooled: errors over requests,
//!    capped. Whatever one proxy reports, it is either left out or lies
//!    between two honest ones, so the verdict's ratio lies between the
//!    lowest and the highest ratio of the honest proxies: if every other
//!    proxy sees the fleet fail, it fails; if every other sees it healthy,
//!    it passes.
//! 4. **Two proxies must agree.** With exactly two, the fleet fails when
//!    both are over the threshold and passes when both are at or under
//!    it; when they disagree there is no verdict, and the service's
//!    `too_few_requests` says what that means, as for too few requests.
//! 5. With one reporting proxy, there are no others: its ratio is the
//!    verdict's.
//!
//! A fleet fails as soon as its verdict is over the threshold with enough
//! requests, even before the window ends; it passes only at the end.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::reason::{Allowed, OverBaseline, Proxies, Shortfall, TrafficFigures};
use super::serde_time;
use super::traffic::FleetTraffic;
use crate::config::{Analysis, Ratio, TooFewRequests};

/// A proxy counts for at most this many times the requests of the median
/// reporting proxy. Two leaves room for a proxy honestly busier than most
/// (a larger zone, an edge in front of more clients) while keeping one
/// that claims more from outweighing a few ordinary ones.
pub(crate) const WEIGHT_CAP: u64 = 2;

/// How many proxies a verdict's figures name, the first by id.
pub(crate) const FIGURES_NAMED: usize = 5;

/// What a plan judges traffic by: the service's `analysis`, as it was when
/// the operation started (saved with it, so a restart judges the same).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Criteria {
    #[serde(
        rename = "max_error_ratio_ppm",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) max_error_ratio: Option<Ratio>,
    #[serde(
        rename = "max_error_ratio_over_baseline_ppm",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) over_baseline: Option<Ratio>,
    pub(crate) min_requests: u64,
    #[serde(rename = "window_ms", with = "serde_time::millis")]
    pub(crate) window: Duration,
    pub(crate) too_few_requests: TooFewRequests,
}

impl From<&Analysis> for Criteria {
    fn from(a: &Analysis) -> Criteria {
        Criteria {
            max_error_ratio: a.max_error_ratio,
            over_baseline: a.max_error_ratio_over_baseline,
            min_requests: u64::from(a.min_requests),
            window: a.window,
            too_few_requests: a.too_few_requests,
        }
    }
}

/// What the fleets losing traffic did over a window before a switch
/// (measured by the controller from the per-second counts it keeps).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Baseline {
    /// The fleets losing traffic.
    pub(crate) fleets: Vec<String>,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
}

impl Criteria {
    /// The error ratio allowed after a switch from fleets that did
    /// `baseline` before it: the lower of the two thresholds set. A
    /// baseline of fewer than `min_requests` requests tells nothing, and
    /// counts as 0%.
    pub(crate) fn allowed(&self, baseline: Option<&Baseline>) -> Allowed {
        let relative = self.over_baseline.map(|points| {
            let measured = baseline
                .filter(|b| b.requests >= self.min_requests)
                .map(|b| Ratio::of(b.errors, b.requests));
            let ratio = measured.unwrap_or_default().saturating_add(points);
            let over = OverBaseline {
                fleets: baseline.map(|b| b.fleets.clone()).unwrap_or_default(),
                baseline: measured,
                points,
            };
            (ratio, over)
        });
        match (self.max_error_ratio, relative) {
            (Some(max), Some((ratio, _))) if max <= ratio => Allowed {
                ratio: max,
                over_baseline: None,
            },
            (_, Some((ratio, over))) => Allowed {
                ratio,
                over_baseline: Some(over),
            },
            (max, None) => Allowed {
                ratio: max.unwrap_or_default(),
                over_baseline: None,
            },
        }
    }
}

/// One proxy's requests to a fleet in the window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProxyCount {
    pub(crate) id: Arc<str>,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
}

/// One fleet's traffic, judged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Judged {
    /// At or under the threshold, with enough requests.
    Pass,
    /// Over it, with enough requests.
    Fail(Box<TrafficFigures>),
    /// No verdict.
    TooFew(Shortfall),
}

/// Judges `fleet`'s `counts` against `allowed` (see the module docs for
/// how proxies are weighed); `after` is how long the window has run, for
/// the figures. O(proxies).
pub(crate) fn judge(
    fleet: &str,
    counts: &[ProxyCount],
    allowed: &Allowed,
    min_requests: u64,
    after: Duration,
) -> Judged {
    let reporting: Vec<&ProxyCount> = counts.iter().filter(|c| c.requests > 0).collect();
    let mut requests: Vec<u64> = reporting.iter().map(|c| c.requests).collect();
    let median = match requests.len() {
        0 => 0,
        n => *requests.select_nth_unstable((n - 1) / 2).1,
    };
    let cap = median.saturating_mul(WEIGHT_CAP);
    // Per reporting proxy: its capped weight and its own error ratio.
    let weighed: Vec<(u64, f64)> = reporting
        .iter()
        .map(|c| {
            let errors = c.errors.min(c.requests);
            (c.requests.min(cap), errors as f64 / c.requests as f64)
        })
        .collect();
    let counted = weighed.iter().fold(0u64, |a, (w, _)| a.saturating_add(*w));
    if reporting.is_empty() || counted < min_requests {
        return Judged::TooFew(Shortfall::Requests {
            counted,
            needed: min_requests,
            proxies: reporting.len(),
        });
    }
    let over = |r: f64| Ratio::from_fraction(r) > allowed.ratio;
    let ratio = match weighed.as_slice() {
        [one] => one.1,
        [a, b] => {
            if over(a.1) != over(b.1) {
                let (hi, lo) = if a.1 > b.1 { (0, 1) } else { (1, 0) };
                let named = |i: usize| {
                    (
                        reporting[i].id.to_string(),
                        Ratio::from_fraction(weighed[i].1),
                    )
                };
                return Judged::TooFew(Shortfall::Disagree {
                    over: named(hi),
                    under: named(lo),
                    allowed: allowed.ratio,
                });
            }
            pooled(&weighed, &[])
        }
        _ => {
            let highest = extreme(&weighed, |a, b| a > b);
            let lowest = extreme(&weighed, |a, b| a < b);
            // All ratios equal: the same proxy is both; leave out another.
            let lowest = if lowest == highest {
                usize::from(highest == 0)
            } else {
                lowest
            };
            pooled(&weighed, &[highest, lowest])
        }
    };
    if !over(ratio) {
        return Judged::Pass;
    }
    let (requests, errors) = reporting.iter().fold((0u64, 0u64), |(r, e), c| {
        (
            r.saturating_add(c.requests),
            e.saturating_add(c.errors.min(c.requests)),
        )
    });
    Judged::Fail(Box::new(TrafficFigures {
        fleet: fleet.to_owned(),
        ratio: Ratio::from_fraction(ratio),
        allowed: allowed.clone(),
        requests,
        errors,
        proxies: first_named(&reporting),
        after,
    }))
}

/// The index of the proxy whose ratio is `better` than every other's (the
/// first of equals).
fn extreme(weighed: &[(u64, f64)], better: impl Fn(f64, f64) -> bool) -> usize {
    let mut at = 0;
    for (i, (_, r)) in weighed.iter().enumerate() {
        if better(*r, weighed[at].1) {
            at = i;
        }
    }
    at
}

/// The pooled ratio of the proxies not `left_out`: their errors over their
/// requests, each capped.
fn pooled(weighed: &[(u64, f64)], left_out: &[usize]) -> f64 {
    let (mut errors, mut requests) = (0.0, 0.0);
    for (i, (w, r)) in weighed.iter().enumerate() {
        if !left_out.contains(&i) {
            errors += *w as f64 * r;
            requests += *w as f64;
        }
    }
    if requests > 0.0 {
        errors / requests
    } else {
        0.0
    }
}

/// The first [`FIGURES_NAMED`] of `proxies` by id, and how many more.
fn first_named(proxies: &[&ProxyCount]) -> Proxies {
    let mut ids: Vec<&str> = proxies.iter().map(|c| &*c.id).collect();
    let n = ids.len();
    if n > FIGURES_NAMED {
        ids.select_nth_unstable(FIGURES_NAMED - 1);
        ids.truncate(FIGURES_NAMED);
    }
    ids.sort_unstable();
    Proxies {
        named: ids.iter().map(|id| (*id).to_owned()).collect(),
        more: n.saturating_sub(FIGURES_NAMED),
    }
}

/// Where one proxy's counts of one fleet stood, and what the window has
/// counted of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Mark {
    /// Its sums as last seen (since its load stream opened).
    seen: (u64, u64),
    /// Requests and errors counted in the window.
    counted: (u64, u64),
}

/// What a window says now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// The window runs, and nothing failed yet.
    Pending,
    /// The window ended and every fleet passed.
    Pass,
    /// A fleet failed: the first by name.
    Fail(Box<TrafficFigures>),
    /// The window ended without a verdict on this fleet (the first by
    /// name), and none failed.
    TooFew { fleet: String, shortfall: Shortfall },
}

/// The traffic of the fleets gaining it after a switch, counted from the
/// window's start (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct Window {
    started: Instant,
    ends: Instant,
    /// By fleet, by proxy id.
    fleets: BTreeMap<String, HashMap<Arc<str>, Mark>>,
}

impl Window {
    /// A window over `fleets` from `now`, `length` long.
    pub(crate) fn new(fleets: &[String], now: Instant, length: Duration) -> Window {
        Window {
            started: now,
            ends: now + length,
            fleets: fleets.iter().map(|f| (f.clone(), HashMap::new())).collect(),
        }
    }

    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    pub(crate) fn ends(&self) -> Instant {
        self.ends
    }

    /// What each fleet's proxies reported in the window so far, as the
    /// progress shows it: `green: 0.2% errors in 812 requests from 5 of 6
    /// proxies`.
    pub(crate) fn summary(&self) -> String {
        self.fleets
            .iter()
            .map(|(fleet, marks)| {
                let (requests, errors, reporting) =
                    marks.values().fold((0u64, 0u64, 0usize), |(r, e, n), m| {
                        (
                            r.saturating_add(m.counted.0),
                            e.saturating_add(m.counted.1.min(m.counted.0)),
                            n + usize::from(m.counted.0 > 0),
                        )
                    });
                format!(
                    "{fleet}: {} errors in {requests} requests from {reporting} of {} proxies",
                    Ratio::of(errors, requests),
                    marks.len()
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The fleets it judges, by name.
    pub(crate) fn fleets(&self) -> impl Iterator<Item = &String> {
        self.fleets.keys()
    }

    /// Takes what the proxies report now. A proxy is marked where it
    /// stands when first seen (one that reported nothing of the fleet yet,
    /// at zero), so nothing from before the window, or from before it was
    /// seen, is counted. A proxy whose sums went down opened a new load
    /// stream: they count from zero again. One with no counts (its stream
    /// is gone) starts again from zero; one no longer listed leaves, with
    /// its counts.
    pub(crate) fn observe(&mut self, traffic: &[FleetTraffic]) {
        for t in traffic {
            let Some(marks) = self.fleets.get_mut(&t.fleet) else {
                continue;
            };
            let mut next = HashMap::with_capacity(t.proxies.len());
            for p in &t.proxies {
                let now = p.load.map(|c| (c.requests, c.errors));
                let mark = match (marks.remove(&p.id), now) {
                    (Some(mut m), Some(now)) => {
                        let from = if now.0 < m.seen.0 || now.1 < m.seen.1 {
                            (0, 0)
                        } else {
                            m.seen
                        };
                        m.counted.0 = m.counted.0.saturating_add(now.0 - from.0);
                        m.counted.1 = m.counted.1.saturating_add(now.1 - from.1);
                        m.seen = now;
                        m
                    }
                    (Some(m), None) => Mark { seen: (0, 0), ..m },
                    (None, now) => Mark {
                        seen: now.unwrap_or_default(),
                        counted: (0, 0),
                    },
                };
                next.insert(p.id.clone(), mark);
            }
            *marks = next;
        }
    }

    /// The window's counts of `fleet`, per proxy.
    pub(crate) fn counts(&self, fleet: &str) -> Vec<ProxyCount> {
        self.fleets
            .get(fleet)
            .map(|marks| {
                marks
                    .iter()
                    .map(|(id, m)| ProxyCount {
                        id: id.clone(),
                        requests: m.counted.0,
                        errors: m.counted.1,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The verdict at `now`: a fail as soon as one fleet fails; else
    /// pending until the window ends; then a pass, or the first fleet
    /// without a verdict.
    pub(crate) fn verdict(&self, allowed: &Allowed, min_requests: u64, now: Instant) -> Verdict {
        let after = now.saturating_duration_since(self.started);
        let mut unjudged = None;
        for fleet in self.fleets.keys() {
            match judge(fleet, &self.counts(fleet), allowed, min_requests, after) {
                Judged::Fail(figures) => return Verdict::Fail(figures),
                Judged::TooFew(shortfall) if unjudged.is_none() => {
                    unjudged = Some(Verdict::TooFew {
                        fleet: fleet.clone(),
                        shortfall,
                    });
                }
                Judged::TooFew(_) | Judged::Pass => {}
            }
        }
        if now < self.ends {
            return Verdict::Pending;
        }
        unjudged.unwrap_or(Verdict::Pass)
    }
}

#[cfg(test)]
#[path = "analysis_tests.rs"]
mod tests;
