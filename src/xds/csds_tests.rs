use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::r#type::matcher::v3::{StructMatcher, ValueMatcher};
use prost::Name;

use super::*;
use crate::xds::fixtures::{group, snapshot};
use crate::xds::protocol::{NodeInfo, StreamEvent};
use crate::xds::status::StreamHandle;

const NO_LIMIT: usize = usize::MAX;

fn node(id: &str, group: &str) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        cluster: group.into(),
        user_agent: "envoy 1.40.0".into(),
    }
}

fn connect(reg: &Arc<ProxyRegistry>, kind: StreamKind, id: &str, group: &str) -> StreamHandle {
    let mut h = reg.register(kind, false);
    h.set_node(Some(&node(id, group)));
    h
}

fn sent(ty: ResourceType, version: &str) -> StreamEvent {
    StreamEvent::Sent {
        ty,
        version: version.into(),
        nonce: "n".into(),
        resources: 1,
    }
}

fn acked(ty: ResourceType, version: &str) -> StreamEvent {
    StreamEvent::Acked {
        ty,
        version: version.into(),
    }
}

fn nacked(ty: ResourceType, version: &str, message: &str) -> StreamEvent {
    StreamEvent::Nacked {
        ty,
        version: version.into(),
        message: message.into(),
    }
}

fn all() -> Selector {
    Selector::default()
}

fn answer(reg: &ProxyRegistry, snap: &Snapshot, selector: &Selector) -> ClientStatusResponse {
    client_status(&reg.proxies(), snap, selector, true, NO_LIMIT).expect("within limits")
}

/// The entries of type `ty` of the one proxy in `r`.
fn entries(r: &ClientStatusResponse, ty: ResourceType) -> Vec<&GenericXdsConfig> {
    assert_eq!(r.config.len(), 1, "one proxy: {r:#?}");
    r.config[0]
        .generic_xds_configs
        .iter()
        .filter(|g| g.type_url == ty.type_url())
        .collect()
}

fn status(g: &GenericXdsConfig) -> (ConfigStatus, ClientResourceStatus) {
    (
        ConfigStatus::try_from(g.config_status).expect("known"),
        ClientResourceStatus::try_from(g.client_status).expect("known"),
    )
}

fn ids(r: &ClientStatusResponse) -> Vec<String> {
    r.config
        .iter()
        .map(|c| c.node.as_ref().map(|n| n.id.clone()).unwrap_or_default())
        .collect()
}

#[test]
fn an_acked_type_is_synced_with_each_resource_sent() {
    let reg = ProxyRegistry::new();
    let snap = snapshot("v1", group(&["a", "b"], "a"), None);
    let h = connect(&reg, StreamKind::Aggregated, "p1", "edge");
    h.record(&[
        sent(ResourceType::Cluster, "v1"),
        acked(ResourceType::Cluster, "v1"),
    ]);
    let r = answer(&reg, &snap, &all());
    let node = r.config[0].node.as_ref().expect("node");
    assert_eq!(
        (
            node.id.as_str(),
            node.cluster.as_str(),
            node.user_agent_name.as_str()
        ),
        ("p1", "edge", "envoy 1.40.0")
    );
    let cds = entries(&r, ResourceType::Cluster);
    assert_eq!(cds.len(), 2);
    for (g, name) in cds.iter().zip(["a", "b"]) {
        assert_eq!(g.name, name);
        assert_eq!(g.version_info, "v1");
        assert_eq!(
            status(g),
            (ConfigStatus::Synced, ClientResourceStatus::Acked)
        );
        assert!(g.error_state.is_none());
        assert!(g.last_updated.is_some());
        let any = g.xds_config.as_ref().expect("contents");
        assert_eq!(any.type_url, Cluster::type_url());
        let cluster = Cluster::decode(any.value.as_slice()).expect("a cluster");
        assert_eq!(cluster.name, name);
    }
    // The other types were never sent: one entry each, NOT_SENT.
    for ty in [
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
    ] {
        let e = entries(&r, ty);
        assert_eq!(e.len(), 1, "{ty}");
        assert_eq!(
            status(e[0]),
            (ConfigStatus::NotSent, ClientResourceStatus::Unknown)
        );
        assert_eq!((e[0].name.as_str(), e[0].version_info.as_str()), ("", ""));
        assert!(e[0].xds_config.is_none());
    }
}

