//! Engine scale benchmark: N simulated ADS clients on one teal process.
//!
//! ```text
//! cargo run --release --example bench_xds -- --streams 10000 --pushes 5
//! cargo run --release --example bench_xds -- --streams 10000 --per-conn 1 --tls
//! cargo run --release --example bench_xds -- --streams 10000 --pushes 3 --bare
//! cargo run --release --example bench_xds -- --streams 10000 --pushes 3 --flip --lrs
//! ```
//!
//! With `--tls` the xDS port speaks TLS, with a CA and a server
//! certificate made by the benchmark.
//!
//! The benchmark starts the xDS server in a child process (this same
//! binary, `--serve`) so that its memory and CPU are measured apart from
//! the clients'. The clients connect over loopback, `--per-conn` streams
//! to an HTTP/2 connection, and each subscribes over ADS to every cluster
//! and to one route configuration, ACKing every response as Envoy does.
//! Then, `--pushes` times, the server publishes a version that moves route
//! weights, and the benchmark records when each client receives it.
//!
//! Reported per push: time from the publish command until each client has
//! the new version (first, p50, p99, max), the CPU time the clients and
//! the server spent until the last had it; once: the server's resident
//! memory per connected idle stream. Figures are what they are on the
//! machine that runs it; BENCHMARKS.md records ours.
//!
//! With `--bare`, the child is not teal but the plainest ADS server tonic
//! and prost make (it answers subscriptions, drops ACKs and fans a new
//! route version out to every stream): the floor that the same clients
//! on the same cores allow, to read teal's figures against.
//!
//! With `--flip`, the child is `teal serve` itself (in-process, the same
//! code as the command) on a config of the same shape (10 services, one
//! group, one listener `main`), and each push is a real flip of service
//! `svc0` through the controller: commit, then confirmation, which waits
//! for every stream to ACK the new routes. The flip is asked of the
//! controller in the child, as the admin API would; the time runs from
//! the benchmark's command to each client's receipt, and the server CPU
//! until the flip's outcome (every ACK handled).
//!
//! With `--lrs` (which needs `--flip`), each simulated client also
//! reports its load over LRS, as Envoy with `load_stats_config` does:
//! once every ADS stream has its routes, each client opens a load stream
//! on the same HTTP/2 connection as its ADS stream (teal admits a load
//! stream only for a node with an xDS stream in the same group), and
//! from then on sends, every interval teal asks for (`--lrs-interval`,
//! teal's `--load-report-interval`, default 1 s), a report naming every
//! cluster teal's answer names, each with four successful requests, one
//! error and one request in progress, through the rest of the run and
//! the flips. A proxy holds two streams then, so `--per-conn` defaults to
//! 50 (teal's `--max-streams-per-connection` is 100).
//!
//! Before the pushes, the benchmark measures an idle span (`--idle`
//! seconds, default 10): the server's and the clients' CPU while nothing
//! changes, which with `--lrs` is the cost of taking the reports; and
//! whether the clients kept up: reports sent against those due, and how
//! late the latest was. The server's own count of what it took comes from
//! `teal status` (the measured traffic of `svc0`). Resident memory is
//! read with the ADS streams alone, and again once the load streams have
//! reported for a few intervals: the difference is what a proxy's load
//! reporting costs the server.
//!
//! With `--dashboards N` (which needs `--flip`), N readers of teal's
//! event stream (`GET /v1/events` on the admin port, what the dashboard
//! page reads) are open through the flips, each on a connection of its
//! own as a browser tab's: per flip the benchmark prints how long after
//! the command every dashboard had the flip's outcome, and at the end what
//! they read and teal's memory. `--stuck-dashboards N` adds N connections
//! that ask for the stream and never read a byte (a frozen tab): teal
//! must neither hold memory for them without bound nor slow the flip.
//!
//! `BENCH_XDS_WRAP="heaptrack -o FILE"` runs the child under that
//! command (a heap profiler here); the CPU and memory printed are then
//! the wrapper's.
//!
//! With `--callgrind FILE`, the child runs under `valgrind
//! --tool=callgrind` with instrumentation off until the first push and on
//! through the last, then dumps to FILE: an instruction-exact profile of
//! the pushes alone, with callers (`callgrind_annotate --inclusive=yes
//! --tree=caller FILE`). Use a smaller `--streams`: everything runs about
//! 50 times slower under valgrind.

use std::io::{BufRead, Write};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterStats, UpstreamLocalityStats};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, VirtualHost, WeightedCluster, route::Action,
    route_action::ClusterSpecifier, weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use envoy_types::pb::envoy::service::load_stats::v3::{LoadStatsRequest, LoadStatsResponse};
use envoy_types::pb::google::protobuf::UInt32Value;
use teal::xds::resources::ResourceType;
use teal::xds::snapshot::{GroupResources, SnapshotInput};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

#[path = "bench_common/dashboards.rs"]
mod dashboards;

const SERVICES: usize = 10;

/// Set when the benchmark is done, so clients cut off by the server's exit
/// stay quiet.
static DONE: AtomicBool = AtomicBool::new(false);

