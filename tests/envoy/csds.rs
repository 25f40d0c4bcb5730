//! CSDS against real Envoys, asked by a real CSDS client: Envoy's own
//! generated Python stubs (PyPI `xds-protos`) over grpcio, in
//! `tests/support/csds_client.py`.
//!
//! Needs Envoy 1.40 and `python3` with `xds-protos` (`python3 -m pip install
//! xds-protos==1.76.0`, which `.ci/run` installs); without them these tests
//! fail, they do not skip.

use std::net::SocketAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::r#type::matcher::v3::{RegexMatchAndSubstitute, RegexMatcher};
use serde_json::Value;
use teal::serve::{ServeOptions, start as serve_start};
use teal::shutdown::shutdown_channel;
use teal::xds::resources::ResourceType;

use crate::support;
use crate::support::resources::{http_group, route_config, to_cluster, weighted};
use crate::support::{CONVERGE, Envoy, Protocol, Teal, Upstream, find, free_port, snapshot};

const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/csds_client.py");

/// Runs the CSDS client against `addr` with `args`; its JSON and whether
/// the call succeeded.
async fn csds(addr: &str, args: &[&str]) -> (Value, bool) {
    let out = tokio::process::Command::new("python3")
        .arg(CLIENT)
        .arg(addr)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| panic!("run python3 {CLIENT}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "the CSDS client printed no JSON ({e}); it needs python3 with xds-protos \
             (python3 -m pip install xds-protos==1.76.0):\n{}",
            support::show(&out)
        )
    });
    match out.status.code() {
        Some(0) => (json, true),
        Some(2) => (json, false),
        _ => panic!("the CSDS client failed:\n{}", support::show(&out)),
    }
}

/// The node ids in a `ClientStatusResponse`.
fn ids(r: &Value) -> Vec<&str> {
    configs(r)
        .iter()
        .map(|c| c["node"]["id"].as_str().unwrap_or(""))
        .collect()
}

