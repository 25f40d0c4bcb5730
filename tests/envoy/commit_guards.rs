//! Traffic never goes to a fleet that cannot take it, checked where it
//! would happen, through the real binary, CLI and Envoys:
//!
//! - a flip held in its checks while its target's only registration runs
//!   out is refused at its commit, and every Envoy stays on blue;
//! - a shift whose next step's target was emptied (`--force`) between
//!   steps is undone to where it started;
//! - a reload that points the live fleet at `endpoints: registered`, with
//!   nothing registered, is refused and blue keeps being served;
//! - a rollback goes past a proxy that rejects its configuration and one
//!   that answers nothing, names both, and ends `unconfirmed`.
//!
//! Needs Envoy 1.40 (`TEAL_ENVOY=/path/to/envoy` or on the PATH); without
//! it these tests fail, they do not skip.

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::support;
use crate::support::world::{FLIP_TIMEOUT, PREFIX_ROUTE, World, config_yaml, stderr};
use crate::support::{CONVERGE, show, wait_until};

/// The usual world with green `endpoints: registered` (and none
/// registered), and web's check given `check_timeout` to answer.
async fn world_with_registered_green(check_timeout: &str) -> World {
    World::start_edited(
        false,
        |ports| {
            let mut spec = World::usual_spec(ports, PREFIX_ROUTE);
            spec.web = Some(vec![
                ("blue".to_owned(), vec![ports.blue]),
                ("green".to_owned(), Vec::new()),
            ]);
            spec
        },
        |yaml| {
            yaml.replace("endpoints: []", "endpoints: registered")
                .replace(
                    "        timeout: 1s\n",
                    &format!("        timeout: {check_timeout}\n"),
                )
        },
    )
    .await
}

/// An upstream on 127.0.0.1 whose `/healthz` answers `200` only once
/// `release` turns true: a check the test holds. Anything else is
/// answered at once.
async fn held_health(release: watch::Receiver<bool>) -> (u16, JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let mut release = release.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if head.starts_with(b"GET /healthz") {
                    let _ = release.wait_for(|r| *r).await;
                }
                let _ = conn
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\ngreen",
                    )
                    .await;
            });
        }
    });
    (port, task)
}

