//! The controller: runs rollouts against the real world.
//!
//! One task (the driver) owns everything that decides what teal serves:
//! the config, the durable state, and the snapshot writer. Admin calls
//! reach it as commands through the cloneable [`Controller`] handle,
//! which implements the admin API's [`Backend`]. The driver feeds each
//! running [`Rollout`](crate::rollout::machine::Rollout) the proxies'
//! state (from the [`ProxyRegistry`]), check results and the clock, and
//! carries out what it asks:
//!
//! - **Commit** builds the new snapshot (validating it whole), saves the
//!   new state durably, and only then serves the snapshot. A crash between
//!   the two serves the saved state on restart, so teal never serves an
//!   older state than it committed, and version numbers never go back.
//! - **RunChecks** runs the service's checks in a task of its own.
//!
//! Versions ([`Version`]) are `{seq}-{digest}`: a sequence number kept in
//! the state store and a digest of the content, so a restart with the same
//! state serves the very same version string.

mod command;
mod cordons;
mod driver;
mod endpoints;
mod follow;
mod measured;
mod reconcile;
mod replica;
mod views;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::admin::Backend;
use crate::config::Config;
#[cfg(test)]
use crate::config::Endpoint;
use crate::metrics::Metrics;
use crate::rollout::{
    CheckResult, HistoryEntry, Operation, Progress, RolloutError, RouteView, StatusView, Version,
};
use crate::shutdown::Shutdown;
use crate::state::{PersistedState, Revision, StateStore};
use crate::xds::resources::PerType;
use crate::xds::snapshot::Snapshot;
use crate::xds::snapshot_store::{SnapshotReader, SnapshotWriter};
use crate::xds::{ProxyRegistry, ProxyStatus};

pub(crate) use crate::rollout::registration::EndpointLimits;
use command::{Command, CordonChange};
pub(crate) use command::{ControllerError, ReloadError, Reloaded};
use driver::Driver;
pub use reconcile::ReconcileError;
#[cfg(test)]
pub(crate) use views::proxy_views;

