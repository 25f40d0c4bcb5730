//! LRS on the xDS port of the real `teal serve`, spoken to by a tonic
//! client from the test: who may report (a node with an xDS stream here,
//! whose identity its group admits), what teal asks for and how often,
//! and what a hostile report can and cannot do. Every count is checked
//! through what teal shows (`teal proxies -o json`, `teal status -o
//! json`, `/metrics`), not through teal's internals.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::support::lrs::{Lrs, hello, stats};
use crate::support::pki::{Pair, Pki};
use crate::support::world::TealProcess;
use crate::support::{CONVERGE, TOKEN, free_port, http, show, teal_binary, wait_until};

/// `web` is routed by group `edge`, `api` by group `sidecar` only.
fn config(extra_web_fleet: bool, edge_identities: Option<&str>) -> String {
    let canary = if extra_web_fleet {
        format!(
            "      canary:\n        endpoints: [127.0.0.1:{}]\n",
            free_port()
        )
    } else {
        String::new()
    };
    let identities = edge_identities
        .map(|i| format!("    identities: ['{i}']\n"))
        .unwrap_or_default();
    format!(
        "\
services:
  web:
    live: blue
    fleets:
      blue:
        endpoints: [127.0.0.1:{p1}]
      green:
        endpoints: [127.0.0.1:{p2}]
{canary}  api:
    live: blue
    fleets:
      blue:
        endpoints: [127.0.0.1:{p3}]
groups:
  edge:
{identities}    listeners:
      public:
        kind: edge
        address: 127.0.0.1:{l1}
        virtual_hosts:
          site:
            domains: ['*']
            routes:
              - prefix: /
                service: web
  sidecar:
    listeners:
      outbound:
        kind: sidecar
        address: 127.0.0.1:{l2}
        services: [api]
",
        p1 = free_port(),
        p2 = free_port(),
        p3 = free_port(),
        l1 = free_port(),
        l2 = free_port(),
    )
}

/// `teal serve` on `yaml`, with `extra` flags.
async fn serve(dir: &Path, yaml: &str, extra: &[&str]) -> (TealProcess, u16, u16) {
    std::fs::write(dir.join("teal.yaml"), yaml).expect("write the config");
    let (xds, admin) = (free_port(), free_port());
    let teal = TealProcess::start_with(dir, xds, admin, extra).await;
    (teal, xds, admin)
}

async fn plain_channel(port: u16) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect to the xDS port")
}

/// A gRPC channel to teal's xDS port over TLS, presenting `client`.
async fn tls_channel(port: u16, pki: &Pki, client: &Pair) -> Channel {
    let tls = teal::transport::tls::client_config(Some(&pki.ca), Some((&client.cert, &client.key)))
        .expect("client TLS");
    tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .expect("uri")
        .connect_with_connector(teal::transport::tls::TlsConnector::new(tls))
        .await
        .expect("connect to the xDS port")
}

fn node(id: &str, group: &str) -> Node {
    Node {
        id: id.into(),
        cluster: group.into(),
        ..Default::default()
    }
}

/// An ADS stream of node `id` in `group`, kept open while the returned
/// values live, once teal answered it.
async fn ads(
    channel: Channel,
    id: &str,
    group: &str,
) -> (
    mpsc::Sender<DiscoveryRequest>,
    tonic::Streaming<DiscoveryResponse>,
) {
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(node(id, group)),
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
        ..Default::default()
    })
    .await
    .expect("queue");
    let mut stream = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("open ADS")
        .into_inner();
    tokio::time::timeout(CONVERGE, stream.message())
        .await
        .expect("an ADS answer in time")
        .expect("ADS admitted")
        .expect("an ADS answer");
    (tx, stream)
}

async fn cli_json(admin: u16, args: &[&str]) -> Value {
    let out = tokio::process::Command::new(teal_binary())
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(args)
        .args(["-o", "json"])
        .env("TEAL_TOKEN", TOKEN)
        .env_remove("TEAL_ADMIN")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run the teal CLI");
    assert_eq!(out.status.code(), Some(0), "teal {args:?}: {}", show(&out));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// `node`'s load in `teal proxies -o json` (null without a load stream).
async fn load_of(admin: u16, node: &str) -> Value {
    let proxies = cli_json(admin, &["proxies"]).await;
    proxies["proxies"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["node_id"] == node))
        .map(|p| p["load"].clone())
        .unwrap_or(Value::Null)
}

