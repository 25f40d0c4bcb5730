//! The xDS resource types teal serves, in make-before-break order.
//!
//! The order of [`ResourceType::ALL`] is the order the xDS protocol asks a
//! management server to push updates in, so that a proxy never holds a
//! reference to something it has not been sent: clusters, then their
//! endpoints, then listeners, then the routes listeners point at. Removals go
//! the other way. See "Eventual consistency considerations" in the xDS
//! protocol spec:
//! <https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol#eventual-consistency-considerations>
//!
//! Anything kept per type (a stream's subscriptions, a group's encoded
//! resources, a proxy's ACKs) is a [`PerType`], walked in that order.

use std::fmt;
use std::ops::{Index, IndexMut};

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

    /// Position in [`ResourceType::ALL`]: the slot of a [`PerType`], or
    /// the type's number in a compact encoding.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The short name operators know the type by (`CDS`, `EDS`, `LDS`, `RDS`).
    pub(crate) fn short_name(self) -> &'static str {
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

/// One value per resource type, indexed by [`ResourceType`] and walked in
/// make-before-break order ([`ResourceType::ALL`]).
///
/// Serialized as an array of four, in that order.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct PerType<T>([T; 4]);

impl<T> PerType<T> {
    /// The value `f` gives each type, asked in make-before-break order.
    pub(crate) fn from_fn(f: impl FnMut(ResourceType) -> T) -> PerType<T> {
        PerType(ResourceType::ALL.map(f))
    }

    /// Every type with its value, in make-before-break order.
    pub fn iter(&self) -> impl Iterator<Item = (ResourceType, &T)> {
        ResourceType::ALL.into_iter().zip(&self.0)
    }

    /// Every type with its value, mutable, in make-before-break order.
    #[cfg(test)]
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (ResourceType, &mut T)> {
        ResourceType::ALL.into_iter().zip(&mut self.0)
    }

    /// The values alone, in make-before-break order.
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.0.iter()
    }

    /// Each value through `f`, type by type.
    pub(crate) fn map<U>(self, f: impl FnMut(T) -> U) -> PerType<U> {
        PerType(self.0.map(f))
    }

    /// A `PerType` of references to these values.
    pub(crate) fn each_ref(&self) -> PerType<&T> {
        PerType(self.0.each_ref())
    }
}

impl<T> Index<ResourceType> for PerType<T> {
    type Output = T;

    fn index(&self, ty: ResourceType) -> &T {
        &self.0[ty.index()]
    }
}

impl<T> IndexMut<ResourceType> for PerType<T> {
    fn index_mut(&mut self, ty: ResourceType) -> &mut T {
        &mut self.0[ty.index()]
    }
}

/// Values given in make-before-break order: clusters, endpoints,
/// listeners, routes.
impl<T> From<[T; 4]> for PerType<T> {
    fn from(values: [T; 4]) -> PerType<T> {
        PerType(values)
    }
}

impl<T> IntoIterator for PerType<T> {
    type Item = (ResourceType, T);
    type IntoIter =
        std::iter::Zip<std::array::IntoIter<ResourceType, 4>, std::array::IntoIter<T, 4>>;

    fn into_iter(self) -> Self::IntoIter {
        ResourceType::ALL.into_iter().zip(self.0)
    }
}

/// Compile-time link between an Envoy message type and its [`ResourceType`].
pub(crate) trait XdsResource: prost::Message + Name + Sized {
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

    #[test]
    fn per_type_values_are_found_by_type_and_walked_in_push_order() {
        let mut v = PerType::from_fn(ResourceType::short_name);
        for ty in ResourceType::ALL {
            assert_eq!(v[ty], ty.short_name());
        }
        v[ResourceType::Listener] = "changed";
        assert_eq!(v[ResourceType::Listener], "changed");
        assert_eq!(v[ResourceType::Route], "RDS");
        let order: Vec<ResourceType> = v.iter().map(|(ty, _)| ty).collect();
        assert_eq!(order, ResourceType::ALL);
        let from_array = PerType::from(["CDS", "EDS", "changed", "RDS"]);
        assert_eq!(from_array, v);
        assert_eq!(v.map(str::len)[ResourceType::Cluster], 3);
    }

    #[test]
    fn per_type_serializes_as_an_array_of_four() {
        let v = PerType::from([1, 2, 3, 4]);
        let json = serde_json::to_string(&v).expect("serializes");
        assert_eq!(json, "[1,2,3,4]");
        assert_eq!(
            serde_json::from_str::<PerType<u8>>(&json).expect("parses"),
            v
        );
        assert!(serde_json::from_str::<PerType<u8>>("[1,2,3]").is_err());
    }
}
