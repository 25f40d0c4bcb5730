//! Every replica's proxies' load reports, for the leader: an operation's
//! traffic analysis and a retirement's drain count the proxies of every
//! replica, not only the leader's own.
//!
//! # Publishing
//!
//! Each replica writes its own proxies' load ([`LoadStore::local`]) under
//! `PREFIX/loads/ID/NNNN`, parts of at most [`PART_BYTES`], under its
//! lease (so they go with it) and fenced on its `alive` key like its
//! proxies (a replica whose lease ended writes nothing). A round runs at
//! most once per [`publish_every`] (the report interval, and never more
//! than once a second), and only when a report arrived since the last:
//! counts are sums since each proxy's load stream opened, so a round
//! replaces the last whole and a lost round costs nothing but freshness.
//! A round writes at most [`ROUND_MAX_BYTES`]; the proxies past it are
//! not published, and the leader sees them as reporting nothing, which
//! never counts as drained and never weighs in a verdict.
//!
//! # Reading
//!
//! While it leads, a replica reads every other replica's parts as often
//! as they are written and hands them to its [`LoadStore`] as remote
//! loads ([`LoadStore::set_remote`]); a replica whose parts are gone is
//! dropped. It is a poll, not a watch: the parts change at every round
//! anyway, and a poll's cost does not depend on how many rounds came
//! between two reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::shutdown::Shutdown;
use crate::state::StateError;
use crate::state::etcd::{EtcdClient, Fence, pb};
use crate::xds::ProxyRegistry;
use crate::xds::load::{ClusterCounters, ProxyLoad};

use super::proxies::{alive_key, delete, range_end};
use super::role::Role;

/// A part closes once it holds this many bytes.
pub(crate) const PART_BYTES: usize = 256 << 10;

/// The most bytes one round writes (and the leader reads per replica).
pub(crate) const ROUND_MAX_BYTES: usize = 8 << 20;

/// Parts per transaction: under etcd's default request limit (1.5 MiB).
const PARTS_PER_TXN: usize = 4;

/// The longest node id or group published: longer ones are not published
/// (the proxy then reports nothing as the leader sees it).
const MAX_NAME_BYTES: usize = 1024;

/// How often a round may run, for a report interval of `interval`.
pub(crate) fn publish_every(interval: Duration) -> Duration {
    interval.max(Duration::from_secs(1))
}

/// One part: a table of the cluster and group names its records use, and
/// the records.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq)]
struct Part {
    s: Vec<String>,
    p: Vec<Record>,
}

/// One proxy: node id, group (index), reports taken, and per cluster
/// (index): requests, errors, in progress, idle reports in a row.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Record(String, u32, u64, Vec<(u32, u64, u64, u64, u32)>);

#[derive(Default)]
struct PartBuilder {
    part: Part,
    index: HashMap<String, u32>,
    bytes: usize,
}

impl PartBuilder {
    fn string(&mut self, s: &str) -> u32 {
        if let Some(&i) = self.index.get(s) {
            return i;
        }
        // A part holds a few hundred strings at most, far under u32::MAX.
        let i = u32::try_from(self.part.s.len()).unwrap_or(u32::MAX);
        self.bytes += s.len() + 3;
        self.part.s.push(s.to_owned());
        self.index.insert(s.to_owned(), i);
        i
    }

    fn add(&mut self, p: &ProxyLoad) {
        let group = self.string(&p.group);
        let clusters = p
            .clusters
            .iter()
            .map(|(c, n)| {
                (
                    self.string(c),
                    n.requests,
                    n.errors,
                    n.in_progress,
                    n.idle_reports,
                )
            })
            .collect::<Vec<_>>();
        // Ids are published as JSON strings: escapes can grow them.
        self.bytes += p.node.len() * 2 + 32 + clusters.len() * 64;
        self.part
            .p
            .push(Record(p.node.to_string(), group, p.reports, clusters));
    }
}

/// `loads` as parts of about [`PART_BYTES`], at most [`ROUND_MAX_BYTES`]
/// in all; and how many proxies were left out.
fn encode(loads: &[ProxyLoad]) -> (Vec<Vec<u8>>, usize) {
    let mut parts = Vec::new();
    let mut total = 0;
    let mut left_out = 0;
    let mut building = PartBuilder::default();
    for p in loads {
        if p.node.len() > MAX_NAME_BYTES || p.group.len() > MAX_NAME_BYTES {
            left_out += 1;
            continue;
        }
        if total + building.bytes >= ROUND_MAX_BYTES {
            left_out += 1;
            continue;
        }
        building.add(p);
        if building.bytes >= PART_BYTES {
            let part = std::mem::take(&mut building);
            total += part.bytes;
            parts.extend(serde_json::to_vec(&part.part).ok());
        }
    }
    if !building.part.p.is_empty() {
        parts.extend(serde_json::to_vec(&building.part).ok());
    }
    (parts, left_out)
}

