//! Replicas of teal sharing one etcd, two ways:
//!
//! - [`Replica`]: as operators run them, `teal serve --store etcd://...`
//!   as a child process (`TEAL_ADMIN_TOKEN=secret`), which can be killed
//!   with `kill -9` and started again on the same ports, store and state
//!   directory; and the real CLI to drive one ([`cli`]).
//! - [`InProcessReplica`]: all of `teal serve` in the test process, for a
//!   test that reads its controller and registry directly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use teal::admin::Backend;
use teal::rollout::{Operation, Outcome, Progress, RolloutError};
use teal::serve::{Running, ServeOptions, start as serve_start};
use teal::shutdown::{ShutdownTrigger, shutdown_channel};
use tokio::process::{Child, Command};
use tokio::sync::watch;

use super::etcd::Etcd;
use super::{Envoy, Protocol, free_port, render_bootstrap_replicas, teal_binary};

pub use super::TOKEN;

/// How a replica is started.
#[derive(Clone, Debug, Default)]
pub struct ReplicaSpec {
    /// `--store`.
    pub store: String,
    /// `--config` (none: the bundled config).
    pub config: Option<PathBuf>,
    /// `--leader-lease` in seconds.
    pub lease_secs: u64,
    /// More arguments of `teal serve`.
    pub args: Vec<String>,
    /// More environment variables.
    pub env: Vec<(String, String)>,
}

/// One `teal serve` replica, killed (SIGKILL) when dropped.
pub struct Replica {
    spec: ReplicaSpec,
    child: Option<Child>,
    /// `127.0.0.1:PORT` of its admin API.
    pub admin: String,
    /// Its xDS port.
    pub xds: u16,
    admin_port: u16,
    starts: usize,
    dir: tempfile::TempDir,
}

