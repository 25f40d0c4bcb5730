//! Every quantity a client controls on the xDS and admin ports is bounded:
//! going past a limit closes that stream (`RESOURCE_EXHAUSTED`, naming the
//! limit and its flag) or that connection, and other streams carry on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
    aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use envoy_types::pb::google::rpc;
use teal::shutdown::{ShutdownTrigger, shutdown_channel};
use teal::transport::listener::{ConnectionLimits, Port};
use teal::xds::resources::ResourceType;
use teal::xds::snapshot::{GroupResources, SnapshotInput};
use teal::xds::snapshot_store::{SnapshotWriter, snapshot_store};
use teal::xds::{
    ClientStatus, CsdsLimits, ProxyRegistry, StreamLimits, XdsServer, XdsServerConfig,
};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

use crate::support::free_port;

const CDS: ResourceType = ResourceType::Cluster;

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

fn node(id: &str) -> Node {
    Node {
        id: id.into(),
        cluster: "edge".into(),
        ..Default::default()
    }
}

fn request(id: &str, names: Vec<String>) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(node(id)),
        type_url: CDS.type_url().into(),
        resource_names: names,
        ..Default::default()
    }
}

/// An xDS server on 127.0.0.1:0 with `config`.
struct Server {
    addr: SocketAddr,
    writer: SnapshotWriter,
    registry: Arc<ProxyRegistry>,
    csds: ClientStatus,
    _stop: ShutdownTrigger,
}

impl Server {
    async fn start(config: XdsServerConfig) -> Server {
        let (mut writer, reader) = snapshot_store();
        writer.publish("1", &input(&["a", "b"])).expect("valid");
        let registry = ProxyRegistry::new();
        let (trigger, shutdown) = shutdown_channel();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = XdsServer::new(reader, registry.clone(), shutdown, config);
        let csds = server.client_status();
        tokio::spawn(server.serve(listener));
        Server {
            addr,
            writer,
            registry,
            csds,
            _stop: trigger,
        }
    }

    async fn channel(&self) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .expect("uri")
            .connect()
            .await
            .expect("connect")
    }
}

/// A SotW ADS stream: the sender of its requests and its responses.
struct Ads {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Ads {
    async fn open(channel: &Channel, first: DiscoveryRequest) -> Result<Ads, Status> {
        let (tx, rx) = mpsc::channel(4);
        tx.send(first).await.expect("queue");
        let rx = AggregatedDiscoveryServiceClient::new(channel.clone())
            .max_encoding_message_size(64 << 20)
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok(Ads { tx, rx })
    }

    async fn next(&mut self) -> Result<DiscoveryResponse, Status> {
        match tokio::time::timeout(Duration::from_secs(5), self.rx.next()).await {
            Ok(Some(r)) => r,
            Ok(None) => Err(Status::unknown("stream ended")),
            Err(_) => Err(Status::deadline_exceeded("no answer in 5 s")),
        }
    }

    async fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.expect("stream open");
    }
}

fn assert_exhausted(status: &Status, flag: &str) {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains(flag),
        "the message names {flag}: {}",
        status.message()
    );
}

