//! Just enough HTTP/1.1 for the tests, on plain tokio: upstream servers that
//! say who they are (and, if asked, which values of some request headers
//! they received, or answer one path slowly), a client that sends one
//! request per connection, and a keep-alive client for steady load.
//! Everything listens on and connects to 127.0.0.1 only.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// How long one client request may take, connect to last byte.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// Largest request head an upstream accepts.
const MAX_HEAD: usize = 64 * 1024;

/// An HTTP/1.1 server on `127.0.0.1:<port>` that answers every request with
/// `200 OK` and its name as the body, keeping connections alive (Envoy
/// pools them). It stops, closing its connections, when dropped.
///
/// Started with [`Upstream::start_echoing`], it also sends back, for each
/// of the given request headers the request carried, a response header
/// [`ECHO_PREFIX`]`<name>` with the value it received, so a test can see
/// what the proxy in front forwarded.
#[derive(Debug)]
pub struct Upstream {
    /// The name it answers with, e.g. `blue`.
    pub name: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Starts an upstream named `name` on a free port.
    pub async fn start(name: &str) -> Upstream {
        Upstream::start_echoing(name, &[]).await
    }

    /// Starts an upstream named `name` on a free port that echoes the
    /// request headers `echo` (see [`Upstream`]).
    pub async fn start_echoing(name: &str, echo: &[&str]) -> Upstream {
        Upstream::start_inner(name, echo, None, None, None).await
    }

    /// Starts an upstream named `name` on a free port whose [`HEALTH_PATH`]
    /// answers as `health` says (every other path answers as usual).
    pub async fn start_with_health(name: &str, health: Arc<Health>) -> Upstream {
        Upstream::start_inner(name, &[], Some(health), None, None).await
    }

    /// Starts an upstream named `name` on a free port that answers requests
    /// for `path` (exactly, query included) only after `delay`, to keep
    /// requests in flight; every other request is answered at once.
    pub async fn start_slow(name: &str, path: &str, delay: Duration) -> Upstream {
        Upstream::start_inner(name, &[], None, Some((path.to_owned(), delay)), None).await
    }

    /// Starts an upstream named `name` on a free port that answers one
    /// request in `every` with `503 Service Unavailable` (the 1st, the
    /// `every + 1`th...), on every path but [`HEALTH_PATH`], which answers
    /// as `health` says: a fleet that passes its checks and fails real
    /// requests.
    pub async fn start_failing(name: &str, health: Arc<Health>, every: u64) -> Upstream {
        let failing = Arc::new(Failing {
            every: every.max(1),
            seen: AtomicU64::new(0),
        });
        Upstream::start_inner(name, &[], Some(health), None, Some(failing)).await
    }

