//! Builders for the xDS resources the integration tests serve: an EDS
//! cluster and its endpoints per local upstream, an HTTP listener that takes
//! its routes over RDS, and route configurations.
//!
//! Every config source is ADS, so a real Envoy started by [`super::Envoy`]
//! gets all four types from teal on its one aggregated stream.

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster,
    cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig},
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, SocketAddress, address,
    config_source::ConfigSourceSpecifier, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::listener::v3::{Filter, FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, WeightedCluster, route,
    route_action::ClusterSpecifier, route_match::PathSpecifier, weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::RouteSpecifier, http_filter,
};
use envoy_types::pb::google::protobuf::{Duration, UInt32Value};
use envoy_types::util::pack_any;

use teal::xds::snapshot::GroupResources;

/// `ConfigSource { ads: {}, resource_api_version: V3 }`: "get it on the ADS
/// stream", as the bootstraps in `envoy/` say for CDS and LDS.
pub fn ads() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// `127.0.0.1:port`.
pub fn localhost(port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: "127.0.0.1".into(),
            port_specifier: Some(PortSpecifier::PortValue(port.into())),
            ..Default::default()
        })),
    }
}

/// A cluster whose endpoints come over EDS (from ADS), with a 1 s connect
/// timeout.
pub fn eds_cluster(name: &str) -> Cluster {
    Cluster {
        name: name.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(Duration {
            seconds: 1,
            nanos: 0,
        }),
        ..Default::default()
    }
}

/// The endpoints of cluster `cluster`: one host, `127.0.0.1:port`.
pub fn endpoints(cluster: &str, port: u16) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(localhost(port)),
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// An HTTP listener `name` on `127.0.0.1:port` whose routes are the route
/// configuration `route_config` (over RDS, from ADS), with the router filter.
pub fn http_listener(name: &str, port: u16, route_config: &str) -> Listener {
    let router = HttpFilter {
        name: "envoy.filters.http.router".into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(
            Router::default(),
        ))),
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        stat_prefix: name.into(),
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: route_config.into(),
        })),
        http_filters: vec![router],
        ..Default::default()
    };
    Listener {
        name: name.into(),
        address: Some(localhost(port)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".into(),
                config_type: Some(filter::ConfigType::TypedConfig(pack_any(hcm))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A route configuration `name` with one virtual host for every domain that
/// sends every path (prefix `/`) to `action`.
pub fn route_config(name: &str, action: RouteAction) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(RouteMatch {
                    path_specifier: Some(PathSpecifier::Prefix("/".into())),
                    ..Default::default()
                }),
                action: Some(route::Action::Route(action)),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// Route everything to one cluster.
pub fn to_cluster(cluster: &str) -> RouteAction {
    RouteAction {
        cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    }
}

/// Split traffic between clusters by weight.
pub fn weighted(clusters: &[(&str, u32)]) -> RouteAction {
    RouteAction {
        cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: clusters
                .iter()
                .map(|(name, weight)| ClusterWeight {
                    name: (*name).into(),
                    weight: Some(UInt32Value { value: *weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// The usual shape of a test group: one HTTP listener `listener` on
/// `127.0.0.1:port` using route configuration `route`, and an EDS cluster
/// with endpoints for each `(cluster name, upstream port)`.
pub fn http_group(
    listener: &str,
    port: u16,
    route: RouteConfiguration,
    upstreams: &[(&str, u16)],
) -> GroupResources {
    GroupResources {
        clusters: upstreams
            .iter()
            .map(|(name, _)| eds_cluster(name))
            .collect(),
        endpoints: upstreams
            .iter()
            .map(|(name, port)| endpoints(name, *port))
            .collect(),
        listeners: vec![http_listener(listener, port, &route.name)],
        routes: vec![route],
    }
}
