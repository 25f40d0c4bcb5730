use std::time::Duration;

use super::*;
use crate::rollout::Outcome;
use crate::snapshot_store::snapshot_store;
use crate::state::MemoryStore;

/// Two services; `web` has checks against a port nothing listens on, so
/// its checks fail; `api` has none.
const CONFIG: &str = r#"
services:
  web:
    live: blue
    fleets:
      blue: {endpoints: [127.0.0.1:1]}
      green: {endpoints: [127.0.0.1:2]}
    checks:
      home: {path: /, status: 200, timeout: 200ms}
  api:
    live: blue
    fleets:
      blue: {endpoints: [127.0.0.1:3]}
      green: {endpoints: [127.0.0.1:4]}
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
              - {prefix: /api/, service: api}
              - {prefix: /, service: web}
"#;

fn config() -> Config {
    Config::parse(CONFIG, "test.yaml").expect("valid test config")
}

async fn controller(store: Arc<MemoryStore>) -> (Controller, crate::shutdown::ShutdownTrigger) {
    let (writer, _reader) = snapshot_store();
    let (trigger, shutdown) = crate::shutdown::shutdown_channel();
    let metrics = Arc::new(Metrics::new());
    let (c, _task) = start(
        config(),
        writer,
        store,
        ProxyRegistry::new(),
        metrics,
        shutdown,
    )
    .await
    .expect("controller starts");
    (c, trigger)
}

async fn outcome(mut rx: watch::Receiver<Progress>) -> Outcome {
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

fn flip(service: &str, skip_checks: bool) -> Operation {
    Operation::Flip {
        service: service.into(),
        to: None,
        skip_checks,
        timeout: Duration::from_secs(5),
    }
}

#[test]
fn version_seq_reads_the_front_number() {
    assert_eq!(version_seq("12-ab34"), Some(12));
    assert_eq!(version_seq("7-ab+keep.0011"), Some(7));
    assert_eq!(version_seq("ab"), None);
}

#[tokio::test]
async fn a_flip_with_no_proxies_commits_persists_and_records_history() {
    let store = Arc::new(MemoryStore::default());
    let (c, _t) = controller(store.clone()).await;
    let before = c.snapshot().version().to_owned();
    let rx = c.start(flip("api", false), "alice").await.expect("starts");
    assert_eq!(outcome(rx).await, Outcome::Succeeded);

    let status = c.status(Some("api")).await.expect("status");
    let api = &status.services[0];
    assert_eq!(api.live, "green");
    assert_eq!(api.previous.as_deref(), Some("blue"));
    assert!(version_seq(&status.version) > version_seq(&before));
    let history = c.history("api").await.expect("history");
    assert_eq!(history[0].actor, "alice");
    assert_eq!(history[0].outcome, Outcome::Succeeded);
    assert_eq!(history[0].to["green"], 100);

    let stored = store.load().await.expect("load").expect("saved");
    assert_eq!(stored.state.services["api"].weights["green"], 100);
    assert_eq!(stored.state.version, status.version);
}

#[tokio::test]
async fn failing_checks_refuse_and_change_nothing() {
    let store = Arc::new(MemoryStore::default());
    let (c, _t) = controller(store).await;
    let before = c.snapshot().version().to_owned();
    let rx = c.start(flip("web", false), "bob").await.expect("starts");
    let out = outcome(rx).await;
    assert!(
        matches!(&out, Outcome::Refused { reason } if reason.contains("127.0.0.1:2")),
        "{out:?}"
    );
    assert_eq!(c.snapshot().version(), before, "nothing was published");
    let status = c.status(Some("web")).await.expect("status");
    assert_eq!(status.services[0].live, "blue");
}

#[tokio::test]
async fn a_restart_serves_the_committed_state_under_the_same_version() {
    let store = Arc::new(MemoryStore::default());
    let (c, t) = controller(store.clone()).await;
    let rx = c.start(flip("api", true), "carol").await.expect("starts");
    assert_eq!(outcome(rx).await, Outcome::Succeeded);
    let version = c.snapshot().version().to_owned();
    t.trigger();
    drop(c);

    let (again, _t2) = controller(store).await;
    assert_eq!(
        again.snapshot().version(),
        version,
        "same version after restart"
    );
    let status = again.status(Some("api")).await.expect("status");
    assert_eq!(status.services[0].live, "green");
    let rx = again
        .start(
            Operation::Rollback {
                service: "api".into(),
                skip_checks: false,
                timeout: Duration::from_secs(5),
            },
            "carol",
        )
        .await
        .expect("rollback starts");
    assert_eq!(outcome(rx).await, Outcome::Succeeded);
    assert!(version_seq(again.snapshot().version()) > version_seq(&version));
}

#[tokio::test]
async fn one_operation_per_service_at_a_time() {
    let (c, _t) = controller(Arc::new(MemoryStore::default())).await;
    let retire = Operation::Retire {
        service: "api".into(),
        fleet: "green".into(),
        after: Duration::from_secs(3600),
    };
    let rx = c.start(retire, "dave").await.expect("starts");
    let id = rx.borrow().id;
    let busy = c.start(flip("api", true), "erin").await.expect_err("busy");
    assert!(matches!(busy, RolloutError::Busy { .. }));
    let status = c.status(Some("api")).await.expect("status");
    assert_eq!(
        status.services[0]
            .retirement
            .as_ref()
            .map(|r| r.fleet.as_str()),
        Some("green")
    );
    c.abort(id, "dave").await.expect("aborted while waiting");
    assert!(matches!(outcome(rx).await, Outcome::Aborted { .. }));
    let status = c.status(Some("api")).await.expect("status");
    assert!(status.services[0].retirement.is_none());
}

#[tokio::test]
async fn unknown_names_are_refused() {
    let (c, _t) = controller(Arc::new(MemoryStore::default())).await;
    assert!(matches!(
        c.start(flip("nope", true), "x").await,
        Err(RolloutError::UnknownService(_))
    ));
    assert!(matches!(
        c.verify("web", "red").await,
        Err(RolloutError::UnknownFleet { .. })
    ));
    let results = c.verify("web", "blue").await.expect("runs");
    assert!(results.iter().all(|r| !r.ok), "nothing listens on port 1");
}

/// A shift's later steps begin on a tick, after the interval; with proxies
/// that never change again, they must still see the proxies at once
/// rather than time out preparing.
#[tokio::test]
async fn a_shift_with_an_interval_runs_every_step_without_proxy_changes() {
    let (c, _t) = controller(Arc::new(MemoryStore::default())).await;
    let split = |blue: u32, green: u32| {
        crate::rollout::Split::from([("blue".to_owned(), blue), ("green".to_owned(), green)])
    };
    let op = Operation::Shift {
        service: "api".into(),
        steps: crate::rollout::ShiftSteps::Splits(vec![split(50, 50), split(0, 100)]),
        interval: Duration::from_millis(50),
        skip_checks: false,
        timeout: Duration::from_secs(2),
    };
    let rx = c.start(op, "test").await.expect("shift starts");
    assert_eq!(outcome(rx).await, Outcome::Succeeded);
    let status = c.status(Some("api")).await.expect("status");
    assert_eq!(status.services[0].weights, split(0, 100));
}
