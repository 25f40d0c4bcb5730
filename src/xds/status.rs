//! What teal knows of every connected proxy.
//!
//! Each stream registers itself and reports its [`StreamEvent`]s here; the
//! registry keeps, per stream and per type, the last version sent, the last
//! version ACKed and the last NACK with Envoy's message. Readers (the admin
//! API, the rollout, tests) take a consistent copy with
//! [`ProxyRegistry::proxies`] and can wait for the next change with
//! [`ProxyRegistry::watch`]. A reader that follows every change (the
//! rollout's confirmation) takes a `ChangeFeed` instead, which hands it
//! only the streams that changed since it last looked: with N proxies
//! ACKing a version one by one, it does O(1) work per ACK rather than
//! copying all N statuses each time. The lock is a plain mutex held for a
//! map update, never across an `.await`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::transport::identity::PeerIdentity;
use crate::xds::cordon::Cordons;
use crate::xds::resources::{PerType, ResourceType};

use super::load::LoadStore;
use super::protocol::{NodeInfo, StreamEvent, StreamKind};

/// The last NACK of one type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nack {
    /// The version the proxy rejected.
    pub version: String,
    /// The proxy's reason, as it sent it.
    pub message: String,
    /// When teal received the NACK.
    pub at: SystemTime,
}

/// One proxy's state for one type.
///
/// Versions here are the `version_info` text as it went over the wire,
/// not `rollout::Version`s: what a proxy ACKs or rejects may come
/// from another control plane, and what teal sends may carry a `+keep.`
/// suffix (see `xds::sotw`) or a label a test published. Readers that need
/// teal's version out of one parse it with `Version::of_sent`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TypeStatus {
    /// The proxy asked for this type.
    pub subscribed: bool,
    /// The version of the last response sent.
    pub sent: Option<String>,
    /// When it was sent.
    pub sent_at: Option<SystemTime>,
    /// The last version the proxy ACKed.
    pub acked: Option<String>,
    /// When it ACKed it.
    pub acked_at: Option<SystemTime>,
    /// The last NACK, if any.
    pub nack: Option<Nack>,
}

impl TypeStatus {
    /// Whether the last response sent was rejected.
    pub fn last_was_nacked(&self) -> bool {
        self.nack
            .as_ref()
            .is_some_and(|n| Some(&n.version) == self.sent.as_ref())
    }
}

/// One connected proxy stream, as the admin API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyStatus {
    /// Registry-unique id of the stream.
    pub stream_id: u64,
    /// The proxy's identity; `None` until its first request.
    pub node: Option<NodeInfo>,
    /// ADS or a per-type service.
    pub kind: StreamKind,
    /// Incremental (delta) or state of the world.
    pub delta: bool,
    /// When the stream opened.
    pub connected_since: SystemTime,
    /// Who its client certificate says it is.
    pub identity: PeerIdentity,
    /// What was sent to it and what it ACKed or NACKed, per resource type.
    pub types: PerType<TypeStatus>,
    /// The replica it is connected to, when not this one: the leader
    /// mirrors the other replicas' proxies (see `RemoteStream`) so that
    /// a flip waits for the whole fleet. `None`: connected here.
    pub replica: Option<String>,
    /// The stream ended and the proxy has not come back yet: it still
    /// counts, as not confirming anything newer, until a stream of the
    /// same node connects or the registry's reconnect hold passes (see
    /// `ProxyRegistry::set_reconnect_hold`). A proxy whose stream ended
    /// is not known to be gone: it may be reconnecting, to this replica or
    /// another, and a change it has not applied is not confirmed.
    pub disconnected: bool,
}

impl ProxyStatus {
    /// The state of one type.
    pub fn of(&self, ty: ResourceType) -> &TypeStatus {
        &self.types[ty]
    }

    /// The proxy group (`node.cluster`), if known.
    pub fn group(&self) -> Option<&str> {
        self.node.as_ref().map(|n| n.cluster.as_str())
    }
}

