//! The dashboard in a real browser: a real headless Chromium on the admin
//! port of the real `teal serve`, in front of real Envoys under load.
//!
//! The world: service `web` on blue, routed by the usual three Envoys and
//! by a simulated proxy whose node id is an HTML payload; service `api`,
//! routed only by group `batch` through a regex, whose one Envoy runs with
//! RE2's program-size limit at 1 and so NACKs every route configuration
//! (a real Envoy's real NACK, with its own message); requests through the
//! edge and the sidecars throughout.
//!
//! Screenshots go to `target/dashboard-screenshots/`; the test prints
//! their paths and how long the page took to show the flip's outcome
//! against the CLI.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use tokio::process::Command;

use crate::support::ads::{Answer, answering_proxy};
use crate::support::browser::{Browser, chromium_binary};
use crate::support::envoy::{node_id, render_bootstrap};
use crate::support::world::{ConfigSpec, PREFIX_ROUTE, TOKEN, World, bodies};
use crate::support::{Envoy, Protocol, Traffic, http, show, teal_binary};

/// A node id that runs script if a page ever renders it as HTML.
const HOSTILE: &str = r#"<img src=x onerror="window.__pwned=1">"#;

/// How long a wait in the browser may take on a loaded two-core machine.
const WAIT: Duration = Duration::from_secs(25);

/// How much later than the CLI the page may show an outcome.
const PAGE_LAG: Duration = Duration::from_secs(1);

/// A bootstrap runtime layer under which Envoy refuses every regex (RE2
/// program size over 1), so it NACKs any route configuration with one.
const RE2_AT_1: &str = "layered_runtime:\n  layers:\n    - name: static\n      \
                        static_layer:\n        re2.max_program_size.error_level: 1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_flip_reach_every_proxy_and_acts_only_with_a_token() {
    // Without a browser, fail before starting anything.
    chromium_binary();
    let w = World::start_edited(
        false,
        |ports| ConfigSpec {
            api: true,
            ..World::usual_spec(ports, PREFIX_ROUTE)
        },
        batch_routes_api_by_regex,
    )
    .await;
    w.assert_everyone_on("blue").await;
    let nacker_id = node_id("batch");
    let bootstrap = render_bootstrap(&nacker_id, "batch", w.xds, Protocol::Sotw) + RE2_AT_1;
    let nacker = Envoy::start_bootstrap(nacker_id, "batch", &bootstrap).await;
    let (answer, answers) = tokio::sync::watch::channel(Answer::Ack);
    let _hostile = answering_proxy(w.xds, HOSTILE, answers).await;
    let nack = wait_nack(&w, &nacker.node_id).await;
    let mut traffic = Traffic::start_over(&[w.edge_port, w.sidecar_port], "/", &[("host", "web")]);
    traffic.wait_for_count(20).await;

    let page = Browser::start(1280, 900).await;
    let url = format!("http://127.0.0.1:{}/", w.admin);
    let index = http::get(w.admin, "/", &[]).await.expect("GET /");
    assert_eq!(index.status, 200, "{index:?}");
    let csp = index.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("script-src 'self'"), "{csp:?}");
    page.navigate(&url).await;

    // What teal serves shows: the services, web's weights, every proxy.
    page.wait_until(
        WAIT,
        "the event stream is open",
        "document.body.dataset.live === 'live'",
    )
    .await;
    for service in ["web", "api"] {
        page.wait_until(WAIT, &format!("{service} shows"), &service_js(service))
            .await;
    }
    let blue = field_text(&page, "web", "blue", "configured").await;
    let green = field_text(&page, "web", "green", "configured").await;
    assert!(
        blue.contains("100") && !green.contains("100"),
        "{blue:?} {green:?}"
    );
    let web_proxies: Vec<&str> = w
        .envoys
        .iter()
        .map(|e| e.node_id.as_str())
        .chain([HOSTILE])
        .collect();
    for id in web_proxies.iter().chain([&nacker.node_id.as_str()]) {
        page.wait_until(WAIT, &format!("{id}'s row shows"), &row_js(id))
            .await;
    }
    let shots = screenshots_dir();
    shot(&page, &shots, "1-read-only", true).await;

    read_only_refuses_everything(&w, &page).await;
    hostile_text_stays_text(&page).await;

    the_nack_shows_in_envoys_words(&page, &nacker.node_id, &nack).await;
    a_typed_token_unlocks_the_actions(&page).await;

    flip_from_the_page(&w, &page, &shots, &answer, &web_proxies).await;

    // The traffic moved to green, and not one request failed across it.
    traffic
        .wait_for("an answer from green", |seen| {
            seen.iter()
                .any(|a| matches!(a, Ok((200, b)) if b == "green"))
        })
        .await;
    w.wait_weights(&[0, 1, 2], &[("green", 100)]).await;
    let seen = traffic.stop().await;
    let bodies = bodies(&seen);
    assert!(bodies.last().is_some_and(|b| b == "green"), "{bodies:?}");
    eprintln!(
        "dashboard: {} requests through the edge and the sidecars, none failed",
        bodies.len()
    );
    page.wait_until(
        WAIT,
        "green shows confirmed at 100",
        &format!(
            "{}.textContent.includes('100')",
            field_js("web", "green", "confirmed")
        ),
    )
    .await;
    shot(&page, &shots, "3-after-flip", true).await;

    cordon_from_the_page(&w, &page, &nacker.node_id).await;
    phone_in_dark_mode(&page, &shots).await;

    // Nothing the page did broke its own policy or threw.
    let bad: Vec<String> = page
        .logged()
        .into_iter()
        .filter(|l| l.starts_with("[uncaught]") || l.contains("Content Security Policy"))
        .collect();
    assert!(bad.is_empty(), "the page logged: {bad:#?}");
    assert!(
        page.eval("typeof window.__pwned").await == "undefined",
        "the hostile node id ran script"
    );
}

