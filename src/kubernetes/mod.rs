//! Fleets whose endpoints are a Kubernetes Service's ready endpoints
//! (`fleets.<name>.kubernetes`), from its EndpointSlices.
//!
//! - `slices`: the pure translation from `discovery.k8s.io/v1`
//!   EndpointSlices to teal endpoints (which conditions count, which port,
//!   zones).
//! - `watch`: one task per service lists and watches its fleets' slices
//!   (kube-runtime's watcher), bounds them, and hands each fleet's set on,
//!   coalesced, to an `EndpointSink`: in `teal serve`, the controller's
//!   one entry point for endpoints from outside the file
//!   (`Controller::set_service_endpoints`), all fleets of a service that
//!   changed in one window in one version.
//! - `gateway`: the Gateway API kinds teal reads (`HTTPRoute`, `Gateway`,
//!   `GatewayClass`), only the fields it uses, the rest kept as read.
//! - `routes`: the pure mapping from an HTTPRoute to a split, and from
//!   what became of it to the route's status entries.
//! - `route_watch`: one task per route that drives a service
//!   (`services.<s>.kubernetes.route`): each generation is a confirmed
//!   shift through the controller, and its fate goes into the route's
//!   status.
//! - `KubeFleets` (here): what `teal serve` holds; it starts the
//!   watchers and route tasks a config asks for and follows reloads.
//!
//! The API server is reached with the kubeconfig `KUBECONFIG` names (or
//! `~/.kube/config`), else the in-cluster service account, as `kubectl`
//! would. Without the `kubernetes` feature only [`KubeLimits`] and a
//! `KubeFleets` that does nothing are built (and `teal validate`
//! refuses `kubernetes` fleets).

#[cfg(feature = "kubernetes")]
pub mod gateway;
mod limits;
#[cfg(feature = "kubernetes")]
mod route_watch;
#[cfg(feature = "kubernetes")]
pub(crate) mod routes;
#[cfg(feature = "kubernetes")]
pub mod slices;
#[cfg(feature = "kubernetes")]
pub mod watch;

#[cfg(feature = "kubernetes")]
use std::time::Duration;

use crate::config::Config;
use crate::controller::Controller;

pub use limits::{DEFAULT_CONTROLLER_NAME, KubeLimits};

/// How long starting a watcher waits for its first lists.
#[cfg(feature = "kubernetes")]
pub(crate) const FIRST_LIST_WAIT: Duration = Duration::from_secs(5);

/// The Kubernetes watchers of `teal serve`: [`KubeFleets::follow`] at
/// start and after every applied reload. Dropping it stops them.
pub(crate) struct KubeFleets {
    controller: Controller,
    limits: KubeLimits,
    #[cfg(feature = "kubernetes")]
    watchers: Option<watch::Watchers<Controller>>,
    /// `--gateway-controller-name`.
    controller_name: String,
    /// Where the route tasks count their status writes.
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// The HTTPRoute tasks, by service, with the config each was started
    /// for (a reload that changes it restarts the task).
    #[cfg(feature = "kubernetes")]
    routes: std::collections::BTreeMap<String, (Config, tokio::task::JoinHandle<()>)>,
}

#[cfg(feature = "kubernetes")]
impl Drop for KubeFleets {
    fn drop(&mut self) {
        for (_, task) in self.routes.values() {
            task.abort();
        }
    }
}

impl KubeFleets {
    /// No watcher yet.
    pub(crate) fn new(
        controller: Controller,
        limits: KubeLimits,
        controller_name: String,
        metrics: std::sync::Arc<crate::metrics::Metrics>,
    ) -> KubeFleets {
        KubeFleets {
            controller,
            limits,
            #[cfg(feature = "kubernetes")]
            watchers: None,
            controller_name,
            metrics,
            #[cfg(feature = "kubernetes")]
            routes: std::collections::BTreeMap::new(),
        }
    }

