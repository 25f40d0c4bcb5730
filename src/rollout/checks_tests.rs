use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::*;
use crate::config::{Endpoint, Fleet, Protocol, fixtures};

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
        source: Default::default(),
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
        analysis: None,
        route: None,
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
    let results = run_checks(&svc, "green").await;
    assert_eq!(results.len(), 2, "{results:?}");
    for r in results {
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
async fn endpoints_without_checks_pass_with_no_results() {
    let (addr, _rx) = server(b"HTTP/1.1 200 OK\r\n\r\n").await;
    assert_eq!(run_checks(&service(vec![], &[addr]), "green").await, []);
}

#[tokio::test]
async fn an_empty_fleet_fails_with_or_without_checks() {
    for checks in [vec![], vec![("ready", check("/", None, SECOND))]] {
        let results = run_checks(&service(checks, &[]), "green").await;
        assert_eq!(
            results,
            [CheckResult {
                check: NO_ENDPOINTS.into(),
                endpoint: "(none)".into(),
                ok: false,
                detail: "fleet green has no endpoints: nothing can pass its checks".into(),
            }]
        );
    }
}

#[tokio::test]
async fn an_unknown_fleet_fails() {
    let (addr, _rx) = server(b"HTTP/1.1 200 OK\r\n\r\n").await;
    let svc = service(vec![("ready", check("/", None, SECOND))], &[addr]);
    let results = run_checks(&svc, "purple").await;
    assert_eq!(results.len(), 1, "{results:?}");
    assert!(!results[0].ok);
    assert_eq!(results[0].detail, "the service has no fleet purple");
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

/// A server running `answer` on each connection once it has read a
/// request's head.
async fn serve_with<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                if conn.read_buf(&mut req).await.unwrap_or(0) == 0 {
                    break;
                }
            }
            tokio::spawn(answer(conn));
        }
    });
    addr
}

/// Runs `svc`'s checks on green, failing the test (instead of hanging
/// it) if they take more than 10 s, and says how long they took.
async fn run_bounded(svc: &Service) -> (Vec<CheckResult>, Duration) {
    let start = Instant::now();
    let results = tokio::time::timeout(Duration::from_secs(10), run_checks(svc, "green"))
        .await
        .expect("checks end well before 10s");
    (results, start.elapsed())
}

