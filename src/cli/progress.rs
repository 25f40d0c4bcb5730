//! Following an operation's progress to its outcome: a line per step on
//! stderr, the outcome on stdout, and the exit code it calls for.
//!
//! It goes on across a change of leader. With replicas, the replica that
//! runs an operation can stop leading in the middle of it (it was stopped,
//! cut off from etcd, paused, or killed). It then records nothing: the
//! next leader resumes the operation from its saved record and records
//! its one outcome. The CLI that started the operation follows it there,
//! so what it reports is what the cluster recorded, never a guess of the
//! replica it first asked.

use std::io::Write;
use std::time::Duration;

use tonic::Streaming;

use crate::admin::convert::{outcome_name, phase_name};
use crate::admin::pb::{self, outcome::Kind};
use crate::rollout::ErrorKind;
use crate::text::untrusted;

use super::client::{
    Conn, EX_ABORTED, EX_INTERRUPTED, EX_OK, EX_REFUSED, EX_ROLLED_BACK, EX_SOFTWARE, EX_STOPPED,
    EX_UNAVAILABLE, EX_UNCONFIRMED, Failure,
};
use super::table;

/// How long the CLI looks for the outcome after the replica running the
/// operation stopped: a new leader takes over within a lease (60 s at
/// most) and resumes at once.
pub(crate) const HANDOVER_WAIT: Duration = Duration::from_secs(90);

/// How often it asks the replicas again meanwhile.
const RETRY: Duration = Duration::from_millis(500);

/// The most replicas it asks (a hostile answer cannot make it dial more).
const MAX_PEERS: usize = 64;

