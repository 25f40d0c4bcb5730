//! Snapshots: everything teal serves at one version, encoded once.
//!
//! A [`SnapshotInput`] is what the config model produces: typed Envoy
//! resources per proxy group. [`Snapshot::build_with`] checks it, encodes
//! every resource exactly once (a resource encoded as in the previous
//! snapshot keeps that snapshot's hashes and wrappers, so a flip builds new
//! ones only for the routes it moves),
//! derives per-resource versions and the snapshot's `content_digest` from
//! content, and records which clusters each listener and route names, so
//! that the stream state machines can order pushes make-before-break
//! without decoding anything. Streams share the encoded bytes through `Arc`s and
//! [`bytes::Bytes`]; nothing here is copied per proxy.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, OnceLock};

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

use crate::xds::resources::{PerType, ResourceType, XdsResource};
use crate::xds::wire::{self, OutMessage};

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
    /// The resource as an encoded `google.protobuf.Any` (a slice of
    /// `sotw`, not a copy).
    any: Bytes,
    /// The `Any` as a `DiscoveryResponse` resources field, ready to splice
    /// into a state-of-the-world response.
    sotw: Bytes,
    /// The resource as an encoded `envoy.service.discovery.v3.Resource`,
    /// ready to splice into a `DeltaDiscoveryResponse`.
    delta: Bytes,
    /// Clusters this resource names (routes and TCP proxies), which a proxy
    /// must have been sent before it is sent this resource.
    clusters: Vec<String>,
}

impl Resource {
    fn from_any(name: String, any_bytes: Vec<u8>, clusters: Vec<String>) -> Resource {
        let version = resource_version(&any_bytes);
        let delta = wire::delta_resource(&name, &version, &any_bytes);
        let sotw = wire::sotw_resource(&any_bytes);
        let any = sotw.slice(sotw.len() - any_bytes.len()..);
        Resource {
            name,
            version,
            any,
            sotw,
            delta,
            clusters,
        }
    }

    pub(crate) fn name(&self) -> &str {
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

    /// The encoded `Any` as a state-of-the-world response field.
    pub(crate) fn sotw_bytes(&self) -> &Bytes {
        &self.sotw
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
    #[cfg(test)]
    pub(crate) fn decode<T: XdsResource + Default>(&self) -> Result<T, prost::DecodeError> {
        let any = Any::decode(self.any.clone())?;
        T::decode(any.value.as_slice())
    }
}

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
    /// The encoded state-of-the-world response body holding every resource
    /// (everything but the per-stream nonce), built by the first wildcard
    /// stream that needs it and shared by the rest. Only this selection is
    /// cached: it is the group's own, the one Envoy asks for, and there is
    /// one per version. Selections clients choose by name are assembled per
    /// stream from the resources' shared encodings instead, so no client
    /// can make teal hold a response variant per list of names it makes up.
    sotw_all: OnceLock<Bytes>,
}

impl TypeSnapshot {
    fn new(ty: ResourceType, version: String, resources: BTreeMap<String, Arc<Resource>>) -> Self {
        let digest = type_digest(resources.iter().map(|(n, r)| (n.as_str(), r.version())));
        TypeSnapshot::with_digest(ty, version, resources, digest)
    }

    fn with_digest(
        ty: ResourceType,
        version: String,
        resources: BTreeMap<String, Arc<Resource>>,
        digest: [u8; 32],
    ) -> Self {
        TypeSnapshot {
            ty,
            version,
            digest,
            resources,
            sotw_all: OnceLock::new(),
        }
    }

    /// The version string sent as `version_info` for this type.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The digest over every (name, resource version) pair: equal
    /// digests, equal contents, whatever the version strings say.
    pub(crate) fn content_digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// The resources, by name.
    pub fn resources(&self) -> &BTreeMap<String, Arc<Resource>> {
        &self.resources
    }

    /// One resource by name.
    pub fn get(&self, name: &str) -> Option<&Arc<Resource>> {
        self.resources.get(name)
    }

