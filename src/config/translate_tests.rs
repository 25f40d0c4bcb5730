use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use envoy_types::pb::envoy::config::route::v3::{Route as EnvoyRoute, RouteConfiguration};

use super::*;
use crate::config::DEFAULT_CONFIG;

fn example() -> Config {
    Config::parse(DEFAULT_CONFIG, "teal.yaml").expect("example is valid")
}

fn cluster_of(route: &EnvoyRoute) -> &ClusterSpecifier {
    match &route.action {
        Some(Action::Route(a)) => a.cluster_specifier.as_ref().expect("cluster"),
        other => panic!("not a route action: {other:?}"),
    }
}

fn vhost<'a>(rc: &'a RouteConfiguration, name: &str) -> &'a [EnvoyRoute] {
    &rc.virtual_hosts
        .iter()
        .find(|v| v.name == name)
        .expect("virtual host")
        .routes
}

#[test]
fn clusters_per_service_and_fleet() {
    let input = translate(&example(), &Weights::initial(&example()));
    let edge = &input.groups["edge"];
    let names: Vec<&str> = edge.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["api-blue", "api-green", "web-blue", "web-green"]);
    let cla: Vec<&str> = edge
        .endpoints
        .iter()
        .map(|c| c.cluster_name.as_str())
        .collect();
    assert_eq!(cla, names);
    let web_blue = &edge.endpoints[2];
    assert_eq!(web_blue.endpoints.len(), 1);
    assert_eq!(
        web_blue.endpoints[0]
            .locality
            .as_ref()
            .map(|l| l.zone.as_str()),
        Some("local")
    );
    // Only the api cluster speaks HTTP/2, through exactly one map entry.
    for c in &edge.clusters {
        let want = usize::from(c.name.starts_with("api-"));
        assert_eq!(c.typed_extension_protocol_options.len(), want, "{}", c.name);
        assert!(c.eds_cluster_config.is_some());
    }
}

#[test]
fn groups_get_only_the_services_they_route_to() {
    let text = DEFAULT_CONFIG.replace("services: [api, web]", "services: [web]");
    let config = Config::parse(&text, "t.yaml").expect("valid");
    let input = translate(&config, &Weights::initial(&config));
    let names: Vec<&str> = input.groups["sidecar"]
        .clusters
        .iter()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["web-blue", "web-green"]);
    assert_eq!(input.groups["edge"].clusters.len(), 4);
}

#[test]
fn routes_preview_then_weighted() {
    let config = example();
    let input = translate(&config, &Weights::initial(&config));
    let rc = &input.groups["edge"].routes[0];
    assert_eq!(rc.name, "public");
    let routes = vhost(rc, "site");
    // api: 2 preview + weighted, then web: 2 preview + weighted.
    assert_eq!(routes.len(), 6);
    let preview = &routes[4];
    let m = preview.r#match.as_ref().expect("match");
    assert_eq!(m.headers.len(), 1);
    assert_eq!(m.headers[0].name, FLEET_HEADER);
    assert_eq!(
        cluster_of(preview),
        &ClusterSpecifier::Cluster("web-green".into())
    );
    let wc = weighted_clusters(&routes[5]);
    assert_eq!(split_of(wc), [("web-blue", 100), ("web-green", 0)]);
    for cw in &wc.clusters {
        let h = cw.request_headers_to_add[0]
            .header
            .as_ref()
            .expect("header");
        assert_eq!(h.key, FLEET_HEADER);
        assert!(cw.name.ends_with(&format!("-{}", h.value)));
    }
}

#[test]
fn sidecar_virtual_hosts_by_service_name() {
    let config = example();
    let input = translate(&config, &Weights::initial(&config));
    let rc = &input.groups["sidecar"].routes[0];
    let domains: Vec<Vec<String>> = rc.virtual_hosts.iter().map(|v| v.domains.clone()).collect();
    assert_eq!(
        domains,
        [
            vec!["api".to_owned(), "api:15001".to_owned()],
            vec!["web".to_owned(), "web:15001".to_owned()]
        ]
    );
}

