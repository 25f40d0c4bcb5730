//! The seam for endpoints from outside the file: EDS-only changes, the
//! guards, reloads keeping them.

use std::time::Duration;

use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;

use super::*;
use crate::config::{Endpoint, fixtures};
use crate::controller::*;
use crate::rollout::{Outcome, Reason};
use crate::state::MemoryStore;
use crate::xds::resources::ResourceType;
use crate::xds::snapshot_store::snapshot_store;

/// `web`: blue in the file, green registered (empty at first).
fn config() -> fixtures::ConfigFixture {
    fixtures::web().fleet("web", "green", "endpoints: registered")
}

pub(super) async fn controller(
    store: Arc<MemoryStore>,
) -> (Controller, crate::shutdown::ShutdownTrigger) {
    let (writer, _reader) = snapshot_store();
    let (trigger, shutdown) = crate::shutdown::shutdown_channel();
    let config = config().config();
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
    assert!(matches!(err, RolloutError::Limit(_)), "{err:?}");
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
    let stored = c.fleet("web", "green").await.expect("show");
    assert_eq!(
        stored.endpoints.len(),
        1,
        "a registered fleet's set is durable"
    );
    let config = config()
        .fleet("web", "blue", "endpoints: [127.0.0.1:1, 127.0.0.1:9]")
        .config();
    let out = c.reload(config).await.expect("applied");
    assert!(matches!(out, Reloaded::Applied { .. }), "{out:?}");
    assert_eq!(served(&c, "web-blue"), ["127.0.0.1:1", "127.0.0.1:9"]);
    assert_eq!(served(&c, "web-green"), ["127.0.0.1:2"]);
}

use crate::rollout::registration::{EndpointVerb, Registered, Request};

fn reg(addr: &str) -> Registered {
    Registered {
        address: addr.parse().expect("test address"),
        weight: 1,
        zone: None,
        expires: None,
    }
}

fn set(addrs: &[&str]) -> Request {
    Request::Set(addrs.iter().map(|a| reg(a)).collect())
}

#[tokio::test]
async fn registrations_are_durable_logged_and_survive_a_restart() {
    let store = Arc::new(MemoryStore::default());
    let (c, t) = controller(store.clone()).await;
    let view = c
        .change_fleet(
            "web",
            "green",
            set(&["127.0.0.1:2", "127.0.0.1:3"]),
            false,
            "ci",
        )
        .await
        .expect("set");
    assert_eq!(view.endpoints.len(), 2);
    assert_eq!(view.source, "registered");
    assert_eq!(view.changes[0].actor, "ci");
    assert_eq!(view.changes[0].verb, EndpointVerb::Set);
    assert_eq!(served(&c, "web-green"), ["127.0.0.1:2", "127.0.0.1:3"]);
    let version = c.snapshot().version().to_owned();
    let stored = store.load().await.expect("load").expect("saved");
    assert_eq!(stored.state.registered.get("web", "green").len(), 2);

    t.trigger();
    drop(c);
    let (again, _t) = controller(store).await;
    assert_eq!(served(&again, "web-green"), ["127.0.0.1:2", "127.0.0.1:3"]);
    assert_eq!(
        again.snapshot().version(),
        version,
        "same content, same version"
    );
    let view = again.fleet("web", "green").await.expect("show");
    assert_eq!(view.changes.len(), 1);
}

#[tokio::test]
async fn the_last_endpoint_of_a_fleet_with_traffic_goes_only_with_force() {
    let (c, _t) = controller(Arc::new(MemoryStore::default())).await;
    c.change_fleet("web", "green", set(&["127.0.0.1:2"]), false, "ci")
        .await
        .expect("set");
    let rx = c.start(flip_to_green(), "ci").await.expect("flip");
    assert_eq!(outcome(rx).await, Outcome::Succeeded);
    let remove = || Request::Remove(vec!["127.0.0.1:2".parse().expect("addr")]);
    let err = c
        .change_fleet("web", "green", remove(), false, "ci")
        .await
        .expect_err("refused");
    assert!(matches!(err, RolloutError::Precondition(_)), "{err:?}");
    assert!(err.to_string().contains("--force"), "{err}");
    let err = c
        .change_fleet("web", "green", set(&[]), false, "ci")
        .await
        .expect_err("an empty set too");
    assert!(matches!(err, RolloutError::Precondition(_)), "{err:?}");
    assert_eq!(served(&c, "web-green"), ["127.0.0.1:2"]);
    c.change_fleet("web", "green", remove(), true, "ci")
        .await
        .expect("forced");
    assert!(served(&c, "web-green").is_empty());
    // The file's fleets are not the API's to change.
    let err = c
        .change_fleet("web", "blue", set(&["127.0.0.1:5"]), false, "ci")
        .await
        .expect_err("file fleet");
    assert!(matches!(err, RolloutError::Precondition(_)), "{err:?}");
}

