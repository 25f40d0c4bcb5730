use super::*;
use crate::xds::fixtures::{group, nack, names, node, req, snapshot, sotw};
use ResourceType::{Cluster as CDS, Endpoint as EDS, Listener as LDS, Route as RDS};

fn ads() -> SotwStream {
    SotwStream::new(StreamKind::Aggregated)
}

fn acked(out: &Output) -> Vec<(ResourceType, String)> {
    out.events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Acked { ty, version } => Some((*ty, version.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn first_request_needs_a_node() {
    let snap = snapshot("1", group(&["a"], "a"), None);
    let mut s = ads();
    let mut r = req(CDS, &[], "");
    r.node = None;
    assert_eq!(
        s.on_request(&r, &snap).expect_err("no node"),
        ProtocolError::MissingNode
    );
    // Once the node is known, later requests may omit it.
    s.on_request(&req(CDS, &[], ""), &snap).expect("ok");
    let mut later = req(CDS, &[], "1");
    later.node = None;
    s.on_request(&later, &snap)
        .expect("node may be omitted later");
}

#[test]
fn unknown_and_mismatched_types_are_refused() {
    let snap = snapshot("1", group(&["a"], "a"), None);
    let mut r = req(CDS, &[], "");
    r.type_url = "type.googleapis.com/envoy.config.core.v3.Nothing".into();
    assert!(matches!(
        ads().on_request(&r, &snap),
        Err(ProtocolError::UnknownType(_))
    ));
    let mut cds_only = SotwStream::new(StreamKind::Single(CDS));
    assert!(matches!(
        cds_only.on_request(&req(LDS, &[], ""), &snap),
        Err(ProtocolError::WrongType { .. })
    ));
}

#[test]
fn wildcard_request_gets_everything_then_ack_is_recorded() {
    let snap = snapshot("1", group(&["a", "b"], "a"), None);
    let mut s = ads();
    let out = s.on_request(&req(CDS, &[], ""), &snap).expect("ok");
    assert_eq!(out.responses.len(), 1);
    let r = sotw(&out.responses[0]);
    assert_eq!((r.version_info.as_str(), r.nonce.as_str()), ("1", "1"));
    assert_eq!(names(&r), ["a", "b"]);
    assert_eq!(r.type_url, CDS.type_url());

    let out = s.on_request(&req(CDS, &[], "1"), &snap).expect("ok");
    assert!(out.responses.is_empty(), "an ACK asks for nothing new");
    assert_eq!(acked(&out), [(CDS, "1".to_string())]);
}

#[test]
fn one_response_in_flight_per_type_and_new_versions_coalesce() {
    let v1 = snapshot("1", group(&["a"], "a"), None);
    let v2 = snapshot("2", group(&["a", "b"], "a"), Some(&v1));
    let v3 = snapshot("3", group(&["a", "b", "c"], "a"), Some(&v2));
    let mut s = ads();
    s.on_request(&req(CDS, &[], ""), &v1).expect("ok");
    assert!(s.on_snapshot(&v2).responses.is_empty(), "v1 not ACKed yet");
    assert!(s.on_snapshot(&v3).responses.is_empty(), "v1 not ACKed yet");
    let out = s.on_request(&req(CDS, &[], "1"), &v3).expect("ok");
    assert_eq!(out.responses.len(), 1);
    let r = sotw(&out.responses[0]);
    assert_eq!(r.version_info, "3", "skips straight to the latest");
    assert_eq!(names(&r), ["a", "b", "c"]);
}

#[test]
fn a_nacked_version_is_never_sent_again() {
    let v1 = snapshot("1", group(&["a"], "a"), None);
    let v2 = snapshot("2", group(&["a", "b"], "a"), Some(&v1));
    let v3 = snapshot("3", group(&["a", "c"], "a"), Some(&v2));
    let mut s = ads();
    s.on_request(&req(CDS, &[], ""), &v1).expect("ok");
    s.on_request(&req(CDS, &[], "1"), &v1).expect("ack");
    let out = s.on_snapshot(&v2);
    assert_eq!(sotw(&out.responses[0]).version_info, "2");

    let out = s.on_request(&nack(CDS, &[], "2"), &v2).expect("nack");
    assert!(
        out.responses.is_empty(),
        "the rejected version is not resent"
    );
    assert_eq!(
        out.events,
        [StreamEvent::Nacked {
            ty: CDS,
            version: "2".into(),
            message: "rejected by test".into()
        }]
    );
    assert!(s.on_snapshot(&v2).responses.is_empty());
    // Even a fresh ask on the same stream does not bring it back.
    assert!(
        s.on_request(&req(CDS, &["*"], "2"), &v2)
            .expect("ok")
            .responses
            .is_empty()
    );

    let out = s.on_snapshot(&v3);
    assert_eq!(sotw(&out.responses[0]).version_info, "3");
}

#[test]
fn stale_nonce_is_ignored_but_its_names_are_the_subscription() {
    let snap = snapshot("1", group(&["a", "b"], "a"), None);
    let mut s = ads();
    let out = s.on_request(&req(EDS, &["a"], ""), &snap).expect("ok");
    assert_eq!(names(&sotw(&out.responses[0])), ["a"]);
    // Nonce 7 was never sent: no ACK is recorded, nothing is sent while
    // nonce 1 is unanswered, but the subscription is now {a, b}.
    let out = s
        .on_request(&req(EDS, &["a", "b"], "7"), &snap)
        .expect("ok");
    assert!(out.responses.is_empty());
    assert!(matches!(&out.events[..], [StreamEvent::StaleNonce { .. }]));
    let out = s
        .on_request(&req(EDS, &["a", "b"], "1"), &snap)
        .expect("ok");
    assert_eq!(acked(&out), [(EDS, "1".to_string())]);
    assert_eq!(names(&sotw(&out.responses[0])), ["a", "b"]);
}

#[test]
fn named_subscriptions_unsubscribe_and_resubscribe() {
    let snap = snapshot("1", group(&["a", "b"], "a"), None);
    let mut s = ads();
    let out = s.on_request(&req(EDS, &["b"], ""), &snap).expect("ok");
    assert_eq!(names(&sotw(&out.responses[0])), ["b"]);
    let out = s
        .on_request(&req(EDS, &[], "1"), &snap)
        .expect("unsubscribe");
    assert!(out.responses.is_empty(), "nothing to send for no names");
    let out = s
        .on_request(&req(EDS, &["b"], "1"), &snap)
        .expect("resubscribe");
    assert_eq!(out.responses.len(), 1, "resubscribing is answered");
    assert_eq!(names(&sotw(&out.responses[0])), ["b"]);
}

#[test]
fn legacy_and_explicit_wildcards() {
    let snap = snapshot("1", group(&["a", "b"], "a"), None);
    // "*" with a name: every resource, whether the name exists or not.
    let mut s = ads();
    let out = s
        .on_request(&req(CDS, &["*", "zzz"], ""), &snap)
        .expect("ok");
    assert_eq!(out.responses.len(), 1);
    assert_eq!(names(&sotw(&out.responses[0])), ["a", "b"]);
    // Named only: just that resource.
    let mut s = ads();
    let out = s.on_request(&req(CDS, &["a"], ""), &snap).expect("ok");
    assert_eq!(names(&sotw(&out.responses[0])), ["a"]);
    let out = s.on_request(&req(CDS, &[], "1"), &snap).expect("ok");
    assert!(out.responses.is_empty());
    let st = s.types[CDS].as_ref().expect("cds");
    assert!(
        !st.subscription.wildcard,
        "an empty list after names is not a wildcard"
    );
}

/// Drives an Envoy-like ADS client through its initial requests and ACKs.
fn connected(snap: &Snapshot) -> SotwStream {
    let mut s = ads();
    s.on_request(&req(CDS, &[], ""), snap).expect("cds");
    s.on_request(&req(CDS, &[], "1"), snap).expect("cds ack");
    s.on_request(&req(LDS, &[], ""), snap).expect("lds");
    s.on_request(&req(LDS, &[], "2"), snap).expect("lds ack");
    let out = s.on_request(&req(RDS, &["r"], ""), snap).expect("rds");
    let nonce = sotw(&out.responses[0]).nonce;
    s.on_request(&req(RDS, &["r"], &nonce), snap)
        .expect("rds ack");
    s
}

#[test]
fn routes_wait_until_the_clusters_they_name_are_acked() {
    let v1 = snapshot("1", group(&["a"], "a"), None);
    let v2 = snapshot("2", group(&["a", "c"], "c"), Some(&v1));
    let mut s = connected(&v1);
    let out = s.on_snapshot(&v2);
    let types: Vec<_> = out.responses.iter().map(|r| r.ty).collect();
    assert_eq!(types, [CDS], "the route to c must wait for c");
    let cds_nonce = sotw(&out.responses[0]).nonce;
    let out = s.on_request(&req(CDS, &[], &cds_nonce), &v2).expect("ack");
    let types: Vec<_> = out.responses.iter().map(|r| r.ty).collect();
    assert_eq!(types, [RDS]);
    assert_eq!(sotw(&out.responses[0]).version_info, "2");
}

#[test]
fn clusters_are_removed_only_after_routes_stop_naming_them() {
    let v1 = snapshot("1", group(&["a", "c"], "a"), None);
    let v2 = snapshot("2", group(&["c"], "c"), Some(&v1));
    let mut s = connected(&v1);
    let out = s.on_snapshot(&v2);
    // Clusters first, still holding `a` (the applied route names it); the
    // route to `c` can go at once since `c` was ACKed already.
    let types: Vec<_> = out.responses.iter().map(|r| r.ty).collect();
    assert_eq!(types, [CDS, RDS]);
    let cds = sotw(&out.responses[0]);
    assert_eq!(names(&cds), ["c", "a"]);
    assert!(cds.version_info.starts_with("2+keep."));
    let rds = sotw(&out.responses[1]);
    s.on_request(&req(CDS, &[], &cds.nonce), &v2)
        .expect("cds ack");
    let out = s
        .on_request(&req(RDS, &["r"], &rds.nonce), &v2)
        .expect("rds ack");
    // With the route moved, `a` can go.
    assert_eq!(out.responses.len(), 1);
    let cds = sotw(&out.responses[0]);
    assert_eq!(
        (cds.version_info.as_str(), names(&cds)),
        ("2", vec!["c".to_string()])
    );
}

#[test]
fn clients_that_name_clusters_are_not_held_back() {
    // Proxyless gRPC asks for listeners, then routes, then the clusters the
    // routes name: routes must not wait for clusters.
    let snap = snapshot("1", group(&["a"], "a"), None);
    let mut s = ads();
    s.on_request(&req(CDS, &["a"], ""), &snap)
        .expect("named cds");
    let out = s.on_request(&req(RDS, &["r"], ""), &snap).expect("rds");
    assert_eq!(out.responses.len(), 1);
    assert_eq!(out.responses[0].ty, RDS);
}

#[test]
fn unknown_group_gets_empty_answers() {
    let snap = snapshot("1", group(&["a"], "a"), None);
    let mut s = ads();
    let mut r = req(CDS, &[], "");
    r.node = Some(envoy_types::pb::envoy::config::core::v3::Node {
        cluster: "nobody".into(),
        ..node()
    });
    let out = s.on_request(&r, &snap).expect("ok");
    let resp = sotw(&out.responses[0]);
    assert!(resp.resources.is_empty());
    assert_eq!(resp.version_info, "1");
}

#[test]
fn identical_responses_share_one_encoding() {
    let snap = snapshot("1", group(&["a", "b"], "a"), None);
    let bodies: Vec<_> = (0..3)
        .map(|_| {
            let mut s = ads();
            let out = s.on_request(&req(CDS, &[], ""), &snap).expect("ok");
            out.responses[0].message.clone()
        })
        .collect();
    let ptrs: Vec<_> = bodies
        .iter()
        .map(|m| m.first_part().map(|b| b.as_ptr()))
        .collect();
    assert!(ptrs.windows(2).all(|w| w[0] == w[1]), "one body, shared");
}

fn limited(names: usize, bytes: usize) -> SotwStream {
    SotwStream::with_limits(
        StreamKind::Aggregated,
        StreamLimits {
            max_subscription_names: names,
            max_subscription_bytes: bytes,
            max_node_field_bytes: 32,
            max_nack_bytes: 16,
        },
    )
}

fn over_limit(e: ProtocolError) -> crate::xds::OverLimit {
    let status = tonic::Status::from(e.clone());
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    match e {
        ProtocolError::OverLimit(o) => o,
        other => panic!("not a limit: {other:?}"),
    }
}

#[test]
fn subscriptions_past_the_name_limits_close_the_stream() {
    use crate::xds::Limit;
    let snap = snapshot("1", group(&["a"], "a"), None);
    let mut s = limited(3, 100);
    s.on_request(&req(EDS, &["a", "b", "c"], ""), &snap)
        .expect("three names is the limit");
    let e = s
        .on_request(&req(EDS, &["a", "b", "c", "d"], ""), &snap)
        .expect_err("four is over");
    let o = over_limit(e);
    assert_eq!((o.limit, o.got, o.max), (Limit::SubscriptionNames, 4, 3));
    assert!(o.to_string().contains("--max-subscription-names"), "{o}");

    let long = "x".repeat(101);
    let e = limited(3, 100)
        .on_request(&req(EDS, &[long.as_str()], ""), &snap)
        .expect_err("too many bytes");
    assert_eq!(over_limit(e).limit, Limit::SubscriptionBytes);
}

#[test]
fn node_fields_past_the_limit_close_the_stream() {
    use crate::xds::Limit;
    let snap = snapshot("1", group(&["a"], "a"), None);
    let long = "n".repeat(33);
    for field in ["id", "cluster", "agent"] {
        let mut r = req(CDS, &[], "");
        let n = r.node.as_mut().expect("node");
        match field {
            "id" => n.id = long.clone(),
            "cluster" => n.cluster = long.clone(),
            _ => n.user_agent_name = long.clone(),
        }
        let o = over_limit(limited(10, 100).on_request(&r, &snap).expect_err(field));
        assert_eq!((o.limit, o.got, o.max), (Limit::NodeFieldBytes, 33, 32));
    }
    // A later request cannot bring in a long id either (the error would
    // otherwise echo it).
    let mut s = limited(10, 100);
    s.on_request(&req(CDS, &[], ""), &snap).expect("ok");
    let mut r = req(CDS, &[], "");
    r.node.as_mut().expect("node").id = long;
    assert_eq!(
        over_limit(s.on_request(&r, &snap).expect_err("long")).limit,
        Limit::NodeFieldBytes
    );
}

#[test]
fn nack_messages_and_stale_nonces_are_kept_cut() {
    let snap = snapshot("1", group(&["a"], "a"), None);
    let mut s = limited(10, 100);
    s.on_request(&req(CDS, &[], ""), &snap).expect("ok");
    let mut n = nack(CDS, &[], "1");
    let message = "é".repeat(1_000_000);
    n.error_detail.as_mut().expect("detail").message = message;
    let out = s.on_request(&n, &snap).expect("ok");
    let kept = out
        .events
        .iter()
        .find_map(|e| match e {
            StreamEvent::Nacked { message, .. } => Some(message.clone()),
            _ => None,
        })
        .expect("a NACK");
    assert_eq!(kept, format!("{}… [cut: 1999984 bytes]", "é".repeat(8)));

    let stale = "9".repeat(10_000);
    let out = s
        .on_request(&req(CDS, &[], &stale), &snap)
        .expect("stale is fine");
    let Some(StreamEvent::StaleNonce { nonce, .. }) = out.events.first() else {
        panic!("a stale nonce: {:?}", out.events);
    };
    assert!(
        nonce.len() < 200 && nonce.ends_with("[cut: 9872 bytes]"),
        "{nonce}"
    );
}
