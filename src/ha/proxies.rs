//! The fleet's ACK/NACK state across replicas, so that a flip through the
//! leader waits for every proxy of every replica.
//!
//! # Publishing
//!
//! Each replica publishes its own proxies' xDS state. The keys outlive
//! the replica's lease on purpose: a replica whose lease ended may still
//! hold connected proxies (it is paused, or it has not closed its streams
//! yet), so the leader never takes them as absent just because the lease
//! went (see *Departed replicas* below):
//!
//! - `PREFIX/proxies/ID/alive`: written under the replica's lease at the
//!   start of each term (after the keys of its last term are cleared), so
//!   it is there exactly while the replica holds a lease. Every other
//!   write of the replica compares this key's lease with its own, so a
//!   replica whose lease ended cannot publish anything.
//! - `PREFIX/proxies/ID/c/SLOT.PART.GEN`: a **part**, the proxies whose
//!   stream id divided by [`SLOT_PROXIES`] is `SLOT`, cut into parts of
//!   about [`PART_TARGET_BYTES`]. A part names every string it uses (node
//!   ids, groups, user agents, versions) once, in a table, and its
//!   records refer to them by index: nearly every proxy holds the same
//!   versions, so a record costs about 100 bytes. A part is never
//!   rewritten: new content gets a new `GEN` (the round's number).
//! - `PREFIX/proxies/ID/m`: the **manifest**: the names of the parts that
//!   make up the replica's proxies now, how many proxies they hold, and
//!   the replica's groups.
//!
//! A round runs when the registry changed, at most once per
//! [`PUBLISH_EVERY`] and at most [`PUBLISH_BYTES_PER_SEC`] on average
//! (a big round waits longer for the next), and writes only the slots
//! whose content changed:
//! their new parts first, then, in the transaction carrying the last of
//! them, the manifest, with the deletion of the parts it no longer names.
//! Transactions hold at most [`TXN_MAX_BYTES`] and [`TXN_MAX_OPS`], under
//! etcd's defaults (1.5 MiB, 128 operations). A round where every proxy
//! changed (a flip's push or ACK wave) at 10,000 proxies writes 40 parts
//! of about 30 KiB: two transactions, two etcd revisions, not 10,000
//! keys. Nothing is written while nothing changes.
//!
//! So **every etcd revision shows a complete set**: the manifest names only
//! parts that exist (they are written before it or with it, and deleted
//! only with or after the manifest that stops naming them).
//!
//! # Bounds, and what is never done
//!
//! One record is at most [`RECORD_MAX_BYTES`] whatever the proxy sends:
//! node fields are bounded by `--max-node-field-bytes` (at most 16 KiB),
//! versions and NACK messages are cut here; a unit test proves the bound
//! with the worst strings. A part is at most `PART_TARGET_BYTES` plus one
//! record, so every proxy can always be published. Should a record still
//! not fit ([`VALUE_MAX_BYTES`]), the manifest counts it as *unpublished*.
//!
//! The leader never confirms a flip without a replica's proxies: it
//! mirrors a replica only from a complete set (a manifest, every part it
//! names present and decoded, the counts matching, nothing unpublished).
//! While a replica's set is incomplete (a part missing or corrupt, a write
//! that failed half-way and is being retried, proxies unpublished) the
//! leader keeps the last complete set it mirrored, whose proxies have not
//! ACKed anything newer, so a flip waits for them; with no complete set
//! ever seen, it registers one placeholder proxy per group the manifest
//! lists ("unpublished proxies of replica ID"), which never ACKs: a flip
//! of those groups waits and ends unconfirmed rather than confirmed.
//!
//! # Mirroring
//!
//! The leader reads every other replica's keys (at one revision) and then
//! watches them, mirroring those proxies into its own [`ProxyRegistry`]
//! as remote streams ([`ProxyRegistry::register_remote`]): the rollout's
//! confirmation, which follows the registry, waits for them and rolls
//! back on their NACK exactly as for its own proxies. A replica that wins
//! the election says it leads only after that first read (see
//! `mirror`). When it stops leading, the mirror is dropped whole.
//!
//! # Departed replicas
//!
//! When a replica's `alive` key goes (its lease ended), its published
//! proxies stay mirrored as they were last published: they confirm
//! nothing newer, so a flip waits for them and names them if it ends
//! unconfirmed. A replica that loses etcd closes its streams within half
//! its lease (see [`super::serving_bound`]), so its proxies reconnect to
//! another replica; the leader drops a departed replica's proxy as soon
//! as a proxy of the same node id is connected to this replica or to a
//! live one, and drops the rest after `--departed-proxy-hold` (a proxy
//! that never reconnects anywhere is taken as gone then, with a warning).
//! Once none is left, the leader deletes the departed replica's keys, in
//! a transaction fenced on its own leadership.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::shutdown::Shutdown;
use crate::state::StateError;
use crate::state::etcd::{EtcdClient, Fence, pb};
use crate::transport::identity::PeerIdentity;
use crate::xds::ProxyRegistry;
use crate::xds::protocol::{NodeInfo, StreamKind};
use crate::xds::resources::{PerType, ResourceType};
use crate::xds::status::{Nack, ProxyStatus, RemoteStream, TypeStatus};

use super::role::Role;