/// The NACKing Envoy's row says so, in Envoy's words as `teal proxies`
/// has them (`nack`).
async fn the_nack_shows_in_envoys_words(page: &Browser, node: &str, nack: &str) {
    let row = row_js(node);
    page.wait_until(
        WAIT,
        "the NACKing Envoy shows as nacked",
        &format!("{row}.dataset.state === 'nacked'"),
    )
    .await;
    // A long message is cut on the row, and whole in its tooltip.
    let shown = page
        .eval(&format!(
            "(e => [e.textContent, e.title])({row}.querySelector('[data-field=\"nack\"]'))"
        ))
        .await;
    let (text, title) = (squeeze(str_of(&shown[0])), squeeze(str_of(&shown[1])));
    let whole = squeeze(nack);
    assert!(
        text.contains(&whole) || (text.ends_with('…') && title.contains(&whole)),
        "the page shows {shown} for the NACK teal proxies gives as {nack:?}"
    );
}

/// A wrong token is refused and not kept; the right one is kept for the
/// tab only, and the page acts.
async fn a_typed_token_unlocks_the_actions(page: &Browser) {
    assert_ne!(
        page.eval("document.querySelector('#notice').dataset.kind")
            .await,
        "error"
    );
    page.type_into("#token", "not-the-token").await;
    page.click("#token-use").await;
    page.wait_until(
        WAIT,
        "the page says the token was refused",
        "document.querySelector('#notice').dataset.kind === 'error'",
    )
    .await;
    let after = page
        .eval("[document.body.dataset.mode, sessionStorage.length]")
        .await;
    assert_eq!(
        after,
        json!(["read-only", 0]),
        "a refused token is not kept"
    );
    page.type_into("#token", TOKEN).await;
    page.click("#token-use").await;
    page.wait_until(
        WAIT,
        "the token is accepted",
        "document.body.dataset.mode === 'act'",
    )
    .await;
    let mode = page
        .eval("document.querySelector('#mode').textContent")
        .await;
    assert!(
        mode.as_str().is_some_and(|m| m.contains("Acting as admin")),
        "{mode}"
    );
    let kept = page
        .eval(&format!(
            "({{session: Object.keys(sessionStorage).some(k => sessionStorage.getItem(k) === \
             {t}), local: localStorage.length, cookie: document.cookie, in_urls: \
             performance.getEntriesByType('resource').some(e => e.name.includes({t}))}})",
            t = js(TOKEN)
        ))
        .await;
    assert_eq!(
        kept,
        json!({"session": true, "local": 0, "cookie": "", "in_urls": false}),
        "the token lives in sessionStorage only and never in a URL or cookie"
    );
}

