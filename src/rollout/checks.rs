//! The checks a rollout sends straight to every endpoint of a fleet,
//! bypassing Envoy: one `GET` per (check, endpoint) pair, all at once,
//! each on a connection of its own and bounded as a whole by its check's
//! timeout.
//!
//! HTTP is hyper's client (`hyper::client::conn`), one connection per
//! request with no pool, so every check really connects to its endpoint.
//! A service's `protocol` picks the version: `http1` sends HTTP/1.1 with
//! `Connection: close`, `http2` sends HTTP/2 with prior knowledge (h2c),
//! as Envoy does to that service. Plain TCP only.
//!
//! A check passes when the response's status equals the check's and, if
//! the check has `body_contains`, that text is in the first [`MAX_BODY`]
//! bytes of the body. A longer body is cut there: the rest is not read,
//! so a text past the bound is not found and the check fails saying so.
//!
//! A fleet with no endpoints fails: a check that could not run has not
//! passed.

use std::error::Error as _;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{ACCEPT, CONNECTION, HOST, USER_AGENT};
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::config::{Check, Config, Protocol, Service};
use crate::rollout::CheckResult;

/// The most body bytes a check reads from one response (1 MiB). A health
/// page is short; a longer body is cut here and `body_contains` is looked
/// for in this prefix only, so an endpoint streaming without end costs a
/// check at most this much memory.
pub(crate) const MAX_BODY: usize = 1024 * 1024;

/// The most bytes of status line and headers a check accepts (64 KiB):
/// hyper's read buffer for HTTP/1.1, the header list size for HTTP/2.
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// The `check` of the one failing result of a fleet with no endpoints.
pub(crate) const NO_ENDPOINTS: &str = "(fleet)";

/// Runs every check of `service` against every endpoint of its fleet
/// `fleet`, concurrently, and returns the results sorted by (check,
/// endpoint).
///
/// A fleet with no endpoints (or one the service does not have) gives one
/// failing result, whose `check` is [`NO_ENDPOINTS`]: callers treat a
/// list as passing when none of its results failed, and there is nothing
/// to vouch for a fleet that cannot serve. A fleet with endpoints and a
/// service without checks gives an empty list, which passes.
pub(crate) async fn run_checks(service: &Service, fleet: &str) -> Vec<CheckResult> {
    let endpoints = match service.fleets.get(fleet) {
        Some(f) if !f.endpoints.is_empty() => &f.endpoints,
        found => {
            let detail = if found.is_some() {
                format!("fleet {fleet} has no endpoints: nothing can pass its checks")
            } else {
                format!("the service has no fleet {fleet}")
            };
            return vec![CheckResult {
                check: NO_ENDPOINTS.to_owned(),
                endpoint: "(none)".to_owned(),
                ok: false,
                detail,
            }];
        }
    };
    let mut running = Vec::new();
    for (name, check) in &service.checks {
        for endpoint in endpoints {
            let (addr, check_owned) = (endpoint.address, check.clone());
            let protocol = service.protocol;
            let task = tokio::spawn(async move { probe(addr, protocol, &check_owned).await });
            running.push((name.clone(), addr.to_string(), task));
        }
    }
    let mut results = Vec::with_capacity(running.len());
    for (check, endpoint, task) in running {
        let (ok, detail) = task
            .await
            .unwrap_or_else(|e| (false, format!("check did not finish: {e}")));
        results.push(CheckResult {
            check,
            endpoint,
            ok,
            detail,
        });
    }
    results.sort_by(|a, b| (&a.check, &a.endpoint).cmp(&(&b.check, &b.endpoint)));
    results
}

/// One check against one endpoint: whether it passed, and what happened.
async fn probe(addr: SocketAddr, protocol: Protocol, check: &Check) -> (bool, String) {
    let start = Instant::now();
    // One deadline over connect, request, head and body: a server that
    // trickles its headers or streams a body without end is cut off here.
    let exchange = get(addr, protocol, &check.path);
    let response = match tokio::time::timeout(check.timeout, exchange).await {
        Err(_) => return (false, format!("timed out after {}", human(check.timeout))),
        Ok(Err(e)) => return (false, e.to_string()),
        Ok(Ok(response)) => response,
    };
    let took = human_ms(start.elapsed());
    if response.status != check.status {
        return (
            false,
            format!(
                "expected {}, got {} in {took}",
                check.status, response.status
            ),
        );
    }
    if let Some(text) = &check.body_contains
        && !contains(&response.body, text.as_bytes())
    {
        let which = if response.cut {
            format!("the first {MAX_BODY} bytes of the body lack")
        } else {
            "the body lacks".to_owned()
        };
        return (
            false,
            format!("{} in {took}, but {which} {text:?}", response.status),
        );
    }
    (true, format!("{} in {took}", response.status))
}