/// The shortest time between two rounds of a replica's writes; also how
/// long a change waits for others to join it after a quiet spell (a flip's
/// sends, then its ACKs, arrive in bursts).
pub(crate) const PUBLISH_EVERY: Duration = Duration::from_millis(20);

/// What a replica writes to etcd per second at most, on average: after a
/// round of `B` bytes the next waits at least `B / PUBLISH_BYTES_PER_SEC`.
/// A small fleet's rounds (a few KiB) follow each other every
/// [`PUBLISH_EVERY`], so a flip through the leader waits little for the
/// followers' ACKs; 10,000 proxies changing at once (about 1 MiB) wait
/// about 250 ms before the next round, which keeps etcd's write load the
/// same whatever the fleet's size.
pub(crate) const PUBLISH_BYTES_PER_SEC: u64 = 4 << 20;

/// How long to wait after a round of `bytes` before the next.
fn pause_after(bytes: usize) -> Duration {
    let by_bytes = Duration::from_secs_f64(bytes as f64 / PUBLISH_BYTES_PER_SEC as f64);
    by_bytes.max(PUBLISH_EVERY)
}

/// Proxies per slot (by stream id): a proxy's change rewrites its slot's
/// parts only.
pub(crate) const SLOT_PROXIES: u64 = 256;

/// A part is closed once it holds this many bytes.
pub(crate) const PART_TARGET_BYTES: usize = 128 << 10;

/// The most one proxy's record (with the strings it adds to its part's
/// table) encodes to; proved by `a_record_is_bounded_whatever_the_proxy_sends`.
pub(crate) const RECORD_MAX_BYTES: usize = 512 << 10;

/// The largest part or manifest written or read: a part closes past
/// [`PART_TARGET_BYTES`], so it holds at most that plus one record.
pub(crate) const VALUE_MAX_BYTES: usize = PART_TARGET_BYTES + RECORD_MAX_BYTES + (4 << 10);

/// The most bytes of values in one transaction (etcd refuses requests
/// over 1.5 MiB by default); a transaction holds at least one part.
pub(crate) const TXN_MAX_BYTES: usize = 1 << 20;

/// The most operations in one transaction (etcd's default `--max-txn-ops`
/// is 128).
pub(crate) const TXN_MAX_OPS: usize = 100;

/// Bytes of group names a manifest lists (a group name is at most 16 KiB).
const MANIFEST_GROUP_BYTES: usize = 64 << 10;

/// The most parts the leader holds for one replica (16,384 proxies, the
/// default connection limit, fill 64 slots).
const MAX_PARTS_PER_REPLICA: usize = 4096;

/// How much of a NACK's message is published (Envoy's can be long; the
/// leader needs the version, and enough text for an operator to see why).
const MAX_NACK_MESSAGE_BYTES: usize = 512;

/// How much of a version is published: teal's versions are far shorter,
/// so a cut one (from a proxy's NACK) never equals one teal serves.
const MAX_VERSION_BYTES: usize = 128;

/// The most replicas the leader mirrors.
const MAX_REPLICAS: usize = 256;

/// How long the mirror waits before reading again after etcd failed, and
/// the publisher before retrying a round.
const RETRY: Duration = Duration::from_secs(1);

/// How often the leader looks whether a departed replica's proxies have
/// reconnected elsewhere.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// One part: a string table and the records that index it.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct Part {
    s: Vec<String>,
    p: Vec<Record>,
}

/// One proxy stream, as a JSON array: stream id on its replica; node id,
/// group and user agent (indexes); its one type (`None`: ADS); flags (bit
/// 0: delta; bit 1: disconnected, still counted until it reconnects, see
/// [`ProxyStatus::disconnected`]); connected since (unix ms); per type in
/// [`ResourceType::ALL`] order, `None` when nothing is known.
///
/// The disconnected bit rides in the byte that was only delta's so that
/// replicas of a version before it still read the record: they take any
/// non-zero byte as delta and count the proxy as connected and not
/// confirming, which keeps a flip waiting, never the other way round.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Record(
    u64,
    Option<[u32; 3]>,
    Option<u8>,
    u8,
    u64,
    PerType<Option<TypeRecord>>,
);

/// One type of one proxy: subscribed (0 or 1), sent version, ACKed
/// version, last NACK (version, message); strings as indexes.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct TypeRecord(u8, Option<u32>, Option<u32>, Option<(u32, u32)>);

/// What makes up one replica's proxies now.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
struct Manifest {
    /// Part names.
    c: Vec<String>,
    /// Proxies held by the listed parts.
    n: u64,
    /// Proxies this replica holds but could not publish.
    #[serde(default)]
    u: u64,
    /// The groups of its proxies (cut at [`MANIFEST_GROUP_BYTES`]).
    #[serde(default)]
    g: Vec<String>,
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

/// `s` cut to at most `max` bytes, on a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// A part being built.
#[derive(Default)]
struct PartBuilder {
    part: Part,
    index: HashMap<String, u32>,
    bytes: usize,
}

impl PartBuilder {
    /// The index of `s`, added to the table if new; counts its bytes.
    fn string(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        // The part holds fewer strings than records times 16, far under
        // u32::MAX (a part holds at most one record past its target).
        let i = u32::try_from(self.part.s.len()).unwrap_or(u32::MAX);
        self.bytes += serde_json::to_string(s).map_or(s.len() * 6 + 2, |j| j.len()) + 1;
        self.part.s.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }

