//! High availability: which of the replicas sharing an etcd prefix leads.
//!
//! Each replica holds an etcd lease (TTL `--leader-lease`, 5 s by
//! default) kept alive three times per TTL. The leader is the replica
//! whose record is in `PREFIX/leader`, a key written under its lease only
//! if no one holds it (a transaction on the key's create revision), so it
//! disappears when the leader's lease expires: `kill -9`, a partition, or
//! etcd losing it. Every replica watches the key and campaigns again as
//! soon as it is gone; within TTL + about a second another one leads.
//!
//! Only the leader runs operations (the driver asks [`Leadership::role`]);
//! a follower refuses changes with the leader's admin address, which the
//! CLI follows once. A replica that is not [eligible](Leadership::set_eligible)
//! (its config renders the stored state differently) does not campaign.
//!
//! # What makes "every proxy confirmed" true across replicas
//!
//! - **Leading starts with every replica's proxies.** A replica that wins
//!   the key says it leads ([`Leadership::role`]) only once it has read
//!   every replica's published proxies ([`proxies`]), so no operation
//!   starts or resumes on a partial view of the fleet.
//! - **Only the leader writes, and its writes are fenced.** Every save of
//!   the shared state compares the leader key's lease with the one this
//!   replica leads under ([`Fence`]): a replica whose lease ran out (cut
//!   off, paused) or that resigned cannot land a write, whatever it read
//!   before.
//! - **A replica that cannot keep its lease stops serving proxies.** When
//!   no keep-alive has been answered for half the lease
//!   ([`Leadership::serving`]), it closes its xDS streams and refuses new
//!   ones until it holds a lease again, so its proxies reconnect to a
//!   replica the leader can see, well before etcd drops its lease. The
//!   proxies it published stay in etcd after its lease ends; the leader
//!   keeps waiting for them (never counting them as absent) until they
//!   show up on another replica, or `--departed-proxy-hold` passes.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

mod loads;
pub(crate) mod proxies;
pub(crate) mod replicas;
mod role;

pub(crate) use role::{ReplicaInfo, Role};

use crate::shutdown::Shutdown;
use crate::state::StateError;
use crate::state::etcd::{EtcdClient, Fence, pb};

/// The default lease TTL.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(5);

/// The default of `--departed-proxy-hold`: how long the leader keeps
/// waiting for the proxies of a replica whose lease ended, when they do
/// not show up on another replica.
pub(crate) const DEFAULT_DEPARTED_HOLD: Duration = Duration::from_secs(5 * 60);

/// How a replica takes part in the election.
#[derive(Clone, Debug)]
pub(crate) struct ReplicaOptions {
    /// The etcd lease's TTL (`--leader-lease`).
    pub(crate) lease: Duration,
    /// How long the leader keeps waiting for the proxies of a replica
    /// whose lease ended (`--departed-proxy-hold`).
    pub(crate) departed_hold: Duration,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            lease: DEFAULT_LEASE,
            departed_hold: DEFAULT_DEPARTED_HOLD,
        }
    }
}

/// How long after the last answered keep-alive a replica stops serving
/// proxies: half the lease, so its streams are closed well before etcd
/// lets the lease go (etcd counts the TTL from when it received the
/// keep-alive, which is after this replica sent it; teal counts from the
/// sending).
pub(crate) fn serving_bound(lease: Duration) -> Duration {
    lease / 2
}

/// The largest leader record accepted from etcd: an id, an address and a
/// digest, far under this.
const MAX_RECORD_BYTES: usize = 4096;

/// A handle on the election task.
#[derive(Clone, Debug)]
pub(crate) struct Leadership {
    /// The role as operations see it: `Leader` only once the other
    /// replicas' proxies were read (see [`proxies::mirror`]).
    role: watch::Receiver<Role>,
    eligible: Arc<watch::Sender<Option<String>>>,
    serving: watch::Receiver<bool>,
    client: EtcdClient,
    /// This replica's id, as its record names it.
    id: String,
}

