//! `teal serve`: wires the config, the snapshot store and the xDS server
//! together, and reloads the config when it changes.
//!
//! The config is validated whole before anything is published: a bad file
//! at start-up is an error (exit 65, every problem printed); a bad file at
//! reload is logged problem by problem and teal keeps serving the last good
//! version. Reloads happen on SIGHUP and when the file's contents change
//! (checked every [`ServeOptions::watch_interval`]).

use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::admin::Backend;
use crate::admin::{self, Tokens};
use crate::config::{self, Config, Diagnostics};
use crate::controller::{self, Controller};
use crate::exit;
use crate::kubernetes::KubeFleets;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;
use crate::state::{EtcdStore, FileStore, MemoryStore, StateError, StateStore};
use crate::transport::identity::IdentityGate;
use crate::transport::listener::{ConnectionLimits, Port};
use crate::transport::tls::{Reloaded, ServerTls, TlsError, TlsFiles};
use crate::xds::cordon::Cordons;
use crate::xds::snapshot_store::snapshot_store;
use crate::xds::{ProxyRegistry, XdsServer, XdsServerConfig};

/// What `teal serve` was asked to do.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The config file; `None` serves the bundled example.
    pub config: Option<PathBuf>,
    /// Bounds on reading the config file, at start and at every reload.
    pub config_limits: config::Limits,
    /// Where the xDS server listens.
    pub xds_addr: SocketAddr,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// How often the config file is checked for changes.
    pub watch_interval: Duration,
    /// The admin API's tokens file (`name:token` per line); the
    /// `TEAL_ADMIN_TOKEN` environment variable adds a token named `admin`.
    pub admin_tokens: Option<PathBuf>,
    /// The largest tokens file read (`--admin-tokens-max-bytes`).
    pub admin_tokens_max_bytes: u64,
    /// Where the durable state lives; `None` keeps it in memory only
    /// (tests and throwaway runs). With [`ServeOptions::etcd`], only the
    /// local files (cordons, the local admin token) live here.
    pub state_dir: Option<PathBuf>,
    /// Keep the state in etcd, shared with other replicas, instead of in
    /// `state_dir`.
    pub etcd: Option<crate::state::EtcdOptions>,
    /// With etcd: the TTL of the lease that holds the leadership.
    pub leader_lease: Duration,
    /// With etcd: how long the leader keeps waiting for the proxies of a
    /// replica whose lease ended, when they do not show up elsewhere.
    pub departed_hold: Duration,
    /// With etcd: the admin address other replicas send the CLI to when
    /// this replica leads; the bound admin address by default.
    pub advertise_admin: Option<String>,
    /// xDS server tunables.
    pub xds: XdsServerConfig,
    /// Bounds on the admin port's connections.
    pub admin_connections: ConnectionLimits,
    /// TLS on the xDS port (mTLS with a client CA).
    pub xds_tls: Option<TlsFiles>,
    /// TLS on the admin port (mTLS with a client CA).
    pub admin_tls: Option<TlsFiles>,
    /// Serve the admin API in plaintext on a non-loopback address anyway.
    pub admin_insecure: bool,
    /// Bounds on what teal keeps of Kubernetes EndpointSlices, and how
    /// often it writes an HTTPRoute's status.
    pub kube: crate::kubernetes::KubeLimits,
    /// The `controllerName` of the GatewayClasses teal implements
    /// (`--gateway-controller-name`).
    pub gateway_controller_name: String,
    /// Bounds on endpoints registered through the admin API.
    pub endpoint_limits: crate::rollout::registration::EndpointLimits,
    /// Bounds on the gates' requests on the admin port.
    pub gate_limits: admin::GateLimits,
    /// Bounds on the dashboard's event streams on the admin port.
    pub event_limits: admin::EventLimits,
}

impl ServeOptions {
    /// Options for running teal inside another program (tests, benchmarks,
    /// the demo): `config`, both servers on free loopback ports, state in
    /// memory only, no admin tokens, the file checked every second.
    pub fn local(config: Option<PathBuf>) -> ServeOptions {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        ServeOptions {
            config,
            config_limits: config::Limits::default(),
            xds_addr: any_port,
            admin_addr: any_port,
            watch_interval: Duration::from_secs(1),
            state_dir: None,
            etcd: None,
            leader_lease: crate::ha::DEFAULT_LEASE,
            departed_hold: crate::ha::DEFAULT_DEPARTED_HOLD,
            advertise_admin: None,
            admin_tokens: None,
            admin_tokens_max_bytes: admin::auth::DEFAULT_MAX_TOKENS_BYTES,
            xds: XdsServerConfig::default(),
            admin_connections: ConnectionLimits::default_for(Port::Admin),
            xds_tls: None,
            admin_tls: None,
            admin_insecure: false,
            kube: crate::kubernetes::KubeLimits::default(),
            gateway_controller_name: crate::kubernetes::DEFAULT_CONTROLLER_NAME.to_owned(),
            endpoint_limits: Default::default(),
            gate_limits: admin::GateLimits::default(),
            event_limits: admin::EventLimits::default(),
        }
    }
}

