use crate::config::{Config, KubernetesFleet, KubernetesPort, KubernetesRef, Limits, fixtures};

/// The fixture with `green` as green's body.
fn parse(green: &str) -> Result<Config, Vec<String>> {
    let yaml = fixtures::web().fleet("web", "green", green).yaml();
    Config::parse_with(&yaml, "t.yaml", &Limits::default())
        .map_err(|d| d.iter().map(ToString::to_string).collect())
}

#[test]
fn a_kubernetes_fleet_is_read() {
    let c = parse("kubernetes: {namespace: shop, service: web-green, port: http}").expect("valid");
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
        selector("kubernetes: {namespace: shop, service: web}").expect("valid"),
        Some(
            "kubernetes.io/service-name=web,\
                 endpointslice.kubernetes.io/managed-by=endpointslice-controller.k8s.io"
                .to_owned()
        ),
        "only the EndpointSlice controller's slices by default"
    );
    assert_eq!(
        selector("kubernetes: {namespace: shop, service: web, managed_by: mesh.example}")
            .expect("valid"),
        Some(
            "kubernetes.io/service-name=web,endpointslice.kubernetes.io/managed-by=mesh.example"
                .to_owned()
        )
    );
    assert_eq!(
        selector("kubernetes: {namespace: shop, service: web, managed_by: '*'}").expect("valid"),
        Some("kubernetes.io/service-name=web".to_owned())
    );
    for bad in ["'a,b=c'", "''", "'-x'", "'a b'"] {
        let e = selector(&format!(
            "kubernetes: {{namespace: shop, service: web, managed_by: {bad}}}"
        ))
        .expect_err(bad);
        assert!(e.iter().any(|e| e.contains("managed_by")), "{bad}: {e:?}");
    }
    let c = parse("kubernetes: {namespace: shop, service: web, port: 8080}").expect("valid");
    let k = c.services["web"].fleets["green"].kubernetes().cloned();
    assert_eq!(k.and_then(|k| k.port), Some(KubernetesPort::Number(8080)));
    let c = parse("kubernetes: {namespace: shop, service: web}").expect("valid");
    let k = c.services["web"].fleets["green"].kubernetes().cloned();
    assert_eq!(k.map(|k| k.port), Some(None));
}

