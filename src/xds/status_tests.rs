use super::*;

fn edge_node(id: &str) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        cluster: "edge".into(),
        user_agent: "envoy".into(),
    }
}

/// A stream that ends stays counted (for the rollout, not in the
/// list of connected streams) until a stream of its node connects or
/// the hold passes; a stream that never named its node, or a registry
/// without a hold, forgets it at once.
#[tokio::test(start_paused = true)]
async fn an_ended_stream_counts_until_its_node_is_back_or_the_hold_passes() {
    let reg = ProxyRegistry::new();
    reg.set_reconnect_hold(Duration::from_secs(10));
    let feed = reg.feed();
    let mut a = reg.register(StreamKind::Aggregated, false);
    a.set_node(Some(&edge_node("a")));
    let mut b = reg.register(StreamKind::Aggregated, false);
    b.set_node(Some(&edge_node("b")));
    let anonymous = reg.register(StreamKind::Aggregated, false);
    let (a_id, b_id) = (a.id(), b.id());
    feed.take();
    drop((a, b, anonymous));
    assert_eq!(reg.len(), 0);
    assert!(reg.proxies().is_empty());
    let held = reg.statuses();
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(held.iter().all(|p| p.disconnected));
    let changes = feed.take();
    assert_eq!(changes.changed.len(), 2, "both are handed over as changed");

    // a comes back: its old stream goes at once.
    let mut again = reg.register(StreamKind::Aggregated, false);
    again.set_node(Some(&edge_node("a")));
    let ids: Vec<u64> = reg.statuses().iter().map(|p| p.stream_id).collect();
    assert!(!ids.contains(&a_id) && ids.contains(&b_id), "{ids:?}");
    assert!(feed.take().gone.contains(&a_id));

    // b never does: it goes when the hold passes, and not before.
    tokio::time::sleep(Duration::from_secs(9)).await;
    assert!(reg.statuses().iter().any(|p| p.stream_id == b_id));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!reg.statuses().iter().any(|p| p.stream_id == b_id));
    assert!(feed.take().gone.contains(&b_id));
    assert_eq!(reg.len(), 1);

    // With no hold, an ended stream is forgotten at once.
    reg.set_reconnect_hold(Duration::ZERO);
    drop(again);
    assert!(reg.statuses().is_empty());
}

#[test]
fn events_update_status_and_drop_unregisters() {
    let reg = ProxyRegistry::new();
    let mut h = reg.register(StreamKind::Aggregated, false);
    let node = NodeInfo {
        id: "p1".into(),
        cluster: "edge".into(),
        user_agent: "envoy".into(),
    };
    h.set_node(Some(&node));
    let mut watch = reg.watch();
    watch.mark_unchanged();
    h.record(&[
        StreamEvent::Sent {
            ty: ResourceType::Route,
            version: "2".into(),
            nonce: "1".into(),
            resources: 1,
        },
        StreamEvent::Nacked {
            ty: ResourceType::Route,
            version: "2".into(),
            message: "bad".into(),
        },
    ]);
    assert!(watch.has_changed().expect("registry alive"));
    let all = reg.proxies();
    assert_eq!(all.len(), 1);
    let rds = all[0].of(ResourceType::Route);
    assert_eq!(rds.sent.as_deref(), Some("2"));
    assert_eq!(rds.acked, None);
    assert!(rds.last_was_nacked());
    assert_eq!(rds.nack.as_ref().map(|n| n.message.as_str()), Some("bad"));
    assert_eq!(all[0].group(), Some("edge"));
    drop(h);
    assert!(reg.is_empty());
}

