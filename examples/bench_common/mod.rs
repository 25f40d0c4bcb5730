//! Shared parts of `bench_flip` and `bench_peers`: the systems that switch
//! traffic from a blue fleet to a green one (teal with Envoys, Envoy on
//! file-based xDS, nginx, HAProxy), a keep-alive HTTP/1.1 prober, steady
//! load, and CPU and memory readings from `/proc`.
//!
//! Every system fronts the same two local upstreams (one answers `blue`,
//! the other `green`) with one or more proxies on 127.0.0.1, each on its
//! own port. A switch sends all traffic to the other fleet. The prober
//! sends `GET /` to every proxy at a fixed rate on a kept-alive connection
//! and records which fleet answered, so the data plane tells when every
//! proxy serves the new fleet.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::support;

/// The two fleets.
pub const FLEETS: [&str; 2] = ["blue", "green"];

/// What one request got back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// 200 from the fleet with this index in [`FLEETS`].
    Fleet(u8),
    /// The connection was closed before any byte of the answer, on a
    /// reused keep-alive connection: most HTTP clients retry these
    /// (the request cannot have been processed).
    ClosedIdle,
    /// Anything else: refused, reset mid-answer, timeout, non-200.
    Failed,
}

/// One request: when it was sent, when its answer came, what it was.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// When the request was written.
    pub sent: Instant,
    /// When the answer (or the error) came.
    pub recv: Instant,
    /// The answer.
    pub answer: Answer,
}

/// A kept-alive HTTP/1.1 connection to `127.0.0.1:port`.
struct Conn {
    port: u16,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    fn new(port: u16) -> Conn {
        Conn {
            port,
            stream: None,
            buf: Vec::with_capacity(1024),
        }
    }

    /// `GET /` and the answer; reconnects when needed.
    async fn get(&mut self) -> Answer {
        match tokio::time::timeout(Duration::from_secs(2), self.get_inner()).await {
            Ok(a) => a,
            Err(_) => {
                self.stream = None;
                Answer::Failed
            }
        }
    }

    async fn get_inner(&mut self) -> Answer {
        let reused = self.stream.is_some();
        if self.stream.is_none() {
            match TcpStream::connect(("127.0.0.1", self.port)).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    self.stream = Some(s);
                }
                Err(_) => return Answer::Failed,
            }
        }
        let Some(stream) = self.stream.as_mut() else {
            return Answer::Failed;
        };
        if stream
            .write_all(b"GET / HTTP/1.1\r\nhost: bench\r\n\r\n")
            .await
            .is_err()
        {
            self.stream = None;
            return if reused {
                Answer::ClosedIdle
            } else {
                Answer::Failed
            };
        }
        self.buf.clear();
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let close = head.contains("connection: close");
                while self.buf.len() < end + 4 + len {
                    let mut chunk = [0u8; 1024];
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => {
                            self.stream = None;
                            return Answer::Failed;
                        }
                        Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body = &self.buf[end + 4..end + 4 + len];
                let ok = head.starts_with("http/1.1 200");
                if close {
                    self.stream = None;
                }
                return match FLEETS.iter().position(|f| f.as_bytes() == body) {
                    Some(i) if ok => Answer::Fleet(i as u8),
                    _ => Answer::Failed,
                };
            }
            let mut chunk = [0u8; 1024];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    let nothing = self.buf.is_empty();
                    self.stream = None;
                    return if reused && nothing {
                        Answer::ClosedIdle
                    } else {
                        Answer::Failed
                    };
                }
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One `GET /` on a fresh connection.
pub async fn get_once(port: u16) -> Answer {
    Conn::new(port).get().await
}

/// Waits until `port` answers from fleet `fleet`.
pub async fn wait_for_fleet(port: u16, fleet: u8, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if get_once(port).await == Answer::Fleet(fleet) {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "127.0.0.1:{port} did not answer {} within {timeout:?}",
                FLEETS[fleet as usize]
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Requests sent at a fixed rate on one kept-alive connection, recorded.
pub struct Sender {
    /// Every request so far.
    pub samples: Arc<Mutex<Vec<Sample>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sender {
    /// Starts sending to `127.0.0.1:port` every `period` (or as fast as
    /// answers come, if slower).
    pub fn start(port: u16, period: Duration) -> Sender {
        let samples = Arc::new(Mutex::new(Vec::with_capacity(1 << 16)));
        let out = samples.clone();
        let task = tokio::spawn(async move {
            let mut conn = Conn::new(port);
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let sent = Instant::now();
                let answer = conn.get().await;
                let s = Sample {
                    sent,
                    recv: Instant::now(),
                    answer,
                };
                if let Ok(mut v) = out.lock() {
                    v.push(s);
                }
            }
        });
        Sender { samples, task }
    }

    /// The samples sent at or after `since`.
    pub fn since(&self, since: Instant) -> Vec<Sample> {
        let v = self.samples.lock().map(|v| v.clone()).unwrap_or_default();
        v.into_iter().filter(|s| s.sent >= since).collect()
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// When a proxy's answers (sent after the switch command) last changed to
/// `fleet` for good: the receive time of the first answer from `fleet`
/// after which every answer was from `fleet`, if at least `settle` such
/// answers came.
pub fn switched_at(samples: &[Sample], fleet: u8, settle: usize) -> Option<Instant> {
    let last_other = samples
        .iter()
        .rposition(|s| s.answer != Answer::Fleet(fleet));
    let first_good = last_other.map_or(0, |i| i + 1);
    (samples.len() - first_good >= settle).then(|| samples[first_good].recv)
}

/// CPU time (user + system, including waited-for children) of the process
/// trees under `roots`, and their resident memory (KiB).
pub fn tree_usage(roots: &[u32]) -> (Duration, u64) {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1).and_then(|v| v.parse().ok()))
            {
                all.push((pid, ppid));
            }
        }
    }
    let mut tree: Vec<u32> = roots.to_vec();
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(all.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    let (mut ticks, mut rss) = (0u64, 0u64);
    for pid in tree {
        if let Some(f) = stat_fields(pid) {
            // utime, stime, cutime, cstime
            ticks += (11..15)
                .filter_map(|k| f.get(k).and_then(|v| v.parse::<u64>().ok()))
                .sum::<u64>();
        }
        rss += rss_kib(pid).unwrap_or(0);
    }
    // USER_HZ is 100 on every common Linux configuration.
    (Duration::from_millis(ticks * 10), rss)
}

/// CPU time of this process's waited-for children (commands it ran).
pub fn children_cpu() -> Duration {
    let ticks: u64 = stat_fields(std::process::id())
        .map(|f| {
            (13..15)
                .filter_map(|k| f.get(k).and_then(|v| v.parse::<u64>().ok()))
                .sum()
        })
        .unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

/// The fields of `/proc/<pid>/stat` after the command name: `[0]` is the
/// state, `[1]` the parent pid, `[11]` utime...
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    Some(after.split_whitespace().map(str::to_owned).collect())
}

/// Resident memory of one process, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The value at quantile `p` of `sorted` (nearest rank).
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Milliseconds with one decimal.
pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

/// The systems compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// teal (in a child process) feeding Envoys over ADS; a switch is a
    /// `flip` through the controller.
    Teal,
    /// As [`Kind::Teal`], but a switch is the real `teal flip` command (the
    /// `teal` binary as a subprocess, through the admin API), so the
    /// command's start-up, connection and return count.
    TealCli,
    /// As [`Kind::Teal`], with the xDS port on mTLS: teal requires a
    /// client certificate, each Envoy presents one whose SPIFFE ID its
    /// group admits (`envoy/edge-mtls.yaml`).
    TealMtls,
    /// Three teal replicas (child processes) on one local etcd (`$TEAL_ETCD`
    /// or `etcd` on PATH), the Envoys spread over them in turn; a switch is
    /// a flip through the controller of whichever replica leads, which
    /// waits for every replica's proxies.
    TealHa,
    /// Envoys reading CDS and LDS from files and RDS from one shared file;
    /// a switch is an atomic move of a new RDS file over the old one.
    EnvoyFile,
    /// As [`Kind::EnvoyFile`], but each Envoy reads its own RDS file and a
    /// switch renames a new one over each in turn, as a deployment script
    /// that configures proxies one by one would.
    EnvoyFileEach,
    /// As [`Kind::EnvoyFile`], but the RDS file holds the very
    /// RouteConfiguration teal serves (preview routes, fleet headers,
    /// weighted clusters), so the two compare on the same route work.
    EnvoyFileTealRoutes,
    /// nginx; a switch rewrites the upstream and runs `nginx -s reload`.
    Nginx,
    /// HAProxy; a switch sets server weights on its runtime API.
    Haproxy,
}

