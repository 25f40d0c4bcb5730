//! A follower's proxies are published in parts however many there are:
//! 3,000 streams (12 slots) are mirrored whole by the leader from parts
//! each far under etcd's request limit, and a flip through the leader
//! counts every one of them and waits for the one that holds its ACK.
//! (`TEST_PROXIES=N` runs another count; `TEST_LOG=1` shows teal's log.)

use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use teal::rollout::{Outcome, Progress, RolloutError};
use teal::serve::Running;
use teal::state::etcd::{EtcdClient, pb};
use tokio::sync::watch;

use crate::support;
use crate::support::etcd::Etcd;
use crate::support::replica::{self, InProcessReplica};

/// Generous: thousands of streams start at once in a debug build.
const LEASE: Duration = Duration::from_secs(10);

async fn flip(
    replica: &InProcessReplica,
    to: &str,
) -> Result<watch::Receiver<Progress>, RolloutError> {
    replica.flip(to, Duration::from_secs(120)).await
}

async fn outcome(progress: watch::Receiver<Progress>) -> Outcome {
    replica::outcome(progress, Duration::from_secs(180)).await
}

/// An ADS proxy that ACKs while `ack` is true and holds its answers
/// otherwise.
async fn held_proxy(port: u16, ack: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    let (tx, mut stream) = support::ads_subscribed_to_all(port, "held-proxy").await;
    tokio::spawn(async move {
        let mut ack = ack;
        while let Ok(Some(response)) = stream.message().await {
            if ack.wait_for(|a| *a).await.is_err() {
                return;
            }
            let request = DiscoveryRequest {
                version_info: response.version_info,
                type_url: response.type_url,
                response_nonce: response.nonce,
                ..Default::default()
            };
            if tx.send(request).await.is_err() {
                return;
            }
        }
    })
}

/// Waits (up to `secs`) until `check` holds of the leader.
async fn until(leader: &InProcessReplica, secs: u64, what: &str, check: impl Fn(&Running) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !check(&leader.running) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "after {secs} s, still not {what}; the leader sees {} proxies, {} of them acked",
            leader.running.registry.len(),
            leader
                .running
                .registry
                .statuses()
                .iter()
                .filter(|p| p.types.values().all(|t| !t.subscribed || t.acked.is_some()))
                .count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every key under `prefix` and its value's size.
async fn keys(etcd: &Etcd, prefix: &str) -> Vec<(String, usize)> {
    let client = EtcdClient::new(etcd.options(prefix)).expect("client");
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let kv = client.kv();
    let answer = client
        .call(
            pb::RangeRequest {
                key: prefix.as_bytes().to_vec(),
                range_end: end,
                ..Default::default()
            },
            |r| {
                let mut kv = kv.clone();
                async move { kv.range(r).await }
            },
        )
        .await
        .expect("range");
    answer
        .kvs
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                kv.value.len(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_a_followers_proxies_are_mirrored_and_waited_for() {
    let _alone = support::alone().await;
    let etcd = Etcd::start().await;
    let a = InProcessReplica::start(&etcd, "/scale/", LEASE).await;
    let b = InProcessReplica::start(&etcd, "/scale/", LEASE).await;
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("teal=debug")
            .try_init();
    }
    // In one debug process with two threads, far more streams starve the
    // replicas' lease keep-alives on a loaded machine.
    let proxies: usize = std::env::var("TEST_PROXIES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3_000);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (leader, follower) = 'elected: loop {
        for first in [true, false] {
            let r = if first { &a } else { &b };
            if let Ok(progress) = flip(r, "green").await {
                assert_eq!(outcome(progress).await, Outcome::Succeeded);
                break 'elected if first { (a, b) } else { (b, a) };
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let port = follower.running.xds_addr.port();
    let (seen, _seen) = tokio::sync::mpsc::unbounded_channel();
    let _sims = support::ads::connect(&[port], proxies, 0, 50, "edge", "public", seen)
        .await
        .expect("connect");
    let (ack, acks) = watch::channel(true);
    let _held = held_proxy(port, acks).await;
    until(&leader, 240, "mirroring every proxy of the follower", |r| {
        let all = r.registry.statuses();
        all.iter().filter(|p| p.replica.is_some()).count() == proxies + 1
            && all
                .iter()
                .all(|p| p.types.values().all(|t| !t.subscribed || t.acked.is_some()))
    })
    .await;

    // In parts, each far under etcd's request limit.
    let published = keys(&etcd, "/scale/proxies/").await;
    let parts: Vec<_> = published
        .iter()
        .filter(|(k, _)| k.contains("/c/"))
        .collect();
    assert!(parts.len() >= proxies / 256, "{published:?}");
    assert!(
        parts.iter().all(|(_, bytes)| *bytes < 256 << 10),
        "{published:?}"
    );
    let total: usize = parts.iter().map(|(_, b)| b).sum();
    assert!(total > proxies * 50, "{total} bytes for {proxies} proxies");

    // One proxy holds its ACK: the flip waits for it, then confirms.
    ack.send_replace(false);
    let progress = flip(&leader, "blue").await.expect("the leader flips");
    tokio::time::sleep(Duration::from_secs(3)).await;
    {
        let now = progress.borrow();
        assert_eq!(
            now.outcome, None,
            "the flip ended without the follower's held proxy"
        );
        // The leader's own group has no proxy: every one counted is the
        // follower's.
        assert_eq!(now.total, proxies + 1, "the flip waits for every proxy");
        assert!(
            now.waiting_for.iter().any(|w| w == "held-proxy"),
            "{:?}",
            now.waiting_for
        );
    }
    ack.send_replace(true);
    assert_eq!(outcome(progress).await, Outcome::Succeeded);
    follower.stop();
    leader.stop();
}
