use std::time::Duration;

use super::*;
use crate::config::fixtures;
use crate::rollout::{Outcome, Phase, Reason};
use crate::state::MemoryStore;
use crate::xds::resources::ResourceType;
use crate::xds::snapshot_store::snapshot_store;

/// Two services; `web` has checks against a port nothing listens on, so
/// its checks fail; `api` has none.
fn base() -> fixtures::ConfigFixture {
    fixtures::web()
        .checks("web", "home: {path: /, status: 200, timeout: 200ms}")
        .service("api", "/api/")
        .fleet("api", "blue", "endpoints: [127.0.0.1:3]")
        .fleet("api", "green", "endpoints: [127.0.0.1:4]")
}

fn config() -> Config {
    base().config()
}

async fn controller(store: Arc<MemoryStore>) -> (Controller, crate::shutdown::ShutdownTrigger) {
    on_registry(&ProxyRegistry::new(), store).await
}

/// A controller on `store` whose proxies are `registry`'s, so a test can
/// connect, ACK and drop streams of its own.
async fn on_registry(
    registry: &Arc<ProxyRegistry>,
    store: Arc<MemoryStore>,
) -> (Controller, crate::shutdown::ShutdownTrigger) {
    on_config(registry, store, config()).await
}

/// [`on_registry`], serving `config`.
async fn on_config(
    registry: &Arc<ProxyRegistry>,
    store: Arc<MemoryStore>,
    config: Config,
) -> (Controller, crate::shutdown::ShutdownTrigger) {
    let (writer, _reader) = snapshot_store();
    let (trigger, shutdown) = crate::shutdown::shutdown_channel();
    let (c, _task) = start(
        config,
        writer,
        store,
        registry.clone(),
        Arc::new(Metrics::new()),
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

/// The sequence number of a version as a view shows it.
fn version_seq(version: &str) -> Option<u64> {
    version.parse::<Version>().ok().map(|v| v.seq)
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
    assert!(status.version.as_ref().map(|v| v.seq) > version_seq(&before));
    let history = c.history("api").await.expect("history");
    assert_eq!(history[0].actor, "alice");
    assert_eq!(history[0].outcome, Outcome::Succeeded);
    assert_eq!(history[0].to["green"], 100);

    let stored = store.load().await.expect("load").expect("saved");
    assert_eq!(stored.state.services["api"].weights["green"], 100);
    assert_eq!(stored.state.version, status.version);
}

/// The revision the store holds, which each save moves by one.
fn revision(store: &MemoryStore) -> u64 {
    store.current().map_or(0, |s| s.revision.0)
}

#[tokio::test]
async fn a_flip_that_commits_at_once_saves_its_start_with_the_commit() {
    let store = Arc::new(MemoryStore::default());
    let (c, _t) = controller(store.clone()).await;
    let before = revision(&store);
    // No checks and no proxy: nothing to wait for before the commit, so
    // the commit (with the operation's record and id) is the first save
    // and the outcome the second.
    let rx = c.start(flip("api", false), "alice").await.expect("starts");
    let id = rx.borrow().id;
    assert_eq!(outcome(rx).await, Outcome::Succeeded);
    assert_eq!(
        revision(&store),
        before + 2,
        "one save to commit, one to end"
    );
    let stored = store.current().expect("saved").state;
    assert_eq!(stored.next_operation_id, id, "the id is durable");
    assert_eq!(stored.history["api"].len(), 1);

    // A store that cannot save refuses the operation whole: no id used,
    // nothing served.
    let served = c.snapshot().version().to_owned();
    store.fail_saves(true);
    let err = c.start(flip("api", false), "alice").await;
    assert!(matches!(err, Err(RolloutError::Store(_))), "{err:?}");
    assert_eq!(c.snapshot().version(), served, "nothing was published");
    store.fail_saves(false);
    let rx = c.start(flip("api", false), "alice").await.expect("starts");
    assert_eq!(rx.borrow().id, id + 1, "the refused operation used no id");
    assert_eq!(outcome(rx).await, Outcome::Succeeded);
}

#[tokio::test]
async fn failing_checks_refuse_and_change_nothing() {
    let store = Arc::new(MemoryStore::default());
    let (c, _t) = controller(store).await;
    let before = c.snapshot().version().to_owned();
    let rx = c.start(flip("web", false), "bob").await.expect("starts");
    let out = outcome(rx).await;
    assert!(
        matches!(&out, Outcome::Refused { reason: Reason::ChecksFailed { after_switch: false, failed } }
            if failed.iter().map(|r| r.endpoint.as_str()).eq(["127.0.0.1:2"])),
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
    // The flip changed only the routes: the other types keep the label of
    // the first version.
    let labels = c.snapshot().labels();
    let edge = &labels["edge"];
    assert_ne!(edge["CDS"].version, edge["RDS"].version, "{labels:?}");
    t.trigger();
    drop(c);

    let (again, _t2) = controller(store).await;
    assert_eq!(
        again.snapshot().version(),
        version,
        "same version after restart"
    );
    assert_eq!(
        again.snapshot().labels(),
        labels,
        "every type under the label proxies hold, so a reconnect sends nothing new"
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
    let retire = retire("api", "green", Duration::from_secs(3600));
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
        Err(RolloutError::UnknownService { .. })
    ));
    assert!(matches!(
        c.verify("web", "red").await,
        Err(RolloutError::UnknownFleet { .. })
    ));
    let results = c.verify("web", "blue").await.expect("runs");
    assert!(!results.is_empty(), "blue has endpoints and checks");
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

fn retire(service: &str, fleet: &str, after: Duration) -> Operation {
    Operation::Retire {
        service: service.into(),
        fleet: fleet.into(),
        after,
        drain_timeout: Duration::from_secs(60),
    }
}

/// A shift to 10% then 100% with an hour between: it waits after step 1.
fn paused_shift(service: &str) -> Operation {
    Operation::Shift {
        service: service.into(),
        steps: crate::rollout::ShiftSteps::Percents {
            to: None,
            percents: vec![10, 100],
        },
        interval: Duration::from_secs(3600),
        skip_checks: true,
        timeout: Duration::from_secs(5),
    }
}

fn rollback_op(service: &str) -> Operation {
    Operation::Rollback {
        service: service.into(),
        skip_checks: false,
        timeout: Duration::from_secs(5),
    }
}

async fn web_or_api(c: &Controller, service: &str) -> crate::rollout::ServiceStatus {
    let mut s = c.status(Some(service)).await.expect("status");
    s.services.remove(0)
}

fn split(pairs: &[(&str, u32)]) -> crate::rollout::Split {
    pairs.iter().map(|(f, w)| ((*f).to_owned(), *w)).collect()
}

#[tokio::test]
async fn a_refused_flip_leaves_nothing_to_roll_back_to() {
    let (c, _t) = controller(Arc::new(MemoryStore::default())).await;
    let out = outcome(c.start(flip("web", false), "x").await.expect("starts")).await;
    assert!(matches!(out, Outcome::Refused { .. }), "{out:?}");
    let web = web_or_api(&c, "web").await;
    assert_eq!(web.rollback_to, None);
    assert_eq!(web.previous, None);
    let err = c.start(rollback_op("web"), "x").await.expect_err("refused");
    assert!(
        matches!(&err, RolloutError::Precondition(m) if m.contains("nothing to roll back to")),
        "{err:?}"
    );
    let history = c.history("web").await.expect("history");
    assert_eq!(history.len(), 1, "one entry for the refused flip");
    assert_eq!(
        history[0].target,
        Some(split(&[("blue", 0), ("green", 100)]))
    );
}

#[tokio::test]
async fn a_flip_with_no_proxy_succeeds_with_a_warning_and_no_convergence() {
    let (c, _t) = controller(Arc::new(MemoryStore::default())).await;
    assert_eq!(
        outcome(c.start(flip("api", true), "x").await.expect("starts")).await,
        Outcome::Succeeded
    );
    let h = &c.history("api").await.expect("history")[0];
    assert_eq!(h.convergence, None);
    assert!(
        h.warnings
            .iter()
            .any(|w| w.contains("no connected proxy routes api")),
        "{:?}",
        h.warnings
    );
    let api = web_or_api(&c, "api").await;
    assert_eq!(api.rollback_to, Some(split(&[("blue", 100), ("green", 0)])));
    assert_eq!(api.previous.as_deref(), Some("blue"));
}

/// The config with a third fleet, `red`, for api.
fn with_red() -> Config {
    base()
        .fleet("api", "red", "endpoints: [127.0.0.1:5]")
        .config()
}

#[tokio::test]
async fn reloads_never_move_traffic() {
    let store = Arc::new(MemoryStore::default());
    let (c, _t) = controller(store.clone()).await;
    c.reload(with_red()).await.expect("adds red");
    let err = c
        .start(flip("api", true), "x")
        .await
        .expect_err("needs --to");
    assert!(err.to_string().contains("say which with --to"), "{err}");
    let to_green = Operation::Flip {
        service: "api".into(),
        to: Some("green".into()),
        skip_checks: true,
        timeout: Duration::from_secs(5),
    };
    assert_eq!(
        outcome(c.start(to_green, "x").await.expect("starts")).await,
        Outcome::Succeeded
    );
    let version = c.snapshot().version().to_owned();
    // Dropping red (weight 0) keeps every other weight and the rollback
    // point; the served routes do not change.
    match c.reload(config()).await.expect("drops red") {
        super::Reloaded::Applied { .. } => {}
        other => panic!("{other:?}"),
    }
    let api = web_or_api(&c, "api").await;
    assert_eq!(api.weights, split(&[("blue", 0), ("green", 100)]));
    assert_eq!(api.rollback_to, Some(split(&[("blue", 100), ("green", 0)])));
    assert_ne!(c.snapshot().version(), version, "the clusters changed");
    // Removing green, which takes the traffic, is refused whole.
    let without_green = base().without_fleet("api", "green").config();
    let before = c.snapshot().version().to_owned();
    let err = c.reload(without_green).await.expect_err("refused");
    assert!(err.to_string().contains("\"green\""), "{err}");
    assert_eq!(c.snapshot().version(), before);
    assert_eq!(web_or_api(&c, "api").await.weights["green"], 100);
}

#[tokio::test]
async fn operations_are_saved_when_they_start_and_ids_are_never_reused() {
    let store = Arc::new(MemoryStore::default());
    let (c, t) = controller(store.clone()).await;
    let rx = c
        .start(retire("api", "green", Duration::from_secs(3600)), "dave")
        .await
        .expect("starts");
    let id = rx.borrow().id;
    let stored = store.load().await.expect("load").expect("saved");
    assert_eq!(stored.state.next_operation_id, id);
    let op = stored.state.services["api"]
        .operation
        .as_ref()
        .expect("saved at start");
    assert_eq!(op.id, id);
    // A graceful restart keeps the pending retirement, with its id.
    t.trigger();
    drop(c);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (again, _t2) = controller(store.clone()).await;
    let api = web_or_api(&again, "api").await;
    assert_eq!(api.retirement.map(|r| r.fleet).as_deref(), Some("green"));
    assert_eq!(api.in_progress.map(|p| p.id), Some(id));
    assert!(again.history("api").await.expect("history").is_empty());
    // The next operation gets a new id.
    let rx = again.start(flip("web", false), "x").await.expect("starts");
    assert!(rx.borrow().id > id);
}

#[tokio::test]
async fn a_rollback_cancels_a_waiting_retirement() {
    let (c, _t) = controller(Arc::new(MemoryStore::default())).await;
    assert_eq!(
        outcome(c.start(flip("api", true), "x").await.expect("flip")).await,
        Outcome::Succeeded
    );
    let rx = c
        .start(retire("api", "blue", Duration::from_secs(3600)), "x")
        .await
        .expect("retire");
    let retire_id = rx.borrow().id;
    let busy = c.start(flip("api", true), "x").await.expect_err("busy");
    assert!(
        busy.to_string()
            .contains(&format!("teal abort {retire_id}")),
        "{busy}"
    );
    let rx = c.start(rollback_op("api"), "x").await.expect("rollback");
    assert_eq!(outcome(rx).await, Outcome::Succeeded);
    let history = c.history("api").await.expect("history");
    assert!(
        matches!(&history[1].outcome, Outcome::Aborted { reason: Reason::StoppedBeforeCommit { by, for_rollback: true, .. } }
            if by == "x")
    );
    let api = web_or_api(&c, "api").await;
    assert_eq!(api.weights, split(&[("blue", 100), ("green", 0)]));
    assert!(api.retirement.is_none());
}

#[tokio::test]
async fn removing_a_service_ends_its_operation_with_an_entry() {
    let store = Arc::new(MemoryStore::default());
    let (c, _t) = controller(store.clone()).await;
    let shift = paused_shift("api");
    let mut rx = c.start(shift, "x").await.expect("starts");
    rx.wait_for(|p| p.phase == crate::rollout::Phase::Waiting)
        .await
        .expect("waits between steps");
    let only_web = base().without_service("api").config();
    c.reload(only_web).await.expect("applied");
    let out = outcome(rx).await;
    assert!(
        matches!(
            &out,
            Outcome::Aborted {
                reason: Reason::ServiceRemoved
            }
        ),
        "{out:?}"
    );
    let stored = store.load().await.expect("load").expect("saved");
    assert_eq!(stored.state.history["api"].len(), 1);
    assert!(!stored.state.services.contains_key("api"));
    // Back in the file, it starts on its live fleet and is not busy.
    c.reload(config()).await.expect("applied");
    let api = web_or_api(&c, "api").await;
    assert_eq!(api.weights["blue"], 100);
    assert!(c.start(flip("api", true), "x").await.is_ok());
}

#[tokio::test]
async fn shutting_down_ends_a_running_shift_with_an_entry() {
    let store = Arc::new(MemoryStore::default());
    let (c, t) = controller(store.clone()).await;
    let shift = paused_shift("api");
    let rx = c.start(shift, "x").await.expect("starts");
    t.trigger();
    let out = outcome(rx).await;
    assert!(
        matches!(
            &out,
            Outcome::Aborted {
                reason: Reason::ShutDown {
                    phase: Phase::Waiting
                }
            }
        ),
        "{out:?}"
    );
    drop(c);
    let stored = store.load().await.expect("load").expect("saved");
    assert_eq!(stored.state.history["api"].len(), 1);
    assert!(stored.state.services["api"].operation.is_none());
}

#[tokio::test]
async fn an_operation_found_in_flight_is_resolved_at_start() {
    use crate::rollout::Verb;
    use crate::rollout::machine::{Record, Stage};
    use crate::rollout::plan::{Change, Plan};
    let green = split(&[("blue", 0), ("green", 100)]);
    let blue = split(&[("blue", 100), ("green", 0)]);
    let record = |stage: Stage, id: u64| Record {
        id,
        verb: Verb::Flip,
        actor: "alice".into(),
        started: std::time::SystemTime::now(),
        plan: Plan {
            steps: vec![Change {
                split: green.clone(),
                retired: Default::default(),
            }],
            checks: false,
            timeout: Duration::from_secs(5),
            interval: Duration::ZERO,
            wait_first: false,
            drain_timeout: Duration::ZERO,
            analysis: None,
        },
        original: Change {
            split: blue.clone(),
            retired: Default::default(),
        },
        rollback_before: None,
        step: 1,
        stage,
        confirmed_version: None,
        confirmed: None,
        wait_until: None,
        warnings: Vec::new(),
        baseline: None,
    };
    // As `kill -9` left it: green committed, not yet confirmed; web's flip
    // found before its commit.
    let mut state = PersistedState {
        next_operation_id: 42,
        ..PersistedState::default()
    };
    state.services.insert(
        "api".into(),
        crate::state::ServiceState {
            weights: green.clone(),
            operation: Some(record(Stage::Applied, 41)),
            ..Default::default()
        },
    );
    state.services.insert(
        "web".into(),
        crate::state::ServiceState {
            weights: blue.clone(),
            operation: Some(record(Stage::Pending, 42)),
            ..Default::default()
        },
    );
    let store = Arc::new(MemoryStore::default());
    store.save(&state, Revision(0)).await.expect("seed");
    let (c, _t) = controller(store.clone()).await;
    let api = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let h = c.history("api").await.expect("history");
            if !h.is_empty() {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("resolved");
    assert_eq!((api.len(), api[0].id), (1, 41));
    assert_eq!(api[0].outcome, Outcome::Succeeded);
    assert!(api[0].warnings.iter().any(|w| w.contains("restarted")));
    let web = c.history("web").await.expect("history");
    assert_eq!(web.len(), 1);
    assert!(matches!(web[0].outcome, Outcome::Interrupted { .. }));
    assert_eq!(web_or_api(&c, "api").await.rollback_to, Some(blue.clone()));
    assert_eq!(web_or_api(&c, "web").await.weights, blue);
    let rx = c.start(flip("api", true), "x").await.expect("starts");
    assert_eq!(rx.borrow().id, 43, "ids go on from the stored counter");
}

/// A reload that changes a service's endpoints while its flip runs the
/// checks waits for the flip to end, then applies.
#[tokio::test]
async fn a_reload_under_a_running_check_waits_for_the_operation() {
    // Green's endpoint accepts connections and never answers: the flip's
    // checks hang until their timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let fixture = base()
        .fleet("web", "green", &format!("endpoints: [127.0.0.1:{port}]"))
        .checks("web", "home: {path: /, status: 200, timeout: 1s}");
    let first = fixture.config();
    let (writer, _reader) = snapshot_store();
    let (_trigger, shutdown) = crate::shutdown::shutdown_channel();
    let (c, _task) = start(
        first.clone(),
        writer,
        Arc::new(MemoryStore::default()),
        ProxyRegistry::new(),
        Arc::new(Metrics::new()),
        shutdown,
    )
    .await
    .expect("starts");
    let mut rx = c.start(flip("web", false), "x").await.expect("starts");
    rx.wait_for(|p| p.phase == crate::rollout::Phase::PreChecks)
        .await
        .expect("checking");
    let version = c.snapshot().version().to_owned();
    let moved = fixture
        .fleet("web", "blue", "endpoints: [127.0.0.1:9]")
        .config();
    let reloaded = c.reload(moved).await.expect("not refused");
    assert!(
        matches!(reloaded, super::Reloaded::Deferred { ref service, .. } if service == "web"),
        "web's config changed under its checks: {reloaded:?}"
    );
    assert_eq!(c.snapshot().version(), version, "nothing applied yet");
    let out = outcome(rx).await;
    assert!(matches!(out, Outcome::Refused { .. }), "{out:?}");
    tokio::time::timeout(Duration::from_secs(5), async {
        while c.snapshot().version() == version {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the deferred reload is applied once the flip ended");
    held.abort();
}

/// Steps planned before a reload dropped a 0-weight fleet still apply as
/// planned: never the config's `live` instead.
#[tokio::test]
async fn a_shift_goes_on_as_planned_after_a_reload_drops_an_unused_fleet() {
    let (c, _t) = controller(Arc::new(MemoryStore::default())).await;
    c.reload(with_red()).await.expect("adds red");
    let shift = Operation::Shift {
        service: "api".into(),
        steps: crate::rollout::ShiftSteps::Percents {
            to: Some("green".into()),
            percents: vec![10, 100],
        },
        interval: Duration::from_millis(300),
        skip_checks: true,
        timeout: Duration::from_secs(5),
    };
    let mut rx = c.start(shift, "x").await.expect("starts");
    rx.wait_for(|p| p.phase == crate::rollout::Phase::Waiting)
        .await
        .expect("waits between steps");
    c.reload(config()).await.expect("drops red");
    assert_eq!(outcome(rx).await, Outcome::Succeeded);
    let api = web_or_api(&c, "api").await;
    assert_eq!(api.weights, split(&[("blue", 0), ("green", 100)]));
    assert_eq!(api.rollback_to, Some(split(&[("blue", 100), ("green", 0)])));
}

/// A flip already waiting on a proxy finishes as soon as that proxy is
/// cordoned: the cordon (and the registry's `notify`, which the driver
/// calls when the cordons in force change) makes the running operation
/// look at every proxy again, although no stream changed.
#[tokio::test]
async fn a_flip_waiting_on_a_proxy_finishes_when_it_is_cordoned() {
    let registry = ProxyRegistry::new();
    let (c, _trigger) = on_registry(&registry, Arc::new(MemoryStore::default())).await;

    // One proxy of the edge group holds the current routes and will never
    // ACK the next ones.
    let _stream = synced_edge_proxy(&registry, &c, "stuck");

    let mut rx = c.start(flip("api", true), "dave").await.expect("starts");
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|p| p.waiting_for.iter().any(|id| id == "stuck")),
    )
    .await
    .expect("waits for the proxy in time")
    .expect("progress channel open");

    assert!(c.cordon("stuck", "test", "dave").await.expect("cordoned"));
    let p = tokio::time::timeout(Duration::from_secs(3), rx.wait_for(|p| p.outcome.is_some()))
        .await
        .expect("finishes well before its 5 s timeout")
        .expect("progress channel open")
        .clone();
    assert_eq!(p.outcome, Some(Outcome::Succeeded), "{p:?}");
    assert_eq!(p.not_waiting_for, ["stuck"], "{p:?}");
    let history = c.history("api").await.expect("history");
    assert_eq!(history[0].not_waited_for, ["stuck"]);
}

/// Progress held back by the pacing (a count moving within
/// `PROGRESS_EVERY` of the last publication, with nothing after it) still
/// reaches the followers: it goes out at the driver's next deadline, not
/// at the next event, which here never comes.
#[tokio::test]
async fn progress_held_back_is_published_without_another_event() {
    use crate::xds::{NodeInfo, StreamEvent, StreamKind};

    let registry = ProxyRegistry::new();
    let (c, _trigger) = on_registry(&registry, Arc::new(MemoryStore::default())).await;

    // Three proxies hold the current routes; two will ACK the flip, one
    // never does, so the flip stays in confirming.
    let routes = |c: &Controller| {
        c.snapshot()
            .group("edge")
            .of(ResourceType::Route)
            .version()
            .to_owned()
    };
    let acked = |version: String| {
        [
            StreamEvent::Sent {
                ty: ResourceType::Route,
                version: version.clone(),
                nonce: "1".into(),
                resources: 1,
            },
            StreamEvent::Acked {
                ty: ResourceType::Route,
                version,
            },
        ]
    };
    let mut streams = Vec::new();
    for id in ["a", "b", "stuck"] {
        let mut stream = registry.register(StreamKind::Aggregated, false);
        stream.set_node(Some(&NodeInfo {
            id: id.into(),
            cluster: "edge".into(),
            user_agent: "envoy".into(),
        }));
        stream.record(&acked(routes(&c)));
        streams.push(stream);
    }
    let long = Operation::Flip {
        service: "api".into(),
        to: None,
        skip_checks: true,
        timeout: Duration::from_secs(60),
    };
    let mut rx = c.start(long, "dave").await.expect("starts");
    let wait = Duration::from_secs(10);
    tokio::time::timeout(wait, rx.wait_for(|p| p.version.is_some() && p.total == 3))
        .await
        .expect("confirming in time")
        .expect("progress channel open");

    // a ACKs and is shown; b ACKs right after (within the pacing, on a
    // fast machine), and nothing happens after that.
    let next = routes(&c);
    streams[0].record(&acked(next.clone()));
    tokio::time::timeout(wait, rx.wait_for(|p| p.acked == 1))
        .await
        .expect("a's ACK shown")
        .expect("progress channel open");
    streams[1].record(&acked(next));
    let p = tokio::time::timeout(wait, rx.wait_for(|p| p.acked == 2))
        .await
        .expect("b's ACK shown without another event")
        .expect("progress channel open")
        .clone();
    assert_eq!(p.waiting_for, ["stuck"], "{p:?}");
    assert!(p.outcome.is_none(), "{p:?}");
}

/// Cordons are saved state: a cordon is in the stored state before it is
/// in force, and a controller started on that state (a restart, or
/// another replica taking the lead) applies it; an uncordon is saved the
/// same way.
#[tokio::test]
async fn cordons_are_kept_in_the_stored_state_and_applied_by_the_next_controller() {
    let store = Arc::new(MemoryStore::default());
    let (c, t) = controller(store.clone()).await;
    assert!(c.cordon("edge-7", "stuck", "dave").await.expect("cordoned"));
    assert!(
        !c.cordon("edge-7", "still stuck", "erin")
            .await
            .expect("updated")
    );
    assert!(matches!(
        c.cordon("", "no node", "dave").await,
        Err(RolloutError::Invalid(_))
    ));
    let stored = store.current().expect("saved").state.cordons;
    assert_eq!(stored["edge-7"].reason, "still stuck");
    assert_eq!(stored["edge-7"].actor, "erin");
    drop((c, t));

    let registry = ProxyRegistry::new();
    let (c, _trigger) = on_registry(&registry, store.clone()).await;
    assert_eq!(
        registry.cordons().ids(),
        std::collections::BTreeSet::from(["edge-7".to_owned()])
    );
    assert!(c.uncordon("edge-7", "dave").await.expect("uncordoned"));
    assert!(!c.uncordon("edge-7", "dave").await.expect("not cordoned"));
    assert!(registry.cordons().is_empty());
    assert!(store.current().expect("saved").state.cordons.is_empty());
}

/// A state directory from before cordons were saved state holds them in
/// `cordons.json`: they are merged into the state at the first commit,
/// in force from then on, and the file goes (a file left behind would
/// bring back a cordon lifted since, at the next start).
#[tokio::test]
async fn the_cordons_of_an_old_cordons_file_move_into_the_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join(crate::xds::cordon::CORDONS_FILE);
    std::fs::write(
        &file,
        r#"{"cordons": {"edge-7": {"reason": "stuck", "actor": "alice", "since_unix_ms": 5}}}"#,
    )
    .expect("write");
    let metrics = Arc::new(Metrics::new());
    let cordons = crate::xds::cordon::Cordons::open(dir.path()).expect("reads the old file");
    let registry = ProxyRegistry::with_sink_and_cordons(metrics.clone(), Arc::new(cordons));
    let store = Arc::new(MemoryStore::default());
    let (writer, _reader) = snapshot_store();
    let (_trigger, shutdown) = crate::shutdown::shutdown_channel();
    let (c, _task) = start(
        config(),
        writer,
        store.clone(),
        registry.clone(),
        metrics,
        shutdown,
    )
    .await
    .expect("controller starts");
    let stored = store.current().expect("saved").state.cordons;
    assert_eq!(stored["edge-7"].reason, "stuck");
    assert_eq!(stored["edge-7"].actor, "alice");
    assert!(registry.cordons().get("edge-7").is_some());
    assert!(!file.exists(), "the state keeps them now");
    assert!(c.uncordon("edge-7", "bob").await.expect("uncordoned"));
    assert!(registry.cordons().is_empty());
}

/// Replicas on one store (clones of a watchable store): a replica whose
/// config renders a stored state to another digest than it was saved
/// with does not apply it, and keeps serving the last state that matched;
/// a state its config does render is applied.
#[tokio::test]
async fn a_replica_whose_config_differs_keeps_serving_the_last_state_that_matched() {
    let store = MemoryStore::watchable();
    let (a, _ta) = controller(Arc::new(store.clone())).await;
    let matched = a.snapshot().version().to_owned();

    // Another replica, whose config routes /v2/ instead of /api/, commits
    // its own rendering of the state.
    let other = base().prefix("api", "/v2/").config();
    let (writer, _reader) = snapshot_store();
    let (_trigger, shutdown) = crate::shutdown::shutdown_channel();
    let (b, _tb) = start(
        other,
        writer,
        Arc::new(store.clone()),
        ProxyRegistry::new(),
        Arc::new(Metrics::new()),
        shutdown,
    )
    .await
    .expect("the other replica starts");
    let differs = b.snapshot().version().to_owned();
    assert_ne!(differs, matched);
    assert_eq!(
        store
            .current()
            .expect("saved")
            .state
            .version
            .map(|v| v.to_string()),
        Some(differs.clone())
    );
    // `a` sees that save at once through the watch; give it ample time.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        a.snapshot().version(),
        matched,
        "a replica served a state its config renders differently"
    );

    // A third replica with a's config commits again: a applies that one,
    // so the watch did reach it.
    let (c, _tc) = controller(Arc::new(store.clone())).await;
    let again = c.snapshot().version().to_owned();
    assert_ne!(again, matched, "a newer sequence number");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.snapshot().version() != again {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a still serves {} instead of {again}",
            a.snapshot().version()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A proxy whose stream ended a moment before a flip (reconnecting, as
/// after a replica closed its streams or its connection aged) is not
/// known to be gone: the flip waits for it, and confirms only once it is
/// back on a new stream and has ACKed the committed routes. With no
/// reconnect hold, the same flip would have succeeded at once, confirmed
/// by no proxy.
#[tokio::test]
async fn a_flip_waits_for_a_proxy_that_is_reconnecting() {
    use crate::xds::{NodeInfo, StreamEvent, StreamKind};

    let registry = ProxyRegistry::new();
    registry.set_reconnect_hold(Duration::from_secs(30));
    let (c, _trigger) = on_registry(&registry, Arc::new(MemoryStore::default())).await;
    let node = NodeInfo {
        id: "edge-1".into(),
        cluster: "edge".into(),
        user_agent: "envoy".into(),
    };
    let ack = |stream: &crate::xds::status::StreamHandle, version: String| {
        stream.record(&[
            StreamEvent::Sent {
                ty: ResourceType::Route,
                version: version.clone(),
                nonce: "1".into(),
                resources: 1,
            },
            StreamEvent::Acked {
                ty: ResourceType::Route,
                version,
            },
        ]);
    };
    let routes = |c: &Controller| {
        c.snapshot()
            .group("edge")
            .of(ResourceType::Route)
            .version()
            .to_owned()
    };
    let mut first = registry.register(StreamKind::Aggregated, false);
    first.set_node(Some(&node));
    ack(&first, routes(&c));
    drop(first);
    assert_eq!(registry.len(), 0, "no stream is connected");

    let mut rx = c.start(flip("api", true), "dave").await.expect("starts");
    let waited = tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|p| p.waiting_for.iter().any(|id| id == "edge-1")),
    )
    .await
    .expect("the flip waits for the reconnecting proxy")
    .is_ok();
    assert!(waited, "the flip ended: {:?}", *rx.borrow());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        rx.borrow().outcome.is_none() && rx.borrow().version.is_none(),
        "nothing is committed or ended while the proxy is away: {:?}",
        *rx.borrow()
    );

    // Back on a new stream, it holds the routes (prepared), then ACKs the
    // committed ones.
    let mut back = registry.register(StreamKind::Aggregated, false);
    back.set_node(Some(&node));
    ack(&back, routes(&c));
    let committed = tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|p| p.version.is_some()),
    )
    .await
    .expect("commits once the proxy is back")
    .is_ok();
    assert!(committed, "the flip ended: {:?}", *rx.borrow());
    ack(&back, routes(&c));
    let p = tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|p| p.outcome.is_some()),
    )
    .await
    .expect("finishes once the proxy is back")
    .expect("progress channel open")
    .clone();
    assert_eq!(p.outcome, Some(Outcome::Succeeded), "{p:?}");
    let history = c.history("api").await.expect("history");
    let acked: Vec<&str> = history[0].acks.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(acked, ["edge-1"], "{:?}", history[0]);
    assert!(history[0].warnings.is_empty(), "{:?}", history[0]);
}

