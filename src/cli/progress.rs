//! Following an operation across a change of leader.
//!
//! With replicas, the replica that runs an operation can stop leading in
//! the middle of it (it was stopped, cut off from etcd, paused, or killed).
//! It then records nothing: the next leader resumes the operation from its
//! saved record and records its one outcome. The CLI that started the
//! operation follows it there, so what it reports is what the cluster
//! recorded, never a guess of the replica it first asked.

use std::io::Write;
use std::time::Duration;

use crate::admin::pb;
use crate::rollout::ErrorKind;
use crate::text::untrusted;

use super::client::{Conn, EX_UNAVAILABLE, Failure, finish, follow, operation};

/// How long the CLI looks for the outcome after the replica running the
/// operation stopped: a new leader takes over within a lease (60 s at
/// most) and resumes at once.
pub const HANDOVER_WAIT: Duration = Duration::from_secs(90);

/// How often it asks the replicas again meanwhile.
const RETRY: Duration = Duration::from_millis(500);

/// The most replicas it asks (a hostile answer cannot make it dial more).
const MAX_PEERS: usize = 64;

/// The admin addresses of the replicas sharing `conn`'s store, as they
/// advertise them; empty without replicas (or when `conn` cannot say).
pub async fn peers(conn: &Conn, service: &str) -> Vec<String> {
    let request = conn.request(pb::StatusRequest {
        service: Some(service.to_owned()),
    });
    match conn.client.clone().status(request).await {
        Ok(answer) => answer
            .into_inner()
            .replicas
            .into_iter()
            .map(|r| r.admin)
            .filter(|a| !a.is_empty() && a.len() <= 256)
            .take(MAX_PEERS)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// The outcome of the operation `last` describes, which the replica at
/// `conn` stopped running before it ended: followed on the replica that
/// carries it on, or read from the history every replica keeps; asked of
/// `peers` (and the replicas they name) until [`HANDOVER_WAIT`] passes.
pub async fn follow_elsewhere(
    conn: &Conn,
    last: &pb::Progress,
    peers: &[String],
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let _ = writeln!(
        err,
        "teal: {} stopped running {} before it ended; following it on the replica that \
         carries it on",
        untrusted(&conn.addr),
        operation(last)
    );
    let mut peers: Vec<String> = peers.to_vec();
    // Replicas named at an address this CLI does not follow (another
    // scheme, user information), said once each.
    let mut refused = std::collections::HashSet::new();
    let deadline = tokio::time::Instant::now() + HANDOVER_WAIT;
    loop {
        let mut i = 0;
        while let Some(addr) = peers.get(i).cloned() {
            i += 1;
            if let Err(failure) = conn.follows_to(&addr) {
                if refused.insert(addr) {
                    let _ = writeln!(err, "teal: {}", failure.message);
                }
                continue;
            }
            let Ok(replica) = conn.to(&addr).await else {
                continue;
            };
            for more in self::peers(&replica, &last.service).await {
                if !peers.contains(&more) && peers.len() < MAX_PEERS {
                    peers.push(more);
                }
            }
            let request = replica.request(pb::FollowRequest { id: last.id });
            match replica.client.clone().follow(request).await {
                Ok(stream) => {
                    let _ = writeln!(err, "teal: following it on {}", untrusted(&addr));
                    let peers = Some(peers.clone());
                    return Box::pin(follow(&replica, stream.into_inner(), peers, out, err)).await;
                }
                // Not running there: ended already (in the history), or
                // not resumed yet.
                Err(s) if ErrorKind::of(&s) == Some(ErrorKind::NoSuchOperation) => {
                    if let Some(code) = recorded(&replica, last, out, err).await {
                        return code;
                    }
                }
                Err(_) => {}
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Failure::new(
                EX_UNAVAILABLE,
                format!(
                    "no replica reported the outcome of {} within {} s; see teal status {} \
                     and teal history {}",
                    operation(last),
                    HANDOVER_WAIT.as_secs(),
                    untrusted(&last.service),
                    untrusted(&last.service),
                ),
            )
            .report(err);
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// The outcome of `last`'s operation as `replica`'s history records it,
/// reported as a followed operation's would be; `None` if not recorded
/// yet.
async fn recorded(
    replica: &Conn,
    last: &pb::Progress,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Option<u8> {
    let request = replica.request(pb::HistoryRequest {
        service: last.service.clone(),
    });
    let entries = replica
        .client
        .clone()
        .history(request)
        .await
        .ok()?
        .into_inner()
        .entries;
    let entry = entries.into_iter().find(|e| e.id == last.id)?;
    let outcome = entry.outcome.clone()?;
    let ended = pb::Progress {
        target: entry.to.clone(),
        version: entry.version.clone(),
        outcome: Some(outcome.clone()),
        ..last.clone()
    };
    Some(finish(&ended, &outcome, out, err))
}