#[tokio::test]
async fn streams_past_a_limit_are_closed_and_others_carry_on() {
    let mut server = Server::start(XdsServerConfig {
        stream: StreamLimits {
            max_subscription_names: 100,
            max_subscription_bytes: 10_000,
            max_node_field_bytes: 64,
            max_nack_bytes: 32,
        },
        ..XdsServerConfig::default()
    })
    .await;
    let channel = server.channel().await;
    let mut good = Ads::open(&channel, request("good", vec![]))
        .await
        .expect("good");
    let first = good.next().await.expect("answer");

    // SotW: one request naming too many resources.
    let names = (0..101).map(|i| format!("made-up-{i}")).collect();
    let mut s = Ads::open(&channel, request("names", names))
        .await
        .expect("open");
    assert_exhausted(
        &s.next().await.expect_err("too many"),
        "--max-subscription-names",
    );

    // A node id over the limit.
    let mut s = Ads::open(&channel, request(&"n".repeat(65), vec![]))
        .await
        .expect("open");
    assert_exhausted(
        &s.next().await.expect_err("long id"),
        "--max-node-field-bytes",
    );

    // Delta: a subscription that grows request by request.
    let (tx, rx) = mpsc::channel(64);
    let mut delta = AggregatedDiscoveryServiceClient::new(channel.clone())
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("delta")
        .into_inner();
    for i in 0..40 {
        let sub = DeltaDiscoveryRequest {
            node: Some(node("delta")),
            type_url: ResourceType::Endpoint.type_url().into(),
            resource_names_subscribe: (0..10).map(|j| format!("ep-{i}-{j}")).collect(),
            ..Default::default()
        };
        if tx.send(sub).await.is_err() {
            break;
        }
    }
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(5), delta.next()).await {
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(status))) => break status,
            other => panic!("the delta stream was not closed: {other:?}"),
        }
    };
    assert_exhausted(&status, "--max-subscription-names");

    // A 3 MB NACK is recorded as its first 32 bytes, marked.
    let mut nacker = Ads::open(&channel, request("nacker", vec![]))
        .await
        .expect("open");
    let sent = nacker.next().await.expect("answer");
    nacker
        .send(DiscoveryRequest {
            response_nonce: sent.nonce.clone(),
            error_detail: Some(rpc::Status {
                code: 3,
                message: "x".repeat(3 << 20),
                ..Default::default()
            }),
            ..request("nacker", vec![])
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let message = loop {
        let nack = server.registry.proxies().into_iter().find_map(|p| {
            let is_nacker = p.node.as_ref().is_some_and(|n| n.id == "nacker");
            p.of(CDS).nack.clone().filter(|_| is_nacker)
        });
        if let Some(n) = nack {
            break n.message;
        }
        assert!(Instant::now() < deadline, "the NACK was not recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        message,
        format!("{}… [cut: {} bytes]", "x".repeat(32), (3 << 20) - 32)
    );

    // The good stream never noticed: ACK, then a new version arrives.
    good.send(DiscoveryRequest {
        response_nonce: first.nonce.clone(),
        ..request("good", vec![])
    })
    .await;
    server.writer.publish("2", &input(&["a"])).expect("valid");
    let next = good.next().await.expect("new version");
    assert_eq!(next.version_info, "2");
}

/// A request's name lists are bounded on the wire, each by the
/// subscription limits, before the request is decoded: a delta
/// unsubscribe list (which never grows the subscription, so the stream
/// state machine alone let it through, decoded whole) closes the stream.
#[tokio::test]
async fn a_request_list_past_a_limit_is_refused_before_it_is_decoded() {
    let mut server = Server::start(XdsServerConfig {
        stream: StreamLimits {
            max_subscription_names: 100,
            max_subscription_bytes: 10_000,
            ..StreamLimits::default()
        },
        ..XdsServerConfig::default()
    })
    .await;
    let channel = server.channel().await;
    let mut good = Ads::open(&channel, request("good", vec![]))
        .await
        .expect("good");
    let first = good.next().await.expect("answer");

    let (tx, rx) = mpsc::channel(4);
    let unsubscribe = DeltaDiscoveryRequest {
        node: Some(node("unsubscriber")),
        type_url: ResourceType::Endpoint.type_url().into(),
        resource_names_unsubscribe: (0..101).map(|i| format!("never-{i}")).collect(),
        ..Default::default()
    };
    tx.send(unsubscribe).await.expect("queue");
    let mut delta = AggregatedDiscoveryServiceClient::new(channel.clone())
        .delta_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("delta")
        .into_inner();
    let status = match tokio::time::timeout(Duration::from_secs(5), delta.next()).await {
        Ok(Some(Err(status))) => status,
        other => panic!("the unsubscribe list was not refused: {other:?}"),
    };
    assert_exhausted(&status, "--max-subscription-names");
    assert!(
        status.message().contains("resource_names_unsubscribe"),
        "{status:?}"
    );

    // The good stream on the same connection carries on: ACK, then a
    // new version arrives.
    good.send(DiscoveryRequest {
        response_nonce: first.nonce.clone(),
        ..request("good", vec![])
    })
    .await;
    server.writer.publish("2", &input(&["a"])).expect("valid");
    assert_eq!(good.next().await.expect("new version").version_info, "2");
}

#[tokio::test]
async fn streams_per_connection_are_capped_by_http2_settings() {
    let server = Server::start(XdsServerConfig {
        connections: ConnectionLimits {
            max_streams_per_connection: 10,
            ..ConnectionLimits::default_for(Port::Xds)
        },
        ..XdsServerConfig::default()
    })
    .await;
    let channel = server.channel().await;
    let mut streams = Vec::new();
    for i in 0..30 {
        let channel = channel.clone();
        streams.push(tokio::spawn(async move {
            let mut s = Ads::open(&channel, request(&format!("p{i}"), vec![]))
                .await
                .expect("open");
            s.next().await.expect("answer");
            s // kept open
        }));
    }
    let registered = || server.registry.len();
    let deadline = Instant::now() + Duration::from_secs(5);
    while registered() < 10 {
        assert!(Instant::now() < deadline, "10 streams were never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        registered(),
        10,
        "no more than 10 streams on one connection"
    );
    // Streams waiting for a slot get one as others close.
    let served: Vec<_> = futures_first(&mut streams, 10).await;
    drop(served);
    let deadline = Instant::now() + Duration::from_secs(5);
    while streams.iter().any(|s| !s.is_finished()) {
        assert!(Instant::now() < deadline, "queued streams were not served");
        let done: Vec<_> = futures_first(&mut streams, 10).await;
        drop(done);
    }
    assert!(registered() <= 10);
}

/// Takes up to `n` finished stream tasks out of `tasks`.
async fn futures_first(tasks: &mut Vec<tokio::task::JoinHandle<Ads>>, n: usize) -> Vec<Ads> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while out.len() < n && !tasks.is_empty() && Instant::now() < deadline {
        if let Some(i) = tasks.iter().position(|t| t.is_finished()) {
            out.push(tasks.swap_remove(i).await.expect("stream task"));
        } else {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    out
}

/// Reads from `conn` until the server closes it; how long that took, or
/// `None` if it stayed open for `within`.
async fn closed_within(conn: &mut TcpStream, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + within).into(), conn.read(&mut buf)).await {
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            // The server's own SETTINGS frame; keep reading.
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test]
async fn silent_connections_are_closed_on_both_ports_and_live_streams_stay() {
    let limits = ConnectionLimits {
        handshake_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(1500),
        ..ConnectionLimits::default_for(Port::Xds)
    };
    let (trigger, shutdown) = shutdown_channel();
    let running = teal::serve::start(
        teal::serve::ServeOptions {
            xds: XdsServerConfig {
                connections: limits,
                ..XdsServerConfig::default()
            },
            admin_connections: limits,
            ..teal::serve::ServeOptions::local(None)
        },
        shutdown,
    )
    .await
    .expect("teal serve starts");
    for addr in [running.xds_addr, running.admin_addr] {
        // Sends nothing at all.
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        let took = closed_within(&mut silent, Duration::from_secs(10)).await;
        let took = took.unwrap_or_else(|| panic!("a silent connection to {addr} stayed open"));
        assert!(took < Duration::from_secs(5), "closed after {took:?}");
        // Sends half a preface, then nothing.
        let mut stalled = TcpStream::connect(addr).await.expect("connect");
        tokio::io::AsyncWriteExt::write_all(&mut stalled, b"PRI * HTTP/2.0")
            .await
            .expect("write");
        let took = closed_within(&mut stalled, Duration::from_secs(10)).await;
        let took = took.unwrap_or_else(|| panic!("a stalled connection to {addr} stayed open"));
        assert!(took < Duration::from_secs(5), "closed after {took:?}");
    }

    // A live ADS stream that has nothing to say for several idle timeouts
    // stays: it answers teal's pings.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", running.xds_addr))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut ads = Ads::open(&channel, request("quiet", vec![]))
        .await
        .expect("open");
    let first = ads.next().await.expect("answer");
    ads.send(DiscoveryRequest {
        response_nonce: first.nonce.clone(),
        ..request("quiet", vec![])
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let quiet = running
        .registry
        .proxies()
        .into_iter()
        .filter(|p| p.node.as_ref().is_some_and(|n| n.id == "quiet"))
        .count();
    assert_eq!(quiet, 1, "the quiet stream is still connected");
    trigger.trigger();
}

#[tokio::test]
async fn connections_past_the_limit_are_refused_and_slots_come_back() {
    let server = Server::start(XdsServerConfig {
        connections: ConnectionLimits {
            max_connections: 2,
            ..ConnectionLimits::default_for(Port::Xds)
        },
        ..XdsServerConfig::default()
    })
    .await;
    let a = server.channel().await;
    let mut held = Ads::open(&a, request("a", vec![])).await.expect("a");
    held.next().await.expect("a served");
    // A second connection done with its handshake (one that is not would
    // be closed to make room for the third).
    let b = server.channel().await;
    let mut held_b = Ads::open(&b, request("b", vec![])).await.expect("b");
    held_b.next().await.expect("b served");
    // The third connection is closed at once.
    let mut third = TcpStream::connect(server.addr).await.expect("c");
    let took = closed_within(&mut third, Duration::from_secs(5)).await;
    assert!(took.is_some(), "the third connection was closed");
    // The first is undisturbed.
    held.send(request("a", vec!["a".into()])).await;
    // Once a slot frees, a new client is served.
    drop((held_b, b));
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
            .expect("uri");
        if let Ok(c) = endpoint.connect().await
            && let Ok(mut s) = Ads::open(&c, request("c", vec![])).await
            && s.next().await.is_ok()
        {
            break;
        }
        assert!(Instant::now() < deadline, "no slot came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// teal's CPU time so far (user + system), from /proc.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields overall, in clock ticks (100 per second).
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    Duration::from_millis(ticks * 10)
}

fn teal_status(admin: u16) -> bool {
    std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .args(["--admin", &format!("127.0.0.1:{admin}"), "status"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A child process, killed when the test is done with it or fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn accept_backs_off_at_the_file_descriptor_limit() {
    let (xds, admin) = (free_port(), free_port());
    let log = tempfile::NamedTempFile::new().expect("log file");
    // `ulimit -n 64` in a shell that then becomes teal: a limit for teal
    // alone, not for this test process.
    let child = std::process::Command::new("sh")
        .args(["-c", "ulimit -n 64 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_teal"))
        .args(["serve", "--ephemeral", "--drain", "0.1"])
        .args(["--xds-addr", &format!("127.0.0.1:{xds}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .args(["--handshake-timeout", "120", "--idle-timeout", "120"])
        .stdout(std::process::Stdio::null())
        .stderr(log.reopen().expect("log"))
        .spawn()
        .expect("teal starts");
    let pid = child.id();
    // Stopped however the test ends.
    let child = KillOnDrop(child);
    let started = Instant::now();
    while !teal_status(admin) {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "teal never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // More silent connections than teal has file descriptors for.
    let mut conns = Vec::new();
    for _ in 0..100 {
        conns.push(
            TcpStream::connect(("127.0.0.1", xds))
                .await
                .expect("connect"),
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = cpu_time(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let spent = cpu_time(pid) - before;
    eprintln!("teal's CPU time over 2 s at the fd limit: {spent:?}");
    // Spinning on EMFILE took 97% of a core; backing off takes next to none.
    assert!(
        spent < Duration::from_millis(400),
        "teal used {spent:?} of CPU in 2 s at the fd limit"
    );

    // Once descriptors come free, teal answers again within its backoff.
    drop(conns);
    let freed = Instant::now();
    while !teal_status(admin) {
        assert!(
            freed.elapsed() < Duration::from_secs(15),
            "teal status never answered again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(child);
    let text = std::fs::read_to_string(log.path()).expect("log");
    let reports = text
        .matches("cannot accept connections; backing off")
        .count();
    assert!(
        (1..=4).contains(&reports),
        "accept errors are logged once per interval, not per error ({reports} reports):\n{text}"
    );
}

/// A raw HTTP/2 connection to `addr` that never reads: every stream's
/// flow-control window is 0, while the connection answers pings. Its
/// driver task ends when teal closes the connection.
async fn unread_connection(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<()>,
) {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let (send, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake(tcp)
        .await
        .expect("HTTP/2 handshake");
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    (send, driver)
}

/// A call kept open and unread: its response and request halves.
type Unread = (http::Response<h2::RecvStream>, h2::SendStream<bytes::Bytes>);

/// A unary `FetchClientStatus` on `send` whose answer is never read: the
/// call, once its answer is on its way (its response headers came), or
/// the status it was refused with.
async fn fetch_unread(send: &h2::client::SendRequest<bytes::Bytes>) -> Result<Unread, Status> {
    use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
    use prost::Message;
    let body = ClientStatusRequest::default().encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(body.len()).expect("small").to_be_bytes());
    frame.extend_from_slice(&body);
    let request = http::Request::post(
        "http://teal/envoy.service.status.v3.ClientStatusDiscoveryService/FetchClientStatus",
    )
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .body(())
    .expect("request");
    let mut ready = send.clone().ready().await.expect("ready");
    let (response, mut stream) = ready.send_request(request, false).expect("send");
    stream
        .send_data(bytes::Bytes::from(frame), true)
        .expect("send the request");
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("headers in time")
        .expect("headers");
    match Status::from_header_map(response.headers()) {
        Some(status) if status.code() != Code::Ok => Err(status),
        _ => Ok((response, stream)),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csds_answers_left_unread_are_bounded_and_their_connection_closed() {
    const PER_CONNECTION: usize = 256 * 1024;
    const TOTAL: usize = 384 * 1024;
    let server = Server::start(XdsServerConfig {
        csds: CsdsLimits {
            max_unread_bytes_per_connection: PER_CONNECTION,
            max_unread_bytes: TOTAL,
            unread_timeout: Duration::from_secs(2),
            ..CsdsLimits::default()
        },
        ..XdsServerConfig::default()
    })
    .await;
    // 40 proxies with 1 KiB node ids: an answer of about 50 KiB.
    let channel = server.channel().await;
    let mut proxies = Vec::new();
    for i in 0..40 {
        let id = format!("{i:04}-{}", "x".repeat(1000));
        let mut ads = Ads::open(&channel, request(&id, vec![]))
            .await
            .expect("open");
        ads.next().await.expect("served");
        proxies.push(ads);
    }

    // One connection asks and never reads: answers are built until the
    // connection's bound, then refused naming it.
    let (first, first_driver) = unread_connection(server.addr).await;
    let mut held = Vec::new();
    let refused = loop {
        match fetch_unread(&first).await {
            Ok(call) => held.push(call),
            Err(status) => break status,
        }
        assert!(held.len() < 50, "never refused");
    };
    assert_exhausted(&refused, "--max-csds-unread-bytes-per-connection");
    let one_connection = server.csds.unread().total();
    eprintln!(
        "unread CSDS answers: {} calls, {one_connection} bytes on one connection",
        held.len()
    );
    assert!(held.len() >= 2, "{} answers", held.len());
    assert!(one_connection <= PER_CONNECTION, "{one_connection}");

    // A second one: up to the bound over all connections.
    let (second, second_driver) = unread_connection(server.addr).await;
    let refused = loop {
        match fetch_unread(&second).await {
            Ok(call) => held.push(call),
            Err(status) => break status,
        }
        assert!(held.len() < 100, "never refused");
    };
    assert_exhausted(&refused, "(--max-csds-unread-bytes)");
    let all = server.csds.unread().total();
    eprintln!("unread CSDS answers over two connections: {all} bytes (bound {TOTAL})");
    assert!(all <= TOTAL && all > one_connection, "{all}");

    // Neither reads: both are closed after the unread timeout, which
    // gives everything back.
    let started = Instant::now();
    for driver in [first_driver, second_driver] {
        tokio::time::timeout(Duration::from_secs(10), driver)
            .await
            .expect("the connection is closed in time")
            .expect("driver");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    drop(held);
    wait_until_zero(&server.csds).await;

    // A client that reads gets its answer.
    use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
    use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
    let answer = ClientStatusDiscoveryServiceClient::new(server.channel().await)
        .fetch_client_status(ClientStatusRequest::default())
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(answer.config.len(), 40);
    assert_eq!(
        server.csds.unread().total(),
        0,
        "a read answer is given back"
    );
    drop(proxies);
}

async fn wait_until_zero(csds: &ClientStatus) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while csds.unread().total() != 0 {
        assert!(
            Instant::now() < deadline,
            "{} bytes still counted",
            csds.unread().total()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
