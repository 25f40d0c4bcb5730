//! `teal serve`: wires the config, the snapshot store and the xDS server
//! together, and reloads the config when it changes.
//!
//! The config is validated whole before anything is published: a bad file
//! at start-up is an error (exit 65, every problem printed); a bad file at
//! reload is logged problem by problem and teal keeps serving the last good
//! version. Reloads happen on SIGHUP and when the file's contents change
//! (checked every [`ServeOptions::watch_interval`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::admin::{self, Metrics, Tokens};
use crate::config::{self, Config, Diagnostics};
use crate::controller::{self, Controller};
use crate::exit;
use crate::rollout::Backend;
use crate::shutdown::Shutdown;
use crate::snapshot_store::snapshot_store;
use crate::state::{FileStore, MemoryStore, StateStore};
use crate::xds::{ProxyRegistry, XdsServer, XdsServerConfig};

/// What `teal serve` was asked to do.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The config file; `None` serves the bundled example.
    pub config: Option<PathBuf>,
    /// Where the xDS server listens.
    pub xds_addr: SocketAddr,
    /// Where the admin API listens.
    pub admin_addr: SocketAddr,
    /// How often the config file is checked for changes.
    pub watch_interval: Duration,
    /// The admin API's tokens file (`name:token` per line); the
    /// `TEAL_ADMIN_TOKEN` environment variable adds a token named `admin`.
    pub admin_tokens: Option<PathBuf>,
    /// Where the durable state lives; `None` keeps it in memory only
    /// (tests and throwaway runs).
    pub state_dir: Option<PathBuf>,
    /// xDS server tunables.
    pub xds: XdsServerConfig,
}

impl ServeOptions {
    /// Options for running teal inside another program (tests, benchmarks,
    /// the demo): `config`, both servers on free loopback ports, state in
    /// memory only, no admin tokens, the file checked every second.
    pub fn local(config: Option<PathBuf>) -> ServeOptions {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        ServeOptions {
            config,
            xds_addr: any_port,
            admin_addr: any_port,
            watch_interval: Duration::from_secs(1),
            state_dir: None,
            admin_tokens: None,
            xds: XdsServerConfig::default(),
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
    /// The admin tokens file is unreadable or malformed.
    #[error("admin tokens: {0}")]
    Tokens(#[from] crate::admin::TokensError),
}

impl ServeError {
    /// The sysexits exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ServeError::ConfigUnreadable { .. } => exit::EX_NOINPUT,
            ServeError::ConfigInvalid(_) | ServeError::Tokens(_) => exit::EX_DATAERR,
            ServeError::Bind { .. } => exit::EX_UNAVAILABLE,
            ServeError::Transport(_) => exit::EX_SOFTWARE,
            ServeError::State(_) => exit::EX_CANTCREAT,
            ServeError::Controller(e) => e.exit_code(),
        }
    }
}

/// Where the config comes from, and its last contents.
#[derive(Debug)]
struct ConfigSource {
    path: Option<PathBuf>,
    /// What was last read, to skip reloads of an unchanged file.
    last_text: String,
    /// The last read failed (and was logged).
    unreadable: bool,
}

impl ConfigSource {
    fn name(&self) -> String {
        match &self.path {
            Some(p) => p.display().to_string(),
            None => config::DEFAULT_CONFIG_NAME.to_owned(),
        }
    }

