use super::*;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, VirtualHost, WeightedCluster, route::Action, route_action,
    weighted_cluster::ClusterWeight,
};

fn cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        ..Default::default()
    }
}

fn weighted_route(name: &str, clusters: &[(&str, u32)]) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: "vh".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::WeightedClusters(
                        WeightedCluster {
                            clusters: clusters
                                .iter()
                                .map(|(n, w)| ClusterWeight {
                                    name: (*n).into(),
                                    weight: Some(envoy_types::pb::google::protobuf::UInt32Value {
                                        value: *w,
                                    }),
                                    ..Default::default()
                                })
                                .collect(),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn input(weights: &[(&str, u32)]) -> SnapshotInput {
    let mut i = SnapshotInput::default();
    i.groups.insert(
        "edge".into(),
        GroupResources {
            clusters: vec![cluster("web-blue"), cluster("web-green")],
            routes: vec![weighted_route("web", weights)],
            ..Default::default()
        },
    );
    i
}

#[test]
fn unchanged_types_keep_their_version_and_bytes() {
    let one = Snapshot::build("1", &input(&[("web-blue", 100)]), None).expect("valid");
    let two = Snapshot::build("2", &input(&[("web-green", 100)]), Some(&one)).expect("valid");
    let (c1, c2) = (
        one.group("edge").of(ResourceType::Cluster),
        two.group("edge").of(ResourceType::Cluster),
    );
    assert_eq!(c2.version(), "1", "clusters did not change");
    assert!(Arc::ptr_eq(c1, c2));
    assert_eq!(two.group("edge").of(ResourceType::Route).version(), "2");
}

#[test]
fn resource_versions_come_from_content() {
    let a = Snapshot::build("1", &input(&[("web-blue", 100)]), None).expect("valid");
    let b = Snapshot::build("9", &input(&[("web-blue", 100)]), None).expect("valid");
    let c = Snapshot::build("1", &input(&[("web-green", 100)]), None).expect("valid");
    let v = |s: &Snapshot| {
        s.group("edge")
            .of(ResourceType::Route)
            .get("web")
            .expect("route")
            .version()
            .to_owned()
    };
    assert_eq!(v(&a), v(&b));
    assert_ne!(v(&a), v(&c));
    assert_eq!(v(&a).len(), 16);
}

#[test]
fn routes_record_the_clusters_they_name() {
    let s =
        Snapshot::build("1", &input(&[("web-blue", 90), ("web-green", 10)]), None).expect("valid");
    let r = s.group("edge").of(ResourceType::Route).get("web").cloned();
    let r = r.expect("route");
    assert_eq!(r.clusters(), ["web-blue", "web-green"]);
    let decoded: RouteConfiguration = r.decode().expect("decodes");
    assert_eq!(
        decoded,
        weighted_route("web", &[("web-blue", 90), ("web-green", 10)])
    );
}

#[test]
fn unknown_groups_get_an_empty_view() {
    let s = Snapshot::build("3", &input(&[("web-blue", 100)]), None).expect("valid");
    assert!(!s.has_group("nobody"));
    let g = s.group("nobody");
    for ty in ResourceType::ALL {
        assert!(g.of(ty).resources().is_empty());
        assert_eq!(g.of(ty).version(), "3");
    }
}

#[test]
fn invalid_input_is_refused_whole() {
    let mut bad = input(&[("web-blue", 100)]);
    bad.groups
        .get_mut("edge")
        .expect("edge")
        .clusters
        .push(cluster(""));
    assert_eq!(
        Snapshot::build("1", &bad, None).expect_err("empty name"),
        BuildError::EmptyName {
            group: "edge".into(),
            ty: ResourceType::Cluster
        }
    );
    assert_eq!(
        Snapshot::build("", &input(&[]), None).expect_err("empty version"),
        BuildError::EmptyVersion
    );
}

#[test]
fn a_build_reuses_what_did_not_change() {
    let mut first = input(&[("web-blue", 100)]);
    if let Some(g) = first.groups.get_mut("edge") {
        g.routes.push(weighted_route("admin", &[("web-blue", 100)]));
    }
    let one = Snapshot::build("1", &first, None).expect("valid");
    let mut second = first.clone();
    if let Some(g) = second.groups.get_mut("edge") {
        g.routes[0] = weighted_route("web", &[("web-green", 100)]);
    }
    let two = Snapshot::build("2", &second, Some(&one)).expect("valid");
    let (r1, r2) = (
        one.group("edge").of(ResourceType::Route),
        two.group("edge").of(ResourceType::Route),
    );
    // The route that did not change is the very same encoding.
    let same =
        |name: &str| Arc::ptr_eq(r1.get(name).expect("in one"), r2.get(name).expect("in two"));
    assert!(same("admin"));
    assert!(!same("web"));
    assert_eq!(r2.version(), "2");
    // Reused or not, every resource is what a fresh build makes of it.
    let fresh = Snapshot::build("2", &second, None).expect("valid");
    for ty in ResourceType::ALL {
        let (a, b) = (two.group("edge").of(ty), fresh.group("edge").of(ty));
        assert_eq!(a.resources().len(), b.resources().len());
        for (name, r) in a.resources() {
            let f = b.get(name).expect("same names");
            assert_eq!(r.any_bytes(), f.any_bytes(), "{ty} {name}");
            assert_eq!(r.delta_bytes(), f.delta_bytes(), "{ty} {name}");
            assert_eq!(r.clusters(), f.clusters(), "{ty} {name}");
        }
    }
}

#[test]
fn the_content_digest_names_the_content_not_the_version() {
    let blue = input(&[("web-blue", 100)]);
    let green = input(&[("web-green", 100)]);
    let built = Snapshot::build_with(&blue, None, |d| format!("7-{d}")).expect("valid");
    assert_eq!(built.digest(), content_digest(&blue));
    assert_eq!(built.version(), format!("7-{}", content_digest(&blue)));
    assert_eq!(built.digest().len(), 12);
    assert_ne!(content_digest(&blue), content_digest(&green));
    // Built on a previous snapshot, with reuse, the digest is the same.
    let on_green = Snapshot::build("g", &green, None).expect("valid");
    let again = Snapshot::build_with(&blue, Some(&on_green), |d| d.to_owned()).expect("valid");
    assert_eq!(again.digest(), content_digest(&blue));
    // The group a resource is served to is part of the content.
    let mut moved = SnapshotInput::default();
    moved.groups.insert(
        "sidecar".into(),
        blue.groups.get("edge").cloned().expect("edge"),
    );
    assert_ne!(content_digest(&moved), content_digest(&blue));
}

#[test]
fn an_empty_version_is_refused_after_naming() {
    let err = Snapshot::build_with(&input(&[("web-blue", 100)]), None, |_| String::new())
        .expect_err("empty version");
    assert_eq!(err, BuildError::EmptyVersion);
}
