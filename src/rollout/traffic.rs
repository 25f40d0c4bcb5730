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
