//! A registered fleet on replicas: `teal fleet add` sent to a follower
//! reaches the leader (the follower names it, the CLI asks there once),
//! and every replica then serves the registration under one version, since
//! registrations travel in the stored state. Real etcd, three real
//! `teal serve` processes, the real CLI.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support;
use crate::support::etcd::Etcd;
use crate::support::replica::{Replica, ReplicaSpec};

/// `web`: blue in the file, green registered.
const CONFIG: &str = r#"
services:
  web:
    live: blue
    fleets:
      blue: {endpoints: [127.0.0.1:1]}
      green: {endpoints: registered}
groups:
  edge:
    listeners:
      public:
        kind: edge
        address: 127.0.0.1:10000
        virtual_hosts:
          all:
            domains: ["*"]
            routes:
              - {prefix: /, service: web}
"#;

/// The admin address of the leader once every replica lists the same one.
async fn leader(replicas: &[Replica]) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut seen = Vec::new();
        for r in replicas {
            let leader = r.json(&["status"]).await.and_then(|s| {
                s["replicas"].as_array().and_then(|list| {
                    list.iter()
                        .find(|x| x["leader"] == Value::Bool(true))
                        .and_then(|x| x["admin"].as_str().map(str::to_owned))
                })
            });
            seen.push(leader);
        }
        if let Some(Some(first)) = seen.first()
            && seen.iter().all(|s| s.as_deref() == Some(first.as_str()))
        {
            return first.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader in 30 s: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each replica's served version and, per replica, whether it refuses to
/// lead (and why).
async fn versions(replicas: &[Replica]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for r in replicas {
        out.push(
            r.json(&["status"])
                .await
                .and_then(|s| s["version"].as_str().map(str::to_owned)),
        );
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_through_a_follower_is_served_by_every_replica() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("teal.yaml");
    std::fs::write(&config, CONFIG).expect("write the config");
    let mut replicas = Vec::new();
    for _ in 0..3 {
        replicas.push(
            Replica::start(ReplicaSpec {
                store: etcd.url("/registered/"),
                config: Some(config.clone()),
                lease_secs: 2,
                ..ReplicaSpec::default()
            })
            .await,
        );
    }
    let leader = leader(&replicas).await;
    let follower = replicas
        .iter()
        .find(|r| r.admin != leader)
        .expect("a follower");

    let (code, out, err) = follower
        .cli(&["fleet", "add", "web", "green", "127.0.0.1:2"])
        .await;
    assert_eq!(
        code, 0,
        "sent to a follower, done by the leader:\n{out}\n{err}"
    );

    // Every replica serves it, under the leader's version, and none
    // refuses the stored state (a replica whose render differs would).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = versions(&replicas).await;
        let shown = {
            let mut all = true;
            for r in &replicas {
                let fleet = r.json(&["fleet", "show", "web", "green"]).await;
                let listed = fleet
                    .as_ref()
                    .and_then(|f| f["endpoints"].as_array())
                    .is_some_and(|e| {
                        e.iter()
                            .any(|x| x["address"].as_str() == Some("127.0.0.1:2"))
                    });
                all &= listed;
            }
            all
        };
        if shown && v.iter().all(|x| x.is_some() && *x == v[0]) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas disagree 20 s after the registration: versions {v:?}, all list it: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for r in &replicas {
        let status = r.json(&["status"]).await.expect("status");
        for x in status["replicas"].as_array().expect("replicas") {
            assert!(
                x["ineligible"].is_null(),
                "a replica refuses to lead after the registration: {x}"
            );
        }
    }

    // The version is the leader's and moves by EDS alone: a second change
    // through another follower lands the same way.
    let other = replicas
        .iter()
        .filter(|r| r.admin != leader)
        .nth(1)
        .expect("a second follower");
    let (code, out, err) = other
        .cli(&["fleet", "remove", "web", "green", "127.0.0.1:2", "--force"])
        .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = versions(&replicas).await;
        let fleet = replicas[0].json(&["fleet", "show", "web", "green"]).await;
        let empty = fleet
            .as_ref()
            .and_then(|f| f["endpoints"].as_array())
            .is_some_and(Vec::is_empty);
        if empty && v.iter().all(|x| x.is_some() && *x == v[0]) {
            break;
        }
        assert!(Instant::now() < deadline, "replicas disagree: {v:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two replicas on `config` (the same file unless `other` is given for the
/// second); the leader first.
async fn two(
    etcd: &Etcd,
    prefix: &str,
    config: &std::path::Path,
    other: Option<&std::path::Path>,
) -> Vec<Replica> {
    let spec = |config: &std::path::Path| ReplicaSpec {
        store: etcd.url(prefix),
        config: Some(config.to_owned()),
        lease_secs: 2,
        ..ReplicaSpec::default()
    };
    let first = Replica::start(spec(config)).await;
    let leader = leader(std::slice::from_ref(&first)).await;
    assert_eq!(leader, first.admin, "the first replica leads");
    let second = Replica::start(spec(other.unwrap_or(config))).await;
    vec![first, second]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_would_empty_the_live_fleet_is_refused_by_every_replica() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("teal.yaml");
    std::fs::write(&config, CONFIG).expect("write the config");
    let replicas = two(&etcd, "/reload/", &config, None).await;
    let before = versions(&replicas).await;
    support::write_atomically(
        &config,
        &CONFIG.replace(
            "blue: {endpoints: [127.0.0.1:1]}",
            "blue: {endpoints: registered}",
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    for r in &replicas {
        while !r.log().contains("config reload refused") {
            assert!(
                Instant::now() < deadline,
                "{} took the reload:\n{}",
                r.admin,
                r.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let fleet = r
            .json(&["fleet", "show", "web", "blue"])
            .await
            .expect("fleet");
        assert_eq!(fleet["source"], "file", "{fleet}");
    }
    assert_eq!(versions(&replicas).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_expire_on_the_leader_only_and_a_differing_follower_never_writes() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("teal.yaml");
    std::fs::write(&config, CONFIG).expect("write the config");
    // The follower's config renders other listeners: it may not lead, and
    // must not write.
    let differs = dir.path().join("differs.yaml");
    std::fs::write(
        &differs,
        CONFIG.replace("127.0.0.1:10000", "127.0.0.1:10001"),
    )
    .expect("write the other config");
    let mut replicas = two(&etcd, "/expiry/", &config, Some(&differs)).await;
    // And one that agrees: it holds the registration too, and its TTL.
    replicas.push(
        Replica::start(ReplicaSpec {
            store: etcd.url("/expiry/"),
            config: Some(config.clone()),
            lease_secs: 2,
            ..ReplicaSpec::default()
        })
        .await,
    );
    let (code, out, err) = replicas[0]
        .cli(&["register", "web", "green", "127.0.0.1:2", "--ttl", "2s"])
        .await;
    assert_eq!(code, 0, "{out}\n{err}");
    // It expires, on the leader.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let fleet = replicas[0].json(&["fleet", "show", "web", "green"]).await;
        if fleet
            .as_ref()
            .and_then(|f| f["endpoints"].as_array())
            .is_some_and(Vec::is_empty)
        {
            break;
        }
        assert!(Instant::now() < deadline, "never expired: {fleet:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The same replica leads; the followers wrote nothing and tried
    // nothing.
    assert_eq!(leader(&replicas).await, replicas[0].admin);
    for follower in &replicas[1..] {
        let log = follower.log();
        assert!(!log.contains("could not expire"), "{log}");
    }
    assert!(
        !replicas[0].log().contains("resigned"),
        "{}",
        replicas[0].log()
    );
}
