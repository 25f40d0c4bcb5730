//! teal as operators run it: the real `teal serve` binary on a config file
//! and a state directory (`TEAL_ADMIN_TOKEN=secret`), real Envoys fed by
//! it, local upstreams for the fleets, and the real CLI to drive it.
//!
//! - [`TealProcess`]: `teal serve` as a child process, killed (`SIGKILL`)
//!   when dropped; restartable on the same ports and state directory.
//! - [`World`]: teal, three Envoys converged on it (one edge, group `edge`,
//!   state of the world; two sidecars, group `sidecar`, one delta and one
//!   state of the world, sharing the group's listener port through
//!   `SO_REUSEPORT`), and service `web` with fleets `blue` and `green`,
//!   each one local upstream that answers with its fleet name and has a
//!   `/healthz` its checks use (both can be told to fail). A third
//!   upstream, `red`, is there for configs that name a third fleet.
//! - [`ConfigSpec`]: the config file a world serves, to rewrite it (a
//!   reload) with fleets added, emptied or removed.
//! - [`Paused`]: an Envoy stopped with `SIGSTOP`, a proxy that holds its
//!   stream open and answers nothing; resumed when dropped.
//! - [`route_weights`]: the route weights an Envoy reports on its admin
//!   interface, the data plane's own word.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::process::{Child, Command};

use super::http::{self, Health};
use super::{
    CONVERGE, Envoy, Protocol, Traffic, Upstream, free_port, show, teal_binary, wait_until,
};

pub use super::TOKEN;

/// How long a flip may wait for every proxy to ACK.
pub const FLIP_TIMEOUT: &str = "10s";

/// The edge's route to the routed service in the usual world: every path.
pub const PREFIX_ROUTE: &str = "prefix: /";

/// The config file a [`World`] serves.
#[derive(Clone, Debug)]
pub struct ConfigSpec {
    /// `web`'s fleets in order, each with the ports of its endpoints on
    /// 127.0.0.1 (empty: `endpoints: []`); `None`: no service `web`.
    pub web: Option<Vec<(String, Vec<u16>)>>,
    /// `web`'s `live:` (the fleet it starts on).
    pub web_live: String,
    /// Service `api` (fleets `blue` and `green` on the same upstreams,
    /// no checks, live on blue): routed only by group `batch`, which no
    /// proxy joins, while `web` exists; by the edge and the sidecars
    /// otherwise.
    pub api: bool,
    /// The edge's route match.
    pub edge_route: String,
}

/// Ports a [`World`] fixes before it writes its config.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    /// blue, green and red upstreams.
    pub blue: u16,
    /// The green upstream.
    pub green: u16,
    /// The red upstream.
    pub red: u16,
    /// The edge's listener.
    pub edge: u16,
    /// The sidecars' shared listener.
    pub sidecar: u16,
    /// Group `batch`'s listener (no proxy uses it).
    pub batch: u16,
}

/// The smallest config with one service to flip: `web` (fleets blue and
/// green, each one endpoint on a free port nothing listens on) routed by
/// group `edge` on a free listener port, for tests whose proxies are
/// simulated.
pub fn web_on_edge_yaml() -> String {
    format!(
        "\
services:
  web:
    live: blue
    fleets:
      blue:
        endpoints: [127.0.0.1:{p1}]
      green:
        endpoints: [127.0.0.1:{p2}]
groups:
  edge:
    listeners:
      public:
        kind: edge
        address: 127.0.0.1:{l1}
        virtual_hosts:
          site:
            domains: ['*']
            routes:
              - prefix: /
                service: web
",
        p1 = free_port(),
        p2 = free_port(),
        l1 = free_port(),
    )
}

