//! The dashboard's server side on the real `teal serve`: the event stream
//! (`GET /v1/events`) read as a browser or `curl -N` reads it, its bounds
//! (streams at once, a reader that stops reading, proxies per event), the
//! actions (`POST /v1/actions/<verb>`) with and without a token, and the
//! headers every answer carries. Proxies are ADS clients from the test.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::support::ads::{Answer, answering_proxy};
use crate::support::http::{self, HttpResponse};
use crate::support::sse::{EventStream, Opened};
use crate::support::world::{TealProcess, web_on_edge_yaml};
use crate::support::{CONVERGE, TOKEN, free_port, show, teal_binary};

/// The policy every dashboard answer carries.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// `teal serve` with `extra` flags, on free ports.
struct Served {
    _dir: tempfile::TempDir,
    teal: TealProcess,
    xds: u16,
    admin: u16,
}

async fn serve(extra: &[&str]) -> Served {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("teal.yaml"), web_on_edge_yaml()).expect("write the config");
    let (xds, admin) = (free_port(), free_port());
    let teal = TealProcess::start_with(dir.path(), xds, admin, extra).await;
    Served {
        _dir: dir,
        teal,
        xds,
        admin,
    }
}

/// The CLI against `admin`, with the token.
async fn cli(admin: u16, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(teal_binary())
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(args)
        .env("TEAL_TOKEN", TOKEN)
        .env_remove("TEAL_ADMIN")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run teal")
}

async fn cli_json(admin: u16, args: &[&str]) -> Value {
    let out = cli(admin, args).await;
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", show(&out)))
}

/// `teal status -o json` without the field that moves with the clock.
async fn status(admin: u16) -> Value {
    let mut s = cli_json(admin, &["status", "-o", "json"]).await;
    for svc in s["services"].as_array_mut().expect("services") {
        svc["both_fleets_for_ms"] = Value::Null;
    }
    s
}