/// Why `teal serve` stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The config could not be read.
    #[error("cannot read {path}: {source}")]
    ConfigUnreadable {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config has problems.
    #[error("the config has problems:\n{0}")]
    ConfigInvalid(Diagnostics),
    /// A listening socket could not be opened.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("xDS server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The durable state could not be opened or read.
    #[error("state: {0}")]
    State(#[from] crate::state::StateError),
    /// The controller could not start.
    #[error("{0}")]
    Controller(#[from] crate::controller::ControllerError),
    /// The cordons file is unreadable or malformed.
    #[error("{0}")]
    Cordons(#[from] crate::xds::cordon::CordonError),
    /// The admin tokens file is unreadable or malformed.
    #[error("admin tokens: {0}")]
    Tokens(#[from] crate::admin::TokensError),
    /// The state directory or its local token cannot be used (unwritable,
    /// or owned by another user).
    #[error("the local admin token: {0}")]
    LocalToken(#[from] admin::local_token::LocalTokenError),
    /// `--advertise-admin` is not an address the CLI may be sent to.
    #[error("--advertise-admin {addr:?}: {why}")]
    AdvertiseAdmin {
        /// The address given.
        addr: String,
        /// What is wrong with it.
        why: String,
    },
    /// A port's certificate, key or client CA cannot be used.
    #[error("{} TLS: {source}", port.name())]
    Tls {
        /// Which port.
        port: Port,
        /// What is wrong.
        source: TlsError,
    },
    /// The admin API would listen in plaintext beyond this machine.
    #[error(
        "--admin-addr {0} is not a loopback address: give the admin API a certificate \
         (--admin-tls-cert and --admin-tls-key), or pass --admin-insecure to serve it in \
         plaintext anyway"
    )]
    InsecureAdmin(SocketAddr),
    /// The admin API server failed.
    #[error("admin API failed: {0}")]
    Admin(tonic::transport::Error),
    /// A task teal cannot serve without panicked, or stopped before
    /// shutdown: a bug. teal exits rather than go on half alive.
    #[error("the {task} task {how}")]
    TaskFailed {
        /// Which task.
        task: &'static str,
        /// `panicked: <message>`, or what else happened to it.
        how: String,
    },
}

impl ServeError {
    /// The sysexits exit code for this error.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            ServeError::ConfigUnreadable { .. } => exit::EX_NOINPUT,
            ServeError::ConfigInvalid(_) | ServeError::Tokens(_) => exit::EX_DATAERR,
            ServeError::Bind { .. } => exit::EX_UNAVAILABLE,
            ServeError::Tls {
                source: TlsError::Unreadable { .. },
                ..
            } => exit::EX_NOINPUT,
            ServeError::Tls { .. } => exit::EX_DATAERR,
            ServeError::InsecureAdmin(_) | ServeError::AdvertiseAdmin { .. } => exit::EX_USAGE,
            ServeError::LocalToken(admin::local_token::LocalTokenError::NotOwned { .. }) => {
                exit::EX_NOPERM
            }
            ServeError::Cordons(crate::xds::cordon::CordonError::Io { .. }) => exit::EX_CANTCREAT,
            ServeError::Cordons(_) => exit::EX_DATAERR,
            ServeError::Transport(_) | ServeError::Admin(_) | ServeError::TaskFailed { .. } => {
                exit::EX_SOFTWARE
            }
            ServeError::State(StateError::NewerFormat { .. }) => exit::EX_DATAERR,
            ServeError::State(_) | ServeError::LocalToken(_) => exit::EX_CANTCREAT,
            ServeError::Controller(e) => e.exit_code(),
        }
    }
}

/// Where the config comes from, and its last contents.
#[derive(Debug)]
struct ConfigSource {
    path: Option<PathBuf>,
    limits: config::Limits,
    /// What was last read, to skip reloads of an unchanged file.
    last: Arc<Vec<u8>>,
    /// The last read failed (and was logged).
    unreadable: bool,
}

/// What one look at the config file found, at a reload.
enum Loaded {
    /// The same bytes as last time (and the reload was not forced).
    Unchanged,
    /// New bytes, and what they parse to.
    Changed {
        bytes: Arc<Vec<u8>>,
        parsed: Result<Config, Diagnostics>,
    },
}

/// Stack of the thread that reads and parses the config. The loader's
/// depth limit is proven against this size (see `config::MAX_MAX_DEPTH`).
const LOADER_STACK: usize = 2 * 1024 * 1024;

impl ConfigSource {
    fn name(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => config::DEFAULT_CONFIG_NAME.to_owned(),
        }
    }

    /// Reads the file (at most the size limit) and hands its bytes to
    /// `then`, which parses them.
    ///
    /// Both run on a thread of their own, not on the async runtime: a large
    /// file takes a while to check, and that time must not stall xDS
    /// streams or shutdown. A detached thread rather than `spawn_blocking`,
    /// because the runtime waits for its blocking tasks when it shuts down
    /// and a SIGTERM during a reload must not wait for the parse; nor for a
    /// read that hangs (a FIFO with no writer).
    async fn load<T: Send + 'static>(
        &self,
        then: impl FnOnce(Vec<u8>, &str, &config::Limits) -> T + Send + 'static,
    ) -> Result<T, ServeError> {
        let (path, limits, name) = (self.path.clone(), self.limits, self.name());
        let unreadable = |source| ServeError::ConfigUnreadable {
            path: name.clone(),
            source,
        };
        let (tx, rx) = tokio::sync::oneshot::channel();
        let file = name.clone();
        std::thread::Builder::new()
            .name("teal-config".to_owned())
            .stack_size(LOADER_STACK)
            .spawn(move || {
                let read = match &path {
                    None => Ok(config::DEFAULT_CONFIG.as_bytes().to_vec()),
                    Some(p) => config::read_bounded(p, limits.max_bytes),
                };
                // The receiver is gone only when teal is shutting down.
                let _ = tx.send(read.map(|bytes| then(bytes, &file, &limits)));
            })
            .map_err(unreadable)?;
        match rx.await {
            Ok(loaded) => loaded.map_err(unreadable),
            // The thread ended without an answer: it panicked.
            Err(_) => Err(unreadable(std::io::Error::other(
                "the config loader stopped unexpectedly",
            ))),
        }
    }
}

