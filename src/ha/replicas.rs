//! Each replica's record in etcd, `PREFIX/replicas/ID`, written under its
//! lease: who it is, whether it leads, when it last wrote, its config
//! digest, how many proxies it serves. One key per replica, written at most
//! once per [`HEARTBEAT`] whatever the number of proxies and flips, so the
//! cost to etcd does not grow with the fleet; the key disappears with the
//! lease when the replica dies. `teal status` lists them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::state::StateError;
use crate::state::etcd::{EtcdClient, pb};
use crate::xds::ProxyRegistry;

use super::role::{ReplicaInfo, Role};

/// How often a replica rewrites its record.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(1);

/// The largest replica record accepted from etcd.
const MAX_RECORD_BYTES: usize = 16 << 10;

/// The most replica records `teal status` reads.
const MAX_REPLICAS: i64 = 256;

/// One replica, as it describes itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    /// Who it is and where its admin API is.
    #[serde(flatten)]
    pub info: ReplicaInfo,
    /// Whether it leads.
    pub leader: bool,
    /// When it wrote this, unix milliseconds.
    pub(crate) heartbeat_unix_ms: u64,
    /// Proxies connected to it.
    pub(crate) proxies: u64,
    /// Why it may not lead, if it may not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) ineligible: Option<String>,
}

/// Writes this replica's record under `lease` every [`HEARTBEAT`] until
/// the task is aborted (when the lease's term ends).
pub(super) async fn publish(
    client: EtcdClient,
    lease: i64,
    me: ReplicaInfo,
    role: watch::Receiver<Role>,
    eligible: watch::Receiver<Option<String>>,
    registry: Option<Arc<ProxyRegistry>>,
) {
    let key = client.key(&format!("replicas/{}", me.id));
    loop {
        let record = ReplicaRecord {
            info: me.clone(),
            leader: *role.borrow() == Role::Leader,
            heartbeat_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or_default(),
            // Its own proxies only, not those a leader mirrors.
            proxies: registry.as_ref().map_or(0, |r| {
                r.statuses()
                    .iter()
                    .filter(|p| p.replica.is_none() && !p.disconnected)
                    .count() as u64
            }),
            ineligible: eligible.borrow().clone(),
        };
        if let Ok(value) = serde_json::to_vec(&record) {
            let kv = client.kv();
            let put = pb::PutRequest {
                key: key.clone(),
                value,
                lease,
            };
            if let Err(e) = client
                .call(put, |r| {
                    let mut kv = kv.clone();
                    async move { kv.put(r).await }
                })
                .await
            {
                tracing::debug!(error = %e, "cannot write this replica's record");
            }
        }
        tokio::time::sleep(HEARTBEAT).await;
    }
}

/// Every replica's record, by id; records that do not decode are skipped.
pub(crate) async fn list(client: &EtcdClient) -> Result<Vec<ReplicaRecord>, StateError> {
    let prefix = client.key("replicas/");
    let mut end = prefix.clone();
    // The range of every key starting with the prefix: its last byte plus
    // one (the prefix ends in `/`, never 0xff).
    if let Some(last) = end.last_mut() {
        *last = last.saturating_add(1);
    }
    let kv = client.kv();
    let answer = client
        .call(
            pb::RangeRequest {
                key: prefix,
                range_end: end,
                limit: MAX_REPLICAS,
                ..Default::default()
            },
            |r| {
                let mut kv = kv.clone();
                async move { kv.range(r).await }
            },
        )
        .await?;
    Ok(answer
        .kvs
        .iter()
        .filter(|kv| kv.value.len() <= MAX_RECORD_BYTES)
        .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
        .collect())
}
