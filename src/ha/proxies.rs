//! The fleet's ACK/NACK state across replicas, so that a flip through the
//! leader waits for every proxy of every replica.
//!
//! Each replica writes its proxies' xDS state into ONE key,
//! `PREFIX/proxies/ID`, under its lease: a batch per replica, rewritten
//! when its registry changes and at most once per [`PUBLISH_EVERY`],
//! whatever the number of proxies or versions (10,000 proxies ACKing a
//! version cost at most five writes a second, not 10,000 keys). The key
//! goes with the lease when the replica dies, so its proxies leave the
//! wait set; they join it again through the replica they reconnect to.
//!
//! The leader reads and watches every other replica's key and mirrors
//! those proxies into its own [`ProxyRegistry`] as remote streams
//! ([`ProxyRegistry::register_remote`]): the rollout's confirmation,
//! which follows the registry, waits for them and rolls back on their
//! NACK exactly as for its own proxies. When it stops leading, the mirror
//! is dropped whole.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::identity::PeerIdentity;
use crate::resources::ResourceType;
use crate::shutdown::Shutdown;
use crate::state::StateError;
use crate::state::etcd::{EtcdClient, pb};
use crate::xds::ProxyRegistry;
use crate::xds::protocol::{NodeInfo, StreamKind};
use crate::xds::status::{Nack, ProxyStatus, RemoteStream, TypeStatus};

use super::Role;

/// The shortest time between two writes of a replica's proxies.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(200);

/// How much of a NACK's message is published (Envoy's can be long; the
/// leader needs the version, and enough text for an operator to see why).
const MAX_NACK_MESSAGE_BYTES: usize = 512;

/// The most replica keys the leader reads at once.
const MAX_REPLICAS: i64 = 256;

/// How long the mirror waits before reading again after etcd failed.
const RETRY: Duration = Duration::from_secs(1);

/// One replica's proxies, as published.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct Published {
    /// The proxies.
    p: Vec<Proxy>,
}

/// One proxy stream, in short field names: this is written to etcd at
/// most five times a second per replica and must stay small.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Proxy {
    /// Stream id on its replica.
    s: u64,
    /// Node id, cluster (group) and user agent, once known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<(String, String, String)>,
    /// The one type of a per-type stream; `None`: ADS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<usize>,
    /// Delta.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    d: bool,
    /// Connected since, unix milliseconds.
    c: u64,
    /// Per type, in [`ResourceType::ALL`] order.
    t: [Type; 4],
}

/// One type of one proxy.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct Type {
    /// Subscribed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    u: bool,
    /// Sent version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<String>,
    /// ACKed version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    a: Option<String>,
    /// Last NACK: version and message (cut).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<(String, String)>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

impl Proxy {
    fn of(p: &ProxyStatus) -> Proxy {
        Proxy {
            s: p.stream_id,
            n: p.node
                .as_ref()
                .map(|n| (n.id.clone(), n.cluster.clone(), n.user_agent.clone())),
            k: match p.kind {
                StreamKind::Aggregated => None,
                StreamKind::Single(ty) => Some(ty.index()),
            },
            d: p.delta,
            c: unix_ms(p.connected_since),
            t: std::array::from_fn(|i| {
                let t = &p.types[i];
                Type {
                    u: t.subscribed,
                    s: t.sent.clone(),
                    a: t.acked.clone(),
                    n: t.nack
                        .as_ref()
                        .map(|n| (n.version.clone(), cut(&n.message, MAX_NACK_MESSAGE_BYTES))),
                }
            }),
        }
    }

    /// The status the leader shows and waits for; `None` if the kind is
    /// not a type teal knows.
    fn status(self, replica: &str) -> Option<ProxyStatus> {
        let kind = match self.k {
            None => StreamKind::Aggregated,
            Some(i) => StreamKind::Single(*ResourceType::ALL.get(i)?),
        };
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(self.c);
        Some(ProxyStatus {
            stream_id: self.s,
            node: self.n.map(|(id, cluster, user_agent)| NodeInfo {
                id,
                cluster,
                user_agent,
            }),
            kind,
            delta: self.d,
            connected_since: at,
            identity: PeerIdentity::Unauthenticated,
            types: self.t.map(|t| TypeStatus {
                subscribed: t.u,
                sent: t.s,
                sent_at: None,
                acked: t.a,
                acked_at: None,
                nack: t.n.map(|(version, message)| Nack {
                    version,
                    message,
                    at,
                }),
            }),
            replica: Some(replica.to_owned()),
        })
    }
}