    async fn start_inner(
        name: &str,
        echo: &[&str],
        health: Option<Arc<Health>>,
        slow: Option<(String, Duration)>,
        failing: Option<Arc<Failing>>,
    ) -> Upstream {
        let echo: Vec<String> = echo.iter().map(|h| h.to_ascii_lowercase()).collect();
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an upstream on 127.0.0.1:0");
        let port = listener.local_addr().expect("upstream address").port();
        let body = name.to_owned();
        let task = tokio::spawn(async move {
            // Connections live in the set, so aborting this task (on drop)
            // drops the set and closes them all.
            let mut connections = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                connections.spawn(serve_connection(
                    stream,
                    body.clone(),
                    echo.clone(),
                    health.clone(),
                    slow.clone(),
                    failing.clone(),
                ));
                // Reap finished connections so the set does not grow.
                while connections.try_join_next().is_some() {}
            }
        });
        Upstream {
            name: name.to_owned(),
            port,
            task,
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The path at which an [`Upstream::start_with_health`] reports its health.
pub const HEALTH_PATH: &str = "/healthz";

/// A health endpoint that can be told to fail: it answers `200 ok` while it
/// has passes left, then `503 unhealthy`. Starts passing forever.
#[derive(Debug)]
pub struct Health {
    /// Passes left; negative: pass forever.
    passes: AtomicI64,
}

impl Health {
    /// A health endpoint that passes until told otherwise.
    pub fn new() -> Arc<Health> {
        Arc::new(Health {
            passes: AtomicI64::new(-1),
        })
    }

    /// Pass every request from now on.
    pub fn pass(&self) {
        self.passes.store(-1, Ordering::SeqCst);
    }

    /// Fail every request from now on.
    pub fn fail(&self) {
        self.passes.store(0, Ordering::SeqCst);
    }

    /// Pass the next `n` requests, then fail.
    pub fn pass_then_fail(&self, n: i64) {
        self.passes.store(n, Ordering::SeqCst);
    }

    /// Whether this request passes (using up one pass).
    fn next(&self) -> bool {
        self.passes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| {
                (p > 0).then(|| p - 1)
            })
            .map_or_else(|p| p < 0, |_| true)
    }
}

/// One request in `every` fails ([`Upstream::start_failing`]), counted
/// over all of the upstream's connections.
#[derive(Debug)]
struct Failing {
    every: u64,
    seen: AtomicU64,
}

impl Failing {
    fn next_fails(&self) -> bool {
        self.seen
            .fetch_add(1, Ordering::SeqCst)
            .is_multiple_of(self.every)
    }
}

/// The prefix of the response headers in which an upstream echoes request
/// headers: `x-echo-x-teal-fleet` carries the request's `x-teal-fleet`.
pub const ECHO_PREFIX: &str = "x-echo-";

/// Answers requests on one connection until the peer closes it, echoing
/// the request headers named in `echo` (lower case), reporting health as
/// `health` says, answering a request for the `slow` path only after its
/// delay, and failing a share of requests as `failing` says.
async fn serve_connection(
    mut stream: TcpStream,
    body: String,
    echo: Vec<String>,
    health: Option<Arc<Health>>,
    slow: Option<(String, Duration)>,
    failing: Option<Arc<Failing>>,
) {
    let mut buf = Vec::new();
    loop {
        // Read one request head; GETs from Envoy carry no body we need.
        let head_end = loop {
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                break end + 4;
            }
            if buf.len() > MAX_HEAD {
                return;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let raw_head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let head = raw_head.to_ascii_lowercase();
        let echoed: String = echo
            .iter()
            .filter_map(|name| {
                let value = header(&raw_head, name)?;
                Some(format!("{ECHO_PREFIX}{name}: {value}\r\n"))
            })
            .collect();
        let content_length: usize = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let close = header(&head, "connection").is_some_and(|v| v == "close");
        // Skip any request body.
        while buf.len() < head_end + content_length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_end + content_length);
        let path = raw_head.split_whitespace().nth(1).unwrap_or("/");
        let (status, body) = match &health {
            Some(h) if path == HEALTH_PATH => {
                if h.next() {
                    ("200 OK", "ok")
                } else {
                    ("503 Service Unavailable", "unhealthy")
                }
            }
            _ if failing.as_ref().is_some_and(|f| f.next_fails()) => {
                ("503 Service Unavailable", "failing")
            }
            _ => ("200 OK", body.as_str()),
        };
        if let Some((slow_path, delay)) = &slow
            && path == slow_path
        {
            tokio::time::sleep(*delay).await;
        }
        let response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}{}\r\n{}",
            body.len(),
            echoed,
            if close { "connection: close\r\n" } else { "" },
            body
        );
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// A response as the client read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The body, decoded from chunked encoding if need be.
    pub body: String,
    /// The headers, names in lower case, values as sent, in order.
    pub headers: Vec<(String, String)>,
}

impl HttpResponse {
    /// The value of the first header `name` (any case), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// What an [`Upstream::start_echoing`] behind the proxy received as
    /// request header `name`, if it echoes that header and got it.
    pub fn echoed(&self, name: &str) -> Option<&str> {
        self.header(&format!("{ECHO_PREFIX}{name}"))
    }
}

/// `GET path` from `127.0.0.1:port` with `Connection: close`. `headers` are
/// added as given; a `Host` among them replaces the default
/// `Host: 127.0.0.1:port`.
pub async fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> io::Result<HttpResponse> {
    request("GET", port, path, headers).await
}

/// [`get`] that waits up to `timeout` for the whole answer: for a request
/// an upstream holds open on purpose, longer than [`get`] waits.
pub async fn get_within(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> io::Result<HttpResponse> {
    tokio::time::timeout(timeout, request_inner("GET", port, path, headers, ""))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))?
}