/// The config text for `spec` on `ports`.
pub fn config_yaml(spec: &ConfigSpec, ports: &Ports) -> String {
    let fleets = |fleets: &[(String, Vec<u16>)]| -> String {
        let mut s = String::new();
        for (name, eps) in fleets {
            s.push_str(&format!("      {name}:\n"));
            if eps.is_empty() {
                s.push_str("        endpoints: []\n");
            } else {
                s.push_str("        endpoints:\n");
                for p in eps {
                    s.push_str(&format!("          - 127.0.0.1:{p}\n"));
                }
            }
        }
        s
    };
    let mut yaml = String::from("services:\n");
    if let Some(web) = &spec.web {
        yaml.push_str(&format!(
            "  web:\n    live: {}\n    connect_timeout: 1s\n    timeout: 5s\n    fleets:\n{}\
             \x20   checks:\n      health:\n        path: /healthz\n        timeout: 1s\n",
            spec.web_live,
            fleets(web)
        ));
    }
    if spec.api {
        let api = [
            ("blue".to_owned(), vec![ports.blue]),
            ("green".to_owned(), vec![ports.green]),
        ];
        yaml.push_str(&format!(
            "  api:\n    live: blue\n    connect_timeout: 1s\n    fleets:\n{}",
            fleets(&api)
        ));
    }
    let routed = if spec.web.is_some() { "web" } else { "api" };
    let edge_route = &spec.edge_route;
    let (edge, sidecar) = (ports.edge, ports.sidecar);
    yaml.push_str(&format!(
        "
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
                service: {routed}
  sidecar:
    listeners:
      outbound:
        kind: sidecar
        address: 127.0.0.1:{sidecar}
        services: [{routed}]
"
    ));
    if spec.web.is_some() && spec.api {
        yaml.push_str(&format!(
            "  batch:\n    listeners:\n      outbound:\n        kind: sidecar\n        \
             address: 127.0.0.1:{}\n        services: [api]\n",
            ports.batch
        ));
    }
    yaml
}

/// The real `teal serve`, killed (SIGKILL) when dropped; its stderr goes to
/// a file that is printed when a test fails.
pub struct TealProcess {
    child: Child,
    log: PathBuf,
}

impl TealProcess {
    /// `teal serve` on `dir/teal.yaml` and the state directory `dir/state`.
    fn spawn(dir: &Path, xds: u16, admin: u16) -> TealProcess {
        TealProcess::spawn_with(dir, xds, admin, &[])
    }

    /// [`TealProcess::spawn`] with more flags.
    fn spawn_with(dir: &Path, xds: u16, admin: u16, extra: &[&str]) -> TealProcess {
        let log = dir.join(format!("teal-{}.log", free_port()));
        let stderr = std::fs::File::create(&log).expect("create teal's log");
        let child = Command::new(teal_binary())
            .args(["serve", "--config"])
            .arg(dir.join("teal.yaml"))
            .args(["--xds-addr", &format!("127.0.0.1:{xds}")])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--watch-interval", "0.2", "--drain", "0.2"])
            .args(extra)
            .env("TEAL_ADMIN_TOKEN", TOKEN)
            .env("TEAL_LOG", "info")
            .env_remove("TEAL_ADMIN_TOKENS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn teal serve");
        TealProcess { child, log }
    }

    /// Starts `teal serve` and waits until its admin API answers.
    pub async fn start(dir: &Path, xds: u16, admin: u16) -> TealProcess {
        TealProcess::start_with(dir, xds, admin, &[]).await
    }

    /// [`TealProcess::start`] with more flags.
    pub async fn start_with(dir: &Path, xds: u16, admin: u16, extra: &[&str]) -> TealProcess {
        let mut teal = TealProcess::spawn_with(dir, xds, admin, extra);
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

    /// Starts `teal serve` expecting it to exit at start-up, and returns
    /// how it exited and its log.
    ///
    /// # Panics
    ///
    /// If it still runs after [`CONVERGE`].
    pub async fn start_expecting_exit(dir: &Path, xds: u16, admin: u16) -> (ExitStatus, String) {
        let mut teal = TealProcess::spawn(dir, xds, admin);
        let status = tokio::time::timeout(CONVERGE, teal.child.wait())
            .await
            .unwrap_or_else(|_| panic!("teal serve kept running:\n{}", teal.log()))
            .expect("wait for teal serve");
        (status, teal.log())
    }

    /// What it wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// `kill -9`, and wait until it is gone.
    pub async fn kill_9(mut self) {
        self.child.start_kill().expect("SIGKILL teal");
        self.child.wait().await.expect("wait for teal");
    }

    /// `kill -TERM`, and wait (up to [`CONVERGE`]) until it exits.
    pub async fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().expect("teal runs");
        signal(pid, "TERM");
        tokio::time::timeout(CONVERGE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("teal serve did not exit on SIGTERM:\n{}", self.log()))
            .expect("wait for teal")
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

/// Sends `SIG<sig>` to `pid` with `kill(1)`.
fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{sig} {pid}: {status}");
}

/// An Envoy stopped with `SIGSTOP`: its ADS stream stays open and it
/// answers nothing (no ACK, no request), like a proxy that hangs. Resumed
/// (`SIGCONT`) by [`Paused::resume`] or when dropped, so a failing test
/// does not leave it stopped.
pub struct Paused {
    pid: Option<u32>,
}

impl Paused {
    /// Stops `envoy`.
    pub fn stop(envoy: &Envoy) -> Paused {
        let pid = envoy.pid().expect("Envoy runs");
        signal(pid, "STOP");
        Paused { pid: Some(pid) }
    }

