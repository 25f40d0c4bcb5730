//! The proxies' traffic as an operation sees it: per fleet it looks at,
//! every proxy of the groups routing the service, with what its load
//! reports (LRS) said since its load stream opened, or that it reports
//! nothing. The controller hands it to the machine as
//! [`Event::Traffic`](super::machine::Event::Traffic) every report
//! interval while the machine asks for it
//! ([`Rollout::wants_traffic`](super::machine::Rollout::wants_traffic)).
//!
//! Counts are sums since each proxy's load stream opened, never reset: a
//! machine that judges a window keeps its own mark per proxy and takes
//! the difference, so a report that arrives late is counted once, in
//! the window it arrived in.

use std::sync::Arc;

use crate::xds::load::ClusterCounters;

/// One proxy's traffic to one fleet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ProxyTraffic {
    /// The proxy's node id.
    pub(crate) id: Arc<str>,
    /// `None`: it has no load stream, or no report of it named the fleet
    /// yet; it is never taken as idle.
    pub(crate) load: Option<ClusterCounters>,
}

/// One fleet's proxies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FleetTraffic {
    pub(crate) fleet: String,
    pub(crate) proxies: Vec<ProxyTraffic>,
}

/// What `teal status` shows of one fleet's traffic: what the load reports
/// of the proxies routing its service say, over a window.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MeasuredFleet {
    /// The fleet.
    pub fleet: String,
    /// The window the counts are over.
    pub window: std::time::Duration,
    /// Requests completed over the window.
    pub requests: u64,
    /// Of those, the ones that failed.
    pub errors: u64,
    /// Requests in progress at each proxy's last report, summed.
    pub in_progress: u64,
    /// Proxies routing the service whose load reports name the fleet.
    pub proxies_reporting: usize,
    /// Proxies routing the service (connected, in its groups, not
    /// cordoned).
    pub proxies_routing: usize,
    /// Requests reported since teal first asked for the fleet (a counter
    /// for `/metrics`).
    pub total_requests: u64,
    /// Of those, the ones that failed.
    pub total_errors: u64,
}
