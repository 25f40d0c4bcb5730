//! LRS: `envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats`
//! on the xDS port, where the proxies teal serves report what their
//! traffic did.
//!
//! A proxy opens one stream and names its node in the first message
//! (Envoy 1.40 repeats its whole node, some 61 kB of extensions, in every
//! report, whatever `set_node_on_first_message_only` says; the codec reads
//! only its id, group and user agent; a later message that names another
//! node ends the stream). teal admits the stream under the xDS port's rules,
//! and more: the node must carry an id and a group (`node.cluster`), its
//! group's identity policy must admit the connection, and the node must
//! have an xDS stream connected to this replica in the same group (with
//! the same certificate identity, when that stream has one). A proxy
//! sends its load reports over its xDS connection, so a stream that
//! passes none of this is not a proxy teal serves, and its counts would
//! only be noise in a verdict. Envoy opens LRS alongside ADS, so teal
//! gives the node [`XDS_GRACE`] to show up before refusing.
//!
//! teal answers with the fleet clusters of the services the node's group
//! routes to (`LoadTargets`) and the report interval
//! (`--load-report-interval`), and answers again whenever a config
//! changes that list. Each later message is one report: per cluster, the
//! requests that succeeded, failed and were issued since the last one,
//! and those in progress now; the [`LoadStore`](super::load::LoadStore)
//! keeps them.
//!
//! Reports are hostile until checked: a message over
//! `--max-load-report-bytes` ends the stream with `RESOURCE_EXHAUSTED`; a
//! report naming more than `--max-load-report-clusters` clusters, or one
//! past `--max-load-reports-per-second`, is dropped; clusters the group
//! was not asked for are ignored; counts past
//! [`MAX_REQUESTS_PER_REPORT`](super::load::MAX_REQUESTS_PER_REPORT) are
//! cut. Each is logged once per stream, never more, so a flood cannot
//! flood the log. The stream's counts go when it ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::load_stats::v3::LoadStatsResponse;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{Body, BoxFuture, Context, Poll, Service, StdError};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic::{Request, Response, Status, Streaming};

use crate::shutdown::Shutdown;
use crate::text::untrusted;
use crate::transport::identity::{IdentityGate, PeerIdentity};
use crate::transport::tls::ConnInfo;

use super::gate::{admits, lost_serving, next_policy, not_serving, not_serving_now, refused};
use super::limits::{Limit, OverLimit};
use super::load::{ClusterReport, LoadStreamId};
use super::lrs_codec::{LoadReport, LrsCodec, Stats};
use super::protocol::{NodeInfo, ProtocolError};
use super::status::{ProxyRegistry, XdsPresence};

/// How load reports are asked for and bounded. Each field has a `teal
/// serve` flag and, for the bounds, a row in the "Limits" table
/// (docs/limits.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadReportConfig {
    /// How often proxies are asked to report (`--load-report-interval`,
    /// 100 ms to 60 s). Default 1 s: a verdict over a 10 s window sees
    /// ten reports from every proxy, and a drain is confirmed within two
    /// seconds of the last request ending.
    pub interval: Duration,
    /// Largest load report message, in bytes. Default 4 MiB, the xDS
    /// port's largest request: a report carries about a hundred bytes per
    /// cluster and zone, so a group routed to 10,000 fleet clusters in
    /// three zones stays under it.
    pub max_report_bytes: usize,
    /// Most clusters one report may name; a report naming more is
    /// dropped whole. Default 10,000: teal asks a proxy for two or three
    /// clusters per service its group routes to, so a real report names
    /// a few thousand at most.
    pub max_report_clusters: usize,
    /// Most reports one stream may send per second; the rest are
    /// dropped. Default 20: twice what Envoy sends at the shortest
    /// interval teal asks for (100 ms), so only a client that ignores the
    /// interval meets it.
    pub max_reports_per_sec: u32,
}

