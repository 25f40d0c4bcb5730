//! The driver: the one task that owns the config, the durable state and
//! the snapshot writer, and runs every operation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::admin::Metrics;
use crate::config::{self, Config, Weights};
use crate::rollout::machine::{self, Action, Change, Event, ProxyView, Rollout, ServiceView};
use crate::rollout::{
    CheckResult, HistoryEntry, Operation, Outcome, Progress, Retirement, RolloutError,
    ServiceStatus, StatusView,
};
use crate::shutdown::Shutdown;
use crate::snapshot::BuildError;
use crate::snapshot_store::SnapshotWriter;
use crate::state::{PersistedState, Revision, ServiceState, StateStore};
use crate::xds::ProxyRegistry;

use super::views::proxy_views;
use super::{Command, version_seq};

/// A running operation.
pub(super) struct Running {
    pub(super) rollout: Rollout,
    pub(super) progress: watch::Sender<Progress>,
    pub(super) actor: String,
    pub(super) started: SystemTime,
}

/// The driver's state.
pub(super) struct Driver {
    pub(super) config: Config,
    pub(super) writer: SnapshotWriter,
    pub(super) store: Arc<dyn StateStore>,
    pub(super) state: PersistedState,
    pub(super) revision: Revision,
    pub(super) registry: Arc<ProxyRegistry>,
    /// Running operations, by service.
    pub(super) running: BTreeMap<String, Running>,
    /// Progress of finished operations, for `follow` after the end.
    pub(super) finished: HashMap<u64, watch::Receiver<Progress>>,
    pub(super) checks_tx: mpsc::Sender<(u64, Vec<CheckResult>)>,
    pub(super) metrics: Arc<Metrics>,
}

impl Driver {
    /// Makes the stored state fit the config: services that are new get
    /// their config `live` fleet; splits or retirements that name fleets
    /// the config no longer has are reset.
    pub(super) fn reconcile(&mut self) {
        let initial = Weights::initial(&self.config);
        let mut services = BTreeMap::new();
        for (name, svc) in &self.config.services {
            let mut st = self.state.services.remove(name).unwrap_or_default();
            let mut weights = Weights::default();
            if weights.set(&self.config, name, &st.weights).is_err() {
                st.weights = initial.get(name).cloned().unwrap_or_default();
                st.previous = None;
            } else if let Some(full) = weights.get(name) {
                st.weights = full.clone();
            }
            st.retired.retain(|f| svc.fleets.contains_key(f));
            if st
                .previous
                .as_ref()
                .is_some_and(|p| !svc.fleets.contains_key(p))
            {
                st.previous = None;
            }
            if st
                .retirement
                .as_ref()
                .is_some_and(|r| !svc.fleets.contains_key(&r.fleet))
            {
                st.retirement = None;
            }
            services.insert(name.clone(), st);
        }
        self.state.services = services;
        self.update_cost_windows(SystemTime::now());
    }

    /// Records since when each service runs more than one fleet.
    fn update_cost_windows(&mut self, now: SystemTime) {
        for (name, st) in self.state.services.iter_mut() {
            let Some(svc) = self.config.services.get(name) else {
                continue;
            };
            let up = svc
                .fleets
                .iter()
                .filter(|(f, fleet)| !fleet.endpoints.is_empty() && !st.retired.contains(*f))
                .count();
            if up >= 2 {
                st.both_fleets_since.get_or_insert(now);
            } else {
                st.both_fleets_since = None;
            }
        }
    }

    fn weights_of(&self, state: &PersistedState) -> Weights {
        let mut w = Weights::initial(&self.config);
        for (name, st) in &state.services {
            // reconcile() made every stored split fit the config.
            let _ = w.set(&self.config, name, &st.weights);
            w.set_retired(name, st.retired.clone());
        }
        w
    }

    /// Builds `state` as a snapshot, saves `state` durably, then serves it.
    /// `reuse_seq` keeps the stored sequence number when the content is the
    /// one already stored (a restart), so the version string is the same.
    async fn commit_state(
        &mut self,
        mut state: PersistedState,
        reuse_seq: bool,
    ) -> Result<String, String> {
        let input = config::translate(&self.config, &self.weights_of(&state));
        let snapshot = self
            .writer
            .prepare(&input, |digest| {
                let same = state.version.ends_with(&format!("-{digest}"));
                if !(reuse_seq && same && state.version_seq > 0) {
                    state.version_seq += 1;
                }
                format!("{}-{digest}", state.version_seq)
            })
            .map_err(|e| e.to_string())?;
        let version = snapshot.version().to_owned();
        state.version = version.clone();
        let revision = self
            .store
            .save(&state, self.revision)
            .await
            .map_err(|e| e.to_string())?;
        self.writer.install(snapshot);
        self.state = state;
        self.revision = revision;
        Ok(version)
    }

