//! What `teal status` shows of a service's traffic: per fleet, what the
//! load reports of the proxies routing it say over [`STATUS_WINDOW`]; and
//! how many of those proxies hold what is served.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::rollout::machine::WAITING_SHOWN;
use crate::rollout::{Applied, MeasuredFleet};
use crate::xds::resources::ResourceType;

use super::driver::{Driver, ProxyLoads};

/// The window `teal status` measures traffic over: ten reports of every
/// proxy at the default interval, short enough to show a flip within
/// seconds.
pub(super) const STATUS_WINDOW: Duration = Duration::from_secs(10);

impl Driver {
    /// `service`'s fleets as the load reports show them at `now`: counts
    /// over the last [`STATUS_WINDOW`] whole seconds (the second under
    /// way is left out, so the window is always ten full seconds), the
    /// proxies that report and those that route the service.
    pub(super) fn measured(
        &self,
        proxies: &ProxyLoads,
        service: &str,
        now: Instant,
    ) -> Vec<MeasuredFleet> {
        let Some(svc) = self.config.services.get(service) else {
            return Vec::new();
        };
        let fleets: Vec<String> = svc.fleets.keys().cloned().collect();
        let loads = self.registry.loads();
        let last_whole_second = now.checked_sub(Duration::from_secs(1)).unwrap_or(now);
        let window = loads.measured(service, STATUS_WINDOW, last_whole_second);
        let totals = loads.totals(service);
        self.traffic_of(proxies, service, &fleets)
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

/// One node's part in [`Driver::applied`].
struct Held {
    /// Every stream of it counted holds the route configuration served.
    held: bool,
    /// The last rejection of the route configuration one of its streams
    /// sent, if its last answer was one.
    nack: Option<String>,
    /// Only streams that ended (held while the proxy reconnects) made it.
    lingering: bool,
}

impl Driver {
    /// How many of the proxies routing `service` (cordoned ones aside)
    /// hold the weights served now: they ACKed the route configuration
    /// served to their groups, which is what carries the weights. Only
    /// routes count: endpoints change with every pod that comes or goes
    /// (a canary scaling up), and a proxy a push of endpoints behind still
    /// routes by the weights it ACKed. A proxy whose stream ended and that
    /// holds its place while it reconnects does not hold them: it will
    /// confirm again on its new stream. Streams of one node are merged as
    /// the rollout merges them (a connected stream wins over ended ones).
    pub(super) fn applied(&self, service: &str) -> Applied {
        let groups = self.basis(service).groups;
        let snapshot = self.writer.current();
        let cordoned = self.registry.cordons().ids();
        let statuses = self.registry.statuses();
        let mut nodes: BTreeMap<&str, Held> = BTreeMap::new();
        for p in statuses.iter() {
            let Some(node) = &p.node else { continue };
            if !groups.contains(&node.cluster) || cordoned.contains(&node.id) {
                continue;
            }
            let served = snapshot
                .group(&node.cluster)
                .of(ResourceType::Route)
                .version();
            let routes = p.of(ResourceType::Route);
            let part = Held {
                held: !p.disconnected
                    && (!routes.subscribed || routes.acked.as_deref() == Some(served)),
                nack: routes
                    .nack
                    .as_ref()
                    .filter(|_| routes.last_was_nacked())
                    .map(|n| format!("RDS {}: {}", n.version, n.message)),
                lingering: p.disconnected,
            };
            match nodes.get_mut(node.id.as_str()) {
                None => {
                    nodes.insert(&node.id, part);
                }
                Some(seen) => match (seen.lingering, part.lingering) {
                    (true, false) => *seen = part,
                    (false, true) => {}
                    _ => {
                        seen.held &= part.held;
                        if part.nack.is_some() {
                            seen.nack = part.nack;
                        }
                    }
                },
            }
        }
        let mut applied = Applied {
            total: nodes.len(),
            groups: groups.iter().cloned().collect(),
            ..Applied::default()
        };
        // By node id, so the first named are the first by id.
        for (id, node) in nodes {
            if node.held {
                applied.acked += 1;
            } else if applied.waiting_for.len() < WAITING_SHOWN {
                applied.waiting_for.push(id.to_owned());
            }
            if let Some(nack) = node.nack
                && applied.rejecting.len() < WAITING_SHOWN
            {
                applied.rejecting.push((id.to_owned(), nack));
            }
        }
        applied
    }
}
