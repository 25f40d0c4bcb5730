//! From YAML text to a [`Config`], collecting every problem on the way.
//!
//! Decoding never stops at the first problem: each part of the file is
//! checked on its own, a part with a problem is left out of the result,
//! and checks that relate parts (a route naming a service, a live fleet
//! with endpoints) only run against the parts that decoded. The caller gets
//! either a fully valid [`Config`] or every [`Diagnostic`], never both.
//!
//! - [`values`]: the context that collects problems, and readers for
//!   scalars (names, numbers, durations, addresses, paths).
//! - [`services`]: `services` and everything under them.
//! - This file: the top level, proxy groups and their listeners.

mod kubernetes;
mod services;
mod values;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use crate::config::diag::Diagnostics;
use crate::config::limits::Limits;
use crate::config::model::{Config, Group, Listener, ListenerKind, PathMatch, Route, VirtualHost};
use crate::config::yaml::{self, Key, Node, Pos, Value};
use crate::transport::identity::IdentityPattern;

use services::service;
pub(crate) use values::parse_address;
use values::*;

/// Most known service names an "unknown service" message lists.
const MAX_KNOWN_LISTED: usize = 10;

/// Decodes and checks a whole file. The walk below follows the format's
/// fixed shape, never the file's nesting, so it recurses a bounded number
/// of times whatever the input; `limits` bound the tree it walks.
pub(crate) fn parse(text_: &str, file: &str, limits: &Limits) -> Result<Config, Diagnostics> {
    let mut cx = Cx {
        file,
        diags: Vec::new(),
    };
    let config = match yaml::load(text_, limits) {
        Err(errors) => {
            for e in errors {
                cx.err(e.pos, &e.path, e.message);
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
            crate::config::diag::clamp_to(&mut diags, text_);
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
    // Where each service and group was written, for problems between them.
    let mut at: BTreeMap<String, Pos> = BTreeMap::new();
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
                at.insert(join("services", &key.text), key.pos);
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
                at.insert(join("groups", &key.text), key.pos);
                groups.insert(key.text.clone(), g);
            }
        }
    }
    one_owner_each(cx, &services, &groups, &at);
    Some(Config { services, groups })
}

/// Two services driven by one `HTTPRoute`, or two groups implementing one
/// `Gateway`, would each take the other's changes: refused.
fn one_owner_each(
    cx: &mut Cx<'_>,
    services: &BTreeMap<String, crate::config::model::Service>,
    groups: &BTreeMap<String, Group>,
    at: &BTreeMap<String, Pos>,
) {
    let pos = |path: &str| at.get(path).copied().unwrap_or_default();
    let mut seen = BTreeMap::new();
    for (name, s) in services {
        if let Some(r) = s.route()
            && let Some(other) = seen.insert(r.clone(), name)
        {
            let path = join("services", name);
            cx.err(
                pos(&path),
                &join(&path, "kubernetes.route"),
                format!(
                    "HTTPRoute {r} already drives service {other:?}; a route drives one service"
                ),
            );
        }
    }
    let mut seen = BTreeMap::new();
    for (name, g) in groups {
        if let Some(r) = g.gateway()
            && let Some(other) = seen.insert(r.clone(), name)
        {
            let path = join("groups", name);
            cx.err(
                pos(&path),
                &join(&path, "kubernetes.gateway"),
                format!("Gateway {r} is already implemented by group {other:?}"),
            );
        }
    }
}

fn group(cx: &mut Cx<'_>, node: &Node, path: &str, services: &BTreeSet<String>) -> Option<Group> {
    let f = fields(cx, node, path, &["listeners", "identities", "kubernetes"])?;
    let gateway = match f.get("kubernetes") {
        None => Some(None),
        Some(n) => kubernetes::group_gateway(cx, n, &f.path("kubernetes")),
    };
    let identities = match f.get("identities") {
        None => Some(Vec::new()),
        Some(list) => identities(cx, list, &f.path("identities")),
    };
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
    // Listener and RouteConfiguration names, to the config listener that
    // produces them: two listeners must never produce the same name.
    let mut resource_names: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in entries {
        let path = join(&lpath, &key.text);
        if !check_name(cx, key, &path, "listener", false) {
            ok = false;
            continue;
        }
        let Some((l, names)) = listener(cx, key, value, &path, services) else {
            ok = false;
            continue;
        };
        if let Some(address) = l.address() {
            if let Some(other) = addresses.get(&address) {
                cx.err(
                    value.pos,
                    &join(&path, "address"),
                    format!("address {address} is already used by listener {other:?}"),
                );
                ok = false;
            } else {
                addresses.insert(address, key.text.clone());
            }
        }
        for (name, pos, npath) in names {
            if let Some(other) = resource_names.get(&name) {
                // Keys are unique, so one of the two is a grpc listener.
                cx.err(
                    pos,
                    &npath,
                    format!(
                        "listener name {name:?} is already used by listener {other:?} \
                         (a grpc listener names its Listener and RouteConfiguration after \
                         each of its services); rename one"
                    ),
                );
                ok = false;
            } else {
                resource_names.insert(name, key.text.clone());
            }
        }
        listeners.insert(key.text.clone(), l);
    }
    let identities = identities?;
    let gateway = gateway?;
    ok.then_some(Group {
        listeners,
        identities,
        gateway,
    })
}