    /// Lets it run again.
    pub fn resume(mut self) {
        if let Some(pid) = self.pid.take() {
            signal(pid, "CONT");
        }
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = std::process::Command::new("kill")
                .arg("-CONT")
                .arg(pid.to_string())
                .status();
        }
    }
}

/// teal, three Envoys converged on it, and web's fleets.
pub struct World {
    /// teal's xDS port.
    pub xds: u16,
    /// teal's admin port.
    pub admin: u16,
    /// The edge's listener.
    pub edge_port: u16,
    /// The sidecars' shared listener.
    pub sidecar_port: u16,
    /// Every port the config names.
    pub ports: Ports,
    /// `None` between a kill and a restart.
    pub teal: Option<TealProcess>,
    /// Edge (state of the world), sidecar (delta), sidecar (state of the
    /// world).
    pub envoys: Vec<Envoy>,
    /// blue's `/healthz`.
    pub blue_health: Arc<Health>,
    /// green's `/healthz`.
    pub green_health: Arc<Health>,
    _upstreams: Vec<Upstream>,
    /// Last, so that teal's log is still there when a failing test prints it.
    pub dir: tempfile::TempDir,
}

impl World {
    /// The usual world: the edge routes web by prefix.
    pub async fn start() -> World {
        World::start_with(PREFIX_ROUTE, false).await
    }

    /// A world whose edge routes web by `edge_route`, and whose edge Envoy
    /// has an admin runtime layer when `edge_runtime` is set.
    pub async fn start_with(edge_route: &str, edge_runtime: bool) -> World {
        World::start_custom(edge_runtime, |ports| World::usual_spec(ports, edge_route)).await
    }

    /// The config of the usual world on these ports: web live on blue,
    /// blue and green with one endpoint each, the edge routing web by
    /// `edge_route`.
    pub fn usual_spec(ports: &Ports, edge_route: &str) -> ConfigSpec {
        ConfigSpec {
            web: Some(vec![
                ("blue".to_owned(), vec![ports.blue]),
                ("green".to_owned(), vec![ports.green]),
            ]),
            web_live: "blue".to_owned(),
            api: false,
            edge_route: edge_route.to_owned(),
        }
    }

    /// A world serving the config `spec` makes of the ports, whose edge
    /// Envoy has an admin runtime layer when `edge_runtime` is set. Waits
    /// until every Envoy is SYNCED and, with a service web, on its `live`.
    pub async fn start_custom(
        edge_runtime: bool,
        spec: impl FnOnce(&Ports) -> ConfigSpec,
    ) -> World {
        let mut live = None;
        let world = World::start_edited(
            edge_runtime,
            |ports| {
                let spec = spec(ports);
                live = spec.web.is_some().then(|| spec.web_live.clone());
                spec
            },
            |yaml| yaml,
        )
        .await;
        if let Some(live) = live {
            world.assert_everyone_on(&live).await;
        }
        world
    }

