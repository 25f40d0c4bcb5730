use super::*;
use crate::config::Ratio;
use crate::rollout::ShiftSteps;
use crate::rollout::analysis::Criteria;
use crate::rollout::fixtures::*;
use crate::rollout::plan::{ServiceView, plan};
use crate::rollout::traffic::ProxyTraffic;
use proptest::prelude::*;
use std::collections::BTreeSet;

fn proxy(id: &str, prepared: bool, confirmed: bool) -> ProxyView {
    ProxyView {
        id: id.into(),
        prepared,
        confirmed,
        nack: None,
    }
}

fn nacking(id: &str, why: &str) -> ProxyView {
    ProxyView {
        nack: Some(why.into()),
        ..proxy(id, true, false)
    }
}

fn check(ok: bool) -> CheckResult {
    CheckResult {
        check: "home".into(),
        endpoint: "127.0.0.1:1".into(),
        ok,
        detail: if ok { "200".into() } else { "503".into() },
    }
}

fn origin() -> Origin {
    Origin {
        id: 7,
        actor: "ops".into(),
        started: SystemTime::UNIX_EPOCH,
    }
}

/// Starts `op` on web at `current` with rollback point `point`.
fn started_at(op: &Operation, current: &Split, point: Option<&Split>) -> (Rollout, Instant) {
    let v = view(current, point);
    let p = plan(op, &v).expect("plan");
    let now = Instant::now();
    let (r, actions) = Rollout::start(origin(), op, p, v.current(), point.cloned(), now);
    if !matches!(op, Operation::Retire { .. }) {
        assert_eq!(
            actions,
            [Action::ObserveProxies],
            "a step looks at the proxies"
        );
    }
    (r, now)
}

fn started(op: &Operation) -> (Rollout, Instant) {
    started_at(op, &split(&[("blue", 100), ("green", 0)]), None)
}

/// A version for a test: `SEQ-DIGEST`, or a bare sequence number.
fn ver(v: &str) -> Version {
    match v.parse::<u64>() {
        Ok(seq) => Version::new(seq, "t"),
        Err(_) => v.parse().expect("a test version"),
    }
}

fn committed_event(v: &str) -> Event {
    Event::Committed { version: ver(v) }
}

#[test]
fn a_flip_goes_through_every_phase() {
    let (mut r, t) = started(&flip(false));
    assert_eq!(r.phase(), Phase::Preparing);
    let not_ready = vec![proxy("a", true, true), proxy("b", false, false)];
    assert!(r.on_event(Event::Proxies(not_ready), t).is_empty());
    assert_eq!(r.progress().waiting_for, ["b"]);
    // Holding the clusters is not enough: a proxy must be in sync with
    // everything served before a switch starts from it.
    let stale_routes = vec![proxy("a", true, true), proxy("b", true, false)];
    assert!(r.on_event(Event::Proxies(stale_routes), t).is_empty());
    let ready = vec![proxy("a", true, true), proxy("b", true, true)];
    assert_eq!(
        r.on_event(Event::Proxies(ready), t),
        [Action::RunChecks(vec!["green".into()])]
    );
    assert_eq!(r.phase(), Phase::PreChecks);
    assert_eq!(
        r.on_event(Event::Checks(vec![check(true)]), t),
        [Action::Commit(green())]
    );
    assert_eq!(
        r.on_event(committed_event("5-abc"), t),
        [Action::ObserveProxies]
    );
    let t1 = t + Duration::from_millis(30);
    let half = vec![proxy("a", true, true), proxy("b", true, false)];
    assert!(r.on_event(Event::Proxies(half), t1).is_empty());
    assert_eq!((r.progress().acked, r.progress().total), (1, 2));
    let t2 = t + Duration::from_millis(80);
    let all = vec![proxy("a", true, true), proxy("b", true, true)];
    assert_eq!(
        r.on_event(Event::Proxies(all), t2),
        [Action::RunChecks(vec!["green".into()])]
    );
    assert_eq!(r.phase(), Phase::PostChecks);
    assert_eq!(
        r.on_event(Event::Checks(vec![check(true)]), t2),
        [Action::Finish(Outcome::Succeeded)]
    );
    let (convergence, acks) = r.convergence();
    assert_eq!(convergence, Some(Duration::from_millis(80)));
    assert_eq!(
        acks,
        [
            ("a".to_string(), Duration::from_millis(30)),
            ("b".to_string(), Duration::from_millis(80))
        ]
    );
    assert_eq!(r.confirmed_version(), Some(&ver("5-abc")));
    assert_eq!(r.progress().outcome, Some(Outcome::Succeeded));
    assert!(r.progress().warnings.is_empty());
    assert_eq!(r.rollback_after(&green()), Some(back().split));
}

#[test]
fn a_proxy_already_rejecting_its_config_refuses_the_switch() {
    let (mut r, t) = started(&flip(false));
    let stuck = nacking("b", "RDS 4-ab: bad regex");
    let actions = r.on_event(Event::Proxies(vec![proxy("a", true, true), stuck]), t);
    assert!(
        matches!(&actions[..], [Action::Finish(Outcome::Refused { reason: Reason::RejectingCurrent { proxy, why } })] if proxy == "b" && why == "RDS 4-ab: bad regex")
    );
}

#[test]
fn failing_pre_checks_refuse_and_commit_nothing() {
    let (mut r, t) = started(&flip(false));
    r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    let actions = r.on_event(Event::Checks(vec![check(true), check(false)]), t);
    assert!(
        matches!(&actions[..], [Action::Finish(Outcome::Refused { reason: Reason::ChecksFailed { after_switch: false, failed } })] if *failed == [check(false)])
    );
    assert!(r.is_done());
    assert_eq!(r.last_version(), None);
    assert_eq!(r.rollback_after(&back()), None, "nothing to go back to");
}

fn committed(skip_checks: bool) -> (Rollout, Instant) {
    let (mut r, t) = started(&flip(skip_checks));
    let a = r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    if !skip_checks {
        assert_eq!(a, [Action::RunChecks(vec!["green".into()])]);
        r.on_event(Event::Checks(vec![check(true)]), t);
    }
    assert_eq!(
        r.on_event(committed_event("2"), t),
        [Action::ObserveProxies]
    );
    (r, t)
}

#[test]
fn a_nack_puts_every_proxy_back() {
    let (mut r, t) = committed(true);
    let actions = r.on_event(
        Event::Proxies(vec![proxy("a", true, true), nacking("b", "bad route")]),
        t,
    );
    assert_eq!(actions, [Action::Commit(back())]);
    assert_eq!(r.phase(), Phase::RollingBack);
    assert_eq!(
        r.on_event(committed_event("3"), t),
        [Action::ObserveProxies]
    );
    let actions = r.on_event(
        Event::Proxies(vec![proxy("a", true, true), proxy("b", true, true)]),
        t,
    );
    assert!(
        matches!(&actions[..], [Action::Finish(Outcome::RolledBack { reason: Reason::Rejected { proxy, why } })] if proxy == "b" && why == "bad route")
    );
    assert_eq!(r.convergence().0, None, "no version was confirmed");
    assert_eq!(r.last_version(), Some(&ver("3")));
    assert_eq!(r.rollback_after(&back()), None, "undone: the point stays");
}

#[test]
fn a_timeout_puts_every_proxy_back() {
    let (mut r, t) = committed(true);
    r.on_event(Event::Proxies(vec![proxy("slow", true, false)]), t);
    assert!(
        r.on_event(Event::Tick, t + Duration::from_secs(9))
            .is_empty()
    );
    let actions = r.on_event(Event::Tick, t + Duration::from_secs(10));
    assert_eq!(actions, [Action::Commit(back())]);
    assert!(r.progress().message.contains("slow"));
    assert_eq!(r.convergence().0, None);
}

#[test]
fn failing_post_checks_roll_back() {
    let (mut r, t) = committed(false);
    let a = r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    assert_eq!(a, [Action::RunChecks(vec!["green".into()])]);
    let a = r.on_event(Event::Checks(vec![check(false)]), t);
    assert_eq!(a, [Action::Commit(back())]);
}

#[test]
fn checks_that_never_answer_time_out_before_and_after_the_switch() {
    let (mut r, t) = started(&flip(false));
    r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    assert_eq!(r.next_deadline(), Some(t + Duration::from_secs(10)));
    let a = r.on_event(Event::Tick, t + Duration::from_secs(10));
    assert!(
        matches!(&a[..], [Action::Finish(Outcome::Refused { reason: Reason::ChecksTimedOut { within } })] if *within == Duration::from_secs(10)),
        "{a:?}"
    );

    let (mut r, t) = committed(false);
    r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    assert_eq!(r.phase(), Phase::PostChecks);
    let a = r.on_event(Event::Tick, t + Duration::from_secs(10));
    assert_eq!(a, [Action::Commit(back())]);
}

