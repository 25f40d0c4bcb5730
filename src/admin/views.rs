//! What the admin API adds to the backend's answers before showing them:
//! the cordons and the replicas under a status, the cordons and load
//! reports beside each proxy. `Status`/`Proxies` (so `teal status`, `teal
//! proxies`) and the dashboard's event stream build their answers here,
//! so they cannot tell different stories.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use super::backend::Backend;
use super::convert;
use super::pb;
use crate::ha::replicas::ReplicaRecord;
use crate::xds::ProxyRegistry;

/// The cordons in force on this replica, as messages.
pub(crate) fn cordons(registry: &ProxyRegistry) -> Vec<pb::CordonInfo> {
    registry
        .cordons()
        .all()
        .into_iter()
        .map(|(node_id, c)| pb::CordonInfo {
            node_id,
            reason: c.reason,
            actor: c.actor,
            since_unix_ms: c.since_unix_ms,
        })
        .collect()
}

/// The replicas sharing the store, as messages.
pub(crate) fn replicas(records: Vec<ReplicaRecord>) -> Vec<pb::Replica> {
    records
        .into_iter()
        .map(|r| pb::Replica {
            id: r.info.id,
            admin: r.info.admin,
            leader: r.leader,
            heartbeat_unix_ms: i64::try_from(r.heartbeat_unix_ms).unwrap_or(i64::MAX),
            config_digest: r.info.config_digest,
            proxies: r.proxies,
            ineligible: r.ineligible.unwrap_or_default(),
        })
        .collect()
}

/// Every connected proxy with its cordon and its last load report, and
/// the versions each group should be on.
pub(crate) fn proxies(backend: &dyn Backend, registry: &ProxyRegistry) -> pb::ProxiesResponse {
    let proxies = backend.proxies();
    let current = backend.current_versions();
    let mut response = convert::proxies(&proxies, &current);
    let cordons = registry.cordons();
    let now = Instant::now();
    let loads: HashMap<Arc<str>, _> = registry
        .loads()
        .proxies(|_| true)
        .into_iter()
        .map(|l| (l.node.clone(), l))
        .collect();
    for p in &mut response.proxies {
        if let Some(c) = cordons.get(&p.node_id) {
            p.cordoned = true;
            p.cordon_reason = c.reason;
        }
        p.load = loads
            .get(p.node_id.as_str())
            .map(|l| convert::load_report(l, now));
    }
    response
}