#[tokio::test]
async fn headers_trickled_forever_time_out() {
    let addr = serve_with(|mut conn| async move {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\n").await;
        for i in 0u64.. {
            if conn
                .write_all(format!("X-{i}: y\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let timeout = Duration::from_millis(300);
    let svc = service(vec![("ready", check("/", None, timeout))], &[addr]);
    let (results, took) = run_bounded(&svc).await;
    assert_eq!(results.len(), 1);
    assert!(!results[0].ok);
    assert_eq!(results[0].detail, "timed out after 300ms");
    assert!(took < timeout * 10, "took {took:?}");
}

#[tokio::test]
async fn a_body_trickled_forever_times_out() {
    let addr = serve_with(|mut conn| async move {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let _ = conn.write_all(head).await;
        while conn.write_all(b"1\r\nx\r\n").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let timeout = Duration::from_millis(300);
    let svc = service(vec![("ready", check("/", Some("ready"), timeout))], &[addr]);
    let (results, took) = run_bounded(&svc).await;
    assert_eq!(results.len(), 1);
    assert!(!results[0].ok);
    assert_eq!(results[0].detail, "timed out after 300ms");
    assert!(took < timeout * 10, "took {took:?}");
}

/// A server streaming `x` without end, as fast as the check reads.
async fn endless_body_server() -> SocketAddr {
    serve_with(|mut conn| async move {
        let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let _ = conn.write_all(head).await;
        let chunk = [b"4000\r\n".as_slice(), &[b'x'; 0x4000], b"\r\n"].concat();
        while conn.write_all(&chunk).await.is_ok() {}
    })
    .await
}

#[tokio::test]
async fn an_endless_body_is_cut_at_the_bound() {
    let addr = endless_body_server().await;
    // A generous timeout: the check must end by reaching MAX_BODY, long
    // before it.
    let timeout = Duration::from_secs(8);
    let svc = service(
        vec![
            ("plain", check("/", None, timeout)),
            ("text", check("/", Some("ready"), timeout)),
        ],
        &[addr],
    );
    let (results, took) = run_bounded(&svc).await;
    assert_eq!(results.len(), 2, "{results:?}");
    assert!(results[0].ok, "{:?}", results[0]);
    assert!(!results[1].ok);
    assert!(
        results[1].detail.contains(&format!(
            "but the first {MAX_BODY} bytes of the body lack \"ready\""
        )),
        "{}",
        results[1].detail
    );
    assert!(took < timeout, "took {took:?}");
}

#[tokio::test]
async fn an_oversize_body_is_searched_only_within_the_bound() {
    /// `text` at byte `at` of a 2 MiB body with a Content-Length.
    async fn oversize(text: &'static str, at: usize) -> SocketAddr {
        serve_with(move |mut conn| async move {
            let len = 2 * MAX_BODY;
            let mut body = vec![b'x'; len];
            body[at..at + text.len()].copy_from_slice(text.as_bytes());
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n");
            let _ = conn.write_all(head.as_bytes()).await;
            let _ = conn.write_all(&body).await;
        })
        .await
    }
    let within = oversize("ready", MAX_BODY - 5).await;
    let past = oversize("ready", MAX_BODY - 4).await;
    let svc = service(
        vec![("ready", check("/", Some("ready"), Duration::from_secs(5)))],
        &[within, past],
    );
    let (results, _) = run_bounded(&svc).await;
    let by_endpoint = |a: SocketAddr| {
        results
            .iter()
            .find(|r| r.endpoint == a.to_string())
            .expect("a result per endpoint")
    };
    assert!(by_endpoint(within).ok, "{:?}", by_endpoint(within));
    let r = by_endpoint(past);
    assert!(!r.ok);
    assert!(
        r.detail
            .contains(&format!("the first {MAX_BODY} bytes of the body lack")),
        "{}",
        r.detail
    );
}

#[tokio::test]
async fn oversize_headers_fail() {
    let addr = serve_with(|mut conn| async move {
        let big = format!("X-Big: {}\r\n", "y".repeat(2 * MAX_HEAD));
        let head = format!("HTTP/1.1 200 OK\r\n{big}Content-Length: 0\r\n\r\n");
        let _ = conn.write_all(head.as_bytes()).await;
    })
    .await;
    let svc = service(vec![("ready", check("/", None, SECOND))], &[addr]);
    let (results, _) = run_bounded(&svc).await;
    assert_eq!(results.len(), 1);
    assert!(!results[0].ok);
    assert_eq!(results[0].detail, "response headers over 64 KiB");
}

#[tokio::test]
async fn an_http2_service_is_checked_over_http2() {
    use hyper::server::conn::http2 as server_http2;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, mut seen) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let tx = tx.clone();
            let svc = hyper::service::service_fn(move |req: http::Request<_>| {
                let _ = tx.send((req.version(), req.uri().to_string()));
                async {
                    Ok::<_, std::convert::Infallible>(http::Response::new(
                        http_body_util::Full::new(bytes::Bytes::from_static(b"h2 ready")),
                    ))
                }
            });
            tokio::spawn(
                server_http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(conn), svc),
            );
        }
    });
    let mut svc = service(
        vec![("ready", check("/healthz", Some("h2 ready"), SECOND))],
        &[addr],
    );
    svc.protocol = Protocol::Http2;
    let (results, _) = run_bounded(&svc).await;
    assert_eq!(results.len(), 1);
    assert!(results[0].ok, "{:?}", results[0]);
    let (version, uri) = seen.recv().await.expect("a request");
    assert_eq!(version, http::Version::HTTP_2);
    assert_eq!(uri, format!("http://{addr}/healthz"));

    // The same server, spoken to in HTTP/1.1, does not pass.
    svc.protocol = Protocol::Http1;
    let (results, _) = run_bounded(&svc).await;
    assert!(!results[0].ok, "{:?}", results[0]);
}

/// What replicas compare about checks: equal for equal checks, and moved
/// by any field of any check, by a check added, and by the protocol they
/// are sent in; configs without checks all agree.
#[test]
fn the_checks_digest_moves_with_every_field_of_every_check() {
    // `web` on blue alone; `checks` are its checks' lines (none if empty).
    let digest_of = |checks: &str, protocol: &str| {
        let mut config = fixtures::web()
            .without_fleet("web", "green")
            .protocol("web", protocol);
        if !checks.is_empty() {
            config = config.checks("web", checks);
        }
        digest(&config.config())
    };
    let check = |fields: &str| format!("home: {{{fields}}}");
    let base = digest_of(&check("path: /, status: 200, timeout: 1s"), "http1");
    assert_eq!(
        base,
        digest_of(&check("path: /, status: 200, timeout: 1s"), "http1")
    );
    for other in [
        check("path: /health, status: 200, timeout: 1s"),
        check("path: /, status: 204, timeout: 1s"),
        check("path: /, status: 200, timeout: 2s"),
        check("path: /, status: 200, timeout: 1s, body_contains: ok"),
        check("path: /, status: 200, timeout: 1s, body_contains: ''"),
        format!(
            "{}\ndeep: {{path: /deep}}",
            check("path: /, status: 200, timeout: 1s")
        ),
        String::new(),
    ] {
        assert_ne!(base, digest_of(&other, "http1"), "{other}");
    }
    assert_ne!(
        base,
        digest_of(&check("path: /, status: 200, timeout: 1s"), "http2")
    );
    assert_eq!(digest_of("", "http1"), digest_of("", "http2"));
}

/// An analysis moves the digest by each of its fields, with checks or
/// without; a config without one digests as it did before analyses.
#[test]
fn the_checks_digest_moves_with_the_analysis() {
    let digest_of = |analysis: Option<&str>| {
        let mut config = fixtures::web();
        if let Some(a) = analysis {
            config = config.analysis("web", a);
        }
        digest(&config.config())
    };
    let none = digest_of(None);
    // What a config with no checks and no analysis always digested to.
    assert_eq!(none, "e3b0c44298fc1c14");
    let base = digest_of(Some("max_error_ratio: 1%"));
    assert_ne!(base, none);
    assert_eq!(base, digest_of(Some("max_error_ratio: 1%\nwindow: 30s")));
    for other in [
        "max_error_ratio: 2%",
        "max_error_ratio_over_baseline: 1%",
        "max_error_ratio: 1%\nmax_error_ratio_over_baseline: 1%",
        "max_error_ratio: 1%\nmin_requests: 10",
        "max_error_ratio: 1%\nwindow: 31s",
        "max_error_ratio: 1%\ntoo_few_requests: pass",
    ] {
        assert_ne!(base, digest_of(Some(other)), "{other}");
    }
}