#[test]
fn a_proxy_joining_mid_flip_must_ack_too() {
    let (mut r, t) = committed(true);
    r.on_event(Event::Proxies(vec![proxy("a", true, false)]), t);
    let joined = vec![proxy("a", true, true), proxy("new", true, false)];
    assert!(r.on_event(Event::Proxies(joined), t).is_empty());
    assert_eq!(r.progress().waiting_for, ["new"]);
    let all = vec![proxy("a", true, true), proxy("new", true, true)];
    assert_eq!(
        r.on_event(Event::Proxies(all), t),
        [Action::Finish(Outcome::Succeeded)]
    );
}

#[test]
fn no_proxy_to_confirm_is_a_warning_and_no_convergence() {
    let (mut r, t) = started(&flip(true));
    assert_eq!(
        r.on_event(Event::Proxies(Vec::new()), t),
        [Action::Commit(green())]
    );
    r.on_event(committed_event("2"), t);
    assert_eq!(
        r.on_event(Event::Proxies(Vec::new()), t),
        [Action::Finish(Outcome::Succeeded)]
    );
    assert_eq!(r.convergence(), (None, Vec::new()));
    let w = &r.progress().warnings;
    assert!(
        w.len() == 1 && w[0].contains("no connected proxy routes web"),
        "{w:?}"
    );
}

#[test]
fn a_shift_waits_between_steps_and_an_abort_there_keeps_the_steps_done() {
    let steps = percents(None, &[10, 50, 100]);
    let (mut r, t) = started(&shift(steps, Duration::from_secs(5), true));
    let a = r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    assert!(matches!(&a[..], [Action::Commit(c)] if c.split["green"] == 10));
    r.on_event(committed_event("2"), t);
    assert!(
        r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t)
            .is_empty()
    );
    assert_eq!(r.phase(), Phase::Waiting);
    assert_eq!(r.next_deadline(), Some(t + Duration::from_secs(5)));
    let t5 = t + Duration::from_secs(5);
    assert_eq!(r.on_event(Event::Tick, t5), [Action::ObserveProxies]);
    r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t5);
    r.on_event(committed_event("3"), t5);
    r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t5);
    assert_eq!((r.phase(), r.progress().step), (Phase::Waiting, 3));
    let a = r.abort("alice", t5).expect("abortable between steps");
    let Some(Action::Finish(Outcome::Aborted { reason })) = a.first() else {
        panic!("{a:?}")
    };
    assert_eq!(
        *reason,
        Reason::StoppedBeforeCommit {
            by: "alice".into(),
            for_rollback: false,
            kept: 2
        }
    );
    assert_eq!(
        reason.to_string(),
        "stopped by alice; steps 1 to 2 stay in effect"
    );
    assert_eq!(r.confirmed_version(), Some(&ver("3")));
    // At 50/50 the rollback point is the split before the shift, not a
    // fleet picked from a tie.
    let fifty = Change {
        split: split(&[("blue", 50), ("green", 50)]),
        retired: BTreeSet::new(),
    };
    assert_eq!(r.rollback_after(&fifty), Some(back().split));
}

#[test]
fn an_abort_while_confirming_undoes_the_step_in_progress_only() {
    let steps = percents(None, &[10, 100]);
    let (mut r, t) = started(&shift(steps, Duration::ZERO, true));
    r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    r.on_event(committed_event("2"), t);
    r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    r.on_event(committed_event("3"), t);
    assert_eq!((r.phase(), r.progress().step), (Phase::Confirming, 2));
    let a = r.abort("bob", t).expect("abortable while confirming");
    let ten = split(&[("blue", 90), ("green", 10)]);
    assert!(
        matches!(&a[..], [Action::Commit(c)] if c.split == ten),
        "{a:?}"
    );
    assert!(r.abort("bob", t).is_err(), "an undo cannot be stopped");
    r.on_event(committed_event("4"), t);
    let a = r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    assert!(
        matches!(&a[..], [Action::Finish(Outcome::Aborted { reason })]
            if *reason == Reason::Undone { cause: Box::new(Reason::StoppedBy { by: "bob".into(), for_rollback: false }) }
                && reason.to_string() == "stopped by bob; the step in progress was undone"),
        "{a:?}"
    );
}

#[test]
fn a_failure_in_a_later_step_undoes_the_earlier_ones() {
    let steps = ShiftSteps::Splits(vec![
        split(&[("blue", 90), ("green", 10)]),
        split(&[("green", 100)]),
    ]);
    let (mut r, t) = started(&shift(steps, Duration::ZERO, false));
    r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    r.on_event(Event::Checks(vec![check(true)]), t);
    r.on_event(committed_event("2"), t);
    r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    r.on_event(Event::Checks(vec![check(true)]), t);
    assert_eq!(r.progress().step, 2);
    r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    let a = r.on_event(Event::Checks(vec![check(false)]), t);
    assert_eq!(a, [Action::Commit(back())], "step 1 is undone too");
}

#[test]
fn a_rollback_is_never_undone() {
    let green_live = split(&[("blue", 0), ("green", 100)]);
    let blue = back().split;
    let go = |r: &mut Rollout, t| {
        r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
        assert_eq!(
            r.on_event(committed_event("9"), t),
            [Action::ObserveProxies]
        );
    };

    // One slow proxy: the rollback stays, and says who has not confirmed.
    let (mut r, t) = started_at(&rollback(true), &green_live, Some(&blue));
    go(&mut r, t);
    r.on_event(
        Event::Proxies(vec![proxy("a", true, true), proxy("slow", true, false)]),
        t,
    );
    let a = r.on_event(Event::Tick, t + Duration::from_secs(10));
    assert!(
        matches!(&a[..], [Action::Finish(Outcome::Unconfirmed { reason: Reason::RollbackUnconfirmed { waiting, .. } })] if waiting.named == ["slow"]),
        "{a:?}"
    );

    // A NACK: the others are waited for, nothing is undone.
    let (mut r, t) = started_at(&rollback(true), &green_live, Some(&blue));
    go(&mut r, t);
    let a = r.on_event(
        Event::Proxies(vec![proxy("a", true, false), nacking("b", "no")]),
        t,
    );
    assert!(a.is_empty(), "still waiting for a: {a:?}");
    let a = r.on_event(
        Event::Proxies(vec![proxy("a", true, true), nacking("b", "no")]),
        t,
    );
    assert!(
        matches!(&a[..], [Action::Finish(Outcome::Unconfirmed { reason: Reason::RollbackRejected { rejections } })]
            if rejections.iter().map(|r| r.proxy.as_str()).eq(["b"])),
        "{a:?}"
    );

    // Failing checks after it: it stays.
    let (mut r, t) = started_at(&rollback(false), &green_live, Some(&blue));
    r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    r.on_event(Event::Checks(vec![check(true)]), t);
    r.on_event(committed_event("9"), t);
    r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    let a = r.on_event(Event::Checks(vec![check(false)]), t);
    assert!(matches!(
        &a[..],
        [Action::Finish(Outcome::Unconfirmed { .. })]
    ));
    assert!(r.abort("x", t).is_err());

    // And the operator cannot abort it while it is being confirmed.
    let (mut r, t) = started_at(&rollback(true), &green_live, Some(&blue));
    go(&mut r, t);
    assert!(matches!(
        r.abort("x", t),
        Err(RolloutError::CannotAbort { .. })
    ));
    // Its rollback point is where it came from: rollback twice toggles.
    let a = r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    assert_eq!(a, [Action::Finish(Outcome::Succeeded)]);
    assert_eq!(r.rollback_after(&back()), Some(green_live));
}

#[test]
fn an_undo_that_fails_or_times_out_is_not_reported_as_done() {
    let (mut r, t) = committed(true);
    r.on_event(Event::Proxies(vec![nacking("b", "bad")]), t);
    let a = r.on_event(Event::CommitFailed("disk full".into()), t);
    assert!(
        matches!(&a[..], [Action::Finish(Outcome::Unconfirmed { reason: Reason::UndoNotCommitted { error, .. } })] if error == "disk full"),
        "{a:?}"
    );
    // The change is still in effect: rollback goes to where it came from.
    assert_eq!(r.rollback_after(&green()), Some(back().split));

    let (mut r, t) = committed(true);
    r.on_event(Event::Proxies(vec![nacking("b", "bad")]), t);
    r.on_event(committed_event("3"), t);
    r.on_event(Event::Proxies(vec![proxy("b", true, false)]), t);
    let a = r.on_event(Event::Tick, t + Duration::from_secs(10));
    assert!(
        matches!(&a[..], [Action::Finish(Outcome::Unconfirmed { reason: Reason::UndoUnconfirmed { waiting, .. } })]
            if waiting.named == ["b"] && waiting.more == 0),
        "{a:?}"
    );
}

#[test]
fn a_commit_that_fails_on_the_first_step_refuses() {
    let (mut r, t) = started(&flip(true));
    r.on_event(Event::Proxies(Vec::new()), t);
    let a = r.on_event(Event::CommitFailed("disk".into()), t);
    assert!(matches!(&a[..], [Action::Finish(Outcome::Refused { .. })]));
}