/// Something that wants every stream event as it happens (metrics).
pub(crate) trait EventSink: Send + Sync + std::fmt::Debug {
    /// Called once per event, from the stream's task; must not block.
    fn record(&self, event: &StreamEvent);
}

/// The hasher of maps keyed by stream id. Stream ids come from the
/// registry's own counter, never from a client, so they need none of the
/// flooding resistance of std's keyed SipHash, which was a visible share
/// of the instructions a flip spends following its ACKs. Maps keyed by
/// what a client sends (node ids) keep std's hasher.
pub(crate) type StreamIdHasher = foldhash::fast::FixedState;

/// A map keyed by stream id (see [`StreamIdHasher`]).
pub(crate) type StreamMap<V> = HashMap<u64, V, StreamIdHasher>;

/// What the registry's lock guards.
#[derive(Debug, Default)]
struct Inner {
    /// Shared with [`Changes`] handed out, and copied on the next write
    /// only if a reader still holds it, so [`ChangeFeed::take`] copies
    /// no status under the lock.
    streams: StreamMap<Arc<ProxyStatus>>,
    /// Per [`ChangeFeed`] (by slot; `None` once it is dropped), the streams
    /// that changed or went since it last took them.
    feeds: Vec<Option<HashSet<u64, StreamIdHasher>>>,
    /// The disconnected streams still counted (see
    /// [`ProxyStatus::disconnected`]), by node id: a new stream of the node
    /// ends them without a scan of every stream.
    lingering: HashMap<String, Vec<u64>>,
    /// This replica's connected streams that named their node, by node
    /// id: a load report stream checks that its node is connected here
    /// without a scan of every stream (10,000 proxies reconnecting would
    /// make that quadratic).
    connected: HashMap<String, Vec<u64>>,
}

impl Inner {
    fn changed(&mut self, id: u64) {
        for feed in self.feeds.iter_mut().flatten() {
            feed.insert(id);
        }
    }

    /// Removes the disconnected stream `id` of node `node`, if it is still
    /// held; whether it was.
    fn end_lingering(&mut self, node: &str, id: u64) -> bool {
        let Some(ids) = self.lingering.get_mut(node) else {
            return false;
        };
        let Some(at) = ids.iter().position(|s| *s == id) else {
            return false;
        };
        ids.swap_remove(at);
        if ids.is_empty() {
            self.lingering.remove(node);
        }
        self.streams.remove(&id);
        self.changed(id);
        true
    }

    /// Takes stream `id` of node `node` out of [`Inner::connected`].
    fn disconnect(&mut self, node: &str, id: u64) {
        if let Some(ids) = self.connected.get_mut(node) {
            ids.retain(|s| *s != id);
            if ids.is_empty() {
                self.connected.remove(node);
            }
        }
    }
}

/// One xDS stream a node has connected to this replica: what a load
/// report stream of the node is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct XdsPresence {
    /// The group it joined.
    pub(crate) group: String,
    /// Who its client certificate says it is.
    pub(crate) identity: PeerIdentity,
}

/// The registry of connected proxies.
#[derive(Debug)]
pub struct ProxyRegistry {
    streams: Mutex<Inner>,
    /// Told of every event, if set.
    sink: Option<Arc<dyn EventSink>>,
    next_id: AtomicU64,
    /// Bumped after every change, so waiters can sleep until something
    /// happens instead of polling.
    generation: watch::Sender<u64>,
    /// Proxies that operations do not wait for (see [`Cordons`]).
    cordons: Arc<Cordons>,
    /// Moved on by every [`ProxyRegistry::notify`].
    cordon_epoch: AtomicU64,
    /// How long a proxy whose stream ended still counts, in milliseconds
    /// (0: not at all); see [`ProxyRegistry::set_reconnect_hold`].
    reconnect_hold_ms: AtomicU64,
    /// What the proxies' load reports say (see [`LoadStore`]): kept
    /// beside the xDS state, so everything that sees the proxies sees
    /// their traffic too.
    loads: LoadStore,
}