    async fn read(&self) -> Result<String, ServeError> {
        match &self.path {
            None => Ok(config::DEFAULT_CONFIG.to_owned()),
            Some(p) => {
                tokio::fs::read_to_string(p)
                    .await
                    .map_err(|source| ServeError::ConfigUnreadable {
                        path: p.display().to_string(),
                        source,
                    })
            }
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
    /// Waits until the server stops (after shutdown, or on failure).
    pub async fn wait(self) -> Result<(), ServeError> {
        match self.task.await {
            Ok(result) => result,
            Err(e) => {
                tracing::error!(error = %e, "teal serve task failed");
                Ok(())
            }
        }
    }
}

/// Runs `teal serve` until `shutdown`.
pub async fn run(opts: ServeOptions, shutdown: Shutdown) -> Result<(), ServeError> {
    start(opts, shutdown).await?.wait().await
}

/// Loads the config, binds the sockets and starts serving; returns once
/// teal is listening. Errors here are the start-up errors (bad config,
/// port in use); nothing is served when one happens.
pub async fn start(opts: ServeOptions, shutdown: Shutdown) -> Result<Running, ServeError> {
    let mut source = ConfigSource {
        path: opts.config.clone(),
        last_text: String::new(),
        unreadable: false,
    };
    let text = source.read().await?;
    let config = Config::parse(&text, &source.name()).map_err(ServeError::ConfigInvalid)?;
    source.last_text = text;

    let (writer, reader) = snapshot_store();
    let store: Arc<dyn StateStore> = match &opts.state_dir {
        Some(dir) => Arc::new(FileStore::open(dir)?),
        None => Arc::new(MemoryStore::default()),
    };
    let tokens = Tokens::load(opts.admin_tokens.as_deref())?;
    let metrics = Arc::new(Metrics::new());
    let registry: Arc<ProxyRegistry> = ProxyRegistry::with_sink(metrics.clone());
    let (controller, _driver) = controller::start(
        config,
        writer,
        store,
        registry.clone(),
        metrics.clone(),
        shutdown.clone(),
    )
    .await?;
    tracing::info!(config = %source.name(), version = %controller.snapshot().version(), "serving config");
    let listener = bind(opts.xds_addr).await?;
    let xds_addr = local_addr(&listener, opts.xds_addr)?;
    let admin_listener = bind(opts.admin_addr).await?;
    let admin_addr = local_addr(&admin_listener, opts.admin_addr)?;
    let backend: Arc<dyn Backend> = Arc::new(controller.clone());
    let admin_task = tokio::spawn(admin::serve(
        admin_listener,
        backend,
        metrics,
        tokens,
        shutdown.clone(),
    ));
    tokio::spawn(async move {
        if let Ok(Err(e)) = admin_task.await {
            tracing::error!(error = %e, "admin API failed");
        }
    });
    let server = XdsServer::new(reader, registry.clone(), shutdown.clone(), opts.xds.clone());
    let server_task = tokio::spawn(server.serve(listener));
    let task = tokio::spawn(supervise(
        opts,
        source,
        controller.clone(),
        server_task,
        shutdown,
    ));
    Ok(Running {
        xds_addr,
        admin_addr,
        registry,
        controller,
        task,
    })
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

/// Reloads the config while the server runs, and reports how it ended.
async fn supervise(
    opts: ServeOptions,
    mut source: ConfigSource,
    controller: Controller,
    mut server_task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    shutdown: Shutdown,
) -> Result<(), ServeError> {
    let mut hangup = hangup_signal();
    let mut tick = tokio::time::interval(opts.watch_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut stop = shutdown;
    loop {
        tokio::select! {
            () = stop.wait() => break,
            joined = &mut server_task => return server_result(joined),
            () = next_hangup(&mut hangup) => reload(&mut source, &controller, true).await,
            _ = tick.tick(), if source.path.is_some() => reload(&mut source, &controller, false).await,
        }
    }
    tracing::info!("shutting down: draining xDS streams");
    server_result(server_task.await)
}

fn server_result(
    joined: Result<Result<(), tonic::transport::Error>, tokio::task::JoinError>,
) -> Result<(), ServeError> {
    match joined {
        Ok(result) => result.map_err(ServeError::from),
        Err(e) => {
            tracing::error!(error = %e, "xDS server task failed");
            Ok(())
        }
    }
}

/// Re-reads the config; publishes it if it is valid and changed.
/// `forced` (SIGHUP) reloads even an unchanged file.
async fn reload(source: &mut ConfigSource, controller: &Controller, forced: bool) {
    let text = match source.read().await {
        Ok(text) => text,
        Err(e) => {
            // Said once, not on every check, while the file stays unreadable.
            if forced || !source.unreadable {
                tracing::warn!(error = %e, "config reload skipped; still serving the last good config");
            }
            source.unreadable = true;
            return;
        }
    };
    source.unreadable = false;
    if text == source.last_text && !forced {
        return;
    }
    source.last_text = text.clone();
    match Config::parse(&text, &source.name()) {
        Err(problems) => {
            for p in &problems.0 {
                tracing::error!(problem = %p, "config rejected");
            }
            tracing::warn!(
                problems = problems.0.len(),
                "config reload refused; still serving the last good config"
            );
        }
        Ok(config) => match controller.reload(config).await {
            Ok(outcome) => tracing::info!(%outcome, "config reloaded"),
            Err(e) => tracing::error!(error = %e, "config reload refused"),
        },
    }
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