/// A proxy that does not come back within the hold is taken as gone: the
/// flip goes on without it (here, with no proxy left, succeeding with the
/// warning that no proxy confirmed it), after the hold and not before.
#[tokio::test]
async fn a_proxy_that_does_not_reconnect_within_the_hold_is_taken_as_gone() {
    use crate::xds::{NodeInfo, StreamKind};

    let registry = ProxyRegistry::new();
    let hold = Duration::from_millis(800);
    registry.set_reconnect_hold(hold);
    let (c, _trigger) = on_registry(&registry, Arc::new(MemoryStore::default())).await;
    let mut stream = registry.register(StreamKind::Aggregated, false);
    stream.set_node(Some(&NodeInfo {
        id: "edge-1".into(),
        cluster: "edge".into(),
        user_agent: "envoy".into(),
    }));
    let gone_at = std::time::Instant::now();
    drop(stream);
    let rx = c.start(flip("api", true), "dave").await.expect("starts");
    let p = outcome(rx).await;
    assert_eq!(p, Outcome::Succeeded);
    assert!(
        gone_at.elapsed() >= hold,
        "the flip ended {:?} after the proxy left, within the {hold:?} hold",
        gone_at.elapsed()
    );
    let history = c.history("api").await.expect("history");
    assert!(
        history[0]
            .warnings
            .iter()
            .any(|w| w.contains("no connected proxy routes api")),
        "{:?}",
        history[0]
    );
    assert!(registry.statuses().is_empty(), "the proxy is forgotten");
}

