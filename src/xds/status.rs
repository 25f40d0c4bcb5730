//! What teal knows of every connected proxy.
//!
//! Each stream registers itself and reports its [`StreamEvent`]s here; the
//! registry keeps, per stream and per type, the last version sent, the last
//! version ACKed and the last NACK with Envoy's message. Readers (the admin
//! API, the rollout, tests) take a consistent copy with
//! [`ProxyRegistry::proxies`] and can wait for the next change with
//! [`ProxyRegistry::watch`]. The lock is a plain mutex held for a map
//! update, never across an `.await`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use tokio::sync::watch;

use crate::cordon::Cordons;
use crate::identity::PeerIdentity;
use crate::resources::ResourceType;

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
    /// Per type, in [`ResourceType::ALL`] order.
    pub types: [TypeStatus; 4],
}

impl ProxyStatus {
    /// The state of one type.
    pub fn of(&self, ty: ResourceType) -> &TypeStatus {
        &self.types[ty.index()]
    }

    /// The proxy group (`node.cluster`), if known.
    pub fn group(&self) -> Option<&str> {
        self.node.as_ref().map(|n| n.cluster.as_str())
    }
}

/// Something that wants every stream event as it happens (metrics).
pub trait EventSink: Send + Sync + std::fmt::Debug {
    /// Called once per event, from the stream's task; must not block.
    fn record(&self, event: &StreamEvent);
}

/// The registry of connected proxies.
#[derive(Debug)]
pub struct ProxyRegistry {
    streams: Mutex<HashMap<u64, ProxyStatus>>,
    /// Told of every event, if set.
    sink: Option<Arc<dyn EventSink>>,
    next_id: AtomicU64,
    /// Bumped after every change, so waiters can sleep until something
    /// happens instead of polling.
    generation: watch::Sender<u64>,
    /// Proxies that operations do not wait for (see [`Cordons`]).
    cordons: Arc<Cordons>,
}

impl Default for ProxyRegistry {
    fn default() -> Self {
        ProxyRegistry {
            streams: Mutex::new(HashMap::new()),
            sink: None,
            next_id: AtomicU64::new(1),
            generation: watch::Sender::new(0),
            cordons: Arc::default(),
        }
    }
}

impl ProxyRegistry {
    /// A new, empty registry.
    pub fn new() -> Arc<ProxyRegistry> {
        Arc::new(ProxyRegistry::default())
    }

    /// A new, empty registry that also tells `sink` of every event.
    pub fn with_sink(sink: Arc<dyn EventSink>) -> Arc<ProxyRegistry> {
        Arc::new(ProxyRegistry {
            sink: Some(sink),
            ..ProxyRegistry::default()
        })
    }

    /// A new, empty registry telling `sink` of every event, with the
    /// cordons `cordons`.
    pub fn with_sink_and_cordons(
        sink: Arc<dyn EventSink>,
        cordons: Arc<Cordons>,
    ) -> Arc<ProxyRegistry> {
        Arc::new(ProxyRegistry {
            sink: Some(sink),
            cordons,
            ..ProxyRegistry::default()
        })
    }

    /// The cordoned proxies.
    pub fn cordons(&self) -> &Arc<Cordons> {
        &self.cordons
    }