impl Leadership {
    /// Starts campaigning (in a task) as `me`. `registry`'s proxies are
    /// published for the leader and counted in this replica's record;
    /// `fence` is set to the lease this replica leads under, for the
    /// store's writes.
    pub(crate) fn start(
        client: EtcdClient,
        me: ReplicaInfo,
        options: &ReplicaOptions,
        registry: Option<Arc<crate::xds::ProxyRegistry>>,
        fence: Fence,
        shutdown: Shutdown,
    ) -> Leadership {
        let (role_tx, won) = watch::channel(Role::Unknown);
        let (ready_tx, role) = watch::channel(Role::Unknown);
        let (eligible, eligible_rx) = watch::channel(None);
        let (serving_tx, serving) = watch::channel(false);
        // Nothing answered yet: not serving until the first lease.
        let (answered, answered_rx) = watch::channel(None);
        tokio::spawn(serve_while_answered(
            answered_rx,
            serving_tx,
            serving_bound(options.lease),
        ));
        let task = Campaign {
            key: client.key("leader"),
            client: client.clone(),
            registry: registry.clone(),
            me: me.clone(),
            ttl_secs: i64::try_from(options.lease.as_secs().max(1)).unwrap_or(60),
            role: role_tx,
            eligible: eligible_rx,
            fence: fence.clone(),
            lease: None,
            answered: Arc::new(answered),
        };
        if let Some(registry) = &registry {
            tokio::spawn(loads::mirror(
                client.clone(),
                me.id.clone(),
                registry.clone(),
                ready_tx.subscribe(),
                shutdown.clone(),
            ));
        }
        tokio::spawn(proxies::mirror(
            proxies::MirrorParts {
                client: client.clone(),
                me: me.id.clone(),
                registry,
                fence,
                hold: options.departed_hold,
            },
            won,
            ready_tx,
            shutdown.clone(),
        ));
        tokio::spawn(task.run(shutdown));
        Leadership {
            role,
            eligible: Arc::new(eligible),
            serving,
            client,
            id: me.id,
        }
    }

    /// Whether this replica may serve proxies now: it holds a lease whose
    /// keep-alive was answered within [`serving_bound`]. The xDS server
    /// closes its streams when this turns false.
    pub(crate) fn serving(&self) -> watch::Receiver<bool> {
        self.serving.clone()
    }

    /// This replica's id.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The role now.
    pub(crate) fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// Whether this replica leads now.
    pub(crate) fn is_leader(&self) -> bool {
        *self.role.borrow() == Role::Leader
    }