    fn add(&mut self, p: &ProxyStatus) {
        let node = p.node.as_ref().map(|n| {
            [
                self.string(&n.id),
                self.string(&n.cluster),
                self.string(&n.user_agent),
            ]
        });
        let types = p.types.each_ref().map(|t| {
            if *t == TypeStatus::default() {
                return None;
            }
            Some(TypeRecord(
                u8::from(t.subscribed),
                t.sent
                    .as_deref()
                    .map(|v| self.string(cut(v, MAX_VERSION_BYTES))),
                t.acked
                    .as_deref()
                    .map(|v| self.string(cut(v, MAX_VERSION_BYTES))),
                t.nack.as_ref().map(|n| {
                    (
                        self.string(cut(&n.version, MAX_VERSION_BYTES)),
                        self.string(cut(&n.message, MAX_NACK_MESSAGE_BYTES)),
                    )
                }),
            ))
        });
        let record = Record(
            p.stream_id,
            node,
            match p.kind {
                StreamKind::Aggregated => None,
                StreamKind::Single(ty) => u8::try_from(ty.index()).ok(),
            },
            u8::from(p.delta) | (u8::from(p.disconnected) << 1),
            unix_ms(p.connected_since),
            types,
        );
        self.bytes += serde_json::to_vec(&record).map_or(0, |v| v.len()) + 1;
        self.part.p.push(record);
    }
}

/// `proxies` (one slot's, by stream id) as parts of about
/// [`PART_TARGET_BYTES`]; and how many proxies could not be encoded
/// within [`VALUE_MAX_BYTES`].
fn encode_slot(proxies: &[&ProxyStatus]) -> (Vec<Vec<u8>>, u64) {
    let mut parts = Vec::new();
    let mut unpublished = 0;
    let mut building = PartBuilder::default();
    for p in proxies {
        building.add(p);
        if building.bytes >= PART_TARGET_BYTES {
            close(std::mem::take(&mut building), &mut parts, &mut unpublished);
        }
    }
    if !building.part.p.is_empty() {
        close(building, &mut parts, &mut unpublished);
    }
    (parts, unpublished)
}

fn close(part: PartBuilder, parts: &mut Vec<Vec<u8>>, unpublished: &mut u64) {
    match serde_json::to_vec(&part.part) {
        Ok(v) if v.len() <= VALUE_MAX_BYTES => parts.push(v),
        Ok(_) | Err(_) => {
            // Not possible with the record bound (see the module doc);
            // counted so that the leader does not confirm without them.
            *unpublished += part.part.p.len() as u64;
            tracing::error!(
                proxies = part.part.p.len(),
                "some proxies' state cannot be published; the leader will not confirm flips of their groups"
            );
        }
    }
}

/// One round of writes.
#[derive(Debug, Default)]
struct Round {
    /// New parts: name and value.
    puts: Vec<(String, Vec<u8>)>,
    manifest: Vec<u8>,
    /// Parts no longer named.
    deletes: Vec<String>,
    /// Per slot, its parts (name, value) once the round is written.
    slots: BTreeMap<u64, Vec<(String, Vec<u8>)>>,
}

impl Round {
    /// Bytes the round writes (values; keys are short).
    fn bytes(&self) -> usize {
        self.manifest.len() + self.puts.iter().map(|(_, v)| v.len()).sum::<usize>()
    }
}

/// What a replica last wrote.
#[derive(Debug, Default)]
struct Publisher {
    /// Rounds so far (a part's `GEN`).
    round: u64,
    /// Per slot, its parts as last written.
    slots: BTreeMap<u64, Vec<(String, Vec<u8>)>>,
    /// Part names written and not known deleted.
    live: BTreeSet<String>,
    /// The manifest last written.
    manifest: Option<Vec<u8>>,
}

impl Publisher {
    /// The writes that bring etcd to `proxies` (this replica's own);
    /// `None` when it already holds them.
    fn round(&mut self, proxies: &[Arc<ProxyStatus>]) -> Option<Round> {
        self.round += 1;
        let mut by_slot: BTreeMap<u64, Vec<&ProxyStatus>> = BTreeMap::new();
        let mut groups = BTreeSet::new();
        for p in proxies.iter().filter(|p| p.replica.is_none()) {
            by_slot
                .entry(p.stream_id / SLOT_PROXIES)
                .or_default()
                .push(p);
            if let Some(g) = p.group() {
                groups.insert(g);
            }
        }
        let mut round = Round::default();
        let mut manifest = Manifest::default();
        for (slot, mut members) in by_slot {
            members.sort_by_key(|p| p.stream_id);
            let (values, unpublished) = encode_slot(&members);
            manifest.u += unpublished;
            manifest.n += members.len() as u64 - unpublished;
            let same = self.slots.get(&slot).is_some_and(|old| {
                old.len() == values.len() && old.iter().zip(&values).all(|((_, a), b)| a == b)
            });
            let parts = if same {
                self.slots.get(&slot).cloned().unwrap_or_default()
            } else {
                values
                    .into_iter()
                    .enumerate()
                    .map(|(i, v)| {
                        let name = format!("{slot}.{i}.{}", self.round);
                        round.puts.push((name.clone(), v.clone()));
                        (name, v)
                    })
                    .collect()
            };
            manifest.c.extend(parts.iter().map(|(n, _)| n.clone()));
            round.slots.insert(slot, parts);
        }
        let mut group_bytes = 0;
        for g in groups {
            group_bytes += g.len();
            if group_bytes > MANIFEST_GROUP_BYTES {
                tracing::warn!("this replica's proxies are in too many groups to list them all");
                break;
            }
            manifest.g.push(g.to_owned());
        }
        round.manifest = serde_json::to_vec(&manifest).unwrap_or_default();
        let named: BTreeSet<&String> = manifest.c.iter().collect();
        round.deletes = self
            .live
            .iter()
            .filter(|n| !named.contains(n))
            .cloned()
            .collect();
        if round.puts.is_empty()
            && round.deletes.is_empty()
            && self.manifest.as_ref() == Some(&round.manifest)
        {
            return None;
        }
        Some(round)
    }