impl Default for ProxyRegistry {
    fn default() -> Self {
        ProxyRegistry {
            streams: Mutex::new(Inner::default()),
            sink: None,
            next_id: AtomicU64::new(1),
            generation: watch::Sender::new(0),
            cordons: Arc::default(),
            cordon_epoch: AtomicU64::new(0),
            reconnect_hold_ms: AtomicU64::new(0),
            loads: LoadStore::default(),
        }
    }
}

impl ProxyRegistry {
    /// A new, empty registry.
    pub fn new() -> Arc<ProxyRegistry> {
        Arc::new(ProxyRegistry::default())
    }

    /// A new, empty registry telling `sink` of every event, with the
    /// cordons `cordons`.
    pub(crate) fn with_sink_and_cordons(
        sink: Arc<dyn EventSink>,
        cordons: Arc<Cordons>,
    ) -> Arc<ProxyRegistry> {
        Arc::new(ProxyRegistry {
            sink: Some(sink),
            cordons,
            ..ProxyRegistry::default()
        })
    }

    /// Keeps a proxy whose stream ends counted, as disconnected and not
    /// confirming anything newer, for up to `hold` or until a stream of
    /// the same node connects here (`--proxy-reconnect-hold`; zero: a
    /// proxy is forgotten as its stream ends). Without it, a change
    /// committed while proxies reconnect (an xDS connection's age, a
    /// replica closing its streams when it cannot reach etcd, a network
    /// blip) would be taken as confirmed by every proxy left, which may be
    /// none. The streams list ([`ProxyRegistry::proxies`]) and the count
    /// ([`ProxyRegistry::len`]) show connected streams only; the rollout's
    /// pass ([`ProxyRegistry::statuses`]) and the changes sees them all.
    pub(crate) fn set_reconnect_hold(&self, hold: Duration) {
        let ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX);
        self.reconnect_hold_ms.store(ms, Ordering::Relaxed);
    }

    pub(crate) fn cordons(&self) -> &Arc<Cordons> {
        &self.cordons
    }

    /// The proxies' load reports.
    pub(crate) fn loads(&self) -> &LoadStore {
        &self.loads
    }

    /// Wakes the registry's watchers, as a proxy's change would: after a
    /// cordon changes, running operations look at the proxies again.
    ///
    /// It also moves [`ProxyRegistry::cordon_epoch`] on, so that a reader
    /// following changes through a [`ChangeFeed`] (which sees no stream
    /// change here) knows to look at every proxy again.
    pub(crate) fn notify(&self) {
        self.cordon_epoch.fetch_add(1, Ordering::Release);
        self.bump();
    }

    /// How many times [`ProxyRegistry::notify`] was called: when it moved
    /// since a reader last looked at every proxy, the cordons may have
    /// changed which proxies count.
    pub(crate) fn cordon_epoch(&self) -> u64 {
        self.cordon_epoch.load(Ordering::Acquire)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Entries are replaced whole, so a panic elsewhere cannot leave
        // one half-written; a poisoned lock is safe to keep using.
        self.streams
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bump(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// Registers a new stream; it is removed when the handle drops.
    pub(crate) fn register(self: &Arc<Self>, kind: StreamKind, delta: bool) -> StreamHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.lock();
        inner.changed(id);
        inner.streams.insert(
            id,
            Arc::new(ProxyStatus {
                stream_id: id,
                node: None,
                kind,
                delta,
                connected_since: SystemTime::now(),
                identity: PeerIdentity::Unauthenticated,
                types: Default::default(),
                replica: None,
                disconnected: false,
            }),
        );
        drop(inner);
        self.bump();
        StreamHandle {
            registry: self.clone(),
            id,
            node_known: false,
            forget: false,
        }
    }

    /// Adds a proxy connected to another replica, as that replica last
    /// published it; it is given a stream id of this registry (the remote
    /// one is meaningless here) and removed when the handle drops. Readers
    /// see it as any other stream, so an operation waits for it.
    pub(crate) fn register_remote(self: &Arc<Self>, status: ProxyStatus) -> RemoteStream {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let handle = RemoteStream {
            registry: self.clone(),
            id,
        };
        handle.replace(status);
        handle
    }

    /// The xDS streams `node` has connected to this replica, not those
    /// that ended nor other replicas' (a proxy sends its load reports
    /// over its xDS connection, so to the same replica).
    pub(crate) fn connected_here(&self, node: &str) -> Vec<XdsPresence> {
        let inner = self.lock();
        let Some(ids) = inner.connected.get(node) else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| inner.streams.get(id))
            .filter_map(|p| {
                Some(XdsPresence {
                    group: p.node.as_ref()?.cluster.clone(),
                    identity: p.identity.clone(),
                })
            })
            .collect()
    }

    /// Every connected stream, ordered by node id and then stream id
    /// (disconnected ones still counted are left out).
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        let all = self.statuses();
        let mut all: Vec<ProxyStatus> = all
            .iter()
            .filter(|p| !p.disconnected)
            .map(|p| ProxyStatus::clone(p))
            .collect();
        // Keys borrowed, not cloned: a sort makes O(N log N) comparisons.
        all.sort_by(|a, b| {
            let (ka, kb) = (
                a.node.as_ref().map(|n| n.id.as_str()),
                b.node.as_ref().map(|n| n.id.as_str()),
            );
            ka.cmp(&kb).then(a.stream_id.cmp(&b.stream_id))
        });
        all
    }

    /// Every stream as the registry holds it, disconnected ones still
    /// counted included, shared and in no
    /// particular order: a whole pass over the fleet (the rollout's) at
    /// the cost of one reference count per stream instead of a copy of
    /// every status. Drop it soon: a stream's next event copies its
    /// status while a reader still holds it.
    pub fn statuses(&self) -> Vec<Arc<ProxyStatus>> {
        self.lock().streams.values().cloned().collect()
    }

    /// How many streams are connected (disconnected ones still counted,
    /// this replica's or mirrored, are left out, as in
    /// [`ProxyRegistry::proxies`]).
    pub fn len(&self) -> usize {
        self.lock()
            .streams
            .values()
            .filter(|p| !p.disconnected)
            .count()
    }

    /// Whether no stream is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many changes the registry has seen (see
    /// [`ProxyRegistry::watch`]): equal values mean no stream changed in
    /// between.
    pub(crate) fn generation(&self) -> u64 {
        *self.generation.borrow()
    }

    /// A receiver that changes whenever any proxy's state does.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// A feed of the streams that change from now on; see [`ChangeFeed`].
    pub(crate) fn feed(self: &Arc<Self>) -> ChangeFeed {
        let mut inner = self.lock();
        let slot = match inner.feeds.iter().position(Option::is_none) {
            Some(free) => free,
            None => {
                inner.feeds.push(None);
                inner.feeds.len() - 1
            }
        };
        inner.feeds[slot] = Some(HashSet::default());
        ChangeFeed {
            registry: self.clone(),
            slot,
        }
    }
}

