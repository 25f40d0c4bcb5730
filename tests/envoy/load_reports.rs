//! What real proxies report of their traffic (LRS), as teal shows it.
//!
//! - Three real Envoys (an edge and two sidecars, bootstrapped from the
//!   shipped `envoy/edge.yaml`, which turns load reports on) carry a 50/50
//!   split of `web` between two real upstreams, under traffic from the
//!   test's own client: the split `teal status` measured is within 5
//!   points of the one the client counted, over the same requests.
//! - A proxyless gRPC client (Python grpcio, `tests/support/grpc_proxyless.py`)
//!   reports to teal because its clusters name teal (`self`) as their LRS
//!   server; an Envoy in the same group gets those clusters too and takes
//!   them. Its calls count in `teal proxies` and `teal status`.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::Command;

use crate::grpc_proxyless::{
    GROUP, NODE_ID, Process, bootstrap_json, collect, fleet_server, json, require_grpcio,
};
use crate::support::world::{FLIP_TIMEOUT, World, bodies};
use crate::support::{CONVERGE, Envoy, Protocol, TOKEN, Traffic, free_port, http, show};

/// How long the client sends: well inside the 10 s window `teal status`
/// measures over, with time for the last reports to arrive.
const SENDING: Duration = Duration::from_secs(6);

