//! From a [`Config`] and the current [`Weights`] to Envoy resources.
//!
//! See the [module docs](super) for the naming scheme, preview routing and
//! tier consistency. Everything here iterates `BTreeMap`s or config-order
//! `Vec`s, and no proto map field ever gets more than one entry, so the
//! output encodes to the same bytes on every run.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster, OutlierDetection as EnvoyOutlier,
    cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig},
};
use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, HeaderValue, HeaderValueOption,
    HealthCheck as EnvoyHealthCheck, Locality, SelfConfigSource, SocketAddress, address,
    config_source::ConfigSourceSpecifier,
    header_value_option::HeaderAppendAction,
    health_check::{HealthChecker, HttpHealthCheck},
    socket_address::{PortSpecifier, Protocol as SocketProtocol},
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
    lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::listener::v3::{
    ApiListener, Filter, FilterChain, Listener as EnvoyListener,
    filter::ConfigType as FilterConfigType,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, RetryPolicy, Route as EnvoyRoute, RouteAction, RouteConfiguration, RouteMatch,
    VirtualHost as EnvoyVirtualHost, WeightedCluster, header_matcher::HeaderMatchSpecifier,
    route::Action, route_action::ClusterSpecifier, route_match::PathSpecifier,
    weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::CodecType,
    http_connection_manager::RouteSpecifier, http_filter::ConfigType as HttpFilterConfigType,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options::ExplicitHttpConfig,
    http_protocol_options::UpstreamProtocolOptions,
    http_protocol_options::explicit_http_config::ProtocolConfig,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{
    RegexMatcher, StringMatcher, string_matcher::MatchPattern,
};
use envoy_types::pb::google::protobuf::{Duration as PbDuration, UInt32Value};
use envoy_types::util::pack_any;
use prost::Message;

use super::model::{Config, Group, ListenerKind, PathMatch, Protocol, Service};
use crate::config::{Weights, WeightsError};
use crate::xds::snapshot::{GroupResources, SnapshotInput};

/// The request header that pins a request to one fleet (preview routing)
/// and carries the edge's pick downstream (tier consistency).
pub const FLEET_HEADER: &str = "x-teal-fleet";

/// Key of the HTTP/2 upstream options in `typed_extension_protocol_options`.
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The Envoy cluster name of one fleet of one service.
pub(crate) fn cluster_name(service: &str, fleet: &str) -> String {
    format!("{service}-{fleet}")
}

/// The weights as the config sees them: [`Weights`] lives with the
/// rollout code (it is the rollout's vocabulary), and what needs a
/// [`Config`] to work out is here, so `rollout` never depends on `config`.
impl Weights {
    /// Every service's `live` fleet at 100, the others at 0.
    pub fn initial(config: &Config) -> Weights {
        let mut w = Weights::default();
        for (name, s) in &config.services {
            w.insert_full(name, initial_split(s));
        }
        w
    }

    /// Replaces one service's split after checking it against `config`
    /// (see `Weights::check`).
    pub fn set(
        &mut self,
        config: &Config,
        service: &str,
        split: &BTreeMap<String, u32>,
    ) -> Result<(), WeightsError> {
        let s = config
            .services
            .get(service)
            .ok_or_else(|| WeightsError::UnknownService(service.to_owned()))?;
        Self::check(service, |f| s.fleets.contains_key(f), split)?;
        let full = s
            .fleets
            .keys()
            .map(|f| (f.clone(), split.get(f).copied().unwrap_or(0)))
            .collect();
        self.insert_full(service, full);
        Ok(())
    }

    /// The split translation uses for `service`: every fleet of the
    /// service, in name order, with its weight. A stored split that no
    /// longer fits the service (see [`Weights`]) gives way to its `live`
    /// fleet at 100.
    pub(crate) fn effective(&self, service: &str, s: &Service) -> Vec<(String, u32)> {
        let stored = self
            .get(service)
            .filter(|split| Self::check(service, |f| s.fleets.contains_key(f), split).is_ok());
        let split = match stored {
            Some(split) => split.clone(),
            None => initial_split(s),
        };
        s.fleets
            .keys()
            .map(|f| (f.clone(), split.get(f).copied().unwrap_or(0)))
            .collect()
    }
}

fn initial_split(s: &Service) -> BTreeMap<String, u32> {
    s.fleets
        .keys()
        .map(|f| {
            let w = if *f == s.live { Weights::TOTAL } else { 0 };
            (f.clone(), w)
        })
        .collect()
}

/// Turns the config and the current split into the resources of every
/// group. Each resource list is sorted by name.
pub fn translate(config: &Config, weights: &Weights) -> SnapshotInput {
    let groups = config
        .groups
        .iter()
        .map(|(name, group)| (name.clone(), group_resources(config, weights, group)))
        .collect();
    SnapshotInput { groups }
}

/// What one group's proxies are served: the clusters and endpoints of
/// every service its routes reach, its listeners and their routes, each
/// list sorted by name.
fn group_resources(config: &Config, weights: &Weights, group: &Group) -> GroupResources {
    let mut res = GroupResources::default();
    let proxyless = group
        .listeners
        .values()
        .any(|l| matches!(l.kind, ListenerKind::Grpc { .. }));
    for service_name in config.services_of(group) {
        let Some(service) = config.services.get(service_name) else {
            // Config::parse guarantees every referenced service exists.
            continue;
        };
        for (fleet_name, fleet) in &service.fleets {
            let cluster = cluster_name(service_name, fleet_name);
            let mut envoy = envoy_cluster(&cluster, service);
            if proxyless {
                envoy.lrs_server = Some(lrs_self());
            }
            res.clusters.push(envoy);
            let endpoints: &[super::model::Endpoint] =
                if weights.is_retired(service_name, fleet_name) {
                    &[]
                } else {
                    &fleet.endpoints
                };
            res.endpoints
                .push(load_assignment(&cluster, endpoints, proxyless));
        }
    }
    for (listener_name, listener) in &group.listeners {
        push_listener(&mut res, config, weights, listener_name, &listener.kind);
    }
    res.clusters.sort_by(|a, b| a.name.cmp(&b.name));
    res.endpoints
        .sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
    res.listeners.sort_by(|a, b| a.name.cmp(&b.name));
    res.routes.sort_by(|a, b| a.name.cmp(&b.name));
    res
}

/// Adds one config listener's Envoy listeners and route configurations.
fn push_listener(
    res: &mut GroupResources,
    config: &Config,
    weights: &Weights,
    listener_name: &str,
    kind: &ListenerKind,
) {
    let slash = PathMatch::Prefix("/".to_owned());
    match kind {
        ListenerKind::Edge {
            address,
            virtual_hosts,
        } => {
            res.listeners.push(envoy_listener(listener_name, *address));
            let virtual_hosts = virtual_hosts
                .iter()
                .map(|(vh_name, vh)| EnvoyVirtualHost {
                    name: vh_name.clone(),
                    domains: vh.domains.clone(),
                    routes: vh
                        .routes
                        .iter()
                        .flat_map(|r| service_routes(config, weights, &r.path, &r.service))
                        .collect(),
                    ..Default::default()
                })
                .collect();
            res.routes.push(route_config(listener_name, virtual_hosts));
        }
        ListenerKind::Sidecar { address, services } => {
            res.listeners.push(envoy_listener(listener_name, *address));
            let virtual_hosts = services
                .iter()
                .map(|s| EnvoyVirtualHost {
                    name: s.clone(),
                    domains: vec![s.clone(), format!("{s}:{}", address.port())],
                    routes: service_routes(config, weights, &slash, s),
                    ..Default::default()
                })
                .collect();
            res.routes.push(route_config(listener_name, virtual_hosts));
        }
        ListenerKind::Grpc { services } => {
            for s in services {
                res.listeners.push(api_listener(s));
                let virtual_host = EnvoyVirtualHost {
                    name: s.clone(),
                    // gRPC matches the channel target's authority:
                    // `xds:///web` asks for `web`.
                    domains: vec![s.clone()],
                    routes: service_routes(config, weights, &slash, s),
                    ..Default::default()
                };
                res.routes.push(route_config(s, vec![virtual_host]));
            }
        }
    }
}

fn pb_duration(d: std::time::Duration) -> PbDuration {
    PbDuration {
        // Durations are capped at 24h by the parser, far inside i64.
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn u32v(value: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value })
}

fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// Where a proxyless gRPC client sends a cluster's load reports: `self`,
/// the xDS server it got the cluster from (gRFC A27). gRPC reports the
/// load of no cluster without it; Envoy ignores it (its reports follow its
/// bootstrap's `load_stats_config`), so a group that mixes both is served
/// one cluster for both.
fn lrs_self() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Self_(SelfConfigSource::default())),
        ..Default::default()
    }
}