/// The weighted clusters of `route`; panics on any other action.
fn weighted_clusters(route: &EnvoyRoute) -> &WeightedCluster {
    let ClusterSpecifier::WeightedClusters(wc) = cluster_of(route) else {
        panic!("not weighted: {route:?}");
    };
    wc
}

/// (cluster, weight) pairs of `wc`, in order.
fn split_of(wc: &WeightedCluster) -> Vec<(&str, u32)> {
    wc.clusters
        .iter()
        .map(|c| (c.name.as_str(), c.weight.as_ref().map_or(0, |w| w.value)))
        .collect()
}

/// `config` translated at its initial weights, and with service `web`
/// all on green.
fn web_flipped_to_green(config: &Config) -> (SnapshotInput, SnapshotInput) {
    let before = translate(config, &Weights::initial(config));
    let mut weights = Weights::initial(config);
    let split = BTreeMap::from([("green".to_owned(), 100)]);
    weights.set(config, "web", &split).expect("valid split");
    (before, translate(config, &weights))
}

#[test]
fn a_flip_changes_only_routes() {
    let config = example();
    let (before, after) = web_flipped_to_green(&config);
    for (g, a) in &after.groups {
        let b = &before.groups[g];
        assert_eq!(a.clusters, b.clusters);
        assert_eq!(a.endpoints, b.endpoints);
        assert_eq!(a.listeners, b.listeners);
        assert_ne!(a.routes, b.routes);
    }
    assert_ne!(config_digest(&before), config_digest(&after));
}

#[test]
fn weights_are_checked() {
    let config = example();
    let mut w = Weights::initial(&config);
    assert_eq!(
        w.get("web"),
        Some(&BTreeMap::from([
            ("blue".to_owned(), 100),
            ("green".to_owned(), 0)
        ]))
    );
    let bad_sum = BTreeMap::from([("blue".to_owned(), 60), ("green".to_owned(), 60)]);
    assert_eq!(
        w.set(&config, "web", &bad_sum),
        Err(WeightsError::BadSum {
            service: "web".into(),
            sum: 120
        })
    );
    let bad_fleet = BTreeMap::from([("red".to_owned(), 100)]);
    assert!(matches!(
        w.set(&config, "web", &bad_fleet),
        Err(WeightsError::UnknownFleet { .. })
    ));
    assert!(matches!(
        w.set(&config, "nope", &bad_fleet),
        Err(WeightsError::UnknownService(_))
    ));
    let ok = BTreeMap::from([("blue".to_owned(), 90), ("green".to_owned(), 10)]);
    w.set(&config, "web", &ok).expect("valid");
    assert_eq!(
        w.effective("web", &config.services["web"]),
        [("blue".to_owned(), 90), ("green".to_owned(), 10)]
    );
    // No entry at all: the live fleet takes everything.
    assert_eq!(
        Weights::default().effective("web", &config.services["web"]),
        [("blue".to_owned(), 100), ("green".to_owned(), 0)]
    );
}

#[test]
fn one_rule_checks_a_split() {
    let fleets = ["blue", "green"];
    let has_fleet = |f: &str| fleets.contains(&f);
    let check = |pairs: &[(&str, u32)]| {
        let split: BTreeMap<String, u32> =
            pairs.iter().map(|(f, w)| ((*f).to_owned(), *w)).collect();
        Weights::check("web", has_fleet, &split)
    };
    assert_eq!(check(&[("blue", 90), ("green", 10)]), Ok(()));
    // Fleets left out get 0.
    assert_eq!(check(&[("green", 100)]), Ok(()));
    assert_eq!(
        check(&[("green", 100), ("red", 0)]),
        Err(WeightsError::UnknownFleet {
            service: "web".into(),
            fleet: "red".into()
        })
    );
    let bad_sum = check(&[("blue", 60), ("green", 60)]);
    assert_eq!(
        bad_sum,
        Err(WeightsError::BadSum {
            service: "web".into(),
            sum: 120
        })
    );
    assert_eq!(
        bad_sum.map_err(|e| e.to_string()),
        Err("weights of service \"web\" must add up to 100, these add up to 120".into())
    );
    // Sums are taken without overflow.
    assert!(matches!(
        check(&[("blue", u32::MAX), ("green", 101)]),
        Err(WeightsError::BadSum { .. })
    ));
    assert_eq!(
        WeightsError::UnknownFleet {
            service: "web".into(),
            fleet: "red".into()
        }
        .to_string(),
        "service \"web\" has no fleet \"red\""
    );
}

