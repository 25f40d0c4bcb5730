//! The orchestrators' gates on the admin port of the real `teal serve`:
//! `GET /v1/services/<s>` and the Flagger webhook, against a proxy (an ADS
//! client from the test) that holds its ACK of a shift step: closed while
//! the step waits for it, open once it ACKed. Spoken to in plain HTTP/1.1,
//! as Argo Rollouts and Flagger speak.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::watch;

use crate::support::ads::{Answer, answering_proxy};
use crate::support::http::{self, HttpResponse};
use crate::support::world::{TealProcess, web_on_edge_yaml};
use crate::support::{CONVERGE, TOKEN, free_port, show, teal_binary};

/// `teal shift web --weight green=<percent>` against `admin`, to its end.
async fn shift(admin: u16, percent: u32) -> std::process::Output {
    tokio::process::Command::new(teal_binary())
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["shift", "web", "--weight", &format!("green={percent}")])
        .args(["--timeout", "60s"])
        .env("TEAL_TOKEN", TOKEN)
        .env_remove("TEAL_ADMIN")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run teal shift")
}

fn json(r: &HttpResponse) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

async fn service(admin: u16, name: &str) -> (u16, Value) {
    let r = http::get(admin, &format!("/v1/services/{name}"), &[])
        .await
        .expect("GET the service");
    assert_eq!(
        r.header("content-type"),
        Some("application/json"),
        "{}",
        r.body
    );
    (r.status, json(&r))
}

/// Flagger's `confirm-traffic-increase` call for canary `name`.
async fn flagger(admin: u16, body: &str) -> (u16, Value) {
    let r = http::post_json(admin, "/v1/gates/flagger", body)
        .await
        .expect("POST the Flagger gate");
    (r.status, json(&r))
}

const CANARY: &str = r#"{"name":"web","namespace":"shop","phase":"Progressing","checksum":"6c1f","type":"confirm-traffic-increase","metadata":{}}"#;

