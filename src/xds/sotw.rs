//! The state-of-the-world stream state machine.
//!
//! One [`SotwStream`] per gRPC stream (ADS or a per-type service). It is
//! pure: [`SotwStream::on_request`] and [`SotwStream::on_snapshot`] take a
//! request or a new snapshot and return the responses to send and the
//! events to record. The rules it keeps, from the xDS protocol spec
//! (<https://www.envoyproxy.io/docs/envoy/latest/api-docs/xds_protocol>):
//!
//! - A request whose `response_nonce` is the last response's nonce is an
//!   ACK, or a NACK when it has `error_detail`. Any other non-empty nonce
//!   is stale: its ACK/NACK is ignored, but its `resource_names` still
//!   become the subscription.
//! - At most one response per type is waiting for an ACK; newer versions
//!   coalesce into the next response, so a slow proxy gets the latest and
//!   never a backlog.
//! - A NACKed version is never sent to that stream again; the next response
//!   is the next new version.
//! - Make-before-break (for clients that take every cluster, as Envoy
//!   does): a listener or route is held back until every cluster it names
//!   that the snapshot has was ACKed by the client, and a cluster the
//!   client's listeners or routes still name is kept in its cluster list
//!   until they stop naming it.

use std::collections::BTreeSet;
use std::sync::Arc;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use sha2::{Digest, Sha256};

use crate::xds::resources::{PerType, ResourceType};
use crate::xds::snapshot::{GroupSnapshot, Resource, Snapshot, TypeSnapshot};
use crate::xds::wire::OutMessage;

use super::limits::{ECHO_BYTES, StreamLimits, cut};
use super::protocol::{
    NodeInfo, Planner, ProtocolError, Reply, StreamEvent, StreamHead, StreamKind, Subscription,
    WILDCARD,
};
pub(crate) use super::protocol::{Output, Response};

/// One response as sent: what it held, so later decisions can refer to it.
#[derive(Clone, Debug)]
struct Sent {
    version: String,
    nonce: String,
    /// The resources it carried (including clusters kept for
    /// make-before-break), by name.
    resources: Arc<[Arc<Resource>]>,
    /// For listeners and routes: the content digest of the group's
    /// cluster list when it was sent, if that list had every cluster these
    /// resources name. While the list is the same, none of them names a
    /// cluster that went, which spares [`SotwStream::clusters_still_named`]
    /// a lookup per name at every plan.
    clusters_all_in: Option<[u8; 32]>,
}

impl Sent {
    fn names(&self) -> impl Iterator<Item = &str> {
        self.resources.iter().map(|r| r.name())
    }

    fn clusters_named(&self) -> impl Iterator<Item = &String> {
        self.resources.iter().flat_map(|r| r.clusters().iter())
    }
}

/// Per-type state of one stream.
#[derive(Debug, Default)]
struct TypeState {
    subscription: Subscription,
    /// A response is owed whatever the version: the type was just
    /// requested, or the subscription grew.
    owed: bool,
    /// The last response sent.
    last: Option<Sent>,
    /// `last` is waiting for its ACK or NACK.
    in_flight: bool,
    /// The last response the client ACKed.
    applied: Option<Sent>,
    /// The versions the client rejected last, newest last, at most
    /// [`REJECTED_KEPT`]; none is sent to it again. More than one: a
    /// cluster list that keeps clusters for make-before-break gets a
    /// version per kept set, and the set can come back (a, b, a).
    rejected: std::collections::VecDeque<String>,
}

/// How many rejected versions a stream remembers per type. teal's own
/// version strings are short, so this bounds the memory a NACKing proxy
/// makes a stream hold.
const REJECTED_KEPT: usize = 8;

/// State of one state-of-the-world stream.
#[derive(Debug)]
pub struct SotwStream {
    head: StreamHead,
    types: PerType<Option<TypeState>>,
}

impl SotwStream {
    /// A new stream of `kind` with the default limits.
    pub fn new(kind: StreamKind) -> SotwStream {
        SotwStream::with_limits(kind, StreamLimits::default())
    }
}

impl Planner for SotwStream {
    type Request = DiscoveryRequest;
    const DELTA: bool = false;

    fn with_limits(kind: StreamKind, limits: StreamLimits) -> SotwStream {
        SotwStream {
            head: StreamHead::new(kind, limits),
            types: Default::default(),
        }
    }