fn input(green: u32) -> SnapshotInput {
    let mut g = GroupResources::default();
    let mut routes = Vec::new();
    for s in 0..SERVICES {
        for fleet in ["blue", "green"] {
            g.clusters.push(Cluster {
                name: format!("svc{s}-{fleet}"),
                ..Default::default()
            });
        }
        routes.push(Route {
            name: format!("svc{s}"),
            action: Some(Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
                    clusters: [("blue", 100 - green), ("green", green)]
                        .iter()
                        .map(|(f, w)| ClusterWeight {
                            name: format!("svc{s}-{f}"),
                            weight: Some(UInt32Value { value: *w }),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })),
                ..Default::default()
            })),
            ..Default::default()
        });
    }
    g.routes.push(RouteConfiguration {
        name: "bench".into(),
        virtual_hosts: vec![VirtualHost {
            name: "all".into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        ..Default::default()
    });
    let mut i = SnapshotInput::default();
    i.groups.insert("bench".into(), g);
    i
}

/// The server child's side of its pipe to the benchmark: it announces
/// its port, then takes one push per stdin line and answers each with a
/// line of its own.
struct Pipe {
    lines: tokio::io::Lines<BufReader<tokio::io::Stdin>>,
    out: tokio::io::Stdout,
}

impl Pipe {
    async fn announce(port: u16) -> anyhow::Result<Pipe> {
        let mut pipe = Pipe {
            lines: BufReader::new(tokio::io::stdin()).lines(),
            out: tokio::io::stdout(),
        };
        pipe.say(&format!("port {port}")).await?;
        Ok(pipe)
    }

    /// Waits for the next push; `false` once the benchmark is done.
    async fn next(&mut self) -> anyhow::Result<bool> {
        Ok(self.next_line().await?.is_some())
    }

    /// The next command line; `None` once the benchmark is done.
    async fn next_line(&mut self) -> anyhow::Result<Option<String>> {
        Ok(self.lines.next_line().await?)
    }

    async fn say(&mut self, line: &str) -> anyhow::Result<()> {
        self.out.write_all(format!("{line}\n").as_bytes()).await?;
        self.out.flush().await?;
        Ok(())
    }
}

/// The server side: serve (with TLS when `tls_dir` holds `server.crt`
/// and `server.key`), and publish a new version per stdin line.
async fn serve(tls_dir: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let (mut writer, reader) = teal::xds::snapshot_store::snapshot_store();
    let registry = teal::xds::ProxyRegistry::new();
    let tls = match tls_dir {
        Some(dir) => Some(teal::transport::tls::ServerTls::load(
            teal::transport::listener::Port::Xds,
            teal::transport::tls::TlsFiles {
                cert: dir.join("server.crt"),
                key: dir.join("server.key"),
                client_ca: None,
            },
        )?),
        None => None,
    };
    let server = teal::xds::XdsServer::new(
        reader,
        registry,
        teal::shutdown::Shutdown::never(),
        teal::xds::XdsServerConfig {
            tls,
            ..Default::default()
        },
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    let mut version = 1u32;
    writer.publish(&version.to_string(), &input(0))?;
    tokio::spawn(server.serve(listener));
    let mut pipe = Pipe::announce(port).await?;
    while pipe.next().await? {
        version += 1;
        writer.publish(&version.to_string(), &input((version + 1) % 2 * 100))?;
        pipe.say(&format!("published {version}")).await?;
    }
    Ok(())
}

/// A floor to measure teal against: an ADS server written the plainest
/// way on tonic and prost, with none of teal (no snapshot, no registry,
/// no state machines). It answers each first request of a type with the
/// current resources, reads and drops every ACK, and per stdin line sends
/// a new route version to every stream (prost encodes it for each).
mod bare {
    use std::sync::{Arc, Mutex};

    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
        AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
    };
    use envoy_types::pb::envoy::service::discovery::v3::{
        DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
    };
    use envoy_types::pb::google::protobuf::Any;
    use prost::Message;
    use teal::xds::resources::ResourceType;
    use tokio::sync::mpsc;
    use tokio_stream::StreamExt;
    use tokio_stream::wrappers::ReceiverStream;
    use tonic::{Request, Response, Status, Streaming};

    type Tx = mpsc::Sender<Result<DiscoveryResponse, Status>>;

    #[derive(Default)]
    struct State {
        /// The current cluster and route responses.
        current: Mutex<(DiscoveryResponse, DiscoveryResponse)>,
        /// Every stream subscribed to routes.
        streams: Mutex<Vec<Tx>>,
    }

    fn responses(version: u32) -> (DiscoveryResponse, DiscoveryResponse) {
        let input = super::input((version + 1) % 2 * 100);
        let group = &input.groups["bench"];
        let any = |ty: ResourceType, value: Vec<u8>| Any {
            type_url: ty.type_url().into(),
            value,
        };
        let response = |ty: ResourceType, resources: Vec<Any>| DiscoveryResponse {
            version_info: version.to_string(),
            type_url: ty.type_url().into(),
            nonce: version.to_string(),
            resources,
            ..Default::default()
        };
        (
            response(
                ResourceType::Cluster,
                group
                    .clusters
                    .iter()
                    .map(|c| any(ResourceType::Cluster, c.encode_to_vec()))
                    .collect(),
            ),
            response(
                ResourceType::Route,
                group
                    .routes
                    .iter()
                    .map(|r| any(ResourceType::Route, r.encode_to_vec()))
                    .collect(),
            ),
        )
    }

    struct Bare(Arc<State>);

    #[tonic::async_trait]
    impl AggregatedDiscoveryService for Bare {
        type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
        type DeltaAggregatedResourcesStream =
            ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

        async fn stream_aggregated_resources(
            &self,
            request: Request<Streaming<DiscoveryRequest>>,
        ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
            let (tx, rx) = mpsc::channel(16);
            let mut requests = request.into_inner();
            let state = self.0.clone();
            tokio::spawn(async move {
                while let Some(Ok(request)) = requests.next().await {
                    if !request.response_nonce.is_empty() {
                        continue;
                    }
                    let route = request.type_url == ResourceType::Route.type_url();
                    let response = {
                        let current = state.current.lock().expect("not poisoned");
                        if route {
                            current.1.clone()
                        } else {
                            current.0.clone()
                        }
                    };
                    if route {
                        state.streams.lock().expect("not poisoned").push(tx.clone());
                    }
                    if tx.send(Ok(response)).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Response::new(ReceiverStream::new(rx)))
        }

        async fn delta_aggregated_resources(
            &self,
            _request: Request<Streaming<DeltaDiscoveryRequest>>,
        ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
            Err(Status::unimplemented("the floor server speaks SotW only"))
        }
    }

    pub(super) async fn serve() -> anyhow::Result<()> {
        let state = Arc::new(State::default());
        let mut version = 1u32;
        *state.current.lock().expect("not poisoned") = responses(version);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let server = tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(Bare(state.clone())))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        tokio::spawn(server);
        let mut pipe = super::Pipe::announce(port).await?;
        while pipe.next().await? {
            version += 1;
            let next = responses(version);
            let route = next.1.clone();
            *state.current.lock().expect("not poisoned") = next;
            let streams = state.streams.lock().expect("not poisoned").clone();
            for tx in streams {
                let _ = tx.send(Ok(route.clone())).await;
            }
            pipe.say(&format!("published {version}")).await?;
        }
        Ok(())
    }
}

/// The teal config `--flip` serves: the same routes as [`input`].
fn teal_config() -> String {
    let mut yaml = String::from("services:\n");
    let mut routes = Vec::new();
    for s in 0..SERVICES {
        yaml.push_str(&format!(
            "  svc{s}:\n    live: blue\n    fleets:\n      blue: {{endpoints: [127.0.0.1:9]}}\n      green: {{endpoints: [127.0.0.1:9]}}\n"
        ));
        routes.push(format!("{{prefix: /svc{s}, service: svc{s}}}"));
    }
    yaml.push_str(&format!(
        "groups:\n  bench:\n    listeners:\n      main:\n        kind: edge\n        address: 127.0.0.1:10000\n        virtual_hosts:\n          all:\n            domains: [\"*\"]\n            routes: [{}]\n",
        routes.join(", ")
    ));
    yaml
}

/// The server side of `--flip`: `teal serve` asking for load reports
/// every `interval`, and per stdin line a flip of `svc0` (`flip`),
/// answered `flipped <command to outcome µs> <outcome>`, or what its
/// status says of `svc0`'s measured traffic (`traffic`), answered
/// `traffic <requests reported since teal started> <proxies reporting>
/// <proxies routing>` (requests summed over the fleets, proxies the
/// fewest of any fleet).
async fn serve_teal(interval: Duration) -> anyhow::Result<()> {
    use teal::admin::Backend;
    use teal::rollout::Operation;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("teal.yaml");
    std::fs::write(&config, teal_config())?;
    let (_trigger, shutdown) = teal::shutdown::shutdown_channel();
    let mut options = teal::serve::ServeOptions {
        watch_interval: Duration::from_secs(3600),
        ..teal::serve::ServeOptions::local(Some(config))
    };
    options.xds.load_reports.interval = interval;
    let running = teal::serve::start(options, shutdown).await?;
    let mut pipe = Pipe::announce(running.xds_addr.port()).await?;
    pipe.say(&format!("admin {}", running.admin_addr.port()))
        .await?;
    while let Some(command) = pipe.next_line().await? {
        if command.trim() == "traffic" {
            let status = running.controller.status(Some("svc0")).await?;
            let fleets = status
                .services
                .first()
                .map(|s| s.traffic.clone())
                .unwrap_or_default();
            let total: u64 = fleets.iter().map(|f| f.total_requests).sum();
            let reporting = fleets
                .iter()
                .map(|f| f.proxies_reporting)
                .min()
                .unwrap_or(0);
            let routing = fleets.iter().map(|f| f.proxies_routing).max().unwrap_or(0);
            pipe.say(&format!("traffic {total} {reporting} {routing}"))
                .await?;
            continue;
        }
        let start = Instant::now();
        let mut rx = running
            .controller
            .start(
                Operation::Flip {
                    service: "svc0".into(),
                    to: None,
                    skip_checks: true,
                    timeout: Duration::from_secs(60),
                },
                "bench",
            )
            .await?;
        let (outcome, id) = loop {
            let p = rx.borrow_and_update().clone();
            if let Some(o) = p.outcome {
                break (o, p.id);
            }
            rx.changed().await?;
        };
        let took = start.elapsed().as_micros();
        pipe.say(&format!("flipped {took} {outcome:?} id {id}"))
            .await?;
    }
    Ok(())
}

struct Args {
    streams: usize,
    per_conn: usize,
    pushes: usize,
    tls: bool,
    flip: bool,
    bare: bool,
    /// Each client reports its load too.
    lrs: bool,
    /// How often teal asks for load reports.
    lrs_interval: Duration,
    /// Which node the load messages carry.
    lrs_node: LrsNode,
    /// The idle span measured before the pushes.
    idle: Duration,
    callgrind: Option<std::path::PathBuf>,
    /// Readers of the event stream open through the flips.
    dashboards: usize,
    /// Connections that ask for the event stream and never read.
    stuck_dashboards: usize,
}

/// teal's default `--max-streams-per-connection`: with `--lrs` each
/// simulated proxy holds two streams (ADS and LRS) on its connection.
const SERVER_STREAMS_PER_CONN: usize = 100;

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        streams: 1000,
        per_conn: 0,
        pushes: 5,
        tls: false,
        flip: false,
        bare: false,
        lrs: false,
        lrs_interval: Duration::from_secs(1),
        lrs_node: LrsNode::Envoy,
        idle: Duration::from_secs(10),
        callgrind: None,
        dashboards: 0,
        stuck_dashboards: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> anyhow::Result<usize> {
            Ok(it
                .next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?
                .parse()?)
        };
        if flag == "--tls" {
            a.tls = true;
            continue;
        }
        if flag == "--flip" {
            a.flip = true;
            continue;
        }
        if flag == "--bare" {
            a.bare = true;
            continue;
        }
        if flag == "--lrs" {
            a.lrs = true;
            continue;
        }
        if flag == "--lrs-node" {
            a.lrs_node = match it.next().as_deref() {
                Some("envoy") => LrsNode::Envoy,
                Some("first") => LrsNode::First,
                other => anyhow::bail!(
                    "--lrs-node is envoy or first, not {:?}",
                    other.unwrap_or_default()
                ),
            };
            continue;
        }
        if flag == "--callgrind" {
            a.callgrind = Some(
                it.next()
                    .ok_or_else(|| anyhow::anyhow!("--callgrind needs a file"))?
                    .into(),
            );
            continue;
        }
        match flag.as_str() {
            "--streams" => a.streams = value()?,
            "--per-conn" => a.per_conn = value()?.max(1),
            "--pushes" => a.pushes = value()?,
            "--lrs-interval" => a.lrs_interval = Duration::from_millis(value()? as u64),
            "--idle" => a.idle = Duration::from_secs(value()? as u64),
            "--dashboards" => a.dashboards = value()?,
            "--stuck-dashboards" => a.stuck_dashboards = value()?,
            other => anyhow::bail!(
                "unknown flag {other}; use --streams N --per-conn N --pushes N --idle SECONDS [--tls | --flip [--lrs [--lrs-interval MS] [--lrs-node envoy|first]] [--dashboards N] [--stuck-dashboards N] | --bare] [--callgrind FILE]"
            ),
        }
    }
    let streams_per_proxy = if a.lrs { 2 } else { 1 };
    if a.per_conn == 0 {
        a.per_conn = SERVER_STREAMS_PER_CONN / streams_per_proxy;
    }
    if a.per_conn * streams_per_proxy > SERVER_STREAMS_PER_CONN {
        anyhow::bail!(
            "--per-conn {} needs {} streams per connection; teal allows {SERVER_STREAMS_PER_CONN} \
             (with --lrs each client holds an ADS and a load stream)",
            a.per_conn,
            a.per_conn * streams_per_proxy
        );
    }
    if a.lrs && !a.flip {
        anyhow::bail!(
            "--lrs needs --flip: only teal serve asks for load reports (its controller names the clusters)"
        );
    }
    if !(100..=60_000).contains(&a.lrs_interval.as_millis()) {
        anyhow::bail!("--lrs-interval is 100 to 60000 ms, as teal's --load-report-interval");
    }
    if (a.dashboards > 0 || a.stuck_dashboards > 0) && !a.flip {
        anyhow::bail!(
            "--dashboards and --stuck-dashboards need --flip: only teal serve has the admin port"
        );
    }
    if a.bare && (a.tls || a.flip) {
        anyhow::bail!("--bare is the plain publish, without TLS or a flip");
    }
    if a.tls && a.flip {
        anyhow::bail!("--tls and --flip do not go together: the flip's teal serve is plaintext");
    }
    Ok(a)
}

