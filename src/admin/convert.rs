//! Conversions between the rollout types ([`crate::rollout`]) and the
//! admin API's protobuf messages ([`super::pb`]).
//!
//! Times become unix epoch milliseconds and durations milliseconds.
//! Requests that arrive over the wire become [`Operation`]s here, with the
//! API's defaults filled in.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::rollout::registration::{FleetView, Registered, Request};
use crate::rollout::{
    CheckResult, DEFAULT_DRAIN_TIMEOUT, DEFAULT_TIMEOUT, FleetDrain, HistoryEntry, MeasuredFleet,
    Operation, Outcome, Phase, Progress, Retirement, RolloutError, ServiceStatus, ShiftSteps,
    Split, StatusView, Version,
};
use crate::xds::load::ProxyLoad;
use crate::xds::resources::{PerType, ResourceType};
use crate::xds::status::{Nack, TypeStatus};
use crate::xds::{ProxyStatus, StreamKind};

use super::pb;

/// Unix epoch milliseconds; times before the epoch are negative.
pub(crate) fn unix_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

/// The time `ms` milliseconds after the unix epoch.
#[cfg(test)]
pub(crate) fn from_unix_ms(ms: i64) -> SystemTime {
    let d = Duration::from_millis(ms.unsigned_abs());
    if ms >= 0 {
        UNIX_EPOCH + d
    } else {
        UNIX_EPOCH - d
    }
}

/// A duration in whole milliseconds (saturating).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A split as a message.
pub(crate) fn split(s: &Split) -> pb::Split {
    pb::Split {
        weights: s.iter().map(|(k, v)| (k.clone(), *v)).collect(),
    }
}

/// A split from a message.
pub(crate) fn split_from(s: &pb::Split) -> Split {
    s.weights.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

/// A phase as the wire enum.
pub(crate) fn phase(p: Phase) -> pb::Phase {
    match p {
        Phase::Preparing => pb::Phase::Preparing,
        Phase::PreChecks => pb::Phase::PreChecks,
        Phase::Confirming => pb::Phase::Confirming,
        Phase::PostChecks => pb::Phase::PostChecks,
        Phase::Analysis => pb::Phase::Analysis,
        Phase::Waiting => pb::Phase::Waiting,
        Phase::Draining => pb::Phase::Draining,
        Phase::RollingBack => pb::Phase::RollingBack,
        Phase::Done => pb::Phase::Done,
    }
}

/// The lower-case name of a wire phase, as [`Phase::as_str`] spells it.
pub(crate) fn phase_name(p: pb::Phase) -> &'static str {
    match p {
        pb::Phase::Unspecified => "unknown",
        pb::Phase::Preparing => Phase::Preparing.as_str(),
        pb::Phase::PreChecks => Phase::PreChecks.as_str(),
        pb::Phase::Confirming => Phase::Confirming.as_str(),
        pb::Phase::PostChecks => Phase::PostChecks.as_str(),
        pb::Phase::Analysis => Phase::Analysis.as_str(),
        pb::Phase::Waiting => Phase::Waiting.as_str(),
        pb::Phase::Draining => Phase::Draining.as_str(),
        pb::Phase::RollingBack => Phase::RollingBack.as_str(),
        pb::Phase::Done => Phase::Done.as_str(),
    }
}

/// An outcome as a message.
pub(crate) fn outcome(o: &Outcome) -> pb::Outcome {
    use pb::outcome::Kind;
    let (kind, reason) = match o {
        Outcome::Succeeded => (Kind::Succeeded, String::new()),
        Outcome::Refused { reason } => (Kind::Refused, reason.to_string()),
        Outcome::RolledBack { reason } => (Kind::RolledBack, reason.to_string()),
        Outcome::Aborted { reason } => (Kind::Aborted, reason.to_string()),
        Outcome::Unconfirmed { reason } => (Kind::Unconfirmed, reason.to_string()),
        Outcome::Interrupted { reason } => (Kind::Interrupted, reason.to_string()),
    };
    pb::Outcome {
        kind: kind as i32,
        reason,
    }
}

