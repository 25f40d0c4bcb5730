use std::collections::BTreeMap;

use serde_json::json;

use super::*;
use crate::config::{Config, KubernetesRef};
use crate::kubernetes::gateway::HttpRoute;

const TEAL: &str = DEFAULT_CONTROLLER_NAME;

/// `web` with Kubernetes fleets blue (Service `web-blue`) and green
/// (`web-green`) and a file fleet `old`, in namespace `shop`; an edge
/// group implementing Gateway `infra/public`, a group implementing
/// `infra/other` that does not route web, and a sidecar group.
fn config() -> Config {
    let yaml = "services:\n  web:\n    live: blue\n    kubernetes: {route: {namespace: shop, name: web}}\n\
        \x20   fleets:\n      blue: {kubernetes: {namespace: shop, service: web-blue}}\n\
        \x20     green: {kubernetes: {namespace: shop, service: web-green}}\n\
        \x20     old: {endpoints: [127.0.0.1:1]}\n\
        \x20 api:\n    live: blue\n    fleets:\n      blue: {endpoints: [127.0.0.1:2]}\n\
        groups:\n  edge:\n    kubernetes: {gateway: {namespace: infra, name: public}}\n\
        \x20   listeners:\n      public:\n        address: 127.0.0.1:10000\n        kind: edge\n\
        \x20       virtual_hosts:\n          all:\n            domains: [\"*\"]\n\
        \x20           routes: [{prefix: /, service: web}]\n\
        \x20 apis:\n    kubernetes: {gateway: {namespace: infra, name: other}}\n\
        \x20   listeners:\n      public:\n        address: 127.0.0.1:10002\n        kind: edge\n\
        \x20       virtual_hosts:\n          all:\n            domains: [\"*\"]\n\
        \x20           routes: [{prefix: /, service: api}]\n\
        \x20 mesh:\n    listeners:\n      out:\n        address: 127.0.0.1:10001\n\
        \x20       kind: sidecar\n        services: [web]\n";
    Config::parse(yaml, "t.yaml").unwrap_or_else(|d| panic!("{d}"))
}

fn route(rules: serde_json::Value) -> HttpRoute {
    serde_json::from_value(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "web", "namespace": "shop", "generation": 4},
        "spec": {"parentRefs": [{"name": "public", "namespace": "infra"}], "rules": rules}
    }))
    .expect("an HTTPRoute")
}

fn weights(pairs: &[(&str, i64)]) -> HttpRoute {
    let refs: Vec<_> = pairs
        .iter()
        .map(|(n, w)| json!({"name": n, "port": 80, "weight": w}))
        .collect();
    route(json!([{ "backendRefs": refs }]))
}

fn split(pairs: &[(&str, u32)]) -> crate::rollout::Split {
    pairs.iter().map(|(f, w)| ((*f).to_owned(), *w)).collect()
}

fn split_of(r: &HttpRoute) -> Result<crate::rollout::Split, RouteProblem> {
    let c = config();
    route_split(r, "web", &c.services["web"])
}

#[test]
fn backend_weights_become_the_service_split_summing_to_100() {
    for (given, want) in [
        (
            vec![("web-blue", 90), ("web-green", 10)],
            vec![("blue", 90), ("green", 10), ("old", 0)],
        ),
        (
            vec![("web-blue", 1), ("web-green", 2)],
            vec![("blue", 33), ("green", 67), ("old", 0)],
        ),
        (
            vec![("web-blue", 1), ("web-green", 1)],
            vec![("blue", 50), ("green", 50), ("old", 0)],
        ),
        (
            vec![("web-green", 1)],
            vec![("blue", 0), ("green", 100), ("old", 0)],
        ),
        (
            vec![("web-blue", 1), ("web-green", 1), ("web-blue", 1)],
            vec![("blue", 67), ("green", 33), ("old", 0)],
        ),
        (
            vec![("web-blue", 999_999), ("web-green", 1)],
            vec![("blue", 100), ("green", 0), ("old", 0)],
        ),
        (
            vec![("web-blue", 0), ("web-green", 7)],
            vec![("blue", 0), ("green", 100), ("old", 0)],
        ),
    ] {
        assert_eq!(split_of(&weights(&given)), Ok(split(&want)), "{given:?}");
    }
    // An unset weight is 1.
    let r =
        route(json!([{"backendRefs": [{"name": "web-blue"}, {"name": "web-green", "weight": 3}]}]));
    assert_eq!(
        split_of(&r),
        Ok(split(&[("blue", 25), ("green", 75), ("old", 0)]))
    );
}