impl Default for LoadReportConfig {
    fn default() -> Self {
        LoadReportConfig {
            interval: super::load::DEFAULT_REPORT_INTERVAL,
            max_report_bytes: 4 * 1024 * 1024,
            max_report_clusters: 10_000,
            max_reports_per_sec: super::load::DEFAULT_MAX_REPORTS_PER_SEC,
        }
    }
}

/// How long a load stream waits for its node's xDS stream before it is
/// refused: Envoy opens both at once, over one connection, and either may
/// reach teal first. A stream refused anyway is retried by Envoy 5 s
/// later.
pub(crate) const XDS_GRACE: Duration = Duration::from_secs(2);

/// How often a waiting load stream looks for its node's xDS stream.
const XDS_POLL: Duration = Duration::from_millis(100);

/// Why a load stream is refused or closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum LrsError {
    /// The first message had no node, or one without an id or a group.
    #[error("the first load report must carry a node with an id and a group (node.cluster)")]
    MissingNode,
    /// A later message named another node.
    #[error("node id changed mid-stream from {} to {}", untrusted(.from), untrusted(.to))]
    NodeChanged {
        /// The node the stream started with.
        from: String,
        /// The one a later message named.
        to: String,
    },
    /// A node field or the message was over a limit.
    #[error(transparent)]
    OverLimit(#[from] OverLimit),
    /// The node has no xDS stream on this replica.
    #[error(
        "node {} has no xDS stream on this teal replica: teal takes load reports \
         only from proxies it serves, over their xDS connection",
        untrusted(.node)
    )]
    NoXdsStream {
        /// The node.
        node: String,
    },
    /// The node's xDS stream is in another group than its load stream
    /// claims.
    #[error(
        "node {} joined group {} over xDS, not {}",
        untrusted(.node),
        untrusted(.xds),
        untrusted(.claimed)
    )]
    OtherGroup {
        /// The node.
        node: String,
        /// The group of its xDS stream.
        xds: String,
        /// The group its load stream claims.
        claimed: String,
    },
    /// The node's xDS stream proved another identity than this
    /// connection.
    #[error(
        "node {} connected for xDS as {}, not as {}",
        untrusted(.node),
        untrusted(.xds),
        untrusted(.identity)
    )]
    OtherIdentity {
        /// The node.
        node: String,
        /// The identity of its xDS stream.
        xds: String,
        /// This connection's.
        identity: String,
    },
    /// A newer load stream of the same node took over.
    #[error("a newer load report stream of node {} replaced this one", untrusted(.node))]
    Replaced {
        /// The node.
        node: String,
    },
}

impl From<LrsError> for Status {
    fn from(e: LrsError) -> Status {
        let message = e.to_string();
        match e {
            LrsError::MissingNode | LrsError::NodeChanged { .. } => {
                Status::invalid_argument(message)
            }
            LrsError::OverLimit(_) => Status::resource_exhausted(message),
            LrsError::NoXdsStream { .. } | LrsError::OtherGroup { .. } => {
                Status::failed_precondition(message)
            }
            LrsError::OtherIdentity { .. } => Status::permission_denied(message),
            LrsError::Replaced { .. } => Status::aborted(message),
        }
    }
}

/// What one message of a load stream asks teal to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Incoming {
    /// Nothing to count: a first message naming no cluster (Envoy's).
    Hello,
    /// A report to take; `cut` if a count in it was past the bound.
    Report {
        clusters: Vec<ClusterReport>,
        cut: bool,
    },
    /// A report naming more clusters than a report may (counted on the
    /// wire, not decoded): dropped whole.
    TooManyClusters(usize),
}

/// Something logged at most once per stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Notice {
    /// A report named clusters its group was not asked for.
    Ignored,
    /// A report had counts past the bound.
    Cut,
    /// A report came faster than the rate.
    Dropped,
    /// A report named too many clusters.
    TooManyClusters,
}

