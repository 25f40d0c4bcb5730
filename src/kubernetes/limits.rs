//! The bounds of the watchers, built with or without the `kubernetes`
//! feature (the CLI parses them either way), apart from `mod.rs`, which
//! starts the watchers that take them.

use std::time::Duration;

/// The bounds and the coalescing window of the watchers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KubeLimits {
    /// Most EndpointSlices one fleet may have (`--kube-max-slices`).
    pub max_slices: usize,
    /// Most endpoints (addresses, ready or not) one fleet may have over
    /// all its slices, and one slice may list (`--kube-max-endpoints`).
    pub max_endpoints: usize,
    /// At most one hand-on per service per window.
    pub window: Duration,
    /// The least time between two status writes of one HTTPRoute
    /// (`--kube-status-interval`).
    pub status_interval: Duration,
}

/// The default of `--gateway-controller-name`: the `controllerName` of
/// the GatewayClasses teal implements.
pub const DEFAULT_CONTROLLER_NAME: &str = "teal.dev/gateway-controller";

impl KubeLimits {
    /// Default of `--kube-max-slices`: the EndpointSlice controller puts
    /// up to 100 endpoints in a slice, so this is room for a very large
    /// Service even in slices of one.
    pub(crate) const DEFAULT_MAX_SLICES: usize = 1_000;
    /// Default of `--kube-max-endpoints`: as many as a fleet may be served
    /// (`--max-fleet-endpoints`).
    pub(crate) const DEFAULT_MAX_ENDPOINTS: usize = 1_000;
    /// Default of `--kube-status-interval`: four writes a second at most,
    /// quick enough that `Pending` turns `Confirmed` as fast as a watcher
    /// notices, slow enough that a flapping operation cannot flood the
    /// API server.
    pub(crate) const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_millis(250);
}

impl Default for KubeLimits {
    fn default() -> Self {
        KubeLimits {
            max_slices: KubeLimits::DEFAULT_MAX_SLICES,
            max_endpoints: KubeLimits::DEFAULT_MAX_ENDPOINTS,
            window: Duration::from_millis(100),
            status_interval: KubeLimits::DEFAULT_STATUS_INTERVAL,
        }
    }
}