/// The streams that changed since a [`ChangeFeed`] last looked.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Streams registered or updated, as they are now.
    pub(crate) changed: Vec<Arc<ProxyStatus>>,
    /// Streams that went away.
    pub(crate) gone: Vec<u64>,
}

impl Changes {
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.gone.is_empty()
    }
}

/// One reader's record of which streams changed since it last called
/// [`ChangeFeed::take`]. It holds at most one entry per stream that
/// changed (a stream id is never reused), so it stays bounded by the
/// number of streams that came and went between two takes. Pair it with
/// [`ProxyRegistry::watch`] to sleep until there is something to take.
#[derive(Debug)]
pub(crate) struct ChangeFeed {
    registry: Arc<ProxyRegistry>,
    slot: usize,
}

impl ChangeFeed {
    /// The streams that changed or went since the last call (or since the
    /// feed was made), each once, in stream id order.
    pub(crate) fn take(&self) -> Changes {
        let mut inner = self.registry.lock();
        let Some(ids) = inner.feeds.get_mut(self.slot).and_then(Option::as_mut) else {
            return Changes::default();
        };
        if ids.is_empty() {
            return Changes::default();
        }
        // Drained, so the set keeps its room for the next batch.
        let mut ids: Vec<u64> = ids.drain().collect();
        ids.sort_unstable();
        let mut changes = Changes::default();
        for id in ids {
            match inner.streams.get(&id) {
                Some(p) => changes.changed.push(p.clone()),
                None => changes.gone.push(id),
            }
        }
        changes
    }
}