impl Kind {
    /// Parses a name as printed by [`Kind::name`].
    pub fn parse(s: &str) -> anyhow::Result<Kind> {
        Ok(match s {
            "teal" => Kind::Teal,
            "teal-cli" => Kind::TealCli,
            "teal-mtls" => Kind::TealMtls,
            "teal-ha" => Kind::TealHa,
            "envoy-file" => Kind::EnvoyFile,
            "envoy-file-each" => Kind::EnvoyFileEach,
            "envoy-file-teal-routes" => Kind::EnvoyFileTealRoutes,
            "nginx" => Kind::Nginx,
            "haproxy" => Kind::Haproxy,
            _ => anyhow::bail!(
                "unknown system {s}; use teal, teal-cli, teal-mtls, envoy-file, envoy-file-each, envoy-file-teal-routes, nginx or haproxy"
            ),
        })
    }

    /// Whether teal is the control plane.
    pub fn is_teal(self) -> bool {
        matches!(
            self,
            Kind::Teal | Kind::TealCli | Kind::TealMtls | Kind::TealHa
        )
    }

    /// Name in output.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Teal => "teal",
            Kind::TealCli => "teal-cli",
            Kind::TealMtls => "teal-mtls",
            Kind::TealHa => "teal-ha",
            Kind::EnvoyFile => "envoy-file",
            Kind::EnvoyFileEach => "envoy-file-each",
            Kind::EnvoyFileTealRoutes => "envoy-file-teal-routes",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
        }
    }
}

/// The RouteConfiguration `web` that teal serves an edge listener named
/// `web` routing `/` to service `web` with all traffic on `fleet`, as an
/// RDS file in Envoy's JSON form (cluster names match the file-based CDS).
fn teal_rds(upstreams: [u16; 2], fleet: u8) -> anyhow::Result<String> {
    use prost::Message;
    let [blue, green] = upstreams;
    let yaml = format!(
        "services:\n  web:\n    live: blue\n    fleets:\n      blue: {{endpoints: [127.0.0.1:{blue}]}}\n      green: {{endpoints: [127.0.0.1:{green}]}}\ngroups:\n  g:\n    listeners:\n      web:\n        kind: edge\n        address: 127.0.0.1:1\n        virtual_hosts:\n          all:\n            domains: [\"*\"]\n            routes: [{{prefix: /, service: web}}]\n"
    );
    let config = teal::config::Config::parse(&yaml, "bench").map_err(|d| anyhow::anyhow!("{d}"))?;
    let mut weights = teal::config::Weights::initial(&config);
    let split = std::collections::BTreeMap::from([(FLEETS[usize::from(fleet)].to_owned(), 100)]);
    weights.set(&config, "web", &split)?;
    let input = teal::config::translate(&config, &weights);
    let route = input
        .groups
        .get("g")
        .and_then(|g| g.routes.first())
        .ok_or_else(|| anyhow::anyhow!("no route configuration"))?;
    let mut json = teal::config::render::message_to_json(
        "envoy.config.route.v3.RouteConfiguration",
        &route.encode_to_vec(),
    )?;
    if let Some(fields) = json.as_object_mut() {
        fields.insert(
            "@type".into(),
            "type.googleapis.com/envoy.config.route.v3.RouteConfiguration".into(),
        );
    }
    Ok(serde_json::to_string(
        &serde_json::json!({ "resources": [json] }),
    )?)
}

/// `command` with no input or output, killed when its `Child` drops.
fn quiet(command: &mut Command) -> &mut Command {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
}

/// teal's answer to one flip, from its child process.
#[derive(Clone, Copy, Debug)]
pub struct TealFlip {
    /// First push to last ACK, from the rollout's history entry.
    pub convergence: Duration,
    /// From the command reaching the controller until the outcome.
    pub command_to_outcome: Duration,
}

