//! Replicas on etcd: failover time and etcd cost per flip.
//!
//! ```sh
//! cargo build --release --bin teal --example bench_ha
//! target/release/examples/bench_ha --kills 20
//! ```
//!
//! - **Failover**: three `teal serve` replicas on one etcd (a real etcd
//!   process: `$TEAL_ETCD` or `etcd` on PATH); `--kills` times, the leader
//!   is killed with `kill -9` and the time until a `teal flip` through
//!   another replica succeeds is measured (the CLI is sent to the new
//!   leader); the killed replica is then started again. Prints each sample,
//!   p50 and max.
//! - **etcd cost per flip**: the etcd revisions (one per write) and the
//!   bytes of the state value written, per flip, over `--flips` flips.
//! - **etcd cost per flip with proxies** (`--proxies 10,1000,10000`): that
//!   many simulated ADS streams (`tests/support/ads.rs`: subscribed to
//!   clusters, listeners and the edge routes, ACKing like Envoy), spread
//!   over the three replicas, `--proxy-flips` flips each through the
//!   leader, each confirmed by every stream. A watch on the prefix sees
//!   every write: per flip (from the command until 1.5 s after it
//!   returned, so the last ACK rounds count), the etcd revisions, keys
//!   and value bytes written for the state and for the replicas'
//!   published proxies, and the flip's time to confirmation (the `teal
//!   flip` command's run). The replicas' once-a-second records are
//!   counted apart. `--teal PATH` runs another `teal` binary (a build of
//!   an earlier commit, for a before and after).
//!
//! Everything listens on 127.0.0.1.

#[path = "../tests/support/ads.rs"]
mod ads;
/// Ports below the ephemeral range, as the tests pick them: a port picked
/// by binding port 0 can be taken by an outgoing connection before etcd
/// or a replica binds it.
#[path = "../tests/support/ports.rs"]
#[allow(dead_code, unreachable_pub)]
mod ports;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use ports::free_port;
use teal::state::EtcdOptions;
use teal::state::etcd::EtcdClient;
use tokio::process::{Child, Command};

fn binary(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|c| c.is_file())
        })
        .unwrap_or_else(|| panic!("no {name} on PATH; set {env}"))
}

/// The `teal` binary `--teal` names.
static TEAL: OnceLock<PathBuf> = OnceLock::new();

/// `--teal PATH`, or `target/<profile>/teal`, next to this example's
/// directory.
fn teal_binary() -> PathBuf {
    if let Some(t) = TEAL.get() {
        return t.clone();
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current exe: {e}"));
    let teal = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("teal"))
        .unwrap_or_else(|| panic!("no target directory"));
    assert!(
        teal.is_file(),
        "{} is missing: cargo build --release --bin teal",
        teal.display()
    );
    teal
}

struct Replica {
    child: Option<Child>,
    admin: u16,
    xds: u16,
    dir: PathBuf,
}

