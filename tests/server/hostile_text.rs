//! Text a proxy or an endpoint chose (node ids, NACK messages, check
//! details) never reaches a log or a terminal raw, and no amount of it
//! breaks the CLI: the real `teal` binary against an admin API serving
//! hostile values, and a real `teal serve` fed by a hostile ADS client.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use teal::admin::Backend;
use teal::admin::Tokens;
use teal::metrics::Metrics;
use teal::rollout::{
    CheckResult, HistoryEntry, Operation, Outcome, Phase, Progress, Reason, RolloutError,
    ServiceStatus, Split, StatusView, Verb, Version,
};
use teal::shutdown::{ShutdownTrigger, shutdown_channel};
use teal::xds::resources::{PerType, ResourceType};
use teal::xds::status::{Nack, TypeStatus};
use teal::xds::{NodeInfo, ProxyStatus, StreamKind};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::free_port;

const TOKEN: &str = "s3cret";

/// What an attacker would put in a name or a message: a forged log line,
/// a colour, a one-character CSI and a bidi override.
const EVIL: &str = "x\nINFO forged line\x1b[31m red\u{9b}2J\u{202e}";

/// Raw bytes none of teal's output may contain.
fn assert_clean(what: &str, text: &str) {
    for bad in ['\x1b', '\u{9b}', '\u{202e}'] {
        assert!(!text.contains(bad), "{what} has {bad:?} raw");
    }
    assert!(
        !text.lines().any(|l| l.starts_with("INFO forged")),
        "{what} has a forged line"
    );
}

fn split(pairs: &[(&str, u32)]) -> Split {
    pairs.iter().map(|(f, w)| ((*f).to_owned(), *w)).collect()
}

/// An admin backend whose every value is hostile and huge.
struct HostileBackend {
    node_id: String,
    nack: String,
    reason: String,
    progress_message: String,
}

impl HostileBackend {
    fn new() -> HostileBackend {
        HostileBackend {
            node_id: format!("{EVIL}{}", "n".repeat(70_000)),
            nack: format!("{EVIL}{}", "m".repeat(3 << 20)),
            reason: format!("NACK: {EVIL}{}", "r".repeat(3 << 20)),
            progress_message: format!("{EVIL}{}", "p".repeat(6 << 20)),
        }
    }

    fn entry(&self) -> HistoryEntry {
        let now = SystemTime::now();
        HistoryEntry {
            id: 1,
            verb: Verb::Flip,
            actor: "alice".into(),
            started: now,
            finished: now,
            from: split(&[("blue", 100), ("green", 0)]),
            to: split(&[("blue", 100), ("green", 0)]),
            version: Some(Version::new(2, "v2")),
            outcome: Outcome::RolledBack {
                reason: Reason::Recorded(self.reason.clone()),
            },
            convergence: None,
            acks: vec![(self.node_id.clone(), Duration::from_millis(5))],
            target: Some(split(&[("blue", 0), ("green", 100)])),
            warnings: vec![self.nack.clone()],
            not_waited_for: vec![self.node_id.clone()],
        }
    }

    fn progress(&self, phase: Phase) -> Progress {
        Progress {
            id: 9,
            service: "web".into(),
            verb: Verb::Flip,
            phase,
            step: 1,
            steps: 1,
            target: split(&[("blue", 0), ("green", 100)]),
            version: Some(Version::new(3, "v3")),
            acked: 0,
            total: 1,
            waiting_for: vec![self.node_id.clone()],
            not_waiting_for: vec![],
            checks: vec![CheckResult {
                check: "health".into(),
                endpoint: "green-1:8080".into(),
                ok: false,
                detail: self.nack.clone(),
            }],
            message: self.progress_message.clone(),
            warnings: vec![self.nack.clone()],
            outcome: None,
        }
    }
}

#[tonic::async_trait]
impl Backend for HostileBackend {
    async fn status(&self, _service: Option<&str>) -> Result<StatusView, RolloutError> {
        Ok(StatusView {
            version: Some(Version::new(2, "v2")),
            services: vec![ServiceStatus {
                name: "web".into(),
                live: "blue".into(),
                previous: None,
                rollback_to: Some(split(&[("blue", 0), ("green", 100)])),
                weights: split(&[("blue", 100), ("green", 0)]),
                retired: vec![],
                retirement: None,
                drains: vec![],
                both_fleets_since: None,
                applied: Default::default(),
                confirmed: None,
                route: None,
                last_change: Some(self.entry()),
                in_progress: Some(self.progress(Phase::Confirming)),
                traffic: Vec::new(),
            }],
        })
    }

