//! Replicas sharing one etcd prefix serve the same snapshot: the same
//! bytes under the same version strings, whether they watched the change
//! happen or started afterwards with nothing on disk, so a proxy that
//! fails over from one to another receives nothing new.

use std::collections::HashMap;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use prost::Message;
use teal::admin::Backend;
use teal::xds::resources::ResourceType;

use crate::support::etcd::Etcd;
use crate::support::replica::InProcessReplica;

/// The leader lease of every replica here.
const LEASE: Duration = Duration::from_secs(2);

fn node() -> Option<Node> {
    Some(Node {
        id: "proxy-1".into(),
        cluster: "edge".into(),
        ..Default::default()
    })
}

async fn client(port: u16) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20)
}

/// The first state-of-the-world answer for `ty` (every resource), as bytes.
async fn sotw(port: u16, ty: ResourceType) -> DiscoveryResponse {
    let mut c = client(port).await;
    let req = DiscoveryRequest {
        node: node(),
        type_url: ty.type_url().into(),
        ..Default::default()
    };
    let mut stream = c
        .stream_aggregated_resources(tokio_stream::iter([req]))
        .await
        .expect("stream")
        .into_inner();
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an answer within 10 s")
        .expect("no error")
        .expect("a message")
}

/// The versions of every resource of `ty` that a delta stream to `port`
/// holding `held` is sent in its first 2 s.
async fn delta(
    port: u16,
    ty: ResourceType,
    held: HashMap<String, String>,
) -> HashMap<String, String> {
    let mut c = client(port).await;
    let req = DeltaDiscoveryRequest {
        node: node(),
        type_url: ty.type_url().into(),
        resource_names_subscribe: vec!["*".into()],
        initial_resource_versions: held,
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(req).await.expect("send");
    let mut stream = c
        .delta_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let mut sent = HashMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(message) = tokio::time::timeout_at(deadline, stream.message()).await {
        let Some(answer) = message.expect("no error") else {
            break;
        };
        assert!(
            answer.removed_resources.is_empty(),
            "removed {:?}",
            answer.removed_resources
        );
        for r in answer.resources {
            sent.insert(r.name, r.version);
        }
    }
    drop(tx);
    sent
}

async fn same_version(a: &InProcessReplica, b: &InProcessReplica) {
    let want = a.running.controller.snapshot().version().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while b.running.controller.snapshot().version() != want {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the other replica still serves {} instead of {want} after 20 s",
            b.running.controller.snapshot().version()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_the_same_bytes_under_the_same_versions() {
    let etcd = Etcd::start().await;
    let a = InProcessReplica::start(&etcd, "/ha/", LEASE).await;
    // Watches A's changes as they happen.
    let b = InProcessReplica::start(&etcd, "/ha/", LEASE).await;
    assert_eq!(
        a.running.controller.snapshot().version(),
        b.running.controller.snapshot().version()
    );
    let before = a.running.controller.snapshot().version().to_owned();
    // Whichever leads flips; A is named for it below.
    let (a, b) = match leader_of(&[&a, &b], "green").await {
        0 => (a, b),
        _ => (b, a),
    };
    assert_ne!(a.running.controller.snapshot().version(), before);
    same_version(&a, &b).await;
    // Starts afterwards with nothing on disk.
    let c = InProcessReplica::start(&etcd, "/ha/", LEASE).await;
    same_version(&a, &c).await;

    let replicas = [a, b, c];
    let ports = replicas.each_ref().map(|r| r.running.xds_addr.port());
    for ty in ResourceType::ALL {
        let from_a = sotw(ports[0], ty).await;
        assert!(!from_a.resources.is_empty(), "{ty:?} has resources");
        for port in &ports[1..] {
            let other = sotw(*port, ty).await;
            // The nonce is per stream; everything else is the same bytes.
            let strip = |mut r: DiscoveryResponse| {
                r.nonce.clear();
                r.encode_to_vec()
            };
            assert_eq!(
                strip(from_a.clone()),
                strip(other),
                "{ty:?}: a replica serves other bytes"
            );
        }
        // A delta proxy that held A's resources and fails over to B or C
        // is sent nothing.
        let held = delta(ports[0], ty, HashMap::new()).await;
        assert!(!held.is_empty(), "{ty:?}: A sent resources");
        for port in &ports[1..] {
            let sent = delta(*port, ty, held.clone()).await;
            assert!(sent.is_empty(), "{ty:?}: failing over re-sent {sent:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_away_refuses_changes_keeps_serving_and_catches_up() {
    let mut etcd = Etcd::start().await;
    let a = InProcessReplica::start(&etcd, "/ha/", LEASE).await;
    let b = InProcessReplica::start(&etcd, "/ha/", LEASE).await;
    let (a, b) = match leader_of(&[&a, &b], "green").await {
        0 => (a, b),
        _ => (b, a),
    };
    same_version(&a, &b).await;
    let served = a.running.controller.snapshot().version().to_owned();
    etcd.kill().await;
    let err = a
        .flip("blue", Duration::from_secs(10))
        .await
        .expect_err("no change without the store");
    assert_eq!(
        err.kind(),
        teal::rollout::ErrorKind::StoreUnavailable,
        "{err}"
    );
    assert!(err.to_string().contains("store unavailable"), "{err}");
    assert_eq!(a.running.controller.snapshot().version(), served);
    // Both keep serving what they served.
    assert_eq!(b.running.controller.snapshot().version(), served);
    etcd.restart().await;
    let leader = leader_of(&[&a, &b], "blue").await;
    // (Until etcd answers again, no replica may change anything.)
    let (a, b) = if leader == 0 { (&a, &b) } else { (&b, &a) };
    same_version(a, b).await;
    assert_ne!(a.running.controller.snapshot().version(), served);
}

/// Asks `replica` to flip `web` to `to`: the outcome, or the refusal.
async fn try_flip(replica: &InProcessReplica, to: &str) -> Result<(), teal::rollout::RolloutError> {
    let mut rx = replica.flip(to, Duration::from_secs(10)).await?;
    let progress = rx
        .wait_for(|p| p.outcome.is_some())
        .await
        .expect("progress")
        .clone();
    assert_eq!(progress.outcome, Some(teal::rollout::Outcome::Succeeded));
    Ok(())
}

/// Waits until one of `replicas` leads; returns its index. The others
/// refuse changes naming its admin address.
async fn leader_of(replicas: &[&InProcessReplica], to: &str) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        for (i, r) in replicas.iter().enumerate() {
            match try_flip(r, to).await {
                Ok(()) => {
                    for (j, other) in replicas.iter().enumerate() {
                        if j == i {
                            continue;
                        }
                        // A follower that has not read the new leader's
                        // record yet knows of no leader ("store
                        // unavailable"); it names the leader once it has.
                        let named = tokio::time::Instant::now() + Duration::from_secs(10);
                        loop {
                            match try_flip(other, to).await {
                                Err(teal::rollout::RolloutError::NotLeader { leader }) => {
                                    assert_eq!(
                                        leader,
                                        Some(r.running.admin_addr.to_string()),
                                        "a follower names the leader"
                                    );
                                    break;
                                }
                                Err(teal::rollout::RolloutError::StoreUnavailable(_))
                                    if tokio::time::Instant::now() < named =>
                                {
                                    tokio::time::sleep(Duration::from_millis(50)).await;
                                }
                                other => panic!("a second replica accepted a change: {other:?}"),
                            }
                        }
                    }
                    return i;
                }
                // Not elected yet (or etcd just came back).
                Err(
                    teal::rollout::RolloutError::NotLeader { .. }
                    | teal::rollout::RolloutError::StoreUnavailable(_),
                ) => {}
                Err(e) => panic!("unexpected refusal: {e}"),
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no replica leads after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_replica_leads_and_another_takes_over_when_it_goes() {
    let etcd = Etcd::start().await;
    let mut replicas = vec![
        InProcessReplica::start(&etcd, "/lead/", LEASE).await,
        InProcessReplica::start(&etcd, "/lead/", LEASE).await,
    ];
    let first = leader_of(&replicas.iter().collect::<Vec<_>>(), "green").await;
    // The leader keeps its lease alive: three TTLs later it still holds
    // the very same leader key (never deleted and taken again).
    let client = teal::state::etcd::EtcdClient::new(etcd.options("/lead/")).expect("client");
    let held = || async {
        let (kv, _) = client.get(b"/lead/leader").await.expect("read");
        kv.expect("a leader key").create_revision
    };
    let taken = held().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        held().await,
        taken,
        "the leader key was lost and taken again"
    );
    assert_eq!(
        leader_of(&replicas.iter().collect::<Vec<_>>(), "blue").await,
        first,
        "the leadership moved without a failure"
    );
    let listed = replicas[first].running.controller.replicas().await;
    assert!(listed.iter().any(|r| r.leader), "{listed:?}");
    let leader = replicas.remove(first);
    same_version(&leader, &replicas[0]).await;
    leader.stop();
    leader.running.wait().await.expect("clean stop");
    // The leader resigned on its way out: the other leads at once.
    let started = tokio::time::Instant::now();
    leader_of(&[&replicas[0]], "green").await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_is_listed_and_a_gone_one_leaves_the_list() {
    let etcd = Etcd::start().await;
    let a = InProcessReplica::start(&etcd, "/list/", LEASE).await;
    let b = InProcessReplica::start(&etcd, "/list/", LEASE).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let listed = loop {
        let listed = a.running.controller.replicas().await;
        if listed.len() == 2 && listed.iter().filter(|r| r.leader).count() == 1 {
            break listed;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not two replicas, one leading: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut admins: Vec<String> = listed.iter().map(|r| r.info.admin.clone()).collect();
    admins.sort();
    let mut want = vec![
        a.running.admin_addr.to_string(),
        b.running.admin_addr.to_string(),
    ];
    want.sort();
    assert_eq!(admins, want);
    assert!(listed.iter().all(|r| !r.info.config_digest.is_empty()));
    // b goes: its record goes with its lease.
    b.stop();
    b.running.wait().await.expect("clean stop");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let listed = a.running.controller.replicas().await;
        if listed.len() == 1 && listed[0].info.admin == a.running.admin_addr.to_string() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gone replica is still listed: {listed:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
