//! Dashboards for the benchmarks: readers of teal's event stream
//! (`GET /v1/events`) as a browser's `EventSource` reads it, and stuck ones
//! that ask for it and never read.
//!
//! A reader parses the stream's events and notes, for one service, when it
//! first saw each change's outcome in a `status` event, so a benchmark can
//! say how long after the command every dashboard showed the flip's end.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

/// What every reader saw, shared with the benchmark.
#[derive(Default)]
pub(crate) struct Seen {
    /// Per change id of the watched service: when each reader first saw
    /// it with an outcome.
    outcomes: Mutex<HashMap<u64, Vec<Instant>>>,
    /// Bytes read by all readers.
    pub(crate) bytes: AtomicU64,
    /// `status` events read by all readers.
    pub(crate) status_events: AtomicU64,
    /// `proxies` events read by all readers.
    pub(crate) proxies_events: AtomicU64,
    /// Readers whose stream ended or failed.
    pub(crate) ended: AtomicU64,
}

impl Seen {
    /// When each reader first saw change `id` with its outcome, sorted.
    pub(crate) fn outcome_seen(&self, id: u64) -> Vec<Instant> {
        let mut at = self
            .outcomes
            .lock()
            .map(|o| o.get(&id).cloned().unwrap_or_default())
            .unwrap_or_default();
        at.sort();
        at
    }
}

/// Opens `n` readers of `admin`'s event stream watching `service`; returns
/// once every one had its `hello`.
pub(crate) async fn open(
    admin: SocketAddr,
    service: &str,
    n: usize,
    seen: Arc<Seen>,
) -> anyhow::Result<()> {
    let (ready_tx, mut ready) = tokio::sync::mpsc::channel(n.max(1));
    for i in 0..n {
        let (seen, ready_tx, service) = (seen.clone(), ready_tx.clone(), service.to_owned());
        tokio::spawn(async move {
            if let Err(e) = read(admin, &service, seen.clone(), ready_tx).await {
                eprintln!("dashboard {i}: {e}");
            }
            seen.ended.fetch_add(1, Ordering::Relaxed);
        });
    }
    drop(ready_tx);
    for got in 0..n {
        tokio::time::timeout(Duration::from_secs(30), ready.recv())
            .await
            .map_err(|_| anyhow::anyhow!("only {got} of {n} dashboards connected within 30 s"))?
            .ok_or_else(|| anyhow::anyhow!("only {got} of {n} dashboards connected"))?;
    }
    Ok(())
}

/// One reader: an HTTP/1.1 connection of its own, as each browser tab has.
async fn read(
    admin: SocketAddr,
    service: &str,
    seen: Arc<Seen>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<()> {
    let tcp = tokio::net::TcpStream::connect(admin).await?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let request = hyper::Request::get("/v1/events")
        .header("host", admin.to_string())
        .header("accept", "text/event-stream")
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = send.send_request(request).await?;
    anyhow::ensure!(
        response.status() == hyper::StatusCode::OK,
        "GET /v1/events: {}",
        response.status()
    );
    let mut body = response.into_body();
    let mut pending = Vec::new();
    let mut event = String::new();
    let mut last_seen: Option<u64> = None;
    let mut ready = Some(ready);
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else {
            continue;
        };
        seen.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        pending.extend_from_slice(&data);
        // An event's lines may arrive split across frames: take whole lines.
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_owned();
            } else if let Some(data) = line.strip_prefix("data:") {
                match event.as_str() {
                    "hello" => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(()).await;
                        }
                    }
                    "status" => {
                        seen.status_events.fetch_add(1, Ordering::Relaxed);
                        if let Some(id) = finished_change(data, service)
                            && last_seen != Some(id)
                        {
                            last_seen = Some(id);
                            if let Ok(mut o) = seen.outcomes.lock() {
                                o.entry(id).or_default().push(Instant::now());
                            }
                        }
                    }
                    "proxies" => {
                        seen.proxies_events.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            } else if line.is_empty() {
                event.clear();
            }
        }
    }
    Ok(())
}

/// The id of `service`'s last change in a `status` event, if it has an
/// outcome.
fn finished_change(data: &str, service: &str) -> Option<u64> {
    let status: serde_json::Value = serde_json::from_str(data.trim()).ok()?;
    let svc = status["services"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == service)?;
    let change = &svc["last_change"];
    change["outcome"].as_str()?;
    change["id"].as_u64()
}

/// Opens `n` connections that ask for the event stream and never read a
/// byte, with a small receive buffer: a stuck browser tab. They stay open
/// until the returned sockets are dropped.
pub(crate) async fn stuck(
    admin: SocketAddr,
    n: usize,
) -> anyhow::Result<Vec<tokio::net::TcpStream>> {
    use tokio::io::AsyncWriteExt;
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        let mut tcp = socket.connect(admin).await?;
        tcp.write_all(
            format!(
                "GET /v1/events HTTP/1.1\r\nhost: {admin}\r\naccept: text/event-stream\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
        held.push(tcp);
    }
    Ok(held)
}
