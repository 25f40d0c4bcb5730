//! Three replicas on one etcd, six real Envoys whose bootstrap lists all
//! three (so one whose replica dies reconnects to another), requests
//! through every Envoy for the whole test, and 20 flips through the real
//! CLI, each sent to a random live replica, while a random replica (the
//! leader or not) is killed with `kill -9` in a random phase of every
//! third flip (pre-checks, waiting for ACKs, post-checks) and started
//! again on its ports and store, or, as often, cut from etcd (each replica
//! reaches etcd through a TCP forwarder the test owns) for twice the lease
//! and then let back: no request fails; every flip ends
//! succeeded or rolled back, or, when its leader died before it committed
//! anything, interrupted with nothing of it in effect (one history entry
//! each, none left in flight); a flip no kill touched waits for the ACKs of
//! all six Envoys, wherever they are connected; and every Envoy ends on the
//! one version the replicas serve, routing to the fleet the outcomes left
//! live.
//!
//! The victims and the moments of the kills come from a seeded generator;
//! the seed is printed, and `TEAL_HA_LOAD_SEED=N` runs the same choices
//! again.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use teal::state::{EtcdStore, StateStore};

use crate::support;
use crate::support::etcd::{Etcd, Forwarder};
use crate::support::http::Upstream;
use crate::support::replica::{
    Replica, ReplicaSpec, cli_command, edge_envoys, spread, wait_spread, write_edge_groups_config,
};
use crate::support::world::route_weights;
use crate::support::{Envoy, Protocol, Traffic, free_port};

const FLIPS: usize = 20;
const ENVOYS: usize = 6;
const REPLICAS: usize = 3;
const LEASE_SECS: u64 = 2;
/// A kill in the middle of every this many flips.
const KILL_EVERY: usize = 3;
/// How long each fleet takes to answer a health check.
const CHECK_TAKES: Duration = Duration::from_millis(300);

/// A test's dice: splitmix64, a few lines instead of a dependency for
/// choices that only need to be repeatable from a printed seed.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number below `n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The RDS version an Envoy holds, from its admin `config_dump`.
async fn route_version(envoy: &Envoy) -> Option<String> {
    let r = support::http::get(
        envoy.admin_port(),
        "/config_dump?resource=dynamic_route_configs",
        &[],
    )
    .await
    .ok()?;
    let dump: Value = serde_json::from_str(&r.body).ok()?;
    let versions: BTreeSet<&str> = dump["configs"]
        .as_array()?
        .iter()
        .filter_map(|c| c["version_info"].as_str())
        .collect();
    match versions.len() {
        1 => versions.into_iter().next().map(str::to_owned),
        _ => None,
    }
}

/// web's entry of a replica's `teal status`.
fn web(status: &Value) -> Value {
    status["services"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["name"] == "web"))
        .cloned()
        .unwrap_or(Value::Null)
}

/// The running replica that leads, as the first one that answers lists
/// the replicas.
async fn leader_of(replicas: &[Replica]) -> Option<usize> {
    for r in replicas.iter().filter(|r| r.is_running()) {
        if let Some(status) = r.json(&["status"]).await {
            let admin = status["replicas"].as_array().and_then(|rs| {
                rs.iter()
                    .find(|r| r["leader"] == true)
                    .and_then(|r| r["admin"].as_str().map(str::to_owned))
            })?;
            return replicas
                .iter()
                .position(|r| r.admin == admin && r.is_running());
        }
    }
    None
}

