//! Property tests: random valid configs translate into self-consistent,
//! deterministic snapshots.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::route::v3::route::Action;
use envoy_types::pb::envoy::config::route::v3::route_action::ClusterSpecifier;
use proptest::prelude::*;
use teal::config::{Config, FLEET_HEADER, Weights, config_digest, encoded_resources, translate};

/// A random config, as YAML text (so the parser is exercised too).
#[derive(Debug, Clone)]
struct Spec {
    /// Per service: fleet count (1..=3) and endpoints per fleet.
    services: Vec<Vec<usize>>,
    /// Per service: which of its fleets is `live` (taken modulo the count).
    live: Vec<usize>,
    /// Per group, per listener: edge (routes as service indexes) or sidecar.
    groups: Vec<Vec<(bool, Vec<usize>)>>,
    http2: Vec<bool>,
    /// Per listener index: its edge routes match paths by regex, and its
    /// virtual host names domains instead of `*`.
    regex: Vec<bool>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (1usize..5)
        .prop_flat_map(|n| {
            (
                prop::collection::vec(prop::collection::vec(0usize..3, 1..4), n),
                prop::collection::vec(
                    prop::collection::vec((any::<bool>(), prop::collection::vec(0..n, 1..4)), 1..3),
                    1..4,
                ),
                prop::collection::vec(any::<bool>(), n),
                prop::collection::vec(0usize..3, n),
                prop::collection::vec(any::<bool>(), 3),
            )
        })
        .prop_map(|(services, groups, http2, live, regex)| Spec {
            services,
            live,
            groups,
            http2,
            regex,
        })
}

const FLEETS: [&str; 3] = ["blue", "green", "canary"];

