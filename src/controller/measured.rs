//! What `teal status` shows of a service's traffic: per fleet, what the
//! load reports of the proxies routing it say over [`STATUS_WINDOW`].

use std::time::{Duration, Instant};

use crate::rollout::MeasuredFleet;

use super::driver::Driver;

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
