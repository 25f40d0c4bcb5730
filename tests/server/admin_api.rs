//! The admin API end to end: the real server on 127.0.0.1:0 over a fake
//! [`Backend`], driven by the real `teal` binary and by plain HTTP/1.1.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use teal::admin::Backend;
use teal::admin::Tokens;
use teal::metrics::Metrics;
use teal::rollout::drain::Draining;
use teal::rollout::{
    CheckResult, FleetDrain, HistoryEntry, Operation, Outcome, Phase, Progress, Reason,
    RolloutError, ServiceStatus, ShiftSteps, Split, StatusView, Verb, Version,
};
use teal::shutdown::{ShutdownTrigger, shutdown_channel};
use teal::xds::resources::{PerType, ResourceType};
use teal::xds::status::{Nack, TypeStatus};
use teal::xds::{NodeInfo, ProxyStatus, StreamKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const TOKEN: &str = "s3cret";

/// Stands in for the controller: `web` flips fine, `shaky` rolls back,
/// `full` cannot be saved, `closing` meets a server shutting down,
/// anything else is unknown.
#[derive(Default)]
struct FakeBackend {
    starts: AtomicUsize,
    last: Mutex<Option<(Operation, String)>>,
}

fn split(pairs: &[(&str, u32)]) -> Split {
    pairs.iter().map(|(f, w)| ((*f).to_owned(), *w)).collect()
}

fn progress(id: u64, service: &str, phase: Phase) -> Progress {
    Progress {
        id,
        service: service.to_owned(),
        verb: Verb::Flip,
        phase,
        step: 1,
        steps: 1,
        target: split(&[("blue", 0), ("green", 100)]),
        version: Some(Version::new(3, "v3")),
        acked: 1,
        total: 2,
        waiting_for: vec!["edge-2".into()],
        not_waiting_for: vec![],
        checks: vec![],
        message: String::new(),
        warnings: Vec::new(),
        outcome: None,
    }
}

fn type_status(sent: Option<&str>, acked: Option<&str>, nack: Option<&str>) -> TypeStatus {
    TypeStatus {
        subscribed: sent.is_some(),
        sent: sent.map(str::to_owned),
        sent_at: sent.map(|_| SystemTime::now()),
        acked: acked.map(str::to_owned),
        acked_at: acked.map(|_| SystemTime::now()),
        nack: nack.map(|v| Nack {
            version: v.to_owned(),
            message: "route: unknown cluster web-green".into(),
            at: SystemTime::now(),
        }),
    }
}

fn proxy(id: &str, stream_id: u64, types: [TypeStatus; 4]) -> ProxyStatus {
    ProxyStatus {
        stream_id,
        node: Some(NodeInfo {
            id: id.into(),
            cluster: "edge".into(),
            user_agent: "envoy 1.36".into(),
        }),
        kind: StreamKind::Aggregated,
        delta: false,
        connected_since: SystemTime::now(),
        identity: teal::transport::identity::PeerIdentity::Unauthenticated,
        types: types.into(),
        replica: None,
        disconnected: false,
    }
}

#[tonic::async_trait]
impl Backend for FakeBackend {
    async fn status(&self, service: Option<&str>) -> Result<StatusView, RolloutError> {
        if let Some(s) = service.filter(|s| *s != "web") {
            return Err(RolloutError::UnknownService {
                service: s.to_owned(),
                known: Vec::new(),
            });
        }
        let now = SystemTime::now();
        Ok(StatusView {
            version: Some(Version::new(2, "v2")),
            services: vec![ServiceStatus {
                name: "web".into(),
                live: "blue".into(),
                previous: Some("green".into()),
                rollback_to: Some(split(&[("blue", 0), ("green", 100)])),
                weights: split(&[("blue", 100), ("green", 0)]),
                retired: vec![],
                retirement: None,
                // green has no weight, and a long request still in flight.
                drains: vec![FleetDrain {
                    fleet: "green".into(),
                    proxies: 3,
                    idle: 1,
                    draining: vec![Draining {
                        proxy: "edge-2".into(),
                        in_flight: 2,
                    }],
                    draining_count: 1,
                    in_flight: 2,
                    silent: vec!["edge-3".into()],
                    silent_count: 1,
                }],
                both_fleets_since: Some(now - Duration::from_secs(600)),
                traffic: Vec::new(),
                applied: Default::default(),
                confirmed: None,
                route: None,
                last_change: Some(HistoryEntry {
                    id: 1,
                    verb: Verb::Flip,
                    actor: "alice".into(),
                    started: now - Duration::from_secs(60),
                    finished: now - Duration::from_secs(59),
                    from: split(&[("blue", 0), ("green", 100)]),
                    to: split(&[("blue", 100), ("green", 0)]),
                    version: Some(Version::new(2, "v2")),
                    outcome: Outcome::Succeeded,
                    convergence: Some(Duration::from_millis(340)),
                    acks: vec![("edge-1".into(), Duration::from_millis(120))],
                    target: Some(split(&[("blue", 100), ("green", 0)])),
                    warnings: Vec::new(),
                    not_waited_for: Vec::new(),
                }),
                in_progress: None,
            }],
        })
    }

    fn proxies(&self) -> Vec<ProxyStatus> {
        let synced = || type_status(Some("v2"), Some("v2"), None);
        vec![
            proxy("edge-1", 1, [synced(), synced(), synced(), synced()]),
            proxy(
                "edge-2",
                2,
                [
                    synced(),
                    synced(),
                    synced(),
                    type_status(Some("v2"), Some("v1"), None),
                ],
            ),
            proxy(
                "edge-3",
                3,
                [
                    synced(),
                    synced(),
                    type_status(None, None, None),
                    type_status(Some("v2"), Some("v1"), Some("v2")),
                ],
            ),
        ]
    }

    fn current_versions(&self) -> BTreeMap<String, PerType<String>> {
        BTreeMap::from([(
            "edge".to_owned(),
            ["v2", "v2", "v2", "v2"].map(String::from).into(),
        )])
    }

    async fn start(
        &self,
        op: Operation,
        actor: &str,
    ) -> Result<watch::Receiver<Progress>, RolloutError> {
        let service = op.service().to_owned();
        match service.as_str() {
            // The message names neither what the CLI looks for.
            "full" => return Err(RolloutError::Store("no space left on device".into())),
            "closing" => return Err(RolloutError::ShuttingDown),
            _ => {}
        }
        if !["web", "shaky", "slow"].contains(&service.as_str()) {
            return Err(RolloutError::UnknownService {
                service,
                known: Vec::new(),
            });
        }
        let id = self.starts.fetch_add(1, Ordering::SeqCst) as u64 + 7;
        *self.last.lock().expect("lock") = Some((op, actor.to_owned()));
        let (tx, rx) = watch::channel(progress(id, &service, Phase::Preparing));
        tokio::spawn(async move {
            if service == "slow" {
                // Keeps the operation running until the test ends.
                tx.closed().await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send_replace(progress(id, &service, Phase::Confirming));
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut done = progress(id, &service, Phase::Done);
            done.outcome = Some(if service == "web" {
                Outcome::Succeeded
            } else {
                Outcome::RolledBack {
                    reason: Reason::Recorded("edge-3 NACKed v3: unknown cluster".into()),
                }
            });
            tx.send_replace(done);
        });
        Ok(rx)
    }

    async fn follow(&self, id: u64) -> Result<watch::Receiver<Progress>, RolloutError> {
        Err(RolloutError::NoSuchOperation(id))
    }

    async fn abort(&self, id: u64, _actor: &str) -> Result<(), RolloutError> {
        Err(RolloutError::NoSuchOperation(id))
    }

    async fn verify(&self, _service: &str, fleet: &str) -> Result<Vec<CheckResult>, RolloutError> {
        Ok(vec![CheckResult {
            check: "health".into(),
            endpoint: format!("{fleet}-1:8080"),
            ok: true,
            detail: "200 in 3ms".into(),
        }])
    }

    async fn history(&self, _service: &str) -> Result<Vec<HistoryEntry>, RolloutError> {
        Ok(vec![])
    }
}

struct Admin {
    addr: SocketAddr,
    backend: Arc<FakeBackend>,
    metrics: Arc<Metrics>,
    _stop: ShutdownTrigger,
}

async fn start_admin() -> Admin {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let backend = Arc::new(FakeBackend::default());
    let metrics = Arc::new(Metrics::new());
    let (trigger, shutdown) = shutdown_channel();
    let tokens = Tokens::none().with("alice", TOKEN);
    tokio::spawn(teal::admin::serve(
        listener,
        teal::transport::listener::ConnectionLimits::default_for(
            teal::transport::listener::Port::Admin,
        ),
        backend.clone(),
        metrics.clone(),
        tokens,
        no_proxies(&shutdown),
        shutdown,
    ));
    Admin {
        addr,
        backend,
        metrics,
        _stop: trigger,
    }
}

/// Runs the real `teal` binary against `addr`.
async fn teal(addr: SocketAddr, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .arg("--admin")
        .arg(addr.to_string())
        .args(args)
        .env_remove("TEAL_TOKEN")
        .env_remove("TEAL_ADMIN")
        .env("TEAL_LOG", "warn")
        .output()
        .await
        .expect("run teal")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flip_without_a_token_is_refused_and_changes_nothing() {
    let admin = start_admin().await;
    let out = teal(admin.addr, &["flip", "web"]).await;
    assert_eq!(out.status.code(), Some(77), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("not allowed"),
        "{}",
        text(&out.stderr)
    );
    let out = teal(admin.addr, &["--token", "wrong", "flip", "web"]).await;
    assert_eq!(out.status.code(), Some(77), "{}", text(&out.stderr));
    assert_eq!(
        admin.backend.starts.load(Ordering::SeqCst),
        0,
        "backend start was called"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_flip_streams_progress_and_succeeds() {
    let admin = start_admin().await;
    let out = teal(
        admin.addr,
        &[
            "--token",
            TOKEN,
            "flip",
            "web",
            "--to",
            "green",
            "--timeout",
            "90s",
        ],
    )
    .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stderr.contains("confirming 3-v3: 1/2 proxies ACKed (waiting for edge-2)"),
        "{stderr}"
    );
    assert!(stdout.contains("succeeded"), "{stdout}");
    let (op, actor) = admin
        .backend
        .last
        .lock()
        .expect("lock")
        .clone()
        .expect("started");
    assert_eq!(actor, "alice");
    assert_eq!(
        op,
        Operation::Flip {
            service: "web".into(),
            to: Some("green".into()),
            skip_checks: false,
            timeout: Duration::from_secs(90)
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_flip_exits_2_with_the_reason() {
    let admin = start_admin().await;
    let out = teal(admin.addr, &["--token", TOKEN, "flip", "shaky"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("rolled-back: edge-3 NACKed v3: unknown cluster"),
        "{stderr}"
    );
    let out = teal(admin.addr, &["--token", TOKEN, "flip", "nope"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("unknown service"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_has_the_documented_fields() {
    let admin = start_admin().await;
    let out = teal(admin.addr, &["status", "web", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status -o json is JSON");
    assert_eq!(v["version"], "2-v2");
    let web = &v["services"][0];
    for field in [
        "name",
        "live",
        "previous",
        "weights",
        "retired",
        "retirement",
        "drains",
        "both_fleets_since_unix_ms",
        "both_fleets_for_ms",
        "last_change",
        "in_progress",
    ] {
        assert!(web.get(field).is_some(), "missing {field} in {web}");
    }
    assert_eq!(web["live"], "blue");
    assert_eq!(web["weights"]["blue"], 100);
    assert!(web["both_fleets_for_ms"].as_i64().expect("cost window") >= 600_000);
    let change = &web["last_change"];
    assert_eq!(change["outcome"], "succeeded");
    assert_eq!(change["convergence_ms"], 340);
    assert_eq!(change["actor"], "alice");

    let out = teal(admin.addr, &["status"]).await;
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("cost window: more than one fleet up for 10m"),
        "{stdout}"
    );
    assert!(stdout.contains("converged in 340ms"), "{stdout}");
    assert!(
        stdout.contains(
            "draining:    green: 1 of 3 proxies idle; 2 requests in flight on edge-2 (2); \
             no load reports from edge-3"
        ),
        "{stdout}"
    );
    let drain = &web["drains"][0];
    assert_eq!(drain["fleet"], "green");
    assert_eq!(drain["drained"], false);
    assert_eq!(drain["draining"][0]["proxy"], "edge-2");
    assert_eq!(drain["draining"][0]["in_flight"], 2);
    assert_eq!(drain["not_reporting"][0], "edge-3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_drained_times_out_naming_what_holds_the_fleet_and_refuses_what_cannot_drain() {
    let admin = start_admin().await;
    let started = std::time::Instant::now();
    let out = teal(
        admin.addr,
        &["wait", "drained", "web", "green", "--timeout", "1s"],
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(started.elapsed() >= Duration::from_secs(1), "it waited");
    assert!(
        stderr.contains("web green did not drain within 1.0s")
            && stderr.contains("edge-2 (2)")
            && stderr.contains("no load reports from edge-3"),
        "{stderr}"
    );
    assert!(
        stderr.contains("wait drained web green: 1 of 3 proxies idle"),
        "progress on stderr: {stderr}"
    );
    assert!(out.stdout.is_empty());
    for (fleet, says) in [("blue", "takes 100%"), ("red", "no fleet \"red\"")] {
        let out = teal(admin.addr, &["wait", "drained", "web", fleet]).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{fleet}: {stderr}");
        assert!(stderr.contains(says), "{fleet}: {stderr}");
    }
    let out = teal(admin.addr, &["wait", "drained", "nope", "blue"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("unknown service"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retire_carries_its_drain_timeout_and_the_server_default_when_not_given() {
    let admin = start_admin().await;
    for (args, wanted) in [
        (vec![], Duration::from_secs(300)),
        (vec!["--drain-timeout", "0s"], Duration::ZERO),
        (vec!["--drain-timeout", "90s"], Duration::from_secs(90)),
    ] {
        let mut full = vec!["--token", TOKEN, "retire", "web", "green"];
        full.extend(&args);
        let out = teal(admin.addr, &full).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let last = admin.backend.last.lock().expect("lock").clone();
        assert!(
            matches!(last, Some((Operation::Retire { drain_timeout, .. }, _)) if drain_timeout == wanted),
            "{args:?}: {last:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_table_tells_synced_stale_and_nacked() {
    let admin = start_admin().await;
    let out = teal(admin.addr, &["proxies"]).await;
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let row = |id: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(id))
            .unwrap_or_else(|| panic!("no {id} in\n{stdout}"))
            .to_owned()
    };
    let cells = |id: &str| -> Vec<String> {
        row(id)
            .split("  ")
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        cells("edge-1")[4..],
        ["SYNCED v2", "SYNCED v2", "SYNCED v2", "SYNCED v2"]
    );
    assert_eq!(cells("edge-2")[7], "STALE v1");
    assert_eq!(cells("edge-3")[6..], ["NOT SENT", "NACKED v2"]);
    assert!(
        stdout.contains("edge-3 RDS NACKED v2: route: unknown cluster web-green"),
        "{stdout}"
    );

    let out = teal(admin.addr, &["proxies", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["proxies"][2]["types"]["RDS"]["state"], "NACKED");
    assert_eq!(v["proxies"][1]["types"]["RDS"]["expected"], "v2");
}

async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("answer within 5s")
        .expect("read");
    text(&buf)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_healthz_answer_plain_http() {
    let admin = start_admin().await;
    admin.metrics.record_event(&teal::xds::StreamEvent::Nacked {
        ty: ResourceType::Route,
        version: "v2".into(),
        message: "bad".into(),
    });
    admin
        .metrics
        .observe_convergence(Duration::from_millis(340));
    let health = http_get(admin.addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("ok\n"), "{health}");
    let metrics = http_get(admin.addr, "/metrics").await;
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    assert!(
        metrics
            .to_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{metrics}"
    );
    for line in [
        "teal_connected_proxies{group=\"edge\"} 3",
        "teal_xds_nacks_total{type=\"RDS\"} 1",
        "teal_convergence_milliseconds_bucket{le=\"500\"} 1",
        "teal_service_weight{service=\"web\",fleet=\"blue\"} 100",
        "teal_service_weight{service=\"web\",fleet=\"green\"} 0",
        "teal_service_live{service=\"web\",fleet=\"blue\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_durations_and_weights_are_refused_before_sending() {
    let admin = start_admin().await;
    for (args, says) in [
        (vec!["flip", "web", "--timeout", "30"], "missing unit"),
        // The reason `teal validate` gives for the same text in a config.
        (
            vec!["flip", "web", "--timeout", "1.5s"],
            "\"1.5s\" is not a duration: fractions are not supported (write 1500ms, not 1.5s)",
        ),
        (
            vec!["retire", "web", "blue", "--after", "soon"],
            "not a duration",
        ),
        (
            vec!["retire", "web", "blue", "--drain-timeout", "25h"],
            "out of range",
        ),
        (
            vec!["wait", "drained", "web", "blue", "--timeout", "0s"],
            "out of range",
        ),
        (vec!["shift", "web", "--weight", "green=150"], "0 to 100"),
        (vec!["shift", "web", "--weight", "green"], "FLEET=WEIGHT"),
        (vec!["shift", "web", "--steps", "50,10"], "must rise"),
        (vec!["shift", "web"], "--weight"),
    ] {
        let mut full = vec!["--token", TOKEN];
        full.extend(&args);
        let out = teal(admin.addr, &full).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    // Weights that parse but do not add up are refused before the shift.
    let out = teal(
        admin.addr,
        &[
            "--token", TOKEN, "shift", "web", "--weight", "green=60", "--weight", "blue=60",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(64), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("sum to 120"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(admin.backend.starts.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shift_steps_become_splits_and_unreachable_admin_exits_69() {
    let admin = start_admin().await;
    let out = teal(
        admin.addr,
        &[
            "--token",
            TOKEN,
            "shift",
            "web",
            "--steps",
            "10,100",
            "--interval",
            "1m",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (op, _) = admin
        .backend
        .last
        .lock()
        .expect("lock")
        .clone()
        .expect("started");
    let Operation::Shift {
        steps, interval, ..
    } = op
    else {
        panic!("not a shift: {op:?}")
    };
    assert_eq!(
        steps,
        ShiftSteps::Percents {
            to: None,
            percents: vec![10, 100]
        }
    );
    assert_eq!(interval, Duration::from_secs(60));

    let closed = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = closed.local_addr().expect("addr");
    drop(closed);
    let out = teal(addr, &["status"]).await;
    assert_eq!(out.status.code(), Some(69), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot reach the teal admin API"),
        "{}",
        text(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_cannot_act_exits_69_by_the_error_kind() {
    let admin = start_admin().await;
    for service in ["full", "closing"] {
        let out = teal(admin.addr, &["--token", TOKEN, "flip", service]).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(69), "{service}: {stderr}");
        assert!(stderr.contains("the server could not act"), "{stderr}");
        assert!(!stderr.contains("cannot reach"), "{stderr}");
    }
    let out = teal(admin.addr, &["--token", TOKEN, "flip", "nope"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_changes_without_a_token_get_unauthenticated() {
    use teal::admin::pb;
    let admin = start_admin().await;
    let mut client = pb::admin_client::AdminClient::connect(format!("http://{}", admin.addr))
        .await
        .expect("connect");
    let flip = pb::FlipRequest {
        service: "web".into(),
        ..Default::default()
    };
    let e = client.flip(flip.clone()).await.expect_err("no token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = client
        .abort(pb::AbortRequest { id: 1 })
        .await
        .expect_err("no token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let mut req = tonic::Request::new(flip);
    req.metadata_mut()
        .insert("authorization", "Bearer nope".parse().expect("ascii"));
    let e = client.flip(req).await.expect_err("wrong token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // Registered fleets' endpoints change only with a token too.
    let e = client
        .change_fleet(pb::ChangeFleetRequest {
            service: "web".into(),
            fleet: "green".into(),
            change: pb::FleetChange::Set as i32,
            ..Default::default()
        })
        .await
        .expect_err("no token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    let e = client
        .heartbeat(pb::HeartbeatRequest {
            service: "web".into(),
            fleet: "green".into(),
            addresses: vec!["127.0.0.1:1".into()],
            ttl_ms: 1000,
        })
        .await
        .expect_err("no token");
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    assert_eq!(admin.backend.starts.load(Ordering::SeqCst), 0);
    // Reads need no token.
    let status = client
        .status(pb::StatusRequest { service: None })
        .await
        .expect("status");
    assert_eq!(status.into_inner().services[0].live, "blue");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctrl_c_stops_following_and_says_how_to_follow_again() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let admin = start_admin().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .args([
            "--admin",
            &admin.addr.to_string(),
            "--token",
            TOKEN,
            "flip",
            "slow",
        ])
        .env_remove("TEAL_TOKEN")
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn teal");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let first = tokio::time::timeout(Duration::from_secs(10), stderr.next_line())
        .await
        .expect("progress within 10s")
        .expect("read");
    assert!(
        first.as_deref().is_some_and(|l| l.contains("preparing")),
        "{first:?}"
    );
    let pid = child.id().expect("pid").to_string();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let mut rest = String::new();
    while let Ok(Some(line)) = stderr.next_line().await {
        rest.push_str(&line);
        rest.push('\n');
    }
    let status = child.wait().await.expect("wait");
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(rest.contains("goes on on the server"), "{rest}");
    assert!(rest.contains("teal status slow"), "{rest}");
}

/// A CSDS service with no proxy connected and nothing served: these tests
/// drive the admin API over a fake backend, without an xDS server.
fn no_proxies(shutdown: &teal::shutdown::Shutdown) -> teal::xds::ClientStatus {
    teal::xds::ClientStatus::new(
        teal::xds::ProxyRegistry::new(),
        teal::xds::snapshot_store::snapshot_store().1,
        teal::xds::CsdsLimits::default(),
        shutdown.clone(),
    )
}