    /// A world serving the config `spec` makes of the ports, as `edit`
    /// rewrites its text (for what [`ConfigSpec`] does not say, like
    /// `endpoints: registered`). Waits until every Envoy is SYNCED, not
    /// for any fleet to answer.
    pub async fn start_edited(
        edge_runtime: bool,
        spec: impl FnOnce(&Ports) -> ConfigSpec,
        edit: impl FnOnce(String) -> String,
    ) -> World {
        let blue_health = Health::new();
        let green_health = Health::new();
        let blue = Upstream::start_with_health("blue", blue_health.clone()).await;
        let green = Upstream::start_with_health("green", green_health.clone()).await;
        let red = Upstream::start("red").await;
        let ports = Ports {
            blue: blue.port,
            green: green.port,
            red: red.port,
            edge: free_port(),
            sidecar: free_port(),
            batch: free_port(),
        };
        let spec = spec(&ports);
        let dir = tempfile::Builder::new()
            .prefix("teal-flip-")
            .tempdir()
            .expect("temporary directory");
        std::fs::write(
            dir.path().join("teal.yaml"),
            edit(config_yaml(&spec, &ports)),
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
            edge_port: ports.edge,
            sidecar_port: ports.sidecar,
            ports,
            teal: Some(teal),
            envoys: vec![edge, sidecar_delta, sidecar_sotw],
            blue_health,
            green_health,
            _upstreams: vec![blue, green, red],
        };
        world.wait_all_synced().await;
        world
    }