#[test]
fn backends_that_are_not_fleets_are_refused_with_the_standard_reason() {
    let cases = [
        (
            json!([{"backendRefs": [{"name": "web-blue"}, {"name": "web-canary"}]}]),
            ProblemCondition::ResolvedRefs("BackendNotFound"),
        ),
        (
            json!([{"backendRefs": [{"name": "web-blue", "namespace": "other"}]}]),
            ProblemCondition::ResolvedRefs("RefNotPermitted"),
        ),
        (
            json!([{"backendRefs": [{"name": "web-blue", "kind": "Bucket", "group": "x.io"}]}]),
            ProblemCondition::ResolvedRefs("InvalidKind"),
        ),
        // `old` takes its endpoints from the file: it has no Service.
        (
            json!([{"backendRefs": [{"name": "old"}]}]),
            ProblemCondition::ResolvedRefs("BackendNotFound"),
        ),
        (
            json!([{"backendRefs": [{"name": "web-blue", "weight": -1}]}]),
            ProblemCondition::Accepted("UnsupportedValue"),
        ),
        (
            json!([{"backendRefs": [{"name": "web-blue", "weight": 1_000_001}]}]),
            ProblemCondition::Accepted("UnsupportedValue"),
        ),
        (json!([]), ProblemCondition::Accepted("UnsupportedValue")),
        (
            json!([{"backendRefs": [{"name": "web-blue"}]},
                   {"backendRefs": [{"name": "web-green"}]}]),
            ProblemCondition::Accepted("UnsupportedValue"),
        ),
        (
            json!([{"backendRefs": [{"name": "web-blue", "weight": 0}]}]),
            ProblemCondition::Refused,
        ),
    ];
    for (rules, want) in cases {
        let e = split_of(&route(rules.clone())).expect_err(&rules.to_string());
        assert_eq!(e.condition(), want, "{rules}: {e}");
    }
    // Rules that agree are one split.
    let r = route(json!([{"backendRefs": [{"name": "web-blue", "weight": 1}]},
                         {"backendRefs": [{"name": "web-blue", "weight": 5}]}]));
    assert_eq!(
        split_of(&r),
        Ok(split(&[("blue", 100), ("green", 0), ("old", 0)]))
    );
}

fn classes(pairs: &[(&str, &str)]) -> BTreeMap<KubernetesRef, String> {
    pairs
        .iter()
        .map(|(gw, c)| {
            (
                KubernetesRef {
                    namespace: "infra".into(),
                    name: (*gw).into(),
                },
                (*c).to_owned(),
            )
        })
        .collect()
}

fn role(parent: serde_json::Value, classes: &BTreeMap<KubernetesRef, String>) -> ParentRole {
    let p: ParentRef = serde_json::from_value(parent).expect("a parentRef");
    parent_role(&config(), "web", "shop", &p, TEAL, classes)
}

#[test]
fn only_parents_teal_implements_are_ours() {
    let ours = classes(&[("public", TEAL), ("other", TEAL)]);
    assert_eq!(
        role(json!({"name": "public", "namespace": "infra"}), &ours),
        ParentRole::Gateway {
            group: "edge".into(),
            routes: true
        }
    );
    assert_eq!(
        role(json!({"name": "other", "namespace": "infra"}), &ours),
        ParentRole::Gateway {
            group: "apis".into(),
            routes: false
        }
    );
    // The class is another controller's, or the Gateway could not be read.
    let theirs = classes(&[("public", "example.com/gateway")]);
    assert_eq!(
        role(json!({"name": "public", "namespace": "infra"}), &theirs),
        ParentRole::NotOurs
    );
    assert_eq!(
        role(
            json!({"name": "public", "namespace": "infra"}),
            &classes(&[])
        ),
        ParentRole::NotOurs
    );
    // No group implements it (the namespace defaults to the route's).
    assert_eq!(role(json!({"name": "public"}), &ours), ParentRole::NotOurs);
    // GAMMA: a Service parent, and a sidecar group routes web.
    assert_eq!(
        role(
            json!({"name": "web", "kind": "Service", "group": ""}),
            &ours
        ),
        ParentRole::Mesh
    );
    assert_eq!(
        role(
            json!({"name": "web", "kind": "Service", "group": "x.io"}),
            &ours
        ),
        ParentRole::NotOurs
    );
    let p: ParentRef =
        serde_json::from_value(json!({"name": "api", "kind": "Service"})).expect("a parentRef");
    assert_eq!(
        parent_role(&config(), "api", "shop", &p, TEAL, &ours),
        ParentRole::NotOurs,
        "no sidecar group routes api"
    );
}

