//! One task per HTTPRoute that drives a service: it watches the route
//! (kube-runtime's watcher, the route's name as field selector), turns
//! each new generation into a confirmed shift through the controller, and
//! writes what became of it into the route's status.
//!
//! - **Refused now, applied later.** A generation the controller refuses
//!   before anything runs (a fleet with no ready endpoints, say) is
//!   offered again every [`REFUSED_RETRY`] while it is the latest, so it
//!   goes through once the pods are ready; its status says `Refused`
//!   meanwhile. Nothing was served, so nothing is undone.
//! - **One operation per generation.** A generation whose split differs
//!   from the served one starts a shift to it (the controller's machine,
//!   checks and traffic analysis, like `teal shift`), actor
//!   `k8s:HTTPRoute/<ns>/<name>`. A generation that arrives while one is
//!   being applied waits for it to end; only the latest is applied. A
//!   generation rolled back is not tried again (not after a
//!   restart either: the route's status records it) until the spec
//!   changes; the previous weights stay served meanwhile.
//! - **One writer.** Among replicas sharing a store, only the leader
//!   applies generations and writes status; a follower's task forgets
//!   what it knew and looks again every second, so the replica that
//!   takes over starts from the route and its status as they are.
//! - **Parents.** The Gateways the route names are read (with their
//!   `GatewayClass`) when a new generation arrives, not watched; a route
//!   with no parent teal owns is left alone, and looked at again every
//!   [`PARENTS_RETRY`] (its Gateway may be created after it).
//! - **Status.** Written through the status subresource with a JSON merge
//!   patch carrying the `resourceVersion` read, so a concurrent writer
//!   makes it fail with 409; then the route is read again and the entries
//!   merged anew ([`STATUS_TRIES`] times). Other controllers' entries are
//!   carried through as they were read. At most one write per route per
//!   `--kube-status-interval`; nothing is written when the entries already
//!   say what teal would.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_routes};
use kube::{Api, Client};
use tokio::sync::watch;
use tokio::time::Instant;

use super::gateway::{Gateway, GatewayClass, HttpRoute, RouteParentStatus};
use super::routes::{
    CONFIRMED, Confirmation, ParentRole, RouteProblem, holding, merge_entries, our_entries,
    parent_gateway, parent_role, recorded_confirmed, recorded_failure, route_split, route_state,
};
use crate::admin::Backend;
use crate::config::{Config, KubernetesRef};
use crate::controller::Controller;
use crate::metrics::StatusWrite;
use crate::rollout::{
    DEFAULT_TIMEOUT, Operation, Progress, RolloutError, RouteState, RouteView, ShiftSteps,
};

/// How many times a status write that met a conflict is tried again from
/// a fresh read.
pub(crate) const STATUS_TRIES: usize = 5;

/// How long a generation waits when the service is busy with an operation
/// that is not the route's before it is offered again.
const BUSY_RETRY: Duration = Duration::from_secs(1);

/// How often a route with no parent of teal's is looked at again (its
/// Gateway or GatewayClass may be created after it).
pub(crate) const PARENTS_RETRY: Duration = Duration::from_secs(5);

/// How long a generation the controller refused up front waits before it
/// is offered again.
pub(crate) const REFUSED_RETRY: Duration = Duration::from_secs(2);

/// What the route tasks share.
#[derive(Clone, Debug)]
pub(crate) struct RouteSettings {
    /// `--gateway-controller-name`.
    pub(crate) controller_name: String,
    /// `--kube-status-interval`: the least time between two status writes
    /// of one route.
    pub(crate) status_interval: Duration,
    /// Where status writes are counted.
    pub(crate) metrics: std::sync::Arc<crate::metrics::Metrics>,
}

/// What the task knows of the route.
struct RouteWatch {
    service: String,
    route: KubernetesRef,
    config: Config,
    settings: RouteSettings,
    api: Api<HttpRoute>,
    client: Client,
    controller: Controller,
    /// The route as last read.
    latest: Option<HttpRoute>,
    /// The parents and teal's role for each, for `latest`'s generation.
    parents: Vec<(super::gateway::ParentRef, ParentRole)>,
    /// The generation last taken on (applied, refused or found applied).
    handled: Option<i64>,
    /// The operation applying `handled`, while it runs.
    op: Option<watch::Receiver<Progress>>,
    /// What `teal.dev/Confirmed` (or the other conditions) say of
    /// `handled`.
    outcome: Option<Result<Confirmation, RouteProblem>>,
    /// When to offer the latest generation again (the service was busy).
    retry_at: Option<Instant>,
    /// `handled` was refused up front, or found in effect but not yet held
    /// by every proxy: offer it again at `retry_at`.
    offer_again: bool,
    /// The last status write.
    last_write: Option<Instant>,
    /// A status write is owed (held back by the interval, or failed).
    dirty: bool,
    /// The latest generation every proxy confirmed, for the gates.
    confirmed_generation: Option<i64>,
}

