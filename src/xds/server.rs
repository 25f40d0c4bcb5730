//! The tonic layer: ADS and the per-type discovery services, state of the
//! world and delta, on one port.
//!
//! It only pumps: each stream gets a task that feeds requests and new
//! snapshots to its state machine ([`SotwStream`] or [`DeltaStream`]),
//! records the events in the [`ProxyRegistry`], and writes the responses.
//! The services are hand-routed rather than taken from envoy-types'
//! generated servers so they can use [`XdsCodec`], which writes responses
//! that were encoded once for all streams.
//!
//! Served methods (each also answers to its delta twin):
//! - `envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources`
//! - `envoy.service.cluster.v3.ClusterDiscoveryService/StreamClusters`
//! - `envoy.service.endpoint.v3.EndpointDiscoveryService/StreamEndpoints`
//! - `envoy.service.listener.v3.ListenerDiscoveryService/StreamListeners`
//! - `envoy.service.route.v3.RouteDiscoveryService/StreamRoutes`
//!
//! and, from envoy-types' generated servers, CSDS
//! (`envoy.service.status.v3.ClientStatusDiscoveryService`, see [`csds`](super::csds))
//! and LRS (`envoy.service.load_stats.v3.LoadReportingService`, see `lrs`).

use std::marker::PhantomData;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::service::Routes;
use tonic::{Status, Streaming};

use crate::shutdown::Shutdown;
use crate::text::untrusted;
use crate::transport::identity::{IdentityGate, PeerIdentity};
use crate::transport::listener::{ConnectionLimits, Incoming, Port};
use crate::transport::tls::{ConnInfo, ServerTls};
use crate::xds::resources::ResourceType;
use crate::xds::snapshot_store::SnapshotReader;
use crate::xds::wire::OutMessage;

use super::codec::XdsCodec;
use super::csds::{ClientStatus, CsdsLimits};
use super::delta::DeltaStream;
use super::gate::{admits, lost_serving, next_policy, not_serving, not_serving_now, refused};
use super::limits::{Limit, StreamLimits};
use super::lrs::{LoadReportConfig, LoadReporting};
use super::protocol::{Planner, StreamKind};
use super::sotw::SotwStream;
use super::status::ProxyRegistry;

/// Tunables of the xDS server.
#[derive(Clone, Debug)]
pub struct XdsServerConfig {
    /// Largest request accepted, in bytes; a larger one closes that stream
    /// with `RESOURCE_EXHAUSTED`. Default 4 MiB (gRPC's usual limit):
    /// twice a subscription at its default limits.
    pub max_request_bytes: usize,
    /// Largest response sent, in bytes. Default 64 MiB.
    pub max_response_bytes: usize,
    /// How long open streams get to close after shutdown starts.
    pub drain: Duration,
    /// What one stream may make teal hold (see [`StreamLimits`]).
    pub stream: StreamLimits,
    /// Bounds on the port's connections (see [`ConnectionLimits`]).
    pub connections: ConnectionLimits,
    /// TLS on the port; with a client CA, streams carry the identity of
    /// their client certificate. `None`: plaintext.
    pub tls: Option<Arc<ServerTls>>,
    /// Which identities may join which group (see [`IdentityGate`]).
    pub identities: Arc<IdentityGate>,
    /// What a CSDS request may ask (see [`CsdsLimits`]).
    pub csds: CsdsLimits,
    /// How load reports are asked for and bounded (see
    /// [`LoadReportConfig`]).
    pub load_reports: LoadReportConfig,
    /// How long a connection may stay open before teal asks its client to
    /// reconnect: an HTTP/2 GOAWAY, then `CONNECTION_AGE_GRACE` before
    /// its streams are closed. A proxy keeps its configuration meanwhile
    /// and reconnects through whatever spreads proxies over replicas, so a
    /// replica that restarted wins back its share of them instead of the
    /// ones that stayed up keeping every proxy. `None`: never. Default 30
    /// minutes.
    pub max_connection_age: Option<Duration>,
    /// How long a proxy whose stream ended still counts, as not
    /// confirming anything newer, unless it reconnects first
    /// (`--proxy-reconnect-hold`; zero: not at all). See
    /// `ProxyRegistry::set_reconnect_hold`.
    pub proxy_reconnect_hold: Duration,
    /// Whether this server may serve proxies now (a replica on etcd may
    /// only while it holds its lease): when it turns false, every stream
    /// is closed with `UNAVAILABLE` and new ones are refused, so proxies
    /// reconnect to a replica that the leader can see. `None`: always.
    pub serving: Option<watch::Receiver<bool>>,
}