/// One running system: its proxies' ports and how to switch it.
pub struct System {
    /// Which.
    pub kind: Kind,
    /// The listener port of every proxy.
    pub ports: Vec<u16>,
    /// Processes whose CPU counts (proxies and control plane).
    pub pids: Vec<u32>,
    /// The fleet now served.
    pub live: u8,
    dir: tempfile::TempDir,
    children: Vec<Child>,
    envoys: Vec<support::Envoy>,
    /// The teal processes: one, or the replicas of [`Kind::TealHa`].
    teal: Vec<TealChild>,
    /// Which of `teal` led the last flip.
    leader: usize,
    /// For [`Kind::TealHa`]: the etcd the replicas share.
    etcd: Option<support::etcd::Etcd>,
    /// For [`Kind::TealCli`]: the `teal` binary and the admin address.
    cli: Option<(PathBuf, String)>,
    /// For [`Kind::TealMtls`]: the certificates (their files live as long
    /// as this).
    pki: Option<support::pki::Pki>,
    upstreams: [u16; 2],
}

/// The admin token the teal child accepts and `teal flip` sends.
const TOKEN: &str = "bench-token";

struct TealChild {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl System {
    /// Starts `kind` with `proxies` proxies in front of the upstreams on
    /// ports `upstreams` (blue, green), serving blue, and waits until
    /// every proxy answers from blue.
    pub async fn start(kind: Kind, upstreams: [u16; 2], o: &RunOptions) -> anyhow::Result<System> {
        let proxies = o.proxies;
        let dir = tempfile::Builder::new().prefix("teal-bench-").tempdir()?;
        let mut sys = System {
            kind,
            ports: listen_ports(proxies)?,
            pids: Vec::new(),
            live: 0,
            dir,
            children: Vec::new(),
            envoys: Vec::new(),
            teal: Vec::new(),
            leader: 0,
            etcd: None,
            cli: None,
            pki: None,
            upstreams,
        };
        match kind {
            Kind::Teal | Kind::TealCli | Kind::TealMtls | Kind::TealHa => sys.start_teal(o).await?,
            Kind::EnvoyFile | Kind::EnvoyFileEach | Kind::EnvoyFileTealRoutes => {
                sys.start_envoy_file().await?
            }
            Kind::Nginx => sys.start_nginx()?,
            Kind::Haproxy => sys.start_haproxy()?,
        }
        for &port in &sys.ports {
            wait_for_fleet(port, 0, Duration::from_secs(120)).await?;
        }
        Ok(sys)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn start_teal(&mut self, o: &RunOptions) -> anyhow::Result<()> {
        let own_session = o.teal_own_session;
        let [blue, green] = self.upstreams;
        let mut yaml = format!(
            "services:\n  web:\n    live: blue\n    fleets:\n      blue: {{endpoints: [127.0.0.1:{blue}]}}\n      green: {{endpoints: [127.0.0.1:{green}]}}\ngroups:\n"
        );
        let mtls = self.kind == Kind::TealMtls;
        for (i, port) in self.ports.iter().enumerate() {
            if mtls {
                yaml.push_str(&format!(
                    "  g{i}:\n    identities: [\"spiffe://bench.teal/g{i}\"]\n"
                ));
            } else {
                yaml.push_str(&format!("  g{i}:\n"));
            }
            yaml.push_str(&format!(
                "    listeners:\n      main:\n        kind: edge\n        address: 127.0.0.1:{port}\n        virtual_hosts:\n          all:\n            domains: [\"*\"]\n            routes: [{{prefix: /, service: web}}]\n"
            ));
        }
        let config = self.path("teal.yaml");
        std::fs::write(&config, yaml)?;
        if self.kind == Kind::TealHa {
            self.etcd = Some(support::etcd::Etcd::start().await);
        }
        let replicas = if self.kind == Kind::TealHa { 3 } else { 1 };
        let mut client_certs = Vec::new();
        let mut xds_ports = Vec::new();
        for _ in 0..replicas {
            // `setsid` (util-linux) starts a new session and then executes
            // the program in place, so the pid stays the child's.
            let exe = std::env::current_exe()?;
            let mut command = if own_session {
                let mut c = std::process::Command::new("setsid");
                c.arg(exe);
                c
            } else {
                std::process::Command::new(exe)
            };
            command.arg("--teal-child").arg(&config);
            if let Some(etcd) = &self.etcd {
                command.arg("--etcd").arg(etcd.endpoint());
            }
            match self.kind {
                Kind::TealCli => {
                    let tokens = self.path("tokens");
                    std::fs::write(&tokens, format!("bench:{TOKEN}\n"))?;
                    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600))?;
                    command.arg("--tokens").arg(&tokens);
                    let teal = o.teal_binary.clone().ok_or_else(|| {
                        anyhow::anyhow!("teal-cli needs the teal binary (cargo build --release --bin teal, or --teal PATH)")
                    })?;
                    anyhow::ensure!(
                        teal.exists(),
                        "no teal binary at {} (cargo build --release --bin teal, or --teal PATH)",
                        teal.display()
                    );
                    self.cli = Some((teal, String::new()));
                }
                Kind::TealMtls => {
                    let pki = support::pki::Pki::new("bench");
                    let server = pki.server("teal");
                    command
                        .arg("--tls")
                        .arg(&server.cert)
                        .arg(&server.key)
                        .arg(&pki.ca);
                    for i in 0..self.ports.len() {
                        client_certs.push(
                            pki.spiffe(&format!("g{i}"), &format!("spiffe://bench.teal/g{i}")),
                        );
                    }
                    self.pki = Some(pki);
                }
                _ => {}
            }
            let mut child = command
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .map_err(|e| {
                    if own_session {
                        anyhow::anyhow!(
                            "cannot start teal with setsid ({e}); install util-linux or pass --teal-session shared"
                        )
                    } else {
                        anyhow::anyhow!("cannot start teal: {e}")
                    }
                })?;
            let stdin = child.stdin.take().ok_or_else(|| anyhow::anyhow!("stdin"))?;
            let mut stdout = std::io::BufReader::new(
                child
                    .stdout
                    .take()
                    .ok_or_else(|| anyhow::anyhow!("stdout"))?,
            );
            let mut line = String::new();
            stdout.read_line(&mut line)?;
            let said: Vec<&str> = line.split_whitespace().collect();
            let (xds, admin) = match said[..] {
                ["xds", xds, "admin", admin] => (xds.parse::<u16>()?, admin.to_owned()),
                _ => anyhow::bail!("teal child said {line:?}"),
            };
            if let Some((_, a)) = &mut self.cli {
                *a = admin;
            }
            xds_ports.push(xds);
            self.pids.push(child.id());
            self.teal.push(TealChild {
                child,
                stdin,
                stdout,
            });
        }
        // Start Envoys a few at a time: each one's start-up is CPU-bound.
        let mut set = tokio::task::JoinSet::new();
        for i in 0..self.ports.len() {
            let group = format!("g{i}");
            let xds = xds_ports[i % xds_ports.len()];
            let (node, bootstrap) = match (&self.pki, client_certs.get(i)) {
                (Some(pki), Some(pair)) => (group.clone(), mtls_bootstrap(&group, xds, pki, pair)?),
                _ => {
                    let node = support::envoy::node_id(&group);
                    let b = support::render_bootstrap(&node, &group, xds, support::Protocol::Sotw);
                    (node, b)
                }
            };
            let bootstrap = if o.load_reports {
                bootstrap
            } else {
                without_load_reports(&bootstrap)?
            };
            set.spawn(async move {
                let envoy = support::Envoy::start_bootstrap(node, &group, &bootstrap).await;
                (i, envoy)
            });
            if set.len() >= 4
                && let Some(done) = set.join_next().await
            {
                self.envoys.push(done?.1);
            }
        }
        while let Some(done) = set.join_next().await {
            self.envoys.push(done?.1);
        }
        self.pids.extend(envoy_children());
        Ok(())
    }