/// Decodes a part of a replica's loads; `None` when it does not decode
/// whole.
fn decode(replica: &str, value: &[u8], now: Instant) -> Option<Vec<ProxyLoad>> {
    if value.len() > PART_BYTES * 2 {
        return None;
    }
    let part: Part = serde_json::from_slice(value).ok()?;
    let s = |i: u32| part.s.get(usize::try_from(i).ok()?).cloned();
    part.p
        .into_iter()
        .map(|Record(node, group, reports, clusters)| {
            let clusters = clusters
                .into_iter()
                .map(|(c, requests, errors, in_progress, idle_reports)| {
                    Some((
                        s(c)?,
                        ClusterCounters {
                            requests,
                            errors,
                            in_progress,
                            idle_reports,
                        },
                    ))
                })
                .collect::<Option<BTreeMap<_, _>>>()?;
            Some(ProxyLoad {
                node: Arc::from(node.as_str()),
                group: s(group)?,
                replica: Some(replica.to_owned()),
                reports,
                last_report: (reports > 0).then_some(now),
                clusters: Arc::new(clusters),
            })
        })
        .collect()
}

fn part_key(client: &EtcdClient, id: &str, n: usize) -> Vec<u8> {
    client.key(&format!("loads/{id}/{n:06}"))
}

/// The transactions that replace replica `id`'s parts with `parts`, each
/// fenced on its `alive` key's lease; the last deletes the parts past
/// them.
fn transactions(
    client: &EtcdClient,
    id: &str,
    lease: i64,
    parts: Vec<Vec<u8>>,
) -> Vec<pb::TxnRequest> {
    let fence = || vec![Fence::compare(&alive_key(client, id), lease)];
    let count = parts.len();
    let mut txns = Vec::new();
    let mut ops = Vec::new();
    for (n, value) in parts.into_iter().enumerate() {
        ops.push(pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                key: part_key(client, id, n),
                value,
                lease,
            })),
        });
        if ops.len() == PARTS_PER_TXN {
            txns.push(pb::TxnRequest {
                compare: fence(),
                success: std::mem::take(&mut ops),
                failure: Vec::new(),
            });
        }
    }
    ops.push(delete(
        part_key(client, id, count),
        range_end(&client.key(&format!("loads/{id}/"))),
    ));
    txns.push(pb::TxnRequest {
        compare: fence(),
        success: ops,
        failure: Vec::new(),
    });
    txns
}

/// Writes this replica's proxies' load under `lease` (see the module
/// docs), until the task is aborted (when the lease's term ends).
pub(super) async fn publish(
    client: EtcdClient,
    lease: i64,
    id: String,
    registry: Arc<ProxyRegistry>,
) {
    let loads = registry.loads();
    let mut generation = loads.watch();
    let mut warned = false;
    loop {
        let every = publish_every(loads.interval());
        tokio::time::sleep(every).await;
        if generation.has_changed().is_err() {
            return;
        }
        if !generation.has_changed().unwrap_or(false) {
            continue;
        }
        generation.mark_unchanged();
        let (parts, left_out) = encode(&loads.local());
        if left_out > 0 && !warned {
            warned = true;
            tracing::warn!(
                left_out,
                "some proxies' load cannot be published; the leader sees them as reporting nothing"
            );
        }
        for txn in transactions(&client, &id, lease, parts) {
            match client.txn(txn).await {
                Ok(answer) if answer.succeeded => {}
                Ok(_) => {
                    tracing::debug!("cannot write this replica's loads: its lease ended");
                    // Written again at the next round.
                    generation.mark_changed();
                    break;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "cannot write this replica's loads; retrying");
                    generation.mark_changed();
                    break;
                }
            }
        }
    }
}

