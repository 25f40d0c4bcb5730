//! teal's admin API: the gRPC service the `teal` CLI drives, plus
//! `/metrics`, `/healthz`, the gates and the dashboard over plain HTTP,
//! all on one port (the admin address, `127.0.0.1:18001` by default).
//!
//! # Endpoints
//!
//! gRPC, service `teal.admin.v1.Admin` (`proto/teal/admin/v1/admin.proto`):
//!
//! | Method | Changes things | What |
//! |---|---|---|
//! | `Status` | no | Every service's (or one's) fleets, weights, last change, operation in progress, pending retirement, whether each fleet with no weight is drained, cost window. |
//! | `Proxies` | no | Every connected proxy with sent/ACKed/NACKed versions per type, and the versions each group should be on. |
//! | `Flip` | **yes** | All traffic to one fleet; streams `Progress` until the outcome. |
//! | `Shift` | **yes** | Traffic in steps; streams `Progress`. |
//! | `Rollback` | **yes** | Back to the service's rollback point; streams `Progress`. |
//! | `Retire` | **yes** | Drop a fleet after a delay, once every proxy reports it drained; streams `Progress`. |
//! | `Follow` | no | Streams the `Progress` of an operation already running. |
//! | `Abort` | **yes** | Stops an operation: ends it before its commit, undoes the step being confirmed. |
//! | `Verify` | no | Runs a service's checks against one fleet now. |
//! | `History` | no | A service's past changes, newest first. |
//! | `Cordon` | **yes** | Operations stop waiting for one proxy (by node id) and ignore its NACKs; durable. |
//! | `Uncordon` | **yes** | Lifts a cordon. |
//! | `ChangeFleet` | **yes** | Sets, adds to, removes from an `endpoints: registered` fleet; registers (with a TTL) and deregisters instances. EDS-only. |
//! | `Heartbeat` | **yes** | Renews TTL registrations. |
//! | `Fleet` | no | A fleet's endpoints (with expiries), source, weight and recent changes. |
//!
//! and `envoy.service.status.v3.ClientStatusDiscoveryService` (CSDS, read
//! only; the same service as on the xDS port, see `crate::xds::csds`).
//!
//! HTTP/1.1 (or h2) `GET`:
//!
//! - `/metrics`: Prometheus text format 0.0.4; every metric is listed
//!   in [`crate::metrics`].
//! - `/healthz`: `200 ok` while the server runs.
//! - `/v1/services/<service>` (`GET`) and `/v1/gates/flagger` (`POST`):
//!   the gates orchestrators (Argo Rollouts, Flagger) wait on, JSON; see
//!   `gates`. Reads, open as the other reads are.
//!
//! # Auth
//!
//! Reads are open to whoever can reach the port, which is why it listens on
//! loopback by default (or, beyond it, with TLS and client certificates:
//! see [`crate::transport::tls`]). Calls that change anything need the metadata
//! `authorization: Bearer <token>` with a token from [`Tokens`] (a tokens
//! file of `name:token` lines, or `TEAL_ADMIN_TOKEN` as `admin`); the
//! token's name is recorded as the actor. A missing or unknown token gets
//! `UNAUTHENTICATED` (`401` from the dashboard's actions) and the backend
//! is never called.
//!
//! # Modules
//!
//! - [`pb`][]: the generated messages, server and client.
//! - [`convert`][]: rollout types ↔ messages.
//! - `backend`: the [`Backend`] the service runs over; the controller
//!   implements it.
//! - `server`: the gRPC service over a [`Backend`].
//! - `auth`: tokens.
//! - `gates`: the HTTP/JSON gates for orchestrators.
//! - `dashboard`: the page, its event stream and its actions.
//! - `json`: the JSON of `teal ... -o json` and of the event stream.
//! - `views`: what the API adds to the backend's answers (cordons,
//!   replicas, load reports), for the gRPC reads and the events alike.
//! - `local_token`: the token the CLI on the same machine uses when the server was given none.

pub(crate) mod auth;
pub(crate) mod backend;
pub mod convert;
pub(crate) mod dashboard;
pub(crate) mod gates;
pub(crate) mod json;
pub(crate) mod local_token;
pub mod pb;
pub(crate) mod server;
pub(crate) mod views;

use std::sync::Arc;
use std::time::SystemTime;

use axum::http::header::CONTENT_TYPE;
use axum::routing::get;
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::shutdown::Shutdown;
use crate::transport::listener::{ConnectionLimits, Incoming, Port};
use crate::transport::tls::ServerTls;
use crate::xds::{ClientStatus, ProxyRegistry};

use crate::metrics::Metrics;
pub use auth::Tokens;
pub(crate) use auth::TokensError;
pub use backend::Backend;
pub use dashboard::EventLimits;
pub use gates::GateLimits;
pub(crate) use server::AdminService;

