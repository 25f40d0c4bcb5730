//! Endpoints from outside the file: the one way they reach what teal
//! serves.
//!
//! A fleet whose [`EndpointSource`](crate::config::EndpointSource) is not
//! the file gets its endpoints from a source that reports them at run
//! time: the registration API, or a platform's registry. Every such
//! source replaces a fleet's whole endpoint set through
//! [`Driver::replace_endpoints`], reached from outside the driver by
//! [`Controller::set_fleet_endpoints`](super::Controller::set_fleet_endpoints).
//! It runs on the driver task, so an endpoint change and a rollout's
//! commit never interleave: each is built from the other's result, and
//! neither can undo the other (no lost update).
//!
//! What it does, in order:
//! 1. refuses (changing nothing) an unknown service or fleet, a fleet
//!    whose endpoints come from the file, or a set that fails
//!    [`check_endpoints`];
//! 2. lays the set over the file's config ([`Config::with_endpoints`]);
//! 3. commits: builds the snapshot, saves the state the caller passes
//!    (a source that keeps its endpoints durably, like the registration
//!    API, hands in its new state so both go in one write), then serves.
//!
//! Only the fleet's `ClusterLoadAssignment` changes, so only EDS versions
//! move: clusters, routes and listeners keep their versions and proxies
//! are sent nothing else. A rollout's checks, started after the change,
//! run against the new endpoints; confirmation is unaffected, since
//! proxies that ACK a later version have also applied the rollout's.
//!
//! [`Config::with_endpoints`]: crate::config::Config::with_endpoints

use crate::config::{Endpoint, check_endpoints};
use crate::rollout::{RolloutError, Version};
use crate::state::PersistedState;

use super::driver::Driver;

/// Bounds on endpoints from outside the file, each a `teal serve` flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointLimits {
    /// Most endpoints one fleet may have (`--max-fleet-endpoints`).
    pub max_fleet_endpoints: usize,
}

impl EndpointLimits {
    /// Default of `--max-fleet-endpoints`: well above any fleet teal's
    /// snapshots are built for, low enough that one fleet cannot make an
    /// EDS push megabytes large.
    pub const DEFAULT_MAX_FLEET_ENDPOINTS: usize = 1000;
}

impl Default for EndpointLimits {
    fn default() -> EndpointLimits {
        EndpointLimits {
            max_fleet_endpoints: EndpointLimits::DEFAULT_MAX_FLEET_ENDPOINTS,
        }
    }
}

impl Driver {
    /// Replaces `service`'s `fleet` endpoints with `endpoints`, saving
    /// `next` (the current state, or the caller's new durable state) with
    /// the new snapshot in one write; returns the version served after.
    /// Nothing changes when it is refused or cannot be committed.
    pub(super) async fn replace_endpoints(
        &mut self,
        service: &str,
        fleet: &str,
        endpoints: Vec<Endpoint>,
        next: PersistedState,
        limits: &EndpointLimits,
    ) -> Result<Version, RolloutError> {
        let svc = self
            .file_config
            .services
            .get(service)
            .ok_or_else(|| self.unknown_service(service))?;
        let Some(fl) = svc.fleets.get(fleet) else {
            return Err(RolloutError::UnknownFleet {
                service: service.to_owned(),
                fleet: fleet.to_owned(),
            });
        };
        if fl.source.is_file() {
            return Err(RolloutError::Precondition(format!(
                "the endpoints of fleet {fleet:?} of service {service:?} are listed in the \
                 config file; to set them from outside, make them `endpoints: registered`"
            )));
        }
        check_endpoints(&endpoints, limits.max_fleet_endpoints)
            .map_err(|e| RolloutError::Invalid(e.to_string()))?;
        let mut overlay = self.overlay.clone();
        let changed = overlay.set(service, fleet, endpoints);
        if !changed
            && next == self.state
            && let Some(v) = &self.state.version
        {
            return Ok(v.clone());
        }
        let config = self.file_config.with_endpoints(&overlay);
        let previous = std::mem::replace(&mut self.config, config);
        match self.commit_state(next, false).await {
            Ok(version) => {
                self.overlay = overlay;
                self.update_cost_windows(std::time::SystemTime::now());
                tracing::info!(%service, %fleet, %version, "fleet endpoints replaced");
                Ok(version)
            }
            Err(e) => {
                self.config = previous;
                Err(match e {
                    super::CommitError::Store(e) => RolloutError::Store(e.to_string()),
                    e => RolloutError::Invalid(e.to_string()),
                })
            }
        }
    }
}