fn entry(controller: &str, parent: &str, conditions: serde_json::Value) -> RouteParentStatus {
    serde_json::from_value(json!({
        "parentRef": {"name": parent, "namespace": "infra"},
        "controllerName": controller,
        "conditions": conditions,
    }))
    .expect("an entry")
}

#[test]
fn our_entries_say_what_happened_per_owned_parent() {
    let r = weights(&[("web-blue", 90), ("web-green", 10)]);
    let parents = vec![(
        r.spec.parent_refs[0].clone(),
        ParentRole::Gateway {
            group: "edge".into(),
            routes: true,
        },
    )];
    let confirmed = Confirmation::Confirmed {
        version: "7-abc".into(),
        acked: 20,
        total: 20,
    };
    let e = our_entries(&r, &parents, Ok(Some(&confirmed)), TEAL, "T1");
    assert_eq!(e.len(), 1);
    let c = &e[0].conditions;
    let types: Vec<(&str, &str, &str)> = c
        .iter()
        .map(|c| (c.type_.as_str(), c.status.as_str(), c.reason.as_str()))
        .collect();
    assert_eq!(
        types,
        [
            ("Accepted", "True", "Accepted"),
            ("ResolvedRefs", "True", "ResolvedRefs"),
            (CONFIRMED, "True", "Confirmed")
        ]
    );
    assert!(c.iter().all(|c| c.observed_generation == Some(4)));
    assert_eq!(c[2].message, "version 7-abc confirmed by 20/20 proxies");
    let pending = Confirmation::Pending {
        version: Some("7-abc".into()),
        acked: 1,
        total: 2,
        waiting_for: vec!["envoy-2".into()],
        phase: "confirming".into(),
    };
    let e = our_entries(&r, &parents, Ok(Some(&pending)), TEAL, "T1");
    assert_eq!(e[0].conditions[2].reason, "Pending");
    assert!(
        e[0].conditions[2].message.contains("envoy-2"),
        "{:?}",
        e[0].conditions[2]
    );
    let problem = RouteProblem::BackendNotFound {
        namespace: "shop".into(),
        name: "web-canary".into(),
        service: "web".into(),
    };
    let e = our_entries(&r, &parents, Err(&problem), TEAL, "T1");
    assert_eq!(
        (
            e[0].conditions[1].status.as_str(),
            e[0].conditions[1].reason.as_str()
        ),
        ("False", "BackendNotFound")
    );
    assert_eq!(e[0].conditions.len(), 2, "nothing to confirm");
}

#[test]
fn merging_keeps_other_controllers_entries_and_transition_times() {
    let theirs = entry(
        "example.com/other",
        "public",
        json!([{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                "lastTransitionTime": "T0"}]),
    );
    let mut theirs_with_extra = theirs.clone();
    theirs_with_extra
        .rest
        .insert("vendor".into(), json!({"kept": true}));
    let old_ours = entry(
        TEAL,
        "public",
        json!([{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                "lastTransitionTime": "T0"},
               {"type": CONFIRMED, "status": "False", "reason": "Pending", "message": "",
                "lastTransitionTime": "T0"}]),
    );
    let new_ours = entry(
        TEAL,
        "public",
        json!([{"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
                "lastTransitionTime": "T1"},
               {"type": CONFIRMED, "status": "True", "reason": "Confirmed", "message": "",
                "lastTransitionTime": "T1"}]),
    );
    let merged = merge_entries(&[theirs_with_extra.clone(), old_ours], vec![new_ours], TEAL);
    assert_eq!(merged.len(), 2);
    assert_eq!(
        merged[0], theirs_with_extra,
        "another controller's entry is untouched"
    );
    assert_eq!(
        merged[1].conditions[0].last_transition_time, "T0",
        "Accepted held"
    );
    assert_eq!(
        merged[1].conditions[1].last_transition_time, "T1",
        "Confirmed changed"
    );
    // Merging again changes nothing: no write is needed.
    let again = merge_entries(&merged, vec![merged[1].clone()], TEAL);
    assert_eq!(again, merged);
    // Never more than the API's bound.
    let many: Vec<_> = (0..MAX_STATUS_PARENTS)
        .map(|i| entry("example.com/other", &format!("gw-{i}"), json!([])))
        .collect();
    let merged = merge_entries(&many, vec![entry(TEAL, "public", json!([]))], TEAL);
    assert_eq!(merged.len(), MAX_STATUS_PARENTS);
    assert!(merged.iter().all(|e| e.controller_name != TEAL));
}