#[test]
fn a_sent_unacked_type_is_stale_at_the_version_sent() {
    let reg = ProxyRegistry::new();
    let v1 = snapshot("v1", group(&["a"], "a"), None);
    let v2 = snapshot("v2", group(&["a", "b"], "a"), Some(&v1));
    let h = connect(&reg, StreamKind::Aggregated, "p1", "edge");
    h.record(&[
        sent(ResourceType::Cluster, "v1"),
        acked(ResourceType::Cluster, "v1"),
        sent(ResourceType::Cluster, "v2"),
    ]);
    let r = answer(&reg, &v2, &all());
    let cds = entries(&r, ResourceType::Cluster);
    assert_eq!(cds.len(), 2);
    for g in cds {
        assert_eq!(g.version_info, "v2");
        assert_eq!(
            status(g),
            (ConfigStatus::Stale, ClientResourceStatus::Requested)
        );
        assert!(g.xds_config.is_some());
    }
}

#[test]
fn a_nacked_type_is_an_error_carrying_the_nack() {
    let reg = ProxyRegistry::new();
    let snap = snapshot("v2", group(&["a"], "a"), None);
    let h = connect(&reg, StreamKind::Aggregated, "p1", "edge");
    h.record(&[
        sent(ResourceType::Route, "v1"),
        acked(ResourceType::Route, "v1"),
        sent(ResourceType::Route, "v2"),
        nacked(ResourceType::Route, "v2", "regex too big"),
    ]);
    let r = answer(&reg, &snap, &all());
    let rds = entries(&r, ResourceType::Route);
    assert_eq!(rds.len(), 1);
    let g = rds[0];
    assert_eq!((g.name.as_str(), g.version_info.as_str()), ("r", "v2"));
    assert_eq!(
        status(g),
        (ConfigStatus::Error, ClientResourceStatus::Nacked)
    );
    let e = g.error_state.as_ref().expect("the NACK");
    assert_eq!(e.details, "regex too big");
    assert_eq!(e.version_info, "v2");
    assert!(e.last_update_attempt.is_some());

    // Once a later version is ACKed, the NACK is history.
    h.record(&[
        sent(ResourceType::Route, "v3"),
        acked(ResourceType::Route, "v3"),
    ]);
    let snap = snapshot("v3", group(&["a"], "b"), Some(&snap));
    let r = answer(&reg, &snap, &all());
    let g = entries(&r, ResourceType::Route)[0];
    assert_eq!(
        status(g),
        (ConfigStatus::Synced, ClientResourceStatus::Acked)
    );
    assert!(g.error_state.is_none());
}

#[test]
fn a_version_no_longer_served_is_listed_without_contents() {
    let reg = ProxyRegistry::new();
    let v1 = snapshot("v1", group(&["a"], "a"), None);
    let v2 = snapshot("v2", group(&["b"], "b"), Some(&v1));
    let h = connect(&reg, StreamKind::Aggregated, "p1", "edge");
    h.record(&[
        sent(ResourceType::Cluster, "v1"),
        acked(ResourceType::Cluster, "v1"),
    ]);
    let r = answer(&reg, &v2, &all());
    let cds = entries(&r, ResourceType::Cluster);
    assert_eq!(cds.len(), 1);
    assert_eq!(
        (cds[0].name.as_str(), cds[0].version_info.as_str()),
        ("", "v1")
    );
    assert!(cds[0].xds_config.is_none());
    assert_eq!(status(cds[0]).0, ConfigStatus::Synced);
}

#[test]
fn a_delta_stream_current_without_a_push_is_synced() {
    // A delta stream that already holds everything of v2 is told nothing
    // and reports v2 applied: sent stays v1, acked becomes v2.
    let reg = ProxyRegistry::new();
    let v1 = snapshot("v1", group(&["a"], "a"), None);
    let v2 = snapshot("v2", group(&["a"], "b"), Some(&v1));
    assert_eq!(v2.group("edge").of(ResourceType::Cluster).version(), "v1");
    let h = connect(&reg, StreamKind::Aggregated, "p1", "edge");
    h.record(&[
        sent(ResourceType::Route, "v1"),
        acked(ResourceType::Route, "v1"),
        acked(ResourceType::Route, "v2"),
    ]);
    let r = answer(&reg, &v2, &all());
    let rds = entries(&r, ResourceType::Route);
    assert_eq!(rds[0].version_info, "v2");
    assert_eq!(status(rds[0]).0, ConfigStatus::Synced);
    assert!(rds[0].xds_config.is_some());
}