/// The lower-case name of an outcome kind: `succeeded`, `refused`,
/// `rolled-back`, `aborted`, `unconfirmed`, `interrupted`.
pub(crate) fn outcome_name(kind: pb::outcome::Kind) -> &'static str {
    use pb::outcome::Kind;
    match kind {
        Kind::Unspecified => "unknown",
        Kind::Succeeded => "succeeded",
        Kind::Refused => "refused",
        Kind::RolledBack => "rolled-back",
        Kind::Aborted => "aborted",
        Kind::Unconfirmed => "unconfirmed",
        Kind::Interrupted => "interrupted",
    }
}

/// A check result as a message.
pub(crate) fn check(c: &CheckResult) -> pb::CheckResult {
    pb::CheckResult {
        check: c.check.clone(),
        endpoint: c.endpoint.clone(),
        ok: c.ok,
        detail: c.detail.clone(),
    }
}

/// Progress as a message.
pub fn progress(p: &Progress) -> pb::Progress {
    pb::Progress {
        id: p.id,
        service: p.service.clone(),
        verb: p.verb.to_string(),
        phase: phase(p.phase) as i32,
        step: count(p.step),
        steps: count(p.steps),
        target: Some(split(&p.target)),
        version: p.version.as_ref().map(Version::to_string),
        acked: count(p.acked),
        total: count(p.total),
        waiting_for: p.waiting_for.clone(),
        checks: p.checks.iter().map(check).collect(),
        message: p.message.clone(),
        outcome: p.outcome.as_ref().map(outcome),
        warnings: p.warnings.clone(),
        not_waiting_for: p.not_waiting_for.clone(),
    }
}

/// A history entry as a message.
pub(crate) fn history_entry(h: &HistoryEntry) -> pb::HistoryEntry {
    pb::HistoryEntry {
        id: h.id,
        verb: h.verb.to_string(),
        actor: h.actor.clone(),
        started_unix_ms: unix_ms(h.started),
        finished_unix_ms: unix_ms(h.finished),
        from: Some(split(&h.from)),
        to: Some(split(&h.to)),
        version: h.version.as_ref().map(Version::to_string),
        outcome: Some(outcome(&h.outcome)),
        convergence_ms: h.convergence.map(millis),
        acks: h
            .acks
            .iter()
            .map(|(proxy, after)| pb::ProxyAck {
                proxy: proxy.clone(),
                after_ms: millis(*after),
            })
            .collect(),
        target: h.target.as_ref().map(split),
        warnings: h.warnings.clone(),
        not_waited_for: h.not_waited_for.clone(),
    }
}

fn retirement(r: &Retirement) -> pb::Retirement {
    pb::Retirement {
        fleet: r.fleet.clone(),
        at_unix_ms: unix_ms(r.at),
    }
}

/// A fleet's drain as a message.
pub(crate) fn drain(d: &FleetDrain) -> pb::FleetDrain {
    pb::FleetDrain {
        fleet: d.fleet.clone(),
        drained: d.is_drained(),
        proxies: count(d.proxies),
        idle: count(d.idle),
        draining: d
            .draining
            .iter()
            .map(|p| pb::DrainingProxy {
                proxy: p.proxy.clone(),
                in_flight: p.in_flight,
            })
            .collect(),
        draining_count: count(d.draining_count),
        in_flight: d.in_flight,
        not_reporting: d.silent.clone(),
        not_reporting_count: count(d.silent_count),
    }
}

/// One service's status as a message.
pub(crate) fn service_status(s: &ServiceStatus) -> pb::ServiceStatus {
    pb::ServiceStatus {
        name: s.name.clone(),
        live: s.live.clone(),
        previous: s.previous.clone(),
        weights: Some(split(&s.weights)),
        retired: s.retired.clone(),
        retirement: s.retirement.as_ref().map(retirement),
        both_fleets_since_unix_ms: s.both_fleets_since.map(unix_ms),
        last_change: s.last_change.as_ref().map(history_entry),
        in_progress: s.in_progress.as_ref().map(progress),
        rollback_to: s.rollback_to.as_ref().map(split),
        drains: s.drains.iter().map(drain).collect(),
        traffic: traffic(&s.traffic),
        confirmed: s.confirmed.as_ref().map(split),
        applied: Some(pb::Applied {
            acked: u32::try_from(s.applied.acked).unwrap_or(u32::MAX),
            total: u32::try_from(s.applied.total).unwrap_or(u32::MAX),
            waiting_for: s.applied.waiting_for.clone(),
            rejecting: s
                .applied
                .rejecting
                .iter()
                .map(|(proxy, message)| pb::ProxyRejection {
                    proxy: proxy.clone(),
                    message: message.clone(),
                })
                .collect(),
            groups: s.applied.groups.clone(),
        }),
    }
}

