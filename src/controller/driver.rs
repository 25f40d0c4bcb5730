//! The driver: the one task that owns the config, the durable state and
//! the snapshot writer, and runs every operation.
//!
//! It carries out what each [`Rollout`] asks ([`Action`]s) and feeds back
//! what happened ([`Event`]s); it never guesses what a machine wants by
//! looking at its state. Durable points: an operation is saved when it
//! starts (so its id is never reused and a crash before its first commit
//! is still recorded), unless its first step commits at once, with
//! nothing to wait for in between (then that commit is its first save);
//! with each of its commits (weights, version and operation record in one
//! write); and when it ends (history entry, rollback point, no
//! operation).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, watch};

use crate::config::{self, Config, EndpointOverlay, EndpointSource, Weights, WeightsError};
use crate::metrics::Metrics;
use crate::rollout::analysis::Baseline;
use crate::rollout::drain;
use crate::rollout::machine::{self, Action, Event, Gate, Origin, ProxyView, Rollout};
use crate::rollout::plan::{self, Change, ServiceView};
use crate::rollout::registration::Registered;
use crate::rollout::traffic::{FleetTraffic, ProxyTraffic};
use crate::rollout::{
    CheckResult, FleetDrain, HistoryEntry, Operation, Outcome, Phase, Progress, Reason, Retirement,
    RolloutError, ServiceStatus, StatusView, Verb, Version,
};
use crate::shutdown::Shutdown;
use crate::state::{PersistedState, Revision, StateError, StateStore, Stored};
use crate::xds::load::{LoadTargets, ProxyLoad, Target};
use crate::xds::snapshot_store::SnapshotWriter;
use crate::xds::{Changes, ProxyRegistry};

use super::command::{Command, CommitError, ControllerError, ReloadError, Reloaded};
use super::follow::{Basis, Follow};
use super::reconcile::{ReconcileError, check_reload_endpoints, fit_split, reconcile};

/// A running operation and the channel its progress goes out on.
pub(super) struct Running {
    pub(super) rollout: Rollout,
    pub(super) progress: watch::Sender<Progress>,
    /// Cordoned proxies the operation did not wait for, as last observed.
    pub(super) not_waiting_for: Vec<String>,
    /// Every one it did not wait for at some point, for its history entry.
    pub(super) not_waited_for: BTreeSet<String>,
    /// Its proxies, as last handed to the rollout.
    pub(super) follow: Follow,
    /// How its progress is paced ([`Running::publish_soon`]).
    pub(super) pace: Pace,
}

/// When the progress was last published by [`Running::publish_soon`].
#[derive(Debug, Default)]
pub(super) struct Pace {
    /// When, and the phase then.
    published: Option<(Instant, Phase)>,
    /// The progress moved since.
    held: bool,
}

/// How often the progress of an operation is published while only its
/// counts move. Every ACK of every proxy moves them; publishing each
/// (building the progress, waking every follower, each sending it to its
/// client) cost more than following the ACK itself at thousands of
/// proxies. A follower sees a count at most this old; a new phase and the
/// outcome go out at once.
const PROGRESS_EVERY: Duration = Duration::from_millis(5);

/// How often, at most, the driver takes the proxies' changes. Every ACK
/// of every proxy wakes it, and each look has a cost of its own whatever
/// it finds (taking the batch, what the views are measured against, the
/// loop's timers): looking at every wake-up paid it thousands of times
/// per flip of thousands of proxies. An ACK counts at most this late.
const FOLLOW_EVERY: Duration = Duration::from_millis(1);

impl Running {
    /// Takes the cordoned proxies its [`Follow`] left out, when they
    /// changed, into the progress and the history entry.
    fn note_skipped(&mut self) {
        if !self.follow.skipped_changed() {
            return;
        }
        let skipped = self.follow.skipped();
        self.not_waited_for.extend(skipped.iter().cloned());
        self.not_waiting_for = skipped;
    }

    /// Publishes the progress, but never an outcome: only
    /// [`Driver::finish`] tells it, once it is recorded (a replica that
    /// cannot record it because another one leads must tell no one).
    fn publish(&self) {
        if self.rollout.outcome().is_none() {
            self.send();
        }
    }

    /// Publishes the progress as it is, outcome included.
    fn send(&self) {
        let mut progress = self.rollout.progress();
        progress.not_waiting_for = self.not_waiting_for.clone();
        self.progress.send_replace(progress);
    }

    /// Publishes the progress at once when the phase changed since the
    /// last publication here, else at most every [`PROGRESS_EVERY`]: what
    /// is held back goes out at [`Running::next_deadline`].
    fn publish_soon(&mut self, now: Instant) {
        let phase = self.rollout.phase();
        match self.pace.published {
            Some((at, was)) if was == phase && now < at + PROGRESS_EVERY => {
                self.pace.held = true;
            }
            _ => {
                self.publish();
                self.pace = Pace {
                    published: Some((now, phase)),
                    held: false,
                };
            }
        }
    }