impl Replica {
    /// Starts a replica on free ports and waits until its admin API
    /// answers `teal status` and some replica leads.
    pub async fn start(spec: ReplicaSpec) -> Replica {
        let (admin_port, xds) = (free_port(), free_port());
        let mut r = Replica {
            spec,
            child: None,
            admin: format!("127.0.0.1:{admin_port}"),
            xds,
            admin_port,
            starts: 0,
            dir: tempfile::Builder::new()
                .prefix("teal-replica-")
                .tempdir()
                .expect("temp dir"),
        };
        r.restart().await;
        // A replica answers before the election is decided; a change sent
        // meanwhile is refused ("store unavailable": no one leads yet).
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let leads = r.json(&["status"]).await.is_some_and(|s| {
                s["replicas"]
                    .as_array()
                    .is_some_and(|all| all.iter().any(|x| x["leader"] == true))
            });
            if leads {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no replica leads 30 s after this one started:\n{}",
                r.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        r
    }

    fn spawn(&mut self) -> Child {
        self.starts += 1;
        let log = std::fs::File::create(self.log_path(self.starts)).expect("create the log");
        let mut cmd = Command::new(teal_binary());
        cmd.arg("serve")
            .arg("--store")
            .arg(&self.spec.store)
            .arg("--leader-lease")
            .arg(self.spec.lease_secs.max(1).to_string())
            .arg("--state-dir")
            .arg(self.dir.path().join("local"))
            .arg("--xds-addr")
            .arg(format!("127.0.0.1:{}", self.xds))
            .arg("--admin-addr")
            .arg(format!("127.0.0.1:{}", self.admin_port))
            .args(&self.spec.args)
            .env("TEAL_ADMIN_TOKEN", TOKEN)
            .env("TEAL_LOG", "info")
            .env_remove("TEAL_ADMIN_TOKENS")
            .env_remove("TEAL_STORE_PASSWORD");
        if let Some(config) = &self.spec.config {
            cmd.arg("--config").arg(config);
        }
        for (k, v) in &self.spec.env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start teal serve")
    }

    fn log_path(&self, start: usize) -> PathBuf {
        self.dir.path().join(format!("teal-{start}.log"))
    }

    /// Starts it (again, after [`Replica::kill9`]) on the same ports,
    /// store and state directory, and waits until it answers.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the replica still runs");
        let child = self.spawn();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while cli(&self.admin, &["status"]).await.0 != 0 {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("teal serve exited at start ({status}):\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the replica did not answer within 30 s:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts a replica expecting it to exit at start-up (within 30 s),
    /// and returns how it exited and its log.
    pub async fn start_expecting_exit(spec: ReplicaSpec) -> (ExitStatus, String) {
        let mut r = Replica {
            spec,
            child: None,
            admin: String::new(),
            xds: free_port(),
            admin_port: free_port(),
            starts: 0,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        let mut child = r.spawn();
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .unwrap_or_else(|_| panic!("teal serve kept running:\n{}", r.log()))
            .expect("wait for teal serve");
        (status, r.log())
    }

    /// Whether it runs (it was not killed, or was restarted since).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `kill -9`, and waits until it is gone.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill -9");
        }
    }

    /// Sends it `signal` (`STOP`, `CONT`, `TERM`) with kill(1).
    pub fn signal(&self, signal: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .expect("the replica runs");
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("kill(1)");
        assert!(status.success(), "kill -{signal} {pid}");
    }

    /// `SIGTERM`, and waits (up to 30 s) until it exits.
    pub async fn terminate(&mut self) -> ExitStatus {
        self.signal("TERM");
        let mut child = self.child.take().expect("the replica runs");
        tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .unwrap_or_else(|_| panic!("teal serve did not stop on SIGTERM:\n{}", self.log()))
            .expect("wait for teal serve")
    }

    /// Every log it wrote, one start after another.
    pub fn log(&self) -> String {
        (1..=self.starts)
            .map(|n| {
                let text = std::fs::read_to_string(self.log_path(n)).unwrap_or_default();
                format!("---- start {n} of teal serve ({}) ----\n{text}", self.admin)
            })
            .collect()
    }

    /// Runs the CLI against this replica.
    pub async fn cli(&self, args: &[&str]) -> (i32, String, String) {
        cli(&self.admin, args).await
    }

    /// `teal ARGS -o json` on this replica, if it answers.
    pub async fn json(&self, args: &[&str]) -> Option<Value> {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let (code, out, _) = cli(&self.admin, &all).await;
        (code == 0)
            .then(|| serde_json::from_str(&out).ok())
            .flatten()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if std::thread::panicking() && self.starts > 0 {
            // The end of each start's log: enough to see what went wrong.
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(150);
            eprintln!("{}", lines[from..].join("\n"));
        }
        if let Some(child) = &mut self.child {
            let _ = child.start_kill();
        }
    }
}

/// Runs the CLI against `admin` with the token: exit code, stdout, stderr.
pub async fn cli(admin: &str, args: &[&str]) -> (i32, String, String) {
    let out = cli_command(admin, args)
        .output()
        .await
        .expect("run the CLI");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The CLI against `admin` with the token, to spawn.
pub fn cli_command(admin: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(teal_binary());
    cmd.arg("--admin")
        .arg(admin)
        .args(args)
        .env("TEAL_TOKEN", TOKEN)
        .env_remove("TEAL_ADMIN")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Writes [`edge_groups_config`] to `dir/teal.yaml` and returns its path.
pub fn write_edge_groups_config(dir: &Path, blue: u16, green: u16, listeners: &[u16]) -> PathBuf {
    let path = dir.join("teal.yaml");
    std::fs::write(&path, edge_groups_config(blue, green, listeners)).expect("write the config");
    path
}

/// One real Envoy per port of `listeners`, the `i`th in group `edge{i}`
/// (as [`edge_groups_config`] names them), each listing every replica of
/// `xds` (round robin) and speaking `protocol(i)`; returns once each
/// answers from blue on its listener.
pub async fn edge_envoys(
    xds: &[u16],
    listeners: &[u16],
    protocol: impl Fn(usize) -> Protocol,
) -> Vec<Envoy> {
    let mut envoys = Vec::new();
    for i in 0..listeners.len() {
        let group = format!("edge{i}");
        let node_id = super::envoy::node_id(&group);
        let bootstrap = render_bootstrap_replicas(&node_id, &group, xds, protocol(i));
        envoys.push(Envoy::start_bootstrap(node_id, &group, &bootstrap).await);
    }
    for (envoy, port) in envoys.iter().zip(listeners) {
        envoy.wait_for_body(*port, "blue").await;
    }
    envoys
}

/// Service web on blue and green (checked on `/healthz`), and one group
/// per Envoy, each with its own listener port routing all of web.
pub fn edge_groups_config(blue: u16, green: u16, listeners: &[u16]) -> String {
    let mut yaml = format!(
        "services:
  web:
    live: blue
    connect_timeout: 1s
    timeout: 5s
    fleets:
      blue:
        endpoints:
          - 127.0.0.1:{blue}
      green:
        endpoints:
          - 127.0.0.1:{green}
    checks:
      health:
        path: /healthz
        timeout: 1s
groups:
"
    );
    for (i, port) in listeners.iter().enumerate() {
        yaml.push_str(&format!(
            "  edge{i}:
    listeners:
      public:
        kind: edge
        address: 127.0.0.1:{port}
        virtual_hosts:
          site:
            domains: ['*']
            routes:
              - prefix: /
                service: web
"
        ));
    }
    yaml
}

/// Each running replica's own proxies (those `teal proxies` lists with no
/// other replica named), by admin address.
pub async fn spread(replicas: &[Replica]) -> BTreeMap<String, usize> {
    let mut by = BTreeMap::new();
    for r in replicas.iter().filter(|r| r.is_running()) {
        let own = r.json(&["proxies"]).await.map_or(0, |p| {
            p["proxies"].as_array().map_or(0, |all| {
                all.iter().filter(|p| p["replica"].is_null()).count()
            })
        });
        by.insert(r.admin.clone(), own);
    }
    by
}

/// Waits up to `within` until `check` holds for the running replicas' own
/// proxies (by admin address), and returns them.
pub async fn wait_spread(
    replicas: &[Replica],
    within: Duration,
    what: &str,
    check: impl Fn(&BTreeMap<String, usize>) -> bool,
) -> BTreeMap<String, usize> {
    let deadline = Instant::now() + within;
    loop {
        let now = spread(replicas).await;
        if check(&now) {
            return now;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; proxies per replica {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A proxy of group `edge`, node `node`, connected to the xDS port `port`:
/// it takes every type's first answer, ACKs it, and then never ACKs
/// again, so a flip waits for it until its timeout. Gone when the handle
/// is aborted or the replica goes.
pub async fn stubborn_proxy(port: u16, node: &str) -> tokio::task::JoinHandle<()> {
    stubborn_proxy_then(port, node, None).await
}

/// [`stubborn_proxy`] that, when its replica goes, reconnects to `then`
/// (as Envoy does, to another replica) and ACKs everything there; with no
/// `then` it is gone for good.
pub async fn stubborn_proxy_then(
    port: u16,
    node: &str,
    then: Option<u16>,
) -> tokio::task::JoinHandle<()> {
    use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
    fn ack(answer: &DiscoveryResponse) -> DiscoveryRequest {
        DiscoveryRequest {
            type_url: answer.type_url.clone(),
            version_info: answer.version_info.clone(),
            response_nonce: answer.nonce.clone(),
            ..Default::default()
        }
    }
    let node = node.to_owned();
    let (tx, mut stream) = super::ads_subscribed_to_all(port, &node).await;
    tokio::spawn(async move {
        let mut acked = std::collections::HashSet::new();
        while let Ok(Some(answer)) = stream.message().await {
            if acked.insert(answer.type_url.clone()) {
                let _ = tx.send(ack(&answer)).await;
            }
        }
        drop(tx);
        let Some(port) = then else {
            return;
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (tx, mut stream) = super::ads_subscribed_to_all(port, &node).await;
        while let Ok(Some(answer)) = stream.message().await {
            let _ = tx.send(ack(&answer)).await;
        }
    })
}

/// The index in `replicas` of the one leading, as the running replicas'
/// `teal status` lists it, once one does (up to `within`).
pub async fn wait_leader(replicas: &[Replica], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        for r in replicas.iter().filter(|r| r.is_running()) {
            let Some(st) = r.json(&["status"]).await else {
                continue;
            };
            let leader = st["replicas"].as_array().and_then(|rs| {
                rs.iter()
                    .find(|x| x["leader"] == true)
                    .and_then(|x| x["admin"].as_str().map(str::to_owned))
            });
            if let Some(i) =
                leader.and_then(|a| replicas.iter().position(|x| x.admin == a && x.is_running()))
            {
                return i;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no running replica listed as leading within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A replica in the test process: `teal serve` on the bundled config with
/// its store under `prefix` on an etcd, started as the command starts it
/// ([`teal::serve::start`]). Stops when dropped.
pub struct InProcessReplica {
    /// What `teal serve` runs: its controller, registry and addresses.
    pub running: Running,
    trigger: ShutdownTrigger,
}

impl InProcessReplica {
    /// Starts a replica on `etcd` under `prefix` with a leader lease of
    /// `lease`.
    ///
    /// # Panics
    ///
    /// If it does not start.
    pub async fn start(etcd: &Etcd, prefix: &str, lease: Duration) -> InProcessReplica {
        let (trigger, shutdown) = shutdown_channel();
        let opts = ServeOptions {
            etcd: Some(etcd.options(prefix)),
            leader_lease: lease,
            ..ServeOptions::local(None)
        };
        let running = serve_start(opts, shutdown)
            .await
            .unwrap_or_else(|e| panic!("replica did not start: {e}"));
        InProcessReplica { running, trigger }
    }

    /// Asks it to flip `web` to `to`, without checks, waiting up to
    /// `timeout` for the proxies: the flip's progress, or why it refused.
    pub async fn flip(
        &self,
        to: &str,
        timeout: Duration,
    ) -> Result<watch::Receiver<Progress>, RolloutError> {
        self.running
            .controller
            .start(
                Operation::Flip {
                    service: "web".into(),
                    to: Some(to.into()),
                    skip_checks: true,
                    timeout,
                },
                "test",
            )
            .await
    }

    /// Starts its shutdown, as SIGTERM would.
    pub fn stop(&self) {
        self.trigger.trigger();
    }
}

/// How the operation whose progress is `progress` ended.
///
/// # Panics
///
/// If it has not ended `within`.
pub async fn outcome(mut progress: watch::Receiver<Progress>, within: Duration) -> Outcome {
    tokio::time::timeout(within, progress.wait_for(|p| p.outcome.is_some()))
        .await
        .unwrap_or_else(|_| panic!("an outcome within {within:?}"))
        .expect("progress")
        .outcome
        .clone()
        .expect("an outcome")
}
