//! The incremental (delta) stream state machine.
//!
//! Like [`super::sotw`], pure: requests and snapshots in, responses and
//! events out. What differs from state of the world:
//!
//! - The client says what it already holds (`initial_resource_versions`
//!   on the first request of a type) and teal tracks, per resource, the
//!   version the client has ACKed. A response carries only resources whose
//!   content-derived version differs, and `removed_resources` for those the
//!   snapshot no longer has; a reconnecting proxy is not sent what it has.
//! - Subscriptions change by `resource_names_subscribe` and
//!   `resource_names_unsubscribe`; `*` is the wildcard, and an empty first
//!   subscription is the legacy wildcard.
//! - Make-before-break works per resource: a listener or route waits until
//!   the client has ACKed the clusters it names, and a cluster is not
//!   removed while a listener or route the client holds still names it.
//!
//! ACK, NACK, stale nonces and "never resend a rejected version" follow the
//! same rules as state of the world, keyed by the type's system version.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;

use crate::xds::resources::{PerType, ResourceType};
use crate::xds::snapshot::{GroupSnapshot, Resource, Snapshot};
use crate::xds::wire::OutMessage;

use super::limits::{ECHO_BYTES, StreamLimits, cut};
use super::protocol::{
    NodeInfo, Planner, ProtocolError, Reply, StreamEvent, StreamHead, StreamKind, Subscription,
    WILDCARD,
};
pub(crate) use super::protocol::{Output, Response};

/// What the client holds of one resource.
#[derive(Clone, Debug)]
struct Held {
    version: String,
    /// The resource, when teal sent it on this stream (it is unknown for
    /// what a reconnecting client says it had).
    resource: Option<Arc<Resource>>,
}

/// A response waiting for its ACK.
#[derive(Debug)]
struct InFlight {
    nonce: String,
    version: String,
    updated: Vec<Arc<Resource>>,
    removed: Vec<String>,
}

/// Per-type state of one delta stream.
#[derive(Debug, Default)]
struct TypeState {
    subscription: Subscription,
    /// The type was just requested: answer even if there is nothing new.
    owed: bool,
    /// What the client holds, as of its last ACK.
    held: BTreeMap<String, Held>,
    in_flight: Option<InFlight>,
    /// The system version the client rejected last; never sent again.
    rejected: Option<String>,
    /// The system version the client is known to be current with: the
    /// last one it ACKed, or a later one that changed nothing it
    /// subscribes to (and so was not sent).
    current: Option<String>,
}

impl TypeState {
    /// The client's answer (ACK or NACK) to the response in flight, or a
    /// stale nonce.
    fn answer(
        &mut self,
        ty: ResourceType,
        req: &DeltaDiscoveryRequest,
        max_nack_bytes: usize,
        out: &mut Output,
    ) {
        match self.in_flight.take() {
            Some(f) if f.nonce == req.response_nonce => {
                match Reply::from_error_detail(req.error_detail.as_ref(), max_nack_bytes) {
                    Reply::Ack => {
                        for r in &f.updated {
                            self.held.insert(
                                r.name().to_owned(),
                                Held {
                                    version: r.version().to_owned(),
                                    resource: Some(r.clone()),
                                },
                            );
                        }
                        for name in &f.removed {
                            self.held.remove(name);
                        }
                        self.current = Some(f.version.clone());
                        out.events.push(StreamEvent::Acked {
                            ty,
                            version: f.version,
                        });
                    }
                    Reply::Nack(message) => {
                        out.events.push(StreamEvent::Nacked {
                            ty,
                            version: f.version.clone(),
                            message,
                        });
                        self.rejected = Some(f.version);
                    }
                }
            }
            other => {
                self.in_flight = other;
                out.events.push(StreamEvent::StaleNonce {
                    ty,
                    nonce: cut(&req.response_nonce, ECHO_BYTES),
                });
            }
        }
    }

