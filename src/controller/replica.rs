//! Replicas sharing a store: the driver applies the states other replicas
//! save (seen through [`StateStore::watch`](crate::state::StateStore::watch))
//! and serves them under the very version labels they were saved with, so
//! every replica serves the same bytes under the same version strings and
//! a proxy that fails over from one to another receives nothing new.
//!
//! A state is applied only whole and only if this replica's config
//! renders it to the digest it was saved with: a replica whose config
//! differs keeps serving the last state that matched, and says so.

use crate::config::{self, Config, EndpointOverlay, EndpointSource, FleetSets};
use crate::rollout::registration::EndpointLimits;
use crate::rollout::{RolloutError, Version};
use crate::state::{PersistedState, Revision, Stored};

use super::command::{Command, ReloadError, Reloaded};
use super::driver::Driver;
use super::reconcile::reconcile;

/// Why a state saved by another replica was not applied.
#[derive(Debug, thiserror::Error)]
pub(super) enum AdoptError {
    /// The stored state does not fit this replica's config.
    #[error("the stored state does not fit this replica's config: {0}")]
    Reconcile(#[from] super::reconcile::ReconcileError),
    /// A stored split does not fit this replica's config.
    #[error("a stored split does not fit this replica's config: {0}")]
    Weights(#[from] crate::config::WeightsError),
    /// The snapshot cannot be built.
    #[error("cannot build the stored state's snapshot: {0}")]
    Build(#[from] crate::xds::snapshot::BuildError),
    /// This replica renders the stored state to other resources than the
    /// replica that saved it: their configs differ.
    #[error(
        "this replica's config renders version {stored} as digest {ours}: its config \
         differs from the replica that saved it; serving the last state that matched"
    )]
    ConfigDiffers {
        stored: Version,
        /// The digest this replica computes.
        ours: String,
    },
}

impl Driver {
    /// Applies a state another replica saved, if it is newer than the one
    /// this driver holds: the same snapshot, the same version strings.
    /// Registered endpoints travel in the state, so it is rendered with
    /// the registrations it holds, not this replica's last ones.
    pub(super) fn adopt(&mut self, stored: Stored) -> Result<bool, AdoptError> {
        if stored.revision <= self.revision {
            return Ok(false);
        }
        let overlay = self.overlay_for(&stored.state);
        let config = self.file_config.with_endpoints(&overlay);
        let previous = std::mem::replace(&mut self.config, config);
        match self.adopt_rendered(stored) {
            Ok(()) => {
                self.overlay = overlay;
                self.next_expiry_at = self.state.registered.next_expiry();
                Ok(true)
            }
            Err(e) => {
                self.config = previous;
                Err(e)
            }
        }
    }

    /// This replica's endpoint overlay with every registered fleet's
    /// endpoints as `state` records them (the other sources' as this
    /// replica last had them).
    fn overlay_for(&self, state: &PersistedState) -> EndpointOverlay {
        let registered = state.registered.overlay();
        let mut overlay = self.overlay.clone();
        for (service, svc) in &self.file_config.services {
            for (fleet, f) in &svc.fleets {
                if f.source == EndpointSource::Registered {
                    let endpoints = registered.get(service, fleet).unwrap_or_default();
                    overlay.set(service, fleet, endpoints.to_vec());
                }
            }
        }
        overlay
    }

