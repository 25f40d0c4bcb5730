//! The etcd state store against a real etcd: compare-and-swap saves,
//! replicas learning of each other's saves through the watch, etcd going
//! away and coming back, compaction, and hostile values.

use std::time::Duration;

use crate::support::etcd::Etcd;
use teal::state::etcd::pb;
use teal::state::{EtcdStore, PersistedState, Revision, StateError, StateStore, Stored};

fn state(seq: u64) -> PersistedState {
    PersistedState {
        version_seq: seq,
        next_operation_id: seq * 10,
        ..PersistedState::default()
    }
}

/// Waits until `rx` holds a state at `revision` or later.
async fn watched(rx: &mut tokio::sync::watch::Receiver<Option<Stored>>, revision: u64) -> Stored {
    let got = tokio::time::timeout(
        Duration::from_secs(20),
        rx.wait_for(|s| s.as_ref().is_some_and(|s| s.revision.0 >= revision)),
    )
    .await
    .unwrap_or_else(|_| panic!("no watched state at r{revision} within 20 s"))
    .expect("watch open");
    got.clone().expect("some")
}

async fn put_raw(etcd: &Etcd, key: &str, value: Vec<u8>) {
    let client = teal::state::etcd::EtcdClient::new(etcd.options("/")).expect("client");
    client
        .kv()
        .put(pb::PutRequest {
            key: key.as_bytes().to_vec(),
            value,
            lease: 0,
        })
        .await
        .expect("put");
}