    pub(super) async fn publish_current(&mut self, reuse_seq: bool) -> Result<String, BuildError> {
        let state = self.state.clone();
        match self.commit_state(state, reuse_seq).await {
            Ok(v) => Ok(v),
            Err(e) => {
                // Serve what was loaded even if it could not be saved again:
                // the stored state is the same or older by one sequence.
                tracing::warn!(error = %e, "could not save state at start-up");
                let input = config::translate(&self.config, &self.weights_of(&self.state));
                let seq = self.state.version_seq.max(1);
                let snapshot = self
                    .writer
                    .prepare(&input, |digest| format!("{seq}-{digest}"))?;
                let version = snapshot.version().to_owned();
                self.writer.install(snapshot);
                Ok(version)
            }
        }
    }

    /// Restarts the retirements that were pending when teal stopped.
    pub(super) fn resume_retirements(&mut self) {
        let pending: Vec<(String, Retirement)> = self
            .state
            .services
            .iter()
            .filter_map(|(s, st)| st.retirement.clone().map(|r| (s.clone(), r)))
            .collect();
        for (service, r) in pending {
            let after = r.at.duration_since(SystemTime::now()).unwrap_or_default();
            let op = Operation::Retire {
                service: service.clone(),
                fleet: r.fleet.clone(),
                after,
            };
            match self.begin(op, "teal (resumed after restart)".into()) {
                Ok(_) => {
                    tracing::info!(%service, fleet = %r.fleet, ?after, "resumed pending retirement")
                }
                Err(e) => tracing::warn!(%service, error = %e, "cannot resume retirement"),
            }
        }
    }

    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut checks: mpsc::Receiver<(u64, Vec<CheckResult>)>,
        mut shutdown: Shutdown,
    ) {
        let mut proxies = self.registry.watch();
        loop {
            let deadline = self
                .running
                .values()
                .filter_map(|r| r.rollout.next_deadline())
                .min();
            tokio::select! {
                () = shutdown.wait() => return,
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => return,
                },
                Some((id, results)) = checks.recv() => {
                    if let Some(service) = self.service_of(id) {
                        self.feed(&service, Event::Checks(results)).await;
                    }
                }
                changed = proxies.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    self.feed_proxies().await;
                }
                () = sleep_until(deadline) => {
                    let services: Vec<String> = self.running.keys().cloned().collect();
                    for s in services {
                        self.feed(&s, Event::Tick).await;
                    }
                }
            }
        }
    }

    fn service_of(&self, id: u64) -> Option<String> {
        self.running
            .iter()
            .find(|(_, r)| r.rollout.progress().id == id)
            .map(|(s, _)| s.clone())
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Start { op, actor, reply } => {
                let service = op.service().to_owned();
                let result = self.begin(op, actor);
                let ok = result.is_ok();
                let _ = reply.send(result);
                if ok {
                    self.after_start(&service).await;
                }
            }
            Command::Follow { id, reply } => {
                let found = self
                    .running
                    .values()
                    .find(|r| r.rollout.progress().id == id)
                    .map(|r| r.progress.subscribe())
                    .or_else(|| self.finished.get(&id).cloned());
                let _ = reply.send(found.ok_or(RolloutError::NoSuchOperation(id)));
            }
            Command::Abort { id, actor, reply } => {
                let Some(service) = self.service_of(id) else {
                    let _ = reply.send(Err(RolloutError::NoSuchOperation(id)));
                    return;
                };
                let done_before = self.running.get(&service).map(|r| r.rollout.is_done());
                self.feed(&service, Event::Abort(format!("by {actor}")))
                    .await;
                let still_running = self.running.contains_key(&service);
                let _ = reply.send(if still_running && done_before == Some(false) {
                    Err(RolloutError::Invalid(
                        "the operation is pushing a change; it can be aborted between steps".into(),
                    ))
                } else {
                    Ok(())
                });
            }
            Command::Status { service, reply } => {
                let _ = reply.send(self.status(service.as_deref()));
            }
            Command::History { service, reply } => {
                let result = if self.config.services.contains_key(&service) {
                    Ok(self.state.history_newest_first(&service))
                } else {
                    Err(RolloutError::UnknownService(service))
                };
                let _ = reply.send(result);
            }
            Command::Verify {
                service,
                fleet,
                reply,
            } => {
                let Some(svc) = self.config.services.get(&service).cloned() else {
                    let _ = reply.send(Err(RolloutError::UnknownService(service)));
                    return;
                };
                if !svc.fleets.contains_key(&fleet) {
                    let _ = reply.send(Err(RolloutError::UnknownFleet { service, fleet }));
                    return;
                }
                tokio::spawn(async move {
                    let _ = reply.send(Ok(crate::checks::run_checks(&svc, &fleet).await));
                });
            }
            Command::Reload { config, reply } => {
                let previous = std::mem::replace(&mut self.config, *config);
                let previous_state = self.state.clone();
                self.reconcile();
                let state = self.state.clone();
                match self.commit_state(state, false).await {
                    Ok(v) => {
                        let _ = reply.send(Ok(v));
                    }
                    Err(e) => {
                        self.config = previous;
                        self.state = previous_state;
                        let _ = reply.send(Err(e));
                    }
                }
            }
        }
    }

    fn service_view<'a>(&'a self, service: &'a str) -> Result<ServiceView<'a>, RolloutError> {
        let svc = self
            .config
            .services
            .get(service)
            .ok_or_else(|| RolloutError::UnknownService(service.to_owned()))?;
        let st = self
            .state
            .services
            .get(service)
            .ok_or_else(|| RolloutError::UnknownService(service.to_owned()))?;
        Ok(ServiceView {
            name: service,
            fleets: svc.fleets.keys().map(String::as_str).collect(),
            split: &st.weights,
            previous: st.previous.as_deref(),
            retired: &st.retired,
        })
    }

    /// Plans and registers an operation; the caller then feeds it.
    fn begin(
        &mut self,
        op: Operation,
        actor: String,
    ) -> Result<watch::Receiver<Progress>, RolloutError> {
        let service = op.service().to_owned();
        if let Some(r) = self.running.get(&service) {
            let p = r.rollout.progress();
            return Err(RolloutError::Busy {
                service,
                verb: p.verb.clone(),
                id: p.id,
            });
        }
        let view = self.service_view(&service)?;
        let plan = machine::plan(&op, &view)?;
        let original = view.current();
        self.state.next_operation_id += 1;
        let id = self.state.next_operation_id;
        let (rollout, _) = Rollout::start(id, &op, plan, original, Instant::now());
        if let Operation::Retire { fleet, after, .. } = &op
            && let Some(st) = self.state.services.get_mut(&service)
        {
            st.retirement = Some(Retirement {
                fleet: fleet.clone(),
                at: SystemTime::now() + *after,
            });
        }
        let (tx, rx) = watch::channel(rollout.progress().clone());
        tracing::info!(id, %service, verb = op.verb(), %actor, "operation started");
        self.running.insert(
            service,
            Running {
                rollout,
                progress: tx,
                actor,
                started: SystemTime::now(),
            },
        );
        Ok(rx)
    }

    async fn after_start(&mut self, service: &str) {
        let views = self.proxy_views(service);
        self.feed(service, Event::Proxies(views)).await;
    }

    async fn feed_proxies(&mut self) {
        let services: Vec<String> = self
            .running
            .iter()
            .filter(|(_, r)| r.rollout.wants_proxies())
            .map(|(s, _)| s.clone())
            .collect();
        for s in services {
            let views = self.proxy_views(&s);
            self.feed(&s, Event::Proxies(views)).await;
        }
    }

    /// Feeds one event to a service's operation and carries out what it
    /// asks, feeding back the results until it has nothing more to do.
    async fn feed(&mut self, service: &str, event: Event) {
        let mut queue = std::collections::VecDeque::from([event]);
        while let Some(event) = queue.pop_front() {
            let Some(running) = self.running.get_mut(service) else {
                return;
            };
            let wanted = running.rollout.wants_proxies();
            let actions = running.rollout.on_event(event, Instant::now());
            running
                .progress
                .send_replace(running.rollout.progress().clone());
            // A step that begins (after a shift's pause, a retirement's
            // delay, or right after the previous step) needs to see the
            // proxies now: the registry may not change again for a while.
            if !wanted
                && running.rollout.wants_proxies()
                && !queue.iter().any(|e| matches!(e, Event::Proxies(_)))
            {
                queue.push_back(Event::Proxies(Vec::new()));
            }
            for action in actions {
                match action {
                    Action::RunChecks(fleets) => self.spawn_checks(service, fleets),
                    Action::Commit(change) => {
                        queue.push_back(match self.commit_change(service, &change).await {
                            Ok(version) => Event::Committed { version },
                            Err(e) => Event::CommitFailed(e),
                        });
                        // The new version is going out; see where proxies are.
                        queue.push_back(Event::Proxies(Vec::new()));
                    }
                    Action::Finish(outcome) => self.finish(service, outcome).await,
                }
            }
            // Proxy views are computed when their turn comes, after the
            // commit result moved the rollout to the committed version.
            if let Some(Event::Proxies(views)) = queue.front_mut()
                && views.is_empty()
            {
                *views = self.proxy_views(service);
            }
        }
    }

    fn spawn_checks(&self, service: &str, fleets: Vec<String>) {
        let Some(svc) = self.config.services.get(service).cloned() else {
            return;
        };
        let Some(id) = self.running.get(service).map(|r| r.rollout.progress().id) else {
            return;
        };
        let tx = self.checks_tx.clone();
        tokio::spawn(async move {
            let mut all = Vec::new();
            for fleet in fleets {
                all.extend(crate::checks::run_checks(&svc, &fleet).await);
            }
            let _ = tx.send((id, all)).await;
        });
    }

    async fn commit_change(&mut self, service: &str, change: &Change) -> Result<String, String> {
        let mut next = self.state.clone();
        let st: &mut ServiceState = next.services.entry(service.to_owned()).or_default();
        let old_live = machine::live_of(&st.weights).to_owned();
        let new_live = machine::live_of(&change.split).to_owned();
        if old_live != new_live {
            st.previous = Some(old_live);
        }
        st.weights = change.split.clone();
        if change.retired != st.retired {
            st.retirement = None;
        }
        st.retired = change.retired.clone();
        let result = self.commit_state(next, false).await;
        if result.is_ok() {
            self.update_cost_windows(SystemTime::now());
        }
        if let Ok(v) = &result {
            tracing::info!(%service, version = %v, split = ?change.split, "committed");
        }
        result
    }

    async fn finish(&mut self, service: &str, outcome: Outcome) {
        let Some(running) = self.running.remove(service) else {
            return;
        };
        let p = running.rollout.progress().clone();
        let (convergence, acks) = running.rollout.convergence();
        if let (Some(took), Outcome::Succeeded) = (convergence, &outcome) {
            self.metrics.observe_convergence(took);
        }
        let to = self
            .state
            .services
            .get(service)
            .map(|s| s.weights.clone())
            .unwrap_or_default();
        if let Some(st) = self.state.services.get_mut(service)
            && matches!(outcome, Outcome::Aborted { .. } | Outcome::Refused { .. })
            && p.verb == "retire"
        {
            st.retirement = None;
        }
        let entry = HistoryEntry {
            id: p.id,
            verb: p.verb.clone(),
            actor: running.actor.clone(),
            started: running.started,
            finished: SystemTime::now(),
            from: running.rollout.original().split.clone(),
            to,
            version: running
                .rollout
                .confirmed_version()
                .map(str::to_owned)
                .or(p.version.clone()),
            outcome: outcome.clone(),
            convergence,
            acks,
        };
        self.state.record(service, entry);
        let state = self.state.clone();
        match self.store.save(&state, self.revision).await {
            Ok(rev) => self.revision = rev,
            Err(e) => tracing::warn!(error = %e, "could not save the history entry"),
        }
        tracing::info!(id = p.id, %service, verb = %p.verb, ?outcome, "operation finished");
        self.finished.insert(p.id, running.progress.subscribe());
        if self.finished.len() > 256
            && let Some(oldest) = self.finished.keys().min().copied()
        {
            self.finished.remove(&oldest);
        }
    }

    fn status(&self, only: Option<&str>) -> Result<StatusView, RolloutError> {
        if let Some(s) = only
            && !self.config.services.contains_key(s)
        {
            return Err(RolloutError::UnknownService(s.to_owned()));
        }
        let services = self
            .state
            .services
            .iter()
            .filter(|(name, _)| only.is_none_or(|o| o == name.as_str()))
            .map(|(name, st)| ServiceStatus {
                name: name.clone(),
                live: machine::live_of(&st.weights).to_owned(),
                previous: st.previous.clone(),
                weights: st.weights.clone(),
                retired: st.retired.iter().cloned().collect(),
                retirement: st.retirement.clone(),
                both_fleets_since: st.both_fleets_since,
                last_change: self.state.history.get(name).and_then(|h| h.last().cloned()),
                in_progress: self.running.get(name).map(|r| r.rollout.progress().clone()),
            })
            .collect();
        Ok(StatusView {
            version: self.state.version.clone(),
            services,
        })
    }

    /// The proxies of every group that routes `service`, as the rollout
    /// sees them, measured against the version it committed.
    fn proxy_views(&self, service: &str) -> Vec<ProxyView> {
        let groups: BTreeSet<&str> = self
            .config
            .groups
            .iter()
            .filter(|(_, g)| self.config.services_of(g).contains(&service))
            .map(|(name, _)| name.as_str())
            .collect();
        let committed = self
            .running
            .get(service)
            .and_then(|r| r.rollout.progress().version.as_deref())
            .and_then(version_seq);
        let snapshot = self.writer.current();
        proxy_views(&self.registry.proxies(), &groups, &snapshot, committed)
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}