    /// [`Driver::adopt`] with `self.config` already the config to render
    /// `stored` with.
    fn adopt_rendered(&mut self, stored: Stored) -> Result<(), AdoptError> {
        // Refused whole when it does not fit; nothing changes then.
        let fitted = reconcile(&self.config, &stored.state)?;
        let weights = self.weights_of(&fitted)?;
        let input = config::translate(&self.config, &weights);
        let seq = fitted.version_seq;
        let snapshot = self
            .writer
            .prepare_labelled(&input, &fitted.labels, |digest| {
                Version::new(seq, digest).to_string()
            })?;
        if let Some(v) = &stored.state.version
            && v.digest != snapshot.digest()
        {
            return Err(AdoptError::ConfigDiffers {
                stored: v.clone(),
                ours: snapshot.digest().to_owned(),
            });
        }
        let changed = self.writer.current().version() != snapshot.version();
        self.install(snapshot);
        self.state = stored.state;
        self.revision = stored.revision;
        self.apply_cordons();
        if changed {
            tracing::info!(version = %self.writer.current().version(), revision = %self.revision,
                "applied the state another replica saved");
        }
        Ok(())
    }
}

impl Driver {
    /// Applies a state another replica saved, logging a refusal; a
    /// replica whose config does not render the stored state may not
    /// lead until it does.
    pub(super) fn adopt_logged(&mut self, stored: Stored) {
        match self.adopt(stored) {
            Ok(true) => self.eligible_if_checks_match(),
            // Nothing newer than the state this replica holds (the watch's
            // first report repeats the state loaded at start): what it
            // found then, eligible or not, still holds.
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "not applying the state another replica saved");
                if let (Some(l), AdoptError::ConfigDiffers { .. }) = (&self.leadership, &e) {
                    l.set_eligible(Some(e.to_string()));
                }
            }
        }
    }

    /// After this replica applied the stored state (its resources match):
    /// it may lead if its checks are those the state was committed with
    /// too. Checks are not in the resources, so two configs that differ
    /// only there render the same version; a replica leading with other
    /// checks would run flips with them. It still serves the state, which
    /// is byte for byte the leader's.
    fn eligible_if_checks_match(&self) {
        let Some(l) = &self.leadership else {
            return;
        };
        let why = self.checks_differ();
        if why.is_some() && l.ineligible() != why {
            tracing::error!(why = why.as_deref().unwrap_or_default(), "not leading");
        }
        l.set_eligible(why);
    }

    /// Why this replica's checks are not those the stored state was
    /// committed with; `None` when they are, or when the state predates
    /// the checks' digest (nothing to compare: the next commit adds it).
    pub(super) fn checks_differ(&self) -> Option<String> {
        let stored = self.state.checks_digest.as_ref()?;
        let ours = crate::rollout::checks::digest(&self.config);
        (*stored != ours).then(|| {
            format!(
                "this replica's checks (digest {ours}) differ from those the stored state was \
                 committed with (digest {stored}): its config's checks or traffic analysis \
                 differ from the leader's"
            )
        })
    }

    /// Whether this replica may run operations now: always without
    /// replicas, only as the leader with them.
    pub(super) fn leads(&self) -> bool {
        self.leadership
            .as_ref()
            .is_none_or(crate::ha::Leadership::is_leader)
    }

    /// The refusal a follower answers changes with.
    pub(super) fn not_leader(&self) -> RolloutError {
        match self.leadership.as_ref().map(crate::ha::Leadership::role) {
            Some(crate::ha::Role::Follower { leader }) => RolloutError::NotLeader {
                leader: Some(leader.admin),
            },
            // No one known to lead: etcd is away (or the election has not
            // ended yet); either way the change cannot be stored now.
            _ => RolloutError::StoreUnavailable(
                "store unavailable: this replica cannot reach etcd or no replica leads yet; \
                 it keeps serving its last version"
                    .to_owned(),
            ),
        }
    }

    /// Answers the commands only a leader carries out, on a follower;
    /// hands back the others.
    pub(super) fn leader_only(&mut self, cmd: Command) -> Option<Command> {
        if self.leads() {
            return Some(cmd);
        }
        match cmd {
            Command::Start { reply, .. } => {
                let _ = reply.send(Err(self.not_leader()));
                None
            }
            Command::Abort { reply, .. } => {
                let _ = reply.send(Err(self.not_leader()));
                None
            }
            Command::Cordon { reply, .. } => {
                // Cordons are saved state: only the leader writes it.
                let _ = reply.send(Err(self.not_leader()));
                None
            }
            Command::ChangeRegistered { reply, .. } => {
                // Registrations are saved state: only the leader writes it.
                let _ = reply.send(Err(self.not_leader()));
                None
            }
            Command::SetEndpoints {
                service,
                sets,
                limits,
                reply,
            } => {
                let _ = reply.send(self.follower_set_endpoints(&service, sets, &limits));
                None
            }
            Command::Reload { config, reply } => {
                // A follower saves nothing: it takes the config and serves
                // the stored state with it once the leader saves a state
                // this config renders.
                let _ = reply.send(self.follower_reload(*config));
                None
            }
            cmd => Some(cmd),
        }
    }

    /// Renders the stored state again with this replica's config and
    /// endpoints, under its labels.
    fn rerender(&mut self) -> Result<bool, AdoptError> {
        let revision = self.revision;
        let stored = Stored {
            state: self.state.clone(),
            revision,
        };
        self.revision = Revision(0);
        let result = self.adopt(stored);
        self.revision = revision;
        result
    }

    /// A source every replica watches (Kubernetes) reported `service`'s
    /// endpoints to a follower, which saves nothing: they go into its
    /// overlay, and it renders the stored state with them again. Until the
    /// leader saves the same endpoints, the stored state renders to
    /// another digest here, and this replica keeps serving the last state
    /// that matched. Registered fleets are the leader's to change.
    fn follower_set_endpoints(
        &mut self,
        service: &str,
        sets: FleetSets,
        limits: &EndpointLimits,
    ) -> Result<Version, RolloutError> {
        let registered = sets.iter().any(|(fleet, _)| {
            self.file_config.source_of(service, fleet) == Some(&EndpointSource::Registered)
        });
        if registered {
            return Err(self.not_leader());
        }
        let (overlay, changed) = self.overlay_with(service, sets, limits)?;
        if changed {
            self.overlay = overlay;
            self.config = self.file_config.with_endpoints(&self.overlay);
            match self.rerender() {
                Ok(_) => self.eligible_if_checks_match(),
                Err(e) => tracing::debug!(error = %e, %service,
                    "endpoints noted; served once the leader saves them"),
            }
        }
        Ok(self
            .state
            .version
            .clone()
            .unwrap_or_else(|| Version::new(0, String::new())))
    }

    fn follower_reload(&mut self, config: Config) -> Result<Reloaded, ReloadError> {
        let overlay = self.overlay_for_file(&config);
        let served = config.with_endpoints(&overlay);
        reconcile(&served, &self.state)?;
        // Refused as the leader refuses it: a follower must not take a
        // config that would send traffic to a fleet with no endpoints
        // once it leads.
        super::reconcile::check_reload_endpoints(&self.config, &served, &self.state)?;
        self.overlay = overlay;
        self.config = served;
        self.file_config = config;
        match self.rerender() {
            Ok(_) => self.eligible_if_checks_match(),
            Err(e) => tracing::warn!(error = %e, "config reloaded on a follower; it applies when \
                the leader saves a state it renders"),
        }
        Ok(Reloaded::Applied {
            version: self
                .state
                .version
                .clone()
                .unwrap_or_else(|| Version::new(0, String::new())),
        })
    }

    /// Takes leadership up (catching up with the store, applying this
    /// replica's config, resuming the operations the last leader left in
    /// flight) or down (abandoning running operations to the next leader,
    /// which resumes them from their saved records).
    pub(super) async fn on_role(&mut self, role: crate::ha::Role) {
        if role != crate::ha::Role::Leader {
            self.hand_over("the role changed");
            return;
        }
        match self.store.load().await {
            Ok(Some(stored)) => {
                if let Err(e) = self.adopt(stored) {
                    tracing::warn!(error = %e, "leading with a config that differs from the \
                        stored state's; committing this replica's config");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot read the state on taking the lead"),
        }
        let version = match self.publish_current(true).await {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "cannot publish on taking the lead");
                return;
            }
        };
        if self.running.is_empty() {
            self.resume_operations(&version).await;
        }
    }
}

