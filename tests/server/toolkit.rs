//! What the tests lean on in their toolkit (`tests/support`) and could
//! not see fail on their own: the fixed ports are one test's at a time,
//! in this process and in any other, and the tests that load the machine
//! run one at a time.

use std::process::Command;
use std::time::Duration;

use crate::support::{self, ports};

/// Whether another process can take the fixed ports' lock right now
/// (`flock -n`, which gives up at once when the lock is held).
fn free_for_another_process() -> bool {
    Command::new("flock")
        .arg("-n")
        .arg(ports::fixed_lock_path())
        .arg("true")
        .status()
        .expect("run flock(1)")
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fixed_ports_are_held_by_one_test_at_a_time() {
    let held = ports::fixed().await;
    let second = tokio::spawn(ports::fixed());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "a second test took the fixed ports while the first held them"
    );
    assert!(
        !free_for_another_process(),
        "another process took the fixed ports while a test held them"
    );
    drop(held);
    // Generous: a test of another process may take them in between.
    let again = tokio::time::timeout(Duration::from_secs(120), second)
        .await
        .expect("the second test gets the fixed ports once the first is done")
        .expect("the second test's task");
    drop(again);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tests_that_load_the_machine_run_one_at_a_time() {
    let first = support::alone().await;
    let second = tokio::spawn(support::alone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !second.is_finished(),
        "a second load test started while the first ran"
    );
    drop(first);
    let again = tokio::time::timeout(Duration::from_secs(5), second)
        .await
        .expect("the second load test starts once the first is done")
        .expect("the second test's task");
    drop(again);
}