    /// Applies the request's subscribes, then its unsubscribes.
    fn resubscribe(&mut self, req: &DeltaDiscoveryRequest) {
        for name in &req.resource_names_subscribe {
            if name == WILDCARD {
                self.subscription.wildcard = true;
            } else {
                self.subscription.names.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            if name == WILDCARD {
                self.subscription.wildcard = false;
            } else {
                self.subscription.names.remove(name);
            }
        }
        // The client forgets what it no longer subscribes to.
        let sub = &self.subscription;
        self.held.retain(|name, _| sub.covers(name));
    }
}

/// State of one delta stream.
#[derive(Debug)]
pub struct DeltaStream {
    head: StreamHead,
    types: PerType<Option<TypeState>>,
}

impl DeltaStream {
    /// A new stream of `kind` with the default limits.
    pub fn new(kind: StreamKind) -> DeltaStream {
        DeltaStream::with_limits(kind, StreamLimits::default())
    }
}

impl Planner for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    const DELTA: bool = true;

    fn with_limits(kind: StreamKind, limits: StreamLimits) -> DeltaStream {
        DeltaStream {
            head: StreamHead::new(kind, limits),
            types: Default::default(),
        }
    }

    fn node(&self) -> Option<&NodeInfo> {
        self.head.node()
    }

    fn on_request(
        &mut self,
        req: &DeltaDiscoveryRequest,
        snapshot: &Snapshot,
    ) -> Result<Output, ProtocolError> {
        let ty = self.head.accept(req.node.as_ref(), &req.type_url)?;
        let first = self.types[ty].is_none();
        // Subscriptions grow across requests: check what this one would
        // make of them before anything changes.
        let current = self.types[ty].as_ref().map(|st| &st.subscription);
        let (names, bytes) = subscription_size_after(current, req);
        self.head.check_subscription(ty, names, bytes)?;
        if first {
            let held = &req.initial_resource_versions;
            let bytes = held.iter().map(|(n, v)| n.len() + v.len()).sum();
            self.head.check_subscription(ty, held.len(), bytes)?;
        }
        let max_nack_bytes = self.head.limits().max_nack_bytes;
        let mut out = Output::default();
        let st = self.types[ty].get_or_insert_with(TypeState::default);

        if first {
            st.owed = true;
            st.subscription.wildcard = req.resource_names_subscribe.is_empty();
            for (name, version) in &req.initial_resource_versions {
                st.held.insert(
                    name.clone(),
                    Held {
                        version: version.clone(),
                        resource: None,
                    },
                );
            }
        }

        if !req.response_nonce.is_empty() {
            st.answer(ty, req, max_nack_bytes, &mut out);
        }
        st.resubscribe(req);

        self.plan(snapshot, &mut out);
        Ok(out)
    }

    fn subscription(&self, ty: ResourceType) -> Option<&Subscription> {
        self.types[ty].as_ref().map(|st| &st.subscription)
    }

