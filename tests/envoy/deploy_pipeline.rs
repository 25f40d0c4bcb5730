//! A release driven by a deploy pipeline, end to end: fleets whose
//! endpoints are `registered`, filled and emptied with the real CLI
//! (`teal fleet set`, `teal register`, `teal deregister`), served by the
//! real `teal serve` to three real Envoys (see `support::world`).
//!
//! Needs Envoy 1.40 (`TEAL_ENVOY=/path/to/envoy` or on the PATH); without
//! it this test fails, it does not skip.

use serde_json::Value;

use crate::support;
use crate::support::world::{FLIP_TIMEOUT, World, bodies, stderr};
use crate::support::{CONVERGE, show, wait_until};

/// One world, web's blue and green both `endpoints: registered` and empty
/// at start; in order:
/// - the pipeline registers blue (`teal fleet set`), every Envoy routes to
///   it; a flip to the still empty green is refused (exit 1) and changes
///   nothing;
/// - it registers green's instance, which reaches every Envoy through EDS
///   alone (routes keep their version);
/// - `teal flip web --to green` under load: exit 0, every Envoy on green,
///   not one failed request;
/// - deregistering green's only endpoint is refused (exit 1, it takes the
///   traffic); `teal retire web blue` then `teal deregister` blue's
///   instance: blue is empty, `teal fleet show` says who did what;
/// - teal killed with `kill -9` and restarted keeps green's registration
///   and serves the same version;
/// - `teal register ... --ttl 1s` adds an instance that leaves every
///   Envoy's EDS once its TTL runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_registers_flips_and_deregisters_through_real_envoys() {
    let mut w = World::start_edited(
        false,
        |ports| {
            let mut spec = World::usual_spec(ports, support::world::PREFIX_ROUTE);
            spec.web = Some(vec![
                ("blue".to_owned(), Vec::new()),
                ("green".to_owned(), Vec::new()),
            ]);
            spec
        },
        |yaml| yaml.replace("endpoints: []", "endpoints: registered"),
    )
    .await;
    let (blue, green, red) = (
        format!("127.0.0.1:{}", w.ports.blue),
        format!("127.0.0.1:{}", w.ports.green),
        format!("127.0.0.1:{}", w.ports.red),
    );

    // Blue's instance, as the pipeline that deployed it registers it.
    let out = w.cli(&["fleet", "set", "web", "blue", &blue]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    w.assert_everyone_on("blue").await;

    // Green has no endpoints yet: a flip is refused and changes nothing.
    let out = w
        .cli(&["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stderr(&out).contains("no endpoints"), "{}", show(&out));
    let (web, _) = w.web_status().await;
    assert_eq!(web["live"], "blue", "{web}");

    // Green's instance: an EDS-only change.
    let routes_before = route_versions(&w).await;
    assert!(
        routes_before.len() == 3
            && routes_before
                .iter()
                .all(|(_, c, l, r)| !c.is_empty() && !l.is_empty() && !r.is_empty()),
        "every proxy ACKed every type: {routes_before:?}"
    );
    let out = w.cli(&["fleet", "set", "web", "green", &green]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    for envoy in 0..w.envoys.len() {
        wait_until(CONVERGE, "green's endpoint reaches every Envoy", || {
            let w = &w;
            let green = green.clone();
            async move { w.cluster_endpoints(envoy, "web-green").await == [green] }
        })
        .await;
    }
    w.wait_all_synced().await;
    assert_eq!(
        route_versions(&w).await,
        routes_before,
        "an endpoint change moves no route, cluster or listener version"
    );

    // The flip, under load.
    let mut traffic = w.edge_answers();
    traffic.wait_for_count(20).await;
    let out = w
        .cli(&["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    w.assert_everyone_on("green").await;
    let seen = traffic.count();
    traffic.wait_for_count(seen + 20).await;
    let answers = traffic.stop().await;
    let failed: Vec<_> = answers
        .iter()
        .filter(|a| !matches!(a, Ok((200, _))))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:?}",
        failed.len(),
        answers.len()
    );
    let bodies = bodies(&answers);
    assert!(bodies.iter().any(|b| b == "blue") && bodies.iter().any(|b| b == "green"));
    eprintln!("flip under load: {} requests, 0 failed", answers.len());

    // Green takes the traffic: its last endpoint does not go without --force.
    let out = w.cli(&["deregister", "web", "green", &green]).await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(stderr(&out).contains("--force"), "{}", show(&out));

    // Retire blue, then its instance leaves.
    let out = w.cli(&["retire", "web", "blue", "--after", "0s"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let out = w.cli(&["deregister", "web", "blue", &blue]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let blue_fleet = w.json(&["fleet", "show", "web", "blue"]).await;
    assert_eq!(
        blue_fleet["endpoints"],
        Value::Array(Vec::new()),
        "{blue_fleet}"
    );
    assert_eq!(blue_fleet["source"], "registered");
    assert_eq!(
        blue_fleet["changes"][0]["verb"], "deregister",
        "{blue_fleet}"
    );
    assert_eq!(blue_fleet["changes"][0]["actor"], "admin", "{blue_fleet}");
    assert_eq!(blue_fleet["changes"][0]["removed"][0], blue.as_str());

    // A crash keeps the registrations and the version.
    let (_, version) = w.web_status().await;
    w.teal.take().expect("teal runs").kill_9().await;
    w.restart().await;
    let green_fleet = w.json(&["fleet", "show", "web", "green"]).await;
    assert_eq!(
        green_fleet["endpoints"][0]["address"],
        green.as_str(),
        "{green_fleet}"
    );
    assert_eq!(green_fleet["version"], version.as_str(), "{green_fleet}");
    w.wait_all_synced().await;
    w.assert_everyone_on("green").await;

    // A self-registered instance leaves EDS when its TTL runs out.
    let out = w
        .cli(&["register", "web", "green", &red, "--ttl", "1s"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let both = {
        let mut v = vec![green.clone(), red.clone()];
        v.sort();
        v
    };
    wait_until(CONVERGE, "the registered instance reaches the edge", || {
        let (w, both) = (&w, both.clone());
        async move { w.cluster_endpoints(0, "web-green").await == both }
    })
    .await;
    wait_until(CONVERGE, "the registration expires from the edge", || {
        let (w, green) = (&w, green.clone());
        async move { w.cluster_endpoints(0, "web-green").await == [green] }
    })
    .await;
    let green_fleet = w.json(&["fleet", "show", "web", "green"]).await;
    assert_eq!(green_fleet["changes"][0]["verb"], "expire", "{green_fleet}");
    assert_eq!(green_fleet["changes"][0]["actor"], "teal", "{green_fleet}");
}

/// The RDS, CDS and LDS versions every proxy ACKed, per proxy.
async fn route_versions(w: &World) -> Vec<(String, String, String, String)> {
    let proxies = w.json(&["proxies"]).await;
    let mut out: Vec<_> = proxies["proxies"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|p| {
            let acked = |ty: &str| {
                p["types"][ty]["acked"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned()
            };
            (
                p["node_id"].as_str().unwrap_or_default().to_owned(),
                acked("CDS"),
                acked("LDS"),
                acked("RDS"),
            )
        })
        .collect();
    out.sort();
    out
}
