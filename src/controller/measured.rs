//! What `teal status` shows of a service's traffic: per fleet, what the
//! load reports of the proxies routing it say over [`STATUS_WINDOW`]; and
//! how many of those proxies hold what is served.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::rollout::machine::WAITING_SHOWN;
use crate::rollout::{Applied, MeasuredFleet};

use super::driver::Driver;
use super::views::proxy_views;

/// The window `teal status` measures traffic over: ten reports of every
/// proxy at the default interval, short enough to show a flip within
/// seconds.
pub(super) const STATUS_WINDOW: Duration = Duration::from_secs(10);

impl Driver {
    /// `service`'s fleets as the load reports show them at `now`: counts
    /// over the last [`STATUS_WINDOW`] whole seconds (the second under
    /// way is left out, so the window is always ten full seconds), the
    /// proxies that report and those that route the service.
    pub(super) fn measured(&self, service: &str, now: Instant) -> Vec<MeasuredFleet> {
        let Some(svc) = self.config.services.get(service) else {
            return Vec::new();
        };
        let fleets: Vec<String> = svc.fleets.keys().cloned().collect();
        let loads = self.registry.loads();
        let last_whole_second = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        let window = loads.measured(service, STATUS_WINDOW, last_whole_second);
        let totals = loads.totals(service);
        self.traffic(service, &fleets)
            .into_iter()
            .map(|t| {
                let counted = window.iter().find(|m| m.fleet == t.fleet);
                let total = totals.get(&t.fleet).copied().unwrap_or_default();
                let reporting = t.proxies.iter().filter_map(|p| p.load);
                MeasuredFleet {
                    window: STATUS_WINDOW,
                    requests: counted.map_or(0, |m| m.requests),
                    errors: counted.map_or(0, |m| m.errors),
                    in_progress: reporting
                        .clone()
                        .fold(0, |n, l| n.saturating_add(l.in_progress)),
                    proxies_reporting: reporting.count(),
                    proxies_routing: t.proxies.len(),
                    total_requests: total.0,
                    total_errors: total.1,
                    fleet: t.fleet,
                }
            })
            .collect()
    }
}

impl Driver {
    /// How many of the proxies routing `service` (cordoned ones aside)
    /// ACKed what is served to their groups now. A proxy whose stream
    /// ended and that holds its place while it reconnects has not: it
    /// will confirm again on its new stream.
    pub(super) fn applied(&self, service: &str) -> Applied {
        let groups = self.basis(service).groups;
        let groups: BTreeSet<&str> = groups.iter().map(String::as_str).collect();
        let snapshot = self.writer.current();
        let cordoned = self.registry.cordons().ids();
        let statuses = self.registry.statuses();
        let (views, _) = proxy_views(
            statuses.iter().map(|p| &**p),
            &groups,
            &snapshot,
            None,
            &cordoned,
        );
        let mut applied = Applied {
            total: views.len(),
            ..Applied::default()
        };
        // The views come by node id, so the first shown are the first by id.
        for v in views {
            if v.confirmed {
                applied.acked += 1;
            } else if applied.waiting_for.len() < WAITING_SHOWN {
                applied.waiting_for.push(v.id.to_string());
            }
            if let Some(nack) = v.nack
                && applied.rejecting.len() < WAITING_SHOWN
            {
                applied.rejecting.push((v.id.to_string(), nack));
            }
        }
        applied
    }
}