impl Drop for ChangeFeed {
    fn drop(&mut self) {
        if let Some(slot) = self.registry.lock().feeds.get_mut(self.slot) {
            *slot = None;
        }
    }
}

/// A stream's registration; dropping it removes the stream.
#[derive(Debug)]
pub(crate) struct StreamHandle {
    registry: Arc<ProxyRegistry>,
    id: u64,
    node_known: bool,
    /// Closed for cause (see [`StreamHandle::forget`]): not held after it
    /// ends.
    forget: bool,
}

impl StreamHandle {
    /// The stream's registry id.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Marks the stream as closed for cause (its identity no longer
    /// admitted, a protocol error): when it ends, the proxy goes at once
    /// instead of counting as reconnecting, since teal itself turned it
    /// away.
    pub(crate) fn forget(&mut self) {
        self.forget = true;
    }

    /// Records the identity the stream's connection proved.
    pub(crate) fn set_identity(&self, identity: &PeerIdentity) {
        if !identity.is_authenticated() {
            return;
        }
        let mut inner = self.registry.lock();
        if let Some(p) = inner.streams.get_mut(&self.id) {
            Arc::make_mut(p).identity = identity.clone();
        }
        inner.changed(self.id);
        drop(inner);
        self.registry.bump();
    }

    /// Records the node once it is known.
    pub(crate) fn set_node(&mut self, node: Option<&NodeInfo>) {
        if self.node_known {
            return;
        }
        let Some(node) = node else { return };
        let mut inner = self.registry.lock();
        if let Some(p) = inner.streams.get_mut(&self.id) {
            Arc::make_mut(p).node = Some(node.clone());
        }
        inner.changed(self.id);
        inner
            .connected
            .entry(node.id.clone())
            .or_default()
            .push(self.id);
        // The node is back: its earlier streams no longer stand for it.
        if let Some(ids) = inner.lingering.remove(&node.id) {
            for id in ids {
                inner.streams.remove(&id);
                inner.changed(id);
            }
        }
        drop(inner);
        self.registry.bump();
        self.node_known = true;
        tracing::info!(stream = self.id, node = %node.id, group = %node.cluster, agent = %node.user_agent, "proxy connected");
        self.registry.bump();
    }

