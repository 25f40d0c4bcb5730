use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterStats, UpstreamLocalityStats};
use envoy_types::pb::envoy::service::load_stats::v3::LoadStatsRequest;
use prost::Message;

use super::*;
use crate::xds::fixtures::node;
use crate::xds::load::MAX_REQUESTS_PER_REPORT;

fn stats(cluster: &str, success: u64, errors: u64, in_progress: u64) -> ClusterStats {
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

/// A report as a stream reads it: encoded, then decoded on the wire with
/// at most 3 clusters kept.
fn req(node: Option<Node>, clusters: Vec<ClusterStats>) -> LoadReport {
    let msg = LoadStatsRequest {
        node,
        cluster_stats: clusters,
    };
    crate::xds::lrs_codec::decode(&msg.encode_to_vec(), 3).expect("a load report")
}

fn stream() -> LoadStream {
    LoadStream::new(64)
}

#[test]
fn the_first_message_must_name_a_node_with_an_id_and_a_group() {
    assert_eq!(
        stream().on_request(&req(None, vec![])),
        Err(LrsError::MissingNode)
    );
    let groupless = Node {
        cluster: String::new(),
        ..node()
    };
    assert_eq!(
        stream().on_request(&req(Some(groupless), vec![])),
        Err(LrsError::MissingNode)
    );
    let long = Node {
        id: "x".repeat(65),
        ..node()
    };
    let e = stream()
        .on_request(&req(Some(long), vec![]))
        .expect_err("over the node field limit");
    assert!(matches!(e, LrsError::OverLimit(_)), "{e:?}");
    assert_eq!(Status::from(e).code(), tonic::Code::ResourceExhausted);
}

#[test]
fn envoys_first_message_is_no_report_and_later_ones_may_omit_the_node() {
    let mut s = stream();
    assert_eq!(
        s.on_request(&req(Some(node()), vec![])),
        Ok(Incoming::Hello)
    );
    assert_eq!(s.node().map(|n| n.id.as_str()), Some("proxy-1"));
    // A later empty report is a report: nothing was in progress.
    assert_eq!(
        s.on_request(&req(None, vec![])),
        Ok(Incoming::Report {
            clusters: vec![],
            cut: false
        })
    );
    let Ok(Incoming::Report { clusters, cut }) =
        s.on_request(&req(Some(node()), vec![stats("api-blue", 7, 2, 1)]))
    else {
        panic!("a report");
    };
    assert!(!cut);
    assert_eq!(clusters.len(), 1);
    assert_eq!((clusters[0].success, clusters[0].errors), (7, 2));
    assert_eq!(clusters[0].in_progress, 1);
}

#[test]
fn a_first_message_with_counts_is_a_report() {
    let got = stream().on_request(&req(Some(node()), vec![stats("api-blue", 1, 0, 0)]));
    assert!(matches!(got, Ok(Incoming::Report { .. })), "{got:?}");
}

#[test]
fn another_node_mid_stream_ends_it() {
    let mut s = stream();
    s.on_request(&req(Some(node()), vec![])).expect("hello");
    let other = Node {
        id: "proxy-2".into(),
        ..node()
    };
    let e = s
        .on_request(&req(Some(other), vec![]))
        .expect_err("changed");
    assert!(matches!(e, LrsError::NodeChanged { .. }), "{e:?}");
    assert_eq!(Status::from(e).code(), tonic::Code::InvalidArgument);
}

#[test]
fn too_many_clusters_drop_the_report_and_absurd_counts_are_cut() {
    let mut s = stream();
    s.on_request(&req(Some(node()), vec![])).expect("hello");
    let four: Vec<ClusterStats> = (0..4).map(|i| stats(&format!("c{i}"), 1, 0, 0)).collect();
    assert_eq!(
        s.on_request(&req(None, four)),
        Ok(Incoming::TooManyClusters(4))
    );
    let Ok(Incoming::Report { clusters, cut }) =
        s.on_request(&req(None, vec![stats("c", u64::MAX, 1, u64::MAX)]))
    else {
        panic!("a report");
    };
    assert!(cut);
    assert_eq!(clusters[0].success, MAX_REQUESTS_PER_REPORT);
    assert_eq!(clusters[0].in_progress, MAX_REQUESTS_PER_REPORT);
}

#[test]
fn each_notice_is_logged_once_per_stream() {
    let mut s = stream();
    assert!(s.first(Notice::Ignored));
    assert!(!s.first(Notice::Ignored));
    assert!(s.first(Notice::Dropped));
    assert!(s.first(Notice::Cut));
    assert!(s.first(Notice::TooManyClusters));
    assert!(!s.first(Notice::TooManyClusters));
}

#[test]
fn a_load_stream_stands_for_an_xds_stream_of_its_node_group_and_identity() {
    let n = NodeInfo::from_node(&node(), 64).expect("node");
    let spiffe = |s: &str| PeerIdentity::Spiffe(format!("spiffe://t/{s}"));
    let present = |group: &str, identity: PeerIdentity| XdsPresence {
        group: group.into(),
        identity,
    };
    let code = |r: Result<(), LrsError>| r.map_err(|e| Status::from(e).code());
    assert_eq!(
        code(check_presence(&n, &PeerIdentity::Unauthenticated, &[])),
        Err(tonic::Code::FailedPrecondition)
    );
    assert_eq!(
        code(check_presence(
            &n,
            &PeerIdentity::Unauthenticated,
            &[present("web", PeerIdentity::Unauthenticated)]
        )),
        Err(tonic::Code::FailedPrecondition),
        "an xDS stream of another group"
    );
    assert_eq!(
        check_presence(
            &n,
            &PeerIdentity::Unauthenticated,
            &[present("edge", PeerIdentity::Unauthenticated)]
        ),
        Ok(())
    );
    assert_eq!(
        check_presence(&n, &spiffe("a"), &[present("edge", spiffe("a"))]),
        Ok(())
    );
    assert_eq!(
        code(check_presence(
            &n,
            &spiffe("b"),
            &[present("edge", spiffe("a"))]
        )),
        Err(tonic::Code::PermissionDenied),
        "another certificate than the xDS stream's"
    );
    assert_eq!(
        check_presence(
            &n,
            &spiffe("b"),
            &[present("web", spiffe("b")), present("edge", spiffe("b"))]
        ),
        Ok(()),
        "any of the node's streams will do"
    );
}
