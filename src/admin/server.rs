//! The `teal.admin.v1.Admin` gRPC service over a [`Backend`].
//!
//! Reads go straight to the backend. Calls that change anything first
//! check the bearer token ([`Tokens::authorize`]); a refused call never
//! reaches the backend. Operations stream their [`Progress`] from the
//! backend's watch channel until a message carries the outcome; a client
//! that goes away only stops its own stream, never the operation.
//!
//! [`Progress`]: crate::rollout::Progress

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::Backend;
use crate::rollout::{ErrorKind, Operation, Progress, RolloutError};
use crate::text::untrusted;
use crate::xds::ProxyRegistry;

use super::Metrics;

use super::auth::Tokens;
use super::convert;
use super::dashboard::Kick;
use super::pb;
use super::pb::admin_server::Admin;
use super::views;

/// A stream of progress messages, as the generated service wants it.
pub(crate) type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::Progress, Status>> + Send>>;

#[derive(Clone)]
pub(crate) struct AdminService {
    backend: Arc<dyn Backend>,
    tokens: Arc<Tokens>,
    /// The proxies, for the cordons in force on this replica (those of
    /// the state it serves; the backend changes them).
    registry: Arc<ProxyRegistry>,
    /// Tells the dashboard's publisher of each change asked for, so open
    /// dashboards show it at their next tick.
    kick: Kick,
}

impl std::fmt::Debug for AdminService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminService")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl AdminService {
    /// A service driving `backend`, accepting changes signed by `tokens`.
    pub(crate) fn new(backend: Arc<dyn Backend>, tokens: Tokens) -> AdminService {
        AdminService {
            backend,
            tokens: Arc::new(tokens),
            registry: ProxyRegistry::new(),
            kick: Kick::default(),
        }
    }

    /// The service telling `kick` of every change asked for.
    pub(crate) fn with_kick(mut self, kick: Kick) -> Self {
        self.kick = kick;
        self
    }

    /// The service with the cordons of `registry`, counted in `metrics`.
    pub(crate) fn with_cordons(
        mut self,
        registry: Arc<ProxyRegistry>,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.set_cordoned(registry.cordons().len());
        self.registry = registry;
        self
    }

    /// The generated tonic server wrapping this service.
    pub(crate) fn into_server(self) -> pb::admin_server::AdminServer<AdminService> {
        pb::admin_server::AdminServer::new(self)
    }

    /// Authorizes, starts `op`, and streams its progress.
    async fn start<T>(
        &self,
        request: Request<T>,
        op: impl FnOnce(T) -> Result<Operation, RolloutError>,
    ) -> Result<Response<ProgressStream>, Status> {
        let actor = self.tokens.authorize(request.metadata())?;
        let op = op(request.into_inner())?;
        tracing::info!(%actor, verb = %op.verb(), service = op.service(), "admin: operation requested");
        let rx = self.backend.start(op, &actor).await?;
        self.kick.kick();
        Ok(Response::new(progress_stream(rx)))
    }
}