    fn next_response(
        &mut self,
        ty: ResourceType,
        group: &GroupSnapshot,
        out: &mut Output,
    ) -> Option<Response> {
        let make_before_break = self.make_before_break();
        let ts = group.of(ty);
        let acked_clusters = self.held_clusters();
        let still_named = if ty == ResourceType::Cluster && make_before_break {
            self.clusters_still_named()
        } else {
            BTreeSet::new()
        };
        let st = self.types[ty].as_ref()?;
        if st.in_flight.is_some() || st.rejected.as_deref() == Some(ts.version()) {
            return None;
        }
        let gate = make_before_break && matches!(ty, ResourceType::Listener | ResourceType::Route);
        let cluster_ready = |c: &String| {
            group.of(ResourceType::Cluster).get(c).is_none() || acked_clusters.contains(c.as_str())
        };
        let updated: Vec<Arc<Resource>> = ts
            .resources()
            .iter()
            .filter(|(name, _)| st.subscription.covers(name))
            .filter(|(name, r)| st.held.get(*name).is_none_or(|h| h.version != r.version()))
            .filter(|(_, r)| !gate || r.clusters().iter().all(cluster_ready))
            .map(|(_, r)| r.clone())
            .collect();
        let removed: Vec<String> = st
            .held
            .keys()
            .filter(|name| ts.get(name).is_none() && !still_named.contains(*name))
            .cloned()
            .collect();
        if updated.is_empty() && removed.is_empty() && !st.owed {
            // Nothing this client holds changed: it is current with this
            // version without being sent anything. Report it as applied,
            // so status and rollouts do not wait for an ACK that cannot
            // come. Held-back resources (make-before-break) do not count.
            let held_back = gate
                && ts.resources().iter().any(|(name, r)| {
                    st.subscription.covers(name)
                        && st.held.get(name).is_none_or(|h| h.version != r.version())
                });
            if !held_back && st.current.as_deref() != Some(ts.version()) {
                let version = ts.version().to_owned();
                if let Some(st) = self.types[ty].as_mut() {
                    st.current = Some(version.clone());
                }
                out.events.push(StreamEvent::Acked { ty, version });
            }
            return None;
        }
        let nonce = self.head.next_nonce();
        let version = ts.version().to_owned();
        let message = OutMessage::delta(
            &version,
            ty.type_url(),
            updated.iter().map(|r| r.delta_bytes().clone()),
            &removed,
            &nonce,
        );
        out.events.push(StreamEvent::Sent {
            ty,
            version: version.clone(),
            nonce: nonce.clone(),
            resources: updated.len(),
        });
        let st = self.types[ty].as_mut()?;
        st.owed = false;
        st.in_flight = Some(InFlight {
            nonce,
            version,
            updated,
            removed,
        });
        Some(Response { ty, message })
    }
}

impl DeltaStream {
    /// Clusters the client has ACKed.
    fn held_clusters(&self) -> BTreeSet<&str> {
        self.types[ResourceType::Cluster]
            .as_ref()
            .map(|c| c.held.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    /// Clusters named by listeners and routes the client holds or is being
    /// sent. A reconnecting client's holdings are unknown until teal sends
    /// them, so they are assumed to name nothing.
    fn clusters_still_named(&self) -> BTreeSet<String> {
        let mut named = BTreeSet::new();
        for ty in [ResourceType::Listener, ResourceType::Route] {
            let Some(st) = &self.types[ty] else {
                continue;
            };
            let held = st.held.values().filter_map(|h| h.resource.as_ref());
            let sending = st.in_flight.iter().flat_map(|f| f.updated.iter());
            for r in held.chain(sending) {
                named.extend(r.clusters().iter().cloned());
            }
        }
        named
    }
}

/// How many names, and how many bytes of names, a subscription holds once
/// `req`'s subscribes and then its unsubscribes are applied to `current`
/// (`None`: the type's first request). Computed without changing anything,
/// so a request that would go over a limit is refused whole.
fn subscription_size_after(
    current: Option<&Subscription>,
    req: &DeltaDiscoveryRequest,
) -> (usize, usize) {
    use std::collections::HashSet;
    let has = |name: &str| current.is_some_and(|s| s.names.contains(name));
    let mut added: HashSet<&str> = HashSet::new();
    for name in &req.resource_names_subscribe {
        if name != WILDCARD && !has(name) {
            added.insert(name);
        }
    }
    let mut removed: HashSet<&str> = HashSet::new();
    for name in &req.resource_names_unsubscribe {
        if name != WILDCARD && !added.remove(name.as_str()) && has(name) {
            removed.insert(name);
        }
    }
    let (count, bytes) = current.map_or((0, 0), |s| {
        (
            s.names.len(),
            s.names.iter().map(String::len).sum::<usize>(),
        )
    });
    let size = |set: &HashSet<&str>| set.iter().map(|n| n.len()).sum::<usize>();
    (
        count + added.len() - removed.len(),
        bytes + size(&added) - size(&removed),
    )
}

#[cfg(test)]
#[path = "delta_tests.rs"]
mod tests;