/// `web`'s measured traffic in `teal status -o json`, by fleet.
fn traffic_of(web: &Value) -> Vec<(String, u64, u64, u64)> {
    web["traffic"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|f| {
            (
                f["fleet"].as_str().unwrap_or_default().to_owned(),
                f["requests"].as_u64().unwrap_or_default(),
                f["proxies_reporting"].as_u64().unwrap_or_default(),
                f["proxies_routing"].as_u64().unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_50_50_the_measured_split_is_the_one_the_client_counted() {
    let w = World::start().await;
    let out = w
        .cli(&[
            "shift",
            "web",
            "--weight",
            "green=50",
            "--interval",
            "0s",
            "--skip-checks",
            "--timeout",
            FLIP_TIMEOUT,
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "teal shift: {}", show(&out));
    w.wait_weights(&[0, 1, 2], &[("blue", 50), ("green", 50)])
        .await;
    // The world's start sent requests of its own: once they are reported
    // (two intervals), the window must leave them behind before the
    // client's count can be compared with it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let deadline = Instant::now() + CONVERGE;
    while traffic_of(&w.web_status().await.0).iter().any(|m| m.1 > 0) {
        assert!(
            Instant::now() < deadline,
            "the measured window never empties"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Through the edge and the sidecars' shared port in turn, so every
    // Envoy carries some of it.
    let client = Traffic::start_over(&[w.edge_port, w.sidecar_port], "/", &[("host", "web")]);
    tokio::time::sleep(SENDING).await;
    let answers = client.stop().await;
    let bodies = bodies(&answers);
    let sent = bodies.len() as u64;
    let green = bodies.iter().filter(|b| *b == "green").count() as u64;
    assert!(sent > 100, "the client sent only {sent} requests");
    let counted = green as f64 / sent as f64;

    // Every request the client saw answered is in a report within about
    // an interval (and in the window a second later); the one request cut
    // when the client stopped may be there too.
    let deadline = Instant::now() + Duration::from_secs(4);
    let (web, measured) = loop {
        let (web, _) = w.web_status().await;
        let measured = traffic_of(&web);
        let total: u64 = measured.iter().map(|m| m.1).sum();
        if total >= sent || Instant::now() >= deadline {
            break (web, measured);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let total: u64 = measured.iter().map(|m| m.1).sum();
    assert!(
        total >= sent && total <= sent + 2,
        "teal measured {total} requests, the client counted {sent}: {web:#}"
    );
    let green_measured = measured.iter().find(|m| m.0 == "green").map_or(0, |m| m.1);
    let share = green_measured as f64 / total as f64;
    assert!(
        (share - counted).abs() <= 0.05,
        "measured {:.1}% green, the client counted {:.1}%: {web:#}",
        share * 100.0,
        counted * 100.0
    );
    for (fleet, _, reporting, routing) in &measured {
        assert_eq!((*reporting, *routing), (3, 3), "{fleet}: {web:#}");
    }
    let share_field = web["traffic"][1]["share"].as_f64().expect("share");
    assert!((share_field - share).abs() < 1e-9, "{web:#}");

    let text = w.cli(&["status", "web"]).await;
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(
        text.contains(" green over 10 s: ") && text.contains(", 3 of 3 proxies"),
        "{text}"
    );
    eprintln!(
        "client: {sent} requests, {:.1}% green; teal: {total} requests, {:.1}% green",
        counted * 100.0,
        share * 100.0
    );
}

/// Group `mesh` routes `web` to proxyless clients and, on a listener of
/// its own, to Envoys.
fn mesh_config(blue: u16, green: u16, listener: u16) -> String {
    format!(
        "\
services:
  web:
    live: blue
    protocol: http2
    fleets:
      blue:
        endpoints: [127.0.0.1:{blue}]
      green:
        endpoints: [127.0.0.1:{green}]
groups:
  {GROUP}:
    listeners:
      clients:
        kind: grpc
        services: [web]
      public:
        kind: edge
        address: 127.0.0.1:{listener}
        virtual_hosts:
          site:
            domains: ['*']
            routes:
              - prefix: /
                service: web
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxyless_grpc_clients_reports_count_and_an_envoy_takes_its_clusters() {
    require_grpcio();
    let dir = tempfile::Builder::new()
        .prefix("teal-lrs-grpc-")
        .tempdir()
        .expect("temporary directory");
    let (_blue, blue_port) = fleet_server("blue", dir.path()).await;
    let (_green, green_port) = fleet_server("green", dir.path()).await;
    let config = dir.path().join("teal.yaml");
    std::fs::write(&config, mesh_config(blue_port, green_port, free_port()))
        .expect("write the config");
    let (xds, admin) = (free_port(), free_port());
    let mut serve = Command::new(env!("CARGO_BIN_EXE_teal"));
    serve
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--xds-addr", &format!("127.0.0.1:{xds}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .arg("--ephemeral")
        .env("TEAL_ADMIN_TOKEN", TOKEN)
        .env("TEAL_LOG", "info")
        .env_remove("TEAL_ADMIN_TOKENS")
        .stdin(Stdio::null());
    let _teal = Process::spawn("teal serve", serve, dir.path());
    crate::support::wait_until(CONVERGE, "teal's admin API answers", || async {
        http::get(admin, "/healthz", &[])
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;

    // An Envoy of the same group, served the same clusters with their
    // `lrs_server: self`: it must take them (no NACK) and report too.
    let envoy = Envoy::start_on(xds, GROUP, Protocol::Sotw).await;
    let bootstrap = dir.path().join("bootstrap.json");
    std::fs::write(&bootstrap, bootstrap_json(xds)).expect("write the bootstrap");
    let mut client = Process::python(
        "grpc client",
        &["client", "xds:///web"],
        &[("GRPC_XDS_BOOTSTRAP", &bootstrap)],
        dir.path(),
    );
    client
        .wait_line("an answer", |l| l.starts_with("ok "))
        .await;
    let calls = collect(&client, 20).await;
    assert!(calls.iter().all(|l| l == "ok blue"), "{calls:?}");

    // The client's load reports reach teal: its own calls to web-blue.
    let deadline = Instant::now() + CONVERGE;
    let load = loop {
        let proxies = json(admin, &["proxies"]).await;
        let load = proxies["proxies"]
            .as_array()
            .and_then(|all| all.iter().find(|p| p["node_id"] == NODE_ID))
            .map(|p| p["load"].clone())
            .unwrap_or(Value::Null);
        let blue = load["clusters"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["cluster"] == "web-blue"))
            .and_then(|c| c["requests"].as_u64())
            .unwrap_or(0);
        if blue >= 20 {
            break load;
        }
        assert!(
            Instant::now() < deadline,
            "the gRPC client's reports do not show its calls: {proxies:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(load["age_ms"].as_u64().is_some(), "{load:#}");

    let proxies = json(admin, &["proxies"]).await;
    let envoy_entry = proxies["proxies"]
        .as_array()
        .and_then(|all| all.iter().find(|p| p["node_id"] == envoy.node_id.as_str()))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        envoy_entry["types"]["CDS"]["state"], "SYNCED",
        "{proxies:#}"
    );
    assert_eq!(
        envoy_entry["types"]["CDS"]["nack"],
        Value::Null,
        "{proxies:#}"
    );
    assert!(
        envoy_entry["load"]["reports"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "the Envoy of the group reports too: {proxies:#}"
    );

    // The split counts whole seconds that are over: the report is in it
    // a second after it came.
    let deadline = Instant::now() + CONVERGE;
    let (status, blue) = loop {
        let status = json(admin, &["status", "web"]).await;
        let blue = status["services"][0]["traffic"]
            .as_array()
            .and_then(|t| t.iter().find(|f| f["fleet"] == "blue"))
            .cloned()
            .unwrap_or(Value::Null);
        if blue["requests"].as_u64().is_some_and(|n| n > 0) {
            break (status, blue);
        }
        assert!(
            Instant::now() < deadline,
            "the client's calls do not count in the measured split: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(blue["proxies_reporting"], 2, "{status:#}");
    assert_eq!(blue["proxies_routing"], 2, "{status:#}");
    assert_eq!(blue["errors"], 0, "{status:#}");
}