/// This replica's own proxies (never the ones it mirrors), encoded.
fn encode(registry: &ProxyRegistry) -> Result<Vec<u8>, serde_json::Error> {
    let mut p: Vec<Proxy> = registry
        .statuses()
        .iter()
        .filter(|s| s.replica.is_none())
        .map(|s| Proxy::of(s))
        .collect();
    p.sort_by_key(|p| p.s);
    serde_json::to_vec(&Published { p })
}

/// Writes this replica's proxies to `PREFIX/proxies/ID` under `lease`
/// whenever the registry changes, at most once per [`PUBLISH_EVERY`], and
/// not when the value is what was last written; until the task is aborted
/// (when the lease's term ends).
pub(super) async fn publish(
    client: EtcdClient,
    lease: i64,
    id: String,
    registry: Arc<ProxyRegistry>,
) {
    let key = client.key(&format!("proxies/{id}"));
    let limit = client.options().max_value_bytes;
    let mut generation = registry.watch();
    let mut written: Option<Vec<u8>> = None;
    let mut warned = false;
    loop {
        generation.mark_unchanged();
        let mut failed = false;
        match encode(&registry) {
            Err(e) => tracing::warn!(error = %e, "cannot encode this replica's proxies"),
            Ok(value) if written.as_ref() == Some(&value) => {}
            Ok(value) if value.len() > limit => {
                if !warned {
                    tracing::warn!(
                        bytes = value.len(),
                        limit,
                        "this replica's proxies exceed the store's value limit (--store-max-value-bytes); not published, so the leader does not wait for them"
                    );
                    warned = true;
                }
            }
            Ok(value) => {
                let kv = client.kv();
                let put = pb::PutRequest {
                    key: key.clone(),
                    value: value.clone(),
                    lease,
                };
                match client
                    .call(put, |r| {
                        let mut kv = kv.clone();
                        async move { kv.put(r).await }
                    })
                    .await
                {
                    Ok(_) => {
                        written = Some(value);
                        warned = false;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot write this replica's proxies");
                        failed = true;
                    }
                }
            }
        }
        if failed {
            tokio::time::sleep(RETRY).await;
            continue;
        }
        if generation.changed().await.is_err() {
            return;
        }
        tokio::time::sleep(PUBLISH_EVERY).await;
    }
}

/// The other replicas' proxies, as mirrored into the registry.
#[derive(Debug, Default)]
struct Mirror {
    /// Per replica, per its stream id, the mirrored stream.
    replicas: HashMap<String, HashMap<u64, RemoteStream>>,
}

impl Mirror {
    /// Replaces `replica`'s proxies with `value`'s, whole; a value that does
    /// not decode is logged and leaves them as they were.
    fn apply(&mut self, registry: &Arc<ProxyRegistry>, replica: &str, value: &[u8], limit: usize) {
        if value.len() > limit {
            tracing::warn!(
                replica,
                bytes = value.len(),
                limit,
                "a replica's proxies exceed the store's value limit; ignored"
            );
            return;
        }
        let published: Published = match serde_json::from_slice(value) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(replica, error = %e, "cannot decode a replica's proxies; ignored");
                return;
            }
        };
        let Some(fresh) = published
            .p
            .into_iter()
            .map(|p| p.status(replica).map(|s| (s.stream_id, s)))
            .collect::<Option<HashMap<u64, ProxyStatus>>>()
        else {
            tracing::warn!(replica, "a replica's proxies name an unknown type; ignored");
            return;
        };
        let mut old = self.replicas.remove(replica).unwrap_or_default();
        let mut now = HashMap::with_capacity(fresh.len());
        for (stream, status) in fresh {
            let handle = match old.remove(&stream) {
                Some(h) => {
                    h.replace(status);
                    h
                }
                None => registry.register_remote(status),
            };
            now.insert(stream, handle);
        }
        // What is left in `old` went away; dropping it removes it.
        drop(old);
        if !now.is_empty() {
            self.replicas.insert(replica.to_owned(), now);
        }
    }
}

/// Waits until this replica leads (`lead`) or does not; false once the
/// election is gone.
async fn until(role: &mut watch::Receiver<Role>, lead: bool) -> bool {
    role.wait_for(|r| (*r == Role::Leader) == lead)
        .await
        .is_ok()
}

