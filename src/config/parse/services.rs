//! `services.<name>` and everything under it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::model::{
    ANALYSIS_WINDOW, Analysis, Check, Endpoint, EndpointSource, Fleet, HealthCheck,
    MAX_ENDPOINT_WEIGHT, OutlierDetection, Protocol, Ratio, Retries, Service, TooFewRequests,
};
use crate::config::yaml::{Node, Value};

use super::values::*;

/// `retry_on` conditions Envoy's router understands.
pub(super) const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "envoy-ratelimited",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "http3-post-connect-failure",
];

pub(super) fn service(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Service> {
    let f = fields(
        cx,
        node,
        path,
        &[
            "fleets",
            "live",
            "protocol",
            "connect_timeout",
            "timeout",
            "retries",
            "health_check",
            "outlier_detection",
            "checks",
            "analysis",
            "kubernetes",
        ],
    )?;
    // Every part is read (and its problems reported) before any missing
    // one makes the service `None`.
    let (fleets, fleet_names, fleets_ok) = fleets(cx, &f);
    let live = live(cx, &f, &fleet_names, &fleets);
    let protocol = protocol(cx, &f);
    let connect_timeout = opt_duration(cx, &f, "connect_timeout", Duration::from_secs(1), false);
    let timeout = match f.get("timeout") {
        None => Some(None),
        Some(node) => duration(cx, node, &f.path("timeout"), true).map(Some),
    };
    let retries = f.get("retries").map(|n| retries(cx, n, &f.path("retries")));
    let health_check = f
        .get("health_check")
        .map(|n| health_check(cx, n, &f.path("health_check")));
    let outlier_detection = f
        .get("outlier_detection")
        .map(|n| outlier_detection(cx, n, &f.path("outlier_detection")));
    let checks = checks(cx, &f);
    let analysis = f
        .get("analysis")
        .map(|n| analysis(cx, n, &f.path("analysis")));
    let route = match f.get("kubernetes") {
        None => Some(None),
        Some(n) => super::kubernetes::service_route(cx, n, &f.path("kubernetes")),
    };
    // A route's backends are Services: with no Kubernetes fleet, none of
    // them could ever be one of this service's fleets.
    if let (Some(Some(r)), Some(n)) = (&route, f.get("kubernetes"))
        && fleets_ok
        && fleets.values().all(|fl| fl.kubernetes().is_none())
    {
        cx.err(
            n.pos,
            &f.path("kubernetes.route"),
            format!(
                "HTTPRoute {r} can drive only fleets whose endpoints come from Kubernetes \
                 (`kubernetes: {{namespace, service}}`), and this service has none"
            ),
        );
    }
    Some(Service {
        route: route?,
        fleets: fleets_ok.then_some(fleets)?,
        live: live?,
        protocol: protocol?,
        connect_timeout: connect_timeout?,
        timeout: timeout?,
        retries: retries.map_or(Some(None), |r| r.map(Some))?,
        health_check: health_check.map_or(Some(None), |r| r.map(Some))?,
        outlier_detection: outlier_detection.map_or(Some(None), |r| r.map(Some))?,
        checks: checks?,
        analysis: analysis.map_or(Some(None), |r| r.map(Some))?,
    })
}

/// The most `analysis.min_requests` may ask for.
const MAX_MIN_REQUESTS: u32 = 10_000_000;

/// `analysis`: thresholds on the error ratio a fleet gaining traffic shows
/// in the proxies' load reports; at least one of the two.
pub(super) fn analysis(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Analysis> {
    let f = fields(
        cx,
        node,
        path,
        &[
            "max_error_ratio",
            "max_error_ratio_over_baseline",
            "min_requests",
            "window",
            "too_few_requests",
        ],
    )?;
    let mut threshold = |key: &str| match f.get(key) {
        None => Some(None),
        Some(n) => below_whole(cx, n, &f.path(key)).map(Some),
    };
    let max = threshold("max_error_ratio");
    let over = threshold("max_error_ratio_over_baseline");
    if f.get("max_error_ratio").is_none() && f.get("max_error_ratio_over_baseline").is_none() {
        cx.err(
            f.pos,
            path,
            "an analysis needs a threshold: max_error_ratio, max_error_ratio_over_baseline, \
             or both",
        );
    }
    let min_requests = opt_uint(cx, &f, "min_requests", 100, 1, MAX_MIN_REQUESTS);
    let window = match f.get("window") {
        None => Some(Duration::from_secs(30)),
        Some(n) => {
            let wpath = f.path("window");
            duration(cx, n, &wpath, false).and_then(|w| {
                let (lo, hi) = ANALYSIS_WINDOW;
                if (lo..=hi).contains(&w) {
                    Some(w)
                } else {
                    cx.err(
                        n.pos,
                        &wpath,
                        format!("window {w:?} is out of range (must be from {lo:?} to {hi:?})"),
                    );
                    None
                }
            })
        }
    };
    let too_few = match f.get("too_few_requests") {
        None => Some(TooFewRequests::default()),
        Some(n) => {
            let tpath = f.path("too_few_requests");
            match text(cx, n, &tpath).as_deref() {
                Some("pass") => Some(TooFewRequests::Pass),
                Some("fail") => Some(TooFewRequests::Fail),
                Some("wait") => Some(TooFewRequests::Wait),
                Some(other) => {
                    cx.err(
                        n.pos,
                        &tpath,
                        format!("unknown policy {other:?} (expected pass, fail or wait)"),
                    );
                    None
                }
                None => None,
            }
        }
    };
    let (max, over) = (max?, over?);
    if max.is_none() && over.is_none() {
        return None;
    }
    Some(Analysis {
        max_error_ratio: max,
        max_error_ratio_over_baseline: over,
        min_requests: min_requests?,
        window: window?,
        too_few_requests: too_few?,
    })
}

/// A percentage below 100%: no error ratio can be over 100%.
fn below_whole(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Ratio> {
    let s = text(cx, node, path)?;
    match Ratio::parse_percent(&s) {
        Ok(r) if r.ppm() < Ratio::WHOLE => Some(r),
        Ok(_) => {
            cx.err(
                node.pos,
                path,
                "100% is no threshold: no error ratio is over it",
            );
            None
        }
        Err(e) => {
            cx.err(node.pos, path, e);
            None
        }
    }
}

/// `fleets`: the fleets that are right, every name given (for the
/// messages about `live`), and whether all were right (and there is one).
fn fleets(cx: &mut Cx<'_>, f: &Fields<'_>) -> (BTreeMap<String, Fleet>, Vec<String>, bool) {
    let mut fleets = BTreeMap::new();
    let mut names = Vec::new();
    let Some(node) = f.required(cx, "fleets") else {
        return (fleets, names, false);
    };
    let Some(entries) = named(cx, node, &f.path("fleets")) else {
        return (fleets, names, false);
    };
    let mut ok = true;
    if entries.is_empty() {
        cx.err(node.pos, &f.path("fleets"), "at least one fleet is needed");
        ok = false;
    }
    for (key, value) in entries {
        let path = join(&f.path("fleets"), &key.text);
        names.push(key.text.clone());
        if !check_name(cx, key, &path, "fleet", true) {
            ok = false;
            continue;
        }
        match fleet(cx, value, &path) {
            Some(fl) => {
                fleets.insert(key.text.clone(), fl);
            }
            None => ok = false,
        }
    }
    (fleets, names, ok)
}

/// `live`: one of the fleets, with endpoints if the file lists them.
fn live(
    cx: &mut Cx<'_>,
    f: &Fields<'_>,
    fleet_names: &[String],
    fleets: &BTreeMap<String, Fleet>,
) -> Option<String> {
    let node = f.required(cx, "live")?;
    let path = f.path("live");
    let name = text(cx, node, &path)?;
    if !fleet_names.contains(&name) {
        cx.err(
            node.pos,
            &path,
            format!(
                "live fleet {name:?} is not one of the fleets ({})",
                fleet_names.join(", ")
            ),
        );
        return None;
    }
    // A fleet whose endpoints come from elsewhere gets them at run time;
    // until then it serves nothing, which `teal status` and `teal fleet
    // show` make plain.
    if let Some(fl) = fleets.get(&name)
        && fl.source.is_file()
        && fl.endpoints.is_empty()
    {
        cx.err(
            node.pos,
            &path,
            format!("live fleet {name:?} has no endpoints"),
        );
        return None;
    }
    Some(name)
}

/// `protocol`: `http1` (the default) or `http2`.
fn protocol(cx: &mut Cx<'_>, f: &Fields<'_>) -> Option<Protocol> {
    let Some(node) = f.get("protocol") else {
        return Some(Protocol::Http1);
    };
    let path = f.path("protocol");
    match text(cx, node, &path).as_deref() {
        Some("http1") => Some(Protocol::Http1),
        Some("http2") => Some(Protocol::Http2),
        Some(other) => {
            cx.err(
                node.pos,
                &path,
                format!("unknown protocol {other:?} (expected http1 or http2)"),
            );
            None
        }
        None => None,
    }
}

/// `checks`: none by default; `None` if any is wrong.
fn checks(cx: &mut Cx<'_>, f: &Fields<'_>) -> Option<BTreeMap<String, Check>> {
    let mut checks = BTreeMap::new();
    let Some(node) = f.get("checks") else {
        return Some(checks);
    };
    let cpath = f.path("checks");
    let entries = named(cx, node, &cpath)?;
    let mut ok = true;
    for (key, value) in entries {
        let path = join(&cpath, &key.text);
        if !check_name(cx, key, &path, "check", false) {
            ok = false;
            continue;
        }
        match check(cx, value, &path) {
            Some(c) => {
                checks.insert(key.text.clone(), c);
            }
            None => ok = false,
        }
    }
    ok.then_some(checks)
}

pub(super) fn fleet(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Fleet> {
    let f = fields(cx, node, path, &["endpoints", "kubernetes"])?;
    if let Some(k) = f.get("kubernetes") {
        if let Some(e) = f.get("endpoints") {
            cx.err(
                e.pos,
                &f.path("endpoints"),
                "a fleet takes its endpoints from `kubernetes` or from `endpoints`, not both",
            );
        }
        let kubernetes = super::kubernetes::kubernetes(cx, k, &f.path("kubernetes"))?;
        return f.get("endpoints").is_none().then_some(Fleet {
            source: EndpointSource::Kubernetes(kubernetes),
            endpoints: Vec::new(),
        });
    }
    let Some(list) = f.get("endpoints") else {
        return Some(Fleet::default());
    };
    let epath = f.path("endpoints");
    let items = match &list.value {
        Value::Null => return Some(Fleet::default()),
        Value::Scalar(s) if s == "registered" => {
            return Some(Fleet {
                source: EndpointSource::Registered,
                endpoints: Vec::new(),
            });
        }
        Value::Scalar(s) => {
            cx.err(
                list.pos,
                &epath,
                format!(
                    "expected a list of endpoints or `registered` (endpoints set through \
                     the admin API), found {s:?}"
                ),
            );
            return None;
        }
        _ => seq(cx, list, &epath)?,
    };
    let mut ok = true;
    let mut endpoints = Vec::new();
    let mut seen: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("{epath}[{i}]");
        match endpoint(cx, item, &path) {
            Some(e) => {
                if let Some(first) = seen.insert(e.address, i) {
                    cx.err(
                        item.pos,
                        &path,
                        format!("endpoint {} is already listed at [{first}]", e.address),
                    );
                    ok = false;
                }
                endpoints.push(e);
            }
            None => ok = false,
        }
    }
    ok.then_some(Fleet {
        source: EndpointSource::File,
        endpoints,
    })
}

pub(super) fn endpoint(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Endpoint> {
    if let Value::Scalar(_) = node.value {
        return Some(Endpoint {
            address: address(cx, node, path)?,
            weight: 1,
            zone: None,
        });
    }
    let f = fields(cx, node, path, &["address", "weight", "zone"])?;
    let address = f
        .required(cx, "address")
        .and_then(|n| address(cx, n, &f.path("address")));
    let weight = opt_uint(cx, &f, "weight", 1, 1, MAX_ENDPOINT_WEIGHT);
    let zone = match f.get("zone") {
        None => Some(None),
        Some(n) => {
            let zpath = f.path("zone");
            text(cx, n, &zpath).and_then(|z| {
                if z.is_empty() {
                    cx.err(n.pos, &zpath, "zone must not be empty");
                    None
                } else if z.len() > crate::config::MAX_ZONE_BYTES || !crate::text::is_plain(&z) {
                    cx.err(
                        n.pos,
                        &zpath,
                        format!(
                            "a zone must be 1 to {} bytes of printable text (no control, \
                             invisible or bidi characters): {}",
                            crate::config::MAX_ZONE_BYTES,
                            crate::text::safe(&z, 80)
                        ),
                    );
                    None
                } else {
                    Some(Some(z))
                }
            })
        }
    };
    Some(Endpoint {
        address: address?,
        weight: weight?,
        zone: zone?,
    })
}

pub(super) fn retries(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Retries> {
    let f = fields(
        cx,
        node,
        path,
        &["retry_on", "num_retries", "per_try_timeout"],
    )?;
    let retry_on = match f.get("retry_on") {
        None => Some("5xx,reset,connect-failure".to_owned()),
        Some(n) => {
            let rpath = f.path("retry_on");
            text(cx, n, &rpath).and_then(|s| {
                let bad: Vec<&str> = s
                    .split(',')
                    .map(str::trim)
                    .filter(|c| !RETRY_ON.contains(c))
                    .collect();
                if bad.is_empty() {
                    Some(s.split(',').map(str::trim).collect::<Vec<_>>().join(","))
                } else {
                    cx.err(
                        n.pos,
                        &rpath,
                        format!(
                            "unknown retry condition {:?} (known: {})",
                            bad.join(","),
                            RETRY_ON.join(", ")
                        ),
                    );
                    None
                }
            })
        }
    };
    let num_retries = opt_uint(cx, &f, "num_retries", 1, 0, 10);
    let per_try_timeout = match f.get("per_try_timeout") {
        None => Some(None),
        Some(n) => duration(cx, n, &f.path("per_try_timeout"), false).map(Some),
    };
    Some(Retries {
        retry_on: retry_on?,
        num_retries: num_retries?,
        per_try_timeout: per_try_timeout?,
    })
}

pub(super) fn health_check(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<HealthCheck> {
    let f = fields(
        cx,
        node,
        path,
        &[
            "path",
            "interval",
            "timeout",
            "healthy_threshold",
            "unhealthy_threshold",
        ],
    )?;
    let hpath = f
        .required(cx, "path")
        .and_then(|n| http_path(cx, n, &f.path("path")));
    let interval = opt_duration(cx, &f, "interval", Duration::from_secs(5), false);
    let timeout = opt_duration(cx, &f, "timeout", Duration::from_secs(1), false);
    let healthy = opt_uint(cx, &f, "healthy_threshold", 2, 1, 100);
    let unhealthy = opt_uint(cx, &f, "unhealthy_threshold", 3, 1, 100);
    Some(HealthCheck {
        path: hpath?,
        interval: interval?,
        timeout: timeout?,
        healthy_threshold: healthy?,
        unhealthy_threshold: unhealthy?,
    })
}

pub(super) fn outlier_detection(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
) -> Option<OutlierDetection> {
    let f = fields(
        cx,
        node,
        path,
        &[
            "consecutive_5xx",
            "interval",
            "base_ejection_time",
            "max_ejection_percent",
        ],
    )?;
    let consecutive_5xx = opt_uint(cx, &f, "consecutive_5xx", 5, 1, 1000);
    let interval = opt_duration(cx, &f, "interval", Duration::from_secs(10), false);
    let base = opt_duration(cx, &f, "base_ejection_time", Duration::from_secs(30), false);
    let max = opt_uint(cx, &f, "max_ejection_percent", 10, 0, 100);
    Some(OutlierDetection {
        consecutive_5xx: consecutive_5xx?,
        interval: interval?,
        base_ejection_time: base?,
        max_ejection_percent: max?,
    })
}

pub(super) fn check(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Check> {
    let f = fields(
        cx,
        node,
        path,
        &["path", "status", "body_contains", "timeout"],
    )?;
    let cpath = f
        .required(cx, "path")
        .and_then(|n| http_path(cx, n, &f.path("path")));
    let status = opt_uint(cx, &f, "status", 200, 100, 599);
    let body = match f.get("body_contains") {
        None => Some(None),
        Some(n) => text(cx, n, &f.path("body_contains")).map(Some),
    };
    let timeout = opt_duration(cx, &f, "timeout", Duration::from_secs(2), false);
    Some(Check {
        path: cpath?,
        // The range check above keeps it within u16.
        status: u16::try_from(status?).ok()?,
        body_contains: body?,
        timeout: timeout?,
    })
}
