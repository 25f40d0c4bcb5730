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

use std::time::{Duration, Instant, SystemTime};

use crate::config::{
    EndpointOverlay, EndpointSetError, EndpointSource, FleetSets, check_endpoints,
};
use crate::rollout::registration::{
    self, EndpointChange, FleetView, Registered, RegistrationError, Request,
};
use crate::rollout::{RolloutError, Version};
use crate::state::PersistedState;

use super::driver::Driver;
use crate::rollout::registration::EndpointLimits;

impl Driver {
    /// Replaces the endpoints of `service`'s fleets named in `sets`, saving
    /// `next` (the current state, or the caller's new durable state) with
    /// the new snapshot in one write; returns the version served after.
    /// Every set is checked before any is applied; nothing changes when
    /// one is refused or the change cannot be committed.
    pub(super) async fn replace_endpoints(
        &mut self,
        service: &str,
        sets: FleetSets,
        next: PersistedState,
        limits: &EndpointLimits,
    ) -> Result<Version, RolloutError> {
        let (overlay, changed) = self.overlay_with(service, sets, limits)?;
        if let (false, Some(version)) = (changed, self.state.version.clone()) {
            // Nothing served changes (a renewal, a repeated set): the
            // state alone is saved, and no version is spent on it.
            if next != self.state {
                self.revision = self
                    .store
                    .save(&next, self.revision)
                    .await
                    .map_err(|e| RolloutError::Store(e.to_string()))?;
                self.state = next;
                self.next_expiry_at = self.state.registered.next_expiry();
            }
            return Ok(version);
        }
        let config = self.file_config.with_endpoints(&overlay);
        let previous = std::mem::replace(&mut self.config, config);
        match self.commit_state(next, false).await {
            Ok(version) => {
                self.overlay = overlay;
                self.next_expiry_at = self.state.registered.next_expiry();
                self.update_cost_windows(std::time::SystemTime::now());
                tracing::info!(%service, %version, "fleet endpoints replaced");
                Ok(version)
            }
            Err(e) => {
                self.config = previous;
                Err(match e {
                    super::command::CommitError::Store(e) => RolloutError::Store(e.to_string()),
                    e => RolloutError::Invalid(e.to_string()),
                })
            }
        }
    }

    /// This driver's overlay with `sets` laid over it, checked whole, and
    /// whether anything changed.
    pub(super) fn overlay_with(
        &self,
        service: &str,
        sets: FleetSets,
        limits: &EndpointLimits,
    ) -> Result<(EndpointOverlay, bool), RolloutError> {
        let svc = self
            .file_config
            .services
            .get(service)
            .ok_or_else(|| self.unknown_service(service))?;
        let mut overlay = self.overlay.clone();
        let mut changed = false;
        for (fleet, endpoints) in sets {
            let Some(fl) = svc.fleets.get(&fleet) else {
                return Err(RolloutError::UnknownFleet {
                    service: service.to_owned(),
                    fleet,
                });
            };
            if fl.source.is_file() {
                return Err(RolloutError::Precondition(format!(
                    "the endpoints of fleet {fleet:?} of service {service:?} are listed in the \
                     config file; to set them from outside, make them `endpoints: registered`"
                )));
            }
            check_endpoints(&endpoints, limits.max_fleet_endpoints).map_err(|e| match e {
                EndpointSetError::TooMany { .. } => RolloutError::Limit(e.to_string()),
                e => RolloutError::Invalid(e.to_string()),
            })?;
            changed |= overlay.set(service, &fleet, endpoints);
        }
        Ok((overlay, changed))
    }

    /// [`Controller::set_fleet_endpoints`](super::Controller::set_fleet_endpoints):
    /// a source's whole set, through [`Driver::replace_endpoints`]. For a
    /// `registered` fleet the set also becomes its durable registrations
    /// (without TTLs), so that what is served and what a restart loads
    /// stay the same.
    pub(super) async fn set_from_outside(
        &mut self,
        service: &str,
        sets: FleetSets,
        limits: &EndpointLimits,
    ) -> Result<Version, RolloutError> {
        let mut next = self.state.clone();
        for (fleet, endpoints) in &sets {
            if self.file_config.source_of(service, fleet) == Some(&EndpointSource::Registered) {
                let registered = endpoints
                    .iter()
                    .map(|e| Registered {
                        address: e.address,
                        weight: e.weight,
                        zone: e.zone.clone(),
                        expires: None,
                    })
                    .collect();
                next.registered.set(service, fleet, registered);
            }
        }
        self.replace_endpoints(service, sets, next, limits).await
    }

