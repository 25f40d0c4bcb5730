use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::*;
use crate::rollout::machine::{Record, Stage};
use crate::rollout::plan::{Change, Plan};
use crate::rollout::{Outcome, Reason, Verb};

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn entry(id: u64) -> HistoryEntry {
    HistoryEntry {
        id,
        verb: Verb::Flip,
        actor: "ops".into(),
        started: at(1_700_000_000_000 + id),
        finished: at(1_700_000_000_500 + id),
        from: Split::from([("blue".into(), 100)]),
        to: Split::from([("green".into(), 100)]),
        version: Some(Version::new(id, format!("v{id}"))),
        outcome: if id.is_multiple_of(2) {
            Outcome::Succeeded
        } else {
            Outcome::RolledBack {
                reason: Reason::Recorded("proxy edge-1 NACKed".into()),
            }
        },
        convergence: Some(Duration::from_millis(42)),
        acks: vec![("edge-1".into(), Duration::from_millis(7))],
        target: Some(Split::from([("green".into(), 100)])),
        warnings: Vec::new(),
        not_waited_for: Vec::new(),
    }
}

fn sample(seq: u64) -> PersistedState {
    let mut s = PersistedState {
        version_seq: seq,
        next_operation_id: 7,
        ..PersistedState::default()
    };
    s.services.insert(
        "api".into(),
        ServiceState {
            weights: Split::from([("blue".into(), 10), ("green".into(), 90)]),
            rollback_to: Some(Split::from([("blue".into(), 100), ("green".into(), 0)])),
            retired: ["red".to_owned()].into(),
            operation: Some(Record {
                id: 7,
                verb: Verb::Retire,
                actor: "ops".into(),
                started: at(1_700_000_000_000),
                plan: Plan {
                    steps: vec![Change::default()],
                    checks: false,
                    timeout: Duration::from_secs(30),
                    interval: Duration::from_secs(100),
                    wait_first: true,
                    drain_timeout: Duration::from_secs(60),
                    analysis: None,
                },
                original: Change::default(),
                rollback_before: None,
                step: 1,
                stage: Stage::Pending,
                confirmed_version: None,
                confirmed: None,
                wait_until: Some(at(1_700_000_100_000)),
                warnings: Vec::new(),
                baseline: None,
            }),
            both_fleets_since: Some(at(1_699_999_000_000)),
        },
    );
    s.record("api", entry(1));
    s.record("api", entry(2));
    s
}

#[test]
fn history_keeps_the_newest_entries() {
    let mut s = PersistedState::default();
    for id in 0..(HISTORY_LIMIT as u64 + 5) {
        s.record("api", entry(id));
    }
    let h = &s.history["api"];
    assert_eq!(h.len(), HISTORY_LIMIT);
    assert_eq!(h[0].id, 5);
    assert_eq!(
        s.history_newest_first("api")[0].id,
        HISTORY_LIMIT as u64 + 4
    );
    assert!(s.history_newest_first("web").is_empty());
}

#[test]
fn json_is_readable_and_round_trips() {
    let s = sample(3);
    let json = serde_json::to_value(&s).expect("test step");
    let api = &json["services"]["api"];
    assert_eq!(api["both_fleets_since_unix_ms"], 1_699_999_000_000_u64);
    assert_eq!(
        api["operation"]["wait_until_unix_ms"],
        1_700_000_100_000_u64
    );
    assert_eq!(api["operation"]["plan"]["interval_ms"], 100_000);
    assert_eq!(api["operation"]["stage"]["kind"], "pending");
    assert_eq!(api["rollback_to"]["blue"], 100);
    let h = &json["history"]["api"][0];
    assert_eq!(h["convergence_ms"], 42);
    assert_eq!(h["acks_ms"], serde_json::json!([["edge-1", 7]]));
    assert_eq!(h["outcome"]["kind"], "rolled_back");
    assert_eq!(h["version"], "1-v1", "a version is stored as its string");
    assert_eq!(json["history"]["api"][1]["outcome"]["kind"], "succeeded");
    let back: PersistedState = serde_json::from_value(json).expect("test step");
    assert_eq!(back, s);
}

