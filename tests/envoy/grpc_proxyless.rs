//! A real proxyless gRPC client follows a blue/green flip.
//!
//! The real `teal` binary serves a config whose group `mesh` has a `grpc`
//! listener for service `web`. Web's `blue` and `green` fleets are real
//! gRPC servers (Python grpcio) that answer with their fleet name. The
//! client is Python grpcio too, dialing `xds:///web` with a bootstrap that
//! points at teal and puts it in group `mesh`: gRPC's own xDS client fetches
//! the Listener, RouteConfiguration, clusters and endpoints from teal, with
//! no Envoy in between. The script is `tests/support/grpc_proxyless.py`.
//!
//! The test checks that the client's calls reach blue only; that teal's
//! `teal proxies` shows the client SYNCED on LDS, RDS, CDS and EDS at the
//! current version; that `teal flip web --to green` (the real CLI) succeeds,
//! with the client among the proxies whose ACK it waited for, after which
//! the client's calls reach green only; and that the client ACKed the new
//! routes (the only type a flip changes).
//!
//! Needs `python3` with grpcio (`python3 -m pip install grpcio==1.76.0`, as
//! `.ci/run` does); without it this test fails, it does not skip.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::{CONVERGE, free_port, http, show, wait_until};

/// The token the admin API accepts.
const TOKEN: &str = "secret";

/// The group the client joins, and its node id.
pub(super) const GROUP: &str = "mesh";
pub(super) const NODE_ID: &str = "grpc-client-1";

/// The helper script, both servers and client.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/grpc_proxyless.py")
}

/// Fails, with what to install, unless `python3` can import grpcio.
pub(super) fn require_grpcio() {
    let out = std::process::Command::new("python3")
        .args(["-c", "import grpc; print(grpc.__version__)"])
        .output();
    match out {
        Ok(out) if out.status.success() => {
            eprintln!("grpcio {}", String::from_utf8_lossy(&out.stdout).trim_end());
        }
        Ok(out) => panic!(
            "this test needs Python's grpcio: python3 -m pip install grpcio==1.76.0 \
             (python3 said: {})",
            String::from_utf8_lossy(&out.stderr).trim_end()
        ),
        Err(e) => panic!(
            "this test needs python3 with grpcio (python3 -m pip install grpcio==1.76.0); \
             running python3 failed: {e}"
        ),
    }
}

/// A child process whose stdout lines are collected as they come. Killed
/// when dropped; its stderr goes to a file printed if the test fails.
pub(super) struct Process {
    name: String,
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    log: PathBuf,
}

impl Process {
    pub(super) fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Process {
        let log = dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).expect("create a log file");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                sink.lock().expect("lines").push(line);
            }
        });
        Process {
            name: name.to_owned(),
            child,
            lines,
            log,
        }
    }

    pub(super) fn python(name: &str, args: &[&str], env: &[(&str, &Path)], dir: &Path) -> Process {
        let mut cmd = Command::new("python3");
        cmd.arg("-u").arg(script()).args(args);
        for (key, value) in env {
            cmd.env(key, value);
        }
        Process::spawn(name, cmd, dir)
    }

    pub(super) fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Waits until stdout has a line satisfying `check`, and returns it.
    pub(super) async fn wait_line(&mut self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + CONVERGE;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| check(l)) {
                return line;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{} exited ({status}) before {what}", self.name);
            }
            assert!(
                Instant::now() < deadline,
                "{} did not print {what} within {CONVERGE:?}; printed {:?}",
                self.name,
                self.lines()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- stderr of {} ----\n{}", self.name, self.log());
        }
        let _ = self.child.start_kill();
    }
}

/// Starts a gRPC server answering `fleet`, and returns it with its port.
pub(super) async fn fleet_server(fleet: &str, dir: &Path) -> (Process, u16) {
    let mut server = Process::python(fleet, &["server", fleet], &[], dir);
    let line = server
        .wait_line("its port", |l| l.starts_with("port "))
        .await;
    let port = line["port ".len()..]
        .parse()
        .unwrap_or_else(|e| panic!("{fleet} printed {line:?}: {e}"));
    (server, port)
}

fn config_yaml(blue: u16, green: u16) -> String {
    format!(
        "\
services:
  web:
    live: blue
    protocol: http2
    # What an Envoy would use, and gRPC ignores or reads its own way; it
    # must not refuse any of it.
    connect_timeout: 1s
    timeout: 5s
    retries:
      retry_on: 5xx,reset,connect-failure
      num_retries: 2
      per_try_timeout: 1s
    health_check:
      path: /healthz
    outlier_detection:
      consecutive_5xx: 5
    fleets:
      blue:
        endpoints: [127.0.0.1:{blue}]
      green:
        endpoints: [127.0.0.1:{green}]
groups:
  {GROUP}:
    listeners:
      clients:
        kind: grpc
        services: [web]
"
    )
}

/// gRPC's bootstrap: teal as the xDS server, the client in group `mesh`.
pub(super) fn bootstrap_json(xds: u16) -> String {
    serde_json::json!({
        "xds_servers": [{
            "server_uri": format!("127.0.0.1:{xds}"),
            "channel_creds": [{"type": "insecure"}],
            "server_features": ["xds_v3"],
        }],
        "node": {"id": NODE_ID, "cluster": GROUP},
    })
    .to_string()
}

/// Runs the teal CLI against the admin API on `admin`.
async fn cli(admin: u16, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_teal"))
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(args)
        .env("TEAL_TOKEN", TOKEN)
        .env_remove("TEAL_ADMIN")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run the teal CLI")
}