    fn node(&self) -> Option<&NodeInfo> {
        self.head.node()
    }

    fn on_request(
        &mut self,
        req: &DiscoveryRequest,
        snapshot: &Snapshot,
    ) -> Result<Output, ProtocolError> {
        let ty = self.head.accept(req.node.as_ref(), &req.type_url)?;
        // A request names the whole subscription, so checking it before
        // anything changes keeps a refused request from half-applying.
        let bytes = req.resource_names.iter().map(String::len).sum();
        self.head
            .check_subscription(ty, req.resource_names.len(), bytes)?;
        let max_nack_bytes = self.head.limits().max_nack_bytes;
        let mut out = Output::default();
        let first = self.types[ty].is_none();
        let st = self.types[ty].get_or_insert_with(TypeState::default);

        if req.response_nonce.is_empty() {
            // A request that answers nothing asks for the current state.
            st.owed = true;
        } else if let Some(last) = st.last.as_ref().filter(|l| l.nonce == req.response_nonce) {
            if st.in_flight {
                st.in_flight = false;
                match Reply::from_error_detail(req.error_detail.as_ref(), max_nack_bytes) {
                    Reply::Ack => {
                        out.events.push(StreamEvent::Acked {
                            ty,
                            version: last.version.clone(),
                        });
                        st.applied = Some(last.clone());
                    }
                    Reply::Nack(message) => {
                        out.events.push(StreamEvent::Nacked {
                            ty,
                            version: last.version.clone(),
                            message,
                        });
                        if st.rejected.len() == REJECTED_KEPT {
                            st.rejected.pop_front();
                        }
                        st.rejected.push_back(last.version.clone());
                    }
                }
            }
        } else {
            out.events.push(StreamEvent::StaleNonce {
                ty,
                nonce: cut(&req.response_nonce, ECHO_BYTES),
            });
        }

        // An ACK names the same resources again (in the order teal keeps
        // them, as clients send them): nothing to rebuild.
        let same = !st.subscription.wildcard
            && !req.resource_names.is_empty()
            && req.resource_names.iter().eq(st.subscription.names.iter());
        if !same {
            let subscription = subscription_from(&req.resource_names, first, &st.subscription);
            if subscription.grew_from(&st.subscription) {
                st.owed = true;
            }
            st.subscription = subscription;
        }

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
        let ts = group.of(ty);
        let make_before_break = self.make_before_break();
        let kept = if ty == ResourceType::Cluster && make_before_break {
            self.clusters_still_named(ts)
        } else {
            Vec::new()
        };
        let st = self.types[ty].as_ref()?;
        if st.in_flight {
            return None;
        }
        // Borrowed until a response is due: most plans (every ACK's) send
        // nothing.
        let version: std::borrow::Cow<'_, str> = if kept.is_empty() {
            ts.version().into()
        } else {
            kept_version(ts.version(), &kept).into()
        };
        let changed = st.last.as_ref().is_none_or(|l| l.version != *version);
        if !(changed || st.owed) || st.rejected.iter().any(|r| *r == *version) {
            return None;
        }
        let version = version.into_owned();
        let mut resources: Vec<Arc<Resource>> = select(ts, &st.subscription);
        if matches!(ty, ResourceType::Listener | ResourceType::Route)
            && make_before_break
            && !self.clusters_applied(group, &resources)
        {
            return None;
        }
        let nonce = self.head.next_nonce();
        let message = if st.subscription.wildcard && kept.is_empty() {
            ts.sotw_all(&nonce)
        } else {
            resources.extend(kept);
            OutMessage::sotw_parts(
                &version,
                ty.type_url(),
                resources.iter().map(|r| r.sotw_bytes().clone()),
                &nonce,
            )
        };
        out.events.push(StreamEvent::Sent {
            ty,
            version: version.clone(),
            nonce: nonce.clone(),
            resources: resources.len(),
        });
        // Asked of the group, which works it out once for every stream.
        let clusters_all_in = matches!(ty, ResourceType::Listener | ResourceType::Route)
            .then(|| {
                resources
                    .iter()
                    .all(|r| group.clusters_all_listed(ty, r.name()))
                    .then(|| *group.of(ResourceType::Cluster).content_digest())
            })
            .flatten();
        let st = self.types[ty].as_mut()?;
        st.last = Some(Sent {
            version,
            nonce,
            resources: resources.into(),
            clusters_all_in,
        });
        st.in_flight = true;
        st.owed = false;
        Some(Response { ty, message })
    }
}

