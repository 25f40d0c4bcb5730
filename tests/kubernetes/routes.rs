//! An HTTPRoute drives a service's weights: the real `teal serve` against
//! the fake API server (`support/kube_api.rs`: HTTPRoute, Gateway and
//! GatewayClass list/watch, status writes with `resourceVersion`
//! conflicts), a real edge Envoy under load, and the real CLI.
//!
//! The route is changed the way Argo Rollouts' Gateway API plugin changes
//! it (read the route, set the backends' weights, update it with the
//! version read); teal applies each generation through a confirmed shift
//! and writes `Accepted`, `ResolvedRefs` and `teal.dev/Confirmed` into the
//! route's status, beside another controller's entry, which survives.

use std::time::Duration;

use serde_json::{Value, json};

use super::flip::{cli, spawn_teal};
use crate::support::ads::{Answer, answering_proxy};
use crate::support::http::{self, Upstream};
use crate::support::kube_api::{FakeKube, gateway, gateway_class, route, slice};
use crate::support::traffic::Traffic;
use crate::support::{Envoy, Protocol, free_port, show, wait_until};

const TEAL_CONTROLLER: &str = "teal.dev/gateway-controller";
const OTHER_CONTROLLER: &str = "example.com/other-gateway";

/// The entry `controller` wrote for parent `parent` in the route's status.
fn entry<'a>(route: &'a Value, controller: &str, parent: &str) -> Option<&'a Value> {
    route["status"]["parents"].as_array()?.iter().find(|e| {
        e["controllerName"] == controller && e["parentRef"]["name"].as_str() == Some(parent)
    })
}

/// `(status, reason, observedGeneration, message)` of condition `type_`.
fn condition(entry: &Value, type_: &str) -> Option<(String, String, i64, String)> {
    let c = entry["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?;
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str()?.to_owned(),
        c["observedGeneration"].as_i64()?,
        c["message"].as_str().unwrap_or("").to_owned(),
    ))
}