    /// The RDS file Envoy `i` watches: its own with
    /// [`Kind::EnvoyFileEach`], else the shared one.
    fn rds_file(&self, i: usize) -> PathBuf {
        if self.kind == Kind::EnvoyFileEach {
            self.path(&format!("rds-{i}.yaml"))
        } else {
            self.path("rds.yaml")
        }
    }

    fn envoy_file_rds(&self, fleet: u8) -> anyhow::Result<String> {
        if self.kind == Kind::EnvoyFileTealRoutes {
            return teal_rds(self.upstreams, fleet);
        }
        Ok(format!(
            "resources:\n- \"@type\": type.googleapis.com/envoy.config.route.v3.RouteConfiguration\n  name: web\n  virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n    - match: {{prefix: /}}\n      route: {{cluster: web-{}}}\n",
            FLEETS[fleet as usize]
        ))
    }

    async fn start_envoy_file(&mut self) -> anyhow::Result<()> {
        // Each Envoy watching files holds 3 inotify instances here (CDS,
        // LDS and RDS files); the per-user default limit is 128.
        let limit: usize = std::fs::read_to_string("/proc/sys/fs/inotify/max_user_instances")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(usize::MAX);
        anyhow::ensure!(
            3 * self.ports.len() + 16 <= limit,
            "{} file-based Envoys need about {} inotify instances and \
             fs.inotify.max_user_instances is {limit}; raise it for the run, e.g. \
             `sysctl -w fs.inotify.max_user_instances=1024` (and set it back after)",
            self.ports.len(),
            3 * self.ports.len()
        );
        let mut cds = String::from("resources:\n");
        for (fleet, port) in FLEETS.iter().zip(self.upstreams) {
            cds.push_str(&format!(
                "- \"@type\": type.googleapis.com/envoy.config.cluster.v3.Cluster\n  name: web-{fleet}\n  type: STATIC\n  connect_timeout: 1s\n  load_assignment:\n    cluster_name: web-{fleet}\n    endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}}}]}}]\n"
            ));
        }
        std::fs::write(self.path("cds.yaml"), cds)?;
        std::fs::write(self.path("rds.yaml"), self.envoy_file_rds(0)?)?;
        for (i, port) in self.ports.clone().into_iter().enumerate() {
            let rds = self.rds_file(i);
            if self.kind == Kind::EnvoyFileEach {
                std::fs::write(&rds, self.envoy_file_rds(0)?)?;
            }
            let lds = format!(
                "resources:\n- \"@type\": type.googleapis.com/envoy.config.listener.v3.Listener\n  name: main\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}\n  filter_chains:\n  - filters:\n    - name: envoy.filters.network.http_connection_manager\n      typed_config:\n        \"@type\": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager\n        stat_prefix: main\n        rds:\n          route_config_name: web\n          config_source:\n            path_config_source: {{path: {rds}}}\n            resource_api_version: V3\n        http_filters:\n        - name: envoy.filters.http.router\n          typed_config: {{\"@type\": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}\n",
                rds = rds.display()
            );
            let lds_path = self.path(&format!("lds-{i}.yaml"));
            std::fs::write(&lds_path, lds)?;
            let bootstrap = format!(
                "node: {{id: file-{i}, cluster: file}}\nadmin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}\ndynamic_resources:\n  cds_config:\n    path_config_source: {{path: {cds}}}\n    resource_api_version: V3\n  lds_config:\n    path_config_source: {{path: {lds}}}\n    resource_api_version: V3\n",
                cds = self.path("cds.yaml").display(),
                lds = lds_path.display()
            );
            let bootstrap_path = self.path(&format!("bootstrap-{i}.yaml"));
            std::fs::write(&bootstrap_path, bootstrap)?;
            let log = std::fs::File::create(self.path(&format!("envoy-{i}.log")))?;
            let child = Command::new(support::envoy_binary())
                .arg("-c")
                .arg(&bootstrap_path)
                .args([
                    "--use-dynamic-base-id",
                    "--concurrency",
                    "1",
                    "--log-level",
                    "warn",
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()?;
            self.pids.extend(child.id());
            self.children.push(child);
            // Start them a few at a time, as for teal: 50 Envoys starting
            // at once on two cores can take over a minute.
            if i % 4 == 3 {
                for (k, &p) in self.ports[i - 3..=i].iter().enumerate() {
                    if let Err(e) = wait_for_fleet(p, 0, Duration::from_secs(120)).await {
                        let log = self.path(&format!("envoy-{}.log", i - 3 + k));
                        let log = std::fs::read_to_string(log).unwrap_or_default();
                        anyhow::bail!("{e}; Envoy's log:\n{log}");
                    }
                }
            }
        }
        Ok(())
    }

    fn nginx_upstream(&self, fleet: u8) -> String {
        format!(
            "server 127.0.0.1:{};\nkeepalive 16;\n",
            self.upstreams[fleet as usize]
        )
    }

    fn start_nginx(&mut self) -> anyhow::Result<()> {
        let root = std::fs::read_to_string("/proc/self/status")?
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .is_some_and(|u| u.split_whitespace().next() == Some("0"));
        for (i, port) in self.ports.clone().into_iter().enumerate() {
            let d = self.path(&format!("nginx-{i}"));
            std::fs::create_dir_all(d.join("tmp"))?;
            std::fs::write(d.join("upstream.conf"), self.nginx_upstream(0))?;
            let t = d.join("tmp").display().to_string();
            let conf = format!(
                "{user}daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {t}; proxy_temp_path {t}; fastcgi_temp_path {t}; uwsgi_temp_path {t}; scgi_temp_path {t};\n  upstream backend {{ include {d}/upstream.conf; }}\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{ proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
                user = if root { "user root;\n" } else { "" },
                d = d.display()
            );
            std::fs::write(d.join("nginx.conf"), conf)?;
            let mut command = Command::new("nginx");
            command
                .arg("-p")
                .arg(&d)
                .arg("-c")
                .arg(d.join("nginx.conf"));
            self.adopt(quiet(&mut command).spawn()?);
        }
        Ok(())
    }

    /// Keeps a started proxy: killed on drop, its CPU counted.
    fn adopt(&mut self, child: Child) {
        self.pids.extend(child.id());
        self.children.push(child);
    }

    fn start_haproxy(&mut self) -> anyhow::Result<()> {
        let [blue, green] = self.upstreams;
        for (i, port) in self.ports.clone().into_iter().enumerate() {
            let d = self.path(&format!("haproxy-{i}"));
            std::fs::create_dir_all(&d)?;
            let conf = format!(
                "global\n  nbthread 1\n  stats socket {d}/admin.sock mode 600 level admin\ndefaults\n  mode http\n  timeout connect 1s\n  timeout client 30s\n  timeout server 30s\nfrontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\nbackend be\n  balance roundrobin\n  server blue 127.0.0.1:{blue} weight 1\n  server green 127.0.0.1:{green} weight 0\n",
                d = d.display()
            );
            std::fs::write(d.join("haproxy.cfg"), conf)?;
            let mut command = Command::new("haproxy");
            command.arg("-db").arg("-f").arg(d.join("haproxy.cfg"));
            self.adopt(quiet(&mut command).spawn()?);
        }
        Ok(())
    }

    /// For teal: how many of the proxies routing `web` report their load,
    /// of how many, and the requests measured over the status window, as
    /// the replica that sees the most reporting says.
    pub fn load_reports(&mut self) -> anyhow::Result<Option<(usize, usize, u64)>> {
        let mut best: Option<(usize, usize, u64)> = None;
        for t in &mut self.teal {
            t.stdin.write_all(b"traffic\n")?;
            t.stdin.flush()?;
            let mut line = String::new();
            let stdout = &mut t.stdout;
            tokio::task::block_in_place(|| stdout.read_line(&mut line))?;
            let said = match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["traffic", reporting, routing, requests] => {
                    (reporting.parse()?, routing.parse()?, requests.parse()?)
                }
                _ => anyhow::bail!("teal child said {line:?}"),
            };
            if best.is_none_or(|b| said.0 > b.0) {
                best = Some(said);
            }
        }
        Ok(best)
    }

    /// Switches every proxy to the other fleet. Returns, for teal, what
    /// teal measured; for the others, once the command has returned.
    pub async fn switch(&mut self) -> anyhow::Result<Option<TealFlip>> {
        let to = 1 - self.live;
        let mut result = None;
        match self.kind {
            Kind::Teal | Kind::TealCli | Kind::TealMtls | Kind::TealHa => {
                if let Some((teal, admin)) = &self.cli {
                    // Output to pipes read to the end, as a script
                    // capturing it would.
                    let out = Command::new(teal)
                        .args([
                            "--admin",
                            admin,
                            "--token",
                            TOKEN,
                            "flip",
                            "web",
                            "--skip-checks",
                        ])
                        .stdin(Stdio::null())
                        .output()
                        .await?;
                    anyhow::ensure!(
                        out.status.success(),
                        "teal flip: {}: {}",
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    );
                }
                // With the CLI, the flip is done: ask the child what the
                // last one took.
                let ask: &[u8] = if self.cli.is_some() {
                    b"last\n"
                } else {
                    b"flip\n"
                };
                // Replicas that do not lead refuse: ask the next one (the
                // last leader first), for up to 30 s.
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut tried = 0;
                let line = loop {
                    let n = self.teal.len().max(1);
                    let i = (self.leader + tried) % n;
                    let t = self
                        .teal
                        .get_mut(i)
                        .ok_or_else(|| anyhow::anyhow!("no teal"))?;
                    t.stdin.write_all(ask)?;
                    t.stdin.flush()?;
                    let mut line = String::new();
                    // teal answers once the flip is confirmed; reading the
                    // pipe blocks, so do it off the runtime's workers.
                    let stdout = &mut t.stdout;
                    tokio::task::block_in_place(|| stdout.read_line(&mut line))?;
                    if !line.starts_with("done refused") {
                        self.leader = i;
                        break line;
                    }
                    anyhow::ensure!(Instant::now() < deadline, "no replica leads: {line}");
                    tried += 1;
                    if tried % n == 0 {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                };
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.first() != Some(&"done") || f.get(1) != Some(&"ok") {
                    anyhow::bail!("teal flip failed: {line}");
                }
                let us = |i: usize| -> anyhow::Result<Duration> {
                    Ok(Duration::from_micros(
                        f.get(i).ok_or_else(|| anyhow::anyhow!("short"))?.parse()?,
                    ))
                };
                result = Some(TealFlip {
                    convergence: us(2)?,
                    command_to_outcome: us(3)?,
                });
            }
            Kind::EnvoyFile | Kind::EnvoyFileTealRoutes => {
                let tmp = self.path("rds.yaml.new");
                std::fs::write(&tmp, self.envoy_file_rds(to)?)?;
                std::fs::rename(&tmp, self.path("rds.yaml"))?;
            }
            Kind::EnvoyFileEach => {
                let text = self.envoy_file_rds(to)?;
                for i in 0..self.ports.len() {
                    let tmp = self.path(&format!("rds-{i}.yaml.new"));
                    std::fs::write(&tmp, &text)?;
                    std::fs::rename(&tmp, self.rds_file(i))?;
                }
            }
            Kind::Nginx => {
                for i in 0..self.ports.len() {
                    let d = self.path(&format!("nginx-{i}"));
                    let tmp = d.join("upstream.conf.new");
                    std::fs::write(&tmp, self.nginx_upstream(to))?;
                    std::fs::rename(&tmp, d.join("upstream.conf"))?;
                    let status = Command::new("nginx")
                        .arg("-p")
                        .arg(&d)
                        .arg("-c")
                        .arg(d.join("nginx.conf"))
                        .args(["-s", "reload"])
                        .stderr(Stdio::null())
                        .status()
                        .await?;
                    anyhow::ensure!(status.success(), "nginx -s reload: {status}");
                }
            }
            Kind::Haproxy => {
                let (new, old) = (FLEETS[to as usize], FLEETS[self.live as usize]);
                for i in 0..self.ports.len() {
                    let sock = self.path(&format!("haproxy-{i}/admin.sock"));
                    let mut s = tokio::net::UnixStream::connect(&sock).await?;
                    // New fleet in first, so there is never a moment with
                    // no server in service.
                    s.write_all(
                        format!("set weight be/{new} 1; set weight be/{old} 0\n").as_bytes(),
                    )
                    .await?;
                    let mut reply = String::new();
                    s.read_to_string(&mut reply).await?;
                    anyhow::ensure!(reply.trim().is_empty(), "haproxy said {:?}", reply.trim());
                }
            }
        }
        self.live = to;
        Ok(result)
    }
}

impl System {
    /// Stops every process. nginx gets `nginx -s stop` first: killing
    /// its master alone would leave the worker running.
    pub async fn stop(mut self) {
        if self.kind == Kind::Nginx {
            for i in 0..self.ports.len() {
                let d = self.path(&format!("nginx-{i}"));
                let _ = Command::new("nginx")
                    .arg("-p")
                    .arg(&d)
                    .arg("-c")
                    .arg(d.join("nginx.conf"))
                    .args(["-s", "stop"])
                    .stderr(Stdio::null())
                    .status()
                    .await;
            }
            for c in &mut self.children {
                let _ = tokio::time::timeout(Duration::from_secs(5), c.wait()).await;
            }
        }
    }
}

impl Drop for System {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
        }
        for t in &mut self.teal {
            let _ = t.child.kill();
            let _ = t.child.wait();
        }
    }
}

