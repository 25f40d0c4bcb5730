use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterStats, UpstreamLocalityStats};
use envoy_types::pb::envoy::service::load_stats::v3::LoadStatsRequest;
use envoy_types::pb::google::protobuf::{Duration, Struct};
use proptest::prelude::*;

use super::*;

fn locality(success: u64, errors: u64, issued: u64, in_progress: u64) -> UpstreamLocalityStats {
    UpstreamLocalityStats {
        locality: Some(Locality {
            zone: "z1".into(),
            ..Default::default()
        }),
        total_successful_requests: success,
        total_error_requests: errors,
        total_issued_requests: issued,
        total_requests_in_progress: in_progress,
        total_active_connections: 9,
        ..Default::default()
    }
}

fn request(clusters: Vec<ClusterStats>) -> Vec<u8> {
    LoadStatsRequest {
        node: Some(Node {
            id: "edge-1".into(),
            cluster: "edge".into(),
            user_agent_name: "envoy".into(),
            metadata: Some(Struct::default()),
            ..Default::default()
        }),
        cluster_stats: clusters,
    }
    .encode_to_vec()
}

proptest! {
    /// Summing on the wire gives what decoding the whole message and
    /// summing it does, cuts included.
    #[test]
    fn wire_sums_are_the_decoded_sums(
        counts in prop::collection::vec(
            prop::collection::vec((any::<u64>(), 0..1000u64, any::<u64>(), 0..50u64), 0..4),
            0..5,
        )
    ) {
        let clusters: Vec<ClusterStats> = counts
            .iter()
            .enumerate()
            .map(|(i, ls)| ClusterStats {
                cluster_name: format!("c{i}"),
                upstream_locality_stats: ls.iter().map(|(s, e, n, p)| locality(*s, *e, *n, *p)).collect(),
                load_report_interval: Some(Duration { seconds: 1, nanos: 0 }),
                ..Default::default()
            })
            .collect();
        let got = decode(&request(clusters.clone()), 10).expect("decodes");
        let Stats::Clusters { clusters: got, cut } = got.stats else {
            panic!("kept");
        };
        let want: Vec<(ClusterReport, bool)> = clusters.iter().map(ClusterReport::of).collect();
        prop_assert_eq!(got, want.iter().map(|w| w.0.clone()).collect::<Vec<_>>());
        prop_assert_eq!(cut, want.iter().any(|w| w.1));
    }
}

#[test]
fn the_node_is_read_lean() {
    let r = decode(&request(vec![]), 10).expect("decodes");
    let node = r.node.expect("a node");
    assert_eq!(
        (node.id.as_str(), node.cluster.as_str()),
        ("edge-1", "edge")
    );
    assert_eq!(node.metadata, None, "metadata is skipped, not kept");
    assert_eq!(
        r.stats,
        Stats::Clusters {
            clusters: vec![],
            cut: false
        }
    );
}

#[test]
fn a_report_naming_too_many_clusters_keeps_none_but_the_node() {
    // 100,000 empty clusters: two bytes each on the wire.
    let many = vec![ClusterStats::default(); 100_000];
    let r = decode(&request(many), 10_000).expect("decodes");
    assert_eq!(r.stats, Stats::TooMany(100_000));
    assert!(r.node.is_some());
}

#[test]
fn localities_are_summed_not_kept() {
    // 200,000 empty localities in one cluster decode into one report.
    let stats = ClusterStats {
        cluster_name: "web-blue".into(),
        upstream_locality_stats: vec![UpstreamLocalityStats::default(); 200_000],
        ..Default::default()
    };
    let r = decode(&request(vec![stats]), 1).expect("decodes");
    let Stats::Clusters { clusters, .. } = r.stats else {
        panic!("kept");
    };
    assert_eq!(clusters.len(), 1);
    assert_eq!(clusters[0].cluster, "web-blue");
    assert_eq!(clusters[0].completed(), 0);
}

#[test]
fn malformed_reports_are_refused() {
    let mut msg = request(vec![ClusterStats {
        cluster_name: "web-blue".into(),
        ..Default::default()
    }]);
    msg.truncate(msg.len() - 3);
    assert!(decode(&msg, 10).is_err(), "truncated");
    // Field 2 (cluster_stats) holding field 1 (cluster_name) of bytes
    // that are not UTF-8.
    let bad_name = [0x12, 0x03, 0x0a, 0x01, 0xff];
    assert!(matches!(
        decode(&bad_name, 10),
        Err(ReportError::ClusterName)
    ));
    // A node that is not a message.
    assert!(matches!(
        decode(&[0x0a, 0x02, 0xff, 0xff], 10),
        Err(ReportError::Node(_)) | Err(ReportError::Wire(_))
    ));
}