/// A service's measured traffic as messages, ratios worked out; none when
/// no proxy reports.
pub(crate) fn traffic(fleets: &[MeasuredFleet]) -> Vec<pb::FleetTraffic> {
    if fleets.iter().all(|f| f.proxies_reporting == 0) {
        return Vec::new();
    }
    let all: u64 = fleets.iter().map(|f| f.requests).sum();
    let ratio = |n: u64, of: u64| if of == 0 { 0.0 } else { n as f64 / of as f64 };
    fleets
        .iter()
        .map(|f| pb::FleetTraffic {
            fleet: f.fleet.clone(),
            requests: f.requests,
            errors: f.errors,
            requests_per_second: if f.window.is_zero() {
                0.0
            } else {
                f.requests as f64 / f.window.as_secs_f64()
            },
            error_ratio: ratio(f.errors, f.requests),
            share: ratio(f.requests, all),
            in_progress: f.in_progress,
            proxies_reporting: u32::try_from(f.proxies_reporting).unwrap_or(u32::MAX),
            proxies_routing: u32::try_from(f.proxies_routing).unwrap_or(u32::MAX),
            window_ms: u64::try_from(f.window.as_millis()).unwrap_or(u64::MAX),
        })
        .collect()
}

/// What a proxy's load reports said, as of `now`.
pub(crate) fn load_report(l: &ProxyLoad, now: std::time::Instant) -> pb::LoadReport {
    pb::LoadReport {
        age_ms: l.last_report.map(|t| {
            u64::try_from(now.saturating_duration_since(t).as_millis()).unwrap_or(u64::MAX)
        }),
        reports: l.reports,
        clusters: l
            .clusters
            .iter()
            .map(|(cluster, c)| pb::ClusterLoad {
                cluster: cluster.clone(),
                requests: c.requests,
                errors: c.errors,
                in_progress: c.in_progress,
            })
            .collect(),
    }
}

/// A version as the API's plain string fields carry it: empty for none.
fn version_text(v: Option<&Version>) -> String {
    v.map(Version::to_string).unwrap_or_default()
}

/// The status view as a message.
pub(crate) fn status_view(v: &StatusView) -> pb::StatusResponse {
    pb::StatusResponse {
        version: version_text(v.version.as_ref()),
        services: v.services.iter().map(service_status).collect(),
        cordons: Vec::new(),
        replicas: Vec::new(),
    }
}

fn nack(n: &Nack) -> pb::Nack {
    pb::Nack {
        version: n.version.clone(),
        message: n.message.clone(),
        at_unix_ms: unix_ms(n.at),
    }
}

fn type_status(ty: ResourceType, t: &TypeStatus) -> pb::TypeStatus {
    pb::TypeStatus {
        r#type: ty.short_name().to_owned(),
        subscribed: t.subscribed,
        sent: t.sent.clone(),
        sent_at_unix_ms: t.sent_at.map(unix_ms),
        acked: t.acked.clone(),
        acked_at_unix_ms: t.acked_at.map(unix_ms),
        nack: t.nack.as_ref().map(nack),
    }
}

/// One proxy stream as a message.
pub(crate) fn proxy(p: &ProxyStatus) -> pb::Proxy {
    let node = p.node.as_ref();
    pb::Proxy {
        stream_id: p.stream_id,
        node_id: node.map(|n| n.id.clone()).unwrap_or_default(),
        group: node.map(|n| n.cluster.clone()).unwrap_or_default(),
        user_agent: node.map(|n| n.user_agent.clone()).unwrap_or_default(),
        kind: match p.kind {
            StreamKind::Aggregated => "ADS".to_owned(),
            StreamKind::Single(ty) => ty.short_name().to_owned(),
        },
        delta: p.delta,
        connected_since_unix_ms: unix_ms(p.connected_since),
        types: p.types.iter().map(|(ty, t)| type_status(ty, t)).collect(),
        identity: p.identity.to_string(),
        // Cordons are not part of a proxy's stream; the service adds them.
        cordoned: false,
        cordon_reason: String::new(),
        replica: p.replica.clone().unwrap_or_default(),
        // Load reports are kept apart from the stream; the service adds them.
        load: None,
    }
}

