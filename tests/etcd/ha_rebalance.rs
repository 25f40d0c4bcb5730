//! A replica that restarted gets proxies back. Two replicas on one etcd,
//! four real Envoys whose bootstrap lists both (round robin), every xDS
//! connection aging after 2 s (`--xds-connection-age 2`): one replica is
//! killed with `kill -9`, every Envoy moves to the other, the killed one is
//! started again, and within a few ages some Envoys are back on it, every
//! Envoy connected to one of the two, and no request through them failed.
//! Without the age, the Envoys stay where they moved, and the test fails.

use std::time::Duration;

use crate::support::etcd::Etcd;
use crate::support::http::Upstream;
use crate::support::replica::{
    Replica, ReplicaSpec, edge_envoys, wait_spread, write_edge_groups_config,
};
use crate::support::world::bodies;
use crate::support::{Protocol, Traffic, free_port};

const ENVOYS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_replica_gets_its_share_of_proxies_back() {
    let blue = Upstream::start("blue").await;
    let green = Upstream::start("green").await;
    let listeners: Vec<u16> = (0..ENVOYS).map(|_| free_port()).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let config_path = write_edge_groups_config(dir.path(), blue.port, green.port, &listeners);
    let etcd = Etcd::start().await;
    let spec = ReplicaSpec {
        store: etcd.url("/rebalance/"),
        config: Some(config_path),
        lease_secs: 2,
        args: [
            "--watch-interval",
            "0.2",
            "--drain",
            "0.2",
            "--xds-connection-age",
            "2",
        ]
        .map(str::to_owned)
        .to_vec(),
        env: Vec::new(),
    };
    let mut replicas = vec![
        Replica::start(spec.clone()).await,
        Replica::start(spec.clone()).await,
    ];
    let xds: Vec<u16> = replicas.iter().map(|r| r.xds).collect();
    let envoys = edge_envoys(&xds, &listeners, |_| Protocol::Sotw).await;
    let mut traffic = Traffic::start_over(&listeners, "/", &[]);
    traffic.wait_for_count(ENVOYS * 5).await;

    // The second replica dies: its Envoys move to the first.
    let restarted = replicas[1].admin.clone();
    replicas[1].kill9().await;
    let all_on_one = wait_spread(
        &replicas,
        Duration::from_secs(30),
        "every Envoy on the replica left",
        |now| now.values().sum::<usize>() == ENVOYS,
    )
    .await;
    eprintln!("with one replica down: {all_on_one:?}");

    // Started again, it gets some back as connections age.
    replicas[1].restart().await;
    let back = wait_spread(
        &replicas,
        Duration::from_secs(60),
        "some Envoys back on the restarted replica",
        |now| now.get(&restarted).is_some_and(|n| *n >= 1) && now.values().sum::<usize>() == ENVOYS,
    )
    .await;
    eprintln!("after the restart: {back:?}");

    traffic.wait_for_count(traffic.count() + ENVOYS * 5).await;
    let seen = bodies(&traffic.stop().await);
    assert!(
        seen.iter().all(|b| b == "blue"),
        "answered by another fleet: {seen:?}"
    );
    drop(envoys);
}
