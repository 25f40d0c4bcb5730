//! The translation, on EndpointSlices as the API server sends them (JSON
//! in the shape `kubectl get endpointslices -o json` prints).

use super::*;

/// A slice the EndpointSlice controller made for Service `web-green`:
/// two ports, endpoints in every condition there is.
const GREEN_A: &str = r#"{
  "kind": "EndpointSlice",
  "apiVersion": "discovery.k8s.io/v1",
  "metadata": {
    "name": "web-green-7xk2p",
    "generateName": "web-green-",
    "namespace": "shop",
    "uid": "0b6c2a43-5f0e-4d0c-9f51-3c1d2a9e7b10",
    "resourceVersion": "48213",
    "generation": 7,
    "creationTimestamp": "2026-11-28T09:12:44Z",
    "labels": {
      "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
      "kubernetes.io/service-name": "web-green",
      "app": "web",
      "track": "green"
    },
    "annotations": {
      "endpoints.kubernetes.io/last-change-trigger-time": "2026-11-28T09:20:01Z"
    },
    "ownerReferences": [
      {
        "apiVersion": "v1",
        "kind": "Service",
        "name": "web-green",
        "uid": "e2d1c4b8-7a61-4b55-8d0e-1f4a6c2b9d33",
        "controller": true,
        "blockOwnerDeletion": true
      }
    ]
  },
  "addressType": "IPv4",
  "endpoints": [
    {
      "addresses": ["10.244.1.17"],
      "conditions": {"ready": true, "serving": true, "terminating": false},
      "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-green-5d9c7b8f6-abcde", "uid": "5a0e9a3e-1c2b-4f7e-9a8d-2b3c4d5e6f70"},
      "nodeName": "node-a",
      "zone": "europe-west1-b"
    },
    {
      "addresses": ["10.244.2.9"],
      "conditions": {"ready": false, "serving": false, "terminating": false},
      "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-green-5d9c7b8f6-fghij", "uid": "6b1f0b4f-2d3c-4a8f-8b9e-3c4d5e6f7081"},
      "nodeName": "node-b",
      "zone": "europe-west1-c"
    },
    {
      "addresses": ["10.244.2.4"],
      "conditions": {"ready": false, "serving": true, "terminating": true},
      "targetRef": {"kind": "Pod", "namespace": "shop", "name": "web-green-5d9c7b8f6-klmno", "uid": "7c2a1c5a-3e4d-4b9a-9cae-4d5e6f708192"},
      "nodeName": "node-b",
      "zone": "europe-west1-c"
    },
    {
      "addresses": ["10.244.3.22"],
      "conditions": {},
      "nodeName": "node-c"
    }
  ],
  "ports": [
    {"name": "http", "protocol": "TCP", "port": 8080},
    {"name": "metrics", "protocol": "TCP", "port": 9090}
  ]
}"#;

/// Another slice of the same Service, whose pods map `http` to another
/// number, with one address also in [`GREEN_A`] (a pod moving over).
const GREEN_B: &str = r#"{
  "kind": "EndpointSlice",
  "apiVersion": "discovery.k8s.io/v1",
  "metadata": {
    "name": "web-green-q9w4d",
    "namespace": "shop",
    "resourceVersion": "48220",
    "labels": {"kubernetes.io/service-name": "web-green"}
  },
  "addressType": "IPv4",
  "endpoints": [
    {"addresses": ["10.244.4.3"], "conditions": {"ready": true}, "zone": "europe-west1-d"},
    {"addresses": ["10.244.1.17"], "conditions": {"ready": false, "serving": false, "terminating": true}}
  ],
  "ports": [
    {"name": "metrics", "protocol": "TCP", "port": 9090},
    {"name": "http", "protocol": "TCP", "port": 8081}
  ]
}"#;

fn slice(json: &str) -> EndpointSlice {
    serde_json::from_str(json).expect("a real EndpointSlice")
}

fn http() -> KubernetesPort {
    KubernetesPort::Name("http".into())
}

fn addrs(f: &FleetEndpoints) -> Vec<String> {
    f.iter().map(|e| e.address.to_string()).collect()
}

#[test]
fn ready_endpoints_of_the_named_port_with_zones() {
    let f = translate([&slice(GREEN_A)], Some(&http()), 100).expect("usable");
    // Ready, and ready unset (which means ready); not the unready one nor
    // the terminating one.
    assert_eq!(addrs(&f), ["10.244.1.17:8080", "10.244.3.22:8080"]);
    assert_eq!(f[0].zone.as_deref(), Some("europe-west1-b"));
    assert_eq!(f[1].zone, None);
    assert!(f.iter().all(|e| e.weight == 1));
}

