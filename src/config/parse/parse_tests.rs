use std::time::Duration;

use super::*;
use crate::config::model::Protocol;

/// The decoder with default limits.
fn parse(text: &str, file: &str) -> Result<Config, Diagnostics> {
    super::parse(text, file, &Limits::default())
}

const MINIMAL: &str = "\
services:
  web:
    live: blue
    fleets:
      blue:
        endpoints: [127.0.0.1:8101]
      green: {}
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
";

fn errors(text: &str) -> Vec<String> {
    match parse(text, "t.yaml") {
        Ok(c) => panic!("expected errors, parsed {c:?}"),
        Err(d) => d.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn minimal_config_and_defaults() {
    let c = parse(MINIMAL, "t.yaml").expect("valid");
    let web = &c.services["web"];
    assert_eq!(web.live, "blue");
    assert_eq!(web.protocol, Protocol::Http1);
    assert_eq!(web.connect_timeout, Duration::from_secs(1));
    assert_eq!(web.timeout, None);
    assert!(web.fleets["green"].endpoints.is_empty());
    assert_eq!(web.fleets["blue"].endpoints[0].weight, 1);
    let g = &c.groups["edge"].listeners["public"];
    assert_eq!(g.address().map(|a| a.port()), Some(10000));
}

#[test]
fn the_example_is_valid() {
    let c = parse(super::super::DEFAULT_CONFIG, "teal.yaml").expect("example is valid");
    assert_eq!(
        c.services.keys().collect::<Vec<_>>(),
        vec!["api", "web"],
        "two services"
    );
    assert_eq!(c.services["api"].protocol, Protocol::Http2);
    assert_eq!(
        c.services["web"].checks["home"].body_contains.as_deref(),
        Some("<html")
    );
    assert_eq!(c.groups.len(), 2);
}

#[test]
fn reports_every_problem_with_positions() {
    let text = "\
services:
  web:
    live: purple
    colour: teal
    connect_timeout: 5
    fleets:
      blue:
        endpoints:
          - 10.0.0.1:http
          - address: 10.0.0.2:80
            weight: 0
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
                service: shop
  empty:
    listeners: {}
";
    let errs = errors(text);
    let expected = [
        "t.yaml:3:11: services.web.live: live fleet \"purple\" is not one of the fleets (blue)",
        "t.yaml:4:5: services.web.colour: unknown key \"colour\"",
        "t.yaml:5:22: services.web.connect_timeout: bad duration \"5\": missing unit",
        "t.yaml:9:13: services.web.fleets.blue.endpoints[0]: bad address \"10.0.0.1:http\": port must be",
        "t.yaml:11:21: services.web.fleets.blue.endpoints[1].weight: 0 is out of range",
        "t.yaml:23:26: groups.edge.listeners.public.virtual_hosts.all.routes[0].service: unknown service \"shop\"",
        "t.yaml:25:16: groups.empty.listeners: a group needs at least one listener",
    ];
    assert_eq!(errs.len(), expected.len(), "{errs:#?}");
    for (got, want) in errs.iter().zip(expected) {
        assert!(got.starts_with(want), "got {got:?}, want {want:?}");
    }
}

#[test]
fn duplicate_keys_are_reported() {
    let text = MINIMAL.replace("    live: blue\n", "    live: blue\n    live: green\n");
    let errs = errors(&text);
    assert_eq!(
        errs,
        vec!["t.yaml:4:5: services.web.live: duplicate key \"live\"".to_owned()]
    );
}

#[test]
fn live_fleet_without_endpoints() {
    let text = MINIMAL.replace("live: blue", "live: green");
    let errs = errors(&text);
    assert_eq!(
        errs,
        vec!["t.yaml:3:11: services.web.live: live fleet \"green\" has no endpoints".to_owned()]
    );
}

#[test]
fn registered_fleets_take_no_endpoints_from_the_file() {
    let text = MINIMAL.replace("green: {}", "green: {endpoints: registered}");
    let config = parse(&text, "t.yaml").expect("valid");
    let green = &config.services["web"].fleets["green"];
    assert_eq!(green.source, crate::config::EndpointSource::Registered);
    assert!(green.endpoints.is_empty());
    assert!(config.services["web"].fleets["blue"].source.is_file());
    // A registered live fleet gets its endpoints at run time.
    let live = text.replace("live: blue", "live: green");
    assert!(parse(&live, "t.yaml").is_ok());
    let typo = MINIMAL.replace("green: {}", "green: {endpoints: registerd}");
    assert_eq!(
        errors(&typo),
        vec![
            "t.yaml:7:26: services.web.fleets.green.endpoints: expected a list of endpoints or \
             `registered` (endpoints set through the admin API), found \"registerd\""
                .to_owned()
        ]
    );
}

#[test]
fn cluster_name_collisions() {
    let text = "\
services:
  a-b:
    live: c
    fleets: {c: {endpoints: [127.0.0.1:1]}}
  a:
    live: b-c
    fleets: {b-c: {endpoints: [127.0.0.1:2]}}
groups:
  g:
    listeners:
      l: {kind: sidecar, address: 127.0.0.1:15001, services: [a, a-b]}
";
    let errs = errors(text);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].contains("cluster name \"a-b-c\""), "{}", errs[0]);
}