/// `groups.<name>.identities`: a non-empty list of identity patterns.
fn identities(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Vec<IdentityPattern>> {
    let items = seq(cx, node, path)?;
    if items.is_empty() {
        cx.err(
            node.pos,
            path,
            "an empty list would admit no proxy at all; list at least one identity \
             (or remove the key to admit any)",
        );
        return None;
    }
    let mut ok = true;
    let mut patterns = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let ipath = format!("{path}[{i}]");
        let Some(t) = text(cx, item, &ipath) else {
            ok = false;
            continue;
        };
        match IdentityPattern::parse(&t) {
            Ok(p) => patterns.push(p),
            Err(e) => {
                cx.err(item.pos, &ipath, format!("bad identity {t:?}: {e}"));
                ok = false;
            }
        }
    }
    ok.then_some(patterns)
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
        // A few names help; all of them, repeated for each of thousands
        // of bad references, would make the report grow with the square
        // of the file.
        let mut known: Vec<&str> = services
            .iter()
            .take(MAX_KNOWN_LISTED)
            .map(String::as_str)
            .collect();
        let more = services.len().saturating_sub(MAX_KNOWN_LISTED);
        let more = format!("and {more} more");
        if services.len() > MAX_KNOWN_LISTED {
            known.push(&more);
        }
        cx.err(
            node.pos,
            path,
            format!("unknown service {name:?} (known: {})", known.join(", ")),
        );
        None
    }
}

/// A resource name a listener produces, with where it comes from.
type NameAt = (String, Pos, String);

/// One listener, and the Listener/RouteConfiguration names it produces.
fn listener(
    cx: &mut Cx<'_>,
    key: &Key,
    node: &Node,
    path: &str,
    services: &BTreeSet<String>,
) -> Option<(Listener, Vec<NameAt>)> {
    let f = fields(
        cx,
        node,
        path,
        &["kind", "address", "virtual_hosts", "services"],
    )?;
    // Read before the kind, so a bad address is reported even when the
    // kind is missing or unknown.
    let address_node = f.get("address");
    let parsed_address = address_node.map(|n| address(cx, n, &f.path("address")));
    let kind_node = f.required(cx, "kind")?;
    let kpath = f.path("kind");
    let own_name = || vec![(key.text.clone(), key.pos, path.to_owned())];
    let kind = text(cx, kind_node, &kpath)?;
    if !matches!(kind.as_str(), "edge" | "sidecar" | "grpc") {
        cx.err(
            kind_node.pos,
            &kpath,
            format!("unknown listener kind {kind:?} (expected edge, sidecar or grpc)"),
        );
        return None;
    }
    if kind == "grpc" {
        return grpc_listener(cx, &f, services);
    }
    // Problems in the order the fields are read: the other kind's field,
    // the address, then this kind's field.
    let need_address = |cx: &mut Cx<'_>| {
        if address_node.is_none() {
            f.required(cx, "address");
        }
    };
    let kind = if kind == "edge" {
        misplaced(
            cx,
            &f,
            "services",
            "`services` belongs to sidecar and grpc listeners; edge listeners use \
             `virtual_hosts`",
        );
        need_address(cx);
        let vnode = f.required(cx, "virtual_hosts")?;
        let virtual_hosts = edge(cx, vnode, &f.path("virtual_hosts"), services)?;
        ListenerKind::Edge {
            address: parsed_address??,
            virtual_hosts,
        }
    } else {
        misplaced(
            cx,
            &f,
            "virtual_hosts",
            "`virtual_hosts` belongs to edge listeners; sidecar listeners use `services`",
        );
        need_address(cx);
        let snode = f.required(cx, "services")?;
        let (names, _) = service_list(cx, snode, &f.path("services"), "sidecar", services)?;
        ListenerKind::Sidecar {
            address: parsed_address??,
            services: names,
        }
    };
    Some((Listener { kind }, own_name()))
}

/// A grpc listener: services, no address (its clients open no port).
fn grpc_listener(
    cx: &mut Cx<'_>,
    f: &Fields<'_>,
    services: &BTreeSet<String>,
) -> Option<(Listener, Vec<NameAt>)> {
    misplaced(
        cx,
        f,
        "virtual_hosts",
        "`virtual_hosts` belongs to edge listeners; grpc listeners use `services`",
    );
    let address_node = f.get("address");
    if let Some(n) = address_node {
        cx.err(
            n.pos,
            &f.path("address"),
            "a grpc listener has no `address`: proxyless gRPC clients fetch it \
             by name (`xds:///SERVICE`) and open no port",
        );
    }
    let snode = f.required(cx, "services")?;
    let (names, at) = service_list(cx, snode, &f.path("services"), "grpc", services)?;
    address_node.is_none().then_some((
        Listener {
            kind: ListenerKind::Grpc { services: names },
        },
        at,
    ))
}