/// Cordons proxy `node` from its row with a reason that is an HTML
/// payload: teal records it as typed, and the page shows it as text.
async fn cordon_from_the_page(w: &World, page: &Browser, node: &str) {
    const REASON: &str = "<script>window.__pwned=2</script> bad runtime";
    let row = row_js(node);
    page.click(&format!(
        "[data-node=\"{node}\"] button[data-action=\"cordon\"]"
    ))
    .await;
    page.wait_until(
        WAIT,
        "the confirmation is open",
        "document.querySelector('dialog#confirm').open",
    )
    .await;
    page.type_into("#cordon-reason", REASON).await;
    let summary = page
        .eval("document.querySelector('#confirm-summary').textContent")
        .await;
    assert!(
        summary
            .as_str()
            .is_some_and(|s| s.contains("cordon") && s.contains(node)),
        "the confirmation names the proxy: {summary}"
    );
    page.click("#confirm-ok").await;
    page.wait_until(
        WAIT,
        "the row shows the cordon and its reason",
        &format!(
            "{row}.querySelector('[data-field=\"cordon\"]').textContent.includes({}) && \
             {row}.querySelector('button[data-action=\"uncordon\"]')",
            js(REASON)
        ),
    )
    .await;
    let status = w.json(&["status"]).await;
    assert_eq!(
        (
            &status["cordons"][0]["node_id"],
            &status["cordons"][0]["reason"]
        ),
        (&json!(node), &json!(REASON)),
        "{status:#}"
    );
    assert_eq!(
        page.eval("document.querySelectorAll('script:not([src])').length")
            .await,
        0
    );
}

/// At a phone's size in dark mode the page is dark and nothing is wider
/// than the screen; back in light mode it is light.
async fn phone_in_dark_mode(page: &Browser, shots: &Path) {
    page.set_viewport(390, 844, true).await;
    page.set_dark(true).await;
    // The shot shows web's section from its top, whatever was scrolled to.
    page.eval(&format!("{}.scrollIntoView()", service_js("web")))
        .await;
    page.painted().await;
    let dark = page.eval(BACKGROUND_LUMINANCE).await;
    assert!(
        dark.as_f64().is_some_and(|l| l < 0.4),
        "dark mode background: {dark}"
    );
    let overflow = page
        .eval("document.documentElement.scrollWidth - window.innerWidth")
        .await;
    assert!(
        overflow.as_i64().is_some_and(|o| o <= 1),
        "the page is {overflow} px wider than a phone's screen"
    );
    shot(page, shots, "4-phone-dark", false).await;
    page.set_dark(false).await;
    let light = page.eval(BACKGROUND_LUMINANCE).await;
    assert!(
        light.as_f64().is_some_and(|l| l > 0.6),
        "light mode background: {light}"
    );
}

