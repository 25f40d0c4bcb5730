//! Bytes a proxy receives per flip of one service, state of the world
//! against delta, with 1,000 services.
//!
//! ```text
//! cargo run --release --example bench_bytes -- --services 1000 --flips 5
//! ```
//!
//! teal runs in-process (`teal::serve::start`) on a generated config with
//! `--services` services, each with a blue and a green fleet, in one of two
//! shapes:
//!
//! - `one-route-config`: one edge listener whose one virtual host has a
//!   route per service (prefix `/svcN/`): one RouteConfiguration holds
//!   every service's route.
//! - `route-config-per-service`: one sidecar listener per service, each
//!   with its own RouteConfiguration.
//!
//! Two simulated proxies of the same group connect over ADS, one state of
//! the world and one delta, subscribe to everything an Envoy would (CDS
//! and LDS wildcard, EDS and RDS by name), and ACK every response. Each
//! flip of `svc0` is a `teal flip` through the controller; the benchmark
//! counts the bytes of every response each proxy receives from the flip
//! until things are quiet again: the encoded `DiscoveryResponse` /
//! `DeltaDiscoveryResponse` plus the 5-byte gRPC message header (HTTP/2
//! framing not counted).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use prost::Message;
use teal::admin::Backend;
use teal::rollout::Operation;
use teal::xds::resources::ResourceType;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// Per type: (responses, bytes, resources).
type Counts = BTreeMap<&'static str, (usize, usize, usize)>;

/// [`Counts`] received since the last reset.
type Tally = Arc<Mutex<Counts>>;

/// Counts one response of `type_url`: `bytes` on the wire and `resources`
/// carried (or removed).
fn record(tally: &Tally, type_url: &str, bytes: usize, resources: usize) {
    if let Some(ty) = ResourceType::from_type_url(type_url)
        && let Ok(mut t) = tally.lock()
    {
        let e = t.entry(short(ty)).or_default();
        e.0 += 1;
        e.1 += bytes;
        e.2 += resources;
    }
}

fn short(ty: ResourceType) -> &'static str {
    match ty {
        ResourceType::Cluster => "CDS",
        ResourceType::Endpoint => "EDS",
        ResourceType::Listener => "LDS",
        ResourceType::Route => "RDS",
    }
}

fn config(services: usize, per_service: bool) -> String {
    let mut y = String::from("services:\n");
    for i in 0..services {
        y.push_str(&format!(
            "  svc{i}:\n    live: blue\n    fleets:\n      blue: {{endpoints: [10.0.{}.{}:8080]}}\n      green: {{endpoints: [10.1.{}.{}:8080]}}\n",
            i / 250,
            i % 250 + 1,
            i / 250,
            i % 250 + 1
        ));
    }
    y.push_str("groups:\n  g:\n    listeners:\n");
    if per_service {
        for i in 0..services {
            y.push_str(&format!(
                "      l{i}:\n        kind: sidecar\n        address: 127.0.0.1:{}\n        services: [svc{i}]\n",
                20000 + i
            ));
        }
    } else {
        y.push_str("      edge:\n        kind: edge\n        address: 127.0.0.1:10000\n        virtual_hosts:\n          all:\n            domains: [\"*\"]\n            routes:\n");
        for i in 0..services {
            y.push_str(&format!(
                "              - {{prefix: /svc{i}/, service: svc{i}}}\n"
            ));
        }
    }
    y
}

fn names(services: usize, per_service: bool) -> (Vec<String>, Vec<String>) {
    let clusters = (0..services)
        .flat_map(|i| [format!("svc{i}-blue"), format!("svc{i}-green")])
        .collect();
    let routes = if per_service {
        (0..services).map(|i| format!("l{i}")).collect()
    } else {
        vec!["edge".to_owned()]
    };
    (clusters, routes)
}

fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        cluster: "g".into(),
        ..Default::default()
    }
}

fn subscriptions(clusters: &[String], routes: &[String]) -> Vec<(ResourceType, Vec<String>)> {
    vec![
        (ResourceType::Cluster, vec![]),
        (ResourceType::Endpoint, clusters.to_vec()),
        (ResourceType::Listener, vec![]),
        (ResourceType::Route, routes.to_vec()),
    ]
}

async fn sotw_client(
    mut ads: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    subs: Vec<(ResourceType, Vec<String>)>,
    tally: Tally,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(16);
    let names: BTreeMap<String, Vec<String>> = subs
        .iter()
        .map(|(t, n)| (t.type_url().to_owned(), n.clone()))
        .collect();
    for (i, (ty, n)) in subs.iter().enumerate() {
        tx.send(DiscoveryRequest {
            node: (i == 0).then(|| node("sotw")),
            type_url: ty.type_url().into(),
            resource_names: n.clone(),
            ..Default::default()
        })
        .await?;
    }
    let mut responses = ads
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(resp) = responses.next().await {
        let resp = resp?;
        // Encoded message plus the 5-byte gRPC message prefix.
        record(
            &tally,
            &resp.type_url,
            resp.encoded_len() + 5,
            resp.resources.len(),
        );
        tx.send(DiscoveryRequest {
            type_url: resp.type_url.clone(),
            resource_names: names.get(&resp.type_url).cloned().unwrap_or_default(),
            response_nonce: resp.nonce,
            version_info: resp.version_info,
            ..Default::default()
        })
        .await?;
    }
    Ok(())
}

