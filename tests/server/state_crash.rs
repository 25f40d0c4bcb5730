//! `kill -9` during saves: after a restart the state loads, and it is at
//! least as new as the last save the killed process saw succeed.
//!
//! The test binary re-executes itself with `TEAL_STATE_CRASH_DIR` set to
//! run [`child_process_writer`] (ignored as a test of its own: it is the
//! child, not a test), which saves forever and prints `committed N` after
//! each save returned `Ok`. The parent kills it with SIGKILL in two ways:
//! at a line count (wherever the child then is), and, deterministically,
//! while the child is held inside a save, at each point where a crash
//! leaves something different on disk ([`SaveStep`]): after the temporary
//! file is written and before the rename, and after the rename. A save
//! that wrote `state.json` in place, or renamed before the temporary file
//! was whole, fails the held rounds.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use teal::rollout::{HistoryEntry, Outcome, Split, Verb, Version};
use teal::state::{FileStore, PersistedState, Revision, SaveStep, ServiceState, StateStore};

use crate::support;

const DIR_VAR: &str = "TEAL_STATE_CRASH_DIR";

/// `STEP:SEQ`: the child stops inside the save of `SEQ` at `STEP`
/// (`temp` or `renamed`), says `held STEP SEQ`, and waits to be killed.
const HOLD_VAR: &str = "TEAL_STATE_CRASH_HOLD";
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
                version: Some(Version::new(seq, id.to_string())),
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

/// The child: continues from whatever is stored, saving `seq + 1` forever
/// (holding inside one save when [`HOLD_VAR`] says so). Not a test: the
/// tests below run it in a child process.
#[tokio::test]
#[ignore = "the child process of the crash tests, run by them"]
async fn child_process_writer() {
    let dir = std::env::var_os(DIR_VAR).expect("run by the crash tests, with TEAL_STATE_CRASH_DIR");
    let store = FileStore::open(dir.as_ref()).expect("open");
    if let Ok(hold) = std::env::var(HOLD_VAR) {
        let (step, seq) = hold.split_once(':').expect("STEP:SEQ");
        let step = match step {
            "temp" => SaveStep::TempWritten,
            "renamed" => SaveStep::Renamed,
            other => panic!("unknown step {other}"),
        };
        let seq: u64 = seq.parse().expect("a number");
        // One save, one revision: revision N holds seq N (see below).
        store.observe_saves(move |at, revision| {
            if at == step && revision == Revision(seq) {
                println!("held {at:?} {seq}");
                loop {
                    std::thread::sleep(Duration::from_secs(60));
                }
            }
        });
    }
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

/// The directory opened again after a kill (the lock died with the
/// child), and the state it holds.
async fn reopen(dir: &std::path::Path) -> (FileStore, teal::state::Stored) {
    let store = FileStore::open(dir).expect("test step");
    let stored = store
        .load()
        .await
        .expect("test step")
        .expect("a state after the crash");
    (store, stored)
}

/// How the child is run: the ignored test, alone.
fn child_args() -> [String; 5] {
    [
        support::test_name(module_path!(), "child_process_writer"),
        "--exact".to_owned(),
        "--ignored".to_owned(),
        "--nocapture".to_owned(),
        "--test-threads=1".to_owned(),
    ]
}

/// The number in a `committed N` line; libtest may print `test child_process_writer ... `
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
            .args(child_args())
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
        let (_store, stored) = reopen(dir.path()).await;
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

/// The child held inside the save of `seq` at `step`, then killed: what
/// the directory holds afterwards.
fn kill_held(dir: &std::path::Path, step: &str, seq: u64) {
    let mut child = Command::new(std::env::current_exe().expect("test step"))
        .args(child_args())
        .env(DIR_VAR, dir)
        .env(HOLD_VAR, format!("{step}:{seq}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("test step");
    let lines = BufReader::new(child.stdout.take().expect("test step")).lines();
    let mut held = false;
    for line in lines {
        let line = line.expect("test step");
        if line.contains("held ") {
            held = true;
            break;
        }
    }
    // SIGKILL while the child sits inside the save.
    child.kill().expect("test step");
    child.wait().expect("test step");
    assert!(held, "the child never reached {step} of save {seq}");
}

/// Deterministic crash points, many rounds: killed after the temporary
/// file is whole but before the rename, `state.json` still holds the
/// previous save whole and the temporary file the new one (so the kill
/// landed inside that window, and the write did not go to `state.json`);
/// killed after the rename, `state.json` holds the new save. Each restart
/// continues from what it loads.
#[tokio::test]
async fn kills_inside_a_save_leave_the_old_or_the_new_state_whole() {
    let dir = tempfile::tempdir().expect("test step");
    let mut stored_seq = 0;
    for round in 0..12 {
        // Hold a few saves into this run (after at least one whole save),
        // at one of the two steps.
        let seq = stored_seq + 2 + (round % 3);
        let step = if round % 2 == 0 { "temp" } else { "renamed" };
        kill_held(dir.path(), step, seq);

        let (store, stored) = reopen(dir.path()).await;
        let loaded = stored.state.version_seq;
        if step == "temp" {
            assert_eq!(loaded, seq - 1, "round {round}: killed before the rename");
            let temp = std::fs::read(store.temp_path()).expect("the temporary file is there");
            let temp: serde_json::Value = serde_json::from_slice(&temp).expect("whole JSON");
            assert_eq!(
                temp["state"]["version_seq"], seq,
                "round {round}: the new state went to the temporary file"
            );
        } else {
            assert_eq!(loaded, seq, "round {round}: killed after the rename");
        }
        assert_eq!(stored.state, state(loaded), "round {round}: state is whole");
        assert_eq!(stored.revision, Revision(loaded), "one revision per save");
        stored_seq = loaded;
    }
}