/// `2s`, `1500ms`: a check timeout as the config would spell it.
/// A short digest of every service's checks and the protocol they are
/// sent in, and of its traffic analysis: what replicas must agree on
/// besides the resources. The resources' digest (and so the version
/// string) leaves both out, as Envoy never sees them; a replica compares
/// this one with the one the stored state was saved with before it may
/// lead, so a flip runs the same checks, and is judged by the same
/// thresholds, whichever replica runs it. A service without an analysis
/// adds nothing, so the digest of a config without any is what it was
/// before analyses existed.
pub(crate) fn digest(config: &Config) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    // Every field length-prefixed, so no two configs feed the same bytes.
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    for (name, svc) in &config.services {
        if svc.checks.is_empty() && svc.analysis.is_none() {
            continue;
        }
        field(name.as_bytes());
        field(match svc.protocol {
            Protocol::Http1 => b"http1",
            Protocol::Http2 => b"http2",
        });
        for (check, c) in &svc.checks {
            field(check.as_bytes());
            field(c.path.as_bytes());
            field(&c.status.to_le_bytes());
            match &c.body_contains {
                Some(text) => {
                    field(b"body");
                    field(text.as_bytes());
                }
                None => field(b""),
            }
            field(&c.timeout.as_nanos().to_le_bytes());
        }
        if let Some(a) = &svc.analysis {
            field(b"analysis");
            let ratio =
                |r: Option<crate::config::Ratio>| r.map_or(u64::MAX, |r| u64::from(r.ppm()));
            field(&ratio(a.max_error_ratio).to_le_bytes());
            field(&ratio(a.max_error_ratio_over_baseline).to_le_bytes());
            field(&a.min_requests.to_le_bytes());
            field(&a.window.as_nanos().to_le_bytes());
            field(a.too_few_requests.as_str().as_bytes());
        }
    }
    h.finalize()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn human(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        human_ms(d)
    }
}

fn human_ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// A response: its status and (up to [`MAX_BODY`] of) its body.
#[derive(Debug)]
struct Response {
    status: u16,
    body: Vec<u8>,
    /// The body went on past [`MAX_BODY`].
    cut: bool,
}

/// Why a check got no response; its text is the result's `detail`.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    /// Nothing listens on the endpoint's port.
    #[error("connection refused")]
    Refused,
    /// Any other failure to connect.
    #[error("connect: {0}")]
    Connect(io::Error),
    /// The check's path does not make a request URI.
    #[error("bad request path {0:?}")]
    Path(String),
    /// The exchange failed: the response broke HTTP, was too large in
    /// its head, or the connection went away.
    #[error("{}", describe(.0))]
    Http(#[from] hyper::Error),
}

/// A hyper error with its causes, worded for an operator.
fn describe(e: &hyper::Error) -> String {
    if e.is_parse_too_large() {
        return format!("response headers over {} KiB", MAX_HEAD / 1024);
    }
    let mut text = if e.is_parse() {
        format!("bad status line or headers: {e}")
    } else {
        e.to_string()
    };
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// `GET path` on a new connection to `addr`, in `protocol`.
async fn get(addr: SocketAddr, protocol: Protocol, path: &str) -> Result<Response, ProbeError> {
    let bad_path = || ProbeError::Path(path.to_owned());
    let stream = TcpStream::connect(addr).await.map_err(|e| {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            ProbeError::Refused
        } else {
            ProbeError::Connect(e)
        }
    })?;
    // A lone small request: don't hold it back for Nagle.
    let _ = stream.set_nodelay(true);
    let io = TokioIo::new(stream);
    let request = Request::get(path)
        .header(USER_AGENT, "teal-check")
        .header(ACCEPT, "*/*");
    match protocol {
        Protocol::Http1 => {
            let request = request
                .header(HOST, addr.to_string())
                .header(CONNECTION, "close")
                .body(Empty::<Bytes>::new())
                .map_err(|_| bad_path())?;
            let (mut sender, conn) = http1::Builder::new()
                .title_case_headers(true)
                .max_buf_size(MAX_HEAD)
                .handshake(io)
                .await?;
            exchange(conn, async move {
                read(sender.send_request(request).await?).await
            })
            .await
        }
        Protocol::Http2 => {
            // HTTP/2 carries the authority in the URI, not a Host header.
            let uri: Uri = format!("http://{addr}{path}")
                .parse()
                .map_err(|_| bad_path())?;
            let mut request = request
                .body(Empty::<Bytes>::new())
                .map_err(|_| bad_path())?;
            *request.uri_mut() = uri;
            let (mut sender, conn) = http2::Builder::new(TokioExecutor::new())
                .max_header_list_size(MAX_HEAD as u32)
                .handshake(io)
                .await?;
            exchange(conn, async move {
                read(sender.send_request(request).await?).await
            })
            .await
        }
    }
}

/// Drives a connection and the request on it together, so that dropping
/// this future (at the check's deadline) closes the socket with it rather
/// than leaving a spawned connection task behind.
async fn exchange<T>(
    conn: impl Future<Output = hyper::Result<()>>,
    request: impl Future<Output = Result<T, ProbeError>>,
) -> Result<T, ProbeError> {
    tokio::pin!(conn, request);
    tokio::select! {
        biased;
        done = &mut request => done,
        closed = &mut conn => match closed {
            // hyper hands a failure to the request waiting on it when it
            // can, and returns it here when it cannot (mid-body).
            Err(e) => Err(e.into()),
            Ok(()) => request.await,
        },
    }
}

/// The status and the first [`MAX_BODY`] bytes of the body.
async fn read(response: hyper::Response<Incoming>) -> Result<Response, ProbeError> {
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let (mut data, mut cut) = (Vec::new(), false);
    while let Some(frame) = body.frame().await {
        // Trailers carry no body text.
        let Ok(chunk) = frame?.into_data() else {
            continue;
        };
        let room = MAX_BODY - data.len();
        if chunk.len() > room {
            data.extend_from_slice(&chunk[..room]);
            cut = true;
            break;
        }
        data.extend_from_slice(&chunk);
    }
    Ok(Response {
        status,
        body: data,
        cut,
    })
}

#[cfg(test)]
#[path = "checks_tests.rs"]
mod tests;