/// The checks' digest and the cordons are in the state only when set, so
/// a state without them reads as before and a state saved before teal had
/// them loads, comparing no checks and with no cordons; set, they round
/// trip.
#[test]
fn a_state_without_checks_digest_or_cordons_loads_and_with_them_round_trips() {
    let old = serde_json::to_value(sample(3)).expect("test step");
    assert!(old.get("checks_digest").is_none() && old.get("cordons").is_none());
    let back: PersistedState = serde_json::from_value(old).expect("an older state loads");
    assert_eq!((back.checks_digest, back.cordons.len()), (None, 0));

    let mut s = sample(3);
    s.checks_digest = Some("0123456789abcdef".into());
    s.cordons.insert(
        "edge-7".into(),
        crate::xds::cordon::Cordon {
            reason: "stuck".into(),
            actor: "ops".into(),
            since_unix_ms: 5,
        },
    );
    let json = serde_json::to_value(&s).expect("test step");
    assert_eq!(json["checks_digest"], "0123456789abcdef");
    assert_eq!(json["cordons"]["edge-7"]["reason"], "stuck");
    let back: PersistedState = serde_json::from_value(json).expect("test step");
    assert_eq!(back, s);
}

/// A history entry names its version as a string, or null when nothing
/// was committed; one that names something else is refused as the stored
/// version is.
#[test]
fn a_history_entry_reads_its_version_from_the_string_or_null() {
    let mut json = serde_json::to_value(entry(1)).expect("test step");
    json["version"] = serde_json::json!("12-ab34");
    let back: HistoryEntry = serde_json::from_value(json.clone()).expect("test step");
    assert_eq!(back.version, Some(Version::new(12, "ab34")));
    json["version"] = serde_json::Value::Null;
    let back: HistoryEntry = serde_json::from_value(json.clone()).expect("test step");
    assert_eq!(back.version, None);
    json["version"] = serde_json::json!("not a version");
    assert!(serde_json::from_value::<HistoryEntry>(json).is_err());
}

#[tokio::test]
async fn file_store_round_trip_survives_reopening() {
    let dir = tempfile::tempdir().expect("test step");
    {
        let store = FileStore::open(dir.path()).expect("test step");
        assert_eq!(store.load().await.expect("test step"), None);
        assert_eq!(
            store
                .save(&sample(1), Revision(0))
                .await
                .expect("test step"),
            Revision(1)
        );
        assert_eq!(
            store
                .save(&sample(2), Revision(1))
                .await
                .expect("test step"),
            Revision(2)
        );
        assert!(store.describe().contains("state.json"));
        assert!(store.watch().is_none());
    }
    let store = FileStore::open(dir.path()).expect("test step");
    let stored = store.load().await.expect("test step").expect("test step");
    assert_eq!(stored.revision, Revision(2));
    assert_eq!(stored.state, sample(2));
    assert_eq!(
        store
            .save(&sample(3), Revision(2))
            .await
            .expect("test step"),
        Revision(3)
    );
}