/// One `edge` proxy, `id`, in sync with the routes served now.
fn synced_edge_proxy(
    registry: &Arc<ProxyRegistry>,
    c: &Controller,
    id: &str,
) -> crate::xds::status::StreamHandle {
    use crate::xds::{NodeInfo, StreamEvent, StreamKind};
    let mut stream = registry.register(StreamKind::Aggregated, false);
    stream.set_node(Some(&NodeInfo {
        id: id.into(),
        cluster: "edge".into(),
        user_agent: "envoy".into(),
    }));
    let routes = c
        .snapshot()
        .group("edge")
        .of(ResourceType::Route)
        .version()
        .to_owned();
    stream.record(&[
        StreamEvent::Sent {
            ty: ResourceType::Route,
            version: routes.clone(),
            nonce: "1".into(),
            resources: 1,
        },
        StreamEvent::Acked {
            ty: ResourceType::Route,
            version: routes,
        },
    ]);
    stream
}

/// A report of `in_progress` requests to api's `fleet` on `load`.
fn report_api(
    registry: &ProxyRegistry,
    load: &crate::xds::load::LoadStreamId,
    fleet: &str,
    in_progress: u64,
) {
    let report = crate::xds::load::ClusterReport {
        cluster: crate::config::cluster_name("api", fleet),
        in_progress,
        ..Default::default()
    };
    let taken = registry
        .loads()
        .report(load, &[report], std::time::Instant::now());
    assert_eq!(taken.counted, 1, "{taken:?}");
}