/// Every proxy and the versions their groups should be on.
pub(crate) fn proxies(
    proxies: &[ProxyStatus],
    current: &BTreeMap<String, PerType<String>>,
) -> pb::ProxiesResponse {
    pb::ProxiesResponse {
        proxies: proxies.iter().map(proxy).collect(),
        current_versions: current
            .iter()
            .map(|(group, versions)| {
                let v = pb::TypeVersions {
                    cds: versions[ResourceType::Cluster].clone(),
                    eds: versions[ResourceType::Endpoint].clone(),
                    lds: versions[ResourceType::Listener].clone(),
                    rds: versions[ResourceType::Route].clone(),
                };
                (group.clone(), v)
            })
            .collect(),
    }
}

fn timeout(ms: u64) -> Duration {
    if ms == 0 {
        DEFAULT_TIMEOUT
    } else {
        Duration::from_millis(ms)
    }
}

/// A flip request as an operation.
pub fn flip(r: pb::FlipRequest) -> Result<Operation, RolloutError> {
    Ok(Operation::Flip {
        service: r.service,
        to: r.to.filter(|t| !t.is_empty()),
        skip_checks: r.skip_checks,
        timeout: timeout(r.timeout_ms),
    })
}

/// A shift request as an operation: exactly one of its `steps`,
/// `weights` and `percents` must be given.
pub fn shift(r: pb::ShiftRequest) -> Result<Operation, RolloutError> {
    let given = [
        !r.steps.is_empty(),
        !r.weights.is_empty(),
        !r.percents.is_empty(),
    ];
    let steps = match given {
        [true, false, false] => ShiftSteps::Splits(r.steps.iter().map(split_from).collect()),
        [false, true, false] => ShiftSteps::Weights(r.weights.into_iter().collect()),
        [false, false, true] => ShiftSteps::Percents {
            to: r.to.filter(|t| !t.is_empty()),
            percents: r.percents,
        },
        _ => {
            return Err(RolloutError::Invalid(
                "a shift gives exactly one of steps, weights and percents".into(),
            ));
        }
    };
    Ok(Operation::Shift {
        service: r.service,
        steps,
        interval: Duration::from_millis(r.interval_ms),
        skip_checks: r.skip_checks,
        timeout: timeout(r.timeout_ms),
    })
}

/// A rollback request as an operation.
pub fn rollback(r: pb::RollbackRequest) -> Result<Operation, RolloutError> {
    Ok(Operation::Rollback {
        service: r.service,
        skip_checks: r.skip_checks,
        timeout: timeout(r.timeout_ms),
    })
}

/// A retire request as an operation.
pub fn retire(r: pb::RetireRequest) -> Result<Operation, RolloutError> {
    Ok(Operation::Retire {
        service: r.service,
        fleet: r.fleet,
        after: Duration::from_millis(r.after_ms),
        drain_timeout: r
            .drain_timeout_ms
            .map_or(DEFAULT_DRAIN_TIMEOUT, Duration::from_millis),
    })
}

/// A registered fleet's endpoint from a message: the address parsed as in
/// the config file, weight 0 taken as the default 1. The rest (ranges,
/// repeats, limits) is checked with the whole set by the controller.
fn registered_from(e: &pb::RegisteredEndpoint) -> Result<Registered, RolloutError> {
    Ok(Registered {
        address: crate::config::parse_address(&e.address).map_err(RolloutError::Invalid)?,
        weight: if e.weight == 0 { 1 } else { e.weight },
        zone: e.zone.clone(),
        expires: None,
    })
}