/// `n` free ports for proxy listeners, below the kernel's ephemeral range
/// (`ip_local_port_range`). Ports picked with `bind(:0)` come from that
/// range, and with 50 Envoys starting (admin ports, upstream
/// connections) one of them could take a picked port before its proxy
/// binds it.
fn listen_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(32768);
    let (first, span) = (10_000u16, low.saturating_sub(10_000).max(1));
    let mut port = first + (std::process::id() % u32::from(span)) as u16;
    let mut ports = Vec::with_capacity(n);
    for _ in 0..span {
        port = if port + 1 >= first + span {
            first
        } else {
            port + 1
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            ports.push(port);
            if ports.len() == n {
                return Ok(ports);
            }
        }
    }
    anyhow::bail!("no {n} free ports between {first} and {low}")
}

/// Live Envoy processes that are children of this process (the harness
/// keeps its `Child` private).
fn envoy_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    let mut pids = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim() == "envoy"
                && let Some(f) = stat_fields(pid)
                && f[0] != "Z"
                && f.get(1) == Some(&me)
            {
                pids.push(pid);
            }
        }
    }
    pids
}

/// The `main` of a benchmark that runs teal in a child process: this
/// same binary started with `--teal-child CONFIG` is that child;
/// otherwise `bench` runs with the command-line arguments.
pub fn main_with<F, Fut>(bench: F) -> anyhow::Result<()>
where
    F: FnOnce(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let rt = tokio::runtime::Runtime::new()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--teal-child") {
        return rt.block_on(teal_child(&args[1..]));
    }
    rt.block_on(bench(args))
}