#[tokio::test]
async fn saves_are_compare_and_swap_and_replicas_see_each_other() {
    let etcd = Etcd::start().await;
    let a = EtcdStore::open(etcd.options("/t1/")).expect("a");
    let b = EtcdStore::open(etcd.options("/t1/")).expect("b");
    assert_eq!(a.load().await.expect("load"), None);
    let r1 = a.save(&state(1), Revision(0)).await.expect("first save");
    assert_eq!(r1, Revision(1));
    // b did not load since: its save is refused and says what is stored.
    match b.save(&state(7), Revision(0)).await {
        Err(StateError::Conflict { expected, found }) => {
            assert_eq!((expected, found), (Revision(0), Revision(1)));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let mut rx = b.watch().expect("etcd stores watch");
    assert_eq!(watched(&mut rx, 1).await.state, state(1));
    let loaded = b.load().await.expect("load").expect("stored");
    assert_eq!(loaded.revision, Revision(1));
    let r2 = b.save(&state(2), loaded.revision).await.expect("b saves");
    assert_eq!(r2, Revision(2));
    let mut rx_a = a.watch().expect("watch");
    let seen = watched(&mut rx_a, 2).await;
    assert_eq!(seen.state, state(2));
    // Saving what is stored writes nothing and keeps the revision.
    assert_eq!(b.save(&state(2), r2).await.expect("same"), r2);
    // A different prefix is a different state.
    let other = EtcdStore::open(etcd.options("/t2/")).expect("other");
    assert_eq!(other.load().await.expect("load"), None);
}

#[tokio::test]
async fn etcd_away_is_unavailable_and_the_watch_catches_up_when_it_returns() {
    let mut etcd = Etcd::start().await;
    let a = EtcdStore::open(etcd.options("/t/")).expect("a");
    let b = EtcdStore::open(etcd.options("/t/")).expect("b");
    let mut rx = b.watch().expect("watch");
    let r1 = a.save(&state(1), Revision(0)).await.expect("save");
    watched(&mut rx, 1).await;

    etcd.kill().await;
    let started = std::time::Instant::now();
    let err = a.save(&state(2), r1).await.expect_err("etcd is down");
    assert!(
        matches!(err, StateError::Unavailable { .. }),
        "expected Unavailable, got {err:?}"
    );
    assert!(err.to_string().contains("store unavailable"), "{err}");
    // etcd answered this client before it went: its going away is not a
    // TLS port spoken to in plaintext.
    assert!(!err.to_string().contains("--store-ca"), "{err}");
    // Generously bounded: a hang would be the bug.
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(matches!(
        a.load().await,
        Err(StateError::Unavailable { .. })
    ));

    etcd.restart().await;
    let r2 = a.save(&state(2), r1).await.expect("etcd is back");
    assert_eq!(watched(&mut rx, r2.0).await.state, state(2));
}

#[tokio::test]
async fn a_compacted_history_is_read_again_not_fatal() {
    let mut etcd = Etcd::start().await;
    let a = EtcdStore::open(etcd.options("/t/")).expect("a");
    let b = EtcdStore::open(etcd.options("/t/")).expect("b");
    let mut rx = b.watch().expect("watch");
    let mut rev = a.save(&state(1), Revision(0)).await.expect("save");
    watched(&mut rx, 1).await;
    // b's watch breaks; meanwhile several saves land and etcd compacts
    // its whole history, so no watch can start where b's stopped.
    etcd.kill().await;
    etcd.restart().await;
    for seq in 2..6 {
        rev = a.save(&state(seq), rev).await.expect("save");
    }
    let client = teal::state::etcd::EtcdClient::new(etcd.options("/")).expect("client");
    let (_, now) = client.get(b"/t/state").await.expect("get");
    client
        .kv()
        .compact(pb::CompactionRequest {
            revision: now,
            physical: true,
        })
        .await
        .expect("compact");
    rev = a.save(&state(6), rev).await.expect("save");
    assert_eq!(watched(&mut rx, rev.0).await.state, state(6));
}

#[tokio::test]
async fn hostile_values_are_refused_whole() {
    let etcd = Etcd::start().await;
    let mut opts = etcd.options("/t/");
    opts.max_value_bytes = 4096;
    let store = EtcdStore::open(opts).expect("store");

    put_raw(&etcd, "/t/state", vec![b' '; 5000]).await;
    assert!(
        matches!(
            store.load().await,
            Err(StateError::TooLarge {
                size: 5000,
                limit: 4096,
                ..
            })
        ),
        "an oversized value is refused"
    );
    put_raw(&etcd, "/t/state", b"{\"format\": 1, \"state\": 3}".to_vec()).await;
    assert!(matches!(
        store.load().await,
        Err(StateError::Corrupt { .. })
    ));
    put_raw(&etcd, "/t/state", b"{\"format\": 9}".to_vec()).await;
    assert!(matches!(
        store.load().await,
        Err(StateError::NewerFormat { found: 9, .. })
    ));
    // None of them reached a watcher.
    let rx = store.watch().expect("watch");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(*rx.borrow(), None);
    // A state over the limit is not written either.
    let mut big = state(1);
    big.history.insert("svc".into(), Vec::new());
    big.services.insert("x".repeat(5000), Default::default());
    assert!(matches!(
        store.save(&big, Revision(3)).await,
        Err(StateError::TooLarge { .. })
    ));
}

#[tokio::test]
async fn a_fenced_store_saves_only_while_its_lease_holds_the_leader_key() {
    let etcd = Etcd::start().await;
    let client = teal::state::etcd::EtcdClient::new(etcd.options("/fence/")).expect("client");
    let fence = teal::state::etcd::Fence::default();
    let store = EtcdStore::fenced(client.clone(), fence.clone()).expect("store");
    let not_leading = |r: Result<Revision, StateError>| match r {
        Err(StateError::NotLeading { .. }) => {}
        other => panic!("expected the write fenced off, got {other:?}"),
    };
    // Not leading: nothing is written.
    not_leading(store.save(&state(1), Revision(0)).await);
    let grant = |ttl| {
        let mut lease = client.lease();
        async move {
            lease
                .lease_grant(pb::LeaseGrantRequest { ttl, id: 0 })
                .await
                .expect("lease")
                .into_inner()
                .id
        }
    };
    let (mine, theirs) = (grant(30).await, grant(30).await);
    client
        .kv()
        .put(pb::PutRequest {
            key: client.key("leader"),
            value: b"{}".to_vec(),
            lease: mine,
        })
        .await
        .expect("put the leader key");
    // Leading under a lease that does not hold the key (a deposed
    // leader that has not heard yet): fenced off by etcd itself.
    fence.set(Some(theirs));
    not_leading(store.save(&state(1), Revision(0)).await);
    assert_eq!(store.load().await.expect("load"), None, "nothing landed");
    // Leading under the lease that holds it: saved.
    fence.set(Some(mine));
    let r1 = store.save(&state(1), Revision(0)).await.expect("saved");
    // The lease ends (revoked here; expired or partitioned alike): the
    // next write does not land, even of the bytes already stored.
    client
        .lease()
        .lease_revoke(pb::LeaseRevokeRequest { id: mine })
        .await
        .expect("revoke");
    not_leading(store.save(&state(2), r1).await);
    not_leading(store.save(&state(1), r1).await);
    let stored = store.load().await.expect("load").expect("stored");
    assert_eq!(stored.state, state(1));
    assert_eq!(stored.revision, r1);
}
