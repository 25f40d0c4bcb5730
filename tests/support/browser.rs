//! A real headless Chromium driven over the DevTools protocol, for the
//! dashboard's browser test: just enough of the protocol to navigate,
//! evaluate script, wait for the page, click with real mouse events, type,
//! take screenshots, emulate a phone or dark mode, and collect what the
//! page logged (console messages, uncaught errors, CSP violations).
//!
//! The protocol is JSON over one websocket (the browser's), with the page
//! attached as a flat session. A full client crate (chromiumoxide) would
//! build hundreds of generated protocol types for the dozen calls made
//! here, which CI would pay for on every run.
//!
//! Chromium must be installed (`TEAL_CHROMIUM`, or `chromium` or
//! `chromium-browser` on `PATH`; `.ci/run` installs Debian's): a test that
//! needs it fails without it, never skips.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::SinkExt as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tokio_tungstenite::tungstenite::Message;

/// How long one DevTools call may take before the test fails: generous,
/// for a loaded two-core machine where Chromium starts its renderer late.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How long Chromium may take to start and print its DevTools address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The Chromium binary: `$TEAL_CHROMIUM` if set, else `chromium` or
/// `chromium-browser` on `PATH`.
///
/// # Panics
///
/// When there is none: the browser test exists to run a real browser, so
/// a missing one is a failure, not a skip.
pub fn chromium_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TEAL_CHROMIUM") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "TEAL_CHROMIUM={} is not a file; point it at a Chromium binary",
            path.display()
        );
        return path;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .flat_map(|dir| [dir.join("chromium"), dir.join("chromium-browser")])
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "no Chromium: the dashboard test drives a real browser. Install one with \
                 `apt-get install chromium` (Debian), or set TEAL_CHROMIUM=/path/to/chromium"
            )
        })
}

/// What the page logged: console calls, log entries (CSP violations among
/// them) and uncaught exceptions, one line each, in order.
type Logged = Arc<Mutex<Vec<String>>>;