#[tokio::test]
async fn a_retirement_waits_until_the_load_reports_say_its_fleet_drained() {
    let registry = ProxyRegistry::new();
    registry.loads().configure(Duration::from_millis(20), 1000);
    let (c, _t) = on_registry(&registry, Arc::new(MemoryStore::default())).await;
    let flipped = c.start(flip("api", true), "x").await.expect("flip");
    assert_eq!(outcome(flipped).await, Outcome::Succeeded);
    // A proxy with one request to blue still in flight.
    let _stream = synced_edge_proxy(&registry, &c, "edge-1");
    let load = registry.loads().open("edge-1", "edge");
    report_api(&registry, &load, "blue", 1);
    let drains = web_or_api(&c, "api").await.drains;
    assert_eq!(drains.len(), 1, "{drains:?}");
    assert_eq!(
        (drains[0].fleet.as_str(), drains[0].is_drained()),
        ("blue", false)
    );
    assert_eq!(drains[0].draining[0].proxy, "edge-1");
    assert_eq!(drains[0].in_flight, 1);

    let mut rx = c
        .start(retire("api", "blue", Duration::ZERO), "x")
        .await
        .expect("retire");
    let p = tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(|p| p.phase == Phase::Draining && p.message.contains("edge-1 (1)")),
    )
    .await
    .expect("drains in time")
    .expect("progress open")
    .clone();
    assert_eq!(p.waiting_for, ["edge-1"], "{p:?}");
    // Many report intervals later, blue is still there: edge-1 has not
    // said its request ended.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.borrow().phase, Phase::Draining);
    assert!(web_or_api(&c, "api").await.retired.is_empty());
    // The request ends: two idle reports and blue goes.
    report_api(&registry, &load, "blue", 0);
    report_api(&registry, &load, "blue", 0);
    assert_eq!(outcome(rx).await, Outcome::Succeeded);
    let api = web_or_api(&c, "api").await;
    assert_eq!(api.retired, ["blue"]);
    assert!(api.drains[0].is_drained(), "{:?}", api.drains);
}

