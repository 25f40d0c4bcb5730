//! A retirement that waits for the proxies' own word that the fleet has
//! drained, through the real binary, CLI and Envoys reporting their load
//! (LRS, turned on by the shipped bootstrap): a slow request in flight to
//! blue when `teal retire` runs holds the retirement, ends with its 200,
//! and only then do blue's endpoints leave every Envoy; `teal wait
//! drained` exits 0 only after that request finished.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::http::{self, Upstream};
use crate::support::world::{FLIP_TIMEOUT, PREFIX_ROUTE, World};
use crate::support::{CONVERGE, show, wait_until};

/// How long blue holds the request in flight.
const HELD: Duration = Duration::from_secs(5);

/// The path blue answers only after [`HELD`].
const SLOW_PATH: &str = "/upload";

/// The entry of `fleet` in a service's `drains`.
fn drain<'a>(web: &'a Value, fleet: &str) -> &'a Value {
    web["drains"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["fleet"] == fleet))
        .unwrap_or_else(|| panic!("no drain of {fleet} in {web:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retirement_waits_for_a_request_in_flight_and_then_blue_leaves_every_envoy() {
    // blue is one upstream that holds SLOW_PATH for HELD; web's route
    // timeout is raised above it, so only the retirement could cut it.
    let slow_blue = Upstream::start_slow("blue", SLOW_PATH, HELD).await;
    let blue_port = slow_blue.port;
    let w = World::start_edited(
        false,
        |ports| {
            let mut spec = World::usual_spec(ports, PREFIX_ROUTE);
            spec.web = Some(vec![
                ("blue".to_owned(), vec![blue_port]),
                ("green".to_owned(), vec![ports.green]),
            ]);
            spec
        },
        |yaml| yaml.replacen("\n    timeout: 5s\n", "\n    timeout: 30s\n", 1),
    )
    .await;
    w.assert_everyone_on("blue").await;
    let blue = format!("127.0.0.1:{blue_port}");
    let edge_id = w.envoys[0].node_id.clone();

    // A request to blue that takes HELD, then everything to green.
    let edge = w.edge_port;
    let started = Instant::now();
    let request = tokio::spawn(async move {
        let answer = http::get_within(edge, SLOW_PATH, &[], HELD * 4).await;
        (answer, Instant::now())
    });
    wait_until(
        CONVERGE,
        "the edge reports the request in flight to blue",
        || async {
            let (web, _) = w.web_status().await;
            web["traffic"]
                .as_array()
                .and_then(|t| t.iter().find(|f| f["fleet"] == "blue"))
                .is_some_and(|f| f["in_progress"] == 1)
        },
    )
    .await;
    let out = w
        .cli(&["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    w.assert_everyone_on("green").await;

    // Retire blue at once, and wait for it to drain as a pipeline would.
    let retire = w.cli_spawn(&["retire", "web", "blue", "--drain-timeout", "1m"]);
    let waiter = w.cli_spawn(&["wait", "drained", "web", "blue", "--timeout", "1m"]);
    let web = w.wait_phase("draining", None).await;
    assert!(
        started.elapsed() < HELD,
        "the request must still be in flight here: {:?}",
        started.elapsed()
    );
    // While it drains, the progress names the edge and its request, status
    // says blue is not drained, and every Envoy still holds blue.
    let web_now = w
        .wait_web("the edge named as draining", |web| {
            web["in_progress"]["waiting_for"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|id| *id == edge_id.as_str()))
        })
        .await;
    let message = web_now["in_progress"]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(
        message.contains(&format!("{edge_id} (1)")),
        "the progress names the edge and its request in flight: {web:#}"
    );
    let blue_drain = drain(&web_now, "blue");
    assert_eq!(blue_drain["drained"], false, "{web_now:#}");
    assert_eq!(blue_drain["draining"][0]["proxy"], edge_id.as_str());
    assert_eq!(blue_drain["draining"][0]["in_flight"], 1);
    assert_eq!(blue_drain["not_reporting_count"], 0, "every Envoy reports");
    for i in 0..w.envoys.len() {
        assert_eq!(
            w.cluster_endpoints(i, "web-blue").await,
            std::slice::from_ref(&blue),
            "{} still holds blue while it drains",
            w.envoys[i].node_id
        );
    }

    // The request ends with blue's answer; then the wait and the
    // retirement end, in that order of time or later.
    let wait_done = async {
        let out = waiter.wait_with_output().await.expect("teal wait drained");
        (out, Instant::now())
    };
    let retire_done = async {
        let out = retire.wait_with_output().await.expect("teal retire");
        (out, Instant::now())
    };
    let (answered, (waited, wait_at), (retired, retire_at)) =
        tokio::join!(request, wait_done, retire_done);
    let (answer, answered_at) = answered.expect("the request's task");
    let answer = answer.expect("the request held in flight is answered");
    assert_eq!((answer.status, answer.body.as_str()), (200, "blue"));
    assert!(started.elapsed() >= HELD);
    assert_eq!(waited.status.code(), Some(0), "{}", show(&waited));
    assert!(
        wait_at >= answered_at,
        "`teal wait drained` exited {:?} before the request ended",
        answered_at - wait_at
    );
    assert!(
        String::from_utf8_lossy(&waited.stdout).contains("web blue: drained"),
        "{}",
        show(&waited)
    );
    assert_eq!(retired.status.code(), Some(0), "{}", show(&retired));
    assert!(
        retire_at >= answered_at,
        "the retirement ended before the request"
    );

    // Then blue's endpoints leave every Envoy's EDS.
    let (web, _) = w.web_status().await;
    assert_eq!(web["retired"][0], "blue", "{web:#}");
    for i in 0..w.envoys.len() {
        let node = w.envoys[i].node_id.clone();
        wait_until(
            CONVERGE,
            &format!("{node} drops blue's endpoints"),
            || async { w.cluster_endpoints(i, "web-blue").await.is_empty() },
        )
        .await;
    }
    drop(slow_blue);
}
