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