/// Without a token: the page says read-only and disables every action; a
/// click on one does nothing; requests forged without a token, or with a
/// wrong one, from the page and from outside, are refused and change
/// nothing.
async fn read_only_refuses_everything(w: &World, page: &Browser) {
    let mode = page
        .eval("[document.body.dataset.mode, sessionStorage.length]")
        .await;
    assert_eq!(mode, json!(["read-only", 0]), "no token is kept at first");
    let mode = page
        .eval("document.querySelector('#mode').textContent")
        .await;
    assert!(
        mode.as_str().is_some_and(|m| m.contains("Read-only")),
        "{mode}"
    );
    let buttons = page
        .eval(
            "[...document.querySelectorAll('button[data-action]')]\
             .map(b => [b.dataset.action, b.disabled])",
        )
        .await;
    let buttons = buttons.as_array().cloned().unwrap_or_default();
    assert!(
        buttons.iter().any(|b| b[0] == "flip"),
        "web has a flip button: {buttons:?}"
    );
    assert!(
        buttons.iter().all(|b| b[1] == true),
        "every action is disabled without a token: {buttons:?}"
    );
    page.click(&flip_button("green")).await;
    page.painted().await;
    assert_eq!(
        page.eval("document.querySelector('dialog#confirm').open")
            .await,
        false,
        "a disabled flip button opened the confirmation"
    );

    let body = r#"{"service":"web","to":"green"}"#;
    for token in [None, Some("wrong")] {
        let auth = match token {
            Some(t) => format!("'authorization': 'Bearer {t}', "),
            None => String::new(),
        };
        let status = page
            .eval(&format!(
                "fetch('/v1/actions/flip', {{method: 'POST', headers: {{{auth}\
                 'content-type': 'application/json'}}, body: {}}}).then(r => r.status)",
                js(body)
            ))
            .await;
        assert_eq!(
            status, 401,
            "a flip forged from the page with token {token:?}"
        );
    }
    let forged = http::post_json(w.admin, "/v1/actions/flip", body)
        .await
        .expect("POST /v1/actions/flip");
    assert_eq!(forged.status, 401, "{forged:?}");
    let error: Value = serde_json::from_str(&forged.body).unwrap_or_default();
    assert!(error["error"].is_string(), "{forged:?}");
    let (web, _) = w.web_status().await;
    assert_eq!(web["live"], "blue", "{web:#}");
    assert_eq!(web["weights"], json!({"blue": 100, "green": 0}), "{web:#}");
    assert!(
        web["in_progress"].is_null() && web["last_change"].is_null(),
        "{web:#}"
    );
}

/// The hostile node id shows as its own text, and nothing of it runs.
async fn hostile_text_stays_text(page: &Browser) {
    let shown = page
        .eval(&format!(
            "{}.querySelector('[data-field=\"node-id\"]').textContent",
            row_js(HOSTILE)
        ))
        .await;
    assert_eq!(shown, HOSTILE);
    assert_eq!(
        page.eval("document.querySelectorAll('img').length").await,
        0
    );
    assert_eq!(page.eval("typeof window.__pwned").await, "undefined");
}