#[tokio::test]
async fn a_proxy_that_reports_no_load_holds_a_retirement_until_it_is_refused() {
    let registry = ProxyRegistry::new();
    registry.loads().configure(Duration::from_millis(20), 1000);
    let (c, _t) = on_registry(&registry, Arc::new(MemoryStore::default())).await;
    let flipped = c.start(flip("api", true), "x").await.expect("flip");
    assert_eq!(outcome(flipped).await, Outcome::Succeeded);
    let _quiet = synced_edge_proxy(&registry, &c, "quiet");
    let drains = web_or_api(&c, "api").await.drains;
    assert_eq!(drains[0].silent, ["quiet"], "named as not reporting");
    let op = Operation::Retire {
        service: "api".into(),
        fleet: "blue".into(),
        after: Duration::ZERO,
        drain_timeout: Duration::from_millis(300),
    };
    let rx = c.start(op, "x").await.expect("retire");
    let out = outcome(rx).await;
    assert!(
        matches!(&out, Outcome::Refused { reason: Reason::DrainTimedOut { last: Some(d), .. } }
            if d.silent == ["quiet"]),
        "{out:?}"
    );
    let reason = out.reason().map(ToString::to_string).unwrap_or_default();
    assert!(reason.contains("no load reports from quiet"), "{reason}");
    let api = web_or_api(&c, "api").await;
    assert!(api.retired.is_empty(), "nothing was retired");
    let history = c.history("api").await.expect("history");
    assert!(matches!(history[0].outcome, Outcome::Refused { .. }));
}

