use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use super::*;
use crate::config::{Endpoint, Fleet, Protocol};

/// A server answering every connection with `response`, reporting each
/// request it read.
async fn server(response: &'static [u8]) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    if conn.read_buf(&mut req).await.unwrap_or(0) == 0 {
                        return;
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&req).into_owned());
                let _ = conn.write_all(response).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (addr, rx)
}

/// A server that accepts connections and never answers.
async fn silent_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    addr
}

fn check(path: &str, body_contains: Option<&str>, timeout: Duration) -> Check {
    Check {
        path: path.into(),
        status: 200,
        body_contains: body_contains.map(Into::into),
        timeout,
    }
}

fn service(checks: Vec<(&str, Check)>, green: &[SocketAddr]) -> Service {
    let fleet = |addrs: &[SocketAddr]| Fleet {
        endpoints: addrs
            .iter()
            .map(|&address| Endpoint {
                address,
                weight: 1,
                zone: None,
            })
            .collect(),
    };
    Service {
        fleets: BTreeMap::from([
            (
                "blue".into(),
                fleet(&["127.0.0.1:1".parse().expect("addr")]),
            ),
            ("green".into(), fleet(green)),
        ]),
        live: "blue".into(),
        protocol: Protocol::Http1,
        connect_timeout: Duration::from_secs(1),
        timeout: None,
        retries: None,
        health_check: None,
        outlier_detection: None,
        checks: checks.into_iter().map(|(n, c)| (n.to_owned(), c)).collect(),
    }
}

const SECOND: Duration = Duration::from_secs(1);

#[tokio::test]
async fn passing_check_sends_a_plain_get() {
    let (addr, mut requests) =
        server(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nstatus=readyTRAILING").await;
    let svc = service(
        vec![("ready", check("/healthz", Some("ready"), SECOND))],
        &[addr],
    );
    let results = run_checks(&svc, "green").await;
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert!(r.ok, "{r:?}");
    assert_eq!(
        (r.check.as_str(), r.endpoint.clone()),
        ("ready", addr.to_string())
    );
    assert!(
        r.detail.starts_with("200 in ") && r.detail.ends_with("ms"),
        "{}",
        r.detail
    );
    let req = requests.recv().await.expect("a request");
    assert!(req.starts_with("GET /healthz HTTP/1.1\r\n"), "{req}");
    assert!(req.contains(&format!("\r\nHost: {addr}\r\n")), "{req}");
    assert!(req.contains("\r\nConnection: close\r\n"), "{req}");
}

#[tokio::test]
async fn wrong_status_fails() {
    let (addr, _rx) =
        server(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
    let svc = service(vec![("ready", check("/", None, SECOND))], &[addr]);
    let r = &run_checks(&svc, "green").await[0];
    assert!(!r.ok);
    assert!(
        r.detail.starts_with("expected 200, got 503"),
        "{}",
        r.detail
    );
}

#[tokio::test]
async fn missing_body_text_fails() {
    let (addr, _rx) = server(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nstarting").await;
    let svc = service(vec![("ready", check("/", Some("ready"), SECOND))], &[addr]);
    let r = &run_checks(&svc, "green").await[0];
    assert!(!r.ok);
    assert!(
        r.detail.contains("the body lacks \"ready\""),
        "{}",
        r.detail
    );
}

#[tokio::test]
async fn body_until_close_and_chunked_bodies_are_read() {
    let (plain, _rx1) = server(b"HTTP/1.0 200 OK\r\n\r\nall good, ready").await;
    let (chunked, _rx2) = server(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nrea\r\n2;x=y\r\ndy\r\n0\r\n\r\n",
    )
    .await;
    let svc = service(
        vec![("ready", check("/", Some("ready"), SECOND))],
        &[plain, chunked],
    );
    for r in run_checks(&svc, "green").await {
        assert!(r.ok, "{r:?}");
    }
}

#[tokio::test]
async fn server_that_never_answers_times_out() {
    let addr = silent_server().await;
    let timeout = Duration::from_millis(200);
    let svc = service(vec![("ready", check("/", None, timeout))], &[addr]);
    let r = &run_checks(&svc, "green").await[0];
    assert!(!r.ok);
    assert_eq!(r.detail, "timed out after 200ms");
    assert_eq!(human(Duration::from_secs(2)), "2s");
}

#[tokio::test]
async fn closed_port_is_connection_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let svc = service(vec![("ready", check("/", None, SECOND))], &[addr]);
    let r = &run_checks(&svc, "green").await[0];
    assert!(!r.ok);
    assert_eq!(r.detail, "connection refused");
}

#[tokio::test]
async fn garbage_response_fails() {
    let (addr, _rx) = server(b"SSH-2.0-OpenSSH\r\n\r\n").await;
    let svc = service(vec![("ready", check("/", None, SECOND))], &[addr]);
    let r = &run_checks(&svc, "green").await[0];
    assert!(!r.ok);
    assert!(r.detail.contains("bad status line"), "{}", r.detail);
}

#[tokio::test]
async fn no_checks_no_fleet_no_results() {
    let (addr, _rx) = server(b"HTTP/1.1 200 OK\r\n\r\n").await;
    assert!(
        run_checks(&service(vec![], &[addr]), "green")
            .await
            .is_empty()
    );
    let svc = service(vec![("ready", check("/", None, SECOND))], &[addr]);
    assert!(run_checks(&svc, "purple").await.is_empty());
}

#[tokio::test]
async fn every_pair_runs_at_once_and_results_are_sorted() {
    let (a, b) = (silent_server().await, silent_server().await);
    let timeout = Duration::from_millis(300);
    let svc = service(
        vec![
            ("z-last", check("/z", None, timeout)),
            ("a-first", check("/a", None, timeout)),
        ],
        &[b, a],
    );
    let start = Instant::now();
    let results = run_checks(&svc, "green").await;
    assert!(
        start.elapsed() < timeout * 3,
        "ran one after another: {:?}",
        start.elapsed()
    );
    let mut endpoints = [a.to_string(), b.to_string()];
    endpoints.sort();
    let got: Vec<_> = results
        .iter()
        .map(|r| (r.check.as_str(), r.endpoint.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("a-first", endpoints[0].as_str()),
            ("a-first", endpoints[1].as_str()),
            ("z-last", endpoints[0].as_str()),
            ("z-last", endpoints[1].as_str()),
        ]
    );
}
