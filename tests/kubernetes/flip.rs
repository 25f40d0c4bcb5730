//! The real `teal serve`, its green fleet a Kubernetes Service watched on
//! an API server that speaks the real list/watch protocol
//! (`support/kube_api.rs`, reached through `KUBECONFIG`), a real edge
//! Envoy, and the real CLI: green's pods become ready one by one and the
//! Envoy's EDS follows; `teal flip` is refused while green has no ready
//! endpoint, then succeeds, and traffic reaches green.

use std::process::Stdio;
use std::time::Duration;

use crate::support::http::{self, Upstream};
use crate::support::kube_api::{FakeKube, slice};
use crate::support::world::TOKEN;
use crate::support::{Envoy, Protocol, free_port, show, wait_until};
use tokio::process::{Child, Command};

const TEAL: &str = env!("CARGO_BIN_EXE_teal");

/// One pod of green: its own slice (pods behind one Service may listen on
/// different numbers for the port named `http`; here each pod is an
/// upstream on its own port of 127.0.0.1).
fn green_pod(i: usize, port: u16, ready: bool) -> serde_json::Value {
    slice(
        "shop",
        "web-green",
        &format!("web-green-{i}"),
        port,
        &[("127.0.0.1", ready)],
    )
}

pub(crate) async fn cli(admin: u16, args: &[&str]) -> std::process::Output {
    Command::new(TEAL)
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(args)
        .env("TEAL_TOKEN", TOKEN)
        .env_remove("TEAL_ADMIN")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run the teal CLI")
}

/// The endpoints `envoy` holds for `cluster`, from its admin `/clusters`.
async fn cluster_endpoints(envoy: &Envoy, cluster: &str) -> Vec<String> {
    let r = http::get(envoy.admin_port(), "/clusters", &[])
        .await
        .expect("GET /clusters");
    let prefix = format!("{cluster}::");
    let mut eps: Vec<String> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        .filter_map(|rest| rest.split("::").next())
        .map(str::to_owned)
        .collect();
    eps.sort();
    eps.dedup();
    eps
}

pub(crate) fn spawn_teal(
    dir: &std::path::Path,
    log: &str,
    kubeconfig: &std::path::Path,
    xds: u16,
    admin: u16,
) -> Child {
    let log = std::fs::File::create(dir.join(log)).expect("teal's log");
    Command::new(TEAL)
        .args(["serve", "--config"])
        .arg(dir.join("teal.yaml"))
        .args(["--xds-addr", &format!("127.0.0.1:{xds}")])
        .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--drain", "0.2"])
        .env("KUBECONFIG", kubeconfig)
        .env("TEAL_ADMIN_TOKEN", TOKEN)
        .env("TEAL_LOG", "info")
        .env_remove("TEAL_ADMIN_TOKENS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn teal serve")
}

