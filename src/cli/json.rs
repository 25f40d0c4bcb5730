//! The JSON that `-o json` prints. Field names are part of teal's
//! interface: they only ever get added to, never renamed. Times are unix
//! epoch milliseconds (`*_unix_ms`), durations milliseconds (`*_ms`);
//! absent values are `null`.
//!
//! - `teal status`: `{version, services: [service]}`; a service is
//!   `{name, live, previous, weights: {fleet: weight}, retired: [fleet],
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

use serde_json::{Value, json};

use crate::admin::convert::{outcome_name, phase_name, unix_ms};
use crate::admin::pb;

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

/// The status of every service shown.
pub(crate) fn status(s: &pb::StatusResponse, now: std::time::SystemTime) -> Value {
    let now = unix_ms(now);
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
                "retired": svc.retired,
                "retirement": svc.retirement.as_ref().map(|r| json!({"fleet": r.fleet, "at_unix_ms": r.at_unix_ms})),
                "drains": svc.drains.iter().map(drain).collect::<Vec<_>>(),
                "both_fleets_since_unix_ms": svc.both_fleets_since_unix_ms,
                "both_fleets_for_ms": svc.both_fleets_since_unix_ms.map(|t| (now - t).max(0)),
                "last_change": svc.last_change.as_ref().map(change),
                "in_progress": svc.in_progress.as_ref().map(progress),
                "traffic": super::traffic::traffic_json(svc),
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