/// Reports `field`, if given, as belonging to another kind of listener.
fn misplaced(cx: &mut Cx<'_>, f: &Fields<'_>, field: &str, message: &str) {
    if let Some(n) = f.get(field) {
        cx.err(n.pos, &f.path(field), message);
    }
}

fn edge(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    services: &BTreeSet<String>,
) -> Option<BTreeMap<String, VirtualHost>> {
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
        let domains = domains(cx, &f, &key.text, &mut domains_seen);
        let routes = routes(cx, &f, services);
        let (Some(domains), Some(routes)) = (domains, routes) else {
            ok = false;
            continue;
        };
        virtual_hosts.insert(key.text.clone(), VirtualHost { domains, routes });
    }
    ok.then_some(virtual_hosts)
}

/// A virtual host's `domains`: at least one, none served by another
/// virtual host of the listener (`seen`: lowercased domain → virtual
/// host). `None` if any is wrong.
fn domains(
    cx: &mut Cx<'_>,
    f: &Fields<'_>,
    vhost: &str,
    seen: &mut BTreeMap<String, String>,
) -> Option<Vec<String>> {
    let dnode = f.required(cx, "domains")?;
    let items = seq(cx, dnode, &f.path("domains"))?;
    let mut ok = true;
    if items.is_empty() {
        cx.err(
            dnode.pos,
            &f.path("domains"),
            "at least one domain is needed",
        );
        ok = false;
    }
    let mut domains = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let dpath = format!("{}[{i}]", f.path("domains"));
        let Some(d) = text(cx, item, &dpath) else {
            ok = false;
            continue;
        };
        if d.is_empty() || d.contains(char::is_whitespace) {
            cx.err(item.pos, &dpath, format!("bad domain {d:?}"));
            ok = false;
        } else if let Some(other) = seen.get(&d.to_ascii_lowercase()) {
            cx.err(
                item.pos,
                &dpath,
                format!("domain {d:?} is already served by virtual host {other:?}"),
            );
            ok = false;
        } else {
            seen.insert(d.to_ascii_lowercase(), vhost.to_owned());
            domains.push(d);
        }
    }
    ok.then_some(domains)
}

/// A virtual host's `routes`: at least one. `None` if any is wrong.
fn routes(cx: &mut Cx<'_>, f: &Fields<'_>, services: &BTreeSet<String>) -> Option<Vec<Route>> {
    let rnode = f.required(cx, "routes")?;
    let items = seq(cx, rnode, &f.path("routes"))?;
    let mut ok = true;
    if items.is_empty() {
        cx.err(rnode.pos, &f.path("routes"), "at least one route is needed");
        ok = false;
    }
    let mut routes = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let rpath = format!("{}[{i}]", f.path("routes"));
        let Some(rf) = fields(cx, item, &rpath, &["prefix", "regex", "service"]) else {
            ok = false;
            continue;
        };
        let path = route_path(cx, &rf);
        let service = rf
            .required(cx, "service")
            .and_then(|n| service_ref(cx, n, &rf.path("service"), services));
        match (path, service) {
            (Some(path), Some(service)) => routes.push(Route { path, service }),
            _ => ok = false,
        }
    }
    ok.then_some(routes)
}

/// A route's path match: exactly one of `prefix` and `regex`.
fn route_path(cx: &mut Cx<'_>, rf: &Fields<'_>) -> Option<PathMatch> {
    match (rf.get("prefix"), rf.get("regex")) {
        (Some(prefix), None) => http_path(cx, prefix, &rf.path("prefix")).map(PathMatch::Prefix),
        (None, Some(regex)) => path_regex(cx, regex, &rf.path("regex")).map(PathMatch::Regex),
        (Some(_), Some(regex)) => {
            cx.err(
                regex.pos,
                &rf.path("regex"),
                "a route takes `prefix` or `regex`, not both",
            );
            None
        }
        (None, None) => {
            cx.err(
                rf.pos,
                &rf.path,
                "missing required key `prefix` (or `regex`)",
            );
            None
        }
    }
}

/// The `services` list of a sidecar or grpc listener: sorted names, and
/// each name with where it was written.
fn service_list(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
    kind: &str,
    services: &BTreeSet<String>,
) -> Option<(Vec<String>, Vec<NameAt>)> {
    let items = seq(cx, node, path)?;
    if items.is_empty() {
        cx.err(
            node.pos,
            path,
            format!("a {kind} listener needs at least one service"),
        );
        return None;
    }
    let mut ok = true;
    // A set, not a scan of the list: a listener may list every service.
    let mut names = BTreeSet::new();
    let mut at = Vec::new();
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
            Some(name) => {
                names.insert(name.clone());
                at.push((name, item.pos, spath));
            }
            None => ok = false,
        }
    }
    ok.then_some((names.into_iter().collect(), at))
}

#[cfg(test)]
#[path = "parse_tests.rs"]
mod tests;