#[test]
fn contents_can_be_left_out() {
    let reg = ProxyRegistry::new();
    let snap = snapshot("v1", group(&["a"], "a"), None);
    let h = connect(&reg, StreamKind::Aggregated, "p1", "edge");
    h.record(&[sent(ResourceType::Cluster, "v1")]);
    let r = client_status(&reg.proxies(), &snap, &all(), false, NO_LIMIT).expect("ok");
    let cds = entries(&r, ResourceType::Cluster);
    assert_eq!(
        (cds[0].name.as_str(), cds[0].version_info.as_str()),
        ("a", "v1")
    );
    assert!(cds[0].xds_config.is_none());
}

#[test]
fn per_type_streams_of_one_node_make_one_proxy_and_nameless_streams_none() {
    let reg = ProxyRegistry::new();
    let snap = snapshot("v1", group(&["a"], "a"), None);
    let cds = connect(
        &reg,
        StreamKind::Single(ResourceType::Cluster),
        "p1",
        "edge",
    );
    let lds = connect(
        &reg,
        StreamKind::Single(ResourceType::Listener),
        "p1",
        "edge",
    );
    let _anonymous = reg.register(StreamKind::Aggregated, false);
    cds.record(&[
        sent(ResourceType::Cluster, "v1"),
        acked(ResourceType::Cluster, "v1"),
    ]);
    lds.record(&[sent(ResourceType::Listener, "v1")]);
    let r = answer(&reg, &snap, &all());
    let types: Vec<(&str, ConfigStatus)> = r.config[0]
        .generic_xds_configs
        .iter()
        .map(|g| (g.type_url.as_str(), status(g).0))
        .collect();
    assert_eq!(
        types,
        [
            (ResourceType::Cluster.type_url(), ConfigStatus::Synced),
            (ResourceType::Listener.type_url(), ConfigStatus::Stale),
        ]
    );
}

#[test]
fn a_reconnected_proxy_is_reported_from_its_newest_stream() {
    let reg = ProxyRegistry::new();
    let snap = snapshot("v2", group(&["a"], "a"), None);
    let old = connect(&reg, StreamKind::Aggregated, "p1", "edge");
    old.record(&[
        sent(ResourceType::Cluster, "v2"),
        nacked(ResourceType::Cluster, "v2", "old stream"),
    ]);
    let new = connect(&reg, StreamKind::Aggregated, "p1", "edge");
    new.record(&[
        sent(ResourceType::Cluster, "v2"),
        acked(ResourceType::Cluster, "v2"),
    ]);
    let r = answer(&reg, &snap, &all());
    assert_eq!(
        status(entries(&r, ResourceType::Cluster)[0]).0,
        ConfigStatus::Synced
    );
}

fn string(pattern: string_matcher::MatchPattern) -> StringMatcher {
    StringMatcher {
        ignore_case: false,
        match_pattern: Some(pattern),
    }
}

fn by_id(pattern: string_matcher::MatchPattern) -> NodeMatcher {
    NodeMatcher {
        node_id: Some(string(pattern)),
        node_metadatas: vec![],
    }
}

fn group_is(key: &str, g: &str) -> StructMatcher {
    StructMatcher {
        path: vec![struct_matcher::PathSegment {
            segment: Some(struct_matcher::path_segment::Segment::Key(key.into())),
        }],
        value: Some(ValueMatcher {
            match_pattern: Some(value_matcher::MatchPattern::StringMatch(string(
                string_matcher::MatchPattern::Exact(g.into()),
            ))),
        }),
    }
}

fn by_group(g: &str) -> NodeMatcher {
    NodeMatcher {
        node_id: None,
        node_metadatas: vec![group_is(GROUP_KEY, g)],
    }
}

