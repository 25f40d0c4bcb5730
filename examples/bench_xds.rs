//! Engine scale benchmark: N simulated ADS clients on one teal process.
//!
//! ```text
//! cargo run --release --example bench_xds -- --streams 10000 --pushes 5
//! cargo run --release --example bench_xds -- --streams 10000 --per-conn 1 --tls
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
//! the new version (p50, p99, max) and the server's CPU time; once: the
//! server's resident memory per connected idle stream. Figures are what
//! they are on the machine that runs it; BENCHMARKS.md records ours.

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
use teal::resources::ResourceType;
use teal::snapshot::{GroupResources, SnapshotInput};
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

/// The server side: serve (with TLS when `tls_dir` holds `server.crt`
/// and `server.key`), and publish a new version per stdin line.
async fn serve(tls_dir: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let (mut writer, reader) = teal::snapshot_store::snapshot_store();
    let registry = teal::xds::ProxyRegistry::new();
    let tls = match tls_dir {
        Some(dir) => Some(teal::tls::ServerTls::load(
            teal::listener::Port::Xds,
            teal::tls::TlsFiles {
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
    let mut out = tokio::io::stdout();
    out.write_all(format!("port {port}\n").as_bytes()).await?;
    out.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(_line) = lines.next_line().await? {
        version += 1;
        writer.publish(&version.to_string(), &input((version + 1) % 2 * 100))?;
        out.write_all(format!("published {version}\n").as_bytes())
            .await?;
        out.flush().await?;
    }
    Ok(())
}

struct Args {
    streams: usize,
    per_conn: usize,
    pushes: usize,
    tls: bool,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        streams: 1000,
        per_conn: 100,
        pushes: 5,
        tls: false,
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
        match flag.as_str() {
            "--streams" => a.streams = value()?,
            "--per-conn" => a.per_conn = value()?.max(1),
            "--pushes" => a.pushes = value()?,
            other => anyhow::bail!(
                "unknown flag {other}; use --streams N --per-conn N --pushes N [--tls]"
            ),
        }
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
    seen: mpsc::UnboundedSender<(u32, Instant)>,
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
        &["bench"],
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
            let v: u32 = resp.version_info.parse().unwrap_or(0);
            let _ = seen.send((v, Instant::now()));
        }
        let names: &[&str] = if ty == ResourceType::Route {
            &["bench"]
        } else {
            &[]
        };
        tx.send(request(ty, names, resp.nonce, resp.version_info))
            .await?;
    }
    Ok(())
}

async fn wait_for(
    seen: &mut mpsc::UnboundedReceiver<(u32, Instant)>,
    version: u32,
    n: usize,
    start: Instant,
) -> anyhow::Result<Vec<Duration>> {
    let mut got = Vec::with_capacity(n);
    let deadline = start + Duration::from_secs(120);
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, seen.recv()).await {
            Ok(Some((v, at))) if v == version => got.push(at.saturating_duration_since(start)),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => anyhow::bail!(
                "only {} of {n} clients received version {version}",
                got.len()
            ),
        }
    }
    got.sort();
    Ok(got)
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
        Some(teal::tls::client_config(
            Some(&tls_dir.path().join("ca.crt")),
            None,
        )?)
    } else {
        None
    };
    let mut command = std::process::Command::new(exe);
    command.arg("--serve");
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
    let conns = args.streams.div_ceil(args.per_conn);
    let started = Instant::now();
    for c in 0..conns {
        let channel = match &client_tls {
            Some(tls) => {
                tonic::transport::Endpoint::from_shared(format!("https://localhost:{port}"))?
                    .connect_with_connector(teal::tls::TlsConnector::new(tls.clone()))
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
                if let Err(e) = client(ads, id, seen_tx).await
                    && !DONE.load(Ordering::Relaxed)
                {
                    eprintln!("client {id}: {e}");
                }
            });
        }
    }
    wait_for(&mut seen, 1, args.streams, started).await?;
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
    for push in 0..args.pushes {
        let version = push as u32 + 2;
        let (_, cpu_before) = proc_stats(pid)?;
        let start = Instant::now();
        child_in.write_all(b"publish\n")?;
        child_in.flush()?;
        let got = wait_for(&mut seen, version, args.streams, start).await?;
        let (_, cpu_after) = proc_stats(pid)?;
        {
            let mut out = shared_child_out
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?;
            line.clear();
            out.read_line(&mut line)?;
        }
        println!(
            "push {version}: all {} clients in p50 {:.1?}  p99 {:.1?}  max {:.1?}; server CPU {:?}",
            args.streams,
            percentile(&got, 0.5),
            percentile(&got, 0.99),
            got.last().copied().unwrap_or_default(),
            cpu_after.saturating_sub(cpu_before)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    DONE.store(true, Ordering::Relaxed);
    child.kill()?;
    let _ = child.wait();
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    if std::env::args().nth(1).as_deref() == Some("--serve") {
        let tls_dir = std::env::args().nth(2).map(std::path::PathBuf::from);
        return rt.block_on(serve(tls_dir));
    }
    rt.block_on(run())
}
