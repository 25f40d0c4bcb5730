//! What replicas on one etcd must agree on, through real `teal serve`
//! replicas and the real CLI:
//!
//! - resources: a replica whose config renders the stored state to other
//!   resources serves what it served and never leads.
//! - checks: a replica whose config differs from the leader's only in
//!   `checks:` (which no proxy sees, so it serves the very same version)
//!   says so in `teal status` and never leads, even when the leader is
//!   killed with `kill -9`; the flips it is sent run on the leader, with
//!   the leader's checks.
//! - cordons: fleet-wide saved state. A cordon sent to a follower reaches
//!   the leader, and after the leader is killed the new one does not wait
//!   for the cordoned proxy; an uncordon sent to a follower survives the
//!   next failover the same way.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support;
use crate::support::etcd::Etcd;
use crate::support::free_port;
use crate::support::http::Upstream;
use crate::support::replica::{
    Replica, ReplicaSpec, edge_groups_config, stubborn_proxy, wait_leader,
};

const LEASE_SECS: u64 = 2;

/// Time for a failover: the dead leader's lease to run out, and a second
/// for the next one to campaign and say so.
const FAILOVER: Duration = Duration::from_secs(LEASE_SECS + 10);

async fn replica(etcd: &Etcd, prefix: &str, config: Option<&Path>) -> Replica {
    Replica::start(ReplicaSpec {
        store: etcd.url(prefix),
        config: config.map(Path::to_path_buf),
        lease_secs: LEASE_SECS,
        ..ReplicaSpec::default()
    })
    .await
}

/// The record of the replica at `admin` in `status`'s `replicas`.
fn record<'a>(status: &'a Value, admin: &str) -> Option<&'a Value> {
    status["replicas"]
        .as_array()?
        .iter()
        .find(|r| r["admin"] == admin)
}

