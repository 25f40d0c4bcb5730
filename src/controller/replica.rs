//! Replicas sharing a store: the driver applies the states other replicas
//! save (seen through [`StateStore::watch`](crate::state::StateStore::watch))
//! and serves them under the very version labels they were saved with, so
//! every replica serves the same bytes under the same version strings and
//! a proxy that fails over from one to another receives nothing new.
//!
//! A state is applied only whole and only if this replica's config
//! renders it to the digest it was saved with: a replica whose config
//! differs keeps serving the last state that matched, and says so.

use tokio::sync::watch;

use crate::config;
use crate::rollout::Version;
use crate::state::Stored;

use super::driver::Driver;
use super::reconcile::reconcile;

/// Why a state saved by another replica was not applied.
#[derive(Debug, thiserror::Error)]
pub(super) enum AdoptError {
    /// The stored state does not fit this replica's config.
    #[error("the stored state does not fit this replica's config: {0}")]
    Reconcile(#[from] super::ReconcileError),
    /// A stored split does not fit this replica's config.
    #[error("a stored split does not fit this replica's config: {0}")]
    Weights(#[from] crate::config::WeightsError),
    /// The snapshot cannot be built.
    #[error("cannot build the stored state's snapshot: {0}")]
    Build(#[from] crate::snapshot::BuildError),
    /// This replica renders the stored state to other resources than the
    /// replica that saved it: their configs differ.
    #[error(
        "this replica's config renders version {stored} as digest {ours}: its config \
         differs from the replica that saved it; serving the last state that matched"
    )]
    ConfigDiffers {
        /// The stored version.
        stored: Version,
        /// The digest this replica computes.
        ours: String,
    },
}

impl Driver {
    /// Applies a state another replica saved, if it is newer than the one
    /// this driver holds: the same snapshot, the same version strings.
    pub(super) fn adopt(&mut self, stored: Stored) -> Result<bool, AdoptError> {
        if stored.revision <= self.revision {
            return Ok(false);
        }
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
        self.writer.install(snapshot);
        self.state = stored.state;
        self.revision = stored.revision;
        if changed {
            tracing::info!(version = %self.writer.current().version(), revision = %self.revision,
                "applied the state another replica saved");
        }
        Ok(true)
    }
}

/// The next state the store reports; never, for a store without a watch
/// (or once its watch is gone).
pub(super) async fn saved_elsewhere(
    rx: &mut Option<watch::Receiver<Option<Stored>>>,
) -> Option<Stored> {
    let Some(r) = rx.as_mut() else {
        return std::future::pending().await;
    };
    if r.changed().await.is_err() {
        *rx = None;
        return std::future::pending().await;
    }
    r.borrow_and_update().clone()
}