    /// A receiver of role changes.
    pub(crate) fn watch(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// Stops (`Some(why)`) or resumes (`None`) campaigning; a leader that
    /// becomes ineligible resigns.
    pub(crate) fn set_eligible(&self, why_not: Option<String>) {
        self.eligible.send_if_modified(|cur| {
            let changed = *cur != why_not;
            *cur = why_not;
            changed
        });
    }

    /// Every replica's record (this one's included, once written).
    pub(crate) async fn replicas(&self) -> Result<Vec<replicas::ReplicaRecord>, StateError> {
        replicas::list(&self.client).await
    }

    /// Why this replica may not lead, if it may not.
    pub(crate) fn ineligible(&self) -> Option<String> {
        self.eligible.borrow().clone()
    }
}

struct Campaign {
    client: EtcdClient,
    registry: Option<Arc<crate::xds::ProxyRegistry>>,
    key: Vec<u8>,
    me: ReplicaInfo,
    ttl_secs: i64,
    /// The role as the election sees it (leading as soon as the key is
    /// won); operations see it through the mirror, which adds the read
    /// of every replica's proxies.
    role: watch::Sender<Role>,
    eligible: watch::Receiver<Option<String>>,
    /// Set to `lease` while this replica leads.
    fence: Fence,
    /// The lease of the term under way.
    lease: Option<i64>,
    /// When the last lease grant or keep-alive that etcd answered was
    /// sent, across terms: a term that ends on a broken watch leaves its
    /// lease alive until it runs out, so proxies keep being served while
    /// the next term starts (see [`serving_bound`]).
    answered: Arc<watch::Sender<Option<tokio::time::Instant>>>,
}

/// Why one term (one lease) ended.
enum TermEnd {
    Shutdown,
    Lost(StateError),
}

impl Campaign {
    async fn run(mut self, mut shutdown: Shutdown) {
        let mut pause = Duration::from_millis(200);
        loop {
            let asked = tokio::time::Instant::now();
            let lease = tokio::select! {
                () = shutdown.wait() => break,
                lease = self.grant() => lease,
            };
            match lease {
                Ok(id) => {
                    pause = Duration::from_millis(200);
                    self.answered.send_replace(Some(asked));
                    self.lease = Some(id);
                    let end = self.term(id, &mut shutdown).await;
                    self.lease = None;
                    match end {
                        TermEnd::Shutdown => {
                            if self.registry.is_some() {
                                proxies::withdraw(&self.client, &self.me.id, id).await;
                            }
                            self.resign(id).await;
                            break;
                        }
                        TermEnd::Lost(e) => {
                            tracing::warn!(error = %e, "lost the etcd lease; campaigning again");
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot get an etcd lease"),
            }
            self.set_role(Role::Unknown);
            tokio::select! {
                () = shutdown.wait() => break,
                () = tokio::time::sleep(pause) => {}
            }
            pause = (pause * 2).min(Duration::from_secs(2));
        }
        self.set_role(Role::Unknown);
    }

    fn set_role(&self, role: Role) {
        // The fence first: a replica that stops leading stops writing
        // before anything else hears of it.
        self.fence.set(match role {
            Role::Leader => self.lease,
            _ => None,
        });
        self.role.send_if_modified(|cur| {
            if *cur == role {
                return false;
            }
            match &role {
                Role::Leader => tracing::info!(id = %self.me.id, "this replica leads"),
                Role::Follower { leader } => {
                    tracing::info!(leader = %leader.id, admin = %leader.admin, "following")
                }
                Role::Unknown => {}
            }
            *cur = role;
            true
        });
    }

    async fn grant(&self) -> Result<i64, StateError> {
        let lease = self.client.lease();
        let answer = self
            .client
            .call(
                pb::LeaseGrantRequest {
                    ttl: self.ttl_secs,
                    id: 0,
                },
                |r| {
                    let mut lease = lease.clone();
                    async move { lease.lease_grant(r).await }
                },
            )
            .await?;
        if !answer.error.is_empty() || answer.id == 0 {
            return Err(self.client.unavailable(&format!(
                "lease refused: {}",
                crate::text::untrusted(&answer.error)
            )));
        }
        Ok(answer.id)
    }

    /// Revokes the lease so another replica leads at once (on shutdown).
    async fn resign(&self, id: i64) {
        let lease = self.client.lease();
        let _ = self
            .client
            .call(pb::LeaseRevokeRequest { id }, |r| {
                let mut lease = lease.clone();
                async move { lease.lease_revoke(r).await }
            })
            .await;
    }

    /// One lease's life: keeps it alive, campaigns whenever the leader key
    /// is free, and follows whoever holds it.
    async fn term(&mut self, lease: i64, shutdown: &mut Shutdown) -> TermEnd {
        let (lost_tx, mut lost) = tokio::sync::oneshot::channel();
        let keepalive = tokio::spawn(keep_alive(
            self.client.clone(),
            lease,
            self.ttl_secs,
            lost_tx,
            self.answered.clone(),
        ));
        let record = tokio::spawn(replicas::publish(
            self.client.clone(),
            lease,
            self.me.clone(),
            self.role.subscribe(),
            self.eligible.clone(),
            self.registry.clone(),
        ));
        let published = self.registry.clone().map(|registry| {
            [
                tokio::spawn(loads::publish(
                    self.client.clone(),
                    lease,
                    self.me.id.clone(),
                    registry.clone(),
                )),
                tokio::spawn(proxies::publish(
                    self.client.clone(),
                    lease,
                    self.me.id.clone(),
                    registry,
                )),
            ]
        });
        let end = loop {
            if let Err(e) = self.campaign(lease).await {
                break TermEnd::Lost(e);
            }
            // Until the leader key changes, eligibility changes, or the
            // lease is lost.
            let mut eligible = self.eligible.clone();
            let waited = tokio::select! {
                () = shutdown.wait() => break TermEnd::Shutdown,
                e = &mut lost => break TermEnd::Lost(e.unwrap_or_else(|_| self.client.unavailable("keep-alive stopped"))),
                changed = eligible.changed() => {
                    if changed.is_err() {
                        break TermEnd::Shutdown;
                    }
                    self.eligible.mark_unchanged();
                    if self.role.borrow().clone() == Role::Leader && self.eligible.borrow().is_some() {
                        // Resign: delete the key only if it is still ours.
                        if let Err(e) = self.release(lease).await {
                            break TermEnd::Lost(e);
                        }
                    }
                    Ok(())
                }
                w = self.wait_for_change(lease) => w,
            };
            if let Err(e) = waited {
                break TermEnd::Lost(e);
            }
        };
        keepalive.abort();
        record.abort();
        for task in published.iter().flatten() {
            task.abort();
        }
        end
    }

    /// Takes the leader key if it is free and this replica is eligible;
    /// then sets the role from whoever holds it.
    async fn campaign(&mut self, lease: i64) -> Result<(), StateError> {
        let eligible = self.eligible.borrow().is_none();
        let record = serde_json::to_vec(&self.me)
            .map_err(|e| self.client.unavailable(&format!("encode: {e}")))?;
        let txn = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: pb::compare::CompareResult::Equal as i32,
                target: pb::compare::CompareTarget::Create as i32,
                key: self.key.clone(),
                target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
            }],
            success: if eligible {
                vec![pb::RequestOp {
                    request: Some(pb::request_op::Request::RequestPut(pb::PutRequest {
                        key: self.key.clone(),
                        value: record,
                        lease,
                    })),
                }]
            } else {
                Vec::new()
            },
            failure: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest {
                    key: self.key.clone(),
                    ..Default::default()
                })),
            }],
        };
        let answer = self.client.txn(txn).await?;
        if answer.succeeded {
            if eligible {
                self.set_role(Role::Leader);
            } else {
                self.set_role(Role::Unknown);
            }
            return Ok(());
        }
        let holder = answer.responses.into_iter().find_map(|r| match r.response {
            Some(pb::response_op::Response::ResponseRange(range)) => range.kvs.into_iter().next(),
            _ => None,
        });
        match holder {
            Some(kv) if kv.lease == lease => self.set_role(Role::Leader),
            Some(kv) => match decode(&kv.value) {
                Some(leader) if self.predecessor(&leader) => {
                    // Following it would send the CLI back here: no one
                    // leads until its lease runs out.
                    tracing::info!(leader = %leader.id, admin = %leader.admin,
                        "the leader key holds the record of the process that had this \
                         admin address before this one; campaigning once its lease runs out");
                    self.set_role(Role::Unknown);
                }
                Some(leader) => self.set_role(Role::Follower { leader }),
                None => {
                    tracing::error!("the leader key in etcd does not decode; not following it");
                    self.set_role(Role::Unknown);
                }
            },
            None => self.set_role(Role::Unknown),
        }
        Ok(())
    }

    /// Whether `leader` is the record of an earlier process on this
    /// replica's admin address (killed while it led, its lease not run out
    /// yet): this process holds that address now, so that one is gone.
    fn predecessor(&self, leader: &ReplicaInfo) -> bool {
        leader.admin == self.me.admin && leader.id != self.me.id
    }

    /// Deletes the leader key if this lease holds it.
    async fn release(&self, lease: i64) -> Result<(), StateError> {
        let txn = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: pb::compare::CompareResult::Equal as i32,
                target: pb::compare::CompareTarget::Lease as i32,
                key: self.key.clone(),
                target_union: Some(pb::compare::TargetUnion::Lease(lease)),
            }],
            success: vec![pb::RequestOp {
                request: Some(pb::request_op::Request::RequestDeleteRange(
                    pb::DeleteRangeRequest {
                        key: self.key.clone(),
                        ..Default::default()
                    },
                )),
            }],
            failure: Vec::new(),
        };
        self.client.txn(txn).await?;
        tracing::warn!("resigned the leadership");
        Ok(())
    }

    /// Returns when the leader key changes (or the watch ends: the caller
    /// reads the key again either way, so a compacted watch is harmless).
    async fn wait_for_change(&self, lease: i64) -> Result<(), StateError> {
        let (holder, revision) = self.client.get(&self.key).await?;
        // The key may have changed between the campaign and this read (the
        // leader's lease expired): a watch from here would never see it,
        // so campaign again at once.
        let same = match (holder, &*self.role.borrow()) {
            (Some(kv), Role::Leader) => kv.lease == lease,
            (Some(kv), Role::Follower { leader }) => decode(&kv.value).as_ref() == Some(leader),
            (Some(kv), Role::Unknown) => decode(&kv.value).is_some_and(|l| self.predecessor(&l)),
            _ => false,
        };
        if !same {
            return Ok(());
        }
        let mut watch = self
            .client
            .watch_key(self.key.clone(), revision.saturating_add(1), false)
            .await?;
        let stream = &mut watch.answers;
        loop {
            match stream.message().await {
                Err(s) => return Err(self.client.status_error(s)),
                Ok(None) => return Ok(()),
                Ok(Some(answer)) if answer.canceled || !answer.events.is_empty() => {
                    return Ok(());
                }
                Ok(Some(_)) => {}
            }
        }
    }
}