/// One load stream's protocol: which node it reports for, what each
/// message asks, and what was logged already. Pure: a message in, what
/// to do out; the pump does the I/O.
#[derive(Debug)]
pub(crate) struct LoadStream {
    node: Option<NodeInfo>,
    max_node_field_bytes: usize,
    /// Per [`Notice`], whether it was logged.
    logged: [bool; 4],
}

impl LoadStream {
    pub(crate) fn new(max_node_field_bytes: usize) -> LoadStream {
        LoadStream {
            node: None,
            max_node_field_bytes,
            logged: [false; 4],
        }
    }

    /// The node, once the first message named it.
    pub(crate) fn node(&self) -> Option<&NodeInfo> {
        self.node.as_ref()
    }

    /// Reads one message: the node of the first, and the report.
    pub(crate) fn on_request(&mut self, req: &LoadReport) -> Result<Incoming, LrsError> {
        let first = self.node.is_none();
        match (&self.node, &req.node) {
            (None, Some(n)) => {
                let node =
                    NodeInfo::from_node(n, self.max_node_field_bytes).map_err(|e| match e {
                        ProtocolError::OverLimit(o) => LrsError::OverLimit(o),
                        _ => LrsError::MissingNode,
                    })?;
                if node.cluster.is_empty() {
                    return Err(LrsError::MissingNode);
                }
                self.node = Some(node);
            }
            (None, None) => return Err(LrsError::MissingNode),
            (Some(known), Some(n)) if !n.id.is_empty() && n.id != known.id => {
                OverLimit::check(
                    Limit::NodeFieldBytes,
                    || "node.id".to_owned(),
                    n.id.len(),
                    self.max_node_field_bytes,
                )?;
                return Err(LrsError::NodeChanged {
                    from: known.id.clone(),
                    to: n.id.clone(),
                });
            }
            (Some(_), _) => {}
        }
        match &req.stats {
            Stats::TooMany(n) => Ok(Incoming::TooManyClusters(*n)),
            // Envoy's first message only names the node: it is not a
            // report (teal has not asked for anything yet), so it says
            // nothing of what is in progress.
            Stats::Clusters { clusters, .. } if first && clusters.is_empty() => Ok(Incoming::Hello),
            Stats::Clusters { clusters, cut } => Ok(Incoming::Report {
                clusters: clusters.clone(),
                cut: *cut,
            }),
        }
    }

    /// True the first time `notice` is asked about on this stream.
    pub(crate) fn first(&mut self, notice: Notice) -> bool {
        let slot = &mut self.logged[notice as usize];
        !std::mem::replace(slot, true)
    }
}

/// Whether a load stream of `node`, on a connection of `identity`, stands
/// for one of the xDS streams `xds` the node has connected here.
pub(crate) fn check_presence(
    node: &NodeInfo,
    identity: &PeerIdentity,
    xds: &[XdsPresence],
) -> Result<(), LrsError> {
    let Some(first) = xds.first() else {
        return Err(LrsError::NoXdsStream {
            node: node.id.clone(),
        });
    };
    let in_group: Vec<&XdsPresence> = xds.iter().filter(|p| p.group == node.cluster).collect();
    if in_group.is_empty() {
        return Err(LrsError::OtherGroup {
            node: node.id.clone(),
            xds: first.group.clone(),
            claimed: node.cluster.clone(),
        });
    }
    if in_group
        .iter()
        .any(|p| !p.identity.is_authenticated() || p.identity == *identity)
    {
        return Ok(());
    }
    Err(LrsError::OtherIdentity {
        node: node.id.clone(),
        xds: in_group[0].identity.to_string(),
        identity: identity.to_string(),
    })
}

/// The load reporting service: clones share the registry and limits.
#[derive(Clone, Debug)]
pub(crate) struct LoadReporting {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    registry: Arc<ProxyRegistry>,
    identities: Arc<IdentityGate>,
    serving: Option<watch::Receiver<bool>>,
    shutdown: Shutdown,
    config: LoadReportConfig,
    max_node_field_bytes: usize,
}