    /// Watches exactly the Kubernetes fleets of `config` (the config now
    /// served), and waits up to [`FIRST_LIST_WAIT`] for the first lists of
    /// the watchers it starts. The client is made the first time a config
    /// has one; if it cannot be, that is logged, those fleets stay without
    /// endpoints, and the next reload tries again.
    #[cfg(feature = "kubernetes")]
    pub(crate) async fn follow(&mut self, config: &Config) {
        if self.watchers.is_none() {
            if watch::kubernetes_fleets(config).is_empty()
                && config.services.values().all(|s| s.route().is_none())
            {
                return;
            }
            match client().await {
                Ok(c) => {
                    self.watchers = Some(watch::Watchers::new(
                        c,
                        self.limits,
                        self.controller.clone(),
                    ))
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot reach Kubernetes; its fleets have no endpoints until a reload succeeds");
                    return;
                }
            }
        }
        let Some(w) = &mut self.watchers else {
            return;
        };
        let client = w.client();
        self.follow_routes(client, config);
        let Some(w) = &mut self.watchers else {
            return;
        };
        // Wait (a little) for the first lists: at start, this runs before
        // the xDS port opens, so that proxies (re)connecting to a
        // restarted teal are not sent a live fleet with no endpoints.
        let first = futures::future::join_all(w.follow(config));
        if tokio::time::timeout(FIRST_LIST_WAIT, first).await.is_err() {
            tracing::warn!(
                "Kubernetes fleets not listed within {FIRST_LIST_WAIT:?}; serving without their \
                 endpoints until they are"
            );
        }
    }

    /// Starts, restarts and stops the HTTPRoute tasks so that each
    /// service of `config` with `kubernetes.route` has one. A task is
    /// restarted when the config changes (its fleets or groups may have).
    #[cfg(feature = "kubernetes")]
    fn follow_routes(&mut self, client: kube::Client, config: &Config) {
        let wanted: std::collections::BTreeMap<&String, &crate::config::KubernetesRef> = config
            .services
            .iter()
            .filter_map(|(name, s)| s.route().map(|r| (name, r)))
            .collect();
        self.routes.retain(|service, (started_for, task)| {
            let keep = wanted.contains_key(service) && started_for == config;
            if !keep {
                task.abort();
            }
            keep
        });
        let settings = route_watch::RouteSettings {
            controller_name: self.controller_name.clone(),
            status_interval: self.limits.status_interval,
            metrics: self.metrics.clone(),
        };
        for (service, route) in wanted {
            if self.routes.contains_key(service) {
                continue;
            }
            let task = tokio::spawn(route_watch::run_route(
                client.clone(),
                service.clone(),
                route.clone(),
                config.clone(),
                settings.clone(),
                self.controller.clone(),
            ));
            self.routes.insert(service.clone(), (config.clone(), task));
        }
    }

    /// Without the `kubernetes` feature no config has Kubernetes fleets.
    #[cfg(not(feature = "kubernetes"))]
    pub(crate) async fn follow(&mut self, config: &Config) {
        let _ = (
            config,
            &self.controller,
            self.limits,
            &self.controller_name,
            &self.metrics,
        );
    }
}

/// Why no Kubernetes client could be made.
#[cfg(feature = "kubernetes")]
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Neither a kubeconfig nor the in-cluster service account was found
    /// or usable.
    #[error("no Kubernetes configuration: {0}")]
    Config(#[from] kube::config::InferConfigError),
    /// A kubeconfig file could not be read or used.
    #[error("bad kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// The client could not be built from the configuration.
    #[error("cannot build the Kubernetes client: {0}")]
    Build(#[from] kube::Error),
}

/// A client for the cluster `KUBECONFIG` (or `~/.kube/config`) names,
/// else the one teal runs in (in-cluster service account).
#[cfg(feature = "kubernetes")]
pub(crate) async fn client() -> Result<kube::Client, ClientError> {
    let config = kube::Config::infer().await?;
    Ok(kube::Client::try_from(config)?)
}

/// A client from the kubeconfig file at `path` (its current context).
#[cfg(feature = "kubernetes")]
pub async fn client_from_kubeconfig(path: &std::path::Path) -> Result<kube::Client, ClientError> {
    let file = kube::config::Kubeconfig::read_from(path)?;
    let config =
        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

/// The controller takes a Kubernetes fleet's endpoints through its one
/// entry point for endpoints from outside the file.
#[cfg(feature = "kubernetes")]
impl watch::EndpointSink for Controller {
    async fn replace(
        &self,
        service: &str,
        sets: Vec<(String, slices::FleetEndpoints)>,
    ) -> Result<(), String> {
        let counts: Vec<(String, usize)> = sets.iter().map(|(f, e)| (f.clone(), e.len())).collect();
        let version = self
            .set_service_endpoints(service, sets)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(service, fleets = ?counts, %version, "Kubernetes endpoints served");
        Ok(())
    }
}
