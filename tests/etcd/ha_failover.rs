//! Replicas as operators run them: three real `teal serve` processes on one
//! real etcd, driven through the real CLI. `teal flip` works against any
//! replica (a follower names the leader, the CLI asks it once), and a
//! leader killed with `kill -9` in the middle of a flip (during its
//! pre-checks, while it waits for ACKs after the commit, during its
//! post-checks) is replaced within the lease TTL + 2 s by a replica that
//! ends the flip, with its history entry, leaving every replica on one
//! committed version.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use serde_json::Value;

use crate::support;
use crate::support::etcd::{Etcd, Forwarder};
use crate::support::ports;
use crate::support::replica::{
    Replica, ReplicaSpec, cli, stubborn_proxy, stubborn_proxy_then, wait_leader,
};

const LEASE_SECS: u64 = 2;

async fn replica(etcd: &Etcd, prefix: &str) -> Replica {
    Replica::start(ReplicaSpec {
        store: etcd.url(prefix),
        lease_secs: LEASE_SECS,
        ..ReplicaSpec::default()
    })
    .await
}

async fn status_json(admin: &str) -> Option<Value> {
    let (code, out, _) = cli(admin, &["status", "-o", "json"]).await;
    (code == 0)
        .then(|| serde_json::from_str(&out).ok())
        .flatten()
}

/// The ACK of `answer`.
fn ack(
    answer: &envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse,
) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: answer.type_url.clone(),
        version_info: answer.version_info.clone(),
        response_nonce: answer.nonce.clone(),
        ..Default::default()
    }
}

/// Three replicas on `etcd` under `prefix`.
async fn three_replicas(etcd: &Etcd, prefix: &str) -> Vec<Replica> {
    replicas(etcd, prefix, 3).await
}

/// `n` replicas on `etcd` under `prefix`.
async fn replicas(etcd: &Etcd, prefix: &str, n: usize) -> Vec<Replica> {
    let mut replicas = Vec::new();
    for _ in 0..n {
        replicas.push(replica(etcd, prefix).await);
    }
    replicas
}

/// Starts `teal flip web --to green --skip-checks --timeout TIMEOUT`
/// against `admin` and waits until the flip waits for ACKs (see
/// [`flip_until_phase`]).
async fn flip_to_green_held(
    admin: &str,
    timeout: &str,
) -> (tokio::task::JoinHandle<(i32, String, String)>, u64) {
    let args = [
        "flip",
        "web",
        "--to",
        "green",
        "--skip-checks",
        "--timeout",
        timeout,
    ];
    flip_until_phase(admin, &args, "confirming").await
}

/// Asserts that `entry` ended `unconfirmed` naming the stubborn proxy,
/// as the CLI (exit 4) that followed it reported.
fn unconfirmed_for_stubborn(entry: &Value, cli: (i32, String, String)) {
    assert_eq!(entry["outcome"], "unconfirmed", "{entry}");
    // The outcome names the proxy nobody heard from.
    let reason = entry["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("stubborn"), "{entry}");
    let (code, _, err) = cli;
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("following it on"), "{err}");
}