/// Waits (up to 20 s) until `of`'s record, as `on` lists it, says why it
/// may not lead; returns that.
async fn ineligible(on: &Replica, of: &Replica) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(why) = on.json(&["status"]).await.and_then(|st| {
            record(&st, &of.admin)?["ineligible"]
                .as_str()
                .map(str::to_owned)
        }) {
            return why;
        }
        assert!(
            Instant::now() < deadline,
            "{} is never listed as unable to lead: {:?}",
            of.admin,
            on.json(&["status"]).await
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many history entries of `web` `replica` lists, if it answers.
async fn entries(replica: &Replica) -> Option<usize> {
    let history = replica.json(&["history", "web"]).await?;
    history["entries"].as_array().map(Vec::len)
}

/// `teal flip web --to TO` through `via`, with its own checks unless
/// `skip_checks`: exit code and stderr.
async fn flip(via: &Replica, to: &str, timeout: &str, skip_checks: bool) -> (i32, String) {
    let mut args = vec!["flip", "web", "--to", to, "--timeout", timeout];
    if skip_checks {
        args.push("--skip-checks");
    }
    let (code, _, err) = via.cli(&args).await;
    (code, err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_checks_differ_is_flagged_and_never_leads_or_runs_flips() {
    let etcd = Etcd::start().await;
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let dir = tempfile::tempdir().expect("temp dir");
    // The same resources; only the other config's check also wants a text
    // that no upstream's /healthz answers with, so a flip checked by it
    // would be refused.
    let same = edge_groups_config(blue.port, green.port, &[free_port()]);
    let differs = same.replace(
        "        timeout: 1s\ngroups:",
        "        timeout: 1s\n        body_contains: never-answered\ngroups:",
    );
    assert_ne!(same, differs, "the checks are where this test expects");
    let (same_path, differs_path) = (
        dir.path().join("same.yaml"),
        dir.path().join("differs.yaml"),
    );
    std::fs::write(&same_path, &same).expect("write");
    std::fs::write(&differs_path, &differs).expect("write");

    let mut replicas = vec![
        replica(&etcd, "/checks/", Some(&same_path)).await,
        replica(&etcd, "/checks/", Some(&same_path)).await,
        replica(&etcd, "/checks/", Some(&differs_path)).await,
    ];
    assert_eq!(
        wait_leader(&replicas, FAILOVER).await,
        0,
        "the first one started leads"
    );

    // Flagged, in JSON and in the table, on the leader and on itself.
    let why = ineligible(&replicas[0], &replicas[2]).await;
    assert!(why.contains("checks") && why.contains("differ"), "{why}");
    assert_eq!(ineligible(&replicas[2], &replicas[2]).await, why);
    let (code, table, err) = replicas[2].cli(&["status"]).await;
    assert_eq!(code, 0, "{err}");
    let line = table
        .lines()
        .find(|l| l.contains(&replicas[2].admin))
        .unwrap_or_else(|| panic!("no line for the replica:\n{table}"));
    assert!(
        line.contains("may not lead:") && line.contains("checks"),
        "{table}"
    );
    for i in 0..2 {
        assert!(
            replicas[2]
                .json(&["status"])
                .await
                .and_then(|st| record(&st, &replicas[i].admin).map(|r| r["ineligible"].is_null()))
                .unwrap_or(false),
            "replica {i} agrees with the stored state"
        );
    }

    // A flip sent to it runs on the leader, with the leader's checks; it
    // serves the result, byte for byte the leader's version.
    let (code, err) = flip(&replicas[2], "green", "10s", false).await;
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&replicas[0].admin), "asked the leader: {err}");
    let version = |st: Option<Value>| st.map(|s| s["version"].clone());
    support::wait_until(
        Duration::from_secs(10),
        "the same version everywhere",
        || async {
            let leader = version(replicas[0].json(&["status"]).await);
            leader.is_some() && version(replicas[2].json(&["status"]).await) == leader
        },
    )
    .await;

    // The leader killed: the other replica that agrees leads, not this one,
    // which still says why.
    replicas[0].kill9().await;
    assert_eq!(
        wait_leader(&replicas, FAILOVER).await,
        1,
        "the replica that agrees leads"
    );
    assert!(
        ineligible(&replicas[1], &replicas[2])
            .await
            .contains("checks")
    );
    let (code, err) = flip(&replicas[2], "blue", "10s", false).await;
    assert_eq!(code, 0, "run by the new leader with its checks: {err}");
    assert!(err.contains(&replicas[1].admin), "asked the leader: {err}");

    // Both flips' history entries reached this replica.
    support::wait_until(Duration::from_secs(10), "both entries", || async {
        entries(&replicas[2]).await == Some(2)
    })
    .await;

    // That one killed too: no one leads, rather than this one with its
    // checks. A flip is refused.
    replicas[1].kill9().await;
    tokio::time::sleep(FAILOVER).await;
    let st = replicas[2].json(&["status"]).await.expect("still answers");
    assert!(
        st["replicas"]
            .as_array()
            .is_some_and(|rs| rs.iter().all(|r| r["leader"] != true)),
        "{st:#}"
    );
    let (code, err) = flip(&replicas[2], "green", "5s", true).await;
    assert_ne!(code, 0, "{err}");
    assert_eq!(
        entries(&replicas[2]).await,
        Some(2),
        "only the two flips the leaders ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_resources_differ_keeps_serving_what_it_served_and_never_leads() {
    let etcd = Etcd::start().await;
    let (blue, green) = (
        Upstream::start("blue").await,
        Upstream::start("green").await,
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let same = edge_groups_config(blue.port, green.port, &[free_port()]);
    // Another route timeout: other route configurations, another digest.
    let differs = same.replace("    timeout: 5s\n", "    timeout: 6s\n");
    assert_ne!(
        same, differs,
        "the route timeout is where this test expects"
    );
    let (same_path, differs_path) = (
        dir.path().join("same.yaml"),
        dir.path().join("differs.yaml"),
    );
    std::fs::write(&same_path, &same).expect("write");
    std::fs::write(&differs_path, &differs).expect("write");
    let mut replicas = vec![
        replica(&etcd, "/resources/", Some(&same_path)).await,
        replica(&etcd, "/resources/", Some(&differs_path)).await,
    ];
    assert_eq!(wait_leader(&replicas, FAILOVER).await, 0);
    let why = ineligible(&replicas[0], &replicas[1]).await;
    assert!(why.contains("config differs"), "{why}");
    let version = |st: Option<Value>| st.map(|s| s["version"].clone()).unwrap_or(Value::Null);
    let served = version(replicas[1].json(&["status"]).await);

    // The leader flips; the other replica does not take the state its
    // config renders differently, and serves what it served.
    let (code, err) = flip(&replicas[0], "green", "10s", false).await;
    assert_eq!(code, 0, "{err}");
    let flipped = version(replicas[0].json(&["status"]).await);
    assert_ne!(flipped, served);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(version(replicas[1].json(&["status"]).await), served);
    assert!(
        ineligible(&replicas[0], &replicas[1])
            .await
            .contains("config differs")
    );

    // Nor does it lead when the leader is gone.
    replicas[0].kill9().await;
    tokio::time::sleep(FAILOVER).await;
    let st = replicas[1].json(&["status"]).await.expect("still answers");
    assert!(
        st["replicas"]
            .as_array()
            .is_some_and(|rs| rs.iter().all(|r| r["leader"] != true)),
        "{st:#}"
    );
    assert_eq!(version(Some(st)), served);
}

/// The cordons `replica` serves, by node id.
async fn cordoned(replica: &Replica) -> Vec<String> {
    replica.json(&["status"]).await.map_or_else(Vec::new, |st| {
        st["cordons"].as_array().map_or_else(Vec::new, |cs| {
            cs.iter()
                .filter_map(|c| c["node_id"].as_str().map(str::to_owned))
                .collect()
        })
    })
}

/// Waits (up to 10 s) until every running replica serves `want` as its
/// cordons.
async fn every_replica_cordons(replicas: &[Replica], want: &[&str]) {
    for r in replicas.iter().filter(|r| r.is_running()) {
        support::wait_until(
            Duration::from_secs(10),
            &format!("{} cordons {want:?}", r.admin),
            || async { cordoned(r).await == want },
        )
        .await;
    }
}

/// Waits (up to 10 s) until `leader` lists a proxy `node` (its own or one
/// it mirrors from another replica): its flips wait for it from then on.
async fn sees_proxy(leader: &Replica, node: &str) {
    support::wait_until(
        Duration::from_secs(10),
        &format!("{} lists {node}", leader.admin),
        || async {
            leader.json(&["proxies"]).await.is_some_and(|p| {
                p["proxies"]
                    .as_array()
                    .is_some_and(|all| all.iter().any(|x| x["node_id"] == node))
            })
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cordons_sent_to_a_follower_hold_fleet_wide_and_survive_failovers() {
    let etcd = Etcd::start().await;
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(&etcd, "/cordons/", None).await);
    }
    let first = wait_leader(&replicas, FAILOVER).await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != first).collect();

    // A proxy that never ACKs past its first answers, on a follower, holds
    // flips until their timeout.
    let held = stubborn_proxy(replicas[followers[0]].xds, "stubborn").await;
    sees_proxy(&replicas[first], "stubborn").await;
    let (code, err) = flip(&replicas[first], "green", "3s", true).await;
    assert_ne!(
        code, 0,
        "the flip waited for the proxy and timed out: {err}"
    );

    // Cordoned through the other follower: saved by the leader, served by
    // every replica.
    let (code, out, err) = replicas[followers[1]]
        .cli(&["cordon", "stubborn", "--reason", "never ACKs"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("operations no longer wait for it"), "{out}");
    assert!(
        err.contains("does not lead") && err.contains(&replicas[first].admin),
        "the follower sent the CLI to the leader: {err}"
    );
    every_replica_cordons(&replicas, &["stubborn"]).await;

    // The leader killed: the next one does not wait for the proxy either.
    replicas[first].kill9().await;
    let second = wait_leader(&replicas, FAILOVER).await;
    sees_proxy(&replicas[second], "stubborn").await;
    let started = Instant::now();
    let (code, err) = flip(&replicas[second], "green", "20s", true).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("did not wait for cordoned proxies") && err.contains("stubborn"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "it did not wait for the timeout"
    );

    // Uncordoned through the remaining follower; the proxy (on it too now,
    // so it outlives the next kill) counts again after that leader goes.
    let last = (0..3)
        .find(|i| *i != first && *i != second)
        .expect("a third replica");
    let _held_too = stubborn_proxy(replicas[last].xds, "stubborn").await;
    let (code, out, err) = replicas[last].cli(&["uncordon", "stubborn"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("uncordoned"), "{out}");
    assert!(
        err.contains(&replicas[second].admin),
        "asked the leader: {err}"
    );
    every_replica_cordons(&replicas, &[]).await;
    replicas[second].kill9().await;
    held.abort();
    assert_eq!(wait_leader(&replicas, FAILOVER).await, last);
    assert!(cordoned(&replicas[last]).await.is_empty());
    let (code, err) = flip(&replicas[last], "blue", "3s", true).await;
    assert_ne!(code, 0, "the uncordoned proxy holds the flip again: {err}");
}