/// Reads a process's resident memory (KiB) and CPU time from /proc.
fn proc_stats(pid: u32) -> anyhow::Result<(u64, Duration)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start at ")".
    let after = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // Linux reports CPU time in clock ticks of 1/100 s on every common
    // configuration (USER_HZ).
    Ok((rss, Duration::from_millis(ticks * 10)))
}

/// What the `--flip` child's status says of `svc0`'s traffic: requests
/// reported since it started, proxies reporting, proxies routing.
fn traffic(
    child_in: &mut std::process::ChildStdin,
    child_out: &mut std::io::BufReader<std::process::ChildStdout>,
) -> anyhow::Result<(u64, usize, usize)> {
    child_in.write_all(b"traffic\n")?;
    child_in.flush()?;
    let mut line = String::new();
    child_out.read_line(&mut line)?;
    match line.split_whitespace().collect::<Vec<_>>()[..] {
        ["traffic", total, reporting, routing] => {
            Ok((total.parse()?, reporting.parse()?, routing.parse()?))
        }
        _ => anyhow::bail!("unexpected server output {line:?}"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// What the simulated clients' load streams share: the signal to open
/// them, and counts the benchmark reads.
struct LoadClients {
    /// Which node the load messages carry.
    node: LrsNode,
    /// The node's fields but id and group, encoded once for all.
    node_rest: bytes::Bytes,
    /// Set when the load streams may open (the ADS streams are synced and
    /// their memory measured).
    go: tokio::sync::Notify,
    opened: AtomicBool,
    /// Load streams teal answered.
    admitted: AtomicUsize,
    /// Load streams that failed (refused, or ended by teal).
    failed: AtomicUsize,
    /// Reports sent.
    sent: AtomicU64,
    /// Reports sent later than half an interval after they were due.
    late: AtomicU64,
    /// The latest any report was, in µs, since the last reset.
    max_late_us: AtomicU64,
}

impl LoadClients {
    fn new(node: LrsNode) -> LoadClients {
        use prost::Message;
        LoadClients {
            node,
            node_rest: envoy_like_node().encode_to_vec().into(),
            go: tokio::sync::Notify::new(),
            opened: AtomicBool::new(false),
            admitted: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            sent: AtomicU64::new(0),
            late: AtomicU64::new(0),
            max_late_us: AtomicU64::new(0),
        }
    }

    fn open(&self) {
        self.opened.store(true, Ordering::SeqCst);
        self.go.notify_waiters();
    }

    async fn wait_open(&self) {
        let notified = self.go.notified();
        if self.opened.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }
}

fn proto_duration(d: Duration) -> envoy_types::pb::google::protobuf::Duration {
    envoy_types::pb::google::protobuf::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// Which node a simulated proxy's load messages carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LrsNode {
    /// Every message carries the whole node, as large as Envoy 1.40's,
    /// as Envoy sends it (its load reporter puts the node in every
    /// report; `set_node_on_first_message_only` is for xDS only).
    Envoy,
    /// Only the first message names the node, with its id and group
    /// alone; the reports carry none.
    First,
}

/// The extensions Envoy 1.40 lists in its node, measured from its admin
/// `/server_info` (`envoy/edge.yaml`): 516 of them in 108 categories,
/// names of 33 bytes and categories of 24 on average, 428 with one type
/// URL of 64 bytes. Together 60.9 kB of protobuf, in every report: teal
/// received 61 kB per second from each Envoy reporting every second.
const ENVOY_EXTENSIONS: usize = 516;

/// A node with Envoy 1.40's fields but its id and group: its build, its
/// client features, and extensions of the sizes [`ENVOY_EXTENSIONS`]
/// describes (made up names, the same lengths).
fn envoy_like_node() -> Node {
    use envoy_types::pb::envoy::config::core::v3::{BuildVersion, Extension, node};
    use envoy_types::pb::envoy::r#type::v3::SemanticVersion;
    let fit = |mut text: String, len: usize| {
        text.truncate(len);
        while text.len() < len {
            text.push('x');
        }
        text
    };
    let extensions = (0..ENVOY_EXTENSIONS)
        .map(|i| Extension {
            name: fit(format!("envoy.filters.bench.extension_{i:04}"), 33),
            category: fit(format!("envoy.bench.category_{:03}", i % 108), 24),
            type_urls: if i % 6 == 0 && i / 6 < 88 {
                vec![]
            } else {
                vec![fit(
                    format!("envoy.extensions.bench.v3.ExtensionConfigurationNumber{i:04}"),
                    64,
                )]
            },
            ..Default::default()
        })
        .collect();
    let metadata = [
        ("revision.sha", "9e5580933739775e8bce696a57a2e1bc99368f23"),
        ("build.type", "RELEASE"),
        ("revision.status", "Clean"),
        ("ssl.version", "BoringSSL"),
    ];
    Node {
        user_agent_name: "envoy".into(),
        user_agent_version_type: Some(node::UserAgentVersionType::UserAgentBuildVersion(
            BuildVersion {
                version: Some(SemanticVersion {
                    major_number: 1,
                    minor_number: 40,
                    patch: 0,
                }),
                metadata: Some(envoy_types::pb::google::protobuf::Struct {
                    fields: metadata
                        .iter()
                        .map(|(k, v)| {
                            (
                                (*k).to_owned(),
                                envoy_types::pb::google::protobuf::Value {
                                    kind: Some(
                                        envoy_types::pb::google::protobuf::value::Kind::StringValue(
                                            (*v).to_owned(),
                                        ),
                                    ),
                                },
                            )
                        })
                        .collect(),
                }),
            },
        )),
        extensions,
        client_features: vec!["envoy.lrs.supports_send_all_clusters".into()],
        ..Default::default()
    }
}

/// A load message as the simulated proxies send it: pieces of one
/// encoded `LoadStatsRequest`, written one after the other (protobuf
/// fields concatenate), so what every message repeats is encoded once
/// for all clients and only copied into each message, as a proxy would.
struct RawLoadMessage(Vec<bytes::Bytes>);

/// The client's codec for load streams: writes [`RawLoadMessage`]s,
/// decodes teal's answers with prost.
#[derive(Clone, Copy, Default)]
struct RawLoadCodec;

struct RawLoadEncoder;

impl tonic::codec::Encoder for RawLoadEncoder {
    type Item = RawLoadMessage;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: RawLoadMessage,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        for piece in item.0 {
            bytes::BufMut::put_slice(dst, &piece);
        }
        Ok(())
    }
}

impl tonic::codec::Codec for RawLoadCodec {
    type Encode = RawLoadMessage;
    type Decode = LoadStatsResponse;
    type Encoder = RawLoadEncoder;
    type Decoder = tonic_prost::ProstDecoder<LoadStatsResponse>;

    fn encoder(&mut self) -> RawLoadEncoder {
        RawLoadEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::default()
    }
}

/// The `node` field of a `LoadStatsRequest` for node `id` of group
/// `bench`, whose other node fields are `rest` (an encoded `Node`): its
/// header, id and group, to be followed by `rest`.
fn node_head(id: &str, rest: &[u8]) -> bytes::Bytes {
    use prost::Message;
    let named = Node {
        id: id.to_owned(),
        cluster: "bench".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let mut head = Vec::with_capacity(named.len() + 8);
    prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut head);
    prost::encoding::encode_varint((named.len() + rest.len()) as u64, &mut head);
    head.extend_from_slice(&named);
    head.into()
}

/// The `cluster_stats` of a report naming `clusters`, each with four
/// successful requests, one error and one request in progress over
/// `interval`, encoded.
fn report_stats(clusters: &[String], interval: Duration) -> bytes::Bytes {
    use prost::Message;
    LoadStatsRequest {
        node: None,
        cluster_stats: clusters
            .iter()
            .map(|c| ClusterStats {
                cluster_name: c.clone(),
                upstream_locality_stats: vec![UpstreamLocalityStats {
                    total_successful_requests: 4,
                    total_error_requests: 1,
                    total_issued_requests: 5,
                    total_requests_in_progress: 1,
                    ..Default::default()
                }],
                load_report_interval: Some(proto_duration(interval)),
                ..Default::default()
            })
            .collect(),
    }
    .encode_to_vec()
    .into()
}

const STREAM_LOAD_STATS: &str = "/envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats";

/// One simulated proxy's load stream, as Envoy's: opened on the ADS
/// stream's connection, first message names the node, then a report per
/// interval teal asks for, naming every cluster teal asks for, until the
/// benchmark ends. `rest` is the rest of the node ([`envoy_like_node`]
/// encoded), which every message repeats with [`LrsNode::Envoy`].
async fn report_load(
    channel: tonic::transport::Channel,
    id: String,
    shared: Arc<LoadClients>,
) -> anyhow::Result<()> {
    shared.wait_open().await;
    let rest = match shared.node {
        LrsNode::Envoy => shared.node_rest.clone(),
        LrsNode::First => bytes::Bytes::new(),
    };
    let head = node_head(&id, &rest);
    let (tx, rx) = mpsc::channel(4);
    tx.send(RawLoadMessage(vec![head.clone(), rest.clone()]))
        .await?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let mut answers = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            http::uri::PathAndQuery::from_static(STREAM_LOAD_STATS),
            RawLoadCodec,
        )
        .await?
        .into_inner();
    let mut asked = answers
        .message()
        .await?
        .ok_or_else(|| anyhow::anyhow!("teal ended the load stream without an answer"))?;
    shared.admitted.fetch_add(1, Ordering::Relaxed);
    let every_report = match shared.node {
        LrsNode::Envoy => vec![head, rest],
        LrsNode::First => vec![],
    };
    loop {
        let interval = asked
            .load_reporting_interval
            .and_then(|d| {
                Some(Duration::new(
                    u64::try_from(d.seconds).ok()?,
                    u32::try_from(d.nanos).ok()?,
                ))
            })
            .filter(|d| !d.is_zero())
            .ok_or_else(|| anyhow::anyhow!("teal asked for no interval"))?;
        let stats = report_stats(&asked.clusters, interval);
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        // Envoy's report timer is re-armed after each report, so a late
        // report delays the next rather than bunching them.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                due = tick.tick() => {
                    let mut pieces = every_report.clone();
                    pieces.push(stats.clone());
                    tx.send(RawLoadMessage(pieces)).await?;
                    shared.sent.fetch_add(1, Ordering::Relaxed);
                    let late = due.elapsed();
                    if late > interval / 2 {
                        shared.late.fetch_add(1, Ordering::Relaxed);
                    }
                    shared
                        .max_late_us
                        .fetch_max(late.as_micros() as u64, Ordering::Relaxed);
                }
                answer = answers.message() => {
                    asked = answer?
                        .ok_or_else(|| anyhow::anyhow!("teal ended the load stream"))?;
                    break;
                }
            }
        }
    }
}