/// A reload that drops the fleet a retirement drains leaves nothing to
/// drain: no proxy is served that fleet's cluster any more, nor asked to
/// report it, so the retirement goes on instead of waiting out its drain
/// timeout for reports that will never come.
#[tokio::test]
async fn a_retirement_whose_fleet_a_reload_dropped_does_not_wait_for_its_drain() {
    let registry = ProxyRegistry::new();
    registry.loads().configure(Duration::from_millis(20), 1000);
    let (c, _t) = on_registry(&registry, Arc::new(MemoryStore::default())).await;
    let stream = synced_edge_proxy(&registry, &c, "edge-1");
    let load = registry.loads().open("edge-1", "edge");
    report_api(&registry, &load, "green", 1);
    let op = Operation::Retire {
        service: "api".into(),
        fleet: "green".into(),
        after: Duration::ZERO,
        drain_timeout: Duration::from_secs(3600),
    };
    let mut rx = c.start(op, "x").await.expect("retire");
    tokio::time::timeout(
        Duration::from_secs(5),
        rx.wait_for(|p| p.phase == Phase::Draining && !p.waiting_for.is_empty()),
    )
    .await
    .expect("drains in time")
    .expect("progress open");
    c.reload(base().without_fleet("api", "green").config())
        .await
        .expect("applied");
    // The proxy takes the new config (a stream of its own, in sync).
    drop(stream);
    let _stream = synced_edge_proxy(&registry, &c, "edge-1");
    let p = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|p| p.outcome.is_some()))
        .await
        .expect("well within its drain timeout")
        .expect("progress open")
        .clone();
    assert_eq!(p.outcome, Some(Outcome::Succeeded), "{p:?}");
}

