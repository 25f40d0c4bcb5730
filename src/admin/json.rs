//! The JSON that `teal ... -o json` prints and the dashboard's event
//! stream sends: one builder for both, so they cannot drift apart. Field
//! names are part of teal's interface: they only ever get added to, never
//! renamed. Times are unix
//! epoch milliseconds (`*_unix_ms`), durations milliseconds (`*_ms`);
//! absent values are `null`.
//!
//! - `teal status`: `{version, services: [service]}`; a service is
//!   `{name, live, previous, weights: {fleet: weight}, confirmed_weights:
//!   {fleet: weight} | null, applied: {acked, total, waiting_for: [proxy],
//!   rejecting: [{proxy, message}], groups: [group]}, retired: [fleet],
//!   retirement: {fleet, at_unix_ms} | null, drains: [drain], both_fleets_since_unix_ms,
//!   both_fleets_for_ms, last_change: change | null, in_progress: progress | null,
//!   traffic: [{fleet, requests, errors, requests_per_second, error_ratio,
//!   share, in_progress, proxies_reporting, proxies_routing, window_ms}]}`
//!   (`traffic` is empty when no proxy routing the service reports its load);
//!   a drain (one per fleet with weight 0) is `{fleet, drained, proxies, idle,
//!   in_flight, draining: [{proxy, in_flight}], draining_count, not_reporting:
//!   [proxy], not_reporting_count}`;
//!   with replicas on etcd also `replicas: [{id, admin, leader,
//!   heartbeat_unix_ms, config_digest, proxies, ineligible}]`.
//! - a change (also each entry of `teal history`: `{service, entries: [change]}`):
//!   `{id, verb, actor, started_unix_ms, finished_unix_ms, from, to, version,
//!   outcome, reason, convergence_ms, acks: [{proxy, after_ms}]}`; `outcome`
//!   is `succeeded`, `refused`, `rolled-back` or `aborted`.
//! - a progress: `{id, service, verb, phase, step, steps, target, version,
//!   acked, total, waiting_for: [proxy], checks: [check], message, outcome, reason}`.
//! - a check (also `teal verify`: `{service, fleet, ok, checks: [check]}`):
//!   `{check, endpoint, ok, detail}`.
//! - `teal proxies`: `{proxies: [{node_id, group, stream_id, kind, delta,
//!   user_agent, connected_since_unix_ms, types: {CDS|EDS|LDS|RDS: {state,
//!   sent, acked, expected, nack: {version, message, at_unix_ms} | null}},
//!   load: {age_ms, reports, clusters: [{cluster, requests, errors,
//!   in_progress}]} | null}]}` (`load`: its load reports, null without a
//!   load stream);
//!   `state` is `SYNCED`, `STALE`, `NACKED` or `NOT SENT`.
//!
//! The event stream's `status` is the `teal status` JSON taken with no
//! clock ([`status`] with `None`): `both_fleets_for_ms` is `null`, since it
//! would change every millisecond and an unchanged state could never be
//! told from a changed one.

use serde_json::{Value, json};

use super::convert::{outcome_name, phase_name, unix_ms};
use super::pb;

/// A split as `{fleet: weight}`.
pub(crate) fn split(s: Option<&pb::Split>) -> Value {
    let map: serde_json::Map<String, Value> = s
        .map(|s| {
            s.weights
                .iter()
                .map(|(k, v)| (k.clone(), json!(v)))
                .collect()
        })
        .unwrap_or_default();
    Value::Object(map)
}

fn outcome(o: Option<&pb::Outcome>) -> (Value, Value) {
    match o {
        Some(o) => (
            json!(outcome_name(o.kind())),
            if o.reason.is_empty() {
                Value::Null
            } else {
                json!(o.reason)
            },
        ),
        None => (Value::Null, Value::Null),
    }
}

pub(crate) fn check(c: &pb::CheckResult) -> Value {
    json!({"check": c.check, "endpoint": c.endpoint, "ok": c.ok, "detail": c.detail})
}

pub(crate) fn change(h: &pb::HistoryEntry) -> Value {
    let (outcome, reason) = outcome(h.outcome.as_ref());
    json!({
        "id": h.id,
        "verb": h.verb,
        "actor": h.actor,
        "started_unix_ms": h.started_unix_ms,
        "finished_unix_ms": h.finished_unix_ms,
        "from": split(h.from.as_ref()),
        "to": split(h.to.as_ref()),
        "version": h.version,
        "outcome": outcome,
        "reason": reason,
        "convergence_ms": h.convergence_ms,
        "acks": h.acks.iter().map(|a| json!({"proxy": a.proxy, "after_ms": a.after_ms})).collect::<Vec<_>>(),
        "target": h.target.as_ref().map(|t| split(Some(t))),
        "warnings": h.warnings,
        "not_waited_for": h.not_waited_for,
    })
}