#[test]
fn a_recorded_rollback_names_its_generation() {
    let mut r = weights(&[("web-blue", 1)]);
    assert_eq!(recorded_failure(&r, TEAL), None);
    r.status = Some(crate::kubernetes::gateway::RouteStatus {
        parents: vec![
            entry(
                "example.com/other",
                "public",
                json!([{"type": CONFIRMED, "status": "False", "reason": "RolledBack",
                        "observedGeneration": 9}]),
            ),
            entry(
                TEAL,
                "public",
                json!([{"type": CONFIRMED, "status": "False", "reason": "RolledBack",
                        "observedGeneration": 3}]),
            ),
        ],
        rest: Default::default(),
    });
    assert_eq!(
        recorded_failure(&r, TEAL),
        Some(3),
        "only teal's own entry counts"
    );
}

#[test]
fn a_recorded_refusal_does_not_hold_its_generation() {
    let mut r = weights(&[("web-blue", 1)]);
    r.status = Some(crate::kubernetes::gateway::RouteStatus {
        parents: vec![entry(
            TEAL,
            "public",
            json!([{"type": CONFIRMED, "status": "False", "reason": "Refused",
                    "observedGeneration": 3}]),
        )],
        rest: Default::default(),
    });
    assert_eq!(recorded_failure(&r, TEAL), None);
}

#[test]
fn an_operation_s_progress_is_what_confirmed_says() {
    use crate::rollout::{Outcome, Phase, Progress, Reason, Verb};
    let mut p = Progress {
        id: 7,
        service: "web".into(),
        verb: Verb::Shift,
        phase: Phase::Confirming,
        step: 1,
        steps: 1,
        target: split(&[("blue", 0), ("green", 100)]),
        version: None,
        acked: 19,
        total: 20,
        waiting_for: vec!["envoy-7".into()],
        not_waiting_for: Vec::new(),
        checks: Vec::new(),
        message: String::new(),
        warnings: Vec::new(),
        outcome: None,
    };
    assert!(matches!(
        Confirmation::of(&p),
        Confirmation::Pending { ref waiting_for, acked: 19, total: 20, .. } if waiting_for == &["envoy-7"]
    ));
    p.acked = 20;
    p.outcome = Some(Outcome::Succeeded);
    assert!(matches!(
        Confirmation::of(&p),
        Confirmation::Confirmed {
            acked: 20,
            total: 20,
            ..
        }
    ));
    let reason = Reason::NothingToDo;
    for (outcome, rolled_back) in [
        (
            Outcome::RolledBack {
                reason: reason.clone(),
            },
            true,
        ),
        (
            Outcome::Unconfirmed {
                reason: reason.clone(),
            },
            true,
        ),
        (
            Outcome::Refused {
                reason: reason.clone(),
            },
            false,
        ),
    ] {
        p.outcome = Some(outcome);
        let c = Confirmation::of(&p);
        assert_eq!(
            matches!(c, Confirmation::RolledBack { .. }),
            rolled_back,
            "{c:?}"
        );
        assert_eq!(
            matches!(c, Confirmation::Refused { .. }),
            !rolled_back,
            "{c:?}"
        );
    }
}

