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
pub fn reconcile(
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
mod tests {
    use super::*;

    const BASE: &str = r#"
services:
  web:
    live: blue
    fleets:
      blue: {endpoints: [127.0.0.1:1]}
      green: {endpoints: [127.0.0.1:2]}
      red: {endpoints: [127.0.0.1:3]}
groups:
  edge:
    listeners:
      public:
        kind: sidecar
        address: 127.0.0.1:10000
        services: [web]
"#;

    fn config(text: &str) -> Config {
        Config::parse(text, "t.yaml").expect("valid")
    }

    fn state(weights: &[(&str, u32)], rollback: Option<&[(&str, u32)]>) -> PersistedState {
        let split = |p: &[(&str, u32)]| p.iter().map(|(f, w)| ((*f).to_owned(), *w)).collect();
        let mut s = PersistedState::default();
        s.services.insert(
            "web".into(),
            ServiceState {
                weights: split(weights),
                rollback_to: rollback.map(split),
                ..ServiceState::default()
            },
        );
        s
    }

    #[test]
    fn dropping_an_unused_fleet_keeps_every_other_weight() {
        let st = state(
            &[("blue", 0), ("green", 100), ("red", 0)],
            Some(&[("blue", 100)]),
        );
        let without_red = BASE.replace("      red: {endpoints: [127.0.0.1:3]}\n", "");
        let next = reconcile(&config(&without_red), &st).expect("allowed");
        let web = &next.services["web"];
        assert_eq!(
            web.weights,
            [("blue".to_owned(), 0), ("green".to_owned(), 100)].into()
        );
        assert_eq!(
            web.rollback_to,
            Some([("blue".to_owned(), 100), ("green".to_owned(), 0)].into())
        );
    }

    #[test]
    fn removing_or_emptying_a_fleet_with_traffic_is_refused() {
        let st = state(&[("blue", 0), ("green", 0), ("red", 100)], None);
        let without_red = BASE.replace("      red: {endpoints: [127.0.0.1:3]}\n", "");
        assert_eq!(
            reconcile(&config(&without_red), &st),
            Err(ReconcileError::FleetRemoved {
                service: "web".into(),
                fleet: "red".into(),
                weight: 100
            })
        );
        let red_empty = BASE.replace("red: {endpoints: [127.0.0.1:3]}", "red: {endpoints: []}");
        assert!(matches!(
            reconcile(&config(&red_empty), &st),
            Err(ReconcileError::FleetEmptied { .. })
        ));
    }

    #[test]
    fn a_rollback_point_into_a_removed_fleet_is_dropped_and_new_services_start_live() {
        let st = state(
            &[("blue", 100), ("green", 0), ("red", 0)],
            Some(&[("red", 100)]),
        );
        let without_red = BASE.replace("      red: {endpoints: [127.0.0.1:3]}\n", "");
        let next = reconcile(&config(&without_red), &st).expect("allowed");
        assert_eq!(next.services["web"].rollback_to, None);
        assert_eq!(next.services["web"].weights["blue"], 100);

        let fresh = reconcile(&config(BASE), &PersistedState::default()).expect("allowed");
        assert_eq!(fresh.services["web"].weights["blue"], 100);
        assert_eq!(fresh.services["web"].rollback_to, None);
    }

    #[test]
    fn a_reload_leaving_a_fleet_with_traffic_with_no_endpoints_is_refused_whatever_the_source() {
        let served = config(BASE);
        let st = state(&[("blue", 100), ("green", 0), ("red", 0)], None);
        let registered = config(&BASE.replace(
            "blue: {endpoints: [127.0.0.1:1]}",
            "blue: {endpoints: registered}",
        ));
        assert_eq!(
            check_reload_endpoints(&served, &registered, &st),
            Err(ReconcileError::FleetLeftEmpty {
                service: "web".into(),
                fleet: "blue".into(),
                weight: 100,
                origin: "registered",
            })
        );
        let kube = config(&BASE.replace(
            "blue: {endpoints: [127.0.0.1:1]}",
            "blue: {kubernetes: {namespace: shop, service: web-blue, port: http}}",
        ));
        assert!(matches!(
            check_reload_endpoints(&served, &kube, &st),
            Err(ReconcileError::FleetLeftEmpty {
                origin: "kubernetes",
                ..
            })
        ));
        // A fleet at weight 0 may be left with none.
        let green = config(&BASE.replace(
            "green: {endpoints: [127.0.0.1:2]}",
            "green: {endpoints: registered}",
        ));
        assert_eq!(check_reload_endpoints(&served, &green, &st), Ok(()));
        // Already empty from the same source (registrations ran out, a
        // watch not answered yet): the reload changes nothing for it.
        assert_eq!(
            check_reload_endpoints(&registered, &registered, &st),
            Ok(())
        );
        assert_eq!(check_reload_endpoints(&kube, &kube, &st), Ok(()));
        // Switching from one empty source to another is the reload's doing.
        assert!(check_reload_endpoints(&registered, &kube, &st).is_err());
        // What the fleet held from its last source is not the new
        // Service's; once that Service's watch reported, it is.
        let mut overlay = crate::config::EndpointOverlay::new();
        overlay.set(
            "web",
            "blue",
            vec![crate::config::Endpoint {
                address: "127.0.0.1:7".parse().expect("address"),
                weight: 1,
                zone: None,
            }],
        );
        let kube_held = kube.with_endpoints(&overlay);
        assert!(check_reload_endpoints(&served, &kube_held, &st).is_err());
        assert_eq!(check_reload_endpoints(&kube_held, &kube_held, &st), Ok(()));
    }
}