    /// The config file's path.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("teal.yaml")
    }

    /// teal's log so far (of the running teal).
    pub fn log(&self) -> String {
        self.teal.as_ref().map(TealProcess::log).unwrap_or_default()
    }

    /// Rewrites the config file as `spec` says and waits until the
    /// running teal has logged what it made of it (a line with
    /// `config reload`: reloaded, refused or skipped); returns the log
    /// lines written since.
    pub async fn reload(&self, spec: &ConfigSpec) -> String {
        let before = self.log().len();
        super::write_atomically(&self.config_path(), &config_yaml(spec, &self.ports));
        let mut new = String::new();
        wait_until(CONVERGE, "teal logs a config reload", || {
            new = self.log().get(before..).unwrap_or_default().to_owned();
            let seen = new.contains("config reload");
            async move { seen }
        })
        .await;
        new
    }

    /// Restarts teal (after [`TealProcess::kill_9`]) on the same ports,
    /// config and state directory.
    pub async fn restart(&mut self) {
        assert!(self.teal.is_none(), "teal still runs");
        self.teal = Some(TealProcess::start(self.dir.path(), self.xds, self.admin).await);
    }

    /// Runs the CLI against this teal with `token` (none: no token at all).
    pub async fn cli_with(&self, token: Option<&str>, args: &[&str]) -> Output {
        self.command(token, args)
            .output()
            .await
            .expect("run the teal CLI")
    }

    fn command(&self, token: Option<&str>, args: &[&str]) -> Command {
        let mut cmd = Command::new(teal_binary());
        cmd.args(["--admin", &format!("127.0.0.1:{}", self.admin)])
            .args(args)
            .env_remove("TEAL_TOKEN")
            .env_remove("TEAL_ADMIN")
            .stdin(Stdio::null());
        if let Some(token) = token {
            cmd.env("TEAL_TOKEN", token);
        }
        cmd
    }

    /// Runs the CLI with the right token.
    pub async fn cli(&self, args: &[&str]) -> Output {
        self.cli_with(Some(TOKEN), args).await
    }

    /// Starts the CLI with the right token in the background (for an
    /// operation that runs while the test does something else); collect
    /// it with `wait_with_output`. Killed if dropped.
    pub fn cli_spawn(&self, args: &[&str]) -> Child {
        self.command(Some(TOKEN), args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn the teal CLI")
    }

    /// Runs the CLI with `-o json` and parses what it prints.
    pub async fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let out = self.cli(&all).await;
        assert_eq!(out.status.code(), Some(0), "teal {all:?}: {}", show(&out));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("teal {all:?} printed no JSON ({e}): {}", show(&out)))
    }

    /// `teal status web -o json`, the `web` entry and the version.
    pub async fn web_status(&self) -> (Value, String) {
        self.service_status("web").await
    }

    /// `teal status SERVICE -o json`, the service's entry and the version.
    pub async fn service_status(&self, service: &str) -> (Value, String) {
        let status = self.json(&["status", service]).await;
        let version = status["version"].as_str().expect("version").to_owned();
        let entry = status["services"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["name"] == service))
            .cloned()
            .unwrap_or_else(|| panic!("no {service} in {status}"));
        (entry, version)
    }

    /// Waits until web's status satisfies `check`, and returns it.
    pub async fn wait_web(&self, what: &str, mut check: impl FnMut(&Value) -> bool) -> Value {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let (web, _) = self.web_status().await;
            if check(&web) {
                return web;
            }
            assert!(
                Instant::now() < deadline,
                "web's status did not show {what} within {CONVERGE:?}: {web:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until web's operation in progress is in `phase` (and, for a
    /// shift, at step `step` when given), and returns that progress.
    pub async fn wait_phase(&self, phase: &str, step: Option<u64>) -> Value {
        let web = self
            .wait_web(&format!("phase {phase} at step {step:?}"), |web| {
                let p = &web["in_progress"];
                p["phase"] == phase && step.is_none_or(|s| p["step"] == s)
            })
            .await;
        web["in_progress"].clone()
    }

    /// `teal history web -o json`'s entries, newest first.
    pub async fn history(&self) -> Vec<Value> {
        self.json(&["history", "web"]).await["entries"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `teal proxies` shows all three Envoys SYNCED on every type.
    pub async fn wait_all_synced(&self) -> Value {
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
    pub async fn assert_everyone_on(&self, fleet: &str) {
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

    /// Waits until each of the Envoys `which` (indexes into
    /// [`World::envoys`]) reports exactly the web weights `expected`
    /// (clusters `web-<fleet>` with weight 0 may be left out by Envoy).
    pub async fn wait_weights(&self, which: &[usize], expected: &[(&str, u64)]) {
        let want: BTreeMap<String, u64> = expected
            .iter()
            .filter(|(_, w)| *w > 0)
            .map(|(f, w)| (format!("web-{f}"), *w))
            .collect();
        for &i in which {
            let envoy = &self.envoys[i];
            let deadline = Instant::now() + CONVERGE;
            loop {
                let mut last = route_weights(envoy).await;
                last.retain(|c, w| c.starts_with("web-") && *w > 0);
                if last == want {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} does not route web as {want:?} within {CONVERGE:?}: {last:?}",
                    envoy.node_id
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Requests through the edge, back to back, until stopped.
    pub fn edge_answers(&self) -> Traffic {
        Traffic::start(self.edge_port, "/", &[])
    }

    /// The endpoints Envoy `envoy` (an index into [`World::envoys`]) holds
    /// for `cluster`, as its admin `/clusters` lists them, sorted.
    pub async fn cluster_endpoints(&self, envoy: usize, cluster: &str) -> Vec<String> {
        let r = http::get(self.envoys[envoy].admin_port(), "/clusters", &[])
            .await
            .expect("GET /clusters");
        let prefix = format!("{cluster}::");
        let mut eps: Vec<String> = r
            .body
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
            .filter_map(|rest| rest.split("::").next())
            .map(str::to_owned)
            .collect();
        eps.sort();
        eps.dedup();
        eps
    }

    /// `GET /metrics` on the admin port.
    pub async fn metrics(&self) -> String {
        let r = http::get(self.admin, "/metrics", &[])
            .await
            .expect("GET /metrics");
        assert_eq!(r.status, 200, "{}", r.body);
        r.body
    }
}

/// The weight of each `web-*` cluster in the weighted route of the
/// Envoy's route configurations, as its admin interface reports it.
pub async fn route_weights(envoy: &Envoy) -> BTreeMap<String, u64> {
    let mut weights = BTreeMap::new();
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

fn collect_weights(v: &Value, out: &mut BTreeMap<String, u64>) {
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

/// A finished command's stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The bodies of `answers`, asserting every request got a 200.
pub fn bodies(answers: &[super::Answer]) -> Vec<String> {
    answers
        .iter()
        .map(|a| match a {
            Ok((200, body)) => body.clone(),
            other => panic!("a request failed: {other:?}; all answers: {answers:?}"),
        })
        .collect()
}
