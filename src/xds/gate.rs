//! Who may hold a stream on the xDS port: a node whose group's identity
//! policy admits its connection, on a replica that serves proxies now.
//! Shared by the discovery streams (`server`) and the load report
//! streams (`lrs`), so both refuse and close for the same reasons with
//! the same words.

use std::sync::Arc;

use tokio::sync::watch;
use tonic::Status;

use crate::text::untrusted;
use crate::transport::identity::{IdentityGate, IdentityPolicy, PeerIdentity};

use super::protocol::NodeInfo;

/// Whether the identity of a stream's connection may join the group its
/// node claims, under the policy in force now.
pub(crate) fn admits(gate: &IdentityGate, node: &NodeInfo, identity: &PeerIdentity) -> bool {
    gate.policy().admits(&node.cluster, identity)
}

/// The status of a stream whose identity may not join its group.
pub(crate) fn refused(node: &NodeInfo, identity: &PeerIdentity) -> Status {
    Status::permission_denied(format!(
        "identity {} may not join group {} (groups.{}.identities)",
        untrusted(&identity.to_string()),
        untrusted(&node.cluster),
        untrusted(&node.cluster),
    ))
}

/// Returns when a new identity policy is put in force; never once the
/// gate is gone (the policy in force then stays).
pub(crate) async fn next_policy(policies: &mut watch::Receiver<Arc<IdentityPolicy>>) {
    if policies.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Returns when `serving` turns false; never without it.
pub(crate) async fn lost_serving(serving: &mut Option<watch::Receiver<bool>>) {
    match serving {
        Some(s) => {
            if s.wait_for(|ok| !*ok).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// Whether `serving` says this replica may not serve proxies now.
pub(crate) fn not_serving_now(serving: &mut Option<watch::Receiver<bool>>) -> bool {
    serving.as_mut().is_some_and(|s| !*s.borrow_and_update())
}

/// The status a stream is refused or closed with while this replica may
/// not serve proxies.
pub(crate) fn not_serving() -> Status {
    Status::unavailable(
        "this teal replica cannot reach etcd: it serves no proxies until it can; \
         reconnect to another replica",
    )
}