/// The handle the admin API and `teal serve` use.
#[derive(Clone, Debug)]
pub struct Controller {
    tx: mpsc::Sender<Command>,
    registry: Arc<ProxyRegistry>,
    snapshots: SnapshotReader,
    /// Bounds on endpoints from outside the file, sent with each change
    /// (the driver is already running when `teal serve` sets them).
    endpoint_limits: EndpointLimits,
    leadership: Option<crate::ha::Leadership>,
    /// What each route task last said of its route, by service; read into
    /// `status` answers. Locked briefly, never across an await.
    routes: Arc<std::sync::Mutex<BTreeMap<String, RouteView>>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

/// Starts the controller: loads the durable state (or starts from the
/// config), publishes the first snapshot and spawns the driver.
#[cfg(test)]
pub(crate) async fn start(
    config: Config,
    writer: SnapshotWriter,
    store: Arc<dyn StateStore>,
    registry: Arc<ProxyRegistry>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
) -> Result<(Controller, tokio::task::JoinHandle<()>), ControllerError> {
    start_replica(config, writer, store, registry, metrics, shutdown, None).await
}

/// [`start`], as one of several replicas sharing `store`: operations run
/// (and resume) only while `leadership` says this replica leads.
pub(crate) async fn start_replica(
    config: Config,
    writer: SnapshotWriter,
    store: Arc<dyn StateStore>,
    registry: Arc<ProxyRegistry>,
    metrics: Arc<Metrics>,
    shutdown: Shutdown,
    leadership: Option<crate::ha::Leadership>,
) -> Result<(Controller, tokio::task::JoinHandle<()>), ControllerError> {
    let (mut state, revision) = match store.load().await? {
        Some(stored) => (stored.state, stored.revision),
        None => (PersistedState::default(), Revision(0)),
    };
    // Registrations that ran out while teal was stopped are not served at
    // all; the first commit below saves them gone.
    state.registered.expire(std::time::SystemTime::now());
    let snapshots = writer.reader();
    let (checks_tx, checks_rx) = mpsc::channel(64);
    let overlay = state.registered.overlay();
    let mut driver = Driver {
        config: config.with_endpoints(&overlay),
        file_config: config,
        overlay,
        writer,
        store,
        state,
        revision,
        registry: registry.clone(),
        running: BTreeMap::new(),
        finished: HashMap::new(),
        checks_tx,
        metrics,
        pending_reload: None,
        expiry_retry: None,
        next_expiry_at: None,
        leadership: leadership.clone(),
        legacy_cordons: registry.cordons().take_legacy(),
    };
    driver.reconcile()?;
    driver.next_expiry_at = driver.state.registered.next_expiry();
    let version = if driver.leadership.is_some() && driver.revision > Revision(0) {
        // A replica joining others serves what they stored, and saves
        // nothing until it leads.
        driver.publish_stored()?
    } else {
        driver.publish_current(true).await?
    };
    // The stored cordons, in force before any operation resumes.
    driver.apply_cordons();
    if let Some(legacy) = &driver.legacy_cordons {
        tracing::warn!(cordons = legacy.cordons.len(), file = %legacy.path.display(),
            "the cordons of an old cordons file join the stored ones when this replica leads");
    }
    tracing::info!(%version, store = %driver.store.describe(), "controller started");
    let (tx, rx) = mpsc::channel(64);
    let controller = Controller {
        tx,
        registry,
        snapshots,
        endpoint_limits: EndpointLimits::default(),
        leadership,
        routes: Arc::default(),
    };
    if driver.leadership.is_none() {
        driver.resume_operations(&version).await;
    }
    let task = tokio::spawn(driver.run(rx, checks_rx, shutdown));
    Ok((controller, task))
}

impl Controller {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, RolloutError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| RolloutError::ShuttingDown)?;
        rx.await.map_err(|_| RolloutError::ShuttingDown)
    }

    /// Replaces the config (already validated) and publishes it, or defers
    /// it while an operation depends on what it changes. Refused (nothing
    /// changed) when it would move traffic.
    pub(crate) async fn reload(&self, config: Config) -> Result<Reloaded, ReloadError> {
        self.ask(|reply| Command::Reload {
            config: Box::new(config),
            reply,
        })
        .await
        .map_err(|_| ReloadError::ShuttingDown)?
    }

    /// This handle with other bounds on endpoints from outside the file.
    pub(crate) fn with_endpoint_limits(mut self, limits: EndpointLimits) -> Controller {
        self.endpoint_limits = limits;
        self
    }

    /// **The entry point for endpoints that do not come from the file.**
    /// Replaces the whole endpoint set of `service`'s `fleet`, a fleet
    /// whose [`EndpointSource`](crate::config::EndpointSource) is not the
    /// file, and serves it (an EDS-only change); returns the version
    /// served after (the current one if nothing changed). Refused whole,
    /// changing nothing, for an unknown service or fleet, a file fleet, or
    /// a set that breaks the rules file endpoints follow. A source calls
    /// it whenever its view of the fleet changes; coalescing bursts is the
    /// source's business.
    ///
    /// The change runs on the controller's one task, like every commit of
    /// a rollout: the two never interleave, each is built on the other's
    /// result, and neither undoes the other. Only the fleet's
    /// `ClusterLoadAssignment` changes, so only EDS versions move. Checks
    /// started after it use the new endpoints.
    #[cfg(test)]
    pub(crate) async fn set_fleet_endpoints(
        &self,
        service: &str,
        fleet: &str,
        endpoints: Vec<Endpoint>,
    ) -> Result<Version, RolloutError> {
        self.set_service_endpoints(service, vec![(fleet.to_owned(), endpoints)])
            .await
    }

    /// [`Controller::set_fleet_endpoints`] for several fleets of one
    /// service at once: every set is checked before any is applied, and
    /// all of them are served in one version (one EDS push), so a source
    /// that saw two fleets change together never shows proxies the one
    /// without the other.
    // Only the Kubernetes watcher calls this; the command it sends and the
    // driver's handling of it stay compiled either way.
    #[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
    pub(crate) async fn set_service_endpoints(
        &self,
        service: &str,
        sets: crate::config::FleetSets,
    ) -> Result<Version, RolloutError> {
        let service = service.to_owned();
        let limits = self.endpoint_limits;
        self.ask(|reply| Command::SetEndpoints {
            service,
            sets,
            limits,
            reply,
        })
        .await?
    }

    /// Starts `op` on behalf of `route`, the HTTPRoute that drives the
    /// service (`services.<s>.kubernetes.route`): the one way to change
    /// its weights while it does. The actor is `k8s:HTTPRoute/<ns>/<name>`.
    #[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
    pub(crate) async fn start_for_route(
        &self,
        op: Operation,
        route: &crate::config::KubernetesRef,
    ) -> Result<watch::Receiver<Progress>, RolloutError> {
        let actor = route_actor(route);
        let route = Some(route.clone());
        self.ask(|reply| Command::Start {
            op,
            actor,
            route,
            reply,
        })
        .await?
    }

    /// Records what the task of `service`'s route knows of it, for
    /// `status` answers (the gates show it).
    #[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
    pub(crate) fn set_route_view(&self, service: &str, view: RouteView) {
        // A poisoned lock only means a panic elsewhere mid-insert; the
        // map is still a map.
        let mut routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes.insert(service.to_owned(), view);
    }

    /// `view` with what the route tasks said of each service's route
    /// (only if it is about the route the config names now).
    fn with_routes(&self, mut view: StatusView) -> StatusView {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        for s in &mut view.services {
            if let Some(r) = &mut s.route
                && let Some(known) = routes.get(&s.name)
                && known.namespace == r.namespace
                && known.name == r.name
            {
                *r = known.clone();
            }
        }
        view
    }

    /// Whether this replica carries out changes: it is alone, or it leads.
    #[cfg_attr(not(feature = "kubernetes"), allow(dead_code))]
    pub(crate) fn leads(&self) -> bool {
        self.leadership.as_ref().is_none_or(|l| l.is_leader())
    }

    /// The snapshot being served.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.peek()
    }
}

