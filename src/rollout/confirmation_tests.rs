use std::time::{Duration, SystemTime};

use super::*;
use crate::rollout::fixtures::{service_status, split};
use crate::rollout::{Applied, HistoryEntry, Progress, Reason};

/// `web` at blue 100, every one of its `total` proxies but `waiting`
/// ACKed.
fn service(total: usize, waiting: &[&str]) -> ServiceStatus {
    ServiceStatus {
        applied: Applied {
            acked: total - waiting.len(),
            total,
            waiting_for: waiting.iter().map(|w| (*w).to_owned()).collect(),
            rejecting: Vec::new(),
            groups: Vec::new(),
        },
        ..service_status("web", &[("blue", 100), ("green", 0)])
    }
}

fn change(verb: Verb, outcome: Outcome) -> HistoryEntry {
    HistoryEntry {
        id: 7,
        verb,
        actor: "admin".into(),
        started: SystemTime::UNIX_EPOCH,
        finished: SystemTime::UNIX_EPOCH + Duration::from_secs(1),
        from: split(&[("blue", 100)]),
        to: split(&[("blue", 100)]),
        target: None,
        version: None,
        outcome,
        convergence: None,
        acks: Vec::new(),
        warnings: Vec::new(),
        not_waited_for: Vec::new(),
    }
}

fn rolled_back() -> Outcome {
    Outcome::RolledBack {
        reason: Reason::Recorded("proxy p1 rejected it".into()),
    }
}

#[test]
fn a_service_every_proxy_holds_with_no_change_yet_is_confirmed() {
    assert_eq!(of(&service(3, &[])), Confirmation::Confirmed);
    let mut s = service(3, &[]);
    s.last_change = Some(change(Verb::Shift, Outcome::Succeeded));
    assert_eq!(of(&s), Confirmation::Confirmed);
}

#[test]
fn a_proxy_that_has_not_acked_what_is_served_holds_it() {
    let Confirmation::Unconfirmed(why) = of(&service(3, &["p2"])) else {
        panic!("confirmed with a proxy behind");
    };
    assert_eq!(why.kind(), "proxies");
    assert_eq!(
        why.to_string(),
        "2/3 proxies ACKed the routes served; waiting for p2"
    );
}

#[test]
fn a_running_operation_holds_it_whatever_the_proxies_say() {
    let mut s = service(2, &[]);
    s.in_progress = Some(Progress {
        id: 9,
        service: "web".into(),
        verb: Verb::Shift,
        phase: Phase::Confirming,
        step: 2,
        steps: 4,
        target: split(&[("blue", 50), ("green", 50)]),
        version: None,
        acked: 1,
        total: 2,
        waiting_for: vec!["p2".into()],
        not_waiting_for: Vec::new(),
        checks: Vec::new(),
        message: String::new(),
        warnings: Vec::new(),
        outcome: None,
    });
    let Confirmation::Unconfirmed(why) = of(&s) else {
        panic!("confirmed during an operation");
    };
    assert_eq!(why.kind(), "in_progress");
    assert_eq!(
        why.to_string(),
        "shift #9 is in progress: step 2/4, confirming, 1/2 proxies ACKed (waiting for p2)"
    );
}

#[test]
fn a_change_that_did_not_land_holds_it_until_the_next_one_succeeds() {
    let mut s = service(2, &[]);
    s.last_change = Some(change(Verb::Shift, rolled_back()));
    let Confirmation::Unconfirmed(why) = of(&s) else {
        panic!("confirmed after a rollback");
    };
    assert_eq!(why.kind(), "last_change");
    assert_eq!(
        why.to_string(),
        "the last change, shift #7, rolled back: proxy p1 rejected it"
    );
    s.last_change = Some(change(Verb::Flip, Outcome::Succeeded));
    assert_eq!(of(&s), Confirmation::Confirmed);
}

#[test]
fn a_retirement_that_did_not_happen_changed_no_weight() {
    let mut s = service(2, &[]);
    s.last_change = Some(change(
        Verb::Retire,
        Outcome::Refused {
            reason: Reason::Recorded("green is still draining".into()),
        },
    ));
    assert_eq!(of(&s), Confirmation::Confirmed);
}

#[test]
fn long_lists_of_proxies_say_how_many_more() {
    let mut s = service(30, &["p1", "p2"]);
    s.applied.acked = 20;
    s.applied.rejecting = vec![("p1".into(), "RDS 9: bad route".into())];
    let Confirmation::Unconfirmed(why) = of(&s) else {
        panic!("confirmed with proxies behind");
    };
    assert_eq!(
        why.to_string(),
        "20/30 proxies ACKed the routes served; waiting for p1, p2 and 8 more; \
         p1 rejects it: RDS 9: bad route"
    );
}
