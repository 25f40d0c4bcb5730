use std::collections::HashMap;

use super::*;
use crate::xds::fixtures::{delta, group, node, snapshot};
use ResourceType::{Cluster as CDS, Endpoint as EDS, Route as RDS};
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
use envoy_types::pb::google::rpc;

fn dreq(ty: ResourceType, sub: &[&str], unsub: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(node()),
        type_url: ty.type_url().into(),
        resource_names_subscribe: sub.iter().map(|n| (*n).to_string()).collect(),
        resource_names_unsubscribe: unsub.iter().map(|n| (*n).to_string()).collect(),
        response_nonce: nonce.into(),
        ..Default::default()
    }
}

fn dnack(ty: ResourceType, nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        error_detail: Some(rpc::Status {
            code: 3,
            message: "no".into(),
            ..Default::default()
        }),
        ..dreq(ty, &[], &[], nonce)
    }
}

fn sent_names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

fn ads() -> DeltaStream {
    DeltaStream::new(StreamKind::Aggregated)
}

#[test]
fn wildcard_gets_everything_with_content_versions() {
    let snap = snapshot("1", group(&["a", "b"], "a"), None);
    let mut s = ads();
    let out = s.on_request(&dreq(CDS, &[], &[], ""), &snap).expect("ok");
    let r = delta(&out.responses[0]);
    assert_eq!(sent_names(&r), ["a", "b"]);
    assert_eq!(r.system_version_info, "1");
    let ts = snap.group("edge").of(CDS);
    for res in &r.resources {
        assert_eq!(
            res.version,
            ts.get(&res.name).expect("in snapshot").version()
        );
    }
}

#[test]
fn a_reconnecting_client_is_not_sent_what_it_has() {
    let snap = snapshot("1", group(&["a", "b"], "a"), None);
    let ts = snap.group("edge").of(CDS);
    let mut req = dreq(CDS, &["*"], &[], "");
    req.initial_resource_versions = HashMap::from([
        (
            "a".to_string(),
            ts.get("a").expect("a").version().to_string(),
        ),
        ("b".to_string(), "stale".to_string()),
        ("gone".to_string(), "x".to_string()),
    ]);
    let out = ads().on_request(&req, &snap).expect("ok");
    let r = delta(&out.responses[0]);
    assert_eq!(sent_names(&r), ["b"], "a is current, b is not");
    assert_eq!(r.removed_resources, ["gone"]);
}

#[test]
fn removals_and_updates_after_ack() {
    let v1 = snapshot("1", group(&["a", "b"], "a"), None);
    let v2 = snapshot("2", group(&["a"], "a"), Some(&v1));
    let mut s = ads();
    s.on_request(&dreq(CDS, &[], &[], ""), &v1).expect("ok");
    assert!(s.on_snapshot(&v2).responses.is_empty(), "one in flight");
    let out = s.on_request(&dreq(CDS, &[], &[], "1"), &v2).expect("ack");
    let r = delta(&out.responses[0]);
    assert!(r.resources.is_empty(), "a is unchanged");
    assert_eq!(r.removed_resources, ["b"]);
}

#[test]
fn nacked_version_is_not_resent() {
    let v1 = snapshot("1", group(&["a"], "a"), None);
    let v2 = snapshot("2", group(&["a", "b"], "a"), Some(&v1));
    let v3 = snapshot("3", group(&["a", "c"], "a"), Some(&v2));
    let mut s = ads();
    s.on_request(&dreq(CDS, &[], &[], ""), &v1).expect("ok");
    s.on_request(&dreq(CDS, &[], &[], "1"), &v1).expect("ack");
    assert_eq!(sent_names(&delta(&s.on_snapshot(&v2).responses[0])), ["b"]);
    let out = s.on_request(&dnack(CDS, "2"), &v2).expect("nack");
    assert!(out.responses.is_empty());
    assert!(matches!(&out.events[..], [StreamEvent::Nacked { version, .. }] if version == "2"));
    assert!(s.on_snapshot(&v2).responses.is_empty());
    // The client never took b, so v3 sends c and nothing about b.
    let r = delta(&s.on_snapshot(&v3).responses[0]);
    assert_eq!(sent_names(&r), ["c"]);
    assert!(r.removed_resources.is_empty());
}