    /// Records what a stream did and logs it.
    pub(crate) fn record(&self, events: &[StreamEvent]) {
        if events.is_empty() {
            return;
        }
        let now = SystemTime::now();
        let mut inner = self.registry.lock();
        let Some(p) = inner.streams.get_mut(&self.id) else {
            return;
        };
        let p = Arc::make_mut(p);
        let node = p.node.as_ref().map(|n| n.id.as_str()).unwrap_or("");
        for event in events {
            if let Some(sink) = &self.registry.sink {
                sink.record(event);
            }
            match event {
                StreamEvent::Sent {
                    ty,
                    version,
                    nonce,
                    resources,
                } => {
                    let t = &mut p.types[*ty];
                    t.subscribed = true;
                    t.sent = Some(version.clone());
                    t.sent_at = Some(now);
                    tracing::debug!(stream = self.id, node, %ty, %version, %nonce, resources, "sent");
                }
                StreamEvent::Acked { ty, version } => {
                    let t = &mut p.types[*ty];
                    t.acked = Some(version.clone());
                    t.acked_at = Some(now);
                    tracing::debug!(stream = self.id, node, %ty, %version, "ACK");
                }
                StreamEvent::Nacked {
                    ty,
                    version,
                    message,
                } => {
                    p.types[*ty].nack = Some(Nack {
                        version: version.clone(),
                        message: message.clone(),
                        at: now,
                    });
                    tracing::warn!(stream = self.id, node, %ty, %version, %message, "NACK");
                }
                StreamEvent::StaleNonce { ty, nonce } => {
                    tracing::debug!(stream = self.id, node, %ty, %nonce, "stale nonce ignored");
                }
            }
        }
        inner.changed(self.id);
        drop(inner);
        self.registry.bump();
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        let hold = Duration::from_millis(self.registry.reconnect_hold_ms.load(Ordering::Relaxed));
        // The end of the hold is a timer task: without a runtime (a
        // registry used outside one) the stream goes at once.
        let runtime = tokio::runtime::Handle::try_current().ok();
        let mut inner = self.registry.lock();
        inner.changed(self.id);
        let node = inner
            .streams
            .get(&self.id)
            .and_then(|p| p.node.as_ref().map(|n| (n.id.clone(), n.cluster.clone())));
        if let Some((id, _)) = &node {
            inner.disconnect(id, self.id);
        }
        let held = match (&node, &runtime) {
            (Some((id, _)), Some(runtime)) if !hold.is_zero() && !self.forget => {
                if let Some(p) = inner.streams.get_mut(&self.id) {
                    Arc::make_mut(p).disconnected = true;
                }
                inner.lingering.entry(id.clone()).or_default().push(self.id);
                let registry = Arc::downgrade(&self.registry);
                let (node, stream) = (id.clone(), self.id);
                runtime.spawn(async move {
                    tokio::time::sleep(hold).await;
                    let Some(registry) = registry.upgrade() else {
                        return;
                    };
                    if registry.lock().end_lingering(&node, stream) {
                        tracing::info!(stream, node = %node, ?hold, "a disconnected proxy did not come back within --proxy-reconnect-hold: forgotten");
                        registry.bump();
                    }
                });
                true
            }
            _ => {
                inner.streams.remove(&self.id);
                false
            }
        };
        drop(inner);
        if let Some((id, group)) = node {
            if held {
                tracing::info!(stream = self.id, node = %id, group = %group, ?hold, "proxy disconnected; it counts as not confirming until it reconnects or the hold passes");
            } else {
                tracing::info!(stream = self.id, node = %id, group = %group, "proxy disconnected");
            }
        }
        self.registry.bump();
    }
}

/// A mirrored proxy of another replica ([`ProxyRegistry::register_remote`]);
/// dropping it removes the proxy.
#[derive(Debug)]
pub(crate) struct RemoteStream {
    registry: Arc<ProxyRegistry>,
    id: u64,
}

impl RemoteStream {
    /// The stream's id in this registry.
    #[cfg(test)]
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Replaces the proxy's status whole with what its replica published
    /// last (the stream id is kept); wakes the registry's watchers.
    pub(crate) fn replace(&self, mut status: ProxyStatus) {
        status.stream_id = self.id;
        let mut inner = self.registry.lock();
        if inner.streams.get(&self.id).is_some_and(|p| **p == status) {
            return;
        }
        inner.streams.insert(self.id, Arc::new(status));
        inner.changed(self.id);
        drop(inner);
        self.registry.bump();
    }
}

impl Drop for RemoteStream {
    fn drop(&mut self) {
        {
            let mut inner = self.registry.lock();
            inner.changed(self.id);
            inner.streams.remove(&self.id);
        }
        self.registry.bump();
    }
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