#[test]
fn bad_kubernetes_fleets_are_refused_with_the_key() {
    for (green, want) in [
        (
            "kubernetes: {namespace: Shop, service: web}",
            "green.kubernetes.namespace: invalid namespace name \"Shop\"",
        ),
        (
            "kubernetes: {namespace: shop, service: web_1}",
            "green.kubernetes.service: invalid service name \"web_1\"",
        ),
        (
            "kubernetes: {namespace: shop, service: web, port: 0}",
            "green.kubernetes.port: port 0 is out of range",
        ),
        (
            "kubernetes: {namespace: shop, service: web, port: 65536}",
            "green.kubernetes.port: port 65536 is out of range",
        ),
        (
            "kubernetes: {namespace: shop, service: web, port: -http}",
            "green.kubernetes.port: invalid port \"-http\"",
        ),
        (
            "kubernetes: {service: web}",
            "green.kubernetes: missing required key `namespace`",
        ),
        (
            "kubernetes: {namespace: shop, service: web, selector: x}",
            "green.kubernetes.selector: unknown key",
        ),
        (
            "kubernetes: {namespace: shop, service: web}\nendpoints: [127.0.0.1:1]",
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

/// A config with services `web` and `api` and groups `edge` and `mesh`;
/// each argument is lines added under that service or group.
fn routed(web: &str, api: &str, edge: &str, mesh: &str) -> Result<Config, Vec<String>> {
    let yaml = format!(
        "services:\n  web:\n    live: blue\n    fleets:\n      blue: {{endpoints: [127.0.0.1:1]}}\n\
         \x20     green: {{kubernetes: {{namespace: shop, service: web-green}}}}\n{web}\
         \x20 api:\n    live: blue\n    fleets:\n      blue: {{endpoints: [127.0.0.1:3]}}\n\
         \x20     green: {{kubernetes: {{namespace: shop, service: api-green}}}}\n{api}\
         groups:\n  edge:\n    listeners:\n      public:\n        address: 127.0.0.1:10000\n\
         \x20       kind: edge\n        virtual_hosts:\n          all:\n            domains: [\"*\"]\n\
         \x20           routes: [{{prefix: /, service: web}}]\n{edge}\
         \x20 mesh:\n    listeners:\n      out:\n        address: 127.0.0.1:10001\n\
         \x20       kind: sidecar\n        services: [web, api]\n{mesh}"
    );
    Config::parse_with(&yaml, "t.yaml", &Limits::default())
        .map_err(|d| d.iter().map(ToString::to_string).collect())
}

#[test]
fn a_route_drives_a_service_and_a_gateway_maps_to_a_group() {
    let c = routed(
        "    kubernetes: {route: {namespace: shop, name: web.v1}}\n",
        "",
        "    kubernetes: {gateway: {namespace: infra, name: public}}\n",
        "",
    )
    .expect("valid");
    let want = |ns: &str, name: &str| {
        Some(KubernetesRef {
            namespace: ns.into(),
            name: name.into(),
        })
    };
    assert_eq!(c.services["web"].route().cloned(), want("shop", "web.v1"));
    assert_eq!(c.services["api"].route(), None);
    assert_eq!(c.groups["edge"].gateway().cloned(), want("infra", "public"));
    assert_eq!(c.groups["mesh"].gateway(), None);
}

#[test]
fn bad_routes_and_gateways_are_refused_with_the_key() {
    let route = |r: &str| format!("    kubernetes: {{route: {r}}}\n");
    let gateway = |g: &str| format!("    kubernetes: {{gateway: {g}}}\n");
    for (web, api, edge, mesh, want) in [
        (
            route("{namespace: shop, name: Web}"),
            String::new(),
            String::new(),
            String::new(),
            "services.web.kubernetes.route.name: invalid name \"Web\"",
        ),
        (
            route("{name: web}"),
            String::new(),
            String::new(),
            String::new(),
            "services.web.kubernetes.route: missing required key `namespace`",
        ),
        (
            "    kubernetes: {}\n".into(),
            String::new(),
            String::new(),
            String::new(),
            "services.web.kubernetes: missing required key `route`",
        ),
        (
            route("{namespace: shop, name: web}"),
            route("{namespace: shop, name: web}"),
            String::new(),
            String::new(),
            "services.web.kubernetes.route: HTTPRoute shop/web already drives service \"api\"",
        ),
        (
            String::new(),
            String::new(),
            gateway("{namespace: infra, name: gw, class: x}"),
            String::new(),
            "groups.edge.kubernetes.gateway.class: unknown key",
        ),
        (
            String::new(),
            String::new(),
            gateway("{namespace: infra, name: gw}"),
            gateway("{namespace: infra, name: gw}"),
            "groups.mesh.kubernetes.gateway: Gateway infra/gw is already implemented by group \"edge\"",
        ),
    ] {
        let errors = routed(&web, &api, &edge, &mesh).expect_err(want);
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{errors:?} lacks {want:?}"
        );
    }
}

#[test]
fn a_route_needs_a_kubernetes_fleet_to_drive() {
    let yaml = "services:\n  web:\n    live: blue\n    kubernetes: {route: {namespace: shop, name: web}}\n\
        \x20   fleets:\n      blue: {endpoints: [127.0.0.1:1]}\n      green: {endpoints: registered}\n\
        groups:\n  mesh:\n    listeners:\n      out:\n        address: 127.0.0.1:10001\n\
        \x20       kind: sidecar\n        services: [web]\n";
    let errors: Vec<String> = Config::parse_with(yaml, "t.yaml", &Limits::default())
        .map_err(|d| d.iter().map(ToString::to_string).collect())
        .expect_err("no Kubernetes fleet");
    assert!(
        errors.iter().any(|e| e.contains(
            "services.web.kubernetes.route: HTTPRoute shop/web can drive only fleets whose \
             endpoints come from Kubernetes"
        )),
        "{errors:?}"
    );
}

#[test]
fn dns_subdomains() {
    use super::is_dns_subdomain;
    for ok in [
        "a",
        "web.v1",
        "a-b.c-d",
        "a.".repeat(126).trim_end_matches('.'),
    ] {
        assert!(is_dns_subdomain(ok), "{ok}");
    }
    for bad in [
        "",
        "a..b",
        ".a",
        "a.",
        "A.b",
        &format!("{}.b", "a".repeat(64)),
    ] {
        assert!(!is_dns_subdomain(bad), "{bad}");
    }
}
