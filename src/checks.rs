//! The checks a rollout sends straight to every endpoint of a fleet,
//! bypassing Envoy: one HTTP/1.1 `GET` per (check, endpoint) pair, all at
//! once, each with its check's timeout.
//!
//! Plain TCP only. The response's status must equal the check's and, if
//! the check has `body_contains`, the body (the first [`MAX_BODY`] bytes,
//! read by `Content-Length`, chunked, or until the server closes) must
//! contain that text.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{Check, Service};
use crate::rollout::CheckResult;

/// The most body bytes read from one response; the rest is ignored.
pub const MAX_BODY: usize = 1024 * 1024;

/// The most bytes of status line and headers accepted.
const MAX_HEAD: usize = 64 * 1024;

/// Runs every check of `service` against every endpoint of its fleet
/// `fleet`, concurrently, and returns the results sorted by (check,
/// endpoint).
///
/// A service without checks, a fleet without endpoints, or a fleet the
/// service does not have gives an empty list. Callers treat an empty list
/// as passing (there is nothing to fail), so they must check that the
/// fleet exists themselves.
pub async fn run_checks(service: &Service, fleet: &str) -> Vec<CheckResult> {
    let Some(fleet) = service.fleets.get(fleet) else {
        return Vec::new();
    };
    let mut running = Vec::new();
    for (name, check) in &service.checks {
        for endpoint in &fleet.endpoints {
            let (addr, check_owned) = (endpoint.address, check.clone());
            let task = tokio::spawn(async move { probe(addr, &check_owned).await });
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
async fn probe(addr: SocketAddr, check: &Check) -> (bool, String) {
    let start = Instant::now();
    let response = match tokio::time::timeout(check.timeout, get(addr, &check.path)).await {
        Err(_) => return (false, format!("timed out after {}", human(check.timeout))),
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
            return (false, "connection refused".to_owned());
        }
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
        return (
            false,
            format!("{} in {took}, but the body lacks {text:?}", response.status),
        );
    }
    (true, format!("{} in {took}", response.status))
}

/// `2s`, `1500ms`: a check timeout as the config would spell it.
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
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Reads more bytes into `buf`; 0 at end of stream.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    buf.reserve(16 * 1024);
    stream.read_buf(buf).await
}

/// `GET path` over HTTP/1.1 with `Connection: close`.
async fn get(addr: SocketAddr, path: &str) -> io::Result<Response> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: teal-check\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;

    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(invalid("response headers over 64 KiB"));
        }
        if read_more(&mut stream, &mut buf).await? == 0 {
            return Err(invalid(if buf.is_empty() {
                "connection closed without a response"
            } else {
                "connection closed in the response headers"
            }));
        }
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| invalid("response headers are not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = parse_status_line(status_line)
        .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
    let (mut length, mut chunked) = (None, false);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| invalid(format!("bad Content-Length {value:?}")))?;
            length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }

    let mut body = buf.split_off(head_end);
    if matches!(status, 100..=199 | 204 | 304) {
        return Ok(Response {
            status,
            body: Vec::new(),
        });
    }
    // Chunked framing takes precedence over Content-Length (RFC 9112 6.3).
    let want = match length {
        Some(n) if !chunked => n.min(MAX_BODY),
        // Until EOF; chunk framing may take a little more than the data.
        _ => MAX_BODY + MAX_HEAD,
    };
    while body.len() < want {
        if read_more(&mut stream, &mut body).await? == 0 {
            if length.is_some() && !chunked {
                return Err(invalid(format!(
                    "response body cut short at {} of {want} bytes",
                    body.len()
                )));
            }
            break;
        }
    }
    body.truncate(want);
    if chunked {
        body = dechunk(&body);
    }
    body.truncate(MAX_BODY);
    Ok(Response { status, body })
}

/// The code of `HTTP/1.1 200 OK`.
fn parse_status_line(line: &str) -> Option<u16> {
    let mut parts = line.split(' ');
    let version = parts.next()?;
    let code = parts.next()?;
    if !version.starts_with("HTTP/1.") || code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

/// The data of a chunked body, leniently: stops at the last chunk, or
/// where the data ends or stops making sense.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_field = String::from_utf8_lossy(&raw[..eol]);
        let size_hex = size_field.split(';').next().unwrap_or_default().trim();
        let Ok(size) = usize::from_str_radix(size_hex, 16) else {
            return out;
        };
        if size == 0 {
            return out;
        }
        raw = &raw[eol + 2..];
        let take = size.min(raw.len());
        out.extend_from_slice(&raw[..take]);
        raw = raw.get(take + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
#[path = "checks_tests.rs"]
mod tests;
