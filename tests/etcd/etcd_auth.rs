//! teal on an etcd that wants TLS with client certificates, and on one
//! with user/password auth, through the real `teal serve` flags
//! (`--store-ca`, `--store-cert`, `--store-key`, `--store-user` and
//! `TEAL_STORE_PASSWORD`): with the right credentials a flip lands in
//! etcd; with a missing certificate, a CA that does not match or a wrong
//! password, `teal serve` exits at start with exit code 73 (it cannot load
//! its state) and a message that names the problem, never a panic; and an
//! auth token that etcd lets expire is renewed.

use std::time::Duration;

use teal::state::etcd::EtcdClient;
use teal::state::{EtcdStore, StateStore};

use crate::support::etcd::{Etcd, EtcdFlags, EtcdTlsFiles, enable_auth};
use crate::support::pki::Pki;
use crate::support::replica::{Replica, ReplicaSpec};

/// `teal serve` on the bundled config with the store at `store` and
/// `args` (the store flags).
fn spec(store: String, args: &[&str], env: &[(&str, &str)]) -> ReplicaSpec {
    ReplicaSpec {
        store,
        config: None,
        lease_secs: 2,
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        env: env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
    }
}

/// How many operations on web the stored state records.
async fn stored_history(store: &EtcdStore) -> usize {
    store
        .load()
        .await
        .expect("load the state from etcd")
        .map_or(0, |s| s.state.history.get("web").map_or(0, Vec::len))
}

/// Flips web to `to` through `replica` and asserts it succeeded.
async fn flip(replica: &Replica, to: &str) {
    let (code, out, err) = replica
        .cli(&[
            "flip",
            "web",
            "--to",
            to,
            "--skip-checks",
            "--timeout",
            "10s",
        ])
        .await;
    assert_eq!(code, 0, "flip to {to}:\n{out}\n{err}\n{}", replica.log());
}