#[test]
fn a_gated_selector_shows_only_the_groups_the_identity_may_join() {
    use crate::transport::identity::{IdentityPattern, IdentityPolicy};
    let reg = ProxyRegistry::new();
    let snap = snapshot("v1", group(&["a"], "a"), None);
    let _h = [
        connect(&reg, StreamKind::Aggregated, "edge-1", "edge"),
        connect(&reg, StreamKind::Aggregated, "side-1", "sidecar"),
        connect(&reg, StreamKind::Aggregated, "open-1", "open"),
    ];
    let pattern = |p: &str| vec![IdentityPattern::parse(p).expect("pattern")];
    let policy = Arc::new(IdentityPolicy::new(
        [
            ("edge".to_owned(), pattern("spiffe://t/ns/edge/*")),
            ("sidecar".to_owned(), pattern("*.sidecar.example")),
        ]
        .into_iter()
        .collect(),
    ));
    let seen = |identity: PeerIdentity| {
        let selector = Selector::parse(&[], 64)
            .expect("supported")
            .visible_to(policy.clone(), identity);
        ids(&answer(&reg, &snap, &selector))
    };
    assert_eq!(
        seen(PeerIdentity::Spiffe("spiffe://t/ns/edge/a".into())),
        ["edge-1", "open-1"]
    );
    assert_eq!(
        seen(PeerIdentity::Dns(vec!["a.sidecar.example".into()])),
        ["open-1", "side-1"]
    );
    assert_eq!(seen(PeerIdentity::Dns(vec![])), ["open-1"]);
    assert_eq!(seen(PeerIdentity::Unauthenticated), ["open-1"]);
}

#[test]
fn matchers_select_by_id_and_group() {
    use string_matcher::MatchPattern as P;
    let reg = ProxyRegistry::new();
    let snap = snapshot("v1", group(&["a"], "a"), None);
    let _h = [
        connect(&reg, StreamKind::Aggregated, "edge-1", "edge"),
        connect(&reg, StreamKind::Aggregated, "edge-2", "edge"),
        connect(&reg, StreamKind::Aggregated, "Canary-1", "canary"),
    ];
    let pick = |matchers: Vec<NodeMatcher>| {
        let selector = Selector::parse(&matchers, 64).expect("supported");
        ids(&answer(&reg, &snap, &selector))
    };
    assert_eq!(pick(vec![]), ["Canary-1", "edge-1", "edge-2"]);
    assert_eq!(pick(vec![by_id(P::Exact("edge-2".into()))]), ["edge-2"]);
    assert_eq!(pick(vec![by_id(P::Exact("edge".into()))]), [] as [&str; 0]);
    assert_eq!(
        pick(vec![by_id(P::Prefix("edge-".into()))]),
        ["edge-1", "edge-2"]
    );
    assert_eq!(
        pick(vec![by_id(P::Suffix("-1".into()))]),
        ["Canary-1", "edge-1"]
    );
    assert_eq!(
        pick(vec![by_id(P::Contains("ge-".into()))]),
        ["edge-1", "edge-2"]
    );
    let mut loose = by_id(P::Prefix("canary".into()));
    assert_eq!(pick(vec![loose.clone()]), [] as [&str; 0]);
    if let Some(m) = loose.node_id.as_mut() {
        m.ignore_case = true;
    }
    assert_eq!(pick(vec![loose]), ["Canary-1"]);
    assert_eq!(pick(vec![by_group("canary")]), ["Canary-1"]);
    assert_eq!(pick(vec![by_group("edge")]), ["edge-1", "edge-2"]);
    // Several matchers: any; the parts of one: all.
    assert_eq!(
        pick(vec![by_group("canary"), by_id(P::Exact("edge-1".into()))]),
        ["Canary-1", "edge-1"]
    );
    let both = NodeMatcher {
        node_id: Some(string(P::Suffix("-1".into()))),
        node_metadatas: vec![group_is(GROUP_KEY, "edge")],
    };
    assert_eq!(pick(vec![both]), ["edge-1"]);
}