impl SotwStream {
    /// Whether every cluster `resources` name that the group has was ACKed.
    fn clusters_applied(&self, group: &GroupSnapshot, resources: &[Arc<Resource>]) -> bool {
        let clusters = group.of(ResourceType::Cluster);
        let applied = self.types[ResourceType::Cluster]
            .as_ref()
            .and_then(|c| c.applied.as_ref());
        // The client applied the group's whole cluster list as it is (a
        // list with kept clusters has another version): whatever the
        // resources name that the group has, it has.
        if applied.is_some_and(|a| a.version == clusters.version()) {
            return true;
        }
        let applied: BTreeSet<&str> = applied.map(|a| a.names().collect()).unwrap_or_default();
        resources
            .iter()
            .flat_map(|r| r.clusters())
            .all(|c| applied.contains(c.as_str()) || clusters.get(c).is_none())
    }

    /// Clusters the client was sent before that its listeners or routes
    /// (sent or applied) still name, but which `clusters` no longer has.
    fn clusters_still_named(&self, clusters: &TypeSnapshot) -> Vec<Arc<Resource>> {
        // The common case, asked at every plan: every listener and route
        // sent or applied was sent with this very cluster list and named
        // only clusters in it.
        let digest = clusters.content_digest();
        let all_in = [ResourceType::Listener, ResourceType::Route]
            .iter()
            .filter_map(|ty| self.types[*ty].as_ref())
            .flat_map(|st| st.last.iter().chain(st.applied.iter()))
            .all(|sent| sent.clusters_all_in.as_ref() == Some(digest));
        if all_in {
            return Vec::new();
        }
        let mut named = BTreeSet::new();
        for ty in [ResourceType::Listener, ResourceType::Route] {
            if let Some(st) = &self.types[ty] {
                for sent in st.last.iter().chain(st.applied.iter()) {
                    named.extend(
                        sent.clusters_named()
                            .filter(|c| clusters.get(c).is_none())
                            .map(String::as_str),
                    );
                }
            }
        }
        if named.is_empty() {
            return Vec::new();
        }
        let Some(cds) = &self.types[ResourceType::Cluster] else {
            return Vec::new();
        };
        let mut kept: Vec<Arc<Resource>> = Vec::new();
        for sent in cds.last.iter().chain(cds.applied.iter()) {
            for r in sent.resources.iter() {
                if named.contains(r.name()) && !kept.iter().any(|k| k.name() == r.name()) {
                    kept.push(r.clone());
                }
            }
        }
        kept.sort_by(|a, b| a.name().cmp(b.name()));
        kept
    }
}

/// The subscription a request asks for. An empty first request is the
/// legacy wildcard, and stays wildcard while the client keeps sending
/// empty lists; `*` asks for the wildcard explicitly.
fn subscription_from(names: &[String], first: bool, previous: &Subscription) -> Subscription {
    if names.is_empty() {
        let legacy = first || (previous.wildcard && previous.names.is_empty());
        return Subscription {
            wildcard: legacy,
            names: BTreeSet::new(),
        };
    }
    Subscription {
        wildcard: names.iter().any(|n| n == WILDCARD),
        names: names.iter().filter(|n| *n != WILDCARD).cloned().collect(),
    }
}

fn select(ts: &TypeSnapshot, sub: &Subscription) -> Vec<Arc<Resource>> {
    if sub.wildcard {
        ts.resources().values().cloned().collect()
    } else {
        sub.names
            .iter()
            .filter_map(|n| ts.get(n).cloned())
            .collect()
    }
}

/// The version of a cluster list that keeps clusters for make-before-break:
/// the snapshot's version plus a digest of what was kept, so the list is
/// sent again when what is kept changes.
fn kept_version(version: &str, kept: &[Arc<Resource>]) -> String {
    let mut h = Sha256::new();
    for r in kept {
        h.update(r.name().as_bytes());
        h.update([0]);
        h.update(r.version().as_bytes());
    }
    let d = h.finalize();
    format!(
        "{version}+keep.{:02x}{:02x}{:02x}{:02x}",
        d[0], d[1], d[2], d[3]
    )
}

#[cfg(test)]
#[path = "sotw_tests.rs"]
mod tests;