/// How history and logs name a change an HTTPRoute made.
pub(crate) fn route_actor(route: &crate::config::KubernetesRef) -> String {
    format!("k8s:HTTPRoute/{}/{}", route.namespace, route.name)
}

#[tonic::async_trait]
impl Backend for Controller {
    async fn status(&self, service: Option<&str>) -> Result<StatusView, RolloutError> {
        let service = service.map(str::to_owned);
        let view = self
            .ask(|reply| Command::Status { service, reply })
            .await??;
        Ok(self.with_routes(view))
    }

    fn proxies(&self) -> Vec<ProxyStatus> {
        self.registry.proxies()
    }

    fn leading(&self) -> Result<(), RolloutError> {
        let Some(l) = &self.leadership else {
            return Ok(());
        };
        match l.role() {
            crate::ha::Role::Leader => Ok(()),
            crate::ha::Role::Follower { leader } => Err(RolloutError::NotLeader {
                leader: Some(leader.admin),
            }),
            crate::ha::Role::Unknown => Err(RolloutError::NotLeader { leader: None }),
        }
    }

    fn current_versions(&self) -> BTreeMap<String, PerType<String>> {
        let snap = self.snapshots.peek();
        snap.group_names()
            .map(|g| {
                let group = snap.group(g);
                let versions = PerType::from_fn(|t| group.of(t).version().to_owned());
                (g.to_owned(), versions)
            })
            .collect()
    }

    async fn start(
        &self,
        op: Operation,
        actor: &str,
    ) -> Result<watch::Receiver<Progress>, RolloutError> {
        let actor = actor.to_owned();
        self.ask(|reply| Command::Start {
            op,
            actor,
            route: None,
            reply,
        })
        .await?
    }

    async fn follow(&self, id: u64) -> Result<watch::Receiver<Progress>, RolloutError> {
        self.ask(|reply| Command::Follow { id, reply }).await?
    }

    async fn abort(&self, id: u64, actor: &str) -> Result<(), RolloutError> {
        let actor = actor.to_owned();
        self.ask(|reply| Command::Abort { id, actor, reply })
            .await?
    }

    async fn verify(&self, service: &str, fleet: &str) -> Result<Vec<CheckResult>, RolloutError> {
        let (service, fleet) = (service.to_owned(), fleet.to_owned());
        self.ask(|reply| Command::Verify {
            service,
            fleet,
            reply,
        })
        .await?
    }

    fn replica_id(&self) -> Option<String> {
        self.leadership.as_ref().map(|l| l.id().to_owned())
    }

    async fn replicas(&self) -> Vec<crate::ha::replicas::ReplicaRecord> {
        match &self.leadership {
            Some(l) => l.replicas().await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "cannot list the replicas");
                Vec::new()
            }),
            None => Vec::new(),
        }
    }

    async fn history(&self, service: &str) -> Result<Vec<HistoryEntry>, RolloutError> {
        let service = service.to_owned();
        self.ask(|reply| Command::History { service, reply })
            .await?
    }

    async fn change_fleet(
        &self,
        service: &str,
        fleet: &str,
        request: crate::rollout::registration::Request,
        force: bool,
        actor: &str,
    ) -> Result<crate::rollout::registration::FleetView, RolloutError> {
        let (service, fleet, actor) = (service.to_owned(), fleet.to_owned(), actor.to_owned());
        let limits = self.endpoint_limits;
        self.ask(|reply| Command::ChangeRegistered {
            service,
            fleet,
            request,
            actor,
            force,
            limits,
            reply,
        })
        .await?
    }

    async fn cordon(&self, node: &str, reason: &str, actor: &str) -> Result<bool, RolloutError> {
        let change = CordonChange::Cordon {
            node: node.to_owned(),
            reason: reason.to_owned(),
        };
        let actor = actor.to_owned();
        self.ask(|reply| Command::Cordon {
            change,
            actor,
            reply,
        })
        .await?
    }

    async fn uncordon(&self, node: &str, actor: &str) -> Result<bool, RolloutError> {
        let change = CordonChange::Uncordon {
            node: node.to_owned(),
        };
        let actor = actor.to_owned();
        self.ask(|reply| Command::Cordon {
            change,
            actor,
            reply,
        })
        .await?
    }

    async fn fleet(
        &self,
        service: &str,
        fleet: &str,
    ) -> Result<crate::rollout::registration::FleetView, RolloutError> {
        let (service, fleet) = (service.to_owned(), fleet.to_owned());
        self.ask(|reply| Command::ShowFleet {
            service,
            fleet,
            reply,
        })
        .await?
    }
}

#[cfg(test)]
#[path = "controller_tests.rs"]
mod tests;