    fn proxies(&self) -> Vec<ProxyStatus> {
        let nacked = TypeStatus {
            subscribed: true,
            sent: Some("v2".into()),
            sent_at: Some(SystemTime::now()),
            acked: Some("v1".into()),
            acked_at: Some(SystemTime::now()),
            nack: Some(Nack {
                version: "v2".into(),
                message: self.nack.clone(),
                at: SystemTime::now(),
            }),
        };
        vec![ProxyStatus {
            stream_id: 1,
            node: Some(NodeInfo {
                id: self.node_id.clone(),
                cluster: "edge".into(),
                user_agent: EVIL.into(),
            }),
            kind: StreamKind::Aggregated,
            delta: false,
            connected_since: SystemTime::now(),
            identity: teal::transport::identity::PeerIdentity::Unauthenticated,
            types: [nacked.clone(), nacked.clone(), nacked.clone(), nacked].into(),
            replica: None,
            disconnected: false,
        }]
    }

    fn current_versions(&self) -> BTreeMap<String, PerType<String>> {
        BTreeMap::from([(
            "edge".to_owned(),
            ["v2", "v2", "v2", "v2"].map(String::from).into(),
        )])
    }

    async fn start(
        &self,
        _op: Operation,
        _actor: &str,
    ) -> Result<watch::Receiver<Progress>, RolloutError> {
        let (tx, rx) = watch::channel(self.progress(Phase::Confirming));
        let mut done = self.progress(Phase::Done);
        done.outcome = Some(Outcome::RolledBack {
            reason: Reason::Recorded(self.reason.clone()),
        });
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.send_replace(done);
            tx.closed().await;
        });
        Ok(rx)
    }

    async fn follow(&self, id: u64) -> Result<watch::Receiver<Progress>, RolloutError> {
        Err(RolloutError::NoSuchOperation(id))
    }

    async fn abort(&self, id: u64, _actor: &str) -> Result<(), RolloutError> {
        Err(RolloutError::NoSuchOperation(id))
    }

    async fn verify(&self, _service: &str, _fleet: &str) -> Result<Vec<CheckResult>, RolloutError> {
        Ok(self.progress(Phase::Done).checks)
    }

    async fn history(&self, _service: &str) -> Result<Vec<HistoryEntry>, RolloutError> {
        Ok(vec![self.entry()])
    }
}

async fn start_admin() -> (SocketAddr, ShutdownTrigger) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (trigger, shutdown) = shutdown_channel();
    tokio::spawn(teal::admin::serve(
        listener,
        teal::transport::listener::ConnectionLimits::default_for(
            teal::transport::listener::Port::Admin,
        ),
        Arc::new(HostileBackend::new()),
        Arc::new(Metrics::new()),
        Tokens::none().with("alice", TOKEN),
        no_proxies(&shutdown),
        shutdown,
    ));
    (addr, trigger)
}