/// Waits until teal's entry for `public` says `type_` is `status` with
/// `reason` for `generation`; returns its message.
async fn wait_condition(
    api: &FakeKube,
    type_: &str,
    status: &str,
    reason: &str,
    generation: i64,
    log: impl Fn() -> String,
) -> String {
    let what = format!("{type_}={status} ({reason}) for generation {generation}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = api.get("httproutes", "shop", "web").expect("the route");
        if let Some(c) = entry(&r, TEAL_CONTROLLER, "public").and_then(|e| condition(e, type_))
            && c.0 == status
            && c.1 == reason
            && c.2 == generation
        {
            return c.3;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "no {what}; the route is {}\nteal's log:\n{}",
                serde_json::to_string_pretty(&r).unwrap_or_default(),
                log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What Argo Rollouts' Gateway API plugin does: read the route, set the
/// weights of its backends and its in-progress label, and update it with
/// the version it read.
async fn set_weights(api: &FakeKube, weights: &[(&str, i64)]) -> i64 {
    let path = "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/web";
    let got = http::get(api.addr.port(), path, &[])
        .await
        .expect("GET the route");
    assert_eq!(got.status, 200, "{}", got.body);
    let mut r: Value = serde_json::from_str(&got.body).expect("JSON");
    let refs: Vec<Value> = weights
        .iter()
        .map(|(n, w)| json!({"group": "", "kind": "Service", "name": n, "port": 80, "weight": w}))
        .collect();
    r["spec"]["rules"][0]["backendRefs"] = json!(refs);
    r["metadata"]["labels"]["rollouts.argoproj.io/gatewayapi-canary"] = json!("in-progress");
    let put = http::send_json(
        "PUT",
        api.addr.port(),
        path,
        "application/json",
        &r.to_string(),
    )
    .await
    .expect("PUT the route");
    assert_eq!(put.status, 200, "{}", put.body);
    let written: Value = serde_json::from_str(&put.body).expect("JSON");
    written["metadata"]["generation"]
        .as_i64()
        .expect("a generation")
}

/// teal serving `web` (blue and green from EndpointSlices, driven by
/// HTTPRoute `shop/web`) to an edge Envoy of the group implementing
/// Gateway `infra/public`; the route is attached to that Gateway and to
/// one of another controller, whose entry is in the route's status.
struct RouteWorld {
    api: FakeKube,
    dir: tempfile::TempDir,
    kubeconfig: std::path::PathBuf,
    xds: u16,
    admin: u16,
    edge: u16,
    envoy: Envoy,
    teal: tokio::process::Child,
    /// The other controller's entry, as written.
    theirs: Value,
    upstreams: [Upstream; 2],
}

impl RouteWorld {
    async fn start() -> RouteWorld {
        RouteWorld::start_with(true).await
    }

    /// [`RouteWorld::start`], without teal's Gateway unless `gateway`.
    async fn start_with(gateway_first: bool) -> RouteWorld {
        let api = FakeKube::start().await;
        let blue = Upstream::start("blue").await;
        let green = Upstream::start("green").await;
        api.apply(slice(
            "shop",
            "web-blue",
            "web-blue-1",
            blue.port,
            &[("127.0.0.1", true)],
        ));
        api.apply(slice(
            "shop",
            "web-green",
            "web-green-1",
            green.port,
            &[("127.0.0.1", true)],
        ));
        api.apply(gateway_class("teal", TEAL_CONTROLLER));
        api.apply(gateway_class("other", OTHER_CONTROLLER));
        if gateway_first {
            api.apply(gateway("infra", "public", "teal"));
        }
        api.apply(gateway("infra", "elsewhere", "other"));
        // Attached to teal's Gateway and to another controller's, which has
        // written its own entry already.
        let mut r = route(
            "shop",
            "web",
            json!([{"name": "public", "namespace": "infra"},
                   {"name": "elsewhere", "namespace": "infra"}]),
            &[("web-blue", 100), ("web-green", 0)],
        );
        let theirs = json!({
            "parentRef": {"name": "elsewhere", "namespace": "infra"},
            "controllerName": OTHER_CONTROLLER,
            "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                            "message": "theirs", "lastTransitionTime": "2026-01-01T00:00:00Z",
                            "observedGeneration": 1}],
            "vendorExtension": {"kept": true}
        });
        r["status"] = json!({"parents": [theirs.clone()]});
        api.apply(r);

        let dir = tempfile::tempdir().expect("temporary directory");
        let kubeconfig = api.kubeconfig(dir.path());
        let edge = free_port();
        std::fs::write(
            dir.path().join("teal.yaml"),
            format!(
                "services:
  web:
    live: blue
    connect_timeout: 1s
    kubernetes: {{route: {{namespace: shop, name: web}}}}
    fleets:
      blue:
        kubernetes: {{namespace: shop, service: web-blue, port: http}}
      green:
        kubernetes: {{namespace: shop, service: web-green, port: http}}
groups:
  edge:
    kubernetes: {{gateway: {{namespace: infra, name: public}}}}
    listeners:
      public:
        kind: edge
        address: 127.0.0.1:{edge}
        virtual_hosts:
          site:
            domains: ['*']
            routes:
              - prefix: /
                service: web
"
            ),
        )
        .expect("write the config");
        let (xds, admin) = (free_port(), free_port());
        let teal = spawn_teal(dir.path(), "teal.log", &kubeconfig, xds, admin);
        wait_until(Duration::from_secs(30), "teal's admin API", || async {
            http::get(admin, "/healthz", &[])
                .await
                .is_ok_and(|r| r.status == 200)
        })
        .await;
        let envoy = Envoy::start_on(xds, "edge", Protocol::Sotw).await;
        envoy.wait_for_answer(edge, "/", &[], "blue").await;
        RouteWorld {
            api,
            dir,
            kubeconfig,
            xds,
            admin,
            edge,
            envoy,
            teal,
            theirs,
            upstreams: [blue, green],
        }
    }

    fn log(&self) -> String {
        let mut all = String::new();
        for name in ["teal.log", "teal-2.log"] {
            all.push_str(&std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default());
        }
        all
    }

    async fn wait(&self, type_: &str, status: &str, reason: &str, generation: i64) -> String {
        wait_condition(&self.api, type_, status, reason, generation, || self.log()).await
    }
}

#[tokio::test]
async fn an_httproute_drives_the_weights_and_its_status_says_every_proxy_confirmed() {
    let w = RouteWorld::start().await;
    let RouteWorld {
        api,
        admin,
        edge,
        envoy,
        theirs,
        ..
    } = &w;
    let (admin, edge) = (*admin, *edge);
    let log = || w.log();
    // Generation 1 asks for what is served: confirmed as it is.
    let m = wait_condition(api, "teal.dev/Confirmed", "True", "Confirmed", 1, log).await;
    assert!(m.contains("already in effect"), "{m}");
    let r = api.get("httproutes", "shop", "web").expect("the route");
    let ours = entry(&r, TEAL_CONTROLLER, "public").expect("teal's entry");
    assert_eq!(
        condition(ours, "Accepted").map(|c| (c.0, c.1)),
        Some(("True".into(), "Accepted".into()))
    );
    assert_eq!(
        condition(ours, "ResolvedRefs").map(|c| (c.0, c.1)),
        Some(("True".into(), "ResolvedRefs".into()))
    );
    assert!(
        entry(&r, TEAL_CONTROLLER, "elsewhere").is_none(),
        "teal writes no entry for a parent it does not implement: {r}"
    );
    assert_eq!(entry(&r, OTHER_CONTROLLER, "elsewhere"), Some(theirs));

    // Argo moves all traffic to green, under load, while green's pod is
    // not ready: refused, saying why, and nothing moves.
    let green_port = w.upstreams[1].port;
    let green_pod = |ready| {
        slice(
            "shop",
            "web-green",
            "web-green-1",
            green_port,
            &[("127.0.0.1", ready)],
        )
    };
    api.apply(green_pod(false));
    wait_until(
        Duration::from_secs(10),
        "green has no ready endpoint",
        || async {
            let out = cli(admin, &["fleet", "show", "web", "green", "-o", "json"]).await;
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            v["endpoints"].as_array().is_some_and(Vec::is_empty)
        },
    )
    .await;
    let mut traffic = Traffic::start(edge, "/", &[]);
    traffic.wait_for_count(50).await;
    let writes_before = api.status_writes().len();
    let g = set_weights(api, &[("web-blue", 0), ("web-green", 100)]).await;
    assert_eq!(g, 2);
    let m = wait_condition(api, "teal.dev/Confirmed", "False", "Refused", 2, log).await;
    assert!(m.contains("no endpoints"), "{m}");
    envoy.wait_for_answer(edge, "/", &[], "blue").await;

    // The pod becomes ready: the same generation goes through, a
    // confirmed shift, Pending then Confirmed, and no request fails.
    api.apply(green_pod(true));
    let m = wait_condition(api, "teal.dev/Confirmed", "True", "Confirmed", 2, log).await;
    assert!(m.contains("1/1 proxies"), "{m}");
    envoy.wait_for_answer(edge, "/", &[], "green").await;
    // The gate says the same, with the generation.
    let gate = http::get(admin, "/v1/services/web", &[])
        .await
        .expect("the gate");
    let gate: Value = serde_json::from_str(&gate.body).expect("JSON");
    assert_eq!(gate["confirmed"], true, "{gate}");
    assert_eq!(
        gate["route"],
        json!({"namespace": "shop", "name": "web", "generation": 2,
               "confirmed_generation": 2, "state": "confirmed"}),
        "{gate}"
    );
    let pending = api.status_writes()[writes_before..].iter().any(|w| {
        w.body["status"]["parents"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|e| e["conditions"].as_array().into_iter().flatten())
            .any(|c| c["reason"] == "Pending" && c["observedGeneration"] == 2)
    });
    assert!(pending, "the status said Pending before Confirmed");
    traffic.wait_for_count(traffic.count() + 50).await;
    let answers = traffic.stop().await;
    let failed: Vec<_> = answers
        .iter()
        .filter(|a| !matches!(a, Ok((200, _))))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(5)]
    );

    // One history entry for the generation, by the route.
    let out = cli(admin, &["history", "web"]).await;
    let history = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        history.matches("k8s:HTTPRoute/shop/web").count(),
        1,
        "{}",
        show(&out)
    );

    // The CLI may not change what the route drives.
    for args in [
        &["flip", "web", "--to", "blue", "--timeout", "5s"][..],
        &[
            "shift",
            "web",
            "--to",
            "blue",
            "--steps",
            "50",
            "--timeout",
            "5s",
        ][..],
        &["rollback", "web", "--timeout", "5s"][..],
    ] {
        let out = cli(admin, args).await;
        assert_ne!(out.status.code(), Some(0), "{args:?}: {}", show(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("HTTPRoute shop/web"),
            "{args:?}: {}",
            show(&out)
        );
    }
    envoy.wait_for_answer(edge, "/", &[], "green").await;

    // A backend that is not a fleet: ResolvedRefs=False, nothing moves.
    let g = set_weights(api, &[("web-blue", 50), ("web-canary", 50)]).await;
    let m = wait_condition(api, "ResolvedRefs", "False", "BackendNotFound", g, log).await;
    assert!(m.contains("web-canary"), "{m}");
    let gate = http::get(admin, "/v1/services/web", &[])
        .await
        .expect("the gate");
    let gate: Value = serde_json::from_str(&gate.body).expect("JSON");
    assert_eq!(gate["route"]["generation"], g, "{gate}");
    assert_eq!(gate["route"]["confirmed_generation"], 2, "{gate}");
    assert_eq!(gate["route"]["state"], "not_applied", "{gate}");
    let r = api.get("httproutes", "shop", "web").expect("the route");
    let ours = entry(&r, TEAL_CONTROLLER, "public").expect("teal's entry");
    assert!(
        condition(ours, "teal.dev/Confirmed").is_none(),
        "nothing to confirm: {ours}"
    );
    for _ in 0..10 {
        let a = http::get(edge, "/", &[]).await.expect("a request");
        assert_eq!(a.body.trim(), "green", "traffic stays where it was");
    }

    // Status writes that meet a concurrent change are answered 409 and
    // made again from a fresh read.
    api.conflict_status_writes(2);
    let g = set_weights(api, &[("web-blue", 90), ("web-green", 10)]).await;
    wait_condition(api, "teal.dev/Confirmed", "True", "Confirmed", g, log).await;
    let codes: Vec<u16> = api.status_writes().iter().map(|w| w.code).collect();
    let conflicts = codes.iter().filter(|c| **c == 409).count();
    assert_eq!(conflicts, 2, "{codes:?}");
    let page = http::get(admin, "/metrics", &[])
        .await
        .expect("/metrics")
        .body;
    assert!(
        page.contains("teal_route_status_writes_total{result=\"conflict\"} 2\n"),
        "{page}"
    );
    let r = api.get("httproutes", "shop", "web").expect("the route");
    assert_eq!(
        entry(&r, OTHER_CONTROLLER, "elsewhere"),
        Some(theirs),
        "another controller's entry survives every write of teal's"
    );
    // At most one write per --kube-status-interval (250ms by default),
    // but for those made again at once after a 409.
    let writes = api.status_writes();
    for pair in writes.windows(2) {
        if pair[0].code == 200 {
            let gap = pair[1].at - pair[0].at;
            assert!(
                gap >= Duration::from_millis(200),
                "two status writes {gap:?} apart"
            );
        }
    }
    let out = cli(admin, &["status", "web"]).await;
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("90") && status.contains("10"),
        "{}",
        show(&out)
    );
}

