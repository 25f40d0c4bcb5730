use crate::config::{Config, KubernetesFleet, KubernetesPort, Limits, fixtures};

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