#[test]
fn checks_look_only_at_fleets_gaining_traffic() {
    let fifty = split(&[("blue", 50), ("green", 50)]);
    let (mut r, t) = started_at(
        &shift(percents(Some("blue"), &[100]), Duration::ZERO, false),
        &fifty,
        None,
    );
    assert_eq!(
        r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t),
        [Action::RunChecks(vec!["blue".into()])]
    );
}

#[test]
fn a_completed_retirement_of_the_rollback_fleet_ends_rollback() {
    let green_live = green().split;
    let blue = back().split;
    let retire = retire("blue", Duration::from_secs(60), Duration::ZERO);
    let (r, _) = started_at(&retire, &green_live, Some(&blue));
    let retired = Change {
        split: green_live.clone(),
        retired: BTreeSet::from(["blue".to_owned()]),
    };
    assert_eq!(r.rollback_after(&retired), None);
    // Not retired after all (aborted): the point stays.
    assert_eq!(r.rollback_after(&green()), Some(blue));
}

#[test]
fn a_resumed_operation_confirms_its_commit_again_or_is_interrupted() {
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let (mut r, t) = committed(true);
    let rec = r.record(t, wall);
    assert_eq!(rec.stage, Stage::Applied);
    // After a restart: the proxies confirm it, so it succeeded.
    let (mut again, a) = Rollout::resume("web", rec, &ver("2-abc"), t, wall);
    assert_eq!(a, [Action::ObserveProxies]);
    let a = again.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    assert_eq!(a, [Action::Finish(Outcome::Succeeded)]);
    assert!(again.progress().warnings[0].contains("restarted"));
    assert_eq!(again.id(), 7);

    // A NACK after the restart undoes it.
    let (mut again, _) = Rollout::resume("web", r.record(t, wall), &ver("2-abc"), t, wall);
    let a = again.on_event(Event::Proxies(vec![nacking("a", "no")]), t);
    assert_eq!(a, [Action::Commit(back())]);

    // Found before its commit: interrupted, nothing in effect.
    let (r0, t0) = started(&flip(true));
    let (again, a) = Rollout::resume("web", r0.record(t0, wall), &ver("1-x"), t0, wall);
    assert!(
        matches!(
            &a[..],
            [Action::Finish(Outcome::Interrupted {
                reason: Reason::StoppedBeforeStep { step: 1, steps: 1 }
            })]
        ),
        "{a:?}"
    );
    assert!(again.is_done());

    // An undo found in flight is confirmed.
    r.on_event(Event::Proxies(vec![nacking("a", "no")]), t);
    let rec = r.record(t, wall);
    assert!(matches!(rec.stage, Stage::Undoing(_)));
    let (mut again, _) = Rollout::resume("web", rec, &ver("3-abc"), t, wall);
    let a = again.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    assert!(matches!(
        &a[..],
        [Action::Finish(Outcome::RolledBack { .. })]
    ));
}

#[test]
fn a_pending_retirement_survives_a_restart_with_the_rest_of_its_delay() {
    let green_live = green().split;
    let retire = retire("blue", Duration::from_secs(60), Duration::ZERO);
    let (r, t) = started_at(&retire, &green_live, None);
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let rec = r.record(t + Duration::from_secs(20), wall);
    assert_eq!(rec.wait_until, Some(wall + Duration::from_secs(40)));
    let later = wall + Duration::from_secs(30);
    let t2 = t + Duration::from_secs(500);
    let (again, a) = Rollout::resume("web", rec, &ver("5-x"), t2, later);
    assert!(a.is_empty());
    assert_eq!(again.next_deadline(), Some(t2 + Duration::from_secs(10)));
    assert_eq!(
        again.retirement(t2, later),
        Some(("blue".to_owned(), later + Duration::from_secs(10)))
    );
}

#[test]
fn records_round_trip_through_json() {
    let (r, t) = committed(true);
    let rec = r.record(t, SystemTime::UNIX_EPOCH + Duration::from_secs(5));
    let json = serde_json::to_string(&rec).expect("serializes");
    let back: Record = serde_json::from_str(&json).expect("parses");
    assert_eq!(back, rec);
}

/// How a simulated proxy answers one version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Ack,
    Nack,
    Silent,
}

fn arb_fate() -> impl Strategy<Value = Fate> {
    prop_oneof![8 => Just(Fate::Ack), 1 => Just(Fate::Nack), 1 => Just(Fate::Silent)]
}

