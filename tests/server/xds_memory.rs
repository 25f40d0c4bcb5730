//! What a client's requests make teal hold stays bounded, and goes when
//! the client does: SotW responses are not cached per list of names a
//! client makes up, and a delta subscription cannot grow past its limits.
//!
//! teal's memory is read from /proc, so the server runs in a child
//! process of its own: this test binary, run again with
//! `TEAL_MEMORY_SERVER` set, where [`server_child`] serves and the other
//! test measures it. Bounds are generous: a regression is ten times them.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use teal::shutdown::shutdown_channel;
use teal::xds::resources::ResourceType;
use teal::xds::snapshot::{GroupResources, SnapshotInput};
use teal::xds::snapshot_store::snapshot_store;
use teal::xds::{ProxyRegistry, XdsServer, XdsServerConfig};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::support;

const ENV: &str = "TEAL_MEMORY_SERVER";

/// Clusters the server has, each about 1 KiB encoded.
const CLUSTERS: usize = 1000;

/// Most growth of teal's resident memory allowed over a scenario. Before
/// the limits, the SotW scenario grew it by about 100 MB and the delta one
/// by about 200 MB.
const BOUND_KIB: u64 = 30 * 1024;

fn cluster_name(i: usize) -> String {
    format!("cluster-{i:04}")
}

/// Not a test on its own: the server half of [`memory_stays_bounded`].
#[test]
fn server_child() {
    if std::env::var_os(ENV).is_none() {
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let mut input = SnapshotInput::default();
        input.groups.insert(
            "edge".into(),
            GroupResources {
                clusters: (0..CLUSTERS)
                    .map(|i| Cluster {
                        name: cluster_name(i),
                        alt_stat_name: "s".repeat(1000),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            },
        );
        let (mut writer, reader) = snapshot_store();
        writer.publish("1", &input).expect("valid");
        let (_trigger, shutdown) = shutdown_channel();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = XdsServer::new(
            reader,
            ProxyRegistry::new(),
            shutdown,
            XdsServerConfig::default(),
        );
        tokio::spawn(server.serve(listener));
        println!("port {port}");
        std::io::stdout().flush().expect("flush");
        // Serve until the parent closes stdin.
        let mut line = String::new();
        let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
        drop(writer);
    });
}

struct ServerProcess {
    child: Child,
    /// Kept open so the server can go on writing to it.
    _stdout: BufReader<std::process::ChildStdout>,
    port: u16,
}

impl ServerProcess {
    fn start() -> ServerProcess {
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                &support::test_name(module_path!(), "server_child"),
            ])
            .args(["--nocapture", "--test-threads", "1"])
            .env(ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("server starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut port = None;
        let mut line = String::new();
        while port.is_none() {
            line.clear();
            let n = stdout
                .read_line(&mut line)
                .expect("read the server's output");
            assert!(n > 0, "the server ended before saying its port");
            // libtest may print "test server_child ... " on the same line.
            port = line
                .rsplit_once("port ")
                .and_then(|(_, p)| p.trim().parse().ok());
        }
        ServerProcess {
            child,
            _stdout: stdout,
            port: port.expect("a port"),
        }
    }

    /// The server's resident memory, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.into(),
        cluster: "edge".into(),
        ..Default::default()
    })
}

async fn client(port: u16) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    AggregatedDiscoveryServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(64 << 20)
}

/// One SotW stream asks for 100 different selections of 990 real clusters
/// (plus names that do not exist), ACKing each answer.
async fn sotw_selections(port: u16) {
    let (tx, rx) = mpsc::channel(4);
    let ask = |i: usize, nonce: String| DiscoveryRequest {
        node: node("sotw"),
        type_url: ResourceType::Cluster.type_url().into(),
        resource_names: (0..CLUSTERS)
            .filter(|c| c % 100 != i)
            .map(cluster_name)
            .chain((0..50).map(|m| format!("made-up-{i}-{m}")))
            .collect(),
        response_nonce: nonce,
        ..Default::default()
    };
    tx.send(ask(0, String::new())).await.expect("send");
    let mut responses = client(port)
        .await
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    for i in 1..=100 {
        let r = tokio::time::timeout(Duration::from_secs(10), responses.next())
            .await
            .expect("in time")
            .expect("open")
            .expect("ok");
        assert_eq!(r.resources.len(), CLUSTERS - 10);
        tx.send(ask(i % 100, r.nonce)).await.expect("send");
    }
}