#[test]
fn subscribe_unsubscribe_resubscribe() {
    let snap = snapshot("1", group(&["a", "b"], "a"), None);
    let mut s = ads();
    let r = delta(
        &s.on_request(&dreq(EDS, &["a"], &[], ""), &snap)
            .expect("ok")
            .responses[0],
    );
    assert_eq!(sent_names(&r), ["a"]);
    let out = s
        .on_request(&dreq(EDS, &["b"], &["a"], "1"), &snap)
        .expect("ok");
    assert_eq!(sent_names(&delta(&out.responses[0])), ["b"]);
    let out = s
        .on_request(&dreq(EDS, &["a"], &[], "2"), &snap)
        .expect("ok");
    assert_eq!(
        sent_names(&delta(&out.responses[0])),
        ["a"],
        "forgotten, so sent again"
    );
}

#[test]
fn stale_nonce_keeps_the_response_in_flight() {
    let snap = snapshot("1", group(&["a", "b"], "a"), None);
    let mut s = ads();
    s.on_request(&dreq(EDS, &["a"], &[], ""), &snap)
        .expect("ok");
    let out = s
        .on_request(&dreq(EDS, &["b"], &[], "99"), &snap)
        .expect("ok");
    assert!(out.responses.is_empty());
    assert!(matches!(&out.events[..], [StreamEvent::StaleNonce { .. }]));
    let out = s.on_request(&dreq(EDS, &[], &[], "1"), &snap).expect("ack");
    assert_eq!(sent_names(&delta(&out.responses[0])), ["b"]);
}

#[test]
fn make_before_break_per_resource() {
    let v1 = snapshot("1", group(&["a"], "a"), None);
    let v2 = snapshot("2", group(&["c"], "c"), Some(&v1));
    let mut s = ads();
    s.on_request(&dreq(CDS, &[], &[], ""), &v1).expect("cds");
    s.on_request(&dreq(CDS, &[], &[], "1"), &v1)
        .expect("cds ack");
    s.on_request(&dreq(RDS, &["r"], &[], ""), &v1).expect("rds");
    s.on_request(&dreq(RDS, &[], &[], "2"), &v1)
        .expect("rds ack");

    let out = s.on_snapshot(&v2);
    assert_eq!(out.responses.len(), 1, "the route waits for c");
    let cds = delta(&out.responses[0]);
    assert_eq!(sent_names(&cds), ["c"]);
    assert!(
        cds.removed_resources.is_empty(),
        "the held route still names a"
    );

    let out = s
        .on_request(&dreq(CDS, &[], &[], &cds.nonce), &v2)
        .expect("ack");
    assert_eq!(out.responses.len(), 1);
    let rds = delta(&out.responses[0]);
    assert_eq!(sent_names(&rds), ["r"]);
    let out = s
        .on_request(&dreq(RDS, &[], &[], &rds.nonce), &v2)
        .expect("ack");
    let cds = delta(&out.responses[0]);
    assert_eq!(cds.removed_resources, ["a"], "now a can go");
}

#[test]
fn a_version_that_changes_nothing_subscribed_counts_as_applied() {
    let v1 = snapshot("1", group(&["a", "b"], "a"), None);
    let mut g2 = group(&["a", "b"], "a");
    g2.endpoints[1].endpoints = vec![Default::default()];
    let v2 = snapshot("2", g2, Some(&v1));
    let mut s = ads();
    s.on_request(&dreq(EDS, &["a"], &[], ""), &v1).expect("ok");
    s.on_request(&dreq(EDS, &[], &[], "1"), &v1).expect("ack");
    // Only b changed; the client holds a alone, so nothing is sent, and
    // it is current with version 2.
    let out = s.on_snapshot(&v2);
    assert!(out.responses.is_empty());
    assert_eq!(
        out.events,
        [StreamEvent::Acked {
            ty: EDS,
            version: "2".into()
        }]
    );
    assert!(s.on_snapshot(&v2).events.is_empty(), "reported once");
}