#[test]
fn translation_is_deterministic() {
    let config = example();
    let a = translate(&config, &Weights::initial(&config));
    let again = Config::parse(DEFAULT_CONFIG, "other.yaml").expect("valid");
    let b = translate(&again, &Weights::initial(&again));
    let bytes = |i: &SnapshotInput| {
        encoded_resources(i)
            .into_iter()
            .map(|(_, _, _, b)| b)
            .collect::<Vec<_>>()
    };
    assert_eq!(bytes(&a), bytes(&b));
    assert_eq!(config_digest(&a), config_digest(&b));
    assert_eq!(config_digest(&a).len(), 12);
}

#[test]
fn snapshots_accept_the_translation() {
    let config = example();
    let input = translate(&config, &Weights::initial(&config));
    let snap = crate::xds::snapshot::Snapshot::build(&config_digest(&input), &input, None);
    assert!(snap.is_ok(), "{snap:?}");
}

#[test]
fn regex_routes_match_by_safe_regex_on_every_route() {
    use envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier;
    let text = DEFAULT_CONFIG.replace("- prefix: /api/", "- regex: '/api/v[0-9]+/.*'");
    assert_ne!(text, DEFAULT_CONFIG);
    let config = Config::parse(&text, "t.yaml").expect("valid");
    let input = translate(&config, &Weights::initial(&config));
    let routes = vhost(&input.groups["edge"].routes[0], "site");
    let paths: Vec<&PathSpecifier> = routes
        .iter()
        .map(|r| {
            r.r#match
                .as_ref()
                .and_then(|m| m.path_specifier.as_ref())
                .expect("path specifier")
        })
        .collect();
    // api's two preview routes and its weighted route take the regex, with
    // no engine named (Envoy's default, RE2); web's keep their prefix.
    let regex = PathSpecifier::SafeRegex(RegexMatcher {
        regex: "/api/v[0-9]+/.*".to_owned(),
        engine_type: None,
    });
    let slash = PathSpecifier::Prefix("/".to_owned());
    assert_eq!(
        paths,
        [&regex, &regex, &regex, &slash, &slash, &slash],
        "{routes:#?}"
    );
    assert!(matches!(
        cluster_of(&routes[2]),
        ClusterSpecifier::WeightedClusters(_)
    ));
    // Sidecars route by host, on `/`, whatever the edge's routes are.
    for vh in &input.groups["sidecar"].routes[0].virtual_hosts {
        for r in &vh.routes {
            assert_eq!(
                r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()),
                Some(&slash)
            );
        }
    }
}

/// The example with a third group, `clients`, of proxyless gRPC clients of
/// both services.
fn with_grpc_group() -> Config {
    let text = format!(
        "{DEFAULT_CONFIG}\n  clients:\n    listeners:\n      grpc:\n        kind: grpc\n        \
         services: [web, api]\n"
    );
    Config::parse(&text, "t.yaml").expect("valid")
}

