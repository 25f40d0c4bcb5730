use super::*;
use proptest::prelude::*;

static NONE_RETIRED: BTreeSet<String> = BTreeSet::new();

fn split(pairs: &[(&str, u32)]) -> Split {
    pairs.iter().map(|(f, w)| ((*f).to_owned(), *w)).collect()
}

fn view<'a>(current: &'a Split, previous: Option<&'a str>) -> ServiceView<'a> {
    ServiceView {
        name: "web",
        fleets: vec!["blue", "green"],
        split: current,
        previous,
        retired: &NONE_RETIRED,
    }
}

fn flip(skip_checks: bool) -> Operation {
    Operation::Flip {
        service: "web".into(),
        to: None,
        skip_checks,
        timeout: Duration::from_secs(10),
    }
}

fn proxy(id: &str, prepared: bool, confirmed: bool) -> ProxyView {
    ProxyView {
        id: id.into(),
        prepared,
        confirmed,
        nack: None,
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

fn started(op: &Operation) -> (Rollout, Instant) {
    let blue = split(&[("blue", 100), ("green", 0)]);
    let v = view(&blue, None);
    let p = plan(op, &v).expect("plan");
    let now = Instant::now();
    let (r, actions) = Rollout::start(7, op, p, v.current(), now);
    assert!(actions.is_empty());
    (r, now)
}

fn green() -> Change {
    Change {
        split: split(&[("blue", 0), ("green", 100)]),
        retired: BTreeSet::new(),
    }
}

fn back() -> Change {
    Change {
        split: split(&[("blue", 100), ("green", 0)]),
        retired: BTreeSet::new(),
    }
}

#[test]
fn a_flip_goes_through_every_phase() {
    let (mut r, t) = started(&flip(false));
    assert_eq!(r.progress().phase, Phase::Preparing);
    let not_ready = vec![proxy("a", true, false), proxy("b", false, false)];
    assert!(r.on_event(Event::Proxies(not_ready), t).is_empty());
    assert_eq!(r.progress().waiting_for, ["b"]);
    let ready = vec![proxy("a", true, false), proxy("b", true, false)];
    assert_eq!(
        r.on_event(Event::Proxies(ready), t),
        [Action::RunChecks(vec!["green".into()])]
    );
    assert_eq!(
        r.on_event(Event::Checks(vec![check(true)]), t),
        [Action::Commit(green())]
    );
    let v = Event::Committed {
        version: "5-abc".into(),
    };
    assert!(r.on_event(v, t).is_empty());
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
    assert_eq!(r.confirmed_version(), Some("5-abc"));
}

#[test]
fn a_proxy_already_rejecting_its_config_refuses_the_switch() {
    let (mut r, t) = started(&flip(false));
    let mut stuck = proxy("b", true, false);
    stuck.nack = Some("RDS 4-ab: bad regex".into());
    let actions = r.on_event(Event::Proxies(vec![proxy("a", true, false), stuck]), t);
    assert!(
        matches!(&actions[..], [Action::Finish(Outcome::Refused { reason })] if reason.contains("proxy b") && reason.contains("bad regex"))
    );
}

#[test]
fn failing_pre_checks_refuse_and_commit_nothing() {
    let (mut r, t) = started(&flip(false));
    r.on_event(Event::Proxies(vec![proxy("a", true, false)]), t);
    let actions = r.on_event(Event::Checks(vec![check(true), check(false)]), t);
    assert!(
        matches!(&actions[..], [Action::Finish(Outcome::Refused { reason })] if reason.contains("503"))
    );
    assert!(r.is_done());
}

fn committed(skip_checks: bool) -> (Rollout, Instant) {
    let (mut r, t) = started(&flip(skip_checks));
    let a = r.on_event(Event::Proxies(vec![proxy("a", true, false)]), t);
    if !skip_checks {
        assert_eq!(a, [Action::RunChecks(vec!["green".into()])]);
        r.on_event(Event::Checks(vec![check(true)]), t);
    }
    r.on_event(
        Event::Committed {
            version: "2".into(),
        },
        t,
    );
    (r, t)
}

#[test]
fn a_nack_puts_every_proxy_back() {
    let (mut r, t) = committed(true);
    let mut bad = proxy("b", true, false);
    bad.nack = Some("bad route".into());
    let actions = r.on_event(Event::Proxies(vec![proxy("a", true, true), bad]), t);
    assert_eq!(actions, [Action::Commit(back())]);
    assert_eq!(r.progress().phase, Phase::RollingBack);
    r.on_event(
        Event::Committed {
            version: "3".into(),
        },
        t,
    );
    let actions = r.on_event(
        Event::Proxies(vec![proxy("a", true, true), proxy("b", true, true)]),
        t,
    );
    assert!(
        matches!(&actions[..], [Action::Finish(Outcome::RolledBack { reason })] if reason.contains("b rejected") && reason.contains("bad route"))
    );
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
fn a_shift_steps_waits_and_can_be_aborted_between_steps() {
    let op = Operation::Shift {
        service: "web".into(),
        steps: vec![
            split(&[("blue", 90), ("green", 10)]),
            split(&[("blue", 50), ("green", 50)]),
        ],
        interval: Duration::from_secs(5),
        skip_checks: true,
        timeout: Duration::from_secs(10),
    };
    let (mut r, t) = started(&op);
    let a = r.on_event(Event::Proxies(vec![proxy("a", true, false)]), t);
    assert!(matches!(&a[..], [Action::Commit(c)] if c.split["green"] == 10));
    r.on_event(
        Event::Committed {
            version: "2".into(),
        },
        t,
    );
    assert!(
        r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t)
            .is_empty()
    );
    assert_eq!(r.progress().phase, Phase::Waiting);
    assert_eq!(r.next_deadline(), Some(t + Duration::from_secs(5)));
    let a = r.on_event(Event::Abort("operator".into()), t);
    assert!(matches!(&a[..], [Action::Finish(Outcome::Aborted { .. })]));
    assert_eq!(r.confirmed_version(), Some("2"));
}

#[test]
fn a_failure_in_a_later_step_undoes_the_earlier_ones() {
    let op = Operation::Shift {
        service: "web".into(),
        steps: vec![
            split(&[("blue", 90), ("green", 10)]),
            split(&[("green", 100)]),
        ],
        interval: Duration::ZERO,
        skip_checks: false,
        timeout: Duration::from_secs(10),
    };
    let (mut r, t) = started(&op);
    r.on_event(Event::Proxies(vec![proxy("a", true, false)]), t);
    r.on_event(Event::Checks(vec![check(true)]), t);
    r.on_event(
        Event::Committed {
            version: "2".into(),
        },
        t,
    );
    r.on_event(Event::Proxies(vec![proxy("a", true, true)]), t);
    r.on_event(Event::Checks(vec![check(true)]), t);
    assert_eq!(r.progress().step, 2);
    r.on_event(Event::Proxies(vec![proxy("a", true, false)]), t);
    let a = r.on_event(Event::Checks(vec![check(false)]), t);
    assert_eq!(a, [Action::Commit(back())], "step 1 is undone too");
}

#[test]
fn planning_refuses_what_cannot_be_done() {
    let green_live = split(&[("blue", 0), ("green", 100)]);
    let err = plan(&flip(false), &view(&green_live, None));
    assert!(matches!(err, Ok(p) if p.steps[0].split["blue"] == 100));
    let rollback = Operation::Rollback {
        service: "web".into(),
        timeout: Duration::from_secs(1),
    };
    assert!(matches!(
        plan(&rollback, &view(&green_live, None)),
        Err(RolloutError::Invalid(_))
    ));
    let p = plan(&rollback, &view(&green_live, Some("blue"))).expect("rollback");
    assert_eq!(p.steps[0].split, split(&[("blue", 100), ("green", 0)]));
    let to_red = Operation::Flip {
        service: "web".into(),
        to: Some("red".into()),
        skip_checks: false,
        timeout: Duration::from_secs(1),
    };
    assert!(matches!(
        plan(&to_red, &view(&green_live, None)),
        Err(RolloutError::UnknownFleet { .. })
    ));
    let retire_live = Operation::Retire {
        service: "web".into(),
        fleet: "green".into(),
        after: Duration::ZERO,
    };
    assert!(matches!(
        plan(&retire_live, &view(&green_live, None)),
        Err(RolloutError::Invalid(_))
    ));
    let bad_sum = Operation::Shift {
        service: "web".into(),
        steps: vec![split(&[("green", 60)])],
        interval: Duration::ZERO,
        skip_checks: true,
        timeout: Duration::from_secs(1),
    };
    assert_eq!(
        plan(&bad_sum, &view(&green_live, None)),
        Err(RolloutError::Invalid(
            "weights of service \"web\" must add up to 100, these add up to 60".into()
        ))
    );
    let to_red_by_shift = Operation::Shift {
        service: "web".into(),
        steps: vec![split(&[("green", 50), ("red", 50)])],
        interval: Duration::ZERO,
        skip_checks: true,
        timeout: Duration::from_secs(1),
    };
    assert_eq!(
        plan(&to_red_by_shift, &view(&green_live, None)),
        Err(RolloutError::UnknownFleet {
            service: "web".into(),
            fleet: "red".into()
        })
    );
}

/// A refused split keeps its gRPC code through the conversion: unknown
/// names are NOT_FOUND, a bad sum INVALID_ARGUMENT.
#[test]
fn refused_splits_keep_their_grpc_codes() {
    use crate::config::WeightsError;
    use tonic::Code;
    let code = |e: WeightsError| tonic::Status::from(RolloutError::from(e)).code();
    assert_eq!(
        code(WeightsError::UnknownService("nope".into())),
        Code::NotFound
    );
    assert_eq!(
        code(WeightsError::UnknownFleet {
            service: "web".into(),
            fleet: "red".into()
        }),
        Code::NotFound
    );
    let bad_sum = WeightsError::BadSum {
        service: "web".into(),
        sum: 60,
    };
    let message = bad_sum.to_string();
    let status = tonic::Status::from(RolloutError::from(bad_sum));
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(status.message(), message);
}

fn arb_event() -> impl Strategy<Value = Event> {
    let proxies = prop::collection::vec(
        (
            0..4u8,
            any::<bool>(),
            any::<bool>(),
            prop::bool::weighted(0.15),
        ),
        0..4,
    )
    .prop_map(|ps| {
        Event::Proxies(
            ps.into_iter()
                .map(|(id, prepared, confirmed, nack)| ProxyView {
                    id: format!("p{id}"),
                    prepared,
                    confirmed,
                    nack: nack.then(|| "no".to_string()),
                })
                .collect(),
        )
    });
    prop_oneof![
        Just(Event::Tick),
        proxies,
        any::<bool>().prop_map(|ok| Event::Checks(vec![check(ok)])),
        (0..100u32).prop_map(|v| Event::Committed {
            version: v.to_string()
        }),
        Just(Event::CommitFailed("disk".into())),
        Just(Event::Abort("operator".into())),
    ]
}

proptest! {
    /// Whatever order events arrive in: nothing happens after the finish;
    /// a refusal never follows a successful commit; anything committed and not
    /// confirmed is undone before the operation reports a rollback; and
    /// success is only reported once every proxy seen while confirming
    /// had applied the change.
    #[test]
    fn every_event_order_ends_consistently(
        skip_checks in any::<bool>(),
        events in prop::collection::vec((arb_event(), 0..3_000u64), 0..40),
    ) {
        let (mut r, t0) = started(&flip(skip_checks));
        let mut now = t0;
        let mut commits: Vec<Change> = Vec::new();
        // Commits the controller confirmed (a Commit action answered by
        // Committed rather than CommitFailed).
        let mut pending = false;
        let mut effective = 0;
        let mut finished: Option<Outcome> = None;
        let mut last_proxies: Vec<ProxyView> = Vec::new();
        for (event, dt) in events {
            now += Duration::from_millis(dt * 10);
            match &event {
                // The proxies that decided the confirmation; a proxy that
                // joins later is sent the committed version on connect.
                Event::Proxies(p) if r.progress().phase == Phase::Confirming => {
                    last_proxies = p.clone()
                }
                Event::Committed { .. } if pending => {
                    pending = false;
                    effective += 1;
                }
                Event::CommitFailed(_) => pending = false,
                _ => {}
            }
            let actions = r.on_event(event, now);
            if finished.is_some() {
                prop_assert!(actions.is_empty(), "acted after finishing: {actions:?}");
            }
            for a in actions {
                match a {
                    Action::Commit(c) => {
                        commits.push(c);
                        pending = true;
                    }
                    Action::Finish(o) => finished = Some(o),
                    Action::RunChecks(f) => prop_assert_eq!(f, vec!["green".to_string()]),
                }
            }
        }
        match finished {
            Some(Outcome::Refused { .. }) => prop_assert_eq!(effective, 0),
            Some(Outcome::RolledBack { .. }) => {
                prop_assert_eq!(commits.first(), Some(&green()));
                prop_assert_eq!(commits.last(), Some(&back()));
            }
            Some(Outcome::Succeeded) => {
                prop_assert_eq!(commits, vec![green()]);
                prop_assert!(last_proxies.iter().all(|p| p.confirmed && p.nack.is_none()));
            }
            Some(Outcome::Aborted { .. }) => prop_assert!(commits.is_empty()),
            None => prop_assert!(!r.is_done()),
        }
    }
}

#[test]
fn sending_traffic_to_a_retired_fleet_restores_its_endpoints_first() {
    let green_live = split(&[("blue", 0), ("green", 100)]);
    let retired = BTreeSet::from(["blue".to_string()]);
    let v = ServiceView {
        retired: &retired,
        ..view(&green_live, None)
    };
    let p = plan(&flip(false), &v).expect("plan");
    assert_eq!(
        p.steps,
        [
            Change {
                split: green_live.clone(),
                retired: BTreeSet::new()
            },
            back()
        ]
    );
    let retire = Operation::Retire {
        service: "web".into(),
        fleet: "blue".into(),
        after: Duration::from_secs(60),
    };
    let p = plan(&retire, &view(&green_live, None)).expect("plan");
    assert_eq!(p.steps[0].retired, retired);
    assert!(p.wait_first);
}