/// `node`'s load once `teal proxies` shows it took `reports` reports.
async fn wait_load(admin: u16, node: &str, reports: u64) -> Value {
    let deadline = std::time::Instant::now() + CONVERGE;
    loop {
        let load = load_of(admin, node).await;
        if load["reports"] == reports {
            return load;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{node} did not show {reports} reports: {load}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn cluster<'a>(load: &'a Value, name: &str) -> Option<&'a Value> {
    load["clusters"]
        .as_array()?
        .iter()
        .find(|c| c["cluster"] == name)
}

async fn metrics(admin: u16) -> String {
    let page = http::get(admin, "/metrics", &[]).await.expect("/metrics");
    assert_eq!(page.status, 200);
    page.body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_stream_is_refused_without_an_xds_stream_of_its_node_in_its_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_teal, xds, _admin) = serve(dir.path(), &config(false, None), &[]).await;
    let channel = plain_channel(xds).await;

    let (_lrs, answer) = Lrs::open(channel.clone(), hello("ghost", "edge")).await;
    let e = answer.expect_err("no xDS stream of the node");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("no xDS stream"), "{e:?}");

    let _ads = ads(channel.clone(), "edge-1", "edge").await;
    let (_lrs, answer) = Lrs::open(channel.clone(), hello("edge-1", "sidecar")).await;
    let e = answer.expect_err("another group than its xDS stream's");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("joined group edge"), "{e:?}");

    let (_lrs, answer) = Lrs::open(channel.clone(), hello("edge-1", "")).await;
    let e = answer.expect_err("no group");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");

    let (_lrs, answer) = Lrs::open(channel, hello("edge-1", "edge")).await;
    answer.expect("the node's own group, with its xDS stream open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_stream_is_refused_for_an_identity_its_group_does_not_admit() {
    let pki = Pki::new("lrs");
    let server = pki.server("server");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = |p: &Path| p.to_str().expect("utf-8 path").to_owned();
    let (cert, key, ca) = (path(&server.cert), path(&server.key), path(&pki.ca));
    let flags = [
        "--xds-tls-cert",
        cert.as_str(),
        "--xds-tls-key",
        key.as_str(),
        "--xds-client-ca",
        ca.as_str(),
    ];
    let yaml = config(false, Some("spiffe://test.example/edge/*"));
    let (_teal, xds, _admin) = serve(dir.path(), &yaml, &flags).await;
    let e1 = pki.spiffe("e1", "spiffe://test.example/edge/e1");
    let e2 = pki.spiffe("e2", "spiffe://test.example/edge/e2");
    let outsider = pki.spiffe("outsider", "spiffe://test.example/batch/b1");
    let _ads = ads(tls_channel(xds, &pki, &e1).await, "edge-1", "edge").await;

    let (_lrs, answer) = Lrs::open(
        tls_channel(xds, &pki, &outsider).await,
        hello("edge-1", "edge"),
    )
    .await;
    let e = answer.expect_err("an identity group edge does not admit");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("may not join group edge"), "{e:?}");

    let (_lrs, answer) =
        Lrs::open(tls_channel(xds, &pki, &e2).await, hello("edge-1", "edge")).await;
    let e = answer.expect_err("admitted to edge, but not the identity edge-1 proved");
    assert_eq!(e.code(), tonic::Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains("connected for xDS as"), "{e:?}");

    let (_lrs, answer) =
        Lrs::open(tls_channel(xds, &pki, &e1).await, hello("edge-1", "edge")).await;
    let answer = answer.expect("the identity of its own xDS stream");
    assert_eq!(answer.clusters, ["web-blue", "web-green"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teal_asks_for_the_groups_clusters_at_the_interval_and_again_after_a_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_teal, xds, _admin) = serve(
        dir.path(),
        &config(false, None),
        &["--load-report-interval", "300ms"],
    )
    .await;
    let channel = plain_channel(xds).await;
    let _ads = ads(channel.clone(), "edge-1", "edge").await;
    let (mut lrs, answer) = Lrs::open(channel, hello("edge-1", "edge")).await;
    let answer = answer.expect("admitted");
    assert_eq!(
        answer.clusters,
        ["web-blue", "web-green"],
        "edge routes web only"
    );
    let interval = answer.load_reporting_interval.expect("an interval");
    assert_eq!((interval.seconds, interval.nanos), (0, 300_000_000));
    assert!(!answer.send_all_clusters);

    crate::support::write_atomically(&dir.path().join("teal.yaml"), &config(true, None));
    let again = tokio::time::timeout(CONVERGE, lrs.rx.message())
        .await
        .expect("asked again after the reload")
        .expect("the stream stays open")
        .expect("an answer");
    assert_eq!(again.clusters, ["web-blue", "web-canary", "web-green"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_show_in_proxies_status_and_metrics_and_hostile_ones_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_teal, xds, admin) = serve(
        dir.path(),
        &config(false, None),
        &["--max-load-report-clusters", "4"],
    )
    .await;
    let channel = plain_channel(xds).await;
    let _ads = ads(channel.clone(), "edge-1", "edge").await;
    let (lrs, answer) = Lrs::open(channel, hello("edge-1", "edge")).await;
    answer.expect("admitted");

    // One honest report, with clusters edge was not asked for besides:
    // api-blue (group sidecar's) and one no group has.
    lrs.report(vec![
        stats("web-blue", 90, 10, 3),
        stats("web-green", 10, 0, 0),
        stats("api-blue", 1000, 1000, 7),
        stats("nope", 1000, 0, 0),
    ])
    .await;
    let load = wait_load(admin, "edge-1", 1).await;
    let blue = cluster(&load, "web-blue").expect("web-blue");
    assert_eq!(
        (&blue["requests"], &blue["errors"], &blue["in_progress"]),
        (&Value::from(100), &Value::from(10), &Value::from(3))
    );
    assert!(cluster(&load, "api-blue").is_none(), "{load}");
    assert!(cluster(&load, "nope").is_none(), "{load}");

    // A report naming more clusters than allowed is dropped whole, and
    // absurd counts are cut.
    let five = (0..5).map(|i| stats("web-blue", i, 0, 0)).collect();
    lrs.report(five).await;
    lrs.report(vec![stats("web-green", u64::MAX, 0, u64::MAX)])
        .await;
    let load = wait_load(admin, "edge-1", 2).await;
    let cut: u64 = 1 << 36;
    assert_eq!(cluster(&load, "web-blue").expect("blue")["requests"], 100);
    let green = cluster(&load, "web-green").expect("green");
    assert_eq!(green["requests"], 10 + cut, "{load}");
    assert_eq!(green["in_progress"], cut, "{load}");

    let status = cli_json(admin, &["status", "web"]).await;
    let traffic = status["services"][0]["traffic"]
        .as_array()
        .expect("traffic")
        .clone();
    assert_eq!(traffic.len(), 2, "{status}");
    for fleet in &traffic {
        assert_eq!(fleet["proxies_reporting"], 1, "{fleet}");
        assert_eq!(fleet["proxies_routing"], 1, "{fleet}");
        assert_eq!(fleet["window_ms"], 10_000, "{fleet}");
    }
    let api = cli_json(admin, &["status", "api"]).await;
    assert_eq!(
        api["services"][0]["traffic"],
        Value::Array(vec![]),
        "edge's report counts nothing for api: {api}"
    );

    // The last report left web-blue out: nothing of it is in progress.
    let page = metrics(admin).await;
    let in_progress = format!("teal_load_in_progress{{service=\"web\",fleet=\"green\"}} {cut}\n");
    for line in [
        "teal_load_requests_total{service=\"web\",fleet=\"blue\"} 100\n",
        "teal_load_errors_total{service=\"web\",fleet=\"blue\"} 10\n",
        "teal_load_in_progress{service=\"web\",fleet=\"blue\"} 0\n",
        in_progress.as_str(),
        "teal_load_reporting_proxies{service=\"web\",fleet=\"green\"} 1\n",
        "teal_load_routing_proxies{service=\"web\"} 1\n",
        "teal_load_requests_total{service=\"api\",fleet=\"blue\"} 0\n",
    ] {
        assert!(page.contains(line), "no {line:?} in\n{page}");
    }
    assert!(!page.contains("edge-1"), "no series per proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_reports_is_cut_to_the_rate_and_an_oversized_one_ends_the_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_teal, xds, admin) = serve(
        dir.path(),
        &config(false, None),
        &[
            "--max-load-reports-per-second",
            "5",
            "--max-load-report-bytes",
            "2048",
        ],
    )
    .await;
    let channel = plain_channel(xds).await;
    let _ads = ads(channel.clone(), "edge-1", "edge").await;
    let (mut lrs, answer) = Lrs::open(channel, hello("edge-1", "edge")).await;
    answer.expect("admitted");
    for _ in 0..50 {
        lrs.report(vec![stats("web-blue", 1, 0, 0)]).await;
    }
    // The flood is taken within a second or two: at most 5 a second.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let load = load_of(admin, "edge-1").await;
    let reports = load["reports"].as_u64().expect("reports");
    assert!((1..=10).contains(&reports), "{reports} of 50 taken: {load}");
    assert_eq!(
        cluster(&load, "web-blue").expect("blue")["requests"],
        reports,
        "only the reports taken count"
    );

    lrs.report(vec![stats(&"x".repeat(4096), 1, 0, 0)]).await;
    let e = tokio::time::timeout(CONVERGE, lrs.rx.message())
        .await
        .expect("the stream ends in time")
        .expect_err("an oversized report ends the stream");
    assert_eq!(e.code(), tonic::Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("--max-load-report-bytes"), "{e:?}");
    wait_until(CONVERGE, "its counts go with the stream", || async {
        load_of(admin, "edge-1").await.is_null()
    })
    .await;
}
