//! The gRPC codec of load report streams: reports are summed on the wire.
//!
//! A report is bounded in bytes (`--max-load-report-bytes`), but what
//! prost would decode it into is not: an empty `UpstreamLocalityStats` is
//! two bytes on the wire and about 150 in memory, so a 4 MiB report of
//! them would cost some 300 MiB before teal looked at it, and that before
//! the stream is admitted. teal needs of a cluster only the sums over its
//! localities, so the decoder walks the message on the wire and keeps, per
//! cluster, its name and four sums ([`ClusterReport`]), of at most
//! `--max-load-report-clusters` clusters: a report naming more is counted,
//! not kept. The node is decoded lean (only the fields teal reads, as on
//! the discovery streams). What a report costs is then its size and a few
//! dozen bytes per cluster kept.

use std::borrow::Cow;

use bytes::Buf;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::load_stats::v3::LoadStatsResponse;
use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::codec::{Fields, Wire, WireError, lean};
use super::load::ClusterReport;

/// One message of a load stream, as teal reads it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LoadReport {
    /// `node`: sent in the first message (Envoy 1.40 sends it in every
    /// one, 61 kB of it; only the fields `lean::Node` has are read).
    pub(crate) node: Option<Node>,
    pub(crate) stats: Stats,
}

/// What a report says of its clusters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Stats {
    /// Each cluster summed over its localities; `cut` if a count was past
    /// [`MAX_REQUESTS_PER_REPORT`](super::load::MAX_REQUESTS_PER_REPORT).
    Clusters {
        clusters: Vec<ClusterReport>,
        cut: bool,
    },
    /// More clusters than a report may name: how many (none kept).
    TooMany(usize),
}

/// Field numbers of `envoy.service.load_stats.v3.LoadStatsRequest`,
/// `envoy.config.endpoint.v3.ClusterStats` and `UpstreamLocalityStats`.
mod field {
    pub(super) const NODE: u32 = 1;
    pub(super) const CLUSTER_STATS: u32 = 2;
    pub(super) const CLUSTER_NAME: u32 = 1;
    pub(super) const LOCALITY_STATS: u32 = 2;
    pub(super) const SUCCESSFUL: u32 = 2;
    pub(super) const IN_PROGRESS: u32 = 3;
    pub(super) const ERRORS: u32 = 4;
    pub(super) const ISSUED: u32 = 8;
}

/// Why a message is not a load report.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReportError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("node: {0}")]
    Node(#[from] prost::DecodeError),
    #[error("a cluster name is not UTF-8")]
    ClusterName,
}

/// Reads `msg`, keeping at most `max_clusters` clusters.
pub(crate) fn decode(msg: &[u8], max_clusters: usize) -> Result<LoadReport, ReportError> {
    let mut node = None;
    let mut count = 0usize;
    for f in Fields(msg) {
        match f? {
            (field::NODE, Wire::Bytes(b)) => node = Some(Node::from(lean::Node::decode(b)?)),
            (field::CLUSTER_STATS, Wire::Bytes(_)) => count += 1,
            _ => {}
        }
    }
    if count > max_clusters {
        return Ok(LoadReport {
            node,
            stats: Stats::TooMany(count),
        });
    }
    let mut clusters = Vec::with_capacity(count);
    let mut cut = false;
    for f in Fields(msg) {
        if let (field::CLUSTER_STATS, Wire::Bytes(b)) = f? {
            let (report, c) = cluster(b)?.bounded();
            cut |= c;
            clusters.push(report);
        }
    }
    Ok(LoadReport {
        node,
        stats: Stats::Clusters { clusters, cut },
    })
}

/// One `ClusterStats`, its localities summed.
fn cluster(msg: &[u8]) -> Result<ClusterReport, ReportError> {
    let mut r = ClusterReport::default();
    for f in Fields(msg) {
        match f? {
            (field::CLUSTER_NAME, Wire::Bytes(b)) => {
                r.cluster = std::str::from_utf8(b)
                    .map_err(|_| ReportError::ClusterName)?
                    .to_owned();
            }
            (field::LOCALITY_STATS, Wire::Bytes(b)) => {
                for f in Fields(b) {
                    let (number, Wire::Varint(v)) = f? else {
                        continue;
                    };
                    let sum = match number {
                        field::SUCCESSFUL => &mut r.success,
                        field::ERRORS => &mut r.errors,
                        field::ISSUED => &mut r.issued,
                        field::IN_PROGRESS => &mut r.in_progress,
                        _ => continue,
                    };
                    *sum = sum.saturating_add(v);
                }
            }
            _ => {}
        }
    }
    Ok(r)
}

/// Reads load reports (see the module docs) and writes responses.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LrsCodec {
    pub(crate) max_clusters: usize,
}

/// Load streams carry small messages: tonic's 8 KiB buffers would be most
/// of an idle stream's memory.
fn buffer_settings() -> BufferSettings {
    BufferSettings::new(1024, 32 * 1024)
}

impl Codec for LrsCodec {
    type Encode = LoadStatsResponse;
    type Decode = LoadReport;
    type Encoder = ResponseEncoder;
    type Decoder = ReportDecoder;

    fn encoder(&mut self) -> ResponseEncoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> ReportDecoder {
        ReportDecoder {
            max_clusters: self.max_clusters,
        }
    }
}

#[derive(Debug)]
pub(crate) struct ResponseEncoder;

impl Encoder for ResponseEncoder {
    type Item = LoadStatsResponse;
    type Error = Status;

    fn encode(&mut self, item: LoadStatsResponse, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding a load stats response: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

#[derive(Debug)]
pub(crate) struct ReportDecoder {
    max_clusters: usize,
}

impl Decoder for ReportDecoder {
    type Item = LoadReport;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<LoadReport>, Status> {
        let len = src.remaining();
        // tonic hands the decoder one whole message in one contiguous
        // buffer; copying is only the fallback should that ever change.
        let whole: Cow<'_, [u8]> = if src.chunk().len() == len {
            Cow::Borrowed(src.chunk())
        } else {
            Cow::Owned(src.copy_to_bytes(len).to_vec())
        };
        let decoded = decode(&whole, self.max_clusters)
            .map_err(|e| Status::invalid_argument(format!("malformed load report: {e}")));
        drop(whole);
        if src.remaining() > 0 {
            src.advance(src.remaining());
        }
        decoded.map(Some)
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

#[cfg(test)]
#[path = "lrs_codec_tests.rs"]
mod tests;