async fn delta_client(
    mut ads: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    subs: Vec<(ResourceType, Vec<String>)>,
    tally: Tally,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(16);
    for (i, (ty, n)) in subs.iter().enumerate() {
        tx.send(DeltaDiscoveryRequest {
            node: (i == 0).then(|| node("delta")),
            type_url: ty.type_url().into(),
            resource_names_subscribe: if n.is_empty() {
                vec!["*".into()]
            } else {
                n.clone()
            },
            ..Default::default()
        })
        .await?;
    }
    let mut responses = ads
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(resp) = responses.next().await {
        let resp = resp?;
        record(
            &tally,
            &resp.type_url,
            resp.encoded_len() + 5,
            resp.resources.len() + resp.removed_resources.len(),
        );
        tx.send(DeltaDiscoveryRequest {
            type_url: resp.type_url.clone(),
            response_nonce: resp.nonce,
            ..Default::default()
        })
        .await?;
    }
    Ok(())
}

/// Waits until neither tally has changed for `quiet`.
async fn settle(tallies: &[&Tally], quiet: Duration) {
    let snap = || {
        tallies
            .iter()
            .map(|t| t.lock().map(|m| m.clone()).unwrap_or_default())
            .collect::<Vec<_>>()
    };
    let mut last = snap();
    loop {
        tokio::time::sleep(quiet).await;
        let now = snap();
        if now == last {
            return;
        }
        last = now;
    }
}

fn total(t: &Tally) -> Counts {
    t.lock().map(|m| m.clone()).unwrap_or_default()
}

async fn shape(services: usize, per_service: bool, flips: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("teal.yaml");
    std::fs::write(&path, config(services, per_service))?;
    let (_trigger, shutdown) = teal::shutdown::shutdown_channel();
    let running = teal::serve::start(
        teal::serve::ServeOptions {
            watch_interval: Duration::from_secs(3600),
            ..teal::serve::ServeOptions::local(Some(path))
        },
        shutdown,
    )
    .await?;
    let (clusters, routes) = names(services, per_service);
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.xds_addr))?
        .connect()
        .await?;
    let ads = AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(256 << 20);
    let (sotw, delta): (Tally, Tally) = Default::default();
    let subs = subscriptions(&clusters, &routes);
    tokio::spawn(sotw_client(ads.clone(), subs.clone(), sotw.clone()));
    tokio::spawn(delta_client(ads, subs, delta.clone()));
    settle(&[&sotw, &delta], Duration::from_millis(500)).await;
    let label = if per_service {
        "route-config-per-service"
    } else {
        "one-route-config"
    };
    for (name, t) in [("sotw", &sotw), ("delta", &delta)] {
        let all = total(t);
        let bytes: usize = all.values().map(|v| v.1).sum();
        println!("{label} {name}: initial sync {bytes} bytes {all:?}");
    }
    let controller = running.controller.clone();
    let mut per_flip: BTreeMap<&str, Vec<Counts>> = BTreeMap::new();
    for _ in 0..flips {
        for t in [&sotw, &delta] {
            if let Ok(mut m) = t.lock() {
                m.clear();
            }
        }
        let mut rx = controller
            .start(
                Operation::Flip {
                    service: "svc0".into(),
                    to: None,
                    skip_checks: true,
                    timeout: Duration::from_secs(30),
                },
                "bench",
            )
            .await?;
        loop {
            if let Some(o) = rx.borrow_and_update().outcome.clone() {
                anyhow::ensure!(o.is_success(), "flip failed: {o:?}");
                break;
            }
            rx.changed().await?;
        }
        settle(&[&sotw, &delta], Duration::from_millis(300)).await;
        per_flip.entry("sotw").or_default().push(total(&sotw));
        per_flip.entry("delta").or_default().push(total(&delta));
    }
    for (name, flips) in &per_flip {
        let bytes: Vec<usize> = flips
            .iter()
            .map(|m| m.values().map(|v| v.1).sum())
            .collect();
        println!(
            "| {label} | {name} | {} | {:?} | {:?} |",
            bytes.iter().min().copied().unwrap_or(0),
            bytes,
            flips.last()
        );
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (mut services, mut flips) = (1000usize, 5usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || -> anyhow::Result<usize> {
            Ok(it
                .next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?
                .parse()?)
        };
        match flag.as_str() {
            "--services" => services = value()?,
            "--flips" => flips = value()?,
            other => anyhow::bail!("unknown flag {other}; use --services N --flips N"),
        }
    }
    println!("{services} services, {flips} flips of svc0; bytes per flip per proxy");
    println!(
        "| shape | protocol | bytes per flip | each flip | by type: (responses, bytes, resources) |"
    );
    println!("| --- | --- | --- | --- | --- |");
    shape(services, false, flips).await?;
    shape(services, true, flips).await?;
    Ok(())
}
