use super::*;
use crate::config::fixtures;

/// `web` on blue, green and red, behind a sidecar listener.
fn base() -> fixtures::ConfigFixture {
    fixtures::web()
        .fleet("web", "red", "endpoints: [127.0.0.1:3]")
        .sidecar()
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
    let without_red = base().without_fleet("web", "red").config();
    let next = reconcile(&without_red, &st).expect("allowed");
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
    let without_red = base().without_fleet("web", "red").config();
    assert_eq!(
        reconcile(&without_red, &st),
        Err(ReconcileError::FleetRemoved {
            service: "web".into(),
            fleet: "red".into(),
            weight: 100
        })
    );
    let red_empty = base().fleet("web", "red", "endpoints: []").config();
    assert!(matches!(
        reconcile(&red_empty, &st),
        Err(ReconcileError::FleetEmptied { .. })
    ));
}

#[test]
fn a_rollback_point_into_a_removed_fleet_is_dropped_and_new_services_start_live() {
    let st = state(
        &[("blue", 100), ("green", 0), ("red", 0)],
        Some(&[("red", 100)]),
    );
    let without_red = base().without_fleet("web", "red").config();
    let next = reconcile(&without_red, &st).expect("allowed");
    assert_eq!(next.services["web"].rollback_to, None);
    assert_eq!(next.services["web"].weights["blue"], 100);

    let fresh = reconcile(&base().config(), &PersistedState::default()).expect("allowed");
    assert_eq!(fresh.services["web"].weights["blue"], 100);
    assert_eq!(fresh.services["web"].rollback_to, None);
}

#[test]
fn a_reload_leaving_a_fleet_with_traffic_with_no_endpoints_is_refused_whatever_the_source() {
    let served = base().config();
    let st = state(&[("blue", 100), ("green", 0), ("red", 0)], None);
    let registered = base()
        .fleet("web", "blue", "endpoints: registered")
        .config();
    assert_eq!(
        check_reload_endpoints(&served, &registered, &st),
        Err(ReconcileError::FleetLeftEmpty {
            service: "web".into(),
            fleet: "blue".into(),
            weight: 100,
            origin: "registered",
        })
    );
    let kube = base()
        .fleet(
            "web",
            "blue",
            "kubernetes: {namespace: shop, service: web-blue, port: http}",
        )
        .config();
    assert!(matches!(
        check_reload_endpoints(&served, &kube, &st),
        Err(ReconcileError::FleetLeftEmpty {
            origin: "kubernetes",
            ..
        })
    ));
    // A fleet at weight 0 may be left with none.
    let green = base()
        .fleet("web", "green", "endpoints: registered")
        .config();
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