/// The gRPC services and the HTTP paths, as one router; `shutdown` ends
/// the dashboard's event streams.
pub(crate) fn routes(parts: Parts, shutdown: Shutdown) -> Routes {
    let Parts {
        backend,
        metrics,
        tokens,
        registry,
        csds,
        gates,
        events,
    } = parts;
    let kick = dashboard::Kick::default();
    let dashboard = dashboard::router(dashboard::DashboardParts {
        backend: backend.clone(),
        registry: registry.clone(),
        metrics: metrics.clone(),
        tokens: tokens.clone(),
        limits: events,
        max_request_bytes: gates.max_request_bytes,
        shutdown,
        kick: kick.clone(),
    });
    let service = AdminService::new(backend.clone(), tokens)
        .with_cordons(registry, metrics.clone())
        .with_kick(kick);
    let grpc = Routes::new(service.into_server()).add_service(csds.into_server());
    let gates = gates::router(backend.clone(), gates);
    let router = grpc
        .into_axum_router()
        .merge(gates)
        .merge(dashboard)
        .route(
            "/metrics",
            get(move || {
                let (backend, metrics) = (backend.clone(), metrics.clone());
                async move {
                    (
                        [(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
                        metrics_page(&metrics, &*backend).await,
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    Routes::from(router)
}

/// The whole `/metrics` page: the counters, plus connected proxies and
/// service weights read from `backend` at the time of the scrape.
async fn metrics_page(metrics: &Metrics, backend: &dyn Backend) -> String {
    let groups: Vec<String> = backend
        .proxies()
        .iter()
        .map(|p| p.group().unwrap_or("").to_owned())
        .collect();
    let services = match backend.status(None).await {
        Ok(view) => view.services,
        Err(e) => {
            tracing::warn!(error = %e, "metrics: service status unavailable");
            Vec::new()
        }
    };
    metrics.page(&groups, &services, SystemTime::now())
}

/// Serves the admin API on `listener` until `shutdown`, within `limits`.
/// Accepts HTTP/1.1 next to gRPC so `curl http://127.0.0.1:18001/metrics`
/// works.
pub async fn serve(
    listener: TcpListener,
    limits: ConnectionLimits,
    backend: Arc<dyn Backend>,
    metrics: Arc<Metrics>,
    tokens: Tokens,
    csds: ClientStatus,
    shutdown: Shutdown,
) -> Result<(), tonic::transport::Error> {
    let parts = Parts {
        backend,
        metrics,
        tokens,
        registry: ProxyRegistry::new(),
        csds,
        gates: GateLimits::default(),
        events: EventLimits::default(),
    };
    serve_tls(listener, limits, None, parts, shutdown).await
}

/// What the admin API serves.
pub(crate) struct Parts {
    /// The rollouts.
    pub(crate) backend: Arc<dyn Backend>,
    /// The counters of `/metrics`.
    pub(crate) metrics: Arc<Metrics>,
    /// Who may change things.
    pub(crate) tokens: Tokens,
    /// The proxies, for their cordons.
    pub(crate) registry: Arc<ProxyRegistry>,
    /// CSDS, the same service as on the xDS port.
    pub(crate) csds: ClientStatus,
    /// Bounds on the gates' requests.
    pub(crate) gates: GateLimits,
    /// Bounds on the dashboard's event streams.
    pub(crate) events: EventLimits,
}

impl std::fmt::Debug for Parts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Parts")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

/// [`serve`], with TLS on the port when `tls` is given.
pub(crate) async fn serve_tls(
    listener: TcpListener,
    limits: ConnectionLimits,
    tls: Option<Arc<ServerTls>>,
    parts: Parts,
    shutdown: Shutdown,
) -> Result<(), tonic::transport::Error> {
    if parts.tokens.is_empty() {
        tracing::warn!(
            "admin API has no tokens: flip, shift, rollback, retire and abort are refused \
             (set TEAL_ADMIN_TOKEN or give a tokens file)"
        );
    }
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, "admin API listening"),
        Err(e) => tracing::info!(error = %e, "admin API listening (address unknown)"),
    }
    let mut stop = shutdown.clone();
    tonic::transport::Server::builder()
        .accept_http1(true)
        .max_concurrent_streams(limits.max_streams_per_connection)
        // Pings keep a quiet, live client (a `teal shift` following a
        // long step) clear of the idle timeout.
        .http2_keepalive_interval(Some(limits.keepalive()))
        .http2_keepalive_timeout(Some(limits.keepalive()))
        .add_routes(routes(parts, shutdown.clone()))
        .serve_with_incoming_shutdown(
            Incoming::new(listener, Port::Admin, limits).with_tls(tls),
            async move { stop.wait().await },
        )
        .await
}
