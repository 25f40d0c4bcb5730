//! ADS clients that stand in for proxies, for tests and benchmarks alike:
//!
//! - [`proxy`] and [`connect`]: simulated proxies that answer as Envoy
//!   does, one stream each, subscribed to every cluster, every listener
//!   and one route configuration, ACKing every response with its version
//!   and nonce. Many streams share one HTTP/2 connection (`per_conn`), as
//!   bench_xds does, so that 10,000 of them fit in one process.
//! - [`ads_subscribed_to_all`]: one stream subscribed to every type whose
//!   requests the test writes itself (to ACK, NACK or hold).

#![allow(dead_code, unreachable_pub)]

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use teal::xds::resources::ResourceType;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

/// One simulated proxy: node `id` in group `group` on `ads`, subscribed
/// to clusters and listeners (wildcard) and to route configuration
/// `route`; ACKs everything until the server ends the stream. Sends the
/// route versions it receives on `seen`, if given.
pub async fn proxy(
    mut ads: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
    id: String,
    group: String,
    route: String,
    seen: Option<mpsc::UnboundedSender<String>>,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel(8);
    let node = Node {
        id,
        cluster: group,
        ..Default::default()
    };
    let names = |ty: ResourceType| -> Vec<String> {
        if ty == ResourceType::Route {
            vec![route.clone()]
        } else {
            Vec::new()
        }
    };
    let request = |ty: ResourceType, nonce: String, version: String| DiscoveryRequest {
        node: Some(node.clone()),
        type_url: ty.type_url().into(),
        resource_names: names(ty),
        response_nonce: nonce,
        version_info: version,
        ..Default::default()
    };
    for ty in [
        ResourceType::Cluster,
        ResourceType::Listener,
        ResourceType::Route,
    ] {
        tx.send(request(ty, String::new(), String::new())).await?;
    }
    let mut responses = ads
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    while let Some(resp) = responses.next().await {
        let resp = resp?;
        let ty = ResourceType::from_type_url(&resp.type_url)
            .ok_or_else(|| anyhow::anyhow!("unexpected type {}", resp.type_url))?;
        if ty == ResourceType::Route
            && let Some(seen) = &seen
        {
            let _ = seen.send(resp.version_info.clone());
        }
        tx.send(request(ty, resp.nonce, resp.version_info)).await?;
    }
    Ok(())
}

/// `n` simulated proxies `sim-<first + i>` of `group` against the xDS
/// ports `ports` in turn, `per_conn` streams per connection; each sends
/// on `seen` every route version it receives. Abort the tasks to
/// disconnect them.
pub async fn connect(
    ports: &[u16],
    n: usize,
    first: usize,
    per_conn: usize,
    group: &str,
    route: &str,
    seen: mpsc::UnboundedSender<String>,
) -> anyhow::Result<tokio::task::JoinSet<()>> {
    let mut set = tokio::task::JoinSet::new();
    let mut channels = Vec::new();
    for i in 0..n {
        let port = ports[i % ports.len()];
        let conn = i / ports.len() / per_conn.max(1);
        let key = (port, conn);
        let channel = match channels.iter().find(|(k, _)| *k == key) {
            Some((_, c)) => tonic::transport::Channel::clone(c),
            None => {
                let c =
                    tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))?
                        .connect_timeout(Duration::from_secs(10))
                        .connect()
                        .await?;
                channels.push((key, c.clone()));
                c
            }
        };
        let ads =
            AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
        let (id, group, route, seen) = (
            format!("sim-{}", first + i),
            group.to_owned(),
            route.to_owned(),
            seen.clone(),
        );
        set.spawn(async move {
            let _ = proxy(ads, id, group, route, Some(seen)).await;
        });
    }
    Ok(set)
}

/// An ADS stream to teal's xDS port on 127.0.0.1, as node `id` of group
/// `edge`, subscribed to every type: the sender for its next requests
/// (ACKs, NACKs) and the responses.
pub async fn ads_subscribed_to_all(
    port: u16,
    id: &str,
) -> (
    mpsc::Sender<DiscoveryRequest>,
    tonic::Streaming<DiscoveryResponse>,
) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let node = Some(Node {
        id: id.into(),
        cluster: "edge".into(),
        ..Default::default()
    });
    let (tx, rx) = mpsc::channel(16);
    for ty in ResourceType::ALL {
        tx.send(DiscoveryRequest {
            node: node.clone(),
            type_url: ty.type_url().into(),
            ..Default::default()
        })
        .await
        .expect("send");
    }
    let stream = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    (tx, stream)
}

/// How [`answering_proxy`] answers what it receives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    Ack,
    /// Answers nothing until told otherwise.
    Hold,
    /// Rejects the next route configuration of a version other than the
    /// one it holds (the next change of weights), then ACKs everything
    /// (the version put back too). A response sent again meanwhile is not
    /// a change, so it cannot take the rejection's place.
    NackOnce,
    /// Rejects every route configuration of a version other than the one
    /// it holds (any change of weights, the way back too), and ACKs the
    /// rest.
    NackRouteChanges,
}

/// A proxy `id` of group `edge` on teal's xDS port `port`, subscribed to
/// every type, answering each response as `answer` says when it is read.
pub async fn answering_proxy(
    port: u16,
    id: &str,
    answer: tokio::sync::watch::Receiver<Answer>,
) -> tokio::task::JoinHandle<()> {
    let (tx, mut stream) = ads_subscribed_to_all(port, id).await;
    tokio::spawn(async move {
        let mut answer = answer;
        let mut acked = std::collections::HashMap::<String, String>::new();
        let mut nacked = false;
        while let Ok(Some(response)) = stream.message().await {
            let Ok(mode) = answer.wait_for(|a| *a != Answer::Hold).await.map(|a| *a) else {
                return;
            };
            let changed_route = response.type_url.ends_with("RouteConfiguration")
                && acked
                    .get(&response.type_url)
                    .is_some_and(|held| *held != response.version_info);
            let nack = match mode {
                Answer::NackOnce => changed_route && !nacked,
                Answer::NackRouteChanges => changed_route,
                Answer::Ack | Answer::Hold => false,
            };
            // Armed again once the proxy is told anything else.
            nacked = mode == Answer::NackOnce && (nacked || nack);
            if !nack {
                acked.insert(response.type_url.clone(), response.version_info.clone());
            }
            let request = DiscoveryRequest {
                version_info: acked.get(&response.type_url).cloned().unwrap_or_default(),
                type_url: response.type_url,
                response_nonce: response.nonce,
                error_detail: nack.then(|| envoy_types::pb::google::rpc::Status {
                    code: 3,
                    message: "refused by the test".into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            if tx.send(request).await.is_err() {
                return;
            }
        }
    })
}
