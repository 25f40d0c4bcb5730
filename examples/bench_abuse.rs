//! Soak: abusive xDS clients against `teal serve` for a while, with a real
//! flip in the middle; teal's resident memory over time and the flip's
//! outcome.
//!
//! ```text
//! cargo run --release --example bench_abuse -- --seconds 60 --clients 4
//! ```
//!
//! teal is the `teal` command itself: this binary started as
//! `bench_abuse --teal ARGS` runs `teal::cli::run` exactly as the `teal`
//! binary's `main` does, so `teal serve` and `teal flip` are the real
//! command line without depending on a separately built binary. `teal
//! serve` runs in a session of its own (`setsid`) on a config with service
//! `web` (fleets `blue` and `green`, one local upstream each, with health
//! checks), an edge Envoy (state of the world) and a sidecar Envoy (delta).
//!
//! Once both Envoys answer from `blue`, the idle RSS of teal is read
//! (`VmRSS`), then for `--seconds`:
//!
//! - `--clients` tasks each run the abusive streams below in turn, every
//!   one bounded by a timeout: 80,000 made-up SotW names (over the names
//!   limit), 19,000 names of 100 bytes (just under the names and bytes
//!   limits, held for 2 s), delta subscriptions of 1.9 MB twice (the second
//!   goes over), a NACK carrying a 3 MB message, a 2 MB node id;
//! - one task keeps 200 streams open on one HTTP/2 connection (twice the
//!   per-connection limit), renewed every 5 s;
//! - one task keeps 100 TCP connections open on each port (xDS and admin)
//!   that send nothing, reopened as teal closes them;
//! - one task keeps 50 connections on each port sending the HTTP/2
//!   preface a byte a second (slow handshakes), reopened as teal closes
//!   them; the longest any stayed open is printed (the handshake timeout
//!   bounds it);
//! - one task asks CSDS for answers on an HTTP/2 connection that never
//!   reads (a window of 0) until teal refuses (`RESOURCE_EXHAUSTED`) and
//!   closes it after `--csds-unread-timeout`, then again;
//! - at a quarter of the time a YAML bomb (billion laughs) is written over
//!   the served config, and the good file is put back 2 s later;
//! - at half of the time `teal flip web` runs through the CLI; its exit
//!   code, and then both Envoys answering from `green`, are its outcome.
//!
//! RSS is printed every second. The bound is 2 × idle RSS plus what the
//! docs/limits.md ("Limits", "What a client can make teal hold") documents for
//! everything the abusers hold at once ([`Bound`]): per abusive client a
//! connection and a stream with a request being handled and one
//! subscription, the many-streams connection with its idle streams, and
//! the silent connections. The run passes when teal's RSS never went
//! over the bound and the flip succeeded; the exit code is 1 otherwise
//! (2: the benchmark itself could not run). Everything started is killed
//! at the end, Ctrl-C included.
//!
//! `--costs` measures instead what an idle connection and an idle stream
//! cost (the figures in docs/limits.md): teal's RSS with 1,000 of each open.
//! `BENCH_TEAL_WRAP="heaptrack -o FILE"` runs teal under a profiler.
//!
//! Everything listens on and connects to 127.0.0.1 only.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use envoy_types::pb::google::rpc;
use teal::xds::XdsServerConfig;
use teal::xds::limits::cost;
use teal::xds::resources::ResourceType;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::Channel;

use support::http::{self, Health, Upstream};
use support::world::{self, Ports, World};
use support::{Envoy, Protocol, free_port};

/// The admin token `teal serve` is given.
const TOKEN: &str = "bench";

/// Silent connections held open on each port.
const SILENT_PER_PORT: usize = 100;

/// Connections held on each port sending the HTTP/2 preface a byte a
/// second.
const SLOW_PER_PORT: usize = 50;

/// The RSS bound: twice teal's idle RSS (allocator slack, caches warmed by
/// the Envoys) plus what docs/limits.md ("Limits", "What a client can make
/// teal hold") documents for everything the abusers hold at once, at
/// teal's default limits ([`cost`]):
/// - each abusive client: one connection (idle cost and its unread
///   HTTP/2 window) and one stream subscribed to one type with a request
///   being handled ([`cost::stream_bytes`]);
/// - the many-streams client: one connection and as many idle streams as
///   a connection may carry (`--max-streams-per-connection`; the rest
///   wait on the client's side);
/// - the silent connections, and the slow handshakes, on both ports;
/// - the CSDS answers left unread on one connection
///   (`--max-csds-unread-bytes-per-connection`).
struct Bound {
    idle: f64,
    clients: usize,
    per_client: usize,
    many_streams: usize,
    silent: usize,
    unread_csds: usize,
}

