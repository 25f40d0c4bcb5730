//! teal in-process on `127.0.0.1:0`, with its proxy registry at hand:
//! either the bare xDS server fed through the snapshot writer
//! ([`Teal::start`]), or all of `teal serve` on a config file
//! ([`Teal::serve`]); and what tests ask of the proxies it knows.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;

use teal::controller::Controller;
use teal::serve::{ServeOptions, start as serve_start};
use teal::shutdown::{ShutdownTrigger, shutdown_channel};
use teal::xds::resources::ResourceType;
use teal::xds::snapshot::{GroupResources, SnapshotInput};
use teal::xds::snapshot_store::{SnapshotWriter, snapshot_store};
use teal::xds::status::TypeStatus;
use teal::xds::{ProxyRegistry, ProxyStatus, XdsServer, XdsServerConfig};

use super::CONVERGE;

/// How often a [`Teal::serve`] checks its config file for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(200);

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
