//! TLS and mTLS on both ports, through the real binary, the real CLI and
//! real Envoys; certificates are made by the test (`support::pki`).
//!
//! - the CLI over TLS and mTLS; `https://` against a plaintext server is
//!   exit 69 and sends it nothing but a TLS hello;
//! - Envoys over mTLS (`envoy/edge-mtls.yaml`): one allowed into its group
//!   gets the config and a flip confirms on it; one whose certificate
//!   names another group is refused and the flip does not wait for it; one
//!   without a client certificate cannot connect;
//! - rotation: a new server certificate while Envoys stay connected, their
//!   streams stay up, a new Envoy connects, and a broken file is refused;
//! - a tokens file open to others is refused, and SIGHUP revokes a token.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::envoy::service::status::v3::ClientStatusRequest;
use envoy_types::pb::envoy::service::status::v3::client_status_discovery_service_client::ClientStatusDiscoveryServiceClient;
use serde_json::Value;
use tokio::process::{Child, Command};

use crate::support::pki::{Pair, Pki, served_certificate};
use crate::support::{CONVERGE, Envoy, free_port, show, teal_binary, wait_until, write_atomically};

const TOKEN: &str = "s3cret-token";

/// `teal serve` as a child, its stderr in a file; killed when dropped.
struct Serve {
    child: Child,
    log: PathBuf,
    xds: u16,
    admin: u16,
}

impl Serve {
    fn spawn(dir: &Path, config: &str, extra: &[String]) -> Serve {
        Serve::spawn_with(dir, config, extra, false)
    }

    /// [`Serve::spawn`] as a user would run it on their machine: state in
    /// `dir/state`, no token at all (so the local token is made).
    fn spawn_local(dir: &Path, config: &str, extra: &[String]) -> Serve {
        Serve::spawn_with(dir, config, extra, true)
    }

    fn spawn_with(dir: &Path, config: &str, extra: &[String], local: bool) -> Serve {
        let (xds, admin) = (free_port(), free_port());
        let path = dir.join("teal.yaml");
        std::fs::write(&path, config).expect("write config");
        let log = dir.join(format!("teal-{xds}.log"));
        let stderr = std::fs::File::create(&log).expect("log");
        let mut command = Command::new(teal_binary());
        command
            .arg("serve")
            .arg("--config")
            .arg(&path)
            .args(["--xds-addr", &format!("127.0.0.1:{xds}")]);
        if !extra.iter().any(|a| a == "--admin-addr") {
            command.args(["--admin-addr", &format!("127.0.0.1:{admin}")]);
        }
        if local {
            command
                .arg("--state-dir")
                .arg(dir.join("state"))
                .env_remove("TEAL_ADMIN_TOKEN");
        } else {
            command.arg("--ephemeral").env("TEAL_ADMIN_TOKEN", TOKEN);
        }
        let child = command
            .args(["--watch-interval", "0.2", "--drain", "0.2"])
            .args(extra)
            .env_remove("TEAL_ADMIN_TOKENS")
            .env("TEAL_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn teal serve");
        Serve {
            child,
            log,
            xds,
            admin,
        }
    }

    /// Starts teal and waits until both ports listen.
    async fn start(dir: &Path, config: &str, extra: &[String]) -> Serve {
        Serve::wait_started(Serve::spawn(dir, config, extra)).await
    }

    /// [`Serve::start`] of [`Serve::spawn_local`].
    async fn start_local(dir: &Path, config: &str, extra: &[String]) -> Serve {
        Serve::wait_started(Serve::spawn_local(dir, config, extra)).await
    }

    /// How it exited at start, and its log; it must exit within
    /// [`CONVERGE`].
    async fn exit_at_start(mut self) -> (Option<i32>, String) {
        let status = tokio::time::timeout(CONVERGE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("teal serve kept running:\n{}", self.log()))
            .expect("wait");
        (status.code(), self.log())
    }