#[test]
fn each_slice_says_its_own_port_number_and_an_address_counts_once() {
    let f = translate([&slice(GREEN_A), &slice(GREEN_B)], Some(&http()), 100).expect("usable");
    assert_eq!(
        addrs(&f),
        ["10.244.1.17:8080", "10.244.3.22:8080", "10.244.4.3:8081"]
    );
    // Sorted, so the same slices in another order give the same set.
    let g = translate([&slice(GREEN_B), &slice(GREEN_A)], Some(&http()), 100).expect("usable");
    assert_eq!(f, g);
}

#[test]
fn a_port_by_number_or_the_only_one() {
    let f = translate([&slice(GREEN_A)], Some(&KubernetesPort::Number(9090)), 100).expect("usable");
    assert_eq!(addrs(&f), ["10.244.1.17:9090", "10.244.3.22:9090"]);
    let mut one = slice(GREEN_A);
    one.ports.as_mut().expect("ports").truncate(1);
    let f = translate([&one], None, 100).expect("usable");
    assert_eq!(addrs(&f), ["10.244.1.17:8080", "10.244.3.22:8080"]);
}

#[test]
fn port_problems_are_errors() {
    assert!(matches!(
        translate([&slice(GREEN_A)], None, 100),
        Err(SliceError::AmbiguousPort { count: 2, .. })
    ));
    assert!(matches!(
        translate(
            [&slice(GREEN_A)],
            Some(&KubernetesPort::Name("grpc".into())),
            100
        ),
        Err(SliceError::NoSuchPort { .. })
    ));
    let mut udp = slice(GREEN_A);
    for p in udp.ports.as_mut().expect("ports") {
        p.protocol = Some("UDP".into());
    }
    assert!(matches!(
        translate([&udp], Some(&http()), 100),
        Err(SliceError::NoSuchPort { .. })
    ));
}

#[test]
fn serving_and_terminating_are_honoured() {
    use k8s_openapi::api::discovery::v1::EndpointConditions;
    let with = |ready, serving, terminating| {
        let mut s = slice(GREEN_A);
        s.endpoints.truncate(1);
        s.endpoints[0].conditions = Some(EndpointConditions {
            ready,
            serving,
            terminating,
        });
        translate([&s], Some(&http()), 100).expect("usable").len()
    };
    assert_eq!(with(None, None, None), 1, "unset means ready");
    assert_eq!(with(Some(true), Some(true), Some(false)), 1);
    assert_eq!(with(Some(false), None, None), 0);
    // publishNotReadyAddresses: ready is always true, serving tells.
    assert_eq!(with(Some(true), Some(false), None), 0);
    // A terminating pod still serving is on its way out.
    assert_eq!(with(Some(false), Some(true), Some(true)), 0);
    assert_eq!(with(Some(true), Some(true), Some(true)), 0);
    assert_eq!(with(None, None, Some(true)), 0);
}

#[test]
fn placeholder_fqdn_and_ipv6_slices() {
    // The controller's placeholder for a Service without endpoints.
    let placeholder = r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
        "metadata":{"name":"web-green-zz","namespace":"shop","resourceVersion":"1",
        "labels":{"kubernetes.io/service-name":"web-green"}},
        "addressType":"IPv4","endpoints":[],"ports":null}"#;
    let f = translate([&slice(placeholder)], Some(&http()), 100).expect("usable");
    assert!(f.is_empty());
    let fqdn = r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
        "metadata":{"name":"ext","resourceVersion":"2"},"addressType":"FQDN",
        "endpoints":[{"addresses":["web.example.com"]}],"ports":[{"name":"http","port":80}]}"#;
    let f = translate([&slice(fqdn)], Some(&http()), 100).expect("usable");
    assert!(f.is_empty(), "Envoy does not resolve EDS names");
    let v6 = r#"{"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
        "metadata":{"name":"v6","resourceVersion":"3"},"addressType":"IPv6",
        "endpoints":[{"addresses":["fd00:10:244::5"],"conditions":{"ready":true}}],
        "ports":[{"name":"http","port":8080}]}"#;
    let f = translate([&slice(v6)], Some(&http()), 100).expect("usable");
    assert_eq!(addrs(&f), ["[fd00:10:244::5]:8080"]);
}