/// Asserts that `teal serve` exited at start as it does when it cannot
/// load its state (73, `EX_CANTCREAT`) with a log naming the problem with
/// every word of `says` (case-insensitive).
fn assert_refused(what: &str, status: std::process::ExitStatus, log: &str, says: &[&str]) {
    assert_eq!(
        status.code(),
        Some(i32::from(teal::exit::EX_CANTCREAT)),
        "{what}: exit {status}\n{log}"
    );
    assert!(!log.contains("panicked"), "{what}: a panic\n{log}");
    let lower = log.to_lowercase();
    for word in says {
        assert!(
            lower.contains(&word.to_lowercase()),
            "{what}: the log does not say {word:?}:\n{log}"
        );
    }
    eprintln!(
        "{what}: {}",
        log.lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or_default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teal_speaks_tls_to_etcd_with_a_client_certificate() {
    let pki = Pki::new("etcd");
    let tls = EtcdTlsFiles {
        ca: pki.ca.clone(),
        server: pki.server("etcd-server"),
        client: pki.dns("prober", &["prober"]),
    };
    let etcd = Etcd::start_with(EtcdFlags {
        tls: Some(tls),
        ..EtcdFlags::default()
    })
    .await;
    let client = pki.dns("teal-client", &["teal"]);
    let (ca, cert, key) = (
        pki.ca.to_string_lossy().into_owned(),
        client.cert.to_string_lossy().into_owned(),
        client.key.to_string_lossy().into_owned(),
    );

    // With the CA and a client certificate: serves, and a flip lands in
    // etcd.
    let store = EtcdStore::open(etcd.options("/tls/")).expect("store");
    let replica = Replica::start(spec(
        etcd.url("/tls/"),
        &[
            "--store-ca",
            &ca,
            "--store-cert",
            &cert,
            "--store-key",
            &key,
        ],
        &[],
    ))
    .await;
    let before = stored_history(&store).await;
    flip(&replica, "green").await;
    assert_eq!(
        stored_history(&store).await,
        before + 1,
        "the flip is saved in etcd"
    );
    drop(replica);

    // Without a client certificate: etcd ends the handshake.
    let (status, log) =
        Replica::start_expecting_exit(spec(etcd.url("/tls/"), &["--store-ca", &ca], &[])).await;
    assert_refused(
        "no client certificate",
        status,
        &log,
        &["etcd asks for a client certificate", "--store-cert"],
    );

    // With a CA that did not sign etcd's certificate.
    let other = Pki::new("other");
    let other_ca = other.ca.to_string_lossy().into_owned();
    let (status, log) = Replica::start_expecting_exit(spec(
        etcd.url("/tls/"),
        &[
            "--store-ca",
            &other_ca,
            "--store-cert",
            &cert,
            "--store-key",
            &key,
        ],
        &[],
    ))
    .await;
    assert_refused(
        "a CA that does not match",
        status,
        &log,
        &["etcd", "certificate"],
    );

    // Plaintext to a TLS port.
    let (status, log) = Replica::start_expecting_exit(spec(etcd.url("/tls/"), &[], &[])).await;
    assert_refused("plaintext to TLS", status, &log, &["etcd", "--store-ca"]);
    let fatal = log
        .lines()
        .find(|l| l.starts_with("teal: "))
        .unwrap_or_default();
    assert!(
        fatal.contains("--store-ca"),
        "the reason teal stops names the flag that turns TLS on: {fatal}\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn teal_logs_in_to_etcd_and_renews_an_expired_token() {
    // Tokens expire after 1 s unused.
    let etcd = Etcd::start_with(EtcdFlags {
        auth_token_ttl: Some(1),
        ..EtcdFlags::default()
    })
    .await;
    enable_auth(&etcd, "/auth/", "teal", "teal-password").await;

    // Auth is on: without a user, etcd refuses.
    let anonymous = EtcdClient::new(etcd.options("/auth/")).expect("client");
    let err = anonymous
        .get(b"/auth/state")
        .await
        .expect_err("etcd with auth refuses an anonymous read");
    eprintln!("anonymous: {err}");

    // A token left unused past its TTL is renewed on the next request.
    let mut opts = etcd.options("/auth/");
    opts.user = Some(("teal".to_owned(), "teal-password".to_owned()));
    let client = EtcdClient::new(opts.clone()).expect("client");
    client
        .get(b"/auth/state")
        .await
        .expect("an authenticated read");
    tokio::time::sleep(Duration::from_secs(3)).await;
    client
        .get(b"/auth/state")
        .await
        .expect("a read after the token expired");

    // teal serve with --store-user and TEAL_STORE_PASSWORD: serves, and
    // its flips land in etcd, also after an idle spell past the TTL.
    let store = EtcdStore::open(opts).expect("store");
    let replica = Replica::start(spec(
        etcd.url("/auth/"),
        &["--store-user", "teal"],
        &[("TEAL_STORE_PASSWORD", "teal-password")],
    ))
    .await;
    let before = stored_history(&store).await;
    flip(&replica, "green").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    flip(&replica, "blue").await;
    // Its lease, leadership and watch went on through the idle spell: no
    // request failed for want of a live token.
    let log = replica.log();
    for trouble in [
        "lost the etcd lease",
        "cannot get an etcd lease",
        "watching the state failed",
        "invalid auth token",
    ] {
        assert!(!log.contains(trouble), "{trouble}:\n{log}");
    }
    assert_eq!(
        stored_history(&store).await,
        before + 2,
        "both flips are saved in etcd"
    );
    drop(replica);

    // A wrong password.
    let (status, log) = Replica::start_expecting_exit(spec(
        etcd.url("/auth/"),
        &["--store-user", "teal"],
        &[("TEAL_STORE_PASSWORD", "wrong")],
    ))
    .await;
    assert_refused(
        "a wrong password",
        status,
        &log,
        &["etcd", "invalid user id or password"],
    );

    // No user at all.
    let (status, log) = Replica::start_expecting_exit(spec(etcd.url("/auth/"), &[], &[])).await;
    assert_refused("no user", status, &log, &["etcd", "user name is empty"]);
}