#[tokio::test]
async fn a_registration_leaves_eds_when_its_ttl_runs_out() {
    let (c, _t) = controller(Arc::new(MemoryStore::default())).await;
    let register = Request::Register {
        endpoints: vec![reg("127.0.0.1:7")],
        ttl: Duration::from_secs(1),
    };
    let view = c
        .change_fleet("web", "green", register, false, "instance")
        .await
        .expect("registered");
    assert!(view.endpoints[0].expires.is_some());
    assert_eq!(served(&c, "web-green"), ["127.0.0.1:7"]);
    // Generous: the TTL is 1s; a regression shows as never.
    let gone = async {
        while !served(&c, "web-green").is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("expired in time");
    let view = c.fleet("web", "green").await.expect("show");
    assert_eq!(view.changes[0].verb, EndpointVerb::Expire);
    assert_eq!(view.changes[0].actor, "teal");
}

#[tokio::test]
async fn an_endpoint_change_during_a_shift_loses_neither() {
    let (c, _t) = controller(Arc::new(MemoryStore::default())).await;
    c.change_fleet("web", "green", set(&["127.0.0.1:2"]), false, "ci")
        .await
        .expect("set");
    // A shift to 10% then 100%, an hour apart: it waits after step 1.
    let op = Operation::Shift {
        service: "web".into(),
        steps: crate::rollout::ShiftSteps::Percents {
            to: Some("green".into()),
            percents: vec![10, 100],
        },
        interval: Duration::from_secs(3600),
        skip_checks: true,
        timeout: Duration::from_secs(5),
    };
    let mut rx = c.start(op, "ci").await.expect("shift");
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|p| p.phase == crate::rollout::Phase::Waiting),
    )
    .await
    .expect("step 1 in time")
    .expect("open");
    c.change_fleet(
        "web",
        "green",
        set(&["127.0.0.1:2", "127.0.0.1:3"]),
        false,
        "ci",
    )
    .await
    .expect("set during the shift");
    let status = c.status(Some("web")).await.expect("status");
    assert_eq!(
        status.services[0].weights["green"], 10,
        "the shift's step stays"
    );
    assert_eq!(served(&c, "web-green"), ["127.0.0.1:2", "127.0.0.1:3"]);
    let id = rx.borrow().id;
    c.abort(id, "ci").await.expect("abort");
    assert_eq!(
        served(&c, "web-green"),
        ["127.0.0.1:2", "127.0.0.1:3"],
        "the endpoints stay"
    );
}

#[tokio::test]
async fn heartbeats_renew_registrations_and_refuse_strangers() {
    let (c, _t) = controller(Arc::new(MemoryStore::default())).await;
    let register = Request::Register {
        endpoints: vec![reg("127.0.0.1:7")],
        ttl: Duration::from_secs(30),
    };
    let first = c
        .change_fleet("web", "green", register, false, "instance")
        .await
        .expect("registered");
    let version = c.snapshot().version().to_owned();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let beat = |a: &str| Request::Heartbeat {
        addresses: vec![a.parse().expect("addr")],
        ttl: Duration::from_secs(30),
    };
    let renewed = c
        .change_fleet("web", "green", beat("127.0.0.1:7"), false, "instance")
        .await
        .expect("renewed");
    assert!(renewed.endpoints[0].expires > first.endpoints[0].expires);
    assert_eq!(
        c.snapshot().version(),
        version,
        "a renewal spends no version"
    );
    assert_eq!(renewed.changes.len(), 1, "a renewal is not logged");
    let err = c
        .change_fleet("web", "green", beat("127.0.0.1:8"), false, "instance")
        .await
        .expect_err("not registered");
    assert!(matches!(err, RolloutError::Precondition(_)), "{err:?}");
}