#[test]
fn grpc_listeners_are_api_listeners_named_after_services() {
    use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
        HttpConnectionManager, http_connection_manager::RouteSpecifier,
    };
    let config = with_grpc_group();
    let input = translate(&config, &Weights::initial(&config));
    let g = &input.groups["clients"];
    let names: Vec<&str> = g.listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["api", "web"]);
    for l in &g.listeners {
        assert_eq!(l.address, None, "an API listener has no address");
        assert!(l.filter_chains.is_empty());
        let any = l
            .api_listener
            .as_ref()
            .and_then(|a| a.api_listener.as_ref())
            .expect("api_listener");
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.\
             HttpConnectionManager"
        );
        let hcm = HttpConnectionManager::decode(any.value.as_slice()).expect("an HCM");
        let Some(RouteSpecifier::Rds(rds)) = &hcm.route_specifier else {
            panic!("no RDS: {hcm:?}");
        };
        assert_eq!(rds.route_config_name, l.name);
        assert!(matches!(
            rds.config_source
                .as_ref()
                .and_then(|c| c.config_source_specifier.as_ref()),
            Some(ConfigSourceSpecifier::Ads(_))
        ));
        let last = hcm.http_filters.last().expect("filters");
        assert_eq!(last.name, "envoy.filters.http.router");
    }
    // One route configuration per service, one virtual host whose only
    // domain is the service name, with the sidecar's routes.
    let rc_names: Vec<&str> = g.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(rc_names, ["api", "web"]);
    let web = &g.routes[1];
    assert_eq!(web.virtual_hosts.len(), 1);
    assert_eq!(web.virtual_hosts[0].domains, ["web"]);
    let sidecar_web = input.groups["sidecar"].routes[0]
        .virtual_hosts
        .iter()
        .find(|v| v.name == "web")
        .expect("sidecar web");
    assert_eq!(web.virtual_hosts[0].routes, sidecar_web.routes);
    // EDS clusters over ADS, as gRPC requires, that send their load
    // reports to teal (`self`): gRPC reports none without it.
    let names: Vec<&str> = g.clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["api-blue", "api-green", "web-blue", "web-green"]);
    for c in &g.clusters {
        assert!(matches!(
            c.eds_cluster_config
                .as_ref()
                .and_then(|e| e.eds_config.as_ref())
                .and_then(|s| s.config_source_specifier.as_ref()),
            Some(ConfigSourceSpecifier::Ads(_))
        ));
        assert!(matches!(
            c.lrs_server
                .as_ref()
                .and_then(|s| s.config_source_specifier.as_ref()),
            Some(ConfigSourceSpecifier::Self_(_))
        ));
    }
    // Envoy groups' clusters name no LRS server: their bootstrap does.
    assert!(
        input.groups["edge"]
            .clusters
            .iter()
            .all(|c| c.lrs_server.is_none())
    );
}

#[test]
fn grpc_groups_weigh_localities() {
    let config = with_grpc_group();
    let input = translate(&config, &Weights::initial(&config));
    // api-blue's endpoint has no zone: gRPC still gets a named (empty)
    // locality with a weight; Envoy groups are unchanged.
    let cla = |group: &str, cluster: &str| {
        input.groups[group]
            .endpoints
            .iter()
            .find(|c| c.cluster_name == cluster)
            .cloned()
            .expect("cluster")
    };
    let grpc = cla("clients", "api-blue");
    assert_eq!(grpc.endpoints.len(), 1);
    assert_eq!(grpc.endpoints[0].load_balancing_weight, u32v(1));
    assert_eq!(
        grpc.endpoints[0].locality.as_ref().map(|l| l.zone.as_str()),
        Some("")
    );
    let envoy = cla("edge", "api-blue");
    assert_eq!(envoy.endpoints[0].load_balancing_weight, None);
    assert_eq!(envoy.endpoints[0].locality, None);
    assert_eq!(
        envoy.endpoints[0].lb_endpoints,
        grpc.endpoints[0].lb_endpoints
    );
    // The example's groups translate as before a grpc group was added.
    let plain = example();
    let before = translate(&plain, &Weights::initial(&plain));
    for (name, group) in &before.groups {
        assert_eq!(&input.groups[name], group, "{name}");
    }
}

#[test]
fn a_flip_reaches_grpc_routes_only() {
    let config = with_grpc_group();
    let (before, after) = web_flipped_to_green(&config);
    let (a, b) = (&after.groups["clients"], &before.groups["clients"]);
    assert_eq!(a.clusters, b.clusters);
    assert_eq!(a.endpoints, b.endpoints);
    assert_eq!(a.listeners, b.listeners);
    assert_eq!(a.routes[0], b.routes[0], "api's routes do not change");
    let weighted = a.routes[1].virtual_hosts[0].routes.last().expect("route");
    assert_eq!(
        split_of(weighted_clusters(weighted)),
        [("web-blue", 0), ("web-green", 100)]
    );
}