fn yaml(spec: &Spec) -> String {
    let mut y = String::from("services:\n");
    let mut port = 20000;
    for (i, fleets) in spec.services.iter().enumerate() {
        let live = spec.live[i] % fleets.len();
        let _ = writeln!(y, "  svc{i}:\n    live: {}", FLEETS[live]);
        if spec.http2[i] {
            y.push_str("    protocol: http2\n");
        }
        y.push_str("    fleets:\n");
        for (f, &count) in fleets.iter().enumerate() {
            let _ = writeln!(y, "      {}:\n        endpoints:", FLEETS[f]);
            // The live fleet needs an endpoint.
            let count = if f == live { count.max(1) } else { count };
            if count == 0 {
                y.push_str("          []\n");
            }
            for _ in 0..count {
                port += 1;
                let _ = writeln!(y, "          - 127.0.0.1:{port}");
            }
        }
    }
    y.push_str("groups:\n");
    for (g, listeners) in spec.groups.iter().enumerate() {
        let _ = writeln!(y, "  group{g}:\n    listeners:");
        for (l, (edge, services)) in listeners.iter().enumerate() {
            let addr = format!("127.0.0.1:{}", 10000 + l);
            if *edge {
                let regex = spec.regex[l];
                let domains = if regex {
                    "['shop.example', '*.example.com']"
                } else {
                    "['*']"
                };
                let _ = writeln!(
                    y,
                    "      l{l}:\n        kind: edge\n        address: {addr}\n        virtual_hosts:\n          vh:\n            domains: {domains}\n            routes:"
                );
                for (r, s) in services.iter().enumerate() {
                    if regex {
                        let _ =
                            writeln!(y, "              - {{regex: '/p{r}/.*', service: svc{s}}}");
                    } else {
                        let _ = writeln!(y, "              - {{prefix: /p{r}/, service: svc{s}}}");
                    }
                }
            } else {
                let set: BTreeSet<usize> = services.iter().copied().collect();
                let names: Vec<String> = set.iter().map(|s| format!("svc{s}")).collect();
                let _ = writeln!(
                    y,
                    "      l{l}: {{kind: sidecar, address: {addr}, services: [{}]}}",
                    names.join(", ")
                );
            }
        }
    }
    y
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn routes_name_only_served_clusters(spec in spec(), shift in 0u32..=100) {
        let text = yaml(&spec);
        let config = Config::parse(&text, "gen.yaml")
            .map_err(|d| TestCaseError::fail(format!("{d}\n{text}")))?;
        let mut weights = Weights::initial(&config);
        // Move part of the traffic to green where there is one; elsewhere
        // the live fleet keeps all of it. `expected`: each service's
        // clusters with weight, as its weighted route must name them.
        let mut expected: BTreeMap<String, BTreeMap<String, u32>> = BTreeMap::new();
        for (name, s) in &config.services {
            let i: usize = name.strip_prefix("svc").and_then(|n| n.parse().ok()).expect("svcN");
            let want = if s.fleets.contains_key("green") {
                let split = BTreeMap::from([
                    ("blue".to_owned(), 100 - shift),
                    ("green".to_owned(), shift),
                ]);
                weights.set(&config, name, &split).map_err(|e| TestCaseError::fail(e.to_string()))?;
                split
            } else {
                let live = FLEETS[spec.live[i] % spec.services[i].len()];
                BTreeMap::from([(live.to_owned(), 100)])
            };
            expected.insert(
                name.clone(),
                want.into_iter().filter(|(_, w)| *w > 0).map(|(f, w)| (format!("{name}-{f}"), w)).collect(),
            );
        }
        let input = translate(&config, &weights);
        prop_assert_eq!(input.groups.len(), spec.groups.len());
        for (group, res) in &input.groups {
            let clusters: BTreeSet<&str> = res.clusters.iter().map(|c| c.name.as_str()).collect();
            let assignments: BTreeSet<&str> =
                res.endpoints.iter().map(|e| e.cluster_name.as_str()).collect();
            for c in &res.clusters {
                if c.cluster_discovery_type == Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)) {
                    prop_assert!(assignments.contains(c.name.as_str()), "{group}: {} has no assignment", c.name);
                }
            }
            let mut named = BTreeSet::new();
            for rc in &res.routes {
                for vh in &rc.virtual_hosts {
                    for r in &vh.routes {
                        let Some(Action::Route(a)) = &r.action else {
                            return Err(TestCaseError::fail("route without a route action"));
                        };
                        match a.cluster_specifier.as_ref() {
                            Some(ClusterSpecifier::Cluster(c)) => {
                                // A preview route: `SERVICE-FLEET-preview`,
                                // pinned by the fleet header to that fleet.
                                let (svc_fleet, _) = r.name.rsplit_once("-preview")
                                    .ok_or_else(|| TestCaseError::fail(format!("{} is not a preview route", r.name)))?;
                                prop_assert_eq!(c, svc_fleet);
                                let header = &r.r#match.as_ref().expect("a match").headers;
                                prop_assert_eq!(header.len(), 1);
                                prop_assert_eq!(header[0].name.as_str(), FLEET_HEADER);
                                named.insert(c.clone());
                            }
                            Some(ClusterSpecifier::WeightedClusters(wc)) => {
                                // The weighted route of service `r.name`
                                // carries exactly the weights set above.
                                let got: BTreeMap<String, u32> = wc.clusters.iter()
                                    .map(|c| (c.name.clone(), c.weight.as_ref().map_or(0, |w| w.value)))
                                    .filter(|(_, w)| *w > 0)
                                    .collect();
                                prop_assert_eq!(&got, &expected[&r.name], "route {}", r.name);
                                for c in &wc.clusters {
                                    let fleet = c.name.strip_prefix(&format!("{}-", r.name)).expect("SERVICE-FLEET");
                                    prop_assert!(
                                        c.request_headers_to_add.iter().any(|h| h.header.as_ref()
                                            .is_some_and(|h| h.key == FLEET_HEADER && h.value == fleet)),
                                        "{} carries its fleet downstream", c.name
                                    );
                                }
                                named.extend(wc.clusters.iter().map(|c| c.name.clone()));
                            }
                            other => return Err(TestCaseError::fail(format!("unexpected {other:?}"))),
                        }
                    }
                }
            }
            for c in &named {
                prop_assert!(clusters.contains(c.as_str()), "{group}: route names missing cluster {c}");
            }
            // And no cluster is served that no route names.
            prop_assert_eq!(named.len(), clusters.len());
            // Every listener's route configuration exists.
            let routes: BTreeSet<&str> = res.routes.iter().map(|r| r.name.as_str()).collect();
            for l in &res.listeners {
                prop_assert!(routes.contains(l.name.as_str()));
            }
        }
        // The engine accepts it.
        prop_assert!(teal::xds::snapshot::Snapshot::build("v", &input, None).is_ok());
    }

    #[test]
    fn routes_to_agrees_with_services_of(spec in spec()) {
        let config = Config::parse(&yaml(&spec), "teal.yaml")
            .map_err(|d| TestCaseError::fail(d.to_string()))?;
        let mut routed = 0;
        for group in config.groups.values() {
            let listed = config.services_of(group);
            for service in config.services.keys().map(String::as_str).chain(["nosuch"]) {
                prop_assert_eq!(Config::routes_to(group, service), listed.contains(&service));
                routed += usize::from(listed.contains(&service));
            }
        }
        prop_assert!(routed > 0, "every generated group routes a service");
    }

    #[test]
    fn translation_is_deterministic(spec in spec()) {
        let text = yaml(&spec);
        let a = Config::parse(&text, "a.yaml").map_err(|d| TestCaseError::fail(d.to_string()))?;
        let b = Config::parse(&text, "b.yaml").map_err(|d| TestCaseError::fail(d.to_string()))?;
        let ia = translate(&a, &Weights::initial(&a));
        let ib = translate(&b, &Weights::initial(&b));
        prop_assert_eq!(encoded_resources(&ia), encoded_resources(&ib));
        prop_assert_eq!(config_digest(&ia), config_digest(&ib));
    }

    #[test]
    fn a_snapshot_built_on_another_is_a_fresh_build(spec in spec(), flips in prop::collection::vec(0usize..5, 0..4)) {
        use teal::xds::resources::ResourceType;
        use teal::xds::snapshot::Snapshot;
        let text = yaml(&spec);
        let config = Config::parse(&text, "a.yaml").map_err(|d| TestCaseError::fail(d.to_string()))?;
        let before = translate(&config, &Weights::initial(&config));
        // Move some services (those with a second fleet) to it.
        let mut weights = Weights::initial(&config);
        for i in flips {
            let name = format!("svc{i}");
            if spec.services.get(i).is_some_and(|f| f.len() > 1) {
                let split = BTreeMap::from([("green".to_owned(), Weights::TOTAL)]);
                weights.set(&config, &name, &split).map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
        }
        let after = translate(&config, &weights);
        let old = Snapshot::build("1", &before, None).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let on_old = Snapshot::build_with(&after, Some(&old), |d| format!("2-{d}"))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let fresh = Snapshot::build("2", &after, None).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(on_old.digest(), config_digest(&after));
        prop_assert_eq!(fresh.digest(), config_digest(&after));
        prop_assert_eq!(on_old.digest() == old.digest(), config_digest(&before) == config_digest(&after));
        for group in after.groups.keys() {
            for ty in ResourceType::ALL {
                let (a, b) = (on_old.group(group).of(ty), fresh.group(group).of(ty));
                let names = |t: &teal::xds::snapshot::TypeSnapshot| t.resources().keys().cloned().collect::<Vec<_>>();
                prop_assert_eq!(names(a), names(b));
                for (name, r) in a.resources() {
                    let f = &b.resources()[name];
                    prop_assert_eq!(r.any_bytes(), f.any_bytes());
                    prop_assert_eq!(r.delta_bytes(), f.delta_bytes());
                    prop_assert_eq!(r.version(), f.version());
                    prop_assert_eq!(r.clusters(), f.clusters());
                }
                // A type keeps the old version label exactly when its
                // content did not change.
                let o = old.group(group).of(ty);
                let same = names(o) == names(a)
                    && o.resources().iter().all(|(n, r)| r.any_bytes() == a.resources()[n].any_bytes());
                prop_assert_eq!(a.version() == "1", same, "{} {}", group, ty);
            }
        }
    }

    #[test]
    fn arbitrary_text_never_panics(text in "[a-z:{}\\[\\], \n\\-0-9.\"'&*#|>!%@`]{0,200}") {
        let _ = Config::parse(&text, "x.yaml");
    }

    /// A valid config with a few edits (lines dropped, repeated or moved,
    /// text cut or inserted): parsing never panics, an error points inside
    /// the file, and whatever parses translates into a snapshot teal can
    /// build.
    #[test]
    fn edited_configs_never_panic(spec in spec(), edits in prop::collection::vec(edit(), 1..5)) {
        let mut lines: Vec<String> = yaml(&spec).lines().map(str::to_owned).collect();
        for e in &edits {
            apply(&mut lines, e);
        }
        let text = lines.join("\n");
        match Config::parse(&text, "edited.yaml") {
            Ok(config) => {
                let input = translate(&config, &Weights::initial(&config));
                prop_assert!(teal::xds::snapshot::Snapshot::build("v", &input, None).is_ok(), "{text}");
            }
            Err(diags) => {
                let shown = diags.to_string();
                prop_assert!(!shown.is_empty());
                prop_assert!(shown.contains("edited.yaml"), "{shown}");
            }
        }
    }
}