    /// A state-of-the-world response holding every resource, with
    /// `nonce`. Its body is encoded once per version and shared.
    pub(crate) fn sotw_all(&self, nonce: &str) -> OutMessage {
        let body = self.sotw_all.get_or_init(|| {
            wire::sotw_body(
                &self.version,
                self.ty.type_url(),
                self.resources.values().map(|r| &r.any),
            )
        });
        OutMessage::sotw(body.clone(), nonce)
    }
}

/// Everything one proxy group is served, at one version.
#[derive(Debug)]
pub struct GroupSnapshot {
    types: PerType<Arc<TypeSnapshot>>,
    /// Per listener and route (by type index), the names of those that
    /// name only clusters of this group's cluster list, worked out once
    /// by the first stream that asks ([`GroupSnapshot::clusters_all_listed`])
    /// instead of by every stream at every send.
    clusters_listed: OnceLock<[HashSet<String>; 2]>,
}

impl GroupSnapshot {
    fn new(types: PerType<Arc<TypeSnapshot>>) -> GroupSnapshot {
        GroupSnapshot {
            types,
            clusters_listed: OnceLock::new(),
        }
    }

    /// The resources of one type.
    pub fn of(&self, ty: ResourceType) -> &Arc<TypeSnapshot> {
        &self.types[ty]
    }

    /// Whether every cluster that listener or route `name` of type `ty`
    /// names is in this group's cluster list (false for another type or
    /// a resource the group does not have).
    pub(crate) fn clusters_all_listed(&self, ty: ResourceType, name: &str) -> bool {
        let slot = match ty {
            ResourceType::Listener => 0,
            ResourceType::Route => 1,
            _ => return false,
        };
        let listed = self.clusters_listed.get_or_init(|| {
            let clusters = self.of(ResourceType::Cluster);
            [ResourceType::Listener, ResourceType::Route].map(|ty| {
                self.of(ty)
                    .resources()
                    .iter()
                    .filter(|(_, r)| r.clusters().iter().all(|c| clusters.get(c).is_some()))
                    .map(|(n, _)| n.clone())
                    .collect()
            })
        });
        listed[slot].contains(name)
    }

    fn empty(version: &str) -> GroupSnapshot {
        GroupSnapshot::new(PerType::from_fn(|ty| {
            Arc::new(TypeSnapshot::new(ty, version.to_owned(), BTreeMap::new()))
        }))
    }
}

/// Everything teal serves at one fleet-wide version.
#[derive(Debug)]
pub struct Snapshot {
    /// The label it is published under. Text, not a
    /// `rollout::Version`: the xDS engine serves whatever label
    /// its writer gives (the controller names each snapshot with a
    /// `Version`'s text, tests and tools with their own), and a type
    /// unchanged since an earlier snapshot keeps that one's label, possibly
    /// recorded by an earlier run ([`TypeLabels`]). The controller keeps
    /// the typed version with its durable state.
    version: String,
    /// [`content_digest`] of what this snapshot serves.
    digest: String,
    groups: BTreeMap<String, Arc<GroupSnapshot>>,
    /// Served to proxies whose group has no configuration.
    empty: Arc<GroupSnapshot>,
}

impl Snapshot {
    /// A snapshot that serves nothing, the state before the first publish.
    pub(crate) fn empty() -> Snapshot {
        Snapshot {
            version: String::new(),
            digest: String::new(),
            groups: BTreeMap::new(),
            empty: Arc::new(GroupSnapshot::empty("")),
        }
    }