fn configs(r: &Value) -> &[Value] {
    r["config"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// The `generic_xds_configs` of type `ty` of proxy `id`.
fn entries<'a>(r: &'a Value, id: &str, ty: ResourceType) -> Vec<&'a Value> {
    let config = configs(r)
        .iter()
        .find(|c| c["node"]["id"] == id)
        .unwrap_or_else(|| panic!("{id} is not in {r:#}"));
    config["generic_xds_configs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter(|g| g["type_url"] == ty.type_url())
        .collect()
}

/// A route configuration Envoy rejects: it rewrites paths with the regex
/// `(`, which RE2 does not compile (Envoy 1.40 says `missing ): (`).
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

/// Two Envoys in two groups; v2 gives `canary` a route its Envoy rejects.
/// The CSDS client then sees, on teal's xDS port: the edge Envoy SYNCED at
/// the versions it was served, with the resources; the canary Envoy's
/// routes ERROR/NACKED with Envoy's reason and the rejected version; and
/// node matchers by id and group select the right proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_csds_client_sees_a_synced_and_a_nacking_envoy() {
    let blue = Upstream::start("blue").await;
    let mut teal = Teal::start().await;
    let (edge_port, canary_port) = (free_port(), free_port());
    let upstreams = [("blue", blue.port)];
    let served = |edge: RouteConfiguration, canary: RouteConfiguration| {
        snapshot([
            ("edge", http_group("ingress", edge_port, edge, &upstreams)),
            (
                "canary",
                http_group("ingress", canary_port, canary, &upstreams),
            ),
        ])
    };
    let good = || route_config("ingress", to_cluster("blue"));
    teal.publish("v1", &served(good(), good()));
    let edge = Envoy::start(&teal, "edge", Protocol::Sotw).await;
    let canary = Envoy::start(&teal, "canary", Protocol::Delta).await;
    edge.wait_for_body(edge_port, "blue").await;
    canary.wait_for_body(canary_port, "blue").await;
    teal.wait_acked(&edge.node_id, ResourceType::Route, "v1")
        .await;
    teal.wait_acked(&canary.node_id, ResourceType::Route, "v1")
        .await;

    teal.publish(
        "v2",
        &served(
            route_config("ingress", weighted(&[("blue", 100)])),
            route_with_bad_regex("ingress", "blue"),
        ),
    );
    teal.wait_acked(&edge.node_id, ResourceType::Route, "v2")
        .await;
    teal.wait_for(CONVERGE, "the canary NACKs v2's routes", |all| {
        find(all, &canary.node_id).is_some_and(|p| p.of(ResourceType::Route).last_was_nacked())
    })
    .await;

    let addr = format!("127.0.0.1:{}", teal.port);
    let (all, ok) = csds(&addr, &[]).await;
    assert!(ok, "{all:#}");
    let mut expected = vec![edge.node_id.as_str(), canary.node_id.as_str()];
    expected.sort_unstable();
    assert_eq!(ids(&all), expected, "every proxy, by node id: {all:#}");

    // The edge Envoy: every type SYNCED at the version it was served, with
    // what was served.
    let config = configs(&all)
        .iter()
        .find(|c| c["node"]["id"] == edge.node_id.as_str())
        .expect("edge is listed");
    assert_eq!(config["node"]["cluster"], "edge");
    for (ty, version) in [
        (ResourceType::Cluster, "v1"),
        (ResourceType::Endpoint, "v1"),
        (ResourceType::Listener, "v1"),
        (ResourceType::Route, "v2"),
    ] {
        let e = entries(&all, &edge.node_id, ty);
        assert_eq!(e.len(), 1, "{ty}: {all:#}");
        assert_eq!(e[0]["config_status"], "SYNCED", "{ty}: {all:#}");
        assert_eq!(e[0]["client_status"], "ACKED", "{ty}: {all:#}");
        assert_eq!(e[0]["version_info"], version, "{ty}: {all:#}");
        assert!(e[0].get("error_state").is_none(), "{ty}: {all:#}");
    }
    let route = &entries(&all, &edge.node_id, ResourceType::Route)[0];
    assert_eq!(route["name"], "ingress");
    assert_eq!(
        route["xds_config"]["@type"],
        "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
    );
    assert_eq!(
        route["xds_config"]["virtual_hosts"][0]["routes"][0]["route"]["weighted_clusters"]["clusters"]
            [0]["name"],
        "blue",
        "the v2 route as served: {route:#}"
    );

    // The canary Envoy: routes NACKed with Envoy's own reason, the rest
    // SYNCED.
    let rds = entries(&all, &canary.node_id, ResourceType::Route);
    assert_eq!(rds.len(), 1, "{all:#}");
    assert_eq!(rds[0]["config_status"], "ERROR", "{all:#}");
    assert_eq!(rds[0]["client_status"], "NACKED", "{all:#}");
    assert_eq!(rds[0]["version_info"], "v2", "the version rejected");
    let error = &rds[0]["error_state"];
    assert_eq!(error["version_info"], "v2", "{all:#}");
    let details = error["details"].as_str().unwrap_or_default();
    assert!(
        details.contains("missing ): ("),
        "Envoy's reason (RE2's \"missing ): (\"), got {details:?}"
    );
    assert!(error["last_update_attempt"].is_string(), "{all:#}");
    for ty in [ResourceType::Cluster, ResourceType::Listener] {
        let e = entries(&all, &canary.node_id, ty);
        assert_eq!(e[0]["config_status"], "SYNCED", "{ty}: {all:#}");
    }

    // Matchers: by id (exact, prefix), by group; none matching is empty.
    let (r, _) = csds(&addr, &["--id-exact", &canary.node_id]).await;
    assert_eq!(ids(&r), [canary.node_id.as_str()]);
    let (r, _) = csds(&addr, &["--id-prefix", &edge.node_id]).await;
    assert_eq!(ids(&r), [edge.node_id.as_str()]);
    let (r, _) = csds(&addr, &["--group", "canary"]).await;
    assert_eq!(ids(&r), [canary.node_id.as_str()]);
    let (r, _) = csds(&addr, &["--group", "edge", "--id-exact", &canary.node_id]).await;
    assert_eq!(ids(&r), expected, "any matcher selects");
    let (r, ok) = csds(&addr, &["--group", "nobody"]).await;
    assert!(ok && ids(&r).is_empty(), "{r:#}");

    // Without contents: the same states, no resources.
    let (r, _) = csds(&addr, &["--no-contents", "--group", "edge"]).await;
    let route = &entries(&r, &edge.node_id, ResourceType::Route)[0];
    assert_eq!(route["config_status"], "SYNCED");
    assert!(route.get("xds_config").is_none(), "{route:#}");

    // StreamClientStatus: one answer per request.
    let (r, ok) = csds(&addr, &["--stream", "3", "--id-exact", &edge.node_id]).await;
    assert!(ok, "{r:#}");
    let answers = r.as_array().expect("a list of answers");
    assert_eq!(answers.len(), 3);
    for a in answers {
        assert_eq!(ids(a), [edge.node_id.as_str()]);
    }

    // Past the limits: RESOURCE_EXHAUSTED naming the flag.
    let many: Vec<&str> = std::iter::repeat_n(["--group", "edge"], 65)
        .flatten()
        .collect();
    let (r, ok) = csds(&addr, &many).await;
    assert!(!ok, "{r:#}");
    assert_eq!(r["error"], "RESOURCE_EXHAUSTED", "{r:#}");
    assert!(
        r["message"]
            .as_str()
            .unwrap_or_default()
            .contains("--max-csds-matchers"),
        "{r:#}"
    );
    let huge = "x".repeat(70 * 1024);
    for stream in [&[][..], &["--stream", "1"]] {
        let mut args = vec!["--id-exact", huge.as_str()];
        args.extend_from_slice(stream);
        let (r, ok) = csds(&addr, &args).await;
        assert!(!ok, "{r:#}");
        assert_eq!(r["error"], "RESOURCE_EXHAUSTED", "{stream:?}: {r:#}");
        assert!(
            r["message"]
                .as_str()
                .unwrap_or_default()
                .contains("--max-csds-request-bytes"),
            "{stream:?}: {r:#}"
        );
    }
}