#[tokio::test]
async fn green_from_endpointslices_follows_readiness_and_flip_waits_for_it() {
    let api = FakeKube::start().await;
    let blue = Upstream::start("blue").await;
    let greens = [
        Upstream::start("green").await,
        Upstream::start("green").await,
        Upstream::start("green").await,
    ];
    // Three pods scheduled, none ready yet.
    for (i, g) in greens.iter().enumerate() {
        api.apply(green_pod(i, g.port, false));
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let kubeconfig = api.kubeconfig(dir.path());
    let edge = free_port();
    std::fs::write(
        dir.path().join("teal.yaml"),
        format!(
            "services:
  web:
    live: blue
    connect_timeout: 1s
    fleets:
      blue:
        endpoints: [127.0.0.1:{blue}]
      green:
        kubernetes: {{namespace: shop, service: web-green, port: http}}
groups:
  edge:
    listeners:
      public:
        kind: edge
        address: 127.0.0.1:{edge}
        virtual_hosts:
          site:
            domains: ['*']
            routes:
              - prefix: /
                service: web
",
            blue = blue.port
        ),
    )
    .expect("write the config");
    let (xds, admin) = (free_port(), free_port());
    let mut teal = spawn_teal(dir.path(), "teal.log", &kubeconfig, xds, admin);
    let log = || std::fs::read_to_string(dir.path().join("teal.log")).unwrap_or_default();
    wait_until(Duration::from_secs(30), "teal's admin API", || async {
        http::get(admin, "/healthz", &[])
            .await
            .is_ok_and(|r| r.status == 200)
    })
    .await;
    let envoy = Envoy::start_on(xds, "edge", Protocol::Sotw).await;
    envoy.wait_for_answer(edge, "/", &[], "blue").await;
    assert!(cluster_endpoints(&envoy, "web-green").await.is_empty());
    assert!(api.lists() >= 1, "teal listed green's slices:\n{}", log());

    // No ready endpoint: the flip is refused, and nothing moved.
    let out = cli(admin, &["flip", "web", "--to", "green", "--timeout", "10s"]).await;
    assert_ne!(
        out.status.code(),
        Some(0),
        "flip to an empty green: {}",
        show(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no endpoints"),
        "{}",
        show(&out)
    );
    envoy.wait_for_answer(edge, "/", &[], "blue").await;

    // Pods become ready one by one; Envoy's EDS follows each.
    let mut want = Vec::new();
    for (i, g) in greens.iter().enumerate() {
        api.apply(green_pod(i, g.port, true));
        want.push(format!("127.0.0.1:{}", g.port));
        want.sort();
        let w = want.clone();
        wait_until(
            Duration::from_secs(10),
            &format!("Envoy's web-green holds the {} ready pods", i + 1),
            || {
                let (envoy, w) = (&envoy, w.clone());
                async move { cluster_endpoints(envoy, "web-green").await == w }
            },
        )
        .await;
    }

    let out = cli(admin, &["flip", "web", "--to", "green", "--timeout", "10s"]).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "flip to a ready green: {}",
        show(&out)
    );
    envoy.wait_for_answer(edge, "/", &[], "green").await;

    // A pod goes unready: it leaves Envoy's EDS.
    api.apply(green_pod(0, greens[0].port, false));
    want.retain(|a| *a != format!("127.0.0.1:{}", greens[0].port));
    wait_until(
        Duration::from_secs(10),
        "the unready pod leaves Envoy's web-green",
        || {
            let (envoy, w) = (&envoy, want.clone());
            async move { cluster_endpoints(envoy, "web-green").await == w }
        },
    )
    .await;
    // Only EDS changed for it: the flip's routes are still green's.
    envoy.wait_for_answer(edge, "/", &[], "green").await;

    // A restarted teal lists green before it opens the xDS port, so the
    // reconnecting Envoy is never served a live green with no endpoints.
    teal.kill().await.expect("stop teal");
    let _teal = spawn_teal(dir.path(), "teal-2.log", &kubeconfig, xds, admin);
    wait_until(
        Duration::from_secs(30),
        "the restarted teal's admin API",
        || async {
            http::get(admin, "/healthz", &[])
                .await
                .is_ok_and(|r| r.status == 200)
        },
    )
    .await;
    // teal starts its admin API and its xDS server as two tasks: the admin
    // API may answer before the xDS task has logged that it listens. What
    // counts is the order of the two lines, once both are there.
    let log_path = dir.path().join("teal-2.log");
    let mut log = String::new();
    wait_until(
        Duration::from_secs(10),
        "the restarted teal logs its xDS port",
        || {
            log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let listening = log.contains("xDS server listening");
            async move { listening }
        },
    )
    .await;
    let served = log
        .find("Kubernetes endpoints served")
        .unwrap_or_else(|| panic!("green listed at start:\n{log}"));
    let listening = log
        .find("xDS server listening")
        .unwrap_or_else(|| panic!("xDS port opened:\n{log}"));
    assert!(
        served < listening,
        "green was listed before the xDS port opened:\n{log}"
    );
    envoy.wait_for_answer(edge, "/", &[], "green").await;
    assert_eq!(cluster_endpoints(&envoy, "web-green").await, want);
}