impl Replica {
    async fn start(&mut self, store: &str, lease: u64) {
        let log =
            std::fs::File::create(self.dir.join("teal.log")).unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(teal_binary())
            .args([
                "serve",
                "--store",
                store,
                "--leader-lease",
                &lease.to_string(),
            ])
            .arg("--state-dir")
            .arg(self.dir.join("local"))
            .args(["--xds-addr", &format!("127.0.0.1:{}", self.xds)])
            .args(["--admin-addr", &format!("127.0.0.1:{}", self.admin)])
            .env("TEAL_ADMIN_TOKEN", "secret")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start teal: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while cli(self.admin, &["status"]).await.0 != 0 {
            assert!(Instant::now() < deadline, "replica did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn cli(admin: u16, args: &[&str]) -> (i32, String) {
    let out = Command::new(teal_binary())
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(args)
        .env("TEAL_TOKEN", "secret")
        .output()
        .await
        .unwrap_or_else(|e| panic!("run the CLI: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Flips `web` through replica `admin`; the leader's admin port.
async fn flip(admin: u16, to: &str) -> Option<u16> {
    let (code, err) = cli(
        admin,
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
    if code != 0 {
        return None;
    }
    let leader = err
        .split("asking the leader at ")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .and_then(|a| a.trim().rsplit(':').next()?.parse().ok());
    Some(leader.unwrap_or(admin))
}

fn arg_text(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Per class (state, proxies, replica records): revisions, keys, bytes.
type Costs = [(usize, usize, usize); 3];

/// One write etcd reported: its revision, key and value size.
struct Write {
    revision: i64,
    key: String,
    bytes: usize,
}

/// Every write under `prefix` from `revision` on, as etcd's watch reports
/// them, until the task is aborted.
async fn record_writes(
    etcd: &EtcdClient,
    prefix: &str,
    revision: i64,
) -> (Arc<Mutex<Vec<Write>>>, tokio::task::JoinHandle<()>) {
    let writes = Arc::new(Mutex::new(Vec::new()));
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let mut watch = etcd
        .watch_range(prefix.as_bytes().to_vec(), end, revision, false)
        .await
        .unwrap_or_else(|e| panic!("watch: {e}"));
    let sink = writes.clone();
    let task = tokio::spawn(async move {
        while let Ok(Some(answer)) = watch.answers.message().await {
            let mut sink = sink.lock().unwrap_or_else(|e| e.into_inner());
            for event in answer.events {
                if let Some(kv) = event.kv {
                    sink.push(Write {
                        revision: kv.mod_revision,
                        key: String::from_utf8_lossy(&kv.key).into_owned(),
                        bytes: kv.value.len(),
                    });
                }
            }
        }
    });
    (writes, task)
}

/// The current revision of etcd.
async fn revision(etcd: &EtcdClient) -> i64 {
    etcd.get(b"/bench/state")
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .1
}

/// etcd cost per flip at `n` simulated proxies spread over `replicas`.
async fn cost_with_proxies(
    etcd: &EtcdClient,
    replicas: &[Replica],
    n: usize,
    flips: usize,
    to: &mut &'static str,
) {
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let ports: Vec<u16> = replicas.iter().map(|r| r.xds).collect();
    let started = Instant::now();
    let mut sims = ads::connect(&ports, n, 0, 50, "edge", "public", seen_tx)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let mut first = 0;
    while first < n {
        match tokio::time::timeout(Duration::from_secs(120), seen.recv()).await {
            Ok(Some(_)) => first += 1,
            _ => panic!("only {first} of {n} simulated proxies got their routes"),
        }
    }
    // Their first rounds published, and mirrored by the leader.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let connected = started.elapsed();
    let (writes, task) = record_writes(etcd, "/bench/", revision(etcd).await + 1).await;
    let mut windows = Vec::new();
    let mut times = Vec::new();
    for _ in 0..flips {
        let from = revision(etcd).await;
        let t = Instant::now();
        assert!(
            flip(replicas[0].admin, to).await.is_some(),
            "flip at {n} proxies failed"
        );
        times.push(t.elapsed());
        *to = if *to == "green" { "blue" } else { "green" };
        tokio::time::sleep(Duration::from_millis(1500)).await;
        windows.push((from, revision(etcd).await));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    task.abort();
    sims.abort_all();
    while sims.join_next().await.is_some() {}
    let writes = std::mem::take(&mut *writes.lock().unwrap_or_else(|e| e.into_inner()));
    // Per flip: revisions, keys, bytes; state and proxies apart.
    let mut rows: Vec<Costs> = Vec::new();
    for (from, until) in &windows {
        let in_window: Vec<&Write> = writes
            .iter()
            .filter(|w| w.revision > *from && w.revision <= *until)
            .collect();
        let class = |w: &&Write, c: &str| w.key.starts_with(&format!("/bench/{c}"));
        let stat = |c: &str| {
            let of: Vec<&&Write> = in_window.iter().filter(|w| class(w, c)).collect();
            let revisions: BTreeSet<i64> = of.iter().map(|w| w.revision).collect();
            (
                revisions.len(),
                of.len(),
                of.iter().map(|w| w.bytes).sum::<usize>(),
            )
        };
        rows.push([stat("state"), stat("proxies"), stat("replicas")]);
    }
    let avg = |f: &dyn Fn(&Costs) -> usize| {
        rows.iter().map(|r| f(r) as f64).sum::<f64>() / rows.len().max(1) as f64
    };
    times.sort();
    println!(
        "| {n} | {:.1} | {:.1} | {:.1} | {:.0} | {:.1} | {:.0} | {:.0} ms | {:.0} ms | {:.1} | {} |",
        avg(&|r| r[0].0 + r[1].0),
        avg(&|r| r[1].0),
        avg(&|r| r[1].1),
        avg(&|r| r[1].2),
        avg(&|r| r[0].0),
        avg(&|r| r[0].2),
        times[times.len() / 2].as_secs_f64() * 1000.0,
        times[times.len() - 1].as_secs_f64() * 1000.0,
        avg(&|r| r[2].0),
        load_average(),
    );
    eprintln!("  ({n} proxies connected and published in {connected:?})");
    // Their keys gone before the next size.
    tokio::time::sleep(Duration::from_secs(2)).await;
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let kills = arg("--kills", 20);
    let flips = arg("--flips", 20);
    let lease = arg("--lease", 2) as u64;
    let proxy_flips = arg("--proxy-flips", 5);
    let sizes: Vec<usize> = arg_text("--proxies")
        .unwrap_or_else(|| "10,1000,10000".into())
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap_or_else(|e| panic!("--proxies: {e}")))
        .collect();
    if let Some(t) = arg_text("--teal") {
        let _ = TEAL.set(PathBuf::from(t));
    }
    println!(
        "teal {}; load average {}",
        teal_binary().display(),
        load_average()
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let (client_port, peer_port) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let _etcd = Command::new(binary("etcd", "TEAL_ETCD"))
        .args(["--name", "bench", "--data-dir"])
        .arg(dir.path().join("etcd"))
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("bench={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start etcd: {e}"));
    let etcd = EtcdClient::new(EtcdOptions::new(
        vec![format!("127.0.0.1:{client_port}")],
        "/bench/",
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let deadline = Instant::now() + Duration::from_secs(20);
    while etcd.get(b"/bench/state").await.is_err() {
        assert!(Instant::now() < deadline, "etcd did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let store = format!("etcd://127.0.0.1:{client_port}/bench/");
    let mut replicas: Vec<Replica> = (0..3)
        .map(|i| Replica {
            child: None,
            admin: free_port(),
            xds: free_port(),
            dir: dir.path().join(format!("r{i}")),
        })
        .collect();
    for r in &mut replicas {
        std::fs::create_dir_all(&r.dir).unwrap_or_else(|e| panic!("{e}"));
        r.start(&store, lease).await;
    }

    // etcd cost per flip.
    let (_, before) = etcd
        .get(b"/bench/state")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut to = "green";
    for _ in 0..flips {
        assert!(flip(replicas[0].admin, to).await.is_some(), "flip failed");
        to = if to == "green" { "blue" } else { "green" };
    }
    let (kv, after) = etcd
        .get(b"/bench/state")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let value = kv.map_or(0, |kv| kv.value.len());
    let writes = (after - before) as f64 / flips as f64;
    println!(
        "etcd per flip (0 connected proxies, {flips} flips): {writes:.1} writes, \
         state value {value} bytes, ~{:.0} bytes written",
        writes * value as f64
    );

    // etcd cost per flip with simulated proxies.
    if !sizes.is_empty() {
        println!(
            "| proxies | etcd revisions per flip (all) | revisions: proxies | keys written: proxies | bytes written: proxies | revisions: state | bytes: state | flip to confirmation p50 | max | heartbeat revisions (apart) | load average |"
        );
        println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        for &n in &sizes {
            cost_with_proxies(&etcd, &replicas, n, proxy_flips, &mut to).await;
        }
    }

    // Failover.
    let mut samples = Vec::new();
    for k in 0..kills {
        // A replica just restarted may not know the leader yet.
        let started = Instant::now();
        let leader = loop {
            if let Some(l) = flip(replicas[0].admin, to).await {
                break l;
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "no flip before the kill"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        to = if to == "green" { "blue" } else { "green" };
        let li = replicas
            .iter()
            .position(|r| r.admin == leader)
            .expect("leader is a replica");
        if let Some(mut c) = replicas[li].child.take() {
            let _ = c.kill().await;
        }
        let killed = Instant::now();
        let survivor = replicas[(li + 1) % replicas.len()].admin;
        loop {
            if flip(survivor, to).await.is_some() {
                break;
            }
            assert!(
                killed.elapsed() < Duration::from_secs(60),
                "no failover in 60 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = killed.elapsed();
        to = if to == "green" { "blue" } else { "green" };
        println!(
            "kill {k}: leader :{leader} killed; a flip through :{survivor} succeeded after {took:?}"
        );
        samples.push(took);
        replicas[li].start(&store, lease).await;
    }
    if !samples.is_empty() {
        samples.sort();
        println!(
            "failover over {} kills (lease {lease} s): p50 {:?}, max {:?}; load average {}",
            samples.len(),
            samples[samples.len() / 2],
            samples[samples.len() - 1],
            load_average()
        );
    }
}