/// Waits until no operation on web is in flight in the stored state (an
/// operation is saved when it starts: one whose leader died stays there
/// until another leader ends it) and every running replica answers, with
/// web not in flight, the same version and the stored history; returns
/// that history's entries.
async fn settled(replicas: &[Replica], store: &EtcdStore) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut last = String::new();
    loop {
        let stored = match store.load().await {
            Ok(Some(s)) => Some(s.state),
            _ => None,
        };
        let in_flight = stored
            .as_ref()
            .and_then(|s| s.services.get("web"))
            .and_then(|w| w.operation.as_ref())
            .map(|op| op.id);
        let stored_history = stored
            .as_ref()
            .and_then(|s| s.history.get("web"))
            .map_or(0, Vec::len);
        if let Some(id) = in_flight {
            last = format!("operation #{id} is in flight in etcd");
            assert!(
                Instant::now() < deadline,
                "the replicas did not settle within 90 s: {last}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        }
        let mut seen = Vec::new();
        for r in replicas.iter().filter(|r| r.is_running()) {
            let (Some(status), Some(history)) = (
                r.json(&["status", "web"]).await,
                r.json(&["history", "web"]).await,
            ) else {
                seen.clear();
                last = format!("{} does not answer", r.admin);
                break;
            };
            seen.push((status, history));
        }
        if let Some((first, history)) = seen.first() {
            let same = seen.iter().all(|(s, h)| {
                s["version"] == first["version"] && h == history && web(s)["in_progress"].is_null()
            }) && history["entries"].as_array().map_or(0, Vec::len) == stored_history;
            if same {
                return history["entries"].as_array().cloned().unwrap_or_default();
            }
            last = seen
                .iter()
                .map(|(s, h)| {
                    format!(
                        "version {} in progress {} history {}",
                        s["version"],
                        web(s)["in_progress"],
                        h["entries"].as_array().map_or(0, Vec::len)
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
        }
        assert!(
            Instant::now() < deadline,
            "the replicas did not settle within 90 s: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_flips_under_load_while_replicas_are_killed() {
    let _alone = support::alone().await;
    let started = Instant::now();
    let seed = std::env::var("TEAL_HA_LOAD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("ha_load seed {seed} (TEAL_HA_LOAD_SEED={seed} repeats these choices)");
    let mut dice = Dice(seed);

    // Health checks that take a while keep each flip in its pre-checks and
    // post-checks long enough for the kills to land in them.
    let blue = Upstream::start_slow("blue", "/healthz", CHECK_TAKES).await;
    let green = Upstream::start_slow("green", "/healthz", CHECK_TAKES).await;
    let listeners: Vec<u16> = (0..ENVOYS).map(|_| free_port()).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = write_edge_groups_config(dir.path(), blue.port, green.port, &listeners);

    let etcd = Etcd::start().await;
    let spec = ReplicaSpec {
        store: etcd.url("/load/"),
        config: Some(config_path),
        lease_secs: LEASE_SECS,
        args: ["--watch-interval", "0.2", "--drain", "0.2"]
            .map(str::to_owned)
            .to_vec(),
        env: Vec::new(),
    };
    let store = EtcdStore::open(etcd.options("/load/")).expect("the store, to read");
    let mut replicas = Vec::new();
    let mut links = Vec::new();
    for _ in 0..REPLICAS {
        let link = Forwarder::start(&etcd).await;
        replicas.push(
            Replica::start(ReplicaSpec {
                store: link.url("/load/"),
                ..spec.clone()
            })
            .await,
        );
        links.push(link);
    }
    let xds: Vec<u16> = replicas.iter().map(|r| r.xds).collect();

    // Every Envoy lists all three replicas; half speak delta.
    let envoys = edge_envoys(&xds, &listeners, |i| {
        if i % 2 == 0 {
            Protocol::Sotw
        } else {
            Protocol::Delta
        }
    })
    .await;
    let before = spread(&replicas).await;
    eprintln!("proxies per replica at the start: {before:?}");
    assert_eq!(
        before.values().sum::<usize>(),
        ENVOYS,
        "every Envoy is connected to one replica: {before:?}"
    );

    let mut traffic = Traffic::start_over(&listeners, "/", &[]);
    traffic.wait_for_count(ENVOYS * 5).await;

    let mut recorded: Vec<Value> = Vec::new();
    let mut known: BTreeSet<u64> = BTreeSet::new();
    let mut kills = Vec::new();
    for flip in 0..FLIPS {
        let kill_now = flip % KILL_EVERY == 1;
        // Every Envoy back on some replica (those of a killed one reconnect
        // to another), so that the flip waits for all six.
        wait_spread(
            &replicas,
            Duration::from_secs(30),
            &format!("before flip {flip}, every Envoy connected"),
            |now| now.values().sum::<usize>() == ENVOYS,
        )
        .await;
        let mut attempts = 0;
        // A flip is refused while no replica leads: for up to the dead
        // leader's lease after a kill (a replica restarted on the dead
        // leader's address names that address as the leader's meanwhile).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            attempts += 1;
            assert!(
                Instant::now() < deadline,
                "flip {flip} did not happen in 60 s, {attempts} attempts (seed {seed})"
            );
            let alive: Vec<usize> = (0..REPLICAS)
                .filter(|i| replicas[*i].is_running())
                .collect();
            let via = alive[dice.below(alive.len() as u64) as usize];
            let mut child = cli_command(&replicas[via].admin, &["flip", "web", "--timeout", "30s"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn the CLI");
            let mut victim = None;
            let mut cut = None;
            if kill_now && attempts == 1 {
                // In a phase of the flip picked at random, as the leader
                // reports it (or once the flip is over, if it went by
                // unseen); then a random replica, the leader or not.
                let target = ["pre-checks", "confirming", "post-checks"][dice.below(3) as usize];
                let leader = leader_of(&replicas).await;
                let began = Instant::now();
                let mut phase = Value::Null;
                while began.elapsed() < Duration::from_secs(30)
                    && matches!(child.try_wait(), Ok(None))
                {
                    phase = match leader {
                        Some(l) => replicas[l]
                            .json(&["status", "web"])
                            .await
                            .map_or(Value::Null, |s| web(&s)["in_progress"]["phase"].clone()),
                        None => Value::Null,
                    };
                    if phase == target {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let v = dice.below(REPLICAS as u64) as usize;
                let partition = dice.below(2) == 0;
                if partition {
                    links[v].cut();
                    cut = Some(v);
                } else {
                    replicas[v].kill9().await;
                }
                kills.push(format!(
                    "flip {flip}: replica {v} ({}) {} after {:?}, waiting for {target}, in {phase}",
                    if leader == Some(v) {
                        "leader"
                    } else {
                        "follower"
                    },
                    if partition { "cut from etcd" } else { "killed" },
                    began.elapsed()
                ));
                victim = Some(v);
                if partition {
                    // Long enough for its lease to run out (a leader's is
                    // taken over), then it reaches etcd again.
                    tokio::time::sleep(Duration::from_secs(2 * LEASE_SECS)).await;
                    links[v].heal().await;
                }
            }
            let out = tokio::time::timeout(Duration::from_secs(90), child.wait_with_output())
                .await
                .unwrap_or_else(|_| panic!("flip {flip}: the CLI ran for 90 s (seed {seed})"))
                .expect("the CLI");
            if let Some(v) = victim.filter(|v| cut != Some(*v)) {
                replicas[v].restart().await;
                // Restarted while its dead predecessor's lease may still
                // hold the leader key: it must not send the CLI to itself.
                let (_, _, err) = replicas[v].cli(&["abort", "999999"]).await;
                let itself = format!("the leader's admin API is at {}", replicas[v].admin);
                assert!(
                    !err.contains(&itself),
                    "a replica restarted after flip {flip} names itself as the leader: {err}"
                );
            }
            let history = settled(&replicas, &store).await;
            let new: Vec<&Value> = history
                .iter()
                .filter(|e| e["id"].as_u64().is_some_and(|id| !known.contains(&id)))
                .collect();
            let code = out.status.code();
            let stderr = String::from_utf8_lossy(&out.stderr);
            match new.as_slice() {
                [] => {
                    // The request never became an operation (the replica
                    // asked died, or no one led yet): flip again.
                    eprintln!(
                        "flip {flip} attempt {attempts} via {} left no operation \
                         (exit {code:?}): {stderr}",
                        replicas[via].admin
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                [entry] => {
                    let outcome = entry["outcome"].as_str().unwrap_or_default();
                    // `interrupted`: its leader died before it committed
                    // anything, and the next one ended it with nothing of
                    // it in effect (a rollback before anything moved).
                    let killed_early = outcome == "interrupted" && victim.is_some();
                    assert!(
                        outcome == "succeeded" || outcome == "rolled-back" || killed_early,
                        "flip {flip} ended {outcome} (seed {seed}): {entry}\n{stderr}"
                    );
                    // What the CLI said, when it saw the end, is what the
                    // history keeps.
                    match code {
                        Some(0) => assert_eq!(outcome, "succeeded", "{entry}\n{stderr}"),
                        Some(2) => assert_eq!(outcome, "rolled-back", "{entry}\n{stderr}"),
                        _ => assert!(
                            victim.is_some(),
                            "flip {flip} failed with nothing killed (exit {code:?}): {stderr}"
                        ),
                    }
                    // The leader waited for every Envoy, those on other
                    // replicas too (their ACKs reach it through etcd).
                    let acked = entry["acks"].as_array().map_or(0, Vec::len);
                    if outcome == "succeeded" && victim.is_none() {
                        assert_eq!(
                            acked, ENVOYS,
                            "flip {flip} succeeded with {acked} ACKs of {ENVOYS} Envoys \
                             (seed {seed}): {entry}"
                        );
                    }
                    known.insert(entry["id"].as_u64().expect("id"));
                    recorded.push((*entry).clone());
                    break;
                }
                more => panic!("flip {flip} left {} operations: {more:?}", more.len()),
            }
        }
    }
    eprintln!("kills:\n  {}", kills.join("\n  "));

    // The history is the 20 flips, each ended, nothing else.
    let history = settled(&replicas, &store).await;
    assert_eq!(
        history.len(),
        FLIPS,
        "one history entry per flip: {history:#?}"
    );
    for entry in &history {
        let outcome = entry["outcome"].as_str().unwrap_or_default();
        assert!(
            ["succeeded", "rolled-back", "interrupted"].contains(&outcome),
            "{entry}"
        );
    }
    let outcomes: BTreeMap<String, usize> = recorded.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e["outcome"].as_str().unwrap_or("?").to_owned())
            .or_default() += 1;
        m
    });
    eprintln!("outcomes: {outcomes:?}");

    // Every replica serves one version with web live on one fleet, and
    // every Envoy holds that version and routes all of web there.
    let statuses = {
        let mut all = Vec::new();
        for r in &replicas {
            all.push(r.json(&["status", "web"]).await.expect("status"));
        }
        all
    };
    let live = web(&statuses[0])["live"]
        .as_str()
        .expect("web's live fleet")
        .to_owned();
    // Blue at the start; each flip that succeeded moved web to the other
    // fleet, the others left it where it was.
    let succeeded = recorded
        .iter()
        .filter(|e| e["outcome"] == "succeeded")
        .count();
    let expected = if succeeded % 2 == 0 { "blue" } else { "green" };
    assert_eq!(live, expected, "{succeeded} flips succeeded: {recorded:#?}");
    for s in &statuses {
        assert_eq!(s["version"], statuses[0]["version"], "{statuses:#?}");
        assert_eq!(web(s)["live"], live.as_str(), "{statuses:#?}");
    }
    // A state-of-the-world Envoy reports the fleet-wide version; a delta
    // one the route configuration's own resource version, which is the
    // same for every delta Envoy (the groups' routes are alike).
    let served = statuses[0]["version"].as_str().expect("version").to_owned();
    let cluster = format!("web-{live}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut sotw, mut delta) = (BTreeSet::new(), BTreeSet::new());
    loop {
        let mut unrouted = Vec::new();
        sotw.clear();
        delta.clear();
        for (i, envoy) in envoys.iter().enumerate() {
            let version = route_version(envoy).await;
            if i % 2 == 0 {
                sotw.insert(version);
            } else {
                delta.insert(version);
            }
            if route_weights(envoy).await.get(&cluster) != Some(&100) {
                unrouted.push(envoy.node_id.clone());
            }
        }
        let on_served = sotw.len() == 1 && sotw.contains(&Some(served.clone()));
        let delta_agree = delta.len() == 1 && !delta.contains(&None);
        if on_served && delta_agree && unrouted.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "60 s after the last flip, the Envoys are not all on version {served} routing \
             all of web to {cluster}: state-of-the-world Envoys hold {sotw:?}, delta ones \
             {delta:?}, not routing there: {unrouted:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "every Envoy on version {served} (delta route version {delta:?}), web live on {live}"
    );
    eprintln!(
        "proxies per replica at the end: {:?}",
        spread(&replicas).await
    );

    // The traffic answers from the live fleet, through every Envoy.
    for (envoy, port) in envoys.iter().zip(&listeners) {
        envoy.wait_for_body(*port, &live).await;
    }
    let answers = traffic.stop().await;
    let failed: Vec<_> = answers
        .iter()
        .filter(|a| !matches!(a, Ok((200, body)) if body == "blue" || body == "green"))
        .collect();
    eprintln!(
        "{} requests, {} failed, {:?} in all",
        answers.len(),
        failed.len(),
        started.elapsed()
    );
    assert!(
        failed.is_empty(),
        "{} of {} requests failed (seed {seed}): {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(20)]
    );
    drop(envoys);
}