    /// The registration path: applies `request` to a registered fleet
    /// ([`registration::apply`]), refuses to empty a fleet that takes
    /// traffic (or that a running operation sends traffic to) unless
    /// `force`, logs the change with `actor`, and saves and serves it in
    /// one write through [`Driver::replace_endpoints`].
    pub(super) async fn change_registered(
        &mut self,
        service: &str,
        fleet: &str,
        request: Request,
        actor: &str,
        force: bool,
        limits: &EndpointLimits,
    ) -> Result<FleetView, RolloutError> {
        match self.file_config.source_of(service, fleet) {
            None if !self.file_config.services.contains_key(service) => {
                return Err(self.unknown_service(service));
            }
            None => {
                return Err(RolloutError::UnknownFleet {
                    service: service.to_owned(),
                    fleet: fleet.to_owned(),
                });
            }
            Some(EndpointSource::Registered) => {}
            Some(other) => {
                let from = match other {
                    EndpointSource::Kubernetes(_) => "Kubernetes EndpointSlices",
                    _ => "the config file",
                };
                return Err(RolloutError::Precondition(format!(
                    "fleet {fleet:?} of service {service:?} takes its endpoints from {from}; \
                     only `endpoints: registered` fleets are changed through the admin API"
                )));
            }
        }
        let now = SystemTime::now();
        let before = self.state.registered.get(service, fleet).to_vec();
        let after =
            registration::apply(fleet, &before, &request, now, limits).map_err(|e| match e {
                RegistrationError::NotRegistered { .. } => {
                    RolloutError::Precondition(e.to_string())
                }
                RegistrationError::Ttl { .. }
                | RegistrationError::Endpoints(EndpointSetError::TooMany { .. }) => {
                    RolloutError::Limit(e.to_string())
                }
                e => RolloutError::Invalid(e.to_string()),
            })?;
        if after.is_empty() && !before.is_empty() && !force {
            self.refuse_emptying(service, fleet)?;
        }
        let mut next = self.state.clone();
        next.registered.set(service, fleet, after.clone());
        let entry = EndpointChange::between(fleet, request.verb(), actor, now, &before, &after);
        let renewal = matches!(
            request,
            Request::Register { .. } | Request::Heartbeat { .. }
        ) && entry.added_count == 0
            && entry.removed_count == 0
            && same_but_expiry(&before, &after);
        if !renewal && before != after {
            next.registered.record(service, entry);
        }
        let endpoints = after.iter().map(Registered::endpoint).collect();
        self.replace_endpoints(service, vec![(fleet.to_owned(), endpoints)], next, limits)
            .await?;
        tracing::info!(%service, %fleet, %actor, verb = request.verb().as_str(), "registered fleet changed");
        self.fleet_view(service, fleet)
    }

    /// Refuses to take the last endpoint of a fleet that takes traffic,
    /// or that a running operation is sending traffic to.
    fn refuse_emptying(&self, service: &str, fleet: &str) -> Result<(), RolloutError> {
        let weight = self
            .state
            .services
            .get(service)
            .and_then(|st| st.weights.get(fleet))
            .copied()
            .unwrap_or(0);
        let targeted = self
            .running
            .get(service)
            .and_then(|r| r.rollout.target().and_then(|t| t.get(fleet)).copied())
            .unwrap_or(0);
        if weight > 0 {
            return Err(RolloutError::Precondition(format!(
                "fleet {fleet:?} of service {service:?} takes {weight}% of its traffic: \
                 removing its last endpoint leaves that traffic nowhere to go; flip or shift \
                 it away first, or pass --force"
            )));
        }
        if targeted > 0 {
            return Err(RolloutError::Precondition(format!(
                "an operation on service {service:?} is sending {targeted}% of its traffic to \
                 fleet {fleet:?}: removing its last endpoint would leave that traffic nowhere \
                 to go; abort the operation first, or pass --force"
            )));
        }
        Ok(())
    }

