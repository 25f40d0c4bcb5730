use super::*;
use crate::rollout::fixtures::*;

#[test]
fn planning_refuses_what_cannot_be_done() {
    let green_live = split(&[("blue", 0), ("green", 100)]);
    let p = plan(&flip(false), &view(&green_live, None)).expect("flip back");
    assert_eq!(p.steps[0].split["blue"], 100);
    assert!(matches!(
        plan(&rollback(false), &view(&green_live, None)),
        Err(RolloutError::Precondition(m)) if m.contains("nothing to roll back to")
    ));
    let blue = back().split;
    let p = plan(&rollback(false), &view(&green_live, Some(&blue))).expect("rollback");
    assert_eq!(p.steps[0].split, split(&[("blue", 100), ("green", 0)]));
    assert!(p.checks);
    assert!(
        !plan(&rollback(true), &view(&green_live, Some(&blue)))
            .expect("rollback")
            .checks
    );
    assert!(matches!(
        plan(&rollback(false), &view(&green_live, Some(&green_live))),
        Err(RolloutError::Precondition(m)) if m.contains("at its rollback point")
    ));
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
    let retire_live = retire("green", Duration::ZERO, Duration::ZERO);
    assert!(matches!(
        plan(&retire_live, &view(&green_live, None)),
        Err(RolloutError::Precondition(_))
    ));
    let bad_sum = shift(
        ShiftSteps::Splits(vec![split(&[("green", 60)])]),
        Duration::ZERO,
        true,
    );
    assert_eq!(
        plan(&bad_sum, &view(&green_live, None)),
        Err(RolloutError::Invalid(
            "weights of service \"web\" must add up to 100, these add up to 60".into()
        ))
    );
    let to_red_by_shift = shift(
        ShiftSteps::Splits(vec![split(&[("green", 50), ("red", 50)])]),
        Duration::ZERO,
        true,
    );
    assert_eq!(
        plan(&to_red_by_shift, &view(&green_live, None)),
        Err(RolloutError::UnknownFleet {
            service: "web".into(),
            fleet: "red".into()
        })
    );
    let forever = Operation::Flip {
        service: "web".into(),
        to: None,
        skip_checks: true,
        timeout: Duration::MAX,
    };
    assert!(matches!(
        plan(&forever, &view(&green_live, None)),
        Err(RolloutError::Invalid(m)) if m.contains("longer than")
    ));
}

#[test]
fn no_traffic_goes_to_a_fleet_without_endpoints() {
    let blue_live = back().split;
    let mut v = view(&blue_live, None);
    v.empty.insert("green");
    let refused = |r: Result<Plan, RolloutError>| matches!(r, Err(RolloutError::Precondition(m)) if m.contains("\"green\"") && m.contains("no endpoints"));
    assert!(refused(plan(&flip(true), &v)));
    assert!(refused(plan(
        &shift(percents(None, &[10]), Duration::ZERO, true),
        &v
    )));
    let green_live = green().split;
    let mut v = view(&green_live, Some(&green_live));
    v.split = &blue_live;
    v.empty.insert("green");
    assert!(refused(plan(&rollback(true), &v)));
}

#[test]
fn shift_steps_are_checked_against_the_current_split() {
    let blue_live = back().split;
    let v = view(&blue_live, None);
    // Towards the fleet that already has everything.
    let a = plan(
        &shift(percents(Some("blue"), &[10, 50, 100]), Duration::ZERO, true),
        &v,
    );
    assert!(
        matches!(&a, Err(RolloutError::Precondition(m)) if m.contains("already takes all")),
        "{a:?}"
    );
    let ten = split(&[("blue", 90), ("green", 10)]);
    let v = view(&ten, None);
    let a = plan(&shift(percents(None, &[10, 50]), Duration::ZERO, true), &v);
    assert!(
        matches!(&a, Err(RolloutError::Invalid(m)) if m.contains("rise from")),
        "{a:?}"
    );
    let a = plan(&shift(percents(None, &[50, 40]), Duration::ZERO, true), &v);
    assert!(matches!(&a, Err(RolloutError::Invalid(_))), "{a:?}");
    let p =
        plan(&shift(percents(None, &[50, 100]), Duration::ZERO, true), &v).expect("rising from 10");
    let got: Vec<&Split> = p.steps.iter().map(|c| &c.split).collect();
    assert_eq!(
        got,
        [
            &split(&[("blue", 50), ("green", 50)]),
            &split(&[("blue", 0), ("green", 100)])
        ]
    );
    // One weight given: the other fleet takes the rest.
    let p = plan(
        &shift(
            ShiftSteps::Weights(vec![("green".into(), 30)]),
            Duration::ZERO,
            true,
        ),
        &v,
    )
    .expect("weights");
    assert_eq!(p.steps[0].split, split(&[("blue", 70), ("green", 30)]));
    let same = plan(
        &shift(
            ShiftSteps::Weights(vec![("green".into(), 10)]),
            Duration::ZERO,
            true,
        ),
        &v,
    );
    assert!(matches!(same, Err(RolloutError::Precondition(m)) if m.contains("current split")));
}

#[test]
fn live_is_the_fleet_with_a_majority() {
    assert_eq!(live_of(&back().split), Some("blue"));
    assert_eq!(
        live_of(&split(&[("blue", 40), ("green", 60)])),
        Some("green")
    );
    assert_eq!(live_of(&split(&[("blue", 50), ("green", 50)])), None);
    assert_eq!(live_of(&split(&[("a", 40), ("b", 30), ("c", 30)])), None);
    let fifty = split(&[("blue", 50), ("green", 50)]);
    assert!(matches!(
        plan(&flip(true), &view(&fifty, None)),
        Err(RolloutError::Invalid(m)) if m.contains("--to")
    ));
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

#[test]
fn sending_traffic_to_a_retired_fleet_restores_its_endpoints_first() {
    let green_live = split(&[("blue", 0), ("green", 100)]);
    let retired = BTreeSet::from(["blue".to_string()]);
    let v = ServiceView {
        retired: &retired,
        has_checks: true,
        analysis: None,
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
    let op = retire("blue", Duration::from_secs(60), Duration::from_secs(90));
    let p = plan(&op, &view(&green_live, None)).expect("plan");
    assert_eq!(p.steps[0].retired, retired);
    assert!(p.wait_first);
    assert_eq!(p.drain_timeout, Duration::from_secs(90));
}

#[test]
fn a_retirement_bounds_its_drain_timeout_and_an_old_record_does_not_wait_for_drains() {
    let green_live = green().split;
    let forever = retire("blue", Duration::ZERO, MAX_WAIT + Duration::from_secs(1));
    assert!(matches!(
        plan(&forever, &view(&green_live, None)),
        Err(RolloutError::Invalid(m)) if m.contains("drain timeout")
    ));
    let p = plan(
        &retire("blue", Duration::ZERO, Duration::from_secs(5)),
        &view(&green_live, None),
    )
    .expect("plan");
    let mut json = serde_json::to_value(&p).expect("serializes");
    assert_eq!(json["drain_timeout_ms"], 5000);
    json.as_object_mut()
        .expect("an object")
        .remove("drain_timeout_ms");
    let old: Plan = serde_json::from_value(json).expect("a plan saved before drains");
    assert_eq!(old.drain_timeout, Duration::ZERO);
}