/// Starts `teal flip ARGS` against `admin` in the background and waits
/// (up to 20 s) until the leader at `admin` reports `web`'s operation in
/// `phase`; returns the command and the operation's id.
async fn flip_until_phase(
    admin: &str,
    args: &[&str],
    phase: &str,
) -> (tokio::task::JoinHandle<(i32, String, String)>, u64) {
    let to = admin.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let flip = tokio::spawn(async move {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli(&to, &args).await
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = status_json(admin).await.expect("leader status");
        let web = st["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "web"))
            .cloned()
            .expect("web");
        if web["in_progress"]["phase"] == phase {
            let id = web["in_progress"]["id"].as_u64().expect("id");
            return (flip, id);
        }
        assert!(Instant::now() < deadline, "never in {phase}: {web}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The history entry of operation `id` as the replica at `admin` records
/// it, once it has ended (up to 60 s).
async fn ended_entry(admin: &str, id: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, out, _) = cli(admin, &["history", "web", "-o", "json"]).await;
        let history: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        if let Some(e) = history["entries"]
            .as_array()
            .and_then(|h| h.iter().find(|e| e["id"].as_u64() == Some(id)).cloned())
        {
            return e;
        }
        assert!(Instant::now() < deadline, "#{id} never ended: {history}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The address the CLI said it was sent to, from a follower's answer.
fn redirected_to(stderr: &str) -> Option<String> {
    let at = stderr.find("asking the leader at ")? + "asking the leader at ".len();
    Some(stderr[at..].lines().next()?.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flip_through_any_replica_and_survive_the_leader_killed_mid_flip() {
    let etcd = Etcd::start().await;
    let mut replicas = three_replicas(&etcd, "/failover/").await;
    // Through each replica in turn: every one works, followers by sending
    // the CLI to the leader.
    let mut leader = None;
    for (i, to) in ["green", "blue", "green"].into_iter().enumerate() {
        let (code, _, err) = cli(
            &replicas[i].admin,
            &[
                "flip",
                "web",
                "--to",
                to,
                "--skip-checks",
                "--timeout",
                "10s",
            ],
        )
        .await;
        assert_eq!(code, 0, "flip through replica {i}:\n{err}");
        let led_by = redirected_to(&err).unwrap_or_else(|| replicas[i].admin.clone());
        leader.get_or_insert(led_by.clone());
        assert_eq!(leader.as_deref(), Some(led_by.as_str()), "one leader");
    }
    let leader = leader.expect("a leader");
    // `teal status` on any replica lists all three, one leading.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out, err) = cli(&replicas[2].admin, &["status"]).await;
        assert_eq!(code, 0, "{err}");
        let lines: Vec<&str> = out
            .lines()
            .skip_while(|l| *l != "replicas:")
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .collect();
        let leaders = lines.iter().filter(|l| l.contains(" leader ")).count();
        if lines.len() == 3 && leaders == 1 && lines.iter().any(|l| l.contains(&leader)) {
            break;
        }
        assert!(Instant::now() < deadline, "teal status:\n{out}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let li = replicas
        .iter()
        .position(|r| r.admin == leader)
        .expect("the leader is a replica");

    // A proxy on the leader that never ACKs holds the next flip in its
    // confirmation.
    let then = replicas[(li + 1) % 3].xds;
    let _proxy = stubborn_proxy_then(replicas[li].xds, "stubborn", Some(then)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (flip, id) = flip_until_phase(
        &leader,
        &[
            "flip",
            "web",
            "--to",
            "blue",
            "--skip-checks",
            "--timeout",
            "60s",
        ],
        "confirming",
    )
    .await;

    replicas[li].kill9().await;
    let killed = Instant::now();
    let _ = flip.await;
    let survivors: Vec<&Replica> = replicas
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != li)
        .map(|(_, r)| r)
        .collect();

    // Another replica leads within the TTL + 2 s: a change through any
    // survivor is accepted (the flip itself is resumed and ended first, so
    // the service may be busy for a moment: that is leading too).
    let took = loop {
        let (code, _, err) = cli(&survivors[0].admin, &["history", "web", "-o", "json"]).await;
        assert_eq!(code, 0, "{err}");
        let (code, _, err) = cli(&survivors[0].admin, &["abort", "999999"]).await;
        // A leader answers "no such operation" (exit 1, refused); a
        // follower without a leader answers store unavailable (also 1):
        // tell them apart by the message.
        if code == 1 && err.contains("no operation #999999") {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no replica leads 30 s after the kill: {err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        took < Duration::from_secs(LEASE_SECS + 2),
        "a new leader took {took:?}, over the lease TTL + 2 s"
    );

    // The flip ends, rolled forward or back, with its history entry: once
    // the stubborn proxy, back on a survivor, confirmed it.
    let entry = ended_entry(&survivors[0].admin, id).await;
    assert!(
        entry["outcome"] == "succeeded" || entry["outcome"] == "rolled-back",
        "{entry}"
    );
    eprintln!(
        "new leader after {took:?}; operation #{id} ended {}",
        entry["outcome"]
    );

    // Every survivor serves the one committed version, and nothing is in
    // flight.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let a = status_json(&survivors[0].admin).await.expect("status");
        let b = status_json(&survivors[1].admin).await.expect("status");
        let busy = |s: &Value| {
            s["services"]
                .as_array()
                .is_some_and(|v| v.iter().any(|s| !s["in_progress"].is_null()))
        };
        if a["version"] == b["version"] && !busy(&a) && !busy(&b) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas disagree: {} vs {}",
            a["version"],
            b["version"]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The leader of `replicas`, as `teal status` lists it (within 20 s).
async fn find_leader(replicas: &[Replica]) -> usize {
    wait_leader(replicas, Duration::from_secs(20)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_during_pre_checks_leaves_the_flip_ended_and_traffic_where_it_was() {
    // Green's endpoint in the bundled config, 127.0.0.1:8102, is one of
    // the fixed ports: no other test may bind it meanwhile.
    let _port = ports::fixed().await;
    // green's endpoint (127.0.0.1:8102 in the bundled config) accepts and
    // never answers: the flip's checks of green hang until their timeout.
    let hang = std::net::TcpListener::bind("127.0.0.1:8102")
        .expect("this test needs 127.0.0.1:8102, green's endpoint in the bundled config");
    let etcd = Etcd::start().await;
    let mut replicas = three_replicas(&etcd, "/prechecks/").await;
    let li = find_leader(&replicas).await;
    let (flip, id) = flip_until_phase(
        &replicas[li].admin,
        &["flip", "web", "--to", "green", "--timeout", "30s"],
        "pre-checks",
    )
    .await;
    replicas[li].kill9().await;
    let _ = flip.await;
    let survivor = &replicas[(li + 1) % 3];
    let entry = ended_entry(&survivor.admin, id).await;
    // Nothing was committed: traffic stays on blue, on every survivor.
    assert_ne!(entry["outcome"], "succeeded", "{entry}");
    for r in replicas.iter().enumerate().filter(|(i, _)| *i != li) {
        let st = status_json(&r.1.admin).await.expect("status");
        let web = st["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "web"))
            .cloned()
            .expect("web");
        assert_eq!(web["live"], "blue", "{web}");
        assert!(web["in_progress"].is_null(), "{web}");
    }
    drop(hang);
}

/// Answers green's checks (`/` with `<html>`, `/healthz`) for the first
/// `answered` connections, then accepts and never answers: a flip's
/// pre-checks pass and its post-checks hang.
async fn checks_then_hang(answered: usize) -> tokio::task::JoinHandle<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8102")
        .await
        .expect("this test needs 127.0.0.1:8102, green's endpoint in the bundled config");
    tokio::spawn(async move {
        let mut held = Vec::new();
        let mut n = 0;
        while let Ok((mut conn, _)) = listener.accept().await {
            n += 1;
            if n > answered {
                held.push(conn);
                continue;
            }
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\n<html>",
                    )
                    .await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_during_post_checks_leaves_one_committed_version() {
    // Green's endpoint in the bundled config, 127.0.0.1:8102, is one of
    // the fixed ports: no other test may bind it meanwhile.
    let _port = ports::fixed().await;
    let server = checks_then_hang(2).await;
    let etcd = Etcd::start().await;
    let mut replicas = three_replicas(&etcd, "/postchecks/").await;
    let li = find_leader(&replicas).await;
    let (flip, id) = flip_until_phase(
        &replicas[li].admin,
        &["flip", "web", "--to", "green", "--timeout", "30s"],
        "post-checks",
    )
    .await;
    replicas[li].kill9().await;
    let _ = flip.await;
    let survivors: Vec<&Replica> = replicas
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != li)
        .map(|(_, r)| r)
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let entry = loop {
        let (_, out, _) = cli(&survivors[0].admin, &["history", "web", "-o", "json"]).await;
        let history: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        if let Some(e) = history["entries"]
            .as_array()
            .and_then(|h| h.iter().find(|e| e["id"].as_u64() == Some(id)).cloned())
        {
            break e;
        }
        assert!(Instant::now() < deadline, "#{id} never ended: {history}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Rolled forward (green) or back (blue), the same on every survivor,
    // nothing in flight.
    let want = if entry["outcome"] == "succeeded" {
        "green"
    } else {
        "blue"
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    for r in &survivors {
        loop {
            let st = status_json(&r.admin).await.expect("status");
            let web = st["services"]
                .as_array()
                .and_then(|s| s.iter().find(|s| s["name"] == "web"))
                .cloned()
                .expect("web");
            if web["live"] == want && web["in_progress"].is_null() {
                break;
            }
            assert!(Instant::now() < deadline, "{entry}\n{web}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let a = status_json(&survivors[0].admin).await.expect("status");
    let b = status_json(&survivors[1].admin).await.expect("status");
    assert_eq!(a["version"], b["version"]);
    eprintln!("post-checks kill: #{id} ended {}", entry["outcome"]);
    server.abort();
}

/// The history entries of operation `id` on the replica at `admin`.
async fn entries_of(admin: &str, id: u64) -> Vec<Value> {
    let (_, out, _) = cli(admin, &["history", "web", "-o", "json"]).await;
    let history: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    history["entries"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter(|e| e["id"].as_u64() == Some(id))
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_held_on_a_killed_leader_that_never_reconnects_keeps_the_flip_unconfirmed() {
    let etcd = Etcd::start().await;
    let mut replicas = three_replicas(&etcd, "/gone/").await;
    let li = find_leader(&replicas).await;
    // Held on the leader, and never seen again once it dies: nobody can
    // say it applied anything.
    let _proxy = stubborn_proxy(replicas[li].xds, "stubborn").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (flip, id) = flip_to_green_held(&replicas[li].admin, "8s").await;
    replicas[li].kill9().await;
    let survivor = replicas[(li + 1) % 3].admin.clone();
    let entry = ended_entry(&survivor, id).await;
    // The CLI that asked the killed leader reports what the cluster
    // recorded, from the new leader.
    unconfirmed_for_stubborn(&entry, flip.await.expect("the CLI ran"));
    assert_eq!(entries_of(&survivor, id).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leaders_flip_ends_once_as_recorded_and_never_succeeds_without_its_proxy() {
    let etcd = Etcd::start().await;
    let replicas = replicas(&etcd, "/paused/", 2).await;
    let li = find_leader(&replicas).await;
    let other = replicas[1 - li].admin.clone();
    // A proxy on the leader that holds its ACK: while the leader is
    // paused its TCP connection stays open, so it keeps routing blue.
    let _proxy = stubborn_proxy(replicas[li].xds, "stubborn").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (flip, id) = flip_to_green_held(&replicas[li].admin, "6s").await;
    replicas[li].signal("STOP");
    let paused = Instant::now();
    // The other replica takes over and resumes the flip; it may not call
    // it succeeded: the held proxy never confirmed.
    let entry = ended_entry(&other, id).await;
    assert_eq!(entry["outcome"], "unconfirmed", "{entry}");
    assert!(
        paused.elapsed() > Duration::from_secs(LEASE_SECS),
        "ended {:?} after the pause, before the lease ran out: {entry}",
        paused.elapsed()
    );
    // The paused leader wakes up: it closes its streams, records nothing,
    // and its CLI reports the outcome the cluster recorded.
    replicas[li].signal("CONT");
    let (code, _, err) = tokio::time::timeout(Duration::from_secs(60), flip)
        .await
        .expect("the CLI ends once the paused leader wakes")
        .expect("the CLI ran");
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("following it on"), "{err}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let all = entries_of(&other, id).await;
    assert_eq!(all.len(), 1, "one operation, one outcome: {all:?}");
    assert_eq!(all[0]["outcome"], "unconfirmed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_stopped_with_sigterm_mid_flip_hands_it_over_like_a_crash() {
    let etcd = Etcd::start().await;
    let mut replicas = replicas(&etcd, "/sigterm/", 2).await;
    let li = find_leader(&replicas).await;
    let other = replicas[1 - li].admin.clone();
    // Held on the leader; once it stops, the proxy reconnects to the other
    // replica and ACKs there.
    let _proxy =
        stubborn_proxy_then(replicas[li].xds, "stubborn", Some(replicas[1 - li].xds)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (flip, id) = flip_to_green_held(&replicas[li].admin, "30s").await;
    let stopped = replicas[li].terminate().await;
    assert!(stopped.success(), "{stopped}");
    let (code, out, err) = flip.await.expect("the CLI ran");
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("following it on"), "{err}");
    let all = entries_of(&other, id).await;
    assert_eq!(all.len(), 1, "one operation, one outcome: {all:?}");
    assert_eq!(all[0]["outcome"], "succeeded", "{all:?}");
    let log = replicas[li].log();
    assert!(!log.contains("operation finished"), "{log}");
}

/// A proxy of node `nacker` that ACKs each type's first answer and then
/// NACKs every change and ACKs the one after it (a flip's version, then
/// the version its rollback puts back). When its stream ends it says when
/// on `closed` and, as Envoy does, reconnects to another replica
/// (`then`), where it does the same.
async fn nacking_proxy(
    port: u16,
    then: u16,
    closed: tokio::sync::oneshot::Sender<Instant>,
) -> tokio::task::JoinHandle<()> {
    async fn run(port: u16) {
        let (tx, mut stream) = support::ads_subscribed_to_all(port, "nacker").await;
        // Per type: the version ACKed last, and how many answers came.
        let mut seen: std::collections::HashMap<String, (String, usize)> = Default::default();
        while let Ok(Some(answer)) = stream.message().await {
            let (acked, count) = seen.entry(answer.type_url.clone()).or_default();
            *count += 1;
            let reply = if *count % 2 == 1 {
                *acked = answer.version_info.clone();
                ack(&answer)
            } else {
                DiscoveryRequest {
                    version_info: acked.clone(),
                    error_detail: Some(envoy_types::pb::google::rpc::Status {
                        code: 3,
                        message: "nacker refuses every change".into(),
                        ..Default::default()
                    }),
                    ..ack(&answer)
                }
            };
            let _ = tx.send(reply).await;
        }
    }
    tokio::spawn(async move {
        run(port).await;
        let _ = closed.send(Instant::now());
        tokio::time::sleep(Duration::from_millis(300)).await;
        run(then).await;
    })
}

/// Waits until the replica at `admin` lists node `node` (up to 20 s),
/// connected to it (`local`) or to another replica.
async fn wait_for_proxy(admin: &str, node: &str, local: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, out, _) = cli(admin, &["proxies", "-o", "json"]).await;
        let listed: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        if listed["proxies"].as_array().is_some_and(|all| {
            all.iter()
                .any(|p| p["node_id"] == node && p["replica"].is_null() == local)
        }) {
            return;
        }
        assert!(Instant::now() < deadline, "{node} never listed: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_etcd_closes_its_streams_and_a_flip_still_hears_its_proxy() {
    let etcd = Etcd::start().await;
    let mut fwd = Forwarder::start(&etcd).await;
    let leader = replica(&etcd, "/cut/").await;
    let follower = Replica::start(ReplicaSpec {
        store: fwd.url("/cut/"),
        lease_secs: LEASE_SECS,
        ..ReplicaSpec::default()
    })
    .await;
    let replicas = vec![leader, follower];
    assert_eq!(find_leader(&replicas).await, 0, "the first replica leads");
    let (closed_tx, closed) = tokio::sync::oneshot::channel();
    let _proxy = nacking_proxy(replicas[1].xds, replicas[0].xds, closed_tx).await;
    wait_for_proxy(&replicas[0].admin, "nacker", false).await;
    let flip = [
        "flip",
        "web",
        "--to",
        "green",
        "--skip-checks",
        "--timeout",
        "10s",
    ];
    // On the follower, its NACK rolls a flip back.
    let (code, _, err) = cli(&replicas[0].admin, &flip).await;
    assert_eq!(code, 2, "rolled back before the cut: {err}");

    // The follower loses etcd: it closes its proxies' streams within half
    // its lease, long before etcd lets its lease go.
    fwd.cut();
    let cut = Instant::now();
    let closed_at = tokio::time::timeout(Duration::from_secs(30), closed)
        .await
        .expect("the follower closed the stream")
        .expect("closed");
    let took = closed_at.duration_since(cut);
    assert!(
        took < Duration::from_secs(LEASE_SECS),
        "the stream closed {took:?} after the cut, not within the lease"
    );
    eprintln!("the cut-off replica closed its streams {took:?} after the cut");
    // The proxy is back, on the leader: the same flip is rolled back
    // again, never "succeeded" without it.
    wait_for_proxy(&replicas[0].admin, "nacker", true).await;
    let (code, _, err) = cli(&replicas[0].admin, &flip).await;
    assert_eq!(code, 2, "rolled back after the cut: {err}");
    let st = status_json(&replicas[0].admin).await.expect("status");
    let web = st["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "web"))
        .cloned()
        .expect("web");
    assert_eq!(web["live"], "blue", "{web}");
    fwd.heal().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_reads_every_replicas_proxies_before_it_resumes_a_flip() {
    let etcd = Etcd::start().await;
    let mut link = Forwarder::start(&etcd).await;
    let mut replicas = vec![
        replica(&etcd, "/race/").await,
        replica(&etcd, "/race/").await,
    ];
    replicas.push(
        Replica::start(ReplicaSpec {
            store: link.url("/race/"),
            lease_secs: LEASE_SECS,
            ..ReplicaSpec::default()
        })
        .await,
    );
    assert_eq!(find_leader(&replicas).await, 0, "the first replica leads");
    // The held proxy is on the third replica, which will not be the next
    // leader: the second one has to read it from etcd.
    let _proxy = stubborn_proxy(replicas[2].xds, "stubborn").await;
    wait_for_proxy(&replicas[0].admin, "stubborn", false).await;
    let (flip, id) = flip_to_green_held(&replicas[0].admin, "6s").await;
    link.cut();
    replicas[0].kill9().await;
    let entry = ended_entry(&replicas[1].admin, id).await;
    unconfirmed_for_stubborn(&entry, flip.await.expect("the CLI ran"));
}