#[test]
fn a_feed_hands_over_each_changed_stream_once() {
    let reg = ProxyRegistry::new();
    let quiet = reg.register(StreamKind::Aggregated, false);
    let feed = reg.feed();
    let busy = reg.register(StreamKind::Aggregated, false);
    let ack = |version: &str| StreamEvent::Acked {
        ty: ResourceType::Route,
        version: version.into(),
    };
    busy.record(&[ack("1")]);
    busy.record(&[ack("2")]);
    let first = feed.take();
    assert_eq!(
        first.changed.len(),
        1,
        "one entry per stream, not per event"
    );
    assert_eq!(first.changed[0].stream_id, busy.id());
    assert_eq!(
        first.changed[0].of(ResourceType::Route).acked.as_deref(),
        Some("2")
    );
    assert!(
        feed.take().is_empty(),
        "taken changes are not handed over again"
    );
    let gone = busy.id();
    drop(busy);
    quiet.record(&[ack("3")]);
    let second = feed.take();
    assert_eq!(second.gone, vec![gone]);
    assert_eq!(second.changed.len(), 1);
    assert_eq!(second.changed[0].stream_id, quiet.id());
    drop(feed);
    quiet.record(&[ack("4")]);
    assert!(
        reg.lock().feeds.iter().all(Option::is_none),
        "a dropped feed stops collecting"
    );
}

#[test]
fn a_remote_stream_is_seen_replaced_and_removed_like_a_local_one() {
    let reg = ProxyRegistry::new();
    let feed = reg.feed();
    let mut watch = reg.watch();
    watch.mark_unchanged();
    let mut status = ProxyStatus {
        stream_id: 77,
        node: Some(NodeInfo {
            id: "far".into(),
            cluster: "edge".into(),
            user_agent: String::new(),
        }),
        kind: StreamKind::Aggregated,
        delta: false,
        connected_since: SystemTime::UNIX_EPOCH,
        identity: PeerIdentity::Unauthenticated,
        types: Default::default(),
        replica: Some("b".into()),
        disconnected: false,
    };
    let remote = reg.register_remote(status.clone());
    assert!(watch.has_changed().expect("registry alive"));
    let first = feed.take();
    assert_eq!(first.changed.len(), 1);
    assert_eq!(first.changed[0].stream_id, remote.id(), "a local id");
    assert_eq!(first.changed[0].replica.as_deref(), Some("b"));
    watch.mark_unchanged();
    remote.replace(status.clone());
    assert!(feed.take().is_empty(), "an identical status is no change");
    assert!(!watch.has_changed().expect("registry alive"));
    status.types[ResourceType::Route].acked = Some("3".into());
    remote.replace(status);
    let second = feed.take();
    assert_eq!(
        second.changed[0].of(ResourceType::Route).acked.as_deref(),
        Some("3")
    );
    let id = remote.id();
    drop(remote);
    assert_eq!(feed.take().gone, vec![id]);
    assert!(reg.is_empty());
}

/// The index load streams check their node against holds this replica's
/// connected streams, not those that ended (even while held) nor
/// mirrored ones.
#[tokio::test(start_paused = true)]
async fn connected_here_finds_a_nodes_live_streams_only() {
    let reg = ProxyRegistry::new();
    reg.set_reconnect_hold(Duration::from_secs(10));
    assert!(reg.connected_here("a").is_empty());
    let mut a = reg.register(StreamKind::Aggregated, false);
    let spiffe = PeerIdentity::Spiffe("spiffe://t/a".into());
    a.set_identity(&spiffe);
    a.set_node(Some(&edge_node("a")));
    let mut a2 = reg.register(StreamKind::Single(ResourceType::Endpoint), false);
    a2.set_node(Some(&edge_node("a")));
    let here = reg.connected_here("a");
    assert_eq!(here.len(), 2, "{here:?}");
    assert!(here.iter().all(|p| p.group == "edge"));
    assert!(here.iter().any(|p| p.identity == spiffe));
    drop(a);
    assert_eq!(
        reg.connected_here("a").len(),
        1,
        "a held stream is not live"
    );
    drop(a2);
    assert!(reg.connected_here("a").is_empty());
    let _mirrored = reg.register_remote(ProxyStatus {
        stream_id: 0,
        node: Some(edge_node("b")),
        kind: StreamKind::Aggregated,
        delta: false,
        connected_since: SystemTime::now(),
        identity: PeerIdentity::Unauthenticated,
        types: Default::default(),
        replica: Some("r2".into()),
        disconnected: false,
    });
    assert!(
        reg.connected_here("b").is_empty(),
        "another replica's proxy"
    );
}
