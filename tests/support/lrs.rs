//! A load-report (LRS) client standing in for a proxy: it opens
//! `StreamLoadStats` on teal's xDS port, names its node, and sends the
//! reports a test makes with [`stats`].

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterStats, UpstreamLocalityStats};
use envoy_types::pb::envoy::service::load_stats::v3::load_reporting_service_client::LoadReportingServiceClient;
use envoy_types::pb::envoy::service::load_stats::v3::{LoadStatsRequest, LoadStatsResponse};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use super::CONVERGE;

/// A load stream that sent its first message, and teal's first answer.
pub struct Lrs {
    pub tx: mpsc::Sender<LoadStatsRequest>,
    pub rx: tonic::Streaming<LoadStatsResponse>,
}

impl Lrs {
    /// Opens a load stream on `channel` whose first message is `first`:
    /// the stream, and teal's first answer or why it refused.
    pub async fn open(
        channel: Channel,
        first: LoadStatsRequest,
    ) -> (Lrs, Result<LoadStatsResponse, tonic::Status>) {
        let (tx, rx) = mpsc::channel(64);
        tx.send(first).await.expect("queue");
        let mut rx = LoadReportingServiceClient::new(channel)
            .stream_load_stats(ReceiverStream::new(rx))
            .await
            .expect("open the load stream")
            .into_inner();
        let answer = tokio::time::timeout(CONVERGE, rx.message())
            .await
            .expect("an answer in time")
            .and_then(|m| m.ok_or_else(|| tonic::Status::unknown("the stream ended")));
        (Lrs { tx, rx }, answer)
    }

    /// Opens a load stream of node `id` in `group` on teal's xDS port on
    /// 127.0.0.1, and waits for teal to admit it.
    ///
    /// # Panics
    ///
    /// If teal refuses it.
    pub async fn admitted(port: u16, id: &str, group: &str) -> Lrs {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect to the xDS port");
        let (lrs, answer) = Lrs::open(channel, hello(id, group)).await;
        answer.unwrap_or_else(|e| panic!("the load stream of {id} was refused: {e}"));
        lrs
    }

    /// Sends one report.
    pub async fn report(&self, clusters: Vec<ClusterStats>) {
        self.tx
            .send(LoadStatsRequest {
                node: None,
                cluster_stats: clusters,
            })
            .await
            .expect("the load stream is open");
    }
}

/// The first message of node `id` in `group`: its node, no stats.
pub fn hello(id: &str, group: &str) -> LoadStatsRequest {
    LoadStatsRequest {
        node: Some(Node {
            id: id.into(),
            cluster: group.into(),
            ..Default::default()
        }),
        cluster_stats: vec![],
    }
}

/// One cluster's stats in one locality, as Envoy reports them: the
/// requests that succeeded and failed since the last report, and those in
/// progress now.
pub fn stats(cluster: &str, success: u64, errors: u64, in_progress: u64) -> ClusterStats {
    ClusterStats {
        cluster_name: cluster.into(),
        upstream_locality_stats: vec![UpstreamLocalityStats {
            total_successful_requests: success,
            total_error_requests: errors,
            total_issued_requests: success.saturating_add(errors),
            total_requests_in_progress: in_progress,
            ..Default::default()
        }],
        ..Default::default()
    }
}