    /// Records that `round`'s puts may exist (before writing it: a round
    /// that fails half-way leaves parts the next manifest must delete).
    fn writing(&mut self, round: &Round) {
        self.live
            .extend(round.puts.iter().map(|(name, _)| name.clone()));
    }

    /// Records that `round` was written whole.
    fn written(&mut self, round: Round) {
        self.writing(&round);
        for name in &round.deletes {
            self.live.remove(name);
        }
        self.slots = round.slots;
        self.manifest = Some(round.manifest);
    }
}

/// `round`'s transactions, in the order they must be applied: the parts,
/// then the manifest (with the last parts when they fit), then the
/// deletions (with the manifest when they fit).
fn transactions(client: &EtcdClient, id: &str, lease: i64, round: &Round) -> Vec<pb::TxnRequest> {
    // Not under the lease: the keys outlive it (see the module doc).
    let put = |key: Vec<u8>, value: Vec<u8>| pb::RequestOp {
        request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
            key,
            value,
            lease: 0,
        })),
    };
    let alive = alive_key(client, id);
    let part_key = |name: &str| client.key(&format!("proxies/{id}/c/{name}"));
    let mut txns: Vec<Vec<pb::RequestOp>> = vec![Vec::new()];
    let mut bytes = 0;
    let mut add = |txns: &mut Vec<Vec<pb::RequestOp>>, op: pb::RequestOp, size: usize| {
        let full = txns.last().is_some_and(|t| {
            !t.is_empty() && (bytes + size > TXN_MAX_BYTES || t.len() >= TXN_MAX_OPS)
        });
        if full {
            txns.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(t) = txns.last_mut() {
            t.push(op);
        }
    };
    for (name, value) in &round.puts {
        add(
            &mut txns,
            put(part_key(name), value.clone()),
            value.len() + 64,
        );
    }
    add(
        &mut txns,
        put(
            client.key(&format!("proxies/{id}/m")),
            round.manifest.clone(),
        ),
        round.manifest.len() + 64,
    );
    for name in &round.deletes {
        add(&mut txns, delete(part_key(name), Vec::new()), 64);
    }
    txns.into_iter()
        .map(|success| pb::TxnRequest {
            compare: vec![Fence::compare(&alive, lease)],
            success,
            failure: Vec::new(),
        })
        .collect()
}

/// The key that says `id` holds a lease.
pub(super) fn alive_key(client: &EtcdClient, id: &str) -> Vec<u8> {
    client.key(&format!("proxies/{id}/alive"))
}

/// The range end of every key starting with `prefix` (which ends in `/`,
/// never 0xff: its last byte plus one).
pub(super) fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    if let Some(last) = end.last_mut() {
        *last = last.saturating_add(1);
    }
    end
}

/// Deletes `key` (with a `range_end`, every key from it up to that).
pub(super) fn delete(key: Vec<u8>, range_end: Vec<u8>) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(pb::request_op::Request::RequestDeleteRange(
            pb::DeleteRangeRequest { key, range_end },
        )),
    }
}

/// Deletes what replica `id` published (its manifest and parts), not its
/// `alive` key.
fn unpublish(client: &EtcdClient, id: &str) -> [pb::RequestOp; 2] {
    let parts = client.key(&format!("proxies/{id}/c/"));
    [
        delete(client.key(&format!("proxies/{id}/m")), Vec::new()),
        delete(parts.clone(), range_end(&parts)),
    ]
}

/// The start of a term: the keys of this replica's earlier terms go (a
/// new publisher knows nothing of them) and `alive` is written under the
/// new lease, in one transaction.
fn begin_term(client: &EtcdClient, id: &str, lease: i64) -> pb::TxnRequest {
    let [manifest, parts] = unpublish(client, id);
    pb::TxnRequest {
        compare: Vec::new(),
        success: vec![
            manifest,
            parts,
            pb::RequestOp {
                request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                    key: alive_key(client, id),
                    value: Vec::new(),
                    lease,
                })),
            },
        ],
        failure: Vec::new(),
    }
}