/// Watches `route`, which drives `service` in `config`, until aborted.
pub(crate) async fn run_route(
    client: Client,
    service: String,
    route: KubernetesRef,
    config: Config,
    settings: RouteSettings,
    controller: Controller,
) {
    let api: Api<HttpRoute> = Api::namespaced(client.clone(), &route.namespace);
    let wc = watcher::Config::default().fields(&format!("metadata.name={}", route.name));
    let mut stream = watch_routes(api.clone(), wc).default_backoff().boxed();
    let mut w = RouteWatch {
        service,
        route,
        config,
        settings,
        api,
        client,
        controller,
        latest: None,
        parents: Vec::new(),
        handled: None,
        op: None,
        outcome: None,
        retry_at: None,
        offer_again: false,
        last_write: None,
        dirty: false,
        confirmed_generation: None,
    };
    loop {
        let write_due = w.last_write.map(|t| t + w.settings.status_interval);
        let op = &mut w.op;
        let op_changed = async move {
            match op {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            next = stream.next() => {
                let Some(event) = next else { return };
                match event {
                    Ok(Event::Apply(r) | Event::InitApply(r)) => {
                        w.latest = Some(r);
                        w.take_on().await;
                    }
                    Ok(Event::Delete(_)) => {
                        tracing::warn!(route = %w.route, service = w.service,
                            "HTTPRoute deleted; the service keeps its weights");
                        w.latest = None;
                        // One made again starts at generation 1.
                        w.handled = None;
                        w.outcome = None;
                    }
                    Ok(Event::Init | Event::InitDone) => {}
                    Err(e) => tracing::warn!(route = %w.route,
                        error = %crate::text::untrusted(&e.to_string()),
                        "HTTPRoute watch error; retrying"),
                }
            }
            changed = op_changed => {
                w.follow_op().await;
                if !changed {
                    // Gone without an outcome (teal is shutting down).
                    w.op = None;
                }
            }
            () = sleep_until_opt(w.retry_at), if w.retry_at.is_some() => {
                w.retry_at = None;
                w.take_on().await;
            }
            () = sleep_until_opt(write_due), if w.dirty => {}
        }
        // The gates learn first: whoever reads the status and then asks
        // a gate finds it at least as far.
        w.publish();
        if write_due.is_none_or(|t| Instant::now() >= t) {
            w.write_status().await;
        } else {
            w.dirty = true;
        }
    }
}

async fn sleep_until_opt(due: Option<Instant>) {
    match due {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

impl RouteWatch {
    /// Tells the controller how far the route got, for the gates.
    fn publish(&mut self) {
        let state = self.outcome.as_ref().map(|o| route_state(o.as_ref()));
        if state == Some(RouteState::Confirmed) {
            self.confirmed_generation = self.handled.max(self.confirmed_generation);
        }
        if self.confirmed_generation.is_none()
            && let Some(r) = &self.latest
        {
            self.confirmed_generation = recorded_confirmed(r, &self.settings.controller_name);
        }
        self.controller.set_route_view(
            &self.service,
            RouteView {
                namespace: self.route.namespace.clone(),
                name: self.route.name.clone(),
                generation: self.handled,
                confirmed_generation: self.confirmed_generation,
                state,
            },
        );
    }

    /// Takes on the latest generation if it is new and nothing of the
    /// route's is running.
    async fn take_on(&mut self) {
        if !self.controller.leads() {
            self.handled = None;
            self.outcome = None;
            self.op = None;
            self.offer_again = false;
            self.retry_at = Some(Instant::now() + BUSY_RETRY);
            return;
        }
        let Some(route) = self.latest.clone() else {
            return;
        };
        let generation = route.metadata.generation.unwrap_or(0);
        if (self.handled == Some(generation) && !self.offer_again) || self.op.is_some() {
            return;
        }
        self.offer_again = false;
        self.parents = self.roles(&route).await;
        if !self.parents.iter().any(|(_, r)| r.is_ours()) {
            if self.handled != Some(generation) {
                tracing::info!(route = %self.route, service = self.service,
                    "HTTPRoute has no parent teal implements; left alone");
            }
            self.handled = Some(generation);
            self.outcome = None;
            // Its Gateway or GatewayClass may not exist yet (they are
            // read, not watched): look again while this is the latest.
            self.offer_again = true;
            self.retry_at = Some(Instant::now() + PARENTS_RETRY);
            return;
        }
        let controller_name = &self.settings.controller_name;
        if recorded_failure(&route, controller_name) == Some(generation) {
            // Said so before (by this teal or one before a restart): the
            // previous weights stay until the spec changes, and the status
            // keeps saying why, word for word.
            let why = route
                .status
                .iter()
                .flat_map(|s| &s.parents)
                .filter(|e| e.controller_name == *controller_name)
                .flat_map(|e| &e.conditions)
                .find(|c| c.type_ == CONFIRMED && c.reason == "RolledBack")
                .map(|c| c.message.clone())
                .unwrap_or_default();
            self.handled = Some(generation);
            self.outcome = Some(Ok(Confirmation::RolledBack { why }));
            return;
        }
        let Some(service) = self.config.services.get(&self.service) else {
            return;
        };
        let split = match route_split(&route, &self.service, service) {
            Ok(s) => s,
            Err(p) => {
                tracing::warn!(route = %self.route, service = self.service, generation,
                    problem = %p, "HTTPRoute not applied");
                self.handled = Some(generation);
                self.outcome = Some(Err(p));
                return;
            }
        };
        let status = match self.controller.status(Some(&self.service)).await {
            Ok(s) => s,
            Err(e) => {
                self.refuse(generation, e);
                return;
            }
        };
        if let Some(s) = status.services.first()
            && s.in_progress.is_none()
            && s.weights == split
        {
            let version = status
                .version
                .as_ref()
                .map_or_else(|| "-".to_owned(), ToString::to_string);
            let (acked, total, waiting_for) = holding(
                &self.config,
                &self.service,
                &self.controller.proxies(),
                &self.controller.current_versions(),
            );
            self.handled = Some(generation);
            self.outcome = Some(Ok(if acked == total {
                Confirmation::InEffect {
                    version,
                    acked,
                    total,
                }
            } else {
                // Committed before, and some proxy has not ACKed it yet:
                // look again shortly.
                self.offer_again = true;
                self.retry_at = Some(Instant::now() + BUSY_RETRY);
                Confirmation::Pending {
                    version: Some(version),
                    acked,
                    total,
                    waiting_for,
                    phase: "in effect".to_owned(),
                }
            }));
            return;
        }
        let op = Operation::Shift {
            service: self.service.clone(),
            steps: ShiftSteps::Splits(vec![split.clone()]),
            interval: Duration::ZERO,
            skip_checks: false,
            timeout: DEFAULT_TIMEOUT,
        };
        match self.controller.start_for_route(op, &self.route).await {
            Ok(rx) => {
                tracing::info!(route = %self.route, service = self.service, generation,
                    ?split, id = rx.borrow().id, "HTTPRoute generation being applied");
                self.handled = Some(generation);
                self.outcome = Some(Ok(Confirmation::of(&rx.borrow())));
                self.op = Some(rx);
            }
            Err(RolloutError::NotLeader { .. } | RolloutError::ShuttingDown) => {
                // Whoever leads (or the next teal) takes it on.
                self.retry_at = Some(Instant::now() + BUSY_RETRY);
            }
            Err(RolloutError::Busy { id, verb, .. }) => {
                self.outcome = Some(Ok(Confirmation::Pending {
                    version: None,
                    acked: 0,
                    total: 0,
                    waiting_for: Vec::new(),
                    phase: format!("waiting for {verb} #{id} to end"),
                }));
                self.retry_at = Some(Instant::now() + BUSY_RETRY);
            }
            Err(e) => self.refuse(generation, e),
        }
    }

    /// Records a refusal of the controller's, before anything ran; the
    /// generation is offered again later (logged once per reason).
    fn refuse(&mut self, generation: i64, e: RolloutError) {
        let outcome = Some(Ok(Confirmation::Refused { why: e.to_string() }));
        if self.handled != Some(generation) || self.outcome != outcome {
            tracing::warn!(route = %self.route, service = self.service, generation,
                error = %e, "HTTPRoute generation refused; offered again while it is the latest");
        }
        self.handled = Some(generation);
        self.outcome = outcome;
        self.offer_again = true;
        self.retry_at = Some(Instant::now() + REFUSED_RETRY);
    }

    /// Follows the operation applying the route; once it ends, takes on a
    /// newer generation if one came meanwhile.
    async fn follow_op(&mut self) {
        let Some(rx) = &self.op else {
            return;
        };
        let progress = rx.borrow().clone();
        self.outcome = Some(Ok(Confirmation::of(&progress)));
        if progress.outcome.is_some() {
            tracing::info!(route = %self.route, service = self.service,
                id = progress.id, outcome = ?progress.outcome, "HTTPRoute generation done");
            self.op = None;
            self.take_on().await;
        }
    }

    /// The role teal has for each parent of `route`.
    async fn roles(&self, route: &HttpRoute) -> Vec<(super::gateway::ParentRef, ParentRole)> {
        let namespace = route.metadata.namespace.clone().unwrap_or_default();
        let mut classes: BTreeMap<KubernetesRef, String> = BTreeMap::new();
        for p in &route.spec.parent_refs {
            let Some(gw) = parent_gateway(&namespace, p) else {
                continue;
            };
            if classes.contains_key(&gw)
                || !self
                    .config
                    .groups
                    .values()
                    .any(|g| g.gateway() == Some(&gw))
            {
                continue;
            }
            if let Some(c) = self.class_controller(&gw).await {
                classes.insert(gw, c);
            }
        }
        route
            .spec
            .parent_refs
            .iter()
            .map(|p| {
                let role = parent_role(
                    &self.config,
                    &self.service,
                    &namespace,
                    p,
                    &self.settings.controller_name,
                    &classes,
                );
                (p.clone(), role)
            })
            .collect()
    }

    /// The `controllerName` of the class of Gateway `gw`, if both can be
    /// read.
    async fn class_controller(&self, gw: &KubernetesRef) -> Option<String> {
        let gateways: Api<Gateway> = Api::namespaced(self.client.clone(), &gw.namespace);
        let gateway = match gateways.get_opt(&gw.name).await {
            Ok(g) => g?,
            Err(e) => {
                tracing::warn!(gateway = %gw, error = %crate::text::untrusted(&e.to_string()),
                    "cannot read the Gateway");
                return None;
            }
        };
        let classes: Api<GatewayClass> = Api::all(self.client.clone());
        match classes.get_opt(&gateway.spec.gateway_class_name).await {
            Ok(c) => c.map(|c| c.spec.controller_name),
            Err(e) => {
                tracing::warn!(gateway = %gw, error = %crate::text::untrusted(&e.to_string()),
                    "cannot read the GatewayClass");
                None
            }
        }
    }

    /// The entries teal wants in `route`'s status, merged with those there.
    fn wanted(&self, route: &HttpRoute) -> Option<Vec<RouteParentStatus>> {
        let generation = route.metadata.generation.unwrap_or(0);
        if self.handled != Some(generation) {
            return None;
        }
        let outcome = self.outcome.as_ref()?;
        let owned: Vec<_> = self
            .parents
            .iter()
            .filter(|(_, r)| r.is_ours())
            .cloned()
            .collect();
        let now = k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string();
        let ours = our_entries(
            route,
            &owned,
            outcome.as_ref().map(Some),
            &self.settings.controller_name,
            &now,
        );
        let existing = route
            .status
            .as_ref()
            .map(|s| s.parents.as_slice())
            .unwrap_or_default();
        let merged = merge_entries(existing, ours, &self.settings.controller_name);
        (merged.as_slice() != existing).then_some(merged)
    }

    /// Writes the status if it says something else than teal would.
    async fn write_status(&mut self) {
        self.dirty = false;
        if !self.controller.leads() {
            return;
        }
        let Some(mut route) = self.latest.clone() else {
            return;
        };
        for _ in 0..STATUS_TRIES {
            let Some(parents) = self.wanted(&route) else {
                return;
            };
            let patch = serde_json::json!({
                "metadata": {"resourceVersion": route.metadata.resource_version},
                "status": {"parents": parents},
            });
            self.last_write = Some(Instant::now());
            match self
                .api
                .patch_status(
                    &self.route.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await
            {
                Ok(written) => {
                    self.settings
                        .metrics
                        .count_status_write(StatusWrite::Written);
                    tracing::debug!(route = %self.route, "HTTPRoute status written");
                    self.latest = Some(written);
                    return;
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    self.settings
                        .metrics
                        .count_status_write(StatusWrite::Conflict);
                    tracing::info!(route = %self.route,
                        "HTTPRoute status changed meanwhile; reading it again");
                    match self.api.get_status(&self.route.name).await {
                        Ok(fresh) => route = fresh,
                        Err(e) => {
                            tracing::warn!(route = %self.route,
                                error = %crate::text::untrusted(&e.to_string()),
                                "cannot read the HTTPRoute again");
                            self.dirty = true;
                            return;
                        }
                    }
                }
                Err(e) => {
                    self.settings
                        .metrics
                        .count_status_write(StatusWrite::Failed);
                    tracing::warn!(route = %self.route,
                        error = %crate::text::untrusted(&e.to_string()),
                        "cannot write the HTTPRoute status; trying again");
                    self.dirty = true;
                    return;
                }
            }
        }
        tracing::warn!(route = %self.route, tries = STATUS_TRIES,
            "HTTPRoute status kept changing under teal's writes; trying again");
        self.dirty = true;
    }
}
