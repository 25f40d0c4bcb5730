//! Engine scale benchmark: N simulated ADS clients on one teal process.
//!
//! ```text
//! cargo run --release --example bench_xds -- --streams 10000 --pushes 5
//! cargo run --release --example bench_xds -- --streams 10000 --per-conn 1 --tls
//! cargo run --release --example bench_xds -- --streams 10000 --pushes 3 --bare
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
//! With `--callgrind FILE`, the child runs under `valgrind
//! --tool=callgrind` with instrumentation off until the first push and on
//! through the last, then dumps to FILE: an instruction-exact profile of
//! the pushes alone, with callers (`callgrind_annotate --inclusive=yes
//! --tree=caller FILE`). Use a smaller `--streams`: everything runs about
//! 50 times slower under valgrind.

use std::io::{BufRead, Write};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, VirtualHost, WeightedCluster, route::Action,
    route_action::ClusterSpecifier, weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use envoy_types::pb::google::protobuf::UInt32Value;
use teal::xds::resources::ResourceType;
use teal::xds::snapshot::{GroupResources, SnapshotInput};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

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
        Ok(self.lines.next_line().await?.is_some())
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

/// The server side of `--flip`: `teal serve`, and a flip of `svc0` per
/// stdin line, answered `flipped <command to outcome µs> <outcome>`.
async fn serve_teal() -> anyhow::Result<()> {
    use teal::admin::Backend;
    use teal::rollout::Operation;
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("teal.yaml");
    std::fs::write(&config, teal_config())?;
    let (_trigger, shutdown) = teal::shutdown::shutdown_channel();
    let running = teal::serve::start(
        teal::serve::ServeOptions {
            watch_interval: Duration::from_secs(3600),
            ..teal::serve::ServeOptions::local(Some(config))
        },
        shutdown,
    )
    .await?;
    let mut pipe = Pipe::announce(running.xds_addr.port()).await?;
    while pipe.next().await? {
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
        let outcome = loop {
            if let Some(o) = rx.borrow_and_update().outcome.clone() {
                break o;
            }
            rx.changed().await?;
        };
        let took = start.elapsed().as_micros();
        pipe.say(&format!("flipped {took} {outcome:?}")).await?;
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
    callgrind: Option<std::path::PathBuf>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        streams: 1000,
        per_conn: 100,
        pushes: 5,
        tls: false,
        flip: false,
        bare: false,
        callgrind: None,
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
            other => anyhow::bail!(
                "unknown flag {other}; use --streams N --per-conn N --pushes N [--tls | --flip | --bare] [--callgrind FILE]"
            ),
        }
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// One simulated client: subscribes, ACKs everything, reports when it
/// receives each route version.
async fn client(
    mut ads: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    id: usize,
    route: &'static str,
    seen: mpsc::UnboundedSender<(String, Instant)>,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(8);
    let node = Node {
        id: format!("sim-{id}"),
        cluster: "bench".into(),
        ..Default::default()
    };
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
        None => std::process::Command::new(exe),
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
    child_out.read_line(&mut line)?;
    let port: u16 = line
        .trim()
        .strip_prefix("port ")
        .ok_or_else(|| anyhow::anyhow!("unexpected server output {line:?}"))?
        .parse()?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (rss_before, _) = proc_stats(pid)?;

    let (seen_tx, mut seen) = mpsc::unbounded_channel();
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
        let ads =
            AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
        for s in 0..args.per_conn.min(args.streams - c * args.per_conn) {
            let id = c * args.per_conn + s;
            let (ads, seen_tx) = (ads.clone(), seen_tx.clone());
            tokio::spawn(async move {
                if let Err(e) = client(ads, id, route, seen_tx).await
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
            format!("; command to outcome {}", line.trim())
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
        Some("--serve-teal") => return rt.block_on(serve_teal()),
        Some("--serve-bare") => return rt.block_on(bare::serve()),
        _ => {}
    }
    rt.block_on(run())
}