/// The teal side of `--teal-child CONFIG [--etcd HOST:PORT] [--tokens FILE] [--tls CERT KEY
/// CLIENT_CA]`: runs `teal serve` on the config in-process (admin tokens
/// from FILE; the xDS port on mTLS with `--tls`; with `--etcd`, the store
/// is that etcd, prefix `/bench/`, lease 2 s), prints `xds <port>
/// admin <address>`, then reads lines on stdin: `flip` flips service
/// `web` and prints `done ok <convergence µs> <command to outcome µs>`
/// (or `done <outcome>`, or `done refused <why>` when this replica does
/// not lead); `last` prints the same for the last history
/// entry (a flip made through the admin API), command to outcome being
/// its `finished − started`; `traffic` prints `traffic <proxies reporting
/// load> <proxies routing web> <requests measured over the status
/// window>` from the status of `web`.
pub async fn teal_child(args: &[String]) -> anyhow::Result<()> {
    use teal::admin::Backend;
    use teal::rollout::Operation;
    let config = args
        .first()
        .ok_or_else(|| anyhow::anyhow!("--teal-child needs a config path"))?;
    let mut options = teal::serve::ServeOptions {
        watch_interval: Duration::from_secs(3600),
        ..teal::serve::ServeOptions::local(Some(config.into()))
    };
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let mut value = || {
            rest.next()
                .map(PathBuf::from)
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--tokens" => options.admin_tokens = Some(value()?),
            "--etcd" => {
                let endpoint = value()?.to_string_lossy().into_owned();
                options.etcd = Some(teal::state::EtcdOptions::new(vec![endpoint], "/bench/"));
                options.leader_lease = Duration::from_secs(2);
            }
            "--tls" => {
                options.xds_tls = Some(teal::transport::tls::TlsFiles {
                    cert: value()?,
                    key: value()?,
                    client_ca: Some(value()?),
                })
            }
            other => anyhow::bail!("--teal-child: unknown flag {other}"),
        }
    }
    let (_trigger, shutdown) = teal::shutdown::shutdown_channel();
    let running = teal::serve::start(options, shutdown).await?;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "xds {} admin {}",
        running.xds_addr.port(),
        running.admin_addr
    )?;
    out.flush()?;
    let controller = running.controller.clone();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin());
    let mut line = String::new();
    loop {
        line.clear();
        if tokio::io::AsyncBufReadExt::read_line(&mut lines, &mut line).await? == 0 {
            return Ok(());
        }
        if line.trim() == "traffic" {
            let status = controller.status(Some("web")).await?;
            let fleets = status
                .services
                .first()
                .map(|s| s.traffic.clone())
                .unwrap_or_default();
            let reporting = fleets.iter().map(|f| f.proxies_reporting).max();
            let routing = fleets.iter().map(|f| f.proxies_routing).max();
            let requests: u64 = fleets.iter().map(|f| f.requests).sum();
            writeln!(
                out,
                "traffic {} {} {requests}",
                reporting.unwrap_or(0),
                routing.unwrap_or(0)
            )?;
            out.flush()?;
            continue;
        }
        if line.trim() == "last" {
            let history = controller.history("web").await?;
            let last = history
                .first()
                .ok_or_else(|| anyhow::anyhow!("no history entry"))?;
            let took = last
                .finished
                .duration_since(last.started)
                .unwrap_or_default();
            writeln!(
                out,
                "done ok {} {}",
                last.convergence.unwrap_or_default().as_micros(),
                took.as_micros()
            )?;
            out.flush()?;
            continue;
        }
        let start = Instant::now();
        let started = controller
            .start(
                Operation::Flip {
                    service: "web".into(),
                    to: None,
                    skip_checks: true,
                    timeout: Duration::from_secs(30),
                },
                "bench",
            )
            .await;
        // A replica that does not lead refuses (teal-ha asks another).
        let mut rx = match started {
            Ok(rx) => rx,
            Err(e) => {
                writeln!(out, "done refused {}", e.to_string().replace('\n', " "))?;
                out.flush()?;
                continue;
            }
        };
        let outcome = loop {
            if let Some(o) = rx.borrow_and_update().outcome.clone() {
                break o;
            }
            rx.changed().await?;
        };
        let took = start.elapsed();
        if !outcome.is_success() {
            writeln!(out, "done {outcome:?}")?;
        } else {
            let history = controller.history("web").await?;
            let conv = history
                .first()
                .and_then(|h| h.convergence)
                .unwrap_or_default();
            writeln!(out, "done ok {} {}", conv.as_micros(), took.as_micros())?;
        }
        out.flush()?;
    }
}

