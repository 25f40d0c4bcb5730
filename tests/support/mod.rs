//! The one toolkit of teal's integration tests and benchmarks: teal
//! in-process or as the real binary, real Envoy and etcd processes, local
//! upstreams, traffic, and waits.
//!
//! - [`teal`]: teal in-process on `127.0.0.1:0` ([`Teal`]), the bare xDS
//!   server fed through the snapshot writer or all of `teal serve` on a
//!   config file, with the proxy registry at hand.
//! - [`envoy`]: a real Envoy child process ([`Envoy`]) fed by teal over
//!   ADS, state of the world or delta, bootstrapped from the shipped
//!   `envoy/edge.yaml`.
//! - [`world`]: the real `teal serve` binary, three Envoys and a
//!   blue/green service, driven through the real CLI.
//! - [`etcd`]: a real etcd on free loopback ports, plain, TLS or with
//!   auth; [`replica`]: replicas on it, in-process or `teal serve` child
//!   processes killed with `kill -9` and restarted.
//! - [`kube_api`]: a fake Kubernetes API server speaking the real
//!   list/watch protocol for EndpointSlices.
//! - [`http`]: local upstream servers that answer with their name (and can
//!   echo request headers back), and a tiny client; [`traffic`]: requests
//!   sent back to back in the background ([`Traffic`]), to prove a change
//!   happened without a failed request; [`sse`]: a reader of the
//!   dashboard's event stream.
//! - [`ads`]: ADS clients that stand in for proxies, one or thousands;
//!   [`lrs`]: a load-report client that stands in for a proxy's.
//! - [`browser`]: a real headless Chromium driven over the DevTools
//!   protocol ([`browser::Browser`]): the dashboard's browser test.
//! - [`resources`]: builders for the clusters, endpoints, listeners and
//!   routes the tests serve; [`pki`]: certificates made on the spot.
//! - [`ports`]: free ports, and the fixed ones one test at a time
//!   ([`ports::fixed`]); [`alone`]: a test that loads the machine runs
//!   with no other.
//! - [`wait_until`], [`Teal::wait_for`], [`Envoy::wait_for_answer`]: waits
//!   with deadlines that fail with a clear message, never bare sleeps.
//!
//! Envoy and etcd (and Chromium, for the dashboard) must be installed;
//! the tests never skip without them (see [`envoy::envoy_binary`],
//! [`etcd::etcd_binary`], [`browser::chromium_binary`]). Everything
//! listens on 127.0.0.1 only.
//!
//! Each test binary includes it once, as `#[path = "../support/mod.rs"]
//! mod support;` in its `main.rs`; the examples include it the same way.

// Each binary uses its own part of the toolkit; `pub` marks the toolkit's
// API, which a test binary cannot export.
#![allow(dead_code, unreachable_pub)]

pub mod ads;
pub mod browser;
pub mod envoy;
pub mod etcd;
pub mod http;
pub mod kube_api;
pub mod lrs;
pub mod pki;
pub mod ports;
pub mod replica;
pub mod resources;
pub mod sse;
pub mod teal;
pub mod traffic;
pub mod world;

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

// What most tests use, where they have always found it. Some binaries
// use only some of it.
#[allow(unused_imports)]
pub use self::ads::ads_subscribed_to_all;
#[allow(unused_imports)]
pub use self::envoy::{
    Envoy, Protocol, envoy_binary, find_envoy, render_bootstrap, render_bootstrap_replicas,
};
#[allow(unused_imports)]
pub use self::http::Upstream;
#[allow(unused_imports)]
pub use self::teal::{Teal, WATCH_INTERVAL, find, is_version, snapshot};
#[allow(unused_imports)]
pub use self::traffic::{Answer, Traffic};

/// How long a test waits for Envoy to converge before failing.
pub const CONVERGE: Duration = Duration::from_secs(15);

/// The admin token of every `teal serve` the tests start as a process.
pub const TOKEN: &str = "secret";

/// The `teal` binary Cargo built for the integration tests. The examples
/// that share this toolkit are built without it, hence `option_env!`;
/// they never start a `teal` process through it.
pub fn teal_binary() -> &'static str {
    match option_env!("CARGO_BIN_EXE_teal") {
        Some(path) => path,
        None => panic!("only integration tests run the teal binary"),
    }
}

/// Held for the whole run of a test that loads the machine and judges
/// timing under that load (the `load` binary's tests), so that such tests
/// run one after another whatever the number of test threads. With
/// nothing else in their binary, each has the machine to itself.
pub async fn alone() -> tokio::sync::MutexGuard<'static, ()> {
    static ALONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    ALONE.lock().await
}

/// The name libtest runs test `test` of the module whose `module_path!()`
/// is `module` under: the path without the crate's name. For a test that
/// runs another test of its own binary in a child process
/// (`--exact NAME`), which must name it as libtest does.
pub fn test_name(module: &str, test: &str) -> String {
    match module.split_once("::") {
        Some((_crate, path)) => format!("{path}::{test}"),
        None => test.to_owned(),
    }
}

/// Replaces the contents of `path` with `text` in one step (write a
/// sibling file, then rename it over `path`), so a teal polling the file
/// never reads it half written.
pub fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, path)
        .unwrap_or_else(|e| panic!("rename {} to {}: {e}", tmp.display(), path.display()));
}

/// A finished command's exit status and output, for failure messages.
pub fn show(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A free TCP port on 127.0.0.1 ([`ports::free_port`]).
///
/// Racy by nature: another process may take the port between this call
/// and its use. Use it only where the port must be known up front (an
/// Envoy listener in a published snapshot); bind `:0` directly elsewhere.
pub use ports::free_port;

/// Polls `check` every 50 ms until it returns true.
///
/// # Panics
///
/// After `timeout`, with `what` in the message.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