/// Writes this replica's proxies under `lease` whenever the registry
/// changes, paced by [`pause_after`], only what changed; until
/// the task is aborted (when the lease's term ends).
pub(super) async fn publish(
    client: EtcdClient,
    lease: i64,
    id: String,
    registry: Arc<ProxyRegistry>,
) {
    let mut generation = registry.watch();
    let mut publisher = Publisher::default();
    loop {
        let begun = client.txn(begin_term(&client, &id, lease)).await;
        match begun {
            Ok(_) => break,
            Err(e) => {
                tracing::debug!(error = %e, "cannot start publishing this replica's proxies; retrying");
                tokio::time::sleep(RETRY).await;
            }
        }
    }
    loop {
        generation.mark_unchanged();
        let started = tokio::time::Instant::now();
        let mut failed = false;
        let mut bytes = 0;
        if let Some(round) = publisher.round(&registry.statuses()) {
            bytes = round.bytes();
            publisher.writing(&round);
            for txn in transactions(&client, &id, lease, &round) {
                let written = client.txn(txn).await;
                let error = match written {
                    Ok(answer) if answer.succeeded => continue,
                    Ok(_) => "this replica's lease ended (its alive key is gone)".to_owned(),
                    Err(e) => e.to_string(),
                };
                // The leader keeps this replica's last complete set (it
                // waits for those proxies) until a round succeeds.
                tracing::debug!(%error, "cannot write this replica's proxies; retrying");
                failed = true;
                break;
            }
            if !failed {
                publisher.written(round);
            }
        }
        if failed {
            tokio::time::sleep(RETRY).await;
            continue;
        }
        // Paced from the round's start; after a quiet spell a change
        // still waits `PUBLISH_EVERY` for the rest of its burst.
        let next = started + pause_after(bytes);
        if generation.changed().await.is_err() {
            return;
        }
        tokio::time::sleep_until(next.max(tokio::time::Instant::now() + PUBLISH_EVERY)).await;
    }
}

/// Withdraws this replica's published proxies as it stops: its streams
/// are closed (or closing) because of the stop, so its proxies are known
/// to be gone from it, and the leader stops waiting for them here (they
/// count again on the replica they reconnect to). Fenced on its lease;
/// the `alive` key goes when the lease is revoked.
pub(super) async fn withdraw(client: &EtcdClient, id: &str, lease: i64) {
    let txn = pb::TxnRequest {
        compare: vec![Fence::compare(&alive_key(client, id), lease)],
        success: unpublish(client, id).to_vec(),
        failure: Vec::new(),
    };
    if let Err(e) = client.txn(txn).await {
        tracing::warn!(error = %e, "cannot withdraw this replica's proxies as it stops; \
            the leader waits for them until they reconnect elsewhere");
    }
}

/// A published part, decoded into statuses (`None`: it did not decode).
type Decoded = Option<Vec<ProxyStatus>>;

/// Decodes a part of `replica`; `None` if it does not decode whole.
fn decode_part(replica: &str, value: &[u8]) -> Decoded {
    if value.len() > VALUE_MAX_BYTES {
        return None;
    }
    let part: Part = serde_json::from_slice(value).ok()?;
    let s = |i: u32| part.s.get(usize::try_from(i).ok()?).cloned();
    part.p
        .iter()
        .map(|Record(stream, node, kind, delta, connected, types)| {
            let at = SystemTime::UNIX_EPOCH + Duration::from_millis(*connected);
            let node = match node {
                Some([id, cluster, ua]) => Some(NodeInfo {
                    id: s(*id)?,
                    cluster: s(*cluster)?,
                    user_agent: s(*ua)?,
                }),
                None => None,
            };
            let kind = match kind {
                None => StreamKind::Aggregated,
                Some(i) => StreamKind::Single(*ResourceType::ALL.get(usize::from(*i))?),
            };
            let mut out: PerType<TypeStatus> = Default::default();
            for (ty, t) in types.iter() {
                let Some(TypeRecord(subscribed, sent, acked, nack)) = t else {
                    continue;
                };
                out[ty] = TypeStatus {
                    subscribed: *subscribed != 0,
                    sent: sent.map(s).map_or(Some(None), |v| v.map(Some))?,
                    sent_at: None,
                    acked: acked.map(s).map_or(Some(None), |v| v.map(Some))?,
                    acked_at: None,
                    nack: match nack {
                        Some((v, m)) => Some(Nack {
                            version: s(*v)?,
                            message: s(*m)?,
                            at,
                        }),
                        None => None,
                    },
                };
            }
            Some(ProxyStatus {
                stream_id: *stream,
                node,
                kind,
                delta: *delta & 1 != 0,
                connected_since: at,
                identity: PeerIdentity::Unauthenticated,
                types: out,
                replica: Some(replica.to_owned()),
                disconnected: *delta & 2 != 0,
            })
        })
        .collect()
}

/// A stand-in for proxies of `replica` in `group` the leader cannot see:
/// subscribed to everything, ACKing nothing, so a flip of the group waits.
fn placeholder(replica: &str, group: &str) -> ProxyStatus {
    let subscribed = TypeStatus {
        subscribed: true,
        ..Default::default()
    };
    ProxyStatus {
        stream_id: 0,
        node: Some(NodeInfo {
            id: format!("(unpublished proxies of replica {replica} in {group})"),
            cluster: group.to_owned(),
            user_agent: String::new(),
        }),
        kind: StreamKind::Aggregated,
        delta: false,
        connected_since: SystemTime::now(),
        identity: PeerIdentity::Unauthenticated,
        types: PerType::from_fn(|_| subscribed.clone()),
        replica: Some(replica.to_owned()),
        disconnected: false,
    }
}

