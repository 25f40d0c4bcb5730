//! Snapshots: everything teal serves at one version, encoded once.
//!
//! A [`SnapshotInput`] is what the config model produces: typed Envoy
//! resources per proxy group. [`Snapshot::build`] checks it, encodes every
//! resource exactly once, derives per-resource versions from content, and
//! records which clusters each listener and route names, so that the stream
//! state machines can order pushes make-before-break without decoding
//! anything. Streams share the encoded bytes through `Arc`s and
//! [`bytes::Bytes`]; nothing here is copied per proxy.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use envoy_types::pb::envoy::config::{
    cluster::v3::Cluster, endpoint::v3::ClusterLoadAssignment, listener::v3::Listener,
    route::v3::RouteConfiguration,
};
use envoy_types::pb::envoy::extensions::filters::network::{
    http_connection_manager::v3::{HttpConnectionManager, http_connection_manager::RouteSpecifier},
    tcp_proxy::v3::{TcpProxy, tcp_proxy::ClusterSpecifier as TcpClusterSpecifier},
};
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};
use sha2::{Digest, Sha256};

use crate::resources::{ResourceType, XdsResource};
use crate::wire;

/// Typed Envoy resources served to one proxy group.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GroupResources {
    /// Clusters (CDS).
    pub clusters: Vec<Cluster>,
    /// Endpoints (EDS), one assignment per EDS cluster.
    pub endpoints: Vec<ClusterLoadAssignment>,
    /// Listeners (LDS).
    pub listeners: Vec<Listener>,
    /// Route configurations (RDS).
    pub routes: Vec<RouteConfiguration>,
}

/// Everything teal serves at one version, keyed by proxy group: the
/// `node.cluster` a proxy announces (for example `edge` or `sidecar`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SnapshotInput {
    /// The resources of each group.
    pub groups: BTreeMap<String, GroupResources>,
}

/// Why a [`SnapshotInput`] cannot become a snapshot. Nothing is published
/// when any of these is found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BuildError {
    /// A resource has an empty name; proxies could not subscribe to it.
    #[error("group {group:?}: a {ty} resource has an empty name")]
    EmptyName {
        /// The proxy group.
        group: String,
        /// The resource type.
        ty: ResourceType,
    },
    /// Two resources of one type in one group share a name.
    #[error("group {group:?}: two {ty} resources are named {name:?}")]
    DuplicateName {
        /// The proxy group.
        group: String,
        /// The resource type.
        ty: ResourceType,
        /// The repeated name.
        name: String,
    },
    /// The snapshot version label is empty.
    #[error("a snapshot version must not be empty")]
    EmptyVersion,
}

/// One encoded resource, shared by every stream that is sent it.
#[derive(Debug)]
pub struct Resource {
    name: String,
    /// Content-derived version: the first 16 hex digits of the SHA-256 of
    /// the encoded resource. Equal bytes, equal version, on any machine.
    version: String,
    /// The resource as an encoded `google.protobuf.Any`, ready to splice
    /// into a state-of-the-world `DiscoveryResponse`.
    any: Bytes,
    /// The resource as an encoded `envoy.service.discovery.v3.Resource`,
    /// ready to splice into a `DeltaDiscoveryResponse`.
    delta: Bytes,
    /// Clusters this resource names (routes and TCP proxies), which a proxy
    /// must have been sent before it is sent this resource.
    clusters: Vec<String>,
}

impl Resource {
    fn new<T: XdsResource>(message: &T, clusters: Vec<String>) -> Resource {
        let value = message.encode_to_vec();
        let any = Any {
            type_url: T::type_url(),
            value,
        };
        let any_bytes = any.encode_to_vec();
        let digest = Sha256::digest(&any_bytes);
        let version = hex(&digest[..8]);
        let name = message.resource_name().to_owned();
        let delta = wire::delta_resource(&name, &version, &any_bytes);
        Resource {
            name,
            version,
            any: Bytes::from(any_bytes),
            delta,
            clusters,
        }
    }

    /// The resource name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The content-derived version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The encoded `Any`.
    pub fn any_bytes(&self) -> &Bytes {
        &self.any
    }

    /// The encoded delta `Resource` wrapper.
    pub fn delta_bytes(&self) -> &Bytes {
        &self.delta
    }

    /// The clusters this resource names.
    pub fn clusters(&self) -> &[String] {
        &self.clusters
    }

