//! From YAML text to a [`Config`], collecting every problem on the way.
//!
//! Decoding never stops at the first problem: each part of the file is
//! checked on its own, a part with a problem is left out of the result,
//! and checks that relate parts (a route naming a service, a live fleet
//! with endpoints) only run against the parts that decoded. The caller gets
//! either a fully valid [`Config`] or every [`Diagnostic`], never both.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use super::diag::{Diagnostic, Diagnostics};
use super::model::{
    Check, Config, Endpoint, Fleet, Group, HealthCheck, Listener, ListenerKind, OutlierDetection,
    Protocol, Retries, Route, Service, VirtualHost,
};
use super::yaml::{self, Key, Node, Pos, Value};

/// Highest endpoint weight accepted.
pub(crate) const MAX_ENDPOINT_WEIGHT: u32 = 10_000;

/// `retry_on` conditions Envoy's router understands.
const RETRY_ON: &[&str] = &[
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

struct Cx<'a> {
    file: &'a str,
    diags: Vec<Diagnostic>,
}

impl Cx<'_> {
    fn err(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.diags.push(Diagnostic {
            file: self.file.to_owned(),
            line: pos.line,
            column: pos.col,
            path: path.to_owned(),
            message: message.into(),
        });
    }

    fn expected(&mut self, node: &Node, path: &str, what: &str) {
        let found = node.kind();
        self.err(node.pos, path, format!("expected {what}, found {found}"));
    }
}

/// The entries of a mapping whose keys were checked against a list.
struct Fields<'n> {
    pos: Pos,
    path: String,
    entries: &'n [(Key, Node)],
}

impl<'n> Fields<'n> {
    fn get(&self, key: &str) -> Option<&'n Node> {
        self.entries
            .iter()
            .find(|(k, _)| k.text == key)
            .map(|(_, v)| v)
    }

    fn path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    fn required(&self, cx: &mut Cx<'_>, key: &str) -> Option<&'n Node> {
        let found = self.get(key);
        if found.is_none() {
            cx.err(
                self.pos,
                &self.path,
                format!("missing required key `{key}`"),
            );
        }
        found
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn fields<'n>(cx: &mut Cx<'_>, node: &'n Node, path: &str, allowed: &[&str]) -> Option<Fields<'n>> {
    let Value::Map(entries) = &node.value else {
        cx.expected(node, path, "a mapping");
        return None;
    };
    for (key, _) in entries {
        if !allowed.contains(&key.text.as_str()) {
            cx.err(
                key.pos,
                &join(path, &key.text),
                format!(
                    "unknown key {:?} (expected one of: {})",
                    key.text,
                    allowed.join(", ")
                ),
            );
        }
    }
    Some(Fields {
        pos: node.pos,
        path: path.to_owned(),
        entries,
    })
}

/// A mapping whose keys are names chosen by the user.
fn named<'n>(cx: &mut Cx<'_>, node: &'n Node, path: &str) -> Option<&'n [(Key, Node)]> {
    match &node.value {
        Value::Map(entries) => Some(entries),
        _ => {
            cx.expected(node, path, "a mapping of names");
            None
        }
    }
}

fn seq<'n>(cx: &mut Cx<'_>, node: &'n Node, path: &str) -> Option<&'n [Node]> {
    match &node.value {
        Value::Seq(items) => Some(items),
        _ => {
            cx.expected(node, path, "a list");
            None
        }
    }
}

fn text(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<String> {
    match &node.value {
        Value::Scalar(s) => Some(s.clone()),
        _ => {
            cx.expected(node, path, "a string");
            None
        }
    }
}

fn uint(cx: &mut Cx<'_>, node: &Node, path: &str, min: u32, max: u32) -> Option<u32> {
    let s = text(cx, node, path)?;
    match s.parse::<u32>() {
        Ok(n) if (min..=max).contains(&n) => Some(n),
        Ok(n) => {
            cx.err(
                node.pos,
                path,
                format!("{n} is out of range (must be from {min} to {max})"),
            );
            None
        }
        Err(_) => {
            cx.err(
                node.pos,
                path,
                format!("expected a whole number from {min} to {max}, found {s:?}"),
            );
            None
        }
    }
}

/// Parses `250ms`, `5s`, `1m`, `1h` and sums like `1m30s`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err("empty duration".to_owned());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "bad duration {s:?}: expected a number followed by ms, s, m or h"
            ));
        }
        let (num, tail) = rest.split_at(digits);
        let unit_len = tail.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, tail) = tail.split_at(unit_len);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("bad duration {s:?}: number too large"))?;
        let millis_per = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" if tail.starts_with('.') => {
                return Err(format!(
                    "bad duration {s:?}: fractions are not supported (write 1500ms, not 1.5s)"
                ));
            }
            "" => {
                return Err(format!(
                    "bad duration {s:?}: missing unit (use ms, s, m or h)"
                ));
            }
            other => {
                return Err(format!(
                    "bad duration {s:?}: unknown unit {other:?} (use ms, s, m or h)"
                ));
            }
        };
        let part = n
            .checked_mul(millis_per)
            .ok_or_else(|| format!("bad duration {s:?}: too long"))?;
        total = total
            .checked_add(Duration::from_millis(part))
            .ok_or_else(|| format!("bad duration {s:?}: too long"))?;
        rest = tail;
    }
    // Envoy's Duration seconds are bounded; a day is plenty for any of ours.
    if total > Duration::from_secs(86_400) {
        return Err(format!("bad duration {s:?}: longer than 24h"));
    }
    Ok(total)
}