#[tokio::test]
async fn a_nacked_generation_is_rolled_back_and_not_tried_again() {
    let mut w = RouteWorld::start().await;
    w.wait("teal.dev/Confirmed", "True", "Confirmed", 1).await;
    let (answer, answers) = tokio::sync::watch::channel(Answer::Ack);
    let _nacker = answering_proxy(w.xds, "nacking-proxy", answers).await;
    wait_until(
        Duration::from_secs(10),
        "the NACKing proxy ACKed",
        || async {
            let out = cli(w.admin, &["proxies"]).await;
            String::from_utf8_lossy(&out.stdout).contains("nacking-proxy")
        },
    )
    .await;

    let mut traffic = Traffic::start(w.edge, "/", &[]);
    traffic.wait_for_count(20).await;
    // It rejects any new weights from now on.
    answer
        .send(Answer::NackRouteChanges)
        .expect("the proxy listens");
    let g = set_weights(&w.api, &[("web-blue", 0), ("web-green", 100)]).await;
    let m = w.wait("teal.dev/Confirmed", "False", "RolledBack", g).await;
    assert!(
        m.contains("nacking-proxy"),
        "the reason names the proxy: {m}"
    );
    traffic.wait_for_count(traffic.count() + 20).await;
    let answers = traffic.stop().await;
    assert!(
        answers.iter().all(|a| matches!(a, Ok((200, _)))),
        "no request failed"
    );
    for _ in 0..10 {
        let a = http::get(w.edge, "/", &[]).await.expect("a request");
        assert_eq!(a.body, "blue", "traffic stays where it was");
    }

    // The generation is not applied again: not by this teal, nor by one
    // restarted (the route's status remembers).
    let route_ops = |out: &std::process::Output| {
        String::from_utf8_lossy(&out.stdout)
            .matches("k8s:HTTPRoute/shop/web")
            .count()
    };
    let once = route_ops(&cli(w.admin, &["history", "web"]).await);
    assert_eq!(once, 1);
    w.teal.kill().await.expect("stop teal");
    w.teal = spawn_teal(w.dir.path(), "teal-2.log", &w.kubeconfig, w.xds, w.admin);
    wait_until(Duration::from_secs(30), "the restarted teal", || async {
        http::get(w.admin, "/healthz", &[])
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let out = cli(w.admin, &["history", "web"]).await;
    assert_eq!(route_ops(&out), 1, "{}\n{}", show(&out), w.log());
    w.envoy.wait_for_answer(w.edge, "/", &[], "blue").await;
    let r = w.api.get("httproutes", "shop", "web").expect("the route");
    let ours = entry(&r, TEAL_CONTROLLER, "public").expect("teal's entry");
    assert_eq!(
        condition(ours, "teal.dev/Confirmed").map(|c| (c.1, c.2)),
        Some(("RolledBack".to_owned(), g)),
        "still says why"
    );
    let gate = http::get(w.admin, "/v1/services/web", &[])
        .await
        .expect("the gate");
    let gate: Value = serde_json::from_str(&gate.body).expect("JSON");
    assert_eq!(
        (&gate["route"]["generation"], &gate["route"]["state"]),
        (&json!(g), &json!("rolled_back")),
        "the restarted teal knows it too: {gate}"
    );

    // A new generation is applied.
    let g = set_weights(&w.api, &[("web-blue", 100), ("web-green", 0)]).await;
    w.wait("teal.dev/Confirmed", "True", "Confirmed", g).await;
}

#[tokio::test]
async fn a_route_whose_gateway_comes_later_is_taken_on_when_it_appears() {
    let w = RouteWorld::start_with(false).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let r = w.api.get("httproutes", "shop", "web").expect("the route");
    assert!(
        entry(&r, TEAL_CONTROLLER, "public").is_none(),
        "no Gateway of teal's yet, no entry: {r}"
    );
    w.api.apply(gateway("infra", "public", "teal"));
    w.wait("teal.dev/Confirmed", "True", "Confirmed", 1).await;
    let r = w.api.get("httproutes", "shop", "web").expect("the route");
    assert_eq!(entry(&r, OTHER_CONTROLLER, "elsewhere"), Some(&w.theirs));
}

#[tokio::test]
async fn a_mesh_route_with_a_service_parent_drives_the_sidecars() {
    let api = FakeKube::start().await;
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    api.apply(slice(
        "shop",
        "web-blue",
        "web-blue-1",
        blue.port,
        &[("127.0.0.1", true)],
    ));
    api.apply(slice(
        "shop",
        "web-green",
        "web-green-1",
        green.port,
        &[("127.0.0.1", true)],
    ));
    // GAMMA: the parent is the Service callers address.
    api.apply(route(
        "shop",
        "web",
        json!([{"group": "", "kind": "Service", "name": "web"}]),
        &[("web-blue", 100), ("web-green", 0)],
    ));
    let dir = tempfile::tempdir().expect("temporary directory");
    let kubeconfig = api.kubeconfig(dir.path());
    let sidecar = free_port();
    std::fs::write(
        dir.path().join("teal.yaml"),
        format!(
            "services:
  web:
    live: blue
    kubernetes: {{route: {{namespace: shop, name: web}}}}
    fleets:
      blue:
        kubernetes: {{namespace: shop, service: web-blue, port: http}}
      green:
        kubernetes: {{namespace: shop, service: web-green, port: http}}
groups:
  mesh:
    listeners:
      out:
        kind: sidecar
        address: 127.0.0.1:{sidecar}
        services: [web]
"
        ),
    )
    .expect("write the config");
    let (xds, admin) = (free_port(), free_port());
    let _teal = spawn_teal(dir.path(), "teal.log", &kubeconfig, xds, admin);
    let log = || std::fs::read_to_string(dir.path().join("teal.log")).unwrap_or_default();
    wait_until(Duration::from_secs(30), "teal's admin API", || async {
        http::get(admin, "/healthz", &[])
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    let envoy = Envoy::start_on(xds, "mesh", Protocol::Sotw).await;
    let host = [("host", "web")];
    envoy.wait_for_answer(sidecar, "/", &host, "blue").await;
    let g = set_weights(&api, &[("web-blue", 0), ("web-green", 100)]).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = api.get("httproutes", "shop", "web").expect("the route");
        let ours = r["status"]["parents"].as_array().and_then(|ps| {
            ps.iter().find(|e| {
                e["controllerName"] == TEAL_CONTROLLER && e["parentRef"]["kind"] == "Service"
            })
        });
        if let Some(c) = ours.and_then(|e| condition(e, "teal.dev/Confirmed"))
            && (c.0.as_str(), c.1.as_str(), c.2) == ("True", "Confirmed", g)
        {
            assert!(c.3.contains("1/1 proxies"), "{c:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no Confirmed entry for the Service parent: {r}\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    envoy.wait_for_answer(sidecar, "/", &host, "green").await;
}

/// `examples/kubernetes/gateway-api/teal-config.yaml` holds a config
/// `teal serve` accepts, whose route and Gateway are the example's.
#[test]
fn the_gateway_api_example_config_names_the_example_route_and_gateway() {
    let read = |file: &str| {
        std::fs::read_to_string(format!(
            "{}/examples/kubernetes/gateway-api/{file}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap_or_else(|e| panic!("{file}: {e}"))
    };
    let text = read("teal-config.yaml");
    let (_, body) = text
        .split_once("  teal.yaml: |\n")
        .expect("the teal.yaml key");
    let config: String = body
        .lines()
        .map(|l| l.strip_prefix("    ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n");
    let parsed =
        teal::config::Config::parse(&config, "teal-config.yaml").unwrap_or_else(|d| panic!("{d}"));
    let route = parsed.services["web"].route().expect("a route");
    let gateway = parsed.groups["edge"].gateway().expect("a Gateway");
    let named = |file: &str, r: &teal::config::KubernetesRef| {
        let text = read(file);
        assert!(
            text.contains(&format!(
                "  name: {}\n  namespace: {}\n",
                r.name, r.namespace
            )),
            "{file} is not {r}:\n{text}"
        );
    };
    named("httproute.yaml", route);
    named("gateway.yaml", gateway);
}