/// Reads every other replica's loads into `registry`'s load store while
/// `role` says this replica leads; drops them when it stops leading.
pub(super) async fn mirror(
    client: EtcdClient,
    me: String,
    registry: Arc<ProxyRegistry>,
    mut role: watch::Receiver<Role>,
    mut shutdown: Shutdown,
) {
    let loads = registry.loads();
    let mut held: BTreeSet<String> = BTreeSet::new();
    loop {
        let leading = *role.borrow_and_update() == Role::Leader;
        if !leading {
            for replica in std::mem::take(&mut held) {
                loads.set_remote(&replica, None, Instant::now());
            }
            tokio::select! {
                () = shutdown.wait() => return,
                changed = role.changed() => if changed.is_err() { return },
            }
            continue;
        }
        match read(&client, &me).await {
            Ok(by_replica) => {
                for gone in held.iter().filter(|r| !by_replica.contains_key(*r)) {
                    loads.set_remote(gone, None, Instant::now());
                }
                held = by_replica.keys().cloned().collect();
                for (replica, proxies) in by_replica {
                    loads.set_remote(&replica, Some(proxies), Instant::now());
                }
            }
            // What was read last stays: those proxies' reports are as old
            // as the partition, and still theirs.
            Err(e) => tracing::debug!(error = %e, "cannot read the other replicas' loads"),
        }
        tokio::select! {
            () = shutdown.wait() => return,
            changed = role.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(publish_every(loads.interval())) => {}
        }
    }
}

/// Every other replica's published loads, by replica.
async fn read(
    client: &EtcdClient,
    me: &str,
) -> Result<BTreeMap<String, Vec<ProxyLoad>>, StateError> {
    let prefix = client.key("loads/");
    let end = range_end(&prefix);
    let page =
        i64::try_from((client.options().max_value_bytes / (PART_BYTES * 2)).max(1)).unwrap_or(1);
    let kv = client.kv();
    let now = Instant::now();
    let mut from = prefix.clone();
    let mut revision = 0;
    let mut by_replica: BTreeMap<String, Vec<ProxyLoad>> = BTreeMap::new();
    let mut bytes: HashMap<String, usize> = HashMap::new();
    loop {
        let answer = client
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
            .await?;
        if revision == 0 {
            revision = answer.header.map_or(0, |h| h.revision);
        }
        for kv in &answer.kvs {
            let Some(rest) = kv.key.strip_prefix(prefix.as_slice()) else {
                continue;
            };
            let Some((replica, _)) = std::str::from_utf8(rest)
                .ok()
                .and_then(|r| r.split_once('/'))
            else {
                continue;
            };
            if replica == me {
                continue;
            }
            let read = bytes.entry(replica.to_owned()).or_default();
            *read += kv.value.len();
            if *read > ROUND_MAX_BYTES * 2 {
                continue;
            }
            if let Some(proxies) = decode(replica, &kv.value, now) {
                by_replica
                    .entry(replica.to_owned())
                    .or_default()
                    .extend(proxies);
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
    Ok(by_replica)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(node: &str, in_progress: u64) -> ProxyLoad {
        ProxyLoad {
            node: Arc::from(node),
            group: "web".into(),
            replica: None,
            reports: 3,
            last_report: Some(Instant::now()),
            clusters: Arc::new(BTreeMap::from([(
                "api-blue".to_owned(),
                ClusterCounters {
                    requests: 10,
                    errors: 1,
                    in_progress,
                    idle_reports: 2,
                },
            )])),
        }
    }

    #[test]
    fn loads_round_trip_through_parts() {
        let loads: Vec<ProxyLoad> = (0..5000)
            .map(|i| load(&format!("edge-{i:05}"), i % 3))
            .collect();
        let (parts, left_out) = encode(&loads);
        assert_eq!(left_out, 0);
        assert!(parts.len() > 1, "5,000 proxies take more than one part");
        assert!(parts.iter().all(|p| p.len() <= PART_BYTES * 2));
        let now = Instant::now();
        let back: Vec<ProxyLoad> = parts
            .iter()
            .flat_map(|p| decode("r2", p, now).expect("decodes"))
            .collect();
        assert_eq!(back.len(), loads.len());
        assert_eq!(back[7].clusters, loads[7].clusters);
        assert_eq!(back[7].replica.as_deref(), Some("r2"));
    }

    #[test]
    fn a_round_is_bounded_and_says_what_it_left_out() {
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let mut loads: Vec<ProxyLoad> = (0..200_000)
            .map(|i| load(&format!("edge-{i:07}"), 0))
            .collect();
        loads.push(load(&long, 0));
        let (parts, left_out) = encode(&loads);
        let bytes: usize = parts.iter().map(Vec::len).sum();
        assert!(bytes <= ROUND_MAX_BYTES + PART_BYTES * 2, "{bytes} bytes");
        assert!(
            left_out > 1,
            "the long id and the proxies past the bound are left out"
        );
    }

    #[test]
    fn a_corrupt_part_decodes_to_nothing() {
        assert!(decode("r2", b"{\"s\":[],\"p\":[[\"a\",9,1,[]]]}", Instant::now()).is_none());
        assert!(decode("r2", b"not json", Instant::now()).is_none());
    }
}