#[test]
fn hostile_addresses_zones_and_ports_are_refused() {
    let mut s = slice(GREEN_A);
    s.endpoints[0].addresses[0] = "fd00::1".into();
    assert!(matches!(
        translate([&s], Some(&http()), 100),
        Err(SliceError::BadAddress { .. })
    ));
    let mut s = slice(GREEN_A);
    s.endpoints[0].addresses[0] = "10.0.0.1\n\u{1b}[31m".into();
    let e = translate([&s], Some(&http()), 100).expect_err("bad address");
    assert!(!e.to_string().contains('\u{1b}'), "escaped: {e}");
    let mut s = slice(GREEN_A);
    s.endpoints[0].zone = Some("z".repeat(64));
    assert!(matches!(
        translate([&s], Some(&http()), 100),
        Err(SliceError::BadZone { .. })
    ));
    let mut s = slice(GREEN_A);
    s.ports.as_mut().expect("ports")[0].port = Some(70_000);
    assert!(matches!(
        translate([&s], Some(&http()), 100),
        Err(SliceError::BadPort { number: 70_000, .. })
    ));
}

#[test]
fn more_endpoints_than_the_limit_are_refused() {
    let s = slice(GREEN_A);
    assert!(matches!(
        slice_endpoints(&s, Some(&http()), 3),
        Err(SliceError::TooManyEndpoints { limit: 3 })
    ));
    assert!(translate([&s], Some(&http()), 4).is_ok());
    // Four distinct addresses over two slices, limit three.
    assert!(matches!(
        translate([&s, &slice(GREEN_B)], Some(&http()), 4),
        Err(SliceError::TooManyEndpoints { limit: 4 })
    ));
}

mod props {
    use k8s_openapi::api::discovery::v1::{
        Endpoint as K8sEndpoint, EndpointConditions, EndpointPort,
    };
    use proptest::prelude::*;

    use super::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => (0u8..4, any::<u8>()).prop_map(|(a, b)| format!("10.0.{a}.{b}")),
            2 => (0u16..16).prop_map(|a| format!("fd00::{a:x}")),
            1 => ".{0,12}",
        ]
    }

    fn endpoint() -> impl Strategy<Value = K8sEndpoint> {
        (
            prop::collection::vec(text(), 0..3),
            prop::option::of((
                prop::option::of(any::<bool>()),
                prop::option::of(any::<bool>()),
                prop::option::of(any::<bool>()),
            )),
            prop::option::of(prop_oneof![3 => "[a-z0-9-]{1,12}", 1 => ".{0,70}"]),
        )
            .prop_map(|(addresses, conditions, zone)| K8sEndpoint {
                addresses,
                conditions: conditions.map(|(ready, serving, terminating)| EndpointConditions {
                    ready,
                    serving,
                    terminating,
                }),
                zone,
                ..K8sEndpoint::default()
            })
    }

    fn slice() -> impl Strategy<Value = EndpointSlice> {
        (
            prop_oneof![4 => Just("IPv4"), 2 => Just("IPv6"), 1 => Just("FQDN"), 1 => Just("bogus")],
            prop::collection::vec(endpoint(), 0..8),
            prop::option::of(prop::collection::vec(
                (
                    prop::option::of(prop_oneof![Just("http".to_owned()), ".{0,5}"]),
                    prop_oneof![
                        4 => (8080i32..8083).prop_map(Some),
                        1 => any::<i32>().prop_map(Some),
                        1 => Just(None),
                    ],
                    prop::option::of(prop_oneof![Just("TCP".to_owned()), Just("UDP".to_owned())]),
                ),
                0..3,
            )),
        )
            .prop_map(|(family, endpoints, ports)| EndpointSlice {
                address_type: family.to_owned(),
                endpoints,
                ports: ports.map(|ps| {
                    ps.into_iter()
                        .map(|(name, port, protocol)| EndpointPort {
                            name,
                            port,
                            protocol,
                            ..EndpointPort::default()
                        })
                        .collect()
                }),
                ..EndpointSlice::default()
            })
    }

    proptest! {
        /// Whatever the API server sends, the translation does not panic,
        /// and what it accepts is sorted, without repeats, within the
        /// bound, and only ports 1 to 65535 of the slice's family.
        #[test]
        fn any_slices_translate_safely(
            slices in prop::collection::vec(slice(), 0..5),
            port in prop::option::of(prop_oneof![
                Just(KubernetesPort::Name("http".into())),
                (8080u16..8083).prop_map(KubernetesPort::Number),
            ]),
            max in 1usize..10,
        ) {
            if let Ok(set) = translate(&slices, port.as_ref(), max) {
                prop_assert!(set.len() <= max);
                prop_assert!(set.windows(2).all(|w| w[0].address < w[1].address));
                prop_assert!(set.iter().all(|e| e.address.port() > 0 && e.weight == 1));
                prop_assert!(set.iter().all(|e| e.zone.as_ref().is_none_or(|z| !z.is_empty() && z.len() <= 63)));
            }
        }
    }
}