/// Every Envoy routes all of web to blue and holds blue's one endpoint.
async fn assert_blue_everywhere(w: &World) {
    w.wait_weights(&[0, 1, 2], &[("blue", 100), ("green", 0)])
        .await;
    let blue = format!("127.0.0.1:{}", w.ports.blue);
    for envoy in 0..w.envoys.len() {
        assert_eq!(
            w.cluster_endpoints(envoy, "web-blue").await,
            [blue.as_str()],
            "{} holds blue's endpoint",
            w.envoys[envoy].node_id
        );
    }
    w.envoys[0].wait_for_body(w.edge_port, "blue").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flip_whose_target_registration_expires_while_it_checks_is_refused_at_its_commit() {
    let w = world_with_registered_green("30s").await;
    let (release, held) = watch::channel(false);
    let (port, _server) = held_health(held).await;
    let green = format!("127.0.0.1:{port}");

    let out = w
        .cli(&["register", "web", "green", &green, "--ttl", "4s"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let flip = w.cli_spawn(&["flip", "web", "--to", "green", "--timeout", "30s"]);
    // Planned with green's instance there; its check is held.
    w.wait_phase("pre-checks", None).await;
    for envoy in 0..w.envoys.len() {
        wait_until(CONVERGE, "green's registration runs out", || {
            let w = &w;
            async move { w.cluster_endpoints(envoy, "web-green").await.is_empty() }
        })
        .await;
    }
    assert_eq!(w.wait_phase("pre-checks", None).await["step"], 1);
    // The check passes now; the commit finds green empty.
    release.send_replace(true);

    let out = flip.wait_with_output().await.expect("flip ends");
    assert_eq!(out.status.code(), Some(1), "refused: {}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("\"green\"") && err.contains("no endpoints"),
        "the reason names the empty fleet: {err}"
    );
    let history = w.history().await;
    assert_eq!(history.len(), 1, "{history:#?}");
    assert_eq!(history[0]["outcome"], "refused", "{history:#?}");
    assert!(
        history[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("\"green\"")),
        "{history:#?}"
    );
    assert_eq!(history[0]["to"]["blue"], 100, "{history:#?}");
    let (web, _) = w.web_status().await;
    assert_eq!(web["live"], "blue", "{web:#}");
    assert_eq!(web["weights"]["green"], 0, "{web:#}");
    assert_eq!(web["last_change"]["outcome"], "refused", "{web:#}");
    assert_blue_everywhere(&w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shift_whose_next_target_was_emptied_between_steps_is_undone() {
    let w = world_with_registered_green("1s").await;
    let green = format!("127.0.0.1:{}", w.ports.green);
    let out = w.cli(&["fleet", "set", "web", "green", &green]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let version_before = w.web_status().await.1;

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
        "--skip-checks",
    ]);
    w.wait_phase("waiting", Some(2)).await;
    // Between the steps, the operator takes green's last instance away.
    let out = w
        .cli(&["deregister", "web", "green", &green, "--force"])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));

    let out = shift.wait_with_output().await.expect("shift ends");
    assert_eq!(out.status.code(), Some(2), "rolled back: {}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("\"green\"") && err.contains("no endpoints"),
        "the reason names the empty fleet: {err}"
    );
    let history = w.history().await;
    assert_eq!(history.len(), 1, "{history:#?}");
    assert_eq!(history[0]["outcome"], "rolled-back", "{history:#?}");
    assert!(
        history[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("\"green\"") && r.contains("step 2 of 2")),
        "{history:#?}"
    );
    assert_eq!(history[0]["to"]["blue"], 100, "{history:#?}");
    let (web, version) = w.web_status().await;
    assert_ne!(version, version_before);
    assert_eq!(web["weights"]["blue"], 100, "{web:#}");
    assert_eq!(web["weights"]["green"], 0, "{web:#}");
    assert_eq!(web["last_change"]["outcome"], "rolled-back", "{web:#}");
    assert_blue_everywhere(&w).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_pointing_the_live_fleet_at_an_empty_registered_source_is_refused() {
    let w = World::start().await;
    let version_before = w.web_status().await.1;
    let spec = World::usual_spec(&w.ports, PREFIX_ROUTE);
    let text = config_yaml(&spec, &w.ports).replacen(
        &format!("endpoints:\n          - 127.0.0.1:{}\n", w.ports.blue),
        "endpoints: registered\n",
        1,
    );
    assert!(text.contains("endpoints: registered"), "{text}");

    let before = w.log().len();
    support::write_atomically(&w.config_path(), &text);
    let mut logged = String::new();
    wait_until(CONVERGE, "teal logs the reload", || {
        logged = w.log().get(before..).unwrap_or_default().to_owned();
        let seen = logged.contains("config reload");
        async move { seen }
    })
    .await;
    assert!(
        logged.contains("config reload refused")
            && (logged.contains(r#"fleet \"blue\" of service \"web\""#)
                || logged.contains(r#"fleet "blue" of service "web""#))
            && logged.contains("would have no endpoints"),
        "the refusal names the service and the fleet:\n{logged}"
    );

    let (web, version) = w.web_status().await;
    assert_eq!(version, version_before, "nothing was served anew");
    assert_eq!(web["weights"]["blue"], 100, "{web:#}");
    assert_blue_everywhere(&w).await;
    let out = w.cli(&["fleet", "show", "web", "blue", "-o", "json"]).await;
    let shown: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(
        shown["source"],
        "file",
        "the old config is served: {}",
        show(&out)
    );
}

/// How a fake proxy answers.
#[derive(Clone, Copy)]
enum Fake {
    /// Rejects every response.
    Nack,
    /// Reads every response and answers nothing.
    Silent,
}

/// A fake ADS proxy of group `edge` named `id`, answering as `how`.
async fn fake_proxy(port: u16, id: &str, how: Fake) -> JoinHandle<()> {
    let (tx, mut stream) = support::ads_subscribed_to_all(port, id).await;
    tokio::spawn(async move {
        while let Ok(Some(response)) = stream.message().await {
            if let Fake::Silent = how {
                continue;
            }
            let nack = DiscoveryRequest {
                type_url: response.type_url,
                response_nonce: response.nonce,
                error_detail: Some(Status {
                    code: 3,
                    message: "refused by the test".into(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            if tx.send(nack).await.is_err() {
                return;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_goes_past_a_rejecting_and_a_silent_proxy_and_names_them() {
    let w = World::start().await;
    let out = w
        .cli(&["flip", "web", "--to", "green", "--timeout", FLIP_TIMEOUT])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));

    let _nacking = fake_proxy(w.xds, "nacking-proxy", Fake::Nack).await;
    let _silent = fake_proxy(w.xds, "silent-proxy", Fake::Silent).await;
    let deadline = Instant::now() + CONVERGE;
    loop {
        let proxies = w.json(&["proxies"]).await;
        let list = proxies["proxies"].as_array().cloned().unwrap_or_default();
        let found = |id: &str| list.iter().find(|p| p["node_id"] == id).cloned();
        let nacked = found("nacking-proxy").is_some_and(|p| {
            ["CDS", "EDS", "LDS", "RDS"]
                .iter()
                .any(|t| p["types"][t]["state"] == "NACKED")
        });
        if nacked && found("silent-proxy").is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the fakes never showed: {proxies:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A flip still refuses to switch past the rejecting proxy.
    let out = w
        .cli(&[
            "flip",
            "web",
            "--to",
            "blue",
            "--skip-checks",
            "--timeout",
            "3s",
        ])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", show(&out));
    assert!(
        stderr(&out).contains("fix that before switching"),
        "{}",
        show(&out)
    );

    // The way back does not.
    let started = Instant::now();
    let out = w.cli(&["rollback", "web", "--timeout", "3s"]).await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(4), "unconfirmed: {}", show(&out));
    let err = stderr(&out);
    assert!(
        err.contains("silent-proxy") && err.contains("nacking-proxy"),
        "both proxies are named: {err}"
    );
    assert!(
        took < Duration::from_secs(10),
        "it switched at once and waited only its 3 s to confirm: {took:?}"
    );
    // Every real Envoy took it.
    assert_blue_everywhere(&w).await;

    let history = w.history().await;
    let last = &history[0];
    assert_eq!(last["verb"], "rollback", "{history:#?}");
    assert_eq!(last["outcome"], "unconfirmed", "{history:#?}");
    assert!(
        last["reason"]
            .as_str()
            .is_some_and(|r| r.contains("silent-proxy")),
        "{last:#}"
    );
    assert_eq!(
        last["not_waited_for"],
        serde_json::json!(["nacking-proxy", "silent-proxy"]),
        "{last:#}"
    );
    let (web, _) = w.web_status().await;
    assert_eq!(web["weights"]["blue"], 100, "{web:#}");
    assert_eq!(web["last_change"]["outcome"], "unconfirmed", "{web:#}");
    // The table cuts a long reason; its first line is this rollback's.
    let out = w.cli(&["history", "web"]).await;
    let table = String::from_utf8_lossy(&out.stdout).into_owned();
    let first = table.lines().nth(1).unwrap_or_default();
    assert!(
        first.contains("rollback") && first.contains("unconfirmed"),
        "{table}"
    );
}