/// How long the streams of a connection that reached
/// [`XdsServerConfig::max_connection_age`] have after its GOAWAY: an xDS
/// stream never ends on its own, so this is when it is closed (a response
/// on its way still arrives).
pub(crate) const CONNECTION_AGE_GRACE: Duration = Duration::from_secs(5);

/// The default of `--proxy-reconnect-hold`: longer than Envoy's first
/// reconnect backoff (about a second) and a replica's time to close its
/// streams when it cannot reach etcd, short enough that a proxy scaled
/// away mid-change holds the change up only briefly.
pub(crate) const DEFAULT_PROXY_RECONNECT_HOLD: Duration = Duration::from_secs(10);

impl Default for XdsServerConfig {
    fn default() -> Self {
        XdsServerConfig {
            max_request_bytes: 4 * 1024 * 1024,
            max_response_bytes: 64 * 1024 * 1024,
            drain: Duration::from_secs(5),
            stream: StreamLimits::default(),
            connections: ConnectionLimits::default_for(Port::Xds),
            tls: None,
            identities: IdentityGate::new(),
            csds: CsdsLimits::default(),
            load_reports: LoadReportConfig::default(),
            max_connection_age: Some(Duration::from_secs(30 * 60)),
            proxy_reconnect_hold: DEFAULT_PROXY_RECONNECT_HOLD,
            serving: None,
        }
    }
}

/// Responses queued per stream. The state machine keeps at most one
/// un-ACKed response per type, so four would do; a little slack lets a
/// burst go out without waiting for the writer.
const STREAM_QUEUE: usize = 8;

/// What every stream shares.
#[derive(Debug)]
struct Shared {
    reader: SnapshotReader,
    registry: Arc<ProxyRegistry>,
    shutdown: Shutdown,
    config: XdsServerConfig,
}

/// The xDS server.
#[derive(Clone, Debug)]
pub struct XdsServer {
    shared: Arc<Shared>,
    csds: ClientStatus,
    lrs: LoadReporting,
}

impl XdsServer {
    /// A server that serves what `reader` publishes and reports to
    /// `registry`, until `shutdown`.
    pub fn new(
        reader: SnapshotReader,
        registry: Arc<ProxyRegistry>,
        shutdown: Shutdown,
        config: XdsServerConfig,
    ) -> XdsServer {
        let csds = ClientStatus::new(
            registry.clone(),
            reader.clone(),
            config.csds,
            shutdown.clone(),
        );
        let lrs = LoadReporting::new(
            registry.clone(),
            config.identities.clone(),
            config.serving.clone(),
            shutdown.clone(),
            config.load_reports,
            config.stream.max_node_field_bytes,
        );
        XdsServer {
            csds,
            lrs,
            shared: Arc::new(Shared {
                reader,
                registry,
                shutdown,
                config,
            }),
        }
    }

    /// The five discovery services, CSDS and LRS, to mount on a tonic
    /// server.
    pub(crate) fn routes(&self) -> Routes {
        let s = &self.shared;
        Routes::new(DiscoveryService::<Ads>::new(s))
            .add_service(DiscoveryService::<Cds>::new(s))
            .add_service(DiscoveryService::<Eds>::new(s))
            .add_service(DiscoveryService::<Lds>::new(s))
            .add_service(DiscoveryService::<Rds>::new(s))
            .add_service(
                self.csds
                    .clone()
                    .gated(s.config.identities.clone())
                    .into_server(),
            )
            .add_service(self.lrs.clone().into_server())
    }