/// A started `teal serve`: where it listens, and the task running it.
#[derive(Debug)]
pub struct Running {
    /// The address the xDS server is bound to (useful with port 0).
    pub xds_addr: SocketAddr,
    /// The address the admin API is bound to.
    pub admin_addr: SocketAddr,
    /// The proxy registry, for in-process callers and tests.
    pub registry: Arc<ProxyRegistry>,
    /// The controller, for in-process callers and tests.
    pub controller: Controller,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl Running {
    /// Waits until the server stops (after shutdown, or on failure). A
    /// panic in any of teal's tasks is an error here, never a clean stop.
    pub async fn wait(self) -> Result<(), ServeError> {
        joined("supervisor", self.task.await)?
    }
}

/// The result of a task teal cannot serve without; a panic (or a
/// cancellation) becomes [`ServeError::TaskFailed`], logged once here.
fn joined<T>(
    task: &'static str,
    result: Result<T, tokio::task::JoinError>,
) -> Result<T, ServeError> {
    result.map_err(|e| {
        let how = if e.is_panic() {
            let payload = e.into_panic();
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned());
            format!("panicked: {message}")
        } else {
            "was cancelled".to_owned()
        };
        failed(task, how)
    })
}

/// Logs and returns a [`ServeError::TaskFailed`].
fn failed(task: &'static str, how: String) -> ServeError {
    tracing::error!(task, what = %how, "a task of teal serve failed; exiting");
    ServeError::TaskFailed { task, how }
}