    async fn wait_started(mut teal: Serve) -> Serve {
        let deadline = Instant::now() + CONVERGE;
        while teal.log().matches("listening").count() < 2 {
            if let Ok(Some(status)) = teal.child.try_wait() {
                panic!("teal serve exited at start ({status}):\n{}", teal.log());
            }
            assert!(
                Instant::now() < deadline,
                "teal did not start:\n{}",
                teal.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        teal
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn wait_log(&self, what: &str, count: usize) {
        wait_until(CONVERGE, what, || async {
            self.log().matches(what).count() >= count
        })
        .await;
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- log of teal serve ----\n{}", self.log());
        }
        let _ = self.child.start_kill();
    }
}

/// Runs the CLI with `args`, no TEAL_* variables from outside.
async fn cli(args: &[&str]) -> Output {
    cli_env(args, &[]).await
}

/// [`cli`] with these environment variables.
async fn cli_env(args: &[&str], env: &[(&str, &Path)]) -> Output {
    Command::new(teal_binary())
        .args(args)
        .env_remove("TEAL_ADMIN")
        .env_remove("TEAL_TOKEN")
        .env_remove("TEAL_CA")
        .env_remove("TEAL_CERT")
        .env_remove("TEAL_KEY")
        .env_remove("TEAL_STATE_DIR")
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run teal")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A config with service `web` (fleets blue and green on ports nobody
/// listens on: no checks, so flips need only the proxies) and group
/// `edge`, admitting `identities` when given.
fn config(edge_port: u16, identities: Option<&str>) -> String {
    let (blue, green) = (free_port(), free_port());
    let identities = identities
        .map(|i| format!("    identities: [{i}]\n"))
        .unwrap_or_default();
    format!(
        "services:
  web:
    live: blue
    fleets:
      blue:
        endpoints: [127.0.0.1:{blue}]
      green:
        endpoints: [127.0.0.1:{green}]
groups:
  edge:
{identities}    listeners:
      public:
        kind: edge
        address: 127.0.0.1:{edge_port}
        virtual_hosts:
          site:
            domains: ['*']
            routes:
              - prefix: /
                service: web
"
    )
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_tls_and_mtls_and_never_falls_back() {
    let pki = Pki::new("admin");
    let server = pki.server("server");
    let client = pki.dns("cli", &["operator.teal.internal"]);
    let dir = tempfile::tempdir().expect("tempdir");
    let teal = Serve::start(
        dir.path(),
        &config(free_port(), None),
        &[
            "--admin-tls-cert".into(),
            path(&server.cert),
            "--admin-tls-key".into(),
            path(&server.key),
            "--admin-client-ca".into(),
            path(&pki.ca),
        ],
    )
    .await;
    let https = format!("https://127.0.0.1:{}", teal.admin);
    let (ca, cert, key) = (path(&pki.ca), path(&client.cert), path(&client.key));

    // mTLS: the CA and a client certificate.
    let out = cli(&[
        "--admin", &https, "--ca", &ca, "--cert", &cert, "--key", &key, "status",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    // The same from the environment.
    let out = Command::new(teal_binary())
        .args(["--admin", &https, "proxies"])
        .env("TEAL_CA", &ca)
        .env("TEAL_CERT", &cert)
        .env("TEAL_KEY", &key)
        .output()
        .await
        .expect("run teal");
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));

    // No client certificate: the server refuses the handshake.
    let out = cli(&["--admin", &https, "--ca", &ca, "status"]).await;
    assert_eq!(out.status.code(), Some(69), "{}", show(&out));
    assert!(
        stderr(&out).contains("client certificate"),
        "{}",
        show(&out)
    );
    // No CA: the test CA is not one of the system's.
    let out = cli(&["--admin", &https, "--cert", &cert, "--key", &key, "status"]).await;
    assert_eq!(out.status.code(), Some(69), "{}", show(&out));
    assert!(stderr(&out).contains("TLS"), "{}", show(&out));
    // TLS files with a plaintext address: refused, not ignored.
    let plain = format!("127.0.0.1:{}", teal.admin);
    let out = cli(&["--admin", &plain, "--ca", &ca, "status"]).await;
    assert_eq!(out.status.code(), Some(64), "{}", show(&out));
    // A client certificate from another CA is refused.
    let strangers = Pki::new("stranger");
    let stranger = strangers.dns("cli", &["operator.teal.internal"]);
    let out = cli(&[
        "--admin",
        &https,
        "--ca",
        &ca,
        "--cert",
        &path(&stranger.cert),
        "--key",
        &path(&stranger.key),
        "status",
    ])
    .await;
    assert_eq!(out.status.code(), Some(69), "{}", show(&out));

    // The port presents the configured certificate.
    let served = served_certificate(teal.admin, &pki.ca, Some(&client)).await;
    assert_eq!(served, server.der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_against_a_plaintext_server_is_exit_69_and_sends_no_token() {
    // A plaintext server that records what it is sent and answers as an
    // HTTP server would.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let received = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut buf = vec![0u8; 4096];
        let n = conn.read(&mut buf).unwrap_or(0);
        use std::io::Write;
        let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\n\r\n");
        buf.truncate(n);
        buf
    });
    let pki = Pki::new("plain");
    let out = cli(&[
        "--admin",
        &format!("https://127.0.0.1:{port}"),
        "--ca",
        &path(&pki.ca),
        "--token",
        TOKEN,
        "flip",
        "web",
    ])
    .await;
    assert_eq!(out.status.code(), Some(69), "{}", show(&out));
    assert!(
        stderr(&out).contains("does not speak TLS"),
        "{}",
        show(&out)
    );
    let bytes = received.join().expect("server thread");
    assert_eq!(bytes.first(), Some(&0x16), "a TLS handshake record first");
    assert!(
        !bytes.windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()),
        "the token was sent"
    );

    // And against teal's own plaintext admin port.
    let dir = tempfile::tempdir().expect("tempdir");
    let teal = Serve::start(dir.path(), &config(free_port(), None), &[]).await;
    let out = cli(&[
        "--admin",
        &format!("https://127.0.0.1:{}", teal.admin),
        "--ca",
        &path(&pki.ca),
        "status",
    ])
    .await;
    assert_eq!(out.status.code(), Some(69), "{}", show(&out));
    assert!(
        stderr(&out).contains("does not speak TLS"),
        "{}",
        show(&out)
    );
}

/// The first bytes a TLS client sends: a real ClientHello, from rustls.
fn client_hello() -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("localhost").expect("name");
    let mut conn =
        rustls::ClientConnection::new(std::sync::Arc::new(config), name).expect("client");
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).expect("hello");
    hello
}

/// A client that opens a connection to `port` and sends `bytes` one a
/// second; how long until the server closed it (`None`: not within 60 s).
async fn dribble(port: u16, bytes: Vec<u8>) -> Option<Duration> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let (mut rd, mut wr) = conn.split();
    let mut buf = [0u8; 4096];
    let closed = async {
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let send = async {
        for b in bytes.iter().cycle() {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = closed => Some(started.elapsed()),
        () = send => None,
        () = tokio::time::sleep(Duration::from_secs(60)) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_handshakes_are_closed_in_time_and_never_lock_the_cli_out() {
    let pki = Pki::new("slow");
    let server = pki.server("server");
    let dir = tempfile::tempdir().expect("tempdir");
    let teal = Serve::start(
        dir.path(),
        &config(free_port(), None),
        &[
            "--admin-tls-cert".into(),
            path(&server.cert),
            "--admin-tls-key".into(),
            path(&server.key),
            "--max-admin-connections".into(),
            "8".into(),
            "--handshake-timeout".into(),
            "3".into(),
        ],
    )
    .await;
    // Eight TLS hellos a byte a second fill the admin port; an HTTP/2
    // preface a byte a second on the (plaintext) xDS port.
    let hello = client_hello();
    let mut slow: Vec<_> = (0..8)
        .map(|_| tokio::spawn(dribble(teal.admin, hello.clone())))
        .collect();
    slow.push(tokio::spawn(dribble(
        teal.xds,
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
    )));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The CLI gets in while they dribble, more than once.
    let https = format!("https://127.0.0.1:{}", teal.admin);
    let ca = path(&pki.ca);
    for _ in 0..3 {
        let out = cli(&["--admin", &https, "--ca", &ca, "status"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Each dribbler is closed within the handshake timeout, plus slack
    // (or sooner, when the CLI took its place).
    for (i, s) in slow.into_iter().enumerate() {
        let took = s.await.expect("dribbler");
        assert!(
            took.is_some_and(|t| t < Duration::from_secs(6)),
            "slow client {i} closed after {took:?}"
        );
    }
    assert!(
        teal.log().contains("connection limit"),
        "the eviction is logged: {}",
        teal.log()
    );

    // A server that reads the hello and closes without a word (as a full
    // or timing-out TLS port does): the CLI says so, not "not TLS".
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let closer = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 4096];
        let _ = conn.read(&mut buf);
    });
    let out = cli(&[
        "--admin",
        &format!("https://127.0.0.1:{port}"),
        "--ca",
        &ca,
        "status",
    ])
    .await;
    closer.join().expect("closer");
    assert_eq!(out.status.code(), Some(69), "{}", show(&out));
    assert!(stderr(&out).contains("timed out"), "{}", show(&out));
    assert!(
        !stderr(&out).contains("does not speak TLS"),
        "{}",
        show(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_refuses_an_open_admin_port_and_an_open_tokens_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(free_port(), None);
    let mut teal = Serve::spawn(
        dir.path(),
        &cfg,
        &["--admin-addr".into(), "0.0.0.0:0".into()],
    );
    let status = tokio::time::timeout(CONVERGE, teal.child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(status.code(), Some(64), "{}", teal.log());
    assert!(teal.log().contains("--admin-insecure"), "{}", teal.log());

    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "ops:abc\n").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut teal = Serve::spawn(dir.path(), &cfg, &["--admin-tokens".into(), path(&tokens)]);
    let status = tokio::time::timeout(CONVERGE, teal.child.wait())
        .await
        .expect("exits")
        .expect("wait");
    assert_eq!(status.code(), Some(65), "{}", teal.log());
    assert!(teal.log().contains("chmod 600"), "{}", teal.log());
}

/// `envoy/edge-mtls.yaml` for node `node_id`, xDS on `xds_port`, with the
/// client certificate `client` (or none: its `tls_certificates` removed).
fn mtls_bootstrap(node_id: &str, xds_port: u16, pki: &Pki, client: Option<&Pair>) -> String {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("envoy/edge-mtls.yaml");
    let mut yaml = std::fs::read_to_string(&file).expect("read envoy/edge-mtls.yaml");
    let cert_block = "            tls_certificates:\n              - certificate_chain: { filename: /etc/teal/tls/edge.crt }\n                private_key: { filename: /etc/teal/tls/edge.key }\n";
    assert_eq!(yaml.matches(cert_block).count(), 1, "{yaml}");
    yaml = match client {
        Some(pair) => yaml
            .replace(
                "filename: /etc/teal/tls/edge.crt",
                &format!("filename: {}", path(&pair.cert)),
            )
            .replace(
                "filename: /etc/teal/tls/edge.key",
                &format!("filename: {}", path(&pair.key)),
            ),
        None => yaml.replace(cert_block, ""),
    };
    let replacements = [
        (
            "filename: /etc/teal/tls/ca.crt",
            format!("filename: {}", path(&pki.ca)),
        ),
        ("id: edge-1\n", format!("id: {node_id}\n")),
        ("port_value: 9901", "port_value: 0".to_owned()),
        ("port_value: 18000", format!("port_value: {xds_port}")),
    ];
    for (from, to) in replacements {
        assert_eq!(yaml.matches(from).count(), 1, "{from:?} in {yaml}");
        yaml = yaml.replace(from, &to);
    }
    yaml
}

async fn proxies(teal: &Serve) -> Vec<Value> {
    let out = cli(&[
        "--admin",
        &format!("127.0.0.1:{}", teal.admin),
        "proxies",
        "-o",
        "json",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    v["proxies"].as_array().cloned().unwrap_or_default()
}

fn find<'a>(proxies: &'a [Value], node: &str) -> Option<&'a Value> {
    proxies.iter().find(|p| p["node_id"] == node)
}

fn synced(p: &Value) -> bool {
    ["CDS", "EDS", "LDS", "RDS"]
        .iter()
        .all(|t| p["types"][t]["state"] == "SYNCED")
}

async fn wait_synced(teal: &Serve, node: &str) -> Value {
    let deadline = Instant::now() + CONVERGE;
    loop {
        let all = proxies(teal).await;
        if let Some(p) = find(&all, node).filter(|p| synced(p)) {
            return p.clone();
        }
        assert!(Instant::now() < deadline, "{node} never synced: {all:#?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The config of [`config`] with several groups, each admitting its
/// `identities` when given (a YAML list's items).
fn groups_config(groups: &[(&str, Option<&str>)]) -> String {
    let mut yaml = config(free_port(), None);
    let at = yaml.find("groups:\n").expect("groups") + "groups:\n".len();
    yaml.truncate(at);
    for (name, identities) in groups {
        let identities = identities
            .map(|i| format!("    identities: [{i}]\n"))
            .unwrap_or_default();
        yaml.push_str(&format!(
            "  {name}:
{identities}    listeners:
      public:
        kind: edge
        address: 127.0.0.1:{port}
        virtual_hosts:
          site:
            domains: ['*']
            routes:
              - prefix: /
                service: web
",
            port = free_port()
        ));
    }
    yaml
}

/// `teal serve`'s flags for TLS with client certificates on the xDS port.
fn xds_mtls_args(pki: &Pki, server: &Pair) -> Vec<String> {
    vec![
        "--xds-tls-cert".into(),
        path(&server.cert),
        "--xds-tls-key".into(),
        path(&server.key),
        "--xds-client-ca".into(),
        path(&pki.ca),
    ]
}

/// A gRPC channel to teal's xDS port over TLS, presenting `client`.
async fn xds_channel(port: u16, pki: &Pki, client: &Pair) -> tonic::transport::Channel {
    let tls = teal::transport::tls::client_config(Some(&pki.ca), Some((&client.cert, &client.key)))
        .expect("client TLS");
    tonic::transport::Endpoint::from_shared(format!("https://127.0.0.1:{port}"))
        .expect("uri")
        .connect_with_connector(teal::transport::tls::TlsConnector::new(tls))
        .await
        .expect("connect to the xDS port")
}

/// An ADS stream over TLS as `client`, claiming node `id` in `group`: its
/// first answer, and the stream (to keep it open, or read it further).
async fn ads_as(
    port: u16,
    pki: &Pki,
    client: &Pair,
    id: &str,
    group: &str,
) -> (
    Result<DiscoveryResponse, tonic::Status>,
    tonic::Streaming<DiscoveryResponse>,
    tokio::sync::mpsc::Sender<DiscoveryRequest>,
) {
    let mut ads = AggregatedDiscoveryServiceClient::new(xds_channel(port, pki, client).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: id.into(),
            cluster: group.into(),
            ..Default::default()
        }),
        type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
        ..Default::default()
    })
    .await
    .expect("queue the request");
    let mut stream = ads
        .stream_aggregated_resources(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("open the ADS stream")
        .into_inner();
    let first = tokio::time::timeout(CONVERGE, stream.message())
        .await
        .expect("an answer in time")
        .and_then(|m| m.ok_or_else(|| tonic::Status::unknown("the stream ended")));
    (first, stream, tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_san_joins_only_groups_whose_patterns_are_of_its_own_kind() {
    let pki = Pki::new("kinds");
    let server = pki.server("server");
    let dir = tempfile::tempdir().expect("tempdir");
    let teal = Serve::start(
        dir.path(),
        &groups_config(&[
            ("edge", Some("'spiffe://test.example/ns/prod/edge/*'")),
            ("sidecar", Some("'*.edge.example'")),
            ("open", None),
        ]),
        &xds_mtls_args(&pki, &server),
    )
    .await;
    let denied = |r: &Result<DiscoveryResponse, tonic::Status>, what: &str| match r {
        Err(s) if s.code() == tonic::Code::PermissionDenied => {}
        other => panic!("{what}: expected PERMISSION_DENIED, got {other:?}"),
    };

    // A DNS SAN spelling a SPIFFE ID does not join the SPIFFE group.
    let forged = pki.dns("forged", &["spiffe://test.example/ns/prod/edge/edge-1"]);
    let (r, _, _) = ads_as(teal.xds, &pki, &forged, "forged", "edge").await;
    denied(&r, "a DNS SAN spiffe://");
    // A SPIFFE ID whose last segment looks like a host does not join the
    // DNS group.
    let uri = pki.spiffe("uri", "spiffe://prod/ns/tenant/sa/a.edge.example");
    let (r, _, _) = ads_as(teal.xds, &pki, &uri, "uri", "sidecar").await;
    denied(&r, "a URI SAN ending in a.edge.example");
    // URI SANs that are not SPIFFE IDs (though `*` matches their text)
    // are no identity at all.
    for (i, bad) in [
        "spiffe://test.example/ns/prod/edge/..",
        "spiffe://test.example/ns/prod/edge/edge-1?as=admin",
        "spiffe://test.example/ns/prod/edge/edge%2F1",
    ]
    .into_iter()
    .enumerate()
    {
        let cert = pki.spiffe(&format!("bad-{i}"), bad);
        let (r, _, _) = ads_as(teal.xds, &pki, &cert, &format!("bad-{i}"), "edge").await;
        denied(&r, bad);
    }

    // The real ones join.
    let real = pki.spiffe("real", "spiffe://test.example/ns/prod/edge/edge-1");
    let (r, _keep_edge, _tx_edge) = ads_as(teal.xds, &pki, &real, "real-edge", "edge").await;
    r.expect("a SPIFFE ID joins the SPIFFE group");
    let host = pki.dns("host", &["a.edge.example"]);
    let (r, _keep_side, _tx_side) = ads_as(teal.xds, &pki, &host, "real-side", "sidecar").await;
    r.expect("a DNS name joins the DNS group");
    // The forged certificate in a group open to anyone: `teal proxies`
    // does not show its DNS SAN as if it were a SPIFFE ID.
    let (r, _keep_open, _tx_open) = ads_as(teal.xds, &pki, &forged, "forged-open", "open").await;
    r.expect("an open group admits anyone");
    let all = proxies(&teal).await;
    let identity = |node: &str| {
        find(&all, node).unwrap_or_else(|| panic!("{node} listed: {all:#?}"))["identity"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(
        identity("real-edge"),
        "spiffe://test.example/ns/prod/edge/edge-1"
    );
    assert_eq!(identity("real-side"), "a.edge.example");
    assert_eq!(identity("forged-open"), "(no SAN)");
    for refused in ["forged", "uri", "bad-0", "bad-1", "bad-2"] {
        assert!(find(&all, refused).is_none(), "{refused}: {all:#?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_revokes_an_identity_closes_its_admitted_streams() {
    let pki = Pki::new("revoke");
    let server = pki.server("server");
    let dir = tempfile::tempdir().expect("tempdir");
    let before = "'spiffe://test.example/ns/prod/edge/*'";
    let yaml = groups_config(&[("edge", Some(before))]);
    // A proxy that leaves on its own counts as reconnecting for the whole
    // test; one whose identity is revoked must not count at all.
    let mut args = xds_mtls_args(&pki, &server);
    args.extend(["--proxy-reconnect-hold".to_owned(), "1h".to_owned()]);
    let teal = Serve::start(dir.path(), &yaml, &args).await;
    let revoked = pki.spiffe("revoked", "spiffe://test.example/ns/prod/edge/old");
    let kept = pki.spiffe("kept", "spiffe://test.example/ns/prod/edge/kept");
    let (r, mut revoked_stream, _tx_revoked) =
        ads_as(teal.xds, &pki, &revoked, "edge-old", "edge").await;
    r.expect("admitted under the first config");
    let (r, mut kept_stream, tx_kept) = ads_as(teal.xds, &pki, &kept, "edge-kept", "edge").await;
    r.expect("admitted under the first config");

    // The reload admits only the kept identity.
    let reloads = teal.log().matches("config reloaded").count();
    write_atomically(
        &dir.path().join("teal.yaml"),
        &yaml.replace(before, "'spiffe://test.example/ns/prod/edge/kept'"),
    );
    teal.wait_log("config reloaded", reloads + 1).await;
    let closed = tokio::time::timeout(CONVERGE, async {
        loop {
            match revoked_stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("the revoked stream is closed in time");
    match closed {
        Err(s) if s.code() == tonic::Code::PermissionDenied => {}
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
    teal.wait_log("no longer lets its identity join", 1).await;
    // The stream still admitted stays.
    let quiet = tokio::time::timeout(Duration::from_secs(1), kept_stream.message()).await;
    assert!(
        !matches!(quiet, Ok(Err(_)) | Ok(Ok(None))),
        "the kept stream ended: {quiet:?}"
    );
    let all = proxies(&teal).await;
    assert!(find(&all, "edge-old").is_none(), "{all:#?}");
    assert!(find(&all, "edge-kept").is_some(), "{all:#?}");
    drop((kept_stream, tx_kept));
    wait_until(CONVERGE, "edge-kept gone", || async {
        find(&proxies(&teal).await, "edge-kept").is_none()
    })
    .await;

    // A flip waits for the proxy that left on its own (it may be
    // reconnecting), never for the revoked one, which teal turned away.
    let admin = format!("127.0.0.1:{}", teal.admin);
    let out = cli(&[
        "--admin",
        &admin,
        "--token",
        TOKEN,
        "flip",
        "web",
        "--timeout",
        "2s",
    ])
    .await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
    assert!(
        err.contains("not every proxy holds the current configuration yet (edge-kept)"),
        "{}",
        show(&out)
    );
    assert!(!err.contains("edge-old"), "{}", show(&out));
}

/// The node ids a CSDS `FetchClientStatus` on the xDS port shows `client`.
async fn csds_ids(port: u16, pki: &Pki, client: &Pair) -> Vec<String> {
    let mut csds = ClientStatusDiscoveryServiceClient::new(xds_channel(port, pki, client).await);
    let answer = csds
        .fetch_client_status(ClientStatusRequest::default())
        .await
        .expect("CSDS answers")
        .into_inner();
    answer
        .config
        .iter()
        .filter_map(|c| c.node.as_ref().map(|n| n.id.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csds_on_the_xds_port_shows_only_the_groups_the_identity_may_join() {
    let pki = Pki::new("csds");
    let server = pki.server("server");
    let dir = tempfile::tempdir().expect("tempdir");
    let teal = Serve::start(
        dir.path(),
        &groups_config(&[
            ("edge", Some("'spiffe://test.example/ns/prod/edge/*'")),
            ("sidecar", Some("'spiffe://test.example/ns/prod/sidecar/*'")),
        ]),
        &xds_mtls_args(&pki, &server),
    )
    .await;
    let edge = pki.spiffe("edge", "spiffe://test.example/ns/prod/edge/e1");
    let sidecar = pki.spiffe("sidecar", "spiffe://test.example/ns/prod/sidecar/s1");
    let (r, _keep_edge, _tx_edge) = ads_as(teal.xds, &pki, &edge, "edge-1", "edge").await;
    r.expect("edge admitted");
    let (r, _keep_side, _tx_side) = ads_as(teal.xds, &pki, &sidecar, "sidecar-1", "sidecar").await;
    r.expect("sidecar admitted");

    assert_eq!(csds_ids(teal.xds, &pki, &edge).await, ["edge-1"]);
    assert_eq!(csds_ids(teal.xds, &pki, &sidecar).await, ["sidecar-1"]);
    let nobody = pki.dns("nobody", &[]);
    assert_eq!(csds_ids(teal.xds, &pki, &nobody).await, [] as [&str; 0]);
    // The admin port (loopback, the operators') shows every group.
    let (all, ok) = csds_admin(teal.admin).await;
    assert!(ok, "{all:#}");
    let mut ids: Vec<&str> = all["config"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c["node"]["id"].as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["edge-1", "sidecar-1"]);
}

/// The CSDS answer of the admin port, from the real CSDS client
/// (`tests/support/csds_client.py`), and whether the call succeeded.
async fn csds_admin(port: u16) -> (Value, bool) {
    const CLIENT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/csds_client.py");
    let out = Command::new("python3")
        .arg(CLIENT)
        .arg(format!("127.0.0.1:{port}"))
        .arg("--no-contents")
        .output()
        .await
        .expect("run the CSDS client");
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON from the CSDS client ({e}): {}", show(&out)));
    (json, out.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_over_mtls_are_admitted_by_identity_and_survive_rotation() {
    let pki = Pki::new("xds");
    let server = pki.server("server");
    let edge_id = "spiffe://teal.test/ns/prod/edge/a";
    let allowed = pki.spiffe("edge-a", edge_id);
    let intruder = pki.spiffe("intruder", "spiffe://teal.test/ns/prod/sidecar/b");
    let dir = tempfile::tempdir().expect("tempdir");
    let teal = Serve::start(
        dir.path(),
        &config(free_port(), Some("'spiffe://teal.test/ns/prod/edge/*'")),
        &[
            "--xds-tls-cert".into(),
            path(&server.cert),
            "--xds-tls-key".into(),
            path(&server.key),
            "--xds-client-ca".into(),
            path(&pki.ca),
        ],
    )
    .await;

    let a = Envoy::start_bootstrap(
        "edge-a".into(),
        "edge",
        &mtls_bootstrap("edge-a", teal.xds, &pki, Some(&allowed)),
    )
    .await;
    let before = wait_synced(&teal, "edge-a").await;
    assert_eq!(before["identity"], edge_id, "{before:#}");

    // A certificate of the sidecars claiming the edge group: refused.
    let b = Envoy::start_bootstrap(
        "edge-b".into(),
        "edge",
        &mtls_bootstrap("edge-b", teal.xds, &pki, Some(&intruder)),
    )
    .await;
    teal.wait_log("stream refused", 1).await;
    assert!(teal.log().contains("edge-b"), "{}", teal.log());
    // No client certificate: no connection at all.
    let c = Envoy::start_bootstrap(
        "edge-c".into(),
        "edge",
        &mtls_bootstrap("edge-c", teal.xds, &pki, None),
    )
    .await;
    teal.wait_log("TLS handshake failed", 1).await;
    let all = proxies(&teal).await;
    assert!(find(&all, "edge-b").is_none(), "{all:#?}");
    assert!(find(&all, "edge-c").is_none(), "{all:#?}");

    // The flip confirms on the one admitted Envoy and waits for no other.
    let admin = format!("127.0.0.1:{}", teal.admin);
    let out = cli(&[
        "--admin",
        &admin,
        "--token",
        TOKEN,
        "flip",
        "web",
        "--timeout",
        "20s",
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    wait_synced(&teal, "edge-a").await;

    // Rotation: a new server certificate (and key) from the same CA.
    let rotated = pki.server("rotated");
    let key_text = std::fs::read_to_string(&rotated.key).expect("key");
    let cert_text = std::fs::read_to_string(&rotated.cert).expect("cert");
    write_atomically(&server.key, &key_text);
    write_atomically(&server.cert, &cert_text);
    teal.wait_log("TLS certificate reloaded", 1).await;
    let served = served_certificate(teal.xds, &pki.ca, Some(&allowed)).await;
    assert_eq!(
        served, rotated.der,
        "new handshakes get the new certificate"
    );
    let d = Envoy::start_bootstrap(
        "edge-d".into(),
        "edge",
        &mtls_bootstrap("edge-d", teal.xds, &pki, Some(&allowed)),
    )
    .await;
    wait_synced(&teal, "edge-d").await;
    let after = find(&proxies(&teal).await, "edge-a")
        .cloned()
        .expect("edge-a still there");
    assert_eq!(
        after["stream_id"], before["stream_id"],
        "edge-a kept its stream through the rotation"
    );

    // A broken file is refused; the last good certificate keeps serving.
    let refused = teal.log().matches("TLS reload refused").count();
    write_atomically(&server.cert, "-----BEGIN CERTIFICATE-----\ngarbage\n");
    teal.wait_log("TLS reload refused", refused + 1).await;
    let served = served_certificate(teal.xds, &pki.ca, Some(&allowed)).await;
    assert_eq!(served, rotated.der);
    drop((a, b, c, d));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_or_oversized_certificate_is_logged_once_per_cause() {
    let pki = Pki::new("flood");
    let server = pki.server("server");
    let dir = tempfile::tempdir().expect("tempdir");
    // Both ports share the files; the watch interval is 0.2 s.
    let teal = Serve::start(
        dir.path(),
        &config(free_port(), None),
        &[
            "--xds-tls-cert".into(),
            path(&server.cert),
            "--xds-tls-key".into(),
            path(&server.key),
            "--admin-tls-cert".into(),
            path(&server.cert),
            "--admin-tls-key".into(),
            path(&server.key),
        ],
    )
    .await;
    let refused = || teal.log().matches("TLS reload refused").count();
    let good = std::fs::read_to_string(&server.cert).expect("read");

    std::fs::remove_file(&server.cert).expect("remove");
    teal.wait_log("TLS reload refused", 2).await;
    // Ten more intervals: no more lines for the same cause.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(refused(), 2, "once per port:\n{}", teal.log());

    // Another cause: once more per port.
    std::fs::write(&server.cert, "x".repeat(2 << 20)).expect("write");
    teal.wait_log("TLS reload refused", 4).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(refused(), 4, "once per port and cause:\n{}", teal.log());

    // Back, then missing again: that is news.
    write_atomically(&server.cert, &good);
    tokio::time::sleep(Duration::from_secs(1)).await;
    std::fs::remove_file(&server.cert).expect("remove");
    teal.wait_log("TLS reload refused", 6).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(refused(), 6, "{}", teal.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_removed_from_the_file_is_refused_after_sighup() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "ops:first-token\nci:second-token\n").expect("write");
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let teal = Serve::start(
        dir.path(),
        &config(free_port(), None),
        &["--admin-tokens".into(), path(&tokens)],
    )
    .await;
    let admin = format!("127.0.0.1:{}", teal.admin);
    // Uncordoning a proxy that is not cordoned needs the token and
    // changes nothing: a probe of which tokens are accepted.
    let uncordon = |token: &'static str| {
        let admin = admin.clone();
        async move { cli(&["--admin", &admin, "--token", token, "uncordon", "nobody"]).await }
    };
    let out = uncordon("ci-token-unknown").await;
    assert_eq!(out.status.code(), Some(77), "{}", show(&out));
    let out = uncordon("second-token").await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));

    std::fs::write(&tokens, "ops:first-token\n").expect("write");
    let pid = teal.child.id().expect("runs");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    teal.wait_log("admin tokens reloaded", 1).await;
    let out = uncordon("second-token").await;
    assert_eq!(out.status.code(), Some(77), "revoked: {}", show(&out));
    let out = uncordon("first-token").await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
}

/// What a [`FakeReplica`] was asked: each call's path and its
/// `authorization` header, if any.
type Calls = std::sync::Arc<std::sync::Mutex<Vec<(String, Option<String>)>>>;

/// An admin API that is not teal: over TLS when given an acceptor, it
/// answers every call as a replica that does not lead, naming `leader`
/// (or, without one, `UNIMPLEMENTED`), and records what it was sent.
struct FakeReplica {
    port: u16,
    calls: Calls,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeReplica {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeReplica {
    async fn start(tls: Option<tokio_rustls::TlsAcceptor>, leader: Option<String>) -> FakeReplica {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let calls = Calls::default();
        let seen = calls.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (tls, leader, seen) = (tls.clone(), leader.clone(), seen.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: http::Request<_>| {
                        let auth = req
                            .headers()
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        seen.lock()
                            .expect("calls")
                            .push((req.uri().path().to_owned(), auth));
                        let mut answer =
                            http::Response::builder().header("content-type", "application/grpc");
                        answer = match &leader {
                            Some(leader) => answer
                                .header("grpc-status", "9")
                                .header("grpc-message", "this replica does not lead")
                                .header("teal-error-kind", "not-leader")
                                .header("teal-leader", leader.as_str()),
                            None => answer.header("grpc-status", "12"),
                        };
                        let body = http_body_util::Empty::<bytes::Bytes>::new();
                        std::future::ready(Ok::<_, std::convert::Infallible>(
                            answer.body(body).expect("response"),
                        ))
                    });
                    let h2 = hyper::server::conn::http2::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    let _ = match tls {
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(io) => {
                                h2.serve_connection(hyper_util::rt::TokioIo::new(io), service)
                                    .await
                            }
                            Err(_) => return,
                        },
                        None => {
                            h2.serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                                .await
                        }
                    };
                });
            }
        });
        FakeReplica { port, calls, task }
    }

    fn calls(&self) -> Vec<(String, Option<String>)> {
        self.calls.lock().expect("calls").clone()
    }
}

/// A TLS acceptor for a fake replica, with a certificate of `pki`.
fn fake_tls(pki: &Pki) -> tokio_rustls::TlsAcceptor {
    let pair = pki.server("fake-replica");
    let files = teal::transport::tls::TlsFiles {
        cert: pair.cert,
        key: pair.key,
        client_ca: None,
    };
    teal::transport::tls::ServerTls::load(teal::transport::listener::Port::Admin, files)
        .expect("server TLS")
        .acceptor()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_named_over_plaintext_is_not_followed_from_https() {
    let pki = Pki::new("redirect");
    let plaintext = FakeReplica::start(None, None).await;
    let leader = format!("http://127.0.0.1:{}", plaintext.port);
    let follower = FakeReplica::start(Some(fake_tls(&pki)), Some(leader.clone())).await;
    // No --ca: the system's roots, which here are the test CA. That is the
    // CLI that took the plaintext leader before (with --ca it refused the
    // plaintext address for its TLS files).
    let out = cli_env(
        &[
            "--admin",
            &format!("https://127.0.0.1:{}", follower.port),
            "--token",
            TOKEN,
            "flip",
            "web",
        ],
        &[("SSL_CERT_FILE", &pki.ca)],
    )
    .await;
    assert_eq!(out.status.code(), Some(69), "{}", show(&out));
    let said = stderr(&out);
    assert!(said.contains(&leader), "names the address: {said}");
    assert!(said.contains("not followed"), "{said}");
    assert!(
        follower
            .calls()
            .iter()
            .any(|(path, _)| path.ends_with("/Flip")),
        "the follower was asked: {:?}",
        follower.calls()
    );
    assert_eq!(
        plaintext.calls(),
        vec![],
        "nothing, and no token, reached the plaintext address"
    );

    // A bare host:port from an https replica is followed over https (the
    // same trust settings): a TLS leader is asked, with the token.
    let tls_leader = FakeReplica::start(Some(fake_tls(&pki)), None).await;
    let follower = FakeReplica::start(
        Some(fake_tls(&pki)),
        Some(format!("127.0.0.1:{}", tls_leader.port)),
    )
    .await;
    let out = cli_env(
        &[
            "--admin",
            &format!("https://127.0.0.1:{}", follower.port),
            "--token",
            TOKEN,
            "flip",
            "web",
        ],
        &[("SSL_CERT_FILE", &pki.ca)],
    )
    .await;
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
    let asked = tls_leader.calls();
    assert!(
        asked.iter().any(|(path, auth)| path.ends_with("/Flip")
            && auth.as_deref() == Some(&*format!("Bearer {TOKEN}"))),
        "the TLS leader was asked with the token: {asked:?}\n{}",
        show(&out)
    );
}

/// A state directory holding a local token, as `teal serve` writes it.
fn local_state(dir: &Path) -> PathBuf {
    let state = dir.join("cli-state");
    std::fs::create_dir_all(&state).expect("mkdir");
    let token = state.join("admin-token");
    std::fs::write(&token, format!("{}\n", "ab".repeat(32))).expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_address_with_user_information_is_refused_and_gets_no_local_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = local_state(dir.path());
    let catcher = FakeReplica::start(None, None).await;
    // `localhost:x` is user information: the host is what follows `@`.
    let sly = format!("http://localhost:x@127.0.0.1:{}", catcher.port);
    let out = cli_env(
        &["--admin", &sly, "uncordon", "nobody"],
        &[("TEAL_STATE_DIR", &state)],
    )
    .await;
    assert_eq!(out.status.code(), Some(64), "{}", show(&out));
    assert!(stderr(&out).contains("user information"), "{}", show(&out));
    assert_eq!(catcher.calls(), vec![], "nothing was sent");

    // Named as the leader by a replica: not followed either.
    let follower = FakeReplica::start(None, Some(sly)).await;
    let out = cli_env(
        &[
            "--admin",
            &format!("127.0.0.1:{}", follower.port),
            "flip",
            "web",
        ],
        &[("TEAL_STATE_DIR", &state)],
    )
    .await;
    assert_eq!(out.status.code(), Some(69), "{}", show(&out));
    assert!(stderr(&out).contains("user information"), "{}", show(&out));
    assert!(!follower.calls().is_empty(), "the follower was asked");
    assert_eq!(catcher.calls(), vec![], "the local token went nowhere else");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_an_advertised_admin_address_of_another_scheme() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new("advertise");
    let server = pki.server("teal");
    let cfg = config(free_port(), None);
    let tls = [
        "--admin-tls-cert".to_owned(),
        path(&server.cert),
        "--admin-tls-key".to_owned(),
        path(&server.key),
    ];
    let cases: [(&[String], &str); 3] = [
        (&tls, "http://127.0.0.1:9"),
        (&[], "https://127.0.0.1:9"),
        (&[], "localhost:x@127.0.0.1:9"),
    ];
    for (extra, advertised) in cases {
        let mut args = extra.to_vec();
        args.extend(["--advertise-admin".to_owned(), advertised.to_owned()]);
        let (code, log) = Serve::spawn(dir.path(), &cfg, &args).exit_at_start().await;
        assert_eq!(code, Some(64), "{advertised}: {log}");
        assert!(log.contains("--advertise-admin"), "{advertised}: {log}");
    }
    // The same scheme, or none, is fine.
    let mut args = tls.to_vec();
    args.extend([
        "--advertise-admin".to_owned(),
        "https://teal.internal:9".to_owned(),
    ]);
    Serve::start(dir.path(), &cfg, &args).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_token_survives_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let teal = Serve::start_local(dir.path(), &config(free_port(), None), &[]).await;
    let admin = format!("127.0.0.1:{}", teal.admin);
    let state = dir.path().join("state");
    let cordon = |node: &'static str| {
        let (admin, state) = (admin.clone(), state.clone());
        async move {
            cli_env(
                &["--admin", &admin, "cordon", node],
                &[("TEAL_STATE_DIR", &state)],
            )
            .await
        }
    };
    let out = cordon("a").await;
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let pid = teal.child.id().expect("runs");
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    teal.wait_log("admin tokens reloaded", 1).await;
    let out = cordon("b").await;
    assert_eq!(out.status.code(), Some(0), "after SIGHUP: {}", show(&out));
}

/// The uid of `nobody`.
const NOBODY: u32 = 65534;

/// Whether these tests run as root: only root can give files away.
fn root() -> bool {
    rustix::process::geteuid().is_root()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_directory_or_local_token_of_another_user_is_refused() {
    if !root() {
        eprintln!("not root: cannot make files owned by another user; skipped");
        return;
    }
    let cfg = config(free_port(), None);
    // A state directory someone else made.
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    std::os::unix::fs::chown(&state, Some(NOBODY), Some(NOBODY)).expect("chown");
    let (code, log) = Serve::spawn_local(dir.path(), &cfg, &[])
        .exit_at_start()
        .await;
    assert_eq!(code, Some(77), "{log}");
    assert!(log.contains("owned by uid 65534"), "{log}");
    // With tokens of its own too: the directory holds teal's state.
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "ops:tok\n").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (code, log) =
        Serve::spawn_local(dir.path(), &cfg, &["--admin-tokens".into(), path(&tokens)])
            .exit_at_start()
            .await;
    assert_eq!(code, Some(77), "{log}");
    assert!(log.contains("owned by uid 65534"), "{log}");

    // A token planted in our own directory, 0600 but someone else's.
    std::os::unix::fs::chown(&state, Some(0), Some(0)).expect("chown back");
    let planted = state.join("admin-token");
    std::fs::write(&planted, format!("{}\n", "cd".repeat(32))).expect("write");
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::os::unix::fs::chown(&planted, Some(NOBODY), Some(NOBODY)).expect("chown");
    let (code, log) = Serve::spawn_local(dir.path(), &cfg, &[])
        .exit_at_start()
        .await;
    assert_eq!(code, Some(77), "{log}");
    assert!(log.contains("owned by uid 65534"), "{log}");

    // The CLI does not send it either, and says why.
    let catcher = FakeReplica::start(None, None).await;
    let out = cli_env(
        &[
            "--admin",
            &format!("127.0.0.1:{}", catcher.port),
            "cordon",
            "a",
        ],
        &[("TEAL_STATE_DIR", &state)],
    )
    .await;
    assert_eq!(out.status.code(), Some(77), "{}", show(&out));
    assert!(
        stderr(&out).contains("owned by uid 65534"),
        "{}",
        show(&out)
    );
    assert_eq!(catcher.calls(), vec![], "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tokens_file_that_is_a_fifo_or_too_large_is_refused_at_once() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = config(free_port(), None);
    let fifo = dir.path().join("tokens-fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    std::fs::set_permissions(&fifo, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let started = Instant::now();
    let (code, log) = Serve::spawn(dir.path(), &cfg, &["--admin-tokens".into(), path(&fifo)])
        .exit_at_start()
        .await;
    assert_eq!(code, Some(65), "{log}");
    assert!(log.contains("not a regular file"), "{log}");
    assert!(started.elapsed() < Duration::from_secs(5), "at once");

    // 200 MB, sparse: refused by its size, never read.
    let big = dir.path().join("tokens-big");
    let file = std::fs::File::create(&big).expect("create");
    file.set_len(200 << 20).expect("grow");
    std::fs::set_permissions(&big, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (code, log) = Serve::spawn(dir.path(), &cfg, &["--admin-tokens".into(), path(&big)])
        .exit_at_start()
        .await;
    assert_eq!(code, Some(65), "{log}");
    assert!(log.contains("--admin-tokens-max-bytes"), "{log}");

    // The limit is a flag.
    let small = dir.path().join("tokens-small");
    std::fs::write(
        &small,
        "ops:a-rather-long-token-of-ninety-bytes-or-so-0123456789-0123456789\n",
    )
    .expect("write");
    std::fs::set_permissions(&small, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let args = [
        "--admin-tokens".to_owned(),
        path(&small),
        "--admin-tokens-max-bytes".to_owned(),
        "64".to_owned(),
    ];
    let (code, log) = Serve::spawn(dir.path(), &cfg, &args).exit_at_start().await;
    assert_eq!(code, Some(65), "{log}");
    assert!(log.contains("over the limit of 64"), "{log}");
}