/// The value of `--teal-session`: `own` (true) or `shared` (false); see
/// [`RunOptions::teal_own_session`].
pub fn parse_teal_session(value: &str) -> anyhow::Result<bool> {
    match value {
        "own" => Ok(true),
        "shared" => Ok(false),
        other => anyhow::bail!("--teal-session is own or shared, not {other:?}"),
    }
}

/// How to run one system.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Proxies in front of the upstreams.
    pub proxies: usize,
    /// Switches to time.
    pub switches: usize,
    /// Probe requests per second per proxy, on one kept-alive connection.
    pub probe_hz: u32,
    /// Load connections per proxy (kept alive), besides the probe.
    pub load_conns: usize,
    /// Load requests per second per connection.
    pub load_hz: u32,
    /// Pause after each switch has converged.
    pub gap: Duration,
    /// Run teal in a session of its own, so Linux's autogroup scheduler
    /// shares the cores between teal and everything else as it would
    /// between two containers, rather than between teal and each of N
    /// proxies (see BENCHMARKS.md).
    pub teal_own_session: bool,
    /// The `teal` binary [`Kind::TealCli`] runs.
    pub teal_binary: Option<PathBuf>,
    /// Whether the Envoys teal feeds send it load reports (LRS), as the
    /// bundled bootstraps do; off, their `load_stats_config` is removed.
    pub load_reports: bool,
    /// How long the CPU of the probe alone, without switches, is measured
    /// before the switches.
    pub baseline: Duration,
}

/// `target/<profile>/teal` next to this example's directory, where `cargo
/// build --bin teal` puts it.
pub fn default_teal_binary() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.join("teal"))
}

/// `bootstrap` without its `cluster_manager` block, whose only setting
/// in the bundled bootstraps is `load_stats_config`: an Envoy that sends
/// no load reports, as before teal asked for them.
fn without_load_reports(bootstrap: &str) -> anyhow::Result<String> {
    let mut out = String::with_capacity(bootstrap.len());
    let mut skipping = false;
    let mut found = 0;
    for line in bootstrap.split_inclusive('\n') {
        let top_level = !line.starts_with([' ', '\t', '\n', '#']);
        if top_level {
            skipping = line.starts_with("cluster_manager:");
            found += usize::from(skipping);
        }
        if !skipping {
            out.push_str(line);
        }
    }
    anyhow::ensure!(
        found == 1 && !out.contains("load_stats_config"),
        "the bootstrap should hold one top-level cluster_manager block with load_stats_config"
    );
    Ok(out)
}

/// `envoy/edge-mtls.yaml` for node and group `group`, xDS on
/// `127.0.0.1:xds`, trusting `pki`'s CA and presenting `client`.
fn mtls_bootstrap(
    group: &str,
    xds: u16,
    pki: &support::pki::Pki,
    client: &support::pki::Pair,
) -> anyhow::Result<String> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy/edge-mtls.yaml");
    let mut yaml = std::fs::read_to_string(&file)?;
    let replacements = [
        (
            "filename: /etc/teal/tls/ca.crt",
            format!("filename: {}", pki.ca.display()),
        ),
        (
            "filename: /etc/teal/tls/edge.crt",
            format!("filename: {}", client.cert.display()),
        ),
        (
            "filename: /etc/teal/tls/edge.key",
            format!("filename: {}", client.key.display()),
        ),
        ("id: edge-1\n", format!("id: {group}\n")),
        ("cluster: edge\n", format!("cluster: {group}\n")),
        ("port_value: 9901", "port_value: 0".to_owned()),
        ("port_value: 18000", format!("port_value: {xds}")),
    ];
    for (from, to) in replacements {
        anyhow::ensure!(
            yaml.matches(from).count() == 1,
            "envoy/edge-mtls.yaml should hold {from:?} once"
        );
        yaml = yaml.replace(from, &to);
    }
    Ok(yaml)
}