impl LoadReporting {
    /// A service keeping reports in `registry`'s load store.
    pub(crate) fn new(
        registry: Arc<ProxyRegistry>,
        identities: Arc<IdentityGate>,
        serving: Option<watch::Receiver<bool>>,
        shutdown: Shutdown,
        config: LoadReportConfig,
        max_node_field_bytes: usize,
    ) -> LoadReporting {
        LoadReporting {
            shared: Arc::new(Shared {
                registry,
                identities,
                serving,
                shutdown,
                config,
                max_node_field_bytes,
            }),
        }
    }

    /// The service to mount on a tonic server.
    pub(crate) fn into_server(self) -> LrsServer {
        LrsServer { reporting: self }
    }
}

/// Responses queued per stream: teal sends one per config change, and
/// waits for a slow reader rather than piling them up.
const STREAM_QUEUE: usize = 2;

/// The service, routed by hand (as the discovery services are) so that it
/// decodes with [`LrsCodec`] rather than prost's whole messages.
#[derive(Clone, Debug)]
pub(crate) struct LrsServer {
    reporting: LoadReporting,
}

const SERVICE: &str = "envoy.service.load_stats.v3.LoadReportingService";
const STREAM_LOAD_STATS: &str = "/envoy.service.load_stats.v3.LoadReportingService/StreamLoadStats";

impl NamedService for LrsServer {
    const NAME: &'static str = SERVICE;
}

impl<B> Service<http::Request<B>> for LrsServer
where
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
        let shared = self.reporting.shared.clone();
        if req.uri().path() != STREAM_LOAD_STATS {
            return Box::pin(
                async move { Ok(Status::unimplemented("no such method").into_http()) },
            );
        }
        Box::pin(async move {
            let codec = LrsCodec {
                max_clusters: shared.config.max_report_clusters,
            };
            let mut grpc = Grpc::new(codec)
                .apply_max_message_size_config(Some(shared.config.max_report_bytes), None);
            Ok(grpc.streaming(StreamLoadStats { shared }, req).await)
        })
    }
}

/// The one method: `StreamLoadStats`.
struct StreamLoadStats {
    shared: Arc<Shared>,
}

impl StreamingService<LoadReport> for StreamLoadStats {
    type Response = LoadStatsResponse;
    type ResponseStream = ReceiverStream<Result<LoadStatsResponse, Status>>;
    type Future = BoxFuture<Response<Self::ResponseStream>, Status>;

    fn call(&mut self, request: Request<Streaming<LoadReport>>) -> Self::Future {
        let identity = request
            .extensions()
            .get::<ConnInfo>()
            .map(ConnInfo::identity)
            .unwrap_or(PeerIdentity::Unauthenticated);
        let shared = self.shared.clone();
        Box::pin(async move {
            let (tx, rx) = mpsc::channel(STREAM_QUEUE);
            tokio::spawn(run(shared, identity, request.into_inner(), tx));
            Ok(Response::new(ReceiverStream::new(rx)))
        })
    }
}

/// A load stream's place in the store; its counts go when it drops,
/// however the stream ends.
struct Admitted {
    registry: Arc<ProxyRegistry>,
    id: LoadStreamId,
    node: NodeInfo,
    /// The clusters last asked for.
    asked: Vec<String>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.registry.loads().close(&self.id);
        tracing::debug!(node = %untrusted(&self.node.id), "load report stream ended");
    }
}