/// Calls waiting for their answer, by id.
type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// A headless Chromium with one page open, killed (with every process it
/// started) when dropped.
pub struct Browser {
    child: Child,
    /// Its process group, which is its own, so that renderers and helpers
    /// go with it.
    pgid: u32,
    /// The page's session on the browser's websocket.
    session: String,
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    next_id: AtomicU64,
    logged: Logged,
    /// What Chromium wrote to stderr, for failure messages.
    stderr: Arc<Mutex<String>>,
    tasks: Vec<JoinHandle<()>>,
    /// Last: the profile goes once the browser is gone.
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts Chromium headless with a fresh profile and a page of
    /// `width`×`height` CSS pixels, and attaches to that page.
    ///
    /// # Panics
    ///
    /// If Chromium is missing, does not start, or does not offer a page.
    pub async fn start(width: u32, height: u32) -> Browser {
        let profile = tempfile::Builder::new()
            .prefix("teal-chromium-")
            .tempdir()
            .expect("temporary profile directory");
        let mut cmd = Command::new(chromium_binary());
        cmd.args([
            "--headless=new",
            "--remote-debugging-port=0",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            // /dev/shm is small in containers; Chromium then crashes tabs.
            "--disable-dev-shm-usage",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-sync",
            "--mute-audio",
            "--hide-scrollbars",
            // A page nobody looks at must keep its timers and event stream
            // running as a visible one does.
            "--disable-background-timer-throttling",
            "--disable-renderer-backgrounding",
            "--disable-backgrounding-occluded-windows",
        ])
        .arg(format!("--window-size={width},{height}"))
        .arg(format!("--user-data-dir={}", profile.path().display()));
        // Chromium refuses to run as root with its sandbox on; the tests
        // run as root in CI's containers.
        if rustix::process::geteuid().is_root() {
            cmd.arg("--no-sandbox");
        }
        cmd.arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", chromium_binary().display()));
        let pgid = child.id().expect("Chromium runs");
        let stderr = Arc::new(Mutex::new(String::new()));
        let (url_tx, url_rx) = oneshot::channel();
        let lines = child.stderr.take().expect("piped stderr");
        // Read stderr to its end, or Chromium blocks once the pipe is full.
        let drain = tokio::spawn({
            let stderr = stderr.clone();
            async move {
                let mut url_tx = Some(url_tx);
                let mut lines = BufReader::new(lines).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(url) = line.strip_prefix("DevTools listening on ")
                        && let Some(tx) = url_tx.take()
                    {
                        let _ = tx.send(url.trim().to_owned());
                    }
                    let mut all = stderr.lock().expect("stderr log");
                    all.push_str(&line);
                    all.push('\n');
                }
            }
        });
        let url = match tokio::time::timeout(START_TIMEOUT, url_rx).await {
            Ok(Ok(url)) => url,
            _ => {
                let _ = child.start_kill();
                panic!(
                    "Chromium did not print its DevTools address within {START_TIMEOUT:?}; \
                     stderr:\n{}",
                    stderr.lock().expect("stderr log")
                );
            }
        };
        let (ws, _) = tokio_tungstenite::connect_async(&url)
            .await
            .unwrap_or_else(|e| panic!("connect to Chromium's DevTools at {url}: {e}"));
        let (mut sink, mut stream) = futures_util::StreamExt::split(ws);
        let (out, mut out_rx) = mpsc::unbounded_channel::<Message>();
        let writer = tokio::spawn(async move {
            while let Some(message) = out_rx.recv().await {
                if sink.send(message).await.is_err() {
                    return;
                }
            }
        });
        let pending: Pending = Arc::default();
        let logged: Logged = Arc::default();
        let reader = tokio::spawn({
            let (pending, logged) = (pending.clone(), logged.clone());
            async move {
                while let Some(Ok(message)) = stream.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let Ok(message) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    dispatch(message, &pending, &logged);
                }
                // The browser is gone: every waiting call fails now rather
                // than at its deadline.
                pending.lock().expect("pending calls").clear();
            }
        });
        let mut browser = Browser {
            child,
            pgid,
            session: String::new(),
            out,
            pending,
            next_id: AtomicU64::new(1),
            logged,
            stderr,
            tasks: vec![drain, writer, reader],
            _profile: profile,
        };
        let target = browser
            .send(None, "Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target_id = target["targetId"].as_str().expect("a target id").to_owned();
        let attached = browser
            .send(
                None,
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        for domain in ["Page.enable", "Runtime.enable", "Log.enable"] {
            browser.call(domain, json!({})).await;
        }
        browser.set_viewport(width, height, false).await;
        browser
    }

    /// Sends `method` to the browser (`session` None) or a page, and waits
    /// for its result.
    async fn send(&self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut message = json!({"id": id, "method": method, "params": params});
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().expect("pending calls").insert(id, tx);
        if self.out.send(Message::text(message.to_string())).is_err() {
            panic!(
                "the DevTools connection is gone before {method}; stderr:\n{}",
                self.stderr()
            );
        }
        match tokio::time::timeout(CALL_TIMEOUT, rx).await {
            Ok(Ok(Ok(result))) => result,
            Ok(Ok(Err(error))) => panic!("DevTools {method} failed: {error}"),
            Ok(Err(_)) => panic!(
                "Chromium closed the DevTools connection during {method}; stderr:\n{}",
                self.stderr()
            ),
            Err(_) => panic!("DevTools {method} did not answer within {CALL_TIMEOUT:?}"),
        }
    }

    /// Sends `method` with `params` to the page and returns its result.
    ///
    /// # Panics
    ///
    /// If Chromium answers with an error, or not within 30 s.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        self.send(Some(&self.session.clone()), method, params).await
    }

    /// Loads `url` and waits until the document has loaded.
    pub async fn navigate(&self, url: &str) {
        let r = self.call("Page.navigate", json!({"url": url})).await;
        if let Some(error) = r["errorText"].as_str() {
            panic!("navigate to {url}: {error}");
        }
        self.wait_until(
            CALL_TIMEOUT,
            &format!("{url} has loaded"),
            "document.readyState === 'complete'",
        )
        .await;
    }

    /// Evaluates `expression` in the page (awaiting it if it is a
    /// promise) and returns its value as JSON, or the exception it threw.
    pub async fn try_eval(&self, expression: &str) -> Result<Value, String> {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({
                    "expression": expression,
                    "returnByValue": true,
                    "awaitPromise": true,
                }),
            )
            .await;
        if let Some(details) = r.get("exceptionDetails") {
            let what = details["exception"]["description"]
                .as_str()
                .or_else(|| details["text"].as_str())
                .unwrap_or("an exception");
            return Err(what.to_owned());
        }
        // `undefined` has no value; it reads as null.
        Ok(r["result"].get("value").cloned().unwrap_or(Value::Null))
    }

    /// [`Browser::try_eval`], failing the test on an exception.
    pub async fn eval(&self, expression: &str) -> Value {
        match self.try_eval(expression).await {
            Ok(value) => value,
            Err(e) => panic!("{expression} threw {e}\n{}", self.describe().await),
        }
    }

    /// Polls `expression` every 50 ms until it is true (an exception counts
    /// as false).
    ///
    /// # Panics
    ///
    /// After `timeout`, with `what`, the page's text and what it logged.
    pub async fn wait_until(&self, timeout: Duration, what: &str, expression: &str) {
        self.wait_for(timeout, what, &format!("({expression}) ? true : null"))
            .await;
    }

    /// Polls `expression` every 50 ms until it is neither null, undefined
    /// nor false, and returns that value.
    ///
    /// # Panics
    ///
    /// After `timeout`, with `what`, the last value or exception, the
    /// page's text and what it logged.
    pub async fn wait_for(&self, timeout: Duration, what: &str, expression: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.try_eval(expression).await;
            match &last {
                Ok(Value::Null | Value::Bool(false)) | Err(_) => {}
                Ok(value) => return value.clone(),
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting until {what}\n({expression} was \
                     {last:?})\n{}",
                    self.describe().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Clicks the element `selector` names with real mouse events (move,
    /// press, release) at its centre, after scrolling it into view: what a
    /// person's click does, so a disabled button or one under a modal
    /// dialog's backdrop does not act.
    ///
    /// # Panics
    ///
    /// If no element matches, or it has no size.
    pub async fn click(&self, selector: &str) {
        let quoted = serde_json::to_string(selector).expect("a selector as JSON");
        let centre = self
            .eval(&format!(
                "(() => {{ const e = document.querySelector({quoted}); if (!e) return null; \
                 e.scrollIntoView({{block: 'center', inline: 'center'}}); \
                 const r = e.getBoundingClientRect(); \
                 return {{x: r.left + r.width / 2, y: r.top + r.height / 2, \
                 w: r.width, h: r.height}}; }})()"
            ))
            .await;
        if centre.is_null() {
            panic!("no element {selector} to click\n{}", self.describe().await);
        }
        if centre["w"].as_f64() == Some(0.0) || centre["h"].as_f64() == Some(0.0) {
            panic!(
                "{selector} has no size ({centre}): hidden?\n{}",
                self.describe().await
            );
        }
        let (x, y) = (centre["x"].clone(), centre["y"].clone());
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            let mut event = json!({"type": kind, "x": x, "y": y});
            if kind != "mouseMoved" {
                event["button"] = json!("left");
                event["clickCount"] = json!(1);
            }
            self.call("Input.dispatchMouseEvent", event).await;
        }
    }

    /// Clicks into the input `selector` names, selects what it holds and
    /// types `text` over it, as a keyboard would insert it.
    pub async fn type_into(&self, selector: &str, text: &str) {
        self.click(selector).await;
        let quoted = serde_json::to_string(selector).expect("a selector as JSON");
        self.eval(&format!("document.querySelector({quoted}).select()"))
            .await;
        self.call("Input.insertText", json!({"text": text})).await;
    }

    /// Waits until the page has drawn two more frames: whatever the
    /// events handled so far changed is then on screen.
    pub async fn painted(&self) {
        self.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
            .await;
    }

    /// Waits (up to 2 s, then goes on regardless) until no CSS transition
    /// runs, so that a screenshot shows where bars and colours end up
    /// rather than half way there. A page that keeps starting transitions
    /// gets its screenshot anyway.
    pub async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            let moving = self
                .try_eval(
                    "document.getAnimations().some(a => a instanceof CSSTransition && \
                     a.playState === 'running')",
                )
                .await;
            if moving != Ok(Value::Bool(true)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Saves a PNG of the page as it shows now to `path` (its whole length
    /// when `full_page`, else the viewport) and returns its size in pixels.
    pub async fn screenshot(&self, path: &Path, full_page: bool) -> (u32, u32) {
        let mut params = json!({"format": "png"});
        if full_page {
            let metrics = self.call("Page.getLayoutMetrics", json!({})).await;
            let size = &metrics["cssContentSize"];
            params["captureBeyondViewport"] = json!(true);
            params["clip"] = json!({
                "x": 0, "y": 0, "scale": 1,
                "width": size["width"], "height": size["height"],
            });
        }
        let shot = self.call("Page.captureScreenshot", params).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("a screenshot in base64");
        let decoder = png::Decoder::new(std::io::Cursor::new(&png[..]));
        let info = decoder.read_info().expect("the screenshot is a PNG");
        let size = (info.info().width, info.info().height);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        }
        std::fs::write(path, &png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        size
    }

    /// Sets the viewport to `width`×`height` CSS pixels, as a phone (touch,
    /// mobile viewport rules) when `mobile`.
    pub async fn set_viewport(&self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({
                "width": width, "height": height,
                "deviceScaleFactor": 1, "mobile": mobile,
            }),
        )
        .await;
    }

    /// Makes the page see `prefers-color-scheme: dark` (or light).
    pub async fn set_dark(&self, dark: bool) {
        let scheme = if dark { "dark" } else { "light" };
        self.call(
            "Emulation.setEmulatedMedia",
            json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]}),
        )
        .await;
    }

    /// What the page logged so far: console messages, log entries (CSP
    /// violations are `[error security]` or `[error violation]` entries) and
    /// uncaught exceptions.
    pub fn logged(&self) -> Vec<String> {
        self.logged.lock().expect("page log").clone()
    }

    /// What Chromium wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().expect("stderr log").clone()
    }

    /// The page's address and text and what it logged, for a failure
    /// message.
    pub async fn describe(&self) -> String {
        let text = self
            .try_eval("location.href + '\\n' + (document.body ? document.body.innerText : '')")
            .await
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .unwrap_or_else(|e| format!("(no text: {e})"));
        let cut: String = text.chars().take(6000).collect();
        format!(
            "---- page ----\n{cut}\n---- page log ----\n{}",
            self.logged().join("\n")
        )
    }
}

