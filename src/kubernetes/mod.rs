//! Fleets whose endpoints are a Kubernetes Service's ready endpoints
//! (`fleets.<name>.kubernetes`), from its EndpointSlices.
//!
//! - [`slices`]: the pure translation from `discovery.k8s.io/v1`
//!   EndpointSlices to teal endpoints (which conditions count, which port,
//!   zones).
//! - [`watch`]: one task per service lists and watches its fleets' slices
//!   (kube-runtime's watcher), bounds them, and hands each fleet's set on,
//!   coalesced, to an [`EndpointSink`] (the controller in `teal serve`).
//!
//! The API server is reached with the in-cluster service account, or the
//! kubeconfig of `KUBECONFIG` (or `~/.kube/config`), as `kubectl` would:
//! [`client`].

pub mod slices;
pub mod watch;

pub use slices::{FleetEndpoints, SliceError, translate};
pub use watch::{EndpointSink, KubeLimits, WatchProblem, Watchers};

/// Why no Kubernetes client could be made.
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

/// A client for the cluster teal runs in (in-cluster service account), or
/// the one `KUBECONFIG` names.
pub async fn client() -> Result<kube::Client, ClientError> {
    let config = kube::Config::infer().await?;
    Ok(kube::Client::try_from(config)?)
}

/// A client from the kubeconfig file at `path` (its current context).
pub async fn client_from_kubeconfig(path: &std::path::Path) -> Result<kube::Client, ClientError> {
    let file = kube::config::Kubeconfig::read_from(path)?;
    let config =
        kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}