/// One other replica, as read from etcd and mirrored.
#[derive(Debug, Default)]
struct Far {
    /// Its manifest (`Some(None)`: present but not decoding).
    manifest: Option<Option<Manifest>>,
    /// Its parts, by name.
    parts: HashMap<String, Decoded>,
    /// Mirrored streams, by stream id on that replica.
    streams: HashMap<u64, RemoteStream>,
    /// Whether `streams` come from a complete set.
    mirrored: bool,
    /// Placeholders while no complete set was ever seen.
    placeholders: Vec<RemoteStream>,
    /// Whether the current set was reported incomplete.
    warned: bool,
    /// Whether its `alive` key is there.
    alive: bool,
    /// Whether its manifest was written under a lease: a replica of an
    /// earlier teal, whose keys go with its lease (alive while they are).
    leased: bool,
    /// Since when its lease is known to have ended, with keys left.
    departed_since: Option<tokio::time::Instant>,
    /// The node id of each mirrored stream (by stream id on that replica).
    nodes: HashMap<u64, String>,
    /// Streams of a departed replica dropped because their node showed up
    /// elsewhere: not mirrored again from its keys.
    resolved: BTreeSet<u64>,
    /// Whether a departed replica's hold ran out: nothing of it is
    /// mirrored any more; its keys are being deleted.
    expired: bool,
}

impl Far {
    /// Whether the replica holds a lease.
    fn is_alive(&self) -> bool {
        self.alive || self.leased
    }
}

/// The other replicas' proxies, as mirrored into the registry.
#[derive(Debug, Default)]
struct Mirror {
    replicas: HashMap<String, Far>,
}

/// One change to a replica's keys.
enum Change<'a> {
    /// A value, and the lease it was written under.
    Put(&'a [u8], i64),
    Delete,
}

impl Mirror {
    /// Applies a change to `replica`'s key `name` (`m` or `c/PART`); call
    /// [`Mirror::settle`] once a revision's changes are applied.
    fn change(&mut self, replica: &str, name: &str, change: Change<'_>) {
        if !self.replicas.contains_key(replica) && self.replicas.len() >= MAX_REPLICAS {
            tracing::warn!(replica, "too many replicas to mirror; ignored");
            return;
        }
        let far = self.replicas.entry(replica.to_owned()).or_default();
        match (name, change) {
            ("alive", Change::Put(..)) => far.alive = true,
            ("alive", Change::Delete) => far.alive = false,
            ("m", Change::Put(v, lease)) => {
                far.leased = lease != 0;
                far.manifest = Some(if v.len() <= VALUE_MAX_BYTES {
                    serde_json::from_slice(v).ok()
                } else {
                    None
                });
            }
            ("m", Change::Delete) => {
                far.manifest = None;
                far.leased = false;
            }
            (part, change) => {
                let Some(part) = part.strip_prefix("c/") else {
                    return;
                };
                match change {
                    Change::Put(v, _) => {
                        if far.parts.len() >= MAX_PARTS_PER_REPLICA && !far.parts.contains_key(part)
                        {
                            tracing::warn!(replica, "too many parts for one replica; ignored");
                            return;
                        }
                        far.parts.insert(part.to_owned(), decode_part(replica, v));
                    }
                    Change::Delete => {
                        far.parts.remove(part);
                    }
                }
            }
        }
    }

    /// Mirrors `replica` into `registry` from its keys: its proxies when
    /// they form a complete set; otherwise the last complete set stays, or
    /// placeholders stand in for them; nothing once its keys are gone.
    fn settle(&mut self, registry: &Arc<ProxyRegistry>, replica: &str) {
        let Some(far) = self.replicas.get_mut(replica) else {
            return;
        };
        if far.manifest.is_none() && far.parts.is_empty() {
            if far.alive {
                // A new term cleared its keys; its first round follows.
                // Until then its last set stands.
                return;
            }
            tracing::info!(replica, "a replica's proxies are gone");
            self.replicas.remove(replica);
            return;
        }
        if far.is_alive() {
            far.departed_since = None;
            far.resolved.clear();
            far.expired = false;
        } else if far.departed_since.is_none() {
            far.departed_since = Some(tokio::time::Instant::now());
            tracing::warn!(
                replica,
                proxies = far.streams.len(),
                "a replica's lease ended: its proxies count as not confirmed until they \
                 show up on another replica (or --departed-proxy-hold passes)"
            );
        }
        if far.expired {
            return;
        }
        // Parts written before their manifest: nothing to mirror yet.
        let Some(manifest) = &far.manifest else {
            return;
        };
        let complete = manifest.as_ref().and_then(|m| {
            if m.u > 0 {
                return None;
            }
            let mut all = Vec::with_capacity(usize::try_from(m.n).unwrap_or(0));
            for name in &m.c {
                all.extend(far.parts.get(name)?.as_ref()?.iter().cloned());
            }
            (all.len() as u64 == m.n).then_some(all)
        });
        let Some(proxies) = complete else {
            if !far.warned {
                tracing::warn!(
                    replica,
                    "a replica's published proxies are incomplete; the leader waits for its last complete set (or for placeholders of its groups)"
                );
                far.warned = true;
            }
            let unpublished = manifest.as_ref().is_some_and(|m| m.u > 0);
            if (!far.mirrored || unpublished) && far.placeholders.is_empty() {
                let groups = manifest
                    .as_ref()
                    .map(|m| m.g.as_slice())
                    .unwrap_or_default();
                far.placeholders = groups
                    .iter()
                    .map(|g| registry.register_remote(placeholder(replica, g)))
                    .collect();
            }
            return;
        };
        far.warned = false;
        far.mirrored = true;
        far.placeholders.clear();
        let mut old = std::mem::take(&mut far.streams);
        far.nodes.clear();
        for status in proxies {
            let stream = status.stream_id;
            if far.resolved.contains(&stream) {
                continue;
            }
            if let Some(node) = &status.node {
                far.nodes.insert(stream, node.id.clone());
            }
            let handle = match old.remove(&stream) {
                Some(h) => {
                    h.replace(status);
                    h
                }
                None => registry.register_remote(status),
            };
            far.streams.insert(stream, handle);
        }
        // What is left in `old` went away; dropping it removes it.
        drop(old);
    }