/// Waits until every type of every proxy is `SYNCED` in `teal proxies`.
async fn wait_synced(admin: u16) {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let out = tokio::process::Command::new(teal_binary())
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["proxies", "-o", "json"])
            .env_remove("TEAL_ADMIN")
            .stdin(Stdio::null())
            .output()
            .await
            .expect("run teal proxies");
        let proxies: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let synced = proxies["proxies"].as_array().is_some_and(|all| {
            !all.is_empty()
                && all.iter().all(|p| {
                    p["types"]
                        .as_object()
                        .is_some_and(|t| t.values().all(|t| t["state"] == "SYNCED"))
                })
        });
        if synced {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the proxy did not hold everything served: {proxies}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls `/v1/services/web` until `check` holds.
async fn wait_web(admin: u16, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let (status, body) = service(admin, "web").await;
        assert_eq!(status, 200, "{body}");
        if check(&body) {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not {what} in time: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gates_stay_closed_while_a_shift_step_waits_for_a_proxy_and_open_once_it_acked() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::write(dir.join("teal.yaml"), web_on_edge_yaml()).expect("write the config");
    let (xds, admin) = (free_port(), free_port());
    let teal = TealProcess::start_with(dir, xds, admin, &[]).await;

    let (answer, answers) = watch::channel(Answer::Ack);
    let _proxy = answering_proxy(xds, "edge-1", answers).await;
    let before = wait_web(admin, "confirmed by the proxy", |b| {
        b["confirmed"] == true && b["proxies"]["total"] == 1
    })
    .await;
    assert_eq!(
        before["weights"],
        serde_json::json!({"blue": 100, "green": 0})
    );
    assert_eq!(before["confirmed_weights"], before["weights"]);
    assert_eq!(before["in_progress"], Value::Null);
    assert_eq!(before["route"], Value::Null);
    // teal may still serve a version the proxy has yet to ACK at start
    // (the gate then closes until it does): wait for the gate to open.
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let (status, open) = flagger(admin, CANARY).await;
        if status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the gate did not open: {status} {open}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The proxy holds its ACK; a shift step to green 50 waits for it.
    // First it holds everything served (what it still has to ACK of the
    // start-up would hold the step in preparing instead).
    wait_synced(admin).await;
    answer.send(Answer::Hold).expect("the proxy listens");
    let shift = tokio::spawn(shift(admin, 50));
    let held = wait_web(admin, "confirming the step", |b| {
        b["in_progress"]["phase"] == "confirming"
    })
    .await;
    assert_eq!(held["confirmed"], false, "{held}");
    assert_eq!(held["unconfirmed"], "in_progress");
    assert_eq!(
        held["in_progress"]["waiting_for"],
        serde_json::json!(["edge-1"])
    );
    assert_eq!(
        held["pending_weights"],
        serde_json::json!({"blue": 50, "green": 50})
    );
    assert_eq!(
        held["confirmed_weights"],
        serde_json::json!({"blue": 100, "green": 0})
    );
    let (status, closed) = flagger(admin, CANARY).await;
    assert_eq!(status, 403, "{closed}");
    assert!(
        closed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("edge-1") && r.contains("0/1")),
        "the reason names the proxy not confirmed: {closed}"
    );

    answer.send(Answer::Ack).expect("the proxy listens");
    let out = tokio::time::timeout(CONVERGE, shift)
        .await
        .expect("the shift ends once the proxy ACKs")
        .expect("join");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let after = wait_web(admin, "confirmed again", |b| b["confirmed"] == true).await;
    assert_eq!(
        after["weights"],
        serde_json::json!({"blue": 50, "green": 50})
    );
    assert_eq!(after["confirmed_weights"], after["weights"]);
    assert_eq!(after["last_change"]["succeeded"], true);
    let (status, open) = flagger(admin, CANARY).await;
    assert_eq!(status, 200, "{open}");
    assert_eq!(
        open["weights"],
        serde_json::json!({"blue": 50, "green": 50})
    );
    drop(teal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gates_are_reads_open_without_a_token_and_refuse_what_names_no_service() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::write(dir.join("teal.yaml"), web_on_edge_yaml()).expect("write the config");
    let (xds, admin) = (free_port(), free_port());
    let teal =
        TealProcess::start_with(dir, xds, admin, &["--max-gate-request-bytes", "1024"]).await;

    // No proxy: nothing to wait for, confirmed with 0 of 0.
    let (status, web) = service(admin, "web").await;
    assert_eq!(status, 200, "{web}");
    assert_eq!(web["proxies"]["total"], 0);
    // A token, even a wrong one, changes nothing for a read.
    let r = http::get(
        admin,
        "/v1/services/web",
        &[("authorization", "Bearer not-a-token")],
    )
    .await
    .expect("GET");
    assert_eq!(r.status, 200, "{}", r.body);

    let (status, body) = service(admin, "shop").await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("\"shop\""))
    );
    let (status, body) = service(admin, &"x".repeat(300)).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = flagger(admin, r#"{"name":"shop","namespace":"x"}"#).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = flagger(admin, "{not json").await;
    assert_eq!(status, 400, "{body}");
    let big = format!(
        r#"{{"name":"web","metadata":{{"note":"{}"}}}}"#,
        "n".repeat(2048)
    );
    let (status, body) = flagger(admin, &big).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("--max-gate-request-bytes")),
        "{body}"
    );
    // The gate changes nothing: no history after all these.
    let r = http::get(admin, "/v1/gates/flagger", &[])
        .await
        .expect("GET");
    assert_eq!(r.status, 405, "only POST: {}", r.body);
    let (_, web) = service(admin, "web").await;
    assert_eq!(web["last_change"], Value::Null);
    drop(teal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_a_proxy_rejects_keeps_the_gates_closed_until_a_later_change_lands() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    std::fs::write(dir.join("teal.yaml"), web_on_edge_yaml()).expect("write the config");
    let (xds, admin) = (free_port(), free_port());
    let teal = TealProcess::start_with(dir, xds, admin, &[]).await;
    let (answer, answers) = watch::channel(Answer::Ack);
    let _proxy = answering_proxy(xds, "edge-1", answers).await;
    wait_web(admin, "confirmed by the proxy", |b| {
        b["confirmed"] == true && b["proxies"]["total"] == 1
    })
    .await;

    // The proxy rejects the step: teal puts the weights back.
    answer.send(Answer::NackOnce).expect("the proxy listens");
    let out = shift(admin, 50).await;
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
    let after = wait_web(admin, "the step rolled back", |b| {
        b["in_progress"].is_null() && b["proxies"]["all_acked"] == true
    })
    .await;
    assert_eq!(
        after["weights"],
        serde_json::json!({"blue": 100, "green": 0})
    );
    assert_eq!(
        after["confirmed_weights"], after["weights"],
        "the undo is held by all"
    );
    assert_eq!(
        after["confirmed"], false,
        "the weights asked for never landed: {after}"
    );
    assert_eq!(after["unconfirmed"], "last_change");
    assert_eq!(after["last_change"]["outcome"], "rolled-back", "{after}");
    let (status, closed) = flagger(admin, CANARY).await;
    assert_eq!(status, 403, "{closed}");
    assert!(
        closed["reason"]
            .as_str()
            .is_some_and(|r| r.contains("refused by the test")),
        "the reason quotes the rejection: {closed}"
    );

    // A later change that lands opens them again.
    answer.send(Answer::Ack).expect("the proxy listens");
    let out = shift(admin, 10).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let (status, open) = flagger(admin, CANARY).await;
    assert_eq!(status, 200, "{open}");
    assert_eq!(
        open["weights"],
        serde_json::json!({"blue": 90, "green": 10})
    );
    drop(teal);
}