#[test]
fn weights_in_effect_are_confirmed_by_the_proxies_holding_their_group_s_version() {
    use crate::transport::identity::PeerIdentity;
    use crate::xds::resources::{PerType, ResourceType};
    use crate::xds::{NodeInfo, ProxyStatus, StreamKind};
    let proxy = |id: &str, group: &str, acked: Option<&str>, disconnected: bool| {
        let mut types: PerType<crate::xds::status::TypeStatus> = Default::default();
        types[ResourceType::Route].acked = acked.map(str::to_owned);
        ProxyStatus {
            stream_id: 1,
            node: Some(NodeInfo {
                id: id.into(),
                cluster: group.into(),
                user_agent: String::new(),
            }),
            kind: StreamKind::Aggregated,
            delta: false,
            connected_since: std::time::SystemTime::UNIX_EPOCH,
            identity: PeerIdentity::Unauthenticated,
            types,
            replica: None,
            disconnected,
        }
    };
    let versions: BTreeMap<String, PerType<String>> = ["edge", "apis", "mesh"]
        .into_iter()
        .map(|g| (g.to_owned(), PerType::from_fn(|_| format!("{g}-v2"))))
        .collect();
    let proxies = [
        proxy("e1", "edge", Some("edge-v2"), false),
        proxy("e2", "edge", Some("edge-v1"), false),
        proxy("m1", "mesh", Some("mesh-v2"), false),
        proxy("m2", "mesh", Some("mesh-v2"), true),
        // apis does not route web.
        proxy("a1", "apis", None, false),
        proxy("x1", "nobody", None, false),
    ];
    assert_eq!(
        holding(&config(), "web", &proxies, &versions),
        (2, 4, vec!["e2".to_owned(), "m2".to_owned()])
    );
    assert_eq!(
        holding(&config(), "web", &proxies[..1], &versions),
        (1, 1, vec![])
    );
}

mod props {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Any weights within the API's bounds make a split of every fleet
        /// summing to 100, where each fleet is within one point of its
        /// exact share; anything else is refused, never a panic.
        #[test]
        fn any_weights_make_a_whole_split_or_a_refusal(
            backends in prop::collection::vec(
                (prop::sample::select(vec!["web-blue", "web-green", "web-red"]),
                 prop_oneof![4 => 0i64..=1_000_000, 1 => any::<i64>()]),
                1..16,
            )
        ) {
            let r = weights(&backends);
            match split_of(&r) {
                Ok(s) => {
                    prop_assert_eq!(s.values().sum::<u32>(), 100);
                    prop_assert_eq!(s.len(), 3);
                    let total: i64 = backends.iter().map(|(_, w)| w).sum();
                    for (fleet, service) in [("blue", "web-blue"), ("green", "web-green")] {
                        let w: i64 = backends.iter().filter(|(n, _)| *n == service).map(|(_, w)| w).sum();
                        let exact = w as f64 * 100.0 / total as f64;
                        prop_assert!((f64::from(s[fleet]) - exact).abs() < 1.0, "{fleet}: {} vs {exact}", s[fleet]);
                    }
                }
                Err(e) => {
                    let fine = backends.iter().all(|(_, w)| (0..=1_000_000).contains(w));
                    let red = backends.iter().any(|(n, _)| *n == "web-red");
                    let zero = backends.iter().all(|(_, w)| *w == 0);
                    prop_assert!(!fine || red || zero, "refused: {}", e);
                }
            }
        }
    }
}

#[test]
fn the_gates_see_where_a_generation_is() {
    use crate::rollout::RouteState;
    let problem = RouteProblem::BackendNotFound {
        namespace: "shop".into(),
        name: "x".into(),
        service: "web".into(),
    };
    assert_eq!(route_state(Err(&problem)), RouteState::NotApplied);
    assert_eq!(
        route_state(Err(&RouteProblem::ZeroWeights)),
        RouteState::Refused
    );
    let in_effect = Confirmation::InEffect {
        version: "1".into(),
        acked: 0,
        total: 0,
    };
    assert_eq!(route_state(Ok(&in_effect)), RouteState::Confirmed);
    let rolled = Confirmation::RolledBack { why: "x".into() };
    assert_eq!(route_state(Ok(&rolled)), RouteState::RolledBack);

    let mut r = weights(&[("web-blue", 1)]);
    assert_eq!(recorded_confirmed(&r, TEAL), None);
    r.status = Some(crate::kubernetes::gateway::RouteStatus {
        parents: vec![
            entry(
                TEAL,
                "public",
                json!([{"type": CONFIRMED, "status": "True", "reason": "Confirmed",
                        "observedGeneration": 5}]),
            ),
            entry(
                "example.com/other",
                "public",
                json!([{"type": CONFIRMED, "status": "True", "reason": "Confirmed",
                        "observedGeneration": 9}]),
            ),
        ],
        rest: Default::default(),
    });
    assert_eq!(recorded_confirmed(&r, TEAL), Some(5));
}
