//! `kill -9` during saves: after a restart the state loads, and it is at
//! least as new as the last save the killed process saw succeed.
//!
//! The test binary re-executes itself with `TEAL_STATE_CRASH_DIR` set to
//! run [`writer_child`], which saves forever and prints `committed N` after
//! each save returned `Ok`; the parent kills it with SIGKILL mid-stream.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use teal::rollout::{HistoryEntry, Outcome, Split, Verb};
use teal::state::{FileStore, PersistedState, Revision, ServiceState, StateStore};

const DIR_VAR: &str = "TEAL_STATE_CRASH_DIR";

/// A state big enough (full history) that a kill often lands mid-write.
fn state(seq: u64) -> PersistedState {
    let mut s = PersistedState {
        version_seq: seq,
        next_operation_id: seq + 1,
        ..PersistedState::default()
    };
    let live = if seq.is_multiple_of(2) {
        "blue"
    } else {
        "green"
    };
    s.services.insert(
        "api".into(),
        ServiceState {
            weights: Split::from([(live.to_owned(), 100)]),
            ..ServiceState::default()
        },
    );
    for id in 0..120 {
        s.record(
            "api",
            HistoryEntry {
                id,
                verb: Verb::Flip,
                actor: "crash-test".into(),
                started: SystemTime::UNIX_EPOCH,
                finished: SystemTime::UNIX_EPOCH + Duration::from_millis(seq),
                from: Split::from([("blue".into(), 100)]),
                to: Split::from([("green".into(), 100)]),
                version: Some(format!("{seq}-{id}")),
                outcome: Outcome::Succeeded,
                convergence: None,
                acks: vec![("edge-1".into(), Duration::from_millis(id))],
                target: None,
                warnings: Vec::new(),
                not_waited_for: Vec::new(),
            },
        );
    }
    s
}

/// The child: continues from whatever is stored, saving `seq + 1` forever.
/// Does nothing when run as an ordinary test.
#[tokio::test]
async fn writer_child() {
    let Some(dir) = std::env::var_os(DIR_VAR) else {
        return;
    };
    let store = FileStore::open(dir.as_ref()).expect("open");
    let (mut seq, mut rev) = match store.load().await.expect("load") {
        Some(s) => (s.state.version_seq, s.revision),
        None => (0, Revision(0)),
    };
    loop {
        seq += 1;
        rev = store.save(&state(seq), rev).await.expect("save");
        println!("committed {seq}");
    }
}

/// The number in a `committed N` line; libtest may print `test writer_child ... `
/// before the first one on the same line.
fn committed(line: &str) -> Option<u64> {
    let (_, n) = line.rsplit_once("committed ")?;
    Some(n.trim().parse().expect("a number after `committed`"))
}

#[tokio::test]
async fn kill_during_saves_never_loses_a_committed_state() {
    let dir = tempfile::tempdir().expect("test step");
    let mut last_loaded = 0;
    for (round, kill_after) in [3_u64, 40, 1, 17, 90].into_iter().enumerate() {
        let mut child = Command::new(std::env::current_exe().expect("test step"))
            .args(["writer_child", "--exact", "--nocapture", "--test-threads=1"])
            .env(DIR_VAR, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("test step");
        let mut lines = BufReader::new(child.stdout.take().expect("test step")).lines();
        let mut reported = Vec::new();
        for line in lines.by_ref() {
            if let Some(n) = committed(&line.expect("test step")) {
                reported.push(n);
                if reported.len() as u64 == kill_after {
                    child.kill().expect("test step"); // SIGKILL
                    break;
                }
            }
        }
        child.wait().expect("test step");
        // Lines already in the pipe were committed too.
        for line in lines {
            if let Some(n) = committed(&line.expect("test step")) {
                reported.push(n);
            }
        }
        let last = *reported.last().expect("the child committed something");
        assert_eq!(
            reported[0],
            last_loaded + 1,
            "round {round} continued from the stored state"
        );

        // The lock died with the child.
        let store = FileStore::open(dir.path()).expect("test step");
        let stored = store
            .load()
            .await
            .expect("test step")
            .expect("a state after the crash");
        let seq = stored.state.version_seq;
        assert!(
            seq >= last,
            "round {round}: loaded {seq}, child had committed {last}"
        );
        // At most one save was in flight when the child died.
        assert!(
            seq <= last + 1,
            "round {round}: loaded {seq} beyond {last} + 1"
        );
        assert_eq!(stored.state, state(seq), "round {round}: state is whole");
        assert_eq!(stored.revision, Revision(seq), "one revision per save");
        last_loaded = seq;
    }
}