/// An abusive client: 20 requests of 80,000 made-up cluster names. The
/// first is over the names limit and closes the stream.
async fn sotw_made_up_names(port: u16) {
    let (tx, rx) = mpsc::channel(1);
    let mut responses = client(port)
        .await
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    tokio::spawn(async move {
        for i in 0..20 {
            let req = DiscoveryRequest {
                node: node("made-up"),
                type_url: ResourceType::Cluster.type_url().into(),
                resource_names: (0..80_000)
                    .map(|m| format!("no-{i:02}-{m:06}-{}", "x".repeat(36)))
                    .collect(),
                ..Default::default()
            };
            if tx.send(req).await.is_err() {
                return;
            }
        }
    });
    let end = tokio::time::timeout(Duration::from_secs(30), responses.next())
        .await
        .expect("in time");
    match end {
        Some(Err(status)) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        other => panic!("80,000 names were served: {other:?}"),
    }
}

/// An abusive delta client: 20 requests subscribing 4 MB of names each.
async fn delta_growth(port: u16) {
    let (tx, rx) = mpsc::channel(1);
    let mut responses = client(port)
        .await
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    tokio::spawn(async move {
        for i in 0..20 {
            let req = DeltaDiscoveryRequest {
                node: node("delta"),
                type_url: ResourceType::Endpoint.type_url().into(),
                resource_names_subscribe: (0..40_000)
                    .map(|m| format!("{i:02}-{m:06}-{}", "n".repeat(88)))
                    .collect(),
                ..Default::default()
            };
            if tx.send(req).await.is_err() {
                return;
            }
        }
    });
    loop {
        match tokio::time::timeout(Duration::from_secs(30), responses.next())
            .await
            .expect("in time")
        {
            Some(Ok(_)) => continue,
            Some(Err(status)) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                return;
            }
            None => panic!("the delta stream ended without an error"),
        }
    }
}

#[tokio::test]
async fn memory_stays_bounded() {
    let server = ServerProcess::start();
    // Warm up: one wildcard stream, served and gone.
    {
        let (tx, rx) = mpsc::channel(1);
        tx.send(DiscoveryRequest {
            node: node("warm"),
            type_url: ResourceType::Cluster.type_url().into(),
            ..Default::default()
        })
        .await
        .expect("send");
        let mut s = client(server.port)
            .await
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        s.next().await.expect("answer").expect("ok");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let idle = server.rss_kib();
    let mut report = vec![format!("idle {idle} KiB")];
    let mut worst = 0u64;
    for (name, scenario) in [
        ("sotw 100 selections", 0),
        ("sotw 20x80,000 made-up names", 1),
        ("delta 20x4 MB of names", 2),
    ] {
        let before = server.rss_kib();
        match scenario {
            0 => sotw_selections(server.port).await,
            1 => sotw_made_up_names(server.port).await,
            _ => delta_growth(server.port).await,
        }
        let during = server.rss_kib();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = server.rss_kib();
        report.push(format!(
            "{name}: {before} -> {during} KiB, {after} KiB after the client left"
        ));
        worst = worst.max(during.saturating_sub(before));
    }
    let total = server.rss_kib().saturating_sub(idle);
    eprintln!("{}", report.join("\n"));
    assert!(
        worst < BOUND_KIB && total < BOUND_KIB,
        "teal's memory grew too much:\n{}",
        report.join("\n")
    );
}