/// What one system did over the switches.
#[derive(Debug, Default)]
pub struct Report {
    /// Per switch: command issued until every proxy answered only from the
    /// new fleet, sorted.
    pub data_plane: Vec<Duration>,
    /// Per switch, teal's own figures (teal only).
    pub teal: Vec<TealFlip>,
    /// Per switch: how long the switch command took to return.
    pub command: Vec<Duration>,
    /// Requests sent while switching, probe and load.
    pub requests: usize,
    /// Of which failed (refused, reset, timeout, non-200).
    pub failed: usize,
    /// Of which closed before any answer on a reused connection.
    pub closed_idle: usize,
    /// Probe requests per second per proxy actually sent.
    pub probe_rate: f64,
    /// CPU of the proxies and control plane while switching, beyond what
    /// the same time under load without switches costs, per switch.
    pub cpu_per_switch: Duration,
    /// CPU of switch commands run as processes (`nginx -s reload`).
    pub command_cpu: Duration,
    /// Resident memory of the proxies and control plane, KiB.
    pub rss_kib: u64,
    /// Resident memory of the proxies alone, KiB, per proxy (Envoy, nginx
    /// master + worker, HAProxy).
    pub rss_per_proxy_kib: u64,
    /// teal only: its processes' CPU per second of the baseline (probe
    /// traffic, no switch: what the load reports cost it, if anything),
    /// and their resident memory, KiB.
    pub teal_idle: Option<(Duration, u64)>,
    /// teal only, after the baseline: proxies reporting load, proxies
    /// routing the service, requests measured over the status window.
    pub load_reports: Option<(usize, usize, u64)>,
}

/// Starts `kind`, sends the probe and load, times `switches` switches and
/// stops it.
pub async fn run(kind: Kind, upstreams: [u16; 2], o: &RunOptions) -> anyhow::Result<Report> {
    let mut sys = System::start(kind, upstreams, o).await?;
    let period = |hz: u32| Duration::from_secs_f64(1.0 / f64::from(hz.max(1)));
    let probes: Vec<Sender> = sys
        .ports
        .iter()
        .map(|&p| Sender::start(p, period(o.probe_hz)))
        .collect();
    let load: Vec<Sender> = if o.load_hz == 0 {
        Vec::new()
    } else {
        sys.ports
            .iter()
            .flat_map(|&p| (0..o.load_conns).map(move |_| (p, ())))
            .map(|(p, ())| Sender::start(p, period(o.load_hz)))
            .collect()
    };
    // Warm up, then measure what the load alone costs.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (cpu0, rss) = tree_usage(&sys.pids);
    let proxy_rss: u64 = sys
        .pids
        .iter()
        .skip(usize::from(kind.is_teal()))
        .map(|&p| tree_usage(&[p]).1)
        .sum();
    let teal_pids: Vec<u32> = sys.teal.iter().map(|t| t.child.id()).collect();
    let (teal_cpu0, teal_rss) = tree_usage(&teal_pids);
    let base_start = Instant::now();
    tokio::time::sleep(o.baseline).await;
    let (cpu1, _) = tree_usage(&sys.pids);
    let (teal_cpu1, _) = tree_usage(&teal_pids);
    let t_cpu1 = Instant::now();
    let base_span = base_start.elapsed().as_secs_f64();
    let base_rate = (cpu1.saturating_sub(cpu0)).as_secs_f64() / base_span;

    let mut report = Report {
        rss_kib: rss,
        rss_per_proxy_kib: proxy_rss / o.proxies.max(1) as u64,
        teal_idle: (!teal_pids.is_empty()).then(|| {
            (
                Duration::from_secs_f64(
                    teal_cpu1.saturating_sub(teal_cpu0).as_secs_f64() / base_span,
                ),
                teal_rss,
            )
        }),
        ..Report::default()
    };
    report.load_reports = sys.load_reports()?;
    let cmd_cpu0 = children_cpu();
    let phase = Instant::now();
    for n in 0..o.switches {
        let t0 = Instant::now();
        let teal = sys.switch().await?;
        report.command.push(t0.elapsed());
        report.teal.extend(teal);
        let to = sys.live;
        let deadline = t0 + Duration::from_secs(20);
        let done = loop {
            let at: Vec<Option<Instant>> = probes
                .iter()
                .map(|p| switched_at(&p.since(t0), to, 10))
                .collect();
            if at.iter().all(Option::is_some) {
                break at.into_iter().flatten().max();
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "{}: switch {n}: not every proxy answered {} within 20 s",
                    kind.name(),
                    FLEETS[to as usize]
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        if let Some(at) = done {
            report.data_plane.push(at.saturating_duration_since(t0));
        }
        tokio::time::sleep(o.gap).await;
    }
    let took = phase.elapsed();
    let (cpu2, _) = tree_usage(&sys.pids);
    report.command_cpu = children_cpu().saturating_sub(cmd_cpu0);
    let excess = cpu2.saturating_sub(cpu1).as_secs_f64()
        - base_rate * t_cpu1.elapsed().as_secs_f64()
        + report.command_cpu.as_secs_f64();
    report.cpu_per_switch = Duration::from_secs_f64(excess.max(0.0) / o.switches.max(1) as f64);
    for s in probes.iter().chain(load.iter()) {
        for x in s.since(phase) {
            report.requests += 1;
            match x.answer {
                Answer::Fleet(_) => {}
                Answer::ClosedIdle => report.closed_idle += 1,
                Answer::Failed => report.failed += 1,
            }
        }
    }
    let probe_count: usize = probes.iter().map(|p| p.since(phase).len()).sum();
    report.probe_rate = probe_count as f64 / took.as_secs_f64() / o.proxies.max(1) as f64;
    report.data_plane.sort();
    drop(probes);
    drop(load);
    sys.stop().await;
    Ok(report)
}

/// The blue and green upstreams, answering `blue` and `green`.
pub async fn upstreams() -> [support::Upstream; 2] {
    [
        support::Upstream::start("blue").await,
        support::Upstream::start("green").await,
    ]
}

/// Sorted durations.
pub fn sorted(mut v: Vec<Duration>) -> Vec<Duration> {
    v.sort();
    v
}