async fn history(admin: u16) -> Vec<Value> {
    cli_json(admin, &["history", "web", "-o", "json"]).await["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Waits until `teal proxies` shows `count` proxies, every type SYNCED.
async fn wait_synced(admin: u16, count: usize) {
    let deadline = tokio::time::Instant::now() + CONVERGE;
    loop {
        let proxies = cli_json(admin, &["proxies", "-o", "json"]).await;
        let synced = proxies["proxies"].as_array().is_some_and(|all| {
            all.len() == count
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
            "the proxies did not hold everything served: {proxies}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `POST /v1/actions/<verb>` with `body`, the token if given, as JSON.
async fn act(admin: u16, verb: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth.as_str()));
    }
    let r = http::send(
        "POST",
        admin,
        &format!("/v1/actions/{verb}"),
        &headers,
        body,
    )
    .await
    .expect("POST an action");
    (r.status, answer(&r))
}

fn answer(r: &HttpResponse) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", r.body))
}

fn weights(status: &Value) -> Value {
    status["services"][0]["weights"].clone()
}

/// One proxy's states per type, from a `proxies` event.
fn states(proxy: &Value) -> Vec<String> {
    proxy["types"]
        .as_object()
        .map(|t| {
            t.values()
                .map(|t| t["state"].as_str().unwrap_or("").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A metric's value on `/metrics`.
async fn metric(admin: u16, name: &str) -> f64 {
    let page = http::get(admin, "/metrics", &[]).await.expect("metrics");
    page.body
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in:\n{}", page.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_says_hello_sends_the_state_once_and_follows_a_flip() {
    let t = serve(&[]).await;
    let (_answer, answers) = watch::channel(Answer::Ack);
    let _proxy = answering_proxy(t.xds, "edge-1", answers).await;
    wait_synced(t.admin, 1).await;

    let mut events = EventStream::open(t.admin).await.expect("open").stream();
    assert_eq!(
        events.header("content-type"),
        Some("text/event-stream; charset=utf-8")
    );
    let hello = events.next_named("hello", CONVERGE).await.json();
    assert_eq!(events.retry_ms, Some(2000), "the stream opens with retry");
    assert_eq!(
        hello,
        json!({"replica": null, "leader": true, "leader_admin": null, "interval_ms": 250,
               "max_proxies": 2000, "tokens": true})
    );
    let first = events
        .wait_for("status", CONVERGE, "web in a status", |s| {
            s["services"][0]["name"] == "web"
        })
        .await;
    assert_eq!(weights(&first), json!({"blue": 100, "green": 0}));
    assert_eq!(first["services"][0]["both_fleets_for_ms"], Value::Null);
    assert!(first["at_unix_ms"].as_i64().is_some_and(|t| t > 0));
    assert!(first["history"]["web"].is_array(), "{first}");
    assert!(first["cordons"].is_array() && first["replicas"].is_array());
    let proxies = events
        .wait_for("proxies", CONVERGE, "edge-1 synced", |p| {
            p["total"] == 1
                && p["shown"] == 1
                && states(&p["proxies"][0]).iter().all(|s| s == "SYNCED")
        })
        .await;
    assert_eq!(proxies["proxies"][0]["node_id"], "edge-1");
    assert_eq!(proxies["proxies"][0]["identity"], "unauthenticated");
    // Which proxies hold the weights, and the split they confirmed: what
    // the page draws the service's own proxies and its confirmed bar from.
    let confirmed = events
        .wait_for("status", CONVERGE, "edge-1 holding web's weights", |s| {
            s["services"][0]["applied"]["acked"] == 1
        })
        .await;
    let web = &confirmed["services"][0];
    assert_eq!(web["confirmed_weights"], json!({"blue": 100, "green": 0}));
    assert_eq!(
        web["applied"],
        json!({"acked": 1, "total": 1, "waiting_for": [], "rejecting": [], "groups": ["edge"]})
    );

    // Nothing changes: nothing more is sent (the publisher builds both
    // payloads four times a second).
    tokio::time::sleep(Duration::from_millis(500)).await;
    while events
        .next_within(Duration::from_millis(10))
        .await
        .is_ok_and(|e| e.is_some())
    {}
    let mut sent = Vec::new();
    while let Ok(Some(e)) = events.next_within(Duration::from_millis(1500)).await {
        sent.push(e.name);
    }
    assert_eq!(
        sent,
        Vec::<String>::new(),
        "frames sent for an unchanged state"
    );

    let out = cli(t.admin, &["flip", "web", "--to", "green"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let after = events
        .wait_for("status", CONVERGE, "the flip's outcome", |s| {
            s["services"][0]["last_change"]["outcome"] == "succeeded"
        })
        .await;
    let web = &after["services"][0];
    assert_eq!(weights(&after), json!({"blue": 0, "green": 100}));
    assert_eq!(web["confirmed_weights"], json!({"blue": 0, "green": 100}));
    assert_eq!(web["live"], "green");
    assert_eq!(web["last_change"]["verb"], "flip");
    assert_eq!(after["history"]["web"][0]["id"], web["last_change"]["id"]);
    assert_eq!(after["history"]["web"][0]["actor"], "admin");
    // The CLI prints the same JSON, but for the clock.
    let mut cli_view = status(t.admin).await;
    let mut event_view = after.clone();
    for v in [&mut cli_view, &mut event_view] {
        let fields = v.as_object_mut().expect("an object");
        fields.remove("at_unix_ms");
        fields.remove("history");
    }
    assert_eq!(cli_view, event_view);
    drop(t.teal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_show_stale_while_holding_nacked_with_the_message_and_nacked_first() {
    let t = serve(&["--max-event-proxies", "2"]).await;
    let (_a, answers) = watch::channel(Answer::Ack);
    let _ok = answering_proxy(t.xds, "a-acking", answers).await;
    let (hold, answers) = watch::channel(Answer::Ack);
    let _held = answering_proxy(t.xds, "b-holding", answers).await;
    let (_n, answers) = watch::channel(Answer::NackOnce);
    let _nacking = answering_proxy(t.xds, "c-nacking", answers).await;
    wait_synced(t.admin, 3).await;

    // Cordoned, its NACK does not undo the flip, so it stays NACKED while
    // the flip waits for the proxy that holds its ACK.
    let (code, cordon) = act(
        t.admin,
        "cordon",
        Some(TOKEN),
        r#"{"node_id":"c-nacking","reason":"under test"}"#,
    )
    .await;
    assert_eq!((code, &cordon), (200, &json!({"changed": true})));
    hold.send(Answer::Hold).expect("the proxy listens");
    let mut events = EventStream::open(t.admin).await.expect("open").stream();
    let admin = t.admin;
    let flip = tokio::spawn(async move { cli(admin, &["flip", "web", "--to", "green"]).await });
    let seen = events
        .wait_for("proxies", CONVERGE, "a NACKED and a STALE proxy", |p| {
            states(&p["proxies"][0]).contains(&"NACKED".to_owned())
                && states(&p["proxies"][1]).contains(&"STALE".to_owned())
        })
        .await;
    assert_eq!(
        (seen["total"].clone(), seen["shown"].clone()),
        (json!(3), json!(2))
    );
    let shown: Vec<&Value> = seen["proxies"]
        .as_array()
        .expect("proxies")
        .iter()
        .map(|p| &p["node_id"])
        .collect();
    assert_eq!(shown, [&json!("c-nacking"), &json!("b-holding")]);
    let nacked = &seen["proxies"][0];
    assert_eq!(nacked["cordoned"], true);
    assert_eq!(nacked["cordon_reason"], "under test");
    assert_eq!(nacked["types"]["RDS"]["state"], "NACKED", "{nacked}");
    assert_eq!(
        nacked["types"]["RDS"]["nack"]["message"],
        "refused by the test"
    );
    let status = events
        .wait_for("status", CONVERGE, "the flip confirming", |s| {
            s["services"][0]["in_progress"]["phase"] == "confirming"
        })
        .await;
    assert_eq!(status["cordons"][0]["node_id"], "c-nacking");

    hold.send(Answer::Ack).expect("the proxy listens");
    let out = tokio::time::timeout(CONVERGE, flip)
        .await
        .expect("the flip ends once the proxy ACKs")
        .expect("join");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    drop(t.teal);
}

/// A connection that asks for the event stream and never reads, with a
/// receive buffer as small as the kernel allows.
async fn stalled_reader(admin: u16) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(1024).expect("SO_RCVBUF");
    let mut stream = socket
        .connect(([127, 0, 0, 1], admin).into())
        .await
        .expect("connect");
    stream
        .write_all(format!("GET /v1/events HTTP/1.1\r\nhost: 127.0.0.1:{admin}\r\n\r\n").as_bytes())
        .await
        .expect("ask for the events");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_bounded_and_one_whose_reader_stopped_is_closed_while_flips_go_on() {
    let t = serve(&["--max-event-streams", "2", "--event-stall-timeout", "1s"]).await;
    let (_answer, answers) = watch::channel(Answer::Ack);
    let mut proxies = Vec::new();
    for i in 0..10 {
        proxies.push(answering_proxy(t.xds, &format!("edge-{i:02}"), answers.clone()).await);
    }
    wait_synced(t.admin, 10).await;
    // Three hundred cordons with long reasons make each status event some
    // 300 kB.
    let reason = "r".repeat(1000);
    for i in 0..300 {
        let ghost = format!(r#"{{"node_id":"ghost-old-{i:03}","reason":"{reason}"}}"#);
        let (code, answer) = act(t.admin, "cordon", Some(TOKEN), &ghost).await;
        assert_eq!(code, 200, "{answer}");
    }

    // A reader that reads everything, in the background.
    let mut live = EventStream::open(t.admin).await.expect("open").stream();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<Value>();
    let reader = tokio::spawn(async move {
        while let Ok(Some(e)) = live.next_within(Duration::from_secs(60)).await {
            if e.name == "status" && seen_tx.send(e.json()).is_err() {
                return;
            }
        }
    });
    let stalled = stalled_reader(t.admin).await;
    let wait_open = |n: f64| async move {
        let deadline = tokio::time::Instant::now() + CONVERGE;
        while metric(t.admin, "teal_event_streams").await != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not {n} streams open"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    wait_open(2.0).await;

    // A third is refused, naming the limit.
    match EventStream::open(t.admin).await.expect("open") {
        Opened::Refused { status, body } => {
            assert_eq!(status, 503, "{body}");
            assert!(body.contains("--max-event-streams"), "{body}");
        }
        Opened::Stream(_) => panic!("a third stream was let in past --max-event-streams 2"),
    }
    assert_eq!(
        metric(t.admin, "teal_event_streams_refused_total").await,
        1.0
    );

    // Changes go on, each sending a status event of some 300 kB (the
    // cordons with their reasons) and flips converge; the reader that
    // reads sees every flip; the one that does not read is closed once a
    // frame waited a second for it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut to = "green";
    let mut changes = 0;
    while metric(t.admin, "teal_event_streams").await > 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled stream is still open after {changes} changes"
        );
        changes += 1;
        let ghost = format!(r#"{{"node_id":"ghost-{changes}","reason":"{reason}"}}"#);
        let (code, answer) = act(t.admin, "cordon", Some(TOKEN), &ghost).await;
        assert_eq!(code, 200, "{answer}");
        if changes % 5 != 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        }
        let started = std::time::Instant::now();
        let out = cli(t.admin, &["flip", "web", "--to", to]).await;
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "a flip took {:?} with a stalled stream open",
            started.elapsed()
        );
        let seen_by = tokio::time::Instant::now() + CONVERGE;
        loop {
            let status = tokio::time::timeout_at(seen_by, seen.recv())
                .await
                .unwrap_or_else(|_| panic!("the reading stream did not see the flip to {to}"))
                .expect("the reading stream ended");
            if status["services"][0]["live"] == to && status["services"][0]["in_progress"].is_null()
            {
                break;
            }
        }
        to = if to == "green" { "blue" } else { "green" };
    }
    assert!(
        to == "blue" || changes >= 5,
        "no flip ran while the stream stalled"
    );
    eprintln!("the stalled stream was closed after {changes} changes");

    // Its slot is free again.
    let mut again = EventStream::open(t.admin).await.expect("open").stream();
    again.next_named("hello", CONVERGE).await;
    assert!(!reader.is_finished(), "the reading stream was closed too");

    // A reader that goes away frees its slot too, once teal next writes
    // to it (here: the next change).
    drop(again);
    let (code, answer) = act(
        t.admin,
        "uncordon",
        Some(TOKEN),
        r#"{"node_id":"ghost-old-000"}"#,
    )
    .await;
    assert_eq!(code, 200, "{answer}");
    wait_open(1.0).await;
    EventStream::open(t.admin)
        .await
        .expect("open")
        .stream()
        .next_named("hello", CONVERGE)
        .await;
    drop(stalled);
    drop(t.teal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_action_changes_nothing_and_one_with_the_token_moves_the_traffic() {
    let t = serve(&["--max-gate-request-bytes", "1024"]).await;
    let (_answer, answers) = watch::channel(Answer::Ack);
    let _proxy = answering_proxy(t.xds, "edge-1", answers).await;
    wait_synced(t.admin, 1).await;
    let (before, history_before) = (status(t.admin).await, history(t.admin).await);

    let flip = r#"{"service":"web","to":"green"}"#;
    for token in [None, Some("not-the-token")] {
        let (code, refused) = act(t.admin, "flip", token, flip).await;
        assert_eq!(code, 401, "{refused}");
        assert_eq!(refused["kind"], "unauthenticated");
    }
    let bearer = format!("Bearer {TOKEN}");
    let auth = ("authorization", bearer.as_str());
    let r = http::send(
        "POST",
        t.admin,
        "/v1/actions/flip",
        &[("content-type", "text/plain"), auth],
        flip,
    )
    .await
    .expect("POST");
    assert_eq!(r.status, 415, "{}", r.body);
    for (body, why) in [
        (r#"{"service":"web","to":"green""#, "cut JSON"),
        (
            r#"{"service":"web","to":"green","force":true}"#,
            "an unknown field",
        ),
        (r#"{"to":"green"}"#, "no service"),
    ] {
        let (code, refused) = act(t.admin, "flip", Some(TOKEN), body).await;
        assert_eq!(code, 400, "{why}: {refused}");
    }
    let large = format!(
        r#"{{"service":"web","to":"green","pad":"{}"}}"#,
        "x".repeat(2048)
    );
    let (code, refused) = act(t.admin, "flip", Some(TOKEN), &large).await;
    assert_eq!(code, 413, "{refused}");
    let (code, refused) = act(
        t.admin,
        "flip",
        Some(TOKEN),
        r#"{"service":"web","to":"purple"}"#,
    )
    .await;
    assert_eq!(
        (code, refused["kind"].clone()),
        (404, json!("unknown_fleet")),
        "{refused}"
    );
    let (code, refused) = act(t.admin, "flip", Some(TOKEN), r#"{"service":"nope"}"#).await;
    assert_eq!(
        (code, refused["kind"].clone()),
        (404, json!("unknown_service")),
        "{refused}"
    );
    let (code, refused) = act(t.admin, "launch", Some(TOKEN), flip).await;
    assert_eq!(code, 404, "{refused}");
    assert_eq!(
        status(t.admin).await,
        before,
        "a refused action changed the state"
    );
    assert_eq!(history(t.admin).await, history_before);

    // A cross-origin preflight is not answered with any CORS permission.
    let preflight = http::send(
        "OPTIONS",
        t.admin,
        "/v1/actions/flip",
        &[
            ("origin", "http://evil.example"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "authorization, content-type",
            ),
        ],
        "",
    )
    .await
    .expect("OPTIONS");
    assert!(
        !preflight
            .headers
            .iter()
            .any(|(k, _)| k.starts_with("access-control-allow")),
        "{:?}",
        preflight.headers
    );
    assert!(preflight.status >= 400, "{}", preflight.status);

    let whoami = http::get(t.admin, "/v1/whoami", &[auth])
        .await
        .expect("whoami");
    assert_eq!(
        (whoami.status, answer(&whoami)),
        (200, json!({"actor": "admin"}))
    );
    let whoami = http::get(t.admin, "/v1/whoami", &[]).await.expect("whoami");
    assert_eq!(whoami.status, 401, "{}", whoami.body);

    let (code, started) = act(t.admin, "flip", Some(TOKEN), flip).await;
    assert_eq!(code, 202, "{started}");
    assert!(started["id"].as_u64().is_some_and(|id| id > 0), "{started}");
    assert_eq!(started["progress"]["id"], started["id"]);
    assert_eq!(started["progress"]["verb"], "flip");
    let deadline = tokio::time::Instant::now() + CONVERGE;
    let newest = loop {
        let h = history(t.admin).await;
        if h.len() > history_before.len() {
            break h[0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flip did not end"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(newest["outcome"], "succeeded", "{newest}");
    assert_eq!(newest["actor"], "admin");
    assert_eq!(newest["id"], started["id"]);
    assert_eq!(
        weights(&status(t.admin).await),
        json!({"blue": 0, "green": 100})
    );

    let cordon = r#"{"node_id":"edge-1","reason":"looks odd"}"#;
    let uncordon = r#"{"node_id":"edge-1"}"#;
    assert_eq!(
        act(t.admin, "cordon", Some(TOKEN), cordon).await,
        (200, json!({"changed": true}))
    );
    assert_eq!(
        act(t.admin, "cordon", Some(TOKEN), cordon).await,
        (200, json!({"changed": false}))
    );
    assert_eq!(status(t.admin).await["cordons"][0]["reason"], "looks odd");
    assert_eq!(
        act(t.admin, "uncordon", Some(TOKEN), uncordon).await,
        (200, json!({"changed": true}))
    );
    assert_eq!(act(t.admin, "uncordon", None, uncordon).await.0, 401);
    drop(t.teal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_stops_a_step_a_proxy_holds() {
    let t = serve(&[]).await;
    let (hold, answers) = watch::channel(Answer::Ack);
    let _proxy = answering_proxy(t.xds, "edge-1", answers).await;
    wait_synced(t.admin, 1).await;
    hold.send(Answer::Hold).expect("the proxy listens");
    let (code, started) = act(
        t.admin,
        "shift",
        Some(TOKEN),
        r#"{"service":"web","to":"green","percents":[50,100],"interval_ms":0}"#,
    )
    .await;
    assert_eq!(code, 202, "{started}");
    let id = started["id"].as_u64().expect("an id");
    let mut events = EventStream::open(t.admin).await.expect("open").stream();
    let held = events
        .wait_for("status", CONVERGE, "the step confirming", |s| {
            s["services"][0]["in_progress"]["phase"] == "confirming"
        })
        .await;
    assert_eq!(
        held["services"][0]["in_progress"]["waiting_for"],
        json!(["edge-1"])
    );
    let (code, refused) = act(t.admin, "abort", Some(TOKEN), r#"{"id":999999}"#).await;
    assert_eq!(
        (code, refused["kind"].clone()),
        (404, json!("no_such_operation"))
    );
    let (code, aborted) = act(t.admin, "abort", Some(TOKEN), &format!(r#"{{"id":{id}}}"#)).await;
    assert_eq!((code, aborted), (200, json!({})));
    hold.send(Answer::Ack).expect("the proxy listens");
    let after = events
        .wait_for("status", CONVERGE, "the shift aborted", |s| {
            s["services"][0]["last_change"]["outcome"] == "aborted"
        })
        .await;
    assert_eq!(weights(&after), json!({"blue": 100, "green": 0}));
    assert_eq!(after["history"]["web"][0]["outcome"], "aborted");
    drop(t.teal);
}

fn assert_secure(what: &str, headers: &[(String, String)]) {
    let get = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("content-security-policy"), Some(CSP), "{what}");
    assert_eq!(get("x-content-type-options"), Some("nosniff"), "{what}");
    assert_eq!(get("referrer-policy"), Some("no-referrer"), "{what}");
    assert_eq!(get("x-frame-options"), Some("DENY"), "{what}");
    assert!(
        !headers
            .iter()
            .any(|(k, _)| k.starts_with("access-control-")),
        "{what}: {headers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_answer_carries_the_security_headers() {
    let t = serve(&[]).await;
    for (path, content_type) in [
        ("/", "text/html; charset=utf-8"),
        ("/assets/app.js", "text/javascript; charset=utf-8"),
        ("/assets/app.css", "text/css; charset=utf-8"),
    ] {
        let r = http::get(t.admin, path, &[]).await.expect("GET");
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(content_type), "{path}");
        assert_eq!(r.header("cache-control"), Some("no-store"), "{path}");
        assert_secure(path, &r.headers);
    }
    let index = http::get(t.admin, "/", &[]).await.expect("GET /");
    assert!(index.body.contains("/assets/app.js"), "{}", index.body);
    let events = EventStream::open(t.admin).await.expect("open").stream();
    assert_eq!(events.header("cache-control"), Some("no-store"));
    assert_secure("/v1/events", &events.headers);
    let r = http::send("POST", t.admin, "/v1/actions/flip", &[], "")
        .await
        .expect("POST");
    assert_eq!(r.status, 401);
    assert_secure("an action refused", &r.headers);
    let r = http::get(t.admin, "/v1/whoami", &[]).await.expect("GET");
    assert_secure("/v1/whoami", &r.headers);
    drop(t.teal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_is_read_outlives_the_idle_timeout() {
    // An HTTP/1.1 event stream sends nothing after its request; taking
    // what teal writes keeps it alive.
    let t = serve(&["--handshake-timeout", "1s", "--idle-timeout", "2s"]).await;
    let mut events = EventStream::open(t.admin).await.expect("open").stream();
    events.next_named("status", CONVERGE).await;
    let started = std::time::Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(5) {
        n += 1;
        let ghost = format!(r#"{{"node_id":"ghost-{n}","reason":"keep talking"}}"#);
        assert_eq!(act(t.admin, "cordon", Some(TOKEN), &ghost).await.0, 200);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let last = format!("ghost-{n}");
    events
        .wait_for("status", CONVERGE, "the last cordon", |s| {
            s["cordons"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["node_id"] == last.as_str()))
        })
        .await;
    drop(t.teal);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_says_teal_is_stopping_and_ends_so_teal_can_exit() {
    let t = serve(&[]).await;
    let mut events = EventStream::open(t.admin).await.expect("open").stream();
    events.next_named("status", CONVERGE).await;
    let stopping = tokio::spawn(t.teal.terminate());
    let error = events.next_named("error", CONVERGE).await.json();
    assert_eq!(error, json!({"error": "teal is stopping"}));
    let end = events.next_within(CONVERGE).await.expect("the stream ends");
    assert_eq!(end, None, "the stream went on after its error");
    let status = tokio::time::timeout(CONVERGE, stopping)
        .await
        .expect("teal exits with a stream open")
        .expect("join");
    assert!(status.success(), "{status}");
}