#[tokio::test]
async fn a_rollouts_checks_run_against_the_registered_endpoints() {
    let (writer, _reader) = snapshot_store();
    let (_trigger, shutdown) = crate::shutdown::shutdown_channel();
    // Nothing listens on port 2: green's check fails there, and only there.
    let config = config()
        .checks("web", "home: {path: /, timeout: 200ms}")
        .config();
    let (c, _task) = start(
        config,
        writer,
        Arc::new(MemoryStore::default()),
        ProxyRegistry::new(),
        Arc::new(Metrics::new()),
        shutdown,
    )
    .await
    .expect("starts");
    c.set_fleet_endpoints("web", "green", vec![ep("127.0.0.1:2")])
        .await
        .expect("set");
    let op = Operation::Flip {
        service: "web".into(),
        to: Some("green".into()),
        skip_checks: false,
        timeout: Duration::from_secs(5),
    };
    let rx = c.start(op, "ci").await.expect("starts");
    let out = outcome(rx).await;
    assert!(
        matches!(&out, Outcome::Refused { reason: Reason::ChecksFailed { after_switch: false, failed } }
            if failed.iter().map(|r| r.endpoint.as_str()).eq(["127.0.0.1:2"])),
        "the check ran against the registered endpoint: {out:?}"
    );
    let checks = c.verify("web", "green").await.expect("verify");
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert_eq!(checks[0].endpoint, "127.0.0.1:2");
}

#[tokio::test]
async fn registrations_of_a_fleet_back_in_the_file_expire_quietly() {
    let store = Arc::new(MemoryStore::default());
    let (c, _t) = controller(store.clone()).await;
    let register = Request::Register {
        endpoints: vec![reg("127.0.0.1:7")],
        ttl: Duration::from_secs(1),
    };
    c.change_fleet("web", "green", register, false, "instance")
        .await
        .expect("registered");
    // green goes back to the file before its registration runs out.
    let back = config().fleet("web", "green", "endpoints: [127.0.0.1:4]");
    let out = c.reload(back.config()).await.expect("applied");
    assert!(matches!(out, Reloaded::Applied { .. }), "{out:?}");
    assert_eq!(served(&c, "web-green"), ["127.0.0.1:4"]);
    // Generous: the TTL is 1s; a regression shows as never.
    let gone = async {
        loop {
            let stored = store.load().await.expect("load").expect("saved");
            if stored.state.registered.get("web", "green").is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), gone)
        .await
        .expect("the stale registration left the state");
    assert_eq!(served(&c, "web-green"), ["127.0.0.1:4"]);
}

#[tokio::test]
async fn a_replica_serves_the_registrations_another_saved() {
    // Two replicas on one store (clones of a watchable store act as a
    // shared one): registrations travel in the stored state, so the other
    // replica renders the same endpoints under the same version.
    let store = MemoryStore::watchable();
    let (a, _ta) = controller(Arc::new(store.clone())).await;
    let (b, _tb) = controller(Arc::new(store.clone())).await;
    // `b` saved at its start; `a` sees that save through the watch, and
    // until then its compare-and-swap fails and is asked again.
    let mut tries = 0;
    while let Err(e) = a
        .change_fleet("web", "green", set(&["127.0.0.1:2"]), false, "ci")
        .await
    {
        tries += 1;
        assert!(matches!(e, RolloutError::Store(_)) && tries < 100, "{e:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let version = a.snapshot().version().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while b.snapshot().version() != version {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the other replica still serves {} instead of {version}",
            b.snapshot().version()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(served(&b, "web-green"), ["127.0.0.1:2"]);
    // And the next change builds on them there too.
    b.change_fleet(
        "web",
        "green",
        Request::Add(vec![reg("127.0.0.1:3")]),
        false,
        "ci",
    )
    .await
    .expect("added on the other replica");
    assert_eq!(served(&b, "web-green"), ["127.0.0.1:2", "127.0.0.1:3"]);
}
