//! The `teal serve` binary: it starts on the bundled config, serves xDS,
//! refuses a bad config or a newer state file with exit 65, and on SIGTERM
//! closes proxy streams and exits 0.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{
    DiscoveryRequest, aggregated_discovery_service_client::AggregatedDiscoveryServiceClient,
};
use teal::xds::resources::ResourceType;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::support::free_port;

fn teal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_teal"))
}

#[test]
fn a_bad_config_is_refused_with_every_problem() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "services:\n  web:\n    live: blue\n    fleets:\n      blue: {endpoints: [nowhere]}\ngroups: {}\nextra: 1\n",
    )
    .expect("write");
    let out = teal()
        .args(["serve", "--ephemeral", "--config"])
        .arg(&path)
        .args(["--xds-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:5:"), "{err}");
    assert!(err.contains("extra"), "every problem is listed: {err}");
}

#[test]
fn a_state_file_from_a_newer_teal_is_named_as_such() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("state.json"),
        r#"{"format": 9, "revision": 4, "state": {"something": "new"}}"#,
    )
    .expect("write");
    let out = teal()
        .args(["serve", "--state-dir"])
        .arg(dir.path())
        .args(["--xds-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(65), "{err}");
    assert!(
        err.contains("written by a newer teal (state format 9; this teal reads format 1)"),
        "{err}"
    );
    assert!(!err.contains("corrupt"), "{err}");
}

#[tokio::test]
async fn sigterm_closes_streams_and_exits_zero() {
    let (xds, admin) = (free_port(), free_port());
    let mut child = teal()
        .args(["serve", "--ephemeral", "--drain", "2"])
        .args(["--xds-addr", &format!("127.0.0.1:{xds}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .stderr(Stdio::null())
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
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(Node {
            id: "edge-1".into(),
            cluster: "edge".into(),
            ..Default::default()
        }),
        type_url: ResourceType::Cluster.type_url().into(),
        ..Default::default()
    })
    .await
    .expect("send");
    let mut stream = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    let first = stream.next().await.expect("answer").expect("ok");
    assert!(
        !first.resources.is_empty(),
        "the bundled config has clusters for edge"
    );

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let end = tokio::time::timeout(Duration::from_secs(5), stream.next())
        .await
        .expect("the stream is closed promptly");
    match end {
        Some(Err(status)) => assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}"),
        None => {}
        Some(Ok(r)) => panic!("unexpected response after SIGTERM: {r:?}"),
    }
    let status = exit_of(&mut child, Duration::from_secs(5), "SIGTERM").await;
    assert_eq!(status.code(), Some(0));
    drop(tx);
}

/// How `child` exits, which it must within `within` of `signal`.
async fn exit_of(
    child: &mut std::process::Child,
    within: Duration,
    signal: &str,
) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "teal did not exit after {signal}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The version `teal status -o json` reports, through the real CLI.
fn status_version(admin: u16) -> Option<String> {
    let out = teal()
        .args([
            "--admin",
            &format!("127.0.0.1:{admin}"),
            "status",
            "-o",
            "json",
        ])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["version"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn sighup_reloads_the_config_file_refuses_a_broken_one_and_sigint_exits_zero() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("teal.yaml");
    let log = dir.path().join("teal.log");
    let text = teal::config::DEFAULT_CONFIG;
    std::fs::write(&path, text).expect("write");
    let (xds, admin) = (free_port(), free_port());
    let mut child = teal()
        .args([
            "serve",
            "--ephemeral",
            "--watch-interval",
            "3600",
            "--config",
        ])
        .arg(&path)
        .args(["--xds-addr", &format!("127.0.0.1:{xds}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .stderr(std::fs::File::create(&log).expect("log file"))
        .spawn()
        .expect("teal starts");
    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        if let Some(v) = status_version(admin) {
            break v;
        }
        assert!(Instant::now() < deadline, "the admin API never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Another timeout changes every cluster; only SIGHUP can make teal
    // see it, since the file is checked once an hour.
    let changed = text.replacen("connect_timeout: ", "connect_timeout: 3", 1);
    assert_ne!(changed, text, "the bundled config sets a connect_timeout");
    std::fs::write(&path, &changed).expect("write");
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = status_version(admin);
        if now.as_ref().is_some_and(|v| *v != before) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "SIGHUP did not reload: still {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let good = status_version(admin).expect("teal answers");

    // A broken file sent by SIGHUP is refused whole: teal logs why and
    // keeps serving the last good version.
    std::fs::write(&path, "services:\n  web: {live: nowhere}\n").expect("write");
    let hup = Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(hup.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("refused")
    {
        assert!(
            Instant::now() < deadline,
            "no refusal logged after SIGHUP with a broken file:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status_version(admin), Some(good), "the last good config");

    // SIGINT: a clean shutdown, exit 0.
    let int = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(int.success());
    let status = exit_of(&mut child, Duration::from_secs(10), "SIGINT").await;
    assert_eq!(status.code(), Some(0), "SIGINT exits 0");
}
