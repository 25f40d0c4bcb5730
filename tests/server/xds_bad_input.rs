//! Bad input on one stream never crashes teal or disturbs other streams:
//! the offending stream is closed with a clear gRPC status.

use std::time::Duration;

use bytes::{Buf, BufMut};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, DiscoveryResponse,
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
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;
use tonic::{Code, Status};

const LIMIT: usize = 64 * 1024;

fn input(clusters: &[&str]) -> SnapshotInput {
    let mut i = SnapshotInput::default();
    i.groups.insert(
        "edge".into(),
        GroupResources {
            clusters: clusters
                .iter()
                .map(|n| Cluster {
                    name: (*n).into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        },
    );
    i
}

fn cds_request(node: bool) -> DiscoveryRequest {
    DiscoveryRequest {
        node: node.then(|| Node {
            id: "good".into(),
            cluster: "edge".into(),
            ..Default::default()
        }),
        type_url: ResourceType::Cluster.type_url().into(),
        ..Default::default()
    }
}

/// Opens an ADS stream, sends `first`, and returns what comes back first.
async fn first_answer(
    channel: &Channel,
    first: DiscoveryRequest,
) -> Result<Option<DiscoveryResponse>, Status> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(first).await.expect("queue request");
    let mut client = AggregatedDiscoveryServiceClient::new(channel.clone());
    let mut responses = client
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let answer = tokio::time::timeout(Duration::from_secs(5), responses.next())
        .await
        .map_err(|_| Status::deadline_exceeded("no answer in 5 s"))?;
    drop(tx);
    answer.transpose()
}

/// A codec that sends raw bytes as the request message, to put garbage
/// on the wire.
#[derive(Default)]
struct RawCodec;
struct RawEncoder;
struct RawDecoder;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

async fn send_garbage(channel: &Channel) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let path = http::uri::PathAndQuery::from_static(
        "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources",
    );
    // Field 1 (node) claims 200 bytes but the message ends after 3.
    let garbage = vec![0x0a, 0xc8, 0x01, 0xff, 0xff];
    let request = tonic::Request::new(tokio_stream::iter(vec![garbage]));
    match grpc.streaming(request, path, RawCodec).await {
        Err(status) => status,
        Ok(response) => {
            let mut stream = response.into_inner();
            match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
                Ok(Some(Err(status))) => status,
                other => panic!("garbage was not refused: {other:?}"),
            }
        }
    }
}

/// An xDS server on a free loopback port serving what `reader` holds,
/// with requests limited to [`LIMIT`] bytes; a channel to it, its shutdown
/// trigger and its task.
async fn serve(
    reader: teal::xds::snapshot_store::SnapshotReader,
) -> (
    Channel,
    teal::shutdown::ShutdownTrigger,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let (trigger, shutdown) = shutdown_channel();
    let config = XdsServerConfig {
        max_request_bytes: LIMIT,
        ..XdsServerConfig::default()
    };
    let server = XdsServer::new(reader, ProxyRegistry::new(), shutdown, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(server.serve(listener));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    (channel, trigger, task)
}

#[tokio::test]
async fn bad_streams_get_clear_errors_and_good_ones_carry_on() {
    let (mut writer, reader) = snapshot_store();
    writer.publish("1", &input(&["a"])).expect("valid");
    let (channel, trigger, task) = serve(reader).await;

    // A good stream, kept open throughout.
    let (good_tx, good_rx) = mpsc::channel(4);
    good_tx.send(cds_request(true)).await.expect("send");
    let mut good = AggregatedDiscoveryServiceClient::new(channel.clone())
        .stream_aggregated_resources(ReceiverStream::new(good_rx))
        .await
        .expect("good stream")
        .into_inner();
    let first = good.next().await.expect("answer").expect("ok");
    assert_eq!(first.version_info, "1");

    let no_node = first_answer(&channel, cds_request(false)).await;
    let status = no_node.expect_err("no node");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("node"), "{}", status.message());

    let mut unknown = cds_request(true);
    unknown.type_url = "type.googleapis.com/envoy.config.nope.v3.Nope".into();
    let status = first_answer(&channel, unknown)
        .await
        .expect_err("unknown type");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("unknown resource type"),
        "{}",
        status.message()
    );

    let mut huge = cds_request(true);
    huge.resource_names = vec!["x".repeat(LIMIT)];
    let status = first_answer(&channel, huge).await.expect_err("oversized");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("--max-request-bytes")
            && status.message().contains(&LIMIT.to_string()),
        "names the limit and its flag: {}",
        status.message()
    );

    let status = send_garbage(&channel).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("malformed"),
        "{}",
        status.message()
    );

    // The good stream still works: ACK, then a new version arrives.
    good_tx
        .send(DiscoveryRequest {
            response_nonce: first.nonce.clone(),
            version_info: first.version_info.clone(),
            ..cds_request(true)
        })
        .await
        .expect("ack");
    writer.publish("2", &input(&["a", "b"])).expect("valid");
    let next = tokio::time::timeout(Duration::from_secs(5), good.next())
        .await
        .expect("in time")
        .expect("answer")
        .expect("ok");
    assert_eq!(next.version_info, "2");
    assert_eq!(next.resources.len(), 2);
    assert!(!task.is_finished(), "the server is still running");
    trigger.trigger();
}

