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
use teal::resources::ResourceType;
use teal::shutdown::shutdown_channel;
use teal::snapshot::{GroupResources, SnapshotInput};
use teal::snapshot_store::snapshot_store;
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

#[tokio::test]
async fn bad_streams_get_clear_errors_and_good_ones_carry_on() {
    let (mut writer, reader) = snapshot_store();
    writer.publish("1", &input(&["a"])).expect("valid");
    let registry = ProxyRegistry::new();
    let (trigger, shutdown) = shutdown_channel();
    let config = XdsServerConfig {
        max_request_bytes: LIMIT,
        ..XdsServerConfig::default()
    };
    let server = XdsServer::new(reader, registry.clone(), shutdown, config);
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