/// The world the controller and proxies make for a machine: each
/// committed version gets every proxy's fate, checks and commits succeed
/// or fail as drawn.
#[derive(Debug, Clone)]
struct World {
    proxies: usize,
    fates: Vec<Fate>,
    checks: Vec<bool>,
    commit_fails: Vec<bool>,
    aborts: Vec<bool>,
    /// The service's analysis, if it has one: what too few requests mean.
    analysis: Option<TooFewRequests>,
    /// What each proxy reports at each look at the traffic: nothing new,
    /// healthy requests, or failing ones.
    traffic: Vec<Traffic>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Traffic {
    Quiet,
    Healthy,
    Failing,
}

fn arb_world() -> impl Strategy<Value = World> {
    (
        0..4usize,
        prop::collection::vec(arb_fate(), 64),
        prop::collection::vec(prop::bool::weighted(0.85), 32),
        prop::collection::vec(prop::bool::weighted(0.1), 32),
        prop::collection::vec(prop::bool::weighted(0.05), 64),
        prop::option::of(prop_oneof![
            Just(TooFewRequests::Pass),
            Just(TooFewRequests::Fail),
            Just(TooFewRequests::Wait)
        ]),
        prop::collection::vec(
            prop_oneof![
                1 => Just(Traffic::Quiet),
                6 => Just(Traffic::Healthy),
                1 => Just(Traffic::Failing)
            ],
            32,
        ),
    )
        .prop_map(
            |(proxies, fates, checks, commit_fails, aborts, analysis, traffic)| World {
                proxies,
                fates,
                checks,
                commit_fails,
                aborts,
                analysis,
                traffic,
            },
        )
}

/// The analysis a simulated service has: 1% at most, or 0.5 points over
/// the baseline, over 5 s, with 10 requests needed.
fn sim_criteria(too_few_requests: TooFewRequests) -> Criteria {
    Criteria {
        max_error_ratio: Some(Ratio::from_ppm(10_000)),
        over_baseline: Some(Ratio::from_ppm(5_000)),
        min_requests: 10,
        window: Duration::from_secs(5),
        too_few_requests,
    }
}

fn arb_op() -> impl Strategy<Value = Operation> {
    prop_oneof![
        any::<bool>().prop_map(flip),
        any::<bool>().prop_map(rollback),
        (any::<bool>(), 0..3u64).prop_map(|(skip, pause)| shift(
            percents(None, &[10, 50, 100]),
            Duration::from_secs(pause),
            skip
        )),
        Just(retire("blue", Duration::from_secs(1), Duration::ZERO)),
        Just(retire(
            "blue",
            Duration::from_secs(1),
            Duration::from_secs(30)
        )),
    ]
}

/// What the simulated service looks like between operations.
struct Service {
    in_effect: Change,
    rollback_to: Option<Split>,
    /// Each proxy's fate on the version it was last sent.
    current: Vec<Fate>,
    seq: u32,
}

/// Runs `op` against `world` like the controller would, returns the
/// outcome; asserts on the way that the machine always ends and that
/// its outcome agrees with what the proxies hold.
fn run_one(
    op: &Operation,
    world: &World,
    cursor: &mut usize,
    svc: &mut Service,
    confirmed_splits: &mut Vec<Split>,
) -> Result<Option<Outcome>, TestCaseError> {
    let draw = |v: &[bool], c: &mut usize| {
        *c += 1;
        v[*c % v.len()]
    };
    let v = ServiceView {
        name: "web",
        fleets: vec!["blue", "green"],
        empty: BTreeSet::new(),
        split: &svc.in_effect.split,
        rollback_to: svc.rollback_to.as_ref(),
        retired: &svc.in_effect.retired,
        has_checks: true,
        analysis: world.analysis.map(sim_criteria),
    };
    let Ok(p) = plan(op, &v) else {
        return Ok(None);
    };
    let original = v.current();
    let mut now = Instant::now();
    let (mut r, first) = Rollout::start(
        origin(),
        op,
        p,
        original.clone(),
        svc.rollback_to.clone(),
        now,
    );
    let mut queue = std::collections::VecDeque::from(first);
    let views = |current: &[Fate]| -> Vec<ProxyView> {
        current
            .iter()
            .enumerate()
            .map(|(i, f)| ProxyView {
                id: format!("p{i}").into(),
                prepared: *f == Fate::Ack,
                confirmed: *f == Fate::Ack,
                nack: (*f == Fate::Nack).then(|| "no".to_owned()),
            })
            .collect()
    };
    let mut last_commit_fates: Option<Vec<Fate>> = None;
    let mut committed_changes = 0;
    // Each proxy's load sums since its stream opened.
    let mut sums = vec![(0u64, 0u64); world.proxies];
    for _ in 0..400 {
        if r.is_done() {
            break;
        }
        if draw(&world.aborts, cursor)
            && let Ok(a) = r.abort("op", now)
        {
            queue.extend(a);
        }
        let Some(action) = queue.pop_front() else {
            // A retirement draining its fleet hears from the proxies'
            // load reports between ticks: idle or not, as drawn.
            let fleets = r.wants_traffic();
            if !fleets.is_empty() {
                let idle = draw(&world.checks, cursor);
                let traffic = fleets
                    .into_iter()
                    .map(|fleet| FleetTraffic {
                        fleet,
                        proxies: (0..world.proxies)
                            .map(|i| traffic(&format!("p{i}"), Some((u64::from(!idle), 2))))
                            .collect(),
                    })
                    .collect();
                queue.extend(r.on_event(Event::Traffic(traffic), now));
                if !queue.is_empty() {
                    continue;
                }
            }
            now += Duration::from_secs(11);
            queue.extend(r.on_event(Event::Tick, now));
            continue;
        };
        let event = match action {
            Action::ObserveProxies => Event::Proxies(views(&svc.current)),
            Action::RunChecks(_) => Event::Checks(vec![check(draw(&world.checks, cursor))]),
            Action::Commit(change) => {
                if draw(&world.commit_fails, cursor) {
                    Event::CommitFailed("disk".into())
                } else {
                    svc.seq += 1;
                    svc.in_effect = change.clone();
                    committed_changes += 1;
                    svc.current = (0..world.proxies)
                        .map(|i| {
                            world.fates[(*cursor + i * 7 + svc.seq as usize) % world.fates.len()]
                        })
                        .collect();
                    *cursor += 1;
                    if svc.current.iter().all(|f| *f == Fate::Ack) {
                        confirmed_splits.push(change.split.clone());
                    }
                    last_commit_fates = Some(svc.current.clone());
                    Event::Committed {
                        version: Version::new(u64::from(svc.seq), "t"),
                    }
                }
            }
            Action::ObserveTraffic => {
                for (i, sum) in sums.iter_mut().enumerate() {
                    let t = world.traffic[(*cursor + i) % world.traffic.len()];
                    let (requests, errors) = match t {
                        Traffic::Quiet => (0, 0),
                        Traffic::Healthy => (20, 0),
                        Traffic::Failing => (20, 10),
                    };
                    *sum = (sum.0 + requests, sum.1 + errors);
                }
                *cursor += 1;
                // Empty when an abort moved the machine on since it asked.
                let fleets = r.wants_traffic();
                Event::Traffic(
                    fleets
                        .into_iter()
                        .map(|fleet| FleetTraffic {
                            fleet,
                            proxies: sums
                                .iter()
                                .enumerate()
                                .map(|(i, (requests, errors))| {
                                    crate::rollout::traffic::ProxyTraffic {
                                        id: format!("p{i}").into(),
                                        load: Some(crate::xds::load::ClusterCounters {
                                            requests: *requests,
                                            errors: *errors,
                                            ..Default::default()
                                        }),
                                    }
                                })
                                .collect(),
                        })
                        .collect(),
                )
            }
            Action::MeasureBaseline { fleets, .. } => Event::Baseline(Baseline {
                fleets,
                requests: 100,
                errors: u64::from(draw(&world.checks, cursor)),
            }),
            Action::Finish(_) => continue,
        };
        queue.extend(r.on_event(event, now));
    }
    prop_assert!(r.is_done(), "the operation never ended: {:?}", r.progress());
    let outcome = r.outcome().cloned().expect("done");
    let all_acked = last_commit_fates
        .as_ref()
        .is_none_or(|f| f.iter().all(|x| *x == Fate::Ack));
    match &outcome {
        Outcome::Succeeded => {
            prop_assert_eq!(Some(&svc.in_effect), r.plan.steps.last());
            prop_assert!(all_acked, "success with proxies that did not ACK");
            // One warning when no proxy was there to confirm, one when a
            // rollback went without some.
            let passed_over = r.passed_over().next().is_some();
            let unjudged = r
                .progress()
                .warnings
                .iter()
                .filter(|w| w.contains("could not be judged"))
                .count();
            prop_assert!(
                unjudged == 0 || world.analysis == Some(TooFewRequests::Pass),
                "passed unjudged: {:?}",
                r.progress().warnings
            );
            prop_assert_eq!(
                r.progress().warnings.len(),
                usize::from(world.proxies == 0) + usize::from(passed_over) + unjudged
            );
        }
        Outcome::Refused { .. } => {
            prop_assert_eq!(committed_changes, 0);
            prop_assert_eq!(&svc.in_effect, &original);
        }
        Outcome::RolledBack { .. } => {
            prop_assert_eq!(&svc.in_effect, &original);
            prop_assert!(all_acked, "rolled back, but a proxy did not confirm it");
        }
        Outcome::Aborted { .. } => {
            let confirmed = r.confirmed.as_ref().map(|(_, c)| c).unwrap_or(&original);
            prop_assert_eq!(&svc.in_effect, confirmed);
        }
        Outcome::Unconfirmed { .. } => {
            prop_assert!(committed_changes > 0);
        }
        Outcome::Interrupted { .. } => prop_assert!(false, "no restart here"),
    }
    if r.verb == Verb::Rollback && committed_changes > 0 {
        prop_assert!(
            !matches!(outcome, Outcome::RolledBack { .. }),
            "a rollback was undone"
        );
    }
    let before = svc.rollback_to.clone();
    svc.rollback_to = r.rollback_after(&svc.in_effect);
    if matches!(
        outcome,
        Outcome::Refused { .. } | Outcome::RolledBack { .. }
    ) {
        prop_assert_eq!(
            &svc.rollback_to,
            &before,
            "a failed operation moved the rollback point"
        );
    }
    Ok(Some(outcome))
}

proptest! {
    /// Operations one after another against proxies that ACK, NACK or stay
    /// silent, checks and commits that fail: every operation ends; success
    /// means every proxy holds the target, a rollback means every proxy
    /// confirmed the way back, a refusal committed nothing, a rollback is
    /// never undone; and the rollback point is always a split that every
    /// proxy confirmed (or the one teal started from).
    #[test]
    fn every_operation_ends_and_agrees_with_what_proxies_hold(
        world in arb_world(),
        ops in prop::collection::vec(arb_op(), 1..6),
    ) {
        let start = back();
        let mut svc = Service {
            in_effect: start.clone(),
            rollback_to: None,
            current: vec![Fate::Ack; world.proxies],
            seq: 1,
        };
        let mut confirmed_splits = vec![start.split.clone()];
        let mut cursor = 0;
        for op in &ops {
            run_one(op, &world, &mut cursor, &mut svc, &mut confirmed_splits)?;
            if let Some(point) = &svc.rollback_to {
                prop_assert!(
                    confirmed_splits.contains(point),
                    "rollback point {point:?} was never confirmed by every proxy"
                );
            }
        }
    }
}

#[test]
fn a_record_asking_for_absurd_waits_is_bounded() {
    let (r, t) = committed(true);
    let mut rec = r.record(t, SystemTime::UNIX_EPOCH);
    rec.plan.timeout = Duration::MAX;
    let (again, _) = Rollout::resume("web", rec, &ver("2-a"), t, SystemTime::UNIX_EPOCH);
    assert_eq!(again.next_deadline(), Some(t + MAX_WAIT));

    // An analysis's window too: at most the longest the config allows.
    let (r, t) = analysing(criteria(TooFewRequests::Wait), true);
    let mut rec = r.record(t, SystemTime::UNIX_EPOCH);
    if let Some(a) = rec.plan.analysis.as_mut() {
        a.window = Duration::MAX;
    }
    let (mut again, _) = Rollout::resume("web", rec, &ver("2-a"), t, SystemTime::UNIX_EPOCH);
    again.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    assert_eq!(again.phase(), Phase::Analysis);
    assert_eq!(
        again.next_deadline(),
        Some(t + crate::config::ANALYSIS_WINDOW.1)
    );
    // A retirement's drain timeout too.
    let (r, t) = draining();
    let mut rec = r.record(t, SystemTime::UNIX_EPOCH);
    rec.plan.drain_timeout = Duration::MAX;
    let (mut again, _) = Rollout::resume("web", rec, &ver("2-a"), t, SystemTime::UNIX_EPOCH);
    again.on_event(Event::Tick, t);
    assert_eq!(again.phase(), Phase::Draining);
    assert_eq!(again.next_deadline(), Some(t + MAX_WAIT));
}

/// The simulation above reaches every outcome it can judge: a property
/// that only ever saw refusals would pass while proving nothing. Runs the
/// same simulation over a fixed sample of worlds and operations (a
/// deterministic runner) and asserts each outcome occurs.
#[test]
fn the_simulation_reaches_every_outcome() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let mut seen = BTreeSet::new();
    for _ in 0..400 {
        let world = arb_world()
            .new_tree(&mut runner)
            .expect("a world")
            .current();
        let ops = prop::collection::vec(arb_op(), 1..6)
            .new_tree(&mut runner)
            .expect("operations")
            .current();
        let mut svc = Service {
            in_effect: back(),
            rollback_to: None,
            current: vec![Fate::Ack; world.proxies],
            seq: 1,
        };
        let mut confirmed = vec![back().split];
        let mut cursor = 0;
        for op in &ops {
            if let Some(outcome) =
                run_one(op, &world, &mut cursor, &mut svc, &mut confirmed).expect("holds")
            {
                seen.insert(match outcome {
                    Outcome::Succeeded => "succeeded",
                    Outcome::Refused { .. } => "refused",
                    Outcome::RolledBack {
                        reason: Reason::TrafficErrors(_),
                    } => "rolled back by its traffic",
                    Outcome::RolledBack {
                        reason: Reason::TrafficUnjudged { .. },
                    } => "rolled back unjudged",
                    Outcome::RolledBack { .. } => "rolled back",
                    Outcome::Aborted { .. } => "aborted",
                    Outcome::Unconfirmed { .. } => "unconfirmed",
                    Outcome::Interrupted { .. } => "interrupted",
                });
            }
        }
    }
    for outcome in [
        "succeeded",
        "refused",
        "rolled back",
        "rolled back by its traffic",
        "rolled back unjudged",
        "aborted",
        "unconfirmed",
    ] {
        assert!(seen.contains(outcome), "never {outcome}: saw {seen:?}");
    }
}