    /// A fleet as `teal fleet show` prints it.
    pub(super) fn fleet_view(&self, service: &str, fleet: &str) -> Result<FleetView, RolloutError> {
        let svc = self
            .config
            .services
            .get(service)
            .ok_or_else(|| self.unknown_service(service))?;
        let fl = svc
            .fleets
            .get(fleet)
            .ok_or_else(|| RolloutError::UnknownFleet {
                service: service.to_owned(),
                fleet: fleet.to_owned(),
            })?;
        let st = self.state.services.get(service);
        let endpoints = match fl.source {
            EndpointSource::Registered => self.state.registered.get(service, fleet).to_vec(),
            _ => fl
                .endpoints
                .iter()
                .map(|e| Registered {
                    address: e.address,
                    weight: e.weight,
                    zone: e.zone.clone(),
                    expires: None,
                })
                .collect(),
        };
        Ok(FleetView {
            service: service.to_owned(),
            fleet: fleet.to_owned(),
            source: fl.source.to_string(),
            weight: st.and_then(|s| s.weights.get(fleet)).copied().unwrap_or(0),
            retired: st.is_some_and(|s| s.retired.contains(fleet)),
            endpoints,
            changes: self
                .state
                .registered
                .log
                .get(service)
                .map(|log| {
                    log.iter()
                        .rev()
                        .filter(|c| c.fleet == fleet)
                        .take(20)
                        .cloned()
                        .collect()
                })
                .unwrap_or_default(),
            version: self.state.version.clone(),
        })
    }

    /// When the next registration runs out, as a deadline for the
    /// driver's loop (the wall clock is read here, at the edge); not
    /// before a retry after a failed expiry.
    pub(super) fn next_expiry(&self) -> Option<Instant> {
        // Only the leader writes the state, expiries included; a follower
        // serves the expiries the leader saves.
        if !self.leads() {
            return None;
        }
        let at = self.next_expiry_at?;
        let wait = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        let deadline = Instant::now() + wait;
        Some(self.expiry_retry.map_or(deadline, |r| r.max(deadline)))
    }

    /// Drops the registrations whose TTL ran out by `now` and serves the
    /// fleets without them, through [`Driver::replace_endpoints`] like any
    /// change. Expiry removes even a live fleet's last endpoint: the
    /// instance stopped renewing, so it is gone either way. A failed save
    /// is retried a second later.
    pub(super) async fn expire_registrations(&mut self, now: SystemTime) {
        let mut next = self.state.clone();
        let changed = next.registered.expire(now);
        if changed.is_empty() {
            // Woken early (the wall clock stepped back since the deadline
            // was set): look again a little later rather than spin.
            self.expiry_retry = Some(Instant::now() + Duration::from_millis(100));
            return;
        }
        // Expiry only shrinks sets that were admitted within the limits.
        let limits = EndpointLimits {
            max_fleet_endpoints: usize::MAX,
            ..EndpointLimits::default()
        };
        // Registrations of a fleet the file no longer calls `registered`
        // are served by nothing; they only need to go from the state.
        let served: Vec<(String, String)> = changed
            .into_iter()
            .filter(|(s, f)| self.file_config.source_of(s, f) == Some(&EndpointSource::Registered))
            .collect();
        if served.is_empty() {
            match self.store.save(&next, self.revision).await {
                Ok(revision) => {
                    self.revision = revision;
                    self.state = next;
                    self.next_expiry_at = self.state.registered.next_expiry();
                    self.expiry_retry = None;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not expire registrations; retrying");
                    self.expiry_retry = Some(Instant::now() + Duration::from_secs(1));
                }
            }
            return;
        }
        // One commit per service, its fleets together. The first commit
        // saves every expiry; the next ones build on the state that commit
        // left (its version counter included).
        let mut by_service: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for (service, fleet) in served {
            by_service.entry(service).or_default().push(fleet);
        }
        let mut first = Some(next);
        for (service, fleets) in by_service {
            let state = first.take().unwrap_or_else(|| self.state.clone());
            let sets = fleets
                .into_iter()
                .map(|fleet| {
                    let endpoints = state
                        .registered
                        .get(&service, &fleet)
                        .iter()
                        .map(Registered::endpoint)
                        .collect();
                    (fleet, endpoints)
                })
                .collect::<FleetSets>();
            let names: Vec<&str> = sets.iter().map(|(f, _)| f.as_str()).collect();
            tracing::info!(%service, fleets = ?names, "registrations expired");
            if let Err(e) = self.replace_endpoints(&service, sets, state, &limits).await {
                tracing::warn!(error = %e, %service, "could not expire registrations; retrying");
                self.expiry_retry = Some(Instant::now() + Duration::from_secs(1));
                return;
            }
        }
        self.expiry_retry = None;
    }
}

/// Whether two registration lists differ at most in their expiries.
fn same_but_expiry(a: &[Registered], b: &[Registered]) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|(x, y)| {
            Registered {
                expires: None,
                ..x.clone()
            } == Registered {
                expires: None,
                ..y.clone()
            }
        })
}

#[cfg(test)]
#[path = "endpoints_tests.rs"]
mod tests;