    /// Checks and encodes `input` as version `version`; see
    /// [`build_with`](Self::build_with).
    pub fn build(
        version: &str,
        input: &SnapshotInput,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, BuildError> {
        Snapshot::build_with(input, previous, |_| version.to_owned())
    }

    /// Checks and encodes `input`, then names it with the version
    /// `version_for` returns when given the content digest (see
    /// `content_digest`).
    ///
    /// Every resource is encoded once; one whose encoding equals that of
    /// the resource of the same name in `previous` reuses it whole, and a
    /// type whose content is unchanged keeps its previous version string and
    /// encoded bytes, so streams are not pushed anything for it.
    pub fn build_with(
        input: &SnapshotInput,
        previous: Option<&Snapshot>,
        version_for: impl FnOnce(&str) -> String,
    ) -> Result<Snapshot, BuildError> {
        Snapshot::build_labelled(input, previous, &TypeLabels::new(), version_for)
    }

    /// [`build_with`](Self::build_with), naming a type whose content is
    /// new to `previous` with its label in `labels` when that label was
    /// given to exactly this content ([`Snapshot::labels`] of a snapshot
    /// built before, kept with the durable state). So a teal that starts
    /// again, or another replica, serves each type under the version string
    /// proxies already hold, and a reconnecting proxy is sent nothing new.
    pub(crate) fn build_labelled(
        input: &SnapshotInput,
        previous: Option<&Snapshot>,
        labels: &TypeLabels,
        version_for: impl FnOnce(&str) -> String,
    ) -> Result<Snapshot, BuildError> {
        let mut staged = Vec::with_capacity(input.groups.len());
        for (group, res) in &input.groups {
            let prev = previous.and_then(|p| p.groups.get(group));
            let types = PerType::from([
                stage(group, &res.clusters, |_| Vec::new(), prev)?,
                stage(group, &res.endpoints, |_| Vec::new(), prev)?,
                stage(group, &res.listeners, listener_clusters, prev)?,
                stage(group, &res.routes, route_clusters, prev)?,
            ]);
            staged.push((group.clone(), types));
        }
        let digest = combine_digests(
            staged
                .iter()
                .map(|(group, types)| (group.as_str(), types.each_ref().map(Staged::digest))),
        );
        let version = version_for(&digest);
        if version.is_empty() {
            return Err(BuildError::EmptyVersion);
        }
        let groups = staged
            .into_iter()
            .map(|(group, types)| {
                let known = labels.get(&group);
                let types = types.map(|t| {
                    let label = known.and_then(|k| k.get(t.ty().short_name()));
                    t.into_type(&version, label)
                });
                (group, Arc::new(GroupSnapshot::new(types)))
            })
            .collect();
        Ok(Snapshot {
            empty: Arc::new(GroupSnapshot::empty(&version)),
            version,
            digest,
            groups,
        })
    }

    /// The version label and content digest of every type of every group,
    /// for [`Snapshot::build_labelled`] after a restart.
    pub(crate) fn labels(&self) -> TypeLabels {
        self.groups
            .iter()
            .map(|(group, g)| {
                let types = g
                    .types
                    .values()
                    .map(|t| {
                        (
                            t.ty.short_name().to_owned(),
                            TypeLabel {
                                version: t.version.clone(),
                                digest: hex(&t.digest),
                            },
                        )
                    })
                    .collect();
                (group.clone(), types)
            })
            .collect()
    }

    /// The fleet-wide version.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The content digest of what this snapshot serves (see
    /// `content_digest`); empty for `Snapshot::empty`.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The view of one proxy group; an empty one for unknown groups.
    pub fn group(&self, group: &str) -> &Arc<GroupSnapshot> {
        self.groups.get(group).unwrap_or(&self.empty)
    }

    /// Whether `group` has configuration.
    #[cfg(test)]
    pub(crate) fn has_group(&self, group: &str) -> bool {
        self.groups.contains_key(group)
    }

    pub(crate) fn group_names(&self) -> impl Iterator<Item = &str> {
        self.groups.keys().map(String::as_str)
    }
}

/// A short digest (12 hex digits) naming everything `input` would serve:
/// equal content, equal digest, on any machine. It is the digest
/// [`Snapshot::build_with`] computes for the same input, without keeping
/// what it encodes; resources with duplicate or empty names, which a build
/// refuses, still get a digest.
pub(crate) fn content_digest(input: &SnapshotInput) -> String {
    fn of<T: XdsResource>(messages: &[T]) -> [u8; 32] {
        let versions: BTreeMap<&str, String> = messages
            .iter()
            .map(|m| (m.resource_name(), resource_version(&any_bytes(m))))
            .collect();
        type_digest(versions.iter().map(|(n, v)| (*n, v.as_str())))
    }
    combine_digests(input.groups.iter().map(|(group, res)| {
        (
            group.as_str(),
            PerType::from([
                of(&res.clusters),
                of(&res.endpoints),
                of(&res.listeners),
                of(&res.routes),
            ]),
        )
    }))
}

/// The version label a type was served under, and the digest of the
/// content it named.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TypeLabel {
    /// The version string proxies were sent for this type.
    pub(crate) version: String,
    /// The type's content digest (hex), see [`Snapshot::labels`].
    pub(crate) digest: String,
}

/// Per group, per type (`CDS`, `EDS`, `LDS`, `RDS`): its [`TypeLabel`].
pub(crate) type TypeLabels = BTreeMap<String, BTreeMap<String, TypeLabel>>;

/// One type of one group, encoded but not yet named with a version.
enum Staged {
    /// Unchanged since the previous snapshot.
    Same(Arc<TypeSnapshot>),
    New {
        ty: ResourceType,
        resources: BTreeMap<String, Arc<Resource>>,
        digest: [u8; 32],
    },
}

impl Staged {
    fn digest(&self) -> [u8; 32] {
        match self {
            Staged::Same(t) => t.digest,
            Staged::New { digest, .. } => *digest,
        }
    }