fn duration(cx: &mut Cx<'_>, node: &Node, path: &str, allow_zero: bool) -> Option<Duration> {
    let s = text(cx, node, path)?;
    match parse_duration(&s) {
        Ok(d) if d.is_zero() && !allow_zero => {
            cx.err(
                node.pos,
                path,
                format!("duration {s:?} must be more than 0"),
            );
            None
        }
        Ok(d) => Some(d),
        Err(e) => {
            cx.err(node.pos, path, e);
            None
        }
    }
}

fn opt_duration(
    cx: &mut Cx<'_>,
    f: &Fields<'_>,
    key: &str,
    default: Duration,
    allow_zero: bool,
) -> Option<Duration> {
    match f.get(key) {
        None => Some(default),
        Some(node) => duration(cx, node, &f.path(key), allow_zero),
    }
}

fn opt_uint(
    cx: &mut Cx<'_>,
    f: &Fields<'_>,
    key: &str,
    default: u32,
    min: u32,
    max: u32,
) -> Option<u32> {
    match f.get(key) {
        None => Some(default),
        Some(node) => uint(cx, node, &f.path(key), min, max),
    }
}

/// Parses `IP:PORT` (IPv6 as `[::1]:PORT`).
pub(crate) fn parse_address(s: &str) -> Result<SocketAddr, String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!("bad address {s:?}: expected IP:PORT"));
    };
    let port: u16 = match port.parse() {
        Ok(p) if p != 0 => p,
        _ => {
            return Err(format!(
                "bad address {s:?}: port must be a number from 1 to 65535"
            ));
        }
    };
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let ip: IpAddr = bare.parse().map_err(|_| {
        format!("bad address {s:?}: {host:?} is not an IP address (names are not resolved)")
    })?;
    if ip.is_ipv6() && !host.starts_with('[') {
        return Err(format!(
            "bad address {s:?}: write IPv6 addresses in brackets, like [::1]:8080"
        ));
    }
    Ok(SocketAddr::new(ip, port))
}