/// The digest replicas compare their configs by: SHA-256 of the file's
/// bytes, first 12 hex digits.
fn config_digest(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Runs `teal serve` until `shutdown`.
pub(crate) async fn run(opts: ServeOptions, shutdown: Shutdown) -> Result<(), ServeError> {
    start(opts, shutdown).await?.wait().await
}

/// Loads the config, binds the sockets and starts serving; returns once
/// teal is listening. Errors here are the start-up errors (bad config,
/// port in use); nothing is served when one happens.
pub async fn start(opts: ServeOptions, shutdown: Shutdown) -> Result<Running, ServeError> {
    refuse_open_plaintext_admin(&opts)?;
    check_advertise_admin(&opts)?;
    let xds_tls = load_tls(Port::Xds, opts.xds_tls.clone())?;
    let admin_tls = load_tls(Port::Admin, opts.admin_tls.clone())?;
    let mut source = ConfigSource {
        path: opts.config.clone(),
        limits: opts.config_limits,
        last: Arc::default(),
        unreadable: false,
    };
    let (bytes, parsed) = source
        .load(|bytes, file, limits| {
            let parsed = Config::from_bytes(&bytes, file, limits);
            (bytes, parsed)
        })
        .await?;
    let config = parsed.map_err(ServeError::ConfigInvalid)?;
    source.last = Arc::new(bytes);
    let identities = IdentityGate::new();
    identities.set(config.identity_policy());

    let (writer, reader) = snapshot_store();
    if let Some(dir) = &opts.state_dir {
        // The local admin token is written before the store is opened
        // (with etcd no file store ever creates it).
        std::fs::create_dir_all(dir).map_err(|e| StateError::io(dir, e))?;
        // Another user's directory is refused whatever the tokens: its
        // owner could change teal's state, or plant a local token.
        admin::local_token::check_dir(dir)?;
    }
    let file_tokens = Tokens::load(opts.admin_tokens.as_deref(), opts.admin_tokens_max_bytes)?;
    let local_token = local_token(&file_tokens, &opts)?;
    let tokens = with_local(file_tokens, local_token.as_deref());
    let metrics = Arc::new(Metrics::new());
    let cordons = match &opts.state_dir {
        Some(dir) => Cordons::open(dir)?,
        None => Cordons::in_memory(),
    };
    let registry: Arc<ProxyRegistry> =
        ProxyRegistry::with_sink_and_cordons(metrics.clone(), Arc::new(cordons));
    registry.set_reconnect_hold(opts.xds.proxy_reconnect_hold);
    let loads = &opts.xds.load_reports;
    registry
        .loads()
        .configure(loads.interval, loads.max_reports_per_sec);
    // The admin port is bound first: a replica's leader record names its
    // address.
    let admin_listener = bind(opts.admin_addr).await?;
    let admin_addr = local_addr(&admin_listener, opts.admin_addr)?;
    let (store, leadership) = open_store(&opts, admin_addr, &source.last, &registry, &shutdown)?;
    // A replica serves proxies only while it holds its etcd lease.
    let serving = leadership.as_ref().map(crate::ha::Leadership::serving);
    let kube_config = config.clone();
    let (controller, driver) = controller::start_replica(
        config,
        writer,
        store,
        registry.clone(),
        metrics.clone(),
        shutdown.clone(),
        leadership,
    )
    .await?;
    let controller =
        controller.with_endpoint_limits(crate::rollout::registration::EndpointLimits {
            admin_addr: Some(admin_addr),
            ..opts.endpoint_limits
        });
    tracing::info!(config = %source.name(), version = %controller.snapshot().version(), "serving config");
    // The xDS port opens once Kubernetes fleets have their first lists, so
    // no proxy is served a Kubernetes fleet empty.
    let mut kube = KubeFleets::new(
        controller.clone(),
        opts.kube,
        opts.gateway_controller_name.clone(),
        metrics.clone(),
    );
    kube.follow(&kube_config).await;
    let listener = bind(opts.xds_addr).await?;
    let xds_addr = local_addr(&listener, opts.xds_addr)?;
    let backend: Arc<dyn Backend> = Arc::new(controller.clone());
    let xds_config = XdsServerConfig {
        tls: xds_tls.clone(),
        identities: identities.clone(),
        serving,
        ..opts.xds.clone()
    };
    let server = XdsServer::new(reader, registry.clone(), shutdown.clone(), xds_config);
    let admin_task = tokio::spawn(admin::serve_tls(
        admin_listener,
        opts.admin_connections,
        admin_tls.clone(),
        admin::Parts {
            backend,
            metrics,
            tokens: tokens.clone(),
            registry: registry.clone(),
            csds: server.client_status(),
            gates: opts.gate_limits,
            events: opts.event_limits,
        },
        shutdown.clone(),
    ));
    let server_task = tokio::spawn(server.serve(listener));
    let tasks = Tasks {
        xds: server_task,
        admin: admin_task,
        driver,
        tls: [xds_tls, admin_tls].into_iter().flatten().collect(),
        identities,
        tokens,
        local_token,
        kube,
    };
    let task = tokio::spawn(supervise(opts, source, controller.clone(), tasks, shutdown));
    Ok(Running {
        xds_addr,
        admin_addr,
        registry,
        controller,
        task,
    })
}

/// Refuses an `--advertise-admin` the CLI would be sent to and must not
/// follow: another scheme than the admin port's (`http://` for a TLS port
/// would send tokens in the clear; `https://` for a plaintext one fails),
/// user information (`user@host`), or not an address at all. A bare
/// `host:port` takes the scheme of the CLI that is sent there.
fn check_advertise_admin(opts: &ServeOptions) -> Result<(), ServeError> {
    let Some(addr) = &opts.advertise_admin else {
        return Ok(());
    };
    let refused = |why: String| ServeError::AdvertiseAdmin {
        addr: addr.clone(),
        why,
    };
    let tls = opts.admin_tls.is_some();
    let authority = match addr.split_once("://") {
        Some(_) => {
            let uri: http::Uri = addr
                .parse()
                .map_err(|e| refused(format!("not an address: {e}")))?;
            let scheme = uri.scheme_str().unwrap_or_default();
            let expected = if tls { "https" } else { "http" };
            if scheme != expected {
                return Err(refused(format!(
                    "the scheme is {scheme}:// but the admin API serves {expected}:// \
                     ({}); the CLI would refuse to follow it",
                    if tls {
                        "--admin-tls-cert is given"
                    } else {
                        "no --admin-tls-cert"
                    }
                )));
            }
            uri.authority().cloned()
        }
        None => Some(
            addr.parse::<http::uri::Authority>()
                .map_err(|e| refused(format!("not HOST:PORT: {e}")))?,
        ),
    };
    match authority {
        Some(a) if a.as_str().contains('@') => Err(refused(
            "it carries user information (`...@`): give the host and port only".to_owned(),
        )),
        Some(a) if !a.host().is_empty() => Ok(()),
        _ => Err(refused("no host".to_owned())),
    }
}

/// Refuses a plaintext admin API on an address other machines reach,
/// unless `--admin-insecure` says so (and then warns).
fn refuse_open_plaintext_admin(opts: &ServeOptions) -> Result<(), ServeError> {
    if opts.admin_addr.ip().is_loopback() || opts.admin_tls.is_some() {
        return Ok(());
    }
    if !opts.admin_insecure {
        return Err(ServeError::InsecureAdmin(opts.admin_addr));
    }
    tracing::warn!(
        addr = %opts.admin_addr,
        "the admin API listens in plaintext beyond this machine (--admin-insecure): \
         tokens and every answer cross the network in the clear"
    );
    Ok(())
}

/// Where the durable state is kept: etcd (and then this process is one
/// replica, campaigning to lead), a state directory, or memory.
fn open_store(
    opts: &ServeOptions,
    admin_addr: SocketAddr,
    config_bytes: &[u8],
    registry: &Arc<ProxyRegistry>,
    shutdown: &Shutdown,
) -> Result<(Arc<dyn StateStore>, Option<crate::ha::Leadership>), ServeError> {
    Ok(match (&opts.etcd, &opts.state_dir) {
        (Some(etcd), _) => {
            let exposed = password_in_clear(etcd);
            if !exposed.is_empty() {
                tracing::warn!(
                    endpoints = %exposed.join(","),
                    "the etcd password (--store-user) goes in plaintext to etcd beyond this \
                     machine: anyone on the path can read it; give --store-ca for TLS"
                );
            }
            let client = crate::state::etcd::EtcdClient::new(etcd.clone())?;
            let fence = crate::state::etcd::Fence::default();
            let store = EtcdStore::fenced(client.clone(), fence.clone())?;
            let me = crate::ha::ReplicaInfo {
                id: crate::ha::new_replica_id(),
                admin: opts
                    .advertise_admin
                    .clone()
                    .unwrap_or_else(|| admin_addr.to_string()),
                config_digest: config_digest(config_bytes),
            };
            tracing::info!(replica = %me.id, admin = %me.admin, config = %me.config_digest,
                lease = ?opts.leader_lease, "replica on etcd; campaigning to lead");
            let leadership = crate::ha::Leadership::start(
                client,
                me,
                &crate::ha::ReplicaOptions {
                    lease: opts.leader_lease,
                    departed_hold: opts.departed_hold,
                },
                Some(registry.clone()),
                fence,
                shutdown.clone(),
            );
            (Arc::new(store), Some(leadership))
        }
        (None, Some(dir)) => (Arc::new(FileStore::open(dir)?), None),
        (None, None) => (Arc::new(MemoryStore::default()), None),
    })
}

/// The etcd endpoints a password would reach in plaintext: with a user
/// and no TLS, those not on loopback (an address or `localhost`). teal
/// warns rather than refuses: a private network may be trusted, and
/// refusing would stop replicas that ran before.
fn password_in_clear(etcd: &crate::state::EtcdOptions) -> Vec<String> {
    if etcd.user.is_none() || etcd.tls.is_some() {
        return Vec::new();
    }
    etcd.endpoints
        .iter()
        .filter(|e| {
            let host = e
                .parse::<http::uri::Authority>()
                .map(|a| {
                    a.host()
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .to_owned()
                })
                .unwrap_or_default();
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            !loopback
        })
        .cloned()
        .collect()
}

fn load_tls(port: Port, files: Option<TlsFiles>) -> Result<Option<Arc<ServerTls>>, ServeError> {
    let Some(files) = files else {
        return Ok(None);
    };
    let tls = ServerTls::load(port, files).map_err(|source| ServeError::Tls { port, source })?;
    tracing::info!(
        port = port.name(),
        cert = %tls.files().cert.display(),
        client_certificates = if tls.requires_client_certificate() { "required" } else { "not asked for" },
        "TLS on"
    );
    Ok(Some(tls))
}

/// Runs `f` on a detached thread, like the config loader (a file that
/// hangs must not stall streams or shutdown); `None` if it could not run.
async fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("teal-reload".to_owned())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .ok()?;
    rx.await.ok()
}