#[test]
fn structural_errors_do_not_panic() {
    for text in [
        "",
        "[]",
        "services: 3\ngroups: []\n",
        "services:\n  web: []\ngroups:\n  g: x\n",
        "services: {web: {fleets: {blue: {endpoints: [{}]}}}}\n",
        "a: [1, 2\n",
        "a: 1\n---\nb: 2\n",
        "? [a]\n: b\n",
        "services: *nope\n",
        "services:\n  web:\n    fleets:\n      blue:\n        endpoints:\n          - address: [1]\n",
    ] {
        let errs = errors(text);
        assert!(!errs.is_empty(), "{text:?}");
        for e in &errs {
            assert!(e.starts_with("t.yaml:"), "{e}");
        }
    }
}

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
    assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
    assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
    assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    for bad in [
        "",
        "5",
        "5 s",
        "s",
        "1.5s",
        "3d",
        "-1s",
        "25h",
        "99999999999999999999s",
    ] {
        assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn addresses() {
    assert_eq!(
        parse_address("127.0.0.1:8101").expect("ok").to_string(),
        "127.0.0.1:8101"
    );
    assert_eq!(
        parse_address("[::1]:80").expect("ok").to_string(),
        "[::1]:80"
    );
    for bad in [
        "127.0.0.1",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "10.0.0.1:http",
        "example.com:80",
        "::1:80",
        ":80",
    ] {
        assert!(parse_address(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn names_are_checked() {
    assert!(is_dns_name("web"));
    assert!(is_dns_name("web-2"));
    assert!(!is_dns_name("Web"));
    assert!(!is_dns_name("2web"));
    assert!(!is_dns_name("web-"));
    assert!(!is_dns_name("we.b"));
    assert!(is_plain_name("edge_1.a-b"));
    assert!(!is_plain_name("a b"));
}

#[test]
fn routes_take_a_prefix_or_a_regex() {
    use crate::config::model::{ListenerKind, PathMatch};
    let text = MINIMAL.replace("- prefix: /", "- regex: '/(a|b)/[0-9]+'");
    let c = parse(&text, "t.yaml").expect("valid");
    let ListenerKind::Edge { virtual_hosts, .. } = &c.groups["edge"].listeners["public"].kind
    else {
        panic!("not an edge listener");
    };
    assert_eq!(
        virtual_hosts["all"].routes[0].path,
        PathMatch::Regex("/(a|b)/[0-9]+".to_owned())
    );
    let route = "groups.edge.listeners.public.virtual_hosts.all.routes[0]";
    assert_eq!(
        errors(&MINIMAL.replace("- prefix: /", "- regex: '/(unclosed'")),
        [format!(
            "t.yaml:18:24: {route}.regex: bad regex \"/(unclosed\": unclosed group"
        )]
    );
    assert_eq!(
        errors(&MINIMAL.replace("- prefix: /", "- regex: ''")),
        [format!(
            "t.yaml:18:24: {route}.regex: empty regex: it would match no path"
        )]
    );
    assert_eq!(
        errors(&MINIMAL.replace("- prefix: /", "- prefix: /\n                regex: /x")),
        [format!(
            "t.yaml:19:24: {route}.regex: a route takes `prefix` or `regex`, not both"
        )]
    );
    assert_eq!(
        errors(&MINIMAL.replace("- prefix: /\n                service", "- service")),
        [format!(
            "t.yaml:18:17: {route}: missing required key `prefix` (or `regex`)"
        )]
    );
}

/// MINIMAL with a second service, `api`, and a first group `clients`
/// whose listeners are `listeners` (YAML at six spaces).
fn with_clients(listeners: &str) -> String {
    MINIMAL.replace(
        "groups:\n",
        &format!(
            "  api:\n    live: blue\n    fleets:\n      blue: {{endpoints: [127.0.0.1:8201]}}\n\
             groups:\n  clients:\n    listeners:\n{listeners}"
        ),
    )
}

#[test]
fn grpc_listeners_name_resources_after_their_services() {
    use crate::config::model::ListenerKind;
    let text = with_clients("      g: {kind: grpc, services: [web, api]}\n");
    let c = parse(&text, "t.yaml").expect("valid");
    let l = &c.groups["clients"].listeners["g"];
    assert_eq!(
        l.kind,
        ListenerKind::Grpc {
            services: vec!["api".to_owned(), "web".to_owned()]
        }
    );
    assert_eq!(l.address(), None);
    assert_eq!(c.services_of(&c.groups["clients"]), ["api", "web"]);
}

#[test]
fn grpc_listener_errors() {
    let g = "groups.clients.listeners";
    assert_eq!(
        errors(&with_clients(
            "      g: {kind: grpc, address: 127.0.0.1:1, services: [web]}\n"
        )),
        [format!(
            "t.yaml:15:32: {g}.g.address: a grpc listener has no `address`: proxyless gRPC \
             clients fetch it by name (`xds:///SERVICE`) and open no port"
        )]
    );
    assert_eq!(
        errors(&with_clients("      g: {kind: grpc, services: []}\n")),
        [format!(
            "t.yaml:15:33: {g}.g.services: a grpc listener needs at least one service"
        )]
    );
    assert_eq!(
        errors(&with_clients("      g: {kind: grpc, services: [shop]}\n")),
        [format!(
            "t.yaml:15:34: {g}.g.services[0]: unknown service \"shop\" (known: api, web)"
        )]
    );
    assert_eq!(
        errors(&with_clients("      g: {kind: grpc}\n")),
        [format!(
            "t.yaml:15:10: {g}.g: missing required key `services`"
        )]
    );
    // A sidecar listener named like a service of a grpc listener, then two
    // grpc listeners with a service in common: both clash.
    let errs = errors(&with_clients(
        "      web: {kind: sidecar, address: 127.0.0.1:15001, services: [web]}\n\
         \x20     g: {kind: grpc, services: [api, web]}\n\
         \x20     h: {kind: grpc, services: [api]}\n",
    ));
    assert_eq!(
        errs,
        [
            format!(
                "t.yaml:16:39: {g}.g.services[1]: listener name \"web\" is already used by \
                 listener \"web\" (a grpc listener names its Listener and RouteConfiguration \
                 after each of its services); rename one"
            ),
            format!(
                "t.yaml:17:34: {g}.h.services[0]: listener name \"api\" is already used by \
                 listener \"g\" (a grpc listener names its Listener and RouteConfiguration \
                 after each of its services); rename one"
            ),
        ]
    );
    // The same service in grpc listeners of different groups is fine.
    let text = with_clients("      g: {kind: grpc, services: [web]}\n").replace(
        "groups:\n",
        "groups:\n  other:\n    listeners:\n      g: {kind: grpc, services: [web]}\n",
    );
    assert!(parse(&text, "t.yaml").is_ok());
}

#[test]
fn group_identities_are_checked_patterns() {
    let with = |list: &str| {
        MINIMAL.replace(
            "  edge:\n    listeners:\n",
            &format!("  edge:\n    identities: {list}\n    listeners:\n"),
        )
    };
    let c = parse(
        &with("['spiffe://prod.example/ns/shop/sa/*', edge.example]"),
        "t.yaml",
    )
    .expect("valid");
    let ids: Vec<&str> = c.groups["edge"]
        .identities
        .iter()
        .map(|p| p.as_str())
        .collect();
    assert_eq!(ids, ["spiffe://prod.example/ns/shop/sa/*", "edge.example"]);
    assert!(
        parse(MINIMAL, "t.yaml").expect("valid").groups["edge"]
            .identities
            .is_empty()
    );
    assert_eq!(
        errors(&with("['spiffe://prod.example/sa/web-*']")),
        ["t.yaml:10:18: groups.edge.identities[0]: bad identity \
          \"spiffe://prod.example/sa/web-*\": `*` must be a whole path segment \
          (`.../sa/*`), not part of one"]
    );
    assert_eq!(
        errors(&with("[]")),
        [
            "t.yaml:10:17: groups.edge.identities: an empty list would admit no proxy at all; \
          list at least one identity (or remove the key to admit any)"
        ]
    );
}

#[test]
fn zones_are_printable_text() {
    let zoned = |zone: &str| {
        MINIMAL.replace(
            "endpoints: [127.0.0.1:8101]",
            &format!("endpoints: [{{address: 127.0.0.1:8101, zone: \"{zone}\"}}]"),
        )
    };
    assert!(parse(&zoned("eu-west-1a"), "t.yaml").is_ok());
    for hidden in ["a\\u200bb", "a\\u202eb", "a\\u2028b", "\\ufeffa", "a\\x1bb"] {
        let e = errors(&zoned(hidden));
        assert!(
            e.iter().any(|e| e.contains("printable text")),
            "{hidden}: {e:?}"
        );
    }
    let e = errors(&zoned(&"z".repeat(129)));
    assert!(e.iter().any(|e| e.contains("printable text")), "{e:?}");
}

/// MINIMAL with `analysis:` set to `body` (lines under the key).
fn with_analysis(body: &str) -> String {
    let indented: String = body.lines().map(|l| format!("      {l}\n")).collect();
    MINIMAL.replace(
        "    live: blue\n",
        &format!("    live: blue\n    analysis:\n{indented}"),
    )
}

#[test]
fn an_analysis_takes_defaults_for_all_but_its_threshold() {
    use crate::config::model::{Ratio, TooFewRequests};
    let c = parse(&with_analysis("max_error_ratio: 1%"), "t.yaml").expect("valid");
    let a = c.services["web"].analysis.clone().expect("an analysis");
    assert_eq!(a.max_error_ratio, Some(Ratio::from_ppm(10_000)));
    assert_eq!(a.max_error_ratio_over_baseline, None);
    assert_eq!(a.min_requests, 100);
    assert_eq!(a.window, Duration::from_secs(30));
    assert_eq!(a.too_few_requests, TooFewRequests::Wait);
    assert_eq!(
        parse(MINIMAL, "t.yaml").expect("valid").services["web"].analysis,
        None
    );

    let full = "max_error_ratio: 2.5%\nmax_error_ratio_over_baseline: 0.05%\n\
                min_requests: 20\nwindow: 10m\ntoo_few_requests: pass";
    let a = parse(&with_analysis(full), "t.yaml")
        .expect("valid")
        .services["web"]
        .analysis
        .clone()
        .expect("an analysis");
    assert_eq!(a.max_error_ratio, Some(Ratio::from_ppm(25_000)));
    assert_eq!(a.max_error_ratio_over_baseline, Some(Ratio::from_ppm(500)));
    assert_eq!(a.min_requests, 20);
    assert_eq!(a.window, Duration::from_secs(600));
    assert_eq!(a.too_few_requests, TooFewRequests::Pass);
}

#[test]
fn a_bad_analysis_is_reported_key_by_key() {
    let bad = "max_error_ratio: 1\nmax_error_ratio_over_baseline: 100%\nmin_requests: 0\n\
               window: 500ms\ntoo_few_requests: maybe\nwatch: everything";
    assert_eq!(
        errors(&with_analysis(bad)),
        [
            "t.yaml:5:24: services.web.analysis.max_error_ratio: expected a percentage such as \
             1% or 0.5%, found \"1\"",
            "t.yaml:6:38: services.web.analysis.max_error_ratio_over_baseline: 100% is no \
             threshold: no error ratio is over it",
            "t.yaml:7:21: services.web.analysis.min_requests: 0 is out of range (must be from 1 \
             to 10000000)",
            "t.yaml:8:15: services.web.analysis.window: window 500ms is out of range (must be \
             from 1s to 600s)",
            "t.yaml:9:25: services.web.analysis.too_few_requests: unknown policy \"maybe\" \
             (expected pass, fail or wait)",
            "t.yaml:10:7: services.web.analysis.watch: unknown key \"watch\" (expected one of: \
             max_error_ratio, max_error_ratio_over_baseline, min_requests, window, \
             too_few_requests)",
        ]
    );
    assert_eq!(
        errors(&with_analysis("min_requests: 10")),
        [
            "t.yaml:5:7: services.web.analysis: an analysis needs a threshold: max_error_ratio, \
             max_error_ratio_over_baseline, or both"
        ]
    );
    assert_eq!(
        errors(&with_analysis("window: 11m\nmax_error_ratio: 1%")),
        [
            "t.yaml:5:15: services.web.analysis.window: window 660s is out of range (must be \
             from 1s to 600s)"
        ]
    );
}

#[test]
fn percentages_are_read_to_a_millionth_and_shown_as_written() {
    use crate::config::model::Ratio;
    for (text, ppm) in [
        ("0%", 0),
        ("1%", 10_000),
        ("0.5%", 5_000),
        ("0.0001%", 1),
        ("12.3456%", 123_456),
        ("100%", 1_000_000),
        ("007%", 70_000),
    ] {
        let r = Ratio::parse_percent(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(r.ppm(), ppm, "{text}");
    }
    for (ppm, shown) in [
        (0, "0%"),
        (10_000, "1%"),
        (5_000, "0.5%"),
        (123_450, "12.345%"),
    ] {
        assert_eq!(Ratio::from_ppm(ppm).to_string(), shown);
    }
    for bad in [
        "",
        "%",
        "1",
        "1.%",
        ".5%",
        "1.23456%",
        "-1%",
        "100.0001%",
        "101%",
        "1 %",
        "1e2%",
        "99999999999%",
    ] {
        assert!(Ratio::parse_percent(bad).is_err(), "{bad:?} accepted");
    }
}