    /// The CSDS service of this server (its registry and snapshots), to
    /// mount on another port too; it shares this server's limits. Unlike
    /// the xDS port's, it shows every group whatever the asker's identity
    /// (for the admin port, whose clients are operators).
    pub fn client_status(&self) -> ClientStatus {
        self.csds.clone()
    }

    /// Serves on `listener` until shutdown, then gives open streams the
    /// configured drain time to close.
    pub async fn serve(self, listener: TcpListener) -> Result<(), tonic::transport::Error> {
        let local: Option<SocketAddr> = listener.local_addr().ok();
        match local {
            Some(addr) => tracing::info!(%addr, "xDS server listening"),
            None => tracing::info!("xDS server listening (address unknown)"),
        }
        let mut stop = self.shared.shutdown.clone();
        let mut deadline = self.shared.shutdown.clone();
        let drain = self.shared.config.drain;
        let limits = self.shared.config.connections;
        let mut builder = tonic::transport::Server::builder()
            .max_concurrent_streams(limits.max_streams_per_connection)
            .http2_keepalive_interval(Some(limits.keepalive()))
            .http2_keepalive_timeout(Some(limits.keepalive()));
        if let Some(age) = self.shared.config.max_connection_age {
            builder = builder
                .max_connection_age(age)
                .max_connection_age_grace(CONNECTION_AGE_GRACE);
        }
        let server = builder
            .add_routes(self.routes())
            .serve_with_incoming_shutdown(
                Incoming::new(listener, Port::Xds, limits).with_tls(self.shared.config.tls.clone()),
                async move { stop.wait().await },
            );
        tokio::select! {
            result = server => result,
            () = async move { deadline.wait().await; tokio::time::sleep(drain).await } => {
                tracing::warn!(?drain, "drain deadline passed; closing the remaining streams");
                Ok(())
            }
        }
    }
}