/// Re-reads the admin tokens (SIGHUP): a token removed from the file is
/// refused from now on. A file that does not load is refused and the
/// tokens in force stay. The local token is not from the file: it stays
/// in force on the same terms as at start (while no other token is).
async fn reload_tokens(
    tokens: &Tokens,
    file: Option<PathBuf>,
    max_bytes: u64,
    local: Option<&str>,
) {
    match off_runtime(move || Tokens::load(file.as_deref(), max_bytes)).await {
        Some(Ok(new)) => {
            tokens.replace(&with_local(new, local));
            tracing::info!("admin tokens reloaded");
        }
        Some(Err(e)) => tracing::error!(
            error = %e,
            "admin tokens reload refused; the tokens in force stay"
        ),
        None => tracing::warn!("cannot re-read the admin tokens; the tokens in force stay"),
    }
}

/// Re-reads every port's TLS files, off the runtime (like the config, on
/// a detached thread: a file that hangs must not stall streams or
/// shutdown), and logs what changed. `forced` (SIGHUP) rebuilds even
/// unchanged files and logs an unchanged refusal again.
async fn reload_tls(tls: &[Arc<ServerTls>], forced: bool) {
    if tls.is_empty() {
        return;
    }
    let ports = tls.to_vec();
    let reloaded = off_runtime(move || {
        ports
            .iter()
            .map(|t| (t.port(), t.reload(forced)))
            .collect::<Vec<(Port, Reloaded)>>()
    });
    let Some(results) = reloaded.await else {
        tracing::warn!("cannot re-read the TLS files; the certificates in force stay");
        return;
    };
    for (port, result) in results {
        match result {
            Reloaded::Unchanged | Reloaded::StillRefused => {}
            Reloaded::Rotated => {
                tracing::info!(
                    port = port.name(),
                    "TLS certificate reloaded; new handshakes use it"
                )
            }
            Reloaded::Refused(e) => tracing::error!(
                port = port.name(),
                error = %e,
                "TLS reload refused; the previous certificate keeps serving"
            ),
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

fn local_addr(listener: &TcpListener, addr: SocketAddr) -> Result<SocketAddr, ServeError> {
    listener
        .local_addr()
        .map_err(|source| ServeError::Bind { addr, source })
}

/// The tasks `teal serve` cannot go on without; [`supervise`] watches
/// them all, so that any of them failing ends teal with an error.
struct Tasks {
    xds: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    admin: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    driver: tokio::task::JoinHandle<()>,
    /// The ports' TLS, re-read with the config.
    tls: Vec<Arc<ServerTls>>,
    /// Which identities may join which group; set at every reload.
    identities: Arc<IdentityGate>,
    /// The admin tokens in force; re-read on SIGHUP.
    tokens: Tokens,
    /// The state directory's local token, when teal was given no other.
    local_token: Option<String>,
    /// The watchers of Kubernetes fleets; they follow every applied reload.
    kube: KubeFleets,
}

/// When teal was given no token and keeps its state in a directory, the
/// directory's local token (see [`admin::local_token`]), so the CLI on
/// this machine can make changes without any set-up.
fn local_token(tokens: &Tokens, opts: &ServeOptions) -> Result<Option<String>, ServeError> {
    let Some(dir) = opts.state_dir.as_deref().filter(|_| tokens.is_empty()) else {
        return Ok(None);
    };
    let path = admin::local_token::path(dir);
    let token = admin::local_token::ensure(dir)?;
    tracing::info!(
        file = %crate::text::untrusted(&path.display().to_string()),
        "no admin token configured: changes need the local token in this file (mode 0600), \
         which the teal CLI on this machine reads by default; set TEAL_ADMIN_TOKEN or \
         --admin-tokens to use your own"
    );
    Ok(Some(token))
}

/// `tokens`, or, when there is none, the local token (if any) as the actor
/// `local`.
fn with_local(tokens: Tokens, local: Option<&str>) -> Tokens {
    match local {
        Some(token) if tokens.is_empty() => tokens.with(admin::local_token::ACTOR, token),
        _ => tokens,
    }
}

/// Reloads the config while the server runs, and reports how it ended.
async fn supervise(
    opts: ServeOptions,
    mut source: ConfigSource,
    controller: Controller,
    mut tasks: Tasks,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    let mut hangup = hangup_signal();
    // `interval` panics on a zero period; the CLI refuses one, a library
    // caller gets the shortest period instead.
    let period = opts.watch_interval.max(Duration::from_millis(1));
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stop = shutdown;
    let mut driver_done = false;
    let mut admin_done = false;
    loop {
        tokio::select! {
            // Shutdown first: the driver and the admin API also stop on
            // it, and that is no failure.
            biased;
            () = stop.wait() => break,
            joined = &mut tasks.xds => return server_result(joined),
            result = &mut tasks.admin => {
                if stop.is_triggered() {
                    // It heard the shutdown first: no failure. Its result
                    // (a panic on the way out) still counts.
                    joined("admin API", result)?.map_err(ServeError::Admin)?;
                    admin_done = true;
                    break;
                }
                return admin_result(result);
            }
            joined = &mut tasks.driver => {
                joined_driver(joined)?;
                if stop.is_triggered() {
                    // The driver heard the shutdown before this loop did
                    // (they are woken by the same signal, in no set order).
                    driver_done = true;
                    break;
                }
                return Err(failed("controller", "stopped before shutdown".to_owned()));
            }
            () = next_hangup(&mut hangup) => {
                reload_tls(&tasks.tls, true).await;
                reload_tokens(
                    &tasks.tokens,
                    opts.admin_tokens.clone(),
                    opts.admin_tokens_max_bytes,
                    tasks.local_token.as_deref(),
                )
                .await;
                if reload(&mut source, &controller, &tasks.identities, &mut tasks.kube, true, &mut stop).await.is_break() {
                    break;
                }
            }
            _ = tick.tick(), if source.path.is_some() || !tasks.tls.is_empty() => {
                reload_tls(&tasks.tls, false).await;
                if source.path.is_none() {
                    continue;
                }
                if reload(&mut source, &controller, &tasks.identities, &mut tasks.kube, false, &mut stop).await.is_break() {
                    break;
                }
            }
        }
    }
    tracing::info!("shutting down: draining xDS streams");
    let served = server_result(tasks.xds.await);
    // The admin API gets a moment more to end its streams: a dashboard's
    // event stream says that teal is stopping, and without this the
    // process could exit before that last event left. Not longer: a
    // `teal follow` stream could hold it open for good.
    if !admin_done && let Ok(result) = tokio::time::timeout(ADMIN_FAREWELL, &mut tasks.admin).await
    {
        joined("admin API", result)?.map_err(ServeError::Admin)?;
    }
    // The driver stops at once on shutdown; a panic on the way is still
    // reported.
    if !driver_done {
        joined_driver(tasks.driver.await)?;
    }
    served
}

fn joined_driver(result: Result<(), tokio::task::JoinError>) -> Result<(), ServeError> {
    joined("controller", result)
}

fn server_result(
    result: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), ServeError> {
    joined("xDS server", result)?.map_err(ServeError::from)
}

fn admin_result(
    result: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), ServeError> {
    match joined("admin API", result)? {
        Ok(()) => Err(failed("admin API", "stopped before shutdown".to_owned())),
        Err(e) => {
            tracing::error!(error = %e, "admin API failed; exiting");
            Err(ServeError::Admin(e))
        }
    }
}

/// How long, at most, shutdown waits for the admin API's streams to end
/// once the xDS streams are drained (the event streams' own farewell is
/// bounded by a second too).
const ADMIN_FAREWELL: Duration = Duration::from_secs(1);

/// Most problems of a refused reload that are logged one by one; the
/// rest are counted. A file can hold a great many (one per repeated key),
/// and the first ones are what an operator reads.
const MAX_LOGGED_PROBLEMS: usize = 100;

/// Re-reads the config; publishes it if it is valid and changed.
/// `forced` (SIGHUP) reloads even an unchanged file. Breaks when `stop`
/// fires while the file is being read or parsed.
async fn reload(
    source: &mut ConfigSource,
    controller: &Controller,
    identities: &IdentityGate,
    kube: &mut KubeFleets,
    forced: bool,
    stop: &mut Shutdown,
) -> ControlFlow<()> {
    let last = source.last.clone();
    let load = source.load(move |bytes, file, limits| {
        if !forced && bytes == *last {
            Loaded::Unchanged
        } else {
            let parsed = Config::from_bytes(&bytes, file, limits);
            Loaded::Changed {
                bytes: Arc::new(bytes),
                parsed,
            }
        }
    });
    let loaded = tokio::select! {
        () = stop.wait() => return ControlFlow::Break(()),
        loaded = load => loaded,
    };
    let (bytes, parsed) = match loaded {
        Ok(Loaded::Unchanged) => {
            source.unreadable = false;
            return ControlFlow::Continue(());
        }
        Ok(Loaded::Changed { bytes, parsed }) => (bytes, parsed),
        Err(e) => {
            // Said once, not on every check, while the file stays unreadable.
            if forced || !source.unreadable {
                tracing::warn!(error = %e, "config reload skipped; still serving the last good config");
            }
            source.unreadable = true;
            return ControlFlow::Continue(());
        }
    };
    source.unreadable = false;
    source.last = bytes;
    match parsed {
        Err(problems) => {
            for p in problems.0.iter().take(MAX_LOGGED_PROBLEMS) {
                tracing::error!(problem = %p, "config rejected");
            }
            tracing::warn!(
                problems = problems.0.len(),
                logged = problems.0.len().min(MAX_LOGGED_PROBLEMS),
                "config reload refused; still serving the last good config"
            );
        }
        Ok(config) => {
            let policy = config.identity_policy();
            let kube_config = config.clone();
            match controller.reload(config).await {
                Ok(outcome) => {
                    identities.set(policy);
                    // A deferred config is applied when the operation in
                    // the way ends; a new fleet's endpoints, refused
                    // until then, are offered again.
                    kube.follow(&kube_config).await;
                    tracing::info!(%outcome, "config reloaded")
                }
                Err(e) => tracing::error!(error = %e, "config reload refused"),
            }
        }
    }
    ControlFlow::Continue(())
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = ();

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {}

#[cfg(unix)]
async fn next_hangup(h: &mut Hangup) {
    match h {
        Some(sig) => {
            sig.recv().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangup) {
    std::future::pending().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etcd_password_in_plaintext_beyond_loopback_is_named() {
        let endpoints = [
            "127.0.0.1:2379",
            "localhost:2379",
            "[::1]:2379",
            "10.0.0.5:2379",
            "etcd.internal:2379",
        ]
        .map(str::to_owned)
        .to_vec();
        let mut etcd = crate::state::EtcdOptions::new(endpoints, "/teal/");
        assert!(password_in_clear(&etcd).is_empty(), "no password");
        etcd.user = Some(("teal".to_owned(), "pw".to_owned()));
        assert_eq!(
            password_in_clear(&etcd),
            vec!["10.0.0.5:2379".to_owned(), "etcd.internal:2379".to_owned()]
        );
        etcd.tls = Some(crate::state::etcd::EtcdTls {
            ca: None,
            cert: None,
            key: None,
        });
        assert!(password_in_clear(&etcd).is_empty(), "over TLS");
    }

    #[tokio::test]
    async fn a_panicked_task_is_an_error_with_exit_70() {
        let task = tokio::spawn(async {
            if std::hint::black_box(true) {
                panic!("boom at {}", 42);
            }
            Ok(())
        });
        let err = server_result(task.await).expect_err("a panic is no clean stop");
        assert!(
            matches!(&err, ServeError::TaskFailed { task: "xDS server", how } if how == "panicked: boom at 42"),
            "{err}"
        );
        assert_eq!(err.exit_code(), exit::EX_SOFTWARE);

        let admin = tokio::spawn(async { panic!("static message") });
        let err = admin_result(admin.await).expect_err("a panic is no clean stop");
        assert_eq!(
            err.to_string(),
            "the admin API task panicked: static message"
        );

        let driver = tokio::spawn(std::future::pending::<()>());
        driver.abort();
        let err = joined_driver(driver.await).expect_err("cancelled");
        assert_eq!(err.to_string(), "the controller task was cancelled");
    }

    #[tokio::test]
    async fn a_clean_stop_is_ok() {
        let task = tokio::spawn(async { Ok(()) });
        assert!(server_result(task.await).is_ok());
        let driver = tokio::spawn(async {});
        assert!(joined_driver(driver.await).is_ok());
    }

    #[tokio::test]
    async fn wait_reports_a_panicked_supervisor() {
        let mut running = start(
            ServeOptions::local(None),
            crate::shutdown::shutdown_channel().1,
        )
        .await
        .expect("starts on the bundled config");
        running.task.abort();
        running.task = tokio::spawn(async { panic!("supervisor bug") });
        let err = running.wait().await.expect_err("a panic is no clean stop");
        assert_eq!(
            err.to_string(),
            "the supervisor task panicked: supervisor bug"
        );
        assert_eq!(err.exit_code(), exit::EX_SOFTWARE);
    }
}
