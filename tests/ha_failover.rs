//! Replicas as operators run them: three real `teal serve` processes on one
//! real etcd, driven through the real CLI. `teal flip` works against any
//! replica (a follower names the leader, the CLI asks it once), and a
//! leader killed with `kill -9` in the middle of a flip (during its
//! pre-checks, while it waits for ACKs after the commit, during its
//! post-checks) is replaced within the lease TTL + 2 s by a replica that
//! ends the flip, with its history entry, leaving every replica on one
//! committed version.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;

use support::etcd::Etcd;
use support::replica::{Replica, ReplicaSpec, cli, stubborn_proxy};

/// Green's endpoint in the bundled config, 127.0.0.1:8102, is taken by
/// one test at a time.
static GREEN_PORT: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
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

/// Three replicas on `etcd` under `prefix`.
async fn three_replicas(etcd: &Etcd, prefix: &str) -> Vec<Replica> {
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(replica(etcd, prefix).await);
    }
    replicas
}

/// Starts `teal flip ARGS` against `admin` in the background and waits
/// (up to 20 s) until the leader at `admin` reports `web`'s operation in
/// `phase`; returns the command and the operation's id.
async fn flip_until_phase(
    admin: &str,
    args: &'static [&'static str],
    phase: &str,
) -> (tokio::task::JoinHandle<(i32, String, String)>, u64) {
    let to = admin.to_owned();
    let flip = tokio::spawn(async move { cli(&to, args).await });
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
    let _proxy = stubborn_proxy(replicas[li].xds, "stubborn").await;
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

    // The flip ends, rolled forward or back, with its history entry.
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

/// The leader of `replicas`, as `teal status` lists it.
async fn find_leader(replicas: &[Replica]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(st) = status_json(&replicas[0].admin).await {
            let leader = st["replicas"].as_array().and_then(|rs| {
                rs.iter()
                    .find(|r| r["leader"] == true)
                    .and_then(|r| r["admin"].as_str().map(str::to_owned))
            });
            if let Some(i) = leader.and_then(|a| replicas.iter().position(|r| r.admin == a)) {
                return i;
            }
        }
        assert!(Instant::now() < deadline, "no leader listed in 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_killed_during_pre_checks_leaves_the_flip_ended_and_traffic_where_it_was() {
    let _port = GREEN_PORT.lock().await;
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
    let _port = GREEN_PORT.lock().await;
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