/// Forwards every change of `rx` until one carries the outcome. Values the
/// client was too slow to see are skipped (a watch keeps only the latest),
/// never the last one.
pub(crate) fn progress_stream(mut rx: watch::Receiver<Progress>) -> ProgressStream {
    let (tx, out) = mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            let current = rx.borrow_and_update().clone();
            let done = current.outcome.is_some();
            if tx.send(Ok(convert::progress(&current))).await.is_err() || done {
                return;
            }
            let changed = tokio::select! {
                changed = rx.changed() => changed,
                // The client went away: stop following (the operation goes on).
                () = tx.closed() => return,
            };
            if changed.is_err() {
                // The driver dropped the operation's channel: it is
                // going away with the server.
                let _ = tx
                    .send(Err(ErrorKind::ShuttingDown.attach(Status::unavailable(
                        "the operation's progress stopped without an outcome; \
                         see `teal status` and `teal history`",
                    ))))
                    .await;
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(out))
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let service = request.into_inner().service.filter(|s| !s.is_empty());
        let view = self.backend.status(service.as_deref()).await?;
        let mut response = convert::status_view(&view);
        response.cordons = views::cordons(&self.registry);
        response.replicas = views::replicas(self.backend.replicas().await);
        Ok(Response::new(response))
    }

    async fn proxies(
        &self,
        _request: Request<pb::ProxiesRequest>,
    ) -> Result<Response<pb::ProxiesResponse>, Status> {
        Ok(Response::new(views::proxies(
            &*self.backend,
            &self.registry,
        )))
    }

    type FlipStream = ProgressStream;
    async fn flip(
        &self,
        request: Request<pb::FlipRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        self.start(request, convert::flip).await
    }

    type ShiftStream = ProgressStream;
    async fn shift(
        &self,
        request: Request<pb::ShiftRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        self.start(request, convert::shift).await
    }

    type RollbackStream = ProgressStream;
    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        self.start(request, convert::rollback).await
    }

    type RetireStream = ProgressStream;
    async fn retire(
        &self,
        request: Request<pb::RetireRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        self.start(request, convert::retire).await
    }

    type FollowStream = ProgressStream;
    async fn follow(
        &self,
        request: Request<pb::FollowRequest>,
    ) -> Result<Response<ProgressStream>, Status> {
        let rx = self.backend.follow(request.into_inner().id).await?;
        Ok(Response::new(progress_stream(rx)))
    }

    async fn abort(
        &self,
        request: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        let actor = self.tokens.authorize(request.metadata())?;
        let id = request.into_inner().id;
        tracing::info!(%actor, id, "admin: abort requested");
        self.backend.abort(id, &actor).await?;
        self.kick.kick();
        Ok(Response::new(pb::AbortResponse {}))
    }

    async fn cordon(
        &self,
        request: Request<pb::CordonRequest>,
    ) -> Result<Response<pb::CordonResponse>, Status> {
        let actor = self.tokens.authorize(request.metadata())?;
        let r = request.into_inner();
        // Saved in the state by the backend (a follower refuses, naming
        // the leader), so the cordon holds on whichever replica leads.
        let changed = self.backend.cordon(&r.node_id, &r.reason, &actor).await?;
        self.kick.kick();
        tracing::info!(%actor, node = %untrusted(&r.node_id), reason = %untrusted(&r.reason), "admin: proxy cordoned");
        Ok(Response::new(pb::CordonResponse { changed }))
    }

    async fn uncordon(
        &self,
        request: Request<pb::UncordonRequest>,
    ) -> Result<Response<pb::UncordonResponse>, Status> {
        let actor = self.tokens.authorize(request.metadata())?;
        let r = request.into_inner();
        let changed = self.backend.uncordon(&r.node_id, &actor).await?;
        self.kick.kick();
        tracing::info!(%actor, node = %untrusted(&r.node_id), "admin: proxy uncordoned");
        Ok(Response::new(pb::UncordonResponse { changed }))
    }

    async fn verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let r = request.into_inner();
        let checks = self.backend.verify(&r.service, &r.fleet).await?;
        Ok(Response::new(pb::VerifyResponse {
            checks: checks.iter().map(convert::check).collect(),
        }))
    }

    async fn history(
        &self,
        request: Request<pb::HistoryRequest>,
    ) -> Result<Response<pb::HistoryResponse>, Status> {
        let entries = self.backend.history(&request.into_inner().service).await?;
        Ok(Response::new(pb::HistoryResponse {
            entries: entries.iter().map(convert::history_entry).collect(),
        }))
    }

    async fn change_fleet(
        &self,
        request: Request<pb::ChangeFleetRequest>,
    ) -> Result<Response<pb::FleetResponse>, Status> {
        let actor = self.tokens.authorize(request.metadata())?;
        let r = request.into_inner();
        let (change, force) = convert::fleet_change(&r)?;
        tracing::info!(%actor, service = %untrusted(&r.service), fleet = %untrusted(&r.fleet),
            verb = change.verb().as_str(), "admin: fleet change requested");
        let view = self
            .backend
            .change_fleet(&r.service, &r.fleet, change, force, &actor)
            .await?;
        Ok(Response::new(convert::fleet(&view)))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::FleetResponse>, Status> {
        let actor = self.tokens.authorize(request.metadata())?;
        let r = request.into_inner();
        let change = convert::heartbeat(&r)?;
        let view = self
            .backend
            .change_fleet(&r.service, &r.fleet, change, false, &actor)
            .await?;
        Ok(Response::new(convert::fleet(&view)))
    }

    async fn fleet(
        &self,
        request: Request<pb::FleetRequest>,
    ) -> Result<Response<pb::FleetResponse>, Status> {
        let r = request.into_inner();
        let view = self.backend.fleet(&r.service, &r.fleet).await?;
        Ok(Response::new(convert::fleet(&view)))
    }
}