/// `api` judged by its traffic: at most `threshold` errors (`max_error_ratio`
/// or `max_error_ratio_over_baseline`) over a 2 s window, 10 requests
/// needed; one proxy, `a`, of the edge group, connected and holding the
/// current routes, with a load stream reporting every 100 ms.
struct Judged {
    c: Controller,
    registry: Arc<ProxyRegistry>,
    stream: crate::xds::status::StreamHandle,
    load: crate::xds::load::LoadStreamId,
    _trigger: crate::shutdown::ShutdownTrigger,
}

impl Judged {
    async fn new(threshold: &str) -> Judged {
        use crate::xds::{NodeInfo, StreamKind};
        let registry = ProxyRegistry::new();
        registry.loads().configure(Duration::from_millis(100), 100);
        let config = base()
            .analysis("api", &format!("{threshold}\nmin_requests: 10\nwindow: 2s"))
            .config();
        let (c, _trigger) = on_config(&registry, Arc::new(MemoryStore::default()), config).await;
        let mut stream = registry.register(StreamKind::Aggregated, false);
        stream.set_node(Some(&NodeInfo {
            id: "a".into(),
            cluster: "edge".into(),
            user_agent: "envoy".into(),
        }));
        let load = registry.loads().open("a", "edge");
        let j = Judged {
            c,
            registry,
            stream,
            load,
            _trigger,
        };
        j.ack_routes();
        j
    }

    /// `a` ACKs the routes served now.
    fn ack_routes(&self) {
        use crate::xds::StreamEvent;
        let version = self
            .c
            .snapshot()
            .group("edge")
            .of(ResourceType::Route)
            .version()
            .to_owned();
        self.stream.record(&[
            StreamEvent::Sent {
                ty: ResourceType::Route,
                version: version.clone(),
                nonce: version.clone(),
                resources: 1,
            },
            StreamEvent::Acked {
                ty: ResourceType::Route,
                version,
            },
        ]);
    }