/// Sends `message` (raw protobuf bytes, or garbage) on the stream method
/// `path` and returns how the stream ends or what it answers first.
async fn raw_first(channel: &Channel, path: &str, message: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.expect("channel ready");
    let path = http::uri::PathAndQuery::try_from(path).expect("a path");
    // The request stream stays open, as a proxy's does.
    let (tx, rx) = mpsc::channel(1);
    tx.send(message).await.expect("queue");
    let response = grpc
        .streaming(tonic::Request::new(ReceiverStream::new(rx)), path, RawCodec)
        .await?;
    let mut stream = response.into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .map_err(|_| Status::deadline_exceeded("no answer in 5 s"))?;
    drop(tx);
    match first {
        Some(r) => r,
        None => Err(Status::unknown("the stream ended without a status")),
    }
}

/// Every discovery service, not only ADS, and its delta method: a
/// malformed message, a first request without a node, a type URL the
/// service does not serve, and a message over the size limit each close
/// that stream with their status; a good request on the same method is
/// answered, before and after.
#[tokio::test]
async fn every_service_and_delta_refuses_bad_input() {
    use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
    use prost::Message;
    let (mut writer, reader) = snapshot_store();
    writer.publish("1", &input(&["a"])).expect("valid");
    let (channel, trigger, task) = serve(reader).await;
    let node = || {
        Some(Node {
            id: "probe".into(),
            cluster: "edge".into(),
            ..Default::default()
        })
    };
    let services = [
        (
            "envoy.service.discovery.v3.AggregatedDiscoveryService",
            "StreamAggregatedResources",
            "DeltaAggregatedResources",
            None,
        ),
        (
            "envoy.service.cluster.v3.ClusterDiscoveryService",
            "StreamClusters",
            "DeltaClusters",
            Some(ResourceType::Cluster),
        ),
        (
            "envoy.service.endpoint.v3.EndpointDiscoveryService",
            "StreamEndpoints",
            "DeltaEndpoints",
            Some(ResourceType::Endpoint),
        ),
        (
            "envoy.service.listener.v3.ListenerDiscoveryService",
            "StreamListeners",
            "DeltaListeners",
            Some(ResourceType::Listener),
        ),
        (
            "envoy.service.route.v3.RouteDiscoveryService",
            "StreamRoutes",
            "DeltaRoutes",
            Some(ResourceType::Route),
        ),
    ];
    for (service, sotw, delta, only) in services {
        // The type this service serves (ADS: clusters), and one it does not.
        let served = only.unwrap_or(ResourceType::Cluster);
        let other = if served == ResourceType::Listener {
            ResourceType::Cluster
        } else {
            ResourceType::Listener
        };
        for (method, is_delta) in [(sotw, false), (delta, true)] {
            let path = format!("/{service}/{method}");
            let request = |node: Option<Node>, ty: &str, names: Vec<String>| -> Vec<u8> {
                if is_delta {
                    DeltaDiscoveryRequest {
                        node,
                        type_url: ty.to_owned(),
                        resource_names_subscribe: names,
                        ..Default::default()
                    }
                    .encode_to_vec()
                } else {
                    DiscoveryRequest {
                        node,
                        type_url: ty.to_owned(),
                        resource_names: names,
                        ..Default::default()
                    }
                    .encode_to_vec()
                }
            };
            let good = request(node(), served.type_url(), Vec::new());
            let answer = raw_first(&channel, &path, good.clone()).await;
            assert!(
                answer.is_ok(),
                "{path}: a good request is answered: {answer:?}"
            );

            let garbage = vec![0x0a, 0xc8, 0x01, 0xff, 0xff];
            let status = raw_first(&channel, &path, garbage)
                .await
                .expect_err("garbage");
            assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
            assert!(status.message().contains("malformed"), "{path}: {status:?}");

            let no_node = request(None, served.type_url(), Vec::new());
            let status = raw_first(&channel, &path, no_node)
                .await
                .expect_err("no node");
            assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
            assert!(status.message().contains("node"), "{path}: {status:?}");

            let unknown = request(
                node(),
                "type.googleapis.com/envoy.config.nope.v3.Nope",
                Vec::new(),
            );
            let status = raw_first(&channel, &path, unknown)
                .await
                .expect_err("unknown type");
            assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
            if only.is_some() {
                let mismatched = request(node(), other.type_url(), Vec::new());
                let status = raw_first(&channel, &path, mismatched)
                    .await
                    .expect_err("a type another service serves");
                assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
            }

            let huge = request(node(), served.type_url(), vec!["x".repeat(LIMIT)]);
            let status = raw_first(&channel, &path, huge)
                .await
                .expect_err("oversized");
            assert_eq!(status.code(), Code::ResourceExhausted, "{path}: {status:?}");
            assert!(
                status.message().contains("--max-request-bytes"),
                "{path}: {status:?}"
            );

            let answer = raw_first(&channel, &path, good).await;
            assert!(
                answer.is_ok(),
                "{path}: still answered afterwards: {answer:?}"
            );
        }
    }
    assert!(!task.is_finished(), "the server is still running");
    trigger.trigger();
}