#[test]
fn changes_update_what_was_seen_and_name_only_the_first_waiting_proxies() {
    let (mut r, t) = started(&flip(true));
    let ids: Vec<String> = (0..50).map(|i| format!("p{i:02}")).collect();
    let all = |confirmed: bool| ids.iter().map(|id| proxy(id, true, confirmed)).collect();
    assert_eq!(
        r.on_event(Event::Proxies(all(true)), t),
        [Action::Commit(green())]
    );
    r.on_event(committed_event("5-abc"), t);
    assert!(r.on_event(Event::Proxies(all(false)), t).is_empty());
    let p = r.progress();
    assert_eq!((p.acked, p.total), (0, 50));
    assert_eq!(
        p.waiting_for.len(),
        WAITING_SHOWN,
        "a large fleet is not listed whole"
    );
    assert_eq!(p.waiting_for[0], "p00");
    // One proxy ACKs; one leaves: only they are handed over.
    let t1 = t + Duration::from_millis(10);
    let one = Event::ProxiesChanged {
        changed: vec![proxy("p00", true, true)],
        gone: vec!["p01".into()],
    };
    assert!(r.on_event(one, t1).is_empty());
    let p = r.progress();
    assert_eq!((p.acked, p.total), (1, 49));
    assert_eq!(p.waiting_for[0], "p02");
    // A rejection among the changes fails the flip.
    let t2 = t + Duration::from_millis(20);
    let bad = Event::ProxiesChanged {
        changed: vec![nacking("p30", "bad route")],
        gone: Vec::new(),
    };
    assert_eq!(r.on_event(bad, t2), [Action::Commit(back())]);
    assert!(r.progress().message.contains("p30 rejected the change"));
    // Timing out names the first proxies and counts the rest.
    r.on_event(committed_event("6-def"), t2);
    assert!(r.on_event(Event::Proxies(all(false)), t2).is_empty());
    r.on_event(Event::Tick, t2 + Duration::from_secs(3600));
    let reason = r.outcome().and_then(|o| o.reason());
    assert!(
        matches!(reason, Some(Reason::UndoUnconfirmed { waiting, .. })
            if waiting.named.len() == WAITING_SHOWN
                && waiting.named.last().map(String::as_str) == Some("p19")
                && waiting.more == 30),
        "{reason:?}"
    );
}

#[test]
fn the_last_ack_of_a_change_completes_the_confirmation() {
    let (mut r, t) = started(&flip(true));
    r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    r.on_event(committed_event("5-abc"), t);
    let waiting = vec![proxy("a", true, false), proxy("b", true, false)];
    assert!(r.on_event(Event::Proxies(waiting), t).is_empty());
    let t1 = t + Duration::from_millis(5);
    let a = Event::ProxiesChanged {
        changed: vec![proxy("a", true, true)],
        gone: Vec::new(),
    };
    assert!(r.on_event(a, t1).is_empty());
    let t2 = t + Duration::from_millis(9);
    let b = Event::ProxiesChanged {
        changed: vec![proxy("b", true, true)],
        gone: Vec::new(),
    };
    assert_eq!(r.on_event(b, t2), [Action::Finish(Outcome::Succeeded)]);
    let (convergence, acks) = r.convergence();
    assert_eq!(convergence, Some(Duration::from_millis(9)));
    assert_eq!(
        acks,
        [
            ("a".to_string(), Duration::from_millis(5)),
            ("b".to_string(), Duration::from_millis(9))
        ]
    );
}

#[test]
fn a_history_entry_keeps_the_slowest_acks() {
    let (mut r, t) = started(&flip(true));
    let n = ACKS_KEPT + 50;
    let ids: Vec<String> = (0..n).map(|i| format!("p{i:03}")).collect();
    let all = |confirmed: bool| ids.iter().map(|id| proxy(id, true, confirmed)).collect();
    r.on_event(Event::Proxies(all(true)), t);
    r.on_event(committed_event("5-abc"), t);
    assert!(r.on_event(Event::Proxies(all(false)), t).is_empty());
    // Proxy i ACKs i ms after the push.
    for (i, id) in ids.iter().enumerate() {
        let change = Event::ProxiesChanged {
            changed: vec![proxy(id, true, true)],
            gone: Vec::new(),
        };
        r.on_event(change, t + Duration::from_millis(i as u64));
    }
    let (convergence, acks) = r.convergence();
    assert_eq!(convergence, Some(Duration::from_millis(n as u64 - 1)));
    assert_eq!(acks.len(), ACKS_KEPT);
    assert_eq!(acks[0], ("p050".to_string(), Duration::from_millis(50)));
    assert_eq!(acks.last().map(|a| a.0.as_str()), Some("p149"));
}

fn empty(fleets: &[&str]) -> BTreeSet<String> {
    fleets.iter().map(|f| (*f).to_owned()).collect()
}

#[test]
fn a_commit_whose_target_fleet_emptied_since_the_plan_is_refused_and_nothing_is_committed() {
    let (mut r, t) = started(&flip(false));
    r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    let a = r.on_event(Event::Checks(vec![check(true)]), t);
    assert_eq!(a, [Action::Commit(green())]);
    // A fleet at weight 0 in the step may be empty; the target may not.
    assert_eq!(r.commit_gate(&empty(&["blue"])), Gate::Go);
    let Gate::Withdrawn(a) = r.commit_gate(&empty(&["green"])) else {
        panic!("the commit goes to an empty fleet")
    };
    assert!(
        matches!(&a[..], [Action::Finish(Outcome::Refused { reason: Reason::FleetEmptied { fleet, step: None, .. } })]
            if fleet == "green"),
        "{a:?}"
    );
    assert!(r.is_done());
    assert_eq!(r.last_version(), None, "nothing was committed");
    assert_eq!(r.rollback_after(&back()), None, "the point stays");
}

#[test]
fn a_commit_goes_when_every_fleet_it_sends_traffic_to_has_endpoints() {
    let (mut r, t) = started(&flip(true));
    assert_eq!(
        r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t),
        [Action::Commit(green())]
    );
    assert_eq!(r.commit_gate(&BTreeSet::new()), Gate::Go);
    assert_eq!(
        r.on_event(committed_event("2"), t),
        [Action::ObserveProxies]
    );
    // Not committing: there is nothing to withdraw.
    assert_eq!(r.commit_gate(&empty(&["green"])), Gate::Go);
}

#[test]
fn a_later_step_whose_target_emptied_undoes_the_earlier_ones_and_the_undo_always_goes() {
    let steps = percents(None, &[10, 100]);
    let (mut r, t) = started(&shift(steps, Duration::ZERO, true));
    r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    assert_eq!(r.commit_gate(&BTreeSet::new()), Gate::Go);
    r.on_event(committed_event("2"), t);
    r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    let a = r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    assert!(matches!(&a[..], [Action::Commit(c)] if c.split["green"] == 100));
    assert_eq!(r.progress().step, 2);
    let Gate::Withdrawn(a) = r.commit_gate(&empty(&["green"])) else {
        panic!("step 2 goes to an empty fleet")
    };
    assert_eq!(a, [Action::Commit(back())], "step 1 is undone too");
    assert_eq!(r.phase(), Phase::RollingBack);
    // The way back is not held by the guard, even to an empty fleet.
    assert_eq!(r.commit_gate(&empty(&["blue", "green"])), Gate::Go);
    r.on_event(committed_event("3"), t);
    let a = r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    assert!(
        matches!(&a[..], [Action::Finish(Outcome::RolledBack { reason: Reason::FleetEmptied { fleet, step: Some((2, 2)), .. } })]
            if fleet == "green"),
        "{a:?}"
    );
    assert_eq!(r.rollback_after(&back()), None, "undone: the point stays");
}