    /// Decodes the resource back into its typed message (tests, render).
    pub fn decode<T: XdsResource + Default>(&self) -> Result<T, prost::DecodeError> {
        let any = Any::decode(self.any.clone())?;
        T::decode(any.value.as_slice())
    }
}

/// Key of the per-version response cache: which names a response holds.
pub(crate) type SelectionKey = Option<Arc<[String]>>;

/// All resources of one type in one group, at one version.
#[derive(Debug)]
pub struct TypeSnapshot {
    ty: ResourceType,
    /// The snapshot version in which this type's content last changed, so a
    /// push that only moves route weights leaves clusters untouched.
    version: String,
    /// Digest over every (name, resource version) pair.
    digest: [u8; 32],
    resources: BTreeMap<String, Arc<Resource>>,
    /// Encoded state-of-the-world response bodies (everything but the
    /// per-stream nonce), by the set of names they hold (`None`: all). Built
    /// by the first stream that needs one and shared by the rest.
    sotw_cache: Mutex<HashMap<SelectionKey, Bytes>>,
}

impl TypeSnapshot {
    fn new(ty: ResourceType, version: String, resources: BTreeMap<String, Arc<Resource>>) -> Self {
        let mut hasher = Sha256::new();
        for (name, r) in &resources {
            hasher.update(name.as_bytes());
            hasher.update([0]);
            hasher.update(r.version.as_bytes());
            hasher.update([0]);
        }
        TypeSnapshot {
            ty,
            version,
            digest: hasher.finalize().into(),
            resources,
            sotw_cache: Mutex::new(HashMap::new()),
        }
    }

    /// The resource type.
    pub fn resource_type(&self) -> ResourceType {
        self.ty
    }

    /// The version string sent as `version_info` for this type.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The resources, by name.
    pub fn resources(&self) -> &BTreeMap<String, Arc<Resource>> {
        &self.resources
    }

    /// One resource by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        self.resources.get(name)
    }

    /// The encoded body of a state-of-the-world response holding `names`
    /// (`None`: every resource), built once per version and selection.
    pub(crate) fn sotw_body(&self, names: &SelectionKey) -> Bytes {
        // The lock guards a map lookup or insert only; it is never held
        // across an await. A poisoned lock only means another stream
        // panicked mid-insert, and the map is still consistent, so use it.
        let mut cache = self
            .sotw_cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(body) = cache.get(names) {
            return body.clone();
        }
        let selected: Vec<&Bytes> = match names {
            None => self.resources.values().map(|r| &r.any).collect(),
            Some(names) => names
                .iter()
                .filter_map(|n| self.resources.get(n).map(|r| &r.any))
                .collect(),
        };
        let body = wire::sotw_body(&self.version, self.ty.type_url(), selected);
        cache.insert(names.clone(), body.clone());
        body
    }
}

/// Everything one proxy group is served, at one version.
#[derive(Debug)]
pub struct GroupSnapshot {
    types: [Arc<TypeSnapshot>; 4],
}

impl GroupSnapshot {
    /// The resources of one type.
    pub fn of(&self, ty: ResourceType) -> &Arc<TypeSnapshot> {
        &self.types[ty.index()]
    }

    fn empty(version: &str) -> GroupSnapshot {
        GroupSnapshot {
            types: ResourceType::ALL
                .map(|ty| Arc::new(TypeSnapshot::new(ty, version.to_owned(), BTreeMap::new()))),
        }
    }
}

/// Everything teal serves at one fleet-wide version.
#[derive(Debug)]
pub struct Snapshot {
    version: String,
    groups: BTreeMap<String, Arc<GroupSnapshot>>,
    /// Served to proxies whose group has no configuration.
    empty: Arc<GroupSnapshot>,
}

impl Snapshot {
    /// A snapshot that serves nothing, the state before the first publish.
    pub fn empty() -> Snapshot {
        Snapshot {
            version: String::new(),
            groups: BTreeMap::new(),
            empty: Arc::new(GroupSnapshot::empty("")),
        }
    }