pub(crate) fn progress(p: &pb::Progress) -> Value {
    let (outcome, reason) = outcome(p.outcome.as_ref());
    json!({
        "id": p.id,
        "service": p.service,
        "verb": p.verb,
        "phase": phase_name(p.phase()),
        "step": p.step,
        "steps": p.steps,
        "target": split(p.target.as_ref()),
        "version": p.version,
        "acked": p.acked,
        "total": p.total,
        "waiting_for": p.waiting_for,
        "not_waiting_for": p.not_waiting_for,
        "checks": p.checks.iter().map(check).collect::<Vec<_>>(),
        "message": p.message,
        "warnings": p.warnings,
        "outcome": outcome,
        "reason": reason,
    })
}

/// Which proxies routing a service hold the weights served now.
pub(crate) fn applied(a: &pb::Applied) -> Value {
    json!({
        "acked": a.acked,
        "total": a.total,
        "waiting_for": a.waiting_for,
        "rejecting": a.rejecting.iter().map(|r| json!({"proxy": r.proxy, "message": r.message})).collect::<Vec<_>>(),
        "groups": a.groups,
    })
}

/// Whether a fleet with no weight is drained, and what holds it.
pub(crate) fn drain(d: &pb::FleetDrain) -> Value {
    json!({
        "fleet": d.fleet,
        "drained": d.drained,
        "proxies": d.proxies,
        "idle": d.idle,
        "in_flight": d.in_flight,
        "draining": d.draining.iter().map(|p| json!({"proxy": p.proxy, "in_flight": p.in_flight})).collect::<Vec<_>>(),
        "draining_count": d.draining_count,
        "not_reporting": d.not_reporting,
        "not_reporting_count": d.not_reporting_count,
    })
}

/// The status of every service shown; `now` gives `both_fleets_for_ms`,
/// which is `null` without it.
pub(crate) fn status(s: &pb::StatusResponse, now: Option<std::time::SystemTime>) -> Value {
    let now = now.map(unix_ms);
    let services: Vec<Value> = s
        .services
        .iter()
        .map(|svc| {
            json!({
                "name": svc.name,
                "live": svc.live,
                "previous": svc.previous,
                "rollback_to": svc.rollback_to.as_ref().map(|r| split(Some(r))),
                "weights": split(svc.weights.as_ref()),
                "confirmed_weights": svc.confirmed.as_ref().map(|c| split(Some(c))),
                "applied": svc.applied.as_ref().map(applied),
                "retired": svc.retired,
                "retirement": svc.retirement.as_ref().map(|r| json!({"fleet": r.fleet, "at_unix_ms": r.at_unix_ms})),
                "drains": svc.drains.iter().map(drain).collect::<Vec<_>>(),
                "both_fleets_since_unix_ms": svc.both_fleets_since_unix_ms,
                "both_fleets_for_ms": svc.both_fleets_since_unix_ms.zip(now).map(|(t, now)| (now - t).max(0)),
                "last_change": svc.last_change.as_ref().map(change),
                "in_progress": svc.in_progress.as_ref().map(progress),
                "traffic": traffic(svc),
            })
        })
        .collect();
    let cordons: Vec<Value> = s
        .cordons
        .iter()
        .map(|c| json!({"node_id": c.node_id, "reason": c.reason, "actor": c.actor, "since_unix_ms": c.since_unix_ms}))
        .collect();
    let replicas: Vec<Value> = s
        .replicas
        .iter()
        .map(|r| json!({"id": r.id, "admin": r.admin, "leader": r.leader, "heartbeat_unix_ms": r.heartbeat_unix_ms, "config_digest": r.config_digest, "proxies": r.proxies, "ineligible": (!r.ineligible.is_empty()).then_some(&r.ineligible)}))
        .collect();
    json!({"version": s.version, "services": services, "cordons": cordons, "replicas": replicas})
}

/// A service's traffic, measured from its proxies' load reports.
pub(crate) fn traffic(svc: &pb::ServiceStatus) -> Value {
    svc.traffic
        .iter()
        .map(|f| {
            json!({
                "fleet": f.fleet,
                "requests": f.requests,
                "errors": f.errors,
                "requests_per_second": f.requests_per_second,
                "error_ratio": f.error_ratio,
                "share": f.share,
                "in_progress": f.in_progress,
                "proxies_reporting": f.proxies_reporting,
                "proxies_routing": f.proxies_routing,
                "window_ms": f.window_ms,
            })
        })
        .collect()
}