/// Runs one load stream until the client leaves, breaks a rule, or teal
/// shuts down.
async fn run(
    shared: Arc<Shared>,
    identity: PeerIdentity,
    mut requests: Streaming<LoadReport>,
    tx: mpsc::Sender<Result<LoadStatsResponse, Status>>,
) {
    let mut serving = shared.serving.clone();
    if not_serving_now(&mut serving) {
        let _ = tx.send(Err(not_serving())).await;
        return;
    }
    let mut machine = LoadStream::new(shared.max_node_field_bytes);
    let mut policies = shared.identities.watch();
    let mut targets = shared.registry.loads().watch_targets();
    let mut shutdown = shared.shutdown.clone();
    let stopping = shutdown.wait();
    tokio::pin!(stopping);
    let lost = lost_serving(&mut serving);
    tokio::pin!(lost);
    let mut admitted: Option<Admitted> = None;
    loop {
        let req = tokio::select! {
            () = &mut stopping => {
                let _ = tx.send(Err(Status::unavailable("teal is shutting down"))).await;
                return;
            }
            () = &mut lost => {
                let _ = tx.send(Err(not_serving())).await;
                return;
            }
            message = requests.message() => match message {
                Ok(Some(req)) => req,
                Ok(None) => return,
                Err(status) => {
                    let status = request_error(status, shared.config.max_report_bytes);
                    tracing::warn!(
                        node = %untrusted(admitted.as_ref().map_or("", |a| a.node.id.as_str())),
                        code = ?status.code(),
                        message = status.message(),
                        "closing load report stream: bad message"
                    );
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            },
            () = next_policy(&mut policies), if admitted.is_some() => {
                if let Some(a) = &admitted
                    && !admits(&shared.identities, &a.node, &identity)
                {
                    tracing::warn!(
                        node = %untrusted(&a.node.id),
                        group = %untrusted(&a.node.cluster),
                        identity = %untrusted(&identity.to_string()),
                        "load report stream closed: the reloaded config no longer lets its identity join its group"
                    );
                    let _ = tx.send(Err(refused(&a.node, &identity))).await;
                    return;
                }
                continue;
            }
            changed = targets.changed(), if admitted.is_some() => {
                if changed.is_err() {
                    // The store outlives every stream; if it went, so did teal.
                    return;
                }
                if let Some(a) = &mut admitted {
                    let asked = targets.borrow_and_update().clusters_of(&a.node.cluster);
                    if asked != a.asked {
                        a.asked = asked.clone();
                        if tx.send(Ok(answer(&shared, asked))).await.is_err() {
                            return;
                        }
                    }
                }
                continue;
            }
        };
        let incoming = match machine.on_request(&req) {
            Ok(i) => i,
            Err(e) => {
                tracing::warn!(error = %e, "closing load report stream: protocol error");
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        if admitted.is_none() {
            let Some(node) = machine.node().cloned() else {
                continue;
            };
            match admit(&shared, &node, &identity).await {
                Ok(()) => {}
                Err(status) => {
                    tracing::warn!(
                        node = %untrusted(&node.id),
                        group = %untrusted(&node.cluster),
                        identity = %untrusted(&identity.to_string()),
                        reason = status.message(),
                        "load report stream refused"
                    );
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            }
            let store = shared.registry.loads();
            let asked = targets.borrow_and_update().clusters_of(&node.cluster);
            let id = store.open(&node.id, &node.cluster);
            tracing::info!(
                node = %untrusted(&node.id),
                group = %untrusted(&node.cluster),
                clusters = asked.len(),
                interval = ?store.interval(),
                "load reports asked for"
            );
            admitted = Some(Admitted {
                registry: shared.registry.clone(),
                id,
                node,
                asked: asked.clone(),
            });
            if tx.send(Ok(answer(&shared, asked))).await.is_err() {
                return;
            }
        }
        let Some(a) = &admitted else { continue };
        if let Err(e) = take(&shared, &mut machine, a, &identity, incoming) {
            tracing::warn!(node = %untrusted(&a.node.id), error = %e, "closing load report stream");
            let _ = tx.send(Err(e.into())).await;
            return;
        }
    }
}

/// Admits a load stream of `node`: its identity may join its group, and
/// the node's xDS stream is here (waiting up to [`XDS_GRACE`] for it).
async fn admit(shared: &Shared, node: &NodeInfo, identity: &PeerIdentity) -> Result<(), Status> {
    if !admits(&shared.identities, node, identity) {
        return Err(refused(node, identity));
    }
    let deadline = tokio::time::Instant::now() + XDS_GRACE;
    loop {
        let present = check_presence(node, identity, &shared.registry.connected_here(&node.id));
        match present {
            Ok(()) => return Ok(()),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(XDS_POLL).await,
        }
    }
}

/// Takes one message of an admitted stream into the store; an error ends
/// the stream.
fn take(
    shared: &Shared,
    machine: &mut LoadStream,
    a: &Admitted,
    identity: &PeerIdentity,
    incoming: Incoming,
) -> Result<(), LrsError> {
    let node = untrusted(&a.node.id);
    let (clusters, cut) = match incoming {
        Incoming::Hello => return Ok(()),
        Incoming::TooManyClusters(n) => {
            if machine.first(Notice::TooManyClusters) {
                let limit = Limit::LoadReportClusters;
                tracing::warn!(
                    %node,
                    clusters = n,
                    max = shared.config.max_report_clusters,
                    flag = limit.flag(),
                    "load report dropped: over the {limit} (logged once per stream)"
                );
            }
            return Ok(());
        }
        Incoming::Report { clusters, cut } => (clusters, cut),
    };
    // The node's xDS stream may have gone since the stream was admitted:
    // a proxy teal no longer serves has no say.
    check_presence(
        &a.node,
        identity,
        &shared.registry.connected_here(&a.node.id),
    )?;
    let taken = shared
        .registry
        .loads()
        .report(&a.id, &clusters, Instant::now());
    if taken.stale {
        return Err(LrsError::Replaced {
            node: a.node.id.clone(),
        });
    }
    if taken.dropped && machine.first(Notice::Dropped) {
        tracing::warn!(
            %node,
            max = shared.config.max_reports_per_sec,
            flag = "--max-load-reports-per-second",
            "load reports dropped: more per second than a stream may send (logged once per stream)"
        );
    }
    if !taken.ignored.is_empty() && machine.first(Notice::Ignored) {
        let names: Vec<String> = taken
            .ignored
            .iter()
            .take(5)
            .map(|c| untrusted(c).max_chars(128).to_string())
            .collect();
        tracing::warn!(
            %node,
            group = %untrusted(&a.node.cluster),
            ignored = taken.ignored.len(),
            clusters = ?names,
            "load report names clusters teal did not ask this group for: ignored (logged once per stream)"
        );
    }
    if cut && machine.first(Notice::Cut) {
        tracing::warn!(
            %node,
            max = super::load::MAX_REQUESTS_PER_REPORT,
            "load report counts past any real traffic: cut (logged once per stream)"
        );
    }
    Ok(())
}

/// What teal asks a proxy of: `clusters`, every interval.
fn answer(shared: &Shared, clusters: Vec<String>) -> LoadStatsResponse {
    let interval = shared.registry.loads().interval();
    LoadStatsResponse {
        clusters,
        send_all_clusters: false,
        load_reporting_interval: Some(envoy_types::pb::google::protobuf::Duration {
            seconds: i64::try_from(interval.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(interval.subsec_nanos()).unwrap_or(0),
        }),
        report_endpoint_granularity: false,
    }
}

/// The status a stream is closed with when reading a message failed:
/// tonic refuses one over the size limit with `OUT_OF_RANGE`, teal's
/// convention for every limit is `RESOURCE_EXHAUSTED` naming it.
fn request_error(status: Status, max: usize) -> Status {
    if status.code() != tonic::Code::OutOfRange {
        return status;
    }
    let limit = Limit::LoadReportBytes;
    Status::resource_exhausted(format!(
        "a load report is over the {limit} of {max} bytes ({flag}): {detail}",
        flag = limit.flag(),
        detail = status.message(),
    ))
}

#[cfg(test)]
#[path = "lrs_tests.rs"]
mod tests;
