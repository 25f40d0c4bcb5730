//! The xDS resource types teal serves, in make-before-break order.
//!
//! The order of [`ResourceType::ALL`] is the order the xDS protocol asks a
//! management server to push updates in, so that a proxy never holds a
//! reference to something it has not been sent: clusters, then their
//! endpoints, then listeners, then the routes listeners point at. Removals go
//! the other way. See "Eventual consistency considerations" in the xDS
//! protocol spec:
//! <https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#eventual-consistency-considerations>

use std::fmt;

use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
    route::v3::RouteConfiguration,
};
use prost::Name;

/// One of the four resource types teal serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResourceType {
    /// `envoy.config.cluster.v3.Cluster` (CDS).
    Cluster,
    /// `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
    Endpoint,
    /// `envoy.config.listener.v3.Listener` (LDS).
    Listener,
    /// `envoy.config.route.v3.RouteConfiguration` (RDS).
    Route,
}

impl ResourceType {
    /// Every type, in the order updates are pushed (make before break).
    pub const ALL: [ResourceType; 4] = [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
    ];

    /// The full type URL, as carried in `DiscoveryRequest.type_url`.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Cluster => "type.googleapis.com/envoy.config.cluster.v3.Cluster",
            ResourceType::Endpoint => {
                "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
            }
            ResourceType::Listener => "type.googleapis.com/envoy.config.listener.v3.Listener",
            ResourceType::Route => "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
        }
    }

    /// Parses a type URL; `None` for any type teal does not serve.
    pub fn from_type_url(url: &str) -> Option<ResourceType> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// Position in [`ResourceType::ALL`], for per-type arrays.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The short name operators know the type by (`CDS`, `EDS`, `LDS`, `RDS`).
    pub fn short_name(self) -> &'static str {
        match self {
            ResourceType::Cluster => "CDS",
            ResourceType::Endpoint => "EDS",
            ResourceType::Listener => "LDS",
            ResourceType::Route => "RDS",
        }
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

/// Compile-time link between an Envoy message type and its [`ResourceType`].
pub trait XdsResource: prost::Message + Name + Sized {
    /// The type this message is served as.
    const TYPE: ResourceType;
    /// The resource's name, as proxies subscribe to it.
    fn resource_name(&self) -> &str;
}

impl XdsResource for Cluster {
    const TYPE: ResourceType = ResourceType::Cluster;
    fn resource_name(&self) -> &str {
        &self.name
    }
}

impl XdsResource for ClusterLoadAssignment {
    const TYPE: ResourceType = ResourceType::Endpoint;
    fn resource_name(&self) -> &str {
        &self.cluster_name
    }
}

impl XdsResource for Listener {
    const TYPE: ResourceType = ResourceType::Listener;
    fn resource_name(&self) -> &str {
        &self.name
    }
}

impl XdsResource for RouteConfiguration {
    const TYPE: ResourceType = ResourceType::Route;
    fn resource_name(&self) -> &str {
        &self.name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_urls_match_the_generated_messages() {
        assert_eq!(ResourceType::Cluster.type_url(), Cluster::type_url());
        assert_eq!(
            ResourceType::Endpoint.type_url(),
            ClusterLoadAssignment::type_url()
        );
        assert_eq!(ResourceType::Listener.type_url(), Listener::type_url());
        assert_eq!(
            ResourceType::Route.type_url(),
            RouteConfiguration::type_url()
        );
        for t in ResourceType::ALL {
            assert!(t.type_url().starts_with("type.googleapis.com/envoy."));
            assert_eq!(ResourceType::from_type_url(t.type_url()), Some(t));
            assert_eq!(ResourceType::ALL[t.index()], t);
        }
        assert_eq!(ResourceType::from_type_url("type.googleapis.com/x"), None);
    }
}