#[test]
fn a_rollback_whose_target_emptied_is_refused_at_its_commit() {
    let green_live = split(&[("blue", 0), ("green", 100)]);
    let blue = back().split;
    let (mut r, t) = started_at(&rollback(true), &green_live, Some(&blue));
    assert_eq!(
        r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t),
        [Action::Commit(back())]
    );
    let Gate::Withdrawn(a) = r.commit_gate(&empty(&["blue"])) else {
        panic!("a rollback to an empty fleet")
    };
    assert!(
        matches!(&a[..], [Action::Finish(Outcome::Refused { reason: Reason::FleetEmptied { fleet, .. } })] if fleet == "blue"),
        "{a:?}"
    );
}

#[test]
fn a_rollback_does_not_wait_for_a_stuck_or_rejecting_proxy_and_names_them() {
    let green_live = split(&[("blue", 0), ("green", 100)]);
    let blue = back().split;
    let (mut r, t) = started_at(&rollback(true), &green_live, Some(&blue));
    let views = vec![
        proxy("a", true, true),
        nacking("b", "RDS: bad regex"),
        proxy("stuck", true, false),
    ];
    assert_eq!(
        r.on_event(Event::Proxies(views), t),
        [Action::Commit(back())],
        "switches at once"
    );
    assert_eq!(r.passed_over().collect::<Vec<_>>(), ["b", "stuck"]);
    let w = &r.progress().warnings;
    assert!(
        w.len() == 1 && w[0].contains("did not wait") && w[0].contains("b, stuck"),
        "{w:?}"
    );
    assert_eq!(
        r.on_event(committed_event("9"), t),
        [Action::ObserveProxies]
    );
    // a confirms, b rejects the rollback too, stuck never answers: the
    // rollback stays in effect and ends unconfirmed, naming stuck.
    let views = vec![
        proxy("a", true, true),
        nacking("b", "RDS: bad regex"),
        proxy("stuck", true, false),
    ];
    assert!(r.on_event(Event::Proxies(views), t).is_empty());
    assert_eq!(r.progress().waiting_for, ["stuck"]);
    let a = r.on_event(Event::Tick, t + Duration::from_secs(10));
    assert!(
        matches!(&a[..], [Action::Finish(Outcome::Unconfirmed { reason: Reason::RollbackUnconfirmed { waiting, .. } })] if waiting.named == ["stuck"]),
        "{a:?}"
    );
    assert_eq!(
        r.rollback_after(&back()),
        None,
        "green was never confirmed by every proxy: no point to go back to"
    );

    // Only a rejecting proxy: it ends unconfirmed as soon as the others
    // confirm, naming it.
    let (mut r, t) = started_at(&rollback(true), &green_live, Some(&blue));
    let views = vec![proxy("a", true, true), nacking("b", "bad")];
    assert_eq!(
        r.on_event(Event::Proxies(views.clone()), t),
        [Action::Commit(back())]
    );
    r.on_event(committed_event("9"), t);
    let a = r.on_event(Event::Proxies(views), t);
    assert!(
        matches!(&a[..], [Action::Finish(Outcome::Unconfirmed { reason: Reason::RollbackRejected { rejections } })]
            if rejections.iter().map(|r| r.proxy.as_str()).eq(["b"])),
        "{a:?}"
    );
    // A flip still refuses to switch past a rejecting proxy.
    let (mut r, t) = started(&flip(true));
    let a = r.on_event(
        Event::Proxies(vec![proxy("a", true, true), nacking("b", "bad")]),
        t,
    );
    assert!(matches!(&a[..], [Action::Finish(Outcome::Refused { .. })]));
    assert_eq!(r.passed_over().count(), 0);
}

/// At most 1% errors over 10 s, 100 requests needed.
fn criteria(too_few_requests: TooFewRequests) -> Criteria {
    Criteria {
        max_error_ratio: Some(Ratio::from_ppm(10_000)),
        over_baseline: None,
        min_requests: 100,
        window: Duration::from_secs(10),
        too_few_requests,
    }
}

/// Plans `op` on web at `current` (rollback point `point`), whose
/// analysis is `c`, and starts it.
fn started_judged(
    op: &Operation,
    current: &Split,
    point: Option<&Split>,
    c: Criteria,
) -> (Rollout, Instant) {
    let v = ServiceView {
        analysis: Some(c),
        ..view(current, point)
    };
    let p = plan(op, &v).expect("plan");
    let t = Instant::now();
    let (r, a) = Rollout::start(origin(), op, p, v.current(), point.cloned(), t);
    assert_eq!(a, [Action::ObserveProxies]);
    (r, t)
}

/// A flip of web to green whose analysis is `c`, with checks unless
/// `skip_checks`, at the start of its analysis.
fn analysing(c: Criteria, skip_checks: bool) -> (Rollout, Instant) {
    let blue = split(&[("blue", 100), ("green", 0)]);
    let (mut r, t) = started_judged(&flip(skip_checks), &blue, None, c);
    let mut a = r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    if !skip_checks {
        assert_eq!(a, [Action::RunChecks(vec!["green".into()])]);
        a = r.on_event(Event::Checks(vec![check(true)]), t);
    }
    assert_eq!(a, [Action::Commit(green())]);
    assert_eq!(
        r.on_event(committed_event("2"), t),
        [Action::ObserveProxies]
    );
    let mut a = r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    if !skip_checks {
        assert_eq!(
            a,
            [Action::RunChecks(vec!["green".into()])],
            "post-checks first"
        );
        a = r.on_event(Event::Checks(vec![check(true)]), t);
    }
    assert_eq!(a, [Action::ObserveTraffic]);
    assert_eq!(r.phase(), Phase::Analysis);
    assert_eq!(r.wants_traffic(), ["green"]);
    (r, t)
}

/// What the proxies report of green: each proxy's sums since its load
/// stream opened.
fn green_traffic(proxies: &[(&str, u64, u64)]) -> Event {
    Event::Traffic(vec![FleetTraffic {
        fleet: "green".into(),
        proxies: proxies
            .iter()
            .map(
                |(id, requests, errors)| crate::rollout::traffic::ProxyTraffic {
                    id: (*id).into(),
                    load: Some(crate::xds::load::ClusterCounters {
                        requests: *requests,
                        errors: *errors,
                        ..Default::default()
                    }),
                },
            )
            .collect(),
    }])
}

/// Confirms the undo `r` asked for, and returns how it ended.
fn undone(r: &mut Rollout, t: Instant) -> Outcome {
    assert_eq!(r.phase(), Phase::RollingBack);
    assert_eq!(
        r.on_event(committed_event("3"), t),
        [Action::ObserveProxies]
    );
    let a = r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    let [Action::Finish(outcome)] = &a[..] else {
        panic!("{a:?}")
    };
    outcome.clone()
}

const SEC: Duration = Duration::from_secs(1);

#[test]
fn healthy_traffic_passes_once_the_window_ends_on_the_counts_then() {
    let (mut r, t) = analysing(criteria(TooFewRequests::Wait), false);
    assert!(
        r.on_event(green_traffic(&[("a", 7, 7), ("b", 0, 0)]), t)
            .is_empty()
    );
    let a = r.on_event(green_traffic(&[("a", 307, 8), ("b", 300, 2)]), t + 5 * SEC);
    assert!(a.is_empty(), "a pass waits for the window's end: {a:?}");
    let p = r.progress();
    assert_eq!((p.phase, p.version), (Phase::Analysis, Some(ver("2"))));
    assert!(
        p.message
            .contains("green: 0.5% errors in 600 requests from 2 of 2 proxies; 5s left"),
        "{}",
        p.message
    );
    assert_eq!(r.record(t, SystemTime::UNIX_EPOCH).stage, Stage::Applied);
    assert_eq!(r.next_deadline(), Some(t + 10 * SEC));
    assert_eq!(
        r.on_event(Event::Tick, t + 10 * SEC),
        [Action::ObserveTraffic]
    );
    assert_eq!(
        r.on_event(green_traffic(&[("a", 407, 8), ("b", 400, 2)]), t + 10 * SEC),
        [Action::Finish(Outcome::Succeeded)]
    );
    assert!(r.progress().warnings.is_empty());
    assert_eq!(r.rollback_after(&green()), Some(back().split));
}

#[test]
fn failing_traffic_rolls_back_at_once_with_the_figures() {
    let (mut r, t) = analysing(criteria(TooFewRequests::Wait), true);
    let zero = [("a", 0, 0), ("b", 0, 0), ("c", 0, 0)];
    assert!(r.on_event(green_traffic(&zero), t).is_empty());
    // a at 10%, b at 11%, c at 0%: the highest and the lowest left out,
    // a's 10% is over the 1% allowed.
    let bad = [("a", 200, 20), ("b", 200, 22), ("c", 200, 0)];
    assert_eq!(
        r.on_event(green_traffic(&bad), t + 2 * SEC),
        [Action::Commit(back())]
    );
    let Outcome::RolledBack { reason } = undone(&mut r, t + 2 * SEC) else {
        panic!("rolled back");
    };
    assert_eq!(
        reason.to_string(),
        "green's error ratio was 10%, over the 1% allowed: 42 errors in 600 requests reported \
         by proxies a, b, c, 2s after the switch"
    );
    assert_eq!(r.rollback_after(&back()), None, "undone: the point stays");
}