/// While this replica leads, mirrors the other replicas' proxies into
/// `registry`; drops the mirror when it stops leading. Runs until
/// shutdown.
pub(super) async fn mirror(
    client: EtcdClient,
    me: String,
    mut role: watch::Receiver<Role>,
    registry: Arc<ProxyRegistry>,
    mut shutdown: Shutdown,
) {
    loop {
        tokio::select! {
            () = shutdown.wait() => return,
            alive = until(&mut role, true) => if !alive { return },
        }
        let mut mirror = Mirror::default();
        loop {
            tokio::select! {
                () = shutdown.wait() => return,
                alive = until(&mut role, false) => {
                    if !alive {
                        return;
                    }
                    break;
                }
                e = follow(&client, &me, &registry, &mut mirror) => {
                    // The mirror is kept while etcd is away: its proxies
                    // are still connected to their replicas as far as
                    // anyone knows.
                    tracing::warn!(error = %e, "cannot follow the other replicas' proxies; reading again");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
        drop(mirror);
        tracing::info!("no longer leading: the other replicas' proxies are no longer mirrored");
    }
}

/// Reads every replica's proxies, then applies every change, until the
/// watch ends (an error, or a compaction to read through again).
async fn follow(
    client: &EtcdClient,
    me: &str,
    registry: &Arc<ProxyRegistry>,
    mirror: &mut Mirror,
) -> StateError {
    let prefix = client.key("proxies/");
    let mut end = prefix.clone();
    // The range of every key starting with the prefix: its last byte plus
    // one (the prefix ends in `/`, never 0xff).
    if let Some(last) = end.last_mut() {
        *last = last.saturating_add(1);
    }
    let limit = client.options().max_value_bytes;
    let replica_of = |key: &[u8]| -> Option<String> {
        let id = String::from_utf8_lossy(key.strip_prefix(prefix.as_slice())?).into_owned();
        (id != me).then_some(id)
    };
    let kv = client.kv();
    let answer = match client
        .call(
            pb::RangeRequest {
                key: prefix.clone(),
                range_end: end.clone(),
                limit: MAX_REPLICAS,
                ..Default::default()
            },
            |r| {
                let mut kv = kv.clone();
                async move { kv.range(r).await }
            },
        )
        .await
    {
        Ok(a) => a,
        Err(e) => return e,
    };
    let revision = answer.header.map_or(0, |h| h.revision);
    let mut present = Vec::new();
    for kv in &answer.kvs {
        if let Some(replica) = replica_of(&kv.key) {
            mirror.apply(registry, &replica, &kv.value, limit);
            present.push(replica);
        }
    }
    mirror.replicas.retain(|r, _| present.contains(r));
    let mut watch = match client
        .watch_range(prefix.clone(), end, revision.saturating_add(1), false)
        .await
    {
        Ok(w) => w,
        Err(e) => return e,
    };
    loop {
        let answer = match watch.answers.message().await {
            Ok(Some(a)) => a,
            Ok(None) => return client.unavailable("the proxies watch ended"),
            Err(s) => return client.status_error(s),
        };
        if answer.canceled {
            return client.unavailable(&format!(
                "the proxies watch was cancelled (compacted at {})",
                answer.compact_revision
            ));
        }
        for event in answer.events {
            let Some(kv) = event.kv else { continue };
            let Some(replica) = replica_of(&kv.key) else {
                continue;
            };
            match pb::event::EventType::try_from(event.r#type) {
                Ok(pb::event::EventType::Put) => mirror.apply(registry, &replica, &kv.value, limit),
                Ok(pb::event::EventType::Delete) => {
                    tracing::info!(replica = %replica, "a replica's proxies are gone (its lease ended)");
                    mirror.replicas.remove(&replica);
                }
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xds::protocol::StreamEvent;

    #[test]
    fn published_proxies_mirror_whole_and_leave_when_gone() {
        let far = ProxyRegistry::new();
        let mut h = far.register(StreamKind::Aggregated, true);
        h.set_node(Some(&NodeInfo {
            id: "p1".into(),
            cluster: "edge".into(),
            user_agent: "envoy".into(),
        }));
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
                message: "x".repeat(10_000),
            },
        ]);
        let value = encode(&far).expect("encodes");
        assert!(value.len() < 2_000, "compact: {} bytes", value.len());

        let leader = ProxyRegistry::new();
        let mut mirror = Mirror::default();
        mirror.apply(&leader, "b", &value, 1 << 20);
        let seen = leader.proxies();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].replica.as_deref(), Some("b"));
        assert_eq!(seen[0].group(), Some("edge"));
        assert!(seen[0].delta);
        assert!(seen[0].of(ResourceType::Route).last_was_nacked());
        assert_eq!(
            encode(&leader).expect("encodes"),
            br#"{"p":[]}"#,
            "mirrored proxies are never published again"
        );

        mirror.apply(&leader, "b", b"not json", 1 << 20);
        assert_eq!(leader.len(), 1, "a bad value changes nothing");
        mirror.apply(&leader, "b", &value, 10);
        assert_eq!(leader.len(), 1, "an oversized value changes nothing");

        drop(h);
        mirror.apply(&leader, "b", &encode(&far).expect("encodes"), 1 << 20);
        assert!(leader.is_empty(), "a proxy gone from the value is removed");
    }
}
