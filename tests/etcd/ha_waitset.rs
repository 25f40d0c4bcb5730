//! A flip through the leader waits for the proxies of every replica: a
//! proxy connected only to a follower holds the flip until it ACKs, and
//! its NACK rolls the flip back.

use std::time::Duration;

use teal::rollout::{Outcome, Progress};
use teal::serve::Running;
use tokio::sync::watch;

use crate::support::ads::{Answer, answering_proxy};
use crate::support::etcd::Etcd;
use crate::support::replica::{self, InProcessReplica};

/// The leader lease of every replica here.
const LEASE: Duration = Duration::from_secs(2);

/// Starts a flip of `web` to `to` on `replica`: its progress.
async fn flip(replica: &InProcessReplica, to: &str) -> watch::Receiver<Progress> {
    replica
        .flip(to, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("flip refused: {e}"))
}

async fn outcome(progress: watch::Receiver<Progress>) -> Outcome {
    replica::outcome(progress, Duration::from_secs(90)).await
}

/// Waits (up to 20 s) until `check` holds of the leader's registry.
async fn until(leader: &InProcessReplica, what: &str, check: impl Fn(&Running) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !check(&leader.running) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "after 20 s, still not {what}: {:#?}",
            leader.running.registry.proxies()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_waits_for_a_proxy_connected_only_to_a_follower() {
    let etcd = Etcd::start().await;
    let a = InProcessReplica::start(&etcd, "/wait/", LEASE).await;
    let b = InProcessReplica::start(&etcd, "/wait/", LEASE).await;
    // Whichever accepts a change leads (with no proxy yet, the flip ends
    // at once); the other refuses it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (leader, follower) = 'elected: loop {
        for first in [true, false] {
            let r = if first { &a } else { &b };
            let started = r.flip("green", Duration::from_secs(10)).await;
            if let Ok(progress) = started {
                assert_eq!(outcome(progress).await, Outcome::Succeeded);
                break 'elected if first { (a, b) } else { (b, a) };
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no leader after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The follower serves what the leader committed before the proxy comes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while follower.running.controller.snapshot().version()
        != leader.running.controller.snapshot().version()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the follower did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (answer, answers) = watch::channel(Answer::Ack);
    let _proxy = answering_proxy(follower.running.xds_addr.port(), "far-proxy", answers).await;
    until(&leader, "mirroring the follower's synced proxy", |r| {
        r.registry.proxies().iter().any(|p| {
            p.replica.is_some()
                && p.node.as_ref().is_some_and(|n| n.id == "far-proxy")
                && p.types.values().all(|t| t.subscribed && t.acked.is_some())
        })
    })
    .await;
    assert!(
        follower
            .running
            .registry
            .proxies()
            .iter()
            .all(|p| p.replica.is_none()),
        "a follower mirrors nothing"
    );

    // The proxy holds its ACK: the flip waits for it.
    answer.send_replace(Answer::Hold);
    let progress = flip(&leader, "blue").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        progress.borrow().outcome,
        None,
        "the flip ended without the follower's proxy ACKing"
    );
    answer.send_replace(Answer::Ack);
    assert_eq!(outcome(progress).await, Outcome::Succeeded);

    // The proxy NACKs: the flip rolls back (and the proxy takes the
    // version put back).
    answer.send_replace(Answer::NackOnce);
    let rolled = outcome(flip(&leader, "green").await).await;
    assert!(
        matches!(rolled, Outcome::RolledBack { .. }),
        "a NACK on the follower's proxy did not roll back: {rolled:?}"
    );
    answer.send_replace(Answer::Ack);

    // The follower goes: its proxies leave the leader's wait set.
    follower.stop();
    follower.running.wait().await.expect("clean stop");
    until(&leader, "rid of the gone follower's proxy", |r| {
        r.registry.proxies().iter().all(|p| p.replica.is_none())
    })
    .await;
    leader.stop();
}