#[test]
fn too_few_requests_pass_fail_or_wait_as_the_analysis_says() {
    let few = [("a", 50, 0)];
    let end = 10 * SEC;

    let (mut r, t) = analysing(criteria(TooFewRequests::Pass), true);
    r.on_event(green_traffic(&[("a", 0, 0)]), t);
    assert_eq!(r.on_event(Event::Tick, t + end), [Action::ObserveTraffic]);
    assert_eq!(
        r.on_event(green_traffic(&few), t + end),
        [Action::Finish(Outcome::Succeeded)]
    );
    assert_eq!(
        r.progress().warnings,
        [
            "green's traffic could not be judged within 10s: too few requests (50 from 1 proxy, \
          100 needed); passed, as `too_few_requests: pass` says"
        ]
    );

    let (mut r, t) = analysing(criteria(TooFewRequests::Fail), true);
    r.on_event(green_traffic(&[("a", 0, 0)]), t);
    r.on_event(Event::Tick, t + end);
    assert_eq!(
        r.on_event(green_traffic(&few), t + end),
        [Action::Commit(back())]
    );
    let outcome = undone(&mut r, t + end);
    assert!(
        matches!(
            &outcome,
            Outcome::RolledBack {
                reason: Reason::TrafficUnjudged { waited: false, .. }
            }
        ),
        "{outcome:?}"
    );

    // Waiting: more requests after the window still decide...
    let (mut r, t) = analysing(criteria(TooFewRequests::Wait), true);
    r.on_event(green_traffic(&[("a", 0, 0)]), t);
    r.on_event(Event::Tick, t + end);
    assert!(r.on_event(green_traffic(&few), t + end).is_empty());
    assert_eq!(r.phase(), Phase::Analysis);
    assert_eq!(r.next_deadline(), Some(t + end + 10 * SEC), "the timeout");
    assert!(r.progress().message.contains("waiting for more"));
    assert_eq!(
        r.on_event(green_traffic(&[("a", 150, 1)]), t + 15 * SEC),
        [Action::Finish(Outcome::Succeeded)]
    );
    // ... until the operation's timeout, which fails it.
    let (mut r, t) = analysing(criteria(TooFewRequests::Wait), true);
    r.on_event(green_traffic(&[("a", 0, 0)]), t);
    r.on_event(Event::Tick, t + end);
    r.on_event(green_traffic(&few), t + end);
    assert!(r.on_event(Event::Tick, t + 19 * SEC).is_empty());
    assert_eq!(
        r.on_event(Event::Tick, t + 20 * SEC),
        [Action::Commit(back())]
    );
    assert!(
        r.progress()
            .message
            .contains("waited for more until the operation's timeout"),
        "{}",
        r.progress().message
    );
}

#[test]
fn a_shift_step_waits_for_its_window_before_the_next_step() {
    let blue = split(&[("blue", 100), ("green", 0)]);
    let op = shift(percents(None, &[10, 100]), Duration::ZERO, true);
    let (mut r, t) = started_judged(&op, &blue, None, criteria(TooFewRequests::Wait));
    let a = r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    assert!(matches!(&a[..], [Action::Commit(c)] if c.split["green"] == 10));
    r.on_event(committed_event("2"), t);
    assert_eq!(
        r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t),
        [Action::ObserveTraffic]
    );
    assert_eq!((r.phase(), r.progress().step), (Phase::Analysis, 1));
    r.on_event(green_traffic(&[("a", 0, 0)]), t);
    assert!(
        r.on_event(green_traffic(&[("a", 500, 0)]), t + 9 * SEC)
            .is_empty()
    );
    assert_eq!(
        r.on_event(Event::Tick, t + 10 * SEC),
        [Action::ObserveTraffic]
    );
    assert_eq!(
        r.on_event(green_traffic(&[("a", 600, 0)]), t + 10 * SEC),
        [Action::ObserveProxies],
        "the next step begins only now"
    );
    assert_eq!((r.phase(), r.progress().step), (Phase::Preparing, 2));
}

#[test]
fn a_rollback_or_a_retirement_is_never_judged_by_its_traffic() {
    let green_live = green().split;
    let blue = back().split;
    let (mut r, t) = started_judged(
        &rollback(true),
        &green_live,
        Some(&blue),
        criteria(TooFewRequests::Fail),
    );
    assert_eq!(r.plan.analysis, None);
    r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    r.on_event(committed_event("2"), t);
    assert_eq!(
        r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t),
        [Action::Finish(Outcome::Succeeded)]
    );
    let retire = retire("blue", SEC, Duration::ZERO);
    let v = ServiceView {
        analysis: Some(criteria(TooFewRequests::Fail)),
        ..view(&green_live, None)
    };
    assert_eq!(plan(&retire, &v).expect("plan").analysis, None);
    assert!(plan(&flip(true), &v).expect("plan").analysis.is_some());
}

#[test]
fn a_threshold_over_the_baseline_measures_the_fleets_losing_traffic_before_the_commit() {
    let c = Criteria {
        max_error_ratio: None,
        over_baseline: Some(Ratio::from_ppm(5_000)),
        ..criteria(TooFewRequests::Wait)
    };
    let blue = split(&[("blue", 100), ("green", 0)]);
    let (mut r, t) = started_judged(&flip(true), &blue, None, c);
    assert_eq!(
        r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t),
        [
            Action::MeasureBaseline {
                fleets: vec!["blue".into()],
                window: 10 * SEC
            },
            Action::Commit(green())
        ]
    );
    let baseline = Baseline {
        fleets: vec!["blue".into()],
        requests: 1000,
        errors: 20,
    };
    assert!(r.on_event(Event::Baseline(baseline.clone()), t).is_empty());
    // Saved with the commit, so a restart judges against it too.
    assert_eq!(r.record(t, SystemTime::UNIX_EPOCH).baseline, Some(baseline));
    r.on_event(committed_event("2"), t);
    r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    r.on_event(green_traffic(&[("a", 0, 0)]), t);
    // Blue failed 2% before: 2.4% is under the 2.5% allowed, 3% over.
    assert!(
        r.on_event(green_traffic(&[("a", 1000, 24)]), t + SEC)
            .is_empty()
    );
    assert_eq!(
        r.on_event(green_traffic(&[("a", 2000, 54)]), t + 2 * SEC),
        [Action::Commit(back())]
    );
    let Outcome::RolledBack { reason } = undone(&mut r, t) else {
        panic!("rolled back");
    };
    assert!(
        reason
            .to_string()
            .contains("over the 2.5% allowed (blue's 2% before the switch + 0.5 points)"),
        "{reason}"
    );
}

#[test]
fn a_resumed_step_is_judged_over_a_whole_window_from_the_restart() {
    let (r, t) = analysing(criteria(TooFewRequests::Wait), true);
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let rec = r.record(t + 8 * SEC, wall);
    assert_eq!(rec.stage, Stage::Applied);
    let later = t + 60 * SEC;
    let (mut again, a) = Rollout::resume("web", rec, &ver("2-abc"), later, wall);
    assert_eq!(a, [Action::ObserveProxies]);
    assert_eq!(
        again.on_event(Event::Proxies(vec![proxy("a", true, true)]), later),
        [Action::ObserveTraffic]
    );
    assert_eq!(again.next_deadline(), Some(later + 10 * SEC));
    again.on_event(green_traffic(&[("a", 5000, 500)]), later);
    let a = again.on_event(green_traffic(&[("a", 5200, 500)]), later + SEC);
    assert!(
        a.is_empty(),
        "what came before the restart is not counted: {a:?}"
    );
}

#[test]
fn an_abort_during_the_analysis_undoes_the_step() {
    let (mut r, t) = analysing(criteria(TooFewRequests::Wait), true);
    assert_eq!(
        r.abort("alice", t).expect("abortable"),
        [Action::Commit(back())]
    );
    assert!(matches!(undone(&mut r, t), Outcome::Aborted { .. }));
}

#[test]
fn records_carry_the_analysis_and_old_records_load_without_one() {
    let (r, t) = analysing(criteria(TooFewRequests::Pass), true);
    let rec = r.record(t, SystemTime::UNIX_EPOCH);
    let mut json = serde_json::to_value(&rec).expect("serializes");
    assert_eq!(json["plan"]["analysis"]["window_ms"], 10_000);
    assert_eq!(json["plan"]["analysis"]["too_few_requests"], "pass");
    assert_eq!(
        serde_json::from_value::<Record>(json.clone()).expect("loads"),
        rec
    );
    // As teal wrote it before analyses: no such keys.
    let plan = json["plan"].as_object_mut().expect("an object");
    plan.remove("analysis");
    let old: Record = serde_json::from_value(json).expect("an old record loads");
    assert_eq!((old.plan.analysis, old.baseline), (None, None));
}