/// One simulated client: subscribes, ACKs everything, reports when it
/// receives each route version; with `load`, opens its load stream once
/// it has its routes and the benchmark says so.
async fn client(
    channel: tonic::transport::Channel,
    id: usize,
    route: &'static str,
    seen: mpsc::UnboundedSender<(String, Instant)>,
    load: Option<Arc<LoadClients>>,
) -> anyhow::Result<()> {
    let mut ads =
        AggregatedDiscoveryServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    let (tx, rx) = mpsc::channel(8);
    let node = Node {
        id: format!("sim-{id}"),
        cluster: "bench".into(),
        ..Default::default()
    };
    let mut load = load.map(|l| (channel, l));
    let request =
        |ty: ResourceType, names: &[&str], nonce: String, version: String| DiscoveryRequest {
            node: Some(node.clone()),
            type_url: ty.type_url().into(),
            resource_names: names.iter().map(|n| (*n).to_string()).collect(),
            response_nonce: nonce,
            version_info: version,
            ..Default::default()
        };
    tx.send(request(
        ResourceType::Cluster,
        &[],
        String::new(),
        String::new(),
    ))
    .await?;
    tx.send(request(
        ResourceType::Route,
        &[route],
        String::new(),
        String::new(),
    ))
    .await?;
    let mut responses = ads
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(resp) = responses.next().await {
        let resp = resp?;
        let ty = ResourceType::from_type_url(&resp.type_url)
            .ok_or_else(|| anyhow::anyhow!("unexpected type {}", resp.type_url))?;
        if ty == ResourceType::Route {
            let _ = seen.send((resp.version_info.clone(), Instant::now()));
            if let Some((channel, shared)) = load.take() {
                let node_id = node.id.clone();
                tokio::spawn(async move {
                    if let Err(e) = report_load(channel, node_id, shared.clone()).await
                        && !DONE.load(Ordering::Relaxed)
                        && shared.failed.fetch_add(1, Ordering::Relaxed) < 3
                    {
                        eprintln!("client {id}: load stream: {e}");
                    }
                });
            }
        }
        let names: &[&str] = if ty == ResourceType::Route {
            &[route]
        } else {
            &[]
        };
        tx.send(request(ty, names, resp.nonce, resp.version_info))
            .await?;
    }
    Ok(())
}