/// `teal serve` answers CSDS on its admin port too, from the same
/// registry: a proxy (here a bare ADS client that ACKs) is listed there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teal_serve_answers_csds_on_the_admin_port_too() {
    let (_trigger, shutdown) = shutdown_channel();
    let running = serve_start(ServeOptions::local(None), shutdown)
        .await
        .expect("starts on the bundled config");
    let xds: SocketAddr = running.xds_addr;
    let admin = running.admin_addr.to_string();

    let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{xds}"))
        .await
        .expect("connect to the xDS port");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let node = Node {
        id: "ads-client-1".into(),
        cluster: "edge".into(),
        ..Default::default()
    };
    let request = DiscoveryRequest {
        node: Some(node),
        type_url: ResourceType::Cluster.type_url().into(),
        ..Default::default()
    };
    tx.send(request.clone()).await.expect("queued");
    let mut responses = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("ADS stream")
        .into_inner();
    let first = tokio::time::timeout(CONVERGE, responses.message())
        .await
        .expect("a response in time")
        .expect("a response")
        .expect("not the end");
    tx.send(DiscoveryRequest {
        version_info: first.version_info.clone(),
        response_nonce: first.nonce.clone(),
        ..request
    })
    .await
    .expect("ACK queued");

    let deadline = tokio::time::Instant::now() + CONVERGE;
    let answer = loop {
        let (r, ok) = csds(&admin, &[]).await;
        let synced = ok
            && entries(&r, "ads-client-1", ResourceType::Cluster)
                .iter()
                .all(|e| {
                    e["config_status"] == "SYNCED"
                        && e["version_info"] == first.version_info.as_str()
                });
        if synced {
            break r;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "CSDS on the admin port never showed the ACK: {r:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ids(&answer), ["ads-client-1"]);
    assert!(
        !entries(&answer, "ads-client-1", ResourceType::Cluster).is_empty(),
        "{answer:#}"
    );
    // The types the ADS client never asked for are listed as NOT_SENT.
    let routes = entries(&answer, "ads-client-1", ResourceType::Route);
    assert_eq!(routes.len(), 1);
    assert_eq!(routes[0]["config_status"], "NOT_SENT");
    // The xDS port says the same.
    let (r, _) = csds(&xds.to_string(), &["--id-exact", "ads-client-1"]).await;
    assert_eq!(ids(&r), ["ads-client-1"]);
}
