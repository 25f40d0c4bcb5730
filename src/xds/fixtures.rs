//! Snapshots and requests for the state machine tests.

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, VirtualHost, route::Action, route_action,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc;
use prost::Message;

use crate::xds::resources::ResourceType;
use crate::xds::snapshot::{GroupResources, Snapshot, SnapshotInput};

use super::sotw::Response;

/// A route configuration `name` sending everything to `cluster`.
pub(crate) fn route(name: &str, cluster: &str) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                action: Some(Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        cluster.into(),
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

/// An `edge` group with `clusters` (each with an assignment), one listener
/// and the route `r` pointing at `route_to`.
pub(crate) fn group(clusters: &[&str], route_to: &str) -> GroupResources {
    GroupResources {
        clusters: clusters
            .iter()
            .map(|c| Cluster {
                name: (*c).into(),
                ..Default::default()
            })
            .collect(),
        endpoints: clusters
            .iter()
            .map(|c| ClusterLoadAssignment {
                cluster_name: (*c).into(),
                ..Default::default()
            })
            .collect(),
        listeners: vec![Listener {
            name: "l".into(),
            ..Default::default()
        }],
        routes: vec![route("r", route_to)],
    }
}

/// A snapshot serving `g` to the `edge` group, built on `previous`.
pub(crate) fn snapshot(version: &str, g: GroupResources, previous: Option<&Snapshot>) -> Snapshot {
    let mut input = SnapshotInput::default();
    input.groups.insert("edge".into(), g);
    Snapshot::build(version, &input, previous).expect("valid snapshot")
}

/// An `edge` node.
pub(crate) fn node() -> Node {
    Node {
        id: "proxy-1".into(),
        cluster: "edge".into(),
        ..Default::default()
    }
}

/// A SotW request.
pub(crate) fn req(ty: ResourceType, names: &[&str], nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(node()),
        type_url: ty.type_url().into(),
        resource_names: names.iter().map(|n| (*n).to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

/// A SotW NACK of `nonce`.
pub(crate) fn nack(ty: ResourceType, names: &[&str], nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        error_detail: Some(rpc::Status {
            code: 3,
            message: "rejected by test".into(),
            ..Default::default()
        }),
        ..req(ty, names, nonce)
    }
}

/// Decodes a SotW response.
pub(crate) fn sotw(r: &Response) -> DiscoveryResponse {
    DiscoveryResponse::decode(r.message.to_bytes()).expect("decodes")
}

/// Decodes a delta response.
pub(crate) fn delta(r: &Response) -> DeltaDiscoveryResponse {
    DeltaDiscoveryResponse::decode(r.message.to_bytes()).expect("decodes")
}

/// The names of the resources in a SotW response.
pub(crate) fn names(r: &DiscoveryResponse) -> Vec<String> {
    r.resources
        .iter()
        .map(|any| match any.type_url.as_str() {
            u if u == ResourceType::Cluster.type_url() => {
                Cluster::decode(any.value.as_slice()).expect("cluster").name
            }
            u if u == ResourceType::Endpoint.type_url() => {
                ClusterLoadAssignment::decode(any.value.as_slice())
                    .expect("cla")
                    .cluster_name
            }
            u if u == ResourceType::Listener.type_url() => {
                Listener::decode(any.value.as_slice())
                    .expect("listener")
                    .name
            }
            _ => {
                RouteConfiguration::decode(any.value.as_slice())
                    .expect("route")
                    .name
            }
        })
        .collect()
}