fn address(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<SocketAddr> {
    let s = text(cx, node, path)?;
    match parse_address(&s) {
        Ok(a) => Some(a),
        Err(e) => {
            cx.err(node.pos, path, e);
            None
        }
    }
}

/// Service and fleet names: they become cluster names and host names.
fn is_dns_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && !s.ends_with('-')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

/// Group, listener and virtual host names.
fn is_plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn check_name(cx: &mut Cx<'_>, key: &Key, path: &str, what: &str, dns: bool) -> bool {
    let ok = if dns {
        is_dns_name(&key.text)
    } else {
        is_plain_name(&key.text)
    };
    if !ok {
        let rule = if dns {
            "use lowercase letters, digits and '-', starting with a letter (at most 63)"
        } else {
            "use letters, digits, '-', '_' and '.'"
        };
        cx.err(
            key.pos,
            path,
            format!("invalid {what} name {:?}: {rule}", key.text),
        );
    }
    ok
}

fn http_path(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<String> {
    let s = text(cx, node, path)?;
    if !s.starts_with('/') || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        cx.err(
            node.pos,
            path,
            format!("bad path {s:?}: must start with '/' and contain no spaces"),
        );
        return None;
    }
    Some(s)
}

/// Decodes and checks a whole file.
pub(crate) fn parse(text_: &str, file: &str) -> Result<Config, Diagnostics> {
    let mut cx = Cx {
        file,
        diags: Vec::new(),
    };
    let config = match yaml::load(text_) {
        Err(errors) => {
            for e in errors {
                cx.err(e.pos, "", e.message);
            }
            None
        }
        Ok(None) => {
            cx.err(
                Pos { line: 1, col: 1 },
                "",
                "the file is empty: it needs `services` and `groups`",
            );
            None
        }
        Ok(Some(root)) => config(&mut cx, &root),
    };
    let mut diags = cx.diags;
    match config {
        Some(config) if diags.is_empty() => Ok(config),
        _ => {
            diags.sort_by_key(|d| (d.line, d.column));
            diags.dedup();
            Err(Diagnostics(diags))
        }
    }
}

fn config(cx: &mut Cx<'_>, root: &Node) -> Option<Config> {
    let f = fields(cx, root, "", &["services", "groups"])?;
    let mut services = BTreeMap::new();
    // Names of every service written, valid or not, so that a route to a
    // broken service is not also reported as a route to a missing one.
    let mut service_names = BTreeSet::new();
    if let Some(node) = f.required(cx, "services")
        && let Some(entries) = named(cx, node, "services")
    {
        if entries.is_empty() {
            cx.err(node.pos, "services", "at least one service is needed");
        }
        let mut clusters: BTreeMap<String, (String, String)> = BTreeMap::new();
        for (key, value) in entries {
            let path = join("services", &key.text);
            service_names.insert(key.text.clone());
            if !check_name(cx, key, &path, "service", true) {
                continue;
            }
            if let Some(s) = service(cx, value, &path) {
                for fleet in s.fleets.keys() {
                    let cluster = format!("{}-{fleet}", key.text);
                    if let Some((other_s, other_f)) = clusters.get(&cluster) {
                        cx.err(
                            key.pos,
                            &path,
                            format!(
                                "cluster name {cluster:?} of fleet {fleet:?} is also the name of \
                                 service {other_s:?} fleet {other_f:?}; rename one"
                            ),
                        );
                    } else {
                        clusters.insert(cluster, (key.text.clone(), fleet.clone()));
                    }
                }
                services.insert(key.text.clone(), s);
            }
        }
    }
    let mut groups = BTreeMap::new();
    if let Some(node) = f.required(cx, "groups")
        && let Some(entries) = named(cx, node, "groups")
    {
        if entries.is_empty() {
            cx.err(node.pos, "groups", "at least one group is needed");
        }
        for (key, value) in entries {
            let path = join("groups", &key.text);
            if !check_name(cx, key, &path, "group", false) {
                continue;
            }
            if let Some(g) = group(cx, value, &path, &service_names) {
                groups.insert(key.text.clone(), g);
            }
        }
    }
    Some(Config { services, groups })
}

fn service(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Service> {
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
        ],
    )?;
    let mut ok = true;
    let mut fleets = BTreeMap::new();
    let mut fleet_names = Vec::new();
    match f.required(cx, "fleets") {
        None => ok = false,
        Some(node) => match named(cx, node, &f.path("fleets")) {
            None => ok = false,
            Some(entries) => {
                if entries.is_empty() {
                    cx.err(node.pos, &f.path("fleets"), "at least one fleet is needed");
                    ok = false;
                }
                for (key, value) in entries {
                    let path = join(&f.path("fleets"), &key.text);
                    fleet_names.push(key.text.clone());
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
            }
        },
    }
    let live = f.required(cx, "live").and_then(|node| {
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
        if let Some(fl) = fleets.get(&name)
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
    });
    let protocol = match f.get("protocol") {
        None => Some(Protocol::Http1),
        Some(node) => {
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
    };
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
    let mut checks = BTreeMap::new();
    if let Some(node) = f.get("checks") {
        let cpath = f.path("checks");
        match named(cx, node, &cpath) {
            None => ok = false,
            Some(entries) => {
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
            }
        }
    }
    Some(Service {
        fleets: ok.then_some(fleets)?,
        live: live?,
        protocol: protocol?,
        connect_timeout: connect_timeout?,
        timeout: timeout?,
        retries: retries.map_or(Some(None), |r| r.map(Some))?,
        health_check: health_check.map_or(Some(None), |r| r.map(Some))?,
        outlier_detection: outlier_detection.map_or(Some(None), |r| r.map(Some))?,
        checks,
    })
}

fn fleet(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Fleet> {
    let f = fields(cx, node, path, &["endpoints"])?;
    let Some(list) = f.get("endpoints") else {
        return Some(Fleet::default());
    };
    let epath = f.path("endpoints");
    let items = match &list.value {
        Value::Null => return Some(Fleet::default()),
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
    ok.then_some(Fleet { endpoints })
}

fn endpoint(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Endpoint> {
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

fn retries(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Retries> {
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

fn health_check(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<HealthCheck> {
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

fn outlier_detection(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<OutlierDetection> {
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

fn check(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Check> {
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

fn group(cx: &mut Cx<'_>, node: &Node, path: &str, services: &BTreeSet<String>) -> Option<Group> {
    let f = fields(cx, node, path, &["listeners"])?;
    let list = f.required(cx, "listeners")?;
    let lpath = f.path("listeners");
    let entries = match &list.value {
        Value::Null => &[][..],
        _ => named(cx, list, &lpath)?,
    };
    if entries.is_empty() {
        cx.err(list.pos, &lpath, "a group needs at least one listener");
        return None;
    }
    let mut ok = true;
    let mut listeners = BTreeMap::new();
    let mut addresses: BTreeMap<SocketAddr, String> = BTreeMap::new();
    for (key, value) in entries {
        let path = join(&lpath, &key.text);
        if !check_name(cx, key, &path, "listener", false) {
            ok = false;
            continue;
        }
        match listener(cx, value, &path, services) {
            Some(l) => {
                if let Some(other) = addresses.get(&l.address) {
                    cx.err(
                        value.pos,
                        &join(&path, "address"),
                        format!(
                            "address {} is already used by listener {other:?}",
                            l.address
                        ),
                    );
                    ok = false;
                } else {
                    addresses.insert(l.address, key.text.clone());
                }
                listeners.insert(key.text.clone(), l);
            }
            None => ok = false,
        }
    }
    ok.then_some(Group { listeners })
}

fn service_ref(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    services: &BTreeSet<String>,
) -> Option<String> {
    let name = text(cx, node, path)?;
    if services.contains(&name) {
        Some(name)
    } else {
        let known: Vec<&str> = services.iter().map(String::as_str).collect();
        cx.err(
            node.pos,
            path,
            format!("unknown service {name:?} (known: {})", known.join(", ")),
        );
        None
    }
}

fn listener(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    services: &BTreeSet<String>,
) -> Option<Listener> {
    let f = fields(
        cx,
        node,
        path,
        &["kind", "address", "virtual_hosts", "services"],
    )?;
    let address = f
        .required(cx, "address")
        .and_then(|n| address(cx, n, &f.path("address")));
    let kind_node = f.required(cx, "kind")?;
    let kpath = f.path("kind");
    let kind = match text(cx, kind_node, &kpath)?.as_str() {
        "edge" => {
            if let Some(n) = f.get("services") {
                cx.err(
                    n.pos,
                    &f.path("services"),
                    "`services` belongs to sidecar listeners; edge listeners use `virtual_hosts`",
                );
            }
            let vnode = f.required(cx, "virtual_hosts")?;
            edge(cx, vnode, &f.path("virtual_hosts"), services)?
        }
        "sidecar" => {
            if let Some(n) = f.get("virtual_hosts") {
                cx.err(
                    n.pos,
                    &f.path("virtual_hosts"),
                    "`virtual_hosts` belongs to edge listeners; sidecar listeners use `services`",
                );
            }
            let snode = f.required(cx, "services")?;
            sidecar(cx, snode, &f.path("services"), services)?
        }
        other => {
            cx.err(
                kind_node.pos,
                &kpath,
                format!("unknown listener kind {other:?} (expected edge or sidecar)"),
            );
            return None;
        }
    };
    Some(Listener {
        address: address?,
        kind,
    })
}

fn edge(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    services: &BTreeSet<String>,
) -> Option<ListenerKind> {
    let entries = named(cx, node, path)?;
    if entries.is_empty() {
        cx.err(
            node.pos,
            path,
            "an edge listener needs at least one virtual host",
        );
        return None;
    }
    let mut ok = true;
    let mut virtual_hosts = BTreeMap::new();
    let mut domains_seen: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in entries {
        let vpath = join(path, &key.text);
        if !check_name(cx, key, &vpath, "virtual host", false) {
            ok = false;
            continue;
        }
        let Some(f) = fields(cx, value, &vpath, &["domains", "routes"]) else {
            ok = false;
            continue;
        };
        let mut domains = Vec::new();
        if let Some(dnode) = f.required(cx, "domains")
            && let Some(items) = seq(cx, dnode, &f.path("domains"))
        {
            if items.is_empty() {
                cx.err(
                    dnode.pos,
                    &f.path("domains"),
                    "at least one domain is needed",
                );
                ok = false;
            }
            for (i, item) in items.iter().enumerate() {
                let dpath = format!("{}[{i}]", f.path("domains"));
                let Some(d) = text(cx, item, &dpath) else {
                    ok = false;
                    continue;
                };
                if d.is_empty() || d.contains(char::is_whitespace) {
                    cx.err(item.pos, &dpath, format!("bad domain {d:?}"));
                    ok = false;
                } else if let Some(other) = domains_seen.get(&d.to_ascii_lowercase()) {
                    cx.err(
                        item.pos,
                        &dpath,
                        format!("domain {d:?} is already served by virtual host {other:?}"),
                    );
                    ok = false;
                } else {
                    domains_seen.insert(d.to_ascii_lowercase(), key.text.clone());
                    domains.push(d);
                }
            }
        } else {
            ok = false;
        }
        let mut routes = Vec::new();
        if let Some(rnode) = f.required(cx, "routes")
            && let Some(items) = seq(cx, rnode, &f.path("routes"))
        {
            if items.is_empty() {
                cx.err(rnode.pos, &f.path("routes"), "at least one route is needed");
                ok = false;
            }
            for (i, item) in items.iter().enumerate() {
                let rpath = format!("{}[{i}]", f.path("routes"));
                let Some(rf) = fields(cx, item, &rpath, &["prefix", "service"]) else {
                    ok = false;
                    continue;
                };
                let prefix = rf
                    .required(cx, "prefix")
                    .and_then(|n| http_path(cx, n, &rf.path("prefix")));
                let service = rf
                    .required(cx, "service")
                    .and_then(|n| service_ref(cx, n, &rf.path("service"), services));
                match (prefix, service) {
                    (Some(prefix), Some(service)) => routes.push(Route { prefix, service }),
                    _ => ok = false,
                }
            }
        } else {
            ok = false;
        }
        virtual_hosts.insert(key.text.clone(), VirtualHost { domains, routes });
    }
    ok.then_some(ListenerKind::Edge { virtual_hosts })
}

fn sidecar(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    services: &BTreeSet<String>,
) -> Option<ListenerKind> {
    let items = seq(cx, node, path)?;
    if items.is_empty() {
        cx.err(
            node.pos,
            path,
            "a sidecar listener needs at least one service",
        );
        return None;
    }
    let mut ok = true;
    let mut names = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let spath = format!("{path}[{i}]");
        match service_ref(cx, item, &spath, services) {
            Some(name) if names.contains(&name) => {
                cx.err(
                    item.pos,
                    &spath,
                    format!("service {name:?} is listed twice"),
                );
                ok = false;
            }
            Some(name) => names.push(name),
            None => ok = false,
        }
    }
    names.sort();
    ok.then_some(ListenerKind::Sidecar { services: names })
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