/// Runs the CLI with `-o json`, and parses what it prints.
pub(super) async fn json(admin: u16, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.extend(["-o", "json"]);
    let out = cli(admin, &all).await;
    assert_eq!(out.status.code(), Some(0), "teal {all:?}: {}", show(&out));
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("teal {all:?} printed no JSON ({e}): {}", show(&out)))
}

/// The version teal serves now, from `teal status`.
async fn version(admin: u16) -> String {
    let status = json(admin, &["status", "web"]).await;
    status["version"]
        .as_str()
        .unwrap_or_else(|| panic!("no version in {status}"))
        .to_owned()
}

/// The client's entry in `teal proxies`, if it is connected.
async fn client_status(admin: u16) -> Option<Value> {
    let proxies = json(admin, &["proxies"]).await;
    proxies["proxies"]
        .as_array()?
        .iter()
        .find(|p| p["node_id"] == NODE_ID)
        .cloned()
}

/// Whether `proxy` is SYNCED on all four types, having ACKed `rds` for
/// routes and `others` for the rest (teal versions each type by the last
/// change of its own content, so a flip moves RDS only).
fn synced_at(proxy: &Value, rds: &str, others: &str) -> bool {
    ["LDS", "RDS", "CDS", "EDS"].iter().all(|t| {
        let want = if *t == "RDS" { rds } else { others };
        proxy["types"][t]["state"] == "SYNCED" && proxy["types"][t]["acked"] == want
    })
}

/// Waits until the client is SYNCED in `teal proxies`, on the versions
/// [`synced_at`] takes.
async fn wait_client_synced(admin: u16, rds: &str, others: &str) -> Value {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let proxy = client_status(admin).await;
        if let Some(p) = proxy.as_ref().filter(|p| synced_at(p, rds, others)) {
            return p.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the gRPC client is not SYNCED with routes at {rds} and the rest at {others} \
             within {CONVERGE:?}: {proxy:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxyless_grpc_client_follows_a_flip() {
    require_grpcio();
    let dir = tempfile::Builder::new()
        .prefix("teal-grpc-")
        .tempdir()
        .expect("temporary directory");
    let (_blue, blue_port) = fleet_server("blue", dir.path()).await;
    let (_green, green_port) = fleet_server("green", dir.path()).await;
    let config = dir.path().join("teal.yaml");
    std::fs::write(&config, config_yaml(blue_port, green_port)).expect("write the config");

    // teal serve, the real binary.
    let (xds, admin) = (free_port(), free_port());
    let mut serve = Command::new(env!("CARGO_BIN_EXE_teal"));
    serve
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--xds-addr", &format!("127.0.0.1:{xds}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env("TEAL_ADMIN_TOKEN", TOKEN)
        .env("TEAL_LOG", "info")
        .env_remove("TEAL_ADMIN_TOKENS");
    let _teal = Process::spawn("teal serve", serve, dir.path());
    wait_until(CONVERGE, "teal's admin API answers", || async {
        http::get(admin, "/healthz", &[])
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    let v0 = version(admin).await;

    // The proxyless client.
    let bootstrap = dir.path().join("bootstrap.json");
    std::fs::write(&bootstrap, bootstrap_json(xds)).expect("write the bootstrap");
    let mut client = Process::python(
        "grpc client",
        &["client", "xds:///web"],
        &[("GRPC_XDS_BOOTSTRAP", &bootstrap)],
        dir.path(),
    );

    // Before the flip: blue answers, and only blue.
    client
        .wait_line("an answer", |l| l.starts_with("ok "))
        .await;
    let before = collect(&client, 20).await;
    assert!(
        before.iter().all(|l| l == "ok blue"),
        "before the flip, calls must reach blue only: {before:?}"
    );
    let proxy = wait_client_synced(admin, &v0, &v0).await;
    assert_eq!(proxy["group"], GROUP, "{proxy:#}");
    let so_far = client.lines();
    assert!(
        !so_far.iter().any(|l| l == "ok green"),
        "green answered before the flip: {so_far:?}"
    );

    // The flip, which returns once every proxy of the group, the client
    // included, has ACKed the new routes.
    let out = cli(admin, &["flip", "web", "--to", "green", "--timeout", "10s"]).await;
    assert_eq!(out.status.code(), Some(0), "teal flip: {}", show(&out));
    let v1 = version(admin).await;
    assert_ne!(v1, v0, "the flip changed nothing");
    let history = json(admin, &["history", "web"]).await;
    let flip = &history["entries"][0];
    assert_eq!(flip["verb"], "flip", "{history:#}");
    assert_eq!(flip["outcome"], "succeeded", "{history:#}");
    assert!(
        flip["acks"]
            .as_array()
            .is_some_and(|acks| acks.iter().any(|a| a["proxy"] == NODE_ID)),
        "the flip did not wait for the gRPC client's ACK: {history:#}"
    );
    let proxy = wait_client_synced(admin, &v1, &v0).await;
    assert_eq!(proxy["types"]["RDS"]["nack"], Value::Null, "{proxy:#}");

    // After the flip: once green answers, green answers every call.
    let seen = client.lines().len();
    wait_until(CONVERGE, "the client reaches green", || {
        let lines = client.lines();
        async move { lines[seen..].iter().any(|l| l == "ok green") }
    })
    .await;
    let after = collect(&client, 20).await;
    assert!(
        after.iter().all(|l| l == "ok green"),
        "after the flip, calls must reach green only: {after:?}"
    );
}

/// The next `n` lines the client prints (one per call).
pub(super) async fn collect(client: &Process, n: usize) -> Vec<String> {
    let from = client.lines().len();
    let what = format!("{n} more calls");
    wait_until(CONVERGE, &what, || {
        let count = client.lines().len();
        async move { count >= from + n }
    })
    .await;
    client.lines()[from..from + n].to_vec()
}