    /// Drops the proxies of departed replicas that are connected again
    /// (a stream of the same node id on this replica or on a live one),
    /// and every proxy of those whose hold ran out; returns the departed
    /// replicas with nothing left, whose keys can go.
    fn sweep(
        &mut self,
        connected: &[Arc<ProxyStatus>],
        hold: Duration,
        now: tokio::time::Instant,
    ) -> Vec<String> {
        if self.replicas.values().all(|f| f.departed_since.is_none()) {
            return Vec::new();
        }
        let live: BTreeSet<&str> = self
            .replicas
            .iter()
            .filter(|(_, f)| f.is_alive())
            .map(|(r, _)| r.as_str())
            .collect();
        let here: BTreeSet<&str> = connected
            .iter()
            .filter(|p| !p.disconnected)
            .filter(|p| p.replica.as_deref().is_none_or(|r| live.contains(r)))
            .filter_map(|p| p.node.as_ref().map(|n| n.id.as_str()))
            .collect();
        let mut empty = Vec::new();
        for (replica, far) in &mut self.replicas {
            let Some(since) = far.departed_since else {
                continue;
            };
            if now >= since + hold {
                if !far.expired {
                    tracing::warn!(
                        replica = %replica,
                        proxies = far.streams.len() + far.placeholders.len(),
                        ?hold,
                        "a departed replica's proxies did not show up on another replica \
                         within --departed-proxy-hold: taken as gone"
                    );
                }
                far.expired = true;
                far.streams.clear();
                far.placeholders.clear();
            } else {
                let back: Vec<u64> = far
                    .streams
                    .keys()
                    .filter(|s| far.nodes.get(s).is_some_and(|n| here.contains(n.as_str())))
                    .copied()
                    .collect();
                for stream in back {
                    far.streams.remove(&stream);
                    far.resolved.insert(stream);
                }
            }
            if far.streams.is_empty() && far.placeholders.is_empty() {
                empty.push(replica.clone());
            }
        }
        empty
    }
}

/// Deletes the keys of `replica`, a departed replica with no proxy left:
/// only while this replica leads under `lease` and `replica` has no
/// lease (its `alive` key is absent), in one transaction.
async fn forget(client: &EtcdClient, replica: &str, lease: i64) -> Result<bool, StateError> {
    let prefix = client.key(&format!("proxies/{replica}/"));
    let txn = pb::TxnRequest {
        compare: vec![
            Fence::compare(&client.key("leader"), lease),
            pb::Compare {
                result: pb::compare::CompareResult::Equal as i32,
                target: pb::compare::CompareTarget::Create as i32,
                key: alive_key(client, replica),
                target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
            },
        ],
        success: vec![delete(prefix.clone(), range_end(&prefix))],
        failure: Vec::new(),
    };
    let answer = client.txn(txn).await?;
    Ok(answer.succeeded)
}

/// What the mirror works with.
pub(super) struct MirrorParts {
    pub(super) client: EtcdClient,
    /// This replica's id (its own keys are not mirrored).
    pub(super) me: String,
    /// Where the other replicas' proxies are mirrored; `None`: no proxies
    /// (nothing to read before leading).
    pub(super) registry: Option<Arc<ProxyRegistry>>,
    /// The lease this replica leads under, for deleting departed keys.
    pub(super) fence: Fence,
    /// `--departed-proxy-hold`.
    pub(super) hold: Duration,
}

