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
//!
//! Everything listens on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use teal::state::EtcdOptions;
use teal::state::etcd::EtcdClient;
use tokio::process::{Child, Command};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port: {e}"))
}

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

/// `target/<profile>/teal`, next to this example's directory.
fn teal_binary() -> PathBuf {
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
            "failover over {} kills (lease {lease} s): p50 {:?}, max {:?}",
            samples.len(),
            samples[samples.len() / 2],
            samples[samples.len() - 1]
        );
    }
}