    fn ty(&self) -> ResourceType {
        match self {
            Staged::Same(t) => t.ty,
            Staged::New { ty, .. } => *ty,
        }
    }

    /// Named `version`, or `known`'s label when `known` named this very
    /// content.
    fn into_type(self, version: &str, known: Option<&TypeLabel>) -> Arc<TypeSnapshot> {
        match self {
            Staged::Same(t) => t,
            Staged::New {
                ty,
                resources,
                digest,
            } => {
                let label = known
                    .filter(|k| k.digest == hex(&digest) && !k.version.is_empty())
                    .map_or(version, |k| k.version.as_str());
                Arc::new(TypeSnapshot::with_digest(
                    ty,
                    label.to_owned(),
                    resources,
                    digest,
                ))
            }
        }
    }
}

/// Checks and encodes one type of one group. A resource whose encoding is
/// the same as in `previous` keeps the previous [`Resource`] (no hashing,
/// no wrapping, no cluster references to find again), and a type whose
/// content is unchanged keeps the previous [`TypeSnapshot`].
fn stage<T: XdsResource>(
    group: &str,
    messages: &[T],
    refs: impl Fn(&T) -> Vec<String>,
    previous: Option<&Arc<GroupSnapshot>>,
) -> Result<Staged, BuildError> {
    let ty = T::TYPE;
    let prev = previous.map(|g| g.of(ty));
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
        let any = any_bytes(m);
        let resource = match prev.and_then(|p| p.get(name)) {
            Some(old) if old.any[..] == any[..] => old.clone(),
            _ => Arc::new(Resource::from_any(name.to_owned(), any, refs(m))),
        };
        resources.insert(name.to_owned(), resource);
    }
    let digest = type_digest(resources.iter().map(|(n, r)| (n.as_str(), r.version())));
    if let Some(prev) = prev
        && prev.digest == digest
    {
        return Ok(Staged::Same(prev.clone()));
    }
    Ok(Staged::New {
        ty,
        resources,
        digest,
    })
}

/// `message` as an encoded `google.protobuf.Any`.
fn any_bytes<T: XdsResource>(message: &T) -> Vec<u8> {
    Any {
        type_url: T::type_url(),
        value: message.encode_to_vec(),
    }
    .encode_to_vec()
}

/// A resource's content-derived version: the first 16 hex digits of the
/// SHA-256 of its encoded `Any`.
fn resource_version(any: &[u8]) -> String {
    hex(&Sha256::digest(any)[..8])
}

/// Digest of one type's content: its (name, resource version) pairs in name
/// order.
fn type_digest<'a>(resources: impl Iterator<Item = (&'a str, &'a str)>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for (name, version) in resources {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(version.as_bytes());
        hasher.update([0]);
    }
    hasher.finalize().into()
}

/// The content digest from every group's type digests, in group order.
fn combine_digests<'a>(groups: impl Iterator<Item = (&'a str, PerType<[u8; 32]>)>) -> String {
    let mut hasher = Sha256::new();
    for (group, types) in groups {
        hasher.update((group.len() as u64).to_be_bytes());
        hasher.update(group.as_bytes());
        for (_, digest) in types {
            hasher.update(digest);
        }
    }
    hex(&hasher.finalize()[..6])
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