    /// Wakes the registry's watchers, as a proxy's change would: after a
    /// cordon changes, running operations look at the proxies again.
    pub fn notify(&self) {
        self.bump();
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, ProxyStatus>> {
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
    pub fn register(self: &Arc<Self>, kind: StreamKind, delta: bool) -> StreamHandle {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(
            id,
            ProxyStatus {
                stream_id: id,
                node: None,
                kind,
                delta,
                connected_since: SystemTime::now(),
                identity: PeerIdentity::Unauthenticated,
                types: Default::default(),
            },
        );
        self.bump();
        StreamHandle {
            registry: self.clone(),
            id,
            node_known: false,
        }
    }

    /// Every connected stream, ordered by node id and then stream id.
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        let mut all: Vec<ProxyStatus> = self.lock().values().cloned().collect();
        all.sort_by(|a, b| {
            let key = |p: &ProxyStatus| p.node.as_ref().map(|n| n.id.clone());
            key(a).cmp(&key(b)).then(a.stream_id.cmp(&b.stream_id))
        });
        all
    }

    /// How many streams are connected.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no stream is connected.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A receiver that changes whenever any proxy's state does.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }
}

/// A stream's registration; dropping it removes the stream.
#[derive(Debug)]
pub struct StreamHandle {
    registry: Arc<ProxyRegistry>,
    id: u64,
    node_known: bool,
}

impl StreamHandle {
    /// The stream's registry id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Records the identity the stream's connection proved.
    pub fn set_identity(&self, identity: &PeerIdentity) {
        if !identity.is_authenticated() {
            return;
        }
        if let Some(p) = self.registry.lock().get_mut(&self.id) {
            p.identity = identity.clone();
        }
    }

    /// Records the node once it is known.
    pub fn set_node(&mut self, node: Option<&NodeInfo>) {
        if self.node_known {
            return;
        }
        let Some(node) = node else { return };
        if let Some(p) = self.registry.lock().get_mut(&self.id) {
            p.node = Some(node.clone());
        }
        self.node_known = true;
        tracing::info!(stream = self.id, node = %node.id, group = %node.cluster, agent = %node.user_agent, "proxy connected");
        self.registry.bump();
    }

    /// Records what a stream did and logs it.
    pub fn record(&self, events: &[StreamEvent]) {
        if events.is_empty() {
            return;
        }
        let now = SystemTime::now();
        let mut streams = self.registry.lock();
        let Some(p) = streams.get_mut(&self.id) else {
            return;
        };
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
                    let t = &mut p.types[ty.index()];
                    t.subscribed = true;
                    t.sent = Some(version.clone());
                    t.sent_at = Some(now);
                    tracing::debug!(stream = self.id, node, %ty, %version, %nonce, resources, "sent");
                }
                StreamEvent::Acked { ty, version } => {
                    let t = &mut p.types[ty.index()];
                    t.acked = Some(version.clone());
                    t.acked_at = Some(now);
                    tracing::debug!(stream = self.id, node, %ty, %version, "ACK");
                }
                StreamEvent::Nacked {
                    ty,
                    version,
                    message,
                } => {
                    p.types[ty.index()].nack = Some(Nack {
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
        drop(streams);
        self.registry.bump();
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        let removed = self.registry.lock().remove(&self.id);
        if let Some(node) = removed.and_then(|p| p.node) {
            tracing::info!(stream = self.id, node = %node.id, group = %node.cluster, "proxy disconnected");
        }
        self.registry.bump();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_update_status_and_drop_unregisters() {
        let reg = ProxyRegistry::new();
        let mut h = reg.register(StreamKind::Aggregated, false);
        let node = NodeInfo {
            id: "p1".into(),
            cluster: "edge".into(),
            user_agent: "envoy".into(),
        };
        h.set_node(Some(&node));
        let mut watch = reg.watch();
        watch.mark_unchanged();
        h.record(&[
            StreamEvent::Sent {
                ty: ResourceType::Route,
                version: "2".into(),
                nonce: "1".into(),
                resources: 1,
            },
            StreamEvent::Nacked {
                ty: ResourceType::Route,
                version: "2".into(),
                message: "bad".into(),
            },
        ]);
        assert!(watch.has_changed().expect("registry alive"));
        let all = reg.proxies();
        assert_eq!(all.len(), 1);
        let rds = all[0].of(ResourceType::Route);
        assert_eq!(rds.sent.as_deref(), Some("2"));
        assert_eq!(rds.acked, None);
        assert!(rds.last_was_nacked());
        assert_eq!(rds.nack.as_ref().map(|n| n.message.as_str()), Some("bad"));
        assert_eq!(all[0].group(), Some("edge"));
        drop(h);
        assert!(reg.is_empty());
    }
}
