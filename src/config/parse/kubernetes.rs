//! `fleets.<name>.kubernetes`: a fleet whose endpoints are a Kubernetes
//! Service's ready EndpointSlice endpoints.

use crate::config::model::{DEFAULT_SLICE_MANAGER, KubernetesFleet, KubernetesPort};
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
mod tests {
    use crate::config::{Config, KubernetesFleet, KubernetesPort, Limits};

    fn with_green(green: &str) -> String {
        format!(
            "\
services:
  web:
    live: blue
    fleets:
      blue:
        endpoints: [127.0.0.1:8101]
      green:
{green}
groups:
  edge:
    listeners:
      public:
        kind: edge
        address: 127.0.0.1:10000
        virtual_hosts:
          all:
            domains: ['*']
            routes:
              - prefix: /
                service: web
"
        )
    }

    fn parse(green: &str) -> Result<Config, Vec<String>> {
        Config::parse_with(&with_green(green), "t.yaml", &Limits::default())
            .map_err(|d| d.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn a_kubernetes_fleet_is_read() {
        let c = parse("        kubernetes: {namespace: shop, service: web-green, port: http}")
            .expect("valid");
        let green = &c.services["web"].fleets["green"];
        assert!(green.endpoints.is_empty());
        assert_eq!(
            green.kubernetes(),
            Some(&KubernetesFleet {
                namespace: "shop".into(),
                service: "web-green".into(),
                port: Some(KubernetesPort::Name("http".into())),
                managed_by: Some(crate::config::DEFAULT_SLICE_MANAGER.into()),
            })
        );
        let selector = |line: &str| {
            parse(line).map(|c| {
                c.services["web"].fleets["green"]
                    .kubernetes()
                    .map(KubernetesFleet::label_selector)
            })
        };
        assert_eq!(
            selector("        kubernetes: {namespace: shop, service: web}").expect("valid"),
            Some(
                "kubernetes.io/service-name=web,\
                 endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io"
                    .to_owned()
            ),
            "only the EndpointSlice controller's slices by default"
        );
        assert_eq!(
            selector("        kubernetes: {namespace: shop, service: web, managed_by: mesh.example}")
                .expect("valid"),
            Some(
                "kubernetes.io/service-name=web,endpointslice.kubernetes.io/managed-by=mesh.example"
                    .to_owned()
            )
        );
        assert_eq!(
            selector("        kubernetes: {namespace: shop, service: web, managed_by: '*'}")
                .expect("valid"),
            Some("kubernetes.io/service-name=web".to_owned())
        );
        for bad in ["'a,b=c'", "''", "'-x'", "'a b'"] {
            let e = selector(&format!(
                "        kubernetes: {{namespace: shop, service: web, managed_by: {bad}}}"
            ))
            .expect_err(bad);
            assert!(e.iter().any(|e| e.contains("managed_by")), "{bad}: {e:?}");
        }
        let c = parse("        kubernetes: {namespace: shop, service: web, port: 8080}")
            .expect("valid");
        let k = c.services["web"].fleets["green"].kubernetes().cloned();
        assert_eq!(k.and_then(|k| k.port), Some(KubernetesPort::Number(8080)));
        let c = parse("        kubernetes: {namespace: shop, service: web}").expect("valid");
        let k = c.services["web"].fleets["green"].kubernetes().cloned();
        assert_eq!(k.map(|k| k.port), Some(None));
    }

    #[test]
    fn bad_kubernetes_fleets_are_refused_with_the_key() {
        for (green, want) in [
            (
                "        kubernetes: {namespace: Shop, service: web}",
                "green.kubernetes.namespace: invalid namespace name \"Shop\"",
            ),
            (
                "        kubernetes: {namespace: shop, service: web_1}",
                "green.kubernetes.service: invalid service name \"web_1\"",
            ),
            (
                "        kubernetes: {namespace: shop, service: web, port: 0}",
                "green.kubernetes.port: port 0 is out of range",
            ),
            (
                "        kubernetes: {namespace: shop, service: web, port: 65536}",
                "green.kubernetes.port: port 65536 is out of range",
            ),
            (
                "        kubernetes: {namespace: shop, service: web, port: -http}",
                "green.kubernetes.port: invalid port \"-http\"",
            ),
            (
                "        kubernetes: {service: web}",
                "green.kubernetes: missing required key `namespace`",
            ),
            (
                "        kubernetes: {namespace: shop, service: web, selector: x}",
                "green.kubernetes.selector: unknown key",
            ),
            (
                "        kubernetes: {namespace: shop, service: web}\n        endpoints: [127.0.0.1:1]",
                "green.endpoints: a fleet takes its endpoints from `kubernetes` or from `endpoints`",
            ),
        ] {
            let errors = parse(green).expect_err(green);
            assert!(
                errors.iter().any(|e| e.contains(want)),
                "{green}: {errors:?} lacks {want:?}"
            );
        }
    }

    #[test]
    fn dns_labels() {
        use super::is_dns_label;
        for ok in ["a", "web", "web-green", "1abc", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a_b", "a.b", &"a".repeat(64), "é"] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }
}
