//! Cordons as the driver keeps them: in the persisted state, so they are
//! fleet-wide. Only the leader (or the single server) changes them, and
//! saves the change before it is in force; every replica applies the
//! cordons of the state it serves to the registry, so a new leader waits
//! for the same proxies as the last one.

use crate::rollout::RolloutError;
use crate::xds::cordon::{self, CordonError};

use super::command::CordonChange;
use super::driver::Driver;

/// The admin error a refused cordon change is answered with.
fn refusal(e: CordonError) -> RolloutError {
    match e {
        CordonError::EmptyNode | CordonError::TooLong { .. } => {
            RolloutError::Invalid(e.to_string())
        }
        CordonError::TooMany => RolloutError::Limit(e.to_string()),
        CordonError::Io { .. } | CordonError::Corrupt { .. } => RolloutError::Store(e.to_string()),
    }
}

impl Driver {
    /// Carries out `change`: saved in the state first, then in force. True
    /// if it changed whether the node is cordoned (a cordon of a node
    /// already cordoned still saves its new reason).
    pub(super) async fn change_cordon(
        &mut self,
        change: CordonChange,
        actor: &str,
    ) -> Result<bool, RolloutError> {
        let (cordons, changed) = match &change {
            CordonChange::Cordon { node, reason } => cordon::with_cordon(
                &self.state.cordons,
                node,
                reason,
                actor,
                cordon::now_unix_ms(),
            )
            .map_err(refusal)?,
            CordonChange::Uncordon { node } => {
                match cordon::without_cordon(&self.state.cordons, node).map_err(refusal)? {
                    Some(cordons) => (cordons, true),
                    None => return Ok(false),
                }
            }
        };
        let mut next = self.state.clone();
        next.cordons = cordons;
        self.revision = self.store.save(&next, self.revision).await?;
        self.state = next;
        self.apply_cordons();
        Ok(changed)
    }

    /// Puts the cordons of the state this replica serves in force: the
    /// metric, and running operations look at the proxies again when they
    /// changed.
    pub(super) fn apply_cordons(&self) {
        if self.registry.cordons().replace(&self.state.cordons) {
            self.registry.notify();
        }
        self.metrics.set_cordoned(self.state.cordons.len());
    }

    /// Adds the cordons of an old `cordons.json` to `state`, about to be
    /// saved; [`Driver::legacy_cordons_saved`] removes the file once it is.
    pub(super) fn merge_legacy_cordons(&self, state: &mut crate::state::PersistedState) {
        if let Some(legacy) = &self.legacy_cordons {
            cordon::merge_legacy(&mut state.cordons, &legacy.cordons);
        }
    }

    /// After a save that held the old `cordons.json`'s cordons: the file
    /// goes (the state keeps them now, and a file left behind would bring
    /// back, at the next start, a cordon lifted since).
    pub(super) fn legacy_cordons_saved(&mut self) {
        let Some(legacy) = self.legacy_cordons.take() else {
            return;
        };
        tracing::info!(cordons = legacy.cordons.len(), file = %legacy.path.display(),
            "the cordons of the old cordons file are kept in the state now");
        if let Err(e) = std::fs::remove_file(&legacy.path) {
            tracing::warn!(error = %e, file = %legacy.path.display(),
                "cannot remove the old cordons file; remove it by hand");
        }
    }
}