/// Runs one stream until the client leaves, breaks the protocol, or
/// teal shuts down.
async fn run_stream<M: Planner>(
    shared: Arc<Shared>,
    kind: StreamKind,
    identity: PeerIdentity,
    mut requests: Streaming<M::Request>,
    tx: mpsc::Sender<Result<OutMessage, Status>>,
) {
    let mut serving = shared.config.serving.clone();
    if not_serving_now(&mut serving) {
        let _ = tx.send(Err(not_serving())).await;
        return;
    }
    let mut machine = M::with_limits(kind, shared.config.stream);
    let mut handle = shared.registry.register(kind, M::DELTA);
    handle.set_identity(&identity);
    let mut admitted = false;
    // Subscribed before the node is checked: a policy put in force after
    // that check is seen as a change.
    let mut policies = shared.config.identities.watch();
    let mut reader = shared.reader.clone();
    let mut shutdown = shared.shutdown.clone();
    // Made once, not at every turn of the loop: a stream turns it at
    // every request and every push.
    let stopping = shutdown.wait();
    tokio::pin!(stopping);
    let lost = lost_serving(&mut serving);
    tokio::pin!(lost);
    loop {
        let output = tokio::select! {
            () = &mut stopping => {
                let _ = tx.send(Err(Status::unavailable("teal is shutting down"))).await;
                return;
            }
            () = &mut lost => {
                tracing::warn!(stream = handle.id(), "closing stream: this replica cannot reach etcd");
                let _ = tx.send(Err(not_serving())).await;
                return;
            }
            message = requests.message() => match message {
                Ok(Some(req)) => {
                    let snapshot = reader.current();
                    match machine.on_request(&req, &snapshot) {
                        Ok(output) => output,
                        Err(e) => {
                            tracing::warn!(stream = handle.id(), error = %e, "closing stream: protocol error");
                            handle.forget();
                            let _ = tx.send(Err(e.into())).await;
                            return;
                        }
                    }
                }
                Ok(None) => return,
                Err(status) => {
                    let status = request_error(status, shared.config.max_request_bytes);
                    tracing::warn!(stream = handle.id(), code = ?status.code(), message = status.message(), "closing stream: bad request");
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            },
            alive = reader.changed() => {
                if !alive {
                    return;
                }
                let snapshot = reader.current();
                machine.on_snapshot(&snapshot)
            }
            () = next_policy(&mut policies), if admitted => {
                // A reload that no longer admits this stream's identity to
                // its group ends it, as if it had just arrived: it leaves
                // the registry at once (not counted as reconnecting), so
                // no flip waits for it.
                if let Some(node) = machine.node()
                    && !admits(&shared.config.identities, node, &identity)
                {
                    tracing::warn!(
                        stream = handle.id(),
                        node = %untrusted(&node.id),
                        group = %untrusted(&node.cluster),
                        identity = %untrusted(&identity.to_string()),
                        "stream closed: the reloaded config no longer lets its identity join its group"
                    );
                    handle.forget();
                    let _ = tx.send(Err(refused(node, &identity))).await;
                    return;
                }
                continue;
            }
        };
        if !admitted && let Some(node) = machine.node() {
            // Checked before the node is recorded or anything is sent: a
            // refused stream is never a proxy of the group, so no flip
            // waits for it and its NACKs count for nothing.
            if !admits(&shared.config.identities, node, &identity) {
                tracing::warn!(
                    stream = handle.id(),
                    node = %untrusted(&node.id),
                    group = %untrusted(&node.cluster),
                    identity = %untrusted(&identity.to_string()),
                    "stream refused: its identity may not join the group it claims"
                );
                let _ = tx.send(Err(refused(node, &identity))).await;
                return;
            }
            admitted = true;
        }
        handle.set_node(machine.node());
        handle.record(&output.events);
        for response in output.responses {
            if tx.send(Ok(response.message)).await.is_err() {
                return;
            }
        }
    }
}

/// The status a stream is closed with when reading a request failed.
///
/// tonic refuses a request over the size limit, from its length prefix and
/// before reading it, with `OUT_OF_RANGE`; gRPC's convention (and teal's
/// for every limit) is `RESOURCE_EXHAUSTED` naming the limit. tonic's
/// request decoding gives `OUT_OF_RANGE` for nothing else (teal's codec
/// reports malformed requests as `INVALID_ARGUMENT`), so the code alone
/// says which error it is.
fn request_error(status: Status, max_request_bytes: usize) -> Status {
    if status.code() != tonic::Code::OutOfRange {
        return status;
    }
    let limit = Limit::RequestBytes;
    Status::resource_exhausted(format!(
        "a request is over the {limit} of {max_request_bytes} bytes ({flag}): {detail}",
        flag = limit.flag(),
        detail = status.message(),
    ))
}

/// One gRPC method: a stream flavour on a service.
struct Method<M> {
    shared: Arc<Shared>,
    kind: StreamKind,
    _machine: PhantomData<fn() -> M>,
}

impl<M: Planner> StreamingService<M::Request> for Method<M> {
    type Response = OutMessage;
    type ResponseStream = ReceiverStream<Result<OutMessage, Status>>;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: tonic::Request<Streaming<M::Request>>) -> Self::Future {
        let shared = self.shared.clone();
        let kind = self.kind;
        let identity = request
            .extensions()
            .get::<ConnInfo>()
            .map(ConnInfo::identity)
            .unwrap_or(PeerIdentity::Unauthenticated);
        Box::pin(async move {
            let (tx, rx) = mpsc::channel(STREAM_QUEUE);
            tokio::spawn(run_stream::<M>(
                shared,
                kind,
                identity,
                request.into_inner(),
                tx,
            ));
            Ok(tonic::Response::new(ReceiverStream::new(rx)))
        })
    }
}