fn limited(names: usize, bytes: usize) -> DeltaStream {
    DeltaStream::with_limits(
        StreamKind::Aggregated,
        StreamLimits {
            max_subscription_names: names,
            max_subscription_bytes: bytes,
            max_nack_bytes: 16,
            ..StreamLimits::default()
        },
    )
}

fn limit_of(e: ProtocolError) -> crate::xds::Limit {
    assert_eq!(
        tonic::Status::from(e.clone()).code(),
        tonic::Code::ResourceExhausted
    );
    match e {
        ProtocolError::OverLimit(o) => o.limit,
        other => panic!("not a limit: {other:?}"),
    }
}

#[test]
fn subscriptions_that_grow_past_the_limits_close_the_stream() {
    use crate::xds::Limit;
    let snap = snapshot("1", group(&["a"], "a"), None);
    let mut s = limited(3, 10);
    s.on_request(&dreq(EDS, &["a", "b"], &[], ""), &snap)
        .expect("two");
    // Names already held, and names subscribed and unsubscribed in the same
    // request, do not count twice.
    s.on_request(&dreq(EDS, &["a", "c", "x"], &["b", "x"], "1"), &snap)
        .expect("a, c");
    s.on_request(&dreq(EDS, &["b", "a"], &[], ""), &snap)
        .expect("a, b, c: at the limit");
    let e = s
        .on_request(&dreq(EDS, &["d"], &[], ""), &snap)
        .expect_err("a fourth");
    assert_eq!(limit_of(e), Limit::SubscriptionNames);
    // The refused request changed nothing: freeing a slot makes room.
    s.on_request(&dreq(EDS, &["d"], &["c"], ""), &snap)
        .expect("a, b, d");

    let e = limited(100, 10)
        .on_request(&dreq(EDS, &["12345", "678901"], &[], ""), &snap)
        .expect_err("11 bytes");
    assert_eq!(limit_of(e), Limit::SubscriptionBytes);
}

#[test]
fn initial_versions_count_against_the_limits() {
    use crate::xds::Limit;
    let snap = snapshot("1", group(&["a"], "a"), None);
    let mut req = dreq(CDS, &["*"], &[], "");
    req.initial_resource_versions = (0..4).map(|i| (format!("r{i}"), "v".into())).collect();
    let e = limited(3, 100)
        .on_request(&req, &snap)
        .expect_err("four held");
    assert_eq!(limit_of(e), Limit::SubscriptionNames);
    let e = limited(10, 11)
        .on_request(&req, &snap)
        .expect_err("12 bytes");
    assert_eq!(limit_of(e), Limit::SubscriptionBytes);
    limited(4, 12)
        .on_request(&req, &snap)
        .expect("at the limits");
}

#[test]
fn nack_messages_are_kept_cut() {
    let snap = snapshot("1", group(&["a"], "a"), None);
    let mut s = limited(10, 100);
    s.on_request(&dreq(CDS, &[], &[], ""), &snap).expect("ok");
    let mut n = dnack(CDS, "1");
    n.error_detail.as_mut().expect("detail").message = "x".repeat(3 << 20);
    let out = s.on_request(&n, &snap).expect("ok");
    assert!(
        out.events.iter().any(|e| matches!(e,
            StreamEvent::Nacked { message, .. } if message == &format!("{}… [cut: 3145712 bytes]", "x".repeat(16))
        )),
        "{:?}",
        out.events
    );
}