    /// When the operation next needs the clock: its machine's deadline,
    /// or progress held back.
    fn next_deadline(&self) -> Option<Instant> {
        let held = self
            .pace
            .published
            .filter(|_| self.pace.held)
            .map(|(at, _)| at + PROGRESS_EVERY);
        match (self.rollout.next_deadline(), held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

pub(super) struct Driver {
    /// The config served: the file's ([`Driver::file_config`]) with the
    /// endpoints of [`Driver::overlay`] applied. Everything that looks at
    /// endpoints (snapshots, checks, guards) reads this one.
    pub(super) config: Config,
    /// The config as the file gives it, kept to lay a changed overlay over.
    pub(super) file_config: Config,
    /// Endpoints of fleets that do not come from the file, as their
    /// sources reported them last (see [`super::endpoints`]).
    pub(super) overlay: crate::config::EndpointOverlay,
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
    /// A reload (the file's config) that waits for an operation to leave
    /// the phases in which its service's endpoints and checks must not
    /// change (from the checks before a commit to the last confirmation).
    pub(super) pending_reload: Option<Box<Config>>,
    /// When to try expiring registrations again after a failed save.
    pub(super) expiry_retry: Option<Instant>,
    /// When the next registration in `state` runs out, kept so the loop
    /// does not walk every registration on every event; refreshed
    /// wherever registrations change (only [`super::endpoints`] does).
    pub(super) next_expiry_at: Option<SystemTime>,
    /// With replicas: who leads. Only the leader runs operations.
    pub(super) leadership: Option<crate::ha::Leadership>,
    /// The cordons of an old `cordons.json`, merged into the state at its
    /// next commit (see [`super::cordons`]).
    pub(super) legacy_cordons: Option<crate::xds::cordon::Legacy>,
}

impl Driver {
    /// Fits the loaded state to the config (see [`reconcile`]). An
    /// operation found in flight on a service the config no longer has
    /// cannot be resumed: it ends `aborted`, with its history entry, as it
    /// would had the service been removed while it ran.
    pub(super) fn reconcile(&mut self) -> Result<(), ReconcileError> {
        let mut next = reconcile(&self.config, &self.state)?;
        for (service, st) in &self.state.services {
            let (Some(op), false) = (&st.operation, next.services.contains_key(service)) else {
                continue;
            };
            next.record(
                service,
                HistoryEntry {
                    id: op.id,
                    verb: op.verb,
                    actor: op.actor.clone(),
                    started: op.started,
                    finished: SystemTime::now(),
                    from: op.original.split.clone(),
                    to: st.weights.clone(),
                    target: op.plan.steps.last().map(|c| c.split.clone()),
                    version: None,
                    outcome: Outcome::Aborted {
                        reason: Reason::ServiceRemovedWhileStopped,
                    },
                    convergence: None,
                    acks: Vec::new(),
                    warnings: op.warnings.clone(),
                    not_waited_for: Vec::new(),
                },
            );
        }
        self.state = next;
        self.update_cost_windows(SystemTime::now());
        Ok(())
    }

    /// Records since when each service runs more than one fleet.
    pub(super) fn update_cost_windows(&mut self, now: SystemTime) {
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

    /// The weights `state` serves. A split that does not fit the config
    /// is an error, never replaced by the config's `live`: that would move
    /// traffic nobody asked to move.
    pub(super) fn weights_of(&self, state: &PersistedState) -> Result<Weights, WeightsError> {
        let mut w = Weights::initial(&self.config);
        for (name, st) in &state.services {
            w.set(&self.config, name, &st.weights)?;
            w.set_retired(name, st.retired.clone());
        }
        Ok(w)
    }

    /// Builds `state` as a snapshot, saves `state` durably, then serves it.
    /// `reuse_seq` keeps the stored sequence number when the content is the
    /// one already stored (a restart), so the version string is the same.
    pub(super) async fn commit_state(
        &mut self,
        mut state: PersistedState,
        reuse_seq: bool,
    ) -> Result<Version, CommitError> {
        let input = config::translate(&self.config, &self.weights_of(&state)?);
        let next_seq = state
            .version_seq
            .checked_add(1)
            .ok_or(StateError::Exhausted { counter: "version" })?;
        let labels = std::mem::take(&mut state.labels);
        let snapshot = self.writer.prepare_labelled(&input, &labels, |digest| {
            let same = state.version.as_ref().is_some_and(|v| v.digest == digest);
            if !(reuse_seq && same && state.version_seq > 0) {
                state.version_seq = next_seq;
            }
            Version::new(state.version_seq, digest).to_string()
        })?;
        let version = Version::new(state.version_seq, snapshot.digest());
        state.version = Some(version.clone());
        state.labels = snapshot.labels();
        // What replicas must agree on besides the resources (the version
        // covers those): a replica whose checks differ may not lead.
        state.checks_digest = Some(crate::rollout::checks::digest(&self.config));
        self.merge_legacy_cordons(&mut state);
        let revision = self.store.save(&state, self.revision).await?;
        self.install(snapshot);
        self.state = state;
        self.revision = revision;
        self.legacy_cordons_saved();
        self.apply_cordons();
        Ok(version)
    }

    /// Serves `snapshot`, built from the config in `self.config`, and asks
    /// the proxies for load reports of the fleets it routes them to.
    pub(super) fn install(&mut self, snapshot: Arc<crate::xds::snapshot::Snapshot>) {
        self.writer.install(snapshot);
        self.registry
            .loads()
            .set_targets(load_targets(&self.config));
    }

    pub(super) async fn publish_current(
        &mut self,
        reuse_seq: bool,
    ) -> Result<Version, ControllerError> {
        let state = self.state.clone();
        match self.commit_state(state, reuse_seq).await {
            Ok(v) => Ok(v),
            Err(CommitError::Build(e)) => Err(e.into()),
            Err(CommitError::Weights(e)) => Err(ControllerError::Weights(e)),
            Err(CommitError::Store(e)) => {
                // Serve what was loaded even if it could not be saved again:
                // the stored state is the same or older by one sequence.
                tracing::warn!(error = %e, "could not save state at start-up");
                let weights = self.weights_of(&self.state)?;
                let input = config::translate(&self.config, &weights);
                let seq = self.state.version_seq.max(1);
                let snapshot =
                    self.writer
                        .prepare_labelled(&input, &self.state.labels, |digest| {
                            Version::new(seq, digest).to_string()
                        })?;
                let version = Version::new(seq, snapshot.digest());
                let labels = snapshot.labels();
                self.install(snapshot);
                // What is served, though not saved: the next commit numbers
                // after it, and operations resume against it.
                self.state.version_seq = seq;
                self.state.version = Some(version.clone());
                self.state.labels = labels;
                Ok(version)
            }
        }
    }

    /// Picks up the operations that were running when teal stopped
    /// (saved with the state): each is resolved and ends with exactly one
    /// history entry; a pending retirement waits out the rest of its delay.
    /// `version` is the one served at start-up.
    pub(super) async fn resume_operations(&mut self, version: &Version) {
        let found: Vec<(String, machine::Record)> = self
            .state
            .services
            .iter()
            .filter_map(|(s, st)| st.operation.clone().map(|r| (s.clone(), r)))
            .collect();
        for (service, record) in found {
            let id = record.id;
            let (rollout, actions) =
                Rollout::resume(&service, record, version, Instant::now(), SystemTime::now());
            tracing::info!(id, %service, verb = %rollout.verb(), phase = rollout.phase().as_str(),
                "resuming an operation found in flight at start-up");
            let (tx, _rx) = watch::channel(rollout.progress());
            self.running.insert(
                service.clone(),
                Running {
                    rollout,
                    progress: tx,
                    not_waiting_for: Vec::new(),
                    not_waited_for: BTreeSet::new(),
                    follow: Follow::default(),
                    pace: Pace::default(),
                },
            );
            self.carry_out(&service, actions).await;
        }
    }

    /// Runs until `shutdown`; operations still running then end with a
    /// history entry (a pending retirement is kept for the next start).
    pub(super) async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut checks: mpsc::Receiver<(u64, Vec<CheckResult>)>,
        mut shutdown: Shutdown,
    ) {
        let mut proxies = self.registry.watch();
        let changes = self.registry.feed();
        // Other replicas' saves, with a shared store; and who leads.
        let mut saved = self.store.watch();
        if let Some(rx) = saved.as_mut() {
            // A save between this replica's load and now is already the
            // watch's current value, which `changed` would not report.
            rx.mark_changed();
        }
        let mut roles = self.leadership.as_ref().map(crate::ha::Leadership::watch);
        // When the proxies' changes were last taken, and when they will be
        // next if a change came sooner than FOLLOW_EVERY after that.
        let (mut last_look, mut look_at): (Option<Instant>, Option<Instant>) = (None, None);
        // When operations that judge the proxies' traffic get it next.
        let mut traffic_at: Option<Instant> = None;
        loop {
            let deadline = self
                .running
                .values()
                .filter_map(Running::next_deadline)
                .min();
            let wants_traffic = self
                .running
                .values()
                .any(|r| !r.rollout.wants_traffic().is_empty());
            if !wants_traffic {
                traffic_at = None;
            } else if traffic_at.is_none() {
                traffic_at = Some(Instant::now() + self.registry.loads().interval());
            }
            tokio::select! {
                // Shutdown first: the proxies' streams close because of it,
                // and their going must not count as confirming anything.
                biased;
                () = shutdown.wait() => break,
                cmd = commands.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                Some((id, results)) = checks.recv() => {
                    if let Some(service) = self.service_of(id) {
                        self.feed(&service, Event::Checks(results)).await;
                    }
                }
                changed = proxies.changed(), if look_at.is_none() => {
                    if changed.is_err() {
                        break;
                    }
                    let now = Instant::now();
                    match last_look.map(|at| at + FOLLOW_EVERY).filter(|next| *next > now) {
                        Some(next) => look_at = Some(next),
                        None => {
                            last_look = Some(now);
                            self.feed_proxies(changes.take()).await;
                        }
                    }
                }
                () = sleep_until(look_at), if look_at.is_some() => {
                    look_at = None;
                    last_look = Some(Instant::now());
                    // What woke the loop is taken now: a change after this
                    // wakes it again, the ones before do not.
                    proxies.borrow_and_update();
                    self.feed_proxies(changes.take()).await;
                }
                () = sleep_until(self.next_expiry()) => {
                    self.expire_registrations(SystemTime::now()).await;
                }
                Some(stored) = saved_elsewhere(&mut saved) => {
                    self.adopt_logged(stored);
                }
                Some(role) = role_changed(&mut roles) => {
                    self.on_role(role).await;
                }
                () = sleep_until(deadline) => {
                    let services: Vec<String> = self.running.keys().cloned().collect();
                    for s in services {
                        self.feed(&s, Event::Tick).await;
                    }
                }
                () = sleep_until(traffic_at), if traffic_at.is_some() => {
                    traffic_at = None;
                    self.feed_traffic().await;
                }
            }
        }
        self.shut_down().await;
    }

    async fn shut_down(&mut self) {
        if self.leadership.is_some() {
            // A replica's stop hands its operations over exactly as a crash
            // does: their records stay saved, the lease is given up, and
            // the next leader resumes them. Ending them here would record
            // an outcome the next leader could contradict.
            self.hand_over("this replica is stopping");
            return;
        }
        let services: Vec<String> = self.running.keys().cloned().collect();
        for service in services {
            let ended = self
                .running
                .get_mut(&service)
                .and_then(|r| r.rollout.shut_down());
            if ended.is_some() {
                self.finish(&service).await;
            }
        }
    }

    fn service_of(&self, id: u64) -> Option<String> {
        self.running
            .iter()
            .find(|(_, r)| r.rollout.id() == id)
            .map(|(s, _)| s.clone())
    }

    async fn handle(&mut self, cmd: Command) {
        let cmd = match self.leader_only(cmd) {
            Some(cmd) => cmd,
            None => return,
        };
        match cmd {
            Command::Start {
                op,
                actor,
                route,
                reply,
            } => {
                let service = op.service().to_owned();
                if let Err(e) = self.route_may_start(&op, route.as_ref()) {
                    let _ = reply.send(Err(e));
                    return;
                }
                match self.begin(op, actor).await {
                    Ok((rx, actions)) => {
                        let _ = reply.send(Ok(rx));
                        self.carry_out(&service, actions).await;
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Follow { id, reply } => {
                let found = self
                    .running
                    .values()
                    .find(|r| r.rollout.id() == id)
                    .map(|r| r.progress.subscribe())
                    .or_else(|| self.finished.get(&id).cloned());
                let _ = reply.send(found.ok_or(RolloutError::NoSuchOperation(id)));
            }
            Command::Abort { id, actor, reply } => {
                let Some(service) = self.service_of(id) else {
                    let _ = reply.send(Err(RolloutError::NoSuchOperation(id)));
                    return;
                };
                let Some(running) = self.running.get_mut(&service) else {
                    return;
                };
                match running.rollout.abort(&actor, Instant::now()) {
                    Ok(actions) => {
                        running.publish();
                        tracing::info!(id, %service, %actor, "abort asked");
                        let _ = reply.send(Ok(()));
                        self.carry_out(&service, actions).await;
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                }
            }
            Command::Status { service, reply } => {
                let _ = reply.send(self.status(service.as_deref()));
            }
            Command::History { service, reply } => {
                let result = if self.config.services.contains_key(&service) {
                    Ok(self.state.history_newest_first(&service))
                } else {
                    Err(self.unknown_service(&service))
                };
                let _ = reply.send(result);
            }
            Command::ChangeRegistered {
                service,
                fleet,
                request,
                actor,
                force,
                limits,
                reply,
            } => {
                let result = self
                    .change_registered(&service, &fleet, request, &actor, force, &limits)
                    .await;
                let _ = reply.send(result);
            }
            Command::ShowFleet {
                service,
                fleet,
                reply,
            } => {
                let _ = reply.send(self.fleet_view(&service, &fleet));
            }
            Command::Verify {
                service,
                fleet,
                reply,
            } => {
                let Some(svc) = self.config.services.get(&service).cloned() else {
                    let _ = reply.send(Err(self.unknown_service(&service)));
                    return;
                };
                if !svc.fleets.contains_key(&fleet) {
                    let _ = reply.send(Err(RolloutError::UnknownFleet { service, fleet }));
                    return;
                }
                tokio::spawn(async move {
                    let _ = reply.send(Ok(crate::rollout::checks::run_checks(&svc, &fleet).await));
                });
            }
            Command::Reload { config, reply } => {
                let _ = reply.send(self.reload(config).await);
            }
            Command::SetEndpoints {
                service,
                sets,
                limits,
                reply,
            } => {
                let result = self.set_from_outside(&service, sets, &limits).await;
                let _ = reply.send(result);
            }
            Command::Cordon {
                change,
                actor,
                reply,
            } => {
                let _ = reply.send(self.change_cordon(change, &actor).await);
            }
        }
    }

    /// The running operation that a reload to `config` must wait for: one
    /// whose service's config changes while it checks or confirms (its
    /// checks and the proxies' confirmation would be about endpoints that
    /// are no longer the ones served).
    fn reload_blocker(&self, config: &Config) -> Option<(String, u64, Phase)> {
        self.running.iter().find_map(|(service, r)| {
            let phase = r.rollout.phase();
            let sensitive = matches!(
                phase,
                Phase::PreChecks | Phase::Confirming | Phase::PostChecks | Phase::RollingBack
            );
            let changed = match (
                self.config.services.get(service),
                config.services.get(service),
            ) {
                (Some(old), Some(new)) => old != new,
                _ => false,
            };
            (sensitive && changed).then(|| (service.clone(), r.rollout.id(), phase))
        })
    }

    /// Applies a new config (already validated): refused whole if it would
    /// move traffic ([`reconcile`]); deferred while an operation depends on
    /// the service config it changes; otherwise committed, and operations
    /// on services it removes end `Aborted`.
    async fn reload(&mut self, file: Box<Config>) -> Result<Reloaded, ReloadError> {
        let overlay = self.overlay_for_file(&file);
        let config = file.with_endpoints(&overlay);
        let next = reconcile(&config, &self.state)?;
        check_reload_endpoints(&self.config, &config, &self.state)?;
        if let Some((service, id, phase)) = self.reload_blocker(&config) {
            self.pending_reload = Some(file);
            return Ok(Reloaded::Deferred { service, id, phase });
        }
        self.pending_reload = None;
        let previous = std::mem::replace(&mut self.config, config);
        let previous_file = std::mem::replace(&mut self.file_config, *file);
        match self.commit_state(next, false).await {
            Ok(version) => {
                self.overlay = overlay;
                self.update_cost_windows(SystemTime::now());
                let removed: Vec<String> = self
                    .running
                    .keys()
                    .filter(|s| !self.config.services.contains_key(*s))
                    .cloned()
                    .collect();
                for service in removed {
                    let actions = self
                        .running
                        .get_mut(&service)
                        .map(|r| r.rollout.end_removed());
                    if let Some(actions) = actions {
                        self.carry_out(&service, actions).await;
                    }
                }
                Ok(Reloaded::Applied { version })
            }
            Err(e) => {
                self.config = previous;
                self.file_config = previous_file;
                Err(ReloadError::Commit(e))
            }
        }
    }

    /// The overlay to serve `file` with: a `registered` fleet's endpoints
    /// are its registrations in the state (what a restart would serve),
    /// not what the overlay last held for a fleet that had another source.
    pub(super) fn overlay_for_file(&self, file: &Config) -> EndpointOverlay {
        let mut overlay = self.overlay.clone();
        for (service, svc) in &file.services {
            for (fleet, f) in &svc.fleets {
                if f.source == EndpointSource::Registered {
                    let registered = self.state.registered.get(service, fleet);
                    overlay.set(
                        service,
                        fleet,
                        registered.iter().map(Registered::endpoint).collect(),
                    );
                }
            }
        }
        overlay
    }

    /// Applies a deferred reload once nothing blocks it any more.
    async fn apply_pending_reload(&mut self) {
        let Some(file) = self.pending_reload.as_ref() else {
            return;
        };
        if self
            .reload_blocker(&file.with_endpoints(&self.overlay_for_file(file)))
            .is_some()
        {
            return;
        }
        let Some(config) = self.pending_reload.take() else {
            return;
        };
        match Box::pin(self.reload(config)).await {
            Ok(outcome) => tracing::info!(%outcome, "deferred config reload"),
            Err(e) => tracing::error!(error = %e, "deferred config reload refused"),
        }
    }

    /// The refusal for a service the config does not have, naming those it has.
    pub(super) fn unknown_service(&self, service: &str) -> RolloutError {
        RolloutError::UnknownService {
            service: service.to_owned(),
            known: self.config.services.keys().cloned().collect(),
        }
    }

    fn service_view<'a>(&'a self, service: &'a str) -> Result<ServiceView<'a>, RolloutError> {
        let svc = self
            .config
            .services
            .get(service)
            .ok_or_else(|| self.unknown_service(service))?;
        let st = self
            .state
            .services
            .get(service)
            .ok_or_else(|| self.unknown_service(service))?;
        Ok(ServiceView {
            name: service,
            fleets: svc.fleets.keys().map(String::as_str).collect(),
            empty: svc
                .fleets
                .iter()
                .filter(|(_, f)| f.endpoints.is_empty())
                .map(|(n, _)| n.as_str())
                .collect(),
            split: &st.weights,
            rollback_to: st.rollback_to.as_ref(),
            retired: &st.retired,
            has_checks: !svc.checks.is_empty(),
            analysis: svc.analysis.as_ref().map(Into::into),
        })
    }

    /// Plans an operation, saves it as started, and registers it; the
    /// caller then carries out the returned actions.
    /// While an HTTPRoute drives a service's weights, only that route
    /// changes them: a flip, shift or rollback from anyone else is refused
    /// naming the route (a retirement, which moves no traffic, is not).
    fn route_may_start(
        &self,
        op: &Operation,
        asking: Option<&crate::config::KubernetesRef>,
    ) -> Result<(), RolloutError> {
        let Some(driving) = self
            .config
            .services
            .get(op.service())
            .and_then(|s| s.route())
        else {
            return Ok(());
        };
        if op.verb() == Verb::Retire || asking == Some(driving) {
            return Ok(());
        }
        Err(RolloutError::Precondition(format!(
            "the weights of service {:?} follow HTTPRoute {driving} \
             (services.{}.kubernetes.route): change the route, not the service",
            op.service(),
            op.service()
        )))
    }

    async fn begin(
        &mut self,
        op: Operation,
        actor: String,
    ) -> Result<(watch::Receiver<Progress>, Vec<Action>), RolloutError> {
        let service = op.service().to_owned();
        if let Some(r) = self.running.get(&service) {
            if !(r.rollout.is_pending_retirement() && op.verb() == Verb::Rollback) {
                return Err(RolloutError::Busy {
                    service,
                    verb: r.rollout.verb(),
                    id: r.rollout.id(),
                });
            }
            // A rollback is allowed until the retirement happens: it
            // cancels the retirement first, once it is known not to be
            // refused (a refused operation changes nothing).
            plan::plan(&op, &self.service_view(&service)?)?;
            self.cancel_retirement(&service, &actor).await?;
        }
        let view = self.service_view(&service)?;
        let plan = plan::plan(&op, &view)?;
        let original = view.current();
        let rollback_before = view.rollback_to.cloned();
        let id =
            self.state.next_operation_id.checked_add(1).ok_or_else(|| {
                RolloutError::Store("the operation id counter is exhausted".into())
            })?;
        let (now, wall) = (Instant::now(), SystemTime::now());
        let origin = Origin {
            id,
            actor: actor.clone(),
            started: wall,
        };
        let (rollout, actions) = Rollout::start(origin, &op, plan, original, rollback_before, now);
        let before = self.state.next_operation_id;
        self.state.next_operation_id = id;
        let (tx, rx) = watch::channel(rollout.progress());
        self.running.insert(
            service.clone(),
            Running {
                rollout,
                progress: tx,
                not_waiting_for: Vec::new(),
                not_waited_for: BTreeSet::new(),
                follow: Follow::default(),
                pace: Pace::default(),
            },
        );
        match self.first_durable_point(&service, actions).await {
            Ok(actions) => {
                if let Some(running) = self.running.get(&service) {
                    running.publish();
                }
                tracing::info!(id, %service, verb = %op.verb(), %actor, "operation started");
                Ok((rx, actions))
            }
            Err(e) => {
                // Nothing was saved or served: the operation never was.
                self.running.remove(&service);
                self.state.next_operation_id = before;
                Err(e)
            }
        }
    }

    /// Carries a new operation to its first durable point. Proxy
    /// observations are answered at once (they need no wait), so the
    /// driver knows whether the first thing the operation does is to
    /// commit: then the commit, which writes the operation's record with
    /// its step, is its one write before the outcome, instead of a save
    /// of the start followed at once by the commit's. Otherwise (it waits
    /// for proxies, checks or a delay first) the start is saved now, so
    /// its id is never reused and a crash while it waits is recorded.
    /// Either way a store that cannot save refuses the operation whole,
    /// before anything is served. Returns what is left to carry out.
    async fn first_durable_point(
        &mut self,
        service: &str,
        actions: Vec<Action>,
    ) -> Result<Vec<Action>, RolloutError> {
        let mut queue = VecDeque::from(actions);
        loop {
            let event = match queue.front() {
                Some(Action::ObserveProxies) => Event::Proxies(self.proxy_views(service)),
                Some(Action::MeasureBaseline { fleets, window }) => {
                    Event::Baseline(self.baseline(service, fleets.clone(), *window))
                }
                _ => break,
            };
            queue.pop_front();
            let Some(running) = self.running.get_mut(service) else {
                return Ok(Vec::new());
            };
            queue.extend(running.rollout.on_event(event, Instant::now()));
        }
        if let Some(Action::Commit(change)) = queue.front() {
            let change = change.clone();
            queue.pop_front();
            if let Some(instead) = self.gate(service) {
                // Refused at its commit: what it asks instead (its end) is
                // carried out after the start is saved below, so it still
                // ends with one history entry.
                queue = instead.into();
                return self.save_start(service, queue).await;
            }
            let event = match self.commit_change(service, &change).await {
                Ok(version) => Event::Committed { version },
                Err(CommitError::Store(e)) => return Err(e.into()),
                Err(e) => Event::CommitFailed(e.to_string()),
            };
            if let Some(running) = self.running.get_mut(service) {
                queue.extend(running.rollout.on_event(event, Instant::now()));
            }
            return Ok(queue.into());
        }
        self.save_start(service, queue).await
    }

    /// Saves a new operation as started; returns `queue`, what is left to
    /// carry out.
    async fn save_start(
        &mut self,
        service: &str,
        queue: VecDeque<Action>,
    ) -> Result<Vec<Action>, RolloutError> {
        let mut next = self.state.clone();
        if let (Some(st), Some(running)) =
            (next.services.get_mut(service), self.running.get(service))
        {
            st.operation = Some(running.rollout.record(Instant::now(), SystemTime::now()));
        }
        self.revision = self.store.save(&next, self.revision).await?;
        self.state = next;
        Ok(queue.into())
    }

    /// Asks `service`'s operation whether the commit it asked for still
    /// goes, telling it which of the service's fleets have no endpoints in
    /// the config served now; `Some` holds what it asks instead.
    fn gate(&mut self, service: &str) -> Option<Vec<Action>> {
        let empty: BTreeSet<String> = self
            .config
            .services
            .get(service)
            .map(|svc| {
                svc.fleets
                    .iter()
                    .filter(|(_, f)| f.endpoints.is_empty())
                    .map(|(name, _)| name.clone())
                    .collect()
            })
            .unwrap_or_default();
        let running = self.running.get_mut(service)?;
        match running.rollout.commit_gate(&empty) {
            Gate::Go => None,
            Gate::Withdrawn(instead) => {
                tracing::warn!(%service, id = running.rollout.id(),
                    "a commit was withdrawn: a fleet it sends traffic to has no endpoints");
                Some(instead)
            }
        }
    }

    async fn cancel_retirement(&mut self, service: &str, by: &str) -> Result<(), RolloutError> {
        let Some(running) = self.running.get_mut(service) else {
            return Ok(());
        };
        let actions = running.rollout.cancel_retirement(by, Instant::now())?;
        running.publish();
        self.carry_out(service, actions).await;
        Ok(())
    }

    /// Hands each operation that looks at the proxies what `changes`
    /// changed of them.
    async fn feed_proxies(&mut self, changes: Changes) {
        let services: Vec<String> = self.running.keys().cloned().collect();
        for s in services {
            if let Some(event) = self.follow(&s, &changes) {
                self.feed(&s, event).await;
            }
        }
    }

    /// What `changes` means to `service`'s operation: its proxies that
    /// changed, or all of them when their views were not kept or were
    /// measured against something else.
    fn follow(&mut self, service: &str, changes: &Changes) -> Option<Event> {
        let basis = self.basis(service);
        let snapshot = self.writer.current();
        let running = self.running.get_mut(service)?;
        if !running.rollout.wants_proxies() {
            running.follow.stop();
            return None;
        }
        match running.follow.changes(changes, &basis, &snapshot) {
            Ok(event) => {
                running.note_skipped();
                event
            }
            Err(()) => Some(Event::Proxies(self.proxy_views(service))),
        }
    }

    /// Hands each operation that judges the proxies' traffic what their
    /// load reports say now.
    async fn feed_traffic(&mut self) {
        let wanted: Vec<(String, Vec<String>)> = self
            .running
            .iter()
            .map(|(s, r)| (s.clone(), r.rollout.wants_traffic()))
            .filter(|(_, fleets)| !fleets.is_empty())
            .collect();
        for (service, fleets) in wanted {
            let traffic = self.traffic(&service, &fleets);
            self.feed(&service, Event::Traffic(traffic)).await;
        }
    }

    /// What the load reports say of `service`'s `fleets`: per fleet, every
    /// connected proxy of the groups routing the service that operations
    /// wait for (cordoned ones are left out, as they are from the
    /// confirmation), with its counts, or none when it reports nothing.
    pub(super) fn traffic(&self, service: &str, fleets: &[String]) -> Vec<FleetTraffic> {
        self.traffic_of(&self.proxy_loads(), service, fleets)
    }

    /// Every proxy operations wait for and every load report, read once,
    /// for [`Driver::traffic_of`]: a status asks for the traffic of each
    /// service's fleets, and reading the registry for each of them made a
    /// status of many services walk every proxy many times over.
    pub(super) fn proxy_loads(&self) -> ProxyLoads {
        let cordoned = self.registry.cordons().ids();
        // Per group, by node: whether a stream of it is connected. A
        // proxy whose stream ended and that has not come back yet (see
        // `ProxyStatus::disconnected`) still counts, as reporting nothing:
        // its requests in flight go on while it reconnects, so it is not
        // drained until a new load stream says so.
        let mut nodes: HashMap<String, BTreeMap<Arc<str>, bool>> = HashMap::new();
        for p in self.registry.statuses().iter() {
            let Some(n) = p.node.as_ref() else { continue };
            if cordoned.contains(&n.id) {
                continue;
            }
            *nodes
                .entry(n.cluster.clone())
                .or_default()
                .entry(Arc::from(n.id.as_str()))
                .or_default() |= !p.disconnected;
        }
        let mut loads: HashMap<Arc<str>, Vec<ProxyLoad>> = HashMap::new();
        for p in self.registry.loads().proxies(|_| true) {
            loads.entry(p.node.clone()).or_default().push(p);
        }
        ProxyLoads { nodes, loads }
    }

    /// [`Driver::traffic`] over proxies and reports read already.
    pub(super) fn traffic_of(
        &self,
        all: &ProxyLoads,
        service: &str,
        fleets: &[String],
    ) -> Vec<FleetTraffic> {
        let groups = self.basis(service).groups;
        let mut nodes: BTreeMap<Arc<str>, bool> = BTreeMap::new();
        for group in &groups {
            for (id, connected) in all.nodes.get(group).into_iter().flatten() {
                *nodes.entry(id.clone()).or_default() |= *connected;
            }
        }
        let served = self.config.services.get(service).map(|svc| &svc.fleets);
        fleets
            .iter()
            .map(|fleet| {
                // A fleet the config no longer has is served to no proxy:
                // its cluster left them all, and none is asked to report
                // it (a retirement planned before a reload dropped the
                // fleet has nothing left to drain).
                if !served.is_some_and(|f| f.contains_key(fleet)) {
                    return FleetTraffic {
                        fleet: fleet.clone(),
                        proxies: Vec::new(),
                    };
                }
                let cluster = config::cluster_name(service, fleet);
                FleetTraffic {
                    fleet: fleet.clone(),
                    proxies: nodes
                        .iter()
                        .map(|(id, connected)| ProxyTraffic {
                            id: id.clone(),
                            load: all
                                .load(id, &groups)
                                .filter(|_| *connected)
                                .and_then(|l| l.clusters.get(&cluster))
                                .copied(),
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// What `service`'s `fleets` did over the last `window` (at most the
    /// [`WINDOW_BUCKETS`](crate::xds::load::WINDOW_BUCKETS) seconds kept),
    /// as this replica's proxies reported it.
    fn baseline(&self, service: &str, fleets: Vec<String>, window: Duration) -> Baseline {
        let measured = self
            .registry
            .loads()
            .measured(service, window, Instant::now());
        let (requests, errors) = measured
            .iter()
            .filter(|m| fleets.contains(&m.fleet))
            .fold((0u64, 0u64), |(r, e), m| {
                (r.saturating_add(m.requests), e.saturating_add(m.errors))
            });
        Baseline {
            fleets,
            requests,
            errors,
        }
    }

    /// Feeds one event to a service's operation and carries out what it
    /// asks.
    async fn feed(&mut self, service: &str, event: Event) {
        let Some(running) = self.running.get_mut(service) else {
            return;
        };
        let now = Instant::now();
        let actions = running.rollout.on_event(event, now);
        running.publish_soon(now);
        self.carry_out(service, actions).await;
    }

    /// Carries out a machine's actions in order, feeding back what each
    /// produced, until it asks for nothing more; then applies a reload
    /// that was waiting for it.
    async fn carry_out(&mut self, service: &str, actions: Vec<Action>) {
        let mut queue = VecDeque::from(actions);
        while let Some(action) = queue.pop_front() {
            let event = match action {
                Action::ObserveProxies => Event::Proxies(self.proxy_views(service)),
                Action::RunChecks(fleets) => {
                    self.spawn_checks(service, fleets);
                    continue;
                }
                Action::Commit(change) => {
                    if let Some(instead) = self.gate(service) {
                        queue.extend(instead);
                        if let Some(running) = self.running.get(service) {
                            running.publish();
                        }
                        continue;
                    }
                    match self.commit_change(service, &change).await {
                        Ok(version) => Event::Committed { version },
                        Err(CommitError::Store(StateError::NotLeading { .. })) => {
                            // Nothing was committed, and the operation is
                            // the new leader's to carry on from its saved
                            // record.
                            self.hand_over("a commit was fenced off");
                            return;
                        }
                        Err(e) => Event::CommitFailed(e.to_string()),
                    }
                }
                Action::ObserveTraffic => {
                    let fleets = self
                        .running
                        .get(service)
                        .map(|r| r.rollout.wants_traffic())
                        .unwrap_or_default();
                    Event::Traffic(self.traffic(service, &fleets))
                }
                Action::MeasureBaseline { fleets, window } => {
                    Event::Baseline(self.baseline(service, fleets, window))
                }
                Action::Finish(_) => {
                    self.finish(service).await;
                    continue;
                }
            };
            let Some(running) = self.running.get_mut(service) else {
                break;
            };
            queue.extend(running.rollout.on_event(event, Instant::now()));
            running.publish();
        }
        self.apply_pending_reload().await;
    }

    fn spawn_checks(&self, service: &str, fleets: Vec<String>) {
        let Some(svc) = self.config.services.get(service).cloned() else {
            return;
        };
        let Some(id) = self.running.get(service).map(|r| r.rollout.id()) else {
            return;
        };
        let tx = self.checks_tx.clone();
        tokio::spawn(async move {
            let mut all = Vec::new();
            for fleet in fleets {
                all.extend(crate::rollout::checks::run_checks(&svc, &fleet).await);
            }
            let _ = tx.send((id, all)).await;
        });
    }

    /// Commits `change` for `service` with the operation's record, in one
    /// durable write.
    async fn commit_change(
        &mut self,
        service: &str,
        change: &Change,
    ) -> Result<Version, CommitError> {
        let change = &fitted(&self.config, service, change)?;
        let mut next = self.state.clone();
        if let Some(st) = next.services.get_mut(service) {
            st.weights = change.split.clone();
            st.retired = change.retired.clone();
            st.operation = self
                .running
                .get(service)
                .map(|r| r.rollout.record(Instant::now(), SystemTime::now()));
        }
        let version = self.commit_state(next, false).await?;
        self.update_cost_windows(SystemTime::now());
        tracing::info!(%service, %version, split = %plan::show(&change.split), "committed");
        Ok(version)
    }

    /// Drops the running operations, unfinished, because this replica
    /// does not lead (any more): their records stay as the last leader's
    /// save left them, and the next leader resumes them. Their followers
    /// see the progress end without an outcome and ask the leader.
    pub(super) fn hand_over(&mut self, why: &str) {
        if !self.running.is_empty() {
            tracing::warn!(
                operations = self.running.len(),
                why,
                "no longer leading: the next leader resumes the running operations"
            );
            self.running.clear();
        }
    }

    /// Ends a finished operation: its history entry, the service's new
    /// rollback point, no operation in flight; all in one durable write,
    /// before anyone is told the outcome (a write fenced off means another
    /// replica leads and carries the operation on: its outcome, not this
    /// one's, is the one recorded).
    async fn finish(&mut self, service: &str) {
        let Some(running) = self.running.remove(service) else {
            return;
        };
        let r = &running.rollout;
        let Some(outcome) = r.outcome().cloned() else {
            return;
        };
        let (convergence, acks) = r.convergence();
        if let (Some(took), Outcome::Succeeded) = (convergence, &outcome) {
            self.metrics.observe_convergence(took);
        }
        let in_effect = self
            .state
            .services
            .get(service)
            .map(|st| Change {
                split: st.weights.clone(),
                retired: st.retired.clone(),
            })
            .unwrap_or_else(|| r.original().clone());
        let mut next = self.state.clone();
        if let Some(st) = next.services.get_mut(service) {
            // Fitted like every change: the operation was planned against
            // the config of its start.
            st.rollback_to = r.rollback_after(&in_effect).and_then(|split| {
                let change = Change {
                    split,
                    retired: Default::default(),
                };
                fitted(&self.config, service, &change).ok().map(|c| c.split)
            });
            st.operation = None;
        }
        let progress = r.progress();
        let entry = HistoryEntry {
            id: r.id(),
            verb: r.verb(),
            actor: r.actor().to_owned(),
            started: r.started(),
            finished: SystemTime::now(),
            from: r.original().split.clone(),
            to: in_effect.split,
            target: r.target().cloned(),
            version: r.last_version().cloned(),
            outcome: outcome.clone(),
            convergence,
            acks,
            warnings: progress.warnings,
            // Cordoned proxies, and those a rollback went without.
            not_waited_for: running
                .not_waited_for
                .iter()
                .map(String::as_str)
                .chain(r.passed_over())
                .collect::<BTreeSet<&str>>()
                .into_iter()
                .map(str::to_owned)
                .collect(),
        };
        next.record(service, entry);
        match self.store.save(&next, self.revision).await {
            Ok(rev) => self.revision = rev,
            Err(StateError::NotLeading { .. }) => {
                tracing::warn!(id = r.id(), %service, ?outcome,
                    "not recording this outcome: this replica no longer leads; the leader \
                     resumes the operation from its saved record");
                self.hand_over("a history entry was fenced off");
                return;
            }
            Err(e) => tracing::warn!(error = %e, "could not save the history entry"),
        }
        self.state = next;
        running.send();
        tracing::info!(id = r.id(), %service, verb = %r.verb(), ?outcome, "operation finished");
        self.finished.insert(r.id(), running.progress.subscribe());
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
            return Err(self.unknown_service(s));
        }
        let (now, wall) = (Instant::now(), SystemTime::now());
        let proxies = self.proxy_loads();
        let services = self
            .state
            .services
            .iter()
            .filter(|(name, _)| only.is_none_or(|o| o == name.as_str()))
            .map(|(name, st)| {
                let running = self.running.get(name);
                let applied = self.applied(name);
                // With an operation running, what it confirmed; without,
                // what is served, once every proxy holds it.
                let confirmed = match running {
                    Some(r) => Some(r.rollout.confirmed_split().clone()),
                    None => applied.all().then(|| st.weights.clone()),
                };
                ServiceStatus {
                    name: name.clone(),
                    live: plan::live_of(&st.weights).unwrap_or_default().to_owned(),
                    previous: st
                        .rollback_to
                        .as_ref()
                        .and_then(|p| plan::live_of(p))
                        .map(str::to_owned),
                    rollback_to: st.rollback_to.clone(),
                    weights: st.weights.clone(),
                    retired: st.retired.iter().cloned().collect(),
                    retirement: running
                        .and_then(|r| r.rollout.retirement(now, wall))
                        .map(|(fleet, at)| Retirement { fleet, at }),
                    drains: self.drains(&proxies, name, &st.weights),
                    both_fleets_since: st.both_fleets_since,
                    last_change: self.state.history.get(name).and_then(|h| h.last().cloned()),
                    in_progress: running.map(|r| r.rollout.progress()),
                    traffic: self.measured(&proxies, name, now),
                    applied,
                    confirmed,
                    // The route's progress is the route task's; the handle
                    // adds it (`Controller::with_routes`).
                    route: self
                        .config
                        .services
                        .get(name)
                        .and_then(|s| s.route())
                        .map(|r| crate::rollout::RouteView {
                            namespace: r.namespace.clone(),
                            name: r.name.clone(),
                            ..Default::default()
                        }),
                }
            })
            .collect();
        Ok(StatusView {
            version: self.state.version.clone(),
            services,
        })
    }

    /// Whether each of `service`'s fleets with no weight in `weights` is
    /// drained, by the load reports.
    fn drains(
        &self,
        proxies: &ProxyLoads,
        service: &str,
        weights: &crate::rollout::Split,
    ) -> Vec<FleetDrain> {
        let idle: Vec<String> = weights
            .iter()
            .filter(|(_, w)| **w == 0)
            .map(|(f, _)| f.clone())
            .collect();
        if idle.is_empty() {
            return Vec::new();
        }
        self.traffic_of(proxies, service, &idle)
            .iter()
            .map(|t| drain::judge(t, machine::WAITING_SHOWN))
            .collect()
    }

    /// What `service`'s proxies are measured against now: the snapshot
    /// served, the version its operation committed, the groups routing it.
    pub(super) fn basis(&self, service: &str) -> Basis {
        Basis {
            snapshot: self.writer.current().version().to_owned(),
            committed: self
                .running
                .get(service)
                .and_then(|r| r.rollout.version())
                .map(|v| v.seq),
            groups: self
                .config
                .groups
                .iter()
                .filter(|(_, g)| Config::routes_to(g, service))
                .map(|(name, _)| name.clone())
                .collect(),
            cordon_epoch: self.registry.cordon_epoch(),
        }
    }

    /// The proxies of every group that routes `service`, as the rollout
    /// sees them, measured against the version it committed: a whole
    /// pass, which its [`Follow`] then keeps up to date. Cordoned ones are
    /// left out and noted on the running operation.
    fn proxy_views(&mut self, service: &str) -> Vec<ProxyView> {
        // The epoch (in the basis) is read before the cordons: a cordon
        // changing in between moves it again, and the next look is whole.
        let basis = self.basis(service);
        let snapshot = self.writer.current();
        let cordoned = self.registry.cordons().ids();
        let proxies = self.registry.statuses();
        let Some(running) = self.running.get_mut(service) else {
            return Vec::new();
        };
        let views = running
            .follow
            .all(proxies.iter().map(|p| &**p), basis, &snapshot, cordoned);
        running.note_skipped();
        views
    }
}

/// Per group, the fleet clusters of every service it routes to: what its
/// proxies are asked to report load for.
fn load_targets(config: &Config) -> LoadTargets {
    let mut targets = LoadTargets::default();
    for (name, group) in &config.groups {
        let clusters = targets.groups.entry(name.clone()).or_default();
        for (service, svc) in &config.services {
            if !Config::routes_to(group, service) {
                continue;
            }
            for fleet in svc.fleets.keys() {
                clusters.insert(
                    config::cluster_name(service, fleet),
                    Target {
                        service: service.clone(),
                        fleet: fleet.clone(),
                    },
                );
            }
        }
    }
    targets
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// The next state the store reports; never, for a store without a watch
/// (or once its watch is gone).
async fn saved_elsewhere(rx: &mut Option<watch::Receiver<Option<Stored>>>) -> Option<Stored> {
    let Some(r) = rx.as_mut() else {
        return std::future::pending().await;
    };
    if r.changed().await.is_err() {
        *rx = None;
        return std::future::pending().await;
    }
    r.borrow_and_update().clone()
}

/// The next role the election reports; never, without replicas.
async fn role_changed(
    rx: &mut Option<watch::Receiver<crate::ha::Role>>,
) -> Option<crate::ha::Role> {
    let Some(r) = rx.as_mut() else {
        return std::future::pending().await;
    };
    if r.changed().await.is_err() {
        *rx = None;
        return std::future::pending().await;
    }
    Some(r.borrow_and_update().clone())
}

/// `change`, planned against an earlier config, as `config`'s fleets of
/// `service` see it: a fleet the config no longer has may only go at
/// weight 0, a fleet it added gets 0.
fn fitted(config: &Config, service: &str, change: &Change) -> Result<Change, WeightsError> {
    let svc = config
        .services
        .get(service)
        .ok_or_else(|| WeightsError::UnknownService(service.to_owned()))?;
    if let Some((fleet, _)) = change
        .split
        .iter()
        .find(|(f, w)| **w > 0 && !svc.fleets.contains_key(*f))
    {
        return Err(WeightsError::UnknownFleet {
            service: service.to_owned(),
            fleet: fleet.clone(),
        });
    }
    Ok(Change {
        split: fit_split(svc, &change.split),
        retired: change
            .retired
            .iter()
            .filter(|f| svc.fleets.contains_key(*f))
            .cloned()
            .collect(),
    })
}

/// The proxies operations wait for (cordoned ones left out) and every load
/// report, as [`Driver::proxy_loads`] read them.
pub(super) struct ProxyLoads {
    /// Per group, by node: whether a stream of it is connected.
    nodes: HashMap<String, BTreeMap<Arc<str>, bool>>,
    /// By node: its load reports (one, unless it reports in several groups).
    loads: HashMap<Arc<str>, Vec<ProxyLoad>>,
}

impl ProxyLoads {
    /// `node`'s load as reported in one of `groups`.
    fn load(&self, node: &str, groups: &BTreeSet<String>) -> Option<&ProxyLoad> {
        self.loads
            .get(node)?
            .iter()
            .find(|l| groups.contains(&l.group))
    }
}