    /// `a` reports `success` and `errors` requests to api's `fleet`.
    fn report(&self, fleet: &str, success: u64, errors: u64) {
        let taken = self.registry.loads().report(
            &self.load,
            &[crate::xds::load::ClusterReport {
                cluster: format!("api-{fleet}"),
                success,
                errors,
                issued: success + errors,
                in_progress: 0,
            }],
            std::time::Instant::now(),
        );
        assert_eq!(taken.counted, 1, "{taken:?}");
    }

    /// Flips api to green, confirms it, and waits for its analysis.
    async fn flip_to_analysis(&self) -> watch::Receiver<Progress> {
        let mut rx = self
            .c
            .start(flip("api", true), "erin")
            .await
            .expect("starts");
        let wait = Duration::from_secs(10);
        tokio::time::timeout(wait, rx.wait_for(|p| p.version.is_some()))
            .await
            .expect("committed in time")
            .expect("progress channel open");
        self.ack_routes();
        tokio::time::timeout(wait, rx.wait_for(|p| p.phase == Phase::Analysis))
            .await
            .expect("analysing in time")
            .expect("progress channel open");
        rx
    }
}

/// Green failing 10% of what the proxy reports is rolled back well before
/// the window ends, and the history entry gives the figures.
#[tokio::test]
async fn a_flip_whose_traffic_fails_is_rolled_back_with_the_figures() {
    let j = Judged::new("max_error_ratio: 1%").await;
    let mut rx = j.flip_to_analysis().await;
    let started = std::time::Instant::now();
    j.report("green", 90, 10);
    let undo = tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|p| p.phase == Phase::RollingBack && p.version.is_some()),
    )
    .await
    .expect("rolling back in time")
    .expect("progress channel open")
    .clone();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "failed early, not at the window's end: {:?}",
        started.elapsed()
    );
    j.ack_routes();
    let ended = outcome(rx).await;
    let Outcome::RolledBack { reason } = ended else {
        panic!("rolled back: {ended:?} ({undo:?})");
    };
    let text = reason.to_string();
    assert!(
        text.starts_with(
            "green's error ratio was 10%, over the 1% allowed: 10 errors in 100 \
             requests reported by proxy a, "
        ),
        "{text}"
    );
    let history = j.c.history("api").await.expect("history");
    assert_eq!(
        history[0].outcome.reason().map(|r| r.to_string()),
        Some(text)
    );
    let status = web_or_api(&j.c, "api").await;
    assert_eq!(status.weights, split(&[("blue", 100), ("green", 0)]));
}

/// Healthy traffic passes, but only once the window has run; a baseline
/// measured from blue's reports before the flip lifts the threshold.
#[tokio::test]
async fn a_flip_whose_traffic_is_healthy_succeeds_at_the_end_of_its_window() {
    let j = Judged::new("max_error_ratio_over_baseline: 1%").await;
    // Blue fails 5% before the flip: 6% is allowed after it.
    j.report("blue", 95, 5);
    let rx = j.flip_to_analysis().await;
    let started = std::time::Instant::now();
    j.report("green", 945, 55);
    assert_eq!(outcome(rx).await, Outcome::Succeeded);
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "passed before its window ended: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_proxy_that_is_reconnecting_is_not_drained() {
    let registry = ProxyRegistry::new();
    registry.set_reconnect_hold(Duration::from_secs(30));
    registry.loads().configure(Duration::from_millis(20), 1000);
    let (c, _t) = on_registry(&registry, Arc::new(MemoryStore::default())).await;
    let flipped = c.start(flip("api", true), "x").await.expect("flip");
    assert_eq!(outcome(flipped).await, Outcome::Succeeded);
    let stream = synced_edge_proxy(&registry, &c, "edge-1");
    let load = registry.loads().open("edge-1", "edge");
    report_api(&registry, &load, "blue", 0);
    report_api(&registry, &load, "blue", 0);
    let drains = web_or_api(&c, "api").await.drains;
    assert!(drains[0].is_drained(), "{drains:?}");
    // Its xDS stream ends: its requests in flight go on while it
    // reconnects, so it is not drained until it reports again.
    drop(stream);
    let drains = web_or_api(&c, "api").await.drains;
    assert!(!drains[0].is_drained(), "{drains:?}");
}

#[tokio::test]
async fn status_counts_the_proxies_holding_the_routes_served_leaving_cordoned_ones_out() {
    use crate::xds::{NodeInfo, StreamEvent, StreamKind};

    let registry = ProxyRegistry::new();
    let (c, _trigger) = on_registry(&registry, Arc::new(MemoryStore::default())).await;
    let _synced = synced_edge_proxy(&registry, &c, "synced");
    // A proxy sent the routes that has not ACKed them.
    let mut behind = registry.register(StreamKind::Aggregated, false);
    behind.set_node(Some(&NodeInfo {
        id: "behind".into(),
        cluster: "edge".into(),
        user_agent: "envoy".into(),
    }));
    let routes = c
        .snapshot()
        .group("edge")
        .of(ResourceType::Route)
        .version()
        .to_owned();
    behind.record(&[StreamEvent::Sent {
        ty: ResourceType::Route,
        version: routes,
        nonce: "1".into(),
        resources: 1,
    }]);

    // A proxy that holds the routes and is an endpoints push behind still
    // routes by the weights: only the routes carry them.
    let endpoints_behind = synced_edge_proxy(&registry, &c, "endpoints-behind");
    endpoints_behind.record(&[StreamEvent::Sent {
        ty: ResourceType::Endpoint,
        version: "a-later-eds-version".into(),
        nonce: "2".into(),
        resources: 1,
    }]);

    let api = web_or_api(&c, "api").await;
    assert_eq!((api.applied.acked, api.applied.total), (2, 3));
    assert_eq!(api.applied.waiting_for, ["behind"]);
    assert_eq!(api.confirmed, None, "not every proxy holds the weights");

    assert!(c.cordon("behind", "test", "dave").await.expect("cordoned"));
    let api = web_or_api(&c, "api").await;
    assert_eq!((api.applied.acked, api.applied.total), (2, 2));
    assert_eq!(api.confirmed.as_ref(), Some(&api.weights));
}