fn traffic(id: &str, load: Option<(u64, u32)>) -> ProxyTraffic {
    ProxyTraffic {
        id: id.into(),
        load: load.map(
            |(in_progress, idle_reports)| crate::xds::load::ClusterCounters {
                in_progress,
                idle_reports,
                ..Default::default()
            },
        ),
    }
}

/// What the load reports say of blue: per proxy, its requests in progress
/// and idle reports in a row, or `None` when it reports nothing.
fn blue_reports(proxies: &[(&str, Option<(u64, u32)>)]) -> Event {
    Event::Traffic(vec![FleetTraffic {
        fleet: "blue".into(),
        proxies: proxies.iter().map(|(id, l)| traffic(id, *l)).collect(),
    }])
}

/// A retirement of blue (green live), after a minute, draining up to
/// half a minute; at the end of its delay.
fn draining() -> (Rollout, Instant) {
    let green_live = green().split;
    let op = retire("blue", Duration::from_secs(60), Duration::from_secs(30));
    let (mut r, t) = started_at(&op, &green_live, None);
    assert_eq!(r.phase(), Phase::Waiting);
    assert!(r.wants_traffic().is_empty(), "no reports while it waits");
    let t = t + Duration::from_secs(60);
    assert_eq!(
        r.on_event(Event::Tick, t),
        [Action::ObserveTraffic],
        "the reports at once"
    );
    assert_eq!(r.phase(), Phase::Draining);
    assert_eq!(r.wants_traffic(), ["blue"]);
    assert_eq!(r.next_deadline(), Some(t + Duration::from_secs(30)));
    (r, t)
}

fn blue_retired() -> Change {
    Change {
        split: green().split,
        retired: BTreeSet::from(["blue".to_owned()]),
    }
}

#[test]
fn a_retirement_waits_for_every_proxy_to_report_its_fleet_drained() {
    let (mut r, t) = draining();
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    assert_eq!(
        r.retirement(t, wall),
        Some(("blue".to_owned(), wall)),
        "pending, as soon as blue drains"
    );
    let reports = blue_reports(&[
        ("a", Some((2, 0))),
        ("b", Some((0, 1))),
        ("c", Some((0, 2))),
        ("d", None),
    ]);
    assert!(r.on_event(reports, t + Duration::from_secs(1)).is_empty());
    let p = r.progress();
    assert_eq!(p.phase, Phase::Draining);
    assert_eq!((p.acked, p.total), (1, 4));
    assert_eq!(p.waiting_for, ["a", "b", "d"]);
    assert!(
        p.message.contains("a (2), b (0)") && p.message.contains("no load reports from d"),
        "{}",
        p.message
    );
    // Another fleet's reports say nothing of blue.
    let green_only = Event::Traffic(vec![FleetTraffic {
        fleet: "green".into(),
        proxies: vec![traffic("a", Some((0, 5)))],
    }]);
    assert!(r.on_event(green_only, t).is_empty());
    assert_eq!(r.phase(), Phase::Draining);
    // Every proxy idle for two reports: the retirement goes on.
    let idle = blue_reports(&[
        ("a", Some((0, 2))),
        ("b", Some((0, 3))),
        ("c", Some((0, 4))),
        ("d", Some((0, 2))),
    ]);
    assert_eq!(
        r.on_event(idle, t + Duration::from_secs(3)),
        [Action::ObserveProxies]
    );
    assert_eq!(r.phase(), Phase::Preparing);
    assert!(r.wants_traffic().is_empty());
    assert_eq!(
        r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t),
        [Action::Commit(blue_retired())]
    );
    r.on_event(committed_event("4"), t);
    assert_eq!(
        r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t),
        [Action::Finish(Outcome::Succeeded)]
    );
}

#[test]
fn a_fleet_not_drained_in_time_is_not_retired_and_the_refusal_names_the_proxies() {
    let (mut r, t) = draining();
    let reports = blue_reports(&[("a", Some((3, 0))), ("b", Some((0, 9))), ("d", None)]);
    assert!(r.on_event(reports, t + Duration::from_secs(1)).is_empty());
    assert!(
        r.on_event(Event::Tick, t + Duration::from_secs(29))
            .is_empty(),
        "not before its timeout"
    );
    let a = r.on_event(Event::Tick, t + Duration::from_secs(30));
    let [Action::Finish(Outcome::Refused { reason })] = &a[..] else {
        panic!("refused: {a:?}")
    };
    let Reason::DrainTimedOut {
        fleet,
        within,
        last: Some(last),
    } = reason
    else {
        panic!("{reason:?}")
    };
    assert_eq!((fleet.as_str(), *within), ("blue", Duration::from_secs(30)));
    assert_eq!((last.draining_count, last.in_flight), (1, 3));
    assert_eq!(last.draining[0].proxy, "a");
    assert_eq!(last.silent, ["d"]);
    let text = reason.to_string();
    assert!(
        text.contains("a (3)") && text.contains("no load reports from d"),
        "{text}"
    );
    assert_eq!(r.last_version(), None, "nothing was committed");

    // No report came in at all (a drain timeout shorter than the report
    // interval): refused all the same, saying so.
    let (mut r, t) = draining();
    let a = r.on_event(Event::Tick, t + Duration::from_secs(30));
    assert!(
        matches!(
            &a[..],
            [Action::Finish(Outcome::Refused {
                reason: Reason::DrainTimedOut { last: None, .. }
            })]
        ),
        "{a:?}"
    );
}

#[test]
fn a_proxy_that_reports_no_load_is_never_taken_as_drained() {
    let (mut r, t) = draining();
    for i in 1..30 {
        let reports = blue_reports(&[("a", Some((0, 2 + i))), ("quiet", None)]);
        assert!(
            r.on_event(reports, t + Duration::from_secs(u64::from(i)))
                .is_empty()
        );
    }
    assert_eq!(r.progress().waiting_for, ["quiet"]);
    let a = r.on_event(Event::Tick, t + Duration::from_secs(30));
    assert!(
        matches!(&a[..], [Action::Finish(Outcome::Refused { reason: Reason::DrainTimedOut { last: Some(d), .. } })]
            if d.silent == ["quiet"] && d.draining.is_empty()),
        "{a:?}"
    );
}

#[test]
fn a_rollback_or_an_abort_cancels_a_retirement_while_it_drains() {
    let (mut r, t) = draining();
    r.on_event(blue_reports(&[("a", Some((1, 0)))]), t);
    assert!(r.is_pending_retirement(), "a rollback may still cancel it");
    let a = r.cancel_retirement("carol", t).expect("cancels");
    assert!(
        matches!(
            &a[..],
            [Action::Finish(Outcome::Aborted {
                reason: Reason::StoppedBeforeCommit {
                    for_rollback: true,
                    ..
                }
            })]
        ),
        "{a:?}"
    );
    assert!(r.wants_traffic().is_empty());
    assert_eq!(r.last_version(), None);

    let (mut r, t) = draining();
    let a = r.abort("dave", t).expect("aborts");
    assert!(matches!(&a[..], [Action::Finish(Outcome::Aborted { .. })]));
}

#[test]
fn a_draining_retirement_is_kept_on_shutdown_and_drains_again_after_a_restart() {
    let (mut r, t) = draining();
    r.on_event(blue_reports(&[("a", Some((1, 0)))]), t);
    let wall = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
    let rec = r.record(t, wall);
    assert_eq!(rec.stage, Stage::Pending);
    assert_eq!(rec.wait_until, Some(wall), "its delay is over");
    assert_eq!(rec.plan.drain_timeout, Duration::from_secs(30));
    assert_eq!(r.shut_down(), None, "saved for the next start, not ended");

    let t2 = t + Duration::from_secs(500);
    let later = wall + Duration::from_secs(500);
    let (mut again, a) = Rollout::resume("web", rec, &ver("5-x"), t2, later);
    assert!(a.is_empty());
    assert_eq!(again.next_deadline(), Some(t2), "no delay left");
    assert_eq!(again.on_event(Event::Tick, t2), [Action::ObserveTraffic]);
    assert_eq!(again.phase(), Phase::Draining);
    assert_eq!(again.wants_traffic(), ["blue"]);
    assert_eq!(
        again.next_deadline(),
        Some(t2 + Duration::from_secs(30)),
        "a whole drain timeout again"
    );
    assert_eq!(
        again.on_event(blue_reports(&[("a", Some((0, 2)))]), t2),
        [Action::ObserveProxies]
    );
}

#[test]
fn a_drain_timeout_of_zero_retires_without_waiting_for_reports() {
    let green_live = green().split;
    let op = retire("blue", Duration::from_secs(60), Duration::ZERO);
    let (mut r, t) = started_at(&op, &green_live, None);
    assert_eq!(
        r.on_event(Event::Tick, t + Duration::from_secs(60)),
        [Action::ObserveProxies]
    );
    assert_eq!(r.phase(), Phase::Preparing);
    assert!(r.wants_traffic().is_empty());
}
