//! A release judged by the traffic the proxies report (LRS): the real
//! `teal serve`, three real Envoys reporting load over their xDS
//! connection (the bundled bootstrap's `load_stats_config`), a real green
//! upstream that passes its checks and fails real requests, and the real
//! CLI.

use std::time::{Duration, Instant};

use crate::support::http::{Health, Upstream};
use crate::support::show;
use crate::support::world::{ConfigSpec, PREFIX_ROUTE, World, bodies, stderr};

/// How long web's analysis watches green after the switch.
const WINDOW: Duration = Duration::from_secs(10);

/// teal's default `--load-report-interval`, which the world runs with.
const REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Green answers 503 to one request in ten while its `/healthz` (its
/// checks) passes. `teal flip web --to green` under steady traffic through
/// the edge: the checks pass before and after the switch, then the
/// analysis (at most 1% errors) sees green fail in the edge's load reports
/// and rolls the flip back within the window plus one report interval
/// (exit 2); once the rollback is confirmed no request fails, and `teal
/// history` gives the ratio and the proxy it came from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_to_a_fleet_failing_real_requests_is_rolled_back_by_its_traffic() {
    let failing = Upstream::start_failing("green", Health::new(), 10).await;
    let window = format!("{}s", WINDOW.as_secs());
    let w = World::start_edited(
        false,
        |ports| ConfigSpec {
            web: Some(vec![
                ("blue".to_owned(), vec![ports.blue]),
                ("green".to_owned(), vec![failing.port]),
            ]),
            ..World::usual_spec(ports, PREFIX_ROUTE)
        },
        |yaml| {
            yaml.replacen(
                "    timeout: 5s\n",
                &format!(
                    "    timeout: 5s\n    analysis:\n      max_error_ratio: 1%\n      \
                     min_requests: 20\n      window: {window}\n"
                ),
                1,
            )
        },
    )
    .await;
    w.assert_everyone_on("blue").await;

    let mut before = w.edge_answers();
    before.wait_for_count(50).await;
    let started = Instant::now();
    let flip = w.cli_spawn(&["flip", "web", "--to", "green", "--timeout", "10s"]);
    let out = flip.wait_with_output().await.expect("the flip ends");
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(2), "rolled back: {}", show(&out));
    // The analysis starts only once every proxy confirmed the switch and
    // green's checks passed after it; the CLI shows its phase.
    let progress = stderr(&out);
    assert!(
        progress.contains("analysis: watching the traffic: green: "),
        "{progress}"
    );
    let answers = before.stop().await;
    let failed = answers.iter().filter(|a| matches!(a, Ok((503, _)))).count();
    assert!(failed > 0, "green failed requests while it took traffic");

    // The reason, in the history, with the figures; green's share of
    // errors is 10%, and the verdict came within the window and an
    // interval of the switch (the time is the machine's own: from the
    // start of the analysis to the verdict).
    let history = w.history().await;
    let reason = history[0]["reason"].as_str().unwrap_or_default().to_owned();
    assert_eq!(history[0]["outcome"], "rolled-back", "{:#}", history[0]);
    assert!(
        reason.starts_with("green's error ratio was ")
            && reason.contains("over the 1% allowed")
            && reason.contains(&format!("reported by proxy {}", w.envoys[0].node_id)),
        "{reason}"
    );
    let ratio: f64 = reason["green's error ratio was ".len()..]
        .split('%')
        .next()
        .and_then(|r| r.parse().ok())
        .unwrap_or_else(|| panic!("no ratio in {reason:?}"));
    assert!((8.0..=12.0).contains(&ratio), "about 10%: {reason}");
    let after = reason
        .rsplit(", ")
        .next()
        .and_then(|t| t.strip_suffix("s after the switch"))
        .and_then(|s| s.parse::<f64>().ok())
        .map(Duration::from_secs_f64)
        .unwrap_or_else(|| panic!("no time in {reason:?}"));
    assert!(
        after <= WINDOW + REPORT_INTERVAL,
        "judged {after:?} after the switch"
    );
    eprintln!("judged {after:?} after the switch; the flip took {took:?} in all");
    let table = w.cli(&["history", "web"]).await;
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains("error ratio was"), "{table}");

    // Rolled back and confirmed: every Envoy is on blue, and nothing fails.
    w.wait_weights(&[0, 1, 2], &[("blue", 100)]).await;
    let mut after_rollback = w.edge_answers();
    after_rollback.wait_for_count(200).await;
    let answers = after_rollback.stop().await;
    assert!(
        bodies(&answers).iter().all(|b| b == "blue"),
        "only blue answers after the rollback: {answers:?}"
    );
}