fn decode(bytes: &[u8]) -> Option<ReplicaInfo> {
    if bytes.len() > MAX_RECORD_BYTES {
        return None;
    }
    serde_json::from_slice(bytes).ok()
}

/// Says this replica may serve proxies while the last answered
/// keep-alive (when it was sent, on `answered`) is less than `bound` old,
/// and may not once it is older: its proxies then reconnect to a replica
/// the leader can see, before etcd lets this replica's lease go.
async fn serve_while_answered(
    mut answered: watch::Receiver<Option<tokio::time::Instant>>,
    serving: watch::Sender<bool>,
    bound: Duration,
) {
    loop {
        let deadline = answered.borrow_and_update().map(|at| at + bound);
        let fresh = deadline.is_some_and(|d| tokio::time::Instant::now() < d);
        serving.send_if_modified(|s| {
            if *s == fresh {
                return false;
            }
            if fresh {
                tracing::info!("holding an etcd lease: serving proxies");
            } else {
                tracing::warn!(
                    ?bound,
                    "no etcd keep-alive answered for half the lease: \
                    closing this replica's xDS streams so its proxies reconnect elsewhere"
                );
            }
            *s = fresh;
            true
        });
        tokio::select! {
            () = sleep_until(deadline), if fresh => {}
            changed = answered.changed() => if changed.is_err() {
                // The election is gone (shutdown): nothing is served.
                serving.send_replace(false);
                return;
            },
        }
    }
}

