//! Cordons through the real binary, CLI and Envoys: a cordoned proxy that
//! NACKs does not roll a flip back and the flip names it as not waited
//! for; the same proxy uncordoned rolls the flip back. Cordons survive a
//! restart and show in status, proxies and metrics.

use serde_json::Value;

use crate::support;
use crate::support::show;
use crate::support::world::{FLIP_TIMEOUT, World, stderr};

/// The edge routes web through a regex, so an Envoy whose RE2 program
/// size limit drops to 1 NACKs every route configuration it has not
/// loaded yet (see `envoy_flip::a_nack_during_a_flip_puts_every_proxy_back`).
const REGEX_ROUTE: &str = "regex: '/.*'";
const RE2_ERROR_LEVEL: &str = "re2.max_program_size.error_level";

fn proxy<'a>(proxies: &'a Value, node: &str) -> &'a Value {
    proxies["proxies"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["node_id"] == node))
        .unwrap_or_else(|| panic!("no {node} in {proxies:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cordoned_proxy_that_nacks_does_not_roll_back_and_uncordoned_it_does() {
    let mut w = World::start_with(REGEX_ROUTE, true).await;
    let edge_id = w.envoys[0].node_id.clone();
    w.envoys[0].set_runtime(RE2_ERROR_LEVEL, "1").await;

    // Uncordoned, the edge's NACK rolls the flip back.
    let out = w
        .cli(&["flip", "web", "--to", "green", "--timeout", "5s"])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    w.assert_everyone_on("blue").await;

    // Cordoned, the flip neither waits for it nor minds its NACK.
    let out = w
        .cli(&["cordon", &edge_id, "--reason", "bad runtime, INC-1"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let proxies = w.json(&["proxies"]).await;
    assert_eq!(proxy(&proxies, &edge_id)["cordoned"], true, "{proxies:#}");
    let out = w
        .cli(&["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("did not wait for cordoned proxies") && err.contains(&edge_id),
        "{err}"
    );
    let (web, _) = w.web_status().await;
    assert_eq!(web["live"], "green", "{web}");
    let history = w.json(&["history", "web"]).await;
    assert_eq!(
        history["entries"][0]["not_waited_for"],
        serde_json::json!([edge_id.as_str()]),
        "{history:#}"
    );
    let table = w.cli(&["history", "web"]).await;
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table.contains(&format!("(did not wait for {edge_id})")),
        "the history table says which proxies a change did not wait for:\n{table}"
    );
    // The edge did get green, and refused it.
    support::wait_until(support::CONVERGE, "the edge's NACK of green", || async {
        let proxies = w.json(&["proxies"]).await;
        proxy(&proxies, &edge_id)["types"]["RDS"]["state"] == "NACKED"
    })
    .await;

    // Durable: a restart keeps the cordon; status, JSON and metrics show it.
    w.teal.take().expect("teal").terminate().await;
    w.restart().await;
    support::wait_until(support::CONVERGE, "every Envoy back", || async {
        let proxies = w.json(&["proxies"]).await;
        proxies["proxies"].as_array().map_or(0, Vec::len) == w.envoys.len()
    })
    .await;
    let status = w.json(&["status"]).await;
    assert_eq!(
        status["cordons"][0]["node_id"],
        edge_id.as_str(),
        "{status:#}"
    );
    assert_eq!(status["cordons"][0]["reason"], "bad runtime, INC-1");
    assert!(
        w.metrics().await.contains("teal_cordoned_proxies 1"),
        "{}",
        w.metrics().await
    );
    let text = w.cli(&["proxies"]).await;
    assert!(
        String::from_utf8_lossy(&text.stdout).contains(&format!("{edge_id} CORDONED")),
        "{}",
        show(&text)
    );

    // Uncordoned again, it counts again: its standing NACK of green
    // (sent again after the restart) now refuses the next flip before
    // anything changes, as for any proxy (the first flip above shows an
    // uncordoned proxy's NACK rolling a flip back).
    let out = w.cli(&["uncordon", &edge_id]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let out = w
        .cli(&["flip", "web", "--to", "blue", "--timeout", "5s"])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&edge_id) && err.contains("RE2 program size"),
        "{err}"
    );
    let status = w.json(&["status"]).await;
    assert!(
        status["cordons"].as_array().is_some_and(Vec::is_empty),
        "{status:#}"
    );
}