/// Passes the election's role (`won`) on to operations (`ready`), except
/// that a replica that won says it leads only once it has read every
/// other replica's proxies into the registry, which it then mirrors for
/// as long as it leads. Runs until shutdown.
pub(super) async fn mirror(
    parts: MirrorParts,
    mut won: watch::Receiver<Role>,
    ready: watch::Sender<Role>,
    mut shutdown: Shutdown,
) {
    let say = |role: Role| {
        ready.send_if_modified(|cur| {
            let changed = *cur != role;
            *cur = role;
            changed
        });
    };
    loop {
        let role = won.borrow_and_update().clone();
        let registry = match (&role, &parts.registry) {
            (Role::Leader, Some(registry)) => registry,
            (Role::Leader, None) | (Role::Follower { .. } | Role::Unknown, _) => {
                say(role);
                tokio::select! {
                    () = shutdown.wait() => return,
                    changed = won.changed() => if changed.is_err() { return },
                }
                continue;
            }
        };
        // Won again after a change: whatever led in between, operations
        // stop until this replica has read the proxies again.
        say(Role::Unknown);
        let mut mirror = Mirror::default();
        loop {
            tokio::select! {
                () = shutdown.wait() => return,
                // Any change means the role left `Leader` at some point:
                // read again from the top.
                changed = won.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    break;
                }
                e = follow(&parts, registry, &mut mirror, &say) => {
                    // The mirror is kept while etcd is away: its proxies
                    // are still connected to their replicas as far as
                    // anyone knows.
                    tracing::warn!(error = %e, "cannot follow the other replicas' proxies; reading again");
                    tokio::time::sleep(RETRY).await;
                }
            }
        }
        say(Role::Unknown);
        drop(mirror);
        tracing::info!("leadership changed: the other replicas' proxies are no longer mirrored");
    }
}

/// The replica and the key's name under it (`m` or `c/PART`), for a key
/// under `prefix`; `None` for this replica's keys and unknown ones.
fn split_key<'k>(prefix: &[u8], me: &str, key: &'k [u8]) -> Option<(&'k str, &'k str)> {
    let rest = std::str::from_utf8(key.strip_prefix(prefix)?).ok()?;
    let (replica, name) = rest.split_once('/')?;
    (replica != me).then_some((replica, name))
}

/// Reads every replica's keys at one revision, then applies every change,
/// until the watch ends (an error, or a compaction to read through again).
async fn follow(
    parts: &MirrorParts,
    registry: &Arc<ProxyRegistry>,
    mirror: &mut Mirror,
    ready: &impl Fn(Role),
) -> StateError {
    let (client, me) = (&parts.client, parts.me.as_str());
    let prefix = client.key("proxies/");
    let end = range_end(&prefix);
    // Pages small enough for the client's decoding limit.
    let page =
        i64::try_from((client.options().max_value_bytes / VALUE_MAX_BYTES).max(1)).unwrap_or(1);
    let kv = client.kv();
    let mut from = prefix.clone();
    let mut revision = 0;
    let mut fresh = Mirror::default();
    loop {
        let answer = match client
            .call(
                pb::RangeRequest {
                    key: from.clone(),
                    range_end: end.clone(),
                    limit: page,
                    revision,
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
        if revision == 0 {
            revision = answer.header.map_or(0, |h| h.revision);
        }
        for kv in &answer.kvs {
            if let Some((replica, name)) = split_key(&prefix, me, &kv.key) {
                fresh.change(replica, name, Change::Put(&kv.value, kv.lease));
            }
        }
        match answer.kvs.last() {
            Some(last) if answer.more => {
                from = last.key.clone();
                from.push(0);
            }
            _ => break,
        }
    }
    // The keys as read replace those held; the mirrored streams are kept
    // (and updated in place) for the replicas still there.
    for (replica, far) in &mut fresh.replicas {
        if let Some(old) = mirror.replicas.get_mut(replica) {
            far.streams = std::mem::take(&mut old.streams);
            far.placeholders = std::mem::take(&mut old.placeholders);
            far.mirrored = old.mirrored;
            far.departed_since = old.departed_since;
            far.resolved = std::mem::take(&mut old.resolved);
            far.expired = old.expired;
        }
    }
    mirror.replicas = fresh.replicas;
    let names: Vec<String> = mirror.replicas.keys().cloned().collect();
    for replica in &names {
        mirror.settle(registry, replica);
    }
    // Every replica's proxies are in the registry: operations may start.
    ready(Role::Leader);
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watch = match client
        .watch_range(prefix.clone(), end, revision.saturating_add(1), false)
        .await
    {
        Ok(w) => w,
        Err(e) => return e,
    };
    loop {
        let message = tokio::select! {
            m = watch.answers.message() => m,
            now = sweep.tick() => {
                let empty = mirror.sweep(&registry.statuses(), parts.hold, now);
                if let Some(lease) = parts.fence.lease() {
                    for replica in empty {
                        match forget(client, &replica, lease).await {
                            Ok(true) => tracing::info!(replica = %replica,
                                "a departed replica has no proxy left; its keys are deleted"),
                            Ok(false) => {}
                            Err(e) => return e,
                        }
                    }
                }
                continue;
            }
        };
        let answer = match message {
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
        // etcd sends a revision's events in one answer: settle after each.
        let mut touched = BTreeSet::new();
        for event in answer.events {
            let Some(kv) = event.kv else { continue };
            let Some((replica, name)) = split_key(&prefix, me, &kv.key) else {
                continue;
            };
            let change = match pb::event::EventType::try_from(event.r#type) {
                Ok(pb::event::EventType::Put) => Change::Put(&kv.value, kv.lease),
                Ok(pb::event::EventType::Delete) => Change::Delete,
                Err(_) => continue,
            };
            mirror.change(replica, name, change);
            touched.insert(replica.to_owned());
        }
        for replica in &touched {
            mirror.settle(registry, replica);
        }
    }
}

#[cfg(test)]
#[path = "proxies_tests.rs"]
mod tests;