/// `POST path` with an empty body, otherwise like [`get`].
pub async fn post(port: u16, path: &str, headers: &[(&str, &str)]) -> io::Result<HttpResponse> {
    request("POST", port, path, headers).await
}

/// `POST path` with `body` (JSON), otherwise like [`get`].
pub async fn post_json(port: u16, path: &str, body: &str) -> io::Result<HttpResponse> {
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        request_inner(
            "POST",
            port,
            path,
            &[("content-type", "application/json")],
            body,
        ),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))?
}

/// Any `method` with `body` (JSON), otherwise like [`get`].
pub async fn send_json(
    method: &str,
    port: u16,
    path: &str,
    content_type: &str,
    body: &str,
) -> io::Result<HttpResponse> {
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        request_inner(method, port, path, &[("content-type", content_type)], body),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))?
}

/// Any `method` with `headers` and `body`, otherwise like [`get`].
pub async fn send(
    method: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> io::Result<HttpResponse> {
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        request_inner(method, port, path, headers, body),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))?
}

async fn request(
    method: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<HttpResponse> {
    tokio::time::timeout(
        REQUEST_TIMEOUT,
        request_inner(method, port, path, headers, ""),
    )
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))?
}

async fn request_inner(
    method: &str,
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let mut request = format!("{method} {path} HTTP/1.1\r\n");
    if method != "GET" {
        request.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        request.push_str(&format!("host: 127.0.0.1:{port}\r\n"));
    }
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("connection: close\r\n\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    parse_response(&raw)
}

/// One HTTP/1.1 keep-alive connection to `127.0.0.1:port`, for steady
/// load: requests go one after another on the same connection. Any error
/// (including a closed connection) is returned as is, never retried, so a
/// caller counting failures sees every one.
#[derive(Debug)]
pub struct KeepAlive {
    port: u16,
    stream: TcpStream,
    buf: Vec<u8>,
}

impl KeepAlive {
    /// Connects.
    pub async fn connect(port: u16) -> io::Result<KeepAlive> {
        let stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(KeepAlive {
            port,
            stream,
            buf: Vec::new(),
        })
    }

    /// The port it is connected to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The local (client) port of the connection.
    pub fn local_port(&self) -> io::Result<u16> {
        Ok(self.stream.local_addr()?.port())
    }

    /// `GET path` with `headers` (a `Host` among them replaces the default
    /// `Host: 127.0.0.1:port`), waiting at most `timeout` for the whole
    /// answer. The response must carry a `content-length`. After an error
    /// the connection is unusable.
    pub async fn get(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> io::Result<HttpResponse> {
        tokio::time::timeout(timeout, self.get_inner(path, headers))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "request timed out"))?
    }

    async fn get_inner(
        &mut self,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<HttpResponse> {
        let mut request = format!("GET {path} HTTP/1.1\r\n");
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
            request.push_str(&format!("host: 127.0.0.1:{}\r\n", self.port));
        }
        for (k, v) in headers {
            request.push_str(&format!("{k}: {v}\r\n"));
        }
        request.push_str("\r\n");
        self.stream.write_all(request.as_bytes()).await?;
        let head_end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).to_ascii_lowercase();
        let length: usize = header(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("no content-length: {head:?}"),
                )
            })?;
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        let response = parse_response(&self.buf[..head_end + length]);
        self.buf.drain(..head_end + length);
        response
    }

    async fn fill(&mut self) -> io::Result<()> {
        let mut chunk = [0u8; 8192];
        match self.stream.read(&mut chunk).await? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed by the peer",
            )),
            n => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
        }
    }
}

fn parse_response(raw: &[u8]) -> io::Result<HttpResponse> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{why}: {:?}", String::from_utf8_lossy(raw)),
        )
    };
    let head_end = find(raw, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let raw_head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let head = raw_head.to_ascii_lowercase();
    let headers = raw_head
        .lines()
        .skip(1)
        .filter_map(|line| {
            let (k, v) = line.split_once(':')?;
            Some((k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        })
        .collect();
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let mut body = raw[head_end + 4..].to_vec();
    if header(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
        headers,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// The value of the first header `name` (any case) in a message head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