fn envoy_cluster(name: &str, service: &Service) -> Cluster {
    let mut cluster = Cluster {
        name: name.to_owned(),
        connect_timeout: Some(pb_duration(service.connect_timeout)),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        ..Default::default()
    };
    if let Some(hc) = &service.health_check {
        cluster.health_checks.push(EnvoyHealthCheck {
            timeout: Some(pb_duration(hc.timeout)),
            interval: Some(pb_duration(hc.interval)),
            healthy_threshold: u32v(hc.healthy_threshold),
            unhealthy_threshold: u32v(hc.unhealthy_threshold),
            health_checker: Some(HealthChecker::HttpHealthCheck(HttpHealthCheck {
                path: hc.path.clone(),
                ..Default::default()
            })),
            ..Default::default()
        });
    }
    if let Some(od) = &service.outlier_detection {
        cluster.outlier_detection = Some(EnvoyOutlier {
            consecutive_5xx: u32v(od.consecutive_5xx),
            interval: Some(pb_duration(od.interval)),
            base_ejection_time: Some(pb_duration(od.base_ejection_time)),
            max_ejection_percent: u32v(od.max_ejection_percent),
            ..Default::default()
        });
    }
    if service.protocol == Protocol::Http2 {
        let options = HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    )),
                },
            )),
            ..Default::default()
        };
        // The only entry of this map: a one-entry map encodes the same way
        // whatever the hasher's seed.
        cluster
            .typed_extension_protocol_options
            .insert(HTTP_PROTOCOL_OPTIONS.to_owned(), pack_any(options));
    }
    cluster
}