async fn teal(addr: SocketAddr, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .arg("--admin")
        .arg(addr.to_string())
        .args(args)
        .env_remove("TEAL_TOKEN")
        .env_remove("TEAL_ADMIN")
        .env("TEAL_LOG", "warn")
        .output()
        .await
        .expect("run teal")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Every read command and a followed flip: exit as usual, print a bounded,
/// escaped screenful; `-o json` keeps the values whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_values_are_cut_and_escaped_in_every_command() {
    let (addr, _stop) = start_admin().await;
    for (args, code) in [
        (&["proxies"][..], 0),
        (&["history", "web"], 0),
        (&["status", "web"], 0),
        (&["verify", "web", "green"], 1),
        (&["flip", "web", "--token", TOKEN], 2),
    ] {
        let out = teal(addr, args).await;
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            &stderr[..stderr.len().min(2000)]
        );
        assert_clean(&format!("{args:?} stdout"), &stdout);
        assert_clean(&format!("{args:?} stderr"), &stderr);
        // Megabytes in, a few kilobytes out.
        let size = stdout.len() + stderr.len();
        assert!(size < 32 << 10, "{args:?} printed {size} bytes");
        for line in stdout.lines().chain(stderr.lines()) {
            assert!(
                line.chars().count() <= 1200,
                "{args:?}: a line of {} chars",
                line.chars().count()
            );
        }
        assert!(
            stdout.contains('…') || stderr.contains('…'),
            "{args:?}: nothing marked as cut"
        );
        assert!(
            stdout.contains(r"x\nINFO forged line\x1b[31m")
                || stderr.contains(r"x\nINFO forged line\x1b[31m"),
            "{args:?}: the escapes are shown"
        );
    }

    let out = teal(addr, &["proxies"]).await;
    let stdout = text(&out.stdout);
    let row = stdout.lines().nth(1).expect("a proxy row");
    assert!(
        row.starts_with(r"x\nINFO forged line\x1b[31m red\u{9b}2J\u{202e}nnn"),
        "{row}"
    );
    assert!(row.contains("…  edge"), "the node id cell is cut: {row}");

    let out = teal(addr, &["history", "web"]).await;
    let stdout = text(&out.stdout);
    let widest = stdout.lines().map(|l| l.chars().count()).max().unwrap_or(0);
    assert!(
        widest < 250,
        "the history table is {widest} characters wide:\n{stdout}"
    );
    assert!(stdout.contains("-o json shows them whole"), "{stdout}");

    let out = teal(addr, &["history", "web", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(0));
    let json = text(&out.stdout);
    assert_clean("history -o json", &json);
    let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
    let reason = v["entries"][0]["reason"].as_str().expect("a reason");
    assert_eq!(
        reason,
        HostileBackend::new().reason,
        "-o json keeps it whole"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_cli_limit_is_a_clear_error() {
    let (addr, _stop) = start_admin().await;
    let out = teal(addr, &["history", "web", "--max-response-bytes", "1048576"]).await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{stderr}");
    assert!(stderr.contains("--max-response-bytes"), "{stderr}");
    assert!(stderr.len() < 4096, "{stderr}");

    let out = teal(addr, &["history", "web", "--max-response-bytes", "5"]).await;
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("--max-response-bytes"));
}

#[test]
fn out_of_range_flags_exit_64_naming_the_flag() {
    for args in [
        &["serve", "--drain", "1e20"][..],
        &["serve", "--drain", "301"],
        &["serve", "--drain", "NaN"],
        &["serve", "--watch-interval", "1e20"],
        &["serve", "--watch-interval", "1e-10"],
        &["serve", "--watch-interval", "0"],
        &["serve", "--log-value-chars", "10"],
        &["flip", "web", "--timeout", "0s"],
        &["flip", "web", "--timeout", "99999999999999999999h"],
        &["rollback", "web", "--timeout", "2h"],
        &["shift", "web", "--steps", "10,100", "--interval", "25h"],
        &["shift", "web", "--weight", "green=10", "--timeout", "1000h"],
        &["retire", "web", "blue", "--after", "100000h"],
        &["abort", "99999999999999999999999"],
        &["status", "--max-response-bytes", "0"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
            .args(args)
            .arg("--admin")
            .arg("127.0.0.1:9")
            .output()
            .expect("runs");
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{args:?}: {stderr}");
        let flag = args.iter().rev().nth(1).expect("a flag");
        let named = if flag.starts_with("--") {
            *flag
        } else {
            "<ID>"
        };
        assert!(stderr.contains(named), "{args:?}: {stderr}");
    }
}

/// A real `teal serve` logging at debug to a file, and a proxy whose node
/// id and NACK are hostile: the log stays one event per line, escaped,
/// with no colour codes; `teal proxies` shows them escaped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_proxy_cannot_forge_log_lines_or_colour_the_terminal() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("teal.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let (xds, admin) = (free_port(), free_port());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_teal"))
        .args(["serve", "--ephemeral"])
        .args(["--xds-addr", &format!("127.0.0.1:{xds}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .env("TEAL_LOG", "debug")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("teal starts");

    let deadline = Instant::now() + Duration::from_secs(10);
    let channel = loop {
        match tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{xds}"))
            .expect("uri")
            .connect()
            .await
        {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => panic!("teal never listened: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    // Long enough to need a cut in a table, short enough for any node id
    // limit teal applies at intake.
    let node_id = format!("{EVIL}{}", "n".repeat(300));
    let request = |nonce: &str, version: &str, error: Option<&str>| DiscoveryRequest {
        node: Some(Node {
            id: node_id.clone(),
            cluster: "edge".into(),
            user_agent_name: EVIL.into(),
            ..Default::default()
        }),
        type_url: ResourceType::Cluster.type_url().into(),
        response_nonce: nonce.into(),
        version_info: version.into(),
        error_detail: error.map(|m| RpcStatus {
            code: 3,
            message: m.into(),
            details: vec![],
        }),
        ..Default::default()
    };
    let (tx, rx) = mpsc::channel(4);
    tx.send(request("", "", None)).await.expect("send");
    let mut stream = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let first = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("an answer in time")
        .expect("an answer")
        .expect("ok");
    let nack = format!("cluster rejected: {EVIL}");
    tx.send(request(&first.nonce, "", Some(&nack)))
        .await
        .expect("send the NACK");

    let admin_addr: SocketAddr = format!("127.0.0.1:{admin}").parse().expect("addr");
    let deadline = Instant::now() + Duration::from_secs(10);
    let stdout = loop {
        let out = teal(admin_addr, &["proxies"]).await;
        let stdout = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        if stdout.contains("NACKED") {
            break stdout;
        }
        assert!(
            Instant::now() < deadline,
            "the NACK never showed:\n{stdout}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_clean("teal proxies", &stdout);
    assert!(
        stdout.contains(r"cluster rejected: x\nINFO forged line\x1b[31m red"),
        "{stdout}"
    );

    drop(tx);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log_path).expect("read log");
    assert_clean("the log", &log);
    assert!(log.contains(r"x\nINFO forged line\x1b[31m"), "{log}");
    assert!(log.contains("NACK"), "the NACK is logged: {log}");
    // Every line is an event: it starts with its timestamp.
    for line in log.lines() {
        let stamp = line.get(..11).unwrap_or(line);
        assert!(
            stamp.len() == 11 && stamp.starts_with("20") && stamp.ends_with('T'),
            "a line that is not a log event: {line}"
        );
    }
}

/// What `teal serve` logs on a terminal (a pseudo-terminal from
/// util-linux's `script`) before failing to bind a taken port.
fn logged_on_a_terminal(no_color: Option<&str>) -> String {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let command = format!(
        "{} serve --ephemeral --xds-addr 127.0.0.1:{port} --admin-addr 127.0.0.1:0",
        env!("CARGO_BIN_EXE_teal")
    );
    let mut script = std::process::Command::new("script");
    script
        .args(["-qec", &command, "/dev/null"])
        .env("TEAL_LOG", "info")
        .stdin(Stdio::null());
    match no_color {
        Some(v) => script.env("NO_COLOR", v),
        None => script.env_remove("NO_COLOR"),
    };
    let out = script.output().expect("script (util-linux) runs");
    let transcript = text(&out.stdout);
    assert_eq!(out.status.code(), Some(69), "{transcript}");
    assert!(transcript.contains("controller started"), "{transcript}");
    transcript
}

#[test]
fn colours_only_on_a_terminal_without_no_color() {
    assert!(
        logged_on_a_terminal(None).contains("\x1b["),
        "a terminal gets colours"
    );
    assert!(
        logged_on_a_terminal(Some("")).contains("\x1b["),
        "an empty NO_COLOR is unset"
    );
    assert!(
        !logged_on_a_terminal(Some("1")).contains('\x1b'),
        "NO_COLOR=1 turns them off"
    );
}

/// A CSDS service with no proxy connected and nothing served: these tests
/// drive the admin API over a fake backend, without an xDS server.
fn no_proxies(shutdown: &teal::shutdown::Shutdown) -> teal::xds::ClientStatus {
    teal::xds::ClientStatus::new(
        teal::xds::ProxyRegistry::new(),
        teal::xds::snapshot_store::snapshot_store().1,
        teal::xds::CsdsLimits::default(),
        shutdown.clone(),
    )
}

/// A `teal serve` (in-process) whose service `web` has a `registered`
/// fleet `green`, with the admin token [`TOKEN`] from a tokens file;
/// `allow_any`: `--allow-any-endpoint-address`.
async fn serve_registered(dir: &std::path::Path, allow_any: bool) -> (SocketAddr, ShutdownTrigger) {
    use std::os::unix::fs::PermissionsExt;
    let config = dir.join("teal.yaml");
    std::fs::write(
        &config,
        "services:
  web:
    live: blue
    fleets:
      blue: {endpoints: [127.0.0.1:9]}
      green: {endpoints: registered}
groups:
  edge:
    listeners:
      public:
        kind: edge
        address: 127.0.0.1:10000
        virtual_hosts:
          all: {domains: ['*'], routes: [{prefix: /, service: web}]}
",
    )
    .expect("write config");
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("alice:{TOKEN}\n")).expect("write tokens");
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let (trigger, shutdown) = shutdown_channel();
    let running = teal::serve::start(
        teal::serve::ServeOptions {
            admin_tokens: Some(tokens),
            endpoint_limits: teal::rollout::registration::EndpointLimits {
                allow_any_address: allow_any,
                ..Default::default()
            },
            ..teal::serve::ServeOptions::local(Some(config))
        },
        shutdown,
    )
    .await
    .expect("teal serve starts");
    (running.admin_addr, trigger)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zones_with_invisible_or_bidi_characters_are_refused() {
    use teal::admin::pb;
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, _stop) = serve_registered(dir.path(), false).await;
    let hidden = ["a\u{202e}b", "a\u{2028}c", "a\u{200b}d", "\u{feff}e"];
    // The CLI refuses before sending anything.
    for zone in hidden {
        let out = teal(
            addr,
            &[
                "--token",
                TOKEN,
                "fleet",
                "add",
                "web",
                "green",
                "127.0.0.1:9",
                "--zone",
                &format!("127.0.0.1:9={zone}"),
            ],
        )
        .await;
        assert_eq!(
            out.status.code(),
            Some(64),
            "{zone:?}: {}",
            text(&out.stderr)
        );
        let said = text(&out.stderr);
        assert!(said.contains("printable text"), "{zone:?}: {said}");
        assert_clean("the refusal", &said);
    }
    // The admin API refuses a client that sends them anyway, and keeps
    // nothing of the change.
    let mut client = pb::admin_client::AdminClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    for zone in hidden {
        let mut req = tonic::Request::new(pb::ChangeFleetRequest {
            service: "web".into(),
            fleet: "green".into(),
            change: pb::FleetChange::Add as i32,
            endpoints: vec![pb::RegisteredEndpoint {
                address: "127.0.0.1:9".into(),
                zone: Some(zone.into()),
                ..Default::default()
            }],
            ..Default::default()
        });
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {TOKEN}").parse().expect("ascii"),
        );
        let e = client.change_fleet(req).await.expect_err("refused");
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{zone:?}: {e:?}");
    }
    let out = teal(addr, &["fleet", "show", "web", "green", "-o", "json"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(shown["endpoints"], serde_json::json!([]), "{shown}");
    // An ordinary zone is fine.
    let out = teal(
        addr,
        &[
            "--token",
            TOKEN,
            "fleet",
            "add",
            "web",
            "green",
            "127.0.0.1:9",
            "--zone",
            "127.0.0.1:9=eu-west-1a",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_no_fleet_means_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (addr, _stop) = serve_registered(dir.path(), false).await;
    let own = format!("127.0.0.1:{}", addr.port());
    let add = |endpoint: String| async move {
        teal(
            addr,
            &["--token", TOKEN, "fleet", "add", "web", "green", &endpoint],
        )
        .await
    };
    for (endpoint, why) in [
        ("169.254.169.254:80".to_owned(), "link-local"),
        ("[fe80::1]:80".to_owned(), "link-local"),
        ("239.1.2.3:80".to_owned(), "multicast"),
        ("255.255.255.255:80".to_owned(), "broadcast"),
        (own.clone(), "admin API"),
    ] {
        let out = add(endpoint.clone()).await;
        assert_eq!(
            out.status.code(),
            Some(1),
            "{endpoint}: {}",
            text(&out.stderr)
        );
        let said = text(&out.stderr);
        assert!(said.contains(why), "{endpoint}: {said}");
        assert!(said.contains("--allow-any-endpoint-address"), "{said}");
    }
    let out = add("10.1.2.3:80".to_owned()).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));

    let other = tempfile::tempdir().expect("tempdir");
    let (addr, _stop) = serve_registered(other.path(), true).await;
    let out = teal(
        addr,
        &[
            "--token",
            TOKEN,
            "fleet",
            "add",
            "web",
            "green",
            "169.254.169.254:80",
        ],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "allowed: {}", text(&out.stderr));
}