/// One edit of a config's lines, positions taken modulo the line count.
#[derive(Debug, Clone)]
enum Edit {
    Drop(usize),
    Repeat(usize),
    Move(usize, usize),
    /// Cut the line at this byte (on a char boundary at or before it).
    Cut(usize, usize),
    Insert(usize, usize, &'static str),
}

/// Text that changes what YAML means: structure, aliases, tags, keys teal
/// knows and values of the wrong kind.
const FRAGMENTS: [&str; 14] = [
    ":",
    "- ",
    "[",
    "]",
    "{",
    "}",
    "&a ",
    "*a",
    "!!str ",
    "|",
    "live: ",
    "weight: 150",
    "endpoints: registered",
    "  ",
];

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        any::<usize>().prop_map(Edit::Drop),
        any::<usize>().prop_map(Edit::Repeat),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Edit::Move(a, b)),
        (any::<usize>(), 0usize..40).prop_map(|(a, b)| Edit::Cut(a, b)),
        (
            any::<usize>(),
            0usize..40,
            prop::sample::select(FRAGMENTS.to_vec())
        )
            .prop_map(|(a, b, f)| Edit::Insert(a, b, f)),
    ]
}

fn apply(lines: &mut Vec<String>, e: &Edit) {
    if lines.is_empty() {
        return;
    }
    let n = lines.len();
    let boundary = |l: &str, at: usize| {
        let mut at = at.min(l.len());
        while !l.is_char_boundary(at) {
            at -= 1;
        }
        at
    };
    match *e {
        Edit::Drop(i) => {
            lines.remove(i % n);
        }
        Edit::Repeat(i) => {
            let l = lines[i % n].clone();
            lines.insert(i % n, l);
        }
        Edit::Move(a, b) => {
            let l = lines.remove(a % n);
            lines.insert(b % n, l);
        }
        Edit::Cut(i, at) => {
            let l = &mut lines[i % n];
            let at = boundary(l, at);
            l.truncate(at);
        }
        Edit::Insert(i, at, text) => {
            let l = &mut lines[i % n];
            let at = boundary(l, at);
            l.insert_str(at, text);
        }
    }
}
