//! Fitting the durable state to a config, at start-up and on every reload.
//!
//! The rule: **a config never moves traffic.** Weights belong to the
//! operations and the state; the file only says which services and fleets
//! exist and where their endpoints are. So a new service starts on its
//! `live` fleet, a new fleet joins at weight 0, a fleet at weight 0 may go,
//! and a config that would take away a fleet still holding traffic (by
//! removing it or emptying the endpoints it lists) is refused whole. A
//! fleet whose endpoints come from elsewhere ([`EndpointSource`]) is never
//! "emptied" by the file: its endpoints are not the file's. But a reload
//! that points a fleet taking traffic at a source with nothing for it is
//! ([`check_reload_endpoints`]).
//!
//! [`EndpointSource`]: crate::config::EndpointSource

use std::collections::BTreeMap;

use crate::config::Weights;
use crate::config::{Config, EndpointSource, Service};
use crate::rollout::Split;
use crate::state::{PersistedState, ServiceState};

/// Why a config cannot be applied to the state; nothing changes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReconcileError {
    /// The config drops a fleet that still takes traffic.
    #[error(
        "fleet {fleet:?} of service {service:?} takes {weight}% of its traffic and is not in \
         the config; flip or shift its traffic away first, then remove it"
    )]
    FleetRemoved {
        /// The service.
        service: String,
        /// The fleet.
        fleet: String,
        /// Its weight now.
        weight: u32,
    },
    /// The config leaves a fleet that takes traffic with no endpoints.
    #[error(
        "fleet {fleet:?} of service {service:?} takes {weight}% of its traffic and has no \
         endpoints in the config; flip or shift its traffic away first"
    )]
    FleetEmptied {
        /// The service.
        service: String,
        /// The fleet.
        fleet: String,
        /// Its weight now.
        weight: u32,
    },
    /// A reload leaves a fleet that takes traffic, whose endpoints come
    /// from elsewhere than the file, with none.
    #[error(
        "fleet {fleet:?} of service {service:?} takes {weight}% of its traffic and would have \
         no endpoints after this reload (its source, {origin}, has none for it); flip or shift \
         its traffic away first, or give it endpoints before changing where they come from"
    )]
    FleetLeftEmpty {
        /// The service.
        service: String,
        /// The fleet.
        fleet: String,
        /// Its weight now.
        weight: u32,
        /// Where its endpoints would come from.
        origin: &'static str,
    },
}

/// The state `state` becomes under `config`: services the config no longer
/// has are dropped (their history is kept), new services start on their
/// `live` fleet, fleets are added at weight 0 or dropped if they had none,
/// a rollback point or retirement naming a dropped fleet is dropped. Every
/// other weight stays as it is.
pub(crate) fn reconcile(
    config: &Config,
    state: &PersistedState,
) -> Result<PersistedState, ReconcileError> {
    let initial = Weights::initial(config);
    let mut services = BTreeMap::new();
    for (name, svc) in &config.services {
        let Some(old) = state.services.get(name) else {
            let st = ServiceState {
                weights: initial.get(name).cloned().unwrap_or_default(),
                ..ServiceState::default()
            };
            services.insert(name.clone(), st);
            continue;
        };
        for (fleet, weight) in old.weights.iter().filter(|(_, w)| **w > 0) {
            match svc.fleets.get(fleet) {
                None => {
                    return Err(ReconcileError::FleetRemoved {
                        service: name.clone(),
                        fleet: fleet.clone(),
                        weight: *weight,
                    });
                }
                // Only the file's endpoints are the config's to take away;
                // other sources report what exists, and the guards on the
                // registration path keep operators from emptying a live
                // fleet by mistake.
                Some(f) if f.source.is_file() && f.endpoints.is_empty() => {
                    return Err(ReconcileError::FleetEmptied {
                        service: name.clone(),
                        fleet: fleet.clone(),
                        weight: *weight,
                    });
                }
                Some(_) => {}
            }
        }
        let fit = |split: &Split| fit_split(svc, split);
        let mut st = old.clone();
        st.weights = fit(&old.weights);
        st.rollback_to = old
            .rollback_to
            .as_ref()
            .filter(|p| {
                p.iter().all(|(f, w)| {
                    *w == 0
                        || svc
                            .fleets
                            .get(f)
                            .is_some_and(|x| !x.source.is_file() || !x.endpoints.is_empty())
                })
            })
            .map(fit);
        st.retired.retain(|f| svc.fleets.contains_key(f));
        services.insert(name.clone(), st);
    }
    Ok(PersistedState {
        services,
        ..state.clone()
    })
}

/// Refuses a reload from `served` to `next` (both the config as served:
/// with the endpoints from outside the file laid over it) that would leave
/// a fleet taking traffic in `state` with no endpoints, whatever their
/// source. The file's own fleets are [`reconcile`]'s to refuse; this one
/// covers a fleet the reload points at a source that has nothing for it:
/// `registered` with nothing registered in the state, or a Kubernetes
/// Service it did not use before (its watch starts after the reload, so
/// nothing of it has been seen; flip away first, or add the Service as
/// another fleet).
///
/// A fleet whose source the reload leaves as it was, and that has no
/// endpoints already, does not refuse it: the reload changes nothing for
/// it (registrations ran out, pods are not ready, or a Kubernetes watch
/// has not answered since start-up, when such a fleet is served empty
/// until it does), and refusing would only block unrelated changes,
/// or the one that gives it endpoints again.
pub(super) fn check_reload_endpoints(
    served: &Config,
    next: &Config,
    state: &PersistedState,
) -> Result<(), ReconcileError> {
    for (name, st) in &state.services {
        let Some(svc) = next.services.get(name) else {
            continue;
        };
        for (fleet, weight) in st.weights.iter().filter(|(_, w)| **w > 0) {
            let Some(after) = svc.fleets.get(fleet) else {
                continue;
            };
            if after.source.is_file() {
                continue;
            }
            let before = served.services.get(name).and_then(|s| s.fleets.get(fleet));
            let same_source = before.is_some_and(|b| b.source == after.source);
            // A Kubernetes Service the fleet did not use before has not
            // been seen: its watch starts once the reload is applied, and
            // what the fleet held until now came from elsewhere.
            let unseen = !same_source && matches!(after.source, EndpointSource::Kubernetes(_));
            if !after.endpoints.is_empty() && !unseen {
                continue;
            }
            if same_source && before.is_some_and(|b| b.endpoints.is_empty()) {
                continue;
            }
            return Err(ReconcileError::FleetLeftEmpty {
                service: name.clone(),
                fleet: fleet.clone(),
                weight: *weight,
                origin: after.source.as_str(),
            });
        }
    }
    Ok(())
}

/// `split` over exactly `svc`'s fleets: fleets the config no longer has
/// are dropped, fleets it added get 0. Callers check first that no dropped
/// fleet had traffic.
pub(super) fn fit_split(svc: &Service, split: &Split) -> Split {
    svc.fleets
        .keys()
        .map(|f| (f.clone(), split.get(f).copied().unwrap_or(0)))
        .collect()
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