impl Bound {
    fn new(idle: f64, clients: usize) -> Bound {
        let server = XdsServerConfig::default();
        let connection = cost::IDLE_CONNECTION_BYTES + cost::CONNECTION_WINDOW_BYTES;
        let streams = server.connections.max_streams_per_connection as usize;
        Bound {
            idle,
            clients,
            per_client: connection
                + cost::stream_bytes(server.max_request_bytes, &server.stream, 1),
            many_streams: connection + streams * cost::IDLE_STREAM_BYTES,
            silent: 2 * (SILENT_PER_PORT + SLOW_PER_PORT) * cost::IDLE_CONNECTION_BYTES,
            unread_csds: server.csds.max_unread_bytes_per_connection,
        }
    }

    fn total(&self) -> f64 {
        2.0 * self.idle
            + mib(self.clients * self.per_client
                + self.many_streams
                + self.silent
                + self.unread_csds)
    }

    fn terms(&self) -> String {
        format!(
            "2 x idle ({:.1}) + {} abusive clients x {:.1} (connection, stream, request, one subscription) + {:.1} (100 idle streams on a connection) + {:.1} ({} silent and slow-handshake connections) + {:.1} (unread CSDS answers on one connection)",
            2.0 * self.idle,
            self.clients,
            mib(self.per_client),
            mib(self.many_streams),
            mib(self.silent),
            2 * (SILENT_PER_PORT + SLOW_PER_PORT),
            mib(self.unread_csds),
        )
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / f64::from(1 << 20)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--teal") {
        // This binary as the `teal` command, as `src/main.rs` runs it.
        let argv = std::iter::once("teal".to_owned()).chain(args[2..].iter().cloned());
        let cli = match teal::cli::Cli::try_parse_from(argv) {
            Ok(cli) => cli,
            Err(e) => {
                let _ = e.print();
                return ExitCode::from(teal::cli::client::EX_USAGE);
            }
        };
        teal::cli::logging::init(cli.log_value_chars());
        return teal::cli::run(cli);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench_abuse: {e}");
            return ExitCode::from(2);
        }
    };
    // Dropping the benchmark's future (done, or Ctrl-C) drops every child
    // it started: each is killed on drop.
    let result = rt.block_on(async {
        tokio::select! {
            r = bench(args[1..].to_vec()) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("bench_abuse: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `teal serve` in its own session, killed when dropped.
struct TealServe {
    child: tokio::process::Child,
    pid: u32,
    log: PathBuf,
}

impl TealServe {
    async fn start(dir: &Path, xds: u16, admin: u16) -> anyhow::Result<TealServe> {
        let log = dir.join("teal.log");
        let stderr = std::fs::File::create(&log)?;
        // `setsid` starts a new session and executes the program in place
        // (this process is not a group leader), so the pid stays teal's.
        // `BENCH_TEAL_WRAP="heaptrack -o FILE"` runs teal under a profiler;
        // RSS is then read from teal itself, the wrapper's child.
        let wrap: Vec<String> = std::env::var("BENCH_TEAL_WRAP")
            .map(|w| w.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let mut child = tokio::process::Command::new("setsid")
            .args(&wrap)
            .arg(std::env::current_exe()?)
            .args(["--teal", "serve", "--config"])
            .arg(dir.join("teal.yaml"))
            .args(["--xds-addr", &format!("127.0.0.1:{xds}")])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--watch-interval", "0.2", "--drain", "0.2"])
            .env("TEAL_ADMIN_TOKEN", TOKEN)
            .env("TEAL_LOG", "info")
            .env_remove("TEAL_ADMIN_TOKENS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start teal serve with setsid: {e}"))?;
        let mut pid = child
            .id()
            .ok_or_else(|| anyhow::anyhow!("teal has no pid"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !http::get(admin, "/healthz", &[])
            .await
            .is_ok_and(|r| r.status == 200)
        {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!(
                    "teal serve exited at start ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "teal serve's admin API did not come up in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !wrap.is_empty() {
            // The wrapper runs teal as one of its children.
            let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))?;
            pid = children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .find(|p| {
                    std::fs::read(format!("/proc/{p}/cmdline"))
                        .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == b"--teal"))
                })
                .ok_or_else(|| anyhow::anyhow!("the wrapper has no teal child"))?;
        }
        Ok(TealServe { child, pid, log })
    }

    /// Stops teal with SIGTERM, as an operator would, so that a wrapper
    /// (a profiler) sees it exit and writes its report.
    async fn stop(&mut self) {
        let _ = tokio::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()
            .await;
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// teal's resident memory, MiB.
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

async fn bench(args: Vec<String>) -> anyhow::Result<bool> {
    let mut seconds = 60u64;
    let mut clients = 4usize;
    let mut costs_only = false;
    let mut it = args.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--seconds" => seconds = value()?.parse()?,
            "--clients" => clients = value()?.parse()?,
            "--costs" => costs_only = true,
            other => anyhow::bail!("unknown flag {other}; use --seconds N --clients N [--costs]"),
        }
    }
    anyhow::ensure!((4..=3600).contains(&seconds), "--seconds is 4 to 3600");
    anyhow::ensure!((1..=64).contains(&clients), "--clients is 1 to 64");
    support::find_envoy().map_err(|e| anyhow::anyhow!("Envoy is needed: {e}"))?;

    let blue = Upstream::start_with_health("blue", Health::new()).await;
    let green = Upstream::start_with_health("green", Health::new()).await;
    let ports = Ports {
        blue: blue.port,
        green: green.port,
        red: free_port(),
        edge: free_port(),
        sidecar: free_port(),
        batch: free_port(),
    };
    let good = world::config_yaml(&World::usual_spec(&ports, world::PREFIX_ROUTE), &ports);
    let dir = tempfile::Builder::new().prefix("teal-abuse-").tempdir()?;
    let config = dir.path().join("teal.yaml");
    std::fs::write(&config, &good)?;
    let (xds, admin) = (free_port(), free_port());
    let mut teal = TealServe::start(dir.path(), xds, admin).await?;
    let (edge, sidecar) = tokio::join!(
        Envoy::start_on(xds, "edge", Protocol::Sotw),
        Envoy::start_on(xds, "sidecar", Protocol::Delta),
    );
    let envoys = [(edge, ports.edge), (sidecar, ports.sidecar)];
    for (_, port) in &envoys {
        answers(*port, "blue", Duration::from_secs(60)).await?;
    }
    // Settle, then the idle figure: the lowest of three readings.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut idle = f64::MAX;
    for _ in 0..3 {
        idle = idle.min(rss_mib(teal.pid));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    if costs_only {
        costs(xds, teal.pid).await?;
        teal.stop().await;
        return Ok(true);
    }
    let bound = Bound::new(idle, clients);
    println!(
        "teal pid {}, 2 Envoys synced, idle RSS {idle:.1} MiB; {clients} abusive clients for {seconds} s",
        teal.pid
    );

    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let stats = Arc::new(Stats::default());
    let mut tasks = Vec::new();
    for c in 0..clients {
        tasks.push(tokio::spawn(abusive_client(xds, c, end, stats.clone())));
    }
    tasks.push(tokio::spawn(many_streams(xds, end, stats.clone())));
    tasks.push(tokio::spawn(idle_connections(xds, admin, end)));
    let slow = Arc::new(SlowStats::default());
    for i in 0..2 * SLOW_PER_PORT {
        let port = if i % 2 == 0 { xds } else { admin };
        tasks.push(tokio::spawn(slow_handshake(port, end, slow.clone())));
    }
    let csds = Arc::new(CsdsStats::default());
    tasks.push(tokio::spawn(unread_csds(xds, end, csds.clone())));

    let mut max = idle;
    let mut bomb_done = false;
    let mut flip: Option<tokio::task::JoinHandle<anyhow::Result<FlipEnd>>> = None;
    let mut bomb_outcome = String::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    while Instant::now() < end {
        tick.tick().await;
        let t = start.elapsed();
        let rss = rss_mib(teal.pid);
        max = max.max(rss);
        println!(
            "t={:>3}s  rss {rss:>7.1} MiB  streams {} ok / {} exhausted / {} other",
            t.as_secs(),
            stats.ok.load(Ordering::Relaxed),
            stats.exhausted.load(Ordering::Relaxed),
            stats.other.load(Ordering::Relaxed),
        );
        if !bomb_done && t >= Duration::from_secs(seconds / 4) {
            bomb_done = true;
            bomb_outcome = yaml_bomb(&teal, &config, &good).await;
            println!("       YAML bomb over the config: {bomb_outcome}");
        }
        if flip.is_none() && t >= Duration::from_secs(seconds / 2) {
            println!("       teal flip web (through the CLI)");
            flip = Some(tokio::spawn(run_flip(admin)));
        }
    }
    for t in &tasks {
        t.abort();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = rss_mib(teal.pid);
    let (code, output) = match flip {
        Some(f) => f.await??,
        None => (None, "not run".to_owned()),
    };
    let mut flip_ok = code == Some(0);
    let mut data_plane = String::new();
    for (envoy, port) in &envoys {
        match answers(*port, "green", Duration::from_secs(15)).await {
            Ok(()) => data_plane.push_str(&format!("{} answers green; ", envoy.node_id)),
            Err(e) => {
                flip_ok = false;
                data_plane.push_str(&format!("{e}; "));
            }
        }
    }
    let alive = matches!(teal.child.try_wait(), Ok(None));
    let rss_ok = max <= bound.total() && alive;
    println!();
    println!("idle RSS            {idle:.1} MiB");
    println!("max RSS             {max:.1} MiB");
    println!("RSS 3 s after       {after:.1} MiB");
    println!(
        "bound               {:.1} MiB = {}",
        bound.total(),
        bound.terms()
    );
    println!(
        "abusive streams     {} served, {} closed RESOURCE_EXHAUSTED, {} other",
        stats.ok.load(Ordering::Relaxed),
        stats.exhausted.load(Ordering::Relaxed),
        stats.other.load(Ordering::Relaxed)
    );
    println!(
        "slow handshakes     {} closed by teal, the longest after {:.1} s (--handshake-timeout: 10 s)",
        slow.closed.load(Ordering::Relaxed),
        slow.longest_ms.load(Ordering::Relaxed) as f64 / 1000.0
    );
    println!(
        "unread CSDS         {} answers held unread, {} refused RESOURCE_EXHAUSTED, {} connections closed by teal (bound {:.1} MiB a connection, --csds-unread-timeout 30 s)",
        csds.held.load(Ordering::Relaxed),
        csds.refused.load(Ordering::Relaxed),
        csds.closed.load(Ordering::Relaxed),
        mib(bound.unread_csds)
    );
    println!("YAML bomb           {bomb_outcome}");
    let output: String = output.trim().chars().take(300).collect();
    println!("flip                exit {code:?}: {output}");
    println!("data plane          {}", data_plane.trim_end_matches("; "));
    println!(
        "RSS                 {}{}",
        if rss_ok { "PASS" } else { "FAIL" },
        if alive { "" } else { " (teal is gone)" }
    );
    println!(
        "flip                {}",
        if flip_ok { "PASS" } else { "FAIL" }
    );
    if !alive || !flip_ok {
        let log = teal.log();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        eprintln!("teal's log, last lines:");
        for line in tail.iter().rev() {
            eprintln!("{}", line.chars().take(300).collect::<String>());
        }
    }
    teal.stop().await;
    Ok(rss_ok && flip_ok)
}

/// Waits until a request through `127.0.0.1:port` is answered by `fleet`
/// (the sidecar routes by `Host: web`).
async fn answers(port: u16, fleet: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        if http::get(port, "/", &[("host", "web")])
            .await
            .is_ok_and(|r| r.status == 200 && r.body == fleet)
        {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "127.0.0.1:{port} does not answer {fleet} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How `teal flip` ended: its exit code (`None`: killed by a signal) and
/// what it printed.
type FlipEnd = (Option<i32>, String);

/// `teal flip web` through the CLI: its exit code and output.
async fn run_flip(admin: u16) -> anyhow::Result<FlipEnd> {
    let out = tokio::process::Command::new(std::env::current_exe()?)
        .args(["--teal", "--admin", &format!("127.0.0.1:{admin}")])
        .args(["flip", "web", "--timeout", "30s"])
        .env("TEAL_TOKEN", TOKEN)
        .env_remove("TEAL_ADMIN")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.code(), text))
}

/// Writes a billion-laughs file over the served config, waits for teal to
/// log what it made of it, and puts the good file back.
async fn yaml_bomb(teal: &TealServe, config: &Path, good: &str) -> String {
    let mut bomb = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n".to_owned();
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for w in names.windows(2) {
        let refs = vec![format!("*{}", w[0]); 9].join(", ");
        bomb.push_str(&format!("{}: &{} [{refs}]\n", w[1], w[1]));
    }
    let before = teal.log().len();
    support::write_atomically(config, &bomb);
    let deadline = Instant::now() + Duration::from_secs(10);
    let outcome = loop {
        let new = teal.log().get(before..).unwrap_or_default().to_owned();
        if let Some(line) = new.lines().find(|l| l.contains("config reload")) {
            break if line.contains("refused") {
                "refused, last good config kept".to_owned()
            } else {
                format!("unexpected: {line}")
            };
        }
        if Instant::now() > deadline {
            break "nothing logged within 10 s".to_owned();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    support::write_atomically(config, good);
    outcome
}

/// How the abusive streams ended.
#[derive(Default)]
struct Stats {
    ok: AtomicU64,
    exhausted: AtomicU64,
    other: AtomicU64,
}

impl Stats {
    fn count(&self, end: Result<(), tonic::Status>) {
        let counter = match end {
            Ok(()) => &self.ok,
            Err(s) if s.code() == Code::ResourceExhausted => &self.exhausted,
            Err(_) => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

async fn channel(xds: u16) -> Result<Channel, tonic::Status> {
    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{xds}"))
        .map_err(|e| tonic::Status::internal(e.to_string()))?
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))
}

fn ads(channel: Channel) -> AggregatedDiscoveryServiceClient<Channel> {
    AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// An abusive client's node: in group `abuse`, which the config does not
/// name (teal serves it empty answers). A proxy of a group that routes
/// `web` and NACKs its configuration rightly stops a flip of `web`
/// ("rejecting its current configuration"); strangers must not.
fn node(id: String) -> Option<Node> {
    Some(Node {
        id,
        cluster: "abuse".into(),
        ..Default::default()
    })
}

fn names(prefix: &str, n: usize, len: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let s = format!("{prefix}-{i:06}-");
            let pad = len.saturating_sub(s.len());
            s + &"x".repeat(pad)
        })
        .collect()
}

/// One client: the abusive streams in turn until `end`, each
/// bounded by a timeout, one at a time.
async fn abusive_client(xds: u16, c: usize, end: Instant, stats: Arc<Stats>) {
    let mut i = 0usize;
    while Instant::now() < end {
        let id = format!("abuser-{c}-{i}");
        let attack = async {
            match i % 5 {
                0 => sotw(xds, id, names("no", 80_000, 49), 0, None).await,
                1 => sotw(xds, id, names("held", 19_000, 100), 2, None).await,
                2 => delta(xds, id).await,
                3 => {
                    let nack = "n".repeat(3 << 20);
                    sotw(xds, id, Vec::new(), 1, Some(nack)).await
                }
                _ => sotw(xds, "h".repeat(2 << 20), Vec::new(), 0, None).await,
            }
        };
        let r = tokio::time::timeout(Duration::from_secs(15), attack)
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("15 s")));
        stats.count(r);
        i += 1;
    }
}

/// A SotW CDS stream asking for `names`; waits for the first answer (or
/// the stream's end), then NACKs it with `nack` if given, and holds the
/// stream `hold_s` seconds.
async fn sotw(
    xds: u16,
    id: String,
    names: Vec<String>,
    hold_s: u64,
    nack: Option<String>,
) -> Result<(), tonic::Status> {
    let (tx, rx) = mpsc::channel(2);
    let first = DiscoveryRequest {
        node: node(id),
        type_url: ResourceType::Cluster.type_url().into(),
        resource_names: names.clone(),
        ..Default::default()
    };
    let _ = tx.send(first).await;
    let mut responses = ads(channel(xds).await?)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let r = match responses.next().await {
        Some(r) => r?,
        None => return Err(tonic::Status::unknown("stream ended")),
    };
    if let Some(message) = nack {
        let _ = tx
            .send(DiscoveryRequest {
                type_url: r.type_url.clone(),
                version_info: String::new(),
                response_nonce: r.nonce.clone(),
                resource_names: names,
                error_detail: Some(rpc::Status {
                    code: 3,
                    message,
                    details: Vec::new(),
                }),
                ..Default::default()
            })
            .await;
    }
    let hold = tokio::time::sleep(Duration::from_secs(hold_s));
    tokio::pin!(hold);
    loop {
        tokio::select! {
            _ = &mut hold => return Ok(()),
            next = responses.next() => match next {
                Some(Ok(_)) => {}
                Some(Err(s)) => return Err(s),
                None => return Ok(()),
            },
        }
    }
}

/// A delta EDS stream subscribing 19,000 names of 100 bytes (1.9 MB) twice:
/// the second request goes over the names limit.
async fn delta(xds: u16, id: String) -> Result<(), tonic::Status> {
    let (tx, rx) = mpsc::channel(2);
    let mut responses = ads(channel(xds).await?)
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    for round in 0..2 {
        let req = DeltaDiscoveryRequest {
            node: node(id.clone()),
            type_url: ResourceType::Endpoint.type_url().into(),
            resource_names_subscribe: names(&format!("d{round}"), 19_000, 100),
            ..Default::default()
        };
        if tx.send(req).await.is_err() {
            break;
        }
    }
    loop {
        match responses.next().await {
            Some(Ok(_)) => {}
            Some(Err(s)) => return Err(s),
            None => return Ok(()),
        }
    }
}

/// 200 SotW streams on one HTTP/2 connection (twice the per-connection
/// stream limit), held 5 s, again until `end`.
async fn many_streams(xds: u16, end: Instant, stats: Arc<Stats>) {
    while Instant::now() < end {
        let Ok(ch) = channel(xds).await else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut held = Vec::new();
        let mut opening = Vec::new();
        for s in 0..200 {
            let ch = ch.clone();
            opening.push(tokio::spawn(async move {
                let (tx, rx) = mpsc::channel(1);
                let _ = tx
                    .send(DiscoveryRequest {
                        node: node(format!("many-{s}")),
                        type_url: ResourceType::Cluster.type_url().into(),
                        ..Default::default()
                    })
                    .await;
                let stream = ads(ch)
                    .stream_aggregated_resources(ReceiverStream::new(rx))
                    .await?;
                Ok::<_, tonic::Status>((tx, stream))
            }));
        }
        let deadline = tokio::time::sleep(Duration::from_secs(5));
        tokio::pin!(deadline);
        for o in opening {
            tokio::select! {
                _ = &mut deadline => break,
                r = o => match r {
                    Ok(Ok(s)) => held.push(s),
                    Ok(Err(e)) => stats.count(Err(e)),
                    Err(_) => {}
                },
            }
        }
        deadline.await;
        drop(held);
    }
}

/// 100 TCP connections on each port (200 in all) that send nothing,
/// reopened as teal closes them, until `end`.
async fn idle_connections(xds: u16, admin: u16, end: Instant) {
    let mut conns = Vec::new();
    while Instant::now() < end {
        // Closed by teal: a read gives 0 bytes or an error; an open idle
        // connection would block.
        conns.retain(|c: &tokio::net::TcpStream| {
            let mut b = [0u8; 1];
            matches!(c.try_read(&mut b), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock)
        });
        while conns.len() < 2 * SILENT_PER_PORT {
            let port = if conns.len() % 2 == 0 { xds } else { admin };
            match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(c) => conns.push(c),
                Err(_) => break,
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// How the slow handshakes ended.
#[derive(Default)]
struct SlowStats {
    closed: AtomicU64,
    longest_ms: AtomicU64,
}

/// A connection to `port` sending the HTTP/2 preface a byte a second,
/// opened again each time teal closes it, until `end`.
async fn slow_handshake(port: u16, end: Instant, stats: Arc<SlowStats>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    while Instant::now() < end {
        let Ok(mut conn) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let started = Instant::now();
        let (mut rd, mut wr) = conn.split();
        let mut buf = [0u8; 1024];
        let closed = async {
            while let Ok(n) = rd.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        };
        let send = async {
            for b in PREFACE.iter().cycle() {
                if wr.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        tokio::select! {
            () = closed => {}
            () = send => {}
            () = tokio::time::sleep_until(end.into()) => return,
        }
        let ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        stats.closed.fetch_add(1, Ordering::Relaxed);
        stats.longest_ms.fetch_max(ms, Ordering::Relaxed);
    }
}

/// How the unread CSDS calls ended.
#[derive(Default)]
struct CsdsStats {
    held: AtomicU64,
    refused: AtomicU64,
    closed: AtomicU64,
}

/// CSDS calls on an HTTP/2 connection that never reads (every stream's
/// window is 0), until teal refuses one; then waits for teal to close
/// the connection, and starts again, until `end`.
async fn unread_csds(xds: u16, end: Instant, stats: Arc<CsdsStats>) {
    use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
    use prost::Message;
    let body = ClientStatusRequest::default().encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(body.len()).unwrap_or(0).to_be_bytes());
    frame.extend_from_slice(&body);
    let frame = bytes::Bytes::from(frame);
    while Instant::now() < end {
        let Ok(tcp) = tokio::net::TcpStream::connect(("127.0.0.1", xds)).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok((send, conn)) = h2::client::Builder::new()
            .initial_window_size(0)
            .handshake::<_, bytes::Bytes>(tcp)
            .await
        else {
            continue;
        };
        let mut driver = tokio::spawn(async move {
            let _ = conn.await;
        });
        // Kept, unread, until teal closes the connection.
        let mut calls = Vec::new();
        loop {
            let Ok(mut ready) = send.clone().ready().await else {
                break;
            };
            let Ok(request) = ::http::Request::post(
                "http://teal/envoy.service.status.v3.ClientStatusDiscoveryService/FetchClientStatus",
            )
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(()) else {
                break;
            };
            let Ok((response, mut stream)) = ready.send_request(request, false) else {
                break;
            };
            if stream.send_data(frame.clone(), true).is_err() {
                break;
            }
            let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(10), response).await
            else {
                break;
            };
            if tonic::Status::from_header_map(response.headers())
                .is_some_and(|s| s.code() == Code::ResourceExhausted)
            {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                break;
            }
            stats.held.fetch_add(1, Ordering::Relaxed);
            calls.push((response, stream));
            if Instant::now() >= end {
                return;
            }
        }
        tokio::select! {
            _ = &mut driver => {
                stats.closed.fetch_add(1, Ordering::Relaxed);
            }
            () = tokio::time::sleep_until(end.into()) => return,
        }
        drop(calls);
    }
}

/// `--costs`: what an idle connection and an idle stream cost teal, from
/// its RSS with 1,000 of each open (the figures docs/limits.md's "Limits"
/// documents).
async fn costs(xds: u16, pid: u32) -> anyhow::Result<()> {
    const N: usize = 1000;
    let settle = || tokio::time::sleep(Duration::from_secs(2));
    settle().await;
    let before = rss_mib(pid);
    let mut conns = Vec::new();
    for _ in 0..N {
        conns.push(tokio::net::TcpStream::connect(("127.0.0.1", xds)).await?);
    }
    settle().await;
    let with_conns = rss_mib(pid);
    drop(conns);
    settle().await;
    let after_conns = rss_mib(pid);
    // 10 connections of 100 streams each (the per-connection limit).
    let mut held = Vec::new();
    for c in 0..N / 100 {
        let ch = channel(xds).await?;
        for s in 0..100 {
            let (tx, rx) = mpsc::channel(1);
            tx.send(DiscoveryRequest {
                node: node(format!("idle-{c}-{s}")),
                type_url: ResourceType::Cluster.type_url().into(),
                ..Default::default()
            })
            .await?;
            let mut responses = ads(ch.clone())
                .stream_aggregated_resources(ReceiverStream::new(rx))
                .await?
                .into_inner();
            responses.next().await.transpose()?;
            held.push((tx, responses));
        }
    }
    settle().await;
    let with_streams = rss_mib(pid);
    let kib = |mib: f64| mib * 1024.0 / N as f64;
    println!("RSS before {before:.1} MiB");
    println!(
        "{N} silent connections: {with_conns:.1} MiB, {:.1} KiB each; {after_conns:.1} MiB once closed",
        kib(with_conns - before)
    );
    println!(
        "{N} idle streams on {} connections: {with_streams:.1} MiB, {:.1} KiB each (with their connections)",
        N / 100,
        kib(with_streams - after_conns)
    );
    Ok(())
}