    /// Checks and encodes `input` as version `version`.
    ///
    /// Types whose content is unchanged since `previous` keep their previous
    /// version string and encoded bytes, so streams are not pushed anything
    /// for them.
    pub fn build(
        version: &str,
        input: &SnapshotInput,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, BuildError> {
        if version.is_empty() {
            return Err(BuildError::EmptyVersion);
        }
        let mut groups = BTreeMap::new();
        for (group, res) in &input.groups {
            let prev = previous.and_then(|p| p.groups.get(group));
            let built = [
                build_type(group, version, &res.clusters, |_| Vec::new(), prev)?,
                build_type(group, version, &res.endpoints, |_| Vec::new(), prev)?,
                build_type(group, version, &res.listeners, listener_clusters, prev)?,
                build_type(group, version, &res.routes, route_clusters, prev)?,
            ];
            groups.insert(group.clone(), Arc::new(GroupSnapshot { types: built }));
        }
        Ok(Snapshot {
            version: version.to_owned(),
            groups,
            empty: Arc::new(GroupSnapshot::empty(version)),
        })
    }

    /// The fleet-wide version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The view of one proxy group; an empty one for unknown groups.
    pub fn group(&self, group: &str) -> &Arc<GroupSnapshot> {
        self.groups.get(group).unwrap_or(&self.empty)
    }

    /// Whether `group` has configuration.
    pub fn has_group(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    /// The configured groups.
    pub fn group_names(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(String::as_str)
    }
}

fn build_type<T: XdsResource>(
    group: &str,
    version: &str,
    messages: &[T],
    refs: impl Fn(&T) -> Vec<String>,
    previous: Option<&Arc<GroupSnapshot>>,
) -> Result<Arc<TypeSnapshot>, BuildError> {
    let ty = T::TYPE;
    let mut resources = BTreeMap::new();
    for m in messages {
        let name = m.resource_name();
        if name.is_empty() {
            return Err(BuildError::EmptyName {
                group: group.to_owned(),
                ty,
            });
        }
        if resources.contains_key(name) {
            return Err(BuildError::DuplicateName {
                group: group.to_owned(),
                ty,
                name: name.to_owned(),
            });
        }
        resources.insert(name.to_owned(), Arc::new(Resource::new(m, refs(m))));
    }
    let fresh = TypeSnapshot::new(ty, version.to_owned(), resources);
    if let Some(prev) = previous.map(|g| g.of(ty))
        && prev.digest == fresh.digest
    {
        return Ok(prev.clone());
    }
    Ok(Arc::new(fresh))
}

/// Clusters a route configuration sends traffic to.
fn route_clusters(rc: &RouteConfiguration) -> Vec<String> {
    use envoy_types::pb::envoy::config::route::v3::{
        route::Action, route_action::ClusterSpecifier,
    };
    let mut out = BTreeSet::new();
    for vh in &rc.virtual_hosts {
        for route in &vh.routes {
            let Some(Action::Route(action)) = &route.action else {
                continue;
            };
            match &action.cluster_specifier {
                Some(ClusterSpecifier::Cluster(c)) => {
                    out.insert(c.clone());
                }
                Some(ClusterSpecifier::WeightedClusters(w)) => {
                    out.extend(w.clusters.iter().map(|c| c.name.clone()));
                }
                _ => {}
            }
            for mirror in &action.request_mirror_policies {
                out.insert(mirror.cluster.clone());
            }
        }
    }
    out.into_iter().filter(|c| !c.is_empty()).collect()
}

/// Clusters a listener names directly: TCP proxies and inline routes.
fn listener_clusters(l: &Listener) -> Vec<String> {
    let mut out = BTreeSet::new();
    let chains = l.filter_chains.iter().chain(l.default_filter_chain.iter());
    for chain in chains {
        for filter in &chain.filters {
            use envoy_types::pb::envoy::config::listener::v3::filter::ConfigType;
            let Some(ConfigType::TypedConfig(any)) = &filter.config_type else {
                continue;
            };
            if any.type_url == TcpProxy::type_url() {
                if let Ok(tcp) = TcpProxy::decode(any.value.as_slice()) {
                    match tcp.cluster_specifier {
                        Some(TcpClusterSpecifier::Cluster(c)) => {
                            out.insert(c);
                        }
                        Some(TcpClusterSpecifier::WeightedClusters(w)) => {
                            out.extend(w.clusters.into_iter().map(|c| c.name));
                        }
                        None => {}
                    }
                }
            } else if any.type_url == HttpConnectionManager::type_url()
                && let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice())
                && let Some(RouteSpecifier::RouteConfig(rc)) = &hcm.route_specifier
            {
                out.extend(route_clusters(rc));
            }
        }
    }
    out.into_iter().filter(|c| !c.is_empty()).collect()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut s, b| {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
#[path = "snapshot_tests.rs"]
mod tests;