#[tokio::test]
async fn file_store_save_is_compare_and_swap() {
    let dir = tempfile::tempdir().expect("test step");
    let store = FileStore::open(dir.path()).expect("test step");
    store
        .save(&sample(1), Revision(0))
        .await
        .expect("test step");
    let err = store
        .save(&sample(9), Revision(0))
        .await
        .expect_err("should fail");
    assert!(
        matches!(
            err,
            StateError::Conflict {
                expected: Revision(0),
                found: Revision(1)
            }
        ),
        "{err}"
    );
    // Also when the revision is not cached yet (fresh process).
    drop(store);
    let store = FileStore::open(dir.path()).expect("test step");
    let err = store
        .save(&sample(9), Revision(5))
        .await
        .expect_err("should fail");
    assert!(
        matches!(
            err,
            StateError::Conflict {
                found: Revision(1),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        store
            .load()
            .await
            .expect("test step")
            .expect("test step")
            .state,
        sample(1)
    );
}

#[tokio::test]
async fn second_open_of_a_directory_is_locked() {
    let dir = tempfile::tempdir().expect("test step");
    let store = FileStore::open(dir.path()).expect("test step");
    let err = FileStore::open(dir.path()).expect_err("should fail");
    assert!(matches!(err, StateError::Locked { .. }), "{err}");
    drop(store);
    FileStore::open(dir.path()).expect("test step");
}

#[tokio::test]
async fn leftover_temporary_file_is_ignored() {
    let dir = tempfile::tempdir().expect("test step");
    let store = FileStore::open(dir.path()).expect("test step");
    store
        .save(&sample(1), Revision(0))
        .await
        .expect("test step");
    std::fs::write(
        dir.path().join("state.json.tmp"),
        b"{\"format\": 1, \"revis",
    )
    .expect("test step");
    let stored = store.load().await.expect("test step").expect("test step");
    assert_eq!((stored.revision, stored.state), (Revision(1), sample(1)));
    store
        .save(&sample(2), Revision(1))
        .await
        .expect("test step");
    assert_eq!(
        store
            .load()
            .await
            .expect("test step")
            .expect("test step")
            .state,
        sample(2)
    );
}

#[tokio::test]
async fn corrupt_state_is_an_error_not_an_empty_state() {
    for bad in [
        &b"{\"format\": 1, \"revis"[..],
        b"",
        b"{\"format\": 0, \"revision\": 1, \"state\": {}}",
    ] {
        let dir = tempfile::tempdir().expect("test step");
        let store = FileStore::open(dir.path()).expect("test step");
        std::fs::write(store.state_path(), bad).expect("test step");
        let err = store.load().await.expect_err("should fail");
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        // A save does not paper over it either.
        let err = store
            .save(&sample(1), Revision(0))
            .await
            .expect_err("should fail");
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
    }
}

#[tokio::test]
async fn memory_store_has_the_same_semantics() {
    let store = MemoryStore::new();
    assert!(store.watch().is_none());
    assert_eq!(store.load().await.expect("test step"), None);
    assert_eq!(
        store
            .save(&sample(1), Revision(0))
            .await
            .expect("test step"),
        Revision(1)
    );
    let err = store
        .save(&sample(2), Revision(0))
        .await
        .expect_err("should fail");
    assert!(
        matches!(
            err,
            StateError::Conflict {
                found: Revision(1),
                ..
            }
        ),
        "{err}"
    );
    store.fail_saves(true);
    assert!(matches!(
        store.save(&sample(2), Revision(1)).await,
        Err(StateError::Io { .. })
    ));
    store.fail_saves(false);
    assert_eq!(
        store
            .save(&sample(2), Revision(1))
            .await
            .expect("test step"),
        Revision(2)
    );
    let stored = store.load().await.expect("test step").expect("test step");
    assert_eq!((stored.revision, stored.state), (Revision(2), sample(2)));
}

#[tokio::test]
async fn watchable_memory_store_reports_other_replicas_saves() {
    let a = MemoryStore::watchable();
    let b = a.clone();
    let mut rx = b.watch().expect("test step");
    a.save(&sample(4), Revision(0)).await.expect("test step");
    rx.changed().await.expect("test step");
    let seen = rx.borrow_and_update().clone().expect("test step");
    assert_eq!((seen.revision, seen.state.version_seq), (Revision(1), 4));
    assert_eq!(
        b.load()
            .await
            .expect("test step")
            .expect("test step")
            .revision,
        Revision(1)
    );
}

#[test]
fn store_urls_parse_to_a_directory_or_etcd() {
    use super::StoreSpec;
    assert_eq!(
        "file:///var/lib/teal".parse::<StoreSpec>(),
        Ok(StoreSpec::File("/var/lib/teal".into()))
    );
    assert_eq!(
        "etcd://10.0.0.1:2379,10.0.0.2:2379/prod".parse::<StoreSpec>(),
        Ok(StoreSpec::Etcd {
            endpoints: vec!["10.0.0.1:2379".into(), "10.0.0.2:2379".into()],
            prefix: "/prod/".into(),
        })
    );
    assert_eq!(
        "etcd://127.0.0.1:2379".parse::<StoreSpec>(),
        Ok(StoreSpec::Etcd {
            endpoints: vec!["127.0.0.1:2379".into()],
            prefix: "/teal/".into(),
        })
    );
    for bad in [
        "",
        "file://",
        "etcd://",
        "etcd://host",
        "http://x:1",
        "/var/lib/teal",
    ] {
        assert!(bad.parse::<StoreSpec>().is_err(), "{bad:?}");
    }
}

#[test]
fn a_write_fenced_off_is_reported_as_the_store_being_unavailable_here() {
    let e: crate::rollout::RolloutError = StateError::NotLeading {
        store: "etcd://127.0.0.1:2379/teal/".into(),
    }
    .into();
    assert_eq!(e.kind(), crate::rollout::ErrorKind::StoreUnavailable);
    assert!(e.to_string().contains("store unavailable"), "{e}");
    assert!(e.to_string().contains("does not lead"), "{e}");
}