/// Names one discovery service and its two stream methods.
trait ServiceSpec: Send + Sync + 'static {
    const NAME: &'static str;
    const SOTW_METHOD: &'static str;
    const DELTA_METHOD: &'static str;
    const KIND: StreamKind;
}

macro_rules! service_spec {
    ($marker:ident, $name:literal, $sotw:literal, $delta:literal, $kind:expr) => {
        #[derive(Debug)]
        struct $marker;
        impl ServiceSpec for $marker {
            const NAME: &'static str = $name;
            const SOTW_METHOD: &'static str = $sotw;
            const DELTA_METHOD: &'static str = $delta;
            const KIND: StreamKind = $kind;
        }
    };
}

service_spec!(
    Ads,
    "envoy.service.discovery.v3.AggregatedDiscoveryService",
    "StreamAggregatedResources",
    "DeltaAggregatedResources",
    StreamKind::Aggregated
);
service_spec!(
    Cds,
    "envoy.service.cluster.v3.ClusterDiscoveryService",
    "StreamClusters",
    "DeltaClusters",
    StreamKind::Single(ResourceType::Cluster)
);
service_spec!(
    Eds,
    "envoy.service.endpoint.v3.EndpointDiscoveryService",
    "StreamEndpoints",
    "DeltaEndpoints",
    StreamKind::Single(ResourceType::Endpoint)
);
service_spec!(
    Lds,
    "envoy.service.listener.v3.ListenerDiscoveryService",
    "StreamListeners",
    "DeltaListeners",
    StreamKind::Single(ResourceType::Listener)
);
service_spec!(
    Rds,
    "envoy.service.route.v3.RouteDiscoveryService",
    "StreamRoutes",
    "DeltaRoutes",
    StreamKind::Single(ResourceType::Route)
);

/// One discovery service, routed by method name.
struct DiscoveryService<S> {
    shared: Arc<Shared>,
    _spec: PhantomData<fn() -> S>,
}

impl<S> DiscoveryService<S> {
    fn new(shared: &Arc<Shared>) -> Self {
        DiscoveryService {
            shared: shared.clone(),
            _spec: PhantomData,
        }
    }
}

impl<S> Clone for DiscoveryService<S> {
    fn clone(&self) -> Self {
        DiscoveryService::new(&self.shared)
    }
}

impl<S: ServiceSpec> NamedService for DiscoveryService<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for DiscoveryService<S>
where
    S: ServiceSpec,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|p| p.strip_prefix(S::NAME))
            .and_then(|p| p.strip_prefix('/'))
            .unwrap_or("");
        let shared = self.shared.clone();
        let limits = (
            Some(shared.config.max_request_bytes),
            Some(shared.config.max_response_bytes),
        );
        if method == S::SOTW_METHOD {
            Box::pin(async move {
                let mut grpc = Grpc::new(XdsCodec::<DiscoveryRequest>::new(shared.config.stream))
                    .apply_max_message_size_config(limits.0, limits.1);
                let method = Method::<SotwStream> {
                    shared,
                    kind: S::KIND,
                    _machine: PhantomData,
                };
                Ok(grpc.streaming(method, req).await)
            })
        } else if method == S::DELTA_METHOD {
            Box::pin(async move {
                let mut grpc =
                    Grpc::new(XdsCodec::<DeltaDiscoveryRequest>::new(shared.config.stream))
                        .apply_max_message_size_config(limits.0, limits.1);
                let method = Method::<DeltaStream> {
                    shared,
                    kind: S::KIND,
                    _machine: PhantomData,
                };
                Ok(grpc.streaming(method, req).await)
            })
        } else {
            Box::pin(async move { Ok(Status::unimplemented("no such method").into_http()) })
        }
    }
}