/// The admin addresses of the replicas sharing `conn`'s store, as they
/// advertise them; empty without replicas (or when `conn` cannot say).
pub(crate) async fn peers(conn: &Conn, service: &str) -> Vec<String> {
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
pub(crate) async fn follow_elsewhere(
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

/// How many characters of one proxy name a progress line shows.
const NAME_CHARS: usize = 80;

/// One line describing where an operation is, for stderr. Everything from
/// the server is escaped and cut (node ids, messages, check details).
pub(crate) fn progress_line(p: &pb::Progress) -> String {
    let phase = phase_name(p.phase());
    let step = if p.steps > 1 {
        format!("[step {}/{}] ", p.step, p.steps)
    } else {
        String::new()
    };
    let not_waiting = if p.not_waiting_for.is_empty() {
        String::new()
    } else {
        format!(" (not waiting for cordoned {})", names(&p.not_waiting_for))
    };
    let mut line = match (&p.version, p.phase()) {
        (Some(v), pb::Phase::Confirming | pb::Phase::RollingBack) => {
            let mut s = format!(
                "{step}{phase} {}: {}/{} proxies ACKed",
                untrusted(v),
                p.acked,
                p.total
            );
            if !p.waiting_for.is_empty() {
                let shown: Vec<String> = p
                    .waiting_for
                    .iter()
                    .take(5)
                    .map(|n| untrusted(n).max_chars(NAME_CHARS).to_string())
                    .collect();
                // The server names only the first few of a large fleet.
                let waiting = (p.total.saturating_sub(p.acked) as usize).max(p.waiting_for.len());
                let more = waiting.saturating_sub(shown.len());
                let extra = if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                };
                s.push_str(&format!(" (waiting for {}{extra})", shown.join(", ")));
            }
            s.push_str(&not_waiting);
            s
        }
        _ => format!("{step}{phase}"),
    };
    if !p.message.is_empty() {
        line.push_str(": ");
        line.push_str(&untrusted(&p.message).to_string());
    }
    for c in p.checks.iter().filter(|c| !c.ok) {
        line.push('\n');
        line.push_str(&failed_check(c));
    }
    line
}

/// Up to five names, escaped and cut, and how many more.
fn names(all: &[String]) -> String {
    let shown: Vec<String> = all
        .iter()
        .take(5)
        .map(|n| untrusted(n).max_chars(NAME_CHARS).to_string())
        .collect();
    let more = all.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// `  check NAME failed on ENDPOINT: DETAIL`, escaped and cut.
fn failed_check(c: &pb::CheckResult) -> String {
    format!(
        "  check {} failed on {}: {}",
        untrusted(&c.check).max_chars(NAME_CHARS),
        untrusted(&c.endpoint).max_chars(NAME_CHARS),
        untrusted(&c.detail)
    )
}

/// `VERB #ID SERVICE`, escaped.
pub(super) fn operation(p: &pb::Progress) -> String {
    format!(
        "{} #{} {}",
        untrusted(&p.verb).max_chars(NAME_CHARS),
        p.id,
        untrusted(&p.service).max_chars(NAME_CHARS)
    )
}

/// Follows a progress stream to its outcome, printing progress on `err`
/// and the result on `out`. Ctrl-C stops following (not the operation).
///
/// `peers` are the replicas sharing the store (`None`: learnt from `conn`
/// once the operation is known). With replicas, a stream that ends
/// without an outcome (the replica that
/// ran the operation stopped leading, or stopped) is not the end: the
/// next leader carries the operation on, and the outcome reported is the
/// one the cluster records (see [`super::progress`]).
pub(crate) async fn follow(
    conn: &Conn,
    mut stream: Streaming<pb::Progress>,
    mut peers: Option<Vec<String>>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let mut last_line = String::new();
    let mut last: Option<pb::Progress> = None;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    loop {
        let next = tokio::select! {
            // Ctrl-C first: its handler is installed when first polled, and
            // must be before any progress is printed, or a Ctrl-C soon
            // after the first line kills the command instead of stopping
            // the following.
            biased;
            _ = &mut interrupted => {
                let (what, service) = last
                    .as_ref()
                    .map(|p| {
                        let verb = untrusted(&p.verb).max_chars(NAME_CHARS);
                        (format!("{verb} #{}", p.id), untrusted(&p.service).to_string())
                    })
                    .unwrap_or_else(|| ("the operation".to_owned(), "SERVICE".to_owned()));
                let _ = writeln!(err, "\nteal: stopped following {what}; it goes on on the server.");
                let _ = writeln!(err, "  see it with: teal status {service}");
                if let Some(p) = &last {
                    let _ = writeln!(err, "  follow it again: teal follow {}", p.id);
                }
                return EX_INTERRUPTED;
            }
            next = stream.message() => next,
        };
        let ended = match next {
            Ok(Some(p)) => Ok(p),
            Ok(None) => Err(Failure::new(
                EX_SOFTWARE,
                "the server ended the stream without an outcome",
            )),
            Err(status) => Err(conn.fail(&status)),
        };
        let p = match (ended, &last, &peers) {
            (Ok(p), _, _) => p,
            (Err(_), Some(last), Some(peers)) if !peers.is_empty() => {
                let follow_on = follow_elsewhere(conn, last, peers, out, err);
                return Box::pin(follow_on).await;
            }
            (Err(failure), _, _) => return failure.report(err),
        };
        if peers.is_none() && p.outcome.is_none() {
            peers = Some(self::peers(conn, &p.service).await);
        }
        let line = progress_line(&p);
        if line != last_line && p.outcome.is_none() {
            let _ = writeln!(err, "{}: {line}", operation(&p));
            last_line = line;
        }
        if let Some(outcome) = &p.outcome {
            return finish(&p, outcome, out, err);
        }
        last = Some(p);
    }
}

pub(super) fn finish(
    p: &pb::Progress,
    outcome: &pb::Outcome,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let what = operation(p);
    let reason = untrusted(&outcome.reason);
    let kind = outcome.kind();
    let name = outcome_name(kind);
    for w in &p.warnings {
        let _ = writeln!(err, "teal: warning: {}", untrusted(w));
    }
    if !p.not_waiting_for.is_empty() {
        let _ = writeln!(
            err,
            "teal: did not wait for cordoned proxies: {}",
            names(&p.not_waiting_for)
        );
    }
    match kind {
        Kind::Succeeded => {
            let target = p.target.as_ref().map(|s| table::split(&s.weights));
            let version = p
                .version
                .as_deref()
                .map(|v| format!(", version {}", untrusted(v)));
            let _ = writeln!(
                out,
                "{what}: {name}: {}{}",
                target.unwrap_or_default(),
                version.unwrap_or_default()
            );
            EX_OK
        }
        Kind::RolledBack => {
            let _ = writeln!(err, "teal: {what} {name}: {reason}");
            for c in p.checks.iter().filter(|c| !c.ok) {
                let _ = writeln!(err, "{}", failed_check(c));
            }
            let _ = writeln!(err, "  every proxy confirmed the weights from before it");
            EX_ROLLED_BACK
        }
        Kind::Aborted => {
            let _ = writeln!(err, "teal: {what} {name}: {reason}");
            EX_ABORTED
        }
        Kind::Unconfirmed => {
            let _ = writeln!(err, "teal: {what} {name}: {reason}");
            let _ = writeln!(
                err,
                "  see which proxies hold what with: teal proxies; teal status {}",
                untrusted(&p.service)
            );
            EX_UNCONFIRMED
        }
        Kind::Interrupted => {
            let _ = writeln!(err, "teal: {what} {name}: {reason}");
            EX_STOPPED
        }
        Kind::Refused | Kind::Unspecified => {
            let _ = writeln!(err, "teal: {what} {name}: {reason}");
            EX_REFUSED
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirming_line_names_the_laggards() {
        let p = pb::Progress {
            verb: "flip".into(),
            phase: pb::Phase::Confirming as i32,
            version: Some("v12".into()),
            acked: 7,
            total: 9,
            waiting_for: vec!["edge-2".into(), "sidecar-5".into()],
            step: 1,
            steps: 1,
            ..Default::default()
        };
        assert_eq!(
            progress_line(&p),
            "confirming v12: 7/9 proxies ACKed (waiting for edge-2, sidecar-5)"
        );
    }
}