/// A `ChangeFleet` request as the controller takes it, with its `force`.
pub(crate) fn fleet_change(r: &pb::ChangeFleetRequest) -> Result<(Request, bool), RolloutError> {
    let endpoints = || -> Result<Vec<Registered>, RolloutError> {
        r.endpoints.iter().map(registered_from).collect()
    };
    let addresses = || -> Result<Vec<std::net::SocketAddr>, RolloutError> {
        Ok(endpoints()?.into_iter().map(|e| e.address).collect())
    };
    let request = match r.change() {
        pb::FleetChange::Unspecified => {
            return Err(RolloutError::Invalid(
                "say what to change: set, add, remove, register or deregister".into(),
            ));
        }
        pb::FleetChange::Set => Request::Set(endpoints()?),
        pb::FleetChange::Add => Request::Add(endpoints()?),
        pb::FleetChange::Remove => Request::Remove(addresses()?),
        pb::FleetChange::Deregister => Request::Deregister(addresses()?),
        pb::FleetChange::Register => Request::Register {
            endpoints: endpoints()?,
            ttl: Duration::from_millis(r.ttl_ms),
        },
    };
    Ok((request, r.force))
}

/// A `Heartbeat` request as the controller takes it.
pub(crate) fn heartbeat(r: &pb::HeartbeatRequest) -> Result<Request, RolloutError> {
    Ok(Request::Heartbeat {
        addresses: r
            .addresses
            .iter()
            .map(|a| crate::config::parse_address(a).map_err(RolloutError::Invalid))
            .collect::<Result<_, _>>()?,
        ttl: Duration::from_millis(r.ttl_ms),
    })
}

/// A registered endpoint as a message.
pub(crate) fn registered(e: &Registered) -> pb::RegisteredEndpoint {
    pb::RegisteredEndpoint {
        address: e.address.to_string(),
        weight: e.weight,
        zone: e.zone.clone(),
        expires_unix_ms: e.expires.map(unix_ms),
    }
}

/// A fleet as a message.
pub(crate) fn fleet(v: &FleetView) -> pb::FleetResponse {
    let addrs = |a: &[std::net::SocketAddr]| a.iter().map(ToString::to_string).collect();
    pb::FleetResponse {
        service: v.service.clone(),
        fleet: v.fleet.clone(),
        source: v.source.clone(),
        weight: v.weight,
        retired: v.retired,
        endpoints: v.endpoints.iter().map(registered).collect(),
        changes: v
            .changes
            .iter()
            .map(|c| pb::EndpointChange {
                verb: c.verb.as_str().to_owned(),
                actor: c.actor.clone(),
                at_unix_ms: unix_ms(c.at),
                added: addrs(&c.added),
                added_count: c.added_count as u64,
                removed: addrs(&c.removed),
                removed_count: c.removed_count as u64,
            })
            .collect(),
        version: version_text(v.version.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_through_unix_millis() {
        let t = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(unix_ms(t), 1_700_000_000_123);
        assert_eq!(from_unix_ms(unix_ms(t)), t);
        assert_eq!(unix_ms(UNIX_EPOCH - Duration::from_millis(5)), -5);
    }

    #[test]
    fn versions_go_on_the_wire_as_their_string_and_none_as_empty() {
        let mut view = StatusView {
            version: None,
            services: Vec::new(),
        };
        assert_eq!(status_view(&view).version, "");
        view.version = Some(Version::new(4, "ab12"));
        assert_eq!(status_view(&view).version, "4-ab12");
    }

    #[test]
    fn zero_timeout_means_the_default() {
        let op = flip(pb::FlipRequest {
            service: "web".into(),
            to: Some(String::new()),
            skip_checks: false,
            timeout_ms: 0,
        });
        assert_eq!(
            op,
            Ok(Operation::Flip {
                service: "web".into(),
                to: None,
                skip_checks: false,
                timeout: DEFAULT_TIMEOUT
            })
        );
    }

    #[test]
    fn fleet_changes_from_the_wire() {
        let mut r = pb::ChangeFleetRequest {
            service: "web".into(),
            fleet: "green".into(),
            change: pb::FleetChange::Unspecified as i32,
            endpoints: vec![pb::RegisteredEndpoint {
                address: "[::1]:80".into(),
                ..Default::default()
            }],
            ttl_ms: 0,
            force: true,
        };
        assert!(matches!(fleet_change(&r), Err(RolloutError::Invalid(_))));
        r.change = pb::FleetChange::Add as i32;
        let (req, force) = fleet_change(&r).expect("valid");
        assert!(force);
        let Request::Add(e) = req else {
            panic!("{req:?}")
        };
        assert_eq!(e[0].weight, 1, "0 on the wire is the default weight");
        r.endpoints[0].address = "example.com:80".into();
        assert!(matches!(fleet_change(&r), Err(RolloutError::Invalid(_))));
    }
}
