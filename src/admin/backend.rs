//! What the admin API needs from the running server.
//!
//! Defined beside the API rather than with the rollout, so the layers
//! below it (rollout, state, replicas) know nothing of the admin API: the
//! controller, a layer above, implements it, and `serve` hands the
//! controller to [`routes`](super::routes) as an `Arc<dyn Backend>`.

use std::collections::BTreeMap;

use crate::ha::replicas::ReplicaRecord;
use crate::rollout::registration;
use crate::rollout::{CheckResult, HistoryEntry, Operation, Progress, RolloutError, StatusView};
use crate::xds::ProxyStatus;
use crate::xds::resources::PerType;

/// What the admin API needs from the running server. The controller
/// implements it; admin API tests can stand in their own.
#[tonic::async_trait]
pub trait Backend: Send + Sync + 'static {
    /// The status of every service, or of one.
    async fn status(&self, service: Option<&str>) -> Result<StatusView, RolloutError>;
    /// Every connected proxy.
    fn proxies(&self) -> Vec<ProxyStatus>;
    /// The version the proxies should be on, per proxy group and type, to
    /// tell SYNCED from STALE: the `version_info` each type is served
    /// under. Text, not a [`Version`](crate::rollout::Version): the xDS
    /// engine serves a type under whatever label it was published with (a
    /// type unchanged since an earlier commit keeps that commit's label,
    /// recorded in the state), and what it is compared with is what proxies
    /// ACKed, which is text.
    fn current_versions(&self) -> BTreeMap<String, PerType<String>>;
    /// Starts an operation; its progress arrives on the returned receiver,
    /// the last value having `outcome` set. The operation belongs to the
    /// server: dropping the receiver does not stop it.
    async fn start(
        &self,
        op: Operation,
        actor: &str,
    ) -> Result<tokio::sync::watch::Receiver<Progress>, RolloutError>;
    /// Follows an operation already running.
    async fn follow(&self, id: u64)
    -> Result<tokio::sync::watch::Receiver<Progress>, RolloutError>;
    /// Stops an operation: ends it before its step is committed, undoes the
    /// step being confirmed; a rollback or an undo cannot be stopped.
    async fn abort(&self, id: u64, actor: &str) -> Result<(), RolloutError>;
    /// Runs a service's checks against one fleet now.
    async fn verify(&self, service: &str, fleet: &str) -> Result<Vec<CheckResult>, RolloutError>;
    /// Whether this replica runs the operations: always without replicas;
    /// with them, only the leader, and a follower says who leads. Its
    /// status sees no operation running and counts only its own proxies,
    /// so it cannot say whether a change is confirmed.
    fn leading(&self) -> Result<(), RolloutError> {
        Ok(())
    }
    /// This replica's id; none without replicas.
    fn replica_id(&self) -> Option<String> {
        None
    }
    /// The replicas sharing this one's store (none without replicas).
    async fn replicas(&self) -> Vec<ReplicaRecord> {
        Vec::new()
    }
    /// Past changes of a service, newest first.
    async fn history(&self, service: &str) -> Result<Vec<HistoryEntry>, RolloutError>;
    /// Changes the endpoints of a registered fleet (`teal fleet
    /// set|add|remove`, `teal register|deregister`, heartbeats); `force`
    /// lets it take the last endpoint of a fleet that takes traffic. A
    /// backend without registered fleets refuses.
    async fn change_fleet(
        &self,
        service: &str,
        fleet: &str,
        request: registration::Request,
        force: bool,
        actor: &str,
    ) -> Result<registration::FleetView, RolloutError> {
        let _ = (service, fleet, request, force, actor);
        Err(RolloutError::Invalid(
            "this server has no registered fleets".into(),
        ))
    }
    /// Cordons `node`: operations stop waiting for it, whichever replica
    /// runs them; saved before it is in force. True if it was not
    /// cordoned. A backend that keeps no cordons refuses.
    async fn cordon(&self, node: &str, reason: &str, actor: &str) -> Result<bool, RolloutError> {
        let _ = (node, reason, actor);
        Err(RolloutError::Invalid("this server keeps no cordons".into()))
    }
    /// Lifts the cordon of `node`; true if it was cordoned.
    async fn uncordon(&self, node: &str, actor: &str) -> Result<bool, RolloutError> {
        let _ = (node, actor);
        Err(RolloutError::Invalid("this server keeps no cordons".into()))
    }
    /// A fleet's endpoints, where they come from, and recent changes.
    async fn fleet(
        &self,
        service: &str,
        fleet: &str,
    ) -> Result<registration::FleetView, RolloutError> {
        let _ = fleet;
        Err(RolloutError::UnknownService {
            service: service.to_owned(),
            known: Vec::new(),
        })
    }
}