/// Waits until `n` clients received a route version that `wanted`;
/// returns when each did, sorted, and the last version received.
async fn wait_for(
    seen: &mut mpsc::UnboundedReceiver<(String, Instant)>,
    wanted: impl Fn(&str) -> bool,
    n: usize,
    start: Instant,
) -> anyhow::Result<(Vec<Duration>, String)> {
    let mut got = Vec::with_capacity(n);
    let mut last = String::new();
    let deadline = start + Duration::from_secs(120);
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, seen.recv()).await {
            Ok(Some((v, at))) if wanted(&v) => {
                got.push(at.saturating_duration_since(start));
                last = v;
            }
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                anyhow::bail!("only {} of {n} clients received the version", got.len())
            }
        }
    }
    got.sort();
    Ok((got, last))
}

/// Waits until every dashboard showed the outcome of the flip the
/// `flipped ... id N` line names; says when, after the command, the first
/// and the last did, and keeps the last one's lag after the outcome.
async fn dashboards_saw(
    seen: &dashboards::Seen,
    line: &str,
    n: usize,
    start: Instant,
    lags: &mut Vec<Duration>,
) -> anyhow::Result<String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let (Some(id), Some(outcome_us)) = (
        words.last().and_then(|w| w.parse::<u64>().ok()),
        words.get(1).and_then(|w| w.parse::<u64>().ok()),
    ) else {
        anyhow::bail!("unexpected server output {line:?}");
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let at = seen.outcome_seen(id);
        if at.len() >= n {
            let (first, last) = (at[0] - start, at[at.len() - 1] - start);
            let outcome = Duration::from_micros(outcome_us);
            lags.push(last.saturating_sub(outcome));
            return Ok(format!(
                "; on every dashboard after {:.1?} (first {:.1?})",
                last, first
            ));
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {} of {n} dashboards showed flip {id}'s outcome within 30 s",
            at.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn run() -> anyhow::Result<()> {
    let args = args()?;
    let exe = std::env::current_exe()?;
    // TLS: a CA and a server certificate for localhost, made here.
    let tls_dir = tempfile::tempdir()?;
    let client_tls = if args.tls {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])?
            .signed_by(&key, &issuer)?;
        std::fs::write(tls_dir.path().join("ca.crt"), ca.pem())?;
        std::fs::write(tls_dir.path().join("server.crt"), cert.pem())?;
        std::fs::write(tls_dir.path().join("server.key"), key.serialize_pem())?;
        Some(teal::transport::tls::client_config(
            Some(&tls_dir.path().join("ca.crt")),
            None,
        )?)
    } else {
        None
    };
    let mut command = match &args.callgrind {
        Some(out) => {
            let mut c = std::process::Command::new("valgrind");
            c.arg("--tool=callgrind")
                .arg("--instr-atstart=no")
                .arg(format!("--callgrind-out-file={}", out.display()))
                .arg(exe);
            c
        }
        // `BENCH_XDS_WRAP="heaptrack -o FILE"` runs the server under a
        // profiler (the CPU and memory printed are then the wrapper's).
        None => match std::env::var("BENCH_XDS_WRAP") {
            Ok(wrap) if !wrap.trim().is_empty() => {
                let mut words = wrap.split_whitespace();
                let mut c = std::process::Command::new(words.next().unwrap_or_default());
                c.args(words).arg(exe);
                c
            }
            _ => std::process::Command::new(exe),
        },
    };
    command.arg(if args.flip {
        "--serve-teal"
    } else if args.bare {
        "--serve-bare"
    } else {
        "--serve"
    });
    if args.tls {
        command.arg(tls_dir.path());
    }
    if args.flip {
        command.arg(args.lrs_interval.as_millis().to_string());
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut child_in = child.stdin.take().ok_or_else(|| anyhow::anyhow!("stdin"))?;
    let mut child_out = std::io::BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("stdout"))?,
    );
    let mut line = String::new();
    // A wrapper may say something first (heaptrack does, on stdout).
    while !line.starts_with("port ") {
        line.clear();
        anyhow::ensure!(
            child_out.read_line(&mut line)? > 0,
            "the server ended before saying its port"
        );
    }
    let port: u16 = line
        .trim()
        .strip_prefix("port ")
        .ok_or_else(|| anyhow::anyhow!("unexpected server output {line:?}"))?
        .parse()?;
    let admin = if args.flip {
        line.clear();
        child_out.read_line(&mut line)?;
        let port: u16 = line
            .trim()
            .strip_prefix("admin ")
            .ok_or_else(|| anyhow::anyhow!("unexpected server output {line:?}"))?
            .parse()?;
        Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
    } else {
        None
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (rss_before, _) = proc_stats(pid)?;

    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let load = Arc::new(LoadClients::new(args.lrs_node));
    if args.lrs {
        println!(
            "load reports: every {:?}; {}",
            args.lrs_interval,
            match args.lrs_node {
                LrsNode::Envoy => format!(
                    "every message carries a node as large as Envoy 1.40's ({} bytes)",
                    load.node_rest.len()
                ),
                LrsNode::First => "only the first message names the node".to_owned(),
            }
        );
    }
    let route = if args.flip { "main" } else { "bench" };
    let conns = args.streams.div_ceil(args.per_conn);
    let started = Instant::now();
    for c in 0..conns {
        let channel = match &client_tls {
            Some(tls) => {
                tonic::transport::Endpoint::from_shared(format!("https://localhost:{port}"))?
                    .connect_with_connector(teal::transport::tls::TlsConnector::new(tls.clone()))
                    .await?
            }
            None => {
                tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
                    .connect()
                    .await?
            }
        };
        for s in 0..args.per_conn.min(args.streams - c * args.per_conn) {
            let id = c * args.per_conn + s;
            let (channel, seen_tx) = (channel.clone(), seen_tx.clone());
            let load = args.lrs.then(|| load.clone());
            tokio::spawn(async move {
                if let Err(e) = client(channel, id, route, seen_tx, load).await
                    && !DONE.load(Ordering::Relaxed)
                {
                    eprintln!("client {id}: {e}");
                }
            });
        }
    }
    let (_, mut current) = wait_for(&mut seen, |_| true, args.streams, started).await?;
    println!(
        "{} streams on {} connections connected and synced in {:.2?}",
        args.streams,
        conns,
        started.elapsed()
    );
    // Let ACKs land and allocations settle before measuring idle memory.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_idle, _) = proc_stats(pid)?;
    let per_stream = (rss_idle.saturating_sub(rss_before)) as f64 * 1024.0 / args.streams as f64;
    println!(
        "server RSS: {rss_before} KiB before, {rss_idle} KiB with {} idle streams: {:.1} KiB per stream",
        args.streams,
        per_stream / 1024.0
    );

    // Load streams open now, so the memory above is the ADS streams'
    // alone; both runs then wait the same few intervals.
    if args.lrs {
        let opening = Instant::now();
        load.open();
        let deadline = opening + Duration::from_secs(120);
        loop {
            let answered = load.admitted.load(Ordering::Relaxed);
            let failed = load.failed.load(Ordering::Relaxed);
            if answered + failed >= args.streams {
                println!(
                    "{answered} load streams admitted, {failed} failed, in {:.2?}",
                    opening.elapsed()
                );
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {answered} of {} load streams admitted ({failed} failed) within 120 s",
                args.streams
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(3 * args.lrs_interval + Duration::from_secs(1)).await;
    let (rss_settled, _) = proc_stats(pid)?;
    println!(
        "server RSS {}: {rss_settled} KiB: {:.1} KiB per proxy ({:+.1} KiB per proxy since the ADS streams alone)",
        if args.lrs {
            "once every proxy reported for 3 intervals"
        } else {
            "3 intervals later, no load reports"
        },
        rss_settled.saturating_sub(rss_before) as f64 / args.streams as f64,
        (rss_settled as f64 - rss_idle as f64) / args.streams as f64,
    );

    let mut ask_traffic = |child_out: &mut std::io::BufReader<std::process::ChildStdout>| {
        if args.flip {
            traffic(&mut child_in, child_out).map(Some)
        } else {
            Ok(None)
        }
    };
    if !args.idle.is_zero() {
        let traffic_before = ask_traffic(&mut child_out)?;
        let (_, cpu_before) = proc_stats(pid)?;
        let (_, clients_before) = proc_stats(std::process::id())?;
        let sent_before = load.sent.load(Ordering::Relaxed);
        load.late.store(0, Ordering::Relaxed);
        load.max_late_us.store(0, Ordering::Relaxed);
        let start = Instant::now();
        tokio::time::sleep(args.idle).await;
        let (_, cpu_after) = proc_stats(pid)?;
        let (_, clients_after) = proc_stats(std::process::id())?;
        let span = start.elapsed();
        let sent = load.sent.load(Ordering::Relaxed) - sent_before;
        let traffic_after = ask_traffic(&mut child_out)?;
        let cpu = cpu_after.saturating_sub(cpu_before);
        let per_sec = cpu.as_secs_f64() / span.as_secs_f64();
        let clients =
            clients_after.saturating_sub(clients_before).as_secs_f64() / span.as_secs_f64();
        println!(
            "idle {:.1?}: server CPU {cpu:?}, {:.1} ms per second ({:.1}% of a core); clients' CPU {:.1} ms per second",
            span,
            per_sec * 1e3,
            per_sec * 100.0,
            clients * 1e3
        );
        if args.lrs {
            let admitted = load.admitted.load(Ordering::Relaxed);
            let due = admitted as f64 * span.as_secs_f64() / args.lrs_interval.as_secs_f64();
            println!(
                "  load reports: {sent} sent, {due:.0} due ({:.1}%); {} sent over half an interval late, latest {:.1?}; server CPU {:.1} µs per report",
                sent as f64 * 100.0 / due.max(1.0),
                load.late.load(Ordering::Relaxed),
                Duration::from_micros(load.max_late_us.load(Ordering::Relaxed)),
                cpu.as_secs_f64() * 1e6 / (sent.max(1)) as f64
            );
            if let (Some(before), Some(after)) = (traffic_before, traffic_after) {
                // Each report counts 5 requests for each of svc0's two
                // fleet clusters.
                let taken = after.0.saturating_sub(before.0) / 10;
                println!(
                    "  teal's status of svc0: {} requests reported over the span, so {taken} reports taken ({:.1}% of those sent); {} of {} proxies reporting",
                    after.0.saturating_sub(before.0),
                    taken as f64 * 100.0 / (sent.max(1)) as f64,
                    after.1,
                    after.2
                );
            }
        }
    }

    let dashboards = Arc::new(dashboards::Seen::default());
    let mut stuck = Vec::new();
    if let Some(admin) = admin
        && args.dashboards + args.stuck_dashboards > 0
    {
        let (rss_without, _) = proc_stats(pid)?;
        dashboards::open(admin, "svc0", args.dashboards, dashboards.clone()).await?;
        stuck = dashboards::stuck(admin, args.stuck_dashboards).await?;
        // A few publishing intervals, so every stream has had the state.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (rss_with, _) = proc_stats(pid)?;
        println!(
            "{} dashboards and {} stuck ones open: server RSS {rss_without} KiB before, {rss_with} KiB after ({:+} KiB)",
            args.dashboards,
            stuck.len(),
            rss_with as i64 - rss_without as i64
        );
    }
    let dashboards_start = Instant::now();
    let dashboard_bytes_start = dashboards.bytes.load(Ordering::Relaxed);
    let mut dashboard_lag = Vec::new();
    let shared_child_out = Arc::new(std::sync::Mutex::new(child_out));
    let callgrind = |what: &str| -> anyhow::Result<()> {
        if args.callgrind.is_some() {
            let status = std::process::Command::new("callgrind_control")
                .arg(what)
                .arg(pid.to_string())
                .stdout(Stdio::null())
                .status()?;
            anyhow::ensure!(status.success(), "callgrind_control {what}: {status}");
        }
        Ok(())
    };
    callgrind("--instr=on")?;
    for push in 0..args.pushes {
        let version = push as u32 + 2;
        let (_, cpu_before) = proc_stats(pid)?;
        let (_, clients_before) = proc_stats(std::process::id())?;
        let start = Instant::now();
        child_in.write_all(if args.flip { b"flip\n" } else { b"publish\n" })?;
        child_in.flush()?;
        let old = current.clone();
        let (got, now_served) = if args.flip {
            wait_for(&mut seen, |v| v != old, args.streams, start).await?
        } else {
            let want = version.to_string();
            wait_for(&mut seen, |v| v == want, args.streams, start).await?
        };
        current = now_served;
        let (_, mut cpu_after) = proc_stats(pid)?;
        let (_, clients_after) = proc_stats(std::process::id())?;
        {
            let mut out = shared_child_out
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            line.clear();
            out.read_line(&mut line)?;
        }
        let outcome = if args.flip {
            // The flip's outcome comes once every ACK is handled: its CPU
            // counts to there.
            (_, cpu_after) = proc_stats(pid)?;
            let mut said = format!("; command to outcome {}", line.trim());
            if args.dashboards > 0 {
                said.push_str(
                    &dashboards_saw(
                        &dashboards,
                        &line,
                        args.dashboards,
                        start,
                        &mut dashboard_lag,
                    )
                    .await?,
                );
            }
            said
        } else {
            // A publish has no outcome: let the ACKs land, so its CPU
            // counts them too, as a flip's does.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let (_, settled) = proc_stats(pid)?;
            format!(
                "; with the ACKs handled {:?} ({:.1} µs per stream)",
                settled.saturating_sub(cpu_before),
                settled.saturating_sub(cpu_before).as_secs_f64() * 1e6 / args.streams as f64
            )
        };
        let cpu = cpu_after.saturating_sub(cpu_before);
        println!(
            "push {version}: all {} clients in first {:.1?}  p50 {:.1?}  p99 {:.1?}  max {:.1?}; clients' CPU to the last {:?}; server CPU {:?} ({:.1} µs per stream){outcome}",
            args.streams,
            got.first().copied().unwrap_or_default(),
            percentile(&got, 0.5),
            percentile(&got, 0.99),
            got.last().copied().unwrap_or_default(),
            clients_after.saturating_sub(clients_before),
            cpu,
            cpu.as_secs_f64() * 1e6 / args.streams as f64
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    callgrind("--dump")?;
    if args.dashboards + args.stuck_dashboards > 0 {
        let span = dashboards_start.elapsed().as_secs_f64();
        let bytes = dashboards.bytes.load(Ordering::Relaxed) - dashboard_bytes_start;
        dashboard_lag.sort();
        let (rss_end, _) = proc_stats(pid)?;
        println!(
            "dashboards: every flip's outcome on all {} of them p50 {:.1?} max {:.1?} after the flip's outcome; each read {:.1} kB/s, {} status and {} proxies events in all; {} streams ended; server RSS at the end {rss_end} KiB with {} stuck",
            args.dashboards,
            percentile(&dashboard_lag, 0.5),
            dashboard_lag.last().copied().unwrap_or_default(),
            bytes as f64 / 1e3 / span / args.dashboards.max(1) as f64,
            dashboards.status_events.load(Ordering::Relaxed),
            dashboards.proxies_events.load(Ordering::Relaxed),
            dashboards.ended.load(Ordering::Relaxed),
            stuck.len()
        );
    }
    drop(stuck);
    DONE.store(true, Ordering::Relaxed);
    child.kill()?;
    let _ = child.wait();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    match std::env::args().nth(1).as_deref() {
        Some("--serve") => {
            let tls_dir = std::env::args().nth(2).map(std::path::PathBuf::from);
            return rt.block_on(serve(tls_dir));
        }
        Some("--serve-teal") => {
            let ms: u64 = std::env::args()
                .nth(2)
                .ok_or_else(|| anyhow::anyhow!("--serve-teal needs the report interval in ms"))?
                .parse()?;
            return rt.block_on(serve_teal(Duration::from_millis(ms)));
        }
        Some("--serve-bare") => return rt.block_on(bare::serve()),
        _ => {}
    }
    rt.block_on(run())
}