#[test]
fn unsupported_matchers_are_refused_not_ignored() {
    use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
    let regex = by_id(string_matcher::MatchPattern::SafeRegex(RegexMatcher {
        regex: ".*".into(),
        ..Default::default()
    }));
    let metadata = NodeMatcher {
        node_id: None,
        node_metadatas: vec![group_is("istio.version", "1.20")],
    };
    let no_pattern = NodeMatcher {
        node_id: Some(StringMatcher::default()),
        node_metadatas: vec![],
    };
    for (m, says) in [
        (regex, "node_matchers[0].node_id: safe_regex"),
        (
            metadata,
            "node_matchers[0].node_metadatas[0]: only the path",
        ),
        (no_pattern, "no pattern"),
    ] {
        let e = Selector::parse(&[m], 64).expect_err("refused");
        assert!(matches!(e, CsdsError::Unsupported(_)), "{e}");
        assert!(e.to_string().contains(says), "{e}");
        assert_eq!(Status::from(e).code(), tonic::Code::InvalidArgument);
    }
}

#[test]
fn too_many_matchers_are_refused_naming_the_flag() {
    let matchers = vec![by_group("edge"); 3];
    assert!(Selector::parse(&matchers, 3).is_ok());
    let e = Selector::parse(&matchers[..], 2).expect_err("over");
    let status = Status::from(e);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("--max-csds-matchers"),
        "{status:?}"
    );
}

#[test]
fn an_answer_over_its_limit_is_refused_naming_the_flag() {
    let reg = ProxyRegistry::new();
    let snap = snapshot("v1", group(&["a", "b", "c"], "a"), None);
    let handles: Vec<StreamHandle> = (0..10)
        .map(|i| {
            let h = connect(&reg, StreamKind::Aggregated, &format!("p{i}"), "edge");
            h.record(&[sent(ResourceType::Cluster, "v1")]);
            h
        })
        .collect();
    let whole = client_status(&reg.proxies(), &snap, &all(), true, NO_LIMIT).expect("ok");
    assert_eq!(whole.config.len(), handles.len());
    let lean = client_status(&reg.proxies(), &snap, &all(), false, NO_LIMIT).expect("ok");
    // Room for the lean answer (and the allowance for each entry's
    // framing), not for the contents.
    let max = lean.encoded_len() + 8 * handles.len();
    assert!(whole.encoded_len() > max + 1000, "the contents weigh");
    let e = client_status(&reg.proxies(), &snap, &all(), true, max).expect_err("over");
    let status = Status::from(e);
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert!(
        status.message().contains("--max-csds-response-bytes"),
        "{status:?}"
    );
    assert!(status.message().contains("of 10 proxies"), "{status:?}");
    // Without contents the same proxies fit.
    let fits = client_status(&reg.proxies(), &snap, &all(), false, max).expect("fits");
    assert_eq!(fits.config.len(), 10);
}

#[tokio::test]
async fn the_service_answers_from_the_registry_and_the_served_snapshot() {
    let reg = ProxyRegistry::new();
    let (mut writer, reader) = crate::xds::snapshot_store::snapshot_store();
    let mut input = crate::xds::snapshot::SnapshotInput::default();
    input.groups.insert("edge".into(), group(&["a"], "a"));
    writer.publish("v1", &input).expect("valid");
    let h = connect(&reg, StreamKind::Aggregated, "p1", "edge");
    h.record(&[
        sent(ResourceType::Cluster, "v1"),
        acked(ResourceType::Cluster, "v1"),
    ]);
    let (_trigger, shutdown) = crate::shutdown::shutdown_channel();
    let csds = ClientStatus::new(reg, reader, CsdsLimits::default(), shutdown);
    let r = csds
        .answer(
            &ClientStatusRequest::default(),
            &PeerIdentity::Unauthenticated,
        )
        .await
        .expect("answer");
    let cds = entries(&r, ResourceType::Cluster);
    assert_eq!(cds[0].name, "a");
    assert_eq!(status(cds[0]).0, ConfigStatus::Synced);
    let refused = csds
        .answer(
            &ClientStatusRequest {
                node_matchers: vec![by_group("edge"); 65],
                ..Default::default()
            },
            &PeerIdentity::Unauthenticated,
        )
        .await
        .expect_err("over the default of 64");
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
}