/// A proxy's load reports: `null` without a load stream.
pub(crate) fn load(load: Option<&pb::LoadReport>) -> Value {
    load.map_or(Value::Null, |l| {
        json!({
            "age_ms": l.age_ms,
            "reports": l.reports,
            "clusters": l.clusters.iter().map(|c| json!({
                "cluster": c.cluster,
                "requests": c.requests,
                "errors": c.errors,
                "in_progress": c.in_progress,
            })).collect::<Vec<_>>(),
        })
    })
}

/// Whether a proxy is on the version its group should be on, for one type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum SyncState {
    /// It rejected the last version sent. First in the order, as the
    /// dashboard lists proxies: the ones to look at.
    Nacked,
    /// It has not ACKed the version its group should be on (still
    /// applying, or on an older one).
    Stale,
    /// Nothing of the type was sent on its stream.
    NotSent,
    /// It ACKed the group's version (or, when the server does not know
    /// the group, the last version sent).
    Synced,
}

impl SyncState {
    /// Of one type of a proxy, against the version its group should be on.
    pub(crate) fn of(t: &pb::TypeStatus, expected: Option<&str>) -> SyncState {
        let nacked = t
            .nack
            .as_ref()
            .is_some_and(|n| Some(&n.version) == t.sent.as_ref());
        if t.sent.is_none() {
            SyncState::NotSent
        } else if nacked {
            SyncState::Nacked
        } else if t.acked.is_some() && t.acked.as_deref() == expected.or(t.sent.as_deref()) {
            SyncState::Synced
        } else {
            SyncState::Stale
        }
    }

    /// As `teal proxies` and its JSON name it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            SyncState::Nacked => "NACKED",
            SyncState::Stale => "STALE",
            SyncState::NotSent => "NOT SENT",
            SyncState::Synced => "SYNCED",
        }
    }

    /// The worst state of a proxy's types: NACKED over STALE and NOT SENT
    /// (both pending) over SYNCED; SYNCED for a proxy with no types.
    pub(crate) fn of_proxy(r: &pb::ProxiesResponse, p: &pb::Proxy) -> SyncState {
        p.types
            .iter()
            .enumerate()
            .map(|(i, t)| SyncState::of(t, expected(r, &p.group, i)))
            .min()
            .unwrap_or(SyncState::Synced)
    }
}

/// The version `group` should be on for the `ty`th type (CDS, EDS, LDS,
/// RDS), if the server knows the group.
pub(crate) fn expected<'a>(r: &'a pb::ProxiesResponse, group: &str, ty: usize) -> Option<&'a str> {
    let v = r.current_versions.get(group)?;
    let version = match ty {
        0 => &v.cds,
        1 => &v.eds,
        2 => &v.lds,
        3 => &v.rds,
        _ => return None,
    };
    Some(version.as_str()).filter(|s| !s.is_empty())
}

/// The identity to show: `unauthenticated` from a server that sends none.
pub(crate) fn identity(p: &pb::Proxy) -> &str {
    if p.identity.is_empty() {
        "unauthenticated"
    } else {
        &p.identity
    }
}

/// One proxy of `teal proxies`.
pub(crate) fn proxy(r: &pb::ProxiesResponse, p: &pb::Proxy) -> Value {
    let types: serde_json::Map<String, Value> = p
        .types
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let expected = expected(r, &p.group, i);
            let nack = t.nack.as_ref().map(
                |n| json!({"version": n.version, "message": n.message, "at_unix_ms": n.at_unix_ms}),
            );
            let ty = json!({
                "state": SyncState::of(t, expected).as_str(),
                "sent": t.sent, "acked": t.acked, "expected": expected,
                "nack": nack,
            });
            (t.r#type.clone(), ty)
        })
        .collect();
    json!({
        "node_id": p.node_id, "group": p.group, "stream_id": p.stream_id, "kind": p.kind,
        "delta": p.delta, "user_agent": p.user_agent, "identity": identity(p),
        "cordoned": p.cordoned, "cordon_reason": p.cordon_reason,
        "replica": (!p.replica.is_empty()).then_some(&p.replica),
        "connected_since_unix_ms": p.connected_since_unix_ms, "types": types,
        "load": load(p.load.as_ref()),
    })
}

/// `teal proxies`: every proxy of `r`.
pub(crate) fn proxies(r: &pb::ProxiesResponse) -> Value {
    let proxies: Vec<Value> = r.proxies.iter().map(|p| proxy(r, p)).collect();
    json!({ "proxies": proxies })
}