/// Sleeps until `deadline`; never without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Keeps `lease` alive, three times per TTL; reports on `lost` when etcd
/// says it is gone or cannot be reached for longer than the TTL, and on
/// `answered` when (it was sent) each answered keep-alive went out.
async fn keep_alive(
    client: EtcdClient,
    lease: i64,
    ttl_secs: i64,
    lost: tokio::sync::oneshot::Sender<StateError>,
    answered: Arc<watch::Sender<Option<tokio::time::Instant>>>,
) {
    let ttl = Duration::from_secs(u64::try_from(ttl_secs).unwrap_or(5));
    let every = ttl / 3;
    let mut last_ok = tokio::time::Instant::now();
    let error = loop {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let opened = tokio::time::Instant::now();
        // The first request goes in before the call: etcd answers the
        // call's headers only with its first answer, so awaiting the call
        // with nothing sent would wait for ever.
        if tx
            .send(pb::LeaseKeepAliveRequest { id: lease })
            .await
            .is_err()
        {
            break client.unavailable("keep-alive channel closed");
        }
        let stream = async {
            let req = client
                .request(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?;
            client
                .lease()
                .lease_keep_alive(req)
                .await
                .map(tonic::Response::into_inner)
                .map_err(|s| client.status_error(s))
        };
        let mut answers = match tokio::time::timeout(every.max(Duration::from_millis(500)), stream)
            .await
        {
            Ok(Ok(s)) => s,
            Ok(Err(e)) if last_ok.elapsed() >= ttl => break e,
            Err(_) if last_ok.elapsed() >= ttl => break client.unavailable("keep-alive timed out"),
            _ => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut first = true;
        let mut sent = opened;
        let broken = loop {
            if !std::mem::take(&mut first) {
                sent = tokio::time::Instant::now();
                if tx
                    .send(pb::LeaseKeepAliveRequest { id: lease })
                    .await
                    .is_err()
                {
                    break client.unavailable("keep-alive channel closed");
                }
            }
            match tokio::time::timeout(every.max(Duration::from_millis(500)), answers.message())
                .await
            {
                Ok(Ok(Some(a))) if a.ttl > 0 => {
                    last_ok = tokio::time::Instant::now();
                    answered.send_replace(Some(sent));
                }
                Ok(Ok(Some(_))) => {
                    let _ = lost.send(client.unavailable("the lease expired"));
                    return;
                }
                Ok(Ok(None)) => break client.unavailable("etcd ended the keep-alive stream"),
                Ok(Err(s)) => break client.status_error(s),
                Err(_) => break client.unavailable("keep-alive timed out"),
            }
            tokio::time::sleep(every).await;
        };
        if last_ok.elapsed() >= ttl {
            break broken;
        }
    };
    let _ = lost.send(error);
}

/// A random replica id: 8 bytes of the OS's randomness, in hex; the time
/// if that fails (ids need only differ between replicas).
pub(crate) fn new_replica_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        return format!("{nanos:x}");
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