/// Flips web to green from the page while the simulated proxy holds its
/// ACK for a moment (the screenshot mid-flip), and checks that the page
/// shows the outcome within [`PAGE_LAG`] of the CLI.
async fn flip_from_the_page(
    w: &World,
    page: &Browser,
    shots: &Path,
    answer: &tokio::sync::watch::Sender<Answer>,
    web_proxies: &[&str],
) {
    // Every proxy routing web holds blue.
    for id in web_proxies {
        page.wait_until(
            WAIT,
            &format!("{id} shows acked"),
            &format!("{}.dataset.state === 'acked'", row_js(id)),
        )
        .await;
    }
    let enabled = page
        .eval(&format!(
            "document.querySelector({}).disabled",
            js(&flip_button("green"))
        ))
        .await;
    assert_eq!(enabled, false, "with a token the flip button is enabled");

    // The page's first sight of a new outcome, taken as the DOM changes.
    page.eval(
        "window.__outcome = null; new MutationObserver(() => { if (window.__outcome) return; \
         const e = document.querySelector('section[data-service=\"web\"] \
         [data-field=\"last-outcome\"]'); if (e && e.dataset.outcome === 'succeeded' && \
         e.dataset.changeId) window.__outcome = {at: Date.now(), id: e.dataset.changeId, \
         text: e.textContent}; }).observe(document.documentElement, {subtree: true, \
         childList: true, attributes: true, characterData: true}); true",
    )
    .await;
    answer.send_replace(Answer::Hold);
    page.click(&flip_button("green")).await;
    page.wait_until(
        WAIT,
        "the confirmation is open",
        "document.querySelector('dialog#confirm').open",
    )
    .await;
    let summary = page
        .eval("document.querySelector('#confirm-summary').textContent")
        .await;
    let summary = summary.as_str().unwrap_or_default();
    assert!(
        ["web", "blue", "green"].iter().all(|s| summary.contains(s)),
        "the confirmation names what will move: {summary:?}"
    );
    // The proxies routing web (the edge and sidecar groups), not the
    // NACKing Envoy of group batch, which routes only api.
    assert!(
        summary.contains("on 4 proxies"),
        "the confirmation counts the proxies that will apply it: {summary:?}"
    );
    let cli = tokio::spawn(cli_sees_success(w.admin));
    let clicked = unix_ms();
    page.click("#confirm-ok").await;

    page.wait_until(
        WAIT,
        "the page says the flip started",
        "document.querySelector('#notice').dataset.kind === 'ok'",
    )
    .await;

    // Mid-flip: the operation's phase shows, the held proxy is pending.
    let operation = format!(
        "{}.querySelector('[data-field=\"operation\"]')",
        service_js("web")
    );
    page.wait_until(
        WAIT,
        "the flip shows with a phase and the held proxy pending",
        &format!(
            "{operation}.dataset.phase && {}.dataset.state === 'pending'",
            row_js(HOSTILE)
        ),
    )
    .await;
    let progress = page.eval(&format!("{operation}.textContent")).await;
    assert!(
        progress.as_str().is_some_and(|p| p.contains("pending")),
        "the operation counts who is pending: {progress}"
    );
    shot(page, shots, "2-mid-flip", true).await;
    answer.send_replace(Answer::Ack);

    for id in web_proxies {
        page.wait_until(
            WAIT,
            &format!("{id} turns acked"),
            &format!("{}.dataset.state === 'acked'", row_js(id)),
        )
        .await;
    }
    let (cli_id, cli_at) = tokio::time::timeout(WAIT, cli)
        .await
        .expect("the CLI sees the flip succeed")
        .expect("the CLI poller");
    let seen = page
        .wait_for(
            WAIT,
            "the page shows the flip succeeded",
            "window.__outcome",
        )
        .await;
    let page_at = seen["at"].as_i64().expect("a time");
    assert_eq!(
        seen["id"].as_str(),
        Some(cli_id.to_string().as_str()),
        "the page shows the change the CLI saw: {seen}"
    );
    eprintln!(
        "dashboard: the CLI saw change {cli_id} succeed {} ms after the click on confirm, \
         the page {} ms after ({:?})",
        cli_at - clicked,
        page_at - clicked,
        seen["text"]
    );
    assert!(
        page_at - cli_at <= PAGE_LAG.as_millis() as i64,
        "the page showed the outcome {} ms after the CLI",
        page_at - cli_at
    );
    let history = w.history().await;
    assert_eq!(
        (&history[0]["id"], &history[0]["actor"]),
        (&json!(cli_id), &json!("admin")),
        "the flip's actor is the token's name: {history:#?}"
    );
    page.wait_until(
        WAIT,
        "the change is in the history",
        &format!(
            "{}.querySelector('[data-field=\"history\"] li[data-change-id=\"{cli_id}\"]')",
            service_js("web")
        ),
    )
    .await;
}