impl Driver {
    /// At the start of a replica: serves the stored state (already loaded
    /// and fitted) under its labels, saving nothing. When this replica's
    /// config renders it differently, it serves its own rendering of it
    /// under the stored sequence number and may not lead.
    pub(super) fn publish_stored(&mut self) -> Result<Version, super::command::ControllerError> {
        let stored = Stored {
            state: self.state.clone(),
            revision: self.revision,
        };
        let revision = self.revision;
        self.revision = Revision(0);
        let adopted = self.adopt(stored);
        self.revision = revision;
        match adopted {
            Ok(_) => self.eligible_if_checks_match(),
            Err(AdoptError::ConfigDiffers { stored, ours }) => {
                let why = format!(
                    "this replica's config renders the stored version {stored} as digest \
                     {ours}: its config differs from the leader's"
                );
                tracing::error!(%why, "serving this config's rendering; not leading");
                if let Some(l) = &self.leadership {
                    l.set_eligible(Some(why));
                }
                let weights = self.weights_of(&self.state)?;
                let input = config::translate(&self.config, &weights);
                let seq = self.state.version_seq.max(1);
                let snapshot =
                    self.writer
                        .prepare_labelled(&input, &self.state.labels, |digest| {
                            Version::new(seq, digest).to_string()
                        })?;
                self.install(snapshot);
            }
            Err(AdoptError::Reconcile(e)) => return Err(e.into()),
            Err(AdoptError::Weights(e)) => return Err(e.into()),
            Err(AdoptError::Build(e)) => return Err(e.into()),
        }
        let current = self.writer.current();
        Ok(Version::new(self.state.version_seq, current.digest()))
    }
}