fn socket_address(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: SocketProtocol::Tcp as i32,
            address: addr.ip().to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(addr.port()))),
            ..Default::default()
        })),
    }
}

/// A fleet's endpoints, one locality per zone. With `proxyless`, every
/// locality carries a `Locality` (its zone, empty without one) and a weight
/// (the sum of its endpoints' weights): gRPC reaches no endpoint of a
/// locality without both. Envoy needs neither (it ignores locality weights
/// unless locality-weighted balancing is on), so only groups with grpc
/// listeners get them and Envoy groups' endpoints stay as they were.
fn load_assignment(
    cluster: &str,
    endpoints: &[super::model::Endpoint],
    proxyless: bool,
) -> ClusterLoadAssignment {
    // One locality per zone, zones in name order, endpoints in config order.
    let mut by_zone: BTreeMap<&str, (u32, Vec<LbEndpoint>)> = BTreeMap::new();
    for e in endpoints {
        let (weight, lb_endpoints) = by_zone.entry(e.zone.as_deref().unwrap_or("")).or_default();
        *weight = weight.saturating_add(e.weight);
        lb_endpoints.push(LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
                address: Some(socket_address(e.address)),
                ..Default::default()
            })),
            load_balancing_weight: u32v(e.weight),
            ..Default::default()
        });
    }
    ClusterLoadAssignment {
        cluster_name: cluster.to_owned(),
        endpoints: by_zone
            .into_iter()
            .map(|(zone, (weight, lb_endpoints))| LocalityLbEndpoints {
                locality: (proxyless || !zone.is_empty()).then(|| Locality {
                    zone: zone.to_owned(),
                    ..Default::default()
                }),
                load_balancing_weight: proxyless.then_some(UInt32Value { value: weight }),
                lb_endpoints,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn route_config(name: &str, virtual_hosts: Vec<EnvoyVirtualHost>) -> RouteConfiguration {
    RouteConfiguration {
        name: name.to_owned(),
        virtual_hosts,
        ..Default::default()
    }
}

/// An HTTP connection manager that fetches route configuration `name` over
/// ADS and ends with the router filter, as both Envoy and gRPC require.
fn http_connection_manager(name: &str) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: name.to_owned(),
        codec_type: CodecType::Auto as i32,
        route_specifier: Some(RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name: name.to_owned(),
        })),
        http_filters: vec![HttpFilter {
            name: "envoy.filters.http.router".to_owned(),
            config_type: Some(HttpFilterConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn envoy_listener(name: &str, addr: SocketAddr) -> EnvoyListener {
    EnvoyListener {
        name: name.to_owned(),
        address: Some(socket_address(addr)),
        filter_chains: vec![FilterChain {
            filters: vec![Filter {
                name: "envoy.filters.network.http_connection_manager".to_owned(),
                config_type: Some(FilterConfigType::TypedConfig(pack_any(
                    http_connection_manager(name),
                ))),
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The listener a proxyless gRPC client asks for when it dials
/// `xds:///{name}`: no address, just an API listener holding the HTTP
/// connection manager.
fn api_listener(name: &str) -> EnvoyListener {
    EnvoyListener {
        name: name.to_owned(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack_any(http_connection_manager(name))),
        }),
        ..Default::default()
    }
}

fn fleet_header(fleet: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: FLEET_HEADER.to_owned(),
            value: fleet.to_owned(),
            ..Default::default()
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// Envoy's form of a route's path match.
fn path_specifier(path: &PathMatch) -> PathSpecifier {
    match path {
        PathMatch::Prefix(prefix) => PathSpecifier::Prefix(prefix.clone()),
        // No engine_type: Envoy's default engine, Google RE2.
        PathMatch::Regex(regex) => PathSpecifier::SafeRegex(RegexMatcher {
            regex: regex.clone(),
            ..Default::default()
        }),
    }
}

/// The routes for one `path → service`: one preview route per fleet,
/// then the weighted route, all matching `path`.
fn service_routes(
    config: &Config,
    weights: &Weights,
    path: &PathMatch,
    service_name: &str,
) -> Vec<EnvoyRoute> {
    let Some(service) = config.services.get(service_name) else {
        // Config::parse guarantees every referenced service exists.
        return Vec::new();
    };
    let action = |cluster_specifier: ClusterSpecifier| {
        Some(Action::Route(RouteAction {
            cluster_specifier: Some(cluster_specifier),
            timeout: service.timeout.map(pb_duration),
            retry_policy: service.retries.as_ref().map(|r| RetryPolicy {
                retry_on: r.retry_on.clone(),
                num_retries: u32v(r.num_retries),
                per_try_timeout: r.per_try_timeout.map(pb_duration),
                ..Default::default()
            }),
            ..Default::default()
        }))
    };
    let split = weights.effective(service_name, service);
    let mut routes: Vec<EnvoyRoute> = split
        .iter()
        .map(|(fleet, _)| EnvoyRoute {
            name: format!("{service_name}-{fleet}-preview"),
            r#match: Some(RouteMatch {
                path_specifier: Some(path_specifier(path)),
                headers: vec![HeaderMatcher {
                    name: FLEET_HEADER.to_owned(),
                    header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(
                        StringMatcher {
                            match_pattern: Some(MatchPattern::Exact(fleet.clone())),
                            ignore_case: false,
                        },
                    )),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            action: action(ClusterSpecifier::Cluster(cluster_name(service_name, fleet))),
            ..Default::default()
        })
        .collect();
    routes.push(EnvoyRoute {
        name: service_name.to_owned(),
        r#match: Some(RouteMatch {
            path_specifier: Some(path_specifier(path)),
            ..Default::default()
        }),
        action: action(ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: split
                .iter()
                .map(|(fleet, weight)| ClusterWeight {
                    name: cluster_name(service_name, fleet),
                    weight: u32v(*weight),
                    request_headers_to_add: vec![fleet_header(fleet)],
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })),
        ..Default::default()
    });
    routes
}

/// Every resource of `input`, encoded, in a fixed order: groups by name,
/// then clusters, endpoints, listeners and routes, each by name.
pub fn encoded_resources(input: &SnapshotInput) -> Vec<(String, &'static str, String, Vec<u8>)> {
    let mut out = Vec::new();
    for (group, res) in &input.groups {
        let mut push = |kind: &'static str, name: &str, bytes: Vec<u8>| {
            out.push((group.clone(), kind, name.to_owned(), bytes));
        };
        let mut clusters: Vec<_> = res.clusters.iter().collect();
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        for c in clusters {
            push("cluster", &c.name, c.encode_to_vec());
        }
        let mut endpoints: Vec<_> = res.endpoints.iter().collect();
        endpoints.sort_by(|a, b| a.cluster_name.cmp(&b.cluster_name));
        for e in endpoints {
            push("endpoints", &e.cluster_name, e.encode_to_vec());
        }
        let mut listeners: Vec<_> = res.listeners.iter().collect();
        listeners.sort_by(|a, b| a.name.cmp(&b.name));
        for l in listeners {
            push("listener", &l.name, l.encode_to_vec());
        }
        let mut routes: Vec<_> = res.routes.iter().collect();
        routes.sort_by(|a, b| a.name.cmp(&b.name));
        for r in routes {
            push("route", &r.name, r.encode_to_vec());
        }
    }
    out
}

/// A version string for `input`: the first 12 hex digits of a SHA-256 over
/// every resource's content (see `crate::xds::snapshot::content_digest`), the
/// same digest the snapshot built from `input` carries. Equal resources give
/// equal digests on any machine.
pub fn config_digest(input: &SnapshotInput) -> String {
    crate::xds::snapshot::content_digest(input)
}

#[cfg(test)]
#[path = "translate_tests.rs"]
mod tests;