/// Polls `teal status web -o json` as a script would, every 50 ms, until
/// web's last change succeeded; returns its id and when the CLI said so.
async fn cli_sees_success(admin: u16) -> (u64, i64) {
    loop {
        let out = Command::new(teal_binary())
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["status", "web", "-o", "json"])
            .env("TEAL_TOKEN", TOKEN)
            .env_remove("TEAL_ADMIN")
            .output()
            .await
            .expect("run teal status");
        let at = unix_ms();
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        let status: Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        let last = &status["services"][0]["last_change"];
        if last["outcome"] == "succeeded"
            && let Some(id) = last["id"].as_u64()
        {
            return (id, at);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `teal proxies` shows Envoy `node`'s route NACK, and returns
/// Envoy's message.
async fn wait_nack(w: &World, node: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let proxies = w.json(&["proxies"]).await;
        let me = proxies["proxies"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["node_id"] == node));
        if let Some(message) = me.and_then(|p| p["types"]["RDS"]["nack"]["message"].as_str()) {
            assert!(
                message.contains("RE2 program size"),
                "Envoy's own words: {message}"
            );
            return message.to_owned();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{node} did not NACK its routes within {WAIT:?}: {proxies:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Group `batch` routes `api` through a regex on an edge listener (instead
/// of a sidecar's), so an Envoy refusing regexes NACKs it.
fn batch_routes_api_by_regex(yaml: String) -> String {
    let start = yaml.find("  batch:\n").expect("group batch in the config");
    let port = yaml[start..]
        .split("address: 127.0.0.1:")
        .nth(1)
        .and_then(|rest| rest.split('\n').next())
        .expect("batch's listener address")
        .to_owned();
    let mut yaml = yaml[..start].to_owned();
    yaml.push_str(&format!(
        "  batch:\n    listeners:\n      public:\n        kind: edge\n        \
         address: 127.0.0.1:{port}\n        virtual_hosts:\n          api:\n            \
         domains: ['*']\n            routes:\n              - regex: '/.*'\n                \
         service: api\n"
    ));
    yaml
}

/// Background luminance (0 black, 1 white) of the first of body and html
/// that paints one.
const BACKGROUND_LUMINANCE: &str = "(() => { for (const e of [document.body, \
    document.documentElement]) { const m = getComputedStyle(e).backgroundColor\
    .match(/[\\d.]+/g); if (m && !(m.length === 4 && +m[3] === 0)) return \
    (0.2126 * m[0] + 0.7152 * m[1] + 0.0722 * m[2]) / 255; } return 1; })()";

/// `s` as a JavaScript string literal.
fn js(s: &str) -> String {
    serde_json::to_string(s).expect("a string as JSON")
}

/// The section of service `service`.
fn service_js(service: &str) -> String {
    format!(
        "document.querySelector('section[data-service=' + CSS.escape({}) + ']')",
        js(service)
    )
}

/// The field `field` of fleet `fleet` of service `service`.
fn field_js(service: &str, fleet: &str, field: &str) -> String {
    format!(
        "{}.querySelector('[data-fleet=' + CSS.escape({}) + '] [data-field={field}]')",
        service_js(service),
        js(fleet)
    )
}

async fn field_text(page: &Browser, service: &str, fleet: &str, field: &str) -> String {
    let js = field_js(service, fleet, field);
    let text = page
        .wait_for(
            WAIT,
            &format!("{service}'s {fleet} {field}"),
            &format!("{js}.textContent"),
        )
        .await;
    text.as_str().unwrap_or_default().to_owned()
}

/// The row of proxy `node`, found by the attribute's value (no selector
/// quoting can go wrong with a hostile id).
fn row_js(node: &str) -> String {
    format!(
        "[...document.querySelectorAll('[data-node]')].find(e => e.getAttribute('data-node') \
         === {})",
        js(node)
    )
}

fn flip_button(to: &str) -> String {
    format!("section[data-service=\"web\"] button[data-action=\"flip\"][data-to=\"{to}\"]")
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

/// Whitespace folded, to compare text as the page lays it out.
fn squeeze(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn unix_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970");
    i64::try_from(since.as_millis()).expect("a time in range")
}

/// `target/dashboard-screenshots/`, beside the test binaries' own
/// temporary directory, never in the source tree.
fn screenshots_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("dashboard-screenshots")
}

async fn shot(page: &Browser, dir: &Path, step: &str, full_page: bool) {
    let path = dir.join(format!("{step}.png"));
    page.settle().await;
    let (width, height) = page.screenshot(&path, full_page).await;
    eprintln!(
        "dashboard: screenshot {} ({width}x{height})",
        path.display()
    );
}
