//! `fleets.<name>.kubernetes`: a fleet whose endpoints are a Kubernetes
//! Service's ready EndpointSlice endpoints.

use crate::config::model::{DEFAULT_SLICE_MANAGER, KubernetesFleet, KubernetesPort, KubernetesRef};
use crate::config::yaml::Node;

use super::values::*;

/// `{namespace, service [, port] [, managed_by]}`; `None` (with every
/// problem reported) if any part is wrong.
pub(super) fn kubernetes(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<KubernetesFleet> {
    let f = fields(
        cx,
        node,
        path,
        &["namespace", "service", "port", "managed_by"],
    )?;
    // A label selector and a URL path are built from these: only names
    // Kubernetes itself accepts get that far.
    let namespace = f
        .required(cx, "namespace")
        .and_then(|n| label(cx, n, &f.path("namespace"), "namespace"));
    let service = f
        .required(cx, "service")
        .and_then(|n| label(cx, n, &f.path("service"), "service"));
    let port = match f.get("port") {
        None => Some(None),
        Some(n) => port(cx, n, &f.path("port")).map(Some),
    };
    let managed_by = match f.get("managed_by") {
        None => Some(Some(DEFAULT_SLICE_MANAGER.to_owned())),
        Some(n) => manager(cx, n, &f.path("managed_by")),
    };
    if cfg!(not(feature = "kubernetes")) {
        cx.err(
            node.pos,
            path,
            "this teal was built without the `kubernetes` feature",
        );
        return None;
    }
    Some(KubernetesFleet {
        namespace: namespace?,
        service: service?,
        port: port?,
        managed_by: managed_by?,
    })
}

/// `services.<s>.kubernetes`: `{route: {namespace, name}}`, the
/// `HTTPRoute` that drives the service's weights.
pub(super) fn service_route(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
) -> Option<Option<KubernetesRef>> {
    let f = fields(cx, node, path, &["route"])?;
    let route = f.required(cx, "route")?;
    let r = object_ref(cx, route, &f.path("route"))?;
    feature_needed(cx, node, path)?;
    Some(Some(r))
}

/// `groups.<g>.kubernetes`: `{gateway: {namespace, name}}`, the `Gateway`
/// the group implements.
pub(super) fn group_gateway(
    cx: &mut Cx<'_>,
    node: &Node,
    path: &str,
) -> Option<Option<KubernetesRef>> {
    let f = fields(cx, node, path, &["gateway"])?;
    let gateway = f.required(cx, "gateway")?;
    let r = object_ref(cx, gateway, &f.path("gateway"))?;
    feature_needed(cx, node, path)?;
    Some(Some(r))
}

/// Refuses Kubernetes settings in a teal built without the feature.
fn feature_needed(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<()> {
    if cfg!(not(feature = "kubernetes")) {
        cx.err(
            node.pos,
            path,
            "this teal was built without the `kubernetes` feature",
        );
        return None;
    }
    Some(())
}

/// `{namespace, name}`: a namespace (a DNS label) and an object name (a
/// DNS subdomain), which go into URL paths.
fn object_ref(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<KubernetesRef> {
    let f = fields(cx, node, path, &["namespace", "name"])?;
    let namespace = f
        .required(cx, "namespace")
        .and_then(|n| label(cx, n, &f.path("namespace"), "namespace"));
    let name = f.required(cx, "name").and_then(|n| {
        let s = text(cx, n, &f.path("name"))?;
        if is_dns_subdomain(&s) {
            Some(s)
        } else {
            cx.err(
                n.pos,
                &f.path("name"),
                format!(
                    "invalid name {s:?}: a Kubernetes object name is a DNS subdomain (lowercase \
                     letters, digits, '-' and '.', each part starting and ending with a letter \
                     or digit, at most 253)"
                ),
            );
            None
        }
    });
    Some(KubernetesRef {
        namespace: namespace?,
        name: name?,
    })
}

/// A DNS subdomain as Kubernetes checks object names (RFC 1123): DNS
/// labels joined by `.`, at most 253 in all.
pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// `managed_by`: a label value (it goes into a label selector), or `*`
/// for slices of any manager.
fn manager(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<Option<String>> {
    let s = text(cx, node, path)?;
    if s == "*" {
        return Some(None);
    }
    let b = s.as_bytes();
    let label_value = !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
    if label_value {
        Some(Some(s))
    } else {
        cx.err(
            node.pos,
            path,
            format!(
                "invalid managed_by {s:?}: a Kubernetes label value (letters, digits, '-', '_' \
                 and '.', starting and ending with a letter or digit, at most 63), or '*' for \
                 slices of any manager"
            ),
        );
        None
    }
}

/// A DNS label as Kubernetes checks it (RFC 1123): lowercase letters,
/// digits and `-`, starting and ending with a letter or digit, at most 63.
pub(crate) fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
}

fn label(cx: &mut Cx<'_>, node: &Node, path: &str, what: &str) -> Option<String> {
    let s = text(cx, node, path)?;
    if is_dns_label(&s) {
        Some(s)
    } else {
        cx.err(
            node.pos,
            path,
            format!(
                "invalid {what} name {s:?}: a Kubernetes name is a DNS label (lowercase letters, \
                 digits and '-', starting and ending with a letter or digit, at most 63)"
            ),
        );
        None
    }
}

/// A port name (a DNS label with a letter, as Service port names are) or
/// a number from 1 to 65535.
fn port(cx: &mut Cx<'_>, node: &Node, path: &str) -> Option<KubernetesPort> {
    let s = text(cx, node, path)?;
    if s.bytes().all(|c| c.is_ascii_digit()) && !s.is_empty() {
        return match s.parse::<u16>() {
            Ok(n) if n > 0 => Some(KubernetesPort::Number(n)),
            _ => {
                cx.err(
                    node.pos,
                    path,
                    format!("port {s} is out of range (must be from 1 to 65535)"),
                );
                None
            }
        };
    }
    if is_dns_label(&s) {
        Some(KubernetesPort::Name(s))
    } else {
        cx.err(
            node.pos,
            path,
            format!(
                "invalid port {s:?}: a port is a number from 1 to 65535 or a port name (a DNS \
                 label: lowercase letters, digits and '-')"
            ),
        );
        None
    }
}

#[cfg(all(test, feature = "kubernetes"))]
#[path = "kubernetes_tests.rs"]
mod tests;