/// Routes one message from Chromium: an answer to its call, or an event
/// the page's log keeps.
fn dispatch(message: Value, pending: &Pending, logged: &Logged) {
    if let Some(id) = message["id"].as_u64() {
        let waiting = pending.lock().expect("pending calls").remove(&id);
        if let Some(tx) = waiting {
            let result = match message.get("error") {
                Some(error) => Err(error.to_string()),
                None => Ok(message["result"].clone()),
            };
            let _ = tx.send(result);
        }
        return;
    }
    let params = &message["params"];
    let line = match message["method"].as_str() {
        Some("Runtime.consoleAPICalled") => {
            let args: Vec<String> = params["args"]
                .as_array()
                .map(|args| {
                    args.iter()
                        .map(|a| match &a["value"] {
                            Value::String(s) => s.clone(),
                            Value::Null => a["description"].as_str().unwrap_or("").to_owned(),
                            v => v.to_string(),
                        })
                        .collect()
                })
                .unwrap_or_default();
            format!("[console.{}] {}", str_of(&params["type"]), args.join(" "))
        }
        Some("Log.entryAdded") => {
            let entry = &params["entry"];
            format!(
                "[{} {}] {} {}",
                str_of(&entry["level"]),
                str_of(&entry["source"]),
                str_of(&entry["text"]),
                str_of(&entry["url"])
            )
        }
        Some("Runtime.exceptionThrown") => {
            let details = &params["exceptionDetails"];
            let what = details["exception"]["description"]
                .as_str()
                .unwrap_or_else(|| str_of(&details["text"]));
            format!("[uncaught] {what}")
        }
        _ => return,
    };
    logged.lock().expect("page log").push(line);
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_default()
}

impl Drop for Browser {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- page log ----\n{}\n---- Chromium's stderr ----\n{}",
                self.logged().join("\n"),
                self.stderr()
            );
        }
        for task in &self.tasks {
            task.abort();
        }
        // The whole group: the launcher script, the browser, its renderers.
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.pgid)])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.start_kill();
    }
}
