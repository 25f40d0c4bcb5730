//! The fleets of the bundled example config (`examples/teal.yaml`), so
//! the README's walk-through moves real traffic:
//!
//! | service | fleet | address | speaks | answers |
//! | --- | --- | --- | --- | --- |
//! | web | blue | 127.0.0.1:8101 | HTTP/1.1 | `blue v1.4.2` in a small HTML page |
//! | web | green | 127.0.0.1:8102 | HTTP/1.1 | `green v1.5.0` in a small HTML page |
//! | api | blue | 127.0.0.1:8201 | HTTP/2 (cleartext) | `{"fleet":"blue","version":"v1.4.2","ok":true}` |
//! | api | green | 127.0.0.1:8202 | HTTP/2 (cleartext) | `{"fleet":"green","version":"v1.5.0","ok":true}` |
//!
//! Every path answers 200 (so the config's checks pass: web's `/` has
//! `<html`, its `/healthz` is 200, api's `/v1/status` has `"ok"`), except
//! while a fleet is told to fail: `--fail green` makes green's answers 503,
//! to see a check refuse a flip.
//!
//! ```sh
//! cargo run --release --example fleets              # until Ctrl-C
//! cargo run --release --example fleets -- --fail green
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// One upstream of the example config.
struct Fleet {
    service: &'static str,
    fleet: &'static str,
    version: &'static str,
    port: u16,
    http2: bool,
}

const FLEETS: [Fleet; 4] = [
    Fleet {
        service: "web",
        fleet: "blue",
        version: "v1.4.2",
        port: 8101,
        http2: false,
    },
    Fleet {
        service: "web",
        fleet: "green",
        version: "v1.5.0",
        port: 8102,
        http2: false,
    },
    Fleet {
        service: "api",
        fleet: "blue",
        version: "v1.4.2",
        port: 8201,
        http2: true,
    },
    Fleet {
        service: "api",
        fleet: "green",
        version: "v1.5.0",
        port: 8202,
        http2: true,
    },
];

/// What one fleet answers, fixed at start.
struct Answer {
    status: StatusCode,
    content_type: &'static str,
    body: Bytes,
}

impl Answer {
    fn of(f: &Fleet, failing: bool) -> Answer {
        let status = if failing {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let (content_type, body) = if f.service == "web" {
            (
                "text/html; charset=utf-8",
                format!("<html><body>{} {}</body></html>\n", f.fleet, f.version),
            )
        } else {
            (
                "application/json",
                format!(
                    "{{\"fleet\":\"{}\",\"version\":\"{}\",\"ok\":{}}}\n",
                    f.fleet, f.version, !failing
                ),
            )
        };
        Answer {
            status,
            content_type,
            body: Bytes::from(body),
        }
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let mut r = Response::new(Full::new(self.body.clone()));
        *r.status_mut() = self.status;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            hyper::header::HeaderValue::from_static(self.content_type),
        );
        r
    }
}

#[tokio::main]
async fn main() {
    let failing: Vec<String> = std::env::args()
        .skip(1)
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "--fail")
        .map(|w| w[1].clone())
        .collect();
    if std::env::args().any(|a| a == "-h" || a == "--help") {
        println!(
            "usage: fleets [--fail FLEET]...\n\nServes the fleets of examples/teal.yaml on 127.0.0.1 \
             (web: 8101 blue, 8102 green; api over HTTP/2: 8201 blue, 8202 green) until Ctrl-C.\n\
             --fail FLEET  that fleet answers 503 (its checks fail)"
        );
        return;
    }
    let mut tasks = tokio::task::JoinSet::new();
    for f in &FLEETS {
        let addr = SocketAddr::from(([127, 0, 0, 1], f.port));
        let listener = match TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("fleets: cannot listen on {addr}: {e}");
                std::process::exit(69);
            }
        };
        let answer = Arc::new(Answer::of(f, failing.iter().any(|x| x == f.fleet)));
        let http2 = f.http2;
        println!(
            "{} {} {} on http://{addr}{}",
            f.service,
            f.fleet,
            f.version,
            if http2 { " (HTTP/2)" } else { "" }
        );
        tasks.spawn(serve(listener, answer, http2));
    }
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = tasks.join_next() => eprintln!("fleets: a listener stopped"),
    }
}

/// Answers every request on `listener` with `answer`.
async fn serve(listener: TcpListener, answer: Arc<Answer>, http2: bool) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let answer = answer.clone();
        tokio::spawn(async move {
            let io = TokioIo::new(stream);
            let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
                let answer = answer.clone();
                async move { Ok::<_, Infallible>(answer.response()) }
            });
            // A connection that fails (a client that goes away) ends here.
            let _ = if http2 {
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, service)
                    .await
            } else {
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, service)
                    .await
            };
        });
    }
}
