//! The seam for endpoints from outside the file: EDS-only changes, the
//! guards, reloads keeping them.

use std::time::Duration;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

use super::*;
use crate::config::Endpoint;
use crate::rollout::Outcome;
use crate::snapshot_store::snapshot_store;
use crate::state::MemoryStore;

/// `web`: blue in the file, green registered (empty at first).
pub(super) const CONFIG: &str = r#"
services:
  web:
    live: blue
    fleets:
      blue: {endpoints: [127.0.0.1:1]}
      green: {endpoints: registered}
groups:
  edge:
    listeners:
      public:
        kind: edge
        address: 127.0.0.1:10000
        virtual_hosts:
          all:
            domains: ["*"]
            routes:
              - {prefix: /, service: web}
"#;

pub(super) async fn controller(
    store: Arc<MemoryStore>,
) -> (Controller, crate::shutdown::ShutdownTrigger) {
    let (writer, _reader) = snapshot_store();
    let (trigger, shutdown) = crate::shutdown::shutdown_channel();
    let config = Config::parse(CONFIG, "test.yaml").expect("valid test config");
    let (c, _task) = start(
        config,
        writer,
        store,
        ProxyRegistry::new(),
        Arc::new(Metrics::new()),
        shutdown,
    )
    .await
    .expect("controller starts");
    (c, trigger)
}

pub(super) fn ep(addr: &str) -> Endpoint {
    Endpoint {
        address: addr.parse().expect("test address"),
        weight: 1,
        zone: None,
    }
}

/// The addresses EDS serves for `cluster` in the edge group.
pub(super) fn served(c: &Controller, cluster: &str) -> Vec<String> {
    let snap = c.snapshot();
    let Some(res) = snap
        .group("edge")
        .of(ResourceType::Endpoint)
        .get(cluster)
        .cloned()
    else {
        return Vec::new();
    };
    let cla: ClusterLoadAssignment = res.decode().expect("decodes");
    cla.endpoints
        .iter()
        .flat_map(|l| &l.lb_endpoints)
        .filter_map(|e| match &e.host_identifier {
            Some(envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier::Endpoint(e)) => {
                e.address.as_ref()
            }
            _ => None,
        })
        .filter_map(|a| match &a.address {
            Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s)) => {
                let port = match s.port_specifier {
                    Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) => p,
                    _ => 0,
                };
                Some(format!("{}:{port}", s.address))
            }
            _ => None,
        })
        .collect()
}

pub(super) async fn outcome(mut rx: watch::Receiver<Progress>) -> Outcome {
    let p = tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|p| p.outcome.is_some()),
    )
    .await
    .expect("finishes in time")
    .expect("progress channel open")
    .clone();
    p.outcome.expect("outcome set")
}

pub(super) fn flip_to_green() -> Operation {
    Operation::Flip {
        service: "web".into(),
        to: Some("green".into()),
        skip_checks: true,
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn endpoint_changes_move_only_eds_versions() {
    let (c, _t) = controller(Arc::new(MemoryStore::default())).await;
    assert!(served(&c, "web-green").is_empty());
    let before = c.snapshot().labels();
    let version = c
        .set_fleet_endpoints("web", "green", vec![ep("127.0.0.1:2"), ep("127.0.0.1:3")])
        .await
        .expect("set");
    assert_eq!(c.snapshot().version(), version.to_string());
    assert_eq!(served(&c, "web-green"), ["127.0.0.1:2", "127.0.0.1:3"]);
    let after = c.snapshot().labels();
    let (b, a) = (&before["edge"], &after["edge"]);
    assert_ne!(b["EDS"], a["EDS"], "endpoints changed");
    for ty in ["CDS", "LDS", "RDS"] {
        assert_eq!(b[ty], a[ty], "{ty} must not move on an endpoint change");
    }
    // The same set again is no change at all.
    let again = c
        .set_fleet_endpoints("web", "green", vec![ep("127.0.0.1:2"), ep("127.0.0.1:3")])
        .await
        .expect("set");
    assert_eq!(again, version);
}

#[tokio::test]
async fn a_flip_to_an_empty_fleet_is_refused_until_it_has_endpoints() {
    let (c, _t) = controller(Arc::new(MemoryStore::default())).await;
    let err = c.start(flip_to_green(), "ci").await.expect_err("refused");
    assert!(matches!(err, RolloutError::Precondition(_)), "{err:?}");
    assert!(err.to_string().contains("no endpoints"), "{err}");

    c.set_fleet_endpoints("web", "green", vec![ep("127.0.0.1:2")])
        .await
        .expect("set");
    let rx = c.start(flip_to_green(), "ci").await.expect("starts");
    assert_eq!(outcome(rx).await, Outcome::Succeeded);
    let status = c.status(Some("web")).await.expect("status");
    assert_eq!(status.services[0].live, "green");
}

#[tokio::test]
async fn bad_sets_and_file_fleets_are_refused_whole() {
    let (c, _t) = controller(Arc::new(MemoryStore::default())).await;
    let version = c.snapshot().version().to_owned();
    let err = c
        .set_fleet_endpoints("web", "blue", vec![ep("127.0.0.1:2")])
        .await
        .expect_err("a file fleet");
    assert!(matches!(err, RolloutError::Precondition(_)), "{err:?}");
    let err = c
        .set_fleet_endpoints("web", "green", vec![ep("127.0.0.1:2"), ep("127.0.0.1:2")])
        .await
        .expect_err("a duplicate");
    assert!(matches!(err, RolloutError::Invalid(_)), "{err:?}");
    let err = c
        .set_fleet_endpoints("web", "red", vec![ep("127.0.0.1:2")])
        .await
        .expect_err("no such fleet");
    assert!(matches!(err, RolloutError::UnknownFleet { .. }), "{err:?}");
    let many: Vec<Endpoint> = (1..=1001).map(|p| ep(&format!("127.0.0.1:{p}"))).collect();
    let err = c
        .set_fleet_endpoints("web", "green", many)
        .await
        .expect_err("over the limit");
    assert!(err.to_string().contains("--max-fleet-endpoints"), "{err}");
    assert_eq!(c.snapshot().version(), version, "nothing was served");
    assert!(served(&c, "web-green").is_empty());
}

#[tokio::test]
async fn a_reload_keeps_endpoints_from_outside_the_file() {
    let (c, _t) = controller(Arc::new(MemoryStore::default())).await;
    c.set_fleet_endpoints("web", "green", vec![ep("127.0.0.1:2")])
        .await
        .expect("set");
    let reloaded = CONFIG.replace("127.0.0.1:1]", "127.0.0.1:1, 127.0.0.1:9]");
    let config = Config::parse(&reloaded, "test.yaml").expect("valid");
    let out = c.reload(config).await.expect("applied");
    assert!(matches!(out, Reloaded::Applied { .. }), "{out:?}");
    assert_eq!(served(&c, "web-blue"), ["127.0.0.1:1", "127.0.0.1:9"]);
    assert_eq!(served(&c, "web-green"), ["127.0.0.1:2"]);
}
